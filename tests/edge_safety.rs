//! Sluice is a reverse proxy, never an open one: requests that name another host (absolute-form
//! targets, forged `Host`, `CONNECT`, `@` tricks) reach only the configured upstream or are
//! refused; paths that climb (`..`, `%2e%2e`) are refused; hop-by-hop headers stop at Sluice in
//! both directions; request heads and bodies over their limits are refused before they reach the
//! upstream; and client keys never appear in the access log.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{free_port, Client, Sluice, Step, TempDir, Upstream};

fn ok_upstream() -> Upstream {
    Upstream::start(|_| vec![Step::sized(200, "application/json", br#"{"ok":true}"#)])
}

/// Sluice with `server_extra` under `server:` and `rest` (upstreams, routes, …) as given.
fn start(server_extra: &str, rest: &str) -> Sluice {
    start_logged(server_extra, rest, Stdio::null())
}

/// Like [`start`], with stdout (the access log) going where given.
fn start_logged(server_extra: &str, rest: &str, stdout: Stdio) -> Sluice {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = TempDir::new();
    let yaml = format!(
        "listen:\n  - addr: {addr}\nadmin: {admin}\nserver:\n  threads: 2\n  pid_file: {pid}\n  upgrade_sock: {sock}\n{server_extra}usage:\n  ledger: {ledger}\n{rest}",
        pid = dir.path.join("sluice.pid").display(),
        sock = dir.path.join("upgrade.sock").display(),
        ledger = dir.path.join("usage.jsonl").display(),
    );
    Sluice::start_with_config_and_output(&yaml, addr, admin, dir, stdout)
}

fn one_route(upstream: &Upstream, route: &str) -> String {
    format!(
        "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n{route}",
        upstream.url()
    )
}

/// The access log written to `path` once it has `lines` lines (written as each request ends),
/// or as it is after 5 s.
fn access_log_lines(path: &std::path::Path, lines: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(path).unwrap();
        if log.lines().count() >= lines || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a hand-made request head on a new connection and reads the response.
fn raw(sluice: &Sluice, head: &str) -> support::client::Response {
    let mut client = Client::connect(sluice.addr);
    client.send_raw(head.as_bytes());
    client.read_response()
}

#[test]
fn requests_naming_other_hosts_reach_only_the_configured_upstream_or_are_refused() {
    let upstream = ok_upstream();
    let other = ok_upstream();
    let sluice = start("", &one_route(&upstream, ""));
    let own = upstream.addr.to_string();
    let elsewhere = other.addr.to_string();

    // Forwarded to the configured upstream, with its own Host, whatever the client named.
    let forwarded = [
        format!("GET http://{elsewhere}/v1/x HTTP/1.1\r\nHost: {elsewhere}\r\n\r\n"),
        format!("GET /v1/x HTTP/1.1\r\nHost: {elsewhere}\r\n\r\n"),
        format!("GET /v1/x HTTP/1.1\r\nHost: {elsewhere}\r\nX-Forwarded-Host: {elsewhere}\r\n\r\n"),
        format!("GET /v1/x@{elsewhere}/y HTTP/1.1\r\nHost: sluice.test\r\n\r\n"),
        "GET /v1//x HTTP/1.1\r\nHost: sluice.test\r\n\r\n".to_string(),
        // HTTP/1.0 needs no Host.
        "GET /v1/x HTTP/1.0\r\n\r\n".to_string(),
        // In origin form this is a path, not an authority.
        format!("GET //{elsewhere}/v1/x HTTP/1.1\r\nHost: sluice.test\r\n\r\n"),
    ];
    for head in &forwarded {
        let response = raw(&sluice, head);
        assert_eq!(response.status, 200, "{head:?}: {}", response.text());
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), forwarded.len());
    for request in &requests {
        assert_eq!(request.header("host"), Some(own.as_str()), "{request:?}");
        assert!(request.path.contains("/v1/"), "{request:?}");
    }
    assert_eq!(
        requests[0].path, "/v1/x",
        "the absolute form's authority is dropped"
    );
    assert_eq!(
        requests[4].path, "/v1//x",
        "double slashes reach the upstream unchanged"
    );
    assert_eq!(requests[6].path, format!("//{elsewhere}/v1/x"));

    // Refused with a JSON 4xx: malformed heads (400), CONNECT (405), dot segments (400).
    let refused = [
        format!("GET http://{elsewhere}/v1/x HTTP/1.1\r\nHost: sluice.test\r\n\r\n"),
        format!("GET http://user@{elsewhere}/v1/x HTTP/1.1\r\nHost: user@{elsewhere}\r\n\r\n"),
        format!("GET /v1/x HTTP/1.1\r\nHost: sluice.test@{elsewhere}\r\n\r\n"),
        format!("GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\nHost: {elsewhere}\r\n\r\n"),
        format!("CONNECT {elsewhere} HTTP/1.1\r\nHost: {elsewhere}\r\n\r\n"),
        "OPTIONS * HTTP/1.1\r\nHost: sluice.test\r\n\r\n".to_string(),
        "GET /v1/../admin HTTP/1.1\r\nHost: sluice.test\r\n\r\n".to_string(),
        "GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: sluice.test\r\n\r\n".to_string(),
        "GET /v1/%2E%2E%2Fadmin HTTP/1.1\r\nHost: sluice.test\r\n\r\n".to_string(),
        "GET /v1/..%2f..%2fadmin HTTP/1.1\r\nHost: sluice.test\r\n\r\n".to_string(),
        "GET /v1/./x HTTP/1.1\r\nHost: sluice.test\r\n\r\n".to_string(),
        // RFC 9112 §3.2: an HTTP/1.1 request with no Host, or a Host that is not one.
        "GET /v1/x HTTP/1.1\r\n\r\n".to_string(),
        "GET /v1/x HTTP/1.1\r\nHost: a b/c\r\n\r\n".to_string(),
        // Two spaces: Pingora takes ` /v1/x` as the target (escaped: `%20/v1/x`), which is no
        // path; it must not go upstream as a request for `/`.
        "POST  /v1/x HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 0\r\n\r\n".to_string(),
    ];
    for head in &refused {
        let response = raw(&sluice, head);
        assert!(
            (400..500).contains(&response.status),
            "{head:?}: {} {}",
            response.status,
            response.text()
        );
        let error: Value = response.json();
        assert!(error["error"]["message"].is_string(), "{head:?}: {error}");
    }
    assert_eq!(
        upstream.requests().len(),
        forwarded.len(),
        "no refused request was forwarded"
    );
    assert_eq!(
        raw(&sluice, &refused[4]).status,
        405,
        "CONNECT is not proxied"
    );
    for head in &refused[6..] {
        let response = raw(&sluice, head);
        assert_eq!(
            response.status, 400,
            "{head:?}: dot segments are Sluice's own 400"
        );
        assert_eq!(response.json()["error"]["code"], "bad_request");
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        other.log.lock().unwrap().connections,
        0,
        "the other listener was never contacted"
    );
}

#[test]
fn hop_by_hop_headers_stop_at_sluice_both_ways() {
    let upstream = Upstream::start(|_| {
        vec![Step::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: keep-alive, x-up-secret\r\nx-up-secret: 1\r\nkeep-alive: timeout=5\r\nproxy-authenticate: Basic realm=up\r\nx-up-public: yes\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
        )]
    });
    let sluice = start("", &one_route(&upstream, ""));
    let mut client = Client::connect(sluice.addr);
    client.send_raw(
        b"POST /v1/x HTTP/1.1\r\nHost: sluice.test\r\nConnection: keep-alive, x-secret\r\nX-Secret: hidden\r\nKeep-Alive: timeout=5\r\nTE: trailers, deflate\r\nTrailer: x-t\r\nProxy-Authorization: Basic cHJveHk6cHc=\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Public: yes\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"{}");
    for gone in ["x-up-secret", "keep-alive", "proxy-authenticate"] {
        assert_eq!(response.header(gone), None, "{gone} reached the client");
    }
    assert_eq!(response.header("x-up-public"), Some("yes"));
    assert_eq!(
        response.header("transfer-encoding"),
        Some("chunked"),
        "the client's framing follows the upstream's"
    );
    let request = &upstream.requests()[0];
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert_eq!(request.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(request.header("x-public"), Some("yes"));
    assert_eq!(request.header("content-length"), Some("5"));
    assert_eq!(request.body, b"hello");
}

#[test]
fn oversized_request_heads_never_reach_the_upstream() {
    let upstream = ok_upstream();
    let sluice = start(
        "  max_request_header: 16384\n",
        &one_route(&upstream, "    provider: anthropic\n"),
    );
    // Over Sluice's limit: its own 431, in the route's provider format.
    let big = "a".repeat(20_000);
    let response = raw(
        &sluice,
        &format!("GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\nX-Big: {big}\r\n\r\n"),
    );
    assert_eq!(response.status, 431, "{}", response.text());
    let error = response.json();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    // Just under it: forwarded.
    let fits = "a".repeat(16_000);
    let response = raw(
        &sluice,
        &format!("GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\nX-Big: {fits}\r\n\r\n"),
    );
    assert_eq!(response.status, 200);
    assert_eq!(upstream.requests().len(), 1);

    // Over Pingora's own limits (1 MiB head, 256 headers): a 400 and a closed connection, or a
    // reset while the client is still writing. Nothing is forwarded, nothing crashes.
    let huge = format!(
        "GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(2 * 1024 * 1024)
    );
    let many: String = (0..300).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many = format!("GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\n{many}\r\n");
    for head in [huge, many] {
        let mut stream = TcpStream::connect(sluice.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(head.as_bytes());
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{}",
            &answer[..answer.len().min(200)]
        );
    }
    assert_eq!(
        upstream.requests().len(),
        1,
        "no oversized head was forwarded"
    );
    let response = raw(&sluice, "GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\n\r\n");
    assert_eq!(response.status, 200, "Sluice still serves");
}

#[test]
fn request_bodies_over_the_route_limit_are_refused() {
    let upstream = ok_upstream();
    let sluice = start(
        "",
        &format!(
            "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /small/\n    upstream: up\n    max_request_body: 1000\n  - path_prefix: /anthropic/\n    upstream: up\n    provider: anthropic\n    max_request_body: 1000\n  - path_prefix: /large/\n    upstream: up\n    max_request_body: 1500000\n",
            upstream.url()
        ),
    );

    // A declared length over the limit: 413 at once, before any body byte is sent.
    for (path, check) in [
        ("/small/v1/chat/completions", "openai"),
        ("/anthropic/v1/messages", "anthropic"),
    ] {
        let mut client = Client::connect(sluice.addr);
        let asked = Instant::now();
        client.send_raw(
            format!("POST {path} HTTP/1.1\r\nHost: sluice.test\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n").as_bytes(),
        );
        let response = client.read_response();
        assert!(asked.elapsed() < Duration::from_millis(500));
        assert_eq!(response.status, 413, "{}", response.text());
        let error = response.json();
        match check {
            "openai" => {
                assert_eq!(error["error"]["type"], "invalid_request_error");
                assert_eq!(error["error"]["code"], "request_too_large");
            }
            _ => assert_eq!(error["error"]["type"], "request_too_large"),
        }
        assert!(client.closed_within(Duration::from_secs(2)));
    }

    // A client that writes its whole (too large) body before it reads still gets the 413: what
    // it sends meanwhile is read and dropped for a moment before its connection is closed
    // (a close with unread bytes resets the connection; some client stacks then drop the 413).
    for _ in 0..2 {
        let mut client = Client::connect(sluice.addr);
        let mut request =
            b"POST /small/x HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 5000000\r\n\r\n"
                .to_vec();
        request.extend_from_slice(&[b'z'; 5_000_000]);
        let _ = client.stream().write_all(&request);
        assert_eq!(client.read_response().status, 413);
    }

    // `Expect: 100-continue`: a body within the limit is invited, one over it refused first.
    let mut client = Client::connect(sluice.addr);
    client.send_raw(b"POST /small/x HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let continue_head = client.read_head();
    assert_eq!(continue_head.status, 100);
    client.send_raw(b"hello");
    let response = client.read_response();
    assert_eq!(response.status, 200);
    assert_eq!(upstream.requests()[0].body, b"hello");
    assert_eq!(upstream.requests()[0].header("expect"), None);
    let mut client = Client::connect(sluice.addr);
    client.send_raw(b"POST /small/x HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(client.read_response().status, 413);

    // A chunked body that grows past the limit while it is read ahead: 413, nothing forwarded.
    let mut client = Client::connect(sluice.addr);
    client.send_raw(
        b"POST /small/x HTTP/1.1\r\nHost: sluice.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for _ in 0..3 {
        client.send_raw(format!("190\r\n{}\r\n", "x".repeat(400)).as_bytes());
    }
    let response = client.read_response();
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(upstream.requests().len(), 1);

    // Past 1 MiB the body streams upstream; when it grows past the limit the upstream request
    // is aborted (its connection closed) and so is the client's.
    let mut client = Client::connect(sluice.addr);
    client.send_raw(
        b"POST /large/x HTTP/1.1\r\nHost: sluice.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let mut writer = client.stream().try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "y".repeat(64 * 1024));
        for _ in 0..48 {
            if writer.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n");
    });
    let closed = upstream.wait_closed(Duration::from_secs(5));
    assert!(closed.is_some(), "the upstream request was aborted");
    let _ = feeder.join();
    assert_eq!(
        upstream.requests().len(),
        1,
        "the cut-off request never arrived whole upstream"
    );
    let mut rest = Vec::new();
    let _ = client
        .stream()
        .set_read_timeout(Some(Duration::from_secs(2)));
    let _ = client.stream().read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 413"),
        "{}",
        &rest[..rest.len().min(200)]
    );
}

#[test]
fn client_keys_never_appear_in_the_access_log() {
    let upstream = ok_upstream();
    let dir = TempDir::new();
    let keys = dir.path.join("keys.yaml");
    std::fs::write(&keys, "keys: []\n").unwrap();
    let stdout = dir.path.join("stdout.log");
    let stderr = dir.path.join("stderr.log");
    let mut sluice = Sluice::start_with_output(
        &format!(
            "upstreams:\n  up:\n    url: {url}\nroutes:\n  - path_prefix: /open/\n    upstream: up\n  - path_prefix: /keys/\n    upstream: up\n    auth: {{ mode: keys, keys_file: {keys} }}\n  - path_prefix: /pass/\n    upstream: up\n    auth: {{ mode: passthrough }}\n",
            url = upstream.url(),
            keys = keys.display(),
        ),
        Stdio::from(std::fs::File::create(&stdout).unwrap()),
        Stdio::from(std::fs::File::create(&stderr).unwrap()),
    );
    let addr = sluice.addr;

    let secrets = [
        "sk-secret-bearer-1",
        "sk-secret-xapi-2",
        "sk-secret-goog-3",
        "sk-secret-query-4",
    ];
    let mut sent = 0;
    for prefix in ["/open", "/keys", "/pass", "/nowhere"] {
        let mut client = Client::connect(addr);
        client.send_raw(
            format!(
                "GET {prefix}/v1/models?alt=sse&key={} HTTP/1.1\r\nHost: sluice.test\r\nAuthorization: Bearer {}\r\nx-api-key: {}\r\nx-goog-api-key: {}\r\n\r\n",
                secrets[3], secrets[0], secrets[1], secrets[2]
            )
            .as_bytes(),
        );
        let response = client.read_response();
        assert!(response.status > 0);
        sent += 1;
    }
    // Each key alone, in the keys-mode route (refused: unknown key).
    for header in ["authorization: Bearer", "x-api-key:", "x-goog-api-key:"] {
        let mut client = Client::connect(addr);
        client.send_raw(
            format!("GET /keys/v1/x HTTP/1.1\r\nHost: sluice.test\r\n{header} sk-secret-alone-5\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(client.read_response().status, 401);
        sent += 1;
    }
    // The access log is written as each request ends.
    let log = access_log_lines(&stdout, sent);
    sluice.kill();
    assert_eq!(
        log.lines().count(),
        sent,
        "one access-log line per request:\n{log}"
    );
    for line in log.lines() {
        let record: Value = serde_json::from_str(line).expect("an access-log line is JSON");
        assert!(record["path"].as_str().unwrap().contains("/v1/"));
        let client = record["client"]
            .as_str()
            .expect("the client's address is logged");
        assert!(client.starts_with("127.0.0.1:"), "{client}");
    }
    for secret in secrets.iter().chain(&["sk-secret-alone-5", "sk-secret"]) {
        assert!(
            !log.contains(secret),
            "{secret} is in the access log:\n{log}"
        );
    }
    let errors = std::fs::read_to_string(&stderr).unwrap();
    for secret in secrets.iter().chain(&["sk-secret-alone-5"]) {
        assert!(
            !errors.contains(secret),
            "{secret} is in the error log:\n{errors}"
        );
    }
    // The upstream did get the keys of the routes that forward them (none and passthrough).
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].path.contains(secrets[3]));
}

/// Access-log lines go to stdout from a thread of their own: a stdout whose reader stalls (a
/// log shipper that fell behind) must not stop requests, and every line still arrives once it
/// reads again, the last ones at exit.
#[test]
fn a_stdout_nobody_reads_never_stalls_requests_and_every_line_reaches_it() {
    let upstream = ok_upstream();
    let mut sluice = Sluice::start_with_output(
        &format!(
            "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n",
            upstream.url()
        ),
        Stdio::piped(),
        Stdio::null(),
    );

    // Far more than a pipe holds (64 KiB; a line is ~300 bytes), on one kept-alive connection
    // served by one proxy thread.
    const UNREAD: usize = 1_500;
    let mut client = Client::connect(sluice.addr);
    client
        .stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for i in 0..UNREAD {
        let response = client.get(&format!("/v1/n/{i}"));
        assert_eq!(response.status, 200, "request {i}");
    }

    let stdout = sluice.take_stdout();
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < UNREAD {
        match received.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("{} of {UNREAD} access-log lines, then {e}", seen.len()),
        }
    }

    // The last lines are still in memory when the process is told to stop: written at exit.
    const AT_EXIT: usize = 20;
    for i in 0..AT_EXIT {
        let response = client.get(&format!("/v1/last/{i}"));
        assert_eq!(response.status, 200);
    }
    drop(client);
    sluice.signal("TERM");
    assert!(
        sluice.wait_exit(Duration::from_secs(10)).is_some(),
        "sluice did not exit after SIGTERM"
    );
    reader.join().unwrap();
    seen.extend(received.try_iter());
    assert_eq!(seen.len(), UNREAD + AT_EXIT, "one line per request");
    for (i, line) in seen.iter().enumerate() {
        let record: Value = serde_json::from_str(line).expect("an access-log line is JSON");
        let expected = if i < UNREAD {
            format!("/v1/n/{i}")
        } else {
            format!("/v1/last/{}", i - UNREAD)
        };
        assert_eq!(record["status"], 200);
        assert_eq!(record["path"], expected.as_str(), "lines in request order");
    }
}

/// A request head that cannot be parsed (too many fields, a folded line, a space in a name, a
/// control byte in a value, a target no URI can be made of) or is refused once parsed (lengths
/// that disagree) gets a 400 JSON error with an id of its own and a closed connection, and
/// neither the answer nor the logs repeat the request: Pingora's error for it can carry the raw
/// head or target, a client's key included. Nothing reaches the upstream and the connection's
/// task does not panic.
#[test]
fn unreadable_request_heads_get_a_json_error_that_repeats_nothing() {
    let upstream = ok_upstream();
    let dir = TempDir::new();
    let stdout = dir.path.join("stdout.log");
    let stderr = dir.path.join("stderr.log");
    let mut sluice = Sluice::start_with_output(
        &one_route(&upstream, ""),
        Stdio::from(std::fs::File::create(&stdout).unwrap()),
        Stdio::from(std::fs::File::create(&stderr).unwrap()),
    );
    let secret = "sk-secret-in-a-bad-head";
    let start =
        format!("GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\nAuthorization: Bearer {secret}\r\n");
    let many: String = (0..300).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let heads = [
        format!("{start}{many}\r\n"),
        format!("{start}X-Folded: a\r\n b\r\n\r\n"),
        format!("{start}Bad Name: x\r\n\r\n"),
        format!("{start}X-Control: a\x01b\r\n\r\n"),
        // Parsed, then refused: two lengths that disagree.
        format!("{start}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        // A target httparse takes and no URI can be made of, its key in the query (Gemini's).
        format!("GET /v1/x?key={secret}&q=< HTTP/1.1\r\nHost: sluice.test\r\n\r\n"),
        // One longer than any URI here (65,534 bytes): 414.
        format!(
            "GET /v1/x?key={secret}&q={} HTTP/1.1\r\nHost: sluice.test\r\n\r\n",
            "a".repeat(66_000)
        ),
    ];
    for (i, head) in heads.iter().enumerate() {
        // Read to the end: the connection is closed after the answer.
        let answer = support::client::exchange_until_closed(sluice.addr, head.as_bytes());
        let status = if i == heads.len() - 1 { "414" } else { "400" };
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{}",
            &answer[..answer.len().min(300)]
        );
        let head = answer[..answer.find("\r\n\r\n").expect("a whole head")].to_ascii_lowercase();
        let request_id = head
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id:"))
            .map(str::trim);
        assert!(request_id.is_some_and(|id| id.len() == 32), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let body = &answer[answer.find("\r\n\r\n").expect("a whole head") + 4..];
        let json: Value = serde_json::from_str(body).expect("a JSON error body");
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("malformed request head") || message.contains("request target"),
            "{body}"
        );
        assert!(
            !answer.contains(secret),
            "the answer repeats the head: {answer}"
        );
    }
    assert!(upstream.requests().is_empty(), "a bad head was forwarded");
    let response = raw(&sluice, "GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\n\r\n");
    assert_eq!(response.status, 200, "Sluice still serves");

    let log = access_log_lines(&stdout, heads.len() + 1);
    sluice.kill();
    let refused = log
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("an access-log line is JSON"))
        .filter(|record| record["status"] == 400 || record["status"] == 414)
        .count();
    assert_eq!(
        refused,
        heads.len(),
        "one access-log line per bad head:\n{log}"
    );
    assert!(
        !log.contains(secret),
        "the access log repeats a head:\n{log}"
    );
    let errors = std::fs::read_to_string(&stderr).unwrap();
    assert!(!errors.contains("panicked"), "{errors}");
    assert!(
        !errors.contains(secret),
        "the error log repeats a head:\n{errors}"
    );
}

/// A request body in a transfer coding besides `chunked` (`gzip, chunked`) gets a JSON 501:
/// Pingora would take off the chunked framing only, and the body would reach the upstream still
/// gzipped, with nothing to say so.
#[test]
fn a_request_body_in_another_transfer_coding_gets_a_501() {
    let upstream = ok_upstream();
    let sluice = start("", &one_route(&upstream, "    provider: anthropic\n"));
    let response = raw(
        &sluice,
        "POST /v1/messages HTTP/1.1\r\nHost: sluice.test\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 501, "{}", response.text());
    let error: Value = response.json();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    assert!(upstream.requests().is_empty());
    // Chunked alone is taken as before.
    let response = raw(
        &sluice,
        "POST /v1/messages HTTP/1.1\r\nHost: sluice.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(upstream.requests().len(), 1);
}

/// A request body that stops coming gets a `408` once `server.request_body_timeout` has passed,
/// and one whose chunked framing is broken a `400`; after either the connection is closed, since
/// where the next request would begin cannot be known. Neither answer repeats what was sent.
#[test]
fn a_request_body_that_stops_or_breaks_gets_a_json_error_and_a_closed_connection() {
    let upstream = ok_upstream();
    let sluice = start(
        "  request_body_timeout: 1s\n",
        &one_route(&upstream, "    provider: openai\n"),
    );
    let mut client = Client::connect(sluice.addr);
    let started = Instant::now();
    client.send_raw(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
    );
    let response = client.read_response();
    assert_eq!(response.status, 408, "{}", response.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    let json: Value = response.json();
    assert_eq!(json["error"]["code"], "request_timeout", "{json}");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.closed_within(Duration::from_secs(2)));

    let mut client = Client::connect(sluice.addr);
    client.send_raw(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz-secret\r\n{}\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    let response = client.read_response();
    assert_eq!(response.status, 400, "{}", response.text());
    let text = response.text();
    assert!(text.contains("chunked encoding is malformed"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert_eq!(response.header("connection"), Some("close"));
    // The request behind the broken body is not served: the connection just ends.
    assert!(client.closed_within(Duration::from_secs(2)));
    assert!(upstream.requests().is_empty());
}

/// A raw upstream that answers `413` as soon as it has a request's head, without reading its
/// body: then closes after a moment (`close`), or keeps the connection and reads nothing more.
fn early_answering_upstream(close: bool) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A small receive buffer, so that an upstream that reads nothing stops Sluice's writes soon.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket and an int option of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let connection = if close { "close" } else { "keep-alive" };
                let _ = stream.write_all(format!("HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 17\r\nconnection: {connection}\r\n\r\n{{\"error\":\"big!!\"}}").as_bytes());
                if close {
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                    let _ = stream.read(&mut [0u8; 65536]);
                } else {
                    std::thread::sleep(Duration::from_secs(20));
                }
            });
        }
    });
    addr
}

/// An upstream that answers before it has the whole request body (a `413` for an upload, as
/// servers do) is heard: its answer reaches the client, whether it then closed its connection
/// (Sluice's next write fails) or just stopped reading (Sluice's writes stall for
/// `server.request_body_timeout`), and the client's unread body does not reset the connection
/// under the answer. Before, the first got a 502 and the second hung for good, holding its slot.
#[test]
fn an_upstream_answer_that_comes_before_the_whole_body_reaches_the_client() {
    for close in [true, false] {
        let upstream = early_answering_upstream(close);
        let sluice = start(
            "  request_body_timeout: 1s\n",
            &format!(
                "upstreams:\n  up:\n    url: http://{upstream}\nroutes:\n  - path_prefix: /\n    upstream: up\n"
            ),
        );
        let mut client = TcpStream::connect(sluice.addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        // Chunked and 8 MiB: streamed upstream past its first MiB, within the body limit.
        client
            .write_all(b"POST /v1/files HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap();
        let mut writer = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let block = [b'x'; 65536];
            for _ in 0..128 {
                let mut piece = format!("{:x}\r\n", block.len()).into_bytes();
                piece.extend_from_slice(&block);
                piece.extend_from_slice(b"\r\n");
                if writer.write_all(&piece).is_err() {
                    return;
                }
            }
            let _ = writer.write_all(b"0\r\n\r\n");
        });
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "close {close}: {answer}"
        );
        assert!(
            answer.ends_with("{\"error\":\"big!!\"}"),
            "close {close}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
}

/// A client that closes its connection in the middle of its request body has left: the access
/// log says `client_disconnect` (beside the 400 nobody read), and a stream request's usage record
/// too. Before, its outcome was empty.
#[test]
fn a_client_that_leaves_mid_body_is_logged_as_gone() {
    let upstream = ok_upstream();
    let dir = TempDir::new();
    let stdout = dir.path.join("access.log");
    let sluice = Sluice::start_with_output(
        &one_route(&upstream, "    provider: openai\n"),
        Stdio::from(std::fs::File::create(&stdout).unwrap()),
        Stdio::null(),
    );
    let mut client = Client::connect(sluice.addr);
    client.send_raw(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"stream\":true,",
    );
    drop(client);
    let log = access_log_lines(&stdout, 1);
    let line: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(line["outcome"], "client_disconnect", "{line}");
    assert!(upstream.requests().is_empty());
}

/// A route is chosen by the path as the upstream will resolve it: percent-encoded letters,
/// an encoded `/` and repeated slashes do not slip a request past the route (its auth, limits
/// and provider) that the same path written plainly would take. Before, `/keys/%61dmin` went
/// through the open `/` route to the upstream's `/keys/admin` with no key checked.
#[test]
fn an_encoded_path_takes_the_route_its_plain_spelling_takes() {
    let upstream = ok_upstream();
    let dir = TempDir::new();
    let keys = dir.path.join("keys.yaml");
    std::fs::write(&keys, "keys: []\n").unwrap();
    let sluice = Sluice::start(&format!(
        "upstreams:\n  up:\n    url: {url}\nroutes:\n  - path_prefix: /\n    upstream: up\n  - path_prefix: /keys/admin\n    upstream: up\n    auth: {{ mode: keys, keys_file: {keys} }}\n",
        url = upstream.url(),
        keys = keys.display(),
    ));
    for path in [
        "/keys/admin",
        "/keys/%61dmin",
        "/keys/adm%69n/x",
        "/keys%2Fadmin",
        "/keys//admin",
        "//keys/admin",
    ] {
        let response = Client::connect(sluice.addr).get(path);
        assert_eq!(response.status, 401, "{path}: {}", response.text());
    }
    assert!(upstream.requests().is_empty());
    assert_eq!(Client::connect(sluice.addr).get("/keys/other").status, 200);
}

/// Behind a trusted proxy (`server.trusted_proxies`), the access log names the client the proxy
/// forwarded for (the rightmost address in `X-Forwarded-For` that is not itself trusted), and
/// the proxy as `via`; anything the client wrote further left is ignored. The upstream gets
/// the list as it came with the peer's address appended, as always. An untrusted peer's list
/// names nobody.
#[test]
fn the_access_log_names_the_client_a_trusted_proxy_forwarded_for() {
    let upstream = ok_upstream();
    let run = |server_extra: &str| {
        let dir = TempDir::new();
        let stdout = dir.path.join("access.log");
        let log_file = std::fs::File::create(&stdout).unwrap();
        let sluice = start_logged(server_extra, &one_route(&upstream, ""), log_file.into());
        let mut client = Client::connect(sluice.addr);
        client.send_raw(
            b"GET /v1/x HTTP/1.1\r\nHost: sluice.test\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.7\r\nX-Forwarded-For: 127.0.0.9\r\n\r\n",
        );
        assert_eq!(client.read_response().status, 200);
        let local = client.stream().local_addr().unwrap();
        let log = access_log_lines(&stdout, 1);
        let line: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        (line, local)
    };
    let (line, local) = run("  trusted_proxies: [127.0.0.0/8]\n");
    assert_eq!(line["client"], "203.0.113.7", "{line}");
    assert_eq!(line["via"], local.to_string(), "{line}");
    let (line, local) = run("");
    assert_eq!(line["client"], local.to_string(), "{line}");
    assert!(line.get("via").is_none(), "{line}");
    let requests = upstream.requests();
    for request in &requests {
        assert_eq!(
            request.header("x-forwarded-for"),
            Some("198.51.100.1, 203.0.113.7, 127.0.0.9, 127.0.0.1"),
            "{:?}",
            request.headers
        );
    }
    assert_eq!(requests.len(), 2);
}

/// Pingora frames a body by `Content-Length: N, N` (or the field twice) as N long, so Sluice's
/// limit and the framing it forwards go by that N too: refused before a `100 Continue` or any
/// upstream byte when over the limit, forwarded with its length (not rechunked) otherwise.
#[test]
fn a_repeated_content_length_is_the_length_limits_and_framing_go_by() {
    let upstream = ok_upstream();
    let sluice = start("", &one_route(&upstream, "    max_request_body: 1500000\n"));
    for lengths in [
        "Content-Length: 3000000, 3000000",
        "Content-Length: 3000000\r\nContent-Length: 3000000",
    ] {
        let mut client = Client::connect(sluice.addr);
        client.send_raw(
            format!("POST /v1/x HTTP/1.1\r\nHost: sluice.test\r\n{lengths}\r\nExpect: 100-continue\r\n\r\n")
                .as_bytes(),
        );
        let response = client.read_response();
        assert_eq!(response.status, 413, "{lengths:?}: {}", response.text());
        assert!(client.closed_within(Duration::from_secs(2)));
    }
    assert_eq!(upstream.log.lock().unwrap().connections, 0);

    let n = 1_200_000;
    let mut client = Client::connect(sluice.addr);
    client.send_raw(
        format!("POST /v1/x HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: {n}, {n}\r\n\r\n")
            .as_bytes(),
    );
    client.send_raw(&vec![b'x'; n]);
    assert_eq!(client.read_response().status, 200);
    let requests = upstream.requests();
    assert_eq!(requests[0].header("content-length"), Some("1200000"));
    assert_eq!(requests[0].header("transfer-encoding"), None);
    assert_eq!(requests[0].body.len(), n);
}

/// Sluice's own error answers are logged with the bytes of the JSON body the client got (they
/// were logged as 0).
#[test]
fn sluices_own_error_answers_log_the_bytes_they_sent() {
    let upstream = ok_upstream();
    let dir = TempDir::new();
    let stdout = dir.path.join("stdout.log");
    let _sluice = Sluice::start_with_output(
        &format!(
            "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /v1/\n    upstream: up\n",
            upstream.url()
        ),
        Stdio::from(std::fs::File::create(&stdout).unwrap()),
        Stdio::null(),
    );
    let mut client = Client::connect(_sluice.addr);
    let response = client.get("/nowhere");
    assert_eq!(response.status, 404);
    let line = support::first_access_log_line(&stdout);
    assert_eq!(line["status"], 404);
    assert_eq!(line["bytes_sent"], response.body.len() as u64, "{line}");
}

/// Sluice's own log goes to stderr through a writer thread of its own: a stderr nobody reads (a
/// stalled log shipper) costs log lines, never the proxy. Before, a proxy thread wrote each line
/// itself and blocked on the full pipe, and clients can make Sluice log at will: here a body
/// whose `stream_options` is no object logs a warning per request (~100 bytes), and the 64 KiB
/// pipe was full after ~600 of them.
#[test]
fn a_stderr_nobody_reads_does_not_stop_the_proxy() {
    let upstream =
        Upstream::start(|_| vec![Step::sse_head(), Step::chunk("data: [DONE]\n\n"), Step::End]);
    let sluice = Sluice::start_with_output(
        &format!(
            "upstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n    usage_comment: false\n",
            upstream.url()
        ),
        Stdio::null(),
        // Held by the test's child handle and never read.
        Stdio::piped(),
    );
    let mut client = Client::connect(sluice.addr);
    client
        .stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for i in 0..2_000 {
        client.post_json(
            "/v1/chat/completions",
            r#"{"model":"m","stream":true,"stream_options":5}"#,
        );
        assert_eq!(client.read_response().status, 200, "request {i}");
    }
}

/// Request bodies read ahead are bounded across requests (`server.request_body_memory`):
/// clients that send most of a large body and then trickle the rest (each part within
/// `request_body_timeout`) held up to a megabyte each for as long as they liked (300 such
/// clients: +322 MB). Past the bound another body waits for memory, and gets a JSON `503` after
/// `request_body_timeout`; once the holders leave, bodies are read again.
#[test]
fn request_bodies_held_in_memory_are_bounded_across_requests() {
    let upstream = ok_upstream();
    let sluice = start(
        "  request_body_timeout: 1s\n  request_body_memory: 2097152\n",
        &one_route(&upstream, "    provider: openai\n"),
    );
    let head = |len: usize| {
        format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n")
    };
    // Two holders: 900,000 bytes of a 1,000,000-byte body each, then a byte every 300 ms.
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut holder = TcpStream::connect(sluice.addr).unwrap();
            holder.write_all(head(1_000_000).as_bytes()).unwrap();
            holder.write_all(&vec![b' '; 900_000]).unwrap();
            holder
        })
        .collect();
    let trickling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let trickle = {
        let mut holders: Vec<_> = holders.iter().map(|h| h.try_clone().unwrap()).collect();
        let trickling = trickling.clone();
        std::thread::spawn(move || {
            while trickling.load(std::sync::atomic::Ordering::SeqCst) {
                for holder in &mut holders {
                    let _ = holder.write_all(b" ");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let body = [&br#"{"model":"m","#[..], &vec![b' '; 500_000], b"}"].concat();
    let send = || {
        let mut client = Client::connect(sluice.addr);
        client.send_raw(head(body.len()).as_bytes());
        client.send_raw(&body);
        client.read_response()
    };
    let started = Instant::now();
    let refused = send();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "server_overloaded");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(upstream.requests().is_empty());
    trickling.store(false, std::sync::atomic::Ordering::SeqCst);
    trickle.join().unwrap();
    drop(holders);
    assert_eq!(send().status, 200, "read again once the holders left");
}
