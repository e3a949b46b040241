//! Network configurations as libcni reads them: `*.conf`, `*.conflist` and `*.json` files of a
//! directory in lexical order, a single-plugin `.conf` made into a list of one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The CNI specification versions crustd speaks (0.3.0 is the oldest with today's result
/// format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.3.0.
    V030,
    /// 0.3.1.
    V031,
    /// 0.4.0: CHECK, and prevResult on DEL.
    V040,
    /// 1.0.0.
    V100,
    /// 1.1.0: STATUS and GC.
    V110,
}

impl CniVersion {
    /// Parses a `cniVersion` value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "0.3.0" => CniVersion::V030,
            "0.3.1" => CniVersion::V031,
            "0.4.0" => CniVersion::V040,
            "1.0.0" => CniVersion::V100,
            "1.1.0" => CniVersion::V110,
            _ => return None,
        })
    }

    /// Its `cniVersion` text.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V030 => "0.3.0",
            CniVersion::V031 => "0.3.1",
            CniVersion::V040 => "0.4.0",
            CniVersion::V100 => "1.0.0",
            CniVersion::V110 => "1.1.0",
        }
    }

    /// Whether CHECK exists, and DEL gets the cached result as `prevResult`.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V040
    }

    /// Whether STATUS and GC exist.
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V110
    }
}

/// One plugin of a list: its binary's name and its own configuration object.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// The `type`: the binary's file name.
    pub kind: String,
    /// The capability args it asks for (`capabilities` entries that are true).
    pub capabilities: BTreeSet<String>,
    /// Its configuration object as written.
    pub raw: Map<String, Value>,
}

/// A network: plugins run in order for ADD, in reverse for DEL.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// Its name (part of the cache key, so a plain file-name-safe word).
    pub name: String,
    /// The spec version its plugins speak.
    pub version: CniVersion,
    /// Its plugins.
    pub plugins: Vec<PluginConf>,
    /// `disableCheck`: CHECK is skipped.
    pub disable_check: bool,
    /// `disableGC`: GC is skipped.
    pub disable_gc: bool,
    /// The list as JSON (what the cache keeps, so DEL runs what ADD ran).
    pub bytes: Vec<u8>,
    /// Where it was read from (for messages).
    pub source: PathBuf,
}

/// The network every pod gets first: its loopback interface brought up.
pub fn loopback() -> NetworkList {
    let text = r#"{"cniVersion":"0.3.1","name":"cni-loopback","plugins":[{"type":"loopback"}]}"#;
    // A constant that parses; tested.
    parse_list(text.as_bytes(), Path::new("(built in)")).unwrap_or_else(|_| NetworkList {
        name: "cni-loopback".into(),
        version: CniVersion::V031,
        plugins: Vec::new(),
        disable_check: false,
        disable_gc: false,
        bytes: text.as_bytes().to_vec(),
        source: PathBuf::from("(built in)"),
    })
}

/// Reads the network configurations of `dir`: the first `max` usable files (0: all) in
/// lexical order. An error names the file and what is wrong with it.
pub fn load_dir(dir: &Path, max: usize) -> Result<Vec<NetworkList>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "no network config: {} does not exist",
                dir.display()
            ));
        }
        Err(e) => return Err(format!("read {}: {e}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.is_file()
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    files.sort();
    let mut networks = Vec::new();
    for file in files {
        if max != 0 && networks.len() == max {
            break;
        }
        let bytes = std::fs::read(&file).map_err(|e| format!("read {}: {e}", file.display()))?;
        let list = if file.extension().is_some_and(|e| e == "conflist") {
            parse_list(&bytes, &file)
        } else {
            parse_single(&bytes, &file)
        };
        networks.push(list.map_err(|why| format!("{}: {why}", file.display()))?);
    }
    if networks.is_empty() {
        return Err(format!(
            "no network config found in {} (*.conf, *.conflist, *.json)",
            dir.display()
        ));
    }
    Ok(networks)
}

/// A `.conflist`: `{"cniVersion", "name", "plugins": [...]}`.
pub fn parse_list(bytes: &[u8], source: &Path) -> Result<NetworkList, String> {
    let object = parse_object(bytes)?;
    let name = network_name(&object)?;
    let version = version_of(&object)?;
    let plugins = match object.get("plugins") {
        Some(Value::Array(plugins)) if !plugins.is_empty() => plugins
            .iter()
            .map(|plugin| match plugin {
                Value::Object(plugin) => plugin_conf(plugin.clone()),
                _ => Err("a plugin is not a JSON object".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err("\"plugins\" is empty".into()),
        Some(_) => return Err("\"plugins\" is not a list".into()),
        None => return Err("no \"plugins\" list (a single plugin belongs in a .conf file)".into()),
    };
    let flag = |key: &str| object.get(key).and_then(Value::as_bool).unwrap_or(false);
    Ok(NetworkList {
        name,
        version,
        plugins,
        disable_check: flag("disableCheck"),
        disable_gc: flag("disableGC"),
        bytes: bytes.to_vec(),
        source: source.to_path_buf(),
    })
}

/// A `.conf` or `.json`: one plugin's config with `name` and `cniVersion`, made a list of one.
fn parse_single(bytes: &[u8], source: &Path) -> Result<NetworkList, String> {
    let object = parse_object(bytes)?;
    if object.contains_key("plugins") {
        return Err("has a \"plugins\" list: name it .conflist".into());
    }
    let name = network_name(&object)?;
    let version = version_of(&object)?;
    let mut list = Map::new();
    list.insert("cniVersion".into(), Value::String(version.as_str().into()));
    list.insert("name".into(), Value::String(name.clone()));
    list.insert(
        "plugins".into(),
        Value::Array(vec![Value::Object(object.clone())]),
    );
    let bytes = serde_json::to_vec(&Value::Object(list)).map_err(|e| e.to_string())?;
    Ok(NetworkList {
        name,
        version,
        plugins: vec![plugin_conf(object)?],
        disable_check: false,
        disable_gc: false,
        bytes,
        source: source.to_path_buf(),
    })
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

fn network_name(object: &Map<String, Value>) -> Result<String, String> {
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or("no network \"name\"")?;
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(format!(
            "network name {name:?} must be letters, digits, '_', '.' and '-', starting with a letter or digit"
        ));
    }
    Ok(name.to_string())
}

fn version_of(object: &Map<String, Value>) -> Result<CniVersion, String> {
    let text = object
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or("no \"cniVersion\"")?;
    CniVersion::parse(text).ok_or_else(|| {
        format!("cniVersion {text:?} is not supported (0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")
    })
}

fn plugin_conf(raw: Map<String, Value>) -> Result<PluginConf, String> {
    let kind = raw
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a plugin has no \"type\"")?
        .to_string();
    if kind.is_empty() || kind.contains('/') || kind == "." || kind == ".." {
        return Err(format!("plugin type {kind:?} is not a binary name"));
    }
    let capabilities = match raw.get("capabilities") {
        Some(Value::Object(caps)) => caps
            .iter()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .map(|(name, _)| name.clone())
            .collect(),
        _ => BTreeSet::new(),
    };
    Ok(PluginConf {
        kind,
        capabilities,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn files_load_in_lexical_order_up_to_the_maximum() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "20-b.conflist",
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
        );
        write(
            dir.path(),
            "10-a.conf",
            r#"{"cniVersion":"0.4.0","name":"a","type":"ptp"}"#,
        );
        write(
            dir.path(),
            "30-c.json",
            r#"{"cniVersion":"0.3.1","name":"c","type":"macvlan"}"#,
        );
        write(dir.path(), "05-ignored.txt", "not a config");
        let all = load_dir(dir.path(), 0).unwrap();
        let names: Vec<_> = all.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(all[0].version, CniVersion::V040);
        assert_eq!(all[0].plugins[0].kind, "ptp");
        // A single plugin becomes a list of one whose JSON carries name and version.
        let list: Value = serde_json::from_slice(&all[0].bytes).unwrap();
        assert_eq!(list["plugins"][0]["type"], "ptp");
        assert_eq!(list["name"], "a");
        assert_eq!(
            all[1].plugins[1].capabilities,
            BTreeSet::from(["portMappings".to_string()])
        );
        let first = load_dir(dir.path(), 1).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].name, "a");
    }

    #[test]
    fn what_is_wrong_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load_dir(&dir.path().join("none"), 1).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "").unwrap();
        let error = load_dir(&not_a_dir, 1).unwrap_err();
        assert!(
            error.starts_with("read ") && !error.contains("does not exist"),
            "{error}"
        );
        std::fs::remove_file(&not_a_dir).unwrap();
        let empty = load_dir(dir.path(), 1).unwrap_err();
        assert!(empty.contains("no network config found"), "{empty}");
        for (text, why) in [
            ("{", "invalid JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "no network \"name\"",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#,
                "0.2.0",
            ),
            (r#"{"name":"n","plugins":[{"type":"x"}]}"#, "cniVersion"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "is empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":{}}"#,
                "not a list",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "no \"plugins\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[1]}"#,
                "not a JSON object",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
                "no \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../bin/sh"}]}"#,
                "not a binary name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"../n","plugins":[{"type":"x"}]}"#,
                "network name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-n","plugins":[{"type":"x"}]}"#,
                "network name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"a/b","plugins":[{"type":"x"}]}"#,
                "network name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"."}]}"#,
                "not a binary name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":".."}]}"#,
                "not a binary name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":""}]}"#,
                "not a binary name",
            ),
        ] {
            let error = parse_list(text.as_bytes(), Path::new("f")).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
        let error = parse_single(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}]}"#,
            Path::new("f"),
        )
        .unwrap_err();
        assert!(error.contains(".conflist"), "{error}");
        write(dir.path(), "10-bad.conflist", "{ nope");
        let error = load_dir(dir.path(), 1).unwrap_err();
        assert!(
            error.contains("10-bad.conflist") && error.contains("invalid JSON"),
            "{error}"
        );
    }

    #[test]
    fn the_default_network_install_sh_writes_is_valid() {
        let text = include_bytes!("../../../packaging/10-crust-bridge.conflist");
        let list = parse_list(text, Path::new("10-crust-bridge.conflist")).unwrap();
        let kinds: Vec<_> = list.plugins.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, ["bridge", "portmap"]);
        assert!(list.plugins[1].capabilities.contains("portMappings"));
    }

    #[test]
    fn versions_order_and_know_their_operations() {
        for text in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert_eq!(CniVersion::parse(text).unwrap().as_str(), text);
        }
        assert!(!CniVersion::V031.has_check());
        assert!(CniVersion::V040.has_check());
        assert!(!CniVersion::V100.has_status_and_gc());
        assert!(CniVersion::V110.has_status_and_gc());
        let lo = loopback();
        assert_eq!(lo.name, "cni-loopback");
        assert_eq!(lo.plugins[0].kind, "loopback");
        let flags = parse_list(
            br#"{"cniVersion":"1.1.0","name":"n","disableCheck":true,"disableGC":true,"plugins":[{"type":"x"}]}"#,
            Path::new("f"),
        )
        .unwrap();
        assert!(flags.disable_check && flags.disable_gc);
    }
}
