//! `plexus inspect` and `plexus validate` as an operator runs them: the built binary, golden
//! outputs in `tests/golden/` (compared exactly; `UPDATE_GOLDEN=1` rewrites them, never when `CI`
//! is set), JSON parsed back and checked field by field, exit codes, and the binary run as the
//! kubectl plugin `kubectl-plexus`. No root needed.

use plexus::cache::{AttachmentRecord, ResultCache, SandboxRecord, KIND};
use plexus::plan::DelegateInputs;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_plexus");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_bin(bin: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin)
        .args(args)
        .current_dir(ROOT)
        .env_remove("CNI_COMMAND")
        .output()
        .expect("runs");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).expect("utf-8"),
        stderr: String::from_utf8(out.stderr).expect("utf-8"),
    }
}

fn plexus(args: &[&str]) -> Run {
    run_bin(Path::new(BIN), args)
}

/// Compare with `tests/golden/<name>` exactly, or rewrite it with `UPDATE_GOLDEN=1` (not in CI).
fn golden(name: &str, actual: &str) {
    let path = Path::new(ROOT).join("tests/golden").join(name);
    let update =
        std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") && std::env::var_os("CI").is_none();
    if update {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to write it. Output:\n{actual}",
            path.display()
        )
    });
    assert!(
        actual == want,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it)\n--- want\n{want}\n--- got\n{actual}",
        path.display()
    );
}

// ---------------------------------------------------------------------------------------------
// inspect

const OK_ID: &str = "c0ffee01aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
const DEL_FAILED_ID: &str = "c0ffee02bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2";
const PENDING_ID: &str = "beef0000cccccccccccccccccccccccccccccccccccccccccccccccccccccc03";
const PODMAN_ID: &str = "f00d0000dddddddddddddddddddddddddddddddddddddddddddddddddddddd04";

fn attachment(
    ifname: &str,
    status_name: &str,
    cluster: bool,
    config: Value,
    result: Option<Value>,
) -> AttachmentRecord {
    AttachmentRecord {
        network: config["name"].as_str().unwrap().into(),
        ifname: ifname.into(),
        cluster,
        config: config.to_string(),
        inputs: DelegateInputs::default(),
        result,
        device_info_file: None,
        status_name: status_name.into(),
        device: None,
        selection: None,
        claim: None,
    }
}

fn cbr0() -> Value {
    json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]})
}

fn record(
    network: &str,
    id: &str,
    pod: Option<&str>,
    attachments: Vec<AttachmentRecord>,
) -> SandboxRecord {
    let cni_args = match pod {
        Some(p) => {
            let (ns, name) = p.split_once('/').unwrap();
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"
            )
        }
        None => String::new(),
    };
    SandboxRecord {
        kind: KIND.into(),
        network: network.into(),
        container_id: id.into(),
        if_name: "eth0".into(),
        netns: format!("/var/run/netns/cni-{}", &id[..8]),
        cni_args,
        pod: pod.map(String::from),
        created: "2025-03-04T05:06:07Z".into(),
        config: String::new(),
        cni_path: vec![],
        attachments,
        del_attempts: 0,
        links_before: None,
    }
}

/// A cache with one sandbox of each state, one without a pod, and an unreadable file.
fn cache() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let c = ResultCache::new(d.path());
    let sb = "/var/run/netns/cni-c0ffee01";
    let mut vf = attachment(
        "net2",
        "ns1/sriov-net",
        false,
        json!({"cniVersion": "0.4.0", "name": "sriov-net", "type": "sriov", "deviceID": "0000:03:02.1"}),
        Some(
            json!({"cniVersion": "0.4.0", "interfaces": [{"name": "net2", "sandbox": sb}],
            "ips": [{"version": "4", "address": "10.56.0.7/24", "interface": 0}]}),
        ),
    );
    vf.device = Some(("intel.com/sriov_netdevice".into(), "0000:03:02.1".into()));
    c.store(&record(
        "plexus",
        OK_ID,
        Some("ns1/web-0"),
        vec![
            attachment(
                "eth0",
                "",
                true,
                cbr0(),
                Some(json!({"cniVersion": "1.0.0",
                    "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                                   {"name": "veth1234", "mac": "aa:bb:cc:00:00:02"},
                                   {"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": sb}],
                    "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2}]})),
            ),
            attachment(
                "net1",
                "ns1/macvlan-conf",
                false,
                json!({"cniVersion": "1.0.0", "name": "macvlan-conf", "type": "macvlan", "master": "eth0"}),
                Some(json!({"cniVersion": "1.0.0",
                    "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": sb}],
                    "ips": [{"address": "10.1.0.5/24", "interface": 0},
                            {"address": "fd00:1::5/64", "interface": 0}]})),
            ),
            vf,
        ],
    ))
    .unwrap();
    // A VF from a DRA claim, its ADD cut short after the claim's status was marked pending.
    let mut storage = attachment(
        "net1",
        "ns1/storage",
        false,
        json!({"cniVersion": "1.0.0", "name": "storage", "plugins": [{"type": "sriov"}, {"type": "tuning"}]}),
        None,
    );
    storage.device = Some(("example.com/vf".into(), "0000:5e:00.2".into()));
    storage.claim = Some(plexus::k8s::dra::ClaimDevice {
        namespace: "ns1".into(),
        claim: "db-0-net-7xk2q".into(),
        pod_claim: "net".into(),
        request: "vf".into(),
        driver: "sriov.example.com".into(),
        pool: "node-1".into(),
        device: "vf-2".into(),
        share_id: None,
        interface: None,
        sandbox: None,
        status_entry: plexus::k8s::dra::StatusEntry::Pending,
    });
    c.store(&record(
        "plexus",
        PENDING_ID,
        Some("ns1/db-0"),
        vec![
            attachment(
                "eth0",
                "",
                true,
                cbr0(),
                Some(json!({"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.9/16"}]})),
            ),
            storage,
        ],
    ))
    .unwrap();
    let mut failed = record(
        "plexus",
        DEL_FAILED_ID,
        Some("ns2/old-1"),
        vec![attachment(
            "net1",
            "ns2/mv",
            false,
            json!({"cniVersion": "1.0.0", "name": "mv", "type": "macvlan"}),
            Some(json!({"cniVersion": "1.0.0", "ips": [{"address": "10.3.0.4/24"}]})),
        )],
    );
    failed.del_attempts = 2;
    c.store(&failed).unwrap();
    let mut podman = record(
        "podman",
        PODMAN_ID,
        None,
        vec![attachment(
            "eth0",
            "",
            true,
            cbr0(),
            Some(json!({"cniVersion": "1.0.0"})),
        )],
    );
    podman.created = String::new();
    c.store(&podman).unwrap();
    std::fs::write(
        d.path()
            .join("plexus/attachments/plexus=bad00000=eth0.json"),
        br#"{"kind": "plexusCacheV2", "containerId": "bad00000", "ifN"#,
    )
    .unwrap();
    d
}

fn dir_str(d: &tempfile::TempDir) -> String {
    d.path().display().to_string()
}

/// Temp paths in output, made stable for golden files.
fn normalize(s: &str, d: &tempfile::TempDir) -> String {
    s.replace(&dir_str(d), "$CNI_DIR")
}

fn inspect(d: &tempfile::TempDir, extra: &[&str]) -> Run {
    let dir = dir_str(d);
    let sock = format!("{dir}/multus.sock");
    let mut args = vec!["inspect", "--cni-dir", &dir, "--socket", &sock];
    args.extend_from_slice(extra);
    plexus(&args)
}

#[test]
fn inspect_lists_every_sandbox() {
    let d = cache();
    let r = inspect(&d, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    golden("inspect-list.txt", &normalize(&r.stdout, &d));

    let r = inspect(&d, &["--output", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["cniDir"], dir_str(&d));
    assert_eq!(v["query"], Value::Null);
    let sandboxes = v["sandboxes"].as_array().unwrap();
    let by_id = |id: &str| {
        sandboxes
            .iter()
            .find(|s| s["containerId"] == id)
            .unwrap_or_else(|| panic!("{id} not listed"))
    };
    assert_eq!(sandboxes.len(), 4);
    let ok = by_id(OK_ID);
    assert_eq!(
        (&ok["pod"], &ok["network"], &ok["interfaces"], &ok["state"]),
        (
            &json!("ns1/web-0"),
            &json!("plexus"),
            &json!(3),
            &json!("ok")
        )
    );
    assert_eq!(ok["created"], "2025-03-04T05:06:07Z");
    assert_eq!(ok["daemon"], Value::Null, "the list asks no daemon");
    let pending = by_id(PENDING_ID);
    assert_eq!(
        (&pending["state"], &pending["pendingAttachments"]),
        (&json!("add-pending"), &json!(1))
    );
    let failed = by_id(DEL_FAILED_ID);
    assert_eq!(
        (&failed["state"], &failed["delAttempts"]),
        (&json!("del-failed"), &json!(2))
    );
    let podman = by_id(PODMAN_ID);
    assert_eq!(
        (&podman["pod"], &podman["network"], &podman["created"]),
        (&Value::Null, &json!("podman"), &Value::Null)
    );
    let bad = v["unreadable"].as_array().unwrap();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["file"]
        .as_str()
        .unwrap()
        .ends_with("plexus=bad00000=eth0.json"));
    assert!(
        bad[0]["reason"].as_str().unwrap().contains("EOF"),
        "{}",
        bad[0]
    );
}

#[test]
fn inspect_one_sandbox_without_a_daemon() {
    let d = cache();
    let r = inspect(&d, &["c0ffee01"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    golden("inspect-ok.txt", &normalize(&r.stdout, &d));
    // A pod, with an ADD pending; a DEL that failed twice.
    let r = inspect(&d, &["ns1/db-0"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    golden("inspect-pending.txt", &normalize(&r.stdout, &d));
    let r = inspect(&d, &["ns1/db-0", "--output", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["sandboxes"][0]["attachments"][1]["claim"],
        json!({"namespace": "ns1", "claim": "db-0-net-7xk2q", "podClaim": "net", "request": "vf",
            "driver": "sriov.example.com", "pool": "node-1", "device": "vf-2", "statusEntry": "pending"})
    );
    let r = inspect(&d, &[DEL_FAILED_ID]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    golden("inspect-del-failed.txt", &normalize(&r.stdout, &d));

    let r = inspect(&d, &["c0ffee01", "--output", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["query"], "c0ffee01");
    assert_eq!(v["unreadable"], json!([]));
    let s = &v["sandboxes"][0];
    assert_eq!(s["containerId"], OK_ID);
    assert_eq!(s["ifname"], "eth0");
    assert_eq!(s["netns"], "/var/run/netns/cni-c0ffee01");
    assert!(s["file"]
        .as_str()
        .unwrap()
        .ends_with(&format!("plexus={OK_ID}=eth0.json")));
    let a = s["attachments"].as_array().unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(
        a[0],
        json!({"ifname": "eth0", "network": "cbr0", "statusName": "cbr0", "nad": null,
            "cluster": true, "chain": "bridge+portmap", "plugins": ["bridge", "portmap"],
            "cniVersion": "1.0.0", "ips": ["10.88.0.5/16"], "mac": "0a:58:0a:58:00:05",
            "device": null, "claim": null, "state": "ok", "stateText": "ok", "problems": []})
    );
    assert_eq!(a[1]["nad"], "ns1/macvlan-conf");
    assert_eq!(a[1]["ips"], json!(["10.1.0.5/24", "fd00:1::5/64"]));
    assert_eq!(a[1]["mac"], "02:00:00:00:00:01");
    assert_eq!(a[2]["cniVersion"], "0.4.0");
    assert_eq!(a[2]["ips"], json!(["10.56.0.7/24"]));
    assert_eq!(a[2]["mac"], Value::Null);
    assert_eq!(
        a[2]["device"],
        json!({"resource": "intel.com/sriov_netdevice", "id": "0000:03:02.1"})
    );
    let daemon = &s["daemon"];
    assert_eq!(daemon["reachable"], false);
    assert!(daemon["error"].as_str().unwrap().contains("no socket at"));
    assert_eq!(daemon["annotation"], Value::Null);

    let r = inspect(&d, &["ns1/db-0", "--output", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let a = &v["sandboxes"][0]["attachments"][1];
    assert_eq!(
        (&a["state"], &a["stateText"], &a["ips"]),
        (
            &json!("add-pending"),
            &json!("ADD pending (never finished: a crash or a call in flight)"),
            &json!([])
        )
    );
    let r = inspect(&d, &["c0ffee02", "--output", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["sandboxes"][0]["attachments"][0]["stateText"],
        "DEL failed 2 times, retried on the next DEL"
    );
}

#[test]
fn inspect_not_found_ambiguous_and_usage() {
    let d = cache();
    let r = inspect(&d, &["zzz"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("matches \"zzz\""), "{}", r.stderr);
    assert_eq!(inspect(&d, &["ns9/nobody"]).code, 1);
    let r = inspect(&d, &["c0ffee"]);
    assert_eq!(r.code, 1);
    golden("inspect-ambiguous.txt", &normalize(&r.stderr, &d));
    // The record of a container whose file cannot be read: not found, and the file is named.
    let r = inspect(&d, &["bad0"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot be read") && r.stderr.contains("plexus=bad00000=eth0.json"),
        "{}",
        r.stderr
    );
    assert_eq!(inspect(&d, &["a/b/c"]).code, 2);
    assert_eq!(inspect(&d, &["--output", "yaml"]).code, 2);
    // No cache at all is an empty list, not an error.
    let empty = tempfile::tempdir().unwrap();
    let r = inspect(&empty, &[]);
    assert_eq!(r.code, 0);
    assert_eq!(
        normalize(&r.stdout, &empty),
        "no sandboxes in the cache at $CNI_DIR/plexus\n"
    );
}

/// A stand-in node daemon on a unix socket: answers `GET /plexus/v1/pod` with `body` (or never
/// answers, when `body` is `None`).
fn fake_daemon(path: &Path, body: Option<Value>) -> std::thread::JoinHandle<Vec<String>> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut seen = vec![];
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8_lossy(&req).to_string();
        seen.push(req.lines().next().unwrap_or("").to_string());
        match body {
            Some(b) => {
                let b = b.to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                );
            }
            None => std::thread::sleep(Duration::from_secs(3)),
        }
        seen
    })
}

fn pod_answer(annotation: &str, uid: &str) -> Value {
    json!({"synced": true, "found": true, "uid": uid, "nodeName": "node-a",
        "annotations": {"k8s.v1.cni.cncf.io/networks": annotation, "other": "x"}})
}

#[test]
fn inspect_asks_the_daemon_and_compares_the_annotation() {
    let d = cache();
    let sock = d.path().join("multus.sock");
    let server = fake_daemon(
        &sock,
        Some(pod_answer("macvlan-conf, sriov-net@net2", "uid-web-0")),
    );
    let r = inspect(&d, &["c0ffee01"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    golden("inspect-daemon-agree.txt", &normalize(&r.stdout, &d));
    assert_eq!(
        server.join().unwrap(),
        ["GET /plexus/v1/pod?namespace=ns1&name=web-0 HTTP/1.1"]
    );

    std::fs::remove_file(&sock).unwrap();
    let server = fake_daemon(&sock, Some(pod_answer("macvlan-conf,new-net", "uid-other")));
    let r = inspect(&d, &["c0ffee01", "--output", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    server.join().unwrap();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let daemon = &v["sandboxes"][0]["daemon"];
    assert_eq!(
        (
            &daemon["reachable"],
            &daemon["synced"],
            &daemon["found"],
            &daemon["nodeName"]
        ),
        (&json!(true), &json!(true), &json!(true), &json!("node-a"))
    );
    assert_eq!(
        (&daemon["uid"], &daemon["sandboxUid"], &daemon["uidMatches"]),
        (&json!("uid-other"), &json!("uid-web-0"), &json!(false))
    );
    let ann = &daemon["annotation"];
    assert_eq!(ann["agree"], false);
    assert_eq!(ann["expected"], json!(["ns1/macvlan-conf", "ns1/new-net"]));
    assert_eq!(ann["cached"], json!(["ns1/macvlan-conf", "ns1/sriov-net"]));
    assert_eq!(ann["missing"], json!(["ns1/new-net"]));
    assert_eq!(ann["extra"], json!(["ns1/sriov-net"]));
    assert_eq!(ann["orderDiffers"], false);

    std::fs::remove_file(&sock).unwrap();
    let server = fake_daemon(&sock, Some(pod_answer("macvlan-conf,new-net", "uid-other")));
    let r = inspect(&d, &["c0ffee01"]);
    server.join().unwrap();
    golden("inspect-daemon-differs.txt", &normalize(&r.stdout, &d));
}

#[test]
fn inspect_goes_on_when_the_daemon_is_silent() {
    let d = cache();
    let sock = d.path().join("multus.sock");
    let _server = fake_daemon(&sock, None);
    let t = Instant::now();
    let r = inspect(&d, &["c0ffee01"]);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.code, 0, "daemon errors never fail inspect: {}", r.stderr);
    assert!(
        r.stdout.contains("daemon  not reachable (") && r.stdout.contains("no reply in time"),
        "{}",
        r.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// validate

fn data(name: &str) -> String {
    format!("tests/data/validate/{name}")
}

fn validate(args: &[&str]) -> Run {
    let mut a = vec!["validate"];
    a.extend_from_slice(args);
    plexus(&a)
}

fn json_of(r: &Run) -> Vec<Value> {
    serde_json::from_str::<Value>(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn validate_a_multi_document_file_of_nads_and_workloads() {
    let f = data("good.yaml");
    let r = validate(&["-f", &f]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    golden("validate-good.txt", &r.stdout);
    let v = json_of(&validate(&["-f", &f, "--output", "json"]));
    assert_eq!(v.len(), 6);
    for (i, o) in v.iter().enumerate() {
        assert_eq!(o["file"], f);
        assert_eq!(o["document"], i + 1);
        assert_eq!(o["item"], Value::Null);
        assert_eq!(o["valid"], true, "{o}");
        assert_eq!(o["errors"], json!([]), "{o}");
    }
    let kinds: Vec<&str> = v.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "NetworkAttachmentDefinition",
            "NetworkAttachmentDefinition",
            "NetworkAttachmentDefinition",
            "NetworkAttachmentDefinition",
            "Deployment",
            "Pod"
        ]
    );
    assert_eq!(
        v[1]["network"],
        json!({"name": "storage", "chain": "bridge+portmap", "cniVersion": "1.0.0"})
    );
    assert_eq!(v[3]["warnings"][0]["field"], "spec.config.ipam", "L2 only");
    assert_eq!(v[4]["name"], "ns1/web");
    let atts = v[4]["attachments"].as_array().unwrap();
    let rows: Vec<(&str, &Value, &Value)> = atts
        .iter()
        .map(|a| (a["ifname"].as_str().unwrap(), &a["nad"], &a["chain"]))
        .collect();
    assert_eq!(
        rows,
        [
            ("eth0", &Value::Null, &Value::Null),
            ("data", &json!("ns1/macvlan-conf"), &json!("macvlan")),
            ("net2", &json!("ns1/storage"), &json!("bridge+portmap")),
            ("net3", &json!("default/l2-only"), &json!("bridge")),
        ]
    );
    assert_eq!(
        (&atts[0]["cluster"], &atts[0]["standIn"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(
        v[5]["attachments"][1],
        json!({"ifname": "vf0", "network": "sriov-net", "nad": "ns1/sriov-net", "chain": "sriov",
            "cluster": false, "needsDevice": "intel.com/sriov_netdevice", "standIn": false})
    );
    // A List of the same objects, as `kubectl get -o json` prints: the same verdicts.
    let d = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(Path::new(ROOT).join(&f)).unwrap();
    let items: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    let list = d.path().join("list.json");
    std::fs::write(
        &list,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .unwrap();
    let v = json_of(&validate(&[
        "-f",
        list.to_str().unwrap(),
        "--output",
        "json",
    ]));
    assert_eq!(v.len(), 6);
    assert!(v.iter().all(|o| o["valid"] == true && o["document"] == 1));
    assert_eq!(v[5]["item"], 5);
}

#[test]
fn validate_configs() {
    let r = validate(&[
        "-f",
        &data("plexus.conflist"),
        "-f",
        &data("daemon-config.json"),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    golden("validate-configs.txt", &r.stdout);
    let v = json_of(&validate(&[
        "-f",
        &data("plexus.conflist"),
        "-f",
        &data("daemon-config.json"),
        "--output",
        "json",
    ]));
    assert_eq!(
        (&v[0]["kind"], &v[0]["name"], &v[1]["kind"]),
        (
            &json!("PlexusConfig"),
            &json!("plexus"),
            &json!("DaemonConfig")
        )
    );
    assert_eq!(v[0]["attachments"][1]["ifname"], "net1");
}

/// One refusal: the file(s), the golden text, and the first error's field and CNI code.
struct Refusal {
    golden: &'static str,
    args: Vec<String>,
    object: usize,
    field: Value,
    code: Value,
    contains: &'static str,
}

fn refusal(
    golden: &'static str,
    args: &[&str],
    object: usize,
    field: Value,
    code: Value,
    contains: &'static str,
) -> Refusal {
    Refusal {
        golden,
        args: args.iter().map(|s| s.to_string()).collect(),
        object,
        field,
        code,
        contains,
    }
}

#[test]
fn validate_refusals() {
    let ann = json!("metadata.annotations[\"k8s.v1.cni.cncf.io/networks\"]");
    let cases = [
        refusal(
            "validate-bad-yaml.txt",
            &["-f", &data("bad-yaml.yaml")],
            0,
            Value::Null,
            Value::Null,
            "line 7 column 1",
        ),
        refusal(
            "validate-unknown-kind.txt",
            &["-f", &data("unknown-kind.yaml")],
            0,
            json!("kind"),
            Value::Null,
            "Service is not checked",
        ),
        refusal(
            "validate-nad-self-type.txt",
            &["-f", &data("nad-self-type.yaml")],
            0,
            json!("spec.config.type"),
            json!(7),
            "plexus (or Multus) itself",
        ),
        refusal(
            "validate-nad-bad-type.txt",
            &["-f", &data("nad-bad-type.yaml")],
            0,
            json!("spec.config.plugins[1].type"),
            json!(7),
            "bare file name",
        ),
        refusal(
            "validate-nad-bad-version.txt",
            &["-f", &data("nad-bad-version.yaml")],
            0,
            json!("spec.config.cniVersion"),
            json!(1),
            "9.0.0",
        ),
        refusal(
            "validate-pod-missing-nad.txt",
            &["-f", &data("pod-missing-nad.yaml")],
            0,
            ann.clone(),
            json!(114),
            "ns1/ghost-net not found",
        ),
        refusal(
            "validate-pod-isolation.txt",
            &[
                "-f",
                &data("pod-isolation.yaml"),
                "--config",
                &data("isolation.conflist"),
            ],
            1,
            ann.clone(),
            json!(113),
            "namespaceIsolation",
        ),
        refusal(
            "validate-pod-capability.txt",
            &["-f", &data("pod-capability.yaml")],
            1,
            ann.clone(),
            json!(2),
            "\"mac\" capability",
        ),
        refusal(
            "validate-pod-duplicate-ifname.txt",
            &["-f", &data("pod-duplicate-ifname.yaml")],
            2,
            ann.clone(),
            json!(7),
            "interface name \"data\"",
        ),
        refusal(
            "validate-pod-bad-element.txt",
            &["-f", &data("pod-bad-element.yaml")],
            0,
            ann.clone(),
            json!(7),
            "\"Bad_Name@net1\"",
        ),
    ];
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let r = validate(&args);
        assert_eq!(r.code, 1, "{}: {}{}", c.golden, r.stdout, r.stderr);
        golden(c.golden, &r.stdout);
        let mut json_args = args.clone();
        json_args.extend(["--output", "json"]);
        let v = json_of(&validate(&json_args));
        let o = &v[c.object];
        assert_eq!(o["valid"], false, "{}: {o}", c.golden);
        let e = &o["errors"][0];
        assert_eq!(e["field"], c.field, "{}: {e}", c.golden);
        assert_eq!(e["code"], c.code, "{}: {e}", c.golden);
        assert!(
            e["message"].as_str().unwrap().contains(c.contains),
            "{}: {e}",
            c.golden
        );
        assert_eq!(o["attachments"], json!([]), "{}", c.golden);
    }
    // Without --config, namespace isolation is off: the same pod plans.
    let r = validate(&["-f", &data("pod-isolation.yaml")]);
    assert_eq!(r.code, 0, "{}", r.stdout);
}

#[test]
fn validate_an_oversized_annotation() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("big.yaml");
    let value = "n,".repeat(40 << 10);
    std::fs::write(
        &f,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: big\n  namespace: ns1\n  annotations:\n    k8s.v1.cni.cncf.io/networks: \"{value}\"\n"
        ),
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let r = validate(&["-f", f]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    golden(
        "validate-pod-oversized.txt",
        &r.stdout.replace(&d.path().display().to_string(), "$DIR"),
    );
    let v = json_of(&validate(&["-f", f, "--output", "json"]));
    let e = &v[0]["errors"][0];
    assert_eq!(e["code"], 7);
    assert!(
        e["message"].as_str().unwrap().contains("81920 bytes"),
        "{e}"
    );
}

#[test]
fn validate_exit_codes() {
    assert_eq!(validate(&[]).code, 2, "no -f");
    let r = validate(&["-f", "tests/data/validate/nonexistent.yaml"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nonexistent.yaml"), "{}", r.stderr);
    let r = validate(&["-f", &data("good.yaml"), "--config", "/nonexistent.conf"]);
    assert_eq!(r.code, 2, "an unreadable --config");
    assert_eq!(
        validate(&["-f", &data("good.yaml"), "--output", "xml"]).code,
        2
    );
    assert_eq!(validate(&["-f", &data("good.yaml")]).code, 0);
    // One bad object among good ones fails the whole call.
    let r = validate(&["-f", &data("good.yaml"), "-f", &data("unknown-kind.yaml")]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.ends_with("7 objects: 6 valid, 1 invalid\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn runs_as_the_kubectl_plugin() {
    let d = tempfile::tempdir().unwrap();
    let link: PathBuf = d.path().join("kubectl-plexus");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let f = data("good.yaml");
    let as_plugin = run_bin(&link, &["validate", "-f", &f]);
    assert_eq!(as_plugin.code, 0, "{}", as_plugin.stderr);
    assert_eq!(as_plugin.stdout, plexus(&["validate", "-f", &f]).stdout);
    let bad = run_bin(
        &link,
        &["validate", "--filename", &data("pod-missing-nad.yaml")],
    );
    assert_eq!(bad.code, 1);
    assert!(run_bin(&link, &["validate", "--help"])
        .stdout
        .contains("--filename"));
    let d2 = cache();
    let dir = dir_str(&d2);
    let r = run_bin(
        &link,
        &[
            "inspect",
            "--cni-dir",
            &dir,
            "--socket",
            "/nonexistent.sock",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("CONTAINER"), "{}", r.stdout);
}
