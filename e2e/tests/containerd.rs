//! A real runtime: containerd 1.6 `ctr run --cni` with plexus as the network. The container must
//! get eth0 (cluster network) and net1 (macvlan), and when it exits nothing may be left.
//!
//! ctr reads /etc/cni/net.d and /opt/cni/bin; the test bind-mounts its own directories over them
//! inside the node netns's private mount namespace, so the host's are never touched.

use plexus_e2e as common;

use common::{sh, TestEnv};
use serde_json::json;
use std::process::{Command, Stdio};

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn ctr_run_with_plexus_gives_eth0_and_net1_and_leaves_nothing() {
    ctr_run(false);
}

/// The same through the shim and the node daemon. ctr sends no pod identity, so the daemon
/// (always in Kubernetes mode) attaches the cluster network only.
#[test]
fn ctr_run_with_plexus_as_the_daemons_shim_gives_eth0_and_leaves_nothing() {
    ctr_run(true);
}

fn ctr_run(through_daemon: bool) {
    let env = TestEnv::new(if through_daemon { "ctrd" } else { "ctr" });
    for bin in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        assert!(
            which(bin),
            "{bin} not installed: scripts/test installs containerd and runc"
        );
    }
    let t = env.path();
    // A busybox rootfs; no image registry is needed.
    let rootfs = env.busybox_rootfs("rootfs", &["sh", "ip", "cat"]);

    // A private containerd.
    let (_daemon, sock) = env.containerd(
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        false,
    );

    // /opt/cni/bin as ctr will see it: plexus and the reference plugins.
    let bin = env.runtime_bin_dir();
    env.node_veth("ctrm0", "ctrm1");
    let mut cluster_ipam = env.host_local("cluster", "10.246.0.0/24");
    cluster_ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let conflist = json!({"cniVersion": common::shipped_cni_version(), "name": "plexus-ctr", "plugins": [{
    "type": "plexus", "cniDir": env.cni_dir(), "binDir": "/opt/cni/bin", "logLevel": "info",
    "delegates": [
        {"cniVersion": "1.0.0", "name": "cluster", "plugins": [
            {"type": "bridge", "bridge": "plxctr0", "isGateway": true, "ipam": cluster_ipam}]},
        {"cniVersion": "1.0.0", "name": "mv", "type": "macvlan", "master": "ctrm0",
         "ipam": env.host_local("mv", "10.247.0.0/24")}
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
    let netd = t.join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    std::fs::write(netd.join("10-plexus.conflist"), conflist.to_string()).unwrap();
    // Mount points must exist; creating empty directories is all this does to the host.
    std::fs::create_dir_all("/etc/cni/net.d").unwrap();
    std::fs::create_dir_all("/opt/cni/bin").unwrap();

    let script = format!(
        "mount --bind {netd} /etc/cni/net.d && mount --bind {bin} /opt/cni/bin && \
         exec timeout 120 ctr -a {sock} run --rm --cni --rootfs {rootfs} plexus-e2e-{pid}{mode} \
         /bin/sh -c 'ip -o -4 addr; ip -o link'",
        netd = netd.display(),
        bin = bin.display(),
        sock = sock.display(),
        rootfs = rootfs.display(),
        pid = std::process::id(),
        mode = if through_daemon { "-d" } else { "" }
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &env.node, "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctr run failed: {stdout}\n{}\ncontainerd log: {}",
        String::from_utf8_lossy(&out.stderr),
        env.containerd_log()
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("eth0") && l.contains("inet 10.246.0.")),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .lines()
            .any(|l| l.contains("net1") && l.contains("inet 10.247.0.")),
        !through_daemon,
        "{stdout}"
    );

    // The container has exited and ctr has run DEL: nothing is left.
    env.assert_runtime_left_nothing(&["cluster", "mv"], &["plxctr0", "ctrm0", "ctrm1"]);
    assert!(
        sh(&["ls", "/etc/cni/net.d"])
            .lines()
            .all(|l| l != "10-plexus.conflist"),
        "host config dir was touched"
    );
}
