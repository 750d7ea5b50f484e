//! Pools the rounds, compares every target with direct, prints the tables and builds the JSON.
//!
//! "Added" figures are the target's percentile minus direct's percentile from the same run (a
//! difference of distributions: direct carries the harness's own cost, the rest is the proxy's).

use crate::histogram::Histogram;
use crate::scenarios::{
    Closes, Errors, EventCount, FirstByteRun, LatencyRun, LeaveRun, MemoryRun, ThroughputRun,
};
use serde_json::{json, Value};

#[derive(Default)]
pub struct TargetResults {
    pub name: String,
    pub version: String,
    pub latency: Vec<LatencyRun>,
    pub throughput: Vec<ThroughputRun>,
    pub first_byte: Vec<FirstByteRun>,
    pub leave: Vec<LeaveRun>,
    pub memory: Vec<MemoryRun>,
    pub diagnostics: Vec<Value>,
}

/// The `q` quantile of sorted samples (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn sorted(samples: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = samples.collect();
    v.sort_unstable();
    v
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

fn errors_of<'a>(runs: impl Iterator<Item = &'a Errors>) -> (u64, Option<String>) {
    let mut count = 0;
    let mut first = None;
    for e in runs {
        count += e.count;
        if first.is_none() {
            first = e.first.clone();
        }
    }
    (count, first)
}

fn events_of<'a>(runs: impl Iterator<Item = &'a EventCount>) -> EventCount {
    runs.fold(EventCount::default(), |acc, e| EventCount {
        sent: acc.sent + e.sent,
        received: acc.received + e.received,
    })
}

/// How soon upstreams were closed after their clients left, over a scenario's rounds.
#[derive(Debug, Default, Clone)]
pub struct CloseSummary {
    /// Streams whose client left, and of those closed within 100 ms / 1 s: the worst round (a
    /// proxy that sometimes leaves streams open should show it).
    pub streams: Option<usize>,
    pub within_100ms: Option<usize>,
    pub within_1s: Option<usize>,
    /// Close delay (upstream close − its client's close), p50 and p99 pooled over rounds.
    pub delay: Option<[u64; 2]>,
}

impl CloseSummary {
    /// From each round's streams whose client left, and their closes.
    fn of<'a>(rounds: impl Iterator<Item = (usize, &'a Closes)> + Clone) -> CloseSummary {
        let delays = sorted(
            rounds
                .clone()
                .flat_map(|(_, c)| c.delays_ns.iter().copied()),
        );
        CloseSummary {
            streams: rounds.clone().map(|(n, _)| n).min(),
            within_100ms: rounds.clone().map(|(_, c)| c.within_100ms).min(),
            within_1s: rounds.map(|(_, c)| c.within_1s).min(),
            delay: percentile(&delays, 0.5)
                .zip(percentile(&delays, 0.99))
                .map(|(a, b)| [a, b]),
        }
    }

    /// `n` of the streams, as `n/streams`.
    fn share(&self, n: Option<usize>) -> String {
        match (n, self.streams) {
            (Some(n), Some(total)) => format!("{n}/{total}"),
            _ => "—".into(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "closed_within_100ms_worst": self.within_100ms,
            "closed_within_1s_worst": self.within_1s,
            "close_delay_p50_us": self.delay.map(|c| c[0] as f64 / 1e3),
            "close_delay_p99_us": self.delay.map(|c| c[1] as f64 / 1e3),
        })
    }
}

/// `a`'s fields with `b`'s added (both JSON objects).
fn merged(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Pooled figures of one target.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Delivery delay, every round pooled.
    pub delays: Histogram,
    pub latency: Option<[u64; 3]>,
    pub latency_samples: usize,
    /// Each round's delivery-delay p99, in round order.
    pub latency_p99_by_round: Vec<Option<u64>>,
    pub events_per_s: Option<f64>,
    pub cpu_s_per_million: Option<f64>,
    pub ttfb: Option<[u64; 2]>,
    /// Each round's TTFB p50, in round order (`None`: no sample that round).
    pub ttfb_p50_by_round: Vec<Option<u64>>,
    pub first_event: Option<[u64; 2]>,
    pub first_byte_samples: usize,
    /// The proxy's CPU time per fresh stream, mean over the rounds' streams.
    pub cpu_us_per_fresh_stream: Option<f64>,
    pub kib_per_stream: Option<f64>,
    pub memory_streams: Option<usize>,
    /// Memory: the idle streams' clients all leaving at once.
    pub idle_closes: CloseSummary,
    /// The slowest round's time from the first client leaving to the last upstream close.
    pub last_close: Option<u64>,
    /// Leave: clients leaving flowing streams one by one.
    pub flowing_closes: CloseSummary,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Events the upstream wrote minus those the client received (should be 0).
    pub lost_events: i64,
}

pub fn summarize(t: &TargetResults) -> Summary {
    let mut s = Summary::default();
    for run in &t.latency {
        s.delays.merge(&run.delays);
    }
    s.latency_samples = s.delays.len();
    s.latency_p99_by_round = t
        .latency
        .iter()
        .map(|r| r.delays.percentile(0.99))
        .collect();
    if let (Some(a), Some(b), Some(c)) = (
        s.delays.percentile(0.5),
        s.delays.percentile(0.99),
        s.delays.percentile(0.999),
    ) {
        s.latency = Some([a, b, c]);
    }
    let received: u64 = t.throughput.iter().map(|r| r.events.received).sum();
    let elapsed: f64 = t.throughput.iter().map(|r| r.elapsed_s).sum();
    if elapsed > 0.0 {
        s.events_per_s = Some(received as f64 / elapsed);
    }
    let cpu: Option<f64> = t.throughput.iter().map(|r| r.cpu_s).sum();
    if let (Some(cpu), true) = (cpu, received > 0) {
        s.cpu_s_per_million = Some(cpu / received as f64 * 1e6);
    }
    let ttfb = sorted(t.first_byte.iter().flat_map(|r| r.ttfb_ns.iter().copied()));
    let first_event = sorted(
        t.first_byte
            .iter()
            .flat_map(|r| r.first_event_ns.iter().copied()),
    );
    s.first_byte_samples = ttfb.len();
    let measured: Vec<(f64, usize)> = t
        .first_byte
        .iter()
        .filter_map(|r| Some((r.cpu_ns_per_stream?, r.ttfb_ns.len())))
        .collect();
    let streams: usize = measured.iter().map(|&(_, n)| n).sum();
    if streams > 0 {
        let ns: f64 = measured.iter().map(|&(per, n)| per * n as f64).sum();
        s.cpu_us_per_fresh_stream = Some(ns / streams as f64 / 1e3);
    }
    s.ttfb_p50_by_round = t
        .first_byte
        .iter()
        .map(|r| percentile(&sorted(r.ttfb_ns.iter().copied()), 0.5))
        .collect();
    if let (Some(a), Some(b)) = (percentile(&ttfb, 0.5), percentile(&ttfb, 0.99)) {
        s.ttfb = Some([a, b]);
    }
    if let (Some(a), Some(b)) = (
        percentile(&first_event, 0.5),
        percentile(&first_event, 0.99),
    ) {
        s.first_event = Some([a, b]);
    }
    s.kib_per_stream = median(
        t.memory
            .iter()
            .filter_map(MemoryRun::kib_per_stream)
            .collect(),
    );
    s.memory_streams = t.memory.iter().map(|r| r.opened).min();
    s.idle_closes = CloseSummary::of(t.memory.iter().map(|r| (r.opened, &r.closes)));
    s.last_close = t.memory.iter().filter_map(|r| r.last_close_ns).max();
    s.flowing_closes = CloseSummary::of(t.leave.iter().map(|r| (r.left, &r.closes)));
    let (errors, first) = errors_of(
        t.latency
            .iter()
            .map(|r| &r.errors)
            .chain(t.throughput.iter().map(|r| &r.errors))
            .chain(t.first_byte.iter().map(|r| &r.errors))
            .chain(t.leave.iter().map(|r| &r.errors))
            .chain(t.memory.iter().map(|r| &r.errors)),
    );
    s.errors = errors;
    s.first_error = first;
    let events = events_of(
        t.latency
            .iter()
            .map(|r| &r.events)
            .chain(t.throughput.iter().map(|r| &r.events)),
    );
    s.lost_events = events.sent as i64 - events.received as i64;
    s
}

fn us(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{} µs", (ns as f64 / 1e3).round())
    }
}

fn added(target: Option<u64>, direct: Option<u64>) -> String {
    match (target, direct) {
        (Some(t), Some(d)) => signed(t as f64 - d as f64),
        _ => "—".into(),
    }
}

fn signed(diff_ns: f64) -> String {
    if diff_ns.abs() >= 10e6 {
        format!("{:+.1} ms", diff_ns / 1e6)
    } else {
        format!("{:+} µs", (diff_ns / 1e3).round())
    }
}

/// Each round's target figure minus direct's in the same round, in ns: how far one run's
/// machine noise moves an added figure, next to the pooled one that says where a target is.
/// Empty unless both have a figure for every round.
fn added_by_round(target: &[Option<u64>], direct: &[Option<u64>]) -> Vec<f64> {
    if target.len() != direct.len() {
        return Vec::new();
    }
    target
        .iter()
        .zip(direct)
        .map(|(&t, &d)| Some(t? as f64 - d? as f64))
        .collect::<Option<Vec<f64>>>()
        .unwrap_or_default()
}

/// The lowest and the highest of [`added_by_round`], as `+88 µs … +105 µs`.
fn round_spread(target: &[Option<u64>], direct: &[Option<u64>]) -> String {
    let diffs = added_by_round(target, direct);
    let low = diffs.iter().copied().reduce(f64::min);
    let high = diffs.iter().copied().reduce(f64::max);
    match (low, high) {
        (Some(low), Some(high)) => format!("{} … {}", signed(low), signed(high)),
        _ => "—".into(),
    }
}

fn round_spread_us(target: &[Option<u64>], direct: &[Option<u64>]) -> Value {
    let diffs = added_by_round(target, direct);
    json!(diffs.iter().map(|&d| us_tenths(d)).collect::<Vec<_>>())
}

/// A difference in ns as µs with one decimal, as the JSON gives every added figure.
fn us_tenths(diff_ns: f64) -> f64 {
    (diff_ns / 1e3 * 10.0).round() / 10.0
}

/// Checks the per-round spread (run by `cargo test --all-targets`).
pub fn self_check() -> Result<(), String> {
    let got = round_spread(
        &[Some(230_000), Some(190_000)],
        &[Some(130_000), Some(120_000)],
    );
    if got != "+70 µs … +100 µs" {
        return Err(format!("round spread: {got}"));
    }
    for (target, direct) in [
        (&[Some(1), None][..], &[Some(1), Some(1)][..]),
        (&[Some(1), Some(2)][..], &[Some(1)][..]),
        (&[][..], &[][..]),
    ] {
        if round_spread(target, direct) != "—" {
            return Err(format!(
                "round spread of {target:?} over {direct:?} is not empty"
            ));
        }
    }
    Ok(())
}

fn added_us(target: Option<u64>, direct: Option<u64>) -> Value {
    match (target, direct) {
        (Some(t), Some(d)) => json!(us_tenths(t as f64 - d as f64)),
        _ => Value::Null,
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "—".into())
}

fn fixed(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "—".into())
}

/// Left-aligned first column, right-aligned figures.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i == 0 {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Per-scenario tables and the summary, as printed at the end of a run.
pub fn tables(results: &[TargetResults], skipped: &[(String, String)]) -> String {
    let summaries: Vec<(String, Summary)> = results
        .iter()
        .map(|t| (t.name.clone(), summarize(t)))
        .collect();
    let direct = summaries
        .iter()
        .find(|(n, _)| n == "direct")
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let d_lat = |i: usize| direct.latency.map(|l| l[i]);
    let d_fb = |i: usize| direct.ttfb.map(|l| l[i]);
    let d_fe = |i: usize| direct.first_event.map(|l| l[i]);
    let mut out = String::new();

    out.push_str(
        "\nLatency: delivery delay (client receive − upstream send), pooled over rounds\n",
    );
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|(name, s)| {
            let l = |i: usize| s.latency.map(|l| l[i]);
            vec![
                name.clone(),
                s.latency_samples.to_string(),
                opt(l(0).map(us)),
                opt(l(1).map(us)),
                opt(l(2).map(us)),
                added(l(0), d_lat(0)),
                added(l(1), d_lat(1)),
                round_spread(&s.latency_p99_by_round, &direct.latency_p99_by_round),
                added(l(2), d_lat(2)),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "target",
            "events",
            "p50",
            "p99",
            "p99.9",
            "added p50",
            "added p99",
            "added p99 by round",
            "added p99.9",
        ],
        &rows,
    ));

    out.push_str("\nThroughput: streams as fast as the upstream writes\n");
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|(name, s)| {
            let per_cpu_s = s.cpu_s_per_million.filter(|c| *c > 0.0).map(|c| 1e6 / c);
            vec![
                name.clone(),
                fixed(s.events_per_s, 0),
                fixed(s.cpu_s_per_million, 2),
                fixed(per_cpu_s, 0),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "target",
            "events/s",
            "proxy CPU s / M events",
            "events / CPU s",
        ],
        &rows,
    ));

    let idle_ms = results
        .iter()
        .find_map(|t| Some(t.first_byte.first()?.idle_ms))
        .unwrap_or(0);
    let pace = if idle_ms > 0 {
        format!("{idle_ms} ms of quiet before each")
    } else {
        "back to back".into()
    };
    out.push_str(&format!(
        "\nFirst byte: fresh connection per stream, {pace} (from connect to first byte / first event)\n"
    ));
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|(name, s)| {
            let b = |i: usize| s.ttfb.map(|l| l[i]);
            let e = |i: usize| s.first_event.map(|l| l[i]);
            vec![
                name.clone(),
                s.first_byte_samples.to_string(),
                opt(b(0).map(us)),
                opt(b(1).map(us)),
                added(b(0), d_fb(0)),
                round_spread(&s.ttfb_p50_by_round, &direct.ttfb_p50_by_round),
                added(b(1), d_fb(1)),
                added(e(0), d_fe(0)),
                added(e(1), d_fe(1)),
                opt(s.cpu_us_per_fresh_stream.map(|c| format!("{c:.0} µs"))),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "target",
            "streams",
            "TTFB p50",
            "TTFB p99",
            "added p50",
            "added p50 by round",
            "added p99",
            "added 1st event p50",
            "added 1st event p99",
            "proxy CPU / stream",
        ],
        &rows,
    ));

    out.push_str("\nLeave: flowing streams whose clients leave one by one, mid-stream\n");
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|(name, s)| {
            let c = &s.flowing_closes;
            vec![
                name.clone(),
                opt(c.streams),
                c.share(c.within_100ms),
                c.share(c.within_1s),
                opt(c.delay.map(|d| us(d[0]))),
                opt(c.delay.map(|d| us(d[1]))),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "target",
            "clients left",
            "upstream closed ≤100 ms",
            "≤1 s",
            "close p50",
            "close p99",
        ],
        &rows,
    ));

    out.push_str("\nMemory: open idle streams, then every client leaves at once\n");
    let rows: Vec<Vec<String>> = results
        .iter()
        .zip(&summaries)
        .map(|(t, (name, s))| {
            let before = t.memory.iter().filter_map(|r| r.rss_before_kib).min();
            let after = t.memory.iter().filter_map(|r| r.rss_after_kib).max();
            let c = &s.idle_closes;
            vec![
                name.clone(),
                opt(s.memory_streams),
                opt(before.map(|k| format!("{:.1}", k as f64 / 1024.0))),
                opt(after.map(|k| format!("{:.1}", k as f64 / 1024.0))),
                fixed(s.kib_per_stream, 1),
                c.share(c.within_100ms),
                c.share(c.within_1s),
                opt(c.delay.map(|d| us(d[0]))),
                opt(c.delay.map(|d| us(d[1]))),
                opt(s.last_close.map(us)),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "target",
            "streams",
            "RSS before MiB",
            "RSS after MiB",
            "KiB / stream",
            "upstream closed ≤100 ms",
            "≤1 s",
            "close p50",
            "close p99",
            "last close",
        ],
        &rows,
    ));
    out.push_str(
        "(closed ≤100 ms: worst round, each stream timed from its own client's close; last close: \
         from the first client leaving to the last upstream close seen, slowest round)\n",
    );

    out.push_str("\nSummary (added = over direct; memory and closes: median / worst round)\n");
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|(name, s)| {
            let l = |i: usize| s.latency.map(|l| l[i]);
            let b = |i: usize| s.ttfb.map(|l| l[i]);
            let per_cpu_s = s.cpu_s_per_million.filter(|c| *c > 0.0).map(|c| 1e6 / c);
            let (idle, flowing) = (&s.idle_closes, &s.flowing_closes);
            let closed = format!(
                "{} · {}",
                idle.share(idle.within_100ms),
                flowing.share(flowing.within_100ms)
            );
            vec![
                name.clone(),
                format!("{} / {}", added(l(0), d_lat(0)), added(l(1), d_lat(1))),
                fixed(s.cpu_s_per_million, 2),
                fixed(per_cpu_s, 0),
                fixed(s.kib_per_stream, 1),
                closed,
                format!("{} / {}", added(b(0), d_fb(0)), added(b(1), d_fb(1))),
                s.errors.to_string(),
                s.lost_events.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "target",
            "added delay p50 / p99",
            "CPU s/M ev",
            "ev / CPU s",
            "KiB/stream",
            "closed ≤100ms idle · flowing",
            "added TTFB p50 / p99",
            "errors",
            "lost events",
        ],
        &rows,
    ));
    for (name, s) in &summaries {
        if let Some(e) = &s.first_error {
            out.push_str(&format!("{name}: {} errors, first: {e}\n", s.errors));
        }
    }
    for (name, reason) in skipped {
        out.push_str(&format!("{name}: skipped: {reason}\n"));
    }
    out
}

fn latency_json(runs: &[LatencyRun], s: &Summary, direct: &Summary) -> Value {
    let pct = |x: Option<[u64; 3]>, i: usize| x.map(|l| l[i]);
    let cdf = s.delays.cdf();
    json!({
        "samples": s.latency_samples,
        "p50_us": pct(s.latency, 0).map(|v| v as f64 / 1e3),
        "p99_us": pct(s.latency, 1).map(|v| v as f64 / 1e3),
        "p999_us": pct(s.latency, 2).map(|v| v as f64 / 1e3),
        "added_p50_us": added_us(pct(s.latency, 0), pct(direct.latency, 0)),
        "added_p99_us": added_us(pct(s.latency, 1), pct(direct.latency, 1)),
        "added_p999_us": added_us(pct(s.latency, 2), pct(direct.latency, 2)),
        "rounds_added_p99_us": round_spread_us(&s.latency_p99_by_round, &direct.latency_p99_by_round),
        // The pooled distribution at quantiles dense in the tail (what the PNG plots).
        "cdf": {
            "percentile": cdf.iter().map(|&(q, _)| (q * 1e6).round() / 1e4).collect::<Vec<_>>(),
            "delay_us": cdf.iter().map(|&(_, v)| v as f64 / 1e3).collect::<Vec<_>>(),
        },
        "rounds": runs.iter().map(|r| {
            let d = &r.delays;
            json!({
                "streams": r.streams,
                "samples": d.len(),
                "p50_us": d.percentile(0.5).map(|v| v as f64 / 1e3),
                "p99_us": d.percentile(0.99).map(|v| v as f64 / 1e3),
                "p999_us": d.percentile(0.999).map(|v| v as f64 / 1e3),
                "events_sent": r.events.sent,
                "events_received": r.events.received,
                "errors": r.errors.count,
                "first_error": r.errors.first,
                "slow_events": r.slow.len(),
                "slow_events_sample": r.slow.iter().take(200).map(|&(stream, at, delay)| json!({
                    "stream": stream,
                    "sent_ms_into_window": at as f64 / 1e6,
                    "delay_ms": delay as f64 / 1e6,
                })).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    })
}

fn throughput_json(runs: &[ThroughputRun], s: &Summary) -> Value {
    json!({
        "events_per_s": s.events_per_s,
        "cpu_s_per_million_events": s.cpu_s_per_million,
        "events_per_cpu_s": s.cpu_s_per_million.filter(|c| *c > 0.0).map(|c| 1e6 / c),
        "rounds": runs.iter().map(|r| json!({
            "streams": r.streams,
            "elapsed_s": r.elapsed_s,
            "events_sent": r.events.sent,
            "events_received": r.events.received,
            "cpu_s": r.cpu_s,
            "cpu_s_by_process": r.cpu_s_by_process,
            "errors": r.errors.count,
            "first_error": r.errors.first,
        })).collect::<Vec<_>>(),
    })
}

fn first_byte_json(runs: &[FirstByteRun], s: &Summary, direct: &Summary) -> Value {
    let pct = |x: Option<[u64; 2]>, i: usize| x.map(|l| l[i]);
    json!({
        "samples": s.first_byte_samples,
        "ttfb_p50_us": pct(s.ttfb, 0).map(|v| v as f64 / 1e3),
        "ttfb_p99_us": pct(s.ttfb, 1).map(|v| v as f64 / 1e3),
        "added_ttfb_p50_us": added_us(pct(s.ttfb, 0), pct(direct.ttfb, 0)),
        "added_ttfb_p99_us": added_us(pct(s.ttfb, 1), pct(direct.ttfb, 1)),
        "rounds_added_ttfb_p50_us": round_spread_us(&s.ttfb_p50_by_round, &direct.ttfb_p50_by_round),
        "first_event_p50_us": pct(s.first_event, 0).map(|v| v as f64 / 1e3),
        "first_event_p99_us": pct(s.first_event, 1).map(|v| v as f64 / 1e3),
        "added_first_event_p50_us": added_us(pct(s.first_event, 0), pct(direct.first_event, 0)),
        "added_first_event_p99_us": added_us(pct(s.first_event, 1), pct(direct.first_event, 1)),
        "proxy_cpu_us_per_stream": s.cpu_us_per_fresh_stream,
        "errors": runs.iter().map(|r| r.errors.count).sum::<u64>(),
        // On 2 cores a proxy alternates between stretches where it runs beside the harness and
        // stretches where it shares a core with it: the medians in order show which is which.
        "rounds_ttfb_median_per_25_us": runs
            .iter()
            .map(|r| {
                r.ttfb_ns
                    .chunks(25)
                    .map(|c| percentile(&sorted(c.iter().copied()), 0.5).map(|v| v as f64 / 1e3))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>(),
    })
}

fn leave_json(runs: &[LeaveRun], s: &Summary) -> Value {
    let rounds = json!({
        "rounds": runs.iter().map(|r| json!({
            "streams": r.streams,
            "left": r.left,
            "closed_within_100ms": r.closes.within_100ms,
            "closed_within_1s": r.closes.within_1s,
            "errors": r.errors.count,
            "first_error": r.errors.first,
        })).collect::<Vec<_>>(),
    });
    merged(s.flowing_closes.json(), rounds)
}

fn memory_json(runs: &[MemoryRun], s: &Summary) -> Value {
    let rest = json!({
        "kib_per_stream_median": s.kib_per_stream,
        "last_close_after_first_leave_ms": s.last_close.map(|v| v as f64 / 1e6),
        "rounds": runs.iter().map(|r| json!({
            "asked": r.asked,
            "opened": r.opened,
            "open_s": r.open_s,
            "rss_before_kib": r.rss_before_kib,
            "rss_after_kib": r.rss_after_kib,
            "kib_per_stream": r.kib_per_stream(),
            "closed_within_100ms": r.closes.within_100ms,
            "closed_within_1s": r.closes.within_1s,
            "last_close_after_first_leave_ms": r.last_close_ns.map(|v| v as f64 / 1e6),
            "proxy_cpu_s_opening": r.open_cpu_s,
            "proxy_cpu_s_leaving": r.leave_cpu_s,
            "upstream_open_before_during_after": r.upstream_open,
            "upstream_accepted": r.upstream_accepted,
            "errors": r.errors.count,
            "first_error": r.errors.first,
        })).collect::<Vec<_>>(),
    });
    merged(s.idle_closes.json(), rest)
}

pub fn targets_json(results: &[TargetResults]) -> Value {
    let direct = results
        .iter()
        .find(|t| t.name == "direct")
        .map(summarize)
        .unwrap_or_default();
    let mut map = serde_json::Map::new();
    for t in results {
        let s = summarize(t);
        map.insert(
            t.name.clone(),
            json!({
                "version": t.version,
                "latency": latency_json(&t.latency, &s, &direct),
                "throughput": throughput_json(&t.throughput, &s),
                "first_byte": first_byte_json(&t.first_byte, &s, &direct),
                "leave": leave_json(&t.leave, &s),
                "memory": memory_json(&t.memory, &s),
                "errors": s.errors,
                "first_error": s.first_error,
                "lost_events": s.lost_events,
                "process_diagnostics": t.diagnostics,
            }),
        );
    }
    Value::Object(map)
}
