//! One clock for the whole harness. The upstream stamps each event with the time it was written
//! and the client reads the same clock when the event arrives: both run in this one process, so
//! the difference is the exact delivery delay, with no clock sync to get wrong.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Fixes the epoch; call once at start so that timestamps stay small and positive.
pub fn init() {
    EPOCH.get_or_init(Instant::now);
}

/// Nanoseconds since the harness epoch.
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The `Instant` of a timestamp (for sleeping until it).
pub fn instant_of(ns: u64) -> Instant {
    *EPOCH.get_or_init(Instant::now) + Duration::from_nanos(ns)
}

pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;
