//! The `sluice-limits` thread's work: renewal, releases, probing and recovery.

use super::{
    CallFailure, Cluster, Msg, Release, BATCH, FALLBACK, LEASES_LOST, MAX_PENDING_RELEASES,
    PROBE_EVERY, UP,
};
use log::warn;
use redis::aio::MultiplexedConnection;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

/// The work of the `sluice-limits` thread.
pub(super) struct Worker {
    pub(super) cluster: Arc<Cluster>,
    pub(super) rx: mpsc::UnboundedReceiver<Msg>,
    /// Releases that could not be sent (Redis down), oldest first.
    pub(super) pending: VecDeque<Release>,
}

impl Worker {
    pub(super) async fn run(mut self, ready: std_mpsc::SyncSender<()>) {
        if let Err(why) = self.recover(true).await {
            warn!(
                "limits: Redis at {} does not answer ({why}); counting limits on this instance \
                 alone until it does",
                self.cluster.addr
            );
            self.cluster.observer.fallback(true);
        }
        let _ = ready.send(());

        let period = (self.cluster.settings.lease_ttl / 3).max(Duration::from_millis(10));
        let start = tokio::time::Instant::now();
        let mut renew = tokio::time::interval_at(start + period, period);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut probe = tokio::time::interval_at(start + PROBE_EVERY, PROBE_EVERY);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let send_releases = loop {
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(Msg::Release(first)) => {
                        let mut batch = vec![first];
                        let mut stop = None;
                        while batch.len() < BATCH {
                            match self.rx.try_recv() {
                                Ok(Msg::Release(r)) => batch.push(r),
                                Ok(Msg::Shutdown { send_releases }) => {
                                    stop = Some(send_releases);
                                    break;
                                }
                                Ok(Msg::Renew) => self.renew_now().await,
                                Err(_) => break,
                            }
                        }
                        self.pending.extend(batch);
                        if let Some(send_releases) = stop {
                            break send_releases;
                        }
                        if self.cluster.is_up() {
                            self.flush_releases().await;
                        } else {
                            // Kept for the recovery, bounded in number.
                            self.trim_pending();
                        }
                    }
                    Some(Msg::Renew) => self.renew_now().await,
                    Some(Msg::Shutdown { send_releases }) => break send_releases,
                    None => break false,
                },
                _ = renew.tick() => {
                    if self.cluster.is_up() {
                        self.refresh().await;
                    }
                }
                _ = probe.tick() => self.probe().await,
            }
        };

        // Shutdown: send what is queued, best effort within the timeout, then stop.
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Release(r) = msg {
                self.pending.push_back(r);
            }
        }
        if send_releases {
            if let (Some(conn), false) = (self.cluster.connection(), self.pending.is_empty()) {
                let releases: Vec<Release> = self.pending.drain(..).collect();
                let _ = self.send_releases(conn, &releases).await;
            }
        }
        self.cluster.set_connection(None);
    }

    /// Once a second: while up, ask whether the marker is there (Redis answers, and has not
    /// lost this instance's leases); while in fallback, reconnect if needed and recover.
    async fn probe(&mut self) {
        match self.cluster.mode.load(Ordering::Acquire) {
            UP => {
                let found = self.on_shared(|conn| self.marker_present(conn)).await;
                self.after_marker_check(found.map_err(|f| f.message)).await;
            }
            // Not logged: it fails every second until Redis is back.
            FALLBACK => {
                let _ = self.recover(false).await;
            }
            _ => {}
        }
    }

    /// While up: whether the marker was there. A failure falls back (the probe recovers); a
    /// marker gone has the leases written back now, not at the next renewal (up to
    /// `lease_ttl / 3`), since until then the other instances count without them.
    async fn after_marker_check(&mut self, found: Result<bool, String>) {
        match found {
            Ok(true) => {}
            Ok(false) => {
                self.cluster.enter_fallback(LEASES_LOST);
                let _ = self.recover(false).await;
            }
            Err(e) => self.cluster.enter_fallback(&e),
        }
    }

    /// `Msg::Renew`: a recovery in fallback (an admission found the marker gone), a renewal
    /// when up (a lease admitted locally as the limiter returned to Redis).
    async fn renew_now(&mut self) {
        self.cluster.renew_asked.store(false, Ordering::Release);
        match self.cluster.mode.load(Ordering::Acquire) {
            FALLBACK => {
                let _ = self.recover(false).await;
            }
            UP => self.refresh().await,
            _ => {}
        }
    }

    /// A routine renewal while up.
    async fn refresh(&mut self) {
        let found = self
            .on_shared(|conn| self.renew_all(conn, Marker::Refresh))
            .await;
        self.after_marker_check(found.map_err(|f| f.message)).await;
    }

    async fn marker_present(&self, mut conn: MultiplexedConnection) -> Result<bool, CallFailure> {
        let marker = self.cluster.marker_key();
        self.cluster
            .timed(
                "probe",
                redis::cmd("GET")
                    .arg(&marker)
                    .query_async::<Option<String>>(&mut conn),
            )
            .await
            .map(|value| value.as_deref() == Some("1"))
    }

    /// `call` on the shared connection. One that finds it closed (`CLIENT KILL`, a Redis that
    /// drops its clients) goes once more on a new one before the caller falls back, as
    /// admissions do: a dropped connection alone costs no fallback (during which releases wait,
    /// and other instances count the streams they release).
    async fn on_shared<T, F>(
        &self,
        call: impl Fn(MultiplexedConnection) -> F,
    ) -> Result<T, CallFailure>
    where
        F: std::future::Future<Output = Result<T, CallFailure>>,
    {
        let failure = match self.cluster.connection() {
            Some(conn) => match call(conn).await {
                Err(failure) if failure.lost => failure,
                done => return done,
            },
            None => CallFailure {
                lost: true,
                message: "not connected".into(),
            },
        };
        match self.reconnect().await {
            Ok(fresh) => call(fresh).await,
            Err(_) => Err(failure),
        }
    }

    /// A new shared connection, by the call's `timeout`.
    async fn reconnect(&self) -> Result<MultiplexedConnection, String> {
        let deadline = tokio::time::Instant::now() + self.cluster.settings.timeout;
        let fresh = self.cluster.connect(deadline).await?;
        self.cluster.set_connection(Some(fresh.clone()));
        Ok(fresh)
    }

    async fn ping(&self, mut conn: MultiplexedConnection) -> Result<(), String> {
        let pong = self
            .cluster
            .timed("ping", redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map_err(|f| f.message)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("ping: unexpected answer {pong:?}"))
        }
    }

    /// Gets a connection that answers, loads the scripts, renews every held lease, sends the
    /// queued releases, and only then lets admissions use Redis again. The first step that
    /// failed, and why, if any did.
    async fn recover(&mut self, first: bool) -> Result<(), String> {
        let conn = match self.cluster.connection() {
            Some(conn) if self.ping(conn.clone()).await.is_ok() => conn,
            _ => {
                let conn = self.reconnect().await?;
                self.ping(conn.clone()).await?;
                conn
            }
        };
        let loaded = async {
            let mut c = conn.clone();
            self.cluster.admit_script.load_async(&mut c).await?;
            self.cluster.renew_script.load_async(&mut c).await
        };
        match tokio::time::timeout(self.cluster.settings.timeout, loaded).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("loading the scripts: {e}")),
            Err(_) => return Err("loading the scripts: no answer in time".into()),
        }
        let before = self.cluster.local_registrations.load(Ordering::SeqCst);
        match self.renew_all(conn.clone(), Marker::Write).await {
            Ok(true) => {}
            Ok(false) => return Err(LEASES_LOST.into()),
            Err(failure) => return Err(failure.message),
        }
        if !self.flush_releases().await {
            return Err("sending the queued releases failed".into());
        }
        self.cluster.leave_fallback(first);
        // A lease admitted locally while the renewal ran (its list read before) goes into Redis
        // now, not at the next renewal.
        if self.cluster.local_registrations.load(Ordering::SeqCst) != before {
            match self.renew_all(conn, Marker::Refresh).await {
                Ok(true) => {}
                Ok(false) => self.cluster.enter_fallback(LEASES_LOST),
                Err(failure) => self.cluster.enter_fallback(&failure.message),
            }
        }
        Ok(())
    }

    /// ZADDs every held lease again with a fresh expiry, and does `marker` with the marker in
    /// the last call. False when a refresh found the marker gone (Redis lost the leases).
    async fn renew_all(
        &self,
        conn: MultiplexedConnection,
        marker: Marker,
    ) -> Result<bool, CallFailure> {
        let entries: Vec<(String, String)> = {
            let held = self.cluster.lock_held();
            let mut entries = Vec::with_capacity(held.len() * 2);
            for (id, h) in held.iter() {
                for set in [&h.user_set, &h.key_set].into_iter().flatten() {
                    entries.push((set.clone(), self.cluster.member(*id)));
                }
            }
            entries
        };
        let ttl_ms = self.cluster.settings.lease_ttl.as_millis() as u64;
        let marker_key = self.cluster.marker_key();
        // One call even with no lease: it writes the marker (RENEW_LUA), last of all.
        let chunks: Vec<&[(String, String)]> = match entries.is_empty() {
            true => vec![&[]],
            false => entries.chunks(BATCH).collect(),
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut call = self.cluster.renew_script.prepare_invoke();
            // A recovery in several calls marks its start, so that its last call can tell
            // whether Redis lost the earlier calls' leases meanwhile.
            let what = match (marker, i == 0, i == last) {
                (Marker::Write, true, true) => MARKER_WRITE,
                (Marker::Write, true, false) => MARKER_BEGIN,
                (Marker::Write, false, true) => MARKER_FINISH,
                (Marker::Refresh, _, true) => MARKER_REFRESH,
                _ => MARKER_NONE,
            };
            call.key(&marker_key).arg(ttl_ms).arg(what);
            for (set, member) in chunk {
                call.key(set).arg(member);
            }
            let mut c = conn.clone();
            let renewed = self
                .cluster
                .timed("renew", call.invoke_async::<i64>(&mut c))
                .await?;
            if renewed < 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends the queued releases on the shared connection; false (in fallback, the rest kept
    /// for the recovery) if that failed.
    async fn flush_releases(&mut self) -> bool {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(BATCH);
            let batch: Vec<Release> = self.pending.drain(..n).collect();
            // A `ZREM` sent twice (`on_shared`) removes once.
            let sent = self
                .on_shared(|conn| self.send_releases(conn, &batch))
                .await;
            if let Err(failure) = sent {
                // Put them back in front, in order, and keep them for the recovery.
                for r in batch.into_iter().rev() {
                    self.pending.push_front(r);
                }
                self.trim_pending();
                self.cluster.enter_fallback(&failure.message);
                return false;
            }
        }
        true
    }

    async fn send_releases(
        &self,
        mut conn: MultiplexedConnection,
        releases: &[Release],
    ) -> Result<(), CallFailure> {
        let mut pipe = redis::pipe();
        for r in releases {
            let member = self.cluster.member(r.id);
            for set in [&r.held.user_set, &r.held.key_set].into_iter().flatten() {
                pipe.cmd("ZREM").arg(set).arg(&member).ignore();
            }
        }
        self.cluster
            .timed("release", pipe.query_async::<()>(&mut conn))
            .await
    }

    fn trim_pending(&mut self) {
        while self.pending.len() > MAX_PENDING_RELEASES {
            self.pending.pop_front();
        }
    }
}

/// What a renewal does with the marker.
#[derive(Clone, Copy)]
enum Marker {
    /// Keep it, if it is there: a routine renewal.
    Refresh,
    /// Write it once every lease this instance holds is renewed: the recovery.
    Write,
}

// `RENEW_LUA`'s ARGV[2].
const MARKER_NONE: u8 = 0;
const MARKER_REFRESH: u8 = 1;
const MARKER_WRITE: u8 = 2;
const MARKER_BEGIN: u8 = 3;
const MARKER_FINISH: u8 = 4;
