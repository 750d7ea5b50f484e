//! Sluice's `ProxyHttp`: thin phase methods. `request_filter` hands every routed request to the
//! relay (which writes the whole response) and `logging` records what happened.

use super::admission;
use super::relay;
use super::responses::{respond_error, respond_refusal, Finish};
use super::upstream::Upstreams;
use super::usage_sink::UsageSink;
use super::RequestCtx;
use crate::limits::Limiter;
use crate::provider::{Provider, ProxyError, ProxyErrorKind};
use crate::route::Router;
use crate::telemetry::{rfc3339_now, AccessRecord, METRICS};
use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;

/// Cheap to clone: every listener service shares the same routes, upstream pool and ledger.
#[derive(Clone)]
pub struct SluiceProxy {
    router: Arc<Router>,
    upstreams: Arc<Upstreams>,
    usage: Arc<UsageSink>,
    limiter: Limiter,
}

impl SluiceProxy {
    pub fn new(router: Router, upstreams: Upstreams, usage: UsageSink, limiter: Limiter) -> Self {
        SluiceProxy {
            router: Arc::new(router),
            upstreams: Arc::new(upstreams),
            usage: Arc::new(usage),
            limiter,
        }
    }
}

#[async_trait]
impl ProxyHttp for SluiceProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        ctx.request_id = crate::request_id::from_client(
            session
                .req_header()
                .headers
                .get(crate::request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        let down = session.as_downstream_mut();
        let finish = match self.router.route(&path) {
            Some(route) => {
                ctx.route = Some(route.clone());
                ctx.provider = route.provider.resolve(&path);
                match admission::identify(route, down.req_header(), ctx) {
                    Ok(()) => {
                        relay::handle(
                            &self.upstreams,
                            &self.usage,
                            &self.limiter,
                            route,
                            down,
                            ctx,
                        )
                        .await
                    }
                    Err(refusal) => respond_refusal(down, ctx, &refusal).await,
                }
            }
            None => {
                ctx.provider = Provider::Openai;
                let error =
                    ProxyError::new(ProxyErrorKind::NoRoute, format!("no route for {path}"));
                respond_error(down, ctx, &error).await
            }
        };
        if matches!(finish, Finish::Close) {
            session.set_keepalive(None);
        }
        Ok(true)
    }

    /// Never reached: `request_filter` always answers. Present because the trait requires it.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Error::e_explain(ErrorType::InternalError, "sluice relays in request_filter")
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
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
            ctx.usage_record = Some(record);
        }
        let route = ctx.route.as_ref().map(|r| r.name.as_str()).unwrap_or("");
        let usage = ctx.usage_record.as_ref();
        METRICS.request_done(route, ctx.status);
        let req = session.req_header();
        AccessRecord {
            ts: rfc3339_now(),
            request_id: &ctx.request_id,
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.to_string()),
            method: req.method.as_str(),
            path: req.uri.path(),
            route,
            upstream: ctx
                .route
                .as_ref()
                .map(|r| r.upstream.name.as_str())
                .unwrap_or(""),
            user: ctx.identity.as_ref().map(|i| i.user.as_str()),
            key_id: ctx.identity.as_ref().map(|i| i.key_id.as_str()),
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
