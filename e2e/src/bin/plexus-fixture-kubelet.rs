//! A fixture for the kubelet's PodResources v1 gRPC API (NOT a kubelet): serves `List` and `Get`
//! on a unix socket from a JSON file of pods and their devices, for the e2e suite.
//!
//! Usage: `plexus-fixture-kubelet --socket PATH --pods FILE [--no-get]`, where FILE is
//! `[{"name","namespace","containers":[{"name","devices":[{"resourceName","deviceIds":[…]}]}]}]`.
//! `--no-get` answers `Get` with Unimplemented, as kubelets without the feature gate do.

use plexus::k8s::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use plexus::k8s::podresources::*;
use serde_json::Value;
use tonic::{Request, Response, Status};

struct Kubelet {
    pods: Vec<PodResources>,
    get: bool,
}

#[tonic::async_trait]
impl PodResourcesLister for Kubelet {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: self.pods.clone(),
        }))
    }

    async fn get(
        &self,
        r: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        if !self.get {
            return Err(Status::unimplemented(
                "Get is behind the KubeletPodResourcesGet feature gate",
            ));
        }
        let r = r.into_inner();
        match self
            .pods
            .iter()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
        {
            Some(p) => Ok(Response::new(GetPodResourcesResponse {
                pod_resources: Some(p.clone()),
            })),
            None => Err(Status::not_found(format!(
                "pod {}/{} not found",
                r.pod_namespace, r.pod_name
            ))),
        }
    }
}

fn pods(v: &Value) -> Vec<PodResources> {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| PodResources {
            name: s(p, "name"),
            namespace: s(p, "namespace"),
            containers: p["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| ContainerResources {
                    name: s(c, "name"),
                    devices: c["devices"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|d| ContainerDevices {
                            resource_name: s(d, "resourceName"),
                            device_ids: d["deviceIds"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

/// A fixture kubelet PodResources API for the e2e suite.
#[derive(clap::Parser)]
struct Args {
    /// The unix socket to serve on.
    #[arg(long)]
    socket: String,
    /// A JSON file of pods and their devices.
    #[arg(long)]
    pods: String,
    /// Answer Get with Unimplemented (an older kubelet).
    #[arg(long)]
    no_get: bool,
}

fn main() {
    let args: Args = clap::Parser::parse();
    let socket = args.socket;
    let data: Value = serde_json::from_str(&std::fs::read_to_string(&args.pods).unwrap()).unwrap();
    let kubelet = Kubelet {
        pods: pods(&data),
        get: !args.no_get,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        println!("listening on {socket}");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        tonic::transport::Server::builder()
            .add_service(PodResourcesListerServer::new(kubelet))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
}
