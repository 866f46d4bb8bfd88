//! What a CNI call does, in one place: ADD (with rollback), DEL (from the cache), CHECK, STATUS and
//! GC over a typed request. Both front doors — the exec'd plugin (`plugin.rs`) and the node daemon
//! — are thin adapters around [`Engine`]; neither implements a CNI rule of its own. What differs
//! between them is passed in: the cluster (direct API reads, or the daemon's watch cache), how to
//! reach a pod's netns, and the call's cancellation.

use crate::cache::{AttachmentRecord, Key, Loaded, Lock, ResultCache, SandboxRecord, KIND};
use crate::cancel::Cancel;
use crate::chain::{join_errors, Chain, MAX_DEL_ATTEMPTS};
use crate::cni::error::{CniError, Code};
use crate::cni::request::{delegate_args, validate_container_id, validate_ifname};
use crate::cni::{CniResult, Command, Request, Version};
use crate::config::{ConfDir, NetConf, Network, NetworkFiles, DEFAULT_BIN_DIR, DEFAULT_CNI_DIR};
use crate::k8s::devices;
use crate::k8s::status::StatusInput;
use crate::k8s::{check_uid, ClusterView, PodRef, Reporter};
use crate::netns::NetnsOps;
use crate::plan::{declares, plan, resolve, Attachment, DelegateInputs, Sources};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cluster as the engine sees it: what the planner reads, and where reports go.
pub trait Cluster: ClusterView + Reporter + Send + Sync {}
impl<T: ClusterView + Reporter + Send + Sync> Cluster for T {}

/// The core, with what the front door gives it.
#[derive(Clone)]
pub struct Engine {
    /// The cluster, when plexus runs with Kubernetes (plugin mode: only built for ADD).
    pub cluster: Option<Arc<dyn Cluster>>,
    /// Where config files come from; `None`: the call's `confDir` on disk.
    pub files: Option<Arc<dyn NetworkFiles>>,
    pub netns: Arc<dyn NetnsOps>,
    /// Told of every delegate run (the daemon's metrics).
    pub observer: Option<crate::chain::ExecObserver>,
    /// Delegates run chrooted here (the daemon's `chrootDir`).
    pub chroot: Option<PathBuf>,
    /// A cluster on demand, for a DEL that must take plexus's network data out of DRA claims
    /// when the front door built none (the plugin builds its API client only for ADD).
    pub connect: Option<Connect>,
}

/// Builds a cluster when one is needed after all; `None` when there is none to reach.
pub type Connect = Arc<dyn Fn() -> Option<Arc<dyn Cluster>> + Send + Sync>;

/// One call: the request, its config, and its cancellation.
pub struct Call<'a> {
    pub req: &'a Request,
    pub conf: &'a NetConf,
    pub cancel: &'a Cancel,
}

/// How long DEL and GC wait for a lock an ADD holds before asking the runtime to try again.
const DEL_LOCK_WAIT: Duration = Duration::from_secs(60);

impl Engine {
    pub fn new(cluster: Option<Arc<dyn Cluster>>, netns: Arc<dyn NetnsOps>) -> Engine {
        Engine {
            cluster,
            files: None,
            netns,
            observer: None,
            chroot: None,
            connect: None,
        }
    }

    /// Run ADD, CHECK, STATUS or GC (DEL has [`Engine::del`], which tolerates an unusable
    /// config). Returns the result to print for ADD.
    pub fn run(&self, call: &Call<'_>) -> Result<Option<CniResult>, CniError> {
        match call.req.command() {
            Command::Add => self.add(call).map(Some),
            Command::Check => self.check(call).map(|()| None),
            Command::Status => self.status(call).map(|()| None),
            Command::Gc => self.gc(call).map(|()| None),
            Command::Del => self.del(call.req, Some(call.conf)).map(|()| None),
            Command::Version => Ok(None),
        }
    }

    fn files(&self, conf: &NetConf) -> Arc<dyn NetworkFiles> {
        self.files
            .clone()
            .unwrap_or_else(|| Arc::new(ConfDir(conf.conf_dir.clone())))
    }

    fn chain(&self, call: &Call<'_>, deadline: Option<Instant>) -> Chain {
        Chain {
            observer: self.observer.clone(),
            chroot: self.chroot.clone(),
            ..chain_for(call.req, call.conf, call.cancel.clone(), deadline)
        }
    }

    /// CNI_NETNS_OVERRIDE (libcni/skel): without it, a netns that is plexus's own is refused.
    fn refuse_own_netns(&self, req: &Request) -> Result<(), CniError> {
        let netns = req.netns.as_deref().unwrap_or("");
        if req.netns_override || netns.is_empty() {
            return Ok(());
        }
        match self.netns.is_own(netns) {
            Ok(false) => Ok(()),
            Ok(true) => Err(CniError::new(
                Code::INVALID_NETNS,
                format!(
                    "{} for {}: CNI_NETNS {netns} is plexus's own network namespace; set CNI_NETNS_OVERRIDE=1 if that is meant",
                    req.command(),
                    req.who()
                ),
            )),
            Err(e) => Err(CniError::new(
                Code::INVALID_NETNS,
                format!("{} for {}: CNI_NETNS {netns}: {e}", req.command(), req.who()),
            )),
        }
    }

    /// ADD: wait for readiness, read the pod, plan, attach everything in order, fix default
    /// routes, record, report. Any failure after the first delegate ran undoes everything, in
    /// reverse, under the same lock. The whole call is bounded by `addTimeoutSeconds`.
    pub fn add(&self, call: &Call<'_>) -> Result<CniResult, CniError> {
        let (req, conf, cancel) = (call.req, call.conf, call.cancel);
        let deadline = Instant::now() + conf.add_timeout;
        let who = req.who();
        self.refuse_own_netns(req)?;
        wait_ready(conf, deadline, cancel)?;
        let prev = match &conf.prev_result {
            Some(v) => Some(
                CniResult::from_value(v.clone(), conf.cni_version)
                    .map_err(|e| e.context("prevResult"))?
                    .0,
            ),
            None => None,
        };
        let cluster = self.cluster.as_deref();
        let pod = match (cluster, PodRef::from_request(req)) {
            (Some(c), Some(r)) => {
                let pod = c
                    .pod(&r.namespace, &r.name, r.uid.as_deref())?
                    .ok_or_else(|| {
                        CniError::new(
                            Code::POD_NOT_FOUND,
                            format!(
                            "ADD for {who}: pod {r} not found in the API server; nothing attached"
                        ),
                        )
                    })?;
                check_uid(&r, &pod).map_err(|e| e.context(format!("ADD for {who}")))?;
                Some(pod)
            }
            _ => None,
        };
        let outcome = self.attach(call, deadline, pod.as_ref(), prev.as_ref());
        if let (Some(c), Some(pod)) = (cluster, &pod) {
            match &outcome {
                Ok(done) => c.event(pod, false, "AddedInterface", &done.summary),
                // A cancelled call makes no further API calls.
                Err(e) if !cancel.is_cancelled() => c.event(pod, true, "FailedAttach", &e.msg),
                Err(_) => {}
            }
        }
        outcome.map(|done| done.result)
    }

    fn attach(
        &self,
        call: &Call<'_>,
        deadline: Instant,
        pod: Option<&Pod>,
        prev: Option<&CniResult>,
    ) -> Result<Attached, CniError> {
        let (req, conf, cancel) = (call.req, call.conf, call.cancel);
        let who = req.who();
        let files = self.files(conf);
        let networks = resolve(
            conf,
            Sources {
                files: files.as_ref(),
                cluster: self.cluster.as_deref().map(|c| c as &dyn ClusterView),
                pod,
            },
        )
        .map_err(|e| e.context(format!("ADD for {who}")))?;
        let mut attachments = plan(req.ifname(), &conf.runtime_config, networks)
            .map_err(|e| e.context(format!("ADD for {who}")))?;
        let chain = self.chain(call, Some(deadline));
        chain.preflight(&attachments)?;

        let cache = ResultCache::new(&conf.cni_dir);
        let key = Key {
            network: conf.cache_network(),
            container_id: req.container_id(),
            ifname: req.ifname(),
        };
        // Held to the end, rollback included: no DEL or re-ADD of this container runs meanwhile.
        let lock = cache.lock(&key, deadline, cancel)?;
        if let Loaded::Found(mut stale) = cache.load(&key) {
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
            sweep_strays(self.netns.as_ref(), &chain, &stale);
            if let Some(c) = self.cluster.as_deref() {
                withdraw_claims(c, &mut stale.attachments, &who);
                if stale.attachments.iter().any(published) {
                    // Kept for the next try (an ADD again, or the runtime's DEL).
                    stale.attachments.retain(published);
                    cache.store(&stale)?;
                    return Err(CniError::new(
                        Code::TRY_AGAIN_LATER,
                        format!("ADD for {who}: an earlier ADD's network data could not be taken out of its DRA claims"),
                    ));
                }
            }
            cache.remove(&key)?;
        }
        for a in attachments.iter_mut().filter(|a| a.device.is_some()) {
            if declares(&a.network, "CNIDeviceInfoFile") {
                let file = devices::cni_device_info_path(
                    &conf.device_info_dir,
                    &a.status_name,
                    req.container_id(),
                    &a.ifname,
                );
                if let Some(dir) = file.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                a.inputs.capability_args.insert(
                    "CNIDeviceInfoFile".into(),
                    Value::String(file.display().to_string()),
                );
                a.device_info_file = Some(file.display().to_string());
            }
        }
        // One look at the pod's links: for the names already taken, and for the sweep of an
        // ADD cut short.
        let links_now = self.links_now(req);
        if self.cluster.is_some() {
            self.refuse_taken_names(req, &attachments, links_now.as_ref().map(|(_, n)| n))
                .map_err(|e| e.context(format!("ADD for {who}")))?;
        }
        // One write names everything this ADD may create, before any delegate runs; a crash at
        // any point leaves a record DEL can work from (DEL of what was never added succeeds).
        let mut record = SandboxRecord {
            kind: KIND.into(),
            network: key.network.to_string(),
            container_id: req.container_id().into(),
            if_name: req.ifname().into(),
            netns: req.netns.clone().unwrap_or_default(),
            cni_args: delegate_args(&req.args_raw),
            pod: PodRef::from_request(req).map(|r| r.to_string()),
            created: crate::cache::now_rfc3339(),
            config: conf.raw.clone(),
            cni_path: req.path.clone(),
            attachments: attachments.iter().map(pending).collect(),
            del_attempts: 0,
            links_before: links_now.map(|(l, _)| l),
        };
        cache.store(&record)?;
        let mut txn = || -> Result<Attached, CniError> {
            let results = chain.add(&attachments, prev, &mut record)?;
            let results = self.apply_default_routes(req, &attachments, &mut record, results)?;
            // Every delegate went through: from here on their DELs are trusted to undo them.
            record.links_before = None;
            if let (Some(c), Some(pod)) = (self.cluster.as_deref(), pod) {
                if attachments.iter().any(|a| a.claim.is_some()) {
                    chain.check_live()?;
                    // Recorded before the writes: a crash after one still has DEL look.
                    for a in record.attachments.iter_mut() {
                        mark_pending(a, req.container_id());
                    }
                    cache.store(&record)?;
                    publish_claims(c, pod, &attachments, &results, &mut record)?;
                }
            }
            let done = summarize(conf, &attachments, &record, results)?;
            // The final record goes over a durable earlier version: the pending record stored
            // before any delegate ran, or (DRA) the claim-pending one stored before the claim
            // writes. With a pod, its write (an fdatasync) and the status write (a round trip to
            // the API server) run side by side, and the call waits for both: either failing
            // fails the ADD and undoes it.
            match (self.cluster.as_deref(), pod) {
                (Some(c), Some(pod)) => {
                    chain.check_live()?;
                    let (stored, patched) = std::thread::scope(|s| {
                        let writer = std::thread::Builder::new()
                            .name("plexus-record".into())
                            .spawn_scoped(s, || cache.store_over_durable(&record));
                        match writer {
                            Ok(w) => {
                                let patched = c.set_network_status(pod, &done.status);
                                let stored = w.join().unwrap_or_else(|_| {
                                    Err(CniError::new(
                                        Code::IO,
                                        "writing the cache record panicked",
                                    ))
                                });
                                (stored, Some(patched))
                            }
                            // No thread to be had: one after the other, record first.
                            Err(_) => match cache.store_over_durable(&record) {
                                Ok(()) => (Ok(()), Some(c.set_network_status(pod, &done.status))),
                                Err(e) => (Err(e), None),
                            },
                        }
                    });
                    if let Err(e) = stored {
                        if let Some(Ok(())) = patched {
                            // The status names what the undo is about to remove. What the pod
                            // had before names nothing that exists either (an earlier sandbox's
                            // interfaces, or this container's, torn down above): the
                            // annotation goes (best effort; the ADD fails either way).
                            if let Err(r) = c.clear_network_status(pod) {
                                tracing::warn!("ADD for {who}: removing the pod's network-status after the failed record write: {r}");
                            }
                        }
                        return Err(e);
                    }
                    patched.unwrap_or(Ok(()))?;
                }
                _ => cache.store_over_durable(&record)?,
            }
            Ok(done)
        };
        match txn() {
            Ok(done) => Ok(done),
            Err(e) => {
                let e = e.context(format!("ADD for {who}"));
                if let Some(c) = self.cluster.as_deref() {
                    withdraw_claims(c, &mut record.attachments, &who);
                }
                Err(undo(
                    self.netns.as_ref(),
                    &chain,
                    &cache,
                    lock,
                    &mut record,
                    e,
                ))
            }
        }
    }

    /// The pod's namespace and links now, for [`sweep_strays`]; none when there is no pod
    /// namespace to look at, or it is plexus's own (never swept).
    fn links_now(&self, req: &Request) -> Option<(crate::cache::PodLinks, Vec<String>)> {
        let netns = req.netns.as_deref().filter(|n| !n.is_empty())?;
        if self.netns.is_own(netns).unwrap_or(true) {
            return None;
        }
        match self.netns.pod_links(netns) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(
                    "ADD for {}: cannot list the links of {netns}: {e}",
                    req.who()
                );
                None
            }
        }
    }

    /// NPWG §4.1.1.2 and the spec: an interface name already present in the pod is an error.
    /// `known`: the pod's link names when they were just listed.
    fn refuse_taken_names(
        &self,
        req: &Request,
        attachments: &[Attachment],
        known: Option<&Vec<String>>,
    ) -> Result<(), CniError> {
        let netns = req.netns.as_deref().unwrap_or("");
        let links = match known {
            Some(names) => names.clone(),
            None => self.netns.link_names(netns).map_err(|e| {
                CniError::new(
                    Code::INVALID_ENV,
                    format!("cannot list the links of CNI_NETNS {netns}: {e}"),
                )
            })?,
        };
        for a in attachments {
            if links.iter().any(|n| n == &a.ifname) {
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
    /// results (and so the cache, the printed result and network-status) say what is really there.
    fn apply_default_routes(
        &self,
        req: &Request,
        attachments: &[Attachment],
        record: &mut SandboxRecord,
        mut results: Vec<CniResult>,
    ) -> Result<Vec<CniResult>, CniError> {
        let requests: Vec<(usize, std::net::IpAddr)> = attachments
            .iter()
            .enumerate()
            .flat_map(|(i, a)| a.default_route.iter().map(move |g| (i, *g)))
            .collect();
        if requests.is_empty() {
            return Ok(results);
        }
        let netns = req.netns.as_deref().unwrap_or("");
        for (owner, gw) in requests {
            let any = if gw.is_ipv6() { "::/0" } else { "0.0.0.0/0" };
            let a = &attachments[owner];
            self.netns
                .set_default_route(netns, gw, &a.ifname)
                .map_err(|e| {
                    CniError::new(
                        Code::IO,
                        format!(
                            "setting default route via {gw} on {} (network {}): {e}",
                            a.ifname, a.status_name
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
    /// whatever the config says (`conf` is `None` when it is unusable): a DEL that follows a
    /// refused ADD has nothing to undo. Never needs the API server.
    pub fn del(&self, req: &Request, conf: Option<&NetConf>) -> Result<(), CniError> {
        let (Some(id), Some(ifname)) = (req.container_id.as_deref(), req.ifname.as_deref()) else {
            return req.require();
        };
        if let Err(e) = validate_container_id(id).and_then(|()| validate_ifname(ifname)) {
            tracing::warn!("DEL: {e}; nothing can have been attached");
            return Ok(());
        }
        let cni_dir = conf.map_or_else(|| PathBuf::from(DEFAULT_CNI_DIR), |c| c.cni_dir.clone());
        let cache = ResultCache::new(&cni_dir);
        let network = match conf {
            Some(c) => c.cache_network().to_string(),
            None => sniff_name(&req.stdin).unwrap_or_else(|| "plexus".into()),
        };
        let key = Key {
            network: &network,
            container_id: id,
            ifname,
        };
        let mut chain = match conf {
            Some(c) => Chain {
                observer: self.observer.clone(),
                chroot: self.chroot.clone(),
                ..chain_for(req, c, Cancel::never(), None)
            },
            None => Chain {
                container_id: id.into(),
                netns: req.netns.clone().unwrap_or_default(),
                netns_override: req.netns_override,
                cni_args: delegate_args(&req.args_raw),
                search_path: search_path(Path::new(DEFAULT_BIN_DIR), req),
                env: vec![],
                timeout: Duration::from_secs(60),
                deadline: None,
                cancel: Cancel::never(),
                who: req.who(),
                observer: self.observer.clone(),
                chroot: self.chroot.clone(),
            },
        };
        // In plexus's own netns without the override, delegates must not touch links there (a
        // DEL of "eth0" would remove the node's): they get no netns, as for one already gone.
        if !req.netns_override
            && !chain.netns.is_empty()
            && self.netns.is_own(&chain.netns).unwrap_or(false)
        {
            tracing::warn!(
                "DEL for {}: CNI_NETNS {} is plexus's own network namespace and CNI_NETNS_OVERRIDE is not set; delegates get no netns",
                req.who(),
                chain.netns
            );
            chain.netns.clear();
        }
        let lock = cache.lock(&key, Instant::now() + DEL_LOCK_WAIT, &Cancel::never())?;
        match cache.load(&key) {
            Loaded::Missing => {
                lock.remove();
                Ok(())
            }
            Loaded::Found(record) => {
                if chain.cni_args.is_empty() {
                    chain.cni_args = record.cni_args.clone();
                }
                let who = req.who();
                del_record(
                    self.netns.as_ref(),
                    &chain,
                    &cache,
                    lock,
                    record,
                    &who,
                    &|gone| self.withdraw_gone(gone, &who),
                )
            }
            Loaded::Unreadable(why) => {
                tracing::warn!("DEL for {}: cache unreadable ({why}); deleting the configured networks without prevResult", req.who());
                if let Some(c) = conf {
                    self.del_configured(&chain, c, ifname);
                }
                // A record someone else wrote is kept, set aside, for an admin to look at.
                match cache.quarantine(&key) {
                    Some(to) => tracing::warn!(
                        "DEL for {}: the untrusted record is kept as {}",
                        req.who(),
                        to.display()
                    ),
                    None => cache.remove(&key)?,
                }
                lock.remove();
                Ok(())
            }
        }
    }

    /// Take plexus's network data out of the DRA claims of attachments that are gone, through
    /// the cluster the call has or one built for it.
    fn withdraw_gone(&self, gone: &mut [AttachmentRecord], who: &str) {
        if !gone.iter().any(published) {
            return;
        }
        match self.cluster.clone().or_else(|| self.connect.as_ref()?()) {
            Some(c) => withdraw_claims(c.as_ref(), gone, who),
            None => tracing::warn!(
                "{who}: no API server to take plexus's network data out of the DRA claims"
            ),
        }
    }

    /// Best-effort DEL of the networks the config names, for when the cache cannot tell us.
    fn del_configured(&self, chain: &Chain, conf: &NetConf, ifname: &str) {
        let files = self.files(conf);
        let sources = Sources {
            files: files.as_ref(),
            cluster: None,
            pod: None,
        };
        let Ok(networks) = resolve(conf, sources) else {
            return;
        };
        let Ok(attachments) = plan(ifname, &conf.runtime_config, networks) else {
            return;
        };
        for a in attachments.iter().rev() {
            if let Err(e) = chain.run_network(
                Command::Del,
                &a.network,
                &a.ifname,
                &a.inputs,
                None,
                &Map::new(),
            ) {
                tracing::warn!("{e}");
            }
        }
    }

    pub fn check(&self, call: &Call<'_>) -> Result<(), CniError> {
        let (req, conf) = (call.req, call.conf);
        require_version(conf, Command::Check, Version::V0_4_0)?;
        self.refuse_own_netns(req)?;
        let cache = ResultCache::new(&conf.cni_dir);
        let key = Key {
            network: conf.cache_network(),
            container_id: req.container_id(),
            ifname: req.ifname(),
        };
        let deadline = Instant::now() + conf.add_timeout;
        let _lock = cache.lock(&key, deadline, call.cancel)?;
        match cache.load(&key) {
            Loaded::Found(record) => self.chain(call, Some(deadline)).check(&record),
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
    /// network that speaks 1.1.0, found in binDir and the runtime's CNI_PATH, whose errors are ours.
    pub fn status(&self, call: &Call<'_>) -> Result<(), CniError> {
        let conf = call.conf;
        require_version(conf, Command::Status, Version::V1_1_0)?;
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
        let chain = Chain {
            who: "STATUS".into(),
            ..self.chain(call, Some(Instant::now() + conf.add_timeout))
        };
        for network in conf.static_networks(self.files(conf).as_ref())? {
            if network.cni_version >= Version::V1_1_0 {
                chain.run_network(
                    Command::Status,
                    &network,
                    "",
                    &DelegateInputs::default(),
                    None,
                    &Map::new(),
                )?;
            }
        }
        Ok(())
    }

    /// GC: DEL every attachment this plexus network (the config's `name`) cached whose
    /// (containerID, ifname) the runtime no longer lists, keeping going past failures; then GC
    /// every known network that speaks 1.1.0 with the attachments of its own still valid. Every
    /// error is reported.
    pub fn gc(&self, call: &Call<'_>) -> Result<(), CniError> {
        let conf = call.conf;
        require_version(conf, Command::Gc, Version::V1_1_0)?;
        let Some(valid) = &conf.valid_attachments else {
            return Err(CniError::new(
                Code::INVALID_CONFIG,
                "GC needs \"cni.dev/valid-attachments\"",
            ));
        };
        let is_valid = |id: &str, ifname: &str| valid.iter().any(|(v, f)| v == id && f == ifname);
        let cache = ResultCache::new(&conf.cni_dir);
        cache.sweep_temp_files();
        let network = conf.cache_network();
        let mut errors = Vec::new();
        let mut kept: Vec<SandboxRecord> = Vec::new();
        for (path, loaded) in cache.all() {
            let record = match loaded {
                Loaded::Found(r) if r.network == network => r,
                Loaded::Found(r) if r.network.is_empty() => {
                    tracing::info!(
                        "GC: leaving {} alone: written by plexus < 0.2, it does not say which network made it (the runtime's DEL removes it)",
                        path.display()
                    );
                    continue;
                }
                Loaded::Found(_) | Loaded::Missing => continue,
                Loaded::Unreadable(why) => {
                    tracing::warn!("GC: leaving unreadable cache file alone: {why}");
                    continue;
                }
            };
            if is_valid(&record.container_id, &record.if_name) {
                kept.push(record);
                continue;
            }
            let key = record.key();
            let lock = match cache.lock(&key, Instant::now() + DEL_LOCK_WAIT, call.cancel) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(e.context("GC"));
                    continue;
                }
            };
            // Re-read under the lock: a DEL may have finished while we listed.
            let Loaded::Found(record) = cache.load(&key) else {
                lock.remove();
                continue;
            };
            tracing::info!(
                "GC: removing stale attachments of container {} ({})",
                record.container_id,
                path.display()
            );
            let who = format!("container {} (GC)", record.container_id);
            let chain = Chain {
                container_id: record.container_id.clone(),
                netns: record.netns.clone(),
                netns_override: false,
                cni_args: record.cni_args.clone(),
                who: who.clone(),
                ..self.chain(call, None)
            };
            if let Err(e) = del_record(
                self.netns.as_ref(),
                &chain,
                &cache,
                lock,
                record,
                &who,
                &|gone| self.withdraw_gone(gone, &who),
            ) {
                errors.push(e);
            }
        }

        // Forward GC, each network with the attachments of its own that are still valid.
        let mut networks: Vec<Network> = conf
            .static_networks(self.files(conf).as_ref())
            .unwrap_or_default();
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
            ..self.chain(call, None)
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
            // Both keys, as libcni ≥ 1.2.3 sends them (the spec's, and the one it first used).
            let mut extra = Map::new();
            extra.insert(
                "cni.dev/valid-attachments".into(),
                Value::Array(list.clone()),
            );
            extra.insert("cni.dev/attachments".into(), Value::Array(list));
            if let Err(e) = chain.run_network(
                Command::Gc,
                network,
                "",
                &DelegateInputs::default(),
                None,
                &extra,
            ) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(join_errors(errors))
        }
    }
}

/// What a successful ADD leaves for the front door and the reports.
struct Attached {
    /// The cluster network's result (what plexus prints).
    result: CniResult,
    /// The network-status annotation's value.
    status: String,
    /// The Event's message.
    summary: String,
}

/// An attachment as the pending record lists it, before its delegates ran.
pub(crate) fn pending(a: &Attachment) -> AttachmentRecord {
    AttachmentRecord {
        network: a.network.name.clone(),
        ifname: a.ifname.clone(),
        cluster: a.cluster,
        config: a.network.bytes.clone(),
        inputs: a.inputs.clone(),
        result: None,
        device_info_file: a.device_info_file.clone(),
        status_name: a.status_name.clone(),
        device: a.device.clone(),
        selection: a.selection.clone(),
        claim: a.claim.clone(),
    }
}

fn summarize(
    conf: &NetConf,
    attachments: &[Attachment],
    record: &SandboxRecord,
    results: Vec<CniResult>,
) -> Result<Attached, CniError> {
    let status = network_status(conf, record);
    let summary = attachments
        .iter()
        .zip(&results)
        .map(|(a, r)| {
            let ips: Vec<&str> = r.ips.iter().map(|i| i.address.as_str()).collect();
            format!("{} {:?} from {}", a.ifname, ips, a.status_name)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let cluster = attachments
        .iter()
        .position(|a| a.cluster)
        .expect("the cluster network is planned first");
    Ok(Attached {
        result: results.into_iter().nth(cluster).expect("one result each"),
        status,
        summary: format!("Added interfaces: {summary}"),
    })
}

/// The network-status annotation of a sandbox, from what its record holds: after an ADD, and
/// after a hot-plug changed it. Attachments without a result (still pending) are left out.
pub fn network_status(conf: &NetConf, record: &SandboxRecord) -> String {
    let results: Vec<Option<CniResult>> = record
        .attachments
        .iter()
        .map(|a| {
            let version = Network::from_bytes(a.config.as_bytes(), "cache")
                .map(|n| n.cni_version)
                .unwrap_or(Version::LATEST);
            a.result
                .clone()
                .and_then(|v| CniResult::from_value(v, version).ok())
                .map(|(r, _)| r)
        })
        .collect();
    let inputs: Vec<StatusInput> = record
        .attachments
        .iter()
        .zip(&results)
        .filter_map(|(a, r)| {
            Some(StatusInput {
                name: &a.status_name,
                ifname: &a.ifname,
                result: r.as_ref()?,
                // §5.3.5: the cluster-wide default network's entry, even when a selection's
                // `default-route` moved the pod's default route elsewhere (that one says so).
                default: a.cluster,
                default_route: a
                    .selection
                    .as_ref()
                    .and_then(|s| s.params.get("default-route")?.as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|g| g.as_str().map(String::from))
                    .collect(),
                device_info: a.device.as_ref().and_then(|(resource, id)| {
                    devices::device_info(
                        a.device_info_file.as_deref(),
                        &devices::dp_device_info_path(&conf.device_info_dir, resource, id),
                    )
                }),
            })
        })
        .collect();
    serde_json::to_string(&crate::k8s::status::build(&inputs)).expect("status serializes")
}

/// Write each claim-backed attachment's network data into its ResourceClaim's status
/// (KEP-4817), and note in the record what was written. On a failure, what was written is taken
/// out again.
fn publish_claims(
    c: &dyn Cluster,
    pod: &Pod,
    attachments: &[Attachment],
    results: &[CniResult],
    record: &mut SandboxRecord,
) -> Result<(), CniError> {
    let pod_who = pod_name(pod);
    for (i, (a, r)) in attachments.iter().zip(results).enumerate() {
        let Some(dev) = record.attachments[i].claim.clone() else {
            continue;
        };
        match publish_one(c, &pod_who, &dev, a, r) {
            Ok(Some(entry)) => {
                if let Some(d) = record.attachments[i].claim.as_mut() {
                    d.status_entry = entry;
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Those not tried yet were never written; this one may have been.
                for a in record.attachments.iter_mut().skip(i + 1) {
                    if let Some(d) = a.claim.as_mut() {
                        d.status_entry = crate::k8s::dra::StatusEntry::None;
                    }
                }
                withdraw_claims(c, &mut record.attachments, &pod_who);
                return Err(e);
            }
        }
    }
    Ok(())
}

pub(crate) fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Mark an attachment's claim data as about to be written, for this sandbox and interface.
pub(crate) fn mark_pending(a: &mut AttachmentRecord, sandbox: &str) {
    if let Some(d) = a.claim.as_mut() {
        d.status_entry = crate::k8s::dra::StatusEntry::Pending;
        d.interface = Some(a.ifname.clone());
        d.sandbox = Some(sandbox.to_string());
    }
}

/// Write one attachment's network data into its claim's status (`dev`, as its record has it).
pub(crate) fn publish_one(
    c: &dyn Reporter,
    pod_who: &str,
    dev: &crate::k8s::dra::ClaimDevice,
    a: &Attachment,
    r: &CniResult,
) -> Result<Option<crate::k8s::dra::StatusEntry>, CniError> {
    let data = crate::k8s::dra::NetworkData::from_result(&a.ifname, r);
    let message = format!(
        "{} of pod {pod_who} {} for network {}",
        a.ifname,
        crate::k8s::dra::sandbox_mark(dev.sandbox.as_deref().unwrap_or("")),
        a.status_name
    );
    c.publish_claim_device(dev, &data, &message)
        .map(Some)
        .map_err(|e| e.context(format!("network {}", a.status_name)))
}

pub(crate) fn published(a: &AttachmentRecord) -> bool {
    a.claim
        .as_ref()
        .is_some_and(|d| d.status_entry != crate::k8s::dra::StatusEntry::None)
}

/// Take plexus's network data out of the claims of these attachments; best effort, logged.
pub(crate) fn withdraw_claims(c: &dyn Reporter, attachments: &mut [AttachmentRecord], who: &str) {
    for a in attachments.iter_mut() {
        let Some(dev) = a
            .claim
            .as_mut()
            .filter(|d| d.status_entry != crate::k8s::dra::StatusEntry::None)
        else {
            continue;
        };
        match c.withdraw_claim_device(dev) {
            Ok(()) => dev.status_entry = crate::k8s::dra::StatusEntry::None,
            Err(e) => tracing::warn!("{who}: {dev}: taking plexus's network data out: {e}"),
        }
    }
}

/// Undo an ADD that failed after attachments were made, in the one place that does it: DEL them
/// all in reverse; keep in the cache only those whose DEL failed (for the runtime's DEL to retry).
/// Returns `cause`, with the rollback's errors in its details.
fn undo(
    ops: &dyn NetnsOps,
    chain: &Chain,
    cache: &ResultCache,
    lock: Lock,
    record: &mut SandboxRecord,
    cause: CniError,
) -> CniError {
    let failed = chain.del_attachments(record);
    if failed.is_empty() {
        sweep_strays(ops, chain, record);
        // Network data a claim still holds (taking it out failed): kept, with what it belongs
        // to, for the runtime's DEL to try again.
        let unwithdrawn: Vec<AttachmentRecord> = record
            .attachments
            .iter()
            .filter(|a| published(a))
            .cloned()
            .collect();
        if !unwithdrawn.is_empty() {
            record.attachments = unwithdrawn;
            record.links_before = None;
            if let Err(e) = cache.store(record) {
                tracing::error!("rollback: keeping claim data for the runtime's DEL: {e}");
            }
            return cause;
        }
        match cache.remove(&record.key()) {
            Ok(()) => lock.remove(),
            Err(e) => tracing::error!("rollback: {e}"),
        }
        return cause;
    }
    let details: Vec<String> = failed.iter().map(|(_, e)| e.to_string()).collect();
    record.attachments = failed.into_iter().map(|(a, _)| a).collect();
    if let Err(e) = cache.store(record) {
        tracing::error!("rollback: keeping failed attachments for the runtime's DEL: {e}");
    }
    let mut cause = cause;
    let rb = format!("rollback left errors: {}", details.join("; "));
    cause.details = if cause.details.is_empty() {
        rb
    } else {
        format!("{}; {rb}", cause.details)
    };
    cause
}

/// Once every DEL of a record whose ADD was cut short (a delegate killed or failing midway, or
/// plexus or the daemon killed: its `links_before` is still there) has succeeded, clear away what
/// that ADD's delegates left in the pod that their DELs could not find — a macvlan killed between
/// creating its link under a temporary `veth…` name and renaming it, a device moved in and not yet
/// renamed. Only links that were not there before the ADD and that it could have made are
/// touched ([`crate::netns::decide`]); only in the namespace the ADD ran in (by inode, not path).
/// Best effort: logged, never an error.
fn sweep_strays(ops: &dyn NetnsOps, chain: &Chain, record: &SandboxRecord) {
    let Some(before) = &record.links_before else {
        return;
    };
    if chain.netns.is_empty() || chain.netns != record.netns {
        return;
    }
    if ops.is_own(&chain.netns).unwrap_or(true) {
        return;
    }
    match ops.sweep(&chain.netns, before, &sweep_scope(record)) {
        Ok(done) => {
            for line in done {
                tracing::warn!(
                    "{}: {line} in {}, left by an ADD that was cut short",
                    chain.who,
                    chain.netns
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            "{}: not looking for links left in {}: {e}",
            chain.who,
            chain.netns
        ),
    }
}

/// The names a record's ADD could have left links under: its interfaces, and the node devices
/// its configs name (host-device's `device`, at the top or in any plugin of a conflist).
fn sweep_scope(record: &SandboxRecord) -> crate::netns::SweepScope {
    let mut scope = crate::netns::SweepScope::default();
    for a in &record.attachments {
        scope.ifnames.push(a.ifname.clone());
        let Ok(v) = serde_json::from_str::<Value>(&a.config) else {
            continue;
        };
        let plugins = v["plugins"].as_array().cloned().unwrap_or_default();
        for p in std::iter::once(&v).chain(plugins.iter()) {
            if let Some(d) = p["device"].as_str().filter(|d| !d.is_empty()) {
                scope.devices.push(d.to_string());
            }
        }
    }
    scope
}

/// DEL a record's attachments; remove the record when all are gone, else keep the failed ones
/// for the next DEL, giving up after [`MAX_DEL_ATTEMPTS`] so the pod is never stranded.
/// `withdraw` takes plexus's network data out of the DRA claims of the attachments that go
/// (DELeted, or given up on), before the record says they are gone.
fn del_record(
    ops: &dyn NetnsOps,
    chain: &Chain,
    cache: &ResultCache,
    lock: Lock,
    mut record: SandboxRecord,
    who: &str,
    withdraw: &dyn Fn(&mut [AttachmentRecord]),
) -> Result<(), CniError> {
    let failed = chain.del_attachments(&record);
    // Before the record changes: a DEL killed after this does it again (both are idempotent).
    let mut gone: Vec<AttachmentRecord> = record
        .attachments
        .iter()
        .filter(|a| !failed.iter().any(|(f, _)| f == *a))
        .cloned()
        .collect();
    withdraw(&mut gone);
    if failed.is_empty() {
        sweep_strays(ops, chain, &record);
        cache.remove(&record.key())?;
        lock.remove();
        return Ok(());
    }
    record.del_attempts += 1;
    let errors: Vec<CniError> = failed.iter().map(|(_, e)| e.clone()).collect();
    if record.del_attempts >= MAX_DEL_ATTEMPTS {
        let mut given_up: Vec<AttachmentRecord> = failed.iter().map(|(a, _)| a.clone()).collect();
        withdraw(&mut given_up);
        tracing::error!(
            "DEL for {who}: giving up after {} attempts; these may be left behind: {}",
            record.del_attempts,
            join_errors(errors)
        );
        cache.remove(&record.key())?;
        lock.remove();
        return Ok(());
    }
    record.attachments = failed.into_iter().map(|(a, _)| a).collect();
    cache.store(&record)?;
    Err(join_errors(errors))
}

fn require_version(conf: &NetConf, cmd: Command, min: Version) -> Result<(), CniError> {
    if conf.cni_version >= min {
        return Ok(());
    }
    let msg = if cmd == Command::Check {
        "config version does not allow CHECK".to_string()
    } else {
        format!("config version does not allow {cmd}")
    };
    Err(
        CniError::new(Code::INCOMPATIBLE_VERSION, msg).with_details(format!(
            "config is \"{}\"; {cmd} needs {min} or later",
            conf.cni_version
        )),
    )
}

/// Wait for the readiness indicator file (NPWG §6.1.2), up to `readinessTimeoutSeconds` and the
/// call's deadline; a cancelled call stops waiting at once.
fn wait_ready(conf: &NetConf, deadline: Instant, cancel: &Cancel) -> Result<(), CniError> {
    let Some(file) = &conf.readiness_indicator_file else {
        return Ok(());
    };
    let until = (Instant::now() + conf.readiness_timeout).min(deadline);
    loop {
        if file.exists() {
            return Ok(());
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || cancel.sleep(left.min(Duration::from_millis(100))) {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!(
                    "cluster network is not ready: readiness indicator file {} does not exist",
                    file.display()
                ),
            ));
        }
    }
}

pub fn search_path(bin_dir: &Path, req: &Request) -> Vec<PathBuf> {
    let mut p = vec![bin_dir.to_path_buf()];
    p.extend(req.path.iter().filter(|d| d.as_path() != bin_dir).cloned());
    p
}

pub(crate) fn chain_for(
    req: &Request,
    conf: &NetConf,
    cancel: Cancel,
    deadline: Option<Instant>,
) -> Chain {
    Chain {
        container_id: req.container_id().to_string(),
        netns: req.netns.clone().unwrap_or_default(),
        netns_override: req.netns_override,
        cni_args: delegate_args(&req.args_raw),
        search_path: search_path(&conf.bin_dir, req),
        env: conf.delegate_env.clone(),
        timeout: conf.delegate_timeout,
        deadline,
        cancel,
        who: req.who(),
        observer: None,
        chroot: None,
    }
}

/// The `name` of a config too broken to parse as a whole, for finding its cache record.
fn sniff_name(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin)
        .ok()?
        .get("name")?
        .as_str()
        .filter(|n| crate::cni::request::validate_network_name(n).is_ok())
        .map(String::from)
}

pub mod hotplug;
#[cfg(test)]
mod tests;
