//! CNI results (what every delegate prints, what plexus prints and caches) in every released
//! version, and the converters between them (src/cni/result.rs).
//!
//! For the input read with each supported version as the assumed one (the version used when the
//! result has no `cniVersion`), and each target version V:
//! - idempotence: `to_json(V)`, parsed back, `to_json(V)` again gives the same JSON;
//! - V ≥ 0.3.0 loses only what V cannot carry: interfaces (name, mac, sandbox), IPs (address,
//!   gateway, interface index), routes (dst, gw) and DNS survive the round trip through V; the
//!   1.1.0-only fields (interface mtu/socketPath/pciID, route mtu/advmss/priority/table/scope)
//!   survive only V = 1.1.0;
//! - 1.1.0 → 1.0.0 → 1.1.0 equals the original with exactly those 1.1.0-only fields cleared;
//! - V < 0.3.0 (0.1.0/0.2.0): keeps the first IPv4 and first IPv6 address with the routes of their
//!   family and the DNS, or is refused when there is no address;
//! - a result that parses in one assumed version parses the same in every other assumed version
//!   when it carries its own `cniVersion`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::cni::result::{Interface, Route};
use plexus::cni::version::SUPPORTED;
use plexus::cni::{CniResult, Version};

fuzz_target!(|data: &[u8]| {
    let versions: Vec<Version> = SUPPORTED.iter().map(|s| s.parse().unwrap()).collect();
    let mut first: Option<(CniResult, Version, Version)> = None;
    // The readings differ only with the assumed version's shape (legacy or not): check the
    // conversions once per distinct reading.
    let mut checked: Vec<CniResult> = vec![];
    for &assumed in &versions {
        let Ok((result, version)) = CniResult::parse(data, assumed) else {
            continue;
        };
        assert!(version.is_supported());
        match &first {
            None => first = Some((result.clone(), version, assumed)),
            Some((r0, v0, a0)) => {
                // Only the assumed version may differ between the readings; if the result names
                // its own version, the assumed one plays no part.
                if v0 == &version {
                    assert_eq!(r0, &result, "same version, different reading");
                } else {
                    assert!(
                        *v0 == *a0 && version == assumed,
                        "explicit cniVersion ignored"
                    );
                }
            }
        }
        if !checked.contains(&result) {
            check_conversions(&result, &versions);
            checked.push(result);
        }
    }
});

fn check_conversions(r: &CniResult, versions: &[Version]) {
    for &v in versions {
        let json = match r.to_json(v) {
            Ok(j) => j,
            Err(e) => {
                // Only the legacy versions can refuse, and only a result without addresses.
                assert!(v < Version::V0_3_0, "to_json({v}) failed: {e}");
                assert!(
                    r.ips.is_empty(),
                    "legacy refused a result with addresses: {e}"
                );
                continue;
            }
        };
        let value: serde_json::Value = serde_json::from_str(&json).expect("to_json is JSON");
        assert_eq!(value, r.to_value(v).unwrap(), "to_json and to_value agree");
        let (back, got) = match CniResult::parse(json.as_bytes(), Version::V1_1_0) {
            Ok(b) => b,
            Err(e) => panic!("to_json({v}) does not parse back: {e}: {json}"),
        };
        assert_eq!(got, v, "written as {v}, read as {got}");
        let again = back.to_json(v).expect("converts again");
        assert_eq!(again, json, "to_json({v}) is not idempotent");

        if v >= Version::V0_3_0 {
            let mut expect = r.clone();
            if v < Version::V1_1_0 {
                clear_1_1_only(&mut expect);
            }
            assert_eq!(back, expect, "round trip through {v}");
            // What must survive, stated field by field (the assert above is stronger, but this
            // is the contract).
            for (a, b) in r.interfaces.iter().zip(&back.interfaces) {
                assert_eq!((&a.name, &a.mac, &a.sandbox), (&b.name, &b.mac, &b.sandbox));
            }
            for (a, b) in r.ips.iter().zip(&back.ips) {
                assert_eq!(
                    (&a.address, &a.gateway, a.interface),
                    (&b.address, &b.gateway, b.interface)
                );
            }
            for (a, b) in r.routes.iter().zip(&back.routes) {
                assert_eq!((&a.dst, &a.gw), (&b.dst, &b.gw));
            }
            assert_eq!(r.dns, back.dns);
        } else {
            check_legacy(r, &back, v);
        }
    }
    // 1.1.0 → 1.0.0 → 1.1.0 loses the 1.1.0-only fields and nothing else.
    let down = r.to_value(Version::V1_0_0).unwrap();
    let (mid, _) = CniResult::from_value(down, Version::V1_0_0).unwrap();
    let up = mid.to_value(Version::V1_1_0).unwrap();
    let (up, _) = CniResult::from_value(up, Version::V1_1_0).unwrap();
    let mut expect = r.clone();
    clear_1_1_only(&mut expect);
    assert_eq!(up, expect, "1.1.0 -> 1.0.0 -> 1.1.0");
}

/// The family as the legacy converter sorts addresses: v6 if there is a `:` before the prefix.
fn is_v6(addr: &str) -> bool {
    addr.split('/').next().unwrap_or("").contains(':')
}

fn check_legacy(r: &CniResult, back: &CniResult, v: Version) {
    let first4 = r.ips.iter().find(|ip| !is_v6(&ip.address));
    let first6 = r.ips.iter().find(|ip| is_v6(&ip.address));
    let kept: Vec<(&String, &Option<String>)> =
        back.ips.iter().map(|i| (&i.address, &i.gateway)).collect();
    let want: Vec<(&String, &Option<String>)> = first4
        .into_iter()
        .chain(first6)
        .map(|i| (&i.address, &i.gateway))
        .collect();
    assert_eq!(kept, want, "{v} keeps the first address of each family");
    assert!(back.interfaces.is_empty(), "{v} has no interfaces");
    assert!(back.ips.iter().all(|i| i.interface.is_none()));
    // Routes of each kept family, v4 first, dst/gw only.
    let fam = |v6: bool| {
        r.routes
            .iter()
            .filter(move |rt| is_v6(&rt.dst) == v6)
            .map(|rt| Route {
                dst: rt.dst.clone(),
                gw: rt.gw.clone(),
                ..Default::default()
            })
    };
    let mut routes: Vec<Route> = vec![];
    if first4.is_some() {
        routes.extend(fam(false));
    }
    if first6.is_some() {
        routes.extend(fam(true));
    }
    assert_eq!(back.routes, routes, "{v} routes");
    assert_eq!(back.dns, r.dns, "{v} DNS");
}

fn clear_1_1_only(r: &mut CniResult) {
    for i in &mut r.interfaces {
        let Interface {
            mtu,
            socket_path,
            pci_id,
            ..
        } = i;
        *mtu = None;
        *socket_path = None;
        *pci_id = None;
    }
    for rt in &mut r.routes {
        rt.mtu = None;
        rt.advmss = None;
        rt.priority = None;
        rt.table = None;
        rt.scope = None;
    }
}
