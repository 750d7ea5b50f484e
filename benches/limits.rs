//! Admission cost: the local backend (uncontended, and 4 threads contending for one user), and
//! the Redis backend on loopback against a throwaway `redis-server` (skipped when it is not
//! installed). `cargo bench --bench limits`
//!
//! The Redis figure is one EVALSHA round trip plus the hop to the limiter's own thread, which
//! drives the connection; compare it with the plain PING round trip measured next to it.

#[path = "../tests/support/redis.rs"]
mod redis_server;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::limits::{
    Admission, Backend, Claim, Limiter, NoObserver, RedisSettings, Rejection, StreamLimits,
};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

const LIMITS: StreamLimits = StreamLimits {
    per_user_streams: Some(1_000),
    per_key_streams: Some(1_000),
    per_user_rpm: Some(u32::MAX),
};

fn stream<'a>(user: &'a str, key: &'a str) -> Claim<'a> {
    Claim {
        user: Some(user),
        key_id: Some(key),
        limits: &LIMITS,
        wants_stream: true,
    }
}

/// The local backend never waits: one poll decides (no runtime in the measurement).
fn admit_now(limiter: &Limiter, claim: &Claim<'_>) -> Result<Admission, Rejection> {
    let mut admit = pin!(limiter.admit(claim));
    match admit.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => unreachable!("the local backend does not wait"),
    }
}

fn local(c: &mut Criterion) {
    let limiter = Limiter::new(Backend::Local, Some(1_000_000), Arc::new(NoObserver)).unwrap();
    let mut group = c.benchmark_group("limits_local");
    group.throughput(Throughput::Elements(1));
    group.bench_function("admit_and_drop_stream", |b| {
        b.iter(|| drop(admit_now(&limiter, &stream("alice", "k1")).unwrap()))
    });
    let plain = Claim {
        wants_stream: false,
        ..stream("alice", "k1")
    };
    group.bench_function("admit_plain_rate_only", |b| {
        b.iter(|| admit_now(&limiter, &plain).unwrap())
    });
    // Four threads on one user and key: the same shards, the same global counter.
    group.bench_function("admit_and_drop_stream_4_threads_one_user", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            drop(admit_now(&limiter, &stream("alice", "k1")).unwrap());
                        }
                    });
                }
            });
            start.elapsed() / 4
        })
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("redis-server is not installed: skipping the Redis benchmarks");
        return;
    }
    let server = redis_server::RedisServer::start();
    let limiter = Limiter::new(
        Backend::Redis(RedisSettings::new(server.url())),
        None,
        Arc::new(NoObserver),
    )
    .unwrap();
    assert_eq!(limiter.snapshot().backend, "redis");
    let rt = Runtime::new().unwrap();
    let mut conn = rt.block_on(async {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });

    let mut group = c.benchmark_group("limits_redis");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("ping_round_trip", |b| {
        b.iter(|| {
            rt.block_on(async {
                let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            })
        })
    });
    group.bench_function("admit_and_drop_stream", |b| {
        b.iter(|| drop(rt.block_on(limiter.admit(&stream("alice", "k1"))).unwrap()))
    });
    let plain = Claim {
        wants_stream: false,
        ..stream("alice", "k1")
    };
    group.bench_function("admit_plain_rate_only", |b| {
        b.iter(|| rt.block_on(limiter.admit(&plain)).unwrap())
    });
    group.finish();
    limiter.shutdown();
}

criterion_group!(benches, local, redis);
criterion_main!(benches);
