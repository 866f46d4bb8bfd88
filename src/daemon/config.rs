//! The daemon's config file: a Multus `daemon-config.json`. Its daemon keys configure the node
//! agent; every other key is a plexus/Multus plugin key, merged into each request's config with
//! the daemon's value winning, as Multus does (`overrideCNIConfigWithServerConfig`).

use crate::config::NetConf;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Keys of the daemon itself (not merged into requests).
const DAEMON_KEYS: &[&str] = &[
    "socketDir",
    "cniConfigDir",
    "multusConfigFile",
    "multusAutoconfigDir",
    "multusMasterCNI",
    "cniVersion",
    "forceCNIVersion",
    "overrideNetworkName",
    "metricsPort",
    "connectionLimit",
    "enablePprof",
    "perNodeCertificate",
    "chrootDir",
    "daemonSocketDir",
    "maxConcurrentRequests",
    "podWaitSeconds",
    "shutdownGraceSeconds",
    "cleanupConfigOnExit",
    "hotplug",
];

/// Plugin keys plexus or Multus reads; anything else is warned about.
const PLUGIN_KEYS: &[&str] = &[
    "name",
    "type",
    "clusterNetwork",
    "defaultNetworks",
    "delegates",
    "kubeconfig",
    "confDir",
    "cniDir",
    "binDir",
    "namespaceIsolation",
    "globalNamespaces",
    "systemNamespaces",
    "multusNamespace",
    "readinessindicatorfile",
    "readinessTimeoutSeconds",
    "logLevel",
    "logFile",
    "logToStderr",
    "logOptions",
    "capabilities",
    "retryDeleteOnError",
    "auxiliaryCNIChainName",
    "delegateTimeoutSeconds",
    "addTimeoutSeconds",
    "apiConnectTimeoutSeconds",
    "apiTimeoutSeconds",
    "deviceCheckpointFile",
    "podResourcesSocket",
    "deviceInfoDir",
    "allowedPluginTypes",
    "delegateEnv",
];

/// Keys Multus's daemon reads that plexus does not implement; accepted with a warning.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("enablePprof", "plexus has no Go profiler; use /metrics"),
    (
        "perNodeCertificate",
        "plexus authenticates with its service account or the kubeconfig key",
    ),
    (
        "forceCNIVersion",
        "plexus does not rewrite the primary network's file",
    ),
];

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `<socketDir>/multus.sock` is the API socket (dir 0700, socket 0600).
    pub socket_dir: PathBuf,
    /// Where the generated config goes (the runtime's config dir).
    pub cni_config_dir: PathBuf,
    /// `auto` (generate from the primary network), a file to install, or none.
    pub multus_config_file: Option<String>,
    pub autoconfig_dir: PathBuf,
    pub master_cni: Option<String>,
    pub cni_version: Option<String>,
    pub override_network_name: bool,
    pub metrics_port: Option<u16>,
    pub connection_limit: Option<usize>,
    pub readiness_indicator_file: Option<PathBuf>,
    pub chroot_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
    pub log_to_stderr: bool,
    /// plexus: requests running at once (delegates, netns work); more wait in line.
    pub max_concurrent: usize,
    /// plexus: how long ADD waits for a pod the watch has not delivered, before one GET.
    pub pod_wait: Duration,
    /// plexus: how long SIGTERM waits for calls in flight.
    pub shutdown_grace: Duration,
    /// Remove the generated config on exit (Multus thick does; see docs/daemon.md).
    pub cleanup_config_on_exit: bool,
    /// Hot-plug: attach and detach networks when a running pod's annotation changes.
    pub hotplug: bool,
    /// Every plugin key, merged into each request's config.
    pub plugin_keys: Map<String, Value>,
    /// What was accepted but is not implemented, or not known at all: logged at start.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDaemon {
    socket_dir: Option<String>,
    cni_config_dir: Option<String>,
    multus_config_file: Option<String>,
    multus_autoconfig_dir: Option<String>,
    #[serde(rename = "multusMasterCNI")]
    multus_master_cni: Option<String>,
    cni_version: Option<String>,
    override_network_name: Option<bool>,
    metrics_port: Option<u16>,
    connection_limit: Option<usize>,
    chroot_dir: Option<String>,
    max_concurrent_requests: Option<usize>,
    pod_wait_seconds: Option<f64>,
    shutdown_grace_seconds: Option<f64>,
    cleanup_config_on_exit: Option<bool>,
    hotplug: Option<bool>,
    #[serde(rename = "readinessindicatorfile")]
    readiness_indicator_file: Option<String>,
    kubeconfig: Option<String>,
    log_level: Option<String>,
    log_file: Option<String>,
    log_to_stderr: Option<bool>,
}

impl DaemonConfig {
    pub fn load(path: &Path) -> Result<DaemonConfig, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse and check the whole file: a daemon key or a plugin key of the wrong type is an
    /// error naming it.
    pub fn parse(bytes: &[u8]) -> Result<DaemonConfig, String> {
        let raw: RawDaemon = crate::config::from_json(bytes, "daemon config").map_err(|e| e.msg)?;
        let all: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        let mut warnings = Vec::new();
        let mut plugin_keys = Map::new();
        for (k, v) in &all {
            if let Some((_, why)) = UNSUPPORTED.iter().find(|(u, _)| u == k) {
                warnings.push(format!("\"{k}\" is not supported and is ignored: {why}"));
            } else if DAEMON_KEYS.contains(&k.as_str()) {
            } else if PLUGIN_KEYS.contains(&k.as_str()) {
                plugin_keys.insert(k.clone(), v.clone());
            } else {
                warnings.push(format!("unknown key \"{k}\" is ignored"));
            }
        }
        // The plugin keys must make a config plexus accepts: a wrong type is named now, not at
        // the first pod.
        let mut probe = plugin_keys.clone();
        probe.insert("cniVersion".into(), Value::String("1.0.0".into()));
        NetConf::parse(&serde_json::to_vec(&probe).expect("serializes")).map_err(|e| e.msg)?;
        if let Some(0) = raw.max_concurrent_requests {
            return Err("\"maxConcurrentRequests\" must be at least 1".into());
        }
        if let Some(0) = raw.connection_limit {
            return Err("\"connectionLimit\" must be at least 1".into());
        }
        let secs = |key: &str, v: Option<f64>, default: f64| -> Result<Duration, String> {
            let v = v.unwrap_or(default);
            if !(0.0..=3600.0).contains(&v) {
                return Err(format!(
                    "\"{key}\" must be a number of seconds from 0 to 3600"
                ));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let cni_config_dir =
            PathBuf::from(nonempty(raw.cni_config_dir).unwrap_or_else(|| "/etc/cni/net.d".into()));
        let multus_config_file = match nonempty(raw.multus_config_file) {
            None => Some("auto".to_string()),
            Some(s) if s == "none" => None,
            Some(s) => Some(s),
        };
        Ok(DaemonConfig {
            socket_dir: PathBuf::from(
                nonempty(raw.socket_dir).unwrap_or_else(|| "/run/multus/".into()),
            ),
            autoconfig_dir: nonempty(raw.multus_autoconfig_dir)
                .map(PathBuf::from)
                .unwrap_or_else(|| cni_config_dir.clone()),
            cni_config_dir,
            multus_config_file,
            master_cni: nonempty(raw.multus_master_cni),
            cni_version: nonempty(raw.cni_version),
            override_network_name: raw.override_network_name.unwrap_or(false),
            metrics_port: raw.metrics_port,
            connection_limit: raw.connection_limit,
            readiness_indicator_file: nonempty(raw.readiness_indicator_file).map(PathBuf::from),
            chroot_dir: nonempty(raw.chroot_dir).map(PathBuf::from),
            kubeconfig: nonempty(raw.kubeconfig).map(PathBuf::from),
            log_level: raw.log_level,
            log_file: nonempty(raw.log_file).map(PathBuf::from),
            log_to_stderr: raw.log_to_stderr.unwrap_or(true),
            max_concurrent: raw.max_concurrent_requests.unwrap_or(16),
            pod_wait: secs("podWaitSeconds", raw.pod_wait_seconds, 1.0)?,
            shutdown_grace: secs("shutdownGraceSeconds", raw.shutdown_grace_seconds, 25.0)?,
            cleanup_config_on_exit: raw.cleanup_config_on_exit.unwrap_or(true),
            hotplug: raw.hotplug.unwrap_or(true),
            plugin_keys,
            warnings,
        })
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join("multus.sock")
    }

    /// A request's config with the daemon's plugin keys laid over it, as Multus does.
    pub fn merge(&self, request_config: &[u8]) -> Result<Vec<u8>, crate::cni::CniError> {
        let mut conf: Map<String, Value> = serde_json::from_slice(request_config).map_err(|e| {
            crate::cni::CniError::new(
                crate::cni::Code::DECODE,
                format!("cannot parse network config: {e}"),
            )
        })?;
        for (k, v) in &self.plugin_keys {
            conf.insert(k.clone(), v.clone());
        }
        Ok(serde_json::to_vec(&conf).expect("serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn multus_reference_config_is_read() {
        // deployments/multus-daemonset-thick.yml's ConfigMap.
        let c = DaemonConfig::parse(
            json!({"chrootDir": "/hostroot", "cniVersion": "0.3.1", "logLevel": "verbose",
                   "logToStderr": true, "cniConfigDir": "/host/etc/cni/net.d",
                   "multusAutoconfigDir": "/host/etc/cni/net.d", "multusConfigFile": "auto",
                   "socketDir": "/host/run/multus/"})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            c.socket_path(),
            PathBuf::from("/host/run/multus/multus.sock")
        );
        assert_eq!(c.multus_config_file.as_deref(), Some("auto"));
        assert_eq!(c.chroot_dir, Some(PathBuf::from("/hostroot")));
        assert_eq!(c.cni_version.as_deref(), Some("0.3.1"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // logLevel is also a plugin key: it reaches every request, as in Multus.
        assert_eq!(c.plugin_keys["logLevel"], "verbose");
        assert!(!c.plugin_keys.contains_key("socketDir"));
    }

    #[test]
    fn defaults_are_multus_defaults() {
        let c = DaemonConfig::parse(b"{}").unwrap();
        assert_eq!(c.socket_path(), PathBuf::from("/run/multus/multus.sock"));
        assert_eq!(c.cni_config_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.autoconfig_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.multus_config_file.as_deref(), Some("auto"));
        assert!(c.cleanup_config_on_exit && c.hotplug);
        assert_eq!(c.max_concurrent, 16);
    }

    #[test]
    fn bad_keys_are_named_unknown_ones_warned() {
        for (conf, key) in [
            (json!({"metricsPort": "x"}), "metricsPort"),
            (json!({"connectionLimit": -1}), "connectionLimit"),
            (json!({"namespaceIsolation": "yes"}), "namespaceIsolation"),
            (
                json!({"delegateTimeoutSeconds": 99999}),
                "delegateTimeoutSeconds",
            ),
            (json!({"socketDir": 7}), "socketDir"),
        ] {
            let e = DaemonConfig::parse(conf.to_string().as_bytes()).unwrap_err();
            assert!(e.contains(&format!("\"{key}\"")), "{conf}: {e}");
        }
        assert!(DaemonConfig::parse(b"[1]").is_err());
        assert!(DaemonConfig::parse(b"{").is_err());
        let c = DaemonConfig::parse(br#"{"frobnicate": 1, "enablePprof": true}"#).unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("frobnicate")));
    }

    #[test]
    fn the_daemons_plugin_keys_win_over_the_request() {
        let c = DaemonConfig::parse(
            br#"{"cniDir":"/var/lib/cni/daemon","binDir":"/opt/cni/bin","socketDir":"/run/x"}"#,
        )
        .unwrap();
        let merged: Value = serde_json::from_slice(
            &c.merge(br#"{"cniVersion":"1.0.0","name":"n","type":"plexus","cniDir":"/mine","clusterNetwork":"/c"}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(merged["cniDir"], "/var/lib/cni/daemon");
        assert_eq!(merged["clusterNetwork"], "/c");
        assert_eq!(
            merged["cniVersion"], "1.0.0",
            "the request's version is kept"
        );
        assert!(merged.get("socketDir").is_none());
    }
}
