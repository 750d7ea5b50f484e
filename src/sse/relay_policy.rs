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
    /// The upstream's body has not ended within [`END_MARKER_LINGER`] of its end marker.
    EndMarkerLinger,
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
    last_upstream: Instant,
    /// When the next heartbeat is due; after the provider's end marker (no heartbeats then,
    /// `policy.heartbeat` is `None`), when the linger is over. One field for both: every open
    /// stream has a clock.
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
            last_upstream: now,
            next_heartbeat: policy.heartbeat.map(|h| now + h),
        }
    }

    /// The earliest thing that will happen if the upstream stays silent.
    pub fn next_deadline(&self) -> Option<(Instant, RelayTick)> {
        let next = if self.policy.heartbeat.is_some() {
            RelayTick::Heartbeat
        } else {
            RelayTick::EndMarkerLinger
        };
        let candidates = [
            self.policy
                .max_duration
                .map(|d| (self.started + d, RelayTick::MaxDuration)),
            self.policy
                .idle_timeout
                .map(|d| (self.last_upstream + d, RelayTick::IdleTimeout)),
            self.next_heartbeat.map(|t| (t, next)),
        ];
        candidates.into_iter().flatten().min_by_key(|(t, _)| *t)
    }

    /// Bytes arrived from upstream.
    pub fn on_upstream_bytes(&mut self, now: Instant) {
        self.last_upstream = now;
        self.schedule_heartbeat(now);
    }

    /// A heartbeat was sent, or was due while an upstream event was half-sent and so postponed:
    /// either way the next one is a full interval away.
    pub fn on_heartbeat_due(&mut self, now: Instant) {
        self.schedule_heartbeat(now);
    }

    /// The provider's end-of-stream marker has arrived: no more heartbeats (the stream is over
    /// for the client), and the upstream's body has [`END_MARKER_LINGER`] from now to end, bytes
    /// or not. Only the first call counts: an upstream that keeps sending cannot push it back.
    pub fn on_end_marker(&mut self, now: Instant) {
        if !self.end_marker_seen() {
            self.policy.heartbeat = None;
            self.next_heartbeat = Some(now + END_MARKER_LINGER);
        }
    }

    /// Until the linger is over ([`Self::on_linger_over`]).
    pub fn end_marker_seen(&self) -> bool {
        self.policy.heartbeat.is_none() && self.next_heartbeat.is_some()
    }

    /// The linger came while the stream could not end yet (a write to the client waited): no
    /// deadline any more; the caller ends the stream once the write is done.
    pub fn on_linger_over(&mut self) {
        self.next_heartbeat = None;
    }

    fn schedule_heartbeat(&mut self, now: Instant) {
        if let Some(interval) = self.policy.heartbeat {
            self.next_heartbeat = Some(now + interval);
        }
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
    fn after_the_end_marker_only_the_linger_and_the_limits_are_left() {
        let t0 = Instant::now();
        let mut clock = RelayClock::new(policy(), t0, true);
        clock.on_end_marker(t0 + Duration::from_secs(2));
        assert!(clock.end_marker_seen());
        let over = t0 + Duration::from_secs(2) + END_MARKER_LINGER;
        assert_eq!(
            clock.next_deadline(),
            Some((over, RelayTick::EndMarkerLinger))
        );
        // Bytes after the marker neither bring heartbeats back nor push the linger's end.
        clock.on_upstream_bytes(t0 + Duration::from_millis(2_500));
        clock.on_end_marker(t0 + Duration::from_millis(2_600));
        clock.on_heartbeat_due(t0 + Duration::from_millis(2_700));
        assert_eq!(
            clock.next_deadline(),
            Some((over, RelayTick::EndMarkerLinger))
        );
        clock.on_linger_over();
        assert_eq!(clock.next_deadline().unwrap().1, RelayTick::IdleTimeout);
        // A limit that comes first still comes first.
        let mut clock = RelayClock::new(policy(), t0, true);
        clock.on_upstream_bytes(t0 + Duration::from_millis(99_500));
        clock.on_end_marker(t0 + Duration::from_millis(99_500));
        assert_eq!(clock.next_deadline().unwrap().1, RelayTick::MaxDuration);
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
