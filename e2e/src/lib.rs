//! plexus's end-to-end harness, shared by the e2e tests and the benchmark: each test gets its own "node" netns (where plexus and the delegates run, so the
//! host is never touched) and "pod" netns, a temp dir for binDir/cniDir/IPAM, and helpers to run
//! the real `plexus` binary as a runtime would and to read back links, addresses and routes.

/// The CRI RuntimeService subset the e2e suite drives containerd with (generated from
/// proto/cri.proto by scripts/gen-protos).
#[allow(clippy::all, dead_code)]
pub mod cri;
/// The node daemon, run as in a pod.
pub mod daemon;

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

/// target/<profile>/ of this build (tests run from target/<profile>/deps/).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
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

/// The `cniVersion` of the plexus config shipped in deploy/configmap.yaml, so the real-runtime
/// tests prove that runtime accepts it.
pub fn shipped_cni_version() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/configmap.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let key = "\"cniVersion\": \"";
    let at = text.find(key).expect("cniVersion in deploy/configmap.yaml") + key.len();
    text[at..].split('"').next().unwrap().to_string()
}

/// The roles of `plexus-standin` (see its docs), linked into every test's binDir.
pub const STANDINS: [&str; 14] = [
    "test-sriov",
    "sriov",
    "ipvlan",
    "vlan",
    "whereabouts",
    "istio-cni",
    "calico",
    "calico-ipam",
    "cilium-cni",
    "aws-cni",
    "flannel",
    "weave-net",
    "azure-vnet",
    "azure-vnet-ipam",
];

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
        // Stand-ins for plugins this machine cannot run, under the real plugins' names (binDir
        // is searched before CNI_PATH, so they shadow Debian's ipvlan).
        let standin = target_dir().join("plexus-standin");
        for name in STANDINS {
            std::os::unix::fs::symlink(&standin, bin.join(name)).unwrap();
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
        let vars: Vec<(&str, &std::ffi::OsStr)> = vars
            .iter()
            .map(|(k, v)| (*k, std::ffi::OsStr::new(*v)))
            .collect();
        self.cni_raw_os(verb, &vars, stdin)
    }

    /// [`TestEnv::cni_raw`] with values that need not be UTF-8.
    pub fn cni_raw_os(
        &self,
        verb: &str,
        vars: &[(&str, &std::ffi::OsStr)],
        stdin: &[u8],
    ) -> Output {
        self.cni_wrapped(&[], verb, vars, stdin)
    }

    /// [`TestEnv::cni_raw_os`], with plexus run by `wrapper` (its argv, plexus's path last), e.g.
    /// under `unshare` or `strace`.
    pub fn cni_wrapped(
        &self,
        wrapper: &[&str],
        verb: &str,
        vars: &[(&str, &std::ffi::OsStr)],
        stdin: &[u8],
    ) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node])
            .args(wrapper)
            .arg(plexus_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", verb)
            .env("CNI_NETNS", self.netns_path())
            .env("CNI_PATH", &self.plugins)
            .env("PLEXUS_STANDIN_DIR", self.path().join("standin"));
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
            // Delegates get only the CNI environment: the stand-ins' state dir is passed on.
            "delegateEnv": ["PLEXUS_STANDIN_DIR"],
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

/// How to start the fixture API server; `Default` is plain HTTP, no token, the fixture's own
/// bookmark period (5 s) and history (10,000 changes).
#[derive(Clone, Debug, Default)]
pub struct FixtureOptions {
    /// Serve HTTPS with a CA the fixture makes at start (its PEM is `Fixture::ca`).
    pub tls: bool,
    /// Require this bearer token from the start (the kubeconfig carries it).
    pub token: Option<String>,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Option<std::time::Duration>,
    /// How many changes watches can resume from before they get 410 Gone.
    pub history_size: Option<usize>,
    /// The resource.k8s.io version served (`v1` when not set), or `none`.
    pub resource_version: Option<String>,
}

/// The fixture API server (NOT a real kube-apiserver), running inside a test's node netns so
/// plexus reaches it on 127.0.0.1; the test drives it over a unix socket.
pub struct Fixture {
    child: std::process::Child,
    pub port: u16,
    pub socket: PathBuf,
    pub kubeconfig: PathBuf,
    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with TLS.
    pub url: String,
    /// The CA certificate (PEM) that signed the fixture's server certificate, with TLS.
    pub ca: Option<PathBuf>,
    /// The bearer token the fixture was started with, if any.
    pub token: Option<String>,
    netns: String,
    /// It serves resource.k8s.io (a daemon then watches claims and slices too).
    pub dra: bool,
}

/// Where a pod's service-account volume is mounted, and so where kube-rs's in-cluster config
/// reads `token`, `ca.crt` and `namespace` from.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl Fixture {
    /// Plain HTTP, no token (its kubeconfig carries `fixture-token` for tests that set one).
    pub fn start(env: &TestEnv) -> Fixture {
        Self::start_with(env, &FixtureOptions::default())
    }

    /// HTTPS with a verifiable CA, and `token` required from the start: what a node daemon in a
    /// pod talks to.
    pub fn start_tls(env: &TestEnv, token: &str) -> Fixture {
        Self::start_with(
            env,
            &FixtureOptions {
                tls: true,
                token: Some(token.to_string()),
                ..Default::default()
            },
        )
    }

    pub fn start_with(env: &TestEnv, opts: &FixtureOptions) -> Fixture {
        use std::io::BufRead;
        let socket = env.path().join("api.sock");
        let tls_dir = env.path().join("fixture-tls");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &env.node])
            .arg(target_dir().join("plexus-fixture-apiserver"))
            .args(["--listen", "127.0.0.1:0", "--unix"])
            .arg(&socket);
        if opts.tls {
            cmd.arg("--tls-dir").arg(&tls_dir);
        }
        if let Some(t) = &opts.token {
            cmd.args(["--token", t]);
        }
        if let Some(b) = opts.bookmark_interval {
            cmd.arg("--bookmark-interval-ms")
                .arg(b.as_millis().max(1).to_string());
        }
        if let Some(h) = opts.history_size {
            cmd.arg("--history-size").arg(h.to_string());
        }
        if let Some(v) = &opts.resource_version {
            cmd.args(["--resource-version", v]);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("fixture said {line:?}"));
        // The fixture prints its line once both of its sockets listen (and ca.crt is written).
        assert!(
            socket.exists(),
            "fixture announced itself before its socket existed"
        );
        let ca = opts.tls.then(|| tls_dir.join("ca.crt"));
        if let Some(ca) = &ca {
            assert!(ca.is_file(), "fixture announced itself before its CA");
        }
        let scheme = if opts.tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let mut cluster = serde_json::json!({"server": url});
        if let Some(ca) = &ca {
            cluster["certificate-authority"] = serde_json::json!(ca);
        }
        let kubeconfig = env.path().join("kubeconfig");
        let kc = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fixture", "cluster": cluster}],
            "users": [{"name": "plexus", "user": {"token": opts.token.as_deref().unwrap_or("fixture-token")}}],
            "contexts": [{"name": "fixture", "context": {"cluster": "fixture", "user": "plexus"}}],
            "current-context": "fixture"
        });
        std::fs::write(&kubeconfig, kc.to_string()).unwrap();
        Fixture {
            child,
            port,
            socket,
            kubeconfig,
            url,
            ca,
            token: opts.token.clone(),
            netns: env.node.clone(),
            dra: opts.resource_version.as_deref() != Some("none"),
        }
    }

    /// Writes `token`, `ca.crt` and `namespace` (`kube-system`, plexus's) into `dir`, as the
    /// kubelet fills a pod's service-account volume. Needs TLS: in-cluster config is HTTPS only.
    pub fn write_service_account(&self, dir: &Path) {
        let ca = self
            .ca
            .as_ref()
            .expect("in-cluster clients speak HTTPS: start the fixture with TLS");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("token"), self.token.as_deref().unwrap_or("")).unwrap();
        std::fs::copy(ca, dir.join("ca.crt")).unwrap();
        std::fs::write(dir.join("namespace"), "kube-system").unwrap();
    }

    /// `argv` run "in a pod" against this fixture: in the node netns, with
    /// `KUBERNETES_SERVICE_HOST`/`PORT` pointing here, no `KUBECONFIG`, and `sa_dir` (see
    /// [`Fixture::write_service_account`]) bind-mounted at [`SERVICE_ACCOUNT_DIR`] in a mount
    /// namespace of its own, so the host's view of that path never changes. It is a slave of the
    /// host's (a pod's `HostToContainer` propagation): netns a runtime creates later under
    /// /run/netns are seen, and nothing mounted inside leaks out. The mount point is
    /// created if missing, and as any directory made under a mount namespace, it stays on the
    /// host's /run (empty) afterwards.
    pub fn in_cluster_command<S: AsRef<std::ffi::OsStr>>(
        &self,
        sa_dir: &Path,
        argv: &[S],
    ) -> Command {
        let script = format!(
            "set -e; mkdir -p {SERVICE_ACCOUNT_DIR}; \
             mount --bind \"$1\" {SERVICE_ACCOUNT_DIR}; shift; exec \"$@\""
        );
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg("sh")
        .arg(sa_dir)
        .args(argv)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", self.port.to_string())
        .env_remove("KUBECONFIG");
        cmd
    }

    /// One request to the fixture over its unix socket. Returns (status, JSON body).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_raw(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        )
    }

    /// The same with a raw body.
    pub fn call_raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = plexus::unix_http::call(
            &self.socket,
            method,
            path,
            Some("application/json"),
            body,
            std::time::Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("fixture {method} {path}: {e}"));
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// Require this bearer token from now on (empty: no auth).
    pub fn set_token(&self, token: &str) {
        self.call_raw("PUT", "/fixture/token", token.as_bytes().to_vec());
    }

    pub fn create_pod(&self, ns: &str, name: &str, annotations: Value) -> Value {
        self.create_pod_on(ns, name, "node-1", annotations)
    }

    /// A pod scheduled to `node`.
    pub fn create_pod_on(&self, ns: &str, name: &str, node: &str, annotations: Value) -> Value {
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}});
        let (code, v) = self.call("POST", &format!("/api/v1/namespaces/{ns}/pods"), Some(&pod));
        assert_eq!(code, 201, "{v}");
        v
    }

    pub fn create_nad(&self, ns: &str, name: &str, config: &Value) {
        self.create_nad_annotated(ns, name, config, serde_json::json!({}));
    }

    pub fn create_nad_annotated(&self, ns: &str, name: &str, config: &Value, annotations: Value) {
        let spec = if config.is_null() {
            serde_json::json!({})
        } else {
            serde_json::json!({"config": config.to_string()})
        };
        let nad = serde_json::json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations}, "spec": spec});
        let (code, v) = self.call(
            "POST",
            &format!("/apis/k8s.cni.cncf.io/v1/namespaces/{ns}/network-attachment-definitions"),
            Some(&nad),
        );
        assert_eq!(code, 201, "{v}");
    }

    pub fn pod(&self, ns: &str, name: &str) -> Value {
        self.call("GET", &format!("/api/v1/namespaces/{ns}/pods/{name}"), None)
            .1
    }

    /// The pod's network-status annotation, parsed (Null when absent).
    /// Objects through `POST /fixture/objects` (a pod with its status, a ResourceSlice…).
    pub fn create_one(&self, obj: Value) {
        assert_eq!(self.create_objects(&[obj]), 1);
    }

    /// A ResourceClaim, as the API server has it now.
    pub fn claim(&self, ns: &str, name: &str, version: &str) -> Value {
        let (code, v) = self.call(
            "GET",
            &format!("/apis/resource.k8s.io/{version}/namespaces/{ns}/resourceclaims/{name}"),
            None,
        );
        assert_eq!(code, 200, "{v}");
        v
    }

    pub fn network_status(&self, ns: &str, name: &str) -> Value {
        let pod = self.pod(ns, name);
        pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .map(|s| serde_json::from_str(s).unwrap())
            .unwrap_or(Value::Null)
    }

    pub fn events(&self, ns: &str) -> Vec<Value> {
        self.call("GET", &format!("/api/v1/namespaces/{ns}/events"), None)
            .1["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// "METHOD path" of every API request since the last clear.
    pub fn requests(&self) -> Vec<String> {
        self.client_requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap(),
                    r["path"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// (API group, resource[/subresource], RBAC verb) of every API request since the last clear,
    /// as the API server's authorizer sees them.
    pub fn rbac_requests(&self) -> Vec<(String, String, String)> {
        self.client_requests()
            .iter()
            // Discovery documents are non-resource URLs every authenticated client may read
            // (the system:discovery role), not something a role grants.
            .filter(|r| {
                let p = r["path"].as_str().unwrap_or("");
                !(p.starts_with("/apis/") && p.trim_matches('/').split('/').count() == 2)
            })
            .map(|r| {
                rbac_attributes(
                    r["method"].as_str().unwrap(),
                    r["path"].as_str().unwrap(),
                    r["query"].as_str().unwrap_or(""),
                )
            })
            .collect()
    }

    /// The logged requests of API clients (plexus, on TCP), not the test's own (the unix socket).
    fn client_requests(&self) -> Vec<Value> {
        let (_, v) = self.call("GET", "/fixture/requests", None);
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["listener"] != "unix")
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.call("DELETE", "/fixture/requests", None);
    }

    pub fn fault(&self, f: Value) {
        self.call("POST", "/fixture/faults", Some(&Value::Array(vec![f])));
    }

    pub fn clear_faults(&self) {
        self.call("DELETE", "/fixture/faults", None);
    }

    /// The API server goes down for `ms` (every TCP connection cut, new ones refused) and comes
    /// back with its state, as a kube-apiserver restarted over the same etcd.
    pub fn outage(&self, ms: u64) {
        let (code, v) = self.call("POST", &format!("/fixture/outage?ms={ms}"), None);
        assert_eq!(code, 200, "{v}");
    }

    /// Creates all of `objects` (each with apiVersion, kind, metadata.namespace) in one request,
    /// all or none; returns how many.
    pub fn create_objects(&self, objects: &[Value]) -> usize {
        let (code, v) = self.call(
            "POST",
            "/fixture/objects",
            Some(&Value::Array(objects.to_vec())),
        );
        assert_eq!(code, 201, "{v}");
        v["created"].as_u64().unwrap() as usize
    }

    /// Ends every live watch stream cleanly, as an API server going away would; returns how
    /// many there were. Clients are expected to re-watch from their last resourceVersion.
    pub fn drop_watches(&self) -> usize {
        self.call("DELETE", "/fixture/watches", None).1["ended"]
            .as_u64()
            .unwrap() as usize
    }

    /// Cuts every live watch stream mid-response, as a dropped connection would.
    pub fn abort_watches(&self) -> usize {
        self.call("DELETE", "/fixture/watches?abort=true", None).1["ended"]
            .as_u64()
            .unwrap() as usize
    }

    /// How many watch streams are open now.
    pub fn live_watches(&self) -> usize {
        self.call("GET", "/fixture/watches", None).1["live"]
            .as_u64()
            .unwrap() as usize
    }

    /// Waits (10 s at most) until at least `n` watch streams are open.
    #[track_caller]
    pub fn wait_for_watches(&self, n: usize) {
        let start = std::time::Instant::now();
        while self.live_watches() < n {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "fewer than {n} watches after 10 s: {:?}",
                self.requests()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Merge-patches the pod's `metadata.annotations` (not its status): `null` values remove.
    pub fn patch_pod_annotations(&self, ns: &str, name: &str, annotations: &Value) -> Value {
        let body = serde_json::json!({"metadata": {"annotations": annotations}});
        let r = plexus::unix_http::call(
            &self.socket,
            "PATCH",
            &format!("/api/v1/namespaces/{ns}/pods/{name}"),
            Some("application/merge-patch+json"),
            body.to_string().into_bytes(),
            std::time::Duration::from_secs(30),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert_eq!(r.status, 200, "{v}");
        v
    }

    pub fn delete_pod(&self, ns: &str, name: &str) -> Value {
        let (code, v) = self.call(
            "DELETE",
            &format!("/api/v1/namespaces/{ns}/pods/{name}"),
            None,
        );
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Every API request since the last clear, as the fixture logged it: `method`, `path`,
    /// `query` (raw), `write`, `watch`.
    pub fn request_log(&self) -> Vec<Value> {
        self.call("GET", "/fixture/requests", None)
            .1
            .as_array()
            .cloned()
            .unwrap()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The RBAC attributes of one API request: group, resource (with `/subresource`), verb.
pub fn rbac_attributes(method: &str, path: &str, query: &str) -> (String, String, String) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _v, rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => (g.to_string(), rest),
        _ => panic!("not an API path: {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [res] => (res.to_string(), false),
        [res, _name] => (res.to_string(), true),
        [res, _name, sub] => (format!("{res}/{sub}"), true),
        _ => panic!("unexpected API path: {path}"),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => panic!("unexpected method {method} {path}"),
    };
    (group, resource, verb.to_string())
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestEnv {
    /// Run plexus as the kubelet's runtime would for pod `ns/name` (CNI_ARGS with K8S_POD_*).
    pub fn cni_pod(
        &self,
        verb: &str,
        id: &str,
        ns: &str,
        name: &str,
        uid: Option<&str>,
        conf: &Value,
    ) -> Output {
        let mut args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={id}");
        if let Some(u) = uid {
            args.push_str(&format!(";K8S_POD_UID={u}"));
        }
        self.cni_raw(
            verb,
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            conf.to_string().as_bytes(),
        )
    }

    pub fn pod_mac(&self, ifname: &str) -> String {
        self.pod_link(ifname)["address"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A background process (a container runtime, a DHCP server…) killed when the test ends, however
/// it ends.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the real-runtime tests (containerd, CRI, podman) share.
impl TestEnv {
    /// A busybox-static root filesystem under the test's directory with `tools` linked to
    /// busybox: containers without an image or a registry.
    pub fn busybox_rootfs(&self, name: &str, tools: &[&str]) -> PathBuf {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("busybox-static not installed: scripts/setup installs it");
        let rootfs = self.path().join(name);
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        for tool in tools {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
        }
        rootfs
    }

    /// A private containerd with `config` (TOML), root, state and socket in the test's directory,
    /// in the test's node netns when `in_node` (entered with nsenter, which keeps the host's
    /// /sys/fs/cgroup for runc); returned once it answers `ctr version`, with its socket.
    pub fn containerd(&self, config: &str, in_node: bool) -> (Daemon, PathBuf) {
        let t = self.path();
        let cfg = t.join("containerd.toml");
        std::fs::write(&cfg, config).unwrap();
        let sock = t.join("containerd.sock");
        let log = std::fs::File::create(t.join("containerd.log")).unwrap();
        let mut cmd = if in_node {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", self.node))
                .arg("containerd");
            c
        } else {
            Command::new("containerd")
        };
        let daemon = Daemon(
            cmd.arg("--config")
                .arg(&cfg)
                .arg("--address")
                .arg(&sock)
                .arg("--root")
                .arg(t.join("root"))
                .arg("--state")
                .arg(t.join("state"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let start = std::time::Instant::now();
        // The socket file exists from bind(2) on; ready is when the daemon answers.
        while !(sock.exists()
            && Command::new("ctr")
                .arg("-a")
                .arg(&sock)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()))
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "containerd did not start: {}",
                self.containerd_log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (daemon, sock)
    }

    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.path().join("containerd.log")).unwrap_or_default()
    }

    /// A plugin directory for a runtime: plexus and the reference plugins.
    pub fn runtime_bin_dir(&self) -> PathBuf {
        let bin = self.path().join("cni-bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(plexus_bin(), bin.join("plexus")).unwrap();
        for p in std::fs::read_dir(&self.plugins).unwrap() {
            let p = p.unwrap().path();
            std::os::unix::fs::symlink(&p, bin.join(p.file_name().unwrap())).unwrap();
        }
        bin
    }

    /// After the runtime's DEL: no cache, no IP reservation in `networks`, and no node link but
    /// `lo` and `keep`.
    #[track_caller]
    pub fn assert_runtime_left_nothing(&self, networks: &[&str], keep: &[&str]) {
        assert!(
            self.cache_files().is_empty(),
            "cache left: {:?}",
            self.cache_files()
        );
        for n in networks {
            assert!(
                self.reservations(n).is_empty(),
                "IP reservations left in {n}"
            );
        }
        // The container's netns dies with its last process, and the kernel tears a dead netns
        // down asynchronously: a veth whose peer was in it may outlive the runtime's DEL by a
        // moment (when the DEL found the netns gone, it had nothing to delete). Give the kernel
        // that moment; a link still there after it is a leak.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut node = self.node_links();
            node.retain(|l| l != "lo" && !keep.contains(&l.as_str()));
            if node.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node links left: {node:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Runs `f` on a thread of its own inside netns `netns` (by its `ip netns` name), and returns its
/// result (a panic in `f` is the caller's). Threads `f` spawns start in that netns too: a tokio
/// runtime built in `f` opens every socket there.
pub fn in_netns<R: Send + 'static>(netns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    use std::os::fd::AsFd;
    let ns = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    let t = std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    });
    t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// DRA objects as a DRA driver and the scheduler would leave them, in a resource.k8s.io version.
pub mod dra {
    use serde_json::{json, Value};

    /// A ResourceSlice of `driver` on `node` (pool named after the node); each device with the
    /// Multus attributes (resourceName, deviceID) or none. v1beta1 keeps them under `basic`.
    pub fn slice(
        version: &str,
        name: &str,
        driver: &str,
        node: &str,
        devices: &[(&str, Option<(&str, &str)>)],
    ) -> Value {
        let devices: Vec<Value> = devices
            .iter()
            .map(|(d, attrs)| {
                let a = match attrs {
                    Some((r, id)) => json!({
                        "k8s.cni.cncf.io/resourceName": {"string": r},
                        "k8s.cni.cncf.io/deviceID": {"string": id}}),
                    None => json!({"example.com/model": {"string": "m1"}}),
                };
                if version == "v1beta1" {
                    json!({"name": d, "basic": {"attributes": a}})
                } else {
                    json!({"name": d, "attributes": a})
                }
            })
            .collect();
        json!({"apiVersion": format!("resource.k8s.io/{version}"), "kind": "ResourceSlice",
            "metadata": {"name": name},
            "spec": {"driver": driver, "nodeName": node,
                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                     "devices": devices}})
    }

    /// A claim allocated and reserved for one pod: `results` are (request, driver, pool, device).
    pub fn claim(
        version: &str,
        ns: &str,
        name: &str,
        pods: &[(&str, &str)],
        results: &[(&str, &str, &str, &str)],
    ) -> Value {
        let results: Vec<Value> = results
            .iter()
            .map(|(req, drv, pool, dev)| json!({"request": req, "driver": drv, "pool": pool, "device": dev}))
            .collect::<Vec<Value>>();
        let reserved: Vec<Value> = pods
            .iter()
            .map(|(n, uid)| json!({"resource": "pods", "name": n, "uid": uid}))
            .collect();
        let mut c = json!({"apiVersion": format!("resource.k8s.io/{version}"), "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"devices": {"requests": [{"name": "vf"}]}},
            "status": {"reservedFor": reserved}});
        if let Some(pool) = results.first().map(|r| r["pool"].clone()) {
            // Node-local devices: the pools are named after their nodes.
            c["status"]["allocation"] = json!({"devices": {"results": results},
                "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [pool]}]}]}});
        }
        c
    }

    /// A pod on `node` with UID `uid` whose status names its claims (pod's name, claim name).
    pub fn pod(
        ns: &str,
        name: &str,
        uid: &str,
        node: &str,
        annotations: Value,
        claims: &[(&str, &str)],
    ) -> Value {
        let statuses: Vec<Value> = claims
            .iter()
            .map(|(n, c)| json!({"name": n, "resourceClaimName": c}))
            .collect();
        let refs: Vec<Value> = claims.iter().map(|(n, _)| json!({"name": n})).collect();
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "annotations": annotations},
            "spec": {"nodeName": node, "resourceClaims": refs,
                     "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"resourceClaimStatuses": statuses}})
    }
}

/// Another pod's network namespace on the same node (a test's second pod), deleted on drop.
pub struct ExtraPod {
    pub netns: String,
}

impl ExtraPod {
    pub fn link(&self, ifname: &str) -> Value {
        let v: Value = serde_json::from_str(&sh(&[
            "ip",
            "-j",
            "-d",
            "-n",
            &self.netns,
            "link",
            "show",
            "dev",
            ifname,
        ]))
        .unwrap();
        v[0].clone()
    }

    pub fn links(&self) -> Vec<String> {
        TestEnv::links(&self.netns)
    }
}

impl Drop for ExtraPod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

impl TestEnv {
    /// A second pod netns beside the test's own.
    pub fn extra_pod(&self, suffix: &str) -> ExtraPod {
        let netns = format!("{}{suffix}", self.pod);
        sh(&["ip", "netns", "add", &netns]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        ExtraPod { netns }
    }

    /// [`TestEnv::cni_pod`] for a pod in `pod`'s netns.
    pub fn cni_pod_at(
        &self,
        pod: &ExtraPod,
        verb: &str,
        id: &str,
        ns: &str,
        name: &str,
        conf: &Value,
    ) -> Output {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={id}");
        self.cni_raw(
            verb,
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
                ("CNI_NETNS", &format!("/run/netns/{}", pod.netns)),
            ],
            conf.to_string().as_bytes(),
        )
    }
}
