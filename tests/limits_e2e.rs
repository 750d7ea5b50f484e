//! Identity and per-user stream limits through the real binary: keys and passthrough modes,
//! 401 and 429 responses in each provider's format (with `Retry-After` and the
//! `x-ratelimit-*-streams` headers), limits per user, per key and per minute, and every slot
//! released whatever way its stream ended.

mod support;

use serde_json::Value;
use sluice::auth::KeyDigest;
use std::time::{Duration, Instant};
use support::client::Response;
use support::{Client, Sluice, Step, TempDir, Upstream};

const STREAM_BODY: &str = r#"{"model":"m","stream":true,"messages":[]}"#;

/// An upstream whose streams send one event and then stay open until Sluice closes them.
fn holding_upstream() -> Upstream {
    Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk("data: {\"choices\":[]}\n\n"),
            Step::Hold,
        ]
    })
}

fn keys_file(dir: &TempDir, entries: &[(&str, &str, &str, Option<u32>)]) -> String {
    let mut text = String::from("keys:\n");
    for (key, user, key_id, max_streams) in entries {
        text.push_str(&format!(
            "  - {{ sha256: {}, user: {user}, key_id: {key_id}{} }}\n",
            KeyDigest::of(key).to_hex(),
            max_streams
                .map(|m| format!(", max_streams: {m}"))
                .unwrap_or_default()
        ));
    }
    let path = dir.path.join("keys.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Sends a stream request and reads the response head (the body is left on the connection).
fn open_stream(sluice: &Sluice, path: &str, headers: &[(&str, &str)]) -> (Client, Response) {
    open_stream_with(sluice, path, headers, STREAM_BODY)
}

/// [`open_stream`] with a body of its own.
fn open_stream_with(
    sluice: &Sluice,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (Client, Response) {
    let mut client = Client::connect(sluice.addr);
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    client.send("POST", path, &all, body.as_bytes());
    let head = client.read_head();
    (client, head)
}

fn refused(sluice: &Sluice, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut client = Client::connect(sluice.addr);
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    client.send("POST", path, &all, STREAM_BODY.as_bytes());
    client.read_response()
}

fn limits_json(sluice: &Sluice) -> Value {
    Client::connect(sluice.admin).get("/limits").json()
}

fn wait_slots_free(sluice: &Sluice) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let limits = limits_json(sluice);
        if limits["in_flight"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "slots still held: {limits}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn keys_mode_swaps_the_client_key_for_the_provider_key() {
    let upstream = holding_upstream();
    let dir = TempDir::new();
    let keys = keys_file(&dir, &[("sk-sluice-alice", "alice", "k1", None)]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {}\n    headers: {{ authorization: \"Bearer provider-secret\" }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai }}\nauth: {{ mode: keys, keys_file: {keys} }}\n",
        upstream.url()
    ));
    for headers in [
        vec![("authorization", "Bearer sk-sluice-alice")],
        vec![("x-api-key", "sk-sluice-alice")],
        vec![("x-goog-api-key", "sk-sluice-alice")],
    ] {
        let (client, head) = open_stream(
            &sluice,
            "/v1/chat/completions?key=sk-sluice-alice&x=1",
            &headers,
        );
        assert_eq!(head.status, 200, "{headers:?}");
        drop(client);
    }
    upstream.wait_requests(3);
    for request in upstream.requests() {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer provider-secret")
        );
        assert_eq!(request.header("x-api-key"), None);
        assert_eq!(request.header("x-goog-api-key"), None);
        assert_eq!(request.path, "/v1/chat/completions?x=1");
    }
    let records = sluice.wait_ledger(3);
    for record in &records {
        assert_eq!(record["user"], "alice");
        assert_eq!(record["key_id"], "k1");
        let line = record.to_string();
        assert!(
            !line.contains("sk-sluice-alice"),
            "key leaked into the ledger: {line}"
        );
    }
    let metrics = sluice.metrics();
    assert!(!metrics.contains("sk-sluice-alice"));
}

/// The caller a keys-file entry names (user, key id, tenant) is in the access log and in the
/// usage record alike.
#[test]
fn the_access_log_and_the_record_name_user_key_and_tenant() {
    let upstream =
        Upstream::start(|_| vec![Step::sse_head(), Step::chunk("data: [DONE]\n\n"), Step::End]);
    let dir = TempDir::new();
    let keys = dir.path.join("keys.yaml");
    std::fs::write(
        &keys,
        format!(
            "keys:\n  - {{ sha256: {}, user: bob, key_id: kb, tenant: acme }}\n",
            KeyDigest::of("sk-sluice-bob").to_hex()
        ),
    )
    .unwrap();
    let stdout = dir.path.join("stdout.log");
    let sluice = Sluice::start_with_output(
        &format!(
            "upstreams:\n  up:\n    url: {}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai }}\nauth: {{ mode: keys, keys_file: {} }}\n",
            upstream.url(),
            keys.display()
        ),
        std::process::Stdio::from(std::fs::File::create(&stdout).unwrap()),
        std::process::Stdio::null(),
    );
    let (mut client, head) = open_stream(
        &sluice,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-sluice-bob")],
    );
    assert_eq!(head.status, 200);
    client.read_chunked_body();
    let line = support::first_access_log_line(&stdout);
    let record = &sluice.wait_ledger(1)[0];
    for caller in [&line, record] {
        assert_eq!(
            (&caller["user"], &caller["key_id"], &caller["tenant"]),
            (
                &Value::from("bob"),
                &Value::from("kb"),
                &Value::from("acme")
            ),
            "{caller}"
        );
    }
}

#[test]
fn keys_file_changes_apply_without_restart() {
    let upstream = Upstream::start(|_| vec![Step::sized(200, "application/json", b"{}")]);
    let dir = TempDir::new();
    let keys = keys_file(&dir, &[("sk-sluice-alice", "alice", "k1", None)]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai }}\nauth: {{ mode: keys, keys_file: {keys} }}\n",
        upstream.url()
    ));
    let status = |key: &str| {
        let mut client = Client::connect(sluice.addr);
        let bearer = format!("Bearer {key}");
        client.send(
            "GET",
            "/v1/models",
            &[("authorization", bearer.as_str())],
            b"",
        );
        client.read_response().status
    };
    assert_eq!(status("sk-sluice-bob"), 401);

    // A key added to the file works within the 2 s poll, with no signal.
    keys_file(
        &dir,
        &[
            ("sk-sluice-alice", "alice", "k1", None),
            ("sk-sluice-bob", "bob", "k2", None),
        ],
    );
    let started = Instant::now();
    while status("sk-sluice-bob") != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "new key not picked up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken file keeps the previous keys.
    std::fs::write(&keys, "keys: [ { sha256: nothex, user: x, key_id: y } ]\n").unwrap();
    sluice.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status("sk-sluice-bob"), 200);
    // A revoked key is refused once the file says so (SIGHUP: at once).
    keys_file(&dir, &[("sk-sluice-alice", "alice", "k1", None)]);
    sluice.signal("HUP");
    let started = Instant::now();
    while status("sk-sluice-bob") != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "revoked key still works"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status("sk-sluice-alice"), 200);
}

#[test]
fn missing_and_unknown_keys_get_401_in_each_providers_format() {
    let upstream = holding_upstream();
    let dir = TempDir::new();
    let keys = keys_file(&dir, &[("sk-sluice-alice", "alice", "k1", None)]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /v1/chat/, upstream: up, provider: openai }}\n  - {{ path_prefix: /v1/messages, upstream: up, provider: anthropic }}\n  - {{ path_prefix: /v1beta/, upstream: up, provider: gemini }}\nauth: {{ mode: keys, keys_file: {keys} }}\n",
        upstream.url()
    ));
    for (path, headers) in [
        ("/v1/chat/completions", vec![]),
        (
            "/v1/chat/completions",
            vec![("authorization", "Bearer sk-wrong")],
        ),
        ("/v1/messages", vec![("x-api-key", "sk-wrong")]),
        ("/v1beta/models/g:streamGenerateContent?alt=sse", vec![]),
    ] {
        let response = refused(&sluice, path, &headers);
        assert_eq!(response.status, 401, "{path} {headers:?}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body = response.json();
        assert!(
            !response.text().contains("sk-wrong"),
            "the key is echoed: {body}"
        );
        match path {
            "/v1/messages" => {
                assert_eq!(body["type"], "error");
                assert_eq!(body["error"]["type"], "authentication_error");
            }
            p if p.starts_with("/v1beta/") => {
                assert_eq!(body["error"]["code"], 401);
                assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
            }
            _ => assert_eq!(body["error"]["code"], "invalid_api_key"),
        }
    }
    assert!(
        upstream.requests().is_empty(),
        "a refused request went upstream"
    );
    let rejected = |reason: &str| {
        sluice.metric(&format!(
            "sluice_limits_rejections_total{{reason=\"{reason}\",route=\"/v1/chat/\"}}"
        ))
    };
    assert_eq!(rejected("missing_key"), 1.0);
    assert_eq!(rejected("invalid_key"), 1.0);
}

#[test]
fn per_user_and_per_key_stream_limits_hold_and_free_on_release() {
    let upstream = holding_upstream();
    let dir = TempDir::new();
    let keys = keys_file(
        &dir,
        &[
            ("sk-a1", "alice", "a1", Some(1)),
            ("sk-a2", "alice", "a2", None),
            ("sk-b1", "bob", "b1", None),
        ],
    );
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai }}\nauth: {{ mode: keys, keys_file: {keys} }}\nlimits: {{ per_user_streams: 2, per_key_streams: 5 }}\n",
        upstream.url()
    ));
    let bearer = |key: &'static str| [("authorization", format!("Bearer {key}"))];
    let open = |key: &'static str| {
        let header = bearer(key);
        let headers: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
        open_stream(&sluice, "/v1/chat/completions", &headers)
    };
    let (a1, head) = open("sk-a1");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-ratelimit-limit-streams"), Some("1"));
    assert_eq!(head.header("x-ratelimit-remaining-streams"), Some("0"));

    // a1's own limit (1, from the keys file) refuses its second stream.
    let (_, head) = open("sk-a1");
    assert_eq!(head.status, 429);
    assert_eq!(head.header("retry-after"), Some("1"));
    assert_eq!(head.header("x-ratelimit-remaining-streams"), Some("0"));

    let (a2, head) = open("sk-a2");
    assert_eq!(head.status, 200);
    // alice now holds 2 streams: her user limit refuses a third, from any key.
    let refusal = refused(
        &sluice,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a2")],
    );
    assert_eq!(refusal.status, 429);
    assert_eq!(refusal.header("x-ratelimit-limit-streams"), Some("2"));
    let body = refusal.json();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    // Bob is not affected.
    let (b1, head) = open("sk-b1");
    assert_eq!(head.status, 200);
    assert_eq!(limits_json(&sluice)["users"]["alice"], 2);

    drop((a1, a2, b1));
    wait_slots_free(&sluice);
    let (_a1, head) = open("sk-a1");
    assert_eq!(head.status, 200, "a released slot is free again");
    assert_eq!(
        upstream.requests().len(),
        4,
        "refused requests never went upstream"
    );
    let rejected = |reason: &str| {
        sluice.metric(&format!(
            "sluice_limits_rejections_total{{reason=\"{reason}\",route=\"/v1/\"}}"
        ))
    };
    assert_eq!(rejected("key_streams"), 1.0);
    assert_eq!(rejected("user_streams"), 1.0);
}

/// No spelling of a stream request gets past the stream limits: a body that repeats `stream`
/// (upstream parsers take the last, or the first), one with a `stream` a lenient parser reads as
/// true, one serde_json cannot read but Python can, and one too large for Sluice to read whole
/// (past 1 MiB of prompt, where its `stream` member may be), each take a stream slot. Before,
/// none was counted, and a user at their limit got more streams.
#[test]
fn stream_requests_of_any_spelling_take_a_stream_slot() {
    let upstream = holding_upstream();
    let dir = TempDir::new();
    let keys = keys_file(&dir, &[("sk-a1", "alice", "a1", None)]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai }}\nauth: {{ mode: keys, keys_file: {keys} }}\nlimits: {{ per_user_streams: 1 }}\n",
        upstream.url()
    ));
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}],"stream":true}}"#,
        "a".repeat(1024 * 1024 + 16)
    );
    let bodies = [
        r#"{"model":"m","stream":true,"stream":true}"#.to_string(),
        r#"{"model":"m","stream":false,"stream":true}"#.to_string(),
        r#"{"model":"m","stream":true,"stream":false}"#.to_string(),
        // What lenient upstream parsers read as a stream: pydantic's `1` and `"yes"`, Go's
        // case-blind names, Python's NaN and byte-order mark.
        r#"{"model":"m","stream":1}"#.to_string(),
        r#"{"model":"m","stream":"yes"}"#.to_string(),
        r#"{"model":"m","Stream":true}"#.to_string(),
        r#"{"model":"m","stream":true,"temperature":NaN}"#.to_string(),
        "\u{feff}{\"model\":\"m\",\"stream\":true}".to_string(),
        big,
    ];
    let send = |body: &str| {
        let key = [("authorization", "Bearer sk-a1")];
        open_stream_with(&sluice, "/v1/chat/completions", &key, body)
    };
    for body in &bodies {
        let shown = &body[..body.len().min(60)];
        // Alone, each is a stream that holds alice's one slot...
        let (held, head) = send(body);
        assert_eq!(head.status, 200, "{shown}");
        assert_eq!(limits_json(&sluice)["users"]["alice"], 1, "{shown}");
        // ... and none gets past it.
        let (_, head) = send(body);
        assert_eq!(head.status, 429, "{shown}");
        drop(held);
        wait_slots_free(&sluice);
    }
}

#[test]
fn passthrough_forwards_the_key_and_limits_by_its_digest() {
    let upstream = holding_upstream();
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: anthropic }}\nauth: {{ mode: passthrough }}\nlimits: {{ per_user_streams: 1 }}\n",
        upstream.url()
    ));
    let (_first, head) = open_stream(&sluice, "/v1/messages", &[("x-api-key", "sk-ant-one")]);
    assert_eq!(head.status, 200);
    let refusal = refused(&sluice, "/v1/messages", &[("x-api-key", "sk-ant-one")]);
    assert_eq!(refusal.status, 429);
    let body = refusal.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let (_other, head) = open_stream(&sluice, "/v1/messages", &[("x-api-key", "sk-ant-two")]);
    assert_eq!(head.status, 200);
    upstream.wait_requests(2);
    let seen: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| r.header("x-api-key").unwrap_or("").to_string())
        .collect();
    assert_eq!(seen, ["sk-ant-one", "sk-ant-two"]);
    let limits = limits_json(&sluice);
    let users = limits["users"].as_object().unwrap();
    assert_eq!(users.len(), 2);
    for user in users.keys() {
        assert!(
            user.starts_with("key:") && !user.contains("sk-ant"),
            "{user}"
        );
    }
}

#[test]
fn request_rate_per_user_is_a_token_bucket() {
    let upstream = Upstream::start(|_| vec![Step::sized(200, "application/json", b"{}")]);
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\nroutes:\n  - {{ path_prefix: /v1beta/, upstream: up, provider: gemini }}\nauth: {{ mode: passthrough }}\nlimits: {{ per_user_rpm: 3 }}\n",
        upstream.url()
    ));
    let mut client = Client::connect(sluice.addr);
    for _ in 0..3 {
        client.send("GET", "/v1beta/models?key=AIza-one", &[], b"");
        assert_eq!(client.read_response().status, 200);
    }
    client.send("GET", "/v1beta/models?key=AIza-one", &[], b"");
    let refusal = client.read_response();
    assert_eq!(refusal.status, 429);
    let retry: u64 = refusal.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(refusal.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    // Another user has a bucket of their own.
    client.send("GET", "/v1beta/models?key=AIza-two", &[], b"");
    assert_eq!(client.read_response().status, 200);
    assert_eq!(upstream.requests().len(), 4);
}

/// Thousands of streams with every kind of ending, many refused by a limit: afterwards no slot
/// is held, by the limiter's own count and by `/metrics`.
#[test]
fn thousands_of_streams_with_mixed_endings_release_every_slot() {
    const STREAMS: usize = 2400;
    const THREADS: usize = 24;
    let upstream = Upstream::start(|request| {
        let event = Step::chunk("data: {\"choices\":[]}\n\n");
        match request.header("x-test-ending").unwrap_or("") {
            "complete" => vec![
                Step::sse_head(),
                event,
                Step::chunk("data: [DONE]\n\n"),
                Step::End,
            ],
            "broken" => vec![Step::sse_head(), event, Step::Close],
            "no_head" => vec![Step::Hold],
            "plain" => vec![Step::sized(200, "application/json", b"{\"ok\":true}")],
            // "disconnect", "idle", "max_duration": the stream stays open until Sluice closes it.
            _ => vec![Step::sse_head(), event, Step::Hold],
        }
    });
    let dead_port = support::free_port();
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up: {{ url: {} }}\n  dead: {{ url: \"http://127.0.0.1:{dead_port}\", connect_timeout: 1s }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai, idle_timeout: 300ms }}\n  - {{ path_prefix: /short/, upstream: up, provider: openai, max_duration: 200ms }}\n  - {{ path_prefix: /dead/, upstream: dead, provider: openai }}\nauth: {{ mode: passthrough }}\nlimits: {{ per_user_streams: 3, per_user_rpm: 100000, global_streams: 64 }}\nusage: {{ durability: async }}\n",
        upstream.url()
    ));
    let endings = [
        "complete",
        "disconnect",
        "idle",
        "broken",
        "no_head",
        "plain",
        "max_duration",
        "dead",
    ];
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let sluice = &sluice;
            let statuses = &statuses;
            scope.spawn(move || {
                for i in (thread..STREAMS).step_by(THREADS) {
                    let ending = endings[i % endings.len()];
                    let path = match ending {
                        "max_duration" => "/short/chat/completions",
                        "dead" => "/dead/chat/completions",
                        _ => "/v1/chat/completions",
                    };
                    // 8 users share 24 threads: some streams meet their user's limit of 3.
                    let key = format!("Bearer user-{}", thread % 8);
                    let headers = [("authorization", key.as_str()), ("x-test-ending", ending)];
                    let mut client = Client::connect(sluice.addr);
                    let mut all = vec![("content-type", "application/json")];
                    all.extend_from_slice(&headers);
                    client.send("POST", path, &all, STREAM_BODY.as_bytes());
                    let status = if ending == "disconnect" {
                        let head = client.read_head();
                        if head.status == 200 {
                            client.read_chunk();
                        }
                        head.status
                    } else {
                        client.read_response().status
                    };
                    *statuses
                        .lock()
                        .unwrap()
                        .entry(format!("{ending} {status}"))
                        .or_default() += 1;
                }
            });
        }
    });
    let statuses = statuses.into_inner().unwrap();
    let total: usize = statuses.values().sum();
    assert_eq!(total, STREAMS);
    let refused: usize = statuses
        .iter()
        .filter(|(k, _)| k.ends_with(" 429"))
        .map(|(_, v)| v)
        .sum();
    assert!(refused > 0, "no stream met a limit: {statuses:?}");
    for ending in endings {
        assert!(
            statuses
                .iter()
                .any(|(k, _)| k.starts_with(ending) && !k.ends_with(" 429")),
            "no {ending} stream was admitted: {statuses:?}"
        );
    }
    wait_slots_free(&sluice);
    let limits = limits_json(&sluice);
    assert_eq!(limits["in_flight"], 0, "{limits}");
    assert_eq!(limits["users"], serde_json::json!({}), "{limits}");
    let metrics = sluice.metrics();
    assert_eq!(
        support::metric_value(&metrics, "sluice_limits_streams_in_flight"),
        0.0
    );
    for route in ["/v1/", "/short/", "/dead/"] {
        assert_eq!(
            support::metric_value(
                &metrics,
                &format!("sluice_streams_in_flight{{route=\"{route}\"}}")
            ),
            0.0
        );
    }
}

/// A listener whose accept queue is full (it never accepts): a connect to it waits, as to a
/// server behind a saturated backlog or a firewall that drops SYNs. Loopback only.
fn unanswering_address() -> (std::net::SocketAddr, Vec<std::net::TcpStream>) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a socket this function owns; `listen` with a backlog of 0.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        std::net::TcpListener::from_raw_fd(fd)
    };
    let addr = listener.local_addr().unwrap();
    // Fill the queue: connects complete until it is full, then they wait.
    let mut held = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        held.push(stream);
        assert!(held.len() < 64, "the accept queue never filled");
    }
    std::mem::forget(listener);
    (addr, held)
}

/// While Sluice connects to an upstream that does not answer (up to `connect_timeout`), a client
/// that leaves frees its slot at once, and a shutdown's grace ends the wait with Sluice's error
/// and a usage record. Before, the connect was waited for alone: the slot stayed for the whole
/// `connect_timeout`, and at a shutdown the client got no answer and no record was written.
#[test]
fn a_client_waiting_on_an_upstream_connect_is_watched_and_the_grace_bounds_it() {
    let (blackhole, _held) = unanswering_address();
    // `grace_period` goes under `server:`, which the config ends with before this.
    let sluice = Sluice::start(&format!(
        "  grace_period: 1s\nupstreams:\n  up: {{ url: \"http://{blackhole}\", connect_timeout: 30s }}\nroutes:\n  - {{ path_prefix: /v1/, upstream: up, provider: openai }}\nauth: {{ mode: passthrough }}\nlimits: {{ per_user_streams: 1 }}\n"
    ));
    let key = [("authorization", "Bearer sk-waiting")];
    let send = || {
        let mut client = Client::connect(sluice.addr);
        client.send(
            "POST",
            "/v1/chat/completions",
            &[key[0], ("content-type", "application/json")],
            STREAM_BODY.as_bytes(),
        );
        client
    };
    let leaving = send();
    let deadline = Instant::now() + Duration::from_secs(5);
    while limits_json(&sluice)["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "never admitted");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(leaving);
    wait_slots_free(&sluice);
    let record = &sluice.wait_ledger(1)[0];
    assert_eq!(record["outcome"], "client_disconnect", "{record}");

    let mut waiting = send();
    std::thread::sleep(Duration::from_millis(300));
    sluice.signal("TERM");
    let answer = waiting.read_response();
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "server_shutting_down");
    let records = sluice.wait_ledger(2);
    assert_eq!(records[1]["outcome"], "shutdown", "{}", records[1]);
}
