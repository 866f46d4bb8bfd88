//! The node daemon's socket request body (`POST /cni`, `/delegate`): Multus's shim wire format,
//! `{"env": {...}, "config": "<base64 stdin>", "interfaceAttributes": {...}}`
//! (src/daemon/server.rs), taken as far as the daemon takes it before the engine:
//! `WireRequest` → `Request::from_env` → `require()`, the version sniffed from the config, the
//! daemon config's keys merged over it (`DaemonConfig::merge`) and the merged config parsed as a
//! netconf. The decoded config is also read as a daemon config file (`DaemonConfig::parse`).
//!
//! Properties, beyond "never panics":
//! - a `WireRequest` serialized and read again has the same env, config bytes and attributes;
//! - `Request::from_env` keeps the config bytes as stdin and reads the variables as given;
//! - the sniffed version is a supported one;
//! - `merge` gives a JSON object holding every key of the request's config, and of the daemon's;
//! - an error is printable as a CNI error object in the sniffed version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::cni::{CniError, Request, Version};
use plexus::config::NetConf;
use plexus::daemon::config::DaemonConfig;
use plexus::daemon::server::WireRequest;
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// The daemon config of a default install (`{}`), and one that sets plugin keys to merge.
fn daemon_configs() -> &'static [DaemonConfig; 2] {
    static C: OnceLock<[DaemonConfig; 2]> = OnceLock::new();
    C.get_or_init(|| {
        [
            DaemonConfig::parse(b"{}").unwrap(),
            DaemonConfig::parse(
                br#"{"socketDir":"/run/multus/","cniDir":"/var/lib/cni/multus","binDir":"/opt/cni/bin",
                     "logLevel":"verbose","namespaceIsolation":true,"confDir":"/etc/cni/multus/net.d"}"#,
            )
            .unwrap(),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = serde_json::from_slice::<WireRequest>(data) else {
        return;
    };
    // The wire format round-trips (base64 and all).
    let bytes = serde_json::to_vec(&wire).expect("a WireRequest serializes");
    let again: WireRequest = serde_json::from_slice(&bytes).expect("reads its own output");
    assert_eq!(again.env, wire.env);
    assert_eq!(again.config, wire.config);
    assert_eq!(
        serde_json::to_value(&again.interface_attributes).unwrap(),
        serde_json::to_value(&wire.interface_attributes).unwrap()
    );

    let version = plexus::plugin::sniff_version(&wire.config);
    let v: Version = version.parse().expect("sniffed version parses");
    assert!(v.is_supported(), "sniffed {version}");
    let reply: Value = serde_json::from_str(&plexus::plugin::version_reply(&version)).unwrap();
    assert_eq!(reply["cniVersion"], version.as_str());

    let env = &wire.env;
    match Request::from_env(|k| env.get(k).cloned(), wire.config.clone()) {
        Ok(req) => {
            assert_eq!(req.stdin, wire.config);
            assert_eq!(
                req.args_raw,
                env.get("CNI_ARGS").cloned().unwrap_or_default()
            );
            let _ = req.who();
            let _ = req.command();
            if let Err(e) = req.require() {
                printable(&e, &version);
            }
        }
        Err(e) => printable(&e, &version),
    }

    let request_conf = serde_json::from_slice::<Map<String, Value>>(&wire.config).ok();
    for daemon in daemon_configs() {
        match daemon.merge(&wire.config) {
            Ok(merged) => {
                let m: Map<String, Value> =
                    serde_json::from_slice(&merged).expect("merge gives a JSON object");
                let conf = request_conf
                    .as_ref()
                    .expect("merged a config that is no object");
                for k in conf.keys().chain(daemon.plugin_keys.keys()) {
                    assert!(m.contains_key(k), "merge lost {k:?}");
                }
                for (k, v) in &daemon.plugin_keys {
                    assert_eq!(&m[k], v, "the daemon's {k} wins");
                }
                if let Err(e) = NetConf::parse(&merged) {
                    printable(&e, &version);
                }
            }
            Err(e) => {
                assert!(
                    request_conf.is_none(),
                    "an object config refused by merge: {e}"
                );
                printable(&e, &version);
            }
        }
    }
    // The config bytes as a daemon-config.json: an error, or a config, never a panic.
    let _ = DaemonConfig::parse(&wire.config);
});

fn printable(e: &CniError, version: &str) {
    let out: Value = serde_json::from_str(&e.to_json(version)).expect("an error prints as JSON");
    assert_eq!(out["code"], e.code.0);
}
