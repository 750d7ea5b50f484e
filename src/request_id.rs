//! Request ids: the client's `x-request-id` is kept when it is sane, otherwise Sluice makes one.
//! The id travels upstream, back to the client, and into logs and usage records, so one id
//! follows a stream through every system that saw it.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Longest client-supplied id kept; longer ones are replaced (they would bloat every log line).
const MAX_LEN: usize = 128;

/// The client's id when it is 1–128 visible ASCII characters, else a new one.
pub fn from_client(value: Option<&[u8]>) -> String {
    match value {
        Some(v)
            if !v.is_empty() && v.len() <= MAX_LEN && v.iter().all(|b| b.is_ascii_graphic()) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => generate(),
    }
}

/// 32 hex digits, unique within and (with overwhelming probability) across processes: a random
/// per-process seed mixed with a counter.
pub fn generate() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    hex_pair(seed, mix(seed ^ n))
}

/// `high` and `low` as 32 lower-case hex digits (`hex`, as the rest of the crate writes hex):
/// `format!` with two `{:016x}` costs ~1,000 instructions, once per request.
fn hex_pair(high: u64, low: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    hex::encode(bytes)
}

/// splitmix64: spreads consecutive counters over the whole 64-bit range.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_client_ids() {
        assert_eq!(from_client(Some(b"req-123_abc")), "req-123_abc");
    }

    #[test]
    fn replaces_missing_or_odd_ids() {
        for bad in [
            None,
            Some(&b""[..]),
            Some(b"has space"),
            Some(&[b'a'; 129][..]),
        ] {
            let id = from_client(bad);
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn hex_pair_is_both_halves_zero_padded() {
        for (high, low) in [(0, 0), (1, u64::MAX), (0xdead_beef, 0x0123_4567_89ab_cdef)] {
            assert_eq!(hex_pair(high, low), format!("{high:016x}{low:016x}"));
        }
    }

    #[test]
    fn generated_ids_are_unique() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
