//! The kubelet's device-plugin checkpoint (`kubelet_internal_checkpoint`), read for the device IDs
//! of `resourceName` networks (src/k8s/devices.rs), in both shapes of `DeviceIDs`: a list
//! (kubelet < 1.20) or a map of NUMA node to list.
//!
//! Input: the pod UID, a newline, then the checkpoint (no newline: empty UID, all checkpoint).
//! Properties, beyond "never panics":
//! - every returned ID is a string listed under `DeviceIDs` of an entry of this pod and that
//!   resource in the input; and every such string is returned (nothing invented, nothing lost);
//! - no resource lists an ID twice, and no resource comes back without IDs of its own unless an
//!   entry of the pod names it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::k8s::devices::from_checkpoint;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fuzz_target!(|data: &[u8]| {
    let (uid, checkpoint) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let uid = String::from_utf8_lossy(uid);
    let Ok(devices) = from_checkpoint(checkpoint, &uid) else {
        return;
    };
    let expected = oracle(checkpoint, &uid);
    for (resource, ids) in &devices.0 {
        let mut seen = BTreeSet::new();
        for id in ids {
            assert!(seen.insert(id), "{resource}: {id:?} listed twice: {ids:?}");
        }
        let want = expected
            .get(resource)
            .unwrap_or_else(|| panic!("resource {resource:?} is no entry of pod {uid:?}"));
        assert_eq!(&seen, &want.iter().collect(), "IDs of {resource}");
    }
    let got: BTreeSet<&String> = devices.0.keys().collect();
    let want: BTreeSet<&String> = expected.keys().collect();
    assert_eq!(got, want, "resources of pod {uid:?}");
});

/// The IDs the input lists for this pod, by resource, read independently of plexus.
fn oracle(checkpoint: &[u8], uid: &str) -> BTreeMap<String, BTreeSet<String>> {
    let v: Value = serde_json::from_slice(checkpoint).expect("plexus parsed it");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Some(entries) = v
        .get("Data")
        .and_then(|d| d.get("PodDeviceEntries"))
        .and_then(Value::as_array)
    else {
        panic!("parsed without Data.PodDeviceEntries");
    };
    for e in entries {
        if e.get("PodUID").and_then(Value::as_str) != Some(uid) {
            continue;
        }
        let resource = e
            .get("ResourceName")
            .and_then(Value::as_str)
            .expect("parsed an entry of the pod without ResourceName");
        let set = out.entry(resource.to_string()).or_default();
        let strings = |list: &Value, set: &mut BTreeSet<String>| {
            for id in list.as_array().into_iter().flatten() {
                if let Some(s) = id.as_str() {
                    set.insert(s.to_string());
                }
            }
        };
        match e.get("DeviceIDs") {
            Some(list @ Value::Array(_)) => strings(list, set),
            Some(Value::Object(numa)) => numa.values().for_each(|l| strings(l, set)),
            None | Some(Value::Null) => {}
            Some(other) => panic!("parsed DeviceIDs of {resource} = {other}"),
        }
    }
    out
}
