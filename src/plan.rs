//! The planner: a pure function from the request, the config and the resolved networks to the
//! ordered list of attachments. No I/O happens here.

use crate::cni::error::{invalid_config, CniError, Code};
use crate::cni::request::validate_ifname;
use crate::config::{find_by_name, resolve_reference, NetConf, Network};
use crate::k8s::annotations::{parse_networks, parse_short, NetworkSelection};
use crate::k8s::devices::Allocator;
use crate::k8s::RESOURCE_NAME_ANNOTATION;
use crate::k8s::{
    annotation, ClusterView, NetworkAttachmentDefinition, DEFAULT_NETWORK_ANNOTATION,
    MAX_NAD_CONFIG_BYTES, NETWORKS_ANNOTATION,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::net::IpAddr;

/// One network to attach to the pod, under one interface name.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub network: Network,
    pub ifname: String,
    /// The cluster (default) network: gets `CNI_IFNAME`, the runtime's `runtimeConfig`, and its
    /// result is what plexus returns.
    pub cluster: bool,
    /// Capability args for this attachment; each plugin sees only those it declares.
    pub capability_args: Map<String, Value>,
    /// Keys merged into `args.cni` of every plugin of the network.
    pub cni_args: Map<String, Value>,
    /// The name network-status shows: `namespace/name` for a NAD, else the network's name.
    pub status_name: String,
    /// Gateways this attachment should own the default route through (at most one per family).
    pub default_route: Vec<IpAddr>,
    /// `(resource, device ID)` of a device-plugin network.
    pub device: Option<(String, String)>,
    /// Where the CNI is asked to write its device-info (set when the ADD is known).
    pub device_info_file: Option<String>,
}

/// A network the pod gets, with what was asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub network: Network,
    pub ifname: Option<String>,
    pub capability_args: Map<String, Value>,
    pub cni_args: Map<String, Value>,
    pub status_name: String,
    pub default_route: Vec<IpAddr>,
    /// The NAD's `k8s.v1.cni.cncf.io/resourceName`: this network needs a device of it.
    pub resource: Option<String>,
    /// The device ID: asked for by the selection (`deviceID`), then the one allocated.
    pub device_id: Option<String>,
}

impl Selection {
    pub fn plain(network: Network) -> Selection {
        Selection {
            status_name: network.name.clone(),
            network,
            ifname: None,
            capability_args: Map::new(),
            cni_args: Map::new(),
            default_route: vec![],
            resource: None,
            device_id: None,
        }
    }

    fn from_nad(nad: NadNetwork, sel: &NetworkSelection) -> Selection {
        Selection {
            network: nad.network,
            ifname: sel.interface.clone(),
            capability_args: sel.capability_args(),
            cni_args: sel.cni_args.clone(),
            status_name: nad.nad_ref,
            default_route: sel.default_route.clone(),
            resource: nad.resource,
            device_id: sel.device_id.clone(),
        }
    }

    fn of_nad(nad: NadNetwork) -> Selection {
        let mut s = Selection::plain(nad.network);
        s.status_name = nad.nad_ref;
        s.resource = nad.resource;
        s
    }
}

/// A network read from a NAD, with what the NAD says besides its config.
struct NadNetwork {
    network: Network,
    nad_ref: String,
    resource: Option<String>,
}

/// The networks of one pod, before interface names are given out.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub cluster: Selection,
    pub extras: Vec<Selection>,
}

/// Work out which networks a pod gets (I/O only through `view`, which may be in memory):
/// - no Kubernetes: the configured networks;
/// - Kubernetes but no pod identity: the cluster network only;
/// - a pod: its cluster network (or the `v1.multus-cni.io/default-network` one), the
///   `defaultNetworks` (not for `systemNamespaces`), then each network its annotation selects.
pub fn resolve(
    conf: &NetConf,
    view: Option<&dyn ClusterView>,
    pod: Option<&Pod>,
) -> Result<Resolved, CniError> {
    conf.require_networks()?;
    let Some(view) = view else {
        let mut all = conf.static_networks()?.into_iter().map(Selection::plain);
        let cluster = all.next().expect("at least one");
        return Ok(Resolved {
            cluster,
            extras: all.collect(),
        });
    };
    let Some(pod) = pod else {
        return Ok(Resolved {
            cluster: static_cluster(conf, view)?,
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
            Selection::of_nad(fetch_nad(conf, view, &ns, &sel.name, &pod_name)?)
        }
        None => static_cluster(conf, view)?,
    };
    let mut extras = Vec::new();
    if conf.cluster_network.is_some() {
        if !conf.system_namespaces.contains(&pod_ns) {
            for n in &conf.default_networks {
                extras.push(
                    reference(conf, view, n)
                        .map_err(|e| e.context(format!("defaultNetworks \"{n}\"")))?,
                );
            }
        }
    } else {
        extras.extend(
            conf.static_networks()?
                .into_iter()
                .skip(1)
                .map(Selection::plain),
        );
    }
    for sel in &selections {
        let ns = sel.namespace.clone().unwrap_or_else(|| pod_ns.clone());
        check_isolation(conf, &pod_name, &pod_ns, &ns, &sel.name)?;
        extras.push(Selection::from_nad(
            fetch_nad(conf, view, &ns, &sel.name, &pod_name)?,
            sel,
        ));
    }
    let mut resolved = Resolved { cluster, extras };
    assign_devices(&mut resolved, view, pod)?;
    Ok(resolved)
}

/// Give each network whose NAD names a resource a device the kubelet allocated to this pod, in
/// order, and put its ID in every plugin's config (`deviceID`, `pciBusID`), as SR-IOV and other
/// device plugins' CNIs expect. The pod's devices are read only if some network needs one.
fn assign_devices(
    resolved: &mut Resolved,
    view: &dyn ClusterView,
    pod: &Pod,
) -> Result<(), CniError> {
    let mut allocator: Option<Allocator> = None;
    for sel in std::iter::once(&mut resolved.cluster).chain(resolved.extras.iter_mut()) {
        let Some(resource) = sel.resource.clone() else {
            if let Some(id) = &sel.device_id {
                return Err(invalid_config(format!(
                    "network {}: deviceID \"{id}\" was asked for, but the NAD names no {RESOURCE_NAME_ANNOTATION} to check it against",
                    sel.status_name
                )));
            }
            continue;
        };
        let alloc = match &mut allocator {
            Some(a) => a,
            None => allocator.insert(Allocator::new(view.pod_devices(pod)?)),
        };
        let id = alloc.take(&resource, sel.device_id.as_deref(), &sel.status_name)?;
        let mut value: Value =
            serde_json::from_str(&sel.network.bytes).map_err(|e| invalid_config(e.to_string()))?;
        let with_id = |p: &mut Value| {
            p["deviceID"] = Value::String(id.clone());
            p["pciBusID"] = Value::String(id.clone());
        };
        match value.get_mut("plugins").and_then(Value::as_array_mut) {
            Some(plugins) => plugins.iter_mut().for_each(with_id),
            None => with_id(&mut value),
        }
        sel.network = Network::from_value(value, &sel.network.source)?;
        if declares(&sel.network, "deviceID") {
            sel.capability_args
                .insert("deviceID".into(), Value::String(id.clone()));
        }
        sel.device_id = Some(id);
    }
    Ok(())
}

fn static_cluster(conf: &NetConf, view: &dyn ClusterView) -> Result<Selection, CniError> {
    match &conf.cluster_network {
        Some(r) => {
            reference(conf, view, r).map_err(|e| e.context(format!("clusterNetwork \"{r}\"")))
        }
        None => Ok(Selection::plain(conf.static_networks()?.remove(0))),
    }
}

/// A `clusterNetwork`/`defaultNetworks` entry: a path; or a name, looked up first as a NAD in
/// `multusNamespace`, then in `confDir`.
fn reference(conf: &NetConf, view: &dyn ClusterView, r: &str) -> Result<Selection, CniError> {
    if !r.contains('/') {
        if let Some(nad) = view.nad(&conf.multus_namespace, r)? {
            let nad_ref = format!("{}/{r}", conf.multus_namespace);
            return Ok(Selection::of_nad(nad_network_of(conf, &nad, nad_ref)?));
        }
    }
    Ok(Selection::plain(resolve_reference(r, &conf.conf_dir)?))
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
    view: &dyn ClusterView,
    ns: &str,
    name: &str,
    pod_name: &str,
) -> Result<NadNetwork, CniError> {
    let nad_ref = format!("{ns}/{name}");
    let nad = view.nad(ns, name)?.ok_or_else(|| {
        CniError::new(
            Code::NAD_NOT_FOUND,
            format!("pod {pod_name}: NetworkAttachmentDefinition {nad_ref} not found"),
        )
    })?;
    nad_network_of(conf, &nad, nad_ref)
}

fn nad_network_of(
    conf: &NetConf,
    nad: &NetworkAttachmentDefinition,
    nad_ref: String,
) -> Result<NadNetwork, CniError> {
    let resource = nad
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESOURCE_NAME_ANNOTATION))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    Ok(NadNetwork {
        network: nad_network(conf, nad, &nad_ref)?,
        nad_ref,
        resource,
    })
}

/// The network a NAD describes: its `spec.config` (with `name` injected when missing), or, when
/// that is empty, the file in `confDir` whose network name is the NAD's name.
pub fn nad_network(
    conf: &NetConf,
    nad: &NetworkAttachmentDefinition,
    nad_ref: &str,
) -> Result<Network, CniError> {
    let source = format!("NetworkAttachmentDefinition {nad_ref}");
    let name = nad.metadata.name.clone().unwrap_or_default();
    let config = nad.spec.config.trim();
    if config.is_empty() {
        return find_by_name(&conf.conf_dir, &name)?.ok_or_else(|| {
            invalid_config(format!(
                "{source} has no config and {} has no network named \"{name}\"",
                conf.conf_dir.display()
            ))
        });
    }
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
    Network::from_value(value, &source)
}

/// Plan the attachments: the cluster network first under `CNI_IFNAME` with the runtime's
/// `runtimeConfig` (NPWG §7.5: runtime options reach the default network only), then each
/// selection under its requested name or `net<N>`, N its position in the list.
pub fn plan(
    runtime_ifname: &str,
    runtime_config: &Map<String, Value>,
    resolved: Resolved,
) -> Result<Vec<Attachment>, CniError> {
    let Resolved { cluster, extras } = resolved;
    let mut out = Vec::with_capacity(extras.len() + 1);
    out.push(Attachment {
        network: cluster.network,
        ifname: runtime_ifname.to_string(),
        cluster: true,
        capability_args: runtime_config.clone(),
        cni_args: Map::new(),
        device: cluster.resource.clone().zip(cluster.device_id.clone()),
        device_info_file: None,
        status_name: cluster.status_name,
        default_route: vec![],
    });
    for (i, sel) in extras.into_iter().enumerate() {
        let position = i + 1;
        let ifname = match sel.ifname {
            Some(name) => {
                validate_ifname(&name).map_err(|e| {
                    e.context(format!(
                        "network \"{}\": requested interface",
                        sel.network.name
                    ))
                })?;
                name
            }
            None => format!("net{position}"),
        };
        let wanted: Vec<&String> = sel.capability_args.keys().collect();
        if let Some(missing) = wanted.iter().find(|k| !declares(&sel.network, k)) {
            return Err(CniError::new(
                Code::UNSUPPORTED_FIELD,
                format!(
                    "network \"{}\": \"{missing}\" was requested but no plugin of the network ({}) declares the \"{missing}\" capability",
                    sel.network.name,
                    sel.network.types()
                ),
            ));
        }
        out.push(Attachment {
            network: sel.network,
            ifname,
            cluster: false,
            capability_args: sel.capability_args,
            cni_args: sel.cni_args,
            status_name: sel.status_name,
            default_route: sel.default_route,
            device: sel.resource.clone().zip(sel.device_id.clone()),
            device_info_file: None,
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

    fn res(cluster: Network, extras: Vec<Selection>) -> Resolved {
        Resolved {
            cluster: Selection::plain(cluster),
            extras,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn interface_names_follow_positions() {
        let mut a = Selection::plain(net("a", json!({})));
        a.ifname = Some("foo".into());
        let b = Selection::plain(net("b", json!({})));
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
                vec![Selection::plain(net("x", json!({"portMappings":true})))],
            ),
        )
        .unwrap();
        assert_eq!(p[0].capability_args, rc);
        assert!(p[1].capability_args.is_empty());
    }

    #[test]
    fn duplicate_or_bad_names_are_refused() {
        let e = plan(
            "net1",
            &Map::new(),
            res(
                net("c", json!({})),
                vec![Selection::plain(net("x", json!({})))],
            ),
        )
        .unwrap_err();
        assert!(e.msg.contains("net1"));
        let mut s = Selection::plain(net("x", json!({})));
        s.ifname = Some("a/b".into());
        assert!(plan("eth0", &Map::new(), res(net("c", json!({})), vec![s])).is_err());
    }

    #[test]
    fn a_capability_nobody_declares_fails() {
        let mut s = Selection::plain(net("x", json!({"portMappings":true})));
        s.capability_args = obj(json!({"bandwidth":{"ingressRate":1}}));
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
    use crate::k8s::MemoryView;
    use serde_json::json;

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

    fn names(r: &Resolved) -> Vec<String> {
        std::iter::once(&r.cluster)
            .chain(&r.extras)
            .map(|s| s.status_name.clone())
            .collect()
    }

    fn ifnames(r: Resolved) -> Vec<String> {
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
        let r = resolve(&c, None, None).unwrap();
        assert_eq!(names(&r), ["cluster", "second"]);
    }

    #[test]
    fn without_pod_identity_only_the_cluster_network() {
        let mut c = conf(json!({}));
        c.delegates
            .push(json!({"cniVersion": "1.0.0", "name": "second", "type": "macvlan"}));
        let v = view();
        let r = resolve(&c, Some(&v), None).unwrap();
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
        let r = resolve(&conf(json!({})), Some(&v), Some(&p)).unwrap();
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
        let r = resolve(&conf(json!({})), Some(&v), Some(&p)).unwrap();
        assert_eq!(r.extras[0].network.name, "nameless");
    }

    #[test]
    fn empty_nad_config_comes_from_conf_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("50-x.conf"), nad_cfg("ondisk", "vlan")).unwrap();
        let v = view().with_nad("ns1", "ondisk", "");
        let (v, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, "ondisk")]);
        let c = conf(json!({"confDir": d.path()}));
        let r = resolve(&c, Some(&v), Some(&p)).unwrap();
        assert_eq!(r.extras[0].network.plugin_type(0), "vlan");
        let v = view().with_nad("ns1", "nowhere", "");
        let (v, p) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, "nowhere")]);
        assert_eq!(
            resolve(&c, Some(&v), Some(&p)).unwrap_err().code,
            Code::INVALID_CONFIG
        );
    }

    #[test]
    fn missing_nad_is_named() {
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "mv,ghost")],
        );
        let e = resolve(&conf(json!({})), Some(&v), Some(&p)).unwrap_err();
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
        let r = resolve(&c, Some(&v), Some(&p)).unwrap();
        assert_eq!(names(&r), ["kube-system/calico", "storage"]);
        // System namespaces do not get defaultNetworks.
        let (v, p) = pod(&view(), "kube-system", &[]);
        let r = resolve(&c, Some(&v), Some(&p)).unwrap();
        assert_eq!(names(&r), ["kube-system/calico"]);
    }

    #[test]
    fn default_network_annotation_replaces_the_cluster_network() {
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::DEFAULT_NETWORK_ANNOTATION, "alt-cluster")],
        );
        let r = resolve(&conf(json!({})), Some(&v), Some(&p)).unwrap();
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
        let e = resolve(&iso, Some(&v), Some(&p)).unwrap_err();
        assert_eq!(e.code, Code::NAMESPACE_ISOLATION);
        assert!(e.msg.contains("other/secret"), "{}", e.msg);
        // Off: allowed. Own namespace and "default" (the default global list): allowed.
        assert!(resolve(&conf(json!({})), Some(&v), Some(&p)).is_ok());
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "mv,default/shared")],
        );
        assert!(resolve(&iso, Some(&v), Some(&p)).is_ok());
        // globalNamespaces replaces the list.
        let g = conf(json!({"namespaceIsolation": true, "globalNamespaces": "other, x"}));
        assert_eq!(
            resolve(&g, Some(&v), Some(&p)).unwrap_err().code,
            Code::NAMESPACE_ISOLATION
        );
        let (v, p) = pod(
            &view(),
            "ns1",
            &[(crate::k8s::NETWORKS_ANNOTATION, "other/secret")],
        );
        assert!(resolve(&g, Some(&v), Some(&p)).is_ok());
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
            resolve(&iso, Some(&v), Some(&p)).unwrap_err().code,
            Code::NAMESPACE_ISOLATION
        );
    }

    #[test]
    fn per_attachment_requests_and_capabilities() {
        let ann = r#"[{"name":"mv","ips":["10.1.0.5/24"],"cni-args":{"k":"v"}},{"name":"shared","namespace":"default","mac":"02:00:00:00:00:01"}]"#;
        let (v, p) = pod(&view(), "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, ann)]);
        let r = resolve(&conf(json!({})), Some(&v), Some(&p)).unwrap();
        assert_eq!(
            r.extras[0].capability_args,
            json!({"ips": ["10.1.0.5/24"]}).as_object().unwrap().clone()
        );
        assert_eq!(r.extras[0].cni_args["k"], "v");
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
        let r = resolve(&conf(json!({})), Some(&v), Some(&p)).unwrap();
        let e = plan("eth0", &Map::new(), r).unwrap_err();
        assert!(
            e.msg.contains("IPv4 default route") && e.msg.contains("ns1/mv, default/shared"),
            "{}",
            e.msg
        );
        let ann = r#"[{"name":"mv","default-route":["10.1.0.1"]},{"name":"shared","namespace":"default","default-route":["fd00::1"]}]"#;
        let (v, p) = pod(&view(), "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, ann)]);
        let r = resolve(&conf(json!({})), Some(&v), Some(&p)).unwrap();
        assert!(plan("eth0", &Map::new(), r).is_ok());
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
        let res = resolve(&conf(json!({})), Some(&v), Some(&p)).unwrap();
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
            first.capability_args["deviceID"], "0000:03:02.1",
            "declared: runtimeConfig too"
        );
        assert_eq!(res.extras[1].network.plugins[0]["deviceID"], "0000:03:02.2");
        assert!(
            !res.extras[1].capability_args.contains_key("deviceID"),
            "not declared: config only"
        );
        // More networks than devices: a clear error naming the network.
        let (v2, p2) = pod(&v, "ns1", &[(crate::k8s::NETWORKS_ANNOTATION, "vf,vf2,vf")]);
        let e = resolve(&conf(json!({})), Some(&v2), Some(&p2)).unwrap_err();
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
        assert!(resolve(&conf(json!({})), Some(&v3), Some(&p3)).is_err());
        let (v4, p4) = pod(
            &v,
            "ns1",
            &[(
                crate::k8s::NETWORKS_ANNOTATION,
                r#"[{"name":"mv","deviceID":"0000:03:02.1"}]"#,
            )],
        );
        assert!(resolve(&conf(json!({})), Some(&v4), Some(&p4))
            .unwrap_err()
            .msg
            .contains("names no"));
    }

    #[test]
    fn bad_annotation_fails_before_any_nad_is_read() {
        struct Counting(MemoryView, std::cell::Cell<u32>);
        impl ClusterView for Counting {
            fn pod(&self, ns: &str, n: &str) -> Result<Option<Pod>, CniError> {
                self.0.pod(ns, n)
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
        let e = resolve(&conf(json!({})), Some(&counting), Some(&p)).unwrap_err();
        assert!(e.msg.contains("more than"), "{}", e.msg);
        assert_eq!(counting.1.get(), 0, "no API storm");
    }
}
