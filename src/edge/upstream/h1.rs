//! Sluice's own HTTP/1.1 upstream connection. The request head and the body read so far leave
//! in one write (one wake-up of the upstream, not one per piece), and reads go through a buffer
//! on the stack whose bytes are copied out (`tcp::read_into`): an idle stream holds no read
//! buffer at all, where Pingora's client session keeps a 64 KiB one per connection. The framing
//! rules are in `crate::http1`.

use crate::http1::{self, BodyDecoder, Http1Error};
use bytes::{Buf, Bytes, BytesMut};
use pingora::protocols::Stream;
use pingora::{Error, ErrorType};
use std::time::Duration;

/// Largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

pub struct H1Connection {
    stream: Stream,
    /// Bytes read and not yet consumed: part of a head, or framing between two body pieces.
    /// Empty (no allocation) whenever the connection waits.
    pending: BytesMut,
    body: Option<BodyDecoder>,
    /// The request body goes chunked (the client's length was not known).
    chunked_request: bool,
    head_request: bool,
    /// The request asked the upstream to close the connection after its response.
    close_requested: bool,
    keep_alive: bool,
    /// The seconds the upstream said (`Keep-Alive: timeout=N`) it keeps the connection open
    /// while idle, up to `u16::MAX`; 0 when it did not say. (Two bytes, beside the flags: no
    /// room taken in the state of an open stream.)
    idle_timeout_hint: u16,
    /// The request's body was not all sent (the upstream answered before it had it all).
    request_unfinished: bool,
    /// Taken from the idle pool, not made for this request.
    reused: bool,
    /// Some byte of an answer came.
    answered: bool,
}

impl H1Connection {
    pub fn new(stream: Stream) -> Self {
        Self::with_history(stream, false)
    }

    /// A connection taken from the idle pool.
    pub fn reused(stream: Stream) -> Self {
        Self::with_history(stream, true)
    }

    fn with_history(stream: Stream, reused: bool) -> Self {
        H1Connection {
            stream,
            pending: BytesMut::new(),
            body: None,
            chunked_request: false,
            head_request: false,
            close_requested: false,
            keep_alive: false,
            idle_timeout_hint: 0,
            request_unfinished: false,
            reused,
            answered: false,
        }
    }

    /// A connection from the pool that closed before any byte of an answer: the upstream may
    /// have closed it as idle while the request was on its way (the close crossing the
    /// request), so the request may not have been seen.
    pub fn closed_unanswered_after_reuse(&self) -> bool {
        self.reused && !self.answered
    }

    /// The request's body will not be sent whole: the connection cannot carry another request.
    pub fn forbid_reuse(&mut self) {
        self.request_unfinished = true;
    }

    /// Writes the request head and the first part of its body (all of it when `complete`).
    pub async fn send_head<'f>(
        &mut self,
        method: &http::Method,
        target: &str,
        fields: impl IntoIterator<Item = (&'f http::HeaderName, &'f http::HeaderValue)>,
        body: &[u8],
        complete: bool,
    ) -> pingora::Result<()> {
        let mut out = BytesMut::with_capacity(1024 + body.len());
        let facts = http1::encode_request_head(method, target, fields, &mut out);
        self.chunked_request = facts.chunked_body;
        self.close_requested = facts.close_requested;
        self.head_request = method == http::Method::HEAD;
        self.frame_body(body, &mut out);
        if complete && self.chunked_request {
            out.extend_from_slice(http1::LAST_CHUNK);
        }
        self.write(&out).await
    }

    /// More of the request body, as the client sends it.
    pub async fn send_body(&mut self, data: &[u8]) -> pingora::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.chunked_request {
            return self.write(data).await;
        }
        let mut out = BytesMut::with_capacity(data.len() + 20);
        self.frame_body(data, &mut out);
        self.write(&out).await
    }

    /// The end of a request body that was sent in parts.
    pub async fn finish_body(&mut self) -> pingora::Result<()> {
        if self.chunked_request {
            self.write(http1::LAST_CHUNK).await?;
        }
        Ok(())
    }

    fn frame_body(&self, data: &[u8], out: &mut BytesMut) {
        if self.chunked_request {
            http1::encode_chunk(data, out);
        } else {
            out.extend_from_slice(data);
        }
    }

    async fn write(&mut self, data: &[u8]) -> pingora::Result<()> {
        crate::edge::tcp::write_flushed(&mut self.stream, data, "writing to upstream").await
    }

    /// The next response head (informational ones included: the caller skips them).
    pub async fn read_head(&mut self) -> pingora::Result<http1::ResponseHead> {
        loop {
            match http1::parse_response_head(&self.pending, MAX_RESPONSE_HEAD) {
                Ok(Some((head, used))) => {
                    self.pending.advance(used);
                    // Body bytes that came in the same read as the head move to a buffer of
                    // their own (none when there are none), so the read's buffer (~1.3 KiB with a
                    // provider's head) is freed now, before the stream makes what it keeps for
                    // its whole life, rather than once the first body piece has gone out. Freed
                    // then, it left holes in the heap that RSS kept: heaptrack shows the same
                    // live bytes either way, yet 15.5 rather than 14.2 KiB per idle stream (load
                    // harness, memory scenario).
                    self.pending = BytesMut::from(&self.pending[..]);
                    return self.start_body(head);
                }
                Ok(None) => {}
                Err(e) => return Err(invalid(e)),
            }
            if self.read_more().await? == 0 {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "upstream closed the connection before its response head",
                );
            }
            self.answered = true;
        }
    }

    fn start_body(&mut self, head: http1::ResponseHead) -> pingora::Result<http1::ResponseHead> {
        let informational =
            head.status.is_informational() && head.status != http::StatusCode::SWITCHING_PROTOCOLS;
        if !informational {
            let framing = http1::response_framing(&head, self.head_request).map_err(invalid)?;
            let hint = http1::KeepAliveHint::of(&head.fields);
            self.keep_alive = http1::keeps_alive(&head, &framing) && hint.allows_reuse();
            // `timeout=0` has just ruled reuse out: 0 is free to mean "not said".
            self.idle_timeout_hint = hint
                .timeout
                .map_or(0, |secs| secs.min(u64::from(u16::MAX)) as u16);
            // After a 101 the bytes belong to the new protocol (`into_parts`).
            if head.status != http::StatusCode::SWITCHING_PROTOCOLS {
                self.body = Some(BodyDecoder::new(framing));
            }
        }
        Ok(head)
    }

    /// The next piece of the response body; `None` at its end. Cancel-safe: bytes read are
    /// kept in the connection until returned.
    pub async fn read_body(&mut self) -> pingora::Result<Option<Bytes>> {
        loop {
            let Some(decoder) = self.body.as_mut() else {
                return Ok(None);
            };
            if decoder.is_done() {
                return Ok(None);
            }
            if !self.pending.is_empty() {
                let data = decoder.decode(&mut self.pending).map_err(invalid)?;
                let done = decoder.is_done();
                self.release_pending_if_empty();
                if !data.is_empty() {
                    return Ok(Some(data));
                }
                if done {
                    return Ok(None);
                }
            }
            if self.read_more().await? == 0 {
                if let Some(decoder) = self.body.as_mut() {
                    decoder.at_eof().map_err(invalid)?;
                }
                return Ok(None);
            }
        }
    }

    pub fn body_done(&self) -> bool {
        self.body.as_ref().is_none_or(BodyDecoder::is_done)
    }

    /// Whether the connection may carry another request: its request went whole, its response
    /// ended where its framing said, nothing more came, and neither side asked to close.
    pub fn reusable(&self) -> bool {
        self.keep_alive
            && !self.close_requested
            && !self.request_unfinished
            && self.pending.is_empty()
            && self.body.as_ref().is_some_and(|b| b.is_done())
    }

    /// How long the connection may wait in the pool: `configured` (the upstream's
    /// `pool_idle_timeout`), or less when the upstream said it closes idle connections sooner
    /// (`Keep-Alive: timeout=N`): then far enough short of that for a request sent at the end of
    /// the wait not to cross the upstream's close.
    pub fn pool_idle(&self, configured: Duration) -> Duration {
        match self.idle_timeout_hint {
            0 => configured,
            secs => configured.min(http1::idle_within(u64::from(secs))),
        }
    }

    /// The transport, for the pool.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// The transport and the bytes read past the last head (after a `101`: the other protocol's
    /// first bytes).
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.pending)
    }

    /// Reads what the socket has (waiting for something) into `pending`; 0 at end of stream.
    async fn read_more(&mut self) -> pingora::Result<usize> {
        crate::edge::tcp::read_into(&mut self.stream, &mut self.pending)
            .await
            .map_err(|e| Error::because(ErrorType::ReadError, "reading from upstream", e))
    }

    /// Drops the allocation behind an emptied `pending` (the pieces split off it keep theirs).
    fn release_pending_if_empty(&mut self) {
        // By emptiness, not capacity: once a piece is split off the end of a read sized to its
        // bytes, the empty rest has no capacity yet still shares (and keeps) that read's buffer.
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
    }
}

fn invalid(e: Http1Error) -> Box<Error> {
    let etype = match e {
        Http1Error::Truncated { .. } => ErrorType::ConnectionClosed,
        _ => ErrorType::InvalidHTTPHeader,
    };
    Error::explain(etype, e.to_string())
}
