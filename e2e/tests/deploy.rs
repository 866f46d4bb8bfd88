//! The manifests in deploy/ parse, fit together, and grant every API call plexus makes.

use serde_json::Value;

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn allows(rules: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        let has = |k: &str, v: &str| r[k].as_array().unwrap().iter().any(|x| x == v || x == "*");
        has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
    })
}

#[test]
fn rbac_grants_what_plexus_uses() {
    let rbac = docs("rbac.yaml");
    let role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let rules = role["rules"].as_array().unwrap();
    // Every call the plugin makes (see src/k8s/client.rs).
    for (group, resource, verb) in [
        ("", "pods", "get"),
        ("", "pods/status", "update"),
        ("k8s.cni.cncf.io", "network-attachment-definitions", "get"),
        ("", "events", "create"),
    ] {
        assert!(
            allows(rules, group, resource, verb),
            "{verb} {group}/{resource} not granted"
        );
    }
    let binding = rbac
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .unwrap();
    let sa = rbac.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
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
fn crd_is_the_generated_one() {
    let text = std::fs::read_to_string(format!(
        "{}/../crd/network-attachment-definition.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(text, plexus::k8s::nad::crd_yaml());
}
