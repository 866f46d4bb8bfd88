//! The plexus netconf (stdin of every CNI call, and the daemon's merged config) and the delegate
//! networks it names (`Network`: a single plugin config or a conflist; also NAD configs and
//! files in `confDir`).
//!
//! Properties, beyond "never panics":
//! - a `NetConf` that parses is valid JSON on its own, and re-parsing the `serde_json` round trip
//!   of that value gives the same `cniVersion` and `name`;
//! - `static_networks` on a conf dir that does not exist returns (never panics); file references
//!   are kept inside `/nonexistent` so the fuzzer never reads this machine's files;
//! - every `Network` that parses (the input itself, and each inline delegate) has at least one
//!   plugin, a supported version, and every plugin type is a bare file name that is not plexus,
//!   multus or multus-shim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::cni::exec::validate_plugin_type;
use plexus::config::{ConfDir, NetConf, Network, SELF_TYPES};
use serde::de::IgnoredAny;
use serde_json::Value;

/// Where `static_networks` looks things up. It must not exist: references by name then find
/// nothing, and references by path are moved under it (see `sandbox`).
const NOWHERE: &str = "/nonexistent";

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = NetConf::parse(data) {
        check_round_trip(data, &conf);
        let mut conf = conf;
        sandbox(&mut conf);
        if let Ok(networks) = conf.static_networks(&ConfDir(NOWHERE.into())) {
            // Only inline delegates can come back: every file reference fails here.
            assert!(
                conf.cluster_network.is_none(),
                "a file was read: {networks:?}"
            );
            assert_eq!(networks.len(), conf.delegates.len());
            for n in &networks {
                check_network(n);
            }
        }
    }
    if let Ok(n) = Network::from_bytes(data, "fuzz") {
        check_network(&n);
        assert_eq!(
            n.bytes,
            String::from_utf8_lossy(data),
            "bytes are kept as given"
        );
    }
});

/// Parse the input as a JSON value, write it back, parse that as a netconf: the version and the
/// name must not change.
///
/// Bytes that are not UTF-8 are read as Go's encoding/json (libcni, Multus) reads them, as U+FFFD:
/// plexus accepts them where it ignores the value (unknown keys), as Go does, and refuses them in
/// every string it reads, so the replacement changes nothing it looks at.
fn check_round_trip(data: &[u8], conf: &NetConf) {
    let text = String::from_utf8_lossy(data);
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        // A value serde_json's `Value` cannot hold, in a key plexus ignores: a lone UTF-16
        // surrogate (`"\ud800"`), a number out of f64's range (`1e999`). Syntactically the input
        // is one JSON value, and Go's encoding/json (libcni, Multus) accepts it too; every value
        // plexus reads refuses it.
        Err(_) if serde_json::from_str::<IgnoredAny>(&text).is_ok() => return,
        Err(e) => {
            panic!("NetConf::parse accepted input that is not one JSON value ({e}): {text:?}")
        }
    };
    let again = serde_json::to_vec(&value).expect("a Value serializes");
    match NetConf::parse(&again) {
        Ok(c) => {
            assert_eq!(
                c.cni_version, conf.cni_version,
                "cniVersion after round trip"
            );
            assert_eq!(c.name, conf.name, "name after round trip");
        }
        Err(e) => panic!(
            "parsed, but its serde_json round trip does not: {e}: {}",
            String::from_utf8_lossy(&again)
        ),
    }
}

/// Keep file references off this machine: a reference with a `/` is a path, read as is; put it
/// under a directory that does not exist, so every open fails with ENOENT (`..` cannot climb out
/// of a missing directory).
fn sandbox(conf: &mut NetConf) {
    let jail = |r: &mut String| {
        if r.contains('/') {
            *r = format!("{NOWHERE}/{r}");
        }
    };
    if let Some(c) = conf.cluster_network.as_mut() {
        jail(c);
    }
    conf.default_networks.iter_mut().for_each(jail);
}

fn check_network(n: &Network) {
    assert!(!n.plugins.is_empty(), "a network without plugins: {n:?}");
    assert!(
        n.cni_version.is_supported(),
        "unsupported version {}",
        n.cni_version
    );
    for i in 0..n.plugins.len() {
        let t = n.plugin_type(i);
        assert!(
            validate_plugin_type(t).is_ok(),
            "plugin {i} has type {t:?}, not a bare name: {n:?}"
        );
        assert!(!t.contains('/'), "plugin type {t:?} is a path");
        assert!(
            !SELF_TYPES.contains(&t),
            "plexus itself as a delegate: {n:?}"
        );
    }
}
