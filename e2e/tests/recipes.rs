//! Every recipe in delegates/ applied as a NAD through plexus (fixture API server, real plugins,
//! real namespaces), checked against its expect.json, and DELeted without a trace.

use plexus_e2e::{sh, Fixture, TestEnv};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn recipes() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../delegates");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Point a recipe at this test's node: data NICs become veths, host-local keeps its files in the
/// test's directory.
fn localize(config: &str, env: &TestEnv) -> Value {
    let mut v: Value = serde_json::from_str(
        &config
            .replace("\"eth1\"", "\"rcm0\"")
            .replace("\"eth2\"", "\"rcd0\""),
    )
    .unwrap();
    let name = v["name"].as_str().unwrap().to_string();
    let mut fix = |p: &mut Value| {
        if p["ipam"]["type"] == "host-local" {
            p["ipam"]["dataDir"] = json!(env.ipam_dir(&name));
        }
    };
    match v.get_mut("plugins").and_then(Value::as_array_mut) {
        Some(ps) => ps.iter_mut().for_each(&mut fix),
        None => fix(&mut v),
    }
    v
}

fn run(recipe: &Path) {
    let kind = recipe.file_name().unwrap().to_string_lossy().to_string();
    let expect: Value =
        serde_json::from_str(&std::fs::read_to_string(recipe.join("expect.json")).unwrap())
            .unwrap();
    let nad: Value =
        serde_yaml::from_str(&std::fs::read_to_string(recipe.join("nad.yaml")).unwrap()).unwrap();
    let env = TestEnv::new(&format!("r-{kind}"));
    let api = Fixture::start(&env);
    env.node_veth("rcm0", "rcm1");
    env.node_veth("rcd0", "rcd1");
    let name = nad["metadata"]["name"].as_str().unwrap();
    api.create_nad(
        "default",
        name,
        &localize(nad["spec"]["config"].as_str().unwrap(), &env),
    );
    let selection = expect
        .get("selection")
        .map(|s| s.to_string())
        .unwrap_or_else(|| name.to_string());
    api.create_pod(
        "default",
        "r",
        json!({"k8s.v1.cni.cncf.io/networks": selection}),
    );
    let mut ipam = env.host_local("cluster", "10.129.0.0/24");
    ipam["routes"] = json!([]);
    let mut conf = env.plexus_conf(
        "1.1.0",
        vec![json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "bridge", "bridge": "rbr0", "ipam": ipam}]})],
    );
    conf["kubeconfig"] = json!(api.kubeconfig);

    env.cni_pod("ADD", "rec", "default", "r", None, &conf).ok();
    let link = env.pod_link("net1");
    if let Some(k) = expect["linkKind"].as_str() {
        assert_eq!(link["linkinfo"]["info_kind"], k, "{kind}");
    }
    let addrs = env.pod_addrs("net1");
    if let Some(a) = expect["address"].as_str() {
        assert!(addrs.iter().any(|x| x == a), "{kind}: {addrs:?}");
    }
    for key in ["addressIn", "addressIn6"] {
        if let Some(a) = expect[key].as_str() {
            assert!(
                addrs.iter().any(|x| x.starts_with(a)),
                "{kind}: {addrs:?} has no {a}*"
            );
        }
    }
    if let Some(m) = expect.get("mtu") {
        assert_eq!(&link["mtu"], m, "{kind}");
    }
    if let Some(m) = expect["mac"].as_str() {
        assert_eq!(link["address"], m, "{kind}");
    }
    if let Some(s) = expect["sysctl"].as_array() {
        let got = sh(&[
            "ip",
            "netns",
            "exec",
            &env.pod,
            "cat",
            &format!("/proc/sys/{}", s[0].as_str().unwrap()),
        ]);
        assert_eq!(got.trim(), s[1].as_str().unwrap(), "{kind}");
    }
    for l in expect["nodeLinks"].as_array().into_iter().flatten() {
        assert!(
            env.node_links().iter().any(|n| n == l.as_str().unwrap()),
            "{kind}: no {l} on the node"
        );
    }
    if let Some(moved) = expect["nodeLinkMoved"].as_str() {
        assert!(
            !env.node_links().iter().any(|n| n == moved),
            "{kind}: {moved} still on the node"
        );
    }
    if let Some(q) = expect["nodeQdisc"].as_str() {
        assert!(
            env.node(&["tc", "qdisc", "show"])
                .contains(&format!("qdisc {q}")),
            "{kind}"
        );
    }
    if let Some(r) = expect["natRule"].as_str() {
        assert!(
            env.node(&["iptables-save", "-t", "nat"]).contains(r),
            "{kind}"
        );
    }
    if let Some(c) = expect["filterChain"].as_str() {
        assert!(
            env.node(&["iptables-save", "-t", "filter"])
                .contains(&format!(":{c}")),
            "{kind}"
        );
    }
    let status = api.network_status("default", "r");
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == format!("default/{name}") && s["interface"] == "net1"),
        "{kind}: {status}"
    );
    if expect["noCheck"] != true {
        env.cni_pod("CHECK", "rec", "default", "r", None, &conf)
            .ok();
    }
    env.cni_pod("DEL", "rec", "default", "r", None, &conf).ok();
    env.assert_clean(&["rbr0", "br-data", "rcm0", "rcm1", "rcd0", "rcd1"]);
    if let Some(moved) = expect["nodeLinkMoved"].as_str() {
        assert!(
            env.node_links().iter().any(|n| n == moved),
            "{kind}: {moved} not given back"
        );
    }
    if let Some(q) = expect["nodeQdisc"].as_str() {
        assert!(
            !env.node(&["tc", "qdisc", "show"])
                .contains(&format!("qdisc {q}")),
            "{kind}: qdisc left"
        );
    }
    if let Some(r) = expect["natRule"].as_str() {
        assert!(
            !env.node(&["iptables-save", "-t", "nat"]).contains(r),
            "{kind}: rule left"
        );
    }
    assert!(
        env.reservations(name).is_empty(),
        "{kind}: IP reservation left"
    );
}

#[test]
fn every_recipe_runs_and_cleans_up() {
    let all = recipes();
    assert!(all.len() >= 10, "recipes missing: {all:?}");
    for r in &all {
        assert!(
            r.join("nad.yaml").is_file() && r.join("README.md").is_file(),
            "{}: needs nad.yaml and README.md",
            r.display()
        );
        assert!(
            r.join("expect.json").is_file(),
            "{}: no expect.json, so the suite does not run it",
            r.display()
        );
        run(r);
    }
}
