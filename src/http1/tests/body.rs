use bytes::BytesMut;

use super::{feed, feed_all};
use crate::http1::{BodyDecoder, BodyFraming, Http1Error};

#[test]
fn empty_body_is_done_at_once_and_takes_nothing() {
    for framing in [BodyFraming::Empty, BodyFraming::Length(0)] {
        let mut decoder = BodyDecoder::new(framing);
        assert!(decoder.is_done());
        let (body, rest, err) = feed_all(&mut decoder, b"HTTP/1.1 200 OK\r\n");
        assert!(body.is_empty() && err.is_none());
        assert_eq!(&rest[..], b"HTTP/1.1 200 OK\r\n");
        assert_eq!(decoder.at_eof(), Ok(()));
    }
}

#[test]
fn length_body_stops_at_its_length() {
    let mut decoder = BodyDecoder::new(BodyFraming::Length(5));
    let (body, rest, err) = feed(&mut decoder, [&b"he"[..], b"llo", b"NEXT"]);
    assert_eq!(body, b"hello");
    assert_eq!(&rest[..], b"NEXT");
    assert!(err.is_none());
    assert!(decoder.is_done());
    assert_eq!(decoder.received(), 5);
    assert_eq!(decoder.at_eof(), Ok(()));
}

#[test]
fn length_body_is_not_done_until_the_last_byte() {
    let mut decoder = BodyDecoder::new(BodyFraming::Length(3));
    let mut buf = BytesMut::from(&b"ab"[..]);
    assert_eq!(&decoder.decode(&mut buf).unwrap()[..], b"ab");
    assert!(!decoder.is_done());
    assert!(decoder.decode(&mut buf).unwrap().is_empty());
    buf.extend_from_slice(b"cd");
    assert_eq!(&decoder.decode(&mut buf).unwrap()[..], b"c");
    assert!(decoder.is_done());
    assert!(decoder.decode(&mut buf).unwrap().is_empty());
    assert_eq!(&buf[..], b"d");
}

#[test]
fn length_body_is_zero_copy() {
    let mut decoder = BodyDecoder::new(BodyFraming::Length(4));
    let mut buf = BytesMut::from(&b"abcdef"[..]);
    let start = buf.as_ptr();
    let data = decoder.decode(&mut buf).unwrap();
    assert_eq!(data.as_ptr(), start);
}

#[test]
fn truncated_length_body_says_how_much_is_missing() {
    let mut decoder = BodyDecoder::new(BodyFraming::Length(10));
    let (body, _, _) = feed_all(&mut decoder, b"abc");
    assert_eq!(body, b"abc");
    let err = decoder.at_eof().unwrap_err();
    assert_eq!(
        err,
        Http1Error::Truncated {
            received: 3,
            missing: Some(7)
        }
    );
    assert_eq!(
        err.to_string(),
        "upstream closed the connection before the end of the response body \
         (3 bytes received, 7 missing)"
    );
}

#[test]
fn huge_length_does_not_overflow() {
    let mut decoder = BodyDecoder::new(BodyFraming::Length(u64::MAX));
    let (body, rest, _) = feed_all(&mut decoder, b"abc");
    assert_eq!(body, b"abc");
    assert!(rest.is_empty());
    assert!(!decoder.is_done());
}

#[test]
fn until_close_takes_everything_and_ends_at_eof() {
    let mut decoder = BodyDecoder::new(BodyFraming::UntilClose);
    let (body, rest, err) = feed(&mut decoder, [&b"data: a\n\n"[..], b"", b"data: b\n\n"]);
    assert_eq!(body, b"data: a\n\ndata: b\n\n");
    assert!(rest.is_empty() && err.is_none());
    assert!(!decoder.is_done());
    assert_eq!(decoder.at_eof(), Ok(()));
    assert!(decoder.is_done());
    assert_eq!(decoder.received(), 18);
}

#[test]
fn until_close_is_zero_copy() {
    let mut decoder = BodyDecoder::new(BodyFraming::UntilClose);
    let mut buf = BytesMut::from(&b"abcdef"[..]);
    let start = buf.as_ptr();
    assert_eq!(decoder.decode(&mut buf).unwrap().as_ptr(), start);
}
