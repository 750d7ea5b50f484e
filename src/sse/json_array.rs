//! A streamed JSON array, read element by element as it comes: Gemini's
//! `streamGenerateContent` without `alt=sse` answers `application/json` with one
//! `GenerateContentResponse` per element of a top-level array, sent as each is made
//! (`[{…}\n,\r\n{…}\n]`). The splitter only finds where each element begins and ends (strings and
//! their escapes, nesting); what an element says is the usage extractor's to read.
//!
//! A body that is not an array (its first byte other than whitespace is not `[`) is given up at
//! once, and so is one whose structure breaks (a stray `]` or `}`): the splitter then reads
//! nothing more, and the bytes pass on untouched as always.

/// Where the bytes read so far stand in the array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayPosition {
    /// Nothing but whitespace yet.
    BeforeArray,
    /// After the `[`, before the first element.
    BeforeFirst,
    /// Inside an element.
    InElement,
    /// After an element (and maybe its `,`): where another element or the `]` may follow.
    AfterElement,
    /// The closing `]` was read.
    Ended,
    /// Not an array, or broken: nothing is read any more.
    GivenUp,
}

#[derive(Debug)]
pub struct JsonArraySplitter {
    position: ArrayPosition,
    /// Nesting inside the current element (0 between elements).
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// A `,` came after the last element: the next one has one before it already.
    comma: bool,
    /// The current element's bytes so far (unless it is oversized).
    element: Vec<u8>,
    max_element: usize,
    /// The current element went past `max_element`: it is skipped, not read.
    oversized: bool,
    oversized_elements: u64,
}

impl JsonArraySplitter {
    /// Elements past `max_element` bytes are skipped (and counted), so a huge one holds no
    /// memory.
    pub fn new(max_element: usize) -> Self {
        JsonArraySplitter {
            position: ArrayPosition::BeforeArray,
            depth: 0,
            in_string: false,
            escaped: false,
            comma: false,
            element: Vec::new(),
            max_element,
            oversized: false,
            oversized_elements: 0,
        }
    }

    pub fn position(&self) -> ArrayPosition {
        self.position
    }

    /// Whether a `,` already follows the last element (so an element added by Sluice needs none).
    pub fn comma_pending(&self) -> bool {
        self.comma
    }

    pub fn oversized_elements(&self) -> u64 {
        self.oversized_elements
    }

    /// Reads `chunk`, calling `on_element` with each element that ends in it. Returns the offset
    /// of the array's closing `]` when it is in `chunk`.
    pub fn feed(&mut self, chunk: &[u8], mut on_element: impl FnMut(&[u8])) -> Option<usize> {
        let mut closed_at = None;
        let mut element_start = 0;
        let mut i = 0;
        while i < chunk.len() {
            // Most of an element is string text: skipped to its next quote or backslash at once.
            if self.in_string && !self.escaped {
                match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    Some(at) => i += at,
                    None => break,
                }
            }
            let b = chunk[i];
            i += 1;
            match self.position {
                ArrayPosition::Ended | ArrayPosition::GivenUp => break,
                ArrayPosition::InElement => {
                    if self.step_in_element(b) {
                        self.keep(&chunk[element_start..i]);
                        if !self.oversized {
                            on_element(&self.element);
                        }
                        self.element.clear();
                        self.oversized = false;
                        self.position = ArrayPosition::AfterElement;
                        self.comma = false;
                    }
                }
                ArrayPosition::BeforeArray => match b {
                    b'[' => self.position = ArrayPosition::BeforeFirst,
                    // A UTF-8 byte order mark may open a JSON text (RFC 8259 §8.1 lets a reader
                    // ignore it).
                    0xEF | 0xBB | 0xBF => {}
                    _ if b.is_ascii_whitespace() => {}
                    _ => self.give_up(),
                },
                ArrayPosition::BeforeFirst | ArrayPosition::AfterElement => match b {
                    b']' => {
                        self.position = ArrayPosition::Ended;
                        closed_at = Some(i - 1);
                    }
                    b',' if self.position == ArrayPosition::AfterElement && !self.comma => {
                        self.comma = true;
                    }
                    _ if b.is_ascii_whitespace() => {}
                    b',' => self.give_up(),
                    // An element: its first byte is read as part of it.
                    _ if self.position == ArrayPosition::BeforeFirst || self.comma => {
                        self.position = ArrayPosition::InElement;
                        element_start = i - 1;
                        if self.step_in_element(b) {
                            // Never: an element begins with `{`, `[`, `"` or a scalar's byte.
                            self.give_up();
                        }
                    }
                    _ => self.give_up(),
                },
            }
        }
        if self.position == ArrayPosition::InElement {
            self.keep(&chunk[element_start..]);
        }
        closed_at
    }

    /// One byte of an element; true when it ends the element (its last `}` or `]`). An array of
    /// scalars (not objects or arrays) is given up: no provider sends one.
    fn step_in_element(&mut self, b: u8) -> bool {
        if self.in_string {
            match b {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' if self.depth > 0 => {
                self.depth -= 1;
                return self.depth == 0;
            }
            b'}' | b']' => self.give_up(),
            _ if self.depth == 0 => self.give_up(),
            _ => {}
        }
        false
    }

    /// Adds `bytes` to the current element, or marks it oversized.
    fn keep(&mut self, bytes: &[u8]) {
        if self.oversized {
            return;
        }
        if self.element.len() + bytes.len() > self.max_element {
            self.oversized = true;
            self.oversized_elements += 1;
            self.element = Vec::new();
        } else {
            self.element.extend_from_slice(bytes);
        }
    }

    fn give_up(&mut self) {
        self.position = ArrayPosition::GivenUp;
        self.element = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&[u8]]) -> (Vec<String>, JsonArraySplitter, Vec<Option<usize>>) {
        let mut splitter = JsonArraySplitter::new(1024);
        let mut elements = Vec::new();
        let closes = pieces
            .iter()
            .map(|piece| {
                splitter.feed(piece, |e| {
                    elements.push(String::from_utf8(e.to_vec()).unwrap())
                })
            })
            .collect();
        (elements, splitter, closes)
    }

    const GEMINI: &str = "[{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a ] } \\\" [\"}]}}]}\n,\r\n{\"usageMetadata\": {\"totalTokenCount\": 7}}\n]";

    #[test]
    fn elements_come_whole_however_the_body_is_cut() {
        let whole = GEMINI.as_bytes();
        for cut in 0..whole.len() {
            for second in cut..whole.len() {
                let (elements, splitter, closes) =
                    split(&[&whole[..cut], &whole[cut..second], &whole[second..]]);
                assert_eq!(
                    elements,
                    [
                        "{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"a ] } \\\" [\"}]}}]}",
                        "{\"usageMetadata\": {\"totalTokenCount\": 7}}"
                    ],
                    "{cut} {second}"
                );
                assert_eq!(splitter.position(), ArrayPosition::Ended);
                assert_eq!(closes[2], Some(whole.len() - second - 1), "{cut} {second}");
            }
        }
    }

    #[test]
    fn positions_tell_where_an_added_element_may_go() {
        let mut splitter = JsonArraySplitter::new(1024);
        assert_eq!(splitter.position(), ArrayPosition::BeforeArray);
        splitter.feed(b"\xEF\xBB\xBF [", |_| {});
        assert_eq!(splitter.position(), ArrayPosition::BeforeFirst);
        splitter.feed(b"{\"a\":", |_| {});
        assert_eq!(splitter.position(), ArrayPosition::InElement);
        splitter.feed(b"1}", |_| {});
        assert_eq!(splitter.position(), ArrayPosition::AfterElement);
        assert!(!splitter.comma_pending());
        splitter.feed(b"\n,", |_| {});
        assert!(splitter.comma_pending());
        assert_eq!(splitter.feed(b" ] ", |_| {}), Some(1));
        assert_eq!(splitter.position(), ArrayPosition::Ended);
    }

    #[test]
    fn what_is_not_an_array_or_breaks_is_given_up() {
        for body in [
            &b"{\"candidates\": []}"[..],
            b"[{\"a\":1}}",
            b"[{\"a\":1} {\"b\":2}]",
            b"[,{\"a\":1}]",
            b"[{\"a\":1},,{\"b\":2}]",
            b"[1, 2]",
        ] {
            let (_, splitter, closes) = split(&[body]);
            assert_eq!(
                splitter.position(),
                ArrayPosition::GivenUp,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(closes, [None]);
        }
    }

    #[test]
    fn an_oversized_element_is_skipped_and_counted() {
        let mut splitter = JsonArraySplitter::new(16);
        let mut elements = Vec::new();
        let body = format!("[{{\"pad\":\"{}\"}},{{\"a\":1}}]", "x".repeat(100));
        for piece in body.as_bytes().chunks(7) {
            splitter.feed(piece, |e| elements.push(e.to_vec()));
        }
        assert_eq!(elements, [b"{\"a\":1}".to_vec()]);
        assert_eq!(splitter.oversized_elements(), 1);
        assert_eq!(splitter.position(), ArrayPosition::Ended);
    }
}
