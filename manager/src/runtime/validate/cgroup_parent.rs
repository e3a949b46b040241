//! A pod's cgroup parent: kubelet sends an absolute cgroupfs path
//! (`/kubepods/burstable/pod…`) or, under the systemd driver, a slice name
//! (`kubepods-burstable-pod….slice`). crustd makes, and later removes, cgroups below it, so
//! it must not climb out of the cgroup tree.

use std::path::{Component, Path};

use super::invalid;
use crate::error::Result;

/// Refuses a cgroup parent that is neither an absolute path without `..` nor a systemd slice
/// name runc can expand, or that holds a control character (a NUL or newline would cut the
/// path, or a line of `/proc/<pid>/cgroup`). Empty means crustd's default.
pub fn check(parent: &str) -> Result<()> {
    let refused = |why: &str| Err(invalid(format!("cgroup parent {parent:?} {why}")));
    if parent.is_empty() {
        return Ok(());
    }
    if parent.chars().any(char::is_control) {
        return refused("holds a control character");
    }
    if parent.starts_with('/') {
        if Path::new(parent)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return refused("must not contain \"..\"");
        }
        return Ok(());
    }
    let Some(stem) = parent
        .strip_suffix(".slice")
        .filter(|_| !parent.contains('/'))
    else {
        return refused("must be an absolute path or a systemd slice name");
    };
    // runc expands `a-b.slice` to `a.slice/a-b.slice` and refuses an empty part between the
    // dashes; `-.slice` is the root slice.
    if stem != "-" && stem.split('-').any(str::is_empty) {
        return refused("is not a valid slice name: it has an empty part between dashes");
    }
    // crustd joins slice, prefix and name with ':' into runc's cgroupsPath.
    if stem.contains(':') {
        return refused("is not a valid slice name: it holds ':'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::refused_for;
    use super::*;

    #[test]
    fn kubelets_paths_and_slices_pass() {
        for parent in [
            "",
            "/",
            "/kubepods/burstable/pod0f8d3e0a-4b1c-4d1e-9c6e-1b2a3c4d5e6f",
            "/kubepods/besteffort/pod123/",
            "kubepods-burstable-pod0f8d3e0a_4b1c_4d1e_9c6e_1b2a3c4d5e6f.slice",
            "kubepods.slice",
            "-.slice",
            "system.slice",
        ] {
            check(parent).unwrap();
        }
    }

    #[test]
    fn climbing_relative_or_malformed_parents_are_refused() {
        for parent in [
            "/kubepods/../../etc",
            "/..",
            "kubepods/burstable",
            "kubepods",
            "../kubepods",
            "kubepods/pod.slice",
            ".slice",
            "-kubepods.slice",
            "kubepods-.slice",
            "kubepods--burstable.slice",
            "kube:pods.slice",
            "/kubepods\0/x",
            "/kubepods\n/x",
        ] {
            refused_for(check(parent), "cgroup parent");
        }
    }
}
