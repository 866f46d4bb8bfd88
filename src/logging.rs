//! Logging in one place: stderr and/or a file, never stdout (stdout is the CNI channel).
//!
//! Levels take Multus's names (`debug`, `verbose`, `error`, `panic`) and the usual ones
//! (`trace`, `info`, `warn`). Unset: `warn`. The front door sets it up once per process: the
//! plugin from the call's config, the daemon from its own.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tracing::Level;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

pub fn parse_level(level: Option<&str>) -> Level {
    match level.map(str::to_ascii_lowercase).as_deref() {
        Some("trace") => Level::TRACE,
        Some("debug") => Level::DEBUG,
        Some("verbose" | "info") => Level::INFO,
        Some("error" | "panic") => Level::ERROR,
        _ => Level::WARN,
    }
}

/// Open (or create, mode 0600) the log file for appending. The last component is never a
/// symlink, and only a regular file is written to (a FIFO or device there would block or leak).
pub fn open_log_file(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Install the subscriber for this process. Only the first call takes effect (a process logs
/// one way); the front door calls it once it knows its settings.
pub fn init(level: Option<&str>, file: Option<&Path>, to_stderr: bool) {
    let file = file.and_then(|p| match open_log_file(p) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("plexus: cannot open log file {}: {e}", p.display());
            None
        }
    });
    let writer = match file.map(std::sync::Arc::new) {
        Some(f) if to_stderr => BoxMakeWriter::new(std::io::stderr.and(f)),
        Some(f) => BoxMakeWriter::new(f),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(parse_level(level))
        .with_ansi(false)
        .with_target(false)
        .with_writer(writer)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multus_level_names() {
        assert_eq!(parse_level(Some("DEBUG")), Level::DEBUG);
        assert_eq!(parse_level(Some("verbose")), Level::INFO);
        assert_eq!(parse_level(Some("panic")), Level::ERROR);
        assert_eq!(parse_level(Some("bogus")), Level::WARN);
        assert_eq!(parse_level(None), Level::WARN);
    }

    #[test]
    fn log_files_are_private_and_never_followed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plexus.log");
        open_log_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let target = d.path().join("shadow");
        std::fs::write(&target, "x").unwrap();
        let link = d.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            open_log_file(&link).is_err(),
            "a planted symlink is refused"
        );
        nix::unistd::mkfifo(&d.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(
            open_log_file(&d.path().join("fifo")).is_err(),
            "a FIFO is refused"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x");
    }
}
