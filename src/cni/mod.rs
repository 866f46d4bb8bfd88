//! The CNI protocol: errors, versions, results, the runtime's request, delegate execution.

pub mod error;
pub mod exec;
pub mod request;
pub mod result;
pub mod version;

pub use error::{CniError, Code};
pub use request::{Command, Request};
pub use result::CniResult;
pub use version::Version;
