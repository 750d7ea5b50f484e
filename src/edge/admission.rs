//! Identify and admit: who is calling (401 when a route needs a key and none is valid), and
//! whether a limit allows the request (429 with `Retry-After` and `x-ratelimit-*-streams`).
//! Both happen before anything is sent upstream.

use super::RequestCtx;
use crate::auth::AuthError;
use crate::limits::{Admission, Claim, Limiter, Rejection};
use crate::provider::{ProxyError, ProxyErrorKind};
use crate::route::Route;
use crate::telemetry::METRICS;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit-streams");
const REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining-streams");

/// A refusal: the error for the client and the headers that go with it.
pub struct Refusal {
    pub error: ProxyError,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Sets `ctx.identity` from the request's key, as the route's auth mode says.
pub fn identify(route: &Route, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<(), Refusal> {
    match route.auth.authenticate(&req.headers, req.uri.query()) {
        Ok(identity) => {
            ctx.identity = identity;
            Ok(())
        }
        Err(e) => {
            let reason = match e {
                AuthError::MissingKey => "missing_key",
                AuthError::UnknownKey => "invalid_key",
            };
            METRICS.limits.rejected(&route.name, reason);
            ctx.refused = Some(reason);
            Err(Refusal {
                error: ProxyError::new(ProxyErrorKind::Unauthorized, e.to_string()),
                headers: Vec::new(),
            })
        }
    }
}

/// Takes the request's rate token and, for a stream, its slot (kept in `ctx.lease`).
pub async fn admit(limiter: &Limiter, route: &Route, ctx: &mut RequestCtx) -> Result<(), Refusal> {
    let identity = ctx.identity.as_ref();
    let mut limits = route.limits.clone();
    if let Some(max) = identity.and_then(|i| i.max_streams) {
        limits.per_key_streams = Some(max);
    }
    let claim = Claim {
        user: identity.map(|i| i.user.as_str()),
        key_id: identity.map(|i| i.key_id.as_str()),
        limits: &limits,
        wants_stream: ctx.stream_request || ctx.may_stream,
    };
    match limiter.admit(&claim).await {
        Ok(Admission {
            lease,
            streams_limit,
            streams_remaining,
        }) => {
            ctx.lease = lease;
            ctx.limit_headers = stream_headers(streams_limit, streams_remaining);
            Ok(())
        }
        Err(rejection) => {
            METRICS.limits.rejected(&route.name, rejection.reason());
            ctx.refused = Some(rejection.reason());
            Err(refusal(&rejection))
        }
    }
}

fn refusal(rejection: &Rejection) -> Refusal {
    let mut headers = vec![(
        http::header::RETRY_AFTER,
        HeaderValue::from(rejection.retry_after_secs()),
    )];
    if !matches!(rejection, Rejection::UserRate { .. }) {
        headers.extend(stream_headers(Some(rejection.limit()), Some(0)));
    }
    Refusal {
        error: ProxyError::new(ProxyErrorKind::RateLimited, rejection.message()),
        headers,
    }
}

fn stream_headers(limit: Option<u32>, remaining: Option<u32>) -> Vec<(HeaderName, HeaderValue)> {
    match (limit, remaining) {
        (Some(limit), Some(remaining)) => vec![
            (LIMIT_HEADER, HeaderValue::from(limit)),
            (REMAINING_HEADER, HeaderValue::from(remaining)),
        ],
        _ => Vec::new(),
    }
}
