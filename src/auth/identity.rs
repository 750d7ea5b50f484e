//! Who is calling: what limits, usage records and logs are keyed by.

use super::KeyDigest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Keys mode: the entry's user; passthrough: `key:` + the key digest's short form.
    pub user: String,
    /// Keys mode: the entry's key_id; passthrough: the key digest's short form.
    pub key_id: String,
    pub tenant: Option<String>,
    /// Concurrent streams allowed for this key (overrides `limits.per_key_streams`).
    pub max_streams: Option<u32>,
}

impl Identity {
    /// In passthrough mode the client's provider key is the only thing that tells callers
    /// apart; its digest prefix stands in for user and key id so no key material beyond those
    /// 12 hex characters ever reaches logs, metrics or the ledger.
    pub fn passthrough(key: &str) -> Identity {
        let short = KeyDigest::of(key).short();
        Identity {
            user: format!("key:{short}"),
            key_id: short,
            tenant: None,
            max_streams: None,
        }
    }
}

// Users and tenants end up in JSON logs, ledger lines and metric labels: control characters
// there would let a keys file forge log lines.

/// Checks a user id: not blank, no control characters.
pub fn check_user(user: &str) -> Result<(), String> {
    check_name("user", user)
}

/// Checks a tenant: not blank, no control characters.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    check_name("tenant", tenant)
}

/// Checks a key id: not empty, printable characters only, no whitespace (it is a token that
/// operators grep for and pass on command lines).
pub fn check_key_id(key_id: &str) -> Result<(), String> {
    if key_id.is_empty() {
        return Err("key_id must not be empty".into());
    }
    match key_id.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(format!(
            "key_id must be printable characters without whitespace (found {c:?})"
        )),
        None => Ok(()),
    }
}

fn check_name(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{what} must not contain control characters (found {c:?})"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_identity_carries_only_the_digest_prefix() {
        let key = "sk-proj-0123456789abcdefSECRET";
        let identity = Identity::passthrough(key);
        let short = KeyDigest::of(key).short();
        assert_eq!(short.len(), 12);
        assert_eq!(identity.user, format!("key:{short}"));
        assert_eq!(identity.key_id, short);
        assert_eq!(
            (identity.tenant.as_deref(), identity.max_streams),
            (None, None)
        );
        let shown = format!("{identity:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("sk-proj"),
            "{shown}"
        );
        let full = KeyDigest::of(key).to_hex();
        assert!(
            !shown.contains(&full[..13]),
            "more than 12 hex chars of the digest: {shown}"
        );
        assert_eq!(Identity::passthrough(key), identity);
        assert_ne!(Identity::passthrough("other").key_id, identity.key_id);
    }

    #[test]
    fn name_checks() {
        assert!(check_user("alice").is_ok());
        assert!(check_user("Alice Smith <a@b.c>").is_ok());
        assert!(check_user("").is_err());
        assert!(check_user("  ").is_err());
        assert!(check_user("a\nb").is_err());
        assert!(check_tenant("acme").is_ok());
        assert!(check_tenant("").is_err());
        assert!(check_key_id("k1").is_ok());
        assert!(check_key_id("k:1/ü").is_ok());
        assert!(check_key_id("").is_err());
        assert!(check_key_id("k 1").is_err());
        assert!(check_key_id("k\t1").is_err());
        assert!(check_key_id("k\u{7f}").is_err());
    }
}
