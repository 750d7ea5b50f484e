//! Client listeners, plain, TLS and h2c, accepted by Sluice itself (and the listening sockets of
//! the admin listener, `admin.rs`).
//!
//! Pingora's listening service spawns each connection as a task whose future also holds the TLS
//! handshake future (8.8 KiB, even on plain TCP), and then boxes `ServerApp::process_new`
//! (3.9 KiB, HTTP/2 handling included): 12.7 KiB per open connection, copied four times into
//! and out of the task on every new connection. Here a connection's task holds only the boxed
//! request future; a TLS handshake is boxed and gone once done. A TLS client that chooses h2 by
//! ALPN, or a cleartext client on an h2c listener that opens with the HTTP/2 preface, is served
//! over HTTP/2 (`h2_server.rs`); HTTP/1.1 on an h2c listener is served here like on any other.
//!
//! Listening sockets go through Pingora's fd table, like its own listeners, so a graceful
//! upgrade (`sluice -u` + SIGQUIT) hands them over with the others.

use super::drain;
use super::h2_server;
use super::proxy::SluiceProxy;
use super::tcp::Tcp;
use super::timer;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::ALPN;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Ssl;
use pingora::server::{ListenFds, ShutdownWatch};
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};

/// Largest first read of a request head (Pingora's initial buffer); the rest of a longer head is
/// read by Pingora.
const FIRST_READ: usize = 4096;
/// Pending connections the kernel queues per listener (Pingora's value).
const BACKLOG: u32 = 65535;

/// How long client connections may wait (what each bounds: `config::ServerSettings`).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionTimeouts {
    /// `server.keepalive_timeout` (whole seconds, as validated).
    pub keepalive: Duration,
    /// `server.handshake_timeout`.
    pub handshake: Duration,
    /// `server.request_body_timeout`.
    pub request_body: Duration,
}

pub struct Listeners {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub app: Arc<SluiceProxy>,
    /// Started with `-u`: the previous process has handed its sockets over and is leaving.
    pub upgrade: bool,
}

/// One listening address, and its TLS settings when it has any.
pub struct Endpoint {
    pub addr: String,
    pub tls: Option<Arc<Acceptor>>,
    /// Cleartext HTTP/2 with prior knowledge is taken too (`listen[].h2c`; never with TLS).
    pub h2c: bool,
}

#[async_trait]
impl pingora::services::Service for Listeners {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        for Endpoint { addr, tls, h2c } in &self.endpoints {
            let kind = match (tls, h2c) {
                (Some(tls), _) => Kind::Tls(tls.clone()),
                (None, true) => Kind::H2c,
                (None, false) => Kind::Plain,
            };
            let (addr, fds, upgrade) = (addr.clone(), fds.clone(), self.upgrade);
            let (app, mut shutdown) = (self.app.clone(), shutdown.clone());
            // Each address on its own: one still waiting to be had (at an upgrade) holds up
            // none of the others.
            loops.push(tokio::spawn(async move {
                let listener = listen_or_leave(&addr, fds.as_ref(), upgrade, &mut shutdown).await;
                if let Some(listener) = listener {
                    accept_loop(listener, kind, app, shutdown).await;
                }
            }));
        }
        for accept in loops {
            let _ = accept.await;
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        None
    }

    /// So that an upgrade closes the inherited sockets of addresses no longer configured.
    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.endpoints.iter().map(|e| e.addr.clone()).collect())
    }
}

/// The listening socket for `addr`; `None` when shutdown began before it could be had. When it
/// cannot be had, the process exits, except at an upgrade: the previous process has handed its
/// sockets over and is leaving, and exiting would leave nothing listening at all. There an
/// address it did not hand over may still be its own under another spelling (`localhost:9090`
/// for `127.0.0.1:9090`) until it stops listening: tried again every second, loudly, while the
/// other addresses serve.
pub(super) async fn listen_or_leave(
    addr: &str,
    fds: Option<&ListenFds>,
    upgrade: bool,
    shutdown: &mut ShutdownWatch,
) -> Option<TcpListener> {
    let mut waiting = false;
    loop {
        match listen(addr, fds) {
            Ok(listener) => {
                if waiting {
                    log::warn!("listening on {addr} now");
                }
                return Some(listener);
            }
            Err(e) if upgrade => {
                if !waiting {
                    log::error!("cannot listen on {addr}: {e}; serving without it, trying again every second");
                    eprintln!("sluice: cannot listen on {addr}: {e}; serving without it, trying again every second");
                    waiting = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = drain::shutdown_begun(shutdown) => return None,
                }
            }
            // A server that cannot listen does not run. A panic here would end only this
            // service's task: the process would go on with its other listeners.
            // (`check_addresses` has refused to start on an address in use; this is one taken
            // since.)
            Err(e) => {
                log::error!("cannot listen on {addr}: {e}");
                eprintln!("sluice: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Refuses to start when an address to listen on is taken: bound and let go again, each waited
/// for as nginx does (an old process in its shutdown may still hold it for a moment: five tries,
/// half a second apart), so that the error comes at once and from `sluice` itself, before
/// anything runs. Not at an upgrade: the sockets are the old process's then.
/// `addrs` are each address with its config key, which the error names.
pub fn check_addresses<'a>(
    addrs: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<(), String> {
    const TRIES: usize = 5;
    const PAUSE: Duration = Duration::from_millis(500);
    for (key, addr) in addrs {
        for attempt in 1..=TRIES {
            match bound_socket(addr) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < TRIES => {
                    eprintln!("sluice: {addr} is in use; trying again ({attempt}/{TRIES})");
                    std::thread::sleep(PAUSE);
                }
                // A Sluice draining after SIGTERM keeps its admin address until it exits.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(format!(
                        "{key}: cannot listen on {addr}: {e} (is a Sluice still running, or \
                         draining its streams? To replace one, start the new one with -u and \
                         send the old one SIGQUIT)"
                    ))
                }
                Err(e) => return Err(format!("{key}: cannot listen on {addr}: {e}")),
            }
        }
    }
    Ok(())
}

/// The listening socket for `addr`: inherited from the previous process in an upgrade, else
/// bound now and recorded for the next upgrade. Either way it gets TCP_NODELAY, which every
/// connection accepted on it inherits (no setsockopt per connection), and deferred accept.
fn listen(addr: &str, fds: Option<&ListenFds>) -> std::io::Result<TcpListener> {
    let inherited = fds.and_then(|fds| fds.lock().get(addr).copied());
    let socket = match inherited {
        Some(fd) => inherited_socket(fd)?,
        None => bound_socket(addr)?,
    };
    socket.set_nodelay(true)?;
    defer_accept(&socket, addr);
    // On an inherited socket, listening again only sets the backlog.
    let listener = socket.listen(BACKLOG)?;
    if let (None, Some(fds)) = (inherited, fds) {
        fds.lock().add(addr.to_string(), listener.as_raw_fd());
    }
    Ok(listener)
}

/// The kernel hands over a connection only once its client has sent its first bytes (every
/// protocol here has the client speak first: a request head, a TLS ClientHello, the HTTP/2
/// preface), so its accept, first read and request go in one wake-up of the proxy instead of
/// two: without it the accept came at the handshake, the read a few microseconds later found
/// nothing, and the request waited for a second wake-up (~50 µs of a fresh HTTP/1.1 stream's
/// first byte on the benchmark machine, see the README's benchmarks). A client that sends
/// nothing is accepted anyway after about this long (the kernel's next SYN-ACK), then waits as
/// any idle connection does.
#[cfg(target_os = "linux")]
const DEFER_ACCEPT_SECONDS: libc::c_int = 1;

/// Only a saving: a listener the kernel refuses it to (or a system without it) works without.
#[cfg(target_os = "linux")]
fn defer_accept(socket: &TcpSocket, addr: &str) {
    // SAFETY: `socket` owns a valid descriptor, and the option's value is a c_int that outlives
    // the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&DEFER_ACCEPT_SECONDS as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        log::warn!("{addr}: no deferred accept (TCP_DEFER_ACCEPT): {e}");
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_accept(_socket: &TcpSocket, _addr: &str) {}

/// A listening socket the previous process handed over.
fn inherited_socket(fd: RawFd) -> std::io::Result<TcpSocket> {
    // SAFETY: the fd table holds listening sockets handed over by the previous process, each
    // owned by exactly one listener.
    let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    std.set_nonblocking(true)?;
    // SAFETY: the descriptor was just taken out of `std`, which owned it.
    Ok(unsafe { TcpSocket::from_raw_fd(std.into_raw_fd()) })
}

fn bound_socket(addr: &str) -> std::io::Result<TcpSocket> {
    let sock_addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = if sock_addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sock_addr)?;
    Ok(socket)
}

/// What a listener's connections speak first.
enum Kind {
    Plain,
    Tls(Arc<Acceptor>),
    /// HTTP/1.1, or HTTP/2 with prior knowledge.
    H2c,
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    app: Arc<SluiceProxy>,
    mut shutdown: ShutdownWatch,
) {
    // Counted while accepting: the drain cannot see zero between an accept and its connection's
    // count.
    let _accepting = drain::InFlight::start();
    let mut accept_errors = AcceptErrors::default();
    loop {
        // Biased: once accepting is over nothing more is taken, even with connections waiting
        // (one left in the backlog goes to the next process, or is refused with the socket).
        let accepted = tokio::select! {
            biased;
            () = accepting_over(&kind, &mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: the listener itself is fine.
                accept_errors.failed("accept()", &e);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Sluice's own socket type (`tcp.rs`), with no `SocketDigest`: the peer's address goes
        // along by itself, and nothing else reads the digest. So `ServerSession::client_addr()`
        // is `None`: the address is `RequestCtx::client_addr`.
        let app = app.clone();
        let shutdown = shutdown.clone();
        // Counted from the accept, not from the task's first poll.
        let first_request = drain::InFlight::start();
        match &kind {
            Kind::Plain => tokio::spawn(serve(
                Tcp::stream(tcp),
                None,
                peer,
                app,
                shutdown,
                first_request,
            )),
            Kind::Tls(tls) => tokio::spawn(serve_tls(
                tls.clone(),
                tcp,
                peer,
                app,
                shutdown,
                first_request,
            )),
            Kind::H2c => tokio::spawn(serve_h2c(tcp, peer, app, shutdown, first_request)),
        };
    }
    // After a hand-over the next process has its own copy of the socket (accepting on it
    // meanwhile too), so closing this one stops only this process from accepting.
}

/// When a listener stops accepting once shutdown has begun. A cleartext listener goes on for the
/// first request's grace: with deferred accept a client that connected before the signal (a
/// browser's preconnect, a pool's spare connection) is handed over only when its request comes,
/// and it is owed an answer as when it was accepted at once. A TLS listener stops at once, as it
/// did before deferred accept: a TLS client speaks first as soon as it connects, so one that
/// connected before the signal has been handed over already, and one accepted later would have
/// only what is left of the grace for its handshake.
async fn accepting_over(kind: &Kind, shutdown: &mut ShutdownWatch) {
    match kind {
        Kind::Tls(_) => drain::shutdown_begun(shutdown).await,
        Kind::Plain | Kind::H2c => drain::request_arrival_over(shutdown).await,
    }
}

/// A TLS client connection: the handshake, then HTTP/1.1 here or HTTP/2 (`h2_server.rs`).
async fn serve_tls(
    tls: Arc<Acceptor>,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    app: Arc<SluiceProxy>,
    mut shutdown: ShutdownWatch,
    first_request: drain::InFlight,
) {
    // The handshake and the stream it makes are boxed, the stream inside a block: either held
    // by value would keep its kilobytes in this task's state for the connection's whole life
    // (rustc keeps a moved-from local's slot until its scope ends).
    let stream = {
        let handshake = Box::pin(timer::timeout(
            app.timeouts.handshake,
            tls.tls_handshake(Tcp::new(tcp)),
        ));
        let Some(handshake) = unless_grace_over(&mut shutdown, handshake).await else {
            return;
        };
        match handshake {
            Ok(Ok(stream)) => Box::new(stream),
            // As Pingora's own listeners log them.
            Ok(Err(e)) => return log::error!("Downstream handshake error from {peer}: {e}"),
            Err(_) => return log::error!("Downstream handshake timeout from {peer}"),
        }
    };
    if stream.selected_alpn_proto() == Some(ALPN::H2) {
        return serve_h2(app, stream, BytesMut::new(), peer, shutdown, first_request).await;
    }
    serve(stream, None, peer, app, shutdown, first_request).await
}

/// `work`, unless the grace for a connection's first request ends first (`None`): a client
/// still in its TLS handshake, or not yet through its first bytes, when shutdown begins gets the
/// same grace as one that has not sent its first request.
async fn unless_grace_over<F: Future>(shutdown: &mut ShutdownWatch, work: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        done = work => Some(done),
        _ = drain::request_arrival_over(shutdown) => None,
    }
}

/// A client connection on an h2c listener: HTTP/2 when it opens with the preface (prior
/// knowledge), HTTP/1.1 otherwise. Either server is handed the bytes read to tell them apart.
async fn serve_h2c(
    mut tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    app: Arc<SluiceProxy>,
    mut shutdown: ShutdownWatch,
    first_request: drain::InFlight,
) {
    let opening = timer::timeout(app.timeouts.keepalive, read_opening(&mut tcp));
    let Some(opening) = unless_grace_over(&mut shutdown, opening).await else {
        return;
    };
    match opening {
        Ok(Ok(Opening::Http2(read))) => {
            let stream = Tcp::stream(tcp);
            serve_h2(app, stream, read, peer, shutdown, first_request).await
        }
        Ok(Ok(Opening::Http1(read))) => {
            let stream = Tcp::stream(tcp);
            serve(stream, Some(read), peer, app, shutdown, first_request).await
        }
        // A read error, or nothing (or half a preface) sent for the keep-alive: closed as an
        // idle HTTP/1.1 connection would be.
        _ => {}
    }
}

/// The HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client on an h2c listener opened with, and the bytes read to tell.
enum Opening {
    Http2(BytesMut),
    /// Empty when the client closed without sending anything.
    Http1(BytesMut),
}

/// Reads a connection's first bytes until they are the HTTP/2 preface or cannot be: as soon as
/// they differ from it, or the client closes. A preface cut short (rare: it is 24 bytes) is
/// waited for.
async fn read_opening(tcp: &mut tokio::net::TcpStream) -> std::io::Result<Opening> {
    let mut opening = BytesMut::new();
    loop {
        let read = first_bytes(tcp).await?;
        if read.is_empty() {
            return Ok(Opening::Http1(opening));
        }
        if opening.is_empty() {
            opening = read;
        } else {
            opening.extend_from_slice(&read);
        }
        let seen = opening.len().min(H2_PREFACE.len());
        if opening[..seen] != H2_PREFACE[..seen] {
            return Ok(Opening::Http1(opening));
        }
        if seen == H2_PREFACE.len() {
            return Ok(Opening::Http2(opening));
        }
    }
}

/// An HTTP/2 connection (`h2_server.rs`), counted for its first request's grace.
async fn serve_h2(
    app: Arc<SluiceProxy>,
    stream: pingora::protocols::Stream,
    read_already: BytesMut,
    peer: std::net::SocketAddr,
    mut shutdown: ShutdownWatch,
    first_request: drain::InFlight,
) {
    let session = h2_server::serve(app, stream, read_already, peer, shutdown.clone());
    tokio::pin!(session);
    // Its requests count themselves (`RequestCtx`) once read; until then the connection is
    // counted here, as a fresh HTTP/1.1 one is, for the grace its first request gets.
    let mut first_request = Some(first_request);
    loop {
        tokio::select! {
            _ = &mut session => return,
            _ = drain::request_arrival_over(&mut shutdown), if first_request.is_some() => {
                first_request = None;
            }
        }
    }
}

/// One client connection: requests one after the other while it is kept alive.
/// `opening`: the connection's first bytes, when they have been read already (h2c).
async fn serve(
    mut stream: pingora::protocols::Stream,
    mut opening: Option<BytesMut>,
    peer: std::net::SocketAddr,
    app: Arc<SluiceProxy>,
    mut shutdown: ShutdownWatch,
    first_request: drain::InFlight,
) {
    // A connection accepted before shutdown is owed an answer to its first request: it counts
    // as in flight (the process waits for it) until that request has been answered.
    let mut first_request = Some(first_request);
    loop {
        let fresh = first_request.is_some();
        let read = match opening.take() {
            Some(read) => Ok(Ok(read)),
            None => {
                // Boxed: the wait's timers (~310 bytes) would otherwise size this task's state,
                // which every open stream keeps while its request is served; one allocation per
                // request.
                let wait = Box::pin(async {
                    let read = timer::timeout(app.timeouts.keepalive, first_bytes(&mut stream));
                    // Biased: bytes already here are served even once shutdown has begun. An
                    // idle kept-alive connection is closed when the service shuts down (or after
                    // the keep-alive without a request); a fresh one still gets its first
                    // request's grace.
                    tokio::select! {
                        biased;
                        read = read => Some(read),
                        _ = closing_time(&mut shutdown, fresh) => None,
                    }
                });
                match wait.await {
                    Some(read) => read,
                    None => return,
                }
            }
        };
        // Counted until answered: a fresh connection from its accept, a kept-alive one from its
        // request's first bytes (the rest of its head still gets the grace at shutdown).
        let _answering = first_request.take().unwrap_or_else(drain::InFlight::start);
        let prefix = match read {
            Ok(Ok(prefix)) if !prefix.is_empty() => prefix,
            // Closed by the client, a read error, or idle too long.
            _ => return,
        };
        // Whole seconds (validated), as Pingora takes them.
        let keepalive = (!*shutdown.borrow()).then_some(app.timeouts.keepalive.as_secs());
        let session = request_session(stream, prefix, keepalive);
        let Some(kept) = app
            .serve_request(session, (Some(peer), None), &shutdown)
            .await
        else {
            return;
        };
        stream = kept.stream;
        // A request the client sent before the response ended (pipelined) is not waited for.
        if !kept.read_ahead.is_empty() {
            opening = Some(kept.read_ahead);
        }
    }
}

/// When a connection waiting for a request is closed: at shutdown, or for one that has not had
/// its first request yet, once that request's grace is over.
async fn closing_time(shutdown: &mut ShutdownWatch, fresh: bool) {
    if fresh {
        drain::request_arrival_over(shutdown).await;
    } else {
        drain::shutdown_begun(shutdown).await;
    }
}

/// Pingora's session for one request on `stream`, starting from the head bytes already read.
///
/// Built here rather than in `serve`: a local that is borrowed (as `set_pipelined_prefix` and
/// `set_keepalive` borrow theirs) keeps its slot in an async fn's state across later awaits even
/// once moved out, and two 680-byte sessions would then sit in every open stream's task.
fn request_session(
    stream: pingora::protocols::Stream,
    prefix: BytesMut,
    keepalive: Option<u64>,
) -> ServerSession {
    let mut http1 = pingora::protocols::http::v1::server::HttpSession::new(stream);
    http1.set_pipelined_prefix(prefix);
    // Bytes of the next request read with this one's body or while its response goes out are
    // handed back at its end (RFC 9112 §9.3.2), not a reason to close the connection.
    http1.set_pipelining_enabled(true);
    let mut session = ServerSession::H1(http1);
    session.set_keepalive(keepalive);
    session
}

/// The bytes of a request head that are already there, in a buffer of their own size.
///
/// Pingora keeps the buffer it parsed a request head from for as long as the request lasts
/// (header values point into it) and would start one at 4 KiB; a stream request's head is a few
/// hundred bytes, so reading it first here saves ~3.5 KiB per open stream. Pingora parses this as
/// the start of the request and reads the rest itself when the head is longer.
async fn first_bytes<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<BytesMut> {
    std::future::poll_fn(|cx| {
        // On the stack of this poll only: an idle connection's future holds no buffer.
        let mut space = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut space);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(BytesMut::from(buf.filled())))
    })
    .await
}

/// Says that accepting failed at most once a second, with how many failures it left unsaid: out
/// of descriptors, a listener fails ~100 times a second (it tries again every 10 ms) until
/// connections close.
#[derive(Default)]
pub(super) struct AcceptErrors {
    said_at: Option<std::time::Instant>,
    unsaid: u64,
}

impl AcceptErrors {
    pub(super) fn failed(&mut self, what: &str, e: &std::io::Error) {
        if let Some(unsaid) = self.due(std::time::Instant::now()) {
            match unsaid {
                0 => log::error!("{what} failed: {e}"),
                n => log::error!("{what} failed: {e} (and {n} times more in the last second)"),
            }
        }
    }

    /// `Some(failures left unsaid)` when a failure now is to be said.
    fn due(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.said_at {
            Some(at) if now.duration_since(at) < std::time::Duration::from_secs(1) => {
                self.unsaid += 1;
                None
            }
            _ => {
                self.said_at = Some(now);
                Some(std::mem::take(&mut self.unsaid))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_connection_is_handed_over_with_its_first_bytes_or_after_a_second_of_silence() {
        let listener = listen("127.0.0.1:0", None).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut speaking = std::net::TcpStream::connect(addr).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(early.is_err(), "accepted before its client sent anything");

        speaking.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let (accepted, _) = tokio::time::timeout(Duration::from_secs(1), listener.accept())
            .await
            .expect("not accepted once its client spoke")
            .unwrap();
        // Its first bytes are already there: the first read needs no wait.
        let mut buf = [0u8; 32];
        let n = accepted.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");

        // A client that connected and never spoke is accepted anyway, with the kernel's next
        // SYN-ACK, and then waits as any idle connection does.
        let _silent = std::net::TcpStream::connect(addr).unwrap();
        let late = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(late.is_ok(), "a silent client was never accepted");
    }

    #[test]
    fn accept_failures_are_said_once_a_second_with_the_count_left_unsaid() {
        let mut errors = AcceptErrors::default();
        let start = std::time::Instant::now();
        let said: Vec<_> = (0..250u64)
            .map(|ms10| errors.due(start + Duration::from_millis(ms10 * 10)))
            .collect();
        let when: Vec<_> = said
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|n| (i, n)))
            .collect();
        assert_eq!(when, [(0, 0), (100, 99), (200, 99)]);
    }
}
