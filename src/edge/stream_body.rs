//! The response body loop: every upstream chunk to the client as it arrives, heartbeats while
//! the upstream is silent, and the ending (idle, max duration, upstream error, client gone)
//! decided by the relay clock. Event streams go through the usage inspector on the way; JSON
//! lines only have their line ends watched.

use super::downstream::{Downstream, TakenBytes};
use super::drain;
use super::timer;
use super::upstream::UpstreamConn;
use super::RequestCtx;
use crate::content_coding::ContentDecoder;
use crate::route::Route;
use crate::sse::{
    LineBoundary, RelayClock, RelayTick, StreamOutcome, END_MARKER_LINGER, HEARTBEAT,
};
use crate::telemetry::METRICS;
use crate::usage::array_inspector::ArrayInspector;
use crate::usage::inspector::StreamInspector;
use bytes::{Bytes, BytesMut};
use futures_util::future::OptionFuture;
use futures_util::FutureExt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

enum RelayEvent {
    Chunk(pingora::Result<Option<Bytes>>),
    Tick(RelayTick),
    ClientGone,
    GraceOver,
    /// The upstream did not end its body within `END_MARKER_LINGER` of the end marker.
    LingerOver,
}

/// What the relay watches in a body on its way to the client.
pub enum BodyWatch<'a> {
    /// A plain body: passed as it is.
    Plain,
    /// An event stream: read by the usage inspector; heartbeats go between its events.
    Events(&'a mut StreamInspector),
    /// JSON lines: where the client's last line ended (no heartbeats: a blank line is not a
    /// JSON value, and some NDJSON readers fail on one).
    Lines(&'a mut LineBoundary),
    /// A streamed JSON array (Gemini without `alt=sse`), read by its inspector; no heartbeats.
    Array(&'a mut ArrayInspector),
}

/// Relays the body until it ends one way or another; the caller writes the end.
pub async fn relay(
    route: &Route,
    up: &mut UpstreamConn,
    down: &mut Downstream<'_>,
    ctx: &mut RequestCtx,
    mut decoder: Option<&mut ContentDecoder>,
    mut watch: BodyWatch<'_>,
) -> StreamOutcome {
    let event_stream = matches!(watch, BodyWatch::Events(_));
    let stream = !matches!(watch, BodyWatch::Plain);
    let mut clock = RelayClock::new(route.policy, Instant::now(), event_stream);
    let mut last_chunk: Option<Instant> = None;
    let series = stream.then(|| METRICS.for_stream(&route.name));
    // An end or error met while gathering ready bytes, handled after those bytes are sent.
    let mut deferred: Option<pingora::Result<Option<Bytes>>> = None;
    let mut timer = RelayTimer::new();
    // Made once: it waits in a process-wide list, joined and left under a lock.
    let mut grace_over = std::pin::pin!(drain::grace_over());
    // Set once the provider's end marker has come. On Pingora's clock (arming it takes no
    // system call): a tokio timer due sooner than the relay's own would wake the reactor, once
    // for every stream's end.
    let mut linger: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let taken = TakenBytes::default();
    let socket = down.socket_fd().or(ctx.connection_socket);
    loop {
        let mut linger_over = false;
        // A sized body that has fully arrived would otherwise wait for a read that never ends.
        let chunk = if let Some(chunk) = deferred.take() {
            chunk
        } else if up.body_done() {
            Ok(None)
        } else {
            let read = up.read_body();
            tokio::pin!(read);
            // Ticks (heartbeats) leave the pending upstream read in place: only an ending
            // drops it.
            loop {
                let event = tokio::select! {
                    biased;
                    // First: an upstream that goes on sending after the marker is not waited for.
                    Some(()) = OptionFuture::from(linger.as_mut()), if linger.is_some() => {
                        RelayEvent::LingerOver
                    }
                    chunk = &mut read => RelayEvent::Chunk(chunk),
                    tick = timer.due(&clock) => RelayEvent::Tick(tick),
                    _ = down.client_gone() => RelayEvent::ClientGone,
                    _ = &mut grace_over => RelayEvent::GraceOver,
                };
                match event {
                    RelayEvent::Chunk(chunk) => break chunk,
                    // The pending read holds the connection: the stream ends just below.
                    RelayEvent::LingerOver => {
                        linger_over = true;
                        break Ok(None);
                    }
                    RelayEvent::ClientGone => return StreamOutcome::ClientDisconnect,
                    RelayEvent::GraceOver => return StreamOutcome::Shutdown,
                    RelayEvent::Tick(RelayTick::IdleTimeout) => return StreamOutcome::IdleTimeout,
                    RelayEvent::Tick(RelayTick::MaxDuration) => return StreamOutcome::MaxDuration,
                    RelayEvent::Tick(RelayTick::Heartbeat) => {
                        // A half-sent upstream event postpones the heartbeat.
                        let at_boundary = match &watch {
                            BodyWatch::Events(inspector) => inspector.client_at_event_boundary(),
                            _ => false,
                        };
                        if at_boundary {
                            let heartbeat = Bytes::from_static(HEARTBEAT);
                            note_own_bytes(ctx, heartbeat.len());
                            // A client that stopped reading holds the heartbeat as it would a
                            // chunk: the stream's timers still end it.
                            let mut written = std::pin::pin!(down.write(heartbeat, &taken));
                            let written = match written.as_mut().now_or_never() {
                                Some(written) => written,
                                None => {
                                    let wait = wait_for_client(
                                        written,
                                        (&taken, socket),
                                        grace_over.as_mut(),
                                        &mut timer,
                                        &mut clock,
                                    );
                                    match Box::pin(wait).await {
                                        Ok(written) => written,
                                        Err(ended) => return cut_by_client(ctx, ended),
                                    }
                                }
                            };
                            if written.is_err() {
                                return StreamOutcome::ClientDisconnect;
                            }
                            ctx.heartbeats += 1;
                            if let Some(series) = &series {
                                series.heartbeats.inc();
                                series.stream_bytes.inc_by(HEARTBEAT.len() as u64);
                            }
                        }
                        clock.on_heartbeat_due(Instant::now());
                    }
                }
            }
        };
        if linger_over {
            return end_after_marker(up, ctx, "stayed open");
        }
        let chunk = match chunk {
            Ok(Some(first)) => Ok(Some(take_ready(up, first, &mut deferred))),
            other => other,
        };
        let decoded = match (chunk, decoder.as_deref_mut()) {
            (Ok(Some(data)), None) => Ok((data, false)),
            (Ok(Some(data)), Some(d)) => d
                .decode(&data)
                .map(|data| (data, false))
                .map_err(|e| e.to_string()),
            (Ok(None), None) => Ok((Bytes::new(), true)),
            // The decoder may still hold the end of a compressed body, or find it cut short.
            (Ok(None), Some(d)) => d
                .finish()
                .map(|data| (data, true))
                .map_err(|e| e.to_string()),
            (Err(e), _) => Err(e.to_string()),
        };
        let (data, ended) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                ctx.error = Some(format!("upstream body: {e}"));
                METRICS.upstream_failed(&route.upstream.name, "body");
                return StreamOutcome::UpstreamError;
            }
        };
        let now = Instant::now();
        if !ended {
            clock.on_upstream_bytes(now);
            if let (Some(series), Some(previous)) = (&series, last_chunk.replace(now)) {
                series
                    .chunk_gap
                    .observe(now.duration_since(previous).as_secs_f64());
            }
        }
        let (data, final_reached) = match &mut watch {
            BodyWatch::Events(inspector) if !data.is_empty() => {
                let data = inspector.on_chunk(data);
                (data, inspector.final_reached())
            }
            BodyWatch::Array(inspector) if !data.is_empty() => {
                let data = inspector.on_chunk(data);
                (data, inspector.finished())
            }
            _ => (data, false),
        };
        if linger.is_none() && final_reached {
            linger = Some(Box::pin(timer::sleep(END_MARKER_LINGER)));
        }
        if !data.is_empty() {
            if let Some(series) = &series {
                series.stream_bytes.inc_by(data.len() as u64);
            }
            if let BodyWatch::Lines(lines) = &mut watch {
                lines.on_sent(&data);
            }
            let mut written = std::pin::pin!(write(down, ctx, data, &taken));
            let written = match written.as_mut().now_or_never() {
                Some(written) => written,
                // Boxed: only a client slower than its stream waits here, and every open
                // stream's state would otherwise have room for this wait.
                None => {
                    let wait = wait_for_client(
                        written,
                        (&taken, socket),
                        grace_over.as_mut(),
                        &mut timer,
                        &mut clock,
                    );
                    match Box::pin(wait).await {
                        Ok(written) => written,
                        Err(ended) => return cut_by_client(ctx, ended),
                    }
                }
            };
            if written.is_err() {
                return StreamOutcome::ClientDisconnect;
            }
        }
        if ended {
            return StreamOutcome::Completed;
        }
        let final_frame_full = match &watch {
            BodyWatch::Events(inspector) => inspector.final_frame_full(),
            BodyWatch::Array(inspector) => inspector.final_frame_full(),
            _ => false,
        };
        if final_frame_full {
            return end_after_marker(up, ctx, "went on sending");
        }
    }
}

/// Ends a stream whose client stopped reading: nothing more is written to it, and the access log
/// says whose silence it was.
fn cut_by_client(ctx: &mut RequestCtx, ended: StreamOutcome) -> StreamOutcome {
    ctx.write_cut = true;
    ctx.error = match ended {
        StreamOutcome::IdleTimeout => Some("the client took nothing for the idle timeout".into()),
        StreamOutcome::MaxDuration => {
            Some("max duration reached while a write to the client was still waiting".into())
        }
        _ => ctx.error.take(),
    };
    ended
}

/// Ends a stream whose upstream did not end its body after the provider's end marker (see
/// `END_MARKER_LINGER`): the provider's stream is complete, so it ends as completed with what
/// arrived so far, and the connection, in the middle of a body, is not reused.
fn end_after_marker(up: &mut UpstreamConn, ctx: &mut RequestCtx, what: &str) -> StreamOutcome {
    up.forbid_reuse();
    log::info!(
        "request {}: upstream {what} after the end of its stream; ended by Sluice",
        ctx.request_id
    );
    StreamOutcome::Completed
}

/// Waits for a write the client is slow to take. A client that stopped reading holds it: the
/// end of a shutdown's grace period, the stream's `max_duration`, and `idle_timeout` with nothing
/// taken (`taken`, counted by the write, standing still; as long as an upstream silent that long
/// is given) still end the stream, which frees its slot and its upstream (its usage record is
/// written; the response, cut midway, gets nothing more). A client that reads, however slowly,
/// is waited for. Heartbeats are not due while bytes wait to go.
async fn wait_for_client<W, G>(
    mut written: Pin<&mut W>,
    (taken, socket): (&TakenBytes, Option<std::os::fd::RawFd>),
    mut grace_over: Pin<&mut G>,
    timer: &mut RelayTimer,
    clock: &mut RelayClock,
) -> Result<W::Output, StreamOutcome>
where
    W: std::future::Future,
    G: std::future::Future<Output = ()>,
{
    let mut seen = taken.get();
    let acked = || socket.and_then(super::tcp::bytes_acked);
    let mut acked_seen = acked();
    // When the client last took something, noted as the write wakes (it wakes as the client
    // takes bytes): the idle deadline moves there when it comes.
    let mut took_at: Option<Instant> = None;
    loop {
        let outcome = tokio::select! {
            biased;
            written = std::future::poll_fn(|cx| {
                let polled = written.as_mut().poll(cx);
                if polled.is_pending() && taken.get() != seen {
                    seen = taken.get();
                    took_at = Some(Instant::now());
                }
                polled
            }) => {
                // It took the rest just now: the idle timeout counts from here.
                clock.on_client_progress(Instant::now());
                return Ok(written);
            }
            _ = grace_over.as_mut() => StreamOutcome::Shutdown,
            tick = timer.due(clock) => match tick {
                RelayTick::Heartbeat => {
                    clock.on_heartbeat_due(Instant::now());
                    continue;
                }
                RelayTick::IdleTimeout => match took_at.take() {
                    Some(at) => {
                        clock.on_client_progress(at);
                        continue;
                    }
                    // The socket's acknowledgements: a write wakes only once much of a large
                    // send buffer drained, and a client taking it slowly would look idle. When
                    // it took them is unknown: the timeout counts from now.
                    None if acked() > acked_seen => {
                        acked_seen = acked();
                        clock.on_client_progress(Instant::now());
                        continue;
                    }
                    None => StreamOutcome::IdleTimeout,
                },
                RelayTick::MaxDuration => StreamOutcome::MaxDuration,
            },
        };
        return Err(outcome);
    }
}

/// Writes body bytes to the client, noting the first byte's time and the bytes sent when
/// called: callers await the write at once, or poll it first (`biased` in the relay's select).
///
/// Not an `async fn`: one would keep its own copy of `data` beside the write's, in the state
/// that every open stream has room for.
pub fn write<'a, 'd>(
    down: &'a mut Downstream<'d>,
    ctx: &mut RequestCtx,
    data: Bytes,
    taken: &'a TakenBytes,
) -> impl std::future::Future<Output = pingora::Result<()>> + use<'a, 'd> {
    note_sent(ctx, data.len());
    down.write(data, taken)
}

/// Notes `len` bytes of Sluice's own about to be written (a heartbeat, a terminal event): sent,
/// but no first byte, which times the upstream's answer.
pub fn note_own_bytes(ctx: &mut RequestCtx, len: usize) {
    ctx.bytes_sent += len as u64;
}

/// Notes `len` body bytes of the upstream's about to be written: the first byte's time, the
/// bytes sent.
pub fn note_sent(ctx: &mut RequestCtx, len: usize) {
    if len == 0 {
        return;
    }
    if ctx.first_byte.is_none() {
        let now = Instant::now();
        ctx.first_byte = Some(now);
        if let Some(route) = &ctx.route {
            METRICS
                .time_to_first_byte
                .with_label_values(&[&route.name])
                .observe(now.duration_since(ctx.started).as_secs_f64());
        }
    }
    ctx.bytes_sent += len as u64;
    ctx.upstream_bytes_sent += len as u64;
}

/// Most bytes gathered into one client write.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Adds the upstream bytes that are already waiting to `first`, so that an upstream writing
/// faster than the client is served costs one client write per batch rather than one per event.
/// Only bytes that are already here are taken: nothing waits for more.
fn take_ready(
    up: &mut UpstreamConn,
    first: Bytes,
    deferred: &mut Option<pingora::Result<Option<Bytes>>>,
) -> Bytes {
    let mut gathered: Option<BytesMut> = None;
    let mut len = first.len();
    while len < COALESCE_LIMIT && !up.body_done() {
        // Polled once: body reads keep their progress in the connection, so dropping a pending
        // read loses nothing.
        match up.read_body().now_or_never() {
            Some(Ok(Some(next))) => {
                len += next.len();
                gathered
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&next);
            }
            Some(end_or_error) => {
                *deferred = Some(end_or_error);
                break;
            }
            None => break,
        }
    }
    gathered.map(BytesMut::freeze).unwrap_or(first)
}

/// A relay's one timer (event streams and WebSocket sessions). Each chunk moves the idle deadline
/// later; resetting a timer per chunk would cost two timer-wheel operations (and a lock) per
/// event, so the timer is moved only when it would fire too late, and a timer that fires early is
/// set again to the real deadline.
///
/// A tokio timer, unlike the request waits in [`super::timer`]: it is polled on every relayed
/// chunk, and polling a tokio `Sleep` takes no lock (polling one of Pingora's shared timers does).
pub(super) struct RelayTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When the timer is set to fire; `None` when it is not set.
    armed: Option<Instant>,
}

impl RelayTimer {
    pub(super) fn new() -> Self {
        RelayTimer {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// The tick `clock` has due, once it is due. Cancel-safe: a relay polls it in a `select!`
    /// on every chunk and drops it when something else happens first.
    pub(super) async fn due(&mut self, clock: &RelayClock) -> RelayTick {
        loop {
            self.arm(clock.next_deadline());
            if let Some(tick) = self.fired(clock).await {
                return tick;
            }
        }
    }

    /// Makes the timer fire no later than `deadline`.
    fn arm(&mut self, deadline: Option<(Instant, RelayTick)>) {
        if let Some((at, _)) = deadline {
            if self.armed.is_none_or(|armed| armed > at) {
                self.sleep.as_mut().reset(at.into());
                self.armed = Some(at);
            }
        }
    }

    /// Waits for the timer; then the tick that is due by the clock, or `None` when none is
    /// due yet (the deadline moved on since the timer was set).
    async fn fired(&mut self, clock: &RelayClock) -> Option<RelayTick> {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
        clock
            .next_deadline()
            .filter(|(at, _)| *at <= Instant::now())
            .map(|(_, tick)| tick)
    }
}
