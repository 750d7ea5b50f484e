//! The usage record of one stream, with one meaning of each figure across providers.
//!
//! Every figure is what the provider itself stated in its frames; nothing is estimated. A figure
//! the provider did not state stays `None`, so "zero" and "unknown" never blur.

use crate::json_object::JsonObject;
use serde::{Deserialize, Serialize};

/// Token counts of one response, normalised across providers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Every prompt token the provider processed, cached or not: OpenAI `prompt_tokens` /
    /// `input_tokens`; Anthropic `input_tokens + cache_creation_input_tokens +
    /// cache_read_input_tokens` (Anthropic's own `input_tokens` counts only the uncached part);
    /// Gemini `promptTokenCount` (which already includes the cached content) plus
    /// `toolUsePromptTokenCount` (the prompt of server-side tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Every generated token billed at the output rate, reasoning included: OpenAI
    /// `completion_tokens` / `output_tokens` (both include reasoning); Anthropic `output_tokens`
    /// (includes thinking); Gemini `candidatesTokenCount + thoughtsTokenCount`, because Gemini
    /// counts thoughts apart from candidates but bills them as output ("response pricing is the
    /// sum of output tokens and thinking tokens").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// The part of `input_tokens` read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    /// The part of `input_tokens` written to the prompt cache (Anthropic only; billed above the
    /// input rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// The part of `output_tokens` spent on reasoning, where the provider breaks it out (OpenAI,
    /// Gemini; Anthropic does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// The provider's own total when it states one, else `input_tokens + output_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
}

impl Usage {
    /// The figures that are known, as members of a JSON line (as `#[serde(flatten)]` writes
    /// them: the usage record's and the access log's).
    pub(crate) fn write_members(&self, line: &mut JsonObject) {
        line.u64_if_some("input_tokens", self.input_tokens)
            .u64_if_some("output_tokens", self.output_tokens)
            .u64_if_some("cached_input_tokens", self.cached_input_tokens)
            .u64_if_some(
                "cache_creation_input_tokens",
                self.cache_creation_input_tokens,
            )
            .u64_if_some("reasoning_tokens", self.reasoning_tokens)
            .u64_if_some("total_tokens", self.total_tokens);
    }

    /// `total_tokens` as the provider stated it, or derived from input and output when both are
    /// known (and their sum fits).
    pub(crate) fn with_total(mut self, stated: Option<u64>) -> Usage {
        self.total_tokens = stated.or_else(|| self.input_tokens?.checked_add(self.output_tokens?));
        self
    }

    /// `None` when the provider's usage object held none of the known figures: a shape this
    /// code does not know is no usage, not a usage of zero.
    pub(crate) fn stated(self) -> Option<Usage> {
        (self != Usage::default()).then_some(self)
    }
}

/// Adds the figures that are present; `None` when none is, or when the sum overflows (a figure
/// that large is not a real count, and a wrong bill is worse than none).
pub(crate) fn sum_present(parts: &[Option<u64>]) -> Option<u64> {
    let mut present = parts.iter().flatten().peekable();
    present.peek()?;
    present.try_fold(0u64, |sum, n| sum.checked_add(*n))
}

/// An error the provider reported inside a stream that had already started (HTTP 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderError {
    /// The provider's machine-readable kind: OpenAI `type` (or `code`), Anthropic `error.type`,
    /// Gemini `status` (or `code`). `"error"` when the provider gave none.
    pub kind: String,
    /// The provider's human-readable message, empty when it gave none.
    pub message: String,
}

/// What the usage extractor learned from one response stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFacts {
    /// The model the provider says answered (it may differ from the one requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Why generation stopped, verbatim: OpenAI `finish_reason`, Anthropic `stop_reason`,
    /// Gemini `finishReason` (or `promptFeedback.blockReason`), Responses `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The provider's own end-of-stream marker arrived: `[DONE]`, `message_stop`,
    /// `response.completed`/`incomplete`/`failed`, or a Gemini candidate with a finish reason.
    /// False means the stream was cut short, whatever else was seen.
    #[serde(default)]
    pub end_marker_seen: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_error: Option<ProviderError>,
    /// The provider's final figures; `None` until they arrive. Interim figures (Anthropic's
    /// `message_start`, Gemini's running `usageMetadata` before the finish) are not final and are
    /// not reported here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Events seen.
    #[serde(default)]
    pub events: u64,
    /// Events the extractor needed to read whose JSON did not parse (or had the wrong shape).
    /// Such an event is skipped; events it had no reason to read are not checked.
    #[serde(default)]
    pub unparsed_events: u64,
}

impl StreamFacts {
    /// `"provider"` when the provider's final usage arrived, else `"none"`.
    pub fn usage_source(&self) -> &'static str {
        if self.usage.is_some() {
            "provider"
        } else {
            "none"
        }
    }
}

/// The usage record of one stream, whatever its outcome: what the ledger, the access log and
/// the metrics receive. Figures the provider never sent are absent (`usage_source: "none"`),
/// never estimated. Written by [`UsageRecord::json_line`]; the derived `Serialize` (tests only)
/// is the reference that line is checked against.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct UsageRecord {
    /// RFC 3339 UTC time the stream ended.
    pub ts: String,
    pub request_id: String,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub user: Option<String>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub key_id: Option<String>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub tenant: Option<String>,
    pub route: String,
    pub upstream: String,
    pub provider: &'static str,
    /// The stream format the extractor read (`openai_chat`, `anthropic_messages`, …).
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub format: Option<&'static str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub model: Option<String>,
    #[cfg_attr(test, serde(flatten))]
    pub usage: Usage,
    pub usage_source: &'static str,
    pub outcome: &'static str,
    /// HTTP status the client got (0 when it left before any).
    pub status: u16,
    pub end_marker_seen: bool,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub finish_reason: Option<String>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub provider_error: Option<ProviderError>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub ttfb_ms: Option<f64>,
    pub duration_ms: f64,
    /// SSE events seen from the upstream.
    pub events: u64,
    /// The upstream's body bytes the client got (not Sluice's heartbeats, usage comment or
    /// terminal event).
    pub bytes: u64,
    /// Events larger than `usage.max_event_size`: passed through, not inspected.
    #[cfg_attr(test, serde(skip_serializing_if = "is_zero"))]
    pub oversized_events: u64,
}

#[cfg(test)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl UsageRecord {
    /// The ledger's line: byte for byte what the derived `Serialize` writes (a property test
    /// holds them together), written member by member (`JsonObject`) at half the cost.
    pub fn json_line(&self) -> Vec<u8> {
        let mut line = JsonObject::with_capacity(1024);
        line.str("ts", &self.ts)
            .str("request_id", &self.request_id)
            .str_if_some("user", self.user.as_deref())
            .str_if_some("key_id", self.key_id.as_deref())
            .str_if_some("tenant", self.tenant.as_deref())
            .str("route", &self.route)
            .str("upstream", &self.upstream)
            .str("provider", self.provider)
            .str_if_some("format", self.format)
            .str_if_some("model", self.model.as_deref());
        self.usage.write_members(&mut line);
        line.str("usage_source", self.usage_source)
            .str("outcome", self.outcome)
            .u64("status", self.status.into())
            .bool("end_marker_seen", self.end_marker_seen)
            .str_if_some("finish_reason", self.finish_reason.as_deref());
        if let Some(error) = &self.provider_error {
            line.object("provider_error", |e| {
                e.str("kind", &error.kind).str("message", &error.message);
            });
        }
        line.f64_if_some("ttfb_ms", self.ttfb_ms)
            .f64("duration_ms", self.duration_ms)
            .u64("events", self.events)
            .u64("bytes", self.bytes);
        if self.oversized_events > 0 {
            line.u64("oversized_events", self.oversized_events);
        }
        line.finish()
    }

    /// Fills the provider's side of the record from what the extractor saw.
    pub fn with_facts(mut self, facts: &StreamFacts) -> UsageRecord {
        self.model = facts.model.clone();
        self.usage = facts.usage.unwrap_or_default();
        self.usage_source = facts.usage_source();
        self.end_marker_seen = facts.end_marker_seen;
        self.finish_reason = facts.finish_reason.clone();
        self.provider_error = facts.provider_error.clone();
        self.events = facts.events;
        self
    }

    /// HTTP/2 response trailers carrying the figures that are known
    /// (`x-sluice-usage-input-tokens`, …), for clients that sent `TE: trailers`.
    pub fn trailers(&self) -> Vec<(&'static str, String)> {
        let usage = &self.usage;
        let mut trailers: Vec<(&'static str, String)> = [
            ("x-sluice-usage-input-tokens", usage.input_tokens),
            ("x-sluice-usage-output-tokens", usage.output_tokens),
            ("x-sluice-usage-total-tokens", usage.total_tokens),
            (
                "x-sluice-usage-cached-input-tokens",
                usage.cached_input_tokens,
            ),
            (
                "x-sluice-usage-cache-creation-input-tokens",
                usage.cache_creation_input_tokens,
            ),
            ("x-sluice-usage-reasoning-tokens", usage.reasoning_tokens),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?.to_string())))
        .collect();
        trailers.push(("x-sluice-usage-source", self.usage_source.to_string()));
        trailers
    }

    /// The SSE comment appended after the provider's last frame: ignored by EventSource and the
    /// official SDKs, readable by anyone who wants the figures in-band.
    pub fn sse_comment(&self) -> Vec<u8> {
        let mut comment = JsonObject::after(b": sluice-usage ", 256);
        comment
            .str("request_id", &self.request_id)
            .str_if_some("model", self.model.as_deref());
        self.usage.write_members(&mut comment);
        comment.str("usage_source", self.usage_source);
        let mut comment = comment.finish();
        comment.extend_from_slice(b"\n\n");
        comment
    }
}

/// Any usage, each figure present or not: for the property tests of the lines that carry it.
#[cfg(test)]
pub(crate) fn arbitrary_usage() -> impl proptest::strategy::Strategy<Value = Usage> {
    use proptest::prelude::*;
    proptest::collection::vec(proptest::option::of(any::<u64>()), 6).prop_map(|u| Usage {
        input_tokens: u[0],
        output_tokens: u[1],
        cached_input_tokens: u[2],
        cache_creation_input_tokens: u[3],
        reasoning_tokens: u[4],
        total_tokens: u[5],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 3] = ["openai", "none", "odd \"name\"\t"];

    proptest! {
        /// The usage comment's JSON is the one serde_json writes for its members.
        #[test]
        fn the_sse_comment_is_what_serde_json_writes(
            request_id in any::<String>(),
            model in proptest::option::of(any::<String>()),
            usage in arbitrary_usage(),
            usage_source in 0..NAMES.len(),
        ) {
            #[derive(Serialize)]
            struct Comment<'a> {
                request_id: &'a str,
                #[serde(skip_serializing_if = "Option::is_none")]
                model: Option<&'a str>,
                #[serde(flatten)]
                usage: &'a Usage,
                usage_source: &'a str,
            }
            let expected = serde_json::to_string(&Comment {
                request_id: &request_id,
                model: model.as_deref(),
                usage: &usage,
                usage_source: NAMES[usage_source],
            })
            .unwrap();
            let record = UsageRecord {
                ts: "2026-12-06T05:00:00.000Z".into(),
                request_id,
                user: Some("u".into()),
                key_id: None,
                tenant: None,
                route: "/v1/".into(),
                upstream: "openai".into(),
                provider: "openai",
                format: Some("openai_chat"),
                model,
                usage,
                usage_source: NAMES[usage_source],
                outcome: "completed",
                status: 200,
                end_marker_seen: true,
                finish_reason: None,
                provider_error: None,
                ttfb_ms: Some(1.0),
                duration_ms: 2.0,
                events: 3,
                bytes: 4,
                oversized_events: 0,
            };
            prop_assert_eq!(
                String::from_utf8(record.sse_comment()).unwrap(),
                format!(": sluice-usage {expected}\n\n")
            );
        }

        /// The ledger's line is the one serde_json writes for the record, byte for byte.
        #[test]
        fn the_json_line_is_what_serde_json_writes(
            text in proptest::collection::vec(any::<String>(), 4),
            maybe in proptest::collection::vec(proptest::option::of(any::<String>()), 5),
            names in proptest::collection::vec(0..NAMES.len(), 3),
            format in proptest::option::of(0..NAMES.len()),
            usage in arbitrary_usage(),
            status in any::<u16>(),
            end_marker_seen in any::<bool>(),
            provider_error in proptest::option::of((any::<String>(), any::<String>())),
            ttfb_ms in proptest::option::of(any::<f64>()),
            duration_ms in any::<f64>(),
            counts in proptest::collection::vec(any::<u64>(), 2),
            oversized_events in prop_oneof![Just(0u64), any::<u64>()],
        ) {
            let record = UsageRecord {
                ts: text[0].clone(),
                request_id: text[1].clone(),
                user: maybe[0].clone(),
                key_id: maybe[1].clone(),
                tenant: maybe[2].clone(),
                route: text[2].clone(),
                upstream: text[3].clone(),
                provider: NAMES[names[0]],
                format: format.map(|i| NAMES[i]),
                model: maybe[3].clone(),
                usage,
                usage_source: NAMES[names[1]],
                outcome: NAMES[names[2]],
                status,
                end_marker_seen,
                finish_reason: maybe[4].clone(),
                provider_error: provider_error.map(|(kind, message)| ProviderError { kind, message }),
                ttfb_ms,
                duration_ms,
                events: counts[0],
                bytes: counts[1],
                oversized_events,
            };
            prop_assert_eq!(
                String::from_utf8(record.json_line()).unwrap(),
                serde_json::to_string(&record).unwrap()
            );
        }
    }

    #[test]
    fn sums_only_present_figures_and_refuses_overflow() {
        assert_eq!(sum_present(&[None, None]), None);
        assert_eq!(sum_present(&[Some(3), None, Some(4)]), Some(7));
        assert_eq!(sum_present(&[Some(u64::MAX), Some(1)]), None);
    }

    #[test]
    fn total_is_stated_or_derived() {
        let usage = Usage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            ..Usage::default()
        };
        assert_eq!(usage.with_total(Some(99)).total_tokens, Some(99));
        assert_eq!(usage.with_total(None).total_tokens, Some(15));
        let no_output = Usage {
            input_tokens: Some(10),
            ..Usage::default()
        };
        assert_eq!(no_output.with_total(None).total_tokens, None);
    }

    #[test]
    fn serialises_without_unknown_figures() {
        let facts = StreamFacts {
            model: Some("m".into()),
            usage: Some(Usage {
                input_tokens: Some(1),
                ..Usage::default()
            }),
            ..StreamFacts::default()
        };
        let json = serde_json::to_string(&facts).unwrap();
        assert_eq!(
            json,
            r#"{"model":"m","end_marker_seen":false,"usage":{"input_tokens":1},"events":0,"unparsed_events":0}"#
        );
        assert_eq!(facts.usage_source(), "provider");
        assert_eq!(StreamFacts::default().usage_source(), "none");
    }

    #[test]
    fn record_serialises_flat_and_comment_is_one_sse_comment() {
        let facts = StreamFacts {
            model: Some("gpt-4o".into()),
            usage: Some(Usage {
                input_tokens: Some(9),
                output_tokens: Some(2),
                total_tokens: Some(11),
                ..Usage::default()
            }),
            end_marker_seen: true,
            events: 4,
            ..StreamFacts::default()
        };
        let record = UsageRecord {
            ts: "2026-11-23T12:00:00.000Z".into(),
            request_id: "r1".into(),
            user: None,
            key_id: None,
            tenant: None,
            route: "/v1/".into(),
            upstream: "openai".into(),
            provider: "openai",
            format: Some("openai_chat"),
            model: None,
            usage: Usage::default(),
            usage_source: "none",
            outcome: "completed",
            status: 200,
            end_marker_seen: false,
            finish_reason: None,
            provider_error: None,
            ttfb_ms: Some(1.5),
            duration_ms: 20.0,
            events: 0,
            bytes: 100,
            oversized_events: 0,
        }
        .with_facts(&facts);
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(json["input_tokens"], 9);
        assert_eq!(json["total_tokens"], 11);
        assert_eq!(json["usage_source"], "provider");
        assert_eq!(json["end_marker_seen"], true);
        assert!(json.get("cached_input_tokens").is_none());
        assert!(json.get("user").is_none());
        let comment = String::from_utf8(record.sse_comment()).unwrap();
        assert!(comment.starts_with(": sluice-usage {\"request_id\":\"r1\""));
        assert!(comment.ends_with("}\n\n") && comment.matches('\n').count() == 2);
    }
}
