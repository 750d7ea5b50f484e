//! TLS, end to end on loopback with real clients and certificates made in the test: listeners
//! serve a certificate per SNI name, offer HTTP/2 and HTTP/1.1 by ALPN, refuse TLS 1.1, stream
//! events over HTTP/2 over TLS one by one, abort the upstream of a reset stream, and reload their
//! certificates without dropping connections; https upstreams are verified (CA file, name),
//! pooled, and spoken to over HTTP/2 when asked.

mod support;

use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::tls as tls_support;
use support::{free_port, Sluice, Step, TempDir, Upstream};
use tls_support::{Reply, TestCa, TlsUpstream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts Sluice with one TLS listener (`tls` holds the lines under `tls:`, indented six
/// spaces) and `rest` (upstreams, routes…).
fn start_tls(dir: TempDir, tls: &str, rest: &str) -> Sluice {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        "listen:\n  - addr: {addr}\n    tls:\n{tls}admin: {admin}\nserver:\n  threads: 2\n  pid_file: {pid}\n  upgrade_sock: {sock}\n{rest}",
        pid = dir.path.join("sluice.pid").display(),
        sock = dir.path.join("upgrade.sock").display(),
    );
    Sluice::start_with_config(&yaml, addr, admin, dir)
}

/// Sluice with one TLS listener (a certificate for `edge.test` from a fresh test CA, which it
/// returns for clients to trust) and one route to `upstream`, with `route_extra` lines.
fn edge_sluice(upstream: &Upstream, route_extra: &str) -> (Sluice, TestCa) {
    let ca = TestCa::new("sluice test ca");
    let dir = TempDir::new();
    let (cert, key) = ca.leaf(&["edge.test"]).write(&dir.path, "edge");
    let sluice = start_tls(
        dir,
        &cert_lines(&cert, &key),
        &routes_to(&upstream.url(), route_extra),
    );
    (sluice, ca)
}

fn cert_lines(cert: &Path, key: &Path) -> String {
    format!(
        "      cert: {}\n      key: {}\n",
        cert.display(),
        key.display()
    )
}

fn routes_to(url: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  up:\n    url: {url}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: none\n    usage_comment: false\n{extra}"
    )
}

fn json_upstream() -> Upstream {
    Upstream::start(|_| vec![Step::sized(200, "application/json", br#"{"ok":true}"#)])
}

fn post(path: &str, body: &'static [u8]) -> (http::Request<()>, Bytes) {
    let request = http::Request::post(format!("https://sluice.test{path}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    (request, Bytes::from_static(body))
}

/// Sends one request over h2 and returns the response status and body frames as they came.
async fn h2_exchange(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: &'static [u8],
) -> (u16, Vec<(Instant, Bytes)>) {
    let (request, body) = post(path, body);
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(body, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        frames.push((Instant::now(), data));
    }
    (status, frames)
}

fn post_h1(client: &mut support::Client, path: &str) -> support::client::Response {
    client.post_json(path, "{}");
    client.read_response()
}

fn joined(frames: &[(Instant, Bytes)]) -> String {
    frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect()
}

#[test]
fn sni_names_get_their_own_certificates() {
    let ca = TestCa::new("sluice test ca");
    let dir = TempDir::new();
    let default = ca.leaf(&["edge.test", "127.0.0.1"]);
    let api = ca.leaf(&["api.test"]);
    let wild = ca.leaf(&["*.wild.test"]);
    let (default_cert, default_key) = default.write(&dir.path, "default");
    let (api_cert, api_key) = api.write(&dir.path, "api");
    let (wild_cert, wild_key) = wild.write(&dir.path, "wild");
    let tls = format!(
        "{}      sni:\n        - {{ names: [api.test], cert: {}, key: {} }}\n        - {{ names: [\"*.wild.test\"], cert: {}, key: {} }}\n",
        cert_lines(&default_cert, &default_key),
        api_cert.display(),
        api_key.display(),
        wild_cert.display(),
        wild_key.display(),
    );
    let upstream = json_upstream();
    let sluice = start_tls(dir, &tls, &routes_to(&upstream.url(), ""));
    runtime().block_on(async {
        for (sni, expected) in [
            ("api.test", &api),
            ("API.test", &api),
            ("a.wild.test", &wild),
            ("edge.test", &default),
            // An IP address is never sent as SNI: no name, the default certificate.
            ("127.0.0.1", &default),
        ] {
            let handshake = tls_support::connect(sluice.addr, &ca, sni, &[b"h2"]).await;
            assert!(handshake.leaf == expected.der, "{sni}: wrong certificate");
        }
        // A name no entry lists gets the default certificate, which the client refuses.
        assert!(
            tls_support::try_connect(sluice.addr, &ca, "b.a.wild.test", &[])
                .await
                .is_err(),
            "a wildcard covers one label only"
        );
    });
}

#[test]
fn http1_and_http2_by_alpn() {
    let upstream = json_upstream();
    let (sluice, ca) = edge_sluice(&upstream, "");
    runtime().block_on(async {
        let both: &[&[u8]] = &[b"h2", b"http/1.1"];
        let handshake = tls_support::connect(sluice.addr, &ca, "edge.test", both).await;
        assert_eq!(handshake.alpn.as_deref(), Some(&b"h2"[..]));
        let mut client = support::h2::h2_over(handshake.stream).await;
        let (status, frames) = h2_exchange(&mut client, "/v1/x", b"{}").await;
        assert_eq!((status, joined(&frames).as_str()), (200, r#"{"ok":true}"#));

        for alpn in [&[&b"http/1.1"[..]][..], &[]] {
            let mut handshake = tls_support::connect(sluice.addr, &ca, "edge.test", alpn).await;
            let expected = (!alpn.is_empty()).then(|| b"http/1.1".to_vec());
            assert_eq!(handshake.alpn, expected);
            let (status, _, body) =
                tls_support::h1_request(&mut handshake.stream, "POST", "/v1/x", b"{}").await;
            assert_eq!((status, &body[..]), (200, &br#"{"ok":true}"#[..]));
        }
    });
    let requests = upstream.requests();
    assert_eq!(requests.len(), 3);
    // The client's address, taken from Pingora's TLS session, reaches the upstream.
    for request in &requests {
        assert_eq!(request.header("x-forwarded-for"), Some("127.0.0.1"));
    }
}

/// rustls clients cannot offer TLS 1.1, so the ClientHello is written by hand; the same hello
/// offering TLS 1.2 is answered with a ServerHello, which shows the hello itself is sound.
#[test]
fn tls_1_1_is_refused() {
    let upstream = json_upstream();
    let (sluice, _) = edge_sluice(&upstream, "");
    runtime().block_on(async {
        let answer =
            tls_support::raw_hello(sluice.addr, &tls_support::client_hello(0x0302, "edge.test"))
                .await;
        match answer {
            // An alert record: fatal protocol_version (70).
            Some((0x15, alert)) => assert_eq!(alert, [2, 70], "alert {alert:?}"),
            None => {}
            Some((kind, _)) => panic!("TLS 1.1 was answered with a record of type {kind}"),
        }
        let answer =
            tls_support::raw_hello(sluice.addr, &tls_support::client_hello(0x0303, "edge.test"))
                .await;
        let (kind, payload) = answer.expect("a TLS 1.2 hello is answered");
        assert_eq!((kind, payload[0]), (0x16, 2), "a ServerHello");
    });
}

/// An SSE upstream writing 5 events 150 ms apart.
fn paced_events() -> Upstream {
    Upstream::start(|_| {
        let mut steps = vec![Step::sse_head()];
        for i in 0..5 {
            steps.push(Step::sleep_ms(150));
            steps.push(Step::chunk(format!("data: {{\"i\":{i}}}\n\n")));
        }
        steps.push(Step::End);
        steps
    })
}

fn assert_paced(sent: &[Instant], frames: &[(Instant, Bytes)]) {
    let events: Vec<_> = frames
        .iter()
        .filter(|(_, b)| b.starts_with(b"data: "))
        .collect();
    assert_eq!(events.len(), 5, "one frame per event: {frames:?}");
    for (i, (at, data)) in events.iter().enumerate() {
        assert_eq!(&data[..], format!("data: {{\"i\":{i}}}\n\n").as_bytes());
        let delay = at.saturating_duration_since(sent[i]);
        assert!(
            delay < Duration::from_millis(60),
            "event {i} came {delay:?} after it was sent"
        );
    }
}

/// At SIGTERM a TLS listener stops accepting at once, unlike a cleartext one (a TLS client
/// speaks as soon as it connects, so one that connected before the signal has been accepted
/// already; one accepted later would have only what is left of the arrival grace for its
/// handshake), while the stream already running is carried to its end.
#[test]
fn at_sigterm_a_tls_listener_stops_accepting_and_its_streams_run_to_their_end() {
    let upstream = paced_events();
    let (sluice, ca) = edge_sluice(&upstream, "");
    runtime().block_on(async {
        let mut running = tls_support::connect(sluice.addr, &ca, "edge.test", &[b"http/1.1"]).await;
        let stream = tls_support::h1_request(&mut running.stream, "POST", "/v1/x", b"{}");
        let late = async {
            // The stream is under way (its events come 150 ms apart).
            tokio::time::sleep(Duration::from_millis(200)).await;
            sluice.signal("TERM");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let connect = tls_support::try_connect(sluice.addr, &ca, "edge.test", &[b"http/1.1"]);
            // Refused, reset or left unanswered: anything but a handshake.
            matches!(
                tokio::time::timeout(Duration::from_secs(2), connect).await,
                Ok(Ok(_))
            )
        };
        let ((status, _, body), accepted_late) = tokio::join!(stream, late);
        assert!(!accepted_late, "a TLS client was accepted after SIGTERM");
        assert_eq!(status, 200);
        let body = String::from_utf8(body).unwrap();
        assert_eq!(body.matches("data: {\"i\":").count(), 5, "{body}");
    });
}

#[test]
fn event_stream_over_h2_over_tls_arrives_event_by_event() {
    let upstream = paced_events();
    let (sluice, ca) = edge_sluice(&upstream, "");
    let frames = runtime().block_on(async {
        let handshake = tls_support::connect(sluice.addr, &ca, "edge.test", &[b"h2"]).await;
        let mut client = support::h2::h2_over(handshake.stream).await;
        let (status, frames) = h2_exchange(&mut client, "/v1/x", br#"{"stream":true}"#).await;
        assert_eq!(status, 200);
        frames
    });
    let sent: Vec<Instant> = upstream.sent().into_iter().map(|(at, _)| at).collect();
    assert_paced(&sent, &frames);
}

#[test]
fn reset_stream_over_tls_aborts_its_upstream() {
    let upstream = Upstream::start(|_| {
        vec![
            Step::sse_head(),
            Step::chunk("data: {\"i\":0}\n\n"),
            Step::Hold,
        ]
    });
    let (sluice, ca) = edge_sluice(&upstream, "    heartbeat: off\n");
    let left = runtime().block_on(async {
        let handshake = tls_support::connect(sluice.addr, &ca, "edge.test", &[b"h2"]).await;
        let mut client = support::h2::h2_over(handshake.stream).await;
        let (request, body) = post("/v1/x", br#"{"stream":true}"#);
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(body, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"data: {\"i\":0}\n\n");
        let left = Instant::now();
        // Dropping the body and the stream handle resets the stream (RST_STREAM CANCEL); the
        // TLS connection itself stays open.
        drop(body);
        drop(send);
        tokio::time::sleep(Duration::from_millis(300)).await;
        left
    });
    let closed = upstream
        .wait_closed(Duration::from_secs(5))
        .expect("upstream closed");
    let delay = closed.saturating_duration_since(left);
    assert!(
        delay < Duration::from_millis(100),
        "upstream closed after {delay:?}"
    );
}

/// New certificates apply to new handshakes — on a file change (polled every 2 s) and on
/// SIGHUP — while a connection made before keeps streaming; a broken file keeps the previous
/// certificate.
#[test]
fn certificates_reload_without_dropping_connections() {
    let ca = TestCa::new("sluice test ca");
    let dir = TempDir::new();
    let first = ca.leaf(&["edge.test"]);
    let (cert, key) = first.write(&dir.path, "edge");
    let upstream = Upstream::start(|_| {
        let mut steps = vec![Step::sse_head()];
        for i in 0..100 {
            steps.push(Step::chunk(format!("data: {{\"i\":{i}}}\n\n")));
            steps.push(Step::sleep_ms(100));
        }
        steps.push(Step::End);
        steps
    });
    let sluice = start_tls(
        dir,
        &cert_lines(&cert, &key),
        &routes_to(&upstream.url(), "    heartbeat: off\n"),
    );
    let replace = |leaf: &tls_support::Leaf| {
        // Written beside and renamed, as deployment tools do.
        for (path, text) in [(&key, &leaf.key_pem), (&cert, &leaf.cert_pem)] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    };
    runtime().block_on(async {
        let handshake = tls_support::connect(sluice.addr, &ca, "edge.test", &[b"h2"]).await;
        assert!(handshake.leaf == first.der);
        let mut client = support::h2::h2_over(handshake.stream).await;
        let (request, body) = post("/v1/x", br#"{"stream":true}"#);
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(body, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        let seen = received.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
                seen.lock().unwrap().push(Instant::now());
            }
        });
        let served = || async {
            tls_support::connect(sluice.addr, &ca, "edge.test", &[])
                .await
                .leaf
        };
        let wait_for = |leaf: rustls::pki_types::CertificateDer<'static>, within: Duration| {
            let served = &served;
            async move {
                let deadline = Instant::now() + within;
                loop {
                    if served().await == leaf {
                        return true;
                    }
                    if Instant::now() > deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };

        // A file change, no signal: picked up by the poll.
        let second = ca.leaf(&["edge.test"]);
        replace(&second);
        assert!(
            wait_for(second.der.clone(), Duration::from_secs(4)).await,
            "the changed files were not picked up"
        );
        // Just after a poll: only SIGHUP can apply the next change within a second.
        let third = ca.leaf(&["edge.test"]);
        replace(&third);
        sluice.signal("HUP");
        assert!(
            wait_for(third.der.clone(), Duration::from_millis(1000)).await,
            "SIGHUP did not reload the certificates"
        );
        // A broken certificate file: the previous certificate stays.
        std::fs::write(&cert, "not a certificate").unwrap();
        sluice.signal("HUP");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            served().await == third.der,
            "a broken file replaced the certificate"
        );
        let broken_at = Instant::now();

        // The stream opened before every reload is still flowing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let last = *received.lock().unwrap().last().expect("events arrived");
        assert!(last > broken_at, "the first connection stopped streaming");
        reader.abort();
    });
}

#[test]
fn https_upstream_is_verified_and_pooled() {
    let ca = TestCa::new("upstream test ca");
    let dir = TempDir::new();
    let ca_file = ca.write(&dir.path, "ca");
    let upstream = TlsUpstream::start(&ca.leaf(&["upstream.test"]), false, |seen| {
        Reply::json(&format!("{{\"path\":\"{}\"}}", seen.path))
    });
    let url = format!("https://127.0.0.1:{}", upstream.addr.port());
    let sluice = Sluice::start(&format!(
        "upstreams:\n  good:\n    url: {url}\n    sni: upstream.test\n    ca_file: {ca}\n    tls_handshake_timeout: 2s\n  \
         wrong_name:\n    url: {url}\n    sni: other.test\n    ca_file: {ca}\n  \
         unknown_ca:\n    url: {url}\n    sni: upstream.test\n  \
         unverified:\n    url: {url}\n    sni: other.test\n    tls_verify: false\n\
         routes:\n  - {{ path_prefix: /good/, upstream: good, provider: openai }}\n  \
         - {{ path_prefix: /wrong/, upstream: wrong_name, provider: openai }}\n  \
         - {{ path_prefix: /unknown/, upstream: unknown_ca, provider: openai }}\n  \
         - {{ path_prefix: /unverified/, upstream: unverified, provider: openai }}\n",
        ca = ca_file.display(),
    ));
    let mut client = support::Client::connect(sluice.addr);
    for _ in 0..2 {
        let response = post_h1(&mut client, "/good/v1/models");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["path"], "/good/v1/models");
    }
    // Both requests went over one pooled connection, with the configured SNI.
    assert_eq!(upstream.connections(), 1);
    let seen = upstream.requests();
    assert_eq!(seen[0].sni.as_deref(), Some("upstream.test"));
    assert_eq!(seen[0].protocol, "http/1.1");

    for path in ["/wrong/v1/models", "/unknown/v1/models"] {
        let response = post_h1(&mut client, path);
        assert_eq!(response.status, 502, "{path}: {}", response.text());
        let error = response.json();
        let message = error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains("cannot connect"), "{path}: {error}");
    }
    assert_eq!(
        upstream.requests().len(),
        2,
        "nothing reached an unverified upstream"
    );
    // Turning verification off is explicit, and then the wrong name is accepted.
    let response = post_h1(&mut client, "/unverified/v1/models");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Two upstreams over TLS for `leaf`, one speaking HTTP/1.1 and one HTTP/2, each answering its
/// path as JSON.
fn h1_and_h2_upstreams(leaf: &tls_support::Leaf) -> (TlsUpstream, TlsUpstream) {
    let reply = |seen: &tls_support::Seen| Reply::json(&format!("{{\"path\":\"{}\"}}", seen.path));
    (
        TlsUpstream::start(leaf, false, reply),
        TlsUpstream::start(leaf, true, reply),
    )
}

/// Upstreams `h1` and `h2` (the second with `http2: true`), each with `keys` (indented four
/// spaces), routed from `/h1/` and `/h2/`.
fn h1_and_h2_routes(h1: &TlsUpstream, h2: &TlsUpstream, keys: &str) -> String {
    format!(
        "upstreams:\n  h1:\n    url: https://127.0.0.1:{h1}\n{keys}  \
         h2:\n    url: https://127.0.0.1:{h2}\n{keys}    http2: true\n\
         routes:\n  - {{ path_prefix: /h1/, upstream: h1, provider: openai }}\n  \
         - {{ path_prefix: /h2/, upstream: h2, provider: openai }}\n",
        h1 = h1.addr.port(),
        h2 = h2.addr.port(),
    )
}

/// An upstream without `ca_file` is verified against the system roots (here `SSL_CERT_FILE`,
/// which the platform loader honours), over HTTP/1.1 and HTTP/2 alike: Sluice skips loading the
/// roots when no upstream needs them, so this checks that every connector has them when one does.
#[test]
fn https_upstream_without_ca_file_is_verified_against_the_system_roots() {
    let ca = TestCa::new("system roots test ca");
    let dir = TempDir::new();
    let ca_file = ca.write(&dir.path, "ca");
    let (h1, h2) = h1_and_h2_upstreams(&ca.leaf(&["upstream.test"]));
    let sluice = Sluice::start_with_env(
        &h1_and_h2_routes(&h1, &h2, "    sni: upstream.test\n"),
        &[("SSL_CERT_FILE", &ca_file)],
    );
    let mut client = support::Client::connect(sluice.addr);
    for path in ["/h1/v1/models", "/h2/v1/models"] {
        let response = post_h1(&mut client, path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(response.json()["path"], path);
    }
    assert_eq!(h1.requests()[0].protocol, "http/1.1");
    assert_eq!(h2.requests()[0].protocol, "h2");
}

/// A system store with a certificate rustls cannot take (a malformed one beside the good ones)
/// costs only that certificate, with a warning: Pingora's own loading of the system roots
/// panicked at start on it. The good roots still verify both kinds of upstream.
#[test]
fn a_malformed_system_root_is_skipped_not_fatal() {
    let ca = TestCa::new("system roots test ca");
    let dir = TempDir::new();
    let store = dir.path.join("store.pem");
    std::fs::write(
        &store,
        format!(
            "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n{}",
            ca.cert_pem
        ),
    )
    .unwrap();
    let (h1, h2) = h1_and_h2_upstreams(&ca.leaf(&["upstream.test"]));
    let sluice = Sluice::start_with_env(
        &h1_and_h2_routes(&h1, &h2, "    sni: upstream.test\n"),
        &[("SSL_CERT_FILE", &store)],
    );
    let mut client = support::Client::connect(sluice.addr);
    for path in ["/h1/v1/models", "/h2/v1/models"] {
        let response = post_h1(&mut client, path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
}

/// Upstreams with `tls_verify: false` alone: nothing verifies against the system roots, so none
/// are loaded, and the handshake (whose skip-all verifier Pingora still builds over a root
/// store) must not depend on them, over HTTP/1.1 and HTTP/2 alike.
#[test]
fn unverified_https_upstreams_alone_need_no_system_roots() {
    let ca = TestCa::new("unverified test ca");
    let (h1, h2) = h1_and_h2_upstreams(&ca.leaf(&["upstream.test"]));
    let sluice = Sluice::start(&h1_and_h2_routes(
        &h1,
        &h2,
        "    sni: other.test\n    tls_verify: false\n",
    ));
    let mut client = support::Client::connect(sluice.addr);
    for path in ["/h1/v1/models", "/h2/v1/models"] {
        let response = post_h1(&mut client, path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
    assert_eq!(h2.requests()[0].protocol, "h2");
}

#[test]
fn http2_upstream_over_tls_streams_multiplexes_and_resets() {
    let ca = TestCa::new("upstream test ca");
    let dir = TempDir::new();
    let ca_file = ca.write(&dir.path, "ca");
    let upstream = TlsUpstream::start(&ca.leaf(&["upstream.test"]), true, |seen| {
        if seen.path.starts_with("/hold") {
            Reply::events(1, Duration::ZERO).held()
        } else {
            Reply::events(5, Duration::from_millis(150))
        }
    });
    let sluice = Sluice::start_h2c(&format!(
        "upstreams:\n  up:\n    url: https://127.0.0.1:{port}\n    sni: upstream.test\n    ca_file: {ca}\n    http2: true\n\
         routes:\n  - path_prefix: /\n    upstream: up\n    provider: none\n    usage_comment: false\n    heartbeat: off\n",
        port = upstream.addr.port(),
        ca = ca_file.display(),
    ));
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // One stream first, then three at once: all on the one upstream connection.
        let mut first = client.clone().ready().await.unwrap();
        let (status, frames) = h2_exchange(&mut first, "/v1/a", br#"{"stream":true}"#).await;
        assert_eq!(status, 200);
        let sent = upstream.log.lock().unwrap().sent.clone();
        assert_paced(&sent, &frames);
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let mut client = client.clone().ready().await.unwrap();
            tasks.push(tokio::spawn(async move {
                h2_exchange(&mut client, "/v1/b", br#"{"stream":true}"#).await
            }));
            // Pingora takes a connection out of its pool while it opens a stream on it, so
            // streams opened at the very same instant may each open a connection
            // (connectors/http/v2.rs): a few milliseconds apart they all share one, and still
            // run at the same time (each lasts 750 ms).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in tasks {
            let (status, frames) = task.await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(joined(&frames).matches("data: ").count(), 5);
        }
        assert_eq!(
            upstream.connections(),
            1,
            "streams share one HTTP/2 connection"
        );
        assert!(upstream.requests().iter().all(|s| s.protocol == "h2"));
        assert_eq!(
            upstream.requests()[0].authority.as_deref(),
            Some(&*format!("127.0.0.1:{}", upstream.addr.port()))
        );

        // A client that resets its stream: the upstream stream is reset too, promptly.
        let mut client = client.clone().ready().await.unwrap();
        let (request, body) = post("/hold", br#"{"stream":true}"#);
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(body, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        body.data().await.unwrap().unwrap();
        let left = Instant::now();
        drop(body);
        drop(send);
        let aborted = tokio::task::spawn_blocking({
            let log = upstream.log.clone();
            move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Some(at) = log.lock().unwrap().aborted.first().copied() {
                        return Some(at);
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .await
        .unwrap()
        .expect("the upstream stream was reset");
        let delay = aborted.saturating_duration_since(left);
        assert!(delay < Duration::from_millis(100), "reset after {delay:?}");
    });
}

#[test]
fn http2_upstream_falls_back_to_http1_and_h2c_uses_prior_knowledge() {
    let ca = TestCa::new("upstream test ca");
    let dir = TempDir::new();
    let ca_file = ca.write(&dir.path, "ca");
    let h1_only = TlsUpstream::start(&ca.leaf(&["upstream.test"]), false, |_| Reply::json("{}"));
    let h2c = TlsUpstream::start_h2c(|_| Reply::json("{}"));
    let sluice = Sluice::start(&format!(
        "upstreams:\n  tls:\n    url: https://127.0.0.1:{tls}\n    sni: upstream.test\n    ca_file: {ca}\n    http2: true\n  \
         clear:\n    url: http://127.0.0.1:{clear}\n    http2: true\n\
         routes:\n  - {{ path_prefix: /tls/, upstream: tls }}\n  - {{ path_prefix: /clear/, upstream: clear }}\n",
        tls = h1_only.addr.port(),
        clear = h2c.addr.port(),
        ca = ca_file.display(),
    ));
    // One client connection throughout: an HTTP/2 upstream's plain response without
    // content-length reaches the HTTP/1.1 client chunked, so the connection is reused.
    let mut client = support::Client::connect(sluice.addr);
    for path in ["/tls/x", "/clear/x", "/tls/x", "/clear/x"] {
        let response = post_h1(&mut client, path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
    assert!(h1_only.requests().iter().all(|s| s.protocol == "http/1.1"));
    assert!(h2c.requests().iter().all(|s| s.protocol == "h2"));
    assert_eq!(h1_only.requests().len(), 2);
    assert_eq!(h2c.requests().len(), 2);
    assert_eq!((h1_only.connections(), h2c.connections()), (1, 1));
}

#[test]
fn check_names_the_tls_key_at_fault() {
    let ca = TestCa::new("sluice test ca");
    let dir = TempDir::new();
    let (cert, key) = ca.leaf(&["edge.test"]).write(&dir.path, "edge");
    let (_, other_key) = ca.leaf(&["other.test"]).write(&dir.path, "other");
    let ca_file = ca.write(&dir.path, "ca");
    let garbage = dir.path.join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let tail =
        "upstreams: {u: {url: http://127.0.0.1:9}}\nroutes: [{path_prefix: /, upstream: u}]\n";
    let listener = |tls: &str| format!("listen:\n  - addr: 127.0.0.1:8443\n    tls: {tls}\n{tail}");
    let (c, k, o, g) = (
        cert.display(),
        key.display(),
        other_key.display(),
        garbage.display(),
    );
    let cases = [
        (
            listener(&format!("{{cert: {c}, key: {k}, sni: [{{names: [a.test], cert: {c}, key: {k}}}, {{names: [b.test], cert: /nonexistent.pem, key: {k}}}]}}")),
            "listen[0].tls.sni[1].cert",
        ),
        (listener(&format!("{{cert: {c}, key: {o}}}")), "listen[0].tls.key"),
        (listener(&format!("{{cert: {g}, key: {k}}}")), "listen[0].tls.cert"),
        (listener(&format!("{{cert: {c}, key: {g}}}")), "listen[0].tls.key"),
        (
            listener(&format!("{{cert: {c}, key: {k}, sni: [{{names: [\"a.*.test\"], cert: {c}, key: {k}}}]}}")),
            "listen[0].tls.sni[0].names[0]",
        ),
        (
            format!("listen:\n  - addr: 127.0.0.1:8443\n    h2c: true\n    tls: {{cert: {c}, key: {k}}}\n{tail}"),
            "listen[0].h2c",
        ),
        (
            format!("listen: [{{addr: 127.0.0.1:1}}]\nupstreams: {{u: {{url: https://x.test, ca_file: {g}}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\n"),
            "upstreams.u.ca_file",
        ),
        (
            "listen: [{addr: 127.0.0.1:1}]\nupstreams: {u: {url: https://x.test, sni: \"bad name\"}}\nroutes: [{path_prefix: /, upstream: u}]\n".to_string(),
            "upstreams.u.sni",
        ),
        (
            format!("listen: [{{addr: 127.0.0.1:1}}]\nupstreams: {{u: {{url: http://x.test, ca_file: {}}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\n", ca_file.display()),
            "upstreams.u.ca_file",
        ),
    ];
    for (yaml, key) in cases {
        let (ok, output) = support::check_config(&yaml);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(output.contains(key), "expected `{key}` in: {output}");
    }
    let good = listener(&format!("{{cert: {c}, key: {k}, sni: [{{names: [api.test, \"*.api.test\"], cert: {c}, key: {k}}}]}}"));
    let (ok, output) = support::check_config(&good);
    assert!(ok, "{output}");
}

/// A client that opened a connection and never began its handshake does not hold up a shutdown
/// (the grace period here is the default 30 s): it gets the second a fresh plain connection gets
/// to send its first request.
#[test]
fn a_client_silent_before_its_handshake_does_not_hold_up_shutdown() {
    let upstream = json_upstream();
    let (mut sluice, _) = edge_sluice(&upstream, "");
    let silent = std::net::TcpStream::connect(sluice.addr).unwrap();
    // Accepted before the signal.
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    sluice.signal("TERM");
    assert!(
        sluice.wait_exit(Duration::from_secs(10)).is_some(),
        "sluice did not exit after SIGTERM"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        signalled.elapsed()
    );
    drop(silent);
}
