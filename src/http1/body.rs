//! Incremental decoding of a response body, whatever its framing.

use bytes::{Bytes, BytesMut};

use super::chunked::ChunkedDecoder;
use super::{BodyFraming, Http1Error};

/// Turns bytes read from the connection into body bytes, one read at a time.
///
/// The caller keeps one read buffer: it appends what it reads, calls [`BodyDecoder::decode`],
/// and keeps whatever is left in the buffer for the next call (an incomplete chunk size line,
/// or — once [`BodyDecoder::is_done`] — the start of the next response, if any).
#[derive(Debug)]
pub struct BodyDecoder {
    kind: Kind,
    received: u64,
}

#[derive(Debug)]
enum Kind {
    /// Also a `Length` body once all of it came, and an `UntilClose` body after EOF.
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl BodyDecoder {
    pub fn new(framing: BodyFraming) -> Self {
        let kind = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => Kind::Done,
            BodyFraming::Length(n) => Kind::Length(n),
            BodyFraming::Chunked => Kind::Chunked(ChunkedDecoder::new()),
            BodyFraming::UntilClose => Kind::UntilClose,
        };
        BodyDecoder { kind, received: 0 }
    }

    /// Takes what it can from `input` and returns the body bytes in it, possibly none (say, when
    /// `input` held only part of a chunk size line, which stays there until more arrives).
    /// Bytes past the end of the body stay in `input`.
    ///
    /// The result is split off `input` without copying (chunked data spread over several chunks
    /// in one read is first gathered in place), so it shares `input`'s allocation.
    ///
    /// Errors are final: once `decode` fails, every later call fails the same way. Body bytes
    /// decoded before malformed chunk framing in the same input are returned first, with the
    /// error on the next call.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Bytes, Http1Error> {
        let data = match &mut self.kind {
            Kind::Done => return Ok(Bytes::new()),
            Kind::Length(remaining) => {
                let n = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                if n == 0 {
                    return Ok(Bytes::new());
                }
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.kind = Kind::Done;
                }
                input.split_to(n).freeze()
            }
            Kind::Chunked(chunked) => {
                let data = chunked.decode(input)?;
                if chunked.is_done() {
                    self.kind = Kind::Done;
                }
                data
            }
            Kind::UntilClose if input.is_empty() => return Ok(Bytes::new()),
            Kind::UntilClose => input.split().freeze(),
        };
        self.received += data.len() as u64;
        Ok(data)
    }

    /// Whether the whole body has been decoded: then the connection's next bytes, if any,
    /// belong to the next response. An `UntilClose` body is done only after [`Self::at_eof`].
    pub fn is_done(&self) -> bool {
        matches!(self.kind, Kind::Done)
    }

    /// Body bytes decoded so far (for logs and metrics).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Tells the decoder the connection closed; call it after decoding everything read before
    /// the EOF. `Ok(())` when the close properly ends the body (it is delimited by the close, or
    /// was already complete); otherwise the body is truncated, and relaying it as if complete
    /// would hand the client a silently cut response.
    pub fn at_eof(&mut self) -> Result<(), Http1Error> {
        match &self.kind {
            Kind::Done => Ok(()),
            Kind::UntilClose => {
                self.kind = Kind::Done;
                Ok(())
            }
            Kind::Length(missing) => Err(Http1Error::Truncated {
                received: self.received,
                missing: Some(*missing),
            }),
            Kind::Chunked(chunked) => {
                Err(chunked.failure().cloned().unwrap_or(Http1Error::Truncated {
                    received: self.received,
                    missing: None,
                }))
            }
        }
    }
}
