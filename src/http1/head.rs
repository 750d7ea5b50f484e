//! Parsing the response head (status line and header section).

use std::mem::MaybeUninit;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

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
    pub headers: HeaderMap,
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

    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for header in response.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
            Http1Error::MalformedHead(format!("invalid header name {:?}", header.name))
        })?;
        let value = HeaderValue::from_bytes(header.value).map_err(|_| {
            Http1Error::MalformedHead(format!("invalid value for header {:?}", header.name))
        })?;
        headers.append(name, value);
    }
    Ok(Some((
        ResponseHead {
            status,
            version,
            reason,
            headers,
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
