//! The ledger file on disk: opening it, ending a torn last line, truncating a failed batch back
//! to the durable length, and renaming numbered files for rotation.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::LedgerError;

/// The open ledger file and how much of it is known to be on disk.
pub(super) struct LedgerFile {
    file: File,
    /// Bytes written and fsynced; a failed batch is truncated back to this.
    pub(super) synced_len: u64,
    /// Bytes past `synced_len` may be on the file (a batch failed mid-way).
    pub(super) dirty: bool,
}

impl LedgerFile {
    pub(super) fn open(path: &Path) -> Result<Self, LedgerError> {
        let dir = parent_dir(path);
        if !dir.is_dir() {
            return Err(LedgerError::MissingDirectory {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
            });
        }
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
        let mut file = options
            .open(path)
            .map_err(|err| LedgerError::io(path, "open", err))?;
        let synced_len = end_torn_line(&mut file, path)
            .map_err(|err| LedgerError::io(path, "repair torn last line", err))?;
        sync_dir(dir, path);
        Ok(Self {
            file,
            synced_len,
            dirty: false,
        })
    }

    /// Writes and fsyncs `buf`; on error the file may hold part of it until the next call.
    pub(super) fn append(
        &mut self,
        buf: &[u8],
        fsyncs: &AtomicU64,
    ) -> Result<(), (&'static str, io::Error)> {
        if self.dirty {
            self.truncate_to_synced().map_err(|err| ("truncate", err))?;
        }
        self.dirty = true;
        self.file.write_all(buf).map_err(|err| ("write", err))?;
        fsyncs.fetch_add(1, Relaxed);
        self.file.sync_data().map_err(|err| ("fsync", err))?;
        self.synced_len += buf.len() as u64;
        self.dirty = false;
        Ok(())
    }

    /// Drops a failed batch's bytes so its retry neither duplicates nor tears a record (after a
    /// failed fsync the kernel may have dropped those pages: rewriting them is the only fix).
    pub(super) fn truncate_to_synced(&mut self) -> io::Result<()> {
        let actual = self.file.metadata()?.len();
        if actual > self.synced_len {
            self.file.set_len(self.synced_len)?;
        } else {
            // Shrunk by someone else: never extend it with zeros.
            self.synced_len = actual;
        }
        self.dirty = false;
        Ok(())
    }

    /// Whether this file has no name left (removed, with its directory or alone): what is
    /// written to it is lost once it is closed.
    pub(super) fn is_removed(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            self.file.metadata().is_ok_and(|m| m.nlink() == 0)
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// Whether `path` still names this file (it may have been renamed under us).
    pub(super) fn is_at(&self, path: &Path) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            match (fs::metadata(path), self.file.metadata()) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            }
        }
        #[cfg(not(unix))]
        {
            path.exists()
        }
    }
}

/// Ends an unterminated last line; returns the file's length afterwards.
fn end_torn_line(file: &mut File, path: &Path) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    log::warn!(
        "ledger {}: last line is torn (a crash mid-write?); ending it so new records start on their own line",
        path.display()
    );
    file.write_all(b"\n")?;
    file.sync_data()?;
    Ok(len + 1)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Makes a new or renamed directory entry durable. Some filesystems refuse to fsync a
/// directory; that costs durability of the name only after an OS crash, so it just warns.
fn sync_dir(dir: &Path, path: &Path) {
    #[cfg(unix)]
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!(
            "ledger {}: fsync of directory {} failed: {err}",
            path.display(),
            dir.display()
        );
    }
    #[cfg(not(unix))]
    let _ = (dir, path);
}

/// `PATH.n`: where rotation moves the ledger's `n`-th older file.
pub fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// `PATH.{keep-1}` → `PATH.{keep}` … `PATH` → `PATH.1`; missing numbered files are skipped.
pub(super) fn shift_numbered(path: &Path, keep: usize) -> io::Result<()> {
    for n in (1..keep).rev() {
        match fs::rename(numbered(path, n), numbered(path, n + 1)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    fs::rename(path, numbered(path, 1))
}
