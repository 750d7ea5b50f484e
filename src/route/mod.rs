//! Request path → route → upstream. Pure: the edge turns a [`UpstreamTarget`] into a connection.

mod target;

pub use target::{Scheme, UpstreamTarget};

use crate::auth::{AuthMode, Authenticator, KeysFile};
use crate::config::Config;
use crate::limits::StreamLimits;
use crate::provider::Provider;
use crate::sse::RelayPolicy;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One configured upstream, resolved from the config.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub target: UpstreamTarget,
    /// Headers set on every request, overriding the client's.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// TCP connect.
    pub connect_timeout: std::time::Duration,
    /// TLS handshake (https), after the TCP connect.
    pub tls_handshake_timeout: std::time::Duration,
    pub pool_idle_timeout: std::time::Duration,
    /// How long a host name's addresses are kept before they are looked up again.
    pub dns_refresh: std::time::Duration,
    pub tls_verify: bool,
    /// CA bundle to verify an https upstream with; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Name sent as SNI and verified (https): the configured `sni`, else the URL's host.
    pub sni: String,
    /// Offer HTTP/2 (https: by ALPN; http: prior knowledge).
    pub http2: bool,
    /// With `http2`: how often each connection is PINGed (`None`: never).
    pub http2_ping: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Label for metrics and logs: the route's path prefix.
    pub name: String,
    pub path_prefix: String,
    pub upstream: Arc<UpstreamSpec>,
    pub provider: Provider,
    pub policy: RelayPolicy,
    /// `Some(false)` never adds `include_usage`; `None` adds it for `openai` and `auto`.
    pub include_usage: Option<bool>,
    pub usage_comment: bool,
    /// Who may call this route.
    pub auth: Arc<Authenticator>,
    /// Per-caller limits: the route's own, else the top-level ones.
    pub limits: StreamLimits,
    /// Largest request body forwarded upstream, in bytes (`routes[].max_request_body`).
    pub max_request_body: u64,
    /// Largest request head forwarded upstream, in bytes (`server.max_request_header`).
    pub max_request_header: usize,
}

/// The keys files a config names, loaded once each (routes sharing a file share its reloads).
pub type KeysFiles = BTreeMap<PathBuf, Arc<KeysFile>>;

#[derive(Debug, Clone)]
pub struct Router {
    /// Longest prefix first, so the first match is the most specific.
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// Builds the router from a validated config and its loaded keys files.
    pub fn from_config(config: &Config, keys_files: &KeysFiles) -> Router {
        let upstreams: std::collections::BTreeMap<&str, Arc<UpstreamSpec>> = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                let target = UpstreamTarget::parse(&u.url).expect("validated upstream url");
                let spec = UpstreamSpec {
                    name: name.clone(),
                    target: target.clone(),
                    headers: u
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                http::HeaderName::from_bytes(k.as_bytes()).expect("validated"),
                                http::HeaderValue::from_str(v).expect("validated"),
                            )
                        })
                        .collect(),
                    connect_timeout: u.connect_timeout,
                    tls_handshake_timeout: u.tls_handshake_timeout,
                    pool_idle_timeout: u.pool_idle_timeout,
                    dns_refresh: u.dns_refresh,
                    tls_verify: u.tls_verify,
                    ca_file: u.ca_file.clone(),
                    sni: u.sni.clone().unwrap_or_else(|| target.host.clone()),
                    http2: u.http2,
                    http2_ping: u.http2_ping,
                };
                (name.as_str(), Arc::new(spec))
            })
            .collect();
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let auth = config.route_auth(i);
                let auth = match auth.mode {
                    AuthMode::None => Authenticator::None,
                    AuthMode::Passthrough => Authenticator::Passthrough,
                    AuthMode::Keys => {
                        let path = auth.keys_file.as_ref().expect("validated: keys_file");
                        Authenticator::Keys(keys_files[path].clone())
                    }
                };
                let limits = StreamLimits {
                    per_user_streams: r.limits.per_user_streams.or(config.limits.per_user_streams),
                    per_key_streams: r.limits.per_key_streams.or(config.limits.per_key_streams),
                    per_user_rpm: r.limits.per_user_rpm.or(config.limits.per_user_rpm),
                };
                Arc::new(Route {
                    name: r.path_prefix.clone(),
                    path_prefix: r.path_prefix.clone(),
                    upstream: upstreams[r.upstream.as_str()].clone(),
                    provider: r.provider,
                    policy: RelayPolicy {
                        idle_timeout: r.idle_timeout,
                        heartbeat: r.heartbeat,
                        max_duration: r.max_duration,
                    },
                    include_usage: r.include_usage,
                    usage_comment: r.usage_comment,
                    max_request_body: r.max_request_body,
                    max_request_header: config.server.max_request_header,
                    auth: Arc::new(auth),
                    limits,
                })
            })
            .collect();
        // Stable sort: among equal prefixes the first in the file wins.
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Router { routes }
    }

    /// The route for a path as [`match_path`] gives it.
    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path_prefix))
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

/// The path a request is routed by: what an upstream resolves it to. Upstream servers decode a
/// percent-encoded path before they dispatch it (and nginx merges repeated slashes), so a raw
/// `/v1/%61dmin` or `/v1//admin` reaches the upstream's `/v1/admin`: matched raw, it would miss
/// the `/v1/admin` route (its auth, limits and provider) and take a looser one. Printable ASCII
/// is decoded (`/` too); `%`, `?` and `#` stay encoded, as decoding them would change what the
/// rest of the target means, and so do bytes outside printable ASCII (no route has them).
pub fn match_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') && !path.contains("//") {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let mut byte = bytes[i];
        let mut width = 1;
        if byte == b'%' && i + 2 < bytes.len() {
            let decoded = (bytes[i + 1] as char)
                .to_digit(16)
                .zip((bytes[i + 2] as char).to_digit(16))
                .map(|(high, low)| (high << 4 | low) as u8);
            if let Some(decoded) = decoded.filter(|b| (0x21..=0x7e).contains(b)) {
                if !matches!(decoded, b'%' | b'?' | b'#') {
                    byte = decoded;
                    width = 3;
                }
            }
        }
        if !(byte == b'/' && out.last() == Some(&b'/')) {
            out.push(byte);
        }
        i += width;
    }
    // Only ASCII was decoded, and what was not decoded was copied from a `str`.
    std::borrow::Cow::Owned(String::from_utf8(out).expect("decoded ASCII only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let config = Config::from_yaml(
            "listen: [{addr: 127.0.0.1:1}]\nupstreams: {a: {url: http://127.0.0.1:1}, b: {url: http://127.0.0.1:2}}\nroutes:\n  - {path_prefix: /, upstream: a}\n  - {path_prefix: /v1/messages, upstream: b, provider: anthropic}\n",
        )
        .unwrap();
        let router = Router::from_config(&config, &KeysFiles::new());
        assert_eq!(router.route("/v1/messages").unwrap().upstream.name, "b");
        assert_eq!(router.route("/v1/chat").unwrap().upstream.name, "a");
        assert_eq!(
            router.route("/v1/messages").unwrap().provider,
            Provider::Anthropic
        );
    }

    #[test]
    fn paths_are_matched_as_an_upstream_resolves_them() {
        for (raw, matched) in [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/v1/%61dmin/x", "/v1/admin/x"),
            ("/v1/adm%69n", "/v1/admin"),
            ("/v1/chat/c%6Fmpletions", "/v1/chat/completions"),
            ("/v1%2Fadmin", "/v1/admin"),
            ("//v1///admin/", "/v1/admin/"),
            (
                "/models/g%3AstreamGenerateContent",
                "/models/g:streamGenerateContent",
            ),
            // What would change the rest of the target, or is not ASCII, stays encoded.
            ("/a%25%3F%23b", "/a%25%3F%23b"),
            ("/caf%C3%A9/%20x", "/caf%C3%A9/%20x"),
            // Not an encoding: left as it is.
            ("/a%zz/%4", "/a%zz/%4"),
            ("/é/%", "/é/%"),
        ] {
            assert_eq!(match_path(raw), matched, "{raw}");
        }
        assert!(matches!(
            match_path("/v1/chat"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn no_match() {
        let config = Config::from_yaml(
            "listen: [{addr: 127.0.0.1:1}]\nupstreams: {a: {url: http://127.0.0.1:1}}\nroutes: [{path_prefix: /v1/, upstream: a}]\n",
        )
        .unwrap();
        assert!(Router::from_config(&config, &KeysFiles::new())
            .route("/health")
            .is_none());
    }
}
