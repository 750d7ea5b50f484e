//! What keeps a run safe to start and to stop: enough file descriptors for 9,000 streams, a
//! time limit on the whole run, and the proxies stopped on Ctrl-C.

use crate::options::Options;
use crate::{process, procfs};
use std::process::ExitCode;
use std::time::Duration;

/// Raises the soft descriptor limit to the hard one: with `prlimit` on this process, or else
/// by running this binary again once under `sh -c 'ulimit -n …'` (no libc for setrlimit here).
/// Returns the exit code when it re-ran itself.
pub fn raise_nofile(args: &[String]) -> Option<ExitCode> {
    let (soft, hard) = procfs::nofile_limits();
    if soft >= hard {
        return None;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = hard.min(nr_open);
    let pid = std::process::id().to_string();
    let hard_text = if hard == u64::MAX {
        "unlimited".to_string()
    } else {
        hard.to_string()
    };
    let nofile = format!("--nofile={want}:{hard_text}");
    let _ = process::output("prlimit", &["--pid", &pid, &nofile]);
    if procfs::nofile_limits().0 >= want {
        return None;
    }
    if std::env::var_os("SLUICE_LOAD_REEXEC").is_some() {
        eprintln!("load: could not raise the descriptor limit above {soft}; the memory scenario will be smaller");
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 1048576 2>/dev/null; exec "$0" "$@""#)
        .arg(exe)
        .args(args)
        .env("SLUICE_LOAD_REEXEC", "1")
        .status()
        .ok()?;
    Some(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

/// The whole run has a time limit: stop every proxy and exit if it is exceeded.
pub fn start_watchdog(options: &Options) {
    let default = if options.smoke { 300 } else { 3600 };
    let limit = std::env::var("SLUICE_LOAD_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(limit));
        eprintln!("load: the run took over {limit} s (SLUICE_LOAD_TIMEOUT_S); stopping");
        process::kill_all();
        std::process::exit(2);
    });
}

/// Ctrl-C or SIGTERM: the proxies run in their own process groups (so a terminal's Ctrl-C does
/// not reach them), so stop them here before leaving.
pub async fn stop_on_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    eprintln!("load: interrupted; stopping the proxies");
    process::kill_all();
    std::process::exit(130);
}
