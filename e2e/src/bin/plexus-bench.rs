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

struct Bench {
    env: TestEnv,
    api: Fixture,
    plugins: PathBuf,
    conf: Value,
    cluster: Network,
    nads: Vec<Network>,
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
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={id}");
        let path = self.plugins.display().to_string();
        let r = exec(
            &plexus_bin(),
            &Self::cni_env(verb, id, netns, "eth0", &args, &path),
            self.conf.to_string().as_bytes(),
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
        let mut results = Vec::new();
        for (net, ifname) in &nets {
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
                    &Self::cni_env("ADD", id, netns, ifname, &args, &path),
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
            results.push(prev);
        }
        for ((net, ifname), prev) in nets.iter().zip(&results).rev() {
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
    /// Rewrite this markdown file with the results.
    #[arg(long)]
    write: Option<String>,
}

fn main() {
    let Args {
        iterations,
        rounds,
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
    let b = Bench {
        cluster: Network::from_value(cluster_v, "bench").unwrap(),
        env,
        api,
        plugins,
        conf,
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

    // 1. ADD+DEL per pod, 0/1/2/4 extra networks.
    out.push_str(
        "### ADD+DEL per pod (macvlan + host-local extras on a bridge cluster network)\n\n",
    );
    out.push_str("| extra networks | plexus median ms | plexus p99 ms | floor median ms | floor p99 ms | overhead median ms | ratio | plexus CPU ms | floor CPU ms | CPU overhead ms |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut overheads = Vec::new();
    let mut cpu_overheads = Vec::new();
    for k in [0usize, 1, 2, 4] {
        let (mut px, mut fl) = (Vec::new(), Vec::new());
        let (mut pc, mut fc) = (Vec::new(), Vec::new());
        for i in 0..iterations + 3 {
            let pod = format!("b{k}-{i}");
            b.make_pod(&pod, k);
            let id_p = format!("{pod}-p");
            let id_f = format!("{pod}-f");
            let run_p = || {
                let t = Instant::now();
                let a = b.plexus("ADD", &id_p, &netns, &pod);
                let d = b.plexus("DEL", &id_p, &netns, &pod);
                (ms(t.elapsed()), a.cpu_ms + d.cpu_ms)
            };
            let run_f = || {
                let t = Instant::now();
                let cpu = b.floor(k, &id_f, &netns, &pod);
                (ms(t.elapsed()), cpu)
            };
            let (a, f) = if i % 2 == 0 {
                let a = run_p();
                (a, run_f())
            } else {
                let f = run_f();
                (run_p(), f)
            };
            if i >= 3 {
                px.push(a.0);
                pc.push(a.1);
                fl.push(f.0);
                fc.push(f.1);
            }
        }
        let (pm, pp) = stats(px);
        let (fm, fp) = stats(fl);
        let (pcm, _) = stats(pc);
        let (fcm, _) = stats(fc);
        overheads.push((k, pm - fm));
        cpu_overheads.push(pcm - fcm);
        out.push_str(&format!(
            "| {k} | {pm:.2} | {pp:.2} | {fm:.2} | {fp:.2} | {:.2} | {:.2} | {pcm:.2} | {fcm:.2} | {:.2} |\n",
            pm - fm,
            pm / fm,
            pcm - fcm
        ));
    }
    let per_net = (overheads[3].1 - overheads[0].1) / 4.0;
    let per_net_cpu = (cpu_overheads[3] - cpu_overheads[0]) / 4.0;
    out.push_str(&format!(
        "\nAdded per extra network (slope 0→4 of the overhead): {per_net:.2} ms wall, {per_net_cpu:.2} ms CPU.\n\n"
    ));

    // 2. API requests per ADD and DEL.
    out.push_str("### API requests (counted at the fixture API server)\n\n| call | reads | of which NAD reads | writes |\n|---|---|---|---|\n");
    for k in [0usize, 2] {
        let pod = format!("api-{k}");
        b.make_pod(&pod, k);
        b.api.clear_requests();
        b.plexus("ADD", &format!("{pod}-x"), &netns, &pod);
        let add = b.api.requests();
        b.api.clear_requests();
        b.plexus("DEL", &format!("{pod}-x"), &netns, &pod);
        let del = b.api.requests();
        let count = |v: &[String]| {
            let reads = v.iter().filter(|r| r.starts_with("GET")).count();
            let nads = v
                .iter()
                .filter(|r| r.starts_with("GET") && r.contains("network-attachment-definitions"))
                .count();
            (reads, nads, v.len() - reads)
        };
        let (r, n, w) = count(&add);
        out.push_str(&format!("| ADD, {k} extra networks | {r} | {n} | {w} |\n"));
        let (r, n, w) = count(&del);
        out.push_str(&format!("| DEL, {k} extra networks | {r} | {n} | {w} |\n"));
    }

    // 3. Pods at once.
    out.push_str(&format!("\n### Pods at once (1 extra network each, {rounds} rounds)\n\n| pods at once | plexus pods/s | plexus p99 ms | floor pods/s | floor p99 ms | throughput vs floor |\n|---|---|---|---|---|---|\n"));
    for p in [8usize, 16] {
        let names: Vec<String> = (0..p)
            .map(|i| format!("plxb{p}-{i}-{}", std::process::id()))
            .collect();
        for n in &names {
            sh(&["ip", "netns", "add", n]);
        }
        let (mut lat_p, mut lat_f) = (Vec::new(), Vec::new());
        let (mut wall_p, mut wall_f) = (Duration::ZERO, Duration::ZERO);
        for r in 0..rounds {
            for (i, _) in names.iter().enumerate() {
                b.make_pod(&format!("c{p}-{r}-{i}"), 1);
            }
            for side in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
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
                                if side == 0 {
                                    let id = format!("{pod}-p");
                                    b.plexus("ADD", &id, &path, &pod);
                                    b.plexus("DEL", &id, &path, &pod);
                                } else {
                                    b.floor(1, &format!("{pod}-f"), &path, &pod);
                                }
                                ms(t.elapsed())
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                if side == 0 {
                    wall_p += t.elapsed();
                    lat_p.extend(lats);
                } else {
                    wall_f += t.elapsed();
                    lat_f.extend(lats);
                }
            }
        }
        for n in &names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let tp = (p * rounds) as f64 / wall_p.as_secs_f64();
        let tf = (p * rounds) as f64 / wall_f.as_secs_f64();
        let (_, pp) = stats(lat_p);
        let (_, fp) = stats(lat_f);
        out.push_str(&format!(
            "| {p} | {tp:.1} | {pp:.1} | {tf:.1} | {fp:.1} | {:.0}% |\n",
            100.0 * tp / tf
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
    out.push_str(&format!(
        "\n### Start-up and memory\n\n| what | value |\n|---|---|\n| plexus VERSION, median (p99) | {pv:.2} ms ({pv99:.2} ms) |\n| bridge VERSION (a Go reference plugin), median (p99) | {bv:.2} ms ({bv99:.2} ms) |\n| peak RSS of one plexus ADD, 1 extra network (wait4: the larger of plexus and the delegates it reaped; plexus alone logs its own at debug level) | {} KiB |\n| plexus binary size | {:.1} MiB |\n",
        add.maxrss_kb,
        size as f64 / (1 << 20) as f64
    ));
    print!("{out}");
    if let Some(path) = write {
        let doc = format!(
            "# plexus benchmarks\n\nThe cost plexus adds per pod, against the floor: the same delegates with the same configs run directly, one exec per plugin. Measured by `scripts/bench` (see \"Reproduce\").\n\n{out}\n## Reproduce\n\n```sh\nscripts/bench            # as root; prints this table and rewrites docs/benchmarks.md\n```\n\nThe harness (`e2e/src/bin/plexus-bench.rs`) runs in a private \"node\" network namespace, with the fixture API server for plexus (not a real kube-apiserver), the release build of plexus, and the Debian reference plugins. plexus and the floor alternate, iteration by iteration; medians and p99 come from the same run. Criterion micro-benchmarks of the pure parts: `cargo bench -p plexus`.\n"
        );
        std::fs::write(&path, doc).unwrap();
        eprintln!("wrote {path}");
    }
}
