//! A second real runtime: podman 4.3 with its CNI backend runs a container on a network whose
//! conflist is plexus. The container gets eth0 (bridge, with portmap chained) and net1
//! (macvlan); podman's `-p` reaches portmap through plexus's `portMappings` capability; after
//! `podman rm` nothing is left.
//!
//! podman is given its own containers.conf (CNI backend, runc, cgroupfs, lower ulimits), storage
//! and network config directory, and runs in the test's node netns (entered with nsenter, which
//! keeps the host's /sys/fs/cgroup that runc needs), so the host's podman setup is not touched.

use plexus_e2e as common;

use common::TestEnv;
use serde_json::json;
use std::process::Command;

fn podman(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let t = env.path();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", env.node))
        .arg("env")
        .arg(format!(
            "CONTAINERS_CONF={}",
            t.join("containers.conf").display()
        ))
        .arg("podman")
        .arg("--root")
        .arg(t.join("root"))
        .arg("--runroot")
        .arg(t.join("runroot"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn podman_run_with_plexus_gives_eth0_net1_and_host_ports_and_leaves_nothing() {
    podman_run(false);
}

/// The same through the shim and the node daemon: the port mapping reaches the cluster
/// network's portmap through the daemon. podman sends no pod identity, so the daemon (always in
/// Kubernetes mode) attaches the cluster network only.
#[test]
fn podman_run_with_plexus_as_the_daemons_shim_gives_eth0_and_host_ports_and_leaves_nothing() {
    podman_run(true);
}

fn podman_run(through_daemon: bool) {
    let env = TestEnv::new(if through_daemon { "podmand" } else { "podman" });
    assert!(
        Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "podman not installed: scripts/setup installs it"
    );
    let t = env.path();
    // A busybox rootfs (`podman run --rootfs`: no image, no registry).
    let rootfs = env.busybox_rootfs("rootfs", &["sh", "ip", "sleep"]);
    let bin = env.runtime_bin_dir();
    let netd = t.join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    std::fs::write(
        t.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
            bin.display(),
            netd.display()
        ),
    )
    .unwrap();

    env.node_veth("pmm0", "pmm1");
    let mut cluster_ipam = env.host_local("cluster", "10.248.0.0/24");
    cluster_ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    // podman sends runtimeConfig only to plugins that declare the capability: plexus declares
    // portMappings and hands it to the cluster network's portmap.
    let conflist = json!({"cniVersion": common::shipped_cni_version(), "name": "plexusnet", "plugins": [{
    "type": "plexus", "cniDir": env.cni_dir(), "binDir": bin, "logLevel": "info",
    "capabilities": {"portMappings": true},
    "delegates": [
        {"cniVersion": "1.0.0", "name": "cluster", "plugins": [
            {"type": "bridge", "bridge": "plxpm0", "isGateway": true, "ipMasq": false, "ipam": cluster_ipam},
            {"type": "portmap", "capabilities": {"portMappings": true}}]},
        {"cniVersion": "1.0.0", "name": "mv", "type": "macvlan", "master": "pmm0",
         "ipam": env.host_local("mv", "10.249.0.0/24")}
    ]}]});
    let mut conflist = conflist;
    let (_api, _node_daemon) = if through_daemon {
        let api = common::Fixture::start_tls(&env, "daemon-sa-token");
        let d = common::daemon::NodeDaemon::start(&env, &api, json!({}));
        conflist["plugins"][0]["daemonSocketDir"] = json!(d.socket_dir);
        (Some(api), Some(d))
    } else {
        (None, None)
    };
    std::fs::write(netd.join("plexusnet.conflist"), conflist.to_string()).unwrap();

    let name = format!(
        "plexus-e2e-{}{}",
        std::process::id(),
        if through_daemon { "-d" } else { "" }
    );
    let (ok, out) = podman(
        &env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "plexusnet",
            "-p",
            "18081:80",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "/bin/sleep",
            "120",
        ],
    );
    assert!(ok, "podman run failed: {out}");
    let (ok, addrs) = podman(&env, &["exec", &name, "ip", "-o", "-4", "addr"]);
    let nat = env.node(&["iptables-save", "-t", "nat"]);
    let (rm_ok, rm_out) = podman(&env, &["rm", "-f", "-t", "0", &name]);
    assert!(ok, "podman exec failed: {addrs}");
    assert!(rm_ok, "podman rm failed: {rm_out}");
    assert!(
        addrs
            .lines()
            .any(|l| l.contains("eth0") && l.contains("inet 10.248.0.")),
        "{addrs}"
    );
    assert_eq!(
        addrs
            .lines()
            .any(|l| l.contains("net1") && l.contains("inet 10.249.0.")),
        !through_daemon,
        "{addrs}"
    );
    assert!(
        nat.contains("--dport 18081") && nat.contains(":80"),
        "no DNAT for -p 18081:80 in the node's nat table:\n{nat}"
    );

    // podman has run DEL: nothing is left.
    env.assert_runtime_left_nothing(&["cluster", "mv"], &["plxpm0", "pmm0", "pmm1"]);
    assert!(
        !env.node(&["iptables-save", "-t", "nat"])
            .contains("--dport 18081"),
        "DNAT rule left"
    );
}
