//! The queue between appenders and the writer thread: records waiting to be written, the byte
//! semaphore that bounds them (backpressure), and the counters both sides update.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::delivery::Completion;
use super::LedgerError;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) records_written: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    pub(super) write_errors: AtomicU64,
    pub(super) rotations: AtomicU64,
    pub(super) queued: AtomicUsize,
}

pub(super) struct Entry {
    pub(super) line: Bytes,
    /// Queue bytes this record holds, given back when the writer takes it.
    pub(super) permits: u32,
    pub(super) done: Option<Completion>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) queue: VecDeque<Entry>,
    pub(super) reopen: bool,
    pub(super) shutdown: bool,
    pub(super) writer_idle: bool,
    /// When the queue last became non-empty: records nobody waits for are due `max_delay` later.
    pub(super) oldest: Option<Instant>,
    /// A durable record is queued: write now.
    pub(super) urgent: bool,
}

impl State {
    /// Queued records that must not wait for `max_delay`.
    pub(super) fn write_now(&self, shared: &Shared) -> bool {
        self.urgent || self.shutdown || self.reopen || shared.half_full()
    }
}

pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) capacity: u32,
    pub(super) state: Mutex<State>,
    pub(super) wake: Condvar,
    pub(super) room: Arc<Semaphore>,
    pub(super) counters: Counters,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the queue is still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Half the queue's bytes are taken: write before appenders run out of room.
    pub(super) fn half_full(&self) -> bool {
        let taken = (self.capacity as usize).saturating_sub(self.room.available_permits());
        taken * 2 >= self.capacity as usize
    }

    pub(super) fn closed(&self) -> LedgerError {
        LedgerError::Closed {
            path: self.path.clone(),
        }
    }

    fn check(&self, line: &[u8]) -> Result<(), LedgerError> {
        let reason = if line.is_empty() {
            "empty record"
        } else if memchr::memchr2(b'\n', b'\r', line).is_some() {
            "a record must be a single line (serialize it compactly)"
        } else {
            return Ok(());
        };
        Err(LedgerError::InvalidRecord {
            path: self.path.clone(),
            reason,
        })
    }

    /// Queue bytes a record holds; capped so that a record larger than the whole queue can
    /// still get in (alone) instead of waiting forever.
    fn permits_for(&self, line: &[u8]) -> u32 {
        u32::try_from(line.len() + 1).map_or(self.capacity, |n| n.min(self.capacity))
    }

    fn push(
        &self,
        line: Bytes,
        permit: OwnedSemaphorePermit,
        done: Option<Completion>,
    ) -> Result<(), LedgerError> {
        let mut state = self.lock();
        if state.shutdown {
            return Err(self.closed());
        }
        let permits = permit.num_permits() as u32;
        permit.forget();
        let first = state.queue.is_empty();
        if first {
            state.oldest = Some(Instant::now());
        }
        state.urgent |= done.is_some();
        state.queue.push_back(Entry {
            line,
            permits,
            done,
        });
        self.counters.queued.fetch_add(1, Relaxed);
        // A writer waiting out `max_delay` needs no wake for one more record that can wait too.
        if state.writer_idle && (first || state.write_now(self)) {
            state.writer_idle = false;
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// A record on its way into the queue: in already, or waiting for room.
pub(super) enum Admission {
    Done(Result<(), LedgerError>),
    Waiting {
        shared: Arc<Shared>,
        line: Bytes,
        permits: u32,
        done: Option<Completion>,
    },
}

impl Admission {
    pub(super) fn start(shared: &Arc<Shared>, line: Bytes, done: Option<Completion>) -> Self {
        if let Err(err) = shared.check(&line) {
            return Self::Done(Err(err));
        }
        let permits = shared.permits_for(&line);
        match Arc::clone(&shared.room).try_acquire_many_owned(permits) {
            Ok(permit) => Self::Done(shared.push(line, permit, done)),
            Err(TryAcquireError::Closed) => Self::Done(Err(shared.closed())),
            Err(TryAcquireError::NoPermits) => Self::Waiting {
                shared: Arc::clone(shared),
                line,
                permits,
                done,
            },
        }
    }

    pub(super) async fn queued(self) -> Result<(), LedgerError> {
        match self {
            Self::Done(result) => result,
            Self::Waiting {
                shared,
                line,
                permits,
                done,
            } => {
                let room = Arc::clone(&shared.room);
                let permit = room
                    .acquire_many_owned(permits)
                    .await
                    .map_err(|_| shared.closed())?;
                shared.push(line, permit, done)
            }
        }
    }
}
