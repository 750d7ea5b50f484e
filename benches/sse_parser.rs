//! The SSE parser over realistic provider streams, as chunked by the relay.
//! `cargo bench --bench sse_parser`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::sse::SseParser;

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

criterion_group!(benches, bench);
criterion_main!(benches);
