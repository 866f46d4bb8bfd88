//! The node daemon in the e2e suite, run as in a pod: in the test's node netns, with the
//! fixture's service account mounted where kube-rs looks for it, `KUBERNETES_SERVICE_*` set and
//! `MULTUS_NODE_NAME` from "the downward API" — in-cluster config, HTTPS, bearer token.

use crate::{plexus_bin, Fixture, TestEnv};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The node every fixture pod of `Fixture::create_pod` is on.
pub const NODE: &str = "node-1";

pub struct NodeDaemon {
    child: Option<Child>,
    pub socket_dir: PathBuf,
    pub config_file: PathBuf,
    pub log_file: PathBuf,
    pub metrics_port: Option<u16>,
    netns: String,
    sa_dir: PathBuf,
    api_port: u16,
    api_socket: PathBuf,
}

impl NodeDaemon {
    /// Start `plexus daemon` with `config` (socketDir defaults to the test's directory) and wait
    /// until it answers `/readyz` with 200.
    pub fn start(env: &TestEnv, api: &Fixture, config: Value) -> NodeDaemon {
        let d = Self::spawn(env, api, config);
        d.wait_ready(Duration::from_secs(30));
        // Ready means pods and NADs are synced; the DRA watches (claims, this node's slices)
        // start after discovery: wait for them too, so a test's request log starts after.
        if api.dra {
            api.wait_for_watches(4);
        }
        d
    }

    /// Start it without waiting for readiness.
    pub fn spawn(env: &TestEnv, api: &Fixture, mut config: Value) -> NodeDaemon {
        let dir = env.path();
        if config.get("socketDir").is_none() {
            config["socketDir"] = json!(dir.join("run-multus"));
        }
        if config.get("multusConfigFile").is_none() {
            config["multusConfigFile"] = json!("none");
        }
        let socket_dir = PathBuf::from(config["socketDir"].as_str().unwrap());
        let config_file = dir.join("daemon-config.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let sa_dir = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa_dir).unwrap();
        api.write_service_account(&sa_dir);
        let mut d = NodeDaemon {
            child: None,
            socket_dir,
            config_file,
            log_file: dir.join("daemon.log"),
            metrics_port: config["metricsPort"].as_u64().map(|p| p as u16),
            netns: env.node.clone(),
            sa_dir,
            api_port: api.port,
            api_socket: api.socket.clone(),
        };
        d.launch(api);
        d
    }

    fn launch(&mut self, api: &Fixture) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .unwrap();
        let argv = [
            plexus_bin().display().to_string(),
            "daemon".into(),
            "--config".into(),
            self.config_file.display().to_string(),
        ];
        let child = api
            .in_cluster_command(&self.sa_dir, &argv)
            .env("MULTUS_NODE_NAME", NODE)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let _ = (self.api_port, &self.api_socket);
    }

    /// Start it again (after a kill), with the same config.
    pub fn restart(&mut self, api: &Fixture) {
        self.launch(api);
        self.wait_ready(Duration::from_secs(30));
    }

    pub fn socket(&self) -> PathBuf {
        self.socket_dir.join("multus.sock")
    }

    /// `GET path` on the daemon's socket: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        plexus::unix_http::call(
            &self.socket(),
            "GET",
            path,
            None,
            vec![],
            Duration::from_secs(5),
        )
        .ok()
        .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }

    pub fn readyz(&self) -> Option<u16> {
        self.get("/readyz").map(|(s, _)| s)
    }

    #[track_caller]
    pub fn wait_ready(&self, within: Duration) {
        let t = Instant::now();
        while self.readyz() != Some(200) {
            if let Some(c) = &self.child {
                let pid = c.id();
                assert!(
                    std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    "daemon exited: {}",
                    self.log()
                );
            }
            assert!(
                t.elapsed() < within,
                "daemon not ready after {within:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as an OOM kill or a node problem would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as the kubelet stops a pod; returns its exit status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("running");
        let t = Instant::now();
        crate::sh(&["kill", "-TERM", &c.id().to_string()]);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return (st, t.elapsed());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "daemon ignored SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the metrics port (inside the node netns): (status, body).
    pub fn tcp_get(&self, path: &str) -> (u16, String) {
        let port = self.metrics_port.expect("metricsPort set");
        let path = path.to_string();
        crate::in_netns(&self.netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let r = plexus::unix_http::request_over(s, "GET", &path, None, vec![])
                    .await
                    .unwrap();
                (r.status, String::from_utf8(r.body).unwrap())
            })
        })
    }

    /// `/metrics` from the metrics port.
    pub fn metrics(&self) -> String {
        let (status, body) = self.tcp_get("/metrics");
        assert_eq!(status, 200);
        body
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of one metric line (`name{labels} value`), 0 if absent.
pub fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
