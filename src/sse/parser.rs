//! An incremental Server-Sent Events parser that follows the WHATWG "event stream interpretation"
//! rules exactly, for watching (never changing) the bytes a proxy relays.
//!
//! It works on bytes, never decoding UTF-8 per chunk, so a chunk may end anywhere: inside a
//! line, inside a CRLF, inside a multi-byte character or inside the leading BOM.
//!
//! Memory stays bounded per stream: an event larger than `max_event_size` is skipped, and after
//! [`SseParser::feed`] returns the parser holds no reference to the caller's chunk (so an idle
//! stream never pins a whole upstream read buffer).
//!
//! End of stream needs no call: by the spec an event not yet ended by a blank line when the
//! stream ends is discarded, so the caller simply drops the parser.

use bytes::{Bytes, BytesMut};
use memchr::{memchr, memchr2};

/// The UTF-8 byte order mark, skipped once at the very start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Buffers that grew past this for one big event are freed rather than kept, so a stream that
/// once carried a huge event does not hold that much memory for the rest of its life.
const RETAINED_CAPACITY: usize = 8 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field value; `None` when absent or empty (the spec's type is then "message").
    pub event: Option<Bytes>,
    /// The data buffer per spec: `data:` lines joined by LF, final LF removed.
    pub data: Bytes,
    /// The last event ID at dispatch: it persists across events until an `id:` field changes it.
    /// `None` when it is empty (never set, or reset by an empty `id:` field).
    pub id: Option<Bytes>,
    /// The value of a valid `retry:` field among this event's lines (the last one wins).
    pub retry: Option<u64>,
}

impl SseEvent {
    /// The event type, `b"message"` when no (or an empty) `event:` field was given.
    pub fn event_type(&self) -> &[u8] {
        self.event.as_deref().unwrap_or(b"message")
    }
}

/// What is known of the current, not yet terminated, line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartialLine {
    /// At the start of a line: nothing held.
    None,
    /// The start of a field line is held in `line_buf`.
    Buffered,
    /// The rest of the line is ignored (a comment, or a line of a skipped event); it is known
    /// not to be blank.
    Discard,
}

/// The data buffer of the pending event.
#[derive(Debug)]
enum DataBuffer {
    Empty,
    /// Exactly one `data:` line, without its LF. `borrowed` is true while it is a slice of the
    /// chunk being fed, which must not outlive `feed`.
    Single {
        value: Bytes,
        borrowed: bool,
    },
    /// Several lines, each followed by LF, in `PendingEvent::joined`.
    Joined,
}

/// The fields of the event being built.
#[derive(Debug)]
struct PendingEvent {
    data: DataBuffer,
    joined: BytesMut,
    event_type: Option<Bytes>,
    event_type_borrowed: bool,
    /// Holds event types copied out of a chunk by `detach`.
    type_buf: BytesMut,
    retry: Option<u64>,
    /// Bytes of the event's field lines so far, line terminators excluded.
    size: usize,
}

impl PendingEvent {
    fn new() -> Self {
        PendingEvent {
            data: DataBuffer::Empty,
            joined: BytesMut::new(),
            event_type: None,
            event_type_borrowed: false,
            type_buf: BytesMut::new(),
            retry: None,
            size: 0,
        }
    }

    /// Appends one `data:` value. `value` lies inside `src`, so the first line costs no copy.
    #[inline]
    fn push_data(&mut self, value: &[u8], src: &Bytes, borrowed: bool) {
        match &self.data {
            DataBuffer::Empty => {
                let value = src.slice_ref(value);
                self.data = DataBuffer::Single { value, borrowed };
            }
            DataBuffer::Single { value: first, .. } => {
                self.joined.reserve(first.len() + value.len() + 2);
                push_line(&mut self.joined, first);
                push_line(&mut self.joined, value);
                self.data = DataBuffer::Joined;
            }
            DataBuffer::Joined => push_line(&mut self.joined, value),
        }
    }

    #[inline]
    fn set_event_type(&mut self, value: &[u8], src: &Bytes, borrowed: bool) {
        // An empty type buffer means "message", the same as no field at all.
        self.event_type = (!value.is_empty()).then(|| src.slice_ref(value));
        self.event_type_borrowed = borrowed && self.event_type.is_some();
    }

    /// Copies what still points into the caller's chunk, so that chunk can be freed. The
    /// copies go to buffers the parser reuses once the previous event is dropped, rather than
    /// to fresh allocations.
    fn detach(&mut self) {
        if let DataBuffer::Single {
            value,
            borrowed: true,
        } = &self.data
        {
            push_line(&mut self.joined, value);
            self.data = DataBuffer::Joined;
        }
        if self.event_type_borrowed {
            if let Some(event_type) = &self.event_type {
                self.type_buf.extend_from_slice(event_type);
                let owned = self.type_buf.split().freeze();
                release_if_large(&mut self.type_buf, owned.len());
                self.event_type = Some(owned);
            }
            self.event_type_borrowed = false;
        }
    }

    /// Ends the event: returns its data, type and retry when there is data, and resets.
    #[inline]
    fn take(&mut self) -> Option<(Bytes, Option<Bytes>, Option<u64>)> {
        let data = match std::mem::replace(&mut self.data, DataBuffer::Empty) {
            DataBuffer::Empty => None,
            DataBuffer::Single { value, .. } => Some(value),
            DataBuffer::Joined => Some(self.take_joined()),
        };
        let event_type = self.event_type.take();
        let retry = self.retry.take();
        self.reset_fields();
        data.map(|data| (data, event_type, retry))
    }

    fn reset_fields(&mut self) {
        self.event_type = None;
        self.event_type_borrowed = false;
        self.retry = None;
        self.size = 0;
    }

    fn take_joined(&mut self) -> Bytes {
        let without_final_lf = self.joined.len() - 1;
        let data = self.joined.split_to(without_final_lf).freeze();
        self.joined.clear();
        release_if_large(&mut self.joined, data.len());
        data
    }

    /// Drops the event without dispatching it.
    fn clear(&mut self) {
        self.data = DataBuffer::Empty;
        self.reset_fields();
        clear_buffer(&mut self.joined);
    }
}

/// An incremental, exact WHATWG event-stream parser. See the module documentation.
#[derive(Debug)]
pub struct SseParser {
    max_event_size: usize,
    /// BOM bytes matched at the start of the stream; `None` once past the start.
    bom_matched: Option<usize>,
    /// The previous chunk ended with CR: a leading LF completes that line end.
    after_cr: bool,
    partial: PartialLine,
    line_buf: BytesMut,
    /// Inside an oversized event: every line up to the next blank line is ignored.
    skipping: bool,
    /// A non-blank line was seen since the last blank line.
    block_open: bool,
    pending: PendingEvent,
    last_event_id: Option<Bytes>,
    reconnection_time: Option<u64>,
    oversized_events: u64,
    comments: u64,
}

impl SseParser {
    /// `max_event_size`: the most bytes one event's field lines (names included, line
    /// terminators and comments excluded) may take; a larger event is skipped (not dispatched)
    /// and counted, and memory stays bounded by it.
    pub fn new(max_event_size: usize) -> Self {
        SseParser {
            max_event_size,
            bom_matched: Some(0),
            after_cr: false,
            partial: PartialLine::None,
            line_buf: BytesMut::new(),
            skipping: false,
            block_open: false,
            pending: PendingEvent::new(),
            last_event_id: None,
            reconnection_time: None,
            oversized_events: 0,
            comments: 0,
        }
    }

    /// Feeds one chunk, split anywhere, and calls `on_event` for every event it completes.
    /// An event's `data` (one `data:` line) and `event` are slices of `chunk`, not copies, when
    /// the whole event lies in it.
    pub fn feed(&mut self, chunk: &Bytes, mut on_event: impl FnMut(SseEvent)) {
        self.feed_at(chunk, |event, _, _| on_event(event));
    }

    /// Like [`Self::feed`], and `on_event` also gets where the event's block begins in `chunk`
    /// (just past the blank line that ended the block before it, skipped oversized events and
    /// comment-only blocks included; 0 when it began in an earlier chunk) and where it ends: the
    /// offset just past its blank line (a CRLF whose LF is in the next chunk ends at the CR).
    /// Returns where the last block that ended in `chunk` ended. The relay uses these to cut and
    /// hold a chunk at event boundaries.
    pub fn feed_at(
        &mut self,
        chunk: &Bytes,
        mut on_event: impl FnMut(SseEvent, usize, usize),
    ) -> Option<usize> {
        let mut block_start = 0;
        let mut last_block_end = None;
        let mut pos = self.skip_bom(chunk);
        if self.after_cr && pos < chunk.len() {
            self.after_cr = false;
            pos += usize::from(chunk[pos] == b'\n');
        }
        while let Some(end) = find_line_end(chunk, pos) {
            let after =
                end + 1 + usize::from(chunk[end] == b'\r' && chunk.get(end + 1) == Some(&b'\n'));
            let was_open = self.block_open;
            self.end_line(chunk, pos, end, |event| on_event(event, block_start, after));
            if was_open && !self.block_open {
                block_start = after;
                last_block_end = Some(after);
            }
            pos = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(pos) {
                    Some(b'\n') => pos += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.hold_partial(&chunk[pos..]);
        self.pending.detach();
        last_block_end
    }

    /// Inside an event over the size limit, which is being skipped to its end.
    pub fn in_oversized_event(&self) -> bool {
        self.skipping
    }

    /// Events skipped because they exceeded `max_event_size`.
    pub fn oversized_events(&self) -> u64 {
        self.oversized_events
    }

    /// Comment lines seen, outside skipped events.
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// The reconnection time set by the last valid `retry:` field, dispatched or not.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.reconnection_time
    }

    /// True when the bytes fed so far end exactly between two events (nothing pending): bytes
    /// inserted here cannot change the meaning of the upstream's events.
    pub fn at_event_boundary(&self) -> bool {
        let mid_bom = matches!(self.bom_matched, Some(n) if n > 0);
        !self.block_open && self.partial == PartialLine::None && !mid_bom
    }

    /// Consumes the BOM (or the part of it this chunk holds) at the start of the stream and
    /// returns where the stream's lines begin in `chunk`.
    fn skip_bom(&mut self, chunk: &[u8]) -> usize {
        let Some(mut matched) = self.bom_matched else {
            return 0;
        };
        let mut pos = 0;
        while pos < chunk.len() {
            if chunk[pos] != BOM[matched] {
                // Not a BOM after all: the bytes held back start the first line.
                self.bom_matched = None;
                self.hold_partial(&BOM[..matched]);
                return pos;
            }
            pos += 1;
            matched += 1;
            if matched == BOM.len() {
                self.bom_matched = None;
                return pos;
            }
        }
        self.bom_matched = Some(matched);
        pos
    }

    /// A line end at `chunk[end]`; the line's bytes in this chunk are `chunk[start..end]`.
    fn end_line(
        &mut self,
        chunk: &Bytes,
        start: usize,
        end: usize,
        on_event: impl FnMut(SseEvent),
    ) {
        match std::mem::replace(&mut self.partial, PartialLine::None) {
            PartialLine::None => self.on_line(&chunk[start..end], chunk, true, on_event),
            PartialLine::Discard => self.block_open = true,
            PartialLine::Buffered => {
                if self.buffer_line_part(&chunk[start..end]) {
                    self.on_spanning_line(on_event);
                }
            }
        }
    }

    /// A line that began in an earlier chunk, now complete in `line_buf`.
    fn on_spanning_line(&mut self, on_event: impl FnMut(SseEvent)) {
        // Freezing hands the line's buffer to the event, so a long data line is not copied
        // a second time; the buffer is reclaimed once the event is dropped.
        let line = self.line_buf.split().freeze();
        self.on_line(&line, &line, false, on_event);
        release_if_large(&mut self.line_buf, line.len());
    }

    /// The unterminated end of a chunk: held when it starts a field line, else only noted.
    fn hold_partial(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        self.partial = match self.partial {
            PartialLine::Discard => PartialLine::Discard,
            PartialLine::None if self.skipping => PartialLine::Discard,
            PartialLine::None if rest[0] == b':' => {
                self.comments += 1;
                PartialLine::Discard
            }
            PartialLine::None | PartialLine::Buffered => {
                if self.buffer_line_part(rest) {
                    PartialLine::Buffered
                } else {
                    PartialLine::Discard
                }
            }
        };
    }

    /// Appends part of a field line to `line_buf`, unless the event would grow too large, in
    /// which case the event is skipped and false returned.
    fn buffer_line_part(&mut self, part: &[u8]) -> bool {
        if self.pending.size + self.line_buf.len() + part.len() > self.max_event_size {
            self.skip_event();
            return false;
        }
        self.line_buf.extend_from_slice(part);
        true
    }

    /// One complete line, without its terminator. `line` lies inside `src`; `borrowed` says
    /// whether `src` is the caller's chunk.
    #[inline]
    fn on_line(
        &mut self,
        line: &[u8],
        src: &Bytes,
        borrowed: bool,
        on_event: impl FnMut(SseEvent),
    ) {
        if line.is_empty() {
            return self.end_block(on_event);
        }
        self.block_open = true;
        if self.skipping {
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let size = self.pending.size + line.len();
        if size > self.max_event_size {
            return self.skip_event();
        }
        self.pending.size = size;
        self.apply_field(line, src, borrowed);
    }

    #[inline]
    fn apply_field(&mut self, line: &[u8], src: &Bytes, borrowed: bool) {
        let (name, value) = split_field(line);
        match name {
            b"data" => self.pending.push_data(value, src, borrowed),
            b"event" => self.pending.set_event_type(value, src, borrowed),
            b"id" => self.set_last_event_id(value),
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.pending.retry = Some(ms);
                    self.reconnection_time = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn set_last_event_id(&mut self, value: &[u8]) {
        if memchr(0, value).is_some() || self.last_event_id.as_deref() == Some(value) {
            return;
        }
        // Copied, not sliced: the id outlives the chunk, and a slice would pin all of it.
        self.last_event_id = (!value.is_empty()).then(|| Bytes::copy_from_slice(value));
    }

    /// A blank line: dispatch the pending event, if it has data.
    #[inline]
    fn end_block(&mut self, mut on_event: impl FnMut(SseEvent)) {
        self.block_open = false;
        if std::mem::take(&mut self.skipping) {
            return;
        }
        if let Some((data, event, retry)) = self.pending.take() {
            let id = self.last_event_id.clone();
            on_event(SseEvent {
                event,
                data,
                id,
                retry,
            });
        }
    }

    /// The pending event grew past `max_event_size`: drop it and ignore its remaining lines.
    fn skip_event(&mut self) {
        self.oversized_events += 1;
        self.skipping = true;
        self.block_open = true;
        self.pending.clear();
        clear_buffer(&mut self.line_buf);
    }
}

/// Where the line starting at `chunk[pos]` ends, if it ends in `chunk`.
#[inline]
fn find_line_end(chunk: &[u8], pos: usize) -> Option<usize> {
    // Tested by hand first: after an event's last line comes a blank line, and a SIMD search
    // costs more to set up than that one byte.
    match chunk.get(pos)? {
        b'\n' | b'\r' => Some(pos),
        _ => memchr2(b'\n', b'\r', &chunk[pos..]).map(|offset| pos + offset),
    }
}

/// Splits `name:value`, removing one leading space from the value; no colon means empty value.
#[inline]
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match find_colon(line) {
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[]),
    }
}

/// Field names are short, so the first bytes are scanned by hand before a SIMD search.
#[inline]
fn find_colon(line: &[u8]) -> Option<usize> {
    const SHORT: usize = 8;
    let head = &line[..line.len().min(SHORT)];
    match head.iter().position(|&b| b == b':') {
        Some(colon) => Some(colon),
        None if line.len() > SHORT => memchr(b':', &line[SHORT..]).map(|colon| SHORT + colon),
        None => None,
    }
}

/// A `retry:` value: ASCII digits only (anything else, or a value past u64, is ignored).
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |ms, &digit| {
        ms.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

fn push_line(buf: &mut BytesMut, line: &[u8]) {
    buf.extend_from_slice(line);
    buf.extend_from_slice(b"\n");
}

fn clear_buffer(buf: &mut BytesMut) {
    buf.clear();
    let capacity = buf.capacity();
    release_if_large(buf, capacity);
}

fn release_if_large(buf: &mut BytesMut, used: usize) {
    if used > RETAINED_CAPACITY {
        *buf = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn feed_at_reports_where_each_event_ends() {
        let mut parser = SseParser::new(1 << 20);
        let chunk = Bytes::from_static(b"data: a\n\ndata: b\r\n\r\n: c\n\ndata: d\r\r");
        let mut ends = Vec::new();
        parser.feed_at(&chunk, |event, _, end| ends.push((event.data, end)));
        assert_eq!(
            ends,
            vec![
                (Bytes::from_static(b"a"), 9),
                (Bytes::from_static(b"b"), 20),
                (Bytes::from_static(b"d"), 34),
            ]
        );
        assert_eq!(&chunk[20..25], b": c\n\n");
    }

    use super::*;

    const MAX: usize = 1 << 20;

    fn feed_all(parser: &mut SseParser, chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(&Bytes::copy_from_slice(chunk), |e| events.push(e));
        }
        events
    }

    fn parse_chunks(max: usize, chunks: &[&[u8]]) -> (Vec<SseEvent>, SseParser) {
        let mut parser = SseParser::new(max);
        let events = feed_all(&mut parser, chunks);
        (events, parser)
    }

    fn parse(stream: &[u8]) -> Vec<SseEvent> {
        parse_chunks(MAX, &[stream]).0
    }

    fn datas(events: &[SseEvent]) -> Vec<&[u8]> {
        events.iter().map(|e| &e.data[..]).collect()
    }

    fn one_byte_chunks(stream: &[u8]) -> Vec<&[u8]> {
        stream.chunks(1).collect()
    }

    #[test]
    fn every_line_ending_ends_lines_and_events() {
        for stream in [
            &b"data: a\n\ndata: b\n\n"[..],
            b"data: a\r\rdata: b\r\r",
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            b"data: a\r\n\rdata: b\n\r\n",
        ] {
            assert_eq!(datas(&parse(stream)), [&b"a"[..], b"b"], "{stream:?}");
        }
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        // Were the LF a line end of its own, it would be a blank line dispatching "a" alone.
        let (events, _) = parse_chunks(MAX, &[b"data: a\r", b"\n", b"data: b\r\n\r\n"]);
        assert_eq!(datas(&events), [&b"a\nb"[..]]);
        let (events, _) = parse_chunks(MAX, &[b"data: a\r", b"", b"\ndata: b\r", b"\r"]);
        assert_eq!(datas(&events), [&b"a\nb"[..]]);
    }

    #[test]
    fn cr_at_chunk_end_followed_by_another_byte() {
        let (events, _) = parse_chunks(MAX, &[b"data: a\r", b"\r"]);
        assert_eq!(datas(&events), [&b"a"[..]]);
        let (events, _) = parse_chunks(MAX, &[b"data: a\r", b"data: b\r", b"\r"]);
        assert_eq!(datas(&events), [&b"a\nb"[..]]);
    }

    #[test]
    fn bom_at_start_is_skipped_whole_or_split() {
        let stream = b"\xEF\xBB\xBFdata: a\n\n";
        assert_eq!(datas(&parse(stream)), [&b"a"[..]]);
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let (events, _) = parse_chunks(MAX, &[a, b]);
            assert_eq!(datas(&events), [&b"a"[..]], "split {split}");
        }
        let (events, _) = parse_chunks(MAX, &one_byte_chunks(stream));
        assert_eq!(datas(&events), [&b"a"[..]]);
    }

    #[test]
    fn bom_elsewhere_is_content() {
        // A BOM later on prefixes the field name, making the field unknown.
        assert_eq!(
            datas(&parse(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n")),
            [&b"a"[..]]
        );
        let (events, _) = parse_chunks(MAX, &[b"data: a\n\n", b"\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(datas(&events), [&b"a"[..]]);
        // Only one BOM is skipped.
        assert!(parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n").is_empty());
    }

    #[test]
    fn partial_bom_bytes_are_replayed_as_content() {
        // "\xEF:" is a field line, not a comment: the held-back EF starts the line.
        let (_, parser) = parse_chunks(MAX, &[b"\xEF", b":x\n"]);
        assert_eq!(parser.comments(), 0);
        let (_, parser) = parse_chunks(MAX, &[b"\xEF\xBB", b"\xBF", b":x\n"]);
        assert_eq!(parser.comments(), 1);
        let (_, parser) = parse_chunks(MAX, &[b"\xEF\xBB", b"x"]);
        assert!(!parser.at_event_boundary());
        assert_eq!(parser.line_buf, &b"\xEF\xBBx"[..]);
        assert!(parse(b"\xEF\xBBdata: a\n\n").is_empty());
    }

    #[test]
    fn data_lines_join_with_lf_and_lose_the_final_one() {
        let events = parse(b"data: a\ndata:\ndata: b\n\ndata:\n\ndata\ndata\n\n");
        assert_eq!(datas(&events), [&b"a\n\nb"[..], b"", b"\n"]);
    }

    #[test]
    fn only_one_leading_space_is_removed() {
        let events = parse(b"data:  two\n\ndata:x\n\ndata:a: b\n\n");
        assert_eq!(datas(&events), [&b" two"[..], b"x", b"a: b"]);
    }

    #[test]
    fn comments_are_counted_and_ignored() {
        let (events, parser) = parse_chunks(MAX, &[b": hi\n:\ndata: a\n", b": x\n\n", b":"]);
        assert_eq!(datas(&events), [&b"a"[..]]);
        assert_eq!(parser.comments(), 4);
        // A comment block alone dispatches nothing.
        assert!(parse(b": keep-alive\n\n").is_empty());
    }

    #[test]
    fn a_line_without_colon_is_a_field_with_empty_value() {
        let events = parse(b"event: x\nevent\ndata: a\n\nid: 5\nid\ndata: b\n\n");
        assert_eq!(events[0].event, None);
        assert_eq!(events[1].id, None);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let events = parse(b"foo: bar\nData: no\ndata : no\ndata: a\n\n");
        assert_eq!(datas(&events), [&b"a"[..]]);
    }

    #[test]
    fn event_type_defaults_to_message_and_resets_after_dispatch() {
        let events = parse(b"event: delta\ndata: a\n\ndata: b\n\nevent:\ndata: c\n\n");
        assert_eq!(events[0].event.as_deref(), Some(&b"delta"[..]));
        assert_eq!(events[0].event_type(), b"delta");
        assert_eq!(events[1].event, None);
        assert_eq!(events[1].event_type(), b"message");
        assert_eq!(events[2].event_type(), b"message");
    }

    #[test]
    fn blank_line_with_empty_data_dispatches_nothing_and_resets() {
        let events = parse(b"event: ping\nretry: 7\n\ndata: a\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, None);
        assert_eq!(events[0].retry, None);
        assert!(parse(b"\n\n\r\n\r").is_empty());
    }

    #[test]
    fn id_persists_and_ignores_values_with_nul() {
        let events = parse(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\0x\ndata: c\n\nid:\ndata: d\n\n");
        let ids: Vec<_> = events.iter().map(|e| e.id.as_deref()).collect();
        assert_eq!(ids, [Some(&b"7"[..]), Some(b"7"), Some(b"7"), None]);
        // An id in a block with no data still sets the last event ID.
        let events = parse(b"id: 9\n\ndata: e\n\n");
        assert_eq!(events[0].id.as_deref(), Some(&b"9"[..]));
    }

    #[test]
    fn retry_takes_ascii_digits_only() {
        let (events, parser) = parse_chunks(MAX, &[b"retry: 1500\ndata: a\n\n"]);
        assert_eq!(events[0].retry, Some(1500));
        assert_eq!(parser.reconnection_time(), Some(1500));
        for bad in [
            &b"retry: 15x\n"[..],
            b"retry: -1\n",
            b"retry: 1.5\n",
            b"retry:\n",
            b"retry:  15\n",
            b"retry: 99999999999999999999999\n",
        ] {
            let stream = [bad, b"data: a\n\n"].concat();
            let (events, parser) = parse_chunks(MAX, &[&stream]);
            assert_eq!(events[0].retry, None, "{bad:?}");
            assert_eq!(parser.reconnection_time(), None, "{bad:?}");
        }
        // Retry is per event; the reconnection time persists.
        let (events, parser) = parse_chunks(MAX, &[b"retry: 3\n\ndata: a\n\n"]);
        assert_eq!(events[0].retry, None);
        assert_eq!(parser.reconnection_time(), Some(3));
    }

    #[test]
    fn multi_byte_characters_split_anywhere() {
        let stream = "event: é\ndata: é😀\n\n".as_bytes();
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let (events, _) = parse_chunks(MAX, &[a, b]);
            assert_eq!(events[0].data, "é😀".as_bytes(), "split {split}");
            assert_eq!(events[0].event_type(), "é".as_bytes(), "split {split}");
        }
    }

    #[test]
    fn pending_event_is_discarded_at_end_of_stream() {
        let (events, parser) = parse_chunks(MAX, &[b"data: a\n\ndata: b\n"]);
        assert_eq!(datas(&events), [&b"a"[..]]);
        assert!(!parser.at_event_boundary());
    }

    #[test]
    fn event_boundary() {
        let cases: [(&[u8], bool); 9] = [
            (b"", true),
            (b"data: a\n\n", true),
            (b"data: a\r\n\r", true),
            (b"data: a", false),
            (b"data: a\n", false),
            (b": c\n", false),
            (b": c", false),
            (b"\xEF\xBB", false),
            (b"\xEF\xBB\xBF", true),
        ];
        for (stream, boundary) in cases {
            let (_, parser) = parse_chunks(MAX, &[stream]);
            assert_eq!(parser.at_event_boundary(), boundary, "{stream:?}");
        }
    }

    #[test]
    fn oversized_event_is_skipped_then_next_event_parsed() {
        let stream =
            b"data: 0123456789012345678901234567890123456789\ndata: more\n\nid: 1\ndata: ok\n\n";
        let (events, parser) = parse_chunks(32, &[stream]);
        assert_eq!(datas(&events), [&b"ok"[..]]);
        assert_eq!(parser.oversized_events(), 1);
        // Found mid-line when the line arrives a byte at a time: same outcome.
        let (events, parser) = parse_chunks(32, &one_byte_chunks(stream));
        assert_eq!(datas(&events), [&b"ok"[..]]);
        assert_eq!(parser.oversized_events(), 1);
    }

    #[test]
    fn event_size_counts_all_field_lines() {
        // 4 lines of 10 bytes: 40 fits in 40, not in 39. Comments do not count.
        let stream = b"event: abc\nid: 123456\ndata: abcd\ndata: efgh\n: comment\n\n";
        let (events, parser) = parse_chunks(40, &[stream]);
        assert_eq!(datas(&events), [&b"abcd\nefgh"[..]]);
        assert_eq!(parser.oversized_events(), 0);
        assert_eq!(parser.comments(), 1);
        let (events, parser) = parse_chunks(39, &[stream]);
        assert!(events.is_empty());
        assert_eq!(parser.oversized_events(), 1);
        assert_eq!(
            parser.comments(),
            0,
            "comments of a skipped event are not seen"
        );
    }

    #[test]
    fn oversized_line_is_not_buffered() {
        let mut parser = SseParser::new(64);
        let big = [b'x'; 50];
        let events = feed_all(&mut parser, &[b"data: ", &big, &big, &big, b"\n", b"\n"]);
        assert!(parser.line_buf.len() <= 64);
        assert!(events.is_empty());
        assert_eq!(parser.oversized_events(), 1);
        let events = feed_all(&mut parser, &[b"data: after\n\n"]);
        assert_eq!(datas(&events), [&b"after"[..]]);
    }

    #[test]
    fn buffers_of_a_big_event_are_released() {
        let big = vec![b'x'; 4 * RETAINED_CAPACITY];
        let mut parser = SseParser::new(MAX);
        let chunks: [&[u8]; 5] = [b"event: big\ndata: ", &big, b"\ndata: ", &big, b"\n\n"];
        let events = feed_all(&mut parser, &chunks);
        assert_eq!(events[0].data.len(), 2 * big.len() + 1);
        drop(events);
        assert!(parser.line_buf.capacity() <= RETAINED_CAPACITY);
        assert!(parser.pending.joined.capacity() <= RETAINED_CAPACITY);
    }

    #[test]
    fn single_line_data_is_a_slice_of_the_chunk() {
        let chunk = Bytes::from_static(b"event: delta\ndata: {\"x\":1}\n\n");
        let mut parser = SseParser::new(MAX);
        let mut events = Vec::new();
        parser.feed(&chunk, |e| events.push(e));
        let range = chunk.as_ptr_range();
        assert!(range.contains(&events[0].data.as_ptr()));
        let event = events[0].event.as_ref().unwrap();
        assert!(range.contains(&event.as_ptr()));
        assert_eq!(events[0].data, &b"{\"x\":1}"[..]);
    }

    #[test]
    fn nothing_points_into_a_chunk_after_feed() {
        let chunk = Bytes::from_static(b"event: delta\ndata: abc\n");
        let mut parser = SseParser::new(MAX);
        parser.feed(&chunk, |_| {});
        let range = chunk.as_ptr_range();
        assert!(matches!(parser.pending.data, DataBuffer::Joined));
        assert!(!range.contains(&parser.pending.joined.as_ptr()));
        let event_type = parser.pending.event_type.as_ref().unwrap();
        assert!(!range.contains(&event_type.as_ptr()));
        let events = feed_all(&mut parser, &[b"\n"]);
        assert_eq!(events[0].data, &b"abc"[..]);
        assert_eq!(events[0].event_type(), b"delta");
    }
}
