//! A fixture Kubernetes API server for plexus's e2e suite and benchmarks. It is NOT a Kubernetes
//! API server: it keeps pods, NetworkAttachmentDefinitions and events in memory and answers on
//! their real REST paths with real JSON — resourceVersions, metav1.Status errors, paginated lists,
//! watches with a change history, bookmarks and streaming lists — records every request, and
//! injects faults on demand. It is exactly as faithful as plexus and kube-rs need, no more: no
//! etcd, no admission, no validation of object schemas, no graceful deletion, one global
//! resourceVersion counter, no snapshots of the past (see "Not a real API server" below).
//!
//! # Usage
//!
//! `plexus-fixture-apiserver [--listen ADDR] [--unix PATH] [--token T] [--tls-dir DIR]
//! [--bookmark-interval-ms MS] [--history-size N] [--resource-version V]`, printing `listening on ADDR` on stdout once
//! every listener (and DIR/ca.crt) is ready.
//! - `--listen ADDR` (default `127.0.0.1:0`): the TCP listener for the API.
//! - `--unix PATH`: the same service, always plain HTTP, on a unix socket: the tests' control
//!   channel, trusted (no bearer token asked; faults and the request log apply as on TCP).
//! - `--token T`: require `Authorization: Bearer T` on API requests over TCP (never on
//!   `/fixture/`).
//! - `--tls-dir DIR`: serve the TCP listener over HTTPS (rustls, ring provider). At start the
//!   fixture makes a throwaway CA and a server certificate from it for IP 127.0.0.1, IP ::1 and
//!   DNS `localhost`, and writes the CA's PEM to `DIR/ca.crt`, so clients verify normally.
//! - `--bookmark-interval-ms MS` (default 5000): how often a watch that asked for bookmarks
//!   gets one.
//! - `--history-size N` (default 10000): how many changes the watch history keeps; a watch or a
//!   list continuation from before the oldest kept change gets 410 Gone (reason `Expired`).
//! - `--resource-version V` (default `v1`): the one resource.k8s.io version served (`v1`,
//!   `v1beta2`, `v1beta1`), or `none` for an API server without DRA.
//!
//! # API endpoints
//!
//! Namespaced: `/api/v1/namespaces/{ns}/{pods|events}[/{name}[/status]]` and
//! `/apis/k8s.cni.cncf.io/v1/namespaces/{ns}/network-attachment-definitions[/{name}]`:
//! - `GET` collection: list, or watch with `watch=true`; `GET` name (and `pods/{name}/status`);
//! - `POST` collection (create; `generateName` honoured), `PUT` name or `/status` (replace, with a
//!   resourceVersion precondition when one is sent), `PATCH` name or `/status` with
//!   `application/merge-patch+json` only (RFC 7386; a `metadata.uid` or `resourceVersion` in the
//!   patch is a precondition), `DELETE` name (immediate: no graceful deletion, no finalizers).
//!
//! DRA, in the served version V: `/apis/resource.k8s.io` (the APIGroup discovery document),
//! `/apis/resource.k8s.io/V/namespaces/{ns}/resourceclaims[/{name}[/status]]` (as above; a PUT
//! or PATCH of a claim is refused with 422 `Invalid` when a `status.devices` entry names a device
//! the claim did not allocate, appears twice, or has `networkData` beyond KEP-4817's limits) and
//! the cluster-scoped `/apis/resource.k8s.io/V/resourceslices[/{name}]` (list, watch, get,
//! create, replace, delete; field selectors `spec.nodeName` and `spec.driver`). The objects'
//! schemas are not checked: a test stores v1beta1-shaped devices under v1beta1 itself.
//!
//! Cluster-wide (all namespaces), list and watch only: `/api/v1/pods`, `/api/v1/events`,
//! `/apis/k8s.cni.cncf.io/v1/network-attachment-definitions`,
//! `/apis/resource.k8s.io/V/resourceclaims`.
//!
//! List and watch query parameters (percent- and `+`-decoded):
//! - `fieldSelector`: comma-joined `field=v`, `field==v`, `field!=v` (`\,` `\=` `\\` escapes);
//!   fields: `metadata.name`, `metadata.namespace` for every kind; for pods `spec.nodeName`,
//!   `spec.restartPolicy`, `spec.schedulerName`, `spec.serviceAccountName`, `spec.hostNetwork`,
//!   `status.phase`, `status.podIP`, `status.nominatedNodeName`; for events `involvedObject.*`
//!   (`kind`, `namespace`, `name`, `uid`, `apiVersion`, `resourceVersion`, `fieldPath`), `reason`,
//!   `reportingComponent`, `source`, `type`. Any other field: 400, as the real API.
//! - `labelSelector`: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.
//! - list: `limit` + `continue` (an opaque token; `metadata.continue` and, without selectors,
//!   `metadata.remainingItemCount` when truncated); every page of one list carries the first
//!   page's `metadata.resourceVersion`, as a consistent list would. `resourceVersion` with
//!   `resourceVersionMatch=NotOlderThan` (or none) is served from the present; one in the future
//!   gets 504 (reason `Timeout`), `Exact` of anything but the present gets 410.
//! - watch: `resourceVersion` N sends the changes after N from the history (410 `Expired` as an
//!   `ERROR` event, then the end of the stream, if N is older than the history); absent or `0`:
//!   synthetic `ADDED` events for the current objects first. `allowWatchBookmarks=true`: a
//!   `BOOKMARK` at the start and every bookmark interval. `sendInitialEvents=true` (with
//!   `resourceVersionMatch=NotOlderThan` and `allowWatchBookmarks=true`, else 422): `ADDED` for
//!   the current objects, then a `BOOKMARK` annotated `k8s.io/initial-events-end: "true"`.
//!   `timeoutSeconds` ends the stream (default 1800). With selectors, an object that stops
//!   matching is sent as `DELETED` (its previous state at the new resourceVersion) and one that
//!   starts matching as `ADDED`, as the real watch cache does.
//!
//! Errors are metav1.Status objects (`NotFound`, `AlreadyExists`, `Conflict`, `Unauthorized`,
//! `BadRequest`, `Invalid`, `Expired`, `Timeout`, `MethodNotAllowed`, `UnsupportedMediaType`).
//!
//! # Control endpoints (on either listener, never authenticated, never logged)
//!
//! - `GET /fixture/requests`: every API request since the last clear, as
//!   `{"method","path","query" (raw, as sent),"write","watch","listener" ("tcp" or "unix")}`;
//!   `DELETE /fixture/requests`.
//! - `POST /fixture/faults` `[{"method","pathPrefix","status","delayMs","times","watch"}]`: the
//!   first matching fault (method if given, path prefix, `watch` true/false if given: only watch
//!   or only non-watch requests, `times` left if given) delays the request, then answers with
//!   `status` if given; it applies to list and watch requests like any other. `DELETE` clears.
//! - `PUT /fixture/token` (body: the new bearer token; empty: no auth).
//! - `POST /fixture/objects`: body a JSON array of objects (`apiVersion`, `kind`,
//!   `metadata.namespace`, `metadata.name` or `generateName`), created at once, all or none;
//!   answers `{"created": N}`.
//! - `GET /fixture/watches`: `{"live": N}`, the watch streams open now.
//! - `DELETE /fixture/watches`: end every live watch stream cleanly (as a watch timeout or an API
//!   server going away gracefully); `?abort=true` cuts them mid-stream instead (as a dropped
//!   connection). The fixture keeps serving; answers `{"ended": N}`.
//! - `POST /fixture/outage?ms=N`: the API server dies and comes back N ms later with its state
//!   (as a kube-apiserver restarted over the same etcd): every TCP connection is cut at once
//!   (reads and writes fail, watches end mid-stream), and for N ms every new connection is reset
//!   as soon as it is accepted (the port stays bound, so nothing else can take it meanwhile). The
//!   unix control socket stays up. In effect when it answers `{}`.
//!
//! # Not a real API server
//!
//! One resourceVersion counter and one history for every kind; no MVCC, so a list is always of
//! the present (an `Exact` past resourceVersion is 410 where a real server could still serve it
//! from etcd); continuation pages show the present objects after the last key rather than the
//! first page's snapshot; a slow watcher is never closed for falling behind (it gets 410 once
//! the history has moved past it); deletions are immediate; no namespaces objects, no RBAC, no
//! protobuf, no server-side apply, no strategic-merge or JSON patch, no `/metrics`, no OpenAPI
//! discovery.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Pod,
    Nad,
    Event,
    ResourceClaim,
    ResourceSlice,
}

/// The one resource.k8s.io version served (`--resource-version`), or none.
static RESOURCE_VERSION: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();

fn resource_version() -> Option<&'static str> {
    *RESOURCE_VERSION.get().unwrap_or(&Some("v1"))
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Pod,
        Kind::Nad,
        Kind::Event,
        Kind::ResourceClaim,
        Kind::ResourceSlice,
    ];
    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Nad => "network-attachment-definitions",
            Kind::Event => "events",
            Kind::ResourceClaim => "resourceclaims",
            Kind::ResourceSlice => "resourceslices",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Nad => "k8s.cni.cncf.io/v1",
            Kind::ResourceClaim | Kind::ResourceSlice => match resource_version() {
                Some("v1beta1") => "resource.k8s.io/v1beta1",
                Some("v1beta2") => "resource.k8s.io/v1beta2",
                _ => "resource.k8s.io/v1",
            },
            _ => "v1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Nad => "NetworkAttachmentDefinition",
            Kind::Event => "Event",
            Kind::ResourceClaim => "ResourceClaim",
            Kind::ResourceSlice => "ResourceSlice",
        }
    }
    /// Objects without a namespace (kept under namespace "").
    fn cluster_scoped(self) -> bool {
        self == Kind::ResourceSlice
    }
    fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.kind() == kind)
    }
}

#[derive(Clone, Debug)]
struct Fault {
    method: Option<String>,
    path_prefix: String,
    status: Option<u16>,
    delay: Duration,
    times: Option<u64>,
    watch: Option<bool>,
}

/// One committed change, as the watch cache keeps it: watches replay these from any
/// resourceVersion still in the history.
struct Change {
    rv: u64,
    kind: Kind,
    kind_of_change: &'static str,
    object: Value,
    /// The object before a MODIFIED: a selector watch needs it to tell "stopped matching"
    /// (DELETED) from "never matched" (nothing).
    prev: Option<Value>,
}

struct State {
    objects: BTreeMap<(Kind, String, String), Value>,
    rv: u64,
    history: VecDeque<Change>,
    history_size: usize,
    /// The resourceVersion of the newest change dropped from the history: a watch or a list
    /// continuation from before it cannot be served consistently (410).
    compacted: u64,
    requests: Vec<Value>,
    faults: Vec<Fault>,
    token: Option<String>,
    uid: u64,
    /// The current resourceVersion, for watchers to wake on.
    changed: watch::Sender<u64>,
    /// Bumped by `DELETE /fixture/watches`; the flag says whether to cut the connections.
    cut: watch::Sender<(u64, bool)>,
}

struct Shared {
    state: Mutex<State>,
    live_watches: AtomicUsize,
    bookmark_every: Duration,
    /// Bumped by `POST /fixture/outage`: cuts every connection accepted before.
    outage: watch::Sender<u64>,
    /// Until when new connections are reset.
    down_until: Mutex<Option<std::time::Instant>>,
}

type App = Arc<Shared>;

/// What a handler knows of its request's listener.
#[derive(Clone)]
struct Ctx {
    app: App,
    /// The unix control socket: the test itself, never asked for a token.
    control: bool,
}

fn status(
    code: u16,
    reason: &str,
    message: String,
    kind: Option<Kind>,
    name: &str,
) -> Response<Body> {
    respond(code, &status_body(code, reason, message, kind, name))
}

fn status_body(code: u16, reason: &str, message: String, kind: Option<Kind>, name: &str) -> Value {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code});
    if let Some(k) = kind {
        body["details"] = json!({"name": name, "kind": k.plural()});
    }
    body
}

fn bad_request(message: String) -> Response<Body> {
    status(400, "BadRequest", message, None, "")
}

fn not_found(kind: Kind, name: &str) -> Response<Body> {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.plural()),
        Some(kind),
        name,
    )
}

fn expired(message: String) -> Value {
    status_body(410, "Expired", message, None, "")
}

/// A metav1.Status body, sent with its own code.
fn respond_status(s: &Value) -> Response<Body> {
    respond(s["code"].as_u64().unwrap_or(500) as u16, s)
}

fn respond(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

struct Route {
    kind: Kind,
    /// None: the cluster-wide collection.
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (core, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => (true, rest),
        ["apis", "k8s.cni.cncf.io", "v1", rest @ ..] => (false, rest),
        ["apis", "resource.k8s.io", v, rest @ ..] if Some(*v) == resource_version() => {
            let kind = match rest.first() {
                Some(&"resourceslices") => Kind::ResourceSlice,
                _ => Kind::ResourceClaim,
            };
            if kind.cluster_scoped() {
                // /resourceslices[/{name}[/{sub}]]
                let (name, sub) = match rest {
                    [_] => (None, None),
                    [_, name] => (Some(name), None),
                    [_, name, sub] => (Some(name), Some(sub)),
                    _ => return None,
                };
                return Some(Route {
                    kind,
                    ns: name.map(|_| String::new()),
                    name: name.map(|s| s.to_string()),
                    sub: sub.map(|s| s.to_string()),
                });
            }
            (false, rest)
        }
        _ => return None,
    };
    let (ns, plural, name, sub) = match rest {
        [plural] => (None, plural, None, None),
        ["namespaces", ns, plural] => (Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => (Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => (Some(ns), plural, Some(name), Some(sub)),
        _ => return None,
    };
    let kind = match (*plural, core) {
        ("pods", true) => Kind::Pod,
        ("events", true) => Kind::Event,
        ("network-attachment-definitions", false) => Kind::Nad,
        ("resourceclaims", false) if path.starts_with("/apis/resource.k8s.io/") => {
            Kind::ResourceClaim
        }
        _ => return None,
    };
    Some(Route {
        kind,
        ns: ns.map(|s| s.to_string()),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    })
}

/// Query parameters as a server decodes them: percent escapes and `+` for space (kube-rs and
/// client-go both form-encode, so `spec.nodeName=node-1` arrives as `spec.nodeName%3Dnode-1`).
fn query(uri: &Uri) -> BTreeMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn is_watch(q: &BTreeMap<String, String>) -> bool {
    q.get("watch").is_some_and(|w| w == "true" || w == "1")
}

async fn handle(
    ctx: axum::extract::State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let Ctx { app, control } = ctx.0;
    let path = uri.path().to_string();
    if let Some(control) = path.strip_prefix("/fixture/") {
        return fixture(&app, &method, control, &query(&uri), &body);
    }
    let q = query(&uri);
    let watching = method == Method::GET && is_watch(&q);
    // Record, then apply faults and auth: a refused or failed request is still a request made.
    let (fault, token) = {
        let mut st = app.state.lock().unwrap();
        let write = matches!(
            method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        st.requests
            .push(json!({"method": method.as_str(), "path": path,
            "query": uri.query().unwrap_or(""), "write": write, "watch": watching,
            "listener": if control { "unix" } else { "tcp" }}));
        let hit = st.faults.iter_mut().find(|f| {
            path.starts_with(&f.path_prefix)
                && f.method.as_deref().is_none_or(|m| m == method.as_str())
                && f.watch.is_none_or(|w| w == watching)
                && f.times.is_none_or(|t| t > 0)
        });
        let fault = hit.map(|f| {
            if let Some(t) = f.times.as_mut() {
                *t -= 1;
            }
            f.clone()
        });
        (fault, st.token.clone())
    };
    if let Some(f) = &fault {
        tokio::time::sleep(f.delay).await;
        if let Some(code) = f.status {
            let reason = match code {
                400 => "BadRequest",
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                410 => "Expired",
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                504 => "Timeout",
                _ => "InternalError",
            };
            return status(
                code,
                reason,
                format!("injected {code} by the fixture"),
                None,
                "",
            );
        }
    }
    if let Some(t) = token.filter(|_| !control) {
        let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {t}"));
        if !ok {
            return status(401, "Unauthorized", "Unauthorized".into(), None, "");
        }
    }
    if method == Method::GET && path.trim_end_matches('/') == "/apis/resource.k8s.io" {
        if let Some(v) = resource_version() {
            return respond(
                200,
                &json!({"kind": "APIGroup", "apiVersion": "v1", "name": "resource.k8s.io",
                    "versions": [{"groupVersion": format!("resource.k8s.io/{v}"), "version": v}],
                    "preferredVersion": {"groupVersion": format!("resource.k8s.io/{v}"), "version": v}}),
            );
        }
    }
    let Some(Route {
        kind,
        ns,
        name,
        sub,
    }) = route(&path)
    else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
            None,
            "",
        );
    };
    let scope = Scope {
        kind,
        ns: ns.clone(),
    };
    match (method, ns, name, sub.as_deref()) {
        (Method::GET, _, None, None) if watching => start_watch(&app, scope, &q),
        (Method::GET, _, None, None) => list(&app, scope, &q),
        (Method::GET, Some(ns), Some(n), None | Some("status")) => get(&app, kind, &ns, &n),
        (Method::POST, Some(ns), None, None) => create(&app, kind, &ns, &body),
        (Method::POST, None, None, None) if kind.cluster_scoped() => create(&app, kind, "", &body),
        (Method::PUT, Some(ns), Some(n), None | Some("status")) => {
            replace(&app, kind, &ns, &n, &body, sub.is_some())
        }
        (Method::PATCH, Some(ns), Some(n), None | Some("status")) => {
            let merge = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/merge-patch+json"));
            if !merge {
                return status(
                    415,
                    "UnsupportedMediaType",
                    "the fixture takes application/merge-patch+json patches only".into(),
                    None,
                    "",
                );
            }
            patch(&app, kind, &ns, &n, &body, sub.is_some())
        }
        (Method::DELETE, Some(ns), Some(n), None) => delete(&app, kind, &ns, &n),
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{path}: method not allowed"),
            None,
            "",
        ),
    }
}

fn fixture(
    app: &App,
    method: &Method,
    control: &str,
    q: &BTreeMap<String, String>,
    body: &[u8],
) -> Response<Body> {
    let mut st = app.state.lock().unwrap();
    match (method.clone(), control) {
        (Method::GET, "requests") => respond(200, &Value::Array(st.requests.clone())),
        (Method::DELETE, "requests") => {
            st.requests.clear();
            respond(200, &json!({}))
        }
        (Method::POST, "faults") => {
            let list: Vec<Value> = serde_json::from_slice(body).unwrap_or_default();
            for f in list {
                st.faults.push(Fault {
                    method: f["method"].as_str().map(String::from),
                    path_prefix: f["pathPrefix"].as_str().unwrap_or("/").to_string(),
                    status: f["status"].as_u64().map(|s| s as u16),
                    delay: Duration::from_millis(f["delayMs"].as_u64().unwrap_or(0)),
                    times: f["times"].as_u64(),
                    watch: f["watch"].as_bool(),
                });
            }
            respond(200, &json!({}))
        }
        (Method::DELETE, "faults") => {
            st.faults.clear();
            respond(200, &json!({}))
        }
        (Method::PUT, "token") => {
            let t = String::from_utf8_lossy(body).trim().to_string();
            st.token = if t.is_empty() { None } else { Some(t) };
            respond(200, &json!({}))
        }
        (Method::POST, "objects") => create_many(&mut st, body),
        (Method::GET, "watches") => respond(
            200,
            &json!({"live": app.live_watches.load(Ordering::SeqCst)}),
        ),
        (Method::POST, "outage") => {
            let ms = q.get("ms").and_then(|m| m.parse().ok()).unwrap_or(1000);
            *app.down_until.lock().unwrap() =
                Some(std::time::Instant::now() + Duration::from_millis(ms));
            app.outage.send_modify(|generation| *generation += 1);
            st.cut.send_modify(|(generation, how)| {
                *generation += 1;
                *how = true;
            });
            respond(200, &json!({}))
        }
        (Method::DELETE, "watches") => {
            let abort = q.get("abort").is_some_and(|a| a == "true" || a == "1");
            let live = app.live_watches.load(Ordering::SeqCst);
            st.cut.send_modify(|(generation, how)| {
                *generation += 1;
                *how = abort;
            });
            respond(200, &json!({"ended": live}))
        }
        _ => respond(404, &json!({"error": "unknown fixture call"})),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Exists,
    NotExists,
}

#[derive(Clone, Debug)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

impl Requirement {
    fn matches(&self, actual: Option<&str>) -> bool {
        match self.op {
            Op::Eq | Op::In => actual.is_some_and(|a| self.values.iter().any(|v| v == a)),
            // As the real selectors: "!=" and "notin" also match objects without the key.
            Op::Ne | Op::NotIn => actual.is_none_or(|a| self.values.iter().all(|v| v != a)),
            Op::Exists => actual.is_some(),
            Op::NotExists => actual.is_none(),
        }
    }
}

/// Splits at separators outside parentheses and not escaped with `\`.
fn split_terms(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut depth = 0u32;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first unescaped occurrence of one of `ops` (tried in order at each position).
fn find_op<'a>(term: &str, ops: &[&'a str]) -> Option<(usize, &'a str)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if let Some(op) = ops.iter().find(|op| term[i..].starts_with(**op)) {
            return Some((i, op));
        }
        i += 1;
    }
    None
}

fn parse_field_selector(kind: Kind, sel: &str) -> Result<Vec<Requirement>, String> {
    split_terms(sel)
        .into_iter()
        .map(|term| {
            let (at, op) = find_op(&term, &["!=", "==", "="])
                .ok_or_else(|| format!("invalid field selector term {term:?}: no operator"))?;
            let key = term[..at].trim().to_string();
            let value = unescape(term[at + op.len()..].trim());
            if field_value(kind, &Value::Null, &key).is_none() {
                return Err(format!("field label not supported: {key}"));
            }
            Ok(Requirement {
                key,
                op: if op == "!=" { Op::Ne } else { Op::Eq },
                values: vec![value],
            })
        })
        .collect()
}

fn parse_label_selector(sel: &str) -> Result<Vec<Requirement>, String> {
    split_terms(sel)
        .into_iter()
        .map(|term| {
            let set = |key: &str, rest: &str, op: Op| -> Result<Requirement, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("invalid label selector {term:?}: expected (values)"))?;
                Ok(Requirement {
                    key: key.trim().to_string(),
                    op,
                    values: inner.split(',').map(|v| v.trim().to_string()).collect(),
                })
            };
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement {
                    key: key.trim().to_string(),
                    op: Op::NotExists,
                    values: vec![],
                }
            } else if let Some((key, rest)) = term.split_once(" notin ") {
                set(key, rest, Op::NotIn)?
            } else if let Some((key, rest)) = term.split_once(" in ") {
                set(key, rest, Op::In)?
            } else if let Some((at, op)) = find_op(&term, &["!=", "==", "="]) {
                Requirement {
                    key: term[..at].trim().to_string(),
                    op: if op == "!=" { Op::Ne } else { Op::Eq },
                    values: vec![term[at + op.len()..].trim().to_string()],
                }
            } else if term.contains(['<', '>']) {
                return Err(format!(
                    "the fixture does not support label selector {term:?}"
                ));
            } else {
                Requirement {
                    key: term.clone(),
                    op: Op::Exists,
                    values: vec![],
                }
            };
            if req.key.is_empty() {
                return Err(format!("invalid label selector {term:?}: empty key"));
            }
            Ok(req)
        })
        .collect()
}

/// The value a field selector compares, or None when the kind has no such selectable field (a
/// missing value in a supported field is "", as the real API's field sets have it).
fn field_value(kind: Kind, obj: &Value, field: &str) -> Option<String> {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let path: &[&str] = match (kind, field) {
        (_, "metadata.name") => &["metadata", "name"],
        (_, "metadata.namespace") => &["metadata", "namespace"],
        (Kind::Pod, "spec.hostNetwork") => {
            return Some(
                obj["spec"]["hostNetwork"]
                    .as_bool()
                    .unwrap_or(false)
                    .to_string(),
            )
        }
        (Kind::Pod, "spec.nodeName") => &["spec", "nodeName"],
        (Kind::ResourceSlice, "spec.nodeName") => &["spec", "nodeName"],
        (Kind::ResourceSlice, "spec.driver") => &["spec", "driver"],
        (Kind::Pod, "spec.restartPolicy") => &["spec", "restartPolicy"],
        (Kind::Pod, "spec.schedulerName") => &["spec", "schedulerName"],
        (Kind::Pod, "spec.serviceAccountName") => &["spec", "serviceAccountName"],
        (Kind::Pod, "status.phase") => &["status", "phase"],
        (Kind::Pod, "status.podIP") => &["status", "podIP"],
        (Kind::Pod, "status.nominatedNodeName") => &["status", "nominatedNodeName"],
        (Kind::Event, "source") => &["source", "component"],
        (Kind::Event, "reason") => &["reason"],
        (Kind::Event, "reportingComponent") => &["reportingComponent"],
        (Kind::Event, "type") => &["type"],
        (Kind::Event, f) => match f.strip_prefix("involvedObject.") {
            Some(
                sub @ ("kind" | "namespace" | "name" | "uid" | "apiVersion" | "resourceVersion"
                | "fieldPath"),
            ) => return Some(s(&obj["involvedObject"][sub])),
            _ => return None,
        },
        _ => return None,
    };
    Some(s(path.iter().fold(obj, |v: &Value, k| &v[*k])))
}

/// Which objects a list or watch is about: a kind in one namespace or in all, and its selectors.
#[derive(Clone)]
struct Scope {
    kind: Kind,
    ns: Option<String>,
}

#[derive(Clone)]
struct Filter {
    scope: Scope,
    fields: Vec<Requirement>,
    labels: Vec<Requirement>,
}

impl Filter {
    /// The selectors of a list or watch, or why they are a bad request.
    fn parse(scope: Scope, q: &BTreeMap<String, String>) -> Result<Filter, String> {
        let fields = match q.get("fieldSelector") {
            Some(s) => parse_field_selector(scope.kind, s)?,
            None => vec![],
        };
        let labels = match q.get("labelSelector") {
            Some(s) => parse_label_selector(s)?,
            None => vec![],
        };
        Ok(Filter {
            scope,
            fields,
            labels,
        })
    }

    fn selects(&self, obj: &Value) -> bool {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
        self.scope.ns.as_deref().is_none_or(|want| want == ns)
            && self
                .fields
                .iter()
                .all(|r| r.matches(field_value(self.scope.kind, obj, &r.key).as_deref()))
            && self
                .labels
                .iter()
                .all(|r| r.matches(obj["metadata"]["labels"][&r.key].as_str()))
    }

    fn has_selectors(&self) -> bool {
        !self.fields.is_empty() || !self.labels.is_empty()
    }

    /// What a watch with this filter sees of one change, if anything.
    fn watch_event(&self, c: &Change) -> Option<Value> {
        if c.kind != self.scope.kind {
            return None;
        }
        let now = self.selects(&c.object);
        let (kind_of_change, obj) = match (c.kind_of_change, &c.prev) {
            ("MODIFIED", Some(prev)) => match (self.selects(prev), now) {
                (true, true) => ("MODIFIED", c.object.clone()),
                (false, true) => ("ADDED", c.object.clone()),
                (true, false) => {
                    let mut gone = prev.clone();
                    gone["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                    ("DELETED", gone)
                }
                (false, false) => return None,
            },
            (t, _) if now => (t, c.object.clone()),
            _ => return None,
        };
        Some(json!({"type": kind_of_change, "object": obj}))
    }
}

/// The continue token: opaque to clients (base64 of JSON), as the real API's.
fn continue_token(rv: u64, key: &(Kind, String, String)) -> String {
    let raw = json!({"v": "fixture/v1", "rv": rv, "start": [key.1, key.2]}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_continue(token: &str) -> Option<(u64, String, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((
        v["rv"].as_u64()?,
        v["start"][0].as_str()?.to_string(),
        v["start"][1].as_str()?.to_string(),
    ))
}

fn list(app: &App, scope: Scope, q: &BTreeMap<String, String>) -> Response<Body> {
    let filter = match Filter::parse(scope, q) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let kind = filter.scope.kind;
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => return bad_request(format!("invalid limit {:?}", q["limit"])),
    };
    let st = app.state.lock().unwrap();
    let (list_rv, after) = if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
        let Some((rv, ns, name)) = parse_continue(token) else {
            return bad_request(format!("continue key is not valid: {token:?}"));
        };
        if rv < st.compacted {
            return respond(410, &expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into()));
        }
        (rv, Some((kind, ns, name)))
    } else {
        let rv = match q.get("resourceVersion").filter(|r| !r.is_empty()) {
            None => None,
            Some(r) => match r.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return bad_request(format!("invalid resourceVersion {r:?}")),
            },
        };
        match (rv, q.get("resourceVersionMatch").map(String::as_str)) {
            (Some(n), Some("Exact")) if n != st.rv => {
                return respond(
                    410,
                    &expired(format!(
                        "the fixture keeps no snapshots: resourceVersion {n} is not the current {}",
                        st.rv
                    )),
                );
            }
            (Some(n), _) if n > st.rv => {
                return status(
                    504,
                    "Timeout",
                    format!("Too large resource version: {n}, current: {}", st.rv),
                    None,
                    "",
                );
            }
            (None, Some(_)) => {
                return status(
                    422,
                    "Invalid",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
                    None,
                    "",
                );
            }
            _ => {}
        }
        (st.rv, None)
    };
    let start = match &after {
        Some(key) => std::ops::Bound::Excluded(key.clone()),
        None => std::ops::Bound::Included((kind, String::new(), String::new())),
    };
    let mut matching = st
        .objects
        .range((start, std::ops::Bound::Unbounded))
        .take_while(|((k, _, _), _)| *k == kind)
        .filter(|(_, o)| filter.selects(o));
    let mut items = vec![];
    let mut last = None;
    for (key, o) in matching.by_ref() {
        items.push(o.clone());
        last = Some(key);
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
    }
    let remaining = matching.count();
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if remaining > 0 {
        meta["continue"] = json!(continue_token(list_rv, last.unwrap()));
        // As the real API: the count is only known (and only given) for unfiltered lists.
        if !filter.has_selectors() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    respond(
        200,
        &json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.kind()),
                "metadata": meta, "items": items}),
    )
}

/// Counts a watch stream as live for exactly as long as its task runs.
struct LiveWatch(App);

impl Drop for LiveWatch {
    fn drop(&mut self) {
        self.0.live_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn line(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> String {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(&json!({"type": "BOOKMARK", "object":
        {"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": meta}}))
}

fn start_watch(app: &App, scope: Scope, q: &BTreeMap<String, String>) -> Response<Body> {
    let filter = match Filter::parse(scope, q) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let kind = filter.scope.kind;
    let flag = |k: &str| q.get(k).map(|v| v == "true" || v == "1");
    let bookmarks = flag("allowWatchBookmarks").unwrap_or(false);
    let send_initial = flag("sendInitialEvents");
    let version_match = q.get("resourceVersionMatch").map(String::as_str);
    let invalid = |m: &str| status(422, "Invalid", m.to_string(), None, "");
    match (send_initial, version_match) {
        (Some(_), m) if m != Some("NotOlderThan") => {
            return invalid("resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
        }
        (Some(true), _) if !bookmarks => {
            return invalid("allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true")
        }
        (None, Some(_)) => {
            return invalid("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided")
        }
        _ => {}
    }
    let since = match q.get("resourceVersion").filter(|r| !r.is_empty()) {
        None => 0,
        Some(r) => match r.parse::<u64>() {
            Ok(n) => n,
            Err(_) => return bad_request(format!("invalid resourceVersion {r:?}")),
        },
    };
    // "0" or none means "from any point, with the current state first" unless the client says
    // otherwise with sendInitialEvents.
    let initial_events = send_initial.unwrap_or(since == 0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(1800u64);

    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(64);
    let body = Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();

    // Everything a watch starts from is taken under one lock with its subscriptions, so no
    // change can fall between the snapshot and the first wake-up.
    let (mut changed, mut cut, initial, cursor) = {
        let st = app.state.lock().unwrap();
        let changed = st.changed.subscribe();
        let cut = st.cut.subscribe();
        if !initial_events && since != 0 && since < st.compacted {
            let gone = expired(format!(
                "too old resource version: {since} ({})",
                st.compacted
            ));
            let _ = tx.try_send(Ok(Bytes::from(line(
                &json!({"type": "ERROR", "object": gone}),
            ))));
            return body;
        }
        let initial: Vec<String> = if initial_events {
            st.objects
                .iter()
                .filter(|((k, _, _), o)| *k == kind && filter.selects(o))
                .map(|(_, o)| line(&json!({"type": "ADDED", "object": o})))
                .collect()
        } else {
            vec![]
        };
        // sendInitialEvents=false without a resourceVersion: from now on, nothing before.
        let cursor = if initial_events || since == 0 {
            st.rv
        } else {
            since
        };
        (changed, cut, initial, cursor)
    };

    app.live_watches.fetch_add(1, Ordering::SeqCst);
    let live = LiveWatch(app.clone());
    let app = app.clone();
    let initial_end = send_initial == Some(true);
    tokio::spawn(async move {
        let _live = live;
        let mut cursor = cursor;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let send = |chunk: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(chunk))).await.is_ok() }
        };
        for chunk in batch(initial) {
            if !send(chunk).await {
                return;
            }
        }
        if bookmarks && !send(bookmark(kind, cursor, initial_end)).await {
            return;
        }
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + app.bookmark_every,
            app.bookmark_every,
        );
        loop {
            let caught_up = {
                let st = app.state.lock().unwrap();
                if cursor < st.compacted {
                    Err(format!(
                        "too old resource version: {cursor} ({})",
                        st.compacted
                    ))
                } else {
                    let from = st.history.partition_point(|c| c.rv <= cursor);
                    let lines: Vec<String> = st
                        .history
                        .range(from..)
                        .filter_map(|c| filter.watch_event(c))
                        .map(|e| line(&e))
                        .collect();
                    cursor = cursor.max(st.rv);
                    Ok(lines)
                }
            };
            match caught_up {
                Ok(lines) => {
                    for chunk in batch(lines) {
                        if !send(chunk).await {
                            return;
                        }
                    }
                }
                Err(message) => {
                    let gone = json!({"type": "ERROR", "object": expired(message)});
                    send(line(&gone)).await;
                    return;
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = ticker.tick(), if bookmarks => {
                    if !send(bookmark(kind, cursor, false)).await {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = cut.changed() => {
                    let abort = cut.borrow().1;
                    if abort {
                        // An error in the body makes hyper drop the connection without the
                        // final chunk: the client sees a broken stream, not a clean end.
                        let _ = tx.send(Err(std::io::Error::other("cut by the fixture"))).await;
                    }
                    return;
                }
                _ = tx.closed() => return,
            }
        }
    });
    body
}

/// Watch lines joined into chunks of at most ~64 KiB: one chunk per event would make a bulk
/// change of 10,000 objects 10,000 writes.
fn batch(lines: Vec<String>) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    for l in lines {
        if !cur.is_empty() && cur.len() + l.len() > 64 * 1024 {
            out.push(std::mem::take(&mut cur));
        }
        cur.push_str(&l);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn get(app: &App, kind: Kind, ns: &str, name: &str) -> Response<Body> {
    let st = app.state.lock().unwrap();
    match st.objects.get(&(kind, ns.to_string(), name.to_string())) {
        Some(o) => respond(200, o),
        None => not_found(kind, name),
    }
}

fn stamp(st: &mut State, kind: Kind, ns: &str, obj: &mut Value) {
    st.rv += 1;
    obj["apiVersion"] = json!(kind.api_version());
    obj["kind"] = json!(kind.kind());
    if kind.cluster_scoped() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
    } else {
        obj["metadata"]["namespace"] = json!(ns);
    }
    obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
}

/// Appends a committed change (its resourceVersion is the current one) to the history.
fn record(
    st: &mut State,
    kind: Kind,
    kind_of_change: &'static str,
    object: Value,
    prev: Option<Value>,
) {
    st.history.push_back(Change {
        rv: st.rv,
        kind,
        kind_of_change,
        object,
        prev,
    });
    while st.history.len() > st.history_size {
        let old = st.history.pop_front().unwrap();
        st.compacted = old.rv;
    }
}

/// Wakes the watchers once a request's changes are all in the history.
fn publish(st: &State) {
    st.changed.send_replace(st.rv);
}

/// Names, stamps and stores a new object, or says why not.
fn create_locked(st: &mut State, kind: Kind, ns: &str, mut obj: Value) -> Result<Value, Value> {
    if !obj.is_object() || !(obj["metadata"].is_object() || obj["metadata"].is_null()) {
        return Err(status_body(
            400,
            "BadRequest",
            "the object is not a JSON object".into(),
            None,
            "",
        ));
    }
    st.uid += 1;
    let uid = st.uid;
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        let prefix = obj["metadata"]["generateName"]
            .as_str()
            .unwrap_or("obj-")
            .to_string();
        obj["metadata"]["name"] = json!(format!("{prefix}{uid:05x}"));
    }
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let key = (kind, ns.to_string(), name.clone());
    if st.objects.contains_key(&key) {
        return Err(status_body(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.plural()),
            Some(kind),
            &name,
        ));
    }
    if obj["metadata"]["uid"].is_null() {
        obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{uid:012x}"));
    }
    obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    stamp(st, kind, ns, &mut obj);
    st.objects.insert(key, obj.clone());
    record(st, kind, "ADDED", obj.clone(), None);
    Ok(obj)
}

fn create(app: &App, kind: Kind, ns: &str, body: &[u8]) -> Response<Body> {
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return bad_request("body is not JSON".into());
    };
    let mut st = app.state.lock().unwrap();
    let r = create_locked(&mut st, kind, ns, obj);
    publish(&st);
    match r {
        Ok(obj) => respond(201, &obj),
        Err(e) => respond_status(&e),
    }
}

/// `POST /fixture/objects`: all or none, so a benchmark's setup either is there or fails.
fn create_many(st: &mut State, body: &[u8]) -> Response<Body> {
    let Ok(Value::Array(objs)) = serde_json::from_slice::<Value>(body) else {
        return bad_request("body is not a JSON array".into());
    };
    let mut typed = Vec::with_capacity(objs.len());
    let mut names = std::collections::BTreeSet::new();
    for (i, o) in objs.into_iter().enumerate() {
        let Some(kind) = Kind::from_type(
            o["apiVersion"].as_str().unwrap_or(""),
            o["kind"].as_str().unwrap_or(""),
        ) else {
            return bad_request(format!(
                "object {i}: the fixture does not serve {}/{}",
                o["apiVersion"], o["kind"]
            ));
        };
        let ns = match o["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
        {
            _ if kind.cluster_scoped() => String::new(),
            Some(ns) => ns.to_string(),
            None => return bad_request(format!("object {i}: metadata.namespace is required")),
        };
        if let Some(name) = o["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
            let key = (kind, ns.clone(), name.to_string());
            if st.objects.contains_key(&key) || !names.insert(key) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("object {i}: {} \"{name}\" already exists", kind.plural()),
                    Some(kind),
                    name,
                );
            }
        }
        typed.push((kind, ns, o));
    }
    let n = typed.len();
    for (kind, ns, o) in typed {
        if let Err(e) = create_locked(st, kind, &ns, o) {
            publish(st);
            return respond_status(&e);
        }
    }
    publish(st);
    respond(201, &json!({"created": n}))
}

fn conflict(kind: Kind, name: &str) -> Response<Body> {
    status(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", kind.plural()),
        Some(kind),
        name,
    )
}

fn replace(
    app: &App,
    kind: Kind,
    ns: &str,
    name: &str,
    body: &[u8],
    status_only: bool,
) -> Response<Body> {
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return bad_request("body is not JSON".into());
    };
    let mut st = app.state.lock().unwrap();
    let key = (kind, ns.to_string(), name.to_string());
    let Some(current) = st.objects.get(&key).cloned() else {
        return not_found(kind, name);
    };
    let sent_rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !sent_rv.is_empty()
        && sent_rv
            != current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
    {
        return conflict(kind, name);
    }
    if status_only {
        // pods/status: metadata (annotations included, as the real API does) and status change;
        // spec stays as it was.
        obj["spec"] = current["spec"].clone();
    }
    if kind == Kind::ResourceClaim {
        if let Err(why) = valid_claim_status(&obj["status"]) {
            return status(
                422,
                "Invalid",
                format!("ResourceClaim.resource.k8s.io \"{name}\" is invalid: {why}"),
                Some(kind),
                name,
            );
        }
    }
    obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
    obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    stamp(&mut st, kind, ns, &mut obj);
    st.objects.insert(key, obj.clone());
    record(&mut st, kind, "MODIFIED", obj.clone(), Some(current));
    publish(&st);
    respond(200, &obj)
}

/// As the API server validates a claim's status (KEP-4817): every `status.devices` entry names an
/// allocated device, once, and its networkData fits the limits.
fn valid_claim_status(st: &Value) -> Result<(), String> {
    let results = st["allocation"]["devices"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for (i, d) in st["devices"].as_array().into_iter().flatten().enumerate() {
        let id = (
            d["driver"].as_str().unwrap_or(""),
            d["pool"].as_str().unwrap_or(""),
            d["device"].as_str().unwrap_or(""),
            d["shareID"].as_str().unwrap_or(""),
        );
        if !seen.insert(id) {
            return Err(format!("status.devices[{i}]: Duplicate value"));
        }
        if !results
            .iter()
            .any(|r| r["driver"] == id.0 && r["pool"] == id.1 && r["device"] == id.2)
        {
            return Err(format!(
                "status.devices[{i}]: Invalid value: device {}/{}/{} is not allocated",
                id.0, id.1, id.2
            ));
        }
        let nd = &d["networkData"];
        if nd["interfaceName"].as_str().is_some_and(|n| n.len() > 256)
            || nd["hardwareAddress"]
                .as_str()
                .is_some_and(|n| n.len() > 128)
            || nd["ips"].as_array().is_some_and(|a| {
                a.len() > 16
                    || a.iter()
                        .any(|ip| !ip.as_str().is_some_and(|s| s.contains('/')))
            })
        {
            return Err(format!("status.devices[{i}].networkData: Invalid value"));
        }
    }
    Ok(())
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn patch(
    app: &App,
    kind: Kind,
    ns: &str,
    name: &str,
    body: &[u8],
    status_only: bool,
) -> Response<Body> {
    let Ok(p) = serde_json::from_slice::<Value>(body) else {
        return bad_request("body is not JSON".into());
    };
    let mut st = app.state.lock().unwrap();
    let key = (kind, ns.to_string(), name.to_string());
    let Some(current) = st.objects.get(&key).cloned() else {
        return not_found(kind, name);
    };
    let mut obj = current.clone();
    merge(&mut obj, &p);
    // As the API server's storage: a UID in the result that is not the object's is a failed
    // precondition (the pod was recreated under the same name).
    let uid = current["metadata"]["uid"].as_str().unwrap_or("");
    if let Some(sent) = obj["metadata"]["uid"].as_str().filter(|u| *u != uid) {
        return status(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": StorageError: invalid object, Code: 4, Key: /registry/{}/{ns}/{name}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in precondition: {sent}, UID in object meta: {uid}", kind.plural(), kind.plural()),
            Some(kind),
            name,
        );
    }
    let sent_rv = p["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !sent_rv.is_empty() && Some(sent_rv) != current["metadata"]["resourceVersion"].as_str() {
        return conflict(kind, name);
    }
    if status_only {
        obj["spec"] = current["spec"].clone();
    }
    obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    stamp(&mut st, kind, ns, &mut obj);
    st.objects.insert(key, obj.clone());
    record(&mut st, kind, "MODIFIED", obj.clone(), Some(current));
    publish(&st);
    respond(200, &obj)
}

fn delete(app: &App, kind: Kind, ns: &str, name: &str) -> Response<Body> {
    let mut st = app.state.lock().unwrap();
    match st.objects.remove(&(kind, ns.to_string(), name.to_string())) {
        Some(mut o) => {
            st.rv += 1;
            o["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            record(&mut st, kind, "DELETED", o.clone(), None);
            publish(&st);
            respond(200, &o)
        }
        None => not_found(kind, name),
    }
}

/// A throwaway CA and a server certificate from it for the loopback names; the CA's PEM goes to
/// `dir/ca.crt` so clients verify the server as they would a cluster's.
fn tls_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(
        DnType::CommonName,
        "plexus-fixture-apiserver CA (a test fixture)",
    );
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ])
    .unwrap();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "plexus-fixture-apiserver");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();

    std::fs::create_dir_all(dir).unwrap();
    // Written whole under another name first: a reader never sees half a PEM.
    let tmp = dir.join(".ca.crt.tmp");
    std::fs::write(&tmp, ca_cert.pem()).unwrap();
    std::fs::rename(&tmp, dir.join("ca.crt")).unwrap();

    // The ring provider, explicitly: kube-rs in the same build uses ring, and a second provider
    // in the process would make rustls's default ambiguous.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One API connection over TCP, plain or TLS; cut (every read and write fails) when an outage
/// starts.
struct Conn {
    io: ConnIo,
    cut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

enum ConnIo {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl Conn {
    /// `rx` subscribed when the connection was accepted (before any TLS handshake).
    fn new(io: ConnIo, mut rx: watch::Receiver<u64>) -> Conn {
        Conn {
            io,
            cut: Some(Box::pin(async move {
                let _ = rx.changed().await;
            })),
        }
    }

    /// Whether an outage began since this connection was accepted (registering for the wake-up
    /// when not).
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.cut {
            None => true,
            Some(f) => {
                if f.as_mut().poll(cx).is_ready() {
                    self.cut = None;
                    true
                } else {
                    false
                }
            }
        }
    }
}

fn reset() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "the fixture API server went down",
    )
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        match &mut this.io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        match &mut this.io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        match &mut this.io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The API's TCP listener for axum: accepts (and, with TLS, finishes each handshake in a task of
/// its own, so one stalled or failed client never holds up the others); during an outage, resets
/// every connection as it is accepted.
struct ApiListener {
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

impl ApiListener {
    fn new(
        tcp: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        app: App,
    ) -> ApiListener {
        let local = tcp.local_addr().unwrap();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = tcp.accept().await else {
                    // Out of descriptors or the like: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let down = app
                    .down_until
                    .lock()
                    .unwrap()
                    .is_some_and(|t| std::time::Instant::now() < t);
                if down {
                    reset_now(stream);
                    continue;
                }
                let rx = app.outage.subscribe();
                let tx = tx.clone();
                match &acceptor {
                    None => {
                        let _ = tx.send((Conn::new(ConnIo::Plain(stream), rx), peer)).await;
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            let handshake = acceptor.accept(stream);
                            if let Ok(Ok(tls)) =
                                tokio::time::timeout(Duration::from_secs(10), handshake).await
                            {
                                let conn = Conn::new(ConnIo::Tls(Box::new(tls)), rx);
                                let _ = tx.send((conn, peer)).await;
                            }
                        });
                    }
                }
            }
        });
        ApiListener { ready, local }
    }
}

/// Close with a RST (SO_LINGER 0), as the peer of a process that died sees it.
fn reset_now(stream: tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

impl axum::serve::Listener for ApiListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.ready.recv().await.expect("the acceptor task ended")
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The fixture API server (not a kube-apiserver); see the file's documentation.
#[derive(clap::Parser)]
struct Args {
    /// TCP address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Also serve on this unix socket (the tests' control channel; always plain HTTP).
    #[arg(long)]
    unix: Option<String>,
    /// Require this bearer token.
    #[arg(long)]
    token: Option<String>,
    /// Serve the TCP listener over HTTPS, writing the generated CA's certificate to DIR/ca.crt.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,
    /// Period of watch bookmarks, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    bookmark_interval_ms: u64,
    /// Changes kept for watches to resume from.
    #[arg(long, default_value_t = 10_000)]
    history_size: usize,
    /// The resource.k8s.io version served (v1, v1beta2, v1beta1), or `none`.
    #[arg(long, default_value = "v1")]
    resource_version: String,
}

fn main() {
    let Args {
        listen,
        unix,
        token,
        tls_dir,
        bookmark_interval_ms,
        history_size,
        resource_version,
    } = clap::Parser::parse();
    let served = match resource_version.as_str() {
        "none" => None,
        v @ ("v1" | "v1beta2" | "v1beta1") => Some(&*v.to_string().leak()),
        other => panic!("--resource-version {other}: v1, v1beta2, v1beta1 or none"),
    };
    RESOURCE_VERSION.set(served).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let app: App = Arc::new(Shared {
            state: Mutex::new(State {
                objects: BTreeMap::new(),
                rv: 0,
                history: VecDeque::new(),
                history_size: history_size.max(1),
                compacted: 0,
                requests: vec![],
                faults: vec![],
                token,
                uid: 0,
                changed: watch::Sender::new(0),
                cut: watch::Sender::new((0, false)),
            }),
            live_watches: AtomicUsize::new(0),
            bookmark_every: Duration::from_millis(bookmark_interval_ms.max(1)),
            outage: watch::Sender::new(0),
            down_until: Mutex::new(None),
        });
        let router = |control| {
            axum::Router::new().fallback(handle).with_state(Ctx {
                app: app.clone(),
                control,
            })
        };
        let tcp = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        let addr = tcp.local_addr().unwrap();
        if let Some(path) = unix {
            let _ = std::fs::remove_file(&path);
            let ul = tokio::net::UnixListener::bind(&path).expect("bind unix");
            let r = router(true);
            tokio::spawn(async move { axum::serve(ul, r).await.unwrap() });
        }
        let router = router(false);
        let listener = ApiListener::new(tcp, tls_dir.as_deref().map(tls_config), app.clone());
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        // Announce only once every socket listens and ca.crt is written: the unix socket's file
        // appears at bind(2), before listen(2), so its existence alone is not readiness.
        println!("listening on {addr}");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        server.await.unwrap();
    });
}
