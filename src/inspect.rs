//! `plexus inspect [CONTAINER_ID | NAMESPACE/POD]`: what plexus attached for a sandbox, read from
//! the result cache alone (see [`crate::cache`]), so it works with the API server down. Run it on
//! the node.
//!
//! - Without an argument: every sandbox the cache holds, one row each (container ID, pod, plexus
//!   network, interface count, created, state), then the cache files that cannot be read.
//! - With a container ID (full, or a prefix matching one container only) or `namespace/pod`: each
//!   attachment of each matching sandbox (a container may have one record per plexus network that
//!   shares the `cniDir`; a pod may have had several sandboxes): its network, NAD, delegate chain,
//!   interface, IPs and MAC (from the cached result), device, and whether it is pending or its DEL
//!   failed. When the node daemon answers on `--socket` within a second, what its watch cache
//!   knows of the pod, and whether the pod's `k8s.v1.cni.cncf.io/networks` annotation and the
//!   cache agree. The daemon is optional: when it is absent or silent inspect says so and goes on.
//!
//! Exit codes: 0 shown; 1 nothing matches, the prefix is ambiguous, or the cache directory cannot
//! be read; 2 usage (a malformed argument; clap's own usage errors are 2 too).
//!
//! # States
//!
//! A sandbox (and each of its attachments) is `ok`, `add-pending` (some attachment has no result:
//! its ADD never finished — plexus crashed or the call is still in flight; the next DEL cleans it
//! up) or `del-failed` (a DEL failed `delAttempts` times for the attachments still recorded; the
//! next DEL retries them; after 5 plexus gives up on them). `del-failed` wins over `add-pending`.
//!
//! # JSON (`--output json`)
//!
//! One document, the same shape with and without an argument (`attachments` is always filled;
//! `daemon` only when an argument was given and the sandbox names its pod):
//!
//! ```text
//! {
//!   "version": 1,
//!   "cniDir": "/var/lib/cni/multus",
//!   "query": "NAMESPACE/POD" | "CONTAINER-ID-PREFIX" | null,
//!   "sandboxes": [{
//!     "containerId": string,            full ID
//!     "pod": "ns/name" | null,
//!     "network": string,                the plexus network (its config's name; "" in a legacy record)
//!     "ifname": string,                 the runtime's CNI_IFNAME
//!     "netns": string,
//!     "created": string | null,         RFC 3339, when the ADD started
//!     "interfaces": number,             attachments recorded
//!     "state": "ok" | "add-pending" | "del-failed",
//!     "pendingAttachments": number,
//!     "delAttempts": number,
//!     "file": string,                   the cache file
//!     "attachments": [{
//!       "ifname": string,
//!       "network": string,              the delegate network's name
//!       "statusName": string,           what network-status calls it: NAD ns/name or network name
//!       "nad": "ns/name" | null,
//!       "cluster": bool,                the cluster (default) network
//!       "chain": "bridge+portmap" | null,   null when the cached config cannot be read
//!       "plugins": [string],            the chain's plugin types, in order
//!       "cniVersion": string | null,    the version the network was run at
//!       "ips": [string],                CIDR addresses of the interface, from the result
//!       "mac": string | null,           of the sandbox interface named like ifname
//!       "device": {"resource": string, "id": string} | null,
//!       "claim": null | {               the DRA claim the device came from
//!         "namespace", "claim", "podClaim", "request", "driver", "pool", "device": string,
//!         "statusEntry": "none" | "pending" | "created" | "merged"   what plexus wrote to it
//!       },
//!       "state": "ok" | "add-pending" | "del-failed",
//!       "stateText": string,            the same, in words
//!       "problems": [string]            what could not be read (config, result)
//!     }],
//!     "daemon": null | {
//!       "socket": string,
//!       "reachable": bool,
//!       "error": string | null,         why it is not reachable, or has no watch cache
//!       "synced": bool | null, "found": bool | null, "uid": string | null, "nodeName": string | null,
//!       "sandboxUid": string | null,    K8S_POD_UID the runtime sent for this sandbox
//!       "uidMatches": bool | null,      null when either UID is unknown
//!       "annotation": null | {          null unless the pod was found
//!         "value": string | null,       the k8s.v1.cni.cncf.io/networks annotation
//!         "error": string | null,       why it does not parse (then agree is null)
//!         "expected": [string],         NAD refs it selects, namespace defaulted to the pod's
//!         "cached": [string],           statusName of the non-cluster attachments, in order
//!         "agree": bool | null,
//!         "missing": [string],          selected but not attached
//!         "extra": [string],            attached but not selected
//!         "orderDiffers": bool,         the same networks in another order
//!         "notFromAnnotation": [string] attached before the selected ones (defaultNetworks, delegates)
//!       }
//!     }
//!   }],
//!   "unreadable": [{"file": string, "reason": string}]
//! }
//! ```

use crate::cache::{AttachmentRecord, Loaded, ResultCache, SandboxRecord};
use crate::cni::{CniResult, Version};
use crate::config::{Network, DEFAULT_CNI_DIR};
use crate::k8s::annotations::{is_dns_label, is_dns_subdomain, parse_networks};
use crate::k8s::NETWORKS_ANNOTATION;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the node daemon listens by default (`<socketDir>/multus.sock`).
pub const DEFAULT_SOCKET: &str = "/run/multus/multus.sock";
/// How long the daemon has to answer.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(1);
/// Characters of a container ID shown in text tables.
const SHORT_ID: usize = 12;

/// How a report is printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Text,
    /// One stable JSON document for scripts.
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// A container ID (full, or a prefix of one) or NAMESPACE/POD. Without it: every sandbox.
    pub target: Option<String>,
    /// The plexus config's `cniDir` (the cache is `<DIR>/plexus/`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CNI_DIR)]
    pub cni_dir: PathBuf,
    /// How to print: aligned columns, or one JSON document (schema in docs/operators.md).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// The node daemon's socket; asked what its watch cache knows of the pod (optional).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// What a command prints and how it exits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Report {
    fn fail(code: u8, msg: String) -> Report {
        Report {
            stdout: String::new(),
            stderr: msg,
            code,
        }
    }

    /// Print it and give the exit code.
    pub fn emit(self) -> u8 {
        use std::io::Write;
        let _ = std::io::stdout().write_all(self.stdout.as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(self.stderr.as_bytes());
        self.code
    }
}

/// Run `plexus inspect`: print the report, return the exit code.
pub fn run(args: &InspectArgs) -> u8 {
    inspect(args).emit()
}

/// Lay out rows as columns two spaces apart; the last column is not padded.
pub fn align(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A cache record and its file.
struct Entry {
    file: PathBuf,
    record: SandboxRecord,
}

/// A cache file that is not a usable record.
struct Unreadable {
    file: PathBuf,
    reason: String,
}

/// What the argument names.
#[derive(Debug, PartialEq)]
enum Target {
    Container(String),
    Pod(String),
}

fn parse_target(s: &str) -> Result<Target, String> {
    if let Some((ns, name)) = s.split_once('/') {
        if is_dns_label(ns) && is_dns_subdomain(name) {
            return Ok(Target::Pod(s.to_string()));
        }
        return Err(format!(
            "\"{}\" is not NAMESPACE/POD (a namespace and a pod name)",
            s.escape_debug()
        ));
    }
    crate::cni::request::validate_container_id(s).map_err(|_| {
        format!(
            "\"{}\" is neither a container ID (letters, digits, '_', '.', '-') nor NAMESPACE/POD",
            s.escape_debug()
        )
    })?;
    Ok(Target::Container(s.to_string()))
}

fn load(cni_dir: &Path) -> Result<(Vec<Entry>, Vec<Unreadable>), String> {
    let dir = cni_dir.join("plexus").join("attachments");
    match std::fs::read_dir(&dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(format!("cannot read the cache {}: {e}", dir.display())),
    }
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (file, loaded) in ResultCache::new(cni_dir).all() {
        match loaded {
            Loaded::Found(record) => entries.push(Entry { file, record }),
            Loaded::Unreadable(reason) => {
                // The reason starts with the path; it is shown next to it already.
                let prefix = format!("{}: ", file.display());
                let reason = reason.strip_prefix(&prefix).unwrap_or(&reason).to_string();
                bad.push(Unreadable { file, reason })
            }
            Loaded::Missing => {}
        }
    }
    Ok((entries, bad))
}

/// The container ID a cache file name says it holds (`<network>=<id>=<ifname>.json`, or the
/// legacy `<id>-<ifname>.json`, where the ID is everything before the last `-`).
fn file_container_id(file: &Path) -> Option<String> {
    let stem = file.file_stem()?.to_str()?;
    let parts: Vec<&str> = stem.split('=').collect();
    match parts.as_slice() {
        [_, id, _] => Some(id.to_string()),
        [legacy] if !legacy.starts_with("h-") => {
            legacy.rsplit_once('-').map(|(id, _)| id.to_string())
        }
        _ => None,
    }
}

pub fn inspect(args: &InspectArgs) -> Report {
    let target = match args.target.as_deref().map(parse_target).transpose() {
        Ok(t) => t,
        Err(e) => return Report::fail(2, format!("plexus inspect: {e}\n")),
    };
    let (entries, bad) = match load(&args.cni_dir) {
        Ok(x) => x,
        Err(e) => return Report::fail(1, format!("plexus inspect: {e}\n")),
    };
    let Some(target) = target else {
        return list(args, &entries, &bad);
    };
    let (chosen, bad): (Vec<&Entry>, Vec<&Unreadable>) = match &target {
        Target::Pod(pod) => {
            let chosen: Vec<&Entry> = entries
                .iter()
                .filter(|e| e.record.pod.as_deref() == Some(pod.as_str()))
                .collect();
            (chosen, vec![])
        }
        Target::Container(prefix) => {
            let mut ids: Vec<&str> = entries
                .iter()
                .map(|e| e.record.container_id.as_str())
                .filter(|id| id.starts_with(prefix.as_str()))
                .collect();
            ids.sort();
            ids.dedup();
            if ids.contains(&prefix.as_str()) {
                ids = vec![prefix.as_str()];
            }
            if ids.len() > 1 {
                let mut msg = format!(
                    "plexus inspect: \"{prefix}\" is ambiguous: {} container IDs start with it:\n",
                    ids.len()
                );
                for id in &ids {
                    let pods: Vec<&str> = entries
                        .iter()
                        .filter(|e| e.record.container_id == *id)
                        .filter_map(|e| e.record.pod.as_deref())
                        .collect();
                    let pod = pods.first().copied().unwrap_or("-");
                    let _ = writeln!(msg, "  {id}  {pod}");
                }
                return Report::fail(1, msg);
            }
            let chosen: Vec<&Entry> = entries
                .iter()
                .filter(|e| ids.first() == Some(&e.record.container_id.as_str()))
                .collect();
            let id_matches = |id: &str| match ids.first() {
                Some(full) => id == *full,
                None => id.starts_with(prefix.as_str()),
            };
            let bad_here: Vec<&Unreadable> = bad
                .iter()
                .filter(|b| file_container_id(&b.file).is_some_and(|id| id_matches(&id)))
                .collect();
            (chosen, bad_here)
        }
    };
    let query = args.target.clone().unwrap_or_default();
    if chosen.is_empty() {
        let mut msg = format!(
            "plexus inspect: no sandbox in the cache at {} matches \"{query}\"\n",
            cache_dir(&args.cni_dir).display()
        );
        for b in &bad {
            let _ = writeln!(
                msg,
                "  a cache file for it cannot be read: {}: {}",
                b.file.display(),
                b.reason
            );
        }
        return Report::fail(1, msg);
    }
    let views: Vec<SandboxView> = chosen
        .iter()
        .map(|e| {
            let mut v = SandboxView::of(e);
            v.daemon = e
                .record
                .pod
                .as_deref()
                .map(|pod| daemon_view(&args.socket, pod, &e.record));
            v
        })
        .collect();
    let stdout = match args.output {
        Output::Json => json_document(&args.cni_dir, Some(&query), &views, &bad),
        Output::Text => {
            let mut out = String::new();
            for (i, v) in views.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(&v.detail_text());
            }
            if !bad.is_empty() {
                out.push('\n');
                out.push_str(&unreadable_text(&bad));
            }
            out
        }
    };
    Report {
        stdout,
        stderr: String::new(),
        code: 0,
    }
}

fn cache_dir(cni_dir: &Path) -> PathBuf {
    cni_dir.join("plexus")
}

fn list(args: &InspectArgs, entries: &[Entry], bad: &[Unreadable]) -> Report {
    let views: Vec<SandboxView> = entries.iter().map(SandboxView::of).collect();
    let bad: Vec<&Unreadable> = bad.iter().collect();
    let stdout = match args.output {
        Output::Json => json_document(&args.cni_dir, None, &views, &bad),
        Output::Text => {
            let mut out = String::new();
            if views.is_empty() {
                let _ = writeln!(
                    out,
                    "no sandboxes in the cache at {}",
                    cache_dir(&args.cni_dir).display()
                );
            } else {
                let mut rows = vec![vec![
                    "CONTAINER".to_string(),
                    "POD".into(),
                    "NETWORK".into(),
                    "IFACES".into(),
                    "CREATED".into(),
                    "STATE".into(),
                ]];
                for v in &views {
                    let r = &v.record;
                    rows.push(vec![
                        r.container_id.chars().take(SHORT_ID).collect(),
                        r.pod.clone().unwrap_or_else(|| "-".into()),
                        dash(&r.network),
                        r.attachments.len().to_string(),
                        dash(&r.created),
                        v.state_short(),
                    ]);
                }
                out.push_str(&align(&rows, ""));
            }
            if !bad.is_empty() {
                out.push('\n');
                out.push_str(&unreadable_text(&bad));
            }
            out
        }
    };
    Report {
        stdout,
        stderr: String::new(),
        code: 0,
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn unreadable_text(bad: &[&Unreadable]) -> String {
    let mut out = String::from("unreadable cache files:\n");
    for b in bad {
        let _ = writeln!(out, "  {}: {}", b.file.display(), b.reason);
    }
    out
}

/// One attachment as shown.
struct AttachmentView {
    ifname: String,
    network: String,
    status_name: String,
    nad: Option<String>,
    cluster: bool,
    plugins: Option<Vec<String>>,
    cni_version: Option<Version>,
    ips: Vec<String>,
    mac: Option<String>,
    device: Option<(String, String)>,
    claim: Option<crate::k8s::dra::ClaimDevice>,
    state: &'static str,
    state_text: String,
    problems: Vec<String>,
}

fn times(n: u32) -> String {
    if n == 1 {
        "1 time".into()
    } else {
        format!("{n} times")
    }
}

impl AttachmentView {
    fn of(a: &AttachmentRecord, del_attempts: u32) -> AttachmentView {
        let mut problems = Vec::new();
        let (plugins, version) = match Network::from_bytes(a.config.as_bytes(), "cached config") {
            Ok(n) => (
                Some(
                    (0..n.plugins.len())
                        .map(|i| n.plugin_type(i).to_string())
                        .collect::<Vec<_>>(),
                ),
                Some(n.cni_version),
            ),
            Err(e) => {
                problems.push(e.to_string());
                (None, None)
            }
        };
        let (mut ips, mut mac) = (vec![], None);
        if let Some(result) = &a.result {
            match result_addresses(result, version.unwrap_or(Version::LATEST), &a.ifname) {
                Ok((i, m)) => (ips, mac) = (i, m),
                Err(e) => problems.push(format!("cached result: {e}")),
            }
        }
        let (state, state_text) = match (del_attempts, a.result.is_some()) {
            (0, true) => ("ok", "ok".to_string()),
            (0, false) => (
                "add-pending",
                "ADD pending (never finished: a crash or a call in flight)".to_string(),
            ),
            (n, finished) => (
                "del-failed",
                format!(
                    "DEL failed {}, retried on the next DEL{}",
                    times(n),
                    if finished {
                        ""
                    } else {
                        " (its ADD never finished)"
                    }
                ),
            ),
        };
        let status_name = if a.status_name.is_empty() {
            a.network.clone()
        } else {
            a.status_name.clone()
        };
        AttachmentView {
            ifname: a.ifname.clone(),
            network: a.network.clone(),
            nad: status_name.contains('/').then(|| status_name.clone()),
            status_name,
            cluster: a.cluster,
            plugins,
            cni_version: version,
            ips,
            mac,
            device: a.device.clone(),
            claim: a.claim.clone(),
            state,
            state_text,
            problems,
        }
    }

    fn chain(&self) -> Option<String> {
        self.plugins.as_ref().map(|p| p.join("+"))
    }

    fn json(&self) -> Value {
        json!({
            "ifname": self.ifname,
            "network": self.network,
            "statusName": self.status_name,
            "nad": self.nad,
            "cluster": self.cluster,
            "chain": self.chain(),
            "plugins": self.plugins.clone().unwrap_or_default(),
            "cniVersion": self.cni_version.map(|v| v.to_string()),
            "ips": self.ips,
            "mac": self.mac,
            "device": self.device.as_ref().map(|(r, id)| json!({"resource": r, "id": id})),
            "claim": self.claim.as_ref().map(|c| json!({"namespace": c.namespace, "claim": c.claim,
                "podClaim": c.pod_claim, "request": c.request, "driver": c.driver, "pool": c.pool,
                "device": c.device, "statusEntry": c.status_entry})),
            "state": self.state,
            "stateText": self.state_text,
            "problems": self.problems,
        })
    }
}

/// The addresses and MAC of the sandbox interface `ifname` in a cached result: the IPs that point
/// at it (or at no interface); all of them when the result names no such interface.
fn result_addresses(
    result: &Value,
    version: Version,
    ifname: &str,
) -> Result<(Vec<String>, Option<String>), String> {
    let (r, _) = CniResult::from_value(result.clone(), version).map_err(|e| e.to_string())?;
    let in_sandbox = |i: &crate::cni::result::Interface| {
        i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty())
    };
    let idx = r
        .interfaces
        .iter()
        .position(in_sandbox)
        .or_else(|| r.interfaces.iter().position(|i| i.name == ifname));
    let mac = idx.and_then(|i| r.interfaces[i].mac.clone());
    let ips = r
        .ips
        .iter()
        .filter(|ip| match (idx, ip.interface) {
            (Some(want), Some(at)) => want == at,
            _ => true,
        })
        .map(|ip| ip.address.clone())
        .collect();
    Ok((ips, mac))
}

/// One sandbox as shown.
struct SandboxView<'a> {
    record: &'a SandboxRecord,
    file: &'a Path,
    attachments: Vec<AttachmentView>,
    daemon: Option<DaemonView>,
}

impl<'a> SandboxView<'a> {
    fn of(e: &'a Entry) -> SandboxView<'a> {
        SandboxView {
            record: &e.record,
            file: &e.file,
            attachments: e
                .record
                .attachments
                .iter()
                .map(|a| AttachmentView::of(a, e.record.del_attempts))
                .collect(),
            daemon: None,
        }
    }

    fn pending(&self) -> usize {
        self.record
            .attachments
            .iter()
            .filter(|a| a.result.is_none())
            .count()
    }

    fn state(&self) -> &'static str {
        if self.record.del_attempts > 0 {
            "del-failed"
        } else if self.pending() > 0 {
            "add-pending"
        } else {
            "ok"
        }
    }

    fn state_short(&self) -> String {
        let pending = self.pending();
        match (self.record.del_attempts, pending) {
            (0, 0) => "ok".into(),
            (0, _) => "ADD pending".into(),
            (n, 0) => format!("DEL failed {n}×"),
            (n, _) => format!("DEL failed {n}×, ADD pending"),
        }
    }

    fn json(&self) -> Value {
        let r = self.record;
        json!({
            "containerId": r.container_id,
            "pod": r.pod,
            "network": r.network,
            "ifname": r.if_name,
            "netns": r.netns,
            "created": (!r.created.is_empty()).then_some(&r.created),
            "interfaces": r.attachments.len(),
            "state": self.state(),
            "pendingAttachments": self.pending(),
            "delAttempts": r.del_attempts,
            "file": self.file.display().to_string(),
            "attachments": self.attachments.iter().map(AttachmentView::json).collect::<Vec<_>>(),
            "daemon": self.daemon.as_ref().map(DaemonView::json),
        })
    }

    fn detail_text(&self) -> String {
        let r = self.record;
        let mut out = format!("sandbox {}\n", r.container_id);
        let state = match (r.del_attempts, self.pending()) {
            (0, 0) => "ok".to_string(),
            (0, n) => format!("ADD pending ({n} of {} attachments)", r.attachments.len()),
            (n, _) => format!("DEL failed {}, retried on the next DEL", times(n)),
        };
        let head = vec![
            vec![
                "pod".to_string(),
                r.pod.clone().unwrap_or_else(|| "-".into()),
            ],
            vec![
                "network".into(),
                format!("{} (runtime ifname {})", dash(&r.network), r.if_name),
            ],
            vec!["netns".into(), dash(&r.netns)],
            vec!["created".into(), dash(&r.created)],
            vec!["state".into(), state],
            vec!["cache".into(), self.file.display().to_string()],
        ];
        out.push_str(&align(&head, "  "));
        out.push('\n');
        let mut rows = vec![[
            "IFNAME", "NETWORK", "NAD", "CHAIN", "IPS", "MAC", "DEVICE", "STATE",
        ]
        .map(String::from)
        .to_vec()];
        for a in &self.attachments {
            let network = if a.cluster {
                format!("{} (cluster)", a.network)
            } else {
                a.network.clone()
            };
            rows.push(vec![
                a.ifname.clone(),
                network,
                a.nad.clone().unwrap_or_else(|| "-".into()),
                a.chain().unwrap_or_else(|| "?".into()),
                if a.ips.is_empty() {
                    "-".into()
                } else {
                    a.ips.join(",")
                },
                a.mac.clone().unwrap_or_else(|| "-".into()),
                match (&a.device, &a.claim) {
                    (Some((r, id)), Some(c)) => {
                        format!("{id} ({r}, claim {}/{})", c.claim, c.request)
                    }
                    (Some((r, id)), None) => format!("{id} ({r})"),
                    (None, _) => "-".into(),
                },
                a.state_text.clone(),
            ]);
        }
        out.push_str(&align(&rows, "  "));
        for a in &self.attachments {
            for p in &a.problems {
                let _ = writeln!(out, "  note: {}: {p}", a.ifname);
            }
        }
        if let Some(d) = &self.daemon {
            out.push('\n');
            out.push_str(&align(&d.text(), "  "));
        }
        out
    }
}

/// What the node daemon's watch cache says of the pod (`GET /plexus/v1/pod`).
struct DaemonPod {
    synced: bool,
    found: bool,
    uid: Option<String>,
    node_name: Option<String>,
    annotations: Map<String, Value>,
}

/// The daemon's answer, or why there is none.
struct DaemonView {
    socket: PathBuf,
    pod_ref: String,
    answer: Result<DaemonPod, String>,
    /// Whether the socket answered at all (it may answer without a watch cache).
    reachable: bool,
    sandbox_uid: Option<String>,
    agreement: Option<Agreement>,
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn ask_daemon(socket: &Path, ns: &str, name: &str) -> (bool, Result<DaemonPod, String>) {
    if std::fs::symlink_metadata(socket).is_err() {
        return (false, Err(format!("no socket at {}", socket.display())));
    }
    let path = format!(
        "/plexus/v1/pod?namespace={}&name={}",
        encode(ns),
        encode(name)
    );
    let reply = match crate::unix_http::call(socket, "GET", &path, None, vec![], DAEMON_TIMEOUT) {
        Ok(r) => r,
        Err(e) => return (false, Err(format!("{}: {e}", socket.display()))),
    };
    if reply.status == 404 {
        return (
            true,
            Err("the daemon has no watch cache (it runs without Kubernetes, or predates /plexus/v1/pod)".into()),
        );
    }
    if reply.status != 200 {
        return (
            true,
            Err(format!(
                "the daemon answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body).trim()
            )),
        );
    }
    let v: Value = match serde_json::from_slice(&reply.body) {
        Ok(v) => v,
        Err(e) => return (true, Err(format!("the daemon's answer is not JSON: {e}"))),
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    (
        true,
        Ok(DaemonPod {
            synced: v.get("synced").and_then(Value::as_bool).unwrap_or(false),
            found: v.get("found").and_then(Value::as_bool).unwrap_or(false),
            uid: s("uid"),
            node_name: s("nodeName"),
            annotations: v
                .get("annotations")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        }),
    )
}

fn sandbox_uid(record: &SandboxRecord) -> Option<String> {
    crate::cni::request::parse_cni_args(&record.cni_args)
        .ok()?
        .into_iter()
        .find(|(k, v)| k == "K8S_POD_UID" && !v.is_empty())
        .map(|(_, v)| v)
}

fn daemon_view(socket: &Path, pod_ref: &str, record: &SandboxRecord) -> DaemonView {
    let (ns, name) = pod_ref.split_once('/').unwrap_or(("", pod_ref));
    let (reachable, answer) = ask_daemon(socket, ns, name);
    let agreement = match &answer {
        Ok(p) if p.found => {
            let cached = record
                .attachments
                .iter()
                .filter(|a| !a.cluster)
                .map(|a| {
                    if a.status_name.is_empty() {
                        a.network.clone()
                    } else {
                        a.status_name.clone()
                    }
                })
                .collect();
            let value = p
                .annotations
                .get(NETWORKS_ANNOTATION)
                .and_then(Value::as_str);
            Some(compare(value, ns, cached))
        }
        _ => None,
    };
    DaemonView {
        socket: socket.to_path_buf(),
        pod_ref: pod_ref.to_string(),
        answer,
        reachable,
        sandbox_uid: sandbox_uid(record),
        agreement,
    }
}

impl DaemonView {
    fn uid_matches(&self) -> Option<bool> {
        let p = self.answer.as_ref().ok()?;
        Some(p.uid.as_deref()? == self.sandbox_uid.as_deref()?)
    }

    fn json(&self) -> Value {
        let p = self.answer.as_ref().ok();
        json!({
            "socket": self.socket.display().to_string(),
            "reachable": self.reachable,
            "error": self.answer.as_ref().err(),
            "synced": p.map(|p| p.synced),
            "found": p.map(|p| p.found),
            "uid": p.and_then(|p| p.uid.clone()),
            "nodeName": p.and_then(|p| p.node_name.clone()),
            "sandboxUid": self.sandbox_uid,
            "uidMatches": self.uid_matches(),
            "annotation": self.agreement.as_ref().map(Agreement::json),
        })
    }

    fn text(&self) -> Vec<Vec<String>> {
        let p = match &self.answer {
            Err(e) if !self.reachable => {
                return vec![vec!["daemon".into(), format!("not reachable ({e})")]]
            }
            Err(e) => return vec![vec!["daemon".into(), e.clone()]],
            Ok(p) => p,
        };
        let synced = if p.synced {
            "watch cache synced"
        } else {
            "watch cache NOT synced yet"
        };
        if !p.found {
            return vec![vec![
                "daemon".into(),
                format!("{synced}; pod {} not in it", self.pod_ref),
            ]];
        }
        let mut line = format!(
            "{synced}; pod {} found, UID {}",
            self.pod_ref,
            p.uid.as_deref().unwrap_or("?")
        );
        if let Some(node) = &p.node_name {
            let _ = write!(line, ", node {node}");
        }
        match (self.uid_matches(), &self.sandbox_uid) {
            (Some(true), _) => line.push_str(" (the sandbox's K8S_POD_UID)"),
            (Some(false), Some(s)) => {
                let _ = write!(
                    line,
                    " — this sandbox was made for UID {s} (the pod was recreated)"
                );
            }
            _ => {}
        }
        let mut rows = vec![vec!["daemon".into(), line]];
        if let Some(a) = &self.agreement {
            rows.push(vec!["annotation".into(), a.text()]);
        }
        rows
    }
}

/// The pod's network selection annotation against what the cache holds.
#[derive(Debug, PartialEq)]
struct Agreement {
    value: Option<String>,
    error: Option<String>,
    expected: Vec<String>,
    cached: Vec<String>,
    agree: Option<bool>,
    missing: Vec<String>,
    extra: Vec<String>,
    order_differs: bool,
    not_from_annotation: Vec<String>,
}

/// Compare the NAD refs the annotation selects (namespace defaulting to the pod's) with the
/// status names of the non-cluster attachments, in order. Attachments before the selected ones
/// (`defaultNetworks`, the config's delegates) are not a disagreement.
fn compare(annotation: Option<&str>, pod_ns: &str, cached: Vec<String>) -> Agreement {
    let mut a = Agreement {
        value: annotation.map(String::from),
        error: None,
        expected: vec![],
        cached,
        agree: None,
        missing: vec![],
        extra: vec![],
        order_differs: false,
        not_from_annotation: vec![],
    };
    match annotation.map(parse_networks).transpose() {
        Err(e) => {
            a.error = Some(e.to_string());
            return a;
        }
        Ok(sels) => {
            a.expected = sels
                .unwrap_or_default()
                .iter()
                .map(|s| format!("{}/{}", s.namespace.as_deref().unwrap_or(pod_ns), s.name))
                .collect();
        }
    }
    if a.cached.ends_with(&a.expected) {
        a.not_from_annotation = a.cached[..a.cached.len() - a.expected.len()].to_vec();
        a.agree = Some(true);
        return a;
    }
    let mut extra = a.cached.clone();
    for e in &a.expected {
        match extra.iter().position(|c| c == e) {
            Some(i) => {
                extra.remove(i);
            }
            None => a.missing.push(e.clone()),
        }
    }
    a.extra = extra;
    a.order_differs = a.missing.is_empty() && a.extra.is_empty();
    a.agree = Some(false);
    a
}

impl Agreement {
    fn json(&self) -> Value {
        json!({
            "value": self.value,
            "error": self.error,
            "expected": self.expected,
            "cached": self.cached,
            "agree": self.agree,
            "missing": self.missing,
            "extra": self.extra,
            "orderDiffers": self.order_differs,
            "notFromAnnotation": self.not_from_annotation,
        })
    }

    fn text(&self) -> String {
        let list = |l: &[String]| {
            if l.is_empty() {
                "none".to_string()
            } else {
                l.join(", ")
            }
        };
        if let Some(e) = &self.error {
            return format!("{NETWORKS_ANNOTATION} does not parse: {e}");
        }
        match self.agree {
            Some(true) => {
                let mut s = format!("agrees with the cache ({})", list(&self.expected));
                if !self.not_from_annotation.is_empty() {
                    let _ = write!(
                        s,
                        "; also attached, not from the annotation: {} (defaultNetworks or the config's delegates)",
                        self.not_from_annotation.join(", ")
                    );
                }
                s
            }
            _ if self.order_differs => format!(
                "same networks, different order: annotation {}, cache {}",
                list(&self.expected),
                list(&self.cached)
            ),
            _ => {
                let mut parts = vec![];
                if !self.missing.is_empty() {
                    parts.push(format!(
                        "selected but not attached: {}",
                        self.missing.join(", ")
                    ));
                }
                if !self.extra.is_empty() {
                    parts.push(format!(
                        "attached but not selected: {}",
                        self.extra.join(", ")
                    ));
                }
                format!("DIFFERS from the cache: {}", parts.join("; "))
            }
        }
    }
}

fn json_document(
    cni_dir: &Path,
    query: Option<&str>,
    views: &[SandboxView<'_>],
    bad: &[&Unreadable],
) -> String {
    let doc = json!({
        "version": 1,
        "cniDir": cni_dir.display().to_string(),
        "query": query,
        "sandboxes": views.iter().map(SandboxView::json).collect::<Vec<_>>(),
        "unreadable": bad
            .iter()
            .map(|b| json!({"file": b.file.display().to_string(), "reason": b.reason}))
            .collect::<Vec<_>>(),
    });
    let mut s = serde_json::to_string_pretty(&doc).expect("serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::DelegateInputs;

    fn att(ifname: &str, status: &str, cluster: bool, result: Option<Value>) -> AttachmentRecord {
        AttachmentRecord {
            network: status.rsplit('/').next().unwrap().into(),
            ifname: ifname.into(),
            cluster,
            config: json!({"cniVersion": "1.0.0", "name": status.rsplit('/').next().unwrap(),
                "plugins": [{"type": "bridge"}, {"type": "portmap"}]})
            .to_string(),
            inputs: DelegateInputs::default(),
            result,
            device_info_file: None,
            status_name: status.into(),
            device: None,
            selection: None,
            claim: None,
        }
    }

    fn rec(id: &str, pod: Option<&str>, atts: Vec<AttachmentRecord>) -> SandboxRecord {
        SandboxRecord {
            kind: crate::cache::KIND.into(),
            network: "plexus".into(),
            container_id: id.into(),
            if_name: "eth0".into(),
            netns: "/var/run/netns/t".into(),
            cni_args: "K8S_POD_UID=u1".into(),
            pod: pod.map(String::from),
            created: "2025-01-02T03:04:05Z".into(),
            config: String::new(),
            cni_path: vec![],
            attachments: atts,
            del_attempts: 0,
            links_before: None,
        }
    }

    fn args(dir: &Path, target: Option<&str>) -> InspectArgs {
        InspectArgs {
            target: target.map(String::from),
            cni_dir: dir.to_path_buf(),
            output: Output::Text,
            socket: dir.join("no.sock"),
        }
    }

    #[test]
    fn align_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["aaa".to_string(), "b".into(), "".into()],
        ];
        assert_eq!(align(&rows, "  "), "  A    BB  C\n  aaa  b\n");
        assert_eq!(align(&[], ""), "");
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("ns1/web-0"),
            Ok(Target::Pod("ns1/web-0".into()))
        );
        assert_eq!(parse_target("abc1"), Ok(Target::Container("abc1".into())));
        for bad in ["a/b/c", "NS/x", "/x", "-x", "a b", ""] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_of_the_sandbox_interface() {
        let r = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "net1", "mac": "aa:aa:aa:aa:aa:aa"},
                           {"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/n"}],
            "ips": [{"address": "10.0.0.1/24", "interface": 0},
                    {"address": "10.1.0.5/24", "interface": 1},
                    {"address": "fd00::5/64"}]});
        let (ips, mac) = result_addresses(&r, Version::V1_0_0, "net1").unwrap();
        assert_eq!(ips, ["10.1.0.5/24", "fd00::5/64"]);
        assert_eq!(mac.as_deref(), Some("02:00:00:00:00:01"));
        // 0.2.0 results have no interfaces: every address.
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.2.0.2/16"}});
        let (ips, mac) = result_addresses(&old, Version::V0_2_0, "eth0").unwrap();
        assert_eq!((ips, mac), (vec!["10.2.0.2/16".to_string()], None));
        assert!(result_addresses(&json!([1]), Version::V1_0_0, "eth0").is_err());
    }

    #[test]
    fn annotation_agreement() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = compare(Some("mv, other/x@foo"), "ns1", c(&["ns1/mv", "other/x"]));
        assert_eq!(
            (a.agree, a.expected.clone()),
            (Some(true), a.cached.clone())
        );
        let a = compare(Some("mv"), "ns1", c(&["kube-system/storage", "ns1/mv"]));
        assert_eq!(a.agree, Some(true));
        assert_eq!(a.not_from_annotation, ["kube-system/storage"]);
        assert!(a
            .text()
            .contains("not from the annotation: kube-system/storage"));
        let a = compare(None, "ns1", c(&[]));
        assert_eq!(a.agree, Some(true));
        let a = compare(Some("mv,new"), "ns1", c(&["ns1/mv", "ns1/old"]));
        assert_eq!(a.agree, Some(false));
        assert_eq!(
            (a.missing.clone(), a.extra.clone()),
            (c(&["ns1/new"]), c(&["ns1/old"]))
        );
        assert_eq!(
            a.text(),
            "DIFFERS from the cache: selected but not attached: ns1/new; attached but not selected: ns1/old"
        );
        let a = compare(Some("b,a"), "ns1", c(&["ns1/a", "ns1/b"]));
        assert!(a.order_differs && a.agree == Some(false), "{a:?}");
        let a = compare(Some("[{"), "ns1", c(&[]));
        assert!(a.agree.is_none() && a.error.is_some());
    }

    #[test]
    fn prefix_exact_ambiguous_and_missing() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        let ok = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]});
        c.store(&rec(
            "abc",
            Some("ns1/a"),
            vec![att("eth0", "cbr0", true, Some(ok.clone()))],
        ))
        .unwrap();
        c.store(&rec(
            "abcdef",
            Some("ns1/b"),
            vec![att("eth0", "cbr0", true, Some(ok))],
        ))
        .unwrap();
        let r = inspect(&args(d.path(), Some("ab")));
        assert_eq!(r.code, 1);
        assert!(
            r.stderr.contains("ambiguous") && r.stderr.contains("abcdef  ns1/b"),
            "{}",
            r.stderr
        );
        // An exact ID wins over the longer one it prefixes.
        let r = inspect(&args(d.path(), Some("abc")));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.starts_with("sandbox abc\n"), "{}", r.stdout);
        assert!(
            r.stdout.contains("daemon  not reachable (no socket at"),
            "{}",
            r.stdout
        );
        let r = inspect(&args(d.path(), Some("abcd")));
        assert!(r.stdout.starts_with("sandbox abcdef\n"));
        assert_eq!(inspect(&args(d.path(), Some("ns1/b"))).code, 0);
        let r = inspect(&args(d.path(), Some("zzz")));
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("matches \"zzz\""));
        assert_eq!(inspect(&args(d.path(), Some("ns1/zz"))).code, 1);
        assert_eq!(inspect(&args(d.path(), Some("x/y/z"))).code, 2);
    }

    #[test]
    fn an_empty_or_absent_cache_lists_nothing() {
        let d = tempfile::tempdir().unwrap();
        let r = inspect(&args(d.path(), None));
        assert_eq!(r.code, 0);
        assert!(
            r.stdout.starts_with("no sandboxes in the cache at"),
            "{}",
            r.stdout
        );
    }

    #[test]
    fn file_names_give_container_ids() {
        assert_eq!(
            file_container_id(Path::new("/x/plexus=abc=eth0.json")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            file_container_id(Path::new("/x/abc-def-eth0.json")).as_deref(),
            Some("abc-def")
        );
        assert_eq!(file_container_id(Path::new("/x/h-0123.json")), None);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("a-b.c"), "a-b.c");
        assert_eq!(encode("a&b=c d"), "a%26b%3Dc%20d");
    }
}
