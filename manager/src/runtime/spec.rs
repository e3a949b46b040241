//! The OCI runtime specs (`config.json`) of a pod's infra process and of its containers, built
//! with oci-spec from what kubelet asked for and what the image says.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crust_proto::cri::{
    ContainerConfig, LinuxContainerResources, MountPropagation, PodSandboxConfig,
};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilities, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use super::records::PodNamespaces;
use super::user::ResolvedUser;
use crate::error::{ManagerError, Result};
use crate::images::store::RunConfig;

/// The capabilities a container gets unless it asks otherwise (containerd's default set).
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability name oci-spec knows, for `ALL` and privileged containers.
const ALL_CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn spec_error(e: oci_spec::OciSpecError) -> ManagerError {
    ManagerError::InvalidArgument(format!("runtime spec: {e}"))
}

fn capability(name: &str) -> Result<Capability> {
    let bare = name.trim().to_ascii_uppercase();
    let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
    Capability::from_str(bare)
        .map_err(|_| ManagerError::InvalidArgument(format!("unknown capability {name:?}")))
}

fn capability_set(names: &[&str]) -> Capabilities {
    names.iter().filter_map(|n| capability(n).ok()).collect()
}

/// The capability set from the default, `add` and `drop` (either may say `ALL`).
fn capabilities(add: &[String], drop: &[String], privileged: bool) -> Result<LinuxCapabilities> {
    let is_all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut set = if privileged || is_all(add) {
        capability_set(ALL_CAPABILITIES)
    } else {
        let mut set = capability_set(DEFAULT_CAPABILITIES);
        for name in add {
            set.insert(capability(name)?);
        }
        set
    };
    if !privileged {
        if is_all(drop) {
            set.clear();
            for name in add.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
                set.insert(capability(name)?);
            }
        } else {
            for name in drop {
                set.remove(&capability(name)?);
            }
        }
    }
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    Ok(caps)
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path);
    ns
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

/// The mounts every container gets (runc's defaults), `/dev/shm` left to the caller.
fn base_mounts(privileged: bool) -> Result<Vec<Mount>> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        )?,
    ])
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
    /// Its cgroup.
    pub cgroup_parent: &'a str,
    /// Whether cgroups are managed through systemd.
    pub systemd_cgroup: bool,
    /// `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf` and the `/dev/shm` of the pod.
    pub files: &'a super::pod_files::PodFiles,
}

impl<'a> PodContext<'a> {
    /// The context of `pod` (its infra pid is 0 until the infra process runs).
    pub fn of(
        pod: &'a super::records::PodRecord,
        files: &'a super::pod_files::PodFiles,
        systemd_cgroup: bool,
    ) -> Self {
        Self {
            id: &pod.id,
            config: &pod.config,
            namespaces: pod.namespaces,
            infra_pid: pod.infra_pid,
            cgroup_parent: &pod.cgroup_parent,
            systemd_cgroup,
            files,
        }
    }

    fn cgroups_path(&self, id: &str) -> String {
        if self.systemd_cgroup {
            // slice:prefix:name, as containerd and runc spell a systemd unit.
            format!("{}:crust:{id}", self.cgroup_parent)
        } else {
            format!("{}/{id}", self.cgroup_parent.trim_end_matches('/'))
        }
    }

    fn hostname(&self) -> String {
        self.config.hostname.clone()
    }
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
    let process = ProcessBuilder::default()
        .args(vec!["/pause".to_string()])
        .env(vec![DEFAULT_PATH.to_string()])
        .cwd("/")
        .no_new_privileges(true)
        .capabilities(capabilities(&[], &[], false)?)
        .build()
        .map_err(spec_error)?;
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .map_err(spec_error)?,
    ));
    let mut mounts = base_mounts(false)?;
    if !pod.namespaces.host_ipc {
        mounts.push(bind_mount("/dev/shm", &pod.files.shm(), false, "rprivate")?);
    }
    spec.set_mounts(Some(mounts));
    let ns = pod.namespaces;
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    if !ns.host_network {
        namespaces.push(namespace(LinuxNamespaceType::Network, None));
        namespaces.push(namespace(LinuxNamespaceType::Uts, None));
        spec.set_hostname(Some(pod.hostname()));
    } else {
        spec.set_hostname(None);
    }
    if !ns.host_ipc {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, None));
    }
    if !ns.host_pid {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    let sysctls = pod
        .config
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone())
        .unwrap_or_default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(pod.cgroups_path(pod.id)))
        .sysctl(sysctls)
        .resources(device_resources(&[], false)?)
        .build()
        .map_err(spec_error)?;
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

fn bind_mount(
    destination: &str,
    source: &Path,
    readonly: bool,
    propagation: &str,
) -> Result<Mount> {
    let mut options = vec!["rbind", propagation];
    options.push(if readonly { "ro" } else { "rw" });
    mount(destination, "bind", source, &options)
}

/// Refuses a path that is relative or climbs with `..`.
pub fn check_path(what: &str, path: &str) -> Result<()> {
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

/// Device cgroup rules: deny everything, then allow `allowed` (and every device when
/// privileged). runc adds the standard devices (null, zero, tty, …) itself.
fn device_resources(allowed: &[LinuxDeviceCgroup], privileged: bool) -> Result<LinuxResources> {
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()
            .map_err(spec_error)?,
    ];
    rules.extend_from_slice(allowed);
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(rules));
    Ok(resources)
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
}

/// The process arguments: kubelet's command replaces the image entrypoint (and drops its
/// cmd); kubelet's args replace the image cmd.
pub fn process_args(config: &ContainerConfig, image: &RunConfig) -> Result<Vec<String>> {
    let mut args = if config.command.is_empty() {
        image.entrypoint.clone()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(ManagerError::InvalidArgument(
            "no command: neither the container config nor the image names one".into(),
        ));
    }
    Ok(args)
}

/// The environment: the image's, then kubelet's (which wins), PATH defaulted.
fn environment(config: &ContainerConfig, image: &RunConfig, hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    if !hostname.is_empty() {
        set(format!("HOSTNAME={hostname}"));
    }
    for entry in &image.env {
        set(entry.clone());
    }
    for kv in &config.envs {
        set(format!("{}={}", kv.key, kv.value));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env
}

fn propagation(value: i32) -> (&'static str, Option<&'static str>) {
    match MountPropagation::try_from(value).unwrap_or(MountPropagation::PropagationPrivate) {
        MountPropagation::PropagationPrivate => ("rprivate", None),
        MountPropagation::PropagationHostToContainer => ("rslave", Some("rslave")),
        MountPropagation::PropagationBidirectional => ("rshared", Some("rshared")),
    }
}

fn device(spec: &crust_proto::cri::Device) -> Result<(LinuxDevice, LinuxDeviceCgroup)> {
    check_path("device host path", &spec.host_path)?;
    let container_path = if spec.container_path.is_empty() {
        &spec.host_path
    } else {
        &spec.container_path
    };
    check_path("device container path", container_path)?;
    let permissions = if spec.permissions.is_empty() {
        "rwm"
    } else {
        &spec.permissions
    };
    if !permissions.chars().all(|c| "rwm".contains(c)) {
        return Err(ManagerError::InvalidArgument(format!(
            "device permissions {permissions:?} must be made of r, w and m"
        )));
    }
    let metadata = std::fs::metadata(&spec.host_path)
        .map_err(|e| ManagerError::InvalidArgument(format!("device {}: {e}", spec.host_path)))?;
    let typ = if metadata.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if metadata.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(ManagerError::InvalidArgument(format!(
            "{} is not a device",
            spec.host_path
        )));
    };
    let rdev = metadata.rdev();
    let (major, minor) = (
        i64::from(nix::sys::stat::major(rdev) as u32),
        i64::from(nix::sys::stat::minor(rdev) as u32),
    );
    let linux_device = LinuxDeviceBuilder::default()
        .path(container_path)
        .typ(typ)
        .major(major)
        .minor(minor)
        .file_mode(metadata.mode() & 0o777)
        .uid(metadata.uid())
        .gid(metadata.gid())
        .build()
        .map_err(spec_error)?;
    let rule = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(typ)
        .major(major)
        .minor(minor)
        .access(permissions)
        .build()
        .map_err(spec_error)?;
    Ok((linux_device, rule))
}

fn apply_limits(resources: &mut LinuxResources, limits: &LinuxContainerResources) -> Result<()> {
    let mut cpu = LinuxCpuBuilder::default();
    if limits.cpu_shares > 0 {
        cpu = cpu.shares(limits.cpu_shares as u64);
    }
    if limits.cpu_quota != 0 {
        cpu = cpu.quota(limits.cpu_quota);
    }
    if limits.cpu_period > 0 {
        cpu = cpu.period(limits.cpu_period as u64);
    }
    if !limits.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(limits.cpuset_cpus.clone());
    }
    if !limits.cpuset_mems.is_empty() {
        cpu = cpu.mems(limits.cpuset_mems.clone());
    }
    resources.set_cpu(Some(cpu.build().map_err(spec_error)?));
    if limits.memory_limit_in_bytes > 0 {
        let mut memory = LinuxMemoryBuilder::default().limit(limits.memory_limit_in_bytes);
        if limits.memory_swap_limit_in_bytes > 0 {
            memory = memory.swap(limits.memory_swap_limit_in_bytes);
        }
        resources.set_memory(Some(memory.build().map_err(spec_error)?));
    }
    if !limits.unified.is_empty() {
        resources.set_unified(Some(limits.unified.clone()));
    }
    Ok(())
}

/// The spec of container `id` of pod `pod`.
pub fn container_spec(
    id: &str,
    pod: &PodContext<'_>,
    config: &ContainerConfig,
    image: &ImageContext<'_>,
) -> Result<Spec> {
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let privileged = security.privileged;
    if privileged
        && !pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged)
    {
        return Err(ManagerError::InvalidArgument(
            "a privileged container needs a privileged pod".into(),
        ));
    }
    let caps = security.capabilities.clone().unwrap_or_default();
    let mut user = UserBuilder::default()
        .uid(image.user.uid)
        .gid(image.user.gid);
    if !image.user.additional_gids.is_empty() {
        user = user.additional_gids(image.user.additional_gids.clone());
    }
    let mut process = ProcessBuilder::default()
        .args(process_args(config, image.config)?)
        .env(environment(config, image.config, &pod.hostname()))
        .cwd(if !config.working_dir.is_empty() {
            config.working_dir.clone()
        } else if !image.config.working_dir.is_empty() {
            image.config.working_dir.clone()
        } else {
            "/".to_string()
        })
        .terminal(config.tty)
        .user(user.build().map_err(spec_error)?)
        .no_new_privileges(security.no_new_privs)
        .capabilities(capabilities(
            &caps.add_capabilities,
            &caps.drop_capabilities,
            privileged,
        )?);
    let limits = config.linux.as_ref().and_then(|l| l.resources.clone());
    if let Some(limits) = &limits
        && limits.oom_score_adj != 0
    {
        process = process.oom_score_adj(limits.oom_score_adj as i32);
    }
    let mut spec = Spec::default();
    spec.set_process(Some(process.build().map_err(spec_error)?));
    spec.set_hostname(None);
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(security.readonly_rootfs)
            .build()
            .map_err(spec_error)?,
    ));

    // Mounts: runc's defaults, the pod's files, then kubelet's (which win on the same path).
    let mut mounts = base_mounts(privileged)?;
    let user_targets: HashSet<String> = config
        .mounts
        .iter()
        .map(|m| m.container_path.trim_end_matches('/').to_string())
        .collect();
    let files = [
        ("/etc/hostname", pod.files.hostname()),
        ("/etc/hosts", pod.files.hosts()),
        ("/etc/resolv.conf", pod.files.resolv_conf()),
    ];
    for (target, source) in files {
        if !user_targets.contains(target) {
            mounts.push(bind_mount(
                target,
                &source,
                security.readonly_rootfs,
                "rprivate",
            )?);
        }
    }
    if !user_targets.contains("/dev/shm") {
        let shm = if pod.namespaces.host_ipc {
            PathBuf::from("/dev/shm")
        } else {
            pod.files.shm()
        };
        mounts.push(bind_mount("/dev/shm", &shm, false, "rprivate")?);
    }
    let mut rootfs_propagation = None;
    for requested in &config.mounts {
        check_path("mount container path", &requested.container_path)?;
        check_path("mount host path", &requested.host_path)?;
        let host = Path::new(&requested.host_path);
        if !host.exists() {
            // containerd makes a missing host directory rather than failing.
            std::fs::create_dir_all(host).map_err(|e| {
                ManagerError::io(format!("create mount source {}", host.display()), e)
            })?;
        }
        let (mode, root_propagation) = propagation(requested.propagation);
        if let Some(needed) = root_propagation
            && rootfs_propagation != Some("rshared")
        {
            rootfs_propagation = Some(needed);
        }
        mounts.retain(|m| m.destination() != Path::new(&requested.container_path));
        mounts.push(bind_mount(
            &requested.container_path,
            host,
            requested.readonly,
            mode,
        )?);
    }
    spec.set_mounts(Some(mounts));

    // Namespaces: the pod's, through its infra process.
    let ns = pod.namespaces;
    let infra = |kind: &str| Some(PathBuf::from(format!("/proc/{}/ns/{kind}", pod.infra_pid)));
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

    let mut devices = Vec::new();
    let mut rules = Vec::new();
    for requested in &config.devices {
        let (linux_device, rule) = device(requested)?;
        devices.push(linux_device);
        rules.push(rule);
    }
    let mut resources = device_resources(&rules, privileged)?;
    if let Some(limits) = &limits {
        apply_limits(&mut resources, limits)?;
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(pod.cgroups_path(id)))
        .resources(resources)
        .devices(devices);
    if let Some(mode) = rootfs_propagation {
        linux = linux.rootfs_propagation(mode);
    }
    if privileged {
        linux = linux.masked_paths(Vec::new()).readonly_paths(Vec::new());
    } else {
        if !security.masked_paths.is_empty() {
            linux = linux.masked_paths(security.masked_paths.clone());
        } else {
            linux = linux.masked_paths(oci_spec::runtime::get_default_maskedpaths());
        }
        if !security.readonly_paths.is_empty() {
            linux = linux.readonly_paths(security.readonly_paths.clone());
        } else {
            linux = linux.readonly_paths(oci_spec::runtime::get_default_readonly_paths());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::{ContainerMetadata, KeyValue, Mount as CriMount, PodSandboxMetadata};

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/image/bin".into(), "MODE=image".into()],
            working_dir: "/srv".into(),
            ..Default::default()
        }
    }

    fn with_files<T>(f: impl FnOnce(&PodContext<'_>) -> T) -> T {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = super::super::pod_files::PodFiles::at(dir.path().to_path_buf());
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
            cgroup_parent: "/crust/pod1",
            systemd_cgroup: false,
            files: &files,
        };
        f(&pod)
    }

    #[test]
    fn command_and_args_follow_kubelets_rules() {
        let img = image();
        let mut config = ContainerConfig::default();
        assert_eq!(process_args(&config, &img).unwrap(), ["/entry", "serve"]);
        config.args = vec!["debug".into()];
        assert_eq!(process_args(&config, &img).unwrap(), ["/entry", "debug"]);
        config.command = vec!["/bin/sh".into()];
        config.args.clear();
        assert_eq!(process_args(&config, &img).unwrap(), ["/bin/sh"]);
        let empty = RunConfig::default();
        assert!(process_args(&ContainerConfig::default(), &empty).is_err());
    }

    #[test]
    fn container_joins_the_pods_namespaces_and_gets_its_files() {
        with_files(|pod| {
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
            let img = image();
            let context = ImageContext {
                config: &img,
                name: "busybox",
                user: ResolvedUser::default(),
            };
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
            assert!(paths.contains(&(
                LinuxNamespaceType::Pid,
                Some(PathBuf::from("/proc/42/ns/pid"))
            )));
            assert_eq!(
                linux.cgroups_path().as_ref().unwrap(),
                Path::new("/crust/pod1/c1")
            );
            let env = spec.process().as_ref().unwrap().env().clone().unwrap();
            assert!(env.contains(&"MODE=kube".to_string()), "{env:?}");
            assert!(!env.contains(&"MODE=image".to_string()), "{env:?}");
            assert!(env.contains(&"PATH=/image/bin".to_string()), "{env:?}");
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
        });
    }

    #[test]
    fn mounts_with_dot_dot_or_relative_paths_are_refused() {
        with_files(|pod| {
            let img = image();
            let context = ImageContext {
                config: &img,
                name: "busybox",
                user: ResolvedUser::default(),
            };
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
    fn capabilities_add_drop_and_all() {
        let caps = capabilities(&["NET_ADMIN".into()], &["CAP_KILL".into()], false).unwrap();
        let set = caps.bounding().clone().unwrap();
        assert!(set.contains(&Capability::NetAdmin));
        assert!(!set.contains(&Capability::Kill));
        assert!(set.contains(&Capability::Chown));
        let only = capabilities(&["CHOWN".into()], &["ALL".into()], false).unwrap();
        assert_eq!(only.bounding().clone().unwrap().len(), 1);
        assert!(capabilities(&["NOT_A_CAP".into()], &[], false).is_err());
        let all = capabilities(&["ALL".into()], &[], false).unwrap();
        assert!(
            all.bounding()
                .clone()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
    }
}
