//! Device IDs the kubelet allocated to a pod (for SR-IOV and other device-plugin networks), read
//! from the device plugin checkpoint file, and their allocation to the pod's networks.
//!
//! A NAD annotated `k8s.v1.cni.cncf.io/resourceName: <resource>` takes the next ID of that resource
//! that the kubelet allocated to this pod; several NADs on one resource take distinct IDs in order.

use super::annotations::DEVICE_REQUEST_KEY;
use super::dra::{ClaimDevice, DraDevice, DEVICE_ID_ATTRIBUTE, RESOURCE_NAME_ATTRIBUTE};
use super::RESOURCE_NAME_ANNOTATION;
use crate::cni::error::{CniError, Code};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const DEFAULT_CHECKPOINT: &str = "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint";
pub const DEFAULT_POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// NPWG device-info spec: device plugins write `dp/`, CNIs write `cni/`.
pub const DEFAULT_DEVICE_INFO_DIR: &str = "/var/run/k8s.cni.cncf.io/devinfo";

/// The file a device plugin writes for one device (NPWG device-info spec).
pub fn dp_device_info_path(dir: &Path, resource: &str, device_id: &str) -> std::path::PathBuf {
    dir.join("dp").join(format!(
        "{}-{}-device.json",
        resource.replace('/', "-"),
        device_id.replace('/', "-")
    ))
}

/// The file plexus asks a CNI to write for one attachment.
pub fn cni_device_info_path(
    dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> std::path::PathBuf {
    dir.join("cni").join(format!(
        "{}-{container_id}_{ifname}-device.json",
        network.replace('/', "-")
    ))
}

/// Largest device-info file read (a real one is a few hundred bytes).
const MAX_DEVICE_INFO_BYTES: u64 = 64 << 10;

/// The device-info network-status shows: the CNI's if it wrote one, else the device plugin's.
/// Each is read only if it is a regular file of at most 64 KiB; the CNI's, at a path plexus
/// chose, is never followed through a symlink.
pub fn device_info(cni_file: Option<&str>, dp_file: &Path) -> Option<Value> {
    let read = |p: &Path, nofollow: bool| -> Option<Value> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
        if nofollow {
            flags |= libc::O_NOFOLLOW;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(p)
            .ok()?;
        let meta = f.metadata().ok()?;
        if !meta.is_file() || meta.len() > MAX_DEVICE_INFO_BYTES {
            return None;
        }
        let mut bytes = Vec::new();
        f.take(MAX_DEVICE_INFO_BYTES).read_to_end(&mut bytes).ok()?;
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(Value::is_object)
    };
    cni_file
        .and_then(|f| read(Path::new(f), true))
        .or_else(|| read(dp_file, false))
}
/// Where the kubelet says which devices it allocated (the call's config: the daemon serves
/// requests whose configs may differ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubelet {
    /// The PodResources gRPC socket, asked when it exists.
    pub pod_resources: std::path::PathBuf,
    /// The device-plugin checkpoint, read otherwise.
    pub checkpoint: std::path::PathBuf,
    pub timeout: std::time::Duration,
}

impl Kubelet {
    pub fn of(conf: &crate::config::NetConf) -> Kubelet {
        Kubelet {
            pod_resources: conf.pod_resources_socket.clone(),
            checkpoint: conf.device_checkpoint_file.clone(),
            timeout: conf.api_timeout,
        }
    }
}

/// Largest checkpoint file read.
const MAX_CHECKPOINT_BYTES: u64 = 16 << 20;

/// Devices allocated to one pod, by resource name, in the kubelet's order (all containers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDevices(pub BTreeMap<String, Vec<String>>);

/// Parse a kubelet device-plugin checkpoint and keep this pod's entries. Both shapes are read:
/// `DeviceIDs` as a list (kubelet < 1.20) or as a map of NUMA node to list (≥ 1.20).
pub fn from_checkpoint(bytes: &[u8], pod_uid: &str) -> Result<PodDevices, CniError> {
    let bad =
        |why: String| CniError::new(Code::DECODE, format!("kubelet device checkpoint: {why}"));
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let entries = v
        .get("Data")
        .and_then(|d| d.get("PodDeviceEntries"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no Data.PodDeviceEntries".into()))?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::HashMap::new();
    for e in entries.iter().filter(|e| e["PodUID"] == pod_uid) {
        let resource = e["ResourceName"]
            .as_str()
            .ok_or_else(|| bad("entry without ResourceName".into()))?;
        let ids: Vec<String> = match &e["DeviceIDs"] {
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Value::Object(numa) => {
                // Order by NUMA node, numerically ("-1" for none comes first).
                let mut nodes: Vec<(&String, &Value)> = numa.iter().collect();
                nodes.sort_by_key(|(k, _)| k.parse::<i64>().unwrap_or(i64::MAX));
                nodes
                    .into_iter()
                    .flat_map(|(_, ids)| {
                        ids.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| x.as_str().map(String::from))
                    })
                    .collect()
            }
            Value::Null => vec![],
            other => return Err(bad(format!("DeviceIDs of {resource} is {other}"))),
        };
        push_new(&mut out, &mut seen, resource, ids);
    }
    Ok(PodDevices(out))
}

/// Append to `resource`'s list the IDs it does not hold yet, keeping their order; `seen` remembers
/// each resource's IDs across calls, so reading N IDs is linear however many entries list them
/// (a checkpoint may list millions, and the kubelet may list one twice).
fn push_new(
    out: &mut BTreeMap<String, Vec<String>>,
    seen: &mut std::collections::HashMap<String, std::collections::HashSet<String>>,
    resource: &str,
    ids: impl IntoIterator<Item = String>,
) {
    let list = out.entry(resource.to_string()).or_default();
    let known = seen.entry(resource.to_string()).or_default();
    for id in ids {
        if known.insert(id.clone()) {
            list.push(id);
        }
    }
}

/// The UID the kubelet files the pod's devices under in its checkpoint: the API's UID, except for
/// a static pod, whose mirror in the API has a UID of its own and carries the kubelet's in
/// `kubernetes.io/config.mirror`.
pub fn checkpoint_uid(pod: &k8s_openapi::api::core::v1::Pod) -> &str {
    super::annotation(pod, super::CONFIG_MIRROR_ANNOTATION)
        .filter(|m| !m.is_empty())
        .or(pod.metadata.uid.as_deref())
        .unwrap_or("")
}

/// The pod's devices from the checkpoint file; a missing file means no devices.
pub fn read_checkpoint(path: &Path, pod_uid: &str) -> Result<PodDevices, CniError> {
    use std::io::Read;
    let io = |e: std::io::Error| CniError::new(Code::IO, format!("{}: {e}", path.display()));
    let f = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PodDevices::default()),
        other => other.map_err(io)?,
    };
    let mut bytes = Vec::new();
    f.take(MAX_CHECKPOINT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CHECKPOINT_BYTES {
        return Err(CniError::new(
            Code::IO,
            format!(
                "{}: larger than {MAX_CHECKPOINT_BYTES} bytes",
                path.display()
            ),
        ));
    }
    from_checkpoint(&bytes, pod_uid)
}

/// A gRPC channel over a unix socket (the kubelet's, a container runtime's), with `timeout` on
/// connecting and on every call.
pub async fn unix_channel(
    socket: &Path,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://unix.invalid")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

/// The pod's devices from the kubelet's PodResources v1 API on its unix socket: `Get` where the
/// kubelet has it, else `List` filtered to the pod.
pub async fn from_pod_resources(
    socket: &Path,
    namespace: &str,
    name: &str,
    timeout: std::time::Duration,
) -> Result<PodDevices, CniError> {
    use super::podresources::pod_resources_lister_client::PodResourcesListerClient;
    use super::podresources::{GetPodResourcesRequest, ListPodResourcesRequest, PodResources};
    let err = |what: &str, e: &dyn std::fmt::Display| {
        CniError::new(
            Code::TRY_AGAIN_LATER,
            format!("kubelet PodResources at {}: {what}: {e}", socket.display()),
        )
    };
    let channel = unix_channel(socket, timeout)
        .await
        .map_err(|e| err("connect", &e))?;
    let mut client = PodResourcesListerClient::new(channel);
    let pod: Option<PodResources> = match client
        .get(GetPodResourcesRequest {
            pod_name: name.into(),
            pod_namespace: namespace.into(),
        })
        .await
    {
        Ok(r) => r.into_inner().pod_resources,
        // Get is behind a feature gate on older kubelets: fall back to List.
        Err(s) if s.code() == tonic::Code::Unimplemented => client
            .list(ListPodResourcesRequest {})
            .await
            .map_err(|e| err("List", &e))?
            .into_inner()
            .pod_resources
            .into_iter()
            .find(|p| p.namespace == namespace && p.name == name),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(err("Get", &s)),
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::HashMap::new();
    for c in pod.map(|p| p.containers).unwrap_or_default() {
        for d in c.devices {
            push_new(&mut out, &mut seen, &d.resource_name, d.device_ids);
        }
    }
    Ok(PodDevices(out))
}

/// Hands out a pod's device IDs to its networks, each at most once: the device plugins' (from
/// the kubelet) and the DRA claims' (whose network devices join their resource's list after the
/// kubelet's, in claim order).
#[derive(Debug, Default)]
pub struct Allocator {
    devices: PodDevices,
    /// Where each DRA-allocated ID came from, by (resource, ID).
    claimed: HashMap<(String, String), DraDevice>,
    /// Claim devices that are not network devices (no resourceName/deviceID attributes).
    others: Vec<DraDevice>,
    taken: Vec<String>,
}

/// One device handed out: its ID, and the claim it came from when DRA allocated it.
pub type Taken = (String, Option<ClaimDevice>);

impl Allocator {
    pub fn new(devices: PodDevices) -> Allocator {
        Self::with_claims(devices, vec![])
    }

    pub fn with_claims(mut devices: PodDevices, dra: Vec<DraDevice>) -> Allocator {
        let mut claimed = HashMap::new();
        let mut others = vec![];
        let mut seen = std::collections::HashMap::new();
        for (r, ids) in &devices.0 {
            seen.insert(r.clone(), ids.iter().cloned().collect());
        }
        for d in dra {
            match (&d.resource_name, &d.device_id) {
                (Some(r), Some(id)) => {
                    push_new(&mut devices.0, &mut seen, r, [id.clone()]);
                    claimed
                        .entry((r.clone(), id.clone()))
                        .or_insert_with(|| d.clone());
                }
                _ => others.push(d),
            }
        }
        Allocator {
            devices,
            claimed,
            others,
            taken: vec![],
        }
    }

    /// The claim a free ID came from; refused if that claim is shared with another pod.
    fn claim_of(
        &self,
        resource: &str,
        id: &str,
        network: &str,
    ) -> Result<Option<ClaimDevice>, CniError> {
        let Some(d) = self.claimed.get(&(resource.to_string(), id.to_string())) else {
            return Ok(None);
        };
        if !d.shared_with.is_empty() {
            return Err(CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "network {network}: {} is reserved for other pods too ({}); a network device cannot be in two pods",
                    d.at,
                    d.shared_with.join(", ")
                ),
            ));
        }
        Ok(Some(d.at.clone()))
    }

    /// The claim devices that are not network devices, for an error message.
    fn passed_over(&self) -> String {
        if self.others.is_empty() {
            return String::new();
        }
        let list: Vec<String> = self
            .others
            .iter()
            .map(|d| match &d.unpublished {
                Some(why) => format!("{} ({why})", d.at),
                None => format!(
                    "{} (no {RESOURCE_NAME_ATTRIBUTE} and {DEVICE_ID_ATTRIBUTE} attributes)",
                    d.at
                ),
            })
            .collect();
        format!("; claim devices passed over: {}", list.join(", "))
    }

    /// The next free ID of `resource`; or `wanted` (a selection's `deviceID`) if it was
    /// allocated to this pod under that resource and it is still free.
    pub fn take(
        &mut self,
        resource: &str,
        wanted: Option<&str>,
        network: &str,
    ) -> Result<Taken, CniError> {
        let ids = self.devices.0.get(resource).cloned().unwrap_or_default();
        let id = match wanted {
            Some(w) if ids.iter().any(|i| i == w) && !self.taken.iter().any(|t| t == w) => w.to_string(),
            Some(w) => {
                return Err(CniError::new(
                    Code::INVALID_CONFIG,
                    format!("network {network}: deviceID \"{w}\" is not a free device of {resource} that the kubelet or a claim allocated to this pod ({ids:?})"),
                ))
            }
            None => ids.iter().find(|i| !self.taken.contains(i)).cloned().ok_or_else(|| {
                // A device no slice publishes yet may be the one: try again later.
                let lagging = self.others.iter().any(|d| d.unpublished.is_some());
                CniError::new(
                    if lagging { Code::TRY_AGAIN_LATER } else { Code::INVALID_CONFIG },
                    format!(
                        "network {network}: no free {resource} device: the kubelet and the pod's claims allocated {} to this pod ({ids:?}) and all are taken by earlier networks{}",
                        ids.len(),
                        self.passed_over()
                    ),
                )
            })?,
        };
        let claim = self.claim_of(resource, &id, network)?;
        self.taken.push(id.clone());
        Ok((id, claim))
    }

    /// The device that request `request` of the pod's claim `claim` (the pod's name for it, or
    /// the ResourceClaim's) allocated: it must be a free network device of `resource`.
    /// `wanted`: the device it must be (one a running sandbox holds).
    pub fn take_request(
        &mut self,
        resource: &str,
        claim: &str,
        request: &str,
        wanted: Option<&str>,
        network: &str,
    ) -> Result<Taken, CniError> {
        // A request names its results, and a subrequest's too (`<request>/<subrequest>`, the
        // alternative a `firstAvailable` request was allocated).
        let is = |d: &DraDevice| {
            (d.at.pod_claim == claim || d.at.claim == claim)
                && (d.at.request == request
                    || d.at
                        .request
                        .strip_prefix(request)
                        .is_some_and(|rest| rest.starts_with('/')))
        };
        let err = |msg: String| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!("network {network}: {DEVICE_REQUEST_KEY} \"{claim}/{request}\": {msg}"),
            )
        };
        let mut mine: Vec<&DraDevice> = self.claimed.values().filter(|d| is(d)).collect();
        mine.sort_by(|a, b| a.at.device.cmp(&b.at.device));
        if mine.is_empty() {
            return Err(match self.others.iter().find(|d| is(d)) {
                Some(DraDevice {
                    at,
                    unpublished: Some(why),
                    ..
                }) => CniError::new(
                    Code::TRY_AGAIN_LATER,
                    format!("network {network}: {DEVICE_REQUEST_KEY} \"{claim}/{request}\": {at}: {why}"),
                ),
                Some(d) => err(format!(
                    "{} has no {RESOURCE_NAME_ATTRIBUTE} and {DEVICE_ID_ATTRIBUTE} attributes: not a network device",
                    d.at
                )),
                None => err("no such claim request allocated a device to this pod".into()),
            });
        }
        let Some(d) = mine.iter().find(|d| {
            d.resource_name.as_deref() == Some(resource)
                && wanted.is_none_or(|w| d.device_id.as_deref() == Some(w))
                && !self
                    .taken
                    .iter()
                    .any(|t| Some(t.as_str()) == d.device_id.as_deref())
        }) else {
            let what: Vec<String> = mine
                .iter()
                .map(|d| format!("{} of {}", d.at, d.resource_name.as_deref().unwrap_or("")))
                .collect();
            let mut e = err(format!(
                "no free device of {resource} (the NAD's {RESOURCE_NAME_ANNOTATION}) among {}",
                what.join(", ")
            ));
            // Another device of the request no slice publishes yet may be the one.
            if self.others.iter().any(|d| is(d) && d.unpublished.is_some()) {
                e.code = Code::TRY_AGAIN_LATER;
            }
            return Err(e);
        };
        let id = d.device_id.clone().expect("a network device");
        let claim = self.claim_of(resource, &id, network)?;
        self.taken.push(id.clone());
        Ok((id, claim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checkpoint() -> Vec<u8> {
        json!({"Data": {"PodDeviceEntries": [
            {"PodUID": "pod-a", "ContainerName": "c1", "ResourceName": "intel.com/sriov_netdevice",
             "DeviceIDs": {"1": ["0000:3b:02.3"], "0": ["0000:3b:02.1", "0000:3b:02.2"]}, "AllocResp": "CgA="},
            {"PodUID": "pod-a", "ContainerName": "c2", "ResourceName": "intel.com/sriov_netdevice",
             "DeviceIDs": {"-1": ["0000:3b:02.4"]}, "AllocResp": "CgA="},
            {"PodUID": "pod-a", "ContainerName": "c1", "ResourceName": "nvidia.com/gpu", "DeviceIDs": ["GPU-1"], "AllocResp": ""},
            {"PodUID": "pod-b", "ContainerName": "c", "ResourceName": "intel.com/sriov_netdevice", "DeviceIDs": {"0": ["0000:3b:02.9"]}}
        ], "RegisteredDevices": {"intel.com/sriov_netdevice": ["0000:3b:02.1"]}}, "Checksum": 1234})
        .to_string()
        .into_bytes()
    }

    // Fuzz finding F4 (docs/fuzzing.md): duplicate IDs were dropped in quadratic time.
    #[test]
    fn many_ids_are_read_in_linear_time() {
        let mut ids: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        ids.push("7".into());
        let cp = json!({"Data": {"PodDeviceEntries": [
            {"PodUID": "p", "ResourceName": "r", "DeviceIDs": ids},
            {"PodUID": "p", "ResourceName": "r", "DeviceIDs": ["8", "x"]}
        ]}});
        let t = std::time::Instant::now();
        let d = from_checkpoint(cp.to_string().as_bytes(), "p").unwrap();
        assert_eq!(d.0["r"].len(), 100_001);
        assert_eq!(d.0["r"].last().unwrap(), "x");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn many_entries_of_one_resource_are_read_in_linear_time() {
        let entries: Vec<Value> = (0..20_000)
            .map(|i| json!({"PodUID": "p", "ResourceName": "r", "DeviceIDs": [i.to_string(), "dup"]}))
            .collect();
        let cp = json!({"Data": {"PodDeviceEntries": entries}});
        let t = std::time::Instant::now();
        let d = from_checkpoint(cp.to_string().as_bytes(), "p").unwrap();
        assert_eq!(d.0["r"].len(), 20_001);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn reads_both_checkpoint_shapes_for_one_pod() {
        let d = from_checkpoint(&checkpoint(), "pod-a").unwrap();
        assert_eq!(
            d.0["intel.com/sriov_netdevice"],
            [
                "0000:3b:02.1",
                "0000:3b:02.2",
                "0000:3b:02.3",
                "0000:3b:02.4"
            ]
        );
        assert_eq!(d.0["nvidia.com/gpu"], ["GPU-1"]);
        assert!(from_checkpoint(&checkpoint(), "pod-z")
            .unwrap()
            .0
            .is_empty());
        assert!(from_checkpoint(b"{}", "x").is_err());
        assert!(from_checkpoint(b"garbage", "x").is_err());
    }

    #[test]
    fn a_static_pods_devices_are_filed_under_the_kubelets_uid() {
        let pod = |v: serde_json::Value| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(v).unwrap()
        };
        let plain = pod(json!({"metadata": {"name": "a", "uid": "pod-a"}}));
        assert_eq!(checkpoint_uid(&plain), "pod-a");
        // A mirror pod: its own API UID, the kubelet's UID (what the checkpoint uses) in the
        // mirror annotation.
        let mirror = pod(
            json!({"metadata": {"name": "etcd-node1", "uid": "mirror-uid",
            "annotations": {"kubernetes.io/config.mirror": "pod-b", "kubernetes.io/config.source": "file"}}}),
        );
        assert_eq!(checkpoint_uid(&mirror), "pod-b");
        let d = from_checkpoint(&checkpoint(), checkpoint_uid(&mirror)).unwrap();
        assert_eq!(d.0["intel.com/sriov_netdevice"], ["0000:3b:02.9"]);
    }

    #[test]
    fn device_info_reads_are_capped_and_the_cnis_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("dp.json");
        std::fs::write(&good, r#"{"type":"pci","version":"1.1.0"}"#).unwrap();
        let cni = d.path().join("cni.json");
        std::fs::write(&cni, r#"{"type":"pci","version":"1.1.0","pci":{}}"#).unwrap();
        assert!(device_info(Some(cni.to_str().unwrap()), &good).unwrap()["pci"].is_object());
        // A symlink where the CNI's file should be: not followed; the device plugin's instead.
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&cni, &link).unwrap();
        let v = device_info(Some(link.to_str().unwrap()), &good).unwrap();
        assert!(v.get("pci").is_none(), "{v}");
        // Too large, or not a regular file: ignored.
        let big = d.path().join("big.json");
        std::fs::write(&big, format!("{{\"x\":\"{}\"}}", "a".repeat(70 << 10))).unwrap();
        assert!(device_info(None, &big).is_none());
        assert!(device_info(None, d.path()).is_none());
    }

    #[test]
    fn missing_checkpoint_is_no_devices() {
        assert!(read_checkpoint(Path::new("/nonexistent/checkpoint"), "x")
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn distinct_ids_in_order_and_a_clear_error_when_they_run_out() {
        let mut a = Allocator::new(from_checkpoint(&checkpoint(), "pod-a").unwrap());
        let r = "intel.com/sriov_netdevice";
        assert_eq!(a.take(r, None, "ns/a").unwrap().0, "0000:3b:02.1");
        assert_eq!(
            a.take(r, Some("0000:3b:02.3"), "ns/b").unwrap().0,
            "0000:3b:02.3"
        );
        assert_eq!(a.take(r, None, "ns/c").unwrap().0, "0000:3b:02.2");
        assert_eq!(a.take(r, None, "ns/d").unwrap().0, "0000:3b:02.4");
        let e = a.take(r, None, "ns/e").unwrap_err();
        assert!(
            e.msg.contains("allocated 4") && e.msg.contains("ns/e"),
            "{}",
            e.msg
        );
        // An annotation cannot pick a device the kubelet did not give this pod.
        let mut a = Allocator::new(from_checkpoint(&checkpoint(), "pod-a").unwrap());
        assert!(a
            .take(r, Some("0000:3b:02.9"), "ns/x")
            .unwrap_err()
            .msg
            .contains("not a free device"));
        assert!(a.take("other.com/none", None, "ns/y").is_err());
    }

    fn dra(claim: &str, request: &str, device: &str, attrs: Option<(&str, &str)>) -> DraDevice {
        DraDevice {
            at: ClaimDevice {
                namespace: "ns".into(),
                claim: format!("pod-{claim}-x"),
                pod_claim: claim.into(),
                request: request.into(),
                driver: "d".into(),
                pool: "n1".into(),
                device: device.into(),
                share_id: None,
                interface: None,
                sandbox: None,
                status_entry: Default::default(),
            },
            resource_name: attrs.map(|a| a.0.to_string()),
            device_id: attrs.map(|a| a.1.to_string()),
            shared_with: vec![],
            unpublished: None,
        }
    }

    #[test]
    fn claim_devices_follow_the_kubelets_and_say_where_they_came_from() {
        let r = "intel.com/sriov_netdevice";
        let mut a = Allocator::with_claims(
            from_checkpoint(&checkpoint(), "pod-a").unwrap(),
            vec![
                dra("gpu", "g", "gpu-0", None),
                dra("net", "vf", "vf-1", Some((r, "0000:5e:00.1"))),
                // The kubelet's ID again (a driver publishing the same VF): handed out once.
                dra("net", "vf", "vf-2", Some((r, "0000:3b:02.1"))),
            ],
        );
        for want in [
            "0000:3b:02.1",
            "0000:3b:02.2",
            "0000:3b:02.3",
            "0000:3b:02.4",
        ] {
            assert_eq!(a.take(r, None, "ns/n").unwrap().0, want);
        }
        let (id, claim) = a.take(r, None, "ns/n").unwrap();
        assert_eq!(id, "0000:5e:00.1");
        let claim = claim.unwrap();
        assert_eq!(
            (
                claim.claim.as_str(),
                claim.request.as_str(),
                claim.device.as_str()
            ),
            ("pod-net-x", "vf", "vf-1")
        );
        let e = a.take(r, None, "ns/last").unwrap_err();
        for part in [
            "ns/last",
            "no free",
            "passed over",
            "pod-gpu-x",
            "request \"g\"",
            "gpu-0",
            "no k8s.cni.cncf.io/resourceName",
        ] {
            assert!(e.msg.contains(part), "{part}: {}", e.msg);
        }
    }

    #[test]
    fn a_device_request_picks_its_claims_device_or_says_why_not() {
        let r = "example.com/vf";
        let claims = || {
            vec![
                dra("a", "vf", "vf-1", Some((r, "id-1"))),
                dra("b", "vf", "vf-2", Some((r, "id-2"))),
                dra("b", "fast", "vf-3", Some(("example.com/other", "id-3"))),
                dra("gpu", "g", "gpu-0", None),
            ]
        };
        let mut a = Allocator::with_claims(PodDevices::default(), claims());
        // By the pod's name for the claim, or the ResourceClaim's.
        assert_eq!(
            a.take_request(r, "b", "vf", None, "ns/x").unwrap().0,
            "id-2"
        );
        assert_eq!(
            a.take_request(r, "pod-a-x", "vf", None, "ns/y").unwrap().0,
            "id-1"
        );
        // Order-based networks get what is left; a request's device is not handed out twice.
        assert!(a.take(r, None, "ns/z").is_err());
        let e = a.take_request(r, "b", "vf", None, "ns/w").unwrap_err();
        assert!(e.msg.contains("no free device"), "{}", e.msg);
        let e = a.take_request(r, "b", "fast", None, "ns/w").unwrap_err();
        assert!(
            e.msg.contains("example.com/other") && e.msg.contains("vf-3"),
            "{}",
            e.msg
        );
        let e = a.take_request(r, "gpu", "g", None, "ns/w").unwrap_err();
        assert!(
            e.msg.contains("not a network device") && e.msg.contains("gpu-0"),
            "{}",
            e.msg
        );
        let e = a.take_request(r, "c", "vf", None, "ns/w").unwrap_err();
        assert!(e.msg.contains("no such claim request"), "{}", e.msg);
        // A subrequest's device answers to its request's name; an unpublished device is a
        // reason to try again.
        let mut gone = dra("c", "late", "vf-9", None);
        gone.unpublished = Some("no ResourceSlice of driver d on node n1 publishes it".into());
        let mut a = Allocator::with_claims(
            PodDevices::default(),
            vec![dra("c", "vfs/fast", "vf-5", Some((r, "id-5"))), gone],
        );
        assert_eq!(
            a.take_request(r, "c", "vfs", None, "ns/s").unwrap().0,
            "id-5"
        );
        assert!(
            a.take_request(r, "c", "vf", None, "ns/s").is_err(),
            "a prefix is not a request"
        );
        let e = a.take_request(r, "c", "late", None, "ns/s").unwrap_err();
        assert_eq!(e.code, Code::TRY_AGAIN_LATER);
        // Order-based: none free while one is unpublished is also a reason to try again.
        assert_eq!(
            a.take(r, None, "ns/o").unwrap_err().code,
            Code::TRY_AGAIN_LATER
        );
        // A held device: exactly that one.
        let mut a = Allocator::with_claims(
            PodDevices::default(),
            vec![
                dra("c", "vf", "vf-1", Some((r, "id-1"))),
                dra("c", "vf", "vf-2", Some((r, "id-2"))),
            ],
        );
        assert_eq!(
            a.take_request(r, "c", "vf", Some("id-2"), "ns/h")
                .unwrap()
                .0,
            "id-2"
        );
        assert!(a.take_request(r, "c", "vf", Some("id-2"), "ns/h").is_err());
        assert!(
            e.msg.contains("vf-9") && e.msg.contains("publishes"),
            "{}",
            e.msg
        );
        // A claim shared with another pod never gives its network device to this one.
        let mut shared = dra("a", "vf", "vf-1", Some((r, "id-1")));
        shared.shared_with = vec!["ns/other".into()];
        let mut a = Allocator::with_claims(PodDevices::default(), vec![shared]);
        let e = a.take(r, None, "ns/v").unwrap_err();
        assert!(
            e.msg.contains("ns/other") && e.msg.contains("two pods"),
            "{}",
            e.msg
        );
    }
}
