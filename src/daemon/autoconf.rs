//! The CNI config the daemon installs for the runtime (`multusConfigFile`): with `auto`, a plexus
//! shim config whose cluster network is the node's primary CNI config, generated once that
//! primary and the readiness indicator exist, regenerated when the primary changes (inotify),
//! removed when the readiness file goes away and (with `cleanupConfigOnExit`) on exit — so a
//! node whose daemon is gone never sends pods to a dead socket.

use super::config::DaemonConfig;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The file the daemon writes in `cniConfigDir`; sorts before any primary network's.
pub const CONFIG_NAME: &str = "00-plexus.conflist";

/// What the daemon keeps on disk for the runtime.
#[derive(Debug, Clone)]
pub struct AutoConfig {
    config: DaemonConfig,
}

/// The outcome of one look at the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// The config is in place (written now, or already there as it should be).
    Written(PathBuf),
    /// Nothing to install yet (no primary network, or no readiness file): none is there.
    Absent(String),
}

impl AutoConfig {
    pub fn new(config: DaemonConfig) -> AutoConfig {
        AutoConfig { config }
    }

    pub fn target(&self) -> PathBuf {
        self.config.cni_config_dir.join(CONFIG_NAME)
    }

    /// Whether the daemon manages a config at all (`multusConfigFile` not "none").
    pub fn enabled(&self) -> bool {
        self.config.multus_config_file.is_some()
    }

    /// The directories whose changes may change what should be installed.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.config.autoconfig_dir.clone()];
        if let Some(parent) = self
            .config
            .readiness_indicator_file
            .as_deref()
            .and_then(Path::parent)
        {
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_path_buf());
            }
        }
        if let Some(f) = self
            .config
            .multus_config_file
            .as_deref()
            .filter(|f| *f != "auto")
            .and_then(|f| Path::new(f).parent())
        {
            if !dirs.iter().any(|d| d == f) {
                dirs.push(f.to_path_buf());
            }
        }
        dirs
    }

    /// The config that should be installed now, or why none should be.
    pub fn desired(&self) -> Result<Vec<u8>, String> {
        if let Some(f) = &self.config.readiness_indicator_file {
            if !f.exists() {
                return Err(format!(
                    "readiness indicator file {} does not exist",
                    f.display()
                ));
            }
        }
        match self.config.multus_config_file.as_deref() {
            None => Err("multusConfigFile is none".into()),
            Some("auto") => self.generate(),
            Some(file) => {
                let bytes = std::fs::read(file)
                    .map_err(|e| format!("reading multusConfigFile {file}: {e}"))?;
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| format!("multusConfigFile {file} is not JSON: {e}"))?;
                Ok(bytes)
            }
        }
    }

    /// The primary network: `multusMasterCNI`, or the first `.conf`/`.conflist` in the autoconfig
    /// dir that is not plexus's or Multus's own.
    fn primary(&self) -> Result<(PathBuf, Value), String> {
        let dir = &self.config.autoconfig_dir;
        let mut files: Vec<PathBuf> = match &self.config.master_cni {
            Some(name) => vec![dir.join(name)],
            None => {
                let rd = std::fs::read_dir(dir)
                    .map_err(|e| format!("reading {}: {e}", dir.display()))?;
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("conf" | "conflist")
                        )
                    })
                    .collect()
            }
        };
        files.sort();
        for f in files {
            if f.file_name().is_some_and(|n| n == CONFIG_NAME) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&f) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                tracing::warn!("auto-config: skipping {}: not JSON", f.display());
                continue;
            };
            if names_self(&v) {
                continue;
            }
            return Ok((f, v));
        }
        Err(format!(
            "no primary network config (.conf, .conflist) in {}",
            dir.display()
        ))
    }

    fn generate(&self) -> Result<Vec<u8>, String> {
        let (path, primary) = self.primary()?;
        let version = self
            .config
            .cni_version
            .clone()
            .or_else(|| primary["cniVersion"].as_str().map(String::from))
            .ok_or_else(|| format!("primary network {} has no cniVersion", path.display()))?;
        let name = if self.config.override_network_name {
            primary["name"]
                .as_str()
                .unwrap_or("multus-cni-network")
                .to_string()
        } else {
            "multus-cni-network".to_string()
        };
        // The capabilities the primary's plugins declare, so the runtime sends them (they reach
        // the cluster network only).
        let mut caps = Map::new();
        let plugins: Vec<&Value> = match primary["plugins"].as_array() {
            Some(list) => list.iter().collect(),
            None => vec![&primary],
        };
        for p in plugins {
            if let Some(c) = p["capabilities"].as_object() {
                for (k, v) in c {
                    if v == &Value::Bool(true) {
                        caps.insert(k.clone(), Value::Bool(true));
                    }
                }
            }
        }
        let mut plugin = Map::new();
        plugin.insert("type".into(), json!("plexus"));
        plugin.insert(
            "daemonSocketDir".into(),
            json!(self.config.socket_dir.display().to_string()),
        );
        plugin.insert("clusterNetwork".into(), json!(path.display().to_string()));
        if !caps.is_empty() {
            plugin.insert("capabilities".into(), Value::Object(caps));
        }
        // The daemon's plugin keys, so a call the shim runs itself (DEL, GC, ADD when the daemon
        // is away) works exactly as the daemon would; the daemon handles readiness itself.
        for (k, v) in &self.config.plugin_keys {
            if !matches!(k.as_str(), "readinessindicatorfile" | "name" | "type") {
                plugin.insert(k.clone(), v.clone());
            }
        }
        let conf = json!({"cniVersion": version, "name": name, "plugins": [plugin]});
        let mut bytes = serde_json::to_vec_pretty(&conf).expect("serializes");
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Make the disk say what [`AutoConfig::desired`] says: write the config atomically (mode
    /// 0600) if it differs, or remove it.
    pub fn apply(&self) -> Result<Installed, String> {
        let target = self.target();
        match self.desired() {
            Ok(bytes) => {
                if std::fs::read(&target).is_ok_and(|old| old == bytes) {
                    return Ok(Installed::Written(target));
                }
                write_atomic(&target, &bytes)?;
                tracing::info!("auto-config: wrote {}", target.display());
                Ok(Installed::Written(target))
            }
            Err(why) => {
                self.remove();
                Ok(Installed::Absent(why))
            }
        }
    }

    /// Remove the installed config (if any).
    pub fn remove(&self) {
        let target = self.target();
        match std::fs::remove_file(&target) {
            Ok(()) => tracing::info!("auto-config: removed {}", target.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("auto-config: removing {}: {e}", target.display()),
        }
    }

    /// Keep the config right until `stop`: on every change in the watched directories (inotify),
    /// and every few seconds as a safety net. `installed` is kept up to date for `/readyz`.
    pub async fn run(
        self,
        installed: std::sync::Arc<std::sync::atomic::AtomicBool>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use futures_util::StreamExt;
        use std::sync::atomic::Ordering;
        let mut events = match self.inotify() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("auto-config: inotify unavailable ({e}); looking every 2 s");
                None
            }
        };
        let mut last = None;
        loop {
            match self.apply() {
                Ok(state) => {
                    installed.store(matches!(state, Installed::Written(_)), Ordering::SeqCst);
                    if last.as_ref() != Some(&state) {
                        if let Installed::Absent(why) = &state {
                            tracing::info!("auto-config: not installed: {why}");
                        }
                        last = Some(state);
                    }
                }
                Err(e) => tracing::error!("auto-config: {e}"),
            }
            let tick = tokio::time::sleep(std::time::Duration::from_secs(2));
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick => {}
                _ = async {
                    match events.as_mut() {
                        Some(s) => { s.next().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        }
    }

    fn inotify(&self) -> std::io::Result<inotify::EventStream<Vec<u8>>> {
        use inotify::{Inotify, WatchMask};
        let ino = Inotify::init()?;
        for dir in self.watched_dirs() {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!("auto-config: {}: {e}", dir.display());
                continue;
            }
            ino.watches().add(
                &dir,
                WatchMask::CREATE
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::MODIFY
                    | WatchMask::DELETE
                    | WatchMask::MOVED_FROM
                    | WatchMask::MOVED_TO,
            )?;
        }
        ino.into_event_stream(vec![0u8; 4096])
    }
}

/// Whether a config is plexus's or Multus's own (never a primary).
fn names_self(v: &Value) -> bool {
    let is_self = |p: &Value| {
        p.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| crate::config::SELF_TYPES.contains(&t))
    };
    match v.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().any(is_self),
        None => is_self(v),
    }
}

/// Write a file atomically (temp file, fsync, rename), mode 0600.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().ok_or("no parent dir")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".plexus-")
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    tmp.write_all(bytes).map_err(|e| e.to_string())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &Path, extra: Value) -> AutoConfig {
        let mut c = json!({"cniConfigDir": dir, "socketDir": "/run/plexus-test/", "cniDir": "/var/lib/cni/x"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        AutoConfig::new(DaemonConfig::parse(c.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn waits_for_a_primary_and_the_readiness_file_then_writes_a_shim_config() {
        let d = tempfile::tempdir().unwrap();
        let ready = d.path().join("ready/flag");
        let a = conf(d.path(), json!({"readinessindicatorfile": ready}));
        assert!(matches!(a.apply().unwrap(), Installed::Absent(w) if w.contains("readiness")));
        std::fs::create_dir_all(ready.parent().unwrap()).unwrap();
        std::fs::write(&ready, "").unwrap();
        assert!(matches!(a.apply().unwrap(), Installed::Absent(w) if w.contains("no primary")));
        // Our own and Multus's configs are never the primary.
        std::fs::write(
            d.path().join("00-multus.conf"),
            r#"{"cniVersion":"0.3.1","name":"m","type":"multus-shim"}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("10-flannel.conflist"),
            r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"flannel"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-other.conf"),
            r#"{"cniVersion":"0.4.0","name":"o","type":"bridge"}"#,
        )
        .unwrap();
        let Installed::Written(path) = a.apply().unwrap() else {
            panic!("not written")
        };
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0", "the primary's version");
        assert_eq!(v["name"], "multus-cni-network");
        let p = &v["plugins"][0];
        assert_eq!(p["type"], "plexus");
        assert_eq!(p["daemonSocketDir"], "/run/plexus-test/");
        assert_eq!(
            p["clusterNetwork"],
            d.path().join("10-flannel.conflist").display().to_string()
        );
        assert_eq!(p["capabilities"], json!({"portMappings": true}));
        assert_eq!(p["cniDir"], "/var/lib/cni/x", "the daemon's plugin keys");
        assert!(p.get("readinessindicatorfile").is_none());
        // plexus accepts what it wrote.
        let mut plugin = p.clone();
        plugin["cniVersion"] = v["cniVersion"].clone();
        plugin["name"] = v["name"].clone();
        crate::config::NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        // A primary that changes is followed; the readiness file going away removes the config.
        std::fs::write(
            d.path().join("05-calico.conflist"),
            r#"{"cniVersion":"0.3.1","name":"k8s-pod-network","plugins":[{"type":"calico"}]}"#,
        )
        .unwrap();
        a.apply().unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(v["plugins"][0]["clusterNetwork"]
            .as_str()
            .unwrap()
            .ends_with("05-calico.conflist"));
        std::fs::remove_file(&ready).unwrap();
        assert!(matches!(a.apply().unwrap(), Installed::Absent(_)));
        assert!(!path.exists());
    }

    #[test]
    fn master_cni_version_and_name_can_be_pinned() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"b","type":"ptp"}"#,
        )
        .unwrap();
        let a = conf(
            d.path(),
            json!({"multusMasterCNI": "20-b.conf", "cniVersion": "1.0.0", "overrideNetworkName": true}),
        );
        let Installed::Written(path) = a.apply().unwrap() else {
            panic!()
        };
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            (v["cniVersion"].as_str(), v["name"].as_str()),
            (Some("1.0.0"), Some("b"))
        );
        assert!(v["plugins"][0]["clusterNetwork"]
            .as_str()
            .unwrap()
            .ends_with("20-b.conf"));
    }

    #[test]
    fn a_given_config_file_is_installed_as_is() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("mine.conflist");
        std::fs::write(
            &src,
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"plexus"}]}"#,
        )
        .unwrap();
        let out = d.path().join("out");
        let a = conf(&out, json!({"multusConfigFile": src}));
        let Installed::Written(path) = a.apply().unwrap() else {
            panic!()
        };
        assert_eq!(std::fs::read(path).unwrap(), std::fs::read(&src).unwrap());
    }
}
