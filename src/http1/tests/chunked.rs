use bytes::BytesMut;

use super::{feed, feed_all};
use crate::http1::chunked::{MAX_SIZE_LINE, MAX_TRAILER};
use crate::http1::{BodyDecoder, BodyFraming, Http1Error};

fn chunked() -> BodyDecoder {
    BodyDecoder::new(BodyFraming::Chunked)
}

/// Decodes a complete body given in one read; panics unless it ends cleanly.
fn decode_ok(input: &[u8]) -> (Vec<u8>, BytesMut) {
    let mut decoder = chunked();
    let (body, rest, err) = feed_all(&mut decoder, input);
    assert_eq!(err, None, "{:?}", String::from_utf8_lossy(input));
    assert!(decoder.is_done(), "{:?}", String::from_utf8_lossy(input));
    (body, rest)
}

/// The error for `input`, whether it comes from the first or (after data) the second call.
fn decode_err(input: &[u8]) -> String {
    let mut decoder = chunked();
    let mut buf = BytesMut::from(input);
    let first = decoder.decode(&mut buf);
    let err = match first {
        Err(e) => e,
        Ok(_) => decoder.decode(&mut buf).expect_err("should fail"),
    };
    assert!(!decoder.is_done());
    match err {
        Http1Error::MalformedChunk(why) => why,
        other => panic!("expected MalformedChunk, got {other:?}"),
    }
}

#[test]
fn simple_body() {
    let (body, rest) = decode_ok(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(body, b"hello world");
    assert!(rest.is_empty());
}

#[test]
fn hex_sizes_in_either_case_and_with_leading_zeros() {
    let data = [b'x'; 0xAB];
    for size in ["AB", "ab", "aB", "00ab", "00000000000000AB"] {
        let mut input = format!("{size}\r\n").into_bytes();
        input.extend_from_slice(&data);
        input.extend_from_slice(b"\r\n000\r\n\r\n");
        assert_eq!(decode_ok(&input).0, data, "{size}");
    }
}

#[test]
fn extensions_and_whitespace_are_ignored() {
    for line in [
        "5;name=value",
        "5;name",
        "5;a=1;b=\"quoted; with spaces\"",
        "5 ;name",
        "5\t;name",
        "5 \t ; name = value ",
        "5  ",
        "5;caf\u{e9}",
    ] {
        let input = format!("{line}\r\nhello\r\n0;last=1\r\n\r\n");
        assert_eq!(decode_ok(input.as_bytes()).0, b"hello", "{line:?}");
    }
}

#[test]
fn trailers_are_skipped() {
    let (body, rest) = decode_ok(b"3\r\nabc\r\n0\r\nX-Usage: 42\r\nChecksum:  abc\r\n\r\nNEXT");
    assert_eq!(body, b"abc");
    assert_eq!(&rest[..], b"NEXT");
    assert_eq!(decode_ok(b"0\r\nX-Empty:\r\n\r\n").0, b"");
}

#[test]
fn several_chunks_in_one_read_become_one_piece_gathered_in_place() {
    let mut decoder = chunked();
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\nrest"[..]);
    let first_piece = buf[3..].as_ptr();
    let data = decoder.decode(&mut buf).unwrap();
    assert_eq!(&data[..], b"abcdef");
    assert_eq!(
        data.as_ptr(),
        first_piece,
        "no allocation, first piece not moved"
    );
    assert_eq!(&buf[..], b"rest");
    assert!(decoder.is_done());
}

#[test]
fn a_single_piece_is_zero_copy() {
    let mut decoder = chunked();
    let mut buf = BytesMut::from(&b"10\r\n0123456789abcdef\r\n"[..]);
    let piece = buf[4..].as_ptr();
    let data = decoder.decode(&mut buf).unwrap();
    assert_eq!(&data[..], b"0123456789abcdef");
    assert_eq!(data.as_ptr(), piece);
    assert!(buf.is_empty());
    assert!(!decoder.is_done());
}

#[test]
fn incomplete_lines_stay_in_the_input() {
    let mut decoder = chunked();
    let mut buf = BytesMut::from(&b"1"[..]);
    assert!(decoder.decode(&mut buf).unwrap().is_empty());
    assert_eq!(&buf[..], b"1");
    buf.extend_from_slice(b"0;ext\r");
    assert!(decoder.decode(&mut buf).unwrap().is_empty());
    assert_eq!(&buf[..], b"10;ext\r");
    buf.extend_from_slice(b"\n0123456789abcdef\r");
    assert_eq!(&decoder.decode(&mut buf).unwrap()[..], b"0123456789abcdef");
    assert_eq!(&buf[..], b"\r");
    buf.extend_from_slice(b"\n0\r\nX-A: b\r\n");
    assert!(decoder.decode(&mut buf).unwrap().is_empty());
    assert!(buf.is_empty(), "a complete trailer line is consumed");
    assert!(!decoder.is_done());
    buf.extend_from_slice(b"\r");
    assert!(decoder.decode(&mut buf).unwrap().is_empty());
    assert!(!decoder.is_done());
    buf.extend_from_slice(b"\n");
    assert!(decoder.decode(&mut buf).unwrap().is_empty());
    assert!(decoder.is_done());
}

#[test]
fn one_byte_at_a_time() {
    let input = b"5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\nafter";
    let mut decoder = chunked();
    let (body, rest, err) = feed(&mut decoder, input.chunks(1));
    assert_eq!(err, None);
    assert_eq!(body, b"hello0123456789");
    assert_eq!(&rest[..], b"after");
    assert!(decoder.is_done());
}

#[test]
fn bare_lf_is_rejected_everywhere_in_the_framing() {
    assert!(decode_err(b"5\nhello\r\n0\r\n\r\n").contains("bare LF"));
    assert!(decode_err(b"5\r\nhello\n0\r\n\r\n").contains("not followed by CRLF"));
    assert!(decode_err(b"5\r\nhello\r\n0\n\r\n").contains("bare LF"));
    assert!(decode_err(b"0\r\n\n").contains("bare LF"));
    assert!(decode_err(b"0\r\nX: y\n\r\n").contains("bare LF"));
    assert!(decode_err(b"\n").contains("bare LF"));
}

#[test]
fn bare_cr_is_rejected() {
    assert!(decode_err(b"5\rx\r\nhello\r\n").contains("after chunk size"));
    assert!(decode_err(b"5;a\rb\r\nhello\r\n").contains("control character"));
    assert!(decode_err(b"5\r\nhello\rx").contains("not followed by CRLF"));
    assert!(decode_err(b"0\r\nX: a\rb\r\n\r\n").contains("control character"));
}

#[test]
fn data_longer_than_its_size_is_rejected() {
    assert!(decode_err(b"3\r\nhello\r\n0\r\n\r\n").contains("not followed by CRLF"));
}

#[test]
fn bad_size_lines_are_rejected() {
    for line in [
        &b"\r\n"[..],
        b" 5\r\n",
        b"0x5\r\n",
        b"-1\r\n",
        b"+5\r\n",
        b"g\r\n",
        b";ext\r\n",
        b"5 5\r\n",
        b"5x\r\n",
        b"5;\x01\r\n",
        b"5;\x7f\r\n",
    ] {
        decode_err(line);
    }
    assert!(decode_err(b"\r\n").contains("empty chunk size line"));
}

#[test]
fn size_overflow_is_rejected() {
    assert!(decode_err(b"10000000000000000\r\n").contains("more than 16 hex digits"));
    assert!(decode_err(b"00000000000000001\r\n").contains("more than 16 hex digits"));
    // Sixteen digits fill a u64 exactly.
    let mut decoder = chunked();
    let (body, _, err) = feed_all(&mut decoder, b"FFFFFFFFFFFFFFFF\r\nabc");
    assert_eq!((body.as_slice(), err), (&b"abc"[..], None));
}

#[test]
fn size_line_length_is_bounded() {
    let fits = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE - 4));
    assert_eq!(decode_ok(fits.as_bytes()).0, b"x");
    let too_long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE - 3));
    assert!(decode_err(too_long.as_bytes()).contains("longer than 4096"));
    // Without a line end, the error comes as soon as the bound is reached, in any split.
    let mut decoder = chunked();
    let endless = format!("1;{}", "e".repeat(MAX_SIZE_LINE));
    let (_, _, err) = feed(&mut decoder, endless.as_bytes().chunks(100));
    assert!(matches!(err, Some(Http1Error::MalformedChunk(_))));
    let mut decoder = chunked();
    let (_, _, err) = feed(
        &mut decoder,
        endless.as_bytes()[..MAX_SIZE_LINE - 1].chunks(7),
    );
    assert_eq!(err, None, "one byte short of the bound is still waiting");
}

#[test]
fn trailer_section_is_bounded() {
    let field = format!("X-Pad: {}\r\n", "p".repeat(1000));
    let fitting = MAX_TRAILER / field.len();
    let ok = format!("0\r\n{}\r\n", field.repeat(fitting));
    decode_ok(ok.as_bytes());
    let too_big = format!("0\r\n{}\r\n", field.repeat(fitting + 1));
    assert!(decode_err(too_big.as_bytes()).contains("trailer section longer than 65536"));
    let mut decoder = chunked();
    let (_, _, err) = feed(&mut decoder, too_big.as_bytes().chunks(1));
    assert!(matches!(err, Some(Http1Error::MalformedChunk(_))));
}

#[test]
fn bad_trailer_lines_are_rejected() {
    assert!(decode_err(b"0\r\nno colon here\r\n\r\n").contains("without a colon"));
    assert!(decode_err(b"0\r\nX-A: b\r\n folded\r\n\r\n").contains("folded"));
    assert!(decode_err(b"0\r\nX-A: b\r\n\tfolded: x\r\n\r\n").contains("folded"));
    assert!(decode_err(b"0\r\n: value\r\n\r\n").contains("field name"));
    assert!(decode_err(b"0\r\nX A: b\r\n\r\n").contains("field name"));
}

#[test]
fn data_before_an_error_is_delivered_first_and_the_error_sticks() {
    let mut decoder = chunked();
    let mut buf = BytesMut::from(&b"5\r\nhello\r\nzz\r\n"[..]);
    assert_eq!(&decoder.decode(&mut buf).unwrap()[..], b"hello");
    let err = decoder.decode(&mut buf).unwrap_err();
    assert!(matches!(err, Http1Error::MalformedChunk(_)));
    buf.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(decoder.decode(&mut buf), Err(err.clone()));
    assert_eq!(decoder.at_eof(), Err(err));
    assert!(!decoder.is_done());
}

#[test]
fn truncation_is_reported_at_eof() {
    for input in [
        &b""[..],
        b"5",
        b"5\r\n",
        b"5\r\nhel",
        b"5\r\nhello",
        b"5\r\nhello\r",
        b"5\r\nhello\r\n",
        b"5\r\nhello\r\n0\r\n",
        b"5\r\nhello\r\n0\r\nX: y\r\n",
        b"5\r\nhello\r\n0\r\n\r",
    ] {
        let mut decoder = chunked();
        let (body, _, err) = feed_all(&mut decoder, input);
        assert_eq!(err, None);
        let received = body.len() as u64;
        assert_eq!(
            decoder.at_eof(),
            Err(Http1Error::Truncated {
                received,
                missing: None
            }),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let mut decoder = chunked();
    feed_all(&mut decoder, b"5\r\nhel");
    assert_eq!(
        decoder.at_eof().unwrap_err().to_string(),
        "upstream closed the connection before the end of the chunked response body \
         (3 bytes received)"
    );
}

#[test]
fn done_body_ignores_later_input_and_eof() {
    let mut decoder = chunked();
    let (_, rest, _) = feed_all(&mut decoder, b"0\r\n\r\nHTTP/1.1 200 OK\r\n");
    assert_eq!(&rest[..], b"HTTP/1.1 200 OK\r\n");
    let mut buf = rest;
    assert!(decoder.decode(&mut buf).unwrap().is_empty());
    assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    assert_eq!(decoder.at_eof(), Ok(()));
}
