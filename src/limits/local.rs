//! This process's counters: live stream slots per user and per key, rate buckets per user, and
//! the instance-wide count of live leases.
//!
//! Users and keys are spread over [`SHARDS`] mutex-guarded shards. A stream admission locks
//! the user's and the key's shards together (in index order, so two admissions never wait on
//! each other in a cycle), checks every limit, and only then commits: nothing is taken and
//! given back, so a claim is never refused because of another claim's passing attempt. The
//! global count is an atomic whose conditional increment is the last check, made while the
//! shards are held. Entries at zero are removed, and full rate buckets are swept, so memory
//! follows the active users, not every user ever seen.

use super::bucket::TokenBucket;
use super::{Claim, Rejection};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

const SHARDS: usize = 16;
/// How often a shard drops its full rate buckets.
const SWEEP_EVERY_MS: u64 = 10_000;

#[derive(Default)]
struct Shard {
    user_streams: HashMap<Box<str>, u32>,
    key_streams: HashMap<Box<str>, u32>,
    buckets: HashMap<Box<str>, TokenBucket>,
    next_sweep_ms: u64,
}

impl Shard {
    fn take_token(&mut self, user: &str, rpm: u32, now_ms: u64) -> Result<(), Rejection> {
        let bucket = self.bucket_after_take(user, rpm, now_ms)?;
        self.buckets.insert(user.into(), bucket);
        Ok(())
    }

    /// The user's bucket with one token taken, not yet stored: a stream claim stores it only
    /// once its slot checks passed too.
    fn bucket_after_take(
        &mut self,
        user: &str,
        rpm: u32,
        now_ms: u64,
    ) -> Result<TokenBucket, Rejection> {
        self.sweep(now_ms);
        let mut bucket = self.bucket(user, rpm, now_ms);
        bucket
            .try_take(rpm, now_ms)
            .map_err(|retry_after| Rejection::UserRate {
                limit: rpm,
                retry_after,
            })?;
        Ok(bucket)
    }

    fn bucket(&self, user: &str, rpm: u32, now_ms: u64) -> TokenBucket {
        self.buckets
            .get(user)
            .copied()
            .unwrap_or_else(|| TokenBucket::full(rpm, now_ms))
    }

    fn sweep(&mut self, now_ms: u64) {
        if now_ms >= self.next_sweep_ms {
            self.buckets.retain(|_, b| !b.is_full(now_ms));
            self.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
        }
    }
}

/// The counts after an admission (for `x-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamCounts {
    /// Streams of the user, including this one (when the claim has a user).
    pub user: Option<u32>,
    /// Streams of the key, including this one (when the claim has a key).
    pub key: Option<u32>,
    /// Live leases of this instance, including this one.
    pub in_flight: u64,
}

pub(crate) struct LocalCounters {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    in_flight: AtomicU64,
    global_limit: Option<u32>,
    epoch: Instant,
}

impl LocalCounters {
    pub fn new(global_limit: Option<u32>) -> LocalCounters {
        LocalCounters {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            in_flight: AtomicU64::new(0),
            global_limit,
            epoch: Instant::now(),
        }
    }

    /// Milliseconds on this limiter's monotonic clock (the rate buckets' time).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn global_limit(&self) -> Option<u32> {
        self.global_limit
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    fn shard_of(&self, name: &str) -> usize {
        (self.hasher.hash_one(name) as usize) % SHARDS
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // Nothing panics while a shard is held; if something ever did, the counts are still
        // whole (every update is a single insert or remove), so carry on.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the user's rate token for a request that is not a stream.
    pub fn take_token(&self, user: &str, rpm: u32, now_ms: u64) -> Result<(), Rejection> {
        self.lock(self.shard_of(user)).take_token(user, rpm, now_ms)
    }

    /// Takes one instance-wide slot if `global_streams` allows it; returns the count after.
    pub fn take_global(&self) -> Result<u64, Rejection> {
        let limit = self.global_limit;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match limit {
                Some(limit) if n >= u64::from(limit) => None,
                _ => Some(n + 1),
            })
            .map(|before| before + 1)
            .map_err(|_| Rejection::GlobalStreams {
                limit: limit.unwrap_or(0),
            })
    }

    /// Gives back a slot from [`take_global`](Self::take_global) that was not used.
    pub fn put_back_global(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Admits a stream claim exactly against this instance's counts: the user's and key's
    /// stream limits, the user's rate, then the global limit; takes everything or nothing.
    pub fn admit_stream(&self, claim: &Claim<'_>, now_ms: u64) -> Result<StreamCounts, Rejection> {
        let limits = claim.limits;
        let user_shard = claim.user.map(|u| self.shard_of(u));
        let key_shard = claim.key_id.map(|k| self.shard_of(k));
        // Lock in index order; one lock when both live in the same shard.
        let (first, second) = match (user_shard, key_shard) {
            (Some(u), Some(k)) if u != k => (Some(u.min(k)), Some(u.max(k))),
            (Some(i), _) | (None, Some(i)) => (Some(i), None),
            (None, None) => (None, None),
        };
        let mut guard_a = first.map(|i| (i, self.lock(i)));
        let mut guard_b = second.map(|i| (i, self.lock(i)));
        // Check everything first.
        let mut new_bucket = None;
        if let (Some(user), Some(i)) = (claim.user, user_shard) {
            let s = pick(&mut guard_a, &mut guard_b, i);
            let held = s.user_streams.get(user).copied().unwrap_or(0);
            if let Some(limit) = limits.per_user_streams {
                if held >= limit {
                    return Err(Rejection::UserStreams { limit });
                }
            }
            if let Some(rpm) = limits.per_user_rpm {
                new_bucket = Some(s.bucket_after_take(user, rpm, now_ms)?);
            }
        }
        if let (Some(key), Some(i), Some(limit)) = (claim.key_id, key_shard, limits.per_key_streams)
        {
            let held = pick(&mut guard_a, &mut guard_b, i)
                .key_streams
                .get(key)
                .copied()
                .unwrap_or(0);
            if held >= limit {
                return Err(Rejection::KeyStreams { limit });
            }
        }
        let in_flight = self.take_global()?;

        // Commit.
        let mut counts = StreamCounts {
            user: None,
            key: None,
            in_flight,
        };
        if let (Some(user), Some(i)) = (claim.user, user_shard) {
            let s = pick(&mut guard_a, &mut guard_b, i);
            counts.user = Some(increment(&mut s.user_streams, user));
            if let Some(bucket) = new_bucket {
                s.buckets.insert(user.into(), bucket);
            }
        }
        if let (Some(key), Some(i)) = (claim.key_id, key_shard) {
            counts.key = Some(increment(
                &mut pick(&mut guard_a, &mut guard_b, i).key_streams,
                key,
            ));
        }
        Ok(counts)
    }

    /// Records a stream admitted elsewhere (by Redis), whose global slot was already taken with
    /// [`take_global`](Self::take_global): no checks, the local picture just follows.
    pub fn record_stream(&self, user: Option<&str>, key: Option<&str>) {
        if let Some(user) = user {
            increment(&mut self.lock(self.shard_of(user)).user_streams, user);
        }
        if let Some(key) = key {
            increment(&mut self.lock(self.shard_of(key)).key_streams, key);
        }
    }

    /// Gives back a stream's slots (user, key and global).
    pub fn release_stream(&self, user: Option<&str>, key: Option<&str>) {
        if let Some(user) = user {
            decrement(&mut self.lock(self.shard_of(user)).user_streams, user);
        }
        if let Some(key) = key {
            decrement(&mut self.lock(self.shard_of(key)).key_streams, key);
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Live streams of one user on this instance.
    #[cfg(test)]
    pub fn user_streams(&self, user: &str) -> u32 {
        let shard = self.lock(self.shard_of(user));
        shard.user_streams.get(user).copied().unwrap_or(0)
    }

    /// Live streams per user and per key (users and keys holding none are absent).
    pub fn counts(&self) -> (BTreeMap<String, u32>, BTreeMap<String, u32>) {
        let mut users = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for index in 0..SHARDS {
            let shard = self.lock(index);
            users.extend(shard.user_streams.iter().map(|(u, n)| (u.to_string(), *n)));
            keys.extend(shard.key_streams.iter().map(|(k, n)| (k.to_string(), *n)));
        }
        (users, keys)
    }

    /// Rate buckets kept in memory (for tests: full ones are swept).
    #[cfg(test)]
    pub fn bucket_count(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).buckets.len()).sum()
    }
}

/// The locked shard `index` among the (at most two) shards an admission holds.
fn pick<'g, 'c: 'g>(
    a: &'g mut Option<(usize, MutexGuard<'c, Shard>)>,
    b: &'g mut Option<(usize, MutexGuard<'c, Shard>)>,
    index: usize,
) -> &'g mut Shard {
    match (a, b) {
        (Some((i, guard)), _) if *i == index => guard,
        (_, Some((i, guard))) if *i == index => guard,
        _ => unreachable!("the shards of a claim's user and key are locked"),
    }
}

fn increment(map: &mut HashMap<Box<str>, u32>, name: &str) -> u32 {
    match map.get_mut(name) {
        Some(n) => {
            *n += 1;
            *n
        }
        None => {
            map.insert(name.into(), 1);
            1
        }
    }
}

fn decrement(map: &mut HashMap<Box<str>, u32>, name: &str) {
    if let Some(n) = map.get_mut(name) {
        if *n <= 1 {
            map.remove(name);
        } else {
            *n -= 1;
        }
    } else {
        debug_assert!(false, "released a slot that was not held");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::StreamLimits;

    fn claim<'a>(
        user: Option<&'a str>,
        key: Option<&'a str>,
        limits: &'a StreamLimits,
    ) -> Claim<'a> {
        Claim {
            user,
            key_id: key,
            limits,
            wants_stream: true,
        }
    }

    #[test]
    fn checks_everything_before_taking_anything() {
        let c = LocalCounters::new(Some(10));
        let limits = StreamLimits {
            per_user_streams: Some(5),
            per_key_streams: Some(1),
            per_user_rpm: Some(100),
        };
        c.admit_stream(&claim(Some("u"), Some("k"), &limits), 0)
            .unwrap();
        // The key is full: the user's count, the rate bucket and the global count are untouched.
        let err = c
            .admit_stream(&claim(Some("u"), Some("k"), &limits), 0)
            .unwrap_err();
        assert_eq!(err, Rejection::KeyStreams { limit: 1 });
        assert_eq!(c.user_streams("u"), 1);
        assert_eq!(c.in_flight(), 1);
        let shard = c.lock(c.shard_of("u"));
        assert_eq!(shard.buckets.get("u").unwrap().tokens(100, 0), 99);
    }

    #[test]
    fn the_global_limit_is_checked_last_and_takes_nothing_else() {
        let c = LocalCounters::new(Some(1));
        let limits = StreamLimits::default();
        c.admit_stream(&claim(Some("a"), None, &limits), 0).unwrap();
        let err = c
            .admit_stream(&claim(Some("b"), Some("kb"), &limits), 0)
            .unwrap_err();
        assert_eq!(err, Rejection::GlobalStreams { limit: 1 });
        let (users, keys) = c.counts();
        assert_eq!(users.len(), 1);
        assert!(keys.is_empty());
    }

    #[test]
    fn release_removes_entries_at_zero() {
        let c = LocalCounters::new(None);
        let limits = StreamLimits::default();
        c.admit_stream(&claim(Some("a"), Some("k"), &limits), 0)
            .unwrap();
        c.admit_stream(&claim(Some("a"), Some("k"), &limits), 0)
            .unwrap();
        c.release_stream(Some("a"), Some("k"));
        assert_eq!(c.user_streams("a"), 1);
        c.release_stream(Some("a"), Some("k"));
        let (users, keys) = c.counts();
        assert!(users.is_empty() && keys.is_empty());
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn full_rate_buckets_are_swept() {
        let c = LocalCounters::new(None);
        for i in 0..100 {
            c.take_token(&format!("user{i}"), 60, 0).unwrap();
        }
        assert_eq!(c.bucket_count(), 100);
        // One minute later every bucket is full again; the next use of a shard sweeps it.
        for i in 0..100 {
            c.take_token(&format!("user{i}"), 60, 61_000).unwrap();
        }
        // Enough other users to touch every shard (a miss is astronomically unlikely).
        for i in 0..1000 {
            c.take_token(&format!("other{i}"), 60, 200_000).unwrap();
        }
        assert_eq!(c.bucket_count(), 1000, "the first 100 were swept");
    }
}
