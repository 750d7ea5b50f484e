//! The writer thread: takes batches off the queue, writes and fsyncs them, rotates and reopens
//! between batches, and retries failures with backoff.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::delivery::Deliveries;
use super::file::{shift_numbered, LedgerFile};
use super::queue::{Entry, Shared};
use super::{LedgerConfig, LedgerError};

const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Failed attempts tolerated once shutdown has begun, before the rest is logged and abandoned.
const SHUTDOWN_ATTEMPTS: u32 = 5;

enum Work {
    /// Records wait; the first one takes this many bytes with its newline.
    Write(usize),
    /// Only a reopen was asked for.
    Reopen,
    Exit,
}

/// The writer thread: owns the file; batches, rotates, retries.
pub(super) struct Writer {
    shared: Arc<Shared>,
    config: LedgerConfig,
    file: LedgerFile,
    /// The path must be opened anew (reopen asked, or a rotation half done).
    reopen_pending: bool,
    shutdown_seen: bool,
    /// Records of failed batches, oldest first; retried before the queue.
    carry: VecDeque<Entry>,
    failures: u32,
    shutdown_failures: u32,
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, config: LedgerConfig, file: LedgerFile) -> Self {
        Self {
            shared,
            config,
            file,
            reopen_pending: false,
            shutdown_seen: false,
            carry: VecDeque::new(),
            failures: 0,
            shutdown_failures: 0,
            buf: Vec::new(),
        }
    }

    pub(super) fn run(mut self) -> Result<(), LedgerError> {
        loop {
            let next_len = match self.wait_for_work() {
                Work::Exit => return Ok(()),
                Work::Reopen => {
                    self.reopen();
                    continue;
                }
                Work::Write(len) => len,
            };
            self.maintain_file(next_len);
            let batch = self.take_batch();
            if batch.is_empty() {
                continue;
            }
            match self.commit(batch) {
                Ok(()) => self.failures = 0,
                Err(err) => {
                    if let Some(gave_up) = self.after_failure(err) {
                        return Err(gave_up);
                    }
                }
            }
        }
    }

    fn wait_for_work(&mut self) -> Work {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        loop {
            let fresh_reopen = std::mem::take(&mut state.reopen);
            self.reopen_pending |= fresh_reopen;
            self.shutdown_seen |= state.shutdown;
            if let Some(entry) = self.carry.front() {
                return Work::Write(entry.line.len() + 1);
            }
            let mut wait = None;
            if let Some(entry) = state.queue.front() {
                // A `max_delay` too long to add is no deadline: only `write_now` ends the wait.
                let due = state
                    .oldest
                    .and_then(|t| t.checked_add(self.config.max_delay));
                let left = due.map(|due| due.saturating_duration_since(Instant::now()));
                // A fresh reopen writes now; one that keeps failing waits like any batch.
                let due_now = left.is_some_and(|left| left.is_zero());
                if due_now || fresh_reopen || state.write_now(&shared) {
                    return Work::Write(entry.line.len() + 1);
                }
                wait = left;
            } else if state.shutdown {
                return Work::Exit;
            } else if fresh_reopen {
                // Only a fresh request: a failed reopen is retried with the next batch, not in a
                // loop.
                return Work::Reopen;
            }
            state.writer_idle = true;
            state = match wait {
                Some(left) => {
                    let waited = shared.wake.wait_timeout(state, left);
                    waited.unwrap_or_else(PoisonError::into_inner).0
                }
                None => shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
            state.writer_idle = false;
        }
    }

    /// Between batches: open the path anew if asked or if the open file is no longer at it,
    /// rotate if the next record would not fit.
    fn maintain_file(&mut self, next_len: usize) {
        // Renamed or removed by someone else: another Sluice rotating the same ledger (during an
        // upgrade both processes write it, and the old one's file would be shifted along and, past
        // `keep`, deleted under its writes), or logrotate before its SIGHUP. Records go to the
        // path, never to a file that is no longer there.
        if !self.reopen_pending && !self.file.is_at(&self.config.path) {
            self.reopen_pending = true;
        }
        if self.reopen_pending {
            self.reopen();
        }
        let Some(limit) = self.config.rotate_bytes else {
            return;
        };
        let len = self.file.synced_len;
        if self.reopen_pending || self.file.dirty || len == 0 || len + next_len as u64 <= limit {
            return;
        }
        if self.file.is_at(&self.config.path) {
            self.rotate();
        } else {
            // Renamed by someone else: shifting numbered files would rotate the wrong ones.
            self.reopen();
        }
    }

    fn rotate(&mut self) {
        if let Err(err) = shift_numbered(&self.config.path, self.config.keep) {
            self.count_error(&LedgerError::io(&self.config.path, "rotate", err));
            return;
        }
        self.shared.counters.rotations.fetch_add(1, Relaxed);
        // The open file is now PATH.1; batches keep going there until PATH opens.
        self.reopen_pending = true;
        self.reopen();
    }

    fn reopen(&mut self) {
        match LedgerFile::open(&self.config.path) {
            Ok(file) => {
                self.retire_file();
                self.file = file;
                self.reopen_pending = false;
            }
            Err(err) => self.count_error(&err),
        }
    }

    /// A failed batch's bytes must not stay in the old file, or its retry in the new one
    /// would duplicate them.
    fn retire_file(&mut self) {
        if self.file.dirty {
            if let Err(err) = self.file.truncate_to_synced() {
                log::error!(
                    "ledger {}: could not truncate the previous file after a failed batch, it may end with a partial or duplicate record: {err}",
                    self.config.path.display()
                );
            }
        }
    }

    fn count_error(&self, err: &LedgerError) {
        self.shared.counters.write_errors.fetch_add(1, Relaxed);
        log::error!("{err}");
    }

    /// Bytes this batch may take: `max_batch_bytes`, and no more than the room left before
    /// rotation (unless rotation failed, then batches go on at full size).
    fn batch_limit(&self) -> usize {
        let limit = self.config.max_batch_bytes;
        match self.config.rotate_bytes {
            Some(rotate) if self.file.synced_len < rotate => {
                let room = rotate - self.file.synced_len;
                limit.min(usize::try_from(room).unwrap_or(usize::MAX))
            }
            _ => limit,
        }
    }

    /// Carried-over records first, then the queue; always at least one record.
    fn take_batch(&mut self) -> Vec<Entry> {
        let limit = self.batch_limit();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let fits =
            |bytes: usize, entry: &Entry, first: bool| first || bytes + entry.line.len() < limit;
        while let Some(entry) = self.carry.front() {
            if !fits(bytes, entry, batch.is_empty()) {
                return batch;
            }
            bytes += entry.line.len() + 1;
            batch.extend(self.carry.pop_front());
        }
        let mut state = self.shared.lock();
        if state.reopen {
            // Everything queued after `reopen()` returned must go to the new file.
            return batch;
        }
        let mut released = 0;
        while let Some(entry) = state.queue.front() {
            if !fits(bytes, entry, batch.is_empty()) {
                break;
            }
            bytes += entry.line.len() + 1;
            released += entry.permits as usize;
            batch.extend(state.queue.pop_front());
        }
        // What stays (a full batch's remainder) keeps the oldest time: it is due already.
        state.urgent = state.queue.iter().any(|entry| entry.done.is_some());
        if state.queue.is_empty() {
            state.oldest = None;
        }
        drop(state);
        self.shared.room.add_permits(released);
        batch
    }

    fn commit(&mut self, batch: Vec<Entry>) -> Result<(), LedgerError> {
        // The path could not be opened again and the open file is gone from the disk (its
        // directory removed, say): records written there would be reported durable and lost.
        // They wait, and are retried, until the path opens.
        if self.reopen_pending && self.file.is_removed() {
            let gone = io::Error::new(
                io::ErrorKind::NotFound,
                "the ledger file was removed and its path cannot be opened again",
            );
            let err = LedgerError::io(&self.config.path, "reopen", gone);
            self.count_error(&err);
            self.requeue(batch, &err);
            return Err(err);
        }
        self.buf.clear();
        for entry in &batch {
            self.buf.extend_from_slice(&entry.line);
            self.buf.push(b'\n');
        }
        let counters = &self.shared.counters;
        if let Err((op, err)) = self.file.append(&self.buf, &counters.fsyncs) {
            let err = LedgerError::io(&self.config.path, op, err);
            self.count_error(&err);
            self.requeue(batch, &err);
            return Err(err);
        }
        counters
            .records_written
            .fetch_add(batch.len() as u64, Relaxed);
        counters.batches.fetch_add(1, Relaxed);
        counters.queued.fetch_sub(batch.len(), Relaxed);
        let mut deliveries = Deliveries::default();
        for done in batch.into_iter().filter_map(|entry| entry.done) {
            deliveries.add(done, Ok(()));
        }
        Ok(())
    }

    /// Tells every waiter not yet durable about the failure at once, and keeps the failed
    /// batch for the retry.
    fn requeue(&mut self, mut batch: Vec<Entry>, err: &LedgerError) {
        let mut deliveries = Deliveries::default();
        let mut state = self.shared.lock();
        for entry in batch.iter_mut().chain(state.queue.iter_mut()) {
            if let Some(done) = entry.done.take() {
                deliveries.add(done, Err(err.clone()));
            }
        }
        drop(state);
        for entry in batch.into_iter().rev() {
            self.carry.push_front(entry);
        }
    }

    /// Waits out the backoff; once shutting down, gives up after a few attempts.
    fn after_failure(&mut self, err: LedgerError) -> Option<LedgerError> {
        self.failures += 1;
        if self.shutdown_seen {
            self.shutdown_failures += 1;
            if self.shutdown_failures >= SHUTDOWN_ATTEMPTS {
                return Some(self.abandon(&err));
            }
        }
        let delay = BACKOFF_START
            .saturating_mul(1 << (self.failures - 1).min(10))
            .min(BACKOFF_MAX);
        let state = self.shared.lock();
        let seen = self.shutdown_seen;
        // A reopen (maybe the fix) or a shutdown cuts the wait short.
        let _ = self
            .shared
            .wake
            .wait_timeout_while(state, delay, |s| !s.reopen && s.shutdown == seen);
        None
    }

    /// The last resort at shutdown on a dead disk: the log gets the records.
    fn abandon(&mut self, err: &LedgerError) -> LedgerError {
        let mut state = self.shared.lock();
        let queued = std::mem::take(&mut state.queue);
        drop(state);
        let mut deliveries = Deliveries::default();
        let mut records = 0;
        for entry in self.carry.drain(..).chain(queued) {
            log::error!(
                "ledger {}: unwritten record after {err}: {}",
                self.config.path.display(),
                String::from_utf8_lossy(&entry.line)
            );
            if let Some(done) = entry.done {
                deliveries.add(done, Err(err.clone()));
            }
            records += 1;
        }
        self.shared.counters.queued.fetch_sub(records, Relaxed);
        LedgerError::Unwritten {
            path: self.config.path.clone(),
            records,
        }
    }
}
