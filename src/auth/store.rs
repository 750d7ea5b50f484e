//! The keys file format and its parsed, immutable form.
//!
//! ```yaml
//! keys:
//!   - { sha256: <64 hex of SHA-256 of the key>, user: alice, key_id: k1, tenant: acme, max_streams: 2 }
//! ```

use super::identity::{check_key_id, check_tenant, check_user};
use super::{is_blank_yaml, Identity, KeyDigest};
use crate::yaml_error;
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read keys file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("keys file {path}: error at `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// The parsed keys file: digest → identity.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_digest: HashMap<KeyDigest, Identity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysDoc {
    // `keys:` with every entry commented out is null in YAML; it means no keys.
    #[serde(deserialize_with = "null_as_empty")]
    keys: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(deserialize_with = "digest")]
    sha256: KeyDigest,
    #[serde(deserialize_with = "user")]
    user: String,
    #[serde(deserialize_with = "key_id")]
    key_id: String,
    #[serde(default, deserialize_with = "tenant")]
    tenant: Option<String>,
    #[serde(default, deserialize_with = "max_streams")]
    max_streams: Option<u32>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Entry>, D::Error> {
    Ok(Option::<Vec<Entry>>::deserialize(d)?.unwrap_or_default())
}

fn digest<'de, D: Deserializer<'de>>(d: D) -> Result<KeyDigest, D::Error> {
    // The value is not echoed: someone may have pasted the key itself here by mistake.
    KeyDigest::from_hex(&String::deserialize(d)?).ok_or_else(|| {
        serde::de::Error::custom(
            "must be 64 hex characters: the SHA-256 of the key, not the key itself \
             (`sluice keys add` writes entries)",
        )
    })
}

fn user<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let user = String::deserialize(d)?;
    check_user(&user).map_err(serde::de::Error::custom)?;
    Ok(user)
}

fn key_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let key_id = String::deserialize(d)?;
    check_key_id(&key_id).map_err(serde::de::Error::custom)?;
    Ok(key_id)
}

fn tenant<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let tenant = Option::<String>::deserialize(d)?;
    if let Some(tenant) = &tenant {
        check_tenant(tenant).map_err(serde::de::Error::custom)?;
    }
    Ok(tenant)
}

fn max_streams<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let max = Option::<u32>::deserialize(d)?;
    if max == Some(0) {
        return Err(serde::de::Error::custom(
            "must be at least 1 (remove the entry to disable the key)",
        ));
    }
    Ok(max)
}

impl KeyStore {
    pub fn parse(text: &str, path_for_errors: &str) -> Result<KeyStore, KeysFileError> {
        let invalid = |key: String, message: String| KeysFileError::Invalid {
            path: path_for_errors.to_string(),
            key,
            message,
        };
        // An editor that truncates before writing can leave an empty file for a moment; reading
        // it as "no keys" would lock every client out, so no keys has to be said explicitly.
        if is_blank_yaml(text) {
            return Err(invalid(
                "(top level)".into(),
                "the file is empty: write `keys: []` for no keys".into(),
            ));
        }
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let doc: KeysDoc = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let (key, message) = yaml_error::describe(text, err);
            invalid(key, message)
        })?;

        let mut by_digest = HashMap::with_capacity(doc.keys.len());
        let mut key_ids: HashMap<&str, usize> = HashMap::with_capacity(doc.keys.len());
        let mut digests: HashMap<KeyDigest, usize> = HashMap::with_capacity(doc.keys.len());
        for (i, entry) in doc.keys.iter().enumerate() {
            if let Some(first) = digests.insert(entry.sha256, i) {
                let lines = value_lines(text, |line| {
                    line.to_ascii_lowercase().contains(&entry.sha256.to_hex())
                });
                return Err(invalid(
                    format!("keys[{i}].sha256"),
                    duplicate("key digest", first, &lines),
                ));
            }
            if let Some(first) = key_ids.insert(&entry.key_id, i) {
                let lines = value_lines(text, |line| {
                    key_id_in_line(line).is_some_and(|id| id == entry.key_id)
                });
                return Err(invalid(
                    format!("keys[{i}].key_id"),
                    duplicate("key_id", first, &lines),
                ));
            }
        }
        for entry in doc.keys {
            by_digest.insert(
                entry.sha256,
                Identity {
                    user: entry.user,
                    key_id: entry.key_id,
                    tenant: entry.tenant,
                    max_streams: entry.max_streams,
                },
            );
        }
        Ok(KeyStore { by_digest })
    }

    pub fn load(path: &Path) -> Result<KeyStore, KeysFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        KeyStore::parse(&text, &path.display().to_string())
    }

    // A hash lookup compares digests, not keys: timing can reveal at most something about a
    // digest, which does not lead back to a key.
    pub fn lookup(&self, digest: &KeyDigest) -> Option<&Identity> {
        self.by_digest.get(digest)
    }

    pub fn contains_key_id(&self, key_id: &str) -> bool {
        self.by_digest
            .values()
            .any(|identity| identity.key_id == key_id)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// "the same key_id as keys[1] (line 3) (line 5)": the earlier entry, then this one's line.
/// `lines` are the lines holding the duplicated value, in file order: the first two are the
/// two entries (the later one is the first duplicate found).
fn duplicate(what: &str, first: usize, lines: &[usize]) -> String {
    match lines {
        [a, b, ..] => format!("the same {what} as keys[{first}] at line {a} (line {b})"),
        _ => format!("the same {what} as keys[{first}]"),
    }
}

/// 1-based numbers of the non-comment lines matching `matches`. Serde keeps no positions for
/// values that parsed fine, so duplicates are located by their text.
fn value_lines(text: &str, matches: impl Fn(&str) -> bool) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with('#') && matches(line))
        .map(|(i, _)| i + 1)
        .collect()
}

/// The value written after `key_id:` on a line, unquoted (escapes are not interpreted: this
/// only locates lines for error messages).
fn key_id_in_line(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once("key_id:")?;
    let rest = rest.trim_start();
    match rest.chars().next()? {
        quote @ ('"' | '\'') => rest[1..].split(quote).next(),
        _ => rest.split([',', '}', '#']).next().map(str::trim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "sk-test-alice";
    const BOB: &str = "sk-test-bob";

    fn entry(key: &str, rest: &str) -> String {
        format!(
            "  - {{ sha256: {}, {rest} }}\n",
            KeyDigest::of(key).to_hex()
        )
    }

    fn err(text: &str) -> String {
        KeyStore::parse(text, "keys.yaml").unwrap_err().to_string()
    }

    #[test]
    fn parses_and_looks_up() {
        let text = format!(
            "# comment\nkeys:\n{}{}",
            entry(
                ALICE,
                "user: alice, key_id: k1, tenant: acme, max_streams: 2"
            ),
            entry(BOB, "user: bob, key_id: k2"),
        );
        let store = KeyStore::parse(&text, "keys.yaml").unwrap();
        assert_eq!(store.len(), 2);
        assert!(!store.is_empty());
        let alice = store.lookup(&KeyDigest::of(ALICE)).unwrap();
        assert_eq!(
            alice,
            &Identity {
                user: "alice".into(),
                key_id: "k1".into(),
                tenant: Some("acme".into()),
                max_streams: Some(2),
            }
        );
        let bob = store.lookup(&KeyDigest::of(BOB)).unwrap();
        assert_eq!((bob.tenant.as_deref(), bob.max_streams), (None, None));
        assert!(store.lookup(&KeyDigest::of("sk-test-carol")).is_none());
        assert!(store.contains_key_id("k2") && !store.contains_key_id("k3"));
    }

    #[test]
    fn block_style_entries_and_uppercase_hex() {
        let hex = KeyDigest::of(ALICE).to_hex().to_uppercase();
        let text = format!("keys:\n- sha256: {hex}\n  user: alice\n  key_id: k1\n");
        let store = KeyStore::parse(&text, "keys.yaml").unwrap();
        assert_eq!(store.lookup(&KeyDigest::of(ALICE)).unwrap().user, "alice");
    }

    #[test]
    fn empty_lists_are_valid_but_an_empty_file_is_not() {
        assert!(KeyStore::parse("keys: []\n", "k").unwrap().is_empty());
        assert!(KeyStore::parse("keys:\n# - { sha256: … }\n", "k")
            .unwrap()
            .is_empty());
        for text in ["", "\n# nothing\n"] {
            let e = err(text);
            assert!(e.contains("empty") && e.contains("keys: []"), "{e}");
        }
        let e = err("other: 1\n");
        assert!(e.contains("`other`"), "{e}");
    }

    #[test]
    fn bad_hex_names_key_and_line() {
        let text = format!(
            "keys:\n{}  - {{ sha256: abc123, user: bob, key_id: k2 }}\n",
            entry(ALICE, "user: alice, key_id: k1")
        );
        let e = err(&text);
        assert!(
            e.contains("keys.yaml") && e.contains("`keys[1].sha256`"),
            "{e}"
        );
        assert!(e.contains("64 hex") && e.contains("(line 3)"), "{e}");
        assert!(!e.contains("abc123"), "the value must not be echoed: {e}");
    }

    #[test]
    fn duplicate_digest_names_both_entries() {
        let text = format!(
            "keys:\n{}{}{}",
            entry(ALICE, "user: alice, key_id: k1"),
            entry(BOB, "user: bob, key_id: k2"),
            entry(ALICE, "user: mallory, key_id: k3"),
        );
        let e = err(&text);
        assert!(
            e.contains("`keys[2].sha256`") && e.contains("keys[0]"),
            "{e}"
        );
        assert!(e.contains("line 2") && e.contains("(line 4)"), "{e}");
    }

    #[test]
    fn duplicate_key_id_names_both_entries() {
        let text = format!(
            "keys:\n{}{}",
            entry(ALICE, "user: alice, key_id: \"k1\""),
            entry(BOB, "user: bob, key_id: k1"),
        );
        let e = err(&text);
        assert!(
            e.contains("`keys[1].key_id`") && e.contains("keys[0]"),
            "{e}"
        );
        assert!(e.contains("line 2") && e.contains("(line 3)"), "{e}");
    }

    #[test]
    fn unknown_field_names_key_and_line() {
        let text = format!(
            "keys:\n{}{}",
            entry(ALICE, "user: alice, key_id: k1"),
            entry(BOB, "user: bob, key_id: k2, role: admin"),
        );
        let e = err(&text);
        assert!(
            e.contains("`keys[1].role`") && e.contains("(line 3)"),
            "{e}"
        );
    }

    #[test]
    fn missing_user_names_the_entry_and_line() {
        let text = format!(
            "keys:\n{}{}",
            entry(ALICE, "user: alice, key_id: k1"),
            entry(BOB, "key_id: k2"),
        );
        let e = err(&text);
        assert!(
            e.contains("`keys[1]`") && e.contains("missing field `user`"),
            "{e}"
        );
        assert!(e.contains("(line 3)"), "{e}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("user: '', key_id: k1", "`keys[0].user`"),
            ("user: alice, key_id: 'k 1'", "`keys[0].key_id`"),
            ("user: alice, key_id: k1, tenant: ''", "`keys[0].tenant`"),
            (
                "user: alice, key_id: k1, max_streams: 0",
                "`keys[0].max_streams`",
            ),
            (
                "user: alice, key_id: k1, max_streams: -1",
                "`keys[0].max_streams`",
            ),
        ];
        for (rest, key) in cases {
            let e = err(&format!("keys:\n{}", entry(ALICE, rest)));
            assert!(e.contains(key) && e.contains("(line 2)"), "{rest}: {e}");
        }
    }

    #[test]
    fn the_example_keys_file_parses_and_its_stated_keys_match() {
        let text = include_str!("../../conf/examples/keys.yaml");
        let store = KeyStore::parse(text, "conf/examples/keys.yaml").unwrap();
        assert_eq!(store.len(), 2);
        let alice = store
            .lookup(&KeyDigest::of("sk-sluice-example-alice"))
            .unwrap();
        assert_eq!((alice.user.as_str(), alice.max_streams), ("alice", Some(2)));
        let bob = store
            .lookup(&KeyDigest::of("sk-sluice-example-bob"))
            .unwrap();
        assert_eq!(bob.key_id, "bob-ci");
    }

    #[test]
    fn key_id_in_line_reads_plain_and_quoted_values() {
        assert_eq!(key_id_in_line("  - { user: a, key_id: k1 }"), Some("k1"));
        assert_eq!(
            key_id_in_line("  - { key_id: \"k 1\", user: a }"),
            Some("k 1")
        );
        assert_eq!(key_id_in_line("  key_id: 'k1'"), Some("k1"));
        assert_eq!(key_id_in_line("  user: a"), None);
    }
}
