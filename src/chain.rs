//! Executing a plan: each network's plugins in order with `prevResult` passing, as libcni does for a
//! conflist; attachments in order on ADD (stopping at the first failure, for the engine to undo);
//! DEL in reverse from the cache, best-effort; CHECK/STATUS/GC on every attachment.

use crate::cache::{AttachmentRecord, SandboxRecord};
use crate::cancel::Cancel;
use crate::cni::error::{CniError, Code};
use crate::cni::exec::{self, Invocation};
use crate::cni::{CniResult, Command, Version};
use crate::config::Network;
use crate::plan::{runtime_config_for, Attachment, DelegateInputs};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// After this many DELs that failed for the same attachments, DEL gives up on them (logging what
/// may be left) so that a broken delegate cannot keep a pod from being deleted forever.
pub const MAX_DEL_ATTEMPTS: u32 = 5;

/// Told of every delegate run: its plugin type, the verb, and how long it took (the daemon's
/// metrics).
#[derive(Clone)]
pub struct ExecObserver(pub std::sync::Arc<ObserveFn>);

pub type ObserveFn = dyn Fn(&str, Command, Duration) + Send + Sync;

impl std::fmt::Debug for ExecObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecObserver")
    }
}

/// How to reach the delegates for one container, and the call's limits.
#[derive(Debug, Clone)]
pub struct Chain {
    pub container_id: String,
    pub netns: String,
    pub netns_override: bool,
    pub cni_args: String,
    /// binDir, then the runtime's CNI_PATH.
    pub search_path: Vec<PathBuf>,
    /// What the admin gives delegates besides the CNI variables.
    pub env: Vec<(String, String)>,
    /// Each delegate's limit.
    pub timeout: Duration,
    /// The whole call's deadline (ADD): no delegate runs past it. DEL and rollback are not bound
    /// by it: undoing must finish.
    pub deadline: Option<Instant>,
    pub cancel: Cancel,
    /// "container X (pod ns/name)", for messages.
    pub who: String,
    pub observer: Option<ExecObserver>,
    /// Delegates run chrooted here (the daemon's `chrootDir`).
    pub chroot: Option<PathBuf>,
}

/// The config one plugin of a network is called with: the plugin's own keys, plus `name` and
/// `cniVersion` of the network, its filtered `runtimeConfig`, `args.cni` additions, `prevResult`
/// and any `extra` top-level keys (GC's attachment lists).
pub fn plugin_config(
    network: &Network,
    index: usize,
    inputs: &DelegateInputs,
    prev: Option<&Value>,
    extra: &Map<String, Value>,
) -> Vec<u8> {
    let mut conf = network.plugins[index].clone();
    conf.insert(
        "cniVersion".into(),
        Value::String(network.cni_version.to_string()),
    );
    conf.insert("name".into(), Value::String(network.name.clone()));
    let rc = runtime_config_for(&network.plugins[index], &inputs.capability_args);
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if !inputs.cni_args.is_empty() {
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
        for (k, v) in &inputs.cni_args {
            cni.insert(k.clone(), v.clone());
        }
    }
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    for (k, v) in extra {
        conf.insert(k.clone(), v.clone());
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

    /// Refuse to start more work once the call is cancelled or past its deadline.
    pub fn check_live(&self) -> Result<(), CniError> {
        if self.cancel.is_cancelled() {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!(
                    "{}: the call was cancelled (its caller went away)",
                    self.who
                ),
            ));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!("{}: the call ran out of time (addTimeoutSeconds)", self.who),
            ));
        }
        Ok(())
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
        inputs: &DelegateInputs,
        prev: Option<&CniResult>,
        extra: &Map<String, Value>,
    ) -> Result<Option<CniResult>, CniError> {
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
        // Undoing is never cancelled and has each delegate's own limit only.
        let never = Cancel::never();
        let (cancel, call_deadline) = if cmd == Command::Del {
            (&never, None)
        } else {
            (&self.cancel, self.deadline)
        };
        let mut del_errors: Vec<CniError> = Vec::new();
        for i in order {
            let plugin = network.plugin_type(i);
            let ctx = || self.context(cmd, network, plugin, ifname);
            let conf = plugin_config(network, i, inputs, prev_value.as_ref(), extra);
            let run = || -> Result<Vec<u8>, CniError> {
                let binary =
                    exec::find_plugin_in(plugin, &self.search_path, self.chroot.as_deref())?;
                let started = Instant::now();
                let own = started + self.timeout;
                let out = exec::run(
                    &binary,
                    &Invocation {
                        command: cmd,
                        container_id: &self.container_id,
                        netns: &self.netns,
                        netns_override: self.netns_override,
                        ifname,
                        args: &self.cni_args,
                        path: &self.search_path,
                        env: &self.env,
                        timeout: self.timeout,
                        deadline: call_deadline.map_or(own, |d| d.min(own)),
                        cancel,
                        chroot: self.chroot.as_deref(),
                    },
                    &conf,
                );
                if let Some(o) = &self.observer {
                    (o.0)(plugin, cmd, started.elapsed());
                }
                out
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

    /// Find every delegate before touching anything: a missing binary fails the ADD up front
    /// instead of half-way, with nothing to undo.
    pub fn preflight(&self, attachments: &[Attachment]) -> Result<(), CniError> {
        for a in attachments {
            for i in 0..a.network.plugins.len() {
                let plugin = a.network.plugin_type(i);
                exec::find_plugin_in(plugin, &self.search_path, self.chroot.as_deref()).map_err(
                    |e| e.context(self.context(Command::Add, &a.network, plugin, &a.ifname)),
                )?;
            }
        }
        Ok(())
    }

    /// ADD every attachment in order, recording each result in `record` (which lists them all,
    /// pending). Returns every attachment's final result. On a failure — of a delegate, or of the
    /// call (cancelled, out of time) — `record` is cut to the attachments that may exist, the
    /// failed one included, for the caller to undo.
    pub fn add(
        &self,
        attachments: &[Attachment],
        prev: Option<&CniResult>,
        record: &mut SandboxRecord,
    ) -> Result<Vec<CniResult>, CniError> {
        let mut results = Vec::with_capacity(attachments.len());
        for (k, a) in attachments.iter().enumerate() {
            let first_prev = if a.cluster { prev } else { None };
            let outcome = self.check_live().and_then(|()| {
                self.run_network(
                    Command::Add,
                    &a.network,
                    &a.ifname,
                    &a.inputs,
                    first_prev,
                    &Map::new(),
                )
            });
            match outcome {
                Ok(Some(result)) => {
                    record.attachments[k].result = Some(
                        result
                            .to_value(a.network.cni_version)
                            .expect("converted before"),
                    );
                    results.push(result);
                }
                Ok(None) => unreachable!("ADD returns a result"),
                Err(e) => {
                    // Nothing after this one was started.
                    record.attachments.truncate(k + 1);
                    return Err(e);
                }
            }
        }
        Ok(results)
    }

    /// DEL the record's attachments in reverse, each with its cached result as `prevResult`.
    /// Keeps going past errors; returns the attachments whose DEL failed, with their errors.
    pub fn del_attachments(&self, record: &SandboxRecord) -> Vec<(AttachmentRecord, CniError)> {
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

    fn del_one(&self, a: &AttachmentRecord) -> Result<(), CniError> {
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
            &a.inputs,
            prev.as_ref(),
            &Map::new(),
        )?;
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

    fn cached_result(&self, a: &AttachmentRecord, network: &Network) -> Option<CniResult> {
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
    pub fn check(&self, record: &SandboxRecord) -> Result<(), CniError> {
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
                &a.inputs,
                Some(&prev),
                &Map::new(),
            )?;
        }
        Ok(())
    }
}

/// Several errors as one: the first one's code, every message.
pub fn join_errors(errors: Vec<CniError>) -> CniError {
    if errors.len() == 1 {
        return errors.into_iter().next().expect("one");
    }
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
        let only_caps = DelegateInputs {
            capability_args: caps.clone(),
            cni_args: Map::new(),
        };
        let c0: Value =
            serde_json::from_slice(&plugin_config(&n, 0, &only_caps, None, &Map::new())).unwrap();
        assert_eq!(
            c0,
            json!({"type":"bridge","custom":{"k":1},"cniVersion":"1.1.0","name":"n"})
        );
        let prev = json!({"cniVersion":"1.1.0"});
        let both = DelegateInputs {
            capability_args: caps,
            cni_args,
        };
        let c1: Value =
            serde_json::from_slice(&plugin_config(&n, 1, &both, Some(&prev), &Map::new())).unwrap();
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
