//! `plexus demo`: what a runtime does with plexus, on this machine, with the real reference plugins.
//!
//! It makes two network namespaces — a "node" (so the host is left untouched) and a "pod" — runs
//! the `plexus` binary as a runtime would (ADD, CHECK, DEL), shows what the pod got, and tears
//! everything down, checking nothing is left.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the reference CNI plugins are (bridge, macvlan, ptp, host-local).
    #[arg(long, default_value = "/opt/cni/bin:/usr/lib/cni")]
    pub cni_path: String,
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn find_plugins(cni_path: &str) -> Result<PathBuf, String> {
    cni_path
        .split(':')
        .map(PathBuf::from)
        .find(|d| ["bridge", "macvlan", "ptp", "host-local"].iter().all(|p| d.join(p).is_file()))
        .ok_or_else(|| format!("reference CNI plugins not found in {cni_path}: install containernetworking-plugins"))
}

/// Run the plexus binary as a runtime would, inside the node netns.
fn cni(
    node: &str,
    verb: &str,
    id: &str,
    pod_ns: &str,
    plugins: &Path,
    conf: &str,
) -> Result<String, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", node])
        .arg(me)
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugins)
        .env("CNI_ARGS", "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=demo-pod")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{verb} failed: {text}"));
    }
    Ok(text)
}

pub fn run(args: &DemoArgs) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the demo makes network namespaces: run it as root".into());
    }
    let plugins = find_plugins(&args.cni_path)?;
    let pid = std::process::id();
    let node = Netns(format!("plexus-demo-node-{pid}"));
    let pod = Netns(format!("plexus-demo-pod-{pid}"));
    sh(&["ip", "netns", "add", &node.0])?;
    sh(&["ip", "netns", "add", &pod.0])?;
    for cmd in [
        "ip link set lo up",
        "ip link add plxm0 type veth peer name plxm1",
        "ip link set plxm0 up",
        "ip link set plxm1 up",
    ] {
        let mut full = vec!["ip", "netns", "exec", &node.0];
        full.extend(cmd.split(' '));
        sh(&full)?;
    }
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ipam = |name: &str, subnet: &str| json!({"type":"host-local","ranges":[[{"subnet":subnet}]],"dataDir":tmp.path().join("ipam").join(name)});
    let conf = json!({
        "cniVersion": "1.1.0", "name": "plexus-demo", "type": "plexus",
        "cniDir": tmp.path().join("cni"), "binDir": plugins, "logLevel": "warn",
        "delegates": [
            {"cniVersion":"1.0.0","name":"cluster","plugins":[
                {"type":"bridge","bridge":"plxdemo0","isGateway":true,"ipMasq":false,
                 "ipam": {"type":"host-local","ranges":[[{"subnet":"10.250.0.0/24"}]],
                          "routes":[{"dst":"0.0.0.0/0"}],"dataDir":tmp.path().join("ipam").join("cluster")}},
                {"type":"tuning","sysctl":{"net.ipv4.conf.eth0.arp_filter":"1"}}]},
            {"cniVersion":"1.0.0","name":"macvlan-net","type":"macvlan","master":"plxm0","mode":"bridge",
             "ipam": ipam("macvlan-net", "10.251.0.0/24")},
            {"cniVersion":"1.0.0","name":"ptp-net","type":"ptp","ipam": ipam("ptp-net", "10.252.0.0/30")}
        ]
    })
    .to_string();
    let id = format!("plexus-demo-{pid}");
    println!(
        "== plexus config (stdin, as a runtime would send it)\n{}\n",
        pretty(&conf)
    );
    let result = cni(&node.0, "ADD", &id, &pod.0, &plugins, &conf)?;
    println!(
        "== ADD result (cniVersion 1.1.0, the cluster network's)\n{}\n",
        pretty(&result)
    );
    println!(
        "== pod interfaces\n{}",
        sh(&["ip", "-n", &pod.0, "-br", "addr"])?
    );
    println!("== pod routes\n{}", sh(&["ip", "-n", &pod.0, "route"])?);
    cni(&node.0, "CHECK", &id, &pod.0, &plugins, &conf)?;
    println!("== CHECK passed on all three attachments\n");
    cni(&node.0, "DEL", &id, &pod.0, &plugins, &conf)?;
    let left = sh(&["ip", "-n", &pod.0, "-br", "link"])?;
    println!("== after DEL, pod links\n{left}");
    let cache_left = std::fs::read_dir(tmp.path().join("cni/plexus/attachments"))
        .map(|d| d.count())
        .unwrap_or(0);
    let ipam_left: usize = ["cluster", "macvlan-net", "ptp-net"]
        .iter()
        .map(|n| {
            std::fs::read_dir(tmp.path().join("ipam").join(n))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().contains('.'))
                        .filter(|e| !e.file_name().to_string_lossy().starts_with("last_reserved"))
                        .filter(|e| e.file_name() != "lock")
                        .count()
                })
                .unwrap_or(0)
        })
        .sum();
    println!("cache records left: {cache_left}; IP reservations left: {ipam_left}");
    if left.lines().count() != 1 || cache_left != 0 || ipam_left != 0 {
        return Err("DEL left something behind".into());
    }
    println!("\ndemo done: everything attached and everything removed");
    Ok(())
}

fn pretty(s: &str) -> String {
    serde_json::from_str::<Value>(s)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| s.to_string())
}
