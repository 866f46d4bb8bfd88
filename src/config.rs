//! The plexus network configuration (Multus-compatible keys) and the delegate networks it names.
//!
//! A *network* is what a runtime would load from one file: a single plugin config or a conflist.
//! Delegates keep every key they were given; plexus only adds what the spec says a runtime adds.

use crate::cni::error::{invalid_config, io_error, CniError, Code};
use crate::cni::exec::validate_plugin_type;
use crate::cni::request::validate_network_name;
use crate::cni::Version;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/multus/net.d";
pub const DEFAULT_CNI_DIR: &str = "/var/lib/cni/multus";
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Largest delegate network file read from disk.
pub const MAX_NETWORK_FILE: u64 = 1 << 20;
/// Plugin types that are plexus itself (or Multus). Never a delegate: run as one, its `binDir`,
/// `kubeconfig` and `delegates` would come from whoever wrote that config.
pub const SELF_TYPES: [&str; 3] = ["plexus", "multus", "multus-shim"];

/// The parsed plexus config. Unknown keys are ignored, as Multus does.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub cluster_network: Option<String>,
    pub default_networks: Vec<String>,
    pub delegates: Vec<Value>,
    pub conf_dir: PathBuf,
    pub cni_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
    pub log_to_stderr: bool,
    pub readiness_indicator_file: Option<PathBuf>,
    pub readiness_timeout: Duration,
    pub delegate_timeout: Duration,
    /// The whole ADD's budget (readiness wait, API, every delegate, rollback): past it the ADD
    /// is rolled back and fails with 11, before the kubelet's runtime request timeout (2 min).
    pub add_timeout: Duration,
    /// Capability args the runtime sent (`runtimeConfig`); they reach the cluster network only.
    pub runtime_config: Map<String, Value>,
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments` (or the older `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<(String, String)>>,
    pub kubeconfig: Option<PathBuf>,
    pub api_connect_timeout: Duration,
    pub api_timeout: Duration,
    pub namespace_isolation: bool,
    /// Namespaces any pod may take networks from when isolation is on (default `["default"]`).
    pub global_namespaces: Vec<String>,
    /// Pods here do not get `defaultNetworks`.
    pub system_namespaces: Vec<String>,
    /// Where `clusterNetwork`/`defaultNetworks` NADs live, and the default namespace of the
    /// `v1.multus-cni.io/default-network` annotation.
    pub multus_namespace: String,
    /// The kubelet's device-plugin checkpoint file (device IDs of `resourceName` NADs), read when
    /// the PodResources socket is absent.
    pub device_checkpoint_file: PathBuf,
    /// The kubelet's PodResources gRPC socket.
    pub pod_resources_socket: PathBuf,
    /// NPWG device-info directory (`dp/` written by device plugins, `cni/` by CNIs).
    pub device_info_dir: PathBuf,
    /// Plugin types a NAD may use; `None`: any (but plexus itself).
    pub allowed_plugin_types: Option<Vec<String>>,
    /// The environment delegates get besides the CNI variables (from `delegateEnv`).
    pub delegate_env: Vec<(String, String)>,
    /// The config as given (recorded with an ADD, so hot-plug plans with the same config).
    pub raw: String,
}

/// The keys as they are written, checked by serde (a wrong type names its key).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    cni_version: Option<String>,
    name: Option<String>,
    cluster_network: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    default_networks: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    delegates: Vec<Value>,
    conf_dir: Option<String>,
    cni_dir: Option<String>,
    bin_dir: Option<String>,
    log_level: Option<String>,
    log_file: Option<String>,
    log_to_stderr: Option<bool>,
    #[serde(rename = "readinessindicatorfile")]
    readiness_indicator_file: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    readiness_timeout_seconds: Option<Duration>,
    #[serde(default, deserialize_with = "seconds")]
    delegate_timeout_seconds: Option<Duration>,
    #[serde(default, deserialize_with = "seconds")]
    add_timeout_seconds: Option<Duration>,
    #[serde(default, deserialize_with = "null_default")]
    runtime_config: Map<String, Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<GcAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<GcAttachment>>,
    kubeconfig: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    api_connect_timeout_seconds: Option<Duration>,
    #[serde(default, deserialize_with = "seconds")]
    api_timeout_seconds: Option<Duration>,
    namespace_isolation: Option<bool>,
    global_namespaces: Option<String>,
    system_namespaces: Option<Vec<String>>,
    multus_namespace: Option<String>,
    device_checkpoint_file: Option<String>,
    pod_resources_socket: Option<String>,
    device_info_dir: Option<String>,
    allowed_plugin_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "null_default")]
    delegate_env: Vec<String>,
}

#[derive(Deserialize)]
struct GcAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A number of seconds from 0 to 3600.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(v) = Option::<f64>::deserialize(d)? else {
        return Ok(None);
    };
    if !(0.0..=3600.0).contains(&v) {
        return Err(serde::de::Error::custom(
            "must be a number of seconds from 0 to 3600",
        ));
    }
    Ok(Some(Duration::from_secs_f64(v)))
}

/// Deserialize `T` from JSON bytes: a syntax error is code 6; a key of the wrong type is code 7,
/// named by its path.
pub fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, CniError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            invalid_config(format!("{what}: \"{path}\": {inner}"))
        } else {
            CniError::new(Code::DECODE, format!("cannot parse {what}: {inner}"))
        }
    })?;
    // Only whitespace may follow the value, as libcni and Go's json.Unmarshal require.
    de.end()
        .map_err(|e| CniError::new(Code::DECODE, format!("cannot parse {what}: {e}")))?;
    Ok(value)
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(CniError::new(
                Code::DECODE,
                "network config is not a JSON object",
            ));
        }
        let raw: RawNetConf = from_json(bytes, "network config")?;
        let cni_version = Version::of_config(raw.cni_version.as_deref())?.require_supported()?;
        let name = raw.name.unwrap_or_default();
        if !name.is_empty() {
            validate_network_name(&name)?;
        }
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let path = |s: Option<String>, default: &str| {
            PathBuf::from(nonempty(s).unwrap_or_else(|| default.to_string()))
        };
        let delegate_env = raw
            .delegate_env
            .iter()
            .map(|entry| parse_env_entry(entry))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(types) = &raw.allowed_plugin_types {
            for t in types {
                validate_plugin_type(t).map_err(|e| e.context("\"allowedPluginTypes\""))?;
            }
        }
        Ok(NetConf {
            cni_version,
            name,
            cluster_network: nonempty(raw.cluster_network),
            default_networks: raw.default_networks,
            delegates: raw.delegates,
            conf_dir: path(raw.conf_dir, DEFAULT_CONF_DIR),
            cni_dir: path(raw.cni_dir, DEFAULT_CNI_DIR),
            bin_dir: path(raw.bin_dir, DEFAULT_BIN_DIR),
            log_level: raw.log_level,
            log_file: nonempty(raw.log_file).map(PathBuf::from),
            log_to_stderr: raw.log_to_stderr.unwrap_or(true),
            readiness_indicator_file: nonempty(raw.readiness_indicator_file).map(PathBuf::from),
            readiness_timeout: raw
                .readiness_timeout_seconds
                .unwrap_or(Duration::from_secs(45)),
            delegate_timeout: raw
                .delegate_timeout_seconds
                .unwrap_or(Duration::from_secs(60)),
            add_timeout: raw.add_timeout_seconds.unwrap_or(Duration::from_secs(100)),
            runtime_config: raw.runtime_config,
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
            valid_attachments: raw.valid_attachments.or(raw.attachments).map(|list| {
                list.into_iter()
                    .map(|a| (a.container_id, a.ifname))
                    .collect()
            }),
            kubeconfig: nonempty(raw.kubeconfig).map(PathBuf::from),
            api_connect_timeout: raw
                .api_connect_timeout_seconds
                .unwrap_or(Duration::from_secs(5)),
            api_timeout: raw.api_timeout_seconds.unwrap_or(Duration::from_secs(10)),
            namespace_isolation: raw.namespace_isolation.unwrap_or(false),
            global_namespaces: match raw.global_namespaces {
                Some(s) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                None => vec!["default".to_string()],
            },
            system_namespaces: raw
                .system_namespaces
                .unwrap_or_else(|| vec!["kube-system".to_string()]),
            multus_namespace: nonempty(raw.multus_namespace)
                .unwrap_or_else(|| "kube-system".to_string()),
            device_checkpoint_file: path(
                raw.device_checkpoint_file,
                crate::k8s::devices::DEFAULT_CHECKPOINT,
            ),
            pod_resources_socket: path(
                raw.pod_resources_socket,
                crate::k8s::devices::DEFAULT_POD_RESOURCES_SOCKET,
            ),
            device_info_dir: path(
                raw.device_info_dir,
                crate::k8s::devices::DEFAULT_DEVICE_INFO_DIR,
            ),
            allowed_plugin_types: raw.allowed_plugin_types,
            delegate_env,
            raw: String::from_utf8_lossy(bytes).into_owned(),
        })
    }

    /// The cache key's network: the config's `name` (libcni always injects it).
    pub fn cache_network(&self) -> &str {
        if self.name.is_empty() {
            "plexus"
        } else {
            &self.name
        }
    }

    /// Check there is something to attach; needed by ADD/CHECK, not by DEL.
    pub fn require_networks(&self) -> Result<(), CniError> {
        if self.cluster_network.is_none() && self.delegates.is_empty() {
            return Err(invalid_config(
                "at least one of \"delegates\" or \"clusterNetwork\" must be set",
            ));
        }
        Ok(())
    }

    /// The networks the config itself names, in attachment order: `clusterNetwork` then
    /// `defaultNetworks` as files (NADs of those names are the planner's business), or else the
    /// `delegates` list.
    pub fn static_networks(&self, files: &dyn NetworkFiles) -> Result<Vec<Network>, CniError> {
        self.require_networks()?;
        if let Some(cluster) = &self.cluster_network {
            let mut out = vec![resolve_reference(cluster, files)?];
            for n in &self.default_networks {
                out.push(
                    resolve_reference(n, files)
                        .map_err(|e| e.context(format!("defaultNetworks \"{n}\"")))?,
                );
            }
            return Ok(out);
        }
        self.delegates
            .iter()
            .enumerate()
            .map(|(i, d)| Network::from_value(d.clone(), &format!("delegates[{i}]")))
            .collect()
    }
}

/// A `delegateEnv` entry: `NAME` (passed on from plexus's own environment, if set there) or
/// `NAME=value`.
fn parse_env_entry(entry: &str) -> Result<(String, String), CniError> {
    let (name, value) = match entry.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (entry, None),
    };
    let ok = !name.is_empty()
        && !name.starts_with("CNI_")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(invalid_config(format!(
            "\"delegateEnv\": \"{}\" is not NAME or NAME=value (CNI_* variables are plexus's to set)",
            entry.escape_debug()
        )));
    }
    let value = match value {
        Some(v) => v,
        None => std::env::var(name).unwrap_or_default(),
    };
    Ok((name.to_string(), value))
}

/// Where networks named in the config are read from (`confDir`, or a path the config names),
/// so the planner itself does no I/O; the daemon may give it a source of its own.
pub trait NetworkFiles: Send + Sync {
    /// A reference with a `/`: a config file, or a directory's first usable config.
    fn at_path(&self, path: &str) -> Result<Network, CniError>;
    /// The network named `name` in `confDir`.
    fn by_name(&self, name: &str) -> Result<Option<Network>, CniError>;
    /// Where names are looked up, for messages.
    fn describe(&self) -> String;
}

/// [`NetworkFiles`] read from disk at each call.
#[derive(Debug, Clone)]
pub struct ConfDir(pub PathBuf);

impl NetworkFiles for ConfDir {
    fn at_path(&self, reference: &str) -> Result<Network, CniError> {
        let p = Path::new(reference);
        if p.is_dir() {
            return first_in_dir(p)?.ok_or_else(|| {
                invalid_config(format!(
                    "no network config (.conf, .conflist, .json) in directory {reference}"
                ))
            });
        }
        load_file(p)
    }

    fn by_name(&self, name: &str) -> Result<Option<Network>, CniError> {
        find_by_name(&self.0, name)
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// A delegate network: one plugin config, or a conflist, as it would be in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub cni_version: Version,
    /// Each plugin's config as given (for a single config: the config itself).
    pub plugins: Vec<Map<String, Value>>,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// The exact bytes this network was loaded from (kept in the cache for DEL).
    pub bytes: String,
    /// Where it came from, for messages: a file path or `delegates[N]`.
    pub source: String,
}

/// What plexus reads of a network; every other key is the delegate's.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetwork {
    #[serde(default)]
    name: Option<String>,
    cni_version: Option<String>,
    /// Only the entries that are strings are considered (libcni ≥ 1.2).
    #[serde(default)]
    cni_versions: Option<Vec<Value>>,
    plugins: Option<Vec<RawPlugin>>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    #[serde(default)]
    disable_check: Option<bool>,
    #[serde(rename = "disableGC", default)]
    disable_gc: Option<bool>,
}

#[derive(Deserialize)]
struct RawPlugin {
    #[serde(rename = "type")]
    plugin_type: Option<String>,
}

impl Network {
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Network, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                Code::DECODE,
                format!("{source}: cannot parse network config: {e}"),
            )
        })?;
        let mut n = Network::from_value(value, source)?;
        n.bytes = String::from_utf8_lossy(bytes).into_owned();
        Ok(n)
    }

    /// Read a network; refuse bad plugin types and plexus (or Multus) as a delegate.
    pub fn from_value(value: Value, source: &str) -> Result<Network, CniError> {
        let ctx = |e: CniError| e.context(source);
        let Value::Object(obj) = &value else {
            return Err(ctx(invalid_config("network config is not a JSON object")));
        };
        let raw: RawNetwork = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            ctx(invalid_config(format!("\"{path}\": {}", e.into_inner())))
        })?;
        let name = raw.name.unwrap_or_default();
        validate_network_name(&name).map_err(ctx)?;
        let cni_version =
            pick_version(raw.cni_versions.as_deref(), raw.cni_version.as_deref()).map_err(ctx)?;
        let is_list = raw.plugins.is_some();
        let plugins: Vec<Map<String, Value>> = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    // serde reads a struct from a JSON array too: check the shape here.
                    p.as_object().cloned().ok_or_else(|| {
                        ctx(invalid_config(format!(
                            "network \"{name}\": plugins[{i}] is not a JSON object"
                        )))
                    })
                })
                .collect::<Result<_, _>>()?,
            _ => vec![obj.clone()],
        };
        if plugins.is_empty() {
            return Err(ctx(invalid_config(format!(
                "network \"{name}\" has no plugins"
            ))));
        }
        let types: Vec<String> = match raw.plugins {
            Some(list) => list
                .into_iter()
                .map(|p| p.plugin_type.unwrap_or_default())
                .collect(),
            None => vec![raw.plugin_type.unwrap_or_default()],
        };
        for t in &types {
            validate_plugin_type(t).map_err(|e| ctx(e.context(format!("network \"{name}\""))))?;
            if SELF_TYPES.contains(&t.as_str()) {
                return Err(ctx(invalid_config(format!(
                    "network \"{name}\": plugin type \"{t}\" is plexus (or Multus) itself, which may not be a delegate: its binDir, kubeconfig and delegates would come from whoever wrote this config"
                ))));
            }
        }
        Ok(Network {
            name,
            cni_version,
            plugins,
            disable_check: is_list && raw.disable_check.unwrap_or(false),
            disable_gc: is_list && raw.disable_gc.unwrap_or(false),
            bytes: serde_json::to_string(&value).expect("serializes"),
            source: source.to_string(),
        })
    }

    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins[i]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The types of its plugins joined with `+`, for messages: `bridge+portmap`.
    pub fn types(&self) -> String {
        (0..self.plugins.len())
            .map(|i| self.plugin_type(i))
            .collect::<Vec<_>>()
            .join("+")
    }

    /// Refuse a plugin type the admin's `allowedPluginTypes` does not list.
    pub fn require_allowed(&self, allowed: Option<&[String]>) -> Result<(), CniError> {
        let Some(allowed) = allowed else {
            return Ok(());
        };
        for i in 0..self.plugins.len() {
            let t = self.plugin_type(i);
            if !allowed.iter().any(|a| a == t) {
                return Err(invalid_config(format!(
                    "{}: plugin type \"{t}\" is not in allowedPluginTypes {allowed:?}",
                    self.source
                )));
            }
        }
        Ok(())
    }
}

/// Whether a config in a directory is plexus's (or Multus's) own: skipped when scanning.
fn names_self(value: &Value) -> bool {
    let is_self = |p: &Value| {
        p.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| SELF_TYPES.contains(&t))
    };
    match value.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().any(is_self),
        None => is_self(value),
    }
}

/// The version a network is run at: the highest of `cniVersions` plexus speaks (libcni ≥ 1.2),
/// ignoring versions newer than we know, or else its `cniVersion`.
fn pick_version(versions: Option<&[Value]>, version: Option<&str>) -> Result<Version, CniError> {
    if let Some(list) = versions {
        let best = list
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| s.parse::<Version>().ok())
            .filter(|v| v.is_supported())
            .max();
        if let Some(v) = best {
            return Ok(v);
        }
    }
    Version::of_config(version)?.require_supported()
}

/// A `clusterNetwork`/`defaultNetworks` value: with a `/` it is a file or a directory; without,
/// the name of a network in `confDir`.
pub fn resolve_reference(reference: &str, files: &dyn NetworkFiles) -> Result<Network, CniError> {
    if reference.contains('/') {
        return files.at_path(reference);
    }
    files.by_name(reference)?.ok_or_else(|| {
        invalid_config(format!(
            "cannot find network \"{reference}\" in {}",
            files.describe()
        ))
    })
}

/// Read a network config file (at most [`MAX_NETWORK_FILE`] bytes).
pub fn load_file(path: &Path) -> Result<Network, CniError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| io_error(format!("reading network config {}", path.display()), e))?;
    let mut bytes = Vec::new();
    file.take(MAX_NETWORK_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(format!("reading network config {}", path.display()), e))?;
    if bytes.len() as u64 > MAX_NETWORK_FILE {
        return Err(invalid_config(format!(
            "network config {} is larger than {MAX_NETWORK_FILE} bytes",
            path.display()
        )));
    }
    Network::from_bytes(&bytes, &path.display().to_string())
}

/// Config files in a directory, in the order a runtime reads them.
fn config_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The usable networks of a directory in order, skipping plexus's (and Multus's) own configs
/// and logging the files that do not parse.
fn dir_networks(dir: &Path) -> impl Iterator<Item = Network> {
    config_files(dir).into_iter().filter_map(|f| {
        let raw = std::fs::read(&f)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if raw.as_ref().is_some_and(names_self) {
            return None;
        }
        match load_file(&f) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("skipping {}: {e}", f.display());
                None
            }
        }
    })
}

/// The first usable network in a directory, skipping plexus's (and Multus's) own configs.
fn first_in_dir(dir: &Path) -> Result<Option<Network>, CniError> {
    Ok(dir_networks(dir).next())
}

/// The network named `name` in a directory (first file in order whose `name` matches).
pub fn find_by_name(dir: &Path, name: &str) -> Result<Option<Network>, CniError> {
    Ok(dir_networks(dir).find(|n| n.name == name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_multus_defaults() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus","delegates":[]}"#,
        )
        .unwrap();
        assert_eq!(c.conf_dir, PathBuf::from(DEFAULT_CONF_DIR));
        assert_eq!(c.cni_dir, PathBuf::from(DEFAULT_CNI_DIR));
        assert_eq!(c.bin_dir, PathBuf::from(DEFAULT_BIN_DIR));
        assert!(c.log_to_stderr);
        assert!(c.require_networks().is_err());
    }

    // Fuzz finding F1 (docs/fuzzing.md): a non-object in `plugins` panicked the parser.
    #[test]
    fn plugins_that_are_not_objects_are_refused() {
        for bad in [
            json!({"name": "a", "plugins": [[null]]}),
            json!({"cniVersion": "1.0.0", "name": "a", "plugins": [["bridge"]]}),
            json!({"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}, [null]]}),
            json!({"cniVersion": "1.0.0", "name": "a", "plugins": [7]}),
        ] {
            let e = Network::from_value(bad.clone(), "t").unwrap_err();
            assert_eq!(e.code, Code::INVALID_CONFIG, "{bad}");
        }
        assert!(Network::from_bytes(br#"{"name":"a","plugins":[[null]]}"#, "t").is_err());
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","delegates":[{"name":"a","plugins":[[null]]}]}"#,
        )
        .unwrap();
        assert!(c.static_networks(&ConfDir(PathBuf::from("/none"))).is_err());
    }

    // Fuzz finding F2: bytes after the config object were ignored; libcni refuses them.
    #[test]
    fn nothing_may_follow_the_config() {
        for bad in [
            &b"{}}"[..],
            b"{} {}",
            b"{\"cniVersion\":\"1.0.0\"}x",
            b"{}\0",
        ] {
            let e = NetConf::parse(bad).unwrap_err();
            assert_eq!(e.code, Code::DECODE, "{:?}", String::from_utf8_lossy(bad));
        }
        NetConf::parse(b"{}\n\t ").unwrap();
    }

    #[test]
    fn bad_configs_are_refused_with_codes() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, Code::DECODE);
        assert_eq!(NetConf::parse(b"[]").unwrap_err().code, Code::DECODE);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.9.0"}"#)
                .unwrap_err()
                .code,
            Code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","delegates":{}}"#)
                .unwrap_err()
                .code,
            Code::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"../x"}"#)
                .unwrap_err()
                .code,
            Code::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","delegateTimeoutSeconds":-1}"#)
                .unwrap_err()
                .code,
            Code::INVALID_CONFIG
        );
    }

    #[test]
    fn wrong_types_name_their_key() {
        for (conf, key) in [
            (json!({"cniVersion":"1.0.0","logLevel":1}), "logLevel"),
            (
                json!({"cniVersion":"1.0.0","namespaceIsolation":"yes"}),
                "namespaceIsolation",
            ),
            (
                json!({"cniVersion":"1.0.0","defaultNetworks":[1]}),
                "defaultNetworks[0]",
            ),
            (
                json!({"cniVersion":"1.0.0","delegateTimeoutSeconds":7200}),
                "delegateTimeoutSeconds",
            ),
            (
                json!({"cniVersion":"1.0.0","cni.dev/valid-attachments":[{"ifname":"x"}]}),
                "cni.dev/valid-attachments[0]",
            ),
        ] {
            let e = NetConf::parse(conf.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.code, Code::INVALID_CONFIG, "{conf}");
            assert!(e.msg.contains(&format!("\"{key}\"")), "{conf}: {}", e.msg);
        }
        // Unknown keys are ignored, as Multus does.
        NetConf::parse(br#"{"cniVersion":"1.0.0","somethingNew":{"a":1}}"#).unwrap();
    }

    #[test]
    fn delegate_env_is_explicit() {
        // SAFETY: no other test reads this variable.
        unsafe { std::env::set_var("PLEXUS_TEST_PASS", "through") };
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","delegateEnv":["PLEXUS_TEST_PASS","HTTP_PROXY=http://p:3128","UNSET_VAR_X"]}"#,
        )
        .unwrap();
        assert_eq!(
            c.delegate_env,
            [
                ("PLEXUS_TEST_PASS".to_string(), "through".to_string()),
                ("HTTP_PROXY".to_string(), "http://p:3128".to_string()),
                ("UNSET_VAR_X".to_string(), String::new())
            ]
        );
        for bad in ["CNI_NETNS=/x", "A B", "=x", ""] {
            let conf = json!({"cniVersion":"1.0.0","delegateEnv":[bad]});
            assert_eq!(
                NetConf::parse(conf.to_string().as_bytes())
                    .unwrap_err()
                    .code,
                Code::INVALID_CONFIG,
                "{bad}"
            );
        }
    }

    #[test]
    fn plexus_is_never_a_delegate_at_any_position() {
        for bad in [
            json!({"cniVersion":"1.0.0","name":"x","type":"plexus","binDir":"/tmp/evil"}),
            json!({"cniVersion":"1.0.0","name":"x","type":"multus"}),
            json!({"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"},{"type":"multus-shim"}]}),
        ] {
            let e =
                Network::from_value(bad.clone(), "NetworkAttachmentDefinition ns/x").unwrap_err();
            assert_eq!(e.code, Code::INVALID_CONFIG, "{bad}");
            assert!(
                e.msg.contains("itself") && e.msg.contains("ns/x"),
                "{}",
                e.msg
            );
        }
        // As an inline delegate of the config: refused before anything runs.
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","delegates":[{"cniVersion":"1.0.0","name":"in","type":"plexus"}]}"#,
        )
        .unwrap();
        assert!(c.static_networks(&ConfDir(PathBuf::from("/none"))).is_err());
    }

    #[test]
    fn allowed_plugin_types() {
        let n = Network::from_value(
            json!({"cniVersion":"1.0.0","name":"x","plugins":[{"type":"macvlan"},{"type":"host-device"}]}),
            "NetworkAttachmentDefinition ns/x",
        )
        .unwrap();
        n.require_allowed(None).unwrap();
        let allowed = vec!["macvlan".to_string(), "host-device".to_string()];
        n.require_allowed(Some(&allowed)).unwrap();
        let e = n.require_allowed(Some(&allowed[..1])).unwrap_err();
        assert!(
            e.msg.contains("host-device") && e.msg.contains("ns/x"),
            "{}",
            e.msg
        );
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","allowedPluginTypes":["../sh"]}"#)
            .unwrap_err();
        assert_eq!(e.code, Code::INVALID_CONFIG);
    }

    #[test]
    fn valid_attachments_either_key() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let c = NetConf::parse(
                json!({"cniVersion":"1.1.0", key: [{"containerID":"a","ifname":"eth0"}]})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
            assert_eq!(c.valid_attachments, Some(vec![("a".into(), "eth0".into())]));
        }
    }

    #[test]
    fn networks_single_and_list() {
        let n = Network::from_value(
            json!({"cniVersion":"0.3.1","name":"a","type":"bridge","x":1}),
            "t",
        )
        .unwrap();
        assert_eq!((n.plugins.len(), n.cni_version), (1, Version(0, 3, 1)));
        assert_eq!(n.plugins[0]["x"], 1);
        let l = Network::from_value(
            json!({"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0","2.0.0"],"name":"b","disableCheck":true,
                   "plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}),
            "t",
        )
        .unwrap();
        assert_eq!(l.cni_version, Version::V1_1_0);
        assert_eq!(l.types(), "bridge+portmap");
        assert!(l.disable_check);
        for bad in [
            json!({"cniVersion":"1.0.0","name":"c","type":"/bin/sh"}),
            json!({"cniVersion":"1.0.0","name":"c","type":"../x"}),
            json!({"cniVersion":"1.0.0","name":"c"}),
            json!({"cniVersion":"1.0.0","name":"c","plugins":[]}),
            json!({"cniVersion":"1.0.0","type":"bridge"}),
            json!({"cniVersion":"7.0.0","name":"c","type":"bridge"}),
        ] {
            assert!(Network::from_value(bad.clone(), "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn references_by_path_dir_and_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("00-plexus.conf"),
            r#"{"cniVersion":"1.0.0","name":"p","type":"plexus"}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-b.conf"),
            r#"{"cniVersion":"1.0.0","name":"b","type":"macvlan"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("README"), "x").unwrap();
        let dir = d.path().display().to_string();
        let none = ConfDir(PathBuf::from("/none"));
        let here = ConfDir(d.path().to_path_buf());
        assert_eq!(resolve_reference(&dir, &none).unwrap().name, "a");
        assert_eq!(
            resolve_reference(&format!("{dir}/20-b.conf"), &none)
                .unwrap()
                .name,
            "b"
        );
        assert_eq!(resolve_reference("b", &here).unwrap().name, "b");
        assert_eq!(
            resolve_reference("p", &here).unwrap_err().code,
            Code::INVALID_CONFIG
        );
        // Named by path, plexus's own config is refused, not run.
        let e = resolve_reference(&format!("{dir}/00-plexus.conf"), &none).unwrap_err();
        assert!(e.msg.contains("plexus (or Multus) itself"), "{}", e.msg);
        assert!(resolve_reference("zzz", &here)
            .unwrap_err()
            .msg
            .contains("zzz"));
    }
}
