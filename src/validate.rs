//! `plexus validate -f FILE [-f FILE...]`: check NetworkAttachmentDefinitions, pods (and the pod
//! templates of workloads), plexus/Multus configs and daemon configs offline, with the parser and
//! the planner plexus itself runs, so what passes here is what plexus accepts at ADD.
//!
//! # Input
//!
//! A file (or `-` for stdin; a directory: its `.yaml`, `.yml` and `.json` files in name order)
//! holds one JSON value (an object or a list of objects) or YAML documents separated by `---`. A
//! `kind: List` (or any `*List` kind) with `items` counts as its items. Every file is read
//! before anything is checked, so a pod may come before the NADs it uses.
//!
//! # What each object gets
//!
//! By `kind`:
//! - `NetworkAttachmentDefinition`: `metadata.name` a DNS-1123 subdomain, `metadata.namespace` a
//!   DNS-1123 label, `k8s.v1.cni.cncf.io/resourceName` of the form `<domain>/<name>` (a device
//!   plugin's extended resource). `spec.config` a string of JSON, checked field by field (every
//!   plugin's `type` a bare name and not plexus/Multus; `cniVersion` and `cniVersions` ones plexus
//!   speaks; `capabilities` an object of booleans; `ipam.type` a bare name), then loaded exactly as
//!   plexus loads it (`plan::nad_network`, so `allowedPluginTypes` of `--config` applies too).
//!   **IPAM rule**: a main plugin that configures an interface (`bridge`, `macvlan`, `ipvlan`,
//!   `host-device`, `vlan`, `sriov`, `tap`, `dummy`) without `ipam` (or with an `ipam` without
//!   `type`) is a *warning*: an L2-only attachment (no address) is legitimate. `ptp` without IPAM
//!   is an *error*: the ptp plugin cannot work without an address. An empty `spec.config` is the
//!   confDir file of the NAD's name on each node: checked against `--conf-dir` when given, else a
//!   warning.
//! - `Pod`, and the pod template of a `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`,
//!   `ReplicationController`, `Job`, `CronJob` or `PodTemplate` (the object's namespace, else
//!   `--namespace`): annotation values must be strings; `k8s.v1.cni.cncf.io/networks` and
//!   `v1.multus-cni.io/default-network` are resolved against the NADs given in the same call (an
//!   in-memory cluster), with `--config` (else a stand-in: a placeholder cluster network and
//!   plexus's defaults), by `plan::resolve` and `plan::plan` with the runtime's ifname `eth0`,
//!   always in Kubernetes mode (as if the config had a `kubeconfig`). The
//!   result is what would be attached (interface, network, NAD, delegate chain) or exactly why the
//!   ADD would be refused (plexus's error message and CNI error code). A NAD with a
//!   `resourceName` needs a device the kubelet allocates at run time: placeholder devices stand in
//!   for it (and a selection's `deviceID` is taken as allocated), and the attachment says "needs a
//!   device of <resource>". Networks that come from the node's confDir are stand-ins unless
//!   `--conf-dir` is given.
//! - A plexus/Multus config (no `kind`; `type` `plexus`, `multus` or `multus-shim`, or a conflist
//!   with such a plugin, whose `name` and `cniVersion` are injected into it as libcni does):
//!   `config::NetConf::parse`, then its networks (`clusterNetwork` + `defaultNetworks`, or
//!   `delegates`) resolved as plexus does (a NAD of the call in `multusNamespace` first, then
//!   `--conf-dir`; stand-ins without it) and planned as for a pod without annotations.
//! - A daemon config (no `kind`, no `type`; keys such as `socketDir`, `multusConfigFile`,
//!   `cniConfigDir`): `daemon::config::DaemonConfig::parse`; what it ignores is a warning.
//! - A bare CNI network config (no `kind`; a `type` or `plugins` of other plugins, as in confDir):
//!   checked like a NAD's `spec.config` (kind `NetworkConfig` in the output).
//! - Any other kind: an error ("kind X is not checked").
//!
//! With `--conf-dir DIR` (a copy of the node's confDir), networks named by name are looked up in
//! DIR; a network named by path is read at that path, or else as the file of that name in DIR.
//!
//! # Output
//!
//! Text: per object one line `FILE: document N[, items[I]]: KIND NAMESPACE/NAME: valid|invalid`,
//! then its `error: FIELD: MESSAGE (code N)` and `warning: ...` lines and what it would attach,
//! and a last line counting objects. `--output json`: a list, one entry per object:
//!
//! ```text
//! [{
//!   "file": string,                   as given ("-" for stdin)
//!   "document": number,               1-based YAML document (1 for a JSON file); 0: the file itself
//!   "item": number | null,            index in a List's items / a JSON list
//!   "kind": string | null,            the object's kind, or PlexusConfig, DaemonConfig, NetworkConfig
//!   "name": string | null,            "namespace/name" for namespaced objects, else the name
//!   "valid": bool,                    no errors (warnings allowed)
//!   "errors": [{"field": string | null, "message": string, "code": number | null}],
//!   "warnings": [{"field": string | null, "message": string, "code": null}],
//!   "attachments": [{                 pods and configs: what would be attached, in order
//!     "ifname": string, "network": string, "nad": "ns/name" | null,
//!     "chain": "bridge+portmap" | null,   null for a stand-in
//!     "cluster": bool,
//!     "needsDevice": string | null,   the resource a device must come from
//!     "standIn": bool                 a placeholder, not checked (no --config / --conf-dir)
//!   }],
//!   "network": null | {"name": string, "chain": string, "cniVersion": string}   NADs, NetworkConfigs
//! }]
//! ```
//!
//! `code` is the CNI error code plexus would fail the ADD with (7 invalid config, 1 incompatible
//! version, 2 a capability no plugin declares, 113 namespace isolation, 114 NAD not found...).
//!
//! Exit codes: 0 every object valid; 1 something invalid (a file that does not parse included:
//! the message names the file and the line); 2 usage (no `-f`, a file or `--config` that cannot be
//! read).

use crate::cni::error::{CniError, Code};
use crate::cni::exec::validate_plugin_type;
use crate::cni::request::validate_network_name;
use crate::cni::Version;
use crate::config::{find_by_name, load_file, ConfDir, NetConf, Network, NetworkFiles, SELF_TYPES};
use crate::inspect::{align, Output, Report};
use crate::k8s::annotations::{is_dns_label, is_dns_subdomain, parse_networks};
use crate::k8s::{
    MemoryView, NetworkAttachmentDefinition, DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION,
    RESOURCE_NAME_ANNOTATION,
};
use crate::plan::{self, Attachment, Sources};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// A file to check: YAML documents or JSON (`-`: stdin; a directory: its .yaml/.yml/.json
    /// files). Repeat for several.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// A copy of the node's confDir: NADs with an empty config and networks configs name.
    #[arg(long, value_name = "DIR")]
    pub conf_dir: Option<PathBuf>,
    /// The plexus config (a .conf/.conflist, or a Multus daemon-config.json) to plan pods with.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The namespace of objects that name none.
    #[arg(short = 'n', long, value_name = "NS", default_value = "default")]
    pub namespace: String,
    /// How to print: text, or a JSON list of verdicts (schema in docs/operators.md).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Run `plexus validate`: print the report, return the exit code.
pub fn run(args: &ValidateArgs) -> u8 {
    validate(args).emit()
}

/// The runtime's interface name pods are planned with.
const RUNTIME_IFNAME: &str = "eth0";
/// The plugin type of stand-in networks (never a real plugin).
const STAND_IN_TYPE: &str = "plexus-validate-stand-in";
/// The source of stand-in networks, to recognise them after planning.
const STAND_IN_SOURCE: &str = "stand-in, not checked offline";
/// Main plugins that configure an interface, and so usually want an IPAM.
const IPAM_PLUGINS: &[&str] = &[
    "bridge",
    "macvlan",
    "ipvlan",
    "ptp",
    "host-device",
    "vlan",
    "sriov",
    "tap",
    "dummy",
];
/// Kinds whose pod template is checked, and where the template is.
const WORKLOADS: &[(&str, &[&str])] = &[
    ("Pod", &[]),
    ("Deployment", &["spec", "template"]),
    ("StatefulSet", &["spec", "template"]),
    ("DaemonSet", &["spec", "template"]),
    ("ReplicaSet", &["spec", "template"]),
    ("ReplicationController", &["spec", "template"]),
    ("Job", &["spec", "template"]),
    ("CronJob", &["spec", "jobTemplate", "spec", "template"]),
    ("PodTemplate", &["template"]),
];
/// Keys that make an object without `kind` and `type` a daemon config.
const DAEMON_MARKERS: &[&str] = &[
    "socketDir",
    "multusConfigFile",
    "cniConfigDir",
    "multusAutoconfigDir",
    "multusMasterCNI",
    "daemonSocketDir",
];

/// One object found in the input.
struct Object {
    file: String,
    document: usize,
    item: Option<usize>,
    value: Value,
}

/// An error or a warning: where, what, and the CNI code plexus would give.
#[derive(Debug, Clone, PartialEq)]
struct Issue {
    field: Option<String>,
    message: String,
    code: Option<u32>,
}

impl Issue {
    fn new(field: impl Into<Option<String>>, message: impl Into<String>) -> Issue {
        Issue {
            field: field.into(),
            message: message.into(),
            code: None,
        }
    }

    fn cni(field: impl Into<Option<String>>, e: &CniError) -> Issue {
        let mut message = e.msg.clone();
        if !e.details.is_empty() {
            let _ = write!(message, ": {}", e.details);
        }
        Issue {
            field: field.into(),
            message,
            code: Some(e.code.0),
        }
    }

    fn json(&self) -> Value {
        json!({"field": self.field, "message": self.message, "code": self.code})
    }

    fn text(&self) -> String {
        let mut s = String::new();
        if let Some(f) = &self.field {
            let _ = write!(s, "{f}: ");
        }
        s.push_str(&self.message);
        if let Some(c) = self.code {
            let _ = write!(s, " (code {c})");
        }
        s
    }
}

/// What would be attached.
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    ifname: String,
    network: String,
    nad: Option<String>,
    chain: Option<String>,
    cluster: bool,
    needs_device: Option<String>,
    stand_in: Option<&'static str>,
}

/// The verdict on one object.
#[derive(Debug, Default)]
struct Outcome {
    file: String,
    document: usize,
    item: Option<usize>,
    kind: Option<String>,
    name: Option<String>,
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
    attachments: Vec<Planned>,
    network: Option<(String, String, Version)>,
}

impl Outcome {
    fn of(o: &Object) -> Outcome {
        Outcome {
            file: o.file.clone(),
            document: o.document,
            item: o.item,
            ..Default::default()
        }
    }

    fn error(&mut self, field: impl Into<Option<String>>, message: impl Into<String>) {
        self.errors.push(Issue::new(field, message));
    }

    fn warn(&mut self, field: impl Into<Option<String>>, message: impl Into<String>) {
        self.warnings.push(Issue::new(field, message));
    }

    fn valid(&self) -> bool {
        self.errors.is_empty()
    }

    fn label(&self) -> String {
        let mut s = format!("{}: ", self.file);
        if self.document == 0 {
            s.push_str("file");
        } else {
            let _ = write!(s, "document {}", self.document);
        }
        if let Some(i) = self.item {
            let _ = write!(s, ", items[{i}]");
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => {
                let _ = write!(s, ": {k} {n}");
            }
            (Some(k), None) => {
                let _ = write!(s, ": {k}");
            }
            _ => {}
        }
        s
    }

    fn text(&self) -> String {
        let verdict = if self.valid() { "valid" } else { "invalid" };
        let mut out = format!("{}: {verdict}\n", self.label());
        if let Some((name, chain, version)) = &self.network {
            let _ = writeln!(out, "  network {name}: {chain}, cniVersion {version}");
        }
        for e in &self.errors {
            let _ = writeln!(out, "  error: {}", e.text());
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  warning: {}", w.text());
        }
        if !self.attachments.is_empty() {
            let mut rows = vec![["IFNAME", "NETWORK", "NAD", "CHAIN", "NOTE"]
                .map(String::from)
                .to_vec()];
            for a in &self.attachments {
                let mut notes = vec![];
                if a.cluster {
                    notes.push("cluster network".to_string());
                }
                if let Some(s) = a.stand_in {
                    notes.push(s.to_string());
                }
                if let Some(r) = &a.needs_device {
                    notes.push(format!("needs a device of {r}"));
                }
                rows.push(vec![
                    a.ifname.clone(),
                    a.network.clone(),
                    a.nad.clone().unwrap_or_else(|| "-".into()),
                    a.chain.clone().unwrap_or_else(|| "?".into()),
                    notes.join("; "),
                ]);
            }
            out.push_str("  would attach:\n");
            out.push_str(&align(&rows, "    "));
        }
        out
    }

    fn json(&self) -> Value {
        json!({
            "file": self.file,
            "document": self.document,
            "item": self.item,
            "kind": self.kind,
            "name": self.name,
            "valid": self.valid(),
            "errors": self.errors.iter().map(Issue::json).collect::<Vec<_>>(),
            "warnings": self.warnings.iter().map(Issue::json).collect::<Vec<_>>(),
            "attachments": self.attachments.iter().map(|a| json!({
                "ifname": a.ifname,
                "network": a.network,
                "nad": a.nad,
                "chain": a.chain,
                "cluster": a.cluster,
                "needsDevice": a.needs_device,
                "standIn": a.stand_in.is_some(),
            })).collect::<Vec<_>>(),
            "network": self.network.as_ref().map(|(name, chain, v)| json!({
                "name": name, "chain": chain, "cniVersion": v.to_string(),
            })),
        })
    }
}

/// Files read from disk or stdin, in order, with the name to show.
fn read_inputs(paths: &[PathBuf]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            out.push(("-".to_string(), s));
            continue;
        }
        if p.is_dir() {
            let rd =
                std::fs::read_dir(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && matches!(
                            f.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            files.sort();
            for f in files {
                out.push((f.display().to_string(), read_text(&f)?));
            }
            continue;
        }
        out.push((p.display().to_string(), read_text(p)?));
    }
    Ok(out)
}

fn read_text(p: &Path) -> Result<String, String> {
    let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("cannot read {}: not UTF-8 text", p.display()))
}

/// The documents of a file: `(1-based index, value)`, and the parse error that ended it, if any
/// (with the document it happened in).
/// `(1-based document index, value)`.
type Document = (usize, Value);
/// The document a parse error happened in, and the message.
type ParseError = (usize, String);

fn documents(text: &str) -> (Vec<Document>, Option<ParseError>) {
    let first = text.trim_start().chars().next();
    if matches!(first, Some('{' | '[')) {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => return (vec![(1, v)], None),
            Err(json_err) => {
                // A YAML flow mapping also starts with '{': try YAML before failing.
                if let Ok(v) = serde_yaml_ng::from_str::<Value>(text) {
                    return (vec![(1, v)], None);
                }
                return (vec![], Some((1, format!("not valid JSON: {json_err}"))));
            }
        }
    }
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => docs.push((i + 1, v)),
            Err(e) => {
                let mut msg = format!("not valid YAML: {e}");
                if let Some(l) = e.location() {
                    if !msg.contains(" at line ") {
                        let _ = write!(msg, " at line {} column {}", l.line(), l.column());
                    }
                }
                // After a syntax error the stream yields the same error forever.
                return (docs, Some((i + 1, msg)));
            }
        }
    }
    (docs, None)
}

/// Everything in the input, `List`s expanded; files that do not parse give an outcome of their
/// own.
fn objects(inputs: &[(String, String)]) -> (Vec<Object>, Vec<(usize, Outcome)>) {
    let mut objs = Vec::new();
    let mut failures = Vec::new();
    for (file, text) in inputs {
        let (docs, err) = documents(text);
        if docs.is_empty() && err.is_none() {
            let mut o = Outcome {
                file: file.clone(),
                ..Default::default()
            };
            o.error(None, "no objects in the file");
            failures.push((objs.len(), o));
        }
        for (document, value) in docs {
            let is_list = value
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && value.get("items").is_some_and(Value::is_array);
            match value {
                Value::Array(items) => {
                    for (i, v) in items.into_iter().enumerate() {
                        objs.push(Object {
                            file: file.clone(),
                            document,
                            item: Some(i),
                            value: v,
                        });
                    }
                }
                Value::Object(mut o) if is_list => {
                    let items = match o.remove("items") {
                        Some(Value::Array(items)) => items,
                        _ => vec![],
                    };
                    for (i, v) in items.into_iter().enumerate() {
                        objs.push(Object {
                            file: file.clone(),
                            document,
                            item: Some(i),
                            value: v,
                        });
                    }
                }
                value => objs.push(Object {
                    file: file.clone(),
                    document,
                    item: None,
                    value,
                }),
            }
        }
        if let Some((document, msg)) = err {
            let mut o = Outcome {
                file: file.clone(),
                document,
                ..Default::default()
            };
            o.error(None, msg);
            failures.push((objs.len(), o));
        }
    }
    (objs, failures)
}

/// Networks that would come from the node's confDir, when no `--conf-dir` was given: stand-ins
/// that let planning go on.
struct StandInFiles;

fn stand_in(name: &str) -> Network {
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .collect();
    let name = if name.is_empty() || !name.as_bytes()[0].is_ascii_alphanumeric() {
        format!("n{name}")
    } else {
        name
    };
    Network::from_value(
        json!({"cniVersion": "1.1.0", "name": name, "type": STAND_IN_TYPE}),
        STAND_IN_SOURCE,
    )
    .expect("a stand-in is a valid network")
}

impl NetworkFiles for StandInFiles {
    fn at_path(&self, path: &str) -> Result<Network, CniError> {
        let stem = Path::new(path)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("network");
        Ok(stand_in(stem))
    }
    fn by_name(&self, name: &str) -> Result<Option<Network>, CniError> {
        Ok(Some(stand_in(name)))
    }
    fn describe(&self) -> String {
        "confDir (not given: pass --conf-dir)".into()
    }
}

/// `--conf-dir`: a local copy of the node's confDir. A path is read where it says, or else as the
/// file of that name in the copy.
struct LocalConfDir(PathBuf);

impl NetworkFiles for LocalConfDir {
    fn at_path(&self, path: &str) -> Result<Network, CniError> {
        if Path::new(path).exists() {
            return ConfDir(self.0.clone()).at_path(path);
        }
        match Path::new(path).file_name() {
            Some(f) if self.0.join(f).is_file() => load_file(&self.0.join(f)),
            _ => Err(CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "network config {path} is neither here nor in {} (--conf-dir)",
                    self.0.display()
                ),
            )),
        }
    }
    fn by_name(&self, name: &str) -> Result<Option<Network>, CniError> {
        find_by_name(&self.0, name)
    }
    fn describe(&self) -> String {
        format!("{} (--conf-dir)", self.0.display())
    }
}

/// A config's `clusterNetwork`/`defaultNetworks` by name: a NAD of the call in `multusNamespace`
/// first, as the planner does in Kubernetes mode, then the files.
struct NadsFirst<'a> {
    conf: &'a NetConf,
    view: &'a MemoryView,
    files: &'a dyn NetworkFiles,
}

impl NetworkFiles for NadsFirst<'_> {
    fn at_path(&self, path: &str) -> Result<Network, CniError> {
        self.files.at_path(path)
    }
    fn by_name(&self, name: &str) -> Result<Option<Network>, CniError> {
        let key = (self.conf.multus_namespace.clone(), name.to_string());
        if let Some(nad) = self.view.nads.get(&key) {
            let nad_ref = format!("{}/{name}", self.conf.multus_namespace);
            return plan::nad_network(self.conf, self.files, nad, &nad_ref).map(Some);
        }
        self.files.by_name(name)
    }
    fn describe(&self) -> String {
        self.files.describe()
    }
}

/// Everything an object is checked against.
struct Ctx {
    conf: NetConf,
    /// No `--config`: the cluster network is a stand-in.
    stand_in_cluster: bool,
    files: Box<dyn NetworkFiles>,
    conf_dir_given: bool,
    view: MemoryView,
    namespace: String,
}

/// The plexus config pods are planned with when none is given.
fn stand_in_conf() -> NetConf {
    let conf = json!({"cniVersion": "1.1.0", "name": "plexus", "type": "plexus",
        "kubeconfig": "/dev/null",
        "delegates": [{"cniVersion": "1.1.0", "name": "cluster-network", "type": STAND_IN_TYPE}]});
    NetConf::parse(conf.to_string().as_bytes()).expect("the stand-in config parses")
}

/// The plexus plugin of a config or conflist, as plexus would be given it: a conflist's plugin
/// gets the list's `name` and `cniVersion`, as libcni injects them. `None`: not a plexus config.
fn plexus_plugin(v: &Map<String, Value>) -> Option<(Option<usize>, Map<String, Value>)> {
    let is_self = |p: &Value| {
        p.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| SELF_TYPES.contains(&t))
    };
    if let Some(Value::Array(plugins)) = v.get("plugins") {
        let i = plugins.iter().position(is_self)?;
        let mut p = plugins[i].as_object().cloned().unwrap_or_default();
        for k in ["name", "cniVersion"] {
            if let Some(x) = v.get(k) {
                p.insert(k.into(), x.clone());
            }
        }
        return Some((Some(i), p));
    }
    is_self(&Value::Object(v.clone())).then(|| (None, v.clone()))
}

fn is_daemon_config(v: &Map<String, Value>) -> bool {
    !v.contains_key("type")
        && !v.contains_key("plugins")
        && DAEMON_MARKERS.iter().any(|k| v.contains_key(*k))
}

/// Read `--config`: a plexus config or conflist, or a daemon config (its plugin keys).
fn load_config(path: &Path) -> Result<Result<NetConf, String>, String> {
    let text = read_text(path)?;
    let parsed = documents(&text);
    let value = match parsed {
        (docs, None) if docs.len() == 1 => docs.into_iter().next().expect("one").1,
        (_, Some((_, e))) => return Ok(Err(e)),
        _ => return Ok(Err("expected one JSON object".into())),
    };
    let Value::Object(obj) = value else {
        return Ok(Err("not a JSON object".into()));
    };
    if let Some((_, plugin)) = plexus_plugin(&obj) {
        let bytes = serde_json::to_vec(&plugin).expect("serializes");
        return Ok(NetConf::parse(&bytes).map_err(|e| e.to_string()));
    }
    if is_daemon_config(&obj) {
        let bytes = serde_json::to_vec(&obj).expect("serializes");
        let d = match crate::daemon::config::DaemonConfig::parse(&bytes) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let mut keys = d.plugin_keys.clone();
        keys.insert(
            "cniVersion".into(),
            Value::String(d.cni_version.clone().unwrap_or_else(|| "1.0.0".into())),
        );
        let bytes = serde_json::to_vec(&keys).expect("serializes");
        return Ok(NetConf::parse(&bytes).map_err(|e| e.to_string()));
    }
    Ok(Err(
        "not a plexus config: no \"type\": \"plexus\" (or multus, multus-shim) and not a daemon config"
            .into(),
    ))
}

pub fn validate(args: &ValidateArgs) -> Report {
    let inputs = match read_inputs(&args.files) {
        Ok(i) => i,
        Err(e) => return fail(2, format!("plexus validate: {e}\n")),
    };
    if !is_dns_label(&args.namespace) {
        return fail(
            2,
            format!(
                "plexus validate: --namespace \"{}\" is not a valid namespace\n",
                args.namespace.escape_debug()
            ),
        );
    }
    if let Some(d) = &args.conf_dir {
        if !d.is_dir() {
            return fail(
                2,
                format!(
                    "plexus validate: --conf-dir {} is not a directory\n",
                    d.display()
                ),
            );
        }
    }
    let (conf, stand_in_cluster) = match &args.config {
        None => (stand_in_conf(), true),
        Some(p) => match load_config(p) {
            Err(e) => return fail(2, format!("plexus validate: --config: {e}\n")),
            Ok(Err(e)) => {
                return fail(
                    1,
                    format!("plexus validate: --config {}: {e}\n", p.display()),
                )
            }
            Ok(Ok(c)) => (c, false),
        },
    };
    let files: Box<dyn NetworkFiles> = match &args.conf_dir {
        Some(d) => Box::new(LocalConfDir(d.clone())),
        None => Box::new(StandInFiles),
    };
    let (objs, failures) = objects(&inputs);
    let mut ctx = Ctx {
        conf,
        stand_in_cluster,
        files,
        conf_dir_given: args.conf_dir.is_some(),
        view: MemoryView::default(),
        namespace: args.namespace.clone(),
    };
    // A stand-in network may stand where allowedPluginTypes applies.
    if args.conf_dir.is_none() {
        if let Some(list) = &mut ctx.conf.allowed_plugin_types {
            list.push(STAND_IN_TYPE.into());
        }
    }
    for o in &objs {
        if kind_of(&o.value) == Some("NetworkAttachmentDefinition") {
            if let Ok(mut nad) =
                serde_json::from_value::<NetworkAttachmentDefinition>(o.value.clone())
            {
                let ns = nad
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| ctx.namespace.clone());
                nad.metadata.namespace = Some(ns.clone());
                let name = nad.metadata.name.clone().unwrap_or_default();
                ctx.view.nads.insert((ns, name), nad);
            }
        }
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failures = failures.into_iter().peekable();
    for (i, o) in objs.iter().enumerate() {
        while failures.peek().is_some_and(|(at, _)| *at == i) {
            outcomes.push(failures.next().expect("peeked").1);
        }
        outcomes.push(check(&ctx, o));
    }
    outcomes.extend(failures.map(|(_, o)| o));
    let invalid = outcomes.iter().filter(|o| !o.valid()).count();
    let stdout = match args.output {
        Output::Json => {
            let list: Vec<Value> = outcomes.iter().map(Outcome::json).collect();
            let mut s = serde_json::to_string_pretty(&Value::Array(list)).expect("serializes");
            s.push('\n');
            s
        }
        Output::Text => {
            let mut s = String::new();
            for o in &outcomes {
                s.push_str(&o.text());
            }
            let _ = writeln!(
                s,
                "{} object{}: {} valid, {invalid} invalid",
                outcomes.len(),
                if outcomes.len() == 1 { "" } else { "s" },
                outcomes.len() - invalid
            );
            s
        }
    };
    Report {
        stdout,
        stderr: String::new(),
        code: if invalid == 0 { 0 } else { 1 },
    }
}

fn fail(code: u8, msg: String) -> Report {
    Report {
        stdout: String::new(),
        stderr: msg,
        code,
    }
}

fn kind_of(v: &Value) -> Option<&str> {
    v.get("kind").and_then(Value::as_str)
}

fn check(ctx: &Ctx, o: &Object) -> Outcome {
    let mut out = Outcome::of(o);
    let Value::Object(obj) = &o.value else {
        out.error(None, "not an object");
        return out;
    };
    match obj.get("kind") {
        Some(Value::String(kind)) => {
            out.kind = Some(kind.clone());
            if kind == "NetworkAttachmentDefinition" {
                check_nad(ctx, obj, &mut out);
            } else if let Some((_, path)) = WORKLOADS.iter().find(|(k, _)| k == kind) {
                check_pod(ctx, obj, path, &mut out);
            } else {
                out.name = object_name(obj, &ctx.namespace);
                out.error(
                    "kind".to_string(),
                    format!("{kind} is not checked (only NetworkAttachmentDefinition, Pod and pod templates, plexus and daemon configs are)"),
                );
            }
        }
        Some(_) => out.error("kind".to_string(), "must be a string"),
        None => {
            if let Some((index, plugin)) = plexus_plugin(obj) {
                out.kind = Some("PlexusConfig".into());
                check_plexus_config(ctx, obj, index, &plugin, &mut out);
            } else if is_daemon_config(obj) {
                out.kind = Some("DaemonConfig".into());
                check_daemon_config(obj, &mut out);
            } else if obj.contains_key("type") || obj.contains_key("plugins") {
                out.kind = Some("NetworkConfig".into());
                out.name = obj.get("name").and_then(Value::as_str).map(String::from);
                check_network_config(ctx, &o.value, "", None, false, &mut out);
                if out.valid() {
                    match Network::from_value(o.value.clone(), "network config") {
                        Ok(n) => out.network = Some((n.name.clone(), n.types(), n.cni_version)),
                        Err(e) => out.errors.push(Issue::cni(None, &e)),
                    }
                }
            } else {
                out.error(
                    None,
                    "not a Kubernetes object (no \"kind\"), a plexus/Multus config (\"type\": \"plexus\", \"multus\" or \"multus-shim\"), a daemon config or a CNI network config",
                );
            }
        }
    }
    out
}

fn object_name(obj: &Map<String, Value>, default_ns: &str) -> Option<String> {
    let meta = obj.get("metadata")?;
    let name = meta.get("name").and_then(Value::as_str)?;
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(default_ns);
    Some(format!("{ns}/{name}"))
}

fn annotation_field(prefix: &str, key: &str) -> String {
    format!("{prefix}metadata.annotations[\"{key}\"]")
}

/// Whether a device plugin resource name is `<domain>/<name>`, as extended resources are.
fn check_resource_name(r: &str) -> Result<(), String> {
    let Some((domain, name)) = r.split_once('/') else {
        return Err(format!(
            "\"{}\" is not <domain>/<resource> as device plugins register resources (e.g. intel.com/sriov_netdevice)",
            r.escape_debug()
        ));
    };
    if !is_dns_subdomain(domain) {
        return Err(format!(
            "\"{}\": the prefix \"{}\" is not a DNS subdomain",
            r.escape_debug(),
            domain.escape_debug()
        ));
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok {
        return Err(format!(
            "\"{}\": the name \"{}\" must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            r.escape_debug(),
            name.escape_debug()
        ));
    }
    Ok(())
}

fn check_nad(ctx: &Ctx, obj: &Map<String, Value>, out: &mut Outcome) {
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(&ctx.namespace)
        .to_string();
    if let Some(n) = name {
        out.name = Some(format!("{ns}/{n}"));
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some("k8s.cni.cncf.io/v1") => {}
        other => out.warn(
            "apiVersion".to_string(),
            format!(
                "is {}, not k8s.cni.cncf.io/v1 (the only version of the CRD)",
                other
                    .map(|s| format!("\"{s}\""))
                    .unwrap_or("missing".into())
            ),
        ),
    }
    match name {
        None => out.error("metadata.name".to_string(), "missing"),
        Some(n) if !is_dns_subdomain(n) => out.error(
            "metadata.name".to_string(),
            format!(
                "\"{}\" is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253)",
                n.escape_debug()
            ),
        ),
        _ => {}
    }
    if !is_dns_label(&ns) {
        out.error(
            "metadata.namespace".to_string(),
            format!("\"{}\" is not a DNS-1123 label", ns.escape_debug()),
        );
    }
    let annotations = check_annotations(meta, "", out);
    let resource_field = annotation_field("", RESOURCE_NAME_ANNOTATION);
    let resource = annotations.get(RESOURCE_NAME_ANNOTATION).cloned();
    if let Some(r) = &resource {
        if r.trim() != r {
            out.warn(
                resource_field.clone(),
                "has surrounding whitespace (plexus trims it)",
            );
        }
        if r.trim().is_empty() {
            out.warn(resource_field.clone(), "is empty: the NAD needs no device");
        } else if let Err(e) = check_resource_name(r.trim()) {
            out.error(resource_field, e);
        }
    }
    let config = match obj.get("spec").map(|s| s.get("config")) {
        None | Some(None) => String::new(),
        Some(Some(Value::String(s))) => s.clone(),
        Some(Some(Value::Null)) => String::new(),
        Some(Some(_)) => {
            out.error(
                "spec.config".to_string(),
                "must be a string holding the JSON config (quote it, or use a YAML block scalar `config: |`)",
            );
            return;
        }
    };
    let nad: NetworkAttachmentDefinition = match serde_json::from_value(Value::Object(obj.clone()))
    {
        Ok(n) => n,
        Err(e) => {
            out.error(None, format!("not a NetworkAttachmentDefinition: {e}"));
            return;
        }
    };
    if !out.valid() {
        return;
    }
    let mut nad = nad;
    nad.metadata.namespace = Some(ns.clone());
    let nad_ref = format!("{ns}/{}", name.unwrap_or_default());
    let resource = resource
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if config.trim().is_empty() {
        if !ctx.conf_dir_given {
            out.warn(
                "spec.config".to_string(),
                format!(
                    "empty: the network is the file named \"{}\" in confDir on each node; not checked (pass --conf-dir)",
                    name.unwrap_or_default()
                ),
            );
            return;
        }
    } else {
        let value: Value = match serde_json::from_str(config.trim()) {
            Ok(v) => v,
            Err(e) => {
                out.error("spec.config".to_string(), format!("not valid JSON: {e}"));
                return;
            }
        };
        check_network_config(ctx, &value, "spec.config", resource.as_deref(), true, out);
        if !out.valid() {
            return;
        }
    }
    match plan::nad_network(&ctx.conf, ctx.files.as_ref(), &nad, &nad_ref) {
        Ok(n) => {
            if config.trim().is_empty() {
                // Found in --conf-dir: check the file as plexus would run it.
                let v: Value = serde_json::from_str(&n.bytes).unwrap_or(Value::Null);
                let mut file = Outcome::default();
                check_network_config(ctx, &v, "", resource.as_deref(), true, &mut file);
                let file_name = n
                    .source
                    .rsplit_once('(')
                    .map(|(_, f)| f.trim_end_matches(')'))
                    .unwrap_or(&n.source)
                    .to_string();
                let locate = |mut i: Issue| {
                    i.field = Some(match i.field {
                        Some(f) => format!("{file_name}: {f}"),
                        None => file_name.clone(),
                    });
                    i
                };
                out.errors.extend(file.errors.into_iter().map(locate));
                out.warnings.extend(file.warnings.into_iter().map(locate));
            }
            out.network = Some((n.name.clone(), n.types(), n.cni_version));
        }
        Err(e) => out.errors.push(Issue::cni("spec.config".to_string(), &e)),
    }
}

/// The annotations as strings; a value of another type is an error (the API refuses it).
fn check_annotations(
    meta: Option<&Value>,
    prefix: &str,
    out: &mut Outcome,
) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    match meta.and_then(|m| m.get("annotations")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(a)) => {
            for (k, v) in a {
                match v {
                    Value::String(s) => {
                        m.insert(k.clone(), s.clone());
                    }
                    other => out.error(
                        annotation_field(prefix, k),
                        format!(
                            "annotation values must be strings, not {}",
                            json_type(other)
                        ),
                    ),
                }
            }
        }
        Some(other) => out.error(
            format!("{prefix}metadata.annotations"),
            format!("must be a map of strings, not {}", json_type(other)),
        ),
    }
    m
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Field by field checks of a network config (a NAD's `spec.config`, a confDir file), before plexus
/// loads it: the paths of the errors are exact.
fn check_network_config(
    ctx: &Ctx,
    v: &Value,
    prefix: &str,
    resource: Option<&str>,
    nad: bool,
    out: &mut Outcome,
) {
    let at = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    let Value::Object(obj) = v else {
        out.error(
            (!prefix.is_empty()).then(|| prefix.to_string()),
            format!("must be a JSON object, not {}", json_type(v)),
        );
        return;
    };
    match obj.get("name") {
        None if nad => {}
        None => out.error(at("name"), "missing"),
        Some(Value::String(n)) => {
            if let Err(e) = validate_network_name(n) {
                out.errors.push(Issue::cni(at("name"), &e));
            }
        }
        Some(other) => out.error(
            at("name"),
            format!("must be a string, not {}", json_type(other)),
        ),
    }
    let mut has_supported = false;
    match obj.get("cniVersions") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, x) in list.iter().enumerate() {
                match x.as_str().map(str::parse::<Version>) {
                    Some(Ok(ver)) if ver.is_supported() => has_supported = true,
                    _ => out.warn(
                        at(&format!("cniVersions[{i}]")),
                        format!(
                            "{x} is not a version plexus speaks ({}); ignored",
                            crate::cni::version::SUPPORTED.join(", ")
                        ),
                    ),
                }
            }
        }
        Some(other) => out.error(
            at("cniVersions"),
            format!("must be a list of versions, not {}", json_type(other)),
        ),
    }
    match obj.get("cniVersion") {
        None if has_supported => {}
        None => out.warn(at("cniVersion"), "missing: read as 0.1.0, as libcni does"),
        Some(Value::String(s)) => {
            if let Err(e) = s.parse::<Version>().and_then(Version::require_supported) {
                if has_supported {
                    out.warn(
                        at("cniVersion"),
                        format!("\"{s}\" is not supported; cniVersions decides"),
                    );
                } else {
                    out.errors.push(Issue::cni(at("cniVersion"), &e));
                }
            }
        }
        Some(other) => out.error(
            at("cniVersion"),
            format!("must be a string, not {}", json_type(other)),
        ),
    }
    let plugins: Vec<(String, &Map<String, Value>)> = match obj.get("plugins") {
        None => vec![(prefix.to_string(), obj)],
        Some(Value::Array(list)) if list.is_empty() => {
            out.error(
                at("plugins"),
                "is empty: a conflist needs at least one plugin",
            );
            return;
        }
        Some(Value::Array(list)) => {
            let mut ps = Vec::new();
            for (i, p) in list.iter().enumerate() {
                match p {
                    Value::Object(m) => ps.push((at(&format!("plugins[{i}]")), m)),
                    other => out.error(
                        at(&format!("plugins[{i}]")),
                        format!("must be an object, not {}", json_type(other)),
                    ),
                }
            }
            ps
        }
        Some(other) => {
            out.error(
                at("plugins"),
                format!("must be a list, not {}", json_type(other)),
            );
            return;
        }
    };
    for (i, (path, p)) in plugins.iter().enumerate() {
        let pat = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        let t = match p.get("type") {
            None => {
                out.error(pat("type"), "missing");
                continue;
            }
            Some(Value::String(t)) => t.as_str(),
            Some(other) => {
                out.error(
                    pat("type"),
                    format!("must be a string, not {}", json_type(other)),
                );
                continue;
            }
        };
        if let Err(e) = validate_plugin_type(t) {
            out.errors.push(Issue::cni(pat("type"), &e));
        } else if SELF_TYPES.contains(&t) {
            out.errors.push(Issue {
                field: Some(pat("type")),
                message: format!("\"{t}\" is plexus (or Multus) itself, which may not be a delegate: its binDir, kubeconfig and delegates would come from whoever wrote this config"),
                code: Some(Code::INVALID_CONFIG.0),
            });
        } else if let Some(allowed) = &ctx.conf.allowed_plugin_types {
            if nad && !allowed.iter().any(|a| a == t) {
                out.errors.push(Issue {
                    field: Some(pat("type")),
                    message: format!("\"{t}\" is not in allowedPluginTypes {allowed:?} (--config)"),
                    code: Some(Code::INVALID_CONFIG.0),
                });
            }
        }
        match p.get("capabilities") {
            None => {}
            Some(Value::Object(caps)) => {
                for (k, v) in caps {
                    if !v.is_boolean() {
                        out.error(
                            pat(&format!("capabilities.{k}")),
                            format!("must be true or false, not {}", json_type(v)),
                        );
                    }
                }
            }
            Some(other) => out.error(
                pat("capabilities"),
                format!("must be an object of booleans, not {}", json_type(other)),
            ),
        }
        let ipam_type = match p.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(ipam)) => match ipam.get("type") {
                None => None,
                Some(Value::String(it)) => {
                    if let Err(e) = validate_plugin_type(it) {
                        out.errors.push(Issue::cni(pat("ipam.type"), &e));
                    }
                    Some(it.clone())
                }
                Some(other) => {
                    out.error(
                        pat("ipam.type"),
                        format!("must be a string, not {}", json_type(other)),
                    );
                    None
                }
            },
            Some(other) => {
                out.error(
                    pat("ipam"),
                    format!("must be an object, not {}", json_type(other)),
                );
                None
            }
        };
        if i == 0 && ipam_type.is_none() && IPAM_PLUGINS.contains(&t) {
            if t == "ptp" {
                out.error(
                    pat("ipam"),
                    "ptp needs an IPAM (an ipam section with a type): it routes the pod's address",
                );
            } else {
                out.warn(
                    pat("ipam"),
                    format!("{t} without an IPAM: the interface gets no IP address (L2 only); add an ipam section if the pod needs one"),
                );
            }
        }
        if i == 0 && resource.is_none() {
            let has = |k: &str| p.contains_key(k);
            if t == "sriov" && !has("deviceID") {
                out.warn(
                    pat("type"),
                    format!("sriov needs a device: annotate the NAD with {RESOURCE_NAME_ANNOTATION} (or set deviceID)"),
                );
            }
            if t == "host-device"
                && !["device", "hwaddr", "kernelpath", "pciBusID", "deviceID"]
                    .iter()
                    .any(|k| has(k))
            {
                out.warn(
                    pat("type"),
                    format!("host-device names no device (device, hwaddr, kernelpath or pciBusID) and the NAD no {RESOURCE_NAME_ANNOTATION}"),
                );
            }
        }
    }
}

fn planned(a: &Attachment, stand_in_cluster: bool) -> Planned {
    let stand_in = if a.network.source.contains(STAND_IN_SOURCE) {
        Some("from confDir, not checked (no --conf-dir)")
    } else if a.cluster && stand_in_cluster {
        Some("stand-in (no --config)")
    } else {
        None
    };
    Planned {
        ifname: a.ifname.clone(),
        network: a.network.name.clone(),
        nad: a.status_name.contains('/').then(|| a.status_name.clone()),
        chain: if stand_in.is_some() {
            None
        } else {
            Some(a.network.types())
        },
        cluster: a.cluster,
        needs_device: a.device.as_ref().map(|(r, _)| r.clone()),
        stand_in,
    }
}

fn check_pod(ctx: &Ctx, obj: &Map<String, Value>, template_path: &[&str], out: &mut Outcome) {
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(&ctx.namespace)
        .to_string();
    out.name = Some(format!("{ns}/{name}"));
    if !is_dns_label(&ns) {
        out.error(
            "metadata.namespace".to_string(),
            format!("\"{}\" is not a DNS-1123 label", ns.escape_debug()),
        );
        return;
    }
    let mut template = Value::Object(obj.clone());
    for k in template_path {
        match template.get(*k) {
            Some(t) => template = t.clone(),
            None => {
                out.error(template_path.join("."), "missing: no pod template to check");
                return;
            }
        }
    }
    let prefix = if template_path.is_empty() {
        String::new()
    } else {
        format!("{}.", template_path.join("."))
    };
    let annotations = check_annotations(template.get("metadata"), &prefix, out);
    if !out.valid() {
        return;
    }
    if template
        .get("spec")
        .and_then(|s| s.get("hostNetwork"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.warn(
            format!("{prefix}spec.hostNetwork"),
            "a hostNetwork pod gets no CNI call: its network annotations are ignored",
        );
    }
    let mut pod = Pod::default();
    pod.metadata.namespace = Some(ns.clone());
    pod.metadata.name = Some(if name.is_empty() {
        "pod".to_string()
    } else {
        name.clone()
    });
    pod.metadata.uid = Some("plexus-validate".into());
    pod.metadata.annotations = Some(annotations.clone());
    // Devices the kubelet would allocate: placeholders for every resource a NAD of the call names,
    // and the IDs the pod's selections ask for.
    let mut view = ctx.view.clone();
    let selections = annotations
        .get(NETWORKS_ANNOTATION)
        .and_then(|v| parse_networks(v).ok())
        .unwrap_or_default();
    let wanted: Vec<String> = selections
        .iter()
        .filter_map(|s| s.device_id.clone())
        .collect();
    // A DRA claim's request a selection names (`plexus.io/deviceRequest`): taken as allocated.
    let requests: Vec<(String, String)> = selections
        .into_iter()
        .filter_map(|s| s.device_request)
        .collect();
    let resources: std::collections::BTreeSet<String> = view
        .nads
        .values()
        .filter_map(|n| {
            n.metadata
                .annotations
                .as_ref()?
                .get(RESOURCE_NAME_ANNOTATION)
        })
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    for r in resources {
        let mut ids: Vec<String> = (0..crate::k8s::annotations::MAX_SELECTIONS + 2)
            .map(|i| format!("offline-placeholder-{i}"))
            .collect();
        ids.extend(wanted.iter().cloned());
        for (claim, request) in &requests {
            let id = format!("offline-claim-{claim}-{request}-{r}");
            view.claims.push(crate::k8s::dra::DraDevice {
                at: crate::k8s::dra::ClaimDevice {
                    namespace: ns.clone(),
                    claim: claim.clone(),
                    pod_claim: claim.clone(),
                    request: request.clone(),
                    driver: "offline".into(),
                    pool: "offline".into(),
                    device: id.clone(),
                    share_id: None,
                    interface: None,
                    sandbox: None,
                    status_entry: Default::default(),
                },
                resource_name: Some(r.clone()),
                device_id: Some(id),
                shared_with: vec![],
                unpublished: None,
            });
        }
        view.devices.0.insert(r, ids);
    }
    let conf_files: &dyn NetworkFiles = ctx.files.as_ref();
    let field = |e: &CniError| {
        let key = if e.msg.contains(DEFAULT_NETWORK_ANNOTATION) {
            DEFAULT_NETWORK_ANNOTATION
        } else if annotations.contains_key(NETWORKS_ANNOTATION) {
            NETWORKS_ANNOTATION
        } else if annotations.contains_key(DEFAULT_NETWORK_ANNOTATION) {
            DEFAULT_NETWORK_ANNOTATION
        } else {
            return None;
        };
        Some(annotation_field(&prefix, key))
    };
    let result = plan::resolve(
        &ctx.conf,
        Sources {
            files: conf_files,
            cluster: Some(&view),
            pod: Some(&pod),
        },
    )
    .and_then(|networks| plan::plan(RUNTIME_IFNAME, &Map::new(), networks));
    match result {
        Ok(atts) => {
            out.attachments = atts
                .iter()
                .map(|a| planned(a, ctx.stand_in_cluster))
                .collect();
            if !wanted.is_empty() {
                out.warn(
                    annotation_field(&prefix, NETWORKS_ANNOTATION),
                    "deviceID requests are taken as allocated: the kubelet's allocation cannot be checked offline",
                );
            }
        }
        Err(e) => {
            let mut issue = Issue::cni(field(&e), &e);
            if e.code == Code::NAD_NOT_FOUND {
                issue
                    .message
                    .push_str(" (offline, only the NADs given with -f exist)");
            }
            out.errors.push(issue);
        }
    }
    if ctx.stand_in_cluster {
        out.warn(
            None,
            "no --config: planned with a stand-in cluster network and plexus's defaults (no defaultNetworks, namespaceIsolation off, any plugin type)",
        );
    }
}

fn check_plexus_config(
    ctx: &Ctx,
    obj: &Map<String, Value>,
    index: Option<usize>,
    plugin: &Map<String, Value>,
    out: &mut Outcome,
) {
    out.name = obj.get("name").and_then(Value::as_str).map(String::from);
    let field = index.map(|i| format!("plugins[{i}]"));
    let at = |k: &str| match &field {
        Some(f) => format!("{f}.{k}"),
        None => k.to_string(),
    };
    if let (Some(i), Some(Value::Array(list))) = (index, obj.get("plugins")) {
        if list.len() > 1 {
            out.warn(
                "plugins".to_string(),
                format!("plexus is plugin {i} of {}: the runtime chains the others with it; only plexus is checked", list.len()),
            );
        }
    }
    let bytes = serde_json::to_vec(plugin).expect("serializes");
    let conf = match NetConf::parse(&bytes) {
        Ok(c) => c,
        Err(e) => {
            out.errors.push(Issue::cni(field, &e));
            return;
        }
    };
    if conf.cni_version == Version::V1_1_0 {
        out.warn(
            "cniVersion".to_string(),
            "1.1.0: runtimes on libcni older than 1.2 (containerd 1.6, podman 4.3) refuse the 1.1.0 result; 1.0.0 unless the runtime is newer (GC and STATUS need 1.1.0)",
        );
    }
    if conf.cluster_network.is_some() && !conf.delegates.is_empty() {
        out.warn(at("delegates"), "ignored: clusterNetwork is set");
    }
    if conf.cluster_network.is_none() && !conf.default_networks.is_empty() {
        out.warn(
            at("defaultNetworks"),
            "ignored: defaultNetworks only apply with clusterNetwork",
        );
    }
    let files = NadsFirst {
        conf: &conf,
        view: &ctx.view,
        files: ctx.files.as_ref(),
    };
    let networks = match conf.static_networks(&files) {
        Ok(n) => n,
        Err(e) => {
            out.errors.push(Issue::cni(field, &e));
            return;
        }
    };
    let mut all = networks.into_iter().map(plan::PodNetwork::plain);
    let cluster = all.next().expect("static_networks gives at least one");
    match plan::plan(
        RUNTIME_IFNAME,
        &Map::new(),
        plan::PodNetworks {
            cluster,
            extras: all.collect(),
        },
    ) {
        Ok(atts) => out.attachments = atts.iter().map(|a| planned(a, false)).collect(),
        Err(e) => out.errors.push(Issue::cni(field, &e)),
    }
}

fn check_daemon_config(obj: &Map<String, Value>, out: &mut Outcome) {
    let bytes = serde_json::to_vec(obj).expect("serializes");
    match crate::daemon::config::DaemonConfig::parse(&bytes) {
        Ok(c) => {
            for w in c.warnings {
                out.warn(None, w);
            }
        }
        Err(e) => out.error(None, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(files: &[&Path]) -> ValidateArgs {
        ValidateArgs {
            files: files.iter().map(|p| p.to_path_buf()).collect(),
            conf_dir: None,
            config: None,
            namespace: "default".into(),
            output: Output::Json,
        }
    }

    fn run_on(text: &str, config: Option<&str>) -> (u8, Vec<Value>) {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("in.yaml");
        std::fs::write(&f, text).unwrap();
        let mut a = args(&[&f]);
        if let Some(c) = config {
            let p = d.path().join("c.conf");
            std::fs::write(&p, c).unwrap();
            a.config = Some(p);
        }
        let r = validate(&a);
        let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
        (r.code, v.as_array().cloned().unwrap_or_default())
    }

    const NAD: &str = r#"
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: mv, namespace: ns1}
spec:
  config: '{"cniVersion": "1.0.0", "type": "macvlan", "master": "eth0", "capabilities": {"ips": true}, "ipam": {"type": "static"}}'
"#;

    #[test]
    fn documents_json_yaml_and_errors() {
        let (docs, err) = documents("a: 1\n---\n---\nb: 2\n");
        assert_eq!(docs, vec![(1, json!({"a": 1})), (3, json!({"b": 2}))]);
        assert!(err.is_none());
        let (docs, err) = documents("a: 1\n---\nb: [1\n");
        assert_eq!(docs.len(), 1);
        let (doc, msg) = err.unwrap();
        assert_eq!(doc, 2);
        assert!(msg.contains("line 3"), "{msg}");
        let (docs, err) = documents(" [{\"kind\": \"Pod\"}]");
        assert_eq!((docs.len(), err), (1, None));
        let (_, err) = documents("{\"a\": ");
        assert!(err.unwrap().1.contains("line 1"));
        assert_eq!(documents("{a: 1}").0, vec![(1, json!({"a": 1}))]);
    }

    #[test]
    fn resource_names() {
        check_resource_name("intel.com/sriov_netdevice").unwrap();
        check_resource_name("example.org/a.b-c").unwrap();
        for bad in [
            "sriov",
            "/x",
            "Intel.com/x",
            "intel.com/",
            "intel.com/-x",
            "a/b/c",
        ] {
            assert!(check_resource_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_good_nad_and_a_pod_using_it() {
        let text = format!(
            "{NAD}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns1\n  annotations:\n    k8s.v1.cni.cncf.io/networks: mv@data\n"
        );
        let (code, v) = run_on(&text, None);
        assert_eq!(code, 0, "{v:#?}");
        assert_eq!(v[0]["network"]["chain"], "macvlan");
        let atts = v[1]["attachments"].as_array().unwrap();
        assert_eq!(atts.len(), 2);
        assert_eq!(atts[0]["standIn"], true);
        assert_eq!(
            (&atts[1]["ifname"], &atts[1]["nad"], &atts[1]["chain"]),
            (&json!("data"), &json!("ns1/mv"), &json!("macvlan"))
        );
    }

    #[test]
    fn nad_field_errors_name_their_path() {
        let nad = |config: Value| {
            format!(
                "kind: NetworkAttachmentDefinition\napiVersion: k8s.cni.cncf.io/v1\nmetadata: {{name: x}}\nspec:\n  config: '{config}'\n"
            )
        };
        for (config, field, code) in [
            (
                json!({"cniVersion": "1.0.0", "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}}, {"type": "../evil"}]}),
                "spec.config.plugins[1].type",
                Some(7),
            ),
            (
                json!({"cniVersion": "1.0.0", "type": "multus"}),
                "spec.config.type",
                Some(7),
            ),
            (
                json!({"cniVersion": "9.9.9", "type": "macvlan"}),
                "spec.config.cniVersion",
                Some(1),
            ),
            (
                json!({"cniVersion": "1.0.0", "type": "macvlan", "capabilities": {"ips": "yes"}}),
                "spec.config.capabilities.ips",
                None,
            ),
            (
                json!({"cniVersion": "1.0.0", "type": "macvlan", "capabilities": ["ips"]}),
                "spec.config.capabilities",
                None,
            ),
            (
                json!({"cniVersion": "1.0.0", "type": "ptp"}),
                "spec.config.ipam",
                None,
            ),
            (
                json!({"cniVersion": "1.0.0", "type": "bridge", "ipam": {"type": "/bin/sh"}}),
                "spec.config.ipam.type",
                Some(7),
            ),
        ] {
            let (c, v) = run_on(&nad(config.clone()), None);
            assert_eq!(c, 1, "{config}");
            let e = &v[0]["errors"][0];
            assert_eq!(e["field"], field, "{config}: {e}");
            assert_eq!(e["code"].as_u64(), code, "{config}: {e}");
        }
        // No IPAM on an L2-capable plugin: a warning only.
        let (c, v) = run_on(
            &nad(json!({"cniVersion": "1.0.0", "type": "macvlan"})),
            None,
        );
        assert_eq!(c, 0);
        assert_eq!(v[0]["warnings"][0]["field"], "spec.config.ipam");
    }

    #[test]
    fn nad_names_and_configs_of_the_wrong_shape() {
        let (c, v) = run_on(
            "kind: NetworkAttachmentDefinition\napiVersion: k8s.cni.cncf.io/v1\nmetadata: {name: Bad_Name}\nspec: {config: {a: 1}}\n",
            None,
        );
        assert_eq!(c, 1);
        let fields: Vec<&Value> = v[0]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["field"])
            .collect();
        assert_eq!(fields, [&json!("metadata.name"), &json!("spec.config")]);
        let (c, v) = run_on(
            "kind: NetworkAttachmentDefinition\napiVersion: k8s.cni.cncf.io/v1\nmetadata:\n  name: e\n  annotations: {k8s.v1.cni.cncf.io/resourceName: sriov}\n",
            None,
        );
        assert_eq!(c, 1);
        assert_eq!(
            v[0]["errors"][0]["field"],
            "metadata.annotations[\"k8s.v1.cni.cncf.io/resourceName\"]"
        );
    }

    #[test]
    fn empty_nad_config_needs_conf_dir() {
        let text = "kind: NetworkAttachmentDefinition\napiVersion: k8s.cni.cncf.io/v1\nmetadata: {name: ondisk}\n";
        let (c, v) = run_on(text, None);
        assert_eq!(c, 0);
        assert!(v[0]["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("--conf-dir"));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("n.yaml");
        std::fs::write(&f, text).unwrap();
        let mut a = args(&[&f]);
        a.conf_dir = Some(d.path().to_path_buf());
        let r = validate(&a);
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert!(r.stdout.contains("no network named"), "{}", r.stdout);
        std::fs::write(
            d.path().join("10-ondisk.conf"),
            r#"{"cniVersion":"1.0.0","name":"ondisk","type":"vlan","master":"eth0","vlanId":5,"ipam":{"type":"dhcp"}}"#,
        )
        .unwrap();
        let r = validate(&a);
        assert_eq!(r.code, 0, "{}", r.stdout);
        assert!(r.stdout.contains("\"chain\": \"vlan\""), "{}", r.stdout);
    }

    #[test]
    fn workloads_use_their_template() {
        let text = format!(
            "{NAD}---\nkind: CronJob\nmetadata: {{name: cj, namespace: ns1}}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        metadata:\n          annotations:\n            k8s.v1.cni.cncf.io/networks: ghost\n"
        );
        let (c, v) = run_on(&text, None);
        assert_eq!(c, 1);
        let e = &v[1]["errors"][0];
        assert_eq!(e["code"], 114);
        assert_eq!(
            e["field"],
            "spec.jobTemplate.spec.template.metadata.annotations[\"k8s.v1.cni.cncf.io/networks\"]"
        );
        let (c, v) = run_on("kind: Deployment\nmetadata: {name: d}\nspec: {}\n", None);
        assert_eq!(c, 1);
        assert_eq!(v[0]["errors"][0]["field"], "spec.template");
    }

    #[test]
    fn device_nads_plan_with_placeholders() {
        let text = r#"
kind: NetworkAttachmentDefinition
apiVersion: k8s.cni.cncf.io/v1
metadata:
  name: vf
  namespace: ns1
  annotations: {k8s.v1.cni.cncf.io/resourceName: intel.com/sriov}
spec:
  config: '{"cniVersion": "1.0.0", "type": "sriov", "ipam": {"type": "host-local", "subnet": "10.56.0.0/24"}}'
---
kind: Pod
metadata:
  name: p
  namespace: ns1
  annotations: {k8s.v1.cni.cncf.io/networks: "vf,vf"}
"#;
        let (c, v) = run_on(text, None);
        assert_eq!(c, 0, "{v:#?}");
        let atts = v[1]["attachments"].as_array().unwrap();
        assert_eq!(atts[1]["needsDevice"], "intel.com/sriov");
        assert_eq!(atts[2]["needsDevice"], "intel.com/sriov");
        // A DRA claim's request named by the selection is taken as allocated; one on a NAD
        // without a resourceName is refused.
        let dra = text.replace(
            r#"annotations: {k8s.v1.cni.cncf.io/networks: "vf,vf"}"#,
            r#"annotations: {k8s.v1.cni.cncf.io/networks: '[{"name": "vf", "plexus.io/deviceRequest": "net/vf"}, {"name": "vf"}]'}"#,
        );
        let (c, v) = run_on(&dra, None);
        assert_eq!(c, 0, "{v:#?}");
        assert_eq!(v[1]["attachments"][1]["needsDevice"], "intel.com/sriov");
        let bad = dra.replace(
            "  annotations: {k8s.v1.cni.cncf.io/resourceName: intel.com/sriov}\n",
            "",
        );
        let (c, v) = run_on(&bad, None);
        assert_eq!(c, 1, "{v:#?}");
        let msg = v[1]["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains("plexus.io/deviceRequest"), "{msg}");
    }

    #[test]
    fn configs_conflists_and_daemon_configs() {
        let conflist = json!({"cniVersion": "1.0.0", "name": "plexus", "plugins": [{"type": "plexus",
            "delegates": [{"cniVersion": "1.0.0", "name": "cbr0", "type": "bridge"},
                          {"cniVersion": "1.0.0", "name": "side", "plugins": [{"type": "macvlan"}, {"type": "tuning"}]}]}]});
        let (c, v) = run_on(&conflist.to_string(), None);
        assert_eq!(c, 0, "{v:#?}");
        assert_eq!(v[0]["kind"], "PlexusConfig");
        assert_eq!(v[0]["attachments"][1]["chain"], "macvlan+tuning");
        assert_eq!(v[0]["attachments"][1]["ifname"], "net1");
        let (c, v) = run_on(
            r#"{"cniVersion": "1.0.0", "name": "m", "type": "multus", "logLevel": 3}"#,
            None,
        );
        assert_eq!(c, 1);
        assert!(v[0]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("logLevel"));
        let (c, v) = run_on(
            r#"{"cniVersion": "1.0.0", "type": "plexus", "clusterNetwork": "calico"}"#,
            None,
        );
        assert_eq!(c, 0, "{v:#?}");
        assert_eq!(v[0]["attachments"][0]["standIn"], true);
        let (c, v) = run_on(
            r#"{"socketDir": "/run/multus/", "multusConfigFile": "auto", "enablePprof": true}"#,
            None,
        );
        assert_eq!(c, 0, "{v:#?}");
        assert_eq!(v[0]["kind"], "DaemonConfig");
        assert!(v[0]["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("enablePprof"));
        let (c, v) = run_on(r#"{"socketDir": 1}"#, None);
        assert_eq!((c, &v[0]["valid"]), (1, &json!(false)));
    }

    #[test]
    fn namespace_isolation_from_the_config() {
        let text = r#"
kind: NetworkAttachmentDefinition
apiVersion: k8s.cni.cncf.io/v1
metadata: {name: secret, namespace: other}
spec: {config: '{"cniVersion": "1.0.0", "type": "macvlan", "ipam": {"type": "dhcp"}}'}
---
kind: Pod
metadata: {name: p, namespace: ns1, annotations: {k8s.v1.cni.cncf.io/networks: other/secret}}
"#;
        assert_eq!(run_on(text, None).0, 0);
        let conf = r#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus","namespaceIsolation":true,
            "delegates":[{"cniVersion":"1.0.0","name":"cbr0","type":"bridge"}]}"#;
        let (c, v) = run_on(text, Some(conf));
        assert_eq!(c, 1);
        assert_eq!(v[1]["errors"][0]["code"], 113);
        assert!(v[1]["warnings"].as_array().unwrap().is_empty());
    }

    #[test]
    fn usage_errors() {
        let a = args(&[Path::new("/nonexistent/x.yaml")]);
        let r = validate(&a);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("/nonexistent/x.yaml"));
    }
}
