//! What the harness reads from `/proc`: CPU time and RSS of a proxy's whole process group (nginx
//! is a master and its workers; Sluice and HAProxy are one process), descriptor limits, and a few
//! facts about the machine for the results.

use std::sync::OnceLock;

/// Fields of `/proc/PID/stat` after the `(comm)`: index 0 is field 3 (`state`).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Every live process whose process group is `pgid` (the harness starts each proxy as the
/// leader of its own group, so this is the proxy and any workers it forked).
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![pgid];
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid)
                .and_then(|f| f.get(2)?.parse::<u32>().ok())
                .is_some_and(|pgrp| pgrp == pgid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Clock ticks per second for `/proc` CPU times.
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// User + system CPU seconds of the processes (all their threads).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|&pid| {
            let fields = stat_fields(pid)?;
            // utime and stime are fields 14 and 15.
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum();
    ticks as f64 / clk_tck() as f64
}

/// Nanoseconds the processes' threads have been on a CPU (`/proc/PID/task/*/schedstat`, first
/// field): unlike the tick counts of `stat`, fine enough to divide by a few thousand requests.
/// Counts only threads alive now; the proxies measured keep theirs for the whole run.
pub fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .flatten()
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Resident set size in KiB, summed over the processes.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Descriptors this process has open.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Soft and hard `RLIMIT_NOFILE` of this process.
pub fn nofile_limits() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let parse = |v: &str| {
        if v == "unlimited" {
            u64::MAX
        } else {
            v.parse().unwrap_or(1024)
        }
    };
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("Max open files")?;
            let mut values = rest.split_whitespace();
            Some((parse(values.next()?), parse(values.next()?)))
        })
        .unwrap_or((1024, 1024))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn kernel() -> String {
    read_trimmed("/proc/sys/kernel/osrelease")
}

/// The CPU idle driver, and for a KVM guest's `haltpoll` how long an idle CPU polls before it
/// halts (`guest_halt_poll_ns`): with 0 every idle is a halt that exits to the hypervisor, and
/// each wake-up costs tens of microseconds, which moves every first-byte figure (direct's too).
pub fn cpu_idle() -> String {
    let driver = read_trimmed("/sys/devices/system/cpu/cpuidle/current_driver");
    let poll = read_trimmed("/sys/module/haltpoll/parameters/guest_halt_poll_ns");
    match (driver.as_str(), poll.as_str()) {
        ("", _) => "unknown".into(),
        ("haltpoll", poll) if !poll.is_empty() => format!("haltpoll, guest_halt_poll_ns {poll}"),
        (driver, _) => driver.into(),
    }
}

pub fn loadavg() -> String {
    read_trimmed("/proc/loadavg")
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split_once(':')?
                    .1
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_default()
}

pub fn mem_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
