//! TCP connections as Pingora's sessions take them, without Pingora's `l4::Stream`.
//!
//! Pingora's stream wraps a socket in a buffered stream that keeps per-connection timing (an
//! `Instant` read on every read and write that waits) and boxes to ~420 bytes, and its connector
//! and listeners add a ~390-byte `SocketDigest`; on drop it makes a system call to check the
//! socket. Sluice reads none of that, so its connections (clients of its own listeners, under
//! TLS or not, and `http://` upstreams over HTTP/1.1) are this: a tokio socket and nothing
//! else. TLS to upstreams stays on Pingora's stream, which its connector builds on.

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, UniqueID,
    UniqueIDType,
};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Tcp {
    socket: TcpStream,
}

impl Tcp {
    pub fn new(socket: TcpStream) -> Tcp {
        Tcp { socket }
    }

    /// A connection for Pingora's sessions (`pingora::protocols::Stream`).
    pub fn stream(socket: TcpStream) -> pingora::protocols::Stream {
        Box::new(Tcp::new(socket))
    }
}

/// An upstream connection to `addr`, with TCP_NODELAY (each event goes out as it is written),
/// given up after `timeout`.
pub async fn connect(
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> pingora::Result<pingora::protocols::Stream> {
    let socket = connect_socket(addr, timeout).await?;
    socket.set_nodelay(true).map_err(|e| {
        pingora::Error::because(pingora::ErrorType::ConnectError, "setting TCP_NODELAY", e)
    })?;
    Ok(Tcp::stream(socket))
}

/// The TCP connect to an upstream, bounded by its `connect_timeout` (also the first step of a
/// TLS upstream's connection, which Pingora's stream then carries).
pub async fn connect_socket(
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> pingora::Result<TcpStream> {
    use pingora::{Error, ErrorType};
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(e)) => {
            Error::e_because(ErrorType::ConnectError, format!("TCP connect to {addr}"), e)
        }
        Err(_) => Error::e_explain(
            ErrorType::ConnectTimedout,
            format!("TCP connect to {addr}: no answer within {timeout:?}"),
        ),
    }
}

/// Writes `data` whole and flushes it (a TLS stream sends its records on flush); `what` names
/// the write in the error.
///
/// A future of its own rather than `write_all` then `flush` in an `async fn`: every open stream's
/// state has room for its body write, and those nested futures take 120 bytes, this one 40.
/// Not cancel-safe, as `write_all` is not: dropped midway, part of `data` may be on the wire
/// already (every caller that can drop it closes the connection next).
pub fn write_flushed<'a, W: AsyncWrite + Unpin + ?Sized>(
    stream: &'a mut W,
    data: &'a [u8],
    what: &'static str,
) -> WriteFlushed<'a, W> {
    WriteFlushed { stream, data, what }
}

/// See [`write_flushed`].
#[must_use = "futures do nothing unless polled"]
pub struct WriteFlushed<'a, W: ?Sized> {
    stream: &'a mut W,
    /// What is still to be written.
    data: &'a [u8],
    what: &'static str,
}

/// Bytes of the connection on socket `fd` that its peer acknowledged (Linux `TCP_INFO`), `None`
/// where it cannot be read. What a client took, however slowly: the kernel wakes a waiting write
/// only once much of a large send buffer has drained, so counting what writes accept would not
/// see a slow reader for as long as that takes.
pub fn bytes_acked(fd: std::os::fd::RawFd) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
        tcp_info(fd, needed).map(|info| info.tcpi_bytes_acked)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

/// The kernel's `TCP_INFO` for socket `fd`, when it filled at least the first `needed` bytes
/// (older kernels fill less of the struct than the libc crate declares).
#[cfg(target_os = "linux")]
pub fn tcp_info(fd: std::os::fd::RawFd, needed: usize) -> Option<libc::tcp_info> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` has room for `len` bytes, and the kernel writes at most that many.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // SAFETY: zeroed, then (partly) filled in by the kernel: every bit pattern is valid.
    let info = unsafe { info.assume_init() };
    (got == 0 && len as usize >= needed).then_some(info)
}

/// Most bytes one [`read_into`] takes.
pub const READ_SIZE: usize = 64 * 1024;

/// Reads what `from` has (waiting for something) and appends it to `into`; an empty `into` is
/// made exactly the size read, so a piece passed on keeps no spare room. 0 at the end of the
/// stream. The read's room is on the stack for the length of one poll: a read that waits, as
/// every idle connection's does, holds no buffer.
pub async fn read_into<R: AsyncRead + Unpin + ?Sized>(
    from: &mut R,
    into: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut room = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut read = ReadBuf::uninit(&mut room);
        match Pin::new(&mut *from).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let filled = read.filled();
                if into.is_empty() {
                    *into = BytesMut::from(filled);
                } else {
                    into.extend_from_slice(filled);
                }
                Poll::Ready(Ok(filled.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

impl<W: AsyncWrite + Unpin + ?Sized> Future for WriteFlushed<'_, W> {
    type Output = pingora::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let written = loop {
            if this.data.is_empty() {
                break Pin::new(&mut *this.stream).poll_flush(cx);
            }
            match Pin::new(&mut *this.stream).poll_write(cx, this.data) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => this.data = &this.data[n..],
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        };
        written.map(|r| {
            r.map_err(|e| pingora::Error::because(pingora::ErrorType::WriteError, this.what, e))
        })
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Tcp {
    async fn shutdown(&mut self) {
        // A peer that is already gone makes this fail; the socket is closed on drop either way.
        let _ = AsyncWriteExt::shutdown(&mut self.socket).await;
    }
}

impl UniqueID for Tcp {
    fn id(&self) -> UniqueIDType {
        self.socket.as_raw_fd() as UniqueIDType
    }
}

impl Ssl for Tcp {}

impl GetTimingDigest for Tcp {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Tcp {
    fn get_proxy_digest(
        &self,
    ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

/// None: Sluice reads no socket digest (a client's address comes from its accept loop).
impl GetSocketDigest for Tcp {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

#[async_trait]
impl Peek for Tcp {}

/// Sluice's end (as its plain connections are) and the other end of one loopback TCP
/// connection, for tests of what goes over it.
#[cfg(test)]
pub(crate) async fn socket_pair() -> (pingora::protocols::Stream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap());
    let (ours, accepted) = tokio::join!(ours, listener.accept());
    (Tcp::stream(ours.unwrap()), accepted.unwrap().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upstream_connection_sends_each_write_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect(addr, Duration::from_secs(5)).await.unwrap();
        let tcp = stream
            .as_any()
            .downcast_ref::<Tcp>()
            .expect("Sluice's own type");
        assert!(tcp.socket.nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_flushed_write_carries_every_byte_through_a_full_send_buffer() {
        use tokio::io::AsyncReadExt;
        let (mut ours, mut theirs) = socket_pair().await;
        // Far more than the socket buffers hold: the write is cut into parts and waits for
        // the reader between them.
        let data: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            got
        });
        write_flushed(&mut ours, &data, "writing a test body")
            .await
            .unwrap();
        write_flushed(&mut ours, b"", "writing nothing")
            .await
            .unwrap();
        drop(ours);
        assert!(reader.await.unwrap() == data, "the bytes arrived changed");
    }

    #[tokio::test]
    async fn a_flushed_write_to_a_gone_peer_names_what_it_was_writing() {
        let (mut ours, theirs) = socket_pair().await;
        // A closed socket answers the segments that reach it with a reset: a write that goes on
        // fails.
        drop(theirs);
        let data = vec![b'x'; 16 << 20];
        let error = write_flushed(&mut ours, &data, "writing a test body")
            .await
            .unwrap_err();
        assert_eq!(error.etype(), &pingora::ErrorType::WriteError);
        assert!(error.to_string().contains("writing a test body"), "{error}");
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let error = connect(addr, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(error.etype(), &pingora::ErrorType::ConnectError);
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
