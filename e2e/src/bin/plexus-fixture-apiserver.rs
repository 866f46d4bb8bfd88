//! A fixture Kubernetes API server for plexus's e2e suite and benchmarks. It is NOT a Kubernetes
//! API server: it keeps pods, NetworkAttachmentDefinitions and events in memory and answers on
//! their real REST paths with real JSON — resourceVersions, metav1.Status errors, list and watch —
//! records every request, and injects faults on demand.
//!
//! Usage: `plexus-fixture-apiserver --listen 127.0.0.1:0 [--unix PATH] [--token T]`; prints
//! `listening on ADDR` on stdout. Control (on either listener):
//! - `GET /fixture/requests`, `DELETE /fixture/requests`: the request log;
//! - `POST /fixture/faults` `[{"method","pathPrefix","status","delayMs","times"}]`, `DELETE`;
//! - `PUT /fixture/token` (body: the new bearer token; empty: no auth).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Pod,
    Nad,
    Event,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Nad => "network-attachment-definitions",
            Kind::Event => "events",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Nad => "k8s.cni.cncf.io/v1",
            _ => "v1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Nad => "NetworkAttachmentDefinition",
            Kind::Event => "Event",
        }
    }
}

#[derive(Clone, Debug)]
struct Fault {
    method: Option<String>,
    path_prefix: String,
    status: Option<u16>,
    delay: Duration,
    times: Option<u64>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<(Kind, String, String), Value>,
    rv: u64,
    requests: Vec<Value>,
    faults: Vec<Fault>,
    token: Option<String>,
    uid: u64,
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<(Kind, String, Value)>,
}

type App = Arc<Shared>;

fn status(
    code: u16,
    reason: &str,
    message: String,
    kind: Option<Kind>,
    name: &str,
) -> Response<Body> {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code});
    if let Some(k) = kind {
        body["details"] = json!({"name": name, "kind": k.plural()});
    }
    respond(code, &body)
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

fn respond(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

/// (kind, namespace, name, subresource) from a REST path.
fn route(path: &str) -> Option<(Kind, String, Option<String>, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.as_slice() {
        ["api", "v1", "namespaces", rest @ ..] => rest,
        ["apis", "k8s.cni.cncf.io", "v1", "namespaces", rest @ ..] => rest,
        _ => return None,
    };
    let core = segs[0] == "api";
    let (ns, plural, name, sub) = match rest {
        [ns, plural] => (ns, plural, None, None),
        [ns, plural, name] => (ns, plural, Some(name.to_string()), None),
        [ns, plural, name, sub] => (ns, plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let kind = match (*plural, core) {
        ("pods", true) => Kind::Pod,
        ("events", true) => Kind::Event,
        ("network-attachment-definitions", false) => Kind::Nad,
        _ => return None,
    };
    Some((kind, ns.to_string(), name, sub))
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect()
}

async fn handle(
    app: axum::extract::State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let app = app.0;
    let path = uri.path().to_string();
    if let Some(control) = path.strip_prefix("/fixture/") {
        return fixture(&app, &method, control, &body);
    }
    // Record, then apply faults and auth.
    let (fault, token) = {
        let mut st = app.state.lock().unwrap();
        let write = matches!(
            method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        st.requests.push(json!({"method": method.as_str(), "path": path, "query": uri.query().unwrap_or(""), "write": write}));
        let hit = st.faults.iter_mut().find(|f| {
            path.starts_with(&f.path_prefix)
                && f.method.as_deref().is_none_or(|m| m == method.as_str())
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
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                429 => "TooManyRequests",
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
    if let Some(t) = token {
        let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {t}"));
        if !ok {
            return status(401, "Unauthorized", "Unauthorized".into(), None, "");
        }
    }
    let Some((kind, ns, name, sub)) = route(&path) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
            None,
            "",
        );
    };
    let q = query(&uri);
    match (method, name, sub.as_deref()) {
        (Method::GET, None, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(&app, kind, &ns, &q)
        }
        (Method::GET, None, None) => list(&app, kind, &ns, &q),
        (Method::GET, Some(n), None | Some("status")) => get(&app, kind, &ns, &n),
        (Method::POST, None, None) => create(&app, kind, &ns, &body),
        (Method::PUT, Some(n), None | Some("status")) => {
            replace(&app, kind, &ns, &n, &body, sub.is_some())
        }
        (Method::PATCH, Some(n), None | Some("status")) => {
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
        (Method::DELETE, Some(n), None) => delete(&app, kind, &ns, &n),
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{path}: method not allowed"),
            None,
            "",
        ),
    }
}

fn fixture(app: &App, method: &Method, control: &str, body: &[u8]) -> Response<Body> {
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
        _ => respond(404, &json!({"error": "unknown fixture call"})),
    }
}

fn field_match(obj: &Value, q: &BTreeMap<String, String>) -> bool {
    let Some(sel) = q.get("fieldSelector") else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some(("spec.nodeName", v)) => obj["spec"]["nodeName"].as_str() == Some(v),
        Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v),
        _ => true,
    })
}

fn list(app: &App, kind: Kind, ns: &str, q: &BTreeMap<String, String>) -> Response<Body> {
    let st = app.state.lock().unwrap();
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((k, n, _), o)| *k == kind && n == ns && field_match(o, q))
        .map(|(_, o)| o.clone())
        .collect();
    respond(
        200,
        &json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.kind()),
                         "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

fn watch(app: &App, kind: Kind, ns: &str, q: &BTreeMap<String, String>) -> Response<Body> {
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(300u64);
    let rx = app.events.subscribe();
    let initial: Vec<Bytes> = if since == 0 {
        let st = app.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|((k, n, _), o)| *k == kind && n == ns && field_match(o, q))
            .map(|(_, o)| Bytes::from(format!("{}\n", json!({"type": "ADDED", "object": o}))))
            .collect()
    } else {
        vec![]
    };
    let ns = ns.to_string();
    let q = q.clone();
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |ev| {
        let out = match ev {
            Ok((k, t, o))
                if k == kind
                    && o["metadata"]["namespace"].as_str() == Some(&ns)
                    && field_match(&o, &q) =>
            {
                Some(Ok::<Bytes, std::io::Error>(Bytes::from(format!(
                    "{}\n",
                    json!({"type": t, "object": o})
                ))))
            }
            _ => None,
        };
        std::future::ready(out)
    });
    let stream = futures_util::stream::iter(initial.into_iter().map(Ok)).chain(live);
    let stream = tokio_stream::StreamExt::timeout(stream, Duration::from_secs(timeout))
        .take_while(|r| std::future::ready(r.is_ok()))
        .map(|r| r.unwrap());
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
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
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
}

fn create(app: &App, kind: Kind, ns: &str, body: &[u8]) -> Response<Body> {
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "body is not JSON".into(), None, "");
    };
    let mut st = app.state.lock().unwrap();
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
        return status(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.plural()),
            Some(kind),
            &name,
        );
    }
    if obj["metadata"]["uid"].is_null() {
        obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{uid:012x}"));
    }
    obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    stamp(&mut st, kind, ns, &mut obj);
    st.objects.insert(key, obj.clone());
    let _ = app.events.send((kind, "ADDED".into(), obj.clone()));
    respond(201, &obj)
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
        return status(400, "BadRequest", "body is not JSON".into(), None, "");
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
        return status(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", kind.plural()),
            Some(kind),
            name,
        );
    }
    if status_only {
        // pods/status: metadata (annotations included, as the real API does) and status change;
        // spec stays as it was.
        obj["spec"] = current["spec"].clone();
    }
    obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
    obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    stamp(&mut st, kind, ns, &mut obj);
    st.objects.insert(key, obj.clone());
    let _ = app.events.send((kind, "MODIFIED".into(), obj.clone()));
    respond(200, &obj)
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
        return status(400, "BadRequest", "body is not JSON".into(), None, "");
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
        return status(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", kind.plural()),
            Some(kind),
            name,
        );
    }
    if status_only {
        obj["spec"] = current["spec"].clone();
    }
    obj["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    stamp(&mut st, kind, ns, &mut obj);
    st.objects.insert(key, obj.clone());
    let _ = app.events.send((kind, "MODIFIED".into(), obj.clone()));
    respond(200, &obj)
}

fn delete(app: &App, kind: Kind, ns: &str, name: &str) -> Response<Body> {
    let mut st = app.state.lock().unwrap();
    match st.objects.remove(&(kind, ns.to_string(), name.to_string())) {
        Some(mut o) => {
            st.rv += 1;
            o["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let _ = app.events.send((kind, "DELETED".into(), o.clone()));
            respond(200, &o)
        }
        None => not_found(kind, name),
    }
}

/// The fixture API server (not a kube-apiserver).
#[derive(clap::Parser)]
struct Args {
    /// TCP address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Also serve on this unix socket (the tests' control channel).
    #[arg(long)]
    unix: Option<String>,
    /// Require this bearer token.
    #[arg(long)]
    token: Option<String>,
}

fn main() {
    let Args {
        listen,
        unix,
        token,
    } = clap::Parser::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (tx, _) = broadcast::channel(1024);
        let app: App = Arc::new(Shared {
            state: Mutex::new(State {
                token,
                ..Default::default()
            }),
            events: tx,
        });
        let router = axum::Router::new().fallback(handle).with_state(app);
        let tcp = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        if let Some(path) = unix {
            let _ = std::fs::remove_file(&path);
            let ul = tokio::net::UnixListener::bind(&path).expect("bind unix");
            let r = router.clone();
            tokio::spawn(async move { axum::serve(ul, r).await.unwrap() });
        }
        // Announce only once both sockets listen: the unix socket's file appears at bind(2),
        // before listen(2), so its existence alone is not readiness.
        println!("listening on {}", tcp.local_addr().unwrap());
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        axum::serve(tcp, router).await.unwrap();
    });
}
