//! plexus runs on the node's filesystem but not on its libc: the binary is a static-pie
//! executable (no dynamic loader), and it looks the API server's host name up in `/etc/hosts` and
//! DNS only, never through a `libnss_*` module the node's nsswitch.conf names (static glibc would
//! `dlopen` one built against the node's glibc).

use plexus_e2e::{plexus_bin, Fixture, TestEnv};
use serde_json::{json, Value};
use std::ffi::OsStr;

/// The ELF program headers' types (ELF64, little-endian).
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect()
}

#[test]
fn plexus_is_static_and_finds_the_api_server_by_name_through_files_only() {
    const PT_INTERP: u32 = 3;
    const PT_DYNAMIC: u32 = 2;
    let types = program_header_types(&std::fs::read(plexus_bin()).unwrap());
    assert!(
        !types.contains(&PT_INTERP),
        "plexus asks for a dynamic loader: {types:?}"
    );
    // A static PIE still has PT_DYNAMIC (its own relocations), but needs no shared library.
    assert!(types.contains(&PT_DYNAMIC), "not a PIE: {types:?}");

    let env = TestEnv::new("static");
    let api = Fixture::start(&env);
    api.create_pod("apps", "web", json!({}));
    // The API server by a name only the (private) /etc/hosts knows, behind an nsswitch.conf that
    // names a module first.
    let dir = env.path();
    std::fs::write(dir.join("hosts"), "127.0.0.1 plexus-api.test\n").unwrap();
    std::fs::write(
        dir.join("nsswitch.conf"),
        "hosts: myhostname mdns4_minimal files dns\n",
    )
    .unwrap();
    let kubeconfig = dir.join("kubeconfig-by-name");
    let mut kc: Value =
        serde_json::from_str(&std::fs::read_to_string(&api.kubeconfig).unwrap()).unwrap();
    kc["clusters"][0]["cluster"]["server"] = json!(format!("http://plexus-api.test:{}", api.port));
    std::fs::write(&kubeconfig, kc.to_string()).unwrap();
    let mut conf = env.plexus_conf(
        "1.0.0",
        vec![json!({"cniVersion": "1.0.0", "name": "p2p", "type": "ptp",
            "ipam": env.host_local("p2p", "10.121.0.0/30")})],
    );
    conf["kubeconfig"] = json!(kubeconfig);

    let trace = dir.join("openat.trace");
    let run = |verb: &str, traced: bool| {
        // plexus is "$0" of the script: the wrapper's last argument.
        let script = format!(
            "mount --bind {hosts} /etc/hosts && mount --bind {nss} /etc/nsswitch.conf && exec {strace}\"$0\"",
            hosts = dir.join("hosts").display(),
            nss = dir.join("nsswitch.conf").display(),
            strace = if traced {
                format!("strace -f -qq -e trace=openat,execve -o {} ", trace.display())
            } else {
                String::new()
            },
        );
        // A mount namespace of its own (private propagation): the host's files are untouched.
        let wrapper = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ];
        let args = OsStr::new("IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web");
        env.cni_wrapped(
            &wrapper,
            verb,
            &[
                ("CNI_CONTAINERID", OsStr::new("static-1")),
                ("CNI_IFNAME", OsStr::new("eth0")),
                ("CNI_ARGS", args),
            ],
            conf.to_string().as_bytes(),
        )
    };

    let add = run("ADD", true);
    assert_eq!(add.code, 0, "ADD failed: {} {}", add.stdout, add.stderr);
    let result: Value = serde_json::from_str(&add.stdout).unwrap();
    assert_eq!(result["ips"][0]["address"], "10.121.0.2/30", "{result}");
    // It reached the fixture by name: the pod's network-status was written there.
    let pod = api.pod("apps", "web");
    let status = pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
        .as_str()
        .unwrap_or_else(|| panic!("no network-status on {pod}"));
    assert!(status.contains("10.121.0.2"), "{status}");
    // plexus's own lines: not those of the delegates it exec'd (the reference plugins are
    // dynamic, and open the loader's cache).
    let trace = std::fs::read_to_string(&trace).unwrap();
    let plexus = plexus_bin().display().to_string();
    let delegates: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("execve(") && !l.contains(&format!("execve(\"{plexus}\"")))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!delegates.is_empty(), "no delegate in the trace:\n{trace}");
    let own: Vec<&str> = trace
        .lines()
        .filter(|l| !delegates.contains(&l.split_whitespace().next().unwrap_or("")))
        .collect();
    let opened = own.join("\n");
    assert!(
        opened.contains("\"/etc/hosts\""),
        "never read /etc/hosts:\n{opened}"
    );
    let nss: Vec<&&str> = own.iter().filter(|l| l.contains("libnss_")).collect();
    assert!(nss.is_empty(), "looked for NSS modules: {nss:#?}");
    assert!(
        !opened.contains("ld.so.cache") && !opened.contains("libc.so"),
        "used the dynamic loader:\n{opened}"
    );

    let del = run("DEL", false);
    assert_eq!(del.code, 0, "DEL failed: {} {}", del.stdout, del.stderr);
    env.assert_clean(&[]);
}
