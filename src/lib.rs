//! plexus: a multi-network CNI meta-plugin.
//!
//! The flow is request → config → plan → chain, run by one engine (`engine`) that both front doors
//! — the exec'd plugin (`plugin`) and the node daemon — call; see docs/architecture.md. Each module
//! owns one step.

pub mod cache;
pub mod cancel;
pub mod chain;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod inspect;
pub mod install;
pub mod k8s;
pub mod logging;
pub mod netns;
pub mod plan;
pub mod plugin;
pub mod shim;
#[cfg(test)]
mod testutil;
pub mod unix_http;
pub mod validate;
