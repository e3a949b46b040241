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
