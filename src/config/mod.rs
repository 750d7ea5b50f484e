//! The config file: its schema with defaults (documented in `conf/sluice.yaml`), loading with
//! `${ENV}` interpolation, and validation. Every error names the key and, where the YAML parser
//! knows it, the line.

mod access;
pub mod duration;
pub mod env;
mod files;
pub mod tls;
mod validate;

use crate::provider::Provider;
pub use access::{AuthSettings, LimitSettings, LimitsBackend, RedisBackend, RouteLimits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
pub use tls::{ListenerTls, SniCertificate};

/// The embedded default config: routes to the built-in demo upstream, so Sluice streams out of
/// the box with no network.
pub const DEFAULT_CONFIG: &str = include_str!("../../conf/sluice.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Env(String),
    #[error("config error at `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses the proxy listens on.
    pub listen: Vec<Listener>,
    /// Address of the admin listener (`/healthz`, `/metrics`); absent disables it.
    #[serde(default)]
    pub admin: Option<String>,
    /// Pingora's process settings.
    #[serde(default)]
    pub server: ServerSettings,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    /// Where usage records go.
    #[serde(default)]
    pub usage: UsageSettings,
    /// Who may call (routes may override it).
    #[serde(default)]
    pub auth: AuthSettings,
    /// Concurrent-stream and request-rate limits (routes may override the per-caller ones).
    #[serde(default)]
    pub limits: LimitSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSettings {
    /// The append-only JSON-lines usage ledger; absent: records go to metrics and the access
    /// log only.
    pub ledger: Option<std::path::PathBuf>,
    /// `before_end`: a stream's record is on disk before the client receives the stream's final
    /// bytes. `async`: records are written in the background (a crash can lose the last ones).
    pub durability: Durability,
    /// Rotate the ledger when it would grow past this many bytes (absent: never; rotation on
    /// SIGHUP works either way).
    pub rotate_bytes: Option<u64>,
    /// Rotated ledger files kept (`PATH.1` … `PATH.N`).
    pub keep: usize,
    /// Largest SSE event the inspector reads; larger events pass through untouched (their
    /// tokens unread; they are counted in `sluice_sse_oversized_events_total`).
    pub max_event_size: usize,
    /// Read usage from streams. Off: records carry outcomes and timings only (`usage_source:
    /// none`), and `include_usage` is not added.
    pub inspect: bool,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            ledger: None,
            durability: Durability::BeforeEnd,
            rotate_bytes: None,
            keep: 5,
            max_event_size: 1024 * 1024,
            inspect: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    #[default]
    BeforeEnd,
    Async,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub addr: String,
    /// Also accept cleartext HTTP/2 with prior knowledge (h2c) on this listener.
    #[serde(default)]
    pub h2c: bool,
    /// Terminate TLS here (TLS 1.2 and 1.3; HTTP/2 and HTTP/1.1 offered by ALPN).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// How long in-flight streams may run on after SIGTERM/SIGQUIT; at least the second a
    /// request already on its way gets to arrive.
    #[serde(with = "duration")]
    pub grace_period: Duration,
    /// How long the runtimes get to stop after the grace period.
    #[serde(with = "duration")]
    pub graceful_shutdown_timeout: Duration,
    /// Where the PID file is written.
    pub pid_file: String,
    /// Unix socket used to hand listening sockets to a new process on upgrade.
    pub upgrade_sock: String,
    /// Largest request head (request line and headers, in bytes) forwarded upstream; a larger
    /// one gets `431`. Pingora itself refuses heads over 1 MiB (or over 256 headers) with `400`.
    pub max_request_header: usize,
    /// How long a client connection may stay without a request: an HTTP/1.1 one between
    /// requests (or before its first), an HTTP/2 one with no stream open (then a GOAWAY, and it
    /// is dropped if still there as long again). Also how long a request head may take to arrive
    /// once begun.
    #[serde(with = "duration")]
    pub keepalive_timeout: Duration,
    /// Longest client TLS handshake, and longest wait for an HTTP/2 client's preface once its
    /// connection is up (after TLS with `h2` by ALPN; on an h2c listener, once its first bytes
    /// came, which the keep-alive bounds).
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Longest wait for the next part of a request body (nginx's `client_body_timeout`): a client
    /// that stops sending it gets `408` and its connection closed.
    #[serde(with = "duration")]
    pub request_body_timeout: Duration,
    /// Peers (addresses or ranges such as `10.0.0.0/8`) whose `X-Forwarded-For` names the
    /// client in the access log: load balancers in front of Sluice.
    pub trusted_proxies: Vec<String>,
    /// Most bytes of request bodies held in memory at once, across requests (each request reads
    /// up to 1 MiB of its body before sending it on); past it, reading a body waits, and after
    /// `request_body_timeout` gets `503`.
    pub request_body_memory: usize,
}

/// `server.request_body_memory` by default: 64 MiB.
pub const DEFAULT_REQUEST_BODY_MEMORY: usize = 64 * 1024 * 1024;

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 2,
            grace_period: Duration::from_secs(30),
            graceful_shutdown_timeout: Duration::from_secs(5),
            pid_file: "/tmp/sluice.pid".into(),
            upgrade_sock: "/tmp/sluice_upgrade.sock".into(),
            max_request_header: 64 * 1024,
            keepalive_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            request_body_memory: DEFAULT_REQUEST_BODY_MEMORY,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `http://host:port[/base]`, `https://…`, or `demo://` for the built-in demo upstream.
    pub url: String,
    /// Headers set on every request to this upstream (the provider key goes here).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest time to establish the TCP connection.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Longest TLS handshake (https only), after the TCP connection is up.
    #[serde(default = "default_tls_handshake_timeout", with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// How long an idle pooled connection is kept.
    #[serde(default = "default_pool_idle_timeout", with = "duration")]
    pub pool_idle_timeout: Duration,
    /// How long a host name's addresses are used before they are looked up again (in the
    /// background; the old ones serve meanwhile).
    #[serde(default = "default_dns_refresh", with = "duration")]
    pub dns_refresh: Duration,
    /// Verify the upstream's TLS certificate (https only). Turning it off is explicit.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// CA bundle (PEM) to verify the upstream with instead of the system roots (https only).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Name sent as SNI and checked against the certificate (https only); default: the URL's
    /// host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Speak HTTP/2 to the upstream: https negotiates it by ALPN (falling back to HTTP/1.1);
    /// http uses prior knowledge (h2c).
    #[serde(default)]
    pub http2: bool,
    /// With `http2`: how often each connection is PINGed; one whose PING goes unanswered for
    /// 5 s is closed, so a connection a middlebox lost is found before a stream times out on
    /// it. Off by default: some servers answer frequent pings with GOAWAY.
    #[serde(default, deserialize_with = "duration::deserialize_optional")]
    pub http2_ping: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Requests whose path starts with this are sent to `upstream` (longest prefix wins).
    pub path_prefix: String,
    pub upstream: String,
    /// API format of the upstream; picks error formats (and, later, usage extraction).
    #[serde(default)]
    pub provider: Provider,
    /// Longest silence between two upstream chunks (and before the response head).
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "duration::deserialize_optional"
    )]
    pub idle_timeout: Option<Duration>,
    /// Interval of `: keep-alive` comments sent to the client while the upstream is silent.
    #[serde(
        default = "default_heartbeat",
        deserialize_with = "duration::deserialize_optional"
    )]
    pub heartbeat: Option<Duration>,
    /// Longest life of one stream.
    #[serde(
        default = "default_max_duration",
        deserialize_with = "duration::deserialize_optional"
    )]
    pub max_duration: Option<Duration>,
    /// OpenAI chat/completions stream requests: add `stream_options.include_usage` so the
    /// provider reports usage (the injected usage chunk is removed from what the client gets
    /// unless it asked itself). Default: on when the route's provider is `openai` or `auto`.
    #[serde(default)]
    pub include_usage: Option<bool>,
    /// Append `: sluice-usage {json}` after the provider's last frame (an SSE comment: ignored
    /// by EventSource and the official SDKs).
    #[serde(default = "default_true")]
    pub usage_comment: bool,
    /// This route's own `auth:` section, replacing the top-level one.
    #[serde(default)]
    pub auth: Option<AuthSettings>,
    /// This route's own per-caller limits, each replacing the top-level one.
    #[serde(default)]
    pub limits: RouteLimits,
    /// Largest request body in bytes: a larger `Content-Length` gets `413` before anything is
    /// sent upstream; a chunked body that grows past it is cut off (see the README).
    #[serde(default = "default_max_request_body")]
    pub max_request_body: u64,
}

fn default_max_request_body() -> u64 {
    10 * 1024 * 1024
}

fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_tls_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Option<Duration> {
    Some(Duration::from_secs(60))
}
fn default_heartbeat() -> Option<Duration> {
    Some(Duration::from_secs(15))
}
fn default_max_duration() -> Option<Duration> {
    Some(Duration::from_secs(30 * 60))
}

impl Config {
    /// The auth section that applies to route `index`.
    pub fn route_auth(&self, index: usize) -> &AuthSettings {
        self.routes[index].auth.as_ref().unwrap_or(&self.auth)
    }

    /// Every keys file a route uses, once each.
    pub fn keys_files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = (0..self.routes.len())
            .map(|i| self.route_auth(i))
            .filter(|a| a.mode == crate::auth::AuthMode::Keys)
            .filter_map(|a| a.keys_file.as_deref())
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Loads a config file: interpolation, parsing, validation.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config = Config::from_yaml(&text)?;
        files::check_not_overwritten(&config, Some(path))
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        Ok(config)
    }

    /// The embedded default config. Valid as written, but its ledger file (in `/tmp`) may be
    /// one this process cannot write.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_yaml(DEFAULT_CONFIG)
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with(text, |name| std::env::var(name))
    }

    /// `from_yaml` with the environment given by `lookup` (tests do not touch the process's).
    pub(crate) fn from_yaml_with(
        text: &str,
        lookup: impl Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Config, ConfigError> {
        // An editor's UTF-8 byte order mark is not part of the YAML.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let text = env::interpolate(text, lookup)?;
        // Read as plain YAML first, which refuses a key given twice in one mapping (two
        // upstreams of one name): read into the config's maps, the last would silently win.
        let deserializer = serde_yaml::Deserializer::from_str(&text);
        serde_path_to_error::deserialize::<_, serde_yaml::Value>(deserializer)
            .map_err(|err| parse_error(&text, err))?;
        let deserializer = serde_yaml::Deserializer::from_str(&text);
        let config: Config = serde_path_to_error::deserialize(deserializer)
            .map_err(|err| parse_error(&text, err))?;
        validate::validate(&config).map_err(|err| match err {
            // The key's line, as a parse error gives it.
            ConfigError::Invalid { key, message } => {
                match crate::yaml_error::path_line(&text, &key) {
                    Some(line) => ConfigError::Invalid {
                        message: format!("{message} (line {line})"),
                        key,
                    },
                    None => ConfigError::Invalid { key, message },
                }
            }
            other => other,
        })?;
        Ok(config)
    }
}

/// Names the key path and the line of the offending key.
fn parse_error(text: &str, err: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let (key, message) = crate::yaml_error::describe(text, err);
    ConfigError::Invalid { key, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: http://127.0.0.1:9}}\nroutes: [{path_prefix: /, upstream: u}]\n";

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded_default().unwrap();
        assert!(!config.routes.is_empty());
    }

    #[test]
    fn defaults_apply() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.provider, Provider::Auto);
        assert_eq!(route.heartbeat, Some(Duration::from_secs(15)));
        assert!(config.upstreams["u"].tls_verify);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = format!("{MINIMAL}bogus: 1\n");
        let err = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("bogus") && err.contains("line 4"), "{err}");
    }

    /// Reads `MINIMAL` plus `rest` with `vars` as the whole environment.
    fn with_env(rest: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
        with_env_text(&format!("{MINIMAL}{rest}"), vars)
    }

    fn with_env_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
        Config::from_yaml_with(text, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .ok_or(std::env::VarError::NotPresent)
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn an_environment_value_lands_as_written_whatever_yaml_it_holds() {
        let values = [
            "abc #def",
            "x: y",
            "a\nb: c",
            "*alias",
            "&anchor x",
            "!tag",
            "{a: 1}",
            "[1, 2]",
            "\"quoted\" tail",
            "'single'",
            "it's",
            r"back\slash\n",
            "  spaces  ",
            "",
            "null",
            "- item",
            "-",
            "|",
            "> folded",
            "%TAG",
            "@at",
            "`tick",
            "tab\there",
            "a\r\nb",
            "trailing\n",
            "# all comment",
            "é ü \u{1F600}",
            "${NOPE}",
            "$${NOPE}",
        ];
        // `%V%` stands for the value; `timeout` after it shows the structure held. The carrier is
        // `key_prefix`, a key with no check of its own (any string is a valid prefix).
        let forms = [
            ("limits:\n  backend:\n    redis: redis://127.0.0.1:6379\n    key_prefix: ${V}\n    timeout: 7ms\n", "%V%"),
            (
                "limits:\n  backend:\n    redis: redis://127.0.0.1:6379\n    key_prefix: pre ${V} post\n    timeout: 7ms\n",
                "pre %V% post",
            ),
            (
                "limits:\n  backend:\n    redis: redis://127.0.0.1:6379\n    key_prefix: \"pre ${V} post\"\n    timeout: 7ms\n",
                "pre %V% post",
            ),
            (
                "limits:\n  backend:\n    redis: redis://127.0.0.1:6379\n    key_prefix: 'pre ${V} post'\n    timeout: 7ms\n",
                "pre %V% post",
            ),
            ("limits: {backend: {redis: redis://127.0.0.1:6379, key_prefix: ${V}, timeout: 7ms}}\n", "%V%"),
            (
                "limits:\n  backend:\n    redis: redis://127.0.0.1:6379\n    key_prefix: |-\n      pre ${V} post\n    timeout: 7ms\n",
                "pre %V% post",
            ),
            (
                "limits:\n  backend:\n    redis: redis://127.0.0.1:6379\n    key_prefix: >-\n      pre ${V}\n      post\n    timeout: 7ms\n",
                "pre %V% post",
            ),
            (
                "limits:\n  backend:\n    redis: redis://127.0.0.1:6379\n    key_prefix: pre ${V}\n      post\n    timeout: 7ms\n",
                "pre %V% post",
            ),
            (
                "limits:\n  backend:\n    redis: redis://127.0.0.1:6379\n    key_prefix: \"pre\n      ${V} post\"\n    timeout: 7ms\n",
                "pre %V% post",
            ),
        ];
        for value in values {
            for (form, expected) in forms {
                let config = with_env(form, &[("V", value)])
                    .unwrap_or_else(|e| panic!("{form:?} with V={value:?}: {e}"));
                let LimitsBackend::Redis(redis) = &config.limits.backend else {
                    panic!("{form:?} with V={value:?}: no redis backend");
                };
                assert_eq!(
                    redis.key_prefix,
                    expected.replace("%V%", value),
                    "{form:?} with V={value:?}"
                );
                assert_eq!(
                    redis.timeout,
                    std::time::Duration::from_millis(7),
                    "{form:?} with V={value:?}"
                );
            }
        }
    }

    #[test]
    fn a_variable_that_makes_a_whole_plain_value_keeps_its_type() {
        let config = with_env("server:\n  threads: ${T}\n", &[("T", "3")]).unwrap();
        assert_eq!(config.server.threads, 3);
        let config = with_env("server: {threads: ${T}}\n", &[("T", "3")]).unwrap();
        assert_eq!(config.server.threads, 3);
        // What follows the number is part of the value, not a comment that hides it.
        let err = with_env("server:\n  threads: ${T}\n", &[("T", "3 # x")]).unwrap_err();
        assert!(
            err.contains("server.threads") && err.contains("line 5"),
            "{err}"
        );
    }

    #[test]
    fn comments_never_demand_a_variable_and_content_is_never_a_comment() {
        for (form, expected) in [
            ("server:\n  pid_file: it's here # ${NOPE}\n", "it's here"),
            ("server:\n  pid_file: \"x\\\\\" # ${NOPE}\n", "x\\"),
            ("server:\n  # pid_file: ${NOPE}\n  pid_file: p\n", "p"),
            ("server: {pid_file: p} # ${NOPE}\n", "p"),
            ("server:\n  pid_file: |-\n    # ${V}\n", "# v"),
            ("server:\n  pid_file: \"a\n    # ${V}\"\n", "a # v"),
        ] {
            let config = with_env(form, &[("V", "v")]).unwrap_or_else(|e| panic!("{form:?}: {e}"));
            assert_eq!(config.server.pid_file, expected, "{form:?}");
        }
    }

    #[test]
    fn a_variable_in_a_key_is_refused_by_name_and_line() {
        let err = with_env("server:\n  ${NAME}: 3\n", &[("NAME", "threads")]).unwrap_err();
        assert!(
            err.contains("${NAME}") && err.contains("key") && err.contains("line 5"),
            "{err}"
        );
        // The escape is a key like any other.
        let config = with_env_text(
            "listen: [{addr: 127.0.0.1:8080}]\nupstreams: {$${u}: {url: http://127.0.0.1:9}}\nroutes: [{path_prefix: /, upstream: $${u}}]\n",
            &[],
        )
        .unwrap();
        assert!(config.upstreams.contains_key("${u}"));
        assert_eq!(config.routes[0].upstream, "${u}");
    }

    #[test]
    fn the_escape_writes_a_literal_even_in_a_flow_mapping() {
        let config = with_env("server: {pid_file: $${V}, upgrade_sock: a$${V}b}\n", &[]).unwrap();
        assert_eq!(config.server.pid_file, "${V}");
        assert_eq!(config.server.upgrade_sock, "a${V}b");
    }

    #[test]
    fn lines_stay_right_after_a_value_of_many_lines() {
        let vars = [("V", "a\nb\nc")];
        let err = with_env("server:\n  pid_file: \"${V}\"\n  bogus: 1\n", &vars).unwrap_err();
        assert!(err.contains("bogus") && err.contains("line 6"), "{err}");
        let err = with_env("server:\n  pid_file: ${V}\n  bogus: 1\n", &vars).unwrap_err();
        assert!(err.contains("bogus") && err.contains("line 6"), "{err}");
        let err = with_env(
            "server:\n  pid_file: first ${V}\n    second\n  bogus: 1\n",
            &vars,
        )
        .unwrap_err();
        assert!(err.contains("bogus") && err.contains("line 7"), "{err}");
        let err = with_env("server:\n  pid_file: \"first\n    ${NOPE}\"\n", &vars).unwrap_err();
        assert!(err.contains("NOPE") && err.contains("line 6"), "{err}");
    }

    #[test]
    fn a_value_that_is_not_unicode_is_named_as_such() {
        let err =
            Config::from_yaml_with(&format!("{MINIMAL}server: {{pid_file: ${{V}}}}\n"), |_| {
                Err(std::env::VarError::NotUnicode("\u{fffd}".into()))
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("V") && err.contains("not valid Unicode"),
            "{err}"
        );
    }

    #[test]
    fn nested_bad_duration_names_the_key() {
        let text = "listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: http://127.0.0.1:9}}\nroutes:\n  - path_prefix: /\n    upstream: u\n    idle_timeout: 30x\n";
        let err = Config::from_yaml(text).unwrap_err().to_string();
        assert!(err.contains("routes[0].idle_timeout"), "{err}");
        assert!(err.contains("unknown unit"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }
}
