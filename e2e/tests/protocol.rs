//! The CNI protocol as plexus speaks it to the runtime and to its delegates, observed through the
//! test delegates (record, fail, hang): env, prevResult, capability filtering, deadlines, DEL order,
//! CHECK/STATUS/GC reach, and bad input.

use plexus_e2e as common;

use common::{sh, TestEnv};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn rec_net(env: &TestEnv, name: &str, version: &str, plugins: Vec<Value>) -> Value {
    let plugins: Vec<Value> = plugins
        .into_iter()
        .map(|mut p| {
            p["record"] = json!(env.record_file());
            p
        })
        .collect();
    json!({"cniVersion": version, "name": name, "plugins": plugins})
}

fn by<'a>(records: &'a [Value], command: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["command"] == command).collect()
}

#[test]
fn env_prevresult_and_capabilities_reach_delegates_as_libcni_would() {
    let env = TestEnv::new("env");
    let cluster = rec_net(
        &env,
        "cluster",
        "1.0.0",
        vec![
            json!({"type": "test-record", "address": "10.9.0.2/24", "capabilities": {"portMappings": true}, "custom": {"kept": [1, 2]}}),
            json!({"type": "test-record", "capabilities": {"bandwidth": true}}),
        ],
    );
    let extra = rec_net(
        &env,
        "extra",
        "0.4.0",
        vec![
            json!({"type": "test-record", "address": "10.8.0.2/24", "capabilities": {"portMappings": true}}),
        ],
    );
    let mut conf = env.plexus_conf("1.1.0", vec![cluster, extra]);
    conf["runtimeConfig"] = json!({"portMappings": [{"hostPort": 1, "containerPort": 2}], "bandwidth": {"ingressRate": 5}, "mac": "x"});
    let out = env.cni_raw(
        "ADD",
        &[
            ("CNI_CONTAINERID", "c-env"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1"),
        ],
        conf.to_string().as_bytes(),
    );
    let result = out.ok().json();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["ips"][0]["address"], "10.9.0.2/24");

    let r = env.records();
    assert_eq!(r.len(), 3);
    let (c0, c1, x) = (&r[0], &r[1], &r[2]);
    for rec in [c0, c1, x] {
        assert_eq!(rec["containerID"], "c-env");
        assert_eq!(rec["netns"], env.netns_path());
        assert_eq!(
            rec["args"],
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1"
        );
        assert_eq!(
            rec["path"],
            format!("{}:{}", env.bin_dir().display(), env.plugins.display())
        );
    }
    assert_eq!(
        (
            c0["ifname"].as_str(),
            c1["ifname"].as_str(),
            x["ifname"].as_str()
        ),
        (Some("eth0"), Some("eth0"), Some("net1"))
    );
    // name and cniVersion injected; unknown keys passed through untouched.
    assert_eq!(c0["config"]["name"], "cluster");
    assert_eq!(c0["config"]["cniVersion"], "1.0.0");
    assert_eq!(c0["config"]["custom"], json!({"kept": [1, 2]}));
    assert_eq!(x["config"]["cniVersion"], "0.4.0");
    // runtimeConfig is each plugin's declared capabilities ∩ the runtime's args, cluster only.
    assert_eq!(
        c0["config"]["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 1, "containerPort": 2}]})
    );
    assert_eq!(
        c1["config"]["runtimeConfig"],
        json!({"bandwidth": {"ingressRate": 5}})
    );
    assert!(x["config"].get("runtimeConfig").is_none());
    // prevResult: none for the first plugin, the first's result (in the network's version) next.
    assert!(c0["config"].get("prevResult").is_none());
    assert_eq!(c1["config"]["prevResult"]["cniVersion"], "1.0.0");
    assert_eq!(
        c1["config"]["prevResult"]["ips"][0]["address"],
        "10.9.0.2/24"
    );
    assert!(
        x["config"].get("prevResult").is_none(),
        "extra networks start their own chain"
    );

    // DEL: networks in reverse, plugins in reverse, each with its network's cached result.
    env.cni_raw(
        "DEL",
        &[("CNI_CONTAINERID", "c-env"), ("CNI_IFNAME", "eth0")],
        conf.to_string().as_bytes(),
    )
    .ok();
    let r = env.records();
    let dels = by(&r, "DEL");
    let order: Vec<(String, bool)> = dels
        .iter()
        .map(|d| {
            (
                d["ifname"].as_str().unwrap().to_string(),
                d["config"]["capabilities"].get("bandwidth").is_some(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("net1".into(), false),
            ("eth0".into(), true),
            ("eth0".into(), false)
        ]
    );
    assert_eq!(
        dels[0]["config"]["prevResult"]["ips"][0]["address"],
        "10.8.0.2/24"
    );
    assert_eq!(dels[0]["config"]["prevResult"]["cniVersion"], "0.4.0");
    assert_eq!(
        dels[1]["config"]["prevResult"]["ips"][0]["address"],
        "10.9.0.2/24"
    );
    assert_eq!(
        dels[2]["config"]["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 1, "containerPort": 2}]}),
        "DEL gets the same runtimeConfig"
    );
    assert!(env.cache_files().is_empty());
}

#[test]
fn delegate_answer_converted_to_the_runtimes_version() {
    let env = TestEnv::new("conv");
    // The delegate's config says 1.0.0 but it answers in 0.2.0; plexus reads that and prints 0.4.0.
    let net = rec_net(
        &env,
        "cluster",
        "1.0.0",
        vec![json!({"type": "test-record", "answerVersion": "0.2.0", "address": "10.7.0.9/16"})],
    );
    let r = env
        .cni(
            "ADD",
            "c-conv",
            "eth0",
            &env.plexus_conf("0.4.0", vec![net.clone()]),
        )
        .ok()
        .json();
    assert_eq!(
        r,
        json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.7.0.9/16"}], "dns": {}})
    );
    env.cni(
        "DEL",
        "c-conv",
        "eth0",
        &env.plexus_conf("0.4.0", vec![net]),
    )
    .ok();
}

#[test]
fn plexus_own_prev_result_feeds_the_cluster_network() {
    let env = TestEnv::new("prev");
    let net = rec_net(
        &env,
        "cluster",
        "1.1.0",
        vec![json!({"type": "test-record"})],
    );
    let mut conf = env.plexus_conf("1.1.0", vec![net]);
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": [{"address": "10.6.0.1/24", "interface": 0}], "dns": {}});
    conf["prevResult"] = prev.clone();
    let r = env.cni("ADD", "c-prev", "eth0", &conf).ok().json();
    assert_eq!(
        r, prev,
        "the pass-through delegate returned what plexus was given"
    );
    assert_eq!(env.records()[0]["config"]["prevResult"], prev);
    env.cni("DEL", "c-prev", "eth0", &conf).ok();
}

#[test]
fn hanging_delegate_is_killed_at_the_deadline_and_rolled_back() {
    let env = TestEnv::new("hang");
    let cluster = rec_net(
        &env,
        "cluster",
        "1.0.0",
        vec![json!({"type": "test-record"})],
    );
    let hang = rec_net(&env, "slow", "1.0.0", vec![json!({"type": "test-hang"})]);
    let mut conf = env.plexus_conf("1.1.0", vec![cluster, hang]);
    conf["delegateTimeoutSeconds"] = json!(1);
    let t = Instant::now();
    let msg = env.cni("ADD", "c-hang", "eth0", &conf).err(101);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        msg.contains("network \"slow\"")
            && msg.contains("test-hang")
            && msg.contains("did not finish"),
        "{msg}"
    );
    let verbs: Vec<(String, String)> = env
        .records()
        .iter()
        .map(|r| {
            (
                r["command"].as_str().unwrap().into(),
                r["ifname"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        verbs,
        [
            ("ADD".into(), "eth0".into()),
            ("ADD".into(), "net1".into()),
            ("DEL".into(), "net1".into()),
            ("DEL".into(), "eth0".into())
        ]
    );
    assert!(env.cache_files().is_empty());
    let alive = std::process::Command::new("pgrep")
        .args(["-f", "test-hang"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&alive.stdout).trim().is_empty() || !env.node_links().is_empty(),
        "hung delegate survived"
    );
}

#[test]
fn failing_del_is_retried_then_given_up_so_the_pod_is_not_stranded() {
    let env = TestEnv::new("delfail");
    let cluster = rec_net(
        &env,
        "cluster",
        "1.0.0",
        vec![json!({"type": "test-record"})],
    );
    let bad = rec_net(
        &env,
        "bad",
        "1.0.0",
        vec![json!({"type": "test-fail", "failOn": ["DEL"], "failCode": 11})],
    );
    let conf = env.plexus_conf("1.1.0", vec![cluster, bad]);
    env.cni("ADD", "c-df", "eth0", &conf).ok();
    // The failing network is reported; the other one is DELeted and not retried.
    for _ in 1..5 {
        let msg = env.cni("DEL", "c-df", "eth0", &conf).err(11);
        assert!(msg.contains("DEL network \"bad\""), "{msg}");
    }
    let eth0_dels = env
        .records()
        .iter()
        .filter(|r| r["command"] == "DEL" && r["ifname"] == "eth0")
        .count();
    assert_eq!(eth0_dels, 1);
    // The fifth failure gives up: DEL succeeds so the pod can go, and the cache is gone.
    env.cni("DEL", "c-df", "eth0", &conf).ok();
    assert!(env.cache_files().is_empty());
    env.cni("DEL", "c-df", "eth0", &conf).ok();
}

#[test]
fn check_reaches_every_attachment() {
    let env = TestEnv::new("check");
    let nets = vec![
        rec_net(
            &env,
            "cluster",
            "1.0.0",
            vec![
                json!({"type": "test-record"}),
                json!({"type": "test-record"}),
            ],
        ),
        rec_net(&env, "a", "0.4.0", vec![json!({"type": "test-record"})]),
        rec_net(&env, "old", "0.3.1", vec![json!({"type": "test-record"})]),
        {
            let mut n = rec_net(
                &env,
                "nocheck",
                "1.0.0",
                vec![json!({"type": "test-record"})],
            );
            n["disableCheck"] = json!(true);
            n
        },
        rec_net(
            &env,
            "b",
            "1.1.0",
            vec![json!({"type": "test-fail", "failOn": []})],
        ),
    ];
    let conf = env.plexus_conf("1.1.0", nets);
    env.cni("ADD", "c-chk", "eth0", &conf).ok();
    env.cni("CHECK", "c-chk", "eth0", &conf).ok();
    let r = env.records();
    let checks: Vec<(&str, &str)> = by(&r, "CHECK")
        .iter()
        .map(|c| {
            (
                c["config"]["name"].as_str().unwrap(),
                c["ifname"].as_str().unwrap(),
            )
        })
        .collect();
    // 0.3.1 cannot be CHECKed and disableCheck is honoured; everything else is, in order.
    assert_eq!(
        checks,
        [
            ("cluster", "eth0"),
            ("cluster", "eth0"),
            ("a", "net1"),
            ("b", "net4")
        ]
    );
    for c in by(&r, "CHECK") {
        assert!(
            c["config"]["prevResult"].is_object(),
            "CHECK without prevResult: {c}"
        );
    }
    // A failing CHECK on the last attachment is reported with its name.
    let mut failing = conf.clone();
    failing["delegates"][4]["plugins"][0]["failOn"] = json!(["CHECK"]);
    // CHECK uses the cached config, so re-ADD with the failing one.
    env.cni("DEL", "c-chk", "eth0", &conf).ok();
    env.cni("ADD", "c-chk", "eth0", &failing).ok();
    let msg = env.cni("CHECK", "c-chk", "eth0", &failing).err(7);
    assert!(
        msg.contains("CHECK network \"b\"") && msg.contains("net4"),
        "{msg}"
    );
    env.cni("DEL", "c-chk", "eth0", &failing).ok();
    // CHECK before ADD / after DEL: unknown container.
    env.cni("CHECK", "c-chk", "eth0", &conf).err(3);
}

#[test]
fn status_waits_for_readiness_and_asks_1_1_delegates() {
    let env = TestEnv::new("status");
    let ready = env.path().join("ready");
    let nets = vec![
        rec_net(
            &env,
            "cluster",
            "1.1.0",
            vec![json!({"type": "test-record"})],
        ),
        rec_net(&env, "older", "1.0.0", vec![json!({"type": "test-record"})]),
    ];
    let mut conf = env.plexus_conf("1.1.0", nets);
    conf["readinessindicatorfile"] = json!(ready);
    let status = |c: &Value| env.cni_raw("STATUS", &[], c.to_string().as_bytes());
    let msg = status(&conf).err(50);
    assert!(msg.contains(&ready.display().to_string()), "{msg}");
    std::fs::write(&ready, "").unwrap();
    status(&conf).ok();
    let r = env.records();
    let asked: Vec<&str> = by(&r, "STATUS")
        .iter()
        .map(|s| s["config"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        asked,
        ["cluster"],
        "only delegates that speak 1.1.0 get STATUS"
    );
    // A delegate's STATUS error is ours.
    conf["delegates"][0]["plugins"][0]["type"] = json!("test-fail");
    conf["delegates"][0]["plugins"][0]["failOn"] = json!(["STATUS"]);
    conf["delegates"][0]["plugins"][0]["failCode"] = json!(50);
    let msg = status(&conf).err(50);
    assert!(msg.contains("STATUS network \"cluster\""), "{msg}");
    // STATUS needs a 1.1.0 config.
    conf["cniVersion"] = json!("1.0.0");
    status(&conf).err(1);
    // ADD waits for readiness, then fails with "try again later".
    std::fs::remove_file(&ready).unwrap();
    conf["cniVersion"] = json!("1.1.0");
    conf["readinessTimeoutSeconds"] = json!(0.3);
    env.cni("ADD", "c-st", "eth0", &conf).err(11);
    assert!(env.cache_files().is_empty());
}

#[test]
fn gc_removes_what_is_no_longer_valid_and_forwards_to_1_1_delegates() {
    let env = TestEnv::new("gc");
    let mut ipam = env.host_local("cluster", "10.243.0.0/24");
    ipam["routes"] = json!([]);
    let nets = vec![
        json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "bridge", "bridge": "plxgc0", "ipam": ipam}]}),
        rec_net(&env, "side", "1.1.0", vec![json!({"type": "test-record"})]),
    ];
    let conf = env.plexus_conf("1.1.0", nets);
    // Two pods; the second one's netns is a separate namespace.
    env.cni("ADD", "c-keep", "eth0", &conf).ok();
    let other = TestEnv::new("gc2");
    let out = env.cni_raw(
        "ADD",
        &[
            ("CNI_CONTAINERID", "c-stale"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", &other.netns_path()),
        ],
        conf.to_string().as_bytes(),
    );
    out.ok();
    assert_eq!(env.reservations("cluster").len(), 2);
    assert_eq!(
        other.pod_links().len(),
        2,
        "lo and eth0 (test-record makes no link)"
    );

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c-keep", "ifname": "eth0"}]);
    env.cni_raw("GC", &[], gc.to_string().as_bytes()).ok();
    // The stale pod's attachments are gone: links, IP reservation, cache.
    assert_eq!(other.pod_links(), ["lo"]);
    assert_eq!(env.reservations("cluster").len(), 1);
    assert_eq!(env.cache_files().len(), 1);
    let mut pod_links = env.pod_links();
    pod_links.sort();
    assert_eq!(pod_links, ["eth0", "lo"], "the valid pod was not touched");
    let r = env.records();
    let del: Vec<&str> = by(&r, "DEL")
        .iter()
        .map(|d| d["containerID"].as_str().unwrap())
        .collect();
    assert_eq!(del, ["c-stale"]);
    // GC went to the 1.1.0 network with its still-valid attachments, translated to its ifnames.
    let gcs = by(&r, "GC");
    assert_eq!(gcs.len(), 1);
    assert_eq!(
        gcs[0]["config"]["cni.dev/valid-attachments"],
        json!([{"containerID": "c-keep", "ifname": "net1"}])
    );
    // GC without the list is refused rather than treated as "nothing is valid".
    env.cni_raw("GC", &[], conf.to_string().as_bytes()).err(7);
    env.cni("DEL", "c-keep", "eth0", &conf).ok();
    env.assert_clean(&["plxgc0"]);
}

/// Every bad input: a CNI error with the right code on stdout, nothing left behind, and the
/// runtime's DEL that follows exits 0.
#[test]
fn bad_input_is_refused_cleanly_and_del_after_it_succeeds() {
    let env = TestEnv::new("bad");
    let good_net = rec_net(
        &env,
        "cluster",
        "1.0.0",
        vec![json!({"type": "test-record"})],
    );
    let good = env.plexus_conf("1.1.0", vec![good_net.clone()]);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c.to_string().into_bytes()
    };
    // (what, env, stdin, expected code (0: must succeed), text the error must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing env",
            vec![],
            good.to_string().into_bytes(),
            4,
            "CNI_CONTAINERID,CNI_IFNAME",
        ),
        (
            "bad ifname",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "a/b")],
            good.to_string().into_bytes(),
            4,
            "a/b",
        ),
        (
            "long ifname",
            vec![
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "abcdefghijklmnop"),
            ],
            good.to_string().into_bytes(),
            4,
            "15 bytes",
        ),
        (
            "dot ifname",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "..")],
            good.to_string().into_bytes(),
            4,
            "..",
        ),
        (
            "bad container id",
            vec![("CNI_CONTAINERID", "../../etc"), ("CNI_IFNAME", "eth0")],
            good.to_string().into_bytes(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "bad CNI_ARGS",
            vec![
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "garbage"),
            ],
            good.to_string().into_bytes(),
            4,
            "garbage",
        ),
        (
            "not json",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            b"{not json".to_vec(),
            6,
            "cannot parse",
        ),
        (
            "empty stdin",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            vec![],
            6,
            "cannot parse",
        ),
        (
            "future version",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| c["cniVersion"] = json!("2.0.0")),
            1,
            "incompatible",
        ),
        (
            "no networks",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| c["delegates"] = json!([])),
            7,
            "at least one",
        ),
        (
            "path type",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| c["delegates"][0]["plugins"][0]["type"] = json!("/bin/sh")),
            7,
            "bare file name",
        ),
        (
            "traversal type",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| c["delegates"][0]["plugins"][0]["type"] = json!("../x")),
            7,
            "bare file name",
        ),
        (
            "option type",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| c["delegates"][0]["plugins"][0]["type"] = json!("-x")),
            7,
            "bare file name",
        ),
        (
            "missing plugin",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| c["delegates"][0]["plugins"][0]["type"] = json!("nope")),
            102,
            "\"nope\"",
        ),
        (
            "bad network name",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| c["delegates"][0]["name"] = json!("a b")),
            7,
            "network name",
        ),
        (
            "garbage result",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| c["delegates"][0]["plugins"][0]["garbage"] = json!(true)),
            103,
            "cannot decode",
        ),
        (
            "legacy without ips",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
            with(&|c| {
                c["cniVersion"] = json!("0.2.0");
                c["prevResult"] = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.1/8"}});
                c["delegates"][0]["plugins"][0]["garbage"] = json!(false);
                c["delegates"][0]["cniVersion"] = json!("1.0.0");
                c["delegates"][0]["plugins"][0]["answerVersion"] = json!("1.0.0");
                c["delegates"][0]["plugins"][0]["address"] = json!("10.0.0.1/8");
            }),
            0,
            "",
        ),
        (
            "ifname clash",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "net1")],
            with(&|c| c["delegates"] = json!([good_net.clone(), good_net.clone()])),
            7,
            "net1",
        ),
    ];
    for (what, vars, stdin, code, needle) in cases {
        let out = env.cni_raw("ADD", &vars, &stdin);
        if code == 0 {
            out.ok();
            env.cni_raw("DEL", &vars, &stdin).ok();
            continue;
        }
        let msg = out.err(code);
        assert!(
            msg.contains(needle)
                || out.json()["details"]
                    .as_str()
                    .unwrap_or("")
                    .contains(needle),
            "{what}: {msg}"
        );
        assert!(out.stderr.len() < 100_000, "{what}: runaway logs");
        assert_eq!(env.pod_links(), ["lo"], "{what}");
        assert!(
            env.cache_files().is_empty(),
            "{what}: {:?}",
            env.cache_files()
        );
        // The runtime's DEL that follows any failed ADD: exit 0, however bad the input was.
        if vars.iter().any(|(k, _)| *k == "CNI_CONTAINERID") {
            env.cni_raw("DEL", &vars, &stdin).ok();
        }
    }
    // Only inputs that got as far as running a delegate led to a DEL, always for container c1.
    assert!(env.records().iter().all(|r| r["containerID"] == "c1"));
}

#[test]
fn version_verb_and_errors_speak_the_config_version() {
    let env = TestEnv::new("ver");
    let v = env
        .cni_raw("VERSION", &[], br#"{"cniVersion":"0.4.0"}"#)
        .ok()
        .json();
    assert_eq!(
        v,
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let v = env.cni_raw("VERSION", &[], b"").ok().json();
    assert_eq!(v["cniVersion"], "1.1.0");
    let e = env.cni_raw("ADD", &[], br#"{"cniVersion":"0.3.1"}"#);
    e.err(4);
    assert_eq!(e.json()["cniVersion"], "0.3.1");
    let e = env.cni_raw("FROB", &[], br#"{"cniVersion":"0.4.0"}"#);
    e.err(4);
    assert_eq!(
        e.json()["cniVersion"],
        "0.4.0",
        "an env error still speaks the config's version"
    );
    assert!(
        e.stderr.contains("unknown CNI_COMMAND"),
        "refusals are logged to stderr: {:?}",
        e.stderr
    );
}

/// What a delegate cut short leaves in the pod, as the real ones do: the macvlan plugin creates
/// its link in the pod under a temporary `veth…` name and renames it after, host-device moves
/// the device its config names (`device`) in and renames it after. Killed in between, their DEL
/// finds neither.
const HALF_DONE: &str = "ns=$(basename \"$CNI_NETNS\") && ip link add veth0badc0de link plxkm0 netns \"$ns\" type macvlan mode bridge && ip link set plxkvf netns \"$ns\"";

/// plexus itself killed half-way through an ADD (OOM, node pressure): the runtime's DEL still
/// removes everything, from the record written before any delegate ran — what the delegates'
/// DELs cannot find included: the stray macvlan is deleted, the device given back to the node.
#[test]
fn plexus_killed_mid_add_leaves_nothing_after_del() {
    use std::io::Write;
    let env = TestEnv::new("killed");
    env.node_veth("plxkm0", "plxkm1");
    env.node_veth("plxkvf", "plxkvfp");
    let mut ipam = env.host_local("cluster", "10.125.0.0/24");
    ipam["routes"] = json!([]);
    let cluster = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "bridge", "bridge": "plxkill0", "ipam": ipam}]});
    let hang = rec_net(
        &env,
        "slow",
        "1.0.0",
        vec![json!({"type": "test-hang", "run": ["sh", "-c", HALF_DONE], "device": "plxkvf"})],
    );
    let conf = env.plexus_conf("1.1.0", vec![cluster, hang]);
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &env.node])
        .arg(common::plexus_bin())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c-killed")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", env.netns_path())
        .env("CNI_PATH", &env.plugins)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    // Wait until the second network's delegate is running: eth0 exists, net1 is in progress.
    let t = Instant::now();
    while !env
        .records()
        .iter()
        .any(|r| r["command"] == "ADD" && r["ifname"] == "net1")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "delegate never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    while !env.pod_links().contains(&"plxkvf".to_string()) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the half-done work never appeared: {:?}",
            env.pod_links()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.pod_links().contains(&"eth0".to_string()));
    assert!(env.pod_links().contains(&"veth0badc0de".to_string()));
    // `ip netns exec` execs plexus, so the child's pid is plexus's.
    let _ = std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // The hung delegate dies with plexus (PR_SET_PDEATHSIG), not left behind in its own group.
    let hung = env
        .records()
        .iter()
        .find(|r| r["role"] == "test-hang")
        .unwrap()["pid"]
        .to_string();
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{hung}")).exists()
        && !std::fs::read_to_string(format!("/proc/{hung}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "delegate {hung} outlived a SIGKILLed plexus"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        env.cache_files().len(),
        1,
        "the pending record survives the crash"
    );
    env.cni("DEL", "c-killed", "eth0", &conf).ok();
    env.assert_clean(&["plxkill0", "plxkm0", "plxkm1", "plxkvf", "plxkvfp"]);
    assert!(
        env.node_links().contains(&"plxkvf".to_string()),
        "the device is back on the node: {:?}",
        env.node_links()
    );
    assert!(
        env.reservations("cluster").is_empty(),
        "host-local reservation released"
    );
    let dels: Vec<String> = env
        .records()
        .iter()
        .filter(|r| r["command"] == "DEL")
        .map(|r| r["ifname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dels, ["net1"], "the interrupted delegate got its DEL too");
}

/// A delegate that fails half-way (its own bug, or SIGKILLed by the OOM killer) and whose DEL
/// then finds nothing: plexus's rollback clears away what it left in the pod, and only that —
/// the pod's links from before the ADD (a chained cluster network's) stay, and so does a link
/// that appears meanwhile that the ADD could not have made.
#[test]
fn a_delegate_that_fails_half_way_leaves_nothing_in_the_pod() {
    let env = TestEnv::new("halfway");
    env.node_veth("plxkm0", "plxkm1");
    env.node_veth("plxkvf", "plxkvfp");
    // What was there before: a link of the pod's own, which must survive.
    sh(&[
        "ip", "-n", &env.pod, "link", "add", "keepme", "type", "veth", "peer", "name", "keepme2",
    ]);
    let cluster = rec_net(
        &env,
        "cluster",
        "1.0.0",
        vec![json!({"type": "test-record"})],
    );
    let bad = rec_net(
        &env,
        "bad",
        "1.0.0",
        vec![json!({"type": "test-fail", "device": "plxkvf",
            "run": ["sh", "-c", format!("{HALF_DONE} && ip -n \"$ns\" link add other0 type veth peer name other1")]})],
    );
    let conf = env.plexus_conf("1.1.0", vec![cluster, bad]);
    let msg = env.cni("ADD", "c-half", "eth0", &conf).err(7);
    assert!(msg.contains("network \"bad\""), "{msg}");
    let mut pod = env.pod_links();
    pod.sort();
    assert_eq!(
        pod,
        ["keepme", "keepme2", "lo", "other0", "other1"],
        "what was there before, and what the ADD could not have made"
    );
    assert!(env.node_links().contains(&"plxkvf".to_string()));
    assert!(env.cache_files().is_empty());
    env.cni("DEL", "c-half", "eth0", &conf).ok();
}

/// libcni/skel's CNI_NETNS_OVERRIDE is a flag, not a path: without it, ADD into plexus's own
/// network namespace is refused before anything runs (libcni's code 8); with it, the netns is
/// used and the flag is passed on to delegates; DEL there never hands delegates that netns.
#[test]
fn cni_netns_override_is_libcnis_flag() {
    let env = TestEnv::new("override");
    let net = rec_net(&env, "n", "1.0.0", vec![json!({"type": "test-record"})]);
    let conf = env.plexus_conf("1.0.0", vec![net]);
    let own = format!("/run/netns/{}", env.node);
    let with_netns = |verb: &str, extra: &[(&str, &str)]| {
        let mut vars = vec![
            ("CNI_CONTAINERID", "ovr"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", own.as_str()),
        ];
        vars.extend_from_slice(extra);
        env.cni_raw(verb, &vars, conf.to_string().as_bytes())
    };
    let msg = with_netns("ADD", &[]).err(8);
    assert!(msg.contains("CNI_NETNS_OVERRIDE"), "{msg}");
    assert!(env.records().is_empty(), "nothing ran");
    // A path in the override is not a flag: still refused.
    with_netns("ADD", &[("CNI_NETNS_OVERRIDE", "/run/netns/elsewhere")]).err(8);
    with_netns("ADD", &[("CNI_NETNS_OVERRIDE", "true")]).ok();
    let adds = by(&env.records(), "ADD")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(adds.len(), 1);
    assert_eq!(adds[0]["netns"], own.as_str());
    assert_eq!(adds[0]["netnsOverride"], "1", "passed on to delegates");
    with_netns("DEL", &[]).ok();
    let dels = by(&env.records(), "DEL")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(dels[0]["netns"], "", "no netns for delegates to touch");
    assert!(env.cache_files().is_empty());
}

/// The research-grade bad inputs: non-UTF-8 env, NULs and invalid UTF-8 on stdin, 10,000 nested
/// JSON levels, a delegate printing 100 MiB or leaving stdout open, symlinks planted where plexus
/// writes its cache and its log, and plugin directories anyone may write or that are relative.
/// Each gets the right CNI error (or, where nothing is wrong for the pod, works), leaves nothing
/// behind, and the runtime's DEL after it exits 0.
#[test]
fn research_grade_bad_inputs_get_cni_errors_and_leave_nothing() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new("bad2");
    let net = rec_net(
        &env,
        "cluster",
        "1.0.0",
        vec![json!({"type": "test-record"})],
    );
    let good = env.plexus_conf("1.1.0", vec![net.clone()]);
    let good_bytes = good.to_string().into_bytes();
    let id = |s: &'static str| OsStr::new(s);
    // CNI_IFNAME eth0 unless the case sets its own (later variables win).
    let with_ifname = |vars: &[(&'static str, &'static OsStr)]| {
        let mut v = vec![("CNI_IFNAME", OsStr::new("eth0"))];
        v.extend_from_slice(vars);
        v
    };
    let clean = |what: &str| {
        assert_eq!(env.pod_links(), ["lo"], "{what}");
        assert!(
            env.cache_files().is_empty(),
            "{what}: {:?}",
            env.cache_files()
        );
    };
    let del = |cid: &str, stdin: &[u8]| {
        env.cni_raw(
            "DEL",
            &[("CNI_CONTAINERID", cid), ("CNI_IFNAME", "eth0")],
            stdin,
        )
        .ok();
    };

    // Env that is not UTF-8: the container ID, CNI_ARGS, the ifname.
    for (what, k, v) in [
        ("container id", "CNI_CONTAINERID", &b"c\xff\xfe"[..]),
        ("CNI_ARGS", "CNI_ARGS", b"K8S_POD_NAME=\xff"),
        ("ifname", "CNI_IFNAME", b"et\xffh0"),
    ] {
        let mut vars = vec![("CNI_CONTAINERID", id("c-env"))];
        vars.push((k, OsStr::from_bytes(v)));
        let out = env.cni_raw_os("ADD", &with_ifname(&vars), &good_bytes);
        let msg = out.err(4);
        assert!(msg.contains(k), "{what}: {msg}");
        clean(what);
    }
    del("c-env", &good_bytes);

    // stdin: a NUL byte, invalid UTF-8 in the network name, 10,000 nested levels.
    let text = good.to_string();
    let nul = text.replacen(',', ",\0", 1).into_bytes();
    let mut bad_utf8 = text.clone().into_bytes();
    let at = text.find("\"cluster\"").unwrap() + 4;
    bad_utf8[at] = 0xff; // "clu\xffter"
                         // 10,000 levels where plexus reads the value (a delegate's config) and where it skips it.
    let mut placeholder = good.clone();
    placeholder["delegates"][0]["plugins"][0]["deep"] = json!("DEEP");
    let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep = placeholder.to_string().replace("\"DEEP\"", &nested);
    let skipped = format!("{{\"cniVersion\":\"1.0.0\",\"name\":\"plexus\",\"deep\":{nested}}}");
    for (what, stdin, code) in [
        ("NUL on stdin", nul, 6),
        ("invalid UTF-8 on stdin", bad_utf8, 6),
        ("10,000 nested levels in a delegate", deep.into_bytes(), 6),
        // Skipped without recursion; the config then lacks its networks.
        (
            "10,000 nested levels in an unknown key",
            skipped.into_bytes(),
            7,
        ),
    ] {
        let t = Instant::now();
        let out = env.cni_raw_os(
            "ADD",
            &with_ifname(&[("CNI_CONTAINERID", id("c-stdin"))]),
            &stdin,
        );
        out.err(code);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what}: {:?}",
            t.elapsed()
        );
        clean(what);
        del("c-stdin", &stdin);
    }

    // A delegate printing 100 MiB: killed at plexus's 1 MiB cap, code 103, quickly.
    let mut flood = good.clone();
    flood["delegates"][0]["plugins"][0]["floodBytes"] = json!(100u64 << 20);
    let t = Instant::now();
    let out = env.cni("ADD", "c-flood", "eth0", &flood);
    let msg = out.err(103);
    assert!(msg.contains("printed more than"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(out.stdout.len() < 10_000, "the flood reached the runtime");
    clean("flood");
    env.cni("DEL", "c-flood", "eth0", &flood).ok();

    // A delegate that answers and exits but leaves a child holding its stdout: plexus takes the
    // answer when the delegate exits (and kills its process group) instead of waiting for EOF.
    let mut hold = good.clone();
    hold["delegates"][0]["plugins"][0]["holdStdout"] = json!(true);
    let t = Instant::now();
    env.cni("ADD", "c-hold", "eth0", &hold).ok();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    env.cni("DEL", "c-hold", "eth0", &hold).ok();
    clean("hold");

    // A symlink planted where the cache record of the next ADD goes, and as the log file: neither
    // is followed, the file they point at is untouched, and the pod is served.
    let outside = env.path().join("outside");
    std::fs::write(&outside, "do not touch\n").unwrap();
    let attachments = env.cni_dir().join("plexus/attachments");
    std::fs::create_dir_all(&attachments).unwrap();
    let planted = attachments.join("plexus=c-sym=eth0.json");
    std::os::unix::fs::symlink(&outside, &planted).unwrap();
    let log_link = env.path().join("plexus.log");
    std::os::unix::fs::symlink(&outside, &log_link).unwrap();
    let mut logged = good.clone();
    logged["logFile"] = json!(log_link);
    logged["logLevel"] = json!("debug");
    env.cni("ADD", "c-sym", "eth0", &logged).ok();
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "do not touch\n");
    let meta = std::fs::symlink_metadata(&planted).unwrap();
    assert!(
        meta.is_file(),
        "the record replaced the planted link, not its target"
    );
    env.cni("DEL", "c-sym", "eth0", &logged).ok();
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "do not touch\n");
    clean("symlinks");

    // Plugin directories: world-writable, relative. The binary is not run; code 102 says why.
    let open = env.path().join("open-bin");
    std::fs::create_dir_all(&open).unwrap();
    std::os::unix::fs::symlink(env.bin_dir().join("test-record"), open.join("test-record"))
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    for (what, bin_dir, needle) in [
        ("world-writable binDir", json!(open), "world-writable"),
        ("relative binDir", json!("open-bin"), "(relative)"),
    ] {
        let mut c = good.clone();
        c["binDir"] = bin_dir;
        let out = env.cni("ADD", "c-bin", "eth0", &c);
        let msg = out.err(102);
        assert!(
            msg.contains(needle) && msg.contains("test-record"),
            "{what}: {msg}"
        );
        clean(what);
        env.cni("DEL", "c-bin", "eth0", &c).ok();
    }
    // CNI_PATH with a relative entry and a world-writable one: the same.
    let mut c = good.clone();
    c["binDir"] = json!("/nonexistent");
    let path = format!("open-bin:{}", open.display());
    let out = env.cni_raw(
        "ADD",
        &[
            ("CNI_CONTAINERID", "c-path"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &path),
        ],
        c.to_string().as_bytes(),
    );
    let msg = out.err(102);
    assert!(
        msg.contains("(relative)") && msg.contains("world-writable"),
        "{msg}"
    );
    clean("CNI_PATH");
    // Only inputs that ran a delegate led to a DEL of it, never of a container that had no ADD.
    let dels: Vec<String> = env
        .records()
        .iter()
        .filter(|r| r["command"] == "DEL")
        .map(|r| r["containerID"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        dels.iter()
            .all(|c| ["c-flood", "c-hold", "c-sym"].contains(&c.as_str())),
        "{dels:?}"
    );
}
