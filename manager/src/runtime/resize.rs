//! In-place resize (UpdateContainerResources): new limits applied to a running container
//! through its shim (`runc update`), then kept in its record and bundle, so that its status
//! reports them and a restarted crustd knows them. A limit the kernel refuses leaves the old
//! ones in place, on the container and in the record.

use std::path::PathBuf;
use std::sync::Arc;

use crust_proto::cri::LinuxContainerResources;
use oci_spec::runtime::{LinuxResources, Spec};

use super::host::HostSupport;
use super::records::ContainerState;
use super::spec;
use super::store::blocking;
use super::{Core, shown, validate};
use crate::error::{ManagerError, Result};

fn not_found(id: &str) -> ManagerError {
    ManagerError::NotFound(format!("container {} not found", shown(id)))
}

fn read_spec(path: PathBuf) -> Result<Spec> {
    Spec::load(&path)
        .map_err(|e| ManagerError::io(format!("read {}", path.display()), std::io::Error::other(e)))
}

/// The cgroup resources of `current` with `limits` in place of its old limits (its device
/// rules stay).
fn resized(
    current: &Spec,
    limits: &LinuxContainerResources,
    host: &HostSupport,
) -> Result<LinuxResources> {
    let mut resources = current
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    spec::apply_limits(&mut resources, limits, host)?;
    Ok(resources)
}

/// Applies `limits` to container `id`: to its running process through the shim, then to its
/// record and bundle. A created container only has its record and bundle changed (its
/// process starts with them); an exited one is refused.
pub async fn update_container(
    core: &Arc<Core>,
    id: &str,
    limits: LinuxContainerResources,
) -> Result<()> {
    validate::container_resources(&limits, core.host.cgroup_v2)?;
    let id = core.containers.resolve(id)?.ok_or_else(|| not_found(id))?;
    let _operation = core.operations.lock(&id).await;
    let record = core.containers.get(&id).ok_or_else(|| not_found(&id))?;
    if !matches!(
        record.state,
        ContainerState::Created | ContainerState::Running
    ) {
        return Err(ManagerError::FailedPrecondition(format!(
            "container {id} is {:?}: only a created or running container is resized",
            record.state
        )));
    }
    let bundle = core.layout.bundle(&id);
    let mut current = blocking({
        let path = bundle.join("config.json");
        move || read_spec(path)
    })
    .await?;
    let resources = resized(&current, &limits, &core.host)?;
    if record.state == ContainerState::Running && record.task.may_exist() {
        let json = serde_json::to_vec(&resources)
            .map_err(|e| ManagerError::io("encode resources", std::io::Error::other(e)))?;
        let client = core.supervisor(&record.pod_id)?.client().await?;
        client.update(&id, json).await?;
    }
    if let Some(linux) = current.linux_mut() {
        linux.set_resources(Some(resources));
    }
    blocking(move || spec::write(&current, &bundle)).await?;
    core.containers
        .update(&id, |record| record.set_resources(limits))
        .await?;
    log::info!("container {id} resized");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_limits_replace_the_old_and_device_rules_stay() {
        let mut spec = Spec::default();
        let mut resources = LinuxResources::default();
        resources.set_devices(Some(vec![oci_spec::runtime::LinuxDeviceCgroup::default()]));
        let mut memory = oci_spec::runtime::LinuxMemory::default();
        memory.set_limit(Some(64 << 20));
        resources.set_memory(Some(memory));
        let mut linux = oci_spec::runtime::Linux::default();
        linux.set_resources(Some(resources));
        spec.set_linux(Some(linux));
        let host = crate::runtime::host::test_host();
        let limits = LinuxContainerResources {
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let resources = resized(&spec, &limits, &host).unwrap();
        assert!(resources.memory().is_none(), "the old memory limit is gone");
        assert_eq!(resources.devices().as_ref().map(Vec::len), Some(1));
        assert_eq!(
            resources.cpu().as_ref().and_then(|c| c.quota()),
            Some(50_000)
        );
    }
}
