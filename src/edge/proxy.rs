//! Sluice's HTTP application: reads each request head, hands routed requests to the relay (which
//! writes the whole response) and records what happened. Pingora's `ProxyHttp` layer is not
//! used: its per-request session and phase futures cost ~34 KiB per open stream, and the relay
//! does everything those phases would do.

use super::admission;
use super::downstream::RequestSession;
use super::drain;
use super::headers::X_FORWARDED_FOR;
use super::listener::ConnectionTimeouts;
use super::relay;
use super::responses::{
    respond_error, respond_refusal, respond_to_unreadable_head, Finish, KeptAlive,
};
use super::timer;
use super::upstream::Upstreams;
use super::usage_sink::UsageSink;
use super::RequestCtx;
use crate::client_ip::TrustedProxies;
use crate::limits::Limiter;
use crate::provider::{Provider, ProxyError, ProxyErrorKind};
use crate::route::Router;
use crate::sse::StreamOutcome;
use crate::telemetry::{rfc3339_now, AccessRecord, Client, METRICS};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// One for all client listeners: the routes, the upstream pools, the ledger and the limits.
pub struct SluiceProxy {
    router: Router,
    upstreams: Arc<Upstreams>,
    usage: UsageSink,
    limiter: Limiter,
    /// Read by the listeners and HTTP/2 connections: here, every connection's task reaches them
    /// through the `Arc` it holds anyway, rather than keep its own copy.
    pub(super) timeouts: ConnectionTimeouts,
    /// `server.trusted_proxies`: peers whose `X-Forwarded-For` names the client.
    trusted_proxies: TrustedProxies,
}

impl SluiceProxy {
    pub fn new(
        router: Router,
        upstreams: Arc<Upstreams>,
        usage: UsageSink,
        limiter: Limiter,
        timeouts: ConnectionTimeouts,
        trusted_proxies: TrustedProxies,
    ) -> Self {
        SluiceProxy {
            router,
            upstreams,
            usage,
            limiter,
            timeouts,
            trusted_proxies,
        }
    }

    /// Answers one request that Pingora has read the head of; `Finish::Close` when the client
    /// connection cannot be reused.
    async fn answer(&self, session: &mut RequestSession, ctx: &mut RequestCtx) -> Finish {
        let down = session.get();
        ctx.method = Some(down.req_header().method.clone());
        // Routed, logged and read for its provider and format as the upstream will resolve it.
        ctx.path = crate::route::match_path(down.req_header().uri.path()).into_owned();
        if down.req_header().method == http::Method::CONNECT {
            let error = ProxyError::new(
                ProxyErrorKind::MethodNotAllowed,
                "CONNECT is not proxied by Sluice",
            );
            return respond_error(down, ctx, &error).await;
        }
        ctx.request_id = crate::request_id::from_client(
            down.req_header()
                .headers
                .get(crate::request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        if !down.is_http2() {
            let head = down.req_header();
            if let Err(error) = relay::check_target(head).and_then(|()| relay::check_host(head)) {
                return respond_error(down, ctx, &error).await;
            }
        }
        match self.router.route(&ctx.path) {
            Some(route) => {
                ctx.route = Some(route.clone());
                ctx.provider = route.provider.resolve(&ctx.path);
                match admission::identify(route, down.req_header(), ctx) {
                    Ok(()) => {
                        relay::handle(
                            &self.upstreams,
                            &self.usage,
                            &self.limiter,
                            route,
                            session,
                            ctx,
                            self.timeouts.request_body,
                        )
                        .await
                    }
                    Err(refusal) => respond_refusal(down, ctx, &refusal).await,
                }
            }
            None => {
                ctx.provider = Provider::Openai;
                let error = ProxyError::new(
                    ProxyErrorKind::NoRoute,
                    format!("no route for {}", ctx.path),
                );
                respond_error(down, ctx, &error).await
            }
        }
    }

    /// Writes the usage record a stream request may still owe, the metrics and the access log.
    /// Not from the session: a stream's has left it by now (`Downstream::H1`, `Downstream::H2`).
    async fn record(&self, ctx: &mut RequestCtx) {
        // Event streams wrote their record before their end; a stream request that never got
        // one (an error before the head, a non-stream answer) is recorded here.
        // A refused request never reached a provider: it has no usage to record.
        if ctx.stream_request
            && ctx.usage_record.is_none()
            && ctx.route.is_some()
            && ctx.refused.is_none()
        {
            let record = UsageSink::record_for(ctx, None, 0);
            self.usage.record(&record, false).await;
            ctx.usage_record = Some(Box::new(record));
        }
        let route = ctx.route.as_ref().map(|r| r.name.as_str()).unwrap_or("");
        let usage = ctx.usage_record.as_deref();
        METRICS.request_done(route, ctx.status);
        AccessRecord {
            ts: rfc3339_now(),
            request_id: &ctx.request_id,
            client: match ctx.forwarded_client {
                Some(ip) => Some(Client::Forwarded(ip)),
                None => ctx.client_addr.map(Client::Peer),
            },
            via: ctx.forwarded_client.and(ctx.client_addr),
            method: ctx.method.as_ref().map_or("", |m| m.as_str()),
            path: &ctx.path,
            route,
            upstream: ctx
                .route
                .as_ref()
                .map(|r| r.upstream.name.as_str())
                .unwrap_or(""),
            user: ctx.identity.as_ref().map(|i| i.user.as_str()),
            key_id: ctx.identity.as_ref().map(|i| i.key_id.as_str()),
            tenant: ctx.identity.as_ref().and_then(|i| i.tenant.as_deref()),
            status: ctx.status,
            stream: ctx.event_stream,
            outcome: ctx.outcome.map(|o| o.as_str()),
            duration_ms: ctx.duration_ms(),
            ttfb_ms: ctx
                .first_byte
                .map(|t| t.duration_since(ctx.started).as_secs_f64() * 1000.0),
            bytes_sent: ctx.bytes_sent,
            heartbeats: ctx.heartbeats,
            error: ctx.error.as_deref(),
            refused: ctx.refused,
            model: usage.and_then(|u| u.model.as_deref()),
            usage: usage.map(|u| &u.usage),
            usage_source: usage.map(|u| u.usage_source),
        }
        .write();
    }
}

impl SluiceProxy {
    /// One request on `down`, from its head to its end; the stream back when the connection is
    /// kept alive. `connection_socket`: an HTTP/2 connection's socket. `client_addr` is the peer's address (for the access log and
    /// `X-Forwarded-For`): Sluice's own accept loop passes the one `accept` returned rather than
    /// keep a ~400-byte Pingora `SocketDigest` per connection to carry it.
    ///
    /// A plain fn returning a boxed `async move` block, not an `async fn`: an async fn (and
    /// `async_trait`) keeps each by-value argument in its state for as long as it runs, and every
    /// open stream's state would then keep a 680-byte session. The block captures the session
    /// boxed (`RequestSession`), which an HTTP/1.1 stream frees once it has the connection (an
    /// HTTP/2 response once it has its stream).
    pub(super) fn serve_request<'app, 'watch, 'fut>(
        self: &'app Arc<Self>,
        down: ServerSession,
        (client_addr, connection_socket): (Option<SocketAddr>, Option<std::os::fd::RawFd>),
        shutdown: &'watch ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<KeptAlive>> + Send + 'fut>>
    where
        'app: 'fut,
        'watch: 'fut,
    {
        let mut session = RequestSession::new(down);
        Box::pin(async move {
            let down = session.get();
            let mut shutdown = shutdown.clone();
            // The whole head within the keep-alive: Pingora bounds each read only, so a client
            // sending a byte now and then would hold the connection for as long as it liked.
            let head = timer::timeout(self.timeouts.keepalive, down.read_request());
            let read = tokio::select! {
                // Biased: a request already buffered is answered even when shutdown has begun.
                biased;
                read = head => match read {
                    Ok(read) => read,
                    Err(timer::Elapsed) => return None,
                },
                // A connection still waiting for (the rest of) a request is closed once shutdown
                // has begun and the request's grace is over.
                _ = drain::request_arrival_over(&mut shutdown) => return None,
            };
            let mut ctx = RequestCtx::new(client_addr);
            ctx.connection_socket = connection_socket;
            match read {
                Ok(true) => {}
                // The client closed an idle kept-alive connection.
                Ok(false) => return None,
                Err(e) => {
                    if matches!(e.etype, pingora::ErrorType::InvalidHTTPHeader) {
                        // An id of its own for the answer and the access log: a client's, if it
                        // sent one, is in the head that was not read.
                        ctx.request_id = crate::request_id::generate();
                        let error = unreadable_head_error(&e);
                        respond_to_unreadable_head(down, &mut ctx, &error).await;
                        self.record(&mut ctx).await;
                    }
                    down.shutdown().await;
                    return None;
                }
            }
            if *shutdown.borrow() {
                down.set_keepalive(None);
            }
            if let (false, Some(peer)) = (self.trusted_proxies.is_empty(), client_addr) {
                let forwarded_for = down.req_header().headers.get_all(X_FORWARDED_FOR);
                ctx.forwarded_client = self
                    .trusted_proxies
                    .client_of(peer.ip(), forwarded_for.iter().map(|v| v.as_bytes()));
            }
            let finish = self.answer(&mut session, &mut ctx).await;
            // Once shutdown has begun a connection carries no further request, not even one the
            // client pipelined behind this one (it would go upstream after the grace).
            let closing = *shutdown.borrow();
            self.record(&mut ctx).await;
            let no_orderly_end = ctx.outcome == Some(StreamOutcome::ClientDisconnect)
                || ctx.write_cut
                || matches!(finish, Finish::Cut);
            // The request's slot and in-flight count end here, not when the connection does.
            drop(ctx);
            if no_orderly_end {
                // Nobody reads an orderly end (a last chunk, a FIN after it), a write was cut
                // midway, or the response was cut and must not be ended: dropping the session
                // closes the socket without writing, which also counts when thousands of clients
                // leave at once.
                return None;
            }
            match finish {
                // The connection (`Downstream::H1`) or the HTTP/2 stream (`Downstream::H2`) left
                // the session for the response, and a response that failed there has had its
                // connection dropped or its stream reset.
                Finish::Handed(kept) => return kept.filter(|_| !closing),
                _ if session.handed() => return None,
                _ => {}
            }
            let down = session.get();
            if closing || matches!(finish, Finish::Close) {
                // `finish` then shuts the connection down in order (FIN, or END_STREAM on h2).
                down.set_keepalive(None);
            }
            let (stream, read_ahead) = session.finish().await.ok().flatten()?.into_parts();
            Some(KeptAlive {
                stream,
                read_ahead: read_ahead.unwrap_or_default(),
            })
        })
    }
}

/// What a client is told (and the access log keeps) of a request head Pingora refused: the
/// error's cause when it has one (httparse's "invalid header name", "too many headers"…, the
/// `http` crate's "invalid uri character"), never its context. Pingora's context can be the
/// request itself: up to 2 KiB of a head it could not parse, keys included, or a whole target
/// it could not build a URI from (`?key=…` and all), which is only measured.
fn unreadable_head_error(e: &pingora::Error) -> ProxyError {
    if let Some(cause) = &e.cause {
        return ProxyError::new(
            ProxyErrorKind::BadRequest,
            format!("malformed request head: {cause}"),
        );
    }
    let target = e
        .context
        .as_ref()
        .and_then(|context| context.as_str().strip_prefix(INVALID_URI));
    match target {
        Some(target) if target.len() > MAX_TARGET => ProxyError::new(
            ProxyErrorKind::UriTooLong,
            // At least: a target that is not UTF-8 is in the context with its bad bytes replaced.
            format!("the request target is over the longest taken ({MAX_TARGET} bytes)"),
        ),
        Some(_) => ProxyError::new(
            ProxyErrorKind::BadRequest,
            "the request target is not a valid URI",
        ),
        None => ProxyError::new(ProxyErrorKind::BadRequest, "malformed request head"),
    }
}

/// How Pingora's context begins for a target it could make no URI of (`pingora-http`), followed
/// by the target.
const INVALID_URI: &str = "invalid uri ";
/// The longest URI the `http` crate takes.
const MAX_TARGET: usize = u16::MAX as usize - 1;
