//! The targets a scenario runs against: the upstream itself (direct, the reference), Sluice with
//! inspection on and off, another build of Sluice to compare with (`SLUICE_LOAD_BASELINE`), and
//! nginx and HAProxy configured as an operator would for SSE.

use crate::client::Dial;
use crate::options::Scenario;
use crate::process::{find_program, output, Group, TempDir};
use crate::procfs;
use crate::tls::{Files, Tls};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    /// `baseline`: the build named by `SLUICE_LOAD_BASELINE` instead of the tree's.
    /// `durable_end: false`: the ledger's `async` durability (a stream's end does not wait for
    /// its record's fsync), to see what the default `before_end` costs a stream.
    Sluice {
        inspect: bool,
        limits: Limits,
        baseline: bool,
        durable_end: bool,
    },
    Nginx,
    Haproxy,
}

/// Sluice's per-user stream limits, to measure what admission costs a stream's start: off,
/// counted in the process, or leased in Redis (a `redis-server` the harness starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    Off,
    Local,
    Redis,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Sluice { baseline: true, .. } => "sluice-baseline",
            Kind::Sluice {
                durable_end: false, ..
            } => "sluice-async",
            Kind::Sluice {
                inspect: true,
                limits: Limits::Off,
                ..
            } => "sluice",
            Kind::Sluice {
                inspect: false,
                limits: Limits::Off,
                ..
            } => "sluice-noinspect",
            Kind::Sluice {
                limits: Limits::Local,
                ..
            } => "sluice-limits-local",
            Kind::Sluice {
                limits: Limits::Redis,
                ..
            } => "sluice-limits-redis",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    pub fn all() -> [Kind; 9] {
        let sluice = |inspect, limits| Kind::Sluice {
            inspect,
            limits,
            baseline: false,
            durable_end: true,
        };
        [
            Kind::Direct,
            sluice(true, Limits::Off),
            Kind::Sluice {
                inspect: true,
                limits: Limits::Off,
                baseline: true,
                durable_end: true,
            },
            sluice(false, Limits::Off),
            Kind::Sluice {
                inspect: true,
                limits: Limits::Off,
                baseline: false,
                durable_end: false,
            },
            sluice(true, Limits::Local),
            sluice(true, Limits::Redis),
            Kind::Nginx,
            Kind::Haproxy,
        ]
    }

    /// The limits and durability variants exist to measure a stream's start and what a fresh
    /// stream costs: they run the first-byte scenario only.
    pub fn runs(self, scenario: Scenario) -> bool {
        match self {
            Kind::Sluice {
                limits: Limits::Local | Limits::Redis,
                ..
            }
            | Kind::Sluice {
                durable_end: false, ..
            } => scenario == Scenario::FirstByte,
            _ => true,
        }
    }
}

/// Everything a proxy target needs to (re)start.
pub struct Launch {
    pub upstream: SocketAddr,
    pub sluice: PathBuf,
    /// `SLUICE_LOAD_BASELINE`: another `sluice` binary (e.g. a build of the main branch), run
    /// as `sluice-baseline` next to the tree's, so that a change is measured against what it
    /// changes in one interleaved run.
    pub baseline: Option<PathBuf>,
    /// The descriptor limit the proxies inherit (the harness raised its own soft limit).
    pub nofile: u64,
    /// `SLUICE_LOAD_TLS=1`: the proxies terminate TLS for the client.
    pub tls: Option<Arc<Tls>>,
    /// `SLUICE_LOAD_H2=1`: the proxies take HTTP/2 from the client.
    pub h2: bool,
}

pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub version: String,
    program: Option<PathBuf>,
    process: Option<Group>,
    /// The `redis-server` of `sluice-limits-redis`.
    redis: Option<(Group, SocketAddr)>,
    dir: Option<TempDir>,
    lifetimes: u32,
    /// The client's TLS for a proxy (`SLUICE_LOAD_TLS`); `direct` is always plain.
    tls: Option<TlsConnector>,
    /// The client talks HTTP/2 to it (`SLUICE_LOAD_H2`); `direct` always HTTP/1.1.
    h2: bool,
    /// What each finished process left behind (Sluice's metrics, error-log lines).
    pub diagnostics: Vec<Value>,
}

impl Target {
    /// Starts the target, or says why it is skipped.
    pub fn start(kind: Kind, launch: &Launch) -> Result<Target, String> {
        let program = match kind {
            Kind::Direct => None,
            Kind::Sluice {
                baseline: false, ..
            } => Some(launch.sluice.clone()),
            Kind::Sluice { baseline: true, .. } => match &launch.baseline {
                Some(path) if path.is_file() => Some(path.clone()),
                Some(path) => return Err(format!("SLUICE_LOAD_BASELINE: no file {}", path.display())),
                None => {
                    return Err("not selected (set SLUICE_LOAD_BASELINE to another sluice binary to compare with)".into())
                }
            },
            Kind::Nginx => {
                Some(find_program("nginx").ok_or("nginx is not installed (not on PATH)")?)
            }
            Kind::Haproxy => {
                Some(find_program("haproxy").ok_or("haproxy is not installed (not on PATH)")?)
            }
        };
        let version = match (kind, &program) {
            (Kind::Direct, _) | (_, None) => "harness upstream".to_string(),
            (Kind::Haproxy, Some(p)) => output(&p.to_string_lossy(), &["-v"])
                .and_then(|v| v.lines().next().map(str::to_string))
                .unwrap_or_default(),
            (Kind::Nginx, Some(p)) => output(&p.to_string_lossy(), &["-v"]).unwrap_or_default(),
            (Kind::Sluice { .. }, Some(p)) => {
                output(&p.to_string_lossy(), &["--version"]).unwrap_or_default()
            }
        };
        let dir = match kind {
            Kind::Direct => None,
            _ => Some(TempDir::new(kind.name())?),
        };
        let redis = match kind {
            Kind::Sluice {
                limits: Limits::Redis,
                ..
            } => Some(start_redis(dir.as_ref().expect("a proxy has a directory"))?),
            _ => None,
        };
        let proxy = kind != Kind::Direct;
        let mut target = Target {
            kind,
            addr: launch.upstream,
            version,
            program,
            process: None,
            redis,
            dir,
            lifetimes: 0,
            // Direct is the harness upstream: plain HTTP/1.1 whatever the run asks of proxies.
            tls: launch.tls.as_ref().filter(|_| proxy).map(|t| t.connector()),
            h2: launch.h2 && proxy,
            diagnostics: Vec::new(),
        };
        target.spawn(launch)?;
        Ok(target)
    }

    /// How the client reaches the target now.
    pub fn dial(&self) -> Dial {
        Dial {
            addr: self.addr,
            tls: self.tls.clone(),
            h2: self.h2,
        }
    }

    pub fn is_proxy(&self) -> bool {
        self.kind != Kind::Direct
    }

    /// The proxy's processes now (empty for direct).
    pub fn pids(&self) -> Vec<u32> {
        self.process
            .as_ref()
            .map(|p| procfs::group_pids(p.pgid))
            .unwrap_or_default()
    }

    /// A fresh process on new ports (the memory scenario measures from a clean heap).
    pub fn restart(&mut self, launch: &Launch) -> Result<(), String> {
        if self.is_proxy() {
            self.stop();
            self.spawn(launch)?;
        }
        Ok(())
    }

    /// Stops the process, keeping what it left behind in `diagnostics`.
    pub fn stop(&mut self) {
        if self.process.is_some() {
            let snapshot = self.snapshot();
            self.diagnostics.push(snapshot);
            self.process = None;
        }
    }

    fn spawn(&mut self, launch: &Launch) -> Result<(), String> {
        let (Some(program), Some(dir)) = (self.program.clone(), self.dir.as_ref()) else {
            return Ok(());
        };
        let dir = dir.path.clone();
        let tls = launch.tls.as_ref().map(|t| t.write(&dir)).transpose()?;
        self.lifetimes += 1;
        let stem = format!("{}-{}", self.kind.name(), self.lifetimes);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?)
            .parse()
            .expect("loopback address");
        let (group, admin) = match self.kind {
            Kind::Direct => return Ok(()),
            Kind::Sluice {
                inspect,
                limits,
                durable_end,
                ..
            } => {
                let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?)
                    .parse()
                    .expect("loopback address");
                let conf = dir.join("sluice.yaml");
                let limits = limits_config(limits, self.redis.as_ref().map(|r| r.1));
                write(
                    &conf,
                    &sluice_config(
                        &sluice_listen(addr, tls.as_ref(), launch.h2),
                        admin,
                        launch.upstream,
                        &dir,
                        inspect,
                        durable_end,
                        &limits,
                    ),
                )?;
                let conf = conf.to_string_lossy().into_owned();
                let group = Group::spawn(&program, &["-c", &conf], &dir, &stem, &[])?;
                (group, Some(admin))
            }
            Kind::Nginx => {
                let conf = dir.join("nginx.conf");
                write(
                    &conf,
                    &nginx_config(
                        &nginx_listen(addr, tls.as_ref(), launch.h2),
                        launch.upstream,
                        &dir,
                        launch.nofile,
                    ),
                )?;
                let prefix = format!("{}/", dir.display());
                let conf = conf.to_string_lossy().into_owned();
                let error_log = dir.join("error.log").to_string_lossy().into_owned();
                let args = ["-p", &prefix, "-c", &conf, "-e", &error_log];
                (Group::spawn(&program, &args, &dir, &stem, &[])?, None)
            }
            Kind::Haproxy => {
                let conf = dir.join("haproxy.cfg");
                write(
                    &conf,
                    &haproxy_config(
                        &haproxy_bind(addr, tls.as_ref(), launch.h2),
                        launch.upstream,
                        &dir,
                        launch.nofile,
                    ),
                )?;
                let conf = conf.to_string_lossy().into_owned();
                (
                    Group::spawn(&program, &["-db", "-f", &conf], &dir, &stem, &[])?,
                    None,
                )
            }
        };
        self.process = Some(group);
        self.addr = addr;
        self.wait_ready(addr, admin, &dir.join(format!("{stem}.err")))
    }

    fn wait_ready(
        &mut self,
        addr: SocketAddr,
        admin: Option<SocketAddr>,
        stderr: &Path,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.process.as_mut().and_then(Group::exited) {
                self.process = None;
                return Err(format!(
                    "{} exited at start ({status}): {}",
                    self.kind.name(),
                    tail(stderr)
                ));
            }
            let up = |a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_millis(200));
            if up(addr).is_ok() && admin.is_none_or(|a| up(a).is_ok()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = None;
        Err(format!(
            "{} did not listen on {addr} within 20 s: {}",
            self.kind.name(),
            tail(stderr)
        ))
    }

    /// Sluice's stream outcomes and error counters from `/metrics`, the number of ledger
    /// records, and warning/error lines in every log the process wrote.
    fn snapshot(&self) -> Value {
        let Some(dir) = self.dir.as_ref() else {
            return Value::Null;
        };
        let stem = format!("{}-{}", self.kind.name(), self.lifetimes);
        let mut logs: Vec<PathBuf> = vec![dir.path.join(format!("{stem}.err"))];
        if self.kind == Kind::Nginx {
            logs.push(dir.path.join("error.log"));
        }
        let mut problems = Vec::new();
        for log in &logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            problems.extend(
                text.lines()
                    .filter(|l| {
                        let lower = l.to_ascii_lowercase();
                        ["error", "warn", "alert", "crit", "emerg", "panic"]
                            .iter()
                            .any(|w| lower.contains(w))
                    })
                    .map(str::to_string),
            );
        }
        let mut snapshot = json!({
            "lifetime": self.lifetimes,
            "log_problem_lines": problems.len(),
            "log_problem_sample": problems.iter().take(5).collect::<Vec<_>>(),
        });
        if let Kind::Sluice { .. } = self.kind {
            let admin = read_admin(&dir.path);
            let metrics = admin
                .and_then(|a| http_get(a, "/metrics").ok())
                .unwrap_or_default();
            let wanted = [
                "sluice_streams_finished_total",
                "sluice_upstream_errors_total",
                "sluice_usage_ledger_errors_total",
                "sluice_usage_records_total",
                "sluice_sse_oversized_events_total",
            ];
            let series: serde_json::Map<String, Value> = metrics
                .lines()
                .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), json!(value.parse::<f64>().ok()?)))
                })
                .collect();
            snapshot["metrics"] = Value::Object(series);
            let ledger = std::fs::read_to_string(dir.path.join("usage.jsonl")).unwrap_or_default();
            snapshot["ledger_records_total"] = json!(ledger.lines().count());
        }
        snapshot
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// A loopback port for a proxy the harness starts (`ports.rs`: this process's counter, below
/// the ephemeral range, so none of the thousands of client and upstream connections a scenario
/// opens can take it before the proxy binds it). Below the tests' range (20000 up), so a run
/// beside the test suite does not race it either.
pub fn free_port() -> Result<u16, String> {
    const FIRST: u16 = 10_000;
    const SPAN: u16 = 10_000;
    crate::ports::free_port_in(FIRST, SPAN)
        .ok_or_else(|| format!("no free loopback port in {FIRST}..{}", FIRST + SPAN))
}

/// The admin address of the current Sluice config (it changes with every restart).
fn read_admin(dir: &Path) -> Option<SocketAddr> {
    let conf = std::fs::read_to_string(dir.join("sluice.yaml")).ok()?;
    conf.lines()
        .find_map(|l| l.strip_prefix("admin: "))?
        .trim()
        .parse()
        .ok()
}

/// A blocking `GET` with `Connection: close`, for `/metrics`.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// Starts a throwaway `redis-server` (no persistence) on a free loopback port.
fn start_redis(dir: &TempDir) -> Result<(Group, SocketAddr), String> {
    let program = find_program("redis-server").ok_or("redis-server is not installed")?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?)
        .parse()
        .expect("loopback address");
    let port = addr.port().to_string();
    let args = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    let mut group = Group::spawn(&program, &args, &dir.path, "redis", &[])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = group.exited() {
            return Err(format!("redis-server exited at start ({status})"));
        }
        if Instant::now() > deadline {
            return Err("redis-server did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((group, addr))
}

/// Passthrough identities (the harness client sends one key) with limits far above what the
/// scenario reaches: every request goes through admission and is admitted.
fn limits_config(limits: Limits, redis: Option<SocketAddr>) -> String {
    let backend = match (limits, redis) {
        (Limits::Off, _) => return String::new(),
        (Limits::Redis, Some(redis)) => format!("{{ redis: \"redis://{redis}\" }}"),
        _ => "local".to_string(),
    };
    format!(
        "auth:
  mode: passthrough
limits:
  per_user_streams: 100000
  per_key_streams: 100000
  per_user_rpm: 100000000
  backend: {backend}
"
    )
}

/// Sluice's `listen:` section: one listener, terminating TLS when the run asks for it, taking
/// cleartext HTTP/2 when asked for without TLS (with TLS, `h2` comes by ALPN).
fn sluice_listen(addr: SocketAddr, tls: Option<&Files>, h2: bool) -> String {
    let extra = match (tls, h2) {
        (Some(f), _) => format!(
            "    tls:\n      cert: {}\n      key: {}\n",
            f.cert.display(),
            f.key.display()
        ),
        (None, true) => "    h2c: true\n".to_string(),
        (None, false) => String::new(),
    };
    format!("listen:\n  - addr: {addr}\n{extra}")
}

/// nginx's `listen` and TLS lines. `deferred`: the kernel's deferred accept, which Sluice's
/// listeners use. nginx's own TLS defaults (session tickets on), but for the protocols: TLS 1.3
/// is in its default list only from 1.23.4, and an operator of 1.22 adds it.
fn nginx_listen(addr: SocketAddr, tls: Option<&Files>, h2: bool) -> String {
    let params = format!(
        "{}{}",
        if tls.is_some() { " ssl" } else { "" },
        if h2 { " http2" } else { "" }
    );
    let tls = tls.map_or(String::new(), |f| {
        format!(
            "        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n",
            f.cert.display(),
            f.key.display()
        )
    });
    format!("        listen {addr}{params} backlog=4096 deferred;\n{tls}")
}

/// HAProxy's `bind` line: TLS with the run's certificate, HTTP/2 by ALPN or, in cleartext, with
/// prior knowledge; `defer-accept`, the kernel's deferred accept, as Sluice's listeners have.
fn haproxy_bind(addr: SocketAddr, tls: Option<&Files>, h2: bool) -> String {
    let protocol = match (tls, h2) {
        (Some(f), h2) => format!(
            " ssl crt {} alpn {}",
            f.combined.display(),
            if h2 { "h2,http/1.1" } else { "http/1.1" }
        ),
        (None, true) => " proto h2".to_string(),
        (None, false) => String::new(),
    };
    format!("bind {addr}{protocol} defer-accept")
}

fn sluice_config(
    listen: &str,
    admin: SocketAddr,
    upstream: SocketAddr,
    dir: &Path,
    inspect: bool,
    durable_end: bool,
    limits: &str,
) -> String {
    let dir = dir.display();
    let durability = if durable_end { "before_end" } else { "async" };
    // Heartbeat off: the harness upstream never goes quiet mid-stream except in the memory
    // scenario, where a heartbeat would only add traffic to what is measured. Idle timeout
    // longer than any held stream.
    format!(
        "{listen}admin: {admin}
server:
  threads: 2
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: {dir}/sluice.pid
  upgrade_sock: {dir}/upgrade.sock
upstreams:
  harness:
    url: http://{upstream}
    pool_idle_timeout: 60s
routes:
  - path_prefix: /
    upstream: harness
    provider: openai
    idle_timeout: 5m
    heartbeat: off
    max_duration: 30m
usage:
  ledger: {dir}/usage.jsonl
  durability: {durability}
  inspect: {inspect}
{limits}"
    )
}

fn nginx_config(listen: &str, upstream: SocketAddr, dir: &Path, nofile: u64) -> String {
    let dir = dir.display();
    // A proxied stream holds two connections in one worker, and the kernel may hand most new
    // connections to one worker: let each take (almost) the whole descriptor limit.
    let worker_connections = nofile.saturating_sub(100).max(1024);
    format!(
        "worker_processes 2;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections {worker_connections};
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;

    upstream llm {{
        server {upstream};
        keepalive 1024;
        keepalive_requests 100000;
        keepalive_timeout 60s;
    }}

    server {{
{listen}        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_request_buffering on;
            proxy_cache off;
            gzip off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"
    )
}

fn haproxy_config(bind: &str, upstream: SocketAddr, dir: &Path, nofile: u64) -> String {
    let dir = dir.display();
    // Two descriptors per proxied stream, and some headroom for listeners and the pool.
    let maxconn = (nofile.saturating_sub(200) / 2).max(512);
    format!(
        "global
    nbthread 2
    maxconn {maxconn}
    pidfile {dir}/haproxy.pid
    # A line per request, as nginx's access log and Sluice's (stdout goes to a file here).
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option http-no-delay
    http-reuse always
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    timeout http-request 30s
    timeout http-keep-alive 60s

frontend llm_in
    {bind}
    maxconn {maxconn}
    default_backend llm

backend llm
    server up1 {upstream}
"
    )
}
