//! An upstream host name's addresses: looked up once, kept, refreshed, and tried in turn.
//!
//! Looking the name up for every new connection put a resolver call (getaddrinfo on tokio's
//! blocking pool; without a local cache, a DNS round trip) before each fresh stream, and only
//! the first address of the answer was ever tried: a name whose first address does not answer
//! (an IPv6 address on a host without IPv6 routes, one replica of several down) failed every
//! request. Here the answer is kept for `dns_refresh`, then looked up again in the background
//! while the kept one serves (and stays when the lookup fails). New connections go round the
//! addresses, the way nginx goes round an upstream's; an address that failed a connection is
//! passed over while others are up, for 10 s after its first failure in a row, doubling up to
//! 5 min, and when every address has failed the name is looked up again at once.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most addresses one new connection tries (each within `connect_timeout`).
pub const MAX_ATTEMPTS: usize = 3;
/// How long an address that failed is passed over after its first failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A lookup that failed with no answer kept is not repeated sooner (requests meanwhile get its
/// error): an unresolvable name must not turn each request into a resolver call.
const FAILED_LOOKUP_KEPT: Duration = Duration::from_secs(1);

pub type LookupFuture = Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, String>> + Send>>;
/// How names are looked up: the system resolver, or a script in tests.
pub type Lookup = Arc<dyn Fn(&str, u16) -> LookupFuture + Send + Sync>;

/// The system resolver (`/etc/hosts`, then DNS, as `nsswitch.conf` says).
pub fn system_lookup() -> Lookup {
    Arc::new(|host: &str, port: u16| {
        let host = host.to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?
                .collect();
            Ok(addrs)
        })
    })
}

/// One upstream host name and port, and what is known of its addresses.
pub struct HostAddrs {
    host: String,
    port: u16,
    refresh: Duration,
    /// Longest wait for one lookup (the upstream's `connect_timeout`): a resolver that does not
    /// answer would otherwise hold the first connection for its own retries (20 s and more
    /// with glibc's defaults and two name servers).
    lookup_timeout: Duration,
    lookup: Lookup,
    state: Mutex<State>,
    /// Held by the request looking the name up while no answer is kept.
    first_lookup: tokio::sync::Mutex<()>,
    /// Counts the answers that dropped an address: part of the pool's key, so that connections
    /// to an address the name no longer has are not reused (a busy pool's never expire).
    generation: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The last answer, in the resolver's order; empty until a lookup succeeded.
    addrs: Vec<Addr>,
    /// When `addrs` was looked up; `None` asks for a lookup at once.
    looked_up: Option<Instant>,
    refreshing: bool,
    /// The last failed lookup, while no answer is kept.
    failed: Option<(Instant, String)>,
    /// Where the next connection starts going round.
    next: usize,
}

struct Addr {
    addr: SocketAddr,
    /// Failed connections in a row.
    fails: u32,
    down_until: Option<Instant>,
}

impl HostAddrs {
    pub fn new(
        host: &str,
        port: u16,
        refresh: Duration,
        lookup_timeout: Duration,
        lookup: Lookup,
    ) -> Arc<HostAddrs> {
        Arc::new(HostAddrs {
            host: host.to_string(),
            port,
            refresh,
            lookup_timeout,
            lookup,
            state: Mutex::new(State::default()),
            first_lookup: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        })
    }

    /// Changes when an answer drops an address.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The addresses a new connection should try, in order (at most [`MAX_ATTEMPTS`]), or why
    /// there are none. Waits for a lookup only when no answer is kept, and then one lookup
    /// serves every request waiting for it.
    pub async fn candidates(self: &Arc<Self>) -> Result<Vec<SocketAddr>, String> {
        if let Some(kept) = self.kept() {
            return kept;
        }
        let _turn = self.first_lookup.lock().await;
        if let Some(kept) = self.kept() {
            return kept;
        }
        let answer = self.look_up().await;
        let now = Instant::now();
        let mut state = self.lock();
        match answer {
            Ok(addrs) if !addrs.is_empty() => state.store(addrs, now),
            Ok(_) => return Err(failed(&mut state, now, "no address".into())),
            Err(e) => return Err(failed(&mut state, now, e)),
        }
        Ok(state.pick(now))
    }

    /// What the kept answer (or a lookup that just failed) gives, if anything; a stale answer
    /// is looked up again in the background.
    fn kept(self: &Arc<Self>) -> Option<Result<Vec<SocketAddr>, String>> {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.addrs.is_empty() {
            let stale = state
                .looked_up
                .is_none_or(|at| now.duration_since(at) >= self.refresh);
            if stale && !state.refreshing {
                state.refreshing = true;
                tokio::spawn(self.clone().refresh());
            }
            return Some(Ok(state.pick(now)));
        }
        match &state.failed {
            Some((at, error)) if now.duration_since(*at) < FAILED_LOOKUP_KEPT => {
                Some(Err(error.clone()))
            }
            _ => None,
        }
    }

    /// A connection to `addr` was made: it is up again.
    pub fn connected(&self, addr: SocketAddr) {
        let mut state = self.lock();
        if let Some(a) = state.addrs.iter_mut().find(|a| a.addr == addr) {
            a.fails = 0;
            a.down_until = None;
        }
    }

    /// A connection to `addr` failed: passed over for a while. Counted once per wait: the
    /// connections that were trying it together fail together, and a second failure in a row is
    /// one after its wait. When this leaves every address down, the name is looked up again by
    /// the next connection (once: while all stay down, not on every failure).
    pub fn connect_failed(&self, addr: SocketAddr) {
        let now = Instant::now();
        let mut state = self.lock();
        let all_were_down = state.addrs.iter().all(|a| a.is_down(now));
        let Some(a) = state.addrs.iter_mut().find(|a| a.addr == addr) else {
            return;
        };
        if a.is_down(now) {
            return;
        }
        a.fails = a.fails.saturating_add(1);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (a.fails - 1).min(16))
            .min(MAX_BACKOFF);
        a.down_until = Some(now + backoff);
        if !all_were_down && state.addrs.iter().all(|a| a.is_down(now)) {
            state.looked_up = None;
        }
    }

    async fn refresh(self: Arc<Self>) {
        /// Clears `refreshing` however the refresh ends (also dropped, or a panic): else the
        /// answer would never be refreshed again.
        struct Done<'a>(&'a HostAddrs);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.lock().refreshing = false;
            }
        }
        let _done = Done(&self);
        let answer = self.look_up().await;
        let now = Instant::now();
        let mut state = self.lock();
        match answer {
            Ok(addrs) if !addrs.is_empty() => {
                let before = state.sorted_addrs();
                state.store(addrs, now);
                let after = state.sorted_addrs();
                if before.iter().any(|a| !after.contains(a)) {
                    self.generation.fetch_add(1, Ordering::Relaxed);
                }
                // Compared as sets: round-robin DNS answers in a new order each time.
                if after != before {
                    let listed: Vec<String> = after.iter().map(|a| a.to_string()).collect();
                    log::info!(
                        "upstream host {} now has the addresses {}",
                        self.host,
                        listed.join(", ")
                    );
                }
            }
            other => {
                let error = other.err().unwrap_or_else(|| "no address".into());
                log::warn!(
                    "cannot look up upstream host {} again ({error}): keeping its {} known addresses",
                    self.host,
                    state.addrs.len()
                );
                // Tried again after another `dns_refresh`, not by every request meanwhile.
                state.looked_up = Some(now);
            }
        }
    }

    async fn look_up(&self) -> Result<Vec<SocketAddr>, String> {
        let lookup = (self.lookup)(&self.host, self.port);
        match tokio::time::timeout(self.lookup_timeout, lookup).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {:?}", self.lookup_timeout)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves nothing half-done that matters here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn failed(state: &mut State, now: Instant, error: String) -> String {
    state.failed = Some((now, error.clone()));
    error
}

impl State {
    fn sorted_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.addrs.iter().map(|a| a.addr).collect();
        addrs.sort();
        addrs
    }

    /// A new answer. Addresses it keeps keep their failures (a refresh does not bring a down
    /// address back early); duplicates are dropped.
    fn store(&mut self, answer: Vec<SocketAddr>, now: Instant) {
        let mut addrs: Vec<Addr> = Vec::with_capacity(answer.len());
        for addr in answer {
            if addrs.iter().any(|a| a.addr == addr) {
                continue;
            }
            let known = self.addrs.iter().find(|a| a.addr == addr);
            addrs.push(Addr {
                addr,
                fails: known.map_or(0, |a| a.fails),
                down_until: known.and_then(|a| a.down_until),
            });
        }
        self.addrs = addrs;
        self.looked_up = Some(now);
        self.failed = None;
    }

    /// The addresses that are up, going round from where the last connection started, then
    /// the down ones, the soonest back first.
    fn pick(&mut self, now: Instant) -> Vec<SocketAddr> {
        let n = self.addrs.len();
        let start = self.next % n;
        self.next = start + 1;
        let round = (0..n).map(|i| &self.addrs[(start + i) % n]);
        let mut picked: Vec<SocketAddr> = round
            .clone()
            .filter(|a| !a.is_down(now))
            .map(|a| a.addr)
            .take(MAX_ATTEMPTS)
            .collect();
        if picked.len() < MAX_ATTEMPTS {
            let mut down: Vec<&Addr> = round.filter(|a| a.is_down(now)).collect();
            down.sort_by_key(|a| a.down_until);
            picked.extend(
                down.iter()
                    .map(|a| a.addr)
                    .take(MAX_ATTEMPTS - picked.len()),
            );
        }
        picked
    }
}

impl Addr {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|until| until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 8080))
    }

    /// A lookup that answers with whatever `answers` holds when called, counting its calls; it
    /// lets other tasks run once before it answers, as a real one would.
    fn scripted(
        answers: Arc<Mutex<Result<Vec<SocketAddr>, String>>>,
        calls: Arc<AtomicUsize>,
    ) -> Lookup {
        Arc::new(move |_: &str, _: u16| {
            calls.fetch_add(1, Ordering::SeqCst);
            let answer = answers.lock().unwrap().clone();
            Box::pin(async move {
                tokio::task::yield_now().await;
                answer
            })
        })
    }

    struct Fixture {
        host: Arc<HostAddrs>,
        answers: Arc<Mutex<Result<Vec<SocketAddr>, String>>>,
        calls: Arc<AtomicUsize>,
    }

    fn fixture(answer: Result<Vec<SocketAddr>, String>, refresh: Duration) -> Fixture {
        let answers = Arc::new(Mutex::new(answer));
        let calls = Arc::new(AtomicUsize::new(0));
        let host = HostAddrs::new(
            "api.example",
            8080,
            refresh,
            Duration::from_secs(5),
            scripted(answers.clone(), calls.clone()),
        );
        Fixture {
            host,
            answers,
            calls,
        }
    }

    /// Lets a spawned refresh run (the scripted lookup answers at once).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_answer_is_kept_until_it_is_stale() {
        let f = fixture(Ok(vec![addr(1)]), Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(f.host.candidates().await.unwrap(), vec![addr(1)]);
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_answer_serves_while_it_is_looked_up_again() {
        let f = fixture(Ok(vec![addr(1)]), Duration::ZERO);
        assert_eq!(f.host.candidates().await.unwrap(), vec![addr(1)]);
        *f.answers.lock().unwrap() = Ok(vec![addr(2)]);
        // Stale at once: served as it is, looked up in the background.
        assert_eq!(f.host.candidates().await.unwrap(), vec![addr(1)]);
        settle().await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
        assert_eq!(f.host.candidates().await.unwrap(), vec![addr(2)]);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_answer() {
        let f = fixture(Ok(vec![addr(1), addr(2)]), Duration::ZERO);
        f.host.candidates().await.unwrap();
        *f.answers.lock().unwrap() = Err("SERVFAIL".into());
        f.host.candidates().await.unwrap();
        settle().await;
        let mut seen = f.host.candidates().await.unwrap();
        seen.sort();
        assert_eq!(seen, vec![addr(1), addr(2)]);
    }

    #[tokio::test]
    async fn a_failed_lookup_is_an_error_repeated_at_most_each_second() {
        let f = fixture(Err("no such host".into()), Duration::from_secs(60));
        for _ in 0..3 {
            let error = f.host.candidates().await.unwrap_err();
            assert_eq!(error, "no such host");
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        let f = fixture(Ok(vec![]), Duration::from_secs(60));
        assert_eq!(f.host.candidates().await.unwrap_err(), "no address");
    }

    #[tokio::test]
    async fn requests_waiting_for_the_first_answer_share_one_lookup() {
        let f = fixture(Ok(vec![addr(1)]), Duration::from_secs(60));
        let waiting: Vec<_> = (0..8)
            .map(|_| {
                let host = f.host.clone();
                tokio::spawn(async move { host.candidates().await })
            })
            .collect();
        for request in waiting {
            assert_eq!(request.await.unwrap().unwrap(), vec![addr(1)]);
        }
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_lookup_that_does_not_answer_fails_within_its_timeout() {
        let silent: Lookup = Arc::new(|_: &str, _: u16| Box::pin(std::future::pending()));
        let host = HostAddrs::new(
            "api.example",
            8080,
            Duration::from_secs(60),
            Duration::from_millis(50),
            silent,
        );
        let started = Instant::now();
        let error = host.candidates().await.unwrap_err();
        assert_eq!(error, "no answer within 50ms");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn connections_go_round_the_addresses() {
        let f = fixture(Ok(vec![addr(1), addr(2), addr(3), addr(1)]), Duration::MAX);
        let firsts: Vec<SocketAddr> = {
            let mut firsts = Vec::new();
            for _ in 0..6 {
                let candidates = f.host.candidates().await.unwrap();
                assert_eq!(candidates.len(), 3, "each once: {candidates:?}");
                firsts.push(candidates[0]);
            }
            firsts
        };
        assert_eq!(
            firsts,
            vec![addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]
        );
    }

    #[tokio::test]
    async fn a_failed_address_is_tried_last_until_it_connects_again() {
        let f = fixture(Ok(vec![addr(1), addr(2)]), Duration::MAX);
        f.host.candidates().await.unwrap();
        f.host.connect_failed(addr(1));
        for _ in 0..4 {
            assert_eq!(f.host.candidates().await.unwrap(), vec![addr(2), addr(1)]);
        }
        f.host.connected(addr(1));
        let mut firsts: Vec<SocketAddr> = Vec::new();
        for _ in 0..2 {
            firsts.push(f.host.candidates().await.unwrap()[0]);
        }
        firsts.sort();
        assert_eq!(firsts, vec![addr(1), addr(2)]);
    }

    #[tokio::test]
    async fn failures_in_a_row_lengthen_the_wait_up_to_five_minutes() {
        let f = fixture(Ok(vec![addr(1), addr(2)]), Duration::MAX);
        f.host.candidates().await.unwrap();
        let down_for = |host: &HostAddrs| {
            let state = host.lock();
            state.addrs[0].down_until.unwrap() - Instant::now()
        };
        // Its wait over, it is tried again, and fails again.
        let wait_over = |host: &HostAddrs| host.lock().addrs[0].down_until = Some(Instant::now());
        f.host.connect_failed(addr(1));
        assert!(down_for(&f.host) <= FIRST_BACKOFF);
        assert!(down_for(&f.host) > FIRST_BACKOFF - Duration::from_secs(1));
        wait_over(&f.host);
        f.host.connect_failed(addr(1));
        assert!(down_for(&f.host) > 2 * FIRST_BACKOFF - Duration::from_secs(1));
        for _ in 0..40 {
            wait_over(&f.host);
            f.host.connect_failed(addr(1));
        }
        assert!(down_for(&f.host) <= MAX_BACKOFF);
        assert!(down_for(&f.host) > MAX_BACKOFF - Duration::from_secs(1));
    }

    #[tokio::test]
    async fn when_every_address_failed_the_name_is_looked_up_again() {
        let f = fixture(Ok(vec![addr(1), addr(2)]), Duration::MAX);
        f.host.candidates().await.unwrap();
        f.host.connect_failed(addr(1));
        f.host.connect_failed(addr(2));
        *f.answers.lock().unwrap() = Ok(vec![addr(2), addr(3)]);
        // Still tried (nothing better is known yet), the soonest back first.
        assert_eq!(f.host.candidates().await.unwrap(), vec![addr(1), addr(2)]);
        settle().await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
        // The new answer: 3 is new and up, 2 keeps its failure.
        assert_eq!(f.host.candidates().await.unwrap(), vec![addr(3), addr(2)]);
    }

    #[tokio::test]
    async fn failures_of_connections_tried_together_count_once() {
        let f = fixture(Ok(vec![addr(1), addr(2)]), Duration::MAX);
        f.host.candidates().await.unwrap();
        for _ in 0..10 {
            f.host.connect_failed(addr(1));
        }
        let state = f.host.lock();
        assert_eq!(state.addrs[0].fails, 1);
        assert!(state.addrs[0].down_until.unwrap() <= Instant::now() + FIRST_BACKOFF);
    }

    #[tokio::test]
    async fn while_every_address_stays_down_the_name_is_looked_up_once() {
        let f = fixture(Ok(vec![addr(1)]), Duration::MAX);
        f.host.candidates().await.unwrap();
        f.host.connect_failed(addr(1));
        for _ in 0..5 {
            f.host.candidates().await.unwrap();
            settle().await;
            f.host.connect_failed(addr(1));
        }
        assert_eq!(
            f.calls.load(Ordering::SeqCst),
            2,
            "the first lookup and one more"
        );
    }

    #[tokio::test]
    async fn an_answer_that_drops_an_address_changes_the_generation() {
        let f = fixture(Ok(vec![addr(1), addr(2)]), Duration::ZERO);
        f.host.candidates().await.unwrap();
        let first = f.host.generation();
        // Reordered, or grown: the same generation.
        for answer in [vec![addr(2), addr(1)], vec![addr(1), addr(2), addr(3)]] {
            *f.answers.lock().unwrap() = Ok(answer);
            f.host.candidates().await.unwrap();
            settle().await;
            assert_eq!(f.host.generation(), first);
        }
        *f.answers.lock().unwrap() = Ok(vec![addr(1), addr(3)]);
        f.host.candidates().await.unwrap();
        settle().await;
        assert_ne!(f.host.generation(), first);
    }

    #[tokio::test]
    async fn at_most_max_attempts_addresses_are_tried() {
        let many: Vec<SocketAddr> = (1..=8).map(addr).collect();
        let f = fixture(Ok(many), Duration::MAX);
        assert_eq!(f.host.candidates().await.unwrap().len(), MAX_ATTEMPTS);
    }
}
