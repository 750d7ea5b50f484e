//! Request waits on Pingora's clock thread instead of tokio's timer wheel.
//!
//! Arming a tokio timer that is due sooner than anything else on the runtime wakes the runtime's
//! reactor (an eventfd write, then an `epoll_wait` that returns at once): a fresh request armed
//! three such waits (keep-alive, response head, durable record), all long and almost never due.
//! Pingora's timers are shared per 10 ms tick in a per-thread tree that a clock thread (already
//! running for Pingora's own timeouts) walks every 10 ms; arming one takes no system call. They
//! fire up to ~20 ms late, which no wait here is sensitive to. Polling one takes its tick's lock,
//! so a relay's timer, polled on every chunk, stays a tokio timer (`stream_body::RelayTimer`).

use pingora::prelude::fast_timeout::{fast_sleep, fast_timeout};
use std::future::Future;
use std::time::{Duration, Instant};

/// The future did not finish in time.
#[derive(Debug)]
pub struct Elapsed;

/// Pingora adds the duration to the current instant unchecked: a wait too long for that (an
/// unlimited one is `Duration::MAX`) never ends.
fn endless(duration: Duration) -> bool {
    Instant::now().checked_add(duration).is_none()
}

pub async fn sleep(duration: Duration) {
    if endless(duration) {
        return std::future::pending().await;
    }
    fast_sleep(duration).await
}

pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    if endless(duration) {
        return Ok(future.await);
    }
    fast_timeout(duration, future).await.map_err(|_| Elapsed)
}
