//! Where usage records go: metrics always, the ledger when configured (durably before a
//! stream's end under `durability: before_end`), and the request's access-log line.

use super::timer;
use super::RequestCtx;
use crate::config::{Durability, UsageSettings};
use crate::telemetry::{rfc3339_now, METRICS};
use crate::usage::ledger::{Ledger, LedgerConfig};
use crate::usage::record::{StreamFacts, UsageRecord};
use std::sync::Arc;
use std::time::Duration;

/// Longest a stream's end waits for its record to be on disk. Past it the stream ends anyway
/// and the miss is counted (`sluice_usage_ledger_errors_total`): a broken disk must not hang
/// every client. The record itself stays queued and is retried by the ledger.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

pub struct UsageSink {
    ledger: Option<Arc<Ledger>>,
    durability: Durability,
    max_event_size: usize,
    inspect: bool,
}

impl UsageSink {
    pub fn open(settings: &UsageSettings) -> Result<UsageSink, String> {
        let ledger = match &settings.ledger {
            Some(path) => {
                let config = LedgerConfig {
                    path: path.clone(),
                    rotate_bytes: settings.rotate_bytes,
                    keep: settings.keep,
                    ..LedgerConfig::default()
                };
                Some(Arc::new(
                    Ledger::open(config).map_err(|e| format!("usage.ledger: {e}"))?,
                ))
            }
            None => None,
        };
        Ok(UsageSink {
            ledger,
            durability: settings.durability,
            max_event_size: settings.max_event_size,
            inspect: settings.inspect,
        })
    }

    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    /// Whether a stream's final frame waits for its record to be durable.
    pub fn hold_final_frame(&self) -> bool {
        self.ledger.is_some() && self.durability == Durability::BeforeEnd
    }

    pub fn max_event_size(&self) -> usize {
        self.max_event_size
    }

    /// Whether streams are read for usage at all (`usage.inspect`).
    pub fn inspects(&self) -> bool {
        self.inspect
    }

    /// The record of the request in `ctx`, with what the extractor saw (if anything).
    pub fn record_for(
        ctx: &RequestCtx,
        facts: Option<&StreamFacts>,
        oversized_events: u64,
    ) -> UsageRecord {
        let route = ctx.route.as_deref();
        let record = UsageRecord {
            ts: rfc3339_now(),
            request_id: ctx.request_id.clone(),
            user: ctx.identity.as_ref().map(|i| i.user.clone()),
            key_id: ctx.identity.as_ref().map(|i| i.key_id.clone()),
            tenant: ctx.identity.as_ref().and_then(|i| i.tenant.clone()),
            route: route.map(|r| r.name.clone()).unwrap_or_default(),
            upstream: route.map(|r| r.upstream.name.clone()).unwrap_or_default(),
            provider: ctx.provider.as_str(),
            format: ctx.format.map(|f| f.as_str()),
            model: None,
            usage: Default::default(),
            usage_source: "none",
            outcome: ctx
                .outcome
                .unwrap_or(crate::sse::StreamOutcome::ClientDisconnect)
                .as_str(),
            status: ctx.status,
            end_marker_seen: false,
            finish_reason: None,
            provider_error: None,
            ttfb_ms: ctx
                .first_byte
                .map(|t| t.duration_since(ctx.started).as_secs_f64() * 1000.0),
            duration_ms: ctx.duration_ms(),
            events: 0,
            bytes: ctx.upstream_bytes_sent,
            oversized_events,
        };
        match facts {
            Some(facts) => record.with_facts(facts),
            None => record,
        }
    }

    /// Sends a record everywhere it goes. With `durable`, returns once the ledger has it on
    /// disk (bounded by [`DURABLE_WAIT`]); otherwise once it is queued.
    pub async fn record(&self, record: &UsageRecord, durable: bool) {
        METRICS.usage_recorded(record);
        let Some(ledger) = &self.ledger else {
            return;
        };
        let line = record.json_line();
        let result = if durable {
            timer::timeout(DURABLE_WAIT, ledger.append_durable(line)).await
        } else {
            timer::timeout(DURABLE_WAIT, ledger.append(line)).await
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                METRICS.ledger_errors.inc();
                log::error!(
                    "usage record {} not confirmed by the ledger: {e}",
                    record.request_id
                );
            }
            Err(_) => {
                METRICS.ledger_errors.inc();
                log::error!(
                    "usage record {} not on disk after {DURABLE_WAIT:?}; the stream ends anyway",
                    record.request_id
                );
            }
        }
    }
}
