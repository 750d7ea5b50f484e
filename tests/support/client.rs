//! A raw HTTP/1.1 client that keeps the framing visible: each chunk of a chunked body is returned
//! with the instant it arrived, and the chunked terminator is observed explicitly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct Client {
    reader: BufReader<TcpStream>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The status line's reason phrase.
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// One piece of a response body and when it arrived.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub at: Instant,
    pub data: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends a request; `headers` are extra lines such as `("accept", "text/event-stream")`.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: sluice.test\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
    }

    /// Writes bytes as they are (a hand-made request head, a body in pieces).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    pub fn post_json(&mut self, path: &str, body: &str) {
        self.send(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send("GET", path, &[], b"");
        self.read_response()
    }

    /// Reads a status line and headers.
    pub fn read_head(&mut self) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let mut parts = line.trim_end().splitn(3, ' ');
        let status = parts
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
            .parse()
            .unwrap();
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (k, v) = trimmed.split_once(':').expect("header line");
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        }
    }

    /// The next chunk of a chunked body; `None` at the terminating zero-size chunk. Panics if
    /// the connection ends before the terminator (a truncated body).
    pub fn read_chunk(&mut self) -> Option<Chunk> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed before the chunked terminator");
        let at = Instant::now();
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        let mut data = vec![0; size];
        self.reader.read_exact(&mut data).unwrap();
        let mut crlf = [0; 2];
        self.reader.read_exact(&mut crlf).unwrap();
        assert_eq!(&crlf, b"\r\n");
        if size == 0 {
            return None;
        }
        Some(Chunk { at, data })
    }

    /// Reads a whole chunked body, chunk by chunk.
    pub fn read_chunks(&mut self) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        while let Some(chunk) = self.read_chunk() {
            chunks.push(chunk);
        }
        chunks
    }

    /// The rest of a chunked body, its chunks' bytes joined: for tests about the bytes, not
    /// about how many reads they came in.
    pub fn read_chunked_body(&mut self) -> Vec<u8> {
        self.read_chunks()
            .into_iter()
            .flat_map(|c| c.data)
            .collect()
    }

    /// Reads a whole response: head and a sized, chunked or close-delimited body.
    pub fn read_response(&mut self) -> Response {
        let mut response = self.read_head();
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            response.body = self.read_chunked_body();
        } else if let Some(len) = response.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            response.body = body;
        } else {
            self.reader.read_to_end(&mut response.body).unwrap();
        }
        response
    }

    /// True when the server closed the connection (read returns EOF) within `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.reader.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

/// Writes `request` on a new connection and reads everything the server sends until it closes
/// the connection (at most 10 s), the framing left as it came: for answers whose connection
/// ends with them (a refused head, a close-delimited body).
pub fn exchange_until_closed(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the server closed the connection");
    String::from_utf8_lossy(&answer).into_owned()
}
