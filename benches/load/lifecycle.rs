//! What keeps a run safe to start and to stop: enough file descriptors for 9,000 streams, a
//! time limit on the whole run, and the proxies stopped on Ctrl-C.

use crate::options::Options;
use crate::{process, procfs};
use std::time::Duration;

/// Raises the soft descriptor limit to the hard one (capped by the kernel's `nr_open`).
pub fn raise_nofile() {
    let (soft, hard) = procfs::nofile_limits();
    if soft >= hard {
        return;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let limit = libc::rlimit {
        rlim_cur: hard.min(nr_open) as libc::rlim_t,
        rlim_max: if hard == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            hard as libc::rlim_t
        },
    };
    // SAFETY: a plain setrlimit with a valid rlimit value.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        eprintln!(
            "load: could not raise the descriptor limit above {soft} ({}); the memory scenario will be smaller",
            std::io::Error::last_os_error()
        );
    }
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
