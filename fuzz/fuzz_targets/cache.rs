//! The on-disk cache record (`<cniDir>/plexus/attachments/*.json`, src/cache.rs): what DEL, CHECK,
//! GC and `plexus inspect` read back, possibly truncated, foreign, or planted.
//!
//! The input is written as the record of key A (`plexus=fuzzcid=eth0.json`) and as the legacy
//! (plexus < 0.2) record `fuzzcid-eth0.json`, which is where key B (`other`, same container and
//! ifname, no record of its own) falls back to. Then:
//! - `load(A)`: never panics, never `Missing` (the file is there); `Found` exactly when the bytes
//!   are a `SandboxRecord` of a known kind whose key is A's (a legacy record matches any network);
//!   otherwise `Unreadable` with a reason;
//! - `load(B)`: `Found` only for a legacy-kind record of B's container and ifname, else `Missing`;
//! - `all()`: exactly the two files, each `Found` or `Unreadable` as `load_path` decides;
//! - `SandboxRecord` from the input, serialized and parsed again, is equal (and serializing that
//!   gives the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::cache::{Key, Loaded, ResultCache, SandboxRecord, KIND};
use std::path::PathBuf;
use std::sync::OnceLock;

const LEGACY_KIND: &str = "plexusCacheV1";
const KEY_A: Key<'static> = Key {
    network: "plexus",
    container_id: "fuzzcid",
    ifname: "eth0",
};
const KEY_B: Key<'static> = Key {
    network: "other",
    container_id: "fuzzcid",
    ifname: "eth0",
};

struct Dir {
    cache: ResultCache,
    record_a: PathBuf,
    legacy: PathBuf,
}

/// One cniDir per process, in memory (/dev/shm when there is one), removed at exit by nobody:
/// it is two small files, and libFuzzer exits with `_exit`.
fn dir() -> &'static Dir {
    static DIR: OnceLock<Dir> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let cni_dir = base.join(format!("plexus-fuzz-cache-{}", std::process::id()));
        let cache = ResultCache::new(&cni_dir);
        let record_a = cache.record_path(&KEY_A);
        let attachments = record_a.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&attachments).expect("create the fuzz cniDir");
        assert!(
            !cache.record_path(&KEY_B).exists(),
            "key B must have no record of its own"
        );
        let legacy = attachments.join(format!("{}-{}.json", KEY_B.container_id, KEY_B.ifname));
        Dir {
            cache,
            record_a,
            legacy,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    std::fs::write(&d.record_a, data).unwrap();
    std::fs::write(&d.legacy, data).unwrap();

    // What the file says, by serde alone.
    let parsed = serde_json::from_slice::<SandboxRecord>(data).ok();
    let known = parsed
        .as_ref()
        .filter(|r| r.kind == KIND || r.kind == LEGACY_KIND);
    let is_key = |r: &SandboxRecord, k: &Key| {
        r.container_id == k.container_id
            && r.if_name == k.ifname
            && (r.network == k.network || r.kind == LEGACY_KIND)
    };

    match d.cache.load(&KEY_A) {
        Loaded::Missing => panic!("the record of A is there"),
        Loaded::Found(r) => {
            assert!(is_key(&r, &KEY_A), "found another key's record: {r:?}");
            assert_eq!(Some(&r), known, "found what serde does not read");
        }
        Loaded::Unreadable(why) => {
            assert!(!why.is_empty());
            assert!(
                known.is_none_or(|r| !is_key(r, &KEY_A)),
                "A's own record reported unreadable: {why}"
            );
        }
    }
    match d.cache.load(&KEY_B) {
        Loaded::Missing => assert!(
            known.is_none_or(|r| r.kind != LEGACY_KIND || !is_key(r, &KEY_B)),
            "B's legacy record not found"
        ),
        Loaded::Found(r) => {
            assert_eq!(
                r.kind, LEGACY_KIND,
                "only a legacy record is found by fallback"
            );
            assert!(is_key(&r, &KEY_B));
            assert_eq!(Some(&r), known);
        }
        Loaded::Unreadable(why) => panic!("a bad legacy record is skipped, not reported: {why}"),
    }
    let all = d.cache.all();
    assert_eq!(all.len(), 2, "two files");
    for (path, loaded) in &all {
        assert!(
            *path == d.record_a || *path == d.legacy,
            "{}",
            path.display()
        );
        match loaded {
            Loaded::Found(r) => assert_eq!(Some(r), known),
            Loaded::Unreadable(_) => assert!(known.is_none()),
            Loaded::Missing => panic!("listed but missing: {}", path.display()),
        }
    }

    if let Some(r) = parsed {
        let bytes = serde_json::to_vec(&r).expect("a record serializes");
        let again: SandboxRecord = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => panic!(
                "a record written by plexus does not read back: {e}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        };
        assert_eq!(
            again,
            r,
            "record round trip: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(
            serde_json::to_vec(&again).unwrap(),
            bytes,
            "serializing is stable"
        );
    }
});
