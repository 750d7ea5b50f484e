//! `H1Connection` and `IdlePool` over real loopback sockets, each against a scripted fake
//! upstream that reads what arrives and writes raw bytes.

use super::h1::H1Connection;
use super::pool::IdlePool;
use super::{Pooled, UpstreamConn};
use crate::edge::tcp::socket_pair;
use http::HeaderName;
use pingora::http::RequestHeader;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// Bound on every wait that should end, so a broken test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(5);
/// Long enough for loopback bytes (and FINs) to arrive and the runtime to notice them.
const SETTLE: Duration = Duration::from_millis(50);

async fn connection() -> (H1Connection, TcpStream) {
    let (stream, upstream) = socket_pair().await;
    (H1Connection::new(stream), upstream)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut head = RequestHeader::build(method, path.as_bytes(), None).unwrap();
    for (name, value) in headers {
        head.append_header(name.to_string(), *value).unwrap();
    }
    head
}

/// What the upstream received in a single read made after `SETTLE`.
async fn read_once(upstream: &mut TcpStream) -> String {
    sleep(SETTLE).await;
    let mut buf = vec![0u8; 64 * 1024];
    let n = timeout(WAIT, upstream.read(&mut buf)).await.unwrap();
    buf.truncate(n.unwrap());
    String::from_utf8(buf).unwrap()
}

/// Reads on the upstream side until `want` bytes came.
async fn read_exactly(upstream: &mut TcpStream, want: usize) -> String {
    let mut buf = vec![0u8; want];
    timeout(WAIT, upstream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(buf).unwrap()
}

/// Whether the other end closed (or reset) the upstream's socket; data that arrives first is
/// skipped.
async fn peer_closed(upstream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match timeout(WAIT, upstream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether nothing at all (no byte, no close) reaches the upstream for `SETTLE`.
async fn quiet(upstream: &mut TcpStream) -> bool {
    timeout(SETTLE, upstream.read(&mut [0u8; 1])).await.is_err()
}

/// Reads on the upstream side up to the end of a request head (the tests' requests have no
/// body), so that closing later is a clean FIN, not a reset over unread bytes.
async fn read_request_head(upstream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = timeout(WAIT, upstream.read(&mut byte)).await.unwrap();
        assert_eq!(n.unwrap(), 1, "request head cut short: {head:?}");
        head.push(byte[0]);
    }
    head
}

/// The fake upstream's script: reads the request head, writes `pieces` with `pause` before
/// each, then closes the connection when `close`, else hands the socket back (kept open until
/// the handle is dropped).
fn script(
    mut upstream: TcpStream,
    pieces: Vec<Vec<u8>>,
    pause: Duration,
    close: bool,
) -> JoinHandle<Option<TcpStream>> {
    tokio::spawn(async move {
        read_request_head(&mut upstream).await;
        for piece in pieces {
            sleep(pause).await;
            upstream.write_all(&piece).await.unwrap();
        }
        (!close).then_some(upstream)
    })
}

/// A connection that sent `head` (no body) and whose upstream answers with `response` in one
/// write (closing after it when `close`).
async fn answered(
    head: &RequestHeader,
    response: &[u8],
    close: bool,
) -> (H1Connection, JoinHandle<Option<TcpStream>>) {
    let (mut conn, upstream) = connection().await;
    send_head(&mut conn, head, b"", true).await.unwrap();
    let upstream = script(upstream, vec![response.to_vec()], Duration::ZERO, close);
    (conn, upstream)
}

/// Sends `head` as the relay sends a client's head: its target and its fields as they are.
async fn send_head(
    conn: &mut H1Connection,
    head: &RequestHeader,
    body: &[u8],
    complete: bool,
) -> pingora::Result<()> {
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    conn.send_head(&head.method, target, &head.headers, body, complete)
        .await
}

fn get() -> RequestHeader {
    request("GET", "/v1/models", &[("host", "up")])
}

/// `f`'s output, failing the test when it takes longer than `WAIT` rather than hanging it.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    timeout(WAIT, f).await.expect("timed out")
}

/// The rest of the body, each piece checked to be non-empty.
async fn read_all(conn: &mut H1Connection) -> pingora::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(piece) = within(conn.read_body()).await? {
        assert!(!piece.is_empty(), "read_body returned an empty piece");
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

fn local_port(stream: &Stream) -> u16 {
    PeerAddr::from_raw_fd(stream.id(), false)
        .and_then(|a| a.as_inet().map(|a| a.port()))
        .expect("a TCP socket")
}

/// Data segments TCP has sent on the socket `fd` (Linux's `TCP_INFO`), where the kernel says.
/// A single loopback read cannot tell one write from two, this can: a small write is one segment.
fn data_segments_sent(fd: i32) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_data_segs_out) + 4;
        crate::edge::tcp::tcp_info(fd, needed).map(|info| info.tcpi_data_segs_out)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

/// The pieces of `script`, separated by `|`.
fn pieces(script: &str) -> Vec<Vec<u8>> {
    script.split('|').map(|p| p.as_bytes().to_vec()).collect()
}

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz";
/// A chunked response with a chunk extension, a two-digit size and a trailer.
const CHUNKED: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
    5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n";

// ---- Requests ----

#[tokio::test]
async fn request_head_and_complete_body_leave_in_one_segment() {
    let te = ("transfer-encoding", "chunked");
    for (framing, body, wire) in [
        (("content-length", "5"), "hello", "hello".to_string()),
        (te, ALPHABET, format!("1A\r\n{ALPHABET}\r\n0\r\n\r\n")),
        // An empty body is the last chunk alone, never an empty chunk before it.
        (te, "", "0\r\n\r\n".to_string()),
    ] {
        let (stream, mut upstream) = socket_pair().await;
        let fd = stream.id();
        let mut conn = H1Connection::new(stream);
        let before = data_segments_sent(fd);
        let head = request("POST", "/v1/chat?x=1", &[("host", "up"), framing]);
        send_head(&mut conn, &head, body.as_bytes(), true)
            .await
            .unwrap();
        let (name, value) = framing;
        let head = format!("POST /v1/chat?x=1 HTTP/1.1\r\nhost: up\r\n{name}: {value}\r\n\r\n");
        assert_eq!(read_once(&mut upstream).await, format!("{head}{wire}"));
        if let (Some(before), Some(after)) = (before, data_segments_sent(fd)) {
            assert_eq!(after - before, 1, "segments sent for {framing:?}");
        }
    }
}

#[tokio::test]
async fn streamed_request_bodies_are_framed_piece_by_piece() {
    for (framing, expected) in [
        (
            ("transfer-encoding", "chunked"),
            "2\r\nab\r\n1\r\nc\r\n5\r\ndefgh\r\n0\r\n\r\n",
        ),
        (("content-length", "8"), "abcdefgh"),
    ] {
        let (mut conn, mut upstream) = connection().await;
        send_head(&mut conn, &request("PUT", "/", &[framing]), b"ab", false)
            .await
            .unwrap();
        conn.send_body(b"c").await.unwrap();
        conn.send_body(b"").await.unwrap();
        conn.send_body(b"defgh").await.unwrap();
        conn.finish_body().await.unwrap();
        let expected = format!(
            "PUT / HTTP/1.1\r\n{}: {}\r\n\r\n{expected}",
            framing.0, framing.1
        );
        assert_eq!(read_exactly(&mut upstream, expected.len()).await, expected);
        assert!(quiet(&mut upstream).await, "nothing more arrives");
    }
}

// ---- Responses ----

#[tokio::test]
async fn content_length_response_is_read_and_reusable() {
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello";
    let (mut conn, _upstream) = answered(&get(), response, false).await;
    let head = within(conn.read_head()).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.fields.get(&HeaderName::from_static("x-a")),
        Some(&b"b"[..])
    );
    assert!(!conn.body_done());
    assert_eq!(read_all(&mut conn).await.unwrap(), b"hello");
    assert!(conn.body_done());
    assert!(conn.reusable());
}

/// A stream left idle after a piece keeps none of the buffer that piece was read into: the
/// piece given out is the buffer's only owner, so it is freed once relayed. (An empty remainder
/// of a read sized to its bytes, kept in the connection, held each idle stream's last read:
/// ~260 bytes per open stream.)
#[tokio::test]
async fn a_piece_given_out_is_the_only_owner_of_its_buffer() {
    let (mut conn, upstream) = connection().await;
    send_head(&mut conn, &get(), b"", true).await.unwrap();
    // The head with the first piece (one read), then a second piece on its own.
    let pieces = vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        b"6\r\n world\r\n".to_vec(),
    ];
    let _upstream = script(upstream, pieces, SETTLE, false);
    assert_eq!(within(conn.read_head()).await.unwrap().status, 200);
    for want in [&b"hello"[..], b" world"] {
        let piece = within(conn.read_body()).await.unwrap().unwrap();
        assert_eq!(piece, want);
        assert!(
            piece.is_unique(),
            "the connection still holds {want:?}'s buffer"
        );
    }
}

/// `CHUNKED` written in `pieces` with pauses: the body comes out whole and the connection
/// stays reusable.
async fn chunked_response_in(pieces: Vec<Vec<u8>>, pause: Duration) {
    assert_eq!(pieces.concat(), CHUNKED.as_bytes());
    let (mut conn, upstream) = connection().await;
    send_head(&mut conn, &get(), b"", true).await.unwrap();
    let _upstream = script(upstream, pieces, pause, false);
    assert_eq!(within(conn.read_head()).await.unwrap().status, 200);
    let body = read_all(&mut conn).await.unwrap();
    assert_eq!(body, format!("hello{ALPHABET}").as_bytes());
    assert!(conn.body_done() && conn.reusable());
}

#[tokio::test]
async fn chunked_response_split_at_awkward_places() {
    let script =
        "HTTP/1.1 200 OK\r|\ntransfer-enc|oding: chunked\r\n\r|\n5|;ext|=1\r|\nhel|lo\r|\n1|\
        A\r\nabcdefghijklm|nopqrstuvwxyz\r|\n0\r\nx-tr|ailer: t\r\n|\r|\n";
    chunked_response_in(pieces(script), Duration::from_millis(5)).await;
}

#[tokio::test]
async fn chunked_response_one_byte_at_a_time() {
    let pieces = CHUNKED.bytes().map(|b| vec![b]).collect();
    chunked_response_in(pieces, Duration::from_millis(1)).await;
}

#[tokio::test]
async fn until_close_body_ends_with_the_connection() {
    let (mut conn, upstream) = connection().await;
    send_head(&mut conn, &get(), b"", true).await.unwrap();
    let response = pieces("HTTP/1.1 200 OK\r\n\r\nfirst |second |third");
    let _upstream = script(upstream, response, Duration::from_millis(5), true);
    assert_eq!(within(conn.read_head()).await.unwrap().status, 200);
    assert_eq!(read_all(&mut conn).await.unwrap(), b"first second third");
    assert!(conn.body_done());
    assert!(!conn.reusable(), "a body delimited by the close");
}

#[tokio::test]
async fn continue_then_final_head() {
    // Apart, and both in one write.
    let response = "HTTP/1.1 100 Continue\r\n\r\n|HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    for response in [pieces(response), vec![pieces(response).concat()]] {
        let (mut conn, upstream) = connection().await;
        let head = request("POST", "/", &[("expect", "100-continue")]);
        send_head(&mut conn, &head, b"", true).await.unwrap();
        let _upstream = script(upstream, response, Duration::from_millis(10), false);
        assert_eq!(within(conn.read_head()).await.unwrap().status, 100);
        assert_eq!(within(conn.read_head()).await.unwrap().status, 200);
        assert_eq!(read_all(&mut conn).await.unwrap(), b"ok");
        assert!(conn.reusable());
    }
}

#[tokio::test]
async fn bodiless_responses_are_done_at_once() {
    let head = request("HEAD", "/", &[("host", "up")]);
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
    let (mut conn, _up) = answered(&head, response, false).await;
    let head = within(conn.read_head()).await.unwrap();
    assert_eq!(
        head.fields.get(&http::header::CONTENT_LENGTH),
        Some(&b"100"[..])
    );
    assert!(conn.body_done());
    assert_eq!(within(conn.read_body()).await.unwrap(), None);
    assert!(conn.reusable());

    for response in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
    ] {
        let (mut conn, _up) = answered(&get(), response, false).await;
        within(conn.read_head()).await.unwrap();
        assert!(conn.body_done());
        assert_eq!(within(conn.read_body()).await.unwrap(), None);
        assert!(conn.reusable());
    }
}

// ---- Reuse ----

#[tokio::test]
async fn not_reusable_when_the_upstream_closes_or_says_more() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
    ] {
        let (mut conn, _up) = answered(&get(), response, false).await;
        within(conn.read_head()).await.unwrap();
        assert_eq!(read_all(&mut conn).await.unwrap(), b"ok");
        assert!(conn.body_done() && !conn.reusable());
    }
}

#[tokio::test]
async fn not_reusable_after_a_request_asking_to_close() {
    // RFC 9112 §9.6: a client that sent `close` must not send another request on it.
    let head = request("GET", "/", &[("connection", "close")]);
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (mut conn, _up) = answered(&head, response, false).await;
    within(conn.read_head()).await.unwrap();
    assert_eq!(read_all(&mut conn).await.unwrap(), b"ok");
    assert!(!conn.reusable());
}

/// `Keep-Alive: max=1` (the last request the upstream takes on the connection) and `timeout=0`
/// (no idle time at all): the connection does not wait for another request.
#[tokio::test]
async fn not_reusable_when_the_upstreams_keep_alive_says_so() {
    for keep_alive in [
        "timeout=5, max=1",
        "max=0",
        "timeout=0",
        "timeout=0, max=100",
    ] {
        let response =
            format!("HTTP/1.1 200 OK\r\nkeep-alive: {keep_alive}\r\ncontent-length: 2\r\n\r\nok");
        let (mut conn, _up) = answered(&get(), response.as_bytes(), false).await;
        within(conn.read_head()).await.unwrap();
        assert_eq!(read_all(&mut conn).await.unwrap(), b"ok");
        assert!(conn.body_done() && !conn.reusable(), "{keep_alive}");
    }
}

/// A connection goes back to the pool for less than the upstream's own idle timeout, when it
/// says it (`Keep-Alive: timeout=N`, Node's 5 s by default): a request sent at the end of a
/// longer wait would meet the upstream's close, and its client a 502.
#[tokio::test]
async fn pool_idle_stays_short_of_the_upstreams_keep_alive_timeout() {
    let configured = Duration::from_secs(60);
    let ms = Duration::from_millis;
    for (keep_alive, idle) in [
        (None, configured),
        (Some("timeout=5"), ms(4000)),
        (Some("timeout=5, max=1000"), ms(4000)),
        (Some("max=1000"), configured),
        (Some("timeout=2"), ms(1000)),
        (Some("timeout=1"), ms(500)),
        (Some("Timeout=3600"), configured),
        (Some("timeout=99999999"), configured),
        (Some("timeout=soon"), configured),
    ] {
        let field = keep_alive.map_or(String::new(), |v| format!("keep-alive: {v}\r\n"));
        let response = format!("HTTP/1.1 200 OK\r\n{field}content-length: 2\r\n\r\nok");
        let (mut conn, _up) = answered(&get(), response.as_bytes(), false).await;
        within(conn.read_head()).await.unwrap();
        assert_eq!(read_all(&mut conn).await.unwrap(), b"ok");
        assert!(conn.reusable(), "{keep_alive:?}");
        assert_eq!(conn.pool_idle(configured), idle, "{keep_alive:?}");
        // Never longer than the upstream's `pool_idle_timeout`.
        assert_eq!(conn.pool_idle(ms(300)), idle.min(ms(300)), "{keep_alive:?}");
    }
}

/// The relay words an upstream connection's errors as `{e}` (a 502's message: `upstream u failed
/// before its response head: {e}`): one space between words, never two, and nothing lost.
/// (Pingora's own wording starts with a space when an error's source is unset.)
#[tokio::test]
async fn upstream_errors_read_with_single_spaces() {
    // The upstream closes before its response head.
    let (mut conn, upstream) = connection().await;
    send_head(&mut conn, &get(), b"", true).await.unwrap();
    let mut up = UpstreamConn::H1 { conn, pool_key: 0 };
    within(script(upstream, Vec::new(), Duration::ZERO, true))
        .await
        .unwrap();
    let error = within(up.read_final_head()).await.unwrap_err().to_string();
    assert_eq!(
        error,
        "Upstream ConnectionClosed context: upstream closed the connection before its response head"
    );

    // A read that fails, with the I/O error as its cause: the upstream resets the connection
    // (closes it with the request unread).
    let (mut conn, upstream) = connection().await;
    send_head(&mut conn, &get(), b"", true).await.unwrap();
    let mut up = UpstreamConn::H1 { conn, pool_key: 0 };
    sleep(SETTLE).await;
    drop(upstream);
    let error = within(up.read_final_head()).await.unwrap_err().to_string();
    assert!(
        error.starts_with("Upstream ReadError context: reading from upstream cause: "),
        "{error:?}"
    );
    assert!(!error.contains("  ") && !error.ends_with(' '), "{error:?}");
}

#[tokio::test]
async fn truncated_bodies_are_errors() {
    for response in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ] {
        let (mut conn, _up) = answered(&get(), response, true).await;
        within(conn.read_head()).await.unwrap();
        let mut got = Vec::new();
        let error = loop {
            match within(conn.read_body()).await {
                Ok(Some(piece)) => got.extend_from_slice(&piece),
                Ok(None) => panic!("truncated body read as complete: {response:?}"),
                Err(e) => break e,
            }
        };
        assert!(b"hello".starts_with(&got), "{got:?}");
        assert!(error.to_string().contains("closed"), "{error}");
        assert!(!conn.body_done() && !conn.reusable());
    }
}

#[tokio::test]
async fn malformed_chunk_after_data_is_an_error_on_the_next_read() {
    let response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n";
    let (mut conn, _up) = answered(&get(), response, false).await;
    within(conn.read_head()).await.unwrap();
    assert_eq!(
        &within(conn.read_body()).await.unwrap().unwrap()[..],
        b"hello"
    );
    assert!(within(conn.read_body()).await.is_err());
    assert!(!conn.reusable());
}

// ---- Cancel safety ----

#[tokio::test]
async fn cancelled_read_body_loses_nothing() {
    let (mut conn, mut upstream) = connection().await;
    send_head(&mut conn, &get(), b"", true).await.unwrap();
    // Half a size line is already buffered when the read is cancelled.
    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1";
    upstream.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(within(conn.read_head()).await.unwrap().status, 200);
    tokio::select! {
        piece = conn.read_body() => panic!("nothing to read yet: {piece:?}"),
        _ = sleep(Duration::from_millis(20)) => {}
    }
    upstream
        .write_all(format!("A\r\n{ALPHABET}\r\n3\r\nabc\r\n0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let body = read_all(&mut conn).await.unwrap();
    assert_eq!(body, format!("{ALPHABET}abc").as_bytes());
    assert!(conn.reusable());
}

#[tokio::test]
async fn read_body_cancelled_over_and_over_stays_byte_exact() {
    let (mut conn, upstream) = connection().await;
    send_head(&mut conn, &get(), b"", true).await.unwrap();
    let framing = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let body = format!("{framing}1A\r\n{ALPHABET}\r\n3\r\nxyz\r\n0\r\n\r\n");
    let pieces = body.bytes().map(|b| vec![b]).collect();
    let _upstream = script(upstream, pieces, Duration::from_millis(2), false);
    assert_eq!(within(conn.read_head()).await.unwrap().status, 200);
    let (mut got, mut cancelled) = (Vec::new(), 0);
    within(async {
        loop {
            tokio::select! {
                piece = conn.read_body() => match piece.unwrap() {
                    Some(piece) => got.extend_from_slice(&piece),
                    None => break,
                },
                _ = sleep(Duration::from_millis(1)) => cancelled += 1,
            }
        }
    })
    .await;
    assert!(cancelled > 10, "only {cancelled} reads were cancelled");
    assert_eq!(got, format!("{ALPHABET}xyz").as_bytes());
    assert!(conn.reusable());
}

// ---- Upgrades ----

#[tokio::test]
async fn raw_bytes_after_switching_protocols() {
    let (mut conn, mut upstream) = connection().await;
    let head = request(
        "GET",
        "/",
        &[("upgrade", "websocket"), ("connection", "upgrade")],
    );
    send_head(&mut conn, &head, b"", true).await.unwrap();
    upstream
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\nEARLY")
        .await
        .unwrap();
    assert_eq!(within(conn.read_head()).await.unwrap().status, 101);
    assert!(!conn.reusable());
    let (mut stream, early) = conn.into_parts();
    assert_eq!(&early[..], b"EARLY");

    read_request_head(&mut upstream).await;
    stream.write_all(b"ping").await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(read_exactly(&mut upstream, 4).await, "ping");
    upstream.write_all(b"pong").await.unwrap();
    let mut pong = [0u8; 4];
    within(stream.read_exact(&mut pong)).await.unwrap();
    assert_eq!(&pong, b"pong");
    drop(upstream);
    assert_eq!(within(stream.read(&mut pong)).await.unwrap(), 0);
}

// ---- Pool ----

/// A pool connection: Sluice's end and the upstream's.
async fn pooled() -> (Stream, TcpStream) {
    let (stream, upstream) = socket_pair().await;
    assert_eq!(local_port(&stream), upstream.peer_addr().unwrap().port());
    (stream, upstream)
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn put_then_take_returns_the_same_connection() {
    let pool = IdlePool::new(4);
    let (stream, upstream) = pooled().await;
    let port = local_port(&stream);
    pool.put(7, stream, LONG);
    assert!(pool.take(8).is_none(), "another key");
    let taken = pool.take(7).expect("pooled");
    assert_eq!(local_port(&taken), port);
    assert!(pool.take(7).is_none(), "taken once");
    drop(upstream);
}

#[tokio::test]
async fn a_reusable_connection_carries_the_next_request_from_the_pool() {
    let pool = IdlePool::new(4);
    let (mut conn, mut upstream) = connection().await;
    for round in 0..2 {
        send_head(&mut conn, &get(), b"", true).await.unwrap();
        let request = read_once(&mut upstream).await;
        assert!(
            request.starts_with("GET /v1/models HTTP/1.1\r\n"),
            "{round}"
        );
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        within(conn.read_head()).await.unwrap();
        assert_eq!(read_all(&mut conn).await.unwrap(), b"ok");
        assert!(conn.reusable());
        pool.put(1, conn.into_stream(), LONG);
        sleep(SETTLE).await;
        conn = H1Connection::new(pool.take(1).expect("still alive"));
    }
}

#[tokio::test]
async fn take_drops_closed_chatty_and_expired_connections() {
    let pool = IdlePool::new(4);
    let (stream, upstream) = pooled().await;
    pool.put(1, stream, LONG);
    drop(upstream);
    let (stream, mut chatty) = pooled().await;
    pool.put(2, stream, LONG);
    chatty.write_all(b"X").await.unwrap();
    let (stream, mut expired) = pooled().await;
    pool.put(3, stream, Duration::from_millis(1));
    sleep(SETTLE).await;
    assert!(pool.take(1).is_none(), "closed by the upstream");
    assert!(pool.take(2).is_none(), "unexpected bytes");
    assert!(pool.take(3).is_none(), "expired");
    assert!(peer_closed(&mut chatty).await && peer_closed(&mut expired).await);
}

#[tokio::test]
async fn sweep_closes_expired_and_dead_connections_only() {
    let pool = IdlePool::new(8);
    let (live, mut live_up) = pooled().await;
    let live_port = local_port(&live);
    let (expired, mut expired_up) = pooled().await;
    let (closed, mut closed_up) = pooled().await;
    let (chatty, mut chatty_up) = pooled().await;
    pool.put(1, expired, Duration::from_millis(1));
    pool.put(1, live, LONG);
    pool.put(2, closed, LONG);
    pool.put(2, chatty, LONG);
    closed_up.shutdown().await.unwrap(); // Half-closed: its side still sees what Sluice does.
    chatty_up.write_all(b"X").await.unwrap();
    sleep(SETTLE).await;

    pool.sweep();
    assert!(peer_closed(&mut expired_up).await, "expired");
    assert!(peer_closed(&mut closed_up).await, "closed");
    assert!(peer_closed(&mut chatty_up).await, "chatty");
    assert!(quiet(&mut live_up).await, "live");
    assert_eq!(local_port(&pool.take(1).expect("live")), live_port);
    assert!(pool.take(1).is_none());
    assert!(pool.take(2).is_none());
}

#[tokio::test]
async fn most_recently_put_is_taken_first() {
    let pool = IdlePool::new(4);
    let (a, _a_up) = pooled().await;
    let (b, _b_up) = pooled().await;
    let (a_port, b_port) = (local_port(&a), local_port(&b));
    pool.put(1, a, LONG);
    pool.put(1, b, LONG);
    assert_eq!(local_port(&pool.take(1).unwrap()), b_port);
    assert_eq!(local_port(&pool.take(1).unwrap()), a_port);
    assert!(pool.take(1).is_none());
}

#[tokio::test]
async fn a_full_key_closes_its_oldest_connection() {
    let pool = IdlePool::new(2);
    let mut ends = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let (stream, upstream) = pooled().await;
        ports.push(local_port(&stream));
        ends.push(upstream);
        pool.put(1, stream, LONG);
    }
    let (stream, _other_up) = pooled().await;
    pool.put(2, stream, LONG); // Another key does not count.
    assert!(peer_closed(&mut ends[0]).await, "the oldest is closed");
    assert!(quiet(&mut ends[1]).await && quiet(&mut ends[2]).await);
    assert_eq!(local_port(&pool.take(1).unwrap()), ports[2]);
    assert_eq!(local_port(&pool.take(1).unwrap()), ports[1]);
    assert!(pool.take(1).is_none());
    assert!(pool.take(2).is_some());
}

// ---- New connections: addresses from the host name ----

/// Upstreams for one upstream `up` named by a host name, whose lookup answers `answer` (and
/// counts its calls).
fn upstreams_for_host(
    answer: Vec<std::net::SocketAddr>,
) -> (
    super::Upstreams,
    std::sync::Arc<crate::route::UpstreamSpec>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let config = crate::config::Config::from_yaml(
        "listen:\n  - addr: 127.0.0.1:0\nupstreams:\n  up:\n    url: http://api.sluice-test.invalid:9\n    connect_timeout: 1s\n\
         routes:\n  - path_prefix: /\n    upstream: up\n",
    )
    .unwrap();
    let router = crate::route::Router::from_config(&config, &crate::route::KeysFiles::new());
    let mut upstreams = super::Upstreams::new(
        None,
        &router,
        &pingora::server::configuration::ServerConf::default(),
    )
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let lookup: super::dns::Lookup = Arc::new(move |host: &str, port: u16| {
        assert_eq!((host, port), ("api.sluice-test.invalid", 9));
        counted.fetch_add(1, Ordering::SeqCst);
        let answer = answer.clone();
        Box::pin(async move { Ok(answer) })
    });
    let spec = router.routes().next().unwrap().upstream.clone();
    upstreams.hosts.insert(
        "up".into(),
        super::dns::HostAddrs::new(
            "api.sluice-test.invalid",
            9,
            Duration::from_secs(60),
            Duration::from_secs(1),
            lookup,
        ),
    );
    (upstreams, spec, calls)
}

/// An address nothing listens on (connections to it are refused).
fn refusing_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn a_new_connection_goes_on_to_the_next_address_when_one_refuses() {
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing = refusing_addr();
    let (upstreams, spec, calls) = upstreams_for_host(vec![refusing, live.local_addr().unwrap()]);
    for _ in 0..3 {
        let conn = within(upstreams.connect(&spec, false, Pooled::Take))
            .await
            .unwrap();
        let (accepted, _) = within(live.accept()).await.unwrap();
        let super::UpstreamConn::H1 { conn, .. } = conn else {
            panic!("an HTTP/1.1 connection")
        };
        assert_eq!(
            local_port(&conn.into_stream()),
            accepted.peer_addr().unwrap().port()
        );
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the answer is kept"
    );
}

#[tokio::test]
async fn when_no_address_connects_the_error_says_how_many_were_tried() {
    let (upstreams, spec, _) = upstreams_for_host(vec![refusing_addr(), refusing_addr()]);
    let Err(error) = within(upstreams.connect(&spec, false, Pooled::Take)).await else {
        panic!("no address connects")
    };
    let text = error.message;
    assert!(
        text.contains("cannot connect to upstream up (2 addresses tried): ConnectError"),
        "{text}"
    );
}
