//! A container's process: what it runs, its environment, working directory and user.

use crust_proto::cri::ContainerConfig;
use oci_spec::runtime::{User, UserBuilder};

use super::{ImageContext, spec_error};
use crate::error::{ManagerError, Result};
use crate::images::store::RunConfig;

/// The PATH a process gets when neither the image nor kubelet sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments: kubelet's command replaces the image entrypoint (and drops its
/// cmd); kubelet's args replace the image cmd.
pub fn args(config: &ContainerConfig, image: &RunConfig) -> Result<Vec<String>> {
    let mut args = if config.command.is_empty() {
        image.entrypoint.clone()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(ManagerError::InvalidArgument(
            "no command: neither the container config nor the image names one".into(),
        ));
    }
    Ok(args)
}

/// The environment: HOSTNAME, the image's, then kubelet's (which wins), PATH defaulted.
pub fn environment(config: &ContainerConfig, image: &RunConfig, hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    if !hostname.is_empty() {
        set(format!("HOSTNAME={hostname}"));
    }
    for entry in &image.env {
        set(entry.clone());
    }
    for kv in &config.envs {
        set(format!("{}={}", kv.key, kv.value));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env
}

/// The working directory: kubelet's, else the image's, else `/`.
pub fn working_dir(config: &ContainerConfig, image: &RunConfig) -> String {
    [&config.working_dir, &image.working_dir]
        .into_iter()
        .find(|dir| !dir.is_empty())
        .cloned()
        .unwrap_or_else(|| "/".to_string())
}

/// The user the process runs as.
pub fn user(image: &ImageContext<'_>) -> Result<User> {
    let mut user = UserBuilder::default()
        .uid(image.user.uid)
        .gid(image.user.gid);
    if !image.user.additional_gids.is_empty() {
        user = user.additional_gids(image.user.additional_gids.clone());
    }
    user.build().map_err(spec_error)
}

#[cfg(test)]
mod tests {
    use super::super::test_image as image;
    use super::*;
    use crust_proto::cri::KeyValue;

    #[test]
    fn command_and_args_follow_kubelets_rules() {
        let img = image();
        let mut config = ContainerConfig::default();
        assert_eq!(args(&config, &img).unwrap(), ["/entry", "serve"]);
        config.args = vec!["debug".into()];
        assert_eq!(args(&config, &img).unwrap(), ["/entry", "debug"]);
        config.command = vec!["/bin/sh".into()];
        config.args.clear();
        assert_eq!(args(&config, &img).unwrap(), ["/bin/sh"]);
        config.args = vec!["-c".into(), "true".into()];
        assert_eq!(args(&config, &img).unwrap(), ["/bin/sh", "-c", "true"]);
        assert!(matches!(
            args(&ContainerConfig::default(), &RunConfig::default()),
            Err(ManagerError::InvalidArgument(_))
        ));
    }

    #[test]
    fn kubelets_environment_wins_and_path_is_defaulted() {
        let config = ContainerConfig {
            envs: vec![KeyValue {
                key: "MODE".into(),
                value: "kube".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            environment(&config, &image(), "web-0"),
            ["HOSTNAME=web-0", "PATH=/image/bin", "MODE=kube"]
        );
        assert_eq!(
            environment(&ContainerConfig::default(), &RunConfig::default(), ""),
            [DEFAULT_PATH]
        );
    }

    #[test]
    fn the_working_dir_is_kubelets_then_the_images_then_root() {
        let mut config = ContainerConfig::default();
        assert_eq!(working_dir(&config, &image()), "/srv");
        assert_eq!(working_dir(&config, &RunConfig::default()), "/");
        config.working_dir = "/app".into();
        assert_eq!(working_dir(&config, &image()), "/app");
    }
}
