//! The result cache: what plexus attached for each (network, container, ifname), so DEL, CHECK, GC
//! and `plexus inspect` work without the API server and without the config that was used at ADD.
//! Keyed as libcni keys its own cache, so one `cniDir` can serve several plexus networks (podman
//! runs one per network) and GC of one never touches another's.
//!
//! Layout under `<cniDir>/plexus/` (directories 0700, files 0600):
//!
//! ```text
//! attachments/<network>=<containerID>=<ifname>.json   one SandboxRecord (JSON)
//! attachments/h-<sha256 of the key>.json               the same, when that name would pass 255 bytes
//! attachments/<containerID>-<ifname>.json              a record of plexus < 0.2 (no network; DEL reads it)
//! locks/<same name>.lock                               flock(2) target; removed by the DEL that empties it
//! ```
//!
//! Network names and container IDs cannot contain `=`, so a readable name is never ambiguous; the
//! record inside carries the whole key and a name that does not match it is not ours.
//!
//! An ADD writes its record twice, whole (temp file, fsync, rename, fsync of the directory):
//! before any delegate runs, listing every planned attachment as pending, and at the end with
//! every result. A crash or a power loss at any point therefore leaves a record that names
//! everything that may exist; DEL of an attachment that was never added succeeds, as the spec
//! requires of every plugin. A record that cannot be read (truncated, foreign, other kind, a
//! symlink, too large) is reported as such and never stops a DEL.

use crate::cancel::Cancel;
use crate::cni::error::{io_error, CniError, Code};
use crate::plan::{DelegateInputs, SelectionRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const KIND: &str = "plexusCacheV2";
/// Records written before the cache was keyed by network name.
const LEGACY_KIND: &str = "plexusCacheV1";
/// Largest record read (a record holds every network's config and result).
const MAX_RECORD_BYTES: u64 = 32 << 20;

/// What one ADD attached to one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    pub kind: String,
    /// The plexus network (its config's `name`) that made it; empty in a legacy record.
    #[serde(default)]
    pub network: String,
    pub container_id: String,
    pub if_name: String,
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub cni_args: String,
    /// The pod, `namespace/name`, when the runtime said which pod this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// When the ADD started (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created: String,
    /// The plexus config the ADD ran with (hot-plug plans with it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
    /// The runtime's `CNI_PATH` at ADD (hot-plug finds delegates where the ADD did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_path: Vec<PathBuf>,
    #[serde(default)]
    pub attachments: Vec<AttachmentRecord>,
    /// DELs that failed for some attachment so far; see `chain::MAX_DEL_ATTEMPTS`.
    #[serde(default)]
    pub del_attempts: u32,
    /// The pod's namespace and its links before the ADD's first delegate ran; cleared once the
    /// ADD went through. While it is here, the ADD was cut short: what it left that its DELs did
    /// not remove is found against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links_before: Option<PodLinks>,
}

/// A pod network namespace (the inode behind its path, so a reused path is told apart) and the
/// indexes of its links at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodLinks {
    pub netns_dev: u64,
    pub netns_ino: u64,
    pub indexes: Vec<u32>,
}

/// One attachment as recorded: enough to DEL, CHECK and GC it later, byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    /// The delegate network's name.
    pub network: String,
    pub ifname: String,
    #[serde(default)]
    pub cluster: bool,
    /// The network config exactly as loaded (file bytes, NAD config, or the inline delegate).
    pub config: String,
    #[serde(flatten)]
    pub inputs: DelegateInputs,
    /// The final ADD result, as the network's last plugin printed it; absent while pending.
    #[serde(default)]
    pub result: Option<Value>,
    /// The device-info file the CNI was asked to write (NPWG device-info); removed on DEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info_file: Option<String>,
    /// What network-status calls it: `namespace/name` of its NAD, else the network's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_name: String,
    /// `(resource, device ID)` of a device-backed network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<(String, String)>,
    /// The selection annotation element it comes from (hot-plug's identity of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionRef>,
    /// The DRA claim its device came from, and what plexus wrote to the claim's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<crate::k8s::dra::ClaimDevice>,
}

/// Which record: the plexus network, the container and the runtime's ifname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl Key<'_> {
    /// The file name stem: readable when it fits in a file name, else a hash of the key.
    fn stem(&self) -> String {
        let readable = format!("{}={}={}", self.network, self.container_id, self.ifname);
        if readable.len() + ".json".len() <= 255 {
            return readable;
        }
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [self.network, self.container_id, self.ifname] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let digest = h.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("h-{hex}")
    }

    /// Where plexus before 0.2 kept the record (no network in the key).
    fn legacy_stem(&self) -> Option<String> {
        let s = format!("{}-{}", self.container_id, self.ifname);
        (s.len() + ".json".len() <= 255).then_some(s)
    }

    fn matches(&self, r: &SandboxRecord) -> bool {
        r.container_id == self.container_id
            && r.if_name == self.ifname
            && (r.network == self.network || r.kind == LEGACY_KIND)
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "network {} container {} ifname {}",
            self.network, self.container_id, self.ifname
        )
    }
}

impl SandboxRecord {
    pub fn key(&self) -> Key<'_> {
        Key {
            network: &self.network,
            container_id: &self.container_id,
            ifname: &self.if_name,
        }
    }
}

/// The cache rooted at `<cniDir>/plexus`.
#[derive(Debug, Clone)]
pub struct ResultCache {
    root: PathBuf,
}

/// An exclusive lock on one key; released on drop.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    /// Remove the lock file while still holding it (after the record is gone).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

// A record is read, matched and dropped; boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    Missing,
    Found(SandboxRecord),
    /// The file exists but is not a record we can use; the reason is given.
    Unreadable(String),
}

impl ResultCache {
    pub fn new(cni_dir: &Path) -> ResultCache {
        ResultCache {
            root: cni_dir.join("plexus"),
        }
    }

    fn attachments_dir(&self) -> PathBuf {
        self.root.join("attachments")
    }

    pub fn record_path(&self, key: &Key<'_>) -> PathBuf {
        self.attachments_dir().join(format!("{}.json", key.stem()))
    }

    fn ensure_dir(dir: &Path) -> Result<(), CniError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error(format!("creating {}", dir.display()), e))
    }

    /// Take the lock of `key`, waiting until `until` at most (then code 11: another call for this
    /// container holds it) or until the call is cancelled. A lock file unlinked by a finishing
    /// DEL while we waited is detected (different inode) and the lock is taken again on the new
    /// file.
    pub fn lock(&self, key: &Key<'_>, until: Instant, cancel: &Cancel) -> Result<Lock, CniError> {
        let dir = self.root.join("locks");
        let path = dir.join(format!("{}.lock", key.stem()));
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
        };
        let mut backoff = Duration::from_millis(1);
        loop {
            let file = match open() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Self::ensure_dir(&dir)?;
                    open()
                }
                other => other,
            }
            .map_err(|e| io_error(format!("opening lock {}", path.display()), e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= until {
                        return Err(CniError::new(
                            Code::TRY_AGAIN_LATER,
                            format!("another CNI call for {key} still holds {}", path.display()),
                        ));
                    }
                    if cancel.sleep(backoff.min(until.saturating_duration_since(Instant::now()))) {
                        return Err(CniError::new(
                            Code::TRY_AGAIN_LATER,
                            format!("cancelled while waiting for the lock of {key}"),
                        ));
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                    continue;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(io_error(format!("locking {}", path.display()), e))
                }
            }
            let held = file.metadata().map_err(|e| io_error("stat lock", e))?;
            match std::fs::symlink_metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Lock { file, path })
                }
                _ => continue,
            }
        }
    }

    /// The record of `key`, or one of plexus before 0.2 for the same container and ifname.
    pub fn load(&self, key: &Key<'_>) -> Loaded {
        match Self::load_path(&self.record_path(key)) {
            Loaded::Found(r) if !key.matches(&r) => Loaded::Unreadable(format!(
                "{}: holds {}, not {key}",
                self.record_path(key).display(),
                r.key()
            )),
            Loaded::Missing => match key.legacy_stem() {
                Some(stem) => {
                    match Self::load_path(&self.attachments_dir().join(format!("{stem}.json"))) {
                        Loaded::Found(r) if r.kind == LEGACY_KIND && key.matches(&r) => {
                            Loaded::Found(r)
                        }
                        _ => Loaded::Missing,
                    }
                }
                None => Loaded::Missing,
            },
            other => other,
        }
    }

    fn load_path(path: &Path) -> Loaded {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Unreadable(format!("{}: {e}", path.display())),
        };
        match file.metadata() {
            Ok(m) if !m.is_file() => {
                return Loaded::Unreadable(format!("{}: not a regular file", path.display()))
            }
            Ok(m) if m.len() > MAX_RECORD_BYTES => {
                return Loaded::Unreadable(format!(
                    "{}: larger than {MAX_RECORD_BYTES} bytes",
                    path.display()
                ))
            }
            // Only root (or plexus's own user) writes records, 0600: one that someone else
            // owns or may write could name any delegate config, and DEL would run it.
            Ok(m) if untrusted(&m).is_some() => {
                return Loaded::Unreadable(format!(
                    "{}: {}",
                    path.display(),
                    untrusted(&m).unwrap_or_default()
                ))
            }
            Err(e) => return Loaded::Unreadable(format!("{}: {e}", path.display())),
            Ok(_) => {}
        }
        let mut bytes = Vec::new();
        if let Err(e) = file.take(MAX_RECORD_BYTES).read_to_end(&mut bytes) {
            return Loaded::Unreadable(format!("{}: {e}", path.display()));
        }
        match serde_json::from_slice::<SandboxRecord>(&bytes) {
            Ok(r) if r.kind == KIND || r.kind == LEGACY_KIND => Loaded::Found(r),
            Ok(r) => Loaded::Unreadable(format!("{}: unknown kind \"{}\"", path.display(), r.kind)),
            Err(e) => Loaded::Unreadable(format!("{}: {e}", path.display())),
        }
    }

    /// Write a record durably and atomically: temp file, fsync, rename, fsync of the directory. A
    /// legacy record it replaces is removed.
    pub fn store(&self, record: &SandboxRecord) -> Result<(), CniError> {
        self.write_record(record, true)
    }

    /// [`store`](Self::store) for a record whose previous version is on disk, durably, and is
    /// itself a state a crash may leave (an ADD's final record over its pending one: a DEL of a
    /// pending record undoes every attachment in it). The new file's data is synced before the
    /// rename, so a crash leaves one whole version or the other; the rename's directory entry is
    /// left to the filesystem's next commit, which saves a directory fsync on every ADD.
    pub fn store_over_durable(&self, record: &SandboxRecord) -> Result<(), CniError> {
        self.write_record(record, false)
    }

    fn write_record(&self, record: &SandboxRecord, sync_dir: bool) -> Result<(), CniError> {
        let dir = self.attachments_dir();
        let key = record.key();
        let path = self.record_path(&key);
        let mut record = record.clone();
        record.kind = KIND.into();
        let bytes = serde_json::to_vec(&record).expect("record serializes");
        let write = || -> std::io::Result<()> {
            // Directories are made on first use only: a mkdir per write is measurable.
            // The writer's PID in the name: a temp file whose writer was killed before the rename
            // is found and removed by `sweep_temp_files`.
            let prefix = format!("{TEMP_PREFIX}{}-", std::process::id());
            let mut tmp = match tempfile::Builder::new().prefix(&prefix).tempfile_in(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Self::ensure_dir(&dir).map_err(|e| std::io::Error::other(e.msg))?;
                    tempfile::Builder::new().prefix(&prefix).tempfile_in(&dir)?
                }
                other => other?,
            };
            tmp.write_all(&bytes)?;
            tmp.as_file().sync_data()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            if sync_dir {
                File::open(&dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| io_error(format!("writing cache {}", path.display()), e))?;
        if let Some(stem) = key.legacy_stem() {
            let _ = std::fs::remove_file(dir.join(format!("{stem}.json")));
        }
        Ok(())
    }

    /// Remove the record of `key` (and a legacy record for the same container and ifname).
    pub fn remove(&self, key: &Key<'_>) -> Result<(), CniError> {
        let mut paths = vec![self.record_path(key)];
        if let Some(stem) = key.legacy_stem() {
            paths.push(self.attachments_dir().join(format!("{stem}.json")));
        }
        for path in paths {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(format!("removing {}", path.display()), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Set aside the record of `key` if it is one plexus must not trust (another user's, or
    /// writable by others): renamed to `<name>.untrusted`, so neither DEL nor GC acts on it and
    /// an admin finds it. Returns the new path when it did.
    pub fn quarantine(&self, key: &Key<'_>) -> Option<PathBuf> {
        let path = self.record_path(key);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        untrusted(&meta)?;
        let mut to = path.clone().into_os_string();
        to.push(".untrusted");
        let to = PathBuf::from(to);
        std::fs::rename(&path, &to).ok()?;
        Some(to)
    }

    /// Remove the temp files of record writes that never finished: their writer (named in the
    /// file) is gone, or, for names without a PID, they are older than [`STALE_TEMP`]. A writer
    /// SIGKILLed between creating its temp file and renaming it leaves one. Returns how many.
    pub fn sweep_temp_files(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(self.attachments_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
                continue;
            };
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            let writer = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let stale = match writer {
                Some(pid) if pid == std::process::id() => false,
                Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
                None => meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMP),
            };
            if stale && std::fs::remove_file(e.path()).is_ok() {
                tracing::info!(
                    "removed {}, left by a cache write that never finished",
                    e.path().display()
                );
                removed += 1;
            }
        }
        removed
    }

    /// Every record in the cache, in file-name order, with its path (for GC and inspect).
    /// Unreadable files are returned as such.
    pub fn all(&self) -> Vec<(PathBuf, Loaded)> {
        let Ok(rd) = std::fs::read_dir(self.attachments_dir()) else {
            return vec![];
        };
        let mut out: Vec<(PathBuf, Loaded)> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                let l = Self::load_path(&p);
                (p, l)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Why a record file must not be trusted, if it must not: someone other than root (or us) owns
/// it, or others may write it.
fn untrusted(m: &std::fs::Metadata) -> Option<String> {
    if m.uid() != 0 && m.uid() != nix::unistd::geteuid().as_raw() {
        return Some(format!("owned by uid {}, not by root", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Some(format!("writable by others (mode {:o})", m.mode() & 0o7777));
    }
    None
}

/// How a record write's temp file starts (then the writer's PID and `-`).
const TEMP_PREFIX: &str = ".tmp-";
/// A temp file without a writer's PID in its name is left alone this long.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// Now, as RFC 3339, for `SandboxRecord::created`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn record(net: &str, id: &str) -> SandboxRecord {
        SandboxRecord {
            kind: KIND.into(),
            network: net.into(),
            container_id: id.into(),
            if_name: "eth0".into(),
            netns: "/n".into(),
            cni_args: String::new(),
            pod: None,
            created: String::new(),
            config: String::new(),
            cni_path: vec![],
            attachments: vec![AttachmentRecord {
                network: "a".into(),
                ifname: "eth0".into(),
                cluster: true,
                config: r#"{"name":"a", "type":"bridge"}"#.into(),
                inputs: DelegateInputs {
                    capability_args: Map::new(),
                    cni_args: Map::new(),
                },
                result: None,
                device_info_file: None,
                status_name: String::new(),
                device: None,
                selection: None,
                claim: None,
            }],
            del_attempts: 0,
            links_before: None,
        }
    }

    // Fuzz finding F3 (docs/fuzzing.md): without float_roundtrip a float read back one ULP off.
    #[test]
    fn floats_read_back_as_written() {
        let x: f64 = serde_json::from_str("2.5003332333333334e131").unwrap();
        assert_eq!(x, 2.5003332333333334e131);
        let mut r = record("p", "x");
        r.attachments[0]
            .inputs
            .cni_args
            .insert("x".into(), serde_json::json!(2.5003332333333334e131_f64));
        let back: SandboxRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    fn key<'a>(net: &'a str, id: &'a str) -> Key<'a> {
        Key {
            network: net,
            container_id: id,
            ifname: "eth0",
        }
    }

    #[test]
    fn store_load_remove() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        assert!(matches!(c.load(&key("p", "x")), Loaded::Missing));
        c.store(&record("p", "x")).unwrap();
        match c.load(&key("p", "x")) {
            Loaded::Found(r) => assert_eq!(r, record("p", "x")),
            _ => panic!("not found"),
        }
        // The config bytes survive exactly, spacing included.
        let raw = std::fs::read_to_string(c.record_path(&key("p", "x"))).unwrap();
        assert!(raw.contains(r#""{\"name\":\"a\", \"type\":\"bridge\"}""#));
        c.remove(&key("p", "x")).unwrap();
        c.remove(&key("p", "x")).unwrap();
        assert!(matches!(c.load(&key("p", "x")), Loaded::Missing));
    }

    #[test]
    fn networks_sharing_a_cni_dir_keep_apart() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        c.store(&record("podman", "x")).unwrap();
        c.store(&record("other", "x")).unwrap();
        c.remove(&key("other", "x")).unwrap();
        assert!(matches!(c.load(&key("podman", "x")), Loaded::Found(_)));
        assert!(matches!(c.load(&key("other", "x")), Loaded::Missing));
    }

    #[test]
    fn a_1024_byte_container_id_gets_a_hashed_name_del_can_find() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        let id = "a".repeat(1024);
        c.store(&record("plexus", &id)).unwrap();
        let path = c.record_path(&key("plexus", &id));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.len() <= 255 && name.starts_with("h-"), "{name}");
        assert!(matches!(c.load(&key("plexus", &id)), Loaded::Found(r) if r.container_id == id));
        let lock = c
            .lock(&key("plexus", &id), Instant::now(), &Cancel::never())
            .unwrap();
        c.remove(&key("plexus", &id)).unwrap();
        lock.remove();
        assert!(c.all().is_empty());
    }

    #[test]
    fn legacy_records_are_found_by_del_and_replaced() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        let dir = d.path().join("plexus/attachments");
        std::fs::create_dir_all(&dir).unwrap();
        let mut old = serde_json::to_value(record("", "x")).unwrap();
        old["kind"] = "plexusCacheV1".into();
        old.as_object_mut().unwrap().remove("network");
        old["cniVersion"] = "1.0.0".into();
        std::fs::write(dir.join("x-eth0.json"), old.to_string()).unwrap();
        let Loaded::Found(mut r) = c.load(&key("plexus", "x")) else {
            panic!("legacy record not found")
        };
        assert_eq!(r.network, "");
        r.network = "plexus".into();
        c.store(&r).unwrap();
        assert!(
            !dir.join("x-eth0.json").exists(),
            "replaced by the keyed record"
        );
        assert!(matches!(c.load(&key("plexus", "x")), Loaded::Found(r) if r.kind == KIND));
    }

    #[test]
    fn truncated_foreign_and_planted_files_are_unreadable_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        c.store(&record("p", "x")).unwrap();
        let p = c.record_path(&key("p", "x"));
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() / 2]).unwrap();
        assert!(matches!(c.load(&key("p", "x")), Loaded::Unreadable(_)));
        std::fs::write(
            &p,
            r#"{"kind":"cniCacheV1","containerId":"x","ifName":"eth0","cniVersion":"1.0.0"}"#,
        )
        .unwrap();
        assert!(
            matches!(c.load(&key("p", "x")), Loaded::Unreadable(m) if m.contains("cniCacheV1"))
        );
        // A record under another key's name is not this key's.
        std::fs::write(&p, serde_json::to_vec(&record("p", "other")).unwrap()).unwrap();
        assert!(matches!(c.load(&key("p", "x")), Loaded::Unreadable(m) if m.contains("other")));
        // A symlink planted where a record would be is never followed.
        let secret = d.path().join("secret.json");
        std::fs::write(&secret, serde_json::to_vec(&record("p", "y")).unwrap()).unwrap();
        std::os::unix::fs::symlink(&secret, c.record_path(&key("p", "y"))).unwrap();
        assert!(matches!(c.load(&key("p", "y")), Loaded::Unreadable(_)));
        std::fs::write(c.record_path(&key("p", "z")), b"\xff\xfe").unwrap();
        assert_eq!(c.all().len(), 3);
    }

    #[test]
    fn temp_files_of_dead_writers_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        c.store(&record("p", "x")).unwrap();
        let dir = d.path().join("plexus/attachments");
        // A dead writer (PID far above pid_max's default), a live one (us), an old-style name.
        std::fs::write(dir.join(".tmp-99999999-abc"), b"{").unwrap();
        let mine = dir.join(format!(".tmp-{}-def", std::process::id()));
        std::fs::write(&mine, b"{").unwrap();
        std::fs::write(dir.join(".tmp-ghijkl"), b"{").unwrap();
        assert_eq!(c.sweep_temp_files(), 1);
        assert!(mine.exists());
        assert!(dir.join(".tmp-ghijkl").exists(), "young, no PID: kept");
        assert!(matches!(c.load(&key("p", "x")), Loaded::Found(_)));
    }

    #[test]
    fn records_others_may_write_are_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        c.store(&record("p", "x")).unwrap();
        let p = c.record_path(&key("p", "x"));
        assert!(matches!(c.load(&key("p", "x")), Loaded::Found(_)));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            matches!(c.load(&key("p", "x")), Loaded::Unreadable(m) if m.contains("writable by others"))
        );
        let q = c.quarantine(&key("p", "x")).expect("set aside");
        assert!(q.to_string_lossy().ends_with(".json.untrusted") && !p.exists());
        std::fs::rename(&q, &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            c.quarantine(&key("p", "x")).is_none(),
            "a trusted record stays"
        );
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert!(
                matches!(c.load(&key("p", "x")), Loaded::Unreadable(m) if m.contains("uid 65534"))
            );
        }
    }

    #[test]
    fn records_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        c.store(&record("p", "x")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&c.record_path(&key("p", "x"))), 0o600);
        assert_eq!(mode(&d.path().join("plexus/attachments")), 0o700);
        let l = c
            .lock(&key("p", "x"), Instant::now(), &Cancel::never())
            .unwrap();
        assert_eq!(mode(&l.path), 0o600);
        assert_eq!(mode(&d.path().join("plexus/locks")), 0o700);
    }

    #[test]
    fn lock_is_exclusive_bounded_and_survives_unlink() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        let never = Cancel::never();
        let l = c.lock(&key("p", "x"), Instant::now(), &never).unwrap();
        // Held: a bounded wait gives up with "try again later".
        let t = Instant::now();
        let e = c
            .lock(
                &key("p", "x"),
                Instant::now() + Duration::from_millis(200),
                &never,
            )
            .unwrap_err();
        assert_eq!(e.code, Code::TRY_AGAIN_LATER);
        assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(3));
        let c2 = c.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let th = std::thread::spawn(move || {
            let l2 = c2
                .lock(
                    &key("p", "x"),
                    Instant::now() + Duration::from_secs(10),
                    &Cancel::never(),
                )
                .unwrap();
            tx.send(()).unwrap();
            l2.remove();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "second lock taken while held"
        );
        l.remove();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        th.join().unwrap();
    }
}
