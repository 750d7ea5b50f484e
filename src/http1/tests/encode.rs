use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::http1::{
    encode_chunk, encode_chunk_size, encode_request_head, RequestHeadFacts, LAST_CHUNK,
};

#[test]
fn request_head_is_exact() {
    let mut headers = HeaderMap::new();
    headers.insert("Host", HeaderValue::from_static("api.example.com"));
    headers.append("X-Multi", HeaderValue::from_static("a"));
    headers.append("X-Multi", HeaderValue::from_static("b"));
    headers.insert("Content-Length", HeaderValue::from_static("2"));
    let mut out = BytesMut::new();
    let facts = encode_request_head(&Method::POST, "/v1/chat?x=1", &headers, &mut out);
    let expected = "POST /v1/chat?x=1 HTTP/1.1\r\nhost: api.example.com\r\n\
                    x-multi: a\r\nx-multi: b\r\ncontent-length: 2\r\n\r\n";
    assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    assert_eq!(facts, RequestHeadFacts::default());
}

#[test]
fn request_head_facts_come_from_the_fields_written() {
    let te = HeaderName::from_static("transfer-encoding");
    let connection = HeaderName::from_static("connection");
    let facts = |fields: &[(&HeaderName, &str)]| {
        let values: Vec<_> = fields
            .iter()
            .map(|(n, v)| (*n, HeaderValue::from_str(v).unwrap()))
            .collect();
        encode_request_head(
            &Method::POST,
            "/",
            values.iter().map(|(n, v)| (*n, v)),
            &mut BytesMut::new(),
        )
    };
    assert!(facts(&[(&te, "Chunked")]).chunked_body);
    assert!(!facts(&[(&te, "gzip")]).chunked_body);
    assert!(facts(&[(&connection, "upgrade, Close")]).close_requested);
    assert!(!facts(&[(&connection, "closed")]).close_requested);
    assert_eq!(facts(&[]), RequestHeadFacts::default());
}

#[test]
fn request_head_without_headers_appends_to_existing_bytes() {
    let mut out = BytesMut::from(&b"prev"[..]);
    encode_request_head(&Method::GET, "*", &HeaderMap::new(), &mut out);
    assert_eq!(&out[..], b"prevGET * HTTP/1.1\r\n\r\n");
}

#[test]
fn request_head_round_trips_through_httparse() {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer x"));
    let mut out = BytesMut::new();
    encode_request_head(&Method::PATCH, "/a/b", &headers, &mut out);
    let mut parsed = [httparse::EMPTY_HEADER; 4];
    let mut req = httparse::Request::new(&mut parsed);
    assert_eq!(
        req.parse(&out).unwrap(),
        httparse::Status::Complete(out.len())
    );
    assert_eq!(req.method, Some("PATCH"));
    assert_eq!(req.path, Some("/a/b"));
    assert_eq!(req.version, Some(1));
    assert_eq!(req.headers[0].value, b"Bearer x");
}

#[test]
fn chunks_use_uppercase_hex_sizes() {
    let mut out = BytesMut::new();
    encode_chunk(b"hello", &mut out);
    encode_chunk(&[b'x'; 26], &mut out);
    encode_chunk(&[b'y'; 256], &mut out);
    let mut expected = b"5\r\nhello\r\n1A\r\n".to_vec();
    expected.extend_from_slice(&[b'x'; 26]);
    expected.extend_from_slice(b"\r\n100\r\n");
    expected.extend_from_slice(&[b'y'; 256]);
    expected.extend_from_slice(b"\r\n");
    assert_eq!(&out[..], &expected[..]);
}

#[test]
fn empty_chunk_writes_nothing() {
    let mut out = BytesMut::new();
    encode_chunk(b"", &mut out);
    assert!(out.is_empty());
    assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
}

#[test]
fn chunk_size_lines() {
    for (len, line) in [
        (1usize, "1\r\n"),
        (15, "F\r\n"),
        (16, "10\r\n"),
        (0xABCDEF, "ABCDEF\r\n"),
        (0xFFFF_FFFF, "FFFFFFFF\r\n"),
    ] {
        let mut out = BytesMut::new();
        encode_chunk_size(len, &mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), line, "len {len}");
    }
}

#[test]
fn chunk_reserves_exactly() {
    let mut out = BytesMut::new();
    encode_chunk(&[0u8; 300], &mut out);
    assert_eq!(out.len(), 3 + 2 + 300 + 2);
    assert_eq!(out.capacity(), out.len());
}
