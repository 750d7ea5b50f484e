//! Metrics (Prometheus, all named `sluice_*`, bounded labels) and the JSON access log.

mod access_log;
mod metrics;

pub use access_log::{timestamp, AccessRecord};
pub use metrics::{Metrics, METRICS};
