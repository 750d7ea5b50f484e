//! Tests for the HTTP/1.1 framing module, one file per concern.

mod body;
mod chunked;
mod encode;
mod framing;
mod head;
mod props;

use bytes::BytesMut;

use super::{parse_response_head, BodyDecoder, Http1Error, ResponseHead};

/// Parses a complete head or panics.
fn head(raw: &str) -> ResponseHead {
    let (head, consumed) = parse_response_head(raw.as_bytes(), 64 * 1024)
        .expect("valid head")
        .expect("complete head");
    assert_eq!(consumed, raw.len());
    head
}

/// Feeds `pieces` one read at a time, as a connection would, collecting the body.
/// Returns the body, what is left in the read buffer, and the first error.
fn feed<'a>(
    decoder: &mut BodyDecoder,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<u8>, BytesMut, Option<Http1Error>) {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        match decoder.decode(&mut buf) {
            Ok(data) => body.extend_from_slice(&data),
            Err(e) => return (body, buf, Some(e)),
        }
    }
    (body, buf, None)
}

/// Feeds all of `input` in one read.
fn feed_all(decoder: &mut BodyDecoder, input: &[u8]) -> (Vec<u8>, BytesMut, Option<Http1Error>) {
    feed(decoder, [input])
}
