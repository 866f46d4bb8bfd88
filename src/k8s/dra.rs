//! Dynamic Resource Allocation (resource.k8s.io): network devices a pod got through its
//! ResourceClaims, and the network data plexus writes back to the claim (KEP-4817).
//!
//! A pod's `status.resourceClaimStatuses` names its claims; each allocated claim's
//! `status.allocation.devices.results` names `(request, driver, pool, device)`; the ResourceSlice
//! of that driver and pool on the pod's node publishes the device with its attributes. A device
//! carrying `k8s.cni.cncf.io/resourceName` and `k8s.cni.cncf.io/deviceID` (the convention Multus
//! and the SR-IOV DRA driver use) serves NADs annotated with that resource name, exactly as a
//! device-plugin ID does. Other devices (a GPU in the same pod) are not network devices: they are
//! passed over, and named in the error if a network then finds no device.
//!
//! Objects are read as JSON, so `v1`, `v1beta2` and `v1beta1` (whose devices keep their
//! attributes under `basic`) read the same.

use crate::cni::error::{CniError, Code};
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;

pub const DEVICE_ID_ATTRIBUTE: &str = "k8s.cni.cncf.io/deviceID";
pub const RESOURCE_NAME_ATTRIBUTE: &str = "k8s.cni.cncf.io/resourceName";
pub const GROUP: &str = "resource.k8s.io";
/// The versions plexus reads, most preferred first.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta2", "v1beta1"];
/// KEP-4817 limits on `networkData`.
const MAX_INTERFACE_NAME: usize = 256;
const MAX_HARDWARE_ADDRESS: usize = 128;
const MAX_IPS: usize = 16;

/// What plexus did to the claim's `status.devices` for a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StatusEntry {
    /// Nothing (yet).
    #[default]
    None,
    /// About to be written (kept in the record before the write, so a crash right after it
    /// still has DEL look): DEL takes out plexus's entry or `networkData`, whichever is there.
    Pending,
    /// Added the device's entry: DEL removes it.
    Created,
    /// Set `networkData` on an entry that was there (the driver's): DEL removes only that.
    Merged,
}

/// A device a claim allocated to the pod: which claim and request, and the device's identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimDevice {
    pub namespace: String,
    /// The ResourceClaim object.
    pub claim: String,
    /// The pod's name for it (`spec.resourceClaims[].name`).
    #[serde(default)]
    pub pod_claim: String,
    pub request: String,
    pub driver: String,
    pub pool: String,
    pub device: String,
    /// The allocation's `shareID` (a device shared through consumable capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// The pod interface and the sandbox (container ID) plexus wrote network data for: what it
    /// takes out again is only what it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default)]
    pub status_entry: StatusEntry,
}

impl std::fmt::Display for ClaimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "claim {}/{} request \"{}\" device {} (driver {}, pool {})",
            self.namespace, self.claim, self.request, self.device, self.driver, self.pool
        )
    }
}

/// A claim's device and what its slice says of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DraDevice {
    pub at: ClaimDevice,
    pub resource_name: Option<String>,
    pub device_id: Option<String>,
    /// Other pods the claim is reserved for: a network device cannot be in two pods.
    pub shared_with: Vec<String>,
    /// Why its attributes are unknown: no slice on the node publishes it (yet).
    pub unpublished: Option<String>,
}

impl DraDevice {
    /// Both attributes: a network device.
    pub fn is_network(&self) -> bool {
        self.resource_name.is_some() && self.device_id.is_some()
    }
}

/// Where claims and slices are read from: the API directly, or the daemon's watch cache.
pub trait DraSource {
    /// The claim as JSON, or `None` if it does not exist.
    fn claim(&self, namespace: &str, name: &str) -> Result<Option<Value>, CniError>;
    /// The ResourceSlices of `driver` on `node` (all nodes' when the pod names none), as JSON;
    /// from a cache, where there is one.
    fn slices(&self, node: Option<&str>, driver: &str) -> Result<Vec<Value>, CniError>;
    /// Every ResourceSlice of `driver`, from the API: asked when a device is in none of the
    /// node's slices (a pool published for a node selector or all nodes has no `nodeName`; a
    /// cache may be behind a republished pool).
    fn all_slices(&self, driver: &str) -> Result<Vec<Value>, CniError> {
        self.slices(None, driver)
    }
}

/// The pod's claims in its status order: (the pod's name for it, the ResourceClaim's name). A
/// claim status without a ResourceClaim name needed none (the template made no claim).
pub fn pod_claims(pod: &Pod) -> Vec<(String, String)> {
    pod.status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s.name.clone(), s.resource_claim_name.clone()?)))
        .collect()
}

/// Whether the pod's status names any claim (its own, or one for extended resources).
pub fn has_claims(pod: &Pod) -> bool {
    !pod_claims(pod).is_empty()
        || pod
            .status
            .as_ref()
            .is_some_and(|s| s.extended_resource_claim_status.is_some())
}

fn who(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// Every device the pod's claims allocated, in claim then result order, with its attributes,
/// then those of its extended-resource claim (`status.extendedResourceClaimStatus`). A claim
/// that is missing or not allocated is an error naming the pod and the claim; a device no slice
/// of the node publishes comes back `unpublished`, with the reason, for the allocator to name if
/// a network needs it. An extended resource is strict, as in Multus: its request must be in the
/// claim and its devices must carry that resource's name.
pub fn claim_devices(pod: &Pod, src: &dyn DraSource) -> Result<Vec<DraDevice>, CniError> {
    let claims = pod_claims(pod);
    let extended = pod
        .status
        .as_ref()
        .and_then(|s| s.extended_resource_claim_status.as_ref());
    if claims.is_empty() && extended.is_none() {
        return Ok(vec![]);
    }
    let pod_who = who(pod);
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut look = Lookup {
        src,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        slices: HashMap::new(),
        widened: Default::default(),
    };
    let get = |pod_claim: &str, name: &str| -> Result<(Vec<Value>, Vec<String>), CniError> {
        let claim = src.claim(&ns, name)?.ok_or_else(|| {
            CniError::new(
                Code::TRY_AGAIN_LATER,
                format!("pod {pod_who}: ResourceClaim {ns}/{name} (the pod's claim \"{pod_claim}\") not found"),
            )
        })?;
        let Some(results) = claim["status"]["allocation"]["devices"]["results"].as_array() else {
            return Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!("pod {pod_who}: ResourceClaim {ns}/{name} (the pod's claim \"{pod_claim}\") is not allocated yet"),
            ));
        };
        let shared_with: Vec<String> = claim["status"]["reservedFor"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["resource"] == "pods" && r["uid"].as_str() != Some(uid.as_str()))
            .map(|r| format!("{ns}/{}", s(&r["name"])))
            .collect();
        Ok((results.clone(), shared_with))
    };
    let at = |pod_claim: &str, name: &str, r: &Value| ClaimDevice {
        namespace: ns.clone(),
        claim: name.to_string(),
        pod_claim: pod_claim.to_string(),
        request: s(&r["request"]),
        driver: s(&r["driver"]),
        pool: s(&r["pool"]),
        device: s(&r["device"]),
        share_id: r["shareID"]
            .as_str()
            .filter(|x| !x.is_empty())
            .map(String::from),
        status_entry: StatusEntry::None,
        interface: None,
        sandbox: None,
    };
    let mut out = vec![];
    for (pod_claim, name) in claims {
        let (results, shared_with) = get(&pod_claim, &name)?;
        for r in &results {
            out.push(look.device(at(&pod_claim, &name, r), &shared_with)?);
        }
    }
    if let Some(ext) = extended {
        let name = &ext.resource_claim_name;
        let (results, shared_with) = get("extended resources", name)?;
        let err = |msg: String| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!("pod {pod_who}: extended-resource claim {ns}/{name}: {msg}"),
            )
        };
        for m in &ext.request_mappings {
            let mine: Vec<&Value> = results
                .iter()
                .filter(|r| r["request"] == m.request_name.as_str())
                .collect();
            if mine.is_empty() {
                return Err(err(format!(
                    "request \"{}\" (extended resource {} of container {}) is not in the claim",
                    m.request_name, m.resource_name, m.container_name
                )));
            }
            for r in mine {
                let d = look.device(at("extended resources", name, r), &shared_with)?;
                if let Some(why) = &d.unpublished {
                    return Err(CniError::new(
                        Code::TRY_AGAIN_LATER,
                        format!("pod {pod_who}: {}: {why}", d.at),
                    ));
                }
                if d.resource_name.as_deref() != Some(m.resource_name.as_str())
                    || d.device_id.is_none()
                {
                    return Err(err(format!(
                        "{}: its {RESOURCE_NAME_ATTRIBUTE} is {:?} and its {DEVICE_ID_ATTRIBUTE} {:?}, but the extended resource is {}",
                        d.at, d.resource_name, d.device_id, m.resource_name
                    )));
                }
                if !out
                    .iter()
                    .any(|o: &DraDevice| o.at.claim == d.at.claim && o.at.device == d.at.device)
                {
                    out.push(d);
                }
            }
        }
    }
    Ok(out)
}

/// Looking devices up in slices, each driver's read once (and widened once).
struct Lookup<'a> {
    src: &'a dyn DraSource,
    node: Option<String>,
    slices: HashMap<String, Vec<Value>>,
    /// Drivers whose every slice was already asked for.
    widened: std::collections::HashSet<String>,
}

impl Lookup<'_> {
    fn device(&mut self, at: ClaimDevice, shared_with: &[String]) -> Result<DraDevice, CniError> {
        let node = self.node.clone();
        if !self.slices.contains_key(&at.driver) {
            let got = self.src.slices(node.as_deref(), &at.driver)?;
            self.slices.insert(at.driver.clone(), got);
        }
        let mut device = find_device(&self.slices[&at.driver], &at.pool, &at.device).cloned();
        if device.is_none() && self.widened.insert(at.driver.clone()) {
            // Not in the node's slices: ask for every slice of the driver, keeping those of
            // this node and those that name no node (node selector, all nodes).
            let wide: Vec<Value> = self
                .src
                .all_slices(&at.driver)?
                .into_iter()
                .filter(|sl| {
                    let n = &sl["spec"]["nodeName"];
                    n.is_null()
                        || n.as_str() == Some("")
                        || node.as_deref().is_none_or(|want| n == want)
                })
                .collect();
            device = find_device(&wide, &at.pool, &at.device).cloned();
            self.slices.insert(at.driver.clone(), wide);
        }
        let Some(device) = device else {
            return Ok(DraDevice {
                unpublished: Some(format!(
                    "no ResourceSlice of driver {} on node {} publishes it",
                    at.driver,
                    node.as_deref().unwrap_or("(none)")
                )),
                shared_with: shared_with.to_vec(),
                at,
                ..Default::default()
            });
        };
        let attrs = if device["attributes"].is_object() {
            &device["attributes"]
        } else {
            &device["basic"]["attributes"]
        };
        let attr = |k: &str| attrs[k]["string"].as_str().map(String::from);
        Ok(DraDevice {
            resource_name: attr(RESOURCE_NAME_ATTRIBUTE),
            device_id: attr(DEVICE_ID_ATTRIBUTE),
            shared_with: shared_with.to_vec(),
            at,
            unpublished: None,
        })
    }
}

/// The device in the pool's current generation (a pool may span several slices; a driver
/// republishing leaves older generations around for a while).
fn find_device<'a>(slices: &'a [Value], pool: &str, device: &str) -> Option<&'a Value> {
    let of_pool: Vec<&Value> = slices
        .iter()
        .filter(|sl| sl["spec"]["pool"]["name"] == pool)
        .collect();
    let newest = of_pool
        .iter()
        .filter_map(|sl| sl["spec"]["pool"]["generation"].as_i64())
        .max()
        .unwrap_or(0);
    of_pool
        .into_iter()
        .filter(|sl| sl["spec"]["pool"]["generation"].as_i64().unwrap_or(0) == newest)
        .flat_map(|sl| sl["spec"]["devices"].as_array().into_iter().flatten())
        .find(|d| d["name"] == device)
}

/// KEP-4817 `networkData` for one device: the pod interface, its addresses in CIDR form and its
/// hardware address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkData {
    pub interface_name: String,
    pub ips: Vec<String>,
    pub hardware_address: Option<String>,
}

impl NetworkData {
    /// From an attachment's result: the sandbox interface named `ifname` (else the first one in
    /// the sandbox), and the addresses on it (all of them when the result does not say which).
    pub fn from_result(ifname: &str, result: &crate::cni::CniResult) -> NetworkData {
        let sandbox =
            |i: &crate::cni::result::Interface| i.sandbox.as_deref().is_some_and(|s| !s.is_empty());
        let index = result
            .interfaces
            .iter()
            .position(|i| i.name == ifname && sandbox(i))
            .or_else(|| result.interfaces.iter().position(sandbox));
        let ips = result
            .ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == index)
            .map(|ip| ip.address.clone())
            .take(MAX_IPS)
            .collect();
        NetworkData {
            interface_name: ifname.chars().take(MAX_INTERFACE_NAME).collect(),
            ips,
            hardware_address: index
                .and_then(|i| result.interfaces[i].mac.clone())
                .filter(|m| !m.is_empty() && m.len() <= MAX_HARDWARE_ADDRESS),
        }
    }

    fn to_value(&self) -> Value {
        let mut v = json!({"interfaceName": self.interface_name, "ips": self.ips});
        if let Some(mac) = &self.hardware_address {
            v["hardwareAddress"] = json!(mac);
        }
        v
    }
}

fn same_device(entry: &Value, dev: &ClaimDevice) -> bool {
    entry["driver"] == dev.driver.as_str()
        && entry["pool"] == dev.pool.as_str()
        && entry["device"] == dev.device.as_str()
        && entry["shareID"].as_str().filter(|x| !x.is_empty()) == dev.share_id.as_deref()
}

/// The reason of the `Ready` condition on an entry plexus made.
const READY_REASON: &str = "NetworkInterfaceReady";
/// How the message of that condition starts.
const READY_BY: &str = "plexus attached ";

/// An entry plexus made: its `Ready` condition says so.
fn is_plexus_entry(entry: &Value) -> bool {
    entry["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["type"] == "Ready"
                && c["reason"] == READY_REASON
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(READY_BY))
        })
}

/// Put `data` into the claim's `status.devices` entry for `dev`: a new entry (with a `Ready`
/// condition saying plexus attached it), or `networkData` set on the entry already there (the
/// driver's; plexus's own from an earlier ADD is made again).
pub fn put_network_data(
    claim: &mut Value,
    dev: &ClaimDevice,
    data: &NetworkData,
    what: &str,
    now: &str,
) -> StatusEntry {
    if !claim["status"].is_object() {
        claim["status"] = json!({});
    }
    if !claim["status"]["devices"].is_array() {
        claim["status"]["devices"] = json!([]);
    }
    let devices = claim["status"]["devices"].as_array_mut().expect("just set");
    if let Some(i) = devices.iter().position(|e| same_device(e, dev)) {
        if !is_plexus_entry(&devices[i]) {
            devices[i]["networkData"] = data.to_value();
            return StatusEntry::Merged;
        }
        devices.remove(i);
    }
    let mut entry = json!({
        "driver": dev.driver, "pool": dev.pool, "device": dev.device,
        "conditions": [{"type": "Ready", "status": "True", "reason": READY_REASON,
                        "message": format!("{READY_BY}{what}"), "lastTransitionTime": now}],
        "networkData": data.to_value(),
    });
    if let Some(id) = &dev.share_id {
        entry["shareID"] = json!(id);
    }
    devices.push(entry);
    StatusEntry::Created
}

/// How the condition's message names the sandbox an entry was made for.
pub fn sandbox_mark(sandbox: &str) -> String {
    format!("(sandbox {sandbox})")
}

/// Take plexus's part out of the claim's status again: the entry, if plexus made it for this
/// sandbox (its condition says so, whatever the caller believes; another sandbox's is left),
/// else `networkData` when it is what plexus set (its interface); false if nothing was taken.
pub fn remove_network_data(claim: &mut Value, dev: &ClaimDevice) -> bool {
    let Some(devices) = claim["status"]["devices"].as_array_mut() else {
        return false;
    };
    let Some(i) = devices.iter().position(|e| same_device(e, dev)) else {
        return false;
    };
    if is_plexus_entry(&devices[i]) {
        let mine = dev.sandbox.as_deref().is_none_or(|s| {
            devices[i]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&sandbox_mark(s)))
                })
        });
        if !mine {
            return false;
        }
        devices.remove(i);
        return true;
    }
    let ours = dev
        .interface
        .as_deref()
        .is_none_or(|ifname| devices[i]["networkData"]["interfaceName"] == ifname);
    match dev.status_entry {
        StatusEntry::Merged | StatusEntry::Pending if ours => devices[i]
            .as_object_mut()
            .is_some_and(|e| e.remove("networkData").is_some()),
        _ => false,
    }
}

/// The version of resource.k8s.io to use, from the API group's discovery document.
pub fn pick_version(group: &Value) -> Option<&'static str> {
    let offered: Vec<&str> = group["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["version"].as_str())
        .collect();
    VERSIONS.into_iter().find(|v| offered.contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1 as r;
    use std::collections::BTreeMap;

    /// Claims and slices in memory, serialized from k8s-openapi's own v1 types so the JSON is
    /// what the API server sends.
    #[derive(Default)]
    pub struct Mem {
        claims: HashMap<(String, String), Value>,
        slices: Vec<Value>,
        pub slice_reads: std::cell::Cell<usize>,
    }

    impl DraSource for Mem {
        fn claim(&self, ns: &str, name: &str) -> Result<Option<Value>, CniError> {
            Ok(self.claims.get(&(ns.into(), name.into())).cloned())
        }
        fn slices(&self, node: Option<&str>, driver: &str) -> Result<Vec<Value>, CniError> {
            self.slice_reads.set(self.slice_reads.get() + 1);
            Ok(self
                .slices
                .iter()
                .filter(|s| {
                    s["spec"]["driver"] == driver && node.is_none_or(|n| s["spec"]["nodeName"] == n)
                })
                .cloned()
                .collect())
        }
    }

    fn claim(name: &str, results: &[(&str, &str, &str, &str)], reserved: &[&str]) -> Value {
        let c = r::ResourceClaim {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Default::default(),
            status: Some(r::ResourceClaimStatus {
                allocation: Some(r::AllocationResult {
                    devices: Some(r::DeviceAllocationResult {
                        results: Some(
                            results
                                .iter()
                                .map(|(req, drv, pool, dev)| r::DeviceRequestAllocationResult {
                                    request: req.to_string(),
                                    driver: drv.to_string(),
                                    pool: pool.to_string(),
                                    device: dev.to_string(),
                                    ..Default::default()
                                })
                                .collect(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                reserved_for: Some(
                    reserved
                        .iter()
                        .map(|u| r::ResourceClaimConsumerReference {
                            resource: "pods".into(),
                            name: format!("pod-{u}"),
                            uid: u.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        };
        serde_json::to_value(c).unwrap()
    }

    fn slice(
        driver: &str,
        node: &str,
        pool: &str,
        gen: i64,
        devices: &[(&str, &[(&str, &str)])],
    ) -> Value {
        let s = r::ResourceSlice {
            metadata: Default::default(),
            spec: r::ResourceSliceSpec {
                driver: driver.into(),
                node_name: Some(node.into()),
                pool: r::ResourcePool {
                    name: pool.into(),
                    generation: gen,
                    resource_slice_count: 1,
                },
                devices: Some(
                    devices
                        .iter()
                        .map(|(name, attrs)| r::Device {
                            name: name.to_string(),
                            attributes: Some(
                                attrs
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            r::DeviceAttribute {
                                                string: Some(v.to_string()),
                                                ..Default::default()
                                            },
                                        )
                                    })
                                    .collect::<BTreeMap<_, _>>(),
                            ),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            },
        };
        serde_json::to_value(s).unwrap()
    }

    fn pod(claims: &[(&str, Option<&str>)]) -> Pod {
        serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": "p", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"resourceClaimStatuses": claims.iter().map(|(n, c)| json!({"name": n, "resourceClaimName": c})).collect::<Vec<_>>()}}))
        .unwrap()
    }

    const NET: &[(&str, &str)] = &[
        (RESOURCE_NAME_ATTRIBUTE, "example.com/vf"),
        (DEVICE_ID_ATTRIBUTE, "0000:3b:02.1"),
    ];

    #[test]
    fn devices_come_with_their_attributes_in_claim_order() {
        let mut m = Mem::default();
        m.claims.insert(
            ("ns".into(), "p-gpu-x1".into()),
            claim(
                "p-gpu-x1",
                &[("gpu", "gpu.example.com", "n1", "gpu-0")],
                &["u1"],
            ),
        );
        m.claims.insert(
            ("ns".into(), "p-net-x2".into()),
            claim(
                "p-net-x2",
                &[
                    ("vf", "sriov.example.com", "n1", "vf-1"),
                    ("vf", "sriov.example.com", "n1", "vf-2"),
                ],
                &["u1"],
            ),
        );
        m.slices.push(slice(
            "gpu.example.com",
            "n1",
            "n1",
            1,
            &[("gpu-0", &[("gpu.example.com/model", "x")])],
        ));
        // An old generation of the pool still lists vf-1 with other attributes.
        m.slices.push(slice(
            "sriov.example.com",
            "n1",
            "n1",
            1,
            &[("vf-1", &[(DEVICE_ID_ATTRIBUTE, "stale")])],
        ));
        m.slices.push(slice(
            "sriov.example.com",
            "n1",
            "n1",
            2,
            &[
                ("vf-1", NET),
                (
                    "vf-2",
                    &[
                        (RESOURCE_NAME_ATTRIBUTE, "example.com/vf"),
                        (DEVICE_ID_ATTRIBUTE, "0000:3b:02.2"),
                    ],
                ),
            ],
        ));
        // Another node's slice of the same pool name is never read.
        m.slices
            .push(slice("sriov.example.com", "n2", "n1", 9, &[("vf-1", &[])]));
        let got = claim_devices(
            &pod(&[
                ("gpu", Some("p-gpu-x1")),
                ("none", None),
                ("net", Some("p-net-x2")),
            ]),
            &m,
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert!(!got[0].is_network());
        assert_eq!(got[0].at.pod_claim, "gpu");
        assert_eq!(got[1].device_id.as_deref(), Some("0000:3b:02.1"));
        assert_eq!(got[1].resource_name.as_deref(), Some("example.com/vf"));
        assert_eq!(got[2].device_id.as_deref(), Some("0000:3b:02.2"));
        assert_eq!(got[2].at.claim, "p-net-x2");
        assert_eq!(got[2].at.request, "vf");
        assert!(got[2].shared_with.is_empty());
        assert_eq!(m.slice_reads.get(), 2, "one read per driver");
    }

    #[test]
    fn a_beta1_device_keeps_its_attributes_under_basic() {
        let mut m = Mem::default();
        m.claims.insert(
            ("ns".into(), "c".into()),
            claim("c", &[("r", "d", "p", "dev")], &[]),
        );
        m.slices.push(json!({"spec": {"driver": "d", "nodeName": "n1", "pool": {"name": "p", "generation": 0, "resourceSliceCount": 1},
            "devices": [{"name": "dev", "basic": {"attributes": {RESOURCE_NAME_ATTRIBUTE: {"string": "x/y"}, DEVICE_ID_ATTRIBUTE: {"string": "id"}}}}]}}));
        let got = claim_devices(&pod(&[("c", Some("c"))]), &m).unwrap();
        assert_eq!(got[0].device_id.as_deref(), Some("id"));
    }

    #[test]
    fn missing_unallocated_and_unpublished_are_errors_naming_pod_claim_request_and_device() {
        let mut m = Mem::default();
        let e = claim_devices(&pod(&[("net", Some("gone"))]), &m).unwrap_err();
        assert!(
            e.msg.contains("ns/p")
                && e.msg.contains("ns/gone")
                && e.msg.contains("\"net\"")
                && e.msg.contains("not found"),
            "{}",
            e.msg
        );
        m.claims.insert(
            ("ns".into(), "c".into()),
            json!({"metadata": {"name": "c"}, "status": {}}),
        );
        let e = claim_devices(&pod(&[("net", Some("c"))]), &m).unwrap_err();
        assert!(
            e.msg.contains("not allocated yet") && e.msg.contains("ns/c"),
            "{}",
            e.msg
        );
        m.claims.insert(
            ("ns".into(), "c".into()),
            claim("c", &[("vf", "sriov.example.com", "n1", "vf-9")], &["u1"]),
        );
        m.slices
            .push(slice("sriov.example.com", "n1", "n1", 1, &[("vf-1", NET)]));
        // Another node's slice with that device does not count.
        m.slices
            .push(slice("sriov.example.com", "n2", "n1", 1, &[("vf-9", NET)]));
        // A device no slice of the node publishes is not a network device (yet): it is
        // returned with the reason, for the allocator to name if a network needed it.
        let got = claim_devices(&pod(&[("net", Some("c"))]), &m).unwrap();
        assert!(!got[0].is_network());
        let why = format!("{} ({})", got[0].at, got[0].unpublished.as_deref().unwrap());
        for part in [
            "claim ns/c",
            "request \"vf\"",
            "device vf-9",
            "driver sriov.example.com",
            "node n1",
        ] {
            assert!(why.contains(part), "{part}: {why}");
        }
        assert_eq!(
            m.slice_reads.get(),
            2,
            "the node's slices, then every slice of the driver"
        );
        // A pool published for all nodes (no nodeName) is found in the second look.
        let mut wide = slice("sriov.example.com", "n1", "n1", 1, &[("vf-9", NET)]);
        wide["spec"].as_object_mut().unwrap().remove("nodeName");
        wide["spec"]["allNodes"] = json!(true);
        m.slices.push(wide);
        let got = claim_devices(&pod(&[("net", Some("c"))]), &m).unwrap();
        assert!(got[0].is_network(), "{got:?}");
    }

    #[test]
    fn an_extended_resource_claim_is_strict() {
        let mut m = Mem::default();
        m.claims.insert(
            ("ns".into(), "p-ext".into()),
            claim(
                "p-ext",
                &[
                    ("container-0-request-0", "d", "n1", "vf-1"),
                    ("container-0-request-1", "d", "n1", "vf-2"),
                ],
                &["u1"],
            ),
        );
        m.slices.push(slice(
            "d",
            "n1",
            "n1",
            1,
            &[
                ("vf-1", NET),
                (
                    "vf-2",
                    &[
                        (RESOURCE_NAME_ATTRIBUTE, "example.com/other"),
                        (DEVICE_ID_ATTRIBUTE, "id-2"),
                    ],
                ),
            ],
        ));
        let ext = |mappings: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": "p", "uid": "u1"},
                "spec": {"nodeName": "n1", "containers": []},
                "status": {"extendedResourceClaimStatus": {"resourceClaimName": "p-ext", "requestMappings": mappings}}}))
            .unwrap()
        };
        let p = ext(
            json!([{"containerName": "c", "resourceName": "example.com/vf", "requestName": "container-0-request-0"}]),
        );
        assert!(has_claims(&p));
        let got = claim_devices(&p, &m).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].device_id.as_deref(), Some("0000:3b:02.1"));
        assert_eq!(got[0].at.pod_claim, "extended resources");
        // A device of another resource than the mapping's, or a request not in the claim: errors.
        let e = claim_devices(&ext(json!([{"containerName": "c", "resourceName": "example.com/vf", "requestName": "container-0-request-1"}])), &m).unwrap_err();
        assert!(
            e.msg.contains("vf-2")
                && e.msg.contains("example.com/other")
                && e.msg.contains("p-ext"),
            "{}",
            e.msg
        );
        let e = claim_devices(&ext(json!([{"containerName": "c", "resourceName": "example.com/vf", "requestName": "nope"}])), &m).unwrap_err();
        assert!(
            e.msg.contains("\"nope\"") && e.msg.contains("not in the claim"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn a_claim_shared_with_another_pod_is_marked() {
        let mut m = Mem::default();
        m.claims.insert(
            ("ns".into(), "c".into()),
            claim("c", &[("vf", "d", "n1", "vf-1")], &["u1", "u2"]),
        );
        m.slices.push(slice("d", "n1", "n1", 1, &[("vf-1", NET)]));
        let got = claim_devices(&pod(&[("net", Some("c"))]), &m).unwrap();
        assert_eq!(got[0].shared_with, ["ns/pod-u2"]);
    }

    fn dev(entry: StatusEntry) -> ClaimDevice {
        ClaimDevice {
            namespace: "ns".into(),
            claim: "c".into(),
            pod_claim: "net".into(),
            request: "vf".into(),
            driver: "d".into(),
            pool: "n1".into(),
            device: "vf-1".into(),
            share_id: None,
            interface: None,
            sandbox: None,
            status_entry: entry,
        }
    }

    #[test]
    fn network_data_is_added_merged_and_taken_out_again() {
        let data = NetworkData {
            interface_name: "net1".into(),
            ips: vec!["10.1.0.5/24".into()],
            hardware_address: Some("02:00:00:00:00:01".into()),
        };
        // No entry yet: plexus creates it, and DEL removes it whole; another device's stays.
        let mut c = claim("c", &[("vf", "d", "n1", "vf-1")], &["u1"]);
        c["status"]["devices"] =
            json!([{"driver": "d", "pool": "n1", "device": "vf-2", "conditions": []}]);
        let made = put_network_data(
            &mut c,
            &dev(StatusEntry::None),
            &data,
            "m",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(made, StatusEntry::Created);
        let typed: r::ResourceClaim = serde_json::from_value(c.clone()).unwrap();
        let entry = &typed.status.as_ref().unwrap().devices.as_ref().unwrap()[1];
        let nd = entry.network_data.as_ref().unwrap();
        assert_eq!(nd.interface_name.as_deref(), Some("net1"));
        assert_eq!(nd.ips.as_deref(), Some(&["10.1.0.5/24".to_string()][..]));
        assert_eq!(nd.hardware_address.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(entry.conditions.as_ref().unwrap()[0].type_, "Ready");
        assert!(remove_network_data(&mut c, &dev(made)));
        assert_eq!(c["status"]["devices"].as_array().unwrap().len(), 1);
        assert!(!remove_network_data(&mut c, &dev(made)), "twice is nothing");
        // The driver's entry: plexus sets networkData only, and DEL takes only that.
        c["status"]["devices"] = json!([{"driver": "d", "pool": "n1", "device": "vf-1", "conditions": [{"type": "Prepared"}]}]);
        let merged = put_network_data(&mut c, &dev(StatusEntry::None), &data, "m", "t");
        assert_eq!(merged, StatusEntry::Merged);
        assert_eq!(
            c["status"]["devices"][0]["conditions"][0]["type"],
            "Prepared"
        );
        // networkData another writer set (another interface) is not plexus's to take.
        let other = ClaimDevice {
            interface: Some("net9".into()),
            ..dev(merged)
        };
        assert!(!remove_network_data(&mut c, &other));
        let ours = ClaimDevice {
            interface: Some("net1".into()),
            ..dev(merged)
        };
        assert!(remove_network_data(&mut c, &ours));
        assert_eq!(
            c["status"]["devices"],
            json!([{"driver": "d", "pool": "n1", "device": "vf-1", "conditions": [{"type": "Prepared"}]}])
        );
    }

    #[test]
    fn an_entry_plexus_made_for_another_sandbox_is_left_alone() {
        let data = NetworkData {
            interface_name: "net1".into(),
            ..Default::default()
        };
        let mut c = claim("c", &[("vf", "d", "n1", "vf-1")], &["u1"]);
        let new = ClaimDevice {
            sandbox: Some("new-sandbox".into()),
            ..dev(StatusEntry::Pending)
        };
        let what = format!(
            "net1 of pod ns/p {} for network ns/vf",
            sandbox_mark("new-sandbox")
        );
        assert_eq!(
            put_network_data(&mut c, &new, &data, &what, "t"),
            StatusEntry::Created
        );
        // A late DEL of the pod's old sandbox: not its entry.
        let old = ClaimDevice {
            sandbox: Some("old-sandbox".into()),
            ..dev(StatusEntry::Created)
        };
        assert!(!remove_network_data(&mut c, &old));
        assert_eq!(c["status"]["devices"].as_array().unwrap().len(), 1);
        assert!(remove_network_data(&mut c, &new));
        assert_eq!(c["status"]["devices"], json!([]));
    }

    #[test]
    fn network_data_from_a_result() {
        let (res, _) = crate::cni::CniResult::from_value(
            json!({"cniVersion": "1.0.0",
                "interfaces": [{"name": "vf-1-host"}, {"name": "net1", "mac": "02:00:00:00:00:07", "sandbox": "/run/netns/x"}],
                "ips": [{"address": "10.1.0.5/24", "interface": 1}, {"address": "fd00::5/64", "interface": 1}, {"address": "192.0.2.1/32", "interface": 0}]}),
            crate::cni::Version::V1_0_0,
        )
        .unwrap();
        let d = NetworkData::from_result("net1", &res);
        assert_eq!(d.interface_name, "net1");
        assert_eq!(d.ips, ["10.1.0.5/24", "fd00::5/64"]);
        assert_eq!(d.hardware_address.as_deref(), Some("02:00:00:00:00:07"));
    }

    #[test]
    fn v1_is_preferred_then_the_betas() {
        let g = |vs: &[&str]| json!({"kind": "APIGroup", "name": "resource.k8s.io", "versions": vs.iter().map(|v| json!({"groupVersion": format!("resource.k8s.io/{v}"), "version": v})).collect::<Vec<_>>()});
        assert_eq!(pick_version(&g(&["v1beta1", "v1", "v1beta2"])), Some("v1"));
        assert_eq!(pick_version(&g(&["v1beta1", "v1beta2"])), Some("v1beta2"));
        assert_eq!(pick_version(&g(&["v1beta1", "v1alpha3"])), Some("v1beta1"));
        assert_eq!(pick_version(&g(&["v1alpha3"])), None);
    }
}
