//! Keeps keys files in step with the process: they reload on SIGHUP and when they change on
//! disk (checked every 2 s).

use crate::auth::KeysFile;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// How often keys files are checked for changes: an operator who adds a key sees it work within
/// this long without sending a signal.
const KEYS_POLL: Duration = Duration::from_secs(2);

pub struct KeysKeeper {
    pub keys_files: Vec<Arc<KeysFile>>,
}

impl KeysKeeper {
    fn reload_all(&self, only_changed: bool) {
        for file in &self.keys_files {
            let path = file.path().display();
            let result = if only_changed {
                file.reload_if_changed()
            } else {
                file.reload().map(Some)
            };
            match result {
                Ok(Some(keys)) => log::warn!("keys file {path} reloaded: {keys} keys"),
                Ok(None) => {}
                Err(e) => log::error!("keys file {path} not reloaded, previous keys kept: {e}"),
            }
        }
    }
}

#[async_trait]
impl BackgroundService for KeysKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(e) => {
                log::error!("cannot watch SIGHUP, keys files reload only when they change: {e}");
                None
            }
        };
        let mut poll = tokio::time::interval(KEYS_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(_) = async { hangups.as_mut()?.recv().await } => self.reload_all(false),
                _ = poll.tick(), if !self.keys_files.is_empty() => self.reload_all(true),
                _ = shutdown.changed() => break,
            }
        }
    }
}
