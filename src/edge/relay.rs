//! The stream path of one request, end to end: route, forward the request, relay the response
//! chunk by chunk as it arrives, and end it cleanly on every path (normal end, idle upstream,
//! max duration, upstream error, client gone).
//!
//! Sluice runs this loop itself instead of Pingora's proxy phases because Pingora's body filters
//! only run when bytes arrive: heartbeats and clean terminal events need a timer beside the
//! upstream read (DESIGN.md §4).
//!
//! Four kinds of response are streams: event streams (usage read in flight, heartbeats,
//! terminal error events), JSON lines (a final JSON error line), Gemini's streamed JSON arrays
//! (usage read in flight, a final error element), and WebSocket sessions (`websocket`).
//! Anything else is relayed chunk by chunk as it is. Everything before the body (admission,
//! the upstream request, the heads) is `open`'s.

mod disconnect;
mod open;
mod request;
mod websocket;

use super::downstream::{Downstream, RequestSession};
use super::drain;
use super::headers::never_indexed;
use super::responses::{
    end_error, end_stream, respond_error, write_error_element, write_terminal_event,
    write_terminal_line, Finish,
};
use super::stream_body::{self, BodyWatch};
use super::timer;
use super::upstream::{UpstreamConn, Upstreams};
use super::usage_sink::UsageSink;
use super::RequestCtx;
use crate::content_coding::ContentDecoder;
use crate::limits::Limiter;
use crate::provider::ProxyError;
use crate::route::Route;
use crate::sse::{LineBoundary, StreamKind, StreamOutcome};
use crate::telemetry::METRICS;
use crate::usage::array_inspector::{ArrayInspector, ErrorElement};
use crate::usage::extract::{
    extractor_for, AutoExtractor, NoExtractor, StreamFormat, UsageExtractor,
};
use crate::usage::inspector::{InspectorOptions, StreamInspector};
use crate::usage::record::UsageRecord;
use bytes::BytesMut;
use futures_util::future::OptionFuture;
use futures_util::FutureExt;
use open::{open, Opened};
use pingora::protocols::http::ServerSession;
pub use request::{check_host, check_target, set_body_memory};
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
        let extractor = extractor(usage, ctx.format);
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
    let extractor = extractor(usage, ctx.format);
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
        outcome = completed_if_finished(outcome, inspector.finished(), ctx);
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
                StreamOutcome::Completed if inspector.final_reached() => {
                    end_stream(down, ctx, inspector.take_held(), trailers).await
                }
                // The provider finished (a finish reason) but left its array open: Sluice's own
                // `]` closes it (nothing is held before the `]`).
                StreamOutcome::Completed => {
                    let closing = inspector.closing();
                    stream_body::note_own_bytes(ctx, closing.len());
                    down.finish(bytes::Bytes::from_static(closing.as_bytes()), trailers)
                        .await
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

/// The extractor for a known format, or one that recognises the format from the first frames;
/// one that reads nothing with `usage.inspect: false`.
fn extractor(usage: &UsageSink, format: Option<StreamFormat>) -> Box<dyn UsageExtractor> {
    match format {
        _ if !usage.inspects() => Box::new(NoExtractor::default()),
        Some(format) => extractor_for(format),
        None => Box::new(AutoExtractor::new()),
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
