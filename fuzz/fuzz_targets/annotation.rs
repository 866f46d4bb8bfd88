//! The pod annotation `k8s.v1.cni.cncf.io/networks` (NPWG §4.1), both forms: a comma list of
//! `[namespace/]name[@interface]`, and a JSON list of NetworkSelectionElements.
//!
//! Properties, beyond "never panics":
//! - at most `MAX_SELECTIONS` selections come back, each with a valid name (and namespace,
//!   interface when given);
//! - comma form: writing each selection back as `ns/name@if` (parts that are `None` left out)
//!   and parsing that gives the same selections;
//! - JSON form: writing each selection back as a NetworkSelectionElement and parsing that list
//!   gives the same selections;
//! - the input padded past `MAX_ANNOTATION_BYTES` is always refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::cni::request::validate_ifname;
use plexus::k8s::annotations::{
    is_dns_label, is_dns_subdomain, parse_networks, NetworkSelection, MAX_ANNOTATION_BYTES,
    MAX_SELECTIONS,
};
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Whatever the input, past the cap it is refused before it is looked at.
    let pad = MAX_ANNOTATION_BYTES + 1 - text.len().min(MAX_ANNOTATION_BYTES);
    let huge = [text, &spaces()[..pad]].concat();
    assert!(
        parse_networks(&huge).is_err(),
        "{} bytes accepted",
        huge.len()
    );

    let Ok(selections) = parse_networks(text) else {
        return;
    };
    assert!(
        selections.len() <= MAX_SELECTIONS,
        "{} selections",
        selections.len()
    );
    for s in &selections {
        assert!(is_dns_subdomain(&s.name), "name {:?}", s.name);
        if let Some(ns) = &s.namespace {
            assert!(is_dns_label(ns), "namespace {ns:?}");
        }
        if let Some(i) = &s.interface {
            assert!(validate_ifname(i).is_ok(), "interface {i:?}");
        }
    }
    let json_form = text.contains(['[', '{', '"']);
    let rendered = if json_form {
        Value::Array(selections.iter().map(element).collect()).to_string()
    } else {
        selections.iter().map(short).collect::<Vec<_>>().join(",")
    };
    match parse_networks(&rendered) {
        Ok(again) => assert_eq!(again, selections, "{text:?} rendered as {rendered:?}"),
        Err(e) => panic!("{text:?} parsed, rendered as {rendered:?}: {e}"),
    }
});

/// `MAX_ANNOTATION_BYTES + 1` spaces, made once.
fn spaces() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| " ".repeat(MAX_ANNOTATION_BYTES + 1))
}

/// `[ns/]name[@if]`.
fn short(s: &NetworkSelection) -> String {
    let mut out = String::new();
    if let Some(ns) = &s.namespace {
        out.push_str(ns);
        out.push('/');
    }
    out.push_str(&s.name);
    if let Some(i) = &s.interface {
        out.push('@');
        out.push_str(i);
    }
    out
}

/// The NetworkSelectionElement that asks for exactly `s`.
fn element(s: &NetworkSelection) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(s.name));
    let mut opt = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    };
    opt("namespace", &s.namespace);
    opt("interface", &s.interface);
    opt("mac", &s.mac);
    opt("infiniband-guid", &s.infiniband_guid);
    opt("ipam-claim-reference", &s.ipam_claim_reference);
    opt("deviceID", &s.device_id);
    if !s.ips.is_empty() {
        m.insert("ips".into(), json!(s.ips));
    }
    if !s.default_route.is_empty() {
        let gws: Vec<String> = s.default_route.iter().map(|ip| ip.to_string()).collect();
        m.insert("default-route".into(), json!(gws));
    }
    if let Some(p) = &s.port_mappings {
        m.insert("portMappings".into(), p.clone());
    }
    if let Some(b) = &s.bandwidth {
        m.insert("bandwidth".into(), b.clone());
    }
    if !s.cni_args.is_empty() {
        m.insert("cni-args".into(), Value::Object(s.cni_args.clone()));
    }
    Value::Object(m)
}
