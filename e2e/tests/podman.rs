//! A second real runtime: podman 4.3 with its CNI backend runs a container on a network whose
//! conflist is plexus. The container gets eth0 (bridge, with portmap chained) and net1
//! (macvlan); podman's `-p` reaches portmap through plexus's `portMappings` capability; after
//! `podman rm` nothing is left.
//!
//! podman is given its own containers.conf (CNI backend, runc, cgroupfs, lower ulimits), storage
//! and network config directory, and runs in the test's node netns (entered with nsenter, which
//! keeps the host's /sys/fs/cgroup that runc needs), so the host's podman setup is not touched.

use plexus_e2e as common;

use common::{plexus_bin, TestEnv};
use serde_json::json;
use std::path::Path;
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
    let env = TestEnv::new("podman");
    assert!(
        Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "podman not installed: scripts/setup installs it"
    );
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox-static not installed");
    let t = env.path();

    // A busybox rootfs (`podman run --rootfs`: no image, no registry).
    let rootfs = t.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "ip", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }

    let bin = t.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(plexus_bin(), bin.join("plexus")).unwrap();
    for p in std::fs::read_dir(&env.plugins).unwrap() {
        let p = p.unwrap().path();
        std::os::unix::fs::symlink(&p, bin.join(p.file_name().unwrap())).unwrap();
    }
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
    std::fs::write(netd.join("plexusnet.conflist"), conflist.to_string()).unwrap();

    let name = format!("plexus-e2e-{}", std::process::id());
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
    assert!(
        addrs
            .lines()
            .any(|l| l.contains("net1") && l.contains("inet 10.249.0.")),
        "{addrs}"
    );
    assert!(
        nat.contains("--dport 18081") && nat.contains(":80"),
        "no DNAT for -p 18081:80 in the node's nat table:\n{nat}"
    );

    // podman has run DEL: nothing is left.
    assert!(
        env.cache_files().is_empty(),
        "cache left: {:?}",
        env.cache_files()
    );
    assert!(
        env.reservations("cluster").is_empty() && env.reservations("mv").is_empty(),
        "IP reservations left"
    );
    let mut node = env.node_links();
    node.retain(|l| !["lo", "plxpm0", "pmm0", "pmm1"].contains(&l.as_str()));
    assert!(node.is_empty(), "node links left: {node:?}");
    assert!(
        !env.node(&["iptables-save", "-t", "nat"])
            .contains("--dport 18081"),
        "DNAT rule left"
    );
}
