//! The stream path of one request, end to end: route, forward the request, relay the response
//! chunk by chunk as it arrives, and end it cleanly on every path (normal end, idle upstream,
//! max duration, upstream error, client gone).
//!
//! Sluice runs this loop itself instead of Pingora's proxy phases because Pingora's body filters
//! only run when bytes arrive: heartbeats and clean terminal events need a timer beside the
//! upstream read (DESIGN.md §4).
//!
//! Three kinds of response are streams: event streams (usage read in flight, heartbeats,
//! terminal error events), JSON lines (a final JSON error line), and WebSocket sessions
//! (`websocket`). Anything else is relayed chunk by chunk as it is.

mod disconnect;
mod request;
mod websocket;

use super::admission;
use super::downstream::{Downstream, RequestSession};
use super::drain;
use super::headers::{
    asks_for_websocket, client_response, is_websocket_upgrade, never_indexed, ResponseShape,
    UpstreamRequest,
};
use super::responses::{
    end_error, end_stream, respond_error, respond_refusal, shutting_down, write_error_element,
    write_terminal_event, write_terminal_line, Finish,
};
use super::stream_body::{self, BodyWatch};
use super::timer;
use super::upstream::{Pooled, UpstreamConn, Upstreams};
use super::usage_sink::UsageSink;
use super::RequestCtx;
use crate::content_coding::{self, ContentDecoder};
use crate::limits::Limiter;
use crate::provider::{Provider, ProxyError, ProxyErrorKind};
use crate::route::Route;
use crate::sse::{
    may_be_json_object, request_wants_stream, LineBoundary, StreamKind, StreamMembers,
    StreamOutcome,
};
use crate::telemetry::METRICS;
use crate::usage::array_inspector::{ArrayInspector, ErrorElement};
use crate::usage::extract::{
    extractor_for, AutoExtractor, NoExtractor, StreamFormat, UsageExtractor,
};
use crate::usage::include_usage::{ensure_include_usage, IncludeUsage};
use crate::usage::inspector::{InspectorOptions, StreamInspector};
use crate::usage::record::UsageRecord;
use bytes::BytesMut;
use futures_util::future::OptionFuture;
use futures_util::FutureExt;
use pingora::protocols::http::ServerSession;
pub use request::{check_host, check_target, set_body_memory};
use request::{BodyError, BodyPrefix, INSPECT_BODY_LIMIT};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub async fn handle(
    upstreams: &Upstreams,
    usage: &UsageSink,
    limiter: &Limiter,
    route: &Arc<Route>,
    session: &mut RequestSession,
    ctx: &mut RequestCtx,
    body_timeout: Duration,
) -> Finish {
    // Boxed: everything before the body relay (admission, connect, request, heads, WebSocket)
    // would otherwise size the future that each open stream keeps for its whole life.
    let Opened {
        up,
        down,
        kind,
        mut decoder,
        strip_usage_chunk,
    } = match Box::pin(open(
        upstreams,
        usage,
        limiter,
        route,
        session,
        ctx,
        body_timeout,
    ))
    .await
    {
        Ok(opened) => opened,
        Err(finish) => return finish,
    };
    let finish = match kind {
        // Boxed: a plain body's relay would otherwise add its own slots to every stream's state.
        None => Box::pin(relay_plain(upstreams, route, up, down, ctx)).await,
        Some(StreamKind::EventStream) => {
            let upstream = Connection {
                upstreams,
                conn: up,
            };
            let decoder = decoder.as_deref_mut();
            relay_event_stream(
                route,
                usage,
                upstream,
                down,
                ctx,
                decoder,
                strip_usage_chunk,
            )
            .await
        }
        Some(StreamKind::JsonArray) => {
            let upstream = Connection {
                upstreams,
                conn: up,
            };
            let decoder = decoder.as_deref_mut();
            relay_json_array(route, usage, upstream, down, ctx, decoder).await
        }
        Some(kind @ (StreamKind::JsonLines | StreamKind::JsonSeq)) => {
            let upstream = Connection {
                upstreams,
                conn: up,
            };
            let decoder = decoder.as_deref_mut();
            relay_json_lines(route, usage, upstream, down, ctx, decoder, kind).await
        }
    };
    if matches!(finish, Finish::Clean) && !session.handed() {
        // An answer that went out before the client's whole body was read (an upstream's early
        // answer): what the client still sends is read and dropped for a moment first, or
        // closing the connection with it unread would reset it under the answer. Boxed: rare,
        // and every open stream's state would otherwise have room for it.
        Box::pin(request::discard_unread_body(session.get(), true)).await;
    }
    finish
}

/// The answer to a request whose body did not get upstream whole. `upstream_has_part`: some of
/// it was sent, so the connection is closed whatever happens here (dropping the upstream
/// connection, the caller's part, aborts the request there).
/// Whether a request body failed because its client went away: its HTTP/1.1 connection closed,
/// or its HTTP/2 stream was reset (or its connection lost) by the client.
fn client_left(e: &pingora::Error) -> bool {
    matches!(e.etype(), pingora::ErrorType::ConnectionClosed)
        || e.root_cause()
            .downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.is_reset() || h2.is_io() || h2.is_go_away())
}

async fn body_error(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    route: &Route,
    failure: BodyError,
    body_timeout: Duration,
    upstream_has_part: bool,
) -> Finish {
    let finish = match failure {
        BodyError::TooLarge => refuse(down, ctx, &request::too_large(route), true).await,
        BodyError::Overloaded => {
            let error = ProxyError::new(
                ProxyErrorKind::Overloaded,
                "Sluice holds as many request bodies as server.request_body_memory allows; try \
                 again shortly",
            );
            refuse(down, ctx, &error, true).await
        }
        BodyError::Upstream(e) => {
            let detail = format!("failed while sending the request: {e}");
            respond_error(down, ctx, &upstream_failed(route, "request", &detail)).await
        }
        BodyError::UpstreamStalled => {
            METRICS.upstream_failed(&route.upstream.name, "request");
            let error = ProxyError::new(
                ProxyErrorKind::UpstreamTimeout,
                format!(
                    "upstream {} took none of the request body for {body_timeout:?}",
                    route.upstream.name
                ),
            );
            respond_error(down, ctx, &error).await
        }
        // Where the body stopped, or where its framing broke, the next request cannot be told
        // to begin: the connection is closed after the answer.
        BodyError::TimedOut => {
            down.set_keepalive(None);
            let error = ProxyError::new(
                ProxyErrorKind::RequestTimeout,
                format!("no part of the request body came for {body_timeout:?}"),
            );
            respond_error(down, ctx, &error).await
        }
        BodyError::Client(e) => {
            down.set_keepalive(None);
            // A client that closed its connection mid-body left: the access log (and a stream
            // request's usage record) says so, beside the 400 nobody reads.
            if client_left(&e) {
                ctx.outcome = Some(StreamOutcome::ClientDisconnect);
            }
            let error =
                ProxyError::new(ProxyErrorKind::BadRequest, request::body_error_message(&e));
            respond_error(down, ctx, &error).await
        }
    };
    if upstream_has_part {
        Finish::Close
    } else {
        finish
    }
}

/// How long an upstream that stopped taking the request body is given to show the answer it
/// sent early, if it did (it is usually there already).
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Longest time from sending a request to its pooled connection's close for that close to be
/// taken for the upstream's idle close crossing the request (a round trip, with room for a
/// distant provider), and the request sent again.
const CROSSED_CLOSE: Duration = Duration::from_secs(1);

/// An upstream response whose head went to the client: what the body relay needs.
struct Opened<'d> {
    up: UpstreamConn,
    /// Where the body goes.
    down: Downstream<'d>,
    /// The stream format, `None` for a plain body.
    kind: Option<StreamKind>,
    /// Boxed: rarely there (an upstream that compresses a stream), 136 bytes when inline.
    decoder: Option<Box<ContentDecoder>>,
    strip_usage_chunk: bool,
}

/// Everything up to the response head: checks, request body, admission, the upstream request and
/// its response head. `Err` when the request was answered here (an error, a refusal, a WebSocket
/// session that has ended).
async fn open<'d>(
    upstreams: &Upstreams,
    usage: &UsageSink,
    limiter: &Limiter,
    route: &Arc<Route>,
    session: &'d mut RequestSession,
    ctx: &mut RequestCtx,
    body_timeout: Duration,
) -> Result<Opened<'d>, Finish> {
    // The session until the response head: `Downstream::start` takes it then.
    let down = session.get();
    if let Err(error) = request::check_head(route, down) {
        let body_coming = !request::expects_continue(down.req_header());
        return Err(refuse(down, ctx, &error, body_coming).await);
    }
    if request::answer_expect_continue(down).await.is_err() {
        ctx.outcome = Some(StreamOutcome::ClientDisconnect);
        return Err(Finish::Close);
    }
    // HTTP/1.1: each read of the body within the timeout (Pingora's own bound, 60 s otherwise).
    down.set_read_timeout(Some(body_timeout));
    let mut body = match request::read_body_prefix(down, route.max_request_body, body_timeout).await
    {
        Ok(body) => body,
        Err(e) => return Err(body_error(down, ctx, route, e, body_timeout, false).await),
    };
    let websocket = is_websocket_upgrade(down.req_header());
    if websocket && !body.is_empty() {
        let error = ProxyError::new(
            ProxyErrorKind::BadRequest,
            "a WebSocket handshake has no request body",
        );
        return Err(respond_error(down, ctx, &error).await);
    }
    let req = down.req_header();
    let accept = req.headers.get(http::header::ACCEPT).map(|v| v.as_bytes());
    let members = if body.complete {
        StreamMembers::read(&body.prefix)
    } else {
        None
    };
    // A WebSocket session is long-lived: it takes a stream slot like any stream.
    ctx.stream_request = websocket || request_wants_stream(accept, members.as_ref(), &ctx.path);
    // A body too large to read whole (its `stream` member may come after megabytes of prompt),
    // or one that looks like JSON but does not parse here (an upstream's parser may be more
    // lenient), takes a stream slot too: else any stream could get past the limits by its
    // spelling.
    ctx.may_stream = !body.complete || (members.is_none() && may_be_json_object(&body.prefix));
    ctx.format = StreamFormat::from_request(route.provider, &ctx.path);
    if let Err(refusal) = admission::admit(limiter, route, ctx).await {
        return Err(respond_refusal(down, ctx, &refusal).await);
    }
    let strip_usage_chunk =
        usage.inspects() && ctx.stream_request && add_include_usage(route, ctx, &mut body, members);

    let request = UpstreamRequest {
        client: down.req_header(),
        upstream: &route.upstream,
        client_ip: ctx.client_addr.map(|a| a.ip()),
        request_id: &ctx.request_id,
        body: body.framing(down.req_header()),
        stream: ctx.stream_request,
        strip_client_key: route.auth.strips_client_key(),
        websocket,
    }
    .build();
    let head = match request {
        Ok(head) => head,
        Err(e) => {
            let error = ProxyError::new(ProxyErrorKind::BadRequest, e.to_string());
            return Err(respond_error(down, ctx, &error).await);
        }
    };

    // A pooled connection the upstream closed as idle while the request was on its way gets the
    // request again on a new one, when sending it twice is harmless (RFC 9110 §9.2.2, as Go's
    // and browsers' clients do): an idempotent method or an `Idempotency-Key`, and a body held
    // whole. Other requests (an LLM's POST) get the 502: the upstream may have begun to
    // generate.
    // That close reaches Sluice within a round trip of the request's leaving: a close later
    // than `CROSSED_CLOSE` came from an upstream that had the request (a worker that died
    // mid-generation), and it is not sent again.
    let complete = body.complete;
    let prefix = body.into_bytes();
    let replay = (complete && request::may_send_again(down.req_header())).then(|| prefix.clone());
    let mut first = Some(prefix);
    let mut pooled = Pooled::Take;
    let (up, upstream_head) = loop {
        // Sent again, it is only ever with its body held (`send_again`).
        let prefix = first.take().or_else(|| replay.clone()).unwrap_or_default();
        let sending = std::time::Instant::now();
        let send_again = |up: &UpstreamConn, pooled: Pooled| {
            replay.is_some()
                && pooled == Pooled::Take
                && up.closed_unanswered_after_reuse()
                && sending.elapsed() < CROSSED_CLOSE
        };
        // A connect may take `connect_timeout` (and a TLS handshake more): a client that leaves
        // meanwhile frees its slot now, and a shutdown's grace bounds it. The client is watched
        // only once its whole body is read (otherwise its body's bytes are what would come).
        let connected = tokio::select! {
            connected = upstreams.connect(&route.upstream, websocket, pooled) => connected,
            _ = down.read_body_or_idle(true), if complete => {
                ctx.outcome = Some(StreamOutcome::ClientDisconnect);
                return Err(Finish::Close);
            }
            _ = drain::grace_over() => {
                ctx.outcome = Some(StreamOutcome::Shutdown);
                return Err(respond_error(down, ctx, &shutting_down()).await);
            }
        };
        let mut up = match connected {
            Ok(connected) => connected,
            Err(error) => return Err(respond_error(down, ctx, &error).await),
        };
        let sent = tokio::select! {
            sent = request::send_request(
                &mut up,
                &head,
                (prefix, complete),
                down,
                route.max_request_body,
                body_timeout,
            ) => sent,
            _ = drain::grace_over() => {
                ctx.outcome = Some(StreamOutcome::Shutdown);
                drop(up);
                return Err(respond_error(down, ctx, &shutting_down()).await);
            }
        };
        let early_head = match sent {
            Ok(()) => None,
            // The upstream stopped taking the body: it may have answered already (a 413 before
            // the whole upload, as servers do), and that answer is the client's, not a 502.
            Err(e @ (BodyError::Upstream(_) | BodyError::UpstreamStalled)) => {
                match timer::timeout(EARLY_ANSWER_WAIT, up.read_final_head()).await {
                    Ok(Ok(head)) => {
                        // Neither connection is where its framing says: the upstream's request
                        // and the client's body are both unfinished.
                        up.forbid_reuse();
                        down.set_keepalive(None);
                        Some(head)
                    }
                    Ok(Err(_)) if send_again(&up, pooled) => {
                        pooled = retry(route, up);
                        continue;
                    }
                    _ => {
                        drop(up);
                        return Err(body_error(down, ctx, route, e, body_timeout, true).await);
                    }
                }
            }
            Err(e) => {
                // Part of the body may be upstream already: dropping the connection aborts the
                // request there.
                drop(up);
                return Err(body_error(down, ctx, route, e, body_timeout, true).await);
            }
        };

        let head_wait = route.policy.idle_timeout.unwrap_or(Duration::MAX);
        let head = if let Some(head) = early_head {
            Ok(head)
        } else {
            tokio::select! {
                r = up.read_final_head() => r,
                _ = timer::sleep(head_wait) => {
                    let error = ProxyError::new(
                        ProxyErrorKind::UpstreamTimeout,
                        format!("upstream {} sent no response within {head_wait:?}", route.upstream.name),
                    );
                    METRICS.upstream_failed(&route.upstream.name, "response_header");
                    drop(upstreams.retire_http2(&route.upstream.name, up).await);
                    return Err(respond_error(down, ctx, &error).await);
                }
                _ = down.read_body_or_idle(true) => {
                    ctx.outcome = Some(StreamOutcome::ClientDisconnect);
                    close_upstream(up, StreamOutcome::ClientDisconnect, ctx).await;
                    return Err(Finish::Close);
                }
                _ = drain::grace_over() => {
                    ctx.outcome = Some(StreamOutcome::Shutdown);
                    drop(up);
                    return Err(respond_error(down, ctx, &shutting_down()).await);
                }
            }
        };
        match head {
            Ok(head) => break (up, head),
            Err(_) if send_again(&up, pooled) => pooled = retry(route, up),
            Err(e) => {
                let error = upstream_failed(
                    route,
                    "response_header",
                    &format!("failed before its response head: {e}"),
                );
                return Err(respond_error(down, ctx, &error).await);
            }
        }
    };
    if upstream_head.status == http::StatusCode::SWITCHING_PROTOCOLS {
        // Only a WebSocket handshake may switch protocols, and only to WebSocket: anything else
        // would let the client and the upstream talk past Sluice's request handling.
        if websocket && asks_for_websocket(upstream_head.fields.get_all(&http::header::UPGRADE)) {
            return Err(websocket::run(route, up, upstream_head, session, ctx).await);
        }
        let error = upstream_failed(
            route,
            "response_header",
            "switched protocols without a WebSocket handshake to accept",
        );
        return Err(respond_error(down, ctx, &error).await);
    }
    // An answer with no body by its status or the request's method (a 204 that tells an
    // EventSource to stop reconnecting, a 304, a HEAD) is no stream, whatever its type: relayed
    // as a plain answer, nothing (no usage comment) follows its head.
    let bodiless = ctx.method == Some(http::Method::HEAD)
        || !crate::http1::status_has_body(upstream_head.status);
    let content_type = upstream_head
        .fields
        .get(&http::header::CONTENT_TYPE)
        .unwrap_or_default();
    let kind = StreamKind::of_content_type(content_type)
        .or_else(|| {
            // An error answer (one JSON object) keeps its own framing.
            let gemini = ctx.stream_request
                && ctx.format == Some(StreamFormat::GeminiGenerate)
                && upstream_head.status.is_success();
            gemini
                .then(|| StreamKind::gemini_array(content_type))
                .flatten()
        })
        .filter(|_| !bodiless);
    // A stream the upstream compressed although not asked to is decoded, so that the client
    // gets plain events or lines. One in a coding Sluice cannot undo goes through untouched, with
    // its `Content-Encoding`, as a plain answer: nothing may be written into it.
    let coding = kind.map(|_| {
        content_coding::coding_of(
            upstream_head
                .fields
                .get_all(&http::header::CONTENT_ENCODING),
        )
    });
    let (kind, decoder) = match coding {
        Some(Err(unsupported)) => {
            log::debug!(
                "upstream {}: a stream in {}, passed through undecoded",
                route.upstream.name,
                unsupported.0
            );
            (None, None)
        }
        Some(Ok(coding)) => (kind, coding.map(|c| Box::new(ContentDecoder::new(c)))),
        None => (kind, None),
    };
    let shape = match kind {
        Some(_) => ResponseShape::Stream,
        None => ResponseShape::Plain,
    };
    let client_head =
        match client_response(upstream_head, shape, &ctx.request_id, &ctx.limit_headers) {
            Ok(h) => h,
            Err(e) => {
                let error = ProxyError::new(ProxyErrorKind::UpstreamUnavailable, e.to_string());
                return Err(respond_error(down, ctx, &error).await);
            }
        };
    ctx.status = client_head.status.as_u16();
    // The access log's `stream`: event streams and JSON lines alike.
    ctx.event_stream = kind.is_some();
    let Ok(down) = Downstream::start(session, client_head, kind.is_some()).await else {
        ctx.outcome = Some(StreamOutcome::ClientDisconnect);
        return Err(Finish::Close);
    };

    Ok(Opened {
        up,
        down,
        kind,
        decoder,
        strip_usage_chunk,
    })
}

/// A plain body (no stream format): relayed as it comes, then its connection pooled or closed.
async fn relay_plain(
    upstreams: &Upstreams,
    route: &Route,
    mut up: UpstreamConn,
    mut down: Downstream<'_>,
    ctx: &mut RequestCtx,
) -> Finish {
    let outcome = stream_body::relay(route, &mut up, &mut down, ctx, None, BodyWatch::Plain).await;
    ctx.outcome = Some(outcome);
    end_plain(upstreams, route, up, outcome, down, ctx).await
}

/// The end of a plain body: the connection goes back to the pool when the body came whole.
async fn end_plain(
    upstreams: &Upstreams,
    route: &Route,
    up: UpstreamConn,
    outcome: StreamOutcome,
    down: Downstream<'_>,
    ctx: &mut RequestCtx,
) -> Finish {
    // A plain body cut short cannot be ended cleanly: it is left unended, as the upstream left
    // it. A client that left or stopped reading is written nothing more.
    let finish = match outcome {
        StreamOutcome::Completed => {
            within_client_patience(route, down.finish(bytes::Bytes::new(), None))
                .await
                .unwrap_or_else(|| end_not_taken(ctx))
        }
        StreamOutcome::ClientDisconnect => Finish::Cut,
        _ if ctx.write_cut => Finish::Cut,
        _ => down.cut(),
    };
    if matches!(finish, Finish::Close | Finish::Cut) {
        discard(upstreams, route, up, outcome, ctx).await;
    } else {
        upstreams
            .release(up, route.upstream.pool_idle_timeout)
            .await;
    }
    finish
}

/// A JSON error response before anything went upstream; a body the client is still sending is
/// read and dropped for a moment first, so that the client gets to read the refusal.
async fn refuse(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    error: &ProxyError,
    body_coming: bool,
) -> Finish {
    let finish = respond_error(down, ctx, error).await;
    if matches!(finish, Finish::Close) {
        request::discard_unread_body(down, body_coming).await;
    }
    finish
}

/// The upstream connection a response comes on, and where it goes back to when it ended well.
struct Connection<'a> {
    upstreams: &'a Upstreams,
    conn: UpstreamConn,
}

impl Connection<'_> {
    /// A stream that completed goes back to the pool; any other is dropped, never pooled (it
    /// may be mid-body), which closes it, so a provider whose client left stops generating
    /// now, before any bookkeeping.
    async fn finish(self, route: &Route, outcome: StreamOutcome, ctx: &mut RequestCtx) {
        if outcome == StreamOutcome::Completed {
            self.upstreams
                .release(self.conn, route.upstream.pool_idle_timeout)
                .await;
        } else {
            discard(self.upstreams, route, self.conn, outcome, ctx).await;
        }
    }
}

/// Closes a connection whose response did not end well. One that went silent (the upstream's
/// silence, not a client's that stopped reading) first retires it if it is a shared HTTP/2
/// connection: new streams go on a new one.
async fn discard(
    upstreams: &Upstreams,
    route: &Route,
    conn: UpstreamConn,
    outcome: StreamOutcome,
    ctx: &mut RequestCtx,
) {
    let conn = match outcome {
        StreamOutcome::IdleTimeout if !ctx.write_cut => {
            let Some(conn) = upstreams.retire_http2(&route.upstream.name, conn).await else {
                return;
            };
            conn
        }
        _ => conn,
    };
    close_upstream(conn, outcome, ctx).await;
}

/// Counts an upstream failure in `phase` and says what went wrong, for a 502.
fn upstream_failed(route: &Route, phase: &str, what: &str) -> ProxyError {
    METRICS.upstream_failed(&route.upstream.name, phase);
    ProxyError::new(
        ProxyErrorKind::UpstreamUnavailable,
        format!("upstream {} {what}", route.upstream.name),
    )
}

/// Drops a pooled connection that closed without answering, counts the retry, and says how the
/// next connection is made.
fn retry(route: &Route, up: UpstreamConn) -> Pooled {
    drop(up);
    METRICS.upstream_retried(&route.upstream.name);
    log::debug!(
        "upstream {}: a pooled connection closed without answering; sending the request again \
         on a new one",
        route.upstream.name
    );
    Pooled::Skip
}

/// Closes an upstream connection that is not going back to the pool. One whose client left is
/// closed at once, its stream slot released, and the rest of its bookkeeping waits while many
/// clients are leaving together (`disconnect`).
async fn close_upstream<S>(session: S, outcome: StreamOutcome, ctx: &mut RequestCtx) {
    if outcome == StreamOutcome::ClientDisconnect {
        ctx.client_left = Some(std::time::Instant::now());
        disconnect::close_upstream_of_left_client(session, ctx.lease.take()).await;
    } else {
        drop(session);
    }
}

/// An event stream's body and end.
///
/// A plain fn returning an `async move` block rather than an `async fn`: an async fn moves each
/// argument into a local of its own and keeps both slots in its state, which for `upstream`
/// would be 128 bytes more in every open stream.
#[allow(clippy::manual_async_fn)]
fn relay_event_stream<'a>(
    route: &'a Route,
    usage: &'a UsageSink,
    mut upstream: Connection<'a>,
    mut down: Downstream<'a>,
    ctx: &'a mut RequestCtx,
    decoder: Option<&'a mut ContentDecoder>,
    strip_usage_chunk: bool,
) -> impl Future<Output = Finish> + 'a {
    async move {
        let guard = StreamGuard::new(&route.name);
        let extractor = if usage.inspects() {
            extractor(ctx.format)
        } else {
            Box::new(NoExtractor::default())
        };
        let mut inspector = StreamInspector::new(
            extractor,
            InspectorOptions {
                max_event_size: usage.max_event_size(),
                strip_usage_chunk,
                hold_final_frame: usage.hold_final_frame(),
            },
        );
        let mut outcome = stream_body::relay(
            route,
            &mut upstream.conn,
            &mut down,
            ctx,
            decoder,
            BodyWatch::Events(&mut inspector),
        )
        .await;
        // Boxed: the end (pool or close, usage record, last bytes) is not part of what an open
        // stream keeps.
        Box::pin(async move {
            // The whole guard moves in (not just the field assigned below): it counts the stream
            // until the end is written.
            let mut guard = guard;
            upstream.finish(route, outcome, ctx).await;
            outcome = completed_if_finished(outcome, inspector.final_reached(), ctx);
            ctx.outcome = Some(outcome);
            guard.outcome = outcome;
            // Asked before a partial event held in strip mode is dropped: the client saw none of
            // it, so an error event needs no blank line to close it.
            let at_boundary = inspector.client_at_event_boundary();
            if outcome != StreamOutcome::Completed {
                inspector.discard_partial();
            }

            let mut record =
                UsageSink::record_for(ctx, Some(inspector.facts()), inspector.oversized_events());
            // The held final frame is part of what the client of a completed stream gets (the
            // usage comment is not counted); a cut stream's is never sent.
            if outcome == StreamOutcome::Completed {
                record.bytes += inspector.held_len() as u64;
            }
            record_stream(usage, ctx, record, outcome).await;
            // What Sluice writes at the end (the held final frame, its usage comment or
            // terminal event) goes to the client as well: `sluice_stream_bytes_total` counts it.
            let before = ctx.bytes_sent;
            let end = async {
                match outcome {
                    StreamOutcome::Completed => {
                        let record = ctx.usage_record.as_ref().expect("just set");
                        let mut tail = BytesMut::from(&inspector.take_held()[..]);
                        if route.usage_comment && inspector.upstream_at_event_boundary() {
                            tail.extend_from_slice(&record.sse_comment());
                        }
                        let trailers = down.wants_trailers().then(|| usage_trailers(record));
                        end_stream(down, ctx, tail.freeze(), trailers).await
                    }
                    StreamOutcome::ClientDisconnect => Finish::Close,
                    _ if ctx.write_cut => Finish::Close,
                    ended => {
                        let error = end_error(ended, route);
                        // A stream Sluice ends has its usage as well: what was counted until then.
                        let record = ctx.usage_record.as_ref().expect("just set");
                        let trailers = down.wants_trailers().then(|| usage_trailers(record));
                        write_terminal_event(down, ctx, &error, at_boundary, trailers).await
                    }
                }
            };
            let finish = within_client_patience(route, end)
                .await
                .unwrap_or_else(|| end_not_taken(ctx));
            METRICS.stream_bytes_sent(&route.name, ctx.bytes_sent - before);
            finish
        })
        .await
    }
}

/// JSON lines (NDJSON, JSON text sequences): relayed like an event stream, without heartbeats or
/// usage inspection. Sluice ends one it cuts short with a last line of its own, the error in the
/// route's provider format. Every such response has a usage record (`usage_source: none`),
/// durable before the client sees the end when the ledger is `before_end`.
async fn relay_json_lines(
    route: &Route,
    usage: &UsageSink,
    mut upstream: Connection<'_>,
    mut down: Downstream<'_>,
    ctx: &mut RequestCtx,
    decoder: Option<&mut ContentDecoder>,
    kind: StreamKind,
) -> Finish {
    let guard = StreamGuard::new(&route.name);
    let mut lines = LineBoundary::default();
    let outcome = stream_body::relay(
        route,
        &mut upstream.conn,
        &mut down,
        ctx,
        decoder,
        BodyWatch::Lines(&mut lines),
    )
    .await;
    Box::pin(async move {
        // The whole guard moves in (not just the field assigned below): it counts the stream
        // until the end is written.
        let mut guard = guard;
        upstream.finish(route, outcome, ctx).await;
        ctx.outcome = Some(outcome);
        guard.outcome = outcome;
        record_stream(usage, ctx, UsageSink::record_for(ctx, None, 0), outcome).await;
        let before = ctx.bytes_sent;
        let end = async {
            match outcome {
                StreamOutcome::Completed => end_stream(down, ctx, bytes::Bytes::new(), None).await,
                StreamOutcome::ClientDisconnect => Finish::Close,
                _ if ctx.write_cut => Finish::Close,
                ended => {
                    let error = end_error(ended, route);
                    write_terminal_line(down, ctx, &error, kind, lines.at_boundary()).await
                }
            }
        };
        let finish = within_client_patience(route, end)
            .await
            .unwrap_or_else(|| end_not_taken(ctx));
        METRICS.stream_bytes_sent(&route.name, ctx.bytes_sent - before);
        finish
    })
    .await
}

/// A streamed JSON array (Gemini's `streamGenerateContent` without `alt=sse`): relayed like an
/// event stream, its elements read for usage, without heartbeats (nothing may go between
/// elements that a JSON reader would not take). Sluice ends one it cuts short with an error
/// element and the array's `]` where the client's bytes end between elements, and leaves it
/// unended (as a plain body) where they end inside one.
async fn relay_json_array(
    route: &Route,
    usage: &UsageSink,
    mut upstream: Connection<'_>,
    mut down: Downstream<'_>,
    ctx: &mut RequestCtx,
    decoder: Option<&mut ContentDecoder>,
) -> Finish {
    let guard = StreamGuard::new(&route.name);
    let extractor = if usage.inspects() {
        extractor(ctx.format)
    } else {
        Box::new(NoExtractor::default())
    };
    let mut inspector =
        ArrayInspector::new(extractor, usage.max_event_size(), usage.hold_final_frame());
    let mut outcome = stream_body::relay(
        route,
        &mut upstream.conn,
        &mut down,
        ctx,
        decoder,
        BodyWatch::Array(&mut inspector),
    )
    .await;
    Box::pin(async move {
        // The whole guard moves in (not just the field assigned below): it counts the stream
        // until the end is written.
        let mut guard = guard;
        upstream.finish(route, outcome, ctx).await;
        outcome = completed_if_finished(outcome, inspector.final_reached(), ctx);
        ctx.outcome = Some(outcome);
        guard.outcome = outcome;
        let mut record =
            UsageSink::record_for(ctx, Some(inspector.facts()), inspector.oversized_elements());
        if outcome == StreamOutcome::Completed {
            record.bytes += inspector.held_len() as u64;
        }
        record_stream(usage, ctx, record, outcome).await;
        let before = ctx.bytes_sent;
        let end = async {
            let record = ctx.usage_record.as_ref().expect("just set");
            let trailers = down.wants_trailers().then(|| usage_trailers(record));
            match outcome {
                StreamOutcome::Completed => {
                    end_stream(down, ctx, inspector.take_held(), trailers).await
                }
                StreamOutcome::ClientDisconnect => Finish::Close,
                _ if ctx.write_cut => Finish::Close,
                ended => match inspector.error_element() {
                    ErrorElement::After(before) => {
                        let error = end_error(ended, route);
                        write_error_element(down, ctx, &error, before, trailers).await
                    }
                    ErrorElement::Impossible => {
                        ctx.error = Some(end_error(ended, route).message);
                        down.cut()
                    }
                },
            }
        };
        let finish = within_client_patience(route, end)
            .await
            .unwrap_or_else(|| end_not_taken(ctx));
        METRICS.stream_bytes_sent(&route.name, ctx.bytes_sent - before);
        finish
    })
    .await
}

/// A stream whose provider finished it (its end marker, an array's `]`) but whose upstream then
/// merely left the connection open is `completed`; not one whose client left, or stopped
/// reading before it got the end.
fn completed_if_finished(
    outcome: StreamOutcome,
    finished: bool,
    ctx: &RequestCtx,
) -> StreamOutcome {
    let client_had_it = outcome != StreamOutcome::ClientDisconnect && !ctx.write_cut;
    if finished && client_had_it {
        StreamOutcome::Completed
    } else {
        outcome
    }
}

/// Writes a response's last bytes (its end, or Sluice's terminal event) to a client that may
/// have stopped reading: they wait as long as a chunk may (`idle_timeout`, else
/// `max_duration`), and not past a shutdown's grace period. `None`: they were not taken; the
/// caller closes the connection, which frees the stream's slot.
async fn within_client_patience<F: Future<Output = Finish>>(
    route: &Route,
    end: F,
) -> Option<Finish> {
    let mut end = std::pin::pin!(end);
    if let Some(finish) = end.as_mut().now_or_never() {
        return Some(finish);
    }
    let patience = route.policy.idle_timeout.or(route.policy.max_duration);
    let given_up = OptionFuture::from(patience.map(timer::sleep));
    tokio::select! {
        biased;
        finish = end => Some(finish),
        Some(()) = given_up => None,
        () = drain::grace_over() => None,
    }
}

/// The access log's word for a response whose last bytes the client did not take.
fn end_not_taken(ctx: &mut RequestCtx) -> Finish {
    ctx.write_cut = true;
    ctx.error = Some("the client did not take the end of the response".into());
    Finish::Close
}

/// Records a stream's usage and keeps the record for the access log. The stream's end goes to
/// the client only once its record is durable (with a `before_end` ledger); a client that left
/// is owed no end, so nothing waits for its record.
async fn record_stream(
    usage: &UsageSink,
    ctx: &mut RequestCtx,
    record: UsageRecord,
    outcome: StreamOutcome,
) {
    let client_still_there = outcome != StreamOutcome::ClientDisconnect;
    usage
        .record(&record, client_still_there && usage.hold_final_frame())
        .await;
    ctx.usage_record = Some(Box::new(record));
}

fn usage_trailers(record: &UsageRecord) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    for (name, value) in record.trailers() {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            trailers.insert(http::HeaderName::from_static(name), value);
        }
    }
    never_indexed(&mut trailers);
    trailers
}

/// The extractor for a known format, or one that recognises the format from the first frames.
fn extractor(format: Option<StreamFormat>) -> Box<dyn UsageExtractor> {
    match format {
        Some(format) => extractor_for(format),
        None => Box::new(AutoExtractor::new()),
    }
}

/// Asks an OpenAI chat/completions upstream for usage when the route wants it. Returns whether
/// the client did not ask itself (then the usage-only chunk is removed from its stream).
fn add_include_usage(
    route: &Route,
    ctx: &RequestCtx,
    body: &mut BodyPrefix,
    members: Option<StreamMembers>,
) -> bool {
    let applies = matches!(
        ctx.format,
        Some(StreamFormat::OpenaiChat | StreamFormat::OpenaiCompletions)
    );
    let wanted = route
        .include_usage
        .unwrap_or(matches!(route.provider, Provider::Openai | Provider::Auto));
    if !applies || !wanted {
        return false;
    }
    if !body.complete {
        log::warn!(
            "request {}: body over {INSPECT_BODY_LIMIT} bytes, forwarded untouched without include_usage",
            ctx.request_id
        );
        return false;
    }
    match ensure_include_usage(&body.prefix, members.as_ref()) {
        IncludeUsage::Injected(rewritten) => {
            body.prefix = BytesMut::from(&rewritten[..]);
            true
        }
        IncludeUsage::ClientAsked => false,
        IncludeUsage::Untouched(reason) => {
            log::warn!(
                "request {}: include_usage not added: {reason}",
                ctx.request_id
            );
            false
        }
    }
}

/// Counts a stream in flight for exactly as long as it lives, whatever way it ends (including
/// the request future being dropped at shutdown).
struct StreamGuard {
    route: String,
    /// Looked up once: a label lookup hashes the route name under a lock.
    in_flight: prometheus::IntGauge,
    outcome: StreamOutcome,
}

impl StreamGuard {
    fn new(route: &str) -> Self {
        let in_flight = METRICS.streams_in_flight.with_label_values(&[route]);
        in_flight.inc();
        StreamGuard {
            route: route.to_string(),
            in_flight,
            outcome: StreamOutcome::ClientDisconnect,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.in_flight.dec();
        METRICS.stream_finished(&self.route, self.outcome);
    }
}
