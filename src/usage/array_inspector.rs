//! The inspector of a streamed JSON array (Gemini's `streamGenerateContent` without `alt=sse`):
//! each element goes to the usage extractor as an event would, and the bytes go to the client as
//! they come, unchanged. With `durability: before_end` the array's closing `]` and what follows
//! it are held until the relay has made the usage record durable: a client cannot take the array
//! for whole before that.

use crate::sse::{ArrayPosition, JsonArraySplitter};
use crate::usage::extract::UsageExtractor;
use crate::usage::record::StreamFacts;
use bytes::{Bytes, BytesMut};

pub struct ArrayInspector {
    splitter: JsonArraySplitter,
    extractor: Box<dyn UsageExtractor>,
    hold_final: bool,
    max_element: usize,
    /// The closing `]` and the whitespace after it, in hold-final mode.
    held: BytesMut,
    /// Something other than whitespace came after the `]` (hold-final mode): not held, and
    /// the stream is over.
    went_on: bool,
}

/// How Sluice's own error element joins the array the client has so far.
#[derive(Debug, PartialEq, Eq)]
pub enum ErrorElement {
    /// Write these bytes, then the error object, then `]`.
    After(&'static str),
    /// The client is inside an element (or the body is not an array Sluice can read): nothing
    /// can be added that leaves it valid JSON.
    Impossible,
}

impl ArrayInspector {
    pub fn new(extractor: Box<dyn UsageExtractor>, max_element: usize, hold_final: bool) -> Self {
        ArrayInspector {
            splitter: JsonArraySplitter::new(max_element),
            extractor,
            hold_final,
            max_element,
            held: BytesMut::new(),
            went_on: false,
        }
    }

    /// Inspects one upstream chunk and returns what the client gets now.
    pub fn on_chunk(&mut self, chunk: Bytes) -> Bytes {
        if self.final_reached() && self.hold_final {
            self.hold_after_end(&chunk);
            return Bytes::new();
        }
        let extractor = &mut self.extractor;
        let closed_at = self
            .splitter
            .feed(&chunk, |element| extractor.on_event(b"message", element));
        match closed_at {
            Some(at) if self.hold_final => {
                self.held.extend_from_slice(b"]");
                self.hold_after_end(&chunk[at + 1..]);
                chunk.slice(..at)
            }
            _ => chunk,
        }
    }

    /// Holds what follows the `]` while it is whitespace, all a JSON text may end with; the
    /// first other byte ends the stream, and neither it nor anything after reaches the client
    /// (which would get an answer no JSON reader takes).
    fn hold_after_end(&mut self, bytes: &[u8]) {
        if self.went_on {
            return;
        }
        match bytes.iter().position(|b| !b.is_ascii_whitespace()) {
            None => self.held.extend_from_slice(bytes),
            Some(n) => {
                self.held.extend_from_slice(&bytes[..n]);
                self.went_on = true;
            }
        }
    }

    /// The array's closing `]` has been read.
    pub fn final_reached(&self) -> bool {
        self.splitter.position() == ArrayPosition::Ended
    }

    /// The provider finished: its array closed, or an element gave the finish reason (then the
    /// upstream has `END_MARKER_LINGER` to close it, as after an event stream's end marker).
    pub fn finished(&self) -> bool {
        self.final_reached() || self.extractor.facts().end_marker_seen
    }

    /// What closes an array whose provider finished but whose `]` never came (its upstream left
    /// the body open): the `]`, where the client's bytes end after an element.
    pub fn closing(&self) -> &'static str {
        match self.splitter.position() {
            ArrayPosition::AfterElement if !self.splitter.comma_pending() => "\n]",
            _ => "",
        }
    }

    /// The upstream went on after its array's `]` (with more than whitespace, or whitespace
    /// past the largest element): the stream ends with what it has.
    pub fn final_frame_full(&self) -> bool {
        self.final_reached() && (self.went_on || self.held.len() > self.max_element)
    }

    pub fn take_held(&mut self) -> Bytes {
        std::mem::take(&mut self.held).freeze()
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Where an error element of Sluice's may go, for a stream Sluice ends: what precedes it.
    /// Only where the upstream's bytes that reached the client end between elements.
    pub fn error_element(&self) -> ErrorElement {
        match self.splitter.position() {
            ArrayPosition::BeforeArray => ErrorElement::After("["),
            ArrayPosition::BeforeFirst => ErrorElement::After(""),
            ArrayPosition::AfterElement if self.splitter.comma_pending() => ErrorElement::After(""),
            ArrayPosition::AfterElement => ErrorElement::After(",\r\n"),
            ArrayPosition::InElement | ArrayPosition::Ended | ArrayPosition::GivenUp => {
                ErrorElement::Impossible
            }
        }
    }

    pub fn facts(&self) -> &StreamFacts {
        self.extractor.facts()
    }

    pub fn oversized_elements(&self) -> u64 {
        self.splitter.oversized_elements()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::extract::{extractor_for, StreamFormat};

    const FIRST: &str = "[{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 5,\"totalTokenCount\": 5},\"modelVersion\": \"gemini-2.0-flash\"}\n";
    const LAST: &str = ",\r\n{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 5,\"candidatesTokenCount\": 2,\"totalTokenCount\": 7},\"modelVersion\": \"gemini-2.0-flash\"}\n";

    fn inspector(hold: bool) -> ArrayInspector {
        ArrayInspector::new(extractor_for(StreamFormat::GeminiGenerate), 1 << 20, hold)
    }

    #[test]
    fn the_usage_of_a_streamed_array_is_read_and_its_bytes_pass_unchanged() {
        let mut inspector = inspector(false);
        let mut out = Vec::new();
        for piece in [FIRST, LAST, "]"] {
            out.extend_from_slice(&inspector.on_chunk(Bytes::from(piece)));
        }
        assert_eq!(out, format!("{FIRST}{LAST}]").as_bytes());
        let facts = inspector.facts();
        assert_eq!(facts.model.as_deref(), Some("gemini-2.0-flash"));
        let usage = facts.usage.as_ref().expect("final usage");
        assert_eq!(usage.input_tokens, Some(5));
        assert_eq!(usage.output_tokens, Some(2));
        assert_eq!(usage.total_tokens, Some(7));
        assert!(inspector.final_reached());
    }

    #[test]
    fn the_closing_bracket_is_held_until_released_in_hold_final_mode() {
        let mut inspector = inspector(true);
        assert_eq!(inspector.on_chunk(Bytes::from(FIRST)), FIRST);
        let last = format!("{LAST}]\n");
        assert_eq!(inspector.on_chunk(Bytes::from(last)), LAST);
        assert!(inspector.final_reached());
        assert_eq!(inspector.on_chunk(Bytes::from_static(b" ")), "");
        assert_eq!(inspector.take_held(), "]\n ");
    }

    #[test]
    fn what_follows_the_bracket_is_held_only_while_it_is_whitespace() {
        let mut inspector = inspector(true);
        inspector.on_chunk(Bytes::from(FIRST));
        assert_eq!(inspector.on_chunk(Bytes::from_static(b"] \n")), "");
        assert!(!inspector.final_frame_full());
        assert_eq!(
            inspector.on_chunk(Bytes::from_static(b"\n{\"more\": 1}")),
            ""
        );
        assert!(inspector.final_frame_full());
        assert_eq!(inspector.on_chunk(Bytes::from_static(b"  ")), "");
        assert_eq!(inspector.take_held(), "] \n\n");
    }

    #[test]
    fn an_error_element_goes_only_between_elements() {
        let mut inspector = inspector(false);
        assert_eq!(inspector.error_element(), ErrorElement::After("["));
        inspector.on_chunk(Bytes::from_static(b"["));
        assert_eq!(inspector.error_element(), ErrorElement::After(""));
        inspector.on_chunk(Bytes::from(&FIRST[1..]));
        assert_eq!(inspector.error_element(), ErrorElement::After(",\r\n"));
        inspector.on_chunk(Bytes::from_static(b",{\"candidates\": [{"));
        assert_eq!(inspector.error_element(), ErrorElement::Impossible);
    }

    #[test]
    fn a_body_that_is_no_array_passes_untouched_and_uninspected() {
        let mut inspector = inspector(true);
        let body = "{\"error\": {\"code\": 400}}";
        assert_eq!(inspector.on_chunk(Bytes::from(body)), body);
        assert!(!inspector.final_reached());
        assert!(inspector.facts().usage.is_none());
        assert_eq!(inspector.error_element(), ErrorElement::Impossible);
    }
}
