//! A keys file that can be reloaded while the proxy runs: readers take the current store
//! without locking; a reload swaps in a new one only when the file parses.

use super::{KeyStore, KeysFileError};
use arc_swap::{ArcSwap, Guard};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub struct KeysFile {
    path: PathBuf,
    store: ArcSwap<KeyStore>,
    /// The stamp of the file as last read, or `None` after the file could not be read. Also
    /// serialises reloads (SIGHUP and the poller may race).
    last: Mutex<Option<Stamp>>,
}

/// What tells a changed file apart without reading it: an in-place edit moves mtime and
/// usually the length, an atomic rename-over changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Stamp {
            mtime: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

impl KeysFile {
    /// Loads the file; unlike a reload, this first load must succeed.
    pub fn open(path: &Path) -> Result<KeysFile, KeysFileError> {
        let read_error = |source| KeysFileError::Read {
            path: path.display().to_string(),
            source,
        };
        // Stamped before reading: a change that lands during the read is seen by the next poll.
        let stamp = Stamp::of(path).map_err(read_error)?;
        let store = KeyStore::load(path)?;
        Ok(KeysFile {
            path: path.to_path_buf(),
            store: ArcSwap::from_pointee(store),
            last: Mutex::new(Some(stamp)),
        })
    }

    /// The store as of the last successful load.
    pub fn current(&self) -> Guard<Arc<KeyStore>> {
        self.store.load()
    }

    /// Reloads now (SIGHUP); on error the previous store stays and the error is returned.
    /// Returns the number of keys loaded.
    pub fn reload(&self) -> Result<usize, KeysFileError> {
        self.reload_inner(true)
            .map(|loaded| loaded.expect("a forced reload always reads the file"))
    }

    /// Reloads only when the file's (mtime, len, inode) stamp changed since it was last read;
    /// `Ok(None)` when unchanged. A file that failed to parse is not retried until it changes,
    /// and an unreadable file reports its error once, so a poller logs each problem once.
    pub fn reload_if_changed(&self) -> Result<Option<usize>, KeysFileError> {
        self.reload_inner(false)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reload_inner(&self, force: bool) -> Result<Option<usize>, KeysFileError> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let read = Stamp::of(&self.path).and_then(|stamp| {
            if !force && *last == Some(stamp) {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&self.path)?;
            Ok(Some((stamp, text)))
        });
        let (stamp, text) = match read {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(None),
            Err(source) => {
                let already_reported = last.is_none();
                *last = None;
                return if already_reported && !force {
                    Ok(None)
                } else {
                    Err(KeysFileError::Read {
                        path: self.path.display().to_string(),
                        source,
                    })
                };
            }
        };
        // A writer still at work (the stamp moved while we read) may have left us half a file;
        // the next poll reads it again once it settles.
        if !force && Stamp::of(&self.path).ok() != Some(stamp) {
            return Ok(None);
        }
        *last = Some(stamp);
        let store = KeyStore::parse(&text, &self.path.display().to_string())?;
        let keys = store.len();
        self.store.store(Arc::new(store));
        Ok(Some(keys))
    }
}

impl std::fmt::Debug for KeysFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysFile")
            .field("path", &self.path)
            .field("keys", &self.current().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyDigest;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A path in the temp dir unique to this process and call; removed on drop.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> TempPath {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("sluice-auth-{tag}-{}-{n}.yaml", std::process::id());
            TempPath(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn keys_text(entries: &[(&str, &str)]) -> String {
        let mut text = String::from("keys:\n");
        for (key, user) in entries {
            let hex = KeyDigest::of(key).to_hex();
            text.push_str(&format!(
                "  - {{ sha256: {hex}, user: {user}, key_id: {user}-k }}\n"
            ));
        }
        text
    }

    fn user_of(file: &KeysFile, key: &str) -> Option<String> {
        file.current()
            .lookup(&KeyDigest::of(key))
            .map(|identity| identity.user.clone())
    }

    #[test]
    fn open_requires_a_good_file() {
        let path = TempPath::new("open");
        assert!(matches!(
            KeysFile::open(&path.0),
            Err(KeysFileError::Read { .. })
        ));
        std::fs::write(&path.0, "keys: [nope]\n").unwrap();
        assert!(matches!(
            KeysFile::open(&path.0),
            Err(KeysFileError::Invalid { .. })
        ));
        std::fs::write(&path.0, keys_text(&[("ka", "alice")])).unwrap();
        let file = KeysFile::open(&path.0).unwrap();
        assert_eq!(file.path(), path.0.as_path());
        assert_eq!(user_of(&file, "ka").as_deref(), Some("alice"));
    }

    #[test]
    fn reload_keeps_the_old_store_on_a_bad_file_and_picks_up_a_good_change() {
        let path = TempPath::new("reload");
        std::fs::write(&path.0, keys_text(&[("ka", "alice")])).unwrap();
        let file = KeysFile::open(&path.0).unwrap();

        std::fs::write(&path.0, "keys:\n  - { sha256: zz, user: x, key_id: y }\n").unwrap();
        let err = file.reload().unwrap_err().to_string();
        assert!(err.contains("keys[0].sha256"), "{err}");
        assert_eq!(user_of(&file, "ka").as_deref(), Some("alice"));

        std::fs::write(&path.0, keys_text(&[("ka", "alice"), ("kb", "bob")])).unwrap();
        assert_eq!(file.reload().unwrap(), 2);
        assert_eq!(user_of(&file, "kb").as_deref(), Some("bob"));

        std::fs::remove_file(&path.0).unwrap();
        assert!(matches!(file.reload(), Err(KeysFileError::Read { .. })));
        assert_eq!(file.current().len(), 2);
    }

    #[test]
    fn reload_if_changed_reads_only_changed_files_and_reports_each_problem_once() {
        let path = TempPath::new("poll");
        std::fs::write(&path.0, keys_text(&[("ka", "alice")])).unwrap();
        let file = KeysFile::open(&path.0).unwrap();
        assert_eq!(file.reload_if_changed().unwrap(), None);

        std::fs::write(&path.0, keys_text(&[("ka", "alice"), ("kb", "bob")])).unwrap();
        assert_eq!(file.reload_if_changed().unwrap(), Some(2));
        assert_eq!(file.reload_if_changed().unwrap(), None);
        assert_eq!(user_of(&file, "kb").as_deref(), Some("bob"));

        // A bad file: one error, then quiet until it changes, and the old keys still work.
        std::fs::write(&path.0, "keys: 3\n").unwrap();
        assert!(file.reload_if_changed().is_err());
        assert_eq!(file.reload_if_changed().unwrap(), None);
        assert_eq!(user_of(&file, "kb").as_deref(), Some("bob"));

        // A missing file: likewise one error.
        std::fs::remove_file(&path.0).unwrap();
        assert!(matches!(
            file.reload_if_changed(),
            Err(KeysFileError::Read { .. })
        ));
        assert_eq!(file.reload_if_changed().unwrap(), None);
        assert_eq!(file.current().len(), 2);

        // Back again, as a new file (new inode), with one key removed.
        std::fs::write(&path.0, keys_text(&[("kb", "bob")])).unwrap();
        assert_eq!(file.reload_if_changed().unwrap(), Some(1));
        assert_eq!(user_of(&file, "ka"), None);
    }

    #[test]
    fn a_reader_keeps_its_snapshot_across_a_reload() {
        let path = TempPath::new("snapshot");
        std::fs::write(&path.0, keys_text(&[("ka", "alice")])).unwrap();
        let file = KeysFile::open(&path.0).unwrap();
        let before = file.current();
        std::fs::write(&path.0, keys_text(&[("kb", "bob")])).unwrap();
        file.reload().unwrap();
        assert!(before.lookup(&KeyDigest::of("ka")).is_some());
        assert!(file.current().lookup(&KeyDigest::of("ka")).is_none());
    }
}
