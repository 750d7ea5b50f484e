//! Server-Sent Events, free of any network code: recognising streams (event streams and JSON
//! lines), parsing event streams incrementally (which also tells where the upstream's events end,
//! so inserted bytes never land inside one), and the relay's timers.

mod detect;
mod parser;
mod relay_policy;

pub use detect::{
    is_event_stream, may_be_json_object, request_wants_stream, LineBoundary, StreamKind,
    StreamMembers,
};
pub use parser::{SseEvent, SseParser};
pub use relay_policy::{
    RelayClock, RelayPolicy, RelayTick, StreamOutcome, END_MARKER_LINGER, HEARTBEAT,
};
