//! One JSON line per request on stdout: what an operator greps when a stream went wrong.

use serde::Serialize;
use std::io::Write;

#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub ts: String,
    pub request_id: &'a str,
    pub client: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    /// The caller, when the route authenticates: never the key itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    pub status: u16,
    pub stream: bool,
    pub outcome: Option<&'a str>,
    pub duration_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub bytes_sent: u64,
    pub heartbeats: u64,
    pub error: Option<&'a str>,
    /// Why Sluice refused the request before it went upstream (`invalid_key`, `user_streams`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<&'a str>,
    pub model: Option<&'a str>,
    #[serde(flatten)]
    pub usage: Option<&'a crate::usage::record::Usage>,
    pub usage_source: Option<&'static str>,
}

impl AccessRecord<'_> {
    pub fn write(&self) {
        let Ok(mut line) = serde_json::to_vec(self) else {
            return;
        };
        line.push(b'\n');
        // A failed log write must never fail the request.
        let _ = std::io::stdout().lock().write_all(&line);
    }
}
