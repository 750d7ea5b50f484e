//! The five scenarios. Each runs once against one target and returns raw figures; `report`
//! pools the rounds and compares targets. Every scenario is bounded in streams and in time.

use crate::client::{Conn, Dial, Item, RequestKind};
use crate::clock::{instant_of, now_ns, MS, SEC};
use crate::histogram::Histogram;
use crate::options::Options;
use crate::procfs;
use crate::targets::Target;
use crate::upstream::{StreamSpec, Upstream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::timeout;

/// No response carries more items than this (a runaway stream ends the scenario, not the box).
const MAX_ITEMS: u64 = 100_000_000;

#[derive(Debug, Default, Clone)]
pub struct Errors {
    pub count: u64,
    pub first: Option<String>,
}

impl Errors {
    fn add(&mut self, error: String) {
        self.count += 1;
        self.first.get_or_insert(error);
    }
}

/// Events the upstream wrote in a run, next to those the client received: a proxy that loses
/// or duplicates events shows here.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventCount {
    pub sent: u64,
    pub received: u64,
}

#[derive(Debug, Default, Clone)]
pub struct LatencyRun {
    pub streams: usize,
    /// Delivery delay (client receive time − upstream send time) of every event sent inside
    /// the measured window, in ns (a fixed-size histogram: memory does not grow with events).
    pub delays: Histogram,
    /// Events later than [`SLOW_NS`]: (stream, sent − window start, delay), at most
    /// [`MAX_SLOW`] (and 50 per stream), to tell one stalled connection from a stalled process.
    pub slow: Vec<(usize, u64, u64)>,
    pub events: EventCount,
    pub errors: Errors,
}

pub const SLOW_NS: u64 = 10 * MS;
const MAX_SLOW: usize = 2000;
const MAX_SLOW_PER_STREAM: usize = 50;

#[derive(Debug, Default, Clone)]
pub struct ThroughputRun {
    pub streams: usize,
    pub events: EventCount,
    pub elapsed_s: f64,
    /// CPU seconds of the proxy's processes over the run (none for direct).
    pub cpu_s: Option<f64>,
    /// The same, process by process, busiest first, for a proxy of several processes (nginx's
    /// and HAProxy's workers): how a run spread its streams over them moves the total.
    pub cpu_s_by_process: Vec<f64>,
    pub errors: Errors,
}

#[derive(Debug, Default, Clone)]
pub struct FirstByteRun {
    /// From starting to connect until the first byte of the response.
    pub ttfb_ns: Vec<u64>,
    /// From starting to connect until the first content event was complete.
    pub first_event_ns: Vec<u64>,
    /// The proxy's CPU time over the run, per stream that completed (none for direct): the
    /// work a fresh request costs, head to last byte, which the first byte waits on in part.
    pub cpu_ns_per_stream: Option<f64>,
    /// Quiet before each stream, ms (`first_byte_idle_ms`).
    pub idle_ms: u64,
    pub errors: Errors,
}

/// How soon the upstream saw its side of each stream closed after that stream's own client
/// closed its connection.
#[derive(Debug, Default, Clone)]
pub struct Closes {
    /// Streams closed within 100 ms / 1 s.
    pub within_100ms: usize,
    pub within_1s: usize,
    /// Per closed stream: upstream close − its client's close.
    pub delays_ns: Vec<u64>,
}

impl Closes {
    /// From the upstream's `(stream, close time)` and each stream's client close (`0` for a
    /// client that never left).
    fn of(closed: &[(u64, u64)], client_closed: &[u64]) -> Closes {
        let delays_ns: Vec<u64> = closed
            .iter()
            .filter_map(|&(sid, at)| {
                let client = *client_closed.get(usize::try_from(sid).ok()?)?;
                (client > 0).then(|| at.saturating_sub(client))
            })
            .collect();
        let within = |limit: u64| delays_ns.iter().filter(|&&d| d <= limit).count();
        Closes {
            within_100ms: within(100 * MS),
            within_1s: within(1000 * MS),
            delays_ns,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct LeaveRun {
    pub streams: usize,
    /// Streams whose client left in the middle of the stream (the others failed first).
    pub left: usize,
    pub closes: Closes,
    pub errors: Errors,
}

#[derive(Debug, Default, Clone)]
pub struct MemoryRun {
    pub asked: usize,
    /// Streams open (response head and first event received) when RSS was read.
    pub opened: usize,
    pub open_s: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub closes: Closes,
    /// From the first client's close to the last upstream close seen.
    pub last_close_ns: Option<u64>,
    /// Proxy CPU seconds spent opening the streams, and handling the leave (until the closes
    /// were counted).
    pub open_cpu_s: Option<f64>,
    pub leave_cpu_s: Option<f64>,
    /// Upstream connections open (all targets' streams and pools) before the streams opened,
    /// while they were open, and when the closes were counted.
    pub upstream_open: [i64; 3],
    /// Upstream connections accepted for this run (new ones: a proxy's pool is too small).
    pub upstream_accepted: u64,
    pub errors: Errors,
}

impl MemoryRun {
    pub fn kib_per_stream(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        (self.opened > 0).then(|| (after as f64 - before as f64) / self.opened as f64)
    }
}

/// The run's log once the upstream has finished every stream of it: a client can see a
/// stream's end a moment before the upstream task that wrote it has logged it.
async fn settled(upstream: &Upstream, run: u64) -> crate::upstream::RunLog {
    for _ in 0..200 {
        let log = upstream.run_log(run);
        if log.active == 0 {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.run_log(run)
}

/// Reads one response to its end; calls `on_event` for each content event.
async fn read_stream(conn: &mut Conn, mut on_event: impl FnMut(u64, u64)) -> Result<(), String> {
    let head = conn.read_head().await?;
    if head.status != 200 {
        return Err(format!("status {}", head.status));
    }
    for _ in 0..MAX_ITEMS {
        match conn.next().await? {
            Item::Event { sent_ns, recv_ns } => on_event(sent_ns, recv_ns),
            Item::Other => {}
            Item::End { done: true } => return Ok(()),
            Item::End { done: false } => return Err("stream ended without data: [DONE]".into()),
        }
    }
    Err("response never ended".into())
}

/// 1,000 streams at 20 events/s: how late each event arrives, in the steady state. Streams
/// start spread over the ramp (so their ticks interleave instead of arriving as one burst) and
/// each lives as long as the others, so they end spread out too, after the window: only events
/// sent in the window, when all streams are open and none is ending, count. (Ending 1,000
/// streams in the same millisecond is a different question: it delays the last events of each
/// stream by however long the proxy takes to finish all the others.)
pub async fn latency(target: &Target, upstream: &Upstream, options: &Options) -> LatencyRun {
    let n = options.latency_streams;
    let request = options.request;
    let run = upstream.new_run();
    let interval_us = options.event_interval_us();
    let ramp_ns = (options.ramp_seconds * SEC as f64) as u64;
    let start = now_ns() + 20 * MS;
    // The last stream to start gets a moment to settle before the window opens (100 ms; less
    // when the ramp itself is shorter, as in a smoke run).
    let window_start = start + ramp_ns + ramp_ns.clamp(20 * MS, 100 * MS);
    let window_end = window_start + (options.seconds * SEC as f64) as u64;
    let lifetime = window_end + 50 * MS - start;
    let limit = Duration::from_nanos(lifetime + ramp_ns) + Duration::from_secs(30);
    let dial = target.dial();
    // One histogram for every stream (a lock per event costs nanoseconds, taken after the
    // arrival time was read).
    let delays = Arc::new(Mutex::new(Histogram::default()));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let delays = delays.clone();
            let at = start + ramp_ns * i as u64 / n as u64;
            let spec = StreamSpec {
                events: lifetime / (interval_us * 1000) + 2,
                interval_us,
                until_ns: at + lifetime,
                hold_ms: 0,
                run,
                sid: i as u64,
            };
            let dial = dial.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(instant_of(at).into()).await;
                let mut slow = Vec::new();
                let mut received = 0;
                let result = timeout(limit, async {
                    let mut conn = Conn::connect(&dial).await?;
                    conn.send(&spec, request).await?;
                    read_stream(&mut conn, |sent, recv| {
                        received += 1;
                        if (window_start..window_end).contains(&sent) {
                            let delay = recv.saturating_sub(sent);
                            if let Ok(mut delays) = delays.lock() {
                                delays.record(delay);
                            }
                            if delay > SLOW_NS && slow.len() < MAX_SLOW_PER_STREAM {
                                slow.push((i, sent - window_start, delay));
                            }
                        }
                    })
                    .await
                })
                .await
                .unwrap_or_else(|_| Err("stream timed out".into()));
                (slow, received, result)
            })
        })
        .collect();
    let mut out = LatencyRun {
        streams: n,
        ..LatencyRun::default()
    };
    for task in tasks {
        match task.await {
            Ok((slow, received, result)) => {
                let room = MAX_SLOW.saturating_sub(out.slow.len());
                out.slow.extend(slow.into_iter().take(room));
                out.events.received += received;
                if let Err(e) = result {
                    out.errors.add(e);
                }
            }
            Err(e) => out.errors.add(format!("task: {e}")),
        }
    }
    out.delays = delays.lock().map(|d| d.clone()).unwrap_or_default();
    out.events.sent = settled(upstream, run).await.events_sent;
    out
}

/// 64 streams as fast as the upstream writes: events per second, and the proxy's CPU time.
pub async fn throughput(target: &Target, upstream: &Upstream, options: &Options) -> ThroughputRun {
    let n = options.throughput_streams;
    let request = options.request;
    let run = upstream.new_run();
    let pids = target.pids();
    let cpu_before = procfs::cpu_seconds(&pids);
    let by_process_before: Vec<f64> = pids.iter().map(|&p| procfs::cpu_seconds(&[p])).collect();
    let start = now_ns();
    let spec = StreamSpec {
        events: 50_000_000,
        interval_us: 0,
        until_ns: start + (options.seconds * SEC as f64) as u64,
        hold_ms: 0,
        run,
        sid: 0,
    };
    let limit = Duration::from_secs_f64(options.seconds) + Duration::from_secs(60);
    let dial = target.dial();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let dial = dial.clone();
            tokio::spawn(async move {
                let mut received = 0u64;
                let result = timeout(limit, async {
                    let mut conn = Conn::connect(&dial).await?;
                    conn.send(&spec, request).await?;
                    read_stream(&mut conn, |_, _| received += 1).await
                })
                .await
                .unwrap_or_else(|_| Err("stream timed out".into()));
                (received, result)
            })
        })
        .collect();
    let mut out = ThroughputRun {
        streams: n,
        ..ThroughputRun::default()
    };
    for task in tasks {
        match task.await {
            Ok((received, result)) => {
                out.events.received += received;
                if let Err(e) = result {
                    out.errors.add(e);
                }
            }
            Err(e) => out.errors.add(format!("task: {e}")),
        }
    }
    out.elapsed_s = (now_ns() - start) as f64 / SEC as f64;
    if target.is_proxy() {
        out.cpu_s = Some(procfs::cpu_seconds(&pids) - cpu_before);
        if pids.len() > 1 {
            out.cpu_s_by_process = pids
                .iter()
                .zip(&by_process_before)
                .map(|(&p, before)| procfs::cpu_seconds(&[p]) - before)
                .filter(|&c| c > 0.0)
                .collect();
            out.cpu_s_by_process.sort_by(|a, b| b.total_cmp(a));
        }
    }
    out.events.sent = settled(upstream, run).await.events_sent;
    out
}

/// Fresh streams one after another (back to back, or after `first_byte_idle_ms` of quiet), each
/// on a new connection: time to the first byte and to the first event, and the proxy's CPU time
/// per stream.
pub async fn first_byte(target: &Target, upstream: &Upstream, options: &Options) -> FirstByteRun {
    let dial = target.dial();
    let run = upstream.new_run();
    let spec = StreamSpec {
        events: 3,
        interval_us: 0,
        until_ns: 0,
        hold_ms: 0,
        run,
        sid: 0,
    };
    let mut out = FirstByteRun {
        idle_ms: options.first_byte_idle_ms,
        ..FirstByteRun::default()
    };
    let pids = target.pids();
    let cpu_before = procfs::cpu_ns(&pids);
    let deadline = now_ns() + 120 * SEC;
    for _ in 0..options.first_byte_streams {
        if now_ns() > deadline {
            out.errors
                .add("scenario took over 120 s; stopped early".into());
            break;
        }
        if options.first_byte_idle_ms > 0 {
            tokio::time::sleep(Duration::from_millis(options.first_byte_idle_ms)).await;
        }
        let started = now_ns();
        let mut first_event = None;
        let result = timeout(Duration::from_secs(10), async {
            let mut conn = Conn::connect(&dial).await?;
            conn.send(&spec, options.request).await?;
            let head = conn.read_head().await?;
            if head.status != 200 {
                return Err(format!("status {}", head.status));
            }
            for _ in 0..MAX_ITEMS {
                match conn.next().await? {
                    Item::Event { recv_ns, .. } => {
                        first_event.get_or_insert(recv_ns);
                    }
                    Item::Other => {}
                    Item::End { done } => {
                        return if done {
                            Ok(head.first_byte_ns)
                        } else {
                            Err("stream ended without data: [DONE]".into())
                        }
                    }
                }
            }
            Err("response never ended".into())
        })
        .await
        .unwrap_or_else(|_| Err("stream timed out".into()));
        match (result, first_event) {
            (Ok(first_byte), Some(first_event)) => {
                out.ttfb_ns.push(first_byte - started);
                out.first_event_ns.push(first_event - started);
            }
            (Ok(_), None) => out.errors.add("no content event".into()),
            (Err(e), _) => out.errors.add(e),
        }
    }
    if target.is_proxy() && !out.ttfb_ns.is_empty() {
        let spent = procfs::cpu_ns(&pids).saturating_sub(cpu_before);
        out.cpu_ns_per_stream = Some(spent as f64 / out.ttfb_ns.len() as f64);
    }
    out
}

/// Opens `streams` idle streams (head and first event received, then silence), reads the
/// proxy's RSS, then every client leaves at once and the upstream reports how fast its side
/// of each stream was closed.
pub async fn memory(
    target: &Target,
    upstream: &Upstream,
    options: &Options,
    streams: usize,
) -> MemoryRun {
    let request = options.request;
    let pids = target.pids();
    let rss_before = target.is_proxy().then(|| procfs::rss_kib(&pids));
    let cpu = || target.is_proxy().then(|| procfs::cpu_seconds(&pids));
    let cpu_before_open = cpu();
    let open_before = upstream.open_connections();
    let accepted_before = upstream.accepted();
    let run = upstream.new_run();
    let spec = StreamSpec {
        events: 1,
        interval_us: 0,
        until_ns: 0,
        // Held far longer than the scenario; the harness aborts what is left at the end.
        hold_ms: 300_000,
        run,
        sid: 0,
    };
    // Opening thousands of connections at once overflows listen backlogs (and a dropped SYN
    // costs a 1 s retransmit): keep a bounded number of opens in flight.
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    let dial = target.dial();
    let started = now_ns();
    let tasks: Vec<_> = (0..streams)
        .map(|sid| {
            let gate = gate.clone();
            let spec = StreamSpec {
                sid: sid as u64,
                ..spec
            };
            let dial = dial.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                Ok((sid, open_to_first_event(&dial, &spec, request).await?))
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(streams);
    let mut out = MemoryRun {
        asked: streams,
        ..MemoryRun::default()
    };
    for task in tasks {
        match task.await {
            Ok(Ok(opened)) => conns.push(opened),
            Ok(Err(e)) => out.errors.add(e),
            Err(e) => out.errors.add(format!("task: {e}")),
        }
    }
    out.open_s = (now_ns() - started) as f64 / SEC as f64;
    out.opened = conns.len();
    tokio::time::sleep(Duration::from_secs_f64(options.settle_seconds)).await;
    out.rss_before_kib = rss_before;
    out.rss_after_kib = target.is_proxy().then(|| procfs::rss_kib(&pids));
    let cpu_before_leave = cpu();
    out.open_cpu_s = cpu_before_leave.zip(cpu_before_open).map(|(b, a)| b - a);

    let open_during = upstream.open_connections();
    out.upstream_accepted = upstream.accepted() - accepted_before;

    // Every client leaves at once: the connections are closed in one tight loop, each close
    // timed, so that a stream's close delay is counted from its own client's close (closing
    // 9,000 sockets takes the harness tens of milliseconds by itself).
    let left = now_ns();
    let mut client_closed = vec![0u64; streams];
    for (sid, conn) in conns {
        drop(conn);
        client_closed[sid] = now_ns();
    }
    let closed = closes_after(upstream, run, out.opened, now_ns(), options).await;
    out.leave_cpu_s = cpu().zip(cpu_before_leave).map(|(b, a)| b - a);
    out.closes = Closes::of(&closed, &client_closed);
    out.last_close_ns = closed.iter().map(|&(_, at)| at.saturating_sub(left)).max();
    out.upstream_open = [open_before, open_during, upstream.open_connections()];
    end_leftovers(upstream, run).await;
    out
}

/// Streams whose clients leave one by one in the middle of a stream: once `n` streams are all
/// flowing at the latency scenario's rate, each client closes its connection at its own time,
/// spread over the ramp (1,000 over a second), and the upstream reports how soon its side of
/// each was closed, timed from that stream's own client's close. The memory scenario's mass
/// departure of idle streams is the other half of "closed when its client leaves, idle or not".
pub async fn leave(target: &Target, upstream: &Upstream, options: &Options) -> LeaveRun {
    let n = options.leave_streams;
    let request = options.request;
    let run = upstream.new_run();
    let interval_us = options.event_interval_us();
    let spread_ns = (options.ramp_seconds * SEC as f64) as u64;
    // Streams that would outlive the scenario: none ends by itself before its client leaves.
    let lifetime_ns = 60 * SEC;
    let spec = StreamSpec {
        events: lifetime_ns / (interval_us * 1000) + 2,
        interval_us,
        until_ns: now_ns() + lifetime_ns,
        hold_ms: 0,
        run,
        sid: 0,
    };
    let dial = target.dial();
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    let flowing = Arc::new(AtomicUsize::new(0));
    // When the first client leaves; the others follow at their own times after it.
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<u64>);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (dial, gate, flowing, mut go) =
                (dial.clone(), gate.clone(), flowing.clone(), go_rx.clone());
            let spec = StreamSpec {
                sid: i as u64,
                ..spec
            };
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                let mut conn = open_to_first_event(&dial, &spec, request).await?;
                drop(permit);
                flowing.fetch_add(1, Ordering::Relaxed);
                // This client's time to leave: its place after the first one's.
                let leave = async {
                    let first = go.wait_for(Option::is_some).await.map(|g| g.unwrap_or(0));
                    let first = first.map_err(|e| e.to_string())?;
                    let at = instant_of(first + spread_ns * i as u64 / n as u64);
                    tokio::time::sleep_until(at.into()).await;
                    Ok::<(), String>(())
                };
                tokio::pin!(leave);
                // Reading on (the stream flows) until then.
                loop {
                    tokio::select! {
                        left = &mut leave => break left?,
                        item = conn.next() => if let Item::End { .. } = item? {
                            return Err("the stream ended before its client left".into());
                        },
                    }
                }
                drop(conn);
                Ok((i, now_ns()))
            })
        })
        .collect();
    let mut out = LeaveRun {
        streams: n,
        ..LeaveRun::default()
    };
    // Every stream flowing (or failed) before the first client leaves; bounded by the opens'
    // own timeout.
    let deadline = now_ns() + 35 * SEC;
    while flowing.load(Ordering::Relaxed) + tasks.iter().filter(|t| t.is_finished()).count() < n
        && now_ns() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_leave = now_ns() + 100 * MS;
    let _ = go_tx.send(Some(first_leave));
    let mut client_closed = vec![0u64; n];
    for task in tasks {
        match task.await {
            Ok(Ok((sid, at))) => {
                client_closed[sid] = at;
                out.left += 1;
            }
            Ok(Err(e)) => out.errors.add(e),
            Err(e) => out.errors.add(format!("task: {e}")),
        }
    }
    let closed = closes_after(upstream, run, out.left, now_ns(), options).await;
    out.closes = Closes::of(&closed, &client_closed);
    end_leftovers(upstream, run).await;
    out
}

/// A stream opened up to its first event (30 s at most).
async fn open_to_first_event(
    dial: &Dial,
    spec: &StreamSpec,
    request: RequestKind,
) -> Result<Conn, String> {
    timeout(Duration::from_secs(30), async {
        let mut conn = Conn::connect(dial).await?;
        conn.send(spec, request).await?;
        let head = conn.read_head().await?;
        if head.status != 200 {
            return Err(format!("status {}", head.status));
        }
        match conn.next().await? {
            Item::Event { .. } => Ok(conn),
            other => Err(format!("expected the first event, got {other:?}")),
        }
    })
    .await
    .unwrap_or_else(|_| Err("opening the stream timed out".into()))
}

/// The upstream's closes of a run's streams, once `expected` have come or the close wait after
/// `last_client_close` is over.
async fn closes_after(
    upstream: &Upstream,
    run: u64,
    expected: usize,
    last_client_close: u64,
    options: &Options,
) -> Vec<(u64, u64)> {
    let close_wait = (options.close_wait_seconds * SEC as f64) as u64;
    for _ in 0..300 {
        let log = upstream.run_log(run);
        if log.closed_at.len() >= expected || now_ns() > last_client_close + close_wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.run_log(run).closed_at
}

/// Streams a proxy left open are ended from the upstream side, so the next target starts with
/// the descriptors back.
async fn end_leftovers(upstream: &Upstream, run: u64) {
    upstream.abort_through(run);
    for _ in 0..1000 {
        if upstream.run_log(run).active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The TLS version and cipher suite a target agrees on with the client (`None`: plain, or the
/// connection failed, which the warm-up reports).
pub async fn tls_parameters(dial: &Dial) -> Option<String> {
    dial.tls.as_ref()?;
    let conn = timeout(Duration::from_secs(10), Conn::connect(dial))
        .await
        .ok()?
        .ok()?;
    conn.tls_parameters()
}

/// A few short streams, to see that a target works and to warm it up (pools, lazy state).
pub async fn warm_up(
    dial: &Dial,
    upstream: &Upstream,
    streams: usize,
    request: RequestKind,
) -> Result<(), String> {
    let spec = StreamSpec {
        events: 20,
        interval_us: 1000,
        until_ns: 0,
        hold_ms: 0,
        run: upstream.new_run(),
        sid: 0,
    };
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let dial = dial.clone();
            tokio::spawn(async move {
                timeout(Duration::from_secs(10), async {
                    let mut conn = Conn::connect(&dial).await?;
                    let mut events = 0;
                    conn.send(&spec, request).await?;
                    read_stream(&mut conn, |_, _| events += 1).await?;
                    if events != 20 {
                        return Err(format!("{events} of 20 events arrived"));
                    }
                    Ok(())
                })
                .await
                .unwrap_or_else(|_| Err("warm-up stream timed out".into()))
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}
