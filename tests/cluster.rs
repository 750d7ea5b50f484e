//! Cluster mode through the real binary: two Sluice processes share one user's stream limit
//! through a real `redis-server`; a killed instance's slots expire within the lease TTL; when
//! Redis goes away each instance falls back to counting alone without hanging, and returns to
//! Redis when it is back.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::client::Response;
use support::redis::RedisServer;
use support::{Client, Sluice, Step, Upstream};

const LEASE_TTL_SECS: u64 = 3;

fn holding_upstream() -> Upstream {
    Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk("data: {\"choices\":[]}\n\n"),
            Step::Hold,
        ]
    })
}

fn instance(upstream: &Upstream, redis: &RedisServer) -> Sluice {
    Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai }}\nauth: {{ mode: passthrough }}\nlimits:\n  per_user_streams: 2\n  backend: {{ redis: \"{}\", lease_ttl: {LEASE_TTL_SECS}s, timeout: 100ms }}\n",
        upstream.url(),
        redis.url()
    ))
}

/// Opens a stream for the user whose provider key is `key`; the connection is kept open.
fn open(sluice: &Sluice, key: &str) -> (Client, Response) {
    let mut client = Client::connect(sluice.addr);
    let bearer = format!("Bearer {key}");
    client.send(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", bearer.as_str()),
        ],
        br#"{"model":"m","stream":true}"#,
    );
    let head = client.read_head();
    if head.status == 200 {
        client.read_chunk();
    }
    (client, head)
}

fn limits(sluice: &Sluice) -> Value {
    Client::connect(sluice.admin).get("/limits").json()
}

fn wait_until(what: &str, wait: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < wait, "{what}: not within {wait:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn two_instances_share_one_users_limit() {
    let redis = RedisServer::start();
    let upstream = holding_upstream();
    let (a, b) = (instance(&upstream, &redis), instance(&upstream, &redis));
    let (on_a, head) = open(&a, "sk-shared");
    assert_eq!(head.status, 200);
    let (_on_b, head) = open(&b, "sk-shared");
    assert_eq!(head.status, 200);
    // Two streams are held, one on each instance: a third is refused on either.
    assert_eq!(open(&a, "sk-shared").1.status, 429);
    assert_eq!(open(&b, "sk-shared").1.status, 429);
    assert_eq!(open(&b, "sk-other").1.status, 200);
    // A stream ending on A frees its slot for B (in Redis one round trip after A let go).
    drop(on_a);
    let mut again = None;
    wait_until("A's slot freed for B", Duration::from_secs(5), || {
        let (client, head) = open(&b, "sk-shared");
        again = Some(client);
        head.status == 200
    });
    assert_eq!(limits(&b)["backend"], "redis");
}

#[test]
fn a_killed_instances_slots_expire_within_the_lease_ttl() {
    let redis = RedisServer::start();
    let upstream = holding_upstream();
    let mut a = instance(&upstream, &redis);
    let b = instance(&upstream, &redis);
    let held: Vec<_> = (0..2).map(|_| open(&a, "sk-crash")).collect();
    assert!(held.iter().all(|(_, head)| head.status == 200));
    a.kill();
    // The slots outlive the crash in Redis…
    assert_eq!(open(&b, "sk-crash").1.status, 429);
    // …until their lease runs out.
    let mut streams = Vec::new();
    let waited = wait_until(
        "slots of the killed instance expire",
        Duration::from_secs(LEASE_TTL_SECS + 3),
        || {
            let (client, head) = open(&b, "sk-crash");
            streams.push(client);
            head.status == 200
        },
    );
    assert!(
        waited <= Duration::from_secs(LEASE_TTL_SECS + 1),
        "took {waited:?}"
    );
    drop(held);
}

#[test]
fn redis_down_falls_back_to_local_limits_and_recovers() {
    let mut redis = RedisServer::start();
    let upstream = holding_upstream();
    let a = instance(&upstream, &redis);
    let (_first, head) = open(&a, "sk-fall");
    assert_eq!(head.status, 200);

    redis.stop();
    // No hang: the next request is decided within about the Redis timeout, by local counts.
    let started = Instant::now();
    let (_second, head) = open(&a, "sk-fall");
    assert_eq!(head.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "admission took {:?} with Redis down",
        started.elapsed()
    );
    assert_eq!(open(&a, "sk-fall").1.status, 429, "local limits hold");
    assert_eq!(limits(&a)["backend"], "redis-fallback");
    assert_eq!(a.metric("sluice_limits_redis_fallback"), 1.0);

    redis.restart();
    wait_until("back on Redis", Duration::from_secs(10), || {
        limits(&a)["backend"] == "redis"
    });
    assert_eq!(a.metric("sluice_limits_redis_fallback"), 0.0);
    // The streams admitted across the outage are in Redis again: another instance sees them.
    let b = instance(&upstream, &redis);
    wait_until(
        "leases renewed into Redis",
        Duration::from_secs(LEASE_TTL_SECS + 2),
        || open(&b, "sk-fall").1.status == 429,
    );
}

#[test]
fn a_redis_restart_does_not_hand_out_held_slots_again() {
    let mut redis = RedisServer::start();
    let upstream = holding_upstream();
    let a = instance(&upstream, &redis);
    let held: Vec<_> = (0..2).map(|_| open(&a, "sk-restart")).collect();
    assert!(held.iter().all(|(_, head)| head.status == 200));

    // Restarted empty: the next admission finds its connection closed and asks again on a new
    // one, where the user's leases are gone for now.
    redis.restart();
    assert_eq!(
        open(&a, "sk-restart").1.status,
        429,
        "the user holds 2 of 2"
    );
    wait_until("back on Redis", Duration::from_secs(10), || {
        limits(&a)["backend"] == "redis"
    });
    assert_eq!(open(&a, "sk-restart").1.status, 429, "the leases are back");
    drop(held);
}

/// A Redis that stops answering for longer than `lease_ttl` (a slow script, a fork pause, a
/// partition) leaves no phantom lease behind: the admission that timed out against it runs when
/// it resumes and writes a lease for a stream that ended long before; that stream's release,
/// kept for the recovery however old, removes it. Before, releases older than `lease_ttl` were
/// dropped as "expired anyway", and the user was refused for up to `lease_ttl` after the
/// recovery while holding nothing.
#[test]
fn a_redis_stall_longer_than_the_lease_ttl_leaves_no_phantom_lease() {
    let redis = RedisServer::start();
    let upstream = holding_upstream();
    let a = instance(&upstream, &redis);
    let b = instance(&upstream, &redis);
    // Commands are taken and held, not answered (a stopped process would not run them later).
    let pause_ms = (LEASE_TTL_SECS + 1) * 1000;
    assert!(redis
        .command(&format!("CLIENT PAUSE {pause_ms}"))
        .starts_with("+OK"));
    let (client, head) = open(&a, "sk-phantom");
    assert_eq!(head.status, 200, "admitted by local counts");
    drop(client);
    wait_until("the stream ended", Duration::from_secs(5), || {
        limits(&a)["in_flight"] == 0
    });
    wait_until("both back on Redis", Duration::from_secs(10), || {
        limits(&a)["backend"] == "redis" && limits(&b)["backend"] == "redis"
    });
    // Well within the phantom's lease_ttl, had it stayed: both of the user's slots are free.
    let (_one, first) = open(&b, "sk-phantom");
    let (_two, second) = open(&b, "sk-phantom");
    assert_eq!((first.status, second.status), (200, 200));
}

/// A release on the limiter's shared connection that Redis closed (`CLIENT KILL`, a Redis that
/// drops its clients) is sent again on a new one, as admissions are: before, the instance fell
/// back and kept it until its next probe (up to a second), and meanwhile another instance
/// counted the ended stream and refused its user.
#[test]
fn a_release_on_a_connection_redis_closed_goes_out_on_a_new_one() {
    let redis = RedisServer::start();
    let upstream = holding_upstream();
    let a = instance(&upstream, &redis);
    let b = instance(&upstream, &redis);
    let (ended, head) = open(&a, "sk-killed");
    assert_eq!(head.status, 200);
    assert!(redis.command("CLIENT KILL TYPE normal").starts_with(':'));
    drop(ended);
    wait_until("the stream ended", Duration::from_secs(5), || {
        limits(&a)["in_flight"] == 0
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(limits(&a)["backend"], "redis", "no fallback");
    let (_one, first) = open(&b, "sk-killed");
    let (_two, second) = open(&b, "sk-killed");
    assert_eq!((first.status, second.status), (200, 200));
}

/// An instance on `redis_url`, with `ca_file` for a `rediss://` one.
fn instance_on(upstream: &Upstream, redis_url: &str, ca_file: Option<&std::path::Path>) -> Sluice {
    let ca = ca_file
        .map(|p| format!(", ca_file: \"{}\"", p.display()))
        .unwrap_or_default();
    Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai }}\nauth: {{ mode: passthrough }}\nlimits:\n  per_user_streams: 2\n  backend: {{ redis: \"{redis_url}\", lease_ttl: {LEASE_TTL_SECS}s, timeout: 200ms{ca} }}\n",
        upstream.url(),
    ))
}

/// `rediss://`: limits shared over TLS, the server verified against `ca_file`. A Redis whose
/// certificate Sluice cannot verify (no `ca_file` for a private CA) is not used: the instance
/// counts alone. Before, `sluice check` passed a `rediss://` URL and Sluice refused to start
/// ("the feature is not enabled").
#[test]
fn cluster_limits_go_over_tls_to_a_rediss_url() {
    let dir = support::TempDir::new();
    let ca = support::tls::TestCa::new("Redis test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1"]).write(&dir.path, "redis");
    let ca_file = ca.write(&dir.path, "ca");
    let redis = RedisServer::start_tls(cert, key);
    let upstream = holding_upstream();
    let a = instance_on(&upstream, &redis.tls_url(), Some(&ca_file));
    let b = instance_on(&upstream, &redis.tls_url(), Some(&ca_file));
    let held: Vec<_> = (0..2).map(|_| open(&a, "sk-tls")).collect();
    assert!(held.iter().all(|(_, head)| head.status == 200));
    // Counted in Redis: the other instance sees both.
    assert_eq!(open(&b, "sk-tls").1.status, 429);
    assert_eq!(limits(&b)["backend"], "redis");
    assert!(
        redis.command("KEYS sluice:u:*").contains("sluice:u:"),
        "no lease in Redis"
    );
    // Not trusted without the CA: never used.
    let untrusting = instance_on(&upstream, &redis.tls_url(), None);
    assert_eq!(limits(&untrusting)["backend"], "redis-fallback");
    assert_eq!(open(&untrusting, "sk-tls").1.status, 200);
    drop(held);
}
