//! HTTP/2 client connections: the h2 crate's server, through Pingora's HTTP/2 session type,
//! with every stream of a connection served inside the connection's own task.
//!
//! Pingora's HTTP/2 server (`ServerApp::process_new`) spawns a task per stream. On a
//! work-stealing runtime the idle worker is woken to take it, and then each frame the stream
//! writes wakes the connection's task on the other thread to send it: a fresh stream cost
//! ~85 µs more to its first byte on 2 threads than on 1 (load harness, h2c). Here the stream
//! futures are polled by the task that drives the connection, so a stream's write and the
//! connection's send happen in one turn of one task. One connection's streams share a thread,
//! as one connection's requests do in nginx or over HTTP/1.1.

use super::drain;
use super::h2_io;
use super::proxy::SluiceProxy;
use super::timer;
use bytes::BytesMut;
use futures_util::future::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::{waker_ref, ArcWake, AtomicWaker};
use once_cell::sync::Lazy;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Streams a client may have refused at acceptance (a forbidden byte in the target, conflicting
/// `Content-Length`, a bad `:authority`) before its connection is closed: Pingora's own budget
/// (`MAX_MALFORMED_STREAMS_PER_CONN`), which its public accept counts per call only.
const MALFORMED_STREAMS_PER_CONNECTION: usize = 32;

/// What Pingora's HTTP/2 sessions are given as their connection's digest. Nothing in Sluice
/// reads it (the client's address goes to each request by itself), so every connection shares
/// one empty digest rather than allocate its own.
static NO_DIGEST: Lazy<Arc<Digest>> = Lazy::new(|| Arc::new(Digest::default()));

/// What the `h2` crate may buffer of a client's small DATA frames (under 256 bytes each, charged
/// by their framing overhead) before it closes the connection with `ENHANCE_YOUR_CALM`. Its
/// default, half the connection window (32 KiB), closed connections whose client wrote a body in
/// pieces of ~100 bytes faster than they were read (a body made as it is sent): a whole window
/// of 100-byte frames is ~102 KiB of overhead. The bound per connection stays, four times the
/// default.
const DATA_FRAME_BUDGET: usize = 128 * 1024;

/// The largest request header list the `h2` crate takes, as HTTP/2 counts one (each field's name
/// and value, and 32 bytes): the largest `server.max_request_header` (1 MiB), with HTTP/2's 32
/// bytes for each of the 256 fields an HTTP/1.1 head may have, and room for the pseudo-header
/// fields. The configured limit itself is Sluice's to apply, as over HTTP/1.1 (which reads any
/// head up to 1 MiB): a head over it gets Sluice's own `431` in the route's format
/// (`relay::request::check_head`), its connection going on. Under Pingora's 64 KiB, any larger
/// head got the crate's `431` with no body whatever `server.max_request_header` said, and one in
/// more than five frames (~80 KiB) a GOAWAY `ENHANCE_YOUR_CALM` that ended every stream of its
/// connection. Past this, the crate still refuses the stream (`431`), and closes the connection
/// for a header block over ~1.3 MiB (its guard against CONTINUATION floods).
const MAX_HEADER_LIST: u32 = 1024 * 1024 + 256 * 32 + 4096;

/// What the `h2` crate holds of one stream's response while the client's flow-control window
/// lets it go but the connection's socket does not take it (a client that opened huge windows
/// and stopped reading). Its default, 400 KiB, let one connection pin ~40 MB (100 streams) for
/// ~100 bytes of requests each, and a write only waits (so the stream's timers count the
/// client's silence) once it is full. One relay write at most (the relay gathers up to 64 KiB).
const MAX_SEND_BUFFER: usize = 64 * 1024;

/// Pingora's HTTP/2 settings (its concurrent-stream limit) with Sluice's header-list limit,
/// budget for small DATA frames and send buffer.
fn h2_options() -> server::H2Options {
    let mut options = server::default_h2_options();
    options.max_header_list_size(MAX_HEADER_LIST);
    options.data_frame_budget(DATA_FRAME_BUDGET);
    options.max_send_buffer_size(MAX_SEND_BUFFER);
    options
}

/// Serves one HTTP/2 connection until it closes, and every stream it opened until that stream
/// has ended (and recorded its usage). At shutdown the client is sent a GOAWAY; streams already
/// open are served to their end. A connection with no stream open for the keep-alive
/// (`server.keepalive_timeout`) is sent a GOAWAY too, as an idle HTTP/1.1 one is closed, and
/// dropped if it is still there as long again. `read_already`: the connection's first bytes, when
/// they have been read to tell HTTP/2 from HTTP/1.1 (h2c).
pub(super) async fn serve(
    app: Arc<SluiceProxy>,
    stream: Stream,
    read_already: BytesMut,
    peer: SocketAddr,
    mut shutdown: ShutdownWatch,
) {
    let socket = stream.id();
    // The server's first frames wait for the first request to go upstream (`h2_io`).
    let (stream, first_flight) = h2_io::wrap(stream, read_already);
    // The handshake boxed, inside a block: held by value, its 3 KB (and the result's) would stay
    // in this future's state beside the connection's for the connection's whole life (the
    // future was 7,680 bytes so, 1,648 boxed).
    let mut conn = {
        let handshake = Box::pin(timer::timeout(
            app.timeouts.handshake,
            server::handshake(stream, Some(h2_options())),
        ));
        match handshake.await {
            Ok(Ok(conn)) => conn,
            // At Pingora's level, with the peer as Sluice's TLS handshakes log it.
            Ok(Err(e)) => return log::error!("H2 handshake error from {peer}: {e}"),
            Err(_) => return log::error!("H2 handshake timeout from {peer}"),
        }
    };
    first_flight.handshake_done();
    // Each request watches shutdown for itself.
    let request_shutdown = shutdown.clone();
    let goaway = drain::shutdown_begun(&mut shutdown);
    tokio::pin!(goaway);
    let mut goaway_sent = false;
    let mut streams = FuturesUnordered::new();
    let mut malformed = 0;
    let mut accepted_one = false;
    let connection = Box::pin(async {
        // The keep-alive, counted from when the connection last had no stream open: its start,
        // the end of its last stream (or a refused one), the GOAWAY. Armed anew at those moments
        // only, never for a turn of the loop: frames that open no stream (a PING, a
        // WINDOW_UPDATE, SETTINGS) wake this task, and the first flight's branch below ends the
        // `select!` at each wake until the first request, so a timer made in the `select!` began
        // again at every frame, and a client that pinged within the keep-alive and never sent a
        // request held its connection for ever. (Registered at its first poll: made when a
        // stream ends, it counts from there.)
        let idle = timer::sleep(app.timeouts.keepalive);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                () = &mut goaway, if !goaway_sent => {
                    // Accepting goes on: streams the client opened before it saw the GOAWAY are
                    // still served, and the connection ends once they have.
                    conn.graceful_shutdown();
                    goaway_sent = true;
                    idle.set(timer::sleep(app.timeouts.keepalive));
                }
                // Streams before the connection: what they wrote is then sent in the same turn.
                Some(()) = streams.next() => {
                    if streams.is_empty() {
                        idle.set(timer::sleep(app.timeouts.keepalive));
                    }
                }
                // Accepting is what drives the connection (reads frames, sends what streams
                // wrote).
                accepted = HttpSession::from_h2_conn(&mut conn, NO_DIGEST.clone()) => {
                    match accepted {
                        Ok(Some(H2Accept::Session(session))) => {
                            let session = ServerSession::new_http2(session);
                            let request = app.serve_request(
                                session,
                                (Some(peer), Some(socket)),
                                &request_shutdown,
                            );
                            streams.push(isolated(request, peer));
                            accepted_one = true;
                        }
                        // Already answered or reset by Pingora; the connection goes on, within a
                        // budget (Pingora's count and level).
                        Ok(Some(H2Accept::Rejected)) => {
                            malformed += 1;
                            if malformed >= MALFORMED_STREAMS_PER_CONNECTION {
                                log::warn!("{peer}: too many malformed HTTP/2 streams, closing");
                                return;
                            }
                            if streams.is_empty() {
                                idle.set(timer::sleep(app.timeouts.keepalive));
                            }
                        }
                        // The client closed the connection (cleanly or not), or broke the
                        // protocol.
                        Ok(None) => return,
                        Err(e) => return log::debug!("{peer}: HTTP/2 connection ended: {e}"),
                    }
                }
                // Only while no stream is open (see `idle` above).
                () = &mut idle, if streams.is_empty() => {
                    // In order first, as at shutdown; a client that never answers is dropped.
                    if goaway_sent {
                        return;
                    }
                    conn.graceful_shutdown();
                    goaway_sent = true;
                    idle.set(timer::sleep(app.timeouts.keepalive));
                }
                // Last, so reached only when everything above has to wait (the first request, if
                // accepted, has gone as far as it can, its upstream write included): the next
                // turn's accept sends what the connection held. Asked at each poll, not with a
                // branch condition: that is read once per `select!`, and the hold begins again
                // at each poll of the task (`held_while_busy`).
                () = std::future::poll_fn(|_| {
                    if first_flight.is_held() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                }) => {
                    if accepted_one {
                        first_flight.first_request_started();
                    } else {
                        first_flight.release();
                    }
                }
            }
        }
    });
    let served = SelfWakesPollAgain::new(first_flight.held_while_busy(connection));
    // A panic in the connection's own code (accepting, h2) still lets its streams end below,
    // each recording its usage, as they would have in tasks of their own.
    if let Err(panic) = AssertUnwindSafe(served).catch_unwind().await {
        log::error!(
            "{peer}: an HTTP/2 connection panicked: {}",
            panic_message(&*panic)
        );
    }
    // Dropping the connection fails what its streams still wait for (a write, a reset), so each
    // ends through its own path: its slot released, its usage recorded.
    drop(conn);
    while streams.next().await.is_some() {}
}

/// Lets the connection send a stream's response head before the stream goes on.
///
/// An HTTP/2 stream's writes only queue frames: the connection sends them when its task next
/// drives it, which is once the stream futures have all yielded. A stream whose upstream sent a
/// burst (a head and its events in one read, as a fast provider or a cached answer does) would
/// otherwise run to its end, inspector, usage record and all, before its first frame left. Its
/// own wake is seen by `SelfWakesPollAgain`, so this costs a turn of the connection's loop, not a
/// trip through tokio. Once per stream, for its head only: `FuturesUnordered` gives up its poll
/// after two of its futures woke themselves, and `SelfWakesPollAgain` after a few polls, so a
/// yield after every write would split one flush of many busy streams into many, and send the
/// connection's task through tokio again. Not where a write races the end of the grace period
/// (`stream_body`): a yield there could lose that race after the frame was queued.
pub(super) async fn send_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// One stream's request, its panic caught as a task per stream would have it: the other streams
/// of the connection go on.
async fn isolated<F: Future>(request: F, peer: SocketAddr) {
    if let Err(panic) = AssertUnwindSafe(request).catch_unwind().await {
        log::error!(
            "{peer}: an HTTP/2 stream's request panicked: {}",
            panic_message(&*panic)
        );
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("")
}

/// Polls `F` again, within the same poll, when it woke itself while being polled, rather than
/// leave the wake to tokio.
///
/// Two wakes of the connection's task come from inside its own poll on every event a stream
/// sends: the stream's write wakes the task that drives the connection (this one), and
/// `FuturesUnordered` wakes its task whenever it has polled each of its futures once (its
/// fairness yield). Tokio takes a task woken during its own poll for one that yields: it queues
/// it behind every other and wakes an idle worker to take it (a futex wake of the other thread
/// per event, seen with strace). Polled again at once instead, the connection finds nothing more
/// to do. Bounded, so a future that keeps waking itself still yields to tokio; tokio's
/// cooperative budget defers its own wakes past the poll and is not seen here.
struct SelfWakesPollAgain<F> {
    future: F,
    wake: Arc<Wake>,
}

/// Polls again at most this many times in one poll.
const POLLS_AGAIN: usize = 4;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN_WHILE_POLLING: u8 = 2;

struct Wake {
    state: AtomicU8,
    task: AtomicWaker,
}

impl ArcWake for Wake {
    fn wake_by_ref(wake: &Arc<Self>) {
        // While the future is being polled, a wake (from this thread or another) is left for the
        // poll to see, with a write even when already woken (as tokio's own wakes do) so that
        // its cause happens before the poll that sees it; otherwise it goes to the task.
        let polling = wake
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state != IDLE).then_some(WOKEN_WHILE_POLLING)
            });
        if polling == Err(IDLE) {
            wake.task.wake();
        }
    }
}

impl<F: Future + Unpin> SelfWakesPollAgain<F> {
    fn new(future: F) -> Self {
        SelfWakesPollAgain {
            future,
            wake: Arc::new(Wake {
                state: AtomicU8::new(IDLE),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<F: Future + Unpin> Future for SelfWakesPollAgain<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Polling from here: a wake from now on is seen below, not sent to tokio. (Swaps rather
        // than stores, here and below: reading a wake's write is what makes its cause visible to
        // the poll that follows.)
        this.wake.state.swap(POLLING, Ordering::AcqRel);
        this.wake.task.register(cx.waker());
        let waker = waker_ref(&this.wake);
        let mut inner = Context::from_waker(&waker);
        for _ in 0..=POLLS_AGAIN {
            if let Poll::Ready(done) = Pin::new(&mut this.future).poll(&mut inner) {
                this.wake.state.store(IDLE, Ordering::Release);
                return Poll::Ready(done);
            }
            // Not woken meanwhile: idle until the next wake, which goes to tokio.
            if this
                .wake
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
            this.wake.state.swap(POLLING, Ordering::AcqRel);
        }
        // Still waking itself: tokio's turn.
        this.wake.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
