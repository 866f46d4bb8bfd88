//! The planner: a pure function from the request, the config and the resolved networks to the
//! ordered list of attachments. No I/O happens here.

use crate::cni::error::{invalid_config, CniError};
use crate::cni::request::validate_ifname;
use crate::config::Network;
use serde_json::{Map, Value};
use std::collections::HashSet;

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
}

/// An extra network the pod gets, with what was asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub network: Network,
    pub ifname: Option<String>,
    pub capability_args: Map<String, Value>,
    pub cni_args: Map<String, Value>,
}

impl Selection {
    pub fn plain(network: Network) -> Selection {
        Selection {
            network,
            ifname: None,
            capability_args: Map::new(),
            cni_args: Map::new(),
        }
    }
}

/// Plan the attachments: the cluster network first under `CNI_IFNAME` with the runtime's
/// `runtimeConfig` (NPWG §7.5: runtime options reach the default network only), then each
/// selection under its requested name or `net<N>`, N its position in the list.
pub fn plan(
    runtime_ifname: &str,
    runtime_config: &Map<String, Value>,
    cluster: Network,
    extras: Vec<Selection>,
) -> Result<Vec<Attachment>, CniError> {
    let mut out = Vec::with_capacity(extras.len() + 1);
    out.push(Attachment {
        network: cluster,
        ifname: runtime_ifname.to_string(),
        cluster: true,
        capability_args: runtime_config.clone(),
        cni_args: Map::new(),
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
                crate::cni::Code::UNSUPPORTED_FIELD,
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
        });
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

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn interface_names_follow_positions() {
        let mut a = Selection::plain(net("a", json!({})));
        a.ifname = Some("foo".into());
        let b = Selection::plain(net("b", json!({})));
        let p = plan("eth0", &Map::new(), net("c", json!({})), vec![a, b]).unwrap();
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
            net("c", json!({"portMappings":true})),
            vec![Selection::plain(net("x", json!({"portMappings":true})))],
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
            net("c", json!({})),
            vec![Selection::plain(net("x", json!({})))],
        )
        .unwrap_err();
        assert!(e.msg.contains("net1"));
        let mut s = Selection::plain(net("x", json!({})));
        s.ifname = Some("a/b".into());
        assert!(plan("eth0", &Map::new(), net("c", json!({})), vec![s]).is_err());
    }

    #[test]
    fn a_capability_nobody_declares_fails() {
        let mut s = Selection::plain(net("x", json!({"portMappings":true})));
        s.capability_args = obj(json!({"bandwidth":{"ingressRate":1}}));
        let e = plan("eth0", &Map::new(), net("c", json!({})), vec![s]).unwrap_err();
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
