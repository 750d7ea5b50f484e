//! Group commit of the usage ledger: durable records/s and fsyncs/s with 1, 16 and 256
//! concurrent appenders, each awaiting `append_durable` before its next record.
//! `cargo bench --bench ledger`
//!
//! The figures are the disk's more than the code's: one appender measures fsync latency, many
//! appenders measure how well batches amortize it. The file lives in the system temp dir and is
//! rotated at 64 MiB (keeping one old file) so long runs stay bounded on disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::usage::ledger::{Ledger, LedgerConfig};
use tokio::runtime::Runtime;

/// About the size of a real usage record.
fn record() -> Bytes {
    Bytes::from_static(
        br#"{"ts":"2025-01-01T00:00:00.000Z","route":"/v1/","upstream":"openai","provider":"openai","user":"alice","key_id":"k1","model":"gpt-4o-mini","input_tokens":1200,"output_tokens":345,"cached_tokens":0,"status":200,"end":"done","duration_ms":5321}"#,
    )
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-ledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `appenders` tasks each append `rounds` records durably, one after another.
async fn append_rounds(ledger: &Arc<Ledger>, appenders: usize, rounds: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let ledger = Arc::clone(ledger);
            tokio::spawn(async move {
                for _ in 0..rounds {
                    ledger.append_durable(record()).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = temp_dir();
    let mut group = c.benchmark_group("ledger_durable");
    for appenders in [1usize, 16, 256] {
        let config = LedgerConfig {
            rotate_bytes: Some(64 << 20),
            keep: 1,
            ..LedgerConfig::new(dir.join(format!("usage-{appenders}.jsonl")))
        };
        let ledger = Arc::new(Ledger::open(config).unwrap());
        let mut measured = Duration::ZERO;
        let start = ledger.stats();
        // One element per record: criterion's throughput is records/s.
        group.throughput(Throughput::Elements(appenders as u64));
        group.bench_function(BenchmarkId::new("appenders", appenders), |b| {
            b.iter_custom(|rounds| {
                let elapsed = runtime.block_on(append_rounds(&ledger, appenders, rounds));
                measured += elapsed;
                elapsed
            })
        });
        let end = ledger.stats();
        let (records, fsyncs) = (
            end.records_written - start.records_written,
            end.fsyncs - start.fsyncs,
        );
        let secs = measured.as_secs_f64();
        eprintln!(
            "ledger_durable/{appenders} appenders: {:.0} records/s, {:.0} fsyncs/s, {:.1} records per fsync (over all runs)",
            records as f64 / secs,
            fsyncs as f64 / secs,
            records as f64 / fsyncs.max(1) as f64,
        );
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
