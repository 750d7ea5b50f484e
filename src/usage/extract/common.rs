//! Pieces every extractor shares: the guarded JSON parse and the provider error shapes.

use std::borrow::Cow;

use serde::Deserialize;

use super::scan::leading_type;
use crate::usage::record::{ProviderError, StreamFacts};

/// Parses `data` as `T`; on failure counts the event as unparsed and gives up on it.
pub(crate) fn parse<'a, T: Deserialize<'a>>(facts: &mut StreamFacts, data: &'a [u8]) -> Option<T> {
    match serde_json::from_slice(data) {
        Ok(value) => Some(value),
        Err(_) => {
            facts.unparsed_events += 1;
            None
        }
    }
}

/// The event's type for formats that name their events (Anthropic, Responses): the SSE event
/// name, or, when the stream carried none (a relay dropped it), the `"type"` its data states.
/// The data is only parsed when `"type"` is not its first key.
pub(crate) fn event_kind<'a>(
    facts: &mut StreamFacts,
    event_type: &'a [u8],
    data: &'a [u8],
) -> Option<Cow<'a, [u8]>> {
    #[derive(Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    if event_type != b"message" {
        return Some(Cow::Borrowed(event_type));
    }
    if let Some(kind) = leading_type(data) {
        return Some(Cow::Borrowed(kind));
    }
    let kind = parse::<TypeOnly>(facts, data)?.kind?;
    Some(Cow::Owned(kind.into_bytes()))
}

/// An error code: OpenAI and Responses write strings, Gemini numbers.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Code {
    Text(String),
    Number(i64),
}

impl Code {
    fn into_string(self) -> String {
        match self {
            Code::Text(text) => text,
            Code::Number(n) => n.to_string(),
        }
    }
}

/// The error object of OpenAI (`{"message","type","param","code"}`), Anthropic
/// (`{"type","message"}`) and Gemini (`{"code","message","status"}`).
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
    code: Option<Code>,
    message: Option<String>,
}

impl ErrorBody {
    pub(crate) fn into_provider_error(self) -> ProviderError {
        let kind = self
            .kind
            .or(self.status)
            .or_else(|| self.code.map(Code::into_string))
            .unwrap_or_else(|| "error".to_owned());
        ProviderError {
            kind,
            message: self.message.unwrap_or_default(),
        }
    }
}

/// An error event of any provider: a nested `error` object (OpenAI, Anthropic, Gemini), or the
/// flat `{"type":"error","code","message"}` of the Responses API.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEvent {
    error: Option<ErrorBody>,
    code: Option<Code>,
    message: Option<String>,
}

impl ErrorEvent {
    pub(crate) fn into_provider_error(self) -> Option<ProviderError> {
        if let Some(body) = self.error {
            return Some(body.into_provider_error());
        }
        if self.code.is_none() && self.message.is_none() {
            return None;
        }
        Some(ProviderError {
            kind: self
                .code
                .map(Code::into_string)
                .unwrap_or_else(|| "error".to_owned()),
            message: self.message.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(data: &str) -> Option<ProviderError> {
        serde_json::from_str::<ErrorEvent>(data)
            .unwrap()
            .into_provider_error()
    }

    #[test]
    fn each_provider_shape() {
        let openai = error_of(
            r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#,
        )
        .unwrap();
        assert_eq!(
            (openai.kind.as_str(), openai.message.as_str()),
            ("server_error", "boom")
        );

        let gemini =
            error_of(r#"{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}"#).unwrap();
        assert_eq!(gemini.kind, "UNAVAILABLE");

        let responses = error_of(
            r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null}"#,
        )
        .unwrap();
        assert_eq!(responses.kind, "ERR_SOMETHING");

        let bare = error_of(r#"{"error":{"code":500}}"#).unwrap();
        assert_eq!((bare.kind.as_str(), bare.message.as_str()), ("500", ""));

        assert_eq!(error_of(r#"{"choices":[]}"#), None);
    }

    #[test]
    fn counts_what_does_not_parse() {
        let mut facts = StreamFacts::default();
        assert!(parse::<ErrorEvent>(&mut facts, b"{not json").is_none());
        assert!(parse::<ErrorEvent>(&mut facts, br#"{"error":{"message":7}}"#).is_none());
        assert_eq!(facts.unparsed_events, 2);
    }
}
