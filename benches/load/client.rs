//! The harness client: one keep-alive HTTP/1.1 connection, a chat-completions stream request as
//! an SDK sends it, and the response read event by event with the time each event arrived.

use crate::clock::now_ns;
use crate::http1::{ChunkedDecoder, Framing, SseItem, SseScanner};
use crate::upstream::StreamSpec;
use std::collections::VecDeque;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

const MAX_HEAD: usize = 64 * 1024;
/// No response takes more reads than this (every read returns at least one byte).
const MAX_READS: u64 = 100_000_000;
const BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Write a haiku about rivers."}]}"#;

/// The header fields of the client's stream request (besides `Host` and `Content-Length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// What the OpenAI Python SDK sends (`x-stainless-*`, a project key; values made up, sizes
    /// alike): 15 fields, 596 bytes. A proxy may keep a request's head for as long as its
    /// response lasts, so it weighs on memory per stream.
    Sdk,
    /// Three fields: the request of runs before 2026-12-05, for comparing with them.
    Minimal,
}

impl RequestKind {
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Sdk => "sdk",
            RequestKind::Minimal => "minimal",
        }
    }

    pub fn fields(self) -> &'static str {
        match self {
            RequestKind::Sdk => SDK_FIELDS,
            RequestKind::Minimal => MINIMAL_FIELDS,
        }
    }
}

const SDK_FIELDS: &str = "Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
Accept: application/json\r\n\
Content-Type: application/json\r\n\
User-Agent: OpenAI/Python 1.54.4\r\n\
X-Stainless-Lang: python\r\n\
X-Stainless-Package-Version: 1.54.4\r\n\
X-Stainless-OS: Linux\r\n\
X-Stainless-Arch: x64\r\n\
X-Stainless-Runtime: CPython\r\n\
X-Stainless-Runtime-Version: 3.12.3\r\n\
Authorization: Bearer sk-proj-LoadHarness0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghij\r\n\
X-Stainless-Async: false\r\n\
x-stainless-retry-count: 0\r\n\
x-stainless-read-timeout: 600\r\n";

const MINIMAL_FIELDS: &str = "content-type: application/json\r\naccept: text/event-stream\r\nauthorization: Bearer sk-load-harness\r\n";

/// One item of a response body, in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A content event: when the upstream wrote it and when its last byte arrived here.
    Event { sent_ns: u64, recv_ns: u64 },
    /// Any other complete event (finish, usage, a proxy's own).
    Other,
    /// The body ended; `done`: `data: [DONE]` was seen.
    End { done: bool },
}

#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub status: u16,
    /// When the first byte of the response arrived.
    pub first_byte_ns: u64,
}

struct Body {
    framing: Framing,
    decoder: ChunkedDecoder,
    scanner: SseScanner,
    decoded: Vec<u8>,
    queue: VecDeque<Item>,
    finished: bool,
    done_seen: bool,
}

impl Body {
    fn new(framing: Framing) -> Body {
        Body {
            framing,
            decoder: ChunkedDecoder::default(),
            scanner: SseScanner::default(),
            decoded: Vec::with_capacity(16 * 1024),
            queue: VecDeque::new(),
            finished: framing == Framing::Length(0),
            done_seen: false,
        }
    }
}

impl H2Stream {
    /// The stream request as HTTP/2 carries it: the same fields, less those HTTP/2 forbids
    /// (`Connection` and the like), `Host` as the authority.
    async fn send(&mut self, spec: &StreamSpec, kind: RequestKind) -> Result<(), String> {
        let mut request = http::Request::post(format!(
            "http://127.0.0.1/v1/chat/completions?{}",
            spec.query()
        ));
        for line in kind.fields().split("\r\n").filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if !name.eq_ignore_ascii_case("connection") {
                request = request.header(name.trim(), value.trim());
            }
        }
        let request = request
            .header("content-length", BODY.len())
            .body(())
            .map_err(|e| format!("request: {e}"))?;
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .map_err(|e| format!("send: {e}"))?;
        let (response, mut body) = sender
            .send_request(request, false)
            .map_err(|e| format!("send: {e}"))?;
        body.send_data(bytes::Bytes::from_static(BODY.as_bytes()), true)
            .map_err(|e| format!("send: {e}"))?;
        self.response = Some(response);
        self.body = None;
        Ok(())
    }

    async fn read_head(&mut self) -> Result<u16, String> {
        let response = self.response.take().ok_or("no request in progress")?;
        let response = response.await.map_err(|e| format!("response: {e}"))?;
        let status = response.status().as_u16();
        self.body = Some(response.into_body());
        Ok(status)
    }

    /// The next DATA frame's bytes appended to `raw`; 0 at the end of the stream.
    async fn read_data(&mut self, raw: &mut Vec<u8>) -> Result<usize, String> {
        let body = self.body.as_mut().ok_or("no response in progress")?;
        match body.data().await {
            None => Ok(0),
            Some(Err(e)) => Err(format!("read: {e}")),
            Some(Ok(data)) => {
                // Read is consumed: the window opens again for the next frames.
                let _ = body.flow_control().release_capacity(data.len());
                raw.extend_from_slice(&data);
                Ok(data.len())
            }
        }
    }
}

/// Where the client connects, whether over TLS (`SLUICE_LOAD_TLS`) and in HTTP/2
/// (`SLUICE_LOAD_H2`; proxies only, the harness upstream speaks HTTP/1.1).
#[derive(Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    pub tls: Option<TlsConnector>,
    pub h2: bool,
}

/// An HTTP/2 connection carrying one stream, as a browser tab's fetch does: the request's
/// response head, then its body's DATA frames.
struct H2Stream {
    sender: h2::client::SendRequest<bytes::Bytes>,
    response: Option<h2::client::ResponseFuture>,
    body: Option<h2::RecvStream>,
}

enum Transport {
    Http1(Stream),
    Http2(Box<H2Stream>),
}

/// A connection to a target: plain, or TLS over it (boxed: a TLS session is large).
type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

pub struct Conn {
    transport: Transport,
    /// What TLS negotiated (version, suite, ALPN), `None` on a plain connection.
    tls_parameters: Option<String>,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    /// When the last read returned: the arrival time of everything it brought.
    read_ns: u64,
    body: Option<Body>,
}

impl Conn {
    /// Connects (and completes the TLS handshake, when `dial` asks for TLS).
    pub async fn connect(dial: &Dial) -> Result<Conn, String> {
        let addr = dial.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (stream, tls_parameters) = match &dial.tls {
            None => (Either::Left(tcp), None),
            Some(connector) => {
                let tls = crate::tls::handshake(connector, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                let (_, session) = tls.get_ref();
                let alpn = session.alpn_protocol().unwrap_or(b"no ALPN");
                let version = session
                    .protocol_version()
                    .map_or("?".into(), |v| format!("{v:?}"));
                let suite = session
                    .negotiated_cipher_suite()
                    .map_or("?".into(), |s| format!("{:?}", s.suite()));
                let parameters = format!("{version} {suite} {}", String::from_utf8_lossy(alpn));
                (Either::Right(Box::new(tls)), Some(parameters))
            }
        };
        let transport = if dial.h2 {
            let (sender, connection) = h2::client::handshake(stream)
                .await
                .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
            // The connection's I/O runs on its own task, ended when the last handle is dropped.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Transport::Http2(Box::new(H2Stream {
                sender,
                response: None,
                body: None,
            }))
        } else {
            Transport::Http1(stream)
        };
        Ok(Conn {
            transport,
            tls_parameters,
            raw: Vec::with_capacity(16 * 1024),
            read_ns: 0,
            body: None,
        })
    }

    /// The TLS version, cipher suite and ALPN protocol negotiated, `None` on a plain connection.
    pub fn tls_parameters(&self) -> Option<String> {
        self.tls_parameters.clone()
    }

    /// Sends a stream request for `spec` (the upstream reads the query; proxies see a streaming
    /// chat-completions request with `kind`'s header fields).
    pub async fn send(&mut self, spec: &StreamSpec, kind: RequestKind) -> Result<(), String> {
        self.body = None;
        let stream = match &mut self.transport {
            Transport::Http1(stream) => stream,
            Transport::Http2(h2) => return h2.send(spec, kind).await,
        };
        let request = format!(
            "POST /v1/chat/completions?{} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}Content-Length: {}\r\n\r\n{BODY}",
            spec.query(),
            kind.fields(),
            BODY.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        // TLS may hold back records the socket did not take at once (plain: a no-op).
        stream.flush().await.map_err(|e| format!("send: {e}"))
    }

    async fn read_more(&mut self) -> Result<usize, String> {
        let n = match &mut self.transport {
            Transport::Http1(stream) => {
                self.raw.reserve(64 * 1024);
                stream
                    .read_buf(&mut self.raw)
                    .await
                    .map_err(|e| format!("read: {e}"))?
            }
            Transport::Http2(h2) => h2.read_data(&mut self.raw).await?,
        };
        self.read_ns = now_ns();
        Ok(n)
    }

    /// Reads the response head; the body is then read with [`Conn::next`].
    pub async fn read_head(&mut self) -> Result<Head, String> {
        if let Transport::Http2(h2) = &mut self.transport {
            let status = h2.read_head().await?;
            self.read_ns = now_ns();
            // A DATA frame per write; the end of the stream ends the body.
            self.body = Some(Body::new(Framing::UntilClose));
            return Ok(Head {
                status,
                first_byte_ns: self.read_ns,
            });
        }
        let mut first_byte_ns = if self.raw.is_empty() {
            None
        } else {
            Some(self.read_ns)
        };
        for _ in 0..MAX_READS {
            if !self.raw.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.raw) {
                    Ok(httparse::Status::Complete(len)) => {
                        let status = response.code.unwrap_or(0);
                        let framing = Framing::from_headers(response.headers, true);
                        self.raw.drain(..len);
                        self.body = Some(Body::new(framing));
                        return Ok(Head {
                            status,
                            first_byte_ns: first_byte_ns.unwrap_or(self.read_ns),
                        });
                    }
                    Ok(httparse::Status::Partial) if self.raw.len() < MAX_HEAD => {}
                    Ok(httparse::Status::Partial) => return Err("response head too large".into()),
                    Err(e) => return Err(format!("bad response head: {e}")),
                }
            }
            if self.read_more().await? == 0 {
                return Err("closed before the response head".into());
            }
            first_byte_ns.get_or_insert(self.read_ns);
        }
        Err("response head never completed".into())
    }

    /// The next item of the body. After [`Item::End`] the connection can carry another request
    /// (unless the body was delimited by the close).
    pub async fn next(&mut self) -> Result<Item, String> {
        for _ in 0..MAX_READS {
            let body = self.body.as_mut().ok_or("no response in progress")?;
            if let Some(item) = body.queue.pop_front() {
                return Ok(item);
            }
            if body.finished {
                return Ok(Item::End {
                    done: body.done_seen,
                });
            }
            if !self.raw.is_empty() {
                self.decode()?;
                continue;
            }
            if self.read_more().await? == 0 {
                let body = self.body.as_mut().ok_or("no response in progress")?;
                if body.framing != Framing::UntilClose {
                    return Err("connection closed inside the response body".into());
                }
                body.finished = true;
            }
        }
        Err("response body never ended".into())
    }

    fn decode(&mut self) -> Result<(), String> {
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        body.decoded.clear();
        let used = match body.framing {
            Framing::Chunked => {
                let used = body.decoder.feed(&self.raw, &mut body.decoded)?;
                body.finished = body.decoder.is_done();
                used
            }
            Framing::Length(left) => {
                let take = self
                    .raw
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                body.decoded.extend_from_slice(&self.raw[..take]);
                body.framing = Framing::Length(left - take as u64);
                body.finished = left == take as u64;
                take
            }
            Framing::UntilClose => {
                body.decoded.extend_from_slice(&self.raw);
                self.raw.len()
            }
        };
        self.raw.drain(..used);
        let recv_ns = self.read_ns;
        let queue = &mut body.queue;
        let done_seen = &mut body.done_seen;
        body.scanner.feed(&body.decoded, |item| match item {
            SseItem::Timestamped(sent_ns) => queue.push_back(Item::Event { sent_ns, recv_ns }),
            SseItem::Done => *done_seen = true,
            SseItem::Other => queue.push_back(Item::Other),
        });
        Ok(())
    }
}
