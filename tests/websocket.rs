//! WebSocket passthrough through the real binary: the handshake both ways, echoes in both
//! directions with no buffering, server push, closes in both directions, the idle timeout and
//! max duration, and the stream slot a session holds. The WebSocket framing here is hand-rolled
//! (RFC 6455 §5.2): just enough to talk to the echo upstream below.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{free_port, Client, Sluice, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;

// ---- frames -------------------------------------------------------------------------------

fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n < 65536 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// One frame from the start of `buf`: (opcode, payload, frame length), or `None` if incomplete.
fn decode(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key = if masked {
        let key: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let payload = buf.get(at..at + len)?;
    let payload = match key {
        Some(key) => payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect(),
        None => payload.to_vec(),
    };
    Some((opcode, payload, at + len))
}

// ---- the upstream: an echo server, or a pusher ----------------------------------------------

#[derive(Default)]
struct WsLog {
    heads: Vec<String>,
    /// When each pushed message was written.
    pushed: Vec<Instant>,
    /// When Sluice's connection to the upstream was seen closed.
    closed: Vec<Instant>,
    /// The payload of each Close frame the upstream received.
    closes: Vec<Vec<u8>>,
}

struct WsUpstream {
    addr: SocketAddr,
    log: Arc<Mutex<WsLog>>,
    _runtime: tokio::runtime::Runtime,
}

impl WsUpstream {
    fn start() -> WsUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(WsLog::default()));
        let accept_log = log.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).unwrap();
                tokio::spawn(serve(stream, accept_log.clone()));
            }
        });
        WsUpstream {
            addr,
            log,
            _runtime: runtime,
        }
    }

    fn head(&self, i: usize) -> String {
        self.log.lock().unwrap().heads[i].clone()
    }

    fn wait_closed(&self, n: usize, wait: Duration) -> Option<Instant> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(at) = self.log.lock().unwrap().closed.get(n - 1).copied() {
                return Some(at);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

async fn serve(mut stream: tokio::net::TcpStream, log: Arc<Mutex<WsLog>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            log.lock().unwrap().closed.push(Instant::now());
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end);
    log.lock().unwrap().heads.push(head.clone());
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    if path.starts_with("/refuse") {
        let body = br#"{"error":"no websocket for you"}"#;
        let reply = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.write_all(body).await;
        return;
    }
    let reply = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
    // The first frame goes out in the same write as the 101 (a greeting), as servers may do.
    let mut first = reply.as_bytes().to_vec();
    first.extend(encode(TEXT, b"hello", None));
    if stream.write_all(&first).await.is_err() {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    if path.starts_with("/vanish") {
        // Gone without a Close frame.
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    }
    if path.starts_with("/close-and-wait") {
        // Starts the closing handshake, then keeps its connection open: the client closes first.
        let _ = writer
            .write_all(&encode(CLOSE, &1000u16.to_be_bytes(), None))
            .await;
        while matches!(reader.read_buf(&mut buf).await, Ok(n) if n > 0) {}
        log.lock().unwrap().closed.push(Instant::now());
        return;
    }
    if path.starts_with("/deaf-push") {
        // A message every 50 ms, and nothing the client sends is ever read.
        let mut i = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let frame = encode(TEXT, format!("tick {i}").as_bytes(), None);
            if writer.write_all(&frame).await.is_err() {
                log.lock().unwrap().closed.push(Instant::now());
                drop(reader);
                return;
            }
            i += 1;
        }
    }
    if path.starts_with("/flood") {
        // 60 KiB messages as fast as they are taken, forever.
        tokio::spawn(async move {
            let frame = encode(TEXT, &[b'x'; 60 * 1024], None);
            while writer.write_all(&frame).await.is_ok() {}
        });
        while matches!(reader.read_buf(&mut buf).await, Ok(n) if n > 0) {}
        log.lock().unwrap().closed.push(Instant::now());
        return;
    }
    if path.starts_with("/push") {
        // A message every 50 ms without any client input, then a close (`/push-forever`: no
        // end).
        let push_log = log.clone();
        let forever = path.starts_with("/push-forever");
        tokio::spawn(async move {
            let mut i = 0;
            while forever || i < 6 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let frame = encode(TEXT, format!("tick {i}").as_bytes(), None);
                if writer.write_all(&frame).await.is_err() {
                    return;
                }
                push_log.lock().unwrap().pushed.push(Instant::now());
                i += 1;
            }
            let _ = writer
                .write_all(&encode(CLOSE, &1000u16.to_be_bytes(), None))
                .await;
            let _ = writer.shutdown().await;
        });
        while matches!(reader.read_buf(&mut buf).await, Ok(n) if n > 0) {
            while let Some((opcode, payload, len)) = decode(&buf) {
                buf.drain(..len);
                if opcode == CLOSE {
                    log.lock().unwrap().closes.push(payload);
                }
            }
        }
        log.lock().unwrap().closed.push(Instant::now());
        return;
    }
    // Echo: every data frame back as it came; a close is answered and ends the connection.
    loop {
        while let Some((opcode, payload, len)) = decode(&buf) {
            buf.drain(..len);
            if opcode == CLOSE {
                log.lock().unwrap().closes.push(payload.clone());
            }
            if writer
                .write_all(&encode(opcode, &payload, None))
                .await
                .is_err()
            {
                log.lock().unwrap().closed.push(Instant::now());
                return;
            }
            if opcode == CLOSE {
                let _ = writer.shutdown().await;
            }
        }
        if reader.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            log.lock().unwrap().closed.push(Instant::now());
            return;
        }
    }
}

// ---- the client -----------------------------------------------------------------------------

struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// The response head of a handshake: status and headers (lowercase names).
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl WsClient {
    fn connect(sluice: &Sluice, path: &str) -> (WsClient, Head) {
        let stream = TcpStream::connect(sluice.addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut client = WsClient {
            stream,
            buf: Vec::new(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: sluice.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\nx-request-id: ws-1\r\n\r\n"
        );
        client.stream.write_all(request.as_bytes()).unwrap();
        let head = client.read_head();
        (client, head)
    }

    fn read_head(&mut self) -> Head {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().expect("the response head");
        };
        let text = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        let mut lines = text.lines();
        let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Head {
            status: status.parse().unwrap(),
            headers,
        }
    }

    /// Reads more bytes; `None` at EOF (or a reset).
    fn fill(&mut self) -> Option<usize> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(n)
            }
        }
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) {
        let frame = encode(opcode, payload, Some([0x12, 0x34, 0x56, 0x78]));
        self.stream.write_all(&frame).unwrap();
    }

    /// The next frame; `None` when the connection ended first.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, payload, len)) = decode(&self.buf) {
                self.buf.drain(..len);
                return Some((opcode, payload));
            }
            self.fill()?;
        }
    }

    /// True when the connection ends (EOF or reset) within `wait`, with no more frames.
    fn ends_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
            || matches!(self.stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// A Close frame's payload: the code, then the reason.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

fn sluice_for(upstream: &WsUpstream, route: &str, top: &str) -> Sluice {
    Sluice::start(&format!(
        "upstreams:\n  ws:\n    url: http://{}\nroutes:\n  - path_prefix: /\n    upstream: ws\n{route}{top}",
        upstream.addr
    ))
}

fn in_flight(sluice: &Sluice) -> Value {
    Client::connect(sluice.admin).get("/limits").json()["in_flight"].clone()
}

fn wait_slots_free(sluice: &Sluice) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_flight(sluice) != 0 {
        assert!(Instant::now() < deadline, "a slot is still held");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn handshake_and_echoes_both_ways_without_delay() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(&upstream, "", "");
    let (mut client, head) = WsClient::connect(&sluice, "/echo?room=1");
    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(head.header("connection"), Some("upgrade"));
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(head.header("sec-websocket-protocol"), Some("chat"));
    assert_eq!(head.header("x-request-id"), Some("ws-1"));
    assert_eq!(head.header("content-length"), None);
    assert_eq!(head.header("transfer-encoding"), None);

    let sent_upstream = upstream.head(0).to_ascii_lowercase();
    assert!(
        sent_upstream.starts_with("get /echo?room=1 http/1.1\r\n"),
        "{sent_upstream}"
    );
    for line in [
        format!("host: {}\r\n", upstream.addr),
        "upgrade: websocket\r\n".to_string(),
        "connection: upgrade\r\n".to_string(),
        "sec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n".to_string(),
        "sec-websocket-version: 13\r\n".to_string(),
        "sec-websocket-protocol: chat\r\n".to_string(),
    ] {
        assert!(
            sent_upstream.contains(&line),
            "{line:?} missing in {sent_upstream}"
        );
    }

    // The greeting the upstream wrote in the same packet as its 101.
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    for i in 0..20 {
        let message = format!("message {i}");
        let start = Instant::now();
        client.send(TEXT, message.as_bytes());
        let echo = client.recv().expect("an echo");
        let round_trip = start.elapsed();
        assert_eq!(echo, (TEXT, message.into_bytes()));
        assert!(
            round_trip < Duration::from_millis(100),
            "round trip {i} took {round_trip:?}"
        );
    }
    // A message bigger than any one read on the way, byte for byte.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    client.send(BINARY, &big);
    assert_eq!(client.recv(), Some((BINARY, big)));

    // Close handshake: the client's close is echoed, then the upstream closes and so does Sluice.
    client.send(CLOSE, &1000u16.to_be_bytes());
    assert_eq!(client.recv(), Some((CLOSE, 1000u16.to_be_bytes().to_vec())));
    assert!(client.ends_within(Duration::from_secs(1)));
    assert!(upstream.wait_closed(1, Duration::from_secs(1)).is_some());
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"completed\",route=\"/\"}",
        1.0,
    );
    let records = sluice.wait_ledger(1);
    assert_eq!(records[0]["status"], 101);
    assert_eq!(records[0]["outcome"], "completed");
    assert_eq!(records[0]["usage_source"], "none");
}

#[test]
fn an_http2_upstream_gets_the_handshake_over_http1() {
    // `http2: true` over http:// is HTTP/2 by prior knowledge for ordinary requests; a WebSocket
    // handshake (HTTP/1.1 only) takes an HTTP/1.1 connection to the same upstream instead.
    let upstream = WsUpstream::start();
    let sluice = Sluice::start(&format!(
        "upstreams:\n  ws:\n    url: http://{}\n    http2: true\nroutes:\n  - path_prefix: /\n    upstream: ws\n",
        upstream.addr
    ));
    let (mut client, head) = WsClient::connect(&sluice, "/echo");
    assert_eq!(head.status, 101);
    assert!(upstream
        .head(0)
        .to_ascii_lowercase()
        .starts_with("get /echo http/1.1\r\n"));
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    client.send(TEXT, b"over h1");
    assert_eq!(client.recv(), Some((TEXT, b"over h1".to_vec())));
}

#[test]
fn server_push_arrives_message_by_message() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(&upstream, "", "");
    let (mut client, head) = WsClient::connect(&sluice, "/push");
    assert_eq!(head.status, 101);
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    let mut arrived = Vec::new();
    for i in 0..6 {
        let frame = client.recv().expect("a pushed message");
        arrived.push(Instant::now());
        assert_eq!(frame, (TEXT, format!("tick {i}").into_bytes()));
    }
    let pushed = upstream.log.lock().unwrap().pushed.clone();
    for (i, (arrived, pushed)) in arrived.iter().zip(&pushed).enumerate() {
        let delay = arrived.saturating_duration_since(*pushed);
        assert!(delay < Duration::from_millis(20), "push {i} took {delay:?}");
    }
    // The messages came one by one, about 50 ms apart, not in a batch.
    let spread = arrived[5].duration_since(arrived[0]);
    assert!(spread > Duration::from_millis(200), "spread {spread:?}");
    // The upstream's close frame, then the end of the connection.
    assert_eq!(client.recv().map(|f| f.0), Some(CLOSE));
    assert!(client.ends_within(Duration::from_secs(1)));
}

#[test]
fn client_leaving_closes_the_upstream_and_frees_the_slot() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(&upstream, "", "limits:\n  global_streams: 1\n");
    let (mut client, head) = WsClient::connect(&sluice, "/echo");
    assert_eq!(head.status, 101);
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    assert_eq!(
        in_flight(&sluice),
        1,
        "a WebSocket session holds a stream slot"
    );

    let (_, refused) = WsClient::connect(&sluice, "/echo");
    assert_eq!(refused.status, 429);

    // The client goes away without a close frame.
    let left = Instant::now();
    drop(client);
    let closed = upstream
        .wait_closed(1, Duration::from_secs(2))
        .expect("the upstream connection was closed");
    let took = closed.saturating_duration_since(left);
    assert!(
        took < Duration::from_millis(100),
        "upstream closed after {took:?}"
    );
    // Told why, between two frames, before the close.
    assert_eq!(
        upstream.log.lock().unwrap().closes,
        [close_payload(1001, "client left")]
    );
    wait_slots_free(&sluice);
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"client_disconnect\",route=\"/\"}",
        1.0,
    );
    let (mut again, head) = WsClient::connect(&sluice, "/echo");
    assert_eq!(head.status, 101, "the slot was released");
    assert_eq!(again.recv(), Some((TEXT, b"hello".to_vec())));
}

#[test]
fn idle_timeout_and_max_duration_close_both_sides() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(
        &upstream,
        "    idle_timeout: 300ms\n    max_duration: 1s\n",
        "",
    );
    // Idle: after the greeting, nothing moves either way.
    let (mut client, head) = WsClient::connect(&sluice, "/echo");
    assert_eq!(head.status, 101);
    let opened = Instant::now();
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    // Traffic in either direction keeps the session alive past the idle timeout.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        client.send(TEXT, b"still here");
        assert_eq!(client.recv(), Some((TEXT, b"still here".to_vec())));
    }
    assert!(opened.elapsed() > Duration::from_millis(600));
    let quiet = Instant::now();
    // A Close frame that says why (a client reports a bare TCP close as 1006, abnormal), then
    // the end of the connection.
    assert_eq!(
        client.recv(),
        Some((CLOSE, close_payload(1001, "idle timeout")))
    );
    let took = quiet.elapsed();
    assert!(client.ends_within(Duration::from_secs(1)));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(600),
        "closed after {took:?} of silence"
    );
    assert!(upstream.wait_closed(1, Duration::from_secs(1)).is_some());
    assert_eq!(
        upstream.log.lock().unwrap().closes,
        [close_payload(1001, "idle timeout")]
    );
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"idle_timeout\",route=\"/\"}",
        1.0,
    );

    // Max duration: the upstream pushes every 50 ms and never stops; the session ends at 1 s.
    let (mut client, head) = WsClient::connect(&sluice, "/push-forever");
    let opened = Instant::now();
    assert_eq!(head.status, 101);
    let mut frames = 0;
    let mut last = None;
    while let Some(frame) = client.recv() {
        frames += 1;
        last = Some(frame);
    }
    let lived = opened.elapsed();
    assert_eq!(last, Some((CLOSE, close_payload(1001, "max duration"))));
    assert!(
        lived >= Duration::from_millis(950) && lived < Duration::from_millis(1500),
        "lived {lived:?}"
    );
    assert!(frames > 10, "{frames} frames");
    assert!(upstream.wait_closed(2, Duration::from_secs(1)).is_some());
    assert_eq!(
        upstream.log.lock().unwrap().closes[1..],
        [close_payload(1001, "max duration")]
    );
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"max_duration\",route=\"/\"}",
        1.0,
    );
}

#[test]
fn an_upstream_gone_without_a_close_frame_is_a_1014_for_the_client() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(&upstream, "", "");
    let (mut client, head) = WsClient::connect(&sluice, "/vanish");
    assert_eq!(head.status, 101);
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    assert_eq!(
        client.recv(),
        Some((CLOSE, close_payload(1014, "upstream closed the connection")))
    );
    assert!(client.ends_within(Duration::from_secs(1)));
    let records = sluice.wait_ledger(1);
    assert_eq!(records[0]["outcome"], "upstream_error", "{}", records[0]);
}

/// A closing handshake the upstream began and the client answered is the session's orderly end,
/// whichever side then closes its connection first.
#[test]
fn a_closing_handshake_begun_by_the_upstream_is_a_completed_session() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(&upstream, "", "");
    let (mut client, head) = WsClient::connect(&sluice, "/close-and-wait");
    assert_eq!(head.status, 101);
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    assert_eq!(client.recv(), Some((CLOSE, 1000u16.to_be_bytes().to_vec())));
    client.send(CLOSE, &1000u16.to_be_bytes());
    drop(client);
    let records = sluice.wait_ledger(1);
    assert_eq!(records[0]["outcome"], "completed", "{}", records[0]);
}

#[test]
fn a_refused_handshake_is_an_ordinary_response() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(&upstream, "", "");
    let (mut client, head) = WsClient::connect(&sluice, "/refuse");
    assert_eq!(head.status, 403);
    let len: usize = head.header("content-length").unwrap().parse().unwrap();
    while client.buf.len() < len {
        client.fill().unwrap();
    }
    assert_eq!(&client.buf[..len], br#"{"error":"no websocket for you"}"#);
}

/// Sluice in front of `upstream`, stopped by a signal with a 1 s grace period and a ledger.
fn sluice_with_a_grace_period(upstream: &WsUpstream) -> Sluice {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = TempDir::new();
    let yaml = format!(
        "listen:\n  - addr: {addr}\nadmin: {admin}\nserver:\n  threads: 2\n  grace_period: 1s\n  pid_file: {pid}\n  upgrade_sock: {sock}\nusage:\n  ledger: {ledger}\nupstreams:\n  ws:\n    url: http://{up}\nroutes:\n  - path_prefix: /\n    upstream: ws\n",
        pid = dir.path.join("sluice.pid").display(),
        sock = dir.path.join("upgrade.sock").display(),
        ledger = dir.path.join("usage.jsonl").display(),
        up = upstream.addr,
    );
    Sluice::start_with_config(&yaml, addr, admin, dir)
}

#[test]
fn a_session_still_open_when_the_grace_period_is_over_gets_a_going_away_close() {
    let upstream = WsUpstream::start();
    let mut sluice = sluice_with_a_grace_period(&upstream);
    let (mut client, head) = WsClient::connect(&sluice, "/push-forever");
    assert_eq!(head.status, 101);
    let signalled = Instant::now();
    sluice.signal("TERM");
    // Pushed messages keep coming through the grace period, then Sluice says why it ends.
    let mut last = None;
    while let Some(frame) = client.recv() {
        last = Some(frame);
    }
    let ended = signalled.elapsed();
    assert_eq!(
        last,
        Some((CLOSE, close_payload(1001, "server shutting down")))
    );
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_secs(3),
        "ended {ended:?} after SIGTERM"
    );
    assert!(upstream.wait_closed(1, Duration::from_secs(2)).is_some());
    assert_eq!(
        upstream.log.lock().unwrap().closes,
        [close_payload(1001, "server shutting down")]
    );
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let records = sluice.ledger();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "shutdown");
}

/// A session whose client stopped reading (Sluice's write to it waits) still ends at the end of
/// a shutdown's grace period, with its usage record written before the process exits. Before,
/// the waiting write watched only the clock: the process was stopped under it, without the
/// record (and, with Redis limits, with its lease left behind).
#[test]
fn a_session_whose_client_stopped_reading_still_ends_at_the_grace_period() {
    let upstream = WsUpstream::start();
    let mut sluice = sluice_with_a_grace_period(&upstream);
    let (client, head) = WsClient::connect(&sluice, "/flood");
    assert_eq!(head.status, 101);
    // The client reads nothing more; the buffers on the way fill up.
    std::thread::sleep(Duration::from_millis(300));
    sluice.signal("TERM");
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let records = sluice.ledger();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "shutdown", "{}", records[0]);
    drop(client);
}

/// The two directions are copied independently: an upstream that reads nothing holds back what
/// the client sends it, never what it sends the client. Before, Sluice's write to the upstream
/// waited with both directions stopped, and the client got nothing until the idle timeout.
#[test]
fn a_side_that_stops_reading_holds_back_only_what_goes_to_it() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(&upstream, "", "");
    let (mut client, head) = WsClient::connect(&sluice, "/deaf-push");
    assert_eq!(head.status, 101);
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    // 32 MiB the upstream never reads: the writes stop once the buffers on the way are full.
    let mut writer = client.stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let frame = encode(BINARY, &vec![0u8; 1 << 20], Some([1, 2, 3, 4]));
        for _ in 0..32 {
            if writer.write_all(&frame).is_err() {
                return;
            }
        }
    });
    // Messages keep coming long after the client's writes stopped (tick 40 is ~2 s in).
    let started = Instant::now();
    loop {
        let (opcode, payload) = client.recv().expect("the upstream's messages stopped");
        assert_eq!(opcode, TEXT);
        let i: u32 = String::from_utf8(payload).unwrap()["tick ".len()..]
            .parse()
            .unwrap();
        if i >= 40 {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// Frames a client sends in the same write as its handshake (before the `101` came) reach the
/// upstream, as do those the upstream sends with its `101` (the greeting).
#[test]
fn frames_sent_with_the_handshake_reach_the_other_side() {
    let upstream = WsUpstream::start();
    let sluice = sluice_for(&upstream, "", "");
    let mut stream = TcpStream::connect(sluice.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut first = b"GET /echo HTTP/1.1\r\nHost: sluice.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    first.extend(encode(TEXT, b"early", Some([9, 8, 7, 6])));
    stream.write_all(&first).unwrap();
    let mut client = WsClient {
        stream,
        buf: Vec::new(),
    };
    assert_eq!(client.read_head().status, 101);
    assert_eq!(client.recv(), Some((TEXT, b"hello".to_vec())));
    assert_eq!(client.recv(), Some((TEXT, b"early".to_vec())));
}
