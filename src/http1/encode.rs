//! Encoding what the proxy sends upstream (the request head and a chunked request body) and the
//! head of a response it writes on a client connection itself.

use bytes::{BufMut, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, StatusCode};

/// The last chunk with an empty trailer section: ends a chunked request body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What a request head says about its connection, learnt while writing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestHeadFacts {
    /// `Transfer-Encoding: chunked`: the body goes in chunks and ends with [`LAST_CHUNK`].
    pub chunked_body: bool,
    /// `Connection: close`: the upstream closes the connection after its response.
    pub close_requested: bool,
}

/// Writes the request line, the header fields and the blank line that ends the head.
///
/// Header names go out lowercase (as `http` stores them), which HTTP/1.1 allows since names are
/// case-insensitive. Framing and routing headers (`Host`, `Content-Length` or
/// `Transfer-Encoding: chunked`, `Connection`) are the caller's choice and are written as given.
/// The fields are taken as an iterator so that a proxy can send the client's fields it keeps
/// without first copying them into a map of their own.
///
/// `target` must be a valid request-target (as from [`http::Uri`]): it is copied verbatim, so a
/// space or line break in it would let the caller forge a different request; debug builds check.
pub fn encode_request_head<'f>(
    method: &Method,
    target: &str,
    fields: impl IntoIterator<Item = (&'f HeaderName, &'f HeaderValue)>,
    out: &mut BytesMut,
) -> RequestHeadFacts {
    debug_assert!(
        !target.is_empty() && target.bytes().all(|b| b > b' ' && b != 0x7f),
        "request target must be non-empty visible ASCII"
    );
    let mut facts = RequestHeadFacts::default();
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields {
        if name == header::TRANSFER_ENCODING {
            facts.chunked_body |= value.as_bytes().eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            facts.close_requested |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    facts
}

/// Writes a response's status line, header fields and the blank line that ends its head, field by
/// field. Test-only: a stream's head is written by `ClientHead::encode` (status line, the
/// upstream's kept lines copied from its bytes, Sluice's fields), and this is the reference it is
/// checked against.
#[cfg(test)]
pub fn encode_response_head<'f>(
    status: StatusCode,
    reason: Option<&str>,
    fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>,
    out: &mut BytesMut,
) {
    encode_status_line(status, reason, out);
    for (name, value) in fields {
        encode_field(name, value, out);
    }
    out.put_slice(b"\r\n");
}

/// Writes a response's status line. `reason` defaults to the status code's own phrase.
pub fn encode_status_line(status: StatusCode, reason: Option<&str>, out: &mut BytesMut) {
    let reason = reason.or(status.canonical_reason()).unwrap_or("");
    debug_assert!(
        !reason.bytes().any(|b| b == b'\r' || b == b'\n'),
        "a reason phrase is one line"
    );
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
}

/// Writes one header field (`name: value\r\n`).
pub fn encode_field(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes one chunk (`{len:X}\r\n{data}\r\n`). Empty data writes nothing, because an empty
/// chunk would be the last chunk and end the body early; end it with [`LAST_CHUNK`].
pub fn encode_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    out.reserve(hex_len(data.len()) + 2 + data.len() + 2);
    encode_chunk_size(data.len(), out);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Writes only a chunk's size line (`{len:X}\r\n`), for a caller that sends the data from its own
/// buffer without copying it and then writes the `\r\n` that ends the chunk. `len` must not be 0.
pub fn encode_chunk_size(len: usize, out: &mut BytesMut) {
    debug_assert!(len > 0, "a zero-size chunk is the last chunk");
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digits = hex_len(len);
    let mut buf = [0u8; 2 * std::mem::size_of::<usize>() + 2];
    for (i, slot) in buf[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = HEX[(len >> shift) & 0xF];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    out.extend_from_slice(&buf[..digits + 2]);
}

/// Number of hex digits of `n` (at least one).
fn hex_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits as usize).div_ceil(4).max(1)
}
