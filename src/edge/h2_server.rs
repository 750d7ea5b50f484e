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

use super::proxy::SluiceProxy;
use futures_util::stream::{FuturesUnordered, StreamExt};
use once_cell::sync::Lazy;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::Arc;

/// Streams a client may have refused at acceptance (a forbidden byte in the target, conflicting
/// `Content-Length`, a bad `:authority`) before its connection is closed: Pingora's own budget
/// (`MAX_MALFORMED_STREAMS_PER_CONN`), which its public accept counts per call only.
const MALFORMED_STREAMS_PER_CONNECTION: usize = 32;

/// What Pingora's HTTP/2 sessions are given as their connection's digest. Nothing in Sluice
/// reads it (the client's address goes to each request by itself), so every connection shares
/// one empty digest rather than allocate its own.
static NO_DIGEST: Lazy<Arc<Digest>> = Lazy::new(|| Arc::new(Digest::default()));

/// Serves one HTTP/2 connection until it closes, and every stream it opened until that stream
/// has ended (and recorded its usage). At shutdown the client is sent a GOAWAY; streams already
/// open are served to their end.
pub(super) async fn serve(
    app: Arc<SluiceProxy>,
    stream: Stream,
    peer: SocketAddr,
    mut shutdown: ShutdownWatch,
) {
    let mut conn = match server::handshake(stream, None).await {
        Ok(conn) => conn,
        // As Pingora's HTTP/2 server logs it.
        Err(e) => return log::error!("H2 handshake error {e}"),
    };
    // Each request watches shutdown for itself; this one sends the GOAWAY.
    let session_shutdown = shutdown.clone();
    let mut streams = FuturesUnordered::new();
    let mut malformed = 0;
    let mut goaway_sent = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed(), if !goaway_sent => {
                // Accepting goes on: streams the client opened before it saw the GOAWAY are
                // still served, and the connection ends once they have.
                conn.graceful_shutdown();
                goaway_sent = true;
            }
            // Streams before the connection: what they wrote is then sent in the same turn.
            Some(()) = streams.next(), if !streams.is_empty() => {}
            // Accepting is what drives the connection (reads frames, sends what streams wrote).
            accepted = HttpSession::from_h2_conn(&mut conn, NO_DIGEST.clone()) => match accepted {
                Ok(Some(H2Accept::Session(session))) => {
                    let request =
                        app.serve_request(ServerSession::new_http2(session), Some(peer), &session_shutdown);
                    // An HTTP/2 stream never hands a connection back.
                    streams.push(async move {
                        request.await;
                    });
                }
                // Already answered or reset by Pingora; the connection goes on, within a budget.
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed > MALFORMED_STREAMS_PER_CONNECTION {
                        log::debug!("{peer}: too many malformed HTTP/2 streams, closing");
                        break;
                    }
                }
                // The client closed the connection (cleanly or not), or broke the protocol.
                Ok(None) => break,
                Err(e) => {
                    log::debug!("{peer}: HTTP/2 connection ended: {e}");
                    break;
                }
            },
        }
    }
    // Dropping the connection fails what its streams still wait for (a write, a reset), so each
    // ends through its own path: its slot released, its usage recorded.
    drop(conn);
    while streams.next().await.is_some() {}
}
