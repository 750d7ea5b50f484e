//! Everything before a response's body: admission, the upstream connection (sent again once
//! when a pooled one closed crossing the request), the request head and body, the response head
//! (or the WebSocket handshake), and the client's response head. What it opens is what the body
//! relay needs ([`Opened`]).

use super::{close_upstream, refuse, request, websocket};
use crate::content_coding::{self, ContentDecoder};
use crate::edge::admission;
use crate::edge::downstream::{Downstream, RequestSession};
use crate::edge::drain;
use crate::edge::headers::{
    asks_for_websocket, client_response, is_websocket_upgrade, ResponseShape, UpstreamRequest,
};
use crate::edge::responses::{respond_error, respond_refusal, shutting_down, Finish};
use crate::edge::timer;
use crate::edge::upstream::{Pooled, UpstreamConn, Upstreams};
use crate::edge::usage_sink::UsageSink;
use crate::edge::RequestCtx;
use crate::limits::Limiter;
use crate::provider::{Provider, ProxyError, ProxyErrorKind};
use crate::route::Route;
use crate::sse::{
    may_be_json_object, request_wants_stream, StreamKind, StreamMembers, StreamOutcome,
};
use crate::telemetry::METRICS;
use crate::usage::extract::StreamFormat;
use crate::usage::include_usage::{ensure_include_usage, IncludeUsage};
use bytes::BytesMut;
use pingora::protocols::http::ServerSession;
use request::{BodyError, BodyPrefix, INSPECT_BODY_LIMIT};
use std::sync::Arc;
use std::time::Duration;

/// Whether a request body failed because its client went away: its HTTP/1.1 connection closed,
/// or its HTTP/2 stream was reset (or its connection lost) by the client.
fn client_left(e: &pingora::Error) -> bool {
    matches!(e.etype(), pingora::ErrorType::ConnectionClosed)
        || e.root_cause()
            .downcast_ref::<h2::Error>()
            .is_some_and(|h2| h2.is_reset() || h2.is_io() || h2.is_go_away())
}

/// The answer to a request whose body did not get upstream whole. `upstream_has_part`: some of
/// it was sent, so the connection is closed whatever happens here (dropping the upstream
/// connection, the caller's part, aborts the request there).
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
pub(super) struct Opened<'d> {
    pub(super) up: UpstreamConn,
    /// Where the body goes.
    pub(super) down: Downstream<'d>,
    /// The stream format, `None` for a plain body.
    pub(super) kind: Option<StreamKind>,
    /// Boxed: rarely there (an upstream that compresses a stream), 136 bytes when inline.
    pub(super) decoder: Option<Box<ContentDecoder>>,
    pub(super) strip_usage_chunk: bool,
}

/// Everything up to the response head: checks, request body, admission, the upstream request and
/// its response head. `Err` when the request was answered here (an error, a refusal, a WebSocket
/// session that has ended).
pub(super) async fn open<'d>(
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
