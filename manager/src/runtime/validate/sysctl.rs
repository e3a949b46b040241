//! A pod's sysctls: only those the kernel keeps per namespace, and only in a namespace the pod
//! has of its own, so a pod never changes the node. The rules are runc's (which refuses the
//! same sysctls when it starts the pod, as an Internal error): checked here first, they
//! become InvalidArgument naming the sysctl, before anything of the pod exists.

use std::collections::HashMap;

use super::invalid;
use crate::error::Result;
use crate::runtime::records::PodNamespaces;

/// The IPC namespace's sysctls besides `fs.mqueue.*`.
const IPC: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Ipc,
    Network,
    Uts,
}

/// `name` with `.` as separator: a name whose first separator is `/` (`net/ipv4/ip_forward`)
/// has its `/` and `.` swapped, as runc and Kubernetes do, so that a `.` inside a component
/// (`net/ipv4/conf/eth0.100/rp_filter`) stays one.
fn dotted(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(at) if name[at..].starts_with('/') => name
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// The namespace of the sysctl with dotted name `name`, if the kernel keeps it per namespace
/// (and runc lets a container set it). `kernel.hostname` is the UTS namespace's too, but runc
/// refuses it: the pod's hostname is set through its own field.
fn namespace_of(name: &str) -> Option<Namespace> {
    if IPC.contains(&name) || name.starts_with("fs.mqueue.") {
        Some(Namespace::Ipc)
    } else if name.starts_with("net.") {
        Some(Namespace::Network)
    } else if name == "kernel.domainname" {
        Some(Namespace::Uts)
    } else {
        None
    }
}

fn check_one(name: &str, value: &str, namespaces: PodNamespaces) -> Result<()> {
    let refused = |why: &str| Err(invalid(format!("sysctl {name:?} {why}")));
    // runc writes /proc/sys/<name with every '.' made '/'>: an empty part between separators
    // is how `..` (or `.`) would climb out of the sysctl tree.
    if name.split(['.', '/']).any(str::is_empty) {
        return refused("has an empty component (or \"..\")");
    }
    if name.chars().any(char::is_control) {
        return refused("holds a control character");
    }
    // The kernel parses one line; a tab may separate fields (kernel.sem takes four).
    if value.is_empty() {
        return refused("has an empty value");
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return refused(&format!(
            "value {value:?} holds a newline, NUL or other control character"
        ));
    }
    let name = dotted(name);
    let shared_with_node = match namespace_of(&name) {
        None if name == "kernel.hostname" => {
            return refused("is refused: the pod's hostname field sets it");
        }
        None => return refused("is not namespaced: it would change the node"),
        Some(Namespace::Ipc) => namespaces.host_ipc.then_some("IPC"),
        // In CRI a pod on the node's network is in the node's UTS namespace too.
        Some(Namespace::Network) => namespaces.host_network.then_some("network"),
        Some(Namespace::Uts) => namespaces.host_network.then_some("UTS"),
    };
    match shared_with_node {
        Some(namespace) => refused(&format!(
            "is refused: the pod uses the node's {namespace} namespace"
        )),
        None => Ok(()),
    }
}

/// Refuses a sysctl that is not namespaced, whose namespace the pod shares with the node, or
/// whose name or value is malformed.
pub fn check(sysctls: &HashMap<String, String>, namespaces: PodNamespaces) -> Result<()> {
    sysctls
        .iter()
        .try_for_each(|(name, value)| check_one(name, value, namespaces))
}

#[cfg(test)]
mod tests {
    use super::super::tests::refused_for;
    use super::*;

    const OWN: PodNamespaces = PodNamespaces {
        host_network: false,
        host_ipc: false,
        host_pid: false,
        shared_pid: false,
    };
    const HOST_NETWORK: PodNamespaces = PodNamespaces {
        host_network: true,
        ..OWN
    };
    const HOST_IPC: PodNamespaces = PodNamespaces {
        host_ipc: true,
        ..OWN
    };

    fn one(name: &str, value: &str, namespaces: PodNamespaces) -> Result<()> {
        check(&[(name.to_string(), value.to_string())].into(), namespaces)
    }

    #[test]
    fn slash_names_are_made_dotted_keeping_dots_inside_components() {
        assert_eq!(dotted("net/ipv4/ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(
            dotted("net/ipv4/conf/eth0.100/rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
        assert_eq!(dotted("net.ipv4.ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(dotted("kernel"), "kernel");
    }

    #[test]
    fn namespaced_sysctls_pass_in_the_pods_own_namespaces() {
        for (name, value) in [
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("net.ipv4.ping_group_range", "0 2147483647"),
            ("net/ipv4/ip_local_port_range", "1024\t65535"),
            ("net/ipv4/conf/eth0.100/rp_filter", "1"),
            ("kernel.shm_rmid_forced", "1"),
            ("kernel.sem", "250 32000 32 128"),
            ("kernel.shmmax", "68719476736"),
            ("kernel.msgmni", "32000"),
            ("fs.mqueue.msg_max", "100"),
            ("kernel.domainname", "example.com"),
        ] {
            one(name, value, OWN).unwrap();
        }
        // Each namespace is checked on its own: IPC sysctls need only the IPC namespace.
        one("kernel.shmmax", "1", HOST_NETWORK).unwrap();
        one("net.core.somaxconn", "1024", HOST_IPC).unwrap();
    }

    #[test]
    fn sysctls_of_the_nodes_namespaces_are_refused() {
        for (name, namespaces) in [
            ("kernel.shmmax", HOST_IPC),
            ("kernel/shm_rmid_forced", HOST_IPC),
            ("fs.mqueue.queues_max", HOST_IPC),
            ("net.ipv4.ip_forward", HOST_NETWORK),
            ("net/core/somaxconn", HOST_NETWORK),
            ("kernel.domainname", HOST_NETWORK),
        ] {
            refused_for(one(name, "1", namespaces), name);
        }
    }

    #[test]
    fn sysctls_no_namespace_holds_are_refused() {
        for name in [
            "kernel.hostname",
            "kernel.ns_last_pid",
            "kernel.pid_max",
            "vm.max_map_count",
            "fs.file-max",
            "user.max_user_namespaces",
            "kernel.shm",
            "fs.mqueue",
            "net",
            "kernel.msgmax.extra",
        ] {
            refused_for(one(name, "1", OWN), name);
        }
    }

    #[test]
    fn malformed_names_and_values_are_refused() {
        for name in [
            "",
            "net..ipv4",
            "net.ipv4.",
            ".net.ipv4",
            "net/ipv4/../../kernel/pid_max",
            "net.ipv4.conf.eth0/../x",
            "net/ipv4//x",
            "net.ipv4.x\n",
        ] {
            refused_for(one(name, "1", OWN), "sysctl");
        }
        for value in ["", "1\n", "1\0", "1\r"] {
            refused_for(
                one("net.ipv4.ip_forward", value, OWN),
                "net.ipv4.ip_forward",
            );
        }
    }
}
