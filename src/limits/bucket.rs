//! The per-user request-rate bucket, pure over a millisecond clock.
//!
//! Integer arithmetic, exact: one token is [`TICKS_PER_TOKEN`] ticks, and a bucket of `rpm`
//! requests per minute holds up to `rpm` tokens and refills `rpm` ticks per millisecond
//! (= `rpm / 60` tokens per second). The Redis script (`cluster.rs`) does the same sums.

use std::time::Duration;

/// Ticks in one token: 60 000, the milliseconds in a minute.
pub const TICKS_PER_TOKEN: u64 = 60_000;

/// A token bucket. A new bucket is full; a full bucket is the same as no bucket, so owners may
/// forget full ones (see [`TokenBucket::is_full`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    ticks: u64,
    updated_ms: u64,
    /// The capacity it was last used with (for [`TokenBucket::is_full`]).
    rpm: u32,
}

impl TokenBucket {
    /// A full bucket of `rpm` tokens at `now_ms`.
    pub fn full(rpm: u32, now_ms: u64) -> TokenBucket {
        TokenBucket {
            ticks: capacity(rpm),
            updated_ms: now_ms,
            rpm,
        }
    }

    /// Takes one token at `now_ms` with capacity `rpm`, or says how long until one is there
    /// (whole seconds, at least 1). A refusal takes nothing.
    pub fn try_take(&mut self, rpm: u32, now_ms: u64) -> Result<(), Duration> {
        let ticks = self.ticks_at(rpm, now_ms);
        self.updated_ms = self.updated_ms.max(now_ms);
        self.ticks = ticks;
        self.rpm = rpm;
        if ticks >= TICKS_PER_TOKEN {
            self.ticks -= TICKS_PER_TOKEN;
            Ok(())
        } else {
            Err(wait_for_token(ticks, rpm))
        }
    }

    /// Whole tokens available at `now_ms` with capacity `rpm`.
    pub fn tokens(&self, rpm: u32, now_ms: u64) -> u64 {
        self.ticks_at(rpm, now_ms) / TICKS_PER_TOKEN
    }

    /// True when the bucket has refilled to the capacity it was last used with: it can be
    /// dropped, since a missing bucket starts full.
    pub fn is_full(&self, now_ms: u64) -> bool {
        self.ticks_at(self.rpm, now_ms) >= capacity(self.rpm)
    }

    fn ticks_at(&self, rpm: u32, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let refill = elapsed.saturating_mul(u64::from(rpm));
        self.ticks.saturating_add(refill).min(capacity(rpm))
    }
}

fn capacity(rpm: u32) -> u64 {
    u64::from(rpm) * TICKS_PER_TOKEN
}

/// Time until a bucket holding `ticks` has a whole token: whole seconds, at least 1.
pub(crate) fn wait_for_token(ticks: u64, rpm: u32) -> Duration {
    if rpm == 0 {
        return Duration::from_secs(60);
    }
    let missing = TICKS_PER_TOKEN.saturating_sub(ticks);
    let ms = missing.div_ceil(u64::from(rpm));
    Duration::from_secs(ms.div_ceil(1000).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_bucket_allows_a_burst_of_rpm_then_refuses() {
        let mut b = TokenBucket::full(5, 1_000);
        for _ in 0..5 {
            assert_eq!(b.try_take(5, 1_000), Ok(()));
        }
        // 5/min: one token every 12 s.
        assert_eq!(b.try_take(5, 1_000), Err(Duration::from_secs(12)));
        assert_eq!(b.tokens(5, 1_000), 0);
    }

    #[test]
    fn refills_rpm_over_60_per_second() {
        let mut b = TokenBucket::full(120, 0);
        for _ in 0..120 {
            b.try_take(120, 0).unwrap();
        }
        // 120/min = 2/s: one token after 500 ms, not before.
        assert_eq!(b.try_take(120, 499), Err(Duration::from_secs(1)));
        assert_eq!(b.try_take(120, 500), Ok(()));
        assert!(b.try_take(120, 500).is_err());
        // 10 s later: 20 tokens.
        assert_eq!(b.tokens(120, 10_500), 20);
        // Never above capacity.
        assert_eq!(b.tokens(120, 10_000_000), 120);
    }

    #[test]
    fn retry_after_is_ceiled_to_whole_seconds_and_at_least_one() {
        let mut b = TokenBucket::full(1, 0);
        b.try_take(1, 0).unwrap();
        assert_eq!(b.try_take(1, 0), Err(Duration::from_secs(60)));
        assert_eq!(b.try_take(1, 58_999), Err(Duration::from_secs(2)));
        assert_eq!(b.try_take(1, 59_001), Err(Duration::from_secs(1)));
        assert_eq!(b.try_take(1, 60_000), Ok(()));
        // Fast buckets still say at least 1 s.
        let mut fast = TokenBucket::full(6000, 0);
        for _ in 0..6000 {
            fast.try_take(6000, 0).unwrap();
        }
        assert_eq!(fast.try_take(6000, 0), Err(Duration::from_secs(1)));
        assert_eq!(fast.try_take(6000, 10), Ok(()));
    }

    #[test]
    fn a_refusal_takes_nothing() {
        let mut b = TokenBucket::full(2, 0);
        b.try_take(2, 0).unwrap();
        b.try_take(2, 0).unwrap();
        for t in [0, 1000, 5000, 29_999] {
            assert!(b.try_take(2, t).is_err());
        }
        assert_eq!(b.try_take(2, 30_000), Ok(()));
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut b = TokenBucket::full(60, 10_000);
        for _ in 0..60 {
            b.try_take(60, 10_000).unwrap();
        }
        assert!(b.try_take(60, 5_000).is_err());
        assert!(b.try_take(60, 10_999).is_err());
        assert_eq!(b.try_take(60, 11_000), Ok(()));
    }

    #[test]
    fn capacity_follows_the_claims_rpm() {
        let mut b = TokenBucket::full(10, 0);
        for _ in 0..10 {
            b.try_take(10, 0).unwrap();
        }
        // A route with a higher rpm refills faster and has room for more.
        assert_eq!(b.tokens(600, 1_000), 10);
        assert_eq!(b.tokens(10, 1_000), 0);
        // A lower capacity clamps what is there.
        let full = TokenBucket::full(100, 0);
        assert_eq!(full.tokens(3, 0), 3);
    }

    #[test]
    fn full_buckets_can_be_forgotten() {
        let mut b = TokenBucket::full(60, 0);
        assert!(b.is_full(0));
        b.try_take(60, 0).unwrap();
        assert!(!b.is_full(999));
        assert!(b.is_full(1_000));
    }

    #[test]
    fn zero_rpm_refuses_everything() {
        let mut b = TokenBucket::full(0, 0);
        assert_eq!(b.try_take(0, 0), Err(Duration::from_secs(60)));
        assert_eq!(b.try_take(0, 1_000_000), Err(Duration::from_secs(60)));
    }
}
