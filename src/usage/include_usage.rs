//! Making OpenAI streams report usage: Chat Completions and legacy Completions only send the
//! usage chunk when the request says `stream_options.include_usage: true`. Sluice adds it when
//! the route says so, and remembers whether the client asked itself: if not, the proxy removes
//! the usage-only chunk from what the client receives, so the client gets exactly the frames it
//! asked for.

use crate::sse::StreamMembers;
use serde_json::{Map, Value};

/// What to do with a stream request's body.
#[derive(Debug, PartialEq, Eq)]
pub enum IncludeUsage {
    /// The client asked for usage itself: forward the body as it is, strip nothing.
    ClientAsked,
    /// Forward this rewritten body; strip the usage-only chunk from the client's stream.
    Injected(Vec<u8>),
    /// Forward the body untouched, for the reason given (logged by the caller).
    Untouched(&'static str),
}

/// Rewrites a complete JSON request body so that it asks for usage. `members` is what
/// [`StreamMembers::read`] made of `body` (`None`: not a JSON object).
pub fn ensure_include_usage(body: &[u8], members: Option<&StreamMembers>) -> IncludeUsage {
    const NOT_AN_OBJECT: &str = "request body is not a JSON object";
    let Some(members) = members else {
        return IncludeUsage::Untouched(NOT_AN_OBJECT);
    };
    if members.repeated {
        return IncludeUsage::Untouched("request body repeats stream or stream_options");
    }
    if members.stream != Value::Bool(true) {
        return IncludeUsage::Untouched("not a stream request");
    }
    match &members.stream_options {
        None => IncludeUsage::Injected(append_stream_options(body)),
        Some(Value::Object(options)) => {
            if options.get("include_usage") == Some(&Value::Bool(true)) {
                return IncludeUsage::ClientAsked;
            }
            // Rare: the client sent other stream options. Re-serialising reorders keys, which
            // JSON APIs ignore.
            let Ok(mut object) = serde_json::from_slice::<Map<String, Value>>(body) else {
                return IncludeUsage::Untouched(NOT_AN_OBJECT);
            };
            if let Some(Value::Object(options)) = object.get_mut("stream_options") {
                options.insert("include_usage".into(), Value::Bool(true));
            }
            IncludeUsage::Injected(serde_json::to_vec(&object).expect("a Map serialises"))
        }
        Some(_) => IncludeUsage::Untouched("stream_options is not an object"),
    }
}

/// Adds the member before the object's closing brace, leaving every other byte as sent.
fn append_stream_options(body: &[u8]) -> Vec<u8> {
    let close = body
        .iter()
        .rposition(|&b| b == b'}')
        .expect("a parsed JSON object ends with '}'");
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(&body[..close]);
    out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
    out.extend_from_slice(&body[close..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(body: &[u8]) -> IncludeUsage {
        ensure_include_usage(body, StreamMembers::read(body).as_ref())
    }

    fn injected(body: &str) -> Value {
        match rewrite(body.as_bytes()) {
            IncludeUsage::Injected(b) => serde_json::from_slice(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn adds_stream_options_keeping_the_body() {
        let body = r#"{"model":"m", "stream":true, "messages":[{"role":"user","content":"}"}] }"#;
        match rewrite(body.as_bytes()) {
            IncludeUsage::Injected(b) => assert_eq!(
                String::from_utf8(b).unwrap(),
                r#"{"model":"m", "stream":true, "messages":[{"role":"user","content":"}"}] ,"stream_options":{"include_usage":true}}"#
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sets_include_usage_in_existing_options() {
        let v = injected(r#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
        let v = injected(r#"{"stream":true,"stream_options":{"include_usage":false}}"#);
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn client_that_asked_is_left_alone() {
        assert_eq!(
            rewrite(br#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            IncludeUsage::ClientAsked
        );
    }

    #[test]
    fn other_bodies_are_untouched() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"stream":false}"#,
            br#"{"stream":true,"stream_options":3}"#,
            br#"{"stream":true,"stream_options":null}"#,
            br#"[true,null]"#,
            br#"{"stream":true,"stream":true}"#,
            br#"{"stream":true,"messages":[1,}"#,
        ] {
            assert!(
                matches!(rewrite(body), IncludeUsage::Untouched(_)),
                "{body:?}"
            );
        }
    }
}
