//! A scripted upstream on loopback. For every request it runs the steps a handler returns,
//! recording when each chunk was written and when the connection was closed by Sluice.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub enum Step {
    /// Bytes written as they are (a response head, or a deliberately broken body).
    Raw(Vec<u8>),
    /// One chunk of a chunked body, in its own write; its send time is recorded.
    Chunk(Vec<u8>),
    /// The chunked terminator.
    End,
    /// Silence (while watching for the connection to close).
    Sleep(Duration),
    /// Silence until Sluice closes the connection (at most 30 s).
    Hold,
    /// Close the connection abruptly.
    Close,
}

impl Step {
    pub fn sse_head() -> Step {
        Step::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec(),
        )
    }

    /// The head of a chunked response with this `Content-Type` (e.g. `application/x-ndjson`).
    pub fn chunked_head(content_type: &str) -> Step {
        Step::Raw(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            .into_bytes(),
        )
    }

    pub fn chunk(data: impl AsRef<[u8]>) -> Step {
        Step::Chunk(data.as_ref().to_vec())
    }

    pub fn sleep_ms(ms: u64) -> Step {
        Step::Sleep(Duration::from_millis(ms))
    }

    /// A whole sized response.
    pub fn sized(status: u16, content_type: &str, body: &[u8]) -> Step {
        let mut out = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        Step::Raw(out)
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received: Instant,
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub struct UpstreamLog {
    pub requests: Vec<UpstreamRequest>,
    /// Send time and bytes of every `Step::Chunk`.
    pub sent: Vec<(Instant, Vec<u8>)>,
    /// When each connection was seen closed by the peer.
    pub closed: Vec<Instant>,
    pub connections: usize,
}

type Handler = dyn Fn(&UpstreamRequest) -> Vec<Step> + Send + Sync;

pub struct Upstream {
    pub addr: std::net::SocketAddr,
    pub log: Arc<Mutex<UpstreamLog>>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start(
        handler: impl Fn(&UpstreamRequest) -> Vec<Step> + Send + Sync + 'static,
    ) -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(UpstreamLog::default()));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept_log = log.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true).unwrap();
                accept_log.lock().unwrap().connections += 1;
                let (reader, writer) = stream.into_split();
                tokio::spawn(serve(reader, writer, handler.clone(), accept_log.clone()));
            }
        });
        Upstream {
            addr,
            log,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<UpstreamRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    pub fn sent(&self) -> Vec<(Instant, Vec<u8>)> {
        self.log.lock().unwrap().sent.clone()
    }

    /// Waits up to `wait` for a connection close and returns when it happened.
    pub fn wait_closed(&self, wait: Duration) -> Option<Instant> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(at) = self.log.lock().unwrap().closed.first().copied() {
                return Some(at);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until `n` requests have arrived.
    pub fn wait_requests(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log.lock().unwrap().requests.len() < n {
            assert!(Instant::now() < deadline, "upstream never got {n} requests");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

async fn serve(
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    handler: Arc<Handler>,
    log: Arc<Mutex<UpstreamLog>>,
) {
    let mut buf = Vec::new();
    loop {
        let request = match read_request(&mut reader, &mut buf).await {
            Some(r) => r,
            None => {
                log.lock().unwrap().closed.push(Instant::now());
                return;
            }
        };
        let steps = handler(&request);
        log.lock().unwrap().requests.push(request);
        for step in steps {
            let ok = match step {
                Step::Raw(bytes) => writer.write_all(&bytes).await.is_ok(),
                Step::Chunk(data) => {
                    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                    let ok = writer.write_all(&out).await.is_ok();
                    log.lock().unwrap().sent.push((Instant::now(), data));
                    ok
                }
                Step::End => writer.write_all(b"0\r\n\r\n").await.is_ok(),
                Step::Sleep(d) => watch_close(&mut reader, d).await,
                Step::Hold => watch_close(&mut reader, Duration::from_secs(30)).await,
                Step::Close => {
                    let _ = writer.shutdown().await;
                    return;
                }
            };
            if !ok {
                log.lock().unwrap().closed.push(Instant::now());
                return;
            }
        }
    }
}

/// Sleeps for `d` unless the peer closes first; false when it closed.
async fn watch_close(reader: &mut OwnedReadHalf, d: Duration) -> bool {
    let mut probe = [0u8; 1];
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        r = reader.peek(&mut probe) => !matches!(r, Ok(0) | Err(_)),
    }
}

async fn read_request(reader: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<UpstreamRequest> {
    let (head_len, method, path, headers) = loop {
        let mut parsed_headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut parsed_headers);
        if let Ok(httparse::Status::Complete(len)) = parsed.parse(buf) {
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            break (
                len,
                parsed.method.unwrap().to_string(),
                parsed.path.unwrap().to_string(),
                headers,
            );
        }
        if reader.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    buf.drain(..head_len);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunked(reader, buf).await?
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            if reader.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
        buf.drain(..len).collect()
    };
    Some(UpstreamRequest {
        method,
        path,
        headers,
        body,
        received: Instant::now(),
    })
}

async fn read_chunked(reader: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if reader.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&buf[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            if reader.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
        if size == 0 {
            return Some(body);
        }
    }
}
