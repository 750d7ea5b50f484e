//! Runs the built-in demo upstream inside the Sluice process, on a loopback port chosen at start.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::Mutex;

pub struct DemoUpstream {
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl DemoUpstream {
    /// Binds the port now, so that the proxy knows the address before any service starts.
    pub fn bind() -> std::io::Result<(DemoUpstream, SocketAddr)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok((
            DemoUpstream {
                listener: Mutex::new(Some(listener)),
            },
            addr,
        ))
    }
}

#[async_trait]
impl BackgroundService for DemoUpstream {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().expect("not poisoned").take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("demo upstream cannot listen: {e}");
                return;
            }
        };
        tokio::select! {
            _ = crate::demo::serve(listener) => {}
            _ = shutdown.changed() => {}
        }
    }
}
