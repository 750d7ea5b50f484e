//! The Redis backend: stream slots shared by every instance that uses the same Redis.
//!
//! Keys (`prefix` is `RedisSettings::key_prefix`):
//! - `{prefix}:u:{user}`, `{prefix}:k:{key_id}`: sorted sets of the stream ids holding a slot,
//!   scored by the lease's expiry (ms, Redis clock). Expired members are removed before every
//!   count, and the keys expire after `2 × lease_ttl` without use.
//! - `{prefix}:r:{user}`: the user's rate bucket, a hash `{t: ticks, ms: last update}` (the
//!   arithmetic of `bucket.rs`), expiring once it would be full again.
//! - `{prefix}:i:{instance}`: this instance's marker, written once every lease of the instance
//!   is in Redis (`Worker::recover`) and kept by every renewal (expiring after `2 × lease_ttl`).
//!   An admission that finds it missing (Redis restarted or was flushed: the leases are gone
//!   too) falls back instead of counting, so a restart never hands out this instance's slots
//!   again, and has the worker write the leases back at once. The probe (every second) and the
//!   renewal look for it too, so an instance that admits nothing still puts its leases back
//!   within a second of a restart, for the other instances' counts.
//!
//! Stream ids are `{instance}:{n}`: a random 8-hex instance id and a counter.
//!
//! One Lua script (`ADMIT_LUA` in `scripts.rs`, sent as EVALSHA) admits a request in one round
//! trip: it reads the time from Redis (`TIME`, so instances' clocks never matter), drops expired
//! leases, checks the user's and the key's counts, checks and takes the rate token, and on
//! success adds the stream id to both sets. A refusal changes nothing but the removal of
//! expired leases. The script touches a user's and a key's keys together, so it needs one
//! Redis (or a primary with replicas), not a sharded Redis Cluster.
//!
//! `global_streams` is not in Redis: it is each instance's own limit (its sockets and memory),
//! checked locally before Redis is asked.
//!
//! Admissions go out on a connection of the admitting thread's own (made on its first admission,
//! its driver a task of that thread's runtime): on the limiter's shared connection each
//! admission crossed to the limiter's thread and back, two cross-thread wake-ups that cost more
//! than the Redis round trip itself (first byte with limits in Redis: +284 against +91 µs
//! counted locally, load harness). A thread's connection is dropped for a fresh one when Redis
//! was found failing since it was made (`epoch`), when the thread runs another runtime, when it
//! has not been used for `lease_ttl`, and once when a call on it finds it closed (a Redis that
//! drops idle clients) before the limiter falls back; connect, call and that retry share one
//! `timeout`.
//!
//! Everything else runs on the thread `sluice-limits`, on its own single-threaded runtime (the
//! shared connection's driver too, so that connection lives as long as the limiter, whichever
//! runtimes call it): every `lease_ttl / 3` it renews every lease this instance holds with a
//! plain `ZADD` (re-creating leases Redis lost, e.g. after a fallback); it sends the `ZREM`s of
//! dropped leases, batched; and once a second it probes Redis, asking whether the marker is
//! there.
//!
//! Fallback: any failed or timed-out call (each has `timeout`) switches to local counting (one
//! `warn!`), except a call that finds its connection closed, which goes once more on a new one
//! first (admissions on their thread's connection; releases, renewals and the probe on the
//! shared one). Admissions then never touch Redis. The probe reconnects when needed; when Redis
//! answers, every held lease is renewed (so leases taken during the outage enter Redis), the
//! releases queued during the outage are sent, and admissions return to Redis (one `info!`).
//!
//! Releases while Redis is down: kept (up to [`MAX_PENDING_RELEASES`]) and sent on recovery,
//! however old: a lease a release removes has not always expired by then. An admission whose
//! call timed out against a stalled Redis (one that stopped answering, not one that went away)
//! is still queued there, and runs when Redis resumes, writing a lease for a stream that may have
//! ended long before; only its release, sent after the recovery's probe was answered (so after
//! the admission ran), removes it at once. So no outage, short or long, leaves dead slots
//! counted for up to `lease_ttl`; a `ZREM` of a lease that expired costs nothing.
//!
//! A `ZREM` can never overtake the renewal that re-adds the same lease: both run on the worker
//! task, one after the other, and a lease leaves the renewal set before its `ZREM` is queued.

mod scripts;
mod worker;

use super::{Claim, LimitsError, LimitsObserver, RedisSettings, Rejection};
use log::{info, warn};
use redis::aio::MultiplexedConnection;
use redis::{Client, RedisResult, Script};
use scripts::{ADMIT_LUA, RENEW_LUA};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use worker::Worker;

thread_local! {
    /// This thread's connection for admissions, what it was made for, and when it was last used.
    static ADMIT_CONN: RefCell<Option<(AdmitConnKey, MultiplexedConnection, Instant)>> =
        const { RefCell::new(None) };
}

/// A thread's admission connection is used again only by the same limiter (`Cluster::id`), in
/// the same `epoch`, on the runtime whose task drives it (a thread may run several runtimes one
/// after the other, or park one and drive another: a connection whose driver is not polled
/// would only time out).
#[derive(PartialEq, Eq, Clone, Copy)]
struct AdmitConnKey {
    cluster: u64,
    epoch: u64,
    runtime: tokio::runtime::Id,
}

/// Tells limiters apart in the threads' caches (a reload makes a new one; tests make many).
static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

const UP: u8 = 0;
const FALLBACK: u8 = 1;
const STOPPED: u8 = 2;

/// Releases kept while Redis is down (each is two short strings).
pub(crate) const MAX_PENDING_RELEASES: usize = 100_000;
/// Leases per renewal script call, and releases per pipeline.
const BATCH: usize = 512;
const PROBE_EVERY: Duration = Duration::from_secs(1);
const LEASES_LOST: &str = "it no longer holds this instance's leases (restarted or flushed?)";

/// Redis's answer to an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Cluster-wide streams of the user and the key after this admission.
    Admitted {
        user: Option<u32>,
        key: Option<u32>,
    },
    Refused(Rejection),
}

/// The sorted sets one lease is in.
#[derive(Debug, Clone)]
struct Held {
    user_set: Option<String>,
    key_set: Option<String>,
}

struct Release {
    id: u64,
    held: Held,
}

enum Msg {
    Release(Release),
    /// Write this instance's leases into Redis now, not at the next probe or renewal: a
    /// recovery in fallback (an admission found the marker gone), a renewal when up (a lease
    /// admitted locally just as the limiter returned to Redis).
    Renew,
    /// Stop; `send_releases` when Redis was up, so queued releases are worth a try.
    Shutdown {
        send_releases: bool,
    },
}

pub(crate) struct Cluster {
    settings: RedisSettings,
    client: Client,
    /// host:port, for logs (the URL may hold a password).
    addr: String,
    instance: String,
    next_id: AtomicU64,
    /// See `ADMIT_CONN`.
    id: u64,
    /// Bumped whenever admissions stop going to Redis: the threads' connections made before are
    /// not used again.
    epoch: AtomicU64,
    conn: Mutex<Option<MultiplexedConnection>>,
    mode: AtomicU8,
    /// Every lease this instance holds, by id: what the renewal renews.
    held: Mutex<HashMap<u64, Held>>,
    /// Bumped by every lease admitted locally, so a recovery can tell whether one was taken
    /// while it renewed a list read before.
    local_registrations: AtomicU64,
    /// A `Msg::Renew` is on its way (one at a time).
    renew_asked: AtomicBool,
    tx: mpsc::UnboundedSender<Msg>,
    observer: Arc<dyn LimitsObserver>,
    admit_script: Script,
    renew_script: Script,
}

impl Cluster {
    /// Checks the settings, starts the `sluice-limits` thread and waits (at most `timeout`
    /// and a little) for its first connection; without one the limiter starts in fallback.
    pub fn start(
        settings: RedisSettings,
        observer: Arc<dyn LimitsObserver>,
    ) -> Result<(Arc<Cluster>, JoinHandle<()>), LimitsError> {
        if settings.timeout.is_zero() {
            return Err(LimitsError::RedisSettings("timeout must be above 0".into()));
        }
        if settings.lease_ttl < settings.timeout * 3 {
            return Err(LimitsError::RedisSettings(
                "lease_ttl must be at least 3 × timeout (leases are renewed every lease_ttl / 3)"
                    .into(),
            ));
        }
        let client = match &settings.tls_roots {
            Some(roots) if settings.url.starts_with("rediss://") => Client::build_with_tls(
                settings.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(roots.clone()),
                },
            ),
            _ => Client::open(settings.url.as_str()),
        }
        .map_err(|e| LimitsError::RedisUrl(e.to_string()))?;
        let addr = client.get_connection_info().addr.to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            client,
            addr,
            instance: instance_id(),
            next_id: AtomicU64::new(1),
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            epoch: AtomicU64::new(0),
            conn: Mutex::new(None),
            mode: AtomicU8::new(FALLBACK),
            held: Mutex::new(HashMap::new()),
            local_registrations: AtomicU64::new(0),
            renew_asked: AtomicBool::new(false),
            tx,
            observer,
            admit_script: Script::new(ADMIT_LUA),
            renew_script: Script::new(RENEW_LUA),
            settings,
        });
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let worker = Worker {
            cluster: cluster.clone(),
            rx,
            pending: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("sluice-limits".into())
            .spawn(move || runtime.block_on(worker.run(ready_tx)))?;
        let _ = ready_rx.recv_timeout(cluster.settings.timeout * 2 + Duration::from_millis(100));
        Ok((cluster, thread))
    }

    /// True while admissions go to Redis.
    pub fn is_up(&self) -> bool {
        self.mode.load(Ordering::Acquire) == UP
    }

    pub fn backend_name(&self) -> &'static str {
        if self.is_up() {
            "redis"
        } else {
            "redis-fallback"
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn member(&self, id: u64) -> String {
        format!("{}:{id}", self.instance)
    }

    fn user_set(&self, user: &str) -> String {
        format!("{}:u:{user}", self.settings.key_prefix)
    }

    fn key_set(&self, key: &str) -> String {
        format!("{}:k:{key}", self.settings.key_prefix)
    }

    fn rate_key(&self, user: &str) -> String {
        format!("{}:r:{user}", self.settings.key_prefix)
    }

    /// Present while Redis holds every lease of this instance (`RENEW_LUA`).
    fn marker_key(&self) -> String {
        format!("{}:i:{}", self.settings.key_prefix, self.instance)
    }

    fn held_for(&self, user: Option<&str>, key: Option<&str>) -> Held {
        Held {
            user_set: user.map(|u| self.user_set(u)),
            key_set: key.map(|k| self.key_set(k)),
        }
    }

    fn lock_held(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_connection(&self, conn: Option<MultiplexedConnection>) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// This thread's connection for admissions, and whether it was made before this call.
    async fn admit_connection(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(MultiplexedConnection, bool), String> {
        let key = AdmitConnKey {
            cluster: self.id,
            epoch: self.epoch.load(Ordering::Acquire),
            runtime: tokio::runtime::Handle::current().id(),
        };
        let now = Instant::now();
        // Unused for a lease's life, it is replaced: unlike the shared connection (pinged every
        // second), nothing else keeps it busy, and a NAT or load balancer on the way may have
        // dropped the idle flow without a word, which would cost the next admission a timeout
        // and the limiter a fallback.
        let cached = ADMIT_CONN.with(|cell| match &mut *cell.borrow_mut() {
            Some((made_for, conn, used)) if *made_for == key => {
                let fresh = now.duration_since(*used) < self.settings.lease_ttl;
                *used = now;
                fresh.then(|| conn.clone())
            }
            _ => None,
        });
        if let Some(conn) = cached {
            return Ok((conn, true));
        }
        let conn = self.connect(deadline).await?;
        ADMIT_CONN.with(|cell| *cell.borrow_mut() = Some((key, conn.clone(), now)));
        Ok((conn, false))
    }

    /// The admission script's answer, on this thread's connection, all within one `timeout`
    /// (connect, call and retry share one deadline, and every call is reported to the observer).
    async fn invoke_admit(&self, call: &redis::ScriptInvocation<'_>) -> Result<Vec<i64>, String> {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let (mut conn, cached) = self.admit_connection(deadline).await?;
        match self
            .timed_call("admit", deadline, call.invoke_async(&mut conn))
            .await
        {
            Ok(reply) => Ok(reply),
            // Closed since this thread made it (a Redis that drops idle clients): once more on a
            // fresh one before falling back, unless another admission already found Redis
            // failing. Sent twice, the script admits a stream once (ADMIT_LUA).
            Err(CallFailure { lost: true, .. }) if cached && self.is_up() => {
                ADMIT_CONN.with(|cell| *cell.borrow_mut() = None);
                let (mut conn, _) = self.admit_connection(deadline).await?;
                self.timed_call("admit", deadline, call.invoke_async(&mut conn))
                    .await
                    .map_err(|f| f.message)
            }
            Err(failure) => Err(failure.message),
        }
    }

    /// A new connection to Redis by `deadline`, its driver a task of the calling runtime.
    pub(super) async fn connect(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<MultiplexedConnection, String> {
        let timeout = self.settings.timeout;
        let config = redis::AsyncConnectionConfig::new().set_connection_timeout(timeout);
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("connect: {e}")),
            Err(_) => Err(format!(
                "connect: no answer within {} ms",
                timeout.as_millis()
            )),
        }
    }

    /// Asks Redis to admit `claim` as stream `id`. `Err` means Redis failed (the limiter is
    /// now in fallback): decide locally.
    pub async fn admit(&self, claim: &Claim<'_>, id: u64) -> Result<Verdict, ()> {
        let reply = match self.invoke_admit(&self.admit_call(claim, id)).await {
            Ok(reply) => reply,
            Err(e) => {
                self.enter_fallback(&e);
                return Err(());
            }
        };
        let limits = claim.limits;
        let count = |v: i64| u32::try_from(v).ok();
        match reply.as_slice() {
            [0, users, keys] => Ok(Verdict::Admitted {
                user: count(*users),
                key: count(*keys),
            }),
            [1, ..] => Ok(Verdict::Refused(Rejection::UserStreams {
                limit: limits.per_user_streams.unwrap_or(0),
            })),
            [2, ..] => Ok(Verdict::Refused(Rejection::KeyStreams {
                limit: limits.per_key_streams.unwrap_or(0),
            })),
            [3, ms, ..] => Ok(Verdict::Refused(Rejection::UserRate {
                limit: limits.per_user_rpm.unwrap_or(0),
                retry_after: retry_after_from_ms(*ms),
            })),
            // Redis answers but lost this instance's leases (a restart): counting there now
            // would hand out slots this instance holds. Fall back until the worker has written
            // them again (`Worker::recover`), which it is asked to do at once.
            [4, ..] => {
                self.enter_fallback(LEASES_LOST);
                self.ask_renewal();
                Err(())
            }
            other => {
                self.enter_fallback(&format!("unexpected admit reply {other:?}"));
                Err(())
            }
        }
    }

    /// Registers a lease Redis admitted with the renewal.
    pub fn register(&self, id: u64, user: Option<&str>, key: Option<&str>) {
        let held = self.held_for(user, key);
        self.lock_held().insert(id, held);
    }

    /// Registers a lease admitted on this instance's counters (fallback) with the renewal, which
    /// writes it into Redis when Redis answers again. One admitted as the limiter returned to
    /// Redis is not left for the next renewal: either the recovery sees the count change after
    /// its return (`Worker::recover`), or this sees the return and asks for a renewal now (both
    /// sides write, then read, in one total order).
    pub fn register_local(&self, id: u64, user: Option<&str>, key: Option<&str>) {
        self.register(id, user, key);
        self.local_registrations.fetch_add(1, Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) == UP {
            self.ask_renewal();
        }
    }

    fn ask_renewal(&self) {
        if !self.renew_asked.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Renew);
        }
    }

    /// A lease was dropped: stop renewing it and queue its ZREM. Never blocks.
    pub fn release(&self, id: u64) {
        let held = self.lock_held().remove(&id);
        if let Some(held) = held {
            self.queue_release(id, held);
        }
    }

    /// Queues the ZREM of a stream id that was never registered (an admission whose Redis
    /// call may have gone through although its answer was lost).
    pub fn forget(&self, id: u64, user: Option<&str>, key: Option<&str>) {
        self.queue_release(id, self.held_for(user, key));
    }

    fn queue_release(&self, id: u64, held: Held) {
        // The worker may be gone (shutdown): the lease then expires within lease_ttl.
        let _ = self.tx.send(Msg::Release(Release { id, held }));
    }

    /// Stops admissions through Redis and asks the worker to finish.
    pub fn stop(&self) {
        let before = self.mode.swap(STOPPED, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if before != STOPPED {
            let _ = self.tx.send(Msg::Shutdown {
                send_releases: before == UP,
            });
        }
    }

    fn enter_fallback(&self, reason: &str) {
        if self
            .mode
            .compare_exchange(UP, FALLBACK, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            warn!(
                "limits: Redis at {} failed ({reason}); counting limits on this instance alone \
                 (looser than cluster-wide) until it answers again",
                self.addr
            );
            self.observer.fallback(true);
        }
    }

    fn leave_fallback(&self, first: bool) {
        if self
            .mode
            .compare_exchange(FALLBACK, UP, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            if first {
                info!("limits: connected to Redis at {}", self.addr);
            } else {
                info!(
                    "limits: Redis at {} answers again; cluster-wide limits are back",
                    self.addr
                );
            }
            self.observer.fallback(false);
        }
    }

    /// Runs one Redis call with the timeout, reporting it to the observer.
    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, CallFailure> {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        self.timed_call(op, deadline, call).await
    }

    /// [`Cluster::timed`] until `deadline`, telling a connection found closed from other
    /// failures.
    async fn timed_call<T>(
        &self,
        op: &'static str,
        deadline: tokio::time::Instant,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, CallFailure> {
        let start = Instant::now();
        let result = tokio::time::timeout_at(deadline, call).await;
        let seconds = start.elapsed().as_secs_f64();
        let result = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(CallFailure {
                lost: e.is_connection_dropped() || e.is_io_error(),
                message: format!("{op}: {e}"),
            }),
            Err(_) => Err(CallFailure {
                lost: false,
                message: format!(
                    "{op}: no answer within {} ms",
                    self.settings.timeout.as_millis()
                ),
            }),
        };
        self.observer.redis_call(op, seconds, result.is_ok());
        result
    }

    /// The admission script's call for `claim` as stream `id`.
    fn admit_call(&self, claim: &Claim<'_>, id: u64) -> redis::ScriptInvocation<'_> {
        let limits = claim.limits;
        let user = claim.user.unwrap_or("");
        let key = claim.key_id.unwrap_or("");
        let mut call = self.admit_script.prepare_invoke();
        call.key(self.user_set(user))
            .key(self.key_set(key))
            .key(self.rate_key(user))
            .key(self.marker_key())
            .arg(self.member(id))
            .arg(self.settings.lease_ttl.as_millis() as u64)
            .arg(limit_arg(limits.per_user_streams))
            .arg(limit_arg(limits.per_key_streams))
            .arg(limit_arg(limits.per_user_rpm))
            .arg(u8::from(claim.wants_stream))
            .arg(u8::from(claim.user.is_some()))
            .arg(u8::from(claim.key_id.is_some()));
        call
    }
}

/// A Redis call that failed; `lost` when the connection was found closed or broken.
struct CallFailure {
    lost: bool,
    message: String,
}

fn limit_arg(limit: Option<u32>) -> i64 {
    limit.map_or(-1, i64::from)
}

/// Whole seconds (at least 1) from the script's milliseconds until a token.
fn retry_after_from_ms(ms: i64) -> Duration {
    let ms = u64::try_from(ms).unwrap_or(0);
    Duration::from_secs(ms.div_ceil(1000).max(1))
}

/// 8 hex digits, random per limiter.
fn instance_id() -> String {
    let mut bytes = [0u8; 4];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No OS randomness: the time and the process id still make clashes unlikely.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        bytes = (nanos ^ std::process::id().rotate_left(16)).to_be_bytes();
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_from_script_ms_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_from_ms(0), Duration::from_secs(1));
        assert_eq!(retry_after_from_ms(1), Duration::from_secs(1));
        assert_eq!(retry_after_from_ms(1000), Duration::from_secs(1));
        assert_eq!(retry_after_from_ms(1001), Duration::from_secs(2));
        assert_eq!(retry_after_from_ms(-5), Duration::from_secs(1));
    }

    #[test]
    fn instance_ids_are_8_hex_digits() {
        let id = instance_id();
        assert_eq!(id.len(), 8);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(instance_id(), instance_id());
    }

    #[test]
    fn bad_urls_and_settings_are_refused() {
        let observer: Arc<dyn LimitsObserver> = Arc::new(crate::limits::NoObserver);
        let bad = RedisSettings::new("not a url");
        assert!(matches!(
            Cluster::start(bad, observer.clone()),
            Err(LimitsError::RedisUrl(_))
        ));
        let mut short = RedisSettings::new("redis://127.0.0.1:1");
        short.lease_ttl = Duration::from_millis(100);
        assert!(matches!(
            Cluster::start(short, observer),
            Err(LimitsError::RedisSettings(_))
        ));
    }
}
