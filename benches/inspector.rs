//! The whole inspection path per chunk: SSE parser + usage extractor (+ the strip and hold
//! bookkeeping), as the relay runs it on every event stream.
//! `cargo bench --bench inspector`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::usage::extract::{extractor_for, StreamFormat};
use sluice::usage::inspector::{InspectorOptions, StreamInspector};

/// 10,000 OpenAI chat chunks of ~200 bytes, one event per chunk, then finish, usage, [DONE].
fn openai_chunks() -> Vec<Bytes> {
    let mut chunks: Vec<Bytes> = (0..10_000)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-9x8y7z6w\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"finish_reason\":null}}]}}\n\n"
            ))
        })
        .collect();
    chunks.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-9x8y7z6w\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"));
    chunks.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-9x8y7z6w\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":10000,\"total_tokens\":10012}}\n\n"));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

/// An Anthropic Messages stream: message_start, 10,000 text deltas, message_delta, stop.
fn anthropic_chunks() -> Vec<Bytes> {
    let mut chunks = vec![Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n")];
    chunks.extend((0..10_000).map(|i| {
        Bytes::from(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" word{i}\"}}}}\n\n"
        ))
    }));
    chunks.push(Bytes::from_static(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":10000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    chunks
}

/// Re-cuts a stream into `size`-byte chunks (events split anywhere, as TCP may deliver them).
fn rechunk(chunks: &[Bytes], size: usize) -> Vec<Bytes> {
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    whole.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("inspector");
    let openai = openai_chunks();
    let anthropic = anthropic_chunks();
    let cases = [
        (
            "openai_200B_events",
            StreamFormat::OpenaiChat,
            openai.clone(),
            false,
        ),
        (
            "openai_200B_events_strip",
            StreamFormat::OpenaiChat,
            openai.clone(),
            true,
        ),
        (
            "openai_4KiB_chunks",
            StreamFormat::OpenaiChat,
            rechunk(&openai, 4096),
            false,
        ),
        (
            "anthropic_deltas",
            StreamFormat::AnthropicMessages,
            anthropic,
            false,
        ),
    ];
    for (name, format, chunks, strip) in cases {
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &chunks, |b, chunks| {
            b.iter(|| {
                let mut inspector = StreamInspector::new(
                    extractor_for(format),
                    InspectorOptions {
                        max_event_size: 1 << 20,
                        strip_usage_chunk: strip,
                        hold_final_frame: true,
                    },
                );
                let mut sent = 0;
                for chunk in chunks {
                    sent += inspector.on_chunk(chunk.clone()).len();
                }
                assert!(inspector.facts().usage.is_some());
                sent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
