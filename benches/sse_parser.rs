//! The SSE parser over realistic provider streams, as chunked by the relay; and the JSON array
//! splitter over a Gemini stream without `alt=sse`.
//! `cargo bench --bench sse_parser`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::sse::{JsonArraySplitter, SseParser};

const EVENTS: usize = 10_000;
const MAX_EVENT_SIZE: usize = 2 << 20;

/// One OpenAI chat-completions event of about 200 bytes.
fn openai_event(i: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-9x8y7z\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

/// One Anthropic Messages event: an `event:` line and a `data:` line.
fn anthropic_event(i: usize) -> String {
    format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" word{i}\"}}}}\n\n"
    )
}

fn one_event_per_chunk(event: fn(usize) -> String) -> Vec<Bytes> {
    (0..EVENTS).map(|i| Bytes::from(event(i))).collect()
}

fn rechunked(chunks: &[Bytes], size: usize) -> Vec<Bytes> {
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    whole.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn one_mib_event() -> Vec<Bytes> {
    vec![Bytes::from(format!("data: {}\n\n", "x".repeat(1 << 20)))]
}

fn parse(chunks: &[Bytes]) -> (usize, usize) {
    let mut parser = SseParser::new(MAX_EVENT_SIZE);
    let (mut events, mut data_bytes) = (0, 0);
    for chunk in chunks {
        parser.feed(chunk, |event| {
            events += 1;
            data_bytes += event.data.len();
        });
    }
    (events, data_bytes)
}

/// A Gemini `streamGenerateContent` answer without `alt=sse`: one ~250-byte element per chunk.
fn gemini_array() -> Vec<Bytes> {
    (0..EVENTS)
        .map(|i| {
            let before = if i == 0 { "[" } else { ",\r\n" };
            Bytes::from(format!(
                "{before}{{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \" tok{i} \\\"q\\\"\"}}],\"role\": \"model\"}}}}],\"usageMetadata\": {{\"promptTokenCount\": 5,\"totalTokenCount\": {i}}},\"modelVersion\": \"gemini-2.0-flash\"}}\n"
            ))
        })
        .chain(std::iter::once(Bytes::from_static(b"]")))
        .collect()
}

fn split(chunks: &[Bytes]) -> usize {
    let mut splitter = JsonArraySplitter::new(MAX_EVENT_SIZE);
    let mut elements = 0;
    for chunk in chunks {
        splitter.feed(chunk, |_| elements += 1);
    }
    elements
}

fn bench_array(c: &mut Criterion) {
    let gemini = gemini_array();
    let mut group = c.benchmark_group("json_array");
    for (name, chunks) in [
        ("gemini_element_per_chunk", gemini.clone()),
        ("gemini_97B_chunks", rechunked(&gemini, 97)),
    ] {
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        println!("{name}: {bytes} bytes, {} elements", split(&chunks));
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &chunks, |b, chunks| {
            b.iter(|| split(black_box(chunks)))
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let openai = one_event_per_chunk(openai_event);
    let anthropic = one_event_per_chunk(anthropic_event);
    let one_mib = one_mib_event();
    let cases = [
        ("openai_event_per_chunk", openai.clone()),
        ("openai_97B_chunks", rechunked(&openai, 97)),
        ("anthropic_event_per_chunk", anthropic.clone()),
        ("anthropic_97B_chunks", rechunked(&anthropic, 97)),
        ("single_1MiB_event", one_mib.clone()),
        (
            "single_1MiB_event_64KiB_chunks",
            rechunked(&one_mib, 64 << 10),
        ),
    ];
    let mut group = c.benchmark_group("sse_parser");
    for (name, chunks) in cases {
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        let (events, _) = parse(&chunks);
        println!("{name}: {bytes} bytes, {events} events");
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &chunks, |b, chunks| {
            b.iter(|| parse(black_box(chunks)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_array);
criterion_main!(benches);
