//! The e2e harness: each test gets its own "node" netns (where plexus and the delegates run, so the
//! host is never touched) and "pod" netns, a temp dir for binDir/cniDir/IPAM, and helpers to run
//! the real `plexus` binary as a runtime would and to read back links, addresses and routes.
#![allow(dead_code)]

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The e2e suite needs root for network namespaces; it fails (never skips) without it.
pub fn require_root() {
    assert!(
        nix_is_root(),
        "e2e tests need root (network namespaces); run `scripts/test` as root"
    );
}

fn nix_is_root() -> bool {
    sh(&["id", "-u"]).trim() == "0"
}

/// Directory holding the reference plugins (Debian: /usr/lib/cni).
pub fn plugins_dir() -> PathBuf {
    for d in ["/usr/lib/cni", "/opt/cni/bin"] {
        if Path::new(d).join("bridge").is_file() && Path::new(d).join("host-local").is_file() {
            return PathBuf::from(d);
        }
    }
    panic!("reference CNI plugins not found: apt-get install containernetworking-plugins");
}

/// target/<profile>/ of this build.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn plexus_bin() -> PathBuf {
    std::env::var_os("PLEXUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("plexus"))
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success, got stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }
    /// Asserts failure with a CNI error object of `code`, and returns its message.
    #[track_caller]
    pub fn err(&self, code: u64) -> String {
        assert_ne!(self.code, 0, "expected failure, got {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "wrong code: {v}\nstderr: {}", self.stderr);
        v["msg"].as_str().unwrap().to_string()
    }
}

pub struct TestEnv {
    pub node: String,
    pub pod: String,
    pub dir: tempfile::TempDir,
    pub plugins: PathBuf,
}

impl TestEnv {
    pub fn new(tag: &str) -> TestEnv {
        require_root();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!(
            "{}-{}-{n}",
            tag.chars().take(12).collect::<String>(),
            std::process::id()
        );
        let env = TestEnv {
            node: format!("plxn-{id}"),
            pod: format!("plxp-{id}"),
            dir: tempfile::tempdir().unwrap(),
            plugins: plugins_dir(),
        };
        sh(&["ip", "netns", "add", &env.node]);
        sh(&["ip", "netns", "add", &env.pod]);
        sh(&["ip", "-n", &env.node, "link", "set", "lo", "up"]);
        let bin = env.bin_dir();
        std::fs::create_dir_all(&bin).unwrap();
        let delegate = target_dir().join("plexus-test-delegate");
        assert!(
            delegate.is_file(),
            "build the workspace first: {} missing",
            delegate.display()
        );
        for name in ["test-record", "test-fail", "test-hang"] {
            std::os::unix::fs::symlink(&delegate, bin.join(name)).unwrap();
        }
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn bin_dir(&self) -> PathBuf {
        self.path().join("bin")
    }
    pub fn cni_dir(&self) -> PathBuf {
        self.path().join("cni")
    }
    pub fn ipam_dir(&self, net: &str) -> PathBuf {
        self.path().join("ipam").join(net)
    }
    pub fn record_file(&self) -> PathBuf {
        self.path().join("record.jsonl")
    }
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.pod)
    }

    /// Run `plexus` in the node netns as a runtime would.
    pub fn cni(&self, verb: &str, id: &str, ifname: &str, conf: &Value) -> Output {
        self.cni_raw(
            verb,
            &[("CNI_CONTAINERID", id), ("CNI_IFNAME", ifname)],
            conf.to_string().as_bytes(),
        )
    }

    pub fn cni_raw(&self, verb: &str, vars: &[(&str, &str)], stdin: &[u8]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node]).arg(plexus_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", verb)
            .env("CNI_NETNS", self.netns_path())
            .env("CNI_PATH", &self.plugins);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Link names in a netns (`ip -j link`).
    pub fn links(ns: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(&sh(&["ip", "-j", "-n", ns, "link"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }
    pub fn pod_links(&self) -> Vec<String> {
        Self::links(&self.pod)
    }
    pub fn node_links(&self) -> Vec<String> {
        Self::links(&self.node)
    }
    /// Global IPv4/IPv6 addresses of a link in the pod, as `addr/prefix`.
    pub fn pod_addrs(&self, ifname: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(&sh(&[
            "ip", "-j", "-n", &self.pod, "addr", "show", "dev", ifname,
        ]))
        .unwrap();
        v[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }
    pub fn pod_link(&self, ifname: &str) -> Value {
        let v: Value = serde_json::from_str(&sh(&[
            "ip", "-j", "-d", "-n", &self.pod, "link", "show", "dev", ifname,
        ]))
        .unwrap();
        v[0].clone()
    }
    /// `ip route` lines in the pod, one string each.
    pub fn pod_routes(&self) -> Vec<String> {
        sh(&["ip", "-n", &self.pod, "route"])
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    }
    pub fn node(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.node];
        full.extend_from_slice(args);
        sh(&full)
    }
    /// Make a veth pair in the node netns, both ends up (a macvlan master or a host-device "VF").
    pub fn node_veth(&self, a: &str, b: &str) {
        self.node(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
        self.node(&["ip", "link", "set", a, "up"]);
        self.node(&["ip", "link", "set", b, "up"]);
    }

    /// Files host-local keeps per reserved IP in its dataDir (not its `lock`/`last_reserved_ip`).
    pub fn reservations(&self, net: &str) -> Vec<String> {
        let dir = self.ipam_dir(net).join(net);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        rd.filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect()
    }

    pub fn cache_files(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.cni_dir().join("plexus/attachments")) else {
            return vec![];
        };
        rd.filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Everything the test delegates recorded, in order.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.record_file())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The pod is back to only `lo`, the node has nothing but `extra`, and no cache is left.
    #[track_caller]
    pub fn assert_clean(&self, node_extra: &[&str]) {
        assert_eq!(self.pod_links(), vec!["lo"], "pod netns not clean");
        let mut node = self.node_links();
        node.retain(|l| l != "lo" && !node_extra.contains(&l.as_str()));
        assert!(node.is_empty(), "node netns left links: {node:?}");
        assert!(
            self.cache_files().is_empty(),
            "cache left: {:?}",
            self.cache_files()
        );
    }

    pub fn host_local(&self, net: &str, subnet: &str) -> Value {
        serde_json::json!({"type": "host-local", "ranges": [[{"subnet": subnet}]],
            "routes": [], "dataDir": self.ipam_dir(net)})
    }

    /// A plexus config with these delegates.
    pub fn plexus_conf(&self, version: &str, delegates: Vec<Value>) -> Value {
        serde_json::json!({
            "cniVersion": version, "name": "plexus", "type": "plexus",
            "binDir": self.bin_dir(), "cniDir": self.cni_dir(), "confDir": self.path().join("conf"),
            "logLevel": "debug", "delegateTimeoutSeconds": 20,
            "delegates": delegates,
        })
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
