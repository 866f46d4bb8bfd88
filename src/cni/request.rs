//! The runtime's request: `CNI_*` environment plus the stdin config, validated once, up front.

use super::error::{CniError, Code};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl FromStr for Command {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    Code::INVALID_ENV,
                    format!("unknown CNI_COMMAND \"{other}\""),
                ))
            }
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        })
    }
}

/// One CNI invocation. Fields the verb does not need may be absent.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub command: Option<Command>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    /// `CNI_NETNS_OVERRIDE` (libcni/skel): a flag, "true" or "1", that lets `CNI_NETNS` be the
    /// plugin's own namespace. Without it, ADD and CHECK in plexus's own netns are refused.
    pub netns_override: bool,
    pub ifname: Option<String>,
    /// `CNI_ARGS` as given, in order (`K=V;K2=V2`).
    pub args: Vec<(String, String)>,
    pub args_raw: String,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
}

/// Largest stdin config plexus reads; a bigger one is refused, not buffered.
pub const MAX_STDIN: usize = 4 << 20;

impl Request {
    /// Read the request from an environment lookup. Missing variables are reported together
    /// by [`Request::require`], so the runtime sees every missing name at once.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        stdin: Vec<u8>,
    ) -> Result<Self, CniError> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = match nonempty("CNI_COMMAND") {
            Some(c) => Some(c.parse()?),
            None => None,
        };
        let args_raw = get("CNI_ARGS").unwrap_or_default();
        let args = parse_cni_args(&args_raw)?;
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Request {
            command,
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS"),
            netns_override: nonempty("CNI_NETNS_OVERRIDE")
                .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
            ifname: nonempty("CNI_IFNAME"),
            args,
            args_raw,
            path,
            stdin,
        })
    }

    pub fn command(&self) -> Command {
        self.command.unwrap_or(Command::Version)
    }

    /// Check the variables this verb needs are present (SPEC §2), and that every value that may
    /// become part of a path or an argument is well-formed. Code 4 names every missing variable.
    pub fn require(&self) -> Result<(), CniError> {
        let Some(cmd) = self.command else {
            return Err(CniError::new(
                Code::INVALID_ENV,
                "required env variables [CNI_COMMAND] missing",
            ));
        };
        let need: &[(&str, bool)] = match cmd {
            Command::Add | Command::Check => &[
                ("CNI_CONTAINERID", self.container_id.is_some()),
                ("CNI_NETNS", self.netns.is_some()),
                ("CNI_IFNAME", self.ifname.is_some()),
            ],
            Command::Del => &[
                ("CNI_CONTAINERID", self.container_id.is_some()),
                ("CNI_IFNAME", self.ifname.is_some()),
            ],
            Command::Status | Command::Gc | Command::Version => &[],
        };
        let missing: Vec<&str> = need.iter().filter(|(_, ok)| !ok).map(|(k, _)| *k).collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                Code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        if let Some(id) = &self.container_id {
            validate_container_id(id)?;
        }
        if let Some(ifname) = &self.ifname {
            validate_ifname(ifname).map_err(|e| e.context("CNI_IFNAME"))?;
        }
        Ok(())
    }

    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or("")
    }

    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or("")
    }

    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// "container X" plus the pod, when the runtime told us which pod this is.
    pub fn who(&self) -> String {
        let mut s = format!("container {}", self.container_id());
        if let (Some(ns), Some(name)) = (self.arg("K8S_POD_NAMESPACE"), self.arg("K8S_POD_NAME")) {
            s.push_str(&format!(" (pod {ns}/{name})"));
        }
        s
    }
}

/// The `CNI_ARGS` delegates get: the runtime's, with `IgnoreUnknown=1` in front when it is missing.
/// The reference plugins refuse keys they do not know (K8S_POD_NAME and friends) unless told to
/// ignore them; the runtime wrote those keys for plexus, so a delegate must not fail on them.
pub fn delegate_args(raw: &str) -> String {
    if raw.is_empty()
        || raw
            .split(';')
            .any(|kv| kv.split('=').next() == Some("IgnoreUnknown"))
    {
        raw.to_string()
    } else {
        format!("IgnoreUnknown=1;{raw}")
    }
}

/// `K=V;K2=V2`. An element without `=` is invalid (code 4), as libcni's `LoadArgs` treats it.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                Code::INVALID_ENV,
                format!("invalid CNI_ARGS pair \"{pair}\": expected KEY=VALUE"),
            ));
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// True if `s` matches `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (container IDs and network names).
fn is_cni_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            Code::UNKNOWN_CONTAINER,
            "empty CNI_CONTAINERID",
        ));
    }
    if id.len() > 1024 || !is_cni_name(id) {
        return Err(CniError::new(
            Code::INVALID_ENV,
            format!(
                "invalid characters in CNI_CONTAINERID \"{}\"",
                id.escape_debug()
            ),
        ));
    }
    Ok(())
}

pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.len() > 253 || !is_cni_name(name) {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            format!(
                "invalid characters in network name \"{}\"",
                name.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Interface names as the kernel and the spec allow them: 1–15 bytes, not `.`/`..`, no `/`,
/// `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is a relative path")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':', whitespace or a control character")
    } else {
        None
    };
    match why {
        Some(why) => Err(CniError::new(
            Code::INVALID_ENV,
            format!("interface name \"{}\" {why}", name.escape_debug()),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn req(vars: &[(&str, &str)]) -> Result<Request, CniError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Request::from_env(|k| m.get(k).cloned(), vec![])
    }

    #[test]
    fn missing_vars_are_all_named() {
        let e = req(&[("CNI_COMMAND", "ADD")])
            .unwrap()
            .require()
            .unwrap_err();
        assert_eq!(e.code, Code::INVALID_ENV);
        assert!(
            e.msg.contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME"),
            "{}",
            e.msg
        );
        let e = req(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "a")])
            .unwrap()
            .require()
            .unwrap_err();
        assert!(e.msg.contains("[CNI_IFNAME]"), "{}", e.msg);
        req(&[("CNI_COMMAND", "STATUS")])
            .unwrap()
            .require()
            .unwrap();
        let e = req(&[]).unwrap().require().unwrap_err();
        assert!(e.msg.contains("CNI_COMMAND"));
        assert!(req(&[("CNI_COMMAND", "FROB")]).is_err());
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "abc-123_x.y", "0"] {
            validate_container_id(ok).unwrap();
        }
        assert_eq!(
            validate_container_id("").unwrap_err().code,
            Code::UNKNOWN_CONTAINER
        );
        for bad in ["../x", "-a", ".a", "a/b", "a b", "a;b", "\u{0}"] {
            assert_eq!(
                validate_container_id(bad).unwrap_err().code,
                Code::INVALID_ENV,
                "{bad}"
            );
        }
    }

    #[test]
    fn ifnames() {
        for ok in ["eth0", "net1", "a", "123456789012345", "é"] {
            validate_ifname(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "1234567890123456",
            "ééééééééé",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn network_names() {
        validate_network_name("my-net.v1_x").unwrap();
        for bad in ["", "-x", "a/b", "../x", "a b"] {
            assert_eq!(
                validate_network_name(bad).unwrap_err().code,
                Code::INVALID_CONFIG
            );
        }
    }

    #[test]
    fn cni_args() {
        let r = req(&[("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p;X=a=b")]).unwrap();
        assert_eq!(r.arg("K8S_POD_NAME"), Some("p"));
        assert_eq!(r.arg("X"), Some("a=b"));
        assert!(req(&[("CNI_ARGS", "novalue")]).is_err());
        let r = req(&[("CNI_PATH", "/a::/b")]).unwrap();
        assert_eq!(r.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn delegates_are_told_to_ignore_unknown_args() {
        assert_eq!(delegate_args(""), "");
        assert_eq!(
            delegate_args("K8S_POD_NAME=p"),
            "IgnoreUnknown=1;K8S_POD_NAME=p"
        );
        assert_eq!(delegate_args("IgnoreUnknown=0;A=b"), "IgnoreUnknown=0;A=b");
    }

    #[test]
    fn netns_override_is_a_flag_not_a_path() {
        let r = req(&[("CNI_NETNS", "/a"), ("CNI_NETNS_OVERRIDE", "/b")]).unwrap();
        assert_eq!(r.netns.as_deref(), Some("/a"), "CNI_NETNS is the netns");
        assert!(!r.netns_override, "a path is not \"true\" or \"1\"");
        for on in ["1", "true", "TRUE", "True"] {
            assert!(
                req(&[("CNI_NETNS_OVERRIDE", on)]).unwrap().netns_override,
                "{on}"
            );
        }
        for off in ["", "0", "false", "yes"] {
            assert!(
                !req(&[("CNI_NETNS_OVERRIDE", off)]).unwrap().netns_override,
                "{off}"
            );
        }
    }
}
