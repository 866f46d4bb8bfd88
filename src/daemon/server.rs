//! The daemon's socket API: Multus's shim↔daemon protocol (`pkg/server` of multus-cni), so
//! Multus's `multus-shim` works against plexus and plexus's shim against Multus. See
//! docs/daemon.md for the wire format.
//!
//! Each CNI call runs on a blocking thread (delegates, netns work), at most
//! `maxConcurrentRequests` at once, one at a time per container. A call whose client went away
//! (the shim killed by the runtime's timeout) is cancelled: its delegates are rolled back and it
//! makes no further API calls.

use super::config::DaemonConfig;
use super::metrics::Metrics;
use crate::cancel::Cancel;
use crate::cni::error::{CniError, Code};
use crate::cni::request::MAX_STDIN;
use crate::cni::{CniResult, Command, Request, Version};
use crate::config::NetConf;
use crate::engine::{Call, Engine};
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

/// What the shim sends: its environment and its stdin (base64, as Go marshals `[]byte`).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireRequest {
    #[serde(default)]
    pub env: HashMap<String, String>,
    #[serde(default, with = "base64_bytes")]
    pub config: Vec<u8>,
    /// `/delegate` only (multus-dynamic-networks-controller).
    #[serde(
        rename = "interfaceAttributes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_attributes: Option<InterfaceAttributes>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InterfaceAttributes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(rename = "cni-args", default)]
    pub cni_args: Option<Map<String, Value>>,
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Largest request body: the stdin config (4 MiB) in base64, and the environment.
pub const MAX_BODY: usize = (MAX_STDIN / 3 + 1) * 4 + (64 << 10);

/// The daemon's shared state.
pub struct Daemon {
    pub config: DaemonConfig,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Watches synced (or no cluster), and the generated config in place.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub shutting_down: AtomicBool,
    /// The watch cache, for `/plexus/v1/pod` (what `plexus inspect` asks).
    pub watch: Option<Arc<super::watch::WatchView>>,
    /// The hot-plug reconciler (`hotplug: true`).
    pub hotplug: Option<Arc<super::hotplug::Reconciler>>,
    /// Every `cniDir` a request used, besides the default one (where hot-plug looks).
    cni_dirs: Mutex<std::collections::BTreeSet<std::path::PathBuf>>,
    locks: Arc<ContainerLocks>,
    permits: Arc<Semaphore>,
}

impl Daemon {
    pub fn new(
        config: DaemonConfig,
        engine: Engine,
        metrics: Arc<Metrics>,
        ready: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Daemon {
        let permits = Arc::new(Semaphore::new(config.max_concurrent));
        let cni_dirs = Mutex::new(load_cni_dirs(&config));
        Daemon {
            config,
            engine,
            metrics,
            ready,
            shutting_down: AtomicBool::new(false),
            watch: None,
            hotplug: None,
            cni_dirs,
            locks: Arc::new(ContainerLocks::default()),
            permits,
        }
    }

    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::SeqCst) && (self.ready)()
    }

    /// The `cniDir` of a request that sets none: the daemon's `cniDir`, or the default.
    pub fn default_cni_dir(&self) -> std::path::PathBuf {
        self.config
            .merge(br#"{"cniVersion":"1.0.0","name":"plexus"}"#)
            .and_then(|b| NetConf::parse(&b))
            .map(|c| c.cni_dir)
            .unwrap_or_else(|_| crate::config::DEFAULT_CNI_DIR.into())
    }

    /// Where sandbox records may be: the default `cniDir` and every one a request used.
    pub fn cni_dirs(&self) -> Vec<std::path::PathBuf> {
        let mut dirs = self.cni_dirs.lock().expect("not poisoned").clone();
        dirs.insert(self.default_cni_dir());
        dirs.into_iter().collect()
    }
}

/// The router of the socket API.
pub fn router(daemon: Arc<Daemon>) -> axum::Router {
    use axum::routing::any;
    axum::Router::new()
        .route("/cni", any(cni))
        .route("/delegate", any(delegate))
        .route("/healthz", any(healthz))
        .route("/readyz", any(readyz))
        .route("/plexus/v1/pod", axum::routing::get(cached_pod))
        .route(
            "/plexus/v1/claims/withdraw",
            axum::routing::post(withdraw_claim),
        )
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(daemon)
}

type St = axum::extract::State<Arc<Daemon>>;

async fn healthz(st: St, method: Method) -> Response {
    let code = if matches!(method, Method::GET | Method::POST) {
        StatusCode::OK
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    st.metrics
        .observe_http("/healthz", code.as_u16(), method.as_str());
    code.into_response()
}

/// 200 while ready; 500 before the watches synced and from SIGTERM on (Multus's semantics).
async fn readyz(st: St, method: Method) -> Response {
    let code = if !matches!(method, Method::GET | Method::POST) {
        StatusCode::METHOD_NOT_ALLOWED
    } else if st.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    st.metrics
        .observe_http("/readyz", code.as_u16(), method.as_str());
    code.into_response()
}

#[derive(Deserialize)]
struct PodQuery {
    namespace: String,
    name: String,
}

/// What the watch cache holds of a pod (plexus's own endpoint, for `plexus inspect`):
/// `{"synced", "found", "uid", "nodeName", "annotations"}`.
async fn cached_pod(st: St, q: axum::extract::Query<PodQuery>) -> Response {
    let Some(w) = &st.watch else {
        return (StatusCode::NOT_FOUND, "no watch cache\n").into_response();
    };
    let pod = w.cached_pod(&q.namespace, &q.name);
    let body = serde_json::json!({
        "synced": w.synced(),
        "found": pod.is_some(),
        "uid": pod.as_ref().and_then(|p| p.metadata.uid.clone()),
        "nodeName": pod.as_ref().and_then(|p| p.spec.as_ref()?.node_name.clone()),
        "annotations": pod.as_ref().and_then(|p| p.metadata.annotations.clone()).unwrap_or_default(),
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A DEL the shim ran itself found network data plexus wrote into a DRA claim: take it out with
/// the daemon's credentials (the shim has none).
async fn withdraw_claim(st: St, body: Bytes) -> Response {
    use crate::k8s::Reporter;
    let Some(w) = st.watch.clone() else {
        return (StatusCode::NOT_FOUND, "no cluster\n").into_response();
    };
    let dev: crate::k8s::dra::ClaimDevice = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let r = tokio::task::spawn_blocking(move || w.withdraw_claim_device(&dev)).await;
    let code = match &r {
        Ok(Ok(())) => StatusCode::OK,
        _ => StatusCode::BAD_GATEWAY,
    };
    st.metrics
        .observe_http("/plexus/v1/claims/withdraw", code.as_u16(), "POST");
    match r {
        Ok(Ok(())) => (code, "{}").into_response(),
        Ok(Err(e)) => (code, format!("{e}\n")).into_response(),
        Err(e) => (code, format!("{e}\n")).into_response(),
    }
}

async fn not_found(st: St, method: Method) -> Response {
    st.metrics.observe_http("NotFound", 404, method.as_str());
    StatusCode::NOT_FOUND.into_response()
}

async fn cni(st: St, method: Method, body: Bytes) -> Response {
    let r = handle(st.0.clone(), method.clone(), body, false).await;
    st.metrics
        .observe_http("/cni", r.status().as_u16(), method.as_str());
    r
}

async fn delegate(st: St, method: Method, body: Bytes) -> Response {
    let r = handle(st.0.clone(), method.clone(), body, true).await;
    st.metrics
        .observe_http("/delegate", r.status().as_u16(), method.as_str());
    r
}

/// A CNI error as the wire carries it: 400 with the error object (Multus's `types.Error` JSON).
fn cni_error(e: &CniError, version: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/json")],
        e.to_json(version),
    )
        .into_response()
}

/// Cancels the call if the handler is dropped before it finished: hyper drops it when the
/// client's connection closes mid-request.
struct CancelOnDrop(Option<Cancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

async fn handle(d: Arc<Daemon>, method: Method, body: Bytes, delegate: bool) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n").into_response();
    }
    let started = Instant::now();
    let wire: WireRequest = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("could not read the CNI request: {e}\n"),
            )
                .into_response()
        }
    };
    let version = crate::plugin::sniff_version(&wire.config);
    let env = wire.env;
    let req = match Request::from_env(|k| env.get(k).cloned(), wire.config) {
        Ok(r) => r,
        Err(e) => return cni_error(&e, &version),
    };
    let verb = req.command();
    if verb == Command::Version {
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            crate::plugin::version_reply(&version),
        )
            .into_response();
    }
    // One call at a time per container, then one of the bounded permits.
    let guard = match (verb, req.container_id.clone()) {
        (Command::Add | Command::Del | Command::Check, Some(id)) => {
            Some(d.locks.acquire(&id).await)
        }
        _ => None,
    };
    let Ok(permit) = d.permits.clone().acquire_owned().await else {
        return cni_error(
            &CniError::new(Code::TRY_AGAIN_LATER, "the daemon is shutting down"),
            &version,
        );
    };
    let cancel = match Cancel::new() {
        Ok(c) => c,
        Err(e) => {
            return cni_error(
                &CniError::new(Code::IO, format!("cancellation pipe: {e}")),
                &version,
            )
        }
    };
    let mut on_drop = CancelOnDrop(Some(cancel.clone()));
    d.metrics.in_flight.inc();
    let worker = d.clone();
    let attributes = wire.interface_attributes;
    let job = tokio::task::spawn_blocking(move || {
        // Held until the call is over, rollback included, even if its client is gone.
        let _guard = guard;
        let _permit = permit;
        let out = if delegate {
            worker.delegate_blocking(&req, attributes.as_ref(), &cancel)
        } else {
            worker.serve_blocking(&req, &cancel)
        };
        (req, out)
    });
    let joined = job.await;
    on_drop.0 = None;
    d.metrics.in_flight.dec();
    let (req, out) = match joined {
        Ok(v) => v,
        Err(e) => {
            let err = CniError::new(
                Code::IO,
                format!("internal error serving {verb}: {e}; the daemon carries on"),
            );
            tracing::error!("{err}");
            return cni_error(&err, &version);
        }
    };
    let took = started.elapsed();
    let code = out.as_ref().err().map_or(0, |e| e.code.0);
    d.metrics.observe_request(&verb.to_string(), code, took);
    let networks = out
        .as_ref()
        .ok()
        .and_then(|o| o.as_ref())
        .map(|r| r.interfaces.len())
        .unwrap_or(0);
    match &out {
        Ok(_) => tracing::info!(
            verb = %verb, container = req.container_id(), who = %req.who(),
            interfaces = networks, took_ms = took.as_millis() as u64, "{verb} done"
        ),
        Err(e) => tracing::warn!(
            verb = %verb, container = req.container_id(), who = %req.who(),
            took_ms = took.as_millis() as u64, "{verb} failed: {e}"
        ),
    }
    match out {
        Ok(Some(result)) => match wire_result(&result, &version) {
            Ok(body) => {
                (StatusCode::OK, [("content-type", "application/json")], body).into_response()
            }
            Err(e) => cni_error(&e, &version),
        },
        Ok(None) => StatusCode::OK.into_response(),
        Err(e) => cni_error(&e, &version),
    }
}

/// `{"Result": …}` in the request's version, or 1.0.0 for older ones (Multus's shim reads a
/// 1.0.0 result and converts it to its own `cniVersion`).
fn wire_result(result: &CniResult, version: &str) -> Result<String, CniError> {
    let v: Version = version.parse().unwrap_or(Version::LATEST);
    let v = v.max(Version::V1_0_0);
    let mut out = Map::new();
    out.insert("Result".into(), result.to_value(v)?);
    Ok(Value::Object(out).to_string())
}

impl Daemon {
    /// One CNI call from a shim, on a blocking thread.
    fn serve_blocking(
        &self,
        req: &Request,
        cancel: &Cancel,
    ) -> Result<Option<CniResult>, CniError> {
        let merged = self.config.merge(&req.stdin);
        if req.command() == Command::Del {
            let conf = merged.and_then(|m| NetConf::parse(&m));
            if let Err(e) = &conf {
                tracing::warn!("DEL for {}: config unusable ({e}); deleting from the cache under the default cniDir", req.who());
            }
            return self.engine.del(req, conf.ok().as_ref()).map(|()| None);
        }
        req.require()?;
        let conf = NetConf::parse(&merged?)?;
        {
            let mut dirs = self.cni_dirs.lock().expect("not poisoned");
            if !dirs.contains(&conf.cni_dir) && dirs.len() < MAX_CNI_DIRS {
                dirs.insert(conf.cni_dir.clone());
                save_cni_dirs(&self.config, &dirs);
            }
        }
        let out = self.engine.run(&Call {
            req,
            conf: &conf,
            cancel,
        });
        if let (Ok(Some(_)), Some(h), Some(pod)) =
            (&out, &self.hotplug, crate::k8s::PodRef::from_request(req))
        {
            // An annotation change while this ADD ran is reconciled now.
            h.enqueue_after_add(
                &pod.namespace,
                &pod.name,
                super::hotplug::RecordAt {
                    dir: conf.cni_dir.clone(),
                    network: conf.cache_network().to_string(),
                    container_id: req.container_id().to_string(),
                    ifname: req.ifname().to_string(),
                },
            );
        }
        out
    }

    /// `/delegate`: see the hot-plug module.
    fn delegate_blocking(
        &self,
        req: &Request,
        attributes: Option<&InterfaceAttributes>,
        cancel: &Cancel,
    ) -> Result<Option<CniResult>, CniError> {
        super::hotplug::delegate(self, req, attributes, &req.stdin, cancel)
    }
}

/// At most this many `cniDir`s are remembered (a node normally has one).
const MAX_CNI_DIRS: usize = 64;

/// Where the daemon remembers the `cniDir`s requests used, so that a restarted daemon finds
/// every sandbox record for hot-plug.
fn cni_dirs_file(config: &DaemonConfig) -> std::path::PathBuf {
    config.socket_dir.join("plexus-cni-dirs.json")
}

fn load_cni_dirs(config: &DaemonConfig) -> std::collections::BTreeSet<std::path::PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = cni_dirs_file(config);
    let read = || -> std::io::Result<Vec<u8>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)?;
        let mut b = Vec::new();
        f.take(64 << 10).read_to_end(&mut b)?;
        Ok(b)
    };
    match read() {
        Ok(b) => serde_json::from_slice::<Vec<std::path::PathBuf>>(&b)
            .map(|v| v.into_iter().take(MAX_CNI_DIRS).collect())
            .unwrap_or_else(|e| {
                tracing::warn!("{}: {e}; ignored", path.display());
                Default::default()
            }),
        Err(_) => Default::default(),
    }
}

fn save_cni_dirs(config: &DaemonConfig, dirs: &std::collections::BTreeSet<std::path::PathBuf>) {
    let path = cni_dirs_file(config);
    let body = serde_json::to_vec(dirs).expect("serializes");
    if let Err(e) = super::autoconf::write_atomic(&path, &body) {
        tracing::warn!("remembering the cniDirs in {}: {e}", path.display());
    }
}

/// One async mutex per container with a call in flight; entries go when nobody holds or waits.
#[derive(Default)]
struct ContainerLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

struct ContainerGuard {
    locks: Arc<ContainerLocks>,
    id: String,
    entry: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl ContainerLocks {
    async fn acquire(self: &Arc<Self>, id: &str) -> ContainerGuard {
        let entry = self
            .0
            .lock()
            .expect("not poisoned")
            .entry(id.to_string())
            .or_default()
            .clone();
        let guard = entry.clone().lock_owned().await;
        ContainerGuard {
            locks: self.clone(),
            id: id.to_string(),
            entry,
            guard: Some(guard),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.0.lock().expect("not poisoned");
        // The map's reference and ours: nobody else waits for this container.
        if Arc::strong_count(&self.entry) == 2 {
            map.remove(&self.id);
        }
    }
}

/// A unix listener that accepts at most `limit` connections at once (`connectionLimit`).
pub struct Limited {
    pub inner: tokio::net::UnixListener,
    pub permits: Option<Arc<Semaphore>>,
}

pub struct LimitedStream {
    io: tokio::net::UnixStream,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl axum::serve::Listener for Limited {
    type Io = LimitedStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match &self.permits {
            Some(p) => p.clone().acquire_owned().await.ok(),
            None => None,
        };
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    return (
                        LimitedStream {
                            io,
                            _permit: permit,
                        },
                        addr,
                    )
                }
                Err(e) => {
                    tracing::warn!("accepting on the socket: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for LimitedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_multus() {
        // What Multus's multus-shim sends (pkg/server/api/types.go).
        let body = br#"{"env":{"CNI_COMMAND":"ADD","CNI_CONTAINERID":"c1","CNI_NETNS":"/n","CNI_IFNAME":"eth0","CNI_ARGS":"K8S_POD_NAME=p","PATH":"/bin"},"config":"eyJjbmlWZXJzaW9uIjoiMS4wLjAifQ=="}"#;
        let w: WireRequest = serde_json::from_slice(body).unwrap();
        assert_eq!(w.config, br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(w.env["CNI_COMMAND"], "ADD");
        assert!(w.interface_attributes.is_none());
        let back = serde_json::to_value(&w).unwrap();
        assert_eq!(back["config"], "eyJjbmlWZXJzaW9uIjoiMS4wLjAifQ==");
        let d: WireRequest = serde_json::from_str(
            r#"{"env":{},"config":"","interfaceAttributes":{"ips":["10.0.0.5/24"],"mac":"02:00:00:00:00:01","cni-args":null}}"#,
        )
        .unwrap();
        assert_eq!(d.interface_attributes.unwrap().ips, ["10.0.0.5/24"]);
    }

    #[test]
    fn results_go_out_as_1_0_0_or_newer() {
        let r: CniResult = CniResult::from_value(
            serde_json::json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mtu": 1400}],
                "ips": [{"address": "10.0.0.2/24", "interface": 0}]}),
            Version::V1_1_0,
        )
        .unwrap()
        .0;
        let old: Value = serde_json::from_str(&wire_result(&r, "0.3.1").unwrap()).unwrap();
        assert_eq!(old["Result"]["cniVersion"], "1.0.0");
        let new: Value = serde_json::from_str(&wire_result(&r, "1.1.0").unwrap()).unwrap();
        assert_eq!(new["Result"]["cniVersion"], "1.1.0");
        assert_eq!(new["Result"]["interfaces"][0]["mtu"], 1400);
    }

    #[tokio::test]
    async fn one_call_at_a_time_per_container_and_entries_go_away() {
        let locks = Arc::new(ContainerLocks::default());
        let g = locks.acquire("c1").await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move { l2.acquire("c1").await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "second call for c1 waits");
        let other = locks.acquire("c2").await;
        drop(other);
        drop(g);
        let g2 = waiter.await.unwrap();
        drop(g2);
        assert!(locks.0.lock().unwrap().is_empty());
    }
}
