//! A route's authentication step: request headers and query → identity or a client error.

use super::{find_client_key, Identity, KeyDigest, KeysFile};
use http::HeaderMap;
use std::sync::Arc;

/// `auth.mode` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may call; no identity.
    #[default]
    None,
    /// Clients present Sluice keys listed (as digests) in the keys file.
    Keys,
    /// Clients present their own provider key, which goes upstream unchanged.
    Passthrough,
}

/// Why a request was refused. The messages go to the client as they are, so they must never
/// contain the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing API key: send it as `Authorization: Bearer <key>`, `x-api-key` or `x-goog-api-key`"
    )]
    MissingKey,
    #[error("invalid API key")]
    UnknownKey,
}

impl AuthError {
    /// A stable machine-readable code for error bodies (OpenAI's is `invalid_api_key`).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingKey => "missing_api_key",
            AuthError::UnknownKey => "invalid_api_key",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Authenticator {
    None,
    Keys(Arc<KeysFile>),
    Passthrough,
}

impl Authenticator {
    /// `Ok(None)` for mode none (anonymous); in keys and passthrough modes the identity of the
    /// caller, or why there is none.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Identity>, AuthError> {
        let key = || find_client_key(headers, query).ok_or(AuthError::MissingKey);
        match self {
            Authenticator::None => Ok(None),
            Authenticator::Keys(file) => file
                .current()
                .lookup(&KeyDigest::of(key()?.value))
                .cloned()
                .map(Some)
                .ok_or(AuthError::UnknownKey),
            Authenticator::Passthrough => Ok(Some(Identity::passthrough(key()?.value))),
        }
    }

    /// Keys mode only: a Sluice key means nothing upstream and must not leak there, while in
    /// passthrough mode the client's key is what the upstream needs.
    pub fn strips_client_key(&self) -> bool {
        matches!(self, Authenticator::Keys(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_str(value).unwrap());
        map
    }

    fn keys_authenticator(tag: &str) -> (Authenticator, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "sluice-auth-authenticator-{tag}-{}.yaml",
            std::process::id()
        ));
        let hex = KeyDigest::of("sk-good").to_hex();
        let text =
            format!("keys:\n  - {{ sha256: {hex}, user: alice, key_id: k1, tenant: acme }}\n");
        std::fs::write(&path, text).unwrap();
        let file = KeysFile::open(&path).unwrap();
        (Authenticator::Keys(Arc::new(file)), path)
    }

    #[test]
    fn none_is_anonymous_and_keeps_keys() {
        let auth = Authenticator::None;
        assert_eq!(auth.authenticate(&HeaderMap::new(), None), Ok(None));
        assert_eq!(
            auth.authenticate(&headers("x-api-key", "whatever"), None),
            Ok(None)
        );
        assert!(!auth.strips_client_key());
    }

    #[test]
    fn keys_mode_maps_known_keys_to_identities() {
        let (auth, path) = keys_authenticator("keys");
        let identity = auth
            .authenticate(&headers("authorization", "Bearer sk-good"), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (identity.user.as_str(), identity.key_id.as_str()),
            ("alice", "k1")
        );
        assert_eq!(identity.tenant.as_deref(), Some("acme"));
        let by_query = auth.authenticate(&HeaderMap::new(), Some("alt=sse&key=sk-good"));
        assert_eq!(by_query.unwrap().unwrap().user, "alice");
        assert_eq!(
            auth.authenticate(&headers("x-api-key", "sk-bad"), None),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), None),
            Err(AuthError::MissingKey)
        );
        assert!(auth.strips_client_key());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn passthrough_needs_a_key_and_names_it_by_digest() {
        let auth = Authenticator::Passthrough;
        let identity = auth
            .authenticate(&headers("x-goog-api-key", "AIza-provider-key"), None)
            .unwrap()
            .unwrap();
        assert_eq!(identity, Identity::passthrough("AIza-provider-key"));
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), None),
            Err(AuthError::MissingKey)
        );
        assert!(!auth.strips_client_key());
    }

    #[test]
    fn error_messages_are_client_safe() {
        assert!(AuthError::MissingKey
            .to_string()
            .contains("Authorization: Bearer <key>"));
        assert_eq!(AuthError::UnknownKey.to_string(), "invalid API key");
        assert_eq!(AuthError::UnknownKey.code(), "invalid_api_key");
    }

    #[test]
    fn mode_names() {
        let mode: AuthMode = serde_yaml::from_str("passthrough").unwrap();
        assert_eq!(mode, AuthMode::Passthrough);
        assert_eq!(
            serde_yaml::from_str::<AuthMode>("keys").unwrap(),
            AuthMode::Keys
        );
        assert_eq!(
            serde_yaml::from_str::<AuthMode>("none").unwrap(),
            AuthMode::None
        );
        assert!(serde_yaml::from_str::<AuthMode>("Keys").is_err());
        assert_eq!(AuthMode::default(), AuthMode::None);
    }
}
