//! The leak soak (`scripts/soak`), small: 4 workers, 48 cycles, a fixed seed, every fault kind
//! the full soak injects. It must end with no leak and no protocol violation.

use plexus_e2e as common;

#[test]
fn a_small_soak_under_chaos_leaks_nothing() {
    common::require_root();
    let out = std::process::Command::new(common::target_dir().join("plexus-soak"))
        .args(["--workers", "4", "--cycles", "48", "--seed", "20261202"])
        .output()
        .expect("run plexus-soak (build the workspace first)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        out.status.success() && last.starts_with("soak: ") && last.ends_with(", 0 leaks"),
        "soak failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The kinds of fault that must have happened for the run to mean anything.
    for kind in [
        "kill plexus",
        "kill daemon",
        "delegate hangs past its deadline",
        "API server error",
        "API server killed (down, then back)",
        "netns deleted before DEL",
        "delegate cut short after creating its link",
    ] {
        assert!(
            stdout.lines().any(|l| l
                .trim_start()
                .split_once("  ")
                .is_some_and(|(_, k)| k.trim() == kind)),
            "no {kind:?} in this run:\n{stdout}"
        );
    }
    // What those cut-short delegates left was cleared away by plexus (and no sandbox kept it:
    // the leak count above is 0).
    let cleared: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("cleared away by plexus after ADDs cut short: "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(cleared >= 1, "plexus cleared nothing away:\n{stdout}");
}
