//! The command line: `sluice check` names the offending key; the default config streams the
//! built-in demo upstream out of the box.

mod support;

use support::{check_config, Client, Sluice, TempDir};

const VALID: &str = "listen: [{addr: 127.0.0.1:18080}]\nupstreams: {u: {url: http://127.0.0.1:9}}\nroutes:\n  - path_prefix: /\n    upstream: u\n";

#[test]
fn check_accepts_valid_config_and_shipped_configs() {
    let (ok, out) = check_config(VALID);
    assert!(ok, "{out}");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/conf/sluice.yaml")];
    for entry in std::fs::read_dir(format!("{root}/conf/examples")).unwrap() {
        let path = entry.unwrap().path();
        // The example keys file is not a config (the auth module's tests read it).
        if path.file_name().is_some_and(|n| n != "keys.yaml") {
            files.push(path.display().to_string());
        }
    }
    let dir = TempDir::new();
    for file in files {
        // `check` refuses a ledger whose directory is missing (/var/lib/sluice here): the
        // ledger goes to a directory this test owns.
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("/var/lib/sluice/", &format!("{}/", dir.path.display()))
            .replace(
                "/tmp/sluice-usage.jsonl",
                &format!("{}/usage.jsonl", dir.path.display()),
            );
        let copy = dir.path.join("config.yaml");
        std::fs::write(&copy, text).unwrap();
        let output = std::process::Command::new(support::sluice_bin())
            .arg("check")
            .arg("-c")
            .arg(&copy)
            .env("OPENAI_API_KEY", "sk-test")
            .env("ANTHROPIC_API_KEY", "sk-ant-test")
            .env("GEMINI_API_KEY", "gm-test")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn check_names_the_offending_key() {
    let cases = [
        (
            format!("{VALID}    idle_timeout: 30x\n"),
            "routes[0].idle_timeout",
        ),
        (format!("{VALID}    idel_timeout: 30s\n"), "idel_timeout"),
        (
            VALID.replace("upstream: u", "upstream: nope"),
            "routes[0].upstream",
        ),
        (
            VALID.replace("http://127.0.0.1:9", "ftp://x"),
            "upstreams.u.url",
        ),
        (format!("{VALID}bogus: true\n"), "bogus"),
        (
            VALID.replace("http://127.0.0.1:9", "${SLUICE_TEST_UNSET_VAR}"),
            "SLUICE_TEST_UNSET_VAR",
        ),
    ];
    for (yaml, key) in cases {
        let (ok, out) = check_config(&yaml);
        assert!(!ok, "accepted a bad config:\n{yaml}");
        assert!(out.contains(key), "error does not name {key}: {out}");
    }
    let (_, out) = check_config(&format!("{VALID}    idle_timeout: 30x\n"));
    assert!(
        out.contains("line 6"),
        "error does not give the line: {out}"
    );
}

/// Runs `sluice check` on `yaml` with `vars` added to the environment.
fn check_with_env(yaml: &str, vars: &[(&str, &str)]) -> (bool, String) {
    let dir = TempDir::new();
    let path = dir.path.join("check.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = std::process::Command::new(support::sluice_bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stderr).to_string();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    (output.status.success(), text)
}

/// An environment value is a value, whatever YAML it looks like; a variable cannot be a key.
#[test]
fn check_takes_an_environment_value_as_it_is() {
    let yaml = "listen: [{addr: 127.0.0.1:18080}]\nupstreams:\n  u:\n    url: ${URL}\n    headers:\n      authorization: Bearer ${KEY}   # ${UNSET_IN_A_COMMENT}\n      x-quoted: \"${KEY}\"\nroutes: [{path_prefix: /, upstream: ${UPSTREAM}}]\n";
    let vars = [
        ("URL", "http://127.0.0.1:9"),
        ("UPSTREAM", "u"),
        ("KEY", "sk: \"1\" #2 {x} *y"),
    ];
    let (ok, out) = check_with_env(yaml, &vars);
    assert!(ok, "{out}");
    // A value with a line break is refused as a header value, not read as more YAML.
    let (ok, out) = check_with_env(yaml, &[vars[0], vars[1], ("KEY", "a\nbogus: 1")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("upstreams.u.headers.authorization")
            && out.contains("not a valid header value"),
        "{out}"
    );
    let (ok, out) = check_with_env(
        &yaml.replace("  u:\n", "  ${NAME}:\n"),
        &[vars[0], vars[1], vars[2], ("NAME", "u")],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("${NAME}") && out.contains("key") && out.contains("line 3"),
        "{out}"
    );
}

/// `check` refuses a ledger that Sluice could not open at start, naming the key and its line.
#[test]
fn check_refuses_a_ledger_sluice_could_not_open() {
    let dir = TempDir::new();
    let config = |ledger: &std::path::Path| {
        format!(
            "{VALID}usage:\n  durability: async\n  ledger: {}\n",
            ledger.display()
        )
    };
    let (ok, out) = check_config(&config(&dir.path.join("usage.jsonl")));
    assert!(ok, "{out}");
    for (ledger, says) in [
        (dir.path.clone(), "is a directory"),
        (dir.path.join("missing/usage.jsonl"), "does not exist"),
    ] {
        let (ok, out) = check_config(&config(&ledger));
        assert!(!ok, "accepted {}", ledger.display());
        assert!(
            out.contains("usage.ledger") && out.contains(says) && out.contains("(line 8)"),
            "{out}"
        );
    }
    // A directory this user may not write to (root may write anywhere: check as `nobody`),
    // holding a ledger file it may write: opened, but never rotated.
    let read_only = dir.path.join("read_only");
    std::fs::create_dir(&read_only).unwrap();
    let existing = read_only.join("existing.jsonl");
    std::fs::write(&existing, "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o666)).unwrap();
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let check_unprivileged = |yaml: String| {
        let config_file = dir.path.join("check.yaml");
        std::fs::write(&config_file, yaml).unwrap();
        let mut command = if root {
            let mut command = std::process::Command::new("setpriv");
            command
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(support::sluice_bin());
            command
        } else {
            std::process::Command::new(support::sluice_bin())
        };
        let output = command
            .arg("check")
            .arg("-c")
            .arg(&config_file)
            .output()
            .ok()?;
        let out = String::from_utf8_lossy(&output.stderr).into_owned();
        Some((output.status.success(), out))
    };
    let Some((ok, out)) = check_unprivileged(config(&read_only.join("usage.jsonl"))) else {
        eprintln!("skipped the read-only directory: setpriv is not installed");
        return;
    };
    assert!(!ok, "{out}");
    assert!(
        out.contains("usage.ledger") && out.contains("cannot create") && out.contains("(line 8)"),
        "{out}"
    );
    let (ok, out) = check_unprivileged(config(&existing)).unwrap();
    assert!(ok, "{out}");
    let rotating = format!("{}  rotate_bytes: 1000000\n", config(&existing));
    let (ok, out) = check_unprivileged(rotating).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("usage.ledger") && out.contains("cannot rotate") && out.contains("(line 8)"),
        "{out}"
    );
}

#[test]
fn help_documents_run_and_check() {
    let output = std::process::Command::new(support::sluice_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("check") && help.contains("--config"),
        "{help}"
    );
}

#[test]
fn default_config_streams_demo_tokens() {
    let default =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sluice.yaml")).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let dir = TempDir::new();
    let yaml = default
        .replace("127.0.0.1:8080", &addr.to_string())
        .replace("127.0.0.1:9090", &admin.to_string())
        .replace(
            "/tmp/sluice.pid",
            &dir.path.join("pid").display().to_string(),
        )
        .replace(
            "/tmp/sluice_upgrade.sock",
            &dir.path.join("sock").display().to_string(),
        )
        .replace(
            "/tmp/sluice-usage.jsonl",
            &dir.path.join("usage.jsonl").display().to_string(),
        );
    let ledger = dir.path.join("usage.jsonl");
    assert_ne!(
        yaml, default,
        "the default config's addresses changed: update this test"
    );
    let sluice = Sluice::start_with_config(&yaml, addr, admin, dir);
    let mut client = Client::connect(sluice.addr);
    client.post_json(
        "/v1/chat/completions",
        r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    let head = client.read_head();
    assert_eq!(head.status, 200);
    assert!(head
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let chunks = client.read_chunks();
    assert!(
        chunks.len() > 10,
        "tokens arrive one by one: {} chunks",
        chunks.len()
    );
    let spread = chunks.last().unwrap().at - chunks[0].at;
    assert!(
        spread.as_millis() > 500,
        "tokens arrived all at once ({spread:?})"
    );
    let body: String = chunks
        .iter()
        .map(|c| String::from_utf8(c.data.clone()).unwrap())
        .collect();
    // Usage was asked for on the client's behalf: its chunk is not shown, the comment is.
    assert!(!body.contains("\"usage\""), "{body}");
    let tail = body.rsplit("data: [DONE]\n\n").next().unwrap();
    assert!(tail.starts_with(": sluice-usage {"), "{tail}");
    let record = std::fs::read_to_string(&ledger).unwrap();
    let record: serde_json::Value = serde_json::from_str(record.lines().next().unwrap()).unwrap();
    assert_eq!(record["outcome"], "completed");
    assert_eq!(record["usage_source"], "provider");
    assert_eq!(record["model"], "demo");
}

/// An address to listen on that another process holds stops Sluice at start, with the address
/// named and a failing exit status, after waiting a moment for it as nginx does: it ran with its
/// admin listener answering health checks and no proxy listener at all.
#[test]
fn a_listen_address_in_use_stops_sluice_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new();
    let config = dir.path.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: [{{addr: {addr}}}]\nadmin: 127.0.0.1:{admin}\nserver:\n  pid_file: {pid}\n  upgrade_sock: {sock}\nupstreams: {{u: {{url: http://127.0.0.1:9}}}}\nroutes:\n  - path_prefix: /\n    upstream: u\n",
            admin = support::free_port(),
            pid = dir.path.join("sluice.pid").display(),
            sock = dir.path.join("upgrade.sock").display(),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(support::sluice_bin())
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("still running with its address taken");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(
        !dir.path.join("sluice.pid").exists(),
        "a PID file was left behind"
    );
    drop(taken);
}

/// `sluice -d`: the parent writes the child's PID and exits 0; the child serves, and its own log
/// (stderr, written by a thread the child starts after the fork) still reaches stderr.
#[test]
fn a_daemon_serves_and_logs_after_its_fork() {
    let upstream = support::Upstream::start(|_| {
        vec![
            support::Step::sse_head(),
            support::Step::chunk("data: [DONE]\n\n"),
            support::Step::End,
        ]
    });
    let dir = TempDir::new();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let pid_file = dir.path.join("sluice.pid");
    let config = dir.path.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  - addr: {addr}\nserver:\n  pid_file: {}\n  upgrade_sock: {}\nupstreams:\n  up:\n    url: {}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: openai\n",
            pid_file.display(),
            dir.path.join("upgrade.sock").display(),
            upstream.url()
        ),
    )
    .unwrap();
    let stderr = dir.path.join("stderr.log");
    let parent = std::process::Command::new(support::sluice_bin())
        .arg("-d")
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .status()
        .unwrap();
    assert!(parent.success());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    struct Killed(i32);
    impl Drop for Killed {
        fn drop(&mut self) {
            // SAFETY: a plain signal to the daemon this test started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _daemon = Killed(pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon does not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A body whose `stream_options` is no object: served, with a warning in the log.
    let mut client = Client::connect(addr);
    client.post_json(
        "/v1/chat/completions",
        r#"{"model":"m","stream":true,"stream_options":5}"#,
    );
    assert_eq!(client.read_response().status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&stderr).unwrap();
        if log.contains("include_usage not added") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no log line: {log:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
