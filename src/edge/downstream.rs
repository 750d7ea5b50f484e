//! Where a response body goes once its head is out: Pingora's session, or, for an HTTP/1.1
//! stream, the client connection itself, or, on HTTP/2, the `h2` crate's send half of the stream.
//!
//! Pingora's sessions keep the response head they wrote until the response ends, with no way to
//! free it: a provider's head (~28 fields) is a `HeaderMap` of ~6.5 KiB on HTTP/1.1 (~3 KiB as
//! HTTP/2's session keeps it), a large share of what an idle stream costs. Sluice writes an
//! HTTP/1.1 stream's head itself, drops it, and writes the chunks and the last chunk on the
//! connection; an HTTP/2 response's head goes out through the session, which is then dropped
//! with everything it kept, the stream's send half taken out of it. Everything else (HTTP/1.x
//! plain bodies, HTTP/1.0, `HEAD`; errors; WebSocket) stays on Pingora's session.

use super::headers::ClientHead;
use super::responses::{Finish, KeptAlive};
use crate::http1;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use pingora::http::RequestHeader;
use pingora::protocols::http::server::ReusableHttpStream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A request's Pingora session, boxed, until an HTTP/1.1 stream takes the connection out of it,
/// or an HTTP/2 response its stream (`Downstream::start`), and frees it: the session is ~680
/// bytes, and its slot in the request's state would otherwise stay there, unused, for the whole
/// stream. One allocation per request.
pub struct RequestSession(Option<Box<ServerSession>>);

impl RequestSession {
    pub fn new(session: ServerSession) -> Self {
        RequestSession(Some(Box::new(session)))
    }

    /// The session. Only `serve_request` reaches it after the response head went out, and it
    /// asks [`RequestSession::handed`] first.
    pub fn get(&mut self) -> &mut ServerSession {
        self.0.as_deref_mut().expect(
            "the session is read only before a response takes its connection or stream out of it",
        )
    }

    /// The client connection of an upgraded session (a WebSocket's, its `101` written), out of
    /// Pingora's session, with what the client sent past its request head that the session had
    /// read already (frames sent before the `101` came). `None` for any other session.
    pub fn take_upgraded(&mut self) -> Option<(Stream, BytesMut)> {
        let session = self.0.as_deref_mut()?;
        if !matches!(session, ServerSession::H1(_)) || !session.was_upgraded() {
            return None;
        }
        let mut early = BytesMut::new();
        // Only what is there now: a read that would wait is dropped, which loses nothing (the
        // session keeps a read's progress).
        while let Some(Ok(Some(bytes))) = session.read_request_body().now_or_never() {
            early.extend_from_slice(&bytes);
        }
        let ServerSession::H1(v1) = *self.0.take()? else {
            unreachable!("checked above");
        };
        Some((v1.into_inner(), early))
    }

    /// An HTTP/1.1 stream took the connection, or an HTTP/2 response its stream: the session is
    /// gone.
    pub fn handed(&self) -> bool {
        self.0.is_none()
    }

    /// Pingora's end of the response on the session, boxed: that future is ~3.7 KiB, and only
    /// an ending request runs it.
    pub fn finish(
        self,
    ) -> Pin<Box<impl Future<Output = pingora::Result<Option<ReusableHttpStream>>>>> {
        let session = self
            .0
            .expect("the session is finished only when no response took it apart");
        Box::pin(session.finish())
    }
}

/// The client side of a response whose head is out.
pub enum Downstream<'a> {
    /// Pingora's session writes the body.
    Session(&'a mut ServerSession),
    /// Sluice writes a chunked HTTP/1.1 body on the connection.
    H1(H1Stream),
    /// Sluice writes an HTTP/2 body on the stream's send half.
    H2(H2Stream),
}

/// An HTTP/1.1 connection out of Pingora's session, carrying a chunked response.
pub struct H1Stream {
    stream: Stream,
    /// Whether the connection carries another request after this response (the head says
    /// `Connection: keep-alive`, else `close`).
    keep_alive: bool,
    /// What the client sent after its request (the next request, pipelined; a stray empty
    /// line), kept for the connection's next request. Not allocated unless bytes come.
    read_ahead: BytesMut,
}

/// An HTTP/2 response out of Pingora's session: the send half of its stream is all its body
/// needs. The stream stays open while this holds it (the `h2` crate resets a stream only once
/// nothing refers to it); dropped before its end, it is reset (`CANCEL`), as a dropped session's
/// would be.
pub struct H2Stream {
    body: h2::SendStream<Bytes>,
    /// The client sent `TE: trailers`: the usage figures may go out as trailers.
    wants_trailers: bool,
}

/// Most bytes of a client's next request read while a stream goes out: beyond it the client is
/// no longer read (so no longer watched for leaving) until the stream has ended.
const READ_AHEAD_LIMIT: usize = 64 * 1024;

impl<'a> Downstream<'a> {
    /// Writes the response head and returns where its body goes. A stream (`stream`) to an
    /// HTTP/1.1 request, and any HTTP/2 response, whose request body has been read leaves
    /// Pingora's session here; any other response keeps it.
    pub async fn start(
        session: &'a mut RequestSession,
        mut head: ClientHead,
        stream: bool,
    ) -> pingora::Result<Downstream<'a>> {
        if !(stream && sluice_writes(session.get(), &head)) {
            let down = session.get();
            if head.is_chunked() && down.req_header().version < http::Version::HTTP_11 {
                // An HTTP/1.0 client takes no chunked body: it gets the body as it is, up to the
                // connection's close (a sized body keeps its length and the keep-alive).
                head.close_delimited();
                down.set_keepalive(None);
            }
            let http2 = down.is_http2();
            let head = head.into_response_header(http2)?;
            down.write_response_header(Box::new(head)).await?;
            if http2 {
                super::h2_server::send_now().await;
                if let Some(h2) = H2Stream::take(session) {
                    return Ok(Downstream::H2(h2));
                }
            }
            let down = session.get();
            release_request_fields(down);
            return Ok(Downstream::Session(down));
        }
        let down = session.get();
        let keep_alive = down.as_http1().is_some_and(|s| s.will_keepalive());
        // Nothing reads the session again for this request but `serve_request`, which asks
        // `RequestSession::handed` first.
        let Some(boxed) = session.0.take() else {
            unreachable!("sluice_writes read the session");
        };
        let ServerSession::H1(v1) = *boxed else {
            unreachable!("sluice_writes checked the session is HTTP/1.x");
        };
        let (stream, read_ahead) = if keep_alive {
            // `reuse` hands over the bytes the client sent past its request (a pipelined
            // request: sessions have pipelining on), which the next request starts from.
            match v1.reuse().await? {
                Some(reusable) => {
                    let (stream, read_ahead) = reusable.into_parts();
                    (stream, read_ahead.unwrap_or_default())
                }
                None => {
                    return pingora::Error::e_explain(
                        pingora::ErrorType::WriteError,
                        "the client connection could not be taken for the response",
                    )
                }
            }
        } else {
            (v1.into_inner(), BytesMut::new())
        };
        let mut h1 = H1Stream {
            stream,
            keep_alive,
            read_ahead,
        };
        h1.write_head(head).await?;
        Ok(Downstream::H1(h1))
    }

    /// Writes body bytes as they are (HTTP/1.1: as one chunk, flushed), counting in `taken`
    /// what the client's connection takes as it goes (not on Pingora's session, whose writes are
    /// whole or nothing).
    pub async fn write(&mut self, data: Bytes, taken: &TakenBytes) -> pingora::Result<()> {
        match self {
            // A zero-length write would end a chunked HTTP/1.1 body.
            _ if data.is_empty() => Ok(()),
            Downstream::H1(h1) => {
                // Encoded here rather than in an `H1Stream` method: each nested future would keep
                // its own copy of the arguments, and every open stream has room for this one.
                let mut out = BytesMut::new();
                http1::encode_chunk(&data, &mut out);
                let mut counted = Counted {
                    stream: &mut h1.stream,
                    taken,
                };
                super::tcp::write_flushed(&mut counted, &out, "writing body").await
            }
            Downstream::H2(h2) => h2.write(data, false, Some(taken)).await,
            Downstream::Session(down) => session_write(down, data).await,
        }
    }

    /// The client connection's socket, where its TCP acknowledgements can be read (HTTP/1.x;
    /// an HTTP/2 stream shares its connection, and counts what its window lets through).
    pub fn socket_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            Downstream::H1(h1) => Some(h1.stream.id()),
            Downstream::Session(ServerSession::H1(session)) => Some(session.stream().id()),
            _ => None,
        }
    }

    /// Returns once the client has closed its side of the connection (or the connection failed).
    /// Bytes it sends meanwhile are the start of its next request (RFC 9112 §9.3.2 lets a client
    /// send it before this response ends), not a sign of leaving: they are kept for that request
    /// (Pingora's session stashes them, and stops reading). Cancel-safe: the relay polls it beside
    /// the upstream read and drops it whenever something else happens first.
    pub async fn client_gone(&mut self) {
        match self {
            // Resolves when the client resets the stream or the connection ends.
            Downstream::H2(h2) => {
                let _ = std::future::poll_fn(|cx| h2.body.poll_reset(cx)).await;
            }
            // HTTP/2's own wait (64 bytes) rather than the session's, which is sized for an
            // HTTP/1.1 session's (256 bytes, boxed below): a stream keeps one in its state.
            Downstream::Session(ServerSession::H2(session)) => {
                let _ = session.read_body_or_idle(true).await;
            }
            // A response Sluice does not write itself (a plain body, HTTP/1.0, `HEAD`, 204 /
            // 304): one allocation per turn of the relay's loop.
            Downstream::Session(session) => {
                if !session.is_body_done() {
                    // Not reached: a response head goes out only once the whole request body
                    // was read. Probed now, body bytes would be kept as the start of the next
                    // request (pipelining is on), and the connection's framing lost.
                    return std::future::pending().await;
                }
                let _ = Box::pin(session.read_body_or_idle(true)).await;
            }
            Downstream::H1(h1) => {
                std::future::poll_fn(|cx| loop {
                    let room = READ_AHEAD_LIMIT.saturating_sub(h1.read_ahead.len());
                    if room == 0 {
                        // Not read any more (never ready: the relay's other waits go on).
                        return Poll::Pending;
                    }
                    // On the stack of this poll only: a wait kept in every open stream's state
                    // holds no buffer.
                    let mut space = [MaybeUninit::<u8>::uninit(); 512];
                    let mut buf = ReadBuf::uninit(&mut space[..room.min(512)]);
                    match Pin::new(&mut h1.stream).poll_read(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                        // Kept in the poll that read them: a dropped wait loses nothing.
                        Poll::Ready(Ok(())) => h1.read_ahead.extend_from_slice(buf.filled()),
                    }
                })
                .await
            }
        }
    }

    /// Whether the usage figures go out as trailers: HTTP/2 clients that sent `TE: trailers`
    /// (Pingora writes no HTTP/1.1 trailers).
    pub fn wants_trailers(&self) -> bool {
        match self {
            Downstream::H2(h2) => h2.wants_trailers,
            Downstream::Session(down) => down.is_http2() && te_trailers(down.req_header()),
            Downstream::H1(_) => false,
        }
    }

    /// Leaves a response that could not be completed unended, so that the client cannot take it
    /// for whole: an HTTP/2 stream is reset here (`INTERNAL_ERROR`, as Pingora's session does
    /// when given up); an HTTP/1.x connection is dropped with the session or stream, without a
    /// last chunk and without TLS's `close_notify`, and without waiting on a client that may have
    /// stopped reading. A close-delimited body (an HTTP/1.0 client) has no way to say it was cut
    /// over plain TCP: its connection closes as a whole one's does.
    pub fn cut(self) -> Finish {
        match self {
            Downstream::H2(mut h2) => h2.body.send_reset(h2::Reason::INTERNAL_ERROR),
            // Synchronous: a reset is only queued.
            Downstream::Session(ServerSession::H2(down)) => down.shutdown(),
            Downstream::H1(_) | Downstream::Session(_) => {}
        }
        Finish::Cut
    }

    /// Writes `tail` and ends the body (with `trailers`, on HTTP/2).
    pub async fn finish(self, tail: Bytes, trailers: Option<http::HeaderMap>) -> Finish {
        let down = match self {
            Downstream::H1(h1) => return h1.finish(&tail).await,
            Downstream::H2(h2) => return h2.finish(tail, trailers).await,
            Downstream::Session(down) => down,
        };
        if !tail.is_empty() && session_write(down, tail).await.is_err() {
            return Finish::Close;
        }
        let ended = match trailers {
            Some(trailers) => down.write_response_trailers(trailers).await,
            None => down.finish_body().await.map(drop),
        };
        if ended.is_ok() {
            Finish::Clean
        } else {
            Finish::Close
        }
    }
}

impl H1Stream {
    /// The status line and fields as Pingora would write them, with its `Date` and `Connection`.
    async fn write_head(&mut self, mut head: ClientHead) -> pingora::Result<()> {
        head.set(
            http::header::DATE,
            pingora::protocols::http::date::get_cached_date(),
        );
        let connection = if self.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        head.set(
            http::header::CONNECTION,
            http::HeaderValue::from_static(connection),
        );
        let out = head.encode();
        // The head is gone before the first event: nothing of it stays with the stream.
        drop(head);
        self.write_all(&out, "writing response header").await
    }

    /// The last chunk (`tail`, when there is one) and the body's end in one write: one segment
    /// and one wake-up for the client rather than two.
    async fn finish(mut self, tail: &[u8]) -> Finish {
        let mut out = BytesMut::with_capacity(tail.len() + 16 + http1::LAST_CHUNK.len());
        if !tail.is_empty() {
            http1::encode_chunk(tail, &mut out);
        }
        out.extend_from_slice(http1::LAST_CHUNK);
        if self
            .write_all(&out, "writing the last chunk")
            .await
            .is_err()
        {
            return Finish::Close;
        }
        if self.keep_alive {
            return Finish::Handed(Some(KeptAlive {
                stream: self.stream,
                read_ahead: self.read_ahead,
            }));
        }
        // An orderly close (FIN after the last chunk), as Pingora's session would.
        let _ = self.stream.shutdown().await;
        Finish::Handed(None)
    }

    async fn write_all(&mut self, bytes: &[u8], what: &'static str) -> pingora::Result<()> {
        super::tcp::write_flushed(&mut self.stream, bytes, what).await
    }
}

impl H2Stream {
    /// Takes an HTTP/2 response whose head is out, and whose request body has been read, out of
    /// its session, and drops the session: the response head it kept, what is left of the
    /// request's, its buffers. `None` (the session stays) for any other.
    fn take(session: &mut RequestSession) -> Option<H2Stream> {
        let ServerSession::H2(down) = session.0.as_deref_mut()? else {
            return None;
        };
        // The request body's receiving half goes with the session: nothing of it may be left.
        if !down.is_body_done() {
            return None;
        }
        let wants_trailers = te_trailers(down.req_header());
        let body = down.take_response_body_writer()?;
        session.0 = None;
        Some(H2Stream {
            body,
            wants_trailers,
        })
    }

    /// Writes `data` in pieces as the client's flow-control window and the connection's send
    /// buffer make room, counting each piece in `taken`. Boxed for the reason `session_write`
    /// gives. Pingora's `write_body`, but for the count: a client reading slowly takes a whole
    /// write only after many pieces, and each piece shows it is still reading.
    fn write<'s>(
        &'s mut self,
        data: Bytes,
        end: bool,
        taken: Option<&'s TakenBytes>,
    ) -> Pin<Box<dyn Future<Output = pingora::Result<()>> + Send + 's>> {
        Box::pin(async move {
            let h2_error = |what: &'static str, e: h2::Error| {
                pingora::Error::because(pingora::ErrorType::WriteError, what, e).into_down()
            };
            let mut remaining = data;
            // No capacity can be waited for with nothing to send.
            if remaining.is_empty() {
                return self
                    .body
                    .send_data(remaining, end)
                    .map_err(|e| h2_error("writing HTTP/2 body", e));
            }
            loop {
                self.body.reserve_capacity(remaining.len());
                let room = match std::future::poll_fn(|cx| self.body.poll_capacity(cx)).await {
                    Some(Ok(room)) => room,
                    Some(Err(e)) => return Err(h2_error("waiting for HTTP/2 window", e)),
                    None => {
                        return Err(pingora::Error::explain(
                            pingora::ErrorType::WriteError,
                            "the HTTP/2 stream was closed while its body was written",
                        )
                        .into_down())
                    }
                };
                if room == 0 {
                    continue;
                }
                let piece = remaining.split_to(room.min(remaining.len()));
                let len = piece.len();
                self.body
                    .send_data(piece, end && remaining.is_empty())
                    .map_err(|e| h2_error("writing HTTP/2 body", e))?;
                if let Some(taken) = taken {
                    taken.add(len);
                }
                if remaining.is_empty() {
                    return Ok(());
                }
            }
        })
    }

    /// `tail` and the end of the stream in one DATA frame, or `tail` and then the trailers.
    async fn finish(mut self, tail: Bytes, trailers: Option<http::HeaderMap>) -> Finish {
        let ended = match trailers {
            None => self.write(tail, true, None).await,
            Some(trailers) => {
                if !tail.is_empty() && self.write(tail, false, None).await.is_err() {
                    return Finish::Close;
                }
                self.body.send_trailers(trailers).map_err(|e| {
                    pingora::Error::because(
                        pingora::ErrorType::WriteError,
                        "writing HTTP/2 trailers",
                        e,
                    )
                })
            }
        };
        match ended {
            Ok(()) => Finish::Handed(None),
            Err(_) => Finish::Close,
        }
    }
}

/// Body bytes a client's connection has taken (HTTP/1.1: bytes on the wire, chunk sizes
/// included; HTTP/2: DATA bytes its window let through). A write a slow client holds is still
/// moving while this grows: the relay gives up on a client only when it took nothing for
/// `idle_timeout`, not when one whole write (up to 64 KiB gathered) took that long. Atomic only
/// to be shared with the write that counts it across an `await`; one task touches it.
#[derive(Default)]
pub struct TakenBytes(AtomicU64);

impl TakenBytes {
    fn add(&self, n: usize) {
        // One writer: a load and a store, no locked instruction on the path of every event.
        let now = self.0.load(Ordering::Relaxed);
        self.0.store(now + n as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A client connection whose writes are counted in `taken`.
struct Counted<'a> {
    stream: &'a mut Stream,
    taken: &'a TakenBytes,
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.taken.add(n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}

/// Whether a request's `TE` says it takes trailers.
fn te_trailers(req: &RequestHeader) -> bool {
    req.headers.get_all(http::header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    })
}

/// Body bytes on Pingora's session. Its writes are boxed: every open stream's state has room for
/// the write's future, ~150 bytes with them boxed, ~400 with their futures inline (320 bytes for
/// an HTTP/1.1 session, 424 for HTTP/2). It costs a plain body, an HTTP/1.0 client and every
/// HTTP/2 client one allocation per write. Each protocol's own write, not
/// `ServerSession::write_response_body`: that future is sized for Pingora's subrequest sessions
/// (688 bytes).
fn session_write(
    down: &mut ServerSession,
    data: Bytes,
) -> Pin<Box<dyn Future<Output = pingora::Result<()>> + Send + '_>> {
    match down {
        ServerSession::H1(session) => {
            Box::pin(async move { session.write_body(&data).await.map(drop) })
        }
        ServerSession::H2(session) => Box::pin(session.write_body(data, false)),
        // Sluice makes no other kind of session.
        other => Box::pin(other.write_response_body(data, false)),
    }
}

/// Frees the request's header fields once a response head went out on Pingora's session (an
/// HTTP/1.x plain body, `HEAD`, an HTTP/1.0 client; an HTTP/2 response whose request body is done
/// left the session whole): a session keeps its request head until the response ends, and
/// an SDK's head (~17 fields: `x-stainless-*`, a long `authorization`) costs a map of ~2.5 KiB
/// in every open stream, two on HTTP/1.1 (Pingora also keeps each name's original case). Nothing
/// reads the fields after the response head but `wants_trailers` (`te`, which stays); the access
/// log has the method and path from `RequestCtx`. Only once the request body is known to be
/// over: Pingora frames a body it has not begun to read from these fields. From here on the
/// session's `get_header`, `is_upgrade_req` and `request_summary` see none of them, and
/// `set_keepalive(Some(_))` would no longer see a client's `Connection: close`: nothing after
/// the response head may rely on them.
fn release_request_fields(down: &mut ServerSession) {
    if !down.is_body_done() {
        return;
    }
    let req = down.req_header_mut();
    let (bare, ()) = http::Request::new(()).into_parts();
    let full = http::request::Parts::from(std::mem::replace(req, RequestHeader::from(bare)));
    req.set_method(full.method);
    req.set_uri(full.uri);
    req.set_version(full.version);
    for te in full.headers.get_all(http::header::TE) {
        // Cannot fail: the value is a `HeaderValue` already.
        let _ = req.append_header(http::header::TE, te.clone());
    }
}

/// Whether Sluice writes this response on the connection itself: a chunked stream to an
/// HTTP/1.1 request whose body has been read, and that has a body (not `HEAD`, 204 or 304, where
/// Pingora's session knows the framing rules).
fn sluice_writes(down: &mut ServerSession, head: &ClientHead) -> bool {
    let ServerSession::H1(session) = down else {
        return false;
    };
    let req = session.req_header();
    req.version == http::Version::HTTP_11
        && req.method != http::Method::HEAD
        && !matches!(head.status.as_u16(), 204 | 304)
        && head.is_chunked()
        && session.is_body_done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An HTTP/1.1 body write a slow client holds counts what the client takes as it goes, not
    /// only once the whole write is out: the relay's idle timeout reads it.
    #[tokio::test]
    async fn an_http1_write_counts_what_the_client_takes_as_it_goes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let mut client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        // A fixed send buffer (no autotuning) that holds a small part of the write.
        fixed_send_buffer(&ours, 4096);
        let mut down = Downstream::H1(H1Stream {
            stream: super::super::tcp::Tcp::stream(ours),
            keep_alive: true,
            read_ahead: BytesMut::new(),
        });
        let taken = TakenBytes::default();
        let data = Bytes::from(vec![b'x'; 256 * 1024]);
        let mut write = std::pin::pin!(down.write(data, &taken));
        assert!(futures_util::poll!(write.as_mut()).is_pending());
        let first = taken.get();
        assert!(first > 0 && first < 128 * 1024, "{first}");
        let mut piece = vec![0u8; 32 * 1024];
        for _ in 0..100 {
            if taken.get() > first {
                break;
            }
            assert!(client.read(&mut piece).await.unwrap() > 0);
            let _ = futures_util::poll!(write.as_mut());
        }
        assert!(taken.get() > first, "the client's reading was not counted");
        assert!(futures_util::poll!(write.as_mut()).is_pending());
    }

    fn fixed_send_buffer(socket: &tokio::net::TcpStream, size: libc::c_int) {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket and an int option of the size passed.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
    }
}
