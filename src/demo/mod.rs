//! The built-in demo upstream: an OpenAI-compatible chat-completions endpoint that streams a
//! canned answer word by word, so the default config streams out of the box with no network and
//! no provider key. Plain tokio, not Pingora: it stands in for a remote provider.

use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ANSWER: &str = "Sluice carries every token the moment the model writes it: no buffering, \
no compression, a heartbeat while the model thinks, a clean error event when it stalls, and \
the generation stopped as soon as you hang up.";

/// Pause between two streamed words.
const WORD_INTERVAL: Duration = Duration::from_millis(60);
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 4 * 1024 * 1024;

pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = serve_connection(stream).await;
        });
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    keep_alive: bool,
}

async fn serve_connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        respond(&mut stream, &request).await?;
        if !request.keep_alive {
            return Ok(());
        }
    }
}

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) =
            parsed.parse(buf).map_err(|_| bad("malformed request"))?
        {
            let header = |name: &str| {
                parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            };
            let length: usize = header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if length > MAX_BODY {
                return Err(bad("body too large"));
            }
            let keep_alive = header("connection").as_deref() != Some("close");
            let method = parsed.method.unwrap_or("GET").to_string();
            let path = parsed.path.unwrap_or("/").to_string();
            while buf.len() < head_len + length {
                if stream.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            }
            let body = buf[head_len..head_len + length].to_vec();
            buf.drain(..head_len + length);
            return Ok(Some(Request {
                method,
                path,
                body,
                keep_alive,
            }));
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn respond(stream: &mut TcpStream, request: &Request) -> std::io::Result<()> {
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    if request.method != "POST" {
        let text = format!(
            "Sluice demo upstream. POST an OpenAI chat-completions request to {} with \"stream\": true.\n",
            request.path
        );
        return write_sized(stream, 200, "text/plain; charset=utf-8", text.as_bytes()).await;
    }
    let model = body["model"].as_str().unwrap_or("sluice-demo").to_string();
    let words: Vec<&str> = ANSWER.split_inclusive(' ').collect();
    let prompt_tokens = prompt_token_count(&body);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": words.len(),
        "total_tokens": prompt_tokens + words.len() as u64,
    });
    if body["stream"] != Value::Bool(true) {
        let completion = json!({
            "id": "chatcmpl-demo",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": usage,
        });
        return write_sized(
            stream,
            200,
            "application/json",
            completion.to_string().as_bytes(),
        )
        .await;
    }
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await?;
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    write_event(
        stream,
        &chunk(json!({"role": "assistant", "content": ""}), Value::Null),
    )
    .await?;
    for word in &words {
        tokio::time::sleep(WORD_INTERVAL).await;
        write_event(stream, &chunk(json!({"content": word}), Value::Null)).await?;
    }
    write_event(stream, &chunk(json!({}), json!("stop"))).await?;
    if body["stream_options"]["include_usage"] == Value::Bool(true) {
        let usage_chunk = json!({
            "id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [], "usage": usage,
        });
        write_event(stream, &usage_chunk).await?;
    }
    write_chunk(stream, b"data: [DONE]\n\n").await?;
    stream.write_all(b"0\r\n\r\n").await
}

/// A rough word count of the messages, for the demo's usage figures.
fn prompt_token_count(body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.split_whitespace().count() as u64 + 4)
                .sum()
        })
        .unwrap_or(0)
}

async fn write_event(stream: &mut TcpStream, data: &Value) -> std::io::Result<()> {
    write_chunk(stream, format!("data: {data}\n\n").as_bytes()).await
}

async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).await
}

async fn write_sized(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await
}
