//! crustd's TOML configuration: defaults that work out of the box, every value checked at start.
//!
//! Knob names follow containerd's CRI plugin where crustd has the same knob, so an operator's
//! containerd settings carry over.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ManagerError, Result};

/// Where crustd looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crust/crustd.toml";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The CRI socket kubelet and crictl connect to (mode 0660).
    pub socket: PathBuf,
    /// Persistent data: image content, unpacked layers, image records.
    pub root_dir: PathBuf,
    /// Runtime state: pods, containers, bundles; gone after a reboot.
    pub state_dir: PathBuf,
    /// The shim binary (name on PATH or absolute path).
    pub shim_binary: String,
    /// The cgroup pods go under when kubelet names no cgroup parent (cgroupfs driver).
    pub cgroup_root: String,
    /// The runtime handler used when a pod names none.
    pub default_runtime: String,
    /// Runtime handlers (RuntimeClass names) and the OCI runtime each one runs.
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// Registry hosts, mirrors and plain-HTTP hosts.
    pub registry: RegistryConfig,
    /// Longest CRI log line before it is split into partial (`P`) lines; -1 means no limit.
    pub max_container_log_line_size: i64,
    /// Address the streaming server (exec, attach, port-forward) listens on.
    pub stream_server_address: String,
    /// Its port; "0" picks a free one.
    pub stream_server_port: String,
    /// A streaming connection with no traffic for this long is closed ("4h", "0" = never).
    pub stream_idle_timeout: String,
    /// Serve streaming over TLS (https URLs), with `x509_key_pair_streaming`'s pair.
    pub enable_tls_streaming: bool,
    /// The streaming server's certificate and key (PEM); crustd refuses to start with TLS
    /// enabled and no pair.
    pub x509_key_pair_streaming: KeyPair,
    /// Layers of one image downloaded at the same time.
    pub max_concurrent_downloads: usize,
    /// A pull that makes no progress for this long is cancelled ("5m", "30s"; "0" = never).
    pub image_pull_progress_timeout: String,
    /// Pod networking through CNI plugins.
    pub cni: CniConfig,
    /// Raise a container's `oom_score_adj` to crustd's own when it asks for less (containerd's
    /// knob). crustd also does so on its own where the host cannot lower a score (no
    /// CAP_SYS_RESOURCE in its bounding set), where the lower score would fail the container.
    pub restrict_oom_score_adj: bool,
    /// Run a container whose hugepage limits this host's cgroups cannot apply (no hugetlb
    /// controller) without them, rather than refusing it (containerd's knob).
    pub tolerate_missing_hugetlb_controller: bool,
    /// How many container events (GetContainerEvents) a subscriber may be behind before its
    /// stream is ended.
    pub container_events_buffer: usize,
    /// Make no volumes for the paths an image's config declares as `Volumes` (containerd's
    /// knob of the same name).
    pub ignore_image_defined_volumes: bool,
}

/// A TLS certificate and its key, PEM files (containerd's `x509_key_pair_streaming`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyPair {
    /// The certificate (chain).
    pub tls_cert_file: PathBuf,
    /// Its private key (PKCS#8).
    pub tls_key_file: PathBuf,
}

/// Pod networking (containerd's `[plugins."io.containerd.grpc.v1.cri".cni]` knobs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// The one directory holding plugin binaries; when set it replaces `bin_dirs`.
    pub bin_dir: String,
    /// Directories searched for plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Network configurations (`*.conf`, `*.conflist`, `*.json`), watched for changes.
    pub conf_dir: PathBuf,
    /// How many of them (in lexical order) each pod is attached to; 0 means all.
    pub max_conf_num: usize,
    /// A conflist written to `conf_dir` with the pod CIDR kubelet sends, when no usable
    /// config exists (`{{.PodCIDR}}` is replaced).
    pub conf_template: String,
    /// Which of the pod's addresses is its primary IP: "ipv4" (or ""), "ipv6", or "cni"
    /// (the plugins' order).
    pub ip_pref: String,
    /// Longest one plugin call may take ("30s", "2m").
    pub plugin_timeout: String,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            bin_dir: String::new(),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            max_conf_num: 1,
            conf_template: String::new(),
            ip_pref: String::new(),
            plugin_timeout: "1m".to_string(),
        }
    }
}

impl CniConfig {
    /// Where plugin binaries are looked for, in order.
    pub fn plugin_dirs(&self) -> Vec<PathBuf> {
        if self.bin_dir.is_empty() {
            self.bin_dirs.clone()
        } else {
            vec![PathBuf::from(&self.bin_dir)]
        }
    }

    /// The longest one plugin call may take.
    pub fn plugin_timeout(&self) -> Duration {
        parse_duration(&self.plugin_timeout).unwrap_or(Duration::from_secs(60))
    }

    fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.plugin_dirs().iter().any(|d| !d.is_absolute()) {
            return Err((
                "cni.bin_dirs",
                "every plugin directory must be absolute".into(),
            ));
        }
        if !self.conf_dir.is_absolute() {
            return Err((
                "cni.conf_dir",
                format!("{} is not absolute", self.conf_dir.display()),
            ));
        }
        if !matches!(self.ip_pref.as_str(), "" | "ipv4" | "ipv6" | "cni") {
            return Err((
                "cni.ip_pref",
                format!("{:?} is not ipv4, ipv6 or cni", self.ip_pref),
            ));
        }
        match parse_duration(&self.plugin_timeout) {
            Ok(d) if !d.is_zero() => {}
            Ok(_) => return Err(("cni.plugin_timeout", "must be more than 0".into())),
            Err(why) => return Err(("cni.plugin_timeout", why)),
        }
        if let Some(action) = unsupported_template_action(&self.conf_template) {
            return Err((
                "cni.conf_template",
                format!("{action} is not supported: only {{{{.PodCIDR}}}} is replaced"),
            ));
        }
        Ok(())
    }
}

/// The first `{{…}}` action in a conf template other than `{{.PodCIDR}}`.
fn unsupported_template_action(template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start..];
        let end = after.find("}}").map_or(after.len(), |e| e + 2);
        let action = &after[..end];
        let inside = action.strip_prefix("{{").and_then(|a| a.strip_suffix("}}"));
        if inside.map(str::trim) != Some(".PodCIDR") {
            return Some(action.to_string());
        }
        rest = &after[end..];
    }
    None
}

/// One runtime handler.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    /// The OCI runtime binary the shim runs (runc's `BinaryName` option).
    pub binary_name: String,
    /// Its state root, if not the shim's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Whether cgroups are managed through systemd.
    #[serde(default)]
    pub systemd_cgroup: bool,
}

/// How registries are reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Per registry host, the endpoints tried first, in order, before the host itself
    /// (`"docker.io" = ["https://mirror.example"]`).
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts (`host` or `host:port`) reached over plain HTTP instead of HTTPS.
    pub plain_http: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let runtimes = [("runc", "runc"), ("crun", "crun")]
            .into_iter()
            .map(|(name, binary)| {
                (
                    name.to_string(),
                    RuntimeHandler {
                        binary_name: binary.to_string(),
                        root: None,
                        systemd_cgroup: false,
                    },
                )
            })
            .collect();
        Config {
            socket: PathBuf::from("/run/crust/crustd.sock"),
            root_dir: PathBuf::from("/var/lib/crust"),
            state_dir: PathBuf::from("/run/crust"),
            shim_binary: "containerd-shim-crust-v2".to_string(),
            cgroup_root: "/crust".to_string(),
            default_runtime: "runc".to_string(),
            runtimes,
            registry: RegistryConfig::default(),
            max_container_log_line_size: 16 * 1024,
            stream_server_address: "127.0.0.1".to_string(),
            stream_server_port: "0".to_string(),
            stream_idle_timeout: "4h".to_string(),
            enable_tls_streaming: false,
            x509_key_pair_streaming: KeyPair::default(),
            max_concurrent_downloads: 3,
            image_pull_progress_timeout: "5m".to_string(),
            cni: CniConfig::default(),
            restrict_oom_score_adj: false,
            tolerate_missing_hugetlb_controller: true,
            container_events_buffer: crate::runtime::container_events::CONTAINER_EVENTS_BUFFER,
            ignore_image_defined_volumes: false,
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`; a missing file at the default path means defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(e) => return Err(ManagerError::io(format!("read {}", path.display()), e)),
        };
        Self::parse(&text).map_err(|e| match e {
            ManagerError::Config(why) => ManagerError::Config(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Config =
            toml::from_str(text).map_err(|e| ManagerError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value, naming the knob at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |knob: &str, why: String| Err(ManagerError::Config(format!("{knob}: {why}")));
        for (knob, path) in [
            ("socket", &self.socket),
            ("root_dir", &self.root_dir),
            ("state_dir", &self.state_dir),
        ] {
            if !path.is_absolute() {
                return bad(knob, format!("{} is not an absolute path", path.display()));
            }
        }
        if !self.cgroup_root.starts_with('/') || self.cgroup_root.split('/').any(|c| c == "..") {
            return bad(
                "cgroup_root",
                format!(
                    "{:?} must be an absolute cgroup path without \"..\"",
                    self.cgroup_root
                ),
            );
        }
        if self.shim_binary.is_empty() {
            return bad("shim_binary", "is empty".into());
        }
        if self.runtimes.is_empty() {
            return bad("runtimes", "no runtime handler is configured".into());
        }
        for (name, handler) in &self.runtimes {
            if name.is_empty() || handler.binary_name.is_empty() {
                return bad(
                    &format!("runtimes.{name}"),
                    "needs a name and a binary_name".into(),
                );
            }
            if handler
                .root
                .as_deref()
                .is_some_and(|root| !root.is_absolute())
            {
                return bad(&format!("runtimes.{name}.root"), "is not absolute".into());
            }
        }
        if !self.runtimes.contains_key(&self.default_runtime) {
            return bad(
                "default_runtime",
                format!("{:?} is not among runtimes", self.default_runtime),
            );
        }
        for (host, endpoints) in &self.registry.mirrors {
            for endpoint in endpoints {
                if split_endpoint(endpoint).is_none() {
                    return bad(
                        &format!("registry.mirrors.{host:?}"),
                        format!("{endpoint:?} is not an http:// or https:// host"),
                    );
                }
            }
        }
        if let Some(host) = self.registry.plain_http.iter().find(|h| !is_host(h)) {
            return bad(
                "registry.plain_http",
                format!("{host:?} is not a host[:port]"),
            );
        }
        if !(1..=1 << 20).contains(&self.container_events_buffer) {
            return bad(
                "container_events_buffer",
                format!("{} is not within 1..=1048576", self.container_events_buffer),
            );
        }
        if self.max_container_log_line_size != -1 && self.max_container_log_line_size < 4096 {
            return bad(
                "max_container_log_line_size",
                "must be -1 (no limit) or at least 4096".into(),
            );
        }
        if self.stream_server_address.parse::<IpAddr>().is_err() {
            return bad(
                "stream_server_address",
                format!("{:?} is not an IP address", self.stream_server_address),
            );
        }
        if self.stream_server_port.parse::<u16>().is_err() {
            return bad(
                "stream_server_port",
                format!("{:?} is not a port number", self.stream_server_port),
            );
        }
        if let Err(why) = parse_duration(&self.stream_idle_timeout) {
            return bad("stream_idle_timeout", why);
        }
        if self.enable_tls_streaming
            && (self
                .x509_key_pair_streaming
                .tls_cert_file
                .as_os_str()
                .is_empty()
                || self
                    .x509_key_pair_streaming
                    .tls_key_file
                    .as_os_str()
                    .is_empty())
        {
            return bad(
                "x509_key_pair_streaming",
                "enable_tls_streaming needs tls_cert_file and tls_key_file".into(),
            );
        }
        if self.max_concurrent_downloads == 0 {
            return bad("max_concurrent_downloads", "must be at least 1".into());
        }
        if let Err(why) = parse_duration(&self.image_pull_progress_timeout) {
            return bad("image_pull_progress_timeout", why);
        }
        if let Err((knob, why)) = self.cni.validate() {
            return bad(knob, why);
        }
        Ok(())
    }

    /// The streaming idle timeout; `None` when disabled.
    pub fn stream_idle_limit(&self) -> Option<Duration> {
        parse_duration(&self.stream_idle_timeout)
            .ok()
            .filter(|d| !d.is_zero())
    }

    /// The pull progress timeout; `None` when disabled.
    pub fn pull_progress_timeout(&self) -> Option<Duration> {
        parse_duration(&self.image_pull_progress_timeout)
            .ok()
            .filter(|d| !d.is_zero())
    }
}

/// Splits a mirror endpoint into (plain HTTP?, host[:port]).
pub fn split_endpoint(endpoint: &str) -> Option<(bool, &str)> {
    let (plain, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (false, rest)
    } else {
        (true, endpoint.strip_prefix("http://")?)
    };
    let host = rest.trim_end_matches('/');
    is_host(host).then_some((plain, host))
}

/// `name`, `name:port`, `[ipv6]` or `[ipv6]:port`.
fn is_host(host: &str) -> bool {
    let port_ok = |port: &str| port.parse::<u16>().is_ok();
    if let Some(bracketed) = host.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return false;
        };
        return address.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        && port.is_none_or(port_ok)
}

/// Parses "90s", "5m", "1h30m", "250ms" or "0".
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 30s or 5m"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value * 60),
            "h" => Duration::from_secs(value * 3600),
            _ => return Err(format!("{text:?} is not a duration like 30s or 5m")),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_the_defaults_and_they_are_valid() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.socket, Path::new("/run/crust/crustd.sock"));
        assert_eq!(config.max_container_log_line_size, 16384);
        assert_eq!(config.runtimes["crun"].binary_name, "crun");
        assert_eq!(
            config.pull_progress_timeout(),
            Some(Duration::from_secs(300))
        );
    }

    /// The commented default config the package installs as /etc/crust/crustd.toml.
    const PACKAGED: &str = include_str!("../../packaging/crustd.toml");

    /// Every key of `value` as a dotted path, tables included.
    fn keys(prefix: &str, value: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
        if let toml::Value::Table(table) = value {
            for (key, inner) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                keys(&path, inner, out);
                out.insert(path);
            }
        }
    }

    #[test]
    fn the_packaged_config_is_exactly_the_defaults_and_names_every_key() {
        // It parses (and passes every check) to the defaults themselves...
        assert_eq!(Config::parse(PACKAGED).unwrap(), Config::default());
        // ...and sets every key crustd has, no more (an optional key that is unset by default
        // is shown commented out).
        let mut written = std::collections::BTreeSet::new();
        keys(
            "",
            &toml::Value::Table(PACKAGED.parse().unwrap()),
            &mut written,
        );
        let mut known = std::collections::BTreeSet::new();
        keys(
            "",
            &toml::Value::try_from(Config::default()).unwrap(),
            &mut known,
        );
        assert_eq!(written, known);
        assert!(
            PACKAGED.contains("\n# root = \""),
            "runtimes' optional root"
        );
        // Each key comes with a comment saying what it does.
        let lines: Vec<&str> = PACKAGED.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let is_setting = !line.starts_with('#') && line.contains(" = ");
            if is_setting {
                assert!(
                    at > 0 && lines[at - 1].starts_with('#'),
                    "no comment above {line:?}"
                );
            }
        }
    }

    #[test]
    fn settings_are_read() {
        let config = Config::parse(
            r#"
            root_dir = "/srv/crust"
            default_runtime = "fast"
            max_container_log_line_size = -1
            container_events_buffer = 16
            ignore_image_defined_volumes = true
            [runtimes.fast]
            binary_name = "/usr/bin/crun"
            systemd_cgroup = true
            [registry]
            plain_http = ["127.0.0.1:5000", "registry.local"]
            [registry.mirrors]
            "docker.io" = ["https://mirror.example", "http://10.0.0.1:5000/"]
            "#,
        )
        .unwrap();
        assert_eq!(config.root_dir, Path::new("/srv/crust"));
        assert!(config.runtimes["fast"].systemd_cgroup);
        assert_eq!(config.registry.mirrors["docker.io"].len(), 2);
        assert_eq!(config.max_container_log_line_size, -1);
        assert_eq!(config.container_events_buffer, 16);
        assert!(config.ignore_image_defined_volumes);
        assert!(!Config::default().ignore_image_defined_volumes);
    }

    #[test]
    fn every_bad_value_is_named() {
        for (text, knob) in [
            ("socket = \"relative.sock\"", "socket"),
            ("no_such_knob = 1", "no_such_knob"),
            ("default_runtime = \"kata\"", "default_runtime"),
            ("container_events_buffer = 0", "container_events_buffer"),
            (
                "max_container_log_line_size = 100",
                "max_container_log_line_size",
            ),
            (
                "stream_server_address = \"localhost:1\"",
                "stream_server_address",
            ),
            ("stream_server_port = \"http\"", "stream_server_port"),
            ("stream_idle_timeout = \"long\"", "stream_idle_timeout"),
            ("enable_tls_streaming = true", "x509_key_pair_streaming"),
            ("max_concurrent_downloads = 0", "max_concurrent_downloads"),
            (
                "image_pull_progress_timeout = \"soon\"",
                "image_pull_progress_timeout",
            ),
            ("[registry]\nplain_http = [\"a b\"]", "registry.plain_http"),
            (
                "[registry.mirrors]\n\"docker.io\" = [\"ftp://x\"]",
                "registry.mirrors",
            ),
            ("[runtimes.x]\nbinary_name = \"\"", "runtimes.x"),
            ("cgroup_root = \"crust\"", "cgroup_root"),
            (
                "[runtimes.x]\nbinary_name = \"runc\"\nroot = \"relative\"",
                "runtimes.x.root",
            ),
            (
                "max_container_log_line_size = 4095",
                "max_container_log_line_size",
            ),
            ("cgroup_root = \"/a/../b\"", "cgroup_root"),
            ("[cni]\nconf_dir = \"net.d\"", "cni.conf_dir"),
            ("[cni]\nbin_dir = \"bin\"", "cni.bin_dirs"),
            ("[cni]\nbin_dirs = [\"/ok\", \"bin\"]", "cni.bin_dirs"),
            ("[cni]\nip_pref = \"v4\"", "cni.ip_pref"),
            ("[cni]\nplugin_timeout = \"0\"", "cni.plugin_timeout"),
            ("[cni]\nplugin_timeout = \"x\"", "cni.plugin_timeout"),
            (
                "[cni]\nconf_template = \"{{range .PodCIDRRanges}}\"",
                "cni.conf_template",
            ),
        ] {
            let error = Config::parse(text).unwrap_err().to_string();
            assert!(error.contains(knob), "{text}: {error}");
        }
    }

    #[test]
    fn cni_knobs_follow_containerds() {
        let defaults = Config::default().cni;
        assert_eq!(
            defaults.plugin_dirs(),
            [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(defaults.conf_dir, Path::new("/etc/cni/net.d"));
        assert_eq!(defaults.max_conf_num, 1);
        assert_eq!(defaults.plugin_timeout(), Duration::from_secs(60));
        let config = Config::parse(
            "[cni]\nbin_dir = \"/srv/cni\"\nmax_conf_num = 0\nip_pref = \"ipv6\"\nconf_template = '{\"subnet\": \"{{ .PodCIDR }}\", \"x\": \"{{.PodCIDR}}\"}'\nplugin_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(config.cni.plugin_dirs(), [PathBuf::from("/srv/cni")]);
        assert_eq!(config.cni.max_conf_num, 0);
        assert_eq!(config.cni.plugin_timeout(), Duration::from_secs(5));
        assert_eq!(unsupported_template_action("no actions"), None);
        assert_eq!(
            unsupported_template_action("{{.PodCIDR}} {{.Routes}}").as_deref(),
            Some("{{.Routes}}")
        );
        assert_eq!(
            unsupported_template_action("{{.PodCIDR").as_deref(),
            Some("{{.PodCIDR")
        );
    }

    #[test]
    fn limits_take_their_boundaries() {
        for size in [-1, 4096, 1 << 20] {
            let config = Config::parse(&format!("max_container_log_line_size = {size}")).unwrap();
            assert_eq!(config.max_container_log_line_size, size);
        }
        let rooted = Config::parse(
            "default_runtime = \"x\"\n[runtimes.x]\nbinary_name = \"runc\"\nroot = \"/run/x\"\n",
        )
        .unwrap();
        assert_eq!(
            rooted.runtimes["x"].root.as_deref(),
            Some(Path::new("/run/x"))
        );
    }

    #[test]
    fn a_config_file_is_read_or_its_absence_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crustd.toml");
        std::fs::write(&path, "cgroup_root = \"/pods\"\n").unwrap();
        assert_eq!(Config::load(&path, true).unwrap().cgroup_root, "/pods");
        // A file at the default place that is not there: the defaults.
        let missing = dir.path().join("none.toml");
        assert_eq!(Config::load(&missing, false).unwrap(), Config::default());
        // One named on the command line that is not there: an error naming it.
        let error = Config::load(&missing, true).unwrap_err();
        assert!(
            matches!(&error, ManagerError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{error:?}"
        );
        assert!(error.to_string().contains("none.toml"), "{error}");
        // A directory is not NotFound: an error even at the default place.
        assert!(Config::load(dir.path(), false).is_err_and(|e| e.to_string().contains("read")));
        // A bad value names the file and the knob.
        std::fs::write(&path, "max_concurrent_downloads = 0\n").unwrap();
        let error = Config::load(&path, false).unwrap_err().to_string();
        assert!(
            error.contains("crustd.toml") && error.contains("max_concurrent_downloads"),
            "{error}"
        );
    }

    #[test]
    fn durations_parse_like_containerds() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["5", "m5", "5x"] {
            assert_eq!(
                parse_duration(bad),
                Err(format!("{bad:?} is not a duration like 30s or 5m"))
            );
        }
        assert_eq!(parse_duration(""), Err("empty duration".to_string()));
    }

    #[test]
    fn endpoints_and_hosts() {
        assert_eq!(
            split_endpoint("https://m.example/"),
            Some((false, "m.example"))
        );
        assert_eq!(
            split_endpoint("http://127.0.0.1:5000"),
            Some((true, "127.0.0.1:5000"))
        );
        assert_eq!(split_endpoint("m.example"), None);
        assert_eq!(split_endpoint("https://bad host"), None);
        for good in [
            "localhost",
            "localhost:5000",
            "10.0.0.1:443",
            "[::1]",
            "[::1]:5000",
        ] {
            assert!(is_host(good), "{good}");
        }
        for bad in [
            "",
            "host:port",
            "host:99999",
            "a:b:c",
            "::1",
            "[::1]:99999",
            "[::1]x",
            "[zz]:1",
            "[::1",
            "bad_host",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }
}
