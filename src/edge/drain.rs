//! Leaving cleanly: after SIGTERM (or SIGQUIT, once the listening sockets went to the new
//! process) the requests still running finish, then the usage ledger is flushed and the
//! limiter's Redis slots are handed back, and the process exits at once — not at the end of
//! Pingora's grace period, which only bounds how long the running requests may take.

use crate::limits::Limiter;
use crate::usage::ledger::Ledger;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests being handled by this process (each HTTP/2 stream is one).
static REQUESTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts one request for as long as it lives: owned by the request context, so every way out
/// of a request (including a panic or a cancelled task) ends it.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        REQUESTS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        REQUESTS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Drain {
    pub ledger: Option<Arc<Ledger>>,
    pub limiter: Limiter,
    /// Longest wait for running requests (the server's grace period).
    pub grace_period: Duration,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        let deadline = Instant::now() + self.grace_period;
        let waiting = REQUESTS_IN_FLIGHT.load(Ordering::Acquire);
        if waiting > 0 {
            log::warn!("shutting down: waiting for {waiting} requests to finish");
        }
        while REQUESTS_IN_FLIGHT.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = REQUESTS_IN_FLIGHT.load(Ordering::Acquire);
        if left > 0 {
            log::warn!("grace period over with {left} requests still running");
        }
        // Records of `durability: async` may still be queued: they reach the disk before exit.
        if let Some(ledger) = self.ledger.clone() {
            match tokio::task::spawn_blocking(move || ledger.shutdown()).await {
                Ok(Ok(())) => log::info!("usage ledger drained"),
                Ok(Err(e)) => log::error!("usage ledger shutdown: {e}"),
                Err(e) => log::error!("usage ledger shutdown task failed: {e}"),
            }
        }
        let limiter = self.limiter.clone();
        let _ = tokio::task::spawn_blocking(move || limiter.shutdown()).await;
        if left == 0 {
            log::warn!("all requests finished: exiting");
            std::process::exit(0);
        }
        // Requests still running past the grace period: Pingora stops the runtimes now.
    }
}
