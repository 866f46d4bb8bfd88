//! `plexus install`: what the DaemonSet's container does on each node — put the `plexus` binary in
//! the host's CNI bin dir, write a kubeconfig for the node's plugin runs (service-account token
//! and CA copied next to it), and write the plexus config into the runtime's config dir. With
//! `--watch` it keeps the copied token fresh, so a rotated (bound, expiring) service-account token
//! reaches the plugin without a restart, and exits at once on SIGTERM (it runs as PID 1, which
//! gets no default signal handling). It leaves everything installed when it exits: a rolling
//! update must not leave the node without plexus. `plexus uninstall` removes it.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// The host's CNI bin dir, as mounted in this container.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The host's CNI config dir, as mounted in this container.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The plexus config to install (from the ConfigMap).
    #[arg(long, default_value = "/etc/plexus/00-plexus.conflist")]
    pub config: PathBuf,
    /// Where the kubeconfig, token and CA are written, as mounted in this container.
    #[arg(long, default_value = "/host/etc/cni/net.d/plexus.d")]
    pub kubeconfig_dir: PathBuf,
    /// The same directory as the host sees it (the paths written into the kubeconfig).
    #[arg(long, default_value = "/etc/cni/net.d/plexus.d")]
    pub host_kubeconfig_dir: PathBuf,
    #[arg(long, default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
    pub service_account_dir: PathBuf,
    /// Keep running and refresh the token every `--interval-seconds`.
    #[arg(long)]
    pub watch: bool,
    /// Only install the binary (the node daemon's init container: the daemon writes the config).
    #[arg(long)]
    pub binary_only: bool,
    #[arg(long, default_value_t = 60)]
    pub interval_seconds: u64,
}

/// Write `bytes` to `path` atomically (temp file in the same dir, rename), with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, String> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = path.parent().ok_or("no parent dir")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".plexus-")
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    tmp.write_all(bytes).map_err(|e| e.to_string())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.to_string())?;
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    // rename over a running binary is safe (no "text file busy"): the old inode lives on.
    tmp.persist(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(true)
}

fn api_server() -> Result<String, String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| "KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT")
        .map_err(|_| "KUBERNETES_SERVICE_PORT is not set")?;
    // An IPv6 service address needs brackets in a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!("https://{host}:{port}"))
}

/// One pass: binary, token/CA/kubeconfig, config. Returns what changed, for the log.
pub fn install_once(args: &InstallArgs) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = std::fs::read(&me).map_err(|e| format!("{}: {e}", me.display()))?;
    if write_atomic(&args.bin_dir.join("plexus"), &bin, 0o755)? {
        changed.push("binary".into());
    }
    if args.binary_only {
        return Ok(changed);
    }
    let sa = &args.service_account_dir;
    let token =
        std::fs::read(sa.join("token")).map_err(|e| format!("{}/token: {e}", sa.display()))?;
    let ca =
        std::fs::read(sa.join("ca.crt")).map_err(|e| format!("{}/ca.crt: {e}", sa.display()))?;
    if write_atomic(&args.kubeconfig_dir.join("token"), &token, 0o600)? {
        changed.push("token".into());
    }
    write_atomic(&args.kubeconfig_dir.join("ca.crt"), &ca, 0o644)?;
    let host_dir = &args.host_kubeconfig_dir;
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": api_server()?, "certificate-authority": host_dir.join("ca.crt")}}],
        "users": [{"name": "plexus", "user": {"tokenFile": host_dir.join("token")}}],
        "contexts": [{"name": "plexus", "context": {"cluster": "local", "user": "plexus"}}],
        "current-context": "plexus"
    });
    if write_atomic(
        &args.kubeconfig_dir.join("kubeconfig"),
        kubeconfig.to_string().as_bytes(),
        0o600,
    )? {
        changed.push("kubeconfig".into());
    }
    let template =
        std::fs::read(&args.config).map_err(|e| format!("{}: {e}", args.config.display()))?;
    let mut conf: Value =
        serde_json::from_slice(&template).map_err(|e| format!("{}: {e}", args.config.display()))?;
    let kc = Value::String(host_dir.join("kubeconfig").display().to_string());
    // A conflist's plexus plugin, or a single config, gets the kubeconfig path.
    match conf.get_mut("plugins").and_then(Value::as_array_mut) {
        Some(plugins) => {
            for p in plugins.iter_mut().filter(|p| p["type"] == "plexus") {
                p["kubeconfig"] = kc.clone();
            }
        }
        None => conf["kubeconfig"] = kc,
    }
    let name = args.config.file_name().ok_or("config has no file name")?;
    let out = serde_json::to_vec_pretty(&conf).expect("serializes");
    if write_atomic(&args.conf_dir.join(name), &out, 0o644)? {
        changed.push("config".into());
    }
    Ok(changed)
}

pub fn run(args: &InstallArgs) -> Result<(), String> {
    // Blocked, so they are only ever taken by the wait below (PID 1 has no default action).
    let stop = stop_signals();
    stop.thread_block().map_err(|e| e.to_string())?;
    loop {
        let changed = install_once(args)?;
        if !changed.is_empty() {
            tracing::info!("installed: {}", changed.join(", "));
        }
        if !args.watch {
            return Ok(());
        }
        if let Some(sig) = wait_signal(&stop, Duration::from_secs(args.interval_seconds.max(1))) {
            tracing::info!("{sig}: exiting, leaving plexus installed");
            return Ok(());
        }
    }
}

fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Wait up to `d` for one of the (blocked) signals in `set`.
fn wait_signal(set: &nix::sys::signal::SigSet, d: Duration) -> Option<nix::sys::signal::Signal> {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait reads the set and the timeout; the info pointer may be null.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if n > 0 {
        nix::sys::signal::Signal::try_from(n).ok()
    } else {
        None
    }
}

/// What `plexus uninstall` removes.
#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    /// The host's CNI config dir, as mounted in this container.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The name of the installed config file.
    #[arg(long, default_value = "00-plexus.conflist")]
    pub config_name: String,
    /// The kubeconfig dir `plexus install` wrote.
    #[arg(long, default_value = "/host/etc/cni/net.d/plexus.d")]
    pub kubeconfig_dir: PathBuf,
    /// Also remove the binary from this dir. Only once no pod that plexus attached is left on
    /// the node: their DEL runs plexus.
    #[arg(long)]
    pub remove_binary_from: Option<PathBuf>,
}

/// Remove plexus from the node, config first (so the runtime stops sending new pods to plexus),
/// then its kubeconfig, then (if asked) the binary. Returns what was removed.
pub fn uninstall(args: &UninstallArgs) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    let mut rm = |p: &Path| -> Result<(), String> {
        match std::fs::remove_file(p) {
            Ok(()) => {
                removed.push(p.display().to_string());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", p.display())),
        }
    };
    rm(&args.conf_dir.join(&args.config_name))?;
    for f in ["kubeconfig", "token", "ca.crt"] {
        rm(&args.kubeconfig_dir.join(f))?;
    }
    if let Some(bin) = &args.remove_binary_from {
        rm(&bin.join("plexus"))?;
    }
    let _ = std::fs::remove_dir(&args.kubeconfig_dir);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_binary_kubeconfig_and_config_and_follows_token_rotation() {
        let d = tempfile::tempdir().unwrap();
        let sa = d.path().join("sa");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), "t1").unwrap();
        std::fs::write(sa.join("ca.crt"), "CA").unwrap();
        let tpl = d.path().join("00-plexus.conflist");
        std::fs::write(&tpl, r#"{"cniVersion":"1.1.0","name":"plexus","plugins":[{"type":"plexus","clusterNetwork":"/etc/cni/net.d"}]}"#).unwrap();
        let args = InstallArgs {
            bin_dir: d.path().join("bin"),
            conf_dir: d.path().join("net.d"),
            config: tpl,
            kubeconfig_dir: d.path().join("net.d/plexus.d"),
            host_kubeconfig_dir: PathBuf::from("/etc/cni/net.d/plexus.d"),
            service_account_dir: sa.clone(),
            watch: false,
            binary_only: false,
            interval_seconds: 1,
        };
        // SAFETY: this test is the only one touching these variables.
        unsafe {
            std::env::set_var("KUBERNETES_SERVICE_HOST", "fd00::1");
            std::env::set_var("KUBERNETES_SERVICE_PORT", "443");
        }
        let changed = install_once(&args).unwrap();
        assert_eq!(changed, ["binary", "token", "kubeconfig", "config"]);
        assert!(d.path().join("bin/plexus").is_file());
        let kc: Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join("net.d/plexus.d/kubeconfig")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            kc["clusters"][0]["cluster"]["server"],
            "https://[fd00::1]:443"
        );
        assert_eq!(
            kc["users"][0]["user"]["tokenFile"],
            "/etc/cni/net.d/plexus.d/token"
        );
        // kube reads it.
        kube::config::Kubeconfig::read_from(d.path().join("net.d/plexus.d/kubeconfig")).unwrap();
        let conf: Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join("net.d/00-plexus.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            conf["plugins"][0]["kubeconfig"],
            "/etc/cni/net.d/plexus.d/kubeconfig"
        );
        // Nothing changed: nothing rewritten. A rotated token: only the token.
        assert!(install_once(&args).unwrap().is_empty());
        // The daemon's init container: the binary only.
        let only = InstallArgs {
            bin_dir: d.path().join("bin-only"),
            conf_dir: d.path().join("untouched"),
            binary_only: true,
            ..args.clone()
        };
        assert_eq!(install_once(&only).unwrap(), ["binary"]);
        assert!(!d.path().join("untouched").exists());
        std::fs::write(sa.join("token"), "t2").unwrap();
        assert_eq!(install_once(&args).unwrap(), ["token"]);
        assert_eq!(
            std::fs::read_to_string(d.path().join("net.d/plexus.d/token")).unwrap(),
            "t2"
        );
        unsafe {
            std::env::remove_var("KUBERNETES_SERVICE_HOST");
            std::env::remove_var("KUBERNETES_SERVICE_PORT");
        }
        // Uninstall: config first, then the kubeconfig; the binary only when asked.
        let un = UninstallArgs {
            conf_dir: d.path().join("net.d"),
            config_name: "00-plexus.conflist".into(),
            kubeconfig_dir: d.path().join("net.d/plexus.d"),
            remove_binary_from: None,
        };
        let removed = uninstall(&un).unwrap();
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(removed[0].ends_with("00-plexus.conflist"));
        assert!(!d.path().join("net.d/plexus.d").exists());
        assert!(
            d.path().join("bin/plexus").is_file(),
            "binary kept for pending DELs"
        );
        assert!(uninstall(&un).unwrap().is_empty(), "idempotent");
        let removed = uninstall(&UninstallArgs {
            remove_binary_from: Some(d.path().join("bin")),
            ..un
        })
        .unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!d.path().join("bin/plexus").exists());
    }

    #[test]
    fn a_blocked_sigterm_ends_the_wait_at_once() {
        let set = stop_signals();
        // Only this thread blocks it; raise it at this thread.
        set.thread_block().unwrap();
        let t = std::time::Instant::now();
        // SAFETY: pthread_kill on our own thread with a blocked signal only marks it pending.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
        assert_eq!(
            wait_signal(&set, Duration::from_secs(30)),
            Some(nix::sys::signal::Signal::SIGTERM)
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(wait_signal(&set, Duration::from_millis(10)), None);
    }
}
