//! Plain-TCP HTTP/1.1 listeners, accepted by Sluice itself.
//!
//! Pingora's listening service spawns each connection as a task whose future also holds the TLS
//! handshake future (8.8 KiB, even on plain TCP), and then boxes `ServerApp::process_new`
//! (3.9 KiB, HTTP/2 handling included): 12.7 KiB per open connection, copied four times into
//! and out of the task on every new connection. Here a connection's task holds only the boxed
//! request future. TLS and h2c listeners stay on Pingora's service (`mod.rs`).
//!
//! Listening sockets go through Pingora's fd table, like its own listeners, so a graceful
//! upgrade (`sluice -u` + SIGQUIT) hands them over with the others.

use super::proxy::SluiceProxy;
use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::server::{ListenFds, ShutdownWatch};
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};

/// Kept idle between two requests on one connection, in seconds (Pingora's default).
const KEEPALIVE_SECONDS: u64 = 60;
/// Pending connections the kernel queues per listener (Pingora's value).
const BACKLOG: u32 = 65535;

pub struct PlainListeners {
    pub name: String,
    pub addrs: Vec<String>,
    pub app: Arc<SluiceProxy>,
}

#[async_trait]
impl pingora::services::Service for PlainListeners {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        for addr in &self.addrs {
            let listener = match listen(addr, fds.as_ref()) {
                Ok(listener) => listener,
                // As Pingora's own listeners do: a server that cannot listen does not run.
                Err(e) => panic!("cannot listen on {addr}: {e}"),
            };
            loops.push(tokio::spawn(accept_loop(
                listener,
                self.app.clone(),
                shutdown.clone(),
            )));
        }
        for accept in loops {
            let _ = accept.await;
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        None
    }
}

/// The listening socket for `addr`: inherited from the previous process in an upgrade, else
/// bound now and recorded for the next upgrade.
fn listen(addr: &str, fds: Option<&ListenFds>) -> std::io::Result<TcpListener> {
    if let Some(fd) = fds.and_then(|fds| fds.lock().get(addr).copied()) {
        // SAFETY: the fd table holds listening sockets handed over by the previous process,
        // each owned by exactly one listener.
        let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        return TcpListener::from_std(std);
    }
    let sock_addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = if sock_addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sock_addr)?;
    let listener = socket.listen(BACKLOG)?;
    if let Some(fds) = fds {
        fds.lock().add(addr.to_string(), listener.as_raw_fd());
    }
    Ok(listener)
}

async fn accept_loop(listener: TcpListener, app: Arc<SluiceProxy>, mut shutdown: ShutdownWatch) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|down| *down) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: the listener itself is fine.
                log::error!("accept() failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut stream = L4Stream::from(tcp);
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        stream.set_socket_digest(digest);
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { serve(Box::new(stream), app, shutdown).await });
    }
    // Listening stops at shutdown; after a hand-over the next process has its own copy of the
    // socket, so closing this one stops only this process from accepting.
}

/// One client connection: requests one after the other while it is kept alive.
async fn serve(stream: pingora::protocols::Stream, app: Arc<SluiceProxy>, shutdown: ShutdownWatch) {
    let mut session = ServerSession::new_http1(stream);
    loop {
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(KEEPALIVE_SECONDS));
        }
        let Some(reused) = app.process_new_http(session, &shutdown).await else {
            return;
        };
        let (stream, settings) = reused.consume();
        session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            settings.apply_to_session(&mut session);
        }
    }
}
