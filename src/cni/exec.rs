//! Running one delegate plugin: find the binary, exec it with the CNI environment and its config on
//! stdin, in its own process group, under a deadline, with stdout bounded; then read its result or
//! its CNI error.

use super::error::{CniError, Code};
use super::request::Command;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Cap on a delegate's stdout. A real result is a few KiB; anything past this is a bug.
pub const MAX_OUTPUT: usize = 1 << 20;

/// What a delegate is called with, besides its config.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    /// Search path: binDir first, then the runtime's CNI_PATH. Also passed on as CNI_PATH.
    pub path: &'a [PathBuf],
    pub timeout: Duration,
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

/// Find `plugin` in the search path (a bare name only; see [`validate_plugin_type`]).
pub fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    validate_plugin_type(plugin)?;
    for dir in path {
        let candidate = dir.join(plugin);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    let dirs: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
    Err(CniError::new(
        Code::DELEGATE_NOT_FOUND,
        format!(
            "failed to find plugin \"{plugin}\" in path [{}]",
            dirs.join(":")
        ),
    ))
}

/// Run a delegate. Ok(stdout) on exit 0; on failure the delegate's own CNI error when it printed
/// one, else one of plexus's (100–103).
pub fn run(binary: &Path, inv: &Invocation<'_>, config: &[u8]) -> Result<Vec<u8>, CniError> {
    let plugin = binary
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let search: Vec<String> = inv.path.iter().map(|p| p.display().to_string()).collect();
    let mut cmd = std::process::Command::new(binary);
    cmd.env("CNI_COMMAND", inv.command.to_string())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", search.join(":"))
        .env_remove("CNI_NETNS_OVERRIDE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let deadline = started + inv.timeout;
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

    // stdout: bounded, read on its own thread so a chatty or stuck delegate cannot block us.
    let mut stdout = child.stdout.take().expect("piped");
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let res = (&mut stdout)
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut buf);
        let _ = out_tx.send(res.map(|_| buf));
    });
    // stderr: the delegate's logs go to ours, line by line.
    let mut stderr = child.stderr.take().expect("piped");
    let log_name = plugin.clone();
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(delegate = %log_name, "{line}");
        }
        text.lines().last().map(str::to_string).unwrap_or_default()
    });

    // A delegate that does not read stdin must not wedge us: write, then close.
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(config) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::warn!(delegate = %plugin, "writing config to delegate: {e}");
            }
        }
    }

    let remaining = || deadline.saturating_duration_since(Instant::now());
    let out = match out_rx.recv_timeout(remaining()) {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => {
            kill();
            let _ = child.wait();
            return Err(CniError::new(
                Code::DELEGATE_FAILED,
                format!("reading output of plugin \"{plugin}\": {e}"),
            ));
        }
        Err(_) => {
            kill();
            let _ = child.wait();
            return Err(CniError::new(
                Code::DELEGATE_TIMEOUT,
                format!(
                    "plugin \"{plugin}\" {} did not finish within {:?}; killed its process group",
                    inv.command, inv.timeout
                ),
            ));
        }
    };
    if out.len() > MAX_OUTPUT {
        kill();
        let _ = child.wait();
        return Err(CniError::new(
            Code::DELEGATE_BAD_OUTPUT,
            format!(
                "plugin \"{plugin}\" {} printed more than {MAX_OUTPUT} bytes",
                inv.command
            ),
        ));
    }
    // stdout is closed; the process should be exiting. Wait for it (blocking, on a thread, so the
    // deadline still holds) rather than polling.
    let (st_tx, st_rx) = mpsc::channel();
    let mut waited = child;
    std::thread::spawn(move || {
        let _ = st_tx.send(waited.wait());
    });
    let status = match st_rx.recv_timeout(remaining()) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            return Err(CniError::new(
                Code::DELEGATE_FAILED,
                format!("waiting for plugin \"{plugin}\": {e}"),
            ))
        }
        Err(_) => {
            kill();
            return Err(CniError::new(
                Code::DELEGATE_TIMEOUT,
                format!(
                    "plugin \"{plugin}\" {} closed stdout but did not exit within {:?}",
                    inv.command, inv.timeout
                ),
            ));
        }
    };
    // Anything it left running in its group goes too; it had its chance.
    let _ = killpg(pgid, Signal::SIGKILL);
    let last_stderr = err_thread.join().unwrap_or_default();
    tracing::debug!(delegate = %plugin, command = %inv.command, ifname = inv.ifname,
        elapsed_us = started.elapsed().as_micros() as u64, "delegate finished");
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
    if !last_stderr.is_empty() {
        msg.push_str(&format!("; last stderr line: {last_stderr}"));
    }
    Err(CniError::new(Code::DELEGATE_FAILED, msg))
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

    fn inv(timeout: Duration) -> Invocation<'static> {
        Invocation {
            command: Command::Add,
            container_id: "c1",
            netns: "/x",
            ifname: "eth0",
            args: "A=1",
            path: &[],
            timeout,
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
    fn output_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "head -c 3000000 /dev/zero");
        let e = run(&p, &inv(Duration::from_secs(10)), b"{}").unwrap_err();
        assert_eq!(e.code, Code::DELEGATE_BAD_OUTPUT);
    }
}
