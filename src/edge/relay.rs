//! The stream path of one request, end to end: route, forward the request, relay the response
//! chunk by chunk as it arrives, and end it cleanly on every path (normal end, idle upstream,
//! max duration, upstream error, client gone).
//!
//! Sluice runs this loop itself instead of Pingora's proxy phases because Pingora's body filters
//! only run when bytes arrive: heartbeats and clean terminal events need a timer beside the
//! upstream read (DESIGN.md §4).

use super::admission;
use super::headers::{client_response, BodyFraming, UpstreamRequest};
use super::ledger_keeper::STREAMS_IN_FLIGHT;
use super::responses::{
    end_error, end_stream, respond_error, respond_refusal, write_terminal_event, Finish,
};
use super::stream_body;
use super::upstream::Upstreams;
use super::usage_sink::UsageSink;
use super::RequestCtx;
use crate::limits::Limiter;
use crate::provider::{Provider, ProxyError, ProxyErrorKind};
use crate::route::Route;
use crate::sse::{is_event_stream, request_wants_stream, StreamOutcome};
use crate::telemetry::METRICS;
use crate::usage::extract::{
    extractor_for, AutoExtractor, NoExtractor, StreamFormat, UsageExtractor,
};
use crate::usage::include_usage::{ensure_include_usage, IncludeUsage};
use crate::usage::inspector::{InspectorOptions, StreamInspector};
use bytes::BytesMut;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::compression::ResponseCompressionCtx;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Request bodies up to this size are read whole before the request goes upstream, so that a
/// JSON `"stream": true` can be seen (and `include_usage` added); larger ones stream through
/// uninspected.
const INSPECT_BODY_LIMIT: usize = 1024 * 1024;

pub async fn handle(
    upstreams: &Upstreams,
    usage: &UsageSink,
    limiter: &Limiter,
    route: &Arc<Route>,
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> Finish {
    let mut body = match read_body_prefix(down).await {
        Ok(body) => body,
        Err(e) => {
            let error = ProxyError::new(
                ProxyErrorKind::BadRequest,
                format!("could not read the request body: {e}"),
            );
            return respond_error(down, ctx, &error).await;
        }
    };
    let accept = down.req_header().headers.get(http::header::ACCEPT);
    let json = body.complete.then_some(&body.prefix[..]);
    ctx.stream_request = request_wants_stream(accept.map(|v| v.as_bytes()), json);
    ctx.format = StreamFormat::from_request(route.provider, down.req_header().uri.path());
    if let Err(refusal) = admission::admit(limiter, route, ctx).await {
        return respond_refusal(down, ctx, &refusal).await;
    }
    let strip_usage_chunk =
        usage.inspects() && ctx.stream_request && add_include_usage(route, ctx, &mut body);

    let request = UpstreamRequest {
        client: down.req_header(),
        upstream: &route.upstream,
        client_addr: down
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string()),
        request_id: &ctx.request_id,
        body: body.framing(down.req_header()),
        stream: ctx.stream_request,
        strip_client_key: route.auth.strips_client_key(),
    }
    .build();
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            let error = ProxyError::new(ProxyErrorKind::BadRequest, e.to_string());
            return respond_error(down, ctx, &error).await;
        }
    };

    let (mut up, peer) = match upstreams.connect(&route.upstream).await {
        Ok(connected) => connected,
        Err(error) => return respond_error(down, ctx, &error).await,
    };
    if let Err(e) = send_request(&mut up, request, body, down).await {
        METRICS
            .upstream_errors
            .with_label_values(&[&route.upstream.name, "request"])
            .inc();
        let error = ProxyError::new(
            ProxyErrorKind::UpstreamUnavailable,
            format!(
                "upstream {} failed while sending the request: {e}",
                route.upstream.name
            ),
        );
        return respond_error(down, ctx, &error).await;
    }

    let head_wait = route.policy.idle_timeout.unwrap_or(Duration::MAX);
    let head = tokio::select! {
        r = up.read_response_header() => r,
        _ = sleep_for(head_wait) => {
            let error = ProxyError::new(
                ProxyErrorKind::UpstreamTimeout,
                format!("upstream {} sent no response within {head_wait:?}", route.upstream.name),
            );
            METRICS.upstream_errors.with_label_values(&[&route.upstream.name, "response_header"]).inc();
            return respond_error(down, ctx, &error).await;
        }
        _ = down.read_body_or_idle(true) => {
            ctx.outcome = Some(StreamOutcome::ClientDisconnect);
            return Finish::Close;
        }
    };
    if let Err(e) = head {
        METRICS
            .upstream_errors
            .with_label_values(&[&route.upstream.name, "response_header"])
            .inc();
        let error = ProxyError::new(
            ProxyErrorKind::UpstreamUnavailable,
            format!(
                "upstream {} failed before its response head: {e}",
                route.upstream.name
            ),
        );
        return respond_error(down, ctx, &error).await;
    }
    let upstream_head = up
        .response_header()
        .expect("response header was read")
        .clone();
    let event_stream = is_event_stream(
        upstream_head
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .unwrap_or_default(),
    );
    let mut decoder = event_stream.then(|| decoder_for(&upstream_head)).flatten();
    let client_head = match client_response(
        &upstream_head,
        event_stream,
        &ctx.request_id,
        &ctx.limit_headers,
    ) {
        Ok(h) => h,
        Err(e) => {
            let error = ProxyError::new(ProxyErrorKind::UpstreamUnavailable, e.to_string());
            return respond_error(down, ctx, &error).await;
        }
    };
    ctx.status = client_head.status.as_u16();
    ctx.event_stream = event_stream;
    if down
        .write_response_header(Box::new(client_head))
        .await
        .is_err()
    {
        ctx.outcome = Some(StreamOutcome::ClientDisconnect);
        return Finish::Close;
    }

    if !event_stream {
        let outcome = stream_body::relay(route, &mut up, down, ctx, None, None).await;
        ctx.outcome = Some(outcome);
        return match outcome {
            StreamOutcome::Completed if down.finish_body().await.is_ok() => {
                upstreams
                    .release(up, &peer, route.upstream.pool_idle_timeout)
                    .await;
                Finish::Clean
            }
            // A plain body cut short cannot be ended cleanly: the client sees the connection
            // close, as it would with the upstream itself.
            _ => Finish::Close,
        };
    }

    let mut guard = StreamGuard::new(&route.name);
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
        &mut up,
        down,
        ctx,
        decoder.as_mut(),
        Some(&mut inspector),
    )
    .await;
    if outcome == StreamOutcome::Completed {
        upstreams
            .release(up, &peer, route.upstream.pool_idle_timeout)
            .await;
    } else {
        // Dropped, never pooled: it may be mid-body. Dropping closes it, so a provider whose
        // client left stops generating now, before any bookkeeping below.
        drop(up);
        if inspector.final_reached() && outcome != StreamOutcome::ClientDisconnect {
            // The provider finished its stream and merely left the connection open.
            outcome = StreamOutcome::Completed;
        }
    }
    ctx.outcome = Some(outcome);
    guard.outcome = outcome;
    if outcome != StreamOutcome::Completed {
        inspector.discard_partial();
    }

    let mut record =
        UsageSink::record_for(ctx, Some(inspector.facts()), inspector.oversized_events());
    // The held final frame is part of what the client gets (the usage comment is not counted).
    record.bytes += inspector.held_len() as u64;
    // The stream's end goes to the client only once its record is durable (when configured).
    let client_still_there = outcome != StreamOutcome::ClientDisconnect;
    usage
        .record(&record, client_still_there && usage.hold_final_frame())
        .await;
    ctx.usage_record = Some(record);
    match outcome {
        StreamOutcome::Completed => {
            let record = ctx.usage_record.as_ref().expect("just set");
            let mut tail = BytesMut::from(&inspector.take_held()[..]);
            if route.usage_comment {
                tail.extend_from_slice(record.sse_comment().as_bytes());
            }
            let trailers = wants_trailers(down).then(|| usage_trailers(record));
            end_stream(down, ctx, tail.freeze(), trailers).await
        }
        StreamOutcome::ClientDisconnect => Finish::Close,
        ended => {
            let error = end_error(ended, route);
            let at_boundary = inspector.client_at_event_boundary();
            write_terminal_event(down, ctx, &error, at_boundary).await
        }
    }
}

/// HTTP/2 clients that sent `TE: trailers` get the usage figures as response trailers (HTTP/1.1
/// trailers are not supported by Pingora).
fn wants_trailers(down: &ServerSession) -> bool {
    down.is_http2()
        && down
            .req_header()
            .headers
            .get_all(http::header::TE)
            .iter()
            .any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                })
            })
}

fn usage_trailers(record: &crate::usage::record::UsageRecord) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    for (name, value) in record.trailers() {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            trailers.insert(http::HeaderName::from_static(name), value);
        }
    }
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
fn add_include_usage(route: &Route, ctx: &RequestCtx, body: &mut BodyPrefix) -> bool {
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
    match ensure_include_usage(&body.prefix) {
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
    outcome: StreamOutcome,
}

impl StreamGuard {
    fn new(route: &str) -> Self {
        METRICS.streams_in_flight.with_label_values(&[route]).inc();
        STREAMS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        StreamGuard {
            route: route.to_string(),
            outcome: StreamOutcome::ClientDisconnect,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        METRICS
            .streams_in_flight
            .with_label_values(&[&self.route])
            .dec();
        STREAMS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        METRICS.stream_finished(&self.route, self.outcome);
    }
}

/// The request body read so far: whole when `complete`.
struct BodyPrefix {
    prefix: BytesMut,
    complete: bool,
}

impl BodyPrefix {
    fn framing(&self, client: &RequestHeader) -> BodyFraming {
        let declared = client
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
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
}

async fn read_body_prefix(down: &mut ServerSession) -> pingora::Result<BodyPrefix> {
    let mut prefix = BytesMut::new();
    while prefix.len() < INSPECT_BODY_LIMIT {
        match down.read_request_body().await? {
            Some(chunk) => prefix.extend_from_slice(&chunk),
            None => {
                return Ok(BodyPrefix {
                    prefix,
                    complete: true,
                })
            }
        }
    }
    Ok(BodyPrefix {
        prefix,
        complete: false,
    })
}

async fn send_request(
    up: &mut UpstreamSession,
    request: RequestHeader,
    body: BodyPrefix,
    down: &mut ServerSession,
) -> pingora::Result<()> {
    up.write_request_header(Box::new(request)).await?;
    if !body.prefix.is_empty() {
        up.write_request_body(body.prefix.freeze(), body.complete)
            .await?;
    }
    if !body.complete {
        while let Some(chunk) = down.read_request_body().await? {
            up.write_request_body(chunk, false).await?;
        }
    }
    up.finish_request_body().await
}

/// An event stream the upstream compressed although not asked to: decoded so that the client
/// gets plain events (gzip has no per-event flush).
fn decoder_for(upstream_head: &ResponseHeader) -> Option<ResponseCompressionCtx> {
    let encoding = upstream_head.headers.get(http::header::CONTENT_ENCODING)?;
    if encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
        return None;
    }
    let mut ctx = ResponseCompressionCtx::new(0, true, false);
    let identity_only = RequestHeader::build("GET", b"/", None).ok()?;
    ctx.request_filter(&identity_only);
    let mut head = upstream_head.clone();
    ctx.response_header_filter(&mut head, false);
    Some(ctx)
}

async fn sleep_for(duration: Duration) {
    match Instant::now().checked_add(duration) {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
