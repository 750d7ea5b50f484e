//! Gemini `streamGenerateContent?alt=sse` streams: `data:`-only `GenerateContentResponse` objects.
//! There is no end sentinel: the chunk whose candidate has a `finishReason` is the last one (a
//! blocked prompt ends with `promptFeedback.blockReason` and no candidates). Every chunk carries
//! a running `usageMetadata`; the one on (or after) the finishing chunk is final, so the last of
//! those wins. A failure mid-stream is a `{"error":{"code","message","status"}}` payload.
//!
//! `totalTokenCount` is `promptTokenCount + toolUsePromptTokenCount + candidatesTokenCount +
//! thoughtsTokenCount`: the prompt of a server-side tool (search results, code execution output)
//! is counted apart from the prompt, and billed as input.
//!
//! Hot path: a chunk without a finish costs three substring scans and no parse.

use std::sync::LazyLock;

use serde::Deserialize;

use super::common::{
    parse, sum_counts, Count, ErrorValue, OptionalList, OptionalObject, OptionalString,
};
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

    fn wants_parse(&self, data: &[u8], finishing: bool) -> bool {
        (self.facts.model.is_none() && self.model_parses < MODEL_PARSES)
            || self.finished
            || finishing
            || ERROR.occurs_in(data)
    }

    /// `finishing`: the chunk states a finish or block reason (of whatever type).
    fn read(&mut self, data: &[u8], finishing: bool) {
        let Some(chunk) = parse::<Chunk>(&mut self.facts, data) else {
            return;
        };
        if self.facts.model.is_none() {
            self.model_parses += 1;
        }
        if let Some(model) = chunk.model_version.0.filter(|m| !m.is_empty()) {
            self.facts.model = Some(model);
        }
        let finish = chunk
            .candidates
            .objects()
            .rev()
            .find_map(|c| c.finish_reason.0)
            .or_else(|| chunk.prompt_feedback.0.and_then(|f| f.block_reason.0));
        if let Some(reason) = finish {
            self.facts.finish_reason = Some(reason);
            self.facts.end_marker_seen = true;
        }
        // A reason of the wrong type is no end marker, but the figures beside it are the final
        // ones all the same.
        self.finished |= finishing;
        let usage = chunk.usage_metadata.0.filter(|_| self.finished);
        if let Some(usage) = usage.and_then(|m| m.into_usage().stated()) {
            self.facts.usage = Some(usage);
        }
        if let Some(error) = chunk.error.with_type(OptionalString::default()) {
            self.facts.provider_error = Some(error);
        }
    }
}

impl UsageExtractor for GeminiExtractor {
    fn on_event(&mut self, _event_type: &[u8], data: &[u8]) {
        self.facts.events += 1;
        let data = data.trim_ascii();
        let finishing =
            FINISH_REASON.has_non_null_value(data) || BLOCK_REASON.has_non_null_value(data);
        if self.wants_parse(data, finishing) {
            self.read(data, finishing);
        }
    }

    fn facts(&self) -> &StreamFacts {
        &self.facts
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Chunk {
    candidates: OptionalList<Candidate>,
    usage_metadata: OptionalObject<UsageMetadata>,
    model_version: OptionalString,
    prompt_feedback: OptionalObject<PromptFeedback>,
    error: ErrorValue,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Candidate {
    finish_reason: OptionalString,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PromptFeedback {
    block_reason: OptionalString,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: Count,
    tool_use_prompt_token_count: Count,
    cached_content_token_count: Count,
    candidates_token_count: Count,
    thoughts_token_count: Count,
    total_token_count: Count,
}

impl UsageMetadata {
    fn into_usage(self) -> Usage {
        Usage {
            // promptTokenCount already includes the cached content, not the tools' prompt.
            input_tokens: sum_counts([self.prompt_token_count, self.tool_use_prompt_token_count]),
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
    fn the_prompt_of_server_side_tools_is_input() {
        // QuantumNous/new-api#2935: gemini-3-flash-preview with googleSearch, streamed.
        let facts = finished_with(
            r#"{"promptTokenCount": 151,"candidatesTokenCount": 1089,"totalTokenCount": 20689,"toolUsePromptTokenCount": 18329,"thoughtsTokenCount": 1120,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 151}],"toolUsePromptTokensDetails": [{"modality": "TEXT","tokenCount": 18329}]}"#,
        );
        let usage = facts.usage.unwrap();
        assert_eq!(usage.input_tokens, Some(18480));
        assert_eq!(usage.output_tokens, Some(2209));
        assert_eq!(usage.reasoning_tokens, Some(1120));
        // The stated total is the sum of the parts.
        assert_eq!(usage.total_tokens, Some(20689));
        let facts = finished_with(
            r#"{"promptTokenCount": 151,"candidatesTokenCount": 1,"toolUsePromptTokenCount": -1}"#,
        );
        assert_eq!(facts.usage.unwrap().input_tokens, None);
    }

    #[test]
    fn an_odd_member_beside_the_final_figures_costs_only_itself() {
        for (last, reason, model) in [
            (
                r#"{"candidates": [{"finishReason": 1,"index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 4},"modelVersion": "gemini-2.5-flash"}"#,
                None,
                Some("gemini-2.5-flash"),
            ),
            (
                r#"{"candidates": [{"finishReason": "STOP","index": "0","safetyRatings": 1e400}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 4},"modelVersion": 2.5}"#,
                Some("STOP"),
                None,
            ),
            (
                r#"{"candidates": {"finishReason": "STOP"},"promptFeedback": {"blockReason": "SAFETY"},"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 4}}"#,
                Some("SAFETY"),
                None,
            ),
            (
                r#"{"candidates": [null, {"finishReason": "MAX_TOKENS"}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 4},"error": 5}"#,
                Some("MAX_TOKENS"),
                None,
            ),
        ] {
            let facts = run(&[last.as_bytes()]);
            assert_eq!(facts.finish_reason.as_deref(), reason, "{last}");
            assert_eq!(facts.end_marker_seen, reason.is_some(), "{last}");
            assert_eq!(facts.model.as_deref(), model, "{last}");
            let usage = facts.usage.unwrap_or_else(|| panic!("{last}: usage lost"));
            assert_eq!(usage.total_tokens, Some(12), "{last}");
            assert_eq!(facts.unparsed_events, 0, "{last}");
            assert_eq!(facts.provider_error, None, "{last}");
        }
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
