//! Direct API access for the short-lived plugin process: a kube client on a current-thread tokio
//! runtime, with explicit timeouts, used through blocking calls.

use super::{ClusterView, NetworkAttachmentDefinition, Reporter};
use crate::cni::error::{CniError, Code};
use crate::config::NetConf;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::time::Duration;

/// How often, and how long apart, a pod that is not visible yet is looked up again.
const POD_RETRIES: u32 = 4;
const POD_RETRY_DELAY: Duration = Duration::from_millis(250);
/// Conflicting status writes are retried this many times, re-reading the pod each time.
const STATUS_RETRIES: u32 = 5;

pub struct ApiView {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    /// Where the API is, for messages.
    server: String,
    /// The kubelet's device-plugin checkpoint, for device IDs.
    checkpoint: std::path::PathBuf,
    /// The kubelet's PodResources socket, tried first.
    pod_resources: std::path::PathBuf,
    timeout: Duration,
}

/// Map a kube error to a CNI error: transient failures are "try again later" (11).
pub fn api_error(what: &str, e: kube::Error) -> CniError {
    match &e {
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => CniError::new(
            Code::TRY_AGAIN_LATER,
            format!(
                "{what}: API server answered {} {}: {}",
                s.code, s.reason, s.message
            ),
        ),
        kube::Error::Api(s) => CniError::new(
            Code::KUBE_API,
            format!(
                "{what}: API server answered {} {}: {}",
                s.code, s.reason, s.message
            ),
        ),
        _ => CniError::new(Code::TRY_AGAIN_LATER, format!("{what}: {e}")),
    }
}

impl ApiView {
    /// Connect as the config says: `kubeconfig` if set; else in-cluster when the service env is
    /// there; else `None` (no Kubernetes: only configured delegates are attached).
    pub fn connect(conf: &NetConf) -> Result<Option<ApiView>, CniError> {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            && std::env::var_os("KUBERNETES_SERVICE_PORT").is_some();
        if conf.kubeconfig.is_none() && !in_cluster {
            return Ok(None);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                CniError::new(Code::IO, format!("starting the API client runtime: {e}"))
            })?;
        let mut config = match &conf.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    CniError::new(
                        Code::INVALID_CONFIG,
                        format!("reading kubeconfig {}: {e}", path.display()),
                    )
                })?;
                rt.block_on(kube::Config::from_custom_kubeconfig(
                    kc,
                    &KubeConfigOptions::default(),
                ))
                .map_err(|e| {
                    CniError::new(
                        Code::INVALID_CONFIG,
                        format!("kubeconfig {}: {e}", path.display()),
                    )
                })?
            }
            None => kube::Config::incluster().map_err(|e| {
                CniError::new(Code::INVALID_CONFIG, format!("in-cluster API config: {e}"))
            })?,
        };
        // A plain-http API server never uses TLS: without this, kube would load the platform's
        // whole CA bundle on every plugin run for nothing (several ms per ADD).
        if config.cluster_url.scheme_str() == Some("http") && config.root_cert.is_none() {
            config.root_cert = Some(vec![]);
        }
        config.connect_timeout = Some(conf.api_connect_timeout);
        config.read_timeout = Some(conf.api_timeout);
        config.write_timeout = Some(conf.api_timeout);
        let server = config.cluster_url.to_string();
        let client = {
            let _guard = rt.enter();
            kube::Client::try_from(config)
                .map_err(|e| CniError::new(Code::INVALID_CONFIG, format!("API client: {e}")))?
        };
        Ok(Some(ApiView {
            rt,
            client,
            server,
            checkpoint: conf.device_checkpoint_file.clone(),
            pod_resources: conf.pod_resources_socket.clone(),
            timeout: conf.api_timeout,
        }))
    }

    /// A view over an existing client (tests use a mock service), on its own runtime.
    pub fn with_client(
        rt: tokio::runtime::Runtime,
        make: impl FnOnce() -> kube::Client,
    ) -> ApiView {
        let client = {
            let _guard = rt.enter();
            make()
        };
        ApiView {
            rt,
            client,
            server: "mock".into(),
            checkpoint: super::devices::DEFAULT_CHECKPOINT.into(),
            pod_resources: super::devices::DEFAULT_POD_RESOURCES_SOCKET.into(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Run a future on this view's runtime (tests drive mock servers with it).
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(
        &self,
        f: F,
    ) -> tokio::task::JoinHandle<()> {
        self.rt.spawn(f)
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }
}

impl ClusterView for ApiView {
    /// The pod, retried briefly while it is not visible yet (the API may lag the kubelet).
    fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, CniError> {
        let api = self.pods(namespace);
        for attempt in 0..=POD_RETRIES {
            let got = self
                .rt
                .block_on(api.get_opt(name))
                .map_err(|e| api_error(&format!("getting pod {namespace}/{name}"), e))?;
            if got.is_some() || attempt == POD_RETRIES {
                return Ok(got);
            }
            std::thread::sleep(POD_RETRY_DELAY);
        }
        unreachable!()
    }

    fn nad(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<NetworkAttachmentDefinition>, CniError> {
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(self.client.clone(), namespace);
        self.rt.block_on(api.get_opt(name)).map_err(|e| {
            api_error(
                &format!("getting NetworkAttachmentDefinition {namespace}/{name}"),
                e,
            )
        })
    }

    fn pod_devices(&self, pod: &Pod) -> Result<super::devices::PodDevices, CniError> {
        // The kubelet's PodResources API when its socket is there; the checkpoint file otherwise.
        if self.pod_resources.exists() {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("");
            let name = pod.metadata.name.as_deref().unwrap_or("");
            return self.rt.block_on(super::devices::from_pod_resources(
                &self.pod_resources,
                ns,
                name,
                self.timeout,
            ));
        }
        super::devices::read_checkpoint(&self.checkpoint, super::devices::checkpoint_uid(pod))
    }
}

impl Reporter for ApiView {
    /// Write the network-status annotation through `pods/status` (the RBAC Multus uses), with the
    /// pod's resourceVersion; on a conflict, read the pod again and retry.
    fn set_network_status(&self, pod: &Pod, value: &str) -> Result<(), CniError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api = self.pods(&ns);
        let mut current = pod.clone();
        for attempt in 0..STATUS_RETRIES {
            current
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    super::NETWORK_STATUS_ANNOTATION.to_string(),
                    value.to_string(),
                );
            match self
                .rt
                .block_on(api.replace_status(&name, &PostParams::default(), &current))
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt + 1 < STATUS_RETRIES => {
                    tracing::debug!(
                        "network-status of pod {ns}/{name}: conflict, re-reading the pod"
                    );
                    current = self
                        .rt
                        .block_on(api.get(&name))
                        .map_err(|e| api_error(&format!("re-reading pod {ns}/{name}"), e))?;
                }
                Err(e) => {
                    return Err(api_error(
                        &format!("writing network-status of pod {ns}/{name}"),
                        e,
                    ))
                }
            }
        }
        Err(CniError::new(
            Code::TRY_AGAIN_LATER,
            format!("writing network-status of pod {ns}/{name}: conflicts kept coming"),
        ))
    }

    /// Best-effort: an Event that cannot be written is logged, never fails the pod.
    fn event(&self, pod: &Pod, warning: bool, reason: &str, message: &str) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = jiff_now();
        let event: Result<Event, _> = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
                               "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
            "reason": reason,
            "message": message,
            "type": if warning { "Warning" } else { "Normal" },
            "source": {"component": "plexus", "host": hostname()},
            "reportingComponent": "plexus",
            "reportingInstance": hostname(),
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }));
        let Ok(event) = event else { return };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = self.rt.block_on(api.create(&PostParams::default(), &event)) {
            tracing::warn!("event {reason} for pod {ns}/{name}: {e}");
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// RFC 3339 UTC, seconds precision, as Kubernetes writes timestamps.
fn jiff_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};
    use tower_test::mock::Handle;

    type Mock = Handle<Request<Body>, Response<Body>>;

    fn view() -> (ApiView, Mock) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (
            ApiView::with_client(rt, move || kube::Client::new(svc, "default")),
            handle,
        )
    }

    fn status(code: u16, reason: &str) -> Response<Body> {
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": format!("{reason} here"), "reason": reason, "code": code});
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn ok(v: Value) -> Response<Body> {
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap()
    }

    fn pod_json(rv: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns1", "uid": "u1",
               "resourceVersion": rv, "annotations": {"a": "b"}}})
    }

    /// Serve `answers` in order, recording "METHOD path" of each request (and PUT bodies).
    fn serve(
        view: &ApiView,
        mut handle: Mock,
        answers: Vec<Response<Body>>,
    ) -> std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>> {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        view.spawn(async move {
            for answer in answers {
                let Some((req, send)) = handle.next_request().await else {
                    return;
                };
                let line = format!("{} {}", req.method(), req.uri().path());
                let body = req.into_body().collect_bytes().await.unwrap();
                seen.lock()
                    .unwrap()
                    .push((line, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                send.send_response(answer);
            }
        });
        log
    }

    #[test]
    fn pod_not_yet_visible_is_retried_briefly() {
        let (view, handle) = view();
        let log = serve(
            &view,
            handle,
            vec![
                status(404, "NotFound"),
                status(404, "NotFound"),
                ok(pod_json("5")),
            ],
        );
        let pod = view.pod("ns1", "p").unwrap().unwrap();
        assert_eq!(pod.metadata.uid.as_deref(), Some("u1"));
        let calls: Vec<String> = log.lock().unwrap().iter().map(|(l, _)| l.clone()).collect();
        assert_eq!(calls, vec!["GET /api/v1/namespaces/ns1/pods/p"; 3]);
    }

    #[test]
    fn pod_gone_is_none_after_bounded_retries() {
        let (view, handle) = view();
        let log = serve(
            &view,
            handle,
            (0..=POD_RETRIES).map(|_| status(404, "NotFound")).collect(),
        );
        let t = std::time::Instant::now();
        assert!(view.pod("ns1", "p").unwrap().is_none());
        assert_eq!(log.lock().unwrap().len(), POD_RETRIES as usize + 1);
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn nad_path_and_error_codes() {
        let (view, handle) = view();
        let nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                         "metadata": {"name": "mv", "namespace": "ns1"}, "spec": {"config": "{}"}});
        let log = serve(
            &view,
            handle,
            vec![
                ok(nad),
                status(404, "NotFound"),
                status(500, "InternalError"),
                status(401, "Unauthorized"),
            ],
        );
        assert_eq!(view.nad("ns1", "mv").unwrap().unwrap().spec.config, "{}");
        assert!(view.nad("ns1", "gone").unwrap().is_none());
        let e = view.nad("ns1", "x").unwrap_err();
        assert_eq!(e.code, Code::TRY_AGAIN_LATER);
        assert!(
            e.msg.contains("ns1/x") && e.msg.contains("500"),
            "{}",
            e.msg
        );
        let e = view.nad("ns1", "y").unwrap_err();
        assert_eq!(e.code, Code::KUBE_API);
        assert!(e.msg.contains("401"), "{}", e.msg);
        assert_eq!(
            log.lock().unwrap()[0].0,
            "GET /apis/k8s.cni.cncf.io/v1/namespaces/ns1/network-attachment-definitions/mv"
        );
    }

    #[test]
    fn network_status_goes_through_pods_status_with_conflict_retry() {
        let (view, handle) = view();
        let log = serve(
            &view,
            handle,
            vec![
                status(409, "Conflict"),
                ok(pod_json("7")),
                ok(pod_json("8")),
            ],
        );
        let pod: Pod = serde_json::from_value(pod_json("5")).unwrap();
        view.set_network_status(&pod, r#"[{"name":"x"}]"#).unwrap();
        let log = log.lock().unwrap();
        let calls: Vec<&str> = log.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            calls,
            [
                "PUT /api/v1/namespaces/ns1/pods/p/status",
                "GET /api/v1/namespaces/ns1/pods/p",
                "PUT /api/v1/namespaces/ns1/pods/p/status"
            ]
        );
        // The first write carried the resourceVersion read; the retry the fresh one.
        assert_eq!(log[0].1["metadata"]["resourceVersion"], "5");
        assert_eq!(log[2].1["metadata"]["resourceVersion"], "7");
        assert_eq!(
            log[2].1["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"],
            r#"[{"name":"x"}]"#
        );
        assert_eq!(
            log[2].1["metadata"]["annotations"]["a"], "b",
            "other annotations kept"
        );
    }

    #[test]
    fn events_name_the_pod() {
        let (view, handle) = view();
        let log = serve(
            &view,
            handle,
            vec![ok(
                json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}}),
            )],
        );
        let pod: Pod = serde_json::from_value(pod_json("5")).unwrap();
        view.event(&pod, false, "AddedInterface", "Added interfaces: net1");
        let log = log.lock().unwrap();
        assert_eq!(log[0].0, "POST /api/v1/namespaces/ns1/events");
        let e = &log[0].1;
        assert_eq!(e["involvedObject"]["name"], "p");
        assert_eq!(e["involvedObject"]["uid"], "u1");
        assert_eq!(e["reason"], "AddedInterface");
        assert_eq!(e["type"], "Normal");
        assert_eq!(e["source"]["component"], "plexus");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = jiff_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
