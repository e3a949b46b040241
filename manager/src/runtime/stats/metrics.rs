//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor-named metrics kubelet
//! serves on `/metrics/cadvisor` when it takes stats from the runtime. Names, meanings and
//! label keys follow cAdvisor (as containerd and CRI-O do); the values come from the same
//! samples as the stats calls.
//!
//! Values are unsigned integers in the metric's unit, so `*_seconds_total` counters are whole
//! seconds (the CRI Metric carries a UInt64Value).

use std::sync::Arc;

use crust_proto::cri::{ContainerMetrics, Metric, MetricDescriptor, MetricType, PodSandboxMetrics};

use super::super::Core;
use super::net_dev::InterfaceCounters;
use super::{ContainerSample, PodSample, sample_pods, selected_pods};
use crate::error::Result;

/// What each series is labelled with: the container's (or pod's) id, its name, its image.
const BASE_LABELS: &[&str] = &["id", "name", "image"];

/// Which labels a metric has beyond [`BASE_LABELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Interface,
    Device,
}

/// One metric crustd offers.
struct Offered {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    extra: Extra,
}

const fn offered(name: &'static str, help: &'static str, kind: MetricType) -> Offered {
    Offered {
        name,
        help,
        kind,
        extra: Extra::None,
    }
}

const CPU_USAGE: &str = "container_cpu_usage_seconds_total";
const CPU_USER: &str = "container_cpu_user_seconds_total";
const CPU_SYSTEM: &str = "container_cpu_system_seconds_total";
const MEMORY_USAGE: &str = "container_memory_usage_bytes";
const MEMORY_WORKING_SET: &str = "container_memory_working_set_bytes";
const MEMORY_RSS: &str = "container_memory_rss";
const MEMORY_CACHE: &str = "container_memory_cache";
const PROCESSES: &str = "container_processes";
const FS_USAGE: &str = "container_fs_usage_bytes";
const FS_INODES: &str = "container_fs_inodes_total";
const NET_RX_BYTES: &str = "container_network_receive_bytes_total";
const NET_RX_PACKETS: &str = "container_network_receive_packets_total";
const NET_RX_ERRORS: &str = "container_network_receive_errors_total";
const NET_TX_BYTES: &str = "container_network_transmit_bytes_total";
const NET_TX_PACKETS: &str = "container_network_transmit_packets_total";
const NET_TX_ERRORS: &str = "container_network_transmit_errors_total";

const OFFERED: &[Offered] = &[
    offered(
        CPU_USAGE,
        "Cumulative cpu time consumed in seconds.",
        MetricType::Counter,
    ),
    offered(
        CPU_USER,
        "Cumulative user cpu time consumed in seconds.",
        MetricType::Counter,
    ),
    offered(
        CPU_SYSTEM,
        "Cumulative system cpu time consumed in seconds.",
        MetricType::Counter,
    ),
    offered(
        MEMORY_USAGE,
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        MetricType::Gauge,
    ),
    offered(
        MEMORY_WORKING_SET,
        "Current working set in bytes.",
        MetricType::Gauge,
    ),
    offered(MEMORY_RSS, "Size of RSS in bytes.", MetricType::Gauge),
    offered(
        MEMORY_CACHE,
        "Number of bytes of page cache memory.",
        MetricType::Gauge,
    ),
    offered(
        PROCESSES,
        "Number of processes running inside the container.",
        MetricType::Gauge,
    ),
    Offered {
        name: FS_USAGE,
        help: "Number of bytes that are consumed by the container on this filesystem.",
        kind: MetricType::Gauge,
        extra: Extra::Device,
    },
    Offered {
        name: FS_INODES,
        help: "Number of Inodes",
        kind: MetricType::Gauge,
        extra: Extra::Device,
    },
    Offered {
        name: NET_RX_BYTES,
        help: "Cumulative count of bytes received",
        kind: MetricType::Counter,
        extra: Extra::Interface,
    },
    Offered {
        name: NET_RX_PACKETS,
        help: "Cumulative count of packets received",
        kind: MetricType::Counter,
        extra: Extra::Interface,
    },
    Offered {
        name: NET_RX_ERRORS,
        help: "Cumulative count of errors encountered while receiving",
        kind: MetricType::Counter,
        extra: Extra::Interface,
    },
    Offered {
        name: NET_TX_BYTES,
        help: "Cumulative count of bytes transmitted",
        kind: MetricType::Counter,
        extra: Extra::Interface,
    },
    Offered {
        name: NET_TX_PACKETS,
        help: "Cumulative count of packets transmitted",
        kind: MetricType::Counter,
        extra: Extra::Interface,
    },
    Offered {
        name: NET_TX_ERRORS,
        help: "Cumulative count of errors encountered while transmitting",
        kind: MetricType::Counter,
        extra: Extra::Interface,
    },
];

/// ListMetricDescriptors: every metric crustd reports, with its label keys.
pub fn descriptors() -> Vec<MetricDescriptor> {
    OFFERED
        .iter()
        .map(|m| {
            let mut label_keys: Vec<String> = BASE_LABELS.iter().map(|k| k.to_string()).collect();
            match m.extra {
                Extra::None => {}
                Extra::Interface => label_keys.push("interface".into()),
                Extra::Device => label_keys.push("device".into()),
            }
            MetricDescriptor {
                name: m.name.into(),
                help: m.help.into(),
                label_keys,
            }
        })
        .collect()
}

/// Builds the series of one container or pod, all with the same base labels.
struct Series<'a> {
    at: i64,
    base: [&'a str; 3],
    metrics: Vec<Metric>,
}

impl<'a> Series<'a> {
    fn new(at: i64, id: &'a str, name: &'a str, image: &'a str) -> Self {
        Self {
            at,
            base: [id, name, image],
            metrics: Vec::new(),
        }
    }

    fn push(&mut self, name: &'static str, value: u64, extra: Option<&str>) {
        let kind = OFFERED
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.kind)
            .unwrap_or(MetricType::Gauge);
        let mut label_values: Vec<String> = self.base.iter().map(|v| v.to_string()).collect();
        label_values.extend(extra.map(str::to_string));
        self.metrics.push(Metric {
            name: name.into(),
            timestamp: self.at,
            metric_type: kind as i32,
            label_values,
            value: Some(crust_proto::cri::UInt64Value { value }),
        });
    }

    fn network(&mut self, interfaces: &[InterfaceCounters]) {
        for i in interfaces {
            let name = Some(i.name.as_str());
            self.push(NET_RX_BYTES, i.rx_bytes, name);
            self.push(NET_RX_PACKETS, i.rx_packets, name);
            self.push(NET_RX_ERRORS, i.rx_errors, name);
            self.push(NET_TX_BYTES, i.tx_bytes, name);
            self.push(NET_TX_PACKETS, i.tx_packets, name);
            self.push(NET_TX_ERRORS, i.tx_errors, name);
        }
    }
}

const NANOS_PER_SECOND: u64 = 1_000_000_000;

fn container_metrics(sample: &ContainerSample) -> ContainerMetrics {
    let record = &sample.record;
    let name = record
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    let image = record
        .config
        .image
        .as_ref()
        .map(|i| i.image.as_str())
        .unwrap_or_default();
    let mut series = Series::new(sample.at, &record.id, name, image);
    if let Some(usage) = &sample.usage {
        if let Some(total) = usage.cpu_nanos {
            series.push(CPU_USAGE, total / NANOS_PER_SECOND, None);
        }
        if let Some(user) = usage.cpu_user_nanos {
            series.push(CPU_USER, user / NANOS_PER_SECOND, None);
        }
        if let Some(system) = usage.cpu_system_nanos {
            series.push(CPU_SYSTEM, system / NANOS_PER_SECOND, None);
        }
        if let Some(memory) = &usage.memory {
            series.push(MEMORY_USAGE, memory.usage, None);
            series.push(MEMORY_WORKING_SET, memory.working_set, None);
            series.push(MEMORY_RSS, memory.rss, None);
            series.push(MEMORY_CACHE, memory.cache, None);
        }
        if let Some(processes) = usage.processes {
            series.push(PROCESSES, processes, None);
        }
    }
    if let Some(layer) = &sample.layer {
        series.push(FS_USAGE, layer.bytes, Some(&sample.upper));
        series.push(FS_INODES, layer.inodes, Some(&sample.upper));
    }
    ContainerMetrics {
        container_id: record.id.clone(),
        metrics: series.metrics,
    }
}

fn pod_sandbox_metrics(sample: &PodSample) -> PodSandboxMetrics {
    let pod = &sample.pod;
    let name = pod
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    let mut series = Series::new(sample.at, &pod.id, name, "");
    if let Some(interfaces) = &sample.network {
        series.network(interfaces);
    }
    PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics: series.metrics,
        container_metrics: sample.containers.iter().map(container_metrics).collect(),
    }
}

/// ListPodSandboxMetrics: the metrics of every ready pod and its containers.
pub async fn pod_metrics(core: &Arc<Core>) -> Result<Vec<PodSandboxMetrics>> {
    let samples = sample_pods(core, selected_pods(core, None), false).await?;
    Ok(samples.iter().map(pod_sandbox_metrics).collect())
}

#[cfg(test)]
mod tests {
    use super::super::super::records::tests as test_records;
    use super::super::usage::{CgroupUsage, MemoryFigures};
    use super::super::writable_layer::LayerUsage;
    use super::*;

    #[test]
    fn descriptors_are_named_as_cadvisor_names_them_with_their_label_keys() {
        let all = descriptors();
        let keys = |name: &str| {
            all.iter()
                .find(|d| d.name == name)
                .map(|d| d.label_keys.clone())
                .unwrap_or_else(|| panic!("{name} is not described"))
        };
        assert_eq!(keys(CPU_USAGE), ["id", "name", "image"]);
        assert_eq!(keys(MEMORY_WORKING_SET), ["id", "name", "image"]);
        assert_eq!(keys(NET_RX_BYTES), ["id", "name", "image", "interface"]);
        assert_eq!(keys(FS_USAGE), ["id", "name", "image", "device"]);
        let mut names: Vec<_> = all.iter().map(|d| d.name.clone()).collect();
        names.dedup();
        assert_eq!(names.len(), OFFERED.len(), "each once");
        assert!(all.iter().all(|d| !d.help.is_empty()));
    }

    #[test]
    fn series_carry_values_in_their_units_and_labels_for_every_key() {
        let mut record = test_records::container("c1", "p1");
        record.config.metadata = Some(crust_proto::cri::ContainerMetadata {
            name: "web".into(),
            attempt: 0,
        });
        let sample = ContainerSample {
            record,
            at: 42,
            usage: Some(CgroupUsage {
                cpu_nanos: Some(2_500_000_000),
                memory: Some(MemoryFigures {
                    working_set: 1024,
                    ..Default::default()
                }),
                processes: Some(3),
                ..Default::default()
            }),
            layer: Some(LayerUsage {
                bytes: 4096,
                inodes: 2,
            }),
            upper: "/x/upper".into(),
        };
        let metrics = container_metrics(&sample);
        assert_eq!(metrics.container_id, "c1");
        let described = descriptors();
        for metric in &metrics.metrics {
            let descriptor = described.iter().find(|d| d.name == metric.name).unwrap();
            assert_eq!(metric.label_values.len(), descriptor.label_keys.len());
            assert_eq!(metric.timestamp, 42);
        }
        let value = |name: &str| {
            metrics
                .metrics
                .iter()
                .find(|m| m.name == name)
                .map(|m| (m.value.as_ref().unwrap().value, m.metric_type))
        };
        assert_eq!(value(CPU_USAGE), Some((2, MetricType::Counter as i32)));
        assert_eq!(
            value(MEMORY_WORKING_SET),
            Some((1024, MetricType::Gauge as i32))
        );
        assert_eq!(value(PROCESSES), Some((3, MetricType::Gauge as i32)));
        assert_eq!(value(FS_USAGE), Some((4096, MetricType::Gauge as i32)));
        assert_eq!(value(CPU_USER), None, "not measured, not reported");
        assert_eq!(metrics.metrics[0].label_values, ["c1", "web", ""]);
    }
}
