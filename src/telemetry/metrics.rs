use super::limits_metrics::LimitsMetrics;
use crate::sse::StreamOutcome;
use crate::usage::record::UsageRecord;
use once_cell::sync::Lazy;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashSet;
use std::sync::Mutex;

/// Distinct `model` label values kept; later ones are counted as `other`, so that a provider
/// (or a client choosing models) cannot blow up the series count.
const MAX_MODEL_LABELS: usize = 100;

pub static METRICS: Lazy<Metrics> = Lazy::new(Metrics::new);

/// Latency buckets from 100 µs to 60 s: stream gaps and first bytes span that range.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

pub struct Metrics {
    registry: Registry,
    pub streams_in_flight: IntGaugeVec,
    pub streams_finished: IntCounterVec,
    pub requests: IntCounterVec,
    pub time_to_first_byte: HistogramVec,
    pub chunk_gap: HistogramVec,
    pub stream_bytes: IntCounterVec,
    pub heartbeats: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub usage_tokens: IntCounterVec,
    pub usage_records: IntCounterVec,
    pub oversized_events: IntCounterVec,
    pub ledger_errors: IntCounter,
    pub ledger_queue: IntGauge,
    pub access_log_dropped: IntCounter,
    /// Shared with the limiter, which reports its Redis calls to it.
    pub limits: std::sync::Arc<LimitsMetrics>,
    models_seen: Mutex<HashSet<String>>,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let streams_in_flight = IntGaugeVec::new(
            Opts::new(
                "sluice_streams_in_flight",
                "Event streams being relayed now",
            ),
            &["route"],
        )
        .unwrap();
        let streams_finished = IntCounterVec::new(
            Opts::new(
                "sluice_streams_finished_total",
                "Event streams finished, by how they ended",
            ),
            &["route", "outcome"],
        )
        .unwrap();
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_requests_total",
                "Requests handled, by response status class",
            ),
            &["route", "status_class"],
        )
        .unwrap();
        let time_to_first_byte = HistogramVec::new(
            HistogramOpts::new(
                "sluice_time_to_first_byte_seconds",
                "From request received to the first response body byte sent to the client",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap();
        let chunk_gap = HistogramVec::new(
            HistogramOpts::new(
                "sluice_chunk_gap_seconds",
                "Silence between two consecutive upstream chunks of an event stream",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap();
        let stream_bytes = IntCounterVec::new(
            Opts::new(
                "sluice_stream_bytes_total",
                "Event stream body bytes sent to clients",
            ),
            &["route"],
        )
        .unwrap();
        let heartbeats = IntCounterVec::new(
            Opts::new(
                "sluice_heartbeats_total",
                "Keep-alive comments sent to clients",
            ),
            &["route"],
        )
        .unwrap();
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "sluice_upstream_errors_total",
                "Upstream failures, by phase (connect, request, response_header, body)",
            ),
            &["upstream", "phase"],
        )
        .unwrap();
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "sluice_upstream_retries_total",
                "Requests sent again on a new connection after a reused one closed without an answer",
            ),
            &["upstream"],
        )
        .unwrap();
        let usage_tokens = IntCounterVec::new(
            Opts::new(
                "sluice_usage_tokens_total",
                "Tokens the providers reported, by kind (input, output, cached_input, cache_creation_input, reasoning)",
            ),
            &["route", "provider", "model", "kind"],
        )
        .unwrap();
        let usage_records = IntCounterVec::new(
            Opts::new(
                "sluice_usage_records_total",
                "Usage records written, by stream outcome and whether the provider's figures arrived",
            ),
            &["route", "outcome", "usage_source"],
        )
        .unwrap();
        let oversized_events = IntCounterVec::new(
            Opts::new(
                "sluice_sse_oversized_events_total",
                "SSE events larger than usage.max_event_size, passed through uninspected",
            ),
            &["route"],
        )
        .unwrap();
        let ledger_errors = IntCounter::new(
            "sluice_usage_ledger_errors_total",
            "Usage records the ledger did not confirm durable in time (write errors, timeouts)",
        )
        .unwrap();
        let ledger_queue = IntGauge::new(
            "sluice_usage_ledger_queue_records",
            "Usage records queued for the ledger, not yet on disk",
        )
        .unwrap();
        let access_log_dropped = IntCounter::new(
            "sluice_access_log_dropped_total",
            "Access-log lines dropped because stdout did not take them fast enough",
        )
        .unwrap();
        for collector in [
            Box::new(streams_in_flight.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(streams_finished.clone()),
            Box::new(requests.clone()),
            Box::new(time_to_first_byte.clone()),
            Box::new(chunk_gap.clone()),
            Box::new(stream_bytes.clone()),
            Box::new(heartbeats.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(usage_tokens.clone()),
            Box::new(usage_records.clone()),
            Box::new(oversized_events.clone()),
            Box::new(ledger_errors.clone()),
            Box::new(ledger_queue.clone()),
            Box::new(access_log_dropped.clone()),
        ] {
            registry.register(collector).unwrap();
        }
        let limits = std::sync::Arc::new(LimitsMetrics::new(&registry));
        Metrics {
            registry,
            streams_in_flight,
            streams_finished,
            requests,
            time_to_first_byte,
            chunk_gap,
            stream_bytes,
            heartbeats,
            upstream_errors,
            upstream_retries,
            usage_tokens,
            usage_records,
            oversized_events,
            ledger_errors,
            ledger_queue,
            access_log_dropped,
            limits,
            models_seen: Mutex::new(HashSet::new()),
        }
    }

    /// Counts a usage record and the tokens it reports.
    pub fn usage_recorded(&self, record: &UsageRecord) {
        self.usage_records
            .with_label_values(&[&record.route, record.outcome, record.usage_source])
            .inc();
        if record.oversized_events > 0 {
            self.oversized_events
                .with_label_values(&[&record.route])
                .inc_by(record.oversized_events);
        }
        let model = self.model_label(record.model.as_deref().unwrap_or(""));
        let usage = &record.usage;
        for (kind, value) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached_input", usage.cached_input_tokens),
            ("cache_creation_input", usage.cache_creation_input_tokens),
            ("reasoning", usage.reasoning_tokens),
        ] {
            if let Some(value) = value {
                self.usage_tokens
                    .with_label_values(&[&record.route, record.provider, model, kind])
                    .inc_by(value);
            }
        }
    }

    fn model_label<'a>(&self, model: &'a str) -> &'a str {
        let mut seen = self.models_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(model) {
            return model;
        }
        if seen.len() < MAX_MODEL_LABELS {
            seen.insert(model.to_string());
            return model;
        }
        "other"
    }

    /// Makes every route's series visible at zero before its first stream, so that dashboards
    /// and alerts see `0`, not a missing series.
    pub fn register_route(&self, route: &str) {
        self.streams_in_flight.with_label_values(&[route]);
        for outcome in StreamOutcome::ALL {
            self.streams_finished
                .with_label_values(&[route, outcome.as_str()]);
        }
        self.stream_bytes.with_label_values(&[route]);
        self.time_to_first_byte.with_label_values(&[route]);
        self.chunk_gap.with_label_values(&[route]);
    }

    /// The per-chunk series of one event stream, looked up once so that the relay's hot path
    /// does no label hashing.
    pub fn for_stream(&self, route: &str) -> StreamSeries {
        StreamSeries {
            chunk_gap: self.chunk_gap.with_label_values(&[route]),
            stream_bytes: self.stream_bytes.with_label_values(&[route]),
            heartbeats: self.heartbeats.with_label_values(&[route]),
        }
    }

    pub fn stream_finished(&self, route: &str, outcome: StreamOutcome) {
        self.streams_finished
            .with_label_values(&[route, outcome.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}

/// One event stream's per-chunk series (see [`Metrics::for_stream`]).
pub struct StreamSeries {
    pub chunk_gap: Histogram,
    pub stream_bytes: IntCounter,
    pub heartbeats: IntCounter,
}

/// `2xx`, `4xx`, … for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        // Nothing was answered: the client left first (the access log's status 0). Not a 5xx,
        // which an error-rate alert would take for Sluice's or the upstream's failure.
        0 => "none",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    /// Counts an upstream failure in `phase` (`connect`, `request`, `response_header`, `body`).
    pub fn upstream_failed(&self, upstream: &str, phase: &str) {
        self.upstream_errors
            .with_label_values(&[upstream, phase])
            .inc();
    }

    /// Bytes of a stream's end that Sluice wrote (the relay counts the rest as it goes).
    pub fn stream_bytes_sent(&self, route: &str, bytes: u64) {
        if bytes > 0 {
            self.stream_bytes.with_label_values(&[route]).inc_by(bytes);
        }
    }

    pub fn upstream_retried(&self, upstream: &str) {
        self.upstream_retries.with_label_values(&[upstream]).inc();
    }

    pub fn request_done(&self, route: &str, status: u16) {
        self.requests
            .with_label_values(&[route, status_class(status)])
            .inc();
    }
}
