//! The admin listener: `/healthz` (the process is alive), `/readyz` (it takes new requests:
//! `503 draining` once it is shutting down), `/metrics`, and `/limits` (the stream slots this
//! instance holds, as JSON).
//!
//! Accepted by Sluice itself rather than by Pingora's listening service, which stops accepting
//! the moment shutdown begins: after SIGTERM the drain can last as long as the longest stream
//! (up to `server.grace_period`), and through it `/metrics` counts the streams that end and
//! `/readyz` tells balancers to send no more. At an upgrade it stops accepting once the sockets
//! are handed over: the new process answers from then on (its own readiness, its own counts).

use super::{drain, listener};
use crate::limits::Limiter;
use crate::telemetry::METRICS;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::server::{ListenFds, ShutdownWatch};
use std::sync::Arc;

pub struct AdminApp {
    pub limiter: Limiter,
    /// Its queue is read at each scrape (records not yet on disk).
    pub ledger: Option<Arc<crate::usage::ledger::Ledger>>,
    /// Export one gauge series per user holding streams (`limits.per_user_metrics`).
    pub per_user_metrics: bool,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, content_type, body) = match session.req_header().uri.path() {
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            "/readyz" if drain::draining() => (503, "text/plain", b"draining\n".to_vec()),
            "/readyz" => (200, "text/plain", b"ready\n".to_vec()),
            "/metrics" => {
                let snapshot = self.limiter.snapshot();
                METRICS
                    .limits
                    .observe_snapshot(&snapshot, self.per_user_metrics);
                if let Some(ledger) = &self.ledger {
                    METRICS.ledger_queue.set(ledger.stats().queue_len as i64);
                }
                (200, "text/plain; version=0.0.4", METRICS.render())
            }
            "/limits" => {
                let mut body = serde_json::to_vec_pretty(&self.limiter.snapshot())
                    .expect("a snapshot serialises");
                body.push(b'\n');
                (200, "application/json", body)
            }
            _ => (
                404,
                "text/plain",
                b"not found: try /healthz, /readyz, /metrics or /limits\n".to_vec(),
            ),
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static response parts are valid")
    }
}

pub struct AdminListener {
    pub addr: String,
    pub app: Arc<AdminApp>,
    /// Started with `-u` (see `listener::Listeners::upgrade`).
    pub upgrade: bool,
}

#[async_trait]
impl pingora::services::Service for AdminListener {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let listener =
            listener::listen_or_leave(&self.addr, fds.as_ref(), self.upgrade, &mut shutdown);
        let Some(listener) = listener.await else {
            return;
        };
        let mut accept_errors = listener::AcceptErrors::default();
        loop {
            let accepted = tokio::select! {
                biased;
                () = drain::handed_over(&mut shutdown) => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let app = self.app.clone();
                    let shutdown = shutdown.clone();
                    // Pingora's HTTP/1.1 handling of a `ServeHttp` app, which serves the
                    // connection's requests one after another while it is kept alive (not once
                    // shutdown has begun).
                    tokio::spawn(async move {
                        app.process_new(super::tcp::Tcp::stream(tcp), &shutdown)
                            .await
                    });
                }
                Err(e) => {
                    accept_errors.failed("admin accept()", &e);
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn name(&self) -> &str {
        "sluice admin"
    }

    /// Metrics and probes need little: one thread of their own, away from the proxy's.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.addr.clone()])
    }
}
