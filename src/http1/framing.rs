//! Where a response body ends (RFC 9112 §6.3) and whether the connection outlives it; which
//! request transfer codings can be taken off.

use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderName, StatusCode, Version};

use super::{Fields, Http1Error, ResponseHead};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all, whatever the headers say.
    Empty,
    /// Exactly this many bytes (`Length(0)` behaves as [`BodyFraming::Empty`]).
    Length(u64),
    /// Chunked transfer coding, ended by the last chunk and trailer section.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// Whether a response with this status can have a body at all (RFC 9110 §6.4.1: never a 1xx,
/// 204 or 304, whatever its fields say).
pub fn status_has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Decides the body framing, in the order RFC 9112 §6.3 gives.
///
/// When both `Transfer-Encoding` and `Content-Length` are present the former wins, as the RFC
/// says; such a response may be a smuggling attempt, so [`keeps_alive`] refuses to reuse the
/// connection, and the caller must drop `Content-Length` before relaying the response.
/// A `Content-Length` that is malformed, or several that disagree, is an error rather than a
/// guess, because guessing differently from the next hop is how responses get split.
pub fn response_framing(
    head: &ResponseHead,
    request_was_head: bool,
) -> Result<BodyFraming, Http1Error> {
    if request_was_head || !status_has_body(head.status) {
        return Ok(BodyFraming::Empty);
    }
    if head.fields.contains(&TRANSFER_ENCODING) {
        if head.version == Version::HTTP_10 {
            // §6.1: framing of an HTTP/1.0 message with Transfer-Encoding is faulty; the
            // upstream may or may not have chunked it, and guessing would corrupt the body.
            return Err(Http1Error::InvalidFraming(
                "HTTP/1.0 response with Transfer-Encoding".into(),
            ));
        }
        return transfer_encoding_framing(&head.fields);
    }
    match content_length(&head.fields)? {
        Some(n) => Ok(BodyFraming::Length(n)),
        None => Ok(BodyFraming::UntilClose),
    }
}

/// Whether the connection may carry another request once this response's body has ended.
///
/// Never after a body delimited by the close itself, never after a response whose framing was
/// ambiguous (both `Transfer-Encoding` and `Content-Length`), never after 101 (the connection
/// now speaks another protocol). Otherwise HTTP/1.1 persists unless `Connection: close`, and
/// HTTP/1.0 only with `Connection: keep-alive`.
pub fn keeps_alive(head: &ResponseHead, framing: &BodyFraming) -> bool {
    if *framing == BodyFraming::UntilClose
        || head.status == StatusCode::SWITCHING_PROTOCOLS
        || (head.fields.contains(&TRANSFER_ENCODING) && head.fields.contains(&CONTENT_LENGTH))
        || has_token(&head.fields, &CONNECTION, b"close")
    {
        return false;
    }
    match head.version {
        Version::HTTP_11 => true,
        _ => has_token(&head.fields, &CONNECTION, b"keep-alive"),
    }
}

fn transfer_encoding_framing(headers: &Fields) -> Result<BodyFraming, Http1Error> {
    let mut last: Option<&[u8]> = None;
    let mut chunked = 0usize;
    for coding in list_elements(headers, &TRANSFER_ENCODING) {
        // A transfer coding may carry parameters (`gzip;x=y`); only its name matters here.
        let name = coding.split(|&b| b == b';').next().unwrap_or_default();
        let name = trim_ows(name);
        if name.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        }
        last = Some(name);
    }
    let Some(last) = last else {
        return Err(Http1Error::InvalidFraming(
            "empty Transfer-Encoding header".into(),
        ));
    };
    if chunked > 1 {
        // §7.1: a sender must not chunk twice; decoding once or twice would both be guesses.
        return Err(Http1Error::InvalidFraming(
            "chunked transfer coding applied more than once".into(),
        ));
    }
    if last.eq_ignore_ascii_case(b"chunked") {
        Ok(BodyFraming::Chunked)
    } else {
        // §6.3: a response whose final coding is not chunked ends with the connection.
        Ok(BodyFraming::UntilClose)
    }
}

/// The agreed `Content-Length`, if any. Repeated values (`5, 5`, or two headers saying 5) are
/// accepted, as RFC 9110 §8.6 allows, since some servers and proxies duplicate the header; a
/// proxy that accepts them must pass on that one value, once (a repeat is an error to many
/// clients: Node's parser, under the OpenAI and Anthropic SDKs, among them).
pub fn content_length(headers: &Fields) -> Result<Option<u64>, Http1Error> {
    agreed_content_length(headers.get_all(&CONTENT_LENGTH))
}

/// [`content_length`] of `Content-Length` field values however they are held: a request's too,
/// whose length Pingora reconciles the same way (`5, 5` is 5), so that a proxy refusing or
/// forwarding by its length reads the one the body is framed by.
pub fn agreed_content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, Http1Error> {
    let mut agreed: Option<u64> = None;
    for value in values {
        for element in value.split(|&b| b == b',') {
            let n = parse_decimal(trim_ows(element)).ok_or_else(|| {
                Http1Error::InvalidFraming(format!(
                    "invalid Content-Length {:?}",
                    String::from_utf8_lossy(value)
                ))
            })?;
            match agreed {
                Some(m) if m != n => {
                    return Err(Http1Error::InvalidFraming(format!(
                        "conflicting Content-Length values {m} and {n}"
                    )))
                }
                _ => agreed = Some(n),
            }
        }
    }
    Ok(agreed)
}

/// The `Keep-Alive` field's name (`http` has no constant for it).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// What an upstream's `Keep-Alive` field says about its connection (RFC 2068 §19.7.1.1; sent
/// with HTTP/1.1 too, by Node's server, Apache and others): `timeout=N`, how many seconds it
/// keeps the connection open while idle, and `max=N`, how many requests it still takes on it
/// (servers differ on whether that counts this one: `max=1` is taken as the last). A parameter
/// that is not a number is ignored; one given twice counts at its smaller value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepAliveHint {
    pub timeout: Option<u64>,
    pub max: Option<u64>,
}

impl KeepAliveHint {
    pub fn of(fields: &Fields) -> Self {
        let mut hint = KeepAliveHint::default();
        for element in list_elements(fields, &KEEP_ALIVE) {
            let Some(eq) = element.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (name, value) = (trim_ows(&element[..eq]), trim_ows(&element[eq + 1..]));
            let value = match value {
                [b'"', inner @ .., b'"'] => inner,
                _ => value,
            };
            let slot = if name.eq_ignore_ascii_case(b"timeout") {
                &mut hint.timeout
            } else if name.eq_ignore_ascii_case(b"max") {
                &mut hint.max
            } else {
                continue;
            };
            if let Some(n) = parse_decimal(value) {
                *slot = Some(slot.map_or(n, |m| m.min(n)));
            }
        }
        hint
    }

    /// Whether the connection may wait for another request at all: not when the upstream takes
    /// no more requests on it (`max=1`, or `max=0`) or keeps it open for no idle time
    /// (`timeout=0`).
    pub fn allows_reuse(&self) -> bool {
        !(self.max.is_some_and(|max| max <= 1) || self.timeout == Some(0))
    }
}

/// How long a connection may wait idle for its next request when its upstream closes idle
/// connections after `timeout` seconds: a margin short of that, so that a request sent at the
/// end of the wait is not on its way while the upstream closes the connection (which would cost
/// that request a 502). The margin is 1 s, or half the timeout when that is 2 s or less; zero
/// means not at all.
pub fn idle_within(timeout: u64) -> Duration {
    if timeout <= 2 {
        Duration::from_millis(timeout * 500)
    } else {
        Duration::from_secs(timeout - 1)
    }
}

/// `1*DIGIT` as a u64: no sign, no inner whitespace, no overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn has_token(headers: &Fields, name: &HeaderName, token: &[u8]) -> bool {
    list_elements(headers, name).any(|element| element.eq_ignore_ascii_case(token))
}

/// Whether a request's `Transfer-Encoding` field values name one `chunked` and no other coding,
/// or no coding at all: the only transfer coding a proxy that forwards a body with a length of
/// its own can take off (RFC 9112 §6.1: a server answers a coding it does not understand with
/// `501`). Chunked twice is refused as for a response (§7.1).
pub fn only_chunked<'a>(values: impl Iterator<Item = &'a [u8]> + 'a) -> bool {
    let mut codings = elements(values);
    match codings.next() {
        None => true,
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// The non-empty elements of a comma-separated list header, across all its field lines, with
/// optional whitespace trimmed (RFC 9110 §5.6.1: empty elements are ignored).
fn list_elements<'a>(
    headers: &'a Fields,
    name: &'a HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    elements(headers.get_all(name))
}

/// [`list_elements`] of field values however they are held.
fn elements<'a>(
    values: impl Iterator<Item = &'a [u8]> + 'a,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    values
        .flat_map(|value| value.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
