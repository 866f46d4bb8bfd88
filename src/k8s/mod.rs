//! Kubernetes: who the pod is, what it asked for, which NADs exist, and reporting back.
//!
//! Everything the planner reads comes through [`ClusterView`]; the plugin reads the API directly
//! ([`client::ApiView`]), tests use [`MemoryView`].

pub mod annotations;
pub mod client;
pub mod devices;
pub mod dra;
pub mod nad;
#[allow(clippy::all, missing_docs)]
pub mod podresources;
pub mod status;

use crate::cni::error::{CniError, Code};
use crate::cni::Request;
use k8s_openapi::api::core::v1::Pod;
pub use nad::NetworkAttachmentDefinition;
use std::collections::HashMap;

pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
pub const DEFAULT_NETWORK_ANNOTATION: &str = "v1.multus-cni.io/default-network";
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// On a static pod's mirror in the API: the kubelet's own UID for the static pod.
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Largest NAD `spec.config` accepted.
pub const MAX_NAD_CONFIG_BYTES: usize = 256 << 10;

/// The pod a CNI request is for, from `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl PodRef {
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` (both needed), `K8S_POD_UID` if given.
    pub fn from_request(req: &Request) -> Option<PodRef> {
        let ns = req.arg("K8S_POD_NAMESPACE").filter(|s| !s.is_empty())?;
        let name = req.arg("K8S_POD_NAME").filter(|s| !s.is_empty())?;
        Some(PodRef {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: req
                .arg("K8S_POD_UID")
                .filter(|s| !s.is_empty())
                .map(String::from),
        })
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the planner reads from the cluster.
pub trait ClusterView {
    /// The pod, or `None` if the API says it does not exist. `uid` is the UID the runtime named
    /// (`K8S_POD_UID`), a hint for a cache that may hold an older pod of the same name.
    fn pod(&self, namespace: &str, name: &str, uid: Option<&str>) -> Result<Option<Pod>, CniError>;
    /// The NAD, or `None` if it does not exist.
    fn nad(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<NetworkAttachmentDefinition>, CniError>;
    /// The devices the kubelet allocated to this pod. Only asked when a NAD names a resource.
    fn pod_devices(
        &self,
        _pod: &Pod,
        _kubelet: &devices::Kubelet,
    ) -> Result<devices::PodDevices, CniError> {
        Ok(devices::PodDevices::default())
    }
    /// The devices the pod's DRA claims allocated. Only asked when a NAD names a resource and
    /// the pod's status names claims.
    fn claim_devices(&self, _pod: &Pod) -> Result<Vec<dra::DraDevice>, CniError> {
        Ok(vec![])
    }
}

/// Where plexus reports what it did: the pod's network-status and Events, and the network data
/// of claim devices (KEP-4817).
pub trait Reporter {
    fn set_network_status(&self, pod: &Pod, value: &str) -> Result<(), CniError>;
    /// Remove the pod's network-status: an ADD whose status write went through is being undone.
    fn clear_network_status(&self, pod: &Pod) -> Result<(), CniError> {
        self.set_network_status(pod, "[]")
    }
    fn event(&self, pod: &Pod, warning: bool, reason: &str, message: &str);
    /// Write `data` into the claim's `status.devices` for the device; says what it did.
    /// `message` says what was attached (the entry's condition: "plexus attached <message>").
    fn publish_claim_device(
        &self,
        _dev: &dra::ClaimDevice,
        _data: &dra::NetworkData,
        _message: &str,
    ) -> Result<dra::StatusEntry, CniError> {
        Ok(dra::StatusEntry::None)
    }
    /// Take plexus's part of the claim's status for the device out again (a claim gone is
    /// nothing to do).
    fn withdraw_claim_device(&self, _dev: &dra::ClaimDevice) -> Result<(), CniError> {
        Ok(())
    }
}

pub fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Refuse an ADD whose `K8S_POD_UID` is not the API's pod: the pod was recreated under the same
/// name. Static (mirror) pods, whose config source is not the API, carry a different UID by design.
pub fn check_uid(pod_ref: &PodRef, pod: &Pod) -> Result<(), CniError> {
    let (Some(want), Some(have)) = (pod_ref.uid.as_deref(), pod.metadata.uid.as_deref()) else {
        return Ok(());
    };
    let source = annotation(pod, CONFIG_SOURCE_ANNOTATION);
    if want == have || source.is_some_and(|s| s != "api") {
        return Ok(());
    }
    Err(CniError::new(
        Code::POD_UID_MISMATCH,
        format!("K8S_POD_UID {want} is not the API's pod UID {have} (the pod was recreated)"),
    ))
}

/// An in-memory cluster, for the planner's and the engine's unit tests: reports are recorded
/// (`"status <pod> <value>"`, `"event <pod> <reason> <message>"`), and a status write can be made
/// to fail.
#[derive(Debug, Default, Clone)]
pub struct MemoryView {
    pub pods: HashMap<(String, String), Pod>,
    pub nads: HashMap<(String, String), NetworkAttachmentDefinition>,
    pub devices: devices::PodDevices,
    pub claims: Vec<dra::DraDevice>,
    /// ResourceClaims by (namespace, name), whose status publish/withdraw edit as the API
    /// would; a claim not here is gone (its status write fails).
    pub claim_objects:
        std::sync::Arc<std::sync::Mutex<HashMap<(String, String), serde_json::Value>>>,
    pub reports: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub fail_status: bool,
    /// Taking network data out of a claim fails while this is set.
    pub fail_withdraw: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryView {
    pub fn with_pod(mut self, ns: &str, name: &str, annotations: &[(&str, &str)]) -> Self {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some(ns.into());
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(format!("uid-{name}"));
        pod.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self.pods.insert((ns.into(), name.into()), pod);
        self
    }

    pub fn with_nad(mut self, ns: &str, name: &str, config: &str) -> Self {
        let mut nad = NetworkAttachmentDefinition::new(
            name,
            nad::NetworkAttachmentDefinitionSpec {
                config: config.into(),
            },
        );
        nad.metadata.namespace = Some(ns.into());
        self.nads.insert((ns.into(), name.into()), nad);
        self
    }
}

impl MemoryView {
    /// A NAD annotated with `k8s.v1.cni.cncf.io/resourceName`.
    pub fn with_device_nad(mut self, ns: &str, name: &str, config: &str, resource: &str) -> Self {
        self = self.with_nad(ns, name, config);
        let nad = self
            .nads
            .get_mut(&(ns.into(), name.into()))
            .expect("just added");
        nad.metadata.annotations =
            Some([(RESOURCE_NAME_ANNOTATION.to_string(), resource.to_string())].into());
        self
    }
}

impl ClusterView for MemoryView {
    fn pod(
        &self,
        namespace: &str,
        name: &str,
        _uid: Option<&str>,
    ) -> Result<Option<Pod>, CniError> {
        Ok(self.pods.get(&(namespace.into(), name.into())).cloned())
    }
    fn nad(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<NetworkAttachmentDefinition>, CniError> {
        Ok(self.nads.get(&(namespace.into(), name.into())).cloned())
    }
    fn pod_devices(
        &self,
        _pod: &Pod,
        _kubelet: &devices::Kubelet,
    ) -> Result<devices::PodDevices, CniError> {
        Ok(self.devices.clone())
    }
    fn claim_devices(&self, _pod: &Pod) -> Result<Vec<dra::DraDevice>, CniError> {
        Ok(self.claims.clone())
    }
}

impl Reporter for MemoryView {
    fn set_network_status(&self, pod: &Pod, value: &str) -> Result<(), CniError> {
        let who = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        if self.fail_status {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!("writing network-status of pod {who}: injected failure"),
            ));
        }
        self.reports
            .lock()
            .unwrap()
            .push(format!("status {who} {value}"));
        Ok(())
    }

    fn clear_network_status(&self, pod: &Pod) -> Result<(), CniError> {
        self.reports.lock().unwrap().push(format!(
            "status cleared {}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        ));
        Ok(())
    }

    fn event(&self, pod: &Pod, _warning: bool, reason: &str, message: &str) {
        let who = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        self.reports
            .lock()
            .unwrap()
            .push(format!("event {who} {reason} {message}"));
    }

    fn publish_claim_device(
        &self,
        dev: &dra::ClaimDevice,
        data: &dra::NetworkData,
        message: &str,
    ) -> Result<dra::StatusEntry, CniError> {
        let mut claims = self.claim_objects.lock().unwrap();
        let Some(claim) = claims.get_mut(&(dev.namespace.clone(), dev.claim.clone())) else {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!("writing the status of {dev}: the claim is gone"),
            ));
        };
        let entry = dra::put_network_data(claim, dev, data, message, "2026-01-01T00:00:00Z");
        self.reports.lock().unwrap().push(format!(
            "claim {}/{} {} {} {:?}",
            dev.namespace, dev.claim, dev.device, data.interface_name, data.ips
        ));
        Ok(entry)
    }

    fn withdraw_claim_device(&self, dev: &dra::ClaimDevice) -> Result<(), CniError> {
        if self.fail_withdraw.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!("writing the status of {dev}: injected failure"),
            ));
        }
        if let Some(claim) = self
            .claim_objects
            .lock()
            .unwrap()
            .get_mut(&(dev.namespace.clone(), dev.claim.clone()))
        {
            dra::remove_network_data(claim, dev);
        }
        self.reports.lock().unwrap().push(format!(
            "unclaim {}/{} {}",
            dev.namespace, dev.claim, dev.device
        ));
        Ok(())
    }
}
