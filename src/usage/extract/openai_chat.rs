//! OpenAI chat completions (`/v1/chat/completions`) streams, and the legacy completions streams
//! that share their shape: `data:`-only chunk objects whose choices carry a `finish_reason`, a
//! final chunk with `usage` and `"choices": []` when the request set
//! `stream_options.include_usage`, then `data: [DONE]`. A mid-stream error is a
//! `{"error":{...}}` payload (the SDKs also accept it under `event: error`).
//!
//! Hot path: an ordinary delta chunk costs three substring scans and no parse, and the model
//! is read from the first chunk by a walk of its top-level keys; only the finish chunk, the usage
//! chunk and errors are parsed, once each.

use std::sync::LazyLock;

use serde::Deserialize;

use super::common::{parse, Count, ErrorBody, OptionalObject};
use super::scan::{top_level_str, Needle};
use super::UsageExtractor;
use crate::usage::record::{StreamFacts, Usage};

static FINISH_REASON: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"finish_reason\""));
static USAGE: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"usage\""));
// Any `"error"` string, key or value: also catches `{"object":"error",...}` of compatible
// servers. Text never matches (its quotes arrive escaped), so this stays rare.
static ERROR: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"error\""));

/// A server that never names the model would otherwise have every chunk scanned and parsed.
const MODEL_PARSES: u8 = 3;

#[derive(Debug, Default)]
pub struct OpenaiChatExtractor {
    facts: StreamFacts,
    model_parses: u8,
    /// The last event was the usage-only chunk.
    usage_only: bool,
}

impl OpenaiChatExtractor {
    pub fn new() -> OpenaiChatExtractor {
        OpenaiChatExtractor::default()
    }

    pub(crate) fn seeded(facts: StreamFacts) -> OpenaiChatExtractor {
        OpenaiChatExtractor {
            facts,
            model_parses: 0,
            usage_only: false,
        }
    }

    /// The model is still to be read, and the stream has not yet shown it never names one.
    fn wants_model(&self) -> bool {
        self.facts.model.is_none() && self.model_parses < MODEL_PARSES
    }

    fn wants_parse(&self, event_type: &[u8], data: &[u8]) -> bool {
        self.wants_model()
            || event_type == b"error"
            || FINISH_REASON.has_non_null_value(data)
            || USAGE.has_non_null_value(data)
            || ERROR.occurs_in(data)
    }

    fn read(&mut self, data: &[u8]) {
        let Some(chunk) = parse::<Chunk>(&mut self.facts, data) else {
            return;
        };
        if self.facts.model.is_none() {
            self.model_parses += 1;
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.facts.model = Some(model);
        }
        // A last content chunk that happens to carry usage too is not usage-only.
        self.usage_only =
            chunk.usage.0.is_some() && chunk.choices.as_ref().is_some_and(Vec::is_empty);
        // With several choices the last one to finish names the reason.
        let choices = chunk.choices.unwrap_or_default().into_iter();
        if let Some(reason) = choices.rev().find_map(|c| c.finish_reason) {
            self.facts.finish_reason = Some(reason);
        }
        if let Some(usage) = chunk.usage.0.and_then(|u| u.into_usage().stated()) {
            self.facts.usage = Some(usage);
        }
        if let Some(error) = chunk.error {
            self.facts.provider_error = Some(error.into_provider_error());
        } else if chunk.object.as_deref() == Some("error") {
            // OpenAI-compatible servers (vLLM and others) write the error object flat.
            if let Some(error) = parse::<ErrorBody>(&mut self.facts, data) {
                self.facts.provider_error = Some(error.into_provider_error());
            }
        }
    }
}

impl UsageExtractor for OpenaiChatExtractor {
    fn on_event(&mut self, event_type: &[u8], data: &[u8]) {
        self.facts.events += 1;
        self.usage_only = false;
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.facts.end_marker_seen = true;
            return;
        }
        if self.wants_model() {
            // Read without a parse when it can be: the first chunk usually has nothing else.
            let model = top_level_str(data, b"model").and_then(|m| std::str::from_utf8(m).ok());
            if let Some(model) = model.filter(|m| !m.is_empty()) {
                self.facts.model = Some(model.to_owned());
            }
        }
        if self.wants_parse(event_type, data) {
            self.read(data);
        }
    }

    fn facts(&self) -> &StreamFacts {
        &self.facts
    }

    fn usage_only(&self) -> bool {
        self.usage_only
    }
}

#[derive(Deserialize)]
struct Chunk {
    model: Option<String>,
    object: Option<String>,
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: OptionalObject<ChatUsage>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct Choice {
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ChatUsage {
    prompt_tokens: Count,
    completion_tokens: Count,
    total_tokens: Count,
    prompt_tokens_details: OptionalObject<PromptDetails>,
    completion_tokens_details: OptionalObject<CompletionDetails>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct PromptDetails {
    cached_tokens: Count,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct CompletionDetails {
    reasoning_tokens: Count,
}

impl ChatUsage {
    fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens.get(),
            output_tokens: self.completion_tokens.get(),
            cached_input_tokens: self
                .prompt_tokens_details
                .0
                .and_then(|d| d.cached_tokens.get()),
            cache_creation_input_tokens: None,
            reasoning_tokens: self
                .completion_tokens_details
                .0
                .and_then(|d| d.reasoning_tokens.get()),
            total_tokens: None,
        }
        .with_total(self.total_tokens.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &[u8] = br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;

    fn run(events: &[&[u8]]) -> StreamFacts {
        let mut x = OpenaiChatExtractor::new();
        for data in events {
            x.on_event(b"message", data);
        }
        x.facts().clone()
    }

    /// Chunks the prefilter must skip: were they parsed, the broken JSON would be counted.
    fn skipped(data: &[u8]) -> bool {
        let mut x = OpenaiChatExtractor::new();
        x.on_event(b"message", FIRST);
        x.on_event(b"message", data);
        x.facts().unparsed_events == 0
    }

    #[test]
    fn ordinary_deltas_are_not_parsed() {
        assert!(skipped(
            br#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}],"usage":null} BROKEN"#
        ));
        assert!(skipped(br#"{"choices":[{"delta":{"content":"the \"finish_reason\": \"stop\" and \"usage\": {} and \"error\""},"finish_reason":null}] BROKEN"#));
        // Pretty-printed (data lines joined by LF) is still recognised as ordinary.
        assert!(skipped(b"{\n  \"choices\": [{\"delta\": {}, \"finish_reason\" : null}],\n  \"usage\" :\n null\n} BROKEN"));
    }

    #[test]
    fn finish_and_usage_found_with_any_spacing() {
        let facts = run(&[
            FIRST,
            br#"{"model":"gpt-4o-mini", "choices":[{"index":0,"delta":{},"finish_reason": "stop"}]}"#,
            b"{\n  \"choices\": [],\n  \"usage\": {\n    \"prompt_tokens\": 9,\n    \"completion_tokens\": 3,\n    \"total_tokens\": 12\n  }\n}",
            b"[DONE]",
        ]);
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
        assert!(facts.end_marker_seen);
        let usage = facts.usage.unwrap();
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.total_tokens),
            (Some(9), Some(3), Some(12))
        );
        assert_eq!(facts.unparsed_events, 0);
    }

    #[test]
    fn usage_on_the_finish_chunk_is_taken() {
        let facts = run(&[
            FIRST,
            br#"{"choices":[{"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
        ]);
        let usage = facts.usage.unwrap();
        assert_eq!(usage.total_tokens, Some(12));
        assert!(!facts.end_marker_seen);
    }

    #[test]
    fn model_from_a_later_chunk_when_the_first_is_empty() {
        // Azure sends a content-filter chunk with an empty model first.
        let facts = run(&[
            br#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[]}"#,
            FIRST,
        ]);
        assert_eq!(facts.model.as_deref(), Some("gpt-4o-mini"));
    }

    #[test]
    fn errors_in_each_shape() {
        let nested = run(&[
            FIRST,
            br#"{"error":{"message":"m","type":"server_error","param":null,"code":null}}"#,
        ]);
        assert_eq!(nested.provider_error.unwrap().kind, "server_error");
        let flat = run(&[br#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#]);
        let error = flat.provider_error.unwrap();
        assert_eq!(
            (error.kind.as_str(), error.message.as_str()),
            ("BadRequestError", "bad")
        );
        let mut x = OpenaiChatExtractor::new();
        x.on_event(b"message", FIRST);
        x.on_event(b"error", br#"{"error":{"message":"m","type":"t"}}"#);
        assert_eq!(x.facts().provider_error.as_ref().unwrap().kind, "t");
    }

    #[test]
    fn the_largest_counts_do_not_overflow() {
        let facts = run(&[
            FIRST,
            br#"{"choices":[],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#,
        ]);
        let usage = facts.usage.unwrap();
        assert_eq!(usage.input_tokens, Some(u64::MAX));
        assert_eq!(usage.total_tokens, None);
    }

    #[test]
    fn a_figure_that_is_not_a_count_is_unknown_and_the_others_are_kept() {
        for bad in crate::usage::extract::common::NOT_COUNTS {
            let chunk = format!(
                r#"{{"choices":[],"usage":{{"prompt_tokens":{bad},"completion_tokens":7,"prompt_tokens_details":{{"cached_tokens":{bad}}},"completion_tokens_details":{{"reasoning_tokens":2}}}}}}"#
            );
            let facts = run(&[FIRST, chunk.as_bytes(), b"[DONE]"]);
            let usage = facts.usage.unwrap_or_else(|| panic!("{bad}: usage lost"));
            assert_eq!(
                (usage.input_tokens, usage.cached_input_tokens),
                (None, None),
                "{bad}"
            );
            assert_eq!(
                (usage.output_tokens, usage.reasoning_tokens),
                (Some(7), Some(2)),
                "{bad}"
            );
            // Derived from the figures, one of them unknown: unknown too.
            assert_eq!(usage.total_tokens, None, "{bad}");
            assert_eq!(facts.unparsed_events, 0, "{bad}");
        }
        // A stated total stands when a part is unreadable.
        let facts = run(&[
            FIRST,
            br#"{"choices":[],"usage":{"prompt_tokens":-9,"completion_tokens":3,"total_tokens":12}}"#,
        ]);
        assert_eq!(facts.usage.unwrap().total_tokens, Some(12));
    }

    #[test]
    fn a_usage_of_the_wrong_type_costs_only_the_usage() {
        let facts = run(&[
            FIRST,
            br#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":"none","object":"chat.completion.chunk"}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"prompt_tokens_details":[],"completion_tokens_details":7}}"#,
        ]);
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
        let usage = facts.usage.unwrap();
        assert_eq!(usage.total_tokens, Some(5));
        assert_eq!(
            (usage.cached_input_tokens, usage.reasoning_tokens),
            (None, None)
        );
        assert_eq!(facts.unparsed_events, 0);
    }

    /// Whether the extractor takes `data`, after the stream's first chunk, for the usage-only
    /// chunk.
    fn usage_only(data: &[u8]) -> bool {
        let mut x = OpenaiChatExtractor::new();
        x.on_event(b"message", FIRST);
        assert!(!x.usage_only());
        x.on_event(b"message", data);
        x.usage_only()
    }

    #[test]
    fn usage_only_chunk() {
        assert!(usage_only(br#"{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#));
        assert!(usage_only(
            b"{\n \"choices\" : [ ],\n \"usage\" : {\"prompt_tokens\": 1}\n}"
        ));
        assert!(!usage_only(
            br#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!usage_only(
            br#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#
        ));
        assert!(!usage_only(br#"{"choices":[],"usage":null}"#));
        // The chunk Sluice asked for, whatever its figures are worth.
        assert!(usage_only(
            br#"{"choices":[],"usage":{"prompt_tokens":"1","completion_tokens":-2}}"#
        ));
        assert!(!usage_only(br#"{"usage":{"prompt_tokens":1}}"#));
        // Cut short: not JSON, so passed on as it came.
        assert!(!usage_only(br#"{"choices":[],"usage":{"prompt_tokens":1}"#));
        assert!(!usage_only(b"[DONE]"));
    }

    #[test]
    fn a_stream_that_never_names_the_model_stops_being_read_for_it() {
        let nameless = br#"{"choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#;
        let mut x = OpenaiChatExtractor::new();
        for _ in 0..MODEL_PARSES {
            x.on_event(b"message", nameless);
        }
        // Neither scanned nor parsed any more: ordinary chunks cost the three needle checks.
        x.on_event(
            b"message",
            br#"{"model":"late","choices":[{"delta":{},"finish_reason":null}]}"#,
        );
        assert_eq!(x.facts().model, None);
    }

    #[test]
    fn usage_only_is_about_the_last_event() {
        let mut x = OpenaiChatExtractor::new();
        x.on_event(b"message", br#"{"choices":[],"usage":{"prompt_tokens":1}}"#);
        assert!(x.usage_only());
        x.on_event(b"message", b"[DONE]");
        assert!(!x.usage_only());
    }
}
