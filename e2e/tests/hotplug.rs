//! Hot-plug through the node daemon: a running pod's `k8s.v1.cni.cncf.io/networks` changes at the
//! fixture API server, the daemon's watch sees it, and the sandbox gains or loses networks (real
//! bridge, macvlan and host-local), with network-status rewritten and an Event per change. Also
//! Multus's `/delegate` API, races with the runtime's DEL, and a daemon killed mid-hot-plug.

use plexus_e2e as common;

use base64::Engine as _;
use common::daemon::{metric, NodeDaemon};
use common::{Fixture, FixtureOptions, TestEnv};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NETS: &str = "k8s.v1.cni.cncf.io/networks";

struct Node {
    daemon: NodeDaemon,
    env: TestEnv,
    api: Fixture,
    /// The shim's config (no kubeconfig: only the daemon can ADD).
    conf: Value,
}

fn node(tag: &str, daemon_conf: Value) -> Node {
    let env = TestEnv::new(tag);
    let api = Fixture::start_tls(&env, "daemon-sa-token");
    let daemon = NodeDaemon::start(&env, &api, daemon_conf);
    let mut ipam = env.host_local("cluster", "10.86.0.0/24");
    ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let mut conf = env.plexus_conf(
        "1.1.0",
        vec![json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
            {"type": "bridge", "bridge": "hpbr0", "isGateway": true, "ipMasq": false, "ipam": ipam}]})],
    );
    conf["daemonSocketDir"] = json!(daemon.socket_dir);
    // net-a: a bridge; net-b: a macvlan on a veth master; both with host-local.
    api.create_nad(
        "default",
        "net-a",
        &json!({"cniVersion": "1.0.0", "name": "net-a", "type": "bridge", "bridge": "hpbra",
                "ipam": env.host_local("net-a", "10.87.0.0/24")}),
    );
    env.node_veth("hpm0", "hpm1");
    api.create_nad(
        "default",
        "net-b",
        &json!({"cniVersion": "1.0.0", "name": "net-b", "type": "macvlan", "master": "hpm0",
                "mode": "bridge", "ipam": env.host_local("net-b", "10.88.0.0/24")}),
    );
    Node {
        daemon,
        env,
        api,
        conf,
    }
}

const KEEP: &[&str] = &["hpbr0", "hpbra", "hpbrs", "hpm0", "hpm1"];

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "{what}: not after {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

fn status_names(api: &Fixture, pod: &str) -> Vec<(String, String)> {
    api.network_status("default", pod)
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_string(),
                e["interface"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// What an interface is, as the kernel says: link (details) and addresses; compared byte for
/// byte before and after hot-plugs around it.
fn snapshot(env: &TestEnv, ifname: &str) -> String {
    let link = common::sh(&["ip", "-d", "-n", &env.pod, "link", "show", "dev", ifname]);
    let addr = common::sh(&["ip", "-n", &env.pod, "addr", "show", "dev", ifname]);
    let routes = common::sh(&["ip", "-n", &env.pod, "route", "show", "dev", ifname]);
    format!("{link}\n{addr}\n{routes}")
}

fn reasons(api: &Fixture) -> Vec<(String, String, String)> {
    api.events("default")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_running_pod_gains_and_loses_networks_when_its_annotation_changes() {
    let n = node("hp-basic", json!({"metricsPort": 19181}));
    n.api.create_pod("default", "web", json!({NETS: "net-a"}));
    n.env
        .cni_pod("ADD", "hp-c1", "default", "web", None, &n.conf)
        .ok();
    assert_eq!(
        status_names(&n.api, "web"),
        pairs(&[("cbr0", "eth0"), ("default/net-a", "net1")])
    );
    let net1 = snapshot(&n.env, "net1");
    let before_events = n.api.events("default").len();

    // net-a → net-a, net-b: net2 appears with an address from net-b's range.
    n.api
        .patch_pod_annotations("default", "web", &json!({NETS: "net-a, net-b"}));
    let took = wait_for("net2 in network-status", Duration::from_secs(20), || {
        status_names(&n.api, "web").len() == 3
    });
    eprintln!("annotation → network-status: {took:?}");
    assert_eq!(
        status_names(&n.api, "web"),
        pairs(&[
            ("cbr0", "eth0"),
            ("default/net-a", "net1"),
            ("default/net-b", "net2")
        ])
    );
    let addrs = n.env.pod_addrs("net2");
    assert!(
        addrs.len() == 1 && addrs[0].starts_with("10.88.0."),
        "{addrs:?}"
    );
    let st = n.api.network_status("default", "web");
    assert_eq!(st[2]["ips"][0], addrs[0].split('/').next().unwrap());
    assert_eq!(st[2]["default"], false);
    assert_eq!(st[2]["mac"], n.env.pod_mac("net2"));
    assert_eq!(n.env.reservations("net-b").len(), 1);
    assert_eq!(snapshot(&n.env, "net1"), net1, "net1 untouched");
    let ev = reasons(&n.api);
    assert_eq!(ev.len(), before_events + 1, "one Event per attach: {ev:?}");
    let last = ev.last().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str()),
        ("Normal", "AddedInterface")
    );
    assert!(
        last.2.contains("net2") && last.2.contains("default/net-b"),
        "{last:?}"
    );

    // Back to net-a: net2 goes, its IP is released, net1 is byte for byte as it was.
    n.api
        .patch_pod_annotations("default", "web", &json!({NETS: "net-a"}));
    wait_for(
        "net2 gone from network-status",
        Duration::from_secs(20),
        || status_names(&n.api, "web").len() == 2,
    );
    assert!(!n.env.pod_links().contains(&"net2".to_string()));
    assert!(
        n.env.reservations("net-b").is_empty(),
        "net-b's IP released"
    );
    assert_eq!(snapshot(&n.env, "net1"), net1, "net1 byte for byte");
    assert_eq!(reasons(&n.api).last().unwrap().1, "RemovedInterface");

    // Removing the first element keeps the second one's name.
    n.api
        .patch_pod_annotations("default", "web", &json!({NETS: "net-a, net-b"}));
    wait_for("net2 back", Duration::from_secs(20), || {
        status_names(&n.api, "web").len() == 3
    });
    let net2 = snapshot(&n.env, "net2");
    n.api
        .patch_pod_annotations("default", "web", &json!({NETS: "net-b"}));
    wait_for("net1 gone", Duration::from_secs(20), || {
        status_names(&n.api, "web").len() == 2
    });
    assert_eq!(
        status_names(&n.api, "web"),
        pairs(&[("cbr0", "eth0"), ("default/net-b", "net2")])
    );
    assert_eq!(snapshot(&n.env, "net2"), net2, "net2 kept its name and all");
    assert!(n.env.reservations("net-a").is_empty());

    // A bad change changes nothing and yields a Warning Event naming the problem.
    let status = n.api.network_status("default", "web");
    let links = n.env.pod_links();
    for bad in [
        "net-b, ghost",
        "net-b, Not_A_Name!",
        r#"[{"name": "net-b", "interface": "eth0"}]"#,
    ] {
        let events = n.api.events("default").len();
        n.api
            .patch_pod_annotations("default", "web", &json!({NETS: bad}));
        wait_for("a Warning Event", Duration::from_secs(20), || {
            n.api.events("default").len() > events
        });
        let ev = reasons(&n.api);
        let last = ev.last().unwrap();
        assert_eq!(
            (last.0.as_str(), last.1.as_str()),
            ("Warning", "HotplugRefused"),
            "{bad}"
        );
        eprintln!("{bad}: {}", last.2);
        assert_eq!(n.api.network_status("default", "web"), status, "{bad}");
        assert_eq!(n.env.pod_links(), links, "{bad}");
    }

    let m = n.daemon.metrics();
    assert!(
        metric(
            &m,
            r#"plexus_hotplug_operations_total{op="attach",result="ok"}"#
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"plexus_hotplug_operations_total{op="detach",result="ok"}"#
        ) >= 2.0
    );
    assert!(
        metric(
            &m,
            r#"plexus_hotplug_operations_total{op="plan",result="refused"}"#
        ) >= 3.0
    );
    assert_eq!(metric(&m, "plexus_hotplug_pods_tracked "), 1.0, "{m}");

    // The runtime's DEL takes everything, hot-plugged or not.
    n.env
        .cni_pod("DEL", "hp-c1", "default", "web", None, &n.conf)
        .ok();
    n.env.assert_clean(KEEP);
    for net in ["cluster", "net-a", "net-b"] {
        assert!(n.env.reservations(net).is_empty(), "{net} leaked");
    }

    // The pod deleted from the API is forgotten: a long-lived daemon holds nothing of it.
    n.api.delete_pod("default", "web");
    wait_for("hot-plug forgets the pod", Duration::from_secs(20), || {
        metric(&n.daemon.metrics(), "plexus_hotplug_pods_tracked ") == 0.0
    });
}

#[test]
fn a_pod_deleted_while_the_watch_was_down_is_forgotten_after_the_relist() {
    // A history of 3 changes: a watch resumed after more than that gets 410 and relists.
    let env = TestEnv::new("hp-relist");
    let api = Fixture::start_with(
        &env,
        &FixtureOptions {
            tls: true,
            token: Some("daemon-sa-token".into()),
            history_size: Some(3),
            ..Default::default()
        },
    );
    let daemon = NodeDaemon::start(&env, &api, json!({"metricsPort": 19182}));
    let tracked = || metric(&daemon.metrics(), "plexus_hotplug_pods_tracked ");
    for pod in ["gone", "kept"] {
        api.create_pod("default", pod, json!({NETS: "net-a"}));
    }
    wait_for("both pods reconciled", Duration::from_secs(20), || {
        tracked() == 2.0
    });

    // The pod watch goes down (its requests fail), and "gone" is deleted meanwhile; more changes
    // than the history holds follow, so no resumed watch can deliver that delete.
    api.fault(json!({"pathPrefix": "/api/v1/pods", "watch": true, "status": 500}));
    assert!(api.abort_watches() >= 1);
    api.delete_pod("default", "gone");
    for i in 0..5 {
        api.create_nad(
            "other",
            &format!("filler-{i}"),
            &json!({"cniVersion": "1.0.0", "name": "f", "type": "bridge"}),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tracked(), 2.0, "the delete was not seen");
    api.clear_faults();
    let took = wait_for("the relist drops the pod", Duration::from_secs(60), || {
        tracked() == 1.0
    });
    eprintln!("watch back → pod forgotten: {took:?}");
    assert!(
        daemon.log().contains("watch cache: 1 pods on this node"),
        "{}",
        daemon.log()
    );
}

#[test]
fn hot_plug_racing_the_runtimes_del_leaves_nothing() {
    let n = node("hp-race", json!({}));
    for (i, delay_ms) in [0u64, 2, 5, 10, 20, 40, 80].into_iter().enumerate() {
        let pod = format!("r{i}");
        let id = format!("hp-race-{i}");
        n.api.create_pod("default", &pod, json!({NETS: "net-a"}));
        let add = n.env.cni_pod("ADD", &id, "default", &pod, None, &n.conf);
        add.ok();
        n.api
            .patch_pod_annotations("default", &pod, &json!({NETS: "net-a, net-b"}));
        std::thread::sleep(Duration::from_millis(delay_ms));
        n.env
            .cni_pod("DEL", &id, "default", &pod, None, &n.conf)
            .ok();
        // Give a hot-plug that lost the race time to (not) run.
        std::thread::sleep(Duration::from_millis(300));
        n.env.assert_clean(KEEP);
        for net in ["cluster", "net-a", "net-b"] {
            assert!(
                n.env.reservations(net).is_empty(),
                "{net} leaked at {delay_ms} ms"
            );
        }
    }
}

#[test]
fn a_daemon_killed_mid_hot_plug_converges_after_restart() {
    let mut n = node("hp-kill", json!({}));
    // A network whose ADD is slow after the bridge made net2: the kill lands mid-attach.
    let mut slow = json!({"type": "test-record", "record": n.env.record_file(), "sleepMs": 4000});
    slow["sleepOn"] = json!(["ADD"]);
    n.api.create_nad(
        "default",
        "net-slow",
        &json!({"cniVersion": "1.0.0", "name": "net-slow", "plugins": [
            {"type": "bridge", "bridge": "hpbrs", "ipam": n.env.host_local("net-slow", "10.89.0.0/24")},
            slow]}),
    );
    n.api.create_pod("default", "k", json!({NETS: "net-a"}));
    n.env
        .cni_pod("ADD", "hp-kill-1", "default", "k", None, &n.conf)
        .ok();
    n.api
        .patch_pod_annotations("default", "k", &json!({NETS: "net-a, net-slow"}));
    wait_for("net2 made by the bridge", Duration::from_secs(20), || {
        n.env.pod_links().contains(&"net2".to_string())
    });
    n.daemon.kill();
    assert_eq!(status_names(&n.api, "k").len(), 2, "not reported yet");
    n.daemon.restart(&n.api);
    wait_for("the hot-plug redone", Duration::from_secs(30), || {
        status_names(&n.api, "k").len() == 3
    });
    assert_eq!(
        n.env.reservations("net-slow").len(),
        1,
        "the interrupted attach was rolled back, not leaked"
    );
    assert!(n
        .daemon
        .log()
        .contains("left pending by an interrupted hot-plug"));
    n.env
        .cni_pod("DEL", "hp-kill-1", "default", "k", None, &n.conf)
        .ok();
    n.env.assert_clean(KEEP);
    for net in ["cluster", "net-a", "net-slow"] {
        assert!(n.env.reservations(net).is_empty(), "{net} leaked");
    }
}

#[test]
fn opt_outs_per_pod_and_per_node() {
    let n = node("hp-opt", json!({}));
    n.api.create_pod(
        "default",
        "o",
        json!({NETS: "net-a", "plexus.io/hotplug": "false"}),
    );
    n.env
        .cni_pod("ADD", "hp-opt-1", "default", "o", None, &n.conf)
        .ok();
    n.api
        .patch_pod_annotations("default", "o", &json!({NETS: "net-a, net-b"}));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status_names(&n.api, "o").len(), 2, "the pod opted out");
    // Opting back in is a change: the pod is reconciled.
    n.api
        .patch_pod_annotations("default", "o", &json!({"plexus.io/hotplug": "true"}));
    wait_for(
        "reconciled after opting in",
        Duration::from_secs(20),
        || status_names(&n.api, "o").len() == 3,
    );
    n.env
        .cni_pod("DEL", "hp-opt-1", "default", "o", None, &n.conf)
        .ok();
    n.env.assert_clean(KEEP);
    drop(n);

    let n = node("hp-off", json!({"hotplug": false}));
    n.api.create_pod("default", "o", json!({NETS: "net-a"}));
    n.env
        .cni_pod("ADD", "hp-off-1", "default", "o", None, &n.conf)
        .ok();
    n.api
        .patch_pod_annotations("default", "o", &json!({NETS: "net-a, net-b"}));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status_names(&n.api, "o").len(),
        2,
        "hotplug: false on this node"
    );
    n.env
        .cni_pod("DEL", "hp-off-1", "default", "o", None, &n.conf)
        .ok();
    n.env.assert_clean(KEEP);
}

/// What multus-dynamic-networks-controller sends to `/delegate`.
fn delegate(
    n: &Node,
    verb: &str,
    id: &str,
    ifname: &str,
    config: &Value,
    attrs: Value,
) -> (u16, Value) {
    let body = json!({
        "env": {"CNI_COMMAND": verb, "CNI_CONTAINERID": id, "CNI_NETNS": n.env.netns_path(),
                "CNI_IFNAME": ifname,
                "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=dc"},
        "config": base64::engine::general_purpose::STANDARD.encode(config.to_string()),
        "interfaceAttributes": attrs,
    });
    let r = plexus::unix_http::call(
        &n.daemon.socket(),
        "POST",
        "/delegate",
        Some("application/json"),
        body.to_string().into_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

#[test]
fn multus_delegate_api_attaches_into_a_sandbox_and_the_runtime_del_takes_it_down() {
    // The controller owns hot-plug on such a cluster: the native reconciler is off.
    let n = node("hp-deleg", json!({"hotplug": false}));
    n.api.create_pod("default", "dc", json!({NETS: "net-a"}));
    n.env
        .cni_pod("ADD", "hp-deleg-1", "default", "dc", None, &n.conf)
        .ok();
    let nad_b = json!({"cniVersion": "1.0.0", "name": "net-b", "type": "macvlan", "master": "hpm0",
        "mode": "bridge", "capabilities": {"mac": true},
        "ipam": n.env.host_local("net-b", "10.88.0.0/24")});
    let (code, v) = delegate(
        &n,
        "ADD",
        "hp-deleg-1",
        "pod7",
        &nad_b,
        json!({"mac": "02:00:00:aa:bb:07"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Result"]["cniVersion"], "1.0.0");
    assert_eq!(n.env.pod_mac("pod7"), "02:00:00:aa:bb:07");
    assert!(n.env.pod_addrs("pod7")[0].starts_with("10.88.0."));
    // Like Multus, /delegate leaves network-status to the controller.
    assert_eq!(status_names(&n.api, "dc").len(), 2);
    assert!(reasons(&n.api)
        .iter()
        .any(|e| e.1 == "AddedInterface" && e.2.contains("pod7")));
    // A capability the network does not declare is refused, not silently dropped.
    let plain = json!({"cniVersion": "1.0.0", "name": "net-b", "type": "macvlan", "master": "hpm0",
        "ipam": n.env.host_local("net-b", "10.88.0.0/24")});
    let (code, v) = delegate(
        &n,
        "ADD",
        "hp-deleg-1",
        "pod9",
        &plain,
        json!({"mac": "02:00:00:aa:bb:09"}),
    );
    assert_eq!((code, v["code"].as_u64()), (400, Some(2)), "{v}");
    // Unknown sandboxes and self types are refused with CNI errors.
    let (code, v) = delegate(&n, "ADD", "no-such", "pod8", &nad_b, json!({}));
    assert_eq!((code, v["code"].as_u64()), (400, Some(3)), "{v}");
    let evil = json!({"cniVersion": "1.0.0", "name": "evil", "type": "multus-shim"});
    let (code, v) = delegate(&n, "ADD", "hp-deleg-1", "pod8", &evil, json!({}));
    assert_eq!(code, 400, "{v}");
    assert!(!n.env.pod_links().contains(&"pod8".to_string()));
    // DEL through /delegate removes it; a second ADD then the runtime's DEL takes it too
    // (Multus's teardown would leak it: it DELs only its cached delegates).
    let (code, v) = delegate(&n, "DEL", "hp-deleg-1", "pod7", &nad_b, json!({}));
    assert_eq!(code, 200, "{v}");
    assert!(!n.env.pod_links().contains(&"pod7".to_string()));
    assert!(n.env.reservations("net-b").is_empty());
    let (code, v) = delegate(&n, "ADD", "hp-deleg-1", "pod7", &nad_b, json!({}));
    assert_eq!(code, 200, "{v}");
    n.env
        .cni_pod("DEL", "hp-deleg-1", "default", "dc", None, &n.conf)
        .ok();
    n.env.assert_clean(KEEP);
    for net in ["cluster", "net-a", "net-b"] {
        assert!(n.env.reservations(net).is_empty(), "{net} leaked");
    }
}

/// A network whose VF comes from the pod's DRA claim is hot-plugged and unplugged: the VF moves
/// into the running pod and back, and the claim's status carries the interface's network data
/// exactly while it is attached.
#[test]
fn a_dra_network_is_hot_plugged_with_its_claim_data_and_unplugged_without() {
    use common::dra;
    let n = node("hp-dra", json!({}));
    n.env.node_veth("hpvf0", "hpvf1");
    let driver = "sriov.dra.example.com";
    n.api.create_one(dra::slice(
        "v1",
        "node-1-vfs",
        driver,
        "node-1",
        &[("vf-0", Some(("example.com/dra_vf", "hpvf0")))],
    ));
    n.api.create_one(dra::claim(
        "v1",
        "default",
        "web-net",
        &[("web", "uid-web")],
        &[("vf", driver, "node-1", "vf-0")],
    ));
    n.api.create_one(dra::pod(
        "default",
        "web",
        "uid-web",
        "node-1",
        json!({NETS: "net-a"}),
        &[("net", "web-net")],
    ));
    n.api.create_nad_annotated(
        "default",
        "dra-net",
        &json!({"cniVersion": "1.0.0", "name": "dra-net", "type": "test-sriov",
                "ipam": {"type": "static", "addresses": [{"address": "10.89.0.5/24"}]}}),
        json!({"k8s.v1.cni.cncf.io/resourceName": "example.com/dra_vf"}),
    );
    n.env
        .cni_pod("ADD", "hp-dra1", "default", "web", None, &n.conf)
        .ok();
    let devices = || n.api.claim("default", "web-net", "v1")["status"]["devices"].clone();
    assert!(devices().is_null(), "no claim network yet");

    n.api
        .patch_pod_annotations("default", "web", &json!({NETS: "net-a, dra-net"}));
    wait_for("net2 in network-status", Duration::from_secs(20), || {
        status_names(&n.api, "web").len() == 3
    });
    assert!(
        !n.env.node_links().contains(&"hpvf0".to_string()),
        "the VF moved into the pod"
    );
    let got = devices();
    assert_eq!(got[0]["device"], "vf-0", "{got}");
    assert_eq!(
        got[0]["networkData"],
        json!({"interfaceName": "net2", "ips": ["10.89.0.5/24"], "hardwareAddress": n.env.pod_mac("net2")})
    );

    n.api
        .patch_pod_annotations("default", "web", &json!({NETS: "net-a"}));
    wait_for(
        "net2 gone from network-status",
        Duration::from_secs(20),
        || status_names(&n.api, "web").len() == 2,
    );
    assert_eq!(
        devices(),
        json!([]),
        "the claim's data went with the interface"
    );
    assert!(
        n.env.node_links().contains(&"hpvf0".to_string()),
        "the VF is back"
    );

    n.env
        .cni_pod("DEL", "hp-dra1", "default", "web", None, &n.conf)
        .ok();
    let mut keep = KEEP.to_vec();
    keep.extend(["hpvf0", "hpvf1"]);
    n.env.assert_clean(&keep);
}
