//! Parsing the response head (status line and header section).

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, StatusCode, Version};

use super::Http1Error;

/// Most header fields accepted in one response head. Fixed so the parser's scratch space lives
/// on the stack; real upstream responses carry a few dozen at most.
pub const MAX_HEADERS: usize = 128;

/// A parsed response head, owned, so the read buffer can be reused for the body at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// [`Version::HTTP_10`] or [`Version::HTTP_11`]: it changes keep-alive and allowed framing.
    pub version: Version,
    /// The reason phrase only when it says something the status code does not, i.e. differs from
    /// the canonical one (and is not empty), so relaying it costs nothing in the common case.
    pub reason: Option<String>,
    pub fields: Fields,
}

/// A head's header fields as the upstream sent them: one copy of the bytes and where each
/// field's name and value are in it. A proxy passes most fields on untouched and looks at a
/// handful, so nothing is copied or hashed per field: a `HeaderMap` of a provider's 25 fields
/// cost ~30,000 instructions to build and free, a tenth of what a whole stream costs.
///
/// Names keep the case they were sent in; every lookup here ignores case.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Fields {
    raw: Bytes,
    spans: Vec<FieldSpan>,
}

/// Where one field's name and value are in [`Fields::raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FieldSpan {
    name_start: u32,
    name_end: u32,
    value_start: u32,
    value_end: u32,
}

impl Fields {
    /// Fields from name and value pairs (a head that did not come as HTTP/1.1 bytes: an HTTP/2
    /// upstream's, a test's). They are taken as valid.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Fields {
        let mut raw = Vec::new();
        let mut spans = Vec::new();
        for (name, value) in pairs {
            let name_start = raw.len() as u32;
            raw.extend_from_slice(name);
            let name_end = raw.len() as u32;
            raw.extend_from_slice(value);
            spans.push(FieldSpan {
                name_start,
                name_end,
                value_start: name_end,
                value_end: raw.len() as u32,
            });
        }
        Fields {
            raw: raw.into(),
            spans,
        }
    }

    /// Every field in the order sent: name (in the case sent) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.spans.iter().map(|span| {
            (
                &self.raw[span.name_start as usize..span.name_end as usize],
                self.value_at(span),
            )
        })
    }

    /// The values of every field named `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_str().as_bytes();
        self.spans
            .iter()
            .filter(move |span| self.is_named_at(span, name))
            .map(|span| self.value_at(span))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str().as_bytes();
        self.spans
            .iter()
            .find(|span| self.is_named_at(span, name))
            .map(|span| self.value_at(span))
    }

    /// Lengths first: most fields are ruled out without reading their names.
    fn is_named_at(&self, span: &FieldSpan, name: &[u8]) -> bool {
        (span.name_end - span.name_start) as usize == name.len()
            && self.raw[span.name_start as usize..span.name_end as usize].eq_ignore_ascii_case(name)
    }

    fn value_at(&self, span: &FieldSpan) -> &[u8] {
        &self.raw[span.value_start as usize..span.value_end as usize]
    }

    pub fn contains(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Writes `name: value\r\n` for every field whose name (as sent) `keep` takes, in order,
    /// as [`super::encode_field`] would. A field that came written that way (one space after
    /// the colon, CRLF after the value) is copied from the head's bytes as it is, and a run of
    /// such fields next to each other in one copy: a provider's head is mostly kept, so this is
    /// a few copies instead of four per field.
    pub fn write_lines(&self, mut keep: impl FnMut(&[u8]) -> bool, out: &mut BytesMut) {
        // The bytes of the run being gathered, as a range of `raw`.
        let mut run = 0..0;
        for span in &self.spans {
            let name = &self.raw[span.name_start as usize..span.name_end as usize];
            if !keep(name) {
                continue;
            }
            let (name_end, value_end) = (span.name_end as usize, span.value_end as usize);
            let as_written = self.raw.get(name_end..span.value_start as usize) == Some(b": ")
                && self.raw.get(value_end..value_end + 2) == Some(b"\r\n");
            if as_written && run.end == span.name_start as usize && !run.is_empty() {
                run.end = value_end + 2;
                continue;
            }
            out.put_slice(&self.raw[run]);
            if as_written {
                run = span.name_start as usize..value_end + 2;
            } else {
                run = 0..0;
                super::encode_field(name, self.value_at(span), out);
            }
        }
        out.put_slice(&self.raw[run]);
    }

    /// Bytes of the head the fields were read from (an upper bound of what they take written).
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// A field name as sent is `name` (`http`'s names are lower case).
pub fn is_named(sent: &[u8], name: &HeaderName) -> bool {
    sent.eq_ignore_ascii_case(name.as_str().as_bytes())
}

/// Parses the response head at the start of `buf`.
///
/// `Ok(None)` means the head is incomplete: read more and call again with the whole buffer (the
/// parse restarts; heads are small, so that is cheaper than keeping parser state). A head that
/// is still incomplete past `max_head` bytes, or that ends after `max_head` bytes, is
/// [`Http1Error::HeadTooLarge`], so the answer never depends on how the reads fell.
/// `Ok(Some((head, consumed)))`: the body (or the next response) starts at `buf[consumed..]`.
///
/// A 1xx head is returned like any other: its framing is empty, and the caller reads the next
/// head after it.
pub fn parse_response_head(
    buf: &[u8],
    max_head: usize,
) -> Result<Option<(ResponseHead, usize)>, Http1Error> {
    let mut scratch = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    // The default configuration is the strict one: no obsolete line folding, no whitespace
    // before a header's colon, a single space after the version and code.
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut scratch,
    );
    let consumed = match parsed {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(Http1Error::HeadTooLarge { limit: max_head })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Http1Error::TooManyHeaders { max: MAX_HEADERS })
        }
        Err(e) => return Err(Http1Error::MalformedHead(describe(e))),
    };
    if consumed > max_head {
        return Err(Http1Error::HeadTooLarge { limit: max_head });
    }

    // A complete parse sets all three.
    let (Some(minor), Some(code), Some(reason)) =
        (response.version, response.code, response.reason)
    else {
        return Err(Http1Error::MalformedHead("incomplete status line".into()));
    };
    let status = StatusCode::from_u16(code)
        .map_err(|_| Http1Error::MalformedHead(format!("invalid status code {code:03}")))?;
    let version = match minor {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = (!reason.is_empty() && status.canonical_reason() != Some(reason))
        .then(|| reason.to_owned());

    // httparse checked every name (a token) and value (no control characters): they are
    // located, not parsed again. The head is copied once, so the read buffer is free for the
    // body.
    let base = buf.as_ptr() as usize;
    let at = |piece: &[u8]| (piece.as_ptr() as usize - base) as u32;
    let spans = response
        .headers
        .iter()
        .map(|header| {
            let name_start = at(header.name.as_bytes());
            let value_start = at(header.value);
            FieldSpan {
                name_start,
                name_end: name_start + header.name.len() as u32,
                value_start,
                value_end: value_start + header.value.len() as u32,
            }
        })
        .collect();
    Ok(Some((
        ResponseHead {
            status,
            version,
            reason,
            fields: Fields {
                raw: Bytes::copy_from_slice(&buf[..consumed]),
                spans,
            },
        },
        consumed,
    )))
}

/// httparse's error names, phrased for someone reading a 502 body.
fn describe(e: httparse::Error) -> String {
    match e {
        httparse::Error::HeaderName => {
            "invalid header name (or a folded header line, which is obsolete)".into()
        }
        httparse::Error::HeaderValue => "invalid header value".into(),
        httparse::Error::NewLine => "invalid line ending".into(),
        httparse::Error::Status => "invalid status line".into(),
        httparse::Error::Version => "not an HTTP/1.0 or HTTP/1.1 response".into(),
        other => other.to_string(),
    }
}
