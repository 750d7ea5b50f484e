use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::file::numbered;
use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = format!(
            "sluice-ledger-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn record(n: u64) -> Vec<u8> {
    format!(r#"{{"seq":{n},"user":"alice","tokens":{}}}"#, n * 7).into_bytes()
}

/// The `seq` of every line; panics on a line that is not a whole record.
fn seqs(path: &Path) -> Vec<u64> {
    let text = fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{path:?} ends mid-line"
    );
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("{path:?}: bad line {line:?}: {err}"));
            value["seq"].as_u64().unwrap()
        })
        .collect()
}

fn open(path: &Path) -> Ledger {
    Ledger::open(LedgerConfig::new(path)).unwrap()
}

#[tokio::test]
async fn appends_read_back_in_order() {
    let dir = TestDir::new("readback");
    let path = dir.file("usage.jsonl");
    let ledger = open(&path);
    for n in 0..3 {
        ledger.append_durable(record(n)).await.unwrap();
    }
    ledger.append(Bytes::from(record(3))).await.unwrap();
    ledger.shutdown().unwrap();
    assert_eq!(seqs(&path), [0, 1, 2, 3]);
    assert_eq!(ledger.stats().records_written, 4);
    assert_eq!(ledger.stats().queue_len, 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o} grants more than 0o640");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_appends_are_whole_unique_and_batched() {
    let dir = TestDir::new("concurrent");
    let path = dir.file("usage.jsonl");
    let ledger = Arc::new(open(&path));
    let (tasks, each) = (64u64, 50u64);
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move {
                for i in 0..each {
                    ledger
                        .append_durable(record(task * 1000 + i))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let stats = ledger.stats();
    let lines = seqs(&path);
    let unique: HashSet<_> = lines.iter().copied().collect();
    assert_eq!(lines.len() as u64, tasks * each);
    assert_eq!(unique.len(), lines.len(), "duplicated records");
    assert_eq!(stats.records_written, tasks * each);
    assert_eq!(stats.queue_len, 0);
    // With 64 appenders waiting, each fsync must serve many of them.
    assert!(stats.fsyncs * 2 <= stats.records_written, "{stats:?}");
    assert_eq!(stats.batches, stats.fsyncs);
}

/// A ledger at `path` gathering records for `max_delay`, with a queue of `max_batch_bytes`.
fn open_gathering(path: &Path, max_batch_bytes: usize, max_delay: Duration) -> Ledger {
    Ledger::open(LedgerConfig {
        max_batch_bytes,
        max_delay,
        ..LedgerConfig::new(path)
    })
    .unwrap()
}

/// Polls the ledger's counters until `done` holds; fails after 10 s with `what`.
async fn wait_for_stats(ledger: &Ledger, what: &str, done: impl Fn(LedgerStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(ledger.stats()) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn records_nobody_waits_for_are_gathered_for_max_delay() {
    let dir = TestDir::new("gathered");
    let path = dir.file("usage.jsonl");
    let default_batch = LedgerConfig::default().max_batch_bytes;
    let ledger = open_gathering(&path, default_batch, Duration::from_secs(2));
    for n in 0..3 {
        ledger.append(record(n)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ledger.stats().batches, 0, "written before max_delay");
    wait_for_stats(&ledger, "never written", |s| s.records_written >= 3).await;
    assert_eq!(ledger.stats().batches, 1, "three records, one fsync");
    assert_eq!(seqs(&path), [0, 1, 2]);
}

#[tokio::test]
async fn a_durable_record_takes_the_gathered_ones_along_at_once() {
    let dir = TestDir::new("urgent");
    let path = dir.file("usage.jsonl");
    // Long enough that waiting it out fails the test below, short enough not to hang CI.
    let default_batch = LedgerConfig::default().max_batch_bytes;
    let ledger = open_gathering(&path, default_batch, Duration::from_secs(30));
    ledger.append(record(0)).await.unwrap();
    ledger.append(record(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ledger.stats().records_written, 0);
    ledger.append_durable(record(2)).await.unwrap();
    let stats = ledger.stats();
    assert_eq!((stats.records_written, stats.batches), (3, 1));
    assert_eq!(seqs(&path), [0, 1, 2]);
    // Shutdown does not wait out the delay either.
    ledger.append(record(3)).await.unwrap();
    let started = Instant::now();
    ledger.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(seqs(&path), [0, 1, 2, 3]);
}

#[tokio::test]
async fn a_half_full_queue_is_written_without_waiting() {
    let dir = TestDir::new("half-full");
    let path = dir.file("usage.jsonl");
    // No deadline at all (and no overflow computing one): only the half-full queue writes.
    let ledger = open_gathering(&path, 4096, Duration::MAX);
    // 80 records of ~40 bytes pass half of the 4 KiB queue.
    for n in 0..80 {
        ledger.append(record(n)).await.unwrap();
    }
    wait_for_stats(&ledger, "a half-full queue waited", |s| s.batches > 0).await;
}

#[tokio::test]
async fn a_queue_of_one_byte_still_flows() {
    let dir = TestDir::new("one-byte");
    let path = dir.file("usage.jsonl");
    let ledger = open_gathering(&path, 1, Duration::from_secs(30));
    // Each record fills the queue alone: the next append waits for room, which only a write
    // makes, so a writer waiting out `max_delay` would take 30 s a record.
    let started = Instant::now();
    for n in 0..5 {
        ledger.append(record(n)).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    ledger.shutdown().unwrap();
    assert_eq!(seqs(&path), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn drop_drains_the_queue() {
    let dir = TestDir::new("drain");
    let path = dir.file("usage.jsonl");
    let config = LedgerConfig {
        max_batch_bytes: 4096,
        ..LedgerConfig::new(&path)
    };
    let ledger = Ledger::open(config).unwrap();
    for n in 0..2000 {
        ledger.append(record(n)).await.unwrap();
    }
    let pending = ledger.stats().queue_len;
    drop(ledger);
    assert_eq!(
        seqs(&path),
        (0..2000).collect::<Vec<_>>(),
        "{pending} were queued at drop"
    );
}

#[tokio::test]
async fn closed_ledger_refuses_records() {
    let dir = TestDir::new("closed");
    let ledger = open(&dir.file("usage.jsonl"));
    ledger.shutdown().unwrap();
    let err = ledger.append_durable(record(1)).await.unwrap_err();
    assert!(matches!(err, LedgerError::Closed { .. }), "{err}");
    assert!(ledger.shutdown().is_ok(), "shutdown is idempotent");
}

#[tokio::test]
async fn invalid_records_are_rejected() {
    let dir = TestDir::new("invalid");
    let ledger = open(&dir.file("usage.jsonl"));
    for bad in [&b""[..], b"{\"a\":\n1}", b"{\"a\":1}\r"] {
        let err = ledger.append_durable(bad).await.unwrap_err();
        assert!(matches!(err, LedgerError::InvalidRecord { .. }), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_external_rename_loses_nothing() {
    let dir = TestDir::new("reopen");
    let (path, old) = (dir.file("usage.jsonl"), dir.file("usage.jsonl.old"));
    let ledger = Arc::new(open(&path));
    for n in 0..100 {
        ledger.append_durable(record(n)).await.unwrap();
    }
    // Fire-and-forget traffic racing the rotation may land on either side.
    let racer = {
        let ledger = Arc::clone(&ledger);
        tokio::spawn(async move {
            for n in 1000..1500 {
                ledger.append(record(n)).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    fs::rename(&path, &old).unwrap();
    ledger.reopen();
    for n in 100..200 {
        ledger.append_durable(record(n)).await.unwrap();
    }
    racer.await.unwrap();
    ledger.shutdown().unwrap();

    let (before, after) = (seqs(&old), seqs(&path));
    let strict = |lines: &[u64]| {
        lines
            .iter()
            .copied()
            .filter(|n| *n < 1000)
            .collect::<Vec<_>>()
    };
    assert_eq!(strict(&before), (0..100).collect::<Vec<_>>());
    assert_eq!(strict(&after), (100..200).collect::<Vec<_>>());
    let mut all: Vec<_> = before.iter().chain(&after).copied().collect();
    all.sort_unstable();
    let expected: Vec<_> = (0..200).chain(1000..1500).collect();
    assert_eq!(all, expected, "lost or duplicated across the reopen");
}

/// A file renamed under the ledger (another process rotating the same path, as both do during an
/// upgrade; logrotate before its SIGHUP) is left behind at the next batch: records go to the path.
#[tokio::test]
async fn a_file_renamed_under_the_ledger_is_followed_without_a_reopen() {
    let dir = TestDir::new("follow");
    let (path, old) = (dir.file("usage.jsonl"), dir.file("usage.jsonl.1"));
    let ledger = open(&path);
    for n in 0..10 {
        ledger.append_durable(record(n)).await.unwrap();
    }
    fs::rename(&path, &old).unwrap();
    for n in 10..20 {
        ledger.append_durable(record(n)).await.unwrap();
    }
    // Removed outright: a new file at the path, not writes into the removed one.
    fs::remove_file(&path).unwrap();
    for n in 20..30 {
        ledger.append_durable(record(n)).await.unwrap();
    }
    ledger.shutdown().unwrap();
    assert_eq!(seqs(&old), (0..10).collect::<Vec<_>>());
    assert_eq!(seqs(&path), (20..30).collect::<Vec<_>>());
}

/// The ledger's directory removed under it: records are not written into the removed file (and
/// reported durable, then lost with it); each waiter is told they are not durable, and they are
/// written once the path opens again.
#[tokio::test]
async fn records_wait_while_the_ledger_directory_is_gone() {
    let dir = TestDir::new("gone");
    let sub = dir.file("sub");
    fs::create_dir(&sub).unwrap();
    let path = sub.join("usage.jsonl");
    let ledger = open(&path);
    ledger.append_durable(record(0)).await.unwrap();
    fs::remove_dir_all(&sub).unwrap();
    for n in 1..4 {
        assert!(ledger.append_durable(record(n)).await.is_err(), "{n}");
    }
    fs::create_dir(&sub).unwrap();
    ledger.shutdown().unwrap();
    assert_eq!(seqs(&path), (1..4).collect::<Vec<_>>());
}

/// 99-byte records: 100 bytes a line, so ten lines fill a 1000-byte file exactly.
fn sized_record(n: u64) -> Vec<u8> {
    let head = format!(r#"{{"seq":{n},"pad":""#);
    let mut line = head.clone().into_bytes();
    line.resize(97, b'x');
    line.extend_from_slice(b"\"}");
    line
}

async fn write_sized(path: &Path, keep: usize, count: u64) -> LedgerStats {
    let config = LedgerConfig {
        rotate_bytes: Some(1000),
        keep,
        ..LedgerConfig::new(path)
    };
    let ledger = Arc::new(Ledger::open(config).unwrap());
    let handles: Vec<_> = (0..count)
        .map(|n| {
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move { ledger.append_durable(sized_record(n)).await })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    ledger.shutdown().unwrap();
    ledger.stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_rotation_splits_whole_records_without_loss() {
    let dir = TestDir::new("rotate-all");
    let path = dir.file("usage.jsonl");
    let stats = write_sized(&path, 10, 95).await;
    let mut all = Vec::new();
    for n in (1..=9).rev() {
        let file = numbered(&path, n);
        assert!(
            fs::metadata(&file).unwrap().len() <= 1000,
            "{file:?} too big"
        );
        all.extend(seqs(&file));
    }
    assert!(!numbered(&path, 10).exists());
    all.extend(seqs(&path));
    all.sort_unstable();
    assert_eq!(all, (0..95).collect::<Vec<_>>());
    assert_eq!(stats.rotations, 9);
    assert_eq!(fs::metadata(&path).unwrap().len(), 500);
}

#[tokio::test]
async fn size_rotation_keeps_only_keep_files() {
    let dir = TestDir::new("rotate-keep");
    let path = dir.file("usage.jsonl");
    write_sized(&path, 2, 45).await;
    // Queued in spawn order: the files hold 40..45, 30..40 and 20..30; older ones are retired.
    assert_eq!(seqs(&path), (40..45).collect::<Vec<_>>());
    assert_eq!(seqs(&numbered(&path, 1)), (30..40).collect::<Vec<_>>());
    assert_eq!(seqs(&numbered(&path, 2)), (20..30).collect::<Vec<_>>());
    assert!(!numbered(&path, 3).exists());
}

#[tokio::test]
async fn torn_last_line_is_ended_before_new_records() {
    let dir = TestDir::new("torn");
    let path = dir.file("usage.jsonl");
    fs::write(&path, "{\"seq\":1}\n{\"seq\":2,\"tok").unwrap();
    let ledger = open(&path);
    ledger.append_durable(&b"{\"seq\":3}"[..]).await.unwrap();
    ledger.shutdown().unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text, "{\"seq\":1}\n{\"seq\":2,\"tok\n{\"seq\":3}\n");
}

#[test]
fn missing_directory_error_names_the_path() {
    let dir = TestDir::new("missing");
    let path = dir.file("no/such/dir/usage.jsonl");
    let err = Ledger::open(LedgerConfig::new(&path)).unwrap_err();
    assert!(matches!(err, LedgerError::MissingDirectory { .. }), "{err}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
}

#[test]
fn unwritable_location_error_names_the_path() {
    let dir = TestDir::new("unwritable");
    // A directory in place of the file fails even for root.
    let path = dir.file("taken");
    fs::create_dir(&path).unwrap();
    let err = Ledger::open(LedgerConfig::new(&path)).unwrap_err();
    assert!(matches!(err, LedgerError::Io { op: "open", .. }), "{err}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
}

#[cfg(unix)]
#[test]
fn read_only_directory_error_names_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("readonly");
    let sub = dir.file("ro");
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o500)).unwrap();
    let probe = fs::write(sub.join("probe"), "x");
    let path = sub.join("usage.jsonl");
    let result = Ledger::open(LedgerConfig::new(&path));
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
    if probe.is_ok() {
        // Running as root: permissions are not enforced, the open must simply work.
        assert!(result.is_ok());
        return;
    }
    let err = result.unwrap_err();
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
}

#[test]
fn invalid_config_is_refused() {
    let config = LedgerConfig {
        rotate_bytes: Some(1000),
        keep: 0,
        ..LedgerConfig::new("x.jsonl")
    };
    assert!(matches!(
        Ledger::open(config),
        Err(LedgerError::Config { .. })
    ));
}

/// `/dev/full` fails every write with ENOSPC: a disk that is full until the link is fixed.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn write_errors_are_reported_and_records_retried() {
    let dir = TestDir::new("enospc");
    let path = dir.file("usage.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let ledger = open(&path);
    let err = ledger.append_durable(record(1)).await.unwrap_err();
    assert!(matches!(err, LedgerError::Io { op: "write", .. }), "{err}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    let stats = ledger.stats();
    assert!(stats.write_errors >= 1 && stats.queue_len == 1, "{stats:?}");

    fs::remove_file(&path).unwrap();
    ledger.reopen();
    ledger.append_durable(record(2)).await.unwrap();
    ledger.shutdown().unwrap();
    assert_eq!(
        seqs(&path),
        [1, 2],
        "the failed record is retried once, in order"
    );
    assert_eq!(ledger.stats().queue_len, 0);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn shutdown_on_a_dead_disk_reports_unwritten_records() {
    let dir = TestDir::new("dead");
    let path = dir.file("usage.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let ledger = open(&path);
    ledger.append(record(1)).await.unwrap();
    ledger.append(record(2)).await.unwrap();
    let err = ledger.shutdown().unwrap_err();
    assert!(
        matches!(err, LedgerError::Unwritten { records: 2, .. }),
        "{err}"
    );
}
