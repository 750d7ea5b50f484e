//! The Redis limits backend against a real `redis-server` (one per test, on a free port).

#[path = "support/redis.rs"]
mod redis_server;

use redis_server::RedisServer;
use sluice::limits::{
    Backend, Claim, Limiter, LimitsObserver, RedisSettings, Rejection, StreamLimits,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records what the limiter reports.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(&'static str, bool)>>,
    fallback: Mutex<Vec<bool>>,
}

impl LimitsObserver for Recorder {
    fn redis_call(&self, op: &'static str, _seconds: f64, ok: bool) {
        self.calls.lock().unwrap().push((op, ok));
    }
    fn fallback(&self, active: bool) {
        self.fallback.lock().unwrap().push(active);
    }
}

impl Recorder {
    fn calls(&self, op: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| *o == op)
            .count()
    }
    fn saw_fallback(&self, active: bool) -> bool {
        self.fallback.lock().unwrap().contains(&active)
    }
}

fn settings(server: &RedisServer, lease_ttl: Duration) -> RedisSettings {
    RedisSettings {
        url: server.url(),
        lease_ttl,
        timeout: Duration::from_millis(200),
        key_prefix: "sluice".to_string(),
        tls_roots: None,
    }
}

fn limiter_with(server: &RedisServer, lease_ttl: Duration) -> (Limiter, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let limiter = Limiter::new(
        Backend::Redis(settings(server, lease_ttl)),
        None,
        recorder.clone(),
    )
    .unwrap();
    assert_eq!(limiter.snapshot().backend, "redis", "connected at start");
    (limiter, recorder)
}

fn limiter(server: &RedisServer) -> Limiter {
    limiter_with(server, Duration::from_secs(3)).0
}

fn stream<'a>(user: &'a str, key: &'a str, limits: &'a StreamLimits) -> Claim<'a> {
    Claim {
        user: Some(user),
        key_id: Some(key),
        limits,
        wants_stream: true,
    }
}

fn per_user(n: u32) -> StreamLimits {
    StreamLimits {
        per_user_streams: Some(n),
        ..StreamLimits::default()
    }
}

/// The ids of the clients connected to `server`, but for the one asking.
fn other_clients(server: &RedisServer) -> Vec<String> {
    server
        .command("CLIENT LIST")
        .lines()
        .filter(|line| !line.contains(" cmd=client|list "))
        .filter_map(|line| {
            line.split("id=")
                .nth(1)?
                .split(' ')
                .next()
                .map(str::to_string)
        })
        .collect()
}

/// The ids of the clients connected to `server` that are not in `before` (nor the one asking).
fn clients_besides(server: &RedisServer, before: &[String]) -> Vec<String> {
    let mut ids = other_clients(server);
    ids.retain(|id| !before.contains(id));
    ids
}

/// An integer reply of a command on `server`.
fn int(server: &RedisServer, command: &str) -> i64 {
    let reply = server.command(command);
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{command}: unexpected reply {reply:?}"))
}

async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn two_instances_share_a_users_stream_limit() {
    let server = RedisServer::start();
    let (a, b) = (limiter(&server), limiter(&server));
    let limits = per_user(3);
    let a1 = a.admit(&stream("alice", "k1", &limits)).await.unwrap();
    assert_eq!((a1.streams_limit, a1.streams_remaining), (Some(3), Some(2)));
    let _a2 = a.admit(&stream("alice", "k1", &limits)).await.unwrap();
    let b1 = b.admit(&stream("alice", "k2", &limits)).await.unwrap();
    // The count is cluster-wide: B sees A's two.
    assert_eq!((b1.streams_limit, b1.streams_remaining), (Some(3), Some(0)));
    for l in [&a, &b] {
        assert_eq!(
            l.admit(&stream("alice", "k3", &limits)).await.unwrap_err(),
            Rejection::UserStreams { limit: 3 }
        );
    }
    // Others are not affected; each instance's snapshot shows its own leases.
    let _bob = b.admit(&stream("bob", "k9", &limits)).await.unwrap();
    assert_eq!(a.snapshot().users.get("alice"), Some(&2));
    assert_eq!(b.snapshot().users.get("alice"), Some(&1));
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 3);
    // A release reaches Redis asynchronously (queued to the limiter's thread): wait for it.
    drop(b1);
    assert!(
        eventually(Duration::from_secs(1), || int(
            &server,
            "ZCARD sluice:u:alice"
        ) == 2)
        .await
    );
    let _again = a
        .admit(&stream("alice", "k3", &limits))
        .await
        .expect("a slot freed on B is free for A");
}

#[tokio::test]
async fn per_key_limits_are_shared() {
    let server = RedisServer::start();
    let (a, b) = (limiter(&server), limiter(&server));
    let limits = StreamLimits {
        per_key_streams: Some(2),
        ..StreamLimits::default()
    };
    let _x = a.admit(&stream("alice", "team", &limits)).await.unwrap();
    let y = b.admit(&stream("bob", "team", &limits)).await.unwrap();
    assert_eq!((y.streams_limit, y.streams_remaining), (Some(2), Some(0)));
    assert_eq!(
        a.admit(&stream("carol", "team", &limits))
            .await
            .unwrap_err(),
        Rejection::KeyStreams { limit: 2 }
    );
    assert_eq!(int(&server, "ZCARD sluice:k:team"), 2);
    // A refused claim adds nothing.
    assert_eq!(int(&server, "EXISTS sluice:u:carol"), 0);
}

#[tokio::test]
async fn dropping_a_lease_frees_its_slot_in_redis() {
    let server = RedisServer::start();
    let (l, recorder) = limiter_with(&server, Duration::from_secs(3));
    let limits = per_user(1);
    let lease = l.admit(&stream("alice", "k1", &limits)).await.unwrap();
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 1);
    assert_eq!(int(&server, "ZCARD sluice:k:k1"), 1);
    drop(lease);
    assert_eq!(l.in_flight(), 0, "the local count drops at once");
    assert!(
        eventually(Duration::from_secs(1), || int(
            &server,
            "ZCARD sluice:u:alice"
        ) == 0
            && int(&server, "ZCARD sluice:k:k1") == 0)
        .await,
        "the ZREM reaches Redis"
    );
    assert!(eventually(Duration::from_secs(1), || recorder.calls("release") >= 1).await);
    let _again = l.admit(&stream("alice", "k1", &limits)).await.unwrap();
}

#[tokio::test]
async fn a_crashed_instances_slots_free_within_lease_ttl() {
    let server = RedisServer::start();
    let survivor = limiter(&server);
    let (crashed, _) = limiter_with(&server, Duration::from_secs(2));
    let limits = per_user(2);
    let held = vec![
        crashed.admit(&stream("alice", "k", &limits)).await.unwrap(),
        crashed.admit(&stream("alice", "k", &limits)).await.unwrap(),
    ];
    // Let a renewal or two happen (every 667 ms), then "crash": the thread stops, nothing is
    // released.
    tokio::time::sleep(Duration::from_millis(800)).await;
    crashed.shutdown();
    let crash = Instant::now();
    std::mem::forget(held);
    assert_eq!(
        survivor
            .admit(&stream("alice", "k", &limits))
            .await
            .unwrap_err(),
        Rejection::UserStreams { limit: 2 }
    );
    let mut freed = None;
    while crash.elapsed() < Duration::from_secs(4) {
        if let Ok(a) = survivor.admit(&stream("alice", "k", &limits)).await {
            freed = Some((crash.elapsed(), a));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (after, admission) = freed.expect("slots of a crashed instance free themselves");
    assert!(
        after <= Duration::from_millis(2_300),
        "freed after {after:?}"
    );
    assert!(
        after >= Duration::from_millis(1_000),
        "freed too soon: {after:?}"
    );
    // Both expired together: the second slot is free too.
    assert_eq!(admission.streams_remaining, Some(1));
}

#[tokio::test]
async fn leases_held_longer_than_lease_ttl_are_renewed() {
    let server = RedisServer::start();
    let (l, recorder) = limiter_with(&server, Duration::from_millis(900));
    let limits = per_user(1);
    let lease = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 1);
    // Still counted: the expiry of the lease keeps moving forward.
    let other = limiter(&server);
    assert_eq!(
        other
            .admit(&stream("alice", "k", &limits))
            .await
            .unwrap_err(),
        Rejection::UserStreams { limit: 1 }
    );
    assert!(recorder.calls("renew") >= 4, "renewed every 300 ms");
    assert!(
        int(&server, "PTTL sluice:u:alice") > 900,
        "the set outlives its leases"
    );
    drop(lease);
}

#[tokio::test]
async fn falls_back_when_redis_dies_and_recovers_when_it_returns() {
    let mut server = RedisServer::start();
    let (l, recorder) = limiter_with(&server, Duration::from_secs(3));
    let limits = per_user(3);
    let l1 = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 1);

    server.stop();
    let start = Instant::now();
    let l2 = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(l.snapshot().backend, "redis-fallback");
    assert!(recorder.saw_fallback(true));
    // Fallback counts locally, starting from every lease of this instance (l1 came from Redis).
    let l3 = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    let start = Instant::now();
    assert_eq!(
        l.admit(&stream("alice", "k", &limits)).await.unwrap_err(),
        Rejection::UserStreams { limit: 3 }
    );
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "no Redis call in fallback"
    );
    drop(l3);

    server.restart();
    assert!(
        eventually(Duration::from_secs(4), || l.snapshot().backend == "redis").await,
        "back on Redis"
    );
    assert!(recorder.saw_fallback(false));
    // The restarted Redis is empty; the renewal on recovery put back the two live leases
    // (one admitted by Redis, one during the fallback), not the released one.
    assert!(
        eventually(Duration::from_secs(2), || int(
            &server,
            "ZCARD sluice:u:alice"
        ) == 2)
        .await,
        "ZCARD is {}",
        int(&server, "ZCARD sluice:u:alice")
    );
    // And they count cluster-wide again: another instance gets one slot, not three.
    let other = limiter(&server);
    let _o = other.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!(
        other
            .admit(&stream("alice", "k", &limits))
            .await
            .unwrap_err(),
        Rejection::UserStreams { limit: 3 }
    );
    drop((l1, l2));
    assert!(
        eventually(Duration::from_secs(1), || int(
            &server,
            "ZCARD sluice:u:alice"
        ) == 1)
        .await
    );
}

/// Admissions go out on the admitting thread's own connection. One that Redis closed (as a
/// Redis with `timeout` set drops idle clients) is replaced on the next admission, which still
/// counts in Redis: no fallback, no looser limits.
#[tokio::test]
async fn an_admission_connection_closed_by_redis_is_replaced_without_falling_back() {
    let server = RedisServer::start();
    let (l, recorder) = limiter_with(&server, Duration::from_secs(60));
    let limits = per_user(5);
    // The limiter's shared connection (renewals, probe) is there before any admission.
    let shared = other_clients(&server);
    let _a = l.admit(&stream("alice", "k", &limits)).await.unwrap();

    let admitting = clients_besides(&server, &shared);
    assert_eq!(admitting.len(), 1, "{admitting:?} besides {shared:?}");
    assert_eq!(
        server.command(&format!("CLIENT KILL ID {}", admitting[0])),
        ":1\r\n"
    );

    let _b = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!(l.snapshot().backend, "redis");
    assert!(!recorder.saw_fallback(true));
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 2);
}

/// A thread's admission connection left unused for a lease's life is replaced at its next use
/// (a NAT on the way may have dropped the idle flow without a word): the old one is closed, and
/// the admission still counts in Redis.
#[tokio::test]
async fn an_idle_admission_connection_is_replaced() {
    let server = RedisServer::start();
    let (l, recorder) = limiter_with(&server, Duration::from_secs(3));
    let limits = per_user(5);
    // The limiter's shared connection (renewals, probe) is there before any admission.
    let shared = other_clients(&server);
    assert_eq!(shared.len(), 1, "{shared:?}");
    let admitting = |server: &RedisServer| clients_besides(server, &shared);
    let _a = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    let first = admitting(&server);
    assert_eq!(first.len(), 1);
    let _b = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!(admitting(&server), first, "used again while fresh");

    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let _c = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || {
            let now = admitting(&server);
            now.len() == 1 && now != first
        })
        .await,
        "{:?} against {first:?}",
        admitting(&server)
    );
    assert_eq!(l.snapshot().backend, "redis");
    assert!(!recorder.saw_fallback(true));
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 3);
}

#[tokio::test]
async fn a_frozen_redis_costs_one_timeout_then_nothing() {
    let server = RedisServer::start();
    let (l, recorder) = limiter_with(&server, Duration::from_secs(3));
    let limits = per_user(5);
    let _a = l.admit(&stream("alice", "k", &limits)).await.unwrap();

    server.pause();
    let start = Instant::now();
    let _b = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    assert_eq!(l.snapshot().backend, "redis-fallback");
    assert!(recorder.saw_fallback(true));
    assert!(recorder.calls.lock().unwrap().contains(&("admit", false)));
    let start = Instant::now();
    for _ in 0..3 {
        let _ = l.admit(&stream("alice", "k", &limits)).await;
    }
    assert!(start.elapsed() < Duration::from_millis(50));

    server.resume();
    assert!(eventually(Duration::from_secs(4), || l.snapshot().backend == "redis").await);
    assert!(
        eventually(Duration::from_secs(2), || int(
            &server,
            "ZCARD sluice:u:alice"
        ) == 2)
        .await
    );
}

#[tokio::test]
async fn the_rate_limit_is_shared_across_instances() {
    let server = RedisServer::start();
    let (a, b) = (limiter(&server), limiter(&server));
    let limits = StreamLimits {
        per_user_rpm: Some(3),
        ..StreamLimits::default()
    };
    let plain = Claim {
        user: Some("alice"),
        key_id: Some("k"),
        limits: &limits,
        wants_stream: false,
    };
    for l in [&a, &b, &a] {
        let admission = l.admit(&plain).await.unwrap();
        assert!(admission.lease.is_none());
    }
    for l in [&b, &a] {
        let err = l.admit(&plain).await.unwrap_err();
        let Rejection::UserRate { limit, retry_after } = err else {
            panic!("{err:?}")
        };
        assert_eq!(limit, 3);
        // 3 per minute: one every 20 s.
        assert!(
            (Duration::from_secs(19)..=Duration::from_secs(20)).contains(&retry_after),
            "{retry_after:?}"
        );
    }
    // A stream needs a token too.
    assert_eq!(
        a.admit(&stream("alice", "k", &limits))
            .await
            .unwrap_err()
            .reason(),
        "user_rate"
    );
    // Another user has a full bucket.
    let bob = Claim {
        user: Some("bob"),
        ..plain
    };
    b.admit(&bob).await.unwrap();
    let ttl = int(&server, "PTTL sluice:r:alice");
    assert!(
        ttl > 0 && ttl <= 61_000,
        "the bucket expires once full: {ttl}"
    );
}

#[tokio::test]
async fn anonymous_and_unlimited_plain_requests_never_touch_redis() {
    let server = RedisServer::start();
    let recorder = Arc::new(Recorder::default());
    let l = Limiter::new(
        Backend::Redis(settings(&server, Duration::from_secs(3))),
        Some(2),
        recorder.clone(),
    )
    .unwrap();
    let limits = per_user(1);
    let anonymous = Claim {
        user: None,
        key_id: None,
        limits: &limits,
        wants_stream: true,
    };
    let plain = Claim {
        user: Some("alice"),
        key_id: Some("k"),
        limits: &limits,
        wants_stream: false,
    };
    let before = recorder.calls("admit");
    let a1 = l.admit(&anonymous).await.unwrap();
    let _a2 = l.admit(&anonymous).await.unwrap();
    // global_streams is per instance, checked before Redis.
    assert_eq!(
        l.admit(&stream("alice", "k", &limits)).await.unwrap_err(),
        Rejection::GlobalStreams { limit: 2 }
    );
    l.admit(&plain).await.unwrap();
    assert_eq!(recorder.calls("admit"), before);
    drop(a1);
    l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!(recorder.calls("admit"), before + 1);
}

#[tokio::test]
async fn starts_without_redis_and_joins_it_when_it_appears() {
    let mut server = RedisServer::start();
    server.stop();
    let recorder = Arc::new(Recorder::default());
    let start = Instant::now();
    let l = Limiter::new(
        Backend::Redis(settings(&server, Duration::from_secs(3))),
        None,
        recorder.clone(),
    )
    .expect("Redis need not be up at start");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(l.snapshot().backend, "redis-fallback");
    assert!(recorder.saw_fallback(true));
    let limits = per_user(2);
    let lease = l.admit(&stream("alice", "k", &limits)).await.unwrap();

    server.restart();
    assert!(eventually(Duration::from_secs(3), || l.snapshot().backend == "redis").await);
    assert_eq!(
        int(&server, "ZCARD sluice:u:alice"),
        1,
        "the fallback lease is in Redis"
    );
    drop(lease);
    assert!(
        eventually(Duration::from_secs(1), || int(
            &server,
            "ZCARD sluice:u:alice"
        ) == 0)
        .await
    );
}

#[tokio::test]
async fn shutdown_sends_queued_releases_and_stops_renewing() {
    let server = RedisServer::start();
    let l = limiter(&server);
    let limits = per_user(5);
    let released = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    let kept = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 2);
    drop(released);
    l.shutdown();
    assert_eq!(
        int(&server, "ZCARD sluice:u:alice"),
        1,
        "queued ZREM sent at shutdown"
    );
    // After shutdown: decisions are local, dropping a lease is harmless.
    assert_eq!(l.snapshot().backend, "redis-fallback");
    let _local = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    drop(kept);
    l.shutdown();
}

#[test]
fn the_limiter_outlives_the_runtimes_that_use_it() {
    let server = RedisServer::start();
    let l = Limiter::new(
        Backend::Redis(settings(&server, Duration::from_secs(3))),
        None,
        Arc::new(sluice::limits::NoObserver),
    )
    .unwrap();
    let limits = per_user(2);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lease = first
        .block_on(l.admit(&stream("alice", "k", &limits)))
        .unwrap();
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let _b = l.admit(&stream("alice", "k", &limits)).await.unwrap();
        assert_eq!(l.snapshot().backend, "redis");
        assert_eq!(
            l.admit(&stream("alice", "k", &limits)).await.unwrap_err(),
            Rejection::UserStreams { limit: 2 }
        );
    });
    drop(lease);
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn malformed_urls_are_refused() {
    for url in [
        "not a url",
        "http://127.0.0.1:6379",
        "redis://:secret@host:notaport",
    ] {
        let err = Limiter::new(
            Backend::Redis(RedisSettings::new(url)),
            None,
            Arc::new(sluice::limits::NoObserver),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

/// Admit latency, local vs Redis on loopback (run with `--nocapture` to see the numbers).
#[tokio::test]
async fn admit_latency_local_vs_redis() {
    let server = RedisServer::start();
    let redis = limiter(&server);
    let local = Limiter::new(Backend::Local, None, Arc::new(sluice::limits::NoObserver)).unwrap();
    // Every limit applies (so the whole script runs), none is reached: releases are
    // asynchronous, so a tight limit could refuse an admission racing the previous release.
    let limits = StreamLimits {
        per_user_streams: Some(1_000),
        per_key_streams: Some(1_000),
        per_user_rpm: Some(1_000_000),
    };
    let mut report = Vec::new();
    for (name, l) in [("local", &local), ("redis", &redis)] {
        for _ in 0..50 {
            drop(l.admit(&stream("alice", "k", &limits)).await.unwrap());
        }
        let mut samples = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let start = Instant::now();
            let admission = l.admit(&stream("alice", "k", &limits)).await.unwrap();
            samples.push(start.elapsed());
            drop(admission);
        }
        samples.sort();
        let p50 = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        report.push(format!("{name}: p50 {p50:?}, p99 {p99:?}"));
        if name == "redis" {
            assert!(p50 < Duration::from_millis(3), "redis admit p50 {p50:?}");
        }
    }
    // The baseline: a plain PING round trip on a multiplexed connection.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut samples = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        samples.push(start.elapsed());
    }
    samples.sort();
    let ping = samples[samples.len() / 2];
    eprintln!(
        "admit latency: {}; Redis PING p50 {ping:?}",
        report.join("; ")
    );
}

/// A Redis that restarts (empty) while this instance holds slots must not hand those slots out
/// again. The admission finds its connection dropped and retries on a fresh one (it cannot tell
/// a restart from an idle client closed); the empty Redis lacks this instance's marker, so the
/// limiter counts locally until its leases are written back, then returns to Redis.
#[tokio::test]
async fn a_restarted_redis_does_not_hand_out_held_slots_again() {
    let mut server = RedisServer::start();
    let (l, recorder) = limiter_with(&server, Duration::from_secs(30));
    let limits = per_user(1);
    let _held = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 1);

    server.restart();
    let again = l.admit(&stream("alice", "k", &limits)).await;
    assert_eq!(
        again.map(|_| ()).unwrap_err(),
        Rejection::UserStreams { limit: 1 }
    );
    assert!(recorder.saw_fallback(true));
    assert!(
        eventually(Duration::from_secs(4), || l.snapshot().backend == "redis").await,
        "back on Redis"
    );
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 1, "the lease is back");
    // Another instance sees the slot held.
    let other = limiter(&server);
    assert_eq!(
        other
            .admit(&stream("alice", "k", &limits))
            .await
            .map(|_| ())
            .unwrap_err(),
        Rejection::UserStreams { limit: 1 }
    );
}

/// With several instances, the one that admits after Redis lost its data must find the other
/// instances' leases back, even if those admit nothing meanwhile. A restart drops every
/// connection, which the probe notices; a flush (or a failover behind a proxy that keeps the
/// connections) does not: each instance's probe asks for its marker, finds it gone and writes
/// its leases back within about a second, not at its next renewal (`lease_ttl / 3`, 10 s here).
#[tokio::test]
async fn after_redis_loses_its_data_every_instance_writes_its_leases_back_within_a_second() {
    let server = RedisServer::start();
    let (a, _) = limiter_with(&server, Duration::from_secs(30));
    let (b, b_recorder) = limiter_with(&server, Duration::from_secs(30));
    let limits = per_user(1);
    let _held_on_b = b.admit(&stream("alice", "k", &limits)).await.unwrap();

    server.command("FLUSHALL");
    assert!(
        eventually(Duration::from_secs(3), || int(
            &server,
            "ZCARD sluice:u:alice"
        ) == 1)
        .await,
        "B's lease is back without B admitting anything"
    );
    assert!(b_recorder.saw_fallback(true), "B noticed the loss");
    assert!(
        eventually(Duration::from_secs(3), || a.snapshot().backend == "redis"
            && b.snapshot().backend == "redis")
        .await,
        "both back on Redis"
    );
    assert_eq!(
        a.admit(&stream("alice", "k2", &limits))
            .await
            .map(|_| ())
            .unwrap_err(),
        Rejection::UserStreams { limit: 1 },
        "A counts B's lease"
    );
}

/// A recovery of more leases than one renewal call carries (512 set entries: 300 leases in a
/// user's and a key's set) writes them in several calls, and the marker only with the last,
/// once the first call's pending mark shows Redis lost nothing in between.
#[tokio::test]
async fn a_recovery_of_many_leases_puts_every_one_back() {
    let server = RedisServer::start();
    let (l, recorder) = limiter_with(&server, Duration::from_secs(30));
    let limits = per_user(1000);
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(l.admit(&stream("alice", "k", &limits)).await.unwrap());
    }
    server.command("FLUSHALL");
    assert!(
        eventually(Duration::from_secs(3), || recorder.saw_fallback(true)
            && l.snapshot().backend == "redis")
        .await,
        "noticed and back on Redis"
    );
    assert_eq!(int(&server, "ZCARD sluice:u:alice"), 300);
    assert_eq!(int(&server, "ZCARD sluice:k:k"), 300);
    assert_eq!(
        l.admit(&stream("alice", "k", &per_user(300)))
            .await
            .map(|_| ())
            .unwrap_err(),
        Rejection::UserStreams { limit: 300 }
    );
}
