//! The exec'd plugin's front door: `CNI_*` env and stdin in, the engine, stdout and exit code out.
//! One process serves one call, so this is also where per-process things live: logging set up
//! from the config, the API client (built only for ADD), and plexus's own resource use.

use crate::cancel::Cancel;
use crate::cni::error::{CniError, Code};
use crate::cni::request::MAX_STDIN;
use crate::cni::version::SUPPORTED;
use crate::cni::{Command, Request, Version};
use crate::config::NetConf;
use crate::engine::{Call, Cluster, Engine};
use crate::k8s::client::{ApiView, Credentials};
use crate::netns::Kernel;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// What the process prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: String,
}

/// Run one CNI invocation. Never panics on bad input; every failure is a CNI error object.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: Vec<u8>) -> Outcome {
    let started = Instant::now();
    if stdin.len() > MAX_STDIN {
        return fail(
            &stdin,
            CniError::new(
                Code::INVALID_CONFIG,
                format!("network config is larger than {MAX_STDIN} bytes"),
            ),
        );
    }
    let is_del = env("CNI_COMMAND").is_some_and(|c| c == "DEL");
    let in_cluster =
        env("KUBERNETES_SERVICE_HOST").is_some() && env("KUBERNETES_SERVICE_PORT").is_some();
    let req = match Request::from_env(&env, Vec::new()) {
        Ok(r) => Request { stdin, ..r },
        Err(e) if is_del => {
            crate::logging::init(None, None, true);
            tracing::warn!("DEL with unusable environment ({e}); nothing can have been attached");
            return ok(String::new());
        }
        Err(e) => return fail(&stdin, e),
    };
    // A shim config: ADD, CHECK and STATUS go to the node daemon while it is there (and a DEL or
    // GC asks it to take plexus's data out of DRA claims). The config is read for it once.
    let shim_dir = crate::shim::socket_dir(&req.stdin);
    let daemon = shim_dir.clone().filter(|_| {
        matches!(
            req.command(),
            Command::Add | Command::Check | Command::Status
        )
    });
    let result = match req.command() {
        Command::Version => Ok(version_reply(&sniff_version(&req.stdin))),
        cmd if daemon.is_some() => via_daemon(
            cmd,
            &req,
            &env,
            daemon.as_deref().expect("some"),
            in_cluster,
        ),
        Command::Del => {
            let conf = configure(&req).map_err(|e| {
                tracing::warn!("DEL for {}: config unusable ({e}); deleting from the cache under the default cniDir", req.who());
            });
            let mut engine = Engine::new(None, Arc::new(Kernel));
            if let Ok(c) = &conf {
                engine.connect = Some(connect_with(
                    c,
                    Credentials::for_plugin(c, in_cluster),
                    shim_dir,
                ));
            }
            engine.del(&req, conf.ok().as_ref()).map(|()| String::new())
        }
        cmd => req
            .require()
            .and_then(|()| configure(&req))
            .and_then(|conf| {
                let creds = Credentials::for_plugin(&conf, in_cluster);
                in_process(cmd, &req, &conf, creds, shim_dir)
            }),
    };
    log_own_cost(started);
    match result {
        Ok(out) => ok(out),
        Err(e) => fail(&req.stdin, e),
    }
}

/// The shim: forward to the daemon; without one, run here what can run here.
fn via_daemon(
    cmd: Command,
    req: &Request,
    env: &dyn Fn(&str) -> Option<String>,
    dir: &std::path::Path,
    in_cluster: bool,
) -> Result<String, CniError> {
    req.require()?;
    let conf = configure(req)?;
    // Long enough for the daemon's own limit on an ADD to end the call first.
    let timeout = conf.add_timeout + std::time::Duration::from_secs(10);
    match crate::shim::forward(dir, env, &req.stdin, timeout) {
        crate::shim::Forward::Answer(Ok(Some(result))) => result
            .to_json(conf.cni_version)
            .map_err(|e| e.context("converting the daemon's result")),
        crate::shim::Forward::Answer(Ok(None)) => Ok(String::new()),
        crate::shim::Forward::Answer(Err(e)) => Err(e),
        crate::shim::Forward::Unreachable { why, sent } => {
            let creds = Credentials::for_plugin(&conf, in_cluster);
            if creds.is_none() && cmd != Command::Check {
                let e = crate::shim::unreachable_error(req, &why, sent);
                return Err(if cmd == Command::Status {
                    CniError::new(Code::NOT_AVAILABLE, e.msg)
                } else {
                    e
                });
            }
            tracing::warn!(
                "{cmd} for {}: daemon unreachable ({why}); running it here",
                req.who()
            );
            in_process(cmd, req, &conf, creds, Some(dir.to_path_buf()))
        }
    }
}

/// Run the call in this process; only ADD talks to the API server (with `creds`), the other
/// verbs work from the cache and the config.
fn in_process(
    cmd: Command,
    req: &Request,
    conf: &NetConf,
    creds: Option<Credentials>,
    shim_dir: Option<std::path::PathBuf>,
) -> Result<String, CniError> {
    let cluster = match cmd {
        Command::Add => {
            ApiView::connect(conf, creds.clone())?.map(|a| Arc::new(a) as Arc<dyn Cluster>)
        }
        _ => None,
    };
    let mut engine = Engine::new(cluster, Arc::new(Kernel));
    if cmd == Command::Gc {
        engine.connect = Some(connect_with(conf, creds, shim_dir));
    }
    let out = engine.run(&Call {
        req,
        conf,
        cancel: &Cancel::never(),
    })?;
    match out {
        Some(result) => result
            .to_json(conf.cni_version)
            .map_err(|e| e.context("converting the result")),
        None => Ok(String::new()),
    }
}

/// Where a DEL or GC takes plexus's network data out of DRA claims, built only if one has some
/// to take out: the API server with the plugin's credentials, else the node daemon at
/// `shim_dir` (a shim's config names no kubeconfig; the daemon has the credentials).
fn connect_with(
    conf: &NetConf,
    creds: Option<Credentials>,
    daemon: Option<std::path::PathBuf>,
) -> crate::engine::Connect {
    let conf = conf.clone();
    // Built once per call however many records need it (GC).
    let built: std::sync::OnceLock<Option<Arc<dyn Cluster>>> = std::sync::OnceLock::new();
    Arc::new(move || {
        built
            .get_or_init(|| {
                if creds.is_some() {
                    return match ApiView::connect(&conf, creds.clone()) {
                        Ok(v) => v.map(|a| Arc::new(a) as Arc<dyn Cluster>),
                        Err(e) => {
                            tracing::warn!("API client: {e}");
                            None
                        }
                    };
                }
                daemon.clone().map(|dir| {
                    Arc::new(crate::shim::DaemonClaims {
                        dir,
                        timeout: conf.api_timeout + std::time::Duration::from_secs(5),
                    }) as Arc<dyn Cluster>
                })
            })
            .clone()
    })
}

/// Parse the config and set up logging as it says (once: this process serves one call).
fn configure(req: &Request) -> Result<NetConf, CniError> {
    let conf = NetConf::parse(&req.stdin)?;
    crate::logging::init(
        conf.log_level.as_deref(),
        conf.log_file.as_deref(),
        conf.log_to_stderr,
    );
    Ok(conf)
}

/// plexus's own CPU and memory for this call (delegates excluded), at debug level.
fn log_own_cost(started: Instant) {
    if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            user_us = us(u.user_time()),
            sys_us = us(u.system_time()),
            max_rss_kb = u.max_rss(),
            "plexus's own resource use (delegates excluded)"
        );
    }
}

/// [`run`] over this process's environment. A `CNI_*` variable that is not UTF-8 is refused by
/// name (code 4) rather than read as absent or lossily: a DEL with one exits 0, as nothing can have
/// been attached under it.
pub fn run_process_env(stdin: Vec<u8>) -> Outcome {
    let bad: Vec<String> = std::env::vars_os()
        .filter(|(k, v)| k.to_str().is_some_and(|k| k.starts_with("CNI_")) && v.to_str().is_none())
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    if bad.is_empty() {
        return run(|k| std::env::var(k).ok(), stdin);
    }
    let e = CniError::new(
        Code::INVALID_ENV,
        format!(
            "environment variables [{}] are not valid UTF-8",
            bad.join(",")
        ),
    );
    if std::env::var("CNI_COMMAND").is_ok_and(|c| c == "DEL") {
        crate::logging::init(None, None, true);
        tracing::warn!("DEL with unusable environment ({e}); nothing can have been attached");
        return ok(String::new());
    }
    fail(&stdin, e)
}

fn ok(stdout: String) -> Outcome {
    Outcome {
        exit_code: 0,
        stdout,
    }
}

/// The error object on stdout, in the config's version when it has a usable one (read only now,
/// on the error path, so a successful call parses its config once). Logged too: with the
/// config's settings if it got that far, else to stderr.
fn fail(stdin: &[u8], e: CniError) -> Outcome {
    crate::logging::init(None, None, true);
    tracing::error!("{e}");
    Outcome {
        exit_code: 1,
        stdout: e.to_json(&sniff_version(stdin)),
    }
}

/// The stdin config's `cniVersion` if it is one we speak, else the latest.
pub fn sniff_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str()?.parse::<Version>().ok())
        .filter(|v| v.is_supported())
        .unwrap_or(Version::LATEST)
        .to_string()
}

pub fn version_reply(version: &str) -> String {
    json!({"cniVersion": version, "supportedVersions": SUPPORTED}).to_string()
}
