//! One upstream connection as the relay sees it: Sluice's own HTTP/1.1 connection, or a Pingora
//! client session for upstreams that may speak HTTP/2.

use super::h1::H1Connection;
use super::upstream_error;
use crate::edge::headers::UpstreamHead;
use crate::http1::{Fields, ResponseHead};
use bytes::Bytes;
use futures_util::FutureExt;
use pingora::connectors::http::Connector;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;

/// Its errors are worded as the upstream's (`upstream_error`): a 502's message quotes them.
pub enum UpstreamConn {
    H1 {
        conn: H1Connection,
        /// Where it goes back to in the idle pool.
        pool_key: u64,
    },
    /// `http2: true` upstreams: HTTP/2 (or HTTP/1.1 when the server declined it by ALPN).
    Pingora(Box<PingoraConn>),
}

pub struct PingoraConn {
    /// `None` only once given back (`into_parts`) or while dropped.
    session: Option<HttpSession>,
    /// Where it goes back to in Pingora's pool.
    pub peer: HttpPeer,
    /// False once its request's body will not be sent whole.
    pub reusable: bool,
    /// The upstream's HTTP/2 generation it was made in, and the upstream's current one
    /// (`Upstreams::retire_http2`).
    pub generation: u64,
    pub current_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Where an HTTP/2 stream dropped before its end goes back (see `Drop`), and the upstream's
    /// `pool_idle_timeout`.
    connector: std::sync::Arc<Connector>,
    pool_idle: Duration,
}

impl PingoraConn {
    pub fn new(
        session: HttpSession,
        peer: HttpPeer,
        generation: u64,
        current_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
        connector: std::sync::Arc<Connector>,
        pool_idle: Duration,
    ) -> Self {
        PingoraConn {
            session: Some(session),
            peer,
            reusable: true,
            generation,
            current_generation,
            connector,
            pool_idle,
        }
    }

    pub fn session(&mut self) -> &mut HttpSession {
        self.session
            .as_mut()
            .expect("a connection's session is there until it is given back")
    }

    fn is_http2(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.as_http2().is_some())
    }

    /// Its connection gets no new stream.
    pub fn retired(&self) -> bool {
        self.current_generation
            .load(std::sync::atomic::Ordering::Acquire)
            != self.generation
    }

    /// The session and its peer, to give back to Pingora's pool: this no longer does.
    pub fn into_parts(mut self) -> (HttpSession, HttpPeer) {
        let session = self
            .session
            .take()
            .expect("a connection's session is there until it is given back");
        (session, self.peer.clone())
    }
}

/// An HTTP/2 stream that did not end well (reset upstream, client gone, an error anywhere on
/// the way) goes back to Pingora rather than being dropped on its own: the drop resets the
/// stream, but its connection, shared, stayed in Pingora's list of connections in use for good,
/// never closed after its idle time once its last stream was gone (an audit found 116 such
/// connections left open after 150 streams reset by their upstream). Given back, it goes on
/// carrying its other streams, and closes after `pool_idle_timeout` (at once when retired) once
/// idle. An HTTP/1.1 session (an upstream that declined HTTP/2) is just dropped: that closes it.
impl Drop for PingoraConn {
    fn drop(&mut self) {
        if !self.is_http2() {
            return;
        }
        let Some(session) = self.session.take() else {
            return;
        };
        // Pingora starts an idle connection's timer on the current runtime: without one (a
        // process tearing down) the session is just dropped, its stream reset.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let idle = if self.retired() {
            Duration::ZERO
        } else {
            self.pool_idle
        };
        // An HTTP/2 session goes back at once: Pingora's release has nothing to wait for.
        let released = self
            .connector
            .release_http_session(session, &self.peer, Some(idle))
            .now_or_never();
        if released.is_none() {
            log::debug!("an HTTP/2 upstream session could not be given back at once; dropped");
        }
    }
}

impl UpstreamConn {
    pub fn is_http2(&self) -> bool {
        matches!(self, UpstreamConn::Pingora(p) if p.is_http2())
    }

    /// A pooled HTTP/1.1 connection that failed before any byte of an answer
    /// ([`H1Connection::closed_unanswered_after_reuse`]). HTTP/2 upstreams are Pingora's.
    pub fn closed_unanswered_after_reuse(&self) -> bool {
        matches!(self, UpstreamConn::H1 { conn, .. } if conn.closed_unanswered_after_reuse())
    }

    /// The request's body will not be sent whole (the upstream answered early): the connection
    /// does not go back to a pool.
    pub fn forbid_reuse(&mut self) {
        match self {
            UpstreamConn::H1 { conn, .. } => conn.forbid_reuse(),
            UpstreamConn::Pingora(p) => p.reusable = false,
        }
    }

    /// Sends the request head (`head`, made from the client's head `client`) and the first
    /// part of the body (all of it when `complete`).
    pub async fn send_head(
        &mut self,
        head: &UpstreamHead,
        client: &http::HeaderMap,
        body: Bytes,
        complete: bool,
    ) -> pingora::Result<()> {
        let sent = match self {
            UpstreamConn::H1 { conn, .. } => {
                let target = head.target.as_str();
                let fields = head.fields(client);
                conn.send_head(&head.method, target, fields, &body, complete)
                    .await
            }
            UpstreamConn::Pingora(p) => {
                let mut head = head.to_request_header(client);
                if p.is_http2() {
                    // HTTP/2 frames the body itself and forbids the header.
                    head.remove_header(&http::header::TRANSFER_ENCODING);
                }
                p.session().write_request_header(Box::new(head)).await?;
                if !body.is_empty() {
                    p.session().write_request_body(body, complete).await?;
                }
                if complete {
                    p.session().finish_request_body().await?;
                }
                Ok(())
            }
        };
        sent.map_err(upstream_error)
    }

    /// More of the request body.
    pub async fn send_body(&mut self, data: Bytes) -> pingora::Result<()> {
        let sent = match self {
            UpstreamConn::H1 { conn, .. } => conn.send_body(&data).await,
            UpstreamConn::Pingora(p) => p
                .session()
                .write_request_body(data, false)
                .await
                .map(|_| ()),
        };
        sent.map_err(upstream_error)
    }

    pub async fn finish_body(&mut self) -> pingora::Result<()> {
        let sent = match self {
            UpstreamConn::H1 { conn, .. } => conn.finish_body().await,
            UpstreamConn::Pingora(p) => p.session().finish_request_body().await,
        };
        sent.map_err(upstream_error)
    }

    /// The final response head: informational ones (`100 Continue`, `103 Early Hints`) are
    /// skipped, `101` is final.
    pub async fn read_final_head(&mut self) -> pingora::Result<ResponseHead> {
        loop {
            let head = match self {
                UpstreamConn::H1 { conn, .. } => conn.read_head().await.map_err(upstream_error)?,
                UpstreamConn::Pingora(p) => {
                    p.session()
                        .read_response_header()
                        .await
                        .map_err(upstream_error)?;
                    let head = p
                        .session()
                        .response_header()
                        .expect("response header was read");
                    // HTTP/2 has no reason phrase; an upstream that declined HTTP/2 may send one.
                    let reason = head
                        .get_reason_phrase()
                        .filter(|r| *r != head.status.canonical_reason().unwrap_or_default())
                        .map(str::to_owned);
                    // `version` may be HTTP/2 here, unlike from Sluice's parser: nothing past this
                    // point reads it.
                    let fields = head
                        .headers
                        .iter()
                        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
                    ResponseHead {
                        status: head.status,
                        version: head.version,
                        reason,
                        fields: Fields::from_pairs(fields),
                    }
                }
            };
            if !head.status.is_informational()
                || head.status == http::StatusCode::SWITCHING_PROTOCOLS
            {
                return Ok(head);
            }
        }
    }

    /// The next piece of the response body, `None` at its end. Cancel-safe.
    ///
    /// Every open stream's state has room for this future while it waits. By `-Zprint-type-sizes`
    /// (Pingora 0.9.1), Pingora's session-level read is 240 bytes (sized by its HTTP/1.1 client),
    /// its HTTP/2 read 96, and ours 56. Any other Pingora session (HTTP/1.1, when an `http2`
    /// upstream declined HTTP/2) is boxed: one allocation per call, pending ones included.
    pub async fn read_body(&mut self) -> pingora::Result<Option<Bytes>> {
        let read = match self {
            UpstreamConn::H1 { conn, .. } => conn.read_body().await,
            UpstreamConn::Pingora(p) => match p.session() {
                HttpSession::H2(h2) => h2.read_response_body().await,
                other => Box::pin(other.read_response_body()).await,
            },
        };
        read.map_err(upstream_error)
    }

    /// The response body has fully arrived.
    pub fn body_done(&mut self) -> bool {
        match self {
            UpstreamConn::H1 { conn, .. } => conn.body_done(),
            UpstreamConn::Pingora(p) => p.session().response_done(),
        }
    }
}
