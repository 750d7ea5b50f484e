//! Properties over random bodies, encodings and read boundaries.

use bytes::BytesMut;
use proptest::prelude::*;

use crate::http1::{encode_chunk, BodyDecoder, BodyFraming, Http1Error, LAST_CHUNK};

/// How a random body is chunked on the wire.
#[derive(Debug, Clone)]
struct Encoding {
    chunk_sizes: Vec<usize>,
    extensions: bool,
    lowercase: bool,
    trailers: Vec<String>,
}

fn encoding() -> impl Strategy<Value = Encoding> {
    (
        prop::collection::vec(1usize..300, 1..20),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec("[A-Za-z-]{1,12}: [ -~]{0,20}", 0..4),
    )
        .prop_map(|(chunk_sizes, extensions, lowercase, trailers)| Encoding {
            chunk_sizes,
            extensions,
            lowercase,
            trailers,
        })
}

/// Encodes `body` with `encode_chunk` and `LAST_CHUNK` when the encoding is plain, or by hand
/// with the extensions, lowercase sizes and trailers it asks for.
fn encode(body: &[u8], enc: &Encoding) -> Vec<u8> {
    let plain = !enc.extensions && !enc.lowercase && enc.trailers.is_empty();
    let mut out = BytesMut::new();
    let mut rest = body;
    for &size in enc.chunk_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        if plain {
            encode_chunk(piece, &mut out);
            continue;
        }
        let size = match enc.lowercase {
            true => format!("{:x}", piece.len()),
            false => format!("{:X}", piece.len()),
        };
        let ext = if enc.extensions {
            " ;n=v;q=\"a;b\""
        } else {
            ""
        };
        out.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    if plain {
        out.extend_from_slice(LAST_CHUNK);
    } else {
        out.extend_from_slice(if enc.extensions {
            b"0;end\r\n"
        } else {
            b"0\r\n"
        });
        for trailer in &enc.trailers {
            out.extend_from_slice(format!("{trailer}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.to_vec()
}

/// Cuts `input` into reads of the given sizes (cycled), as a socket might deliver it.
fn reads<'a>(input: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = input;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// Feeds the reads one by one, checking after each that the decoder is done exactly when the
/// whole encoded body (`body_end` bytes) has arrived, and that nothing past it was taken.
fn check_decoding(
    framing: BodyFraming,
    wire: &[u8],
    body_end: usize,
    read_sizes: &[usize],
) -> Result<Vec<u8>, TestCaseError> {
    let mut decoder = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    for piece in reads(wire, read_sizes) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        let data = decoder
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        body.extend_from_slice(&data);
        prop_assert_eq!(decoder.is_done(), fed >= body_end);
        if fed >= body_end {
            prop_assert_eq!(&buf[..], &wire[body_end..fed]);
        }
        // Nothing more can be decoded until more bytes arrive.
        prop_assert!(decoder.decode(&mut buf).unwrap().is_empty() || decoder.is_done());
        prop_assert_eq!(decoder.received(), body.len() as u64);
    }
    prop_assert_eq!(decoder.at_eof(), Ok(()));
    Ok(body)
}

proptest! {
    #[test]
    fn chunked_round_trip_over_any_reads(
        body in prop::collection::vec(any::<u8>(), 0..2000),
        enc in encoding(),
        extra in prop::collection::vec(any::<u8>(), 0..40),
        read_sizes in prop::collection::vec(1usize..80, 1..12),
    ) {
        let mut wire = encode(&body, &enc);
        let body_end = wire.len();
        wire.extend_from_slice(&extra);
        let decoded = check_decoding(BodyFraming::Chunked, &wire, body_end, &read_sizes)?;
        prop_assert_eq!(decoded, body);
    }

    #[test]
    fn chunked_round_trip_one_byte_at_a_time(
        body in prop::collection::vec(any::<u8>(), 0..300),
        enc in encoding(),
        extra in prop::collection::vec(any::<u8>(), 0..10),
    ) {
        let mut wire = encode(&body, &enc);
        let body_end = wire.len();
        wire.extend_from_slice(&extra);
        let decoded = check_decoding(BodyFraming::Chunked, &wire, body_end, &[1])?;
        prop_assert_eq!(decoded, body);
    }

    #[test]
    fn truncated_chunked_body_fails_at_eof(
        body in prop::collection::vec(any::<u8>(), 0..1000),
        enc in encoding(),
        cut in any::<prop::sample::Index>(),
        read_sizes in prop::collection::vec(1usize..80, 1..12),
    ) {
        let wire = encode(&body, &enc);
        let cut = cut.index(wire.len());
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in reads(&wire[..cut], &read_sizes) {
            buf.extend_from_slice(piece);
            decoded.extend_from_slice(&decoder.decode(&mut buf).unwrap());
        }
        prop_assert!(!decoder.is_done());
        prop_assert!(body.starts_with(&decoded));
        prop_assert_eq!(
            decoder.at_eof(),
            Err(Http1Error::Truncated { received: decoded.len() as u64, missing: None })
        );
    }

    #[test]
    fn length_body_over_any_reads(
        body in prop::collection::vec(any::<u8>(), 0..2000),
        extra in prop::collection::vec(any::<u8>(), 0..40),
        read_sizes in prop::collection::vec(1usize..300, 1..12),
    ) {
        let mut wire = body.clone();
        wire.extend_from_slice(&extra);
        let framing = BodyFraming::Length(body.len() as u64);
        let decoded = check_decoding(framing, &wire, body.len(), &read_sizes)?;
        prop_assert_eq!(decoded, body);
    }

    #[test]
    fn truncated_length_body_fails_at_eof(
        body in prop::collection::vec(any::<u8>(), 1..2000),
        cut in any::<prop::sample::Index>(),
        read_sizes in prop::collection::vec(1usize..300, 1..12),
    ) {
        let cut = cut.index(body.len());
        let mut decoder = BodyDecoder::new(BodyFraming::Length(body.len() as u64));
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in reads(&body[..cut], &read_sizes) {
            buf.extend_from_slice(piece);
            decoded.extend_from_slice(&decoder.decode(&mut buf).unwrap());
        }
        prop_assert_eq!(&decoded[..], &body[..cut]);
        prop_assert_eq!(
            decoder.at_eof(),
            Err(Http1Error::Truncated {
                received: cut as u64,
                missing: Some((body.len() - cut) as u64),
            })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_errors_stick(
        wire in prop::collection::vec(any::<u8>(), 0..200),
        read_sizes in prop::collection::vec(1usize..20, 1..6),
    ) {
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked);
        let mut buf = BytesMut::new();
        let mut failed = None;
        for piece in reads(&wire, &read_sizes) {
            buf.extend_from_slice(piece);
            match (decoder.decode(&mut buf), &failed) {
                (Err(e), None) => failed = Some(e),
                (result, Some(e)) => prop_assert_eq!(result, Err(e.clone())),
                (Ok(_), None) => {}
            }
        }
        if let Some(e) = failed {
            prop_assert_eq!(decoder.at_eof(), Err(e));
        }
    }
}

/// One header line as an upstream may write it: the spacing around the value and the line end
/// vary (`None`: as Sluice writes it).
fn field_line() -> impl Strategy<
    Value = (
        String,
        String,
        Option<(&'static str, &'static str, &'static str)>,
    ),
> {
    (
        "[A-Za-z][A-Za-z0-9-]{0,12}",
        "[!-~]([ -~]{0,20}[!-~])?",
        prop_oneof![
            Just(None),
            Just(Some(("", "", "\r\n"))),
            Just(Some(("  ", "", "\r\n"))),
            Just(Some((" ", " \t", "\r\n"))),
            Just(Some((" ", "", "\n"))),
        ],
    )
}

proptest! {
    /// Whatever the head's spacing and whichever fields are kept, the copied lines are the
    /// bytes `encode_field` writes for those fields.
    #[test]
    fn kept_lines_are_what_encode_field_writes(
        lines in prop::collection::vec(field_line(), 0..24),
        kept in prop::collection::vec(any::<bool>(), 24),
    ) {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for (name, value, spacing) in &lines {
            let (before, after, end) = spacing.unwrap_or((" ", "", "\r\n"));
            head.push_str(&format!("{name}:{before}{value}{after}{end}"));
        }
        head.push_str("\r\n");
        let (parsed, _) = crate::http1::parse_response_head(head.as_bytes(), 1 << 20)
            .unwrap()
            .unwrap();
        let names: Vec<&str> = lines.iter().map(|(name, ..)| name.as_str()).collect();
        let mut expected = BytesMut::new();
        for (i, (name, value)) in parsed.fields.iter().enumerate() {
            prop_assert_eq!(name, names[i].as_bytes());
            if kept[i] {
                crate::http1::encode_field(name, value, &mut expected);
            }
        }
        let mut index = 0;
        let mut written = BytesMut::new();
        parsed.fields.write_lines(
            |_| {
                index += 1;
                kept[index - 1]
            },
            &mut written,
        );
        prop_assert_eq!(written, expected);
    }
}
