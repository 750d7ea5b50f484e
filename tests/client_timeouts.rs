//! Client connections that wait too long are closed, with `server.keepalive_timeout` and
//! `server.handshake_timeout` set to a second: an idle HTTP/1.1 connection, a request head that
//! keeps trickling in, an idle HTTP/2 one (sent a GOAWAY first), a TLS handshake or an HTTP/2
//! preface that does not come. With the
//! defaults (60 s) none of them would be closed within these tests' waits.

mod support;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use support::tls as tls_support;
use support::{free_port, Client, Sluice, Step, TempDir, Upstream};
use tls_support::TestCa;

/// Longest wait for a close that a 1 s timeout is due to cause.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn upstream() -> Upstream {
    Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk("data: {\"i\":0}\n\n"),
            Step::chunk("data: [DONE]\n\n"),
            Step::End,
        ]
    })
}

/// Sluice with one listener (`listener_keys`: the lines under it), both client timeouts at 1 s
/// and a route to `upstream`.
fn start(listener_keys: &str, upstream: &Upstream, dir: TempDir) -> Sluice {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        "listen:\n  - addr: {addr}\n{listener_keys}admin: {admin}\nserver:\n  threads: 2\n  keepalive_timeout: 1s\n  handshake_timeout: 1s\n  pid_file: {pid}\n  upgrade_sock: {sock}\nupstreams:\n  up: {{ url: {url} }}\nroutes:\n  - {{ path_prefix: /, upstream: up, provider: openai }}\n",
        pid = dir.path.join("sluice.pid").display(),
        sock = dir.path.join("upgrade.sock").display(),
        url = upstream.url(),
    );
    Sluice::start_with_config(&yaml, addr, admin, dir)
}

/// [`start`] with a TLS listener, its certificate for `edge.test` from a fresh CA (returned, for
/// clients to trust).
fn start_tls(upstream: &Upstream) -> (Sluice, TestCa) {
    let ca = TestCa::new("sluice test ca");
    let dir = TempDir::new();
    let (cert, key) = ca.leaf(&["edge.test"]).write(&dir.path, "edge");
    let tls = format!(
        "    tls:\n      cert: {}\n      key: {}\n",
        cert.display(),
        key.display()
    );
    (start(&tls, upstream, dir), ca)
}

fn stream_request(client: &mut Client) {
    client.post_json("/v1/chat/completions", r#"{"model":"m","stream":true}"#);
    assert_eq!(client.read_head().status, 200);
    // The events, not the chunks: how many reads they came in is the network's doing.
    let body = client.read_chunked_body();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with("data: {\"i\":0}\n\ndata: [DONE]\n\n: sluice-usage {"),
        "{body}"
    );
}

#[test]
fn an_idle_http1_connection_is_closed_after_the_keepalive_timeout() {
    let upstream = upstream();
    let sluice = start("", &upstream, TempDir::new());
    let mut client = Client::connect(sluice.addr);
    stream_request(&mut client);
    // Kept alive: a second request on the same connection is served.
    stream_request(&mut client);
    assert!(client.closed_within(CLOSED_WITHIN), "still open when idle");

    // A connection that never sends a request is closed too (accepted after the kernel's
    // deferred accept lets it through, then waits out the keep-alive).
    let mut silent = Client::connect(sluice.addr);
    assert!(silent.closed_within(CLOSED_WITHIN), "a silent client kept");
}

#[test]
fn a_request_head_that_keeps_trickling_in_is_cut_after_the_keepalive() {
    use std::io::Write;
    let upstream = upstream();
    let sluice = start("", &upstream, TempDir::new());
    let mut client = Client::connect(sluice.addr);
    client.send_raw(b"GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\n");
    let mut writer = client.stream().try_clone().unwrap();
    let started = std::time::Instant::now();
    // A field every 300 ms, each well within the keep-alive of the one before.
    let closed = loop {
        if started.elapsed() > CLOSED_WITHIN {
            break false;
        }
        if client.closed_within(Duration::from_millis(300)) {
            break true;
        }
        if writer.write_all(b"X-Slow: a\r\n").is_err() {
            break true;
        }
    };
    assert!(
        closed,
        "a head still arriving after {CLOSED_WITHIN:?} was kept"
    );
    assert!(upstream.requests().is_empty());
}

#[test]
fn an_idle_http2_connection_is_sent_a_goaway() {
    let upstream = upstream();
    let sluice = start("    h2c: true\n", &upstream, TempDir::new());
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::post("http://sluice.test/v1/chat/completions")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        client = client.ready().await.unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(br#"{"model":"m","stream":true}"#), true)
            .unwrap();
        let mut response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let events = support::h2::read_body(response.body_mut()).await;
        let events = String::from_utf8(events).unwrap();
        assert!(events.contains("data: [DONE]\n\n"), "{events}");
        // No stream open now: the server's GOAWAY (NO_ERROR) ends the client's connection.
        let ended = tokio::time::timeout(CLOSED_WITHIN, connection).await;
        let ended = ended.expect("no GOAWAY to an idle connection").unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    });
}

#[test]
fn a_tls_handshake_that_does_not_finish_is_cut() {
    let upstream = upstream();
    let (sluice, _ca) = start_tls(&upstream);
    // The start of a TLS record, and nothing more.
    let mut client = Client::connect(sluice.addr);
    client.send_raw(&[0x16, 0x03, 0x01]);
    assert!(
        client.closed_within(CLOSED_WITHIN),
        "handshake kept waiting"
    );
}

#[test]
fn an_http2_client_over_tls_that_sends_no_preface_is_cut() {
    let upstream = upstream();
    let (sluice, ca) = start_tls(&upstream);
    runtime().block_on(async {
        use tokio::io::AsyncReadExt;
        let mut handshake = tls_support::connect(sluice.addr, &ca, "edge.test", &[b"h2"]).await;
        assert_eq!(handshake.alpn.as_deref(), Some(&b"h2"[..]));
        // The server's SETTINGS come at once; then, with no preface, the connection ends.
        let mut seen = Vec::new();
        let read = tokio::time::timeout(CLOSED_WITHIN, async {
            let mut buf = [0u8; 256];
            loop {
                match handshake.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "still open without a preface");
        // A SETTINGS frame (type 4) on stream 0 first.
        assert!(seen.len() >= 9 && seen[3] == 4, "{seen:?}");
    });
}
