//! The client side of HTTP/1.1 message framing (RFC 9112), free of any I/O: encoding request
//! heads and chunked request bodies, parsing response heads, deciding how a response body is
//! delimited and whether the connection may be reused, and decoding the body incrementally.
//!
//! It exists so the edge can talk HTTP/1.1 to upstreams with its own small buffers. Everything
//! here works on whatever a read returned — a head or body may be split anywhere — and keeps
//! its own state small, so the caller owns every buffer and decides every size limit that
//! costs memory; the bounds this module enforces itself (size line, trailers, header count)
//! are the ones a hostile upstream could otherwise use to grow the caller's buffer forever.
//!
//! Framing is strict where leniency would let two parsers disagree on where a message ends
//! (request smuggling and response splitting on a pooled connection), and lenient only where
//! common servers are and the meaning is unambiguous.

mod body;
mod chunked;
mod encode;
mod framing;
mod head;

#[cfg(test)]
mod tests;

pub use body::BodyDecoder;
#[cfg(test)]
pub use encode::encode_response_head;
pub use encode::{
    encode_chunk, encode_chunk_size, encode_field, encode_request_head, encode_status_line,
    RequestHeadFacts, LAST_CHUNK,
};
pub use framing::{
    agreed_content_length, content_length, idle_within, keeps_alive, only_chunked,
    response_framing, status_has_body, BodyFraming, KeepAliveHint,
};
pub use head::{is_named, parse_response_head, Fields, ResponseHead, MAX_HEADERS};

/// Why a response could not be read. The messages are plain sentences because they end up in a
/// 502 body and in logs, read by people who never saw the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Http1Error {
    /// The status line or a header line is not valid HTTP/1.x.
    #[error("malformed response head from upstream: {0}")]
    MalformedHead(String),
    /// The head did not end within the size the caller allows.
    #[error("response head from upstream is larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    /// More header lines than [`MAX_HEADERS`].
    #[error("response head from upstream has more than {max} header fields")]
    TooManyHeaders { max: usize },
    /// `Content-Length` / `Transfer-Encoding` do not say unambiguously where the body ends.
    #[error("invalid response body framing from upstream: {0}")]
    InvalidFraming(String),
    /// The chunked encoding of the body is broken.
    #[error("malformed chunked response body from upstream: {0}")]
    MalformedChunk(String),
    /// The connection closed before the body ended. `missing` is known only for a
    /// `Content-Length` body.
    #[error("{}", truncated_message(*received, *missing))]
    Truncated { received: u64, missing: Option<u64> },
}

fn truncated_message(received: u64, missing: Option<u64>) -> String {
    match missing {
        Some(missing) => format!(
            "upstream closed the connection before the end of the response body \
             ({received} bytes received, {missing} missing)"
        ),
        None => format!(
            "upstream closed the connection before the end of the chunked response body \
             ({received} bytes received)"
        ),
    }
}
