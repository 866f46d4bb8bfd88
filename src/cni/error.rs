//! CNI error objects (SPEC §5 "Error") and the codes plexus uses.

use serde::Serialize;
use std::fmt;

/// Well-known CNI error codes (0–99 are reserved by the spec) and plexus's own (≥ 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u32);

impl Code {
    pub const INCOMPATIBLE_VERSION: Code = Code(1);
    pub const UNSUPPORTED_FIELD: Code = Code(2);
    pub const UNKNOWN_CONTAINER: Code = Code(3);
    pub const INVALID_ENV: Code = Code(4);
    pub const IO: Code = Code(5);
    pub const DECODE: Code = Code(6);
    pub const INVALID_CONFIG: Code = Code(7);
    /// libcni's ErrInvalidNetNS: `CNI_NETNS` is not a usable namespace (e.g. the plugin's own).
    pub const INVALID_NETNS: Code = Code(8);
    pub const TRY_AGAIN_LATER: Code = Code(11);
    pub const NOT_AVAILABLE: Code = Code(50);
    pub const LIMITED_CONNECTIVITY: Code = Code(51);
    /// A delegate failed without printing a CNI error (crash, signal, garbage on stdout).
    pub const DELEGATE_FAILED: Code = Code(100);
    /// A delegate ran past its deadline and was killed with its process group.
    pub const DELEGATE_TIMEOUT: Code = Code(101);
    /// A delegate's `type` names no executable in binDir or CNI_PATH.
    pub const DELEGATE_NOT_FOUND: Code = Code(102);
    /// A delegate printed a result plexus cannot use (too large, not JSON, wrong shape).
    pub const DELEGATE_BAD_OUTPUT: Code = Code(103);
    /// The Kubernetes API refused a request (401, 403, bad request) or answered nonsense.
    pub const KUBE_API: Code = Code(110);
    /// The pod named in CNI_ARGS does not exist (after a short retry).
    pub const POD_NOT_FOUND: Code = Code(111);
    /// K8S_POD_UID is not the UID of the pod the API has under that name.
    pub const POD_UID_MISMATCH: Code = Code(112);
    /// A pod referred to a network in a namespace namespaceIsolation does not allow.
    pub const NAMESPACE_ISOLATION: Code = Code(113);
    /// A NetworkAttachmentDefinition the pod asked for does not exist.
    pub const NAD_NOT_FOUND: Code = Code(114);
}

/// A CNI error as printed on stdout. `msg` names the container, network and delegate involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code.0)
        } else {
            write!(f, "{}: {} (code {})", self.msg, self.details, self.code.0)
        }
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Prefix the message with context ("ADD network \"x\" ...") keeping code and details.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    /// The JSON object printed on stdout, in the runtime's `cniVersion`.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code.0,
            msg: &self.msg,
            details: &self.details,
        })
        .expect("error object serializes")
    }

    /// Parse an error object a delegate printed. Returns `None` if the bytes are not one.
    pub fn from_delegate_output(out: &[u8]) -> Option<CniError> {
        let v: serde_json::Value = serde_json::from_slice(out).ok()?;
        let code = v.get("code")?.as_u64()?;
        let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or("");
        let details = v.get("details").and_then(|m| m.as_str()).unwrap_or("");
        Some(CniError {
            code: Code(u32::try_from(code).ok()?),
            msg: msg.to_string(),
            details: details.to_string(),
        })
    }
}

pub fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(Code::INVALID_CONFIG, msg)
}

pub fn io_error(what: impl fmt::Display, err: std::io::Error) -> CniError {
    CniError::new(Code::IO, format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::new(Code::INVALID_ENV, "missing CNI_IFNAME").with_details("set it");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "missing CNI_IFNAME");
        assert_eq!(v["details"], "set it");
    }

    #[test]
    fn parses_delegate_errors_and_rejects_non_errors() {
        let e =
            CniError::from_delegate_output(br#"{"code":11,"msg":"busy","details":"x"}"#).unwrap();
        assert_eq!(e.code, Code::TRY_AGAIN_LATER);
        assert!(CniError::from_delegate_output(b"not json").is_none());
        assert!(CniError::from_delegate_output(br#"{"cniVersion":"1.0.0"}"#).is_none());
        assert!(CniError::from_delegate_output(br#"{"code":-1,"msg":""}"#).is_none());
    }
}
