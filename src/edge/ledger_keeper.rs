//! Keeps the usage ledger in step with the process: SIGHUP reopens it (after logrotate renamed
//! it), and at shutdown it is drained to disk once the streams still running have ended.

use crate::usage::ledger::Ledger;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Event streams in flight in this process, across routes.
pub static STREAMS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

pub struct LedgerKeeper {
    pub ledger: Arc<Ledger>,
    /// How long streams may run on after shutdown begins (the server's grace period).
    pub grace_period: Duration,
}

#[async_trait]
impl BackgroundService for LedgerKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        match signal(SignalKind::hangup()) {
            Ok(mut hangups) => loop {
                tokio::select! {
                    _ = hangups.recv() => {
                        log::warn!("SIGHUP: reopening the usage ledger {}", self.ledger.path().display());
                        self.ledger.reopen();
                    }
                    _ = shutdown.changed() => break,
                }
            },
            Err(e) => {
                log::error!("cannot watch SIGHUP, the ledger will not reopen on it: {e}");
                let _ = shutdown.changed().await;
            }
        }
        // The streams still running write their records as they end; then drain and fsync
        // whatever is queued (records of `durability: async`) before the process exits.
        let deadline = Instant::now() + self.grace_period;
        while STREAMS_IN_FLIGHT.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ledger = self.ledger.clone();
        match tokio::task::spawn_blocking(move || ledger.shutdown()).await {
            Ok(Ok(())) => log::info!("usage ledger drained"),
            Ok(Err(e)) => log::error!("usage ledger shutdown: {e}"),
            Err(e) => log::error!("usage ledger shutdown task failed: {e}"),
        }
    }
}
