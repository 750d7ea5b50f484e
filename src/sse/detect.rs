//! Recognising streams: responses by their media type (event streams and JSON lines), requests by
//! what they ask for.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A response body that is a stream of records, relayed unbuffered and ended cleanly by Sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `text/event-stream`: Server-Sent Events.
    EventStream,
    /// Newline-delimited JSON (`application/x-ndjson`, `application/ndjson`, `application/jsonl`,
    /// `application/x-jsonlines`, `application/jsonlines`): one JSON value per `\n`-ended line.
    JsonLines,
    /// RFC 7464 JSON text sequences (`application/json-seq`): each record is `RS` (0x1E), a JSON
    /// value and `\n`.
    JsonSeq,
    /// A JSON array streamed element by element: Gemini's answer to `streamGenerateContent`
    /// without `alt=sse` (`application/json`). Told by the request, not by the type alone
    /// ([`StreamKind::gemini_array`]).
    JsonArray,
}

impl StreamKind {
    /// The kind of a response with this `Content-Type` (media type in any case, with or without
    /// parameters), if it is a stream.
    pub fn of_content_type(content_type: &[u8]) -> Option<StreamKind> {
        let media_type = media_type(content_type);
        if media_type.eq_ignore_ascii_case(b"text/event-stream") {
            Some(StreamKind::EventStream)
        } else if JSON_LINES
            .iter()
            .any(|t| media_type.eq_ignore_ascii_case(t.as_bytes()))
        {
            Some(StreamKind::JsonLines)
        } else if media_type.eq_ignore_ascii_case(b"application/json-seq") {
            Some(StreamKind::JsonSeq)
        } else {
            None
        }
    }

    /// A Gemini stream request answered `application/json`: its streamed array.
    pub fn gemini_array(content_type: &[u8]) -> Option<StreamKind> {
        media_type(content_type)
            .eq_ignore_ascii_case(b"application/json")
            .then_some(StreamKind::JsonArray)
    }

    /// One record of this kind holding `json`: an SSE `data:` event is written elsewhere (it
    /// depends on the provider), so this is for the JSON-lines kinds.
    pub fn json_record(self, json: &str) -> String {
        match self {
            StreamKind::JsonSeq => format!("\u{1e}{json}\n"),
            _ => format!("{json}\n"),
        }
    }
}

/// Where the bytes sent to a client of a JSON-lines stream stand: at the end of a line (or before
/// the first), or inside one. Sluice's own last line must never land inside an upstream line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineBoundary {
    at_boundary: bool,
}

impl Default for LineBoundary {
    fn default() -> Self {
        LineBoundary { at_boundary: true }
    }
}

impl LineBoundary {
    /// `data` went to the client.
    pub fn on_sent(&mut self, data: &[u8]) {
        if let Some(&last) = data.last() {
            self.at_boundary = last == b'\n';
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.at_boundary
    }
}

/// The newline-delimited JSON media types (no registered name exists; these are the ones in use).
const JSON_LINES: [&str; 5] = [
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
];

fn media_type(content_type: &[u8]) -> &[u8] {
    content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// A response is an event stream when its Content-Type media type is `text/event-stream`, in any
/// case, with or without parameters.
pub fn is_event_stream(content_type: &[u8]) -> bool {
    StreamKind::of_content_type(content_type) == Some(StreamKind::EventStream)
}

/// A request asks for a stream when it accepts a stream media type (`text/event-stream` or a
/// JSON-lines type), when its JSON body says `"stream": true`, when its path is Gemini's
/// `…:streamGenerateContent`, or when it is an Ollama `…/api/chat` or `…/api/generate` request
/// (those stream by default) whose body does not say `"stream": false`. `body` is what was read of
/// a whole body (up to 1 MiB), `None` for a larger body or one that is not a JSON object.
pub fn request_wants_stream(
    accept: Option<&[u8]>,
    body: Option<&StreamMembers>,
    path: &str,
) -> bool {
    let accepts = accept.is_some_and(|accept| {
        accept
            .split(|&b| b == b',')
            .any(|range| StreamKind::of_content_type(range).is_some())
    });
    let flag = body.and_then(|members| members.stream.as_bool());
    accepts
        || body.is_some_and(|members| members.asks_for_stream)
        || path.ends_with(":streamGenerateContent")
        || (streams_by_default(path) && flag != Some(false))
}

/// Ollama's generation endpoints stream unless the request says `"stream": false`.
fn streams_by_default(path: &str) -> bool {
    path.ends_with("/api/chat") || path.ends_with("/api/generate")
}

/// The members of a JSON request body that streaming depends on, read once per request. The
/// others (the prompt: often many kilobytes) are only checked to be JSON, never copied into
/// values: this runs before the request goes upstream.
#[derive(Debug, Default)]
pub struct StreamMembers {
    /// The last `stream` member, as the upstreams' JSON parsers read a repeated one (Python,
    /// Go, Node: the last wins); `Null` when there is none.
    pub stream: Value,
    /// `Some` when the member is there, even as `null`.
    pub stream_options: Option<Value>,
    /// `stream` or `stream_options` appears more than once (in any ASCII case: Go's decoder,
    /// under Ollama, matches names so). Which one counts is the upstream parser's choice: such a
    /// body is not rewritten, and any one asking for a stream makes it a stream (else
    /// `"stream":true,"stream":false` would take no stream slot from a parser that keeps the
    /// first).
    pub repeated: bool,
    /// Some `stream` member (in any ASCII case) is neither `false` nor `null`: `true`, and also
    /// what a lenient upstream reads as true (pydantic, under vLLM and LiteLLM, takes `1`,
    /// `"true"`, `"yes"`, `"on"`), so that no spelling of a stream gets past its stream slot.
    pub asks_for_stream: bool,
}

impl<'de> Deserialize<'de> for StreamMembers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MembersVisitor)
    }
}

enum Member {
    Stream,
    StreamOptions,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(MemberVisitor)
    }
}

struct MemberVisitor;

impl serde::de::Visitor<'_> for MemberVisitor {
    type Value = Member;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }

    /// Compared in place, in any ASCII case (no copy of the name).
    fn visit_str<E>(self, name: &str) -> Result<Member, E> {
        Ok(if name.eq_ignore_ascii_case("stream") {
            Member::Stream
        } else if name.eq_ignore_ascii_case("stream_options") {
            Member::StreamOptions
        } else {
            Member::Other
        })
    }
}

struct MembersVisitor;

impl<'de> serde::de::Visitor<'de> for MembersVisitor {
    type Value = StreamMembers;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<StreamMembers, A::Error> {
        let mut members = StreamMembers::default();
        let (mut stream_seen, mut options_seen) = (false, false);
        while let Some(member) = map.next_key::<Member>()? {
            match member {
                Member::Stream => {
                    members.stream = map.next_value()?;
                    members.asks_for_stream |=
                        !matches!(members.stream, Value::Null | Value::Bool(false));
                    members.repeated |= std::mem::replace(&mut stream_seen, true);
                }
                Member::StreamOptions => {
                    members.stream_options = Some(map.next_value()?);
                    members.repeated |= std::mem::replace(&mut options_seen, true);
                }
                Member::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(members)
    }
}

/// Whether `body` may be a JSON object that [`StreamMembers::read`] could not read, as a more
/// lenient upstream parser might (Python's reads `NaN`, a lone surrogate in a name, a leading
/// byte-order mark): it starts like one, after white space or a byte-order mark (UTF-8, or
/// UTF-16 in either order).
pub fn may_be_json_object(body: &[u8]) -> bool {
    if body.starts_with(&[0xFE, 0xFF]) || body.starts_with(&[0xFF, 0xFE]) {
        return true;
    }
    let body = body.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(body);
    body.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        == Some(&b'{')
}

impl StreamMembers {
    /// `None` when the body is not a JSON object.
    pub fn read(body: &[u8]) -> Option<StreamMembers> {
        // A struct also deserialises from a JSON array (`[true]`): only an object has members.
        let first = body
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(body).ok()
    }
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
    fn json_lines_kinds() {
        use StreamKind::*;
        for (content_type, kind) in [
            (&b"application/x-ndjson"[..], Some(JsonLines)),
            (b"Application/X-NDJSON; charset=utf-8", Some(JsonLines)),
            (b"application/ndjson", Some(JsonLines)),
            (b"application/jsonl", Some(JsonLines)),
            (b"application/x-jsonlines", Some(JsonLines)),
            (b"application/json-seq", Some(JsonSeq)),
            (b"application/json", None),
            (b"application/x-ndjsonx", None),
            (b"text/event-stream", Some(EventStream)),
        ] {
            assert_eq!(
                StreamKind::of_content_type(content_type),
                kind,
                "{content_type:?}"
            );
        }
        assert_eq!(JsonLines.json_record("{}"), "{}\n");
        assert_eq!(JsonSeq.json_record("{}"), "\u{1e}{}\n");
    }

    #[test]
    fn line_boundary_follows_the_last_byte_sent() {
        let mut lines = LineBoundary::default();
        assert!(lines.at_boundary());
        lines.on_sent(b"{\"a\":1}\n{\"b\"");
        assert!(!lines.at_boundary());
        lines.on_sent(b"");
        assert!(!lines.at_boundary());
        lines.on_sent(b":2}\n");
        assert!(lines.at_boundary());
    }

    fn body(bytes: &[u8]) -> Option<StreamMembers> {
        StreamMembers::read(bytes)
    }

    #[test]
    fn members_are_read_as_upstream_parsers_read_them() {
        let members =
            body(br#"{"stream":true,"x":{"stream":false},"stream_options":{"a":1}}"#).unwrap();
        assert_eq!(members.stream, Value::Bool(true));
        assert_eq!(members.stream_options, Some(serde_json::json!({"a":1})));
        assert!(!members.repeated);
        let members = body(br#"{"stream":true,"stream":false}"#).unwrap();
        assert_eq!(members.stream, Value::Bool(false), "the last one");
        assert!(members.repeated && members.asks_for_stream);
        let members = body(br#"{"stream_options":null,"stream_options":{}}"#).unwrap();
        assert!(members.repeated);
        let members = body(br#"{"model":"m"}"#).unwrap();
        assert_eq!(
            (members.stream, members.stream_options),
            (Value::Null, None)
        );
        // An escaped key is the same member.
        assert!(body(br#"{"str\u0065am":true}"#).unwrap().asks_for_stream);
        // Names in any ASCII case, values a lenient parser reads as true.
        for asks in [
            &br#"{"Stream":true}"#[..],
            br#"{"stream":false,"STREAM":true}"#,
            br#"{"stream":1}"#,
            br#"{"stream":"yes"}"#,
        ] {
            assert!(body(asks).unwrap().asks_for_stream, "{asks:?}");
        }
        for not in [&br#"{"stream":false}"#[..], br#"{"stream":null}"#, b"{}"] {
            assert!(!body(not).unwrap().asks_for_stream, "{not:?}");
        }
        assert!(body(br#"{"stream":true,"STREAM":true}"#).unwrap().repeated);
    }

    #[test]
    fn bodies_that_may_be_json_objects_a_lenient_parser_reads() {
        for may in [
            &b"{}"[..],
            b" \n{\"stream\":true,\"x\":NaN}",
            b"\xEF\xBB\xBF{\"stream\":true}",
            b"\xFF\xFE{\x00",
        ] {
            assert!(may_be_json_object(may), "{may:?}");
            // Which serde_json does not read (the first one aside).
            assert!(
                may == b"{}" || StreamMembers::read(may).is_none(),
                "{may:?}"
            );
        }
        for not in [&b"--boundary\r\n"[..], b"[1]", b"", b"stream=true"] {
            assert!(!may_be_json_object(not), "{not:?}");
        }
        assert!(body(br#"{"stream":true,"messages":[1,}"#).is_none());
    }

    #[test]
    fn requests() {
        let p = "/v1/chat/completions";
        assert!(request_wants_stream(Some(b"text/event-stream"), None, p));
        assert!(request_wants_stream(
            Some(b"application/json, text/event-stream;q=0.9"),
            None,
            p
        ));
        assert!(request_wants_stream(Some(b"application/x-ndjson"), None, p));
        assert!(request_wants_stream(
            None,
            body(br#"{"model":"x","stream":true}"#).as_ref(),
            p
        ));
        assert!(!request_wants_stream(
            None,
            body(br#"{"stream":false}"#).as_ref(),
            p
        ));
        // pydantic (vLLM, LiteLLM) reads "true" as true.
        assert!(request_wants_stream(
            None,
            body(br#"{"stream":"true"}"#).as_ref(),
            p
        ));
        assert!(!request_wants_stream(None, body(b"not json").as_ref(), p));
        assert!(!request_wants_stream(None, body(b"[true]").as_ref(), p));
        assert!(request_wants_stream(
            None,
            body(b" \n{\"stream\": true}").as_ref(),
            p
        ));
        assert!(!request_wants_stream(Some(b"*/*"), None, p));
        // A repeated `stream`: any `true` is a stream, whichever one the upstream reads.
        for repeated in [
            &br#"{"stream":true,"stream":true}"#[..],
            br#"{"stream":false,"stream":true}"#,
            br#"{"stream":true,"stream":false}"#,
        ] {
            assert!(
                request_wants_stream(None, body(repeated).as_ref(), p),
                "{repeated:?}"
            );
        }
        assert!(!request_wants_stream(
            None,
            body(br#"{"stream":false,"stream":false}"#).as_ref(),
            p
        ));
        let gemini = "/v1beta/models/gemini-2.0-flash:streamGenerateContent";
        assert!(request_wants_stream(None, body(b"{}").as_ref(), gemini));
        assert!(!request_wants_stream(
            None,
            body(b"{}").as_ref(),
            "/v1beta/models/gemini-2.0-flash:generateContent"
        ));
    }

    #[test]
    fn ollama_generation_streams_unless_told_not_to() {
        for path in ["/api/chat", "/ollama/api/generate"] {
            assert!(request_wants_stream(
                None,
                body(br#"{"model":"m"}"#).as_ref(),
                path
            ));
            assert!(
                request_wants_stream(None, None, path),
                "body too large to read"
            );
            assert!(request_wants_stream(None, body(b"").as_ref(), path));
            assert!(request_wants_stream(
                None,
                body(br#"{"stream":true}"#).as_ref(),
                path
            ));
            assert!(!request_wants_stream(
                None,
                body(br#"{"stream":false}"#).as_ref(),
                path
            ));
        }
        assert!(!request_wants_stream(
            None,
            body(br#"{"model":"m"}"#).as_ref(),
            "/api/tags"
        ));
        assert!(!request_wants_stream(
            None,
            body(br#"{}"#).as_ref(),
            "/api/chat/x"
        ));
    }
}
