//! Server-Sent Events, free of any network code: recognising streams (event streams and JSON
//! lines, Gemini's streamed JSON arrays), parsing event streams incrementally (which also tells where the upstream's events end,
//! so inserted bytes never land inside one), and the relay's timers.

mod detect;
mod json_array;
mod parser;
mod relay_policy;

pub use detect::{
    is_event_stream, may_be_json_object, request_wants_stream, LineBoundary, StreamKind,
    StreamMembers,
};
pub use json_array::{ArrayPosition, JsonArraySplitter};
pub use parser::{SseEvent, SseParser};
pub use relay_policy::{
    RelayClock, RelayPolicy, RelayTick, StreamOutcome, END_MARKER_LINGER, HEARTBEAT,
};
