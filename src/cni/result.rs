//! CNI results in every released version, and the converters between them.
//!
//! Results are held in one canonical shape (spec 1.1.0) and written out in whatever version is asked
//! for, following the reference converters (containernetworking/cni `pkg/types/{020,040,100}`):
//! - 1.1.0 ⇄ 1.0.0: the same shape; 1.1.0-only fields (interface `mtu`/`socketPath`/`pciID`, route
//!   `mtu`/`advmss`/`priority`/`table`/`scope`) are left out when writing an older version.
//! - 1.x → 0.3.x/0.4.0: each IP gains `"version":"4"|"6"`.
//! - → 0.1.0/0.2.0: only the first IPv4 and first IPv6 address survive, as `ip4`/`ip6`, with the
//!   routes of their family; interfaces are dropped; no address at all is an error.

use super::error::{CniError, Code};
use super::version::Version;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `null` read as empty, as Go's encoding/json (and so libcni) reads it: Go plugins print a nil
/// slice as `null` unless the field is `omitempty`.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub interfaces: Vec<Interface>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ips: Vec<IpConfig>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routes: Vec<Route>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, e.g. `10.1.0.5/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub search: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

// Legacy (0.1.0/0.2.0) shapes.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LegacyResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<LegacyIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LegacyIp {
    ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<LegacyRoute>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LegacyRoute {
    dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gw: Option<String>,
}

fn bad_result(why: impl std::fmt::Display) -> CniError {
    CniError::new(Code::DECODE, format!("cannot decode result: {why}"))
}

/// Whether an address (CIDR or bare) is IPv6. Anything with a `:` before the prefix is.
fn is_v6(addr: &str) -> bool {
    addr.split('/').next().unwrap_or("").contains(':')
}

impl CniResult {
    /// Parse a result in any released version. A result without `cniVersion` is read in
    /// `assumed` (the version of the config that produced it), as libcni's `fixupResultVersion`.
    pub fn parse(bytes: &[u8], assumed: Version) -> Result<(CniResult, Version), CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(bad_result)?;
        Self::from_value(value, assumed)
    }

    pub fn from_value(value: Value, assumed: Version) -> Result<(CniResult, Version), CniError> {
        let Value::Object(mut obj) = value else {
            return Err(bad_result("not a JSON object"));
        };
        let version = match obj.remove("cniVersion") {
            Some(Value::String(s)) => s.parse::<Version>()?,
            Some(_) => return Err(bad_result("cniVersion is not a string")),
            None => assumed,
        }
        .require_supported()?;
        let value = Value::Object(obj);
        let result = if version < Version::V0_3_0 {
            let legacy: LegacyResult = serde_json::from_value(value).map_err(bad_result)?;
            Self::from_legacy(legacy)
        } else {
            // 0.3.x/0.4.0 carry a per-IP "version" that 1.x dropped; serde ignores it.
            serde_json::from_value(value).map_err(bad_result)?
        };
        Ok((result, version))
    }

    fn from_legacy(legacy: LegacyResult) -> CniResult {
        let mut out = CniResult {
            dns: legacy.dns,
            ..Default::default()
        };
        for ip in [legacy.ip4, legacy.ip6].into_iter().flatten() {
            out.ips.push(IpConfig {
                address: ip.ip,
                gateway: ip.gateway,
                interface: None,
            });
            out.routes.extend(ip.routes.into_iter().map(|r| Route {
                dst: r.dst,
                gw: r.gw,
                ..Default::default()
            }));
        }
        out
    }

    /// The result as a JSON value in `version`, `cniVersion` first.
    pub fn to_value(&self, version: Version) -> Result<Value, CniError> {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), Value::String(version.to_string()));
        if version < Version::V0_3_0 {
            let legacy = self.to_legacy()?;
            let Value::Object(rest) = serde_json::to_value(legacy).expect("serializes") else {
                unreachable!()
            };
            obj.extend(rest);
            return Ok(Value::Object(obj));
        }
        let mut copy = self.clone();
        if version < Version::V1_1_0 {
            for i in &mut copy.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for r in &mut copy.routes {
                r.mtu = None;
                r.advmss = None;
                r.priority = None;
                r.table = None;
                r.scope = None;
            }
        }
        let Value::Object(rest) = serde_json::to_value(&copy).expect("serializes") else {
            unreachable!()
        };
        obj.extend(rest);
        if version < Version::V1_0_0 {
            if let Some(Value::Array(ips)) = obj.get_mut("ips") {
                for ip in ips.iter_mut() {
                    let fam = if is_v6(ip["address"].as_str().unwrap_or("")) {
                        "6"
                    } else {
                        "4"
                    };
                    // "version" goes first, as the 0.3.x/0.4.0 Go types print it.
                    let Value::Object(m) = ip else { continue };
                    let mut with = Map::new();
                    with.insert("version".into(), Value::String(fam.into()));
                    with.extend(std::mem::take(m));
                    *m = with;
                }
            }
        }
        Ok(Value::Object(obj))
    }

    pub fn to_json(&self, version: Version) -> Result<String, CniError> {
        Ok(serde_json::to_string(&self.to_value(version)?).expect("serializes"))
    }

    fn to_legacy(&self) -> Result<LegacyResult, CniError> {
        let pick = |v6: bool| {
            self.ips
                .iter()
                .find(|ip| is_v6(&ip.address) == v6)
                .map(|ip| LegacyIp {
                    ip: ip.address.clone(),
                    gateway: ip.gateway.clone(),
                    routes: self
                        .routes
                        .iter()
                        .filter(|r| is_v6(&r.dst) == v6)
                        .map(|r| LegacyRoute {
                            dst: r.dst.clone(),
                            gw: r.gw.clone(),
                        })
                        .collect(),
                })
        };
        let legacy = LegacyResult {
            ip4: pick(false),
            ip6: pick(true),
            dns: self.dns.clone(),
        };
        if legacy.ip4.is_none() && legacy.ip6.is_none() {
            return Err(CniError::new(
                Code::INCOMPATIBLE_VERSION,
                "cannot convert result to 0.2.0 or older: no valid IP addresses",
            ));
        }
        Ok(legacy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn nulls_from_go_plugins_read_as_empty() {
        // Go prints a nil slice as null; libcni reads it as empty, so does plexus.
        let raw = br#"{"cniVersion":"1.0.0","interfaces":null,"ips":[{"address":"10.1.0.5/24"}],"routes":null,"dns":{"nameservers":null}}"#;
        let (r, _) = CniResult::parse(raw, Version::V1_0_0).unwrap();
        assert!(r.interfaces.is_empty() && r.routes.is_empty() && r.dns.nameservers.is_empty());
        assert_eq!(r.ips.len(), 1);
        let (r, _) =
            CniResult::parse(br#"{"cniVersion":"0.4.0","dns":null}"#, Version::V1_0_0).unwrap();
        assert_eq!(r, CniResult::default());
    }

    // The AWS VPC CNI's result packs a route table id and a VLAN id into "mac" and a device
    // number into "sandbox"; plexus must carry such values through untouched.
    #[test]
    fn non_mac_values_in_mac_and_sandbox_survive_conversion() {
        let raw = json!({"cniVersion": "0.4.0", "interfaces": [
            {"name": "eni1"}, {"name": "eth0", "sandbox": "/var/run/netns/x", "mac": "254"},
            {"name": "dummy1", "mac": "0", "sandbox": "0"}],
            "ips": [{"version": "4", "address": "10.2.0.2/32", "gateway": "169.254.1.1", "interface": 1}]});
        let (r, v) = CniResult::from_value(raw.clone(), Version::V1_0_0).unwrap();
        let back = r.to_value(v).unwrap();
        assert_eq!(back["interfaces"], raw["interfaces"]);
        assert_eq!(
            r.to_value(Version::V1_1_0).unwrap()["interfaces"][2],
            json!({"name": "dummy1", "mac": "0", "sandbox": "0"})
        );
    }

    fn sample() -> CniResult {
        let v = json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "eth0", "mac": "00:11:22:33:44:66", "mtu": 1400,
                 "sandbox": "/var/run/netns/x", "socketPath": "/s", "pciID": "0000:00:01.0"}
            ],
            "ips": [
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 1}
            ],
            "routes": [
                {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "table": 100},
                {"dst": "::/0"}
            ],
            "dns": {"nameservers": ["10.1.0.10"], "search": ["svc"]}
        });
        CniResult::from_value(v, Version::V1_1_0).unwrap().0
    }

    #[test]
    fn one_one_to_one_zero_drops_new_fields_only() {
        let v = sample().to_value(Version::V1_0_0).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert!(v["interfaces"][1].get("socketPath").is_none());
        assert!(v["interfaces"][1].get("pciID").is_none());
        assert!(v["routes"][0].get("table").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/x");
        assert!(v["ips"][0].get("version").is_none());
        let v11 = sample().to_value(Version::V1_1_0).unwrap();
        assert_eq!(v11["interfaces"][1]["mtu"], 1400);
        assert_eq!(v11["routes"][0]["table"], 100);
    }

    #[test]
    fn zero_four_adds_ip_versions_first() {
        let s = sample().to_json(Version::V0_4_0).unwrap();
        assert!(
            s.contains(r#"{"version":"4","address":"10.1.0.5/24""#),
            "{s}"
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][0]["interface"], 1);
    }

    #[test]
    fn legacy_keeps_first_of_each_family() {
        let mut r = sample();
        r.ips.push(IpConfig {
            address: "10.2.0.5/24".into(),
            ..Default::default()
        });
        let v = r.to_value(Version::V0_2_0).unwrap();
        assert_eq!(v["ip4"]["ip"], "10.1.0.5/24");
        assert_eq!(v["ip4"]["gateway"], "10.1.0.1");
        assert_eq!(
            v["ip4"]["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}])
        );
        assert_eq!(v["ip6"]["ip"], "fd00::5/64");
        assert_eq!(v["ip6"]["routes"], json!([{"dst": "::/0"}]));
        assert_eq!(v["dns"]["nameservers"], json!(["10.1.0.10"]));
        assert!(v.get("interfaces").is_none());
    }

    #[test]
    fn legacy_without_ips_is_an_error() {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "x".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(r.to_value(Version::V0_2_0).is_err());
        assert!(r.to_value(Version(0, 3, 1)).is_ok());
    }

    #[test]
    fn parses_each_version() {
        let legacy = br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/8","gateway":"10.0.0.1",
            "routes":[{"dst":"0.0.0.0/0"}]},"dns":{}}"#;
        let (r, v) = CniResult::parse(legacy, Version::V1_0_0).unwrap();
        assert_eq!(v, Version::V0_2_0);
        assert_eq!(r.ips[0].address, "10.0.0.2/8");
        assert_eq!(r.routes[0].dst, "0.0.0.0/0");
        let v031 = br#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.2/8"}]}"#;
        let (r, v) = CniResult::parse(v031, Version::V1_0_0).unwrap();
        assert_eq!(v, Version(0, 3, 1));
        assert_eq!(r.ips[0].address, "10.0.0.2/8");
        let (_, v) = CniResult::parse(br#"{"ips":[]}"#, Version::V0_4_0).unwrap();
        assert_eq!(v, Version::V0_4_0, "missing cniVersion takes the config's");
        assert!(CniResult::parse(br#"{"cniVersion":"9.9.9"}"#, Version::V1_0_0).is_err());
        assert!(CniResult::parse(b"[]", Version::V1_0_0).is_err());
        assert!(CniResult::parse(br#"{"ips":"x"}"#, Version::V1_0_0).is_err());
    }

    #[test]
    fn every_version_round_trips_through_itself() {
        let r = sample();
        for s in super::super::version::SUPPORTED {
            let v: Version = s.parse().unwrap();
            let text = r.to_json(v).unwrap();
            let (back, got) = CniResult::parse(text.as_bytes(), Version::V1_1_0).unwrap();
            assert_eq!(got, v);
            // Writing again in the same version must give the same bytes.
            assert_eq!(back.to_json(v).unwrap(), text, "{s}");
        }
    }

    fn arb_ip() -> impl Strategy<Value = String> {
        prop_oneof![
            (1u8..=254, 0u8..=255, 1u8..=32).prop_map(|(a, b, p)| format!("10.{a}.{b}.1/{p}")),
            (1u16..=0xfffe, 1u8..=128).prop_map(|(a, p)| format!("fd00:{a:x}::1/{p}")),
        ]
    }

    proptest! {
        // Up- and down-conversion between the 0.3.0+ versions loses nothing the lower version has.
        #[test]
        fn modern_versions_round_trip(addrs in proptest::collection::vec(arb_ip(), 1..5),
                                      mtu in proptest::option::of(576u32..9000)) {
            let r = CniResult {
                interfaces: vec![Interface { name: "eth0".into(), mtu, ..Default::default() }],
                ips: addrs.iter().map(|a| IpConfig { address: a.clone(), interface: Some(0),
                    ..Default::default() }).collect(),
                routes: vec![Route { dst: "0.0.0.0/0".into(), ..Default::default() }],
                dns: Dns::default(),
            };
            for low in [Version::V0_3_0, Version(0,3,1), Version::V0_4_0, Version::V1_0_0] {
                let (down, _) = CniResult::from_value(r.to_value(low).unwrap(), low).unwrap();
                let mut expect = r.clone();
                if low < Version::V1_1_0 { expect.interfaces[0].mtu = None; }
                prop_assert_eq!(&down, &expect);
                let up = down.to_value(Version::V1_1_0).unwrap();
                prop_assert_eq!(CniResult::from_value(up, Version::V1_1_0).unwrap().0, expect);
            }
            // Legacy keeps exactly the first address of each family.
            let legacy = r.to_value(Version::V0_2_0).unwrap();
            let (back, _) = CniResult::from_value(legacy, Version::V0_2_0).unwrap();
            let first4 = addrs.iter().find(|a| !a.contains(':'));
            let first6 = addrs.iter().find(|a| a.contains(':'));
            let kept: Vec<&String> = back.ips.iter().map(|i| &i.address).collect();
            prop_assert_eq!(kept, first4.into_iter().chain(first6).collect::<Vec<_>>());
        }
    }
}
