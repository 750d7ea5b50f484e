//! Test support: the real `sluice` binary on loopback, a scripted upstream that records what it
//! sees (send times, when its connection closed), and a raw HTTP/1.1 client that timestamps
//! every chunk it receives.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod h2;
pub mod redis;
pub mod tls;
pub mod upstream;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use client::Client;
pub use upstream::{Step, Upstream};

pub fn free_port() -> u16 {
    redis::free_port()
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// A running `sluice` process, killed when dropped.
pub struct Sluice {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    dir: std::sync::Arc<TempDir>,
}

impl Sluice {
    /// Starts Sluice with `routes_and_upstreams` (YAML for the `upstreams:` and `routes:` keys,
    /// and optionally `usage:`); listener, admin and server settings are filled in with free
    /// ports, and the usage ledger goes to `ledger_path()` unless `usage:` is given.
    pub fn start(routes_and_upstreams: &str) -> Sluice {
        Sluice::start_with_output(routes_and_upstreams, Stdio::null(), Stdio::null())
    }

    /// Like [`Sluice::start`], with HTTP/2 cleartext (prior knowledge) on the listener.
    pub fn start_h2c(routes_and_upstreams: &str) -> Sluice {
        Sluice::start_h2c_with_output(routes_and_upstreams, Stdio::null())
    }

    /// Like [`Sluice::start_h2c`], with stdout (the access log) going where given.
    pub fn start_h2c_with_output(routes_and_upstreams: &str, stdout: Stdio) -> Sluice {
        Sluice::start_with_listener(
            "    h2c: true\n",
            routes_and_upstreams,
            stdout,
            Stdio::null(),
            &[],
        )
    }

    /// Like [`Sluice::start`], with these environment variables set for the process.
    pub fn start_with_env(routes_and_upstreams: &str, env: &[(&str, &Path)]) -> Sluice {
        Sluice::start_with_listener("", routes_and_upstreams, Stdio::null(), Stdio::null(), env)
    }

    /// Like [`Sluice::start`], with stdout (the access log) and stderr going where given.
    pub fn start_with_output(routes_and_upstreams: &str, stdout: Stdio, stderr: Stdio) -> Sluice {
        Sluice::start_with_listener("", routes_and_upstreams, stdout, stderr, &[])
    }

    fn start_with_listener(
        listener_keys: &str,
        routes_and_upstreams: &str,
        stdout: Stdio,
        stderr: Stdio,
        env: &[(&str, &Path)],
    ) -> Sluice {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = TempDir::new();
        let mut yaml = format!(
            "listen:\n  - addr: {addr}\n{listener_keys}admin: {admin}\nserver:\n  threads: 2\n  pid_file: {pid}\n  upgrade_sock: {sock}\n{routes_and_upstreams}",
            pid = dir.path.join("sluice.pid").display(),
            sock = dir.path.join("upgrade.sock").display(),
        );
        if !routes_and_upstreams.contains("\nusage:") {
            yaml.push_str(&format!(
                "usage:\n  ledger: {}\n",
                dir.path.join("usage.jsonl").display()
            ));
        }
        Sluice::spawn(&yaml, addr, admin, dir, (stdout, stderr), env)
    }

    pub fn start_with_config(
        yaml: &str,
        addr: SocketAddr,
        admin: SocketAddr,
        dir: TempDir,
    ) -> Sluice {
        Sluice::start_with_config_and_output(yaml, addr, admin, dir, Stdio::null())
    }

    /// Like [`Sluice::start_with_config`], with stdout (the access log) going where given.
    pub fn start_with_config_and_output(
        yaml: &str,
        addr: SocketAddr,
        admin: SocketAddr,
        dir: TempDir,
        stdout: Stdio,
    ) -> Sluice {
        Sluice::spawn(yaml, addr, admin, dir, (stdout, Stdio::null()), &[])
    }

    fn spawn(
        yaml: &str,
        addr: SocketAddr,
        admin: SocketAddr,
        dir: TempDir,
        (stdout, stderr): (Stdio, Stdio),
        env: &[(&str, &Path)],
    ) -> Sluice {
        let config = dir.path.join("sluice.yaml");
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new(sluice_bin())
            .arg("-c")
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start sluice");
        let sluice = Sluice {
            child,
            addr,
            admin,
            dir: std::sync::Arc::new(dir),
        };
        sluice.wait_ready();
        sluice
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(self.addr).is_ok() && TcpStream::connect(self.admin).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "sluice did not start listening on {} within 20 s",
            self.addr
        );
    }

    /// The config file it was started with (`start_upgrade` starts the next process on it).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path.join("sluice.yaml")
    }

    /// The usage ledger file (when the config did not set its own).
    pub fn ledger_path(&self) -> PathBuf {
        self.dir.path.join("usage.jsonl")
    }

    /// Starts a new process on the same config with `-u` (stdout to `stdout`): it takes over
    /// the listening sockets when this one gets SIGQUIT. Returns once it waits for them.
    pub fn start_upgrade(&self) -> Sluice {
        let sock = self.dir.path.join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(sluice_bin())
            .arg("-u")
            .arg("-c")
            .arg(self.dir.path.join("sluice.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sluice -u");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "sluice -u never opened {sock:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Sluice {
            child,
            addr: self.addr,
            admin: self.admin,
            dir: self.dir.clone(),
        }
    }

    /// Waits up to `wait` for the process to exit by itself.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The usage records in the ledger now.
    pub fn ledger(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.ledger_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a ledger line is JSON"))
            .collect()
    }

    /// Waits until the ledger holds `n` records and returns them.
    pub fn wait_ledger(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let records = self.ledger();
            if records.len() >= n {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "ledger has {} records, expected {n}",
                records.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's stdout, when it was started with `Stdio::piped()`.
    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.child.stdout.take().expect("stdout was piped")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The admin `/metrics` text.
    pub fn metrics(&self) -> String {
        let mut client = Client::connect(self.admin);
        let response = client.get("/metrics");
        assert_eq!(response.status, 200);
        String::from_utf8(response.body).unwrap()
    }

    /// The value of one metric series, e.g. `sluice_streams_finished_total{outcome="completed",route="/"}`
    /// (labels in the order `/metrics` writes them; a series not there reads 0).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Waits until a metric reaches `value` (metrics are written as a request ends, which can be
    /// just after the client saw the end).
    pub fn wait_metric(&self, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.metric(series);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {now}, expected {value}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs `sluice check -c` on a config text; returns (success, stderr + stdout).
pub fn check_config(yaml: &str) -> (bool, String) {
    let dir = TempDir::new();
    let path = dir.path.join("check.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = Command::new(sluice_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stderr).to_string();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    (output.status.success(), text)
}

/// Reads everything a stream has until EOF (used for raw checks).
pub fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// The first access-log line written to `path` (as a request ends), within 5 s.
pub fn first_access_log_line(path: &std::path::Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = log.lines().next() {
            return serde_json::from_str(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no access-log line");
        std::thread::sleep(Duration::from_millis(20));
    }
}
