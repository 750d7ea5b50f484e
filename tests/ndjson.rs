//! JSON-lines streams (NDJSON, Ollama style) through the real binary: unbuffered delivery, no
//! heartbeats, a clean final error line on idle timeout and max duration (never a cut line),
//! stream slots for Ollama requests, and a usage record for every such stream.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{Client, Sluice, Step, Upstream};

const NDJSON: &str = "application/x-ndjson";

fn sluice_for(upstream: &Upstream, route: &str) -> Sluice {
    Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n{route}",
        upstream.url()
    ))
}

fn line(i: usize) -> String {
    format!("{{\"model\":\"llama3\",\"message\":{{\"content\":\"token {i}\"}},\"done\":false}}\n")
}

const CHAT: &str = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#;

/// The body's lines, each parsed as JSON.
fn json_lines(body: &str) -> Vec<Value> {
    assert!(
        body.ends_with('\n'),
        "the body ends with a whole line: {body:?}"
    );
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

#[test]
fn lines_arrive_one_by_one_as_written_without_heartbeats() {
    let upstream = Upstream::start(|_| {
        let mut steps = vec![Step::chunked_head(NDJSON)];
        for i in 0..8 {
            steps.push(Step::sleep_ms(if i == 4 { 450 } else { 60 }));
            steps.push(Step::chunk(line(i)));
        }
        steps.push(Step::End);
        steps
    });
    // A heartbeat interval far below the upstream's silence: none may appear in NDJSON.
    let sluice = sluice_for(&upstream, "    heartbeat: 100ms\n");
    let mut client = Client::connect(sluice.addr);
    client.send(
        "POST",
        "/api/chat",
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip"),
        ],
        CHAT.as_bytes(),
    );
    let head = client.read_head();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some(NDJSON));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("x-accel-buffering"), Some("no"));
    assert_eq!(head.header("content-length"), None);
    let chunks = client.read_chunks();
    let sent = upstream.sent();
    assert_eq!(
        chunks.len(),
        8,
        "each line is its own chunk: no heartbeat, no coalescing"
    );
    for (i, (chunk, (sent_at, data))) in chunks.iter().zip(&sent).enumerate() {
        assert_eq!(&chunk.data, data);
        let delay = chunk.at.saturating_duration_since(*sent_at);
        assert!(delay < Duration::from_millis(20), "line {i} took {delay:?}");
    }
    assert_eq!(
        upstream.requests()[0].header("accept-encoding"),
        None,
        "an Ollama chat request is a stream request: no compression asked upstream"
    );
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"completed\",route=\"/\"}",
        1.0,
    );
    assert_eq!(sluice.metric("sluice_heartbeats_total{route=\"/\"}"), 0.0);
    // Every JSON-lines stream has a usage record (no usage is read from NDJSON).
    let records = sluice.wait_ledger(1);
    assert_eq!(records[0]["outcome"], "completed");
    assert_eq!(records[0]["usage_source"], "none");
    assert_eq!(records[0]["status"], 200);
    assert_eq!(
        records[0]["bytes"],
        sent.iter().map(|(_, d)| d.len()).sum::<usize>()
    );
}

#[test]
fn idle_timeout_mid_line_ends_the_line_then_adds_an_error_line() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::chunked_head("application/x-ndjson; charset=utf-8"),
            Step::chunk(format!("{}{{\"model\":\"llama3\",\"mess", line(0))),
            Step::Hold,
        ]
    });
    let sluice = sluice_for(
        &upstream,
        "    provider: openai\n    idle_timeout: 300ms\n    heartbeat: 50ms\n",
    );
    let mut client = Client::connect(sluice.addr);
    let asked = Instant::now();
    client.post_json("/api/generate", CHAT);
    let response = client.read_response();
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(1500), "ended after {took:?}");
    let body = response.text();
    let expected_start = format!("{}{{\"model\":\"llama3\",\"mess\n", line(0));
    assert!(body.starts_with(&expected_start), "{body:?}");
    let last = body.strip_prefix(&expected_start).unwrap();
    let lines = json_lines(last);
    assert_eq!(lines.len(), 1, "one error line: {last:?}");
    assert_eq!(lines[0]["error"]["code"], "upstream_idle_timeout");
    assert_eq!(lines[0]["error"]["type"], "server_error");
    assert!(
        upstream.wait_closed(Duration::from_secs(2)).is_some(),
        "the idle upstream connection is closed, not pooled"
    );
    sluice.wait_metric(
        "sluice_streams_finished_total{outcome=\"idle_timeout\",route=\"/\"}",
        1.0,
    );
    let records = sluice.wait_ledger(1);
    assert_eq!(records[0]["outcome"], "idle_timeout");
    assert_eq!(records[0]["usage_source"], "none");
    // A clean end: the client connection is still usable.
    assert!(client.get("/api/tags").status > 0);
}

#[test]
fn max_duration_ends_with_an_error_line_in_the_providers_format() {
    for (provider, content_type) in [
        ("anthropic", "application/jsonl"),
        ("gemini", "application/x-ndjson"),
    ] {
        let upstream = Upstream::start(|_| {
            let mut steps = vec![Step::chunked_head(content_type)];
            for i in 0..100 {
                steps.push(Step::chunk(line(i)));
                steps.push(Step::sleep_ms(50));
            }
            steps.push(Step::End);
            steps
        });
        let sluice = sluice_for(
            &upstream,
            &format!("    provider: {provider}\n    max_duration: 400ms\n"),
        );
        let mut client = Client::connect(sluice.addr);
        client.post_json("/api/chat", CHAT);
        let body = client.read_response().text();
        let lines = json_lines(&body);
        assert!(lines.len() > 3, "{provider}: {body:?}");
        let (last, upstream_lines) = lines.split_last().unwrap();
        assert!(upstream_lines.iter().all(|l| l["done"] == false));
        match provider {
            "anthropic" => {
                assert_eq!(last["type"], "error");
                assert_eq!(last["error"]["type"], "timeout_error");
            }
            _ => {
                assert_eq!(last["error"]["status"], "DEADLINE_EXCEEDED");
                assert_eq!(last["error"]["code"], 504);
            }
        }
        sluice.wait_metric(
            "sluice_streams_finished_total{outcome=\"max_duration\",route=\"/\"}",
            1.0,
        );
    }
}

#[test]
fn json_seq_error_record_starts_with_a_record_separator() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::chunked_head("application/json-seq"),
            Step::chunk("\u{1e}{\"a\":1}\n"),
            Step::Hold,
        ]
    });
    let sluice = sluice_for(&upstream, "    idle_timeout: 200ms\n");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/x", r#"{"stream":true}"#);
    let body = client.read_response().text();
    let last = body.strip_prefix("\u{1e}{\"a\":1}\n\u{1e}").unwrap();
    let error: Value = serde_json::from_str(last.strip_suffix('\n').unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "upstream_idle_timeout");
}

#[test]
fn ollama_requests_take_a_stream_slot_unless_stream_false() {
    let upstream = Upstream::start(|request| {
        if String::from_utf8_lossy(&request.body).contains("\"stream\":false") {
            vec![Step::sized(200, "application/json", br#"{"done":true}"#)]
        } else {
            vec![Step::chunked_head(NDJSON), Step::chunk(line(0)), Step::Hold]
        }
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\nlimits:\n  global_streams: 1\n",
        upstream.url()
    ));
    let mut first = Client::connect(sluice.addr);
    first.post_json("/api/chat", CHAT);
    assert_eq!(first.read_head().status, 200);
    assert_eq!(first.read_chunk().unwrap().data, line(0).as_bytes());

    let mut second = Client::connect(sluice.addr);
    second.post_json("/api/generate", r#"{"model":"llama3","prompt":"hi"}"#);
    let refused = second.read_response();
    assert_eq!(refused.status, 429, "{}", refused.text());

    let mut plain = Client::connect(sluice.addr);
    plain.post_json("/api/chat", r#"{"model":"llama3","stream":false}"#);
    let answered = plain.read_response();
    assert_eq!(answered.status, 200, "`stream: false` takes no slot");

    drop(first);
    assert!(upstream.wait_closed(Duration::from_secs(2)).is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let limits = Client::connect(sluice.admin).get("/limits").json();
        if limits["in_flight"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "slot still held: {limits}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut third = Client::connect(sluice.addr);
    third.post_json("/api/chat", CHAT);
    assert_eq!(third.read_head().status, 200, "the slot was released");
}
