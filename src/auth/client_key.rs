//! Finding the key a client sent, and removing it from the query string before the request
//! goes upstream.

use http::HeaderMap;
use std::borrow::Cow;

/// Header names that carry client keys (lowercase), so the proxy can strip them all.
pub const CLIENT_KEY_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-goog-api-key"];

/// The query parameter Gemini clients put their key in.
const KEY_PARAM: &str = "key";

/// Where the client's key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `Authorization: Bearer …` (OpenAI style)
    Bearer,
    /// `x-api-key` (Anthropic style)
    XApiKey,
    /// `x-goog-api-key` (Gemini style)
    XGoogApiKey,
    /// `?key=…` (Gemini style)
    QueryKey,
}

/// A key as the client sent it; borrowed from the request, never stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientKey<'a> {
    pub value: &'a str,
    pub source: KeySource,
}

// The key itself must never reach a log line through `{:?}`.
impl std::fmt::Debug for ClientKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("value", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Looks in, in order: `Authorization: Bearer …` (scheme case-insensitive), `x-api-key`,
/// `x-goog-api-key`, then the `key` query parameter. Empty values count as absent, so a client
/// whose SDK sends an empty bearer token alongside a real `x-api-key` still gets through.
pub fn find_client_key<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Option<ClientKey<'a>> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let bearer = header("authorization").and_then(|v| {
        let (scheme, token) = v.split_once([' ', '\t'])?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    });
    let found = |value, source| Some(ClientKey { value, source });
    if let Some(value) = bearer {
        return found(value, KeySource::Bearer);
    }
    if let Some(value) = header("x-api-key") {
        return found(value, KeySource::XApiKey);
    }
    if let Some(value) = header("x-goog-api-key") {
        return found(value, KeySource::XGoogApiKey);
    }
    query?
        .split('&')
        .filter(|param| is_key_param(param))
        .filter_map(|param| param.split_once('=').map(|(_, value)| value))
        .find(|value| !value.is_empty())
        .map(|value| ClientKey {
            value,
            source: KeySource::QueryKey,
        })
}

/// The path-and-query with every `key` query parameter removed, keeping the order of the
/// others and dropping the `?` when nothing is left. Borrowed when there is nothing to remove.
pub fn remove_key_param(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    if !query.split('&').any(is_key_param) {
        return Cow::Borrowed(path_and_query);
    }
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    let kept = query
        .split('&')
        .filter(|param| !param.is_empty() && !is_key_param(param));
    for (i, param) in kept.enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(param);
    }
    Cow::Owned(out)
}

/// Shared by lookup and removal so that a key the proxy accepted from the query string is
/// always one it also removes. A bare `key` (no `=`) is removed too: it carries nothing, but
/// an upstream might read it as a flag.
fn is_key_param(param: &str) -> bool {
    param.split_once('=').map_or(param, |(name, _)| name) == KEY_PARAM
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn find(
        pairs: &[(&'static str, &'static str)],
        query: Option<&str>,
    ) -> Option<(String, KeySource)> {
        let map = headers(pairs);
        find_client_key(&map, query).map(|k| (k.value.to_string(), k.source))
    }

    #[test]
    fn each_source_is_found() {
        assert_eq!(
            find(&[("authorization", "Bearer a")], None),
            Some(("a".into(), KeySource::Bearer))
        );
        assert_eq!(
            find(&[("x-api-key", "b")], None),
            Some(("b".into(), KeySource::XApiKey))
        );
        assert_eq!(
            find(&[("x-goog-api-key", "c")], None),
            Some(("c".into(), KeySource::XGoogApiKey))
        );
        assert_eq!(
            find(&[], Some("alt=sse&key=d")),
            Some(("d".into(), KeySource::QueryKey))
        );
        assert_eq!(find(&[], None), None);
        assert_eq!(find(&[], Some("alt=sse")), None);
    }

    #[test]
    fn precedence_is_bearer_then_x_api_key_then_goog_then_query() {
        let all = [
            ("authorization", "Bearer a"),
            ("x-api-key", "b"),
            ("x-goog-api-key", "c"),
        ];
        assert_eq!(find(&all, Some("key=d")).unwrap().1, KeySource::Bearer);
        assert_eq!(
            find(&all[1..], Some("key=d")).unwrap().1,
            KeySource::XApiKey
        );
        assert_eq!(
            find(&all[2..], Some("key=d")).unwrap().1,
            KeySource::XGoogApiKey
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_trimmed() {
        for value in ["bearer k", "BEARER k", "BeArEr   k", "Bearer\tk "] {
            let map = {
                let mut m = HeaderMap::new();
                m.insert("authorization", HeaderValue::from_str(value).unwrap());
                m
            };
            let key = find_client_key(&map, None).unwrap();
            assert_eq!((key.value, key.source), ("k", KeySource::Bearer), "{value}");
        }
    }

    #[test]
    fn basic_auth_is_ignored_and_later_sources_still_count() {
        assert_eq!(find(&[("authorization", "Basic dXNlcjpwYXNz")], None), None);
        assert_eq!(find(&[("authorization", "Bearerk")], None), None);
        assert_eq!(
            find(
                &[("authorization", "Basic dXNlcjpwYXNz"), ("x-api-key", "b")],
                None
            ),
            Some(("b".into(), KeySource::XApiKey))
        );
    }

    #[test]
    fn empty_values_count_as_absent() {
        assert_eq!(
            find(
                &[
                    ("authorization", "Bearer "),
                    ("x-api-key", ""),
                    ("x-goog-api-key", " ")
                ],
                Some("key=&key=e")
            ),
            Some(("e".into(), KeySource::QueryKey))
        );
        assert_eq!(find(&[], Some("key=&key")), None);
    }

    #[test]
    fn query_param_name_must_match_exactly() {
        assert_eq!(find(&[], Some("keyx=1&xkey=2&Key=3")), None);
        assert_eq!(
            find(&[], Some("a=1&key=k&b=2")),
            Some(("k".into(), KeySource::QueryKey))
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let map = headers(&[("x-api-key", "secret-value")]);
        let shown = format!("{:?}", find_client_key(&map, None).unwrap());
        assert!(!shown.contains("secret-value"), "{shown}");
    }

    #[test]
    fn remove_key_param_cases() {
        let cases = [
            ("/v1/m?key=x", "/v1/m"),
            ("/v1/m?a=1&key=x&b=2", "/v1/m?a=1&b=2"),
            ("/v1/m?key=x&alt=sse", "/v1/m?alt=sse"),
            ("/v1/m?alt=sse&key=x", "/v1/m?alt=sse"),
            ("/v1/m?key=", "/v1/m"),
            ("/v1/m?key", "/v1/m"),
            ("/v1/m?key=x&key=y", "/v1/m"),
            ("/v1/m?key=x&", "/v1/m"),
        ];
        for (input, expected) in cases {
            let out = remove_key_param(input);
            assert!(matches!(out, Cow::Owned(_)), "{input}");
            assert_eq!(out, expected, "{input}");
        }
    }

    #[test]
    fn remove_key_param_borrows_when_nothing_changes() {
        for input in [
            "/v1/m",
            "/v1/m?keyx=1",
            "/v1/m?a=1&b=2",
            "/v1/m?",
            "/v1/m?mykey=1&Key=2",
        ] {
            let out = remove_key_param(input);
            assert!(matches!(out, Cow::Borrowed(_)), "{input}");
            assert_eq!(out, input);
        }
    }
}
