//! The client's request on its way upstream: what is refused before anything is sent (a head or
//! body over its limit, a path that could climb out of the route), the body read ahead of
//! forwarding, and the sending itself.

use crate::edge::headers::{asks_for_websocket, values, BodyFraming, UpstreamHead};
use crate::edge::timer;
use crate::edge::upstream::UpstreamConn;
use crate::provider::{ProxyError, ProxyErrorKind};
use crate::route::Route;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Request bodies up to this size are read whole before the request goes upstream, so that a
/// JSON `"stream": true` can be seen (and `include_usage` added); larger ones stream through
/// uninspected.
pub const INSPECT_BODY_LIMIT: usize = 1024 * 1024;

/// Most header fields a request may have: Pingora's HTTP/1.1 limit, kept over HTTP/2.
const MAX_REQUEST_FIELDS: usize = 256;

/// The refusals that need only the request head: `431`, `400`, `501`, `413`.
pub fn check_head(route: &Route, down: &ServerSession) -> Result<(), ProxyError> {
    let req = down.req_header();
    let size = head_size(req);
    if size > route.max_request_header {
        return Err(ProxyError::new(
            ProxyErrorKind::HeadersTooLarge,
            format!(
                "the request head is {size} bytes, over this server's limit of {} bytes",
                route.max_request_header
            ),
        ));
    }
    // Pingora's HTTP/1.1 reader refuses a head of more fields while reading it; HTTP/2 has no
    // such bound of its own, so a client could send thousands of small fields upstream.
    if down.is_http2() && req.headers.len() > MAX_REQUEST_FIELDS {
        return Err(ProxyError::new(
            ProxyErrorKind::BadRequest,
            format!("the request has over {MAX_REQUEST_FIELDS} header fields"),
        ));
    }
    if let Some(why) = unsafe_path(req.uri.path()) {
        return Err(ProxyError::new(
            ProxyErrorKind::BadRequest,
            format!("the request path is refused: {why}"),
        ));
    }
    if down.is_http2() && asks_for_websocket(values(&req.headers, &http::header::UPGRADE)) {
        return Err(ProxyError::new(
            ProxyErrorKind::BadRequest,
            "WebSocket is only relayed over HTTP/1.1 (HTTP/2 extended CONNECT is not supported)",
        ));
    }
    // Pingora takes a body whose last transfer coding is `chunked` and takes off only that one;
    // forwarded with a length, the rest (`gzip, chunked`) would reach the upstream still coded
    // and unannounced (RFC 9112 §6.1: 501 for a coding not understood).
    if !crate::http1::only_chunked(values(&req.headers, &http::header::TRANSFER_ENCODING)) {
        return Err(ProxyError::new(
            ProxyErrorKind::NotImplemented,
            "only the chunked transfer coding is accepted on a request body",
        ));
    }
    if let Some(declared) = declared_length(req) {
        if declared > route.max_request_body {
            return Err(too_large(route));
        }
    }
    Ok(())
}

pub fn too_large(route: &Route) -> ProxyError {
    ProxyError::new(
        ProxyErrorKind::PayloadTooLarge,
        format!(
            "the request body is over this route's limit of {} bytes",
            route.max_request_body
        ),
    )
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or one whose `Host` is not a host (and
/// port), gets a `400` (two `Host` fields are refused while the head is read). Asked of every
/// HTTP/1.x request before it is routed.
pub fn check_host(req: &RequestHeader) -> Result<(), ProxyError> {
    match req.headers.get(http::header::HOST) {
        None if req.version == http::Version::HTTP_11 => Err(ProxyError::new(
            ProxyErrorKind::BadRequest,
            "an HTTP/1.1 request must have a Host header",
        )),
        Some(host) if !valid_host(host.as_bytes()) => Err(ProxyError::new(
            ProxyErrorKind::BadRequest,
            "the Host header is not a host name or address (with an optional port)",
        )),
        _ => Ok(()),
    }
}

/// RFC 9112 §3.2: an HTTP/1.x request target is origin-form (`/…`) or absolute-form (`http://…`)
/// (`CONNECT`'s authority-form is refused before). Pingora percent-encodes what httparse refuses
/// in a request line rather than refusing it, so `POST  /v1/x HTTP/1.1` (two spaces) arrives
/// with the target `%20/v1/x`, of which the `http` crate makes no path at all: it would be
/// routed and forwarded as a request for `/`, a request the client never made. Asked of every
/// HTTP/1.x request before it is routed (HTTP/2 has no request line).
pub fn check_target(req: &RequestHeader) -> Result<(), ProxyError> {
    let target = req.raw_path();
    let has_scheme = |scheme: &[u8]| {
        target
            .get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    };
    // `OPTIONS *` (RFC 9112 §3.2.4) is a request of its own, about the server.
    let asterisk = target == b"*" && req.method == http::Method::OPTIONS;
    if asterisk || target.starts_with(b"/") || has_scheme(b"http://") || has_scheme(b"https://") {
        return Ok(());
    }
    Err(ProxyError::new(
        ProxyErrorKind::BadRequest,
        "the request target is neither a path nor an http(s) URI",
    ))
}

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2–3.2.3): a bracketed IPv6 address, or a name or IPv4
/// address of unreserved, percent-encoded and sub-delimiter characters; empty is allowed (a
/// target URI without authority).
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &value[1..end];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                {
                    return false;
                }
                (&value[..=end], &value[end + 1..])
            }
            None => return false,
        },
        _ => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        },
    };
    let name_ok = host.first() == Some(&b'[')
        || host.iter().enumerate().all(|(i, &b)| {
            b.is_ascii_alphanumeric()
                || b"-._~!$&'()*+,;=".contains(&b)
                || (b == b'%'
                    && host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        });
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    name_ok && port_ok
}

/// The request line and headers, counted as they are on the wire (HTTP/1.1 framing).
pub fn head_size(req: &RequestHeader) -> usize {
    // "METHOD SP target SP HTTP/1.1 CRLF", then "name: value CRLF" each, then CRLF.
    let line = req.method.as_str().len() + 1 + req.raw_path().len() + 11;
    let headers: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

/// Why a path is refused, if it is: a `.` or `..` segment, written plainly or percent-encoded
/// (`%2e`), including segments that only appear once an encoded `/` or `\` (`%2f`, `%5c`) or a
/// raw `\` is read as a separator. An upstream that resolves such a path could serve something
/// outside the route's prefix or the upstream's base path.
pub fn unsafe_path(path: &str) -> Option<&'static str> {
    // As the upstream resolves the path (`%2e`, `%2f`, `%5c` decoded), with `\` as a separator.
    crate::route::match_path(path)
        .split(['/', '\\'])
        .any(|segment| segment == "." || segment == "..")
        .then_some("it has a `.` or `..` segment (plain or percent-encoded)")
}

/// The body's length as Pingora frames it: `Content-Length: 5, 5` (or the field twice) is 5 to
/// Pingora, so it must be 5 here too, or such a body would slip past the early `413` (and get a
/// `100 Continue`) and go upstream rechunked. Pingora refused the head already when the values
/// disagree or are not numbers, and drops `Content-Length` beside `Transfer-Encoding`.
fn declared_length(req: &RequestHeader) -> Option<u64> {
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    crate::http1::agreed_content_length(values(&req.headers, &http::header::CONTENT_LENGTH))
        .ok()
        .flatten()
}

/// An HTTP/1.1 client that sent `Expect: 100-continue` waits for it before sending its body:
/// Sluice reads the body before going upstream, so it answers itself (after the head passed
/// [`check_head`], so a body over the limit is refused before it is sent at all).
pub async fn answer_expect_continue(down: &mut ServerSession) -> pingora::Result<()> {
    if expects_continue(down.req_header()) && !down.is_http2() && !down.is_body_done() {
        down.write_continue_response().await?;
    }
    Ok(())
}

/// How long, and how much of, a refused body is read and dropped before the connection closes.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// After a refusal (its response already written), a client still sending its body would see
/// its connection reset, often before it read the refusal: what it sends is read and dropped
/// for a moment (at most [`LINGER`] and [`LINGER_BYTES`]) before the connection is closed, as
/// nginx's lingering close does. `body_coming`: false when the client waits for a
/// `100 Continue` it never got, and so sends nothing.
pub async fn discard_unread_body(down: &mut ServerSession, body_coming: bool) {
    if !body_coming || down.is_http2() || down.is_body_done() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut dropped = 0u64;
        while let Ok(Some(chunk)) = down.read_request_body().await {
            dropped += chunk.len() as u64;
            if dropped > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// The client sent `Expect: 100-continue`: it waits for a `100 Continue` before its body.
pub fn expects_continue(req: &RequestHeader) -> bool {
    // HTTP/1.0 clients never get a 100 (RFC 9110 §15.2).
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The request body read so far: whole when `complete`.
pub struct BodyPrefix {
    pub prefix: BytesMut,
    pub complete: bool,
    /// Its share of [`body_memory`], given back when the last copy of its bytes is dropped.
    held: Option<SemaphorePermit<'static>>,
}

/// Bytes of request bodies held in memory at once, across requests
/// (`server.request_body_memory`): every request reads up to [`INSPECT_BODY_LIMIT`] of its body
/// before anything goes upstream (and keeps it to send again), so without a bound a few hundred
/// clients that send most of a large body and then trickle the rest pin a megabyte each.
static BODY_MEMORY: OnceLock<Semaphore> = OnceLock::new();

/// Sets the bound on request-body memory, once, before any request.
pub fn set_body_memory(bytes: usize) {
    let _ = BODY_MEMORY.set(Semaphore::new(bytes));
}

fn body_memory() -> &'static Semaphore {
    BODY_MEMORY.get_or_init(|| Semaphore::new(crate::config::DEFAULT_REQUEST_BODY_MEMORY))
}

/// The bytes of a body with their share of [`body_memory`].
struct HeldBody {
    bytes: BytesMut,
    _held: SemaphorePermit<'static>,
}

impl AsRef<[u8]> for HeldBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

pub enum BodyError {
    /// The client's body could not be read (its framing is broken, its stream failed).
    Client(pingora::BError),
    /// No part of the body came for `server.request_body_timeout`.
    TimedOut,
    /// Sending it upstream failed.
    Upstream(pingora::BError),
    /// The upstream took none of it for `server.request_body_timeout` (it stopped reading: a
    /// stalled server, or one that answered early and waits for nothing more).
    UpstreamStalled,
    TooLarge,
    /// Request bodies already fill `server.request_body_memory`, and none gave any back within
    /// `server.request_body_timeout`.
    Overloaded,
}

/// What a client is told of a body that could not be read: what went wrong, never Pingora's
/// context (which may quote what the client sent).
pub fn body_error_message(e: &pingora::Error) -> &'static str {
    match e.etype() {
        pingora::ErrorType::Custom("InvalidChunk") => {
            "the request body's chunked encoding is malformed"
        }
        pingora::ErrorType::ConnectionClosed => {
            "the connection closed before the request body ended"
        }
        _ => "the request body could not be read",
    }
}

/// The next part of the request body, waited for at most `wait`: an HTTP/2 stream's reads have
/// no bound of their own (HTTP/1.1's are bounded by the session's read timeout, set to the same).
async fn next_body_part(
    down: &mut ServerSession,
    wait: Duration,
) -> Result<Option<Bytes>, BodyError> {
    match timer::timeout(wait, down.read_request_body()).await {
        Ok(Ok(part)) => Ok(part),
        Ok(Err(e)) if matches!(e.etype(), pingora::ErrorType::ReadTimedout) => {
            Err(BodyError::TimedOut)
        }
        Ok(Err(e)) => Err(BodyError::Client(e)),
        Err(timer::Elapsed) => Err(BodyError::TimedOut),
    }
}

impl BodyPrefix {
    pub fn framing(&self, client: &RequestHeader) -> BodyFraming {
        let declared = declared_length(client);
        let chunked = client.headers.contains_key(http::header::TRANSFER_ENCODING);
        if !self.complete {
            BodyFraming::Streamed {
                content_length: declared,
            }
        } else if self.prefix.is_empty() && declared.is_none() && !chunked {
            BodyFraming::Empty
        } else {
            BodyFraming::Sized(self.prefix.len())
        }
    }

    pub fn is_empty(&self) -> bool {
        self.complete && self.prefix.is_empty()
    }

    /// The bytes, holding their share of the body memory for as long as any copy of them lives
    /// (sent, and kept to send again).
    pub fn into_bytes(self) -> Bytes {
        match self.held {
            Some(held) => Bytes::from_owner(HeldBody {
                bytes: self.prefix,
                _held: held,
            }),
            None => self.prefix.freeze(),
        }
    }
}

/// Whether the request may reach the upstream twice without harm: an idempotent method (RFC 9110
/// §9.2.2) or an `Idempotency-Key` (the IETF draft's name, and the `X-` one before it).
pub fn may_send_again(req: &RequestHeader) -> bool {
    use http::Method;
    let idempotent = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(&req.method);
    idempotent
        || req.headers.contains_key("idempotency-key")
        || req.headers.contains_key("x-idempotency-key")
}

/// Reads the body up to [`INSPECT_BODY_LIMIT`] (whole if it is no larger); one that grows past
/// `max` is refused here, before anything went upstream. `wait`: longest wait for each part.
pub async fn read_body_prefix(
    down: &mut ServerSession,
    max: u64,
    wait: Duration,
) -> Result<BodyPrefix, BodyError> {
    let mut prefix = BytesMut::new();
    let mut held: Option<SemaphorePermit<'static>> = None;
    while prefix.len() < INSPECT_BODY_LIMIT {
        match next_body_part(down, wait).await? {
            Some(chunk) => {
                if prefix.len() + chunk.len() > max as usize {
                    return Err(BodyError::TooLarge);
                }
                let share = hold_body_memory(chunk.len(), wait).await?;
                match held.as_mut() {
                    Some(held) => held.merge(share),
                    None => held = Some(share),
                }
                prefix.extend_from_slice(&chunk);
            }
            None => {
                return Ok(BodyPrefix {
                    prefix,
                    complete: true,
                    held,
                })
            }
        }
    }
    // A body of exactly the limit, read whole, is complete: its declared length says so.
    let complete = declared_length(down.req_header()) == Some(prefix.len() as u64);
    Ok(BodyPrefix {
        prefix,
        complete,
        held,
    })
}

/// Takes `len` bytes of the body memory, waiting at most `wait` for other requests to give
/// some back.
async fn hold_body_memory(
    len: usize,
    wait: Duration,
) -> Result<SemaphorePermit<'static>, BodyError> {
    let memory = body_memory();
    let len = u32::try_from(len).map_err(|_| BodyError::Overloaded)?;
    if let Ok(share) = memory.try_acquire_many(len) {
        return Ok(share);
    }
    match timer::timeout(wait, memory.acquire_many(len)).await {
        Ok(Ok(share)) => Ok(share),
        _ => Err(BodyError::Overloaded),
    }
}

/// Writes the request upstream: head and the body read so far (`prefix`, the whole body when
/// `complete`) together, then the rest of the
/// body as the client sends it, stopping with [`BodyError::TooLarge`] when it grows past `max`
/// (the caller then drops the upstream connection, which aborts the request there). `wait`:
/// longest wait for each part from the client, and for the upstream to take each part.
pub async fn send_request(
    up: &mut UpstreamConn,
    head: &UpstreamHead,
    (prefix, complete): (Bytes, bool),
    down: &mut ServerSession,
    max: u64,
    wait: Duration,
) -> Result<(), BodyError> {
    let mut sent = prefix.len() as u64;
    let client = &down.req_header().headers;
    let first = up.send_head(head, client, prefix, complete);
    upstream_took(timer::timeout(wait, first).await)?;
    if complete {
        return Ok(());
    }
    while let Some(chunk) = next_body_part(down, wait).await? {
        sent += chunk.len() as u64;
        if sent > max {
            return Err(BodyError::TooLarge);
        }
        upstream_took(timer::timeout(wait, up.send_body(chunk)).await)?;
    }
    upstream_took(timer::timeout(wait, up.finish_body()).await)
}

/// A bounded write to the upstream, as a body error.
fn upstream_took(written: Result<pingora::Result<()>, timer::Elapsed>) -> Result<(), BodyError> {
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BodyError::Upstream(e)),
        Err(timer::Elapsed) => Err(BodyError::UpstreamStalled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for path in [
            "/v1/../admin",
            "/v1/./chat",
            "/v1/..",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2e/admin",
            "/v1/.%2e/admin",
            "/v1/..%2fadmin",
            "/v1/..%2F..%2Fadmin",
            "/v1/..%5cadmin",
            "/v1/..\\admin",
            "/v1/%2e/x",
        ] {
            assert!(unsafe_path(path).is_some(), "{path}");
        }
        for path in [
            "/v1/chat/completions",
            "/v1/files/a%2Fb",
            "/v1/..x/y",
            "/v1/x../y",
            "/v1/.well-known/x",
            "//v1//chat",
            "/v1/100%",
            "/v1/%2",
            "/v1/%zz",
            "/v1/models/gemini:streamGenerateContent",
        ] {
            assert!(unsafe_path(path).is_none(), "{path}");
        }
    }

    #[test]
    fn host_headers_are_hosts_with_an_optional_port() {
        for host in [
            "api.example.com",
            "api.example.com:8443",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::1]",
            "my_host",
            "xn--bcher-kva.example",
            "h%41st",
            "",
            "host:",
        ] {
            assert!(valid_host(host.as_bytes()), "{host:?}");
        }
        for host in [
            "a b",
            "a/b",
            "a b/c",
            "host:80x",
            "host:80:90",
            "[::1",
            "[]",
            "[::1]x",
            "[zz::1]",
            "user@host",
            "h%4",
            "h%zz",
            "a?b",
            "a#b",
        ] {
            assert!(!valid_host(host.as_bytes()), "{host:?}");
        }
    }

    #[test]
    fn idempotent_methods_and_keyed_requests_may_be_sent_again() {
        let request = |method: &str, key: Option<&str>| {
            let mut req = RequestHeader::build(method, b"/v1/x", None).unwrap();
            if let Some(key) = key {
                req.insert_header(key.to_string(), "k1").unwrap();
            }
            req
        };
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(may_send_again(&request(method, None)), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT"] {
            assert!(!may_send_again(&request(method, None)), "{method}");
        }
        assert!(may_send_again(&request("POST", Some("Idempotency-Key"))));
        assert!(may_send_again(&request("POST", Some("x-idempotency-key"))));
    }

    #[test]
    fn request_targets_are_paths_or_http_uris() {
        for target in ["/v1/x", "/", "http://a/v1/x", "HTTPS://a", "//a/b"] {
            let req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            assert!(check_target(&req).is_ok(), "{target:?}");
        }
        for target in ["%20/v1/x", "*", "v1/x", "ftp://a/x"] {
            let req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            assert!(check_target(&req).is_err(), "{target:?}");
        }
        let options = RequestHeader::build("OPTIONS", b"*", None).unwrap();
        assert!(check_target(&options).is_ok());
    }

    #[test]
    fn head_size_counts_line_and_headers() {
        let mut req = RequestHeader::build("GET", b"/v1/x", None).unwrap();
        req.append_header("host", "a").unwrap();
        // "GET /v1/x HTTP/1.1\r\n" (20) + "host: a\r\n" (9) + "\r\n" (2)
        assert_eq!(head_size(&req), 31);
    }
}
