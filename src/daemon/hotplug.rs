//! Hot-plug: attaching and detaching networks on running pods.

use super::server::{Daemon, InterfaceAttributes};
use crate::cancel::Cancel;
use crate::cni::error::{CniError, Code};
use crate::cni::{CniResult, Request};

/// Multus's `/delegate` API (multus-dynamic-networks-controller).
pub fn delegate(
    _daemon: &Daemon,
    req: &Request,
    _attributes: Option<&InterfaceAttributes>,
    _cancel: &Cancel,
) -> Result<Option<CniResult>, CniError> {
    Err(CniError::new(
        Code::UNSUPPORTED_FIELD,
        format!(
            "{} for {}: the /delegate API is not served by this plexus daemon",
            req.command(),
            req.who()
        ),
    ))
}
