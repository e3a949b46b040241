//! What a pod tells its plugins: the `CNI_ARGS` pairs kubelet's runtimes pass, and the
//! capability args (`portMappings`, `bandwidth`, `dns`) built from its config as containerd
//! builds them.

use std::collections::BTreeMap;

use crust_proto::cri::{PodSandboxConfig, Protocol};
use serde_json::{Value, json};

/// The annotations kubelet sets for traffic shaping.
const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// `CNI_ARGS` pairs for pod `id`.
pub fn cni_args(id: &str, config: &PodSandboxConfig) -> Vec<(String, String)> {
    let metadata = config.metadata.clone().unwrap_or_default();
    [
        ("IgnoreUnknown", "1".to_string()),
        ("K8S_POD_NAMESPACE", metadata.namespace),
        ("K8S_POD_NAME", metadata.name),
        ("K8S_POD_INFRA_CONTAINER_ID", id.to_string()),
        ("K8S_POD_UID", metadata.uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The pairs as `CNI_ARGS` text.
pub fn cni_args_text(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The capability args the pod's config gives; a plugin gets those it declares.
pub fn capability_args(config: &PodSandboxConfig) -> Result<BTreeMap<String, Value>, String> {
    let mut args = BTreeMap::new();
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match Protocol::try_from(p.protocol) {
                Ok(Protocol::Udp) => "udp",
                Ok(Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            let mut mapping = json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol,
            });
            if !p.host_ip.is_empty() {
                mapping["hostIP"] = Value::String(p.host_ip.clone());
            }
            mapping
        })
        .collect();
    if !ports.is_empty() {
        args.insert("portMappings".to_string(), Value::Array(ports));
    }
    let rate = |key: &str| -> Result<Option<u64>, String> {
        config
            .annotations
            .get(key)
            .map(|text| {
                bandwidth_quantity(text).ok_or_else(|| {
                    format!("annotation {key}: {text:?} is not a bandwidth between 1k and 1P")
                })
            })
            .transpose()
    };
    let (ingress, egress) = (rate(INGRESS_BANDWIDTH)?, rate(EGRESS_BANDWIDTH)?);
    if ingress.is_some() || egress.is_some() {
        // As containerd: the rate from the annotation, an unlimited (u32::MAX) burst.
        let mut bandwidth = serde_json::Map::new();
        if let Some(rate) = ingress {
            bandwidth.insert("ingressRate".into(), rate.into());
            bandwidth.insert("ingressBurst".into(), u64::from(u32::MAX).into());
        }
        if let Some(rate) = egress {
            bandwidth.insert("egressRate".into(), rate.into());
            bandwidth.insert("egressBurst".into(), u64::from(u32::MAX).into());
        }
        args.insert("bandwidth".to_string(), Value::Object(bandwidth));
    }
    if let Some(dns) = &config.dns_config {
        args.insert(
            "dns".to_string(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    Ok(args)
}

/// A Kubernetes quantity in bits per second ("10M", "1Gi", "500k", "1e6"), rounded up, within
/// kubelet's bounds for bandwidth (1k to 1P; so "E", "Pi" and "Ei", always beyond them, are
/// not read at all).
pub fn bandwidth_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        exponent if exponent.starts_with(['e', 'E']) => {
            10f64.powi(exponent[1..].parse::<i32>().ok()?)
        }
        _ => return None,
    };
    let value = (number * scale).ceil();
    (1e3..=1e15).contains(&value).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::{DnsConfig, PodSandboxMetadata, PortMapping};

    fn pod() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: "u-1".into(),
                namespace: "prod".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cni_args_name_the_pod() {
        let pairs = cni_args("abc", &pod());
        assert_eq!(
            cni_args_text(&pairs),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
    }

    #[test]
    fn port_mappings_bandwidth_and_dns_become_capability_args() {
        let mut config = pod();
        assert!(capability_args(&config).unwrap().is_empty());
        config.port_mappings = vec![
            PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: 80,
                host_port: 8080,
                host_ip: "127.0.0.1".into(),
            },
            PortMapping {
                protocol: Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: String::new(),
            },
            PortMapping {
                protocol: Protocol::Sctp as i32,
                container_port: 9,
                host_port: 9009,
                host_ip: String::new(),
            },
            // No host port: nothing to map.
            PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: 8443,
                host_port: 0,
                host_ip: String::new(),
            },
        ];
        config
            .annotations
            .insert(INGRESS_BANDWIDTH.into(), "10M".into());
        config.dns_config = Some(DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        let args = capability_args(&config).unwrap();
        assert_eq!(
            args["portMappings"],
            json!([
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
                {"hostPort": 9009, "containerPort": 9, "protocol": "sctp"}
            ])
        );
        assert_eq!(
            args["bandwidth"],
            json!({"ingressRate": 10_000_000u64, "ingressBurst": 4294967295u64})
        );
        assert_eq!(args["dns"]["servers"], json!(["10.0.0.10"]));
        config
            .annotations
            .insert(EGRESS_BANDWIDTH.into(), "lots".into());
        let error = capability_args(&config).unwrap_err();
        assert!(error.contains(EGRESS_BANDWIDTH), "{error}");
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(bandwidth_quantity("1k"), Some(1000));
        assert_eq!(bandwidth_quantity("10M"), Some(10_000_000));
        assert_eq!(bandwidth_quantity("1Mi"), Some(1 << 20));
        assert_eq!(bandwidth_quantity("1.5G"), Some(1_500_000_000));
        assert_eq!(bandwidth_quantity("1e6"), Some(1_000_000));
        assert_eq!(bandwidth_quantity("2000"), Some(2000));
        assert_eq!(bandwidth_quantity("2000000m"), Some(2000));
        assert_eq!(bandwidth_quantity("3T"), Some(3_000_000_000_000));
        assert_eq!(bandwidth_quantity("1Ki"), Some(1024));
        assert_eq!(bandwidth_quantity("2Gi"), Some(2 << 30));
        assert_eq!(bandwidth_quantity("1Ti"), Some(1 << 40));
        assert_eq!(bandwidth_quantity("1P"), Some(1_000_000_000_000_000));
        for bad in [
            "", "999", "2P", "10X", "fast", "1e", "-5M", "1x3", "1E", "1Pi", "1Ei",
        ] {
            assert_eq!(bandwidth_quantity(bad), None, "{bad}");
        }
    }
}
