//! The stream path of one request, end to end: route, forward the request, relay the response
//! chunk by chunk as it arrives, and end it cleanly on every path (normal end, idle upstream,
//! max duration, upstream error, client gone).
//!
//! Sluice runs this loop itself instead of Pingora's proxy phases because Pingora's body filters
//! only run when bytes arrive: heartbeats and clean terminal events need a timer beside the
//! upstream read (DESIGN.md §4).

use super::headers::{client_response, BodyFraming, UpstreamRequest};
use super::upstream::Upstreams;
use super::RequestCtx;
use crate::provider::{ProxyError, ProxyErrorKind};
use crate::route::Route;
use crate::sse::{
    is_event_stream, request_wants_stream, EventBoundary, RelayClock, RelayTick, StreamOutcome,
    HEARTBEAT,
};
use crate::telemetry::METRICS;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::compression::ResponseCompressionCtx;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Request bodies up to this size are read whole before the request goes upstream, so that a
/// JSON `"stream": true` can be seen; larger ones stream through uninspected.
const INSPECT_BODY_LIMIT: usize = 1024 * 1024;

/// The end of one request, as far as the client connection is concerned.
pub enum Finish {
    /// The response ended properly; the client connection may be reused.
    Clean,
    /// The client connection must be closed (client gone, or a truncated plain body).
    Close,
}

pub async fn handle(
    upstreams: &Upstreams,
    route: &Arc<Route>,
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> Finish {
    let body = match read_body_prefix(down).await {
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
    let client_head = match client_response(&upstream_head, event_stream, &ctx.request_id) {
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

    let mut stream = event_stream.then(|| StreamGuard::new(&route.name));
    let mut boundary = EventBoundary::new();
    let outcome = relay_body(
        route,
        &mut up,
        down,
        ctx,
        event_stream,
        decoder.as_mut(),
        &mut boundary,
    )
    .await;
    ctx.outcome = Some(outcome);
    if let Some(guard) = stream.as_mut() {
        guard.outcome = outcome;
    }
    match outcome {
        StreamOutcome::Completed => {
            let finished = down.finish_body().await.is_ok();
            upstreams
                .release(up, &peer, route.upstream.pool_idle_timeout)
                .await;
            if finished {
                Finish::Clean
            } else {
                ctx.outcome = Some(StreamOutcome::ClientDisconnect);
                Finish::Close
            }
        }
        StreamOutcome::ClientDisconnect => Finish::Close,
        ended => {
            // The upstream connection is dropped here, never pooled: it may still be mid-body.
            drop(up);
            if event_stream {
                let error = end_error(ended, route);
                let ended_cleanly = write_terminal_event(down, ctx, &error, &boundary).await;
                if ended_cleanly {
                    return Finish::Clean;
                }
            }
            Finish::Close
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
        METRICS.stream_finished(&self.route, self.outcome);
    }
}

enum RelayEvent {
    Chunk(pingora::Result<Option<Bytes>>),
    Tick(RelayTick),
    ClientGone,
}

async fn relay_body(
    route: &Route,
    up: &mut UpstreamSession,
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    event_stream: bool,
    mut decoder: Option<&mut ResponseCompressionCtx>,
    boundary: &mut EventBoundary,
) -> StreamOutcome {
    let mut clock = RelayClock::new(route.policy, Instant::now(), event_stream);
    let mut last_chunk: Option<Instant> = None;
    let route_name = route.name.as_str();
    loop {
        // A sized body that has fully arrived would otherwise wait for a read that never ends.
        if up.response_done() {
            return finish_decoding(decoder, down, ctx).await;
        }
        let read = up.read_response_body();
        tokio::pin!(read);
        // Ticks (heartbeats) leave the pending upstream read in place: only an ending drops it.
        let chunk = loop {
            let deadline = clock.next_deadline();
            let event = tokio::select! {
                biased;
                chunk = &mut read => RelayEvent::Chunk(chunk),
                tick = sleep_until_deadline(deadline) => RelayEvent::Tick(tick),
                _ = down.read_body_or_idle(true) => RelayEvent::ClientGone,
            };
            match event {
                RelayEvent::Chunk(chunk) => break chunk,
                RelayEvent::ClientGone => return StreamOutcome::ClientDisconnect,
                RelayEvent::Tick(RelayTick::IdleTimeout) => return StreamOutcome::IdleTimeout,
                RelayEvent::Tick(RelayTick::MaxDuration) => return StreamOutcome::MaxDuration,
                RelayEvent::Tick(RelayTick::Heartbeat) => {
                    // A half-sent upstream event postpones the heartbeat.
                    if boundary.at_boundary() {
                        if down
                            .write_response_body(Bytes::from_static(HEARTBEAT), false)
                            .await
                            .is_err()
                        {
                            return StreamOutcome::ClientDisconnect;
                        }
                        ctx.heartbeats += 1;
                        METRICS.heartbeats.with_label_values(&[route_name]).inc();
                    }
                    clock.on_heartbeat_due(Instant::now());
                }
            }
        };
        let data = match chunk {
            Ok(Some(data)) => data,
            Ok(None) => return finish_decoding(decoder, down, ctx).await,
            Err(e) => {
                ctx.error = Some(format!("upstream body: {e}"));
                METRICS
                    .upstream_errors
                    .with_label_values(&[&route.upstream.name, "body"])
                    .inc();
                return StreamOutcome::UpstreamError;
            }
        };
        let now = Instant::now();
        clock.on_upstream_bytes(now);
        let data = match decoder.as_deref_mut() {
            Some(d) => d
                .response_body_filter(Some(&data), false)
                .unwrap_or_default(),
            None => data,
        };
        if data.is_empty() {
            continue;
        }
        if event_stream {
            boundary.observe(&data);
            if let Some(previous) = last_chunk {
                METRICS
                    .chunk_gap
                    .with_label_values(&[route_name])
                    .observe(now.duration_since(previous).as_secs_f64());
            }
            last_chunk = Some(now);
            METRICS
                .stream_bytes
                .with_label_values(&[route_name])
                .inc_by(data.len() as u64);
        }
        if ctx.first_byte.is_none() {
            ctx.first_byte = Some(now);
            METRICS
                .time_to_first_byte
                .with_label_values(&[route_name])
                .observe(now.duration_since(ctx.started).as_secs_f64());
        }
        ctx.bytes_sent += data.len() as u64;
        if down.write_response_body(data, false).await.is_err() {
            return StreamOutcome::ClientDisconnect;
        }
    }
}

/// The upstream body ended: whatever the decoder still holds goes to the client.
async fn finish_decoding(
    decoder: Option<&mut ResponseCompressionCtx>,
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> StreamOutcome {
    let rest = decoder.and_then(|d| d.response_body_filter(None, true));
    if let Some(rest) = rest.filter(|r| !r.is_empty()) {
        ctx.bytes_sent += rest.len() as u64;
        if down.write_response_body(rest, false).await.is_err() {
            return StreamOutcome::ClientDisconnect;
        }
    }
    StreamOutcome::Completed
}

fn end_error(outcome: StreamOutcome, route: &Route) -> ProxyError {
    match outcome {
        StreamOutcome::IdleTimeout => ProxyError::new(
            ProxyErrorKind::UpstreamIdle,
            format!(
                "upstream {} sent nothing for {:?}; the stream was ended by Sluice",
                route.upstream.name,
                route.policy.idle_timeout.unwrap_or_default()
            ),
        ),
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

/// A JSON error response in the route's provider format; only possible before the response head.
pub async fn respond_error(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    error: &ProxyError,
) -> Finish {
    let status = error.kind.status();
    ctx.status = status;
    ctx.error = Some(error.message.clone());
    if matches!(error.kind, ProxyErrorKind::UpstreamTimeout) {
        ctx.outcome = Some(StreamOutcome::IdleTimeout);
    } else if matches!(error.kind, ProxyErrorKind::UpstreamUnavailable) {
        ctx.outcome = Some(StreamOutcome::UpstreamError);
    }
    let body = Bytes::from(error.json_body(ctx.provider));
    let build = || -> pingora::Result<ResponseHeader> {
        let mut head = ResponseHeader::build(status, Some(3))?;
        head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        head.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        head.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        head.insert_header(crate::request_id::HEADER, ctx.request_id.as_str())?;
        Ok(head)
    };
    let Ok(head) = build() else {
        return Finish::Close;
    };
    // The request body may be unread (e.g. no route): the connection cannot be reused then.
    let body_done = down.is_body_done();
    let written = down.write_response_header(Box::new(head)).await.is_ok()
        && down.write_response_body(body, true).await.is_ok();
    if written && body_done {
        Finish::Clean
    } else {
        Finish::Close
    }
}

/// Ends an event stream with an error event the provider's SDK raises, then a proper end of
/// body. An upstream event left half-sent is closed first, so the error is an event of its own.
async fn write_terminal_event(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    error: &ProxyError,
    boundary: &EventBoundary,
) -> bool {
    ctx.error = Some(error.message.clone());
    let mut out = BytesMut::new();
    if boundary.mid_line() {
        out.extend_from_slice(b"\n\n");
    } else if !boundary.at_boundary() {
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(error.sse_event(ctx.provider).as_bytes());
    ctx.bytes_sent += out.len() as u64;
    down.write_response_body(out.freeze(), false).await.is_ok() && down.finish_body().await.is_ok()
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

async fn sleep_until_deadline(deadline: Option<(Instant, RelayTick)>) -> RelayTick {
    match deadline {
        Some((at, tick)) => {
            tokio::time::sleep_until(at.into()).await;
            tick
        }
        None => std::future::pending().await,
    }
}
