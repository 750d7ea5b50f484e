//! Which stream format a response speaks: from the route's provider and the request path, or,
//! when those do not say, from the first frames.

use std::sync::LazyLock;

use super::scan::{leading_type, Needle};
use crate::provider::Provider;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    OpenaiChat,
    OpenaiCompletions,
    OpenaiResponses,
    AnthropicMessages,
    GeminiGenerate,
}

static CHAT_CHUNK: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"chat.completion.chunk\""));
static TEXT_COMPLETION: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"text_completion\""));
static RESPONSES_TYPE: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"type\":\"response."));
static CHOICES: LazyLock<Needle> = LazyLock::new(|| Needle::new(b"\"choices\""));
static GEMINI_KEYS: LazyLock<[Needle; 3]> = LazyLock::new(|| {
    [
        Needle::new(b"\"candidates\""),
        Needle::new(b"\"usageMetadata\""),
        Needle::new(b"\"promptFeedback\""),
    ]
});

impl StreamFormat {
    /// The format a request's response streams in. `auto` resolves the provider from the path
    /// the way routing does ([`Provider::resolve`]); `none`, and OpenAI paths that do not stream
    /// completions, give `None`.
    pub fn from_request(provider: Provider, path: &str) -> Option<StreamFormat> {
        let path = path.split_once('?').map_or(path, |(path, _query)| path);
        match provider.resolve(path) {
            Provider::Anthropic => Some(StreamFormat::AnthropicMessages),
            Provider::Gemini => Some(StreamFormat::GeminiGenerate),
            Provider::Openai | Provider::Auto => openai_from_path(path),
            Provider::None => None,
        }
    }

    /// Recognises the format from one event, or `None` when this event does not say (the caller
    /// tries the next one). Meant for the first frames only: it scans the whole event.
    pub fn sniff(event_type: &[u8], data: &[u8]) -> Option<StreamFormat> {
        if let Some(format) = from_event_name(event_type) {
            return Some(format);
        }
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            return Some(StreamFormat::OpenaiChat);
        }
        if let Some(format) = leading_type(data).and_then(from_event_name) {
            return Some(format);
        }
        if CHAT_CHUNK.occurs_in(data) {
            Some(StreamFormat::OpenaiChat)
        } else if TEXT_COMPLETION.occurs_in(data) {
            Some(StreamFormat::OpenaiCompletions)
        } else if RESPONSES_TYPE.occurs_in(data) {
            Some(StreamFormat::OpenaiResponses)
        } else if GEMINI_KEYS.iter().any(|key| key.occurs_in(data)) {
            Some(StreamFormat::GeminiGenerate)
        } else if CHOICES.occurs_in(data) {
            // OpenAI-compatible servers that leave out `object`.
            Some(StreamFormat::OpenaiChat)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StreamFormat::OpenaiChat => "openai_chat",
            StreamFormat::OpenaiCompletions => "openai_completions",
            StreamFormat::OpenaiResponses => "openai_responses",
            StreamFormat::AnthropicMessages => "anthropic_messages",
            StreamFormat::GeminiGenerate => "gemini_generate",
        }
    }
}

fn openai_from_path(path: &str) -> Option<StreamFormat> {
    if path.ends_with("/chat/completions") {
        Some(StreamFormat::OpenaiChat)
    } else if path.ends_with("/completions") {
        Some(StreamFormat::OpenaiCompletions)
    } else if path.ends_with("/responses") {
        Some(StreamFormat::OpenaiResponses)
    } else {
        None
    }
}

/// Event names (or data `type`s) that only one format uses. `error` is shared, so it says
/// nothing.
fn from_event_name(name: &[u8]) -> Option<StreamFormat> {
    match name {
        b"message_start"
        | b"message_delta"
        | b"message_stop"
        | b"content_block_start"
        | b"content_block_delta"
        | b"content_block_stop"
        | b"ping" => Some(StreamFormat::AnthropicMessages),
        name if name.starts_with(b"response.") => Some(StreamFormat::OpenaiResponses),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StreamFormat::*;

    #[test]
    fn from_provider_and_path() {
        let cases = [
            (Provider::Openai, "/v1/chat/completions", Some(OpenaiChat)),
            (
                Provider::Openai,
                "/openai/deployments/d/chat/completions?api-version=2024-10-21",
                Some(OpenaiChat),
            ),
            (Provider::Openai, "/v1/completions", Some(OpenaiCompletions)),
            (Provider::Openai, "/v1/responses", Some(OpenaiResponses)),
            (Provider::Openai, "/v1/embeddings", None),
            (Provider::Anthropic, "/anything", Some(AnthropicMessages)),
            (
                Provider::Gemini,
                "/v1beta/models/m:streamGenerateContent?alt=sse",
                Some(GeminiGenerate),
            ),
            (Provider::Auto, "/v1/messages", Some(AnthropicMessages)),
            (
                Provider::Auto,
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                Some(GeminiGenerate),
            ),
            (Provider::Auto, "/v1/chat/completions", Some(OpenaiChat)),
            (Provider::Auto, "/v1/responses", Some(OpenaiResponses)),
            (Provider::Auto, "/v1/models", None),
            (Provider::None, "/v1/chat/completions", None),
        ];
        for (provider, path, expected) in cases {
            assert_eq!(
                StreamFormat::from_request(provider, path),
                expected,
                "{provider:?} {path}"
            );
        }
    }

    #[test]
    fn from_frames() {
        let cases: [(&[u8], &[u8], Option<StreamFormat>); 11] = [
            (b"message_start", b"{}", Some(AnthropicMessages)),
            (b"response.created", b"{}", Some(OpenaiResponses)),
            (
                b"message",
                br#"{"type":"response.created","response":{}}"#,
                Some(OpenaiResponses),
            ),
            (
                b"message",
                br#"{"sequence_number":0,"type":"response.created"}"#,
                Some(OpenaiResponses),
            ),
            (
                b"message",
                br#"{"type": "message_start", "message": {}}"#,
                Some(AnthropicMessages),
            ),
            (
                b"message",
                br#"{"id":"c","object":"chat.completion.chunk","choices":[]}"#,
                Some(OpenaiChat),
            ),
            (
                b"message",
                br#"{"id":"c","object":"text_completion","choices":[]}"#,
                Some(OpenaiCompletions),
            ),
            (
                b"message",
                br#"{"candidates": [{"content": {}}]}"#,
                Some(GeminiGenerate),
            ),
            (
                b"message",
                br#"{"id":"x","choices":[{"delta":{}}]}"#,
                Some(OpenaiChat),
            ),
            (b"message", b" [DONE] ", Some(OpenaiChat)),
            (b"error", br#"{"error":{"message":"m"}}"#, None),
        ];
        for (event_type, data, expected) in cases {
            assert_eq!(
                StreamFormat::sniff(event_type, data),
                expected,
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }
}
