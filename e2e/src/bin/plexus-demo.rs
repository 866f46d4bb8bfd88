//! `scripts/demo`: plexus doing its real job on this machine, no cluster needed.
//!
//! A pod asks for two extra networks by annotation; plexus, run as the runtime runs it (ADD with
//! the pod's `K8S_*` CNI_ARGS), reads the pod and its NetworkAttachmentDefinitions from an API
//! server, attaches the cluster network and both NADs with the real reference plugins, and writes
//! `k8s.v1.cni.cncf.io/network-status` back. The API server is plexus's e2e **fixture** (real
//! Kubernetes REST paths and JSON, objects in memory), not a kube-apiserver. Everything happens in
//! two private network namespaces ("node" and "pod") and a temporary directory: the host is not
//! touched. `--daemon` does the same through `plexus daemon` and the shim.

use plexus_e2e::daemon::NodeDaemon;
use plexus_e2e::{sh, Fixture, TestEnv};
use serde_json::json;
use std::time::Instant;

const NS: &str = "demo";
const POD: &str = "web";
const ID: &str = "demo-sandbox-0001";
const NODE_LINKS: &[&str] = &["demobr0", "demobr1", "demo-m0", "demo-m1"];

fn title(t: &str) {
    println!("\n\x1b[1m== {t}\x1b[0m");
}

fn indent(text: &str) {
    for l in text.lines() {
        println!("   {l}");
    }
}

fn main() {
    let daemon = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--daemon") => true,
        Some("-h" | "--help") => {
            println!("usage: scripts/demo [--daemon]");
            return;
        }
        Some(other) => {
            eprintln!("scripts/demo: unknown argument {other:?} (usage: scripts/demo [--daemon])");
            std::process::exit(2);
        }
    };
    // Every namespace, process and file the demo made goes when `demo` returns.
    std::process::exit(demo(daemon));
}

fn demo(daemon: bool) -> i32 {
    let t0 = Instant::now();
    let env = TestEnv::new("demo");
    title("setup (private namespaces; the host is not touched)");
    println!(
        "   node netns {}, pod netns {}, state in {}",
        env.node,
        env.pod,
        env.path().display()
    );
    // The daemon talks to its API as a pod would (HTTPS, service-account token); thin mode reads a
    // kubeconfig. Either way the server is the fixture.
    let api = if daemon {
        Fixture::start_tls(&env, "demo-sa-token")
    } else {
        Fixture::start(&env)
    };
    println!(
        "   API server: {} — plexus's e2e FIXTURE (real REST paths and JSON, in memory), NOT a kube-apiserver",
        api.url
    );

    // Two NADs: a macvlan on a veth master, and a bridge; both with host-local.
    env.node_veth("demo-m0", "demo-m1");
    let macvlan = json!({"cniVersion": "1.0.0", "name": "macvlan-net", "type": "macvlan",
        "master": "demo-m0", "mode": "bridge", "ipam": env.host_local("macvlan-net", "192.168.50.0/24")});
    let bridge = json!({"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge",
        "bridge": "demobr1", "ipam": env.host_local("bridge-net", "192.168.60.0/24")});
    api.create_nad(NS, "macvlan-net", &macvlan);
    api.create_nad(NS, "bridge-net", &bridge);
    let annotation = "macvlan-net,bridge-net@data0";
    let pod = api.create_pod(NS, POD, json!({"k8s.v1.cni.cncf.io/networks": annotation}));
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    title("the API holds");
    println!("   NetworkAttachmentDefinition {NS}/macvlan-net: {macvlan}");
    println!("   NetworkAttachmentDefinition {NS}/bridge-net:  {bridge}");
    println!("   Pod {NS}/{POD} (uid {uid}) annotated k8s.v1.cni.cncf.io/networks: {annotation:?}");

    // The runtime's config: plexus with a bridge cluster network.
    let mut ipam = env.host_local("cluster", "10.244.0.0/24");
    ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let cluster = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
        {"type": "bridge", "bridge": "demobr0", "isGateway": true, "ipMasq": false, "ipam": ipam}]});
    let mut conf = env.plexus_conf("1.1.0", vec![cluster]);
    let log_file = env.path().join("plexus.log");
    let mut node_daemon = None;
    if daemon {
        let d = NodeDaemon::start(&env, &api, json!({"logLevel": "debug"}));
        println!(
            "   plexus daemon running (pid {}), socket {}",
            d.pid(),
            d.socket().display()
        );
        conf["daemonSocketDir"] = json!(d.socket_dir);
        node_daemon = Some(d);
    } else {
        conf["kubeconfig"] = json!(api.kubeconfig);
    }
    conf["logFile"] = json!(log_file);
    conf["logLevel"] = json!("debug");
    conf["logToStderr"] = json!(false);
    title(if daemon {
        "the runtime's config (/etc/cni/net.d): the shim, which hands each call to the daemon"
    } else {
        "the runtime's config (/etc/cni/net.d)"
    });
    indent(&serde_json::to_string_pretty(&conf).unwrap());

    title(&format!(
        "ADD, as the runtime calls it: CNI_CONTAINERID={ID} CNI_IFNAME=eth0 CNI_ARGS=K8S_POD_NAMESPACE={NS};K8S_POD_NAME={POD};K8S_POD_UID=…"
    ));
    let log_before = node_daemon.as_ref().map_or(0, |d| d.log().len());
    let t = Instant::now();
    let out = env.cni_pod("ADD", ID, NS, POD, Some(&uid), &conf);
    let add_ms = t.elapsed().as_secs_f64() * 1e3;
    if out.code != 0 {
        eprintln!("ADD failed: {}\n{}", out.stdout, out.stderr);
        return 1;
    }
    let result = out.json();
    println!(
        "   took {add_ms:.1} ms; the CNI result on stdout (the cluster network's, spec 1.1.0):"
    );
    indent(&serde_json::to_string_pretty(&result).unwrap());

    title("the pod's interfaces");
    indent(&sh(&["ip", "-n", &env.pod, "-br", "addr"]));
    title("the pod's routes");
    indent(&sh(&["ip", "-n", &env.pod, "route"]));

    title("k8s.v1.cni.cncf.io/network-status, read back from the API");
    let status = api.network_status(NS, POD);
    indent(&serde_json::to_string_pretty(&status).unwrap());

    title(if daemon {
        "what the daemon logged while serving the ADD"
    } else {
        "what plexus logged (logFile)"
    });
    // The daemon's log from the ADD on; the plugin's log file is this pod's alone.
    let log = match &node_daemon {
        Some(d) => d.log().get(log_before..).unwrap_or_default().to_string(),
        None => std::fs::read_to_string(&log_file).unwrap_or_default(),
    };
    let ours: Vec<&str> = log
        .lines()
        // kube-rs's own HTTP tracing, at debug, says nothing plexus does not.
        .filter(|l| !l.contains("HTTP{") && !l.contains("service.ready"))
        .collect();
    for l in ours.iter().rev().take(25).rev() {
        println!("   {l}");
    }

    title("CHECK");
    let check = env.cni_pod("CHECK", ID, NS, POD, Some(&uid), &conf);
    println!("   exit {} {}", check.code, check.stdout.trim());

    title("DEL");
    let del = env.cni_pod("DEL", ID, NS, POD, Some(&uid), &conf);
    println!("   exit {} {}", del.code, del.stdout.trim());
    title("left behind");
    let links = env.pod_links();
    let reserved: Vec<String> = ["cluster", "macvlan-net", "bridge-net"]
        .iter()
        .flat_map(|n| env.reservations(n))
        .collect();
    let cache = env.cache_files();
    let mut node_links = env.node_links();
    node_links.retain(|l| l != "lo" && !NODE_LINKS.contains(&l.as_str()));
    println!("   pod links: {links:?}");
    println!("   node links beyond the demo's bridges and veth: {node_links:?}");
    println!("   host-local reservations: {reserved:?}");
    println!("   plexus cache records: {cache:?}");
    let clean = links == ["lo"] && node_links.is_empty() && reserved.is_empty() && cache.is_empty();
    drop(node_daemon);
    drop(api);
    drop(env);
    println!(
        "\n{} in {:.1} s; namespaces and files removed",
        if clean {
            "demo: nothing left"
        } else {
            "demo: FAILED, something was left"
        },
        t0.elapsed().as_secs_f64()
    );
    i32::from(!clean || check.code != 0 || del.code != 0)
}
