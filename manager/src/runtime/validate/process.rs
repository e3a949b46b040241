//! A container process's environment and working directory, as the kernel and runc take them:
//! an environment entry is `KEY=value` in a NUL-terminated string, and runc needs the working
//! directory to be an absolute path inside the container.

use crust_proto::cri::KeyValue;

use super::invalid;
use crate::error::Result;
use crate::runtime::spec::check_path;

/// Refuses an environment variable whose key is empty or holds `=` or NUL (it would read as
/// another variable, or be cut), or whose value holds NUL.
pub fn environment(envs: &[KeyValue]) -> Result<()> {
    for KeyValue { key, value } in envs {
        if key.is_empty() {
            return Err(invalid("environment variable with an empty key".into()));
        }
        if key.contains(['=', '\0']) {
            return Err(invalid(format!("environment key {key:?} holds '=' or NUL")));
        }
        if value.contains('\0') {
            return Err(invalid(format!(
                "environment variable {key:?} has a value holding NUL"
            )));
        }
    }
    Ok(())
}

/// Refuses a working directory that is relative, climbs with `..` or holds NUL. Empty means
/// the image's.
pub fn working_dir(dir: &str) -> Result<()> {
    if dir.is_empty() {
        return Ok(());
    }
    check_path("working dir", dir)
}

#[cfg(test)]
mod tests {
    use super::super::tests::refused_for;
    use super::*;

    fn env(key: &str, value: &str) -> Vec<KeyValue> {
        vec![KeyValue {
            key: key.into(),
            value: value.into(),
        }]
    }

    #[test]
    fn kubelets_environment_passes() {
        for (key, value) in [
            ("PATH", "/usr/local/bin:/usr/bin"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("EMPTY", ""),
            ("WITH_EQUALS", "a=b=c"),
            ("lower.dotted-key", "x\ny"),
        ] {
            environment(&env(key, value)).unwrap();
        }
        environment(&[]).unwrap();
    }

    #[test]
    fn bad_keys_and_values_are_refused_naming_the_key() {
        refused_for(environment(&env("", "x")), "environment");
        refused_for(environment(&env("A=B", "x")), "\"A=B\"");
        refused_for(environment(&env("A\0B", "x")), "environment key");
        refused_for(environment(&env("A", "x\0y")), "\"A\"");
    }

    #[test]
    fn working_dirs_must_be_absolute_and_stay_below_root() {
        for dir in ["", "/", "/app", "/srv/data/", "/a/./b"] {
            working_dir(dir).unwrap();
        }
        for dir in ["app", "./app", "/app/../..", "/app\0"] {
            refused_for(working_dir(dir), "working dir");
        }
    }
}
