//! Hot-plug: bring a running sandbox's attachments in line with its pod's selection annotation,
//! with the same parser and planner as ADD and the same chain. New elements are attached (their
//! requested interface, or the lowest free `net<N>`); removed ones are DELeted with their cached
//! result; the attachments that stay are never touched or renamed; network-status is rewritten
//! once. A bad annotation changes nothing.
//!
//! Identity of an element: its NAD (`namespace/name`), its requested interface, and its
//! occurrence of that pair (`net-a, net-a` is two elements). An element whose other keys (ips,
//! mac, cni-args…) changed is the same element asking something else: refused, unless the pod
//! opts in to detaching and attaching it again (`plexus.io/hotplug-replace: "true"`).

use super::{network_status, pending, Engine};
use crate::cache::{Key, Loaded, ResultCache, SandboxRecord};
use crate::cancel::Cancel;
use crate::chain::Chain;
use crate::cni::error::{invalid_config, CniError, Code};
use crate::cni::request::parse_cni_args;
use crate::cni::{CniResult, Command, Request};
use crate::config::{ConfDir, NetConf};
use crate::k8s::annotations::NetworkSelection;
use crate::k8s::nad::NetworkAttachmentDefinitionSpec;
use crate::k8s::{
    annotation, ClusterView, NetworkAttachmentDefinition, Reporter, NETWORK_STATUS_ANNOTATION,
};
use crate::plan::{
    declares, nad_network, plan_hotplug, resolve_holding, Attachment, PodNetwork, SelectionRef,
    Sources,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// On a pod: `"false"` keeps hot-plug away from it.
pub const HOTPLUG_ANNOTATION: &str = "plexus.io/hotplug";
/// On a pod: `"true"` lets an element whose parameters changed be detached and attached again.
pub const HOTPLUG_REPLACE_ANNOTATION: &str = "plexus.io/hotplug-replace";

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// "net2 [10.1.0.5/24] from ns/nad", per attachment added.
    pub attached: Vec<String>,
    /// "net1 from ns/nad", per attachment removed.
    pub detached: Vec<String>,
    /// The new annotation was refused as a whole: nothing changed.
    pub refused: Option<CniError>,
    /// Attaches (`"attach"`) or detaches (`"detach"`) that failed: a failed attach is rolled
    /// back, a failed detach stays in the record for the runtime's DEL.
    pub failed: Vec<(&'static str, CniError)>,
    /// Attaches a crashed hot-plug left pending, rolled back before reconciling.
    pub rolled_back: usize,
}

impl Outcome {
    pub fn changed(&self) -> bool {
        !self.attached.is_empty() || !self.detached.is_empty() || !self.failed.is_empty()
    }
}

/// The plexus sandbox records of a pod in `cni_dir` (normally one), newest first.
pub fn sandboxes_of(cni_dir: &Path, pod: &Pod) -> Vec<SandboxRecord> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let want = format!("{ns}/{name}");
    let uid = pod.metadata.uid.as_deref();
    let mut out: Vec<SandboxRecord> = ResultCache::new(cni_dir)
        .all()
        .into_iter()
        .filter_map(|(_, l)| match l {
            Loaded::Found(r) if r.pod.as_deref() == Some(want.as_str()) => Some(r),
            _ => None,
        })
        // A sandbox of an earlier pod of the same name is not this pod's.
        .filter(|r| match (uid, record_uid(r)) {
            (Some(u), Some(ru)) => u == ru,
            _ => true,
        })
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created));
    out
}

fn record_uid(r: &SandboxRecord) -> Option<String> {
    parse_cni_args(&r.cni_args)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "K8S_POD_UID")
        .map(|(_, v)| v)
}

/// Identity of an element: NAD, requested interface, occurrence.
fn identity(s: &SelectionRef) -> (&str, Option<&str>, usize) {
    (&s.nad, s.interface.as_deref(), s.occurrence)
}

/// Lays the front door's keys over a recorded config (the daemon's plugin keys).
pub type Merge<'a> = dyn Fn(&[u8]) -> Result<Vec<u8>, CniError> + 'a;

/// How long a hot-plug waits for a call holding the sandbox (an ADD or DEL) before it gives up
/// for now (the daemon retries; a DEL that removed the record ends it).
pub const HOTPLUG_LOCK_WAIT: Duration = Duration::from_secs(2);

impl Engine {
    /// Reconcile one sandbox of `pod` (its record's key) with the pod's annotation. The record's
    /// lock is held throughout (the runtime's DEL waits, then tears down all of it); `merge`
    /// lays the daemon's plugin keys over the config the sandbox was ADDed with. One Event per
    /// attach and per detach, and a Warning for a refused annotation or a failure.
    pub fn hotplug(
        &self,
        pod: &Pod,
        key: &Key<'_>,
        cni_dir: &Path,
        merge: &Merge<'_>,
        cancel: &Cancel,
    ) -> Result<Outcome, CniError> {
        let out = self.reconcile(pod, key, cni_dir, merge, cancel)?;
        if let (Some(c), false) = (self.cluster.as_deref(), cancel.is_cancelled()) {
            if let Some(e) = &out.refused {
                c.event(pod, true, "HotplugRefused", &e.msg);
            }
            for a in &out.attached {
                c.event(pod, false, "AddedInterface", &format!("Hot-plugged {a}"));
            }
            for d in &out.detached {
                c.event(
                    pod,
                    false,
                    "RemovedInterface",
                    &format!("Hot-unplugged {d}"),
                );
            }
            for (op, e) in &out.failed {
                let reason = if *op == "attach" {
                    "FailedAttach"
                } else {
                    "FailedDetach"
                };
                c.event(pod, true, reason, &e.msg);
            }
        }
        Ok(out)
    }

    fn reconcile(
        &self,
        pod: &Pod,
        key: &Key<'_>,
        cni_dir: &Path,
        merge: &Merge<'_>,
        cancel: &Cancel,
    ) -> Result<Outcome, CniError> {
        let cache = ResultCache::new(cni_dir);
        let lock = cache.lock(key, Instant::now() + HOTPLUG_LOCK_WAIT, cancel)?;
        let Loaded::Found(mut record) = cache.load(key) else {
            // The runtime's DEL got there first.
            return Ok(Outcome::default());
        };
        if record
            .attachments
            .iter()
            .any(|a| a.cluster && a.result.is_none())
        {
            // The sandbox's ADD never finished (a crash): the runtime retries or DELs; leave it.
            return Ok(Outcome::default());
        }
        if record.config.is_empty() {
            return Err(invalid_config(format!(
                "container {}: its record was written by a plexus that did not keep its config; hot-plug needs a new sandbox",
                record.container_id
            )));
        }
        let conf = NetConf::parse(&merge(record.config.as_bytes())?)?;
        let files: Arc<dyn crate::config::NetworkFiles> = match &self.files {
            Some(f) => f.clone(),
            None => Arc::new(ConfDir(conf.conf_dir.clone())),
        };
        let mut out = Outcome::default();
        let req = Request {
            command: Some(Command::Add),
            container_id: Some(record.container_id.clone()),
            netns: Some(record.netns.clone()),
            ifname: Some(record.if_name.clone()),
            args: parse_cni_args(&record.cni_args).unwrap_or_default(),
            args_raw: record.cni_args.clone(),
            path: record.cni_path.clone(),
            ..Default::default()
        };
        let chain = Chain {
            who: format!("{} (hot-plug)", req.who()),
            cni_args: record.cni_args.clone(),
            ..self.chain_for_call(&req, &conf, cancel.clone(), None)
        };
        // Attaches a hot-plug killed midway left pending: undo them (their DEL may find nothing),
        // then reconcile from what is really there.
        let before = record.attachments.len();
        let mut kept = Vec::with_capacity(before);
        for a in std::mem::take(&mut record.attachments) {
            if a.result.is_some() {
                kept.push(a);
                continue;
            }
            let one = SandboxRecord {
                attachments: vec![a.clone()],
                ..record.clone()
            };
            if chain.del_attachments(&one).is_empty() {
                if let Some(c) = self.cluster.as_deref() {
                    super::withdraw_claims(c, &mut [a.clone()], &chain.who);
                }
                tracing::warn!(
                    "{}: rolled back {} ({}), left pending by an interrupted hot-plug",
                    chain.who,
                    a.ifname,
                    a.status_name
                );
                out.rolled_back += 1;
            } else {
                kept.push(a);
            }
        }
        record.attachments = kept;
        if out.rolled_back > 0 {
            cache.store(&record)?;
        }
        // What the pod asks for now, planned exactly as an ADD would; what stays keeps its
        // device, and no new network is given one an attachment holds.
        let held: Vec<crate::plan::Held> = record
            .attachments
            .iter()
            .filter_map(|a| {
                let s = a.selection.as_ref()?;
                Some(crate::plan::Held {
                    nad: s.nad.clone(),
                    interface: s.interface.clone(),
                    occurrence: s.occurrence,
                    device_id: a.device.as_ref()?.1.clone(),
                })
            })
            .collect();
        let networks = match resolve_holding(
            &conf,
            Sources {
                files: files.as_ref(),
                cluster: self.cluster.as_deref().map(|c| c as &dyn ClusterView),
                pod: Some(pod),
            },
            &held,
        ) {
            Ok(n) => n,
            Err(e) => {
                out.refused = Some(e);
                return Ok(out);
            }
        };
        let desired: Vec<crate::plan::PodNetwork> = networks
            .extras
            .into_iter()
            .filter(|n| n.selection.is_some())
            .collect();
        let replace = annotation(pod, HOTPLUG_REPLACE_ANNOTATION) == Some("true");
        let mut remove: Vec<usize> = Vec::new();
        let mut add: Vec<crate::plan::PodNetwork> = Vec::new();
        for (i, a) in record.attachments.iter().enumerate() {
            let Some(sel) = &a.selection else { continue };
            match desired
                .iter()
                .find(|d| identity(d.selection.as_ref().expect("filtered")) == identity(sel))
            {
                None => remove.push(i),
                Some(d) if d.selection.as_ref().expect("filtered").params != sel.params => {
                    if !replace {
                        out.refused = Some(invalid_config(format!(
                            "network {} (interface {}): the element's parameters changed ({} → {}); an attachment is not changed in place: set {HOTPLUG_REPLACE_ANNOTATION}: \"true\" on the pod to detach and attach it again",
                            a.status_name,
                            a.ifname,
                            sel.params,
                            d.selection.as_ref().expect("filtered").params
                        )));
                        return Ok(out);
                    }
                    remove.push(i);
                    add.push(d.clone());
                }
                Some(_) => {}
            }
        }
        for d in &desired {
            let sel = d.selection.as_ref().expect("filtered");
            let attached = record.attachments.iter().any(|a| {
                a.selection
                    .as_ref()
                    .is_some_and(|s| identity(s) == identity(sel))
            });
            if !attached {
                add.push(d.clone());
            }
        }
        if remove.is_empty() && add.is_empty() {
            self.sync_status(pod, &conf, &record, cancel)?;
            return Ok(out);
        }
        // Names: what stays keeps its own; new ones must not collide with anything in the pod.
        let staying: Vec<String> = record
            .attachments
            .iter()
            .enumerate()
            .filter(|(i, _)| !remove.contains(i))
            .map(|(_, a)| a.ifname.clone())
            .collect();
        let removed_names: Vec<String> = remove
            .iter()
            .map(|&i| record.attachments[i].ifname.clone())
            .collect();
        let in_pod: Vec<String> = self
            .netns
            .link_names(&record.netns)
            .map_err(|e| {
                CniError::new(
                    Code::INVALID_ENV,
                    format!("cannot list the links of {}: {e}", record.netns),
                )
            })?
            .into_iter()
            .filter(|l| !removed_names.contains(l))
            .collect();
        let mut taken = staying.clone();
        taken.extend(in_pod);
        let planned = match plan_hotplug(&taken, add) {
            Ok(p) => p,
            Err(e) => {
                out.refused = Some(e);
                return Ok(out);
            }
        };
        if let Err(e) = chain.preflight(&planned) {
            out.refused = Some(e);
            return Ok(out);
        }
        // Detach first (in reverse), so a name being given back is free for the new ones. One
        // whose DEL fails stays in the record, for the runtime's DEL.
        let mut detached: Vec<usize> = Vec::new();
        for &i in remove.iter().rev() {
            let a = &record.attachments[i];
            let one = SandboxRecord {
                attachments: vec![a.clone()],
                ..record.clone()
            };
            match chain.del_attachments(&one).pop() {
                None => {
                    out.detached
                        .push(format!("{} from {}", a.ifname, a.status_name));
                    detached.push(i);
                    if let Some(c) = self.cluster.as_deref() {
                        super::withdraw_claims(c, &mut [a.clone()], &chain.who);
                    }
                }
                Some((_, e)) => out.failed.push(("detach", e)),
            }
        }
        let mut i = 0;
        record.attachments.retain(|_| {
            i += 1;
            !detached.contains(&(i - 1))
        });
        cache.store(&record)?;
        // Attach, each on its own: a failure rolls back only that one.
        for mut a in planned {
            device_info_file(&conf, &record.container_id, &mut a);
            let report = self.cluster.as_deref().map(|c| (c as &dyn Reporter, pod));
            match attach_one(&chain, &cache, &mut record, &a, report) {
                Ok(r) => {
                    let ips: Vec<&str> = r.ips.iter().map(|i| i.address.as_str()).collect();
                    out.attached
                        .push(format!("{} {:?} from {}", a.ifname, ips, a.status_name));
                }
                Err(e) => out.failed.push(("attach", e)),
            }
        }
        self.sync_status(pod, &conf, &record, cancel)?;
        drop(lock);
        Ok(out)
    }

    /// One status write when the pod's network-status is not what the record says (a change
    /// now, or one a crash kept from being written), none otherwise; none for a given-up call.
    fn sync_status(
        &self,
        pod: &Pod,
        conf: &NetConf,
        record: &SandboxRecord,
        cancel: &Cancel,
    ) -> Result<(), CniError> {
        let Some(c) = self.cluster.as_deref() else {
            return Ok(());
        };
        let status = network_status(conf, record);
        if cancel.is_cancelled() || annotation(pod, NETWORK_STATUS_ANNOTATION) == Some(&status) {
            return Ok(());
        }
        c.set_network_status(pod, &status)
    }

    fn chain_for_call(
        &self,
        req: &Request,
        conf: &NetConf,
        cancel: Cancel,
        deadline: Option<Instant>,
    ) -> Chain {
        Chain {
            observer: self.observer.clone(),
            chroot: self.chroot.clone(),
            ..super::chain_for(req, conf, cancel, deadline)
        }
    }
}

/// Ask the CNI for a device-info file (NPWG) for a device-backed attachment that declares it.
fn device_info_file(conf: &NetConf, container_id: &str, a: &mut Attachment) {
    if a.device.is_none() || !declares(&a.network, "CNIDeviceInfoFile") {
        return;
    }
    let file = crate::k8s::devices::cni_device_info_path(
        &conf.device_info_dir,
        &a.status_name,
        container_id,
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

/// ADD one attachment into a running sandbox's record. It is stored pending first, so a crash
/// midway leaves a trace the next reconcile undoes; a failure is rolled back (DEL) and leaves the
/// record as it was (unless that DEL fails too: then it stays, for the runtime's DEL).
/// With `report`, an attachment whose device came from a DRA claim gets its network data
/// written to the claim (a failed write rolls it back, as a failed ADD).
fn attach_one(
    chain: &Chain,
    cache: &ResultCache,
    record: &mut SandboxRecord,
    a: &Attachment,
    report: Option<(&dyn Reporter, &Pod)>,
) -> Result<CniResult, CniError> {
    record.attachments.push(pending(a));
    if let Err(e) = cache.store(record) {
        record.attachments.pop();
        return Err(e);
    }
    let at = record.attachments.len() - 1;
    let result = chain
        .check_live()
        .and_then(|()| {
            chain.run_network(
                Command::Add,
                &a.network,
                &a.ifname,
                &a.inputs,
                None,
                &Map::new(),
            )
        })
        .and_then(|r| {
            r.ok_or_else(|| CniError::new(Code::DELEGATE_BAD_OUTPUT, "ADD printed no result"))
        })
        .and_then(|r| {
            record.attachments[at].result = Some(r.to_value(a.network.cni_version)?);
            if let Some((c, pod)) = report.filter(|_| a.claim.is_some()) {
                // Recorded before the write, as in an ADD.
                let sandbox = record.container_id.clone();
                super::mark_pending(&mut record.attachments[at], &sandbox);
                cache.store(record)?;
                let dev = record.attachments[at].claim.clone().expect("a claim");
                if let Some(entry) = super::publish_one(c, &super::pod_name(pod), &dev, a, &r)? {
                    if let Some(d) = record.attachments[at].claim.as_mut() {
                        d.status_entry = entry;
                    }
                }
            }
            Ok(r)
        });
    match result {
        Ok(r) => {
            cache.store(record)?;
            Ok(r)
        }
        Err(e) => {
            let e = e.context(format!("hot-plug of {} into {}", a.status_name, chain.who));
            if let Some((c, _)) = report {
                super::withdraw_claims(c, &mut record.attachments[at..=at], &chain.who);
            }
            record.attachments[at].result = None;
            let one = SandboxRecord {
                attachments: vec![record.attachments[at].clone()],
                ..record.clone()
            };
            if chain.del_attachments(&one).is_empty() {
                record.attachments.pop();
            }
            cache.store(record)?;
            Err(e)
        }
    }
}

/// What Multus's `/delegate` asks (multus-dynamic-networks-controller): one NAD's config
/// attached to, removed from, or checked in a running sandbox, under `CNI_IFNAME`.
pub struct DelegateCall<'a> {
    pub req: &'a Request,
    /// The NAD's `spec.config` (its `name` filled in), as the controller sends it.
    pub config: &'a [u8],
    /// The element's `ips`, `mac` and `cni-args`, as a selection element.
    pub selection: &'a NetworkSelection,
    pub cancel: &'a Cancel,
}

impl Engine {
    /// `/delegate`: ADD, DEL or CHECK one network in a sandbox plexus holds in `cni_dir`, with
    /// the same loading, checks and chain as a NAD of the pod's annotation. The attachment goes
    /// into the sandbox's record (not tied to an annotation element, so the native reconciler
    /// leaves it alone) and the runtime's DEL tears it down with the rest. Like Multus, it does
    /// not write network-status (the controller does); it does emit the Event.
    pub fn delegate(
        &self,
        call: &DelegateCall<'_>,
        cni_dirs: &[std::path::PathBuf],
        merge: &Merge<'_>,
    ) -> Result<Option<CniResult>, CniError> {
        let req = call.req;
        let verb = req.command();
        let who = format!("{verb} for {} (/delegate)", req.who());
        let (id, ifname) = (req.container_id(), req.ifname());
        let found = cni_dirs.iter().find_map(|dir| {
            ResultCache::new(dir)
                .all()
                .into_iter()
                .find_map(|(_, l)| match l {
                    Loaded::Found(r) if r.container_id == id => Some((dir, r)),
                    _ => None,
                })
        });
        let Some((cni_dir, found)) = found else {
            if verb == Command::Del {
                return Ok(None);
            }
            return Err(CniError::new(
                Code::UNKNOWN_CONTAINER,
                format!(
                    "{who}: container {id} has no plexus record in {}; /delegate works on sandboxes plexus attached",
                    cni_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let cache = ResultCache::new(cni_dir);
        let key = found.key();
        let lock = cache.lock(&key, Instant::now() + HOTPLUG_LOCK_WAIT, call.cancel)?;
        let Loaded::Found(mut record) = cache.load(&key) else {
            return match verb {
                Command::Del => Ok(None),
                _ => Err(CniError::new(
                    Code::UNKNOWN_CONTAINER,
                    format!("{who}: the sandbox was deleted meanwhile"),
                )),
            };
        };
        if record.config.is_empty() {
            return Err(invalid_config(format!(
                "{who}: the record of container {id} was written by a plexus that did not keep its config"
            )));
        }
        let conf = NetConf::parse(&merge(record.config.as_bytes())?)?;
        let namespace = req
            .arg("K8S_POD_NAMESPACE")
            .map(str::to_string)
            .or_else(|| record.pod.as_deref()?.split('/').next().map(str::to_string))
            .unwrap_or_default();
        let name = serde_json::from_slice::<Value>(call.config)
            .ok()
            .and_then(|v| v.get("name")?.as_str().map(str::to_string))
            .unwrap_or_default();
        let nad_ref = format!("{namespace}/{name}");
        let nad = NetworkAttachmentDefinition {
            metadata: kube::api::ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name),
                ..Default::default()
            },
            spec: NetworkAttachmentDefinitionSpec {
                config: String::from_utf8_lossy(call.config).into_owned(),
            },
        };
        let files: Arc<dyn crate::config::NetworkFiles> = match &self.files {
            Some(f) => f.clone(),
            None => Arc::new(ConfDir(conf.conf_dir.clone())),
        };
        let network =
            nad_network(&conf, files.as_ref(), &nad, &nad_ref).map_err(|e| e.context(&who))?;
        // The controller sends no CNI_PATH: delegates are found where the sandbox's ADD found them.
        let mut with_path = Request {
            stdin: vec![],
            ..req.clone()
        };
        if with_path.path.is_empty() {
            with_path.path = record.cni_path.clone();
        }
        let chain = Chain {
            who: format!("{} (/delegate)", req.who()),
            cni_args: record.cni_args.clone(),
            ..self.chain_for_call(&with_path, &conf, call.cancel.clone(), None)
        };
        let pod = match (
            self.cluster.as_deref(),
            crate::k8s::PodRef::from_request(req),
        ) {
            (Some(c), Some(r)) => c
                .pod(&r.namespace, &r.name, r.uid.as_deref())
                .ok()
                .flatten(),
            _ => None,
        };
        let report = |warning: bool, reason: &str, msg: &str| {
            if let (Some(c), Some(p)) = (self.cluster.as_deref(), &pod) {
                if !call.cancel.is_cancelled() {
                    c.event(p, warning, reason, msg);
                }
            }
        };
        let existing = record
            .attachments
            .iter()
            .position(|a| a.ifname == ifname && !a.cluster);
        let out = match verb {
            Command::Add => {
                if record.attachments.iter().any(|a| a.ifname == ifname) {
                    return Err(invalid_config(format!(
                        "{who}: interface {ifname} is already attached in the sandbox"
                    )));
                }
                let mut sel = call.selection.clone();
                sel.interface = Some(ifname.to_string());
                let pn = PodNetwork::of_nad(network, nad_ref.clone(), None, Some(&sel));
                let taken: Vec<String> = record
                    .attachments
                    .iter()
                    .map(|a| a.ifname.clone())
                    .chain(self.netns.link_names(&record.netns).unwrap_or_default())
                    .collect();
                let mut planned = plan_hotplug(&taken, vec![pn])
                    .map_err(|e| e.context(&who))?
                    .pop()
                    .expect("one planned");
                planned.selection = None;
                chain.preflight(std::slice::from_ref(&planned))?;
                device_info_file(&conf, id, &mut planned);
                match attach_one(&chain, &cache, &mut record, &planned, None) {
                    Ok(r) => {
                        let ips: Vec<&str> = r.ips.iter().map(|i| i.address.as_str()).collect();
                        report(
                            false,
                            "AddedInterface",
                            &format!("Added interface {ifname} {ips:?} from {nad_ref} (/delegate)"),
                        );
                        Ok(Some(r))
                    }
                    Err(e) => {
                        report(true, "FailedAttach", &e.msg);
                        Err(e)
                    }
                }
            }
            Command::Del => {
                let Some(i) = existing else {
                    return Ok(None);
                };
                let one = SandboxRecord {
                    attachments: vec![record.attachments[i].clone()],
                    ..record.clone()
                };
                match chain.del_attachments(&one).pop() {
                    None => {
                        record.attachments.remove(i);
                        cache.store(&record)?;
                        report(
                            false,
                            "RemovedInterface",
                            &format!("Removed interface {ifname} of {nad_ref} (/delegate)"),
                        );
                        Ok(None)
                    }
                    Some((_, e)) => {
                        report(true, "FailedDetach", &e.msg);
                        Err(e)
                    }
                }
            }
            Command::Check => {
                let Some(i) = existing else {
                    return Err(CniError::new(
                        Code::UNKNOWN_CONTAINER,
                        format!("{who}: interface {ifname} is not attached"),
                    ));
                };
                let one = SandboxRecord {
                    attachments: vec![record.attachments[i].clone()],
                    ..record.clone()
                };
                chain.check(&one).map(|()| None)
            }
            other => Err(CniError::new(
                Code::UNSUPPORTED_FIELD,
                format!(
                    "{other} for {}: /delegate serves ADD, DEL and CHECK",
                    req.who()
                ),
            )),
        };
        drop(lock);
        out
    }
}
