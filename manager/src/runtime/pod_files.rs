//! A pod's own files, shared by all its containers: `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf` and a `/dev/shm` tmpfs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crust_proto::cri::PodSandboxConfig;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{ManagerError, Result};

/// Size of a pod's `/dev/shm` (Docker's and containerd's default).
const SHM_SIZE: &str = "size=65536k";

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// The directory holding one pod's files.
#[derive(Debug, Clone)]
pub struct PodFiles {
    dir: PathBuf,
}

impl PodFiles {
    /// The files under `dir`.
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The pod's `/etc/hostname`.
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }

    /// The pod's `/etc/hosts`.
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// The pod's `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// The pod's `/dev/shm` mount point.
    pub fn shm(&self) -> PathBuf {
        self.dir.join("shm")
    }

    /// Writes the files for `config` and mounts the shm tmpfs (unless the pod uses the
    /// node's IPC namespace, whose `/dev/shm` its containers then share).
    pub fn create(
        &self,
        config: &PodSandboxConfig,
        host_network: bool,
        host_ipc: bool,
    ) -> Result<()> {
        let io_error =
            |what: &Path, e: io::Error| ManagerError::io(format!("write {}", what.display()), e);
        fs::create_dir_all(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let hostname = if host_network {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            config.hostname.clone()
        };
        fs::write(self.hostname(), format!("{hostname}\n"))
            .map_err(|e| io_error(&self.hostname(), e))?;
        let hosts = if host_network {
            fs::read_to_string("/etc/hosts").unwrap_or_else(|_| DEFAULT_HOSTS.to_string())
        } else {
            DEFAULT_HOSTS.to_string()
        };
        fs::write(self.hosts(), hosts).map_err(|e| io_error(&self.hosts(), e))?;
        fs::write(self.resolv_conf(), resolv_conf(config)?)
            .map_err(|e| io_error(&self.resolv_conf(), e))?;
        let shm = self.shm();
        fs::create_dir_all(&shm).map_err(|e| io_error(&shm, e))?;
        if !host_ipc {
            mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(format!("mode=1777,{SHM_SIZE}").as_str()),
            )
            .map_err(|e| ManagerError::io(format!("mount tmpfs on {}", shm.display()), e.into()))?;
        }
        Ok(())
    }

    /// Unmounts the shm tmpfs (if mounted); idempotent.
    pub fn unmount(&self) -> Result<()> {
        match umount2(&self.shm(), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(ManagerError::io(
                format!("unmount {}", self.shm().display()),
                e.into(),
            )),
        }
    }

    /// Unmounts and removes everything.
    pub fn remove(&self) -> Result<()> {
        self.unmount()?;
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ManagerError::io(
                format!("remove {}", self.dir.display()),
                e,
            )),
            _ => Ok(()),
        }
    }
}

/// `resolv.conf` from the pod's DNS config, else the node's (as containerd does).
fn resolv_conf(config: &PodSandboxConfig) -> Result<String> {
    let Some(dns) = config
        .dns_config
        .as_ref()
        .filter(|d| !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()))
    else {
        return Ok(fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    };
    let mut text = String::new();
    for value in dns.servers.iter().chain(&dns.searches).chain(&dns.options) {
        if value.contains(['\n', '\r']) {
            return Err(ManagerError::InvalidArgument(format!(
                "DNS config value {value:?} has a line break"
            )));
        }
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::DnsConfig;

    #[test]
    fn resolv_conf_from_the_pods_dns_config() {
        let config = PodSandboxConfig {
            dns_config: Some(DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec![
                    "default.svc.cluster.local".into(),
                    "svc.cluster.local".into(),
                ],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&config).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        let hostile = PodSandboxConfig {
            dns_config: Some(DnsConfig {
                servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            resolv_conf(&hostile),
            Err(ManagerError::InvalidArgument(why)) if why.contains("line break")
        ));
    }
}
