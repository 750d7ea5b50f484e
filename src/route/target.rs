//! Where an upstream lives, parsed from its configured URL.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    /// The built-in demo upstream, served in-process on a loopback port.
    Demo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Path prepended to every request path, without a trailing slash (may be empty).
    pub base_path: String,
    /// [`Self::authority`] as a header value, made once: requests share it instead of each
    /// formatting and copying it.
    host_header: http::HeaderValue,
}

impl UpstreamTarget {
    pub fn parse(text: &str) -> Result<UpstreamTarget, String> {
        let url = url::Url::parse(text).map_err(|e| format!("invalid URL {text:?}: {e}"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "demo" => Scheme::Demo,
            other => {
                return Err(format!(
                    "unsupported scheme {other:?} in {text:?} (use http, https or demo)"
                ))
            }
        };
        if scheme == Scheme::Demo {
            return UpstreamTarget::new(scheme, "127.0.0.1".into(), 0, String::new());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{text:?}: an upstream URL takes no query or fragment"
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{text:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{text:?} has no port"))?;
        let base_path = url.path().trim_end_matches('/').to_string();
        UpstreamTarget::new(scheme, host, port, base_path)
    }

    fn new(
        scheme: Scheme,
        host: String,
        port: u16,
        base_path: String,
    ) -> Result<UpstreamTarget, String> {
        let mut target = UpstreamTarget {
            scheme,
            host,
            port,
            base_path,
            host_header: http::HeaderValue::from_static(""),
        };
        let authority = target.authority();
        target.host_header = http::HeaderValue::from_str(&authority)
            .map_err(|_| format!("{authority:?} is not a valid Host header value"))?;
        Ok(target)
    }

    /// The `Host` header value for requests to this upstream.
    pub fn host_header(&self) -> &http::HeaderValue {
        &self.host_header
    }

    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Https
    }

    /// The `Host` header value for requests to this upstream.
    pub fn authority(&self) -> String {
        let default_port = matches!(
            (self.scheme, self.port),
            (Scheme::Http, 80) | (Scheme::Https, 443)
        );
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The request target sent upstream for a client's path and query.
    pub fn upstream_path(&self, path_and_query: &str) -> String {
        let mut target = String::with_capacity(self.base_path.len() + path_and_query.len());
        target.push_str(&self.base_path);
        target.push_str(path_and_query);
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_https_demo() {
        let t = UpstreamTarget::parse("https://api.openai.com").unwrap();
        assert_eq!(
            (t.scheme, t.port, t.authority()),
            (Scheme::Https, 443, "api.openai.com".into())
        );
        assert_eq!(
            t.upstream_path("/v1/chat/completions"),
            "/v1/chat/completions"
        );
        let t = UpstreamTarget::parse("http://127.0.0.1:8081/base/").unwrap();
        assert_eq!(t.authority(), "127.0.0.1:8081");
        assert_eq!(t.host_header(), "127.0.0.1:8081");
        assert_eq!(t.upstream_path("/v1/x?a=1"), "/base/v1/x?a=1");
        let t = UpstreamTarget::parse("http://[::1]:80/").unwrap();
        assert_eq!(t.host_header(), "[::1]");
        assert_eq!(
            UpstreamTarget::parse("demo://").unwrap().scheme,
            Scheme::Demo
        );
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(UpstreamTarget::parse("ftp://x")
            .unwrap_err()
            .contains("scheme"));
        assert!(UpstreamTarget::parse("not a url").is_err());
        assert!(UpstreamTarget::parse("http://x/?q=1").is_err());
    }
}
