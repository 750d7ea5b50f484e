//! Usage extractors against the providers' documented streams: every fixture in
//! `tests/fixtures/*.sse` is split into events, fed to its format's extractor, and the facts are
//! compared with the figures in its `.expected.json` (data written from the provider's docs, not
//! from this code).

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use serde_json::{json, Value};
use sluice::provider::Provider;
use sluice::usage::extract::{
    extractor_for, AutoExtractor, OpenaiChatExtractor, StreamFormat, UsageExtractor,
};
use sluice::usage::record::StreamFacts;

const FORMATS: [StreamFormat; 5] = [
    StreamFormat::OpenaiChat,
    StreamFormat::OpenaiCompletions,
    StreamFormat::OpenaiResponses,
    StreamFormat::AnthropicMessages,
    StreamFormat::GeminiGenerate,
];

type Event = (Vec<u8>, Vec<u8>);

/// The WHATWG event-stream rules, reduced to what fixtures need: lines end in LF, CRLF or CR;
/// `:` lines are comments; `event:` names the event, `data:` lines are joined with LF; a blank
/// line dispatches an event that has data; an unterminated last line or event is dropped, as a
/// client would drop it when the connection ends.
fn split_events(stream: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut name = Vec::new();
    let mut data = Vec::new();
    for line in complete_lines(stream) {
        if line.is_empty() {
            if !data.is_empty() {
                data.pop(); // the LF after the last data line
                let event_type = if name.is_empty() {
                    b"message".to_vec()
                } else {
                    std::mem::take(&mut name)
                };
                events.push((event_type, std::mem::take(&mut data)));
            }
            name.clear();
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => name = value.to_vec(),
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            _ => {}
        }
    }
    events
}

fn complete_lines(stream: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < stream.len() {
        match stream[i] {
            b'\n' => {
                lines.push(&stream[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&stream[start..i]);
                if stream.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    lines
}

struct Fixture {
    name: String,
    stream: Vec<u8>,
    format: StreamFormat,
    expected: Value,
}

fn fixtures() -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".sse").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 15, "fixtures missing: {names:?}");
    names
        .into_iter()
        .map(|name| {
            let stream = fs::read(dir.join(format!("{name}.sse"))).unwrap();
            let expected: Value = serde_json::from_slice(
                &fs::read(dir.join(format!("{name}.expected.json"))).unwrap(),
            )
            .unwrap_or_else(|e| panic!("{name}.expected.json: {e}"));
            let format = FORMATS
                .into_iter()
                .find(|f| expected["format"] == f.as_str())
                .unwrap_or_else(|| panic!("{name}: unknown format {}", expected["format"]));
            Fixture {
                name,
                stream,
                format,
                expected,
            }
        })
        .collect()
}

fn feed(extractor: &mut dyn UsageExtractor, events: &[Event]) {
    for (event_type, data) in events {
        extractor.on_event(event_type, data);
    }
}

fn run(format: StreamFormat, events: &[Event]) -> StreamFacts {
    let mut extractor = extractor_for(format);
    feed(extractor.as_mut(), events);
    extractor.facts().clone()
}

fn as_json(facts: &StreamFacts) -> Value {
    let mut value = serde_json::to_value(facts).unwrap();
    value["usage_source"] = json!(facts.usage_source());
    value
}

#[test]
fn fixtures_give_the_figures_the_provider_states() {
    for fixture in fixtures() {
        let facts = run(fixture.format, &split_events(&fixture.stream));
        assert_eq!(
            as_json(&facts),
            fixture.expected["facts"],
            "{}",
            fixture.name
        );
    }
}

#[test]
fn auto_detection_from_frames_gives_the_same_facts() {
    for fixture in fixtures() {
        let mut auto = AutoExtractor::new();
        feed(&mut auto, &split_events(&fixture.stream));
        assert_eq!(
            as_json(auto.facts()),
            fixture.expected["facts"],
            "{}",
            fixture.name
        );
        assert_eq!(auto.format(), Some(fixture.format), "{}", fixture.name);
    }
}

#[test]
fn auto_detection_from_paths() {
    let paths = [
        ("/v1/chat/completions", StreamFormat::OpenaiChat),
        ("/v1/completions", StreamFormat::OpenaiCompletions),
        ("/v1/responses", StreamFormat::OpenaiResponses),
        ("/v1/messages", StreamFormat::AnthropicMessages),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            StreamFormat::GeminiGenerate,
        ),
    ];
    for (path, format) in paths {
        assert_eq!(
            StreamFormat::from_request(Provider::Auto, path),
            Some(format),
            "{path}"
        );
    }
    assert_eq!(
        StreamFormat::from_request(Provider::Auto, "/v1/embeddings"),
        None
    );
    assert_eq!(
        StreamFormat::from_request(Provider::None, "/v1/messages"),
        None
    );
    assert_eq!(
        StreamFormat::from_request(Provider::Anthropic, "/custom/path"),
        Some(StreamFormat::AnthropicMessages)
    );
    assert_eq!(
        StreamFormat::from_request(Provider::Gemini, "/custom/path"),
        Some(StreamFormat::GeminiGenerate)
    );
}

#[test]
fn only_the_usage_chunk_is_usage_only() {
    for fixture in fixtures() {
        let events = split_events(&fixture.stream);
        // The OpenAI extractor over every provider's stream: only an OpenAI usage chunk counts.
        let mut extractor = OpenaiChatExtractor::new();
        let usage_only: Vec<usize> = (0..events.len())
            .filter(|&i| {
                extractor.on_event(&events[i].0, &events[i].1);
                extractor.usage_only()
            })
            .collect();
        let chunked = matches!(
            fixture.format,
            StreamFormat::OpenaiChat | StreamFormat::OpenaiCompletions
        );
        if let Some(expected) = fixture.expected.get("usage_only_events") {
            // Servers that state the figures elsewhere (Groq, Moonshot) send no usage chunk.
            let expected: Vec<usize> = serde_json::from_value(expected.clone()).unwrap();
            assert_eq!(usage_only, expected, "{}", fixture.name);
        } else if chunked && fixture.expected["facts"]["usage"].is_object() {
            // Documented order: the usage chunk, then `[DONE]`.
            assert_eq!(usage_only, vec![events.len() - 2], "{}", fixture.name);
        } else {
            assert!(usage_only.is_empty(), "{}: {usage_only:?}", fixture.name);
        }
    }
}

/// Index of the event after which the final usage is known.
fn usage_event(format: StreamFormat, events: &[Event]) -> Option<usize> {
    let mut extractor = extractor_for(format);
    events.iter().position(|(event_type, data)| {
        extractor.on_event(event_type, data);
        extractor.facts().usage.is_some()
    })
}

#[test]
fn streams_cut_inside_the_usage_event_have_no_usage_and_no_end() {
    for fixture in fixtures() {
        let events = split_events(&fixture.stream);
        let Some(at) = usage_event(fixture.format, &events) else {
            continue;
        };
        // The connection drops halfway through the event: a client never sees that event.
        let data = &events[at].1;
        let position = fixture
            .stream
            .windows(data.len())
            .position(|w| w == &data[..])
            .unwrap();
        let cut = &fixture.stream[..position + data.len() / 2];
        let facts = run(fixture.format, &split_events(cut));
        assert_eq!(facts.usage_source(), "none", "{}", fixture.name);
        assert!(!facts.end_marker_seen, "{}", fixture.name);
        assert_eq!(facts.events, at as u64, "{}", fixture.name);

        // A relay that passes the torn event on anyway: nothing is invented from it. (It is
        // counted as unparsed when the prefilter sends it to the parser; a torn event that
        // looks ordinary is skipped.)
        let mut torn: Vec<Event> = events[..at].to_vec();
        torn.push((events[at].0.clone(), data[..data.len() / 2].to_vec()));
        let facts = run(fixture.format, &torn);
        assert_eq!(facts.usage_source(), "none", "{}", fixture.name);
        assert!(!facts.end_marker_seen, "{}", fixture.name);
        assert!(facts.unparsed_events <= 1, "{}", fixture.name);
    }
}

#[test]
fn malformed_events_are_counted_and_skipped() {
    let huge_nesting = "[".repeat(10_000);
    let garbage: [(&[u8], &[u8]); 12] = [
        (b"message", b"{"),
        (b"message", b"not json"),
        (b"message", b"\xff\xfe\x00"),
        (b"message", b""),
        (b"message", huge_nesting.as_bytes()),
        (
            b"message",
            br#"{"choices":[{"finish_reason":7}],"usage":[1]}"#,
        ),
        // Beyond f64: unknown, and so is every figure of that usage.
        (
            b"message",
            br#"{"choices":[],"usage":{"prompt_tokens":1e400}}"#,
        ),
        (b"message", br#"{"candidates":[{"finishReason":["STOP"]}]}"#),
        (b"message_delta", br#"{"usage":{"output_tokens":1e400}}"#),
        (b"message_start", br#"{"message":"oops"}"#),
        (b"response.completed", br#"{"response":"completed"}"#),
        (b"error", b"}{"),
    ];
    for format in FORMATS {
        let mut extractor = extractor_for(format);
        for (event_type, data) in garbage {
            extractor.on_event(event_type, data);
        }
        let facts = extractor.facts();
        assert_eq!(facts.events, garbage.len() as u64, "{format:?}");
        assert!(facts.unparsed_events > 0, "{format:?}");
        assert_eq!(facts.usage_source(), "none", "{format:?}");
        assert!(!facts.end_marker_seen, "{format:?}");
        assert_eq!(facts.provider_error, None, "{format:?}");
    }
}

/// A stream of each format whose final usage states one figure as `{bad}`, with the figures
/// that are still known when that one is not.
fn streams_with_one_bad_figure() -> [(StreamFormat, String, Value); 5] {
    let chat = "data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":{bad},\"total_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n\
data: [DONE]\n\n";
    [
        (
            StreamFormat::OpenaiChat,
            chat.to_owned(),
            json!({"input_tokens": 9, "cached_input_tokens": 4, "total_tokens": 12}),
        ),
        (
            StreamFormat::OpenaiCompletions,
            chat.to_owned(),
            json!({"input_tokens": 9, "cached_input_tokens": 4, "total_tokens": 12}),
        ),
        (
            StreamFormat::OpenaiResponses,
            "event: response.completed\n\
data: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4o\",\"status\":\"completed\",\"usage\":{\"input_tokens\":10,\"output_tokens\":{bad},\"output_tokens_details\":{\"reasoning_tokens\":3},\"total_tokens\":30}}}\n\n"
                .to_owned(),
            json!({"input_tokens": 10, "reasoning_tokens": 3, "total_tokens": 30}),
        ),
        (
            StreamFormat::AnthropicMessages,
            "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-6\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":{bad}}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n"
                .to_owned(),
            json!({"input_tokens": 125, "cached_input_tokens": 100}),
        ),
        (
            StreamFormat::GeminiGenerate,
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": {bad},\"thoughtsTokenCount\": 2,\"totalTokenCount\": 15},\"modelVersion\": \"gemini-2.5-flash\"}\n\n"
                .to_owned(),
            json!({"input_tokens": 8, "reasoning_tokens": 2, "total_tokens": 15}),
        ),
    ]
}

/// JSON values that are not token counts, as the figure's text.
fn not_a_count() -> impl Strategy<Value = String> {
    prop_oneof![
        (i64::MIN..0).prop_map(|n| n.to_string()),
        (0u32..1_000_000).prop_map(|n| format!("{n}.0")),
        (0u32..1000, 0u32..20).prop_map(|(n, e)| format!("{n}e{e}")),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        (u128::from(u64::MAX) + 1..=u128::MAX).prop_map(|n| n.to_string()),
        // Beyond f64, which serde_json refuses with the whole document.
        (309u32..100_000, any::<bool>())
            .prop_map(|(e, negative)| format!("{}1e{e}", if negative { "-" } else { "" })),
        (309usize..1000).prop_map(|digits| "9".repeat(digits)),
        (0u64..1_000_000).prop_map(|n| format!("\"{n}\"")),
        any::<String>().prop_map(|s| Value::from(s).to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("[]".to_owned()),
        (0u64..100).prop_map(|n| format!("[{n}]")),
        (0u64..100).prop_map(|n| format!("{{\"tokens\":{n},\"nested\":[{{}}]}}")),
    ]
}

proptest! {
    /// A figure that is not a count is unknown, and costs nothing else: not the other figures,
    /// not the finish reason, not the end of the stream.
    #[test]
    fn a_figure_that_is_not_a_count_costs_only_itself(
        stream in 0..FORMATS.len(),
        bad in not_a_count(),
    ) {
        let (format, stream, known) = &streams_with_one_bad_figure()[stream];
        let events = split_events(stream.replace("{bad}", &bad).as_bytes());
        let facts = run(*format, &events);
        prop_assert_eq!(as_json(&facts)["usage"].clone(), known.clone(), "{:?} {}", format, bad);
        prop_assert!(facts.end_marker_seen);
        prop_assert!(facts.finish_reason.is_some());
        prop_assert_eq!(facts.unparsed_events, 0);
        let mut auto = AutoExtractor::new();
        feed(&mut auto, &events);
        prop_assert_eq!(auto.facts(), &facts);
    }
}

#[test]
fn with_a_count_for_the_bad_figure_the_streams_give_the_output_too() {
    // What the property test finds missing is missing because of that one figure.
    for (format, stream, known) in streams_with_one_bad_figure() {
        let facts = run(
            format,
            &split_events(stream.replace("{bad}", "5").as_bytes()),
        );
        let mut usage = as_json(&facts)["usage"].take();
        assert!(usage["output_tokens"].as_u64() >= Some(5), "{format:?}");
        usage.as_object_mut().unwrap().remove("output_tokens");
        if usage["total_tokens"] != known["total_tokens"] {
            // Derived once the output is known.
            usage.as_object_mut().unwrap().remove("total_tokens");
        }
        assert_eq!(usage, known, "{format:?}");
    }
}

/// The last event of a stream of each format, with one member outside the figures of the
/// wrong type (`{odd}`), and what must still be read from it.
fn streams_with_one_odd_member() -> [(StreamFormat, &'static str); 4] {
    [
        (
            StreamFormat::OpenaiChat,
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"model\":\"m\",{odd},\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n\
data: [DONE]\n\n",
        ),
        (
            StreamFormat::OpenaiResponses,
            "event: response.completed\n\
data: {\"type\":\"response.completed\",{odd},\"response\":{\"model\":\"m\",\"status\":\"completed\",{odd},\"usage\":{\"input_tokens\":9,\"output_tokens\":3}}}\n\n",
        ),
        (
            StreamFormat::AnthropicMessages,
            "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",{odd},\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",{odd},\"delta\":{\"stop_reason\":\"end_turn\",{odd}},\"usage\":{\"output_tokens\":3}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n",
        ),
        (
            StreamFormat::GeminiGenerate,
            "data: {\"candidates\": [{\"finishReason\": \"STOP\",{odd},\"index\": 0}],{odd},\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 3},\"modelVersion\": \"m\"}\n\n",
        ),
    ]
}

/// Members that are not the figures, of a type no provider sends there.
fn odd_member() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("7".to_owned()),
        Just("-1.5".to_owned()),
        Just("1e400".to_owned()),
        Just("true".to_owned()),
        Just("\"x\"".to_owned()),
        Just("[]".to_owned()),
        Just("{\"a\":[1e999]}".to_owned()),
    ];
    let name = prop_oneof![
        Just("index"),
        Just("id"),
        Just("created"),
        Just("logprobs"),
        Just("system_fingerprint"),
        Just("stop_sequence"),
        Just("safetyRatings"),
        Just("content_filter_results"),
        Just("native_finish_reason"),
        Just("provider"),
    ];
    (name, value).prop_map(|(name, value)| format!("\"{name}\":{value}"))
}

proptest! {
    /// A member of the wrong type outside the figures costs nothing: not the figures, not the
    /// finish reason, not the model, not the end of the stream.
    #[test]
    fn an_odd_member_costs_nothing_else(stream in 0..4usize, odd in odd_member()) {
        let (format, stream) = streams_with_one_odd_member()[stream];
        let events = split_events(stream.replace("{odd}", &odd).as_bytes());
        let facts = run(format, &events);
        prop_assert_eq!(facts.usage.and_then(|u| u.total_tokens), Some(12), "{:?} {}", format, odd);
        prop_assert!(facts.finish_reason.is_some());
        prop_assert_eq!(facts.model.as_deref(), Some("m"));
        prop_assert!(facts.end_marker_seen);
        prop_assert_eq!(facts.unparsed_events, 0);
    }
}

#[test]
fn anthropic_message_delta_figures_are_cumulative_so_the_last_wins() {
    let stream = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-20250514\",\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":2000,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":40}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":64}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";
    let facts = run(StreamFormat::AnthropicMessages, &split_events(stream));
    let usage = facts.usage.unwrap();
    assert_eq!(usage.output_tokens, Some(64));
    assert_eq!(usage.input_tokens, Some(2010));
    assert_eq!(usage.cache_creation_input_tokens, Some(2000));
    assert_eq!(usage.cached_input_tokens, Some(0));
    assert_eq!(usage.total_tokens, Some(2074));
    assert_eq!(facts.finish_reason.as_deref(), Some("max_tokens"));
}

#[test]
fn gemini_last_usage_metadata_wins() {
    let stream = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 1,\"totalTokenCount\": 5},\"modelVersion\": \"gemini-2.5-pro\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"b\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 2,\"totalTokenCount\": 30,\"thoughtsTokenCount\": 24},\"modelVersion\": \"gemini-2.5-pro\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 3,\"totalTokenCount\": 31,\"thoughtsTokenCount\": 24},\"modelVersion\": \"gemini-2.5-pro\"}\r\n\r\n";
    let facts = run(
        StreamFormat::GeminiGenerate,
        &split_events(stream.as_bytes()),
    );
    let usage = facts.usage.unwrap();
    assert_eq!(usage.output_tokens, Some(27));
    assert_eq!(usage.reasoning_tokens, Some(24));
    assert_eq!(usage.total_tokens, Some(31));
    assert!(facts.end_marker_seen);
}

#[test]
fn the_splitter_follows_the_line_rules() {
    let events =
        split_events(b": comment\r\nevent: e\rdata: a\ndata:b\r\nid: 1\n\ndata\n\n\n\ndata: cut");
    assert_eq!(
        events,
        vec![
            (b"e".to_vec(), b"a\nb".to_vec()),
            (b"message".to_vec(), Vec::new())
        ]
    );
}

proptest! {
    #[test]
    fn no_input_panics(
        format in 0..FORMATS.len(),
        events in proptest::collection::vec(
            (
                prop_oneof![
                    Just(b"message".to_vec()),
                    Just(b"message_start".to_vec()),
                    Just(b"message_delta".to_vec()),
                    Just(b"response.completed".to_vec()),
                    Just(b"error".to_vec()),
                ],
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    "\\{\"(usage|choices|finish_reason|finishReason|error|message|response|type)\": ?(null|\\{|\\[|[0-9]{1,25}|\"[a-z_.]{0,12}\")".prop_map(String::into_bytes),
                ],
            ),
            0..16,
        ),
    ) {
        let mut extractor = extractor_for(FORMATS[format]);
        let mut auto = AutoExtractor::new();
        for (event_type, data) in &events {
            extractor.on_event(event_type, data);
            auto.on_event(event_type, data);
            let _ = (extractor.usage_only(), auto.usage_only());
        }
        prop_assert_eq!(extractor.facts().events, events.len() as u64);
        prop_assert_eq!(auto.facts().events, events.len() as u64);
    }
}
