//! What plexus costs per pod, against the floor: the same delegates with the same configs run
//! directly, one exec per plugin, as a runtime would run them without a meta-plugin. Both sides run
//! interleaved in one process, in one "node" netns, against the fixture API server (plexus only:
//! the floor needs no API). Prints a markdown table; `--write FILE` also writes it there.
//!
//! Usage (root): plexus-bench [--iterations N] [--rounds R] [--write docs/benchmarks.md]

use plexus::chain::plugin_config;
use plexus::cni::CniResult;
use plexus::config::Network;
use plexus_e2e::{plexus_bin, sh, Fixture, TestEnv};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Run {
    stdout: Vec<u8>,
    ok: bool,
    maxrss_kb: i64,
    /// user+sys CPU of the process and of every descendant it waited for (its delegates).
    cpu_ms: f64,
}

fn tv_ms(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 * 1000.0 + tv.tv_usec as f64 / 1000.0
}

/// Spawn a CNI plugin with env and stdin; wait with wait4 to get its peak RSS.
fn exec(bin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut cmd = Command::new(bin);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; usage is a valid out-pointer.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(r > 0, "wait4 failed");
    std::mem::forget(child);
    Run {
        stdout,
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        maxrss_kb: usage.ru_maxrss,
        cpu_ms: tv_ms(usage.ru_utime) + tv_ms(usage.ru_stime),
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    let p99 = v[((v.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)];
    (med, p99)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the floor's ADD attached: each network, its ifname and its (last) result.
type FloorAdded<'a> = Vec<(&'a Network, String, Option<Value>)>;

struct Bench {
    env: TestEnv,
    api: Fixture,
    plugins: PathBuf,
    /// The thin plugin's config (with a kubeconfig).
    conf: Value,
    /// The shim's config: the same keys, the daemon's socket, no kubeconfig.
    shim_conf: Value,
    daemon: Daemon,
    cluster: Network,
    nads: Vec<Network>,
}

/// plexus's sides of the comparison.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Thin,
    Daemon,
}

/// The node daemon, started from the release binary in the node netns the bench runs in.
struct Daemon {
    child: std::process::Child,
    socket_dir: PathBuf,
    metrics_port: u16,
}

impl Daemon {
    fn start(env: &TestEnv, api: &Fixture) -> Daemon {
        let socket_dir = env.path().join("run-multus");
        let metrics_port = 19092;
        let config = env.path().join("daemon-config.json");
        std::fs::write(
            &config,
            json!({"socketDir": socket_dir, "multusConfigFile": "none", "kubeconfig": api.kubeconfig,
                   "metricsPort": metrics_port, "logLevel": "warn", "maxConcurrentRequests": 32})
            .to_string(),
        )
        .unwrap();
        let log = std::fs::File::create(env.path().join("daemon.log")).unwrap();
        let child = Command::new(plexus_bin())
            .args(["daemon", "--config"])
            .arg(&config)
            .env("MULTUS_NODE_NAME", "node-1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            socket_dir,
            metrics_port,
        };
        let t = Instant::now();
        while d.get("/readyz").map(|r| r.status) != Some(200) {
            assert!(t.elapsed() < Duration::from_secs(60), "daemon not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn get(&self, path: &str) -> Option<plexus::unix_http::Reply> {
        plexus::unix_http::call(
            &self.socket_dir.join("multus.sock"),
            "GET",
            path,
            None,
            vec![],
            Duration::from_secs(5),
        )
        .ok()
    }

    /// The daemon's CPU so far (its own and its reaped children's: the delegates), in ms.
    fn cpu_ms(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // utime, stime, cutime, cstime: fields 14-17 of stat(5), counted after the ")".
        let ticks: f64 = fields[11..15]
            .iter()
            .map(|f| f.parse::<f64>().unwrap())
            .sum();
        ticks * 1000.0 / 100.0
    }

    /// VmRSS and VmHWM of the daemon, KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn metric(&self, prefix: &str) -> f64 {
        let port = self.metrics_port;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = rt.block_on(async move {
            let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let r = plexus::unix_http::request_over(s, "GET", "/metrics", None, vec![])
                .await
                .unwrap();
            String::from_utf8(r.body).unwrap()
        });
        plexus_e2e::daemon::metric(&text, prefix)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bench {
    fn cni_env<'a>(
        verb: &'a str,
        id: &'a str,
        netns: &'a str,
        ifname: &'a str,
        args: &'a str,
        path: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", args),
            ("CNI_PATH", path),
        ]
    }

    fn plexus(&self, verb: &str, id: &str, netns: &str, pod: &str) -> Run {
        self.run_side(Side::Thin, verb, id, netns, pod)
    }

    /// One call as the runtime makes it: the plugin (thin), or the shim of the daemon.
    fn run_side(&self, side: Side, verb: &str, id: &str, netns: &str, pod: &str) -> Run {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={id}");
        let path = self.plugins.display().to_string();
        let conf = match side {
            Side::Thin => &self.conf,
            Side::Daemon => &self.shim_conf,
        };
        let r = exec(
            &plexus_bin(),
            &Self::cni_env(verb, id, netns, "eth0", &args, &path),
            conf.to_string().as_bytes(),
        );
        assert!(
            r.ok,
            "plexus {verb} failed: {}",
            String::from_utf8_lossy(&r.stdout)
        );
        r
    }

    /// The floor: each plugin of each network exec'd directly, prevResult chained, DEL in reverse
    /// with the ADD result — exactly the configs plexus sends.
    /// Returns the CPU time (ms) of every exec, delegates of delegates included.
    fn floor(&self, k: usize, id: &str, netns: &str, pod: &str) -> f64 {
        let (added, cpu) = self.floor_add(k, id, netns, pod);
        cpu + self.floor_del(&added, id, netns, pod)
    }

    /// The floor's ADD half: what it attached (for its DEL) and the CPU time (ms).
    fn floor_add(&self, k: usize, id: &str, netns: &str, pod: &str) -> (FloorAdded<'_>, f64) {
        let mut cpu = 0.0;
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={id}");
        let path = self.plugins.display().to_string();
        let nets: Vec<(&Network, String)> = std::iter::once((&self.cluster, "eth0".to_string()))
            .chain(
                self.nads[..k]
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n, format!("net{}", i + 1))),
            )
            .collect();
        let mut added = Vec::new();
        for (net, ifname) in nets {
            let mut prev: Option<Value> = None;
            for p in 0..net.plugins.len() {
                let conf = plugin_config(
                    net,
                    p,
                    &plexus::plan::DelegateInputs::default(),
                    prev.as_ref(),
                    &Map::new(),
                );
                let bin = self.plugins.join(net.plugin_type(p));
                let r = exec(
                    &bin,
                    &Self::cni_env("ADD", id, netns, &ifname, &args, &path),
                    &conf,
                );
                assert!(
                    r.ok,
                    "floor ADD failed: {}",
                    String::from_utf8_lossy(&r.stdout)
                );
                cpu += r.cpu_ms;
                let (res, _) = CniResult::parse(&r.stdout, net.cni_version).unwrap();
                prev = Some(res.to_value(net.cni_version).unwrap());
            }
            added.push((net, ifname, prev));
        }
        (added, cpu)
    }

    /// The floor's DEL half, in reverse order with each network's ADD result; CPU time (ms).
    fn floor_del(&self, added: &FloorAdded<'_>, id: &str, netns: &str, pod: &str) -> f64 {
        let mut cpu = 0.0;
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={id}");
        let path = self.plugins.display().to_string();
        for (net, ifname, prev) in added.iter().rev() {
            for p in (0..net.plugins.len()).rev() {
                let conf = plugin_config(
                    net,
                    p,
                    &plexus::plan::DelegateInputs::default(),
                    prev.as_ref(),
                    &Map::new(),
                );
                let bin = self.plugins.join(net.plugin_type(p));
                let r = exec(
                    &bin,
                    &Self::cni_env("DEL", id, netns, ifname, &args, &path),
                    &conf,
                );
                assert!(r.ok, "floor DEL failed");
                cpu += r.cpu_ms;
            }
        }
        cpu
    }

    fn pod_annotation(k: usize) -> String {
        (1..=k)
            .map(|i| format!("net-{i}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn make_pod(&self, name: &str, k: usize) {
        self.api.create_pod(
            "bench",
            name,
            json!({"k8s.v1.cni.cncf.io/networks": Self::pod_annotation(k)}),
        );
    }
}

/// Enter the node netns for good (this thread, before any other exists), with /sys remounted for it
/// as `ip netns exec` would, so every child starts there without paying for `ip netns exec`.
fn enter(netns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .unwrap();
    let _ = umount2("/sys", MntFlags::MNT_DETACH);
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

/// plexus's benchmark: per-pod cost against the same delegates run directly.
#[derive(clap::Parser)]
struct Args {
    /// ADD+DEL pairs per configuration and round.
    #[arg(long, default_value_t = 60)]
    iterations: usize,
    /// Rounds, alternating plexus and the floor.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Pause after each timed ADD and DEL of the per-pod table (ms), the same for every side.
    #[arg(long, default_value_t = 150)]
    settle_ms: u64,
    /// Rewrite this markdown file with the results.
    #[arg(long)]
    write: Option<String>,
}

fn main() {
    let Args {
        iterations,
        rounds,
        settle_ms,
        write,
    } = clap::Parser::parse();

    let env = TestEnv::new("bench");
    let api = Fixture::start(&env);
    enter(&env.node);
    sh(&[
        "ip", "link", "add", "bm0", "type", "veth", "peer", "name", "bm1",
    ]);
    sh(&["ip", "link", "set", "bm0", "up"]);
    sh(&["ip", "link", "set", "bm1", "up"]);
    let plugins = env.plugins.clone();
    let cluster_v = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "bridge", "bridge": "bbr0", "isGateway": true,
        "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.149.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": env.ipam_dir("cluster")}}]});
    let mut nads = Vec::new();
    for i in 1..=4 {
        let name = format!("net-{i}");
        let v = json!({"cniVersion": "1.0.0", "name": name, "type": "macvlan", "master": "bm0", "mode": "bridge",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{}.0.0/16", 150 + i)}]], "dataDir": env.ipam_dir(&name)}});
        api.create_nad("bench", &name, &v);
        nads.push(Network::from_value(v, "bench").unwrap());
    }
    let mut conf = env.plexus_conf("1.1.0", vec![cluster_v.clone()]);
    conf["kubeconfig"] = json!(api.kubeconfig);
    conf["binDir"] = json!(plugins);
    conf["logLevel"] = json!("error");
    let daemon = Daemon::start(&env, &api);
    let mut shim_conf = conf.clone();
    shim_conf.as_object_mut().unwrap().remove("kubeconfig");
    shim_conf["daemonSocketDir"] = json!(daemon.socket_dir);
    let b = Bench {
        cluster: Network::from_value(cluster_v, "bench").unwrap(),
        env,
        api,
        plugins,
        conf,
        shim_conf,
        daemon,
        nads,
    };
    let netns = b.env.netns_path();
    let mut out = String::new();
    let machine = format!(
        "{} cores, {}, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        sh(&[
            "sh",
            "-c",
            "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"
        ])
        .trim(),
        sh(&["uname", "-r"]).trim()
    );
    out.push_str(&format!("Machine: {machine}. Delegates: containernetworking-plugins {}. {iterations} iterations per row, interleaved.\n\n",
        sh(&["sh", "-c", "dpkg-query -W -f '${Version}' containernetworking-plugins 2>/dev/null || echo unknown"]).trim()));

    // 1. ADD+DEL per pod, 0/1/2/4 extra networks: floor, thin, daemon, interleaved. ADD and DEL
    //    are timed apart with the same settle pause after each, for every side: a DEL that follows
    //    its ADD within milliseconds is slower the longer the gap (the kernel's own work on the new
    //    links), which charged plexus's extra milliseconds before the DEL twice.
    let settle = Duration::from_millis(settle_ms);
    out.push_str(
        "### ADD and DEL per pod (macvlan + host-local extras on a bridge cluster network)\n\n",
    );
    out.push_str(&format!("Each iteration runs the floor, plexus thin and plexus through the shim and the daemon, in a rotating order. ADD and DEL are timed apart, with a {settle_ms} ms pause after each (every side alike): a DEL issued within a few ms of its ADD is slower the later it comes, by more than the delay itself (the kernel is still busy with the new links), so timing ADD+DEL back to back charged any extra time before the DEL twice. Total = ADD + DEL of one pod; overhead = median total minus the floor's. CPU: of the processes the runtime runs and what they reap (thin: plexus and its delegates), plus, for the daemon side, the daemon's own CPU and that of the delegates it reaped.\n\n"));
    out.push_str("| extra networks | floor ADD / DEL ms | thin ADD / DEL ms | daemon ADD / DEL ms | floor total ms (p99) | thin total ms (p99) | daemon total ms (p99) | thin overhead ms (ADD) | daemon overhead ms (ADD) | thin ratio | daemon ratio | floor CPU ms | thin CPU ms | daemon CPU ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut thin_over = Vec::new();
    let mut daemon_over = Vec::new();
    let mut isolated_daemon_k1 = 0.0;
    let mut isolated_thin_k1 = 0.0;
    let mut isolated_daemon_add_k1 = 0.0;
    let mut isolated_thin_add_k1 = 0.0;
    for k in [0usize, 1, 2, 4] {
        let mut adds: [Vec<f64>; 3] = Default::default();
        let mut dels: [Vec<f64>; 3] = Default::default();
        let mut wall: [Vec<f64>; 3] = Default::default();
        let mut cpu: [Vec<f64>; 3] = Default::default();
        for i in 0..iterations + 3 {
            let pod = format!("b{k}-{i}");
            b.make_pod(&pod, k);
            // Give the daemon's watch the new pod, as a pod created seconds before its sandbox.
            std::thread::sleep(Duration::from_millis(5));
            for turn in 0..3 {
                let side = (i + turn) % 3;
                let (a, d, c) = match side {
                    0 => {
                        let id = format!("{pod}-f");
                        let t = Instant::now();
                        let (added, ca) = b.floor_add(k, &id, &netns, &pod);
                        let a = ms(t.elapsed());
                        std::thread::sleep(settle);
                        let t = Instant::now();
                        let cd = b.floor_del(&added, &id, &netns, &pod);
                        (a, ms(t.elapsed()), ca + cd)
                    }
                    1 => {
                        let id = format!("{pod}-t");
                        let t = Instant::now();
                        let ra = b.run_side(Side::Thin, "ADD", &id, &netns, &pod);
                        let a = ms(t.elapsed());
                        std::thread::sleep(settle);
                        let t = Instant::now();
                        let rd = b.run_side(Side::Thin, "DEL", &id, &netns, &pod);
                        (a, ms(t.elapsed()), ra.cpu_ms + rd.cpu_ms)
                    }
                    _ => {
                        let id = format!("{pod}-d");
                        // The daemon's CPU around each call only, not during the pause.
                        let before = b.daemon.cpu_ms();
                        let t = Instant::now();
                        let ra = b.run_side(Side::Daemon, "ADD", &id, &netns, &pod);
                        let a = ms(t.elapsed());
                        let daemon_add = b.daemon.cpu_ms() - before;
                        std::thread::sleep(settle);
                        let before = b.daemon.cpu_ms();
                        let t = Instant::now();
                        let rd = b.run_side(Side::Daemon, "DEL", &id, &netns, &pod);
                        let d = ms(t.elapsed());
                        let daemon_del = b.daemon.cpu_ms() - before;
                        (a, d, ra.cpu_ms + rd.cpu_ms + daemon_add + daemon_del)
                    }
                };
                std::thread::sleep(settle);
                if i >= 3 {
                    adds[side].push(a);
                    dels[side].push(d);
                    wall[side].push(a + d);
                    cpu[side].push(c);
                }
            }
        }
        let [(fm, fp), (tm, tp), (dm, dp)] = wall.map(stats);
        let [(fa, _), (ta, _), (da, _)] = adds.map(stats);
        let [(fd, _), (td, _), (dd, _)] = dels.map(stats);
        let [(fc, _), (tc, _), (dc, _)] = cpu.map(stats);
        thin_over.push(tm - fm);
        daemon_over.push(dm - fm);
        if k == 1 {
            isolated_daemon_k1 = dm;
            isolated_thin_k1 = tm;
            isolated_daemon_add_k1 = da;
            isolated_thin_add_k1 = ta;
        }
        out.push_str(&format!(
            "| {k} | {fa:.2} / {fd:.2} | {ta:.2} / {td:.2} | {da:.2} / {dd:.2} | {fm:.2} ({fp:.2}) | {tm:.2} ({tp:.2}) | {dm:.2} ({dp:.2}) | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2} | {:.2} | {fc:.2} | {tc:.2} | {dc:.2} |\n",
            tm - fm,
            ta - fa,
            dm - fm,
            da - fa,
            tm / fm,
            dm / fm,
        ));
    }
    out.push_str(&format!(
        "\nAdded per extra network (slope 0→4 of the overhead): thin {:.2} ms, daemon {:.2} ms.\n\n",
        (thin_over[3] - thin_over[0]) / 4.0,
        (daemon_over[3] - daemon_over[0]) / 4.0
    ));

    // 2. Back to back: 200 pods in a row, no pause, against the isolated medians above.
    out.push_str("### 200 pods back to back (1 extra network, no pause between pods)\n\nThe isolated figures are from the table above. Its DELs come 150 ms after their ADDs, and a back-to-back DEL right after its ADD is cheaper (see the note there), so the ADD columns are the like-for-like comparison.\n\n| side | ADD median ms (p99) | isolated ADD median ms | ADD back-to-back vs isolated | ADD+DEL median ms (p99) | isolated ADD+DEL median ms |\n|---|---|---|---|---|---|\n");
    for side in [Side::Thin, Side::Daemon] {
        let pods: Vec<String> = (0..200)
            .map(|i| format!("btb-{side:?}-{i}").to_lowercase())
            .collect();
        for p in &pods {
            b.make_pod(p, 1);
        }
        std::thread::sleep(Duration::from_millis(200));
        let (adds, lat): (Vec<f64>, Vec<f64>) = pods
            .iter()
            .map(|p| {
                let t = Instant::now();
                b.run_side(side, "ADD", p, &netns, p);
                let a = ms(t.elapsed());
                b.run_side(side, "DEL", p, &netns, p);
                (a, ms(t.elapsed()))
            })
            .unzip();
        let (am, ap99) = stats(adds);
        let (m, p99) = stats(lat);
        let (iso_add, iso) = if side == Side::Thin {
            (isolated_thin_add_k1, isolated_thin_k1)
        } else {
            (isolated_daemon_add_k1, isolated_daemon_k1)
        };
        out.push_str(&format!(
            "| {side:?} | {am:.2} ({ap99:.2}) | {iso_add:.2} | {:+.0}% | {m:.2} ({p99:.2}) | {iso:.2} |\n",
            100.0 * (am - iso_add) / iso_add
        ));
    }

    // 3. API requests per ADD and DEL.
    out.push_str("\n### API requests (counted at the fixture API server)\n\n| call | side | reads | of which NAD reads | writes |\n|---|---|---|---|---|\n");
    for side in [Side::Thin, Side::Daemon] {
        for k in [0usize, 2] {
            let pod = format!("api-{side:?}-{k}").to_lowercase();
            b.make_pod(&pod, k);
            std::thread::sleep(Duration::from_millis(100));
            b.api.clear_requests();
            b.run_side(side, "ADD", &format!("{pod}-x"), &netns, &pod);
            let add = b.api.requests();
            b.api.clear_requests();
            b.run_side(side, "DEL", &format!("{pod}-x"), &netns, &pod);
            let del = b.api.requests();
            let count = |v: &[String]| {
                let reads = v.iter().filter(|r| r.starts_with("GET")).count();
                let nads = v
                    .iter()
                    .filter(|r| {
                        r.starts_with("GET") && r.contains("network-attachment-definitions")
                    })
                    .count();
                (reads, nads, v.len() - reads)
            };
            let (r, n, w) = count(&add);
            out.push_str(&format!(
                "| ADD, {k} extra networks | {side:?} | {r} | {n} | {w} |\n"
            ));
            let (r, n, w) = count(&del);
            out.push_str(&format!(
                "| DEL, {k} extra networks | {side:?} | {r} | {n} | {w} |\n"
            ));
        }
    }

    // Hot-plug through the daemon: annotation write → network-status updated.
    {
        let pod = "hotplug";
        b.make_pod(pod, 1);
        std::thread::sleep(Duration::from_millis(100));
        b.run_side(Side::Daemon, "ADD", "hotplug-x", &netns, pod);
        let entries = |b: &Bench| {
            b.api
                .network_status("bench", pod)
                .as_array()
                .map_or(0, Vec::len)
        };
        let events = |b: &Bench| b.api.events("bench").len();
        let mut lat = Vec::new();
        let (mut reads, mut status_writes, mut event_writes, mut other) = (0, 0, 0, 0);
        let n = iterations.max(2);
        for i in 0..n {
            let (want, count) = if i % 2 == 0 {
                ("net-1,net-2", 3)
            } else {
                ("net-1", 2)
            };
            let ev = events(&b);
            b.api.clear_requests();
            let t = Instant::now();
            b.api.patch_pod_annotations(
                "bench",
                pod,
                &json!({"k8s.v1.cni.cncf.io/networks": want}),
            );
            while entries(&b) != count {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "hot-plug did not happen"
                );
                std::thread::sleep(Duration::from_micros(500));
            }
            lat.push(ms(t.elapsed()));
            while events(&b) == ev {
                assert!(t.elapsed() < Duration::from_secs(30), "no Event");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(20));
            for r in b.api.requests() {
                if r.starts_with("GET") {
                    reads += 1;
                } else if r.starts_with("PATCH") && r.ends_with("/status") {
                    status_writes += 1;
                } else if r.starts_with("POST") && r.contains("/events") {
                    event_writes += 1;
                } else {
                    other += 1;
                }
            }
        }
        b.run_side(Side::Daemon, "DEL", "hotplug-x", &netns, pod);
        let (m, p99) = stats(lat);
        let per = |x: usize| x as f64 / n as f64;
        out.push_str(&format!(
            "\n### Hot-plug (daemon: a running pod's annotation changes, one macvlan + host-local network added or removed, {n} changes)\n\n| what | value |\n|---|---|\n| annotation write → network-status updated, median (p99) | {m:.1} ms ({p99:.1} ms) |\n| API reads per hot-plug | {:.1} |\n| status writes per hot-plug | {:.1} |\n| Events per hot-plug | {:.1} |\n| other API requests per hot-plug | {:.1} |\n",
            per(reads),
            per(status_writes),
            per(event_writes),
            per(other)
        ));
    }

    // 4. Pods at once.
    out.push_str(&format!("\n### Pods at once (1 extra network each, {rounds} rounds)\n\n| pods at once | floor pods/s | thin pods/s | daemon pods/s | thin vs floor | daemon vs floor | floor p99 ms | thin p99 ms | daemon p99 ms |\n|---|---|---|---|---|---|---|---|---|\n"));
    for p in [8usize, 16] {
        let names: Vec<String> = (0..p)
            .map(|i| format!("plxb{p}-{i}-{}", std::process::id()))
            .collect();
        for n in &names {
            sh(&["ip", "netns", "add", n]);
        }
        let mut lat: [Vec<f64>; 3] = Default::default();
        let mut wall = [Duration::ZERO; 3];
        for r in 0..rounds {
            for (i, _) in names.iter().enumerate() {
                b.make_pod(&format!("c{p}-{r}-{i}"), 1);
            }
            std::thread::sleep(Duration::from_millis(100));
            for turn in 0..3 {
                let side = (r + turn) % 3;
                let t = Instant::now();
                let lats: Vec<f64> = std::thread::scope(|s| {
                    let hs: Vec<_> = names
                        .iter()
                        .enumerate()
                        .map(|(i, ns)| {
                            let b = &b;
                            let pod = format!("c{p}-{r}-{i}");
                            s.spawn(move || {
                                let path = format!("/run/netns/{ns}");
                                let t = Instant::now();
                                match side {
                                    0 => {
                                        b.floor(1, &format!("{pod}-f"), &path, &pod);
                                    }
                                    1 | 2 => {
                                        let sd = if side == 1 { Side::Thin } else { Side::Daemon };
                                        let id = format!("{pod}-{side}");
                                        b.run_side(sd, "ADD", &id, &path, &pod);
                                        b.run_side(sd, "DEL", &id, &path, &pod);
                                    }
                                    _ => unreachable!(),
                                }
                                ms(t.elapsed())
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                wall[side] += t.elapsed();
                lat[side].extend(lats);
            }
        }
        for n in &names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let tput = |w: Duration| (p * rounds) as f64 / w.as_secs_f64();
        let [tf, tt, td] = wall.map(tput);
        let [(_, fp), (_, tp), (_, dp)] = lat.map(stats);
        out.push_str(&format!(
            "| {p} | {tf:.1} | {tt:.1} | {td:.1} | {:.0}% | {:.0}% | {fp:.1} | {tp:.1} | {dp:.1} |\n",
            100.0 * tt / tf,
            100.0 * td / tf
        ));
    }

    // 5. The daemon's memory on a busy node: 500 pods here, 10,000 NADs in the cluster.
    {
        let mut objects = Vec::new();
        for i in 0..10_000 {
            let ns = format!("tenant-{}", i % 100);
            objects.push(json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": format!("nad-{i}"), "namespace": ns},
                "spec": {"config": json!({"cniVersion": "1.0.0", "name": format!("nad-{i}"), "type": "macvlan",
                    "master": "eth1", "ipam": {"type": "host-local", "subnet": format!("10.{}.{}.0/24", i / 256 % 256, i % 256)}}).to_string()}}));
        }
        for i in 0..500 {
            objects.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("resident-{i}"), "namespace": format!("tenant-{}", i % 100),
                    "labels": {"app": "resident"}, "annotations": {"k8s.v1.cni.cncf.io/networks": format!("nad-{i}")}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox",
                    "command": ["sleep", "infinity"], "env": [{"name": "A", "value": "b"}]}]}}));
        }
        let (before, _) = b.daemon.rss_kib();
        for chunk in objects.chunks(1000) {
            b.api.create_objects(chunk);
        }
        let t = Instant::now();
        while b
            .daemon
            .metric(r#"plexus_watch_cache_objects{kind="network-attachment-definitions"}"#)
            < 10_004.0
            || b.daemon
                .metric(r#"plexus_watch_cache_objects{kind="pods"}"#)
                < 500.0
        {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "watch cache did not fill"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let synced = t.elapsed();
        // A few ADDs on the loaded node, then the steady state.
        for i in 0..5 {
            let pod = format!("loaded-{i}");
            b.make_pod(&pod, 1);
            std::thread::sleep(Duration::from_millis(50));
            b.run_side(Side::Daemon, "ADD", &pod, &netns, &pod);
            b.run_side(Side::Daemon, "DEL", &pod, &netns, &pod);
        }
        std::thread::sleep(Duration::from_millis(500));
        let (rss, hwm) = b.daemon.rss_kib();
        out.push_str(&format!(
            "\n### The daemon on a busy node\n\n| what | value |\n|---|---|\n| daemon RSS before (this bench's pods) | {:.1} MiB |\n| daemon RSS with 500 pods on the node and 10,000 NADs (VmRSS) | {:.1} MiB |\n| peak (VmHWM) | {:.1} MiB |\n| watch cache filled in | {:.1} s |\n",
            before as f64 / 1024.0,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            synced.as_secs_f64()
        ));
    }

    // 4. Start-up and memory.
    let version = |bin: &Path| {
        let v: Vec<f64> = (0..200)
            .map(|_| {
                let t = Instant::now();
                let r = exec(bin, &[("CNI_COMMAND", "VERSION")], b"{}");
                assert!(r.ok);
                ms(t.elapsed())
            })
            .collect();
        stats(v)
    };
    let (pv, pv99) = version(&plexus_bin());
    let (bv, bv99) = version(&b.plugins.join("bridge"));
    b.make_pod("rss", 1);
    let add = b.plexus("ADD", "rss-x", &netns, "rss");
    b.plexus("DEL", "rss-x", &netns, "rss");
    let size = std::fs::metadata(plexus_bin())
        .map(|m| m.len())
        .unwrap_or(0);
    // What the cache's durability costs: its write pattern (temp file, fdatasync, rename, fsync of
    // the directory) against the same write without the two syncs, on plexus's cniDir's
    // filesystem. An ADD makes two such writes (the pending record, the final one).
    let (durable, plain) = {
        use std::io::Write as _;
        let dir = b.env.cni_dir().join("bench-sync");
        std::fs::create_dir_all(&dir).unwrap();
        let body = vec![b'x'; 2048];
        let write = |sync: bool| {
            let t = Instant::now();
            let tmp = dir.join("rec.tmp");
            let mut f = std::fs::File::create(&tmp).unwrap();
            f.write_all(&body).unwrap();
            if sync {
                f.sync_data().unwrap();
            }
            std::fs::rename(&tmp, dir.join("rec.json")).unwrap();
            if sync {
                std::fs::File::open(&dir).unwrap().sync_all().unwrap();
            }
            ms(t.elapsed())
        };
        let (mut d, mut p) = (vec![], vec![]);
        for _ in 0..100 {
            d.push(write(true));
            p.push(write(false));
        }
        let _ = std::fs::remove_dir_all(&dir);
        (stats(d), stats(p))
    };
    out.push_str(&format!(
        "\n### Start-up and memory\n\n| what | value |\n|---|---|\n| plexus VERSION, median (p99) | {pv:.2} ms ({pv99:.2} ms) |\n| bridge VERSION (a Go reference plugin), median (p99) | {bv:.2} ms ({bv99:.2} ms) |\n| peak RSS of one plexus ADD, 1 extra network (wait4: the larger of plexus and the delegates it reaped; plexus alone logs its own at debug level) | {} KiB |\n| plexus binary size | {:.1} MiB |\n| one durable cache write (fdatasync + directory fsync), median (p99) | {:.2} ms ({:.2} ms) |\n| the same write without the syncs, median (p99) | {:.2} ms ({:.2} ms) |\n| durability's cost per ADD (2 writes; an upper bound: the final one skips the directory fsync), median | {:.2} ms |\n",
        add.maxrss_kb,
        size as f64 / (1 << 20) as f64,
        durable.0,
        durable.1,
        plain.0,
        plain.1,
        2.0 * (durable.0 - plain.0)
    ));
    print!("{out}");
    if let Some(path) = write {
        let doc = format!(
            "# plexus benchmarks\n\nThe cost plexus adds per pod, against the floor: the same delegates with the same configs run directly, one exec per plugin. Measured by `scripts/bench` (see \"Reproduce\"). The targets, and what the profiles show where one is missed: [performance.md](performance.md).\n\n{out}\n## Reproduce\n\n```sh\nscripts/bench            # as root; prints this table and rewrites docs/benchmarks.md\n```\n\nThe harness (`e2e/src/bin/plexus-bench.rs`) runs in a private \"node\" network namespace, with the fixture API server for plexus (not a real kube-apiserver), the release build of plexus, and the Debian reference plugins. plexus and the floor alternate, iteration by iteration; medians and p99 come from the same run. Criterion micro-benchmarks of the pure parts: `cargo bench -p plexus`.\n"
        );
        std::fs::write(&path, doc).unwrap();
        eprintln!("wrote {path}");
    }
}
