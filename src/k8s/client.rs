//! Direct API access from blocking code: the exec'd plugin's view of the cluster (a kube client on
//! a current-thread runtime of its own, built only for ADD), and the writes both front doors make
//! (network-status, Events). Explicit timeouts everywhere.

use super::{ClusterView, NetworkAttachmentDefinition, Reporter};
use crate::cni::error::{CniError, Code};
use crate::config::NetConf;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// How often, and how long apart, a pod that is not visible yet is looked up again.
const POD_RETRIES: u32 = 4;
const POD_RETRY_DELAY: Duration = Duration::from_millis(250);

/// Runs API futures from blocking code: on a current-thread runtime of its own (the plugin), or on
/// the daemon's runtime through its handle (from a blocking thread, never from a worker).
pub enum Blocking {
    Own(tokio::runtime::Runtime),
    Shared(tokio::runtime::Handle),
}

impl Blocking {
    /// A current-thread runtime for this process's API calls.
    pub fn own() -> Result<Blocking, CniError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(Blocking::Own)
            .map_err(|e| CniError::new(Code::IO, format!("starting the API client runtime: {e}")))
    }

    /// Wait for `f`, from blocking code only: the plugin's main thread, or one of the daemon's
    /// blocking threads (never an async task, where tokio would panic; the daemon runs each call
    /// on `spawn_blocking`, so even that would fail one call, not the daemon).
    pub fn block_on<F: Future>(&self, f: F) -> Result<F::Output, CniError> {
        Ok(match self {
            Blocking::Own(rt) => rt.block_on(f),
            Blocking::Shared(h) => h.block_on(f),
        })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        match self {
            Blocking::Own(rt) => rt.handle().clone(),
            Blocking::Shared(h) => h.clone(),
        }
    }
}

/// How plexus authenticates to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Kubeconfig(PathBuf),
    /// The service account of the pod plexus runs in (`KUBERNETES_SERVICE_HOST/PORT` and
    /// `/var/run/secrets/kubernetes.io/serviceaccount`).
    InCluster,
}

impl Credentials {
    /// The plugin's: the config's `kubeconfig`; else in-cluster when the runtime's environment
    /// says so (`in_cluster`); else none (no Kubernetes: only configured networks).
    pub fn for_plugin(conf: &NetConf, in_cluster: bool) -> Option<Credentials> {
        match &conf.kubeconfig {
            Some(p) => Some(Credentials::Kubeconfig(p.clone())),
            None if in_cluster => Some(Credentials::InCluster),
            None => None,
        }
    }
}

/// A kube client config for `creds`, with plexus's timeouts.
pub async fn client_config(
    creds: &Credentials,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<kube::Config, CniError> {
    let mut config = match creds {
        Credentials::Kubeconfig(path) => {
            let kc = read_kubeconfig(path).map_err(|e| {
                CniError::new(
                    Code::INVALID_CONFIG,
                    format!("reading kubeconfig {}: {e}", path.display()),
                )
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    CniError::new(
                        Code::INVALID_CONFIG,
                        format!("kubeconfig {}: {e}", path.display()),
                    )
                })?
        }
        Credentials::InCluster => kube::Config::incluster().map_err(|e| {
            CniError::new(Code::INVALID_CONFIG, format!("in-cluster API config: {e}"))
        })?,
    };
    // A plain-http API server never uses TLS: without this, kube would load the platform's
    // whole CA bundle on every plugin run for nothing (several ms per ADD).
    if config.cluster_url.scheme_str() == Some("http") && config.root_cert.is_none() {
        config.root_cert = Some(vec![]);
    }
    config.connect_timeout = Some(connect_timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    Ok(config)
}

/// A kubeconfig file, as kube reads it (every file it names made absolute against the file's
/// directory), but a JSON one — what `plexus install` writes; JSON is YAML too — through
/// serde_json: kube's YAML reader costs a few hundred microseconds of every ADD. Anything else,
/// or JSON that does not parse as a kubeconfig, goes to kube's reader (and its errors).
pub fn read_kubeconfig(path: &std::path::Path) -> Result<Kubeconfig, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        if let Ok(mut kc) = serde_json::from_slice::<Kubeconfig>(&bytes) {
            if let Some(dir) = path.parent() {
                absolute_paths(&mut kc, dir);
            }
            return Ok(kc);
        }
    }
    Kubeconfig::read_from(path).map_err(|e| e.to_string())
}

/// The files a kubeconfig names, relative ones taken from `dir` (client-go's rule: an exec
/// command only when it has a path separator, so a bare name is still looked up in PATH).
fn absolute_paths(kc: &mut Kubeconfig, dir: &std::path::Path) {
    let fix = |p: &mut Option<String>| {
        if let Some(rel) = p
            .as_deref()
            .filter(|r| std::path::Path::new(r).is_relative())
        {
            if let Some(abs) = dir.join(rel).to_str() {
                *p = Some(abs.to_owned());
            }
        }
    };
    for c in kc.clusters.iter_mut().filter_map(|n| n.cluster.as_mut()) {
        fix(&mut c.certificate_authority);
    }
    for a in kc
        .auth_infos
        .iter_mut()
        .filter_map(|n| n.auth_info.as_mut())
    {
        fix(&mut a.client_certificate);
        fix(&mut a.client_key);
        fix(&mut a.token_file);
        if let Some(exec) = a.exec.as_mut() {
            if exec
                .command
                .as_deref()
                .is_some_and(|c| c.contains(std::path::MAIN_SEPARATOR))
            {
                fix(&mut exec.command);
            }
        }
    }
}

pub struct ApiView {
    rt: Blocking,
    client: kube::Client,
    /// The resource.k8s.io version the API server offers, once asked.
    dra_version: std::sync::OnceLock<Option<&'static str>>,
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
    fn patch_pod_status(&self, pod: &Pod, patch: serde_json::Value) -> Result<(), CniError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.rt
            .block_on(self.pods(&ns).patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ))?
            .map(|_| ())
            .map_err(|e| api_error(&format!("writing network-status of pod {ns}/{name}"), e))
    }
    /// The plugin's view: a client for `creds` on a runtime of its own; `None` without
    /// credentials (no Kubernetes).
    pub fn connect(
        conf: &NetConf,
        creds: Option<Credentials>,
    ) -> Result<Option<ApiView>, CniError> {
        let Some(creds) = creds else {
            return Ok(None);
        };
        let rt = Blocking::own()?;
        let config = rt.block_on(client_config(
            &creds,
            conf.api_connect_timeout,
            conf.api_timeout,
        ))??;
        let client = {
            let _guard = rt.handle().enter();
            kube::Client::try_from(config)
                .map_err(|e| CniError::new(Code::INVALID_CONFIG, format!("API client: {e}")))?
        };
        Ok(Some(ApiView::new(rt, client)))
    }

    /// A view over an existing client (the daemon's; tests use a mock service).
    pub fn new(rt: Blocking, client: kube::Client) -> ApiView {
        ApiView {
            rt,
            client,
            dra_version: std::sync::OnceLock::new(),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The pod's devices from the kubelet: its PodResources API when the socket is there, the
    /// checkpoint file otherwise.
    pub fn kubelet_devices(
        &self,
        pod: &Pod,
        kubelet: &super::devices::Kubelet,
    ) -> Result<super::devices::PodDevices, CniError> {
        if kubelet.pod_resources.exists() {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("");
            let name = pod.metadata.name.as_deref().unwrap_or("");
            return self.rt.block_on(super::devices::from_pod_resources(
                &kubelet.pod_resources,
                ns,
                name,
                kubelet.timeout,
            ))?;
        }
        super::devices::read_checkpoint(&kubelet.checkpoint, super::devices::checkpoint_uid(pod))
    }
}

impl ApiView {
    /// The resource.k8s.io version to read and write claims in: asked once, then remembered.
    pub fn resource_version(&self) -> Result<Option<&'static str>, CniError> {
        if let Some(v) = self.dra_version.get() {
            return Ok(*v);
        }
        let v = self.rt.block_on(dra_api::discover(&self.client))??;
        // A server without DRA is asked again next time (it may be upgraded under a daemon).
        if let Some(v) = v {
            let _ = self.dra_version.set(Some(v));
        }
        Ok(v)
    }

    fn dra_version_or_err(&self, what: &str) -> Result<&'static str, CniError> {
        self.resource_version()?.ok_or_else(|| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "{what}: the API server serves none of the resource.k8s.io versions plexus reads ({})",
                    super::dra::VERSIONS.join(", ")
                ),
            )
        })
    }

    /// Read a claim's status-bearing JSON, change it with `edit`, and write it back through the
    /// status subresource (on the daemon's or the plugin's runtime).
    pub fn edit_claim(
        &self,
        dev: &super::dra::ClaimDevice,
        edit: &(dyn Fn(&mut serde_json::Value) -> bool + Sync),
    ) -> Result<bool, CniError> {
        let version = self.dra_version_or_err(&dev.to_string())?;
        self.rt
            .block_on(dra_api::edit_status(&self.client, version, dev, edit))?
    }

    /// One GET of the pod, no retry (the daemon's fallback when its watch has not seen it).
    pub fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, CniError> {
        self.rt
            .block_on(self.pods(namespace).get_opt(name))?
            .map_err(|e| api_error(&format!("getting pod {namespace}/{name}"), e))
    }
}

impl ClusterView for ApiView {
    /// The pod, retried briefly while it is not visible yet (the API may lag the kubelet).
    fn pod(
        &self,
        namespace: &str,
        name: &str,
        _uid: Option<&str>,
    ) -> Result<Option<Pod>, CniError> {
        let api = self.pods(namespace);
        self.rt.block_on(async {
            for attempt in 0..=POD_RETRIES {
                let got = api
                    .get_opt(name)
                    .await
                    .map_err(|e| api_error(&format!("getting pod {namespace}/{name}"), e))?;
                if got.is_some() || attempt == POD_RETRIES {
                    return Ok(got);
                }
                tokio::time::sleep(POD_RETRY_DELAY).await;
            }
            unreachable!()
        })?
    }

    fn nad(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<NetworkAttachmentDefinition>, CniError> {
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(self.client.clone(), namespace);
        self.rt.block_on(api.get_opt(name))?.map_err(|e| {
            api_error(
                &format!("getting NetworkAttachmentDefinition {namespace}/{name}"),
                e,
            )
        })
    }

    fn pod_devices(
        &self,
        pod: &Pod,
        kubelet: &super::devices::Kubelet,
    ) -> Result<super::devices::PodDevices, CniError> {
        self.kubelet_devices(pod, kubelet)
    }

    fn claim_devices(&self, pod: &Pod) -> Result<Vec<super::dra::DraDevice>, CniError> {
        if !super::dra::has_claims(pod) {
            return Ok(vec![]);
        }
        let who = format!(
            "pod {}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        let version = self.dra_version_or_err(&who)?;
        super::dra::claim_devices(
            pod,
            &ApiDra {
                view: self,
                version,
            },
        )
    }
}

/// Claims and slices read straight from the API.
pub struct ApiDra<'a> {
    pub view: &'a ApiView,
    pub version: &'static str,
}

impl super::dra::DraSource for ApiDra<'_> {
    fn claim(&self, namespace: &str, name: &str) -> Result<Option<serde_json::Value>, CniError> {
        self.view.rt.block_on(dra_api::get_claim(
            &self.view.client,
            self.version,
            namespace,
            name,
        ))?
    }
    fn slices(&self, node: Option<&str>, driver: &str) -> Result<Vec<serde_json::Value>, CniError> {
        self.view.rt.block_on(dra_api::list_slices(
            &self.view.client,
            self.version,
            node,
            driver,
        ))?
    }
}

/// resource.k8s.io through kube's dynamic API, in whichever version the server offers.
pub mod dra_api {
    use super::api_error;
    use crate::cni::error::{CniError, Code};
    use crate::k8s::dra::{pick_version, ClaimDevice, GROUP};
    use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
    use serde_json::Value;

    /// How often a status write that lost a race (409) is tried again.
    const CONFLICT_RETRIES: usize = 5;

    pub fn resource(version: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: GROUP.into(),
            version: version.into(),
            api_version: format!("{GROUP}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    pub fn claims(client: &kube::Client, version: &str, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            client.clone(),
            ns,
            &resource(version, "ResourceClaim", "resourceclaims"),
        )
    }

    pub fn slices(client: &kube::Client, version: &str) -> Api<DynamicObject> {
        Api::all_with(
            client.clone(),
            &resource(version, "ResourceSlice", "resourceslices"),
        )
    }

    /// The resource.k8s.io version to use; `None` if the server has the group in no version
    /// plexus reads (or not at all).
    pub async fn discover(client: &kube::Client) -> Result<Option<&'static str>, CniError> {
        let req = http::Request::get(format!("/apis/{GROUP}"))
            .body(vec![])
            .expect("a valid request");
        match client.request::<Value>(req).await {
            Ok(group) => Ok(pick_version(&group)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(api_error(&format!("discovering {GROUP}"), e)),
        }
    }

    fn json(o: DynamicObject) -> Value {
        serde_json::to_value(o).unwrap_or(Value::Null)
    }

    pub async fn get_claim(
        client: &kube::Client,
        version: &str,
        ns: &str,
        name: &str,
    ) -> Result<Option<Value>, CniError> {
        claims(client, version, ns)
            .get_opt(name)
            .await
            .map(|o| o.map(json))
            .map_err(|e| api_error(&format!("getting ResourceClaim {ns}/{name}"), e))
    }

    /// The slices of `driver` on `node`, by field selector (both fields are selectable).
    pub async fn list_slices(
        client: &kube::Client,
        version: &str,
        node: Option<&str>,
        driver: &str,
    ) -> Result<Vec<Value>, CniError> {
        let mut fields = format!("spec.driver={driver}");
        if let Some(n) = node {
            fields = format!("spec.nodeName={n},{fields}");
        }
        slices(client, version)
            .list(&ListParams::default().fields(&fields))
            .await
            .map(|l| l.items.into_iter().map(json).collect())
            .map_err(|e| api_error(&format!("listing ResourceSlices ({fields})"), e))
    }

    /// GET the claim, `edit` it, PUT it to `status`; again on a conflict. `false` when the claim
    /// is gone or `edit` changed nothing.
    pub async fn edit_status(
        client: &kube::Client,
        version: &str,
        dev: &ClaimDevice,
        edit: &(dyn Fn(&mut Value) -> bool + Sync),
    ) -> Result<bool, CniError> {
        let api = claims(client, version, &dev.namespace);
        let what = format!("writing the status of {dev}");
        for _ in 0..CONFLICT_RETRIES {
            let Some(current) = api
                .get_opt(&dev.claim)
                .await
                .map_err(|e| api_error(&what, e))?
            else {
                return Ok(false);
            };
            let mut v = json(current);
            if !edit(&mut v) {
                return Ok(false);
            }
            let body: DynamicObject = serde_json::from_value(v)
                .map_err(|e| CniError::new(Code::DECODE, format!("{what}: {e}")))?;
            match api
                .replace_status(&dev.claim, &PostParams::default(), &body)
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
                Err(e) => return Err(api_error(&what, e)),
            }
        }
        Err(CniError::new(
            Code::TRY_AGAIN_LATER,
            format!("{what}: still conflicting after {CONFLICT_RETRIES} attempts"),
        ))
    }
}

impl Reporter for ApiView {
    /// Write the network-status annotation with a JSON merge patch of `pods/status` (the
    /// subresource Multus writes): no read, no resourceVersion, so no conflict loop. The patch
    /// carries the pod's UID, so it cannot land on a pod recreated under the same name.
    fn set_network_status(&self, pod: &Pod, value: &str) -> Result<(), CniError> {
        self.patch_pod_status(pod, status_patch(pod, value))
    }

    /// A merge patch's `null` removes the annotation (guarded by the UID, as above).
    fn clear_network_status(&self, pod: &Pod) -> Result<(), CniError> {
        let mut patch = status_patch(pod, "");
        patch["metadata"]["annotations"][super::NETWORK_STATUS_ANNOTATION] =
            serde_json::Value::Null;
        self.patch_pod_status(pod, patch)
    }

    fn publish_claim_device(
        &self,
        dev: &super::dra::ClaimDevice,
        data: &super::dra::NetworkData,
        message: &str,
    ) -> Result<super::dra::StatusEntry, CniError> {
        let now = crate::cache::now_rfc3339();
        let did = std::sync::Mutex::new(super::dra::StatusEntry::None);
        let written = self.edit_claim(dev, &|claim| {
            *did.lock().unwrap() = super::dra::put_network_data(claim, dev, data, message, &now);
            true
        })?;
        if !written {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!("writing the status of {dev}: the claim is gone"),
            ));
        }
        Ok(did.into_inner().unwrap())
    }

    fn withdraw_claim_device(&self, dev: &super::dra::ClaimDevice) -> Result<(), CniError> {
        self.edit_claim(dev, &|claim| super::dra::remove_network_data(claim, dev))
            .map(|_| ())
    }

    fn event(&self, pod: &Pod, warning: bool, reason: &str, message: &str) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let event = pod_event(pod, warning, reason, message);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        match self.rt.block_on(api.create(&PostParams::default(), &event)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("event {reason} for pod {ns}/{name}: {e}"),
            Err(e) => tracing::warn!("event {reason} for pod {ns}/{name}: {e}"),
        }
    }
}

/// The merge patch that sets network-status on this pod (and only this instance of it).
pub fn status_patch(pod: &Pod, value: &str) -> serde_json::Value {
    let mut meta = serde_json::json!({"annotations": {super::NETWORK_STATUS_ANNOTATION: value}});
    if let Some(uid) = &pod.metadata.uid {
        meta["uid"] = serde_json::Value::String(uid.clone());
    }
    serde_json::json!({ "metadata": meta })
}

/// An Event about the pod, as a kubelet-side component writes one.
pub fn pod_event(pod: &Pod, warning: bool, reason: &str, message: &str) -> Event {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let host = hostname();
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(ns),
            name: Some(name),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("plexus".into()),
            host: Some(host.clone()),
        }),
        reporting_component: Some("plexus".into()),
        reporting_instance: Some(host),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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
        let rt = Blocking::own().unwrap();
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = {
            let _g = rt.handle().enter();
            kube::Client::new(svc, "default")
        };
        (ApiView::new(rt, client), handle)
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
        view.rt.handle().spawn(async move {
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
    fn a_json_kubeconfig_reads_as_kube_reads_it() {
        let d = tempfile::tempdir().unwrap();
        let kc = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:443",
                "certificate-authority": "ca.crt"}},
                {"name": "abs", "cluster": {"server": "https://h", "certificate-authority": "/etc/ca.pem"}}],
            "users": [{"name": "u", "user": {"token": "t0k", "tokenFile": "token",
                "client-certificate": "sub/c.crt", "client-key": "/abs/c.key",
                "exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "bin/auth"}}},
                {"name": "v", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]
        });
        let path = d.path().join("kubeconfig");
        std::fs::write(&path, format!("\n  {kc}")).unwrap();
        let ours = read_kubeconfig(&path).unwrap();
        let kube = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(format!("{ours:?}"), format!("{kube:?}"));
        let dir = d.path().display();
        let c = ours.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            c.certificate_authority.as_deref(),
            Some(&*format!("{dir}/ca.crt"))
        );
        let u = ours.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(u.token_file.as_deref(), Some(&*format!("{dir}/token")));
        assert_eq!(u.client_key.as_deref(), Some("/abs/c.key"));
        assert_eq!(
            u.exec.as_ref().unwrap().command.as_deref(),
            Some(&*format!("{dir}/bin/auth"))
        );
        let v = ours.auth_infos[1].auth_info.as_ref().unwrap();
        assert_eq!(v.exec.as_ref().unwrap().command.as_deref(), Some("aws"));
        // YAML, and JSON that is not a kubeconfig, are kube's to read (and to refuse).
        std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters:\n- name: y\n  cluster:\n    server: https://y\n    certificate-authority: y.crt\n").unwrap();
        let y = read_kubeconfig(&path).unwrap();
        assert_eq!(
            y.clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .certificate_authority
                .as_deref(),
            Some(&*format!("{dir}/y.crt"))
        );
        std::fs::write(&path, r#"{"clusters": 3}"#).unwrap();
        assert!(read_kubeconfig(&path).is_err());
        assert!(read_kubeconfig(&d.path().join("missing")).is_err());
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
        let pod = view.pod("ns1", "p", None).unwrap().unwrap();
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
        assert!(view.pod("ns1", "p", None).unwrap().is_none());
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
    fn network_status_is_one_merge_patch_of_pods_status_guarded_by_uid() {
        let (view, handle) = view();
        let log = serve(&view, handle, vec![ok(pod_json("8"))]);
        let pod: Pod = serde_json::from_value(pod_json("5")).unwrap();
        view.set_network_status(&pod, r#"[{"name":"x"}]"#).unwrap();
        let log = log.lock().unwrap();
        let calls: Vec<&str> = log.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(calls, ["PATCH /api/v1/namespaces/ns1/pods/p/status"]);
        // Only the annotation, and the UID as a guard: no resourceVersion, so no conflict.
        assert_eq!(
            log[0].1,
            json!({"metadata": {"uid": "u1", "annotations": {"k8s.v1.cni.cncf.io/network-status": r#"[{"name":"x"}]"#}}})
        );
    }

    #[test]
    fn a_cleared_network_status_is_a_merge_patch_null_guarded_by_uid() {
        let (view, handle) = view();
        let log = serve(&view, handle, vec![ok(pod_json("8"))]);
        let pod: Pod = serde_json::from_value(pod_json("5")).unwrap();
        view.clear_network_status(&pod).unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log[0].0, "PATCH /api/v1/namespaces/ns1/pods/p/status");
        assert_eq!(
            log[0].1,
            json!({"metadata": {"uid": "u1", "annotations": {"k8s.v1.cni.cncf.io/network-status": null}}})
        );
    }

    #[test]
    fn a_failed_status_write_is_a_cni_error_naming_the_pod() {
        let (view, handle) = view();
        let _log = serve(
            &view,
            handle,
            vec![status(409, "Conflict"), status(503, "ServiceUnavailable")],
        );
        let pod: Pod = serde_json::from_value(pod_json("5")).unwrap();
        let e = view.set_network_status(&pod, "[]").unwrap_err();
        assert_eq!(e.code, Code::KUBE_API);
        assert!(
            e.msg.contains("ns1/p") && e.msg.contains("409"),
            "{}",
            e.msg
        );
        let e = view.set_network_status(&pod, "[]").unwrap_err();
        assert_eq!(e.code, Code::TRY_AGAIN_LATER);
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
    fn event_timestamps_are_rfc3339_and_now() {
        let pod: Pod = serde_json::from_value(pod_json("5")).unwrap();
        let before = jiff::Timestamp::now();
        let e = serde_json::to_value(pod_event(&pod, true, "FailedAttach", "m")).unwrap();
        for key in ["firstTimestamp", "lastTimestamp"] {
            let text = e[key].as_str().unwrap();
            let t: jiff::Timestamp = text.parse().unwrap_or_else(|_| panic!("{key} {text}"));
            assert!(text.ends_with('Z'), "{text}");
            // Kubernetes' Time has second precision.
            assert!(
                t >= before.round(jiff::Unit::Second).unwrap() - jiff::SignedDuration::from_secs(1)
            );
            assert!(t <= jiff::Timestamp::now());
        }
        assert_eq!(e["type"], "Warning");
    }

    #[test]
    fn dra_reads_the_offered_version_and_writes_the_claim_status_through_a_conflict() {
        use crate::k8s::dra::{ClaimDevice, NetworkData, StatusEntry};
        let (view, mut handle) = view();
        let claim = |rv: &str| {
            json!({"apiVersion": "resource.k8s.io/v1beta2", "kind": "ResourceClaim",
                "metadata": {"name": "p-net-x", "namespace": "ns1", "resourceVersion": rv},
                "spec": {"devices": {"requests": [{"name": "vf", "exactly": {"deviceClassName": "vf"}}]}},
                "status": {"allocation": {"devices": {"results": [
                    {"request": "vf", "driver": "sriov.example.com", "pool": "node-1", "device": "vf-1"}]}},
                    "reservedFor": [{"resource": "pods", "name": "p", "uid": "u1"}]}})
        };
        let slices = json!({"apiVersion": "resource.k8s.io/v1beta2", "kind": "ResourceSliceList", "metadata": {}, "items": [
            {"apiVersion": "resource.k8s.io/v1beta2", "kind": "ResourceSlice", "metadata": {"name": "s1"},
             "spec": {"driver": "sriov.example.com", "nodeName": "node-1", "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1},
                      "devices": [{"name": "vf-1", "attributes": {
                          "k8s.cni.cncf.io/resourceName": {"string": "example.com/vf"},
                          "k8s.cni.cncf.io/deviceID": {"string": "0000:5e:00.1"}}}]}}]});
        let group = json!({"kind": "APIGroup", "apiVersion": "v1", "name": "resource.k8s.io",
            "versions": [{"groupVersion": "resource.k8s.io/v1beta2", "version": "v1beta2"},
                         {"groupVersion": "resource.k8s.io/v1beta1", "version": "v1beta1"}]});
        let answers = vec![
            ok(group),
            ok(claim("5")),
            ok(slices),
            ok(claim("5")),
            status(409, "Conflict"),
            ok(claim("6")),
            ok(claim("7")),
        ];
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Value)>::new()));
        let seen = log.clone();
        view.rt.handle().spawn(async move {
            for answer in answers {
                let Some((req, send)) = handle.next_request().await else {
                    return;
                };
                let line = format!("{} {}", req.method(), req.uri());
                let body = req.into_body().collect_bytes().await.unwrap();
                seen.lock()
                    .unwrap()
                    .push((line, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                send.send_response(answer);
            }
        });
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns1", "uid": "u1"},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"resourceClaimStatuses": [{"name": "net", "resourceClaimName": "p-net-x"}]}}))
        .unwrap();
        let devices = view.claim_devices(&pod).unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].device_id.as_deref(), Some("0000:5e:00.1"));
        let dev = ClaimDevice {
            status_entry: StatusEntry::None,
            ..devices[0].at.clone()
        };
        let data = NetworkData {
            interface_name: "net1".into(),
            ips: vec!["10.1.0.5/24".into()],
            hardware_address: None,
        };
        assert_eq!(
            view.publish_claim_device(&dev, &data, "m").unwrap(),
            StatusEntry::Created
        );
        let log = log.lock().unwrap();
        let lines: Vec<&str> = log.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(lines[0], "GET /apis/resource.k8s.io");
        assert_eq!(
            lines[1],
            "GET /apis/resource.k8s.io/v1beta2/namespaces/ns1/resourceclaims/p-net-x"
        );
        assert!(
            lines[2].starts_with("GET /apis/resource.k8s.io/v1beta2/resourceslices?")
                && lines[2].contains("spec.nodeName%3Dnode-1%2Cspec.driver%3Dsriov.example.com"),
            "{}",
            lines[2]
        );
        assert_eq!(
            lines[4],
            "PUT /apis/resource.k8s.io/v1beta2/namespaces/ns1/resourceclaims/p-net-x/status?"
        );
        assert_eq!(log[4].1["metadata"]["resourceVersion"], "5");
        // After the conflict: read again, write with the new resourceVersion.
        assert_eq!(log[6].1["metadata"]["resourceVersion"], "6");
        let entry = &log[6].1["status"]["devices"][0];
        assert_eq!(entry["device"], "vf-1");
        assert_eq!(
            entry["networkData"],
            json!({"interfaceName": "net1", "ips": ["10.1.0.5/24"]})
        );
        assert_eq!(log.len(), 7, "{lines:?}");
    }
}
