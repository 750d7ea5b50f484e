//! One JSON line per request on stdout: what an operator greps when a stream went wrong.

use crate::json_object::JsonObject;
use crate::telemetry::METRICS;
use once_cell::sync::Lazy;
#[cfg(test)]
use serde::Serialize;
use std::io::Write;
use std::sync::{Condvar, Mutex, Once, TryLockError};
use std::time::{Duration, Instant};

/// One request's line. Written by [`JsonObject`], member by member in this order; the derived
/// `Serialize` (tests only) is the reference the line is checked against.
#[derive(Debug)]
#[cfg_attr(test, derive(Serialize))]
pub struct AccessRecord<'a> {
    pub ts: String,
    pub request_id: &'a str,
    /// `null` when unknown.
    pub client: Option<Client>,
    /// The trusted proxy that forwarded the request, when `client` is the one it named.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub via: Option<std::net::SocketAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    /// The caller, when the route authenticates: never the key itself.
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub user: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub key_id: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub tenant: Option<&'a str>,
    pub status: u16,
    pub stream: bool,
    pub outcome: Option<&'a str>,
    pub duration_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub bytes_sent: u64,
    pub heartbeats: u64,
    pub error: Option<&'a str>,
    /// Why Sluice refused the request before it went upstream (`invalid_key`, `user_streams`…).
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    pub refused: Option<&'a str>,
    pub model: Option<&'a str>,
    #[cfg_attr(test, serde(flatten))]
    pub usage: Option<&'a crate::usage::record::Usage>,
    pub usage_source: Option<&'static str>,
}

/// Who sent a request: the connection's peer, or the client a trusted proxy forwarded it for
/// (`server.trusted_proxies`; its port is not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Peer(std::net::SocketAddr),
    Forwarded(std::net::IpAddr),
}

#[cfg(test)]
impl Serialize for Client {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Client::Peer(addr) => serializer.collect_str(addr),
            Client::Forwarded(ip) => serializer.collect_str(ip),
        }
    }
}

impl AccessRecord<'_> {
    pub fn write(&self) {
        let mut line = self.line();
        line.push(b'\n');
        SINK.push(&line);
    }

    fn line(&self) -> Vec<u8> {
        let mut line = JsonObject::with_capacity(1024);
        line.str("ts", &self.ts).str("request_id", self.request_id);
        match self.client {
            Some(Client::Forwarded(ip)) => line.ip("client", ip),
            Some(Client::Peer(addr)) => line.addr_or_null("client", Some(addr)),
            None => line.addr_or_null("client", None),
        };
        line.addr_if_some("via", self.via)
            .str("method", self.method)
            .str("path", self.path)
            .str("route", self.route)
            .str("upstream", self.upstream)
            .str_if_some("user", self.user)
            .str_if_some("key_id", self.key_id)
            .str_if_some("tenant", self.tenant)
            .u64("status", self.status.into())
            .bool("stream", self.stream)
            .str_or_null("outcome", self.outcome)
            .f64("duration_ms", self.duration_ms)
            .f64_or_null("ttfb_ms", self.ttfb_ms)
            .u64("bytes_sent", self.bytes_sent)
            .u64("heartbeats", self.heartbeats)
            .str_or_null("error", self.error)
            .str_if_some("refused", self.refused)
            .str_or_null("model", self.model);
        if let Some(usage) = self.usage {
            usage.write_members(&mut line);
        }
        line.str_or_null("usage_source", self.usage_source);
        line.finish()
    }
}

/// How long a line may wait in memory before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is written at once, without waiting for the next tick.
const EARLY_FLUSH: usize = 256 * 1024;
/// Lines waiting beyond this are dropped (and counted): stdout is not keeping up, and the proxy
/// must neither wait for it nor grow without bound.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// How long an exiting process waits for stdout to take the last lines.
const EXIT_FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Lines are gathered in memory and written to stdout by a thread of their own: a proxy thread
/// never waits on stdout (a pipe whose reader stalls would otherwise stop every stream that
/// thread carries), and a busy proxy makes one write per batch, not one per request.
static SINK: Lazy<Sink> = Lazy::new(|| Sink {
    pending: Mutex::default(),
    wake: Condvar::new(),
    output: Mutex::new(()),
    writer: Once::new(),
});

struct Sink {
    pending: Mutex<LineBuffer>,
    wake: Condvar,
    /// Held while a batch is written, so that batches never interleave.
    output: Mutex<()>,
    writer: Once,
}

impl Sink {
    fn push(&self, line: &[u8]) {
        self.writer.call_once(start_writer);
        let mut pending = lock(&self.pending);
        let pushed = pending.push(line);
        if !pushed.kept {
            METRICS.access_log_dropped.inc();
        }
        if pushed.wake_writer {
            self.wake.notify_one();
        }
    }

    fn take_batch(&self) -> LineBuffer {
        let pending = lock(&self.pending);
        // Nothing to write: sleep until a line comes, rather than waking every FLUSH_EVERY.
        let pending = self
            .wake
            .wait_while(pending, |p| p.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        let (mut pending, _) = self
            .wake
            .wait_timeout_while(pending, FLUSH_EVERY, |p| !p.early_flush_due())
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *pending)
    }

    fn write(&self, batch: &LineBuffer) {
        let _output = lock(&self.output);
        write_batch(batch);
    }

    /// Writes what is left, waiting at most `within` for a batch being written (stdout may be
    /// stuck, and then an exit must not wait for it).
    fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let _output = loop {
            match self.output.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(TryLockError::WouldBlock) => return,
            }
        };
        let batch = std::mem::take(&mut *lock(&self.pending));
        write_batch(&batch);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_batch(batch: &LineBuffer) {
    if !batch.bytes.is_empty() {
        // A failed log write must never fail a request, nor stop the writer.
        let _ = std::io::stdout().lock().write_all(&batch.bytes);
    }
    if batch.dropped > 0 {
        log::warn!(
            "access log: {} lines dropped: stdout did not take them fast enough",
            batch.dropped
        );
    }
}

fn start_writer() {
    let spawned = std::thread::Builder::new()
        .name("sluice-access-log".into())
        .spawn(|| loop {
            let batch = SINK.take_batch();
            SINK.write(&batch);
        });
    if let Err(e) = spawned {
        log::error!("access log: no writer thread ({e}): lines are written at exit only");
    }
    // Every orderly end of the process (drain, server shutdown) goes through `exit`, which runs this.
    // SAFETY: registers a plain function with no captured state.
    unsafe { libc::atexit(flush_at_exit) };
}

extern "C" fn flush_at_exit() {
    SINK.flush(EXIT_FLUSH_WAIT);
}

/// The lines waiting to be written.
#[derive(Debug, Default)]
struct LineBuffer {
    bytes: Vec<u8>,
    /// Lines refused since the last batch because the buffer was full.
    dropped: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct Pushed {
    /// False: the buffer was full, and the line is only counted.
    kept: bool,
    /// The writer waits for this line: the first of a batch (it sleeps while nothing is pending;
    /// a dropped line's count is pending too) or the one that makes the batch due at once.
    wake_writer: bool,
}

impl LineBuffer {
    fn push(&mut self, line: &[u8]) -> Pushed {
        let was_empty = self.is_empty();
        if self.bytes.len() + line.len() > MAX_PENDING {
            self.dropped += 1;
            return Pushed {
                kept: false,
                wake_writer: was_empty,
            };
        }
        let was_due = self.early_flush_due();
        self.bytes.extend_from_slice(line);
        Pushed {
            kept: true,
            wake_writer: was_empty || (!was_due && self.early_flush_due()),
        }
    }

    /// Nothing to write: no line, and no dropped line to report.
    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.dropped == 0
    }

    fn early_flush_due(&self) -> bool {
        self.bytes.len() >= EARLY_FLUSH
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::record::arbitrary_usage;
    use proptest::prelude::*;

    const SOURCES: [&str; 3] = ["stream", "none", "odd \"source\"\n"];

    proptest! {
        /// The hand-written line is the one serde_json writes for the record, byte for byte.
        #[test]
        fn the_line_is_what_serde_json_writes(
            text in proptest::collection::vec(any::<String>(), 6),
            maybe in proptest::collection::vec(proptest::option::of(any::<String>()), 7),
            peer in proptest::option::of(any::<std::net::SocketAddr>()),
            forwarded in proptest::option::of(any::<std::net::IpAddr>()),
            status in any::<u16>(),
            stream in any::<bool>(),
            duration_ms in any::<f64>(),
            ttfb_ms in proptest::option::of(any::<f64>()),
            bytes_sent in any::<u64>(),
            heartbeats in any::<u64>(),
            usage in proptest::option::of(arbitrary_usage()),
            source in proptest::option::of(0..SOURCES.len()),
        ) {
            let record = AccessRecord {
                ts: text[0].clone(),
                request_id: &text[1],
                client: forwarded.map(Client::Forwarded).or(peer.map(Client::Peer)),
                via: forwarded.and(peer),
                method: &text[2],
                path: &text[3],
                route: &text[4],
                upstream: &text[5],
                user: maybe[0].as_deref(),
                key_id: maybe[1].as_deref(),
                status,
                stream,
                outcome: maybe[2].as_deref(),
                duration_ms,
                ttfb_ms,
                bytes_sent,
                heartbeats,
                error: maybe[3].as_deref(),
                refused: maybe[4].as_deref(),
                model: maybe[5].as_deref(),
                tenant: maybe[6].as_deref(),
                usage: usage.as_ref(),
                usage_source: source.map(|i| SOURCES[i]),
            };
            let reference = serde_json::to_vec(&record).unwrap();
            prop_assert_eq!(
                String::from_utf8(record.line()).unwrap(),
                String::from_utf8(reference).unwrap()
            );
        }
    }

    #[test]
    fn lines_are_kept_in_order_until_the_buffer_is_full_then_counted() {
        let mut buffer = LineBuffer::default();
        let line = vec![b'x'; 1023];
        let line = [line, vec![b'\n']].concat();
        let mut wakes = Vec::new();
        for i in 0..MAX_PENDING / line.len() {
            match buffer.push(&line) {
                Pushed { kept: false, .. } => panic!("dropped before the buffer was full"),
                Pushed {
                    wake_writer: true, ..
                } => wakes.push(i),
                _ => {}
            }
        }
        assert_eq!(
            wakes,
            [0, EARLY_FLUSH / line.len() - 1],
            "the writer is woken by a batch's first line and when the batch grows past its size"
        );
        assert_eq!(buffer.bytes.len(), MAX_PENDING);
        let dropped = Pushed {
            kept: false,
            wake_writer: false,
        };
        assert_eq!(buffer.push(b"y\n"), dropped);
        assert_eq!(buffer.push(b"z\n"), dropped);
        assert_eq!(buffer.dropped, 2);
        assert!(
            buffer.bytes.ends_with(&line),
            "a dropped line leaves nothing behind"
        );
        let taken = std::mem::take(&mut buffer);
        assert_eq!(taken.dropped, 2);
        assert!(buffer.is_empty());
        let kept = |wake_writer| Pushed {
            kept: true,
            wake_writer,
        };
        assert_eq!(buffer.push(b"y\n"), kept(true));
        assert_eq!(buffer.push(b"z\n"), kept(false));
        assert_eq!(buffer.bytes, b"y\nz\n");
    }

    #[test]
    fn a_line_dropped_into_an_empty_buffer_wakes_the_writer_to_report_it() {
        let mut buffer = LineBuffer::default();
        let too_long = vec![b'x'; MAX_PENDING + 1];
        let pushed = buffer.push(&too_long);
        assert_eq!(
            pushed,
            Pushed {
                kept: false,
                wake_writer: true
            }
        );
        assert!(
            !buffer.is_empty(),
            "the dropped line is still to be reported"
        );
        assert_eq!(
            buffer.push(b"y\n"),
            Pushed {
                kept: true,
                wake_writer: false
            },
            "the writer is already awake for this batch"
        );
    }
}
