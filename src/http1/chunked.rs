//! Incremental decoding of the chunked transfer coding (RFC 9112 §7.1).
//!
//! Line endings in the chunk framing must be CRLF: a bare LF (or a bare CR) is rejected, not
//! tolerated. Servers and proxies disagree on bare LF here, and a body whose end two parsers
//! place differently is how a pooled upstream connection gets desynchronised (request
//! smuggling / response splitting); a 502 is the safe answer to such an upstream.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

use super::Http1Error;

/// Longest chunk size line accepted, CRLF and extensions included. Extensions are ignored, so
/// this only needs to fit real ones, and it caps what an upstream can make the caller buffer.
pub(super) const MAX_SIZE_LINE: usize = 4 * 1024;
/// Largest trailer section accepted (its field lines, CRLFs included), for the same reason.
pub(super) const MAX_TRAILER: usize = 64 * 1024;
/// Most hex digits in a chunk size: 16 fill a u64, so more can only overflow or pad.
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug)]
pub(super) struct ChunkedDecoder {
    state: State,
    /// Bytes at the front of the input already searched for the LF ending the current line, so
    /// a line arriving a byte at a time is not searched again from its start on every call.
    scanned: usize,
    /// Bytes of trailer field lines seen so far.
    trailer: usize,
}

#[derive(Debug, Clone)]
enum State {
    /// Expecting a chunk size line.
    Size,
    /// Inside a chunk's data, with this many bytes still to come (never 0).
    Data(u64),
    /// Expecting the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: trailer field lines, then the empty line ending the body.
    Trailer,
    Done,
    /// The error is kept so every later call reports it too.
    Failed(Http1Error),
}

impl ChunkedDecoder {
    pub(super) fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            scanned: 0,
            trailer: 0,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The error this decoder failed with, if any.
    pub(super) fn failure(&self) -> Option<&Http1Error> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Decodes what `input` holds, leaving an incomplete line and anything after the body there.
    ///
    /// The data pieces are gathered in place: the first one stays where it is and later ones are
    /// moved back over the framing between them, so the result is one slice of `input` split off
    /// without allocating — zero-copy when the read held a single piece.
    ///
    /// When malformed framing follows some data in the same input, that data is returned first
    /// (it was valid) and the error on the next call, so a relay forwards everything it can.
    pub(super) fn decode(&mut self, input: &mut BytesMut) -> Result<Bytes, Http1Error> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let mut cursor = Cursor::default();
        let outcome = self.run(input, &mut cursor);
        let data = cursor.finish(input);
        match outcome {
            Ok(()) => Ok(data),
            Err(e) => {
                self.state = State::Failed(e.clone());
                if data.is_empty() {
                    Err(e)
                } else {
                    Ok(data)
                }
            }
        }
    }

    fn run(&mut self, input: &mut BytesMut, cur: &mut Cursor) -> Result<(), Http1Error> {
        loop {
            match self.state {
                State::Size => {
                    let Some(len) = self.take_line(&input[cur.pos..], MAX_SIZE_LINE, Line::Size)?
                    else {
                        return Ok(());
                    };
                    let size = parse_size_line(&input[cur.pos..cur.pos + len - 2])?;
                    cur.pos += len;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    let available = input.len() - cur.pos;
                    if available == 0 {
                        return Ok(());
                    }
                    let n = usize::try_from(remaining).map_or(available, |r| r.min(available));
                    cur.take_data(input, n);
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::DataEnd
                    } else {
                        State::Data(remaining)
                    };
                }
                State::DataEnd => match &input[cur.pos..] {
                    [b'\r', b'\n', ..] => {
                        cur.pos += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(()),
                    _ => {
                        return Err(Http1Error::MalformedChunk(
                            "chunk data not followed by CRLF (chunk longer than its size?)".into(),
                        ))
                    }
                },
                State::Trailer => {
                    // The empty line ending the section is always allowed; field lines may
                    // take only what is left of the bound.
                    let limit = (MAX_TRAILER - self.trailer).max(2);
                    let Some(len) = self.take_line(&input[cur.pos..], limit, Line::Trailer)? else {
                        return Ok(());
                    };
                    let line = &input[cur.pos..cur.pos + len - 2];
                    cur.pos += len;
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(());
                    }
                    check_trailer_line(line)?;
                    self.trailer += len;
                }
                State::Done | State::Failed(_) => return Ok(()),
            }
        }
    }

    /// The length (CRLF included) of the complete line at the start of `rest`, or `None` when
    /// it has not fully arrived. A line longer than `max_len` is an error as soon as that many
    /// bytes are there, so the answer does not depend on how reads split the input.
    fn take_line(
        &mut self,
        rest: &[u8],
        max_len: usize,
        what: Line,
    ) -> Result<Option<usize>, Http1Error> {
        let window = &rest[..rest.len().min(max_len)];
        let from = self.scanned.min(window.len());
        match memchr(b'\n', &window[from..]) {
            Some(i) => {
                let lf = from + i;
                self.scanned = 0;
                if lf == 0 || window[lf - 1] != b'\r' {
                    return Err(Http1Error::MalformedChunk(format!(
                        "{} line ends with a bare LF instead of CRLF",
                        what.name()
                    )));
                }
                Ok(Some(lf + 1))
            }
            None if rest.len() >= max_len => Err(Http1Error::MalformedChunk(match what {
                Line::Size => format!("chunk size line longer than {MAX_SIZE_LINE} bytes"),
                Line::Trailer => format!("trailer section longer than {MAX_TRAILER} bytes"),
            })),
            None => {
                self.scanned = window.len();
                Ok(None)
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Line {
    Size,
    Trailer,
}

impl Line {
    fn name(self) -> &'static str {
        match self {
            Line::Size => "chunk size",
            Line::Trailer => "trailer",
        }
    }
}

/// Where a call has got to in its input: `pos` is the next byte to decode, and the decoded data
/// gathered so far is `input[start..end]` (`start` is `None` until the first data piece).
#[derive(Default)]
struct Cursor {
    pos: usize,
    start: Option<usize>,
    end: usize,
}

impl Cursor {
    fn take_data(&mut self, input: &mut [u8], n: usize) {
        if self.start.is_none() {
            self.start = Some(self.pos);
            self.end = self.pos;
        }
        if self.end != self.pos {
            input.copy_within(self.pos..self.pos + n, self.end);
        }
        self.end += n;
        self.pos += n;
    }

    /// Splits the gathered data off `input` and drops the framing consumed around it.
    fn finish(self, input: &mut BytesMut) -> Bytes {
        let Some(start) = self.start else {
            input.advance(self.pos);
            return Bytes::new();
        };
        input.advance(start);
        let data = input.split_to(self.end - start).freeze();
        input.advance(self.pos - self.end);
        data
    }
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`, CRLF already removed. Extensions are ignored but must not
/// hold control characters, so nothing odd hides in them. Whitespace after the size is
/// tolerated, as common servers do.
fn parse_size_line(line: &[u8]) -> Result<u64, Http1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Http1Error::MalformedChunk(match line.first() {
            None => "empty chunk size line".into(),
            Some(_) => format!(
                "chunk size line does not start with a hex size: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(32)])
            ),
        }));
    }
    if digits > MAX_SIZE_DIGITS {
        return Err(Http1Error::MalformedChunk(format!(
            "chunk size has more than {MAX_SIZE_DIGITS} hex digits"
        )));
    }
    let size = line[..digits].iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(16).unwrap_or_default();
        n.checked_mul(16)?.checked_add(u64::from(digit))
    });
    let size = size.ok_or_else(|| Http1Error::MalformedChunk("chunk size overflows".into()))?;

    let mut rest = &line[digits..];
    while let [b' ' | b'\t', tail @ ..] = rest {
        rest = tail;
    }
    match rest {
        [] => Ok(size),
        [b';', ext @ ..] if ext.iter().all(|&b| is_field_byte(b)) => Ok(size),
        [b';', ..] => Err(Http1Error::MalformedChunk(
            "control character in chunk extension".into(),
        )),
        _ => Err(Http1Error::MalformedChunk(
            "unexpected character after chunk size".into(),
        )),
    }
}

/// A trailer field line is discarded, but it must still look like a field line: a folded line
/// or one without a name could be the remains of a message the upstream framed differently.
fn check_trailer_line(line: &[u8]) -> Result<(), Http1Error> {
    if let [b' ' | b'\t', ..] = line {
        return Err(Http1Error::MalformedChunk(
            "folded trailer line (obsolete line folding)".into(),
        ));
    }
    let Some(colon) = memchr(b':', line) else {
        return Err(Http1Error::MalformedChunk(
            "trailer line without a colon".into(),
        ));
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Http1Error::MalformedChunk(
            "invalid trailer field name".into(),
        ));
    }
    if !value.iter().all(|&b| is_field_byte(b)) {
        return Err(Http1Error::MalformedChunk(
            "control character in trailer field value".into(),
        ));
    }
    Ok(())
}

/// Visible ASCII, space, tab and obs-text: what a field value or quoted string may hold.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7f)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
