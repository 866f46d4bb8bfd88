//! Hot-plug in the daemon: a reconciler that brings each running sandbox on this node in line
//! with its pod's `k8s.v1.cni.cncf.io/networks` (through the engine's [`Engine::hotplug`], the
//! same planner and chain as ADD), and Multus's `/delegate` API for clusters that run
//! multus-dynamic-networks-controller.
//!
//! Level-triggered: every pod event queues the pod (once, however many events arrive); a worker
//! reconciles the queue in batches once the watches have synced, reading each pod's records
//! from the on-disk cache (the truth) where an index by pod says they are (see `Reconciler`). A
//! pod whose annotation has not changed since it was last reconciled is skipped; a pod deleted
//! from the API is forgotten. A restart queues every pod of the initial list, so it resumes
//! from the cache and the current annotation. A sandbox busy with an ADD or DEL is retried a
//! moment later; a failed attach is retried with backoff (one Warning Event per try, at most
//! one a minute per pod at the end of the backoff).
//!
//! [`Engine::hotplug`]: crate::engine::Engine::hotplug

use super::server::{Daemon, InterfaceAttributes};
use crate::cache::{Loaded, ResultCache, SandboxRecord};
use crate::cancel::Cancel;
use crate::cni::error::{CniError, Code};
use crate::cni::{CniResult, Request};
use crate::engine::hotplug::{DelegateCall, HOTPLUG_ANNOTATION, HOTPLUG_REPLACE_ANNOTATION};
use crate::k8s::annotations::parse_networks;
use crate::k8s::{annotation, NETWORKS_ANNOTATION};
use k8s_openapi::api::core::v1::Pod;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// `/delegate`: one network into or out of a running sandbox, as Multus's daemon serves it to
/// multus-dynamic-networks-controller (its `interfaceAttributes` as a selection element).
pub fn delegate(
    daemon: &Daemon,
    req: &Request,
    attributes: Option<&InterfaceAttributes>,
    config: &[u8],
    cancel: &Cancel,
) -> Result<Option<CniResult>, CniError> {
    req.require()?;
    let name = serde_json::from_slice::<serde_json::Value>(config)
        .ok()
        .and_then(|v| v.get("name")?.as_str().map(str::to_string))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "{} for {} (/delegate): the config has no network name",
                    req.command(),
                    req.who()
                ),
            )
        })?;
    // The attributes become a selection element, parsed by the annotation's own parser.
    let mut element = serde_json::Map::new();
    element.insert("name".into(), name.into());
    if let Some(a) = attributes {
        if !a.ips.is_empty() {
            element.insert("ips".into(), a.ips.clone().into());
        }
        if !a.mac.is_empty() {
            element.insert("mac".into(), a.mac.clone().into());
        }
        if let Some(args) = &a.cni_args {
            element.insert("cni-args".into(), args.clone().into());
        }
    }
    let selection = parse_networks(&serde_json::Value::from(vec![element]).to_string())
        .map_err(|e| e.context(format!("{} for {} (/delegate)", req.command(), req.who())))?
        .pop()
        .expect("one element");
    daemon.engine.delegate(
        &DelegateCall {
            req,
            config,
            selection: &selection,
            cancel,
        },
        &daemon.cni_dirs(),
        &|b| daemon.config.merge(b),
    )
}

type PodKey = (String, String);

/// What a pod looked like when it was last reconciled: hot-plug runs again only when this
/// changes, or a retry is due.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Signature {
    uid: String,
    networks: Option<String>,
    replace: Option<String>,
    opted_out: bool,
}

fn signature(pod: &Pod) -> Signature {
    Signature {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        networks: annotation(pod, NETWORKS_ANNOTATION).map(str::to_string),
        replace: annotation(pod, HOTPLUG_REPLACE_ANNOTATION).map(str::to_string),
        opted_out: annotation(pod, HOTPLUG_ANNOTATION) == Some("false"),
    }
}

struct Seen {
    signature: Signature,
    /// Failures so far (for the backoff); 0 once reconciled cleanly.
    failures: u32,
}

/// Where a sandbox's record is: its cache dir and key (what an ADD just wrote).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordAt {
    pub dir: PathBuf,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

#[derive(Default)]
struct Queue {
    order: VecDeque<PodKey>,
    queued: HashSet<PodKey>,
    /// Pods to reconcile even if unchanged (after an ADD of theirs), with the records those
    /// ADDs wrote: read alone, with no scan of the whole cache.
    forced: HashMap<PodKey, Vec<RecordAt>>,
    /// Retries not due yet.
    later: Vec<(Instant, PodKey)>,
}

/// The reconciler: a queue of pods (each at most once) and one worker.
pub struct Reconciler {
    queue: Mutex<Queue>,
    wake: Notify,
    seen: Mutex<HashMap<PodKey, Seen>>,
    /// Where each pod's records are (`namespace/name`), from one scan of the cache dirs and the
    /// daemon's own ADDs since; a record that is gone (DEL) is dropped when next read. Rebuilt
    /// (at most once per batch) when a pod's annotation changed since it was last reconciled,
    /// so a record written without the daemon (the shim's own ADD) is still found then.
    index: Mutex<Option<HashMap<String, Vec<RecordAt>>>>,
    /// While a rescan runs (without the index's lock, so the pod watch and ADDs are not held
    /// up), the records the daemon's ADDs wrote meanwhile: merged into the new index.
    scanning: Mutex<Option<Vec<(String, RecordAt)>>>,
}

/// How long a busy sandbox waits before the next try, and the longest backoff of a failure.
const BUSY_RETRY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Pods reconciled per batch (one cache read each).
const BATCH: usize = 256;

impl Reconciler {
    pub fn new() -> Arc<Reconciler> {
        Arc::new(Reconciler {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            seen: Mutex::new(HashMap::new()),
            index: Mutex::new(None),
            scanning: Mutex::new(None),
        })
    }

    /// Queue a pod (the watch hook: cheap, never blocks on I/O).
    pub fn enqueue(&self, pod: &Pod) {
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return;
        };
        let key = (ns.clone(), name.clone());
        if let Some(s) = self.seen.lock().expect("not poisoned").get(&key) {
            if s.failures == 0 && s.signature == signature(pod) {
                return;
            }
        }
        self.push(key, None);
    }

    /// Forget a pod the API deleted: what was seen of it and where its records were (the
    /// runtime's DEL removes the records). The pod is queued too: a reconcile of it still in
    /// flight would remember it again when it ends, and the queued one, which finds no pod in
    /// the watch cache, forgets it after that.
    pub fn forget(&self, pod: &Pod) {
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return;
        };
        let key = (ns.clone(), name.clone());
        self.seen.lock().expect("not poisoned").remove(&key);
        if let Some(index) = self.index.lock().expect("not poisoned").as_mut() {
            index.remove(&format!("{ns}/{name}"));
        }
        self.push(key, None);
    }

    /// After a (re)list: forget every pod that is not among `now` (deleted while the watch was
    /// down, so no delete event came), so a long-lived daemon keeps nothing of pods long gone.
    /// Each pod dropped is queued too, as in [`Reconciler::forget`], so that a reconcile of it
    /// still in flight cannot leave it remembered.
    pub fn retain(&self, now: &HashSet<PodKey>) {
        let mut dropped = Vec::new();
        self.seen.lock().expect("not poisoned").retain(|k, _| {
            let keep = now.contains(k);
            if !keep {
                dropped.push(k.clone());
            }
            keep
        });
        for key in dropped {
            self.push(key, None);
        }
        if let Some(index) = self.index.lock().expect("not poisoned").as_mut() {
            index.retain(|pod, _| {
                pod.split_once('/')
                    .is_some_and(|(ns, name)| now.contains(&(ns.to_string(), name.to_string())))
            });
        }
    }

    /// How many pods this reconciler holds state for (the `plexus_hotplug_pods_tracked` gauge).
    pub fn tracked(&self) -> usize {
        self.seen.lock().expect("not poisoned").len()
    }

    /// Entries (pods remembered) of what was seen and of the index: for tests.
    #[cfg(test)]
    pub(super) fn remembered(&self) -> (usize, usize) {
        let seen = self.seen.lock().expect("not poisoned").len();
        let index = self
            .index
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map_or(0, |i| i.len());
        (seen, index)
    }

    /// Queue a pod whose sandbox was just ADDed (its record `at`), so an annotation change
    /// during that ADD is not missed. Only that record is read when it is reconciled.
    pub fn enqueue_after_add(&self, namespace: &str, name: &str, at: RecordAt) {
        let pod = format!("{namespace}/{name}");
        {
            // Both under the index's lock (the order finish_rescan takes them in), so a rescan
            // ends either before this (the record goes into its index) or after (its buffer
            // has the record).
            let mut index = self.index.lock().expect("not poisoned");
            if let Some(index) = index.as_mut() {
                let known = index.entry(pod.clone()).or_default();
                if !known.contains(&at) {
                    known.push(at.clone());
                }
            }
            if let Some(meanwhile) = self.scanning.lock().expect("not poisoned").as_mut() {
                meanwhile.push((pod, at.clone()));
            }
        }
        self.push((namespace.to_string(), name.to_string()), Some(at));
    }

    /// The records of pod `ns/name` (of its UID), read from where the index (or `hints`) says
    /// they are; `rescan` rebuilds the index from the cache dirs first.
    pub(super) fn records_of(
        &self,
        daemon: &Daemon,
        pod: &str,
        uid: &str,
        hints: Option<Vec<RecordAt>>,
        rescan: bool,
    ) -> Vec<(PathBuf, SandboxRecord)> {
        let places = match hints {
            Some(h) if !h.is_empty() => h,
            _ => {
                if rescan || self.index.lock().expect("not poisoned").is_none() {
                    self.rescan(daemon);
                }
                self.index
                    .lock()
                    .expect("not poisoned")
                    .as_ref()
                    .and_then(|i| i.get(pod))
                    .cloned()
                    .unwrap_or_default()
            }
        };
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for at in places {
            let key = crate::cache::Key {
                network: &at.network,
                container_id: &at.container_id,
                ifname: &at.ifname,
            };
            match ResultCache::new(&at.dir).load(&key) {
                Loaded::Found(r) if r.pod.as_deref() == Some(pod) => {
                    if record_of(&r, uid) {
                        out.push((at.dir.clone(), r));
                    }
                }
                // Not readable now (a partial write, EMFILE): kept, tried again next time.
                Loaded::Unreadable(why) => {
                    tracing::debug!(
                        "hot-plug: record {}/{}: {why}",
                        at.dir.display(),
                        at.container_id
                    )
                }
                _ => gone.push(at),
            }
        }
        if !gone.is_empty() {
            if let Some(index) = self.index.lock().expect("not poisoned").as_mut() {
                if let Some(known) = index.get_mut(pod) {
                    known.retain(|at| !gone.contains(at));
                    if known.is_empty() {
                        index.remove(pod);
                    }
                }
            }
        }
        out
    }

    /// Rebuild the index from the cache dirs. The scan runs without the index's lock; what
    /// the daemon's ADDs recorded meanwhile is merged in (only the worker rescans).
    fn rescan(&self, daemon: &Daemon) {
        self.begin_rescan();
        self.finish_rescan(scan(daemon));
    }

    pub(super) fn begin_rescan(&self) {
        *self.scanning.lock().expect("not poisoned") = Some(Vec::new());
    }

    pub(super) fn finish_rescan(&self, mut fresh: HashMap<String, Vec<RecordAt>>) {
        let mut index = self.index.lock().expect("not poisoned");
        for (pod, at) in self
            .scanning
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_default()
        {
            let known = fresh.entry(pod).or_default();
            if !known.contains(&at) {
                known.push(at);
            }
        }
        *index = Some(fresh);
    }

    fn push(&self, key: PodKey, force: Option<RecordAt>) {
        let mut q = self.queue.lock().expect("not poisoned");
        if let Some(at) = force {
            let hints = q.forced.entry(key.clone()).or_default();
            if !hints.contains(&at) {
                hints.push(at);
            }
        }
        if q.queued.insert(key.clone()) {
            q.order.push_back(key);
            drop(q);
            self.wake.notify_one();
        }
    }

    fn retry_at(&self, at: Instant, key: PodKey) {
        let mut q = self.queue.lock().expect("not poisoned");
        if !q.later.iter().any(|(_, k)| *k == key) {
            q.later.push((at, key));
        }
    }

    /// The next batch, with what must be forced (and the records to read for it); due retries
    /// first join the queue.
    fn take(&self) -> Vec<(PodKey, Option<Vec<RecordAt>>)> {
        let mut q = self.queue.lock().expect("not poisoned");
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut q.later)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        q.later = later;
        for (_, k) in due {
            if q.queued.insert(k.clone()) {
                q.order.push_back(k);
            }
        }
        let n = q.order.len().min(BATCH);
        let batch: Vec<PodKey> = q.order.drain(..n).collect();
        batch
            .into_iter()
            .map(|k| {
                q.queued.remove(&k);
                let forced = q.forced.remove(&k);
                (k, forced)
            })
            .collect()
    }

    /// Queued and pending retries (for tests and the log).
    pub fn backlog(&self) -> usize {
        let q = self.queue.lock().expect("not poisoned");
        q.order.len() + q.later.len()
    }

    /// The worker: until `stop`, reconcile batches once the watches have synced.
    pub async fn run(
        self: Arc<Self>,
        daemon: Arc<Daemon>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(view) = daemon.watch.clone() else {
            return;
        };
        loop {
            if *stop.borrow() {
                return;
            }
            if view.synced() {
                let batch = self.take();
                if !batch.is_empty() {
                    let (me, d) = (self.clone(), daemon.clone());
                    // A panic in one batch is logged and the worker carries on.
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || me.reconcile(&d, batch)).await
                    {
                        tracing::error!("hot-plug: a reconcile batch failed: {e}; carrying on");
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn reconcile(&self, daemon: &Daemon, batch: Vec<(PodKey, Option<Vec<RecordAt>>)>) {
        let Some(view) = daemon.watch.as_ref() else {
            return;
        };
        // One rescan of the cache dirs per batch at most.
        let mut rescanned = false;
        for ((ns, name), hints) in batch {
            let forced = hints.is_some();
            if daemon
                .shutting_down
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            let key = (ns.clone(), name.clone());
            let Some(pod) = view.cached_pod(&ns, &name) else {
                self.seen.lock().expect("not poisoned").remove(&key);
                // Gone from the API (forget queued it), unless an ADD just ran for it: then
                // the ADD found the pod before the watch did, and the index keeps its record
                // for when the pod's event arrives.
                if !forced {
                    if let Some(index) = self.index.lock().expect("not poisoned").as_mut() {
                        index.remove(&format!("{ns}/{name}"));
                    }
                }
                continue;
            };
            let sig = signature(&pod);
            let (previous_failures, changed) = {
                let seen = self.seen.lock().expect("not poisoned");
                match seen.get(&key) {
                    Some(s) if !forced && s.failures == 0 && s.signature == sig => continue,
                    Some(s) => (s.failures, s.signature != sig),
                    None => (0, false),
                }
            };
            if sig.opted_out || pod.metadata.deletion_timestamp.is_some() {
                self.done(key, sig, 0);
                continue;
            }
            // After an ADD: the record it wrote. A pod first seen, or retried: where the index
            // says. An annotation changed since the last reconcile: after a rescan.
            let rescan = needs_rescan(changed, forced, rescanned);
            rescanned |= rescan;
            let id = format!("{ns}/{name}");
            let mut mine = self.records_of(daemon, &id, &sig.uid, hints, rescan);
            if mine.is_empty() && previous_failures > 0 && !forced && !rescanned {
                // A failure retried, and the index knows no record of the pod now: look again
                // after a rescan before calling it none of ours.
                rescanned = true;
                mine = self.records_of(daemon, &id, &sig.uid, None, true);
            }
            if mine.is_empty() {
                // Not ours (or not ADDed yet: the ADD queues it again when done).
                self.done(key, sig, 0);
                continue;
            }
            let mut busy = false;
            let mut failed = false;
            for (dir, record) in &mine {
                let started = Instant::now();
                let cancel = Cancel::never();
                let out = daemon.engine.hotplug(
                    &pod,
                    &record.key(),
                    dir,
                    &|b| daemon.config.merge(b),
                    &cancel,
                );
                let took = started.elapsed();
                match out {
                    Ok(o) => {
                        for a in &o.attached {
                            daemon.metrics.observe_hotplug("attach", "ok");
                            tracing::info!(pod = %format!("{ns}/{name}"), container = %record.container_id, took_ms = took.as_millis() as u64, "hot-plug: attached {a}");
                        }
                        for d in &o.detached {
                            daemon.metrics.observe_hotplug("detach", "ok");
                            tracing::info!(pod = %format!("{ns}/{name}"), container = %record.container_id, took_ms = took.as_millis() as u64, "hot-plug: detached {d}");
                        }
                        for (op, e) in &o.failed {
                            daemon.metrics.observe_hotplug(op, "failed");
                            tracing::warn!(pod = %format!("{ns}/{name}"), container = %record.container_id, "hot-plug: {op} failed: {e}");
                            failed = true;
                        }
                        if let Some(e) = &o.refused {
                            daemon.metrics.observe_hotplug("plan", "refused");
                            tracing::warn!(pod = %format!("{ns}/{name}"), container = %record.container_id, "hot-plug: annotation refused, nothing changed: {e}");
                        }
                    }
                    Err(e) if e.code == Code::TRY_AGAIN_LATER => {
                        tracing::debug!("hot-plug of {ns}/{name}: {e}; retrying");
                        busy = true;
                    }
                    Err(e) => {
                        daemon.metrics.observe_hotplug("plan", "failed");
                        tracing::warn!(pod = %format!("{ns}/{name}"), container = %record.container_id, "hot-plug failed: {e}");
                        failed = true;
                    }
                }
            }
            if busy {
                self.retry_at(Instant::now() + BUSY_RETRY, key);
            } else if failed {
                let failures = previous_failures + 1;
                let backoff = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
                self.done(key.clone(), sig, failures);
                self.retry_at(Instant::now() + backoff, key);
            } else {
                self.done(key, sig, 0);
            }
        }
    }

    fn done(&self, key: PodKey, signature: Signature, failures: u32) {
        self.seen.lock().expect("not poisoned").insert(
            key,
            Seen {
                signature,
                failures,
            },
        );
    }
}

/// A record of this pod, not of an earlier pod of the same name.
fn record_of(r: &SandboxRecord, uid: &str) -> bool {
    match crate::cni::request::parse_cni_args(&r.cni_args)
        .ok()
        .and_then(|a| a.into_iter().find(|(k, _)| k == "K8S_POD_UID"))
    {
        Some((_, u)) if !uid.is_empty() => u == uid,
        _ => true,
    }
}

/// Whether a reconcile reads the pod's records after a rescan: when its annotation changed,
/// not when an ADD said where its record is, and at most once per batch.
fn needs_rescan(changed: bool, forced: bool, rescanned: bool) -> bool {
    changed && !forced && !rescanned
}

/// Where every sandbox record the daemon's cache dirs hold is, by `namespace/name` of its pod.
fn scan(daemon: &Daemon) -> HashMap<String, Vec<RecordAt>> {
    let mut out: HashMap<String, Vec<RecordAt>> = HashMap::new();
    for dir in daemon.cni_dirs() {
        for (_, l) in ResultCache::new(&dir).all() {
            if let Loaded::Found(r) = l {
                if let Some(p) = r.pod.clone() {
                    out.entry(p).or_default().push(RecordAt {
                        dir: dir.clone(),
                        network: r.network,
                        container_id: r.container_id,
                        ifname: r.if_name,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(networks: &str) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"namespace": "ns1", "name": "p", "uid": "u1",
            "annotations": {NETWORKS_ANNOTATION: networks}}}),
        )
        .unwrap()
    }

    #[test]
    fn a_pod_is_queued_once_and_unchanged_pods_are_skipped() {
        let r = Reconciler::new();
        r.enqueue(&pod("a"));
        r.enqueue(&pod("a"));
        r.enqueue(&pod("a, b"));
        assert_eq!(r.backlog(), 1, "queued once however many events");
        let batch = r.take();
        assert_eq!(batch, vec![(("ns1".into(), "p".into()), None)]);
        r.done(("ns1".into(), "p".into()), signature(&pod("a, b")), 0);
        r.enqueue(&pod("a, b"));
        assert_eq!(r.backlog(), 0, "unchanged since reconciled");
        r.enqueue(&pod("a"));
        assert_eq!(r.backlog(), 1, "changed");
        r.take();
        // After an ADD the pod is forced through even if unchanged.
        let at = RecordAt {
            dir: "/var/lib/cni/multus".into(),
            network: "plexus".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        r.enqueue_after_add("ns1", "p", at.clone());
        r.enqueue_after_add("ns1", "p", at.clone());
        assert_eq!(
            r.take(),
            vec![(("ns1".into(), "p".into()), Some(vec![at]))],
            "forced once, with the record its ADD wrote"
        );
        r.enqueue(&pod("a"));
        assert_eq!(r.take(), vec![(("ns1".into(), "p".into()), None)]);
    }

    #[test]
    fn deleted_pods_are_forgotten_so_a_long_lived_daemon_keeps_nothing_of_them() {
        let r = Reconciler::new();
        let named = |name: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"namespace": "ns1", "name": name,
                "uid": "u1", "annotations": {NETWORKS_ANNOTATION: "a"}}}))
            .unwrap()
        };
        let at = |c: &str| RecordAt {
            dir: "/var/lib/cni/multus".into(),
            network: "plexus".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        };
        *r.index.lock().unwrap() = Some(HashMap::new());
        for p in ["p1", "p2", "p3"] {
            r.enqueue_after_add("ns1", p, at(p));
            r.done(("ns1".into(), p.into()), signature(&named(p)), 0);
        }
        r.take();
        assert_eq!(r.remembered(), (3, 3));
        // The API's delete event: forgotten now, and queued once so that a reconcile of it
        // still in flight cannot leave it remembered.
        r.forget(&named("p1"));
        assert_eq!(r.remembered(), (2, 2));
        assert_eq!(r.take(), vec![(("ns1".into(), "p1".into()), None)]);
        // A relist that no longer holds p2 (deleted while the watch was down).
        let now: HashSet<PodKey> = [("ns1".to_string(), "p3".to_string())].into();
        r.retain(&now);
        assert_eq!(r.remembered(), (1, 1));
        // Queued once too, for the same reason.
        assert_eq!(r.take(), vec![(("ns1".into(), "p2".into()), None)]);
        // p3 is still known: an unchanged event does not queue it.
        r.enqueue(&named("p3"));
        assert_eq!(r.backlog(), 0);
        // A forgotten pod that comes back (same name) is reconciled afresh.
        r.enqueue(&named("p1"));
        assert_eq!(r.backlog(), 1);
    }

    #[test]
    fn a_changed_annotation_rescans_once_per_batch_and_an_add_never() {
        assert!(needs_rescan(true, false, false), "annotation changed");
        assert!(
            !needs_rescan(false, false, false),
            "first seen or retried: the index"
        );
        assert!(!needs_rescan(true, true, false), "after an ADD: its record");
        assert!(!needs_rescan(true, false, true), "once per batch");
    }

    #[test]
    fn failures_are_retried_later_not_now() {
        let r = Reconciler::new();
        let k: PodKey = ("ns1".into(), "p".into());
        r.done(k.clone(), signature(&pod("a")), 1);
        r.retry_at(Instant::now() + Duration::from_secs(60), k.clone());
        assert!(r.take().is_empty(), "not due");
        r.retry_at(Instant::now(), k.clone());
        assert_eq!(r.backlog(), 1, "one retry per pod");
        // A failed pod's event queues it again (its signature is not clean).
        r.enqueue(&pod("a"));
        assert_eq!(r.take().len(), 1);
    }

    #[test]
    fn a_record_of_an_earlier_pod_of_the_same_name_is_not_this_pods() {
        let mut rec: SandboxRecord = serde_json::from_value(json!({"kind": "plexus/sandbox",
            "containerId": "c1", "netns": "/n", "ifName": "eth0", "cniArgs": "K8S_POD_UID=u0",
            "created": "x", "attachments": []}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!record_of(&rec, "u1"));
        assert!(record_of(&rec, "u0"));
        rec.cni_args = String::new();
        assert!(record_of(&rec, "u1"), "no uid recorded: by name");
    }
}
