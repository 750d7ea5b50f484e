//! OpenAI legacy completions (`/v1/completions`) streams. Their chunks are `text_completion`
//! objects whose choices hold `text` instead of `delta`, but every field the extractor reads
//! (`model`, `choices[].finish_reason`, the `usage` chunk with `"choices": []`, `[DONE]`, the
//! error payload) has the chat chunks' name and meaning, so `extractor_for` hands them to the
//! chat extractor; this module holds what is particular to them: the evidence.

#[cfg(test)]
mod tests {
    use crate::usage::extract::{extractor_for, StreamFormat};

    #[test]
    fn text_completion_chunks() {
        let mut x = extractor_for(StreamFormat::OpenaiCompletions);
        let events: [&[u8]; 4] = [
            br#"{"id":"cmpl-1","object":"text_completion","created":1690759702,"choices":[{"text":"This","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
            br#"{"id":"cmpl-1","object":"text_completion","created":1690759702,"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct"}"#,
            br#"{"id":"cmpl-1","object":"text_completion","created":1690759702,"choices":[],"model":"gpt-3.5-turbo-instruct","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
            b"[DONE]",
        ];
        let mut usage_only = Vec::new();
        for data in events {
            x.on_event(b"message", data);
            usage_only.push(x.usage_only());
        }
        let facts = x.facts();
        assert_eq!(facts.model.as_deref(), Some("gpt-3.5-turbo-instruct"));
        assert_eq!(facts.finish_reason.as_deref(), Some("length"));
        assert_eq!(facts.usage.unwrap().total_tokens, Some(12));
        assert!(facts.end_marker_seen);
        assert_eq!(usage_only, [false, false, true, false]);
    }
}
