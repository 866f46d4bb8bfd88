//! CNI mode: one invocation by the runtime, from `CNI_*` env and stdin to stdout and exit code.

use crate::cache::{Loaded, Record, ResultCache, KIND};
use crate::chain::{join_errors, Chain, Inputs, MAX_DEL_ATTEMPTS};
use crate::cni::error::{CniError, Code};
use crate::cni::request::{delegate_args, validate_container_id, validate_ifname, MAX_STDIN};
use crate::cni::version::SUPPORTED;
use crate::cni::{CniResult, Command, Request, Version};
use crate::config::{NetConf, Network, DEFAULT_CNI_DIR};
use crate::plan::{plan, Selection};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the process prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: String,
}

/// Run one CNI invocation. Never panics on bad input; every failure is a CNI error object.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: Vec<u8>) -> Outcome {
    // The version errors are printed in: the config's, when it has a usable one.
    let version = sniff_version(&stdin);
    if stdin.len() > MAX_STDIN {
        return fail(
            &version,
            CniError::new(
                Code::INVALID_CONFIG,
                format!("network config is larger than {MAX_STDIN} bytes"),
            ),
        );
    }
    let req = match Request::from_env(env, stdin) {
        Ok(r) => r,
        Err(e) if std::env::var_os("CNI_COMMAND").is_some_and(|c| c == "DEL") => {
            tracing::warn!("DEL with unusable environment ({e}); nothing can have been attached");
            return ok(String::new());
        }
        Err(e) => return fail(&version, e),
    };
    let result = match req.command() {
        Command::Version => Ok(version_reply(&version)),
        Command::Del => del(&req).map(|()| String::new()),
        cmd => prepare(&req).and_then(|conf| match cmd {
            Command::Add => add(&req, &conf),
            Command::Check => check(&req, &conf).map(|()| String::new()),
            Command::Status => status(&conf).map(|()| String::new()),
            Command::Gc => gc(&req, &conf).map(|()| String::new()),
            Command::Del | Command::Version => unreachable!(),
        }),
    };
    match result {
        Ok(out) => ok(out),
        Err(e) => {
            tracing::error!("{e}");
            fail(&version, e)
        }
    }
}

fn ok(stdout: String) -> Outcome {
    Outcome {
        exit_code: 0,
        stdout,
    }
}

fn fail(version: &str, e: CniError) -> Outcome {
    Outcome {
        exit_code: 1,
        stdout: e.to_json(version),
    }
}

/// The stdin config's `cniVersion` if it is one we speak, else the latest.
fn sniff_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str()?.parse::<Version>().ok())
        .filter(|v| v.is_supported())
        .unwrap_or(Version::LATEST)
        .to_string()
}

fn version_reply(version: &str) -> String {
    json!({"cniVersion": version, "supportedVersions": SUPPORTED}).to_string()
}

/// Validate the request and parse the config; set up logging as the config says.
fn prepare(req: &Request) -> Result<NetConf, CniError> {
    req.require()?;
    let conf = NetConf::parse(&req.stdin)?;
    crate::logging::init(
        conf.log_level.as_deref(),
        conf.log_file.as_deref(),
        conf.log_to_stderr,
    );
    let cmd = req.command();
    if cmd == Command::Check && conf.cni_version < Version::V0_4_0 {
        return Err(CniError::new(
            Code::INCOMPATIBLE_VERSION,
            "config version does not allow CHECK",
        )
        .with_details(format!(
            "config is \"{}\"; CHECK needs 0.4.0 or later",
            conf.cni_version
        )));
    }
    if matches!(cmd, Command::Status | Command::Gc) && conf.cni_version < Version::V1_1_0 {
        return Err(CniError::new(
            Code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {cmd}"),
        )
        .with_details(format!(
            "config is \"{}\"; {cmd} needs 1.1.0 or later",
            conf.cni_version
        )));
    }
    Ok(conf)
}

fn search_path(bin_dir: &Path, req: &Request) -> Vec<PathBuf> {
    let mut p = vec![bin_dir.to_path_buf()];
    p.extend(req.path.iter().filter(|d| d.as_path() != bin_dir).cloned());
    p
}

fn chain_for(req: &Request, conf: &NetConf) -> Chain {
    Chain {
        container_id: req.container_id().to_string(),
        netns: req.netns.clone().unwrap_or_default(),
        cni_args: delegate_args(&req.args_raw),
        search_path: search_path(&conf.bin_dir, req),
        timeout: conf.delegate_timeout,
        who: req.who(),
    }
}

/// Wait for the readiness indicator file (NPWG §6.1.2), up to `readinessTimeoutSeconds`.
fn wait_ready(conf: &NetConf) -> Result<(), CniError> {
    let Some(file) = &conf.readiness_indicator_file else {
        return Ok(());
    };
    let until = Instant::now() + conf.readiness_timeout;
    loop {
        if file.exists() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!(
                    "cluster network is not ready: readiness indicator file {} does not exist",
                    file.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn add(req: &Request, conf: &NetConf) -> Result<String, CniError> {
    let who = req.who();
    wait_ready(conf)?;
    let prev = match &conf.prev_result {
        Some(v) => Some(
            CniResult::from_value(v.clone(), conf.cni_version)
                .map_err(|e| e.context("prevResult"))?
                .0,
        ),
        None => None,
    };
    let mut networks = conf
        .static_networks()
        .map_err(|e| e.context(format!("ADD for {who}")))?
        .into_iter();
    let cluster = networks
        .next()
        .expect("static_networks returns at least one");
    let attachments = plan(
        req.ifname(),
        &conf.runtime_config,
        cluster,
        networks.map(Selection::plain).collect(),
    )
    .map_err(|e| e.context(format!("ADD for {who}")))?;

    let cache = ResultCache::new(&conf.cni_dir);
    let _lock = cache.lock(req.container_id(), req.ifname())?;
    let chain = chain_for(req, conf);
    if let Loaded::Found(stale) = cache.load(req.container_id(), req.ifname()) {
        // The runtime should have DELeted first; do it for it rather than leak what was there.
        tracing::warn!(
            "ADD for {who}: tearing down {} attachment(s) left from an earlier ADD",
            stale.attachments.len()
        );
        let failed = chain.del_attachments(&stale);
        if !failed.is_empty() {
            return Err(join_errors(failed.into_iter().map(|(_, e)| e).collect())
                .context("removing attachments of an earlier ADD"));
        }
    }
    let mut record = Record {
        kind: KIND.into(),
        container_id: req.container_id().into(),
        if_name: req.ifname().into(),
        netns: req.netns.clone().unwrap_or_default(),
        cni_args: delegate_args(&req.args_raw),
        cni_version: conf.cni_version.to_string(),
        attachments: vec![],
        del_attempts: 0,
    };
    let result = chain.add(&cache, &mut record, &attachments, prev.as_ref())?;
    match result.to_json(conf.cni_version) {
        Ok(out) => Ok(out),
        Err(e) => Err(chain.undo(
            &cache,
            &mut record,
            e.context(format!("ADD for {who}: converting the result")),
        )),
    }
}

/// DEL: from the cache, in reverse, best-effort. Succeeds when there is nothing to delete, and
/// whatever the config says: a DEL that follows a refused ADD has nothing to undo.
fn del(req: &Request) -> Result<(), CniError> {
    let (Some(id), Some(ifname)) = (req.container_id.as_deref(), req.ifname.as_deref()) else {
        return req.require();
    };
    if let Err(e) = validate_container_id(id).and_then(|()| validate_ifname(ifname)) {
        tracing::warn!("DEL: {e}; nothing can have been attached");
        return Ok(());
    }
    let conf = match NetConf::parse(&req.stdin) {
        Ok(c) => {
            crate::logging::init(
                c.log_level.as_deref(),
                c.log_file.as_deref(),
                c.log_to_stderr,
            );
            Some(c)
        }
        Err(e) => {
            tracing::warn!("DEL for {}: config unusable ({e}); deleting from the cache under {DEFAULT_CNI_DIR}", req.who());
            None
        }
    };
    let cni_dir = conf
        .as_ref()
        .map(|c| c.cni_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_DIR));
    let cache = ResultCache::new(&cni_dir);
    let lock = cache.lock(id, ifname);
    if let Err(e) = &lock {
        tracing::warn!("DEL for {}: proceeding without the lock: {e}", req.who());
    }
    let mut chain = match &conf {
        Some(c) => chain_for(req, c),
        None => Chain {
            container_id: id.into(),
            netns: req.netns.clone().unwrap_or_default(),
            cni_args: delegate_args(&req.args_raw),
            search_path: search_path(Path::new(crate::config::DEFAULT_BIN_DIR), req),
            timeout: Duration::from_secs(60),
            who: req.who(),
        },
    };
    let outcome = match cache.load(id, ifname) {
        Loaded::Missing => Ok(()),
        Loaded::Found(mut record) => {
            if chain.cni_args.is_empty() {
                chain.cni_args = record.cni_args.clone();
            }
            let failed = chain.del_attachments(&record);
            if failed.is_empty() {
                cache.remove(id, ifname)
            } else {
                record.del_attempts += 1;
                let errors: Vec<CniError> = failed.iter().map(|(_, e)| e.clone()).collect();
                if record.del_attempts >= MAX_DEL_ATTEMPTS {
                    tracing::error!(
                        "DEL for {}: giving up after {} attempts; these may be left behind: {}",
                        req.who(),
                        record.del_attempts,
                        join_errors(errors)
                    );
                    cache.remove(id, ifname)
                } else {
                    record.attachments = failed.into_iter().map(|(a, _)| a).collect();
                    cache.store(&record)?;
                    Err(join_errors(errors))
                }
            }
        }
        Loaded::Unreadable(why) => {
            tracing::warn!("DEL for {}: cache unreadable ({why}); deleting the configured networks without prevResult", req.who());
            if let Some(c) = &conf {
                del_configured(&chain, c, ifname);
            }
            cache.remove(id, ifname)
        }
    };
    if outcome.is_ok() {
        if let Ok(l) = lock {
            l.remove();
        }
    }
    outcome
}

/// Best-effort DEL of the networks the config names, for when the cache cannot tell us.
fn del_configured(chain: &Chain, conf: &NetConf, ifname: &str) {
    let Ok(networks) = conf.static_networks() else {
        return;
    };
    let mut networks = networks.into_iter();
    let Some(cluster) = networks.next() else {
        return;
    };
    let Ok(attachments) = plan(
        ifname,
        &conf.runtime_config,
        cluster,
        networks.map(Selection::plain).collect(),
    ) else {
        return;
    };
    for a in attachments.iter().rev() {
        if let Err(e) = chain.run_network(Command::Del, &a.network, &a.ifname, &Inputs::of(a), None)
        {
            tracing::warn!("{e}");
        }
    }
}

fn check(req: &Request, conf: &NetConf) -> Result<(), CniError> {
    let cache = ResultCache::new(&conf.cni_dir);
    let _lock = cache.lock(req.container_id(), req.ifname())?;
    match cache.load(req.container_id(), req.ifname()) {
        Loaded::Found(record) => chain_for(req, conf).check(&record),
        Loaded::Missing => Err(CniError::new(
            Code::UNKNOWN_CONTAINER,
            format!("CHECK for {}: nothing was attached", req.who()),
        )),
        Loaded::Unreadable(why) => Err(CniError::new(
            Code::IO,
            format!("CHECK for {}: cache unreadable: {why}", req.who()),
        )),
    }
}

/// STATUS: not ready (50) while the readiness file is missing; then STATUS on every configured
/// network that speaks 1.1.0, whose errors are ours.
fn status(conf: &NetConf) -> Result<(), CniError> {
    if let Some(file) = &conf.readiness_indicator_file {
        if !file.exists() {
            return Err(CniError::new(
                Code::NOT_AVAILABLE,
                format!(
                    "cluster network is not ready: readiness indicator file {} does not exist",
                    file.display()
                ),
            ));
        }
    }
    let req = Request {
        command: Some(Command::Status),
        ..Default::default()
    };
    let chain = Chain {
        who: "STATUS".into(),
        ..chain_for(&req, conf)
    };
    for network in conf.static_networks()? {
        if network.cni_version >= Version::V1_1_0 {
            chain.run_network(Command::Status, &network, "", &Inputs::default(), None)?;
        }
    }
    Ok(())
}

/// GC: DEL every cached attachment the runtime no longer lists, then GC every known network that
/// speaks 1.1.0 with the attachments of its own that are still valid.
fn gc(req: &Request, conf: &NetConf) -> Result<(), CniError> {
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            "GC needs \"cni.dev/valid-attachments\"",
        ));
    };
    let is_valid = |id: &str, ifname: &str| valid.iter().any(|(v, f)| v == id && f == ifname);
    let cache = ResultCache::new(&conf.cni_dir);
    let mut errors = Vec::new();
    let mut kept: Vec<Record> = Vec::new();
    for (path, loaded) in cache.all() {
        let record = match loaded {
            Loaded::Found(r) => r,
            Loaded::Unreadable(why) => {
                tracing::warn!("GC: leaving unreadable cache file alone: {why}");
                continue;
            }
            Loaded::Missing => continue,
        };
        if is_valid(&record.container_id, &record.if_name) {
            kept.push(record);
            continue;
        }
        let Ok(lock) = cache.lock(&record.container_id, &record.if_name) else {
            continue;
        };
        // Re-read under the lock: a DEL may have finished while we listed.
        let Loaded::Found(record) = cache.load(&record.container_id, &record.if_name) else {
            lock.remove();
            continue;
        };
        tracing::info!(
            "GC: removing stale attachments of container {} ({})",
            record.container_id,
            path.display()
        );
        let chain = Chain {
            container_id: record.container_id.clone(),
            netns: record.netns.clone(),
            cni_args: record.cni_args.clone(),
            who: format!("container {} (GC)", record.container_id),
            ..chain_for(req, conf)
        };
        let failed = chain.del_attachments(&record);
        if failed.is_empty() {
            cache.remove(&record.container_id, &record.if_name)?;
            lock.remove();
        } else {
            errors.extend(failed.into_iter().map(|(_, e)| e));
        }
    }

    // Forward GC, each network with the attachments of its own that are still valid.
    let mut networks: Vec<Network> = conf.static_networks().unwrap_or_default();
    for r in &kept {
        for a in &r.attachments {
            if let Ok(n) = Network::from_bytes(a.config.as_bytes(), "cache") {
                if !networks
                    .iter()
                    .any(|m| m.name == n.name && m.bytes == n.bytes)
                {
                    networks.push(n);
                }
            }
        }
    }
    let chain = Chain {
        who: "GC".into(),
        ..chain_for(req, conf)
    };
    for network in networks
        .iter()
        .filter(|n| n.cni_version >= Version::V1_1_0 && !n.disable_gc)
    {
        let list: Vec<Value> = kept
            .iter()
            .flat_map(|r| {
                r.attachments
                    .iter()
                    .filter(|a| a.network == network.name)
                    .map(|a| json!({"containerID": r.container_id, "ifname": a.ifname}))
            })
            .collect();
        let mut inputs = Inputs::default();
        inputs
            .extra
            .insert("cni.dev/valid-attachments".into(), Value::Array(list));
        if let Err(e) = chain.run_network(Command::Gc, network, "", &inputs, None) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(join_errors(errors))
    }
}
