//! The only module that knows Pingora: the server and its services, the HTTP application, the
//! relay loop, upstream connections and the admin listener.

mod admin;
mod admission;
mod demo_service;
mod downstream;
mod drain;
mod h2_io;
mod h2_server;
mod headers;
mod listener;
mod proxy;
mod relay;
mod reloader;
mod responses;
mod stream_body;
mod tcp;
mod timer;
mod tls;
mod upstream;
mod usage_sink;

use crate::config::{Config, LimitsBackend};
use crate::limits::{Backend, Limiter, RedisSettings};
use crate::provider::Provider;
use crate::route::{Router, Scheme};
use crate::sse::StreamOutcome;
use crate::telemetry::METRICS;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use std::sync::Arc;
use std::time::Instant;

pub use proxy::SluiceProxy;

/// What one request did, filled in along its path and read by the logging phase.
pub struct RequestCtx {
    pub started: Instant,
    /// The client's IP address and port, when the connection has one. Read it here, never from
    /// the session: Sluice's connections carry no Pingora socket digest, so
    /// `ServerSession::client_addr()` is `None`.
    pub client_addr: Option<std::net::SocketAddr>,
    /// The socket of an HTTP/2 client's connection, where the relay reads what the client
    /// acknowledged while a write to one of its streams waits (the `h2` crate reads no window
    /// update while its own writes wait on a full socket).
    pub connection_socket: Option<std::os::fd::RawFd>,
    /// The client a trusted proxy (`server.trusted_proxies`) forwarded the request for.
    pub forwarded_client: Option<std::net::IpAddr>,
    /// When the client left, if it did: the request's duration ends there, not after the
    /// bookkeeping that a burst of leaving clients may delay (`relay/disconnect.rs`).
    pub client_left: Option<Instant>,
    pub request_id: String,
    /// The request's method and path, for the access log (`None` and empty when its head could
    /// not be read).
    pub method: Option<http::Method>,
    pub path: String,
    pub route: Option<Arc<crate::route::Route>>,
    pub provider: Provider,
    pub stream_request: bool,
    /// The request may ask for a stream where Sluice could not tell (its body too large to
    /// read, or not readable as the JSON object it looks like): it takes a stream slot, and only
    /// that (headers, usage and the access log go by `stream_request`).
    pub may_stream: bool,
    pub event_stream: bool,
    pub status: u16,
    pub outcome: Option<StreamOutcome>,
    pub first_byte: Option<Instant>,
    /// Body bytes written to the client: the upstream's and Sluice's own (heartbeats, terminal
    /// events, error answers).
    pub bytes_sent: u64,
    /// The upstream's body bytes among them: the usage record's `bytes`.
    pub upstream_bytes_sent: u64,
    pub heartbeats: u64,
    pub error: Option<String>,
    /// The stream format the route and path imply, when known before the first frame.
    pub format: Option<crate::usage::extract::StreamFormat>,
    /// The usage record, once written (event streams write it before their end). Boxed: it
    /// comes at the end, and inline it would take ~470 bytes of every open stream's state.
    pub usage_record: Option<Box<crate::usage::record::UsageRecord>>,
    /// Who is calling, when the route authenticates.
    pub identity: Option<crate::auth::Identity>,
    /// The stream slot this request holds: released when the context is dropped, which
    /// happens on every path out of a request (including a panic or shutdown).
    pub lease: Option<crate::limits::StreamLease>,
    /// Counts this request in flight until the context is dropped (see `drain.rs`).
    _in_flight: drain::InFlight,
    /// Sent with the response head: `x-ratelimit-*-streams`, when a stream limit applies.
    pub limit_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Why the request was refused before going upstream (401/429), for the access log.
    pub refused: Option<&'static str>,
    /// A write to the client was abandoned midway (the end of a shutdown's grace period): the
    /// response gets nothing more, its connection is closed.
    pub write_cut: bool,
}

impl RequestCtx {
    /// From the request's arrival to its end (or its client leaving), in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        let end = self.client_left.unwrap_or_else(Instant::now);
        end.duration_since(self.started).as_secs_f64() * 1000.0
    }

    fn new(client_addr: Option<std::net::SocketAddr>) -> Self {
        RequestCtx {
            started: Instant::now(),
            client_addr,
            connection_socket: None,
            forwarded_client: None,
            client_left: None,
            request_id: String::new(),
            method: None,
            path: String::new(),
            route: None,
            provider: Provider::Openai,
            stream_request: false,
            may_stream: false,
            event_stream: false,
            status: 0,
            outcome: None,
            first_byte: None,
            bytes_sent: 0,
            upstream_bytes_sent: 0,
            heartbeats: 0,
            error: None,
            format: None,
            usage_record: None,
            identity: None,
            lease: None,
            _in_flight: drain::InFlight::start(),
            limit_headers: Vec::new(),
            refused: None,
            write_cut: false,
        }
    }
}

/// Options that come from the command line rather than the config file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Take over the listening sockets of a running Sluice (graceful upgrade).
    pub upgrade: bool,
}

/// Runs the server until it is stopped, with Sluice's signals (SIGINT stops gracefully too),
/// then exits the process.
pub fn run(server: Server) -> ! {
    let upgrade_sock = server.configuration.upgrade_sock.clone();
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(drain::StopSignals { upgrade_sock }),
    });
    std::process::exit(0)
}

/// Builds the Pingora server for a validated config: proxy listeners, admin listener, and the
/// demo upstream when a route uses it.
pub fn build_server(config: &Config, options: &RunOptions) -> Result<Server, String> {
    if !options.upgrade {
        let addrs = config
            .listen
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listen[{i}].addr"), l.addr.as_str()));
        let admin = config.admin.as_deref().map(|a| ("admin".to_string(), a));
        listener::check_addresses(addrs.chain(admin))?;
    }
    let mut conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(drain::runtime_grace_seconds(config.server.grace_period)),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        pid_file: config.server.pid_file.clone(),
        upgrade_sock: config.server.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    // Sluice pools upstream connections itself per upstream; keep Pingora's pool large enough.
    conf.upstream_keepalive_pool_size = conf.upstream_keepalive_pool_size.max(512);
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut keys_files = crate::route::KeysFiles::new();
    for path in config.keys_files() {
        let file = crate::auth::KeysFile::open(path).map_err(|e| format!("auth.keys_file: {e}"))?;
        keys_files.insert(path.to_path_buf(), Arc::new(file));
    }
    let router = Router::from_config(config, &keys_files);
    for route in router.routes() {
        METRICS.register_route(&route.name);
    }
    let needs_demo = router
        .routes()
        .any(|r| r.upstream.target.scheme == Scheme::Demo);
    let demo_addr = if needs_demo {
        let (demo, addr) = demo_service::DemoUpstream::bind()
            .map_err(|e| format!("cannot start the demo upstream: {e}"))?;
        server.add_service(background_service("demo upstream", demo));
        Some(addr)
    } else {
        None
    };
    let usage = usage_sink::UsageSink::open(&config.usage)?;
    let limiter = build_limiter(config)?;
    let drain = drain::Drain {
        ledger: usage.ledger().cloned(),
        limiter: limiter.clone(),
        grace_period: config.server.grace_period,
    };
    server.add_service(background_service("drain", drain));
    let upstreams = Arc::new(upstream::Upstreams::new(
        demo_addr,
        &router,
        &server.configuration,
    )?);
    server.add_service(background_service(
        "upstream pool",
        upstream::PoolSweeper(upstreams.clone()),
    ));
    let usage_ledger = usage.ledger().cloned();
    let admin_ledger = usage_ledger.clone();
    relay::set_body_memory(config.server.request_body_memory);
    let timeouts = listener::ConnectionTimeouts {
        keepalive: config.server.keepalive_timeout,
        handshake: config.server.handshake_timeout,
        request_body: config.server.request_body_timeout,
    };
    let trusted_proxies =
        crate::client_ip::TrustedProxies::parse(&config.server.trusted_proxies).expect("validated");
    let proxy = SluiceProxy::new(
        router,
        upstreams,
        usage,
        limiter.clone(),
        timeouts,
        trusted_proxies,
    );
    let tls_listeners = tls::TlsListeners::load(config)?;
    let mut reloadables = tls_listeners.reloadables();
    reloadables.extend(
        keys_files
            .into_values()
            .map(|f| f as Arc<dyn reloader::Reloadable>),
    );
    if let Some(ledger) = usage_ledger {
        reloadables.push(ledger);
    }
    let reloader = reloader::Reloader { items: reloadables };
    server.add_service(background_service("reloader", reloader));
    // Every client listener is Sluice's own (`listener.rs`: less memory per connection); a TLS
    // client that chooses h2 by ALPN, or an h2c listener's client that opens with the HTTP/2
    // preface, is served over HTTP/2 from there (`h2_server.rs`).
    let mut endpoints = Vec::new();
    for (i, listener) in config.listen.iter().enumerate() {
        // TLS listeners offer h2 and http/1.1 by ALPN (validation keeps them off h2c).
        let tls = tls_listeners
            .settings(i)?
            .map(|settings| Arc::new(settings.build()));
        endpoints.push(listener::Endpoint {
            addr: listener.addr.clone(),
            tls,
            h2c: listener.h2c,
        });
    }
    if !endpoints.is_empty() {
        server.add_service(listener::Listeners {
            name: "sluice proxy".to_string(),
            endpoints,
            app: Arc::new(proxy),
            upgrade: options.upgrade,
        });
    }

    if let Some(admin) = &config.admin {
        server.add_service(admin::AdminListener {
            addr: admin.clone(),
            app: Arc::new(admin::AdminApp {
                limiter,
                ledger: admin_ledger,
                per_user_metrics: config.limits.per_user_metrics,
            }),
            upgrade: options.upgrade,
        });
    }
    Ok(server)
}

/// The roots a `rediss://` Redis is verified against, as upstreams are: its `ca_file`, else the
/// system roots, else the Mozilla roots built in.
fn redis_roots(ca_file: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    let certs = match ca_file {
        Some(path) => crate::config::tls::load_ca_file(path)
            .map_err(|e| format!("limits.backend.ca_file: {e}"))?,
        None => match pingora::tls::load_native_certs().map(crate::config::tls::usable_roots) {
            Ok((certs, skipped)) if !certs.is_empty() => {
                if skipped > 0 {
                    log::warn!(
                        "{skipped} system CA certificates cannot be used for rediss:// and are \
                         skipped (check SSL_CERT_FILE and SSL_CERT_DIR)"
                    );
                }
                certs
            }
            // The same bundle as https upstreams get (not the Redis client's own copy).
            Ok(_) => {
                log::warn!(
                    "no usable system CA certificates found (install ca-certificates, or set SSL_CERT_FILE): \
                     Redis is verified with the bundled Mozilla roots"
                );
                webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec()
            }
            Err(e) => {
                return Err(format!(
                    "cannot load the system CA certificates for rediss://: {e} \
                     (check SSL_CERT_FILE and SSL_CERT_DIR, or give limits.backend a ca_file)"
                ))
            }
        },
    };
    Ok(crate::config::tls::pem_of(&certs))
}

fn build_limiter(config: &Config) -> Result<Limiter, String> {
    let backend = match &config.limits.backend {
        LimitsBackend::Local => Backend::Local,
        LimitsBackend::Redis(redis) => Backend::Redis(RedisSettings {
            url: redis.redis.clone(),
            lease_ttl: redis.lease_ttl,
            timeout: redis.timeout,
            key_prefix: redis.key_prefix.clone(),
            tls_roots: match redis.redis.starts_with("rediss://") {
                true => Some(redis_roots(redis.ca_file.as_deref())?),
                false => None,
            },
        }),
    };
    Limiter::new(
        backend,
        config.limits.global_streams,
        METRICS.limits.clone(),
    )
    .map_err(|e| format!("limits.backend: {e}"))
}
