//! API keys (stored as SHA-256 digests) → identity (user, key id, tenant).
//!
//! Pure logic, no Pingora: `edge` calls [`Authenticator::authenticate`] with the request's
//! headers and query, and strips the client's key before the request goes upstream when
//! [`Authenticator::strips_client_key`] says so (see [`CLIENT_KEY_HEADERS`] and
//! [`remove_key_param`]).

mod append;
mod authenticator;
mod client_key;
mod digest;
mod identity;
mod keygen;
mod keys_file;
mod store;

pub use append::{append_entry, is_blank_yaml, NEW_KEYS_FILE_HEADER};
pub use authenticator::{AuthError, AuthMode, Authenticator};
pub use client_key::{find_client_key, remove_key_param, ClientKey, KeySource, CLIENT_KEY_HEADERS};
pub use digest::KeyDigest;
pub use identity::{check_key_id, check_tenant, check_user, Identity};
pub use keygen::{entry_line, generate_key, generate_key_id};
pub use keys_file::KeysFile;
pub use store::{KeyStore, KeysFileError};
