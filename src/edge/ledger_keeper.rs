//! Keeps the usage ledger in step with the process: SIGHUP reopens it (after logrotate renamed
//! it). Draining it at shutdown is `drain.rs`'s job.

use crate::usage::ledger::Ledger;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

pub struct LedgerKeeper {
    pub ledger: Arc<Ledger>,
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
    }
}
