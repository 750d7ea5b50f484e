//! Scale and selection, from the environment (`SLUICE_LOAD_*`) and the `--smoke` flag.

use crate::client::RequestKind;
use crate::upstream::HeadKind;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Latency,
    Throughput,
    FirstByte,
    Leave,
    Memory,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Latency,
        Scenario::Throughput,
        Scenario::FirstByte,
        Scenario::Leave,
        Scenario::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Throughput => "throughput",
            Scenario::FirstByte => "first_byte",
            Scenario::Leave => "leave",
            Scenario::Memory => "memory",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub smoke: bool,
    pub rounds: u32,
    /// The measured window of the latency and throughput scenarios, per round and target.
    pub seconds: f64,
    /// Latency: streams start spread over this, before the window.
    pub ramp_seconds: f64,
    pub latency_streams: usize,
    /// Latency: content events per second per stream.
    pub rate: f64,
    pub throughput_streams: usize,
    /// Asked for; the harness lowers it to what the descriptor limit allows.
    pub memory_streams: usize,
    pub first_byte_streams: usize,
    /// Leave: streams whose clients leave mid-stream, one by one over the ramp.
    pub leave_streams: usize,
    /// First byte: milliseconds of quiet before each fresh stream (0: back to back). From quiet,
    /// every process on the path has been asleep long enough for this VM's vCPUs to halt, so
    /// what a stream's start costs in wake-ups shows apart from what the previous stream left.
    pub first_byte_idle_ms: u64,
    /// Memory: pause after the last stream opened, before reading RSS.
    pub settle_seconds: f64,
    /// Memory: pause after a proxy was restarted and warmed up, before opening streams.
    pub restart_pause_seconds: f64,
    /// Memory: how long to wait for the upstream to see every stream closed after the clients
    /// left (just over 1 s, to count closes within 1 s; a smoke run counts only what it waits).
    pub close_wait_seconds: f64,
    pub targets: Option<Vec<String>>,
    pub scenarios: Vec<Scenario>,
    pub out_dir: PathBuf,
    /// `SLUICE_LOAD_PIN=1`: the harness on one CPU, the proxies on the others (`placement.rs`).
    pub pin: bool,
    /// `SLUICE_LOAD_TLS=1`: the client talks TLS to every proxy (`tls.rs`).
    pub tls: bool,
    /// `SLUICE_LOAD_H2=1`: the client talks HTTP/2 to every proxy, one stream per connection
    /// (h2c with prior knowledge, or `h2` by ALPN with `SLUICE_LOAD_TLS`).
    pub h2: bool,
    /// `SLUICE_LOAD_HEAD=minimal`: the upstream's three-field head of runs before 2026-12-05
    /// instead of a provider's.
    pub head: HeadKind,
    /// `SLUICE_LOAD_REQUEST=minimal`: the client's three-field request of runs before
    /// 2026-12-05 instead of an SDK's.
    pub request: RequestKind,
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(default)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

fn env_list(name: &str) -> Option<Vec<String>> {
    let value = std::env::var(name).ok()?;
    let list: Vec<String> = value
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!list.is_empty()).then_some(list)
}

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

pub fn smoke_requested(args: &[String]) -> bool {
    args.iter().any(|a| a == "--smoke" || a == "smoke") || env_flag("SLUICE_LOAD_SMOKE")
}

impl Options {
    /// Between two events of a stream at `rate` (latency and leave scenarios).
    pub fn event_interval_us(&self) -> u64 {
        (1e6 / self.rate).max(1.0) as u64
    }

    pub fn from_env(smoke: bool) -> Options {
        // Smoke: every scenario and target once, tiny, in a few seconds (CI runs it).
        let (rounds, seconds, ramp, streams, tp, memory, first, settle) = if smoke {
            (1, 0.1, 0.05, 20, 4, 20, 20, 0.05)
        } else {
            (3, 4.0, 1.0, 1000, 64, 9000, 300, 0.5)
        };
        let (restart_pause, close_wait) = if smoke { (0.02, 0.2) } else { (0.2, 1.2) };
        let scenarios = match env_list("SLUICE_LOAD_SCENARIOS") {
            Some(names) => Scenario::ALL
                .into_iter()
                .filter(|s| names.iter().any(|n| n == s.name()))
                .collect(),
            None => Scenario::ALL.to_vec(),
        };
        let out_dir = std::env::var_os("SLUICE_LOAD_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let root = crate::sluice_bin::manifest_dir();
                // Smoke runs (CI) do not litter the results directory that is committed.
                if smoke {
                    root.join("target").join("load-smoke")
                } else {
                    root.join("benches").join("results")
                }
            });
        Options {
            smoke,
            rounds: env_usize("SLUICE_LOAD_ROUNDS", rounds).min(100) as u32,
            seconds: env_f64("SLUICE_LOAD_SECONDS", seconds).min(600.0),
            ramp_seconds: env_f64("SLUICE_LOAD_RAMP_SECONDS", ramp).min(60.0),
            latency_streams: env_usize("SLUICE_LOAD_STREAMS", streams).min(20_000),
            rate: env_f64("SLUICE_LOAD_RATE", 20.0).min(10_000.0),
            throughput_streams: env_usize("SLUICE_LOAD_THROUGHPUT_STREAMS", tp).min(10_000),
            memory_streams: env_usize("SLUICE_LOAD_MEMORY_STREAMS", memory).min(100_000),
            first_byte_streams: env_usize("SLUICE_LOAD_FIRST_BYTE", first).min(100_000),
            leave_streams: env_usize("SLUICE_LOAD_LEAVE_STREAMS", streams).min(5_000),
            first_byte_idle_ms: env_usize("SLUICE_LOAD_FIRST_BYTE_IDLE_MS", 0).min(1000) as u64,
            settle_seconds: settle,
            restart_pause_seconds: restart_pause,
            close_wait_seconds: close_wait,
            targets: env_list("SLUICE_LOAD_TARGETS"),
            scenarios,
            out_dir,
            pin: env_flag("SLUICE_LOAD_PIN"),
            tls: env_flag("SLUICE_LOAD_TLS"),
            h2: env_flag("SLUICE_LOAD_H2"),
            head: match std::env::var("SLUICE_LOAD_HEAD").as_deref() {
                Ok("minimal") => HeadKind::Minimal,
                _ => HeadKind::Provider,
            },
            request: match std::env::var("SLUICE_LOAD_REQUEST").as_deref() {
                Ok("minimal") => RequestKind::Minimal,
                _ => RequestKind::Sdk,
            },
        }
    }
}
