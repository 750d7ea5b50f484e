//! A WebSocket session once the upstream accepted the handshake with `101 Switching Protocols`:
//! the `101` goes to the client, then bytes are copied both ways as they arrive, unbuffered and
//! uninterpreted, until either side closes, nothing moves for the route's `idle_timeout`, or the
//! session reaches its `max_duration`. Then both connections are closed, after a Close frame
//! from Sluice to each side that did not send its own and is between two frames: `1001` (going
//! away) to both when Sluice ends the session, to the upstream when the client left, and `1014`
//! (bad gateway) to the client when the upstream failed or closed without a Close.
//!
//! Both ends stay Pingora sessions. Writing a `101` to an upgrade request turns the client
//! session into a raw pass-through (`ServerSession::was_upgraded`; its request body becomes
//! "read until close", its response body "write until close"); reading a `101` does the same to
//! the upstream session's response body, and `maybe_upgrade_body_writer` to its request body.
//! Each session's reads keep their progress inside the session, so one loop can wait on both
//! directions and the clock at once and drop the reads that lose the race.

use super::StreamGuard;
use crate::edge::downstream::Downstream;
use crate::edge::drain;
use crate::edge::headers::{client_response, ResponseShape};
use crate::edge::responses::Finish;
use crate::edge::stream_body::{self, RelayTimer};
use crate::edge::upstream::{H1Connection, UpstreamConn};
use crate::edge::RequestCtx;
use crate::http1::ResponseHead;
use crate::route::Route;
use crate::sse::{RelayClock, RelayTick, StreamOutcome};
use crate::telemetry::METRICS;
use crate::websocket::{close_frame, FrameTracker, BAD_GATEWAY, GOING_AWAY};
use bytes::Bytes;
use pingora::protocols::http::ServerSession;
use std::time::{Duration, Instant};

/// Longest Sluice waits to write a Close frame of its own (to a side that stopped reading).
const CLOSE_FRAME_WAIT: Duration = Duration::from_millis(200);

/// Where each direction's frames begin, so that Sluice's Close frames go between two frames.
#[derive(Default)]
struct Framing {
    to_client: FrameTracker,
    to_upstream: FrameTracker,
}

enum Event {
    Upstream(pingora::Result<Option<Bytes>>),
    Client(pingora::Result<Option<Bytes>>),
    Tick(RelayTick),
    GraceOver,
}

/// Sends the upstream's `101` to the client and runs the session to its end. The connections
/// are never reused.
pub async fn run(
    route: &Route,
    up: UpstreamConn,
    upstream_head: ResponseHead,
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
    )
    .and_then(|head| head.into_response_header(false))
    {
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
    let mut framing = Framing::default();
    let outcome = copy_both_ways(route, &mut up, down, ctx, &mut framing).await;
    send_close_frames(outcome, &framing, &mut up, down, ctx).await;
    // The upstream connection is closed now; the client's is closed by Pingora once this
    // request returns.
    super::close_upstream(up, outcome, ctx).await;
    ctx.outcome = Some(outcome);
    guard.outcome = outcome;
    if matches!(
        outcome,
        StreamOutcome::IdleTimeout | StreamOutcome::MaxDuration | StreamOutcome::Shutdown
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
    framing: &mut Framing,
) -> StreamOutcome {
    // The session's own clock decides when silence is too long, for both directions at once.
    down.set_read_timeout(None);
    let mut clock = RelayClock::new(route.policy, Instant::now(), false);
    let mut timer = RelayTimer::new();
    let series = METRICS.for_stream(&route.name);
    // Made once: it waits in a process-wide list, joined and left under a lock.
    let mut grace_over = std::pin::pin!(drain::grace_over());
    loop {
        let event = tokio::select! {
            biased;
            read = up.read_raw() => Event::Upstream(read),
            read = down.read_request_body() => Event::Client(read),
            tick = timer.due(&clock) => Event::Tick(tick),
            _ = &mut grace_over => Event::GraceOver,
        };
        match event {
            Event::Upstream(Ok(Some(data))) => {
                clock.on_upstream_bytes(Instant::now());
                series.stream_bytes.inc_by(data.len() as u64);
                framing.to_client.feed(&data);
                // A side that stops reading stalls the copy: the clock and the end of a
                // shutdown's grace still end the session.
                tokio::select! {
                    written = write_client(down, ctx, data) => if written.is_err() {
                        return StreamOutcome::ClientDisconnect;
                    },
                    tick = timer.due(&clock) => return ended_by(tick),
                    _ = &mut grace_over => return StreamOutcome::Shutdown,
                }
            }
            // After its Close frame, the upstream's end is the session's orderly end (RFC 6455
            // §7.1.1: the server closes the TCP connection first); without one it failed.
            Event::Upstream(Ok(None)) if framing.to_client.closed() => {
                return StreamOutcome::Completed
            }
            Event::Upstream(Ok(None)) => {
                ctx.error = Some("the upstream closed the connection without a Close frame".into());
                METRICS.upstream_failed(&route.upstream.name, "body");
                return StreamOutcome::UpstreamError;
            }
            Event::Upstream(Err(e)) => {
                ctx.error = Some(format!("upstream WebSocket read: {e}"));
                METRICS.upstream_failed(&route.upstream.name, "body");
                return StreamOutcome::UpstreamError;
            }
            Event::Client(Ok(Some(data))) => {
                clock.on_upstream_bytes(Instant::now());
                framing.to_upstream.feed(&data);
                let written = tokio::select! {
                    written = up.write_raw(&data) => written,
                    tick = timer.due(&clock) => return ended_by(tick),
                    _ = &mut grace_over => return StreamOutcome::Shutdown,
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
            // Both Close frames passed: the closing handshake is over, whoever closes first.
            Event::Client(Ok(None) | Err(_))
                if framing.to_client.closed() && framing.to_upstream.closed() =>
            {
                return StreamOutcome::Completed
            }
            Event::Client(Ok(None) | Err(_)) => return StreamOutcome::ClientDisconnect,
            // No heartbeats on a WebSocket (the clock was made without them).
            Event::Tick(RelayTick::Heartbeat) => clock.on_heartbeat_due(Instant::now()),
            Event::Tick(tick) => return ended_by(tick),
            Event::GraceOver => return StreamOutcome::Shutdown,
        }
    }
}

/// Tells each side that is still there, between two frames and has not closed itself, why the
/// session ends.
async fn send_close_frames(
    outcome: StreamOutcome,
    framing: &Framing,
    up: &mut H1Connection,
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
) {
    let (to_client, to_upstream) = match outcome {
        StreamOutcome::IdleTimeout => (
            Some((GOING_AWAY, "idle timeout")),
            Some((GOING_AWAY, "idle timeout")),
        ),
        StreamOutcome::MaxDuration => (
            Some((GOING_AWAY, "max duration")),
            Some((GOING_AWAY, "max duration")),
        ),
        StreamOutcome::Shutdown => (
            Some((GOING_AWAY, "server shutting down")),
            Some((GOING_AWAY, "server shutting down")),
        ),
        StreamOutcome::ClientDisconnect => (None, Some((GOING_AWAY, "client left"))),
        StreamOutcome::Completed | StreamOutcome::UpstreamError => {
            (Some((BAD_GATEWAY, "upstream closed the connection")), None)
        }
    };
    if let Some((code, reason)) = to_client.filter(|_| framing.to_client.may_send_close()) {
        let frame = Bytes::from(close_frame(code, reason, None));
        let _ = tokio::time::timeout(CLOSE_FRAME_WAIT, write_client(down, ctx, frame)).await;
    }
    if let Some((code, reason)) = to_upstream.filter(|_| framing.to_upstream.may_send_close()) {
        // Frames to a server are masked, with a key it cannot predict (RFC 6455 §5.3).
        let mut key = [0u8; 4];
        if getrandom::getrandom(&mut key).is_ok() {
            let frame = close_frame(code, reason, Some(key));
            let _ = tokio::time::timeout(CLOSE_FRAME_WAIT, up.write_raw(&frame)).await;
        }
    }
}

/// Bytes to the client, through Pingora's session (which reads the client's frames too).
async fn write_client(
    down: &mut ServerSession,
    ctx: &mut RequestCtx,
    data: Bytes,
) -> pingora::Result<()> {
    stream_body::write(&mut Downstream::Session(down), ctx, data).await
}

fn ended_by(tick: RelayTick) -> StreamOutcome {
    match tick {
        RelayTick::MaxDuration => StreamOutcome::MaxDuration,
        RelayTick::IdleTimeout | RelayTick::Heartbeat => StreamOutcome::IdleTimeout,
    }
}
