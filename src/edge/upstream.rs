//! Connections to upstreams: peers built from the config, Pingora's connector and its pool.

use crate::provider::{ProxyError, ProxyErrorKind};
use crate::route::{Scheme, UpstreamSpec};
use crate::telemetry::METRICS;
use pingora::connectors::http::Connector;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::time::Duration;

pub struct Upstreams {
    connector: Connector,
    /// Where the built-in demo upstream listens, when the config uses one.
    demo_addr: Option<SocketAddr>,
}

impl Upstreams {
    pub fn new(demo_addr: Option<SocketAddr>) -> Self {
        Upstreams {
            connector: Connector::new(None),
            demo_addr,
        }
    }

    async fn resolve(&self, spec: &UpstreamSpec) -> Result<SocketAddr, ProxyError> {
        let target = &spec.target;
        if target.scheme == Scheme::Demo {
            return self.demo_addr.ok_or_else(|| {
                ProxyError::new(
                    ProxyErrorKind::UpstreamUnavailable,
                    "demo upstream not running",
                )
            });
        }
        if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, target.port));
        }
        let unavailable = |detail: String| {
            ProxyError::new(
                ProxyErrorKind::UpstreamUnavailable,
                format!(
                    "cannot resolve upstream {} ({}): {detail}",
                    spec.name, target.host
                ),
            )
        };
        tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .next()
            .ok_or_else(|| unavailable("no address".into()))
    }

    /// A connection to the upstream, reused from the pool when one is idle there.
    pub async fn connect(
        &self,
        spec: &UpstreamSpec,
    ) -> Result<(UpstreamSession, HttpPeer), ProxyError> {
        let addr = self.resolve(spec).await?;
        let mut peer = HttpPeer::new(addr, spec.target.is_tls(), spec.target.host.clone());
        peer.options.connection_timeout = Some(spec.connect_timeout);
        peer.options.total_connection_timeout = Some(spec.connect_timeout);
        peer.options.idle_timeout = Some(spec.pool_idle_timeout);
        if !spec.tls_verify {
            peer.options.verify_cert = false;
            peer.options.verify_hostname = false;
        }
        match self.connector.get_http_session(&peer).await {
            Ok((session, _reused)) => Ok((session, peer)),
            Err(e) => {
                METRICS
                    .upstream_errors
                    .with_label_values(&[&spec.name, "connect"])
                    .inc();
                Err(ProxyError::new(
                    ProxyErrorKind::UpstreamUnavailable,
                    format!("cannot connect to upstream {}: {}", spec.name, e),
                ))
            }
        }
    }

    /// Returns a connection whose response ended properly to the pool.
    pub async fn release(&self, session: UpstreamSession, peer: &HttpPeer, idle: Duration) {
        self.connector
            .release_http_session(session, peer, Some(idle))
            .await;
    }
}
