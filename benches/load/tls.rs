//! `SLUICE_LOAD_TLS=1`: every proxy terminates TLS for the harness client, as an edge proxy
//! does, so each scenario also weighs the handshake (first byte), record encryption (latency,
//! throughput) and a TLS session's state (memory). The upstream stays plain HTTP, and so does
//! `direct`: figures added over direct include what TLS costs.
//!
//! One certificate authority and one ECDSA P-256 leaf for `localhost` / `127.0.0.1` per run
//! (rcgen, the tests' own `TestCa`). The client offers only TLS 1.3 and `http/1.1` (`h2` with
//! `SLUICE_LOAD_H2`) and never
//! resumes a session, so every fresh stream is a full handshake (X25519, ECDSA) with every
//! proxy. Each proxy otherwise keeps its own TLS defaults (session tickets, cipher order), as
//! an operator who only adds a certificate would have it.

#[path = "../../tests/support/tls.rs"]
mod test_tls;

use rustls::pki_types::ServerName;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The name the client asks for and checks the certificate against.
const SERVER_NAME: &str = "localhost";

pub struct Tls {
    leaf: test_tls::Leaf,
    connector: TlsConnector,
}

/// A target's copy of the certificate and key.
pub struct Files {
    /// The leaf and its CA, PEM.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Chain and key in one PEM (HAProxy's `crt`).
    pub combined: PathBuf,
}

impl Tls {
    /// `h2`: the client offers `h2` by ALPN instead of `http/1.1`.
    pub fn new(h2: bool) -> Tls {
        let ca = test_tls::TestCa::new("Sluice load harness CA");
        let leaf = ca.leaf(&[SERVER_NAME, "127.0.0.1"]);
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        let mut config = test_tls::client_config(&ca, &[&rustls::version::TLS13], &[alpn]);
        config.resumption = rustls::client::Resumption::disabled();
        Tls {
            leaf,
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<Files, String> {
        let (cert, key) = self.leaf.write(dir, "tls");
        let combined = dir.join("tls-combined.pem");
        let text = format!("{}{}", self.leaf.cert_pem, self.leaf.key_pem);
        std::fs::write(&combined, text).map_err(|e| format!("{}: {e}", combined.display()))?;
        Ok(Files {
            cert,
            key,
            combined,
        })
    }

    pub fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }
}

pub async fn handshake(
    connector: &TlsConnector,
    tcp: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(SERVER_NAME).expect("a valid server name");
    connector.connect(name, tcp).await
}
