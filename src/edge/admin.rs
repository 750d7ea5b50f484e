//! The admin listener: `/healthz`, `/metrics`, and `/limits` (the stream slots this instance
//! holds, as JSON).

use crate::limits::Limiter;
use crate::telemetry::METRICS;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct AdminApp {
    pub limiter: Limiter,
    /// Export one gauge series per user holding streams (`limits.per_user_metrics`).
    pub per_user_metrics: bool,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, content_type, body) = match session.req_header().uri.path() {
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            "/metrics" => {
                let snapshot = self.limiter.snapshot();
                METRICS
                    .limits
                    .observe_snapshot(&snapshot, self.per_user_metrics);
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
                b"not found: try /healthz, /metrics or /limits\n".to_vec(),
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
