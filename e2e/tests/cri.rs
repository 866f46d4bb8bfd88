//! The kubelet's path: containerd 1.6's CRI plugin, driven over CRI gRPC as the kubelet drives
//! it, runs a pod sandbox whose network is plexus. containerd passes the K8S_POD_* args itself,
//! plexus reads the pod and its NAD from the fixture API server (not a real kube-apiserver),
//! attaches eth0 and net1 and writes network-status; StopPodSandbox DELs it all.
//!
//! containerd runs with its own config, root, state and socket inside the test's node netns
//! (entered with nsenter, keeping the host's /sys/fs/cgroup for runc). The pause image is built
//! from busybox-static as an OCI archive and imported: no registry.

use plexus_e2e as common;

use common::cri::runtime_service_client::RuntimeServiceClient;
use common::cri::{
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest, VersionRequest,
};
use common::{sh, Fixture, TestEnv};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PAUSE: &str = "plexus.test/pause:1";

fn sha256(path: &Path) -> String {
    sh(&["sha256sum", path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// An OCI image archive whose entrypoint sleeps (all a pause container does that matters here).
fn pause_image(env: &TestEnv) -> PathBuf {
    let t = env.path();
    let rootfs = env.busybox_rootfs("pause-rootfs", &["sleep"]);
    let oci = t.join("pause-oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = t.join("layer.tar");
    sh(&[
        "tar",
        "-C",
        rootfs.to_str().unwrap(),
        "-cf",
        layer.to_str().unwrap(),
        ".",
    ]);
    let layer_digest = sha256(&layer);
    let layer_size = std::fs::metadata(&layer).unwrap().len();
    std::fs::rename(&layer, blobs.join(&layer_digest)).unwrap();
    let blob = |v: Value| -> (String, u64) {
        let bytes = v.to_string();
        let tmp = t.join("blob.tmp");
        std::fs::write(&tmp, &bytes).unwrap();
        let d = sha256(&tmp);
        std::fs::rename(&tmp, blobs.join(&d)).unwrap();
        (d, bytes.len() as u64)
    };
    let (config_digest, config_size) = blob(json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "100000"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
    }));
    let (manifest_digest, manifest_size) = blob(json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer_size}]
    }));
    std::fs::write(
        oci.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
            "annotations": {"io.containerd.image.name": PAUSE, "org.opencontainers.image.ref.name": "1"}}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let archive = t.join("pause.tar");
    sh(&[
        "tar",
        "-C",
        oci.to_str().unwrap(),
        "-cf",
        archive.to_str().unwrap(),
        ".",
    ]);
    archive
}

fn ctr(sock: &Path, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(sock)
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cri_pod_sandbox_gets_eth0_and_its_nads_network_and_stop_leaves_nothing() {
    cri_scenario(false);
}

/// The same with plexus as the shim of the node daemon (run as in a pod, watching the fixture).
#[test]
fn cri_pod_sandbox_through_the_node_daemon() {
    cri_scenario(true);
}

fn cri_scenario(through_daemon: bool) {
    let env = TestEnv::new(if through_daemon { "crid" } else { "cri" });
    let api = if through_daemon {
        Fixture::start_tls(&env, "daemon-sa-token")
    } else {
        Fixture::start(&env)
    };
    let t = env.path().to_path_buf();

    // The cluster: a NAD and a pod asking for it.
    env.node_veth("crim0", "crim1");
    api.create_nad(
        "default",
        "mv",
        &json!({"cniVersion": "1.0.0", "name": "mv", "type": "macvlan", "master": "crim0",
                "ipam": env.host_local("mv", "10.251.0.0/24")}),
    );
    let pod = api.create_pod(
        "default",
        "web",
        json!({"k8s.v1.cni.cncf.io/networks": "mv"}),
    );
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();

    // The node: plexus as the only CNI config, the reference plugins beside it.
    let bin = env.runtime_bin_dir();
    let mut cluster_ipam = env.host_local("cluster", "10.250.0.0/24");
    cluster_ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let netd = t.join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    let mut conflist = json!({"cniVersion": common::shipped_cni_version(), "name": "plexus-cri", "plugins": [{
        "type": "plexus", "cniDir": env.cni_dir(), "binDir": bin, "logLevel": "info",
        "delegates": [{"cniVersion": "1.0.0", "name": "cluster", "plugins": [
            {"type": "bridge", "bridge": "plxcri0", "isGateway": true, "ipMasq": false,
             "ipam": cluster_ipam}]}]}]});
    let _node_daemon = if through_daemon {
        let d = common::daemon::NodeDaemon::start(&env, &api, json!({}));
        conflist["plugins"][0]["daemonSocketDir"] = json!(d.socket_dir);
        Some(d)
    } else {
        conflist["plugins"][0]["kubeconfig"] = json!(api.kubeconfig);
        None
    };
    std::fs::write(netd.join("00-plexus.conflist"), conflist.to_string()).unwrap();

    let (_daemon, sock) = env.containerd(
        &format!(
            r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{netd}"
    max_conf_num = 1
"#,
            bin = bin.display(),
            netd = netd.display()
        ),
        true,
    );
    let containerd_log = || env.containerd_log();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = rt.block_on(async {
        let start = Instant::now();
        loop {
            let connected =
                plexus::k8s::devices::unix_channel(&sock, Duration::from_secs(10)).await;
            if let Ok(ch) = connected {
                let mut c = RuntimeServiceClient::new(ch);
                if c.version(VersionRequest {
                    version: "v1".into(),
                })
                .await
                .is_ok()
                {
                    return c;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd's CRI did not come up: {}",
                containerd_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    ctr(
        &sock,
        &[
            "images",
            "import",
            "--snapshotter",
            "native",
            pause_image(&env).to_str().unwrap(),
        ],
    );

    // RunPodSandbox, as the kubelet sends it.
    let sandbox = |uid: &str, attempt: u32| RunPodSandboxRequest {
        config: Some(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt,
            }),
            hostname: "web".into(),
            log_directory: t.join("logs").display().to_string(),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    };
    // A sandbox for an older incarnation of the pod (the UID containerd passes as K8S_POD_UID
    // is not the API's): plexus refuses, containerd tears the sandbox down, nothing is left.
    let stale = rt.block_on(client.run_pod_sandbox(sandbox("0ld-pod-uid", 0)));
    let msg = stale
        .expect_err("a stale pod UID must be refused")
        .message()
        .to_string();
    eprintln!("stale sandbox refused: {msg}");
    assert!(
        msg.contains("K8S_POD_UID 0ld-pod-uid is not the API's pod UID"),
        "{msg}"
    );
    assert!(env.cache_files().is_empty() && env.reservations("cluster").is_empty());
    let run = rt.block_on(client.run_pod_sandbox(sandbox(&uid, 1)));
    let id = match run {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(e) => panic!("RunPodSandbox: {e}\ncontainerd log:\n{}", containerd_log()),
    };
    let status = rt
        .block_on(client.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        }))
        .unwrap()
        .into_inner();
    let pod_ip = status.status.unwrap().network.unwrap().ip;
    assert!(pod_ip.starts_with("10.250.0."), "CRI reports {pod_ip}");
    // The sandbox's netns, from the runtime spec containerd reports.
    let info: Value = serde_json::from_str(&status.info["info"]).unwrap();
    let netns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let addrs = sh(&[
        "nsenter",
        &format!("--net={netns}"),
        "ip",
        "-o",
        "-4",
        "addr",
    ]);
    eprintln!("sandbox {netns}:\n{addrs}");
    assert!(
        addrs
            .lines()
            .any(|l| l.contains("eth0") && l.contains(&pod_ip)),
        "{addrs}"
    );
    assert!(
        addrs
            .lines()
            .any(|l| l.contains("net1") && l.contains("inet 10.251.0.")),
        "{addrs}"
    );
    // plexus used the identity containerd passed (K8S_POD_*), so the pod's status names both.
    let ns = api.network_status("default", "web");
    let names: Vec<&str> = ns
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cluster", "default/mv"], "{ns}");
    assert_eq!(ns[0]["ips"][0], pod_ip.as_str());

    // Hot-plug (daemon mode): the running sandbox gains a network when the pod's annotation
    // changes, and loses it when it changes back; what was there is untouched.
    let mut networks = vec!["cluster", "mv"];
    if through_daemon {
        networks.push("br2");
        api.create_nad(
            "default",
            "br2",
            &json!({"cniVersion": "1.0.0", "name": "br2", "type": "bridge", "bridge": "plxcri2",
                    "ipam": env.host_local("br2", "10.252.0.0/24")}),
        );
        let in_sandbox = |args: &[&str]| {
            let mut full = vec!["nsenter".to_string(), format!("--net={netns}")];
            full.extend(args.iter().map(|a| a.to_string()));
            sh(&full.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let net1 = in_sandbox(&["ip", "-d", "addr", "show", "dev", "net1"]);
        let names = || -> Vec<String> {
            api.network_status("default", "web")
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| e["name"].as_str().unwrap_or("").to_string())
                .collect()
        };
        let wait = |what: &str, want: usize| {
            let t = Instant::now();
            while names().len() != want {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "{what}: {:?}",
                    names()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        api.patch_pod_annotations(
            "default",
            "web",
            &json!({"k8s.v1.cni.cncf.io/networks": "mv, br2"}),
        );
        wait("br2 hot-plugged", 3);
        assert_eq!(names(), ["cluster", "default/mv", "default/br2"]);
        let addrs = in_sandbox(&["ip", "-o", "-4", "addr"]);
        assert!(
            addrs
                .lines()
                .any(|l| l.contains("net2") && l.contains("inet 10.252.0.")),
            "{addrs}"
        );
        assert_eq!(env.reservations("br2").len(), 1);
        api.patch_pod_annotations(
            "default",
            "web",
            &json!({"k8s.v1.cni.cncf.io/networks": "mv"}),
        );
        wait("br2 hot-unplugged", 2);
        assert!(!in_sandbox(&["ip", "-o", "link"]).contains("net2"));
        assert!(env.reservations("br2").is_empty());
        assert_eq!(
            in_sandbox(&["ip", "-d", "addr", "show", "dev", "net1"]),
            net1,
            "net1 untouched"
        );
        // And once more in, so the kubelet's teardown below takes a hot-plugged network too.
        api.patch_pod_annotations(
            "default",
            "web",
            &json!({"k8s.v1.cni.cncf.io/networks": "mv, br2"}),
        );
        wait("br2 hot-plugged again", 3);
    }

    // The kubelet stops, then removes, the sandbox: DEL must leave nothing.
    rt.block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    }))
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", containerd_log()));
    rt.block_on(client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }))
        .unwrap();
    env.assert_runtime_left_nothing(&networks, &["plxcri0", "plxcri2", "crim0", "crim1"]);
    assert!(!Path::new(&netns).exists(), "sandbox netns {netns} left");
}
