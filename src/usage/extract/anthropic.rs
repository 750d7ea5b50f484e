//! Anthropic Messages (`/v1/messages`) streams: named events. `message_start` carries the model
//! and the input figures (uncached `input_tokens`, `cache_creation_input_tokens`,
//! `cache_read_input_tokens`); each `message_delta` carries the `stop_reason` and usage figures
//! that are cumulative, so the last one wins (it may restate the input figures too, e.g. after
//! server-side tool use); `message_stop` ends the stream; `event: error` reports a failure.
//!
//! The event name decides: `content_block_*` and `ping` cost one comparison and no parse.

use serde::Deserialize;

use super::common::{event_kind, parse, ErrorEvent};
use super::UsageExtractor;
use crate::usage::record::{sum_present, StreamFacts, Usage};

#[derive(Debug, Default)]
pub struct AnthropicExtractor {
    facts: StreamFacts,
    /// The figures so far, each the latest the provider stated.
    figures: Figures,
}

impl AnthropicExtractor {
    pub fn new() -> AnthropicExtractor {
        AnthropicExtractor::default()
    }

    pub(crate) fn seeded(facts: StreamFacts) -> AnthropicExtractor {
        AnthropicExtractor {
            facts,
            figures: Figures::default(),
        }
    }

    fn read_start(&mut self, data: &[u8]) {
        let Some(MessageStart { message }) = parse(&mut self.facts, data) else {
            return;
        };
        let Some(message) = message else { return };
        if let Some(model) = message.model {
            self.facts.model = Some(model);
        }
        if let Some(figures) = message.usage {
            self.figures.update(figures);
        }
    }

    fn read_delta(&mut self, data: &[u8]) {
        let Some(MessageDelta { delta, usage }) = parse(&mut self.facts, data) else {
            return;
        };
        if let Some(reason) = delta.and_then(|d| d.stop_reason) {
            self.facts.finish_reason = Some(reason);
        }
        // Only a message_delta states the final output figure; message_start's is a placeholder.
        if let Some(figures) = usage.filter(|f| f.output_tokens.is_some()) {
            self.figures.update(figures);
            self.facts.usage = Some(self.figures.usage());
        }
    }

    fn read_error(&mut self, data: &[u8]) {
        let event = parse::<ErrorEvent>(&mut self.facts, data);
        if let Some(error) = event.and_then(ErrorEvent::into_provider_error) {
            self.facts.provider_error = Some(error);
        }
    }
}

impl UsageExtractor for AnthropicExtractor {
    fn on_event(&mut self, event_type: &[u8], data: &[u8]) {
        self.facts.events += 1;
        let Some(kind) = event_kind(&mut self.facts, event_type, data) else {
            return;
        };
        match kind.as_ref() {
            b"message_start" => self.read_start(data),
            b"message_delta" => self.read_delta(data),
            b"message_stop" => self.facts.end_marker_seen = true,
            b"error" => self.read_error(data),
            _ => {}
        }
    }

    fn facts(&self) -> &StreamFacts {
        &self.facts
    }
}

#[derive(Deserialize)]
struct MessageStart {
    message: Option<StartedMessage>,
}

#[derive(Deserialize)]
struct StartedMessage {
    model: Option<String>,
    usage: Option<Figures>,
}

#[derive(Deserialize)]
struct MessageDelta {
    delta: Option<DeltaBody>,
    usage: Option<Figures>,
}

#[derive(Deserialize)]
struct DeltaBody {
    stop_reason: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Figures {
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl Figures {
    fn update(&mut self, newer: Figures) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
    }

    fn usage(&self) -> Usage {
        Usage {
            input_tokens: sum_present(&[
                self.input_tokens,
                self.cache_creation_input_tokens,
                self.cache_read_input_tokens,
            ]),
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cache_read_input_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens,
            reasoning_tokens: None,
            total_tokens: None,
        }
        .with_total(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[(&str, &str)]) -> StreamFacts {
        let mut x = AnthropicExtractor::new();
        for (event_type, data) in events {
            x.on_event(event_type.as_bytes(), data.as_bytes());
        }
        x.facts().clone()
    }

    #[test]
    fn content_events_are_not_read() {
        let facts = run(&[
            ("content_block_delta", "broken {"),
            ("ping", "broken {"),
            ("content_block_stop", "broken {"),
        ]);
        assert_eq!((facts.events, facts.unparsed_events), (3, 0));
    }

    #[test]
    fn the_last_message_delta_wins_and_may_restate_input() {
        // Shape of the documented web search stream: the final delta restates the input figures.
        let facts = run(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":"claude-3-7-sonnet-20250219","usage":{"input_tokens":2679,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":3}}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":120}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":10682,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":510,"server_tool_use":{"web_search_requests":1}}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        let usage = facts.usage.unwrap();
        assert_eq!(usage.input_tokens, Some(10682));
        assert_eq!(usage.output_tokens, Some(510));
        assert_eq!(usage.total_tokens, Some(11192));
        assert_eq!(facts.finish_reason.as_deref(), Some("end_turn"));
        assert!(facts.end_marker_seen);
    }

    #[test]
    fn start_figures_alone_are_not_final() {
        let facts = run(&[(
            "message_start",
            r#"{"type":"message_start","message":{"model":"m","usage":{"input_tokens":25,"output_tokens":1}}}"#,
        )]);
        assert_eq!(facts.usage_source(), "none");
        assert_eq!(facts.model.as_deref(), Some("m"));
    }

    #[test]
    fn unnamed_events_use_the_type_in_their_data() {
        let facts = run(&[
            (
                "message",
                r#"{"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 4}}"#,
            ),
            ("message", r#"{"type": "message_stop"}"#),
        ]);
        assert_eq!(facts.finish_reason.as_deref(), Some("max_tokens"));
        assert!(facts.end_marker_seen);
    }

    #[test]
    fn wrong_types_are_counted_not_fatal() {
        let facts = run(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":7}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":1e400}}"#,
            ),
            ("error", "{"),
        ]);
        assert_eq!(facts.unparsed_events, 3);
        assert_eq!(facts.usage, None);
        assert_eq!(facts.provider_error, None);
    }
}
