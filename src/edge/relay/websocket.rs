//! A WebSocket session once the upstream accepted the handshake with `101 Switching Protocols`:
//! the `101` goes to the client, then bytes are copied both ways as they arrive, unbuffered and
//! uninterpreted, until either side closes, nothing moves for the route's `idle_timeout`, or the
//! session reaches its `max_duration`. Then both connections are closed, after a Close frame
//! from Sluice to each side that did not send its own and is between two frames: `1001` (going
//! away) to both when Sluice ends the session, to the upstream when the client left, and `1014`
//! (bad gateway) to the client when the upstream failed or closed without a Close.
//!
//! Writing a `101` to an upgrade request turns the client session into a raw pass-through
//! (`ServerSession::was_upgraded`); then both connections leave their sessions (the client's
//! with the frames it sent before the `101`, the upstream's with those that came with its
//! `101`) and each is split in two, so that the two directions are copied independently: a side
//! that stops reading holds back only what goes to it, never what it sends (as
//! `tokio::io::copy_bidirectional` does), and the session's clock and the shutdown grace are
//! watched while either waits.

use super::StreamGuard;
use crate::edge::downstream::RequestSession;
use crate::edge::drain;
use crate::edge::headers::{client_response, ResponseShape};
use crate::edge::responses::Finish;
use crate::edge::stream_body::{self, RelayTimer};
use crate::edge::tcp;
use crate::edge::upstream::UpstreamConn;
use crate::edge::RequestCtx;
use crate::http1::ResponseHead;
use crate::route::Route;
use crate::sse::{RelayClock, RelayTick, StreamOutcome};
use crate::telemetry::METRICS;
use crate::websocket::{close_frame, FrameTracker, BAD_GATEWAY, GOING_AWAY};
use bytes::BytesMut;
use pingora::protocols::Stream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{ReadHalf, WriteHalf};

/// Longest Sluice waits to write a Close frame of its own (to a side that stopped reading).
const CLOSE_FRAME_WAIT: Duration = Duration::from_millis(200);

/// Where each direction's frames begin, so that Sluice's Close frames go between two frames.
#[derive(Default)]
struct Framing {
    to_client: FrameTracker,
    to_upstream: FrameTracker,
}

/// How one direction of the copy ended.
enum Ended {
    /// Its source closed its connection (or failed to be read).
    Source(std::io::Result<()>),
    /// Writing to its destination failed.
    Destination,
}

/// How the session ended, before it is told to each side.
enum SessionEnd {
    FromUpstream(Ended),
    FromClient(Ended),
    Tick(RelayTick),
    GraceOver,
}

/// Sends the upstream's `101` to the client and runs the session to its end. The connections
/// are never reused.
pub async fn run(
    route: &Route,
    up: UpstreamConn,
    upstream_head: ResponseHead,
    session: &mut RequestSession,
    ctx: &mut RequestCtx,
) -> Finish {
    let UpstreamConn::H1 { conn: up, .. } = up else {
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
    let down = session.get();
    if down.write_response_header(Box::new(head)).await.is_err() || !down.was_upgraded() {
        ctx.outcome = Some(StreamOutcome::ClientDisconnect);
        return Finish::Close;
    }
    let Some((client, client_early)) = session.take_upgraded() else {
        ctx.outcome = Some(StreamOutcome::ClientDisconnect);
        return Finish::Close;
    };
    let (upstream, upstream_early) = up.into_parts();
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_upstream, mut to_upstream) = tokio::io::split(upstream);
    let mut guard = StreamGuard::new(&route.name);
    let mut framing = Framing::default();
    let end = {
        let ends = Ends {
            from_upstream: (&mut from_upstream, upstream_early),
            to_client: &mut to_client,
            from_client: (&mut from_client, client_early),
            to_upstream: &mut to_upstream,
        };
        copy_both_ways(route, ends, ctx, &mut framing).await
    };
    let outcome = outcome_of(end, route, &framing, ctx);
    send_close_frames(outcome, &framing, &mut to_upstream, &mut to_client).await;
    // The upstream connection is closed now, the client's when this returns.
    super::close_upstream((from_upstream, to_upstream), outcome, ctx).await;
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

type Reader = ReadHalf<Stream>;
type Writer = WriteHalf<Stream>;

/// Both connections, each split in two, with the bytes each side sent that were read already.
struct Ends<'a> {
    from_upstream: (&'a mut Reader, BytesMut),
    to_client: &'a mut Writer,
    from_client: (&'a mut Reader, BytesMut),
    to_upstream: &'a mut Writer,
}

/// Copies both ways until a side closes or fails, the clock ends the session, or a shutdown's
/// grace is over.
async fn copy_both_ways(
    route: &Route,
    ends: Ends<'_>,
    ctx: &mut RequestCtx,
    framing: &mut Framing,
) -> SessionEnd {
    let started = Instant::now();
    // The session's own clock decides when silence is too long, for both directions at once;
    // each direction notes when it last moved bytes.
    let mut clock = RelayClock::new(route.policy, started, false);
    let mut timer = RelayTimer::new();
    let last_moved = AtomicU64::new(0);
    let series = METRICS.for_stream(&route.name);
    // Made once: it waits in a process-wide list, joined and left under a lock.
    let mut grace_over = std::pin::pin!(drain::grace_over());
    let (from_upstream, upstream_early) = ends.from_upstream;
    let (from_client, client_early) = ends.from_client;
    let mut downstream = std::pin::pin!(copy_one_way(
        from_upstream,
        upstream_early,
        ends.to_client,
        &mut framing.to_client,
        Moved(&last_moved, started),
        |n| {
            series.stream_bytes.inc_by(n as u64);
            stream_body::note_sent(ctx, n);
        },
    ));
    let mut upstream = std::pin::pin!(copy_one_way(
        from_client,
        client_early,
        ends.to_upstream,
        &mut framing.to_upstream,
        Moved(&last_moved, started),
        |_| {},
    ));
    loop {
        tokio::select! {
            biased;
            ended = &mut downstream => return SessionEnd::FromUpstream(ended),
            ended = &mut upstream => return SessionEnd::FromClient(ended),
            tick = timer.due(&clock) => {
                // Due by the bytes either direction moved since.
                let moved = last_moved.load(Ordering::Relaxed);
                clock.on_upstream_bytes(started + Duration::from_nanos(moved));
                let still_due = clock
                    .next_deadline()
                    .is_some_and(|(at, _)| at <= Instant::now());
                match tick {
                    _ if !still_due => {}
                    // No heartbeats on a WebSocket (the clock was made without them).
                    RelayTick::Heartbeat => clock.on_heartbeat_due(Instant::now()),
                    tick => return SessionEnd::Tick(tick),
                }
            }
            _ = &mut grace_over => return SessionEnd::GraceOver,
        }
    }
}

/// Notes when a direction last moved bytes, in nanoseconds since the session started.
#[derive(Clone, Copy)]
struct Moved<'a>(&'a AtomicU64, Instant);

impl Moved<'_> {
    fn now(self) {
        let since = self.1.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.0.fetch_max(since, Ordering::Relaxed);
    }
}

/// One direction: `early` (read before the session began), then everything `from` sends, each
/// read written to `to` and flushed before the next read.
async fn copy_one_way(
    from: &mut Reader,
    early: BytesMut,
    to: &mut Writer,
    framing: &mut FrameTracker,
    moved: Moved<'_>,
    mut on_sent: impl FnMut(usize),
) -> Ended {
    let mut buf = early;
    loop {
        if buf.is_empty() {
            match tcp::read_into(from, &mut buf).await {
                Ok(0) => return Ended::Source(Ok(())),
                Ok(_) => {}
                Err(e) => return Ended::Source(Err(e)),
            }
        }
        moved.now();
        framing.feed(&buf);
        on_sent(buf.len());
        if tcp::write_flushed(to, &buf, "relaying a WebSocket")
            .await
            .is_err()
        {
            return Ended::Destination;
        }
        moved.now();
        // Nothing kept while the next read waits.
        buf = BytesMut::new();
    }
}

/// The session's outcome from how it ended, with what the access log says of a failure.
fn outcome_of(
    end: SessionEnd,
    route: &Route,
    framing: &Framing,
    ctx: &mut RequestCtx,
) -> StreamOutcome {
    let upstream_failed = |ctx: &mut RequestCtx, phase, error: String| {
        ctx.error = Some(error);
        METRICS.upstream_failed(&route.upstream.name, phase);
        StreamOutcome::UpstreamError
    };
    match end {
        // After its Close frame, the upstream's end is the session's orderly end (RFC 6455
        // §7.1.1: the server closes the TCP connection first); without one it failed.
        SessionEnd::FromUpstream(Ended::Source(Ok(()))) if framing.to_client.closed() => {
            StreamOutcome::Completed
        }
        SessionEnd::FromUpstream(Ended::Source(Ok(()))) => upstream_failed(
            ctx,
            "body",
            "the upstream closed the connection without a Close frame".into(),
        ),
        SessionEnd::FromUpstream(Ended::Source(Err(e))) => {
            upstream_failed(ctx, "body", format!("upstream WebSocket read: {e}"))
        }
        SessionEnd::FromUpstream(Ended::Destination) => StreamOutcome::ClientDisconnect,
        // Both Close frames passed: the closing handshake is over, whoever closes first.
        SessionEnd::FromClient(Ended::Source(_))
            if framing.to_client.closed() && framing.to_upstream.closed() =>
        {
            StreamOutcome::Completed
        }
        SessionEnd::FromClient(Ended::Source(_)) => StreamOutcome::ClientDisconnect,
        SessionEnd::FromClient(Ended::Destination) => {
            upstream_failed(ctx, "request", "upstream WebSocket write failed".into())
        }
        SessionEnd::Tick(RelayTick::MaxDuration) => StreamOutcome::MaxDuration,
        SessionEnd::Tick(_) => StreamOutcome::IdleTimeout,
        SessionEnd::GraceOver => StreamOutcome::Shutdown,
    }
}

/// Tells each side that is still there, between two frames and has not closed itself, why the
/// session ends.
async fn send_close_frames(
    outcome: StreamOutcome,
    framing: &Framing,
    to_upstream: &mut Writer,
    to_client: &mut Writer,
) {
    let (for_client, for_upstream) = match outcome {
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
    if let Some((code, reason)) = for_client.filter(|_| framing.to_client.may_send_close()) {
        let frame = close_frame(code, reason, None);
        send_within(to_client, &frame).await;
    }
    if let Some((code, reason)) = for_upstream.filter(|_| framing.to_upstream.may_send_close()) {
        // Frames to a server are masked, with a key it cannot predict (RFC 6455 §5.3).
        let mut key = [0u8; 4];
        if getrandom::getrandom(&mut key).is_ok() {
            send_within(to_upstream, &close_frame(code, reason, Some(key))).await;
        }
    }
}

/// A Close frame of Sluice's own, given up after [`CLOSE_FRAME_WAIT`] (a side that stopped
/// reading).
async fn send_within(to: &mut Writer, frame: &[u8]) {
    let close = tcp::write_flushed(to, frame, "writing a Close frame");
    let _ = tokio::time::timeout(CLOSE_FRAME_WAIT, close).await;
}
