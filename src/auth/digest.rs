//! The SHA-256 digest of an API key: what the keys file stores and what lookups compare, so
//! the key itself is never kept.

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        KeyDigest(Sha256::digest(key.as_bytes()).into())
    }

    /// 64 hex characters, either case.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        Some(KeyDigest(bytes))
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters: enough to tell keys apart in logs and metrics, far too few
    /// to help anyone find the key.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `printf %s abc | sha256sum`
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_digest() {
        assert_eq!(KeyDigest::of("abc").to_hex(), ABC);
        assert_eq!(KeyDigest::of("abc").short(), "ba7816bf8f01");
    }

    #[test]
    fn hex_round_trip_either_case() {
        let digest = KeyDigest::from_hex(ABC).unwrap();
        assert_eq!(digest, KeyDigest::of("abc"));
        assert_eq!(KeyDigest::from_hex(&ABC.to_uppercase()), Some(digest));
        assert_eq!(KeyDigest::from_hex(&digest.to_hex()), Some(digest));
    }

    #[test]
    fn bad_hex_is_rejected() {
        assert_eq!(KeyDigest::from_hex(&ABC[..62]), None);
        assert_eq!(KeyDigest::from_hex(&format!("{ABC}00")), None);
        assert_eq!(KeyDigest::from_hex(&ABC.replace('a', "g")), None);
        assert_eq!(KeyDigest::from_hex(""), None);
    }

    #[test]
    fn debug_shows_only_the_short_form() {
        assert_eq!(
            format!("{:?}", KeyDigest::of("abc")),
            "KeyDigest(ba7816bf8f01)"
        );
    }
}
