//! AppArmor on the host: a container's profile must be loaded in the kernel before runc
//! applies it. crustd loads its own default profile when first needed; a named one the
//! operator must have loaded.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::spec::DEFAULT_APPARMOR_PROFILE;
use crate::error::{ManagerError, Result};

/// The kernel's list of loaded profiles, `name (mode)` per line.
const LOADED_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// The source of crustd's default profile.
const DEFAULT_PROFILE_SOURCE: &str = include_str!("apparmor-default.profile");

/// How long `apparmor_parser` gets to compile and load the profile.
const PARSER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `name` is among the loaded profiles listed in `list`.
fn listed(list: &str, name: &str) -> bool {
    list.lines()
        .filter_map(|line| line.rsplit_once(" ("))
        .any(|(profile, _)| profile == name)
}

async fn is_loaded(name: &str) -> Result<bool> {
    let list = tokio::fs::read_to_string(LOADED_PROFILES)
        .await
        .map_err(|e| ManagerError::io(format!("read {LOADED_PROFILES}"), e))?;
    Ok(listed(&list, name))
}

/// Makes sure `profile` can be applied: crustd's default is loaded if missing, any other
/// must be loaded already.
pub async fn prepare(profile: &str, state_dir: &Path) -> Result<()> {
    if is_loaded(profile).await? {
        return Ok(());
    }
    if profile != DEFAULT_APPARMOR_PROFILE {
        return Err(ManagerError::FailedPrecondition(format!(
            "apparmor profile {profile:?} is not loaded on this host"
        )));
    }
    let source = state_dir.join("apparmor-default.profile");
    tokio::fs::write(&source, DEFAULT_PROFILE_SOURCE)
        .await
        .map_err(|e| ManagerError::io(format!("write {}", source.display()), e))?;
    // -K: no cache of ours in the system's; -r: replace a stale copy of the same name.
    let run = Command::new("apparmor_parser")
        .arg("-Kr")
        .arg(&source)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PARSER_TIMEOUT, run)
        .await
        .map_err(|_| {
            ManagerError::DeadlineExceeded(format!(
                "apparmor_parser did not load {profile} in {PARSER_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| ManagerError::io("run apparmor_parser", e))?;
    if !output.status.success() {
        return Err(ManagerError::FailedPrecondition(format!(
            "apparmor_parser could not load {profile}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_profiles_are_found_by_their_exact_name() {
        let list = "crust-default (enforce)\n/usr/bin/man (enforce)\nmy profile (complain)\n";
        assert!(listed(list, "crust-default"));
        assert!(listed(list, "my profile"));
        assert!(!listed(list, "crust"));
        assert!(!listed("", "crust-default"));
    }

    #[test]
    fn the_default_profile_source_declares_the_name_crustd_applies() {
        assert!(
            DEFAULT_PROFILE_SOURCE.contains(&format!("profile {DEFAULT_APPARMOR_PROFILE} ")),
            "the loaded profile must be the one specs name"
        );
    }
}
