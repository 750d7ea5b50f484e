//! The stream inspector: reads a relayed event stream for usage without delaying it.
//!
//! Every chunk is parsed (SSE) and its events handed to the provider's usage extractor, and the
//! chunk goes to the client at once, unchanged, with two documented exceptions:
//! - *strip mode* (Sluice injected `include_usage` for a client that did not ask for it): the
//!   OpenAI usage-only chunk is cut out, and the tail of a chunk that ends inside an event is
//!   held until that event is complete (a client cannot act on half an event anyway);
//! - *hold-final mode* (`durability: before_end`): from the provider's end-of-stream marker on,
//!   bytes are held so that the relay can make the usage record durable before the client sees
//!   the end of the stream. The marker is known only once its event is complete, so the start of
//!   that event may already be out; its blank line is not, so the client cannot have dispatched
//!   it, and the body's end comes later still.

use crate::sse::SseParser;
use crate::usage::extract::UsageExtractor;
use crate::usage::record::StreamFacts;
use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone, Copy)]
pub struct InspectorOptions {
    /// Largest event the parser reads; larger ones pass through uninspected and are counted.
    pub max_event_size: usize,
    /// Remove the usage-only chunk from the client's stream.
    pub strip_usage_chunk: bool,
    /// Hold the final frame (from the end marker on) until the relay releases it.
    pub hold_final_frame: bool,
}

pub struct StreamInspector {
    parser: SseParser,
    extractor: Box<dyn UsageExtractor>,
    options: InspectorOptions,
    /// Bytes not yet sent: a partial event (strip mode) or the final frame and all after it.
    held: BytesMut,
    final_reached: bool,
    stripped_chunks: u64,
}

impl StreamInspector {
    pub fn new(extractor: Box<dyn UsageExtractor>, options: InspectorOptions) -> Self {
        StreamInspector {
            parser: SseParser::new(options.max_event_size),
            extractor,
            options,
            held: BytesMut::new(),
            final_reached: false,
            stripped_chunks: 0,
        }
    }

    /// Inspects one upstream chunk and returns what the client gets now (often all of it,
    /// without a copy).
    pub fn on_chunk(&mut self, chunk: Bytes) -> Bytes {
        let base = self.held.len();
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let mut hold_from = self.final_reached.then_some(0);
        let (extractor, options) = (&mut self.extractor, self.options);
        let stripped = &mut self.stripped_chunks;
        // Offsets in `held ++ chunk`. An event whose block began in an earlier chunk begins at 0:
        // what is held starts at a block's start (strip mode holds from one).
        let at = |in_chunk: usize| if in_chunk == 0 { 0 } else { base + in_chunk };
        let last_block_end = self
            .parser
            .feed_at(&chunk, |event, start_in_chunk, end_in_chunk| {
                let (start, end) = (at(start_in_chunk), base + end_in_chunk);
                let was_final = extractor.facts().end_marker_seen;
                extractor.on_event(event.event_type(), &event.data);
                if hold_from.is_some() {
                    return;
                }
                if options.strip_usage_chunk && extractor.usage_only() {
                    cuts.push((start, end));
                    *stripped += 1;
                } else if options.hold_final_frame
                    && !was_final
                    && extractor.facts().end_marker_seen
                {
                    hold_from = Some(start);
                }
            });
        if let Some(from) = hold_from {
            self.final_reached = true;
            return self.release_until(chunk, from, &cuts, true);
        }
        // An event over the size limit is not inspected, so it cannot be the usage chunk: it
        // goes on as it comes, and what was held of it (at most the limit) with it.
        if self.options.strip_usage_chunk
            && !self.parser.at_event_boundary()
            && !self.parser.in_oversized_event()
        {
            let last_end = last_block_end.map_or(0, |end| base + end);
            return self.release_until(chunk, last_end, &cuts, true);
        }
        if base == 0 && cuts.is_empty() {
            return chunk;
        }
        let len = base + chunk.len();
        self.release_until(chunk, len, &cuts, false)
    }

    /// Sends `held ++ chunk` up to `until` (minus `cuts`) and keeps the rest held when `hold`.
    fn release_until(
        &mut self,
        chunk: Bytes,
        until: usize,
        cuts: &[(usize, usize)],
        hold: bool,
    ) -> Bytes {
        let mut working = std::mem::take(&mut self.held);
        working.extend_from_slice(&chunk);
        let rest = working.split_off(until);
        if hold {
            self.held = rest;
        }
        if cuts.is_empty() {
            return working.freeze();
        }
        let mut out = BytesMut::with_capacity(working.len());
        let mut from = 0;
        for &(start, end) in cuts {
            out.extend_from_slice(&working[from..start]);
            from = end;
        }
        out.extend_from_slice(&working[from..]);
        out.freeze()
    }

    /// What the client has received so far ends between two events: Sluice may insert bytes
    /// (a heartbeat, a terminal event) without corrupting an upstream event.
    pub fn client_at_event_boundary(&self) -> bool {
        if self.final_reached {
            // Part of the final event may be out already; nothing goes in until it is released.
            return false;
        }
        !self.held.is_empty() || self.parser.at_event_boundary()
    }

    /// Everything the upstream sent so far ends between two events (held bytes included): a
    /// comment after it all is an event of its own, where after an unfinished line it would
    /// join that line (`data: [DONE]: sluice-usage …`) and make an event the upstream never
    /// finished.
    pub fn upstream_at_event_boundary(&self) -> bool {
        self.parser.at_event_boundary()
    }

    /// The provider's end-of-stream marker has arrived (and, in hold-final mode, its frame is
    /// held).
    pub fn final_reached(&self) -> bool {
        self.final_reached || self.extractor.facts().end_marker_seen
    }

    /// The bytes still held: the final frame and whatever followed it. A partial event held in
    /// strip mode is returned as well (it was never complete, but it is the upstream's).
    pub fn take_held(&mut self) -> Bytes {
        std::mem::take(&mut self.held).freeze()
    }

    /// In hold-final mode, what followed the end marker has reached the size of the largest
    /// event: an upstream that goes on sending after its stream's end must not be held without
    /// a bound.
    pub fn final_frame_full(&self) -> bool {
        self.final_reached && self.held.len() > self.options.max_event_size
    }

    /// Bytes held back so far.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Drops a partial event held in strip mode (the stream is being ended by Sluice, and the
    /// client never saw its start).
    pub fn discard_partial(&mut self) {
        if !self.final_reached {
            self.held.clear();
        }
    }

    pub fn facts(&self) -> &StreamFacts {
        self.extractor.facts()
    }

    pub fn oversized_events(&self) -> u64 {
        self.parser.oversized_events()
    }

    pub fn stripped_chunks(&self) -> u64 {
        self.stripped_chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::extract::{extractor_for, StreamFormat};

    const CHUNK: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    const FINISH: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn inspector(strip: bool, hold: bool) -> StreamInspector {
        inspector_limited(1 << 20, strip, hold)
    }

    /// An OpenAI chat inspector reading events of at most `max_event_size` bytes.
    fn inspector_limited(max_event_size: usize, strip: bool, hold: bool) -> StreamInspector {
        StreamInspector::new(
            extractor_for(StreamFormat::OpenaiChat),
            InspectorOptions {
                max_event_size,
                strip_usage_chunk: strip,
                hold_final_frame: hold,
            },
        )
    }

    fn stream() -> String {
        format!("{CHUNK}{FINISH}{USAGE}{DONE}")
    }

    /// Feeds `stream` in chunks of `size` bytes; returns what the client got and what is held.
    fn run(inspector: &mut StreamInspector, stream: &str, size: usize) -> (String, String) {
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(size) {
            out.extend_from_slice(&inspector.on_chunk(Bytes::copy_from_slice(piece)));
        }
        let held = inspector.take_held();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(held.to_vec()).unwrap(),
        )
    }

    #[test]
    fn the_final_frame_is_full_past_the_event_size_limit() {
        let mut holding = inspector_limited(64, false, true);
        assert_eq!(holding.on_chunk(Bytes::from(CHUNK)), CHUNK);
        assert!(holding.on_chunk(Bytes::from(DONE)).is_empty());
        assert!(!holding.final_frame_full());
        // Whatever follows the marker is held with it, up to the limit.
        assert!(holding
            .on_chunk(Bytes::from(": after\n\n".repeat(5)))
            .is_empty());
        assert!(!holding.final_frame_full(), "{}", holding.held_len());
        assert!(holding.on_chunk(Bytes::from(": after\n\n")).is_empty());
        assert!(holding.final_frame_full());
        assert_eq!(
            holding.take_held(),
            format!("{DONE}{}", ": after\n\n".repeat(6))
        );
        // Without hold-final mode nothing is held, so nothing fills up.
        let mut passing = inspector(false, false);
        for chunk in [CHUNK, DONE, &": after\n\n".repeat(100)] {
            passing.on_chunk(Bytes::from(chunk.to_string()));
        }
        assert!(passing.final_reached() && !passing.final_frame_full());
    }

    #[test]
    fn passes_everything_through_when_neither_mode_is_on() {
        for size in [1, 7, 64, 10_000] {
            let mut i = inspector(false, false);
            let (sent, held) = run(&mut i, &stream(), size);
            assert_eq!(sent, stream());
            assert_eq!(held, "");
            assert_eq!(i.facts().usage.unwrap().total_tokens, Some(11));
            assert!(i.facts().end_marker_seen);
        }
    }

    #[test]
    fn strips_the_usage_chunk_at_any_chunking() {
        for size in 1..=USAGE.len() + 3 {
            let mut i = inspector(true, false);
            let (sent, held) = run(&mut i, &stream(), size);
            assert_eq!(sent, format!("{CHUNK}{FINISH}{DONE}"), "chunk size {size}");
            assert_eq!(held, "");
            assert_eq!(i.facts().usage.unwrap().input_tokens, Some(9));
            assert_eq!(i.stripped_chunks(), 1);
        }
    }

    #[test]
    fn holds_the_final_frame_at_any_chunking() {
        for size in [1, 5, 13, 100, 10_000] {
            let mut i = inspector(false, true);
            let (sent, held) = run(&mut i, &stream(), size);
            // The final event may have started to go out, but its blank line is held: the
            // client cannot have dispatched it.
            assert_eq!(format!("{sent}{held}"), stream(), "chunk size {size}");
            assert!(sent.starts_with(&format!("{CHUNK}{FINISH}{USAGE}")));
            assert!(!held.is_empty() && DONE.ends_with(&held), "held {held:?}");
            assert!(i.final_reached());
            assert!(!i.client_at_event_boundary());
        }
    }

    #[test]
    fn strip_mode_holds_no_more_of_an_oversized_event_than_the_limit() {
        let mut i = inspector_limited(1024, true, false);
        let big = format!("data: {}\n\n", "x".repeat(64 * 1024));
        let stream = format!("{CHUNK}{big}{USAGE}{DONE}");
        let mut sent = Vec::new();
        for piece in stream.as_bytes().chunks(100) {
            sent.extend_from_slice(&i.on_chunk(Bytes::copy_from_slice(piece)));
            assert!(i.held_len() <= 1024 + 100, "held {}", i.held_len());
        }
        sent.extend_from_slice(&i.take_held());
        let sent = String::from_utf8(sent).unwrap();
        let expected = format!("{CHUNK}{big}{DONE}");
        // Not the strings themselves: 64 KiB each.
        let differ = sent.bytes().zip(expected.bytes()).position(|(a, b)| a != b);
        assert!(
            sent == expected,
            "sent {} bytes, expected {}, first difference at {differ:?}",
            sent.len(),
            expected.len()
        );
        assert_eq!(i.oversized_events(), 1);
        assert_eq!(i.stripped_chunks(), 1);
    }

    #[test]
    fn strip_and_hold_together() {
        let mut i = inspector(true, true);
        let (sent, held) = run(&mut i, &stream(), 3);
        assert_eq!(format!("{sent}{held}"), format!("{CHUNK}{FINISH}{DONE}"));
        assert!(!held.is_empty() && DONE.ends_with(&held));
    }

    #[test]
    fn boundary_follows_what_the_client_got() {
        let mut i = inspector(false, false);
        i.on_chunk(Bytes::from_static(b"data: {\"par"));
        assert!(!i.client_at_event_boundary());
        let mut i = inspector(true, false);
        let sent = i.on_chunk(Bytes::from_static(b"data: {\"par"));
        assert!(sent.is_empty(), "strip mode holds the partial event");
        assert!(i.client_at_event_boundary());
        i.discard_partial();
        assert!(i.take_held().is_empty());
    }

    #[test]
    fn malformed_stream_passes_untouched() {
        let garbage = "data: {not json\n\ndata: [DON\n\n\u{0}\u{1}\r\r\n";
        for strip in [false, true] {
            let mut i = inspector(strip, true);
            let (sent, held) = run(&mut i, garbage, 4);
            assert_eq!(format!("{sent}{held}"), garbage);
            assert_eq!(i.facts().usage_source(), "none");
        }
    }
}
