//! plexus inside a "cluster": pods and NetworkAttachmentDefinitions served by the fixture API
//! server (not a real kube-apiserver), real delegates in real namespaces.

use plexus_e2e as common;

use common::daemon::{metric, NodeDaemon};
use common::{Fixture, TestEnv};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NETS: &str = "k8s.v1.cni.cncf.io/networks";

/// Every scenario runs twice: plexus exec'd as the plugin (thin), and as the shim of the node
/// daemon (thick), the daemon run as in a pod against the fixture over HTTPS with a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Thin,
    Daemon,
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn thin() {
                super::$name(super::Mode::Thin)
            }
            #[test]
            fn daemon() {
                super::$name(super::Mode::Daemon)
            }
        }
    )*};
}

struct Cluster {
    // Dropped first: the daemon goes before the fixture and the namespaces.
    _daemon: Option<NodeDaemon>,
    env: TestEnv,
    api: Fixture,
    conf: Value,
    mode: Mode,
}

fn cluster(mode: Mode, tag: &str, bridge: &str, subnet: &str) -> Cluster {
    cluster_serving(mode, tag, bridge, subnet, None)
}

/// With the fixture serving `resource_version` of resource.k8s.io (v1 when `None`).
fn cluster_serving(
    mode: Mode,
    tag: &str,
    bridge: &str,
    subnet: &str,
    resource_version: Option<&str>,
) -> Cluster {
    let env = TestEnv::new(tag);
    let api = Fixture::start_with(
        &env,
        &common::FixtureOptions {
            tls: mode == Mode::Daemon,
            token: (mode == Mode::Daemon).then(|| "daemon-sa-token".to_string()),
            resource_version: resource_version.map(String::from),
            ..Default::default()
        },
    );
    let mut ipam = env.host_local("cluster", subnet);
    ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let mut conf = env.plexus_conf(
        "1.1.0",
        vec![json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "ipam": ipam}]})],
    );
    std::fs::create_dir_all(env.path().join("conf")).unwrap();
    let daemon = match mode {
        Mode::Thin => {
            conf["kubeconfig"] = json!(api.kubeconfig);
            None
        }
        Mode::Daemon => {
            // The shim's config names no kubeconfig: every ADD must go through the daemon.
            // Metrics (for `settle`): each test's daemon is alone in its node netns.
            let d = NodeDaemon::start(
                &env,
                &api,
                json!({"logLevel": "debug", "metricsPort": 19291}),
            );
            conf["daemonSocketDir"] = json!(d.socket_dir);
            Some(d)
        }
    };
    api.clear_requests();
    Cluster {
        _daemon: daemon,
        env,
        api,
        conf,
        mode,
    }
}

impl Cluster {
    /// The GETs of pods and NADs since the last clear (watches and lists aside).
    fn reads(&self) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.starts_with("GET"))
            .collect()
    }

    /// Daemon mode: wait until the daemon's watch cache holds every NAD the fixture has. Until
    /// then an ADD confirms a NAD missing from the cache with one GET (as it should), which is
    /// not the steady state a test of reads or of read faults means. Clears the request log.
    fn settle(&self) {
        let Some(d) = &self._daemon else {
            return;
        };
        let (_, list) = self.api.call(
            "GET",
            "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions",
            None,
        );
        let want = list["items"].as_array().map_or(0, Vec::len) as f64;
        let t = Instant::now();
        while metric(
            &d.metrics(),
            r#"plexus_watch_cache_objects{kind="network-attachment-definitions"}"#,
        ) < want
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the watch never delivered the NADs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.api.clear_requests();
    }

    /// Everything but GETs: the writes.
    fn writes(&self) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| !r.starts_with("GET"))
            .collect()
    }
}

fn macvlan_nad(c: &Cluster, name: &str, master: &str, subnet: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": "macvlan", "master": master, "mode": "bridge",
           "ipam": c.env.host_local(name, subnet)})
}

fn status_of<'a>(status: &'a Value, interface: &str) -> &'a Value {
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["interface"] == interface)
        .unwrap_or_else(|| panic!("no {interface} in {status}"))
}

fn pod_without_annotation_gets_the_cluster_network_and_a_status(mode: Mode) {
    let c = cluster(mode, "k-none", "kbr0", "10.100.0.0/24");
    c.api.create_pod("default", "web", json!({}));
    c.api.clear_requests();
    let out = c
        .env
        .cni_pod("ADD", "k-none", "default", "web", None, &c.conf);
    let r = out.ok().json();
    // At debug level, neither plexus's log (thin: stderr) nor the daemon's holds the token.
    let (token, log) = match &c._daemon {
        None => ("fixture-token", out.stderr.clone()),
        Some(d) => ("daemon-sa-token", d.log()),
    };
    assert!(log.contains("DEBUG"), "the log is at debug level");
    assert!(!log.contains(token), "the bearer token is in the log");
    assert_eq!(c.env.pod_links().len(), 2, "lo and eth0");
    // Thin: one read (the pod). The daemon: none, the pod is in its watch cache. Then two
    // writes either way (network-status, one event).
    let want_reads: &[&str] = match c.mode {
        Mode::Thin => &["GET /api/v1/namespaces/default/pods/web"],
        Mode::Daemon => &[],
    };
    assert_eq!(c.reads(), want_reads);
    assert_eq!(
        c.writes(),
        [
            "PATCH /api/v1/namespaces/default/pods/web/status",
            "POST /api/v1/namespaces/default/events"
        ]
    );
    let status = c.api.network_status("default", "web");
    assert_eq!(status.as_array().unwrap().len(), 1);
    let eth0 = status_of(&status, "eth0");
    assert_eq!(eth0["name"], "cbr0");
    assert_eq!(eth0["default"], true);
    assert_eq!(
        eth0["ips"][0],
        r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
    );
    assert_eq!(eth0["mac"], c.env.pod_mac("eth0"));
    let ev = c.api.events("default");
    assert_eq!(ev[0]["reason"], "AddedInterface");
    assert!(ev[0]["message"].as_str().unwrap().contains("eth0"));
    c.api.clear_requests();
    c.env
        .cni_pod("DEL", "k-none", "default", "web", None, &c.conf)
        .ok();
    assert!(c.api.requests().is_empty(), "DEL makes no API call");
    c.env.assert_clean(&["kbr0"]);
}

fn networks_by_name_and_namespace_at_interface(mode: Mode) {
    let c = cluster(mode, "k-two", "kbr1", "10.101.0.0/24");
    c.env.node_veth("km0", "km1");
    c.api.create_nad(
        "default",
        "mv",
        &macvlan_nad(&c, "mv", "km0", "10.102.0.0/24"),
    );
    c.api.create_nad("other", "p2p", &json!({"cniVersion": "1.0.0", "name": "p2p", "type": "ptp", "ipam": c.env.host_local("p2p", "10.103.0.0/30")}));
    c.api
        .create_pod("default", "two", json!({NETS: "mv, other/p2p@p2p0"}));
    c.settle();
    c.api.clear_requests();
    c.env
        .cni_pod("ADD", "k-two", "default", "two", None, &c.conf)
        .ok();
    let reads = c.reads();
    let want = if c.mode == Mode::Thin { 3 } else { 0 };
    assert_eq!(
        reads.len(),
        want,
        "thin: pod + 2 NADs; daemon: none: {reads:?}"
    );
    assert_eq!(c.writes().len(), 2, "status + event: {:?}", c.writes());
    let mut links = c.env.pod_links();
    links.sort();
    assert_eq!(links, ["eth0", "lo", "net1", "p2p0"]);
    assert_eq!(c.env.pod_addrs("net1"), ["10.102.0.2/24"]);
    assert_eq!(c.env.pod_addrs("p2p0"), ["10.103.0.2/30"]);
    assert_eq!(c.env.pod_link("net1")["linkinfo"]["info_kind"], "macvlan");
    let status = c.api.network_status("default", "two");
    assert_eq!(status.as_array().unwrap().len(), 3);
    let net1 = status_of(&status, "net1");
    assert_eq!(net1["name"], "default/mv");
    assert_eq!(net1["ips"], json!(["10.102.0.2"]));
    assert_eq!(net1["mac"], c.env.pod_mac("net1"));
    assert_eq!(
        net1["default"], false,
        "NPWG §5.3.5: required, false off the cluster network"
    );
    assert_eq!(status_of(&status, "p2p0")["name"], "other/p2p");
    assert_eq!(status_of(&status, "eth0")["default"], true);
    c.env
        .cni_pod("DEL", "k-two", "default", "two", None, &c.conf)
        .ok();
    c.env.assert_clean(&["kbr1", "km0", "km1"]);
    for n in ["cluster", "mv", "p2p"] {
        assert!(c.env.reservations(n).is_empty(), "{n}");
    }
}

fn json_selection_with_interface_static_ips_and_mac(mode: Mode) {
    let c = cluster(mode, "k-json", "kbr2", "10.104.0.0/24");
    c.env.node_veth("kj0", "kj1");
    c.api.create_nad("default", "static-mv", &json!({"cniVersion": "1.0.0", "name": "static-mv", "plugins": [
        {"type": "macvlan", "master": "kj0", "capabilities": {"ips": true, "mac": true}, "ipam": {"type": "static"}}]}));
    let ann = json!([{"name": "static-mv", "interface": "data0", "ips": ["10.105.0.7/24"], "mac": "02:11:22:33:44:55"}]);
    c.api
        .create_pod("default", "j", json!({NETS: ann.to_string()}));
    c.env
        .cni_pod("ADD", "k-json", "default", "j", None, &c.conf)
        .ok();
    assert_eq!(c.env.pod_addrs("data0"), ["10.105.0.7/24"]);
    assert_eq!(c.env.pod_mac("data0"), "02:11:22:33:44:55");
    let s = status_of(&c.api.network_status("default", "j"), "data0").clone();
    assert_eq!(
        (s["ips"].clone(), s["mac"].clone()),
        (json!(["10.105.0.7"]), json!("02:11:22:33:44:55"))
    );
    c.env
        .cni_pod("DEL", "k-json", "default", "j", None, &c.conf)
        .ok();
    c.env.assert_clean(&["kbr2", "kj0", "kj1"]);
}

fn missing_nad_fails_cleanly_with_an_event(mode: Mode) {
    let c = cluster(mode, "k-miss", "kbr3", "10.106.0.0/24");
    c.api.create_pod("default", "m", json!({NETS: "ghost"}));
    let msg = c
        .env
        .cni_pod("ADD", "k-miss", "default", "m", None, &c.conf)
        .err(114);
    assert!(
        msg.contains("default/ghost") && msg.contains("pod default/m"),
        "{msg}"
    );
    c.env.assert_clean(&[]);
    assert!(c.env.reservations("cluster").is_empty());
    let ev = c.api.events("default");
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0]["type"].as_str(), ev[0]["reason"].as_str()),
        (Some("Warning"), Some("FailedAttach"))
    );
    c.env
        .cni_pod("DEL", "k-miss", "default", "m", None, &c.conf)
        .ok();
}

fn nad_without_config_comes_from_conf_dir_and_conflist_with_bandwidth(mode: Mode) {
    let c = cluster(mode, "k-bw", "kbr4", "10.107.0.0/24");
    // An empty NAD: its config is the file in confDir whose network name is the NAD's name.
    let ondisk = json!({"cniVersion": "1.0.0", "name": "disk-net", "type": "ptp", "ipam": c.env.host_local("disk-net", "10.108.0.0/30")});
    std::fs::write(c.env.path().join("conf/20-disk.conf"), ondisk.to_string()).unwrap();
    c.api.create_nad("default", "disk-net", &Value::Null);
    c.api.create_nad(
        "default",
        "shaped",
        &json!({"cniVersion": "1.0.0", "name": "shaped", "plugins": [
        {"type": "ptp", "ipam": c.env.host_local("shaped", "10.109.0.0/30")},
        {"type": "bandwidth", "capabilities": {"bandwidth": true}}]}),
    );
    let ann = json!([{"name": "disk-net"}, {"name": "shaped", "bandwidth": {"ingressRate": 800000, "ingressBurst": 80000, "egressRate": 800000, "egressBurst": 80000}}]);
    c.api
        .create_pod("default", "bw", json!({NETS: ann.to_string()}));
    c.env
        .cni_pod("ADD", "k-bw", "default", "bw", None, &c.conf)
        .ok();
    assert_eq!(c.env.pod_addrs("net1"), ["10.108.0.2/30"]);
    assert_eq!(c.env.pod_addrs("net2"), ["10.109.0.2/30"]);
    let qd = c.env.node(&["tc", "qdisc", "show"]);
    assert!(qd.contains("qdisc tbf"), "{qd}");
    assert!(c.env.node_links().iter().any(|l| l.starts_with("bwp")));
    c.env
        .cni_pod("DEL", "k-bw", "default", "bw", None, &c.conf)
        .ok();
    c.env.assert_clean(&["kbr4"]);
    assert!(!c.env.node(&["tc", "qdisc", "show"]).contains("qdisc tbf"));
}

fn default_route_moves_to_the_requested_network(mode: Mode) {
    let c = cluster(mode, "k-dr", "kbr5", "10.110.0.0/24");
    c.env.node_veth("kd0", "kd1");
    let mut nad = macvlan_nad(&c, "gw-net", "kd0", "10.111.0.0/24");
    nad["ipam"]["ranges"][0][0]["gateway"] = json!("10.111.0.1");
    c.api.create_nad("default", "gw-net", &nad);
    c.api.create_pod(
        "default",
        "dr",
        json!({NETS: json!([{"name": "gw-net", "default-route": ["10.111.0.1"]}]).to_string()}),
    );
    let r = c
        .env
        .cni_pod("ADD", "k-dr", "default", "dr", None, &c.conf)
        .ok()
        .json();
    let defaults: Vec<String> = c
        .env
        .pod_routes()
        .into_iter()
        .filter(|l| l.starts_with("default"))
        .collect();
    assert_eq!(
        defaults,
        ["default via 10.111.0.1 dev net1"],
        "{:?}",
        c.env.pod_routes()
    );
    // The printed (cluster) result no longer claims the default route; status agrees.
    assert!(
        r["routes"]
            .as_array()
            .is_none_or(|rs| rs.iter().all(|x| x["dst"] != "0.0.0.0/0")),
        "{r}"
    );
    // NPWG §5.3.5/§5.3.6.4: `default` stays on the cluster network's entry; the attachment
    // that got the default route says so with `default-route`.
    let status = c.api.network_status("default", "dr");
    assert_eq!(status_of(&status, "eth0")["default"], true);
    assert_eq!(status_of(&status, "net1")["default"], false);
    assert_eq!(
        status_of(&status, "net1")["default-route"],
        json!(["10.111.0.1"])
    );
    assert!(status_of(&status, "net1").get("gateway").is_none());
    // The cached results agree too: CHECK sees what is there.
    c.env
        .cni_pod("CHECK", "k-dr", "default", "dr", None, &c.conf)
        .ok();
    c.env
        .cni_pod("DEL", "k-dr", "default", "dr", None, &c.conf)
        .ok();
    c.env.assert_clean(&["kbr5", "kd0", "kd1"]);
}

fn namespace_isolation_on_and_off(mode: Mode) {
    let mut c = cluster(mode, "k-iso", "kbr6", "10.112.0.0/24");
    c.api.create_nad("private", "p2p", &json!({"cniVersion": "1.0.0", "name": "p2p", "type": "ptp", "ipam": c.env.host_local("p2p", "10.113.0.0/30")}));
    c.api
        .create_pod("tenant", "x", json!({NETS: "private/p2p"}));
    c.conf["namespaceIsolation"] = json!(true);
    let msg = c
        .env
        .cni_pod("ADD", "k-iso", "tenant", "x", None, &c.conf)
        .err(113);
    assert!(msg.contains("private/p2p"), "{msg}");
    c.env.assert_clean(&[]);
    c.env
        .cni_pod("DEL", "k-iso", "tenant", "x", None, &c.conf)
        .ok();
    c.conf["namespaceIsolation"] = json!(false);
    c.env
        .cni_pod("ADD", "k-iso", "tenant", "x", None, &c.conf)
        .ok();
    assert_eq!(c.env.pod_addrs("net1"), ["10.113.0.2/30"]);
    c.env
        .cni_pod("DEL", "k-iso", "tenant", "x", None, &c.conf)
        .ok();
    c.env.assert_clean(&["kbr6"]);
}

fn uid_mismatch_is_refused_except_for_static_pods(mode: Mode) {
    let c = cluster(mode, "k-uid", "kbr7", "10.114.0.0/24");
    let pod = c.api.create_pod("default", "u", json!({}));
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let msg = c
        .env
        .cni_pod("ADD", "k-uid", "default", "u", Some("not-the-uid"), &c.conf)
        .err(112);
    assert!(msg.contains("not-the-uid") && msg.contains(&uid), "{msg}");
    c.env.assert_clean(&[]);
    c.env
        .cni_pod("DEL", "k-uid", "default", "u", Some("not-the-uid"), &c.conf)
        .ok();
    c.env
        .cni_pod("ADD", "k-uid", "default", "u", Some(&uid), &c.conf)
        .ok();
    c.env
        .cni_pod("DEL", "k-uid", "default", "u", Some(&uid), &c.conf)
        .ok();
    // A mirror pod of a static pod: its UID differs from the kubelet's by design.
    c.api.create_pod(
        "default",
        "static",
        json!({"kubernetes.io/config.source": "file", "kubernetes.io/config.mirror": "x"}),
    );
    c.env
        .cni_pod(
            "ADD",
            "k-uid2",
            "default",
            "static",
            Some("kubelet-side-uid"),
            &c.conf,
        )
        .ok();
    c.env
        .cni_pod(
            "DEL",
            "k-uid2",
            "default",
            "static",
            Some("kubelet-side-uid"),
            &c.conf,
        )
        .ok();
    c.env.assert_clean(&["kbr7"]);
}

fn api_down_fails_add_cleanly_and_del_still_works(mode: Mode) {
    let mut c = cluster(mode, "k-down", "kbr8", "10.115.0.0/24");
    c.env.node_veth("kx0", "kx1");
    c.api.create_nad(
        "default",
        "mv",
        &macvlan_nad(&c, "mv", "kx0", "10.116.0.0/24"),
    );
    c.api.create_pod("default", "d", json!({NETS: "mv"}));
    if c.mode == Mode::Daemon {
        return api_down_through_the_daemon(c);
    }
    // 500s from the API: "try again later", nothing attached.
    c.api.fault(json!({"pathPrefix": "/apis/", "status": 500}));
    let msg = c
        .env
        .cni_pod("ADD", "k-down", "default", "d", None, &c.conf)
        .err(11);
    assert!(msg.contains("default/mv") && msg.contains("500"), "{msg}");
    c.env.assert_clean(&["kx0", "kx1"]);
    // Slow API: the configured timeout bounds the wait.
    c.api.clear_faults();
    c.api.fault(json!({"pathPrefix": "/api/v1/namespaces/default/pods/d", "method": "GET", "delayMs": 5000}));
    c.conf["apiTimeoutSeconds"] = json!(1);
    let t = Instant::now();
    c.env
        .cni_pod("ADD", "k-down", "default", "d", None, &c.conf)
        .err(11);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    c.env.assert_clean(&["kx0", "kx1"]);
    // 401: refused, with its own code.
    c.api.clear_faults();
    c.api
        .fault(json!({"pathPrefix": "/", "status": 401, "times": 1}));
    c.env
        .cni_pod("ADD", "k-down", "default", "d", None, &c.conf)
        .err(110);
    // Healthy: attach; then the API goes away entirely and DEL still cleans up from the cache.
    c.api.clear_faults();
    c.env
        .cni_pod("ADD", "k-down", "default", "d", None, &c.conf)
        .ok();
    assert_eq!(c.env.pod_links().len(), 3);
    c.api.stop();
    let msg = c
        .env
        .cni_pod("ADD", "k-down2", "default", "d", None, &c.conf);
    assert_eq!(
        msg.json()["code"],
        11,
        "connection refused is try-again-later"
    );
    c.env
        .cni_pod("DEL", "k-down", "default", "d", None, &c.conf)
        .ok();
    c.env.assert_clean(&["kbr8", "kx0", "kx1"]);
    assert!(c.env.reservations("mv").is_empty() && c.env.reservations("cluster").is_empty());
}

/// The daemon reads pods and NADs from its watch cache, so read faults do not touch an ADD; the
/// writes still fail it cleanly, and DEL never needs the API at all.
fn api_down_through_the_daemon(mut c: Cluster) {
    c.settle();
    // 500s on every NAD and a 5 s delay on every pod GET: the cache serves the ADD.
    c.api
        .fault(json!({"pathPrefix": "/apis/", "status": 500, "watch": false}));
    c.api.fault(json!({"pathPrefix": "/api/v1/namespaces/default/pods/d", "method": "GET", "delayMs": 5000}));
    let t = Instant::now();
    c.env
        .cni_pod("ADD", "k-down", "default", "d", None, &c.conf)
        .ok();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(c.reads().is_empty(), "{:?}", c.reads());
    c.env
        .cni_pod("DEL", "k-down", "default", "d", None, &c.conf)
        .ok();
    // 401 on the status write: refused with its own code, rolled back.
    c.api.clear_faults();
    c.api.fault(json!({"pathPrefix": "/api/v1/namespaces/default/pods/d/status", "status": 401, "times": 1}));
    c.env
        .cni_pod("ADD", "k-down", "default", "d", None, &c.conf)
        .err(110);
    c.env.assert_clean(&["kbr8", "kx0", "kx1"]);
    // Healthy: attach; then the API goes away: the next ADD fails at its write, "try again
    // later", rolled back; DEL cleans up from the cache.
    c.api.clear_faults();
    c.env
        .cni_pod("ADD", "k-down", "default", "d", None, &c.conf)
        .ok();
    assert_eq!(c.env.pod_links().len(), 3);
    c.api.stop();
    // DEL needs no API; the next ADD gets as far as its write, then rolls back.
    c.env
        .cni_pod("DEL", "k-down", "default", "d", None, &c.conf)
        .ok();
    let out = c
        .env
        .cni_pod("ADD", "k-down2", "default", "d", None, &c.conf);
    assert_eq!(out.json()["code"], 11, "{}", out.stdout);
    c.env.assert_clean(&["kbr8", "kx0", "kx1"]);
    c.env
        .cni_pod("DEL", "k-down2", "default", "d", None, &c.conf)
        .ok();
    c.env.assert_clean(&["kbr8", "kx0", "kx1"]);
    assert!(c.env.reservations("mv").is_empty() && c.env.reservations("cluster").is_empty());
}

fn a_failed_status_write_rolls_everything_back_and_late_pods_are_waited_for(mode: Mode) {
    let c = cluster(mode, "k-409", "kbr9", "10.117.0.0/24");
    c.api.create_pod("default", "c", json!({}));
    // The pod is not visible at first (the API lags the kubelet), then the status write fails.
    c.api.fault(json!({"pathPrefix": "/api/v1/namespaces/default/pods/c", "method": "GET", "status": 404, "times": 2}));
    c.api.fault(json!({"pathPrefix": "/api/v1/namespaces/default/pods/c/status", "method": "PATCH", "status": 409, "times": 1}));
    let msg = c
        .env
        .cni_pod("ADD", "k-409", "default", "c", None, &c.conf)
        .err(110);
    assert!(
        msg.contains("network-status") && msg.contains("default/c"),
        "{msg}"
    );
    // Rolled back under the same lock: nothing attached, no IP kept, no cache.
    c.env.assert_clean(&["kbr9"]);
    assert!(c.env.reservations("cluster").is_empty());
    let ev = c.api.events("default");
    assert_eq!(ev.last().unwrap()["reason"], "FailedAttach");
    assert_eq!(ev.last().unwrap()["type"], "Warning");
    // (The daemon never made the GETs the 404s were for: its watch cache had the pod.)
    c.api.clear_faults();
    // The runtime retries: this time it works.
    c.env
        .cni_pod("ADD", "k-409", "default", "c", None, &c.conf)
        .ok();
    assert_eq!(
        c.api
            .network_status("default", "c")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    c.env
        .cni_pod("DEL", "k-409", "default", "c", None, &c.conf)
        .ok();
    // A pod that never shows up: a clear error, nothing attached.
    let msg = c
        .env
        .cni_pod("ADD", "k-409b", "default", "nope", None, &c.conf)
        .err(111);
    assert!(msg.contains("default/nope"), "{msg}");
    c.env.assert_clean(&["kbr9"]);
}

fn no_pod_identity_means_cluster_network_only(mode: Mode) {
    let c = cluster(mode, "k-anon", "kbra", "10.118.0.0/24");
    let mut conf = c.conf.clone();
    conf["delegates"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cniVersion": "1.0.0", "name": "never", "type": "test-fail"}));
    c.env.cni("ADD", "k-anon", "eth0", &conf).ok();
    assert_eq!(c.env.pod_links().len(), 2);
    assert!(c.api.requests().is_empty());
    c.env.cni("DEL", "k-anon", "eth0", &conf).ok();
    c.env.assert_clean(&["kbra"]);
}

#[track_caller]
fn assert_no_nad_reads(api: &Fixture) {
    let reqs = api.requests();
    assert!(
        !reqs
            .iter()
            .any(|r| r.contains("network-attachment-definitions")),
        "{reqs:?}"
    );
}

fn oversized_selection_fails_fast_without_an_api_storm(mode: Mode) {
    let c = cluster(mode, "k-cap", "kbrb", "10.119.0.0/24");
    let many = (0..500)
        .map(|i| format!("n{i}"))
        .collect::<Vec<_>>()
        .join(",");
    c.api.create_pod("default", "big", json!({NETS: many}));
    c.api.clear_requests();
    let t = Instant::now();
    let msg = c
        .env
        .cni_pod("ADD", "k-cap", "default", "big", None, &c.conf)
        .err(7);
    // Refused before any API call (the requests below); the time is only a loose bound, for a
    // parse that would have gone quadratic, not a benchmark.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(msg.contains("more than"), "{msg}");
    assert_no_nad_reads(&c.api);
    c.env.assert_clean(&[]);
    // 1,000 elements of 256 bytes (the research-grade case), in both forms: past the 64 KiB cap,
    // refused before anything is parsed or read; the DEL after it exits 0.
    let long = |i: usize| format!("{i:0>4}{}", "a".repeat(252));
    let comma = (0..1000).map(long).collect::<Vec<_>>().join(",");
    let list = Value::Array(
        (0..1000)
            .map(|i| json!({"name": long(i)[..250].to_string(), "interface": "x"}))
            .collect(),
    )
    .to_string();
    for (pod, ann) in [("huge1", comma), ("huge2", list)] {
        assert!(ann.len() > 240_000, "{}", ann.len());
        c.api.create_pod("default", pod, json!({NETS: ann}));
        c.api.clear_requests();
        let t = Instant::now();
        let out = c.env.cni_pod("ADD", pod, "default", pod, None, &c.conf);
        let msg = out.err(7);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{pod}: {:?}",
            t.elapsed()
        );
        assert!(msg.contains("more than") && msg.contains(pod), "{msg}");
        assert!(
            out.stderr.len() < 100_000,
            "{pod}: the annotation went to the log"
        );
        assert_no_nad_reads(&c.api);
        c.env
            .cni_pod("DEL", pod, "default", pod, None, &c.conf)
            .ok();
        c.env.assert_clean(&[]);
    }
}

fn requested_interface_already_in_the_pod_is_refused(mode: Mode) {
    let c = cluster(mode, "k-dup", "kbrc", "10.120.0.0/24");
    c.api.create_nad("default", "p2p", &json!({"cniVersion": "1.0.0", "name": "p2p", "type": "ptp", "ipam": c.env.host_local("p2p", "10.121.0.0/30")}));
    c.env.node(&[
        "ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1",
    ]);
    c.env
        .node(&["ip", "link", "set", "taken0", "netns", &c.env.pod]);
    c.api
        .create_pod("default", "dup", json!({NETS: "p2p@taken0"}));
    let msg = c
        .env
        .cni_pod("ADD", "k-dup", "default", "dup", None, &c.conf)
        .err(7);
    assert!(
        msg.contains("taken0") && msg.contains("already exists"),
        "{msg}"
    );
    let mut links = c.env.pod_links();
    links.sort();
    assert_eq!(links, ["lo", "taken0"]);
    c.api
        .create_pod("default", "dup2", json!({NETS: "p2p@x,p2p@x"}));
    c.env
        .cni_pod("ADD", "k-dup2", "default", "dup2", None, &c.conf)
        .err(7);
}

/// Thin mode: the kubeconfig's tokenFile is read at each run. (The daemon's in-cluster client
/// re-reads its token as kube-rs does.)
#[test]
fn rotated_service_account_token_is_picked_up() {
    let c = cluster(Mode::Thin, "k-tok", "kbrd", "10.122.0.0/24");
    c.api.create_pod("default", "t", json!({}));
    let token = c.env.path().join("token");
    let kc = c.env.path().join("kubeconfig-tokenfile");
    std::fs::write(&kc, json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "f", "cluster": {"server": format!("http://127.0.0.1:{}", c.api.port)}}],
        "users": [{"name": "u", "user": {"tokenFile": token}}],
        "contexts": [{"name": "f", "context": {"cluster": "f", "user": "u"}}], "current-context": "f"}).to_string()).unwrap();
    let mut conf = c.conf.clone();
    conf["kubeconfig"] = json!(kc);
    let set_token = |t: &str| c.api.set_token(t);
    set_token("first-token");
    std::fs::write(&token, "first-token").unwrap();
    c.env
        .cni_pod("ADD", "k-tok", "default", "t", None, &conf)
        .ok();
    c.env
        .cni_pod("DEL", "k-tok", "default", "t", None, &conf)
        .ok();
    // The API server now wants the rotated token; the old one is refused.
    set_token("rotated-token");
    c.env
        .cni_pod("ADD", "k-tok", "default", "t", None, &conf)
        .err(110);
    std::fs::write(&token, "rotated-token").unwrap();
    c.env
        .cni_pod("ADD", "k-tok", "default", "t", None, &conf)
        .ok();
    c.env
        .cni_pod("DEL", "k-tok", "default", "t", None, &conf)
        .ok();
    c.env.assert_clean(&["kbrd"]);
}

fn cni_args_reach_every_plugin_and_capabilities_are_checked(mode: Mode) {
    let c = cluster(mode, "k-args", "kbre", "10.123.0.0/24");
    let rec = c.env.record_file();
    c.api.create_nad("default", "chain", &json!({"cniVersion": "1.0.0", "name": "chain", "plugins": [
        {"type": "test-record", "record": rec, "capabilities": {"ips": true}, "args": {"cni": {"fromNad": "x", "over": "nad"}}},
        {"type": "test-record", "record": rec}]}));
    let ann = json!([{"name": "chain", "ips": ["10.124.0.9/24"], "cni-args": {"over": "pod", "extra": 1}}]);
    c.api
        .create_pod("default", "a", json!({NETS: ann.to_string()}));
    c.env
        .cni_pod("ADD", "k-args", "default", "a", None, &c.conf)
        .ok();
    let recs: Vec<Value> = c
        .env
        .records()
        .into_iter()
        .filter(|r| r["command"] == "ADD")
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        recs[0]["config"]["args"]["cni"],
        json!({"fromNad": "x", "over": "pod", "extra": 1}),
        "annotation wins over the NAD"
    );
    assert_eq!(
        recs[1]["config"]["args"]["cni"],
        json!({"over": "pod", "extra": 1})
    );
    assert_eq!(
        recs[0]["config"]["runtimeConfig"],
        json!({"ips": ["10.124.0.9/24"]})
    );
    assert!(
        recs[1]["config"].get("runtimeConfig").is_none(),
        "only the plugin that declares ips gets them"
    );
    assert_eq!(recs[0]["ifname"], "net1");
    assert!(recs[0]["args"].as_str().unwrap().contains("K8S_POD_NAME=a"));
    c.env
        .cni_pod("DEL", "k-args", "default", "a", None, &c.conf)
        .ok();
    // A MAC request nobody in the network can honour fails the pod (NPWG §4.1.2.1.4).
    c.api.create_pod(
        "default",
        "b",
        json!({NETS: json!([{"name": "chain", "mac": "02:00:00:00:00:09"}]).to_string()}),
    );
    let msg = c
        .env
        .cni_pod("ADD", "k-args2", "default", "b", None, &c.conf)
        .err(2);
    assert!(msg.contains("\"mac\"") && msg.contains("chain"), "{msg}");
    c.env.assert_clean(&["kbre"]);
}

#[derive(Clone, Copy, PartialEq)]
enum Devices {
    Checkpoint,
    PodResourcesGet,
    PodResourcesList,
}

/// Two veths play the VFs the kubelet allocated to the pod; an SR-IOV stand-in moves the one named
/// by the device ID into the pod, and back on DEL.
fn sriov_scenario(mode: Mode, tag: &str, subnet: &str, source: Devices) {
    let bridge = format!("kbv{}", source as u8);
    let mut c = cluster(mode, tag, &bridge, subnet);
    c.env.node_veth("vfa0", "vfa1");
    c.env.node_veth("vfb0", "vfb1");
    let pod = c
        .api
        .create_pod("default", "vf", json!({NETS: "vf-net, vf-net@vf2"}));
    c.api
        .create_pod("default", "vf3", json!({NETS: "vf-net,vf-net,vf-net"}));
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let _kubelet;
    let checkpoint = c.env.path().join("kubelet_internal_checkpoint");
    let socket = c.env.path().join("kubelet.sock");
    c.conf["deviceCheckpointFile"] = json!(checkpoint);
    c.conf["podResourcesSocket"] = json!(socket);
    // Device plugins' device-info (NPWG): what network-status shows unless the CNI writes its own.
    let devinfo = c.env.path().join("devinfo");
    std::fs::create_dir_all(devinfo.join("dp")).unwrap();
    for vf in ["vfa0", "vfb0"] {
        let info =
            json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": format!("dp-{vf}")}});
        std::fs::write(
            devinfo.join(format!("dp/intel.com-sriov_vf-{vf}-device.json")),
            info.to_string(),
        )
        .unwrap();
    }
    c.conf["deviceInfoDir"] = json!(devinfo);
    // With the PodResources sources the CNI is asked for its own device-info file.
    let cni_writes = source != Devices::Checkpoint;
    if source == Devices::Checkpoint {
        std::fs::write(&checkpoint, json!({"Data": {"PodDeviceEntries": [
            {"PodUID": uid, "ContainerName": "c", "ResourceName": "intel.com/sriov_vf", "DeviceIDs": {"0": ["vfa0", "vfb0"]}, "AllocResp": ""},
            {"PodUID": "someone-else", "ContainerName": "c", "ResourceName": "intel.com/sriov_vf", "DeviceIDs": {"0": ["vfz0"]}, "AllocResp": ""}
        ], "RegisteredDevices": {"intel.com/sriov_vf": ["vfa0", "vfb0", "vfz0"]}}, "Checksum": 1}).to_string()).unwrap();
    } else {
        let vf = |ids: Vec<&str>| json!([{"name": "c", "devices": [{"resourceName": "intel.com/sriov_vf", "deviceIds": ids}]}]);
        let pods = json!([
            {"name": "vf", "namespace": "default", "containers": vf(vec!["vfa0", "vfb0"])},
            {"name": "vf3", "namespace": "default", "containers": vf(vec!["vfa0", "vfb0"])},
            {"name": "other", "namespace": "default", "containers": vf(vec!["vfz0"])}
        ]);
        let file = c.env.path().join("pods.json");
        std::fs::write(&file, pods.to_string()).unwrap();
        let mut cmd =
            std::process::Command::new(common::target_dir().join("plexus-fixture-kubelet"));
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--pods")
            .arg(&file)
            .stdout(std::process::Stdio::piped());
        if source == Devices::PodResourcesList {
            cmd.arg("--no-get");
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        _kubelet = common::Daemon(child);
    }
    c.api.create_nad_annotated(
        "default",
        "vf-net",
        &json!({"cniVersion": "1.0.0", "name": "vf-net", "type": "test-sriov",
                "capabilities": {"deviceID": true, "CNIDeviceInfoFile": cni_writes}}),
        json!({"k8s.v1.cni.cncf.io/resourceName": "intel.com/sriov_vf"}),
    );
    c.env
        .cni_pod("ADD", tag, "default", "vf", None, &c.conf)
        .ok();
    let mut links = c.env.pod_links();
    links.sort();
    assert_eq!(links, ["eth0", "lo", "net1", "vf2"]);
    // net1 is the first allocated VF, vf2 the second: the node-side peer's link_index is the pod
    // link's ifindex.
    let peer_index = |peer: &str| -> Value {
        serde_json::from_str::<Value>(&c.env.node(&["ip", "-j", "link", "show", "dev", peer]))
            .unwrap()[0]["link_index"]
            .clone()
    };
    assert_eq!(peer_index("vfa1"), c.env.pod_link("net1")["ifindex"]);
    assert_eq!(peer_index("vfb1"), c.env.pod_link("vf2")["ifindex"]);
    let node = c.env.node_links();
    assert!(
        !node.contains(&"vfa0".to_string()) && !node.contains(&"vfb0".to_string()),
        "{node:?}"
    );
    let status = c.api.network_status("default", "vf");
    assert_eq!(status_of(&status, "net1")["name"], "default/vf-net");
    let want = |vf: &str| {
        let src = if cni_writes { "cni" } else { "dp" };
        json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": format!("{src}-{vf}")}})
    };
    assert_eq!(status_of(&status, "net1")["device-info"], want("vfa0"));
    assert_eq!(status_of(&status, "vf2")["device-info"], want("vfb0"));
    let cni_files = || {
        std::fs::read_dir(devinfo.join("cni"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(cni_files(), if cni_writes { 2 } else { 0 });
    c.env
        .cni_pod("DEL", tag, "default", "vf", None, &c.conf)
        .ok();
    let node = c.env.node_links();
    assert!(
        node.contains(&"vfa0".to_string()) && node.contains(&"vfb0".to_string()),
        "VFs returned: {node:?}"
    );
    assert_eq!(cni_files(), 0, "DEL removes the CNI's device-info files");
    c.env
        .assert_clean(&[&bridge, "vfa0", "vfa1", "vfb0", "vfb1"]);
    // More VF networks than the kubelet allocated: refused before anything is attached.
    let msg = c
        .env
        .cni_pod("ADD", &format!("{tag}-3"), "default", "vf3", None, &c.conf)
        .err(7);
    assert!(msg.contains("no free intel.com/sriov_vf device"), "{msg}");
    c.env
        .assert_clean(&[&bridge, "vfa0", "vfa1", "vfb0", "vfb1"]);
}

fn sriov_vfs_from_the_kubelet_checkpoint(mode: Mode) {
    sriov_scenario(mode, "k-vfc", "10.126.0.0/24", Devices::Checkpoint);
}

fn sriov_vfs_from_pod_resources_get(mode: Mode) {
    sriov_scenario(mode, "k-vfg", "10.127.0.0/24", Devices::PodResourcesGet);
}

fn sriov_vfs_from_pod_resources_list_when_get_is_unimplemented(mode: Mode) {
    sriov_scenario(mode, "k-vfl", "10.128.0.0/24", Devices::PodResourcesList);
}

/// SR-IOV through DRA: the VFs (veths) are devices of a DRA driver's ResourceSlice on this node,
/// carrying the Multus attributes; the pods' claims allocate them. Pod `a` mixes a device-plugin
/// network (its VF from the kubelet checkpoint) and a DRA one, and has a GPU claim beside (not a
/// network device, passed over); pod `b` names its claim's request. Each pod gets its own VF,
/// the claim's status carries the interface's network data after ADD and not after DEL, and
/// network-status carries the driver's device-info.
fn dra_scenario(mode: Mode, tag: &str, subnet: &str, version: &str) {
    use common::dra;
    let bridge = format!("kbd{}", &tag[tag.len() - 1..]);
    let mut c = cluster_serving(mode, tag, &bridge, subnet, Some(version));
    let (vfa, vfb, vfp) = (format!("{tag}a0"), format!("{tag}b0"), format!("{tag}p0"));
    c.env.node_veth(&vfa, &format!("{tag}a1"));
    c.env.node_veth(&vfb, &format!("{tag}b1"));
    c.env.node_veth(&vfp, &format!("{tag}p1"));
    let driver = "sriov.dra.example.com";
    c.api.create_one(dra::slice(
        version,
        "node-1-vfs",
        driver,
        "node-1",
        &[
            ("vf-a", Some(("example.com/dra_vf", &vfa))),
            ("vf-b", Some(("example.com/dra_vf", &vfb))),
        ],
    ));
    c.api.create_one(dra::slice(
        version,
        "node-1-gpus",
        "gpu.example.com",
        "node-1",
        &[("gpu-0", None)],
    ));
    // Another node's slice of the same driver: never read for this node's pods.
    c.api.create_one(dra::slice(
        version,
        "node-2-vfs",
        driver,
        "node-2",
        &[("vf-a", Some(("example.com/dra_vf", "elsewhere")))],
    ));
    // A claim allocated on another node: the daemon does not keep it.
    c.api.create_one(dra::claim(
        version,
        "default",
        "z-net",
        &[("z", "uid-z")],
        &[("vf", driver, "node-2", "vf-a")],
    ));
    c.api.create_one(dra::claim(
        version,
        "default",
        "a-net",
        &[("a", "uid-a")],
        &[("vf", driver, "node-1", "vf-a")],
    ));
    c.api.create_one(dra::claim(
        version,
        "default",
        "a-gpu",
        &[("a", "uid-a")],
        &[("gpu", "gpu.example.com", "node-1", "gpu-0")],
    ));
    c.api.create_one(dra::claim(
        version,
        "default",
        "b-net",
        &[("b", "uid-b")],
        &[("vf", driver, "node-1", "vf-b")],
    ));
    c.api.create_one(dra::claim(
        version,
        "default",
        "d-net",
        &[("d", "uid-d")],
        &[],
    ));
    c.api.create_one(dra::pod(
        "default",
        "a",
        "uid-a",
        "node-1",
        json!({NETS: "dp-net, dra-net"}),
        &[("gpu", "a-gpu"), ("net", "a-net")],
    ));
    c.api.create_one(dra::pod("default", "b", "uid-b", "node-1",
        json!({NETS: json!([{"name": "dra-net", "plexus.io/deviceRequest": "net/vf"}]).to_string()}), &[("net", "b-net")]));
    // Asks for another pod's claim: not among its own.
    c.api.create_one(dra::pod("default", "b2", "uid-b2", "node-1",
        json!({NETS: json!([{"name": "dra-net", "plexus.io/deviceRequest": "a-net/vf"}]).to_string()}), &[("net", "b-net")]));
    // Its claim is not allocated yet.
    c.api.create_one(dra::pod(
        "default",
        "d",
        "uid-d",
        "node-1",
        json!({NETS: "dra-net"}),
        &[("net", "d-net")],
    ));
    let checkpoint = c.env.path().join("kubelet_internal_checkpoint");
    std::fs::write(&checkpoint, json!({"Data": {"PodDeviceEntries": [
        {"PodUID": "uid-a", "ContainerName": "c", "ResourceName": "intel.com/sriov_vf", "DeviceIDs": {"0": [vfp]}, "AllocResp": ""}
    ]}, "Checksum": 1}).to_string()).unwrap();
    c.conf["deviceCheckpointFile"] = json!(checkpoint);
    c.conf["podResourcesSocket"] = json!(c.env.path().join("no-kubelet.sock"));
    // The DRA driver in Multus mode writes device-info where device plugins do.
    let devinfo = c.env.path().join("devinfo");
    std::fs::create_dir_all(devinfo.join("dp")).unwrap();
    std::fs::write(
        devinfo.join(format!("dp/example.com-dra_vf-{vfa}-device.json")),
        json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:5e:00.2"}})
            .to_string(),
    )
    .unwrap();
    c.conf["deviceInfoDir"] = json!(devinfo);
    let ipam =
        |n: u8| json!({"type": "static", "addresses": [{"address": format!("10.131.{n}.5/24")}]});
    c.api.create_nad_annotated(
        "default",
        "dp-net",
        &json!({"cniVersion": "1.0.0", "name": "dp-net", "type": "test-sriov", "ipam": ipam(1)}),
        json!({"k8s.v1.cni.cncf.io/resourceName": "intel.com/sriov_vf"}),
    );
    c.api.create_nad_annotated(
        "default",
        "dra-net",
        &json!({"cniVersion": "1.0.0", "name": "dra-net", "type": "test-sriov", "ipam": ipam(2)}),
        json!({"k8s.v1.cni.cncf.io/resourceName": "example.com/dra_vf"}),
    );

    if let Some(d) = &c._daemon {
        // The daemon's watch cache holds this node's two slices and the three claims allocated
        // here (not node-2's, not the unallocated one).
        let t = Instant::now();
        while metric(
            &d.metrics(),
            r#"plexus_watch_cache_objects{kind="resourceslices"}"#,
        ) < 2.0
            || metric(
                &d.metrics(),
                r#"plexus_watch_cache_objects{kind="resourceclaims"}"#,
            ) < 3.0
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the DRA watches never delivered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            metric(
                &d.metrics(),
                r#"plexus_watch_cache_objects{kind="resourceclaims"}"#
            ),
            3.0
        );
    }
    c.api.clear_requests();
    c.env
        .cni_pod("ADD", &format!("{tag}-a"), "default", "a", None, &c.conf)
        .ok();
    let used = c.api.rbac_requests();
    let dra = |res: &str, verb: &str| {
        used.iter()
            .filter(|(g, r, v)| g == "resource.k8s.io" && r == res && v == verb)
            .count()
    };
    match c.mode {
        // Plugin: both claims and the two drivers' slices are read; a-net's status written.
        Mode::Thin => assert_eq!(
            (dra("resourceclaims", "get"), dra("resourceslices", "list")),
            (3, 2),
            "{used:?}"
        ),
        // Daemon: claims and slices come from the watch cache; only the status write reads.
        Mode::Daemon => assert_eq!(
            (dra("resourceclaims", "get"), dra("resourceslices", "list")),
            (1, 0),
            "{used:?}"
        ),
    }
    assert_eq!(dra("resourceclaims/status", "update"), 1, "{used:?}");
    let mut links = c.env.pod_links();
    links.sort();
    assert_eq!(links, ["eth0", "lo", "net1", "net2"]);
    let peer_index = |peer: &str| -> Value {
        serde_json::from_str::<Value>(&c.env.node(&["ip", "-j", "link", "show", "dev", peer]))
            .unwrap()[0]["link_index"]
            .clone()
    };
    // net1: the kubelet's VF; net2: the claim's.
    assert_eq!(
        peer_index(&format!("{tag}p1")),
        c.env.pod_link("net1")["ifindex"]
    );
    assert_eq!(
        peer_index(&format!("{tag}a1")),
        c.env.pod_link("net2")["ifindex"]
    );
    let claim = c.api.claim("default", "a-net", version);
    let devices = claim["status"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{claim}");
    let d = &devices[0];
    assert_eq!(
        (
            d["driver"].as_str(),
            d["pool"].as_str(),
            d["device"].as_str()
        ),
        (Some(driver), Some("node-1"), Some("vf-a"))
    );
    let mac = c.env.pod_link("net2")["address"].clone();
    assert_eq!(
        d["networkData"],
        json!({"interfaceName": "net2", "ips": ["10.131.2.5/24"], "hardwareAddress": mac})
    );
    assert_eq!(d["conditions"][0]["type"], "Ready");
    assert!(
        c.api.claim("default", "a-gpu", version)["status"]["devices"].is_null(),
        "the GPU's claim is not touched"
    );
    let status = c.api.network_status("default", "a");
    assert_eq!(status_of(&status, "net2")["name"], "default/dra-net");
    assert_eq!(
        status_of(&status, "net2")["device-info"]["pci"]["pci-address"],
        "0000:5e:00.2"
    );

    // Pod b's network names its claim's request: its own VF, never a's.
    let b = c.env.extra_pod("b");
    c.env
        .cni_pod_at(&b, "ADD", &format!("{tag}-b"), "default", "b", &c.conf)
        .ok();
    assert_eq!(peer_index(&format!("{tag}b1")), b.link("net1")["ifindex"]);
    let claim_b = c.api.claim("default", "b-net", version);
    assert_eq!(
        claim_b["status"]["devices"][0]["networkData"]["interfaceName"],
        "net1"
    );

    // Another pod's claim, and a claim not allocated yet: refused, naming pod and claim; nothing
    // attached.
    let msg = c
        .env
        .cni_pod_at(&b, "ADD", &format!("{tag}-b2"), "default", "b2", &c.conf)
        .err(7);
    assert!(
        msg.contains("a-net/vf") && msg.contains("no such claim request"),
        "{msg}"
    );
    c.env
        .cni_pod_at(&b, "DEL", &format!("{tag}-b2"), "default", "b2", &c.conf)
        .ok();
    let msg = c
        .env
        .cni_pod_at(&b, "ADD", &format!("{tag}-d"), "default", "d", &c.conf)
        .err(11);
    assert!(
        msg.contains("default/d") && msg.contains("default/d-net") && msg.contains("not allocated"),
        "{msg}"
    );
    c.env
        .cni_pod_at(&b, "DEL", &format!("{tag}-d"), "default", "d", &c.conf)
        .ok();

    c.env
        .cni_pod_at(&b, "DEL", &format!("{tag}-b"), "default", "b", &c.conf)
        .ok();
    c.env
        .cni_pod("DEL", &format!("{tag}-a"), "default", "a", None, &c.conf)
        .ok();
    for name in ["a-net", "b-net"] {
        let cl = c.api.claim("default", name, version);
        assert_eq!(
            cl["status"]["devices"],
            json!([]),
            "DEL takes plexus's entry out: {cl}"
        );
    }
    let node = c.env.node_links();
    for vf in [&vfa, &vfb, &vfp] {
        assert!(node.contains(vf), "{vf} back on the node: {node:?}");
    }
    drop(b);
    c.env.assert_clean(&[
        &bridge,
        &vfa,
        &format!("{tag}a1"),
        &vfb,
        &format!("{tag}b1"),
        &vfp,
        &format!("{tag}p1"),
    ]);
}

fn sriov_vfs_from_dra_claims(mode: Mode) {
    dra_scenario(mode, "k-dr1", "10.132.0.0/24", "v1");
}

/// An API server offering only v1beta1 (devices' attributes under `basic`).
#[test]
fn sriov_vfs_from_dra_claims_of_a_v1beta1_api_server() {
    dra_scenario(Mode::Thin, "k-dr2", "10.133.0.0/24", "v1beta1");
}

/// The privilege escalation the code review found: a NAD whose type is plexus (or Multus), with
/// a `binDir` of the NAD author's choosing, would run any binary there as root. Refused before
/// anything runs, at any position of the network, and the error names the NAD.
fn a_nad_cannot_run_plexus_inside_plexus(mode: Mode) {
    let c = cluster(mode, "k-self", "kbrs", "10.126.0.0/24");
    let evil = c.env.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    let marker = c.env.path().join("pwned");
    for name in ["bridge", "macvlan", "test-record"] {
        let p = evil.join(name);
        std::fs::write(&p, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let inner = |t: &str| {
        json!({"cniVersion": "1.0.0", "name": "inner", "type": t, "binDir": evil,
               "delegates": [{"cniVersion": "1.0.0", "name": "x", "type": "bridge"}]})
    };
    c.api.create_nad("default", "self1", &inner("plexus"));
    c.api.create_nad("default", "self2", &inner("multus"));
    c.api.create_nad(
        "default",
        "self3",
        &json!({"cniVersion": "1.0.0", "name": "chained", "plugins": [
            {"type": "test-record"}, {"type": "multus-shim", "binDir": evil}]}),
    );
    for (i, nad) in ["self1", "self2", "self3"].iter().enumerate() {
        let pod = format!("p{i}");
        c.api.create_pod("default", &pod, json!({NETS: nad}));
        let msg = c
            .env
            .cni_pod("ADD", &format!("k-self{i}"), "default", &pod, None, &c.conf)
            .err(7);
        assert!(
            msg.contains(&format!("default/{nad}")) && msg.contains("itself"),
            "{msg}"
        );
        c.env
            .cni_pod("DEL", &format!("k-self{i}"), "default", &pod, None, &c.conf)
            .ok();
    }
    assert!(!marker.exists(), "a binary from the NAD's binDir ran");
    c.env.assert_clean(&["kbrs"]);
    assert!(c.env.reservations("cluster").is_empty());
}

both!(
    pod_without_annotation_gets_the_cluster_network_and_a_status,
    networks_by_name_and_namespace_at_interface,
    json_selection_with_interface_static_ips_and_mac,
    missing_nad_fails_cleanly_with_an_event,
    nad_without_config_comes_from_conf_dir_and_conflist_with_bandwidth,
    default_route_moves_to_the_requested_network,
    namespace_isolation_on_and_off,
    uid_mismatch_is_refused_except_for_static_pods,
    api_down_fails_add_cleanly_and_del_still_works,
    a_failed_status_write_rolls_everything_back_and_late_pods_are_waited_for,
    no_pod_identity_means_cluster_network_only,
    oversized_selection_fails_fast_without_an_api_storm,
    requested_interface_already_in_the_pod_is_refused,
    cni_args_reach_every_plugin_and_capabilities_are_checked,
    a_nad_cannot_run_plexus_inside_plexus,
    sriov_vfs_from_the_kubelet_checkpoint,
    sriov_vfs_from_pod_resources_get,
    sriov_vfs_from_pod_resources_list_when_get_is_unimplemented,
    sriov_vfs_from_dra_claims,
);
