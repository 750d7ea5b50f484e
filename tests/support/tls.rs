//! TLS test support: a certificate authority made in the test (rcgen), TLS clients that report
//! what they negotiated and which certificate they were shown, a raw ClientHello for protocol
//! versions rustls clients cannot offer, and an https upstream that speaks HTTP/2 or HTTP/1.1
//! (by ALPN) and records what it saw.
//!
//! Self-contained (no `super::` items), so it can be included by path or as `support::tls`.

#![allow(dead_code)]

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate authority that issues leaf certificates for loopback tests.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
}

/// A leaf certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` in `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (host names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.cert_pem).unwrap();
        path
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that trusts `ca` and offers `versions` and `alpn`.
pub fn client_config(
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// What a TLS client saw of the server.
pub struct Handshake {
    pub stream: TlsStream<TcpStream>,
    pub alpn: Option<Vec<u8>>,
    /// The leaf certificate the server presented.
    pub leaf: CertificateDer<'static>,
}

/// Connects with TLS, trusting `ca`, asking for `sni` and offering `alpn`.
pub async fn connect(addr: SocketAddr, ca: &TestCa, sni: &str, alpn: &[&[u8]]) -> Handshake {
    try_connect(addr, ca, sni, alpn)
        .await
        .expect("TLS handshake")
}

pub async fn try_connect(
    addr: SocketAddr,
    ca: &TestCa,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<Handshake> {
    let config = client_config(ca, rustls::DEFAULT_VERSIONS, alpn);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let stream = connector.connect(name, tcp).await?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(|p| p.to_vec());
    let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
    Ok(Handshake { stream, alpn, leaf })
}

/// One HTTP/1.1 request over TLS with `Connection: close`; returns (status, head, body).
pub async fn h1_request(
    stream: &mut TlsStream<TcpStream>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..line])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[line + 2..line + 2 + size]);
        raw = &raw[line + 2 + size + 2..];
    }
    out
}

/// A TLS ClientHello as a TLS 1.2 client would send it, offering only `version` (`0x0302` for
/// TLS 1.1, `0x0303` for TLS 1.2) in both `legacy_version` and `supported_versions`, with
/// ECDHE-ECDSA/RSA AES-GCM and CBC suites, x25519/P-256 and the usual signature algorithms.
pub fn client_hello(version: u16, sni: &str) -> Vec<u8> {
    fn u16be(v: usize) -> [u8; 2] {
        (v as u16).to_be_bytes()
    }
    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&u16be(data.len()));
        out.extend_from_slice(data);
        out
    }
    let mut extensions = Vec::new();
    // server_name
    let mut name = vec![0u8];
    name.extend_from_slice(&u16be(sni.len()));
    name.extend_from_slice(sni.as_bytes());
    let mut list = u16be(name.len()).to_vec();
    list.extend_from_slice(&name);
    extensions.extend(extension(0x0000, &list));
    // supported_groups: x25519, secp256r1
    extensions.extend(extension(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]));
    // ec_point_formats: uncompressed
    extensions.extend(extension(0x000b, &[1, 0]));
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    extensions.extend(extension(
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    ));
    // extended_master_secret
    extensions.extend(extension(0x0017, &[]));
    // supported_versions: only `version`
    let v = version.to_be_bytes();
    extensions.extend(extension(0x002b, &[2, v[0], v[1]]));

    let mut body = Vec::new();
    body.extend_from_slice(&v); // legacy_version
    body.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11))); // random
    body.push(0); // session id
                  // ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256,
                  // ECDHE-ECDSA-AES128-SHA, ECDHE-RSA-AES128-SHA, AES128-SHA
    let suites = [0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x2f];
    body.extend_from_slice(&u16be(suites.len()));
    body.extend_from_slice(&suites);
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&u16be(extensions.len()));
    body.extend_from_slice(&extensions);

    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16be(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

/// Sends a raw ClientHello and returns the first TLS record the server answers with as
/// (content type, payload) — `None` when it closed without answering.
pub async fn raw_hello(addr: SocketAddr, hello: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut header = [0u8; 5];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut header))
        .await
        .expect("the server answers or closes within 5 s");
    if read.is_err() {
        return None;
    }
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((header[0], payload))
}

/// What the https upstream answers: a status, a content type, and body chunks each written
/// after its delay; with `hold`, the response stays open (after the chunks) until the client
/// goes away.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub chunks: Vec<(Duration, Bytes)>,
    pub hold: bool,
}

impl Reply {
    pub fn json(body: &str) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            chunks: vec![(Duration::ZERO, Bytes::from(body.to_string()))],
            hold: false,
        }
    }

    /// An event stream: `events` events `gap` apart.
    pub fn events(events: usize, gap: Duration) -> Reply {
        Reply {
            status: 200,
            content_type: "text/event-stream",
            chunks: (0..events)
                .map(|i| (gap, Bytes::from(format!("data: {{\"i\":{i}}}\n\n"))))
                .collect(),
            hold: false,
        }
    }

    pub fn held(mut self) -> Reply {
        self.hold = true;
        self
    }
}

/// A request as the https upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub protocol: &'static str,
    pub sni: Option<String>,
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Default, Debug)]
pub struct TlsUpstreamLog {
    pub requests: Vec<Seen>,
    pub connections: usize,
    /// When a held response saw its client go (RST_STREAM over h2, close over h1).
    pub aborted: Vec<Instant>,
    /// When each chunk was written.
    pub sent: Vec<Instant>,
}

/// An https upstream on loopback: HTTP/2 when the client offers it by ALPN and `h2` is on,
/// HTTP/1.1 otherwise.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<TlsUpstreamLog>>,
    _runtime: tokio::runtime::Runtime,
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

impl TlsUpstream {
    pub fn start(
        leaf: &Leaf,
        h2: bool,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> TlsUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let certs = vec![leaf.der.clone()];
        let key = rustls_pem_key(&leaf.key_pem);
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(TlsUpstreamLog::default()));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept_log = log.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tcp.set_nodelay(true).unwrap();
                let acceptor = acceptor.clone();
                let log = accept_log.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    log.lock().unwrap().connections += 1;
                    let (_, session) = tls.get_ref();
                    let sni = session.server_name().map(str::to_string);
                    if session.alpn_protocol() == Some(b"h2") {
                        serve_h2(tls, sni, handler, log).await;
                    } else {
                        serve_h1(tls, sni, handler, log).await;
                    }
                });
            }
        });
        TlsUpstream {
            addr,
            log,
            _runtime: runtime,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }

    pub fn wait_aborted(&self, wait: Duration) -> Option<Instant> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(at) = self.log.lock().unwrap().aborted.first().copied() {
                return Some(at);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn rustls_pem_key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

impl TlsUpstream {
    /// A cleartext HTTP/2 upstream (prior knowledge, h2c), for `http2: true` on http:// URLs.
    pub fn start_h2c(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> TlsUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(TlsUpstreamLog::default()));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept_log = log.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tcp.set_nodelay(true).unwrap();
                accept_log.lock().unwrap().connections += 1;
                tokio::spawn(serve_h2(tcp, None, handler.clone(), accept_log.clone()));
            }
        });
        TlsUpstream {
            addr,
            log,
            _runtime: runtime,
        }
    }
}

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

async fn serve_h2<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: T,
    sni: Option<String>,
    handler: Arc<Handler>,
    log: Arc<Mutex<TlsUpstreamLog>>,
) {
    let Ok(mut connection) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let handler = handler.clone();
        let log = log.clone();
        let sni = sni.clone();
        tokio::spawn(async move {
            let (parts, mut body) = request.into_parts();
            let mut bytes = Vec::new();
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
                bytes.extend_from_slice(&data);
            }
            let seen = Seen {
                protocol: "h2",
                sni,
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                authority: parts.uri.authority().map(|a| a.to_string()),
                body: bytes,
            };
            let reply = handler(&seen);
            log.lock().unwrap().requests.push(seen);
            let response = http::Response::builder()
                .status(reply.status)
                .header("content-type", reply.content_type)
                .body(())
                .unwrap();
            let Ok(mut send) = respond.send_response(response, false) else {
                return;
            };
            for (delay, chunk) in reply.chunks {
                tokio::time::sleep(delay).await;
                if send.send_data(chunk, false).is_err() {
                    log.lock().unwrap().aborted.push(Instant::now());
                    return;
                }
                log.lock().unwrap().sent.push(Instant::now());
            }
            if reply.hold {
                let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
                log.lock().unwrap().aborted.push(Instant::now());
                return;
            }
            let _ = send.send_data(Bytes::new(), true);
        });
    }
}

async fn serve_h1(
    mut tls: ServerTls,
    sni: Option<String>,
    handler: Arc<Handler>,
    log: Arc<Mutex<TlsUpstreamLog>>,
) {
    let mut buf = Vec::new();
    loop {
        // The request head and a content-length body.
        let (head_len, seen_head) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
                let length: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0);
                let host = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .map(|h| String::from_utf8_lossy(h.value).to_string());
                break (
                    len,
                    (
                        request.method.unwrap().to_string(),
                        request.path.unwrap().to_string(),
                        host,
                        length,
                    ),
                );
            }
            match tls.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        let (method, path, authority, length) = seen_head;
        while buf.len() < head_len + length {
            match tls.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
        let body = buf[head_len..head_len + length].to_vec();
        buf.drain(..head_len + length);
        let seen = Seen {
            protocol: "http/1.1",
            sni: sni.clone(),
            method,
            path,
            authority,
            body,
        };
        let reply = handler(&seen);
        log.lock().unwrap().requests.push(seen);
        let head = format!(
            "HTTP/1.1 {} X\r\ncontent-type: {}\r\ntransfer-encoding: chunked\r\n\r\n",
            reply.status, reply.content_type
        );
        if tls.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let _ = tls.flush().await;
        for (delay, chunk) in reply.chunks {
            tokio::time::sleep(delay).await;
            let mut out = format!("{:x}\r\n", chunk.len()).into_bytes();
            out.extend_from_slice(&chunk);
            out.extend_from_slice(b"\r\n");
            if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
                log.lock().unwrap().aborted.push(Instant::now());
                return;
            }
            log.lock().unwrap().sent.push(Instant::now());
        }
        if reply.hold {
            let mut probe = [0u8; 64];
            let _ = tls.read(&mut probe).await;
            log.lock().unwrap().aborted.push(Instant::now());
            return;
        }
        if tls.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
        let _ = tls.flush().await;
    }
}
