//! The relay's clock for one response: when the next heartbeat is due, when the upstream has been
//! silent too long, when the stream has lived too long. Pure: the caller passes `now` and sleeps
//! until `next_deadline`.

use std::time::{Duration, Instant};

/// The SSE comment sent while the upstream is silent.
pub const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// How long an upstream has, after the provider's end-of-stream marker, to end its body. A
/// provider ends it at once; one that keeps the connection open (or goes on sending) would
/// otherwise hold the stream, its slot and, with `durability: before_end`, the marker itself
/// away from the client until the idle timeout.
pub const END_MARKER_LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayPolicy {
    pub idle_timeout: Option<Duration>,
    pub heartbeat: Option<Duration>,
    pub max_duration: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTick {
    Heartbeat,
    IdleTimeout,
    MaxDuration,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    Completed,
    ClientDisconnect,
    IdleTimeout,
    MaxDuration,
    UpstreamError,
    /// Still running when the grace period of a shutdown was over: ended by Sluice.
    Shutdown,
}

impl StreamOutcome {
    pub const ALL: [StreamOutcome; 6] = [
        StreamOutcome::Completed,
        StreamOutcome::ClientDisconnect,
        StreamOutcome::IdleTimeout,
        StreamOutcome::MaxDuration,
        StreamOutcome::UpstreamError,
        StreamOutcome::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamOutcome::Completed => "completed",
            StreamOutcome::ClientDisconnect => "client_disconnect",
            StreamOutcome::IdleTimeout => "idle_timeout",
            StreamOutcome::MaxDuration => "max_duration",
            StreamOutcome::UpstreamError => "upstream_error",
            StreamOutcome::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RelayClock {
    policy: RelayPolicy,
    started: Instant,
    idle_since: Instant,
    next_heartbeat: Option<Instant>,
}

impl RelayClock {
    /// `heartbeats` is false for responses that are not event streams.
    pub fn new(policy: RelayPolicy, now: Instant, heartbeats: bool) -> Self {
        let policy = RelayPolicy {
            heartbeat: policy.heartbeat.filter(|_| heartbeats),
            ..policy
        };
        RelayClock {
            policy,
            started: now,
            idle_since: now,
            next_heartbeat: policy.heartbeat.map(|h| now + h),
        }
    }

    /// The earliest thing that will happen if the upstream stays silent.
    pub fn next_deadline(&self) -> Option<(Instant, RelayTick)> {
        let candidates = [
            self.policy
                .max_duration
                .map(|d| (self.started + d, RelayTick::MaxDuration)),
            self.policy
                .idle_timeout
                .map(|d| (self.idle_since + d, RelayTick::IdleTimeout)),
            self.next_heartbeat.map(|t| (t, RelayTick::Heartbeat)),
        ];
        candidates.into_iter().flatten().min_by_key(|(t, _)| *t)
    }

    /// Bytes arrived from upstream.
    pub fn on_upstream_bytes(&mut self, now: Instant) {
        self.idle_since = now;
        self.next_heartbeat = self.policy.heartbeat.map(|h| now + h);
    }

    /// The client took part of a write it had held at `at` (the upstream, not being read
    /// meanwhile, is not silent): the idle deadline starts again from there. Heartbeats are not
    /// sent while a write waits, so theirs does not move.
    pub fn on_client_progress(&mut self, at: Instant) {
        self.idle_since = self.idle_since.max(at);
    }

    /// A heartbeat was sent, or was due while an upstream event was half-sent and so postponed:
    /// either way the next one is a full interval away.
    pub fn on_heartbeat_due(&mut self, now: Instant) {
        self.next_heartbeat = self.policy.heartbeat.map(|h| now + h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RelayPolicy {
        RelayPolicy {
            idle_timeout: Some(Duration::from_secs(30)),
            heartbeat: Some(Duration::from_secs(10)),
            max_duration: Some(Duration::from_secs(100)),
        }
    }

    #[test]
    fn heartbeat_then_idle_then_max() {
        let t0 = Instant::now();
        let mut clock = RelayClock::new(policy(), t0, true);
        assert_eq!(
            clock.next_deadline(),
            Some((t0 + Duration::from_secs(10), RelayTick::Heartbeat))
        );
        clock.on_heartbeat_due(t0 + Duration::from_secs(10));
        clock.on_heartbeat_due(t0 + Duration::from_secs(20));
        clock.on_heartbeat_due(t0 + Duration::from_secs(30));
        assert_eq!(
            clock.next_deadline(),
            Some((t0 + Duration::from_secs(30), RelayTick::IdleTimeout))
        );
        // Upstream keeps talking every 9 s: only max_duration can end it.
        let mut clock = RelayClock::new(policy(), t0, true);
        for i in 1..=11 {
            clock.on_upstream_bytes(t0 + Duration::from_secs(9 * i));
        }
        assert_eq!(
            clock.next_deadline(),
            Some((t0 + Duration::from_secs(100), RelayTick::MaxDuration))
        );
    }

    #[test]
    fn bytes_reset_heartbeat_and_idle() {
        let t0 = Instant::now();
        let mut clock = RelayClock::new(policy(), t0, true);
        clock.on_upstream_bytes(t0 + Duration::from_secs(5));
        assert_eq!(
            clock.next_deadline(),
            Some((t0 + Duration::from_secs(15), RelayTick::Heartbeat))
        );
    }

    #[test]
    fn a_client_taking_a_held_write_moves_only_the_idle_deadline() {
        let t0 = Instant::now();
        let mut clock = RelayClock::new(policy(), t0, false);
        clock.on_upstream_bytes(t0 + Duration::from_secs(20));
        clock.on_client_progress(t0 + Duration::from_secs(40));
        assert_eq!(
            clock.next_deadline(),
            Some((t0 + Duration::from_secs(70), RelayTick::IdleTimeout))
        );
        // Progress noted late (before the last upstream bytes) moves nothing back.
        clock.on_client_progress(t0 + Duration::from_secs(10));
        assert_eq!(
            clock.next_deadline(),
            Some((t0 + Duration::from_secs(70), RelayTick::IdleTimeout))
        );
    }

    #[test]
    fn no_heartbeats_for_plain_responses_and_nothing_when_all_off() {
        let t0 = Instant::now();
        let clock = RelayClock::new(policy(), t0, false);
        assert_eq!(clock.next_deadline().unwrap().1, RelayTick::IdleTimeout);
        let clock = RelayClock::new(RelayPolicy::default(), t0, true);
        assert_eq!(clock.next_deadline(), None);
    }
}
