//! Lines written to stdout (the access log) or stderr (Sluice's own log) by a thread of their
//! own: a proxy thread never waits on either. A pipe whose reader stalls (a log shipper that
//! stopped) would otherwise stop every stream the writing thread carries, and a client that can
//! make Sluice log (a TLS handshake of garbage, a body it cannot read) could stop the proxy.
//! A busy proxy makes one write per batch, not one per line.

use once_cell::sync::Lazy;
use std::io::Write;
use std::sync::{Condvar, Mutex, Once, TryLockError};
use std::time::{Duration, Instant};

/// How long a line may wait in memory before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is written at once, without waiting for the next tick.
const EARLY_FLUSH: usize = 256 * 1024;
/// Lines waiting beyond this are dropped (and counted): the output is not keeping up, and the
/// proxy must neither wait for it nor grow without bound.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// How long an exiting process waits for the output to take the last lines.
const EXIT_FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Where a sink's lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// The access log's lines (one JSON line per request).
pub static STDOUT: Lazy<LineSink> = Lazy::new(|| LineSink::new(Output::Stdout));
/// Sluice's own log (`log` records, formatted by `env_logger`).
pub static STDERR: Lazy<LineSink> = Lazy::new(|| LineSink::new(Output::Stderr));

pub struct LineSink {
    output: Output,
    pending: Mutex<LineBuffer>,
    wake: Condvar,
    /// Held while a batch is written, so that batches never interleave.
    writing: Mutex<()>,
    writer: Once,
}

impl LineSink {
    fn new(output: Output) -> LineSink {
        LineSink {
            output,
            pending: Mutex::default(),
            wake: Condvar::new(),
            writing: Mutex::new(()),
            writer: Once::new(),
        }
    }

    /// Queues whole lines; false when they were dropped (the output is behind).
    pub fn push(&'static self, line: &[u8]) -> bool {
        self.writer.call_once(|| self.start_writer());
        let mut pending = lock(&self.pending);
        let pushed = pending.push(line);
        if pushed.wake_writer {
            self.wake.notify_one();
        }
        pushed.kept
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
        let _writing = lock(&self.writing);
        self.write_batch(batch);
    }

    /// Writes what is left, waiting at most `within` for a batch being written (the output may
    /// be stuck, and then an exit must not wait for it).
    fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let _writing = loop {
            match self.writing.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(TryLockError::WouldBlock) => return,
            }
        };
        let batch = std::mem::take(&mut *lock(&self.pending));
        self.write_batch(&batch);
    }

    fn write_batch(&self, batch: &LineBuffer) {
        // A failed log write must never fail a request, nor stop the writer.
        match self.output {
            Output::Stdout => {
                if !batch.bytes.is_empty() {
                    let _ = std::io::stdout().lock().write_all(&batch.bytes);
                }
                if batch.dropped > 0 {
                    log::warn!(
                        "access log: {} lines dropped: stdout did not take them fast enough",
                        batch.dropped
                    );
                }
            }
            Output::Stderr => {
                let mut stderr = std::io::stderr().lock();
                let _ = stderr.write_all(&batch.bytes);
                if batch.dropped > 0 {
                    let _ = writeln!(
                        stderr,
                        "sluice: {} log lines dropped: stderr did not take them fast enough",
                        batch.dropped
                    );
                }
            }
        }
    }

    fn start_writer(&'static self) {
        let name = match self.output {
            Output::Stdout => "sluice-access-log",
            Output::Stderr => "sluice-log",
        };
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let batch = self.take_batch();
                self.write(&batch);
            });
        if let Err(e) = spawned {
            // Straight to stderr: this may be the log's own sink.
            eprintln!("sluice: no {name} writer thread ({e}): lines are written at exit only");
        }
        // Every orderly end of the process (drain, server shutdown) goes through `exit`, which
        // runs this.
        let at_exit: extern "C" fn() = match self.output {
            Output::Stdout => flush_stdout_at_exit,
            Output::Stderr => flush_stderr_at_exit,
        };
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(at_exit) };
    }
}

extern "C" fn flush_stdout_at_exit() {
    STDOUT.flush(EXIT_FLUSH_WAIT);
}

extern "C" fn flush_stderr_at_exit() {
    STDERR.flush(EXIT_FLUSH_WAIT);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `env_logger`'s output: each record (written whole, then flushed) goes to [`STDERR`].
pub struct StderrLines;

impl Write for StderrLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        STDERR.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
