//! The `plexus` binary as the node daemon's shim: a config with `daemonSocketDir` (Multus's key)
//! sends ADD, CHECK and STATUS to the daemon over its socket, in Multus's wire format, and prints
//! the answer in the runtime's `cniVersion`. DEL and GC never need the daemon: they run here,
//! from the on-disk cache the daemon shares (under the same locks). When the daemon cannot be
//! reached, ADD runs here too if the config lets it (it names a `kubeconfig`), else fails at once
//! with "try again later" (11) naming the socket.

use crate::cni::error::{CniError, Code};
use crate::cni::{CniResult, Request, Version};
use crate::daemon::server::WireRequest;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The variables of the CNI spec (and libcni's override flag) the shim forwards.
const CNI_VARS: [&str; 7] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "CNI_NETNS_OVERRIDE",
];

/// The daemon's socket directory, when the config names one (`daemonSocketDir`).
pub fn socket_dir(stdin: &[u8]) -> Option<PathBuf> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("daemonSocketDir")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// Why the daemon gave no answer of its own.
#[derive(Debug)]
pub enum Forward {
    /// It answered: a result (ADD), nothing (others), or its CNI error.
    Answer(Result<Option<CniResult>, CniError>),
    /// It could not be reached, or did not speak the protocol; `sent`: after it had the request
    /// (it may have acted on it, e.g. started delegates, and been killed mid-way).
    Unreachable { why: String, sent: bool },
}

/// Send one call to the daemon at `<dir>/multus.sock` and wait for its answer (at most
/// `timeout`: the daemon's own limits end a call well before).
pub fn forward(
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    timeout: Duration,
) -> Forward {
    let socket = dir.join("multus.sock");
    let mut vars: HashMap<String, String> = CNI_VARS
        .iter()
        .filter_map(|k| env(k).map(|v| (k.to_string(), v)))
        .collect();
    // Multus's daemon requires CNI_ARGS to be there, empty or not.
    vars.entry("CNI_ARGS".into()).or_default();
    let wire = WireRequest {
        env: vars,
        config: stdin.to_vec(),
        interface_attributes: None,
    };
    let body = serde_json::to_vec(&wire).expect("serializes");
    let reply = match crate::unix_http::call(
        &socket,
        "POST",
        "/cni",
        Some("application/json"),
        body,
        timeout,
    ) {
        Ok(r) => r,
        Err(e) => {
            return Forward::Unreachable {
                why: format!("{}: {e}", socket.display()),
                sent: crate::unix_http::after_send(&e),
            }
        }
    };
    match reply.status {
        200 if reply.body.iter().all(u8::is_ascii_whitespace) => Forward::Answer(Ok(None)),
        200 => {
            let Ok(answer) = serde_json::from_slice::<Value>(&reply.body) else {
                return Forward::Answer(Err(CniError::new(
                    Code::IO,
                    format!(
                        "plexus daemon at {} answered 200 with a body that is not JSON: {}",
                        socket.display(),
                        String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]).trim()
                    ),
                )));
            };
            match answer.get("Result").cloned() {
                Some(Value::Null) | None => Forward::Answer(Ok(None)),
                Some(r) => Forward::Answer(
                    CniResult::from_value(r, Version::V1_0_0)
                        .map(|(r, _)| Some(r))
                        .map_err(|e| {
                            e.context(format!("the daemon's result ({})", socket.display()))
                        }),
                ),
            }
        }
        _ => match CniError::from_delegate_output(&reply.body) {
            Some(e) => Forward::Answer(Err(e)),
            None => Forward::Answer(Err(CniError::new(
                Code::IO,
                format!(
                    "plexus daemon at {} answered {}: {}",
                    socket.display(),
                    reply.status,
                    String::from_utf8_lossy(&reply.body).trim()
                ),
            ))),
        },
    }
}

/// The error for an ADD that cannot run anywhere. Whether anything was attached depends on
/// whether the daemon ever had the request (`sent`).
pub fn unreachable_error(req: &Request, why: &str, sent: bool) -> CniError {
    let what = if sent {
        format!("the plexus daemon went away during the call ({why}), and the config names no kubeconfig to run it here; anything the daemon attached is in the cache, and the runtime's DEL removes it")
    } else {
        format!("the plexus daemon is not reachable ({why}), and the config names no kubeconfig to run without it; nothing was attached")
    };
    CniError::new(
        Code::TRY_AGAIN_LATER,
        format!("{} for {}: {what}", req.command(), req.who()),
    )
}

/// The daemon as the reporter of a DEL the shim runs itself: it takes plexus's network data out of
/// DRA claims with the daemon's credentials (`POST /plexus/v1/claims/withdraw`). It reads and
/// writes nothing else.
pub struct DaemonClaims {
    pub dir: PathBuf,
    pub timeout: Duration,
}

impl crate::k8s::ClusterView for DaemonClaims {
    fn pod(
        &self,
        namespace: &str,
        name: &str,
        _uid: Option<&str>,
    ) -> Result<Option<k8s_openapi::api::core::v1::Pod>, CniError> {
        Err(CniError::new(
            Code::IO,
            format!("pod {namespace}/{name}: not read through the daemon's claims client"),
        ))
    }
    fn nad(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<crate::k8s::NetworkAttachmentDefinition>, CniError> {
        Err(CniError::new(
            Code::IO,
            format!("NAD {namespace}/{name}: not read through the daemon's claims client"),
        ))
    }
}

impl crate::k8s::Reporter for DaemonClaims {
    fn set_network_status(
        &self,
        _pod: &k8s_openapi::api::core::v1::Pod,
        _value: &str,
    ) -> Result<(), CniError> {
        Err(CniError::new(
            Code::IO,
            "network-status is not written through the daemon's claims client",
        ))
    }

    fn event(&self, _pod: &k8s_openapi::api::core::v1::Pod, _w: bool, _r: &str, _m: &str) {}

    fn withdraw_claim_device(&self, dev: &crate::k8s::dra::ClaimDevice) -> Result<(), CniError> {
        let socket = self.dir.join("multus.sock");
        let body = serde_json::to_vec(dev).expect("serializes");
        let what = format!("{dev}: asking the daemon at {}", socket.display());
        let reply = crate::unix_http::call(
            &socket,
            "POST",
            "/plexus/v1/claims/withdraw",
            Some("application/json"),
            body,
            self.timeout,
        )
        .map_err(|e| CniError::new(Code::TRY_AGAIN_LATER, format!("{what}: {e}")))?;
        match reply.status {
            200 => Ok(()),
            code => Err(CniError::new(
                Code::TRY_AGAIN_LATER,
                format!(
                    "{what}: answered {code}: {}",
                    String::from_utf8_lossy(&reply.body).trim()
                ),
            )),
        }
    }
}
