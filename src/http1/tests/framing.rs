use super::head;
use crate::http1::{
    agreed_content_length, idle_within, keeps_alive, only_chunked, response_framing, BodyFraming,
    Http1Error, KeepAliveHint,
};
use std::time::Duration;

use BodyFraming::{Chunked, Empty, Length, UntilClose};

/// A head with this status line and header lines.
fn h(status_line: &str, headers: &[&str]) -> crate::http1::ResponseHead {
    let mut raw = format!("{status_line}\r\n");
    for line in headers {
        raw.push_str(line);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    head(&raw)
}

fn framing(status_line: &str, headers: &[&str]) -> Result<BodyFraming, Http1Error> {
    response_framing(&h(status_line, headers), false)
}

fn invalid(status_line: &str, headers: &[&str]) -> String {
    match framing(status_line, headers) {
        Err(Http1Error::InvalidFraming(why)) => why,
        other => panic!("{headers:?} should be invalid, got {other:?}"),
    }
}

const OK11: &str = "HTTP/1.1 200 OK";
const OK10: &str = "HTTP/1.0 200 OK";
const TE: &str = "Transfer-Encoding: chunked";
const CL: &str = "Content-Length: 5";

#[test]
fn bodiless_statuses_and_head_requests_are_empty_whatever_the_headers() {
    for status in ["100 Continue", "101 Switching Protocols", "103 Early Hints"] {
        for headers in [&[][..], &[CL], &[TE]] {
            assert_eq!(framing(&format!("HTTP/1.1 {status}"), headers), Ok(Empty));
        }
    }
    for status in ["204 No Content", "304 Not Modified"] {
        for headers in [&[][..], &[CL], &[TE], &[TE, CL], &["Content-Length: x"]] {
            assert_eq!(framing(&format!("HTTP/1.1 {status}"), headers), Ok(Empty));
        }
    }
    for headers in [&[][..], &[CL], &[TE], &["Content-Length: 1, 2"]] {
        assert_eq!(response_framing(&h(OK11, headers), true), Ok(Empty));
        assert_eq!(response_framing(&h(OK10, headers), true), Ok(Empty));
    }
}

#[test]
fn other_statuses_follow_the_headers() {
    for status in [
        "201 Created",
        "206 Partial Content",
        "404 Not Found",
        "500 Oops",
    ] {
        let line = format!("HTTP/1.1 {status}");
        assert_eq!(framing(&line, &[CL]), Ok(Length(5)));
        assert_eq!(framing(&line, &[TE]), Ok(Chunked));
        assert_eq!(framing(&line, &[]), Ok(UntilClose));
    }
}

#[test]
fn transfer_encoding_final_coding_decides() {
    assert_eq!(framing(OK11, &[TE]), Ok(Chunked));
    assert_eq!(framing(OK11, &["Transfer-Encoding: CHUNKED"]), Ok(Chunked));
    assert_eq!(
        framing(OK11, &["Transfer-Encoding: gzip, chunked"]),
        Ok(Chunked)
    );
    assert_eq!(
        framing(OK11, &["Transfer-Encoding: gzip,chunked ,"]),
        Ok(Chunked)
    );
    assert_eq!(
        framing(
            OK11,
            &["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"]
        ),
        Ok(Chunked)
    );
    assert_eq!(framing(OK11, &["Transfer-Encoding: gzip"]), Ok(UntilClose));
    assert_eq!(
        framing(OK11, &["Transfer-Encoding: chunked, gzip"]),
        Ok(UntilClose)
    );
    assert_eq!(
        framing(OK11, &["Transfer-Encoding: identity"]),
        Ok(UntilClose)
    );
    assert_eq!(
        framing(OK11, &["Transfer-Encoding: chunkedx"]),
        Ok(UntilClose)
    );
}

#[test]
fn transfer_encoding_wins_over_content_length() {
    assert_eq!(framing(OK11, &[TE, CL]), Ok(Chunked));
    assert_eq!(framing(OK11, &[CL, TE]), Ok(Chunked));
    assert_eq!(
        framing(OK11, &[TE, "Content-Length: nonsense"]),
        Ok(Chunked)
    );
    assert_eq!(
        framing(OK11, &["Transfer-Encoding: gzip", CL]),
        Ok(UntilClose)
    );
}

#[test]
fn ambiguous_transfer_encodings_are_errors() {
    assert!(invalid(OK11, &["Transfer-Encoding: chunked, chunked"]).contains("more than once"));
    assert!(invalid(OK11, &[TE, TE]).contains("more than once"));
    assert!(invalid(OK11, &["Transfer-Encoding: "]).contains("empty"));
    assert!(invalid(OK11, &["Transfer-Encoding: , ,"]).contains("empty"));
    assert!(invalid(OK10, &[TE]).contains("HTTP/1.0"));
    assert!(invalid(OK10, &[TE, CL]).contains("HTTP/1.0"));
}

#[test]
fn content_length_values() {
    assert_eq!(framing(OK11, &["Content-Length: 0"]), Ok(Length(0)));
    assert_eq!(framing(OK11, &["Content-Length: 0042"]), Ok(Length(42)));
    assert_eq!(framing(OK11, &["Content-Length: 5, 5"]), Ok(Length(5)));
    assert_eq!(framing(OK11, &["Content-Length: 5,5,5"]), Ok(Length(5)));
    assert_eq!(framing(OK11, &[CL, CL]), Ok(Length(5)));
    assert_eq!(framing(OK11, &[CL, "Content-Length: 5, 5"]), Ok(Length(5)));
    assert_eq!(
        framing(OK11, &["Content-Length: 18446744073709551615"]),
        Ok(Length(u64::MAX))
    );
    assert_eq!(framing(OK10, &[CL]), Ok(Length(5)));
}

/// A request's `Content-Length` values, as a header map holds them, agree the same way (the
/// length Pingora frames the request body by).
#[test]
fn content_length_values_however_held() {
    let agreed = |values: &[&str]| agreed_content_length(values.iter().map(|v| v.as_bytes()));
    assert_eq!(agreed(&[]), Ok(None));
    assert_eq!(agreed(&["3000000, 3000000"]), Ok(Some(3_000_000)));
    assert_eq!(agreed(&["7", " 7 "]), Ok(Some(7)));
    assert!(agreed(&["1, 2"]).is_err());
    assert!(agreed(&["+5"]).is_err());
}

#[test]
fn bad_content_lengths_are_errors() {
    for value in [
        "",
        "abc",
        "-1",
        "+5",
        "5 5",
        "1.0",
        "0x10",
        "5,",
        ",5",
        "18446744073709551616",
    ] {
        let why = invalid(OK11, &[&format!("Content-Length: {value}")]);
        assert!(why.contains("invalid Content-Length"), "{value:?}: {why}");
    }
    assert!(invalid(OK11, &["Content-Length: 5, 6"]).contains("conflicting"));
    assert!(invalid(OK11, &[CL, "Content-Length: 6"]).contains("5 and 6"));
}

#[test]
fn no_length_reads_until_close() {
    assert_eq!(framing(OK11, &[]), Ok(UntilClose));
    assert_eq!(framing(OK10, &[]), Ok(UntilClose));
    assert_eq!(framing(OK11, &["Connection: keep-alive"]), Ok(UntilClose));
}

fn alive(status_line: &str, headers: &[&str]) -> bool {
    let head = h(status_line, headers);
    let framing = response_framing(&head, false).unwrap();
    keeps_alive(&head, &framing)
}

#[test]
fn keep_alive_http_1_1() {
    assert!(alive(OK11, &[CL]));
    assert!(alive(OK11, &[TE]));
    assert!(alive(OK11, &["Content-Length: 0"]));
    assert!(alive("HTTP/1.1 204 No Content", &[]));
    assert!(alive("HTTP/1.1 304 Not Modified", &[]));
    assert!(alive(OK11, &[CL, "Connection: keep-alive"]));
    assert!(alive(OK11, &[CL, "Connection: closed"]));
    assert!(!alive(OK11, &[CL, "Connection: close"]));
    assert!(!alive(OK11, &[CL, "Connection: CLOSE"]));
    assert!(!alive(OK11, &[CL, "Connection: Keep-Alive, Close"]));
    assert!(!alive(
        OK11,
        &[CL, "Connection: upgrade", "Connection: close"]
    ));
    assert!(!alive(OK11, &[]), "body delimited by close");
    assert!(
        !alive(OK11, &["Transfer-Encoding: gzip"]),
        "body delimited by close"
    );
    assert!(!alive(OK11, &[TE, CL]), "ambiguous framing");
    assert!(!alive(
        "HTTP/1.1 101 Switching Protocols",
        &["Upgrade: websocket"]
    ));
}

#[test]
fn keep_alive_http_1_0() {
    assert!(!alive(OK10, &[CL]));
    assert!(alive(OK10, &[CL, "Connection: keep-alive"]));
    assert!(alive(OK10, &[CL, "Connection: Keep-Alive"]));
    assert!(alive(OK10, &[CL, "Connection: foo, keep-alive"]));
    assert!(!alive(OK10, &[CL, "Connection: keep-alive, close"]));
    assert!(
        !alive(OK10, &["Connection: keep-alive"]),
        "body delimited by close"
    );
    assert!(alive(
        "HTTP/1.0 204 No Content",
        &["Connection: keep-alive"]
    ));
    assert!(!alive("HTTP/1.0 204 No Content", &[]));
}

#[test]
fn keep_alive_after_a_head_request() {
    let head = h(OK11, &[TE, CL]);
    let framing = response_framing(&head, true).unwrap();
    assert_eq!(framing, Empty);
    assert!(
        !keeps_alive(&head, &framing),
        "ambiguous framing even without a body"
    );
    let head = h(OK11, &[]);
    let framing = response_framing(&head, true).unwrap();
    assert!(keeps_alive(&head, &framing));
}

#[test]
fn only_a_single_chunked_coding_is_taken() {
    let only = |values: &[&str]| only_chunked(values.iter().map(|v| v.as_bytes()));
    assert!(only(&[]));
    assert!(only(&["chunked"]));
    assert!(only(&[" Chunked "]));
    assert!(!only(&["gzip, chunked"]));
    assert!(!only(&["gzip", "chunked"]));
    assert!(!only(&["chunked, chunked"]));
    assert!(!only(&["identity"]));
    assert!(!only(&["deflate"]));
}

fn hint(headers: &[&str]) -> KeepAliveHint {
    KeepAliveHint::of(&h(OK11, headers).fields)
}

#[test]
fn keep_alive_hints() {
    let said = |timeout, max| KeepAliveHint { timeout, max };
    assert_eq!(hint(&[CL]), said(None, None));
    // Node's server, and Apache's.
    assert_eq!(hint(&["Keep-Alive: timeout=5"]), said(Some(5), None));
    assert_eq!(
        hint(&["Keep-Alive: timeout=5, max=100"]),
        said(Some(5), Some(100))
    );
    assert_eq!(
        hint(&["keep-alive: MAX=3", "KEEP-ALIVE: Timeout = 7"]),
        said(Some(7), Some(3))
    );
    assert_eq!(hint(&["Keep-Alive: timeout=\"4\""]), said(Some(4), None));
    // Given twice: the smaller counts.
    assert_eq!(
        hint(&["Keep-Alive: timeout=10, timeout=2"]),
        said(Some(2), None)
    );
    // Not numbers, or other parameters: ignored.
    for value in [
        "timeout",
        "timeout=",
        "timeout=-1",
        "timeout=1.5",
        "timeout=5s",
        "timeout=99999999999999999999",
        "idle=5",
        "300",
    ] {
        assert_eq!(
            hint(&[&format!("Keep-Alive: {value}")]),
            said(None, None),
            "{value}"
        );
    }
}

#[test]
fn keep_alive_hints_that_rule_out_reuse() {
    assert!(hint(&[]).allows_reuse());
    assert!(hint(&["Keep-Alive: timeout=5, max=100"]).allows_reuse());
    assert!(hint(&["Keep-Alive: max=2"]).allows_reuse());
    assert!(hint(&["Keep-Alive: timeout=1"]).allows_reuse());
    // The last request the upstream takes on the connection, or no idle time at all.
    assert!(!hint(&["Keep-Alive: timeout=5, max=1"]).allows_reuse());
    assert!(!hint(&["Keep-Alive: max=0"]).allows_reuse());
    assert!(!hint(&["Keep-Alive: timeout=0"]).allows_reuse());
}

#[test]
fn idle_connections_leave_a_margin_before_the_upstreams_timeout() {
    let ms = Duration::from_millis;
    assert_eq!(idle_within(0), Duration::ZERO);
    assert_eq!(idle_within(1), ms(500));
    assert_eq!(idle_within(2), ms(1000));
    assert_eq!(idle_within(3), ms(2000));
    // Node's default.
    assert_eq!(idle_within(5), ms(4000));
    assert_eq!(idle_within(3600), Duration::from_secs(3599));
}
