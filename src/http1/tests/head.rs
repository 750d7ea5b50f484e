use http::header::CONTENT_TYPE;
use http::{HeaderName, StatusCode, Version};

use super::head;
use crate::http1::{parse_response_head, Http1Error, MAX_HEADERS};

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                  X-Dup: 1\r\nX-Dup: 2\r\nContent-Length: 5\r\n\r\n";

#[test]
fn parses_status_version_and_headers_in_order() {
    let h = head(OK);
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.version, Version::HTTP_11);
    assert_eq!(h.reason, None);
    assert_eq!(h.fields.get(&CONTENT_TYPE), Some(&b"text/event-stream"[..]));
    let x_dup = HeaderName::from_static("x-dup");
    let dups: Vec<_> = h.fields.get_all(&x_dup).collect();
    assert_eq!(dups, [b"1", b"2"]);
    let names: Vec<_> = h.fields.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [&b"Content-Type"[..], b"X-Dup", b"X-Dup", b"Content-Length"],
        "in order, as sent"
    );
}

#[test]
fn consumed_stops_at_the_end_of_the_head() {
    let raw = format!("{OK}hello");
    let (_, consumed) = parse_response_head(raw.as_bytes(), 8192).unwrap().unwrap();
    assert_eq!(&raw[consumed..], "hello");
}

#[test]
fn every_proper_prefix_is_incomplete() {
    for end in 0..OK.len() {
        let result = parse_response_head(&OK.as_bytes()[..end], 8192);
        assert_eq!(result, Ok(None), "prefix of {end} bytes");
    }
}

#[test]
fn incomplete_past_the_limit_is_too_large() {
    let partial = &OK.as_bytes()[..40];
    assert_eq!(parse_response_head(partial, 40), Ok(None));
    assert_eq!(
        parse_response_head(partial, 39),
        Err(Http1Error::HeadTooLarge { limit: 39 })
    );
}

#[test]
fn complete_head_longer_than_the_limit_is_too_large() {
    assert!(parse_response_head(OK.as_bytes(), OK.len())
        .unwrap()
        .is_some());
    assert_eq!(
        parse_response_head(OK.as_bytes(), OK.len() - 1),
        Err(Http1Error::HeadTooLarge {
            limit: OK.len() - 1
        })
    );
}

fn with_headers(n: usize) -> String {
    let mut raw = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..n {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    raw
}

#[test]
fn header_count_is_bounded() {
    assert_eq!(head(&with_headers(MAX_HEADERS)).fields.len(), MAX_HEADERS);
    let err = parse_response_head(with_headers(MAX_HEADERS + 1).as_bytes(), 1 << 20).unwrap_err();
    assert_eq!(err, Http1Error::TooManyHeaders { max: MAX_HEADERS });
    assert!(err.to_string().contains("more than 128 header fields"));
}

fn malformed(raw: &str) -> String {
    match parse_response_head(raw.as_bytes(), 8192) {
        Err(Http1Error::MalformedHead(why)) => why,
        other => panic!("{raw:?} should be malformed, got {other:?}"),
    }
}

#[test]
fn obsolete_line_folding_is_rejected() {
    malformed("HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\n\r\n");
    malformed("HTTP/1.1 200 OK\r\nX-A: one\r\n\ttwo\r\n\r\n");
}

#[test]
fn whitespace_before_a_colon_is_rejected() {
    malformed("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n");
}

#[test]
fn invalid_header_bytes_are_rejected() {
    malformed("HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n");
    malformed("HTTP/1.1 200 OK\r\nX A: a\r\n\r\n");
    malformed("HTTP/1.1 200 OK\r\n: a\r\n\r\n");
}

#[test]
fn http_1_0() {
    let h = head("HTTP/1.0 200 OK\r\nServer: old\r\n\r\n");
    assert_eq!(h.version, Version::HTTP_10);
    assert_eq!(h.status, StatusCode::OK);
}

#[test]
fn other_versions_are_rejected() {
    for raw in [
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.2 200 OK\r\n\r\n",
        "HTTP/0.9 200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
    ] {
        assert!(malformed(raw).contains("HTTP/1"), "{raw:?}");
    }
}

#[test]
fn reason_is_kept_only_when_not_canonical() {
    assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").reason, None);
    assert_eq!(head("HTTP/1.1 404 Not Found\r\n\r\n").reason, None);
    assert_eq!(head("HTTP/1.1 200\r\n\r\n").reason, None);
    assert_eq!(head("HTTP/1.1 200 \r\n\r\n").reason, None);
    assert_eq!(
        head("HTTP/1.1 200 Fine\r\n\r\n").reason.as_deref(),
        Some("Fine")
    );
    assert_eq!(
        head("HTTP/1.1 200 ok\r\n\r\n").reason.as_deref(),
        Some("ok")
    );
    assert_eq!(
        head("HTTP/1.1 429 Slow Down Please\r\n\r\n")
            .reason
            .as_deref(),
        Some("Slow Down Please")
    );
    let unknown = head("HTTP/1.1 599 Upstream Custom\r\n\r\n");
    assert_eq!(unknown.status.as_u16(), 599);
    assert_eq!(unknown.reason.as_deref(), Some("Upstream Custom"));
}

#[test]
fn invalid_status_codes_are_rejected() {
    for raw in [
        "HTTP/1.1 000 Zero\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",
        "HTTP/1.1\r\n\r\n",
    ] {
        malformed(raw);
    }
    assert!(malformed("HTTP/1.1 000 Zero\r\n\r\n").contains("000"));
}

#[test]
fn garbage_is_malformed_not_incomplete() {
    malformed("<html>\r\n");
    malformed("\0\0\0\0\0\0\0\0\0\0");
}

#[test]
fn bare_lf_line_endings_are_accepted_in_the_head() {
    // One parser reads the whole head, so its end is unambiguous; curl and browsers accept it.
    let raw = "HTTP/1.1 204 No Content\nX-A: b\n\n";
    let (h, consumed) = parse_response_head(raw.as_bytes(), 8192).unwrap().unwrap();
    assert_eq!(consumed, raw.len());
    assert_eq!(
        h.fields.get(&HeaderName::from_static("x-a")),
        Some(&b"b"[..])
    );
}

#[test]
fn obs_text_in_values_survives() {
    let raw = b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\n\r\n";
    let (h, _) = parse_response_head(raw, 8192).unwrap().unwrap();
    let name = HeaderName::from_static("x-name");
    assert_eq!(h.fields.get(&name), Some(&b"caf\xe9"[..]));
}

#[test]
fn informational_heads_parse_and_leave_the_final_head() {
    let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    let (h, consumed) = parse_response_head(raw.as_bytes(), 8192).unwrap().unwrap();
    assert_eq!(h.status, StatusCode::CONTINUE);
    assert_eq!(&raw[consumed..], "HTTP/1.1 200 OK\r\n\r\n");
}

#[test]
fn error_messages_read_as_sentences() {
    let err = parse_response_head(b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n", 8192).unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed response head from upstream: invalid header name \
         (or a folded header line, which is obsolete)"
    );
}
