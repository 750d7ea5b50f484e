//! OpenAI Responses API (`/v1/responses`) streams: typed events (`event: response.created`,
//! `response.output_text.delta`, …) that end with `response.completed`, `response.incomplete` or
//! `response.failed`, each carrying the whole response object with `model`, `status`, `usage`
//! and `error`. A mid-stream `error` event carries `code` and `message`.
//!
//! The event type says everything, so a delta costs one comparison; only the lifecycle events
//! are parsed.

use serde::Deserialize;

use super::common::{
    event_kind, parse, Count, ErrorEvent, ErrorValue, OptionalObject, OptionalString,
};
use super::UsageExtractor;
use crate::usage::record::{StreamFacts, Usage};

#[derive(Debug, Default)]
pub struct ResponsesExtractor {
    facts: StreamFacts,
}

impl ResponsesExtractor {
    pub fn new() -> ResponsesExtractor {
        ResponsesExtractor::default()
    }

    pub(crate) fn seeded(facts: StreamFacts) -> ResponsesExtractor {
        ResponsesExtractor { facts }
    }

    fn read_lifecycle(&mut self, data: &[u8], terminal: bool) {
        let Some(event) = parse::<LifecycleEvent>(&mut self.facts, data) else {
            return;
        };
        let Some(response) = event.response.0 else {
            return;
        };
        if let Some(model) = response.model.0 {
            self.facts.model = Some(model);
        }
        if !terminal {
            return;
        }
        self.facts.end_marker_seen = true;
        if let Some(status) = response.status.0 {
            self.facts.finish_reason = Some(status);
        }
        if let Some(usage) = response.usage.0.and_then(|u| u.into_usage().stated()) {
            self.facts.usage = Some(usage);
        }
        if let Some(error) = response.error.with_type(OptionalString::default()) {
            self.facts.provider_error = Some(error);
        }
    }

    fn read_error(&mut self, data: &[u8]) {
        let event = parse::<ErrorEvent>(&mut self.facts, data);
        if let Some(error) = event.and_then(ErrorEvent::into_provider_error) {
            self.facts.provider_error = Some(error);
        }
    }
}

impl UsageExtractor for ResponsesExtractor {
    fn on_event(&mut self, event_type: &[u8], data: &[u8]) {
        self.facts.events += 1;
        let Some(kind) = event_kind(&mut self.facts, event_type, data) else {
            return;
        };
        match kind.as_ref() {
            b"response.created" | b"response.in_progress" if self.facts.model.is_none() => {
                self.read_lifecycle(data, false)
            }
            b"response.completed" | b"response.incomplete" | b"response.failed" => {
                self.read_lifecycle(data, true)
            }
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
struct LifecycleEvent {
    response: OptionalObject<ResponseObject>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ResponseObject {
    model: OptionalString,
    status: OptionalString,
    usage: OptionalObject<ResponsesUsage>,
    error: ErrorValue,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ResponsesUsage {
    input_tokens: Count,
    input_tokens_details: OptionalObject<InputDetails>,
    output_tokens: Count,
    output_tokens_details: OptionalObject<OutputDetails>,
    total_tokens: Count,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct InputDetails {
    cached_tokens: Count,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct OutputDetails {
    reasoning_tokens: Count,
}

impl ResponsesUsage {
    fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.get(),
            output_tokens: self.output_tokens.get(),
            cached_input_tokens: self
                .input_tokens_details
                .0
                .and_then(|d| d.cached_tokens.get()),
            cache_creation_input_tokens: None,
            reasoning_tokens: self
                .output_tokens_details
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

    #[test]
    fn deltas_are_not_read() {
        let mut x = ResponsesExtractor::new();
        x.on_event(b"response.output_text.delta", b"not json at all");
        x.on_event(b"response.in_progress", b"not json either");
        assert_eq!(
            x.facts().unparsed_events,
            1,
            "in_progress is read while the model is unknown"
        );
        x.on_event(b"response.created", br#"{"type":"response.created","response":{"model":"m","status":"in_progress","usage":null}}"#);
        x.on_event(b"response.in_progress", b"skipped once the model is known");
        assert_eq!(x.facts().unparsed_events, 1);
        assert_eq!(x.facts().model.as_deref(), Some("m"));
        assert!(!x.facts().end_marker_seen);
        assert_eq!(x.facts().finish_reason, None);
    }

    #[test]
    fn incomplete_is_an_end_with_its_status() {
        let mut x = ResponsesExtractor::new();
        x.on_event(b"response.incomplete", br#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"m","usage":{"input_tokens":10,"output_tokens":20}}}"#);
        let facts = x.facts();
        assert!(facts.end_marker_seen);
        assert_eq!(facts.finish_reason.as_deref(), Some("incomplete"));
        assert_eq!(facts.usage.unwrap().total_tokens, Some(30));
    }

    #[test]
    fn unnamed_events_are_typed_from_their_data() {
        let mut x = ResponsesExtractor::new();
        x.on_event(
            b"message",
            br#"{"type":"response.output_text.delta","delta":"x"}"#,
        );
        x.on_event(b"message", br#"{"sequence_number":3,"type":"response.completed","response":{"status":"completed","model":"m"}}"#);
        x.on_event(
            b"message",
            br#"{"type":"error","code":"rate_limit_exceeded","message":"slow down"}"#,
        );
        let facts = x.facts();
        assert!(facts.end_marker_seen);
        assert_eq!(
            facts.provider_error.as_ref().unwrap().kind,
            "rate_limit_exceeded"
        );
        assert_eq!(facts.unparsed_events, 0);
    }

    fn completed(usage: &str) -> StreamFacts {
        let mut x = ResponsesExtractor::new();
        let data = format!(
            r#"{{"type":"response.completed","response":{{"status":"completed","model":"m","usage":{usage}}}}}"#
        );
        x.on_event(b"response.completed", data.as_bytes());
        x.facts().clone()
    }

    #[test]
    fn a_figure_that_is_not_a_count_is_unknown_and_the_others_are_kept() {
        for bad in crate::usage::extract::common::NOT_COUNTS {
            let facts = completed(&format!(
                r#"{{"input_tokens":{bad},"input_tokens_details":{{"cached_tokens":{bad}}},"output_tokens":20,"output_tokens_details":{{"reasoning_tokens":4}},"total_tokens":{bad}}}"#
            ));
            assert!(facts.end_marker_seen, "{bad}");
            assert_eq!(facts.finish_reason.as_deref(), Some("completed"), "{bad}");
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
                (Some(20), Some(4)),
                "{bad}"
            );
            assert_eq!(facts.unparsed_events, 0, "{bad}");
        }
    }

    #[test]
    fn an_odd_member_beside_the_usage_costs_only_itself() {
        for (odd, status, error) in [
            (r#""model":5,"status":"completed""#, Some("completed"), None),
            (r#""model":"m","status":["completed"]"#, None, None),
            (
                r#""model":"m","status":"failed","error":{"code":1.5,"message":7}"#,
                Some("failed"),
                Some("error"),
            ),
            (
                r#""model":"m","status":"completed","error":"x","n":1e400"#,
                Some("completed"),
                Some("error"),
            ),
        ] {
            let mut x = ResponsesExtractor::new();
            let data = format!(
                r#"{{"type":"response.completed","response":{{{odd},"usage":{{"input_tokens":10,"output_tokens":2}}}}}}"#
            );
            x.on_event(b"response.completed", data.as_bytes());
            let facts = x.facts();
            assert!(facts.end_marker_seen, "{odd}");
            assert_eq!(facts.finish_reason.as_deref(), status, "{odd}");
            assert_eq!(
                facts.provider_error.as_ref().map(|e| e.kind.as_str()),
                error,
                "{odd}"
            );
            assert_eq!(facts.usage.unwrap().total_tokens, Some(12), "{odd}");
            assert_eq!(facts.unparsed_events, 0, "{odd}");
        }
    }

    #[test]
    fn a_usage_of_the_wrong_type_costs_only_the_usage() {
        for usage in [r#""n/a""#, "[]", "0", "true"] {
            let facts = completed(usage);
            assert!(facts.end_marker_seen, "{usage}");
            assert_eq!(facts.finish_reason.as_deref(), Some("completed"), "{usage}");
            assert_eq!(facts.usage, None, "{usage}");
            assert_eq!(facts.unparsed_events, 0, "{usage}");
        }
        let facts = completed(
            r#"{"input_tokens":10,"input_tokens_details":"x","output_tokens":2,"output_tokens_details":[1]}"#,
        );
        assert_eq!(facts.usage.unwrap().total_tokens, Some(12));
    }
}
