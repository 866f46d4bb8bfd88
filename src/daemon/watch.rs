//! The daemon's view of the cluster: a watch cache (kube-rs reflectors) of this node's pods and of
//! every NAD, read by the same planner the plugin uses. ADD reads pods and NADs from it, so a
//! steady-state ADD makes no GET; a pod the watch has not delivered yet is waited for briefly,
//! then fetched once. Writes (network-status, Events) and device lookups go through
//! [`ApiView`], on the daemon's runtime.

use super::metrics::Metrics;
use crate::cni::error::CniError;
use crate::k8s::client::{dra_api, ApiDra, ApiView};
use crate::k8s::devices::PodDevices;
use crate::k8s::dra::{self, DraDevice, DraSource};
use crate::k8s::{ClusterView, NetworkAttachmentDefinition, Reporter};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The watch cache, shared by every request.
pub struct WatchView {
    api: ApiView,
    handle: tokio::runtime::Handle,
    pods: Store<Pod>,
    nads: Store<NetworkAttachmentDefinition>,
    /// Woken on every pod event, for requests waiting for a pod the watch has not delivered.
    pod_events: Arc<Notify>,
    pods_synced: Arc<AtomicBool>,
    nads_synced: Arc<AtomicBool>,
    pod_wait: Duration,
    metrics: Arc<Metrics>,
    /// ResourceClaims and this node's ResourceSlices, once discovery said which version.
    dra: Arc<std::sync::OnceLock<DraCache>>,
}

/// The DRA part of the watch cache: the ResourceClaims allocated to this node (status only) and
/// the ResourceSlices of this node, in the resource.k8s.io version the API server offers.
pub struct DraCache {
    pub version: &'static str,
    claims: Store<DynamicObject>,
    claim_type: kube::api::ApiResource,
    slices: Store<DynamicObject>,
    slices_synced: Arc<AtomicBool>,
}

/// What the daemon keeps of a claim: its status and identity (the planner reads nothing else).
fn trim_claim(o: &mut DynamicObject) {
    o.metadata.managed_fields = None;
    if let Some(m) = o.data.as_object_mut() {
        m.remove("spec");
    }
}

/// A claim allocated to devices this node can reach: its allocation's node selector names this
/// node by `metadata.name`, selects by labels (not evaluated here: kept), or there is none (the
/// devices are reachable from every node). An unallocated claim is not kept.
fn allocated_here(o: &DynamicObject, node: &str) -> bool {
    let alloc = &o.data["status"]["allocation"];
    if alloc.is_null() {
        return false;
    }
    let Some(terms) = alloc["nodeSelector"]["nodeSelectorTerms"].as_array() else {
        return true;
    };
    terms.iter().any(|t| {
        let fields = t["matchFields"].as_array().cloned().unwrap_or_default();
        let by_name: Vec<&serde_json::Value> = fields
            .iter()
            .filter(|f| f["key"] == "metadata.name")
            .collect();
        if by_name.is_empty() {
            return true;
        }
        by_name.iter().all(|f| {
            f["operator"] == "In"
                && f["values"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == node))
        })
    })
}

fn json(o: &DynamicObject) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or_default()
}

/// Claims and slices from the cache; a claim not there yet (or not allocated in the cached
/// copy) and a driver with no slice cached are asked of the API once.
struct CachedDra<'a> {
    cache: &'a DraCache,
    api: ApiDra<'a>,
}

impl DraSource for CachedDra<'_> {
    fn claim(&self, ns: &str, name: &str) -> Result<Option<serde_json::Value>, CniError> {
        let key = ObjectRef::new_with(name, self.cache.claim_type.clone()).within(ns);
        if let Some(c) = self.cache.claims.get(&key).map(|o| json(&o)) {
            if c["status"]["allocation"]["devices"]["results"].is_array() {
                return Ok(Some(c));
            }
        }
        tracing::debug!("ResourceClaim {ns}/{name} not allocated in the watch cache: one GET");
        self.api.claim(ns, name)
    }

    fn slices(&self, node: Option<&str>, driver: &str) -> Result<Vec<serde_json::Value>, CniError> {
        if self.cache.slices_synced.load(Ordering::SeqCst) {
            let found: Vec<serde_json::Value> = self
                .cache
                .slices
                .state()
                .iter()
                .map(|o| json(o))
                .filter(|v| {
                    v["spec"]["driver"] == driver && node.is_none_or(|n| v["spec"]["nodeName"] == n)
                })
                .collect();
            if !found.is_empty() {
                return Ok(found);
            }
        }
        tracing::debug!("no ResourceSlice of {driver} in the watch cache: one LIST");
        self.api.slices(node, driver)
    }

    fn all_slices(&self, driver: &str) -> Result<Vec<serde_json::Value>, CniError> {
        tracing::debug!("a device of {driver} not in the cached slices: one LIST of the driver's");
        self.api.all_slices(driver)
    }
}

/// What the daemon keeps of a pod: no managed fields, volumes or container commands and
/// environments (as Multus trims its informer), so 500 pods stay small.
pub fn trim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.command = None;
            c.args = None;
            c.env = None;
            c.env_from = None;
            c.volume_mounts = None;
        }
    }
}

/// What the pod watch tells its hook (hot-plug).
pub enum PodEvent<'a> {
    /// A pod was added or changed.
    Applied(&'a Pod),
    /// A pod is gone from the API.
    Deleted(&'a Pod),
    /// A (re)list is done: these are all the pods of this node now; any other pod the hook
    /// remembers was deleted while the watch was down.
    Synced(&'a std::collections::HashSet<(String, String)>),
}

/// The callback the pod watch loop runs on each event (hot-plug).
pub type PodHook = Arc<dyn Fn(PodEvent<'_>) + Send + Sync>;

impl WatchView {
    /// Start the reflectors on the current runtime: this node's pods (field selector
    /// `spec.nodeName`) and every NAD.
    pub fn start(
        client: kube::Client,
        api: ApiView,
        node: &str,
        pod_wait: Duration,
        metrics: Arc<Metrics>,
        on_pod: Option<PodHook>,
    ) -> Arc<WatchView> {
        let (pods, pods_writer) = reflector::store();
        let (nads, nads_writer) = reflector::store();
        let pod_events = Arc::new(Notify::new());
        let view = Arc::new(WatchView {
            api,
            handle: tokio::runtime::Handle::current(),
            pods,
            nads,
            pod_events: pod_events.clone(),
            pods_synced: Arc::new(AtomicBool::new(false)),
            nads_synced: Arc::new(AtomicBool::new(false)),
            pod_wait,
            metrics: metrics.clone(),
            dra: Arc::new(std::sync::OnceLock::new()),
        });
        tokio::spawn(watch_dra(
            client.clone(),
            node.to_string(),
            view.dra.clone(),
            metrics.clone(),
        ));
        let pod_stream = watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        )
        .default_backoff()
        .modify(trim)
        .reflect(pods_writer);
        let v = view.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(pod_stream);
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(ev) => {
                        if matches!(ev, watcher::Event::InitDone) {
                            v.pods_synced.store(true, Ordering::SeqCst);
                            tracing::info!("watch cache: {} pods on this node", v.pods.len());
                        }
                        if let Some(hook) = &on_pod {
                            match &ev {
                                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                                    hook(PodEvent::Applied(p))
                                }
                                watcher::Event::Delete(p) => hook(PodEvent::Deleted(p)),
                                watcher::Event::InitDone => {
                                    let now = v
                                        .pods
                                        .state()
                                        .iter()
                                        .filter_map(|p| {
                                            Some((
                                                p.metadata.namespace.clone()?,
                                                p.metadata.name.clone()?,
                                            ))
                                        })
                                        .collect();
                                    hook(PodEvent::Synced(&now))
                                }
                                watcher::Event::Init => {}
                            }
                        }
                    }
                    Err(e) => tracing::warn!("pod watch: {e}"),
                }
                v.metrics.set_cache_size("pods", v.pods.len());
                pod_events.notify_waiters();
            }
        });
        let nad_stream = watcher(
            Api::<NetworkAttachmentDefinition>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(nads_writer);
        let v = view.clone();
        tokio::spawn(async move {
            let mut s = std::pin::pin!(nad_stream);
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(watcher::Event::InitDone) => {
                        v.nads_synced.store(true, Ordering::SeqCst);
                        tracing::info!("watch cache: {} NADs", v.nads.len());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("NAD watch: {e}"),
                }
                v.metrics
                    .set_cache_size("network-attachment-definitions", v.nads.len());
            }
        });
        view
    }

    /// Both watches have delivered their initial list.
    pub fn synced(&self) -> bool {
        self.pods_synced.load(Ordering::SeqCst) && self.nads_synced.load(Ordering::SeqCst)
    }

    /// The cached pod, if any (for hot-plug and `plexus inspect`).
    pub fn cached_pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    /// Every cached pod.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }

    pub fn api(&self) -> &ApiView {
        &self.api
    }
}

impl ClusterView for WatchView {
    fn pod(&self, namespace: &str, name: &str, uid: Option<&str>) -> Result<Option<Pod>, CniError> {
        let key = ObjectRef::new(name).within(namespace);
        let current = |p: &Pod| uid.is_none_or(|u| p.metadata.uid.as_deref() == Some(u));
        if let Some(p) = self.pods.get(&key).filter(|p| current(p)) {
            return Ok(Some((*p).clone()));
        }
        // The kubelet can be faster than our watch: wait a little for it, then ask once.
        let waited = self.api_handle_block_on(async {
            tokio::time::timeout(self.pod_wait, async {
                loop {
                    let notified = self.pod_events.notified();
                    let mut notified = std::pin::pin!(notified);
                    notified.as_mut().enable();
                    if let Some(p) = self.pods.get(&key).filter(|p| current(p)) {
                        return p;
                    }
                    notified.await;
                }
            })
            .await
            .ok()
        });
        if let Some(p) = waited {
            return Ok(Some((*p).clone()));
        }
        tracing::debug!("pod {namespace}/{name} not in the watch cache: one GET");
        self.api.get_pod(namespace, name)
    }

    fn nad(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<NetworkAttachmentDefinition>, CniError> {
        if let Some(n) = self.nads.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(Some((*n).clone()));
        }
        // A miss is rare (a NAD created just before the pod, or none at all): make sure with one
        // GET rather than fail the pod on a watch that is a few milliseconds behind.
        tracing::debug!("NAD {namespace}/{name} not in the watch cache: one GET");
        self.api.nad(namespace, name)
    }

    fn pod_devices(
        &self,
        pod: &Pod,
        kubelet: &crate::k8s::devices::Kubelet,
    ) -> Result<PodDevices, CniError> {
        self.api.kubelet_devices(pod, kubelet)
    }

    fn claim_devices(&self, pod: &Pod) -> Result<Vec<DraDevice>, CniError> {
        if !dra::has_claims(pod) {
            return Ok(vec![]);
        }
        let Some(cache) = self.dra.get() else {
            return self.api.claim_devices(pod);
        };
        dra::claim_devices(
            pod,
            &CachedDra {
                cache,
                api: ApiDra {
                    view: &self.api,
                    version: cache.version,
                },
            },
        )
    }
}

/// Find out which resource.k8s.io version the API server offers (asking again while it cannot
/// say), then watch claims and this node's slices in it. A server without the group gets no
/// watch: DRA lookups then go to the API, and fail there as they should.
async fn watch_dra(
    client: kube::Client,
    node: String,
    cell: Arc<std::sync::OnceLock<DraCache>>,
    metrics: Arc<Metrics>,
) {
    let mut delay = Duration::from_secs(1);
    let version = loop {
        match dra_api::discover(&client).await {
            Ok(Some(v)) => break v,
            Ok(None) => {
                tracing::info!(
                    "the API server serves no resource.k8s.io version plexus reads: no DRA watch"
                );
                return;
            }
            Err(e) => {
                tracing::warn!("{e}; asking again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let claim_type = dra_api::resource(version, "ResourceClaim", "resourceclaims");
    let slice_type = dra_api::resource(version, "ResourceSlice", "resourceslices");
    let claims_writer = reflector::store::Writer::new(claim_type.clone());
    let slices_writer = reflector::store::Writer::new(slice_type.clone());
    let cache = DraCache {
        version,
        claims: claims_writer.as_reader(),
        claim_type: claim_type.clone(),
        slices: slices_writer.as_reader(),
        slices_synced: Arc::new(AtomicBool::new(false)),
    };
    let slices_synced = cache.slices_synced.clone();
    let (claims, slices) = (cache.claims.clone(), cache.slices.clone());
    let _ = cell.set(cache);
    tracing::info!(
        "watching resource.k8s.io/{version} ResourceClaims and this node's ResourceSlices"
    );
    let here = node.clone();
    let claim_stream = watcher(
        Api::<DynamicObject>::all_with(client.clone(), &claim_type),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(trim_claim)
    // Only claims allocated to this node are kept (one that stops being so is dropped).
    .try_filter_map(move |ev| {
        let ev = match ev {
            watcher::Event::InitApply(o) if !allocated_here(&o, &here) => None,
            watcher::Event::Apply(o) if !allocated_here(&o, &here) => {
                Some(watcher::Event::Delete(o))
            }
            other => Some(other),
        };
        std::future::ready(Ok(ev))
    })
    .reflect(claims_writer);
    let m = metrics.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(claim_stream);
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                tracing::warn!("ResourceClaim watch: {e}");
            }
            m.set_cache_size("resourceclaims", claims.len());
        }
    });
    let slice_stream = watcher(
        Api::<DynamicObject>::all_with(client, &slice_type),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    )
    .default_backoff()
    .modify(|o| o.metadata.managed_fields = None)
    .reflect(slices_writer);
    let mut s = std::pin::pin!(slice_stream);
    while let Some(ev) = s.next().await {
        match ev {
            Ok(watcher::Event::InitDone) => slices_synced.store(true, Ordering::SeqCst),
            Ok(_) => {}
            Err(e) => tracing::warn!("ResourceSlice watch: {e}"),
        }
        metrics.set_cache_size("resourceslices", slices.len());
    }
}

impl WatchView {
    fn api_handle_block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }
}

impl Reporter for WatchView {
    fn set_network_status(&self, pod: &Pod, value: &str) -> Result<(), CniError> {
        self.api.set_network_status(pod, value)
    }

    fn clear_network_status(&self, pod: &Pod) -> Result<(), CniError> {
        self.api.clear_network_status(pod)
    }

    fn event(&self, pod: &Pod, warning: bool, reason: &str, message: &str) {
        self.api.event(pod, warning, reason, message)
    }

    fn publish_claim_device(
        &self,
        dev: &dra::ClaimDevice,
        data: &dra::NetworkData,
        message: &str,
    ) -> Result<dra::StatusEntry, CniError> {
        self.api.publish_claim_device(dev, data, message)
    }

    fn withdraw_claim_device(&self, dev: &dra::ClaimDevice) -> Result<(), CniError> {
        self.api.withdraw_claim_device(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use serde_json::json;

    fn pod(ns: &str, name: &str, uid: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name, "uid": uid,
            "managedFields": [{"manager": "kubectl"}]},
            "spec": {"nodeName": "n1", "volumes": [{"name": "v"}],
                     "containers": [{"name": "c", "command": ["sh"], "env": [{"name": "SECRET", "value": "x"}]}]}}))
        .unwrap()
    }

    #[test]
    fn only_claims_allocated_to_this_node_are_kept() {
        let claim = |alloc: serde_json::Value| -> DynamicObject {
            serde_json::from_value(
                json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": "c", "namespace": "ns"}, "status": {"allocation": alloc}}),
            )
            .unwrap()
        };
        let on = |nodes: &[&str]| {
            json!({"devices": {"results": []}, "nodeSelector": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": nodes}]}]}})
        };
        assert!(allocated_here(&claim(on(&["n1"])), "n1"));
        assert!(allocated_here(&claim(on(&["n0", "n1"])), "n1"));
        assert!(!allocated_here(&claim(on(&["n2"])), "n1"));
        // No node selector: reachable from every node; a label selector: not judged here.
        assert!(allocated_here(
            &claim(json!({"devices": {"results": []}})),
            "n1"
        ));
        assert!(allocated_here(
            &claim(
                json!({"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}]}})
            ),
            "n1"
        ));
        assert!(
            !allocated_here(&claim(serde_json::Value::Null), "n1"),
            "not allocated"
        );
    }

    #[test]
    fn the_store_follows_watch_events_and_pods_are_trimmed() {
        // As kube-rs tests its stores: events applied to a Writer directly.
        let mut w: Writer<Pod> = Writer::default();
        let store = w.as_reader();
        let mut p = pod("ns1", "a", "u1");
        trim(&mut p);
        w.apply_watcher_event(&watcher::Event::Init);
        w.apply_watcher_event(&watcher::Event::InitApply(p.clone()));
        w.apply_watcher_event(&watcher::Event::InitDone);
        let got = store.get(&ObjectRef::new("a").within("ns1")).unwrap();
        assert!(got.metadata.managed_fields.is_none());
        let spec = got.spec.as_ref().unwrap();
        assert!(spec.volumes.is_none() && spec.containers[0].env.is_none());
        assert_eq!(
            spec.containers[0].name, "c",
            "what the planner needs is kept"
        );
        let mut p2 = p.clone();
        p2.metadata.annotations = Some([("k".to_string(), "v".to_string())].into());
        w.apply_watcher_event(&watcher::Event::Apply(p2));
        assert!(store
            .get(&ObjectRef::new("a").within("ns1"))
            .unwrap()
            .metadata
            .annotations
            .is_some());
        w.apply_watcher_event(&watcher::Event::Delete(p));
        assert!(store.get(&ObjectRef::new("a").within("ns1")).is_none());
    }
}
