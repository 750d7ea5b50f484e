//! Checks that serde cannot express: references between sections, URL and address shapes.

use super::tls::{self, ListenerCerts};
use super::{AuthSettings, Config, ConfigError, LimitsBackend, Listener, Upstream};
use crate::auth::AuthMode;
use crate::route::{Scheme, UpstreamTarget};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Headers that frame a message or manage its connection: Sluice sets them per request, and a
/// configured value would desynchronise it from the upstream.
const MESSAGE_FRAMING_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

fn validate_auth(auth: &AuthSettings, key: &str) -> Result<(), ConfigError> {
    match (auth.mode, &auth.keys_file) {
        (AuthMode::Keys, None) => Err(invalid(
            format!("{key}.keys_file"),
            "`mode: keys` needs a keys file (create one with `sluice keys add USER --file keys.yaml`)",
        )),
        (AuthMode::Keys, Some(path)) => crate::auth::KeyStore::load(path)
            .map(|_| ())
            .map_err(|e| invalid(format!("{key}.keys_file"), e.to_string())),
        (_, Some(_)) => Err(invalid(
            format!("{key}.keys_file"),
            "only used with `mode: keys`",
        )),
        (_, None) => Ok(()),
    }
}

fn validate_limits(config: &Config) -> Result<(), ConfigError> {
    let limits = &config.limits;
    let top = [
        ("limits.per_user_streams", limits.per_user_streams),
        ("limits.per_key_streams", limits.per_key_streams),
        ("limits.global_streams", limits.global_streams),
        ("limits.per_user_rpm", limits.per_user_rpm),
    ];
    let routes = config.routes.iter().enumerate().flat_map(|(i, r)| {
        [
            (
                format!("routes[{i}].limits.per_user_streams"),
                r.limits.per_user_streams,
            ),
            (
                format!("routes[{i}].limits.per_key_streams"),
                r.limits.per_key_streams,
            ),
            (
                format!("routes[{i}].limits.per_user_rpm"),
                r.limits.per_user_rpm,
            ),
        ]
    });
    for (key, value) in top
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(routes)
    {
        if value == Some(0) {
            return Err(invalid(key, "must be at least 1 (omit it for no limit)"));
        }
    }
    if let LimitsBackend::Redis(redis) = &limits.backend {
        let tls = redis.redis.starts_with("rediss://");
        if !(redis.redis.starts_with("redis://") || tls) {
            return Err(invalid(
                "limits.backend.redis",
                "must be a redis:// or rediss:// URL",
            ));
        }
        // What the Redis client refuses at start (the URL itself is not repeated: it may hold
        // a password).
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(redis.redis.as_str()) {
            return Err(invalid(
                "limits.backend.redis",
                format!("invalid Redis URL: {e}"),
            ));
        }
        if redis.lease_ttl < std::time::Duration::from_secs(1) {
            return Err(invalid("limits.backend.lease_ttl", "must be at least 1s"));
        }
        if redis.timeout.is_zero() {
            return Err(invalid("limits.backend.timeout", "must be more than 0"));
        }
        if redis.lease_ttl < redis.timeout * 3 {
            return Err(invalid(
                "limits.backend.lease_ttl",
                "must be at least 3 × timeout (leases are renewed every lease_ttl / 3)",
            ));
        }
        if let Some(ca_file) = &redis.ca_file {
            if !tls {
                return Err(invalid(
                    "limits.backend.ca_file",
                    "only for a rediss:// URL (TLS to Redis)",
                ));
            }
            tls::load_ca_file(ca_file).map_err(|m| invalid("limits.backend.ca_file", m))?;
        }
    }
    Ok(())
}

fn validate_listener_tls(listener: &Listener, i: usize) -> Result<(), ConfigError> {
    let Some(tls) = &listener.tls else {
        return Ok(());
    };
    if listener.h2c {
        return Err(invalid(
            format!("listen[{i}].h2c"),
            "a TLS listener offers HTTP/2 by ALPN: remove `h2c` (it is for cleartext listeners)",
        ));
    }
    ListenerCerts::load(tls)
        .map(|_| ())
        .map_err(|e| invalid(format!("listen[{i}].tls.{}", e.key), e.message))
}

fn validate_upstream_tls(
    name: &str,
    upstream: &Upstream,
    target: &UpstreamTarget,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("upstreams.{name}.{field}");
    if !target.is_tls() {
        for (field, set) in [
            ("ca_file", upstream.ca_file.is_some()),
            ("sni", upstream.sni.is_some()),
        ] {
            if set {
                return Err(invalid(key(field), "only used with an https:// url"));
            }
        }
    }
    if target.scheme == Scheme::Demo && upstream.http2 {
        return Err(invalid(key("http2"), "not used with demo://"));
    }
    if upstream.tls_handshake_timeout.is_zero() {
        return Err(invalid(key("tls_handshake_timeout"), "must be more than 0"));
    }
    if upstream.connect_timeout.is_zero() {
        return Err(invalid(key("connect_timeout"), "must be more than 0"));
    }
    if let Some(sni) = &upstream.sni {
        tls::check_upstream_sni(sni).map_err(|m| invalid(key("sni"), m))?;
    }
    if let Some(ca_file) = &upstream.ca_file {
        if !upstream.tls_verify {
            return Err(invalid(
                key("ca_file"),
                "not used with `tls_verify: false` (nothing is verified)",
            ));
        }
        tls::load_ca_file(ca_file).map_err(|m| invalid(key("ca_file"), m))?;
    }
    Ok(())
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

pub(super) fn validate(config: &Config) -> Result<(), ConfigError> {
    if config.listen.is_empty() {
        return Err(invalid("listen", "at least one listener is required"));
    }
    let mut bound: Vec<(SocketAddr, String)> = Vec::new();
    for (i, listener) in config.listen.iter().enumerate() {
        let key = format!("listen[{i}].addr");
        let addr = parse_addr(&listener.addr).map_err(|m| invalid(&key, m))?;
        validate_listener_tls(listener, i)?;
        bound.push((addr, key));
    }
    if let Some(admin) = &config.admin {
        let addr = parse_addr(admin).map_err(|m| invalid("admin", m))?;
        bound.push((addr, "admin".into()));
    }
    // Two listeners on one address (or on a wildcard address and one it covers, same port)
    // cannot both bind it: the start would fail.
    for (i, (addr, key)) in bound.iter().enumerate() {
        if let Some((other, first)) = bound[..i].iter().find(|(other, _)| overlap(other, addr)) {
            return Err(invalid(
                key.as_str(),
                format!(
                    "{addr} overlaps {first} ({other}): each listener needs an address of its own"
                ),
            ));
        }
    }
    if config.server.threads == 0 || config.server.threads > MAX_THREADS {
        return Err(invalid(
            "server.threads",
            format!("must be from 1 to {MAX_THREADS}"),
        ));
    }
    // Sluice writes the PID file at every start, and a `sluice -u` upgrade binds the socket:
    // what would fail the start, or the upgrade, fails `check`.
    super::files::check_server_files(config).map_err(|(key, m)| invalid(key, m))?;
    // A request already on its way at shutdown gets a second to arrive (`drain`), and the
    // cleartext listeners accept for that second: a shorter grace would end the streams of the
    // requests it lets in as they start.
    if config.server.grace_period < Duration::from_secs(1) {
        return Err(invalid("server.grace_period", "must be at least 1s"));
    }
    crate::client_ip::TrustedProxies::parse(&config.server.trusted_proxies)
        .map_err(|(i, e)| invalid(format!("server.trusted_proxies[{i}]"), e))?;
    // Whole seconds: Pingora takes the keep-alive in seconds, and 0 would mean no limit at all
    // on a request head's reads.
    let keepalive = config.server.keepalive_timeout;
    if keepalive < Duration::from_secs(1) || keepalive.subsec_nanos() != 0 {
        return Err(invalid(
            "server.keepalive_timeout",
            "must be a whole number of seconds, at least 1s",
        ));
    }
    if config.server.handshake_timeout.is_zero() {
        return Err(invalid("server.handshake_timeout", "must be more than 0"));
    }
    if config.server.request_body_timeout.is_zero() {
        return Err(invalid(
            "server.request_body_timeout",
            "must be more than 0",
        ));
    }
    if !(1024..=1024 * 1024).contains(&config.server.max_request_header) {
        return Err(invalid(
            "server.max_request_header",
            "must be between 1024 and 1048576 bytes (Pingora refuses larger request heads itself)",
        ));
    }
    if !(2 * 1024 * 1024..=1 << 40).contains(&config.server.request_body_memory) {
        return Err(invalid(
            "server.request_body_memory",
            "must be from 2097152 bytes (a request reads up to 1 MiB of its body at once) to 1 TiB",
        ));
    }
    for (name, upstream) in &config.upstreams {
        let target = crate::route::UpstreamTarget::parse(&upstream.url)
            .map_err(|m| invalid(format!("upstreams.{name}.url"), m))?;
        validate_upstream_tls(name, upstream, &target)?;
        if let Some(interval) = upstream.http2_ping {
            let key = format!("upstreams.{name}.http2_ping");
            if !upstream.http2 {
                return Err(invalid(key, "only used with `http2: true`"));
            }
            if interval < Duration::from_secs(1) {
                return Err(invalid(key, "must be at least 1s (or off)"));
            }
        }
        if upstream.dns_refresh < Duration::from_secs(1) {
            return Err(invalid(
                format!("upstreams.{name}.dns_refresh"),
                "must be at least 1s",
            ));
        }
        for header in upstream.headers.keys() {
            http::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                invalid(
                    format!("upstreams.{name}.headers.{header}"),
                    "not a valid header name",
                )
            })?;
            if MESSAGE_FRAMING_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(header))
            {
                return Err(invalid(
                    format!("upstreams.{name}.headers.{header}"),
                    "is set by Sluice for each request (framing and connection handling): it \
                     cannot be configured",
                ));
            }
        }
        for (header, value) in &upstream.headers {
            http::HeaderValue::from_str(value).map_err(|_| {
                invalid(
                    format!("upstreams.{name}.headers.{header}"),
                    "not a valid header value (control characters or non-ASCII)",
                )
            })?;
        }
    }
    if config.usage.max_event_size < 1024 {
        return Err(invalid(
            "usage.max_event_size",
            "must be at least 1024 bytes",
        ));
    }
    if config.usage.rotate_bytes == Some(0) {
        return Err(invalid(
            "usage.rotate_bytes",
            "must be more than 0 (omit it to never rotate by size)",
        ));
    }
    if config.usage.keep > MAX_KEEP {
        return Err(invalid(
            "usage.keep",
            format!("must be at most {MAX_KEEP} (each rotation renames every file kept)"),
        ));
    }
    if config.usage.rotate_bytes.is_some() && config.usage.keep == 0 {
        return Err(invalid(
            "usage.keep",
            "must be at least 1 with rotate_bytes, or rotation would delete fresh records",
        ));
    }
    if let Some(ledger) = &config.usage.ledger {
        check_ledger(ledger, config.usage.rotate_bytes.is_some())
            .map_err(|m| invalid("usage.ledger", m))?;
    }
    super::files::check_not_overwritten(config, None).map_err(|(key, m)| invalid(key, m))?;
    if config.routes.is_empty() {
        return Err(invalid("routes", "at least one route is required"));
    }
    validate_limits(config)?;
    for (i, route) in config.routes.iter().enumerate() {
        let auth = config.route_auth(i);
        let auth_key = if route.auth.is_some() {
            format!("routes[{i}].auth")
        } else {
            "auth".to_string()
        };
        validate_auth(auth, &auth_key)?;
        if route.max_request_body == 0 {
            return Err(invalid(
                format!("routes[{i}].max_request_body"),
                "must be at least 1 byte",
            ));
        }
        if !route.path_prefix.starts_with('/') {
            return Err(invalid(
                format!("routes[{i}].path_prefix"),
                format!("must start with '/', got {:?}", route.path_prefix),
            ));
        }
        // Requests are routed by their path as an upstream resolves it (decoded, slashes
        // merged, without its query), and one with a dot segment is refused first: a prefix
        // written otherwise is never matched, and its requests would take another route.
        let key = format!("routes[{i}].path_prefix");
        if route.path_prefix.contains(['?', '#']) {
            return Err(invalid(
                key,
                "has a `?` or `#`: routes match the path alone, never the query",
            ));
        }
        let matched = crate::route::match_path(&route.path_prefix);
        let segments: Vec<&str> = matched.split('/').collect();
        let dot_segment = segments
            .iter()
            .enumerate()
            .any(|(n, segment)| *segment == ".." || (*segment == "." && n + 1 < segments.len()));
        if dot_segment {
            return Err(invalid(
                key,
                "has a `.` or `..` segment: requests with one are refused (400), never routed",
            ));
        }
        if matched != route.path_prefix {
            return Err(invalid(
                key,
                format!(
                    "request paths are matched decoded, with repeated slashes merged: write it \
                     as {matched:?}"
                ),
            ));
        }
        if !config.upstreams.contains_key(&route.upstream) {
            let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
            return Err(invalid(
                format!("routes[{i}].upstream"),
                format!(
                    "unknown upstream {:?} (defined: {})",
                    route.upstream,
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The directory a file named `path` goes in, which must exist.
pub(super) fn existing_dir_of(path: &Path) -> Result<&Path, String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Ok(dir)
    } else if dir.exists() {
        Err(format!("{} is not a directory", dir.display()))
    } else {
        Err(format!("directory {} does not exist", dir.display()))
    }
}

/// Refuses what the ledger refuses when it opens the file at start (`LedgerFile::open`: the
/// directory must exist, the file is opened to read and append, created when missing), without
/// creating anything: `check` is run where Sluice may never start. With `rotates`, the ledger
/// also renames files in its directory (`PATH` → `PATH.1`), so the directory must be writable
/// even when the file exists: else rotation would fail at every batch and the file grow.
fn check_ledger(path: &Path, rotates: bool) -> Result<(), String> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err(
            "is empty: name the ledger file, or leave `ledger` out to keep records in metrics \
             and the access log only"
                .into(),
        );
    }
    if path.is_dir() || path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        let what = if path.is_dir() { "is" } else { "names" };
        return Err(format!(
            "{shown} {what} a directory: name the ledger file, such as {}",
            path.join("usage.jsonl").display()
        ));
    }
    let dir = existing_dir_of(path)?;
    // `/dev/null`, a FIFO, a `/proc` file: opened fine, and every record's fsync then fails.
    if path.exists() && !path.is_file() {
        return Err(format!("{shown} exists and is not a regular file"));
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(_) if rotates => may_create_in(dir).map_err(|err| {
            format!(
                "cannot rotate {shown} (usage.rotate_bytes): directory {}: {err}",
                dir.display()
            )
        }),
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => may_create_in(dir)
            .map_err(|err| format!("cannot create {shown}: directory {}: {err}", dir.display())),
        Err(err) => Err(format!("cannot open {shown}: {err}")),
    }
}

/// Whether this process may add a file to `dir`, as the kernel would decide for an `open` that
/// creates one (permissions, ACLs, a read-only mount).
#[cfg(unix)]
fn may_create_in(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `dir` is a NUL-terminated string that outlives the call, which only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            dir.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn may_create_in(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Rotated ledger files kept at most: a rotation renames each of them.
const MAX_KEEP: usize = 1000;

/// Far more threads than any machine has cores; beyond it a typo (a count of bytes, say) would
/// abort the start with a failed allocation.
const MAX_THREADS: usize = 1024;

/// Whether two listening addresses take the same port on some address: equal, or one a
/// wildcard (`0.0.0.0` covers IPv4; `[::]` covers IPv6, and IPv4 too where the host binds IPv6
/// sockets dual-stack, Linux's default: Sluice leaves `IPV6_V6ONLY` to the host).
/// Port 0 takes a free port of its own each time.
fn overlap(a: &SocketAddr, b: &SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |wide: &SocketAddr, other: &SocketAddr| match (wide.ip(), other.ip()) {
        (std::net::IpAddr::V4(w), std::net::IpAddr::V4(_)) => w.is_unspecified(),
        (std::net::IpAddr::V6(w), std::net::IpAddr::V6(_)) => w.is_unspecified(),
        (std::net::IpAddr::V6(w), std::net::IpAddr::V4(_)) => w.is_unspecified() && dual_stack(),
        (std::net::IpAddr::V4(_), std::net::IpAddr::V6(_)) => false,
    };
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}

/// Whether an IPv6 wildcard socket also takes IPv4 here (`net.ipv6.bindv6only` is 0).
fn dual_stack() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").map_or(true, |v| v.trim() == "0")
}

fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|_| format!("{addr:?} is not an address of the form IP:PORT"))
}

#[cfg(test)]
mod tests;
