use crate::sse::StreamOutcome;
use once_cell::sync::Lazy;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
        for collector in [
            Box::new(streams_in_flight.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(streams_finished.clone()),
            Box::new(requests.clone()),
            Box::new(time_to_first_byte.clone()),
            Box::new(chunk_gap.clone()),
            Box::new(stream_bytes.clone()),
            Box::new(heartbeats.clone()),
            Box::new(upstream_errors.clone()),
        ] {
            registry.register(collector).unwrap();
        }
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
        }
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

/// `2xx`, `4xx`, … for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    pub fn request_done(&self, route: &str, status: u16) {
        self.requests
            .with_label_values(&[route, status_class(status)])
            .inc();
    }
}
