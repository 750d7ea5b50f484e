//! Usage accounting through the real binary: for each provider format, the client gets the
//! upstream's bytes (plus the documented usage comment, minus the usage chunk Sluice asked for
//! on its behalf) and the ledger gets the provider's figures; every outcome writes a record; a
//! record is durable before the client sees the end of its stream.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Client, Sluice, Step, Upstream};

struct Case {
    fixture: &'static str,
    provider: &'static str,
    path: &'static str,
}

const CASES: &[Case] = &[
    Case {
        fixture: "openai_chat_text",
        provider: "openai",
        path: "/v1/chat/completions",
    },
    Case {
        fixture: "openai_chat_tool_calls",
        provider: "openai",
        path: "/v1/chat/completions",
    },
    Case {
        fixture: "openai_chat_reasoning_cached",
        provider: "openai",
        path: "/v1/chat/completions",
    },
    Case {
        fixture: "openai_chat_error",
        provider: "openai",
        path: "/v1/chat/completions",
    },
    Case {
        fixture: "openai_completions",
        provider: "openai",
        path: "/v1/completions",
    },
    Case {
        fixture: "openai_responses",
        provider: "openai",
        path: "/v1/responses",
    },
    Case {
        fixture: "openai_responses_failed",
        provider: "openai",
        path: "/v1/responses",
    },
    Case {
        fixture: "anthropic_text",
        provider: "anthropic",
        path: "/v1/messages",
    },
    Case {
        fixture: "anthropic_tool_use",
        provider: "anthropic",
        path: "/v1/messages",
    },
    Case {
        fixture: "anthropic_thinking_cached",
        provider: "anthropic",
        path: "/v1/messages",
    },
    Case {
        fixture: "anthropic_error",
        provider: "anthropic",
        path: "/v1/messages",
    },
    Case {
        fixture: "gemini_text",
        provider: "gemini",
        path: "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
    },
    Case {
        fixture: "gemini_thinking_cached",
        provider: "gemini",
        path: "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
    },
];

fn fixture(name: &str) -> (Vec<u8>, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let stream = std::fs::read(format!("{dir}/{name}.sse")).unwrap();
    let expected = std::fs::read_to_string(format!("{dir}/{name}.expected.json")).unwrap();
    (stream, serde_json::from_str(&expected).unwrap())
}

/// An upstream that writes `stream` in chunks of `size` bytes (split anywhere).
fn fixture_upstream(stream: Vec<u8>, size: usize) -> Upstream {
    Upstream::start(move |_| {
        let mut steps = vec![Step::sse_head()];
        steps.extend(stream.chunks(size).map(Step::chunk));
        steps.push(Step::End);
        steps
    })
}

fn sluice_for(upstream: &Upstream, provider: &str) -> Sluice {
    Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: {provider}\n",
        upstream.url()
    ))
}

/// Asks for usage itself, so that nothing is stripped: the client's bytes must be the
/// upstream's plus the usage comment.
const ASKS_FOR_USAGE: &str =
    r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;

#[test]
fn every_provider_format_bytes_through_and_figures_in_the_ledger() {
    for case in CASES {
        let (stream, expected) = fixture(case.fixture);
        let upstream = fixture_upstream(stream.clone(), 37);
        let sluice = sluice_for(&upstream, case.provider);
        let mut client = Client::connect(sluice.addr);
        client.post_json(case.path, ASKS_FOR_USAGE);
        let response = client.read_response();
        assert_eq!(response.status, 200, "{}", case.fixture);
        let records = sluice.wait_ledger(1);
        let record = &records[0];
        // The client gets exactly the upstream's bytes, then one usage comment.
        let body = &response.body;
        assert!(
            body.len() > stream.len() && body[..stream.len()] == stream[..],
            "{}: the client's bytes differ from the upstream's\n got: {:?}",
            case.fixture,
            String::from_utf8_lossy(body)
        );
        let comment = std::str::from_utf8(&body[stream.len()..]).unwrap();
        let json = comment
            .strip_prefix(": sluice-usage ")
            .and_then(|c| c.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("{}: not one usage comment: {comment:?}", case.fixture));
        assert_eq!(
            serde_json::from_str::<Value>(json).unwrap(),
            comment_of(record),
            "{}",
            case.fixture
        );
        let facts = &expected["facts"];
        assert_eq!(record["outcome"], "completed", "{}", case.fixture);
        assert_eq!(record["model"], facts["model"], "{}", case.fixture);
        assert_eq!(
            record["usage_source"], facts["usage_source"],
            "{}",
            case.fixture
        );
        assert_eq!(
            record["end_marker_seen"], facts["end_marker_seen"],
            "{}",
            case.fixture
        );
        assert_eq!(
            record["finish_reason"], facts["finish_reason"],
            "{}",
            case.fixture
        );
        assert_eq!(record["events"], facts["events"], "{}", case.fixture);
        assert_eq!(
            record.get("provider_error").is_some(),
            facts.get("provider_error").is_some(),
            "{}",
            case.fixture
        );
        for kind in [
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_creation_input_tokens",
            "reasoning_tokens",
            "total_tokens",
        ] {
            assert_eq!(
                record.get(kind),
                facts["usage"].get(kind),
                "{}: {kind}",
                case.fixture
            );
        }
        assert_eq!(record["provider"], case.provider);
        assert_eq!(record["status"], 200);
        assert_eq!(record["request_id"].as_str().map(str::len), Some(32));
        if let Some(input) = facts["usage"].get("input_tokens").and_then(Value::as_u64) {
            let series = format!(
                "sluice_usage_tokens_total{{kind=\"input\",model=\"{}\",provider=\"{}\",route=\"/\"}}",
                facts["model"].as_str().unwrap(),
                case.provider
            );
            assert_eq!(sluice.metric(&series), input as f64, "{series}");
        }
    }
}

/// The in-band comment carries the record's request id, model and figures.
fn comment_of(record: &Value) -> Value {
    let mut comment = json!({ "request_id": record["request_id"] });
    if let Some(model) = record.get("model") {
        comment["model"] = model.clone();
    }
    for kind in [
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_creation_input_tokens",
        "reasoning_tokens",
        "total_tokens",
    ] {
        if let Some(v) = record.get(kind) {
            comment[kind] = v.clone();
        }
    }
    comment["usage_source"] = record["usage_source"].clone();
    comment
}

/// A body of exactly 1 MiB (the most Sluice reads before forwarding) is read whole and asked
/// for usage like a smaller one; it was taken for a larger one and forwarded untouched.
#[test]
fn a_body_of_exactly_the_inspected_size_is_asked_for_usage() {
    let (stream, _) = fixture("openai_chat_text");
    let upstream = fixture_upstream(stream, 1000);
    let sluice = sluice_for(&upstream, "openai");
    let head = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let body = format!(
        "{head}{}{tail}",
        "a".repeat(1024 * 1024 - head.len() - tail.len())
    );
    assert_eq!(body.len(), 1024 * 1024);
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", &body);
    assert_eq!(client.read_response().status, 200);
    let sent: Value = serde_json::from_slice(&upstream.requests()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[test]
fn include_usage_is_injected_and_its_chunk_stripped() {
    let (stream, expected) = fixture("openai_chat_text");
    let upstream = fixture_upstream(stream.clone(), 1000);
    let sluice = sluice_for(&upstream, "openai");
    let mut client = Client::connect(sluice.addr);
    let body =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    client.post_json("/v1/chat/completions", body);
    let response = client.read_response();
    let sent: Value = serde_json::from_slice(&upstream.requests()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["messages"][0]["content"], "hi");
    let text = response.text();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| e.starts_with("data: "))
        .collect();
    for event in &events {
        if *event == "data: [DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&event[6..]).unwrap();
        assert!(
            chunk["choices"].as_array().is_some_and(|c| !c.is_empty()),
            "a naive choices[0] client would break on {event}"
        );
    }
    let upstream_events = String::from_utf8(stream).unwrap().matches("data: ").count();
    assert_eq!(
        events.len(),
        upstream_events - 1,
        "exactly the usage chunk is removed"
    );
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(
        record["input_tokens"],
        expected["facts"]["usage"]["input_tokens"]
    );
    assert_eq!(record["usage_source"], "provider");
}

#[test]
fn client_that_asked_for_usage_gets_the_body_unchanged() {
    let (stream, _) = fixture("openai_chat_text");
    let upstream = fixture_upstream(stream, 1000);
    let sluice = sluice_for(&upstream, "openai");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", ASKS_FOR_USAGE);
    let response = client.read_response();
    assert_eq!(upstream.requests()[0].body, ASKS_FOR_USAGE.as_bytes());
    assert!(response.text().contains("\"choices\":[]"));
}

#[test]
fn non_json_and_non_openai_bodies_are_forwarded_untouched() {
    let (stream, _) = fixture("anthropic_text");
    let upstream = fixture_upstream(stream, 1000);
    let sluice = sluice_for(&upstream, "openai");
    let mut client = Client::connect(sluice.addr);
    let body = "stream=true&not=json";
    client.send(
        "POST",
        "/v1/chat/completions",
        &[("accept", "text/event-stream")],
        body.as_bytes(),
    );
    client.read_response();
    assert_eq!(upstream.requests()[0].body, body.as_bytes());
}

fn chat_events(n: usize) -> Vec<Step> {
    let mut steps = vec![Step::sse_head()];
    for i in 0..n {
        steps.push(Step::chunk(format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i}\"}},\"finish_reason\":null}}]}}\n\n"
        )));
    }
    steps
}

#[test]
fn every_outcome_writes_a_record() {
    let upstream = Upstream::start(|req| {
        let mut steps = chat_events(2);
        match req.path.as_str() {
            "/idle/chat/completions" => steps.push(Step::Hold),
            "/gone/chat/completions" => steps.push(Step::Hold),
            "/broken/chat/completions" => {
                steps.push(Step::Raw(b"zz\r\nbroken".to_vec()));
                steps.push(Step::Close);
            }
            _ => steps = vec![Step::Hold],
        }
        steps
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n    idle_timeout: 300ms\n",
        upstream.url()
    ));
    let body = r#"{"model":"gpt-4o","stream":true}"#;

    let mut client = Client::connect(sluice.addr);
    client.post_json("/idle/chat/completions", body);
    client.read_response();
    let mut client = Client::connect(sluice.addr);
    client.post_json("/broken/chat/completions", body);
    client.read_response();
    let mut client = Client::connect(sluice.addr);
    client.post_json("/gone/chat/completions", body);
    client.read_head();
    client.read_chunk().unwrap();
    drop(client);
    // Silent before its head: a 504, still a stream request with a record.
    let mut client = Client::connect(sluice.addr);
    client.post_json("/head/chat/completions", body);
    assert_eq!(client.read_response().status, 504);

    let records = sluice.wait_ledger(4);
    let outcome_of = |path: &str| -> Value {
        records
            .iter()
            .find(|r| {
                // Records do not carry the path; match by the order the upstream saw them.
                let i = upstream
                    .requests()
                    .iter()
                    .position(|q| q.path == path)
                    .unwrap();
                r["request_id"] == json!(upstream.requests()[i].header("x-request-id").unwrap())
            })
            .unwrap_or_else(|| panic!("no record for {path}: {records:?}"))
            .clone()
    };
    let idle = outcome_of("/idle/chat/completions");
    assert_eq!(idle["outcome"], "idle_timeout");
    assert_eq!(idle["model"], "gpt-4o");
    assert_eq!(idle["usage_source"], "none");
    assert_eq!(idle["end_marker_seen"], false);
    assert_eq!(
        outcome_of("/broken/chat/completions")["outcome"],
        "upstream_error"
    );
    assert_eq!(
        outcome_of("/gone/chat/completions")["outcome"],
        "client_disconnect"
    );
    let head = outcome_of("/head/chat/completions");
    assert_eq!(head["outcome"], "idle_timeout");
    assert_eq!(head["status"], 504);
}

#[test]
fn record_is_durable_before_the_client_sees_the_end() {
    let (stream, _) = fixture("anthropic_text");
    let upstream = fixture_upstream(stream, 1000);
    let mut sluice = sluice_for(&upstream, "anthropic");
    for _ in 0..20 {
        let mut client = Client::connect(sluice.addr);
        client.post_json("/v1/messages", r#"{"model":"claude","stream":true}"#);
        let response = client.read_response();
        assert!(response.text().contains("message_stop"));
    }
    // Every one of the 20 streams ended at its client: a crash now must lose none.
    sluice.kill();
    let records = sluice.ledger();
    assert_eq!(records.len(), 20, "records lost by kill -9");
    assert!(records.iter().all(|r| r["outcome"] == "completed"));
}

#[test]
fn oversized_event_passes_through_and_is_counted() {
    let big = format!("data: {}\n\n", "x".repeat(3000));
    let done = "data: [DONE]\n\n";
    let body = format!("{big}{done}");
    let upstream = fixture_upstream(body.clone().into_bytes(), 512);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n    usage_comment: false\nusage:\n  max_event_size: 1024\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", ASKS_FOR_USAGE);
    assert_eq!(client.read_response().text(), body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sluice.metric("sluice_sse_oversized_events_total{route=\"/\"}") != 1.0 {
        assert!(Instant::now() < deadline, "oversized event not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reopens_the_ledger_after_rotation_without_losing_a_record() {
    let (stream, _) = fixture("anthropic_text");
    let upstream = fixture_upstream(stream, 1000);
    let sluice = sluice_for(&upstream, "anthropic");
    let one_stream = || {
        let mut client = Client::connect(sluice.addr);
        client.post_json("/v1/messages", r#"{"model":"claude","stream":true}"#);
        assert_eq!(client.read_response().status, 200);
    };
    for _ in 0..3 {
        one_stream();
    }
    assert_eq!(sluice.ledger().len(), 3);
    let rotated = sluice.ledger_path().with_extension("jsonl.1");
    std::fs::rename(sluice.ledger_path(), &rotated).unwrap();
    sluice.signal("HUP");
    // Until the reopen happens, records still go to the renamed file: none may be lost.
    let mut sent = 3;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sluice.ledger().is_empty() {
        assert!(Instant::now() < deadline, "the ledger was never reopened");
        one_stream();
        sent += 1;
    }
    let old = std::fs::read_to_string(&rotated).unwrap().lines().count();
    assert_eq!(
        old + sluice.ledger().len(),
        sent,
        "records lost or duplicated across the reopen"
    );
}

#[test]
fn inspection_off_passes_bytes_and_records_outcomes_only() {
    let (stream, _) = fixture("openai_chat_text");
    let upstream = fixture_upstream(stream.clone(), 100);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n    usage_comment: false\nusage:\n  inspect: false\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    let body = r#"{"model":"gpt-4o-mini","stream":true}"#;
    client.post_json("/v1/chat/completions", body);
    assert_eq!(client.read_response().body, stream);
    assert_eq!(
        upstream.requests()[0].body,
        body.as_bytes(),
        "include_usage not added"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let series =
        "sluice_usage_records_total{outcome=\"completed\",route=\"/\",usage_source=\"none\"}";
    while sluice.metric(series) != 1.0 {
        assert!(Instant::now() < deadline, "no record counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An upstream that leaves its body open after the provider's end marker: the stream ends as
/// completed within a second of the marker, its record written and the marker delivered, rather
/// than when the idle timeout (20 s here) gives up on the upstream. Before, with
/// `durability: before_end`, the client did not even see `[DONE]` until then.
#[test]
fn a_stream_left_open_after_its_end_marker_ends_soon_after_it() {
    let upstream = Upstream::start(|_| {
        let mut steps = chat_events(2);
        steps.push(Step::chunk("data: [DONE]\n\n"));
        steps.push(Step::Hold);
        steps
    });
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n    idle_timeout: 20s\n    usage_comment: false\n",
        upstream.url()
    ));
    let started = Instant::now();
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", ASKS_FOR_USAGE);
    let response = client.read_response();
    let took = started.elapsed();
    assert!(
        response.text().ends_with("data: [DONE]\n\n"),
        "{}",
        response.text()
    );
    assert!(took < Duration::from_secs(10), "ended after {took:?}");
    let records = sluice.wait_ledger(1);
    assert_eq!(records[0]["outcome"], "completed");
    assert_eq!(records[0]["end_marker_seen"], true);
    // The connection was in the middle of a body: closed, not pooled.
    assert!(upstream.wait_closed(Duration::from_secs(5)).is_some());
}

/// What an upstream sends after its end marker is held (until the record is durable) only up
/// to `max_event_size`: past it the stream ends there, with everything that had arrived, and
/// what the upstream sends later is not waited for.
#[test]
fn bytes_after_the_end_marker_are_held_only_up_to_the_event_size_limit() {
    let filler = format!(": {}\n\n", "x".repeat(8 * 1024));
    let sent = filler.clone();
    let upstream = Upstream::start(move |_| {
        let mut steps = chat_events(1);
        steps.push(Step::chunk("data: [DONE]\n\n"));
        steps.push(Step::chunk(&sent));
        steps.push(Step::sleep_ms(400));
        steps.push(Step::chunk("data: after\n\n"));
        steps.push(Step::Hold);
        steps
    });
    // The final frame is held only with a ledger (`before_end`).
    let dir = support::TempDir::new();
    let ledger = dir.path.join("usage.jsonl");
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n    idle_timeout: 20s\n    usage_comment: false\nusage:\n  ledger: {}\n  max_event_size: 4096\n",
        upstream.url(),
        ledger.display()
    ));
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/chat/completions", ASKS_FOR_USAGE);
    let text = client.read_response().text();
    assert!(
        text.ends_with(&format!("data: [DONE]\n\n{filler}")),
        "the stream should end with the marker and what came with it: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    // Held until durable: the record is in the file by the time the client has the end.
    let records = std::fs::read_to_string(&ledger).unwrap();
    let record: Value = serde_json::from_str(records.lines().next().unwrap()).unwrap();
    assert_eq!(record["outcome"], "completed");
    drop(sluice);
}

#[test]
fn a_negative_final_output_figure_keeps_the_input_figures() {
    // The audit's stream: Anthropic's documented stream, its final delta counting -5 tokens.
    let (stream, _) = fixture("anthropic_text");
    let text = String::from_utf8(stream).unwrap();
    let stream = text.replace(r#""output_tokens": 15"#, r#""output_tokens": -5"#);
    assert_ne!(stream, text);
    let upstream = fixture_upstream(stream.clone().into_bytes(), 37);
    let sluice = sluice_for(&upstream, "anthropic");
    let mut client = Client::connect(sluice.addr);
    client.post_json("/v1/messages", r#"{"model":"claude","stream":true}"#);
    let response = client.read_response();
    assert!(response.body.starts_with(stream.as_bytes()));
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["usage_source"], "provider", "{record}");
    assert_eq!(record["input_tokens"], 25, "{record}");
    assert_eq!(record.get("output_tokens"), None, "{record}");
    assert_eq!(record.get("total_tokens"), None, "{record}");
    assert_eq!(record["outcome"], "completed");
    assert_eq!(record["finish_reason"], "end_turn");
    assert_eq!(record["end_marker_seen"], true);
    let comment = std::str::from_utf8(&response.body[stream.len()..]).unwrap();
    let json = comment
        .strip_prefix(": sluice-usage ")
        .and_then(|c| c.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not one usage comment: {comment:?}"));
    assert_eq!(
        serde_json::from_str::<Value>(json).unwrap(),
        comment_of(record)
    );
}

/// A Gemini stream without `alt=sse`: a JSON array of responses, streamed element by element.
const GEMINI_ARRAY: [&str; 3] = [
    "[{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 5,\"totalTokenCount\": 5},\"modelVersion\": \"gemini-2.0-flash\"}\n",
    ",\r\n{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 5,\"candidatesTokenCount\": 2,\"totalTokenCount\": 7},\"modelVersion\": \"gemini-2.0-flash\"}\n",
    "]",
];

const GEMINI_ARRAY_PATH: &str = "/v1beta/models/gemini-2.0-flash:streamGenerateContent";

fn gemini_array_upstream(steps: Vec<Step>) -> Upstream {
    Upstream::start(move |_| {
        let mut all = vec![Step::chunked_head("application/json; charset=UTF-8")];
        all.extend(steps.iter().cloned());
        all
    })
}

/// Gemini's `streamGenerateContent` without `alt=sse` answers a JSON array streamed element by
/// element: its usage is read as it passes (however the elements are cut), its bytes reach the
/// client unchanged, and the record has the figures. Before, such a stream was a plain answer
/// and its record said `usage_source: none`.
#[test]
fn a_gemini_stream_without_alt_sse_has_its_usage_read() {
    let whole = GEMINI_ARRAY.concat();
    for size in [1, 7, whole.len()] {
        let pieces: Vec<Step> = whole.as_bytes().chunks(size).map(Step::chunk).collect();
        let upstream = gemini_array_upstream([pieces, vec![Step::End]].concat());
        let sluice = sluice_for(&upstream, "gemini");
        let mut client = Client::connect(sluice.addr);
        client.post_json(GEMINI_ARRAY_PATH, r#"{"contents":[]}"#);
        let response = client.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), whole, "size {size}");
        let record = &sluice.wait_ledger(1)[0];
        assert_eq!(record["usage_source"], "provider", "{record}");
        assert_eq!(record["outcome"], "completed");
        assert_eq!(record["input_tokens"], 5);
        assert_eq!(record["output_tokens"], 2);
        assert_eq!(record["total_tokens"], 7);
        assert_eq!(record["model"], "gemini-2.0-flash");
        assert_eq!(record["finish_reason"], "STOP");
        assert_eq!(record["events"], 2);
        assert_eq!(record["bytes"], whole.len());
    }
}

/// A Gemini array stream Sluice ends (here: the upstream goes silent) ends with an error element
/// and the array's `]` when the client's bytes end between elements (valid JSON, the error
/// last, as Gemini itself ends one), and is left unended when they end inside one.
#[test]
fn a_gemini_array_stream_cut_short_ends_as_valid_json_or_not_at_all() {
    // Between elements.
    let upstream = gemini_array_upstream(vec![Step::chunk(GEMINI_ARRAY[0]), Step::Hold]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: gemini\n    idle_timeout: 300ms\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    client.post_json(GEMINI_ARRAY_PATH, r#"{"contents":[]}"#);
    let response = client.read_response();
    let array: Value = serde_json::from_str(&response.text()).expect("valid JSON");
    let array = array.as_array().unwrap();
    assert_eq!(array.len(), 2, "{array:?}");
    assert_eq!(
        array[1]["error"]["status"], "DEADLINE_EXCEEDED",
        "{array:?}"
    );
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["outcome"], "idle_timeout");
    assert_eq!(record["events"], 1);
    assert_eq!(record["bytes"], GEMINI_ARRAY[0].len());

    // Inside an element: no end the client could take for a whole answer.
    let half = &GEMINI_ARRAY[1][..40];
    let upstream = gemini_array_upstream(vec![
        Step::chunk(GEMINI_ARRAY[0]),
        Step::chunk(half),
        Step::Hold,
    ]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: gemini\n    idle_timeout: 300ms\n",
        upstream.url()
    ));
    let body = r#"{"contents":[]}"#;
    let answer = support::client::exchange_until_closed(
        sluice.addr,
        format!(
            "POST {GEMINI_ARRAY_PATH} HTTP/1.1\r\nHost: sluice.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(half), "{answer}");
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "the cut array was given an end: {answer}"
    );
    assert_eq!(sluice.wait_ledger(1)[0]["outcome"], "idle_timeout");
}

/// A Gemini stream request answered with something other than an array (an error object, a
/// body that breaks off into nonsense) passes untouched: the splitter gives up, nothing is
/// added.
#[test]
fn a_gemini_answer_that_is_no_array_passes_untouched() {
    for body in [
        "{\"error\": {\"code\": 429, \"status\": \"RESOURCE_EXHAUSTED\"}}",
        "[{\"a\": 1}} garbage",
    ] {
        let upstream = gemini_array_upstream(vec![Step::chunk(body), Step::End]);
        let sluice = sluice_for(&upstream, "gemini");
        let mut client = Client::connect(sluice.addr);
        client.post_json(GEMINI_ARRAY_PATH, r#"{"contents":[]}"#);
        let response = client.read_response();
        assert_eq!(response.text(), body);
        let record = &sluice.wait_ledger(1)[0];
        assert_eq!(record["usage_source"], "none", "{record}");
        assert_eq!(record["outcome"], "completed");
    }
}

/// A Gemini array whose upstream sends its finishing element and then leaves the body open
/// ends a second later as `completed`, as an event stream does after its end marker, the array
/// closed by Sluice's `]` (valid JSON). Before, the client waited for the idle timeout and got an
/// error element after the finished answer.
#[test]
fn a_gemini_array_left_open_after_its_finish_is_closed_soon_after() {
    let upstream = gemini_array_upstream(vec![
        Step::chunk(GEMINI_ARRAY[0]),
        Step::chunk(GEMINI_ARRAY[1]),
        Step::Hold,
    ]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: gemini\n    idle_timeout: 10s\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    let started = std::time::Instant::now();
    client.post_json(GEMINI_ARRAY_PATH, r#"{"contents":[]}"#);
    let response = client.read_response();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let array: Value = serde_json::from_str(&response.text()).expect("valid JSON");
    assert_eq!(array.as_array().unwrap().len(), 2, "{array}");
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["outcome"], "completed", "{record}");
    assert_eq!(record["total_tokens"], 7);
    assert_eq!(
        record["bytes"],
        GEMINI_ARRAY[0].len() + GEMINI_ARRAY[1].len()
    );
}
