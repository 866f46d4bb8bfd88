//! Criterion micro-benchmarks of the pure hot parts: annotation parsing, result conversion,
//! planning. Run with `cargo bench -p plexus`.

use criterion::{criterion_group, criterion_main, Criterion};
use plexus::cni::{CniResult, Version};
use plexus::config::NetConf;
use plexus::k8s::annotations::parse_networks;
use plexus::k8s::{MemoryView, NETWORKS_ANNOTATION};
use plexus::plan::{plan, resolve};
use serde_json::{json, Map};
use std::hint::black_box;

fn annotations(c: &mut Criterion) {
    let comma = "net-a, other/net-b@data0, net-c, net-d@eth9";
    let json_form = json!([
        {"name": "net-a", "interface": "net1", "ips": ["10.1.0.5/24"], "mac": "02:00:00:00:00:01"},
        {"name": "net-b", "namespace": "other", "default-route": ["10.2.0.1"]},
        {"name": "net-c", "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        {"name": "net-d", "bandwidth": {"ingressRate": 1000, "egressRate": 1000}, "cni-args": {"k": "v"}}
    ])
    .to_string();
    c.bench_function("annotation/comma, 4 networks", |b| {
        b.iter(|| parse_networks(black_box(comma)).unwrap())
    });
    c.bench_function("annotation/json, 4 networks", |b| {
        b.iter(|| parse_networks(black_box(&json_form)).unwrap())
    });
}

fn results(c: &mut Criterion) {
    let text = json!({"cniVersion": "1.1.0",
        "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"}, {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                       {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "mtu": 1450, "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2}, {"address": "fd00::7/64", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}})
    .to_string();
    let (r, _) = CniResult::parse(text.as_bytes(), Version::V1_1_0).unwrap();
    c.bench_function("result/parse 1.1.0", |b| {
        b.iter(|| CniResult::parse(black_box(text.as_bytes()), Version::V1_1_0).unwrap())
    });
    c.bench_function("result/1.1.0 -> 0.4.0", |b| {
        b.iter(|| black_box(&r).to_json(Version::V0_4_0).unwrap())
    });
    c.bench_function("result/1.1.0 -> 0.2.0", |b| {
        b.iter(|| black_box(&r).to_json(Version::V0_2_0).unwrap())
    });
}

fn planning(c: &mut Criterion) {
    let conf = NetConf::parse(
        json!({"cniVersion": "1.1.0", "name": "plexus", "kubeconfig": "/dev/null",
               "delegates": [{"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}]}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let mut view = MemoryView::default();
    for i in 0..4 {
        let cfg = json!({"cniVersion": "1.0.0", "name": format!("net-{i}"), "type": "macvlan", "master": "eth1",
                         "capabilities": {"ips": true}, "ipam": {"type": "host-local", "subnet": format!("10.{i}.0.0/16")}});
        view = view.with_nad("default", &format!("net-{i}"), &cfg.to_string());
    }
    let view = view.with_pod(
        "default",
        "p",
        &[(NETWORKS_ANNOTATION, "net-0,net-1@data1,net-2,net-3")],
    );
    let pod = view.pods[&("default".to_string(), "p".to_string())].clone();
    let files = plexus::config::ConfDir(conf.conf_dir.clone());
    c.bench_function("plan/resolve+plan, 4 NADs", |b| {
        b.iter(|| {
            let sources = plexus::plan::Sources {
                files: &files,
                cluster: Some(&view),
                pod: Some(&pod),
            };
            let r = resolve(black_box(&conf), sources).unwrap();
            plan("eth0", &Map::new(), r).unwrap()
        })
    });
}

criterion_group!(benches, annotations, results, planning);
criterion_main!(benches);
