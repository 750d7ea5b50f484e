//! API keys (stored as SHA-256 digests) → identity (user, key id, tenant).
