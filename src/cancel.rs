//! Cancellation of one CNI call: set when the caller went away (the daemon's shim was killed by the
//! runtime's timeout) or a deadline passed. Everything that waits in the core — a delegate's pipes,
//! the readiness file, a retry's back-off, a lock — waits on this too, so a cancelled call stops
//! at once, rolls back, and makes no further API calls.
//!
//! The signal is a pipe that becomes readable on cancel (never read, so it stays readable for
//! every waiter), which lets `poll(2)` wait for a child's output and for cancellation together.

use nix::fcntl::OFlag;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Cancel(Option<Arc<Inner>>);

#[derive(Debug)]
struct Inner {
    flag: AtomicBool,
    read: OwnedFd,
    write: OwnedFd,
}

impl Cancel {
    /// A token that can be cancelled (the daemon: one per request).
    pub fn new() -> std::io::Result<Cancel> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Cancel(Some(Arc::new(Inner {
            flag: AtomicBool::new(false),
            read,
            write,
        }))))
    }

    /// A token that is never cancelled (the exec'd plugin: the runtime kills the process).
    pub fn never() -> Cancel {
        Cancel(None)
    }

    pub fn cancel(&self) {
        if let Some(i) = &self.0 {
            if !i.flag.swap(true, Ordering::SeqCst) {
                let _ = nix::unistd::write(&i.write, b"x");
            }
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|i| i.flag.load(Ordering::SeqCst))
    }

    /// The descriptor that turns readable on cancel, for `poll(2)`.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.0.as_ref().map(|i| i.read.as_fd())
    }

    /// Sleep for `d` or until cancelled, whichever is first. True if cancelled.
    pub fn sleep(&self, d: Duration) -> bool {
        let Some(fd) = self.fd() else {
            std::thread::sleep(d);
            return false;
        };
        let until = Instant::now() + d;
        loop {
            if self.is_cancelled() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_wakes_a_sleeper_at_once() {
        let c = Cancel::new().unwrap();
        let c2 = c.clone();
        let t = Instant::now();
        let h = std::thread::spawn(move || c2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        c.cancel();
        assert!(h.join().unwrap(), "reported as cancelled");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(c.is_cancelled());
        // A cancelled token stays cancelled for every later waiter.
        assert!(c.sleep(Duration::from_secs(30)));
        assert!(!Cancel::never().sleep(Duration::from_millis(1)));
        assert!(!Cancel::never().is_cancelled());
    }
}
