//! A pod's network counters, from `/proc/<pid>/net/dev` of a process in the pod's network
//! namespace (the infra process): what the kernel counts per interface of that namespace.

/// The counters of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// Its name in the pod (eth0).
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// The interface kubelet reports as the pod's (as containerd and cAdvisor name it).
pub const DEFAULT_INTERFACE: &str = "eth0";

/// The interfaces of a `net/dev` text but loopback (traffic inside the pod is not the pod's
/// network use, and cAdvisor leaves it out too).
pub fn parse(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name == "lo" {
                return None;
            }
            // Receive: bytes packets errs drop fifo frame compressed multicast;
            // transmit: bytes packets errs drop fifo colls carrier compressed.
            let fields: Vec<u64> = counters
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            if fields.len() < 16 {
                return None;
            }
            Some(InterfaceCounters {
                name: name.to_string(),
                rx_bytes: fields[0],
                rx_packets: fields[1],
                rx_errors: fields[2],
                tx_bytes: fields[8],
                tx_packets: fields[9],
                tx_errors: fields[10],
            })
        })
        .collect()
}

/// The interfaces of the network namespace process `pid` is in; none when it cannot be read
/// (the process is gone).
pub fn read(pid: u32) -> Vec<InterfaceCounters> {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .map(|text| parse(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1200      12    0    0    0     0          0         0     1200      12    0    0    0     0       0          0
  eth0: 9876543   4321    3    1    0     0          0         0  1234567    765    2    0    0     0       0          0
tunl0@NONE:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
 bad0: 1 2 3
";

    #[test]
    fn interfaces_but_loopback_with_their_counters() {
        let interfaces = parse(NET_DEV);
        assert_eq!(interfaces.len(), 2, "{interfaces:?}");
        assert_eq!(
            interfaces[0],
            InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 9_876_543,
                rx_packets: 4321,
                rx_errors: 3,
                tx_bytes: 1_234_567,
                tx_packets: 765,
                tx_errors: 2,
            }
        );
        assert_eq!(interfaces[1].name, "tunl0@NONE");
        assert!(parse("").is_empty());
        assert!(parse("garbage\n: 1 2\n").is_empty());
    }

    #[test]
    fn our_own_namespace_reads() {
        // Whatever this host has, reading it must not fail or report loopback.
        let interfaces = read(std::process::id());
        assert!(interfaces.iter().all(|i| i.name != "lo"));
        assert!(read(u32::MAX).is_empty());
    }
}
