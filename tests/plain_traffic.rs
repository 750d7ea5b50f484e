//! Plain (non-stream) traffic passes through unchanged: JSON, statuses, error bodies, large
//! bodies, keep-alive, chunked and sized framing; and Sluice's own errors are JSON.

mod support;

use std::time::{Duration, Instant};
use support::{Client, Sluice, Step, Upstream};

fn echo_upstream() -> Upstream {
    Upstream::start(|req| {
        match req.path.trim_start_matches("/base") {
        "/echo" => vec![Step::sized(200, "application/octet-stream", &req.body)],
        "/rate-limited" => {
            let body = br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#;
            let mut head = format!(
                "HTTP/1.1 429 Slow Down Please\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            head.extend_from_slice(body);
            vec![Step::Raw(head)]
        }
        "/v1/chat/completions" => vec![
            Step::sse_head(),
            Step::chunk("data: {\"i\":0}\n\n"),
            Step::chunk("data: [DONE]\n\n"),
            Step::End,
        ],
        "/v1/slow" => vec![
            Step::sse_head(),
            Step::chunk("data: {\"i\":0}\n\n"),
            Step::Sleep(Duration::from_millis(300)),
            Step::chunk("data: {\"i\":1}\n\n"),
            Step::Sleep(Duration::from_millis(300)),
            Step::chunk("data: [DONE]\n\n"),
            Step::End,
        ],
        "/chunked-json" => vec![
            Step::Raw(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec(),
            ),
            Step::chunk("{\"a\":"),
            Step::chunk("1}"),
            Step::End,
        ],
        _ => {
            let body = format!(
                "{{\"method\":\"{}\",\"path\":\"{}\",\"host\":\"{}\"}}",
                req.method,
                req.path,
                req.header("host").unwrap_or("")
            );
            vec![Step::sized(200, "application/json", body.as_bytes())]
        }
    }
    })
}

fn sluice_for(upstream: &Upstream) -> Sluice {
    Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}/base\n    headers:\n      authorization: Bearer provider-key\nroutes:\n  - path_prefix: /v1/\n    upstream: up\n    provider: openai\n  - path_prefix: /echo\n    upstream: up\n  - path_prefix: /rate-limited\n    upstream: up\n  - path_prefix: /chunked-json\n    upstream: up\n",
        upstream.url()
    ))
}

#[test]
fn json_request_and_response_pass_through() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let mut client = Client::connect(sluice.addr);
    client.send(
        "POST",
        "/v1/chat/completions?x=1",
        &[
            ("authorization", "Bearer client-key"),
            ("content-type", "application/json"),
        ],
        br#"{"model":"m"}"#,
    );
    let response = client.read_response();
    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(body["path"], "/base/v1/chat/completions?x=1");
    assert_eq!(body["host"], upstream.addr.to_string());
    let request = &upstream.requests()[0];
    assert_eq!(request.body, br#"{"model":"m"}"#);
    assert_eq!(request.header("authorization"), Some("Bearer provider-key"));
    assert_eq!(request.header("content-type"), Some("application/json"));
}

#[test]
fn status_codes_and_error_bodies_unchanged() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let mut client = Client::connect(sluice.addr);
    client.send("GET", "/rate-limited", &[], b"");
    let response = client.read_response();
    assert_eq!(response.status, 429);
    // The upstream's own reason phrase goes along with its status.
    assert_eq!(response.reason, "Slow Down Please");
    assert_eq!(
        response.text(),
        r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#
    );
}

#[test]
fn large_bodies_both_ways_and_keep_alive() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let body: Vec<u8> = (0..6 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut client = Client::connect(sluice.addr);
    for _ in 0..3 {
        client.send("POST", "/echo", &[], &body);
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), body.len());
        assert!(response.body == body, "echoed body differs");
    }
    // Three requests on one client connection, and the upstream connection was pooled.
    assert_eq!(upstream.log.lock().unwrap().connections, 1);
}

#[test]
fn request_heads_that_arrive_in_pieces_are_read_whole() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let mut client = Client::connect(sluice.addr);
    // Twice on one connection: the head of a kept-alive connection's next request is read the
    // same way as the first. The pieces cut the request line, a header name and the blank line.
    for round in 0..2 {
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: sluice.test\r\nX-Round: {round}\r\nContent-Length: 5\r\n\r\nhello"
        );
        for piece in head.as_bytes().chunks(9) {
            client.send_raw(piece);
            std::thread::sleep(Duration::from_millis(15));
        }
        let response = client.read_response();
        assert_eq!(response.status, 200, "round {round}: {}", response.text());
        assert_eq!(response.body, b"hello");
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("x-round"), Some("1"));
}

#[test]
fn chunked_request_body_and_chunked_response() {
    use std::io::Write;
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let mut client = Client::connect(sluice.addr);
    let mut stream = client.stream().try_clone().unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .unwrap();
    let response = client.read_response();
    assert_eq!(response.text(), "hello world");
    client.send("GET", "/chunked-json", &[], b"");
    let response = client.read_response();
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.text(), "{\"a\":1}");
}

/// An HTTP/1.0 client cannot take a chunked body (RFC 9112 §6.1): a chunked upstream body and
/// an event stream reach it as they are, without `Transfer-Encoding`, ended by the close of the
/// connection, even when it asked to keep it; a sized body is kept alive as asked.
#[test]
fn an_http1_0_client_gets_bodies_without_chunked_framing() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let stream_body = r#"{"model":"m","stream":true}"#;
    let exchanges = [
        (
            "GET /chunked-json HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n".to_string(),
            "{\"a\":1}",
        ),
        (
            format!(
                "POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{stream_body}",
                stream_body.len()
            ),
            "data: {\"i\":0}\n\ndata: [DONE]\n\n",
        ),
    ];
    for (request, expected) in exchanges {
        // To the end: the body ends with the connection.
        let response = support::client::exchange_until_closed(sluice.addr, request.as_bytes());
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        // The stream may carry Sluice's usage comment after the provider's last event.
        assert!(body.starts_with(expected), "{request}: {body:?}");
    }
    // A sized body keeps its length, and the keep-alive the client asked for.
    let mut client = Client::connect(sluice.addr);
    for _ in 0..2 {
        client.send_raw(b"GET /v1/models HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n");
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert!(response.header("content-length").is_some());
        assert_eq!(response.header("transfer-encoding"), None);
        assert!(
            response.text().contains("/v1/models"),
            "{}",
            response.text()
        );
    }
}

/// A client may send its next request before the response to the last one has ended (RFC 9112
/// §9.3.2), or a stray empty line after a body: neither is the client leaving. Requests sent
/// together are answered in order on the one connection, and a stream goes on to its end while
/// the client's next request waits for it.
#[test]
fn pipelined_requests_are_answered_in_order_and_a_stream_goes_on_meanwhile() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let mut client = Client::connect(sluice.addr);
    client.send_raw(
        b"GET /v1/first HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/second HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    for path in ["/v1/first", "/v1/second"] {
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert!(response.text().contains(path), "{}", response.text());
    }

    client.post_json("/v1/slow", r#"{"model":"m","stream":true}"#);
    let head = client.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("connection"), Some("keep-alive"));
    let first = client.read_chunk().expect("a first event");
    // Mid-stream: an empty line, then the next request.
    client.send_raw(b"\r\nGET /v1/after HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut body = first.data;
    body.extend(client.read_chunked_body());
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.starts_with("data: {\"i\":0}\n\ndata: {\"i\":1}\n\ndata: [DONE]\n\n"),
        "{body:?}"
    );
    let after = client.read_response();
    assert_eq!(after.status, 200);
    assert!(after.text().contains("/v1/after"), "{}", after.text());
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"completed\",route=\"/v1/\"}",
        1.0,
    );
}

#[test]
fn no_route_is_a_json_404() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let mut client = Client::connect(sluice.addr);
    let response = client.get("/nowhere");
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"]["code"], "no_route");
    assert!(upstream.requests().is_empty());
}

#[test]
fn unreachable_upstream_is_a_json_502_in_provider_format() {
    let port = support::free_port();
    let sluice = Sluice::start(&format!(
        "upstreams:\n  gone:\n    url: http://127.0.0.1:{port}\n    connect_timeout: 1s\nroutes:\n  - path_prefix: /\n    upstream: gone\n    provider: anthropic\n"
    ));
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/messages", r#"{"stream":true}"#);
    let response = client.read_response();
    assert_eq!(response.status, 502);
    let body = response.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "api_error");
}

#[test]
fn admin_health_and_metrics() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let mut admin = Client::connect(sluice.admin);
    assert_eq!(admin.get("/healthz").status, 200);
    let metrics = sluice.metrics();
    for name in [
        "sluice_streams_in_flight",
        "sluice_streams_finished_total",
        "sluice_time_to_first_byte_seconds",
        "sluice_chunk_gap_seconds",
        "sluice_stream_bytes_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn request_id_is_kept_or_made_and_travels_both_ways() {
    let upstream = echo_upstream();
    let sluice = sluice_for(&upstream);
    let mut client = Client::connect(sluice.addr);
    client.send(
        "GET",
        "/v1/models",
        &[("x-request-id", "client-id-42")],
        b"",
    );
    let response = client.read_response();
    assert_eq!(response.header("x-request-id"), Some("client-id-42"));
    client.send("GET", "/v1/models", &[], b"");
    let response = client.read_response();
    let made = response
        .header("x-request-id")
        .expect("an id is made")
        .to_string();
    assert_eq!(made.len(), 32);
    let requests = upstream.requests();
    assert_eq!(requests[0].header("x-request-id"), Some("client-id-42"));
    assert_eq!(requests[1].header("x-request-id"), Some(made.as_str()));
    // The client's address reaches the upstream too, also on a kept-alive connection.
    assert_eq!(requests[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(requests[1].header("x-forwarded-for"), Some("127.0.0.1"));
    // Sluice's own errors carry it too.
    let response = client.get("/nowhere");
    assert_eq!(response.header("x-request-id").map(str::len), Some(32));
}

#[test]
fn pooled_connections_the_upstream_closed_or_that_expired_are_not_reused() {
    // The upstream answers with keep-alive framing, then closes the connection (as one whose
    // keep-alive timeout ran out does): the next request must get a fresh connection, not a 502.
    let upstream = Upstream::start(|req| match req.path.as_str() {
        "/bye" => vec![
            Step::sized(200, "application/json", b"{}"),
            Step::sleep_ms(10),
            Step::Close,
        ],
        _ => vec![Step::sized(200, "application/json", b"{}")],
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\n    pool_idle_timeout: 300ms\nroutes:\n  - path_prefix: /\n    upstream: up\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    for i in 0..5 {
        let response = client.get("/bye");
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
        // The upstream's close has reached Sluice's idle connection.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(upstream.log.lock().unwrap().connections, 5);

    // A kept connection is reused while fresh, and closed by Sluice once idle for longer than
    // `pool_idle_timeout` (the sweep runs every second).
    for _ in 0..3 {
        assert_eq!(client.get("/stay").status, 200);
    }
    assert_eq!(upstream.log.lock().unwrap().connections, 6);
    let idle_from = Instant::now();
    let deadline = idle_from + Duration::from_secs(3);
    // The connections the upstream itself closed are not in `closed`: it stopped reading them.
    while upstream.log.lock().unwrap().closed.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the idle connection was never closed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let idle = upstream.log.lock().unwrap().closed[0].duration_since(idle_from);
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_millis(2500),
        "closed after {idle:?}"
    );
}

/// A chunked plain body the upstream cuts short reaches the client cut short: its connection
/// closes without the last chunk, which would tell the client it had the whole body.
#[test]
fn a_plain_body_cut_short_by_the_upstream_ends_without_its_last_chunk() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::chunked_head("application/json"),
            Step::chunk("{\"partial\":"),
            Step::sleep_ms(50),
            Step::Close,
        ]
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
        upstream.url()
    ));
    let answer = support::client::exchange_until_closed(
        sluice.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: sluice.test\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    // The size line in either case (Pingora writes `B`).
    assert!(
        body.eq_ignore_ascii_case("b\r\n{\"partial\":\r\n"),
        "{answer}"
    );
}

/// An upstream's framing the client could read otherwise than Sluice did is not passed on: a
/// `Content-Length` beside chunked framing is dropped (the chunked framing is the body's), and a
/// body in a transfer coding Sluice does not take off (`gzip, chunked`) gets a 502.
#[test]
fn upstream_framing_a_client_could_misread_is_not_passed_on() {
    let upstream = Upstream::start(|req| {
        let coding = if req.path == "/gzip" {
            "gzip, chunked"
        } else {
            "chunked"
        };
        vec![
            Step::Raw(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: {coding}\r\nContent-Length: 5\r\n\r\n"
                )
                .into_bytes(),
            ),
            Step::chunk("hello world"),
            Step::End,
        ]
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    let response = client.get("/both");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.text(), "hello world");
    let response = client.get("/gzip");
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(
        response.text().contains("transfer coding"),
        "{}",
        response.text()
    );
}

/// RFC 9110 §8.6: an upstream's repeated `Content-Length` (`2, 2`, or two fields saying 2) is
/// read as the one length it is, and a proxy that does so passes that length on once: Node's
/// HTTP parser (under the OpenAI and Anthropic SDKs) fails on either repeat
/// (`HPE_INVALID_CONTENT_LENGTH`, `Duplicate Content-Length`).
#[test]
fn a_repeated_content_length_reaches_the_client_once() {
    let upstream = Upstream::start(|req| {
        let lengths = match req.path.as_str() {
            "/list" => "Content-Length: 2, 2\r\n",
            _ => "Content-Length: 2\r\nContent-Length: 2\r\n",
        };
        vec![Step::Raw(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{lengths}\r\nhi")
                .into_bytes(),
        )]
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
        upstream.url()
    ));
    for path in ["/list", "/fields"] {
        // The head as it came, to the end of the connection.
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: sluice.test\r\nConnection: close\r\n\r\n");
        let answer = support::client::exchange_until_closed(sluice.addr, request.as_bytes());
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lengths: Vec<_> = head
            .lines()
            .filter(|line| line.to_ascii_lowercase().starts_with("content-length:"))
            .collect();
        assert_eq!(lengths.len(), 1, "{path}: {head}");
        assert_eq!(lengths[0].split_once(':').unwrap().1.trim(), "2", "{head}");
        assert_eq!(body, "hi");
    }
    // On a kept-alive connection, one response after the other.
    let mut client = Client::connect(sluice.addr);
    for path in ["/list", "/fields", "/list"] {
        let response = client.get(path);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "hi");
    }
}

/// An event stream's answer without a body by its status (an EventSource server's 204 asks the
/// browser not to reconnect; a 304) is not chunked (RFC 9112 §6.1: no `Transfer-Encoding` on a
/// 204), and nothing follows its head: the connection's next response comes right after it.
#[test]
fn a_bodiless_event_stream_answer_is_not_chunked() {
    let upstream = Upstream::start(|req| match req.path.as_str() {
        "/v1/events" => vec![Step::Raw(
            b"HTTP/1.1 204 No Content\r\ncontent-type: text/event-stream\r\n\r\n".to_vec(),
        )],
        "/v1/cached" => vec![Step::Raw(
            b"HTTP/1.1 304 Not Modified\r\ncontent-type: text/event-stream\r\n\r\n".to_vec(),
        )],
        _ => vec![Step::sized(200, "application/json", b"{}")],
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /v1/\n    upstream: up\n    provider: openai\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    for (path, status) in [("/v1/events", 204), ("/v1/cached", 304)] {
        client.send("GET", path, &[("accept", "text/event-stream")], b"");
        let head = client.read_head();
        assert_eq!(head.status, status);
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(head.header("transfer-encoding"), None, "{path}: {head:?}");
        assert_eq!(head.header("content-length"), None, "{path}: {head:?}");
        // No body, no last chunk, no usage comment: the next response's head comes next.
        let next = client.get("/v1/models");
        assert_eq!(next.status, 200, "{path}");
        assert_eq!(next.text(), "{}");
    }
}

/// Sluice's 502 messages name the Pingora error they come from with one space between words
/// (they read `cannot connect to upstream gone:  ConnectError …`,
/// `failed before its response head:  ConnectionClosed …`, and ` InvalidHTTPHeader …`).
#[test]
fn upstream_failures_are_worded_with_single_spaces() {
    let port = support::free_port();
    let upstream = Upstream::start(|req| {
        match req.path.as_str() {
        "/coded" => vec![
            Step::Raw(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
                    .to_vec(),
            ),
            Step::End,
        ],
        _ => vec![Step::Close],
    }
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  gone:\n    url: http://127.0.0.1:{port}\n    connect_timeout: 1s\n  rude:\n    url: {}\nroutes:\n  - path_prefix: /gone\n    upstream: gone\n    provider: openai\n  - path_prefix: /\n    upstream: rude\n    provider: openai\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    for (path, starts) in [
        (
            "/gone",
            "cannot connect to upstream gone: ConnectError context: ",
        ),
        (
            "/rude",
            "upstream rude failed before its response head: Upstream ConnectionClosed context: \
             upstream closed the connection before its response head",
        ),
        (
            "/coded",
            "Upstream InvalidHTTPHeader context: the upstream's body is in a transfer coding \
             other than chunked",
        ),
    ] {
        let response = client.get(path);
        assert_eq!(response.status, 502);
        let body = response.json();
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(message.starts_with(starts), "{message:?}");
        assert!(!message.contains("  "), "{message:?}");
    }
}

/// An upstream that closes idle connections after its `Keep-Alive: timeout=N` (Node's 5 s by
/// default) races a pool that keeps them longer: a request sent on one as it closes gets a 502.
/// Pooled, such a connection waits at most N less a margin (half of N up to 2 s, else 1 s), and
/// one the upstream takes no more requests on (`max=1`) is not pooled at all.
#[test]
fn pooled_connections_wait_less_than_the_upstreams_keep_alive_timeout() {
    let upstream = Upstream::start(|req| {
        let keep_alive = match req.path.as_str() {
            "/short" => "timeout=1",
            "/last" => "timeout=5, max=1",
            _ => "timeout=5, max=100",
        };
        vec![Step::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nkeep-alive: {keep_alive}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
            )
            .into_bytes(),
        )]
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
        upstream.url()
    ));
    let connections = || upstream.log.lock().unwrap().connections;
    let mut client = Client::connect(sluice.addr);
    // `timeout=5`: reused while fresh.
    for _ in 0..3 {
        assert_eq!(client.get("/node").status, 200);
    }
    assert_eq!(connections(), 1);
    // `timeout=1`: pooled for half a second, so not reused after 0.8 s (`pool_idle_timeout` is
    // 60 s).
    assert_eq!(client.get("/short").status, 200);
    assert_eq!(connections(), 1);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(client.get("/node").status, 200);
    assert_eq!(connections(), 2, "reused past the upstream's idle timeout");
    // `max=1`: the upstream's last request on that connection.
    assert_eq!(client.get("/last").status, 200);
    assert_eq!(client.get("/node").status, 200);
    assert_eq!(connections(), 3, "reused after max=1");
}

/// An upstream named by a host name is looked up once and its connections pooled as any other:
/// requests on fresh and pooled connections reach it.
#[test]
fn an_upstream_named_by_a_host_name_is_reached() {
    let upstream = Upstream::start(|_| vec![Step::sized(200, "application/json", b"{}")]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: http://localhost:{}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
        upstream.addr.port()
    ));
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(sluice.addr)).collect();
    for round in 0..3 {
        for client in &mut clients {
            let response = client.get("/v1/models");
            assert_eq!(response.status, 200, "round {round}: {}", response.text());
        }
    }
    assert!(upstream.log.lock().unwrap().connections <= 3);
}

/// An upstream that closes, without a word and after `after_ms`, the pooled connection its
/// second request to a path comes on (at once: as one whose idle timeout ran out as the request
/// crossed it; later: as a worker that died while generating), and answers every other request
/// with the number it was.
fn closes_on_the_second_request(after_ms: u64) -> Upstream {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    Upstream::start(move |req| {
        let mut seen = seen.lock().unwrap();
        let n = seen.entry(req.path.clone()).or_insert(0);
        *n += 1;
        match *n {
            2 => vec![Step::sleep_ms(after_ms), Step::Close],
            n => vec![Step::sized(
                200,
                "application/json",
                format!("{n}").as_bytes(),
            )],
        }
    })
}

fn sluice_before(upstream: &Upstream) -> Sluice {
    Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
        upstream.url()
    ))
}

#[test]
fn a_get_on_a_pooled_connection_the_upstream_closed_is_sent_again_on_a_new_one() {
    let upstream = closes_on_the_second_request(0);
    let sluice = sluice_before(&upstream);
    let mut client = Client::connect(sluice.addr);
    assert_eq!(client.get("/v1/models").status, 200);
    let again = client.get("/v1/models");
    assert_eq!((again.status, again.text()), (200, "3".to_string()));
    let log = upstream.log.lock().unwrap();
    assert_eq!((log.requests.len(), log.connections), (3, 2));
    drop(log);
    assert_eq!(
        sluice.metric("sluice_upstream_retries_total{upstream=\"up\"}"),
        1.0
    );
}

#[test]
fn a_post_is_sent_again_only_with_an_idempotency_key() {
    let upstream = closes_on_the_second_request(0);
    let sluice = sluice_before(&upstream);
    let mut client = Client::connect(sluice.addr);
    let json = [("content-type", "application/json")];
    let body = br#"{"model":"m","messages":[]}"#;
    client.send("POST", "/v1/chat/completions", &json, body);
    assert_eq!(client.read_response().status, 200);
    client.send("POST", "/v1/chat/completions", &json, body);
    let cut = client.read_response();
    // The upstream may have begun generating: not sent twice.
    assert_eq!(cut.status, 502, "{}", cut.text());
    assert_eq!(upstream.requests().len(), 2);

    let mut client = Client::connect(sluice.addr);
    let keyed = [
        ("content-type", "application/json"),
        ("idempotency-key", "a1"),
    ];
    for _ in 0..2 {
        client.send("POST", "/v1/responses", &keyed, body);
        assert_eq!(client.read_response().status, 200);
    }
    let requests = upstream.requests();
    let sent: Vec<&[u8]> = requests
        .iter()
        .filter(|r| r.path == "/v1/responses")
        .map(|r| r.body.as_slice())
        .collect();
    assert_eq!(sent, [&body[..]; 3], "sent again with its body");
}

#[test]
fn a_get_whose_pooled_connection_closes_long_after_it_was_sent_is_not_sent_again() {
    let upstream = closes_on_the_second_request(1500);
    let sluice = sluice_before(&upstream);
    let mut client = Client::connect(sluice.addr);
    assert_eq!(client.get("/v1/models").status, 200);
    let cut = client.get("/v1/models");
    assert_eq!(cut.status, 502, "{}", cut.text());
    assert_eq!(upstream.requests().len(), 2);
}
