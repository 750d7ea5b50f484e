//! Anthropic Messages (`/v1/messages`) streams: named events. `message_start` carries the model
//! and the input figures (uncached `input_tokens`, `cache_creation_input_tokens`,
//! `cache_read_input_tokens`); each `message_delta` carries the `stop_reason` and usage figures
//! that are cumulative, so the last one wins (it may restate the input figures too, e.g. after
//! server-side tool use); `message_stop` ends the stream; `event: error` reports a failure.
//!
//! The event name decides: `content_block_*` and `ping` cost one comparison and no parse.

use serde::Deserialize;

use super::common::{
    event_kind, parse, sum_counts, Count, ErrorEvent, OptionalObject, OptionalString,
};
use super::UsageExtractor;
use crate::usage::record::{StreamFacts, Usage};

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
        let Some(message) = message.0 else { return };
        if let Some(model) = message.model.0 {
            self.facts.model = Some(model);
        }
        // Its output figure is a placeholder: were it kept, a final delta that leaves its own
        // out (or null) would leave the placeholder standing as the final count.
        if let Some(figures) = message.usage.0 {
            self.figures.update(Figures {
                output_tokens: Count::Absent,
                ..figures
            });
        }
    }

    fn read_delta(&mut self, data: &[u8]) {
        let Some(MessageDelta { delta, usage }) = parse(&mut self.facts, data) else {
            return;
        };
        if let Some(reason) = delta.0.and_then(|d| d.stop_reason.0) {
            self.facts.finish_reason = Some(reason);
        }
        // A delta's usage is final whatever it holds: one unreadable figure must not cost the
        // input figures message_start stated. When it leaves every figure unknown, so is the
        // usage: the earlier delta's figures are not the final ones.
        if let Some(figures) = usage.0 {
            self.figures.update(figures);
            self.facts.usage = self.figures.usage().stated();
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

#[derive(Default, Deserialize)]
#[serde(default)]
struct MessageStart {
    message: OptionalObject<StartedMessage>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct StartedMessage {
    model: OptionalString,
    usage: OptionalObject<Figures>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct MessageDelta {
    delta: OptionalObject<DeltaBody>,
    usage: OptionalObject<Figures>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct DeltaBody {
    stop_reason: OptionalString,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
struct Figures {
    input_tokens: Count,
    cache_creation_input_tokens: Count,
    cache_read_input_tokens: Count,
    output_tokens: Count,
}

impl Figures {
    fn update(&mut self, newer: Figures) {
        self.input_tokens = newer.input_tokens.over(self.input_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .over(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .over(self.cache_read_input_tokens);
        self.output_tokens = newer.output_tokens.over(self.output_tokens);
    }

    fn usage(&self) -> Usage {
        Usage {
            input_tokens: sum_counts([
                self.input_tokens,
                self.cache_creation_input_tokens,
                self.cache_read_input_tokens,
            ]),
            output_tokens: self.output_tokens.get(),
            cached_input_tokens: self.cache_read_input_tokens.get(),
            cache_creation_input_tokens: self.cache_creation_input_tokens.get(),
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
    fn wrong_types_cost_only_themselves_and_broken_json_is_counted() {
        let facts = run(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":7,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":["end_turn"]},"usage":{"output_tokens":1e400}}"#,
            ),
            ("error", "{"),
        ]);
        assert_eq!(facts.unparsed_events, 1);
        assert_eq!(facts.model, None);
        assert_eq!(facts.finish_reason, None);
        let usage = facts.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (Some(25), None));
        assert_eq!(facts.provider_error, None);
    }

    /// A final delta whose stop reason (or delta, or model) is of the wrong type keeps its
    /// figures, and one whose figure is beyond f64 keeps its stop reason.
    #[test]
    fn an_odd_member_beside_the_final_figures_costs_only_itself() {
        for (start, delta, reason, output) in [
            (
                r#"{"type":"message_start","message":{"model":null,"id":5,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":7},"usage":{"output_tokens":15}}"#,
                None,
                Some(15),
            ),
            (
                r#"{"type":"message_start","message":{"model":"m","usage":{"input_tokens":25,"output_tokens":1}}}"#,
                r#"{"type":"message_delta","delta":"end_turn","usage":{"output_tokens":15}}"#,
                None,
                Some(15),
            ),
            (
                r#"{"type":"message_start","message":{"model":"m","usage":{"input_tokens":25,"output_tokens":1}}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":-1e999}}"#,
                Some("end_turn"),
                None,
            ),
        ] {
            let facts = run(&[("message_start", start), ("message_delta", delta)]);
            assert_eq!(facts.finish_reason.as_deref(), reason, "{delta}");
            let usage = facts.usage.unwrap_or_else(|| panic!("{delta}: usage lost"));
            assert_eq!(
                (usage.input_tokens, usage.output_tokens),
                (Some(25), output),
                "{delta}"
            );
            assert_eq!(facts.unparsed_events, 0, "{delta}");
        }
    }

    const START: (&str, &str) = (
        "message_start",
        r#"{"type":"message_start","message":{"model":"claude-opus-4-6","usage":{"input_tokens":25,"output_tokens":1}}}"#,
    );

    /// The stream of the audit: the final delta's output figure is negative.
    #[test]
    fn an_unreadable_final_output_figure_keeps_the_input_figures() {
        let facts = run(&[
            START,
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":-5}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        assert_eq!(facts.usage_source(), "provider");
        let usage = facts.usage.unwrap();
        assert_eq!(usage.input_tokens, Some(25));
        // Unknown, and not message_start's placeholder either.
        assert_eq!(usage.output_tokens, None);
        assert_eq!(usage.total_tokens, None);
        assert_eq!(facts.finish_reason.as_deref(), Some("end_turn"));
        assert!(facts.end_marker_seen);
        assert_eq!(facts.unparsed_events, 0);
    }

    #[test]
    fn any_output_figure_that_is_not_a_count_is_unknown() {
        for bad in crate::usage::extract::common::NOT_COUNTS
            .iter()
            .chain(&["null"])
        {
            let delta = format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn"}},"usage":{{"output_tokens":{bad}}}}}"#
            );
            let facts = run(&[START, ("message_delta", &delta)]);
            let usage = facts.usage.unwrap_or_else(|| panic!("{bad}: usage lost"));
            assert_eq!(
                (usage.input_tokens, usage.output_tokens),
                (Some(25), None),
                "{bad}"
            );
            assert_eq!(facts.finish_reason.as_deref(), Some("end_turn"), "{bad}");
            assert_eq!(facts.unparsed_events, 0, "{bad}");
        }
    }

    #[test]
    fn an_unreadable_restated_figure_is_unknown_not_the_older_one() {
        // The delta restates the input after server-side tool use: 25 is no longer the count.
        let facts = run(&[
            START,
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":40}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"input_tokens":-1,"output_tokens":"x"}}"#,
            ),
        ]);
        assert_eq!(facts.usage, None);
        // A later delta that states the figures again is taken.
        let facts = run(&[
            START,
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":-5}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":64}}"#,
            ),
        ]);
        assert_eq!(facts.usage.unwrap().total_tokens, Some(89));
    }

    #[test]
    fn an_unreadable_cache_figure_makes_the_input_sum_unknown() {
        let facts = run(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":"m","usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":"2048","output_tokens":1}}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":7}}"#,
            ),
        ]);
        let usage = facts.usage.unwrap();
        // 472 alone would bill the cached part as never sent.
        assert_eq!(usage.input_tokens, None);
        assert_eq!(usage.cached_input_tokens, None);
        assert_eq!(usage.cache_creation_input_tokens, Some(0));
        assert_eq!(usage.output_tokens, Some(7));
        assert_eq!(facts.model.as_deref(), Some("m"));
    }

    #[test]
    fn a_usage_of_the_wrong_type_costs_only_the_usage() {
        let facts = run(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":"m","usage":"n/a"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":[1]}"#,
            ),
        ]);
        assert_eq!(facts.model.as_deref(), Some("m"));
        assert_eq!(facts.finish_reason.as_deref(), Some("max_tokens"));
        assert_eq!(facts.usage, None);
        assert_eq!(facts.unparsed_events, 0);
    }

    #[test]
    fn the_largest_counts_do_not_overflow() {
        let facts = run(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":1}}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":18446744073709551615}}"#,
            ),
        ]);
        let usage = facts.usage.unwrap();
        assert_eq!(usage.input_tokens, None);
        assert_eq!(usage.output_tokens, Some(u64::MAX));
        assert_eq!(usage.total_tokens, None);
    }
}
