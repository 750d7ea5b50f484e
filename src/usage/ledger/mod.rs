//! The usage ledger: an append-only JSON-lines file written by group commit.
//!
//! Records arrive already serialized (one JSON value, no trailing newline); the ledger knows
//! nothing of their type and adds the `\n`.
//!
//! **Group commit.** One dedicated writer thread (blocking `fsync` stays off the async runtime)
//! takes everything queued, up to `max_batch_bytes`, writes it with one `write_all`, calls
//! `sync_data` once and then wakes every waiter of that batch. A durable record is written at
//! once: while one fsync runs the next batch fills by itself, so its waiter waits at most for the
//! batch ahead of it plus its own. Records nobody waits for are gathered for up to `max_delay`
//! (or until the queue is half full, or a durable record comes): one fsync per lone record
//! costs a stream's end about 100 µs of kernel time and several context switches. The queue
//! holds at most `max_batch_bytes` (a byte semaphore): beyond that, appenders wait for room
//! (backpressure), so memory stays under about twice that bound.
//!
//! **Durability.** [`Ledger::append_durable`] resolves once the record is fsynced;
//! [`Ledger::append`] resolves once it is queued and rides the same batches. Both queue the
//! record at call time when there is room, so dropping the returned future does not unqueue
//! it; only under backpressure is the record queued when the future first runs.
//! A durable append's task is told through a socket its own runtime polls (`delivery.rs`), so
//! that the writer thread's wake does not send it through tokio's inject queue.
//!
//! **Failures.** A failed write or fsync is logged, counted and reported to every waiter not
//! yet durable (the batch and the queue), but their records stay queued and are retried with
//! exponential backoff (50 ms up to 5 s). Before a retry the file is truncated back to its last
//! fsynced length, so a half-written or unsynced batch is neither torn nor duplicated. An
//! error therefore means "not durable yet": callers must never append the record again.
//!
//! **Shutdown.** [`Ledger::shutdown`] (also run by `Drop`) blocks until everything queued is
//! written and fsynced. If the disk keeps failing it gives up after a few retries, logs each
//! unwritten record at error level (the last copy of it) and returns [`LedgerError::Unwritten`].
//!
//! **Rotation.** [`Ledger::reopen`] (on SIGHUP, after logrotate renamed the file) lets the
//! current batch finish in the old file and opens the path anew for the next one: every record
//! queued after `reopen` returns lands in the new file. With `rotate_bytes`, the writer rotates
//! numbered files like logrotate, between batches: `PATH.{keep-1}` → `PATH.{keep}` (the old
//! `PATH.{keep}` is deleted: retention), …, `PATH` → `PATH.1`, then continues in a fresh
//! `PATH`. Batches are cut so that a file never exceeds `rotate_bytes` (unless a single record
//! does) and a record is never split across files. If the path no longer names the open file
//! (renamed without SIGHUP), the writer just opens the path anew instead of shifting files.
//! logrotate's `copytruncate` is not supported: use `create` plus a SIGHUP.
//!
//! **Torn lines.** On open, a file that does not end with `\n` (a crash mid-write) gets one, so
//! the next record starts on its own line; the torn line stays for humans to look at. Readers
//! should skip lines that are not valid JSON.
//!
//! One process, one ledger per file: two writers on the same path are not supported.

mod delivery;
mod file;
mod queue;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use self::delivery::Completion;
pub use self::file::numbered;
use self::file::LedgerFile;
use self::queue::{Admission, Counters, Shared, State};
use self::writer::Writer;

/// Where and how the ledger writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The JSON-lines file; its directory must exist. Default `usage.jsonl`.
    pub path: PathBuf,
    /// Rotate before the file would grow past this many bytes. Default `None` (never; use
    /// `reopen` with an external tool).
    pub rotate_bytes: Option<u64>,
    /// Rotated files kept (`PATH.1` newest … `PATH.{keep}` oldest). Default 5; at least 1 when
    /// `rotate_bytes` is set.
    pub keep: usize,
    /// Bytes written per batch, and bytes allowed to wait in the queue. Default 1 MiB.
    pub max_batch_bytes: usize,
    /// Longest a record appended without waiting ([`Ledger::append`]) stays queued before it is
    /// written. Default 50 ms. A durable append, a half-full queue, a reopen or shutdown writes
    /// everything queued at once.
    pub max_delay: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("usage.jsonl"),
            rotate_bytes: None,
            keep: 5,
            max_batch_bytes: 1 << 20,
            max_delay: Duration::from_millis(50),
        }
    }
}

impl LedgerConfig {
    /// The defaults, writing to `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), LedgerError> {
        let invalid = |reason| LedgerError::Config {
            path: self.path.clone(),
            reason,
        };
        if self.max_batch_bytes == 0 || self.max_batch_bytes > u32::MAX as usize {
            return Err(invalid("max_batch_bytes must be between 1 and 4 GiB"));
        }
        match self.rotate_bytes {
            Some(0) => Err(invalid("rotate_bytes must be positive")),
            Some(_) if self.keep == 0 => Err(invalid(
                "keep must be at least 1 with rotate_bytes, or rotation would delete fresh records",
            )),
            _ => Ok(()),
        }
    }
}

/// What went wrong; every variant names the ledger's path.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {}: directory {} does not exist", .path.display(), .dir.display())]
    MissingDirectory { path: PathBuf, dir: PathBuf },
    #[error("ledger {}: {op} failed: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("ledger {}: invalid config: {reason}", .path.display())]
    Config { path: PathBuf, reason: &'static str },
    #[error("ledger {}: rejected record: {reason}", .path.display())]
    InvalidRecord { path: PathBuf, reason: &'static str },
    #[error("ledger {} is shut down", .path.display())]
    Closed { path: PathBuf },
    #[error(
        "ledger {}: {records} records could not be written before shutdown (logged at error level)",
        .path.display()
    )]
    Unwritten { path: PathBuf, records: usize },
}

impl LedgerError {
    fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            op,
            source: Arc::new(source),
        }
    }
}

/// A snapshot of the ledger's counters (monotonic except `queue_len`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Records written and fsynced.
    pub records_written: u64,
    /// Batches committed (written and fsynced).
    pub batches: u64,
    /// `sync_data` calls on the ledger file, failed ones included.
    pub fsyncs: u64,
    /// Failed writes, fsyncs, opens and rotations.
    pub write_errors: u64,
    /// Size-based rotations done.
    pub rotations: u64,
    /// Records accepted but not yet durable (queued, in flight or awaiting retry).
    pub queue_len: usize,
}

/// The append-only usage ledger. Share it behind an `Arc`; dropping it drains the queue.
pub struct Ledger {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<Result<(), LedgerError>>>>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.shared.path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Ledger {
    /// Opens (creating with mode 0o640) the file, ends a torn last line, starts the writer.
    pub fn open(config: LedgerConfig) -> Result<Self, LedgerError> {
        config.validate()?;
        let file = LedgerFile::open(&config.path)?;
        let capacity = config.max_batch_bytes as u32;
        let shared = Arc::new(Shared {
            path: config.path.clone(),
            capacity,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            room: Arc::new(Semaphore::new(capacity as usize)),
            counters: Counters::default(),
        });
        let writer = Writer::new(Arc::clone(&shared), config, file);
        let handle = std::thread::Builder::new()
            .name("sluice-ledger".into())
            .spawn(move || writer.run())
            .map_err(|err| LedgerError::io(&shared.path, "start writer thread", err))?;
        Ok(Self {
            shared,
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Appends a record and resolves once it is fsynced. An error means "not durable yet":
    /// the record stays queued for retry, so do not append it again. Called on a tokio runtime,
    /// that runtime needs its I/O driver (see `delivery.rs`).
    pub fn append_durable(
        &self,
        record: impl Into<Bytes>,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send + 'static {
        let (done, durable) = Completion::new();
        let admission = Admission::start(&self.shared, record.into(), Some(done));
        let shared = Arc::clone(&self.shared);
        async move {
            admission.queued().await?;
            durable.await.unwrap_or_else(|_| Err(shared.closed()))
        }
    }

    /// Appends a record and resolves once it is queued (immediately unless the queue is
    /// full); it is written and fsynced within `max_delay`, sooner if a batch goes first.
    pub fn append(
        &self,
        record: impl Into<Bytes>,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send + 'static {
        Admission::start(&self.shared, record.into(), None).queued()
    }

    /// Asks the writer to open the path anew after the batch in flight (call on SIGHUP once
    /// the file has been renamed). Returns at once; records queued from now on go to the
    /// new file, unless it cannot be opened (then they stay in the old one and it is retried).
    pub fn reopen(&self) {
        self.shared.lock().reopen = true;
        self.shared.wake.notify_all();
    }

    pub fn stats(&self) -> LedgerStats {
        let c = &self.shared.counters;
        LedgerStats {
            records_written: c.records_written.load(Relaxed),
            batches: c.batches.load(Relaxed),
            fsyncs: c.fsyncs.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
            rotations: c.rotations.load(Relaxed),
            queue_len: c.queued.load(Relaxed),
        }
    }

    /// Refuses new records, then blocks the calling thread until every queued record is
    /// written and fsynced (one batch plus a final fsync, normally milliseconds; about a
    /// second more on a failing disk). From async code prefer `spawn_blocking`. Idempotent.
    pub fn shutdown(&self) -> Result<(), LedgerError> {
        self.shared.room.close();
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match handle.map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => {
                log::error!(
                    "ledger {}: writer thread panicked",
                    self.shared.path.display()
                );
                Err(self.shared.closed())
            }
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            log::error!("{err}");
        }
    }
}
