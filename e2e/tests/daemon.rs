//! The node daemon as a node agent: what a long-lived process on every node must survive and
//! show. It runs as in a pod (in-cluster config against the fixture API server over HTTPS with a
//! token); the runtime's side is the `plexus` binary as the shim.

use plexus_e2e as common;

use common::daemon::{metric, NodeDaemon};
use common::{Fixture, TestEnv};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

const NETS: &str = "k8s.v1.cni.cncf.io/networks";

struct Node {
    daemon: NodeDaemon,
    env: TestEnv,
    api: Fixture,
    /// The shim's config: no kubeconfig, so only the daemon can serve an ADD.
    conf: Value,
}

fn record_net(env: &TestEnv, name: &str, extra: Value) -> Value {
    let mut p =
        json!({"type": "test-record", "record": env.record_file(), "address": "10.77.0.2/24"});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    json!({"cniVersion": "1.0.0", "name": name, "plugins": [p]})
}

fn node(tag: &str, daemon_conf: Value) -> Node {
    let env = TestEnv::new(tag);
    let api = Fixture::start_tls(&env, "daemon-sa-token");
    let daemon = NodeDaemon::start(&env, &api, daemon_conf);
    let mut ipam = env.host_local("cluster", "10.76.0.0/24");
    ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let mut conf = env.plexus_conf(
        "1.1.0",
        vec![json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
            {"type": "bridge", "bridge": "dbr0", "isGateway": true, "ipMasq": false, "ipam": ipam}]})],
    );
    conf["daemonSocketDir"] = json!(daemon.socket_dir);
    api.clear_requests();
    Node {
        daemon,
        env,
        api,
        conf,
    }
}

/// The shim's ADD for `pod`, run in the background (it may be killed).
fn spawn_shim(n: &Node, verb: &str, id: &str, pod: &str) -> std::process::Child {
    use std::io::Write;
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &n.env.node])
        .arg(common::plexus_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", n.env.netns_path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", &n.env.plugins)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(n.conf.to_string().as_bytes())
        .unwrap();
    child
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "{what}: not after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn steady_state_adds_read_nothing_and_a_pod_the_watch_missed_is_fetched_once() {
    let mut n = node("d-reads", json!({"podWaitSeconds": 0.3}));
    n.api.create_nad(
        "default",
        "extra",
        &record_net(&n.env, "extra", json!({"address": "10.78.0.2/24"})),
    );
    // Steady state begins once the NAD watch has delivered "extra" (until then an ADD confirms a
    // NAD missing from the cache with one GET): warm up until an ADD reads nothing.
    let t = Instant::now();
    for k in 0.. {
        let pod = format!("warm{k}");
        n.api.create_pod("default", &pod, json!({NETS: "extra"}));
        n.api.clear_requests();
        let id = format!("d-warm-{k}");
        n.env
            .cni_pod("ADD", &id, "default", &pod, None, &n.conf)
            .ok();
        n.env
            .cni_pod("DEL", &id, "default", &pod, None, &n.conf)
            .ok();
        if !n.api.requests().iter().any(|r| r.starts_with("GET")) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the watch never delivered the NAD"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n.api.clear_requests();
    for i in 0..5 {
        let pod = format!("p{i}");
        n.api.create_pod("default", &pod, json!({NETS: "extra"}));
        n.env
            .cni_pod(
                "ADD",
                &format!("d-reads-{i}"),
                "default",
                &pod,
                None,
                &n.conf,
            )
            .ok();
        n.env
            .cni_pod(
                "DEL",
                &format!("d-reads-{i}"),
                "default",
                &pod,
                None,
                &n.conf,
            )
            .ok();
    }
    let gets: Vec<String> = n
        .api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET"))
        .collect();
    assert!(gets.is_empty(), "no pod or NAD GET: {gets:?}");
    // Cut the watches: until kube-rs re-watches, a new pod is not delivered; the ADD waits
    // podWaitSeconds for it, then fetches it with one GET.
    n.api.abort_watches();
    n.api.create_pod("default", "late", json!({NETS: "extra"}));
    n.api.clear_requests();
    n.env
        .cni_pod("ADD", "d-late", "default", "late", None, &n.conf)
        .ok();
    let gets: Vec<String> = n
        .api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/default/pods/late"))
        .collect();
    assert!(gets.len() <= 1, "at most one GET: {gets:?}");
    n.env
        .cni_pod("DEL", "d-late", "default", "late", None, &n.conf)
        .ok();
    n.env.assert_clean(&["dbr0"]);
    n.daemon.kill();
}

#[test]
fn a_daemon_killed_mid_add_strands_nothing_and_a_restarted_one_serves_the_next_pod() {
    let mut n = node("d-kill", json!({}));
    n.api.create_nad(
        "default",
        "slow",
        &record_net(&n.env, "slow", json!({"type": "test-hang"})),
    );
    n.api.create_pod("default", "victim", json!({NETS: "slow"}));
    let shim = spawn_shim(&n, "ADD", "d-kill-1", "victim");
    // eth0 is attached and the slow delegate is running when the daemon is killed.
    wait_for("slow delegate running", Duration::from_secs(20), || {
        n.env.records().iter().any(|r| r["ifname"] == "net1")
    });
    let hung = n.env.records()[0]["pid"].as_u64().unwrap();
    n.daemon.kill();
    let out = shim.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["code"], 11,
        "{v}: the shim reports the daemon gone, try again later"
    );
    let msg = v["msg"].as_str().unwrap();
    assert!(msg.contains("multus.sock"), "{v}");
    // It had the request and had attached eth0: the shim must not say nothing was attached.
    assert!(
        msg.contains("went away during the call") && !msg.contains("nothing was attached"),
        "{v}"
    );
    // The delegate died with the daemon; the pending record names everything.
    wait_for("delegate gone", Duration::from_secs(5), || {
        !std::fs::read_to_string(format!("/proc/{hung}/stat")).is_ok_and(|s| !s.contains(") Z "))
    });
    assert_eq!(n.env.cache_files().len(), 1);
    // The runtime's DEL goes through the shim alone: the daemon is not needed.
    n.env
        .cni_pod("DEL", "d-kill-1", "default", "victim", None, &n.conf)
        .ok();
    n.env.assert_clean(&["dbr0"]);
    assert!(n.env.reservations("cluster").is_empty());
    // A restarted daemon serves the next pod.
    n.daemon.restart(&n.api);
    n.api.create_pod("default", "next", json!({}));
    n.env
        .cni_pod("ADD", "d-kill-2", "default", "next", None, &n.conf)
        .ok();
    n.env
        .cni_pod("DEL", "d-kill-2", "default", "next", None, &n.conf)
        .ok();
    n.env.assert_clean(&["dbr0"]);
}

#[test]
fn a_killed_shim_makes_the_daemon_roll_back() {
    let n = node("d-shim", json!({}));
    n.api.create_nad(
        "default",
        "slow",
        &record_net(&n.env, "slow", json!({"sleepMs": 30000})),
    );
    n.api.create_pod("default", "p", json!({NETS: "slow"}));
    let mut shim = spawn_shim(&n, "ADD", "d-shim-1", "p");
    wait_for("slow delegate running", Duration::from_secs(20), || {
        n.env.records().iter().any(|r| r["ifname"] == "net1")
    });
    // The runtime's timeout: the shim is killed. `ip netns exec` execs plexus: this is it.
    let _ = shim.kill();
    let _ = shim.wait();
    let t = Instant::now();
    wait_for("rolled back", Duration::from_secs(10), || {
        n.env.cache_files().is_empty() && n.env.pod_links() == ["lo"]
    });
    assert!(t.elapsed() < Duration::from_secs(10));
    let dels: Vec<String> = n
        .env
        .records()
        .iter()
        .filter(|r| r["command"] == "DEL")
        .map(|r| r["ifname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dels, ["net1"], "the cancelled delegate got its DEL");
    assert!(n.env.reservations("cluster").is_empty());
    // No network-status or Event for a call nobody waits for.
    std::thread::sleep(Duration::from_millis(200));
    assert!(n.api.network_status("default", "p").is_null());
    assert!(
        !n.api
            .requests()
            .iter()
            .any(|r| r.contains("/status") || r.contains("/events")),
        "{:?}",
        n.api.requests()
    );
}

#[test]
fn sigterm_drains_calls_in_flight_then_exits() {
    let mut n = node("d-term", json!({"shutdownGraceSeconds": 20}));
    n.api.create_nad(
        "default",
        "slowish",
        &record_net(&n.env, "slowish", json!({"sleepMs": 1500})),
    );
    n.api.create_pod("default", "p", json!({NETS: "slowish"}));
    let shim = spawn_shim(&n, "ADD", "d-term-1", "p");
    wait_for("delegate running", Duration::from_secs(20), || {
        n.env.records().iter().any(|r| r["ifname"] == "net1")
    });
    let (status, took) = n.daemon.terminate();
    assert!(status.success(), "{status}: {}", n.daemon.log());
    let out = shim.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the call in flight finished: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(!n.daemon.socket().exists(), "socket removed");
    n.env
        .cni_pod("DEL", "d-term-1", "default", "p", None, &n.conf)
        .ok();
    n.env.assert_clean(&["dbr0"]);
}

#[test]
fn auto_config_follows_the_primary_and_the_readiness_file_and_goes_on_sigterm() {
    let env = TestEnv::new("d-auto");
    let api = Fixture::start_tls(&env, "daemon-sa-token");
    let netd = env.path().join("net.d");
    let ready = env.path().join("flannel/ready");
    let mut daemon = NodeDaemon::spawn(
        &env,
        &api,
        json!({"multusConfigFile": "auto", "cniConfigDir": netd, "readinessindicatorfile": ready,
               "cniDir": env.cni_dir(), "binDir": env.bin_dir()}),
    );
    let generated = netd.join("00-plexus.conflist");
    // Neither the primary nor the readiness file: nothing written, not ready.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!generated.exists());
    assert_eq!(
        daemon.readyz(),
        Some(500),
        "not ready before the config is in place"
    );
    std::fs::write(
        netd.join("10-flannel.conflist"),
        json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [{"type": "bridge"},
            {"type": "portmap", "capabilities": {"portMappings": true}}]})
        .to_string(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!generated.exists(), "still waiting for the readiness file");
    std::fs::create_dir_all(ready.parent().unwrap()).unwrap();
    std::fs::write(&ready, "").unwrap();
    wait_for("config written", Duration::from_secs(5), || {
        generated.exists()
    });
    daemon.wait_ready(Duration::from_secs(10));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&generated).unwrap()).unwrap();
    let p = &v["plugins"][0];
    assert_eq!(p["type"], "plexus");
    assert_eq!(p["daemonSocketDir"], json!(daemon.socket_dir));
    assert!(p["clusterNetwork"]
        .as_str()
        .unwrap()
        .ends_with("10-flannel.conflist"));
    assert_eq!(p["capabilities"]["portMappings"], true);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&generated).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The primary changes: rewritten at once.
    std::fs::write(
        netd.join("05-calico.conflist"),
        json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "calico"}]})
            .to_string(),
    )
    .unwrap();
    wait_for("config rewritten", Duration::from_secs(5), || {
        std::fs::read_to_string(&generated).is_ok_and(|t| t.contains("05-calico"))
    });
    // The readiness file goes: the config goes, so no pod is sent to plexus.
    std::fs::remove_file(&ready).unwrap();
    wait_for("config removed", Duration::from_secs(5), || {
        !generated.exists()
    });
    assert_eq!(daemon.readyz(), Some(500));
    std::fs::write(&ready, "").unwrap();
    wait_for("config back", Duration::from_secs(5), || generated.exists());
    // SIGTERM: removed (cleanupConfigOnExit), socket gone.
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert!(!generated.exists(), "removed on SIGTERM");
    assert!(
        netd.join("10-flannel.conflist").exists(),
        "the primary is never touched"
    );
}

#[test]
fn metrics_count_what_was_done_and_health_answers_on_tcp() {
    let n = node("d-metrics", json!({"metricsPort": 19091}));
    n.api
        .create_nad("default", "extra", &record_net(&n.env, "extra", json!({})));
    n.api.create_pod("default", "m", json!({NETS: "extra"}));
    n.env
        .cni_pod("ADD", "d-m-1", "default", "m", None, &n.conf)
        .ok();
    n.env
        .cni_pod("CHECK", "d-m-1", "default", "m", None, &n.conf)
        .ok();
    n.api.create_pod("default", "bad", json!({NETS: "ghost"}));
    n.env
        .cni_pod("ADD", "d-m-2", "default", "bad", None, &n.conf)
        .err(114);
    let text = n.daemon.metrics();
    for (line, want) in [
        (r#"plexus_cni_requests_total{verb="ADD",code="0"}"#, 1.0),
        (r#"plexus_cni_requests_total{verb="ADD",code="114"}"#, 1.0),
        (r#"plexus_cni_requests_total{verb="CHECK",code="0"}"#, 1.0),
        (
            r#"plexus_cni_request_duration_seconds_count{verb="ADD"}"#,
            2.0,
        ),
        (
            r#"plexus_delegate_duration_seconds_count{plugin="bridge",verb="ADD"}"#,
            1.0,
        ),
        (
            r#"plexus_delegate_duration_seconds_count{plugin="test-record",verb="CHECK"}"#,
            1.0,
        ),
        (r#"plexus_api_requests_total{verb="PATCH",code="200"}"#, 1.0),
        (r#"plexus_watch_cache_objects{kind="pods"}"#, 2.0),
        (
            r#"plexus_watch_cache_objects{kind="network-attachment-definitions"}"#,
            1.0,
        ),
        ("plexus_cni_requests_in_flight", 0.0),
        (
            r#"multus_server_request_total{handler="/cni",code="200",method="post"}"#,
            2.0,
        ),
    ] {
        assert_eq!(metric(&text, line), want, "{line}\n{text}");
    }
    // The kubelet's probes reach health on TCP (the socket is not reachable from a probe).
    assert_eq!(n.daemon.tcp_get("/healthz").0, 200);
    assert_eq!(n.daemon.tcp_get("/readyz").0, 200);
    // The NAD miss was confirmed with one GET (404), counted as well.
    assert_eq!(
        metric(&text, r#"plexus_api_requests_total{verb="GET",code="404"}"#),
        1.0,
        "{text}"
    );
    n.env
        .cni_pod("DEL", "d-m-1", "default", "m", None, &n.conf)
        .ok();
}

#[test]
fn bad_daemon_configs_do_not_start() {
    let env = TestEnv::new("d-bad");
    let api = Fixture::start_tls(&env, "t");
    let run = |conf: &str, node: Option<&str>| {
        std::fs::write(env.path().join("bad.json"), conf).unwrap();
        let sa = env.path().join("sa");
        std::fs::create_dir_all(&sa).unwrap();
        api.write_service_account(&sa);
        let mut cmd = api.in_cluster_command(
            &sa,
            &[
                common::plexus_bin().display().to_string(),
                "daemon".into(),
                "--config".into(),
                env.path().join("bad.json").display().to_string(),
            ],
        );
        if let Some(n) = node {
            cmd.env("MULTUS_NODE_NAME", n);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(r#"{"metricsPort": "9091"}"#, Some("node-1"));
    assert_eq!(code, Some(1));
    assert!(err.contains("\"metricsPort\""), "{err}");
    let (code, err) = run(r#"{"namespaceIsolation": 1}"#, Some("node-1"));
    assert_eq!(code, Some(1));
    assert!(err.contains("\"namespaceIsolation\""), "{err}");
    let (code, err) = run("{}", None);
    assert_eq!(code, Some(1));
    assert!(err.contains("MULTUS_NODE_NAME"), "{err}");
}

#[test]
fn a_daemon_killed_mid_churn_leaves_nothing_once_the_runtime_has_deleted() {
    let mut n = node("d-churn", json!({"maxConcurrentRequests": 4}));
    n.api.create_nad(
        "default",
        "slow",
        &record_net(&n.env, "slow", json!({"sleepMs": 3000})),
    );
    // Several pods of their own netns each, ADDs and DELs in flight at once.
    let pods: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    let netns: Vec<String> = pods.iter().map(|p| format!("{}-{p}", n.env.pod)).collect();
    for ns in &netns {
        common::sh(&["ip", "netns", "add", ns]);
    }
    let run = |verb: &str, i: usize| {
        let path = format!("/run/netns/{}", netns[i]);
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
            pods[i]
        );
        n.env.cni_raw(
            verb,
            &[
                ("CNI_CONTAINERID", &format!("churn-{i}")),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
                ("CNI_NETNS", &path),
            ],
            n.conf.to_string().as_bytes(),
        )
    };
    for p in &pods {
        n.api.create_pod("default", p, json!({NETS: "slow"}));
    }
    // Two pods attached, then a burst of ADDs and DELs, and the daemon dies in the middle.
    run("ADD", 0).ok();
    run("ADD", 1).ok();
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        for i in 2..6 {
            hs.push(s.spawn(move || run("ADD", i)));
        }
        hs.push(s.spawn(|| run("DEL", 0)));
        std::thread::sleep(Duration::from_millis(700));
        n.daemon.kill();
        for h in hs {
            let out = h.join().unwrap();
            // Whatever was cut short answered with a CNI error, never hung.
            if out.code != 0 {
                let v = out.json();
                assert!(v["code"].as_u64().is_some(), "{v}");
            }
        }
    });
    // The runtime DELs every sandbox (through the shim alone: the daemon is gone).
    for i in 0..6 {
        run("DEL", i).ok();
    }
    for ns in &netns {
        assert_eq!(TestEnv::links(ns), ["lo"], "{ns} not clean");
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .status();
    }
    assert!(n.env.cache_files().is_empty(), "{:?}", n.env.cache_files());
    assert!(n.env.reservations("cluster").is_empty());
    let mut node_links = n.env.node_links();
    node_links.retain(|l| l != "lo" && l != "dbr0");
    assert!(node_links.is_empty(), "{node_links:?}");
    // And a restarted daemon serves a new pod.
    n.daemon.restart(&n.api);
    n.api.create_pod("default", "after", json!({}));
    n.env
        .cni_pod("ADD", "churn-after", "default", "after", None, &n.conf)
        .ok();
    n.env
        .cni_pod("DEL", "churn-after", "default", "after", None, &n.conf)
        .ok();
    n.env.assert_clean(&["dbr0"]);
}
