//! The pod's network selection annotation (`k8s.v1.cni.cncf.io/networks`, NPWG §4.1) in both forms:
//! a comma list of `[namespace/]name[@interface]`, or a JSON list of NetworkSelectionElements.
//! Every element is validated here; a bad one fails the pod with an error that quotes it.

use crate::cni::error::{CniError, Code};
use crate::cni::request::validate_ifname;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::IpAddr;

/// Largest annotation value read; anything longer is refused before any API call.
pub const MAX_ANNOTATION_BYTES: usize = 64 << 10;
/// Most networks one pod may select.
pub const MAX_SELECTIONS: usize = 32;

/// One requested network, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkSelection {
    pub name: String,
    /// Empty: the pod's namespace.
    pub namespace: Option<String>,
    pub interface: Option<String>,
    pub ips: Vec<String>,
    pub mac: Option<String>,
    pub default_route: Vec<IpAddr>,
    pub port_mappings: Option<Value>,
    pub bandwidth: Option<Value>,
    pub infiniband_guid: Option<String>,
    pub cni_args: Map<String, Value>,
    pub ipam_claim_reference: Option<String>,
    /// Multus's non-standard `deviceID`; only honoured if the kubelet allocated that device.
    pub device_id: Option<String>,
    /// plexus's `plexus.io/deviceRequest: "<claim>/<request>"`: the device comes from that
    /// request of that DRA claim of the pod (the pod's name for the claim, or the
    /// ResourceClaim's), not from the order of the networks.
    pub device_request: Option<(String, String)>,
}

/// The selection key naming a DRA claim's request (a plexus extension: NPWG §4.1.2.1 wants
/// non-standard keys namespaced).
pub const DEVICE_REQUEST_KEY: &str = "plexus.io/deviceRequest";

impl NetworkSelection {
    /// What the element asks besides which NAD and which interface, canonical (keys sorted,
    /// empty ones left out): two elements with the same params ask the same of their network.
    pub fn params(&self) -> Value {
        let mut m = Map::new();
        if !self.ips.is_empty() {
            m.insert("ips".into(), Value::from(self.ips.clone()));
        }
        if let Some(v) = &self.mac {
            m.insert("mac".into(), Value::from(v.clone()));
        }
        if !self.default_route.is_empty() {
            let gws: Vec<String> = self.default_route.iter().map(ToString::to_string).collect();
            m.insert("default-route".into(), Value::from(gws));
        }
        if let Some(v) = &self.port_mappings {
            m.insert("portMappings".into(), v.clone());
        }
        if let Some(v) = &self.bandwidth {
            m.insert("bandwidth".into(), v.clone());
        }
        if let Some(v) = &self.infiniband_guid {
            m.insert("infiniband-guid".into(), Value::from(v.clone()));
        }
        if !self.cni_args.is_empty() {
            m.insert("cni-args".into(), Value::Object(self.cni_args.clone()));
        }
        if let Some(v) = &self.ipam_claim_reference {
            m.insert("ipam-claim-reference".into(), Value::from(v.clone()));
        }
        if let Some(v) = &self.device_id {
            m.insert("deviceID".into(), Value::from(v.clone()));
        }
        if let Some((claim, request)) = &self.device_request {
            m.insert(
                DEVICE_REQUEST_KEY.into(),
                Value::from(format!("{claim}/{request}")),
            );
        }
        // serde_json keeps insertion order here (preserve_order): sort for a canonical form.
        let mut keys: Vec<(String, Value)> = m.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Value::Object(keys.into_iter().collect())
    }

    /// The capability args this selection asks for, keyed as CNI capabilities.
    pub fn capability_args(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if !self.ips.is_empty() {
            m.insert("ips".into(), Value::from(self.ips.clone()));
        }
        if let Some(mac) = &self.mac {
            m.insert("mac".into(), Value::from(mac.clone()));
        }
        if let Some(p) = &self.port_mappings {
            m.insert("portMappings".into(), p.clone());
        }
        if let Some(b) = &self.bandwidth {
            m.insert("bandwidth".into(), b.clone());
        }
        if let Some(g) = &self.infiniband_guid {
            m.insert("infinibandGUID".into(), Value::from(g.clone()));
        }
        m
    }
}

fn bad(element: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(
        Code::INVALID_CONFIG,
        format!("invalid network selection {element}: {why}"),
    )
}

/// DNS-1123 label: namespaces.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// DNS-1123 subdomain: object names such as NADs.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Parse the annotation value. Empty or whitespace: no networks.
pub fn parse_networks(value: &str) -> Result<Vec<NetworkSelection>, CniError> {
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            format!("network selection annotation is {} bytes, more than the {MAX_ANNOTATION_BYTES} allowed", value.len()),
        ));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(vec![]);
    }
    let out = if trimmed.contains(['[', '{', '"']) {
        parse_json(trimmed)?
    } else {
        trimmed
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_short)
            .collect::<Result<Vec<_>, _>>()?
    };
    if out.len() > MAX_SELECTIONS {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            format!(
                "{} networks selected, more than the {MAX_SELECTIONS} allowed",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// `[namespace/]name[@interface]`.
pub fn parse_short(element: &str) -> Result<NetworkSelection, CniError> {
    let quoted = format!("\"{}\"", element.escape_debug());
    let (rest, interface) = match element.split_once('@') {
        Some((r, i)) => (r.trim(), Some(i.trim().to_string())),
        None => (element, None),
    };
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, n)) => (Some(ns.trim().to_string()), n.trim().to_string()),
        None => (None, rest.trim().to_string()),
    };
    let sel = NetworkSelection {
        name,
        namespace,
        interface,
        ..Default::default()
    };
    validate(&sel).map_err(|why| bad(&quoted, why))?;
    Ok(sel)
}

fn parse_json(text: &str) -> Result<Vec<NetworkSelection>, CniError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        CniError::new(
            Code::INVALID_CONFIG,
            format!("network selection annotation is not valid JSON: {e}"),
        )
    })?;
    let Value::Array(items) = value else {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            "network selection annotation must be a JSON list of objects",
        ));
    };
    if items.len() > MAX_SELECTIONS {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            format!(
                "{} networks selected, more than the {MAX_SELECTIONS} allowed",
                items.len()
            ),
        ));
    }
    items.iter().map(parse_element).collect()
}

/// A NetworkSelectionElement as written (NPWG §4.1.2), checked by serde; unknown keys (other
/// implementations' extensions) are ignored.
#[derive(Deserialize)]
struct RawElement {
    name: Option<String>,
    namespace: Option<String>,
    interface: Option<String>,
    /// The deprecated spelling of `interface`.
    #[serde(rename = "interfaceRequest")]
    interface_request: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    ips: Vec<String>,
    mac: Option<String>,
    #[serde(rename = "default-route", default, deserialize_with = "null_default")]
    default_route: Vec<IpAddr>,
    #[serde(rename = "portMappings")]
    port_mappings: Option<Value>,
    bandwidth: Option<Value>,
    #[serde(rename = "infiniband-guid")]
    infiniband_guid: Option<String>,
    #[serde(rename = "cni-args", default, deserialize_with = "null_default")]
    cni_args: Map<String, Value>,
    #[serde(rename = "ipam-claim-reference")]
    ipam_claim_reference: Option<String>,
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
    #[serde(rename = "plexus.io/deviceRequest")]
    device_request: Option<String>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn parse_element(v: &Value) -> Result<NetworkSelection, CniError> {
    let quoted = v.to_string();
    let e = |why: String| bad(&quoted, why);
    if !v.is_object() {
        return Err(e("not an object".into()));
    }
    let raw: RawElement = serde_path_to_error::deserialize(v).map_err(|err| {
        let path = err.path().to_string();
        e(format!("\"{path}\": {}", err.into_inner()))
    })?;
    // An empty string is no value, as Multus reads it.
    let given = |s: Option<String>| s.filter(|s| !s.is_empty());
    let sel = NetworkSelection {
        name: raw.name.unwrap_or_default(),
        namespace: given(raw.namespace),
        interface: given(raw.interface).or_else(|| given(raw.interface_request)),
        ips: raw.ips,
        mac: given(raw.mac),
        default_route: raw.default_route,
        port_mappings: raw.port_mappings.filter(|v| !v.is_null()),
        bandwidth: raw.bandwidth.filter(|v| !v.is_null()),
        infiniband_guid: given(raw.infiniband_guid),
        cni_args: raw.cni_args,
        ipam_claim_reference: given(raw.ipam_claim_reference),
        device_id: given(raw.device_id),
        device_request: match given(raw.device_request) {
            None => None,
            Some(r) => Some(parse_device_request(&r).map_err(e)?),
        },
    };
    validate(&sel).map_err(e)?;
    Ok(sel)
}

/// `<claim>/<request>`: a claim name (an object name) and a request name (a DNS label, or
/// `<request>/<subrequest>` as allocation results name a subrequest).
fn parse_device_request(r: &str) -> Result<(String, String), String> {
    let bad = || {
        format!(
            "\"{DEVICE_REQUEST_KEY}\": \"{}\" is not <claim>/<request>",
            r.escape_debug()
        )
    };
    let (claim, request) = r.split_once('/').ok_or_else(bad)?;
    let label = |x: &str| {
        !x.is_empty()
            && x.len() <= 63
            && x.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !x.starts_with('-')
            && !x.ends_with('-')
    };
    if !is_dns_subdomain(claim) || !request.split('/').all(label) || request.split('/').count() > 2
    {
        return Err(bad());
    }
    Ok((claim.to_string(), request.to_string()))
}

fn validate(s: &NetworkSelection) -> Result<(), String> {
    if !is_dns_subdomain(&s.name) {
        return Err(format!(
            "name \"{}\" is not a valid object name",
            s.name.escape_debug()
        ));
    }
    if let Some(ns) = &s.namespace {
        if !is_dns_label(ns) {
            return Err(format!(
                "namespace \"{}\" is not a valid namespace",
                ns.escape_debug()
            ));
        }
    }
    if let Some(i) = &s.interface {
        validate_ifname(i).map_err(|e| e.msg)?;
    }
    for ip in &s.ips {
        if !is_ip_or_cidr(ip) {
            return Err(format!("ips: \"{ip}\" is not an IP address or CIDR"));
        }
    }
    if let Some(mac) = &s.mac {
        if !is_hw_addr(mac, &[6]) {
            return Err(format!("mac \"{mac}\" is not a MAC address"));
        }
    }
    if let Some(g) = &s.infiniband_guid {
        if !is_hw_addr(g, &[8, 20]) {
            return Err(format!("infiniband-guid \"{g}\" is not a GUID"));
        }
    }
    let mut families = (0, 0);
    for gw in &s.default_route {
        if gw.is_ipv4() {
            families.0 += 1
        } else {
            families.1 += 1
        }
    }
    if families.0 > 1 || families.1 > 1 {
        return Err("default-route has more than one gateway of a family".into());
    }
    if let Some(p) = &s.port_mappings {
        validate_port_mappings(p)?;
    }
    if let Some(b) = &s.bandwidth {
        validate_bandwidth(b)?;
    }
    if s.ipam_claim_reference.is_some() && !s.ips.is_empty() {
        return Err("\"ips\" and \"ipam-claim-reference\" cannot both be set".into());
    }
    Ok(())
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, len)) => match (ip.parse::<IpAddr>(), len.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32 && !len.starts_with('+'),
            (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128 && !len.starts_with('+'),
            _ => false,
        },
    }
}

/// Hardware addresses as Go's `net.ParseMAC` reads them: hex octets split by `:` or `-`.
fn is_hw_addr(s: &str, octets: &[usize]) -> bool {
    let sep = if s.contains(':') { ':' } else { '-' };
    let parts: Vec<&str> = s.split(sep).collect();
    octets.contains(&parts.len())
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn validate_port_mappings(v: &Value) -> Result<(), String> {
    let Value::Array(list) = v else {
        return Err("portMappings must be a list".into());
    };
    for m in list {
        let port = |k: &str| {
            m.get(k)
                .and_then(Value::as_u64)
                .filter(|p| (1..=65535).contains(p))
        };
        if port("hostPort").is_none() || port("containerPort").is_none() {
            return Err(format!(
                "portMappings entry {m} needs hostPort and containerPort from 1 to 65535"
            ));
        }
        if let Some(p) = m.get("protocol") {
            let ok = p
                .as_str()
                .is_some_and(|p| ["tcp", "udp", "sctp"].contains(&p.to_ascii_lowercase().as_str()));
            if !ok {
                return Err(format!(
                    "portMappings entry {m}: protocol must be tcp, udp or sctp"
                ));
            }
        }
        if let Some(ip) = m.get("hostIP") {
            if !ip
                .as_str()
                .is_some_and(|s| s.is_empty() || s.parse::<IpAddr>().is_ok())
            {
                return Err(format!(
                    "portMappings entry {m}: hostIP is not an IP address"
                ));
            }
        }
    }
    Ok(())
}

fn validate_bandwidth(v: &Value) -> Result<(), String> {
    let Value::Object(o) = v else {
        return Err("bandwidth must be an object".into());
    };
    for (k, val) in o {
        if !["ingressRate", "ingressBurst", "egressRate", "egressBurst"].contains(&k.as_str()) {
            return Err(format!("bandwidth: unknown key \"{k}\""));
        }
        if val.as_u64().is_none() {
            return Err(format!("bandwidth: {k} must be a non-negative integer"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn comma_form() {
        let v = parse_networks(" net-a , other-ns/net-c@eth9,b.c ").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            (
                v[0].name.as_str(),
                v[0].namespace.as_deref(),
                v[0].interface.as_deref()
            ),
            ("net-a", None, None)
        );
        assert_eq!(
            (
                v[1].name.as_str(),
                v[1].namespace.as_deref(),
                v[1].interface.as_deref()
            ),
            ("net-c", Some("other-ns"), Some("eth9"))
        );
        assert_eq!(v[2].name, "b.c");
        assert!(parse_networks("").unwrap().is_empty());
        assert!(parse_networks("a,,b,").unwrap().len() == 2);
        for bad in [
            "UPPER",
            "a/b/c",
            "ns/",
            "/name",
            "a@",
            "a@b/c",
            "a@toolonginterface0",
            "-a",
            "a_b",
            "bad ns/a",
        ] {
            let e = parse_networks(bad).unwrap_err();
            assert_eq!(e.code, Code::INVALID_CONFIG, "{bad}");
        }
        let e = parse_networks("ok,Bad").unwrap_err();
        assert!(e.msg.contains("\"Bad\""), "quotes the element: {}", e.msg);
    }

    #[test]
    fn json_form_every_field() {
        let v = parse_networks(&json!([{
            "name": "macvlan-conf", "namespace": "ns1", "interface": "net9",
            "ips": ["10.1.1.11/24", "2001:db8::5"], "mac": "02:23:45:67:89:01",
            "infiniband-guid": "24:8a:07:03:00:8d:ae:2f",
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "1.2.3.4"}],
            "bandwidth": {"ingressRate": 2048, "ingressBurst": 1600, "egressRate": 4096, "egressBurst": 1600},
            "cni-args": {"spoofchk": "on"}, "default-route": ["10.1.1.254"], "unknown.example.com/x": 1
        }]).to_string()).unwrap();
        let s = &v[0];
        assert_eq!(s.interface.as_deref(), Some("net9"));
        assert_eq!(
            s.default_route,
            vec!["10.1.1.254".parse::<IpAddr>().unwrap()]
        );
        let caps = s.capability_args();
        assert_eq!(caps["ips"], json!(["10.1.1.11/24", "2001:db8::5"]));
        assert_eq!(caps["mac"], "02:23:45:67:89:01");
        assert_eq!(caps["infinibandGUID"], "24:8a:07:03:00:8d:ae:2f");
        assert_eq!(caps["portMappings"][0]["hostPort"], 8080);
        assert_eq!(caps["bandwidth"]["egressRate"], 4096);
        assert_eq!(s.cni_args["spoofchk"], "on");
        // Deprecated interfaceRequest still honoured.
        let v = parse_networks(r#"[{"name":"a","interfaceRequest":"foo"}]"#).unwrap();
        assert_eq!(v[0].interface.as_deref(), Some("foo"));
    }

    #[test]
    fn json_form_rejects_bad_elements_quoting_them() {
        for bad in [
            json!({"name": "a"}),
            json!([{"namespace": "x"}]),
            json!([{"name": "a", "ips": ["10.0.0.300"]}]),
            json!([{"name": "a", "ips": ["10.0.0.1/33"]}]),
            json!([{"name": "a", "ips": "10.0.0.1"}]),
            json!([{"name": "a", "mac": "zz:23:45:67:89:01"}]),
            json!([{"name": "a", "mac": "02:23:45:67:89"}]),
            json!([{"name": "a", "interface": "eth/0"}]),
            json!([{"name": "a", "default-route": ["nope"]}]),
            json!([{"name": "a", "default-route": ["10.0.0.1", "10.0.0.2"]}]),
            json!([{"name": "a", "portMappings": [{"hostPort": 0, "containerPort": 80}]}]),
            json!([{"name": "a", "portMappings": [{"hostPort": 1, "containerPort": 80, "protocol": "icmp"}]}]),
            json!([{"name": "a", "bandwidth": {"ingressRate": -1}}]),
            json!([{"name": "a", "bandwidth": {"speed": 1}}]),
            json!([{"name": "a", "cni-args": [1]}]),
            json!([{"name": "a", "ips": ["10.0.0.1"], "ipam-claim-reference": "claim"}]),
            json!([{"name": "a", "infiniband-guid": "02:23:45:67:89:01"}]),
            json!([{"name": "a", "plexus.io/deviceRequest": "claim"}]),
            json!([{"name": "a", "plexus.io/deviceRequest": "/req"}]),
            json!([{"name": "a", "plexus.io/deviceRequest": "claim/Req"}]),
            json!([{"name": "a", "plexus.io/deviceRequest": "claim/a/b/c"}]),
            json!([1]),
        ] {
            let e = parse_networks(&bad.to_string()).unwrap_err();
            assert_eq!(e.code, Code::INVALID_CONFIG, "{bad}");
        }
        let e = parse_networks(r#"[{"name":"a","mac":"nope"}]"#).unwrap_err();
        assert!(e.msg.contains(r#"{"name":"a","mac":"nope"}"#), "{}", e.msg);
        // A wrong type names the key.
        let e = parse_networks(r#"[{"name":"a","ips":[1]}]"#).unwrap_err();
        assert!(e.msg.contains("\"ips[0]\""), "{}", e.msg);
        let e = parse_networks(r#"[{"name":"a","default-route":["nope"]}]"#).unwrap_err();
        assert!(e.msg.contains("\"default-route[0]\""), "{}", e.msg);
        assert!(parse_networks("[{").is_err());
    }

    #[test]
    fn a_device_request_names_a_claim_and_its_request() {
        let s = parse_networks(
            r#"[{"name":"vf","plexus.io/deviceRequest":"net/vf"},{"name":"vf","plexus.io/deviceRequest":"pod-net-x1/vfs/fast"}]"#,
        )
        .unwrap();
        assert_eq!(s[0].device_request, Some(("net".into(), "vf".into())));
        assert_eq!(
            s[1].device_request,
            Some(("pod-net-x1".into(), "vfs/fast".into()))
        );
        assert_eq!(s[0].params()["plexus.io/deviceRequest"], "net/vf");
    }

    #[test]
    fn caps_are_enforced_before_anything_else() {
        let many = (0..=MAX_SELECTIONS)
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_networks(&many).unwrap_err().msg.contains("more than"));
        let huge = "a,".repeat(MAX_ANNOTATION_BYTES);
        assert!(parse_networks(&huge).unwrap_err().msg.contains("bytes"));
    }
}
