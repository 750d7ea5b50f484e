//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1), the
//! upstream's `Host` and configured headers, request body framing, and the stream response
//! headers that stop intermediaries and browsers from buffering.

use crate::route::UpstreamSpec;
use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
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
}

impl UpstreamRequest<'_> {
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
        let mut req = RequestHeader::build(client.method.clone(), target.as_bytes(), None)?;
        let tokens = connection_tokens(&client.headers);
        for (name, value) in client.headers.iter() {
            if is_hop_by_hop(name, &tokens)
                || name == header::HOST
                || name == header::CONTENT_LENGTH
                || (self.stream && name == header::ACCEPT_ENCODING)
                || (self.strip_client_key
                    && crate::auth::CLIENT_KEY_HEADERS.contains(&name.as_str()))
            {
                continue;
            }
            req.append_header(name.clone(), value.clone())?;
        }
        req.insert_header(header::HOST, self.upstream.target.authority())?;
        req.insert_header(crate::request_id::HEADER, self.request_id)?;
        if let Some(addr) = &self.client_addr {
            let forwarded = match client.headers.get("x-forwarded-for") {
                Some(prior) => format!("{}, {addr}", String::from_utf8_lossy(prior.as_bytes())),
                None => addr.clone(),
            };
            req.insert_header("x-forwarded-for", forwarded)?;
        }
        match self.body {
            BodyFraming::Empty => {}
            BodyFraming::Sized(len) => req.insert_header(header::CONTENT_LENGTH, len)?,
            BodyFraming::Streamed {
                content_length: Some(len),
            } => req.insert_header(header::CONTENT_LENGTH, len)?,
            BodyFraming::Streamed {
                content_length: None,
            } => req.insert_header(header::TRANSFER_ENCODING, "chunked")?,
        }
        for (name, value) in &self.upstream.headers {
            req.insert_header(name.clone(), value.clone())?;
        }
        Ok(req)
    }
}

/// The response head sent to the client for the upstream's head.
pub fn client_response(
    upstream: &ResponseHeader,
    event_stream: bool,
    request_id: &str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(
        upstream.status,
        Some(upstream.headers.len() + 3 + extra.len()),
    )?;
    let tokens = connection_tokens(&upstream.headers);
    for (name, value) in upstream.headers.iter() {
        let keep = if event_stream {
            !is_hop_by_hop(name, &tokens)
                && name != header::CONTENT_LENGTH
                && name != header::CONTENT_ENCODING
                && name != header::CACHE_CONTROL
        } else {
            // The client's framing follows the upstream's: a chunked body stays chunked.
            name == header::TRANSFER_ENCODING || !is_hop_by_hop(name, &tokens)
        };
        if keep {
            resp.append_header(name.clone(), value.clone())?;
        }
    }
    resp.insert_header(crate::request_id::HEADER, request_id)?;
    for (name, value) in extra {
        resp.insert_header(name.clone(), value.clone())?;
    }
    if event_stream {
        resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
        resp.insert_header("x-accel-buffering", "no")?;
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(resp)
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
            pool_idle_timeout: Duration::from_secs(1),
            tls_verify: true,
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
        }
        .build()
        .unwrap();
        assert_eq!(req.headers["transfer-encoding"], "chunked");
        assert_eq!(req.headers["accept-encoding"], "gzip, br");
    }

    #[test]
    fn event_stream_response_headers() {
        let mut up = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("content-type", "text/event-stream"),
            ("content-length", "100"),
            ("content-encoding", "gzip"),
            ("connection", "keep-alive"),
            ("x-upstream-id", "abc"),
        ] {
            up.append_header(k, v).unwrap();
        }
        let resp = client_response(&up, true, "rid", &[]).unwrap();
        assert_eq!(resp.headers["cache-control"], "no-cache");
        assert_eq!(resp.headers["x-accel-buffering"], "no");
        assert_eq!(resp.headers["x-upstream-id"], "abc");
        assert_eq!(resp.headers["x-request-id"], "rid");
        for gone in ["content-length", "content-encoding", "connection"] {
            assert!(!resp.headers.contains_key(gone), "{gone}");
        }
        let plain = client_response(&up, false, "rid", &[]).unwrap();
        assert_eq!(plain.headers["content-length"], "100");
    }
}
