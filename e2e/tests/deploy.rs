//! The manifests in deploy/ parse, fit together, and grant every API call plexus makes.

use plexus_e2e::{Fixture, TestEnv};
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// (group, resource, verb) of every rule of the role named `name` in `file`.
fn granted(file: &str, kind: &str) -> BTreeSet<(String, String, String)> {
    let docs = docs(file);
    let role = docs.iter().find(|d| d["kind"] == kind).unwrap();
    let mut out = BTreeSet::new();
    for r in role["rules"].as_array().unwrap() {
        let list = |k: &str| -> Vec<String> {
            r[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for g in list("apiGroups") {
            for res in list("resources") {
                for verb in list("verbs") {
                    out.insert((g.clone(), res.clone(), verb));
                }
            }
        }
    }
    out
}

/// A NAD on a DRA device (its delegate records, so no device is needed), the device's slice, the
/// pod's allocated claim, and pod `name` whose status names it and which asks for `extra` and
/// the DRA network.
fn dra_objects(api: &Fixture, name: &str, uid: &str) {
    use plexus_e2e::dra;
    api.create_nad_annotated(
        "default",
        "dranet",
        &json!({"cniVersion": "1.0.0", "name": "dranet", "type": "test-record", "address": "10.54.0.2/24"}),
        json!({"k8s.v1.cni.cncf.io/resourceName": "example.com/vf"}),
    );
    api.create_one(dra::slice(
        "v1",
        &format!("{name}-slice"),
        "vf.example.com",
        "node-1",
        &[("vf-1", Some(("example.com/vf", "0000:5e:00.1")))],
    ));
    api.create_one(dra::claim(
        "v1",
        "default",
        &format!("{name}-net"),
        &[(name, uid)],
        &[("vf", "vf.example.com", "node-1", "vf-1")],
    ));
    api.create_one(dra::pod(
        "default",
        name,
        uid,
        "node-1",
        json!({"k8s.v1.cni.cncf.io/networks": "extra, dranet"}),
        &[("net", &format!("{name}-net"))],
    ));
}

#[test]
fn rbac_grants_exactly_the_calls_the_plugin_makes() {
    // Every kind of call: a clusterNetwork NAD in multusNamespace, a pod NAD, the pod, the
    // network-status patch, the Event; then DEL (no calls).
    let env = TestEnv::new("rbac");
    let api = Fixture::start(&env);
    api.create_nad(
        "kube-system",
        "cluster",
        &json!({"cniVersion": "1.0.0", "name": "cluster", "type": "test-record", "address": "10.50.0.2/24"}),
    );
    api.create_nad(
        "default",
        "extra",
        &json!({"cniVersion": "1.0.0", "name": "extra", "type": "test-record", "address": "10.51.0.2/24"}),
    );
    dra_objects(&api, "p", "uid-p");
    let mut conf = env.plexus_conf("1.0.0", vec![]);
    conf["clusterNetwork"] = json!("cluster");
    conf["kubeconfig"] = json!(api.kubeconfig);
    api.clear_requests();
    env.cni_pod("ADD", "rbac1", "default", "p", None, &conf)
        .ok();
    env.cni_pod("DEL", "rbac1", "default", "p", None, &conf)
        .ok();
    let used: BTreeSet<_> = api.rbac_requests().into_iter().collect();
    let want: BTreeSet<(String, String, String)> = [
        ("", "pods", "get"),
        ("k8s.cni.cncf.io", "network-attachment-definitions", "get"),
        ("", "pods/status", "patch"),
        ("", "events", "create"),
        ("resource.k8s.io", "resourceclaims", "get"),
        ("resource.k8s.io", "resourceclaims/status", "update"),
        ("resource.k8s.io", "resourceslices", "list"),
    ]
    .iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
    .collect();
    assert_eq!(used, want, "the scenario exercises every kind of call");
    let claim = api.claim("default", "p-net", "v1");
    assert_eq!(
        claim["status"]["devices"],
        json!([]),
        "DEL took the network data out: {claim}"
    );
    assert_eq!(granted("rbac.yaml", "ClusterRole"), used, "granted == used");
    let rbac = docs("rbac.yaml");
    let role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let binding = rbac
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .unwrap();
    let sa = rbac.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
}

#[test]
fn thick_rbac_grants_exactly_the_calls_the_daemon_makes_watches_included() {
    use plexus_e2e::daemon::NodeDaemon;
    let env = TestEnv::new("rbac-d");
    let api = Fixture::start_tls(&env, "daemon-sa-token");
    let mut daemon = NodeDaemon::start(&env, &api, json!({"podWaitSeconds": 0.2}));
    api.create_nad(
        "default",
        "extra",
        &json!({"cniVersion": "1.0.0", "name": "extra", "type": "test-record", "address": "10.52.0.2/24"}),
    );
    // The DRA watches cut and failing: the daemon LISTs the slice it does not have.
    api.fault(json!({"pathPrefix": "/apis/resource.k8s.io/v1/resourceslices", "watch": true, "status": 500}));
    api.abort_watches();
    dra_objects(&api, "p", "uid-p");
    let mut conf = env.plexus_conf(
        "1.0.0",
        vec![json!({"cniVersion": "1.0.0", "name": "c", "type": "test-record", "address": "10.53.0.2/24"})],
    );
    conf["daemonSocketDir"] = json!(daemon.socket_dir);
    env.cni_pod("ADD", "rbacd1", "default", "p", None, &conf)
        .ok();
    env.cni_pod("DEL", "rbacd1", "default", "p", None, &conf)
        .ok();
    api.clear_faults();
    // The shim's DEL has no credentials: the daemon took the network data out for it.
    let claim = api.claim("default", "p-net", "v1");
    assert_eq!(claim["status"]["devices"], json!([]), "{claim}");
    // The watch cache misses: a NAD that does not exist and a pod it has not seen (watches cut)
    // are fetched with one GET each.
    api.create_pod(
        "default",
        "q",
        json!({"k8s.v1.cni.cncf.io/networks": "ghost"}),
    );
    env.cni_pod("ADD", "rbacd2", "default", "q", None, &conf)
        .err(114);
    api.fault(json!({"pathPrefix": "/api/v1/pods", "watch": true, "status": 500}));
    api.abort_watches();
    api.create_pod("default", "r", json!({}));
    env.cni_pod("ADD", "rbacd3", "default", "r", None, &conf)
        .ok();
    api.clear_faults();
    env.cni_pod("DEL", "rbacd3", "default", "r", None, &conf)
        .ok();
    daemon.kill();
    let used: BTreeSet<_> = api.rbac_requests().into_iter().collect();
    let want: BTreeSet<(String, String, String)> = [
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods", "get"),
        ("k8s.cni.cncf.io", "network-attachment-definitions", "list"),
        ("k8s.cni.cncf.io", "network-attachment-definitions", "watch"),
        ("k8s.cni.cncf.io", "network-attachment-definitions", "get"),
        ("", "pods/status", "patch"),
        ("", "events", "create"),
        ("resource.k8s.io", "resourceclaims", "list"),
        ("resource.k8s.io", "resourceclaims", "watch"),
        ("resource.k8s.io", "resourceclaims", "get"),
        ("resource.k8s.io", "resourceclaims/status", "update"),
        ("resource.k8s.io", "resourceslices", "list"),
        ("resource.k8s.io", "resourceslices", "watch"),
    ]
    .iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        used, want,
        "the scenario exercises every kind of call the daemon makes"
    );
    assert_eq!(
        granted("thick/rbac.yaml", "ClusterRole"),
        used,
        "granted == used"
    );
}

#[test]
fn thick_daemonset_and_configmap_fit_together() {
    let ds = &docs("thick/daemonset.yaml")[0];
    let cm = &docs("thick/configmap.yaml")[0];
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["serviceAccountName"],
        docs("thick/rbac.yaml")[0]["metadata"]["name"]
    );
    assert_eq!(spec["hostNetwork"], true);
    let c = &spec["containers"][0];
    assert_eq!(c["command"][1], "daemon");
    assert_eq!(c["env"][0]["name"], "MULTUS_NODE_NAME");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let config: Value =
        serde_json::from_str(cm["data"]["daemon-config.json"].as_str().unwrap()).unwrap();
    // The config is one the daemon accepts, its probes hit its metrics port, and every host
    // directory it names is mounted at the same path.
    plexus::daemon::config::DaemonConfig::parse(config.to_string().as_bytes()).unwrap();
    let port = config["metricsPort"].as_u64().unwrap();
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"].as_u64(), Some(port), "{probe}");
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for key in [
        "socketDir",
        "cniConfigDir",
        "multusAutoconfigDir",
        "confDir",
        "cniDir",
        "binDir",
    ] {
        let dir = config[key].as_str().unwrap().trim_end_matches('/');
        assert!(mounts.contains(&dir), "{key} {dir} not mounted: {mounts:?}");
        let vol = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap()["name"]
            .clone();
        let host = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vol)
            .unwrap()["hostPath"]["path"]
            .clone();
        assert_eq!(host, dir, "{key}: the host's path, at the same path");
    }
    let init = &spec["initContainers"][0];
    assert_eq!(init["command"][1], "install");
    assert!(init["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--binary-only"));
}

#[test]
fn daemonset_and_configmap_fit_together() {
    let ds = &docs("daemonset.yaml")[0];
    let cm = &docs("configmap.yaml")[0];
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["serviceAccountName"],
        docs("rbac.yaml")[0]["metadata"]["name"]
    );
    let c = &spec["containers"][0];
    assert_eq!(c["command"][1], "install");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    // The defaults of `plexus install`.
    for m in ["/host/opt/cni/bin", "/host/etc/cni/net.d", "/etc/plexus"] {
        assert!(mounts.contains(&m), "{m} not mounted");
    }
    let cm_vol = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"].is_object())
        .unwrap();
    assert_eq!(cm_vol["configMap"]["name"], cm["metadata"]["name"]);
    // The config is one plexus accepts.
    let conflist: Value =
        serde_json::from_str(cm["data"]["00-plexus.conflist"].as_str().unwrap()).unwrap();
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["type"], "plexus");
    let mut conf = plugin.clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    plexus::config::NetConf::parse(conf.to_string().as_bytes()).unwrap();
}

#[test]
fn install_watch_as_pid_1_exits_on_sigterm_and_leaves_plexus_installed() {
    // The DaemonSet's container: PID 1 in its own PID namespace, where the kernel gives no
    // default action to SIGTERM; a rollout must not wait out the grace period.
    let env = TestEnv::new("pid1");
    let d = env.path();
    std::fs::create_dir_all(d.join("sa")).unwrap();
    std::fs::write(d.join("sa/token"), "t").unwrap();
    std::fs::write(d.join("sa/ca.crt"), "CA").unwrap();
    std::fs::write(
        d.join("00-plexus.conflist"),
        r#"{"cniVersion":"1.0.0","name":"plexus","plugins":[{"type":"plexus","clusterNetwork":"/etc/cni/net.d"}]}"#,
    )
    .unwrap();
    let mut child = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(plexus_e2e::plexus_bin())
        .args(["install", "--watch", "--interval-seconds", "1"])
        .arg("--bin-dir")
        .arg(d.join("bin-host"))
        .arg("--conf-dir")
        .arg(d.join("net.d"))
        .arg("--config")
        .arg(d.join("00-plexus.conflist"))
        .arg("--kubeconfig-dir")
        .arg(d.join("net.d/plexus.d"))
        .arg("--service-account-dir")
        .arg(d.join("sa"))
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .spawn()
        .unwrap();
    let conf = d.join("net.d/00-plexus.conflist");
    let start = std::time::Instant::now();
    while !conf.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "not installed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // unshare's child is PID 1 of the new namespace: signal it, not unshare.
    let pid1 =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap()
            .trim()
            .to_string();
    assert!(!pid1.is_empty());
    let t = std::time::Instant::now();
    plexus_e2e::sh(&["kill", "-TERM", &pid1]);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > std::time::Duration::from_secs(5) {
            let _ = child.kill();
            panic!("plexus install --watch as PID 1 ignored SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(
        conf.exists() && d.join("bin-host/plexus").exists(),
        "left installed"
    );
}
