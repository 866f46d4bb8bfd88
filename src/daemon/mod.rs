//! `plexus daemon`: the node agent, a drop-in for Multus thick. It serves Multus's shim↔daemon
//! protocol on `<socketDir>/multus.sock`, reads pods and NADs from a watch cache, installs the
//! runtime's CNI config, and exposes health and Prometheus metrics. Every CNI call goes through
//! the same engine as the exec'd plugin (see docs/architecture.md and docs/daemon.md).

pub mod autoconf;
pub mod config;
pub mod hotplug;
pub mod metrics;
pub mod server;
pub mod watch;

use crate::chain::ExecObserver;
use crate::config::NetConf;
use crate::engine::{Cluster, Engine};
use crate::k8s::client::{client_config, ApiView, Blocking, Credentials};
use crate::netns::Kernel;
use config::DaemonConfig;
use metrics::Metrics;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// The daemon config: a Multus daemon-config.json (see docs/daemon.md).
    #[arg(long, default_value = "/etc/cni/net.d/multus.d/daemon-config.json")]
    pub config: PathBuf,
}

/// The node's name: `MULTUS_NODE_NAME` (Multus's) or `PLEXUS_NODE_NAME`.
fn node_name() -> Result<String, String> {
    ["MULTUS_NODE_NAME", "PLEXUS_NODE_NAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .ok_or_else(|| {
            "neither MULTUS_NODE_NAME nor PLEXUS_NODE_NAME is set: the daemon must know its node (set it from spec.nodeName with the downward API)".to_string()
        })
}

/// Run the daemon until SIGTERM/SIGINT. Errors are for a daemon that cannot start.
pub fn run(args: &DaemonArgs) -> Result<(), String> {
    let config = DaemonConfig::load(&args.config)?;
    crate::logging::init(
        Some(config.log_level.as_deref().unwrap_or("info")),
        config.log_file.as_deref(),
        config.log_to_stderr,
    );
    for w in &config.warnings {
        tracing::warn!("{}: {w}", args.config.display());
    }
    let node = node_name()?;
    let creds = match &config.kubeconfig {
        Some(k) => Credentials::Kubeconfig(k.clone()),
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Credentials::InCluster,
        None => {
            return Err(
                "no API credentials: set \"kubeconfig\" in the daemon config, or run in a pod (KUBERNETES_SERVICE_HOST)".into(),
            )
        }
    };
    // The plugin keys, as a config: the API timeouts and the kubelet's paths.
    let mut api_keys = config.plugin_keys.clone();
    api_keys.insert("cniVersion".into(), "1.0.0".into());
    let api_conf =
        NetConf::parse(&serde_json::to_vec(&api_keys).expect("serializes")).map_err(|e| e.msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.max_concurrent + 16)
        .thread_name("plexus-daemon")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(serve(config, node, creds, api_conf))
}

async fn serve(
    config: DaemonConfig,
    node: String,
    creds: Credentials,
    api_conf: NetConf,
) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new());
    let kube_config = client_config(&creds, api_conf.api_connect_timeout, api_conf.api_timeout)
        .await
        .map_err(|e| e.msg)?;
    let client = kube::client::ClientBuilder::try_from(kube_config)
        .map_err(|e| format!("API client: {e}"))?
        .with_layer(&ApiMetricsLayer(metrics.clone()))
        .build();
    let api = ApiView::new(
        Blocking::Shared(tokio::runtime::Handle::current()),
        client.clone(),
    );
    let reconciler = config.hotplug.then(hotplug::Reconciler::new);
    let on_pod = reconciler.clone().map(|r| {
        Arc::new(move |ev: watch::PodEvent<'_>| match ev {
            watch::PodEvent::Applied(p) => r.enqueue(p),
            watch::PodEvent::Deleted(p) => r.forget(p),
            watch::PodEvent::Synced(now) => r.retain(now),
        }) as watch::PodHook
    });
    let view = watch::WatchView::start(
        client.clone(),
        api,
        &node,
        config.pod_wait,
        metrics.clone(),
        on_pod,
    );
    let m = metrics.clone();
    let engine = Engine {
        observer: Some(ExecObserver(Arc::new(move |plugin, verb, took| {
            m.observe_delegate(plugin, &verb.to_string(), took)
        }))),
        chroot: config.chroot_dir.clone(),
        ..Engine::new(Some(view.clone() as Arc<dyn Cluster>), Arc::new(Kernel))
    };
    let auto = autoconf::AutoConfig::new(config.clone());
    let installed = Arc::new(AtomicBool::new(!auto.enabled()));
    let ready = {
        let (view, installed) = (view.clone(), installed.clone());
        Arc::new(move || view.synced() && installed.load(Ordering::SeqCst))
    };
    let mut daemon = server::Daemon::new(config.clone(), engine, metrics.clone(), ready);
    daemon.watch = Some(view.clone());
    daemon.hotplug = reconciler.clone();
    let daemon = Arc::new(daemon);

    let listener = bind(&config)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let auto_task = auto.enabled().then(|| {
        let auto = auto.clone();
        let installed = installed.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move { auto.run(installed, stop).await })
    });
    let hotplug_task = reconciler.map(|r| tokio::spawn(r.run(daemon.clone(), stop_rx.clone())));
    if let Some(port) = config.metrics_port {
        let d = daemon.clone();
        let tcp = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|e| format!("metricsPort {port}: {e}"))?;
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let app = metrics_router(d);
            let _ = axum::serve(tcp, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
        });
    }
    tracing::info!(
        "plexus daemon on node {node}: serving {}{}",
        config.socket_path().display(),
        config
            .metrics_port
            .map(|p| format!(", metrics and health on :{p}"))
            .unwrap_or_default()
    );

    let d = daemon.clone();
    let mut stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, server::router(d))
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await
    });
    let sig = shutdown_signal().await;
    tracing::info!(
        "{sig}: no longer ready; draining calls in flight (up to {:?})",
        config.shutdown_grace
    );
    daemon.shutting_down.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(config.shutdown_grace, server)
        .await
        .is_err()
    {
        tracing::warn!("calls still in flight after {:?}; exiting anyway (their records stay in the cache for DEL)", config.shutdown_grace);
    }
    if let Some(t) = hotplug_task {
        // The reconciler stops between pods; one in progress finishes (or, past the grace, is
        // rolled back by the next daemon from its pending record).
        let _ = tokio::time::timeout(config.shutdown_grace, t).await;
    }
    if let Some(t) = auto_task {
        let _ = t.await;
    }
    if config.cleanup_config_on_exit && auto.enabled() {
        auto.remove();
    }
    let _ = std::fs::remove_file(config.socket_path());
    tracing::info!("plexus daemon stopped");
    Ok(())
}

/// The socket: its directory 0700 (made if missing), the socket 0600, a stale one replaced.
fn bind(config: &DaemonConfig) -> Result<server::Limited, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &config.socket_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = config.socket_path();
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("removing the old socket {}: {e}", path.display()))
        }
        _ => {}
    }
    let inner = tokio::net::UnixListener::bind(&path)
        .map_err(|e| format!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(server::Limited {
        inner,
        permits: config
            .connection_limit
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
    })
}

/// `/metrics`, `/healthz` and `/readyz` on the metrics port (for Prometheus and the kubelet's
/// probes, which cannot reach the unix socket).
fn metrics_router(d: Arc<server::Daemon>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = d.metrics.clone();
    let hotplug = d.hotplug.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                if let Some(r) = &hotplug {
                    m.hotplug_tracked.set(r.tracked() as i64);
                }
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route(
            "/readyz",
            get(move || {
                let d = d.clone();
                async move {
                    if d.is_ready() {
                        StatusCode::OK
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }),
        )
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Counts every API request by method and status code.
#[derive(Clone)]
struct ApiMetricsLayer(Arc<Metrics>);

#[derive(Clone)]
struct ApiMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for ApiMetricsLayer {
    type Service = ApiMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for ApiMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.method().to_string();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            let code = out.as_ref().map_or(0, |r| r.status().as_u16());
            metrics.observe_api(&method, code);
            out
        })
    }
}

#[cfg(test)]
mod tests;
