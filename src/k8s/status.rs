//! The pod's `k8s.v1.cni.cncf.io/network-status` annotation, as NPWG v1.3 §5 defines it: one map
//! per attachment, taken from the first sandbox interface of its final result (§5.1.1).
//!
//! Where plexus and Multus differ, plexus follows the spec (see docs/migrating-from-multus.md):
//! one entry per attachment, not one per sandbox interface; `default` always present, `true`
//! only on the cluster-wide default network's entry (§5.3.5); the `default-route` key for the
//! gateways a selection asked for (§5.3.6.4), not `gateway`; no `mtu` (not a key of §5.3, and
//! unprefixed keys are reserved).

use crate::cni::result::{CniResult, Dns};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub default: bool,
    #[serde(default)]
    pub dns: Dns,
    #[serde(
        rename = "default-route",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub default_route: Vec<String>,
    #[serde(
        rename = "device-info",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_info: Option<Value>,
}

/// What one attachment contributes.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    /// `namespace/nad` for a NAD, else the network's name.
    pub name: &'a str,
    /// The interface plexus asked the delegate for (`CNI_IFNAME`).
    pub ifname: &'a str,
    pub result: &'a CniResult,
    /// This is the cluster-wide default network's attachment.
    pub default: bool,
    /// Gateways of the selection's `default-route` request.
    pub default_route: Vec<String>,
    pub device_info: Option<Value>,
}

fn strip_prefix(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

/// A `sandbox` that is a netns path. Not just "non-empty": the AWS VPC CNI parks a device number
/// in `sandbox` of a bookkeeping "dummy" interface.
fn in_sandbox(sandbox: Option<&str>) -> bool {
    sandbox.is_some_and(|s| s.starts_with('/'))
}

/// The entry of one attachment (§5.1.1 and §5.3).
pub fn entry(input: &StatusInput<'_>) -> NetworkStatus {
    let r = input.result;
    let first = r
        .interfaces
        .iter()
        .position(|i| in_sandbox(i.sandbox.as_deref()));
    let (interface, ips, mac) = match first {
        // §5.3.2.1, §5.3.3.1, §5.3.4.1: the first sandbox interface, its addresses, its MAC.
        Some(idx) => {
            let iface = &r.interfaces[idx];
            let ips = r
                .ips
                .iter()
                .filter(|ip| ip.interface == Some(idx))
                .map(|ip| strip_prefix(&ip.address))
                .collect();
            // Only a hardware address is one (AWS puts a route table id in `mac`).
            (
                iface.name.clone(),
                ips,
                iface.mac.clone().filter(|m| is_mac(m)),
            )
        }
        // No sandbox interface (a legacy, IPAM-only or host-side-only answer): the interface
        // plexus asked for, and the addresses that name no interface.
        None => (
            input.ifname.to_string(),
            r.ips
                .iter()
                .filter(|ip| ip.interface.is_none())
                .map(|ip| strip_prefix(&ip.address))
                .collect(),
            None,
        ),
    };
    NetworkStatus {
        name: input.name.to_string(),
        interface,
        ips,
        mac,
        default: input.default,
        dns: r.dns.clone(),
        default_route: input.default_route.clone(),
        device_info: input.device_info.clone(),
    }
}

/// The annotation's list, in attachment order.
pub fn build(inputs: &[StatusInput<'_>]) -> Vec<NetworkStatus> {
    inputs.iter().map(entry).collect()
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

    fn input<'a>(
        name: &'a str,
        ifname: &'a str,
        r: &'a CniResult,
        default: bool,
    ) -> StatusInput<'a> {
        StatusInput {
            name,
            ifname,
            result: r,
            default,
            default_route: vec![],
            device_info: None,
        }
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
            let s = build(&[input("cluster", "eth0", r, true)]);
            assert_eq!(s.len(), 1, "{s:?}");
            assert_eq!(s[0].interface, "eth0");
            assert_eq!(s[0].ips, vec![ip.to_string()]);
            assert_eq!(s[0].mac, None, "not a MAC, so not reported as one");
        }
        assert!(is_mac("0a:58:0a:f4:01:49") && !is_mac("254") && !is_mac("0"));
    }

    #[test]
    fn one_entry_per_attachment_from_its_first_sandbox_interface() {
        // §5.1.1: a result with two sandbox interfaces (OVN-Kubernetes' primary UDN) gives the
        // first; §5.3.3.1: only the addresses of that interface, not an unindexed one.
        let two = result(json!({"cniVersion": "1.0.0", "interfaces": [
            {"name": "eth0", "mac": "0a:58:0a:80:00:05", "sandbox": "/n"},
            {"name": "ovn-udn1", "mac": "0a:58:0a:81:00:05", "sandbox": "/n"}],
            "ips": [{"address": "10.128.0.5/23", "interface": 0}, {"address": "10.129.0.5/23", "interface": 1},
                    {"address": "192.0.2.9/24"}]}));
        let s = build(&[input("ovn-kubernetes", "eth0", &two, true)]);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].interface.as_str(), s[0].ips.clone()),
            ("eth0", vec!["10.128.0.5".to_string()])
        );
        assert_eq!(s[0].mac.as_deref(), Some("0a:58:0a:80:00:05"));
        // A delegate that reported nothing usable: the minimal map — name, interface, default.
        let empty = CniResult::default();
        let v = serde_json::to_value(build(&[input("ns1/quiet", "net1", &empty, false)])).unwrap();
        assert_eq!(
            v,
            json!([{"name": "ns1/quiet", "interface": "net1", "default": false, "dns": {}}])
        );
    }

    #[test]
    fn npwg_shape_default_on_the_cluster_network_only_and_default_route() {
        let cluster = result(json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"}, {"name": "eth0", "mac": "0a:58:0a:f4:01:49", "mtu": 1450, "sandbox": "/n"}],
            "ips": [{"address": "10.244.1.73/24", "gateway": "10.244.1.1", "interface": 1}],
            "dns": {"nameservers": ["10.96.0.10"]}}));
        let extra = result(json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "net1", "mac": "86:1d:96:ff:55:0d", "sandbox": "/n"}],
            "ips": [{"address": "192.168.1.205/24", "interface": 0}, {"address": "fd00::5/64", "interface": 0}]}));
        let legacy = result(json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.9.0.2/16"}}));
        let s = build(&[
            input("cbr0", "eth0", &cluster, true),
            StatusInput {
                device_info: Some(
                    json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:18:02.5"}}),
                ),
                ..input("default/macvlan-conf", "net1", &extra, false)
            },
            StatusInput {
                default_route: vec!["10.9.0.1".into()],
                ..input("default/old", "net2", &legacy, false)
            },
        ]);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            json!([
                {"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.73"], "mac": "0a:58:0a:f4:01:49",
                 "default": true, "dns": {"nameservers": ["10.96.0.10"]}},
                {"name": "default/macvlan-conf", "interface": "net1", "ips": ["192.168.1.205", "fd00::5"],
                 "mac": "86:1d:96:ff:55:0d", "default": false, "dns": {},
                 "device-info": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:18:02.5"}}},
                {"name": "default/old", "interface": "net2", "ips": ["10.9.0.2"], "default": false, "dns": {},
                 "default-route": ["10.9.0.1"]}
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
