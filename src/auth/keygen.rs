//! New keys and keys file entries, for `sluice keys add`.

use super::KeyDigest;

/// `sk-sluice-` + 48 lowercase hex characters (24 random bytes from the OS).
pub fn generate_key() -> String {
    format!("sk-sluice-{}", random_hex::<24>())
}

/// A default key id: `k` + 8 lowercase hex characters.
pub fn generate_key_id() -> String {
    format!("k{}", random_hex::<4>())
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    // Without OS randomness there is no safe key to hand out.
    getrandom::getrandom(&mut bytes).expect("the OS random number generator failed");
    hex::encode(bytes)
}

/// The keys file line for a key, e.g. `  - { sha256: …, user: alice, key_id: k1 }`
/// (`tenant` and `max_streams` only when given). Values are quoted when plain YAML would
/// read them as something else.
pub fn entry_line(
    key: &str,
    user: &str,
    key_id: &str,
    tenant: Option<&str>,
    max_streams: Option<u32>,
) -> String {
    let mut line = format!(
        "  - {{ sha256: {}, user: {}, key_id: {}",
        KeyDigest::of(key).to_hex(),
        yaml_scalar(user),
        yaml_scalar(key_id)
    );
    if let Some(tenant) = tenant {
        line.push_str(&format!(", tenant: {}", yaml_scalar(tenant)));
    }
    if let Some(max) = max_streams {
        line.push_str(&format!(", max_streams: {max}"));
    }
    line.push_str(" }");
    line
}

/// `value` as a YAML flow scalar: plain when it is an unambiguous identifier-like string,
/// otherwise double-quoted. A JSON string is a valid YAML double-quoted scalar, so serde_json
/// does the escaping.
fn yaml_scalar(value: &str) -> String {
    let mut chars = value.chars();
    let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
        // Words some YAML readers take as booleans or null.
        && !["true", "false", "null", "yes", "no", "on", "off", "y", "n"]
            .iter()
            .any(|word| value.eq_ignore_ascii_case(word));
    if plain {
        value.to_string()
    } else {
        serde_json::to_string(value).expect("a string always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Identity, KeyStore};
    use std::collections::HashSet;

    #[test]
    fn generated_keys_have_the_documented_shape_and_differ() {
        let keys: HashSet<String> = (0..100).map(|_| generate_key()).collect();
        assert_eq!(keys.len(), 100);
        for key in &keys {
            let hex = key.strip_prefix("sk-sluice-").unwrap();
            assert_eq!(hex.len(), 48, "{key}");
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{key}"
            );
        }
        let id = generate_key_id();
        assert!(id.starts_with('k') && id.len() == 9, "{id}");
        assert_ne!(generate_key_id(), generate_key_id());
    }

    #[test]
    fn entry_line_shape() {
        let line = entry_line("sk-x", "alice", "k1", None, None);
        let hex = KeyDigest::of("sk-x").to_hex();
        assert_eq!(
            line,
            format!("  - {{ sha256: {hex}, user: alice, key_id: k1 }}")
        );
        let line = entry_line("sk-x", "alice", "k1", Some("acme"), Some(2));
        assert!(
            line.ends_with("key_id: k1, tenant: acme, max_streams: 2 }"),
            "{line}"
        );
    }

    #[test]
    fn entry_line_round_trips_awkward_values() {
        let awkward = [
            "alice",
            "a:b",
            "a: b",
            "with space",
            "#hash",
            "a #b",
            "\"quoted\"",
            "it's",
            "back\\slash",
            "true",
            "No",
            "null",
            "~",
            "123",
            "0x1f",
            "1e3",
            ".inf",
            "-dash",
            "- x",
            "a, b",
            "{x}",
            "[x]",
            "&anchor",
            "*alias",
            "!tag",
            "%pct",
            "@at",
            "`tick",
            "|pipe",
            ">gt",
            "?q",
            "ünïcödé",
            "trailing ",
            " leading",
        ];
        let mut text = String::from("keys:\n");
        let mut expected = Vec::new();
        for (i, user) in awkward.iter().enumerate() {
            let key = format!("sk-test-{i}");
            let key_id = format!("k:{i}/{}", user.replace(' ', "_"));
            let tenant = format!("t {user}");
            text.push_str(&entry_line(&key, user, &key_id, Some(&tenant), Some(3)));
            text.push('\n');
            expected.push((key, user.to_string(), key_id, tenant));
        }
        let store = KeyStore::parse(&text, "test").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(store.len(), awkward.len());
        for (key, user, key_id, tenant) in expected {
            assert_eq!(
                store.lookup(&KeyDigest::of(&key)),
                Some(&Identity {
                    user,
                    key_id,
                    tenant: Some(tenant),
                    max_streams: Some(3),
                })
            );
        }
    }
}
