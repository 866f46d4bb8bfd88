//! The plexus network configuration (Multus-compatible keys) and the delegate networks it names.
//!
//! A *network* is what a runtime would load from one file: a single plugin config or a conflist.
//! Delegates keep every key they were given; plexus only adds what the spec says a runtime adds.

use crate::cni::error::{invalid_config, io_error, CniError, Code};
use crate::cni::exec::validate_plugin_type;
use crate::cni::request::validate_network_name;
use crate::cni::Version;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONF_DIR: &str = "/etc/cni/multus/net.d";
pub const DEFAULT_CNI_DIR: &str = "/var/lib/cni/multus";
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Largest delegate network file read from disk.
pub const MAX_NETWORK_FILE: u64 = 1 << 20;
/// Plugin types that are plexus itself (or Multus): never picked as a delegate from a directory.
const SELF_TYPES: [&str; 3] = ["plexus", "multus", "multus-shim"];

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
}

fn get_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid_config(format!("\"{key}\" must be a string"))),
    }
}

fn get_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid_config(format!("\"{key}\" must be a boolean"))),
    }
}

fn get_secs(obj: &Map<String, Value>, key: &str, default: f64) -> Result<Duration, CniError> {
    let v = match obj.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(-1.0),
        Some(_) => -1.0,
    };
    if !(0.0..=3600.0).contains(&v) {
        return Err(invalid_config(format!(
            "\"{key}\" must be a number of seconds from 0 to 3600"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(Code::DECODE, format!("cannot parse network config: {e}"))
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                Code::DECODE,
                "network config is not a JSON object",
            ));
        };
        let cni_version =
            Version::of_config(get_str(&obj, "cniVersion")?.as_deref())?.require_supported()?;
        let name = get_str(&obj, "name")?.unwrap_or_default();
        if !name.is_empty() {
            validate_network_name(&name)?;
        }
        let default_networks = match obj.get("defaultNetworks") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        invalid_config("\"defaultNetworks\" must be a list of strings")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(invalid_config(
                    "\"defaultNetworks\" must be a list of strings",
                ))
            }
        };
        let delegates = match obj.get("delegates") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a.clone(),
            Some(_) => {
                return Err(invalid_config(
                    "\"delegates\" must be a list of network configs",
                ))
            }
        };
        let runtime_config = match obj.get("runtimeConfig") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(invalid_config("\"runtimeConfig\" must be an object")),
        };
        let valid_attachments = match obj
            .get("cni.dev/valid-attachments")
            .or_else(|| obj.get("cni.dev/attachments"))
        {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| {
                        let id = v.get("containerID").and_then(Value::as_str);
                        let ifname = v.get("ifname").and_then(Value::as_str);
                        match (id, ifname) {
                            (Some(i), Some(f)) => Ok((i.to_string(), f.to_string())),
                            _ => Err(invalid_config(
                                "each valid attachment needs \"containerID\" and \"ifname\"",
                            )),
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => {
                return Err(invalid_config(
                    "\"cni.dev/valid-attachments\" must be a list",
                ))
            }
        };
        let path = |key: &str, default: &str| -> Result<PathBuf, CniError> {
            Ok(PathBuf::from(
                get_str(&obj, key)?
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| default.to_string()),
            ))
        };
        let conf = NetConf {
            cni_version,
            name,
            cluster_network: get_str(&obj, "clusterNetwork")?.filter(|s| !s.is_empty()),
            default_networks,
            delegates,
            conf_dir: path("confDir", DEFAULT_CONF_DIR)?,
            cni_dir: path("cniDir", DEFAULT_CNI_DIR)?,
            bin_dir: path("binDir", DEFAULT_BIN_DIR)?,
            log_level: get_str(&obj, "logLevel")?,
            log_file: get_str(&obj, "logFile")?
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            log_to_stderr: get_bool(&obj, "logToStderr", true)?,
            readiness_indicator_file: get_str(&obj, "readinessindicatorfile")?
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            readiness_timeout: get_secs(&obj, "readinessTimeoutSeconds", 45.0)?,
            delegate_timeout: get_secs(&obj, "delegateTimeoutSeconds", 60.0)?,
            runtime_config,
            prev_result: obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
            valid_attachments,
            kubeconfig: get_str(&obj, "kubeconfig")?
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            api_connect_timeout: get_secs(&obj, "apiConnectTimeoutSeconds", 5.0)?,
            api_timeout: get_secs(&obj, "apiTimeoutSeconds", 10.0)?,
            namespace_isolation: get_bool(&obj, "namespaceIsolation", false)?,
            global_namespaces: match get_str(&obj, "globalNamespaces")? {
                Some(s) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                None => vec!["default".to_string()],
            },
            system_namespaces: match obj.get("systemNamespaces") {
                None | Some(Value::Null) => vec!["kube-system".to_string()],
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str().map(String::from).ok_or_else(|| {
                            invalid_config("\"systemNamespaces\" must be a list of strings")
                        })
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(invalid_config(
                        "\"systemNamespaces\" must be a list of strings",
                    ))
                }
            },
            device_checkpoint_file: path(
                "deviceCheckpointFile",
                crate::k8s::devices::DEFAULT_CHECKPOINT,
            )?,
            pod_resources_socket: path(
                "podResourcesSocket",
                crate::k8s::devices::DEFAULT_POD_RESOURCES_SOCKET,
            )?,
            device_info_dir: path(
                "deviceInfoDir",
                crate::k8s::devices::DEFAULT_DEVICE_INFO_DIR,
            )?,
            multus_namespace: get_str(&obj, "multusNamespace")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "kube-system".to_string()),
        };
        Ok(conf)
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

    /// Resolve the cluster network and the networks every pod gets, in attachment order:
    /// `clusterNetwork` then `defaultNetworks`, or else the `delegates` list.
    pub fn static_networks(&self) -> Result<Vec<Network>, CniError> {
        self.require_networks()?;
        if let Some(cluster) = &self.cluster_network {
            let mut out = vec![resolve_reference(cluster, &self.conf_dir)?];
            for n in &self.default_networks {
                out.push(
                    resolve_reference(n, &self.conf_dir)
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

    pub fn from_value(value: Value, source: &str) -> Result<Network, CniError> {
        let ctx = |e: CniError| e.context(source);
        let Value::Object(obj) = &value else {
            return Err(ctx(invalid_config("network config is not a JSON object")));
        };
        let name = get_str(obj, "name").map_err(ctx)?.unwrap_or_default();
        validate_network_name(&name).map_err(ctx)?;
        let cni_version = pick_version(obj).map_err(ctx)?;
        let (plugins, is_list) = match obj.get("plugins") {
            Some(Value::Array(list)) => {
                let plugins = list
                    .iter()
                    .map(|p| {
                        p.as_object()
                            .cloned()
                            .ok_or_else(|| invalid_config("each of \"plugins\" must be an object"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ctx)?;
                (plugins, true)
            }
            Some(_) => return Err(ctx(invalid_config("\"plugins\" must be a list"))),
            None => (vec![obj.clone()], false),
        };
        if plugins.is_empty() {
            return Err(ctx(invalid_config(format!(
                "network \"{name}\" has no plugins"
            ))));
        }
        for p in &plugins {
            let t = get_str(p, "type").map_err(ctx)?.unwrap_or_default();
            validate_plugin_type(&t).map_err(|e| ctx(e.context(format!("network \"{name}\""))))?;
        }
        let (disable_check, disable_gc) = if is_list {
            (
                get_bool(obj, "disableCheck", false).map_err(ctx)?,
                get_bool(obj, "disableGC", false).map_err(ctx)?,
            )
        } else {
            (false, false)
        };
        Ok(Network {
            name,
            cni_version,
            plugins,
            disable_check,
            disable_gc,
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

    pub fn is_self(&self) -> bool {
        SELF_TYPES.contains(&self.plugin_type(0))
    }
}

/// The version a network is run at: its `cniVersion`, or the highest of `cniVersions` plexus
/// speaks (libcni ≥ 1.2), ignoring versions newer than we know.
fn pick_version(obj: &Map<String, Value>) -> Result<Version, CniError> {
    if let Some(Value::Array(list)) = obj.get("cniVersions") {
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
    Version::of_config(get_str(obj, "cniVersion")?.as_deref())?.require_supported()
}

/// A `clusterNetwork`/`defaultNetworks` value: with a `/` it is a file or a directory; without,
/// the name of a network in `confDir`.
pub fn resolve_reference(reference: &str, conf_dir: &Path) -> Result<Network, CniError> {
    if reference.contains('/') {
        let p = Path::new(reference);
        if p.is_dir() {
            return first_in_dir(p)?.ok_or_else(|| {
                invalid_config(format!(
                    "no network config (.conf, .conflist, .json) in directory {reference}"
                ))
            });
        }
        return load_file(p);
    }
    find_by_name(conf_dir, reference)?.ok_or_else(|| {
        invalid_config(format!(
            "cannot find network \"{reference}\" in {}",
            conf_dir.display()
        ))
    })
}

pub fn load_file(path: &Path) -> Result<Network, CniError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| io_error(format!("reading network config {}", path.display()), e))?;
    if meta.len() > MAX_NETWORK_FILE {
        return Err(invalid_config(format!(
            "network config {} is larger than {MAX_NETWORK_FILE} bytes",
            path.display()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| io_error(format!("reading network config {}", path.display()), e))?;
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

/// The first usable network in a directory, skipping plexus's (and Multus's) own configs.
fn first_in_dir(dir: &Path) -> Result<Option<Network>, CniError> {
    for f in config_files(dir) {
        match load_file(&f) {
            Ok(n) if !n.is_self() => return Ok(Some(n)),
            Ok(_) => continue,
            Err(e) => tracing::warn!("skipping {}: {e}", f.display()),
        }
    }
    Ok(None)
}

/// The network named `name` in a directory (first file in order whose `name` matches).
pub fn find_by_name(dir: &Path, name: &str) -> Result<Option<Network>, CniError> {
    for f in config_files(dir) {
        match load_file(&f) {
            Ok(n) if n.name == name && !n.is_self() => return Ok(Some(n)),
            Ok(_) => continue,
            Err(e) => tracing::warn!("skipping {}: {e}", f.display()),
        }
    }
    Ok(None)
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
        assert_eq!(
            resolve_reference(&dir, Path::new("/none")).unwrap().name,
            "a"
        );
        assert_eq!(
            resolve_reference(&format!("{dir}/20-b.conf"), Path::new("/none"))
                .unwrap()
                .name,
            "b"
        );
        assert_eq!(resolve_reference("b", d.path()).unwrap().name, "b");
        assert_eq!(
            resolve_reference("p", d.path()).unwrap_err().code,
            Code::INVALID_CONFIG
        );
        assert!(resolve_reference("zzz", d.path())
            .unwrap_err()
            .msg
            .contains("zzz"));
    }
}
