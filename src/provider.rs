//! Provider API formats: which one a route speaks, and how Sluice's own errors are written in it
//! (as a JSON response body, and as a terminal SSE event) so that each provider's official SDK
//! raises them as errors.

use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Chosen per request from the path.
    #[default]
    Auto,
    Openai,
    Anthropic,
    Gemini,
    /// Not an LLM provider: errors use a neutral shape, terminal events are `event: error`.
    None,
}

impl Provider {
    /// Resolves `auto` from the request path; other providers are returned as they are.
    pub fn resolve(self, path: &str) -> Provider {
        if self != Provider::Auto {
            return self;
        }
        if path.contains(":streamGenerateContent")
            || path.contains(":generateContent")
            || path.starts_with("/v1beta/")
        {
            Provider::Gemini
        } else if path.ends_with("/messages") || path.contains("/messages?") {
            Provider::Anthropic
        } else {
            Provider::Openai
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Auto => "auto",
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::None => "none",
        }
    }
}

/// An error Sluice itself reports to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub kind: ProxyErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyErrorKind {
    /// No route matches the request path.
    NoRoute,
    /// The request could not be read or is malformed.
    BadRequest,
    /// The upstream could not be reached or failed before its response head.
    UpstreamUnavailable,
    /// The upstream sent no response head within the route's idle timeout.
    UpstreamTimeout,
    /// The upstream went silent mid-stream for the route's idle timeout.
    UpstreamIdle,
    /// The stream reached the route's `max_duration`.
    MaxDuration,
    /// The upstream broke off mid-stream.
    UpstreamBroken,
    /// The route needs an API key and none, or an unknown one, was sent.
    Unauthorized,
    /// A concurrent-stream or request-rate limit refused the request.
    RateLimited,
    /// The request body is larger than the route's `max_request_body`.
    PayloadTooLarge,
    /// The client stopped sending its request body (`server.request_body_timeout`).
    RequestTimeout,
    /// The request head is larger than `server.max_request_header`.
    HeadersTooLarge,
    /// The request target is longer than a URI can be here (65,534 bytes).
    UriTooLong,
    /// A method Sluice does not proxy (`CONNECT`).
    MethodNotAllowed,
    /// A request framing Sluice does not decode (a transfer coding other than `chunked`).
    NotImplemented,
    /// Sluice is shutting down and the grace period for running requests is over.
    ShuttingDown,
    /// Sluice holds as many request bodies in memory as it may (`server.request_body_memory`).
    Overloaded,
}

impl ProxyErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ProxyErrorKind::NoRoute => 404,
            ProxyErrorKind::BadRequest => 400,
            ProxyErrorKind::Unauthorized => 401,
            ProxyErrorKind::RateLimited => 429,
            ProxyErrorKind::PayloadTooLarge => 413,
            ProxyErrorKind::RequestTimeout => 408,
            ProxyErrorKind::HeadersTooLarge => 431,
            ProxyErrorKind::UriTooLong => 414,
            ProxyErrorKind::MethodNotAllowed => 405,
            ProxyErrorKind::NotImplemented => 501,
            ProxyErrorKind::ShuttingDown | ProxyErrorKind::Overloaded => 503,
            ProxyErrorKind::UpstreamUnavailable | ProxyErrorKind::UpstreamBroken => 502,
            ProxyErrorKind::UpstreamTimeout
            | ProxyErrorKind::UpstreamIdle
            | ProxyErrorKind::MaxDuration => 504,
        }
    }

    /// Machine-readable code, stable across providers.
    pub fn code(self) -> &'static str {
        match self {
            ProxyErrorKind::NoRoute => "no_route",
            ProxyErrorKind::BadRequest => "bad_request",
            ProxyErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ProxyErrorKind::UpstreamTimeout => "upstream_timeout",
            ProxyErrorKind::UpstreamIdle => "upstream_idle_timeout",
            ProxyErrorKind::MaxDuration => "max_duration_exceeded",
            ProxyErrorKind::UpstreamBroken => "upstream_error",
            ProxyErrorKind::Unauthorized => "invalid_api_key",
            ProxyErrorKind::RateLimited => "rate_limit_exceeded",
            ProxyErrorKind::PayloadTooLarge => "request_too_large",
            ProxyErrorKind::RequestTimeout => "request_timeout",
            ProxyErrorKind::HeadersTooLarge => "request_header_too_large",
            ProxyErrorKind::UriTooLong => "uri_too_long",
            ProxyErrorKind::MethodNotAllowed => "method_not_allowed",
            ProxyErrorKind::NotImplemented => "not_implemented",
            ProxyErrorKind::ShuttingDown => "server_shutting_down",
            ProxyErrorKind::Overloaded => "server_overloaded",
        }
    }

    /// The provider's own error type closest in meaning.
    fn provider_type(self, provider: Provider) -> &'static str {
        match provider {
            Provider::Anthropic => match self {
                ProxyErrorKind::NoRoute => "not_found_error",
                ProxyErrorKind::BadRequest => "invalid_request_error",
                ProxyErrorKind::Unauthorized => "authentication_error",
                ProxyErrorKind::RateLimited => "rate_limit_error",
                ProxyErrorKind::PayloadTooLarge => "request_too_large",
                ProxyErrorKind::HeadersTooLarge
                | ProxyErrorKind::UriTooLong
                | ProxyErrorKind::MethodNotAllowed
                | ProxyErrorKind::NotImplemented => "invalid_request_error",
                ProxyErrorKind::UpstreamUnavailable
                | ProxyErrorKind::UpstreamBroken
                | ProxyErrorKind::ShuttingDown => "api_error",
                ProxyErrorKind::Overloaded => "overloaded_error",
                _ => "timeout_error",
            },
            Provider::Gemini => match self {
                ProxyErrorKind::NoRoute => "NOT_FOUND",
                ProxyErrorKind::BadRequest
                | ProxyErrorKind::PayloadTooLarge
                | ProxyErrorKind::HeadersTooLarge
                | ProxyErrorKind::UriTooLong
                | ProxyErrorKind::MethodNotAllowed => "INVALID_ARGUMENT",
                ProxyErrorKind::NotImplemented => "UNIMPLEMENTED",
                ProxyErrorKind::Unauthorized => "UNAUTHENTICATED",
                ProxyErrorKind::RateLimited => "RESOURCE_EXHAUSTED",
                ProxyErrorKind::UpstreamUnavailable
                | ProxyErrorKind::UpstreamBroken
                | ProxyErrorKind::ShuttingDown
                | ProxyErrorKind::Overloaded => "UNAVAILABLE",
                _ => "DEADLINE_EXCEEDED",
            },
            _ => match self {
                ProxyErrorKind::NoRoute => "invalid_request_error",
                ProxyErrorKind::BadRequest
                | ProxyErrorKind::Unauthorized
                | ProxyErrorKind::PayloadTooLarge
                | ProxyErrorKind::RequestTimeout
                | ProxyErrorKind::HeadersTooLarge
                | ProxyErrorKind::UriTooLong
                | ProxyErrorKind::MethodNotAllowed
                | ProxyErrorKind::NotImplemented => "invalid_request_error",
                // What OpenAI itself sends for a request-rate limit.
                ProxyErrorKind::RateLimited => "requests",
                _ => "server_error",
            },
        }
    }
}

impl ProxyError {
    pub fn new(kind: ProxyErrorKind, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            message: message.into(),
        }
    }

    /// The JSON body of an error response in the provider's format.
    pub fn json_body(&self, provider: Provider) -> String {
        let kind = self.kind;
        let value = match provider {
            Provider::Anthropic => json!({
                "type": "error",
                "error": { "type": kind.provider_type(provider), "message": self.message },
            }),
            Provider::Gemini => json!({
                "error": {
                    "code": kind.status(),
                    "message": self.message,
                    "status": kind.provider_type(provider),
                },
            }),
            _ => json!({
                "error": {
                    "message": self.message,
                    "type": kind.provider_type(provider),
                    "code": kind.code(),
                },
            }),
        };
        value.to_string()
    }

    /// A terminal SSE event carrying this error, which the provider's SDK raises as an error.
    /// OpenAI and Gemini SDKs read every `data:` payload and raise on an `error` object;
    /// Anthropic's SDK raises on `event: error`.
    pub fn sse_event(&self, provider: Provider) -> String {
        let body = self.json_body(provider);
        match provider {
            Provider::Openai | Provider::Gemini | Provider::Auto => format!("data: {body}\n\n"),
            Provider::Anthropic | Provider::None => format!("event: error\ndata: {body}\n\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn idle() -> ProxyError {
        ProxyError::new(ProxyErrorKind::UpstreamIdle, "upstream idle for 30s")
    }

    #[test]
    fn auto_resolves_from_path() {
        assert_eq!(Provider::Auto.resolve("/v1/messages"), Provider::Anthropic);
        assert_eq!(
            Provider::Auto.resolve("/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
            Provider::Gemini
        );
        assert_eq!(
            Provider::Auto.resolve("/v1/chat/completions"),
            Provider::Openai
        );
        assert_eq!(Provider::None.resolve("/v1/messages"), Provider::None);
    }

    #[test]
    fn openai_error_shape() {
        let v: Value = serde_json::from_str(&idle().json_body(Provider::Openai)).unwrap();
        assert_eq!(v["error"]["code"], "upstream_idle_timeout");
        assert_eq!(v["error"]["message"], "upstream idle for 30s");
        assert!(idle()
            .sse_event(Provider::Openai)
            .starts_with("data: {\"error\""));
    }

    #[test]
    fn anthropic_error_shape() {
        let v: Value = serde_json::from_str(&idle().json_body(Provider::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "timeout_error");
        let event = idle().sse_event(Provider::Anthropic);
        assert!(event.starts_with("event: error\ndata: {"));
        assert!(event.ends_with("}\n\n"));
    }

    #[test]
    fn auth_and_limit_errors_use_each_providers_own_types() {
        let denied = ProxyError::new(ProxyErrorKind::Unauthorized, "invalid API key");
        let limited = ProxyError::new(ProxyErrorKind::RateLimited, "too many streams");
        let openai: Value = serde_json::from_str(&limited.json_body(Provider::Openai)).unwrap();
        assert_eq!(openai["error"]["code"], "rate_limit_exceeded");
        let openai: Value = serde_json::from_str(&denied.json_body(Provider::Openai)).unwrap();
        assert_eq!(openai["error"]["code"], "invalid_api_key");
        let anthropic: Value =
            serde_json::from_str(&limited.json_body(Provider::Anthropic)).unwrap();
        assert_eq!(anthropic["error"]["type"], "rate_limit_error");
        let anthropic: Value =
            serde_json::from_str(&denied.json_body(Provider::Anthropic)).unwrap();
        assert_eq!(anthropic["error"]["type"], "authentication_error");
        let gemini: Value = serde_json::from_str(&limited.json_body(Provider::Gemini)).unwrap();
        assert_eq!(gemini["error"]["code"], 429);
        assert_eq!(gemini["error"]["status"], "RESOURCE_EXHAUSTED");
        let gemini: Value = serde_json::from_str(&denied.json_body(Provider::Gemini)).unwrap();
        assert_eq!(gemini["error"]["status"], "UNAUTHENTICATED");
    }

    #[test]
    fn too_large_errors_use_each_providers_own_types() {
        let big = ProxyError::new(ProxyErrorKind::PayloadTooLarge, "body over 10 bytes");
        assert_eq!(big.kind.status(), 413);
        let openai: Value = serde_json::from_str(&big.json_body(Provider::Openai)).unwrap();
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert_eq!(openai["error"]["code"], "request_too_large");
        let anthropic: Value = serde_json::from_str(&big.json_body(Provider::Anthropic)).unwrap();
        assert_eq!(anthropic["error"]["type"], "request_too_large");
        let gemini: Value = serde_json::from_str(&big.json_body(Provider::Gemini)).unwrap();
        assert_eq!(gemini["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(gemini["error"]["code"], 413);
        let head = ProxyError::new(ProxyErrorKind::HeadersTooLarge, "head over 10 bytes");
        assert_eq!(head.kind.status(), 431);
        let gemini: Value = serde_json::from_str(&head.json_body(Provider::Gemini)).unwrap();
        assert_eq!(gemini["error"]["status"], "INVALID_ARGUMENT");
    }

    #[test]
    fn gemini_and_none_shapes() {
        let v: Value = serde_json::from_str(&idle().json_body(Provider::Gemini)).unwrap();
        assert_eq!(v["error"]["code"], 504);
        assert_eq!(v["error"]["status"], "DEADLINE_EXCEEDED");
        assert!(idle()
            .sse_event(Provider::None)
            .starts_with("event: error\n"));
    }
}
