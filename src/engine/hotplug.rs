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
use crate::cni::{Command, Request};
use crate::config::{ConfDir, NetConf};
use crate::k8s::{annotation, ClusterView};
use crate::plan::{declares, plan_hotplug, resolve, SelectionRef, Sources};
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
    /// Attaches or detaches that failed (each rolled back or kept for the runtime's DEL).
    pub failed: Vec<CniError>,
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

impl Engine {
    /// Reconcile one sandbox of `pod` (its record's key) with the pod's annotation. The record's
    /// lock is held throughout (the runtime's DEL waits, then tears down all of it); `merge`
    /// lays the daemon's plugin keys over the config the sandbox was ADDed with.
    pub fn hotplug(
        &self,
        pod: &Pod,
        key: &Key<'_>,
        cni_dir: &Path,
        merge: &dyn Fn(&[u8]) -> Result<Vec<u8>, CniError>,
        cancel: &Cancel,
    ) -> Result<Outcome, CniError> {
        let cache = ResultCache::new(cni_dir);
        let lock = cache.lock(key, Instant::now() + Duration::from_secs(10), cancel)?;
        let Loaded::Found(mut record) = cache.load(key) else {
            // The runtime's DEL got there first.
            return Ok(Outcome::default());
        };
        if record.attachments.iter().any(|a| a.result.is_none()) {
            // An ADD never finished (a crash): the runtime retries or DELs; leave it.
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
        // What the pod asks for now, planned exactly as an ADD would.
        let networks = match resolve(
            &conf,
            Sources {
                files: files.as_ref(),
                cluster: self.cluster.as_deref().map(|c| c as &dyn ClusterView),
                pod: Some(pod),
            },
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
        let mut planned = match plan_hotplug(&taken, add) {
            Ok(p) => p,
            Err(e) => {
                out.refused = Some(e);
                return Ok(out);
            }
        };
        let req = Request {
            command: Some(Command::Add),
            container_id: Some(record.container_id.clone()),
            netns: Some(record.netns.clone()),
            ifname: Some(record.if_name.clone()),
            args: parse_cni_args(&record.cni_args).unwrap_or_default(),
            args_raw: record.cni_args.clone(),
            ..Default::default()
        };
        let chain = Chain {
            who: format!("{} (hot-plug)", req.who()),
            cni_args: record.cni_args.clone(),
            ..self.chain_for_call(&req, &conf, cancel.clone(), None)
        };
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
                }
                Some((_, e)) => out.failed.push(e),
            }
        }
        let mut i = 0;
        record.attachments.retain(|_| {
            i += 1;
            !detached.contains(&(i - 1))
        });
        cache.store(&record)?;
        // Attach, each on its own: a failure rolls back only that one.
        for a in planned.iter_mut() {
            if a.device.is_some() && declares(&a.network, "CNIDeviceInfoFile") {
                let file = crate::k8s::devices::cni_device_info_path(
                    &conf.device_info_dir,
                    &a.status_name,
                    &record.container_id,
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
        for a in &planned {
            record.attachments.push(pending(a));
            cache.store(&record)?;
            let at = record.attachments.len() - 1;
            let result = chain.check_live().and_then(|()| {
                chain.run_network(
                    Command::Add,
                    &a.network,
                    &a.ifname,
                    &a.inputs,
                    None,
                    &Map::new(),
                )
            });
            match result {
                Ok(Some(r)) => {
                    record.attachments[at].result = Some(r.to_value(a.network.cni_version)?);
                    let ips: Vec<&str> = r.ips.iter().map(|i| i.address.as_str()).collect();
                    out.attached
                        .push(format!("{} {:?} from {}", a.ifname, ips, a.status_name));
                }
                Ok(None) => unreachable!("ADD returns a result"),
                Err(e) => {
                    let e = e.context(format!("hot-plug of {} into {}", a.status_name, chain.who));
                    let one = SandboxRecord {
                        attachments: vec![record.attachments[at].clone()],
                        ..record.clone()
                    };
                    if chain.del_attachments(&one).is_empty() {
                        record.attachments.pop();
                    }
                    out.failed.push(e);
                }
            }
            cache.store(&record)?;
        }
        // One status write for the change, unless the call was given up.
        if out.changed() && !cancel.is_cancelled() {
            if let Some(c) = self.cluster.as_deref() {
                c.set_network_status(pod, &network_status(&conf, &record))?;
            }
        }
        drop(lock);
        Ok(out)
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
