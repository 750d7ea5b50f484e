//! Hot path of usage accounting: every event of a stream through its format's extractor.
//! Events are pre-split `(event_type, data)` pairs, as the SSE parser hands them over; throughput
//! counts the data bytes.
//! `cargo bench --bench usage_extract`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice::sse::StreamMembers;
use sluice::usage::extract::{extractor_for, AutoExtractor, StreamFormat, UsageExtractor};
use sluice::usage::include_usage::{ensure_include_usage, IncludeUsage};

type Event = (Vec<u8>, Vec<u8>);

fn message(data: String) -> Event {
    (b"message".to_vec(), data.into_bytes())
}

fn named(event_type: &str, data: String) -> Event {
    (event_type.as_bytes().to_vec(), data.into_bytes())
}

const WORDS: [&str; 8] = [
    " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy",
];

/// 10,000 OpenAI chat chunks of about 200 bytes as `include_usage` streams send them, then the
/// finish chunk, the usage chunk and `[DONE]`.
fn openai_chat(n: usize) -> Vec<Event> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "{{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}],\"usage\":null}}"
        )
    };
    let mut events = vec![message(chunk(
        r#"{"role":"assistant","content":""}"#,
        "null",
    ))];
    events.extend((0..n).map(|i| {
        message(chunk(
            &format!(r#"{{"content":"{}"}}"#, WORDS[i % WORDS.len()]),
            "null",
        ))
    }));
    events.push(message(chunk("{}", r#""stop""#)));
    events.push(message(
        r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_eb9dce56a8","choices":[],"usage":{"prompt_tokens":1117,"completion_tokens":10001,"total_tokens":11118,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#.to_owned(),
    ));
    events.push(message("[DONE]".to_owned()));
    events
}

fn anthropic(n: usize) -> Vec<Event> {
    let mut events = vec![
        named("message_start", r#"{"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":1}}}"#.to_owned()),
        named("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned()),
        named("ping", r#"{"type": "ping"}"#.to_owned()),
    ];
    events.extend((0..n).map(|i| {
        named(
            "content_block_delta",
            format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#,
                WORDS[i % WORDS.len()]
            ),
        )
    }));
    events.push(named(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#.to_owned(),
    ));
    events.push(named("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":10001}}"#.to_owned()));
    events.push(named(
        "message_stop",
        r#"{"type":"message_stop"}"#.to_owned(),
    ));
    events
}

fn responses(n: usize) -> Vec<Event> {
    let mut events = vec![named("response.created", r#"{"type":"response.created","response":{"id":"resp_1","object":"response","created_at":1741487325,"status":"in_progress","error":null,"model":"gpt-4o-2024-08-06","output":[],"usage":null},"sequence_number":0}"#.to_owned())];
    events.extend((0..n).map(|i| {
        named(
            "response.output_text.delta",
            format!(
                r#"{{"type":"response.output_text.delta","item_id":"msg_67ccfcdd16748190a91872c75d38539e","output_index":0,"content_index":0,"delta":"{}","sequence_number":{}}}"#,
                WORDS[i % WORDS.len()],
                i + 1
            ),
        )
    }));
    events.push(named("response.completed", r#"{"type":"response.completed","response":{"id":"resp_1","object":"response","created_at":1741487325,"status":"completed","error":null,"model":"gpt-4o-2024-08-06","output":[],"usage":{"input_tokens":75,"input_tokens_details":{"cached_tokens":0},"output_tokens":10000,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":10075}},"sequence_number":10001}"#.to_owned()));
    events
}

fn gemini(n: usize) -> Vec<Event> {
    let chunk = |text: &str, finish: &str, candidates: usize| {
        format!(
            "{{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"{text}\"}}],\"role\": \"model\"}},{finish}\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 11,\"candidatesTokenCount\": {candidates},\"totalTokenCount\": {}}},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"mKdraJjgGfLSjMcPsNvYqAg\"}}",
            11 + candidates
        )
    };
    let mut events: Vec<Event> = (0..n)
        .map(|i| message(chunk(WORDS[i % WORDS.len()], "", i)))
        .collect();
    events.push(message(chunk("", "\"finishReason\": \"STOP\",", n)));
    events
}

fn run(format: StreamFormat, events: &[Event]) -> u64 {
    let mut extractor = extractor_for(format);
    for (event_type, data) in events {
        extractor.on_event(event_type, data);
    }
    extractor
        .facts()
        .usage
        .and_then(|u| u.total_tokens)
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("usage_extract");
    let streams = [
        (
            "openai_chat_200B",
            StreamFormat::OpenaiChat,
            openai_chat(10_000),
        ),
        (
            "anthropic",
            StreamFormat::AnthropicMessages,
            anthropic(10_000),
        ),
        (
            "openai_responses",
            StreamFormat::OpenaiResponses,
            responses(10_000),
        ),
        ("gemini", StreamFormat::GeminiGenerate, gemini(10_000)),
    ];
    for (name, format, events) in &streams {
        let bytes: usize = events.iter().map(|(_, data)| data.len()).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(*name, |b| b.iter(|| run(*format, black_box(events))));
    }

    let (_, _, chat) = &streams[0];
    let bytes: usize = chat.iter().map(|(_, data)| data.len()).sum();
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("openai_chat_200B_auto", |b| {
        b.iter(|| {
            let mut auto = AutoExtractor::new();
            for (event_type, data) in black_box(chat) {
                auto.on_event(event_type, data);
            }
            auto.facts().events
        })
    });
    group.finish();

    // A short answer (role chunk, 3 deltas, finish, usage, `[DONE]`), asking after each event
    // whether it is the usage-only chunk as the inspector does when it removes it: the model,
    // the finish reason and the usage are read from 3 of its 7 events.
    let mut group = c.benchmark_group("usage_extract_stream");
    let short = openai_chat(3);
    group.throughput(Throughput::Elements(1));
    group.bench_function("openai_chat_short_stream", |b| {
        b.iter(|| {
            let mut extractor = extractor_for(StreamFormat::OpenaiChat);
            let mut usage_only = 0;
            for (event_type, data) in black_box(&short) {
                extractor.on_event(event_type, data);
                usage_only += usize::from(extractor.usage_only());
            }
            (usage_only, extractor.facts().usage)
        })
    });
    group.finish();

    // Before the request goes upstream (time to first byte): a stream request with a long
    // conversation is read for its stream members and gets `stream_options.include_usage`.
    let mut group = c.benchmark_group("include_usage");
    let body = chat_request(32 * 1024);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("chat_request_32KiB", |b| {
        b.iter(|| {
            let body = black_box(&body);
            // Read once per request: the stream flag and the stream options.
            match ensure_include_usage(body, StreamMembers::read(body).as_ref()) {
                IncludeUsage::Injected(rewritten) => rewritten.len(),
                other => panic!("{other:?}"),
            }
        })
    });
    group.finish();
}

/// A Chat Completions stream request whose messages add up to about `size` bytes.
fn chat_request(size: usize) -> Vec<u8> {
    let mut messages = Vec::new();
    let mut len = 0;
    for i in 0.. {
        let content: String = (0..40).map(|w| WORDS[(i + w) % WORDS.len()]).collect();
        len += content.len() + 40;
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(format!(
            r#"{{"role":"{role}","content":"{content} \"quoted\"\n"}}"#
        ));
        if len >= size {
            break;
        }
    }
    format!(
        r#"{{"model":"gpt-4o-mini","stream":true,"temperature":0.2,"messages":[{}]}}"#,
        messages.join(",")
    )
    .into_bytes()
}

criterion_group!(benches, bench);
criterion_main!(benches);
