//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1), the
//! upstream's `Host` and configured headers, request body framing, and the stream response
//! headers that stop intermediaries and browsers from buffering.

use crate::http1::ResponseHead;
use crate::route::UpstreamSpec;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType::InvalidHTTPHeader, OrErr, Result};

/// Removed in both directions, with every header the `Connection` header names. The last two are
/// meant for a proxy (RFC 9110 §11.7): a client's proxy credentials are not the upstream's, and
/// an upstream's proxy challenge is not for the client.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

fn is_hop_by_hop(name: &HeaderName, connection_tokens: &[String]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || connection_tokens.iter().any(|t| t == name.as_str())
}

/// Header names the `Connection` header lists: hop-by-hop as well.
fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// How the request body is framed towards the upstream.
pub enum BodyFraming {
    /// No body.
    Empty,
    /// The whole body is known: its length.
    Sized(usize),
    /// Only a prefix is known: keep the client's length if it sent one, else chunked.
    Streamed { content_length: Option<u64> },
}

pub struct UpstreamRequest<'a> {
    pub client: &'a RequestHeader,
    pub upstream: &'a UpstreamSpec,
    pub client_addr: Option<String>,
    pub request_id: &'a str,
    pub body: BodyFraming,
    /// Stream requests never ask the upstream for a compressed body.
    pub stream: bool,
    /// The client's key is Sluice's own (auth `keys` mode): it never reaches the upstream.
    pub strip_client_key: bool,
    /// A WebSocket handshake: `Upgrade` and `Connection: upgrade` are kept (the only case where
    /// they are).
    pub websocket: bool,
}

impl UpstreamRequest<'_> {
    /// The head sent upstream, on a plain header map like [`response_head`] (Sluice's HTTP/1.1
    /// client writes names in lower case, and HTTP/2 requires it).
    pub fn build(&self) -> Result<RequestHeader> {
        let client = self.client;
        let path = client
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let path = if self.strip_client_key {
            crate::auth::remove_key_param(path)
        } else {
            path.into()
        };
        let target = self.upstream.target.upstream_path(&path);
        let uri =
            http::Uri::try_from(target).or_err(InvalidHTTPHeader, "upstream request target")?;
        let mut headers =
            HeaderMap::with_capacity(client.headers.len() + 5 + self.upstream.headers.len());
        let tokens = connection_tokens(&client.headers);
        for (name, value) in client.headers.iter() {
            if is_hop_by_hop(name, &tokens)
                || name == header::HOST
                || name == header::CONTENT_LENGTH
                || (self.stream && name == header::ACCEPT_ENCODING)
                // Sluice reads the body before it goes upstream, and answers `100-continue`
                // itself.
                || name == header::EXPECT
                || (self.strip_client_key
                    && crate::auth::CLIENT_KEY_HEADERS.contains(&name.as_str()))
            {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if self.websocket {
            if let Some(upgrade) = client.headers.get(header::UPGRADE) {
                headers.insert(header::UPGRADE, upgrade.clone());
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
        }
        headers.insert(header::HOST, self.upstream.target.host_header().clone());
        headers.insert(crate::request_id::HEADER, header_value(self.request_id)?);
        if let Some(addr) = &self.client_addr {
            let forwarded = match client.headers.get("x-forwarded-for") {
                Some(prior) => format!("{}, {addr}", String::from_utf8_lossy(prior.as_bytes())),
                None => addr.clone(),
            };
            headers.insert("x-forwarded-for", header_value(forwarded)?);
        }
        match self.body {
            BodyFraming::Empty => {}
            BodyFraming::Sized(len) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            BodyFraming::Streamed {
                content_length: Some(len),
            } => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            BodyFraming::Streamed {
                content_length: None,
            } => {
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
        }
        for (name, value) in &self.upstream.headers {
            headers.insert(name.clone(), value.clone());
        }
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = client.method.clone();
        parts.uri = uri;
        parts.headers = headers;
        Ok(RequestHeader::from(parts))
    }
}

fn header_value(value: impl AsRef<str>) -> Result<HeaderValue> {
    HeaderValue::from_str(value.as_ref()).or_err(InvalidHTTPHeader, "invalid header value")
}

/// How the client's response head is shaped from the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseShape {
    /// The upstream's framing is kept: a chunked body stays chunked, a length stays.
    Plain,
    /// A stream (event stream, JSON lines): chunked, never compressed, never cached or buffered.
    Stream,
    /// The `101 Switching Protocols` that accepts a WebSocket handshake.
    Upgrade,
}

/// The response head sent to the client for the upstream's head.
///
/// Takes the upstream's head: its names and values move into the client's head rather than
/// being cloned. Pingora keeps the client's head for as long as the response lasts, and a cloned
/// custom name or value would hold an extra shared allocation each (~40 of them behind a
/// provider's head) in every open stream.
pub fn client_response(
    upstream: ResponseHead,
    shape: ResponseShape,
    request_id: &str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<ResponseHeader> {
    let ResponseHead {
        status,
        reason,
        headers: upstream_headers,
        ..
    } = upstream;
    let tokens = connection_tokens(&upstream_headers);
    // An HTTP/2 upstream may leave a plain body unframed; the client still needs to know where
    // it ends without losing its connection.
    let framed = upstream_headers.contains_key(header::CONTENT_LENGTH)
        || upstream_headers.contains_key(header::TRANSFER_ENCODING);
    let has_body = !(status.as_u16() < 200 || status == 204 || status == 304);
    let needs_chunked = shape == ResponseShape::Plain && !framed && has_body;
    let keep = |name: &HeaderName| match shape {
        ResponseShape::Stream => {
            !is_hop_by_hop(name, &tokens)
                && name != header::CONTENT_LENGTH
                && name != header::CONTENT_ENCODING
                && name != header::CACHE_CONTROL
        }
        // The client's framing follows the upstream's: a chunked body stays chunked.
        ResponseShape::Plain => name == header::TRANSFER_ENCODING || !is_hop_by_hop(name, &tokens),
        ResponseShape::Upgrade => !is_hop_by_hop(name, &tokens) && name != header::CONTENT_LENGTH,
    };
    let mut headers = HeaderMap::with_capacity(upstream_headers.len() + 3 + extra.len());
    let mut upgrade = None;
    // The map yields each name once, with its first value; the name's other values follow
    // without it.
    let mut current: Option<header::OccupiedEntry<'_, HeaderValue>> = None;
    for (name, value) in upstream_headers {
        let Some(name) = name else {
            if let Some(entry) = current.as_mut() {
                entry.append(value);
            }
            continue;
        };
        current = None;
        if shape == ResponseShape::Upgrade && name == header::UPGRADE {
            upgrade = Some(value);
        } else if keep(&name) {
            // Always vacant (the map yields each name once); appending would be right anyway.
            current = Some(match headers.entry(name) {
                header::Entry::Occupied(mut entry) => {
                    entry.append(value);
                    entry
                }
                header::Entry::Vacant(entry) => entry.insert_entry(value),
            });
        }
    }
    headers.insert(crate::request_id::HEADER, header_value(request_id)?);
    for (name, value) in extra {
        headers.insert(name.clone(), value.clone());
    }
    match shape {
        ResponseShape::Stream => {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        ResponseShape::Upgrade => {
            if let Some(upgrade) = upgrade {
                headers.insert(header::UPGRADE, upgrade);
            }
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        ResponseShape::Plain if needs_chunked => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        ResponseShape::Plain => {}
    }
    let mut head = response_head(status, headers);
    head.set_reason_phrase(reason.as_deref())?;
    Ok(head)
}

/// A Pingora response head holding `headers` as they are. Pingora's own builder renders each
/// name in Title-Case, re-parses it and keeps a case map (~1,100 instructions a header, and the
/// map lives as long as the response); Sluice's heads have none, so names go out in lower case on
/// HTTP/1.1, as HAProxy and Envoy send them.
pub fn response_head(status: http::StatusCode, headers: HeaderMap) -> ResponseHeader {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    ResponseHeader::from(parts)
}

/// A WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1 `GET` with `Upgrade: websocket`
/// and `Connection: upgrade` (tokens in any case, among others).
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req.method == http::Method::GET
        && asks_for_websocket(&req.headers)
        && connection_tokens(&req.headers)
            .iter()
            .any(|t| t == "upgrade")
}

/// The request names `websocket` in its `Upgrade` header, whatever its version and method.
pub fn asks_for_websocket(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.trim()
                .split('/')
                .next()
                .is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::UpstreamTarget;
    use std::time::Duration;

    fn spec() -> UpstreamSpec {
        UpstreamSpec {
            name: "u".into(),
            target: UpstreamTarget::parse("https://api.example.com/base").unwrap(),
            headers: vec![(
                HeaderName::from_static("authorization"),
                http::HeaderValue::from_static("Bearer provider-key"),
            )],
            connect_timeout: Duration::from_secs(1),
            tls_handshake_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            tls_verify: true,
            ca_file: None,
            sni: "api.example.com".into(),
            http2: false,
        }
    }

    /// An upstream response head as Sluice's HTTP/1.1 client parses it.
    fn upstream_head(status: u16, headers: &[(&'static str, &'static str)]) -> ResponseHead {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        ResponseHead {
            status: http::StatusCode::from_u16(status).unwrap(),
            version: http::Version::HTTP_11,
            reason: None,
            headers: map,
        }
    }

    fn client() -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v1/chat?x=1", None).unwrap();
        for (k, v) in [
            ("host", "sluice.local"),
            ("authorization", "Bearer client"),
            ("accept-encoding", "gzip, br"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("content-length", "10"),
            ("x-keep", "yes"),
        ] {
            req.append_header(k, v).unwrap();
        }
        req
    }

    #[test]
    fn upstream_request_rewrites_headers() {
        let (client, spec) = (client(), spec());
        let req = UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_addr: Some("10.0.0.1".into()),
            request_id: "rid-1",
            body: BodyFraming::Sized(10),
            stream: true,
            strip_client_key: false,
            websocket: false,
        }
        .build()
        .unwrap();
        assert_eq!(req.uri.to_string(), "/base/v1/chat?x=1");
        assert_eq!(req.headers["host"], "api.example.com");
        assert_eq!(req.headers["authorization"], "Bearer provider-key");
        assert_eq!(req.headers["content-length"], "10");
        assert_eq!(req.headers["x-keep"], "yes");
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1");
        assert_eq!(req.headers["x-request-id"], "rid-1");
        for gone in ["accept-encoding", "connection", "x-private"] {
            assert!(!req.headers.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn own_keys_never_reach_the_upstream() {
        let spec = spec();
        let mut client =
            RequestHeader::build("POST", b"/v1/chat?key=sk-sluice-secret&x=1", None).unwrap();
        for (k, v) in [
            ("authorization", "Bearer sk-sluice-secret"),
            ("x-api-key", "sk-sluice-secret"),
            ("x-goog-api-key", "sk-sluice-secret"),
        ] {
            client.append_header(k, v).unwrap();
        }
        let req = UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_addr: None,
            request_id: "rid-3",
            body: BodyFraming::Empty,
            stream: true,
            strip_client_key: true,
            websocket: false,
        }
        .build()
        .unwrap();
        assert_eq!(req.uri.to_string(), "/base/v1/chat?x=1");
        assert_eq!(req.headers["authorization"], "Bearer provider-key");
        assert!(!req.headers.contains_key("x-api-key"));
        assert!(!req.headers.contains_key("x-goog-api-key"));
    }

    #[test]
    fn streamed_body_without_length_is_chunked() {
        let (client, spec) = (client(), spec());
        let req = UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_addr: None,
            request_id: "rid-2",
            body: BodyFraming::Streamed {
                content_length: None,
            },
            stream: false,
            strip_client_key: false,
            websocket: false,
        }
        .build()
        .unwrap();
        assert_eq!(req.headers["transfer-encoding"], "chunked");
        assert_eq!(req.headers["accept-encoding"], "gzip, br");
    }

    #[test]
    fn event_stream_response_headers() {
        let up = upstream_head(
            200,
            &[
                ("content-type", "text/event-stream"),
                ("content-length", "100"),
                ("content-encoding", "gzip"),
                ("connection", "keep-alive"),
                ("x-upstream-id", "abc"),
            ],
        );
        let resp = client_response(up.clone(), ResponseShape::Stream, "rid", &[]).unwrap();
        assert_eq!(resp.headers["cache-control"], "no-cache");
        assert_eq!(resp.headers["x-accel-buffering"], "no");
        assert_eq!(resp.headers["x-upstream-id"], "abc");
        assert_eq!(resp.headers["x-request-id"], "rid");
        for gone in ["content-length", "content-encoding", "connection"] {
            assert!(!resp.headers.contains_key(gone), "{gone}");
        }
        let plain = client_response(up, ResponseShape::Plain, "rid", &[]).unwrap();
        assert_eq!(plain.headers["content-length"], "100");
    }

    #[test]
    fn a_provider_head_moves_over_whole_and_in_order() {
        let mut up = upstream_head(
            200,
            &[
                ("date", "Sat, 05 Dec 2026 06:40:00 GMT"),
                ("content-type", "text/event-stream; charset=utf-8"),
                ("transfer-encoding", "chunked"),
                ("openai-processing-ms", "187"),
                ("set-cookie", "__cf_bm=a; path=/"),
                ("x-ratelimit-remaining-tokens", "29999978"),
                ("set-cookie", "_cfuvid=b; path=/"),
                ("x-request-id", "req_upstream"),
            ],
        );
        up.reason = Some("Streaming".into());
        let resp = client_response(up, ResponseShape::Stream, "rid", &[]).unwrap();
        let names: Vec<_> = resp.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names[..5],
            [
                "date",
                "content-type",
                "openai-processing-ms",
                "set-cookie",
                "x-ratelimit-remaining-tokens"
            ]
        );
        let cookies: Vec<_> = resp.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["__cf_bm=a; path=/", "_cfuvid=b; path=/"]);
        assert_eq!(resp.headers["x-request-id"], "rid");
        assert_eq!(resp.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(resp.headers["transfer-encoding"], "chunked");
        assert_eq!(resp.get_reason_phrase(), Some("Streaming"));
    }

    #[test]
    fn a_dropped_name_takes_all_its_values_along() {
        let up = upstream_head(
            200,
            &[
                ("cache-control", "private"),
                ("x-a", "1"),
                ("connection", "keep-alive"),
                ("cache-control", "no-store"),
                ("x-a", "2"),
                ("connection", "x-b"),
                ("x-b", "secret"),
                ("x-c", "3"),
            ],
        );
        let resp = client_response(up, ResponseShape::Stream, "rid", &[]).unwrap();
        let cache: Vec<_> = resp.headers.get_all("cache-control").iter().collect();
        assert_eq!(cache, ["no-cache"]);
        let a: Vec<_> = resp.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(resp.headers["x-c"], "3");
        assert!(!resp.headers.contains_key("connection"));
        assert!(!resp.headers.contains_key("x-b"));

        let up = upstream_head(
            101,
            &[
                ("upgrade", "websocket"),
                ("x-d", "4"),
                ("upgrade", "h2c"),
                ("connection", "upgrade"),
            ],
        );
        let resp = client_response(up, ResponseShape::Upgrade, "rid", &[]).unwrap();
        let upgrade: Vec<_> = resp.headers.get_all("upgrade").iter().collect();
        assert_eq!(upgrade, ["websocket"]);
        assert_eq!(resp.headers["x-d"], "4");
    }

    #[test]
    fn hop_by_hop_headers_go_both_ways() {
        let spec = spec();
        let mut client = RequestHeader::build("POST", b"/v1/chat", None).unwrap();
        for (k, v) in [
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("proxy-authorization", "Basic cHJveHk="),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("transfer-encoding", "chunked"),
        ] {
            client.append_header(k, v).unwrap();
        }
        let req = UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_addr: None,
            request_id: "rid",
            body: BodyFraming::Sized(3),
            stream: false,
            strip_client_key: false,
            websocket: false,
        }
        .build()
        .unwrap();
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "trailer",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
            "expect",
            "transfer-encoding",
        ] {
            assert!(!req.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(req.headers["content-length"], "3");

        let up = upstream_head(
            200,
            &[
                ("connection", "x-up-secret"),
                ("x-up-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("upgrade", "h2c"),
                ("content-length", "2"),
            ],
        );
        for shape in [ResponseShape::Plain, ResponseShape::Stream] {
            let resp = client_response(up.clone(), shape, "rid", &[]).unwrap();
            for gone in [
                "connection",
                "x-up-secret",
                "keep-alive",
                "proxy-authenticate",
                "upgrade",
            ] {
                assert!(!resp.headers.contains_key(gone), "{shape:?} {gone}");
            }
        }
    }

    #[test]
    fn websocket_handshake_keeps_upgrade_both_ways() {
        let spec = spec();
        let mut client = RequestHeader::build("GET", b"/v1/realtime", None).unwrap();
        for (k, v) in [
            ("connection", "keep-alive, Upgrade, x-secret"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat"),
        ] {
            client.append_header(k, v).unwrap();
        }
        assert!(is_websocket_upgrade(&client));
        let req = UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_addr: None,
            request_id: "rid",
            body: BodyFraming::Empty,
            stream: true,
            strip_client_key: false,
            websocket: true,
        }
        .build()
        .unwrap();
        assert_eq!(req.headers["upgrade"], "websocket");
        assert_eq!(req.headers["connection"], "upgrade");
        assert_eq!(req.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.headers["sec-websocket-protocol"], "chat");
        assert!(!req.headers.contains_key("x-secret"));

        let up = upstream_head(
            101,
            &[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
        );
        let resp = client_response(up, ResponseShape::Upgrade, "rid", &[]).unwrap();
        assert_eq!(resp.status, 101);
        assert_eq!(resp.headers["upgrade"], "websocket");
        assert_eq!(resp.headers["connection"], "upgrade");
        assert_eq!(
            resp.headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn websocket_handshake_detection() {
        let build = |method: &str, headers: &[(&str, &str)]| {
            let mut req = RequestHeader::build(method, b"/ws", None).unwrap();
            for (k, v) in headers {
                req.append_header(k.to_string(), *v).unwrap();
            }
            req
        };
        let ws = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, upgrade"),
        ];
        assert!(is_websocket_upgrade(&build("GET", &ws)));
        assert!(!is_websocket_upgrade(&build("POST", &ws)));
        assert!(!is_websocket_upgrade(&build(
            "GET",
            &[("upgrade", "websocket")]
        )));
        assert!(!is_websocket_upgrade(&build(
            "GET",
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        )));
        let mut old = build("GET", &ws);
        old.set_version(http::Version::HTTP_10);
        assert!(!is_websocket_upgrade(&old));
    }
}
