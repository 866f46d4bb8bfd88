//! The fixture API server (NOT a kube-apiserver) checked against kube-rs 5, the client the node
//! daemon uses: HTTPS with a bearer token, cluster-wide list+watch through `kube::runtime`
//! reflectors, pagination, bookmarks, streaming lists, resuming after dropped watches, relisting
//! after 410 Gone, and in-cluster config from a service-account mount. What these tests pin is
//! what the daemon's tests may rely on the fixture for.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, WatchEvent,
    WatchParams,
};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use plexus_e2e::{in_netns, Fixture, FixtureOptions, TestEnv, SERVICE_ACCOUNT_DIR};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "fixture-sa-token";

fn tls_fixture(env: &TestEnv, bookmarks: Duration, history: Option<usize>) -> Fixture {
    Fixture::start_with(
        env,
        &FixtureOptions {
            tls: true,
            token: Some(TOKEN.into()),
            bookmark_interval: Some(bookmarks),
            history_size: history,
            ..Default::default()
        },
    )
}

/// A tokio runtime whose threads all live in the node netns, where the fixture listens on
/// 127.0.0.1. Work goes onto it with [`run`] or `spawn` only: `block_on` would poll its future
/// on the calling thread, in the host's netns.
fn netns_runtime(env: &TestEnv) -> tokio::runtime::Runtime {
    in_netns(&env.node, || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn run<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(work)).unwrap()
}

async fn client_from(kubeconfig: PathBuf) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A reflector running on `rt`, and every watcher event it saw, as kube-rs prints them
/// (`Init`, `InitApply(name)`, `InitDone`, `Apply(name)`, `Delete(name)`, or `error: …`).
struct Reflected<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl<K> Reflected<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    fn start(
        rt: &tokio::runtime::Runtime,
        api: Api<K>,
        config: watcher::Config,
        dyntype: K::DynamicType,
    ) -> Self {
        use futures_util::StreamExt;
        let writer = reflector::store::Writer::new(dyntype);
        let store = writer.as_reader();
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        rt.spawn(async move {
            watcher(api, config)
                .default_backoff()
                .reflect(writer)
                .for_each(|ev| {
                    log.lock().unwrap().push(match ev {
                        Ok(e) => e.to_string(),
                        Err(e) => format!("error: {e}"),
                    });
                    std::future::ready(())
                })
                .await
        });
        Reflected { store, seen }
    }

    /// `namespace/name` of everything in the store, sorted.
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .store
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        v.sort();
        v
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    #[track_caller]
    fn wait_for_names(&self, want: &[&str]) {
        wait_until(&format!("store holds {want:?}"), || self.names() == want);
    }
}

#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The decoded query parameters of a logged request.
fn params(entry: &Value) -> Vec<(String, String)> {
    form_urlencoded::parse(entry["query"].as_str().unwrap().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(entry: &Value, key: &str) -> Option<String> {
    params(entry)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// The logged GETs of `path`: (lists, watches).
fn gets(api: &Fixture, path: &str) -> (Vec<Value>, Vec<Value>) {
    api.request_log()
        .into_iter()
        .filter(|r| r["method"] == "GET" && r["path"] == path)
        .partition(|r| r["watch"] == false)
}

fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

fn nad(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"config": json!({"cniVersion": "1.0.0", "type": "bridge"}).to_string()}})
}

#[test]
fn pod_reflector_follows_this_nodes_pods_over_tls_and_resumes_after_dropped_watches() {
    let env = TestEnv::new("fx-pods");
    let api = tls_fixture(&env, Duration::from_millis(200), None);
    api.create_pod_on("a", "p1", "node-1", json!({}));
    api.create_pod_on("b", "p2", "node-2", json!({}));
    api.create_pod_on("c", "p3", "node-1", json!({}));

    let rt = netns_runtime(&env);
    let client = run(&rt, client_from(api.kubeconfig.clone()));
    let pods = Reflected::start(
        &rt,
        Api::<Pod>::all(client),
        watcher::Config::default().fields("spec.nodeName=node-1"),
        (),
    );
    pods.wait_for_names(&["a/p1", "c/p3"]);
    api.wait_for_watches(1);

    api.create_pod_on("b", "p4", "node-1", json!({}));
    api.create_pod_on("a", "p5", "node-2", json!({}));
    pods.wait_for_names(&["a/p1", "b/p4", "c/p3"]);

    api.patch_pod_annotations("a", "p1", &json!({"k8s.v1.cni.cncf.io/networks": "net1"}));
    wait_until("p1's annotation is in the store", || {
        pods.store.state().iter().any(|p| {
            p.name_any() == "p1"
                && p.annotations().get("k8s.v1.cni.cncf.io/networks") == Some(&"net1".into())
        })
    });

    let deleted = api.delete_pod("c", "p3");
    pods.wait_for_names(&["a/p1", "b/p4"]);

    // A clean end of every watch (as an API server going away): kube-rs re-watches from the
    // resourceVersion it last saw, and nothing is listed again.
    assert_eq!(api.drop_watches(), 1);
    api.create_pod_on("c", "p6", "node-1", json!({}));
    pods.wait_for_names(&["a/p1", "b/p4", "c/p6"]);
    api.wait_for_watches(1);

    // A cut connection: the same recovery, through a stream error.
    assert_eq!(api.abort_watches(), 1);
    api.create_pod_on("c", "p7", "node-1", json!({}));
    pods.wait_for_names(&["a/p1", "b/p4", "c/p6", "c/p7"]);

    let seen = pods.seen();
    assert!(
        seen.iter().all(|e| !e.contains("p2") && !e.contains("p5")),
        "another node's pods reached the watcher: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|e| *e == "Init").count(),
        1,
        "relisted: {seen:?}"
    );
    assert!(seen.contains(&"Delete(p3)".to_string()), "{seen:?}");

    let (lists, watches) = gets(&api, "/api/v1/pods");
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert!(watches.len() >= 3, "{watches:?}");
    let deleted_rv: u64 = deleted["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for w in &watches[1..] {
        let rv: u64 = param(w, "resourceVersion").unwrap().parse().unwrap();
        assert!(
            rv >= deleted_rv,
            "re-watch from {rv}, before what the watcher had seen ({deleted_rv}): {w}"
        );
        assert_eq!(
            param(w, "fieldSelector").as_deref(),
            Some("spec.nodeName=node-1")
        );
    }
    rt.shutdown_background();
}

#[test]
fn watcher_relists_after_410_gone() {
    let env = TestEnv::new("fx-gone");
    let api = tls_fixture(&env, Duration::from_secs(5), Some(5));
    api.create_pod("a", "p1", json!({}));
    api.create_pod("a", "p2", json!({}));

    let rt = netns_runtime(&env);
    let client = run(&rt, client_from(api.kubeconfig.clone()));
    let pods = Reflected::start(&rt, Api::<Pod>::all(client), watcher::Config::default(), ());
    pods.wait_for_names(&["a/p1", "a/p2"]);
    api.wait_for_watches(1);

    // The re-watch after the drop is held back while more changes happen than the history
    // keeps, so the resourceVersion it asks for is gone by the time it is served.
    api.fault(
        json!({"method": "GET", "pathPrefix": "/api/v1/pods", "watch": true,
        "delayMs": 1500, "times": 1}),
    );
    api.drop_watches();
    api.delete_pod("a", "p1");
    for i in 0..8 {
        api.create_pod("b", &format!("q{i}"), json!({}));
    }
    let want: Vec<String> = std::iter::once("a/p2".to_string())
        .chain((0..8).map(|i| format!("b/q{i}")))
        .collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    pods.wait_for_names(&want);

    let seen = pods.seen();
    assert!(
        seen.iter().any(|e| e.starts_with("error:")
            && e.contains("too old resource version")
            && e.ends_with("Expired")),
        "no 410 reached the watcher: {seen:?}"
    );
    assert_eq!(seen.iter().filter(|e| *e == "Init").count(), 2, "{seen:?}");
    let (lists, _) = gets(&api, "/api/v1/pods");
    assert_eq!(lists.len(), 2, "one list, one relist: {lists:?}");
    rt.shutdown_background();
}

#[test]
fn nad_reflector_pages_through_every_namespace() {
    let env = TestEnv::new("fx-nads");
    let api = tls_fixture(&env, Duration::from_secs(5), None);
    let nads: Vec<Value> = (0..25)
        .map(|i| nad(&format!("ns-{}", i % 3), &format!("net-{i:02}")))
        .collect();
    assert_eq!(api.create_objects(&nads), 25);

    let rt = netns_runtime(&env);
    let client = run(&rt, client_from(api.kubeconfig.clone()));
    let ar = nad_resource();

    // A list is of the present: its resourceVersion is the fixture's, one per change so far.
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let a = all.clone();
    let pages = run(&rt, async move {
        let mut pages = vec![];
        let mut lp = ListParams::default().limit(10);
        loop {
            let page = a.list(&lp).await.unwrap();
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            pages.push(page);
            match next {
                Some(c) => lp = ListParams::default().limit(10).continue_token(&c),
                None => break pages,
            }
        }
    });
    assert_eq!(
        pages.iter().map(|p| p.items.len()).collect::<Vec<_>>(),
        [10, 10, 5]
    );
    assert_eq!(
        pages
            .iter()
            .map(|p| p.metadata.remaining_item_count)
            .collect::<Vec<_>>(),
        [Some(15), Some(5), None]
    );
    for p in &pages {
        assert_eq!(p.metadata.resource_version.as_deref(), Some("25"));
    }
    let mut listed: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|o| o.name_any()))
        .collect();
    listed.dedup();
    assert_eq!(listed.len(), 25);

    api.clear_requests();
    let reflected = Reflected::start(&rt, all, watcher::Config::default().page_size(10), ar);
    wait_until("25 NADs in the store", || reflected.names().len() == 25);
    api.wait_for_watches(1);
    let (lists, watches) = gets(
        &api,
        "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions",
    );
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert_eq!(param(&lists[0], "limit").as_deref(), Some("10"));
    assert!(param(&lists[0], "continue").is_none());
    assert!(lists[1..]
        .iter()
        .all(|l| param(l, "continue").is_some_and(|c| !c.is_empty())));
    assert_eq!(param(&watches[0], "resourceVersion").as_deref(), Some("25"));

    api.create_nad(
        "ns-new",
        "late",
        &json!({"cniVersion": "1.0.0", "type": "macvlan"}),
    );
    wait_until("the new namespace's NAD", || {
        reflected.names().contains(&"ns-new/late".to_string())
    });
    let (code, v) = api.call(
        "DELETE",
        "/apis/k8s.cni.cncf.io/v1/namespaces/ns-0/network-attachment-definitions/net-00",
        None,
    );
    assert_eq!(code, 200, "{v}");
    wait_until("net-00 gone", || {
        !reflected.names().contains(&"ns-0/net-00".to_string())
    });
    assert_eq!(reflected.names().len(), 25);
    rt.shutdown_background();
}

#[test]
fn bookmarks_arrive_and_streaming_lists_end_with_the_initial_events_bookmark() {
    let env = TestEnv::new("fx-bookmarks");
    let api = tls_fixture(&env, Duration::from_millis(200), None);
    api.create_pod("a", "p1", json!({}));
    api.create_pod("b", "p2", json!({}));

    let rt = netns_runtime(&env);
    let client = run(&rt, client_from(api.kubeconfig.clone()));
    let pods: Api<Pod> = Api::all(client);

    let p = pods.clone();
    let events = run(&rt, async move {
        use futures_util::StreamExt;
        let wp = WatchParams::default().timeout(10);
        let mut stream = p.watch(&wp, "0").await.unwrap().boxed();
        let mut seen = vec![];
        let mut bookmarks = 0;
        let start = Instant::now();
        while bookmarks < 4 {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("a bookmark within 5 s")
                .unwrap()
                .unwrap();
            seen.push(match ev {
                WatchEvent::Added(p) => format!("ADDED {}", p.name_any()),
                WatchEvent::Bookmark(b) => {
                    bookmarks += 1;
                    format!("BOOKMARK {}", b.metadata.resource_version)
                }
                other => format!("{other:?}"),
            });
        }
        (seen, start.elapsed())
    });
    let (seen, took) = events;
    assert_eq!(
        seen,
        [
            "ADDED p1",
            "ADDED p2",
            "BOOKMARK 2",
            "BOOKMARK 2",
            "BOOKMARK 2",
            "BOOKMARK 2"
        ]
    );
    // One at the start, then three periods.
    assert!(
        took < Duration::from_secs(3),
        "bookmarks too slow: {took:?}"
    );

    api.clear_requests();
    let streamed = Reflected::start(&rt, pods, watcher::Config::default().streaming_lists(), ());
    streamed.wait_for_names(&["a/p1", "b/p2"]);
    wait_until("InitDone", || {
        streamed.seen().contains(&"InitDone".to_string())
    });
    assert_eq!(
        streamed.seen(),
        ["Init", "InitApply(p1)", "InitApply(p2)", "InitDone"]
    );
    api.create_pod("c", "p3", json!({}));
    streamed.wait_for_names(&["a/p1", "b/p2", "c/p3"]);
    let (lists, watches) = gets(&api, "/api/v1/pods");
    assert!(
        lists.is_empty(),
        "a streaming list lists nothing: {lists:?}"
    );
    let w = &watches[0];
    for (k, v) in [
        ("watch", "true"),
        ("sendInitialEvents", "true"),
        ("resourceVersionMatch", "NotOlderThan"),
        ("allowWatchBookmarks", "true"),
        ("resourceVersion", "0"),
    ] {
        assert_eq!(param(w, k).as_deref(), Some(v), "{k} in {w}");
    }
    rt.shutdown_background();
}

#[test]
fn selector_watches_see_objects_cross_the_selector_and_old_versions_expire() {
    let env = TestEnv::new("fx-selector");
    let api = tls_fixture(&env, Duration::from_secs(5), Some(4));
    api.create_pod("a", "p1", json!({}));

    let rt = netns_runtime(&env);
    let client = run(&rt, client_from(api.kubeconfig.clone()));
    let pods: Api<Pod> = Api::namespaced(client, "a");
    let p = pods.clone();
    let events = run(&rt, async move {
        use futures_util::StreamExt;
        let rv = p
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let wp = WatchParams::default()
            .labels("app in (web,api)")
            .disable_bookmarks()
            .timeout(10);
        let mut stream = p.watch(&wp, &rv).await.unwrap().boxed();
        let pp = PatchParams::default();
        let mut seen = vec![];
        for app in ["web", "api", "db", "web"] {
            let patch = Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
            let after = p.patch("p1", &pp, &patch).await.unwrap();
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .ok()
                .flatten()
                .map(|e| e.unwrap());
            seen.push(match ev {
                Some(WatchEvent::Added(o)) => format!("ADDED {}", o.labels()["app"]),
                Some(WatchEvent::Modified(o)) => format!("MODIFIED {}", o.labels()["app"]),
                Some(WatchEvent::Deleted(o)) => {
                    // The last state that matched, at the resourceVersion of the change.
                    assert_eq!(o.resource_version(), after.resource_version());
                    format!("DELETED {}", o.labels()["app"])
                }
                other => format!("{other:?}"),
            });
            if app == "db" {
                // Nothing for a change that neither matches nor matched.
                let patch = Patch::Merge(json!({"metadata": {"labels": {"tier": "x"}}}));
                p.patch("p1", &pp, &patch).await.unwrap();
            }
        }
        seen
    });
    assert_eq!(
        events,
        ["ADDED web", "MODIFIED api", "DELETED api", "ADDED web"]
    );

    // Five changes since resourceVersion 1, four kept: 410 as an ERROR event, then the end.
    let p = pods.clone();
    let expired = run(&rt, async move {
        use futures_util::StreamExt;
        let stream = p.watch(&WatchParams::default(), "1").await.unwrap();
        stream.collect::<Vec<_>>().await
    });
    assert_eq!(expired.len(), 1, "{expired:?}");
    match &expired[0] {
        Ok(WatchEvent::Error(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{s:?}")
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    rt.shutdown_background();
}

#[test]
fn wrong_or_missing_token_gets_401() {
    let env = TestEnv::new("fx-token");
    let api = tls_fixture(&env, Duration::from_secs(5), None);
    let rt = netns_runtime(&env);
    let kc: Value =
        serde_json::from_str(&std::fs::read_to_string(&api.kubeconfig).unwrap()).unwrap();
    let variant = |name: &str, user: Value| {
        let mut kc = kc.clone();
        kc["users"][0]["user"] = user;
        let path = env.path().join(name);
        std::fs::write(&path, kc.to_string()).unwrap();
        path
    };
    let wrong = variant("kubeconfig-wrong", json!({"token": "not-the-token"}));
    let none = variant("kubeconfig-none", json!({}));
    let good = api.kubeconfig.clone();
    let codes = run(&rt, async move {
        let mut codes = vec![];
        for kc in [good, wrong, none] {
            let pods: Api<Pod> = Api::all(client_from(kc).await);
            codes.push(match pods.list(&ListParams::default()).await {
                Ok(_) => (200, String::new()),
                Err(kube::Error::Api(s)) => (s.code, s.reason.clone()),
                Err(e) => panic!("not an API error: {e}"),
            });
        }
        codes
    });
    assert_eq!(
        codes,
        [
            (200, String::new()),
            (401, "Unauthorized".to_string()),
            (401, "Unauthorized".to_string())
        ]
    );
    assert_eq!(
        gets(&api, "/api/v1/pods").0.len(),
        3,
        "refused requests are logged too"
    );
    rt.shutdown_background();
}

#[test]
fn request_log_shows_list_and_watch_with_their_queries() {
    let env = TestEnv::new("fx-log");
    let api = tls_fixture(&env, Duration::from_secs(5), None);
    let pod = |ns: &str, name: &str, node: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": node}})
    };
    api.create_objects(&[
        pod("a", "web-1", "node-1", "web"),
        pod("a", "db-1", "node-1", "db"),
        pod("b", "web-2", "node-2", "web"),
        pod("b", "cache-1", "node-1", "cache"),
    ]);
    let rt = netns_runtime(&env);
    let client = run(&rt, client_from(api.kubeconfig.clone()));
    let pods = Reflected::start(
        &rt,
        Api::<Pod>::all(client),
        watcher::Config::default()
            .fields("spec.nodeName=node-1")
            .labels("app in (web,cache)"),
        (),
    );
    pods.wait_for_names(&["a/web-1", "b/cache-1"]);
    api.wait_for_watches(1);

    let (lists, watches) = gets(&api, "/api/v1/pods");
    assert_eq!((lists.len(), watches.len()), (1, 1));
    let (list, watch) = (&lists[0], &watches[0]);
    assert_eq!(
        list["query"],
        "&fieldSelector=spec.nodeName%3Dnode-1&labelSelector=app+in+%28web%2Ccache%29&limit=500",
        "the raw query, as kube-rs sends it (its leading & included)"
    );
    assert_eq!(list["watch"], false);
    assert_eq!(watch["watch"], true);
    assert_eq!(
        params(watch),
        [
            ("watch", "true"),
            ("timeoutSeconds", "290"),
            ("fieldSelector", "spec.nodeName=node-1"),
            ("labelSelector", "app in (web,cache)"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", "4"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    rt.shutdown_background();
}

#[test]
fn bulk_objects_cluster_wide_lists_and_field_selectors() {
    let env = TestEnv::new("fx-bulk");
    let api = Fixture::start(&env);
    let pod = |ns: &str, name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node}})
    };
    let event = |ns: &str, name: &str, reason: &str| {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": "p"}, "reason": reason})
    };
    let objs = [
        pod("a", "p1", "node-1"),
        pod("b", "p2", "node-1"),
        pod("b", "p3", "node-2"),
        event("a", "e1", "AddedInterface"),
        event("b", "e2", "ErrorAddingNetwork"),
        nad("a", "n1"),
    ];
    assert_eq!(api.create_objects(&objs), 6);

    let names = |path: &str| -> Vec<String> {
        let (code, v) = api.call("GET", path, None);
        assert_eq!(code, 200, "{path}: {v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(names("/api/v1/pods"), ["a/p1", "b/p2", "b/p3"]);
    assert_eq!(
        names("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1"),
        ["a/p1", "b/p2"]
    );
    assert_eq!(
        names("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1%2Cmetadata.namespace%21%3Da"),
        ["b/p2"]
    );
    assert_eq!(
        names("/api/v1/pods?fieldSelector=metadata.name==p3"),
        ["b/p3"]
    );
    assert_eq!(names("/api/v1/namespaces/b/pods"), ["b/p2", "b/p3"]);
    assert_eq!(names("/api/v1/events"), ["a/e1", "b/e2"]);
    assert_eq!(
        names("/api/v1/events?fieldSelector=reason%3DErrorAddingNetwork"),
        ["b/e2"]
    );
    assert_eq!(
        names("/apis/k8s.cni.cncf.io/v1/network-attachment-definitions"),
        ["a/n1"]
    );

    let (code, v) = api.call("GET", "/api/v1/pods?fieldSelector=spec.foo%3Dx", None);
    assert_eq!((code, &v["reason"]), (400, &json!("BadRequest")), "{v}");
    let (code, v) = api.call(
        "GET",
        "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions?fieldSelector=spec.nodeName%3Dx",
        None,
    );
    assert_eq!(code, 400, "NADs have no spec.nodeName field: {v}");

    // All or none: one existing name refuses the whole batch, and nothing changes.
    let (code, v) = api.call(
        "POST",
        "/fixture/objects",
        Some(&json!([
            pod("c", "new", "node-1"),
            pod("a", "p1", "node-1")
        ])),
    );
    assert_eq!((code, &v["reason"]), (409, &json!("AlreadyExists")), "{v}");
    let (_, list) = api.call("GET", "/api/v1/pods", None);
    assert_eq!(list["metadata"]["resourceVersion"], "6");
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    // A watch from the present, without bookmarks, ends at its timeout having sent nothing.
    let (code, v) = api.call(
        "GET",
        "/api/v1/pods?watch=true&resourceVersion=6&timeoutSeconds=1",
        None,
    );
    assert_eq!((code, v), (200, Value::Null), "no events after the present");

    // Dropped watches end with HTTP/1.1's last chunk; aborted ones are cut before it.
    for (abort, clean) in [(false, true), (true, false)] {
        let reader = raw_watch(&env, api.port);
        api.wait_for_watches(1);
        assert_eq!(
            if abort {
                api.abort_watches()
            } else {
                api.drop_watches()
            },
            1
        );
        let wire = reader.join().unwrap();
        assert!(wire.contains("\"name\":\"p3\""), "{wire}");
        assert_eq!(wire.ends_with("\r\n0\r\n\r\n"), clean, "{wire}");
        wait_until("the watch is gone", || api.live_watches() == 0);
    }
}

/// One GET of pod a/p1 on a fresh connection in the node netns: the raw response, empty when the
/// connection was reset or closed before any answer.
fn get_p1(node: &str, port: u16) -> String {
    in_netns(node, move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = "GET /api/v1/namespaces/a/pods/p1 HTTP/1.1\r\nhost: fixture\r\nconnection: close\r\n\r\n";
        if s.write_all(req.as_bytes()).is_err() {
            return String::new();
        }
        let mut out = vec![];
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// `POST /fixture/outage`: a keep-alive connection and a watch are cut at once, new connections
/// get no answer (reset) while it lasts, then the same address serves the same objects again.
#[test]
fn an_outage_cuts_every_connection_resets_new_ones_and_comes_back_with_its_state() {
    use std::io::{Read, Write};
    let env = TestEnv::new("fx-outage");
    let api = Fixture::start(&env);
    api.create_pod("a", "p1", json!({}));
    let port = api.port;
    let node = env.node.clone();
    // A keep-alive connection that has served one request, held open.
    let mut kept = in_netns(&node, move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /api/v1/namespaces/a/pods/p1 HTTP/1.1\r\nhost: fixture\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        s
    });
    let watch = raw_watch(&env, port);
    wait_until("the watch is live", || api.live_watches() == 1);

    let t = Instant::now();
    api.outage(1500);
    // In effect as soon as the call answered: a new connection gets nothing.
    assert_eq!(get_p1(&node, port), "", "answered during the outage");
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match kept.read(&mut buf) {
        Ok(0) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the kept connection was not cut: {e}"
        ),
        Ok(n) => panic!("the kept connection got {n} bytes instead of being cut"),
    }
    let wire = watch.join().unwrap();
    assert!(
        !wire.ends_with("\r\n0\r\n\r\n"),
        "a cut, not a clean end: {wire}"
    );
    let mut back = String::new();
    wait_until("the API server is back", || {
        back = get_p1(&node, port);
        !back.is_empty()
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "back after {:?}",
        t.elapsed()
    );
    assert!(
        back.starts_with("HTTP/1.1 200") && back.contains("\"p1\""),
        "the state is kept: {back}"
    );
}

/// A cluster-wide pod watch read off the wire in the node netns until the fixture closes it: the
/// raw HTTP/1.1 response, chunk framing and all.
fn raw_watch(env: &TestEnv, port: u16) -> std::thread::JoinHandle<String> {
    let node = env.node.clone();
    std::thread::spawn(move || {
        in_netns(&node, move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            // `close`, so the clean end is also the end of the connection.
            let req = "GET /api/v1/pods?watch=true HTTP/1.1\r\nhost: fixture\r\nconnection: close\r\n\r\n";
            s.write_all(req.as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut wire = vec![];
            // A cut connection may end in a reset: what came before it is the answer.
            let _ = s.read_to_end(&mut wire);
            String::from_utf8_lossy(&wire).into_owned()
        })
    })
}

#[test]
fn in_cluster_config_reaches_the_fixture_through_a_service_account_mount() {
    let env = TestEnv::new("fx-incluster");
    let api = tls_fixture(&env, Duration::from_secs(5), None);
    api.create_pod_on("kube-system", "plexus-abcde", "node-1", json!({}));
    api.create_pod_on("default", "other", "node-1", json!({}));
    let sa = env.path().join("serviceaccount");
    api.write_service_account(&sa);
    assert_eq!(std::fs::read_to_string(sa.join("token")).unwrap(), TOKEN);
    assert_eq!(
        std::fs::read_to_string(sa.join("namespace")).unwrap(),
        "kube-system"
    );

    let me = std::env::current_exe().unwrap();
    let out = api
        .in_cluster_command(
            &sa,
            &[
                me.as_os_str(),
                OsStr::new("--exact"),
                OsStr::new("in_cluster_child"),
                OsStr::new("--nocapture"),
                OsStr::new("--test-threads=1"),
            ],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "in-cluster child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = stdout
        .lines()
        .find_map(|l| l.split_once("IN-CLUSTER ").map(|(_, r)| r))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("the child printed no result:\n{stdout}"));
    assert_eq!(
        reply,
        json!({"namespace": "kube-system", "pods": ["plexus-abcde"]})
    );
    let log = api.request_log();
    assert!(
        log.iter()
            .any(|r| r["path"] == "/api/v1/namespaces/kube-system/pods"),
        "{log:?}"
    );
    // The mount was the child's alone.
    let host_token = std::fs::read_to_string(format!("{SERVICE_ACCOUNT_DIR}/token"));
    assert!(
        host_token.as_deref().ok() != Some(TOKEN),
        "the service-account mount leaked to the host"
    );
}

/// The pod side of the test above: run through `Fixture::in_cluster_command`, it builds its
/// client the way a pod does, from the environment and the service-account files. Run on its
/// own (outside a pod's environment), in-cluster config must be refused.
#[test]
fn in_cluster_child() {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        assert!(
            kube::Config::incluster().is_err(),
            "in-cluster config outside a pod"
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = rt.block_on(async {
        let config = kube::Config::incluster().unwrap();
        let namespace = config.default_namespace.clone();
        let pods: Api<Pod> = Api::default_namespaced(kube::Client::try_from(config).unwrap());
        let listed = pods.list(&ListParams::default()).await.unwrap();
        let names: Vec<String> = listed.items.iter().map(|p| p.name_any()).collect();
        json!({"namespace": namespace, "pods": names})
    });
    println!("IN-CLUSTER {reply}");
}

/// resource.k8s.io as DRA clients see it: discovery names the one version served; slices are
/// cluster-scoped and selectable by `spec.nodeName` and `spec.driver` (list and watch); a
/// claim's status subresource keeps its spec, honours resourceVersion preconditions, and
/// refuses a device status for a device the claim did not allocate; an API server serving a beta
/// version does not answer v1 paths.
#[test]
fn resource_k8s_io_claims_with_status_and_slices_by_field_selector() {
    use plexus_e2e::dra;
    let env = TestEnv::new("fx-dra");
    let api = Fixture::start(&env);
    let (code, group) = api.call("GET", "/apis/resource.k8s.io", None);
    assert_eq!(code, 200);
    assert_eq!(group["versions"][0]["version"], "v1");
    for (name, node, driver) in [
        ("s1", "node-1", "a.example.com"),
        ("s2", "node-1", "b.example.com"),
        ("s3", "node-2", "a.example.com"),
    ] {
        api.create_one(dra::slice(
            "v1",
            name,
            driver,
            node,
            &[("d0", Some(("example.com/r", "id0")))],
        ));
    }
    let names = |q: &str| -> Vec<String> {
        let (code, list) = api.call(
            "GET",
            &format!("/apis/resource.k8s.io/v1/resourceslices{q}"),
            None,
        );
        assert_eq!(code, 200, "{list}");
        assert_eq!(list["kind"], "ResourceSliceList");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(""), ["s1", "s2", "s3"]);
    assert_eq!(names("?fieldSelector=spec.nodeName%3Dnode-1"), ["s1", "s2"]);
    assert_eq!(
        names("?fieldSelector=spec.nodeName%3Dnode-1%2Cspec.driver%3Da.example.com"),
        ["s1"]
    );
    let (code, _) = api.call(
        "GET",
        "/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.pool.name%3Dx",
        None,
    );
    assert_eq!(
        code, 400,
        "an unsupported field is refused as the real API does"
    );
    let (code, s1) = api.call("GET", "/apis/resource.k8s.io/v1/resourceslices/s1", None);
    assert_eq!(code, 200);
    assert!(
        s1["metadata"].get("namespace").is_none(),
        "cluster-scoped: {s1}"
    );
    // A watch with a field selector sees only its node's slices.
    let text = plexus::unix_http::call(&api.socket, "GET", "/apis/resource.k8s.io/v1/resourceslices?watch=true&fieldSelector=spec.nodeName%3Dnode-2&timeoutSeconds=1", None, vec![], Duration::from_secs(5)).unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&text.body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0]["type"].as_str(),
            events[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("s3"))
    );

    api.create_one(dra::claim(
        "v1",
        "default",
        "c",
        &[("p", "u1")],
        &[("vf", "a.example.com", "node-1", "d0")],
    ));
    let claim = api.claim("default", "c", "v1");
    let put = |body: &Value| {
        api.call(
            "PUT",
            "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/c/status",
            Some(body),
        )
    };
    let mut next = claim.clone();
    next["spec"] = json!({"changed": true});
    next["status"]["devices"] = json!([{"driver": "a.example.com", "pool": "node-1", "device": "d0", "networkData": {"interfaceName": "net1", "ips": ["10.0.0.1/24"]}}]);
    let (code, v) = put(&next);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["spec"], claim["spec"],
        "the status subresource leaves spec alone"
    );
    assert_eq!(
        v["status"]["devices"][0]["networkData"]["interfaceName"],
        "net1"
    );
    let (code, v) = put(&next);
    assert_eq!(
        (code, v["reason"].as_str()),
        (409, Some("Conflict")),
        "stale resourceVersion"
    );
    let mut bad = api.claim("default", "c", "v1");
    bad["status"]["devices"] =
        json!([{"driver": "a.example.com", "pool": "node-1", "device": "d9"}]);
    let (code, v) = put(&bad);
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("not allocated"),
        "{v}"
    );
    let (code, _) = api.call(
        "GET",
        "/apis/resource.k8s.io/v1beta1/namespaces/default/resourceclaims/c",
        None,
    );
    assert_eq!(code, 404, "one version is served");
    drop(api);

    let beta = Fixture::start_with(
        &env,
        &FixtureOptions {
            resource_version: Some("v1beta2".into()),
            ..Default::default()
        },
    );
    let (_, group) = beta.call("GET", "/apis/resource.k8s.io", None);
    assert_eq!(
        group["versions"],
        json!([{"groupVersion": "resource.k8s.io/v1beta2", "version": "v1beta2"}])
    );
    let (code, _) = beta.call("GET", "/apis/resource.k8s.io/v1/resourceslices", None);
    assert_eq!(code, 404);
    drop(beta);
    let none = Fixture::start_with(
        &env,
        &FixtureOptions {
            resource_version: Some("none".into()),
            ..Default::default()
        },
    );
    let (code, _) = none.call("GET", "/apis/resource.k8s.io", None);
    assert_eq!(code, 404, "an API server without DRA");
}
