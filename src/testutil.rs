//! What the engine's and the daemon's unit tests share: script delegates in a temp "node" and a
//! fake pod netns, so the core is tested without root.

use crate::cache::{Loaded, ResultCache, SandboxRecord};
use crate::cni::Request;
use crate::config::NetConf;
use crate::netns::NetnsOps;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// A netns that is not plexus's own and has only `lo` (index 1); default routes and sweeps
/// (their `keep` lists) are recorded.
#[derive(Default)]
pub struct FakeNetns {
    pub own: bool,
    pub routes: Mutex<Vec<String>>,
    /// Each sweep's links-before and the interface names in its scope.
    pub sweeps: Mutex<Vec<(Vec<u32>, Vec<String>)>>,
}

impl NetnsOps for FakeNetns {
    fn link_names(&self, _netns: &str) -> std::io::Result<Vec<String>> {
        Ok(vec!["lo".into()])
    }
    fn set_default_route(
        &self,
        _netns: &str,
        gw: std::net::IpAddr,
        ifname: &str,
    ) -> std::io::Result<()> {
        self.routes.lock().unwrap().push(format!("{gw} {ifname}"));
        Ok(())
    }
    fn is_own(&self, _netns: &str) -> std::io::Result<bool> {
        Ok(self.own)
    }
    fn pod_links(&self, _netns: &str) -> std::io::Result<(crate::cache::PodLinks, Vec<String>)> {
        Ok((
            crate::cache::PodLinks {
                netns_dev: 1,
                netns_ino: 2,
                indexes: vec![1],
            },
            vec!["lo".into()],
        ))
    }
    fn sweep(
        &self,
        _netns: &str,
        before: &crate::cache::PodLinks,
        scope: &crate::netns::SweepScope,
    ) -> std::io::Result<Vec<String>> {
        self.sweeps
            .lock()
            .unwrap()
            .push((before.indexes.clone(), scope.ifnames.clone()));
        Ok(vec![])
    }
}

/// A test node: a bin dir with the `rec` script delegate, a cni dir, and the delegates' log.
pub struct Node {
    pub dir: tempfile::TempDir,
}

/// `rec` logs "COMMAND network ifname netns" and answers ADD with one interface; a config key
/// `fail` (a verb) makes it fail on that verb, `sleep` (seconds) makes its ADD slow, `dump` makes
/// it copy its config to `<log>.<network>.<verb>`, `sabotage` (a directory) makes its ADD put a
/// file where that directory was (the directory moves to `<dir>.gone`).
const REC: &str = r#"#!/bin/sh
conf=$(cat)
name=$(printf '%s' "$conf" | grep -o '"name":"[^"]*"' | head -n 1 | cut -d '"' -f 4)
echo "$CNI_COMMAND $name $CNI_IFNAME $CNI_NETNS" >> "$LOG"
case "$conf" in *'"dump":true'*) printf '%s' "$conf" > "$LOG.$name.$CNI_COMMAND";; esac
case "$CNI_COMMAND$conf" in ADD*'"sabotage":'*) d=$(printf '%s' "$conf" | sed -n 's/.*"sabotage":"\([^"]*\)".*/\1/p'); mv "$d" "$d.gone" && : > "$d";; esac
case "$CNI_COMMAND$conf" in ADD*'"sleep":'*) sleep "$(printf '%s' "$conf" | sed -n 's/.*"sleep":\([0-9.]*\).*/\1/p')";; esac
case "$conf" in *'"fail":"'"$CNI_COMMAND"'"'*) echo '{"code":7,"msg":"injected"}'; exit 1;; esac
case "$CNI_COMMAND" in
  ADD) printf '{"cniVersion":"1.0.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"address":"10.1.0.2/24","gateway":"10.1.0.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"}]}' "$CNI_IFNAME" "$CNI_NETNS";;
  VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}';;
esac
"#;

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        let rec = dir.path().join("bin/rec");
        std::fs::write(&rec, REC).unwrap();
        std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
        Node { dir }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
            .collect()
    }

    pub fn clear_log(&self) {
        let _ = std::fs::remove_file(self.log_path());
    }

    pub fn net(name: &str, extra: Value) -> Value {
        let mut n = json!({"cniVersion": "1.0.0", "name": name, "type": "rec"});
        for (k, v) in extra.as_object().unwrap() {
            n[k] = v.clone();
        }
        n
    }

    /// A plexus config named `name` with these delegates.
    pub fn conf(&self, name: &str, version: &str, delegates: Vec<Value>, extra: Value) -> NetConf {
        let mut c = json!({
            "cniVersion": version, "name": name, "type": "plexus",
            "binDir": self.dir.path().join("bin"), "cniDir": self.dir.path().join("cni"),
            "confDir": self.dir.path().join("conf"),
            "delegateEnv": [format!("LOG={}", self.log_path().display())],
            "delegates": delegates,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        NetConf::parse(c.to_string().as_bytes()).unwrap()
    }

    pub fn cache(&self) -> ResultCache {
        ResultCache::new(&self.dir.path().join("cni"))
    }

    pub fn records(&self) -> Vec<SandboxRecord> {
        self.cache()
            .all()
            .into_iter()
            .filter_map(|(_, l)| match l {
                Loaded::Found(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

pub fn req(cmd: &str, id: &str, args: &str) -> Request {
    let vars: std::collections::HashMap<&str, String> = [
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", id.to_string()),
        ("CNI_NETNS", "/var/run/netns/test".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_ARGS", args.to_string()),
    ]
    .into();
    Request::from_env(|k| vars.get(k).cloned(), vec![]).unwrap()
}
