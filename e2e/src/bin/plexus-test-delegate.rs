//! A CNI plugin for plexus's e2e suite. Invoked as:
//! - `test-record`: appends what it received (argv0, CNI_* env, stdin config) as one JSON line to
//!   the file named by the config key `record`, then succeeds;
//! - `test-fail`: records, then fails with a CNI error (`failCode`, default 7) on the verbs in
//!   `failOn` (default `["ADD"]`);
//! - `test-hang`: records, then sleeps forever on the verbs in `hangOn` (default `["ADD"]`);
//!
//! On ADD it prints `prevResult` unchanged when given one (as a chained meta plugin must), else a
//! result with one interface named CNI_IFNAME and the config's `address`, in the config's
//! cniVersion (or `answerVersion`, to test conversion). Other keys: `garbage` (print non-JSON),
//! `sleepMs` (sleep that long first on the verbs in `sleepOn`, default `["ADD"]`: a slow delegate),
//! `floodBytes` (on ADD, print that many bytes of `x` and exit 0), `holdStdout` (on ADD, leave a
//! `sleep` child holding stdout open, then answer and exit), `run` (on ADD, before failing or
//! hanging, run this argv with `{netns}` replaced by CNI_NETNS: a plugin's half-done work, such as
//! a macvlan under its temporary name).

use serde_json::{json, Value};
use std::io::{Read, Write};

const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

fn verbs(conf: &Value, key: &str) -> Vec<String> {
    conf.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_else(|| vec!["ADD".to_string()])
}

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let role = std::path::Path::new(&argv0)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let command = env("CNI_COMMAND");
    if command == "VERSION" {
        println!(
            "{}",
            json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED})
        );
        return;
    }
    let conf: Value = serde_json::from_str(&stdin).unwrap_or(Value::Null);
    if let Some(path) = conf.get("record").and_then(Value::as_str) {
        let line = json!({
            "role": role,
            "pid": std::process::id(),
            "command": command,
            "containerID": env("CNI_CONTAINERID"),
            "netns": env("CNI_NETNS"),
            "netnsOverride": env("CNI_NETNS_OVERRIDE"),
            "ifname": env("CNI_IFNAME"),
            "args": env("CNI_ARGS"),
            "path": env("CNI_PATH"),
            "config": conf,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("record file");
        f.write_all(format!("{line}\n").as_bytes()).expect("record");
    }
    eprintln!("{role}: {command} {}", env("CNI_IFNAME"));
    if let Some(argv) = conf.get("run").and_then(Value::as_array) {
        if command == "ADD" {
            let argv: Vec<String> = argv
                .iter()
                .filter_map(Value::as_str)
                .map(|a| a.replace("{netns}", &env("CNI_NETNS")))
                .collect();
            if let Some((prog, args)) = argv.split_first() {
                let ok = std::process::Command::new(prog)
                    .args(args)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    println!(
                        "{}",
                        json!({"cniVersion": conf["cniVersion"], "code": 999, "msg": format!("run {argv:?} failed")})
                    );
                    std::process::exit(1);
                }
            }
        }
    }
    if let Some(ms) = conf.get("sleepMs").and_then(Value::as_u64) {
        if verbs(&conf, "sleepOn").contains(&command) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
    if role.contains("hang") && verbs(&conf, "hangOn").contains(&command) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    if role.contains("fail") && verbs(&conf, "failOn").contains(&command) {
        let code = conf.get("failCode").and_then(Value::as_u64).unwrap_or(7);
        println!(
            "{}",
            json!({"cniVersion": conf["cniVersion"], "code": code, "msg": format!("injected failure on {command}")})
        );
        std::process::exit(1);
    }
    if command != "ADD" {
        return;
    }
    if command == "ADD" {
        if let Some(n) = conf.get("floodBytes").and_then(Value::as_u64) {
            let chunk = vec![b'x'; 1 << 16];
            let mut out = std::io::stdout().lock();
            let mut left = n as usize;
            while left > 0 {
                let k = left.min(chunk.len());
                if out.write_all(&chunk[..k]).is_err() {
                    return;
                }
                left -= k;
            }
            return;
        }
        if conf.get("holdStdout").and_then(Value::as_bool) == Some(true) {
            let _ = std::process::Command::new("sleep")
                .arg("3600")
                .stdin(std::process::Stdio::null())
                .spawn();
        }
    }
    if conf.get("garbage").and_then(Value::as_bool) == Some(true) {
        println!("this is not json");
        return;
    }
    if let Some(prev) = conf.get("prevResult") {
        println!("{prev}");
        return;
    }
    let version = conf
        .get("answerVersion")
        .or_else(|| conf.get("cniVersion"))
        .and_then(Value::as_str)
        .unwrap_or("0.1.0")
        .to_string();
    let address = conf
        .get("address")
        .and_then(Value::as_str)
        .unwrap_or("192.0.2.10/24");
    let result = if version.starts_with("0.1") || version.starts_with("0.2") {
        json!({"cniVersion": version, "ip4": {"ip": address}, "dns": {}})
    } else {
        let mut ip = json!({"address": address, "interface": 0});
        if version.starts_with("0.") {
            ip["version"] = json!(if address.contains(':') { "6" } else { "4" });
        }
        let mut iface = json!({"name": env("CNI_IFNAME"), "sandbox": env("CNI_NETNS")});
        if version == "1.1.0" {
            iface["mtu"] = json!(1400);
        }
        json!({"cniVersion": version, "interfaces": [iface], "ips": [ip], "dns": {}})
    };
    println!("{result}");
}
