//! The [`Limiter`]: admits claims against the local counters or Redis, and hands out
//! [`StreamLease`]s that give their slots back when dropped.

use super::cluster::{Cluster, Verdict};
use super::local::{LocalCounters, StreamCounts};
use super::{Admission, Backend, Claim, LimitsError, LimitsObserver, LimitsSnapshot, Rejection};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What the limiter and its leases share.
struct Shared {
    local: LocalCounters,
    cluster: Option<Arc<Cluster>>,
}

/// Admits requests and counts their stream slots. Cheap to clone; all clones share the same
/// counters. Dropping the last clone (or [`Limiter::shutdown`]) stops the Redis thread, which
/// may block for a few Redis timeouts while it sends the queued releases.
///
/// `admit` may be called from any tokio runtime with its time and I/O drivers enabled: with
/// Redis, each admitting thread's connection is driven by a task of the caller's runtime; the
/// renewals, releases and probe are driven by the limiter's own thread.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    fn stop(&self) {
        if let Some(cluster) = &self.shared.cluster {
            cluster.stop();
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("backend", &self.backend_name())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Limiter {
    /// A limiter on `backend`, with `global_streams` the most streams this instance carries.
    ///
    /// With Redis this starts the `sluice-limits` thread and waits at most about twice the
    /// Redis `timeout` for a first connection. Redis need not be up: the limiter then starts in
    /// fallback and keeps probing. A malformed URL or inconsistent settings are errors.
    pub fn new(
        backend: Backend,
        global_streams: Option<u32>,
        observer: Arc<dyn LimitsObserver>,
    ) -> Result<Limiter, LimitsError> {
        let (cluster, thread) = match backend {
            Backend::Local => (None, None),
            Backend::Redis(settings) => {
                let (cluster, thread) = Cluster::start(settings, observer)?;
                (Some(cluster), Some(thread))
            }
        };
        Ok(Limiter {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    local: LocalCounters::new(global_streams),
                    cluster,
                }),
                thread: Mutex::new(thread),
            }),
        })
    }

    /// Admits `claim` or says which limit refuses it. A refusal takes nothing.
    ///
    /// With Redis up, a claim that needs it (an identified stream, or a rate-limited user)
    /// costs one round trip (and a connect on a thread's first admission), bounded by the Redis
    /// `timeout`; past it, or on any error, the
    /// limiter falls back and decides on this instance's counters. Anonymous claims and
    /// non-stream claims without a rate limit never touch Redis.
    pub async fn admit(&self, claim: &Claim<'_>) -> Result<Admission, Rejection> {
        let shared = &self.inner.shared;
        if let Some(cluster) = &shared.cluster {
            let identified = claim.user.is_some() || claim.key_id.is_some();
            let rate_limited = claim.user.is_some() && claim.limits.per_user_rpm.is_some();
            if ((claim.wants_stream && identified) || rate_limited) && cluster.is_up() {
                return self.admit_redis(cluster, claim).await;
            }
        }
        self.admit_local(claim, None)
    }

    /// Decides on this instance's counters (Local backend, anonymous claims, fallback).
    fn admit_local(&self, claim: &Claim<'_>, id: Option<u64>) -> Result<Admission, Rejection> {
        let shared = &self.inner.shared;
        let now = shared.local.now_ms();
        if !claim.wants_stream {
            if let (Some(user), Some(rpm)) = (claim.user, claim.limits.per_user_rpm) {
                shared.local.take_token(user, rpm, now)?;
            }
            return Ok(no_stream());
        }
        let counts = shared.local.admit_stream(claim, now)?;
        let redis_id = match &shared.cluster {
            Some(cluster) if claim.user.is_some() || claim.key_id.is_some() => {
                // Renewed like any other lease: Redis learns of it once it answers again.
                let id = id.unwrap_or_else(|| cluster.next_id());
                cluster.register_local(id, claim.user, claim.key_id);
                Some(id)
            }
            _ => None,
        };
        Ok(self.stream_admission(claim, counts, redis_id))
    }

    async fn admit_redis(
        &self,
        cluster: &Arc<Cluster>,
        claim: &Claim<'_>,
    ) -> Result<Admission, Rejection> {
        let local = &self.inner.shared.local;
        // The global limit is this instance's own: checked here, before asking Redis.
        let in_flight = match claim.wants_stream {
            true => Some(local.take_global()?),
            false => None,
        };
        let id = cluster.next_id();
        // If this future is dropped while Redis is asked, the guard gives the global slot
        // back and queues a ZREM in case the script ran.
        let mut attempt = Attempt {
            local,
            cluster,
            claim,
            id,
            took_global: in_flight.is_some(),
            armed: true,
        };
        let verdict = cluster.admit(claim, id).await;
        attempt.armed = false;
        match verdict {
            Ok(Verdict::Admitted { user, key }) => {
                let Some(in_flight) = in_flight else {
                    return Ok(no_stream());
                };
                local.record_stream(claim.user, claim.key_id);
                cluster.register(id, claim.user, claim.key_id);
                let counts = StreamCounts {
                    user,
                    key,
                    in_flight,
                };
                Ok(self.stream_admission(claim, counts, Some(id)))
            }
            Ok(Verdict::Refused(rejection)) => {
                attempt.put_back_global();
                Err(rejection)
            }
            Err(()) => {
                attempt.put_back_global();
                let result = self.admit_local(claim, Some(id));
                if result.is_err() && claim.wants_stream {
                    // Redis may have run the script before the call failed.
                    cluster.forget(id, claim.user, claim.key_id);
                }
                result
            }
        }
    }

    fn stream_admission(
        &self,
        claim: &Claim<'_>,
        counts: StreamCounts,
        redis_id: Option<u64>,
    ) -> Admission {
        let global = self.inner.shared.local.global_limit();
        let in_flight = u32::try_from(counts.in_flight).unwrap_or(u32::MAX);
        let candidates = [
            (claim.limits.per_user_streams, counts.user),
            (claim.limits.per_key_streams, counts.key),
            (global, Some(in_flight)),
        ];
        let mut tightest: Option<(u32, u32)> = None;
        for (limit, count) in candidates {
            if let (Some(limit), Some(count)) = (limit, count) {
                let remaining = limit.saturating_sub(count);
                if tightest.is_none_or(|(_, r)| remaining < r) {
                    tightest = Some((limit, remaining));
                }
            }
        }
        Admission {
            lease: Some(StreamLease {
                shared: self.inner.shared.clone(),
                user: claim.user.map(Box::from),
                key: claim.key_id.map(Box::from),
                redis_id,
            }),
            streams_limit: tightest.map(|(limit, _)| limit),
            streams_remaining: tightest.map(|(_, remaining)| remaining),
        }
    }

    /// What this instance holds now.
    pub fn snapshot(&self) -> LimitsSnapshot {
        let local = &self.inner.shared.local;
        let (users, keys) = local.counts();
        LimitsSnapshot {
            backend: self.backend_name(),
            in_flight: local.in_flight(),
            global_streams: local.global_limit(),
            users,
            keys,
        }
    }

    /// Live leases of this instance.
    pub fn in_flight(&self) -> u64 {
        self.inner.shared.local.in_flight()
    }

    fn backend_name(&self) -> &'static str {
        match &self.inner.shared.cluster {
            None => "local",
            Some(cluster) => cluster.backend_name(),
        }
    }

    /// Stops the Redis thread: releases already queued are sent (best effort, within the
    /// timeout), renewal stops, and later admissions are decided locally. Leases still held
    /// are not released in Redis: they expire within `lease_ttl`. Blocks for at most a few
    /// Redis timeouts. Idempotent; a no-op for the local backend.
    pub fn shutdown(&self) {
        self.inner.stop();
    }
}

fn no_stream() -> Admission {
    Admission {
        lease: None,
        streams_limit: None,
        streams_remaining: None,
    }
}

/// An admission in flight to Redis; undoes its local part if dropped while armed.
struct Attempt<'a> {
    local: &'a LocalCounters,
    cluster: &'a Cluster,
    claim: &'a Claim<'a>,
    id: u64,
    took_global: bool,
    armed: bool,
}

impl Attempt<'_> {
    fn put_back_global(&mut self) {
        if std::mem::take(&mut self.took_global) {
            self.local.put_back_global();
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.put_back_global();
            if self.claim.wants_stream {
                self.cluster
                    .forget(self.id, self.claim.user, self.claim.key_id);
            }
        }
    }
}

/// A held stream slot. Dropping it gives the slot back: the local counters at once, and (Redis
/// backend) a `ZREM` queued to the limiter's thread — never blocking, never panicking, even
/// after the limiter is gone. The `ZREM` reaches Redis about one round trip later, so a claim
/// racing the release (on any instance) may still see the slot taken for that moment.
pub struct StreamLease {
    shared: Arc<Shared>,
    user: Option<Box<str>>,
    key: Option<Box<str>>,
    redis_id: Option<u64>,
}

impl StreamLease {
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn key_id(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl fmt::Debug for StreamLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLease")
            .field("user", &self.user)
            .field("key_id", &self.key)
            .field("redis_id", &self.redis_id)
            .finish()
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.shared
            .local
            .release_stream(self.user.as_deref(), self.key.as_deref());
        if let (Some(id), Some(cluster)) = (self.redis_id, &self.shared.cluster) {
            cluster.release(id);
        }
    }
}
