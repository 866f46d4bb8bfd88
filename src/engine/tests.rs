//! The engine over script delegates, without root: the order of ADD, rollback and DEL, partial
//! failures, GC's scope, STATUS's search path, cancellation and the call's deadline.

use super::*;
use crate::k8s::MemoryView;
use crate::testutil::{req, FakeNetns, Node};
use serde_json::json;

fn engine(cluster: Option<MemoryView>) -> Engine {
    Engine::new(
        cluster.map(|c| Arc::new(c) as Arc<dyn Cluster>),
        Arc::new(FakeNetns::default()),
    )
}

fn add(e: &Engine, r: &Request, c: &NetConf) -> Result<CniResult, CniError> {
    e.add(&Call {
        req: r,
        conf: c,
        cancel: &Cancel::never(),
    })
}

#[test]
fn add_goes_in_order_and_del_in_reverse_from_the_cache() {
    let n = Node::new();
    let c = n.conf(
        "plexus",
        "1.0.0",
        vec![
            Node::net("a", json!({})),
            Node::net("b", json!({})),
            Node::net("c", json!({})),
        ],
        json!({}),
    );
    let e = engine(None);
    let r = add(&e, &req("ADD", "c1", ""), &c).unwrap();
    assert_eq!(r.interfaces[0].name, "eth0", "the cluster network's result");
    assert_eq!(n.log(), ["ADD a eth0", "ADD b net1", "ADD c net2"]);
    let recs = n.records();
    assert_eq!(recs.len(), 1);
    assert!(recs[0].attachments.iter().all(|a| a.result.is_some()));
    n.clear_log();
    // DEL needs no config at all: the cache says what to do.
    e.del(&req("DEL", "c1", ""), Some(&c)).unwrap();
    assert_eq!(n.log(), ["DEL c net2", "DEL b net1", "DEL a eth0"]);
    assert!(n.records().is_empty());
    assert!(
        std::fs::read_dir(n.dir.path().join("cni/plexus/locks"))
            .unwrap()
            .next()
            .is_none(),
        "the DEL that empties a record removes its lock file"
    );
    // DEL of what is gone succeeds.
    e.del(&req("DEL", "c1", ""), Some(&c)).unwrap();
}

#[test]
fn a_failure_at_any_position_rolls_back_that_one_and_those_before_in_reverse() {
    for k in 0..3 {
        let n = Node::new();
        let nets = (0..3)
            .map(|i| {
                let extra = if i == k {
                    json!({"fail": "ADD"})
                } else {
                    json!({})
                };
                Node::net(&format!("n{i}"), extra)
            })
            .collect();
        let c = n.conf("plexus", "1.0.0", nets, json!({}));
        let err = add(&engine(None), &req("ADD", "c1", ""), &c).unwrap_err();
        assert_eq!(err.code, Code::INVALID_CONFIG, "the delegate's own code");
        assert!(
            err.msg.contains(&format!("network \"n{k}\"")) && err.msg.contains("delegate \"rec\""),
            "{}",
            err.msg
        );
        let ifname = |i: usize| {
            if i == 0 {
                "eth0".to_string()
            } else {
                format!("net{i}")
            }
        };
        let mut want: Vec<String> = (0..=k).map(|i| format!("ADD n{i} {}", ifname(i))).collect();
        want.extend((0..=k).rev().map(|i| format!("DEL n{i} {}", ifname(i))));
        assert_eq!(n.log(), want, "failure at {k}");
        assert!(
            n.records().is_empty(),
            "nothing cached after a clean rollback"
        );
    }
}

#[test]
fn a_failed_del_keeps_only_the_failed_attachment_then_gives_up() {
    let n = Node::new();
    let c = n.conf(
        "plexus",
        "1.0.0",
        vec![
            Node::net("a", json!({})),
            Node::net("b", json!({"fail": "DEL"})),
        ],
        json!({}),
    );
    let e = engine(None);
    add(&e, &req("ADD", "c1", ""), &c).unwrap();
    n.clear_log();
    let err = e.del(&req("DEL", "c1", ""), Some(&c)).unwrap_err();
    assert!(err.msg.contains("\"b\""), "{}", err.msg);
    assert_eq!(
        n.log(),
        ["DEL b net1", "DEL a eth0"],
        "keeps going past the failure"
    );
    let recs = n.records();
    assert_eq!(recs[0].attachments.len(), 1);
    assert_eq!(
        (
            recs[0].attachments[0].network.as_str(),
            recs[0].del_attempts
        ),
        ("b", 1)
    );
    n.clear_log();
    for _ in 2..MAX_DEL_ATTEMPTS {
        assert!(e.del(&req("DEL", "c1", ""), Some(&c)).is_err());
    }
    // The last attempt gives up, so the pod can be deleted.
    e.del(&req("DEL", "c1", ""), Some(&c)).unwrap();
    assert!(
        n.log().iter().all(|l| l == "DEL b net1"),
        "only b retried: {:?}",
        n.log()
    );
    assert!(n.records().is_empty());
}

#[test]
fn gc_touches_only_its_own_network_keeps_going_and_reports_every_error() {
    let n = Node::new();
    let e = engine(None);
    let podman = n.conf(
        "podman",
        "1.1.0",
        vec![Node::net("a", json!({}))],
        json!({}),
    );
    let other = n.conf("other", "1.1.0", vec![Node::net("b", json!({}))], json!({}));
    let flaky = n.conf(
        "podman",
        "1.1.0",
        vec![Node::net("f", json!({"fail": "DEL"}))],
        json!({}),
    );
    add(&e, &req("ADD", "keep", ""), &podman).unwrap();
    add(&e, &req("ADD", "stale1", ""), &flaky).unwrap();
    add(&e, &req("ADD", "stale2", ""), &podman).unwrap();
    add(&e, &req("ADD", "stale1", ""), &other).unwrap();
    n.clear_log();
    let mut gc = podman.clone();
    gc.valid_attachments = Some(vec![("keep".into(), "eth0".into())]);
    let err = e
        .gc(&Call {
            req: &Request {
                command: Some(Command::Gc),
                ..Default::default()
            },
            conf: &gc,
            cancel: &Cancel::never(),
        })
        .unwrap_err();
    assert!(
        err.msg.contains("stale1") && err.msg.contains("\"f\""),
        "{}",
        err.msg
    );
    let log = n.log();
    assert!(log.contains(&"DEL f eth0".to_string()), "{log:?}");
    assert!(
        log.contains(&"DEL a eth0".to_string()),
        "stale2 removed after stale1 failed: {log:?}"
    );
    assert!(
        !log.iter().any(|l| l.contains(" b ")),
        "the other network untouched: {log:?}"
    );
    let mut left: Vec<(String, String)> = n
        .records()
        .into_iter()
        .map(|r| (r.network, r.container_id))
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("other".to_string(), "stale1".to_string()),
            ("podman".to_string(), "keep".to_string()),
            ("podman".to_string(), "stale1".to_string())
        ]
    );
}

#[test]
fn gc_forwards_both_keys_libcni_sends() {
    let n = Node::new();
    let e = engine(None);
    let c = n.conf(
        "plexus",
        "1.1.0",
        vec![Node::net("a", json!({"cniVersion": "1.1.0", "dump": true}))],
        json!({}),
    );
    add(&e, &req("ADD", "c1", ""), &c).unwrap();
    let mut gc = c.clone();
    gc.valid_attachments = Some(vec![("c1".into(), "eth0".into())]);
    let r = Request {
        command: Some(Command::Gc),
        ..Default::default()
    };
    e.gc(&Call {
        req: &r,
        conf: &gc,
        cancel: &Cancel::never(),
    })
    .unwrap();
    let sent: Value =
        serde_json::from_slice(&std::fs::read(format!("{}.a.GC", n.log_path().display())).unwrap())
            .unwrap();
    let want = json!([{"containerID": "c1", "ifname": "eth0"}]);
    assert_eq!(sent["cni.dev/valid-attachments"], want);
    assert_eq!(sent["cni.dev/attachments"], want);
}

#[test]
fn status_finds_a_1_1_delegate_in_the_runtimes_cni_path() {
    let n = Node::new();
    // The delegate is only in the runtime's CNI_PATH, not in binDir.
    let elsewhere = n.dir.path().join("runtime-bin");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::rename(n.dir.path().join("bin/rec"), elsewhere.join("rec")).unwrap();
    let c = n.conf(
        "plexus",
        "1.1.0",
        vec![Node::net("a", json!({"cniVersion": "1.1.0"}))],
        json!({}),
    );
    let mut r = req("STATUS", "", "");
    r.path = vec![elsewhere];
    engine(None)
        .status(&Call {
            req: &r,
            conf: &c,
            cancel: &Cancel::never(),
        })
        .unwrap();
    assert_eq!(n.log(), ["STATUS a "]);
}

#[test]
fn a_failed_status_write_rolls_back_everything_under_the_lock() {
    let n = Node::new();
    let c = n.conf(
        "plexus",
        "1.0.0",
        vec![Node::net("a", json!({})), Node::net("b", json!({}))],
        json!({"kubeconfig": "/dev/null"}),
    );
    let view = MemoryView {
        fail_status: true,
        ..MemoryView::default().with_pod("ns1", "p", &[])
    };
    let reports = view.reports.clone();
    a_and_b_rolled_back(&n, view, &c, Code::TRY_AGAIN_LATER);
    assert!(n.records().is_empty());
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].starts_with("event ns1/p FailedAttach"),
        "{reports:?}"
    );
}

/// ADD of pod ns1/p over networks a and b fails with `code`, naming the pod, after both
/// delegates ran; both are DELed, in reverse.
fn a_and_b_rolled_back(n: &Node, view: MemoryView, c: &NetConf, code: Code) {
    let e = engine(Some(view));
    let err = add(
        &e,
        &req("ADD", "c1", "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p"),
        c,
    )
    .unwrap_err();
    assert_eq!(err.code, code, "{err}");
    assert!(err.msg.contains("ns1/p"), "{}", err.msg);
    assert_eq!(
        n.log(),
        ["ADD a eth0", "ADD b net1", "DEL b net1", "DEL a eth0"]
    );
}

#[test]
fn a_failed_final_record_write_beside_the_status_write_rolls_back_everything() {
    // The final record and network-status are written side by side; the record failing still
    // fails the ADD and undoes every delegate, in reverse. The status write that went ahead
    // names interfaces the undo removes, and an earlier status (an earlier sandbox's) names
    // interfaces that are gone too: the annotation is removed either way.
    let earlier = r#"[{"name":"cbr0","interface":"eth0","ips":["10.0.0.9"],"default":true}]"#;
    for annotations in [
        vec![],
        vec![(crate::k8s::NETWORK_STATUS_ANNOTATION, earlier)],
    ] {
        let n = Node::new();
        let attachments = n.dir.path().join("cni/plexus/attachments");
        let c = n.conf(
            "plexus",
            "1.0.0",
            vec![
                Node::net("a", json!({})),
                Node::net("b", json!({"sabotage": attachments})),
            ],
            json!({"kubeconfig": "/dev/null"}),
        );
        let view = MemoryView::default().with_pod("ns1", "p", &annotations);
        let reports = view.reports.clone();
        a_and_b_rolled_back(&n, view, &c, Code::IO);
        let reports = reports.lock().unwrap();
        assert!(reports[0].starts_with("status ns1/p "), "{reports:?}");
        assert_eq!(reports[1], "status cleared ns1/p", "{reports:?}");
        // No Event says the interfaces were added.
        assert!(
            reports
                .iter()
                .any(|r| r.starts_with("event ns1/p FailedAttach")),
            "{reports:?}"
        );
        assert!(
            !reports.iter().any(|r| r.contains("AddedInterface")),
            "{reports:?}"
        );
    }
}

#[test]
fn a_cancelled_add_rolls_back_and_makes_no_api_call() {
    let n = Node::new();
    let c = n.conf(
        "plexus",
        "1.0.0",
        vec![
            Node::net("a", json!({})),
            Node::net("slow", json!({"sleep": 20})),
        ],
        json!({"kubeconfig": "/dev/null"}),
    );
    let view = MemoryView::default().with_pod("ns1", "p", &[]);
    let reports = view.reports.clone();
    let e = engine(Some(view));
    let cancel = Cancel::new().unwrap();
    let c2 = cancel.clone();
    let r = req("ADD", "c1", "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p");
    let t = Instant::now();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.cancel();
    });
    let err = e
        .add(&Call {
            req: &r,
            conf: &c,
            cancel: &cancel,
        })
        .unwrap_err();
    h.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "not waited out");
    assert_eq!(err.code, Code::TRY_AGAIN_LATER, "{err}");
    assert_eq!(
        n.log(),
        ["ADD a eth0", "ADD slow net1", "DEL slow net1", "DEL a eth0"]
    );
    assert!(n.records().is_empty());
    assert!(reports.lock().unwrap().is_empty(), "no status, no event");
}

#[test]
fn the_whole_add_is_bounded_by_add_timeout_seconds() {
    let n = Node::new();
    let c = n.conf(
        "plexus",
        "1.0.0",
        vec![
            Node::net("a", json!({})),
            Node::net("slow", json!({"sleep": 20})),
        ],
        json!({"addTimeoutSeconds": 0.5, "delegateTimeoutSeconds": 30}),
    );
    let t = Instant::now();
    let err = add(&engine(None), &req("ADD", "c1", ""), &c).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(err.code, Code::DELEGATE_TIMEOUT, "{err}");
    assert_eq!(
        n.log(),
        ["ADD a eth0", "ADD slow net1", "DEL slow net1", "DEL a eth0"]
    );
    assert!(n.records().is_empty());
}

#[test]
fn plexus_own_netns_needs_cni_netns_override() {
    let n = Node::new();
    let c = n.conf(
        "plexus",
        "1.0.0",
        vec![Node::net("a", json!({}))],
        json!({}),
    );
    let e = Engine::new(
        None,
        Arc::new(FakeNetns {
            own: true,
            ..Default::default()
        }),
    );
    let err = add(&e, &req("ADD", "c1", ""), &c).unwrap_err();
    assert_eq!(err.code, Code::INVALID_NETNS);
    assert!(n.log().is_empty(), "refused before anything ran");
    let mut r = req("ADD", "c1", "");
    r.netns_override = true;
    add(&e, &r, &c).unwrap();
    // DEL in our own netns without the override: delegates get no netns to touch.
    std::fs::remove_file(n.log_path()).unwrap();
    e.del(&req("DEL", "c1", ""), Some(&c)).unwrap();
    let raw = std::fs::read_to_string(n.log_path()).unwrap();
    assert_eq!(raw, "DEL a eth0 \n", "an empty CNI_NETNS");
}

#[test]
fn only_the_teardown_of_an_add_cut_short_sweeps_the_pod_and_never_plexus_own_netns() {
    let n = Node::new();
    let two = |fail: Option<&str>| {
        let b = match fail {
            Some(verb) => json!({"fail": verb}),
            None => json!({}),
        };
        n.conf(
            "plexus",
            "1.0.0",
            vec![Node::net("a", json!({})), Node::net("b", b)],
            json!({}),
        )
    };
    let netns = Arc::new(FakeNetns::default());
    let e = Engine::new(None, netns.clone());
    let sweeps = || netns.sweeps.lock().unwrap().clone();
    let both = (vec![1], vec!["eth0".to_string(), "net1".to_string()]);

    // An ADD that went through: the record no longer holds the links from before (its
    // delegates' DELs are trusted), and its DEL sweeps nothing.
    add(&e, &req("ADD", "c1", ""), &two(None)).unwrap();
    assert_eq!(n.records()[0].links_before, None);
    e.del(&req("DEL", "c1", ""), Some(&two(None))).unwrap();
    assert!(sweeps().is_empty(), "{:?}", sweeps());

    // A delegate failed: the rollback sweeps, against the links there before the ADD, for the
    // names that ADD could have used.
    add(&e, &req("ADD", "c2", ""), &two(Some("ADD"))).unwrap_err();
    assert_eq!(sweeps(), vec![both.clone()]);

    // plexus killed mid-ADD leaves the pending record (links included): the runtime's DEL
    // sweeps after it.
    let pending = |id: &str| {
        add(&e, &req("ADD", id, ""), &two(None)).unwrap();
        let mut rec = n
            .records()
            .into_iter()
            .find(|r| r.container_id == id)
            .unwrap();
        for a in &mut rec.attachments {
            a.result = None;
        }
        rec.links_before = Some(crate::cache::PodLinks {
            netns_dev: 1,
            netns_ino: 2,
            indexes: vec![1],
        });
        n.cache().store(&rec).unwrap();
    };
    pending("c3");
    e.del(&req("DEL", "c3", ""), Some(&two(None))).unwrap();
    assert_eq!(sweeps().len(), 2, "{:?}", sweeps());

    // Its DEL fails for one attachment: no sweep yet (that delegate still owns its links); the
    // record keeps the failed one and the links from before, and the DEL that finally succeeds
    // sweeps.
    pending("c4");
    let mut rec = n
        .records()
        .into_iter()
        .find(|r| r.container_id == "c4")
        .unwrap();
    rec.attachments[0].config = rec.attachments[0]
        .config
        .replace("\"type\":\"rec\"", "\"type\":\"rec\",\"fail\":\"DEL\"");
    n.cache().store(&rec).unwrap();
    e.del(&req("DEL", "c4", ""), Some(&two(None))).unwrap_err();
    assert_eq!(sweeps().len(), 2, "{:?}", sweeps());
    let mut rec = n
        .records()
        .into_iter()
        .find(|r| r.container_id == "c4")
        .unwrap();
    assert_eq!(rec.attachments.len(), 1);
    assert!(rec.links_before.is_some());
    rec.attachments[0].config = rec.attachments[0].config.replace(",\"fail\":\"DEL\"", "");
    n.cache().store(&rec).unwrap();
    e.del(&req("DEL", "c4", ""), Some(&two(None))).unwrap();
    assert_eq!(sweeps().len(), 3, "{:?}", sweeps());
    assert_eq!(sweeps()[2].1, vec!["eth0".to_string()], "the one left");

    // A DEL from another netns than the ADD's (the record's links are not that netns's).
    pending("c5");
    let mut other = req("DEL", "c5", "");
    other.netns = Some("/var/run/netns/other".into());
    e.del(&other, Some(&two(None))).unwrap();
    assert_eq!(sweeps().len(), 3, "{:?}", sweeps());

    // In plexus's own netns (CNI_NETNS_OVERRIDE), nothing is ever listed or swept.
    let own = Arc::new(FakeNetns {
        own: true,
        ..Default::default()
    });
    let e = Engine::new(None, own.clone());
    let mut r = req("ADD", "c6", "");
    r.netns_override = true;
    add(&e, &r, &two(Some("ADD"))).unwrap_err();
    assert!(own.sweeps.lock().unwrap().is_empty());
    assert!(n.records().iter().all(|r| r.container_id != "c6"));
}

#[test]
fn default_route_moves_and_every_result_says_so() {
    let n = Node::new();
    let c = n.conf(
        "plexus",
        "1.0.0",
        vec![Node::net("cluster", json!({}))],
        json!({"kubeconfig": "/dev/null"}),
    );
    let view = MemoryView::default()
        .with_nad(
            "ns1",
            "second",
            &json!({"cniVersion": "1.0.0", "name": "second", "type": "rec"}).to_string(),
        )
        .with_pod(
            "ns1",
            "p",
            &[(
                crate::k8s::NETWORKS_ANNOTATION,
                r#"[{"name":"second","default-route":["10.1.0.1"]}]"#,
            )],
        );
    let reports = view.reports.clone();
    let netns = Arc::new(FakeNetns::default());
    let e = Engine::new(Some(Arc::new(view) as Arc<dyn Cluster>), netns.clone());
    let r = add(
        &e,
        &req("ADD", "c1", "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p"),
        &c,
    )
    .unwrap();
    assert!(
        r.routes.is_empty(),
        "the cluster network lost its default route"
    );
    assert_eq!(*netns.routes.lock().unwrap(), ["10.1.0.1 net1"]);
    let rec = &n.records()[0];
    let second: CniResult =
        CniResult::from_value(rec.attachments[1].result.clone().unwrap(), Version::V1_0_0)
            .unwrap()
            .0;
    assert_eq!(second.routes[0].dst, "0.0.0.0/0");
    let reports = reports.lock().unwrap();
    assert!(reports[0].starts_with("status ns1/p "), "{reports:?}");
    assert!(
        reports[1].starts_with("event ns1/p AddedInterface"),
        "{reports:?}"
    );
}

mod hotplug {
    use super::*;
    use crate::engine::hotplug::{Outcome, HOTPLUG_REPLACE_ANNOTATION};
    use crate::k8s::NETWORKS_ANNOTATION;

    struct Pod1 {
        n: Node,
        e: Engine,
        c: NetConf,
        view: MemoryView,
    }

    fn setup() -> Pod1 {
        let n = Node::new();
        let c = n.conf(
            "plexus",
            "1.0.0",
            vec![Node::net("cluster", json!({}))],
            json!({"kubeconfig": "/dev/null"}),
        );
        let nad = |name: &str, extra: Value| Node::net(name, extra).to_string();
        let view = MemoryView::default()
            .with_nad("ns1", "a", &nad("a", json!({})))
            .with_nad("ns1", "b", &nad("b", json!({})))
            .with_nad("ns1", "bad", &nad("bad", json!({"fail": "ADD"})))
            .with_nad(
                "ns1",
                "ipnet",
                &nad("ipnet", json!({"capabilities": {"ips": true}})),
            )
            .with_pod("ns1", "p", &[(NETWORKS_ANNOTATION, "a")]);
        let e = engine(Some(view.clone()));
        add(
            &e,
            &req("ADD", "c1", "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p"),
            &c,
        )
        .unwrap();
        Pod1 { n, e, c, view }
    }

    impl Pod1 {
        fn pod(&self, networks: &str, extra: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Pod {
            let mut anns = vec![(NETWORKS_ANNOTATION, networks)];
            anns.extend_from_slice(extra);
            MemoryView::default().with_pod("ns1", "p", &anns).pods
                [&("ns1".to_string(), "p".to_string())]
                .clone()
        }

        fn plug(&self, networks: &str, extra: &[(&str, &str)]) -> Outcome {
            let key = Key {
                network: "plexus",
                container_id: "c1",
                ifname: "eth0",
            };
            self.e
                .hotplug(
                    &self.pod(networks, extra),
                    &key,
                    &self.c.cni_dir,
                    &|b| Ok(b.to_vec()),
                    &Cancel::never(),
                )
                .unwrap()
        }

        fn ifnames(&self) -> Vec<(String, String)> {
            self.n.records()[0]
                .attachments
                .iter()
                .map(|a| (a.ifname.clone(), a.status_name.clone()))
                .collect()
        }

        fn statuses(&self) -> Vec<String> {
            self.view
                .reports
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.starts_with("status"))
                .cloned()
                .collect()
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_hot_plugged_claim_device_gets_its_network_data_and_an_unplugged_one_loses_it() {
        use crate::k8s::dra::StatusEntry;
        let n = Node::new();
        let c = n.conf(
            "plexus",
            "1.0.0",
            vec![Node::net("cluster", json!({}))],
            json!({"kubeconfig": "/dev/null"}),
        );
        let view = super::claim_view().with_pod("ns1", "p", &[]);
        let reports = view.reports.clone();
        let e = engine(Some(view));
        add(
            &e,
            &req("ADD", "c1", "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p"),
            &c,
        )
        .unwrap();
        let key = Key {
            network: "plexus",
            container_id: "c1",
            ifname: "eth0",
        };
        let pod = |nets: &str| {
            MemoryView::default()
                .with_pod("ns1", "p", &[(NETWORKS_ANNOTATION, nets)])
                .pods[&("ns1".to_string(), "p".to_string())]
                .clone()
        };
        let plug = |nets: &str| {
            e.hotplug(
                &pod(nets),
                &key,
                &c.cni_dir,
                &|b| Ok(b.to_vec()),
                &Cancel::never(),
            )
            .unwrap()
        };
        let o = plug("vf");
        assert_eq!(o.attached.len(), 1, "{o:?}");
        let recs = n.records();
        let claim = recs[0].attachments[1].claim.as_ref().unwrap();
        assert_eq!(claim.status_entry, StatusEntry::Created);
        assert!(reports
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("claim ns1/p-net-x vf-1 net1")));
        let o = plug("");
        assert_eq!(o.detached.len(), 1, "{o:?}");
        assert!(reports
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "unclaim ns1/p-net-x vf-1"));
    }

    #[test]
    fn added_and_removed_elements_and_what_stays_is_untouched() {
        let p = setup();
        assert_eq!(
            p.ifnames(),
            pairs(&[("eth0", "cluster"), ("net1", "ns1/a")])
        );
        p.n.clear_log();
        let o = p.plug("a, b", &[]);
        assert_eq!(o.attached.len(), 1, "{o:?}");
        assert_eq!(p.n.log(), ["ADD b net2"], "a untouched");
        assert_eq!(
            p.ifnames(),
            pairs(&[("eth0", "cluster"), ("net1", "ns1/a"), ("net2", "ns1/b")])
        );
        let st = p.statuses();
        assert_eq!(st.len(), 2, "one status write per change: {st:?}");
        let v: Value = serde_json::from_str(st[1].splitn(3, ' ').nth(2).unwrap()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        // Back: net2 goes, net1 stays.
        p.n.clear_log();
        let o = p.plug("a", &[]);
        assert_eq!((o.attached.len(), o.detached.len()), (0, 1));
        assert_eq!(p.n.log(), ["DEL b net2"]);
        // Removing the first element keeps the second one's name.
        p.plug("a, b", &[]);
        p.n.clear_log();
        p.plug("b", &[]);
        assert_eq!(p.n.log(), ["DEL a net1"]);
        assert_eq!(
            p.ifnames(),
            pairs(&[("eth0", "cluster"), ("net2", "ns1/b")])
        );
        // A new element takes the lowest free name; nothing to do is a no-op.
        p.n.clear_log();
        p.plug("b, a", &[]);
        assert_eq!(p.n.log(), ["ADD a net1"]);
        p.n.clear_log();
        let o = p.plug("b, a", &[]);
        assert!(!o.changed() && p.n.log().is_empty());
        // The runtime's DEL tears down what hot-plug attached.
        p.n.clear_log();
        p.e.del(&req("DEL", "c1", ""), Some(&p.c)).unwrap();
        assert_eq!(p.n.log(), ["DEL a net1", "DEL b net2", "DEL cluster eth0"]);
    }

    #[test]
    fn a_bad_annotation_changes_nothing() {
        let p = setup();
        let before = p.n.records();
        for bad in ["a, ghost", "a, Bad!", "a, ipnet@eth0"] {
            let o = p.plug(bad, &[]);
            assert!(o.refused.is_some(), "{bad}: {o:?}");
            assert!(!o.changed());
        }
        assert_eq!(p.n.records(), before);
        assert_eq!(p.statuses().len(), 1, "only the ADD's");
    }

    #[test]
    fn the_same_nad_twice_is_two_elements() {
        let p = setup();
        p.plug("a, a", &[]);
        assert_eq!(
            p.ifnames(),
            pairs(&[("eth0", "cluster"), ("net1", "ns1/a"), ("net2", "ns1/a")])
        );
        p.n.clear_log();
        p.plug("a", &[]);
        assert_eq!(p.n.log(), ["DEL a net2"], "the second occurrence goes");
    }

    #[test]
    fn a_changed_element_needs_the_opt_in_to_be_replaced() {
        let p = setup();
        p.plug(
            r#"[{"name":"a"},{"name":"ipnet","ips":["10.9.0.5/24"]}]"#,
            &[],
        );
        p.n.clear_log();
        let changed = r#"[{"name":"a"},{"name":"ipnet","ips":["10.9.0.6/24"]}]"#;
        let o = p.plug(changed, &[]);
        let e = o.refused.expect("refused without the opt-in");
        assert!(e.msg.contains(HOTPLUG_REPLACE_ANNOTATION), "{}", e.msg);
        assert!(p.n.log().is_empty());
        let o = p.plug(changed, &[(HOTPLUG_REPLACE_ANNOTATION, "true")]);
        assert_eq!((o.detached.len(), o.attached.len()), (1, 1), "{o:?}");
        assert_eq!(p.n.log(), ["DEL ipnet net2", "ADD ipnet net2"]);
    }

    #[test]
    fn a_failing_attach_rolls_back_only_that_one() {
        let p = setup();
        p.n.clear_log();
        let o = p.plug("a, bad, b", &[]);
        assert_eq!(o.failed.len(), 1, "{o:?}");
        assert_eq!(o.attached.len(), 1);
        assert_eq!(p.n.log(), ["ADD bad net2", "DEL bad net2", "ADD b net3"]);
        assert_eq!(
            p.ifnames(),
            pairs(&[("eth0", "cluster"), ("net1", "ns1/a"), ("net3", "ns1/b")])
        );
    }

    fn events(p: &Pod1) -> Vec<String> {
        p.view
            .reports
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with("event"))
            .map(|r| r.split(' ').nth(2).unwrap().to_string())
            .collect()
    }

    #[test]
    fn one_event_per_attach_and_detach_and_a_warning_for_a_refusal() {
        let p = setup();
        p.plug("a, b", &[]);
        p.plug("a", &[]);
        p.plug("a, ghost", &[]);
        assert_eq!(
            events(&p),
            [
                "AddedInterface",
                "AddedInterface",
                "RemovedInterface",
                "HotplugRefused"
            ],
            "the ADD's, then one per hot-plug change"
        );
    }

    #[test]
    fn an_attach_a_crash_left_pending_is_rolled_back_then_redone() {
        let p = setup();
        p.plug("a, b", &[]);
        // As if the daemon died between recording net2 pending and its ADD's result.
        let mut rec = p.n.records().remove(0);
        rec.attachments[2].result = None;
        p.n.cache().store(&rec).unwrap();
        p.n.clear_log();
        let o = p.plug("a, b", &[]);
        assert_eq!(o.rolled_back, 1, "{o:?}");
        assert_eq!(p.n.log(), ["DEL b net2", "ADD b net2"]);
        assert!(p.n.records()[0]
            .attachments
            .iter()
            .all(|a| a.result.is_some()));
        // A sandbox whose own ADD never finished is left to the runtime.
        let mut rec = p.n.records().remove(0);
        rec.attachments[0].result = None;
        p.n.cache().store(&rec).unwrap();
        p.n.clear_log();
        let o = p.plug("b", &[]);
        assert!(!o.changed() && o.rolled_back == 0 && p.n.log().is_empty());
    }

    #[test]
    fn the_status_is_rewritten_when_it_does_not_match_the_record_and_only_then() {
        let p = setup();
        p.plug("a, b", &[]);
        let last = p.statuses().pop().unwrap();
        let value = last.splitn(3, ' ').nth(2).unwrap().to_string();
        let n = p.statuses().len();
        // The pod as the watch would show it after our write: nothing to do, nothing written.
        let o = p.plug("a, b", &[(crate::k8s::NETWORK_STATUS_ANNOTATION, &value)]);
        assert!(!o.changed());
        assert_eq!(p.statuses().len(), n);
        // A status a crash kept from being written is written.
        p.plug("a, b", &[(crate::k8s::NETWORK_STATUS_ANNOTATION, "[]")]);
        assert_eq!(p.statuses().len(), n + 1);
    }

    mod delegate {
        use super::*;
        use crate::engine::hotplug::DelegateCall;
        use crate::k8s::annotations::parse_networks;

        fn call(
            p: &Pod1,
            verb: &str,
            container: &str,
            ifname: &str,
            config: &Value,
        ) -> Result<Option<CniResult>, CniError> {
            let mut r = req(verb, container, "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p");
            r.ifname = Some(ifname.into());
            let bytes = config.to_string().into_bytes();
            let sel = parse_networks(r#"[{"name":"x","ips":["10.9.0.5/24"]}]"#)
                .unwrap()
                .remove(0);
            p.e.delegate(
                &DelegateCall {
                    req: &r,
                    config: &bytes,
                    selection: &sel,
                    cancel: &Cancel::never(),
                },
                std::slice::from_ref(&p.c.cni_dir),
                &|b| Ok(b.to_vec()),
            )
        }

        #[test]
        fn add_and_del_one_network_into_a_sandbox_plexus_holds() {
            let p = setup();
            p.n.clear_log();
            let b = Node::net("b", json!({"capabilities": {"ips": true}}));
            let r = call(&p, "ADD", "c1", "hp0", &b).unwrap().expect("a result");
            assert_eq!(r.interfaces.len(), 1);
            assert_eq!(p.n.log(), ["ADD b hp0"]);
            let rec = p.n.records().remove(0);
            let hp = rec.attachments.iter().find(|a| a.ifname == "hp0").unwrap();
            assert!(hp.selection.is_none(), "not an annotation element");
            assert_eq!(hp.status_name, "ns1/b");
            assert_eq!(hp.inputs.capability_args["ips"], json!(["10.9.0.5/24"]));
            // The native reconciler leaves it alone.
            p.n.clear_log();
            p.plug("a", &[]);
            assert!(p.n.log().is_empty(), "{:?}", p.n.log());
            // The same interface twice is refused.
            assert!(call(&p, "ADD", "c1", "hp0", &b).is_err());
            assert!(call(&p, "CHECK", "c1", "hp0", &b).is_ok());
            call(&p, "DEL", "c1", "hp0", &b).unwrap();
            assert_eq!(p.n.log(), ["CHECK b hp0", "DEL b hp0"]);
            // DEL again, and DEL of a container plexus does not hold: nothing to do.
            call(&p, "DEL", "c1", "hp0", &b).unwrap();
            call(&p, "DEL", "nope", "hp0", &b).unwrap();
            let e = call(&p, "ADD", "nope", "hp0", &b).unwrap_err();
            assert_eq!(e.code, Code::UNKNOWN_CONTAINER, "{}", e.msg);
            assert!(events(&p).contains(&"RemovedInterface".to_string()));
        }

        #[test]
        fn the_nad_rules_apply_and_the_runtime_del_tears_it_down() {
            let p = setup();
            let me =
                json!({"cniVersion": "1.0.0", "name": "evil", "type": "plexus", "binDir": "/tmp"});
            let e = call(&p, "ADD", "c1", "hp0", &me).unwrap_err();
            assert!(e.msg.contains("plexus"), "{}", e.msg);
            let plain = Node::net("b", json!({}));
            let e = call(&p, "ADD", "c1", "hp1", &plain).unwrap_err();
            assert!(e.msg.contains("capability"), "{}", e.msg);
            let b = Node::net("b", json!({"capabilities": {"ips": true}}));
            call(&p, "ADD", "c1", "hp1", &b).unwrap();
            p.n.clear_log();
            p.e.del(&req("DEL", "c1", ""), Some(&p.c)).unwrap();
            assert_eq!(p.n.log(), ["DEL b hp1", "DEL a net1", "DEL cluster eth0"]);
        }
    }
}

/// A device of claim `claim` (the pod calls it `net`), and the claim object itself.
fn claim_device(claim: &str, device: &str, id: &str) -> crate::k8s::dra::DraDevice {
    use crate::k8s::dra::{ClaimDevice, DraDevice};
    DraDevice {
        at: ClaimDevice {
            namespace: "ns1".into(),
            claim: claim.into(),
            pod_claim: "net".into(),
            request: "vf".into(),
            driver: "d".into(),
            pool: "n1".into(),
            device: device.into(),
            ..Default::default()
        },
        resource_name: Some("example.com/vf".into()),
        device_id: Some(id.into()),
        ..Default::default()
    }
}

fn claim_object(name: &str, devices: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "ns1"},
           "status": {"allocation": {"devices": {"results": []}}, "devices": devices}})
}

/// Pod ns1/p asking for `networks` of NAD `vf` (resource example.com/vf), with one claim device.
fn claim_view_for(networks: &str) -> MemoryView {
    let mut view = MemoryView::default()
        .with_pod("ns1", "p", &[("k8s.v1.cni.cncf.io/networks", networks)])
        .with_device_nad(
            "ns1",
            "vf",
            &Node::net("vf", json!({})).to_string(),
            "example.com/vf",
        );
    view.claims = vec![claim_device("p-net-x", "vf-1", "0000:5e:00.1")];
    view.claim_objects.lock().unwrap().insert(
        ("ns1".into(), "p-net-x".into()),
        claim_object("p-net-x", json!([])),
    );
    view
}

fn claim_view() -> MemoryView {
    claim_view_for("vf")
}

fn entries(view: &MemoryView, claim: &str) -> Value {
    view.claim_objects.lock().unwrap()[&("ns1".to_string(), claim.to_string())]["status"]["devices"]
        .clone()
}

const POD_ARGS: &str = "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p";

fn claim_conf(n: &Node) -> NetConf {
    n.conf(
        "plexus",
        "1.0.0",
        vec![Node::net("a", json!({}))],
        json!({"kubeconfig": "/dev/null"}),
    )
}

#[test]
fn a_claim_device_gets_its_network_data_written_to_the_claim_and_taken_out_on_del() {
    use crate::k8s::dra::StatusEntry;
    let n = Node::new();
    let c = claim_conf(&n);
    let view = claim_view();
    let reports = view.reports.clone();
    let e = engine(Some(view.clone()));
    add(&e, &req("ADD", "c1", POD_ARGS), &c).unwrap();
    let recs = n.records();
    let a = &recs[0].attachments[1];
    assert_eq!(
        a.device,
        Some(("example.com/vf".into(), "0000:5e:00.1".into()))
    );
    let claim = a
        .claim
        .as_ref()
        .expect("the claim it came from is recorded");
    assert_eq!(claim.status_entry, StatusEntry::Created);
    let got = entries(&view, "p-net-x");
    assert_eq!(got[0]["device"], "vf-1");
    assert_eq!(got[0]["networkData"]["interfaceName"], "net1");
    assert_eq!(got[0]["conditions"][0]["reason"], "NetworkInterfaceReady");
    {
        let r = reports.lock().unwrap();
        // The claim is written before network-status, which says the ADD is done.
        let claim_at = r.iter().position(|l| l.starts_with("claim ")).unwrap();
        let status_at = r.iter().position(|l| l.starts_with("status ")).unwrap();
        assert!(claim_at < status_at, "{r:?}");
    }
    e.del(&req("DEL", "c1", POD_ARGS), Some(&c)).unwrap();
    assert!(n.records().is_empty());
    assert_eq!(entries(&view, "p-net-x"), json!([]));
}

#[test]
fn the_drivers_entry_gets_network_data_only_and_keeps_the_rest_after_del() {
    use crate::k8s::dra::StatusEntry;
    let n = Node::new();
    let c = claim_conf(&n);
    let view = claim_view();
    let driver_entry = json!({"driver": "d", "pool": "n1", "device": "vf-1",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Prepared", "message": "the driver"}]});
    view.claim_objects.lock().unwrap().insert(
        ("ns1".into(), "p-net-x".into()),
        claim_object("p-net-x", json!([driver_entry])),
    );
    let e = engine(Some(view.clone()));
    add(&e, &req("ADD", "c1", POD_ARGS), &c).unwrap();
    assert_eq!(
        n.records()[0].attachments[1]
            .claim
            .as_ref()
            .unwrap()
            .status_entry,
        StatusEntry::Merged
    );
    assert_eq!(
        entries(&view, "p-net-x")[0]["networkData"]["interfaceName"],
        "net1"
    );
    e.del(&req("DEL", "c1", POD_ARGS), Some(&c)).unwrap();
    assert_eq!(entries(&view, "p-net-x"), json!([driver_entry]));
}

#[test]
fn a_second_add_without_del_leaves_one_entry_that_del_then_removes() {
    let n = Node::new();
    let c = claim_conf(&n);
    let view = claim_view();
    let e = engine(Some(view.clone()));
    add(&e, &req("ADD", "c1", POD_ARGS), &c).unwrap();
    add(&e, &req("ADD", "c1", POD_ARGS), &c).unwrap();
    let got = entries(&view, "p-net-x");
    assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
    assert_eq!(
        n.records()[0].attachments[1]
            .claim
            .as_ref()
            .unwrap()
            .status_entry,
        crate::k8s::dra::StatusEntry::Created,
        "plexus's own entry is not taken for the driver's"
    );
    e.del(&req("DEL", "c1", POD_ARGS), Some(&c)).unwrap();
    assert_eq!(entries(&view, "p-net-x"), json!([]));
}

#[test]
fn a_failed_claim_write_rolls_back_and_takes_out_what_was_written() {
    let n = Node::new();
    let c = claim_conf(&n);
    // Two claim networks; the second's claim is gone by the time its status is written.
    let mut view = claim_view_for("vf, vf");
    view.claims
        .push(claim_device("p-gone-x", "vf-2", "0000:5e:00.2"));
    let reports = view.reports.clone();
    let e = engine(Some(view.clone()));
    let err = add(&e, &req("ADD", "c1", POD_ARGS), &c).unwrap_err();
    assert!(
        err.msg.contains("p-gone-x") && err.msg.contains("ns1/vf"),
        "{}",
        err.msg
    );
    assert_eq!(
        n.log(),
        [
            "ADD a eth0",
            "ADD vf net1",
            "ADD vf net2",
            "DEL vf net2",
            "DEL vf net1",
            "DEL a eth0"
        ]
    );
    assert!(n.records().is_empty());
    assert_eq!(
        entries(&view, "p-net-x"),
        json!([]),
        "the first write was taken out"
    );
    let r = reports.lock().unwrap();
    assert!(!r.iter().any(|l| l.starts_with("status ")), "{r:?}");
}

#[test]
fn a_del_without_a_cluster_connects_to_take_the_network_data_out() {
    let n = Node::new();
    let c = claim_conf(&n);
    let view = claim_view();
    add(&engine(Some(view.clone())), &req("ADD", "c1", POD_ARGS), &c).unwrap();
    assert_eq!(entries(&view, "p-net-x").as_array().unwrap().len(), 1);
    // As the plugin's DEL: no cluster, one built on demand (once).
    let mut e = engine(None);
    let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (v, b) = (view.clone(), built.clone());
    e.connect = Some(Arc::new(move || {
        b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Arc::new(v.clone()) as Arc<dyn Cluster>)
    }));
    e.del(&req("DEL", "c1", POD_ARGS), Some(&c)).unwrap();
    assert_eq!(entries(&view, "p-net-x"), json!([]));
    assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Nothing to take out: no cluster is built.
    add(&engine(None), &req("ADD", "c2", ""), &c).unwrap();
    e.del(&req("DEL", "c2", ""), Some(&c)).unwrap();
    assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn claim_data_a_rollback_could_not_take_out_is_left_for_the_runtimes_del() {
    let n = Node::new();
    let c = claim_conf(&n);
    let mut view = claim_view_for("vf, vf");
    view.claims
        .push(claim_device("p-gone-x", "vf-2", "0000:5e:00.2"));
    view.fail_withdraw
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = engine(Some(view.clone()));
    add(&e, &req("ADD", "c1", POD_ARGS), &c).unwrap_err();
    let recs = n.records();
    assert_eq!(recs.len(), 1, "kept: the claim still holds plexus's data");
    // net1's data is there; net2's write may have landed before its claim went (pending).
    let kept: Vec<&str> = recs[0]
        .attachments
        .iter()
        .map(|a| a.ifname.as_str())
        .collect();
    assert_eq!(kept, ["net1", "net2"]);
    assert_eq!(entries(&view, "p-net-x").as_array().unwrap().len(), 1);
    // The API server answers again: the runtime's DEL takes it out and the record goes.
    view.fail_withdraw
        .store(false, std::sync::atomic::Ordering::SeqCst);
    n.clear_log();
    e.del(&req("DEL", "c1", POD_ARGS), Some(&c)).unwrap();
    assert_eq!(
        n.log(),
        ["DEL vf net2", "DEL vf net1"],
        "DEL again is harmless"
    );
    assert_eq!(entries(&view, "p-net-x"), json!([]));
    assert!(n.records().is_empty());
}
