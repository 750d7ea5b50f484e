//! Sluice: an edge reverse proxy for LLM token streams.
//!
//! Layers (DESIGN.md): `config` → `route` → `edge` (the only Pingora code) relaying with the
//! pure `sse` logic, reporting through `telemetry`.

mod addr_text;
pub mod auth;
pub mod client_ip;
pub mod config;
pub mod content_coding;
pub mod daemon;
pub mod demo;
pub mod edge;
pub mod http1;
mod json_object;
pub mod limits;
pub mod provider;
pub mod request_id;
pub mod route;
pub mod sse;
pub mod telemetry;
pub mod usage;
pub mod websocket;
mod yaml_error;

pub use config::Config;
pub use edge::{build_server, run, RunOptions};
