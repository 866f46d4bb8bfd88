//! Stand-ins for CNI plugins that cannot run on the test machines: the real binary is not
//! installable here, or the kernel lacks the link type. Each speaks the real plugin's documented
//! CNI input and output — the config keys it reads, the CNI_ARGS it needs, the shape of its
//! result (quirks included) and what it leaves on DEL — and builds real links, addresses and
//! routes. Where the real plugin asks a daemon or a datastore (Calico's, Cilium's agent, AWS
//! ipamd, Whereabouts' IPPool CRDs), the stand-in keeps the same bookkeeping in files under
//! `$PLEXUS_STANDIN_DIR` (default `/run/plexus-standin`).
//!
//! The role is the name it is invoked as (a symlink named like the real binary):
//! - `ipvlan`, `vlan`: ipvlan's config (`master`, `mode` l2|l3|l3s, `mtu`, `ipam`) and vlan's
//!   (`master`, `vlanId` 0–4094, `mtu`, `ipam`). This kernel has neither link type, so the link
//!   is a macvlan child of `master`; the result is theirs.
//! - `sriov` / `test-sriov`: the SR-IOV CNI. The `deviceID` names a veth playing the VF: ADD moves
//!   it into the pod as CNI_IFNAME (with `mac`, `mtu`, `ipam`), writes NPWG device-info to
//!   `runtimeConfig.CNIDeviceInfoFile`; DEL moves it back under its own name.
//! - `whereabouts`: the Whereabouts IPAM (`range`, `range_start`, `range_end`, `exclude`,
//!   `gateway`, `routes`), cluster-wide allocation emulated by files.
//! - `istio-cni`: a chained plugin: refuses to run without `prevResult` or K8S_POD_* args, skips
//!   `kubernetes.exclude_namespaces`, installs the ISTIO_* nat chains in the pod netns, and prints
//!   `prevResult` unchanged. DEL does nothing (the rules go with the netns), as the real one.
//! - `calico` + `calico-ipam`: host veth `cali<sha1(ns.pod)[:11]>` with MAC ee:ee:ee:ee:ee:ee
//!   and proxy ARP, pod /32 with default via 169.254.1.1; result interfaces = the host veth only,
//!   IPs with no interface index, as Calico prints them.
//! - `cilium-cni`: host veth `lxc<sha1(containerID)[:11]>`, pod /32, routes via the router IP;
//!   result: the container interface, IP with gateway, routes.
//! - `aws-cni`: host veth `<vethPrefix><sha1(ns.pod)[:11]>`, pod /32 via 169.254.1.1 with a
//!   permanent neighbour, and the result's quirks: the container interface's `mac` holds the
//!   route table id and a third "dummy" interface packs VLAN id and device number into `mac` and
//!   `sandbox`; DEL tears down from that `prevResult`.
//! - `weave-net`: Weave Net's plugin. The `weave` bridge (conf `bridge`) is the weave router's;
//!   the stand-in makes it with 10.32.0.1/12 when it is missing. Host veth `vethwepl<id[:7]>` on
//!   the bridge (hairpin with `hairpinMode`), MTU `mtu` or 1376; the address from Weave's own IPAM
//!   (no `ipam` section: 10.32.0.0/12, kept in files where the real one asks the router), default
//!   route via the bridge's IP. Refuses `isGateway` and `ipMasq`, as the real one. Result: `ips`
//!   only (no `interfaces`, no interface index). DEL deletes CNI_IFNAME in the pod and releases.
//! - `azure-vnet` + `azure-vnet-ipam`: the Azure CNI. `mode` `transparent` (AKS's): host veth
//!   `azv<sha1(namespace.pod)[:11]>`, the pod address with its VNet prefix but no subnet route,
//!   default via 169.254.1.1 (a link route to it, a neighbour entry to the host veth's MAC), and
//!   a /32 host route to the pod; `bridge`: the veth on the `azure0` bridge (made if missing; the
//!   real plugin moves the VM's NIC into it), default via the VNet gateway. `azure-vnet-ipam`
//!   gives 10.240.0.0/16 with gateway 10.240.0.1. Result: the interface with a MAC but no
//!   `sandbox`, IPs with a gateway and no interface index, the default route, `dns`.
//! - `flannel`: reads `subnetFile`, builds the delegate config (bridge + host-local by default),
//!   saves it under `dataDir/<containerID>`, delegates ADD/DEL to the real plugin.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Cni {
    role: String,
    command: String,
    cid: String,
    netns: String,
    ifname: String,
    args: HashMap<String, String>,
    stdin: String,
    conf: Value,
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

impl Cni {
    fn version(&self) -> &str {
        self.conf["cniVersion"].as_str().unwrap_or("0.3.1")
    }

    /// Print a CNI error and exit 1.
    fn fail(&self, code: u32, msg: impl std::fmt::Display) -> ! {
        println!(
            "{}",
            json!({"cniVersion": self.version(), "code": code, "msg": format!("{}: {msg}", self.role)})
        );
        std::process::exit(1);
    }

    fn k8s(&self, key: &str) -> Option<&str> {
        self.args.get(key).map(String::as_str)
    }

    /// The pod's netns as a name `ip` understands (runtimes mount them in /run/netns).
    fn ns_name(&self) -> String {
        let p = Path::new(&self.netns);
        match (p.parent().and_then(Path::to_str), p.file_name()) {
            (Some("/run/netns" | "/var/run/netns"), Some(n)) => n.to_string_lossy().into_owned(),
            _ => self.fail(4, format!("netns {} is not under /run/netns", self.netns)),
        }
    }

    fn ip(&self, args: &[&str]) {
        if let Err(e) = run("ip", args) {
            self.fail(11, e)
        }
    }

    fn pod_ip(&self, args: &[&str]) {
        let ns = self.ns_name();
        let mut v = vec!["-n", ns.as_str()];
        v.extend_from_slice(args);
        self.ip(&v)
    }

    /// Run a plugin from CNI_PATH with this invocation's environment and `stdin`.
    fn delegate(&self, plugin: &str, command: &str, stdin: &str) -> Result<Value, String> {
        let bin = env("CNI_PATH")
            .split(':')
            .map(|d| Path::new(d).join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("failed to find plugin \"{plugin}\" in CNI_PATH"))?;
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{plugin}: {e}"))?;
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{plugin}: {e}"))?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            return Err(format!("{plugin} {command} failed: {}", v["msg"]));
        }
        Ok(v)
    }

    fn ipam(&self, command: &str) -> Value {
        let Some(ty) = self.conf["ipam"]["type"].as_str() else {
            self.fail(7, "config has no ipam type")
        };
        self.delegate(ty, command, &self.stdin)
            .unwrap_or_else(|e| self.fail(11, e))
    }

    /// Give the pod's interface the IPAM result's addresses and routes, and bring it up.
    fn configure(&self, ipam: &Value) {
        for a in ipam["ips"].as_array().into_iter().flatten() {
            self.pod_ip(&[
                "addr",
                "add",
                a["address"].as_str().unwrap_or(""),
                "dev",
                &self.ifname,
            ]);
        }
        self.pod_ip(&["link", "set", "dev", &self.ifname, "up"]);
        for r in ipam["routes"].as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().unwrap_or("");
            let gw = r["gw"]
                .as_str()
                .map(String::from)
                .or_else(|| ipam["ips"][0]["gateway"].as_str().map(String::from));
            let mut args = vec!["route", "add", dst, "dev", &self.ifname];
            if let Some(g) = gw.as_deref() {
                args.extend(["via", g]);
            }
            self.pod_ip(&args);
        }
    }

    fn pod_mac(&self) -> String {
        let ns = self.ns_name();
        let out = run(
            "ip",
            &["-j", "-n", &ns, "link", "show", "dev", &self.ifname],
        )
        .unwrap_or_default();
        serde_json::from_str::<Value>(&out).unwrap_or(Value::Null)[0]["address"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Print a result in the config's cniVersion (0.3.x/0.4.0 want `version` on each IP).
    fn print(&self, mut result: Value) {
        result["cniVersion"] = json!(self.version());
        if self.version().starts_with("0.") {
            for ip in result["ips"].as_array_mut().into_iter().flatten() {
                let a = ip["address"].as_str().unwrap_or("");
                ip["version"] = json!(if a.contains(':') { "6" } else { "4" });
            }
        }
        // Go plugins omit what is empty (`omitempty`); so does the stand-in.
        let obj = result.as_object_mut().unwrap();
        obj.retain(|_, v| !v.is_null());
        obj.entry("dns").or_insert(json!({}));
        println!("{result}");
    }

    /// A veth pair: `host` in this (the node's) netns, CNI_IFNAME in the pod.
    fn veth(&self, host: &str, mtu: Option<&str>) {
        let ns = self.ns_name();
        let mut args = vec!["link", "add", host];
        if let Some(m) = mtu {
            args.extend(["mtu", m]);
        }
        args.extend(["type", "veth", "peer", "name", &self.ifname, "netns", &ns]);
        if let Some(m) = mtu {
            args.extend(["mtu", m]);
        }
        self.ip(&args);
        self.ip(&["link", "set", "dev", host, "up"]);
    }

    fn key(&self) -> String {
        format!("{}/{}", self.cid, self.ifname)
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha1_hex(s: &str) -> String {
    sha1_smol::Sha1::from(s).digest().to_string()
}

/// The MAC of a link in this (the node's) netns.
fn link_mac(name: &str) -> String {
    serde_json::from_str::<Value>(
        &run("ip", &["-j", "link", "show", "dev", name]).unwrap_or_default(),
    )
    .unwrap_or(Value::Null)[0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).is_ok()
}

// ---- file-backed allocation (what the real plugins keep in a datastore or daemon) ----

fn state_dir() -> PathBuf {
    match std::env::var_os("PLEXUS_STANDIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("/run/plexus-standin"),
    }
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    Some((a.parse().ok()?, p))
}

fn mask(p: u8) -> u32 {
    if p == 0 {
        0
    } else {
        u32::MAX << (32 - p)
    }
}

/// Lowest free address in `first..=last` (not in `exclude`) for `key` in pool `pool`; the same
/// key gets its old address back.
fn allocate(
    pool: &str,
    first: u32,
    last: u32,
    exclude: &[(u32, u32)],
    key: &str,
) -> Result<Ipv4Addr, String> {
    let dir = state_dir().join(pool.replace('/', "_"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        if std::fs::read_to_string(e.path()).unwrap_or_default() == key {
            if let Ok(a) = e.file_name().to_string_lossy().parse() {
                return Ok(a);
            }
        }
    }
    for n in first..=last {
        if exclude.iter().any(|(lo, hi)| (*lo..=*hi).contains(&n)) {
            continue;
        }
        let a = Ipv4Addr::from(n);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(a.to_string()))
        {
            Ok(mut f) => {
                f.write_all(key.as_bytes()).map_err(|e| e.to_string())?;
                return Ok(a);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("pool {pool} is exhausted"))
}

/// Release what `key` holds in `pool`; returns the addresses released.
fn release(pool: &str, key: &str) -> Vec<String> {
    let dir = state_dir().join(pool.replace('/', "_"));
    let mut gone = vec![];
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if std::fs::read_to_string(e.path()).unwrap_or_default() == key {
            let _ = std::fs::remove_file(e.path());
            gone.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    gone
}

/// Hosts of a subnet (no network or broadcast address, and .1 left for the gateway).
fn pool_hosts(cidr: &str) -> Option<(u32, u32)> {
    let (a, p) = parse_cidr(cidr)?;
    let net = u32::from(a) & mask(p);
    let bcast = net | !mask(p);
    (p <= 30).then_some((net + 2, bcast - 1))
}

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let role = Path::new(&argv0)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let command = env("CNI_COMMAND");
    if command == "VERSION" {
        let versions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
        println!(
            "{}",
            json!({"cniVersion": "1.0.0", "supportedVersions": versions})
        );
        return;
    }
    let args = env("CNI_ARGS")
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let c = Cni {
        role: role.clone(),
        command: command.clone(),
        cid: env("CNI_CONTAINERID"),
        netns: env("CNI_NETNS"),
        ifname: env("CNI_IFNAME"),
        args,
        conf: serde_json::from_str(&stdin).unwrap_or(Value::Null),
        stdin,
    };
    if !c.conf.is_object() {
        c.fail(6, "cannot parse network config");
    }
    eprintln!("{role} (stand-in): {command} {} {}", c.cid, c.ifname);
    match role.as_str() {
        "ipvlan" | "vlan" => child_link(&c),
        r if r.contains("sriov") => sriov(&c),
        "whereabouts" => whereabouts(&c),
        "istio-cni" => istio(&c),
        "calico" => calico(&c),
        "calico-ipam" => calico_ipam(&c),
        "cilium-cni" => cilium(&c),
        "aws-cni" => aws(&c),
        "flannel" => flannel(&c),
        "weave-net" => weave(&c),
        "azure-vnet" => azure_vnet(&c),
        "azure-vnet-ipam" => azure_ipam(&c),
        _ => c.fail(4, format!("unknown stand-in role {role}")),
    }
}

// ---- primary plugins ----

/// ipvlan and vlan: a child link of `master`. This kernel has neither, so it is a macvlan.
fn child_link(c: &Cni) {
    match c.command.as_str() {
        "ADD" => {
            let Some(master) = c.conf["master"].as_str() else {
                c.fail(7, "\"master\" field is required. It specifies the host interface name to create the VLAN for.")
            };
            if c.role == "ipvlan" {
                let mode = c.conf["mode"].as_str().unwrap_or("l2");
                if !["l2", "l3", "l3s"].contains(&mode) {
                    c.fail(7, format!("unknown ipvlan mode: {mode}"));
                }
            } else {
                match c.conf["vlanId"].as_i64() {
                    Some(id) if (0..=4094).contains(&id) => {}
                    _ => c.fail(7, "invalid VLAN ID (must be between 0 and 4094)"),
                }
            }
            if !link_exists(master) {
                c.fail(
                    11,
                    format!("failed to lookup master {master:?}: Link not found"),
                );
            }
            let ipam = c.ipam("ADD");
            let tmp = format!("iv{}", &sha1_hex(&c.key())[..10]);
            let mut args = vec!["link", "add", "link", master, "name", &tmp];
            let mtu = c.conf["mtu"].as_u64().map(|m| m.to_string());
            if let Some(m) = mtu.as_deref() {
                args.extend(["mtu", m]);
            }
            args.extend(["type", "macvlan", "mode", "private"]);
            if let Err(e) = run("ip", &args) {
                let _ = c.delegate(c.conf["ipam"]["type"].as_str().unwrap(), "DEL", &c.stdin);
                c.fail(11, e);
            }
            let ns = c.ns_name();
            c.ip(&["link", "set", "dev", &tmp, "netns", &ns]);
            c.pod_ip(&["link", "set", "dev", &tmp, "name", &c.ifname]);
            c.configure(&ipam);
            let mut ips = ipam["ips"].clone();
            for ip in ips.as_array_mut().into_iter().flatten() {
                ip["interface"] = json!(0);
            }
            c.print(
                json!({"interfaces": [{"name": c.ifname, "mac": c.pod_mac(), "sandbox": c.netns}],
                "ips": ips, "routes": ipam["routes"].clone(), "dns": ipam["dns"].clone()}),
            );
        }
        "DEL" => {
            if c.conf["ipam"]["type"].is_string() {
                c.ipam("DEL");
            }
            if !c.netns.is_empty() && Path::new(&c.netns).exists() {
                let ns = c.ns_name();
                let _ = run("ip", &["-n", &ns, "link", "del", "dev", &c.ifname]);
            }
        }
        _ => {}
    }
}

fn sriov(c: &Cni) {
    let vf = c.conf["deviceID"].as_str().unwrap_or("");
    match c.command.as_str() {
        "ADD" => {
            if vf.is_empty() {
                c.fail(7, "VF pci addr is required (no deviceID in config)");
            }
            let ns = c.ns_name();
            let moved = run("ip", &["link", "set", "dev", vf, "netns", &ns]).and_then(|_| {
                run(
                    "ip",
                    &["-n", &ns, "link", "set", "dev", vf, "name", &c.ifname],
                )
            });
            if let Err(e) = moved {
                c.fail(5, format!("cannot move VF {vf} into {}: {e}", c.netns));
            }
            if let Some(mac) = c.conf["mac"].as_str() {
                c.pod_ip(&["link", "set", "dev", &c.ifname, "address", mac]);
            }
            if let Some(m) = c.conf["mtu"].as_u64() {
                c.pod_ip(&["link", "set", "dev", &c.ifname, "mtu", &m.to_string()]);
            }
            let ipam = if c.conf["ipam"]["type"].is_string() {
                c.ipam("ADD")
            } else {
                json!({"ips": []})
            };
            c.configure(&ipam);
            // NPWG device-info: written where the runtime asked, when it asked.
            if let Some(file) = c.conf["runtimeConfig"]["CNIDeviceInfoFile"].as_str() {
                let info = json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": format!("cni-{vf}")}});
                if let Err(e) = std::fs::write(file, info.to_string()) {
                    c.fail(5, format!("writing device-info {file}: {e}"));
                }
            }
            let mut ips = ipam["ips"].clone();
            for ip in ips.as_array_mut().into_iter().flatten() {
                ip["interface"] = json!(0);
            }
            c.print(
                json!({"interfaces": [{"name": c.ifname, "mac": c.pod_mac(), "sandbox": c.netns}],
                "ips": ips, "routes": ipam["routes"].clone()}),
            );
        }
        "DEL" => {
            if c.conf["ipam"]["type"].is_string() {
                c.ipam("DEL");
            }
            // Back to the node (this process's netns) under the VF's own name; what is already
            // gone is success.
            if vf.is_empty() || c.netns.is_empty() || !Path::new(&c.netns).exists() {
                return;
            }
            let ns = c.ns_name();
            let me = std::process::id().to_string();
            let _ = run("ip", &["-n", &ns, "link", "set", "dev", &c.ifname, "down"])
                .and_then(|_| {
                    run(
                        "ip",
                        &["-n", &ns, "link", "set", "dev", &c.ifname, "name", vf],
                    )
                })
                .and_then(|_| run("ip", &["-n", &ns, "link", "set", "dev", vf, "netns", &me]));
        }
        _ => {}
    }
}

// ---- IPAM ----

fn whereabouts(c: &Cni) {
    let ipam = &c.conf["ipam"];
    let Some(range) = ipam["range"].as_str() else {
        c.fail(7, "invalid range: no \"range\" in ipam config")
    };
    // "range" may carry a start address ("192.168.2.225/28" starts at .225).
    let Some((start_addr, prefix)) = parse_cidr(range) else {
        c.fail(7, format!("invalid range {range:?}"))
    };
    let net = u32::from(start_addr) & mask(prefix);
    let bcast = net | !mask(prefix);
    let parse = |k: &str| {
        ipam[k]
            .as_str()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .map(u32::from)
    };
    let first = parse("range_start").unwrap_or(u32::from(start_addr).max(net + 1));
    let last = parse("range_end").unwrap_or(bcast - 1);
    let mut exclude: Vec<(u32, u32)> = ipam["exclude"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| parse_cidr(e.as_str()?))
        .map(|(a, p)| {
            let lo = u32::from(a) & mask(p);
            (lo, lo | !mask(p))
        })
        .collect();
    if let Some(g) = parse("gateway") {
        exclude.push((g, g));
    }
    let pool = format!("whereabouts-{range}");
    // Whereabouts keys an allocation by pod and interface.
    let pod = format!(
        "{}/{}",
        c.k8s("K8S_POD_NAMESPACE").unwrap_or(""),
        c.k8s("K8S_POD_NAME").unwrap_or("")
    );
    let key = format!("{}@{pod}", c.key());
    match c.command.as_str() {
        "ADD" => {
            let a = allocate(&pool, first, last, &exclude, &key).unwrap_or_else(|e| c.fail(11, e));
            let mut ip = json!({"address": format!("{a}/{prefix}")});
            if let Some(g) = ipam["gateway"].as_str() {
                ip["gateway"] = json!(g);
            }
            c.print(json!({"ips": [ip], "routes": ipam["routes"].clone().as_array().cloned().unwrap_or_default()}));
        }
        "DEL" => {
            release(&pool, &key);
        }
        _ => {}
    }
}

fn calico_ipam(c: &Cni) {
    let pool = c.conf["ipam"]["ipv4_pools"][0]
        .as_str()
        .unwrap_or("192.168.0.0/16")
        .to_string();
    let Some((first, last)) = pool_hosts(&pool) else {
        c.fail(7, format!("invalid ipv4 pool {pool:?}"))
    };
    // Calico's IPAM handle: network name + container id.
    let handle = format!("{}.{}", c.conf["name"].as_str().unwrap_or(""), c.cid);
    let tag = format!("calico-{pool}");
    match c.command.as_str() {
        "ADD" => {
            let a = allocate(&tag, first, last, &[], &handle).unwrap_or_else(|e| c.fail(11, e));
            c.print(json!({"ips": [{"address": format!("{a}/32")}]}));
        }
        "DEL" => {
            release(&tag, &handle);
        }
        _ => {}
    }
}

// ---- chained ----

fn istio(c: &Cni) {
    if c.command != "ADD" {
        return;
    }
    let Some(prev) = c.conf.get("prevResult") else {
        c.fail(7, "must be called as chained plugin")
    };
    let (Some(ns), Some(_pod)) = (c.k8s("K8S_POD_NAMESPACE"), c.k8s("K8S_POD_NAME")) else {
        c.fail(
            7,
            "K8S_POD_NAMESPACE and K8S_POD_NAME are required in CNI_ARGS",
        )
    };
    let excluded = c.conf["kubernetes"]["exclude_namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e == ns);
    if !excluded {
        let rules: [&[&str]; 6] = [
            &["-N", "ISTIO_REDIRECT"],
            &[
                "-A",
                "ISTIO_REDIRECT",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15001",
            ],
            &["-N", "ISTIO_IN_REDIRECT"],
            &[
                "-A",
                "ISTIO_IN_REDIRECT",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15006",
            ],
            &["-N", "ISTIO_OUTPUT"],
            &["-A", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"],
        ];
        for r in rules {
            let net = format!("--net={}", c.netns);
            let mut args = vec![net.as_str(), "iptables", "-w", "-t", "nat"];
            args.extend_from_slice(r);
            if let Err(e) = run("nsenter", &args) {
                c.fail(999, e);
            }
        }
    }
    // The previous result, unchanged, in the config's version.
    println!("{prev}");
}

// ---- cluster networks ----

fn pod_id(c: &Cni) -> String {
    match (c.k8s("K8S_POD_NAMESPACE"), c.k8s("K8S_POD_NAME")) {
        (Some(ns), Some(p)) => format!("{ns}.{p}"),
        _ => c.cid.clone(),
    }
}

/// A /32 pod reached through a host veth with proxy ARP: Calico's and AWS's layout.
fn routed_veth(c: &Cni, host: &str, ip: &str, mtu: Option<&str>) {
    c.veth(host, mtu);
    let gw = "169.254.1.1";
    c.pod_ip(&["addr", "add", &format!("{ip}/32"), "dev", &c.ifname]);
    c.pod_ip(&["link", "set", "dev", &c.ifname, "up"]);
    c.pod_ip(&["route", "add", gw, "dev", &c.ifname, "scope", "link"]);
    c.pod_ip(&["route", "add", "default", "via", gw, "dev", &c.ifname]);
    c.ip(&[
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        host,
        "scope",
        "link",
    ]);
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp"), "1");
}

fn calico(c: &Cni) {
    let host = format!("cali{}", &sha1_hex(&pod_id(c))[..11]);
    match c.command.as_str() {
        "ADD" => {
            if c.conf["kubernetes"]["kubeconfig"].is_string() && c.k8s("K8S_POD_NAME").is_none() {
                c.fail(
                    7,
                    "K8S_POD_NAME missing from CNI_ARGS for the kubernetes orchestrator",
                );
            }
            let ipam = c.ipam("ADD");
            let Some(ip) = ipam["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
            else {
                c.fail(11, format!("IPAM returned no address: {ipam}"))
            };
            let mtu = c.conf["mtu"].as_u64().map(|m| m.to_string());
            if link_exists(&host) {
                let _ = run("ip", &["link", "del", "dev", &host]);
            }
            routed_veth(c, &host, ip, mtu.as_deref());
            c.ip(&["link", "set", "dev", &host, "address", "ee:ee:ee:ee:ee:ee"]);
            c.print(json!({"interfaces": [{"name": host}], "ips": ipam["ips"].clone()}));
        }
        "DEL" => {
            c.ipam("DEL");
            if link_exists(&host) {
                c.ip(&["link", "del", "dev", &host]);
            }
        }
        _ => {}
    }
}

const CILIUM_POOL: &str = "10.0.9.0/24";
const CILIUM_ROUTER: &str = "10.0.9.1";

fn cilium(c: &Cni) {
    let host = format!("lxc{}", &sha1_hex(&c.cid)[..11]);
    let key = c.key();
    match c.command.as_str() {
        "ADD" => {
            let (first, last) = pool_hosts(CILIUM_POOL).unwrap();
            let ip =
                allocate("cilium-agent", first, last, &[], &key).unwrap_or_else(|e| c.fail(11, e));
            let mtu = c.conf["mtu"].as_u64().map(|m| m.to_string());
            c.veth(&host, mtu.as_deref());
            c.pod_ip(&["addr", "add", &format!("{ip}/32"), "dev", &c.ifname]);
            c.pod_ip(&["link", "set", "dev", &c.ifname, "up"]);
            c.pod_ip(&[
                "route",
                "add",
                CILIUM_ROUTER,
                "dev",
                &c.ifname,
                "scope",
                "link",
            ]);
            c.pod_ip(&[
                "route",
                "add",
                "default",
                "via",
                CILIUM_ROUTER,
                "dev",
                &c.ifname,
            ]);
            c.ip(&[
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                &host,
                "scope",
                "link",
            ]);
            c.print(json!({
                "interfaces": [{"name": c.ifname, "mac": c.pod_mac(), "sandbox": c.netns}],
                "ips": [{"address": format!("{ip}/32"), "gateway": CILIUM_ROUTER, "interface": 0}],
                "routes": [{"dst": format!("{CILIUM_ROUTER}/32")}, {"dst": "0.0.0.0/0", "gw": CILIUM_ROUTER}],
            }));
        }
        "DEL" => {
            release("cilium-agent", &key);
            if link_exists(&host) {
                c.ip(&["link", "del", "dev", &host]);
            }
        }
        _ => {}
    }
}

const AWS_POOL: &str = "10.2.0.0/24";

fn aws(c: &Cni) {
    let prefix = c.conf["vethPrefix"].as_str().unwrap_or("eni");
    let h = sha1_hex(&pod_id(c));
    let host = format!("{prefix}{}", &h[..11]);
    let dummy = format!("dummy{}", &h[..11]);
    let key = pod_id(c);
    match c.command.as_str() {
        "ADD" => {
            if c.k8s("K8S_POD_NAME").is_none() {
                c.fail(
                    7,
                    "add cmd: failed to load k8s config from arg (K8S_POD_NAME)",
                );
            }
            let (first, last) = pool_hosts(AWS_POOL).unwrap();
            let ip =
                allocate("aws-ipamd", first, last, &[], &key).unwrap_or_else(|e| c.fail(11, e));
            // aws-cni takes its MTU as a string.
            let mtu = c.conf["mtu"].as_str().map(String::from);
            if link_exists(&host) {
                let _ = run("ip", &["link", "del", "dev", &host]);
            }
            routed_veth(c, &host, &ip.to_string(), mtu.as_deref());
            let host_mac = link_mac(&host);
            c.pod_ip(&[
                "neigh",
                "add",
                "169.254.1.1",
                "lladdr",
                &host_mac,
                "dev",
                &c.ifname,
                "nud",
                "permanent",
            ]);
            c.print(json!({
                "interfaces": [
                    {"name": host},
                    // The route table id rides in "mac" (254: the main table).
                    {"name": c.ifname, "sandbox": c.netns, "mac": "254"},
                    // VLAN id 0 in "mac", device number 0 in "sandbox": read back on DEL.
                    {"name": dummy, "mac": "0", "sandbox": "0"},
                ],
                "ips": [{"address": format!("{ip}/32"), "gateway": "169.254.1.1", "interface": 1}],
            }));
        }
        "DEL" => {
            // Without ipamd, aws-cni tears down from prevResult's dummy interface.
            let prev = &c.conf["prevResult"];
            let found = prev["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["name"] == dummy.as_str());
            if let Some(d) = found {
                if d["mac"].as_str().and_then(|m| m.parse::<u32>().ok()) != Some(0)
                    || d["sandbox"]
                        .as_str()
                        .and_then(|s| s.parse::<u32>().ok())
                        .is_none()
                {
                    c.fail(7, format!("malformed dummy interface in prevResult: {d}"));
                }
            } else if !prev.is_null() {
                c.fail(7, format!("cannot find {dummy} in prevResult"));
            } else if link_exists(&host) {
                // The pod was set up, yet the runtime kept the result from us: a spec violation
                // (0.4.0+ runtimes pass the cached result on DEL) that would strand the pod here.
                c.fail(7, "DEL of a running pod without prevResult");
            }
            release("aws-ipamd", &key);
            if link_exists(&host) {
                c.ip(&["link", "del", "dev", &host]);
            }
        }
        _ => {}
    }
}

fn flannel(c: &Cni) {
    let data_dir = PathBuf::from(c.conf["dataDir"].as_str().unwrap_or("/var/lib/cni/flannel"));
    let saved = data_dir.join(&c.cid);
    match c.command.as_str() {
        "ADD" => {
            let file = c.conf["subnetFile"]
                .as_str()
                .unwrap_or("/run/flannel/subnet.env");
            let env: HashMap<String, String> = match std::fs::read_to_string(file) {
                Ok(s) => s
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect(),
                Err(e) => c.fail(11, format!("failed to load flannel 'subnet.env' file: {e}. Check the flannel pod log for this node.")),
            };
            let (Some(network), Some(subnet)) =
                (env.get("FLANNEL_NETWORK"), env.get("FLANNEL_SUBNET"))
            else {
                c.fail(
                    11,
                    format!("{file} is missing FLANNEL_NETWORK or FLANNEL_SUBNET"),
                )
            };
            let Some((sa, sp)) = parse_cidr(subnet) else {
                c.fail(11, format!("bad FLANNEL_SUBNET {subnet}"))
            };
            let subnet_net = format!("{}/{sp}", Ipv4Addr::from(u32::from(sa) & mask(sp)));
            let mut d = c.conf["delegate"].as_object().cloned().unwrap_or_default();
            d.entry("type").or_insert(json!("bridge"));
            d.insert("name".into(), c.conf["name"].clone());
            d.insert("cniVersion".into(), json!(c.version()));
            if d["type"] == "bridge" {
                d.entry("isGateway").or_insert(json!(true));
            }
            let ipmasq = env.get("FLANNEL_IPMASQ").map(String::as_str) == Some("true");
            d.entry("ipMasq").or_insert(json!(!ipmasq));
            if let Some(m) = env.get("FLANNEL_MTU").and_then(|m| m.parse::<u64>().ok()) {
                d.entry("mtu").or_insert(json!(m));
            }
            let mut ipam = c.conf["ipam"].as_object().cloned().unwrap_or_default();
            ipam.entry("type").or_insert(json!("host-local"));
            ipam.insert("ranges".into(), json!([[{"subnet": subnet_net}]]));
            ipam.remove("subnet");
            let mut routes = ipam
                .get("routes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            routes.push(json!({"dst": network}));
            ipam.insert("routes".into(), json!(routes));
            d.insert("ipam".into(), Value::Object(ipam));
            if let Some(rc) = c.conf.get("runtimeConfig") {
                d.insert("runtimeConfig".into(), rc.clone());
            }
            let conf = Value::Object(d).to_string();
            if let Err(e) =
                std::fs::create_dir_all(&data_dir).and_then(|_| std::fs::write(&saved, &conf))
            {
                c.fail(11, format!("saving {}: {e}", saved.display()));
            }
            let ty = c.conf["delegate"]["type"].as_str().unwrap_or("bridge");
            match c.delegate(ty, "ADD", &conf) {
                Ok(r) => println!("{r}"),
                Err(e) => {
                    let _ = c.delegate(ty, "DEL", &conf);
                    let _ = std::fs::remove_file(&saved);
                    c.fail(11, e)
                }
            }
        }
        "DEL" => {
            // Nothing saved: a DEL for an ADD that never happened, or a second DEL.
            let Ok(conf) = std::fs::read_to_string(&saved) else {
                return;
            };
            let ty = serde_json::from_str::<Value>(&conf).unwrap_or(Value::Null)["type"]
                .as_str()
                .unwrap_or("bridge")
                .to_string();
            if let Err(e) = c.delegate(&ty, "DEL", &conf) {
                c.fail(11, e);
            }
            let _ = std::fs::remove_file(&saved);
        }
        _ => {}
    }
}

// ---- Weave Net ----

const WEAVE_POOL: &str = "10.32.0.0/12";
const WEAVE_BRIDGE_IP: &str = "10.32.0.1";

fn weave(c: &Cni) {
    let bridge = c.conf["bridge"].as_str().unwrap_or("weave");
    let id: String = c.cid.chars().take(7).collect();
    let host = format!("vethwepl{id}");
    let key = c.key();
    match c.command.as_str() {
        "ADD" => {
            if c.conf["isGateway"] == true {
                c.fail(999, "Gateway functionality not supported");
            }
            if c.conf["ipMasq"] == true {
                c.fail(999, "IP Masquerading functionality not supported");
            }
            if !link_exists(bridge) {
                // The weave router's job on a real node (`weave expose` gives it its address).
                c.ip(&["link", "add", bridge, "type", "bridge"]);
                c.ip(&[
                    "addr",
                    "add",
                    &format!("{WEAVE_BRIDGE_IP}/12"),
                    "dev",
                    bridge,
                ]);
                c.ip(&["link", "set", "dev", bridge, "up"]);
            }
            let (ip, prefix) = if c.conf["ipam"]["type"].is_string() {
                let r = c.ipam("ADD");
                let a = r["ips"][0]["address"].as_str().unwrap_or("").to_string();
                match a.split_once('/') {
                    Some((ip, p)) => (ip.to_string(), p.to_string()),
                    None => c.fail(999, "IPAM plugin failed to allocate IP address"),
                }
            } else {
                let (a, p) = parse_cidr(WEAVE_POOL).unwrap();
                let first = u32::from(a) + 2;
                let last = (u32::from(a) | !mask(p)) - 1;
                let ip = allocate("weave-ipam", first, last, &[], &key)
                    .unwrap_or_else(|e| c.fail(999, format!("unable to allocate IP address: {e}")));
                (ip.to_string(), p.to_string())
            };
            let mtu = c.conf["mtu"].as_u64().unwrap_or(1376).to_string();
            if link_exists(&host) {
                let _ = run("ip", &["link", "del", "dev", &host]);
            }
            c.veth(&host, Some(&mtu));
            c.ip(&["link", "set", "dev", &host, "master", bridge]);
            if c.conf["hairpinMode"] == true {
                c.ip(&[
                    "link",
                    "set",
                    "dev",
                    &host,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ]);
            }
            c.pod_ip(&["addr", "add", &format!("{ip}/{prefix}"), "dev", &c.ifname]);
            c.pod_ip(&["link", "set", "dev", &c.ifname, "up"]);
            c.pod_ip(&[
                "route",
                "add",
                "default",
                "via",
                WEAVE_BRIDGE_IP,
                "dev",
                &c.ifname,
            ]);
            c.print(json!({
                "ips": [{"address": format!("{ip}/{prefix}"), "gateway": WEAVE_BRIDGE_IP}],
                "dns": c.conf.get("dns").cloned().unwrap_or(json!({})),
            }));
        }
        "DEL" => {
            if Path::new(&c.netns).exists() {
                let ns = c.ns_name();
                if run("ip", &["-n", &ns, "link", "show", "dev", &c.ifname]).is_ok() {
                    c.pod_ip(&["link", "del", "dev", &c.ifname]);
                }
            }
            if c.conf["ipam"]["type"].is_string() {
                c.ipam("DEL");
            } else {
                release("weave-ipam", &key);
            }
        }
        _ => {}
    }
}

// ---- Azure CNI ----

const AZURE_POOL: &str = "10.240.0.0/16";
const AZURE_GATEWAY: &str = "10.240.0.1";
const AZURE_TRANSPARENT_GW: &str = "169.254.1.1";

fn azure_ipam(c: &Cni) {
    let key = c.key();
    match c.command.as_str() {
        "ADD" => {
            let (first, last) = pool_hosts(AZURE_POOL).unwrap();
            let ip = allocate("azure-vnet-ipam", first, last, &[], &key)
                .unwrap_or_else(|e| c.fail(11, e));
            c.print(json!({
                "ips": [{"address": format!("{ip}/16"), "gateway": AZURE_GATEWAY}],
                "routes": [{"dst": "0.0.0.0/0", "gw": AZURE_GATEWAY}],
            }));
        }
        "DEL" => {
            release("azure-vnet-ipam", &key);
        }
        _ => {}
    }
}

fn azure_vnet(c: &Cni) {
    // In Kubernetes the host veth is named from the pod ("namespace.name"), as Calico's.
    let host = format!("azv{}", &sha1_hex(&pod_id(c))[..11]);
    let mode = c.conf["mode"].as_str().unwrap_or("transparent");
    if mode != "transparent" && mode != "bridge" {
        c.fail(
            7,
            format!("unsupported mode {mode} (the stand-in has transparent and bridge)"),
        );
    }
    match c.command.as_str() {
        "ADD" => {
            let ipam = c.ipam("ADD");
            let Some(addr) = ipam["ips"][0]["address"].as_str().map(String::from) else {
                c.fail(11, format!("IPAM returned no address: {ipam}"))
            };
            let ip = addr.split('/').next().unwrap_or("").to_string();
            let gw = ipam["ips"][0]["gateway"]
                .as_str()
                .unwrap_or(AZURE_GATEWAY)
                .to_string();
            if link_exists(&host) {
                let _ = run("ip", &["link", "del", "dev", &host]);
            }
            c.veth(&host, None);
            c.pod_ip(&["addr", "add", &addr, "dev", &c.ifname]);
            c.pod_ip(&["link", "set", "dev", &c.ifname, "up"]);
            if mode == "transparent" {
                let host_mac = link_mac(&host);
                let gw0 = AZURE_TRANSPARENT_GW;
                // Everything goes through the host: the kernel's subnet route goes.
                if let Some((a, p)) = parse_cidr(&addr) {
                    let net = format!("{}/{p}", Ipv4Addr::from(u32::from(a) & mask(p)));
                    c.pod_ip(&["route", "del", &net, "dev", &c.ifname]);
                }
                c.pod_ip(&["route", "add", gw0, "dev", &c.ifname, "scope", "link"]);
                c.pod_ip(&["route", "add", "default", "via", gw0, "dev", &c.ifname]);
                c.pod_ip(&[
                    "neigh",
                    "add",
                    gw0,
                    "lladdr",
                    &host_mac,
                    "dev",
                    &c.ifname,
                    "nud",
                    "permanent",
                ]);
                c.ip(&[
                    "route",
                    "add",
                    &format!("{ip}/32"),
                    "dev",
                    &host,
                    "scope",
                    "link",
                ]);
            } else {
                if !link_exists("azure0") {
                    c.ip(&["link", "add", "azure0", "type", "bridge"]);
                    c.ip(&["addr", "add", &format!("{gw}/16"), "dev", "azure0"]);
                    c.ip(&["link", "set", "dev", "azure0", "up"]);
                }
                c.ip(&["link", "set", "dev", &host, "master", "azure0"]);
                c.pod_ip(&["route", "add", "default", "via", &gw, "dev", &c.ifname]);
            }
            c.print(json!({
                // Azure's result: the interface by name and MAC, no sandbox; IPs without an index.
                "interfaces": [{"name": c.ifname, "mac": c.pod_mac()}],
                "ips": [{"address": addr, "gateway": gw}],
                "routes": [{"dst": "0.0.0.0/0", "gw": gw}],
                "dns": match c.conf["dns"]["Nameservers"].as_array() {
                    Some(n) => json!({"nameservers": n}),
                    None => json!({}),
                },
            }));
        }
        "DEL" => {
            c.ipam("DEL");
            if link_exists(&host) {
                c.ip(&["link", "del", "dev", &host]);
            }
        }
        _ => {}
    }
}
