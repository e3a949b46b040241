//! What an ADD returns, read the same way for every result format from 0.3.0 to 1.1.0 (0.3.x
//! and 0.4.0 add an `ips[].version` field the later ones dropped), and the pod's IPs chosen
//! from it.

use std::net::IpAddr;

use serde::Deserialize;

/// The parts of a result crustd reads; the whole JSON is kept separately and passed on
/// verbatim as `prevResult`.
#[derive(Debug, Default, Deserialize)]
pub struct AddResult {
    /// Interfaces the plugins made.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses given to them.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

/// One interface.
#[derive(Debug, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// The netns it is in; empty for host-side interfaces (a bridge, a veth's host end).
    #[serde(default)]
    pub sandbox: String,
}

/// One address.
#[derive(Debug, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, "10.1.0.5/24".
    pub address: String,
    /// Index into `interfaces`, if the plugin said.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// Which address comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpPreference {
    /// IPv4 first (the default).
    Ipv4,
    /// IPv6 first.
    Ipv6,
    /// As the plugins listed them.
    Cni,
}

impl IpPreference {
    /// From the `ip_pref` knob (already validated).
    pub fn from_knob(knob: &str) -> Self {
        match knob {
            "ipv6" => IpPreference::Ipv6,
            "cni" => IpPreference::Cni,
            _ => IpPreference::Ipv4,
        }
    }
}

/// The addresses of interface `ifname` inside the pod, ordered by `preference`. An address
/// the plugin tied to no interface counts as the pod's.
pub fn pod_ips(result: &AddResult, ifname: &str, preference: IpPreference) -> Vec<IpAddr> {
    let in_pod = |ip: &IpConfig| match ip.interface {
        None => true,
        Some(index) => result
            .interfaces
            .get(index)
            .is_some_and(|i| i.name == ifname && !i.sandbox.is_empty()),
    };
    let mut ips: Vec<IpAddr> = result
        .ips
        .iter()
        .filter(|ip| in_pod(ip))
        .filter_map(|ip| {
            ip.address
                .split('/')
                .next()
                .and_then(|a| a.parse::<IpAddr>().ok())
        })
        .collect();
    match preference {
        // A stable sort keeps the plugins' order within each family.
        IpPreference::Ipv4 => ips.sort_by_key(|ip| !ip.is_ipv4()),
        IpPreference::Ipv6 => ips.sort_by_key(|ip| !ip.is_ipv6()),
        IpPreference::Cni => {}
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUAL_STACK_1_0: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/crust/netns/x"},
            {"name": "net1", "sandbox": "/run/crust/netns/x"}
        ],
        "ips": [
            {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
            {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
            {"address": "10.1.0.1/24", "interface": 0},
            {"address": "10.1.0.6/24", "interface": 2},
            {"address": "10.7.0.7/24", "interface": 3}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    const OLD_0_3: &str = r#"{
        "cniVersion": "0.3.1",
        "interfaces": [{"name": "eth0", "sandbox": "/proc/1/ns/net"}],
        "ips": [{"version": "4", "address": "10.2.0.9/16", "gateway": "10.2.0.1", "interface": 0}]
    }"#;

    fn ips(text: &str, pref: IpPreference) -> Vec<String> {
        let result: AddResult = serde_json::from_str(text).unwrap();
        pod_ips(&result, "eth0", pref)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn pod_ips_are_the_pod_interfaces_ordered_by_preference() {
        assert_eq!(
            ips(DUAL_STACK_1_0, IpPreference::Ipv4),
            ["10.1.0.5", "10.1.0.6", "fd00::5"]
        );
        assert_eq!(
            ips(DUAL_STACK_1_0, IpPreference::Ipv6),
            ["fd00::5", "10.1.0.5", "10.1.0.6"]
        );
        assert_eq!(
            ips(DUAL_STACK_1_0, IpPreference::Cni),
            ["fd00::5", "10.1.0.5", "10.1.0.6"]
        );
        assert_eq!(ips(OLD_0_3, IpPreference::Ipv4), ["10.2.0.9"]);
        // No interface index: the address is the pod's.
        assert_eq!(
            ips(
                r#"{"ips":[{"address":"192.168.9.2/24"}]}"#,
                IpPreference::Ipv4
            ),
            ["192.168.9.2"]
        );
        assert!(ips("{}", IpPreference::Ipv4).is_empty());
        assert_eq!(IpPreference::from_knob(""), IpPreference::Ipv4);
        assert_eq!(IpPreference::from_knob("ipv6"), IpPreference::Ipv6);
        assert_eq!(IpPreference::from_knob("cni"), IpPreference::Cni);
    }
}
