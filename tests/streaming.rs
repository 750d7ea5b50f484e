//! Event streams through the real binary: unbuffered delivery, no compression, heartbeats, idle
//! timeouts, max duration, upstream errors, client disconnects.

mod support;

use std::time::{Duration, Instant};
use support::{Client, Sluice, Step, Upstream};

/// These tests check the relay byte for byte, so the usage features that change the client's
/// bytes (the usage comment, the stripped usage chunk) are off here; tests/usage_e2e.rs covers
/// them.
fn sluice_for(upstream: &Upstream, route: &str) -> Sluice {
    Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    usage_comment: false\n    include_usage: false\n{route}",
        upstream.url()
    ))
}

const STREAM_REQUEST: &str = r#"{"model":"m","stream":true,"messages":[]}"#;

fn event(i: usize) -> String {
    format!("data: {{\"i\":{i},\"text\":\"token {i}\"}}\n\n")
}

#[test]
fn events_arrive_one_by_one_as_written() {
    let upstream = Upstream::start(|_| {
        let mut steps = vec![Step::sse_head()];
        for i in 0..10 {
            steps.push(Step::sleep_ms(100));
            steps.push(Step::chunk(event(i)));
        }
        steps.push(Step::End);
        steps
    });
    let sluice = sluice_for(&upstream, "    provider: openai\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    let head = client.read_head();
    assert_eq!(head.status, 200);
    let chunks = client.read_chunks();
    let sent = upstream.sent();
    assert_eq!(sent.len(), 10);
    assert_eq!(
        chunks.len(),
        10,
        "each upstream event is its own chunk at the client (no coalescing)"
    );
    for (i, (chunk, (sent_at, data))) in chunks.iter().zip(&sent).enumerate() {
        assert_eq!(&chunk.data, data);
        let delay = chunk.at.saturating_duration_since(*sent_at);
        assert!(
            delay < Duration::from_millis(20),
            "event {i} took {delay:?} to arrive"
        );
    }
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"completed\",route=\"/\"}",
        1.0,
    );
}

#[test]
fn response_head_is_flushed_before_the_first_event() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::sleep_ms(1500),
            Step::chunk(event(0)),
            Step::End,
        ]
    });
    let sluice = sluice_for(&upstream, "");
    let mut client = Client::connect(sluice.addr);
    let asked = Instant::now();
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    assert_eq!(client.read_head().status, 200);
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_millis(1000),
        "the head waited {waited:?} for the first event"
    );
    assert_eq!(client.read_chunk().unwrap().data, event(0).as_bytes());
}

#[test]
fn stream_headers_no_encoding_no_length() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::Raw(
                b"HTTP/1.1 200 OK\r\ncontent-type: Text/Event-Stream; charset=utf-8\r\ncontent-length: 13\r\ncache-control: max-age=60\r\n\r\ndata: hello\n\n"
                    .to_vec(),
            ),
        ]
    });
    let sluice = sluice_for(&upstream, "");
    let mut client = Client::connect(sluice.addr);
    client.send(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip, br"),
        ],
        STREAM_REQUEST.as_bytes(),
    );
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"data: hello\n\n");
    assert_eq!(response.header("content-encoding"), None);
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert_eq!(response.header("x-accel-buffering"), Some("no"));
    let requests = upstream.requests();
    assert_eq!(
        requests[0].header("accept-encoding"),
        None,
        "stream requests must not ask the upstream for compression"
    );
}

#[test]
fn compressed_stream_from_upstream_is_decoded() {
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(b"data: one\n\ndata: two\n\n").unwrap();
    let gz = encoder.finish().unwrap();
    let upstream = Upstream::start(move |_| {
        let mut head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
            gz.len()
        )
        .into_bytes();
        head.extend_from_slice(&gz);
        vec![Step::Raw(head)]
    });
    let sluice = sluice_for(&upstream, "");
    let mut client = Client::connect(sluice.addr);
    // Accept says stream, so Accept-Encoding is stripped; this upstream compresses anyway.
    client.send(
        "GET",
        "/events",
        &[("accept", "text/event-stream"), ("accept-encoding", "gzip")],
        b"",
    );
    let response = client.read_response();
    assert_eq!(response.header("content-encoding"), None);
    assert_eq!(response.text(), "data: one\n\ndata: two\n\n");
}

#[test]
fn idle_timeout_ends_stream_with_openai_error_event() {
    let upstream = Upstream::start(|_| vec![Step::sse_head(), Step::chunk(event(0)), Step::Hold]);
    let sluice = sluice_for(
        &upstream,
        "    provider: openai\n    idle_timeout: 300ms\n    heartbeat: off\n",
    );
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    assert_eq!(client.read_head().status, 200);
    let first = client.read_chunk().expect("first event");
    assert_eq!(first.data, event(0).as_bytes());
    // read_chunked_body panics on a cut: the chunked terminator arrived (a clean end).
    let rest = String::from_utf8(client.read_chunked_body()).unwrap();
    let data = rest
        .strip_prefix("data: ")
        .and_then(|r| r.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not one data event: {rest:?}"));
    let error: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["error"]["code"], "upstream_idle_timeout");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sent nothing"));
    assert!(
        upstream.wait_closed(Duration::from_secs(2)).is_some(),
        "the idle upstream connection is closed, not pooled"
    );
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"idle_timeout\",route=\"/\"}",
        1.0,
    );
    // The client connection stays usable after a clean end.
    let response = client.get("/x");
    assert!(response.status > 0);
}

/// When Sluice strips the usage chunk it asked for, an event left half-sent by an upstream that
/// then goes quiet is held whole (a client cannot act on half an event): the idle timeout's
/// error event follows the last whole event, with no empty event before it, and the half-sent
/// one never reaches the client.
#[test]
fn an_event_held_half_sent_in_strip_mode_is_not_closed_with_an_empty_event() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk(event(0)),
            Step::chunk("data: {\"partial"),
            Step::Hold,
        ]
    });
    // include_usage on (the default): Sluice asks for the usage chunk and strips it.
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n    usage_comment: false\n    idle_timeout: 300ms\n    heartbeat: off\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    let body = String::from_utf8(client.read_response().body).unwrap();
    let rest = body
        .strip_prefix(event(0).as_str())
        .unwrap_or_else(|| panic!("{body:?}"));
    assert!(rest.starts_with("data: {\"error\""), "{rest:?}");
    assert!(!body.contains("partial"), "{body:?}");
    // The record counts what the client got of the upstream's bytes.
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["bytes"], event(0).len(), "{record}");
}

#[test]
fn idle_timeout_anthropic_and_plain_event_formats() {
    for (provider, path) in [("anthropic", "/v1/messages"), ("none", "/events")] {
        let upstream = Upstream::start(|_| {
            vec![
                Step::sse_head(),
                Step::chunk("event: ping\ndata: {}\n\n"),
                Step::Hold,
            ]
        });
        let sluice = sluice_for(
            &upstream,
            &format!("    provider: {provider}\n    idle_timeout: 200ms\n    heartbeat: off\n"),
        );
        let mut client = Client::connect(sluice.addr);
        client.post_json(path, STREAM_REQUEST);
        let body = String::from_utf8(client.read_response().body).unwrap();
        let tail = body.strip_prefix("event: ping\ndata: {}\n\n").unwrap();
        let data = tail
            .strip_prefix("event: error\ndata: ")
            .and_then(|r| r.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("{provider}: not an error event: {tail:?}"));
        let error: serde_json::Value = serde_json::from_str(data).unwrap();
        if provider == "anthropic" {
            assert_eq!(error["type"], "error");
            assert_eq!(error["error"]["type"], "timeout_error");
        } else {
            assert_eq!(error["error"]["code"], "upstream_idle_timeout");
        }
    }
}

#[test]
fn idle_timeout_mid_event_closes_the_partial_event_first() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk("data: {\"partial\""),
            Step::Hold,
        ]
    });
    let sluice = sluice_for(
        &upstream,
        "    provider: anthropic\n    idle_timeout: 200ms\n",
    );
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/messages", STREAM_REQUEST);
    let body = client.read_response().text();
    assert!(
        body.starts_with("data: {\"partial\"\n\nevent: error\ndata: {"),
        "{body:?}"
    );
}

#[test]
fn silent_before_head_is_a_504_json_error() {
    let upstream = Upstream::start(|_| vec![Step::Hold]);
    let sluice = sluice_for(
        &upstream,
        "    provider: anthropic\n    idle_timeout: 300ms\n",
    );
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/messages", STREAM_REQUEST);
    let response = client.read_response();
    assert_eq!(response.status, 504);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let error = response.json();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "timeout_error");
}

#[test]
fn max_duration_ends_stream_cleanly() {
    let upstream = Upstream::start(|_| {
        let mut steps = vec![Step::sse_head()];
        for i in 0..100 {
            steps.push(Step::chunk(event(i)));
            steps.push(Step::sleep_ms(50));
        }
        steps.push(Step::End);
        steps
    });
    let sluice = sluice_for(&upstream, "    provider: openai\n    max_duration: 400ms\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    let started = Instant::now();
    let body = client.read_response().text();
    assert!(started.elapsed() < Duration::from_secs(4));
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("max_duration_exceeded"), "{last}");
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"max_duration\",route=\"/\"}",
        1.0,
    );
}

#[test]
fn upstream_broken_mid_stream_ends_with_error_event() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk(event(0)),
            Step::Raw(b"zz\r\nnot a chunk".to_vec()),
            Step::Close,
        ]
    });
    let sluice = sluice_for(&upstream, "    provider: openai\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    let body = client.read_response().text();
    assert!(body.starts_with(&event(0)), "{body}");
    assert!(body.contains("\"code\":\"upstream_error\""), "{body}");
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"upstream_error\",route=\"/\"}",
        1.0,
    );
}

#[test]
fn heartbeats_fill_silence_but_never_split_an_event() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk(event(0)),
            Step::sleep_ms(700),
            Step::chunk("data: {\"half\":"),
            Step::sleep_ms(700),
            Step::chunk("1}\n\n"),
            Step::End,
        ]
    });
    let sluice = sluice_for(&upstream, "    heartbeat: 200ms\n    idle_timeout: 5s\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    let body = client.read_response().text();
    let heartbeat = ": keep-alive\n\n";
    let beats = body.matches(heartbeat).count();
    assert!(
        (2..=4).contains(&beats),
        "heartbeats during the 700 ms gap between events: {beats} in {body:?}"
    );
    assert!(
        body.contains("data: {\"half\":1}\n\n"),
        "a heartbeat was inserted inside the half-sent event: {body:?}"
    );
    assert_eq!(
        body.replace(heartbeat, ""),
        format!("{}data: {{\"half\":1}}\n\n", event(0)),
        "apart from heartbeats, the client gets the upstream's bytes"
    );
    let metrics = sluice.metrics();
    assert!(support::metric_value(&metrics, "sluice_heartbeats_total{route=\"/\"}") >= 2.0);
}

#[test]
fn client_disconnect_mid_stream_closes_upstream_promptly() {
    let upstream = Upstream::start(|_| vec![Step::sse_head(), Step::chunk(event(0)), Step::Hold]);
    let sluice = sluice_for(&upstream, "    heartbeat: off\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    client.read_head();
    client.read_chunk().unwrap();
    let left = Instant::now();
    drop(client);
    let closed = upstream
        .wait_closed(Duration::from_secs(5))
        .expect("upstream connection closed");
    let delay = closed.saturating_duration_since(left);
    assert!(
        delay < Duration::from_millis(100),
        "upstream closed after {delay:?}"
    );
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"client_disconnect\",route=\"/\"}",
        1.0,
    );
    sluice.wait_metric("sluice_streams_in_flight{route=\"/\"}", 0.0);
}

#[test]
fn client_disconnect_before_first_byte_closes_upstream_promptly() {
    let upstream = Upstream::start(|_| vec![Step::Hold]);
    let sluice = sluice_for(&upstream, "");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    upstream.wait_requests(1);
    let left = Instant::now();
    drop(client);
    let closed = upstream
        .wait_closed(Duration::from_secs(5))
        .expect("upstream connection closed");
    let delay = closed.saturating_duration_since(left);
    assert!(
        delay < Duration::from_millis(100),
        "upstream closed after {delay:?}"
    );

    // Nothing was answered: not counted as a 5xx, which error-rate alerts read as a failure.
    sluice.wait_metric(
        "sluice_requests_total{route=\"/\",status_class=\"none\"}",
        1.0,
    );
    assert_eq!(sluice.wait_ledger(1)[0]["status"], 0);
}

#[test]
fn one_mebibyte_event_and_byte_per_write_stream_are_byte_identical() {
    let big = format!("data: {}\n\n", "x".repeat(1024 * 1024));
    let small = "event: delta\r\ndata: {\"t\":\"caf\u{e9} \u{1F600}\"}\r\n\r\n: c\n\ndata: end\r\r"
        .to_string();
    let (big_up, small_up) = (big.clone(), small.clone());
    let upstream = Upstream::start(move |req| {
        let mut steps = vec![Step::sse_head()];
        if req.path == "/big" {
            steps.push(Step::chunk(&big_up));
        } else {
            steps.extend(small_up.bytes().map(|b| Step::Chunk(vec![b])));
        }
        steps.push(Step::End);
        steps
    });
    let sluice = sluice_for(&upstream, "");
    let mut client = Client::connect(sluice.addr);
    client.send("GET", "/big", &[("accept", "text/event-stream")], b"");
    assert_eq!(client.read_response().body, big.as_bytes());
    client.send("GET", "/small", &[("accept", "text/event-stream")], b"");
    assert_eq!(client.read_response().body, small.as_bytes());
}

/// A head like the OpenAI Python SDK's (`x-stainless-*`, a long key): Sluice frees a stream
/// request's header fields once the response head is out, and the connection's next requests
/// must still be framed by the bodies' own lengths.
const SDK_HEAD: &str = "Accept-Encoding: gzip, deflate\r\nAccept: application/json\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.4\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.4\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.12.3\r\nAuthorization: Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyz\r\nX-Stainless-Async: false\r\nx-stainless-retry-count: 0\r\nx-stainless-read-timeout: 600\r\n";

#[test]
fn stream_requests_with_bodies_keep_a_connection_framed_and_logged() {
    let upstream = Upstream::start(|req| match req.path.as_str() {
        "/v1/models" => vec![Step::sized(200, "application/json", b"{\"data\":[]}")],
        _ => vec![Step::sse_head(), Step::chunk(event(0)), Step::End],
    });
    let dir = support::TempDir::new();
    let access_log = dir.path.join("stdout.log");
    let sluice = Sluice::start_with_output(
        &format!(
            "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    usage_comment: false\n    include_usage: false\n",
            upstream.url()
        ),
        std::process::Stdio::from(std::fs::File::create(&access_log).unwrap()),
        std::process::Stdio::null(),
    );
    let mut client = Client::connect(sluice.addr);
    // A sized body, then a chunked one, then a request without a body, on one connection.
    let sized = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sluice.test\r\n{SDK_HEAD}Content-Length: {}\r\n\r\n{STREAM_REQUEST}",
        STREAM_REQUEST.len()
    );
    let (first, second) = STREAM_REQUEST.split_at(10);
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: sluice.test\r\n{SDK_HEAD}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    for request in [&sized, &chunked] {
        client.send_raw(request.as_bytes());
        let response = client.read_response();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.body, event(0).as_bytes());
    }
    let models = client.get("/v1/models");
    assert_eq!(models.status, 200, "{}", models.text());
    assert_eq!(models.body, b"{\"data\":[]}");

    let requests = upstream.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests[..2] {
        assert_eq!(request.body, STREAM_REQUEST.as_bytes());
        assert_eq!(request.header("x-stainless-retry-count"), Some("0"));
    }
    assert_eq!(upstream.log.lock().unwrap().connections, 1);

    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = std::fs::read_to_string(&access_log).unwrap();
        if log.lines().count() >= 3 || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).expect("an access-log line is JSON"))
        .collect();
    let logged: Vec<(&str, &str, bool)> = lines
        .iter()
        .map(|l| {
            (
                l["method"].as_str().unwrap(),
                l["path"].as_str().unwrap(),
                l["stream"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        logged,
        [
            ("POST", "/v1/chat/completions", true),
            ("POST", "/v1/completions", true),
            ("GET", "/v1/models", false),
        ]
    );
}

/// HTTP/1.1 streams are written by Sluice on the connection itself (not Pingora's session): the
/// head still says whether the connection stays (`Connection`) and when (`Date`), a kept-alive
/// connection carries the next request, and `Connection: close` gets an orderly close after
/// the last chunk.
#[test]
fn stream_connection_is_kept_or_closed_as_the_client_asks() {
    let upstream = Upstream::start(|_| vec![Step::sse_head(), Step::chunk(event(0)), Step::End]);
    let sluice = sluice_for(&upstream, "");
    let mut client = Client::connect(sluice.addr);
    let kept = one_event_stream(&mut client, &[]);
    assert_eq!(kept.header("connection"), Some("keep-alive"));
    assert!(kept.header("date").is_some_and(|d| d.ends_with(" GMT")));

    let last = one_event_stream(&mut client, &[("connection", "close")]);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(
        client.closed_within(Duration::from_secs(5)),
        "the connection is closed after the last chunk"
    );
    assert_eq!(upstream.requests().len(), 2);
}

/// A stream request on `client` with `extra` header lines, answered with the one event the
/// upstream sends.
fn one_event_stream(client: &mut Client, extra: &[(&str, &str)]) -> support::client::Response {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    client.send(
        "POST",
        "/v1/chat/completions",
        &headers,
        STREAM_REQUEST.as_bytes(),
    );
    let response = client.read_response();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.body, event(0).as_bytes());
    response
}

/// Once shutdown has begun a connection carries no further request: one pipelined behind a
/// stream is not sent upstream (it could be after the grace period), and the connection closes
/// once the stream, which runs to its end, has ended.
#[test]
fn after_sigterm_a_request_pipelined_behind_a_stream_is_not_served() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk(event(0)),
            Step::Sleep(Duration::from_millis(500)),
            Step::chunk(event(1)),
            Step::End,
        ]
    });
    let sluice = sluice_for(&upstream, "");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sluice.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{STREAM_REQUEST}",
        STREAM_REQUEST.len()
    );
    let mut client = Client::connect(sluice.addr);
    client.send_raw(request.as_bytes());
    let head = client.read_head();
    assert_eq!(head.status, 200);
    let first = client.read_chunk().expect("a first event");
    sluice.signal("TERM");
    std::thread::sleep(Duration::from_millis(100));
    client.send_raw(request.as_bytes());
    let mut body = first.data;
    body.extend(client.read_chunked_body());
    assert_eq!(body, format!("{}{}", event(0), event(1)).as_bytes());
    assert!(
        client.closed_within(Duration::from_secs(3)),
        "the connection was kept"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "the pipelined request went upstream"
    );
}

/// A request pipelined behind a stream request (RFC 9112 §9.3.2) is served once the stream has
/// ended, on the same connection, and the stream's connection is kept for it.
#[test]
fn a_stream_request_pipelined_behind_another_is_served_after_it() {
    let upstream = Upstream::start(|_| vec![Step::sse_head(), Step::chunk(event(0)), Step::End]);
    let sluice = sluice_for(&upstream, "");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sluice.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{STREAM_REQUEST}",
        STREAM_REQUEST.len()
    );
    let mut client = Client::connect(sluice.addr);
    client.send_raw(format!("{request}{request}").as_bytes());
    for _ in 0..2 {
        let response = client.read_response();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.body, event(0).as_bytes());
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
    assert_eq!(upstream.requests().len(), 2);
}

/// A client that stops reading does not hold its stream: with its write waiting, the route's
/// `idle_timeout` with nothing taken ends the stream, closes the upstream (the provider stops
/// generating) and writes the usage record. Before, all of it waited for the client to leave.
#[test]
fn a_client_that_stops_reading_is_let_go_after_the_idle_timeout() {
    let event = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(64 * 1024));
    let upstream = Upstream::start(move |_| {
        // Far more than every buffer on the way holds.
        let mut steps = vec![Step::sse_head()];
        steps.extend((0..1024).map(|_| Step::chunk(&event)));
        steps.push(Step::End);
        steps
    });
    let sluice = sluice_for(&upstream, "    idle_timeout: 1s\n    heartbeat: off\n");
    let mut client = Client::connect(sluice.addr);
    let started = Instant::now();
    client.post_json("/v1/chat/completions", r#"{"model":"m","stream":true}"#);
    // The client reads nothing more.
    let records = sluice.wait_ledger(1);
    assert_eq!(records[0]["outcome"], "idle_timeout", "{}", records[0]);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        upstream.wait_closed(Duration::from_secs(5)).is_some(),
        "the upstream was left generating"
    );
}

/// An HTTP/1.1 client that reads steadily but slower than its stream is not taken for one that
/// stopped: with megabytes waiting in the kernel's send buffer a write wakes only once much of
/// it drained, so Sluice reads the socket's acknowledgements at the idle tick. Before, the
/// stream was cut after `idle_timeout` ("the client took nothing") while the client read on.
#[test]
fn an_http1_client_reading_steadily_behind_a_full_send_buffer_is_not_cut() {
    use std::io::Read;
    let event = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(4000));
    let upstream = Upstream::start(move |_| {
        // Far more than the socket buffers on the way hold.
        let mut steps = vec![Step::sse_head()];
        steps.extend((0..4000).map(|_| Step::chunk(&event)));
        steps.push(Step::End);
        steps
    });
    let sluice = sluice_for(&upstream, "    idle_timeout: 1s\n    heartbeat: off\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    assert_eq!(client.read_head().status, 200);
    let mut stream = client.stream().try_clone().unwrap();
    let started = Instant::now();
    let mut piece = [0u8; 4096];
    // ~100 KB/s for three idle timeouts, then the client leaves.
    while started.elapsed() < Duration::from_secs(3) {
        assert!(stream.read(&mut piece).unwrap() > 0);
        std::thread::sleep(Duration::from_millis(40));
    }
    drop(stream);
    drop(client);
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["outcome"], "client_disconnect", "{record}");
}

/// The usage comment goes after the upstream's last event only when that event was finished: a
/// stream that ends mid-line reaches the client as the upstream left it, not with the comment
/// glued on (`data: [DONE]: sluice-usage …`, an event the upstream never finished).
#[test]
fn no_usage_comment_after_an_unfinished_last_line() {
    for ending in ["data: [DONE]", "data: {\"partial", "data: [DONE]\n"] {
        let upstream = Upstream::start(move |_| {
            vec![
                Step::sse_head(),
                Step::chunk("data: {\"i\":0}\n\n"),
                Step::chunk(ending),
                Step::End,
            ]
        });
        let sluice = Sluice::start(&format!(
            "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n",
            upstream.url()
        ));
        let mut client = Client::connect(sluice.addr);
        client.post_json("/v1/chat/completions", STREAM_REQUEST);
        assert_eq!(client.read_head().status, 200);
        let body = client.read_chunked_body();
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("data: {{\"i\":0}}\n\n{ending}"),
            "{ending:?}"
        );
    }
}

/// `events` compressed as a server streaming gzip sends them: each event sync-flushed into a
/// piece of its own; the gzip trailer is left out (the caller adds `trailer()` or not).
fn gzip_pieces(events: &[&str]) -> (Vec<Vec<u8>>, Vec<u8>) {
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    let mut pieces = Vec::new();
    for e in events {
        encoder.write_all(e.as_bytes()).unwrap();
        encoder.flush().unwrap();
        pieces.push(std::mem::take(encoder.get_mut()));
    }
    (pieces, encoder.finish().unwrap())
}

fn gzip_stream_head() -> Step {
    Step::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
    )
}

/// Each piece of a compressed stream reaches the client as it comes: the last token before a
/// pause is not held back until the next one (flate2's decoder keeps a piece's end until
/// flushed), and not lost when the pause ends the stream.
#[test]
fn a_gzip_stream_reaches_the_client_piece_by_piece() {
    let (pieces, _) = gzip_pieces(&["data: one\n\n", "data: two\n\n"]);
    let upstream = Upstream::start(move |_| {
        vec![
            gzip_stream_head(),
            Step::chunk(&pieces[0]),
            Step::chunk(&pieces[1]),
            Step::Hold,
        ]
    });
    let sluice = sluice_for(
        &upstream,
        "    provider: openai\n    idle_timeout: 2s\n    heartbeat: off\n",
    );
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    assert_eq!(client.read_head().status, 200);
    let body = String::from_utf8(client.read_chunked_body()).unwrap();
    assert!(
        body.starts_with("data: one\n\ndata: two\n\ndata: {\"error\""),
        "{body:?}"
    );
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["outcome"], "idle_timeout");
}

/// A compressed stream that stops decoding (corrupt, or cut before the gzip trailer) is no
/// complete stream: what decoded reaches the client, then an upstream error ends it.
#[test]
fn a_gzip_stream_that_does_not_decode_ends_as_an_upstream_error() {
    let (pieces, trailer) = gzip_pieces(&["data: one\n\n", "data: two\n\n"]);
    let corrupt: Vec<u8> = pieces[1].iter().map(|b| b ^ 0x5a).collect();
    let cases = [
        ("corrupt", vec![pieces[0].clone(), corrupt]),
        ("cut", vec![pieces[0].clone(), pieces[1].clone()]),
        (
            "whole",
            vec![pieces[0].clone(), pieces[1].clone(), trailer.clone()],
        ),
    ];
    for (case, body) in cases {
        let upstream = Upstream::start(move |_| {
            // Apart: a read that does not decode loses what it held before the fault.
            let mut steps = vec![gzip_stream_head()];
            for piece in &body {
                steps.push(Step::chunk(piece));
                steps.push(Step::sleep_ms(300));
            }
            steps.push(Step::End);
            steps
        });
        let sluice = sluice_for(&upstream, "    provider: openai\n");
        let mut client = Client::connect(sluice.addr);
        client.post_json("/v1/chat/completions", STREAM_REQUEST);
        assert_eq!(client.read_head().status, 200, "{case}");
        let body = String::from_utf8(client.read_chunked_body()).unwrap();
        let record = &sluice.wait_ledger(1)[0];
        if case == "whole" {
            assert_eq!(body, "data: one\n\ndata: two\n\n");
            assert_eq!(record["outcome"], "completed");
        } else {
            assert!(body.starts_with("data: one\n\n"), "{case}: {body:?}");
            assert!(body.contains("\"upstream_error\""), "{case}: {body:?}");
            assert_eq!(record["outcome"], "upstream_error", "{case}");
        }
    }
}

/// A stream in a coding Sluice cannot undo goes through untouched, with its `Content-Encoding`:
/// nothing (heartbeat, usage comment, terminal event) is written into bytes it cannot read.
#[test]
fn a_stream_in_a_coding_sluice_cannot_undo_passes_through_untouched() {
    let body: Vec<u8> = (0u8..=255).collect();
    let sent = body.clone();
    let upstream = Upstream::start(move |_| {
        let mut head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: zstd\r\ncontent-length: {}\r\n\r\n",
            sent.len()
        )
        .into_bytes();
        head.extend_from_slice(&sent);
        vec![Step::Raw(head)]
    });
    let sluice = sluice_for(&upstream, "    provider: openai\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-encoding"), Some("zstd"));
    assert_eq!(response.body, body);
}

/// Time to first byte times the upstream's answer: a heartbeat sent while the upstream is still
/// silent is not its first byte.
#[test]
fn heartbeats_before_the_first_event_are_not_its_first_byte() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::sleep_ms(1_200),
            Step::chunk("data: one\n\n"),
            Step::End,
        ]
    });
    let sluice = sluice_for(&upstream, "    heartbeat: 200ms\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    let body = String::from_utf8(client.read_response().body).unwrap();
    assert!(body.starts_with(": keep-alive"), "{body:?}");
    let record = &sluice.wait_ledger(1)[0];
    let ttfb = record["ttfb_ms"].as_f64().expect("ttfb_ms");
    assert!(ttfb >= 1_100.0, "ttfb_ms {ttfb}");
}

/// `sluice_stream_bytes_total` counts what the client got: the upstream's bytes and Sluice's own
/// (heartbeats, the final frame held for the ledger, a terminal event), as the access log does.
/// The usage record's `bytes` counts the upstream's bytes the client got, and only those.
#[test]
fn stream_bytes_count_everything_the_client_got() {
    let upstream = Upstream::start(|req| {
        let mut steps = vec![
            Step::sse_head(),
            Step::chunk("data: one\n\n"),
            Step::sleep_ms(700),
        ];
        if req.path.ends_with("/done") {
            steps.extend([Step::chunk("data: [DONE]\n\n"), Step::End]);
        } else {
            steps.push(Step::Hold);
        }
        steps
    });
    let sluice = sluice_for(
        &upstream,
        "    provider: openai\n    heartbeat: 200ms\n    idle_timeout: 1500ms\n",
    );
    let mut got = 0;
    for path in ["/v1/chat/completions/done", "/v1/chat/completions/cut"] {
        let mut client = Client::connect(sluice.addr);
        client.post_json(path, STREAM_REQUEST);
        let body = client.read_response().body;
        assert!(body.starts_with(b"data: one\n\n: keep-alive"), "{path}");
        got += body.len();
    }
    let records = sluice.wait_ledger(2);
    sluice.wait_metric("sluice_stream_bytes_total{route=\"/\"}", got as f64);
    let upstream_bytes: Vec<_> = records.iter().map(|r| r["bytes"].as_u64()).collect();
    assert_eq!(
        upstream_bytes,
        [Some(25), Some(11)],
        "data: one, then data: [DONE] (held for the ledger) or nothing: {records:?}"
    );
}

/// `sluice_usage_ledger_queue_records` says how many records are not on disk yet: once the
/// ledger holds every record, 0. It stayed at the count seen when the last record was queued,
/// which for an answer that is no stream (an upstream's 429) is before it was written.
#[test]
fn the_ledger_queue_gauge_empties_with_the_queue() {
    let upstream = Upstream::start(|_| {
        vec![Step::sized(
            429,
            "application/json",
            br#"{"error":{"message":"slow down"}}"#,
        )]
    });
    let sluice = sluice_for(&upstream, "    provider: openai\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", STREAM_REQUEST);
    assert_eq!(client.read_response().status, 429);
    sluice.wait_ledger(1);
    sluice.wait_metric("sluice_usage_ledger_queue_records", 0.0);
}
