//! Undoing an upstream's `Content-Encoding` on a stream as it arrives.
//!
//! Sluice asks for no coding on stream requests (it strips `Accept-Encoding`), yet some servers
//! compress anyway. Their stream is decoded so that events can be read, heartbeats placed and
//! the client given plain SSE. Every piece that comes in is decoded as far as it goes at once:
//! a decoder that kept the end of a piece until the next one came (flate2's writers do, until
//! flushed) would hold each token back for as long as the provider pauses after it.
//!
//! A coding that cannot be undone here (an unknown name, two codings) is no error: the caller
//! passes that body through untouched, with its `Content-Encoding`. A body that does not decode
//! (corrupt, or cut before its end) is an error: the caller ends the stream as an upstream
//! failure after the bytes decoded before it.

use bytes::Bytes;
use std::io::Write;

/// A coding Sluice undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// The zlib format (RFC 9110), or raw deflate as some servers send it.
    Deflate,
    Brotli,
}

/// Why a coding is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// The coding the `Content-Encoding` field lines `values` ask to undo: `None` for none (no
/// field, or only `identity`).
pub fn coding_of<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Coding>, Unsupported> {
    let mut found = None;
    for value in values {
        let text = std::str::from_utf8(value)
            .map_err(|_| Unsupported("a Content-Encoding that is not text".into()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let coding = match token.to_ascii_lowercase().as_str() {
                "identity" => continue,
                // RFC 9110 §8.4.1.3: `x-gzip` is `gzip`.
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Brotli,
                _ => return Err(Unsupported(format!("the coding {token:?}"))),
            };
            if found.replace(coding).is_some() {
                return Err(Unsupported("more than one coding".into()));
            }
        }
    }
    Ok(found)
}

/// A body that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct ContentDecoder {
    coding: Coding,
    state: State,
    /// Some byte of the body came (an empty body is no truncated one).
    received: bool,
}

enum State {
    Gzip(flate2::write::MultiGzDecoder<Capped>),
    /// Deflate before its first two bytes, which tell zlib from raw deflate.
    DeflateStart(Vec<u8>),
    Zlib(flate2::write::ZlibDecoder<Capped>),
    RawDeflate(flate2::write::DeflateDecoder<Capped>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Capped>>),
    /// After an error or the end: nothing more is decoded.
    Done,
}

/// Most bytes one piece of a body may decode to. A piece is at most what one read gathered
/// (~64 KiB); real text compresses 3 to 10 times, while a crafted gzip piece expands ~1,000
/// times and a brotli one without bound: past this, the body is taken for a bomb, not a
/// stream.
pub const MAX_DECODED_PIECE: usize = 16 << 20;

/// The decoders' output: refuses to grow past [`MAX_DECODED_PIECE`] before it is taken.
#[derive(Default)]
struct Capped(Vec<u8>);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_DECODED_PIECE {
            return Err(std::io::Error::other(format!(
                "one piece expands past {} MiB",
                MAX_DECODED_PIECE >> 20
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The brotli decoder's own buffer (its output goes straight on to the `Vec`).
const BROTLI_BUFFER: usize = 4096;

impl ContentDecoder {
    pub fn new(coding: Coding) -> Self {
        let state = match coding {
            Coding::Gzip => State::Gzip(flate2::write::MultiGzDecoder::new(Capped::default())),
            Coding::Deflate => State::DeflateStart(Vec::new()),
            Coding::Brotli => State::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Capped::default(), BROTLI_BUFFER),
            )),
        };
        ContentDecoder {
            coding,
            state,
            received: false,
        }
    }

    /// Everything `data` decodes to, with what earlier pieces left undecoded. On an error, what
    /// `data` decoded to before the fault is lost with it (flate2 keeps it in its own buffer).
    pub fn decode(&mut self, data: &[u8]) -> Result<Bytes, DecodeError> {
        self.received |= !data.is_empty();
        if let State::DeflateStart(start) = &mut self.state {
            start.extend_from_slice(data);
            if start.len() < 2 {
                return Ok(Bytes::new());
            }
            let start = std::mem::take(start);
            self.state = if is_zlib_header(start[0], start[1]) {
                State::Zlib(flate2::write::ZlibDecoder::new(Capped::default()))
            } else {
                State::RawDeflate(flate2::write::DeflateDecoder::new(Capped::default()))
            };
            return self.decode(&start);
        }
        let result = match &mut self.state {
            State::Gzip(d) => write_flushed(d, data).map(|()| d.get_mut()),
            State::Zlib(d) => write_flushed(d, data).map(|()| d.get_mut()),
            State::RawDeflate(d) => write_flushed(d, data).map(|()| d.get_mut()),
            State::Brotli(d) => write_flushed(d.as_mut(), data).map(|()| d.get_mut()),
            State::DeflateStart(_) | State::Done => return Ok(Bytes::new()),
        };
        match result {
            Ok(out) => Ok(Bytes::from(std::mem::take(&mut out.0))),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// The end of the body: what is left, or an error if the body stopped before its coding's
    /// end (a gzip body without its trailer, a brotli stream cut short).
    pub fn finish(&mut self) -> Result<Bytes, DecodeError> {
        if !self.received {
            // A compressed empty body is still empty (as it was under Pingora's decoder).
            self.state = State::Done;
            return Ok(Bytes::new());
        }
        let result = match &mut self.state {
            State::Gzip(d) => d.try_finish().map(|()| d.get_mut()),
            State::Zlib(d) => d.try_finish().map(|()| d.get_mut()),
            State::RawDeflate(d) => d.try_finish().map(|()| d.get_mut()),
            State::Brotli(d) => d.close().map(|()| d.get_mut()),
            State::DeflateStart(start) if start.is_empty() => {
                self.state = State::Done;
                return Ok(Bytes::new());
            }
            State::DeflateStart(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "one byte");
                return Err(self.failed(&e));
            }
            State::Done => return Ok(Bytes::new()),
        };
        match result {
            Ok(out) => {
                let out = Bytes::from(std::mem::take(&mut out.0));
                self.state = State::Done;
                Ok(out)
            }
            Err(e) => Err(self.failed(&e)),
        }
    }

    fn failed(&mut self, e: &std::io::Error) -> DecodeError {
        self.state = State::Done;
        let name = match self.coding {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
        };
        DecodeError(format!("the {name} body does not decode: {e}"))
    }
}

/// Writes `data` and flushes, so that all it decodes to is out now.
fn write_flushed(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data)?;
    w.flush()
}

/// RFC 1950: compression method 8, window at most 32 KiB, and a header check that divides by 31.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    const EVENTS: [&str; 3] = [
        "data: {\"choices\":[{\"delta\":{\"content\":\"one\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"two\"}}]}\n\n",
        "data: [DONE]\n\n",
    ];

    /// Each event compressed and sync-flushed on its own, as a server streaming gzip sends it.
    fn pieces<W: Write>(
        mut encoder: W,
        take: impl Fn(&mut W) -> Vec<u8>,
        finish: impl FnOnce(W) -> Vec<u8>,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for event in EVENTS {
            encoder.write_all(event.as_bytes()).unwrap();
            encoder.flush().unwrap();
            out.push(take(&mut encoder));
        }
        out.push(finish(encoder));
        out
    }

    fn gzip_pieces() -> Vec<Vec<u8>> {
        pieces(
            GzEncoder::new(Vec::new(), Compression::default()),
            |e| std::mem::take(e.get_mut()),
            |e| e.finish().unwrap(),
        )
    }

    fn decode_each(decoder: &mut ContentDecoder, pieces: &[Vec<u8>]) -> Vec<String> {
        pieces
            .iter()
            .map(|p| String::from_utf8(decoder.decode(p).unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn each_piece_of_a_gzip_stream_is_decoded_when_it_comes() {
        let mut decoder = ContentDecoder::new(Coding::Gzip);
        let decoded = decode_each(&mut decoder, &gzip_pieces());
        assert_eq!(decoded[..3], EVENTS);
        assert_eq!(decoded[3], "");
        assert!(decoder.finish().unwrap().is_empty());
    }

    #[test]
    fn zlib_and_raw_deflate_are_told_apart_and_decoded_when_they_come() {
        let zlib = pieces(
            ZlibEncoder::new(Vec::new(), Compression::default()),
            |e| std::mem::take(e.get_mut()),
            |e| e.finish().unwrap(),
        );
        let raw = pieces(
            DeflateEncoder::new(Vec::new(), Compression::default()),
            |e| std::mem::take(e.get_mut()),
            |e| e.finish().unwrap(),
        );
        for body in [zlib, raw] {
            let mut decoder = ContentDecoder::new(Coding::Deflate);
            assert_eq!(decode_each(&mut decoder, &body)[..3], EVENTS);
            assert!(decoder.finish().unwrap().is_empty());
            // Byte by byte, the first two bytes arriving apart.
            let mut decoder = ContentDecoder::new(Coding::Deflate);
            let all: Vec<u8> = body.concat();
            let mut text = Vec::new();
            for byte in all {
                text.extend_from_slice(&decoder.decode(&[byte]).unwrap());
            }
            text.extend_from_slice(&decoder.finish().unwrap());
            assert_eq!(String::from_utf8(text).unwrap(), EVENTS.concat());
        }
    }

    #[test]
    fn a_brotli_stream_is_decoded_when_it_comes() {
        let body = pieces(
            brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22),
            |e| std::mem::take(e.get_mut()),
            |e| e.into_inner(),
        );
        let mut decoder = ContentDecoder::new(Coding::Brotli);
        assert_eq!(decode_each(&mut decoder, &body)[..3], EVENTS);
        assert!(decoder.finish().unwrap().is_empty());

        let mut cut = ContentDecoder::new(Coding::Brotli);
        assert_eq!(decode_each(&mut cut, &body[..2]), EVENTS[..2]);
        let e = cut.finish().unwrap_err();
        assert!(e.0.starts_with("the br body does not decode"), "{e}");
    }

    #[test]
    fn concatenated_gzip_members_are_one_body() {
        let mut body = gzip_pieces().concat();
        body.extend(gzip_pieces().concat());
        let mut decoder = ContentDecoder::new(Coding::Gzip);
        let mut text = decoder.decode(&body).unwrap().to_vec();
        text.extend_from_slice(&decoder.finish().unwrap());
        assert_eq!(String::from_utf8(text).unwrap(), EVENTS.concat().repeat(2));
    }

    #[test]
    fn a_corrupt_body_is_an_error_after_what_decoded_before_it() {
        let mut pieces = gzip_pieces();
        for b in pieces[1].iter_mut() {
            *b ^= 0x5a;
        }
        let mut decoder = ContentDecoder::new(Coding::Gzip);
        assert_eq!(
            &decoder.decode(&pieces[0]).unwrap()[..],
            EVENTS[0].as_bytes()
        );
        let e = decoder.decode(&pieces[1]).unwrap_err();
        assert!(e.0.starts_with("the gzip body does not decode"), "{e}");
        // Nothing more after the error.
        assert!(decoder.decode(&pieces[2]).unwrap().is_empty());
        assert!(decoder.finish().unwrap().is_empty());
    }

    #[test]
    fn a_body_cut_before_its_end_is_an_error_at_the_end() {
        let pieces = gzip_pieces();
        let mut decoder = ContentDecoder::new(Coding::Gzip);
        assert_eq!(decode_each(&mut decoder, &pieces[..3]), EVENTS);
        assert!(decoder.finish().is_err(), "no gzip trailer");

        let mut decoder = ContentDecoder::new(Coding::Deflate);
        decoder.decode(&[0x78]).unwrap();
        assert!(decoder.finish().is_err(), "one byte of a zlib header");
        assert!(ContentDecoder::new(Coding::Deflate)
            .finish()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_piece_that_expands_past_the_cap_is_an_error() {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_DECODED_PIECE >> 20) + 1 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        let e = ContentDecoder::new(Coding::Gzip).decode(&bomb).unwrap_err();
        assert!(e.0.contains("expands past 16 MiB"), "{e}");
        // The same bytes in pieces that each stay under the cap decode.
        let mut decoder = ContentDecoder::new(Coding::Gzip);
        let decoded: usize = bomb
            .chunks(bomb.len() / 4 + 1)
            .map(|piece| decoder.decode(piece).unwrap().len())
            .sum();
        let total = decoded + decoder.finish().unwrap().len();
        assert_eq!(total, MAX_DECODED_PIECE + (1 << 20));
    }

    #[test]
    fn an_empty_body_is_empty_in_every_coding() {
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli] {
            let mut decoder = ContentDecoder::new(coding);
            assert!(decoder.decode(&[]).unwrap().is_empty());
            assert!(decoder.finish().unwrap().is_empty(), "{coding:?}");
        }
    }

    #[test]
    fn codings_are_named_as_rfc_9110_allows() {
        let of = |values: &[&str]| coding_of(values.iter().map(|v| v.as_bytes()));
        assert_eq!(of(&[]), Ok(None));
        assert_eq!(of(&["identity"]), Ok(None));
        assert_eq!(of(&["gzip"]), Ok(Some(Coding::Gzip)));
        assert_eq!(of(&["GZip"]), Ok(Some(Coding::Gzip)));
        assert_eq!(of(&["x-gzip"]), Ok(Some(Coding::Gzip)));
        assert_eq!(of(&["gzip, identity"]), Ok(Some(Coding::Gzip)));
        assert_eq!(of(&["identity", " deflate "]), Ok(Some(Coding::Deflate)));
        assert_eq!(of(&["br"]), Ok(Some(Coding::Brotli)));
        assert!(of(&["zstd"]).is_err());
        assert!(of(&["x-bogus"]).is_err());
        assert!(of(&["gzip, gzip"]).is_err());
        assert!(of(&["gzip", "br"]).is_err());
    }
}
