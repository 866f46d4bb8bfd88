//! Executing a plan: each network's plugins in order with `prevResult` passing, as libcni does for a
//! conflist; attachments in order on ADD with rollback in reverse on failure; DEL in reverse from
//! the cache, best-effort; CHECK/STATUS/GC on every attachment.

use crate::cache::{CachedAttachment, Record, ResultCache};
use crate::cni::error::{CniError, Code};
use crate::cni::exec::{self, Invocation};
use crate::cni::{CniResult, Command, Version};
use crate::config::Network;
use crate::plan::{runtime_config_for, Attachment};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// After this many DELs that failed for the same attachments, DEL gives up on them (logging what
/// may be left) so that a broken delegate cannot keep a pod from being deleted forever.
pub const MAX_DEL_ATTEMPTS: u32 = 5;

/// What a network's plugins are called with besides the runtime's env: capability args (each
/// plugin sees those it declares), `args.cni` additions, and extra top-level keys (GC's list).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub capability_args: Map<String, Value>,
    pub cni_args: Map<String, Value>,
    pub extra: Map<String, Value>,
}

/// Anything that carries an attachment's per-plugin inputs: a planned or a cached attachment.
pub trait HasInputs {
    fn capability_args(&self) -> &Map<String, Value>;
    fn cni_args(&self) -> &Map<String, Value>;
}

impl HasInputs for Attachment {
    fn capability_args(&self) -> &Map<String, Value> {
        &self.capability_args
    }
    fn cni_args(&self) -> &Map<String, Value> {
        &self.cni_args
    }
}

impl HasInputs for CachedAttachment {
    fn capability_args(&self) -> &Map<String, Value> {
        &self.capability_args
    }
    fn cni_args(&self) -> &Map<String, Value> {
        &self.cni_args
    }
}

impl Inputs {
    pub fn of(a: &impl HasInputs) -> Inputs {
        Inputs {
            capability_args: a.capability_args().clone(),
            cni_args: a.cni_args().clone(),
            extra: Map::new(),
        }
    }
}

/// How to reach the delegates for one container.
#[derive(Debug, Clone)]
pub struct Chain {
    pub container_id: String,
    pub netns: String,
    pub cni_args: String,
    /// binDir, then the runtime's CNI_PATH.
    pub search_path: Vec<PathBuf>,
    pub timeout: Duration,
    /// "container X (pod ns/name)", for messages.
    pub who: String,
}

/// The config one plugin of a network is called with: the plugin's own keys, plus `name` and
/// `cniVersion` of the network, its filtered `runtimeConfig`, `args.cni` additions and `prevResult`.
pub fn plugin_config(
    network: &Network,
    index: usize,
    capability_args: &Map<String, Value>,
    cni_args: &Map<String, Value>,
    prev: Option<&Value>,
) -> Vec<u8> {
    let mut conf = network.plugins[index].clone();
    conf.insert(
        "cniVersion".into(),
        Value::String(network.cni_version.to_string()),
    );
    conf.insert("name".into(), Value::String(network.name.clone()));
    let rc = runtime_config_for(&network.plugins[index], capability_args);
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if !cni_args.is_empty() {
        let args = conf
            .entry("args")
            .or_insert_with(|| Value::Object(Map::new()));
        if !args.is_object() {
            *args = Value::Object(Map::new());
        }
        let cni = args
            .as_object_mut()
            .expect("object")
            .entry("cni")
            .or_insert_with(|| Value::Object(Map::new()));
        if !cni.is_object() {
            *cni = Value::Object(Map::new());
        }
        let cni = cni.as_object_mut().expect("object");
        for (k, v) in cni_args {
            cni.insert(k.clone(), v.clone());
        }
    }
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    serde_json::to_vec(&conf).expect("config serializes")
}

impl Chain {
    fn context(&self, cmd: Command, network: &Network, plugin: &str, ifname: &str) -> String {
        format!(
            "{cmd} network \"{}\" (delegate \"{plugin}\", interface {ifname}) for {}",
            network.name, self.who
        )
    }

    /// Run every plugin of one network for `cmd`. ADD goes in order, each plugin getting the one
    /// before's result, and stops at the first error; DEL goes in reverse and keeps going; CHECK,
    /// GC and STATUS go in order. `prev` is the first plugin's `prevResult` on ADD and every
    /// plugin's on DEL/CHECK. Returns the final result on ADD.
    pub fn run_network(
        &self,
        cmd: Command,
        network: &Network,
        ifname: &str,
        inputs: &Inputs,
        prev: Option<&CniResult>,
    ) -> Result<Option<CniResult>, CniError> {
        let (capability_args, cni_args, extra) =
            (&inputs.capability_args, &inputs.cni_args, &inputs.extra);
        let version = network.cni_version;
        let mut prev_value = match prev {
            Some(r) => Some(r.to_value(version).map_err(|e| {
                e.context(self.context(cmd, network, network.plugin_type(0), ifname))
            })?),
            None => None,
        };
        let mut last: Option<CniResult> = prev.cloned();
        let order: Vec<usize> = if cmd == Command::Del {
            (0..network.plugins.len()).rev().collect()
        } else {
            (0..network.plugins.len()).collect()
        };
        let mut del_errors: Vec<CniError> = Vec::new();
        for i in order {
            let plugin = network.plugin_type(i);
            let ctx = || self.context(cmd, network, plugin, ifname);
            let mut conf =
                plugin_config(network, i, capability_args, cni_args, prev_value.as_ref());
            if !extra.is_empty() {
                let mut v: Map<String, Value> = serde_json::from_slice(&conf).expect("own json");
                v.extend(extra.clone());
                conf = serde_json::to_vec(&v).expect("serializes");
            }
            let run = || -> Result<Vec<u8>, CniError> {
                let binary = exec::find_plugin(plugin, &self.search_path)?;
                exec::run(
                    &binary,
                    &Invocation {
                        command: cmd,
                        container_id: &self.container_id,
                        netns: &self.netns,
                        ifname,
                        args: &self.cni_args,
                        path: &self.search_path,
                        timeout: self.timeout,
                    },
                    &conf,
                )
            };
            match (cmd, run()) {
                (Command::Add, Ok(out)) => {
                    let result = if out.iter().all(u8::is_ascii_whitespace) {
                        match &last {
                            Some(p) => {
                                tracing::warn!(
                                    "{}: printed no result; passing prevResult on",
                                    ctx()
                                );
                                p.clone()
                            }
                            None => {
                                return Err(CniError::new(
                                    Code::DELEGATE_BAD_OUTPUT,
                                    "plugin printed no result",
                                )
                                .context(ctx()))
                            }
                        }
                    } else {
                        let (r, _) = CniResult::parse(&out, version).map_err(|e| {
                            CniError::new(Code::DELEGATE_BAD_OUTPUT, e.msg)
                                .with_details(e.details)
                                .context(ctx())
                        })?;
                        r
                    };
                    prev_value = Some(result.to_value(version).map_err(|e| e.context(ctx()))?);
                    last = Some(result);
                }
                (Command::Del, Err(e)) => del_errors.push(e.context(ctx())),
                (_, Ok(_)) => {}
                (_, Err(e)) => return Err(e.context(ctx())),
            }
        }
        match del_errors.len() {
            0 => Ok(if cmd == Command::Add { last } else { None }),
            1 => Err(del_errors.remove(0)),
            _ => Err(join_errors(del_errors)),
        }
    }

    /// ADD every attachment in order, after recording all of them in the cache as pending; the
    /// caller stores the results. If one fails, everything added so far (the failed one included)
    /// is DELeted in reverse, and the error names the network and delegate. Returns the cluster
    /// network's result.
    pub fn add(
        &self,
        cache: &ResultCache,
        record: &mut Record,
        attachments: &[Attachment],
        prev: Option<&CniResult>,
    ) -> Result<CniResult, CniError> {
        // Find every delegate before touching anything: a missing binary fails the ADD up front
        // instead of half-way, with nothing to undo.
        for a in attachments {
            for i in 0..a.network.plugins.len() {
                let plugin = a.network.plugin_type(i);
                exec::find_plugin(plugin, &self.search_path).map_err(|e| {
                    e.context(self.context(Command::Add, &a.network, plugin, &a.ifname))
                })?;
            }
        }
        // One write names everything this ADD may create, before any delegate runs; a crash at
        // any point leaves a record DEL can work from (DEL of what was never added succeeds).
        record.attachments = attachments
            .iter()
            .map(|a| CachedAttachment {
                network: a.network.name.clone(),
                ifname: a.ifname.clone(),
                cluster: a.cluster,
                config: a.network.bytes.clone(),
                capability_args: a.capability_args.clone(),
                cni_args: a.cni_args.clone(),
                result: None,
                device_info_file: a.device_info_file.clone(),
            })
            .collect();
        if let Err(e) = cache.store(record) {
            record.attachments.clear();
            return Err(e);
        }
        let mut cluster_result = None;
        for (k, a) in attachments.iter().enumerate() {
            let first_prev = if a.cluster { prev } else { None };
            match self.run_network(
                Command::Add,
                &a.network,
                &a.ifname,
                &Inputs::of(a),
                first_prev,
            ) {
                Ok(Some(result)) => {
                    let value = result
                        .to_value(a.network.cni_version)
                        .expect("converted before");
                    record.attachments[k].result = Some(value);
                    if a.cluster {
                        cluster_result = Some(result);
                    }
                }
                Ok(None) => unreachable!("ADD returns a result"),
                Err(e) => {
                    // Undo what was started: this attachment and the ones before it.
                    record.attachments.truncate(k + 1);
                    return Err(self.undo(cache, record, e));
                }
            }
        }
        Ok(cluster_result.unwrap_or_default())
    }

    /// Undo an ADD that failed after attachments were made: DEL them all in reverse; keep in the
    /// cache only those whose DEL failed (for the runtime's DEL to retry). Returns `cause`, with
    /// the rollback's errors in its details.
    pub fn undo(&self, cache: &ResultCache, record: &mut Record, cause: CniError) -> CniError {
        let failed = self.del_attachments(record);
        if failed.is_empty() {
            if let Err(e) = cache.remove(&record.container_id, &record.if_name) {
                tracing::error!("rollback: {e}");
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

    /// DEL the record's attachments in reverse, each with its cached result as `prevResult`.
    /// Keeps going past errors; returns the attachments whose DEL failed, with their errors.
    pub fn del_attachments(&self, record: &Record) -> Vec<(CachedAttachment, CniError)> {
        let mut failed = Vec::new();
        for a in record.attachments.iter().rev() {
            if let Err(e) = self.del_one(a) {
                tracing::warn!("{e}");
                failed.push((a.clone(), e));
            }
        }
        failed.reverse();
        failed
    }

    fn del_one(&self, a: &CachedAttachment) -> Result<(), CniError> {
        self.del_delegates(a)?;
        if let Some(f) = &a.device_info_file {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("removing device-info {f}: {e}")
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn del_delegates(&self, a: &CachedAttachment) -> Result<(), CniError> {
        let network = Network::from_bytes(a.config.as_bytes(), "cache").map_err(|e| {
            e.context(format!(
                "DEL network \"{}\" (interface {}) for {}",
                a.network, a.ifname, self.who
            ))
        })?;
        let prev = self.cached_result(a, &network);
        self.run_network(
            Command::Del,
            &network,
            &a.ifname,
            &Inputs::of(a),
            prev.as_ref(),
        )
        .map(|_| ())
    }

    fn cached_result(&self, a: &CachedAttachment, network: &Network) -> Option<CniResult> {
        let v = a.result.clone()?;
        match CniResult::from_value(v, network.cni_version) {
            Ok((r, _)) => Some(r),
            Err(e) => {
                tracing::warn!(
                    "cached result of network \"{}\" for {} is unusable: {e}",
                    a.network,
                    self.who
                );
                None
            }
        }
    }

    /// CHECK every attachment in order with its cached result. Networks older than 0.4.0 cannot be
    /// checked and are skipped; so are conflists with `disableCheck`.
    pub fn check(&self, record: &Record) -> Result<(), CniError> {
        for a in &record.attachments {
            let network = Network::from_bytes(a.config.as_bytes(), "cache")?;
            if network.cni_version < Version::V0_4_0 || network.disable_check {
                tracing::debug!(
                    "CHECK skips network \"{}\" (cniVersion {}, disableCheck {})",
                    a.network,
                    network.cni_version,
                    network.disable_check
                );
                continue;
            }
            let Some(prev) = self.cached_result(a, &network) else {
                return Err(
                    CniError::new(Code::UNKNOWN_CONTAINER, "no ADD result is cached").context(
                        self.context(Command::Check, &network, network.plugin_type(0), &a.ifname),
                    ),
                );
            };
            self.run_network(
                Command::Check,
                &network,
                &a.ifname,
                &Inputs::of(a),
                Some(&prev),
            )?;
        }
        Ok(())
    }
}

/// Several errors as one: the first one's code, every message.
pub fn join_errors(errors: Vec<CniError>) -> CniError {
    let code = errors[0].code;
    let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
    CniError::new(
        code,
        format!("{} errors: {}", errors.len(), msgs.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugin_config_injects_what_a_runtime_would() {
        let n = Network::from_value(
            json!({"cniVersion":"1.0.0","cniVersions":["1.1.0"],"name":"n","plugins":[
                {"type":"bridge","custom":{"k":1}},
                {"type":"portmap","capabilities":{"portMappings":true},"args":{"cni":{"a":"nad","b":"nad"}}}]}),
            "t",
        )
        .unwrap();
        let caps = json!({"portMappings":[{"hostPort":1}],"bandwidth":{}})
            .as_object()
            .unwrap()
            .clone();
        let cni_args = json!({"b":"annotation"}).as_object().unwrap().clone();
        let c0: Value =
            serde_json::from_slice(&plugin_config(&n, 0, &caps, &Map::new(), None)).unwrap();
        assert_eq!(
            c0,
            json!({"type":"bridge","custom":{"k":1},"cniVersion":"1.1.0","name":"n"})
        );
        let prev = json!({"cniVersion":"1.1.0"});
        let c1: Value =
            serde_json::from_slice(&plugin_config(&n, 1, &caps, &cni_args, Some(&prev))).unwrap();
        assert_eq!(
            c1["runtimeConfig"],
            json!({"portMappings":[{"hostPort":1}]})
        );
        assert_eq!(c1["args"]["cni"], json!({"a":"nad","b":"annotation"}));
        assert_eq!(c1["prevResult"], prev);
    }

    #[test]
    fn joined_errors_keep_the_first_code() {
        let e = join_errors(vec![
            CniError::new(Code::IO, "a"),
            CniError::new(Code::DELEGATE_FAILED, "b"),
        ]);
        assert_eq!(e.code, Code::IO);
        assert!(e.msg.starts_with("2 errors: a") && e.msg.contains("b"));
    }
}
