//! An extractor for streams whose format the request did not reveal: it sniffs each event until
//! one names the format, then hands that event and all later ones to the format's extractor.

use super::common::{parse, ErrorEvent};
use super::{seeded_extractor, StreamFormat, UsageExtractor};
use crate::usage::record::StreamFacts;

pub struct AutoExtractor {
    state: State,
}

enum State {
    /// No event has named the format yet; what the unnamed events showed is kept here and handed
    /// on, so the counts and any error survive the switch.
    Sniffing(StreamFacts),
    Detected(StreamFormat, Box<dyn UsageExtractor>),
}

impl AutoExtractor {
    pub fn new() -> AutoExtractor {
        AutoExtractor {
            state: State::Sniffing(StreamFacts::default()),
        }
    }

    /// The format once detected.
    pub fn format(&self) -> Option<StreamFormat> {
        match &self.state {
            State::Sniffing(_) => None,
            State::Detected(format, _) => Some(*format),
        }
    }
}

impl Default for AutoExtractor {
    fn default() -> Self {
        AutoExtractor::new()
    }
}

impl UsageExtractor for AutoExtractor {
    fn on_event(&mut self, event_type: &[u8], data: &[u8]) {
        match &mut self.state {
            State::Detected(_, inner) => inner.on_event(event_type, data),
            State::Sniffing(facts) => match StreamFormat::sniff(event_type, data) {
                Some(format) => {
                    let mut inner = seeded_extractor(format, std::mem::take(facts));
                    inner.on_event(event_type, data);
                    self.state = State::Detected(format, inner);
                }
                None => {
                    facts.events += 1;
                    // Every format reports errors as an object with `error` or `message`; one
                    // that arrives before any other frame is the whole story of the stream.
                    if let Some(event) = parse::<ErrorEvent>(facts, data) {
                        if let Some(error) = event.into_provider_error() {
                            facts.provider_error = Some(error);
                        }
                    }
                }
            },
        }
    }

    fn facts(&self) -> &StreamFacts {
        match &self.state {
            State::Sniffing(facts) => facts,
            State::Detected(_, inner) => inner.facts(),
        }
    }

    fn usage_only(&self) -> bool {
        matches!(&self.state, State::Detected(_, inner) if inner.usage_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_before_any_frame_is_kept_across_detection() {
        let mut x = AutoExtractor::new();
        x.on_event(
            b"error",
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(x.format(), None);
        assert_eq!(
            x.facts().provider_error.as_ref().unwrap().kind,
            "overloaded_error"
        );
        x.on_event(b"message_stop", br#"{"type":"message_stop"}"#);
        assert_eq!(x.format(), Some(StreamFormat::AnthropicMessages));
        let facts = x.facts();
        assert_eq!(facts.events, 2);
        assert!(facts.end_marker_seen);
        assert_eq!(facts.provider_error.as_ref().unwrap().message, "Overloaded");
    }

    #[test]
    fn undetectable_frames_are_counted() {
        let mut x = AutoExtractor::new();
        x.on_event(b"message", b"plain text");
        x.on_event(b"message", br#"{"hello":"world"}"#);
        let facts = x.facts();
        assert_eq!((facts.events, facts.unparsed_events), (2, 1));
        assert_eq!(facts.usage_source(), "none");
    }
}
