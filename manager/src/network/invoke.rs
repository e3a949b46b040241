//! Running one CNI plugin: its binary found in the plugin directories, the `CNI_*`
//! environment, the configuration on stdin, and its result or its error (the spec's
//! `{code, msg, details}`) from stdout.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A plugin operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Attach.
    Add,
    /// Detach (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Whether the plugin is ready for ADD (1.1).
    Status,
    /// Release what the valid attachments do not account for (1.1).
    Gc,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Add => "ADD",
            Operation::Del => "DEL",
            Operation::Check => "CHECK",
            Operation::Status => "STATUS",
            Operation::Gc => "GC",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who the call is about. Empty fields are left out of the environment (STATUS and GC are
/// about no container).
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `CNI_CONTAINERID`: the pod id.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace ("" when it is gone).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
}

/// A failed plugin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The plugin's type.
    pub plugin: String,
    /// What was asked of it.
    pub operation: Operation,
    /// The spec's error code, when the plugin gave one.
    pub code: Option<u32>,
    /// Its message.
    pub message: String,
    /// Its details.
    pub details: String,
}

impl PluginError {
    fn new(plugin: &str, operation: Operation, message: String) -> Self {
        PluginError {
            plugin: plugin.to_string(),
            operation,
            code: None,
            message,
            details: String::new(),
        }
    }
}

/// What the spec's well-known error codes mean.
pub fn code_meaning(code: u32) -> &'static str {
    match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        50 => "plugin not available",
        51 => "plugin not available, existing containers may be damaged",
        _ if code >= 100 => "plugin-specific error",
        _ => "reserved error code",
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CNI plugin {:?} failed {}: {}",
            self.plugin, self.operation, self.message
        )?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        if let Some(code) = self.code {
            write!(f, " [CNI error {code}: {}]", code_meaning(code))?;
        }
        Ok(())
    }
}

/// The spec's error object.
#[derive(Debug, Deserialize)]
struct ErrorObject {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The plugin binary `kind` in the first of `dirs` that has it.
pub fn find(dirs: &[PathBuf], kind: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|dir| dir.join(kind))
        .find(|path| path.is_file())
}

/// Runs plugin `kind` for `operation` with `config` on stdin; its stdout on success.
pub async fn run(
    dirs: &[PathBuf],
    kind: &str,
    operation: Operation,
    target: &Target,
    config: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, PluginError> {
    let fail = |message: String| PluginError::new(kind, operation, message);
    let binary = find(dirs, kind)
        .ok_or_else(|| fail(format!("binary not found in {}", join_paths(dirs))))?;
    let mut command = Command::new(&binary);
    command
        .env("CNI_COMMAND", operation.name())
        .env("CNI_PATH", join_paths(dirs))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in [
        ("CNI_CONTAINERID", &target.container_id),
        ("CNI_NETNS", &target.netns),
        ("CNI_IFNAME", &target.ifname),
        ("CNI_ARGS", &target.args),
    ] {
        if !value.is_empty() {
            command.env(name, value);
        }
    }
    let mut child = spawn(&mut command)
        .await
        .map_err(|e| fail(format!("run {}: {e}", binary.display())))?;
    let mut stdin = child.stdin.take();
    let call = async {
        if let Some(stdin) = stdin.as_mut() {
            // A plugin that exits without reading its config closes the pipe: its exit
            // status and output tell why, so a write error is not the story.
            let _ = stdin.write_all(config).await;
        }
        drop(stdin);
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(fail(format!("wait for {}: {e}", binary.display()))),
        Err(_) => {
            return Err(fail(format!("did not finish within {timeout:?} (killed)")));
        }
    };
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(plugin_error(
        kind,
        operation,
        &output.stdout,
        &output.stderr,
        output.status,
    ))
}

/// Starts the plugin. A binary being written as it is run (an operator installing plugins;
/// a file another thread of this process has open for writing when it forks) fails with
/// ETXTBSY for a moment: that is tried again briefly.
async fn spawn(command: &mut Command) -> std::io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

fn plugin_error(
    kind: &str,
    operation: Operation,
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> PluginError {
    if let Ok(error) = serde_json::from_slice::<ErrorObject>(stdout) {
        return PluginError {
            plugin: kind.to_string(),
            operation,
            code: Some(error.code),
            message: error.msg,
            details: error.details,
        };
    }
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    let text = [said(stdout), said(stderr)]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let message = if text.is_empty() {
        format!("exited with {status} and no message")
    } else {
        format!("exited with {status}: {text}")
    };
    PluginError::new(kind, operation, message)
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether `path` is a pinned network namespace (an nsfs mount), which plugins can enter.
pub fn is_network_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A plugin that records its environment and stdin, then runs `body`.
    fn plugin(dir: &Path, kind: &str, body: &str) {
        let path = dir.join(kind);
        let script = format!(
            "#!/bin/sh\nenv | grep ^CNI_ | sort > \"$0.env\"\ncat > \"$0.stdin\"\n{body}\n"
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn target() -> Target {
        Target {
            container_id: "abc".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAME=p".into(),
        }
    }

    /// `name` run for `operation` on the test target with `config`, given 10 s.
    async fn call(
        dirs: &[PathBuf],
        name: &str,
        operation: Operation,
        config: &[u8],
    ) -> std::result::Result<Vec<u8>, PluginError> {
        run(
            dirs,
            name,
            operation,
            &target(),
            config,
            Duration::from_secs(10),
        )
        .await
    }

    #[tokio::test]
    async fn a_plugin_gets_the_environment_and_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().join("empty"), dir.path().to_path_buf()];
        plugin(dir.path(), "ok", "echo '{\"cniVersion\":\"1.0.0\"}'");
        let out = call(&dirs, "ok", Operation::Add, b"{\"x\":1}")
            .await
            .unwrap();
        assert_eq!(out, b"{\"cniVersion\":\"1.0.0\"}\n");
        let env = std::fs::read_to_string(dir.path().join("ok.env")).unwrap();
        let path = format!("CNI_PATH={}:{}", dirs[0].display(), dirs[1].display());
        for line in [
            "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=p",
            "CNI_COMMAND=ADD",
            "CNI_CONTAINERID=abc",
            "CNI_IFNAME=eth0",
            "CNI_NETNS=/run/netns/x",
            path.as_str(),
        ] {
            assert!(env.lines().any(|l| l == line), "{line} not in {env}");
        }
        assert_eq!(
            std::fs::read(dir.path().join("ok.stdin")).unwrap(),
            b"{\"x\":1}"
        );
        // STATUS is about no container: no container variables at all.
        run(
            &dirs,
            "ok",
            Operation::Status,
            &Target::default(),
            b"{}",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let env = std::fs::read_to_string(dir.path().join("ok.env")).unwrap();
        assert!(env.contains("CNI_COMMAND=STATUS"), "{env}");
        assert!(
            !env.contains("CNI_CONTAINERID") && !env.contains("CNI_NETNS"),
            "{env}"
        );
    }

    #[tokio::test]
    async fn failures_say_which_plugin_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        plugin(
            dir.path(),
            "coded",
            "echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no addresses\",\"details\":\"pool full\"}'; exit 1",
        );
        let error = call(&dirs, "coded", Operation::Add, b"{}")
            .await
            .unwrap_err();
        assert_eq!(error.code, Some(11));
        assert_eq!(
            error.to_string(),
            "CNI plugin \"coded\" failed ADD: no addresses (pool full) [CNI error 11: try again later]"
        );
        plugin(dir.path(), "plain", "echo oops >&2; exit 3");
        let error = call(&dirs, "plain", Operation::Del, b"{}")
            .await
            .unwrap_err();
        assert_eq!(error.code, None);
        assert!(
            error
                .to_string()
                .contains("failed DEL: exited with exit status: 3: oops"),
            "{error}"
        );
        let error = call(&dirs, "absent", Operation::Add, b"{}")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("binary not found in"), "{error}");
        plugin(dir.path(), "slow", "sleep 30");
        let error = run(
            &dirs,
            "slow",
            Operation::Add,
            &target(),
            b"{}",
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(error.to_string().contains("did not finish"), "{error}");
    }

    #[test]
    fn codes_have_meanings() {
        assert_eq!(code_meaning(7), "invalid network config");
        assert_eq!(code_meaning(50), "plugin not available");
        assert_eq!(code_meaning(120), "plugin-specific error");
        assert_eq!(code_meaning(20), "reserved error code");
        assert!(!is_network_namespace(Path::new("/")));
        assert!(is_network_namespace(Path::new("/proc/self/ns/net")));
    }
}
