//! Pieces every extractor shares: the guarded JSON parse, the tolerant reading of usage figures
//! and the provider error shapes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::scan::leading_type;
use crate::usage::record::{sum_present, ProviderError, StreamFacts};

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

/// One token count as a provider states it. A figure that is not a count (negative, fractional
/// or in exponent form, beyond `u64`, a string, an object…) must cost that figure only: were it
/// a parse error, the whole event would be skipped, and with it the finish reason and every
/// good figure beside it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// Left out, or `null`: providers write `null` for figures that do not apply.
    #[default]
    Absent,
    /// Stated, but not as a count: the figure is unknown.
    Unreadable,
    Stated(u64),
}

impl Count {
    pub(crate) fn get(self) -> Option<u64> {
        match self {
            Count::Stated(n) => Some(n),
            Count::Absent | Count::Unreadable => None,
        }
    }

    /// This statement of a cumulative figure over an `older` one. A figure left out keeps the
    /// older value; an unreadable one is unknown from here on, because reporting the older
    /// (lower) value as the final one would bill less than the provider counted.
    pub(crate) fn over(self, older: Count) -> Count {
        match self {
            Count::Absent => older,
            newer => newer,
        }
    }
}

/// Figures that are not counts, as providers have been seen or could be expected to send them:
/// the extractors' tests put each where a count goes.
#[cfg(test)]
pub(crate) const NOT_COUNTS: &[&str] = &[
    "-5",
    "12.0",
    "1e3",
    "7.5e1",
    "18446744073709551616",
    "99999999999999999999999",
    r#""15""#,
    "true",
    "false",
    "[15]",
    r#"{"n":15}"#,
    "{}",
];

/// The sum of the counts that are stated; `None` when none is, when one is unreadable (a part
/// is unknown, so the sum is too) or when the sum overflows.
pub(crate) fn sum_counts<const N: usize>(parts: [Count; N]) -> Option<u64> {
    if parts.contains(&Count::Unreadable) {
        return None;
    }
    sum_present(&parts.map(Count::get))
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Count, D::Error> {
        deserializer.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a token count")
    }

    fn visit_u64<E>(self, n: u64) -> Result<Count, E> {
        Ok(Count::Stated(n))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Count, E> {
        Ok(u64::try_from(n).map_or(Count::Unreadable, Count::Stated))
    }

    // serde_json hands over `12.0`, `1e3` and integers beyond `u64` as floats: none is a count
    // the provider's schema allows, and a float above 2^53 is not even the number written.
    fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
        Ok(Count::Unreadable)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
        Ok(Count::Unreadable)
    }

    fn visit_str<E>(self, _: &str) -> Result<Count, E> {
        Ok(Count::Unreadable)
    }

    fn visit_bytes<E>(self, _: &[u8]) -> Result<Count, E> {
        Ok(Count::Unreadable)
    }

    fn visit_unit<E>(self) -> Result<Count, E> {
        Ok(Count::Absent)
    }

    fn visit_none<E>(self) -> Result<Count, E> {
        Ok(Count::Absent)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Count, D::Error> {
        Count::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Count, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| Count::Unreadable)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
        IgnoredAny.visit_map(map).map(|_| Count::Unreadable)
    }
}

/// An object of figures (`usage`, `usageMetadata`, their `*_details`), or `None` when the value
/// is `null`, missing or not an object at all: a usage of the wrong type is no usage, and must
/// not cost the event's other members as a parse error would.
pub(crate) struct OptionalObject<T>(pub(crate) Option<T>);

impl<T> Default for OptionalObject<T> {
    fn default() -> Self {
        OptionalObject(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OptionalObject<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = OptionalObject<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(|t| OptionalObject(Some(t)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| OptionalObject(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        OptionalObject::deserialize(deserializer)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(OptionalObject(None))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(OptionalObject(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(OptionalObject(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(OptionalObject(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(OptionalObject(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(OptionalObject(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(OptionalObject(None))
    }

    fn visit_bytes<E>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(OptionalObject(None))
    }
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
    fn a_count_is_a_non_negative_integer_within_u64() {
        #[derive(Deserialize)]
        struct Figure {
            #[serde(default)]
            n: Count,
            after: u8,
        }
        for (value, count) in [
            ("0", Count::Stated(0)),
            ("18446744073709551615", Count::Stated(u64::MAX)),
            ("null", Count::Absent),
            ("-1", Count::Unreadable),
            ("-9223372036854775808", Count::Unreadable),
            ("18446744073709551616", Count::Unreadable),
            ("12.0", Count::Unreadable),
            ("1e3", Count::Unreadable),
            ("1e-400", Count::Unreadable),
            (r#""12""#, Count::Unreadable),
            ("false", Count::Unreadable),
            ("[1,[2]]", Count::Unreadable),
            (r#"{"a":{"b":[1]}}"#, Count::Unreadable),
        ] {
            let data = format!(r#"{{"n":{value},"after":7}}"#);
            let figure: Figure = serde_json::from_str(&data).unwrap();
            assert_eq!((figure.n, figure.after), (count, 7), "{value}");
        }
        let figure: Figure = serde_json::from_str(r#"{"after":7}"#).unwrap();
        assert_eq!(figure.n, Count::Absent);
    }

    #[test]
    fn an_unreadable_part_makes_the_sum_unknown() {
        use Count::*;
        assert_eq!(sum_counts([Stated(3), Absent, Stated(4)]), Some(7));
        assert_eq!(sum_counts([Stated(3), Unreadable]), None);
        assert_eq!(sum_counts([Absent, Absent]), None);
        assert_eq!(sum_counts([Stated(u64::MAX), Stated(1)]), None);
        assert_eq!(Absent.over(Stated(5)), Stated(5));
        assert_eq!(Unreadable.over(Stated(5)), Unreadable);
        assert_eq!(Stated(6).over(Unreadable), Stated(6));
    }

    #[test]
    fn an_object_of_another_type_is_none_and_costs_nothing_else() {
        #[derive(Default, Deserialize)]
        #[serde(default)]
        struct Inner {
            n: Count,
        }
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            usage: OptionalObject<Inner>,
            after: u8,
        }
        for value in [
            "null",
            "5",
            "-1.5",
            r#""usage""#,
            "true",
            "[]",
            r#"[{"n":1}]"#,
        ] {
            let data = format!(r#"{{"usage":{value},"after":7}}"#);
            let outer: Outer = serde_json::from_str(&data).unwrap();
            assert!(outer.usage.0.is_none(), "{value}");
            assert_eq!(outer.after, 7, "{value}");
        }
        let outer: Outer = serde_json::from_str(r#"{"usage":{"n":2,"x":[]},"after":7}"#).unwrap();
        assert_eq!(outer.usage.0.unwrap().n, Count::Stated(2));
    }

    #[test]
    fn counts_what_does_not_parse() {
        let mut facts = StreamFacts::default();
        assert!(parse::<ErrorEvent>(&mut facts, b"{not json").is_none());
        assert!(parse::<ErrorEvent>(&mut facts, br#"{"error":{"message":7}}"#).is_none());
        assert_eq!(facts.unparsed_events, 2);
    }
}
