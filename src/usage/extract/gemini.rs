//! Gemini `streamGenerateContent?alt=sse` streams: `data:`-only `GenerateContentResponse` objects.
//! There is no end sentinel: the chunk whose candidate has a `finishReason` is the last one (a
//! blocked prompt ends with `promptFeedback.blockReason` and no candidates). Every chunk carries
//! a running `usageMetadata`; the one on (or after) the finishing chunk is final, so the last of
//! those wins. A failure mid-stream is a `{"error":{"code","message","status"}}` payload.
//!
//! Hot path: a chunk without a finish costs three substring scans and no parse.

use std::sync::LazyLock;

use serde::Deserialize;

use super::common::{parse, sum_counts, Count, ErrorBody, OptionalObject};
use super::scan::Needle;
use super::UsageExtractor;
use crate::usage::record::{StreamFacts, Usage};

static FINISH_REASON: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"finishReason\""));
static BLOCK_REASON: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"blockReason\""));
static ERROR: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"error\""));

/// A server that never names the model would otherwise have every chunk parsed.
const MODEL_PARSES: u8 = 3;

#[derive(Debug, Default)]
pub struct GeminiExtractor {
    facts: StreamFacts,
    model_parses: u8,
    /// A finish was seen: from here on every chunk's usage is final.
    finished: bool,
}

impl GeminiExtractor {
    pub fn new() -> GeminiExtractor {
        GeminiExtractor::default()
    }

    pub(crate) fn seeded(facts: StreamFacts) -> GeminiExtractor {
        GeminiExtractor {
            facts,
            ..GeminiExtractor::default()
        }
    }

    fn wants_parse(&self, data: &[u8]) -> bool {
        (self.facts.model.is_none() && self.model_parses < MODEL_PARSES)
            || self.finished
            || FINISH_REASON.has_non_null_value(data)
            || BLOCK_REASON.has_non_null_value(data)
            || ERROR.occurs_in(data)
    }

    fn read(&mut self, data: &[u8]) {
        let Some(chunk) = parse::<Chunk>(&mut self.facts, data) else {
            return;
        };
        if self.facts.model.is_none() {
            self.model_parses += 1;
        }
        if let Some(model) = chunk.model_version.filter(|m| !m.is_empty()) {
            self.facts.model = Some(model);
        }
        let finish = chunk
            .candidates
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find_map(|c| c.finish_reason)
            .or_else(|| chunk.prompt_feedback.and_then(|f| f.block_reason));
        if let Some(reason) = finish {
            self.facts.finish_reason = Some(reason);
            self.facts.end_marker_seen = true;
            self.finished = true;
        }
        let usage = chunk.usage_metadata.0.filter(|_| self.finished);
        if let Some(usage) = usage.and_then(|m| m.into_usage().stated()) {
            self.facts.usage = Some(usage);
        }
        if let Some(error) = chunk.error {
            self.facts.provider_error = Some(error.into_provider_error());
        }
    }
}

impl UsageExtractor for GeminiExtractor {
    fn on_event(&mut self, _event_type: &[u8], data: &[u8]) {
        self.facts.events += 1;
        let data = data.trim_ascii();
        if self.wants_parse(data) {
            self.read(data);
        }
    }

    fn facts(&self) -> &StreamFacts {
        &self.facts
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    candidates: Option<Vec<Candidate>>,
    #[serde(default)]
    usage_metadata: OptionalObject<UsageMetadata>,
    model_version: Option<String>,
    prompt_feedback: Option<PromptFeedback>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: Count,
    cached_content_token_count: Count,
    candidates_token_count: Count,
    thoughts_token_count: Count,
    total_token_count: Count,
}

impl UsageMetadata {
    fn into_usage(self) -> Usage {
        Usage {
            // promptTokenCount already includes the cached content.
            input_tokens: self.prompt_token_count.get(),
            // Thoughts are counted apart from the candidates but billed as output.
            output_tokens: sum_counts([self.candidates_token_count, self.thoughts_token_count]),
            cached_input_tokens: self.cached_content_token_count.get(),
            cache_creation_input_tokens: None,
            reasoning_tokens: self.thoughts_token_count.get(),
            total_tokens: None,
        }
        .with_total(self.total_token_count.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &[u8] = br#"{"candidates": [{"content": {"parts": [{"text": "Hi"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.5-flash"}"#;

    fn run(events: &[&[u8]]) -> StreamFacts {
        let mut x = GeminiExtractor::new();
        for data in events {
            x.on_event(b"message", data);
        }
        x.facts().clone()
    }

    #[test]
    fn running_chunks_are_not_parsed_and_their_usage_is_not_final() {
        let facts = run(&[
            FIRST,
            br#"{"candidates": [{"content": {"parts": [{"text": "the \"finishReason\": \"STOP\" \"error\""}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 4,"totalTokenCount": 12}} BROKEN"#,
        ]);
        assert_eq!(facts.unparsed_events, 0);
        assert_eq!(facts.usage_source(), "none");
        assert!(!facts.end_marker_seen);
        assert_eq!(facts.model.as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn the_last_usage_from_the_finish_on_wins() {
        let facts = run(&[
            FIRST,
            br#"{"candidates": [{"content": {"parts": [{"text": "!"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 4,"totalTokenCount": 12}}"#,
            br#"{"candidates": [{"content": {"parts": [{"text": ""}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 5,"thoughtsTokenCount": 2,"totalTokenCount": 15}}"#,
        ]);
        let usage = facts.usage.unwrap();
        assert_eq!(usage.output_tokens, Some(7));
        assert_eq!(usage.reasoning_tokens, Some(2));
        assert_eq!(usage.total_tokens, Some(15));
        assert_eq!(facts.finish_reason.as_deref(), Some("STOP"));
    }

    #[test]
    fn a_blocked_prompt_ends_the_stream() {
        let facts = run(&[
            br#"{"promptFeedback": {"blockReason": "SAFETY"},"usageMetadata": {"promptTokenCount": 6,"totalTokenCount": 6},"modelVersion": "gemini-2.5-flash"}"#,
        ]);
        assert!(facts.end_marker_seen);
        assert_eq!(facts.finish_reason.as_deref(), Some("SAFETY"));
        assert_eq!(facts.usage.unwrap().input_tokens, Some(6));
        assert_eq!(facts.usage.unwrap().output_tokens, None);
    }

    #[test]
    fn mid_stream_error() {
        let facts = run(&[
            FIRST,
            br#"{"error": {"code": 503,"message": "The model is overloaded.","status": "UNAVAILABLE"}}"#,
        ]);
        let error = facts.provider_error.unwrap();
        assert_eq!(error.kind, "UNAVAILABLE");
        assert!(!facts.end_marker_seen);
    }

    #[test]
    fn a_finish_reason_with_spaces_is_found() {
        let facts = run(&[
            FIRST,
            b"{\"candidates\": [{\"finishReason\" :\r\n \"MAX_TOKENS\"}], \"usageMetadata\": {\"promptTokenCount\": 1, \"candidatesTokenCount\": 2}}",
        ]);
        assert_eq!(facts.finish_reason.as_deref(), Some("MAX_TOKENS"));
        assert_eq!(facts.usage.unwrap().total_tokens, Some(3));
    }

    fn finished_with(usage_metadata: &str) -> StreamFacts {
        let last = format!(
            r#"{{"candidates": [{{"content": {{"parts": [{{"text": ""}}],"role": "model"}},"finishReason": "STOP","index": 0}}],"usageMetadata": {usage_metadata},"modelVersion": "gemini-2.5-flash"}}"#
        );
        run(&[FIRST, last.as_bytes()])
    }

    #[test]
    fn a_figure_that_is_not_a_count_is_unknown_and_the_others_are_kept() {
        for bad in crate::usage::extract::common::NOT_COUNTS {
            let facts = finished_with(&format!(
                r#"{{"promptTokenCount": {bad},"cachedContentTokenCount": {bad},"candidatesTokenCount": 5,"thoughtsTokenCount": 2,"totalTokenCount": {bad}}}"#
            ));
            assert!(facts.end_marker_seen, "{bad}");
            assert_eq!(facts.finish_reason.as_deref(), Some("STOP"), "{bad}");
            let usage = facts.usage.unwrap_or_else(|| panic!("{bad}: usage lost"));
            assert_eq!(
                (
                    usage.input_tokens,
                    usage.cached_input_tokens,
                    usage.total_tokens
                ),
                (None, None, None),
                "{bad}"
            );
            assert_eq!(
                (usage.output_tokens, usage.reasoning_tokens),
                (Some(7), Some(2)),
                "{bad}"
            );
            assert_eq!(facts.unparsed_events, 0, "{bad}");
        }
    }

    #[test]
    fn an_unreadable_thoughts_figure_makes_the_output_sum_unknown() {
        let facts = finished_with(
            r#"{"promptTokenCount": 8,"candidatesTokenCount": 5,"thoughtsTokenCount": -2}"#,
        );
        let usage = facts.usage.unwrap();
        // 5 alone would bill the thinking as never done.
        assert_eq!((usage.output_tokens, usage.reasoning_tokens), (None, None));
        assert_eq!((usage.input_tokens, usage.total_tokens), (Some(8), None));
    }

    #[test]
    fn a_usage_of_the_wrong_type_costs_only_the_usage() {
        for usage in [r#""n/a""#, "[]", "12", "false"] {
            let facts = finished_with(usage);
            assert!(facts.end_marker_seen, "{usage}");
            assert_eq!(facts.finish_reason.as_deref(), Some("STOP"), "{usage}");
            assert_eq!(facts.usage, None, "{usage}");
            assert_eq!(facts.unparsed_events, 0, "{usage}");
        }
    }
}
