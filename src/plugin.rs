//! CNI mode: one invocation by the runtime, from `CNI_*` env and stdin to stdout and exit code.

use crate::cache::{Loaded, Record, ResultCache, KIND};
use crate::chain::{join_errors, Chain, Inputs, MAX_DEL_ATTEMPTS};
use crate::cni::error::{CniError, Code};
use crate::cni::request::{delegate_args, validate_container_id, validate_ifname, MAX_STDIN};
use crate::cni::version::SUPPORTED;
use crate::cni::{CniResult, Command, Request, Version};
use crate::config::{NetConf, Network, DEFAULT_CNI_DIR};
use crate::k8s::client::ApiView;
use crate::k8s::devices;
use crate::k8s::status::StatusInput;
use crate::k8s::{check_uid, ClusterView, PodRef, Reporter};
use crate::netns::Netlink;
use crate::plan::declares;
use crate::plan::{plan, resolve};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// When this invocation started, for the phase timings logged at debug level.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn phase(name: &str) {
    if let Some(t) = STARTED.get() {
        tracing::debug!(elapsed_us = t.elapsed().as_micros() as u64, "phase: {name}");
    }
}

/// What the process prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: String,
}

/// Run one CNI invocation. Never panics on bad input; every failure is a CNI error object.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: Vec<u8>) -> Outcome {
    STARTED.get_or_init(Instant::now);
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
    let req = match Request::from_env(env, Vec::new()) {
        Ok(r) => Request { stdin, ..r },
        Err(e) if is_del => {
            crate::logging::init(None, None, true);
            tracing::warn!("DEL with unusable environment ({e}); nothing can have been attached");
            return ok(String::new());
        }
        Err(e) => return fail(&stdin, e),
    };
    let result = match req.command() {
        Command::Version => Ok(version_reply(&sniff_version(&req.stdin))),
        Command::Del => del(&req).map(|()| String::new()),
        cmd => prepare(&req).and_then(|conf| match cmd {
            Command::Add => add(&req, &conf),
            Command::Check => check(&req, &conf).map(|()| String::new()),
            Command::Status => status(&conf).map(|()| String::new()),
            Command::Gc => gc(&req, &conf).map(|()| String::new()),
            Command::Del | Command::Version => unreachable!(),
        }),
    };
    if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        tracing::debug!(
            user_us = us(u.user_time()),
            sys_us = us(u.system_time()),
            max_rss_kb = u.max_rss(),
            "plexus's own resource use (delegates excluded)"
        );
    }
    match result {
        Ok(out) => ok(out),
        Err(e) => fail(&req.stdin, e),
    }
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
    // Kubernetes, when configured: who the pod is and what it asked for.
    phase("config parsed");
    let api = ApiView::connect(conf)?;
    phase("api client built");
    let pod_ref = PodRef::from_request(req);
    let pod = match (&api, &pod_ref) {
        (Some(api), Some(r)) => {
            let pod = api.pod(&r.namespace, &r.name)?.ok_or_else(|| {
                CniError::new(
                    Code::POD_NOT_FOUND,
                    format!("ADD for {who}: pod {r} not found in the API server; nothing attached"),
                )
            })?;
            check_uid(r, &pod).map_err(|e| e.context(format!("ADD for {who}")))?;
            Some(pod)
        }
        _ => None,
    };
    phase("pod read");
    let view = api.as_ref().map(|a| a as &dyn ClusterView);
    let outcome = attach(req, conf, view, pod.as_ref(), prev.as_ref());
    if let (Some(api), Some(pod)) = (&api, &pod) {
        match &outcome {
            Ok(done) => {
                if let Err(e) = api.set_network_status(pod, &done.status) {
                    let chain = chain_for(req, conf);
                    let cache = ResultCache::new(&conf.cni_dir);
                    let _lock = cache.lock(req.container_id(), req.ifname())?;
                    let mut record = done.record.clone();
                    let e = chain.undo(&cache, &mut record, e.context(format!("ADD for {who}")));
                    api.event(pod, true, "FailedAttach", &e.msg);
                    return Err(e);
                }
                phase("network-status written");
                api.event(pod, false, "AddedInterface", &done.summary);
                phase("event written");
            }
            Err(e) => api.event(pod, true, "FailedAttach", &e.msg),
        }
    }
    outcome.map(|done| done.output)
}

/// What a successful ADD leaves: the printed result, the network-status value, the cache record.
struct Attached {
    output: String,
    status: String,
    summary: String,
    record: Record,
}

fn attach(
    req: &Request,
    conf: &NetConf,
    view: Option<&dyn ClusterView>,
    pod: Option<&k8s_openapi::api::core::v1::Pod>,
    prev: Option<&CniResult>,
) -> Result<Attached, CniError> {
    let who = req.who();
    let resolved = resolve(conf, view, pod).map_err(|e| e.context(format!("ADD for {who}")))?;
    let attachments = plan(req.ifname(), &conf.runtime_config, resolved)
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
        cache.remove(req.container_id(), req.ifname())?;
    }
    let mut attachments = attachments;
    for a in attachments.iter_mut().filter(|a| a.device.is_some()) {
        let file = devices::cni_device_info_path(
            &conf.device_info_dir,
            &a.status_name,
            req.container_id(),
            &a.ifname,
        );
        if declares(&a.network, "CNIDeviceInfoFile") {
            if let Some(dir) = file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            a.capability_args.insert(
                "CNIDeviceInfoFile".into(),
                Value::String(file.display().to_string()),
            );
            a.device_info_file = Some(file.display().to_string());
        }
    }
    if view.is_some() {
        refuse_taken_names(req, &attachments).map_err(|e| e.context(format!("ADD for {who}")))?;
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
    phase("planned");
    chain.add(&cache, &mut record, &attachments, prev)?;
    phase("delegates added");
    let mut finish = || -> Result<Attached, CniError> {
        let results = apply_default_routes(req, &attachments, &mut record)?;
        cache.store_durable(&record)?;
        let output = results[0]
            .to_json(conf.cni_version)
            .map_err(|e| e.context("converting the result"))?;
        let owns_v4 = attachments
            .iter()
            .position(|a| a.default_route.iter().any(|g| g.is_ipv4()));
        let owns_v6 = attachments
            .iter()
            .position(|a| a.default_route.iter().any(|g| g.is_ipv6()));
        let default_owner = owns_v4.or(owns_v6).unwrap_or(0);
        let inputs: Vec<StatusInput> = attachments
            .iter()
            .zip(&results)
            .enumerate()
            .map(|(i, (a, r))| StatusInput {
                name: &a.status_name,
                ifname: &a.ifname,
                result: r,
                default: i == default_owner,
                gateway: a.default_route.iter().map(ToString::to_string).collect(),
                device_info: a.device.as_ref().and_then(|(resource, id)| {
                    devices::device_info(
                        a.device_info_file.as_deref(),
                        &devices::dp_device_info_path(&conf.device_info_dir, resource, id),
                    )
                }),
            })
            .collect();
        let status =
            serde_json::to_string(&crate::k8s::status::build(&inputs)).expect("status serializes");
        let summary = attachments
            .iter()
            .zip(&results)
            .map(|(a, r)| {
                let ips: Vec<&str> = r.ips.iter().map(|i| i.address.as_str()).collect();
                format!("{} {:?} from {}", a.ifname, ips, a.status_name)
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Attached {
            output,
            status,
            summary: format!("Added interfaces: {summary}"),
            record: record.clone(),
        })
    };
    match finish() {
        Ok(done) => Ok(done),
        Err(e) => Err(chain.undo(
            &cache,
            &mut record.clone(),
            e.context(format!("ADD for {who}")),
        )),
    }
}

/// NPWG §4.1.1.2 and the spec: an interface name already present in the pod is an error.
fn refuse_taken_names(
    req: &Request,
    attachments: &[crate::plan::Attachment],
) -> Result<(), CniError> {
    let netns = req.netns.as_deref().unwrap_or("");
    let mut nl = Netlink::open_in(Path::new(netns)).map_err(|e| {
        CniError::new(
            Code::INVALID_ENV,
            format!("cannot open CNI_NETNS {netns}: {e}"),
        )
    })?;
    let links = nl
        .links()
        .map_err(|e| CniError::new(Code::IO, format!("listing links in {netns}: {e}")))?;
    for a in attachments {
        if links.iter().any(|(_, n)| n == &a.ifname) {
            return Err(CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "interface name \"{}\" (network {}) already exists in {netns}",
                    a.ifname, a.status_name
                ),
            ));
        }
    }
    Ok(())
}

/// Move each requested default route to its attachment's interface inside the pod, and make the
/// cached results (and so the printed result and network-status) say what is really there.
fn apply_default_routes(
    req: &Request,
    attachments: &[crate::plan::Attachment],
    record: &mut Record,
) -> Result<Vec<CniResult>, CniError> {
    let mut results: Vec<CniResult> = record
        .attachments
        .iter()
        .zip(attachments)
        .map(|(c, a)| {
            CniResult::from_value(c.result.clone().unwrap_or_default(), a.network.cni_version)
                .map(|(r, _)| r)
                .unwrap_or_default()
        })
        .collect();
    let requests: Vec<(usize, std::net::IpAddr)> = attachments
        .iter()
        .enumerate()
        .flat_map(|(i, a)| a.default_route.iter().map(move |g| (i, *g)))
        .collect();
    if requests.is_empty() {
        return Ok(results);
    }
    let netns = req.netns.as_deref().unwrap_or("");
    let mut nl = Netlink::open_in(Path::new(netns))
        .map_err(|e| CniError::new(Code::IO, format!("opening {netns}: {e}")))?;
    for (owner, gw) in requests {
        let v6 = gw.is_ipv6();
        let any = if v6 { "::/0" } else { "0.0.0.0/0" };
        nl.set_default_route(gw, &attachments[owner].ifname)
            .map_err(|e| {
                CniError::new(
                    Code::IO,
                    format!(
                        "setting default route via {gw} on {} (network {}): {e}",
                        attachments[owner].ifname, attachments[owner].status_name
                    ),
                )
            })?;
        for (i, r) in results.iter_mut().enumerate() {
            r.routes.retain(|rt| rt.dst != any);
            if i == owner {
                r.routes.push(crate::cni::result::Route {
                    dst: any.to_string(),
                    gw: Some(gw.to_string()),
                    ..Default::default()
                });
            }
        }
    }
    for ((cached, a), r) in record.attachments.iter_mut().zip(attachments).zip(&results) {
        cached.result = Some(r.to_value(a.network.cni_version)?);
    }
    Ok(results)
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
            crate::logging::init(None, None, true);
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
    let Ok(resolved) = resolve(conf, None, None) else {
        return;
    };
    let Ok(attachments) = plan(ifname, &conf.runtime_config, resolved) else {
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
