//! The namespaces of a pod's infra process (which makes them) and of its containers (which
//! join them through the infra process).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::runtime::records::PodNamespaces;

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path);
    ns
}

/// The infra process's: new ones, except those the pod shares with the node, and the network
/// namespace pinned for the pod (`netns`) when there is one.
pub fn infra(ns: PodNamespaces, netns: Option<&Path>) -> Vec<LinuxNamespace> {
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    if !ns.host_network {
        namespaces.push(namespace(
            LinuxNamespaceType::Network,
            netns.map(Path::to_path_buf),
        ));
        namespaces.push(namespace(LinuxNamespaceType::Uts, None));
    }
    if !ns.host_ipc {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, None));
    }
    if !ns.host_pid {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    namespaces
}

/// A container's: its own mount namespace, the pod's network, UTS and IPC namespaces (those of
/// infra process `infra_pid`), and the pod's pid namespace when the pod shares one.
pub fn container(ns: PodNamespaces, infra_pid: u32) -> Vec<LinuxNamespace> {
    let infra = |kind: &str| Some(PathBuf::from(format!("/proc/{infra_pid}/ns/{kind}")));
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    if !ns.host_network {
        namespaces.push(namespace(LinuxNamespaceType::Network, infra("net")));
        namespaces.push(namespace(LinuxNamespaceType::Uts, infra("uts")));
    }
    if !ns.host_ipc {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, infra("ipc")));
    }
    if !ns.host_pid {
        let path = if ns.shared_pid { infra("pid") } else { None };
        namespaces.push(namespace(LinuxNamespaceType::Pid, path));
    }
    namespaces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(namespaces: &[LinuxNamespace]) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        namespaces
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    #[test]
    fn containers_join_the_infra_processs_namespaces() {
        let shared = PodNamespaces {
            shared_pid: true,
            ..Default::default()
        };
        let joined = kinds(&container(shared, 42));
        assert_eq!(
            joined,
            [
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some("/proc/42/ns/net".into())),
                (LinuxNamespaceType::Uts, Some("/proc/42/ns/uts".into())),
                (LinuxNamespaceType::Ipc, Some("/proc/42/ns/ipc".into())),
                (LinuxNamespaceType::Pid, Some("/proc/42/ns/pid".into())),
            ]
        );
        let own_pid = kinds(&container(PodNamespaces::default(), 42));
        assert!(own_pid.contains(&(LinuxNamespaceType::Pid, None)));
    }

    #[test]
    fn the_nodes_namespaces_are_not_replaced() {
        let host = PodNamespaces {
            host_network: true,
            host_ipc: true,
            host_pid: true,
            shared_pid: false,
        };
        assert_eq!(
            kinds(&infra(host, Some(Path::new("/run/crust/netns/p")))),
            [(LinuxNamespaceType::Mount, None)]
        );
        assert_eq!(
            kinds(&container(host, 42)),
            [(LinuxNamespaceType::Mount, None)]
        );
        assert_eq!(infra(PodNamespaces::default(), None).len(), 5);
    }

    #[test]
    fn the_infra_process_joins_the_pinned_network_namespace() {
        let own = kinds(&infra(
            PodNamespaces::default(),
            Some(Path::new("/run/crust/netns/p")),
        ));
        assert!(own.contains(&(
            LinuxNamespaceType::Network,
            Some(PathBuf::from("/run/crust/netns/p"))
        )));
        let fresh = kinds(&infra(PodNamespaces::default(), None));
        assert!(fresh.contains(&(LinuxNamespaceType::Network, None)));
    }
}
