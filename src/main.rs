//! The `plexus` binary: a CNI plugin when `CNI_COMMAND` is set, otherwise a small CLI.

use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "plexus",
    version,
    about = "Multi-network CNI meta-plugin (run by the container runtime with CNI_COMMAND set)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a pod netns, attach a cluster network and two extra networks through plexus with the
    /// real reference plugins, show what the pod got, then tear it all down (needs root).
    Demo(plexus::demo::DemoArgs),
    /// Print the NetworkAttachmentDefinition CRD (YAML) generated from plexus's type.
    Crdgen,
    /// Run the node agent (a drop-in for the Multus thick daemon): the socket API, the watch
    /// cache, the runtime's CNI config, health and metrics.
    Daemon(plexus::daemon::DaemonArgs),
    /// Install plexus on this node (run by the DaemonSet): binary, kubeconfig, config.
    Install(plexus::install::InstallArgs),
    /// Remove plexus from this node: its config first, then its kubeconfig (and the binary with
    /// --remove-binary-from, once no pod it attached is left).
    Uninstall(plexus::install::UninstallArgs),
    /// Show what plexus attached for a sandbox (or every sandbox), from the node's cache alone.
    Inspect(plexus::inspect::InspectArgs),
    /// Check NADs, pods (and workloads' pod templates) and plexus configs offline.
    Validate(plexus::validate::ValidateArgs),
}

fn main() -> ExitCode {
    pin_host_lookups();
    if std::env::var_os("CNI_COMMAND").is_some() {
        return cni_main();
    }
    let cli = Cli::parse();
    if let Cmd::Daemon(args) = &cli.command {
        // The daemon sets up its own logging from its config.
        return match plexus::daemon::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("plexus daemon: {e}");
                ExitCode::FAILURE
            }
        };
    }
    plexus::logging::init(Some("info"), None, true);
    match cli.command {
        Cmd::Daemon(_) => unreachable!("handled above"),
        Cmd::Install(args) => match plexus::install::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("plexus install: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Uninstall(args) => match plexus::install::uninstall(&args) {
            Ok(removed) => {
                for r in removed {
                    eprintln!("plexus uninstall: removed {r}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("plexus uninstall: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Crdgen => {
            print!("{}", plexus::k8s::nad::crd_yaml());
            ExitCode::SUCCESS
        }
        Cmd::Inspect(args) => ExitCode::from(plexus::inspect::run(&args)),
        Cmd::Validate(args) => ExitCode::from(plexus::validate::run(&args)),
        Cmd::Demo(args) => match plexus::demo::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("plexus demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Host names (an API server named in a kubeconfig) are looked up in `/etc/hosts` and DNS only.
/// plexus is linked statically, and runs on the node's filesystem: any other module the node's
/// nsswitch.conf names (`myhostname`, `resolve`, `sss`…) would be a `libnss_*.so` built against the
/// node's glibc, which static glibc would `dlopen` into this process. `files` and `dns` are built
/// into static glibc. Called first, before any thread exists.
fn pin_host_lookups() {
    #[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
    {
        extern "C" {
            // glibc, <nss.h>: make `db` use `services` instead of what nsswitch.conf says.
            fn __nss_configure_lookup(
                db: *const libc::c_char,
                services: *const libc::c_char,
            ) -> libc::c_int;
        }
        // SAFETY: both arguments are NUL-terminated literals; called from main before any other
        // thread exists and before any lookup.
        unsafe {
            __nss_configure_lookup(c"hosts".as_ptr(), c"files dns".as_ptr());
        }
    }
}

fn cni_main() -> ExitCode {
    let mut stdin = Vec::new();
    // Read at most one byte past the cap so an oversized config is refused, not buffered.
    let limit = plexus::cni::request::MAX_STDIN as u64 + 1;
    let _ = std::io::stdin().take(limit).read_to_end(&mut stdin);
    let out = plexus::plugin::run_process_env(stdin);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.stdout.as_bytes());
    let _ = stdout.flush();
    ExitCode::from(out.exit_code as u8)
}
