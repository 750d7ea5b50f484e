//! The little HTTP/1.1 both ends of the harness need: an incremental chunked-body decoder (the
//! client reads responses with it, the upstream reads chunked request bodies with it) and an
//! SSE scanner that turns body bytes into the upstream's send timestamps.
//!
//! Written here rather than borrowed so that the harness measures proxies with a client whose
//! cost is small, fixed and the same for every target.

/// Where a response or request body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    /// Until the peer closes (a response with neither header).
    UntilClose,
}

impl Framing {
    /// From a parsed head's headers; `is_response` decides what "no framing header" means.
    pub fn from_headers(headers: &[httparse::Header<'_>], is_response: bool) -> Framing {
        let mut length = None;
        for header in headers {
            if header.name.eq_ignore_ascii_case("transfer-encoding")
                && header.value.to_ascii_lowercase().ends_with(b"chunked")
            {
                return Framing::Chunked;
            }
            if header.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            }
        }
        match length {
            Some(n) => Framing::Length(n),
            None if is_response => Framing::UntilClose,
            None => Framing::Length(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// Bytes left in the current chunk's data.
    Data(u64),
    /// Bytes left of the CRLF after a chunk's data.
    DataEnd(u8),
    /// Trailer lines after the last chunk, until an empty line.
    Trailer,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally: feed it whatever a read returned.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
}

/// The longest chunk-size or trailer line accepted (a broken peer must not grow it forever).
const MAX_LINE: usize = 4096;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            line: Vec::with_capacity(32),
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Appends the body bytes found in `input` to `out`; returns how many bytes of `input` were
    /// used (less than all only when the body ended inside `input`).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let take = (input.len() - pos).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[pos..pos + take]);
                    pos += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd(2)
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd(left) => {
                    // Lenient: whatever the two bytes are, they end the chunk.
                    pos += 1;
                    self.state = if left <= 1 {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(left - 1)
                    };
                }
                ChunkState::Size | ChunkState::Trailer => {
                    let rest = &input[pos..];
                    let Some(nl) = memchr::memchr(b'\n', rest) else {
                        self.push_line(rest)?;
                        pos = input.len();
                        break;
                    };
                    self.push_line(&rest[..nl])?;
                    pos += nl + 1;
                    self.end_line()?;
                }
            }
        }
        Ok(pos)
    }

    fn push_line(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err("chunked framing: line too long".into());
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), String> {
        let line = std::mem::take(&mut self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if self.state == ChunkState::Trailer {
            if line.is_empty() {
                self.state = ChunkState::Done;
            }
            return Ok(());
        }
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        let text = std::str::from_utf8(digits).map_err(|_| "chunk size is not ASCII")?;
        let size = u64::from_str_radix(text.trim(), 16)
            .map_err(|_| format!("chunked framing: bad chunk size {text:?}"))?;
        self.state = if size == 0 {
            ChunkState::Trailer
        } else {
            ChunkState::Data(size)
        };
        Ok(())
    }
}

/// The prefix of the upstream's event ids, followed by the send time in nanoseconds since the
/// harness epoch, zero-padded to [`TIMESTAMP_DIGITS`] digits.
pub const ID_PREFIX: &[u8] = b"\"id\":\"chatcmpl-t";
pub const TIMESTAMP_DIGITS: usize = 20;

/// What one complete SSE event carried, as far as the harness cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItem {
    /// A content event, with its send time (ns since the harness epoch).
    Timestamped(u64),
    /// `data: [DONE]`.
    Done,
    /// Any other event (the finish chunk, the usage chunk, a proxy's own events).
    Other,
}

/// Splits body bytes into SSE lines and reports each event when its blank line arrives (an
/// event is delivered when it is complete, not when its first byte is).
#[derive(Debug, Default)]
pub struct SseScanner {
    pending: Vec<u8>,
    current: Option<SseItem>,
}

impl SseScanner {
    /// Consumes `body` (appended to what was left of an unfinished line) and calls `emit` for
    /// every event that completed.
    pub fn feed(&mut self, body: &[u8], mut emit: impl FnMut(SseItem)) {
        let owned;
        let data: &[u8] = if self.pending.is_empty() {
            body
        } else {
            self.pending.extend_from_slice(body);
            owned = std::mem::take(&mut self.pending);
            &owned
        };
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let line = &data[start..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            start = nl + 1;
            if line.is_empty() {
                if let Some(item) = self.current.take() {
                    emit(item);
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                self.current = Some(classify(value));
            }
            // Comments (`: keep-alive`, `: sluice-usage …`) and other fields are not events.
        }
        // Bounded: an unfinished line is kept only until the next newline arrives.
        self.pending.extend_from_slice(&data[start..]);
    }
}

fn classify(value: &[u8]) -> SseItem {
    if value == b"[DONE]" {
        return SseItem::Done;
    }
    let Some(at) = memchr::memmem::find(value, ID_PREFIX) else {
        return SseItem::Other;
    };
    let digits = &value[at + ID_PREFIX.len()..];
    if digits.len() < TIMESTAMP_DIGITS {
        return SseItem::Other;
    }
    let mut ns: u64 = 0;
    for &d in &digits[..TIMESTAMP_DIGITS] {
        if !d.is_ascii_digit() {
            return SseItem::Other;
        }
        ns = ns.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    SseItem::Timestamped(ns)
}

/// Self-checks of the parsers, run by `cargo test --all-targets` (which runs this bench
/// without `--bench`): no sockets, no processes, milliseconds.
pub fn self_check() -> Result<(), String> {
    let event = |ts: u64| {
        format!("data: {{\"id\":\"chatcmpl-t{ts:020}\",\"choices\":[]}}\n\n").into_bytes()
    };
    let mut body = Vec::new();
    body.extend(event(42));
    body.extend(b": sluice-usage {}\n\n");
    body.extend(b"data: {\"id\":\"x\"}\r\n\r\n");
    body.extend(event(7));
    body.extend(b"data: [DONE]\n\n");
    let mut wire = Vec::new();
    for piece in body.chunks(37) {
        wire.extend(format!("{:x};ext=1\r\n", piece.len()).into_bytes());
        wire.extend(piece);
        wire.extend(b"\r\n");
    }
    wire.extend(b"0\r\nx-trailer: 1\r\n\r\nNEXT");
    // Every split of the wire bytes into two reads must decode to the same events.
    for split in 0..wire.len() {
        let mut decoder = ChunkedDecoder::default();
        let mut scanner = SseScanner::default();
        let mut items = Vec::new();
        let mut used = 0;
        for part in [&wire[..split], &wire[split..]] {
            let mut out = Vec::new();
            used += decoder.feed(part, &mut out)?;
            scanner.feed(&out, |item| items.push(item));
        }
        let expected = [
            SseItem::Timestamped(42),
            SseItem::Other,
            SseItem::Timestamped(7),
            SseItem::Done,
        ];
        if items != expected || !decoder.is_done() || used != wire.len() - 4 {
            return Err(format!(
                "split at {split}: got {items:?}, done {}, used {used}",
                decoder.is_done()
            ));
        }
    }
    Ok(())
}
