//! Whole-proxy load harness: Sluice next to a direct connection, nginx and HAProxy, on loopback.
//!
//! ```sh
//! cargo bench --bench load                  # default scale: a few minutes on 2 cores
//! cargo bench --bench load -- --smoke       # every scenario tiny, ~4 s (or SLUICE_LOAD_SMOKE=1)
//! cargo bench --bench load -- --plot F.json # redraw F.png from a results file
//! ```
//!
//! It starts, all on 127.0.0.1: an upstream written for the harness (OpenAI-style SSE, each
//! event its own write, stamped with its send time), Sluice (`target/release/sluice`, built when
//! missing or stale) with usage inspection on and off, with the ledger's `async` durability
//! and with per-user limits counted locally and in Redis (those three first byte only), nginx and HAProxy when installed (skipped,
//! and said so, otherwise), and a client holding many streams. Scenarios, interleaved by round so
//! that machine drift hits every target alike:
//!
//! - latency: 1,000 streams × 20 events/s → delivery delay over direct, p50 / p99 / p99.9
//! - throughput: 64 streams as fast as the upstream writes → events/s, proxy CPU s per M events
//! - first byte: fresh connection per stream → added time to first byte p50 / p99, proxy CPU
//!   per stream
//! - leave: 1,000 flowing streams whose clients leave one by one (one a millisecond), each in
//!   the middle of its stream → upstream streams closed within 100 ms / 1 s of their own client
//! - memory: up to 9,000 idle streams → proxy RSS per stream; then every client leaves at once
//!   → upstream streams closed within 100 ms / 1 s
//!
//! Scale: `SLUICE_LOAD_ROUNDS` (3), `SLUICE_LOAD_SECONDS` (4, the measured window per round),
//! `SLUICE_LOAD_STREAMS` (1000), `SLUICE_LOAD_RATE` (20 events/s), `SLUICE_LOAD_RAMP_SECONDS`
//! (1), `SLUICE_LOAD_THROUGHPUT_STREAMS` (64), `SLUICE_LOAD_MEMORY_STREAMS` (9000, lowered to
//! what the descriptor limit allows), `SLUICE_LOAD_FIRST_BYTE` (300), `SLUICE_LOAD_LEAVE_STREAMS` (1000),
//! `SLUICE_LOAD_FIRST_BYTE_IDLE_MS` (0: fresh streams back to back; N: N ms of quiet before
//! each, a stream's start from an idle machine). Selection:
//! `SLUICE_LOAD_TARGETS=direct,sluice,sluice-baseline,sluice-noinspect,sluice-async,sluice-limits-local,sluice-limits-redis,nginx,haproxy`,
//! `SLUICE_LOAD_SCENARIOS=latency,throughput,first_byte,leave,memory`. `SLUICE_LOAD_OUT` (results
//! directory), `SLUICE_LOAD_KEEP=1` (keep the proxies' temp dirs and logs),
//! `SLUICE_LOAD_TIMEOUT_S` (watchdog for the whole run), `SLUICE_LOAD_PIN=1` (the harness on
//! one CPU, every proxy on the others: no target shares its cores with the load),
//! `SLUICE_LOAD_HEAD=minimal` (the upstream answers with a three-field head, as in runs before
//! 2026-12-05, instead of the 25 fields a provider sends), `SLUICE_LOAD_REQUEST=minimal` (the
//! client sends three header fields, as in runs before then, instead of an SDK's 15),
//! `SLUICE_LOAD_TLS=1` (the client talks TLS 1.3 to every proxy, a full handshake per
//! connection; direct stays plain, so added figures include TLS), `SLUICE_LOAD_H2=1` (the
//! client talks HTTP/2 to every proxy, one stream per connection, as a browser tab's fetch;
//! h2c with prior knowledge, or `h2` by ALPN with TLS; direct stays HTTP/1.1).
//! `SLUICE_LOAD_BASELINE=PATH` adds `sluice-baseline`: another `sluice` binary (say, a build of
//! the main branch) run next to the tree's in the same interleaved rounds, the way to tell a
//! change's effect from machine noise.
//!
//! Results: tables on stdout (the first byte's added p50 and the latency's added p99 also by
//! round, lowest … highest: how far the machine moved them in this run), JSON in
//! `benches/results/load-YYYYMMDD-HHMMSS.json` and next to it the latency scenario's
//! delivery-delay CDF per target as a PNG of the same stem (smoke runs overwrite
//! `target/load-smoke/load-smoke.{json,png}` instead). The run exits non-zero when a scenario
//! errored, an event was lost, or a selected target that is installed did not start (CI runs
//! the smoke: `scripts/test.sh`). Run without `--bench` (as `cargo test --all-targets`
//! does) it only self-checks its parsers, its histogram and its per-round spread.

mod client;
mod clock;
#[path = "../common/heads.rs"]
mod heads;
mod histogram;
mod http1;
mod lifecycle;
mod options;
mod placement;
mod plot;
#[path = "../../tests/support/ports.rs"]
mod ports;
mod process;
mod procfs;
mod report;
mod results_file;
mod scenarios;
mod sluice_bin;
mod targets;
mod tls;
mod upstream;

use options::{Options, Scenario};
use report::TargetResults;
use std::process::ExitCode;
use std::time::Duration;
use targets::{Kind, Launch, Target};
use upstream::Upstream;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = options::smoke_requested(&args);
    if let Some(i) = args.iter().position(|a| a == "--plot") {
        // `cargo bench --bench load -- --plot benches/results/load-….json`: redraw its PNG.
        let Some(json) = args.get(i + 1) else {
            eprintln!("load: --plot needs a results file");
            return ExitCode::FAILURE;
        };
        return match plot::replot(std::path::Path::new(json)) {
            Ok(png) => {
                println!("load: latency CDF in {}", png.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("load: plot: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !args.iter().any(|a| a == "--bench") && !smoke {
        // `cargo test --all-targets` runs benches without `--bench`: check, don't load.
        return match http1::self_check()
            .and_then(|()| histogram::self_check())
            .and_then(|()| report::self_check())
            .and_then(|()| round_order_self_check())
        {
            Ok(()) => {
                println!(
                    "load harness: parser self-check ok (run it with `cargo bench --bench load`)"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("load harness: parser self-check failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `cargo bench NAME` passes NAME on to every bench: run only when it selects this one.
    let filters: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with('-') && a.as_str() != "smoke")
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "load".contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    lifecycle::raise_nofile();
    clock::init();
    let options = Options::from_env(smoke);
    let binary = match sluice_bin::locate_or_build() {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("load: no sluice binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread of the run starts: they all inherit the harness's CPU.
    if options.pin {
        match placement::pin() {
            Ok(p) => println!(
                "load: pinned: harness on CPU {}, proxies on CPU {}",
                placement::describe(&p.harness),
                placement::describe(&p.proxies)
            ),
            Err(e) => {
                eprintln!("load: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if options.h2 {
        println!(
            "load: HTTP/2: the client talks HTTP/2 to every proxy, one stream per connection ({}); direct stays HTTP/1.1",
            if options.tls { "h2 by ALPN" } else { "h2c, prior knowledge" }
        );
    }
    if options.tls {
        println!(
            "load: TLS: the client talks TLS 1.3 to every proxy (full handshake per connection, no resumption); direct stays plain"
        );
    }
    lifecycle::start_watchdog(&options);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::spawn(lifecycle::stop_on_signal());
        run(options, binary).await
    });
    // Connections and upstream tasks go with the runtime; the proxies were stopped by `run`.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options, binary: sluice_bin::SluiceBinary) -> Result<(), String> {
    let loadavg_start = procfs::loadavg();
    let (soft, hard) = procfs::nofile_limits();
    let upstream = Upstream::start(options.head).map_err(|e| format!("upstream: {e}"))?;
    let launch = Launch {
        upstream: upstream.addr,
        sluice: binary.path.clone(),
        baseline: std::env::var_os("SLUICE_LOAD_BASELINE").map(std::path::PathBuf::from),
        nofile: soft,
        tls: options
            .tls
            .then(|| std::sync::Arc::new(tls::Tls::new(options.h2))),
        h2: options.h2,
    };
    println!(
        "load: {} mode, {} rounds; sluice: {} ({}){}",
        if options.smoke { "smoke" } else { "full" },
        options.rounds,
        binary.path.display(),
        binary.note,
        if binary.stale { " — STALE" } else { "" }
    );
    println!(
        "load: {} CPUs, kernel {}, CPU idle {}, load average {loadavg_start}, descriptors {soft}/{hard}",
        nproc(),
        procfs::kernel(),
        procfs::cpu_idle()
    );

    let mut targets: Vec<Target> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for kind in Kind::all() {
        let name = kind.name();
        if let Some(selected) = &options.targets {
            if !selected.iter().any(|s| s == name) {
                skipped.push((name.into(), "not selected (SLUICE_LOAD_TARGETS)".into()));
                continue;
            }
        }
        let mut target = match Target::start(kind, &launch) {
            Ok(target) => target,
            Err(e) => {
                println!("load: {name}: SKIPPED: {e}");
                skipped.push((name.into(), e));
                continue;
            }
        };
        match scenarios::warm_up(&target.dial(), &upstream, 16, options.request).await {
            Ok(()) => {
                // What the client negotiated with it, so that a TLS run is seen to be fair.
                if let Some(tls) = scenarios::tls_parameters(&target.dial()).await {
                    target.version = format!("{}; {tls}", target.version);
                }
                println!("load: {name}: {} on {}", target.version, target.addr);
                targets.push(target);
            }
            Err(e) => {
                println!("load: {name}: SKIPPED: warm-up failed: {e}");
                skipped.push((name.into(), format!("warm-up failed: {e}")));
            }
        }
    }
    if targets.is_empty() {
        return Err("no target could be started".into());
    }

    // Each open stream costs the harness two descriptors (client and upstream side) and the
    // proxy two: the limit of either process caps the memory scenario.
    let fd_budget = usize::try_from(soft.saturating_sub(400) / 2).unwrap_or(usize::MAX);
    let memory_streams = options.memory_streams.min(fd_budget);
    if memory_streams < options.memory_streams {
        println!(
            "load: memory scenario lowered to {memory_streams} streams by the descriptor limit {soft}"
        );
    }

    let mut results: Vec<TargetResults> = targets
        .iter()
        .map(|t| TargetResults {
            name: t.kind.name().into(),
            version: t.version.clone(),
            ..TargetResults::default()
        })
        .collect();
    let started = std::time::Instant::now();
    for round in 0..options.rounds as usize {
        let order = round_order(targets.len(), round);
        for &scenario in &options.scenarios {
            for &i in &order {
                let target = &mut targets[i];
                if !target.kind.runs(scenario) {
                    continue;
                }
                let step = std::time::Instant::now();
                let line = run_one(
                    scenario,
                    target,
                    &launch,
                    &upstream,
                    &options,
                    memory_streams,
                    &mut results[i],
                )
                .await;
                println!(
                    "round {}/{} {:<10} {:<17} {line} [{:.1} s]",
                    round + 1,
                    options.rounds,
                    scenario.name(),
                    target.kind.name(),
                    step.elapsed().as_secs_f64()
                );
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (target, result) in targets.iter_mut().zip(results.iter_mut()) {
        target.stop();
        result.diagnostics = target.diagnostics.clone();
    }
    drop(targets);

    let loadavg_end = procfs::loadavg();
    let text = report::tables(&results, &skipped);
    println!("{text}");
    println!(
        "load: {elapsed:.0} s of scenarios; load average before {loadavg_start}, after {loadavg_end}"
    );
    let (file, json) = results_file::write_json(
        &options,
        &binary,
        &results,
        &skipped,
        elapsed,
        &loadavg_start,
        &loadavg_end,
        memory_streams,
    )?;
    println!("load: results in {}", file.display());
    let png = file.with_extension("png");
    match plot::write_png(&png, &json) {
        Ok(true) => println!("load: latency CDF in {}", png.display()),
        Ok(false) => println!("load: no latency samples, no plot"),
        // The figures are in the JSON already: a plot that fails is said, not fatal.
        Err(e) => eprintln!("load: plot: {e}"),
    }
    failures(&results, &skipped)
}

/// A run fails when a scenario errored, an event was lost, or a target that was asked for
/// could not be started (one that is not installed or not selected is fine).
fn failures(results: &[TargetResults], skipped: &[(String, String)]) -> Result<(), String> {
    let mut problems = Vec::new();
    for t in results {
        let s = report::summarize(t);
        if s.errors > 0 {
            problems.push(format!("{}: {} errors", t.name, s.errors));
        }
        if s.lost_events != 0 {
            problems.push(format!("{}: {} events lost", t.name, s.lost_events));
        }
    }
    for (name, reason) in skipped {
        if !reason.contains("not installed") && !reason.contains("not selected") {
            problems.push(format!("{name}: not measured: {reason}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Runs one scenario against one target and returns a one-line progress note.
async fn run_one(
    scenario: Scenario,
    target: &mut Target,
    launch: &Launch,
    upstream: &Upstream,
    options: &Options,
    memory_streams: usize,
    results: &mut TargetResults,
) -> String {
    let errors = |count: u64, first: &Option<String>| match first {
        Some(e) if count > 0 => format!(", {count} errors (first: {e})"),
        _ => String::new(),
    };
    match scenario {
        Scenario::Latency => {
            let r = scenarios::latency(target, upstream, options).await;
            let p = |q: f64| {
                r.delays
                    .percentile(q)
                    .map(|v| format!("{:.0} µs", v as f64 / 1e3))
                    .unwrap_or_else(|| "—".into())
            };
            let line = format!(
                "p50 {} p99 {} ({} events){}",
                p(0.5),
                p(0.99),
                r.delays.len(),
                errors(r.errors.count, &r.errors.first)
            );
            results.latency.push(r);
            line
        }
        Scenario::Throughput => {
            let r = scenarios::throughput(target, upstream, options).await;
            let rate = r.events.received as f64 / r.elapsed_s.max(1e-9);
            let cpu = r
                .cpu_s
                .map(|c| {
                    let by_process = if r.cpu_s_by_process.len() > 1 {
                        let each: Vec<String> = r
                            .cpu_s_by_process
                            .iter()
                            .map(|c| format!("{c:.2}"))
                            .collect();
                        format!(" ({})", each.join(" + "))
                    } else {
                        String::new()
                    };
                    format!(
                        ", proxy CPU {c:.2} s{by_process} = {:.2} s/M events",
                        c / r.events.received.max(1) as f64 * 1e6
                    )
                })
                .unwrap_or_default();
            let line = format!(
                "{rate:.0} events/s{cpu}{}",
                errors(r.errors.count, &r.errors.first)
            );
            results.throughput.push(r);
            line
        }
        Scenario::FirstByte => {
            let r = scenarios::first_byte(target, upstream, options).await;
            let mut d = r.ttfb_ns.clone();
            d.sort_unstable();
            let p50 = d
                .get(d.len() / 2)
                .map(|v| format!("{:.0} µs", *v as f64 / 1e3));
            let line = format!(
                "TTFB p50 {} ({} streams){}",
                p50.unwrap_or_else(|| "—".into()),
                d.len(),
                errors(r.errors.count, &r.errors.first)
            );
            results.first_byte.push(r);
            line
        }
        Scenario::Leave => {
            let r = scenarios::leave(target, upstream, options).await;
            let line = format!(
                "{} of {} clients left mid-stream, upstream closed ≤100 ms {} ≤1 s {}{}",
                r.left,
                r.streams,
                r.closes.within_100ms,
                r.closes.within_1s,
                errors(r.errors.count, &r.errors.first)
            );
            results.leave.push(r);
            line
        }
        Scenario::Memory => {
            // Every proxy's pooled upstream connections hold descriptors of this process:
            // closed, so that the streams get them (the proxies open fresh ones as needed).
            upstream.close_idle();
            // The descriptors this process has left, in case something else holds some. The
            // closes take a moment to come through (the upstream's tasks, a proxy closing its
            // side): wait up to a second for room, so that a round is not run with fewer streams.
            let room = || {
                procfs::open_fds()
                    .map(|open| (launch.nofile.saturating_sub(open as u64 + 300) / 2) as usize)
                    .unwrap_or(usize::MAX)
            };
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if room() >= memory_streams {
                    break;
                }
            }
            let memory_streams = memory_streams.min(room());
            // A fresh process: RSS grown and kept by earlier scenarios would hide the cost.
            if target.is_proxy() {
                if let Err(e) = target.restart(launch) {
                    let mut r = scenarios::MemoryRun {
                        asked: memory_streams,
                        ..Default::default()
                    };
                    r.errors.count = 1;
                    r.errors.first = Some(format!("restart: {e}"));
                    results.memory.push(r);
                    return format!("restart failed: {e}");
                }
                if let Err(e) =
                    scenarios::warm_up(&target.dial(), upstream, 4, options.request).await
                {
                    eprintln!("load: {} warm-up after restart: {e}", target.kind.name());
                }
                tokio::time::sleep(Duration::from_secs_f64(options.restart_pause_seconds)).await;
            }
            let r = scenarios::memory(target, upstream, options, memory_streams).await;
            let line = format!(
                "{}/{} streams open in {:.1} s, {} KiB/stream, upstream closed ≤100 ms {} ≤1 s {}{}",
                r.opened,
                r.asked,
                r.open_s,
                r.kib_per_stream().map(|k| format!("{k:.1}")).unwrap_or_else(|| "—".into()),
                r.closes.within_100ms,
                r.closes.within_1s,
                errors(r.errors.count, &r.errors.first)
            );
            results.memory.push(r);
            line
        }
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The order `n` targets run in, round `round`: rows of a Williams design (row `q`:
/// 0, 1, n−1, 2, n−2, … shifted by `q`), so that both a target's place and the target run just
/// before it change from round to round. For even `n` the `n` rows alone are balanced (each
/// target runs right after each other once in `n` rounds); for odd `n` the rows alternate with
/// reversed rows (balanced over `2n` rounds), the reversed ones `k` rows on, with `k` chosen so
/// that no round starts with the target that started or ended the round before (for n ≥ 5; a
/// skipped target breaks the balance a little). Until 2026-12-07 21:45 even `n` took the
/// reversed rows too, and a reversed row `n/2` on is the same order as the row before it: every
/// pair of rounds ran in one order (4-target first-byte runs went A A B B A).
///
/// A run leaves the machine busy for a while after it (a proxy's deferred work, the kernel's), and
/// the target run right after it pays for that. Rotating one order, as the harness did before,
/// keeps every target's predecessor the same in every round: in first-byte runs of 5 targets the
/// Sluice build run right after `sluice` came out 15–35 µs slower whichever build it was (two
/// builds swapped between the `sluice` and `sluice-baseline` slots, 2026-12-07).
fn round_order(n: usize, round: usize) -> Vec<usize> {
    let (row, reversed) = if n.is_multiple_of(2) {
        (round % n.max(1), false)
    } else if round.is_multiple_of(2) {
        (round / 2, false)
    } else {
        // A reversed row `k` on starts with (n+1)/2 + round/2 + k and ends with round/2 + k:
        // k = 0 would start with what the round before ended with, (n−1)/2 with what it
        // started with, 1 and (n+1)/2 would end or start with what the next round starts with.
        let k = (2..n)
            .find(|k| ![(n - 1) / 2, n.div_ceil(2)].contains(k))
            .unwrap_or(2);
        (round / 2 + k, true)
    };
    let mut order: Vec<usize> = (0..n)
        .map(|j| {
            // 0, 1, n−1, 2, n−2, …
            let base = if j % 2 == 1 {
                j.div_ceil(2)
            } else {
                (n - j / 2) % n
            };
            (base + row) % n
        })
        .collect();
    if reversed {
        order.reverse();
    }
    debug_assert!({
        let mut seen = order.clone();
        seen.sort_unstable();
        seen == (0..n).collect::<Vec<_>>()
    });
    order
}

/// Every round is an order of all targets; from 4 targets on no round repeats the one before
/// or starts with the target that started or ended it (from 5 when odd), and over a whole
/// design each target runs right after each other equally often.
fn round_order_self_check() -> Result<(), String> {
    for n in 1..=10 {
        let rounds = if n % 2 == 0 { n } else { 2 * n };
        let orders: Vec<Vec<usize>> = (0..rounds + 1).map(|r| round_order(n, r)).collect();
        let mut follows = std::collections::HashMap::new();
        for (r, order) in orders.iter().enumerate() {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            if sorted != (0..n).collect::<Vec<_>>() {
                return Err(format!("round order: {n} targets, round {r}: {order:?}"));
            }
            if r < rounds {
                for pair in order.windows(2) {
                    *follows.entry((pair[0], pair[1])).or_insert(0) += 1;
                }
            }
            let checked = if n % 2 == 0 { n >= 4 } else { n >= 5 };
            if r > 0 && checked {
                let before = &orders[r - 1];
                if order == before || order[0] == before[0] || order[0] == before[n - 1] {
                    return Err(format!(
                        "round order: {n} targets, round {r} {order:?} after {before:?}"
                    ));
                }
            }
        }
        let counts: std::collections::HashSet<i32> = follows.values().copied().collect();
        if n >= 2 && (follows.len() != n * (n - 1) || counts.len() != 1) {
            return Err(format!(
                "round order: {n} targets are not balanced: {follows:?}"
            ));
        }
    }
    Ok(())
}
