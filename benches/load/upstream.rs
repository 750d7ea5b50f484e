//! The harness upstream: an OpenAI chat-completions look-alike over raw HTTP/1.1 with keep-alive.
//!
//! Every request gets a head like OpenAI's (25 fields; [`HeadKind`]), `text/event-stream`,
//! chunked, one ~215-byte chat-completion chunk per write (so a proxy sees token-sized reads, as
//! from a real provider), each stamped with its send time, then the finish chunk, the usage
//! chunk, `data: [DONE]` and the end of the body. What to send comes from the query string
//! (below), so each scenario shapes its own streams.
//!
//! It also keeps, per scenario run, when the peer closed a stream that was still in progress:
//! that is how the memory scenario sees whether a proxy closes the upstream when clients leave.

use crate::clock::{self, now_ns, MS};
use crate::heads::{MINIMAL_HEAD, PROVIDER_HEAD};
use crate::http1::{ChunkedDecoder, Framing};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// No stream lives longer than this, whatever its query says.
const MAX_STREAM_NS: u64 = 600 * clock::SEC;
/// An idle keep-alive connection is closed after this (longer than any proxy's pool timeout,
/// so that it is the proxy that decides).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(120);
const MAX_REQUESTS_PER_CONNECTION: u64 = 1_000_000;
const MAX_ACCEPTS: u64 = 10_000_000;
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: u64 = 1024 * 1024;

/// One stream's shape, from the request's query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    /// Content events to send (before the finish chunk).
    pub events: u64,
    /// Between two content events; 0: as fast as the socket takes them.
    pub interval_us: u64,
    /// No content event is sent at or after this time (ns since the harness epoch); 0: none.
    pub until_ns: u64,
    /// Silence after the content events, before the finish chunk (an idle stream).
    pub hold_ms: u64,
    /// The scenario run this stream belongs to (0: none, not logged).
    pub run: u64,
    /// The stream's number within its run (for matching its close with its client's).
    pub sid: u64,
}

impl StreamSpec {
    pub fn query(&self) -> String {
        format!(
            "events={}&interval_us={}&until_ns={}&hold_ms={}&run={}&sid={}",
            self.events, self.interval_us, self.until_ns, self.hold_ms, self.run, self.sid
        )
    }

    fn parse(path: &str) -> StreamSpec {
        let mut spec = StreamSpec {
            events: 10,
            interval_us: 0,
            until_ns: 0,
            hold_ms: 0,
            run: 0,
            sid: 0,
        };
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        for pair in query.split('&') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "events" => spec.events = value,
                "interval_us" => spec.interval_us = value,
                "interval_ms" => spec.interval_us = value.saturating_mul(1000),
                "until_ns" => spec.until_ns = value,
                "hold_ms" => spec.hold_ms = value,
                "run" => spec.run = value,
                "sid" => spec.sid = value,
                _ => {}
            }
        }
        spec
    }
}

/// What the upstream saw of one scenario run.
#[derive(Debug, Default, Clone)]
pub struct RunLog {
    pub started: u64,
    /// Streams still being written (or held).
    pub active: u64,
    pub completed: u64,
    /// `(sid, when)` the peer closed a stream that was still in progress.
    pub closed_at: Vec<(u64, u64)>,
    /// Streams the harness cut itself (see [`Upstream::abort_through`]).
    pub aborted: u64,
    pub events_sent: u64,
}

struct Shared {
    open: AtomicI64,
    accepted: AtomicU64,
    next_run: AtomicU64,
    runs: Mutex<HashMap<u64, RunLog>>,
    head: HeadKind,
    /// Streams of every run up to this id stop at once (their connection is dropped).
    abort: watch::Sender<u64>,
    /// Bumped to close every connection idle between requests (the proxies' pools).
    close_idle: watch::Sender<u64>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Upstream {
    /// Binds a free loopback port and serves on the current runtime; every response starts
    /// with `head`.
    pub fn start(head: HeadKind) -> std::io::Result<Upstream> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind("127.0.0.1:0".parse().expect("loopback address"))?;
        // A deep backlog: the memory scenario opens thousands of connections quickly.
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let (abort, _) = watch::channel(0);
        let (close_idle, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            open: AtomicI64::new(0),
            accepted: AtomicU64::new(0),
            next_run: AtomicU64::new(1),
            runs: Mutex::new(HashMap::new()),
            head,
            abort,
            close_idle,
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            for _ in 0..MAX_ACCEPTS {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                accept_shared.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, accept_shared.clone()));
            }
        });
        Ok(Upstream {
            addr,
            shared,
            accept_task,
        })
    }

    /// A new run id; streams that carry it are logged under it.
    pub fn new_run(&self) -> u64 {
        let run = self.shared.next_run.fetch_add(1, Ordering::Relaxed);
        self.shared
            .runs
            .lock()
            .expect("runs lock")
            .insert(run, RunLog::default());
        run
    }

    pub fn run_log(&self, run: u64) -> RunLog {
        self.shared
            .runs
            .lock()
            .expect("runs lock")
            .get(&run)
            .cloned()
            .unwrap_or_default()
    }

    /// Ends every stream of runs up to `run` that is still open: after a scenario that left
    /// streams open (a proxy that never closed them), the next one starts clean.
    pub fn abort_through(&self, run: u64) {
        self.shared.abort.send_modify(|v| *v = (*v).max(run));
    }

    /// Closes every connection that sits idle between requests: the proxies' pooled upstream
    /// connections, which hold this process's descriptors (the memory scenario needs two per
    /// stream, and 2,000 pooled connections would leave too few under a 20,000 limit).
    pub fn close_idle(&self) {
        self.shared.close_idle.send_modify(|v| *v += 1);
    }

    /// Connections open now (streams, and idle connections in the proxies' pools).
    pub fn open_connections(&self) -> i64 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

/// Counts a connection as open for as long as it lives, on every path out of `serve`.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Completed,
    /// The peer closed (or reset) while the stream was in progress, at this time.
    PeerClosed(u64),
    Aborted,
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(shared.clone());
    let (mut rd, mut wr) = stream.into_split();
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut abort_rx = shared.abort.subscribe();
    let mut close_idle_rx = shared.close_idle.subscribe();
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let next = tokio::select! {
            next = tokio::time::timeout(KEEPALIVE_IDLE, read_request(&mut rd, &mut buf)) => next,
            // Only while nothing of a next request has arrived (the harness asks when no
            // traffic flows, so a request cut in half would be a harness bug, not a proxy's).
            _ = close_idle_rx.changed(), if buf.is_empty() => return,
        };
        let path = match next {
            Ok(Ok(Some(path))) => path,
            _ => return,
        };
        let spec = StreamSpec::parse(&path);
        log_run(&shared, spec.run, |log| {
            log.started += 1;
            log.active += 1;
        });
        let mut events = 0;
        let ended = respond(
            shared.head.bytes(),
            &spec,
            &mut rd,
            &mut wr,
            &mut buf,
            &mut abort_rx,
            &mut events,
        )
        .await;
        log_run(&shared, spec.run, |log| {
            log.active -= 1;
            log.events_sent += events;
            match ended {
                Ended::Completed => log.completed += 1,
                Ended::PeerClosed(at) => log.closed_at.push((spec.sid, at)),
                Ended::Aborted => log.aborted += 1,
            }
        });
        if ended != Ended::Completed {
            return;
        }
    }
}

fn log_run(shared: &Shared, run: u64, update: impl FnOnce(&mut RunLog)) {
    if run == 0 {
        return;
    }
    let mut runs = shared.runs.lock().expect("runs lock");
    update(runs.entry(run).or_default());
}

/// Reads one request (head and body) and returns its path; `None` when the peer closed the
/// connection between requests.
async fn read_request(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Result<Option<String>, String> {
    // Every pass reads at least one byte and the head is bounded, so this ends.
    let (head_len, path, framing) = loop {
        if let Some(parsed) = parse_head(buf)? {
            break parsed;
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        if read_more(rd, buf).await? == 0 {
            return Ok(None);
        }
    };
    let end = match framing {
        Framing::Length(n) if n > MAX_BODY => return Err("request body too large".into()),
        Framing::Length(n) => {
            let end = head_len + n as usize;
            while buf.len() < end {
                if read_more(rd, buf).await? == 0 {
                    return Err("closed inside the request body".into());
                }
            }
            end
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            let mut body = Vec::new();
            let mut at = head_len;
            loop {
                at += decoder.feed(&buf[at..], &mut body)?;
                if decoder.is_done() {
                    break at;
                }
                if body.len() as u64 > MAX_BODY {
                    return Err("request body too large".into());
                }
                if read_more(rd, buf).await? == 0 {
                    return Err("closed inside the request body".into());
                }
            }
        }
        Framing::UntilClose => head_len,
    };
    buf.drain(..end);
    Ok(Some(path))
}

fn parse_head(buf: &[u8]) -> Result<Option<(usize, String, Framing)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let path = request.path.unwrap_or("/").to_string();
            let framing = Framing::from_headers(request.headers, false);
            Ok(Some((len, path, framing)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("bad request head: {e}")),
    }
}

async fn read_more(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Result<usize, String> {
    buf.reserve(8192);
    rd.read_buf(buf).await.map_err(|e| e.to_string())
}

/// Which response head the upstream sends (`SLUICE_LOAD_HEAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// What OpenAI's API sends with a stream (values made up, sizes alike): 25 fields, ~1.3 KB
    /// (rate-limit figures, Cloudflare cookies, tracing ids). A proxy keeps what it forwards of it
    /// for as long as the stream is open, so it weighs on memory per stream.
    Provider,
    /// Three fields: the head of earlier runs, for comparing with them.
    Minimal,
}

impl HeadKind {
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Provider => "provider",
            HeadKind::Minimal => "minimal",
        }
    }

    pub fn bytes(self) -> &'static [u8] {
        match self {
            HeadKind::Provider => PROVIDER_HEAD,
            HeadKind::Minimal => MINIMAL_HEAD,
        }
    }
}

const EVENT_BEFORE_TS: &[u8] = b"data: {\"id\":\"chatcmpl-t";
const EVENT_AFTER_TS: &[u8] = b"\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok";
const EVENT_END: &[u8] = b"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const FINISH: &str = "data: {\"id\":\"chatcmpl-end\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// One content event as one chunk: `SIZE\r\n` event `\r\n`, stamped `ts` (fixed width, so every
/// event has the same size).
fn event_chunk(out: &mut Vec<u8>, ts: u64, seq: u64) {
    use std::io::Write;
    let len = EVENT_BEFORE_TS.len() + 20 + EVENT_AFTER_TS.len() + 6 + EVENT_END.len();
    out.clear();
    let _ = write!(out, "{len:x}\r\n");
    out.extend_from_slice(EVENT_BEFORE_TS);
    let _ = write!(out, "{ts:020}");
    out.extend_from_slice(EVENT_AFTER_TS);
    let _ = write!(out, "{:06}", seq % 1_000_000);
    out.extend_from_slice(EVENT_END);
    out.extend_from_slice(b"\r\n");
}

fn text_chunk(text: &str) -> Vec<u8> {
    format!("{:x}\r\n{text}\r\n", text.len()).into_bytes()
}

/// The size of one content event on the wire inside the body (without chunk framing).
pub fn event_size() -> usize {
    EVENT_BEFORE_TS.len() + 20 + EVENT_AFTER_TS.len() + 6 + EVENT_END.len()
}

async fn respond(
    head: &[u8],
    spec: &StreamSpec,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut Vec<u8>,
    abort_rx: &mut watch::Receiver<u64>,
    events: &mut u64,
) -> Ended {
    if wr.write_all(head).await.is_err() {
        return Ended::PeerClosed(now_ns());
    }
    let start = now_ns();
    let until = match spec.until_ns {
        0 => start + MAX_STREAM_NS,
        t => t.min(start + MAX_STREAM_NS),
    };
    let interval_ns = spec.interval_us.saturating_mul(1000);
    let mut chunk = Vec::with_capacity(256);
    for seq in 0..spec.events {
        if interval_ns > 0 && seq > 0 {
            let due = start.saturating_add(interval_ns.saturating_mul(seq));
            if due >= until {
                break;
            }
            // Between events the upstream watches its socket, so a close is seen at once.
            match idle_until(due, spec.run, rd, buf, abort_rx).await {
                Idle::Due => {}
                Idle::Closed(at) => return Ended::PeerClosed(at),
                Idle::Aborted => return Ended::Aborted,
            }
        } else if now_ns() >= until {
            break;
        }
        let ts = now_ns();
        event_chunk(&mut chunk, ts, seq);
        if wr.write_all(&chunk).await.is_err() {
            return Ended::PeerClosed(now_ns());
        }
        *events += 1;
    }
    if spec.hold_ms > 0 {
        let due = now_ns() + spec.hold_ms.min(MAX_STREAM_NS / MS) * MS;
        match idle_until(due, spec.run, rd, buf, abort_rx).await {
            Idle::Due => {}
            Idle::Closed(at) => return Ended::PeerClosed(at),
            Idle::Aborted => return Ended::Aborted,
        }
    }
    let usage = format!(
        "data: {{\"id\":\"chatcmpl-end\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
        *events,
        *events + 12
    );
    for piece in [text_chunk(FINISH), text_chunk(&usage), text_chunk(DONE)] {
        if wr.write_all(&piece).await.is_err() {
            return Ended::PeerClosed(now_ns());
        }
    }
    if wr.write_all(b"0\r\n\r\n").await.is_err() {
        return Ended::PeerClosed(now_ns());
    }
    Ended::Completed
}

enum Idle {
    Due,
    Closed(u64),
    Aborted,
}

/// Waits until `due_ns` while reading the socket: EOF or an error means the peer left.
async fn idle_until(
    due_ns: u64,
    run: u64,
    rd: &mut OwnedReadHalf,
    buf: &mut Vec<u8>,
    abort_rx: &mut watch::Receiver<u64>,
) -> Idle {
    let sleep = tokio::time::sleep_until(clock::instant_of(due_ns).into());
    tokio::pin!(sleep);
    // Each pass either ends the wait or reads bytes (kept for the next request, bounded).
    for _ in 0..10_000 {
        buf.reserve(4096);
        tokio::select! {
            biased;
            read = rd.read_buf(buf) => match read {
                Ok(0) | Err(_) => return Idle::Closed(now_ns()),
                Ok(_) if buf.len() > MAX_HEAD => return Idle::Closed(now_ns()),
                Ok(_) => {}
            },
            _ = aborted(run, abort_rx) => return Idle::Aborted,
            _ = &mut sleep => return Idle::Due,
        }
    }
    Idle::Closed(now_ns())
}

async fn aborted(run: u64, abort_rx: &mut watch::Receiver<u64>) {
    if run == 0 {
        std::future::pending::<()>().await;
    }
    // An error means the upstream is going away: stop too.
    let _ = abort_rx.wait_for(|through| *through >= run).await;
}
