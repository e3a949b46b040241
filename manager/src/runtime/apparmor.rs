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

/// The parser, where distributions install it.
const PARSER: &str = "/sbin/apparmor_parser";

/// Where the parser finds what a profile includes.
const POLICY_DIR: &str = "/etc/apparmor.d";

/// Loads run one at a time: after a reboot the first containers all find the profile
/// missing, and one load is enough.
static LOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the AppArmor parser is installed.
pub fn parser_installed() -> bool {
    Path::new(PARSER).is_file()
}

/// The default profile's source with only the includes that exist under `policy_dir` (a
/// host may have the parser without the distribution's abstractions).
fn default_source(policy_dir: &Path) -> String {
    DEFAULT_PROFILE_SOURCE
        .lines()
        .filter(|line| {
            let included = line
                .trim()
                .strip_prefix("#include <")
                .and_then(|rest| rest.strip_suffix('>'));
            included.is_none_or(|file| policy_dir.join(file).exists())
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

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
    let _one_load = LOADING.lock().await;
    if is_loaded(profile).await? {
        return Ok(());
    }
    let source = state_dir.join("apparmor-default.profile");
    let text = default_source(Path::new(POLICY_DIR));
    let at = source.clone();
    super::store::blocking(move || crate::images::store::write_atomically(&at, text.as_bytes()))
        .await?;
    // -K: no cache of ours in the system's; -r: replace a stale copy of the same name.
    let run = Command::new(PARSER)
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
    fn includes_the_host_lacks_are_left_out() {
        let policy = tempfile::tempdir().unwrap();
        let without = default_source(policy.path());
        assert!(!without.contains("#include"), "{without}");
        assert!(without.contains("deny mount,"));
        std::fs::create_dir_all(policy.path().join("tunables")).unwrap();
        std::fs::write(policy.path().join("tunables/global"), "").unwrap();
        let with = default_source(policy.path());
        assert!(with.contains("#include <tunables/global>"), "{with}");
        assert!(!with.contains("abstractions/base"), "{with}");
    }

    #[test]
    fn the_default_profile_source_declares_the_name_crustd_applies() {
        assert!(
            DEFAULT_PROFILE_SOURCE.contains(&format!("profile {DEFAULT_APPARMOR_PROFILE} ")),
            "the loaded profile must be the one specs name"
        );
    }
}
