//! Metrics (Prometheus, all named `sluice_*`, bounded labels) and the JSON access log.

mod access_log;
mod limits_metrics;
pub mod line_sink;
mod metrics;
mod time;

pub use access_log::{AccessRecord, Client};
pub use limits_metrics::LimitsMetrics;
pub use metrics::{Metrics, StreamSeries, METRICS};
pub use time::rfc3339_now;
