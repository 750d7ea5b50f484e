//! Crash durability of the usage ledger: a writer process killed with SIGKILL must leave every
//! record it acknowledged as durable in the file, as a whole line.
//!
//! The test re-runs its own binary as the child (`child_writer`, active only when
//! `SLUICE_LEDGER_CHILD` names the ledger path); the child prints `durable N` once the
//! append of record N has resolved.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use sluice::usage::ledger::{Ledger, LedgerConfig};

const CHILD_ENV: &str = "SLUICE_LEDGER_CHILD";
const WRITERS: u64 = 8;
const KILL_AFTER_ACKS: usize = 400;

fn record(seq: u64) -> String {
    format!(
        r#"{{"seq":{seq},"user":"u{}","input_tokens":1200,"output_tokens":345}}"#,
        seq % 97
    )
}

/// The child: concurrent appenders, so batches are in flight when the kill lands.
#[test]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let ledger = Arc::new(Ledger::open(LedgerConfig::new(PathBuf::from(path))).unwrap());
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let ledger = Arc::clone(&ledger);
                tokio::spawn(async move {
                    for seq in (writer..).step_by(WRITERS as usize) {
                        ledger.append_durable(record(seq)).await.unwrap();
                        println!("durable {seq}");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-ledger-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every whole line of the file; a torn last line (killed mid-write) is allowed and skipped.
fn whole_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let whole = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    whole.lines().map(str::to_owned).collect()
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = temp_dir();
    let path = dir.join("usage.jsonl");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Lines come through a thread so that a stuck child cannot hang the test.
    let (lines, received) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                return;
            }
        }
    });

    let mut acked = HashSet::new();
    let mut killed = false;
    loop {
        let line = match received.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("child stopped acknowledging; {} acks so far", acked.len());
            }
        };
        if let Some(seq) = line.strip_prefix("durable ") {
            acked.insert(seq.parse::<u64>().unwrap());
        }
        if !killed && acked.len() >= KILL_AFTER_ACKS {
            // SIGKILL on unix: no destructor, no drain, no flush of anything in flight.
            child.kill().unwrap();
            killed = true;
        }
    }
    // Acks already in the pipe when the kill landed were read above: they count too.
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(
        killed,
        "child exited by itself ({status}) after {} acks",
        acked.len()
    );

    let lines = whole_lines(&path);
    let present: HashSet<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(present.len(), lines.len(), "a record was written twice");
    eprintln!(
        "killed after {} acks; {} whole lines in the file",
        acked.len(),
        lines.len()
    );
    let missing: Vec<_> = acked
        .iter()
        .filter(|seq| !present.contains(record(**seq).as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );

    // Reopening after the crash repairs any torn tail, and the file stays line-aligned.
    let ledger = Ledger::open(LedgerConfig::new(&path)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(ledger.append_durable(record(u64::MAX)))
        .unwrap();
    ledger.shutdown().unwrap();
    let after = whole_lines(&path);
    assert_eq!(
        after.last().map(String::as_str),
        Some(record(u64::MAX).as_str())
    );
    assert!(std::fs::read_to_string(&path).unwrap().ends_with('\n'));

    let _ = std::fs::remove_dir_all(&dir);
}
