//! What SIGHUP and changed files reload, in one place: the usage ledger reopens (after
//! logrotate renamed it), keys files and TLS certificates load again. Keys files and
//! certificates are also checked for changes every 2 s, so an edit applies without a signal.
//! Whatever fails to load keeps what is in use and says why in the log.

use crate::auth::KeysFile;
use crate::usage::ledger::Ledger;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// How often files are checked for changes: an operator who edits one sees it apply within
/// this long.
const POLL: Duration = Duration::from_secs(2);

/// Something SIGHUP reloads.
pub trait Reloadable: Send + Sync {
    /// `on_signal`: SIGHUP (always reload); otherwise a poll (reload only what changed).
    fn reload(&self, on_signal: bool);
}

pub struct Reloader {
    pub items: Vec<Arc<dyn Reloadable>>,
}

impl Reloader {
    fn reload_all(&self, on_signal: bool) {
        for item in &self.items {
            item.reload(on_signal);
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(e) => {
                log::error!("cannot watch SIGHUP; files reload only when they change: {e}");
                None
            }
        };
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(_) = async { hangups.as_mut()?.recv().await } => self.reload_all(true),
                _ = poll.tick() => self.reload_all(false),
                _ = shutdown.changed() => break,
            }
        }
    }
}

impl Reloadable for Ledger {
    fn reload(&self, on_signal: bool) {
        if on_signal {
            log::warn!(
                "SIGHUP: reopening the usage ledger {}",
                self.path().display()
            );
            self.reopen();
        }
    }
}

impl Reloadable for KeysFile {
    fn reload(&self, on_signal: bool) {
        let path = self.path().display();
        let result = if on_signal {
            KeysFile::reload(self).map(Some)
        } else {
            self.reload_if_changed()
        };
        match result {
            Ok(Some(keys)) => log::warn!("keys file {path} reloaded: {keys} keys"),
            Ok(None) => {}
            Err(e) => log::error!("keys file {path} not reloaded, previous keys kept: {e}"),
        }
    }
}
