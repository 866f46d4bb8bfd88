//! Every recipe in delegates/ applied through plexus (fixture API server, real plugins or the
//! stand-ins of `plexus-standin`, real namespaces), checked against its expect.json, and DELeted
//! without a trace. A recipe is either a NAD (`nad.yaml`, attached as `net1`) or a cluster
//! network (`cluster.conflist`, attached as `eth0`).

use plexus_e2e::{sh, target_dir, Daemon, Fixture, TestEnv};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Point a recipe at this test's node: data NICs become veths; host-local, flannel and the dhcp
/// daemon keep their files in the test's directory.
fn localize(config: &str, env: &TestEnv) -> Value {
    let mut v: Value = serde_json::from_str(
        &config
            .replace("\"eth1\"", "\"rcm0\"")
            .replace("\"eth2\"", "\"rcd0\""),
    )
    .unwrap();
    let name = v["name"].as_str().unwrap().to_string();
    let dir = env.path().to_path_buf();
    let mut fix = |p: &mut Value| {
        if p["ipam"]["type"] == "host-local" {
            p["ipam"]["dataDir"] = json!(env.ipam_dir(&name));
        }
        if p["ipam"]["type"] == "dhcp" {
            p["ipam"]["daemonSocketPath"] = json!(dir.join("dhcp.sock"));
        }
        if p["type"] == "flannel" {
            p["subnetFile"] = json!(dir.join("subnet.env"));
            p["dataDir"] = json!(dir.join("flannel"));
            p["ipam"] = json!({"dataDir": env.ipam_dir(&name)});
        }
    };
    match v.get_mut("plugins").and_then(Value::as_array_mut) {
        Some(ps) => ps.iter_mut().for_each(&mut fix),
        None => fix(&mut v),
    }
    v
}

/// busybox udhcpd on the master's veth peer and the dhcp plugin's daemon, both in the node netns,
/// killed when the recipe ends however it ends.
fn start_dhcp(env: &TestEnv, spec: &Value, daemons: &mut Vec<Daemon>) {
    let server = spec["server"].as_str().unwrap();
    env.node(&["ip", "addr", "add", server, "dev", "rcm1"]);
    let conf = env.path().join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "start {}\nend {}\ninterface rcm1\nlease_file {}\noption subnet 255.255.255.0\noption lease 600\n",
            spec["start"].as_str().unwrap(),
            spec["end"].as_str().unwrap(),
            env.path().join("udhcpd.leases").display()
        ),
    )
    .unwrap();
    std::fs::write(env.path().join("udhcpd.leases"), "").unwrap();
    let spawn = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &env.node])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Daemon)
            .unwrap()
    };
    // -a: udhcpd ARP-pings each address before offering it and waits 2 s per ping for an
    // answer that, on this private segment, never comes.
    daemons.push(spawn(&[
        "busybox",
        "udhcpd",
        "-f",
        "-a",
        "100",
        conf.to_str().unwrap(),
    ]));
    let socket = env.path().join("dhcp.sock");
    let dhcp = env.plugins.join("dhcp");
    daemons.push(spawn(&[
        dhcp.to_str().unwrap(),
        "daemon",
        "-socketpath",
        socket.to_str().unwrap(),
    ]));
    let until = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < until, "dhcp daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files the stand-ins keep (their datastore stand-in); empty when every address is released.
fn standin_state(env: &TestEnv) -> Vec<String> {
    let mut left = vec![];
    for pool in std::fs::read_dir(env.path().join("standin"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(pool.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(f.path().display().to_string());
        }
    }
    left
}

fn run(recipe: &Path) {
    let kind = recipe.file_name().unwrap().to_string_lossy().to_string();
    let expect: Value =
        serde_json::from_str(&std::fs::read_to_string(recipe.join("expect.json")).unwrap())
            .unwrap();
    let env = TestEnv::new(&format!("r-{kind}"));
    let api = Fixture::start(&env);
    env.node_veth("rcm0", "rcm1");
    env.node_veth("rcd0", "rcd1");
    let mut daemons: Vec<Daemon> = vec![];
    if let Some(spec) = expect.get("dhcp") {
        start_dhcp(&env, spec, &mut daemons);
    }
    if let Some(s) = expect["subnetEnv"].as_str() {
        std::fs::write(env.path().join("subnet.env"), s).unwrap();
    }
    let cluster_file = recipe.join("cluster.conflist");
    let cluster = cluster_file.is_file();
    let mut conf;
    let (name, ifname, status_name);
    if cluster {
        // The recipe is the cluster network: its conflist in the conf dir, plexus pointed at it.
        let list = localize(&std::fs::read_to_string(&cluster_file).unwrap(), &env);
        let dir = env.path().join("conf");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("10-{kind}.conflist"));
        std::fs::write(&file, list.to_string()).unwrap();
        conf = env.plexus_conf("1.1.0", vec![]);
        conf.as_object_mut().unwrap().remove("delegates");
        conf["clusterNetwork"] = json!(file);
        name = list["name"].as_str().unwrap().to_string();
        ifname = "eth0";
        status_name = name.clone();
        api.create_pod("default", "r", json!({}));
    } else {
        let nad: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(recipe.join("nad.yaml")).unwrap())
                .unwrap();
        name = nad["metadata"]["name"].as_str().unwrap().to_string();
        api.create_nad_annotated(
            "default",
            &name,
            &localize(nad["spec"]["config"].as_str().unwrap(), &env),
            nad["metadata"]
                .get("annotations")
                .cloned()
                .unwrap_or(json!({})),
        );
        let selection = expect
            .get("selection")
            .map(|s| s.to_string())
            .unwrap_or_else(|| name.clone());
        let pod = api.create_pod(
            "default",
            "r",
            json!({"k8s.v1.cni.cncf.io/networks": selection}),
        );
        let mut ipam = env.host_local("cluster", "10.129.0.0/24");
        ipam["routes"] = json!([]);
        conf = env.plexus_conf(
            "1.1.0",
            vec![json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
            {"type": "bridge", "bridge": "rbr0", "ipam": ipam}]})],
        );
        if let Some(devices) = expect["devices"].as_object() {
            // The kubelet's device-plugin checkpoint, allocating these devices to this pod (no
            // PodResources socket, so plexus falls back to it).
            let entries: Vec<Value> = devices
                .iter()
                .map(|(res, ids)| {
                    json!({"PodUID": pod["metadata"]["uid"], "ContainerName": "c",
                    "ResourceName": res, "DeviceIDs": {"0": ids}, "AllocResp": ""})
                })
                .collect();
            let checkpoint = env.path().join("kubelet_internal_checkpoint");
            std::fs::write(
                &checkpoint,
                json!({"Data": {"PodDeviceEntries": entries, "RegisteredDevices": {}}, "Checksum": 1}).to_string(),
            )
            .unwrap();
            conf["deviceCheckpointFile"] = json!(checkpoint);
            conf["podResourcesSocket"] = json!(env.path().join("no-kubelet.sock"));
            conf["deviceInfoDir"] = json!(env.path().join("devinfo"));
        }
        ifname = "net1";
        status_name = format!("default/{name}");
    }
    conf["kubeconfig"] = json!(api.kubeconfig);

    let started = Instant::now();
    let result = env
        .cni_pod("ADD", "rec", "default", "r", None, &conf)
        .ok()
        .json();
    let add_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("{kind}: ADD printed {result}");
    let link = env.pod_link(ifname);
    if let Some(k) = expect["linkKind"].as_str() {
        assert_eq!(link["linkinfo"]["info_kind"], k, "{kind}");
    }
    let addrs = env.pod_addrs(ifname);
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
    if let Some(r) = expect["podRoute"].as_str() {
        let routes = env.pod_routes();
        assert!(
            routes.iter().any(|l| l.starts_with(r)),
            "{kind}: no route {r} in {routes:?}"
        );
    }
    if let Some(n) = expect["podNeigh"].as_str() {
        let neigh = sh(&["ip", "-n", &env.pod, "neigh", "show", n]);
        assert!(neigh.contains("PERMANENT"), "{kind}: {neigh}");
    }
    if let Some(c) = expect["podNat"].as_str() {
        let nat = sh(&[
            "ip",
            "netns",
            "exec",
            &env.pod,
            "iptables-save",
            "-t",
            "nat",
        ]);
        assert!(nat.contains(c), "{kind}: {nat}");
    }
    for l in expect["nodeLinks"].as_array().into_iter().flatten() {
        assert!(
            env.node_links().iter().any(|n| n == l.as_str().unwrap()),
            "{kind}: no {l} on the node"
        );
    }
    if let Some(p) = expect["nodeLinkPrefix"].as_str() {
        assert!(
            env.node_links().iter().any(|n| n.starts_with(p)),
            "{kind}: no {p}* link on the node: {:?}",
            env.node_links()
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
    if let Some(want) = expect["resultInterfaces"].as_array() {
        // The cluster network's own result, as plexus prints it: every interface kept, in order,
        // quirks included.
        // No `interfaces` at all is a result too (Weave's).
        let got: Vec<&str> = result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(got.len(), want.len(), "{kind}: {result}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w.as_str().unwrap()), "{kind}: {result}");
        }
        assert_eq!(result["cniVersion"], "1.1.0", "{kind}");
    }
    let status = api.network_status("default", "r");
    let entries: Vec<&Value> = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == status_name.as_str())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "{kind}: one entry for {status_name}: {status}"
    );
    let entry = entries[0].clone();
    if entry.get("mac").is_some() {
        assert_eq!(entry["mac"], link["address"], "{kind}: {entry}");
    }
    assert_eq!(entry["default"] == true, cluster, "{kind}: {entry}");
    let ips: Vec<&str> = entry["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(
        addrs
            .iter()
            .any(|a| ips.contains(&a.split('/').next().unwrap())),
        "{kind}: status ips {ips:?} vs {addrs:?}"
    );
    if entry.get("interface").is_some() {
        assert_eq!(entry["interface"], ifname, "{kind}: {entry}");
    }
    eprintln!("{kind}: network-status {entry}");
    if let Some(d) = expect["deviceInfo"].as_str() {
        assert_eq!(entry["device-info"]["pci"]["pci-address"], d, "{kind}");
    }
    if expect["noCheck"] != true {
        env.cni_pod("CHECK", "rec", "default", "r", None, &conf)
            .ok();
    }
    let started = Instant::now();
    env.cni_pod("DEL", "rec", "default", "r", None, &conf).ok();
    eprintln!(
        "{kind}: ADD {add_ms:.1} ms, DEL {:.1} ms (debug build, cluster network included)",
        started.elapsed().as_secs_f64() * 1e3
    );
    // Bridges the cluster network's agent owns on a real node outlive their pods.
    env.assert_clean(&[
        "rbr0", "br-data", "cni0", "weave", "azure0", "rcm0", "rcm1", "rcd0", "rcd1",
    ]);
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
        env.reservations(&name).is_empty(),
        "{kind}: IP reservation left"
    );
    assert!(
        standin_state(&env).is_empty(),
        "{kind}: stand-in allocation left: {:?}",
        standin_state(&env)
    );
    if expect.get("subnetEnv").is_some() {
        let saved = std::fs::read_dir(env.path().join("flannel"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(saved, 0, "{kind}: flannel's saved delegate config left");
    }
    drop(daemons);
}

#[test]
fn every_recipe_runs_and_cleans_up() {
    assert!(
        target_dir().join("plexus-standin").is_file(),
        "build the workspace first"
    );
    let all = recipes();
    assert!(all.len() >= 20, "recipes missing: {all:?}");
    let mut ran = vec![];
    for r in &all {
        let has_config = r.join("nad.yaml").is_file() || r.join("cluster.conflist").is_file();
        assert!(
            has_config && r.join("README.md").is_file(),
            "{}: needs nad.yaml or cluster.conflist, and README.md",
            r.display()
        );
        assert!(
            r.join("expect.json").is_file(),
            "{}: no expect.json, so the suite does not run it",
            r.display()
        );
        run(r);
        ran.push(r.file_name().unwrap().to_string_lossy().into_owned());
    }
    eprintln!("recipes run: {}", ran.join(", "));
}

/// The istio-cni recipe's conflist as plexus's cluster network, in a fresh node.
fn istio_cluster(tag: &str) -> (TestEnv, Fixture, Value) {
    let env = TestEnv::new(tag);
    let api = Fixture::start(&env);
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../delegates/istio-cni");
    let list = localize(
        &std::fs::read_to_string(recipe.join("cluster.conflist")).unwrap(),
        &env,
    );
    let file = env.path().join("10-istio.conflist");
    std::fs::write(&file, list.to_string()).unwrap();
    let mut conf = env.plexus_conf("1.1.0", vec![]);
    conf.as_object_mut().unwrap().remove("delegates");
    conf["clusterNetwork"] = json!(file);
    conf["kubeconfig"] = json!(api.kubeconfig);
    (env, api, conf)
}

fn pod_nat(env: &TestEnv) -> String {
    sh(&[
        "ip",
        "netns",
        "exec",
        &env.pod,
        "iptables-save",
        "-t",
        "nat",
    ])
}

#[test]
fn istio_cni_without_pod_identity_fails_and_rolls_back() {
    // A runtime that sends no K8S_POD_* (ctr, podman): istio-cni refuses, plexus names it and
    // undoes ptp and portmap.
    let (env, _api, conf) = istio_cluster("r-istio-noid");
    let msg = env.cni("ADD", "noid", "eth0", &conf).err(7);
    assert!(
        msg.contains("istio-cni") && msg.contains("K8S_POD_NAMESPACE"),
        "{msg}"
    );
    assert!(msg.contains("k8s-pod-network"), "names the network: {msg}");
    env.assert_clean(&[]);
    assert!(env.reservations("k8s-pod-network").is_empty());
    env.cni("DEL", "noid", "eth0", &conf).ok();
}

#[test]
fn istio_cni_leaves_excluded_namespaces_alone() {
    let (env, api, conf) = istio_cluster("r-istio-excl");
    api.create_pod("kube-system", "dns", json!({}));
    env.cni_pod("ADD", "excl", "kube-system", "dns", None, &conf)
        .ok();
    assert!(!env.pod_addrs("eth0").is_empty());
    assert!(!pod_nat(&env).contains("ISTIO"), "{}", pod_nat(&env));
    env.cni_pod("DEL", "excl", "kube-system", "dns", None, &conf)
        .ok();
    env.assert_clean(&[]);
}
