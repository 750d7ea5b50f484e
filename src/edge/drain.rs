//! Leaving cleanly: after SIGTERM (or SIGQUIT, once the listening sockets went to the new
//! process) the requests still running finish, then the usage ledger is flushed and the
//! limiter's Redis slots are handed back, and the process exits at once — not at the end of
//! Pingora's grace period, which only bounds how long the running requests may take (at the
//! soonest 1 s after the signal: the cleartext listeners accept for a request's arrival grace).
//!
//! Streams still running when the grace period is over are ended by Sluice, not cut by the
//! runtime stopping: each gets its terminal error event (or WebSocket Close frame) and its usage
//! record (`outcome: shutdown`) before the ledger is flushed.
//!
//! The admin listener answers until the process exits (`admin.rs`): `/readyz` reads
//! [`draining`], and an upgrade's old process stops accepting there once [`handed_over`].

use crate::limits::Limiter;
use crate::usage::ledger::Ledger;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long the streams that the end of the grace period ended get to write their end and
/// their usage record.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// Pingora's own grace period, after which it stops the runtimes (and every task on them): long
/// enough for Sluice to end the streams still running at the end of `grace_period` itself.
pub fn runtime_grace_seconds(grace_period: Duration) -> u64 {
    (grace_period + LAST_WORDS).as_secs() + 1
}

/// How long, once shutdown has begun, a request already on its way gets to arrive: the rest of a
/// head, or the first request of a connection made before the shutdown (its client sent it, or
/// is about to; closing the connection would refuse it). The cleartext listeners accept for this
/// long too: the kernel hands a connection over only with its first bytes (deferred accept).
const REQUEST_ARRIVAL_GRACE: Duration = Duration::from_secs(1);

/// When this process first saw its shutdown begin: every request's arrival grace counts from
/// there, so a client trickling a request in cannot stretch it.
static SHUTDOWN_SEEN: OnceLock<tokio::time::Instant> = OnceLock::new();

/// Set when SIGQUIT hands the listening sockets over to a new process (before Pingora's shutdown
/// begins): this process's shutdown is then an upgrade's, not a stop.
static HANDING_OVER: AtomicBool = AtomicBool::new(false);

/// Resolves once shutdown has begun at an upgrade, the sockets handed over (never otherwise).
pub async fn handed_over(shutdown: &mut ShutdownWatch) {
    shutdown_begun(shutdown).await;
    if !HANDING_OVER.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

/// Whether this process is shutting down for good (running requests finish, new ones go
/// elsewhere). Not at an upgrade: the new process serves the same addresses, and a health
/// checker's kept-alive connection to the old one must not read it as going away.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Acquire) && !HANDING_OVER.load(Ordering::Acquire)
}

static DRAINING: AtomicBool = AtomicBool::new(false);

/// Resolves once shutdown has begun (never, while the server runs).
pub async fn shutdown_begun(shutdown: &mut ShutdownWatch) {
    // An error means the sender is gone: the server is going away too.
    let _ = shutdown.wait_for(|down| *down).await;
}

/// Resolves [`REQUEST_ARRIVAL_GRACE`] after shutdown began (never, while the server runs).
pub async fn request_arrival_over(shutdown: &mut ShutdownWatch) {
    shutdown_begun(shutdown).await;
    let began = *SHUTDOWN_SEEN.get_or_init(tokio::time::Instant::now);
    tokio::time::sleep_until(began + REQUEST_ARRIVAL_GRACE).await;
}

/// Requests being handled by this process (each HTTP/2 stream is one), connections of Sluice's
/// own listeners from their accept until their first request is answered (an HTTP/2 client, by
/// ALPN or h2c preface: until its first request's grace is over), and those accept loops themselves
/// (so that nothing accepted goes uncounted): the process leaves when none is left.
static REQUESTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Set once the grace period is over: every stream still running ends now.
static GRACE_OVER: AtomicBool = AtomicBool::new(false);
static GRACE_OVER_NOTICE: Notify = Notify::const_new();

/// Resolves when the grace period of a shutdown is over (never, while the server runs).
pub async fn grace_over() {
    let mut notice = pin!(GRACE_OVER_NOTICE.notified());
    // Registered before the flag is read: an end of grace from now on wakes this future.
    notice.as_mut().enable();
    if GRACE_OVER.load(Ordering::Acquire) {
        return;
    }
    notice.await;
}

fn end_grace() {
    GRACE_OVER.store(true, Ordering::Release);
    GRACE_OVER_NOTICE.notify_waiters();
}

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
        DRAINING.store(true, Ordering::Release);
        let deadline = Instant::now() + self.grace_period;
        let waiting = REQUESTS_IN_FLIGHT.load(Ordering::Acquire);
        if waiting > 0 {
            // Requests, connections still owed their first answer and listeners in their
            // arrival grace all count: not a number of streams.
            log::warn!("shutting down: waiting for {waiting} requests, connections and listeners");
        }
        while REQUESTS_IN_FLIGHT.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut left = REQUESTS_IN_FLIGHT.load(Ordering::Acquire);
        if left > 0 {
            log::warn!(
                "grace period over with {left} requests and connections still running: ending them"
            );
            end_grace();
            let deadline = Instant::now() + LAST_WORDS;
            while REQUESTS_IN_FLIGHT.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            left = REQUESTS_IN_FLIGHT.load(Ordering::Acquire);
            if left > 0 {
                log::warn!("{left} requests did not end in {LAST_WORDS:?}");
            }
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

/// The signals that stop or hand over the process, for Pingora's server loop: as Pingora's own,
/// except that
/// - SIGINT (Ctrl-C in a terminal) is a graceful stop like SIGTERM. Pingora exits at once on it,
///   and the running streams' usage records would be lost with them. A second SIGINT does not
///   cut the grace short (SIGKILL does).
/// - SIGQUIT hands over only to a new process that is there to take the sockets (listening on
///   `upgrade_sock`, within [`UPGRADE_WAIT`]). Pingora's loop stops the process after a failed
///   hand-over as after a good one, so a new process that failed to start (or was never
///   started) left nothing listening.
pub(super) struct StopSignals {
    pub upgrade_sock: String,
}

/// How long SIGQUIT waits for a new process to listen on the upgrade socket (Pingora's old
/// process retries its hand-over for about as long).
const UPGRADE_WAIT: Duration = Duration::from_secs(5);

#[async_trait]
impl pingora::server::ShutdownSignalWatch for StopSignals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot watch for stop signals; stopping");
            return ShutdownSignal::GracefulTerminate;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    if upgrade_taker_within(&self.upgrade_sock, UPGRADE_WAIT).await {
                        HANDING_OVER.store(true, Ordering::Release);
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    log::error!(
                        "SIGQUIT: no new process is waiting on {} for the sockets (start it with -u); \
                         this one goes on serving",
                        self.upgrade_sock
                    );
                }
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => {
                    log::info!("SIGINT: stopping as on SIGTERM");
                    return ShutdownSignal::GracefulTerminate;
                }
            }
        }
    }
}

/// Whether a process listens on the unix socket `path` within `wait`. Read from the kernel's
/// table of unix sockets: connecting to find out would be taken for the hand-over itself.
async fn upgrade_taker_within(path: &str, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let absolute = std::path::absolute(path).ok();
    loop {
        let table = tokio::fs::read_to_string("/proc/net/unix")
            .await
            .unwrap_or_default();
        let found = listening_unix_paths(&table)
            .any(|p| p == path || absolute.as_deref() == Some(std::path::Path::new(p)));
        if found {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The paths of the listening sockets in `/proc/net/unix` (`Num RefCount Protocol Flags Type St
/// Inode Path`; a listening socket has `__SO_ACCEPTCON`, 0x10000, in its flags).
fn listening_unix_paths(table: &str) -> impl Iterator<Item = &str> {
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
        let path = fields.get(7)?;
        (flags & 0x10000 != 0).then_some(*path)
    })
}

#[cfg(test)]
mod stop_signal_tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_the_kernel_table() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 23041 /run/sluice/upgrade.sock\n\
            0000000000000000: 00000002 00000000 00000000 0001 03 23042 /run/other.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 23043\n\
            0000000000000000: 00000002 00000000 00010000 0005 01 23044 @abstract\n";
        let paths: Vec<&str> = listening_unix_paths(table).collect();
        assert_eq!(paths, ["/run/sluice/upgrade.sock", "@abstract"]);
    }

    #[tokio::test]
    async fn a_listener_on_the_path_is_found_and_none_is_not_invented() {
        let dir = std::env::temp_dir().join(format!("sluice-upgrade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("upgrade.sock");
        let path = path.to_str().unwrap();
        let _ = std::fs::remove_file(path);
        assert!(!upgrade_taker_within(path, Duration::from_millis(100)).await);
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        assert!(upgrade_taker_within(path, Duration::from_millis(100)).await);
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
