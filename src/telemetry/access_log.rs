//! One JSON line per request on stdout: what an operator greps when a stream went wrong.

use super::line_sink;
use crate::json_object::JsonObject;
use crate::telemetry::METRICS;
#[cfg(test)]
use serde::Serialize;

/// One request's line. Written by [`JsonObject`], member by member in this order; the derived
/// `Serialize` (tests only) is the reference the line is checked against.
#[derive(Debug)]
#[cfg_attr(test, derive(Serialize))]
pub struct AccessRecord<'a> {
    pub ts: String,
    pub request_id: &'a str,
    /// `null` when unknown.
    pub client: Option<Client>,
    /// The trusted proxy that forwarded the request, when `client` is the one it named.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub via: Option<std::net::SocketAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    /// The caller, when the route authenticates: never the key itself.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub user: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub key_id: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub tenant: Option<&'a str>,
    pub status: u16,
    pub stream: bool,
    pub outcome: Option<&'a str>,
    pub duration_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub bytes_sent: u64,
    pub heartbeats: u64,
    pub error: Option<&'a str>,
    /// Why Sluice refused the request before it went upstream (`invalid_key`, `user_streams`…).
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub refused: Option<&'a str>,
    pub model: Option<&'a str>,
    #[cfg_attr(test, serde(flatten))]
    pub usage: Option<&'a crate::usage::record::Usage>,
    pub usage_source: Option<&'static str>,
}

/// Who sent a request: the connection's peer, or the client a trusted proxy forwarded it for
/// (`server.trusted_proxies`; its port is not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Peer(std::net::SocketAddr),
    Forwarded(std::net::IpAddr),
}

#[cfg(test)]
impl Serialize for Client {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Client::Peer(addr) => serializer.collect_str(addr),
            Client::Forwarded(ip) => serializer.collect_str(ip),
        }
    }
}

impl AccessRecord<'_> {
    pub fn write(&self) {
        let mut line = self.line();
        line.push(b'\n');
        if !line_sink::STDOUT.push(&line) {
            METRICS.access_log_dropped.inc();
        }
    }

    fn line(&self) -> Vec<u8> {
        let mut line = JsonObject::with_capacity(1024);
        line.str("ts", &self.ts).str("request_id", self.request_id);
        match self.client {
            Some(Client::Forwarded(ip)) => line.ip("client", ip),
            Some(Client::Peer(addr)) => line.addr_or_null("client", Some(addr)),
            None => line.addr_or_null("client", None),
        };
        line.addr_if_some("via", self.via)
            .str("method", self.method)
            .str("path", self.path)
            .str("route", self.route)
            .str("upstream", self.upstream)
            .str_if_some("user", self.user)
            .str_if_some("key_id", self.key_id)
            .str_if_some("tenant", self.tenant)
            .u64("status", self.status.into())
            .bool("stream", self.stream)
            .str_or_null("outcome", self.outcome)
            .f64("duration_ms", self.duration_ms)
            .f64_or_null("ttfb_ms", self.ttfb_ms)
            .u64("bytes_sent", self.bytes_sent)
            .u64("heartbeats", self.heartbeats)
            .str_or_null("error", self.error)
            .str_if_some("refused", self.refused)
            .str_or_null("model", self.model);
        if let Some(usage) = self.usage {
            usage.write_members(&mut line);
        }
        line.str_or_null("usage_source", self.usage_source);
        line.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::record::arbitrary_usage;
    use proptest::prelude::*;

    const SOURCES: [&str; 3] = ["stream", "none", "odd \"source\"\n"];

    proptest! {
        /// The hand-written line is the one serde_json writes for the record, byte for byte.
        #[test]
        fn the_line_is_what_serde_json_writes(
            text in proptest::collection::vec(any::<String>(), 6),
            maybe in proptest::collection::vec(proptest::option::of(any::<String>()), 7),
            peer in proptest::option::of(any::<std::net::SocketAddr>()),
            forwarded in proptest::option::of(any::<std::net::IpAddr>()),
            status in any::<u16>(),
            stream in any::<bool>(),
            duration_ms in any::<f64>(),
            ttfb_ms in proptest::option::of(any::<f64>()),
            bytes_sent in any::<u64>(),
            heartbeats in any::<u64>(),
            usage in proptest::option::of(arbitrary_usage()),
            source in proptest::option::of(0..SOURCES.len()),
        ) {
            let record = AccessRecord {
                ts: text[0].clone(),
                request_id: &text[1],
                client: forwarded.map(Client::Forwarded).or(peer.map(Client::Peer)),
                via: forwarded.and(peer),
                method: &text[2],
                path: &text[3],
                route: &text[4],
                upstream: &text[5],
                user: maybe[0].as_deref(),
                key_id: maybe[1].as_deref(),
                status,
                stream,
                outcome: maybe[2].as_deref(),
                duration_ms,
                ttfb_ms,
                bytes_sent,
                heartbeats,
                error: maybe[3].as_deref(),
                refused: maybe[4].as_deref(),
                model: maybe[5].as_deref(),
                tenant: maybe[6].as_deref(),
                usage: usage.as_ref(),
                usage_source: source.map(|i| SOURCES[i]),
            };
            let reference = serde_json::to_vec(&record).unwrap();
            prop_assert_eq!(
                String::from_utf8(record.line()).unwrap(),
                String::from_utf8(reference).unwrap()
            );
        }
    }
}
