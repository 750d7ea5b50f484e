//! The JSON results file: the machine, the options, the binary measured, every target's
//! figures and which targets were skipped and why.

use crate::options::Options;
use crate::report::{self, TargetResults};
use crate::{nproc, process, procfs, sluice_bin, upstream};
use serde_json::json;

#[allow(clippy::too_many_arguments)]
pub fn write_json(
    options: &Options,
    binary: &sluice_bin::SluiceBinary,
    results: &[TargetResults],
    skipped: &[(String, String)],
    elapsed: f64,
    loadavg_start: &str,
    loadavg_end: &str,
    memory_streams: usize,
) -> Result<(std::path::PathBuf, serde_json::Value), String> {
    let stamp = process::output("date", &["+%Y%m%d-%H%M%S"]).unwrap_or_else(|| "unknown".into());
    let date = process::output("date", &["-Iseconds"]).unwrap_or_default();
    let root = sluice_bin::manifest_dir();
    let root = root.to_string_lossy();
    let commit = process::output("git", &["-C", &root, "rev-parse", "HEAD"]).unwrap_or_default();
    // Read-only: no index refresh, so no lock is taken in someone else's working tree.
    let dirty = process::output(
        "git",
        &["--no-optional-locks", "-C", &root, "status", "--porcelain"],
    )
    .map(|s| !s.is_empty());
    let (soft, hard) = procfs::nofile_limits();
    let value = json!({
        "harness": "sluice whole-proxy load (benches/load)",
        "date": date,
        "smoke": options.smoke,
        "elapsed_s": elapsed,
        "machine": {
            "nproc": nproc(),
            "kernel": procfs::kernel(),
            "cpu": procfs::cpu_model(),
            "cpu_idle": procfs::cpu_idle(),
            "mem_total_mib": procfs::mem_total_kib() / 1024,
            "loadavg_start": loadavg_start,
            "loadavg_end": loadavg_end,
            "nofile_soft": soft,
            "nofile_hard": hard,
        },
        "options": {
            "rounds": options.rounds,
            "seconds": options.seconds,
            "ramp_seconds": options.ramp_seconds,
            "latency_streams": options.latency_streams,
            "rate_events_per_s": options.rate,
            "throughput_streams": options.throughput_streams,
            "memory_streams": memory_streams,
            "first_byte_streams": options.first_byte_streams,
            "leave_streams": options.leave_streams,
            "first_byte_idle_ms": options.first_byte_idle_ms,
            "event_bytes": upstream::event_size(),
            "upstream_head": options.head.name(),
            "upstream_head_bytes": options.head.bytes().len(),
            "client_request": options.request.name(),
            "client_tls": options.tls,
            "client_h2": options.h2,
            "scenarios": options.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "pinned": crate::placement::current().map(|p| json!({
                "harness_cpus": crate::placement::describe(&p.harness),
                "proxy_cpus": crate::placement::describe(&p.proxies),
            })),
        },
        "sluice_binary": {
            "path": binary.path,
            "rebuilt": binary.rebuilt,
            "stale": binary.stale,
            "note": binary.note,
            "git_commit": commit,
            "git_dirty": dirty,
        },
        "targets": report::targets_json(results),
        "skipped": skipped.iter().map(|(t, r)| json!({"target": t, "reason": r})).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|e| format!("{}: {e}", options.out_dir.display()))?;
    // A smoke run (CI) overwrites its one file instead of adding one per run.
    let path = if options.smoke {
        options.out_dir.join("load-smoke.json")
    } else {
        options.out_dir.join(format!("load-{stamp}.json"))
    };
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, value))
}
