//! The OCI runtime specs (`config.json`) of a pod's infra process and of its containers, built
//! with oci-spec from what kubelet asked for and what the image says.
//!
//! Each concern has its module ([`process`], [`mounts`], [`namespaces`], [`security`],
//! [`resources`]) of functions from the request to a piece of the spec; this module puts the
//! pieces together. Nothing here changes the host: what must exist on it (a missing volume
//! directory) is listed for the caller to make.

mod lsm;
mod mounts;
mod namespaces;
mod process;
mod resources;
mod seccomp;
mod security;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crust_proto::cri::{ContainerConfig, LinuxContainerSecurityContext, PodSandboxConfig};
use oci_spec::runtime::{LinuxBuilder, ProcessBuilder, RootBuilder, Spec};

use super::cgroups;
use super::host::{HandlerSupport, HostSupport};
use super::image_volumes::ImageVolume;
use super::pod_files::PodFiles;
use super::records::{PodNamespaces, PodRecord};
use super::user::ResolvedUser;
use crate::error::{ManagerError, Result};
use crate::images::store::RunConfig;

pub use lsm::DEFAULT_APPARMOR_PROFILE;
pub use mounts::missing_sources as missing_mount_sources;
pub use resources::apply_limits;

fn spec_error(e: oci_spec::OciSpecError) -> ManagerError {
    ManagerError::InvalidArgument(format!("runtime spec: {e}"))
}

/// Refuses a path that is relative, climbs with `..` or holds NUL (which would cut it).
pub fn check_path(what: &str, path: &str) -> Result<()> {
    if path.contains('\0') {
        return Err(ManagerError::InvalidArgument(format!(
            "{what} {path:?} must not hold NUL"
        )));
    }
    let p = Path::new(path);
    if path.is_empty() || !p.is_absolute() {
        return Err(ManagerError::InvalidArgument(format!(
            "{what} {path:?} must be an absolute path"
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(ManagerError::InvalidArgument(format!(
            "{what} {path:?} must not contain \"..\""
        )));
    }
    Ok(())
}

/// Writes `spec` as `bundle`'s `config.json`, readable by root only: it carries the
/// container's environment, which often holds secrets.
pub fn write(spec: &Spec, bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    let bytes = serde_json::to_vec(spec).map_err(|e| {
        ManagerError::io(
            format!("encode {}", path.display()),
            std::io::Error::other(e),
        )
    })?;
    crate::images::store::write_atomically(&path, &bytes)
}

/// The spec in `bundle`'s `config.json`, as [`write`] left it.
pub fn read(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path)
        .map_err(|e| ManagerError::io(format!("read {}", path.display()), std::io::Error::other(e)))
}

/// What a pod gives the specs of its infra process and containers.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    /// The pod's id.
    pub id: &'a str,
    /// Its config.
    pub config: &'a PodSandboxConfig,
    /// Its namespace choices.
    pub namespaces: PodNamespaces,
    /// Pid of its infra process, whose namespaces containers join (0 for the infra spec).
    pub infra_pid: u32,
    /// Its pinned network namespace, which the infra process joins.
    pub netns: Option<&'a Path>,
    /// Its cgroup.
    pub cgroup_parent: &'a str,
    /// Whether cgroups are managed through systemd.
    pub systemd_cgroup: bool,
    /// `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf` and the `/dev/shm` of the pod.
    pub files: &'a PodFiles,
    /// What the host supports (capabilities, AppArmor, SELinux).
    pub host: &'a HostSupport,
    /// What the pod's runtime handler supports.
    pub handler: HandlerSupport,
}

impl<'a> PodContext<'a> {
    /// The context of `pod` (its infra pid is 0 until the infra process runs).
    pub fn of(
        pod: &'a PodRecord,
        files: &'a PodFiles,
        systemd_cgroup: bool,
        host: &'a HostSupport,
    ) -> Self {
        Self {
            id: &pod.id,
            config: &pod.config,
            namespaces: pod.namespaces,
            infra_pid: pod.infra_pid,
            netns: pod.network.netns.as_deref(),
            cgroup_parent: &pod.cgroup_parent,
            systemd_cgroup,
            files,
            host,
            handler: host.handler(&pod.runtime_handler),
        }
    }

    fn cgroups_path(&self, id: &str) -> PathBuf {
        PathBuf::from(cgroups::cgroups_path(
            self.cgroup_parent,
            id,
            self.systemd_cgroup,
        ))
    }
}

/// What the image and the resolved user give a container's spec.
#[derive(Debug, Clone)]
pub struct ImageContext<'a> {
    /// The image's run config.
    pub config: &'a RunConfig,
    /// The image name kubelet asked for.
    pub name: &'a str,
    /// The user the process runs as.
    pub user: ResolvedUser,
    /// The image's volumes this container gets (directories made by the caller).
    pub volumes: &'a [ImageVolume],
}

fn annotations(pairs: &[(&str, &str)], extra: &HashMap<String, String>) -> HashMap<String, String> {
    let mut all = extra.clone();
    for (key, value) in pairs {
        all.insert(key.to_string(), value.to_string());
    }
    all
}

/// The spec of pod `pod`'s infra process: it makes the pod's namespaces and holds them.
pub fn infra_spec(pod: &PodContext<'_>, rootfs: &Path) -> Result<Spec> {
    let mut spec = Spec::default();
    let capabilities =
        security::capabilities(security::CapabilityRequest::default(), &pod.host.bounding)?;
    let bounding = capabilities.bounding().clone().unwrap_or_default();
    let mut process = ProcessBuilder::default()
        .args(vec!["/pause".to_string()])
        .env(vec![process::DEFAULT_PATH.to_string()])
        .cwd("/")
        .no_new_privileges(true)
        .capabilities(capabilities);
    if let Some(score) = oom_score_adj(INFRA_OOM_SCORE_ADJ, pod.host) {
        process = process.oom_score_adj(score);
    }
    let process = process.build().map_err(spec_error)?;
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .map_err(spec_error)?,
    ));
    let mut all_mounts = mounts::standard(false)?;
    if !pod.namespaces.host_ipc {
        all_mounts.push(mounts::bind(
            "/dev/shm",
            &pod.files.shm(),
            false,
            "rprivate",
        )?);
    }
    spec.set_mounts(Some(all_mounts));
    spec.set_hostname((!pod.namespaces.host_network).then(|| pod.config.hostname.clone()));
    let sysctls = pod
        .config
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone())
        .unwrap_or_default();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces::infra(pod.namespaces, pod.netns))
        .cgroups_path(pod.cgroups_path(pod.id))
        .sysctl(sysctls)
        .resources(resources::device_rules(&[], false)?);
    // The pod's own seccomp choice is its infra process's, as containerd applies it.
    if let Some(filter) = seccomp::container_seccomp(&pod_security(pod.config), &bounding)? {
        linux = linux.seccomp(filter);
    }
    let linux = linux.build().map_err(spec_error)?;
    spec.set_linux(Some(linux));
    spec.set_annotations(Some(annotations(
        &[
            ("io.kubernetes.cri.container-type", "sandbox"),
            ("io.kubernetes.cri.sandbox-id", pod.id),
        ],
        &pod.config.annotations,
    )));
    Ok(spec)
}

/// The score containerd gives a pod's infra process: kept last of the pod's processes.
const INFRA_OOM_SCORE_ADJ: i64 = -998;

/// The `oom_score_adj` a process gets for `asked`: raised to the host's floor where there is
/// one (written even when that is 0: the shim's own score, which it would inherit, is 1);
/// None when nothing was asked (0).
fn oom_score_adj(asked: i64, host: &HostSupport) -> Option<i32> {
    let score = host.oom_score_floor.map_or(asked, |floor| asked.max(floor));
    // Validation keeps `asked` within -1000..=1000; the floor comes from the kernel.
    (asked != 0).then(|| score.clamp(-1000, 1000) as i32)
}

/// The pod-level security settings that also exist per container, as a container's.
#[allow(deprecated)] // the old seccomp field is still what older kubelets send
fn pod_security(config: &PodSandboxConfig) -> LinuxContainerSecurityContext {
    let pod = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    LinuxContainerSecurityContext {
        privileged: pod.privileged,
        seccomp: pod.seccomp,
        seccomp_profile_path: pod.seccomp_profile_path,
        ..Default::default()
    }
}

/// The spec of container `id` of pod `pod`.
pub fn container_spec(
    id: &str,
    pod: &PodContext<'_>,
    config: &ContainerConfig,
    image: &ImageContext<'_>,
) -> Result<Spec> {
    let security_context = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    security::check_privilege(&security_context, pod.config)?;
    let privileged = security_context.privileged;
    let capabilities = security::container_capabilities(&security_context, &pod.host.bounding)?;
    let limits = config.linux.as_ref().and_then(|l| l.resources.clone());

    let mut process = ProcessBuilder::default()
        .args(process::args(config, image.config)?)
        .env(process::environment(
            config,
            image.config,
            &pod.config.hostname,
        ))
        .cwd(process::working_dir(config, image.config))
        .terminal(config.tty)
        .user(process::user(image)?)
        .no_new_privileges(security_context.no_new_privs)
        .capabilities(capabilities.clone());
    if let Some(limits) = &limits
        && let Some(score) = oom_score_adj(limits.oom_score_adj, pod.host)
    {
        process = process.oom_score_adj(score);
    }
    if let Some(profile) = lsm::apparmor_profile(&security_context, pod.host.apparmor)? {
        process = process.apparmor_profile(profile);
    }
    if let Some(label) = lsm::selinux_label(&security_context, pod.host.selinux) {
        process = process.selinux_label(label);
    }
    let mut spec = Spec::default();
    spec.set_process(Some(process.build().map_err(spec_error)?));
    spec.set_hostname(None);
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(security_context.readonly_rootfs)
            .build()
            .map_err(spec_error)?,
    ));
    let (all_mounts, rootfs_propagation) = mounts::container(
        pod,
        config,
        image.volumes,
        privileged,
        security_context.readonly_rootfs,
    )?;
    spec.set_mounts(Some(all_mounts));

    let mut devices = Vec::new();
    let mut rules = Vec::new();
    for requested in &config.devices {
        let (linux_device, rule) = resources::device(requested)?;
        devices.push(linux_device);
        rules.push(rule);
    }
    if privileged {
        let host = resources::host_devices(Path::new("/dev"));
        let requested: Vec<PathBuf> = devices.iter().map(|d| d.path().clone()).collect();
        devices.extend(host.into_iter().filter(|d| !requested.contains(d.path())));
    }
    let mut cgroup = resources::device_rules(&rules, privileged)?;
    if let Some(limits) = &limits {
        resources::apply_limits(&mut cgroup, limits, pod.host)?;
    }
    let (masked, readonly) = security::hidden_paths(&security_context);
    let bounding = capabilities.bounding().clone().unwrap_or_default();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces::container(pod.namespaces, pod.infra_pid))
        .cgroups_path(pod.cgroups_path(id))
        .resources(cgroup)
        .devices(devices)
        .masked_paths(masked)
        .readonly_paths(readonly);
    if let Some(mode) = rootfs_propagation {
        linux = linux.rootfs_propagation(mode);
    }
    if let Some(filter) = seccomp::container_seccomp(&security_context, &bounding)? {
        linux = linux.seccomp(filter);
    }
    spec.set_linux(Some(linux.build().map_err(spec_error)?));

    let metadata = config.metadata.clone().unwrap_or_default();
    let pod_metadata = pod.config.metadata.clone().unwrap_or_default();
    spec.set_annotations(Some(annotations(
        &[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-id", pod.id),
            ("io.kubernetes.cri.sandbox-name", &pod_metadata.name),
            (
                "io.kubernetes.cri.sandbox-namespace",
                &pod_metadata.namespace,
            ),
            ("io.kubernetes.cri.sandbox-uid", &pod_metadata.uid),
            ("io.kubernetes.cri.container-name", &metadata.name),
            ("io.kubernetes.cri.image-name", image.name),
        ],
        &config.annotations,
    )));
    Ok(spec)
}

/// An image config whose every field the spec builders use is set.
#[cfg(test)]
fn test_image() -> RunConfig {
    RunConfig {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["serve".into()],
        env: vec!["PATH=/image/bin".into(), "MODE=image".into()],
        working_dir: "/srv".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::{ContainerMetadata, KeyValue, Mount as CriMount, PodSandboxMetadata};
    use oci_spec::runtime::LinuxNamespaceType;

    /// The busybox image as the spec tests see it, with no user of its own.
    fn context(image: &RunConfig) -> ImageContext<'_> {
        ImageContext {
            config: image,
            name: "busybox",
            user: ResolvedUser::default(),
            volumes: &[],
        }
    }

    fn with_pod<T>(f: impl FnOnce(&PodContext<'_>) -> T) -> T {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PodFiles::at(dir.path().to_path_buf());
        let host = crate::runtime::host::test_host();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            hostname: "web-0".into(),
            ..Default::default()
        };
        let pod = PodContext {
            id: "pod1",
            config: &config,
            namespaces: PodNamespaces {
                shared_pid: true,
                ..Default::default()
            },
            infra_pid: 42,
            netns: None,
            cgroup_parent: "/crust/pod1",
            systemd_cgroup: false,
            files: &files,
            host: &host,
            handler: HandlerSupport::default(),
        };
        f(&pod)
    }

    #[test]
    fn the_pods_shm_is_mounted_unless_the_pod_uses_the_hosts_ipc() {
        with_pod(|pod| {
            let shm_sources = |pod: &PodContext<'_>| -> Vec<PathBuf> {
                let spec = infra_spec(pod, Path::new("/pause-rootfs")).unwrap();
                spec.mounts()
                    .as_ref()
                    .unwrap()
                    .iter()
                    .filter(|m| m.destination() == Path::new("/dev/shm"))
                    .filter_map(|m| m.source().clone())
                    .collect()
            };
            assert_eq!(shm_sources(pod), [pod.files.shm()]);
            let host_ipc = PodContext {
                namespaces: PodNamespaces {
                    host_ipc: true,
                    ..pod.namespaces
                },
                ..pod.clone()
            };
            assert!(
                !shm_sources(&host_ipc).contains(&pod.files.shm()),
                "the node's /dev/shm is the pod's"
            );
        });
    }

    #[test]
    fn the_root_is_shared_when_any_volume_is_and_a_slave_for_host_to_container() {
        use crust_proto::cri::MountPropagation::{
            PropagationBidirectional as Shared, PropagationHostToContainer as Slave,
            PropagationPrivate as Private,
        };
        with_pod(|pod| {
            for (volumes, expected) in [
                (vec![], None),
                (vec![Private], None),
                (vec![Slave], Some("rslave")),
                (vec![Shared, Slave], Some("rshared")),
                (vec![Slave, Shared], Some("rshared")),
            ] {
                let config = ContainerConfig {
                    mounts: volumes
                        .iter()
                        .enumerate()
                        .map(|(i, propagation)| CriMount {
                            host_path: format!("/srv/v{i}"),
                            container_path: format!("/v{i}"),
                            propagation: *propagation as i32,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                let (mounts, root) = mounts::container(pod, &config, &[], false, false).unwrap();
                assert_eq!(root, expected, "{volumes:?}");
                // The volumes are added to the standard mounts, which stay.
                let targets: Vec<&Path> =
                    mounts.iter().map(|m| m.destination().as_path()).collect();
                assert!(targets.contains(&Path::new("/proc")), "{targets:?}");
                assert!(targets.contains(&Path::new("/dev/shm")), "{targets:?}");
                for volume in &config.mounts {
                    assert!(targets.contains(&Path::new(&volume.container_path)));
                }
            }
        });
    }

    #[test]
    fn the_process_runs_as_the_resolved_user_with_its_groups() {
        let img = test_image();
        let mut user = ResolvedUser {
            uid: 1000,
            gid: 1001,
            additional_gids: vec![2000, 2001],
        };
        let image = ImageContext {
            config: &img,
            name: "busybox",
            user: user.clone(),
            volumes: &[],
        };
        let built = process::user(&image).unwrap();
        assert_eq!(
            (built.uid(), built.gid(), built.additional_gids().clone()),
            (1000, 1001, Some(vec![2000, 2001]))
        );
        user.additional_gids.clear();
        let image = ImageContext { user, ..image };
        let built = process::user(&image).unwrap();
        assert_eq!(built.additional_gids(), &None, "no empty list in the spec");
    }

    #[test]
    fn an_oom_score_adjustment_is_set_only_when_kubelet_gives_one() {
        with_pod(|pod| {
            let img = test_image();
            let context = context(&img);
            for (asked, expected) in [(0, None), (500, Some(500)), (-997, Some(-997))] {
                let config = ContainerConfig {
                    linux: Some(crust_proto::cri::LinuxContainerConfig {
                        resources: Some(crust_proto::cri::LinuxContainerResources {
                            oom_score_adj: asked,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let spec = container_spec("c1", pod, &config, &context).unwrap();
                assert_eq!(
                    spec.process().as_ref().unwrap().oom_score_adj(),
                    expected,
                    "asked {asked}"
                );
            }
        });
    }

    #[test]
    fn container_joins_the_pods_namespaces_and_gets_its_files() {
        with_pod(|pod| {
            let config = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                envs: vec![KeyValue {
                    key: "MODE".into(),
                    value: "kube".into(),
                }],
                ..Default::default()
            };
            let img = test_image();
            let context = context(&img);
            let spec = container_spec("c1", pod, &config, &context).unwrap();
            let linux = spec.linux().as_ref().unwrap();
            let paths: Vec<_> = linux
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .map(|n| (n.typ(), n.path().clone()))
                .collect();
            assert!(paths.contains(&(
                LinuxNamespaceType::Network,
                Some(PathBuf::from("/proc/42/ns/net"))
            )));
            assert_eq!(
                linux.cgroups_path().as_ref().unwrap(),
                Path::new("/crust/pod1/c1")
            );
            let env = spec.process().as_ref().unwrap().env().clone().unwrap();
            assert!(env.contains(&"MODE=kube".to_string()), "{env:?}");
            let targets: Vec<_> = spec
                .mounts()
                .as_ref()
                .unwrap()
                .iter()
                .map(|m| m.destination().clone())
                .collect();
            for target in [
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/hostname",
                "/dev/shm",
            ] {
                assert!(targets.contains(&PathBuf::from(target)), "{targets:?}");
            }
            let annotations = spec.annotations().clone().unwrap();
            assert_eq!(annotations["io.kubernetes.cri.sandbox-id"], "pod1");
            assert_eq!(annotations["io.kubernetes.cri.container-name"], "app");
        });
    }

    #[test]
    fn a_volume_replaces_a_pod_file_and_needs_no_host_change() {
        with_pod(|pod| {
            let dir = tempfile::tempdir().unwrap();
            let missing = dir.path().join("later");
            let config = ContainerConfig {
                mounts: vec![CriMount {
                    host_path: missing.display().to_string(),
                    container_path: "/etc/hosts".into(),
                    propagation: crust_proto::cri::MountPropagation::PropagationBidirectional
                        as i32,
                    ..Default::default()
                }],
                ..Default::default()
            };
            let img = test_image();
            let context = context(&img);
            let spec = container_spec("c1", pod, &config, &context).unwrap();
            let hosts: Vec<_> = spec
                .mounts()
                .as_ref()
                .unwrap()
                .iter()
                .filter(|m| m.destination() == Path::new("/etc/hosts"))
                .collect();
            assert_eq!(hosts.len(), 1);
            assert_eq!(hosts[0].source().as_deref(), Some(missing.as_path()));
            assert_eq!(
                spec.linux()
                    .as_ref()
                    .unwrap()
                    .rootfs_propagation()
                    .as_deref(),
                Some("rshared")
            );
            assert!(
                !missing.exists(),
                "building a spec makes nothing on the host"
            );
        });
    }

    #[test]
    fn mounts_with_dot_dot_or_relative_paths_are_refused() {
        with_pod(|pod| {
            let img = test_image();
            let context = context(&img);
            for (host, target) in [
                ("/tmp/../etc", "/data"),
                ("/tmp", "data"),
                ("/tmp", "/a/../../b"),
            ] {
                let config = ContainerConfig {
                    mounts: vec![CriMount {
                        host_path: host.into(),
                        container_path: target.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let error = container_spec("c1", pod, &config, &context).unwrap_err();
                assert!(
                    matches!(error, ManagerError::InvalidArgument(_)),
                    "{host} {target}: {error}"
                );
            }
        });
    }

    #[test]
    fn the_lsm_labels_seccomp_and_devices_reach_the_spec() {
        with_pod(|pod| {
            let mut host = crate::runtime::host::test_host();
            host.apparmor = true;
            host.selinux = true;
            let privileged_pod = PodSandboxConfig {
                linux: Some(crust_proto::cri::LinuxPodSandboxConfig {
                    security_context: Some(crust_proto::cri::LinuxSandboxSecurityContext {
                        privileged: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..pod.config.clone()
            };
            let pod = PodContext {
                host: &host,
                config: &privileged_pod,
                ..pod.clone()
            };
            let img = test_image();
            let context = context(&img);
            let config = |privileged: bool| ContainerConfig {
                linux: Some(crust_proto::cri::LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        privileged,
                        selinux_options: Some(crust_proto::cri::SeLinuxOption {
                            level: "s0:c1,c2".into(),
                            ..Default::default()
                        }),
                        seccomp: Some(crust_proto::cri::SecurityProfile::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let plain = container_spec("c1", &pod, &config(false), &context).unwrap();
            let process = plain.process().as_ref().unwrap();
            assert_eq!(
                process.apparmor_profile().as_deref(),
                Some(DEFAULT_APPARMOR_PROFILE)
            );
            assert_eq!(
                process.selinux_label().as_deref(),
                Some("system_u:system_r:container_t:s0:c1,c2")
            );
            let linux = plain.linux().as_ref().unwrap();
            assert!(
                linux.seccomp().is_some(),
                "RuntimeDefault is profile type 0"
            );
            assert!(linux.devices().as_ref().is_none_or(|d| d.is_empty()));

            let privileged = container_spec("c1", &pod, &config(true), &context).unwrap();
            assert_eq!(
                privileged.process().as_ref().unwrap().apparmor_profile(),
                &None
            );
            let linux = privileged.linux().as_ref().unwrap();
            assert!(linux.seccomp().is_none());
            let devices = linux.devices().clone().unwrap_or_default();
            assert!(
                devices.iter().any(|d| d.path() == Path::new("/dev/null")),
                "the host's devices"
            );
        });
    }

    #[test]
    fn oom_scores_are_raised_to_the_floor_and_written_even_at_zero() {
        let mut host = crate::runtime::host::test_host();
        assert_eq!(oom_score_adj(-997, &host), Some(-997));
        assert_eq!(oom_score_adj(0, &host), None, "nothing asked");
        host.oom_score_floor = Some(0);
        assert_eq!(oom_score_adj(-997, &host), Some(0));
        assert_eq!(oom_score_adj(1000, &host), Some(1000));
        host.oom_score_floor = Some(-500);
        assert_eq!(oom_score_adj(INFRA_OOM_SCORE_ADJ, &host), Some(-500));
    }

    #[test]
    fn the_infra_process_makes_the_pods_namespaces() {
        with_pod(|pod| {
            let spec = infra_spec(pod, Path::new("/pause")).unwrap();
            assert_eq!(spec.hostname().as_deref(), Some("web-0"));
            let process = spec.process().as_ref().unwrap();
            assert_eq!(process.args().as_ref().unwrap(), &["/pause".to_string()]);
            let linux = spec.linux().as_ref().unwrap();
            assert!(
                linux
                    .namespaces()
                    .as_ref()
                    .unwrap()
                    .iter()
                    .all(|n| n.path().is_none())
            );
            assert_eq!(
                linux.cgroups_path().as_ref().unwrap(),
                Path::new("/crust/pod1/pod1")
            );
            let annotations = spec.annotations().clone().unwrap();
            assert_eq!(annotations["io.kubernetes.cri.container-type"], "sandbox");
        });
    }
}
