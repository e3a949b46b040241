//! Facts about this host that decide what a test must expect, read from the host itself (never
//! assumed), so that a test expects success where the host allows it and the host's own
//! refusal where it does not.

use std::fs;
use std::process::Command;

/// Why criu cannot checkpoint on this host (its first error, as `criu check` reports it), or
/// None when it can.
pub fn criu_refusal() -> Option<String> {
    let output = Command::new("criu")
        .arg("check")
        .output()
        .expect("criu must be installed (packaging/test.sh installs it)");
    if output.status.success() {
        return None;
    }
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    Some(
        said.lines()
            .find_map(|line| {
                let (_, after) = line.split_once("Error (")?;
                Some(after.split_once("): ")?.1.trim().to_string())
            })
            .unwrap_or_else(|| said.trim().to_string()),
    )
}

/// Whether cgroups are mounted hybrid with controllers on the unified hierarchy, which crun
/// 1.x refuses ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2").
pub fn hybrid_cgroups_with_unified_controllers() -> bool {
    let unified_is_separate = fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines().any(|line| {
            line.split(" - ")
                .nth(1)
                .is_some_and(|fs| fs.starts_with("cgroup2 "))
                && line.split_whitespace().nth(4) != Some("/sys/fs/cgroup")
        })
    });
    let controllers =
        fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    unified_is_separate && !controllers.trim().is_empty()
}

/// CAP_SYS_RESOURCE: what lowering a process's `oom_score_adj` below its current value takes.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process and whatever it starts may use capability `capability`: it must be
/// both effective here and in the bounding set (which no child can exceed). A container
/// sandbox often drops CAP_SYS_RESOURCE, so runc cannot lower a container's `oom_score_adj`.
pub fn has_capability(capability: u32) -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    has_capability_in(&status, capability)
}

/// [`has_capability`] for the text of a `/proc/<pid>/status`.
fn has_capability_in(status: &str, capability: u32) -> bool {
    let set = |name: &str| {
        status.lines().find_map(|line| {
            let hex = line.strip_prefix(name)?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
    };
    let bit = 1u64 << capability;
    [set("CapEff:"), set("CapBnd:")]
        .iter()
        .all(|mask| mask.is_some_and(|mask| mask & bit != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_needs_both_the_effective_and_the_bounding_set() {
        let status = |eff: &str, bnd: &str| format!("Name:\tx\nCapEff:\t{eff}\nCapBnd:\t{bnd}\n");
        let all = "000001ffffffffff";
        let without_sys_resource = "000001fffeffffff";
        assert!(has_capability_in(&status(all, all), CAP_SYS_RESOURCE));
        assert!(!has_capability_in(
            &status(without_sys_resource, all),
            CAP_SYS_RESOURCE
        ));
        assert!(!has_capability_in(
            &status(all, without_sys_resource),
            CAP_SYS_RESOURCE
        ));
        assert!(has_capability_in(
            &status(without_sys_resource, without_sys_resource),
            0
        ));
        assert!(
            !has_capability_in("Name:\tx\n", 0),
            "no sets, no capability"
        );
    }
}
