//! Pieces every extractor shares: the guarded JSON parse, the tolerant reading of usage figures
//! and the provider error shapes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::scan::{leading_type, without_huge_numbers};
use crate::usage::record::{sum_present, ProviderError, StreamFacts};

/// Parses `data` as `T`; on failure counts the event as unparsed and gives up on it. The types
/// parsed here take any JSON of the right syntax, so what fails is broken JSON, or a number
/// beyond `f64` (which serde_json refuses with the whole document): the parse is tried once more
/// with such numbers rewritten, so that one of them costs only itself.
pub(crate) fn parse<T: DeserializeOwned>(facts: &mut StreamFacts, data: &[u8]) -> Option<T> {
    let parsed = serde_json::from_slice(data).or_else(|error| {
        let rewritten = without_huge_numbers(data).ok_or(error)?;
        serde_json::from_slice(&rewritten)
    });
    match parsed {
        Ok(value) => Some(value),
        Err(_) => {
            facts.unparsed_events += 1;
            None
        }
    }
}

/// The `visit_*` methods of a visitor for the JSON values it does not take: each gives `$value`
/// (a container is read through and dropped).
macro_rules! visit_as {
    ($de:lifetime, $value:expr; $($kind:ident),+) => {
        $(visit_as!(@one $de, $value; $kind);)+
    };
    (@one $de:lifetime, $value:expr; bool) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@one $de:lifetime, $value:expr; i64) => {
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@one $de:lifetime, $value:expr; u64) => {
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@one $de:lifetime, $value:expr; f64) => {
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@one $de:lifetime, $value:expr; str) => {
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@one $de:lifetime, $value:expr; bytes) => {
        fn visit_bytes<E>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@one $de:lifetime, $value:expr; unit) => {
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (@one $de:lifetime, $value:expr; seq) => {
        fn visit_seq<A: SeqAccess<$de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| $value)
        }
    };
    (@one $de:lifetime, $value:expr; map) => {
        fn visit_map<A: MapAccess<$de>>(self, map: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_map(map).map(|_| $value)
        }
    };
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

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        OptionalObject::deserialize(deserializer)
    }

    visit_as!('de, OptionalObject(None); seq, unit, bool, i64, u64, f64, str, bytes);
}

/// A list of objects (`choices`, `candidates`), each `None` when it is not an object; the list
/// is `None` when the value is `null`, missing or not a list. Like [`OptionalObject`], a value of
/// the wrong type costs only itself.
pub(crate) struct OptionalList<T>(pub(crate) Option<Vec<Option<T>>>);

impl<T> Default for OptionalList<T> {
    fn default() -> Self {
        OptionalList(None)
    }
}

impl<T> OptionalList<T> {
    /// The objects of the list, in order.
    pub(crate) fn objects(self) -> impl DoubleEndedIterator<Item = T> {
        self.0.unwrap_or_default().into_iter().flatten()
    }

    /// The value is a list with nothing in it.
    pub(crate) fn is_empty_list(&self) -> bool {
        self.0.as_ref().is_some_and(Vec::is_empty)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OptionalList<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ListVisitor(PhantomData))
    }
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = OptionalList<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(OptionalObject(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(OptionalList(Some(items)))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        OptionalList::deserialize(deserializer)
    }

    visit_as!('de, OptionalList(None); map, unit, bool, i64, u64, f64, str, bytes);
}

/// A name or reason the provider states (`model`, `finish_reason`, an error's `type`…), or
/// `None` when the value is `null`, missing or not a string: a number where a name goes costs
/// that name, not the figures beside it.
#[derive(Debug, Default)]
pub(crate) struct OptionalString(pub(crate) Option<String>);

impl<'de> Deserialize<'de> for OptionalString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StringVisitor)
    }
}

struct StringVisitor;

impl<'de> Visitor<'de> for StringVisitor {
    type Value = OptionalString;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E>(self, text: &str) -> Result<OptionalString, E> {
        Ok(OptionalString(Some(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<OptionalString, E> {
        Ok(OptionalString(Some(text)))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        OptionalString::deserialize(deserializer)
    }

    visit_as!('de, OptionalString(None); seq, map, unit, bool, i64, u64, f64, bytes);
}

/// An error code: OpenAI and Responses write strings, Gemini numbers; anything else is no code.
#[derive(Debug, Default)]
pub(crate) struct Code(Option<String>);

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CodeVisitor)
    }
}

struct CodeVisitor;

impl<'de> Visitor<'de> for CodeVisitor {
    type Value = Code;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an error code")
    }

    fn visit_str<E>(self, text: &str) -> Result<Code, E> {
        Ok(Code(Some(text.to_owned())))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Code, E> {
        Ok(Code(Some(n.to_string())))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Code, E> {
        Ok(Code(Some(n.to_string())))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Code::deserialize(deserializer)
    }

    visit_as!('de, Code(None); seq, map, unit, bool, f64, bytes);
}

/// The error object of OpenAI (`{"message","type","param","code"}`), Anthropic
/// (`{"type","message"}`) and Gemini (`{"code","message","status"}`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorBody {
    #[serde(rename = "type")]
    kind: OptionalString,
    status: OptionalString,
    code: Code,
    message: OptionalString,
}

impl ErrorBody {
    pub(crate) fn into_provider_error(self) -> ProviderError {
        let kind = self
            .kind
            .0
            .or(self.status.0)
            .or(self.code.0)
            .unwrap_or_else(|| "error".to_owned());
        ProviderError {
            kind,
            message: self.message.0.unwrap_or_default(),
        }
    }
}

/// The value of an `error` member: the object above, or a bare message string, as Hugging Face
/// text-generation-inference writes it (`{"error":"…","error_type":"validation"}`, the type
/// beside it). `None` when it is `null`, an empty string or of another type.
#[derive(Debug, Default)]
pub(crate) struct ErrorValue(pub(crate) Option<ErrorBody>);

impl ErrorValue {
    /// The provider error, its kind taken from `error_type` when the error itself names none.
    pub(crate) fn with_type(self, error_type: OptionalString) -> Option<ProviderError> {
        let mut body = self.0?;
        if body.kind.0.is_none() {
            body.kind = error_type;
        }
        Some(body.into_provider_error())
    }
}

impl<'de> Deserialize<'de> for ErrorValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ErrorVisitor)
    }
}

struct ErrorVisitor;

impl<'de> Visitor<'de> for ErrorVisitor {
    type Value = ErrorValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an error")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ErrorValue, A::Error> {
        ErrorBody::deserialize(MapAccessDeserializer::new(map)).map(|body| ErrorValue(Some(body)))
    }

    fn visit_str<E>(self, message: &str) -> Result<ErrorValue, E> {
        Ok(ErrorValue((!message.is_empty()).then(|| ErrorBody {
            message: OptionalString(Some(message.to_owned())),
            ..ErrorBody::default()
        })))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        ErrorValue::deserialize(deserializer)
    }

    visit_as!('de, ErrorValue(None); seq, unit, bool, i64, u64, f64, bytes);
}

/// An error event of any provider: a nested `error` (OpenAI, Anthropic, Gemini, TGI), or the
/// flat `{"type":"error","code","message"}` of the Responses API.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorEvent {
    error: ErrorValue,
    error_type: OptionalString,
    code: Code,
    message: OptionalString,
}

impl ErrorEvent {
    pub(crate) fn into_provider_error(self) -> Option<ProviderError> {
        if self.error.0.is_some() {
            return self.error.with_type(self.error_type);
        }
        if self.code.0.is_none() && self.message.0.is_none() {
            return None;
        }
        Some(ProviderError {
            kind: self.code.0.unwrap_or_else(|| "error".to_owned()),
            message: self.message.0.unwrap_or_default(),
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
        assert!(parse::<ErrorEvent>(&mut facts, br#"{"error":{"message":7}"#).is_none());
        // Broken JSON stays broken with its huge number rewritten.
        assert!(parse::<ErrorEvent>(&mut facts, br#"{"error":1e400,}"#).is_none());
        assert_eq!(facts.unparsed_events, 3);
    }

    #[test]
    fn a_number_beyond_f64_costs_only_itself() {
        #[derive(Deserialize)]
        struct Figures {
            n: Count,
            m: Count,
            name: OptionalString,
        }
        let mut facts = StreamFacts::default();
        let figures: Figures = parse(
            &mut facts,
            br#"{"n":1e400,"m":7,"name":"x","pad":[-1E999]}"#,
        )
        .unwrap();
        assert_eq!(
            (figures.n, figures.m),
            (Count::Unreadable, Count::Stated(7))
        );
        assert_eq!(figures.name.0.as_deref(), Some("x"));
        let figures: Figures = parse(&mut facts, br#"{"n":1,"m":2,"name":1e400}"#).unwrap();
        assert_eq!(figures.name.0, None);
        assert_eq!(facts.unparsed_events, 0);
    }

    #[test]
    fn names_lists_and_errors_of_the_wrong_type_cost_only_themselves() {
        #[derive(Deserialize)]
        struct Item {
            name: OptionalString,
        }
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            items: OptionalList<Item>,
            #[serde(default)]
            name: OptionalString,
            after: u8,
        }
        for (value, items) in [
            ("null", None),
            ("{}", None),
            (r#""x""#, None),
            ("7", None),
            ("[]", Some(vec![])),
            (
                r#"[{"name":"a"},null,5,{"name":6}]"#,
                Some(vec![Some("a"), None, None, Some("")]),
            ),
        ] {
            let data = format!(r#"{{"items":{value},"name":{value},"after":7}}"#);
            let outer: Outer = serde_json::from_str(&data).unwrap();
            let got = outer.items.0.map(|list| {
                list.into_iter()
                    .map(|item| item.map(|i| i.name.0.unwrap_or_default()))
                    .collect::<Vec<_>>()
            });
            let want = items.map(|l| {
                l.into_iter()
                    .map(|n| n.map(str::to_owned))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want, "{value}");
            assert_eq!(outer.name.0, (value == r#""x""#).then(|| "x".to_owned()));
            assert_eq!(outer.after, 7, "{value}");
        }
        for data in [
            r#"{"error":{"message":7,"type":["x"],"code":1.5}}"#,
            r#"{"error":{"message":"m","code":{"a":1}},"code":false}"#,
        ] {
            let error = error_of(data).unwrap();
            assert_eq!(error.kind, "error", "{data}");
        }
        assert_eq!(error_of(r#"{"error":7}"#), None);
        assert_eq!(error_of(r#"{"error":""}"#), None);
    }

    #[test]
    fn a_bare_error_message_takes_its_type_from_beside_it() {
        let tgi =
            error_of(r#"{"error":"Input validation error: too long","error_type":"validation"}"#)
                .unwrap();
        assert_eq!(
            (tgi.kind.as_str(), tgi.message.as_str()),
            ("validation", "Input validation error: too long")
        );
        assert_eq!(error_of(r#"{"error":"boom"}"#).unwrap().kind, "error");
        // The error's own type wins over the one beside it.
        let nested = error_of(r#"{"error":{"type":"t","message":"m"},"error_type":"x"}"#).unwrap();
        assert_eq!(nested.kind, "t");
    }
}
