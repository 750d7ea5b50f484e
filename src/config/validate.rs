//! Checks that serde cannot express: references between sections, URL and address shapes.

use super::{AuthSettings, Config, ConfigError, LimitsBackend};
use crate::auth::AuthMode;
use std::net::SocketAddr;

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
        if !(redis.redis.starts_with("redis://") || redis.redis.starts_with("rediss://")) {
            return Err(invalid(
                "limits.backend.redis",
                format!("must be a redis:// URL, got {:?}", redis.redis),
            ));
        }
        if redis.lease_ttl < std::time::Duration::from_secs(1) {
            return Err(invalid("limits.backend.lease_ttl", "must be at least 1s"));
        }
        if redis.timeout.is_zero() {
            return Err(invalid("limits.backend.timeout", "must be more than 0"));
        }
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
    for (i, listener) in config.listen.iter().enumerate() {
        parse_addr(&listener.addr).map_err(|m| invalid(format!("listen[{i}].addr"), m))?;
    }
    if let Some(admin) = &config.admin {
        parse_addr(admin).map_err(|m| invalid("admin", m))?;
    }
    if config.server.threads == 0 {
        return Err(invalid("server.threads", "must be at least 1"));
    }
    for (name, upstream) in &config.upstreams {
        crate::route::UpstreamTarget::parse(&upstream.url)
            .map_err(|m| invalid(format!("upstreams.{name}.url"), m))?;
        for header in upstream.headers.keys() {
            http::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                invalid(
                    format!("upstreams.{name}.headers.{header}"),
                    "not a valid header name",
                )
            })?;
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
        if !route.path_prefix.starts_with('/') {
            return Err(invalid(
                format!("routes[{i}].path_prefix"),
                format!("must start with '/', got {:?}", route.path_prefix),
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

fn parse_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|_| format!("{addr:?} is not an address of the form IP:PORT"))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn error_of(text: &str) -> String {
        Config::from_yaml(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_upstream_is_named() {
        let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: http://127.0.0.1:9}}\nroutes: [{path_prefix: /, upstream: nope}]\n");
        assert!(
            err.contains("routes[0].upstream") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn bad_url_and_addr_are_named() {
        let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: ftp://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
        assert!(err.contains("upstreams.u.url"), "{err}");
        let err = error_of("listen: [{addr: localhost}]\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
        assert!(err.contains("listen[0].addr"), "{err}");
    }

    #[test]
    fn path_prefix_must_be_absolute() {
        let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: v1, upstream: u}]\n");
        assert!(err.contains("routes[0].path_prefix"), "{err}");
    }
}
