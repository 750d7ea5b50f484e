//! One usage extractor per provider stream format, behind one trait.
//!
//! An extractor sees every event of one response, already parsed from SSE, and reads from them
//! what the provider states about the stream: model, finish reason, end marker, error, usage. It
//! runs on the relay's hot path, so each format skips its ordinary delta events with a cheap
//! check (the event name, or a substring scan) and parses JSON only for the few events that can
//! carry what it needs. It never fails and never panics: JSON it cannot read is counted in
//! `StreamFacts::unparsed_events` and skipped. A figure that is not a count (negative,
//! fractional, beyond `u64`, a string…) is unknown, and so is a sum it is part of; a usage object
//! of the wrong type is no usage; neither costs the event's other members.

mod anthropic;
mod auto;
mod common;
mod format;
mod gemini;
mod openai_chat;
mod openai_completions;
mod openai_responses;
mod scan;

pub use anthropic::AnthropicExtractor;
pub use auto::AutoExtractor;
pub use format::StreamFormat;
pub use gemini::GeminiExtractor;
pub use openai_chat::OpenaiChatExtractor;
pub use openai_responses::ResponsesExtractor;

use crate::usage::record::StreamFacts;

pub trait UsageExtractor: Send {
    /// One event: `event_type` is the SSE `event:` field (`b"message"` when absent), `data` the
    /// data lines joined by LF.
    fn on_event(&mut self, event_type: &[u8], data: &[u8]);

    /// What the events so far showed.
    fn facts(&self) -> &StreamFacts;

    /// The last event was OpenAI's usage-only chunk (`"choices": []` and a `usage` object),
    /// which the proxy removes when the client did not ask for usage itself. Told by the parse
    /// that read its figures, so that the chunk is not parsed twice.
    fn usage_only(&self) -> bool {
        false
    }
}

/// Reads nothing: for `usage.inspect: false`, where records carry outcomes and timings only.
#[derive(Default)]
pub struct NoExtractor(StreamFacts);

impl UsageExtractor for NoExtractor {
    fn on_event(&mut self, _event_type: &[u8], _data: &[u8]) {}

    fn facts(&self) -> &StreamFacts {
        &self.0
    }
}

pub fn extractor_for(format: StreamFormat) -> Box<dyn UsageExtractor> {
    seeded_extractor(format, StreamFacts::default())
}

/// An extractor that continues from `facts` (what [`AutoExtractor`] saw before it knew the
/// format).
fn seeded_extractor(format: StreamFormat, facts: StreamFacts) -> Box<dyn UsageExtractor> {
    match format {
        // Legacy completions chunks differ from chat chunks only where no figure lives.
        StreamFormat::OpenaiChat | StreamFormat::OpenaiCompletions => {
            Box::new(OpenaiChatExtractor::seeded(facts))
        }
        StreamFormat::OpenaiResponses => Box::new(ResponsesExtractor::seeded(facts)),
        StreamFormat::AnthropicMessages => Box::new(AnthropicExtractor::seeded(facts)),
        StreamFormat::GeminiGenerate => Box::new(GeminiExtractor::seeded(facts)),
    }
}
