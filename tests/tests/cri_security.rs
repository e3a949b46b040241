//! Security contexts through crustd's CRI socket with real runc: seccomp (runtime default,
//! localhost profiles blocking their syscalls), capabilities within this host's bounding set
//! (privileged and ALL included), users and groups with both supplemental group policies,
//! masked and read-only paths, sysctls, mount propagation in all three modes against real
//! host mounts, recursive read-only volumes, what Status reports, and every refusal with its
//! code. What the host allows (its bounding set, AppArmor, `rro`) is read from the host, never
//! assumed.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crust_proto::cri::security_profile::ProfileType;
use crust_proto::cri::tonic::{Code, Status};
use crust_proto::cri::*;
use crust_tests::cleanup;
use crust_tests::cri::{self, Client};
use crust_tests::crustd::{Crustd, WithImage};
use nix::mount::{MsFlags, mount};

/// A pod of `linux`, whose containers each have their own pid namespace (kubelet's default)
/// so that a container's `/proc/1` is its own process.
fn pod_config(name: &str, setup: &WithImage, mut linux: LinuxPodSandboxConfig) -> PodSandboxConfig {
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    });
    PodSandboxConfig {
        linux: Some(linux),
        ..cri::pod_config(name, "security", setup.logs.path())
    }
}

fn privileged_pod() -> LinuxPodSandboxConfig {
    LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a test container asks for beyond running `sleep`.
#[derive(Default, Clone)]
struct Ask {
    security: LinuxContainerSecurityContext,
    mounts: Vec<Mount>,
}

/// A container that asks for `security` and nothing else.
fn asking(security: LinuxContainerSecurityContext) -> Ask {
    Ask {
        security,
        ..Default::default()
    }
}

/// Creates and starts a container of `pod` that sleeps, with `ask`; its id, or the status
/// of the call that refused it.
async fn run_container(
    client: &mut Client,
    setup: &WithImage,
    pod: &str,
    pod_config: &PodSandboxConfig,
    name: &str,
    ask: Ask,
) -> Result<String, Status> {
    let mut config = cri::container_config(
        name,
        &setup.image,
        &["sleep", "3600"],
        &format!("{name}.log"),
    );
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(ask.security),
        ..Default::default()
    });
    config.mounts = ask.mounts;
    cri::create_and_start(client, pod, pod_config, config).await
}

/// `sh -c script` in the container: exit code and output (stderr after stdout).
async fn sh(client: &mut Client, id: &str, script: &str) -> (i32, String) {
    cri::sh(client, id, script).await.expect("exec")
}

/// The value of `field` in the container's `/proc/1/status` (its main process).
async fn status_field(client: &mut Client, id: &str, field: &str) -> String {
    let (code, status) = sh(client, id, "cat /proc/1/status").await;
    assert_eq!(code, 0, "{status}");
    field_of(&status, field)
}

fn field_of(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// This process's capability bounding set (crustd's is the same: both are root's children).
fn host_bounding_set() -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("own status");
    u64::from_str_radix(&field_of(&status, "CapBnd"), 16).expect("CapBnd")
}

fn cap_set(hex: &str) -> u64 {
    u64::from_str_radix(hex, 16).expect("capability mask")
}

/// Capability numbers (linux/capability.h).
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_ADMIN: u32 = 21;

/// Asserts `result` is a refusal with `code` whose message contains `text`.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, text: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{text}: {}", status.message());
            assert!(
                status.message().contains(text),
                "{text:?} not in {:?}",
                status.message()
            );
        }
        Ok(value) => panic!("{text}: accepted ({value:?})"),
    }
}

fn seccomp(profile_type: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// A moby-format profile that allows everything but `names`.
fn blocking_profile(dir: &Path, file: &str, names: &[&str]) -> PathBuf {
    let path = dir.join(file);
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": names, "action": "SCMP_ACT_ERRNO" }],
    });
    fs::write(&path, profile.to_string()).expect("write profile");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profiles_apply_as_asked_and_block_their_syscalls() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let profiles = tempfile::tempdir().expect("profile dir");
    let config = pod_config("seccomp", &setup, privileged_pod());
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");

    let default = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "default",
        asking(LinuxContainerSecurityContext {
            seccomp: seccomp(ProfileType::RuntimeDefault, ""),
            ..Default::default()
        }),
    )
    .await
    .expect("runtime default");
    assert_eq!(status_field(&mut client, &default, "Seccomp").await, "2");
    assert_eq!(
        sh(&mut client, &default, "echo ok").await,
        (0, "ok\n".into())
    );
    #[allow(deprecated)]
    let old_field = LinuxContainerSecurityContext {
        seccomp_profile_path: "runtime/default".into(),
        ..Default::default()
    };
    let old = run_container(&mut client, &setup, &pod, &config, "old", asking(old_field))
        .await
        .expect("runtime/default by the old field");
    assert_eq!(status_field(&mut client, &old, "Seccomp").await, "2");

    for (name, security) in [
        ("unset", LinuxContainerSecurityContext::default()),
        (
            "unconfined",
            LinuxContainerSecurityContext {
                seccomp: seccomp(ProfileType::Unconfined, ""),
                ..Default::default()
            },
        ),
        (
            "privileged",
            LinuxContainerSecurityContext {
                privileged: true,
                seccomp: seccomp(ProfileType::RuntimeDefault, ""),
                ..Default::default()
            },
        ),
    ] {
        let id = run_container(&mut client, &setup, &pod, &config, name, asking(security))
            .await
            .expect(name);
        assert_eq!(
            status_field(&mut client, &id, "Seccomp").await,
            "0",
            "{name}"
        );
    }

    // sethostname, which SYS_ADMIN would allow, blocked by a profile of the node's.
    let no_hostname = blocking_profile(profiles.path(), "no-hostname.json", &["sethostname"]);
    let blocked = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "no-hostname",
        asking(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: vec!["SYS_ADMIN".into()],
                ..Default::default()
            }),
            seccomp: seccomp(ProfileType::Localhost, &no_hostname.display().to_string()),
            ..Default::default()
        }),
    )
    .await
    .expect("localhost profile");
    assert_eq!(status_field(&mut client, &blocked, "Seccomp").await, "2");
    let (code, output) = sh(&mut client, &blocked, "hostname renamed").await;
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("not permitted"), "{output}");
    // The same call with the same capability and no such profile succeeds.
    let allowed = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "hostname-allowed",
        asking(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: vec!["SYS_ADMIN".into()],
                ..Default::default()
            }),
            seccomp: seccomp(ProfileType::Unconfined, ""),
            ..Default::default()
        }),
    )
    .await
    .expect("unconfined with SYS_ADMIN");
    assert_eq!(sh(&mut client, &allowed, "hostname renamed").await.0, 0);

    let no_chmod = blocking_profile(
        profiles.path(),
        "no-chmod.json",
        &["chmod", "fchmod", "fchmodat", "fchmodat2"],
    );
    #[allow(deprecated)]
    let old_localhost = LinuxContainerSecurityContext {
        seccomp_profile_path: format!("localhost/{}", no_chmod.display()),
        ..Default::default()
    };
    let no_chmod_id = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "no-chmod",
        asking(old_localhost),
    )
    .await
    .expect("localhost/ profile by the old field");
    let (code, output) = sh(
        &mut client,
        &no_chmod_id,
        "touch /tmp/f && chmod 600 /tmp/f",
    )
    .await;
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("not permitted"), "{output}");

    // Refusals: a missing or invalid profile, an unknown name. Nothing is left behind.
    let invalid = profiles.path().join("invalid.json");
    fs::write(&invalid, "{ not json").expect("write");
    let missing = profiles.path().join("missing.json");
    #[allow(deprecated)]
    for (name, security, text) in [
        (
            "missing",
            LinuxContainerSecurityContext {
                seccomp: seccomp(ProfileType::Localhost, &missing.display().to_string()),
                ..Default::default()
            },
            missing.display().to_string(),
        ),
        (
            "invalid",
            LinuxContainerSecurityContext {
                seccomp: seccomp(ProfileType::Localhost, &invalid.display().to_string()),
                ..Default::default()
            },
            invalid.display().to_string(),
        ),
        (
            "relative",
            LinuxContainerSecurityContext {
                seccomp: seccomp(ProfileType::Localhost, "profiles/x.json"),
                ..Default::default()
            },
            "profiles/x.json".to_string(),
        ),
        (
            "unknown-name",
            LinuxContainerSecurityContext {
                seccomp_profile_path: "docker/strict".into(),
                ..Default::default()
            },
            "docker/strict".to_string(),
        ),
    ] {
        let result =
            run_container(&mut client, &setup, &pod, &config, name, asking(security)).await;
        refused(result, Code::InvalidArgument, &text);
    }
    let listed = client
        .list_containers(ListContainersRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 8, "refused containers leave no record");

    // The pod's own choice applies to its infra process.
    for (name, profile, expected) in [
        ("pod-default", ProfileType::RuntimeDefault, "2"),
        ("pod-unconfined", ProfileType::Unconfined, "0"),
    ] {
        let linux = LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                seccomp: seccomp(profile, ""),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = cri::run_pod(&mut client, &pod_config(name, &setup, linux))
            .await
            .expect(name);
        let infra = infra_pid(&setup.crustd, &pod);
        let status = fs::read_to_string(format!("/proc/{infra}/status")).expect("infra status");
        assert_eq!(field_of(&status, "Seccomp"), expected, "{name}");
    }
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
}

/// The pid of pod `pod`'s infra process, as runc reports it.
fn infra_pid(crustd: &Crustd, pod: &str) -> u32 {
    let output = std::process::Command::new("runc")
        .arg("--root")
        .arg(crustd.runc_root())
        .args(["state", pod])
        .output()
        .expect("runc state");
    let state: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("runc state {pod}: {e}: {output:?}"));
    state["pid"].as_u64().expect("a pid") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_stay_within_the_hosts_bounding_set() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let host = host_bounding_set();
    let config = pod_config("caps", &setup, privileged_pod());
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");

    let privileged = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "privileged",
        asking(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
    )
    .await
    .expect("a privileged container runs on this host");
    let all = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "all",
        asking(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await
    .expect("ALL runs on this host");
    // A privileged container has the host's devices; the others only runc's standard ones.
    let block_device = fs::read_dir("/dev")
        .expect("/dev")
        .flatten()
        .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
        .map(|e| e.path().display().to_string());
    if let Some(device) = block_device {
        let check = format!("test -b {device}");
        assert_eq!(sh(&mut client, &privileged, &check).await.0, 0, "{device}");
        assert_ne!(sh(&mut client, &all, &check).await.0, 0, "{device}");
    }
    for id in [&privileged, &all] {
        let bounding = cap_set(&status_field(&mut client, id, "CapBnd").await);
        let effective = cap_set(&status_field(&mut client, id, "CapEff").await);
        assert_eq!(bounding, host, "exactly the host's capabilities");
        assert_eq!(effective, host);
    }

    // A capability the host lacks, asked for by name: refused up front, naming it.
    let missing = (0..=40u32).find(|bit| host & (1 << bit) == 0);
    match missing {
        Some(bit) => {
            let name = capability_name(bit);
            let result = run_container(
                &mut client,
                &setup,
                &pod,
                &config,
                "missing-cap",
                asking(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: vec![name.into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
            .await;
            refused(result, Code::FailedPrecondition, name);
        }
        None => eprintln!("this host's bounding set has every capability: no refusal to see"),
    }

    // Ambient: a process not run as root holds the capability.
    let ambient = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "ambient",
        asking(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            capabilities: Some(Capability {
                add_capabilities: vec!["NET_BIND_SERVICE".into()],
                drop_capabilities: vec!["ALL".into()],
                add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
            }),
            ..Default::default()
        }),
    )
    .await
    .expect("ambient capability");
    let bit = 1u64 << CAP_NET_BIND_SERVICE;
    for field in ["CapAmb", "CapEff", "CapBnd"] {
        assert_eq!(
            cap_set(&status_field(&mut client, &ambient, field).await),
            bit,
            "{field}"
        );
    }
    // Without it, a non-root process has nothing effective.
    let plain_user = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "plain-user",
        asking(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            ..Default::default()
        }),
    )
    .await
    .expect("non-root");
    assert_eq!(
        cap_set(&status_field(&mut client, &plain_user, "CapEff").await),
        0
    );
    let default_caps = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "defaults",
        Ask::default(),
    )
    .await
    .expect("defaults");
    let bounding = cap_set(&status_field(&mut client, &default_caps, "CapBnd").await);
    assert_eq!(
        bounding & (1 << CAP_SYS_ADMIN),
        0,
        "no SYS_ADMIN by default"
    );
    assert_eq!(bounding & !host, 0);

    let result = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "ambient-not-held",
        asking(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_ambient_capabilities: vec!["SYS_ADMIN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await;
    refused(result, Code::InvalidArgument, "SYS_ADMIN");
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
}

/// The kernel's name of capability `bit`, as the CRI names it (no `CAP_`).
fn capability_name(bit: u32) -> &'static str {
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES[bit as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_groups_follow_the_request_and_the_image() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let config = pod_config("users", &setup, LinuxPodSandboxConfig::default());
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");
    let uid = |value| Some(Int64Value { value });

    // (name, request, Uid, Gid, supplementary groups in ContainerStatus' order: the primary
    // group first, as containerd since CVE-2023-25173, then the image's, then kubelet's)
    let cases = [
        (
            "image-root",
            LinuxContainerSecurityContext::default(),
            "0",
            "0",
            "0",
        ),
        (
            "uid-merge",
            LinuxContainerSecurityContext {
                run_as_user: uid(1000),
                supplemental_groups: vec![3000],
                ..Default::default()
            },
            "1000",
            "1000",
            "1000 2000 3000",
        ),
        (
            "uid-strict",
            LinuxContainerSecurityContext {
                run_as_user: uid(1000),
                supplemental_groups: vec![3000],
                supplemental_groups_policy: SupplementalGroupsPolicy::Strict as i32,
                ..Default::default()
            },
            "1000",
            "1000",
            "1000 3000",
        ),
        (
            "by-name-with-group",
            LinuxContainerSecurityContext {
                run_as_username: "app".into(),
                run_as_group: uid(5000),
                ..Default::default()
            },
            "1000",
            "5000",
            "5000 2000",
        ),
        (
            "unknown-uid",
            LinuxContainerSecurityContext {
                run_as_user: uid(4242),
                run_as_group: uid(4242),
                ..Default::default()
            },
            "4242",
            "4242",
            "4242",
        ),
    ];
    for (name, security, want_uid, want_gid, want_groups) in cases {
        let id = run_container(&mut client, &setup, &pod, &config, name, asking(security))
            .await
            .expect(name);
        let uids = status_field(&mut client, &id, "Uid").await;
        let gids = status_field(&mut client, &id, "Gid").await;
        let groups = status_field(&mut client, &id, "Groups").await;
        assert_eq!(
            uids.split_whitespace().next(),
            Some(want_uid),
            "{name}: {uids}"
        );
        assert_eq!(
            gids.split_whitespace().next(),
            Some(want_gid),
            "{name}: {gids}"
        );
        // The kernel keeps a process's groups sorted.
        let sorted = |list: &str| {
            let mut numbers: Vec<u32> = list
                .split_whitespace()
                .map(|g| g.parse().unwrap())
                .collect();
            numbers.sort();
            numbers
        };
        assert_eq!(sorted(&groups), sorted(want_groups), "{name}: {groups}");
        // ContainerStatus reports the same identity.
        let user = cri::status(&mut client, &id)
            .await
            .expect("status")
            .user
            .and_then(|u| u.linux)
            .expect("a linux user in ContainerStatus");
        assert_eq!(user.uid.to_string(), want_uid, "{name}");
        assert_eq!(user.gid.to_string(), want_gid, "{name}");
        let reported: Vec<String> = user
            .supplemental_groups
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(reported.join(" "), want_groups, "{name}");
    }

    for (name, security, text) in [
        (
            "group-only",
            LinuxContainerSecurityContext {
                run_as_group: uid(5000),
                ..Default::default()
            },
            "run_as_group",
        ),
        (
            "no-such-user",
            LinuxContainerSecurityContext {
                run_as_username: "ghost".into(),
                ..Default::default()
            },
            "ghost",
        ),
    ] {
        let result =
            run_container(&mut client, &setup, &pod, &config, name, asking(security)).await;
        refused(result, Code::InvalidArgument, text);
    }
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_paths_sysctls_and_the_other_process_settings_apply() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let mut linux = privileged_pod();
    linux.sysctls = [
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        (
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "80".to_string(),
        ),
    ]
    .into();
    let config = pod_config("paths", &setup, linux);
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");

    let plain = run_container(&mut client, &setup, &pod, &config, "plain", Ask::default())
        .await
        .expect("plain");
    // /proc/timer_list exists on every kernel (kcore does not): masked, /dev/null is over it.
    let masked = "grep -c ' /proc/timer_list ' /proc/self/mountinfo";
    assert_eq!(
        sh(&mut client, &plain, masked).await,
        (0, "1\n".into()),
        "timer_list masked"
    );
    let (code, output) = sh(
        &mut client,
        &plain,
        "echo 1 > /proc/sys/vm/overcommit_memory",
    )
    .await;
    assert_ne!(code, 0, "/proc/sys is read-only: {output}");
    assert_eq!(
        sh(
            &mut client,
            &plain,
            "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start"
        )
        .await,
        (0, "1\n80\n".into()),
        "the pod's sysctls"
    );
    assert_eq!(status_field(&mut client, &plain, "NoNewPrivs").await, "0");

    let privileged = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "privileged",
        asking(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
    )
    .await
    .expect("privileged");
    assert_eq!(
        sh(&mut client, &privileged, masked).await.1,
        "0\n",
        "nothing masked"
    );
    assert_eq!(
        sh(
            &mut client,
            &privileged,
            "echo 1 > /proc/sys/kernel/shm_rmid_forced"
        )
        .await
        .0,
        0,
        "/proc/sys writable"
    );

    let custom = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "custom",
        asking(LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/cpuinfo".into()],
            readonly_paths: vec!["/tmp".into()],
            no_new_privs: true,
            readonly_rootfs: true,
            ..Default::default()
        }),
    )
    .await
    .expect("custom paths");
    assert_eq!(
        sh(&mut client, &custom, "wc -c < /proc/cpuinfo")
            .await
            .1
            .trim(),
        "0"
    );
    assert_ne!(
        sh(&mut client, &custom, "touch /tmp/x").await.0,
        0,
        "/tmp read-only"
    );
    assert_ne!(
        sh(&mut client, &custom, "touch /x").await.0,
        0,
        "root read-only"
    );
    assert_eq!(status_field(&mut client, &custom, "NoNewPrivs").await, "1");
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
}

/// A host directory that is its own mount with the given propagation; unmounted (with all
/// that propagated into it) when dropped.
struct HostMount {
    dir: tempfile::TempDir,
}

impl HostMount {
    fn new(propagation: MsFlags) -> Self {
        let dir = tempfile::tempdir().expect("host dir");
        let none: Option<&str> = None;
        mount(Some(dir.path()), dir.path(), none, MsFlags::MS_BIND, none).expect("bind");
        // Out of the peer group of the mount it was bound from, then as asked: a peer group
        // of its own, which nothing else on the host shares.
        mount(none, dir.path(), none, MsFlags::MS_PRIVATE, none).expect("private");
        mount(none, dir.path(), none, propagation, none).expect("propagation");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Mounts a tmpfs at `name` below it, on the host.
    fn mount_tmpfs(&self, name: &str) -> PathBuf {
        let at = self.path().join(name);
        fs::create_dir_all(&at).expect("mount point");
        let none: Option<&str> = None;
        mount(Some("tmpfs"), &at, Some("tmpfs"), MsFlags::empty(), none).expect("tmpfs");
        at
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        for _ in 0..10 {
            if cleanup::mounts_below(self.path()).is_empty() {
                break;
            }
            cleanup::unmount_below(self.path());
        }
    }
}

fn is_host_mount(path: &Path) -> bool {
    cleanup::mounts_below(path).iter().any(|m| m == path)
}

fn volume(host: &Path, propagation: MountPropagation) -> Mount {
    Mount {
        container_path: "/vol".into(),
        host_path: host.display().to_string(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_propagation_works_in_all_three_modes() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let config = pod_config("propagation", &setup, privileged_pod());
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");
    let privileged = LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    };

    // (mode, host mount's propagation, host mount seen inside, container mount seen outside)
    let cases = [
        (
            MountPropagation::PropagationPrivate,
            MsFlags::MS_SHARED,
            false,
            false,
        ),
        (
            MountPropagation::PropagationHostToContainer,
            MsFlags::MS_SHARED,
            true,
            false,
        ),
        (
            MountPropagation::PropagationBidirectional,
            MsFlags::MS_SHARED,
            true,
            true,
        ),
    ];
    let mut host_mounts = Vec::new();
    for (mode, host_propagation, host_to_container, container_to_host) in cases {
        let name = mode.as_str_name().to_ascii_lowercase().replace('_', "-");
        let host = HostMount::new(host_propagation);
        fs::create_dir(host.path().join("from-container")).expect("dir");
        let id = run_container(
            &mut client,
            &setup,
            &pod,
            &config,
            &name,
            Ask {
                security: privileged.clone(),
                mounts: vec![volume(host.path(), mode)],
            },
        )
        .await
        .expect(&name);
        let from_host = host.mount_tmpfs("from-host");
        fs::write(from_host.join("mark"), "host").expect("mark");
        let (_, seen) = sh(&mut client, &id, "cat /vol/from-host/mark").await;
        assert_eq!(
            seen == "host",
            host_to_container,
            "{name}: host mount inside: {seen:?}"
        );

        let (code, output) = sh(
            &mut client,
            &id,
            "mount -t tmpfs none /vol/from-container && echo ctr > /vol/from-container/mark",
        )
        .await;
        assert_eq!(code, 0, "{name}: {output}");
        let outside = host.path().join("from-container");
        assert_eq!(
            is_host_mount(&outside),
            container_to_host,
            "{name}: container mount on the host"
        );
        if container_to_host {
            assert_eq!(
                fs::read_to_string(outside.join("mark")).expect("mark"),
                "ctr\n"
            );
        }
        host_mounts.push(host);
    }

    // An unprivileged container sees host mounts arrive too (it cannot mount itself).
    let host = HostMount::new(MsFlags::MS_SHARED);
    let unprivileged = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "unprivileged",
        Ask {
            mounts: vec![volume(
                host.path(),
                MountPropagation::PropagationHostToContainer,
            )],
            ..Default::default()
        },
    )
    .await
    .expect("unprivileged HostToContainer");
    let later = host.mount_tmpfs("later");
    fs::write(later.join("mark"), "late").expect("mark");
    assert_eq!(
        sh(&mut client, &unprivileged, "cat /vol/later/mark").await,
        (0, "late".into())
    );
    host_mounts.push(host);

    // A private host mount cannot feed a HostToContainer volume, nor a Bidirectional one.
    for (host_propagation, mode, text) in [
        (
            MsFlags::MS_PRIVATE,
            MountPropagation::PropagationHostToContainer,
            "shared or a slave",
        ),
        (
            MsFlags::MS_PRIVATE,
            MountPropagation::PropagationBidirectional,
            "not shared",
        ),
    ] {
        let host = HostMount::new(host_propagation);
        let result = run_container(
            &mut client,
            &setup,
            &pod,
            &config,
            "refused",
            Ask {
                security: privileged.clone(),
                mounts: vec![volume(host.path(), mode)],
            },
        )
        .await;
        refused(result, Code::FailedPrecondition, text);
    }
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
    drop(host_mounts);
}

/// Whether runtime handler "" supports recursive read-only mounts, as Status says.
async fn rro_supported(client: &mut Client) -> bool {
    let status = client
        .status(StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner();
    status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .and_then(|h| h.features)
        .expect("the default handler's features")
        .recursive_read_only_mounts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_what_this_host_supports() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let status = client
        .status(StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner();
    assert!(
        status
            .features
            .is_some_and(|f| f.supplemental_groups_policy),
        "supplemental groups policy"
    );
    // What the host has, found independently: runc's own feature list and the kernel release.
    let runc_rro = std::process::Command::new("runc")
        .arg("features")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("\"rro\""))
        .unwrap_or(false);
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("release");
    let mut numbers = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let kernel = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let expected = runc_rro && kernel >= (5, 12);
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert!(names.contains(&"") && names.contains(&"runc"), "{names:?}");
    for handler in &status.runtime_handlers {
        let features = handler.features.expect("features");
        assert!(!features.user_namespaces, "{}", handler.name);
        if handler.name.is_empty() || handler.name == "runc" {
            assert_eq!(
                features.recursive_read_only_mounts, expected,
                "{}",
                handler.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_volumes_refuse_writes_in_submounts() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let config = pod_config("rro", &setup, LinuxPodSandboxConfig::default());
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");
    let host = HostMount::new(MsFlags::MS_PRIVATE);
    host.mount_tmpfs("sub");
    let readonly = |recursive: bool| Mount {
        container_path: "/vol".into(),
        host_path: host.path().display().to_string(),
        readonly: true,
        recursive_read_only: recursive,
        ..Default::default()
    };
    let plain = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "readonly",
        Ask {
            mounts: vec![readonly(false)],
            ..Default::default()
        },
    )
    .await
    .expect("read-only volume");
    assert_ne!(sh(&mut client, &plain, "touch /vol/top").await.0, 0);
    assert_eq!(
        sh(&mut client, &plain, "touch /vol/sub/file").await.0,
        0,
        "a plain read-only bind leaves submounts writable"
    );

    let recursive = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "recursive",
        Ask {
            mounts: vec![readonly(true)],
            ..Default::default()
        },
    )
    .await;
    if rro_supported(&mut client).await {
        let id = recursive.expect("recursive read-only volume");
        let (code, output) = sh(&mut client, &id, "touch /vol/sub/other").await;
        assert_ne!(code, 0, "{output}");
        assert!(output.contains("Read-only"), "{output}");
    } else {
        refused(recursive, Code::FailedPrecondition, "recursive read-only");
    }
    let mut writable = readonly(true);
    writable.readonly = false;
    let result = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "rro-writable",
        Ask {
            mounts: vec![writable],
            ..Default::default()
        },
    )
    .await;
    refused(result, Code::InvalidArgument, "must also be read-only");
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apparmor_is_refused_only_when_a_profile_is_required() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let host_apparmor = fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.starts_with('Y'));
    let config = pod_config("apparmor", &setup, LinuxPodSandboxConfig::default());
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");
    let apparmor = |profile_type: ProfileType, name: &str| {
        asking(LinuxContainerSecurityContext {
            apparmor: Some(SecurityProfile {
                profile_type: profile_type as i32,
                localhost_ref: name.into(),
            }),
            ..Default::default()
        })
    };
    let default = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "default",
        apparmor(ProfileType::RuntimeDefault, ""),
    )
    .await
    .expect("the runtime default always runs");
    let current = sh(
        &mut client,
        &default,
        "cat /proc/1/attr/current 2>/dev/null || true",
    )
    .await
    .1;
    let missing = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "localhost",
        apparmor(ProfileType::Localhost, "crust-test-not-loaded"),
    )
    .await;
    if host_apparmor {
        assert!(current.starts_with("crust-default"), "{current}");
        refused(missing, Code::FailedPrecondition, "not loaded");
    } else {
        refused(missing, Code::FailedPrecondition, "AppArmor is not enabled");
    }
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_files_are_private() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let config = pod_config("files", &setup, LinuxPodSandboxConfig::default());
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");
    let id = run_container(&mut client, &setup, &pod, &config, "secret", Ask::default())
        .await
        .expect("container");
    let mode = |path: PathBuf| {
        fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let state = setup.crustd.state();
    let root = setup.crustd.root();
    assert_eq!(
        mode(state.join("bundles").join(&id).join("config.json")),
        0o600
    );
    assert_eq!(
        mode(state.join("bundles").join(&pod).join("config.json")),
        0o600
    );
    assert_eq!(mode(state.join("bundles")), 0o700);
    assert_eq!(mode(root.join("containers")), 0o700);
    assert_eq!(mode(root.join("layers")), 0o700);
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
}

/// Whether the host runs cgroup v2 alone (cgroup2 mounted at /sys/fs/cgroup).
fn unified_cgroups_only() -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|line| line.contains(" /sys/fs/cgroup ") && line.contains(" - cgroup2 "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_anything_runs() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;

    // Pods: each refusal names its field; no cgroup is made outside crustd's tree.
    let escape = Path::new("/sys/fs/cgroup/memory/crust-test-escape");
    let escaped_before = escape.exists();
    let host_network = LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let pod_cases: Vec<(&str, PodSandboxConfig, &str)> = vec![
        (
            "escape",
            pod_config(
                "escape",
                &setup,
                LinuxPodSandboxConfig {
                    cgroup_parent: "/x/../../crust-test-escape".into(),
                    ..Default::default()
                },
            ),
            "cgroup parent",
        ),
        (
            "hostname",
            PodSandboxConfig {
                hostname: "bad_host!".into(),
                ..pod_config("hostname", &setup, LinuxPodSandboxConfig::default())
            },
            "hostname",
        ),
        (
            "sysctl",
            pod_config(
                "sysctl",
                &setup,
                LinuxPodSandboxConfig {
                    sysctls: [("kernel.panic".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
            ),
            "kernel.panic",
        ),
        (
            "host-net-sysctl",
            PodSandboxConfig {
                linux: Some(host_network),
                ..pod_config("host-net-sysctl", &setup, LinuxPodSandboxConfig::default())
            },
            "net.ipv4.ip_forward",
        ),
    ];
    for (_name, config, text) in pod_cases {
        let result = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await;
        refused(result, Code::InvalidArgument, text);
    }
    assert_eq!(
        escape.exists(),
        escaped_before,
        "no cgroup outside crustd's tree"
    );

    // Containers: each refusal names its field; none leaves a record.
    let config = pod_config("bad-containers", &setup, LinuxPodSandboxConfig::default());
    let pod = cri::run_pod(&mut client, &config).await.expect("pod");
    let with_resources = |resources: LinuxContainerResources| {
        let mut container = cri::container_config("bad", &setup.image, &["sleep", "1"], "bad.log");
        container.linux = Some(LinuxContainerConfig {
            resources: Some(resources),
            ..Default::default()
        });
        container
    };
    let plain = || cri::container_config("bad", &setup.image, &["sleep", "1"], "bad.log");
    let mut cases: Vec<(ContainerConfig, &str)> = vec![
        (
            with_resources(LinuxContainerResources {
                oom_score_adj: 4_294_966_296,
                ..Default::default()
            }),
            "oom_score_adj",
        ),
        (
            with_resources(LinuxContainerResources {
                cpuset_cpus: "0-zz".into(),
                ..Default::default()
            }),
            "0-zz",
        ),
        (
            ContainerConfig {
                envs: vec![KeyValue {
                    key: "A=B".into(),
                    value: "c".into(),
                }],
                ..plain()
            },
            "environment key",
        ),
        (
            ContainerConfig {
                working_dir: "relative/dir".into(),
                ..plain()
            },
            "working dir",
        ),
        (
            ContainerConfig {
                mounts: vec![Mount {
                    container_path: "//".into(),
                    host_path: setup.logs.path().display().to_string(),
                    ..Default::default()
                }],
                ..plain()
            },
            "mount container path",
        ),
    ];
    if !unified_cgroups_only() {
        cases.push((
            with_resources(LinuxContainerResources {
                unified: [("memory.max".to_string(), "1G".to_string())].into(),
                ..Default::default()
            }),
            "cgroup v2 only",
        ));
    }
    for (container, text) in cases {
        let result = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container),
                sandbox_config: Some(config.clone()),
            })
            .await;
        refused(result, Code::InvalidArgument, text);
    }
    let listed = client
        .list_containers(ListContainersRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
}
