//! Running the shim binary as containerd does: `start` to launch a pod's daemon, `delete` to
//! clean up a task whose daemon is gone; and the daemon process itself, found and ended by
//! pid only after its command line proves it is the pod's shim.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crust_proto::protobuf::Message;
use crust_proto::runc_options::Options;
use crust_proto::task::DeleteResponse;
use crust_proto::{shim_socket, typeurl};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::client::{Exit, NAMESPACE, nanos};
use crate::error::{ManagerError, Result};

/// How long the shim's `start` may take.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long the shim's `delete` may take (containerd gives it 5 s).
const DELETE_LIMIT: Duration = Duration::from_secs(5);
/// The status containerd reports for a task whose shim `delete` could not clean up.
const DELETE_FAILED_STATUS: u32 = 255;

/// How crustd invokes shims.
#[derive(Debug, Clone)]
pub struct ShimLauncher {
    /// The shim binary.
    pub binary: String,
    /// crustd's CRI socket, given as containerd's `-address` (it seeds the shim socket name).
    pub address: String,
    /// crustd's Events endpoint, given as `TTRPC_ADDRESS`.
    pub events_address: String,
}

impl ShimLauncher {
    /// The address the shim of pod `pod_id` serves, derived as the shim derives it.
    pub fn address_of(&self, pod_id: &str) -> String {
        let path = shim_socket::path(
            Path::new(shim_socket::DEFAULT_DIR),
            &self.address,
            NAMESPACE,
            pod_id,
        );
        format!("unix://{}", path.display())
    }

    fn command(&self, id: &str, bundle: &Path, action: &str) -> Command {
        let publisher = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "crustd".into());
        let mut command = Command::new(&self.binary);
        command
            .args(["-namespace", NAMESPACE, "-address", &self.address])
            .args(["-publish-binary", &publisher, "-id", id]);
        // containerd names the bundle on `delete` only; `start` finds it as its working dir.
        if action == "delete" {
            command.arg("-bundle").arg(bundle);
        }
        command
            .arg(action)
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", &self.events_address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `<shim> … -id <id> start` in `bundle` as containerd 1.6 does, with `options` on
    /// stdin; returns the address the shim serves on.
    pub async fn start(&self, id: &str, bundle: &Path, options: &Options) -> Result<String> {
        let stdin = typeurl::pack(typeurl::RUNC_OPTIONS, options)
            .and_then(|any| any.write_to_bytes())
            .map_err(|e| ManagerError::io("encode runc options", std::io::Error::other(e)))?;
        let output = self.run(id, bundle, "start", &stdin, START_LIMIT).await?;
        if !output.status.success() {
            return Err(ManagerError::Shim(format!(
                "shim start for {id} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let address = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if address.is_empty() {
            return Err(ManagerError::Shim(format!(
                "shim start for {id} printed no address"
            )));
        }
        Ok(address)
    }

    /// Runs `<shim> … -id <id> delete` in `bundle`, as containerd does for a task whose shim
    /// is gone: runc removes the container (killing what is left of it) and the root file
    /// system is unmounted. Returns the exit the shim reports (137, killed) or, when `delete`
    /// fails, 255 as containerd does.
    pub async fn cleanup(&self, id: &str, bundle: &Path) -> Exit {
        let failed = |why: String| {
            log::warn!("shim delete of task {id}: {why}");
            Exit {
                status: DELETE_FAILED_STATUS,
                at: super::super::now(),
            }
        };
        if !bundle.is_dir() {
            return failed(format!("bundle {} is gone", bundle.display()));
        }
        match self.run(id, bundle, "delete", &[], DELETE_LIMIT).await {
            Ok(output) if output.status.success() => {
                match DeleteResponse::parse_from_bytes(&output.stdout) {
                    Ok(response) => Exit {
                        status: response.exit_status,
                        at: nanos(&response.exited_at),
                    },
                    Err(e) => failed(format!("unreadable answer: {e}")),
                }
            }
            Ok(output) => failed(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(e) => failed(e.to_string()),
        }
    }

    async fn run(
        &self,
        id: &str,
        bundle: &Path,
        action: &str,
        stdin: &[u8],
        limit: Duration,
    ) -> Result<std::process::Output> {
        let mut child = self
            .command(id, bundle, action)
            .spawn()
            .map_err(|e| ManagerError::io(format!("run shim {}", self.binary), e))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin)
                .await
                .map_err(|e| ManagerError::io(format!("write to shim {action}"), e))?;
        }
        // On timeout the child is dropped, and with it killed.
        tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| {
                ManagerError::DeadlineExceeded(format!(
                    "shim {action} for {id} took over {}s",
                    limit.as_secs()
                ))
            })?
            .map_err(|e| ManagerError::io(format!("wait for shim {action}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_shim_address_is_derived_as_the_shim_derives_it() {
        let launcher = ShimLauncher {
            binary: "containerd-shim-crust-v2".into(),
            address: "/run/crust/crustd.sock".into(),
            events_address: "/run/crust/crustd.sock.ttrpc".into(),
        };
        assert_eq!(
            launcher.address_of("pod1"),
            format!(
                "unix:///run/containerd/s/{}",
                shim_socket::name("/run/crust/crustd.sock", "k8s.io", "pod1")
            )
        );
    }
}
