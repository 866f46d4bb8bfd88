//! The result cache: what plexus attached for each (container, ifname), so DEL, CHECK and GC work
//! without the API server and without the config that was used at ADD.
//!
//! Layout under `<cniDir>/plexus/`:
//!
//! ```text
//! attachments/<containerID>-<ifname>.json   one Record (JSON, mode 0600)
//! locks/<containerID>-<ifname>.lock         flock(2) target; removed by the DEL that empties it
//! ```
//!
//! An ADD writes its record twice, whole (temp file in the same directory, then rename): before
//! any delegate runs, listing every planned attachment as pending, and at the end with every
//! result (fsynced). A crash of plexus at any point therefore leaves a record that names
//! everything that may exist; DEL of an attachment that was never added succeeds, as the spec
//! requires of every plugin. Each write creates an inode, so there are two per ADD whatever the
//! number of networks (see docs/benchmarks.md). A record that cannot be read (truncated,
//! foreign, other kind) is reported as such and never stops a DEL.

use crate::cni::error::{io_error, CniError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const KIND: &str = "plexusCacheV1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub kind: String,
    pub container_id: String,
    pub if_name: String,
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub cni_args: String,
    /// The runtime's cniVersion at ADD.
    pub cni_version: String,
    #[serde(default)]
    pub attachments: Vec<CachedAttachment>,
    /// DELs that failed for some attachment so far; see `chain::MAX_DEL_ATTEMPTS`.
    #[serde(default)]
    pub del_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    pub network: String,
    pub ifname: String,
    #[serde(default)]
    pub cluster: bool,
    /// The network config exactly as loaded (file bytes, or the inline delegate).
    pub config: String,
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    #[serde(default)]
    pub cni_args: Map<String, Value>,
    /// The final ADD result, as the network's last plugin printed it; absent while pending.
    #[serde(default)]
    pub result: Option<Value>,
    /// The device-info file the CNI was asked to write (NPWG device-info); removed on DEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info_file: Option<String>,
}

/// The cache rooted at `<cniDir>/plexus`.
#[derive(Debug, Clone)]
pub struct ResultCache {
    root: PathBuf,
}

/// An exclusive lock on one (container, ifname); released on drop.
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

pub enum Loaded {
    Missing,
    Found(Record),
    /// The file exists but is not a record we can use; the reason is given.
    Unreadable(String),
}

impl ResultCache {
    pub fn new(cni_dir: &Path) -> ResultCache {
        ResultCache {
            root: cni_dir.join("plexus"),
        }
    }

    fn key(container_id: &str, ifname: &str) -> String {
        format!("{container_id}-{ifname}")
    }

    pub fn record_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.root
            .join("attachments")
            .join(format!("{}.json", Self::key(container_id, ifname)))
    }

    fn ensure_dir(dir: &Path) -> Result<(), CniError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error(format!("creating {}", dir.display()), e))
    }

    /// Take the per-attachment lock. A lock file unlinked by a finishing DEL while we waited is
    /// detected (different inode) and the lock is taken again on the new file.
    pub fn lock(&self, container_id: &str, ifname: &str) -> Result<Lock, CniError> {
        let dir = self.root.join("locks");
        let path = dir.join(format!("{}.lock", Self::key(container_id, ifname)));
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
        };
        loop {
            let file = match open() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Self::ensure_dir(&dir)?;
                    open()
                }
                other => other,
            }
            .map_err(|e| io_error(format!("opening lock {}", path.display()), e))?;
            file.lock()
                .map_err(|e| io_error(format!("locking {}", path.display()), e))?;
            let held = file.metadata().map_err(|e| io_error("stat lock", e))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Lock { file, path })
                }
                _ => continue,
            }
        }
    }

    pub fn load(&self, container_id: &str, ifname: &str) -> Loaded {
        Self::load_path(&self.record_path(container_id, ifname))
    }

    fn load_path(path: &Path) -> Loaded {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Unreadable(format!("{}: {e}", path.display())),
        };
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.kind == KIND => Loaded::Found(r),
            Ok(r) => Loaded::Unreadable(format!("{}: unknown kind \"{}\"", path.display(), r.kind)),
            Err(e) => Loaded::Unreadable(format!("{}: {e}", path.display())),
        }
    }

    /// Write a record atomically: temp file, rename; fsync the data first when `durable`.
    pub fn store(&self, record: &Record) -> Result<(), CniError> {
        self.write(record, false)
    }

    /// [`ResultCache::store`], fsynced: the record a finished ADD leaves.
    pub fn store_durable(&self, record: &Record) -> Result<(), CniError> {
        self.write(record, true)
    }

    fn write(&self, record: &Record, durable: bool) -> Result<(), CniError> {
        let dir = self.root.join("attachments");
        let path = self.record_path(&record.container_id, &record.if_name);
        let bytes = serde_json::to_vec(record).expect("record serializes");
        let write = || -> std::io::Result<()> {
            // Directories are made on first use only: a mkdir per write is measurable.
            let mut tmp = match tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Self::ensure_dir(&dir).map_err(|e| std::io::Error::other(e.msg))?;
                    tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir)?
                }
                other => other?,
            };
            tmp.write_all(&bytes)?;
            if durable {
                tmp.as_file().sync_data()?;
            }
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| io_error(format!("writing cache {}", path.display()), e))
    }

    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.record_path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Every record in the cache (for GC). Unreadable files are returned with their path.
    pub fn all(&self) -> Vec<(PathBuf, Loaded)> {
        let Ok(rd) = std::fs::read_dir(self.root.join("attachments")) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            kind: KIND.into(),
            container_id: id.into(),
            if_name: "eth0".into(),
            netns: "/n".into(),
            cni_args: String::new(),
            cni_version: "1.1.0".into(),
            attachments: vec![CachedAttachment {
                network: "a".into(),
                ifname: "eth0".into(),
                cluster: true,
                config: r#"{"name":"a", "type":"bridge"}"#.into(),
                capability_args: Map::new(),
                cni_args: Map::new(),
                result: None,
                device_info_file: None,
            }],
            del_attempts: 0,
        }
    }

    #[test]
    fn store_load_remove() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        assert!(matches!(c.load("x", "eth0"), Loaded::Missing));
        c.store(&record("x")).unwrap();
        match c.load("x", "eth0") {
            Loaded::Found(r) => assert_eq!(r, record("x")),
            _ => panic!("not found"),
        }
        // The config bytes survive exactly, spacing included.
        let raw = std::fs::read_to_string(c.record_path("x", "eth0")).unwrap();
        assert!(raw.contains(r#""{\"name\":\"a\", \"type\":\"bridge\"}""#));
        c.remove("x", "eth0").unwrap();
        c.remove("x", "eth0").unwrap();
        assert!(matches!(c.load("x", "eth0"), Loaded::Missing));
    }

    #[test]
    fn truncated_and_foreign_files_are_unreadable_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        c.store(&record("x")).unwrap();
        let p = c.record_path("x", "eth0");
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() / 2]).unwrap();
        assert!(matches!(c.load("x", "eth0"), Loaded::Unreadable(_)));
        std::fs::write(
            &p,
            r#"{"kind":"cniCacheV1","containerId":"x","ifName":"eth0","cniVersion":"1.0.0"}"#,
        )
        .unwrap();
        assert!(matches!(c.load("x", "eth0"), Loaded::Unreadable(m) if m.contains("cniCacheV1")));
        std::fs::write(c.record_path("y", "eth0"), b"\xff\xfe").unwrap();
        assert_eq!(c.all().len(), 2);
    }

    #[test]
    fn lock_is_exclusive_and_survives_unlink() {
        let d = tempfile::tempdir().unwrap();
        let c = ResultCache::new(d.path());
        let l = c.lock("x", "eth0").unwrap();
        let c2 = c.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let l2 = c2.lock("x", "eth0").unwrap();
            tx.send(()).unwrap();
            l2.remove();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "second lock taken while held"
        );
        l.remove();
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
