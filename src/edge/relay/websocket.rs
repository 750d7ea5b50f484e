//! A WebSocket session once the upstream accepted the handshake with `101 Switching Protocols`:
//! the `101` goes to the client, then bytes are copied both ways as they arrive, unbuffered and
//! uninterpreted, until either side closes, nothing moves for the route's `idle_timeout`, or the
//! session reaches its `max_duration`. Then both connections are closed.
//!
//! Both ends stay Pingora sessions. Writing a `101` to an upgrade request turns the client
//! session into a raw pass-through (`ServerSession::was_upgraded`; its request body becomes
//! "read until close", its response body "write until close"); reading a `101` does the same to
//! the upstream session's response body, and `maybe_upgrade_body_writer` to its request body.
//! Each session's reads keep their progress inside the session, so one loop can wait on both
//! directions and the clock at once and drop the reads that lose the race.

use super::StreamGuard;
use crate::edge::headers::{client_response, ResponseShape};
use crate::edge::responses::Finish;
use crate::edge::stream_body::{self, sleep_until_deadline};
use crate::edge::upstream::{H1Connection, UpstreamConn};
use crate::edge::RequestCtx;
use crate::route::Route;
use crate::sse::{RelayClock, RelayTick, StreamOutcome};
use crate::telemetry::METRICS;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use std::time::Instant;

enum Event {
    Upstream(pingora::Result<Option<Bytes>>),
    Client(pingora::Result<Option<Bytes>>),
    Tick(RelayTick),
}

/// Sends the upstream's `101` to the client and runs the session to its end. The connections
/// are never reused.
pub async fn run(
    route: &Route,
    up: UpstreamConn,
    upstream_head: &ResponseHeader,
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> Finish {
    let UpstreamConn::H1 { conn: mut up, .. } = up else {
        // WebSocket handshakes always go over Sluice's own HTTP/1.1 connections.
        return Finish::Close;
    };
    let head = match client_response(
        upstream_head,
        ResponseShape::Upgrade,
        &ctx.request_id,
        &ctx.limit_headers,
    ) {
        Ok(head) => head,
        Err(_) => return Finish::Close,
    };
    ctx.status = 101;
    ctx.event_stream = true;
    if down.write_response_header(Box::new(head)).await.is_err() || !down.was_upgraded() {
        ctx.outcome = Some(StreamOutcome::ClientDisconnect);
        return Finish::Close;
    }
    let mut guard = StreamGuard::new(&route.name);
    let outcome = copy_both_ways(route, &mut up, down, ctx).await;
    // The upstream connection is closed now; the client's is closed by Pingora once this
    // request returns.
    super::close_upstream(up, outcome, ctx).await;
    ctx.outcome = Some(outcome);
    guard.outcome = outcome;
    if matches!(
        outcome,
        StreamOutcome::IdleTimeout | StreamOutcome::MaxDuration
    ) {
        ctx.error = Some(format!(
            "WebSocket session ended by Sluice: {}",
            outcome.as_str()
        ));
    }
    Finish::Close
}

async fn copy_both_ways(
    route: &Route,
    up: &mut H1Connection,
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> StreamOutcome {
    // The session's own clock decides when silence is too long, for both directions at once.
    down.set_read_timeout(None);
    let mut clock = RelayClock::new(route.policy, Instant::now(), false);
    let series = METRICS.for_stream(&route.name);
    loop {
        let deadline = clock.next_deadline();
        let event = tokio::select! {
            biased;
            read = up.read_raw() => Event::Upstream(read),
            read = down.read_request_body() => Event::Client(read),
            tick = sleep_until_deadline(deadline) => Event::Tick(tick),
        };
        match event {
            Event::Upstream(Ok(Some(data))) => {
                clock.on_upstream_bytes(Instant::now());
                series.stream_bytes.inc_by(data.len() as u64);
                // A side that stops reading stalls the copy: the clock still ends the session.
                let deadline = clock.next_deadline();
                tokio::select! {
                    written = stream_body::write(down, ctx, data) => if written.is_err() {
                        return StreamOutcome::ClientDisconnect;
                    },
                    tick = sleep_until_deadline(deadline) => return ended_by(tick),
                }
            }
            Event::Upstream(Ok(None)) => return StreamOutcome::Completed,
            Event::Upstream(Err(e)) => {
                ctx.error = Some(format!("upstream WebSocket read: {e}"));
                METRICS.upstream_failed(&route.upstream.name, "body");
                return StreamOutcome::UpstreamError;
            }
            Event::Client(Ok(Some(data))) => {
                clock.on_upstream_bytes(Instant::now());
                let deadline = clock.next_deadline();
                let written = tokio::select! {
                    written = up.write_raw(&data) => written,
                    tick = sleep_until_deadline(deadline) => return ended_by(tick),
                };
                match written {
                    Ok(()) => {}
                    Err(_) => {
                        ctx.error = Some("upstream WebSocket write failed".into());
                        METRICS.upstream_failed(&route.upstream.name, "request");
                        return StreamOutcome::UpstreamError;
                    }
                }
            }
            Event::Client(Ok(None) | Err(_)) => return StreamOutcome::ClientDisconnect,
            // No heartbeats on a WebSocket (the clock was made without them).
            Event::Tick(RelayTick::Heartbeat) => clock.on_heartbeat_due(Instant::now()),
            Event::Tick(tick) => return ended_by(tick),
        }
    }
}

fn ended_by(tick: RelayTick) -> StreamOutcome {
    match tick {
        RelayTick::MaxDuration => StreamOutcome::MaxDuration,
        RelayTick::IdleTimeout | RelayTick::Heartbeat => StreamOutcome::IdleTimeout,
    }
}
