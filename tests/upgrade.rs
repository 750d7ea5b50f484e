//! Zero-downtime upgrade through the real binaries: a new process started with `-u` takes over
//! the listening sockets when the old one gets SIGQUIT; the old one's streams run to their end,
//! new connections are never refused, and the old process leaves as soon as its last stream
//! ended (not at the end of the grace period). Streams that outlive the grace period are ended
//! by Sluice, with their terminal event and usage record.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{free_port, Client, Sluice, Step, TempDir, Upstream};

const STREAMS: usize = 200;
/// 60 events 100 ms apart: each stream outlives Pingora's 5 s socket handover.
const EVENTS: usize = 60;

fn upstream() -> Upstream {
    Upstream::start(|request| {
        if !request.path.starts_with("/v1/chat") {
            return vec![Step::sized(200, "application/json", b"{\"ok\":true}")];
        }
        let mut steps = vec![Step::sse_head()];
        for i in 0..EVENTS {
            steps.push(Step::sleep_ms(100));
            steps.push(Step::chunk(format!("data: {{\"i\":{i}}}\n\n")));
        }
        steps.push(Step::chunk("data: [DONE]\n\n"));
        steps.push(Step::End);
        steps
    })
}

/// Sluice with one route to `upstream`; `route_keys` adds keys to it (`, key: value`).
fn start_routed_to(upstream: &Upstream, route_keys: &str) -> Sluice {
    Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /, upstream: up, provider: openai{route_keys} }}\n",
        upstream.url()
    ))
}

/// A chat stream on a fresh connection, its response head read (`200`), its events to come.
fn stream_started(addr: std::net::SocketAddr) -> Client {
    let mut client = Client::connect(addr);
    client.send(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        br#"{"model":"m","stream":true}"#,
    );
    assert_eq!(client.read_head().status, 200);
    client
}

/// One request on a fresh connection; `Err` says what went wrong.
fn fresh_request(addr: std::net::SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /models HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    if response.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "response: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(80)])
        ))
    }
}

#[test]
fn upgrade_with_streams_in_flight_cuts_none_and_refuses_none() {
    let upstream = upstream();
    let mut old = start_routed_to(&upstream, ", usage_comment: false");
    let streaming = AtomicUsize::new(0);
    let completed = AtomicUsize::new(0);
    let probing = AtomicBool::new(true);
    let probe_failures = std::sync::Mutex::new(Vec::new());
    let probes = AtomicUsize::new(0);
    let addr = old.addr;
    let admin = old.admin;
    std::thread::scope(|scope| {
        for _ in 0..STREAMS {
            scope.spawn(|| {
                let mut client = Client::connect(addr);
                client.send(
                    "POST",
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    br#"{"model":"m","stream":true}"#,
                );
                let head = client.read_head();
                assert_eq!(head.status, 200);
                streaming.fetch_add(1, Ordering::SeqCst);
                let body = client.read_chunked_body();
                let body = String::from_utf8(body).unwrap();
                assert_eq!(body.matches("data: {\"i\":").count(), EVENTS, "{body}");
                assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
                completed.fetch_add(1, Ordering::SeqCst);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while streaming.load(Ordering::SeqCst) < STREAMS {
            assert!(Instant::now() < deadline, "streams did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        // New connections keep arriving throughout the handover.
        scope.spawn(|| {
            while probing.load(Ordering::SeqCst) {
                probes.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = fresh_request(addr) {
                    probe_failures.lock().unwrap().push(e);
                }
                // Only a process that takes new requests answers its admin address: the old
                // one stops accepting there once it has handed the sockets over.
                let ready = Client::connect(admin).get("/readyz");
                if ready.status != 200 {
                    probe_failures.lock().unwrap().push(format!(
                        "/readyz: {} {}",
                        ready.status,
                        ready.text()
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });

        let new = old.start_upgrade();
        old.signal("QUIT");
        // The old process finishes its streams and leaves as soon as they are done.
        let exited = old.wait_exit(Duration::from_secs(25));
        assert!(exited.is_some(), "the old process outlived its streams");
        assert_eq!(
            completed.load(Ordering::SeqCst),
            STREAMS,
            "a stream was cut"
        );
        // The new process carries on alone.
        std::thread::sleep(Duration::from_millis(300));
        probing.store(false, Ordering::SeqCst);
        assert!(fresh_request(new.addr).is_ok());
        drop(new);
    });
    let failures = probe_failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} new connections failed: {failures:?}",
        failures.len(),
        probes.load(Ordering::SeqCst)
    );
    assert!(probes.load(Ordering::SeqCst) > 100);
}

/// SIGINT (Ctrl-C) stops as SIGTERM does: the stream in flight ends and its usage record is on
/// disk. Pingora's own handling exits at once, and the record was lost.
#[test]
fn sigterm_leaves_as_soon_as_the_last_stream_ends() {
    for signal in ["TERM", "INT"] {
        sigterm_leaves_with(signal);
    }
}

fn sigterm_leaves_with(signal: &str) {
    let upstream = upstream();
    let mut sluice = start_routed_to(&upstream, "");
    // One stream in flight; the grace period is 30 s.
    let mut client = stream_started(sluice.addr);
    let started = Instant::now();
    sluice.signal(signal);
    let chunks = client.read_chunks();
    assert!(chunks.len() >= EVENTS, "the stream was cut at SIG{signal}");
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(EVENTS as u64 / 10 + 3),
        "exit took {took:?}"
    );
    // The usage record of the last stream is on disk.
    assert_eq!(sluice.ledger().len(), 1, "SIG{signal}");
}

/// The admin listener stays up through a SIGTERM's drain (Pingora's own closed at the signal):
/// `/readyz` turns `503 draining` for balancers, `/healthz` stays `200`, and `/metrics` counts
/// the streams that end during the drain.
#[test]
fn the_admin_listener_answers_through_the_drain() {
    let upstream = upstream();
    let mut sluice = start_routed_to(&upstream, ", usage_comment: false");
    let admin_get = |path: &str| {
        let response = Client::connect(sluice.admin).get(path);
        (response.status, response.text())
    };
    assert_eq!(admin_get("/readyz"), (200, "ready\n".to_string()));
    let mut first = stream_started(sluice.addr);
    // Half a stream later: the second ends half a stream after the first.
    std::thread::sleep(Duration::from_millis(EVENTS as u64 * 50));
    let mut second = stream_started(sluice.addr);
    let completed = r#"sluice_streams_finished_total{outcome="completed",route="/"}"#;
    assert!(sluice.metrics().contains(&format!("{completed} 0\n")));
    sluice.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admin_get("/readyz"), (503, "draining\n".to_string()));
    assert_eq!(admin_get("/healthz"), (200, "ok\n".to_string()));
    assert!(first.read_chunks().len() >= EVENTS);
    // The first stream's end is counted while the second still runs.
    sluice.wait_metric(completed, 1.0);
    assert_eq!(admin_get("/readyz").0, 503);
    assert!(second.read_chunks().len() >= EVENTS);
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// A connection made before SIGTERM whose request arrives just after it is answered, not closed
/// or reset unasked (its client would see an empty response), and the process waits for it.
/// With deferred accept the kernel hands the connection over only with its request, after the
/// signal: the listener accepts through the request's grace.
#[test]
fn a_connection_made_before_sigterm_gets_its_request_answered() {
    let upstream = upstream();
    let mut sluice = start_routed_to(&upstream, "");
    let mut stream = TcpStream::connect(sluice.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A client that connects and never asks anything: it gets the same grace, no more.
    let _silent = TcpStream::connect(sluice.addr).unwrap();
    // Connected, nothing sent yet.
    std::thread::sleep(Duration::from_millis(200));
    let signaled = Instant::now();
    sluice.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    stream
        .write_all(b"GET /models HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    // Answered during shutdown: the connection is not kept alive for another request.
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response:?}"
    );
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // The silent connection held the exit for its 1 s grace, not its 60 s keep-alive.
    let took = signaled.elapsed();
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
}

#[test]
fn streams_still_running_when_the_grace_period_is_over_are_ended_with_their_records() {
    // A stream that would go on for a minute, and a request whose response head never comes.
    let upstream = Upstream::start(|request| {
        if request.path.starts_with("/v1/chat/completions/stalled") {
            return vec![Step::Hold];
        }
        let mut steps = vec![Step::sse_head()];
        for i in 0..600 {
            steps.push(Step::sleep_ms(100));
            steps.push(Step::chunk(format!("data: {{\"i\":{i}}}\n\n")));
        }
        steps.push(Step::End);
        steps
    });
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = TempDir::new();
    let yaml = format!(
        "listen:\n  - addr: {addr}\nadmin: {admin}\nserver:\n  threads: 2\n  grace_period: 1s\n  pid_file: {pid}\n  upgrade_sock: {sock}\nusage:\n  ledger: {ledger}\nupstreams:\n  up: {{ url: {url} }}\nroutes:\n  - {{ path_prefix: /, upstream: up, provider: openai }}\n",
        pid = dir.path.join("sluice.pid").display(),
        sock = dir.path.join("upgrade.sock").display(),
        ledger = dir.path.join("usage.jsonl").display(),
        url = upstream.url(),
    );
    let mut sluice = Sluice::start_with_config(&yaml, addr, admin, dir);
    let body = br#"{"model":"m","stream":true}"#;
    let mut streaming = Client::connect(sluice.addr);
    streaming.send(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body,
    );
    assert_eq!(streaming.read_head().status, 200);
    let mut stalled = Client::connect(sluice.addr);
    stalled.send(
        "POST",
        "/v1/chat/completions/stalled",
        &[("content-type", "application/json")],
        body,
    );
    std::thread::sleep(Duration::from_millis(200));

    let signalled = Instant::now();
    sluice.signal("TERM");
    // The stream goes on through the grace period, then ends with an error event of its own
    // and a proper end of the body (not a cut connection).
    let chunks = streaming.read_chunks();
    let ended = signalled.elapsed();
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_secs(3),
        "ended {ended:?} after SIGTERM"
    );
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    let last = String::from_utf8_lossy(&chunks.last().unwrap().data).to_string();
    assert!(last.contains("server_shutting_down"), "{last}");
    // The request still waiting for its response head gets a 503 in the provider's format.
    let refused = stalled.read_response();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "server_shutting_down");

    let status = sluice.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "exit took {:?}",
        signalled.elapsed()
    );
    let records = sluice.ledger();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records.iter().all(|r| r["outcome"] == "shutdown"),
        "{records:?}"
    );
}

#[test]
fn a_client_that_stopped_reading_does_not_keep_its_stream_past_the_grace_period() {
    // The upstream writes far more than the socket buffers hold; the client reads the head and
    // then nothing, so Sluice's write to it waits.
    let upstream = Upstream::start(|_| {
        let event = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(16 * 1024));
        let mut steps = vec![Step::sse_head()];
        steps.extend((0..4_000).map(|_| Step::chunk(event.clone())));
        steps.push(Step::End);
        steps
    });
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = TempDir::new();
    let yaml = format!(
        "listen:\n  - addr: {addr}\nadmin: {admin}\nserver:\n  threads: 2\n  grace_period: 1s\n  pid_file: {pid}\n  upgrade_sock: {sock}\nusage:\n  ledger: {ledger}\nupstreams:\n  up: {{ url: {url} }}\nroutes:\n  - {{ path_prefix: /, upstream: up, provider: openai }}\n",
        pid = dir.path.join("sluice.pid").display(),
        sock = dir.path.join("upgrade.sock").display(),
        ledger = dir.path.join("usage.jsonl").display(),
        url = upstream.url(),
    );
    let mut sluice = Sluice::start_with_config(&yaml, addr, admin, dir);
    let client = stream_started(sluice.addr);
    // Long enough for the buffers between Sluice and the client to fill.
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    sluice.signal("TERM");
    let status = sluice.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(4), "exit took {took:?}");
    let records = sluice.ledger();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "shutdown");
    drop(client);
}

/// SIGQUIT with no new process waiting for the sockets (one that failed to start, or was never
/// started) leaves the running process serving. Before, Pingora gave up handing the sockets over
/// after 5 s and stopped the process anyway, leaving nothing listening.
#[test]
fn sigquit_with_no_new_process_to_take_over_keeps_serving() {
    let upstream = upstream();
    let mut sluice = start_routed_to(&upstream, "");
    fresh_request(sluice.addr).unwrap();
    sluice.signal("QUIT");
    // Past Pingora's hand-over attempts (5 s), its wait after them (5 s) and the first
    // request's grace that follows a stop (1 s).
    assert!(
        sluice.wait_exit(Duration::from_millis(11_500)).is_none(),
        "the only Sluice left"
    );
    fresh_request(sluice.addr).unwrap();
}

/// A new process that takes the sockets over but cannot bind an address it adds (in use) serves
/// the others rather than exiting: the old one has handed over and is leaving. Before, it
/// exited and nothing was left listening. It tries the address again every second (the old
/// process may hold it under another spelling until it stops listening), and serves it once free.
#[test]
fn an_upgrade_that_cannot_bind_a_new_address_still_serves_the_others() {
    let upstream = upstream();
    let mut old = start_routed_to(&upstream, "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = std::fs::read_to_string(old.config_path()).unwrap();
    let config = config.replacen(
        "listen:\n",
        &format!("listen:\n  - addr: {}\n", taken.local_addr().unwrap()),
        1,
    );
    std::fs::write(old.config_path(), config).unwrap();
    let mut new = old.start_upgrade();
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        new.wait_exit(Duration::from_millis(500)).is_none(),
        "the new one left"
    );
    fresh_request(new.addr).unwrap();
    // The address is tried again every second: once free, it is served too.
    let freed = taken.local_addr().unwrap();
    drop(taken);
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fresh_request(freed) {
        assert!(Instant::now() < deadline, "{freed} never served: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
