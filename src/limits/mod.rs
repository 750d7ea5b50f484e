//! Concurrent-stream and request-rate limits; local and Redis backends; RAII leases.
//!
//! Every proxied request makes a [`Claim`] and asks the [`Limiter`] to admit it:
//!
//! - **Rate**: an identified user's request takes one token from the user's bucket
//!   (`per_user_rpm`: capacity `rpm`, refilled `rpm / 60` per second, so a burst of `rpm` then a
//!   steady pace). An empty bucket refuses with the time until the next token.
//! - **Streams**: a stream request (`wants_stream`) also takes a slot against the user's, the
//!   key's and this instance's (`global_streams`) limits, held by the returned [`StreamLease`]
//!   and given back when the lease is dropped, on every path.
//!
//! Counters are per user and per key across all routes; the limit numbers come from the claim,
//! so routes may set different limits on the same counters. A request without identity counts
//! against the global limit only. A refused claim takes nothing: no slot and no rate token.
//!
//! Backends ([`Backend`]):
//! - `Local`: exact counters in this process (sharded mutex maps; the global count an atomic).
//! - `Redis`: per-user and per-key slots are shared by every instance using the same Redis (the
//!   notes in `cluster.rs` say how): one Lua script per request checks and takes slots
//!   and the rate token atomically, with Redis's own clock. Slots are leases that this instance
//!   renews every `lease_ttl / 3`, so a crashed instance's slots free themselves within
//!   `lease_ttl`. `global_streams` stays **per instance** even then: it protects this process's
//!   sockets and memory, not a fleet-wide budget.
//!
//! When Redis fails or does not answer within `timeout`, the limiter falls back to its local
//! counters with the same limit numbers — applied per instance, so looser than the cluster-wide
//! limits until Redis answers again (probed every second). The local counters always hold every
//! live lease of this instance, so the fallback starts from the true local picture, and the
//! leases taken during the fallback are put into Redis by the first renewal after recovery.
//!
//! This module knows nothing of HTTP or Pingora: claims and answers are plain values.

mod bucket;
mod cluster;
mod limiter;
mod local;
#[cfg(test)]
mod tests;

pub use bucket::TokenBucket;
pub use limiter::{Limiter, StreamLease};

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The limit numbers that apply to one request (a route's, with per-key overrides applied).
/// `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamLimits {
    /// Concurrent streams one user may hold (counted across all routes).
    pub per_user_streams: Option<u32>,
    /// Concurrent streams one key may hold (counted across all routes).
    pub per_key_streams: Option<u32>,
    /// Requests per minute per user: a token bucket of this capacity.
    pub per_user_rpm: Option<u32>,
}

/// One request asking to be admitted.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The caller's user; `None` for anonymous requests (no rate limit, no per-user slot).
    pub user: Option<&'a str>,
    /// The caller's key id; `None` when there is no key (no per-key slot).
    pub key_id: Option<&'a str>,
    pub limits: &'a StreamLimits,
    /// A streaming request: it takes a concurrent slot besides its rate token.
    pub wants_stream: bool,
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    UserStreams {
        limit: u32,
    },
    KeyStreams {
        limit: u32,
    },
    GlobalStreams {
        limit: u32,
    },
    /// `retry_after` is whole seconds (at least 1) until the user's next token.
    UserRate {
        limit: u32,
        retry_after: Duration,
    },
}

impl Rejection {
    /// A short, stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::UserStreams { .. } => "user_streams",
            Rejection::KeyStreams { .. } => "key_streams",
            Rejection::GlobalStreams { .. } => "global_streams",
            Rejection::UserRate { .. } => "user_rate",
        }
    }

    /// Seconds for `Retry-After`: until the next rate token, or 1 for a full stream limit
    /// (a slot frees whenever a stream ends, which cannot be predicted).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Rejection::UserRate { retry_after, .. } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                secs.max(1)
            }
            _ => 1,
        }
    }

    /// The limit that refused the claim.
    pub fn limit(&self) -> u32 {
        match self {
            Rejection::UserStreams { limit }
            | Rejection::KeyStreams { limit }
            | Rejection::GlobalStreams { limit }
            | Rejection::UserRate { limit, .. } => *limit,
        }
    }

    /// The message for the client: which limit, its number, when to retry. Never names the
    /// user, the key or anything else about other callers.
    pub fn message(&self) -> String {
        match self {
            Rejection::UserStreams { limit } => format!(
                "too many concurrent streams for this user (limit {limit}); retry when one ends"
            ),
            Rejection::KeyStreams { limit } => format!(
                "too many concurrent streams for this API key (limit {limit}); retry when one ends"
            ),
            Rejection::GlobalStreams { .. } => {
                "the server is carrying as many streams as it can; retry shortly".to_string()
            }
            Rejection::UserRate { limit, .. } => format!(
                "rate limit exceeded ({limit} requests per minute); retry in {} s",
                self.retry_after_secs()
            ),
        }
    }
}

/// An admitted claim.
#[derive(Debug)]
pub struct Admission {
    /// The stream slot (stream claims only); dropping it gives the slot back.
    pub lease: Option<StreamLease>,
    /// The tightest applicable stream limit and what remains of it after this admission, for
    /// `x-ratelimit-*-streams` headers. `None` for non-stream claims and when no stream limit
    /// applies. In Redis mode the user and key counts are the cluster-wide ones.
    pub streams_limit: Option<u32>,
    pub streams_remaining: Option<u32>,
}

/// Where slots and rate buckets are counted.
#[derive(Debug, Clone)]
pub enum Backend {
    Local,
    Redis(RedisSettings),
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]` (or `redis+unix:///path`).
    pub url: String,
    /// How long a slot outlives its last renewal (renewed every `lease_ttl / 3`). Default 30 s.
    pub lease_ttl: Duration,
    /// Longest wait for any Redis call before falling back to local counting. Default 200 ms.
    pub timeout: Duration,
    /// Prefix of every key: `{prefix}:u:{user}`, `{prefix}:k:{key_id}`, `{prefix}:r:{user}`.
    /// Default `sluice`.
    pub key_prefix: String,
    /// `rediss://`: the certificates (PEM) Redis is verified against; `None`, the Redis client's
    /// own Mozilla roots (Sluice always gives its own).
    pub tls_roots: Option<Vec<u8>>,
}

impl RedisSettings {
    /// Settings for `url` with the defaults for everything else.
    pub fn new(url: impl Into<String>) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            ..RedisSettings::default()
        }
    }
}

impl Default for RedisSettings {
    fn default() -> RedisSettings {
        RedisSettings {
            url: "redis://127.0.0.1:6379".to_string(),
            lease_ttl: Duration::from_secs(30),
            timeout: Duration::from_millis(200),
            key_prefix: "sluice".to_string(),
            tls_roots: None,
        }
    }
}

/// Hooks for metrics (the telemetry module implements them). Called from the limiter's own
/// thread and from `admit`: keep them cheap and non-blocking.
pub trait LimitsObserver: Send + Sync + 'static {
    /// One Redis call: `op` is `"admit"`, `"release"`, `"renew"`, `"probe"` (the marker
    /// asked for, every second) or `"ping"` (a recovery's connection check).
    fn redis_call(&self, _op: &'static str, _seconds: f64, _ok: bool) {}
    /// The Redis backend entered (`true`) or left (`false`) local fallback.
    fn fallback(&self, _active: bool) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl LimitsObserver for NoObserver {}

/// What this instance holds now (served as JSON at the admin endpoint `/limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitsSnapshot {
    /// `local`, `redis`, or `redis-fallback` (Redis configured but not answering).
    pub backend: &'static str,
    /// Live leases of this instance.
    pub in_flight: u64,
    /// This instance's limit on streams, if any.
    pub global_streams: Option<u32>,
    /// Live leases of this instance per user (users holding none are absent).
    pub users: BTreeMap<String, u32>,
    /// Live leases of this instance per key id (keys holding none are absent).
    pub keys: BTreeMap<String, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// The Redis URL does not parse (the URL itself is not repeated: it may hold a password).
    #[error("invalid Redis URL: {0}")]
    RedisUrl(String),
    #[error("invalid Redis settings: {0}")]
    RedisSettings(String),
    #[error("cannot start the limits thread: {0}")]
    Thread(#[from] std::io::Error),
}
