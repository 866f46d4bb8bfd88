//! The pod's `k8s.v1.cni.cncf.io/network-status` annotation (NPWG §5): one entry per interface
//! in the pod's sandbox, built from each attachment's final result.

use crate::cni::result::{CniResult, Dns};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub interface: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    #[serde(default)]
    pub dns: Dns,
    #[serde(
        rename = "device-info",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_info: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<String>,
}

/// What one attachment contributes.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    /// `namespace/nad` for a NAD, else the network's name.
    pub name: &'a str,
    pub ifname: &'a str,
    pub result: &'a CniResult,
    /// This attachment carries the pod's default route.
    pub default: bool,
    /// Gateways of a `default-route` request.
    pub gateway: Vec<String>,
    pub device_info: Option<Value>,
}

fn strip_prefix(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

pub fn build(inputs: &[StatusInput<'_>]) -> Vec<NetworkStatus> {
    let mut out = Vec::new();
    for input in inputs {
        let r = input.result;
        let sandboxed: Vec<usize> = (0..r.interfaces.len())
            .filter(|&i| {
                r.interfaces[i]
                    .sandbox
                    .as_deref()
                    .is_some_and(|s| !s.is_empty())
            })
            .collect();
        let entry = |interface: String, ips: Vec<String>, mac: Option<String>, mtu: Option<u32>| {
            NetworkStatus {
                name: input.name.to_string(),
                interface,
                ips,
                mac,
                mtu,
                default: input.default,
                dns: r.dns.clone(),
                device_info: input.device_info.clone(),
                gateway: input.gateway.clone(),
            }
        };
        if sandboxed.is_empty() {
            // A result without sandbox interfaces (a legacy or IPAM-only answer): the attachment's
            // interface is still what the pod got.
            out.push(entry(
                input.ifname.to_string(),
                r.ips.iter().map(|ip| strip_prefix(&ip.address)).collect(),
                None,
                None,
            ));
            continue;
        }
        for &i in &sandboxed {
            let iface = &r.interfaces[i];
            let ips = r
                .ips
                .iter()
                .filter(|ip| match ip.interface {
                    Some(idx) => idx == i,
                    // No index: the addresses belong to the interface the attachment asked for.
                    None => iface.name == input.ifname,
                })
                .map(|ip| strip_prefix(&ip.address))
                .collect();
            out.push(entry(iface.name.clone(), ips, iface.mac.clone(), iface.mtu));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::Version;
    use serde_json::json;

    fn result(v: Value) -> CniResult {
        CniResult::from_value(v, Version::V1_1_0).unwrap().0
    }

    #[test]
    fn one_entry_per_sandbox_interface_in_npwg_shape() {
        let cluster = result(json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"}, {"name": "eth0", "mac": "0a:58:0a:f4:01:49", "mtu": 1450, "sandbox": "/n"}],
            "ips": [{"address": "10.244.1.73/24", "gateway": "10.244.1.1", "interface": 1}],
            "dns": {"nameservers": ["10.96.0.10"]}}));
        let extra = result(json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "net1", "mac": "86:1d:96:ff:55:0d", "sandbox": "/n"}],
            "ips": [{"address": "192.168.1.205/24", "interface": 0}, {"address": "fd00::5/64", "interface": 0}]}));
        let legacy = result(json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.9.0.2/16"}}));
        let s = build(&[
            StatusInput {
                name: "cbr0",
                ifname: "eth0",
                result: &cluster,
                default: true,
                gateway: vec![],
                device_info: None,
            },
            StatusInput {
                name: "default/macvlan-conf",
                ifname: "net1",
                result: &extra,
                default: false,
                gateway: vec![],
                device_info: Some(
                    json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:18:02.5"}}),
                ),
            },
            StatusInput {
                name: "default/old",
                ifname: "net2",
                result: &legacy,
                default: false,
                gateway: vec!["10.9.0.1".into()],
                device_info: None,
            },
        ]);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            json!([
                {"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.73"], "mac": "0a:58:0a:f4:01:49", "mtu": 1450,
                 "default": true, "dns": {"nameservers": ["10.96.0.10"]}},
                {"name": "default/macvlan-conf", "interface": "net1", "ips": ["192.168.1.205", "fd00::5"],
                 "mac": "86:1d:96:ff:55:0d", "dns": {},
                 "device-info": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:18:02.5"}}},
                {"name": "default/old", "interface": "net2", "ips": ["10.9.0.2"], "dns": {}, "gateway": ["10.9.0.1"]}
            ])
        );
        // Key order as NPWG and Multus print it.
        let text = serde_json::to_string(&s[0]).unwrap();
        assert!(
            text.starts_with(r#"{"name":"cbr0","interface":"eth0","ips":["#),
            "{text}"
        );
    }
}
