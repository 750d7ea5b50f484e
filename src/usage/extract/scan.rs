//! Byte-level prefilters that let an extractor skip the JSON parse of ordinary delta events.
//!
//! A check may answer "maybe" for an event that turns out to be ordinary (the parse then
//! decides), but it never answers "no" for an event whose JSON holds the key with a real value.
//! That holds because a JSON string cannot contain an unescaped quote: the needle `"key"`
//! followed by `:` can only be an object key (or a string that ends in `\"key` and is itself
//! followed by a colon, i.e. another key: a harmless false "maybe"). Keys spelled with `\u`
//! escapes are not recognised; no provider writes them.

use memchr::memmem::Finder;

/// A quoted JSON key (or string) to look for, e.g. `"usage"`.
pub(crate) struct Needle(Finder<'static>);

impl Needle {
    pub(crate) fn new(quoted: &'static [u8]) -> Needle {
        Needle(Finder::new(quoted))
    }

    pub(crate) fn occurs_in(&self, data: &[u8]) -> bool {
        self.find_from(data, 0).is_some()
    }

    /// Some occurrence is an object key whose value is not `null`.
    pub(crate) fn has_non_null_value(&self, data: &[u8]) -> bool {
        let mut from = 0;
        while let Some(at) = self.find_from(data, from) {
            from = at + self.0.needle().len();
            if let Some((b':', value)) = skip_ws(&data[from..]).split_first() {
                if !skip_ws(value).starts_with(b"null") {
                    return true;
                }
            }
        }
        false
    }

    fn find_from(&self, data: &[u8], from: usize) -> Option<usize> {
        let rest = &data[from..];
        let needle = self.0.needle();
        // The SIMD searcher's setup costs more than it saves on a short tail, and a typical
        // event leaves one after its first match (`"finish_reason":null}],"usage":null}`).
        let at = if rest.len() < SHORT_TAIL {
            memchr::memchr_iter(needle[0], rest).find(|&i| rest[i..].starts_with(needle))
        } else {
            self.0.find(rest)
        };
        at.map(|i| from + i)
    }
}

const SHORT_TAIL: usize = 64;

fn skip_ws(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// The value of `"type"` when it is the object's first key, as providers write it
/// (`{"type":"message_start",...}`, or with spaces). `None` when the first key is another one or
/// the value holds an escape: the caller then falls back to a parse.
pub(crate) fn leading_type(data: &[u8]) -> Option<&[u8]> {
    let rest = skip_ws(data).strip_prefix(b"{")?;
    let rest = skip_ws(rest).strip_prefix(b"\"type\"")?;
    let rest = skip_ws(rest).strip_prefix(b":")?;
    let rest = skip_ws(rest).strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then_some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_null_values_with_any_spacing() {
        let finish = Needle::new(b"\"finish_reason\"");
        assert!(finish.has_non_null_value(br#"{"finish_reason":"stop"}"#));
        assert!(finish.has_non_null_value(br#"{"finish_reason": "stop"}"#));
        assert!(finish.has_non_null_value(b"{\"finish_reason\"\n  :\n\t\"length\"}"));
        assert!(!finish.has_non_null_value(br#"{"finish_reason":null}"#));
        assert!(!finish.has_non_null_value(br#"{"finish_reason" : null }"#));
        assert!(!finish.has_non_null_value(br#"{"index":0}"#));
    }

    #[test]
    fn later_occurrences_are_checked_too() {
        let finish = Needle::new(b"\"finish_reason\"");
        let two_choices =
            br#"{"choices":[{"index":0,"finish_reason":null},{"index":1,"finish_reason":"stop"}]}"#;
        assert!(finish.has_non_null_value(two_choices));
    }

    #[test]
    fn occurrences_on_both_sides_of_the_short_tail_limit() {
        let finish = Needle::new(b"\"finish_reason\"");
        let pad = "x".repeat(100);
        for (data, expected) in [
            (
                format!(
                    r#"{{"a":"{pad}","finish_reason":null,"b":"{pad}","finish_reason":"stop"}}"#
                ),
                true,
            ),
            (
                format!(r#"{{"a":"{pad}","finish_reason":null,"finish_reason":"stop"}}"#),
                true,
            ),
            (
                format!(r#"{{"finish_reason":null,"a":"{pad}","finish_reason":null}}"#),
                false,
            ),
            (
                r#"{"finish_reason":null,"finish_reason":"length"}"#.to_owned(),
                true,
            ),
        ] {
            assert_eq!(
                finish.has_non_null_value(data.as_bytes()),
                expected,
                "{data}"
            );
        }
        assert!(Needle::new(b"\"error\"").occurs_in(format!("{pad}\"error\"").as_bytes()));
        assert!(!Needle::new(b"\"error\"").occurs_in(b"\"erro"));
    }

    #[test]
    fn escaped_words_in_strings_are_not_keys() {
        let usage = Needle::new(b"\"usage\"");
        // The word inside text arrives escaped, so the needle cannot match it...
        assert!(!usage.has_non_null_value(br#"{"content":"the \"usage\": {1} field"}"#));
        // ...except at a string's end, where no colon follows.
        assert!(!usage.has_non_null_value(br#"{"content":"say \"usage"}"#));
        assert!(!usage.has_non_null_value(br#"{"content":"usage: 5"}"#));
        // A value equal to the word is not a key either.
        assert!(!usage.has_non_null_value(br#"{"kind":"usage","usage":null}"#));
        assert!(usage.has_non_null_value(br#"{"kind":"usage","usage":{"prompt_tokens":1}}"#));
    }

    #[test]
    fn truncated_json_is_left_to_the_parse() {
        let usage = Needle::new(b"\"usage\"");
        assert!(!usage.has_non_null_value(br#"{"usage""#));
        // A cut-off value is a "maybe": the parse then fails and counts it.
        assert!(usage.has_non_null_value(br#"{"usage":"#));
    }

    #[test]
    fn leading_type_only_when_first() {
        assert_eq!(
            leading_type(br#"{"type":"message_start","message":{}}"#),
            Some(&b"message_start"[..])
        );
        assert_eq!(leading_type(br#" { "type" : "ping"}"#), Some(&b"ping"[..]));
        assert_eq!(leading_type(br#"{"index":0,"type":"ping"}"#), None);
        assert_eq!(leading_type(br#"{"type":"a\u0062"}"#), None);
        assert_eq!(leading_type(br#"{"type":"unterminated"#), None);
        assert_eq!(leading_type(b"[DONE]"), None);
    }
}
