//! HTTP/2 clients (cleartext, prior knowledge): event streams arrive event by event, usage
//! comes as response trailers when asked for with `TE: trailers`, and a reset stream aborts its
//! upstream at once.

mod support;

use bytes::Bytes;
use std::time::{Duration, Instant};
use support::h2::{h2_over, read_body};
use support::{first_access_log_line, Sluice, Step, Upstream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn h2_client(sluice: &Sluice) -> h2::client::SendRequest<Bytes> {
    h2_over(tokio::net::TcpStream::connect(sluice.addr).await.unwrap()).await
}

/// Sluice on an h2c listener, with one route (`/`, `route` its further keys) to `upstream`; `rest`
/// are further top-level keys.
fn h2c_routed_to(upstream: &Upstream, route: &str, rest: &str) -> Sluice {
    Sluice::start_h2c(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n{route}{rest}",
        upstream.url()
    ))
}

fn anthropic_upstream() -> Upstream {
    let stream = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/anthropic_text.sse"
    ))
    .unwrap();
    Upstream::start(move |_| {
        let mut steps = vec![Step::sse_head()];
        for event in stream.split_inclusive(|&b| b == b'\n') {
            steps.push(Step::chunk(event));
        }
        steps.push(Step::End);
        steps
    })
}

/// Sends `request` with a stream request's body on a stream of its own; its response.
async fn stream_request(
    client: &h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
) -> http::Response<h2::RecvStream> {
    let mut client = client.clone().ready().await.unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(
        Bytes::from_static(br#"{"model":"claude","stream":true}"#),
        true,
    )
    .unwrap();
    response.await.unwrap()
}

fn request(te_trailers: bool) -> http::Request<()> {
    let mut builder = http::Request::post("http://sluice.test/v1/messages")
        .header("content-type", "application/json");
    if te_trailers {
        builder = builder.header("te", "trailers");
    }
    builder.body(()).unwrap()
}

#[test]
fn usage_trailers_on_http2_and_concurrent_streams() {
    let upstream = anthropic_upstream();
    let sluice = h2c_routed_to(&upstream, "    provider: anthropic\n", "");
    runtime().block_on(async {
        let client = h2_client(&sluice).await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let mut client = client.clone().ready().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let (response, mut send) = client.send_request(request(i % 2 == 0), false).unwrap();
                send.send_data(
                    Bytes::from_static(br#"{"model":"claude","stream":true}"#),
                    true,
                )
                .unwrap();
                let response = response.await.unwrap();
                assert_eq!(response.status(), 200);
                let mut stream = response.into_body();
                let text = read_body(&mut stream).await;
                let trailers = stream.trailers().await.unwrap();
                (i, String::from_utf8(text).unwrap(), trailers)
            }));
        }
        for task in tasks {
            let (i, text, trailers) = task.await.unwrap();
            assert!(text.contains("event: message_stop"), "{text}");
            assert!(text.contains(": sluice-usage {"));
            if i % 2 == 0 {
                let trailers = trailers.expect("trailers were asked for");
                assert_eq!(trailers["x-sluice-usage-input-tokens"], "25");
                assert_eq!(trailers["x-sluice-usage-output-tokens"], "15");
                assert_eq!(trailers["x-sluice-usage-total-tokens"], "40");
                assert_eq!(trailers["x-sluice-usage-source"], "provider");
            } else {
                assert!(trailers.is_none(), "trailers only when asked for");
            }
        }
    });
    assert_eq!(sluice.wait_ledger(8).len(), 8);
}

#[test]
fn reset_stream_aborts_its_upstream_promptly() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk("data: {\"i\":0}\n\n"),
            Step::Hold,
        ]
    });
    let sluice = h2c_routed_to(&upstream, "    heartbeat: off\n", "");
    let left = runtime().block_on(async {
        let mut client = h2_client(&sluice).await;
        let (response, mut send) = client.send_request(request(false), false).unwrap();
        send.send_data(Bytes::from_static(br#"{"stream":true}"#), true)
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"data: {\"i\":0}\n\n");
        let left = Instant::now();
        // Dropping the body and the stream handle resets the stream (RST_STREAM CANCEL); the
        // connection itself stays open.
        drop(body);
        drop(send);
        tokio::time::sleep(Duration::from_millis(300)).await;
        left
    });
    let closed = upstream
        .wait_closed(Duration::from_secs(5))
        .expect("upstream closed");
    let delay = closed.saturating_duration_since(left);
    assert!(
        delay < Duration::from_millis(100),
        "upstream closed after {delay:?}"
    );
}

/// Streams are counted per request: two streams multiplexed on one connection take two slots.
#[test]
fn each_http2_stream_takes_its_own_slot() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk("event: ping\ndata: {}\n\n"),
            Step::Hold,
        ]
    });
    let sluice = h2c_routed_to(
        &upstream,
        "    provider: anthropic\n",
        "auth: { mode: passthrough }\nlimits: { per_user_streams: 2 }\n",
    );
    runtime().block_on(async {
        let client = h2_client(&sluice).await;
        let mut statuses = Vec::new();
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut client = client.clone().ready().await.unwrap();
            let mut request = request(false);
            request
                .headers_mut()
                .insert("x-api-key", http::HeaderValue::from_static("sk-ant-h2"));
            let (response, mut send) = client.send_request(request, false).unwrap();
            send.send_data(
                Bytes::from_static(br#"{"model":"claude","stream":true}"#),
                true,
            )
            .unwrap();
            let response = response.await.unwrap();
            statuses.push(response.status().as_u16());
            if response.status() == 429 {
                assert_eq!(response.headers()["x-ratelimit-limit-streams"], "2");
                assert_eq!(response.headers()["x-ratelimit-remaining-streams"], "0");
            }
            held.push(response);
        }
        assert_eq!(statuses, [200, 200, 429]);
    });
    assert_eq!(upstream.requests().len(), 2);
}

/// At SIGTERM an HTTP/2 client is sent a GOAWAY: the streams it has open are served to their
/// end (every event, a usage record each), a stream it opens afterwards is not, and the process
/// leaves once the open streams have ended.
#[test]
fn sigterm_sends_goaway_and_serves_open_streams_to_their_end() {
    const EVENTS: usize = 20;
    let upstream = Upstream::start(|_| {
        let mut steps = vec![Step::sse_head()];
        for i in 0..EVENTS {
            steps.push(Step::chunk(format!("data: {{\"i\":{i}}}\n\n")));
            steps.push(Step::sleep_ms(50));
        }
        steps.push(Step::chunk("data: [DONE]\n\n"));
        steps.push(Step::End);
        steps
    });
    let mut sluice = h2c_routed_to(
        &upstream,
        "    provider: openai\n    usage_comment: false\n",
        "",
    );
    let signalled = runtime().block_on(async {
        let client = h2_client(&sluice).await;
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let mut client = client.clone().ready().await.unwrap();
            let (response, mut send) = client.send_request(request(false), false).unwrap();
            send.send_data(Bytes::from_static(br#"{"model":"m","stream":true}"#), true)
                .unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            bodies.push(response.into_body());
        }
        sluice.signal("TERM");
        let signalled = Instant::now();
        let readers: Vec<_> = bodies
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(
                    async move { String::from_utf8(read_body(&mut stream).await).unwrap() },
                )
            })
            .collect();
        // The GOAWAY has arrived well before the open streams end (a second).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let late = match client.clone().ready().await {
            Ok(mut client) => match client.send_request(request(false), true) {
                Ok((response, _)) => response.await.map(|r| r.status()).ok(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        assert_eq!(late, None, "a stream opened after the GOAWAY was served");
        for reader in readers {
            let text = reader.await.unwrap();
            assert_eq!(text.matches("data: {\"i\":").count(), EVENTS, "{text}");
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        }
        signalled
    });
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        signalled.elapsed()
    );
    assert_eq!(sluice.ledger().len(), 2);
    assert_eq!(upstream.requests().len(), 2);
}

/// A client that keeps opening malformed streams (here, a `Host` that contradicts `:authority`)
/// has each one refused with a 400 while its other streams are served, and its connection closed
/// at the 32nd, as Pingora's own HTTP/2 server would. (Malformed framing the `h2` crate catches
/// itself, such as two different `Content-Length`s, is reset there and not counted.)
#[test]
fn malformed_streams_are_refused_and_too_many_close_the_connection() {
    let upstream = anthropic_upstream();
    let sluice = h2c_routed_to(&upstream, "    provider: anthropic\n", "");
    fn malformed() -> http::Request<()> {
        let mut request = request(false);
        request
            .headers_mut()
            .insert("host", http::HeaderValue::from_static("elsewhere.test"));
        request
    }
    runtime().block_on(async {
        let client = h2_client(&sluice).await;
        // Sends one request on the connection; `Err` when it was refused (reset, or the
        // connection gone), else its status.
        async fn send(
            client: &h2::client::SendRequest<Bytes>,
            request: http::Request<()>,
            body: Option<&'static [u8]>,
        ) -> Result<u16, String> {
            let mut client = client.clone().ready().await.map_err(|e| e.to_string())?;
            let (response, mut send) = client
                .send_request(request, body.is_none())
                .map_err(|e| e.to_string())?;
            if let Some(body) = body {
                send.send_data(Bytes::from_static(body), true)
                    .map_err(|e| e.to_string())?;
            }
            let response = response.await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                chunk.map_err(|e| e.to_string())?;
            }
            Ok(status)
        }
        for i in 0..5 {
            let refused = send(&client, malformed(), None).await;
            assert_eq!(refused, Ok(400), "malformed stream {i}");
        }
        // Its other streams are served.
        let valid = send(&client, request(false), Some(br#"{"stream":true}"#)).await;
        assert_eq!(valid, Ok(200));
        for i in 5..31 {
            let refused = send(&client, malformed(), None).await;
            assert_eq!(refused, Ok(400), "malformed stream {i}");
        }
        // The 32nd closes the connection (its 400 may not get out first, as with Pingora's loop)
        // and nothing more is served on it.
        let last = send(&client, malformed(), None).await;
        assert_ne!(last, Ok(200));
        let after = send(&client, request(false), Some(br#"{"stream":true}"#)).await;
        assert!(
            after.is_err(),
            "served after 32 malformed streams: {after:?}"
        );
        // A new connection is served as any other.
        let fresh = h2_client(&sluice).await;
        let valid = send(&fresh, request(false), Some(br#"{"stream":true}"#)).await;
        assert_eq!(valid, Ok(200));
    });
    // Only the valid streams reached the upstream.
    assert_eq!(upstream.requests().len(), 2);
}

/// An h2c listener takes HTTP/1.1 as well: a client that does not open with the HTTP/2 preface
/// is served over HTTP/1.1, one that does over HTTP/2, also when its preface comes in two writes.
#[test]
fn an_h2c_listener_serves_http1_and_a_preface_in_two_writes() {
    let upstream = anthropic_upstream();
    let sluice = h2c_routed_to(&upstream, "    provider: anthropic\n", "");
    let mut client = support::Client::connect(sluice.addr);
    client.send(
        "POST",
        "/v1/messages",
        &[("content-type", "application/json")],
        br#"{"stream":true}"#,
    );
    let response = client.read_response();
    assert_eq!(response.status, 200);
    let body = String::from_utf8(response.body).unwrap();
    assert!(body.contains("message_stop"), "{body}");

    runtime().block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        // The first half of the preface, then a pause: the h2 client writes the rest.
        tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut client = h2_over(Rest(tcp, 16)).await;
        let (response, mut send) = client.send_request(request(false), false).unwrap();
        send.send_data(Bytes::from_static(br#"{"stream":true}"#), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let all = read_body(&mut response.into_body()).await;
        assert!(String::from_utf8_lossy(&all).contains("message_stop"));
    });
}

/// The server's first frames may wait for a request that came with the client's preface, never
/// for one that has not: a client that sends its preface and SETTINGS, then waits for the
/// server's before it sends anything more, gets the server's SETTINGS and the acknowledgement of
/// its own.
#[test]
fn a_client_that_waits_for_the_servers_settings_gets_them() {
    let upstream = anthropic_upstream();
    let sluice = h2c_routed_to(&upstream, "    provider: anthropic\n", "");
    runtime().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
        // The preface and an empty SETTINGS frame, in one write.
        let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        tcp.write_all(&opening).await.unwrap();
        // Frames as (type, flags), until the server has sent its SETTINGS and an ACK.
        let mut frames = Vec::new();
        let mut seen = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), async {
            let mut buf = [0u8; 1024];
            while !(frames.contains(&(4, 0)) && frames.contains(&(4, 1))) {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed; frames so far {frames:?}");
                seen.extend_from_slice(&buf[..n]);
                while seen.len() >= 9 {
                    let len = u32::from_be_bytes([0, seen[0], seen[1], seen[2]]) as usize;
                    if seen.len() < 9 + len {
                        break;
                    }
                    frames.push((seen[3], seen[4]));
                    seen.drain(..9 + len);
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "the server's SETTINGS held back: frames {frames:?}"
        );
        assert_eq!(
            frames[0],
            (4, 0),
            "the server's first frame is its SETTINGS"
        );
        // Still before any request: a PING (a client's liveness check) is answered at once.
        tcp.write_all(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(2), async {
            let mut buf = [0u8; 1024];
            loop {
                while seen.len() >= 9 {
                    let len = u32::from_be_bytes([0, seen[0], seen[1], seen[2]]) as usize;
                    if seen.len() < 9 + len {
                        break;
                    }
                    if (seen[3], seen[4]) == (6, 1) {
                        return;
                    }
                    seen.drain(..9 + len);
                }
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the PING's answer");
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(pong.is_ok(), "the PING's answer held back");
    });
}

/// An HTTP/2 request body that stops coming is answered `408` once `server.request_body_timeout`
/// has passed, as over HTTP/1.1: a stream never bounded otherwise would hold its slot forever.
#[test]
fn an_http2_request_body_that_stops_coming_gets_a_408() {
    let upstream = anthropic_upstream();
    // Right after the support's own `server:` keys.
    let sluice = Sluice::start_h2c(&format!(
        "  request_body_timeout: 1s\nupstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: anthropic\n",
        upstream.url()
    ));
    runtime().block_on(async {
        let mut client = h2_client(&sluice).await;
        let started = Instant::now();
        let (response, mut send) = client.send_request(request(false), false).unwrap();
        send.send_data(Bytes::from_static(br#"{"model":"#), false)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("no answer to a stalled body")
            .unwrap();
        assert_eq!(response.status(), 408);
        assert!(started.elapsed() < Duration::from_secs(5));
        let body = read_body(&mut response.into_body()).await;
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.contains("request_body_timeout") || body.contains("request body"),
            "{body}"
        );
    });
    assert!(upstream.requests().is_empty());
}

/// A request body sent in many small DATA frames, as a client writing each piece of its body as
/// it makes it does, is read like any other: the `h2` crate's default budget for small frames
/// (32 KiB of framing overhead) closed the whole connection with `ENHANCE_YOUR_CALM` after a few
/// hundred of them.
#[test]
fn a_body_in_many_small_data_frames_is_read() {
    let upstream = anthropic_upstream();
    let sluice = h2c_routed_to(&upstream, "    provider: anthropic\n", "");
    runtime().block_on(async {
        let mut client = h2_client(&sluice).await;
        let (response, mut send) = client.send_request(request(false), false).unwrap();
        // 60 KiB (within the stream's first window, so all of it may come in one burst) in
        // 100-byte frames: a JSON object with one long string.
        let mut body = br#"{"model":"claude","stream":true,"pad":""#.to_vec();
        body.resize(60 * 1024 - 2, b'x');
        body.extend_from_slice(br#""}"#);
        let pieces: Vec<Bytes> = body.chunks(100).map(Bytes::copy_from_slice).collect();
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            send.send_data(piece, i == last).unwrap();
        }
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("no answer")
            .expect("the connection was closed");
        assert_eq!(response.status(), 200);
        let all = read_body(&mut response.into_body()).await;
        assert!(String::from_utf8_lossy(&all).contains("message_stop"));
    });
    assert_eq!(upstream.requests()[0].body.len(), 60 * 1024);
}

/// A plain body the upstream cuts short is cut short for the client too: its stream is reset,
/// not ended as if it were whole (`END_STREAM`), which a client given no length could not tell
/// from a whole body.
#[test]
fn a_plain_body_cut_short_by_the_upstream_resets_the_stream() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::chunked_head("application/json"),
            Step::chunk("{\"partial\":"),
            Step::Sleep(Duration::from_millis(50)),
            Step::Close,
        ]
    });
    let sluice = h2c_routed_to(&upstream, "", "");
    runtime().block_on(async {
        let mut client = h2_client(&sluice).await;
        let get = http::Request::get("http://sluice.test/v1/models")
            .body(())
            .unwrap();
        let (response, _send) = client.send_request(get, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut got = Vec::new();
        let end = loop {
            match body.data().await {
                Some(Ok(data)) => got.extend_from_slice(&data),
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        assert_eq!(got, b"{\"partial\":");
        let reset = end.expect("the cut body ended as if whole");
        assert_eq!(reset.reason(), Some(h2::Reason::INTERNAL_ERROR), "{reset}");
    });
}

/// Before its first request as after, an HTTP/2 connection with no stream open is sent a GOAWAY
/// at `server.keepalive_timeout`, and closed as long again later, whatever frames that open no
/// stream its client sends meanwhile (here a PING or a WINDOW_UPDATE every 250 ms). Before, each
/// such frame began the keep-alive again until the first request: a client that pinged and
/// never asked for anything held its connection for ever.
#[test]
fn a_client_that_only_pings_is_sent_a_goaway_at_the_keepalive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    #[derive(Debug)]
    enum Seen {
        Settings,
        GoAway(Instant),
        Closed(Instant),
    }
    let upstream = anthropic_upstream();
    // Right after the support's own `server:` keys.
    let sluice = Sluice::start_h2c(&format!(
        "  keepalive_timeout: 1s\nupstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
        upstream.url()
    ));
    let (opened, goaway, closed) = runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (mut read, mut write) = tcp.into_split();
        // The preface and an empty SETTINGS frame.
        let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        write.write_all(&opening).await.unwrap();
        let opened = Instant::now();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = Vec::new();
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                got.extend_from_slice(&buf[..n]);
                while got.len() >= 9 {
                    let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
                    if got.len() < 9 + len {
                        break;
                    }
                    match (got[3], got[4]) {
                        (4, 0) => drop(seen_tx.send(Seen::Settings)),
                        (7, _) => drop(seen_tx.send(Seen::GoAway(Instant::now()))),
                        _ => {}
                    }
                    got.drain(..9 + len);
                }
            }
            let _ = seen_tx.send(Seen::Closed(Instant::now()));
        });
        let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let window_update = [0u8, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut sent = 0usize;
        let (mut goaway, mut closed) = (None, None);
        while closed.is_none() && opened.elapsed() < Duration::from_secs(6) {
            tokio::select! {
                seen = seen.recv() => match seen {
                    // Acknowledged, as a client does.
                    Some(Seen::Settings) => {
                        let _ = write.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                    }
                    Some(Seen::GoAway(at)) => goaway = goaway.or(Some(at)),
                    Some(Seen::Closed(at)) => closed = Some(at),
                    None => unreachable!(),
                },
                _ = tick.tick() => {
                    let frame: &[u8] = if sent.is_multiple_of(2) { &ping } else { &window_update };
                    let _ = write.write_all(frame).await;
                    sent += 1;
                }
            }
        }
        (opened, goaway, closed)
    });
    let goaway = goaway
        .expect("no GOAWAY in 6 s with a keep-alive of 1 s")
        .duration_since(opened);
    assert!(
        goaway >= Duration::from_millis(900) && goaway < Duration::from_millis(2000),
        "GOAWAY after {goaway:?}"
    );
    let closed = closed.expect("not closed in 6 s").duration_since(opened);
    assert!(
        closed >= goaway + Duration::from_millis(900) && closed < Duration::from_millis(3500),
        "closed after {closed:?} (GOAWAY after {goaway:?})"
    );
    assert!(upstream.requests().is_empty());
}

/// One request on `client` with a header `x-big` of `size` bytes: its status, its
/// `x-request-id` and its body.
async fn with_big_header(
    client: &h2::client::SendRequest<Bytes>,
    size: usize,
) -> Result<(u16, Option<String>, String), String> {
    let mut client = client.clone().ready().await.map_err(|e| e.to_string())?;
    let mut request = request(false);
    if size > 0 {
        let value = http::HeaderValue::from_str(&"a".repeat(size)).unwrap();
        request.headers_mut().insert("x-big", value);
    }
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    send.send_data(Bytes::from_static(br#"{"stream":true}"#), true)
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body = response.into_body();
    let mut all = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| e.to_string())?;
        body.flow_control().release_capacity(data.len()).unwrap();
        all.extend_from_slice(&data);
    }
    Ok((status, request_id, String::from_utf8(all).unwrap()))
}

/// `server.max_request_header` applies over HTTP/2 as over HTTP/1.1: a head within it is
/// forwarded, one over it gets Sluice's own `431` (JSON in the route's format, with a request
/// id), and the connection goes on serving. Before, the `h2` crate's 64 KiB applied whatever the
/// config said: over it an empty-bodied `431`, and a 200 KB header (a block in more than five
/// frames) closed the whole connection with `ENHANCE_YOUR_CALM`.
#[test]
fn max_request_header_applies_over_http2() {
    let upstream = anthropic_upstream();
    for (limit, fits, over) in [(65_536, 60_000, 70_000), (262_144, 200_000, 300_000)] {
        let sluice = Sluice::start_h2c(&format!(
            "  max_request_header: {limit}\nupstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: anthropic\n",
            upstream.url()
        ));
        runtime().block_on(async {
            let client = h2_client(&sluice).await;
            let (status, _, body) = with_big_header(&client, fits).await.unwrap();
            assert_eq!(status, 200, "a {fits}-byte header under {limit}: {body}");
            assert!(body.contains("message_stop"), "{body}");
            let (status, request_id, body) = with_big_header(&client, over).await.unwrap();
            assert_eq!(status, 431, "a {over}-byte header over {limit}: {body}");
            let error: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("not Sluice's JSON 431 ({e}): {body:?}"));
            assert_eq!(error["type"], "error", "{body}");
            assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
            assert!(request_id.is_some(), "no x-request-id");
            // The connection goes on.
            let (status, _, _) = with_big_header(&client, 0).await.unwrap();
            assert_eq!(status, 200, "the connection after the 431");
        });
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 4);
    let sizes: Vec<_> = requests
        .iter()
        .map(|r| r.header("x-big").map_or(0, str::len))
        .collect();
    // The headers within the limit reached the upstream whole; those over it, nothing.
    assert_eq!(sizes, [60_000, 0, 200_000, 0]);
}

/// A stream whose first `n` bytes written were sent already: the h2 client's preface goes out
/// without them.
struct Rest(tokio::net::TcpStream, usize);

impl tokio::io::AsyncRead for Rest {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rest {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let skip = self.1.min(data.len());
        if skip > 0 {
            self.1 -= skip;
            return std::task::Poll::Ready(Ok(skip));
        }
        std::pin::Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A stream that Sluice ends (here at the idle timeout) still gets the usage trailers a
/// `TE: trailers` client asked for, after its error event.
/// Before, only a completed stream had them.
#[test]
fn a_stream_ended_by_sluice_still_gets_its_usage_trailers() {
    let stream = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/anthropic_text.sse"
    ))
    .unwrap();
    // Up to the first text delta: the stream is well under way when the upstream goes silent.
    let start = stream[..stream.find("event: content_block_delta").unwrap()].to_string();
    let upstream =
        Upstream::start(move |_| vec![Step::sse_head(), Step::chunk(&start), Step::Hold]);
    let sluice = h2c_routed_to(
        &upstream,
        "    provider: anthropic\n    idle_timeout: 300ms\n    heartbeat: off\n",
        "",
    );
    runtime().block_on(async {
        let client = h2_client(&sluice).await;
        let response = stream_request(&client, request(true)).await;
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let text = String::from_utf8(read_body(&mut body).await).unwrap();
        assert!(text.contains("event: error"), "{text}");
        let trailers = body
            .trailers()
            .await
            .unwrap()
            .expect("trailers were asked for");
        // The provider's figures never came: the trailers say so.
        assert_eq!(trailers["x-sluice-usage-source"], "none", "{trailers:?}");
    });
    let records = sluice.wait_ledger(1);
    assert_eq!(records[0]["outcome"], "idle_timeout");
}

/// An event-stream answer with no body (a 204 telling an EventSource to stop reconnecting)
/// gets no body over HTTP/2. Before, Sluice sent its usage comment after the head as
/// DATA on a 204, and the client reset the stream (PROTOCOL_ERROR).
#[test]
fn a_bodiless_event_stream_answer_ends_with_its_head() {
    let upstream = Upstream::start(|_| {
        vec![Step::Raw(
            b"HTTP/1.1 204 No Content\r\ncontent-type: text/event-stream\r\n\r\n".to_vec(),
        )]
    });
    let sluice = h2c_routed_to(&upstream, "    provider: anthropic\n", "");
    runtime().block_on(async {
        let client = h2_client(&sluice).await;
        let response = stream_request(&client, request(false)).await;
        assert_eq!(response.status(), 204);
        let mut body = response.into_body();
        assert!(read_body(&mut body).await.is_empty(), "a 204 has no body");
        assert!(body.trailers().await.is_ok());
    });
}

/// Over HTTP/2 a request has at most 256 header fields, as over HTTP/1.1 (where Pingora's reader
/// refuses more): a JSON 400, and nothing of it upstream. Before, 1,000 fields went upstream.
#[test]
fn a_request_with_too_many_header_fields_is_refused_over_http2() {
    let upstream = anthropic_upstream();
    let sluice = h2c_routed_to(&upstream, "    provider: anthropic\n", "");
    runtime().block_on(async {
        let client = h2_client(&sluice).await;
        // (The test upstream reads heads of at most 64 fields.)
        for (fields, expected) in [(40, 200), (257, 400), (1_000, 400)] {
            let mut request = request(false);
            for i in 0..fields {
                request.headers_mut().insert(
                    format!("x-f{i}").parse::<http::HeaderName>().unwrap(),
                    "1".parse().unwrap(),
                );
            }
            let response = stream_request(&client, request).await;
            assert_eq!(response.status(), expected, "{fields} fields");
            let text = String::from_utf8(read_body(&mut response.into_body()).await).unwrap();
            if expected == 400 {
                assert!(text.contains("header fields"), "{text}");
            }
        }
    });
    assert_eq!(upstream.requests().len(), 1);
}

/// An HTTP/2 client that resets its stream in the middle of the request body has left: the
/// access log says `client_disconnect`, as for an HTTP/1.1 client that closes mid-body. Before,
/// it was a `400` "the request body could not be read".
#[test]
fn a_client_that_resets_mid_body_is_logged_as_gone() {
    let upstream = anthropic_upstream();
    let dir = support::TempDir::new();
    let stdout = dir.path.join("access.log");
    let sluice = Sluice::start_h2c_with_output(
        &format!(
            "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: anthropic\n",
            upstream.url()
        ),
        std::process::Stdio::from(std::fs::File::create(&stdout).unwrap()),
    );
    runtime().block_on(async {
        let client = h2_client(&sluice).await;
        let mut client = client.ready().await.unwrap();
        let (_response, mut send) = client.send_request(request(false), false).unwrap();
        send.send_data(Bytes::from_static(br#"{"model":"claude","#), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        send.send_reset(h2::Reason::CANCEL);
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let line = first_access_log_line(&stdout);
    assert_eq!(line["outcome"], "client_disconnect", "{line}");
    assert!(upstream.requests().is_empty());
}

/// Over HTTP/2 too, a trusted proxy's `X-Forwarded-For` names the client in the access log, and
/// the upstream gets the list (all its fields, in order) with the peer appended.
#[test]
fn a_trusted_proxy_names_the_client_over_http2() {
    let upstream = Upstream::start(|_| vec![Step::sized(200, "application/json", b"{}")]);
    let dir = support::TempDir::new();
    let stdout = dir.path.join("access.log");
    // Lines before `upstreams:` go on with the `server:` block the helper writes.
    let sluice = Sluice::start_h2c_with_output(
        &format!(
            "  trusted_proxies: [127.0.0.0/8]\nupstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
            upstream.url()
        ),
        std::process::Stdio::from(std::fs::File::create(&stdout).unwrap()),
    );
    runtime().block_on(async {
        let client = h2_client(&sluice).await;
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get("http://sluice.test/v1/models")
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
            .header("x-forwarded-for", "127.0.0.9")
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let mut response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        read_body(response.body_mut()).await;
    });
    let line = first_access_log_line(&stdout);
    assert_eq!(line["client"], "203.0.113.7", "{line}");
    assert!(
        line["via"]
            .as_str()
            .is_some_and(|via| via.starts_with("127.0.0.1:")),
        "{line}"
    );
    let requests = upstream.requests();
    assert_eq!(
        requests[0].header("x-forwarded-for"),
        Some("198.51.100.1, 203.0.113.7, 127.0.0.9, 127.0.0.1")
    );
}

/// Over an `http2: true` upstream, many clients' streams share one connection: a client that
/// stops reading may hold back its own stream only. With Pingora's windows (8 MiB a stream and
/// 8 MiB the connection) a few such streams took the connection's whole window, and the other
/// streams stalled until their idle timeout cut them. Nor is the connection retired when such a
/// stream is let go: the silence was its client's, not the upstream's.
#[test]
fn a_client_that_stops_reading_does_not_stall_the_other_streams_on_an_http2_upstream() {
    use support::Client;
    let upstream = Upstream::start(|req| match req.path.as_str() {
        "/big" => {
            let mut steps = vec![Step::sse_head()];
            let event = format!("data: {}\n\n", "x".repeat(16_000));
            steps.extend((0..2_500).map(|_| Step::chunk(&event)));
            steps.push(Step::End);
            steps
        }
        _ => vec![
            Step::sse_head(),
            Step::chunk("data: small\n\n"),
            Step::chunk("data: [DONE]\n\n"),
            Step::End,
        ],
    });
    // The relay counts the connections made to the back (and never freezes here).
    let (_back, relay, front) = behind_an_http2_sluice(
        &upstream,
        "",
        "  - path_prefix: /big\n    upstream: back\n    idle_timeout: 3s\n",
    );
    let stream = [("accept", "text/event-stream")];
    let stuck: Vec<Client> = (0..3)
        .map(|_| {
            let mut client = Client::connect(front.addr);
            client.send("GET", "/big", &stream, b"");
            client
        })
        .collect();
    // Long enough for the upstream to fill every window and buffer it may; the stuck streams'
    // route waits 3 s for their clients.
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..5 {
        let mut client = Client::connect(front.addr);
        client.send("GET", "/small", &stream, b"");
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(
            response.text(),
            "data: small\n\ndata: [DONE]\n\n",
            "stream {i} beside the stuck one"
        );
    }
    // The stuck streams are let go (their clients' silence, not the upstream's): the
    // connections they used stay the ones every stream uses (the stuck requests, sent at once,
    // may each have opened one).
    let made = relay.made.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..3 {
        let mut client = Client::connect(front.addr);
        client.send("GET", "/small", &stream, b"");
        assert_eq!(client.read_response().status, 200);
    }
    assert_eq!(relay.made.load(std::sync::atomic::Ordering::SeqCst), made);
    drop(stuck);
}

/// A Sluice (`front`) whose upstream is another Sluice (`back`, over h2c, `http2: true`) reached
/// through a [`FreezingRelay`], the back in front of `upstream`. The front's upstream `back`
/// has `back_keys` as well (YAML lines); its routes are `front_routes` (each to `back`), then
/// `/` with a 2 s `idle_timeout`.
fn behind_an_http2_sluice(
    upstream: &Upstream,
    back_keys: &str,
    front_routes: &str,
) -> (Sluice, FreezingRelay, Sluice) {
    let back = Sluice::start_h2c(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    heartbeat: off\n    usage_comment: false\n",
        upstream.url()
    ));
    let relay = FreezingRelay::start(back.addr);
    let front = Sluice::start(&format!(
        "upstreams:\n  back:\n    url: http://{}\n    http2: true\n{back_keys}routes:\n{front_routes}  - path_prefix: /\n    upstream: back\n    heartbeat: off\n    usage_comment: false\n    idle_timeout: 2s\n",
        relay.addr
    ));
    (back, relay, front)
}

/// A TCP relay to `to` whose connections made before [`FreezingRelay::freeze`] stop forwarding
/// while their sockets stay open (a middlebox that lost them); later connections forward.
struct FreezingRelay {
    addr: std::net::SocketAddr,
    made: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    frozen_below: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Connections whose client (the front Sluice) closed its side.
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FreezingRelay {
    fn start(to: std::net::SocketAddr) -> FreezingRelay {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let made = Arc::new(AtomicUsize::new(0));
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (made_in, frozen_in, closed_in) = (made.clone(), frozen_below.clone(), closed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let n = made_in.fetch_add(1, Ordering::SeqCst);
                let server = std::net::TcpStream::connect(to).unwrap();
                for (mut from, mut into, from_client) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (server, client, false),
                ] {
                    let frozen = frozen_in.clone();
                    let closed = closed_in.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => {
                                    if from_client {
                                        closed.fetch_add(1, Ordering::SeqCst);
                                        let _ = into.shutdown(std::net::Shutdown::Both);
                                    }
                                    return;
                                }
                                // Taken and dropped: the peer sees its bytes acknowledged and
                                // nothing more, ever.
                                Ok(_) if n < frozen.load(Ordering::SeqCst) => {}
                                Ok(len) => {
                                    if into.write_all(&buf[..len]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        FreezingRelay {
            addr,
            made,
            frozen_below,
            closed,
        }
    }

    fn freeze(&self) {
        let made = self.made.load(std::sync::atomic::Ordering::SeqCst);
        self.frozen_below
            .store(made, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A stream that ends badly on a shared HTTP/2 upstream connection (here its client leaves
/// mid-stream) leaves the connection to close after `pool_idle_timeout` once idle, as a stream
/// that completed does. Before, its stream was reset but the connection stayed open for good,
/// never idle-timed (an audit left 116 of them open after 150 streams reset by their upstream).
#[test]
fn an_http2_upstream_connection_closes_when_idle_after_a_stream_ended_badly() {
    use support::Client;
    let upstream =
        Upstream::start(|_| vec![Step::sse_head(), Step::chunk("data: one\n\n"), Step::Hold]);
    let (_back, relay, front) =
        behind_an_http2_sluice(&upstream, "    pool_idle_timeout: 1s\n", "");
    let mut client = Client::connect(front.addr);
    client.send("GET", "/s", &[("accept", "text/event-stream")], b"");
    assert_eq!(client.read_head().status, 200);
    assert!(client.read_chunk().is_some());
    drop(client);
    let started = Instant::now();
    while relay.closed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the HTTP/2 connection was left open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(relay.made.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A shared HTTP/2 upstream connection that stops answering (a middlebox lost it, the socket
/// stays up) costs the stream that timed out on it, not every later one: before, each new
/// request went on it and waited its own `idle_timeout` for a 504, until TCP gave up.
#[test]
fn an_http2_upstream_connection_that_stopped_answering_gets_no_new_streams() {
    use support::Client;
    let upstream =
        Upstream::start(|_| vec![Step::sse_head(), Step::chunk("data: one\n\n"), Step::End]);
    let (_back, relay, front) = behind_an_http2_sluice(&upstream, "", "");
    let get = || {
        let mut client = Client::connect(front.addr);
        client.send("GET", "/s", &[("accept", "text/event-stream")], b"");
        client.read_response()
    };
    assert_eq!(get().status, 200);
    relay.freeze();
    assert_eq!(get().status, 504, "no answer on the frozen connection");
    for _ in 0..3 {
        let after = get();
        assert_eq!(
            (after.status, after.text().as_str()),
            (200, "data: one\n\n")
        );
    }
    assert_eq!(
        relay.made.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one new connection"
    );
}

/// With `http2_ping`, a shared connection that stopped answering is found by its unanswered
/// PING: the stream on it ends (as the upstream's error) and the next request goes on a new
/// connection, with no stream waiting its `idle_timeout` for it.
#[test]
fn an_http2_upstream_connection_that_does_not_answer_its_ping_is_closed() {
    use support::Client;
    let upstream = Upstream::start(|req| match req.path.as_str() {
        "/long" => vec![Step::sse_head(), Step::chunk("data: one\n\n"), Step::Hold],
        _ => vec![Step::sse_head(), Step::chunk("data: one\n\n"), Step::End],
    });
    let (_back, relay, front) = behind_an_http2_sluice(
        &upstream,
        "    http2_ping: 1s\n",
        "  - path_prefix: /long\n    upstream: back\n    heartbeat: off\n    idle_timeout: 60s\n",
    );
    let mut long = Client::connect(front.addr);
    long.send("GET", "/long", &[("accept", "text/event-stream")], b"");
    assert_eq!(long.read_head().status, 200);
    assert_eq!(long.read_chunk().unwrap().data, b"data: one\n\n");
    relay.freeze();
    let frozen = std::time::Instant::now();
    // The next PING (within 1 s) goes unanswered for 5 s: the connection is closed, and the
    // stream on it ends with Sluice's terminal event long before its 60 s `idle_timeout`.
    let rest = String::from_utf8(long.read_chunked_body()).unwrap();
    assert!(rest.contains("upstream_error"), "{rest}");
    assert!(
        frozen.elapsed() < Duration::from_secs(20),
        "{:?}",
        frozen.elapsed()
    );
    let mut client = Client::connect(front.addr);
    client.send("GET", "/s", &[("accept", "text/event-stream")], b"");
    let after = client.read_response();
    assert_eq!(
        (after.status, after.text().as_str()),
        (200, "data: one\n\n"),
        "a new connection, at once"
    );
    assert_eq!(relay.made.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A plain (non-stream) answer whose upstream goes silent mid-body retires its shared HTTP/2
/// connection as a stream does: the next request goes on a new connection.
#[test]
fn a_plain_answer_that_stops_coming_retires_its_http2_connection() {
    use support::Client;
    let upstream = Upstream::start(|req| match req.path.as_str() {
        "/slow" => vec![
            Step::chunked_head("application/json"),
            Step::chunk("{"),
            Step::Sleep(Duration::from_secs(4)),
            Step::chunk("}"),
            Step::End,
        ],
        _ => vec![
            Step::chunked_head("application/json"),
            Step::chunk("{}"),
            Step::End,
        ],
    });
    let (_back, relay, front) = behind_an_http2_sluice(&upstream, "", "");
    let get = |path: &str| {
        let mut client = Client::connect(front.addr);
        client.send("GET", path, &[], b"");
        client.read_response()
    };
    assert_eq!(get("/fast").text(), "{}");
    let mut slow = Client::connect(front.addr);
    slow.send("GET", "/slow", &[], b"");
    assert_eq!(slow.read_head().status, 200);
    assert_eq!(slow.read_chunk().unwrap().data, b"{");
    assert!(
        slow.closed_within(Duration::from_secs(10)),
        "cut at the 2 s idle_timeout"
    );
    assert_eq!(get("/fast").text(), "{}");
    assert_eq!(
        relay.made.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the silent connection retired"
    );
}

/// The streams caught on a connection that stopped answering time out one by one: only the first
/// retires it. Before the guard, each later one would retire whatever connection new streams
/// were on by then (a healthy one), and every stream caught on the dead connection would cost a
/// new connection.
#[test]
fn only_the_first_stream_to_time_out_on_a_dead_http2_connection_retires_it() {
    use support::Client;
    let upstream =
        Upstream::start(|_| vec![Step::sse_head(), Step::chunk("data: one\n\n"), Step::End]);
    let (_back, relay, front) = behind_an_http2_sluice(
        &upstream,
        "",
        "  - path_prefix: /early\n    upstream: back\n    idle_timeout: 1s\n  - path_prefix: /late\n    upstream: back\n    idle_timeout: 3s\n",
    );
    let stream = [("accept", "text/event-stream")];
    let get = || {
        let mut client = Client::connect(front.addr);
        client.send("GET", "/s", &stream, b"");
        client.read_response()
    };
    assert_eq!(get().status, 200);
    relay.freeze();
    let caught: Vec<_> = ["/early", "/late"]
        .into_iter()
        .map(|path| {
            let mut client = Client::connect(front.addr);
            client.send("GET", path, &stream, b"");
            std::thread::sleep(Duration::from_millis(100));
            client
        })
        .collect();
    let [mut early, mut late] = caught.try_into().ok().unwrap();
    assert_eq!(early.read_response().status, 504);
    // Between the two timeouts: on a new connection.
    assert_eq!(get().text(), "data: one\n\n");
    assert_eq!(relay.made.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(late.read_response().status, 504);
    for _ in 0..3 {
        assert_eq!(get().text(), "data: one\n\n");
    }
    assert_eq!(
        relay.made.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the late timeout left the new connection alone"
    );
}

/// An HTTP/2 client whose stream windows are `window` bytes and that never reads: what Sluice
/// writes past them waits for it for ever. Returns the response head once it came (with the
/// connection and body, kept open by the caller).
async fn open_stream_without_reading(
    sluice: &Sluice,
    window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    http::Response<h2::RecvStream>,
) {
    let tcp = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get("http://sluice.test/v1/chat/completions")
        .header("accept", "text/event-stream")
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (response, _) = ready.send_request(request, true).unwrap();
    (client, response.await.unwrap())
}

/// A client that stopped reading holds neither Sluice's heartbeat, nor the end of a stream the
/// provider finished, nor Sluice's terminal event for longer than the route's `idle_timeout`:
/// each ended the stream with its slot and upstream only when the client left.
#[test]
fn a_client_that_stops_reading_holds_no_heartbeat_end_or_terminal_event() {
    let one = "data: one\n\n";
    // All at once, in one write: the provider's end is read before the first write waits.
    let whole = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{one}\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
        one.len()
    );
    for (case, window, heartbeat, steps) in [
        (
            "heartbeat",
            one.len() + 5,
            "100ms",
            vec![Step::sse_head(), Step::chunk(one), Step::Hold],
        ),
        (
            "end",
            0,
            "off",
            vec![Step::Raw(whole.clone().into_bytes()), Step::Hold],
        ),
        (
            "terminal event",
            one.len(),
            "off",
            vec![Step::sse_head(), Step::chunk(one), Step::Hold],
        ),
    ] {
        let upstream = Upstream::start(move |_| steps.clone());
        let sluice = h2c_routed_to(
            &upstream,
            &format!("    provider: openai\n    usage_comment: false\n    idle_timeout: 1s\n    heartbeat: {heartbeat}\n"),
            "",
        );
        let in_flight = "sluice_streams_in_flight{route=\"/\"}";
        let rt = runtime();
        let _held = rt.block_on(open_stream_without_reading(&sluice, window as u32));
        sluice.wait_metric(in_flight, 1.0);
        let record = &sluice.wait_ledger(1)[0];
        assert_eq!(record["outcome"], "idle_timeout", "{case}: {record}");
        if case == "end" {
            // Nothing of it went (the held `[DONE]` included); what waited is counted as sent.
            assert_eq!(record["bytes"], one.len(), "{record}");
        }
        // Within one idle_timeout more at most: the client is still there, reading nothing.
        sluice.wait_metric(in_flight, 0.0);
    }
}

/// A client that reads slowly but steadily is waited for, however long one write takes it: the
/// stream ends `completed`, with every byte. Before, the idle timeout counted from when a write
/// began, so a client taking a gathered 64 KiB write at 50 KB/s was cut after `idle_timeout` as
/// one that "took nothing".
#[test]
fn a_client_that_reads_slowly_but_steadily_is_waited_for() {
    let event = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(2000));
    let steps = {
        let mut steps = vec![Step::sse_head()];
        steps.extend((0..32).map(|_| Step::chunk(&event)));
        steps.push(Step::chunk("data: [DONE]\n\n"));
        steps.push(Step::End);
        steps
    };
    let upstream = Upstream::start(move |_| steps.clone());
    let sluice = h2c_routed_to(
        &upstream,
        "    provider: openai\n    usage_comment: false\n    idle_timeout: 300ms\n    heartbeat: off\n",
        "",
    );
    let rt = runtime();
    let body = rt.block_on(async {
        let (_client, response) = open_stream_without_reading(&sluice, 1024).await;
        let mut body = response.into_body();
        let mut got = Vec::new();
        // ~50 KB/s: a 64 KiB write takes it over a second, four idle timeouts.
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            got.extend_from_slice(&data);
            tokio::time::sleep(Duration::from_millis(20)).await;
            body.flow_control().release_capacity(data.len()).unwrap();
        }
        got
    });
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["outcome"], "completed", "{record}");
    assert_eq!(body.len(), event.len() * 32 + "data: [DONE]\n\n".len());
}

/// The idle timeout after a slow client finally took a long write counts from then, not from
/// the upstream's last bytes before it: a short upstream pause right after does not end a
/// stream whose client was reading all along.
#[test]
fn a_slow_clients_last_progress_counts_when_its_write_completes() {
    let event = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(2000));
    let steps = {
        let mut steps = vec![Step::sse_head()];
        steps.extend((0..32).map(|_| Step::chunk(&event)));
        // Silent past the idle timeout as counted from the burst, not from its last byte taken.
        steps.push(Step::sleep_ms(3000));
        steps.push(Step::chunk("data: [DONE]\n\n"));
        steps.push(Step::End);
        steps
    };
    let upstream = Upstream::start(move |_| steps.clone());
    let sluice = h2c_routed_to(
        &upstream,
        "    provider: openai\n    usage_comment: false\n    idle_timeout: 2s\n    heartbeat: off\n",
        "",
    );
    let rt = runtime();
    let body = rt.block_on(async {
        let (_client, response) = open_stream_without_reading(&sluice, 4096).await;
        let mut body = response.into_body();
        let mut got = Vec::new();
        // ~40 KB/s: the burst (64 KiB) is taken by ~1.6 s, then the client keeps up.
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            got.extend_from_slice(&data);
            if got.len() < 64 * 1024 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            body.flow_control().release_capacity(data.len()).unwrap();
        }
        got
    });
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["outcome"], "completed", "{record}");
    assert_eq!(body.len(), event.len() * 32 + "data: [DONE]\n\n".len());
}

/// A TCP connection whose reads are paced: at most `per_read` bytes every `pause`.
struct PacedReads {
    inner: tokio::net::TcpStream,
    wait: std::pin::Pin<Box<tokio::time::Sleep>>,
    per_read: usize,
    pause: Duration,
}

impl tokio::io::AsyncRead for PacedReads {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        std::task::ready!(self.wait.as_mut().poll(cx));
        let room = buf.remaining().min(self.per_read);
        let mut piece = vec![0u8; room];
        let mut limited = tokio::io::ReadBuf::new(&mut piece);
        let this = &mut *self;
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        buf.put_slice(limited.filled());
        let next = tokio::time::Instant::now() + this.pause;
        this.wait.as_mut().reset(next);
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for PacedReads {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/2 client whose connection is read slowly (a slow link: the socket, not its windows,
/// holds Sluice back) is not taken for one that stopped: the relay reads the connection's TCP
/// acknowledgements at the idle tick, as for HTTP/1.1. Before, no window update reached the
/// stream in time (the `h2` crate reads no frame while its writes wait on a full socket), and
/// the stream was cut after `idle_timeout` as one that took nothing.
#[test]
fn an_http2_client_on_a_slow_link_is_not_cut() {
    let event = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(4000));
    let steps = {
        let mut steps = vec![Step::sse_head()];
        steps.extend((0..1000).map(|_| Step::chunk(&event)));
        steps.push(Step::End);
        steps
    };
    let upstream = Upstream::start(move |_| steps.clone());
    let sluice = h2c_routed_to(
        &upstream,
        "    provider: openai\n    usage_comment: false\n    idle_timeout: 1s\n    heartbeat: off\n",
        "",
    );
    let rt = runtime();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(sluice.addr).await.unwrap();
        // ~25 KB/s.
        let paced = PacedReads {
            inner: tcp,
            wait: Box::pin(tokio::time::sleep(Duration::ZERO)),
            per_read: 1024,
            pause: Duration::from_millis(40),
        };
        let (client, connection) = h2::client::handshake(paced).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::get("http://sluice.test/v1/chat/completions")
            .header("accept", "text/event-stream")
            .body(())
            .unwrap();
        let mut ready = client.ready().await.unwrap();
        let (response, _) = ready.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let data = body
                .data()
                .await
                .expect("the stream ended early")
                .expect("the stream was cut");
            body.flow_control().release_capacity(data.len()).unwrap();
        }
        driver.abort();
    });
    // Served until the client left (its leaving, with the socket full, is seen at the next
    // idle tick).
    let record = &sluice.wait_ledger(1)[0];
    assert!(
        record["duration_ms"].as_f64().unwrap() >= 3000.0,
        "{record}"
    );
}
