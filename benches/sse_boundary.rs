//! Hot path of the relay: tracking event boundaries over every chunk of a stream.
//! `cargo bench --bench sse_boundary`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::sse::EventBoundary;

/// An OpenAI chat-completions stream of `n` chunks of about 200 bytes each.
fn openai_stream(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-9x8y7z\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"finish_reason\":null}}]}}\n\n"
            )
            .into_bytes()
        })
        .collect()
}

/// An Anthropic Messages stream: `event:` plus `data:` lines, CRLF-free, split mid-event.
fn anthropic_stream(n: usize) -> Vec<Vec<u8>> {
    let whole: Vec<u8> = (0..n)
        .flat_map(|i| {
            format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" word{i}\"}}}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    whole.chunks(97).map(<[u8]>::to_vec).collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_boundary");
    let one_mib = vec![format!("data: {}\n\n", "x".repeat(1 << 20)).into_bytes()];
    for (name, chunks) in [
        ("openai_200B_events", openai_stream(10_000)),
        ("anthropic_split_97B", anthropic_stream(10_000)),
        ("single_1MiB_event", one_mib),
    ] {
        let bytes: usize = chunks.iter().map(Vec::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &chunks, |b, chunks| {
            b.iter(|| {
                let mut boundary = EventBoundary::new();
                for chunk in chunks {
                    boundary.observe(chunk);
                }
                boundary.at_boundary()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
