use crate::config::Config;

fn error_of(text: &str) -> String {
    Config::from_yaml(text).unwrap_err().to_string()
}

#[test]
fn unknown_upstream_is_named() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: http://127.0.0.1:9}}\nroutes: [{path_prefix: /, upstream: nope}]\n");
    assert!(
        err.contains("routes[0].upstream") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn bad_url_and_addr_are_named() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: ftp://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(err.contains("upstreams.u.url"), "{err}");
    let err = error_of("listen: [{addr: localhost}]\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(err.contains("listen[0].addr"), "{err}");
}

#[test]
fn a_value_refused_after_parsing_is_named_with_its_line() {
    let err = error_of("listen:\n  - addr: 127.0.0.1:8080\nupstreams:\n  u: {url: http://127.0.0.1:9}\nroutes:\n  - path_prefix: /a\n    upstream: u\n\n  - path_prefix: /b\n    upstream: missing\n");
    assert!(
        err.contains("routes[1].upstream") && err.contains("(line 10)"),
        "{err}"
    );
    let err = error_of("listen:\n  - addr: 127.0.0.1:8080\nserver:\n  threads: 0\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(err.contains("(line 4)"), "{err}");
}

#[test]
fn a_bad_trusted_proxy_is_named_with_its_line() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nserver:\n  trusted_proxies:\n    - 10.0.0.0/8\n    - 10.0.0.1/8\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(
        err.contains("server.trusted_proxies[1]")
            && err.contains("the range is 10.0.0.0/8")
            && err.contains("(line 5)"),
        "{err}"
    );
}

#[test]
fn a_dns_refresh_under_a_second_is_named() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams:\n  u:\n    url: http://api.example\n    dns_refresh: 100ms\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(
        err.contains("upstreams.u.dns_refresh") && err.contains("at least 1s"),
        "{err}"
    );
}

#[test]
fn a_request_body_memory_under_two_bodies_is_named() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nserver:\n  request_body_memory: 1048576\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(
        err.contains("server.request_body_memory") && err.contains("from 2097152"),
        "{err}"
    );
    // Past what a semaphore can count: refused, not a panic at start.
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nserver:\n  request_body_memory: 18446744073709551615\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(err.contains("to 1 TiB"), "{err}");
}

#[test]
fn a_pid_file_or_upgrade_socket_in_a_missing_directory_is_named() {
    for key in ["pid_file", "upgrade_sock"] {
        let err = error_of(&format!("listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: {{u: {{url: http://127.0.0.1:9}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\nserver:\n  {key}: /nonexistent-sluice-dir/x\n"));
        assert!(
            err.contains(&format!("server.{key}"))
                && err.contains("directory /nonexistent-sluice-dir does not exist"),
            "{err}"
        );
    }
}

/// A config with `server` and `usage` sections `extra` (YAML lines at the top level).
fn with(extra: &str) -> String {
    format!("listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: {{u: {{url: http://127.0.0.1:9}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\n{extra}")
}

#[test]
fn files_sluice_writes_must_be_files_of_their_kind() {
    let dir = std::env::temp_dir().join(format!("sluice-written-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let regular = dir.join("regular");
    std::fs::write(&regular, "keep me").unwrap();
    let d = dir.display();
    let long = format!("{d}/{}", "s".repeat(120));
    for (extra, key, says) in [
        ("server: {pid_file: ''}".to_string(), "server.pid_file", "is empty"),
        (format!("server: {{pid_file: {d}}}"), "server.pid_file", "not a regular file"),
        (format!("server: {{pid_file: {d}/x/}}"), "server.pid_file", "names a directory"),
        ("server: {upgrade_sock: ''}".into(), "server.upgrade_sock", "is empty"),
        (format!("server: {{upgrade_sock: {d}}}"), "server.upgrade_sock", "not a socket"),
        (
            format!("server: {{upgrade_sock: {}}}", regular.display()),
            "server.upgrade_sock",
            "not a socket",
        ),
        (format!("server: {{upgrade_sock: {long}}}"), "server.upgrade_sock", "longer"),
        ("usage: {ledger: /dev/null}".into(), "usage.ledger", "not a regular file"),
        (
            format!("server: {{pid_file: {d}/same}}\nusage: {{ledger: {d}/same}}"),
            "usage.ledger",
            "is also server.pid_file",
        ),
        (
            format!("server: {{pid_file: {d}/l.1}}\nusage: {{ledger: {d}/l, rotate_bytes: 100000, keep: 2}}"),
            "usage.ledger",
            "is also server.pid_file",
        ),
    ] {
        let err = error_of(&with(&extra));
        assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&regular).unwrap(), "keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_config_file_sluice_would_overwrite_is_refused() {
    let dir = std::env::temp_dir().join(format!("sluice-self-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.yaml");
    std::fs::write(
        &path,
        with(&format!("server: {{pid_file: {}}}\n", path.display())),
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("server.pid_file") && err.contains("the config file"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_path_prefix_no_request_can_match_is_named() {
    for (prefix, says) in [
        ("/v1/%61dmin", "\"/v1/admin\""),
        ("/v1//chat", "\"/v1/chat\""),
        ("/v1/../x", "`..` segment"),
        ("/v1/./x", "`..` segment"),
        ("/v1/%2e%2e/x", "`..` segment"),
        ("/v1?x", "never the query"),
        ("/v1#x", "never the query"),
    ] {
        let err = error_of(&format!("listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: {{u: {{url: http://127.0.0.1:9}}}}\nroutes: [{{path_prefix: \"{prefix}\", upstream: u}}]\n"));
        assert!(
            err.contains("routes[0].path_prefix") && err.contains(says),
            "{prefix}: {err}"
        );
    }
    for prefix in [
        "/",
        "/v1/",
        "/v1/.well-known",
        "/a%25b",
        "/v1/chat/completions",
    ] {
        Config::from_yaml(&format!("listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: {{u: {{url: http://127.0.0.1:9}}}}\nroutes: [{{path_prefix: \"{prefix}\", upstream: u}}]\n")).unwrap();
    }
}

#[test]
fn listeners_whose_addresses_overlap_are_named() {
    let config = |listen: &str, admin: &str| {
        format!("listen: [{listen}]\nadmin: {admin}\nupstreams: {{u: {{url: http://127.0.0.1:9}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\n")
    };
    for (listen, admin, key) in [
        (
            "{addr: 0.0.0.0:8080}, {addr: 127.0.0.1:8080}",
            "127.0.0.1:9090",
            "listen[1].addr",
        ),
        ("{addr: 0.0.0.0:8080}", "127.0.0.1:8080", "admin"),
        (
            "{addr: \"[::]:8080\"}, {addr: \"[::1]:8080\"}",
            "127.0.0.1:9090",
            "listen[1].addr",
        ),
        (
            "{addr: 127.0.0.1:8080}, {addr: 127.0.0.1:8080}",
            "127.0.0.1:9090",
            "listen[1].addr",
        ),
    ] {
        let err = error_of(&config(listen, admin));
        assert!(
            err.contains(key) && err.contains("overlaps"),
            "{listen} {admin}: {err}"
        );
    }
    // `[::]` takes IPv4 as well only where the host binds IPv6 sockets dual-stack.
    let both = "{addr: \"[::]:8080\"}, {addr: 0.0.0.0:8080}";
    assert_eq!(
        Config::from_yaml(&config(both, "127.0.0.1:9090")).is_err(),
        super::dual_stack()
    );
    for (listen, admin) in [
        ("{addr: 127.0.0.1:0}, {addr: 127.0.0.1:0}", "127.0.0.1:0"),
        (
            "{addr: 127.0.0.1:8080}, {addr: 127.0.0.2:8080}",
            "127.0.0.1:9090",
        ),
        (
            "{addr: \"[::1]:8080\"}, {addr: 127.0.0.1:8080}",
            "127.0.0.1:9090",
        ),
    ] {
        Config::from_yaml(&config(listen, admin)).unwrap();
    }
}

#[test]
fn redis_backend_settings_that_would_fail_at_start_are_named() {
    let config = |backend: &str| {
        format!("listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: {{u: {{url: http://127.0.0.1:9}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\nlimits:\n  backend: {{ {backend} }}\n")
    };
    for (backend, key, says) in [
        (
            "redis: \"redis://127.0.0.1:6379\", ca_file: /etc/hostname",
            "limits.backend.ca_file",
            "only for a rediss:// URL",
        ),
        (
            "redis: \"rediss://127.0.0.1:6379\", ca_file: /nonexistent/ca.pem",
            "limits.backend.ca_file",
            "/nonexistent/ca.pem",
        ),
        (
            "redis: \"redis://127.0.0.1:6379\", lease_ttl: 1s, timeout: 500ms",
            "limits.backend.lease_ttl",
            "3 × timeout",
        ),
        (
            "redis: \"redis://127.0.0.1:notaport\"",
            "limits.backend.redis",
            "invalid Redis URL",
        ),
    ] {
        let err = error_of(&config(backend));
        assert!(err.contains(key) && err.contains(says), "{backend}: {err}");
    }
    // TLS to Redis is built in.
    Config::from_yaml(&config("redis: \"rediss://:secret@127.0.0.1:6380/0\"")).unwrap();
}

#[test]
fn a_zero_connect_timeout_is_named() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams:\n  u:\n    url: http://api.example\n    connect_timeout: 0s\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(
        err.contains("upstreams.u.connect_timeout") && err.contains("more than 0"),
        "{err}"
    );
}

#[test]
fn an_http2_ping_without_http2_or_too_often_is_named() {
    let config = |keys: &str| {
        format!("listen: [{{addr: 127.0.0.1:8080}}]\nupstreams:\n  u:\n    url: http://api.example\n{keys}routes: [{{path_prefix: /, upstream: u}}]\n")
    };
    let err = error_of(&config("    http2_ping: 10s\n"));
    assert!(
        err.contains("upstreams.u.http2_ping")
            && err.contains("http2: true")
            && err.contains("(line 5)"),
        "{err}"
    );
    let err = error_of(&config("    http2: true\n    http2_ping: 200ms\n"));
    assert!(
        err.contains("upstreams.u.http2_ping") && err.contains("at least 1s"),
        "{err}"
    );
    let config = Config::from_yaml(&config("    http2: true\n    http2_ping: 10s\n"));
    assert_eq!(
        config.unwrap().upstreams["u"].http2_ping,
        Some(std::time::Duration::from_secs(10))
    );
}

#[test]
fn a_key_given_twice_is_named_with_its_second_line() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams:\n  u: {url: http://127.0.0.1:9}\n  u: {url: http://127.0.0.1:10}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(
        err.contains("upstreams.u") && err.contains("twice") && err.contains("line 4"),
        "{err}"
    );
}

#[test]
fn two_listeners_on_one_address_and_absurd_thread_counts_are_refused() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nadmin: 127.0.0.1:8080\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(
        err.contains("admin") && err.contains("listen[0].addr"),
        "{err}"
    );
    let err = error_of("listen: [{addr: 127.0.0.1:8080}, {addr: 127.0.0.1:8080}]\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(err.contains("listen[1].addr"), "{err}");
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nserver: {threads: 100000000000}\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: /, upstream: u}]\n");
    assert!(err.contains("server.threads"), "{err}");
}

#[test]
fn a_line_is_found_past_comments_quotes_and_a_byte_order_mark() {
    let base = "listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: http://x}}\nroutes:\n";
    // A comment that mentions the key, above the key.
    let err = error_of(&format!(
        "{base}  # note: heartbeat: sometimes\n  - path_prefix: /\n    upstream: u\n    heartbeat: 1x\n"
    ));
    assert!(err.contains("(line 7)"), "{err}");
    // A quoted key.
    let err = error_of(&format!(
        "{base}  - path_prefix: /\n    upstream: u\n    \"heartbeat\": 1x\n"
    ));
    assert!(err.contains("(line 6)"), "{err}");
    let config = format!("{}{base}  - {{path_prefix: /, upstream: u}}\n", '\u{feff}');
    assert!(Config::from_yaml(&config).is_ok());
    let err = error_of(&format!(
        "{base}  - {{path_prefix: /, upstream: u}}\nusage: {{rotate_bytes: 1000, keep: 0}}\n"
    ));
    assert!(err.contains("usage.keep"), "{err}");
}

#[test]
fn framing_headers_cannot_be_configured() {
    for header in [
        "Connection",
        "content-length",
        "Transfer-Encoding",
        "upgrade",
    ] {
        let err = error_of(&format!(
            "listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: {{u: {{url: http://x, headers: {{{header}: x}}}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\n"
        ));
        assert!(
            err.contains(&format!("upstreams.u.headers.{header}")),
            "{err}"
        );
        assert!(err.contains("cannot be configured"), "{err}");
    }
}

#[test]
fn client_timeouts_are_checked() {
    let config = |server: &str| {
        format!("listen: [{{addr: 127.0.0.1:8080}}]\nserver: {{{server}}}\nupstreams: {{u: {{url: http://x}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\n")
    };
    for bad in ["500ms", "1500ms"] {
        let err = error_of(&config(&format!("keepalive_timeout: {bad}")));
        assert!(
            err.contains("server.keepalive_timeout") && err.contains("whole number of seconds"),
            "{err}"
        );
    }
    let err = error_of(&config("handshake_timeout: 0s"));
    assert!(err.contains("server.handshake_timeout"), "{err}");
    let err = error_of(&config("request_body_timeout: 0s"));
    assert!(err.contains("server.request_body_timeout"), "{err}");
    let err = error_of(&config("grace_period: 500ms"));
    assert!(err.contains("server.grace_period"), "{err}");
    let ok = Config::from_yaml(&config("keepalive_timeout: 75s, handshake_timeout: 10s"));
    let ok = ok.unwrap();
    assert_eq!(ok.server.keepalive_timeout.as_secs(), 75);
    assert_eq!(ok.server.handshake_timeout.as_secs(), 10);
}

/// `check` refuses a ledger path exactly when the ledger refuses to open it at start, and
/// creates nothing.
#[cfg(unix)]
#[test]
fn a_ledger_path_is_refused_by_check_as_the_ledger_refuses_it_at_start() {
    use crate::usage::ledger::{Ledger, LedgerConfig};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ =
                fs::set_permissions(self.0.join("read_only"), fs::Permissions::from_mode(0o700));
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let dir =
        Dir(std::env::temp_dir().join(format!("sluice-config-ledger-{}", std::process::id())));
    let _ = fs::remove_dir_all(&dir.0);
    let d = dir.0.display();
    fs::create_dir_all(dir.0.join("a_dir")).unwrap();
    fs::create_dir_all(dir.0.join("read_only")).unwrap();
    fs::set_permissions(dir.0.join("read_only"), fs::Permissions::from_mode(0o500)).unwrap();
    fs::write(dir.0.join("a_file"), "").unwrap();
    fs::write(dir.0.join("existing.jsonl"), "{}\n").unwrap();
    fs::write(dir.0.join("write_only.jsonl"), "").unwrap();
    fs::set_permissions(
        dir.0.join("write_only.jsonl"),
        fs::Permissions::from_mode(0o200),
    )
    .unwrap();
    // The path, and whether the ledger opens it (None: only when running as root).
    let cases = [
        (format!("{d}/usage.jsonl"), Some(true)),
        (format!("{d}/existing.jsonl"), Some(true)),
        (format!("{d}/a_dir"), Some(false)),
        (format!("{d}/a_dir/"), Some(false)),
        (format!("{d}/not_yet/"), Some(false)),
        (format!("{d}/missing/usage.jsonl"), Some(false)),
        (format!("{d}/a_file/usage.jsonl"), Some(false)),
        (String::new(), Some(false)),
        (format!("{d}/read_only/usage.jsonl"), None),
        (format!("{d}/write_only.jsonl"), None),
    ];
    for (path, opens) in cases {
        let checked = Config::from_yaml(&format!(
            "listen: [{{addr: 127.0.0.1:8080}}]\nupstreams: {{u: {{url: http://x}}}}\nroutes: [{{path_prefix: /, upstream: u}}]\nusage:\n  ledger: \"{path}\"\n"
        ));
        if path.ends_with("/usage.jsonl") {
            assert!(fs::metadata(&path).is_err(), "{path}: check created it");
        }
        let opened = Ledger::open(LedgerConfig::new(&path)).map(|ledger| ledger.shutdown());
        if let Some(opens) = opens {
            assert_eq!(opened.is_ok(), opens, "{path}: {opened:?}");
        }
        match checked {
            Ok(_) => assert!(
                opened.is_ok(),
                "{path}: check accepted, start refused: {opened:?}"
            ),
            Err(err) => {
                let err = err.to_string();
                assert!(
                    opened.is_err(),
                    "{path}: check refused, start accepted: {err}"
                );
                assert!(
                    err.contains("usage.ledger") && err.contains("(line 5)"),
                    "{path}: {err}"
                );
            }
        }
    }
}

#[test]
fn path_prefix_must_be_absolute() {
    let err = error_of("listen: [{addr: 127.0.0.1:8080}]\nupstreams: {u: {url: http://x}}\nroutes: [{path_prefix: v1, upstream: u}]\n");
    assert!(err.contains("routes[0].path_prefix"), "{err}");
}
