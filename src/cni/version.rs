//! CNI spec versions: parsing, ordering, what plexus supports.

use super::error::{CniError, Code};
use std::fmt;
use std::str::FromStr;

/// A released CNI spec version. Ordering follows semver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u16, pub u16, pub u16);

/// Every released spec version plexus reads and writes, oldest first.
pub const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

impl Version {
    pub const V0_1_0: Version = Version(0, 1, 0);
    pub const V0_2_0: Version = Version(0, 2, 0);
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);
    pub const LATEST: Version = Version::V1_1_0;

    /// A config without `cniVersion` is read as 0.1.0, as libcni does.
    pub fn of_config(v: Option<&str>) -> Result<Version, CniError> {
        match v {
            None | Some("") => Ok(Version::V0_1_0),
            Some(s) => s.parse(),
        }
    }

    pub fn is_supported(self) -> bool {
        SUPPORTED
            .iter()
            .any(|s| s.parse::<Version>().ok() == Some(self))
    }

    /// Fail with code 1 unless this version is one plexus speaks.
    pub fn require_supported(self) -> Result<Version, CniError> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(
                CniError::new(Code::INCOMPATIBLE_VERSION, "incompatible CNI versions")
                    .with_details(format!(
                        "config is \"{self}\", plugin supports {SUPPORTED:?}"
                    )),
            )
        }
    }
}

impl FromStr for Version {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            CniError::new(
                Code::INCOMPATIBLE_VERSION,
                format!("invalid cniVersion \"{s}\""),
            )
            .with_details(format!("plugin supports {SUPPORTED:?}"))
        };
        let mut parts = s.split('.');
        let mut next = || -> Result<u16, CniError> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let v = Version(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let all: Vec<Version> = SUPPORTED.iter().map(|s| s.parse().unwrap()).collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(all[6].to_string(), "1.1.0");
        assert!(all.iter().all(|v| v.is_supported()));
    }

    #[test]
    fn rejects_garbage_with_code_1() {
        for bad in ["", "1", "1.0", "1.0.0.0", "a.b.c", "1.-1.0", "99999.0.0"] {
            let e = bad.parse::<Version>().unwrap_err();
            assert_eq!(e.code, Code::INCOMPATIBLE_VERSION, "{bad}");
        }
        let e = Version(0, 5, 0).require_supported().unwrap_err();
        assert_eq!(e.code, Code::INCOMPATIBLE_VERSION);
        assert!(e.details.contains("0.5.0"));
    }

    #[test]
    fn absent_version_is_legacy() {
        assert_eq!(Version::of_config(None).unwrap(), Version::V0_1_0);
    }
}
