//! OpenAI chat completions (`/v1/chat/completions`) streams, and the legacy completions streams
//! that share their shape: `data:`-only chunk objects whose choices carry a `finish_reason`, a
//! final chunk with `usage` and `"choices": []` when the request set
//! `stream_options.include_usage`, then `data: [DONE]`. A mid-stream error is a
//! `{"error":{...}}` payload (the SDKs also accept it under `event: error`).
//!
//! Compatible servers move the figures: Groq states them under `x_groq.usage`, Moonshot inside
//! the finishing choice, DeepSeek its cache hits as `prompt_cache_hit_tokens`; vLLM and SGLang
//! (`continuous_usage_stats`) send running figures on every content chunk (each then parsed),
//! which are not final until the finish.
//!
//! Hot path: an ordinary delta chunk costs three substring scans and no parse, and the model
//! is read from the first chunk by a walk of its top-level keys; only the finish chunk, the usage
//! chunk and errors are parsed, once each.

use std::sync::LazyLock;

use serde::Deserialize;

use super::common::{
    parse, Count, ErrorBody, ErrorValue, OptionalList, OptionalObject, OptionalString,
};
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
    /// A choice has finished: figures from here on are final.
    finished: bool,
    /// Running figures stated before the finish, final only if the stream ends without others.
    /// Boxed: rare (vLLM's `continuous_usage_stats`), and every stream's extractor would carry
    /// its 104 bytes otherwise.
    running: Option<Box<Usage>>,
}

impl OpenaiChatExtractor {
    pub fn new() -> OpenaiChatExtractor {
        OpenaiChatExtractor::default()
    }

    pub(crate) fn seeded(facts: StreamFacts) -> OpenaiChatExtractor {
        OpenaiChatExtractor {
            facts,
            ..OpenaiChatExtractor::default()
        }
    }

    /// The model is still to be read, and the stream has not yet shown it never names one.
    fn wants_model(&self) -> bool {
        self.facts.model.is_none() && self.model_parses < MODEL_PARSES
    }

    fn wants_parse(&self, event_type: &[u8], data: &[u8], finishing: bool) -> bool {
        self.wants_model()
            || event_type == b"error"
            || finishing
            || USAGE.has_non_null_value(data)
            || ERROR.occurs_in(data)
    }

    /// `finishing`: a choice of this chunk states a finish reason (of whatever type).
    fn read(&mut self, data: &[u8], finishing: bool) {
        let Some(chunk) = parse::<Chunk>(&mut self.facts, data) else {
            return;
        };
        if self.facts.model.is_none() {
            self.model_parses += 1;
        }
        if let Some(model) = chunk.model.0.filter(|m| !m.is_empty()) {
            self.facts.model = Some(model);
        }
        // A last content chunk that happens to carry usage too is not usage-only.
        let choiceless = chunk.choices.0.as_ref().is_none_or(Vec::is_empty);
        self.usage_only = chunk.usage.0.is_some() && chunk.choices.is_empty_list();
        // With several choices the last one to finish names the reason.
        let choices: Vec<Choice> = chunk.choices.objects().collect();
        if let Some(reason) = choices.iter().rev().find_map(|c| c.finish_reason.0.clone()) {
            self.facts.finish_reason = Some(reason);
        }
        let usage = chunk
            .usage
            .0
            .or_else(|| chunk.x_groq.0.and_then(|x| x.usage.0))
            .or_else(|| choices.into_iter().rev().find_map(|c| c.usage.0));
        self.finished |= finishing;
        if let Some(usage) = usage.and_then(|u| u.into_usage().stated()) {
            // Figures on a content chunk before the finish are running ones: a stream cut there
            // has no final figures, as with Gemini and Anthropic.
            if self.finished || choiceless {
                self.facts.usage = Some(usage);
            } else {
                self.running = Some(Box::new(usage));
            }
        }
        if let Some(error) = chunk.error.with_type(chunk.error_type) {
            self.facts.provider_error = Some(error);
        } else if chunk.object.0.as_deref() == Some("error") {
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
            // A server that never names a finish still ends here, its last figures final. After
            // a finish they are not: the finish chunk's own figures would be the final ones, and
            // older ones may be short.
            if self.facts.usage.is_none() && !self.finished {
                self.facts.usage = self.running.take().map(|usage| *usage);
            }
            return;
        }
        if self.wants_model() {
            // Read without a parse when it can be: the first chunk usually has nothing else.
            let model = top_level_str(data, b"model").and_then(|m| std::str::from_utf8(m).ok());
            if let Some(model) = model.filter(|m| !m.is_empty()) {
                self.facts.model = Some(model.to_owned());
            }
        }
        let finishing = FINISH_REASON.has_non_null_value(data);
        if self.wants_parse(event_type, data, finishing) {
            self.read(data, finishing);
        }
    }

    fn facts(&self) -> &StreamFacts {
        &self.facts
    }

    fn usage_only(&self) -> bool {
        self.usage_only
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Chunk {
    model: OptionalString,
    object: OptionalString,
    choices: OptionalList<Choice>,
    usage: OptionalObject<ChatUsage>,
    /// Groq: `{"id":"req_…","usage":{…}}` on the finish chunk, without a top-level `usage`.
    x_groq: OptionalObject<XGroq>,
    error: ErrorValue,
    /// Beside a bare error message (text-generation-inference).
    error_type: OptionalString,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Choice {
    finish_reason: OptionalString,
    /// Moonshot (Kimi) states the figures in the finishing choice.
    usage: OptionalObject<ChatUsage>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct XGroq {
    usage: OptionalObject<ChatUsage>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ChatUsage {
    prompt_tokens: Count,
    completion_tokens: Count,
    total_tokens: Count,
    prompt_tokens_details: OptionalObject<PromptDetails>,
    completion_tokens_details: OptionalObject<CompletionDetails>,
    /// DeepSeek's cached part of `prompt_tokens` (which is hits plus misses), where it states no
    /// `prompt_tokens_details`.
    prompt_cache_hit_tokens: Count,
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
                .map_or(Count::Absent, |d| d.cached_tokens)
                // The standard figure when stated, else DeepSeek's.
                .over(self.prompt_cache_hit_tokens)
                .get(),
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

    #[test]
    fn groq_states_its_figures_under_x_groq() {
        // vercel/ai#1651: Groq's finish chunk, usage only under `x_groq`.
        let facts = run(&[
            br#"{"id":"chatcmpl-8566e76f","object":"chat.completion.chunk","created":1716131679,"model":"llama3-8b-8192","system_fingerprint":"fp_179b0f92c9","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"x_groq":{"id":"req_01hy8ppkajfqk987jv2vx88m9r"}}"#,
            br#"{"id":"chatcmpl-8566e76f","object":"chat.completion.chunk","created":1716131679,"model":"llama3-8b-8192","system_fingerprint":"fp_179b0f92c9","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"x_groq":{"id":"req_01hy8ppkajfqk987jv2vx88m9r","usage":{"queue_time":0.07535312,"prompt_tokens":23,"prompt_time":0.006,"completion_tokens":19,"completion_time":0.022,"total_tokens":42,"total_time":0.027999999999999997}}}"#,
            b"[DONE]",
        ]);
        let usage = facts.usage.unwrap();
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.total_tokens),
            (Some(23), Some(19), Some(42))
        );
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
        // Where Groq also states a top-level usage (include_usage), that one is read.
        let facts = run(&[
            FIRST,
            br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1},"x_groq":{"usage":{"prompt_tokens":9,"completion_tokens":9}}}"#,
        ]);
        assert_eq!(facts.usage.unwrap().total_tokens, Some(6));
    }

    #[test]
    fn moonshot_states_its_figures_in_the_finishing_choice() {
        // northes/go-moonshot#17: the documented stream of api.moonshot.cn.
        let facts = run(&[
            br#"{"id":"cmpl-1305b94c570f447fbde3180560736287","object":"chat.completion.chunk","created":1698999575,"model":"moonshot-v1-8k","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            br#"{"id":"cmpl-1305b94c570f447fbde3180560736287","object":"chat.completion.chunk","created":1698999575,"model":"moonshot-v1-8k","choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":19,"completion_tokens":13,"total_tokens":32}}]}"#,
            b"[DONE]",
        ]);
        assert_eq!(facts.usage.unwrap().total_tokens, Some(32));
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn deepseek_cache_hits_are_the_cached_part() {
        let deepseek = run(&[
            FIRST,
            br#"{"choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":30,"total_tokens":1230,"prompt_cache_hit_tokens":1024,"prompt_cache_miss_tokens":176}}"#,
        ]);
        assert_eq!(deepseek.usage.unwrap().cached_input_tokens, Some(1024));
        // The standard figure, where stated (also null-valued details), is the one read.
        for (details, cached) in [
            (r#"{"cached_tokens":1000}"#, Some(1000)),
            (r#"{"cached_tokens":"x"}"#, None),
            ("null", Some(1024)),
            (r#"{"audio_tokens":0}"#, Some(1024)),
        ] {
            let chunk = format!(
                r#"{{"choices":[],"usage":{{"prompt_tokens":1200,"completion_tokens":30,"prompt_tokens_details":{details},"prompt_cache_hit_tokens":1024}}}}"#
            );
            let facts = run(&[FIRST, chunk.as_bytes()]);
            assert_eq!(
                facts.usage.unwrap().cached_input_tokens,
                cached,
                "{details}"
            );
        }
    }

    const RUNNING: [&[u8]; 2] = [
        br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":10,"total_tokens":11,"completion_tokens":1}}"#,
        br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"b"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":10,"total_tokens":12,"completion_tokens":2}}"#,
    ];

    #[test]
    fn running_figures_are_final_only_from_the_finish() {
        // vLLM with `continuous_usage_stats`: every chunk states the figures so far.
        let finish = br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":{"prompt_tokens":10,"total_tokens":13,"completion_tokens":3}}"#;
        let usage_chunk = br#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":10,"total_tokens":13,"completion_tokens":3}}"#;
        let cut = run(&RUNNING);
        assert_eq!(cut.usage_source(), "none");
        let whole = run(&[RUNNING[0], RUNNING[1], finish, usage_chunk, b"[DONE]"]);
        assert_eq!(whole.usage.unwrap().output_tokens, Some(3));
        let without_usage_chunk = run(&[RUNNING[0], RUNNING[1], finish]);
        assert_eq!(without_usage_chunk.usage.unwrap().output_tokens, Some(3));
        // A finish without figures: the running ones before it may be short, so none is final.
        let bare_finish = br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        let short = run(&[RUNNING[0], RUNNING[1], bare_finish, b"[DONE]"]);
        assert_eq!(short.usage_source(), "none");
        // A stream that ends without a finish reason: the last figures, at the end marker.
        let unfinished = run(&[RUNNING[0], RUNNING[1], b"[DONE]"]);
        assert_eq!(unfinished.usage.unwrap().output_tokens, Some(2));
    }

    /// The last chunk of a stream, with one member of the wrong type beside its figures:
    /// `(member, the finish reason still read, the model still read)`.
    const ODD_MEMBERS: &[(&str, Option<&str>, Option<&str>)] = &[
        (r#""finish_reason":7"#, None, Some("m")),
        (r#""finish_reason":{"type":"stop"}"#, None, Some("m")),
        (
            r#""finish_reason":"stop","index":"0""#,
            Some("stop"),
            Some("m"),
        ),
        (
            r#""finish_reason":"stop","logprobs":1e400"#,
            Some("stop"),
            Some("m"),
        ),
        (
            r#""finish_reason":"stop","delta":[]"#,
            Some("stop"),
            Some("m"),
        ),
    ];

    #[test]
    fn an_odd_member_beside_the_figures_costs_only_itself() {
        for &(member, reason, model) in ODD_MEMBERS {
            let last = format!(
                r#"{{"model":"m","choices":[{{"index":0,{member}}}],"usage":{{"prompt_tokens":5,"completion_tokens":7}}}}"#
            );
            check_odd(&last, reason, model);
        }
        for (chunk, reason, model) in [
            (
                r#"{"model":12,"choices":[{"index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
                Some("stop"),
                None,
            ),
            (
                r#"{"model":"m","choices":null,"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
                None,
                Some("m"),
            ),
            (
                r#"{"model":"m","choices":{"0":{}},"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
                None,
                Some("m"),
            ),
            (
                r#"{"model":"m","choices":[null,{"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":7},"created":1e400}"#,
                Some("stop"),
                Some("m"),
            ),
            (
                r#"{"model":"m","object":7,"system_fingerprint":false,"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7},"error":null}"#,
                None,
                Some("m"),
            ),
        ] {
            check_odd(chunk, reason, model);
        }
    }

    fn check_odd(last: &str, reason: Option<&str>, model: Option<&str>) {
        let mut x = OpenaiChatExtractor::new();
        // Nameless first chunks, so that the model is read from the last one.
        x.on_event(
            b"message",
            br#"{"choices":[{"delta":{},"finish_reason":null}]}"#,
        );
        x.on_event(b"message", last.as_bytes());
        x.on_event(b"message", b"[DONE]");
        let facts = x.facts();
        let usage = facts.usage.unwrap_or_else(|| panic!("{last}: usage lost"));
        assert_eq!(usage.total_tokens, Some(12), "{last}");
        assert_eq!(facts.finish_reason.as_deref(), reason, "{last}");
        assert_eq!(facts.model.as_deref(), model, "{last}");
        assert_eq!(facts.unparsed_events, 0, "{last}");
    }

    #[test]
    fn a_figure_beyond_f64_is_unknown_and_the_others_are_kept() {
        let facts = run(&[
            FIRST,
            br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1e400,"completion_tokens":7,"completion_tokens_details":{"reasoning_tokens":2}}}"#,
        ]);
        let usage = facts.usage.unwrap();
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.reasoning_tokens
            ),
            (None, Some(7), Some(2))
        );
        assert_eq!(usage.total_tokens, None);
        assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
        assert_eq!(facts.unparsed_events, 0);
    }

    #[test]
    fn a_bare_error_message_is_an_error() {
        // text-generation-inference's stream error: `{"error": String, "error_type": String}`.
        let facts = run(&[
            FIRST,
            br#"{"error":"Request failed during generation: Server error: CUDA out of memory","error_type":"generation"}"#,
        ]);
        let error = facts.provider_error.unwrap();
        assert_eq!(error.kind, "generation");
        assert!(error.message.starts_with("Request failed"));
        assert_eq!(facts.unparsed_events, 0);
        // An error object with odd members is still an error.
        let facts = run(&[FIRST, br#"{"error":{"message":"boom","code":[502]}}"#]);
        assert_eq!(facts.provider_error.unwrap().message, "boom");
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
