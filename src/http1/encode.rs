//! Encoding what the proxy sends upstream: the request head and a chunked request body.

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, Method};

/// The last chunk with an empty trailer section: ends a chunked request body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes the request line, the header fields and the blank line that ends the head.
///
/// Header names go out lowercase (as `http` stores them), which HTTP/1.1 allows since names are
/// case-insensitive. Framing and routing headers (`Host`, `Content-Length` or
/// `Transfer-Encoding: chunked`, `Connection`) are the caller's choice and are written as given.
///
/// `target` must be a valid request-target (as from [`http::Uri`]): it is copied verbatim, so a
/// space or line break in it would let the caller forge a different request; debug builds check.
pub fn encode_request_head(method: &Method, target: &str, headers: &HeaderMap, out: &mut BytesMut) {
    debug_assert!(
        !target.is_empty() && target.bytes().all(|b| b > b' ' && b != 0x7f),
        "request target must be non-empty visible ASCII"
    );
    const VERSION: &[u8] = b" HTTP/1.1\r\n";
    let method = method.as_str().as_bytes();
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    // One reservation of the exact size, so a head never reallocates midway.
    out.reserve(method.len() + 1 + target.len() + VERSION.len() + fields + 2);
    out.put_slice(method);
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(VERSION);
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
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
