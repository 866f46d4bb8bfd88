//! The planner: a pure function from the request, the config and what the cluster and the config
//! files say, to the ordered list of attachments. It does no I/O of its own: files come through
//! [`NetworkFiles`], pods and NADs through [`ClusterView`].

use crate::cni::error::{invalid_config, CniError, Code};
use crate::cni::request::validate_ifname;
use crate::config::{resolve_reference, NetConf, Network, NetworkFiles};
use crate::k8s::annotations::{parse_networks, parse_short, NetworkSelection, DEVICE_REQUEST_KEY};
use crate::k8s::devices::Allocator;
use crate::k8s::dra::ClaimDevice;
use crate::k8s::RESOURCE_NAME_ANNOTATION;
use crate::k8s::{
    annotation, ClusterView, NetworkAttachmentDefinition, DEFAULT_NETWORK_ANNOTATION,
    MAX_NAD_CONFIG_BYTES, NETWORKS_ANNOTATION,
};
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::net::IpAddr;

/// What an attachment gives its plugins besides the runtime's env: capability args (each plugin
/// sees those it declares, as `runtimeConfig`) and keys merged into every plugin's `args.cni`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegateInputs {
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    #[serde(default)]
    pub cni_args: Map<String, Value>,
}

/// Which element of the pod's selection annotation an attachment comes from: the identity
/// hot-plug diffs by (NAD, requested interface, and the occurrence of that pair), and what else
/// the element asked (a change of it is not the same attachment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectionRef {
    /// `namespace/name` of the NAD.
    pub nad: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// 0 for the first element with this NAD and interface, 1 for the next…
    #[serde(default)]
    pub occurrence: usize,
    /// The element's other keys (ips, mac, cni-args…), canonical.
    #[serde(default)]
    pub params: Value,
}

/// One network a pod gets, with what was asked of it, before interface names are given out.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetwork {
    pub network: Network,
    /// The interface the selection asked for.
    pub ifname: Option<String>,
    pub inputs: DelegateInputs,
    /// The name network-status shows: `namespace/name` for a NAD, else the network's name.
    pub status_name: String,
    pub default_route: Vec<IpAddr>,
    /// The NAD's `k8s.v1.cni.cncf.io/resourceName`: this network needs a device of it.
    pub resource: Option<String>,
    /// The device ID: asked for by the selection (`deviceID`), then the one allocated.
    pub device_id: Option<String>,
    /// The annotation element it comes from (none for the cluster network and defaultNetworks).
    pub selection: Option<SelectionRef>,
    /// The selection's `plexus.io/deviceRequest`: (claim, request).
    pub device_request: Option<(String, String)>,
    /// The DRA claim the device came from.
    pub claim: Option<ClaimDevice>,
}

impl PodNetwork {
    /// A network the config names: nothing asked of it.
    pub fn plain(network: Network) -> PodNetwork {
        PodNetwork {
            status_name: network.name.clone(),
            network,
            ifname: None,
            inputs: DelegateInputs::default(),
            default_route: vec![],
            resource: None,
            device_id: None,
            selection: None,
            device_request: None,
            claim: None,
        }
    }

    /// A NAD's network, as the pod's selection element asks for it (or as the config names it).
    pub(crate) fn of_nad(
        network: Network,
        nad_ref: String,
        resource: Option<String>,
        sel: Option<&NetworkSelection>,
    ) -> PodNetwork {
        let mut n = PodNetwork::plain(network);
        n.status_name = nad_ref;
        n.resource = resource;
        if let Some(sel) = sel {
            n.ifname = sel.interface.clone();
            n.inputs = DelegateInputs {
                capability_args: sel.capability_args(),
                cni_args: sel.cni_args.clone(),
            };
            n.default_route = sel.default_route.clone();
            n.device_id = sel.device_id.clone();
            n.device_request = sel.device_request.clone();
        }
        n
    }
}

/// The networks of one pod in attachment order: the cluster network, then the others.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetworks {
    pub cluster: PodNetwork,
    pub extras: Vec<PodNetwork>,
}

/// One network to attach to the pod, under one interface name.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub network: Network,
    pub ifname: String,
    /// The cluster (default) network: gets `CNI_IFNAME`, the runtime's `runtimeConfig`, and its
    /// result is what plexus returns.
    pub cluster: bool,
    pub inputs: DelegateInputs,
    /// The name network-status shows: `namespace/name` for a NAD, else the network's name.
    pub status_name: String,
    /// Gateways this attachment should own the default route through (at most one per family).
    pub default_route: Vec<IpAddr>,
    /// `(resource, device ID)` of a device-plugin network.
    pub device: Option<(String, String)>,
    /// Where the CNI is asked to write its device-info (set when the ADD is known).
    pub device_info_file: Option<String>,
    /// The annotation element it comes from.
    pub selection: Option<SelectionRef>,
    /// The DRA claim its device came from.
    pub claim: Option<ClaimDevice>,
}

/// Where the planner reads from besides the config.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub files: &'a dyn NetworkFiles,
    /// The cluster, when plexus runs with Kubernetes.
    pub cluster: Option<&'a dyn ClusterView>,
    /// The pod, when the runtime said which pod this is.
    pub pod: Option<&'a Pod>,
}

/// Work out which networks a pod gets:
/// - no Kubernetes: the configured networks;
/// - Kubernetes but no pod identity: the cluster network only;
/// - a pod: its cluster network (or the `v1.multus-cni.io/default-network` one), the
///   `defaultNetworks` (not for `systemNamespaces`), then each network its annotation selects.
pub fn resolve(conf: &NetConf, src: Sources<'_>) -> Result<PodNetworks, CniError> {
    resolve_holding(conf, src, &[])
}

/// A device a running sandbox's attachment holds (hot-plug): the selection element it came from
/// keeps it, and no other network is given it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub nad: String,
    pub interface: Option<String>,
    pub occurrence: usize,
    pub device_id: String,
}

/// [`resolve`] for a sandbox whose attachments hold `held` devices.
pub fn resolve_holding(
    conf: &NetConf,
    src: Sources<'_>,
    held: &[Held],
) -> Result<PodNetworks, CniError> {
    conf.require_networks()?;
    let Some(view) = src.cluster else {
        let mut all = conf
            .static_networks(src.files)?
            .into_iter()
            .map(PodNetwork::plain);
        let cluster = all.next().expect("at least one");
        return Ok(PodNetworks {
            cluster,
            extras: all.collect(),
        });
    };
    let Some(pod) = src.pod else {
        return Ok(PodNetworks {
            cluster: static_cluster(conf, src.files, view)?,
            extras: vec![],
        });
    };
    let pod_ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = format!("{pod_ns}/{}", pod.metadata.name.as_deref().unwrap_or(""));
    // Parse (and bound) what the pod asked for before any API call is made for it.
    let selections = match annotation(pod, NETWORKS_ANNOTATION) {
        Some(v) => parse_networks(v)
            .map_err(|e| e.context(format!("pod {pod_name}: annotation {NETWORKS_ANNOTATION}")))?,
        None => vec![],
    };
    let cluster = match annotation(pod, DEFAULT_NETWORK_ANNOTATION)
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(v) => {
            let sel = parse_short(v).map_err(|e| {
                e.context(format!(
                    "pod {pod_name}: annotation {DEFAULT_NETWORK_ANNOTATION}"
                ))
            })?;
            let ns = sel
                .namespace
                .clone()
                .unwrap_or_else(|| conf.multus_namespace.clone());
            check_isolation(conf, &pod_name, &pod_ns, &ns, &sel.name)?;
            fetch_nad(conf, src.files, view, &ns, &sel.name, &pod_name, None)?
        }
        None => static_cluster(conf, src.files, view)?,
    };
    let mut extras = Vec::new();
    if conf.cluster_network.is_some() {
        if !conf.system_namespaces.contains(&pod_ns) {
            for n in &conf.default_networks {
                extras.push(
                    reference(conf, src.files, view, n)
                        .map_err(|e| e.context(format!("defaultNetworks \"{n}\"")))?,
                );
            }
        }
    } else {
        extras.extend(
            conf.static_networks(src.files)?
                .into_iter()
                .skip(1)
                .map(PodNetwork::plain),
        );
    }
    let mut seen: std::collections::HashMap<(String, Option<String>), usize> = Default::default();
    for sel in &selections {
        let ns = sel.namespace.clone().unwrap_or_else(|| pod_ns.clone());
        check_isolation(conf, &pod_name, &pod_ns, &ns, &sel.name)?;
        let mut n = fetch_nad(conf, src.files, view, &ns, &sel.name, &pod_name, Some(sel))?;
        let nad = format!("{ns}/{}", sel.name);
        let occurrence = seen
            .entry((nad.clone(), sel.interface.clone()))
            .and_modify(|c| *c += 1)
            .or_insert(0);
        n.selection = Some(SelectionRef {
            nad,
            interface: sel.interface.clone(),
            occurrence: *occurrence,
            params: sel.params(),
        });
        extras.push(n);
    }
    let mut networks = PodNetworks { cluster, extras };
    assign_devices(
        &mut networks,
        view,
        pod,
        &crate::k8s::devices::Kubelet::of(conf),
        held,
    )?;
    Ok(networks)
}

/// Give each network whose NAD names a resource a device allocated to this pod (by the kubelet
/// or a DRA claim), and put its ID in every plugin's config (`deviceID`, `pciBusID`), as SR-IOV
/// and other device plugins' CNIs expect. Devices a running sandbox holds (hot-plug) go first to
/// the networks that hold them, then networks that name their device (`deviceID`,
/// `plexus.io/deviceRequest`) get it, and the others take the free ones in order. The pod's
/// devices are read only if some network needs one.
fn assign_devices(
    networks: &mut PodNetworks,
    view: &dyn ClusterView,
    pod: &Pod,
    kubelet: &crate::k8s::devices::Kubelet,
    held: &[Held],
) -> Result<(), CniError> {
    let mut all: Vec<&mut PodNetwork> = std::iter::once(&mut networks.cluster)
        .chain(networks.extras.iter_mut())
        .collect();
    // The device a running sandbox's attachment holds, for the network that is that attachment.
    let holds = |n: &PodNetwork| -> Option<String> {
        let s = n.selection.as_ref()?;
        held.iter()
            .find(|h| h.nad == s.nad && h.interface == s.interface && h.occurrence == s.occurrence)
            .map(|h| h.device_id.clone())
    };
    let kept: Vec<Option<String>> = all.iter().map(|n| holds(n)).collect();
    for n in all.iter_mut() {
        if n.resource.is_some() {
            continue;
        }
        if let Some(id) = &n.device_id {
            return Err(invalid_config(format!(
                "network {}: deviceID \"{id}\" was asked for, but the NAD names no {RESOURCE_NAME_ANNOTATION} to check it against",
                n.status_name
            )));
        }
        if let Some((claim, request)) = &n.device_request {
            return Err(invalid_config(format!(
                "network {}: {DEVICE_REQUEST_KEY} \"{claim}/{request}\" was asked for, but the NAD names no {RESOURCE_NAME_ANNOTATION} to match the device against",
                n.status_name
            )));
        }
    }
    let mut allocator: Option<Allocator> = None;
    // Held devices first, then those named, then the rest by order.
    for pass in 0..3 {
        for (n, kept) in all.iter_mut().zip(&kept) {
            let Some(resource) = n.resource.clone() else {
                continue;
            };
            let kind = if kept.is_some() {
                0
            } else if n.device_id.is_some() || n.device_request.is_some() {
                1
            } else {
                2
            };
            if kind != pass {
                continue;
            }
            let alloc = match &mut allocator {
                Some(a) => a,
                None => allocator.insert(Allocator::with_claims(
                    view.pod_devices(pod, kubelet)?,
                    view.claim_devices(pod)?,
                )),
            };
            let (id, claim) = match &n.device_request {
                Some((claim, request)) => alloc.take_request(
                    &resource,
                    claim,
                    request,
                    kept.as_deref(),
                    &n.status_name,
                )?,
                None => alloc.take(
                    &resource,
                    n.device_id.as_deref().or(kept.as_deref()),
                    &n.status_name,
                )?,
            };
            n.claim = claim;
            let mut value: Value = serde_json::from_str(&n.network.bytes)
                .map_err(|e| invalid_config(e.to_string()))?;
            let with_id = |p: &mut Value| {
                p["deviceID"] = Value::String(id.clone());
                p["pciBusID"] = Value::String(id.clone());
            };
            match value.get_mut("plugins").and_then(Value::as_array_mut) {
                Some(plugins) => plugins.iter_mut().for_each(with_id),
                None => with_id(&mut value),
            }
            n.network = Network::from_value(value, &n.network.source)?;
            if declares(&n.network, "deviceID") {
                n.inputs
                    .capability_args
                    .insert("deviceID".into(), Value::String(id.clone()));
            }
            n.device_id = Some(id);
        }
    }
    Ok(())
}

fn static_cluster(
    conf: &NetConf,
    files: &dyn NetworkFiles,
    view: &dyn ClusterView,
) -> Result<PodNetwork, CniError> {
    match &conf.cluster_network {
        Some(r) => reference(conf, files, view, r)
            .map_err(|e| e.context(format!("clusterNetwork \"{r}\""))),
        None => Ok(PodNetwork::plain(conf.static_networks(files)?.remove(0))),
    }
}

/// A `clusterNetwork`/`defaultNetworks` entry: a path; or a name, looked up first as a NAD in
/// `multusNamespace`, then in `confDir`.
fn reference(
    conf: &NetConf,
    files: &dyn NetworkFiles,
    view: &dyn ClusterView,
    r: &str,
) -> Result<PodNetwork, CniError> {
    if !r.contains('/') {
        if let Some(nad) = view.nad(&conf.multus_namespace, r)? {
            let nad_ref = format!("{}/{r}", conf.multus_namespace);
            let network = nad_network(conf, files, &nad, &nad_ref)?;
            return Ok(PodNetwork::of_nad(
                network,
                nad_ref,
                resource_of(&nad),
                None,
            ));
        }
    }
    Ok(PodNetwork::plain(resolve_reference(r, files)?))
}

fn check_isolation(
    conf: &NetConf,
    pod_name: &str,
    pod_ns: &str,
    target_ns: &str,
    name: &str,
) -> Result<(), CniError> {
    if conf.namespace_isolation
        && target_ns != pod_ns
        && !conf.global_namespaces.iter().any(|g| g == target_ns)
    {
        return Err(CniError::new(
            Code::NAMESPACE_ISOLATION,
            format!(
                "pod {pod_name} may not use network {target_ns}/{name}: namespaceIsolation allows its own namespace and {:?} only",
                conf.global_namespaces
            ),
        ));
    }
    Ok(())
}

fn fetch_nad(
    conf: &NetConf,
    files: &dyn NetworkFiles,
    view: &dyn ClusterView,
    ns: &str,
    name: &str,
    pod_name: &str,
    sel: Option<&NetworkSelection>,
) -> Result<PodNetwork, CniError> {
    let nad_ref = format!("{ns}/{name}");
    let nad = view.nad(ns, name)?.ok_or_else(|| {
        CniError::new(
            Code::NAD_NOT_FOUND,
            format!("pod {pod_name}: NetworkAttachmentDefinition {nad_ref} not found"),
        )
    })?;
    let network = nad_network(conf, files, &nad, &nad_ref)?;
    Ok(PodNetwork::of_nad(network, nad_ref, resource_of(&nad), sel))
}

fn resource_of(nad: &NetworkAttachmentDefinition) -> Option<String> {
    nad.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESOURCE_NAME_ANNOTATION))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
}

/// The network a NAD describes: its `spec.config` (with `name` injected when missing), or, when
/// that is empty, the file in `confDir` whose network name is the NAD's name. Its plugin types
/// must be in `allowedPluginTypes` when the admin set one.
pub fn nad_network(
    conf: &NetConf,
    files: &dyn NetworkFiles,
    nad: &NetworkAttachmentDefinition,
    nad_ref: &str,
) -> Result<Network, CniError> {
    let source = format!("NetworkAttachmentDefinition {nad_ref}");
    let name = nad.metadata.name.clone().unwrap_or_default();
    let config = nad.spec.config.trim();
    let network = if config.is_empty() {
        let mut n = files.by_name(&name)?.ok_or_else(|| {
            invalid_config(format!(
                "{source} has no config and {} has no network named \"{name}\"",
                files.describe()
            ))
        })?;
        n.source = format!("{source} ({})", n.source);
        n
    } else {
        if config.len() > MAX_NAD_CONFIG_BYTES {
            return Err(invalid_config(format!(
                "{source}: config is {} bytes, more than the {MAX_NAD_CONFIG_BYTES} allowed",
                config.len()
            )));
        }
        let mut value: Value = serde_json::from_str(config)
            .map_err(|e| invalid_config(format!("{source}: config is not valid JSON: {e}")))?;
        if let Value::Object(o) = &mut value {
            if o.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                o.insert("name".into(), Value::String(name));
            }
        }
        Network::from_value(value, &source)?
    };
    network.require_allowed(conf.allowed_plugin_types.as_deref())?;
    Ok(network)
}

/// Plan the attachments: the cluster network first under `CNI_IFNAME` with the runtime's
/// `runtimeConfig` (NPWG §7.5: runtime options reach the default network only), then each
/// network under its requested name or `net<N>`, N its position in the list.
pub fn plan(
    runtime_ifname: &str,
    runtime_config: &Map<String, Value>,
    networks: PodNetworks,
) -> Result<Vec<Attachment>, CniError> {
    let PodNetworks { cluster, extras } = networks;
    let mut out = Vec::with_capacity(extras.len() + 1);
    out.push(Attachment {
        network: cluster.network,
        ifname: runtime_ifname.to_string(),
        cluster: true,
        inputs: DelegateInputs {
            capability_args: runtime_config.clone(),
            cni_args: Map::new(),
        },
        device: cluster.resource.clone().zip(cluster.device_id.clone()),
        device_info_file: None,
        status_name: cluster.status_name,
        default_route: vec![],
        selection: None,
        claim: cluster.claim,
    });
    for (i, n) in extras.into_iter().enumerate() {
        let position = i + 1;
        require_capabilities(&n)?;
        let ifname = match n.ifname {
            Some(name) => {
                validate_ifname(&name).map_err(|e| {
                    e.context(format!(
                        "network \"{}\": requested interface",
                        n.network.name
                    ))
                })?;
                name
            }
            None => format!("net{position}"),
        };
        out.push(Attachment {
            network: n.network,
            ifname,
            cluster: false,
            inputs: n.inputs,
            status_name: n.status_name,
            default_route: n.default_route,
            device: n.resource.clone().zip(n.device_id.clone()),
            device_info_file: None,
            selection: n.selection,
            claim: n.claim,
        });
    }
    for v6 in [false, true] {
        let owners: Vec<&Attachment> = out
            .iter()
            .filter(|a| a.default_route.iter().any(|g| g.is_ipv6() == v6))
            .collect();
        if owners.len() > 1 {
            let names: Vec<&str> = owners.iter().map(|a| a.status_name.as_str()).collect();
            return Err(invalid_config(format!(
                "more than one network asks for the IPv{} default route: {}",
                if v6 { 6 } else { 4 },
                names.join(", ")
            )));
        }
    }
    let mut seen = HashSet::new();
    for a in &out {
        if !seen.insert(a.ifname.as_str()) {
            return Err(invalid_config(format!(
                "interface name \"{}\" is used by more than one attachment (network \"{}\")",
                a.ifname, a.network.name
            )));
        }
    }
    Ok(out)
}

/// NPWG §4.1.2.1: a request no plugin of the network can honour fails the pod, rather than being
/// dropped silently.
fn require_capabilities(n: &PodNetwork) -> Result<(), CniError> {
    let wanted: Vec<&String> = n.inputs.capability_args.keys().collect();
    if let Some(missing) = wanted.iter().find(|k| !declares(&n.network, k)) {
        return Err(CniError::new(
            Code::UNSUPPORTED_FIELD,
            format!(
                "network \"{}\": \"{missing}\" was requested but no plugin of the network ({}) declares the \"{missing}\" capability",
                n.network.name,
                n.network.types()
            ),
        ));
    }
    Ok(())
}

/// Plan networks hot-plugged into a running sandbox whose interfaces are `taken`: each gets its
/// requested interface, or the lowest `net<N>` not taken; existing interfaces are never renamed.
/// The checks of [`plan`] apply; a `default-route` request cannot be hot-plugged (it would move
/// the running pod's default route).
pub fn plan_hotplug(taken: &[String], adds: Vec<PodNetwork>) -> Result<Vec<Attachment>, CniError> {
    let mut used: HashSet<String> = taken.iter().cloned().collect();
    let mut out = Vec::with_capacity(adds.len());
    for n in adds {
        if !n.default_route.is_empty() {
            return Err(invalid_config(format!(
                "network {}: a default-route request cannot be hot-plugged into a running pod",
                n.status_name
            )));
        }
        require_capabilities(&n)?;
        let ifname = match &n.ifname {
            Some(name) => {
                validate_ifname(name).map_err(|e| {
                    e.context(format!(
                        "network \"{}\": requested interface",
                        n.network.name
                    ))
                })?;
                if used.contains(name) {
                    return Err(invalid_config(format!(
                        "interface name \"{name}\" (network {}) is already in use in the pod",
                        n.status_name
                    )));
                }
                name.clone()
            }
            None => (1..)
                .map(|i| format!("net{i}"))
                .find(|c| !used.contains(c))
                .expect("a free name"),
        };
        used.insert(ifname.clone());
        out.push(Attachment {
            network: n.network,
            ifname,
            cluster: false,
            inputs: n.inputs,
            status_name: n.status_name,
            default_route: vec![],
            device: n.resource.clone().zip(n.device_id.clone()),
            device_info_file: None,
            selection: n.selection,
            claim: n.claim,
        });
    }
    Ok(out)
}

/// Whether some plugin of the network declares capability `cap`.
pub fn declares(network: &Network, cap: &str) -> bool {
    network.plugins.iter().any(|p| capability_enabled(p, cap))
}

fn capability_enabled(plugin: &Map<String, Value>, cap: &str) -> bool {
    plugin
        .get("capabilities")
        .and_then(|c| c.get(cap))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The `runtimeConfig` one plugin gets: the capability args it declares, and nothing else
/// (SPEC §3 "Deriving runtimeConfig").
pub fn runtime_config_for(
    plugin: &Map<String, Value>,
    args: &Map<String, Value>,
) -> Map<String, Value> {
    args.iter()
        .filter(|(k, _)| capability_enabled(plugin, k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net(name: &str, caps: Value) -> Network {
        Network::from_value(
            json!({"cniVersion":"1.0.0","name":name,"plugins":[{"type":"bridge"},{"type":"portmap","capabilities":caps}]}),
            "test",
        )
        .unwrap()
    }

    fn res(cluster: Network, extras: Vec<PodNetwork>) -> PodNetworks {
        PodNetworks {
            cluster: PodNetwork::plain(cluster),
            extras,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn interface_names_follow_positions() {
        let mut a = PodNetwork::plain(net("a", json!({})));
        a.ifname = Some("foo".into());
        let b = PodNetwork::plain(net("b", json!({})));
        let p = plan("eth0", &Map::new(), res(net("c", json!({})), vec![a, b])).unwrap();
        let names: Vec<&str> = p.iter().map(|a| a.ifname.as_str()).collect();
        assert_eq!(names, ["eth0", "foo", "net2"]);
        assert!(p[0].cluster && !p[1].cluster);
    }

    #[test]
    fn runtime_config_reaches_the_cluster_network_only() {
        let rc = obj(json!({"portMappings":[{"hostPort":80}]}));
        let p = plan(
            "eth0",
            &rc,
            res(
                net("c", json!({"portMappings":true})),
                vec![PodNetwork::plain(net("x", json!({"portMappings":true})))],
            ),
        )
        .unwrap();
        assert_eq!(p[0].inputs.capability_args, rc);
        assert!(p[1].inputs.capability_args.is_empty());
    }

    #[test]
    fn duplicate_or_bad_names_are_refused() {
        let e = plan(
            "net1",
            &Map::new(),
            res(
                net("c", json!({})),
                vec![PodNetwork::plain(net("x", json!({})))],
            ),
        )
        .unwrap_err();
        assert!(e.msg.contains("net1"));
        let mut s = PodNetwork::plain(net("x", json!({})));
        s.ifname = Some("a/b".into());
        assert!(plan("eth0", &Map::new(), res(net("c", json!({})), vec![s])).is_err());
    }

    #[test]
    fn a_capability_nobody_declares_fails() {
        let mut s = PodNetwork::plain(net("x", json!({"portMappings":true})));
        s.inputs.capability_args = obj(json!({"bandwidth":{"ingressRate":1}}));
        let e = plan("eth0", &Map::new(), res(net("c", json!({})), vec![s])).unwrap_err();
        assert_eq!(e.code, crate::cni::Code::UNSUPPORTED_FIELD);
        assert!(
            e.msg.contains("bandwidth") && e.msg.contains("bridge+portmap"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn capability_filtering_is_an_intersection() {
        let plugin = obj(
            json!({"type":"x","capabilities":{"portMappings":true,"bandwidth":false,"ips":true}}),
        );
        let args = obj(json!({"portMappings":[1],"bandwidth":{},"mac":"m"}));
        assert_eq!(
            runtime_config_for(&plugin, &args),
            obj(json!({"portMappings":[1]}))
        );
        assert!(runtime_config_for(&obj(json!({"type":"x"})), &args).is_empty());
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    use crate::config::ConfDir;
    use crate::k8s::MemoryView;
    use serde_json::json;

    fn resolve_pod(c: &NetConf, v: &dyn ClusterView, p: &Pod) -> Result<PodNetworks, CniError> {
        let files = ConfDir(c.conf_dir.clone());
        resolve(
            c,
            Sources {
                files: &files,
                cluster: Some(v),
                pod: Some(p),
            },
        )
    }

    fn conf(extra: Value) -> NetConf {
        let mut base = json!({"cniVersion": "1.1.0", "name": "plexus", "kubeconfig": "/dev/null",
            "delegates": [{"cniVersion": "1.0.0", "name": "cluster", "type": "bridge"}]});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        NetConf::parse(base.to_string().as_bytes()).unwrap()
    }

    fn nad_cfg(name: &str, t: &str) -> String {
        json!({"cniVersion": "1.0.0", "name": name, "type": t, "capabilities": {"ips": true}})
            .to_string()
    }

    fn view() -> MemoryView {
        MemoryView::default()
            .with_nad("ns1", "mv", &nad_cfg("mv", "macvlan"))
            .with_nad(
                "ns1",
                "nameless",
                r#"{"cniVersion":"1.0.0","type":"ipvlan"}"#,
            )
            .with_nad("default", "shared", &nad_cfg("shared", "bridge"))
            .with_nad("other", "secret", &nad_cfg("secret", "sriov"))
            .with_nad(
                "kube-system",
                "calico",
                &nad_cfg("k8s-pod-network", "calico"),
            )
            .with_nad("kube-system", "alt-cluster", &nad_cfg("alt", "ptp"))
    }

    fn pod(v: &MemoryView, ns: &str, ann: &[(&str, &str)]) -> (MemoryView, Pod) {
        let v = v.clone().with_pod(ns, "p", ann);
        let p = v.pods[&(ns.to_string(), "p".to_string())].clone();
        (v, p)
    }

    fn names(r: &PodNetworks) -> Vec<String> {
        std::iter::once(&r.cluster)
            .chain(&r.extras)
            .map(|s| s.status_name.clone())
            .collect()
    }

    fn ifnames(r: PodNetworks) -> Vec<String> {
        plan("eth0", &Map::new(), r)
            .unwrap()
            .into_iter()
            .map(|a| a.ifname)
            .collect()
    }

    #[test]
    fn without_kubernetes_every_configured_delegate() {
        let mut c = conf(json!({}));
        c.delegates
            .push(json!({"cniVersion": "1.0.0", "name": "second", "type": "macvlan"}));
        let r = resolve(
            &c,
            Sources {
                files: &ConfDir(c.conf_dir.clone()),
                cluster: None,
                pod: None,
            },
        )
        .unwrap();
        assert_eq!(names(&r), ["cluster", "second"]);
    }

    #[test]
    fn without_pod_identity_only_the_cluster_network() {
        let mut c = conf(json!({}));
        c.delegates
            .push(json!({"cniVersion": "1.0.0", "name": "second", "type": "macvlan"}));
        let v = view();
        let r = resolve(
            &c,
            Sources {
                files: &ConfDir(c.conf_dir.clone()),
                cluster: Some(&v),
                pod: None,
            },
        )
        .unwrap();
        assert_eq!(names(&r), ["cluster"]);
    }

    #[test]
    fn annotation_networks_in_order_with_multus_interface_names() {
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(
                crate::k8s::NETWORKS_ANNOTATION,
                "mv@foo, default/shared, mv",
            )],
        );
        let r = resolve_pod(&conf(json!({})), &v, &p).unwrap();
        assert_eq!(names(&r), ["cluster", "ns1/mv", "default/shared", "ns1/mv"]);
        assert_eq!(
            ifnames(r),
            ["eth0", "foo", "net2", "net3"],
            "the same NAD twice is two attachments"
        );
    }

    #[test]
    fn nad_without_name_gets_the_nads_name() {
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "nameless")],
        );
        let r = resolve_pod(&conf(json!({})), &v, &p).unwrap();
        assert_eq!(r.extras[0].network.name, "nameless");
    }

    #[test]
    fn empty_nad_config_comes_from_conf_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("50-x.conf"), nad_cfg("ondisk", "vlan")).unwrap();
        let v = view().with_nad("ns1", "ondisk", "");
        let (v, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, "ondisk")]);
        let c = conf(json!({"confDir": d.path()}));
        let r = resolve_pod(&c, &v, &p).unwrap();
        assert_eq!(r.extras[0].network.plugin_type(0), "vlan");
        let v = view().with_nad("ns1", "nowhere", "");
        let (v, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, "nowhere")]);
        assert_eq!(
            resolve_pod(&c, &v, &p).unwrap_err().code,
            Code::INVALID_CONFIG
        );
    }

    /// Config files served from memory: the planner reads files only through [`NetworkFiles`].
    struct MemoryFiles(Vec<Network>, std::sync::Mutex<Vec<String>>);
    impl NetworkFiles for MemoryFiles {
        fn at_path(&self, path: &str) -> Result<Network, CniError> {
            self.1.lock().unwrap().push(format!("path {path}"));
            self.0
                .first()
                .cloned()
                .ok_or_else(|| invalid_config("no files"))
        }
        fn by_name(&self, name: &str) -> Result<Option<Network>, CniError> {
            self.1.lock().unwrap().push(format!("name {name}"));
            Ok(self.0.iter().find(|n| n.name == name).cloned())
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    #[test]
    fn files_are_read_only_through_the_network_files_source() {
        let files = MemoryFiles(
            vec![
                Network::from_value(
                    json!({"cniVersion":"1.0.0","name":"cbr0","type":"bridge"}),
                    "mem",
                )
                .unwrap(),
                Network::from_value(
                    json!({"cniVersion":"1.0.0","name":"ondisk","type":"macvlan"}),
                    "mem",
                )
                .unwrap(),
            ],
            Default::default(),
        );
        // confDir does not exist: every file must come from `files`.
        let c = conf(json!({"clusterNetwork": "cbr0", "confDir": "/nonexistent/plexus"}));
        let v = view().with_nad("ns1", "ondisk", "");
        let (v, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, "ondisk")]);
        let r = resolve(
            &c,
            Sources {
                files: &files,
                cluster: Some(&v),
                pod: Some(&p),
            },
        )
        .unwrap();
        assert_eq!(names(&r), ["cbr0", "ns1/ondisk"]);
        assert_eq!(r.extras[0].network.plugin_type(0), "macvlan");
        assert_eq!(*files.1.lock().unwrap(), ["name cbr0", "name ondisk"]);
    }

    #[test]
    fn a_nad_cannot_run_plexus_or_a_type_the_admin_did_not_allow() {
        let v = view()
            .with_nad(
                "ns1",
                "inner",
                &json!({"cniVersion":"1.0.0","name":"inner","type":"plexus",
                "binDir":"/tmp/evil","delegates":[{"cniVersion":"1.0.0","name":"x","type":"evil"}]})
                .to_string(),
            )
            .with_nad(
                "ns1",
                "chained",
                &json!({"cniVersion":"1.0.0","name":"chained",
                "plugins":[{"type":"bridge"},{"type":"multus"}]})
                .to_string(),
            );
        for nad in ["inner", "chained"] {
            let (v, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, nad)]);
            let e = resolve_pod(&conf(json!({})), &v, &p).unwrap_err();
            assert_eq!(e.code, Code::INVALID_CONFIG, "{nad}");
            assert!(
                e.msg.contains(&format!("ns1/{nad}")) && e.msg.contains("itself"),
                "{}",
                e.msg
            );
        }
        // The default-network annotation and clusterNetwork NADs go the same way.
        let (v2, p2) = pod(
            &v,
            "ns1",
            &[(crate::k8s::DEFAULT_NETWORK_ANNOTATION, "ns1/inner")],
        );
        assert!(resolve_pod(&conf(json!({})), &v2, &p2).is_err());
        let v3 = view().with_nad(
            "kube-system",
            "selfnet",
            &json!({"cniVersion":"1.0.0","name":"s","type":"multus-shim"}).to_string(),
        );
        let (v3, p3) = pod(&v3, "ns1", &[]);
        assert!(resolve_pod(&conf(json!({"clusterNetwork": "selfnet"})), &v3, &p3).is_err());
        // allowedPluginTypes: NADs may only use what the admin lists.
        let c = conf(json!({"allowedPluginTypes": ["macvlan", "bridge"]}));
        let (v4, p4) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "mv,other/secret")],
        );
        let e = resolve_pod(&c, &v4, &p4).unwrap_err();
        assert!(
            e.msg.contains("sriov") && e.msg.contains("other/secret"),
            "{}",
            e.msg
        );
        let (v5, p5) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "mv,default/shared")],
        );
        assert!(resolve_pod(&c, &v5, &p5).is_ok());
    }

    #[test]
    fn missing_nad_is_named() {
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "mv,ghost")],
        );
        let e = resolve_pod(&conf(json!({})), &v, &p).unwrap_err();
        assert_eq!(e.code, Code::NAD_NOT_FOUND);
        assert!(
            e.msg.contains("ns1/ghost") && e.msg.contains("pod ns1/p"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn cluster_and_default_networks_from_nads_then_conf_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("10-a.conflist"),
            json!({"cniVersion": "1.0.0", "name": "storage", "plugins": [{"type": "macvlan"}]})
                .to_string(),
        )
        .unwrap();
        let c = conf(
            json!({"clusterNetwork": "calico", "defaultNetworks": ["storage"], "confDir": d.path()}),
        );
        let (v, p) = pod(&view(), "ns1", &[]);
        let r = resolve_pod(&c, &v, &p).unwrap();
        assert_eq!(names(&r), ["kube-system/calico", "storage"]);
        // System namespaces do not get defaultNetworks.
        let (v, p) = pod(&view(), "kube-system", &[]);
        let r = resolve_pod(&c, &v, &p).unwrap();
        assert_eq!(names(&r), ["kube-system/calico"]);
    }

    #[test]
    fn default_network_annotation_replaces_the_cluster_network() {
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::DEFAULT_NETWORK_ANNOTATION, "alt-cluster")],
        );
        let r = resolve_pod(&conf(json!({})), &v, &p).unwrap();
        assert_eq!(names(&r), ["kube-system/alt-cluster"]);
        assert_eq!(r.cluster.network.plugin_type(0), "ptp");
    }

    #[test]
    fn namespace_isolation_covers_every_pod_chosen_reference() {
        let iso = conf(json!({"namespaceIsolation": true}));
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "other/secret")],
        );
        let e = resolve_pod(&iso, &v, &p).unwrap_err();
        assert_eq!(e.code, Code::NAMESPACE_ISOLATION);
        assert!(e.msg.contains("other/secret"), "{}", e.msg);
        // Off: allowed. Own namespace and "default" (the default global list): allowed.
        assert!(resolve_pod(&conf(json!({})), &v, &p).is_ok());
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "mv,default/shared")],
        );
        assert!(resolve_pod(&iso, &v, &p).is_ok());
        // globalNamespaces replaces the list.
        let g = conf(json!({"namespaceIsolation": true, "globalNamespaces": "other, x"}));
        assert_eq!(
            resolve_pod(&g, &v, &p).unwrap_err().code,
            Code::NAMESPACE_ISOLATION
        );
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "other/secret")],
        );
        assert!(resolve_pod(&g, &v, &p).is_ok());
        // The default-network annotation too.
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(
                crate::k8s::DEFAULT_NETWORK_ANNOTATION,
                "kube-system/alt-cluster",
            )],
        );
        assert_eq!(
            resolve_pod(&iso, &v, &p).unwrap_err().code,
            Code::NAMESPACE_ISOLATION
        );
    }

    #[test]
    fn per_attachment_requests_and_capabilities() {
        let ann = r#"[{"name":"mv","ips":["10.1.0.5/24"],"cni-args":{"k":"v"}},{"name":"shared","namespace":"default","mac":"02:00:00:00:00:01"}]"#;
        let (v, p) = pod(&view(), "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, ann)]);
        let r = resolve_pod(&conf(json!({})), &v, &p).unwrap();
        assert_eq!(
            r.extras[0].inputs.capability_args,
            json!({"ips": ["10.1.0.5/24"]}).as_object().unwrap().clone()
        );
        assert_eq!(r.extras[0].inputs.cni_args["k"], "v");
        // "shared" declares only "ips": a mac request it cannot honour fails (NPWG §4.1.2.1.4).
        let e = plan("eth0", &Map::new(), r).unwrap_err();
        assert_eq!(e.code, Code::UNSUPPORTED_FIELD);
        assert!(
            e.msg.contains("\"mac\"") && e.msg.contains("shared"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn one_default_route_per_family() {
        let ann = r#"[{"name":"mv","default-route":["10.1.0.1"]},{"name":"shared","namespace":"default","default-route":["10.2.0.1","fd00::1"]}]"#;
        let (v, p) = pod(&view(), "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, ann)]);
        let r = resolve_pod(&conf(json!({})), &v, &p).unwrap();
        let e = plan("eth0", &Map::new(), r).unwrap_err();
        assert!(
            e.msg.contains("IPv4 default route") && e.msg.contains("ns1/mv, default/shared"),
            "{}",
            e.msg
        );
        let ann = r#"[{"name":"mv","default-route":["10.1.0.1"]},{"name":"shared","namespace":"default","default-route":["fd00::1"]}]"#;
        let (v, p) = pod(&view(), "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, ann)]);
        let r = resolve_pod(&conf(json!({})), &v, &p).unwrap();
        assert!(plan("eth0", &Map::new(), r).is_ok());
    }

    #[test]
    fn networks_naming_their_device_get_it_before_the_others_take_theirs() {
        use crate::k8s::dra::{ClaimDevice, DraDevice};
        let r = "example.com/vf";
        let mut v = view().with_device_nad("ns1", "vf", &nad_cfg("vf", "sriov"), r);
        let dev = |claim: &str, id: &str| DraDevice {
            at: ClaimDevice {
                namespace: "ns1".into(),
                claim: format!("p-{claim}"),
                pod_claim: claim.into(),
                request: "vf".into(),
                driver: "d".into(),
                pool: "n1".into(),
                device: id.into(),
                ..Default::default()
            },
            resource_name: Some(r.into()),
            device_id: Some(id.into()),
            ..Default::default()
        };
        v.claims = vec![dev("net", "id-1"), dev("other", "id-2")];
        // The first element takes by order, the second names net/vf: id-1 stays its.
        let ann = r#"[{"name":"vf"},{"name":"vf","plexus.io/deviceRequest":"net/vf"}]"#;
        let (v2, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, ann)]);
        let res = resolve_pod(&conf(json!({})), &v2, &p).unwrap();
        assert_eq!(res.extras[0].device_id.as_deref(), Some("id-2"));
        assert_eq!(res.extras[1].device_id.as_deref(), Some("id-1"));
        assert_eq!(res.extras[1].claim.as_ref().unwrap().claim, "p-net");
        // Hot-plug: a device a running attachment holds stays its, whatever the order.
        let (v3, p) = pod(
            &v,
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "vf@new, vf@old")],
        );
        let held = [Held {
            nad: "ns1/vf".into(),
            interface: Some("old".into()),
            occurrence: 0,
            device_id: "id-1".into(),
        }];
        let c = conf(json!({}));
        let files = ConfDir(c.conf_dir.clone());
        let res = resolve_holding(
            &c,
            Sources {
                files: &files,
                cluster: Some(&v3),
                pod: Some(&p),
            },
            &held,
        )
        .unwrap();
        assert_eq!(res.extras[0].device_id.as_deref(), Some("id-2"));
        assert_eq!(res.extras[1].device_id.as_deref(), Some("id-1"));
        // The same when both name one request: the one that stays keeps what it holds.
        v.claims = vec![dev("net", "id-1"), dev("net", "id-2")];
        let ann = r#"[{"name":"vf","interface":"new","plexus.io/deviceRequest":"net/vf"},{"name":"vf","interface":"old","plexus.io/deviceRequest":"net/vf"}]"#;
        let (v4, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, ann)]);
        let res = resolve_holding(
            &c,
            Sources {
                files: &files,
                cluster: Some(&v4),
                pod: Some(&p),
            },
            &held,
        )
        .unwrap();
        assert_eq!(res.extras[0].device_id.as_deref(), Some("id-2"));
        assert_eq!(res.extras[1].device_id.as_deref(), Some("id-1"));
    }

    #[test]
    fn resource_nads_take_distinct_devices_in_every_plugin() {
        let r = "intel.com/sriov";
        let list = json!({"cniVersion": "1.0.0", "name": "vf", "plugins": [
            {"type": "sriov", "capabilities": {"deviceID": true}}, {"type": "tuning"}]})
        .to_string();
        let mut v = view()
            .with_device_nad("ns1", "vf", &list, r)
            .with_device_nad("ns1", "vf2", &nad_cfg("vf2", "sriov"), r);
        v.devices = crate::k8s::devices::PodDevices(
            [(
                r.to_string(),
                vec!["0000:03:02.1".into(), "0000:03:02.2".into()],
            )]
            .into(),
        );
        let (v, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, "vf,vf2")]);
        let res = resolve_pod(&conf(json!({})), &v, &p).unwrap();
        let first = &res.extras[0];
        assert_eq!(first.device_id.as_deref(), Some("0000:03:02.1"));
        for plugin in &first.network.plugins {
            assert_eq!(
                (plugin["deviceID"].as_str(), plugin["pciBusID"].as_str()),
                (Some("0000:03:02.1"), Some("0000:03:02.1"))
            );
        }
        assert!(
            first.network.bytes.contains("0000:03:02.1"),
            "the cached config carries the ID to DEL"
        );
        assert_eq!(
            first.inputs.capability_args["deviceID"], "0000:03:02.1",
            "declared: runtimeConfig too"
        );
        assert_eq!(res.extras[1].network.plugins[0]["deviceID"], "0000:03:02.2");
        assert!(
            !res.extras[1]
                .inputs
                .capability_args
                .contains_key("deviceID"),
            "not declared: config only"
        );
        // More networks than devices: a clear error naming the network.
        let (v2, p2) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, "vf,vf2,vf")]);
        let e = resolve_pod(&conf(json!({})), &v2, &p2).unwrap_err();
        assert!(
            e.msg.contains("ns1/vf") && e.msg.contains("allocated 2"),
            "{}",
            e.msg
        );
        // A selection cannot pick a device the kubelet did not allocate, nor one for a NAD without a resource.
        let (v3, p3) = pod(
            &v,
            "ns1",
            &[(
                crate::k8s::NETWORKS_ANNOTATION,
                r#"[{"name":"vf","deviceID":"0000:99:00.1"}]"#,
            )],
        );
        assert!(resolve_pod(&conf(json!({})), &v3, &p3).is_err());
        let (v4, p4) = pod(
            &v,
            "ns1",
            &[(
                crate::k8s::NETWORKS_ANNOTATION,
                r#"[{"name":"mv","deviceID":"0000:03:02.1"}]"#,
            )],
        );
        assert!(resolve_pod(&conf(json!({})), &v4, &p4)
            .unwrap_err()
            .msg
            .contains("names no"));
    }

    #[test]
    fn bad_annotation_fails_before_any_nad_is_read() {
        struct Counting(MemoryView, std::cell::Cell<u32>);
        impl ClusterView for Counting {
            fn pod(&self, ns: &str, n: &str, uid: Option<&str>) -> Result<Option<Pod>, CniError> {
                self.0.pod(ns, n, uid)
            }
            fn nad(
                &self,
                ns: &str,
                n: &str,
            ) -> Result<Option<NetworkAttachmentDefinition>, CniError> {
                self.1.set(self.1.get() + 1);
                self.0.nad(ns, n)
            }
        }
        let many = (0..1000)
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let (v, p) = pod(&view(), "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, &many)]);
        let counting = Counting(v, std::cell::Cell::new(0));
        let e = resolve_pod(&conf(json!({})), &counting, &p).unwrap_err();
        assert!(e.msg.contains("more than"), "{}", e.msg);
        assert_eq!(counting.1.get(), 0, "no API storm");
    }
}
