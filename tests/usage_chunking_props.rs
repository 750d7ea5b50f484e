//! The real parser and extractors over every fixture, chunked every way: 1-byte chunks, every
//! single split point (so every CRLF and every multi-byte character is split somewhere), and
//! random chunkings all give the same events, the same usage and the same bytes to the client.

use bytes::Bytes;
use proptest::prelude::*;
use sluice::usage::extract::{extractor_for, StreamFormat};
use sluice::usage::inspector::{InspectorOptions, StreamInspector};
use sluice::usage::record::StreamFacts;

const FIXTURES: &[(&str, StreamFormat)] = &[
    ("openai_chat_text", StreamFormat::OpenaiChat),
    ("openai_chat_tool_calls", StreamFormat::OpenaiChat),
    ("openai_chat_reasoning_cached", StreamFormat::OpenaiChat),
    ("openai_chat_error", StreamFormat::OpenaiChat),
    ("openai_completions", StreamFormat::OpenaiCompletions),
    ("openai_responses", StreamFormat::OpenaiResponses),
    ("openai_responses_failed", StreamFormat::OpenaiResponses),
    ("openai_responses_error", StreamFormat::OpenaiResponses),
    ("anthropic_text", StreamFormat::AnthropicMessages),
    ("anthropic_tool_use", StreamFormat::AnthropicMessages),
    ("anthropic_thinking_cached", StreamFormat::AnthropicMessages),
    ("anthropic_error", StreamFormat::AnthropicMessages),
    ("gemini_text", StreamFormat::GeminiGenerate),
    ("gemini_thinking_cached", StreamFormat::GeminiGenerate),
    ("gemini_error", StreamFormat::GeminiGenerate),
];

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}.sse",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Runs the inspector over `chunks`; returns the facts and every byte the client would get
/// (what was released plus what is held at the end).
fn inspect<'a>(
    format: StreamFormat,
    strip: bool,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (StreamFacts, Vec<u8>) {
    let mut inspector = StreamInspector::new(
        extractor_for(format),
        InspectorOptions {
            max_event_size: 1 << 20,
            strip_usage_chunk: strip,
            hold_final_frame: true,
        },
    );
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&inspector.on_chunk(Bytes::copy_from_slice(chunk)));
    }
    out.extend_from_slice(&inspector.take_held());
    (inspector.facts().clone(), out)
}

#[test]
fn whole_stream_passes_through_unchanged_with_usage() {
    for (name, format) in FIXTURES {
        let stream = fixture(name);
        let (facts, out) = inspect(*format, false, [&stream[..]]);
        assert_eq!(out, stream, "{name}");
        assert!(facts.events > 0, "{name}");
    }
}

#[test]
fn one_byte_chunks_and_every_split_point() {
    for (name, format) in FIXTURES {
        let stream = fixture(name);
        for strip in [false, true] {
            let whole = inspect(*format, strip, [&stream[..]]);
            assert_eq!(
                inspect(*format, strip, stream.chunks(1)),
                whole,
                "{name} 1-byte"
            );
            for split in 0..=stream.len() {
                let (a, b) = stream.split_at(split);
                assert_eq!(
                    inspect(*format, strip, [a, b]),
                    whole,
                    "{name} split at {split}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_chunking_gives_the_same_facts_and_bytes(
        which in 0..FIXTURES.len(),
        mut cuts in proptest::collection::vec(0usize..4096, 0..40),
        strip in any::<bool>(),
    ) {
        let (name, format) = FIXTURES[which];
        let stream = fixture(name);
        cuts.iter_mut().for_each(|c| *c %= stream.len() + 1);
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for &cut in &cuts {
            chunks.push(&stream[from..cut]);
            from = cut;
        }
        chunks.push(&stream[from..]);
        prop_assert_eq!(inspect(format, strip, chunks), inspect(format, strip, [&stream[..]]));
    }
}
