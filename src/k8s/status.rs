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
                // A netns path. Not just "non-empty": the AWS VPC CNI parks a device number in
                // `sandbox` of a bookkeeping "dummy" interface.
                r.interfaces[i]
                    .sandbox
                    .as_deref()
                    .is_some_and(|s| s.starts_with('/'))
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
            // Only a MAC is reported as one (AWS puts a route table id in the container
            // interface's `mac`).
            let mac = iface.mac.clone().filter(|m| is_mac(m));
            out.push(entry(iface.name.clone(), ips, mac, iface.mtu));
        }
    }
    out
}

/// A hardware address as `ip link` prints one: 6 (Ethernet) or 20 (InfiniBand) hex octets.
fn is_mac(s: &str) -> bool {
    let octets: Vec<&str> = s.split(':').collect();
    matches!(octets.len(), 6 | 20)
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()))
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
    fn quirky_results_give_one_honest_entry() {
        // AWS VPC CNI: route table id in the container interface's mac, a "dummy" with a device
        // number for a sandbox. Calico: only the host veth, IPs without an index.
        let aws = result(json!({"cniVersion": "0.4.0", "interfaces": [
            {"name": "eni1"}, {"name": "eth0", "sandbox": "/var/run/netns/x", "mac": "254"},
            {"name": "dummy1", "mac": "0", "sandbox": "0"}],
            "ips": [{"version": "4", "address": "10.2.0.2/32", "gateway": "169.254.1.1", "interface": 1}]}));
        let calico = result(
            json!({"cniVersion": "0.3.1", "interfaces": [{"name": "cali1"}],
            "ips": [{"version": "4", "address": "10.244.0.2/32"}]}),
        );
        for (r, ip) in [(&aws, "10.2.0.2"), (&calico, "10.244.0.2")] {
            let s = build(&[StatusInput {
                name: "cluster",
                ifname: "eth0",
                result: r,
                default: true,
                gateway: vec![],
                device_info: None,
            }]);
            assert_eq!(s.len(), 1, "{s:?}");
            assert_eq!(s[0].interface, "eth0");
            assert_eq!(s[0].ips, vec![ip.to_string()]);
            assert_eq!(s[0].mac, None, "not a MAC, so not reported as one");
        }
        assert!(is_mac("0a:58:0a:f4:01:49") && !is_mac("254") && !is_mac("0"));
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
