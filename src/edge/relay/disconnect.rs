//! Closing the upstream of a client that left, promptly even when thousands leave at once.
//!
//! A provider keeps generating (and billing) until it sees its connection close, so that close
//! comes first. When many clients leave together (a deploy, a network blip, a load balancer
//! dropping its connections), every woken stream would otherwise do its close and then its
//! end-of-stream bookkeeping (usage record, access log, closing the client socket), and the
//! runtime's fair queue would make the last closes wait behind thousands of bookkeepings. So a
//! stream whose client left closes its upstream, yields, and — only during such a burst — holds
//! its bookkeeping until the burst is over: until no other stream has closed an upstream for
//! [`QUIET_GAP`], and never longer than [`LONGEST_HOLD`]. A lone disconnect only yields once.

use crate::limits::StreamLease;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A burst is over when no upstream was closed for a client that left for this long (longer
/// than the time slice the OS may take a busy machine's CPU away for).
const QUIET_GAP: Duration = Duration::from_millis(20);
/// Longest a stream's bookkeeping waits for a burst to end. Its stream slot is released before.
const LONGEST_HOLD: Duration = Duration::from_secs(1);

/// Upstream connections closed because their client left, ever.
static CLOSED: AtomicU64 = AtomicU64::new(0);
/// Whether one of the waiting streams is watching for the burst to end.
static WATCHING: AtomicBool = AtomicBool::new(false);
/// Wakes every waiting stream when the burst is over.
static QUIET: Notify = Notify::const_new();

/// Closes `upstream` (by dropping it), releases the stream's slot, and returns when the stream
/// may do its bookkeeping.
pub async fn close_upstream_of_left_client<S>(upstream: S, lease: Option<StreamLease>) {
    drop(upstream);
    drop(lease);
    let mine = CLOSED.fetch_add(1, Ordering::Relaxed) + 1;
    // Streams already woken close their upstreams before this one goes on.
    tokio::task::yield_now().await;
    if CLOSED.load(Ordering::Relaxed) == mine {
        // Nobody else closed meanwhile: not a burst.
        return;
    }
    let mut quiet = pin!(QUIET.notified());
    // Registered before looking at WATCHING: a watcher that ends from now on wakes this stream.
    quiet.as_mut().enable();
    if WATCHING.swap(true, Ordering::AcqRel) {
        quiet.await;
    } else {
        watch_until_quiet().await;
    }
}

/// Waits until the burst is over, then wakes every stream waiting for it (also when this
/// future is dropped midway, e.g. at shutdown).
async fn watch_until_quiet() {
    struct Watch;
    impl Drop for Watch {
        fn drop(&mut self) {
            WATCHING.store(false, Ordering::Release);
            QUIET.notify_waiters();
        }
    }
    let _watch = Watch;
    let started = Instant::now();
    loop {
        let before = CLOSED.load(Ordering::Relaxed);
        tokio::time::sleep(QUIET_GAP).await;
        if CLOSED.load(Ordering::Relaxed) == before || started.elapsed() >= LONGEST_HOLD {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_leaving_clients_all_finish() {
        let tasks: Vec<_> = (0..500)
            .map(|_| tokio::spawn(close_upstream_of_left_client((), None)))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_lone_disconnect_only_yields() {
        close_upstream_of_left_client((), None).await;
    }
}
