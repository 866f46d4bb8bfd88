//! `scripts/soak`: one node under chaos, then a count of everything left behind.
//!
//! `plexus-soak [--workers N] [--cycles N] [--seed S]` (defaults 16, 1000, from the clock). As root,
//! in private network namespaces (a "node" and one per sandbox) and a temporary directory, like the
//! e2e suite. Workers run mixed ADD/CHECK/DEL cycles over pods with 0–3 extra networks (real
//! bridge, macvlan, host-local, tuning and bandwidth), half through the exec'd plugin (thin, its own
//! kubeconfig) and half through the shim and `plexus daemon`, against the fixture API server (a test
//! fixture, not a kube-apiserver). Faults at random: SIGKILL of plexus mid-call, SIGKILL of a
//! delegate, a delegate that hangs past its deadline, API errors and slowness, the API server
//! down (connections cut and refused) and back, SIGKILL of the daemon
//! (restarted), the netns deleted before DEL, duplicate DELs, DELs without an ADD, GCs whose
//! valid-attachments leave some live sandboxes out.
//!
//! Each sandbox is checked for links right after its DEL succeeded; after the run, cache records
//! and reservations are counted (every cycle ended with a successful DEL, so nothing may be
//! held), then come the runtime's final DEL of every container and a GC with nothing valid, and
//! the count: links, host-local reservations, cache records (and temp files), tc qdiscs, ifb
//! devices, iptables rules (the cluster network chains portmap, with a host port per sandbox).
//! No soak network has a device, so device-info files are not part of it (the SR-IOV e2e tests
//! check their removal). Every call must have succeeded or printed a CNI error object, none
//! may have run past its deadline, and every DEL must have succeeded. Prints the faults per kind,
//! what was left, the seed; ends with `soak: N calls, N faults, N leaks`. Exit 0 only with no leak
//! and no violation.

use plexus_e2e::daemon::NodeDaemon;
use plexus_e2e::{sh, Fixture, TestEnv};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// xorshift64*: reproducible from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What a macvlan plugin killed between creating its link (under a temporary name, in the pod)
/// and renaming it leaves; `half-y` does it and fails, as if killed there.
const HALF_DONE: &str = "ns=$(basename \"$CNI_NETNS\") && ip link add veth0badc0de link soakm0 netns \"$ns\" type macvlan mode bridge";

/// The NADs pods pick from (name, config); `hang-x` only comes with the hang fault, `half-y`
/// with the cut-short one.
fn nads(env: &TestEnv) -> Vec<(&'static str, Value)> {
    vec![
        (
            "br-a",
            json!({"cniVersion": "1.0.0", "name": "br-a", "type": "bridge", "bridge": "soakbr1",
            "ipam": env.host_local("br-a", "10.201.0.0/16")}),
        ),
        (
            "mv-b",
            json!({"cniVersion": "1.0.0", "name": "mv-b", "type": "macvlan", "master": "soakm0",
            "mode": "bridge", "ipam": env.host_local("mv-b", "10.202.0.0/16")}),
        ),
        (
            "tuned-c",
            json!({"cniVersion": "1.0.0", "name": "tuned-c", "plugins": [
            {"type": "bridge", "bridge": "soakbr2", "ipam": env.host_local("tuned-c", "10.203.0.0/16")},
            {"type": "tuning", "mtu": 1400, "promisc": true}]}),
        ),
        (
            "bw-d",
            json!({"cniVersion": "1.0.0", "name": "bw-d", "plugins": [
            {"type": "bridge", "bridge": "soakbr3", "ipam": env.host_local("bw-d", "10.204.0.0/16")},
            {"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 80_000,
             "egressRate": 8_000_000, "egressBurst": 80_000}]}),
        ),
        (
            "hang-x",
            json!({"cniVersion": "1.0.0", "name": "hang-x", "type": "test-hang"}),
        ),
        (
            "half-y",
            json!({"cniVersion": "1.0.0", "name": "half-y", "type": "test-fail",
                "run": ["sh", "-c", HALF_DONE]}),
        ),
    ]
}

const IPAM_NETS: &[&str] = &["cluster", "br-a", "mv-b", "tuned-c", "bw-d"];
const NODE_KEEP: &[&str] = &[
    "lo", "soakbr0", "soakbr1", "soakbr2", "soakbr3", "soakm0", "soakm1",
];
/// Longer than any call may take: the delegate deadline (3 s) times the plugins of a pod, plus
/// the API's slowness. A call past it hung.
const HUNG: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    KillPlexus,
    KillDelegate,
}

struct Node {
    env: TestEnv,
    api: Fixture,
    daemon: Mutex<Option<NodeDaemon>>,
    /// The daemon's PID (its delegates are its children, not the shim's).
    daemon_pid: std::sync::atomic::AtomicU32,
    thin: Value,
    shim: Value,
    /// Sandboxes the runtime believes in (from just before ADD to after their DEL): (id, netns).
    live: Mutex<BTreeMap<String, String>>,
    /// Every container ID used, with its netns path: the runtime's final DEL covers them all.
    all: Mutex<BTreeMap<String, String>>,
    calls: AtomicUsize,
    faults: Mutex<BTreeMap<&'static str, usize>>,
    /// How calls ended, by verb: "ADD ok", "ADD code 11", "DEL killed", …
    outcomes: Mutex<BTreeMap<String, usize>>,
    violations: Mutex<Vec<String>>,
    /// Links found in a sandbox after its DEL succeeded.
    pod_leaks: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Node {
    fn fault(&self, kind: &'static str) {
        *self.faults.lock().unwrap().entry(kind).or_default() += 1;
    }
    fn outcome(&self, what: String) {
        *self.outcomes.lock().unwrap().entry(what).or_default() += 1;
    }
    fn violation(&self, v: String) {
        eprintln!("soak: VIOLATION {v}");
        self.violations.lock().unwrap().push(v);
    }

    /// One CNI call as the runtime makes it; `fault` kills plexus or its delegate partway.
    /// Returns the exit code (None if we killed it).
    #[allow(clippy::too_many_arguments)] // one CNI call's whole environment, spelled out
    fn call(
        &self,
        rng: &mut Rng,
        conf: &Value,
        verb: &str,
        id: &str,
        netns: &str,
        pod: &str,
        fault: Fault,
    ) -> Option<i32> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
        // The runtime's port mappings (portmap's iptables chains): one host port per sandbox.
        let mut conf = conf.clone();
        let port = 20000 + (crc(id) % 20000) as u64;
        conf["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": port, "containerPort": 80, "protocol": "tcp"}]});
        let conf = &conf;
        let child = self.spawn(
            &[
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            conf,
        );
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let killed = match fault {
            Fault::None => false,
            Fault::KillPlexus | Fault::KillDelegate => {
                std::thread::sleep(Duration::from_millis(rng.below(150)));
                if fault == Fault::KillPlexus {
                    // SAFETY: a plain kill(2) of our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    self.fault("kill plexus");
                } else {
                    // Thin: plexus's children; through the shim: the daemon's.
                    let parent = if conf.get("daemonSocketDir").is_some() {
                        self.daemon_pid.load(Ordering::Relaxed) as i32
                    } else {
                        pid
                    };
                    let hit = Command::new("pkill")
                        .args(["-KILL", "-P", &parent.to_string()])
                        .status()
                        .is_ok_and(|s| s.success());
                    if hit {
                        self.fault("kill delegate");
                    }
                }
                true
            }
        };
        let out = match rx.recv_timeout(HUNG) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                self.violation(format!("{verb} {id}: {e}"));
                return None;
            }
            Err(_) => {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                self.violation(format!("{verb} {id}: still running after {HUNG:?}"));
                return None;
            }
        };
        let code = out.status.code();
        if killed && fault == Fault::KillPlexus {
            self.outcome(format!("{verb} killed"));
            return None;
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        match code {
            Some(0) => self.outcome(format!("{verb} ok")),
            _ => {
                let c = serde_json::from_str::<Value>(&stdout)
                    .ok()
                    .and_then(|v| v["code"].as_u64());
                eprintln!("soak: {verb} {id}: {}", stdout.trim());
                self.outcome(format!(
                    "{verb} CNI error code {}",
                    c.map_or("?".into(), |c| c.to_string())
                ));
            }
        }
        match code {
            Some(0) => {
                if verb == "ADD" && serde_json::from_str::<Value>(&stdout).is_err() {
                    self.violation(format!("{verb} {id}: exit 0 without a result: {stdout:?}"));
                }
            }
            Some(c) => match serde_json::from_str::<Value>(&stdout) {
                Ok(v) if v["code"].is_u64() && v["msg"].is_string() => {}
                _ => self.violation(format!(
                    "{verb} {id}: exit {c} without a CNI error object: {stdout:?}"
                )),
            },
            None => self.violation(format!("{verb} {id}: killed by {:?}", out.status)),
        }
        code
    }

    /// plexus in the node netns as the runtime runs it, `conf` on its stdin.
    fn spawn(&self, vars: &[(&str, &str)], conf: &Value) -> std::process::Child {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.env.node])
            .arg(plexus_e2e::plexus_bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", &self.env.plugins);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn plexus");
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes());
        child
    }

    /// DEL until it succeeds (a runtime retries a failed DEL); a DEL that fails on its own, with
    /// no fault of ours, is a violation.
    fn del(&self, rng: &mut Rng, conf: &Value, id: &str, netns: &str, pod: &str, fault: Fault) {
        match self.call(rng, conf, "DEL", id, netns, pod, fault) {
            Some(0) => {}
            None if fault != Fault::None => {
                let again = self.call(rng, conf, "DEL", id, netns, pod, Fault::None);
                if again != Some(0) {
                    self.violation(format!("DEL {id} retried after a kill failed: {again:?}"));
                }
            }
            other => {
                self.violation(format!("DEL {id} failed: {other:?}"));
            }
        }
    }

    fn worker(&self, w: usize, cycles: usize, seed: u64) {
        let mut rng = Rng::new(seed ^ ((w as u64 + 1) << 32));
        let pool = ["br-a", "mv-b", "tuned-c", "bw-d"];
        for c in 0..cycles {
            let id = format!("soak-{w}-{c}");
            let pod = format!("pod-{w}-{c}");
            let ns = format!("plxs-{}-{w}-{c}", std::process::id());
            let netns = format!("/run/netns/{ns}");
            sh(&["ip", "netns", "add", &ns]);
            let mut picked: Vec<&str> = pool.to_vec();
            let n = rng.below(4) as usize;
            while picked.len() > n {
                picked.remove(rng.below(picked.len() as u64) as usize);
            }
            if rng.chance(3) || (w == 0 && c == 1) {
                picked.push("hang-x");
                self.fault("delegate hangs past its deadline");
            } else if rng.chance(3) || [1, 6, 11].contains(&c) {
                // Early, midway and late in a small run too, whatever the API server is doing.
                picked.push("half-y");
                self.fault("delegate cut short after creating its link");
            }
            let annotation = picked.join(",");
            let mut ann = json!({});
            if !annotation.is_empty() {
                ann["k8s.v1.cni.cncf.io/networks"] = json!(annotation);
            }
            self.api.create_pod("default", &pod, ann);
            let conf = if rng.chance(50) {
                &self.thin
            } else {
                &self.shim
            };
            self.all.lock().unwrap().insert(id.clone(), netns.clone());
            self.live.lock().unwrap().insert(id.clone(), netns.clone());
            let fault = match rng.below(100) {
                0..=7 => Fault::KillPlexus,
                8..=12 => Fault::KillDelegate,
                _ => Fault::None,
            };
            let added = self.call(&mut rng, conf, "ADD", &id, &netns, &pod, fault) == Some(0);
            if added && rng.chance(30) {
                self.call(&mut rng, conf, "CHECK", &id, &netns, &pod, Fault::None);
            }
            if rng.chance(5) {
                sh(&["ip", "netns", "del", &ns]);
                self.fault("netns deleted before DEL");
            }
            let del_fault = if rng.chance(5) {
                Fault::KillPlexus
            } else {
                Fault::None
            };
            self.del(&mut rng, conf, &id, &netns, &pod, del_fault);
            if rng.chance(10) {
                self.fault("duplicate DEL");
                self.del(&mut rng, conf, &id, &netns, &pod, Fault::None);
            }
            self.live.lock().unwrap().remove(&id);
            // The runtime's DEL succeeded: the sandbox holds nothing but lo (its netns may be
            // gone already, with the fault above).
            if let Ok(out) = Command::new("ip").args(["-n", &ns, "-o", "link"]).output() {
                if out.status.success() {
                    for l in String::from_utf8_lossy(&out.stdout).lines() {
                        let name = l.split(':').nth(1).unwrap_or("").trim();
                        let name = name.split('@').next().unwrap_or(name);
                        if name != "lo" {
                            self.pod_leaks
                                .lock()
                                .unwrap()
                                .push(format!("pod link {name} in {ns} after its DEL"));
                        }
                    }
                }
            }
            if rng.chance(3) {
                self.fault("DEL without ADD");
                let never = format!("soak-never-{w}-{c}");
                self.del(&mut rng, conf, &never, &netns, &pod, Fault::None);
            }
            let _ = self.api.call(
                "DELETE",
                &format!("/api/v1/namespaces/default/pods/{pod}"),
                None,
            );
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }

    /// GC now and then, its valid-attachments leaving out a live sandbox one time in five.
    fn gc_loop(&self, seed: u64) {
        let mut rng = Rng::new(seed ^ 0x6763);
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
            let mut valid: Vec<String> = self.live.lock().unwrap().keys().cloned().collect();
            if !valid.is_empty() && rng.chance(20) {
                valid.remove(rng.below(valid.len() as u64) as usize);
                self.fault("GC with partial valid-attachments");
            }
            let conf = if rng.chance(50) {
                &self.thin
            } else {
                &self.shim
            };
            self.gc(conf, &valid);
        }
    }

    fn gc(&self, conf: &Value, valid: &[String]) {
        let list: Vec<Value> = valid
            .iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        let mut c = conf.clone();
        c["cni.dev/valid-attachments"] = json!(list);
        c["cni.dev/attachments"] = json!(list);
        c["cniVersion"] = json!("1.1.0");
        // GC is for the whole network: no container, no netns.
        self.calls.fetch_add(1, Ordering::Relaxed);
        let child = self.spawn(&[("CNI_COMMAND", "GC")], &c);
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(HUNG) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                self.violation(format!("GC: {e}"));
                return;
            }
            Err(_) => {
                // SAFETY: a plain kill(2) of our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                self.violation(format!("GC still running after {HUNG:?}"));
                return;
            }
        };
        self.outcome(format!(
            "GC {}",
            if out.status.success() {
                "ok"
            } else {
                "CNI error"
            }
        ));
        if !out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            match serde_json::from_str::<Value>(&stdout) {
                Ok(v) if v["code"].is_u64() && v["msg"].is_string() => {}
                _ => self.violation(format!(
                    "GC: {:?} without a CNI error: {stdout:?}",
                    out.status
                )),
            }
        }
    }

    /// Kill the daemon now and then, and start it again.
    fn daemon_loop(&self, seed: u64) {
        let mut rng = Rng::new(seed ^ 0x6461);
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1500 + rng.below(3000)));
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let mut d = self.daemon.lock().unwrap();
            if let Some(d) = d.as_mut() {
                d.kill();
                self.fault("kill daemon");
                std::thread::sleep(Duration::from_millis(rng.below(500)));
                let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    d.restart(&self.api);
                }));
                match restarted {
                    Ok(()) => self.daemon_pid.store(d.pid(), Ordering::Relaxed),
                    Err(_) => {
                        self.violation("the daemon did not come back after a kill".into());
                        return;
                    }
                }
            }
        }
    }

    /// API errors and slowness now and then (the fixture's faults expire after `times`), and the
    /// API server going down (every connection cut, new ones refused) and coming back.
    fn api_loop(&self, seed: u64) {
        let mut rng = Rng::new(seed ^ 0x6170);
        let mut round = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            if round > 0 {
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            }
            round += 1;
            // The second round always takes it down, so a small run has it too.
            if round == 2 || (round > 2 && rng.chance(15)) {
                self.api.outage(300 + rng.below(1700));
                self.fault("API server killed (down, then back)");
            } else if round == 1 || rng.chance(50) {
                self.api
                    .fault(json!({"pathPrefix": "/api/v1/namespaces/default/pods",
                    "method": "GET", "status": 500, "times": 1 + rng.below(3), "watch": false}));
                self.fault("API server error");
            } else {
                self.api.fault(
                    json!({"pathPrefix": "/api", "method": "GET", "delayMs": 200 + rng.below(800),
                    "times": 1 + rng.below(4), "watch": false}),
                );
                self.fault("API server slow");
            }
        }
    }
}

/// A small stable hash of a container ID (its host port).
fn crc(s: &str) -> u32 {
    s.bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619))
}

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    match args.get(i + 1).and_then(|v| v.parse().ok()) {
        Some(v) => Some(v),
        None => {
            eprintln!("plexus-soak: {name} needs a number");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for a in &args {
        if a.starts_with("--") && !["--workers", "--cycles", "--seed"].contains(&a.as_str()) {
            eprintln!("usage: plexus-soak [--workers N] [--cycles N] [--seed S]");
            std::process::exit(2);
        }
    }
    let workers = arg(&args, "--workers").unwrap_or(16).max(1) as usize;
    let cycles = arg(&args, "--cycles").unwrap_or(1000) as usize;
    let seed = arg(&args, "--seed").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let t0 = Instant::now();
    eprintln!("soak: seed {seed}, {workers} workers, {cycles} cycles");

    let env = TestEnv::new("soak");
    let api = Fixture::start_tls(&env, "soak-token");
    env.node_veth("soakm0", "soakm1");
    for (name, config) in nads(&env) {
        api.create_nad("default", name, &config);
    }
    let mut ipam = env.host_local("cluster", "10.200.0.0/16");
    ipam["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    let cluster = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
        {"type": "bridge", "bridge": "soakbr0", "isGateway": true, "ipMasq": false, "ipam": ipam},
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]});
    let mut base = env.plexus_conf("1.1.0", vec![cluster]);
    base["delegateTimeoutSeconds"] = json!(3);
    base["logFile"] = json!(env.path().join("plexus.log"));
    base["logToStderr"] = json!(false);
    base["logLevel"] = json!("verbose");
    let mut thin = base.clone();
    thin["kubeconfig"] = json!(api.kubeconfig);
    let daemon = NodeDaemon::start(&env, &api, json!({"logLevel": "verbose"}));
    let daemon_pid = daemon.pid();
    let mut shim = base.clone();
    shim["daemonSocketDir"] = json!(daemon.socket_dir);
    let iptables_before = sh(&["ip", "netns", "exec", &env.node, "iptables-save"]);
    let node = Node {
        env,
        api,
        daemon: Mutex::new(Some(daemon)),
        thin,
        shim,
        live: Mutex::new(BTreeMap::new()),
        all: Mutex::new(BTreeMap::new()),
        calls: AtomicUsize::new(0),
        faults: Mutex::new(BTreeMap::new()),
        outcomes: Mutex::new(BTreeMap::new()),
        violations: Mutex::new(vec![]),
        pod_leaks: Mutex::new(vec![]),
        stop: AtomicBool::new(false),
        daemon_pid: std::sync::atomic::AtomicU32::new(daemon_pid),
    };

    // Cycles split over the workers.
    std::thread::scope(|s| {
        let n = &node;
        let gc = s.spawn(move || n.gc_loop(seed));
        let dm = s.spawn(move || n.daemon_loop(seed));
        let ap = s.spawn(move || n.api_loop(seed));
        let mut handles = vec![];
        for w in 0..workers {
            let share = cycles / workers + usize::from(w < cycles % workers);
            handles.push(s.spawn(move || n.worker(w, share, seed)));
        }
        for h in handles {
            if h.join().is_err() {
                n.violation("a worker panicked".into());
            }
        }
        n.stop.store(true, Ordering::Relaxed);
        for h in [gc, dm, ap] {
            let _ = h.join();
        }
    });
    node.api.clear_faults();

    // Every cycle ended with a DEL that succeeded: before the final DELs, nothing may be held
    // (a call the daemon finished after its shim was killed, say, would show here).
    std::thread::sleep(Duration::from_millis(500));
    let mut leaks: Vec<String> = node.pod_leaks.lock().unwrap().clone();
    // (A writer killed mid-write leaves a temp file, not a record: GC sweeps those, below.)
    for f in node.env.cache_files() {
        if !f.starts_with(".tmp-") {
            leaks.push(format!("cache record {f} before the final DELs"));
        }
    }
    for net in IPAM_NETS {
        for r in node.env.reservations(net) {
            leaks.push(format!(
                "host-local {net} reservation {r} before the final DELs"
            ));
        }
    }

    // The runtime's final DEL of every container, and a GC that keeps nothing.
    let mut rng = Rng::new(seed ^ 0xde1);
    let all: Vec<(String, String)> = node
        .all
        .lock()
        .unwrap()
        .iter()
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    for (id, netns) in &all {
        node.del(&mut rng, &node.thin, id, netns, "final", Fault::None);
    }
    node.gc(&node.thin, &[]);
    node.gc(&node.shim, &[]);

    // What is left.
    let env = &node.env;
    for l in env.node_links() {
        if !NODE_KEEP.contains(&l.as_str()) {
            leaks.push(format!("node link {l}"));
        }
    }
    let netns_left = sh(&["ip", "netns", "list"]);
    for l in netns_left.lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        if name.starts_with(&format!("plxs-{}-", std::process::id())) {
            leaks.push(format!("netns {name}"));
        }
    }
    for net in IPAM_NETS {
        for r in env.reservations(net) {
            leaks.push(format!("host-local {net} reservation {r}"));
        }
    }
    for f in env.cache_files() {
        leaks.push(format!("cache record {f}"));
    }
    let qdiscs = sh(&["ip", "netns", "exec", &env.node, "tc", "qdisc", "show"]);
    for q in qdiscs.lines() {
        if q.contains("tbf") || q.contains("ingress") {
            leaks.push(format!("tc qdisc {q}"));
        }
    }
    let iptables_after = sh(&["ip", "netns", "exec", &env.node, "iptables-save"]);
    // portmap keeps its top-level chains (CNI-HOSTPORT-*) and their jumps for the next pod, as
    // on any node; what belongs to a sandbox is its CNI-DN-* chain and the rules naming its ID.
    for l in iptables_after.lines() {
        let per_sandbox = l.starts_with(":CNI-DN-")
            || l.starts_with(":CNI-SN-")
            || (l.starts_with("-A ") && l.contains(" id: \\\"soak-"));
        if per_sandbox && !iptables_before.contains(l) {
            leaks.push(format!("iptables: {l}"));
        }
    }

    // What plexus itself cleared away after ADDs cut short (links their delegates' DELs missed).
    let marker = "left by an ADD that was cut short";
    let thin_log = std::fs::read_to_string(node.env.path().join("plexus.log")).unwrap_or_default();
    let daemon_log = node
        .daemon
        .lock()
        .unwrap()
        .as_ref()
        .map(|d| d.log())
        .unwrap_or_default();
    let swept: Vec<&str> = thin_log
        .lines()
        .chain(daemon_log.lines())
        .filter(|l| l.contains(marker))
        .collect();

    let faults = node.faults.lock().unwrap().clone();
    let violations = node.violations.lock().unwrap().clone();
    let calls = node.calls.load(Ordering::Relaxed);
    let nfaults: usize = faults.values().sum();
    println!(
        "soak: seed {seed}, {workers} workers, {cycles} cycles, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    println!("faults injected:");
    for (k, v) in &faults {
        println!("  {v:>6}  {k}");
    }
    println!("calls ended:");
    for (k, v) in node.outcomes.lock().unwrap().iter() {
        println!("  {v:>6}  {k}");
    }
    println!(
        "checked: links (in each sandbox after its DEL, the node's), host-local reservations and cache records (before and after the final DELs), tc qdiscs, ifb devices, iptables rules (portmap)"
    );
    println!(
        "cleared away by plexus after ADDs cut short: {} link(s)",
        swept.len()
    );
    for l in swept.iter().take(10) {
        println!("  {}", l.trim());
    }
    if leaks.is_empty() {
        println!("left over: nothing");
    } else {
        println!("left over:");
        for l in &leaks {
            println!("  {l}");
        }
    }
    if !violations.is_empty() {
        println!("protocol violations:");
        for v in &violations {
            println!("  {v}");
        }
    }
    println!("replay: scripts/soak --workers {workers} --cycles {cycles} --seed {seed}");
    println!(
        "soak: {calls} calls, {nfaults} faults, {} leaks",
        leaks.len()
    );
    drop(node);
    if !leaks.is_empty() || !violations.is_empty() {
        std::process::exit(1);
    }
}
