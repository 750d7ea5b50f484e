//! Connections to upstreams: peers built from the config, Sluice's own HTTP/1.1 connections and
//! idle pool (`h1`, `pool`), and Pingora's connector for upstreams that may speak HTTP/2.
//!
//! https upstreams are verified (unless `tls_verify: false`) against their `ca_file`, else the
//! system roots, else — on a machine with no CA store — the bundled Mozilla roots. The TCP
//! connect and the TLS handshake have their own timeouts; `http2` offers HTTP/2 (by ALPN over
//! TLS, by prior knowledge over cleartext), and pooled HTTP/2 connections carry many streams.

mod conn;
mod dns;
mod h1;
#[cfg(test)]
#[path = "tests.rs"]
mod h1_pool_tests;
mod pool;

pub use conn::{PingoraConn, UpstreamConn};
pub use h1::H1Connection;

use crate::provider::{ProxyError, ProxyErrorKind};
use crate::route::{Router, Scheme, UpstreamSpec};
use crate::telemetry::METRICS;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::connectors::{ConnectorOptions, L4Connect, TransportConnector};
use pingora::listeners::ALPN;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::tls::CaType;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::{HttpPeer, PeerOptions};
use pingora::utils::tls::{parse_x509, WrappedX509};
use pingora::{Error, ErrorSource, ErrorType};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Concurrent streams Sluice opens on one pooled HTTP/2 upstream connection (the server's own
/// `SETTINGS_MAX_CONCURRENT_STREAMS` still applies).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// How much of one stream's body an HTTP/2 upstream may send ahead of Sluice's reading it
/// (`SETTINGS_INITIAL_WINDOW_SIZE`): what a stream whose client reads slowly holds. The
/// connection's window has room for every stream's: with Pingora's default (8 MiB for both), one
/// or two clients that stopped reading used the connection's whole window, and every other
/// stream on the connection stalled until they were cut (relay audit: 20 of 20 streams ended by
/// their idle timeout while the upstream was sending). 1 MiB a stream still moves 10 MB/s
/// over a 100 ms round trip.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONNECTION_WINDOW: u32 = H2_STREAM_WINDOW * H2_STREAMS_PER_CONNECTION as u32;

/// Whether [`Upstreams::connect`] may take an idle pooled connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pooled {
    Take,
    /// A new connection: a request sent again after a pooled one closed on it (another pooled
    /// connection of the same upstream may be as stale, if it restarted).
    Skip,
}

pub struct Upstreams {
    /// HTTP/2-capable upstreams (`http2: true`): Pingora's client sessions and pool. Built only
    /// when some upstream has `http2`, since building it loads the CA roots again.
    connector: Option<Arc<Connector>>,
    /// Every other https upstream (and WebSocket handshakes): TLS from Pingora, HTTP/1.1 and
    /// pooling by Sluice. Plain TCP is Sluice's own (`tcp.rs`).
    transport: TransportConnector,
    pool: Arc<pool::IdlePool>,
    /// Where the built-in demo upstream listens, when the config uses one.
    demo_addr: Option<SocketAddr>,
    /// Connection settings per upstream name, built once.
    peers: HashMap<String, PeerTemplate>,
    /// The addresses of each upstream named by a host name, per upstream name.
    hosts: HashMap<String, Arc<dns::HostAddrs>>,
}

/// Everything about a peer but its address.
struct PeerTemplate {
    options: PeerOptions,
    /// Upstreams never share pooled connections (their CA, SNI or timeouts may differ).
    group_key: u64,
    /// Added to `group_key` in the peers of new HTTP/2 streams: bumped to give the pooled
    /// connections no new stream ([`Upstreams::retire_http2`]).
    http2_generation: Arc<AtomicU64>,
}

impl Upstreams {
    /// Loads every https upstream's CA file once and settles where the other ones' roots come
    /// from.
    pub fn new(
        demo_addr: Option<SocketAddr>,
        router: &Router,
        server: &ServerConf,
    ) -> Result<Self, String> {
        let mut specs: Vec<&UpstreamSpec> = router.routes().map(|r| &*r.upstream).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs.dedup_by(|a, b| a.name == b.name);

        let mut options = ConnectorOptions::from_server_conf(server);
        let needs_roots = specs
            .iter()
            .any(|s| s.target.is_tls() && s.tls_verify && s.ca_file.is_none());
        // Each of Pingora's connectors loads the system roots unless given a CA file: when no
        // upstream verifies against them, give it an empty one (an http-only config starts
        // listening in ~5 ms instead of ~20). Unverified peers bring a root of their own (below).
        let bundled = if needs_roots {
            match pingora::tls::load_native_certs().map(crate::config::tls::usable_roots) {
                Ok((certs, 0)) if !certs.is_empty() => None,
                // Pingora's connector would panic on the ones rustls cannot take: the peers get
                // the others from here, and the connector none.
                Ok((certs, skipped)) if !certs.is_empty() => {
                    log::warn!(
                        "{skipped} system CA certificates cannot be used and are skipped \
                         (check SSL_CERT_FILE and SSL_CERT_DIR)"
                    );
                    options.ca_file = Some("/dev/null".into());
                    Some(ca_from_der(&certs, true)?)
                }
                Ok(_) => {
                    log::warn!(
                        "no usable system CA certificates found (install ca-certificates, or set SSL_CERT_FILE): \
                         https upstreams are verified with the bundled Mozilla roots"
                    );
                    options.ca_file = Some("/dev/null".into());
                    Some(ca_from_der(webpki_root_certs::TLS_SERVER_ROOT_CERTS, true)?)
                }
                Err(e) => {
                    return Err(format!(
                        "cannot load the system CA certificates for https upstreams: {e} \
                         (check SSL_CERT_FILE and SSL_CERT_DIR, or give the upstreams a ca_file)"
                    ))
                }
            }
        } else {
            options.ca_file = Some("/dev/null".into());
            None
        };

        let http2 = specs.iter().any(|s| s.http2);
        // With verification off Pingora still builds its (skip-all) verifier over a root store,
        // and an empty one fails every handshake: such peers get one bundled root of their own,
        // so they work whatever the system store holds (or whether it was loaded at all).
        let unverified_roots = specs
            .iter()
            .any(|s| s.target.is_tls() && !s.tls_verify)
            .then(|| ca_from_der(&webpki_root_certs::TLS_SERVER_ROOT_CERTS[..1], false))
            .transpose()?;
        let mut peers = HashMap::new();
        let mut hosts = HashMap::new();
        let lookup = dns::system_lookup();
        for spec in specs {
            let target = &spec.target;
            if target.scheme != Scheme::Demo && target.host.parse::<std::net::IpAddr>().is_err() {
                let host = dns::HostAddrs::new(
                    &target.host,
                    target.port,
                    spec.dns_refresh,
                    spec.connect_timeout,
                    lookup.clone(),
                );
                hosts.insert(spec.name.clone(), host);
            }
            let ca = match (&spec.ca_file, spec.target.is_tls(), spec.tls_verify) {
                (_, false, _) => None,
                (Some(path), true, true) => {
                    let certs = crate::config::tls::load_ca_file(path)
                        .map_err(|e| format!("upstreams.{}.ca_file: {e}", spec.name))?;
                    Some(
                        ca_from_der(&certs, false)
                            .map_err(|e| format!("upstreams.{}.ca_file: {e}", spec.name))?,
                    )
                }
                (None, true, true) => bundled.clone(),
                (_, true, false) => unverified_roots.clone(),
            };
            peers.insert(spec.name.clone(), PeerTemplate::new(spec, ca));
        }
        let per_key = options.keepalive_pool_size;
        let connector = http2.then(|| Arc::new(Connector::new(Some(options.clone()))));
        Ok(Upstreams {
            transport: TransportConnector::new(Some(options)),
            pool: Arc::new(pool::IdlePool::new(per_key)),
            connector,
            demo_addr,
            peers,
            hosts,
        })
    }

    /// The addresses a new connection to `spec` tries, in order; `host` is its entry in `hosts`.
    async fn addresses(
        &self,
        spec: &UpstreamSpec,
        host: Option<&Arc<dns::HostAddrs>>,
    ) -> Result<Addresses, ProxyError> {
        let target = &spec.target;
        let unavailable = |detail: &str| {
            ProxyError::new(
                ProxyErrorKind::UpstreamUnavailable,
                format!(
                    "cannot resolve upstream {} ({}): {detail}",
                    spec.name, target.host
                ),
            )
        };
        if target.scheme == Scheme::Demo {
            let demo = self.demo_addr.ok_or_else(|| {
                ProxyError::new(
                    ProxyErrorKind::UpstreamUnavailable,
                    "demo upstream not running",
                )
            })?;
            return Ok(Addresses::fixed(demo));
        }
        if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
            return Ok(Addresses::fixed(SocketAddr::new(ip, target.port)));
        }
        // `new` made an entry for every upstream named by a host name.
        let host = host.ok_or_else(|| unavailable("not a configured upstream"))?;
        match host.candidates().await {
            Ok(addrs) => Ok(Addresses {
                addrs,
                host: Some(host.clone()),
            }),
            Err(detail) => Err(unavailable(&detail)),
        }
    }

    /// A connection to the upstream, reused from the pool when one is idle there (or, over
    /// HTTP/2, when a pooled connection has a free stream). A WebSocket handshake always gets
    /// an HTTP/1.1 connection, also from an `http2: true` upstream.
    ///
    /// A new connection tries the upstream's addresses in turn (`dns.rs`) while the failure is
    /// the address's (refused, unreachable, no answer), all within one connection's time
    /// (`connect_timeout`, plus `tls_handshake_timeout` for https): a later address gets what
    /// the earlier ones left. A TLS failure is the same at every address and ends the tries.
    pub async fn connect(
        &self,
        spec: &UpstreamSpec,
        websocket: bool,
        pooled: Pooled,
    ) -> Result<UpstreamConn, ProxyError> {
        let made;
        let template = match self.peers.get(&spec.name) {
            Some(template) => template,
            None => {
                made = PeerTemplate::new(spec, None);
                &made
            }
        };
        let host = self.hosts.get(&spec.name);
        // Connections made before an answer that dropped an address are not taken again.
        let pool_key = template
            .group_key
            .wrapping_add(host.map_or(0, |h| h.generation()));
        let http2 = self.connector.is_some() && spec.http2 && !websocket;
        if !http2 && pooled == Pooled::Take {
            if let Some(stream) = self.pool.take(pool_key) {
                return Ok(UpstreamConn::H1 {
                    conn: H1Connection::reused(stream),
                    pool_key,
                });
            }
        }
        let addresses = self.addresses(spec, host).await?;
        let budget = if spec.target.is_tls() {
            spec.connect_timeout + spec.tls_handshake_timeout
        } else {
            spec.connect_timeout
        };
        let deadline = tokio::time::Instant::now() + budget;
        let mut tried = 0;
        let mut last_error = None;
        for &addr in &addresses.addrs {
            if tried > 0 && tokio::time::Instant::now() >= deadline {
                break;
            }
            tried += 1;
            let attempt = self.connect_to(addr, spec, template, http2, pool_key);
            let connected = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(connected) => connected,
                Err(_) => Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("connecting to {addr}: no connection within {budget:?}"),
                ),
            };
            match connected {
                Ok(conn) => {
                    addresses.connected(addr);
                    return Ok(conn);
                }
                Err(e) => {
                    let address_at_fault = matches!(
                        e.etype(),
                        ErrorType::ConnectTimedout
                            | ErrorType::ConnectRefused
                            | ErrorType::ConnectNoRoute
                            | ErrorType::ConnectError
                    );
                    if address_at_fault {
                        addresses.connect_failed(addr);
                    }
                    if address_at_fault && tried < addresses.addrs.len() {
                        log::warn!(
                            "upstream {}: cannot connect to {addr}: {}; trying the next address",
                            spec.name,
                            describe(&e)
                        );
                    }
                    last_error = Some(e);
                    if !address_at_fault {
                        break;
                    }
                }
            }
        }
        METRICS.upstream_failed(&spec.name, "connect");
        let e = last_error.expect("there is always an address to try");
        let tried = match tried {
            1 => String::new(),
            n => format!(" ({n} addresses tried)"),
        };
        Err(ProxyError::new(
            ProxyErrorKind::UpstreamUnavailable,
            format!(
                "cannot connect to upstream {}{tried}: {}",
                spec.name,
                describe(&e)
            ),
        ))
    }

    /// One new connection to `addr`.
    async fn connect_to(
        &self,
        addr: SocketAddr,
        spec: &UpstreamSpec,
        template: &PeerTemplate,
        http2: bool,
        pool_key: u64,
    ) -> pingora::Result<UpstreamConn> {
        let generation = template.http2_generation.load(Ordering::Acquire);
        // Made only when Pingora connects: Sluice makes plain TCP connections itself.
        let peer = |alpn: Option<ALPN>| {
            let mut peer = HttpPeer::new(addr, spec.target.is_tls(), spec.sni.clone());
            peer.group_key = template.group_key.wrapping_add(generation);
            peer.options = template.options.clone();
            if let Some(alpn) = alpn {
                peer.options.alpn = alpn;
            }
            peer
        };
        if let Some(connector) = self.connector.as_ref().filter(|_| http2) {
            let peer = peer(None);
            // Boxed: Pingora's connect future is large (about 9 KiB) and would otherwise be
            // part of every request's future for the whole life of its stream.
            let (session, _reused) = Box::pin(connector.get_http_session(&peer)).await?;
            return Ok(UpstreamConn::Pingora(Box::new(PingoraConn::new(
                session,
                peer,
                generation,
                template.http2_generation.clone(),
                connector.clone(),
                spec.pool_idle_timeout,
            ))));
        }
        // Plain TCP is Sluice's own socket type (`tcp.rs`); TLS is Pingora's.
        let stream = if spec.target.is_tls() {
            Box::pin(self.transport.new_stream(&peer(Some(ALPN::H1)))).await?
        } else {
            super::tcp::connect(addr, spec.connect_timeout).await?
        };
        Ok(UpstreamConn::H1 {
            conn: H1Connection::new(stream),
            pool_key,
        })
    }

    /// Returns a connection whose response ended properly to the pool, for `idle` at most (less
    /// when its upstream said it closes idle connections sooner); any other is closed.
    pub async fn release(&self, conn: UpstreamConn, idle: Duration) {
        match conn {
            UpstreamConn::H1 { conn, pool_key } => {
                let idle = conn.pool_idle(idle);
                // `pool_idle_timeout: 0s` pools nothing: closed now, not at the next sweep.
                if conn.reusable() && !idle.is_zero() {
                    self.pool.put(pool_key, conn.into_stream(), idle);
                }
            }
            // An HTTP/1.1 session that is not reusable is dropped, which closes it; an HTTP/2
            // one that is not goes back by its drop, with its stream reset (`PingoraConn`).
            UpstreamConn::Pingora(conn) if !conn.reusable => drop(conn),
            UpstreamConn::Pingora(conn) => {
                // A retired connection closes once its last stream ended, not after waiting,
                // under a key no stream looks for, in Pingora's pool.
                let idle = if conn.retired() { Duration::ZERO } else { idle };
                let (session, peer) = conn.into_parts();
                // Such a connection came from `connector`, so it is there (else: dropped, closed).
                if let Some(connector) = self.connector.as_ref() {
                    // Boxed for the same reason as the connect future.
                    Box::pin(connector.release_http_session(session, &peer, Some(idle))).await;
                }
            }
        }
    }

    /// A stream that waited the route's `idle_timeout` for nothing from the upstream (no
    /// response head, or silence mid-body) over HTTP/2 says its connection, shared with other
    /// streams, may be dead (a middlebox that lost it while the socket stays up): new streams
    /// go on a new connection, as a dead HTTP/1.1 connection is dropped with its request.
    /// Otherwise every request after it would wait its own `idle_timeout` on it until TCP gave
    /// up, minutes later. Only the first such stream of a connection's generation retires it:
    /// the others on it, timing out one by one, leave the new connections alone. The stream
    /// goes back to Pingora with no idle time, as the connection's last stream will (`release`),
    /// so that it closes once they ended. Gives back any other connection, for the caller to
    /// close.
    pub async fn retire_http2(&self, upstream: &str, conn: UpstreamConn) -> Option<UpstreamConn> {
        let (Some(connector), true) = (self.connector.as_ref(), conn.is_http2()) else {
            return Some(conn);
        };
        let UpstreamConn::Pingora(pingora) = conn else {
            return Some(conn);
        };
        let generation = pingora.generation;
        let retired_now = pingora
            .current_generation
            .compare_exchange(
                generation,
                generation + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if retired_now {
            log::info!(
                "upstream {upstream}: an HTTP/2 stream waited its idle_timeout for nothing; new \
                 streams go on a new connection"
            );
        }
        let (session, peer) = pingora.into_parts();
        Box::pin(connector.release_http_session(session, &peer, Some(Duration::ZERO))).await;
        None
    }

    /// Closes idle connections that expired or that their upstream closed; called every second.
    pub fn sweep_idle(&self) {
        self.pool.sweep();
    }
}

/// A Pingora error as one line: its source (when known), type, context and causes, as Pingora's
/// own `Display` gives them but one space apart. That one starts with a space when the source is
/// unset and puts two after `cause:` (`cannot connect to upstream u:  ConnectError …`).
pub fn describe(e: &Error) -> String {
    let mut out = String::new();
    describe_chain(e, None, &mut out);
    out
}

/// `e` and its causes into `out`; `previous`: the error `e` is the cause of, whose source and
/// type are not repeated (as Pingora does).
fn describe_chain(e: &Error, previous: Option<&Error>, out: &mut String) {
    if previous.is_none_or(|p| p.esource != e.esource) {
        push_word(out, e.esource.as_str());
    }
    if previous.is_none_or(|p| p.etype != e.etype) {
        push_word(out, e.etype.as_str());
    }
    if let Some(context) = &e.context {
        push_word(out, "context:");
        push_word(out, context.as_str());
    }
    let Some(cause) = &e.cause else {
        return;
    };
    push_word(out, "cause:");
    match cause.downcast_ref::<Box<Error>>() {
        Some(inner) => describe_chain(inner, Some(e), out),
        None => push_word(out, &cause.to_string()),
    }
}

/// `word` after a space, unless it is empty (an unset source) or the first.
fn push_word(out: &mut String, word: &str) {
    if word.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(word);
}

/// An error of an upstream connection, as the relay words it for a client (`{e}` in a 502's
/// message): from the upstream (unless its source is known already) and with its causes as text
/// (see [`describe`]), so that Pingora's `Display` gives it with single spaces.
pub(crate) fn upstream_error(mut e: Box<Error>) -> Box<Error> {
    if e.esource == ErrorSource::Unset {
        e.esource = ErrorSource::Upstream;
    }
    if let Some(inner) = e
        .cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<Box<Error>>())
    {
        let mut text = String::new();
        describe_chain(inner, Some(&e), &mut text);
        e.cause = Some(text.into());
    }
    e
}

/// Sweeps the idle pool every second, until shutdown.
pub struct PoolSweeper(pub Arc<Upstreams>);

#[async_trait]
impl pingora::services::background::BackgroundService for PoolSweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.sweep_idle(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// What a new connection tries, and where to tell how each try went (none for an IP address).
struct Addresses {
    addrs: Vec<SocketAddr>,
    host: Option<Arc<dns::HostAddrs>>,
}

impl Addresses {
    fn fixed(addr: SocketAddr) -> Addresses {
        Addresses {
            addrs: vec![addr],
            host: None,
        }
    }

    fn connected(&self, addr: SocketAddr) {
        if let Some(host) = &self.host {
            host.connected(addr);
        }
    }

    fn connect_failed(&self, addr: SocketAddr) {
        if let Some(host) = &self.host {
            host.connect_failed(addr);
        }
    }
}

impl PeerTemplate {
    fn new(spec: &UpstreamSpec, ca: Option<Arc<CaType>>) -> PeerTemplate {
        let mut options = PeerOptions::new();
        options.idle_timeout = Some(spec.pool_idle_timeout);
        if spec.target.is_tls() {
            // Pingora applies `connection_timeout` to the TCP connect and again to the TLS
            // handshake: Sluice makes the TCP connection itself (bounded by `connect_timeout`)
            // so that `connection_timeout` bounds the handshake alone.
            options.custom_l4 = Some(Arc::new(TcpConnect {
                timeout: spec.connect_timeout,
            }));
            options.connection_timeout = Some(spec.tls_handshake_timeout);
            options.total_connection_timeout =
                Some(spec.connect_timeout + spec.tls_handshake_timeout);
            options.verify_cert = spec.tls_verify;
            options.verify_hostname = spec.tls_verify;
            options.ca = ca;
        } else {
            options.connection_timeout = Some(spec.connect_timeout);
            options.total_connection_timeout = Some(spec.connect_timeout);
        }
        if spec.http2 {
            options.alpn = if spec.target.is_tls() {
                ALPN::H2H1
            } else {
                ALPN::H2
            };
            options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
            options.h2_stream_window_size = Some(H2_STREAM_WINDOW);
            options.h2_connection_window_size = Some(H2_CONNECTION_WINDOW);
            options.h2_ping_interval = spec.http2_ping;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        spec.name.hash(&mut hasher);
        PeerTemplate {
            options,
            group_key: hasher.finish(),
            http2_generation: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// CA certificates in the form Pingora takes them. Pingora's parser panics on a certificate it
/// cannot read, so each one is parsed here first: an unreadable one is an error, or skipped
/// when `skip_unreadable` (the bundled roots).
fn ca_from_der(certs: &[CertificateDer<'_>], skip_unreadable: bool) -> Result<Arc<CaType>, String> {
    let mut parsed = Vec::with_capacity(certs.len());
    for (i, cert) in certs.iter().enumerate() {
        match x509_parser::parse_x509_certificate(cert) {
            Ok(_) => parsed.push(WrappedX509::new(cert.to_vec(), parse_x509)),
            Err(_) if skip_unreadable => {}
            Err(e) => return Err(format!("certificate {} cannot be parsed: {e}", i + 1)),
        }
    }
    if parsed.is_empty() {
        return Err("no usable CA certificate".into());
    }
    Ok(Arc::from(parsed))
}

/// The TCP connect of a TLS upstream, bounded by the upstream's `connect_timeout`.
#[derive(Debug)]
struct TcpConnect {
    timeout: Duration,
}

#[async_trait]
impl L4Connect for TcpConnect {
    async fn connect(&self, addr: &PeerAddr) -> pingora::Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::SocketError, format!("not a TCP address: {addr}"));
        };
        Ok(super::tcp::connect_socket(*inet, self.timeout)
            .await?
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::UpstreamTarget;

    fn spec(url: &str, http2: bool, tls_verify: bool) -> UpstreamSpec {
        let target = UpstreamTarget::parse(url).unwrap();
        UpstreamSpec {
            name: "u".into(),
            sni: target.host.clone(),
            target,
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(3),
            tls_handshake_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            dns_refresh: Duration::from_secs(30),
            tls_verify,
            ca_file: None,
            http2,
            http2_ping: None,
        }
    }

    /// Pingora's errors as a 502 words them: every part, one space apart. Pingora's own
    /// `Display` gives ` ConnectError context: … cause:  ConnectTimedout …`.
    #[test]
    fn errors_are_described_with_single_spaces() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = Error::because(ErrorType::ConnectError, "TCP connect to 127.0.0.1:9", io());
        let refused = io().to_string();
        assert_eq!(
            describe(&e),
            format!("ConnectError context: TCP connect to 127.0.0.1:9 cause: {refused}")
        );
        assert_eq!(
            describe(&Error::new(ErrorType::ConnectTimedout)),
            "ConnectTimedout"
        );

        // A chain: the source and type are not repeated where a cause shares them.
        let inner = Error::because(ErrorType::ConnectTimedout, "TLS handshake", io());
        let outer = Error::because(ErrorType::ConnectError, "connecting", inner);
        let chain =
            "ConnectError context: connecting cause: ConnectTimedout context: TLS handshake";
        assert_eq!(describe(&outer), format!("{chain} cause: {refused}"));
        let mut same = Error::because(ErrorType::ConnectError, "inner", io());
        same.esource = ErrorSource::Upstream;
        let mut outer = Error::because(ErrorType::ConnectError, "outer", same);
        outer.esource = ErrorSource::Upstream;
        assert_eq!(
            describe(&outer),
            format!("Upstream ConnectError context: outer cause: context: inner cause: {refused}")
        );

        // As the relay words an upstream connection's error (`{e}`).
        let inner = Error::because(ErrorType::ConnectTimedout, "TLS handshake", io());
        let e = upstream_error(Error::because(ErrorType::ReadError, "reading", inner));
        assert_eq!(
            e.to_string(),
            format!(
                "Upstream ReadError context: reading cause: ConnectTimedout context: TLS handshake cause: {refused}"
            )
        );
        assert_eq!(e.etype, ErrorType::ReadError);
        let mut down = Error::explain(ErrorType::WriteError, "writing");
        down.esource = ErrorSource::Downstream;
        assert_eq!(
            upstream_error(down).to_string(),
            "Downstream WriteError context: writing"
        );
    }

    #[test]
    fn bundled_roots_are_usable() {
        // Rebuilt by Pingora for each new connection when used: about 0.1-0.5 ms.
        let ca = ca_from_der(webpki_root_certs::TLS_SERVER_ROOT_CERTS, true).unwrap();
        assert!(ca.len() > 100, "{} roots", ca.len());
        assert!(ca_from_der(&[CertificateDer::from(&b"junk"[..])], false).is_err());
    }

    #[test]
    fn peer_settings_follow_the_upstream() {
        let https = PeerTemplate::new(&spec("https://api.example.com", true, true), None);
        assert_eq!(https.options.alpn, ALPN::H2H1);
        assert_eq!(https.options.max_h2_streams, H2_STREAMS_PER_CONNECTION);
        assert_eq!(https.options.h2_stream_window_size, Some(1 << 20));
        assert_eq!(https.options.h2_connection_window_size, Some(100 << 20));
        assert!(https.options.custom_l4.is_some());
        assert_eq!(
            https.options.connection_timeout,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            https.options.total_connection_timeout,
            Some(Duration::from_secs(8))
        );
        assert!(https.options.verify_cert && https.options.verify_hostname);

        let unverified = PeerTemplate::new(&spec("https://api.example.com", false, false), None);
        assert_eq!(unverified.options.alpn, ALPN::H1);
        assert!(!unverified.options.verify_cert && !unverified.options.verify_hostname);

        let h2c = PeerTemplate::new(&spec("http://127.0.0.1:8080", true, true), None);
        assert_eq!(h2c.options.alpn, ALPN::H2);
        assert!(h2c.options.custom_l4.is_none());
        assert_eq!(h2c.options.connection_timeout, Some(Duration::from_secs(3)));
    }
}
