//! The socket API over script delegates, without root: Multus's wire format in and out, errors,
//! health, serialization per container, and a call cancelled when its client goes away.

use super::config::DaemonConfig;
use super::metrics::Metrics;
use super::server::{router, Daemon, WireRequest};
use crate::engine::{Cluster, Engine};
use crate::testutil::{FakeNetns, Node};
use axum::body::Body;
use http::Request;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

fn daemon(node: &Node, extra: Value, ready: bool) -> Arc<Daemon> {
    let mut c = json!({"cniDir": node.dir.path().join("cni"), "binDir": node.dir.path().join("bin"),
        "delegateEnv": [format!("LOG={}", node.log_path().display())],
        "socketDir": node.dir.path().join("sock")});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let config = DaemonConfig::parse(c.to_string().as_bytes()).unwrap();
    let view = crate::k8s::MemoryView::default().with_pod("ns1", "p", &[]);
    let engine = Engine::new(
        Some(Arc::new(view) as Arc<dyn Cluster>),
        Arc::new(FakeNetns::default()),
    );
    Arc::new(Daemon::new(
        config,
        engine,
        Arc::new(Metrics::new()),
        Arc::new(move || ready),
    ))
}

/// The body Multus's shim sends for `verb` on container `id`.
fn wire(verb: &str, id: &str, config: &Value) -> Vec<u8> {
    let env: HashMap<String, String> = [
        ("CNI_COMMAND", verb),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p",
        ),
        ("HOME", "/root"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    serde_json::to_vec(&WireRequest {
        env,
        config: config.to_string().into_bytes(),
        interface_attributes: None,
    })
    .unwrap()
}

fn shim_conf(version: &str, delegates: Vec<Value>) -> Value {
    json!({"cniVersion": version, "name": "multus-cni-network", "type": "plexus",
           "daemonSocketDir": "/run/multus", "kubeconfig": "/dev/null", "delegates": delegates})
}

async fn post(d: &Arc<Daemon>, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let res = router(d.clone())
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_del_over_multus_wire_format() {
    let n = Node::new();
    let d = daemon(&n, json!({}), true);
    let conf = shim_conf("0.3.1", vec![Node::net("cluster", json!({}))]);
    let (status, body) = post(&d, "/cni", wire("ADD", "c1", &conf)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["Result"]["cniVersion"], "1.0.0",
        "a 1.0.0 result for Multus's shim"
    );
    assert_eq!(v["Result"]["interfaces"][0]["name"], "eth0");
    // The daemon's plugin keys won: its cniDir holds the record.
    assert_eq!(n.records().len(), 1);
    let (status, body) = post(&d, "/cni", wire("DEL", "c1", &conf)).await;
    assert_eq!((status, body.len()), (200, 0), "empty body on success");
    assert_eq!(n.log(), ["ADD cluster eth0", "DEL cluster eth0"]);
    assert!(n.records().is_empty());
    let text = d.metrics.render();
    assert!(
        text.contains(r#"plexus_cni_requests_total{verb="ADD",code="0"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"multus_server_request_total{handler="/cni",code="200",method="post"} 2"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_400_with_a_cni_error_object() {
    let n = Node::new();
    let d = daemon(&n, json!({}), true);
    let conf = shim_conf("1.0.0", vec![Node::net("bad", json!({"fail": "ADD"}))]);
    let (status, body) = post(&d, "/cni", wire("ADD", "c1", &conf)).await;
    assert_eq!(status, 400);
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["code"], 7);
    assert!(e["msg"].as_str().unwrap().contains("\"bad\""), "{e}");
    // Not JSON at all: plain text, as Multus answers what is not a CNI error.
    let (status, body) = post(&d, "/cni", b"nope".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("could not read"));
    // Missing CNI_CONTAINERID.
    let mut w: WireRequest = serde_json::from_slice(&wire("ADD", "c1", &conf)).unwrap();
    w.env.remove("CNI_CONTAINERID");
    let (status, body) = post(&d, "/cni", serde_json::to_vec(&w).unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["code"], 4);
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let n = Node::new();
    for (ready, want) in [(true, 200), (false, 500)] {
        let d = daemon(&n, json!({}), ready);
        let get = |p: &str| router(d.clone()).oneshot(Request::get(p).body(Body::empty()).unwrap());
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), want);
        assert_eq!(get("/nope").await.unwrap().status(), 404);
        assert_eq!(get("/cni").await.unwrap().status(), 405);
        d.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            get("/readyz").await.unwrap().status(),
            500,
            "SIGTERM: not ready"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_one_container_run_one_at_a_time_others_in_parallel() {
    let n = Node::new();
    let d = daemon(&n, json!({}), true);
    let slow = shim_conf("1.0.0", vec![Node::net("slow", json!({"sleep": 1}))]);
    let t = Instant::now();
    let a = tokio::spawn({
        let d = d.clone();
        let c = slow.clone();
        async move { post(&d, "/cni", wire("ADD", "same", &c)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = tokio::spawn({
        let d = d.clone();
        let c = slow.clone();
        async move { post(&d, "/cni", wire("DEL", "same", &c)).await }
    });
    let other = tokio::spawn({
        let d = d.clone();
        let c = slow.clone();
        async move { post(&d, "/cni", wire("ADD", "other", &c)).await }
    });
    assert_eq!(a.await.unwrap().0, 200);
    assert_eq!(other.await.unwrap().0, 200);
    let t_parallel = t.elapsed();
    assert_eq!(b.await.unwrap().0, 200);
    assert!(
        t_parallel < Duration::from_millis(1900),
        "different containers in parallel: {t_parallel:?}"
    );
    let log = n.log();
    let add_same = log.iter().position(|l| l == "ADD slow eth0").unwrap();
    let del_same = log.iter().position(|l| l == "DEL slow eth0").unwrap();
    assert!(add_same < del_same, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_call() {
    let n = Node::new();
    let d = daemon(&n, json!({}), true);
    let dir = n.dir.path().join("sock");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("multus.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let app = router(d.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let conf = shim_conf(
        "1.0.0",
        vec![
            Node::net("a", json!({})),
            Node::net("slow", json!({"sleep": 30})),
        ],
    );
    let body = wire("ADD", "c1", &conf);
    let p = path.clone();
    let client = tokio::spawn(async move {
        crate::unix_http::request(
            &p,
            "POST",
            "/cni",
            Some("application/json"),
            body,
            Duration::from_secs(60),
        )
        .await
    });
    // Once the slow delegate runs, the "runtime" kills the shim.
    let t = Instant::now();
    while !n.log().iter().any(|l| l == "ADD slow net1") {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.abort();
    let t = Instant::now();
    while !n.records().is_empty() || n.log().len() < 4 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not rolled back: {:?}",
            n.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        n.log(),
        ["ADD a eth0", "ADD slow net1", "DEL slow net1", "DEL a eth0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plexus_shim_speaks_to_the_daemon_and_knows_when_it_is_away() {
    let n = Node::new();
    let d = daemon(&n, json!({}), true);
    let dir = n.dir.path().join("sock");
    std::fs::create_dir_all(&dir).unwrap();
    let listener = tokio::net::UnixListener::bind(dir.join("multus.sock")).unwrap();
    let app = router(d.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let conf = shim_conf("1.1.0", vec![Node::net("cluster", json!({}))]);
    let env: HashMap<&str, &str> = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "s1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ]
    .into();
    let stdin = conf.to_string().into_bytes();
    let (d2, s2) = (dir.clone(), stdin.clone());
    let env2 = env.clone();
    let answer = tokio::task::spawn_blocking(move || {
        crate::shim::forward(
            &d2,
            &|k| env2.get(k).map(|v| v.to_string()),
            &s2,
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    match answer {
        crate::shim::Forward::Answer(Ok(Some(r))) => {
            assert_eq!(r.interfaces[0].name, "eth0");
        }
        other => panic!("{other:?}"),
    }
    // No CNI_ARGS was set: the shim sends it empty, as Multus's daemon requires.
    assert_eq!(n.records()[0].cni_args, "");
    let away = n.dir.path().join("nobody-home");
    let t = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        crate::shim::forward(
            &away,
            &|k| env.get(k).map(|v| v.to_string()),
            &stdin,
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    assert!(
        matches!(answer, crate::shim::Forward::Unreachable { ref why, sent: false } if why.contains("multus.sock")),
        "{answer:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "unreachable is known at once"
    );
}

#[test]
fn hot_plug_finds_records_through_its_index_and_the_adds_it_ran() {
    use super::hotplug::{Reconciler, RecordAt};
    use crate::cache::{ResultCache, SandboxRecord};
    let n = Node::new();
    let d = daemon(&n, json!({}), true);
    let dir = n.dir.path().join("cni");
    let cache = ResultCache::new(&dir);
    let store = |id: &str, pod: &str| {
        cache
            .store(&SandboxRecord {
                kind: String::new(),
                network: "plexus".into(),
                container_id: id.into(),
                if_name: "eth0".into(),
                netns: "/run/netns/x".into(),
                cni_args: String::new(),
                pod: Some(pod.into()),
                created: String::new(),
                config: "{}".into(),
                cni_path: vec![],
                attachments: vec![],
                del_attempts: 0,
                links_before: None,
            })
            .unwrap();
        RecordAt {
            dir: dir.clone(),
            network: "plexus".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    };
    let ids = |v: Vec<(std::path::PathBuf, SandboxRecord)>| -> Vec<String> {
        v.into_iter().map(|(_, r)| r.container_id).collect()
    };
    let a = store("c-a", "ns1/a");
    store("c-b", "ns1/b");
    let r = Reconciler::new();
    // The first look scans the cache dirs.
    assert_eq!(ids(r.records_of(&d, "ns1/a", "", None, false)), ["c-a"]);
    // A record written behind the daemon's back (the shim's own ADD) is found after a rescan
    // only (one is made when the pod's annotation changes).
    store("c-c", "ns1/c");
    assert!(r.records_of(&d, "ns1/c", "", None, false).is_empty());
    assert_eq!(ids(r.records_of(&d, "ns1/c", "", None, true)), ["c-c"]);
    // An ADD the daemon ran is in the index at once, and read alone when hinted.
    let e = store("c-e", "ns1/e");
    r.enqueue_after_add("ns1", "e", e.clone());
    assert_eq!(ids(r.records_of(&d, "ns1/e", "", None, false)), ["c-e"]);
    assert_eq!(
        ids(r.records_of(&d, "ns1/e", "", Some(vec![e]), false)),
        ["c-e"]
    );
    // A record that is gone (DEL) is gone from the answer; another pod's hint is not this pod's.
    cache
        .remove(&crate::cache::Key {
            network: "plexus",
            container_id: "c-a",
            ifname: "eth0",
        })
        .unwrap();
    assert_eq!(r.remembered().1, 4, "a, b, c and e indexed");
    assert!(r.records_of(&d, "ns1/a", "", None, false).is_empty());
    assert_eq!(
        r.remembered().1,
        3,
        "a pod with no records left is dropped from the index"
    );
    assert!(r
        .records_of(&d, "ns1/b", "", Some(vec![a]), false)
        .is_empty());
    // A record that cannot be read now (a torn write, EMFILE) stays indexed and is found once
    // it can be read again, with no rescan.
    let file_b = walk(&dir)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("=c-b="))
        .expect("c-b's record");
    let good = std::fs::read(&file_b).unwrap();
    std::fs::write(&file_b, b"{\"kind\": ").unwrap();
    assert!(r.records_of(&d, "ns1/b", "", None, false).is_empty());
    assert_eq!(r.remembered().1, 3, "b kept");
    std::fs::write(&file_b, good).unwrap();
    assert_eq!(ids(r.records_of(&d, "ns1/b", "", None, false)), ["c-b"]);
    // An ADD that lands while a rescan runs (without the index's lock) is in the new index
    // even when the scan missed its record.
    r.begin_rescan();
    let f = store("c-f", "ns1/f");
    r.enqueue_after_add("ns1", "f", f);
    r.finish_rescan(Default::default());
    assert_eq!(ids(r.records_of(&d, "ns1/f", "", None, false)), ["c-f"]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
