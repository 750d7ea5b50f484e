//! The `auth:` and `limits:` sections (and their per-route overrides): who may send requests and
//! how many streams each caller may hold.

use super::duration;
use crate::auth::AuthMode;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `none`: anyone may call. `keys`: Sluice's own keys from `keys_file`; the client's key is
    /// removed and the upstream's `headers` supply the provider key. `passthrough`: the client
    /// brings a provider key, forwarded unchanged; its digest is the caller's identity.
    pub mode: AuthMode,
    /// YAML file of `{ sha256, user, key_id, tenant, max_streams }` entries (`keys` mode).
    pub keys_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Concurrent streams one user may hold (identity: the keys file's user, or the key digest
    /// in passthrough mode).
    pub per_user_streams: Option<u32>,
    /// Concurrent streams one key may hold (a keys-file entry's `max_streams` overrides it).
    pub per_key_streams: Option<u32>,
    /// Concurrent streams this instance carries in all.
    pub global_streams: Option<u32>,
    /// Requests per minute per user (a token bucket: bursts up to this many).
    pub per_user_rpm: Option<u32>,
    /// Where stream slots are counted: this process (`local`) or Redis, shared by a fleet.
    pub backend: LimitsBackend,
    /// Export `sluice_limits_user_streams{user}`: one series per active user.
    pub per_user_metrics: bool,
}

/// A route's own limits, replacing the top-level ones field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteLimits {
    pub per_user_streams: Option<u32>,
    pub per_key_streams: Option<u32>,
    pub per_user_rpm: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LimitsBackend {
    #[default]
    Local,
    Redis(RedisBackend),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisBackend {
    /// `redis://[:password@]host:port[/db]`.
    pub redis: String,
    /// How long a stream's slot outlives its last renewal: a crashed instance's slots are free
    /// again after at most this long.
    #[serde(default = "default_lease_ttl", with = "duration")]
    pub lease_ttl: Duration,
    /// Longest wait for any Redis call; past it Sluice falls back to local counting.
    #[serde(default = "default_redis_timeout", with = "duration")]
    pub timeout: Duration,
    /// Prefix of every Redis key Sluice writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// `rediss://` only: the CA certificates (PEM) to verify Redis with, in place of the system
    /// roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_key_prefix() -> String {
    "sluice".into()
}

/// `backend: local` or `backend: { redis: URL, … }`: a plain name or a map, with errors that say
/// which (an untagged enum would only say "did not match any variant").
impl<'de> Deserialize<'de> for LimitsBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BackendVisitor;
        impl<'de> Visitor<'de> for BackendVisitor {
            type Value = LimitsBackend;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`local` or a map `{ redis: \"redis://host:port\", lease_ttl: 30s }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LimitsBackend, E> {
                match v {
                    "local" => Ok(LimitsBackend::Local),
                    "redis" => Err(E::custom(
                        "`redis` needs its address: `backend: { redis: \"redis://127.0.0.1:6379\" }`",
                    )),
                    other => Err(E::custom(format!(
                        "unknown backend {other:?}: use `local` or `{{ redis: URL }}`"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LimitsBackend, A::Error> {
                RedisBackend::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(LimitsBackend::Redis)
            }
        }
        d.deserialize_any(BackendVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_a_name_or_a_redis_map() {
        let local: LimitSettings = serde_yaml::from_str("backend: local").unwrap();
        assert_eq!(local.backend, LimitsBackend::Local);
        let redis: LimitSettings =
            serde_yaml::from_str("backend: { redis: \"redis://127.0.0.1:6379\", lease_ttl: 5s }")
                .unwrap();
        let LimitsBackend::Redis(redis) = redis.backend else {
            panic!("redis expected")
        };
        assert_eq!(redis.lease_ttl, Duration::from_secs(5));
        assert_eq!(redis.timeout, Duration::from_millis(200));
        let err = serde_yaml::from_str::<LimitSettings>("backend: redis")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs its address"), "{err}");
        let err = serde_yaml::from_str::<LimitSettings>("backend: { redis: x, ttl: 1s }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `ttl`"), "{err}");
    }
}
