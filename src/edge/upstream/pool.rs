//! Idle HTTP/1.1 upstream connections, kept per upstream and address for the next request.
//!
//! Sluice's own pool rather than Pingora's: Pingora hands each idle connection to a task that
//! watches it, and taking one back means waking that task and waiting for it to let go — a
//! hand-off between tasks on the path of every pooled request. Here a connection is checked
//! when it is taken (a read that must not be ready: a closed or chattering connection is
//! dropped), and a sweep every second closes the ones that expired or that the upstream closed.

use pingora::protocols::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};

pub struct IdlePool {
    idle: Mutex<HashMap<u64, Vec<Idle>>>,
    /// Most idle connections kept per key; more are closed.
    per_key: usize,
}

struct Idle {
    stream: Stream,
    expires: Instant,
}

impl IdlePool {
    pub fn new(per_key: usize) -> Self {
        IdlePool {
            idle: Mutex::new(HashMap::new()),
            per_key,
        }
    }

    /// The most recently used live connection for `key`, if any.
    pub fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let mut dead = Vec::new();
        let found = {
            let mut idle = self.idle.lock().expect("pool lock");
            let list = idle.get_mut(&key)?;
            let mut found = None;
            // An emptied list stays (the sweep drops it): a busy key would otherwise free and
            // allocate it, and rehash the key, on every request.
            while let Some(mut conn) = list.pop() {
                if conn.expires > now && is_quiet(&mut conn.stream) {
                    found = Some(conn.stream);
                    break;
                }
                dead.push(conn);
            }
            found
        };
        // Closed outside the lock.
        drop(dead);
        found
    }

    pub fn put(&self, key: u64, stream: Stream, idle_timeout: Duration) {
        let conn = Idle {
            stream,
            expires: Instant::now() + idle_timeout,
        };
        let surplus = {
            let mut idle = self.idle.lock().expect("pool lock");
            let list = idle.entry(key).or_default();
            list.push(conn);
            (list.len() > self.per_key).then(|| list.remove(0))
        };
        drop(surplus);
    }

    /// Closes the connections that expired or that the upstream closed (or wrote to) while idle.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut dead = Vec::new();
        {
            let mut idle = self.idle.lock().expect("pool lock");
            idle.retain(|_, list| {
                for mut conn in std::mem::take(list) {
                    if conn.expires > now && is_quiet(&mut conn.stream) {
                        list.push(conn);
                    } else {
                        dead.push(conn);
                    }
                }
                !list.is_empty()
            });
        }
        drop(dead);
    }
}

/// An idle connection is healthy when reading from it would wait: an upstream that closed it
/// (end of stream), reset it, or sent bytes nobody asked for makes it unusable.
fn is_quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}
