//! Logging in one place: stderr and/or a file, never stdout (stdout is the CNI channel).
//!
//! Levels take Multus's names (`debug`, `verbose`, `error`, `panic`) and the usual ones
//! (`trace`, `info`, `warn`). Unset: `warn`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use tracing::Level;

#[derive(Clone)]
struct Sink {
    file: Option<Arc<Mutex<File>>>,
    stderr: bool,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stderr {
            let _ = std::io::stderr().write_all(buf);
        }
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(buf);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn parse_level(level: Option<&str>) -> Level {
    match level.map(str::to_ascii_lowercase).as_deref() {
        Some("trace") => Level::TRACE,
        Some("debug") => Level::DEBUG,
        Some("verbose" | "info") => Level::INFO,
        Some("error" | "panic") => Level::ERROR,
        _ => Level::WARN,
    }
}

static INIT: Once = Once::new();

/// Install the subscriber once per process; later calls are ignored.
pub fn init(level: Option<&str>, file: Option<&Path>, to_stderr: bool) {
    INIT.call_once(|| {
        let file = file.and_then(
            |p| match OpenOptions::new().create(true).append(true).open(p) {
                Ok(f) => Some(Arc::new(Mutex::new(f))),
                Err(e) => {
                    eprintln!("plexus: cannot open log file {}: {e}", p.display());
                    None
                }
            },
        );
        let sink = Sink {
            stderr: to_stderr || file.is_none(),
            file,
        };
        let _ = tracing_subscriber::fmt()
            .with_max_level(parse_level(level))
            .with_ansi(false)
            .with_target(false)
            .with_writer(move || sink.clone())
            .try_init();
    });
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
}
