//! In-place resize (UpdateContainerResources): new limits applied to a running container
//! through its shim (`runc update`), then kept in its record and bundle, so that its status
//! reports them and a restarted crustd knows them. A limit the kernel refuses leaves the old
//! ones in place, on the container and in the record.

use std::sync::Arc;

use crust_proto::cri::LinuxContainerResources;
use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResources, Spec};

use super::container::not_found;
use super::host::HostSupport;
use super::records::ContainerState;
use super::spec;
use super::store::blocking;
use super::{Core, validate};
use crate::error::{ManagerError, Result};

/// The cgroup resources of `current` with `limits` in place of its old limits (its device
/// rules stay).
fn resized(
    current: &Spec,
    limits: &LinuxContainerResources,
    host: &HostSupport,
) -> Result<LinuxResources> {
    let old = current
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let mut resources = old.clone();
    spec::apply_limits(&mut resources, limits, host)?;
    lift_dropped_limits(&old, &mut resources)?;
    Ok(resources)
}

/// `runc update` leaves alone what it is not given: a limit the new set no longer has (a
/// memory limit or CPU quota kubelet now sends as 0, "none") is sent as unlimited, or the
/// kernel would keep the old one while the record says none.
fn lift_dropped_limits(old: &LinuxResources, new: &mut LinuxResources) -> Result<()> {
    let spec_error =
        |e: oci_spec::OciSpecError| ManagerError::InvalidArgument(format!("resources: {e}"));
    if old.memory().and_then(|m| m.limit()).is_some() && new.memory().is_none() {
        new.set_memory(Some(
            LinuxMemoryBuilder::default()
                .limit(-1)
                .swap(-1)
                .build()
                .map_err(spec_error)?,
        ));
    }
    let had_quota = old
        .cpu()
        .as_ref()
        .and_then(|c| c.quota())
        .is_some_and(|q| q > 0);
    if let Some(cpu) = new.cpu_mut() {
        if had_quota && cpu.quota().is_none() {
            cpu.set_quota(Some(-1));
        }
    }
    Ok(())
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
        let bundle = bundle.clone();
        move || spec::read(&bundle)
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
    fn a_limit_no_longer_given_is_lifted_not_kept() {
        let host = crate::runtime::host::test_host();
        let mut old = LinuxResources::default();
        spec::apply_limits(
            &mut old,
            &LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                ..Default::default()
            },
            &host,
        )
        .unwrap();
        let mut spec = Spec::default();
        let mut linux = oci_spec::runtime::Linux::default();
        linux.set_resources(Some(old));
        spec.set_linux(Some(linux));
        let none = resized(&spec, &LinuxContainerResources::default(), &host).unwrap();
        let memory = none.memory().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(-1), Some(-1)));
        assert_eq!(none.cpu().as_ref().and_then(|c| c.quota()), Some(-1));
    }

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
        assert_eq!(
            resources.memory().and_then(|m| m.limit()),
            Some(-1),
            "the old memory limit is lifted"
        );
        assert_eq!(resources.devices().as_ref().map(Vec::len), Some(1));
        assert_eq!(
            resources.cpu().as_ref().and_then(|c| c.quota()),
            Some(50_000)
        );
    }
}
