//! What Sluice itself says to a client: JSON error responses before the response head, and the
//! terminal SSE error event or JSON line that ends a stream cleanly after it.

use super::admission::Refusal;
use super::downstream::Downstream;
use super::headers::{never_indexed, response_head};
use super::stream_body;
use super::RequestCtx;
use crate::provider::{ProxyError, ProxyErrorKind};
use crate::route::Route;
use crate::sse::{StreamKind, StreamOutcome};
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession;

/// The end of one request, as far as the client connection is concerned.
pub enum Finish {
    /// The response ended properly; the client connection may be reused.
    Clean,
    /// The client connection must be closed once the response is over (a refused request whose
    /// body was not read, a WebSocket session's end) or at once (client gone, a write cut, a
    /// failed end).
    Close,
    /// A plain body that could not be completed (cut short by the upstream, or its client gone),
    /// left unended (`Downstream::cut`): nothing more is written for it, no last chunk, no
    /// `END_STREAM`; its connection is dropped or its HTTP/2 stream reset.
    Cut,
    /// The response ended properly out of Pingora's session: on an HTTP/1.1 connection
    /// ([`Downstream::H1`]), the connection back when it may carry another request, `None` when
    /// it was closed; on an HTTP/2 stream ([`Downstream::H2`]), `None`.
    Handed(Option<KeptAlive>),
}

/// A client connection kept alive after a response, with what the client already sent of its
/// next request (pipelined, RFC 9112 §9.3.2: read while the response went out).
pub struct KeptAlive {
    pub stream: pingora::protocols::Stream,
    pub read_ahead: BytesMut,
}

/// A JSON error response in the route's provider format; only possible before the response head.
pub async fn respond_error(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    error: &ProxyError,
) -> Finish {
    let body_done = down.is_body_done();
    respond_error_with(down, ctx, error, &[], body_done).await
}

/// A 401 or 429, with its `Retry-After` and rate-limit headers.
pub async fn respond_refusal(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    refusal: &Refusal,
) -> Finish {
    let body_done = down.is_body_done();
    respond_error_with(down, ctx, &refusal.error, &refusal.headers, body_done).await
}

/// A `400` for a request head Pingora refused. Its session may hold no request at all (a head
/// it could not parse), and asking it about that request's body panics (`is_body_done`): the
/// connection is closed after this answer, which says so.
pub async fn respond_to_unreadable_head(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    error: &ProxyError,
) -> Finish {
    down.set_keepalive(None);
    respond_error_with(down, ctx, error, &[], false).await
}

/// `body_done`: the request body has been read, so the connection may be reused (it may be
/// unread, e.g. with no route, and the connection is then closed).
async fn respond_error_with(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    error: &ProxyError,
    extra_headers: &[(http::HeaderName, http::HeaderValue)],
    body_done: bool,
) -> Finish {
    let status = error.kind.status();
    ctx.status = status;
    ctx.error = Some(error.message.clone());
    ctx.outcome = match error.kind {
        ProxyErrorKind::UpstreamTimeout => Some(StreamOutcome::IdleTimeout),
        ProxyErrorKind::UpstreamUnavailable => Some(StreamOutcome::UpstreamError),
        _ => ctx.outcome,
    };
    let body = Bytes::from(error.json_body(ctx.provider));
    let (Ok(code), Ok(request_id)) = (
        http::StatusCode::from_u16(status),
        http::HeaderValue::from_str(&ctx.request_id),
    ) else {
        return Finish::Close;
    };
    let mut headers = http::HeaderMap::with_capacity(4 + extra_headers.len());
    for (name, value) in extra_headers {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(crate::request_id::HEADER, request_id);
    never_indexed(&mut headers);
    let head = response_head(code, headers);
    let len = body.len();
    let written = down.write_response_header(Box::new(head)).await.is_ok()
        && down.write_response_body(body, true).await.is_ok();
    if written {
        stream_body::note_own_bytes(ctx, len);
    }
    if written && body_done {
        Finish::Clean
    } else {
        Finish::Close
    }
}

/// Ends an event stream with an error event the provider's SDK raises, then a proper end of
/// body (with `trailers`, on HTTP/2). An upstream event left half-sent is closed first, so the
/// error is an event of its own.
pub async fn write_terminal_event(
    down: Downstream<'_>,
    ctx: &mut RequestCtx,
    error: &ProxyError,
    at_event_boundary: bool,
    trailers: Option<http::HeaderMap>,
) -> Finish {
    ctx.error = Some(error.message.clone());
    let mut out = BytesMut::new();
    if !at_event_boundary {
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(error.sse_event(ctx.provider).as_bytes());
    stream_body::note_own_bytes(ctx, out.len());
    down.finish(out.freeze(), trailers).await
}

/// Ends a JSON-lines stream with a last line of Sluice's own: the error in the provider's JSON
/// format (`{"error":{…}}` for OpenAI and Gemini), then a proper end of body. An upstream line
/// left half-sent is ended first (`\n`), so the error is a line of its own; it may be invalid
/// JSON, as it was cut short.
pub async fn write_terminal_line(
    down: Downstream<'_>,
    ctx: &mut RequestCtx,
    error: &ProxyError,
    kind: StreamKind,
    at_line_boundary: bool,
) -> Finish {
    ctx.error = Some(error.message.clone());
    let mut out = BytesMut::new();
    if !at_line_boundary {
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(kind.json_record(&error.json_body(ctx.provider)).as_bytes());
    stream_body::note_own_bytes(ctx, out.len());
    down.finish(out.freeze(), None).await
}

/// Ends a streamed JSON array Sluice cut short: `before` (what joins it to the array so far),
/// the error as an element in the provider's format, and the array's `]`.
pub async fn write_error_element(
    down: Downstream<'_>,
    ctx: &mut RequestCtx,
    error: &ProxyError,
    before: &str,
    trailers: Option<http::HeaderMap>,
) -> Finish {
    ctx.error = Some(error.message.clone());
    let out = format!("{before}{}\n]", error.json_body(ctx.provider));
    stream_body::note_own_bytes(ctx, out.len());
    down.finish(Bytes::from(out), trailers).await
}

/// Writes the last bytes of a stream and its end (with trailers, on HTTP/2).
pub async fn end_stream(
    down: Downstream<'_>,
    ctx: &mut RequestCtx,
    tail: Bytes,
    trailers: Option<http::HeaderMap>,
) -> Finish {
    stream_body::note_sent(ctx, tail.len());
    down.finish(tail, trailers).await
}

/// The error of a request that Sluice ended because its shutdown's grace period was over.
pub fn shutting_down() -> ProxyError {
    ProxyError::new(
        ProxyErrorKind::ShuttingDown,
        "Sluice is shutting down and the grace period for running requests is over",
    )
}

/// The error a stream ended by Sluice reports to its client.
pub fn end_error(outcome: StreamOutcome, route: &Route) -> ProxyError {
    match outcome {
        StreamOutcome::IdleTimeout => ProxyError::new(
            ProxyErrorKind::UpstreamIdle,
            format!(
                "upstream {} sent nothing for {:?}; the stream was ended by Sluice",
                route.upstream.name,
                route.policy.idle_timeout.unwrap_or_default()
            ),
        ),
        StreamOutcome::Shutdown => shutting_down(),
        StreamOutcome::MaxDuration => ProxyError::new(
            ProxyErrorKind::MaxDuration,
            format!(
                "the stream reached its maximum duration of {:?} and was ended by Sluice",
                route.policy.max_duration.unwrap_or_default()
            ),
        ),
        _ => ProxyError::new(
            ProxyErrorKind::UpstreamBroken,
            format!("upstream {} broke off the stream", route.upstream.name),
        ),
    }
}
