//! Properties of the incremental SSE parser: however a stream is cut into chunks, it yields the
//! same events as when fed whole, and those are the events a plain, non-incremental reading of
//! the WHATWG rules gives.

use bytes::Bytes;
use proptest::prelude::*;
use sluice::sse::{SseEvent, SseParser};

const NO_LIMIT: usize = 1 << 20;

/// What a parser reports after a whole stream: its events, oversized and comment counts.
type Outcome = (Vec<SseEvent>, u64, u64);

fn feed_chunks<'a>(max: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(&Bytes::copy_from_slice(chunk), |e| events.push(e));
    }
    (events, parser.oversized_events(), parser.comments())
}

fn whole(max: usize, stream: &[u8]) -> Outcome {
    feed_chunks(max, [stream])
}

/// The WHATWG rules read line by line over the whole stream, with none of the parser's
/// incremental machinery: the model the parser must agree with.
fn reference(stream: &[u8]) -> Vec<SseEvent> {
    let stream = stream.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(stream);
    let mut events = Vec::new();
    let (mut data, mut event, mut id, mut retry) = (Vec::new(), Vec::new(), Vec::new(), None);
    for line in complete_lines(stream) {
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push(SseEvent {
                    event: (!event.is_empty()).then(|| Bytes::from(event.clone())),
                    data: Bytes::from(std::mem::take(&mut data)),
                    id: (!id.is_empty()).then(|| Bytes::from(id.clone())),
                    retry,
                });
            }
            data.clear();
            event.clear();
            retry = None;
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => (
                &line[..c],
                line[c + 1..].strip_prefix(b" ").unwrap_or(&line[c + 1..]),
            ),
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            b"event" => event = value.to_vec(),
            b"id" if !value.contains(&0) => id = value.to_vec(),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                retry = std::str::from_utf8(value).unwrap().parse().ok().or(retry);
            }
            _ => {}
        }
    }
    events
}

/// The stream's lines that have a terminator (CRLF, LF or CR); a last unterminated one is not
/// a line yet.
fn complete_lines(stream: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < stream.len() {
        match stream[i] {
            b'\n' | b'\r' => {
                lines.push(&stream[start..i]);
                if stream[i] == b'\r' && stream.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    lines
}

fn value() -> impl Strategy<Value = String> {
    "[a-z é😀:\\x00\u{FEFF}]{0,8}"
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => value().prop_map(|v| format!("data: {v}")),
        1 => value().prop_map(|v| format!("data:{v}")),
        1 => Just("data".to_string()),
        1 => value().prop_map(|v| format!("event: {v}")),
        1 => value().prop_map(|v| format!("id: {v}")),
        1 => prop_oneof![Just("event"), Just("id"), Just("retry")].prop_map(String::from),
        1 => "[0-9]{0,4}".prop_map(|v| format!("retry: {v}")),
        1 => "[0-9a-z -]{0,4}".prop_map(|v| format!("retry:{v}")),
        1 => value().prop_map(|v| format!(":{v}")),
        1 => value().prop_map(|v| format!("x{v}: y")),
        4 => Just(String::new()),
    ]
}

fn terminator() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        3 => Just("\n"),
        2 => Just("\r"),
        2 => Just("\r\n"),
        // Two lines run together: any byte sequence is a stream to be read the same way.
        1 => Just(""),
    ]
}

/// How a stream may start: a BOM (skipped), a BOM cut short or doubled (content).
fn prefix() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        4 => Just(&b""[..]),
        2 => Just(&b"\xEF\xBB\xBF"[..]),
        1 => Just(&b"\xEF"[..]),
        1 => Just(&b"\xEF\xBB"[..]),
        1 => Just(&b"\xEF\xBB\xBF\xEF\xBB\xBF"[..]),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    (prefix(), lines()).prop_map(|(prefix, lines)| [prefix, &lines].concat())
}

fn lines() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((line(), terminator()), 0..24).prop_map(|lines| {
        let mut stream = Vec::new();
        for (line, end) in lines {
            stream.extend_from_slice(line.as_bytes());
            stream.extend_from_slice(end.as_bytes());
        }
        stream
    })
}

/// Cut points, as fractions of the stream length, for arbitrary chunkings.
fn cuts() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0..=1.0f64, 0..12)
}

fn chunked(stream: &[u8], cuts: &[f64]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|f| (f * stream.len() as f64) as usize)
        .collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain([stream.len()]) {
        chunks.push(stream[start..point].to_vec());
        start = point;
    }
    chunks
}

proptest! {
    #[test]
    fn whole_stream_matches_the_reference_reading(stream in stream()) {
        prop_assert_eq!(whole(NO_LIMIT, &stream).0, reference(&stream));
    }

    #[test]
    fn one_byte_chunks_change_nothing(stream in stream(), max in prop_oneof![Just(NO_LIMIT), 0..48usize]) {
        prop_assert_eq!(feed_chunks(max, stream.chunks(1)), whole(max, &stream));
    }

    #[test]
    fn every_split_point_changes_nothing(stream in stream(), max in prop_oneof![Just(NO_LIMIT), 0..48usize]) {
        let expected = whole(max, &stream);
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            prop_assert_eq!(&feed_chunks(max, [a, b]), &expected, "split at {}", split);
        }
    }

    #[test]
    fn any_chunking_changes_nothing(stream in stream(), cuts in cuts(), max in prop_oneof![Just(NO_LIMIT), 0..48usize]) {
        let chunks = chunked(&stream, &cuts);
        prop_assert_eq!(feed_chunks(max, chunks.iter().map(Vec::as_slice)), whole(max, &stream));
    }

    /// Without a leading BOM (which the model does not know) and with no event skipped, the
    /// parser agrees after every byte with a byte-at-a-time model of where an event ends.
    #[test]
    fn boundary_agrees_with_a_simple_model(stream in lines()) {
        let mut parser = SseParser::new(NO_LIMIT);
        let mut boundary = BoundaryModel::default();
        for (i, byte) in stream.chunks(1).enumerate() {
            parser.feed(&Bytes::copy_from_slice(byte), |_| {});
            boundary.observe(byte[0]);
            prop_assert_eq!(parser.at_event_boundary(), boundary.at_boundary(), "after byte {}", i);
        }
    }
}

#[test]
fn oversized_events_are_skipped_under_any_chunking() {
    let stream =
        b"data: short\n\ndata: this line is far too long\ndata: x\n\nevent: e\ndata: ok\n\n";
    let expected = whole(20, stream);
    assert_eq!(expected.1, 1);
    let datas: Vec<_> = expected.0.iter().map(|e| e.data.clone()).collect();
    assert_eq!(datas, [&b"short"[..], b"ok"]);
    assert_eq!(feed_chunks(20, stream.chunks(1)), expected);
}

/// Where events end, one byte at a time: a blank line (after LF, CR or CRLF line ends) closes
/// the open event; a CR followed by LF is one line end.
#[derive(Default)]
struct BoundaryModel {
    line_has_content: bool,
    event_open: bool,
    last_was_cr: bool,
}

impl BoundaryModel {
    fn observe(&mut self, byte: u8) {
        let crlf_tail = self.last_was_cr && byte == b'\n';
        self.last_was_cr = byte == b'\r';
        if crlf_tail {
            return;
        }
        if byte == b'\n' || byte == b'\r' {
            self.event_open = self.line_has_content;
            self.line_has_content = false;
        } else {
            self.line_has_content = true;
        }
    }

    fn at_boundary(&self) -> bool {
        !self.line_has_content && !self.event_open
    }
}
