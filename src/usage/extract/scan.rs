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
    let (key, value) = first_member(skip_ws(data).strip_prefix(b"{")?)?;
    (key == b"type").then(|| plain_string(value)).flatten()
}

/// The value of `key` (e.g. `model`) in the top-level object of `data`, when it is a string
/// without escapes: what a parse would read, for the cost of walking the bytes before it.
/// `None` when the key is not a top-level one, its value is not such a string, or the bytes
/// stop being well-formed JSON on the way: the caller then parses.
pub(crate) fn top_level_str<'a>(data: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut rest = skip_ws(data).strip_prefix(b"{")?;
    loop {
        let (name, value) = first_member(rest)?;
        if name == key {
            return plain_string(value);
        }
        rest = skip_ws(skip_value(value)?).strip_prefix(b",")?;
    }
}

/// The key of the object member at the start of `bytes` (escapes left as they are) and what
/// follows its colon: the value, and the rest.
fn first_member(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (key, after) = split_string(skip_ws(bytes))?;
    Some((key, skip_ws(skip_ws(after).strip_prefix(b":")?)))
}

/// The JSON string at the start of `bytes` when it holds no escape (what a parse would read,
/// byte for byte); `None` otherwise.
fn plain_string(bytes: &[u8]) -> Option<&[u8]> {
    let body = bytes.strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', body)?;
    (body[end] == b'"').then_some(&body[..end])
}

/// A JSON string at the start of `bytes`: its raw contents (escapes left as they are) and what
/// follows it.
fn split_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = bytes.strip_prefix(b"\"")?;
    let mut at = 0;
    loop {
        at += memchr::memchr2(b'"', b'\\', &body[at..])?;
        if body[at] == b'"' {
            return Some((&body[..at], &body[at + 1..]));
        }
        // An escape: the next byte is part of it, whatever it is.
        at += 2;
        if at > body.len() {
            return None;
        }
    }
}

/// `data` with each number beyond the range of an `f64` (`1e400`, `-1e999`, an integer of 400
/// digits) written as `false`; `None` when it holds none. serde_json refuses the whole document
/// for one such number, where any other figure that is not a count costs only itself: with it
/// rewritten, the figure reads as unknown (a count is never `false`) and the rest of the event
/// as the provider wrote it. Only called after a failed parse, so the walk costs nothing on the
/// hot path.
pub(crate) fn without_huge_numbers(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut copied, mut at) = (0, 0);
    while at < data.len() {
        match data[at] {
            // A string: skipped whole, digits and all. Cut short, the document is broken anyway.
            b'"' => at = data.len() - split_string(&data[at..])?.1.len(),
            b'-' | b'0'..=b'9' => {
                let end = data[at..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(data.len(), |n| at + n);
                if beyond_f64(&data[at..end]) {
                    out.extend_from_slice(&data[copied..at]);
                    out.extend_from_slice(b"false");
                    copied = end;
                }
                at = end;
            }
            _ => at += 1,
        }
    }
    (copied > 0).then(|| {
        out.extend_from_slice(&data[copied..]);
        out
    })
}

fn beyond_f64(number: &[u8]) -> bool {
    std::str::from_utf8(number)
        .ok()
        .and_then(|n| n.parse::<f64>().ok())
        .is_some_and(f64::is_infinite)
}

/// What follows the JSON value at the start of `bytes` (a string, an object or array with all
/// it holds, or a scalar up to its delimiter).
fn skip_value(bytes: &[u8]) -> Option<&[u8]> {
    match bytes.first()? {
        b'"' => split_string(bytes).map(|(_, after)| after),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut rest = bytes;
            loop {
                let at = rest
                    .iter()
                    .position(|b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))?;
                match rest[at] {
                    b'"' => rest = split_string(&rest[at..])?.1,
                    b'{' | b'[' => {
                        depth += 1;
                        rest = &rest[at + 1..];
                    }
                    _ => {
                        depth -= 1;
                        rest = &rest[at + 1..];
                        if depth == 0 {
                            return Some(rest);
                        }
                    }
                }
            }
        }
        _ => {
            let end = bytes
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))?;
            (end > 0).then_some(&bytes[end..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MODEL: &[u8] = b"model";

    #[test]
    fn top_level_string_values() {
        assert_eq!(
            top_level_str(
                br#"{"id":"c","object":"chunk","created":1,"model":"gpt-4o","choices":[]}"#,
                MODEL
            ),
            Some(&b"gpt-4o"[..])
        );
        assert_eq!(
            top_level_str(b"{\n \"model\" :\t\"m\" }", MODEL),
            Some(&b"m"[..])
        );
        assert_eq!(top_level_str(br#"{"model":""}"#, MODEL), Some(&b""[..]));
        // Nested keys of that name are not the top-level one.
        assert_eq!(
            top_level_str(
                br#"{"meta":{"model":"inner","x":[{"model":"a"}]},"model":"outer"}"#,
                MODEL
            ),
            Some(&b"outer"[..])
        );
        assert_eq!(top_level_str(br#"{"meta":{"model":"inner"}}"#, MODEL), None);
        // Strings holding quotes, braces and the key itself are skipped whole.
        assert_eq!(
            top_level_str(br#"{"c":"a \"model\": \"x\" } { [","model":"m"}"#, MODEL),
            Some(&b"m"[..])
        );
        assert_eq!(
            top_level_str(br#"{"c":"ends in \\","model":"m"}"#, MODEL),
            Some(&b"m"[..])
        );
    }

    #[test]
    fn anything_else_is_left_to_the_parse() {
        for data in [
            &br#"{"model":null}"#[..],
            br#"{"model":5}"#,
            br#"{"model":"gpt\u002d4"}"#,
            br#"{"model":"unterminated"#,
            br#"{"a":1 "model":"m"}"#,
            br#"{"a":{"b":1,"model":"m"}"#,
            br#"["model","m"]"#,
            b"[DONE]",
            b"",
        ] {
            assert_eq!(
                top_level_str(data, MODEL),
                None,
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\{}\\[\\]:, ]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::vec(("(model|id|[a-z]{1,3})", inner), 0..4)
                    .prop_map(|fields| { serde_json::Value::Object(fields.into_iter().collect()) }),
            ]
        })
    }

    proptest! {
        /// Whatever the scan answers is what a parse reads (pretty-printed or not).
        #[test]
        fn agrees_with_the_parse(
            fields in prop::collection::vec(("(model|id|[a-z]{1,3})", json_value()), 0..5),
            pretty in any::<bool>(),
        ) {
            let object = serde_json::Value::Object(fields.into_iter().collect());
            let data = if pretty {
                serde_json::to_vec_pretty(&object).unwrap()
            } else {
                serde_json::to_vec(&object).unwrap()
            };
            let parsed = object.get("model").and_then(|m| m.as_str());
            match top_level_str(&data, MODEL) {
                Some(found) => prop_assert_eq!(Some(found), parsed.map(str::as_bytes)),
                // Only a string with escapes (or no string at all) is left to the parse.
                None => prop_assert!(parsed.is_none_or(|m| m.contains(['"', '\\']))),
            }
        }
    }

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
    fn numbers_beyond_f64_are_rewritten_and_nothing_else() {
        let rewritten =
            |data: &[u8]| without_huge_numbers(data).map(|d| String::from_utf8(d).unwrap());
        assert_eq!(
            rewritten(br#"{"a":1e400,"b":[-2E+999, 3],"c":"1e400","d":1e-400}"#).as_deref(),
            Some(r#"{"a":false,"b":[false, 3],"c":"1e400","d":1e-400}"#)
        );
        let digits = "9".repeat(400);
        assert_eq!(
            rewritten(format!(r#"{{"n":{digits}}}"#).as_bytes()).as_deref(),
            Some(r#"{"n":false}"#)
        );
        // Strings with escaped quotes are skipped whole.
        assert_eq!(
            rewritten(br#"{"s":"a \" 1e400 \\","n":1e400}"#).as_deref(),
            Some(r#"{"s":"a \" 1e400 \\","n":false}"#)
        );
        for data in [
            &br#"{"n":18446744073709551616,"f":1.5e308,"x":-0}"#[..],
            br#"{"s":"1e400"}"#,
            br#"{"s":"unterminated 1e400"#,
            b"",
        ] {
            assert_eq!(rewritten(data), None, "{}", String::from_utf8_lossy(data));
        }
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
