//! Running one delegate plugin: find the binary, exec it with the CNI environment and its config on
//! stdin, in its own process group, under a deadline, with stdout bounded; then read its result or
//! its CNI error.

use super::error::{CniError, Code};
use super::request::Command;
use crate::cancel::Cancel;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Cap on a delegate's stdout. A real result is a few KiB; anything past this is a bug.
pub const MAX_OUTPUT: usize = 1 << 20;

/// What a delegate is called with, besides its config.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    pub netns: &'a str,
    /// Passed on as `CNI_NETNS_OVERRIDE=1` when the runtime set it for plexus.
    pub netns_override: bool,
    pub ifname: &'a str,
    pub args: &'a str,
    /// Search path: binDir first, then the runtime's CNI_PATH. Also passed on as CNI_PATH.
    pub path: &'a [PathBuf],
    /// The environment the admin gives delegates besides the CNI variables (`delegateEnv`).
    pub env: &'a [(String, String)],
    /// The delegate's own limit (`delegateTimeoutSeconds`), for messages.
    pub timeout: Duration,
    /// When it is killed: the delegate's limit or the whole call's, whichever comes first.
    pub deadline: Instant,
    pub cancel: &'a Cancel,
    /// Run the delegate chrooted here (Multus's `chrootDir`: a daemon in a container running
    /// the host's plugins); `binary` is then a path inside it.
    pub chroot: Option<&'a Path>,
}

/// Check a plugin `type` is a bare file name: no path, no traversal, no option-looking name.
pub fn validate_plugin_type(t: &str) -> Result<(), CniError> {
    let ok = !t.is_empty()
        && t.len() <= 255
        && !t.starts_with('-')
        && !t.starts_with('.')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::INVALID_CONFIG,
            format!(
                "invalid plugin type \"{}\": must be a bare file name",
                t.escape_debug()
            ),
        ))
    }
}

/// Why a plugin binary must not be run as root: it is writable by every user, or sits in a
/// world-writable directory (where, sticky bit or not, another user's file could have been put
/// under the plugin's name). Ownership alone is not refused: installers leave plugins owned by
/// other users (kubespray's `kube`, the plugins tarball's build user), and refusing those would
/// fail every ADD and DEL on such a node.
fn unsafe_to_run(binary: &Path, meta: &std::fs::Metadata) -> Option<&'static str> {
    if meta.permissions().mode() & 0o002 != 0 {
        return Some("world-writable");
    }
    let dir = binary.parent()?;
    match std::fs::metadata(dir) {
        Ok(d) if d.permissions().mode() & 0o002 != 0 => Some("in a world-writable directory"),
        _ => None,
    }
}

/// Find `plugin` in the search path (a bare name only; see [`validate_plugin_type`]). Relative
/// entries are skipped, and so is a binary that is world-writable or in a world-writable
/// directory; the error names what was skipped and why.
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    find_plugin_in(plugin, path, None)
}

/// [`find_plugin`], the search path read inside `chroot` when there is one. The path returned
/// is the one the delegate is run with (inside the chroot).
pub fn find_plugin_in(
    plugin: &str,
    path: &[PathBuf],
    chroot: Option<&Path>,
) -> Result<PathBuf, CniError> {
    validate_plugin_type(plugin)?;
    let mut skipped = Vec::new();
    for dir in path {
        // A relative entry would resolve against whatever directory the runtime runs in.
        if dir.is_relative() {
            skipped.push(format!("{} (relative)", dir.display()));
            continue;
        }
        let candidate = dir.join(plugin);
        let seen = match chroot {
            Some(root) => root.join(candidate.strip_prefix("/").unwrap_or(&candidate)),
            None => candidate.clone(),
        };
        let Ok(meta) = std::fs::metadata(&seen) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        // Anyone may replace what a world-writable directory or file holds: never run it as root.
        if let Some(why) = unsafe_to_run(&seen, &meta) {
            skipped.push(format!("{} ({why})", seen.display()));
            continue;
        }
        return Ok(candidate);
    }
    let dirs: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped {}", skipped.join(", "))
    };
    Err(CniError::new(
        Code::DELEGATE_NOT_FOUND,
        format!(
            "failed to find plugin \"{plugin}\" in path [{}]{skipped}",
            dirs.join(":")
        ),
    ))
}

/// PATH for delegates when the admin does not set one: the reference plugins exec iptables, tc
/// and friends by name.
pub const DEFAULT_DELEGATE_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Most of a delegate's stderr kept for one log line; the rest of a longer line is dropped (the
/// pipe is still drained, so the delegate never blocks or dies of SIGPIPE).
const MAX_LOG_LINE: usize = 4 << 10;

/// Run a delegate. Ok(stdout) on exit 0; on failure the delegate's own CNI error when it printed
/// one, else one of plexus's (100–103).
///
/// One thread does it all with `poll(2)`: writing the config to stdin, reading stdout (bounded)
/// and stderr (drained to the log, whatever its size), and waiting for the exit through a pidfd,
/// all under one deadline and the call's cancellation. The delegate runs in its own process group
/// with the environment the spec defines (plus `PATH` and what the admin configured, nothing
/// inherited), and dies with plexus (`PR_SET_PDEATHSIG`).
pub fn run(binary: &Path, inv: &Invocation<'_>, config: &[u8]) -> Result<Vec<u8>, CniError> {
    let plugin = binary
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let search: Vec<String> = inv.path.iter().map(|p| p.display().to_string()).collect();
    let mut cmd = std::process::Command::new(binary);
    cmd.env_clear()
        .env("PATH", DEFAULT_DELEGATE_PATH)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .env("CNI_COMMAND", inv.command.to_string())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", search.join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if inv.netns_override {
        cmd.env("CNI_NETNS_OVERRIDE", "1");
    }
    let parent = nix::unistd::getpid();
    let chroot = match inv.chroot {
        Some(p) => Some(
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| {
                CniError::new(Code::INVALID_CONFIG, "chrootDir contains a NUL byte")
            })?,
        ),
        None => None,
    };
    // SAFETY: only async-signal-safe calls (prctl, getppid, kill, chroot, chdir) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(root) = &chroot {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // plexus may have died between fork and prctl: then nobody would kill us.
            if nix::unistd::getppid() != parent {
                let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGKILL);
            }
            Ok(())
        });
    }
    let started = Instant::now();
    if inv.cancel.is_cancelled() {
        return Err(cancelled(&plugin, inv));
    }
    let mut child = cmd.spawn().map_err(|e| {
        CniError::new(
            Code::DELEGATE_FAILED,
            format!("cannot execute plugin \"{}\": {e}", binary.display()),
        )
    })?;
    let pgid = Pid::from_raw(child.id() as i32);
    let kill = || {
        let _ = killpg(pgid, Signal::SIGKILL);
    };
    let pidfd = pidfd_open(child.id());
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|f| f.as_fd()),
        stdout.as_ref().map(|f| f.as_fd()),
        stderr.as_ref().map(|f| f.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    }
    let mut written = 0usize;
    if config.is_empty() {
        stdin = None;
    }
    let mut out: Vec<u8> = Vec::new();
    let mut log = StderrLog::new(&plugin);
    let mut status: Option<std::process::ExitStatus> = None;
    let mut buf = vec![0u8; 64 << 10];

    let outcome: Result<(), CniError> = loop {
        if status.is_some() {
            // It exited and its group is gone: what it wrote is in the pipes. Take what is there.
            read_some(&mut stdout, &mut out, &mut buf);
            let mut tmp = Vec::new();
            read_some(&mut stderr, &mut tmp, &mut buf);
            log.feed(&tmp);
            break Ok(());
        }
        if inv.cancel.is_cancelled() {
            kill();
            let _ = child.wait();
            break Err(cancelled(&plugin, inv));
        }
        let left = inv.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            kill();
            let _ = child.wait();
            break Err(CniError::new(
                Code::DELEGATE_TIMEOUT,
                format!(
                    "plugin \"{plugin}\" {} did not finish within {:?}; killed its process group",
                    inv.command,
                    inv.timeout
                        .min(inv.deadline.saturating_duration_since(started))
                ),
            ));
        }
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(5);
        let mut slots = [usize::MAX; 5];
        let watched = [
            (stdin.as_ref().map(|f| f.as_fd()), PollFlags::POLLOUT),
            (stdout.as_ref().map(|f| f.as_fd()), PollFlags::POLLIN),
            (stderr.as_ref().map(|f| f.as_fd()), PollFlags::POLLIN),
            (pidfd.as_ref().map(|f| f.as_fd()), PollFlags::POLLIN),
            (inv.cancel.fd(), PollFlags::POLLIN),
        ];
        for (slot, (fd, events)) in watched.into_iter().enumerate() {
            if let Some(fd) = fd {
                slots[slot] = fds.len();
                fds.push(PollFd::new(fd, events));
            }
        }
        // Without a pidfd (old kernels), look at the child every few milliseconds.
        let wait = if pidfd.is_some() {
            left
        } else {
            left.min(Duration::from_millis(5))
        };
        let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                kill();
                let _ = child.wait();
                break Err(CniError::new(
                    Code::DELEGATE_FAILED,
                    format!("waiting for plugin \"{plugin}\": {e}"),
                ));
            }
        }
        let ready = |slot: usize| {
            let i = slots[slot];
            i != usize::MAX && fds[i].revents().is_some_and(|r| !r.is_empty())
        };
        let (in_ready, out_ready, err_ready, exit_ready) = (ready(0), ready(1), ready(2), ready(3));
        drop(fds);
        if in_ready {
            if let Some(w) = stdin.as_mut() {
                match w.write(&config[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        if e.kind() != std::io::ErrorKind::BrokenPipe {
                            tracing::warn!(delegate = %plugin, "writing config to delegate: {e}");
                        }
                        written = config.len();
                    }
                }
                if written >= config.len() {
                    stdin = None; // close: the delegate reads to EOF
                }
            }
        }
        if out_ready {
            read_some(&mut stdout, &mut out, &mut buf);
        }
        if out.len() > MAX_OUTPUT {
            kill();
            let _ = child.wait();
            break Err(CniError::new(
                Code::DELEGATE_BAD_OUTPUT,
                format!(
                    "plugin \"{plugin}\" {} printed more than {MAX_OUTPUT} bytes",
                    inv.command
                ),
            ));
        }
        if err_ready {
            let mut tmp = Vec::new();
            read_some(&mut stderr, &mut tmp, &mut buf);
            log.feed(&tmp);
        }
        if (exit_ready || pidfd.is_none()) && exited(&child) {
            // Anything it left running in its group goes too; it had its chance. Killed while
            // the leader is still a zombie, so the group's ID cannot have been reused.
            kill();
            match child.wait() {
                Ok(st) => status = Some(st),
                Err(e) => {
                    break Err(CniError::new(
                        Code::DELEGATE_FAILED,
                        format!("waiting for plugin \"{plugin}\": {e}"),
                    ))
                }
            }
        }
    };
    log.finish();
    outcome?;
    let status = status.expect("loop ends with a status");
    tracing::debug!(delegate = %plugin, command = %inv.command, ifname = inv.ifname,
        elapsed_us = started.elapsed().as_micros() as u64, "delegate finished");
    if out.len() > MAX_OUTPUT {
        return Err(CniError::new(
            Code::DELEGATE_BAD_OUTPUT,
            format!(
                "plugin \"{plugin}\" {} printed more than {MAX_OUTPUT} bytes",
                inv.command
            ),
        ));
    }
    if status.success() {
        return Ok(out);
    }
    if let Some(err) = CniError::from_delegate_output(&out) {
        return Err(err);
    }
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".to_string(),
    };
    let mut msg = format!(
        "plugin \"{plugin}\" {} {how} without a CNI error",
        inv.command
    );
    if !log.last.is_empty() {
        msg.push_str(&format!("; last stderr line: {}", log.last));
    }
    Err(CniError::new(Code::DELEGATE_FAILED, msg))
}

fn cancelled(plugin: &str, inv: &Invocation<'_>) -> CniError {
    CniError::new(
        Code::TRY_AGAIN_LATER,
        format!(
            "plugin \"{plugin}\" {}: the call was cancelled (its caller went away or its deadline passed)",
            inv.command
        ),
    )
}

/// A pidfd for the child (Linux ≥ 5.3): readable once it has exited.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; the returned descriptor is owned by us alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this descriptor.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the child has exited, without reaping it.
fn exited(child: &std::process::Child) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    !matches!(
        waitid(Id::Pid(Pid::from_raw(child.id() as i32)), flags),
        Ok(WaitStatus::StillAlive)
    )
}

/// Read what is there now (the descriptor is nonblocking). At EOF, or on an error, the pipe is
/// done and dropped; false then.
fn read_some<R: Read>(r: &mut Option<R>, out: &mut Vec<u8>, buf: &mut [u8]) -> bool {
    let Some(src) = r.as_mut() else {
        return false;
    };
    loop {
        match src.read(buf) {
            Ok(0) => {
                *r = None;
                return false;
            }
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_OUTPUT {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                *r = None;
                return false;
            }
        }
    }
}

/// A delegate's stderr, logged line by line at info level with the delegate's name; only the
/// last line is kept (for the error message), and overlong lines are cut.
struct StderrLog<'a> {
    plugin: &'a str,
    partial: Vec<u8>,
    last: String,
}

impl<'a> StderrLog<'a> {
    fn new(plugin: &'a str) -> Self {
        StderrLog {
            plugin,
            partial: Vec::new(),
            last: String::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            self.take_partial(&bytes[..nl]);
            self.emit();
            bytes = &bytes[nl + 1..];
        }
        self.take_partial(bytes);
    }

    fn take_partial(&mut self, bytes: &[u8]) {
        let room = MAX_LOG_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.partial)
            .trim_end()
            .to_string();
        self.partial.clear();
        if !line.trim().is_empty() {
            tracing::info!(delegate = %self.plugin, "{line}");
            self.last = line;
        }
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_types_must_be_bare_names() {
        for ok in ["bridge", "host-local", "sriov", "a.b", "x_y", "c++"] {
            validate_plugin_type(ok).unwrap();
        }
        for bad in [
            "", "../x", "/bin/sh", "a/b", "-rf", ".hidden", "..", "a b", "a\0b",
        ] {
            assert_eq!(
                validate_plugin_type(bad).unwrap_err().code,
                Code::INVALID_CONFIG,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plugins_anyone_could_have_planted_are_not_run() {
        let exe = |p: &Path, mode: u32| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        exe(&open.path().join("plug"), 0o755);
        let loose = tempfile::tempdir().unwrap();
        exe(&loose.path().join("plug"), 0o777);
        let good = tempfile::tempdir().unwrap();
        exe(&good.path().join("plug"), 0o755);
        let rel = PathBuf::from("relative/dir");
        let path = vec![
            rel.clone(),
            open.path().to_path_buf(),
            loose.path().to_path_buf(),
        ];
        let e = find_plugin("plug", &path).unwrap_err();
        assert_eq!(e.code, Code::DELEGATE_NOT_FOUND);
        assert!(e.msg.contains("relative/dir (relative)"), "{}", e.msg);
        assert!(e.msg.contains("in a world-writable directory"), "{}", e.msg);
        assert!(e.msg.contains("plug (world-writable)"), "{}", e.msg);
        let mut path = path;
        path.push(good.path().to_path_buf());
        assert_eq!(
            find_plugin("plug", &path).unwrap(),
            good.path().join("plug")
        );
        // Another user's binary is run: installers leave plugins owned by their own users.
        if nix::unistd::geteuid().is_root() {
            let theirs = tempfile::tempdir().unwrap();
            exe(&theirs.path().join("plug"), 0o755);
            let nobody = Some(nix::unistd::Uid::from_raw(65534));
            nix::unistd::chown(&theirs.path().join("plug"), nobody, None).unwrap();
            assert!(find_plugin("plug", &[theirs.path().to_path_buf()]).is_ok());
        }
    }

    #[test]
    fn lookup_walks_the_path_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            let p = d.join("plug");
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(a.path().join("noexec"), "").unwrap();
        let path = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_plugin("plug", &path).unwrap(), a.path().join("plug"));
        let e = find_plugin("noexec", &path).unwrap_err();
        assert_eq!(e.code, Code::DELEGATE_NOT_FOUND);
        assert!(e.msg.contains("noexec"));
        assert_eq!(
            find_plugin("../plug", &path).unwrap_err().code,
            Code::INVALID_CONFIG
        );
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("deleg");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    static NEVER: std::sync::LazyLock<Cancel> = std::sync::LazyLock::new(Cancel::never);

    fn inv(timeout: Duration) -> Invocation<'static> {
        Invocation {
            command: Command::Add,
            container_id: "c1",
            netns: "/x",
            netns_override: false,
            ifname: "eth0",
            args: "A=1",
            path: &[],
            env: &[],
            timeout,
            deadline: Instant::now() + timeout,
            cancel: &NEVER,
            chroot: None,
        }
    }

    #[test]
    fn passes_env_and_stdin_and_reads_stdout() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            r#"printf '%s|%s|%s|%s|' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_IFNAME" "$CNI_ARGS"; cat"#,
        );
        let out = run(&p, &inv(Duration::from_secs(5)), b"{}").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "ADD|c1|eth0|A=1|{}");
    }

    #[test]
    fn delegate_errors_pass_through_and_crashes_are_ours() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), r#"echo '{"code":7,"msg":"bad conf"}'; exit 1"#);
        let e = run(&p, &inv(Duration::from_secs(5)), b"{}").unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (Code::INVALID_CONFIG, "bad conf"));
        let p = script(d.path(), "echo boom >&2; exit 3");
        let e = run(&p, &inv(Duration::from_secs(5)), b"{}").unwrap_err();
        assert_eq!(e.code, Code::DELEGATE_FAILED);
        assert!(
            e.msg.contains("status 3") && e.msg.contains("boom"),
            "{}",
            e.msg
        );
        let p = script(d.path(), "kill -9 $$");
        let e = run(&p, &inv(Duration::from_secs(5)), b"{}").unwrap_err();
        assert!(e.msg.contains("signal 9"), "{}", e.msg);
    }

    #[test]
    fn deadline_kills_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("grandchild");
        let p = script(
            d.path(),
            &format!("(sleep 30; touch {}) & sleep 30", marker.display()),
        );
        let t = Instant::now();
        let e = run(&p, &inv(Duration::from_millis(300)), b"{}").unwrap_err();
        assert_eq!(e.code, Code::DELEGATE_TIMEOUT);
        assert!(t.elapsed() < Duration::from_secs(5));
        // A background child that kept stdout open was killed with the group.
        std::thread::sleep(Duration::from_millis(100));
        let out = std::process::Command::new("pgrep")
            .args(["-f", &marker.display().to_string()])
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "grandchild survived");
    }

    #[test]
    fn a_delegate_that_never_reads_a_large_config_is_killed_at_the_deadline() {
        // More than a pipe holds: a write before the deadline started would block forever.
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "sleep 30");
        let config = vec![b' '; 256 << 10];
        let t = Instant::now();
        let e = run(&p, &inv(Duration::from_millis(300)), &config).unwrap_err();
        assert_eq!(e.code, Code::DELEGATE_TIMEOUT, "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_chatty_stderr_is_drained_not_cut() {
        // 1 MiB of logs: with a reader that stops early the delegate would die of SIGPIPE or
        // block; drained, it finishes and its result is read.
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "head -c 1048576 /dev/zero | tr '\\0' 'x' | fold -w 100 >&2; echo '{\"cniVersion\":\"1.0.0\"}'",
        );
        let out = run(&p, &inv(Duration::from_secs(20)), b"{}").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap().trim(),
            r#"{"cniVersion":"1.0.0"}"#
        );
    }

    #[test]
    fn delegates_get_exactly_the_cni_environment() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "env | sort");
        // SAFETY: no other test reads this variable.
        unsafe { std::env::set_var("PLEXUS_TEST_SECRET", "leak") };
        let extra = [("ADMIN_SET".to_string(), "v".to_string())];
        let mut i = inv(Duration::from_secs(5));
        i.env = &extra;
        i.netns_override = true;
        let out = String::from_utf8(run(&p, &i, b"").unwrap()).unwrap();
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| !matches!(*k, "PWD" | "SHLVL" | "_" | "OLDPWD"))
            .collect();
        assert_eq!(
            names,
            [
                "ADMIN_SET",
                "CNI_ARGS",
                "CNI_COMMAND",
                "CNI_CONTAINERID",
                "CNI_IFNAME",
                "CNI_NETNS",
                "CNI_NETNS_OVERRIDE",
                "CNI_PATH",
                "PATH"
            ],
            "{out}"
        );
        assert!(out.contains(&format!("PATH={DEFAULT_DELEGATE_PATH}\n")));
    }

    #[test]
    fn a_cancelled_call_kills_the_delegate_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "sleep 30");
        let cancel = Cancel::new().unwrap();
        let c2 = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            c2.cancel();
        });
        let mut i = inv(Duration::from_secs(30));
        i.cancel = &cancel;
        let t = Instant::now();
        let e = run(&p, &i, b"{}").unwrap_err();
        assert_eq!(e.code, Code::TRY_AGAIN_LATER, "{e}");
        assert!(e.msg.contains("cancelled"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn output_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "head -c 3000000 /dev/zero");
        let e = run(&p, &inv(Duration::from_secs(10)), b"{}").unwrap_err();
        assert_eq!(e.code, Code::DELEGATE_BAD_OUTPUT);
    }
}
