//! A client connection as Sluice's HTTP/2 server (`h2_server.rs`) reads and writes it.
//!
//! Two things nginx does for a fresh HTTP/2 connection, and the `h2` crate on a bare socket does
//! not:
//! - Bytes already read from the connection (an h2c listener reads the first ones to tell the
//!   HTTP/2 preface from an HTTP/1.1 request) are read first, not asked of the socket again: the
//!   preface and the request frames that came with it cost no system call of their own.
//! - The server's first frames are held until the connection's first request has gone to its
//!   upstream, then sent in one write. The `h2` crate writes its SETTINGS before it reads the
//!   client's preface and acknowledges the client's SETTINGS as soon as it reads them: two
//!   writes, each waking the client, before the upstream's, which the first byte waits for. The
//!   client needs neither to send its request (RFC 9113 §3.4).
//!
//! Held bytes never wait for anything else: the connection's task releases them (`FirstFlight`)
//! as soon as it would otherwise wait itself, so a client that sends its preface alone (as the
//! `h2` crate's client does) gets the server's SETTINGS as it would without the hold, and only
//! the acknowledgement waits for the request that follows; during the handshake, a read that
//! has to wait sends them; more than [`HOLD_LIMIT`] bytes are not held; and a shut-down
//! connection sends them first.

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held: far more than a server's first frames (SETTINGS, its acknowledgement, a
/// window update, a few PING answers), so a client that makes the server write more than that
/// before its first request has them at once.
const HOLD_LIMIT: usize = 16 * 1024;

/// Held; a read that has to wait sends what is held.
const HANDSHAKE: u8 = 0;
const HELD: u8 = 1;
/// Not held now; held again from the connection task's next poll.
const SENT: u8 = 2;
/// Never held again.
const DONE: u8 = 3;

/// `stream` for the HTTP/2 server, with `read_already` to be read first, and the handle that
/// holds and releases what the server writes first.
pub fn wrap(stream: Stream, read_already: BytesMut) -> (Stream, FirstFlight) {
    let phase = Arc::new(AtomicU8::new(HANDSHAKE));
    let io = H2Io {
        inner: stream,
        replay: read_already,
        held: Vec::new(),
        phase: phase.clone(),
    };
    (Box::new(io), FirstFlight(phase))
}

/// The connection's task's hold on the server's first frames: from its handshake until its first
/// request has gone as far as it can, what the server writes is held while the task works and
/// sent when it would wait.
pub struct FirstFlight(Arc<AtomicU8>);

impl FirstFlight {
    /// The HTTP/2 handshake is done: a read that waits no longer sends what is held.
    pub fn handshake_done(&self) {
        self.change(HANDSHAKE, HELD);
    }

    /// `future` (the connection's work), with what it writes held during each of its polls until
    /// [`FirstFlight::first_request_started`].
    pub fn held_while_busy<F: Future + Unpin>(&self, future: F) -> HeldWhileBusy<'_, F> {
        HeldWhileBusy {
            flight: self,
            future,
        }
    }

    pub fn is_held(&self) -> bool {
        matches!(self.0.load(Ordering::Acquire), HANDSHAKE | HELD)
    }

    /// What was held goes out with the connection's next write or flush; held again from the
    /// task's next poll.
    pub fn release(&self) {
        self.change(HELD, SENT);
    }

    /// The first request has gone as far as it can: what was held goes out with the
    /// connection's next write or flush, and nothing is held any more.
    pub fn first_request_started(&self) {
        self.0.store(DONE, Ordering::Release);
    }

    fn change(&self, from: u8, to: u8) {
        let _ = self
            .0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// See [`FirstFlight::held_while_busy`].
pub struct HeldWhileBusy<'a, F> {
    flight: &'a FirstFlight,
    future: F,
}

impl<F: Future + Unpin> Future for HeldWhileBusy<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flight.change(SENT, HELD);
        Pin::new(&mut self.future).poll(cx)
    }
}

#[derive(Debug)]
struct H2Io {
    inner: Stream,
    /// Read before the HTTP/2 server had the connection, and not by it yet.
    replay: BytesMut,
    /// Written while held, in order; empty (no allocation) once sent.
    held: Vec<u8>,
    phase: Arc<AtomicU8>,
}

impl H2Io {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// Whether `len` more bytes are held rather than written.
    fn holds(&mut self, len: usize) -> bool {
        if !matches!(self.phase(), HANDSHAKE | HELD) {
            return false;
        }
        if self.held.len() + len > HOLD_LIMIT {
            self.phase.store(DONE, Ordering::Release);
            return false;
        }
        true
    }

    /// Writes what is held, then flushes (a TLS stream sends its records on flush).
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while !self.held.is_empty() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => drop(self.held.drain(..n)),
            }
        }
        self.held = Vec::new();
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if this.replay.is_empty() {
                this.replay = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_pending() && this.phase() == HANDSHAKE {
            // The client may be waiting for the server's SETTINGS.
            if let Poll::Ready(Err(e)) = this.poll_send_held(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.holds(buf.len()) {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.holds(len) {
            for b in bufs {
                this.held.extend_from_slice(b);
            }
            return Poll::Ready(Ok(len));
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.holds(0) {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for H2Io {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_send_held(cx)).await;
        self.inner.shutdown().await;
    }
}

impl UniqueID for H2Io {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for H2Io {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for H2Io {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for H2Io {
    fn get_proxy_digest(
        &self,
    ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for H2Io {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// Not supported: a peek would have to see the replayed bytes too, and nothing peeks at an
/// HTTP/2 connection.
#[async_trait]
impl Peek for H2Io {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::tcp::socket_pair;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the peer has been sent within 100 ms.
    async fn sent(peer: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), peer.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn bytes_read_already_are_read_first_then_the_connection() {
        let (ours, mut peer) = socket_pair().await;
        let (mut io, _flight) = wrap(ours, BytesMut::from(&b"PRI * HTTP/2.0"[..]));
        peer.write_all(b" and the rest").await.unwrap();
        let mut first = [0u8; 4];
        io.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"PRI ");
        let mut rest = vec![0u8; 23];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"* HTTP/2.0 and the rest");
    }

    #[tokio::test]
    async fn held_writes_go_out_in_order_ahead_of_later_ones_once_released() {
        let (ours, mut peer) = socket_pair().await;
        let (mut io, flight) = wrap(ours, BytesMut::new());
        flight.handshake_done();
        io.write_all(b"settings,").await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"ack,").await.unwrap();
        io.flush().await.unwrap();
        assert!(flight.is_held());
        assert_eq!(sent(&mut peer).await, b"", "sent while held");
        flight.release();
        assert!(!flight.is_held());
        io.write_all(b"headers").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(sent(&mut peer).await, b"settings,ack,headers");
    }

    #[tokio::test]
    async fn a_flush_after_the_release_sends_what_was_held() {
        let (ours, mut peer) = socket_pair().await;
        let (mut io, flight) = wrap(ours, BytesMut::new());
        flight.handshake_done();
        io.write_all(b"settings").await.unwrap();
        flight.release();
        io.flush().await.unwrap();
        assert_eq!(sent(&mut peer).await, b"settings");
    }

    #[tokio::test]
    async fn during_the_handshake_a_read_that_waits_sends_what_was_held() {
        let (ours, mut peer) = socket_pair().await;
        let (mut io, flight) = wrap(ours, BytesMut::from(&b"PRI"[..]));
        io.write_all(b"settings").await.unwrap();
        io.flush().await.unwrap();
        // Read from what was read already: nothing waits, nothing is sent.
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(sent(&mut peer).await, b"");
        // The client sends nothing more: the read waits, and the server's SETTINGS go out.
        let waiting = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
        assert!(waiting.is_err());
        assert_eq!(sent(&mut peer).await, b"settings");
        assert!(flight.is_held(), "only what was written so far is sent");
    }

    #[tokio::test]
    async fn after_the_handshake_a_read_that_waits_sends_nothing() {
        let (ours, mut peer) = socket_pair().await;
        let (mut io, flight) = wrap(ours, BytesMut::new());
        flight.handshake_done();
        io.write_all(b"ack").await.unwrap();
        let mut buf = [0u8; 3];
        let waiting = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
        assert!(waiting.is_err());
        assert_eq!(sent(&mut peer).await, b"");
        io.shutdown().await.unwrap();
        assert_eq!(
            sent(&mut peer).await,
            b"ack",
            "a shut-down connection sends what it held"
        );
    }

    #[tokio::test]
    async fn held_again_at_each_poll_until_the_first_request_started() {
        let (ours, mut peer) = socket_pair().await;
        let (mut io, flight) = wrap(ours, BytesMut::new());
        flight.handshake_done();
        flight.release();
        assert!(!flight.is_held());
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let mut work = flight.held_while_busy(std::future::poll_fn(|_| {
            polls.fetch_add(1, Ordering::Relaxed);
            Poll::<()>::Pending
        }));
        let mut poll_once = || {
            let waker = futures_util::task::noop_waker();
            let _ = Pin::new(&mut work).poll(&mut Context::from_waker(&waker));
        };
        poll_once();
        assert!(flight.is_held(), "not held again at the next poll");
        io.write_all(b"ack").await.unwrap();
        assert_eq!(sent(&mut peer).await, b"");
        flight.first_request_started();
        io.flush().await.unwrap();
        assert_eq!(sent(&mut peer).await, b"ack");
        poll_once();
        assert!(!flight.is_held(), "held again after the first request");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn no_more_than_the_limit_is_held() {
        let (ours, mut peer) = socket_pair().await;
        let (mut io, flight) = wrap(ours, BytesMut::new());
        flight.handshake_done();
        let pong = [7u8; 17];
        let mut written = Vec::new();
        while written.len() + pong.len() <= HOLD_LIMIT {
            io.write_all(&pong).await.unwrap();
            written.extend_from_slice(&pong);
        }
        assert!(flight.is_held());
        io.write_all(&pong).await.unwrap();
        written.extend_from_slice(&pong);
        assert!(!flight.is_held(), "held past the limit");
        assert_eq!(sent(&mut peer).await, written);
    }
}
