//! Metrics of admission: auth and limit rejections, stream slots held, and the Redis backend's
//! latency and fallback state. The limiter reports Redis calls through [`LimitsObserver`]; slot
//! counts are read from the limiter when `/metrics` is scraped.

use crate::limits::{LimitsObserver, LimitsSnapshot};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Redis round trips on loopback or in a data centre: 50 µs to 1 s.
const REDIS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct LimitsMetrics {
    pub rejections: IntCounterVec,
    streams_held: IntGauge,
    user_streams: IntGaugeVec,
    redis_seconds: HistogramVec,
    redis_errors: IntCounterVec,
    redis_fallback: IntGauge,
}

impl LimitsMetrics {
    pub(super) fn new(registry: &Registry) -> LimitsMetrics {
        let rejections = IntCounterVec::new(
            Opts::new(
                "sluice_limits_rejections_total",
                "Requests refused before going upstream, by reason (missing_key, invalid_key, user_streams, key_streams, global_streams, user_rate)",
            ),
            &["route", "reason"],
        )
        .unwrap();
        let streams_held = IntGauge::new(
            "sluice_limits_streams_in_flight",
            "Stream slots this instance holds now (every one is released when its stream ends)",
        )
        .unwrap();
        let user_streams = IntGaugeVec::new(
            Opts::new(
                "sluice_limits_user_streams",
                "Stream slots held per user on this instance (only with limits.per_user_metrics)",
            ),
            &["user"],
        )
        .unwrap();
        let redis_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_limits_redis_seconds",
                "Round-trip time of Redis limit calls, by operation (admit, release, renew, ping)",
            )
            .buckets(REDIS_BUCKETS.to_vec()),
            &["op"],
        )
        .unwrap();
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "sluice_limits_redis_errors_total",
                "Redis limit calls that failed or timed out, by operation",
            ),
            &["op"],
        )
        .unwrap();
        let redis_fallback = IntGauge::new(
            "sluice_limits_redis_fallback",
            "1 while Redis is unreachable and limits are counted on this instance alone",
        )
        .unwrap();
        for collector in [
            Box::new(rejections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(streams_held.clone()),
            Box::new(user_streams.clone()),
            Box::new(redis_seconds.clone()),
            Box::new(redis_errors.clone()),
            Box::new(redis_fallback.clone()),
        ] {
            registry.register(collector).unwrap();
        }
        LimitsMetrics {
            rejections,
            streams_held,
            user_streams,
            redis_seconds,
            redis_errors,
            redis_fallback,
        }
    }

    pub fn rejected(&self, route: &str, reason: &str) {
        self.rejections.with_label_values(&[route, reason]).inc();
    }

    /// Copies the limiter's live counts into the gauges, just before a scrape.
    pub fn observe_snapshot(&self, snapshot: &LimitsSnapshot, per_user: bool) {
        self.streams_held.set(snapshot.in_flight as i64);
        if per_user {
            // Users whose streams all ended disappear instead of lingering at zero.
            self.user_streams.reset();
            for (user, count) in &snapshot.users {
                self.user_streams
                    .with_label_values(&[user])
                    .set(i64::from(*count));
            }
        }
    }
}

impl LimitsObserver for LimitsMetrics {
    fn redis_call(&self, op: &'static str, seconds: f64, ok: bool) {
        self.redis_seconds.with_label_values(&[op]).observe(seconds);
        if !ok {
            self.redis_errors.with_label_values(&[op]).inc();
        }
    }

    fn fallback(&self, active: bool) {
        self.redis_fallback.set(i64::from(active));
    }
}
