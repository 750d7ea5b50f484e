//! Recognising event streams: responses by their media type, requests by what they ask for.

use serde::Deserialize;

/// A response is an event stream when its Content-Type media type is `text/event-stream`, in any
/// case, with or without parameters.
pub fn is_event_stream(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    media_type
        .trim_ascii()
        .eq_ignore_ascii_case(b"text/event-stream")
}

/// A request asks for a stream when it accepts `text/event-stream` or its JSON body says
/// `"stream": true`.
pub fn request_wants_stream(accept: Option<&[u8]>, json_body: Option<&[u8]>) -> bool {
    let accepts = accept.is_some_and(|accept| accept.split(|&b| b == b',').any(is_event_stream));
    accepts || json_body.is_some_and(body_sets_stream)
}

#[derive(Deserialize)]
struct StreamFlag {
    #[serde(default)]
    stream: serde_json::Value,
}

fn body_sets_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<StreamFlag>(body).is_ok_and(|flag| flag.stream == true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_in_any_case_with_parameters() {
        assert!(is_event_stream(b"text/event-stream"));
        assert!(is_event_stream(b"Text/Event-Stream; charset=utf-8"));
        assert!(is_event_stream(b" text/event-stream ;charset=UTF-8"));
        assert!(!is_event_stream(b"application/json"));
        assert!(!is_event_stream(b"text/event-streams"));
        assert!(!is_event_stream(b""));
    }

    #[test]
    fn requests() {
        assert!(request_wants_stream(Some(b"text/event-stream"), None));
        assert!(request_wants_stream(
            Some(b"application/json, text/event-stream;q=0.9"),
            None
        ));
        assert!(request_wants_stream(
            None,
            Some(br#"{"model":"x","stream":true}"#)
        ));
        assert!(!request_wants_stream(None, Some(br#"{"stream":false}"#)));
        assert!(!request_wants_stream(None, Some(br#"{"stream":"true"}"#)));
        assert!(!request_wants_stream(None, Some(b"not json")));
        assert!(!request_wants_stream(Some(b"*/*"), None));
    }
}
