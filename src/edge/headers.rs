//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1), the
//! upstream's `Host` and configured headers, request body framing, and the stream response
//! headers that stop intermediaries and browsers from buffering.

use crate::http1::{self, is_named, Fields, ResponseHead};
use crate::route::UpstreamSpec;
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType::InvalidHTTPHeader, OrErr, Result};
use std::borrow::Cow;
use std::net::IpAddr;

/// Removed in both directions, with every header the `Connection` header names (`name` in lower
/// case). The last two are meant for a proxy (RFC 9110 §11.7): a client's proxy credentials are
/// not the upstream's, and an upstream's proxy challenge is not for the client.
fn is_hop_by_hop(name: &[u8], connection_tokens: &[String]) -> bool {
    HOP_BY_HOP.contains(&name)
        || connection_tokens
            .iter()
            .any(|token| token.as_bytes() == name)
}

/// Hop-by-hop fields (RFC 9110 §7.6.1, and the `Proxy-*` ones a proxy consumes), in lower case.
const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
];

/// The upstream's end-to-end fields a head of this shape drops (besides the hop-by-hop ones,
/// and those Sluice sets itself).
fn shape_dropped(shape: ResponseShape) -> &'static [&'static [u8]] {
    match shape {
        // Sluice frames a stream (chunked), never compresses it, and sets its own caching.
        ResponseShape::Stream => &[b"content-length", b"content-encoding", b"cache-control"],
        // A `101` has no body.
        ResponseShape::Upgrade => &[b"content-length"],
        ResponseShape::Plain => &[],
    }
}

/// The upstream's framing fields a head drops: for a close-delimited body, the chunked framing
/// Sluice takes off; and a `Content-Length` that is not the body's length (`length_void`: sent
/// beside `Transfer-Encoding`, which overrides it, or on a status that has no body).
fn framing_dropped(close_delimited: bool, length_void: bool) -> &'static [&'static [u8]] {
    match (close_delimited, length_void) {
        (true, _) => &[b"transfer-encoding", b"content-length"],
        (false, true) => &[b"content-length"],
        (false, false) => &[],
    }
}

/// `name` in lower case, on the stack when it fits: an upstream's names come as it sent them,
/// and every field of a head is checked against a dozen names, each then one plain compare.
fn lowered<'b>(name: &[u8], buf: &'b mut [u8; 64]) -> Cow<'b, [u8]> {
    match buf.get_mut(..name.len()) {
        Some(lower) => {
            lower.copy_from_slice(name);
            lower.make_ascii_lowercase();
            Cow::Borrowed(lower)
        }
        None => Cow::Owned(name.to_ascii_lowercase()),
    }
}

/// Header names the `Connection` header lists (`values`: its values): hop-by-hop as well.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The values of `name` in a map, as bytes.
pub fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers.get_all(name).into_iter().map(HeaderValue::as_bytes)
}

/// How the request body is framed towards the upstream.
pub enum BodyFraming {
    /// No body.
    Empty,
    /// The whole body is known: its length.
    Sized(usize),
    /// Only a prefix is known: keep the client's length if it sent one, else chunked.
    Streamed { content_length: Option<u64> },
}

pub struct UpstreamRequest<'a> {
    pub client: &'a RequestHeader,
    pub upstream: &'a UpstreamSpec,
    /// Appended to the client's `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a str,
    pub body: BodyFraming,
    /// Stream requests never ask the upstream for a compressed body.
    pub stream: bool,
    /// The client's key is Sluice's own (auth `keys` mode): it never reaches the upstream.
    pub strip_client_key: bool,
    /// A WebSocket handshake: `Upgrade` and `Connection: upgrade` are kept (the only case where
    /// they are).
    pub websocket: bool,
}

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// nginx's: tells an nginx in front of Sluice not to buffer a stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

impl UpstreamRequest<'_> {
    /// What is sent upstream in place of the client's head. Everything that can fail is checked
    /// here, before a connection is taken.
    pub fn build(&self) -> Result<UpstreamHead> {
        let client = self.client;
        let path = client
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let path = if self.strip_client_key {
            crate::auth::remove_key_param(path)
        } else {
            path.into()
        };
        let target = PathAndQuery::from_maybe_shared(bytes::Bytes::from(
            self.upstream.target.upstream_path(&path),
        ))
        .or_err(InvalidHTTPHeader, "upstream request target")?;
        let mut head = UpstreamHead {
            method: client.method.clone(),
            target,
            connection_tokens: connection_tokens(values(&client.headers, &header::CONNECTION)),
            stream: self.stream,
            strip_client_key: self.strip_client_key,
            set: SetFields::with_capacity(5 + self.upstream.headers.len()),
        };
        if self.websocket {
            if let Some(upgrade) = client.headers.get(header::UPGRADE) {
                head.set.push(header::UPGRADE, upgrade.clone());
                head.set
                    .push(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
        }
        head.set
            .push(header::HOST, self.upstream.target.host_header().clone());
        head.set
            .push(crate::request_id::HEADER, header_value(self.request_id)?);
        if let Some(ip) = self.client_ip {
            let mut forwarded = Vec::with_capacity(64);
            // Every line of the client's list, in order: two lines are one list (RFC 9110 5.3).
            for prior in client.headers.get_all(X_FORWARDED_FOR) {
                forwarded.extend_from_slice(prior.as_bytes());
                forwarded.extend_from_slice(b", ");
            }
            crate::addr_text::push_ip(&mut forwarded, ip);
            let forwarded = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded))
                .or_err(InvalidHTTPHeader, "invalid header value")?;
            head.set.push(X_FORWARDED_FOR, forwarded);
        }
        match self.body {
            BodyFraming::Empty => {}
            BodyFraming::Sized(len) => head
                .set
                .push(header::CONTENT_LENGTH, HeaderValue::from(len)),
            BodyFraming::Streamed {
                content_length: Some(len),
            } => head
                .set
                .push(header::CONTENT_LENGTH, HeaderValue::from(len)),
            BodyFraming::Streamed {
                content_length: None,
            } => head.set.push(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            ),
        }
        for (name, value) in &self.upstream.headers {
            head.set.set(name.clone(), value.clone());
        }
        Ok(head)
    }
}

/// Fields Sluice sets on a head it passes on: sent after the passed-on fields, each name once
/// (a name set again replaces its value), and a passed-on field of a name set here is not sent.
#[derive(Debug)]
struct SetFields(Vec<(HeaderName, HeaderValue)>);

impl SetFields {
    fn with_capacity(capacity: usize) -> Self {
        SetFields(Vec::with_capacity(capacity))
    }

    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        match self.0.iter_mut().find(|(set, _)| *set == name) {
            Some(field) => field.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// A name not set before: Sluice's own fields, before any configured one (no search).
    fn push(&mut self, name: HeaderName, value: HeaderValue) {
        debug_assert!(!self.has(&name), "{name} is set twice");
        self.0.push((name, value));
    }

    fn has(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|(set, _)| set == name)
    }

    fn remove(&mut self, name: &HeaderName) {
        self.0.retain(|(set, _)| set != name);
    }

    /// [`SetFields::has`] for a name in lower case.
    fn has_lowered(&self, name: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(set, _)| set.as_str().as_bytes() == name)
    }

    fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter().map(|(name, value)| (name, value))
    }
}

/// The request head sent upstream, as what Sluice changes about the client's: the client's
/// fields it keeps are read from the client's head as the head is written, not copied into a
/// map of their own (an HTTP/1.1 upstream only needs their bytes).
#[derive(Debug)]
pub struct UpstreamHead {
    pub method: http::Method,
    pub target: PathAndQuery,
    /// Names the client's `Connection` header lists: hop-by-hop, not sent.
    connection_tokens: Vec<String>,
    stream: bool,
    strip_client_key: bool,
    set: SetFields,
}

impl UpstreamHead {
    /// The fields sent upstream: the client's that are kept, in their order, then Sluice's.
    /// `client` is the head this one was built from.
    pub fn fields<'a>(
        &'a self,
        client: &'a HeaderMap,
    ) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
        client
            .iter()
            .filter(|(name, _)| self.keeps(name))
            .chain(self.set.iter())
    }

    fn keeps(&self, name: &HeaderName) -> bool {
        !(is_hop_by_hop(name.as_str().as_bytes(), &self.connection_tokens)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || (self.stream && name == header::ACCEPT_ENCODING)
            // Sluice reads the body before it goes upstream, and answers `100-continue` itself.
            || name == header::EXPECT
            || (self.strip_client_key && crate::auth::CLIENT_KEY_HEADERS.contains(&name.as_str()))
            || self.set.has(name))
    }

    /// The head as a Pingora client session takes it (HTTP/2 upstreams), on a plain header map
    /// like [`response_head`] (HTTP/2 requires names in lower case).
    pub fn to_request_header(&self, client: &HeaderMap) -> RequestHeader {
        let mut headers = HeaderMap::with_capacity(client.len() + self.set.0.len());
        for (name, value) in self.fields(client) {
            headers.append(name.clone(), value.clone());
        }
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.target.clone().into();
        parts.headers = headers;
        RequestHeader::from(parts)
    }
}

fn header_value(value: impl AsRef<str>) -> Result<HeaderValue> {
    HeaderValue::from_str(value.as_ref()).or_err(InvalidHTTPHeader, "invalid header value")
}

/// How the client's response head is shaped from the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseShape {
    /// The upstream's framing is kept: a chunked body stays chunked, a length stays.
    Plain,
    /// A stream (event stream, JSON lines): chunked, never compressed, never cached or buffered.
    Stream,
    /// The `101 Switching Protocols` that accepts a WebSocket handshake.
    Upgrade,
}

/// The response head sent to the client for the upstream's head.
pub fn client_response(
    upstream: ResponseHead,
    shape: ResponseShape,
    request_id: &str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<ClientHead> {
    let ResponseHead {
        status,
        reason,
        fields: upstream_fields,
        ..
    } = upstream;
    let tokens = connection_tokens(upstream_fields.get_all(&header::CONNECTION));
    // Sluice takes `chunked` off an upstream's body and nothing else: a body still in another
    // transfer coding (`gzip, chunked`) would reach an HTTP/2 or HTTP/1.0 client, or the usage
    // inspector, with nothing left to say how it is coded (nginx answers it with a 502 too).
    if !http1::only_chunked(upstream_fields.get_all(&header::TRANSFER_ENCODING)) {
        // From the upstream: worded `Upstream InvalidHTTPHeader context: …` (with the source
        // unset, Pingora's wording starts with a space, and so did the 502's message).
        return Err(pingora::Error::explain(
            InvalidHTTPHeader,
            "the upstream's body is in a transfer coding other than chunked",
        )
        .into_up());
    }
    // An HTTP/2 upstream may leave a plain body unframed; the client still needs to know where
    // it ends without losing its connection.
    let framed = upstream_fields.contains(&header::CONTENT_LENGTH)
        || upstream_fields.contains(&header::TRANSFER_ENCODING);
    let has_body = crate::http1::status_has_body(status);
    // A `Content-Length` beside `Transfer-Encoding` is not the body's length (RFC 9112 §6.3),
    // and a next hop that went by it would split the response; a 1xx or 204 has no body to
    // measure (RFC 9110 §8.6).
    let length_void = upstream_fields.contains(&header::TRANSFER_ENCODING)
        || status.is_informational()
        || status == 204;
    let needs_chunked = shape == ResponseShape::Plain && !framed && has_body;
    // Only a plain head passes the upstream's length on (a stream's and a `101`'s drop it).
    let length = match shape {
        ResponseShape::Plain if !length_void => repeated_length(&upstream_fields)?,
        _ => None,
    };
    let mut head = ClientHead {
        status,
        reason,
        upstream: upstream_fields,
        shape,
        connection_tokens: tokens,
        set: SetFields::with_capacity(4 + extra.len()),
        close_delimited: false,
        length_void,
    };
    head.set
        .push(crate::request_id::HEADER, header_value(request_id)?);
    match shape {
        ResponseShape::Stream => {
            head.set
                .push(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            head.set
                .push(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
            // A 204 or 304 (an EventSource server's "stop reconnecting") has no body to frame,
            // and must not say `Transfer-Encoding` (RFC 9112 §6.1).
            if has_body {
                head.set.push(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
        }
        ResponseShape::Upgrade => {
            if let Some(upgrade) = head.upstream.get(&header::UPGRADE) {
                let upgrade = HeaderValue::from_bytes(upgrade)
                    .or_err(InvalidHTTPHeader, "invalid Upgrade value")
                    .map_err(|e| e.into_up())?;
                head.set.push(header::UPGRADE, upgrade);
            }
            head.set
                .push(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        ResponseShape::Plain if needs_chunked => {
            head.set.push(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        ResponseShape::Plain => {}
    }
    if let Some(length) = length {
        // In place of the upstream's fields of that name.
        head.set
            .push(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    for (name, value) in extra {
        head.set.set(name.clone(), value.clone());
    }
    Ok(head)
}

/// The one `Content-Length` the client gets in place of the upstream's, when those are repeated
/// (`2, 2`, or two fields saying 2): RFC 9110 §8.6 lets a recipient take them as the one value,
/// and a proxy that does so must pass that value on once. Node's parser (under the OpenAI and
/// Anthropic SDKs) refuses a repeat. `None`: the upstream's pass on as they are (none, or the
/// common case, a single plain number).
fn repeated_length(upstream: &Fields) -> Result<Option<u64>> {
    let mut lengths = upstream.get_all(&header::CONTENT_LENGTH);
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(None),
        (Some(only), None) if !only.is_empty() && only.iter().all(u8::is_ascii_digit) => Ok(None),
        // Values that disagree or are no number are refused by the HTTP/1.1 parser already.
        _ => http1::content_length(upstream)
            .or_err(InvalidHTTPHeader, "the upstream's Content-Length")
            .map_err(|e| e.into_up()),
    }
}

/// The response head for the client, as what Sluice changes about the upstream's: the upstream's
/// fields it keeps are written from the upstream's bytes (an HTTP/1.1 stream) or copied into
/// Pingora's head (any other response).
#[derive(Debug)]
pub struct ClientHead {
    pub status: http::StatusCode,
    /// The upstream's reason phrase, when it is not the status code's own.
    pub reason: Option<String>,
    upstream: Fields,
    shape: ResponseShape,
    /// Names the upstream's `Connection` header lists: hop-by-hop, not sent.
    connection_tokens: Vec<String>,
    set: SetFields,
    /// The client cannot take a chunked body (HTTP/1.0): no `Transfer-Encoding` is sent, and a
    /// body without a length ends with the connection.
    close_delimited: bool,
    /// The upstream's `Content-Length`, if any, is not its body's length: not passed on.
    length_void: bool,
}

impl ClientHead {
    /// For a client that cannot take a chunked body (HTTP/1.0, RFC 9112 §6.1): the head loses
    /// its `Transfer-Encoding` (Sluice's own or the upstream's), and any `Content-Length` an
    /// upstream sent beside it (which the chunked framing overrode), so the body is written as
    /// it is and ends when the connection closes.
    pub fn close_delimited(&mut self) {
        self.close_delimited = true;
        self.set.remove(&header::TRANSFER_ENCODING);
    }

    /// The fields sent to the client: the upstream's that are kept, in their order and with
    /// their names as the upstream sent them, then Sluice's.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let set = self
            .set
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        let kept = self.kept();
        self.upstream
            .iter()
            .filter(move |(name, _)| kept(name))
            .chain(set)
    }

    /// Whether the client gets an upstream field, by its name as sent.
    ///
    /// A name whose length no dropped name has is kept at once: most of a provider's head,
    /// which `keeps` would each lower and compare with a dozen names (~250 instructions a
    /// field).
    fn kept(&self) -> impl Fn(&[u8]) -> bool + '_ {
        let lengths = NameLengths::of(
            HOP_BY_HOP
                .iter()
                .chain(shape_dropped(self.shape))
                .chain(framing_dropped(self.close_delimited, self.length_void))
                .copied()
                .chain(self.connection_tokens.iter().map(|t| t.as_bytes()))
                .chain(self.set.iter().map(|(name, _)| name.as_str().as_bytes())),
        );
        move |name| !lengths.may_match(name) || self.keeps(name)
    }

    /// Whether the upstream's field `name` (as it sent it) is passed on to the client: what
    /// [`Self::kept`] asks for a name it cannot rule out by length.
    fn keeps(&self, name: &[u8]) -> bool {
        let mut buf = [0u8; 64];
        let name = &*lowered(name, &mut buf);
        let kept = match self.shape {
            _ if framing_dropped(self.close_delimited, self.length_void).contains(&name) => false,
            // The client's framing follows the upstream's: a chunked body stays chunked.
            ResponseShape::Plain if name == b"transfer-encoding" => true,
            _ => {
                !is_hop_by_hop(name, &self.connection_tokens)
                    && !shape_dropped(self.shape).contains(&name)
            }
        };
        kept && !self.set.has_lowered(name)
    }

    /// The head as bytes, for an HTTP/1.1 stream Sluice writes itself: the status line and
    /// [`Self::fields`], the upstream's kept fields copied from its bytes as it sent them.
    pub fn encode(&self) -> BytesMut {
        let set = || {
            self.set
                .iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        };
        let set_len: usize = set()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        // The upstream's status line and dropped fields leave room for Sluice's status line.
        let mut out = BytesMut::with_capacity(self.upstream.raw_len() + set_len + 64);
        http1::encode_status_line(self.status, self.reason.as_deref(), &mut out);
        self.upstream.write_lines(self.kept(), &mut out);
        for (name, value) in set() {
            http1::encode_field(name, value, &mut out);
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// A field Sluice sets, in place of the upstream's of that name (`Date` on a head Sluice
    /// writes itself).
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.set.set(name, value);
    }

    /// The body goes out chunked.
    pub fn is_chunked(&self) -> bool {
        let chunked = |(name, value): (&[u8], &[u8])| {
            is_named(name, &header::TRANSFER_ENCODING) && value.eq_ignore_ascii_case(b"chunked")
        };
        // Sluice's own fields first: a stream's head always sets it, and they are few.
        let set = self
            .set
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()));
        set.into_iter().any(chunked) || self.fields().any(chunked)
    }

    /// The head as Pingora's session writes it: the kept fields are copied out of the
    /// upstream's bytes, each its own allocation, so that the head Pingora keeps for as long as
    /// the response lasts does not hold the upstream's whole head too.
    ///
    /// For an HTTP/2 session (`http2`), two more things:
    /// - The fields are [`never_indexed`].
    /// - The map handed over is a clone: a clone's slots are as many as its fields, where the
    ///   map built here has room for up to twice as many (`HeaderMap` grows by powers of two: 48
    ///   slots of ~100 bytes for a provider's 25 fields). A head without `Date` gets one, so that
    ///   Pingora's replaces it rather than adds a field, which would grow the clone again.
    ///   (Pingora's HTTP/1.x session adds `Connection` too, so there the clone would grow.)
    pub fn into_response_header(self, http2: bool) -> Result<ResponseHeader> {
        let mut headers = HeaderMap::with_capacity(self.upstream.len() + self.set.0.len());
        {
            let kept = self.kept();
            for (name, value) in self.upstream.iter().filter(|(name, _)| kept(name)) {
                let name = HeaderName::from_bytes(name).or_err(InvalidHTTPHeader, "header name")?;
                let value =
                    HeaderValue::from_bytes(value).or_err(InvalidHTTPHeader, "header value")?;
                headers.append(name, value);
            }
        }
        for (name, value) in self.set.0 {
            headers.insert(name, value);
        }
        if http2 {
            never_indexed(&mut headers);
            if !headers.contains_key(header::DATE) {
                headers.insert(
                    header::DATE,
                    pingora::protocols::http::date::get_cached_date(),
                );
            }
            headers = headers.clone();
        }
        let mut head = response_head(self.status, headers);
        head.set_reason_phrase(self.reason.as_deref())?;
        Ok(head)
    }
}

/// The lengths of a set of names (below 64 bytes), to rule out a name that cannot be one of them
/// without comparing it: names compare in lower case, which keeps their length.
#[derive(Clone, Copy)]
struct NameLengths(u64);

impl NameLengths {
    fn of<'a>(names: impl Iterator<Item = &'a [u8]>) -> Self {
        NameLengths(names.fold(0, |mask, name| mask | Self::bit(name)))
    }

    /// The name's bit; none for a name of 64 bytes or more, which `may_match` always lets by.
    fn bit(name: &[u8]) -> u64 {
        1u64.checked_shl(name.len() as u32).unwrap_or(0)
    }

    fn may_match(self, name: &[u8]) -> bool {
        name.len() >= 64 || self.0 & Self::bit(name) != 0
    }
}

/// Flags every value sensitive, so that over HTTP/2 the h2 crate sends it without adding it to
/// the connection's HPACK table (its only way to skip the table; "never indexed" on the wire, a
/// form later HTTP/2 hops must keep, where nginx sends "without indexing"). The table would
/// otherwise keep a copy of a provider's ~25 response fields (up to 4 KiB) for the connection's
/// life, as often as not for one response, and fill with values that change with every response
/// (request ids, usage figures). HTTP/1.x ignores the flag. Pingora replaces `Date` with its own,
/// unflagged value: that one field is indexed, a new entry each second a response starts, bounded
/// by the table's 4 KiB.
pub fn never_indexed(headers: &mut HeaderMap) {
    for value in headers.values_mut() {
        value.set_sensitive(true);
    }
}

/// A Pingora response head holding `headers` as they are. Pingora's own builder renders each
/// name in Title-Case, re-parses it and keeps a case map (~1,100 instructions a header, and the
/// map lives as long as the response); Sluice's heads have none, so names go out in lower case on
/// HTTP/1.1, as HAProxy and Envoy send them.
pub fn response_head(status: http::StatusCode, headers: HeaderMap) -> ResponseHeader {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    ResponseHeader::from(parts)
}

/// A WebSocket opening handshake (RFC 6455 §4.1): an HTTP/1.1 `GET` with `Upgrade: websocket`
/// and `Connection: upgrade` (tokens in any case, among others).
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req.method == http::Method::GET
        && asks_for_websocket(values(&req.headers, &header::UPGRADE))
        && connection_tokens(values(&req.headers, &header::CONNECTION))
            .iter()
            .any(|t| t == "upgrade")
}

/// `websocket` is named in `upgrade`, the values of an `Upgrade` header (a request's, whatever
/// its version and method, or a `101` response's).
pub fn asks_for_websocket<'a>(upgrade: impl Iterator<Item = &'a [u8]>) -> bool {
    upgrade
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.trim()
                .split('/')
                .next()
                .is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::UpstreamTarget;
    use std::time::Duration;

    fn spec() -> UpstreamSpec {
        UpstreamSpec {
            name: "u".into(),
            target: UpstreamTarget::parse("https://api.example.com/base").unwrap(),
            headers: vec![(
                HeaderName::from_static("authorization"),
                http::HeaderValue::from_static("Bearer provider-key"),
            )],
            connect_timeout: Duration::from_secs(1),
            tls_handshake_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            dns_refresh: Duration::from_secs(30),
            tls_verify: true,
            ca_file: None,
            sni: "api.example.com".into(),
            http2: false,
            http2_ping: None,
        }
    }

    /// An upstream response head as Sluice's HTTP/1.1 client parses it.
    fn upstream_head(status: u16, headers: &[(&'static str, &'static str)]) -> ResponseHead {
        ResponseHead {
            status: http::StatusCode::from_u16(status).unwrap(),
            version: http::Version::HTTP_11,
            reason: None,
            fields: Fields::from_pairs(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
        }
    }

    fn client() -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v1/chat?x=1", None).unwrap();
        for (k, v) in [
            ("host", "sluice.local"),
            ("authorization", "Bearer client"),
            ("accept-encoding", "gzip, br"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("content-length", "10"),
            ("x-keep", "yes"),
        ] {
            req.append_header(k, v).unwrap();
        }
        req
    }

    /// The head `request` sends upstream, as a Pingora session gets it; checked to carry the same
    /// fields, in the same order, as the bytes an HTTP/1.1 upstream gets.
    fn sent(request: UpstreamRequest<'_>) -> RequestHeader {
        let head = request.build().unwrap();
        let client = &request.client.headers;
        let mut bytes = bytes::BytesMut::new();
        crate::http1::encode_request_head(
            &head.method,
            head.target.as_str(),
            head.fields(client),
            &mut bytes,
        );
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut h1 = httparse::Request::new(&mut parsed);
        assert!(h1.parse(&bytes).unwrap().is_complete());
        let pingora = head.to_request_header(client);
        assert_eq!(h1.method, Some(pingora.method.as_str()));
        assert_eq!(h1.path, Some(pingora.uri.to_string().as_str()));
        let h1_fields: Vec<_> = h1.headers.iter().map(|h| (h.name, h.value)).collect();
        let pingora_fields: Vec<_> = pingora
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(h1_fields, pingora_fields);
        pingora
    }

    #[test]
    fn upstream_request_rewrites_headers() {
        let (client, spec) = (client(), spec());
        let req = sent(UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_ip: Some([10, 0, 0, 1].into()),
            request_id: "rid-1",
            body: BodyFraming::Sized(10),
            stream: true,
            strip_client_key: false,
            websocket: false,
        });
        assert_eq!(req.uri.to_string(), "/base/v1/chat?x=1");
        assert_eq!(req.headers["host"], "api.example.com");
        assert_eq!(req.headers["authorization"], "Bearer provider-key");
        assert_eq!(req.headers["content-length"], "10");
        assert_eq!(req.headers["x-keep"], "yes");
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1");
        assert_eq!(req.headers["x-request-id"], "rid-1");
        for gone in ["accept-encoding", "connection", "x-private"] {
            assert!(!req.headers.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn fields_sluice_sets_replace_the_clients_and_are_sent_once() {
        let spec = spec();
        let mut client = RequestHeader::build("POST", b"/v1/chat", None).unwrap();
        for (k, v) in [
            ("x-request-id", "client-id"),
            ("x-forwarded-for", "192.0.2.7"),
            ("authorization", "Bearer client"),
            ("x-forwarded-for", "198.51.100.3"),
            ("x-keep", "yes"),
        ] {
            client.append_header(k, v).unwrap();
        }
        let req = sent(UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_ip: Some([10, 0, 0, 1].into()),
            request_id: "rid-4",
            body: BodyFraming::Empty,
            stream: true,
            strip_client_key: false,
            websocket: false,
        });
        let values = |name: &str| -> Vec<_> { req.headers.get_all(name).iter().collect() };
        assert_eq!(values("x-request-id"), ["rid-4"]);
        // Two lines of the client's list are one list.
        assert_eq!(
            values("x-forwarded-for"),
            ["192.0.2.7, 198.51.100.3, 10.0.0.1"]
        );
        assert_eq!(values("authorization"), ["Bearer provider-key"]);
        assert_eq!(values("x-keep"), ["yes"]);
        assert!(!req.headers.contains_key("content-length"));
    }

    #[test]
    fn own_keys_never_reach_the_upstream() {
        let spec = spec();
        let mut client =
            RequestHeader::build("POST", b"/v1/chat?key=sk-sluice-secret&x=1", None).unwrap();
        for (k, v) in [
            ("authorization", "Bearer sk-sluice-secret"),
            ("x-api-key", "sk-sluice-secret"),
            ("x-goog-api-key", "sk-sluice-secret"),
        ] {
            client.append_header(k, v).unwrap();
        }
        let req = sent(UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_ip: None,
            request_id: "rid-3",
            body: BodyFraming::Empty,
            stream: true,
            strip_client_key: true,
            websocket: false,
        });
        assert_eq!(req.uri.to_string(), "/base/v1/chat?x=1");
        assert_eq!(req.headers["authorization"], "Bearer provider-key");
        assert!(!req.headers.contains_key("x-api-key"));
        assert!(!req.headers.contains_key("x-goog-api-key"));
    }

    #[test]
    fn streamed_body_without_length_is_chunked() {
        let (client, spec) = (client(), spec());
        let req = sent(UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_ip: None,
            request_id: "rid-2",
            body: BodyFraming::Streamed {
                content_length: None,
            },
            stream: false,
            strip_client_key: false,
            websocket: false,
        });
        assert_eq!(req.headers["transfer-encoding"], "chunked");
        assert_eq!(req.headers["accept-encoding"], "gzip, br");
    }

    #[test]
    fn a_close_delimited_head_has_no_transfer_encoding() {
        for (shape, fields) in [
            (
                ResponseShape::Stream,
                &[("Content-Type", "text/event-stream")][..],
            ),
            (
                ResponseShape::Plain,
                &[
                    ("Content-Type", "application/json"),
                    ("Transfer-Encoding", "chunked"),
                ][..],
            ),
            // Both framings from a careless upstream: the chunked one was the body's.
            (
                ResponseShape::Plain,
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")][..],
            ),
        ] {
            let mut head = client_response(upstream_head(200, fields), shape, "rid", &[]).unwrap();
            assert!(head.is_chunked(), "{shape:?}");
            head.close_delimited();
            assert!(!head.is_chunked(), "{shape:?}");
            assert!(
                !head
                    .fields()
                    .any(|(name, _)| name.eq_ignore_ascii_case(b"transfer-encoding")),
                "{shape:?}"
            );
            let response = head.into_response_header(false).unwrap();
            assert!(!response.headers.contains_key(header::TRANSFER_ENCODING));
            assert!(!response.headers.contains_key(header::CONTENT_LENGTH));
        }
    }

    #[test]
    fn a_content_length_that_is_not_the_bodys_is_not_passed_on() {
        let has_length = |head: &ClientHead| {
            head.fields()
                .any(|(name, _)| name.eq_ignore_ascii_case(b"content-length"))
        };
        // Beside chunked framing (which wins, RFC 9112 §6.3): a next hop that went by the length
        // would split the response.
        let both = &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")][..];
        let head =
            client_response(upstream_head(200, both), ResponseShape::Plain, "r", &[]).unwrap();
        assert!(head.is_chunked());
        assert!(!has_length(&head));
        assert!(!head
            .into_response_header(true)
            .unwrap()
            .headers
            .contains_key(header::CONTENT_LENGTH));
        // On a status without a body.
        let sized = &[("Content-Length", "5")][..];
        let no_content = client_response(upstream_head(204, sized), ResponseShape::Plain, "r", &[]);
        assert!(!has_length(&no_content.unwrap()));
        // Kept where it is the length (and on a 304, where it is the selected representation's).
        for status in [200, 304] {
            let head =
                client_response(upstream_head(status, sized), ResponseShape::Plain, "r", &[]);
            assert!(has_length(&head.unwrap()), "{status}");
        }
    }

    #[test]
    fn a_body_in_a_transfer_coding_besides_chunked_is_refused() {
        for coding in ["gzip, chunked", "gzip", "chunked, chunked"] {
            for shape in [ResponseShape::Plain, ResponseShape::Stream] {
                let fields = &[("Transfer-Encoding", coding)][..];
                let head = client_response(upstream_head(200, fields), shape, "r", &[]);
                assert!(head.is_err(), "{coding} {shape:?}");
            }
        }
        let fields = &[("Transfer-Encoding", "Chunked")][..];
        assert!(
            client_response(upstream_head(200, fields), ResponseShape::Plain, "r", &[]).is_ok()
        );
    }

    /// The head `head` writes to the client through Pingora's session; checked to carry the same
    /// status and fields as the bytes Sluice writes on an HTTP/1.1 stream.
    fn written(head: ClientHead) -> ResponseHeader {
        let bytes = head.encode();
        let mut by_field = bytes::BytesMut::new();
        crate::http1::encode_response_head(
            head.status,
            head.reason.as_deref(),
            head.fields(),
            &mut by_field,
        );
        assert_eq!(bytes, by_field);
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut h1 = httparse::Response::new(&mut parsed);
        assert!(h1.parse(&bytes).unwrap().is_complete());
        let pingora = head.into_response_header(false).unwrap();
        assert_eq!(h1.code, Some(pingora.status.as_u16()));
        assert_eq!(h1.reason, pingora.get_reason_phrase());
        // A map holds a name's values together; the bytes keep the upstream's order. Each
        // name's values are in the same order in both.
        let mut h1_fields: Vec<_> = h1
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value))
            .collect();
        h1_fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut pingora_fields: Vec<_> = pingora
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes()))
            .collect();
        pingora_fields.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(h1_fields, pingora_fields);
        pingora
    }

    #[test]
    fn an_http2_head_is_flagged_never_indexed_and_gets_a_date() {
        let fields = [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("x-ratelimit-remaining-tokens", "29999978"),
        ];
        let up = upstream_head(200, &fields);
        let head = client_response(up, ResponseShape::Stream, "rid", &[])
            .unwrap()
            .into_response_header(true)
            .unwrap();
        assert_eq!(head.headers.get_all(header::DATE).iter().count(), 1);
        assert_eq!(head.headers["x-request-id"], "rid");
        // All but `Date`, which Pingora replaces with its own value.
        assert!(head
            .headers
            .iter()
            .filter(|(name, _)| *name != header::DATE)
            .all(|(_, value)| value.is_sensitive()));
        // An upstream's own `Date` is kept, not doubled.
        let mut dated = fields.to_vec();
        dated.push(("date", "Sat, 05 Dec 2026 06:40:00 GMT"));
        let up = upstream_head(200, &dated);
        let head = client_response(up, ResponseShape::Stream, "rid", &[])
            .unwrap()
            .into_response_header(true)
            .unwrap();
        let dates: Vec<_> = head.headers.get_all(header::DATE).iter().collect();
        assert_eq!(dates, ["Sat, 05 Dec 2026 06:40:00 GMT"]);
        // HTTP/1.x: as built, unflagged, no `Date` added (Pingora's session writes its own).
        let up = upstream_head(200, &fields);
        let head = client_response(up, ResponseShape::Stream, "rid", &[])
            .unwrap()
            .into_response_header(false)
            .unwrap();
        assert!(!head.headers.contains_key(header::DATE));
        assert!(!head.headers.values().any(HeaderValue::is_sensitive));
    }

    #[test]
    fn upstream_names_are_matched_in_any_case_and_passed_on_as_sent() {
        let up = upstream_head(
            200,
            &[
                ("Content-Type", "text/event-stream"),
                ("Content-Length", "5"),
                ("Connection", "X-Secret"),
                ("X-Secret", "1"),
                ("Cache-Control", "max-age=5"),
                ("X-Request-ID", "upstream"),
                ("X-Kept", "yes"),
            ],
        );
        let head = client_response(up, ResponseShape::Stream, "rid", &[]).unwrap();
        let sent: Vec<_> = head
            .fields()
            .map(|(n, v)| {
                (
                    std::str::from_utf8(n).unwrap(),
                    std::str::from_utf8(v).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            sent,
            [
                ("Content-Type", "text/event-stream"),
                ("X-Kept", "yes"),
                ("x-request-id", "rid"),
                ("cache-control", "no-cache"),
                ("x-accel-buffering", "no"),
                ("transfer-encoding", "chunked"),
            ]
        );
        let resp = written(head);
        assert_eq!(resp.headers.get_all("cache-control").iter().count(), 1);
    }

    #[test]
    fn event_stream_response_headers() {
        let up = upstream_head(
            200,
            &[
                ("content-type", "text/event-stream"),
                ("content-length", "100"),
                ("content-encoding", "gzip"),
                ("connection", "keep-alive"),
                ("x-upstream-id", "abc"),
            ],
        );
        let resp = written(client_response(up.clone(), ResponseShape::Stream, "rid", &[]).unwrap());
        assert_eq!(resp.headers["cache-control"], "no-cache");
        assert_eq!(resp.headers["x-accel-buffering"], "no");
        assert_eq!(resp.headers["x-upstream-id"], "abc");
        assert_eq!(resp.headers["x-request-id"], "rid");
        for gone in ["content-length", "content-encoding", "connection"] {
            assert!(!resp.headers.contains_key(gone), "{gone}");
        }
        let plain = written(client_response(up, ResponseShape::Plain, "rid", &[]).unwrap());
        assert_eq!(plain.headers["content-length"], "100");
    }

    /// RFC 9110 §8.6: a repeated `Content-Length` that Sluice took as one value goes to the
    /// client once, as that value (Node's parser refuses `2, 2` and two fields alike). A single
    /// plain one passes as sent.
    #[test]
    fn a_repeated_content_length_goes_on_once() {
        let repeats: [&[(&'static str, &'static str)]; 4] = [
            &[("Content-Length", "2, 2")],
            &[("Content-Length", "2"), ("content-length", "2")],
            &[("Content-Length", "2,2"), ("Content-Length", "2")],
            &[("Content-Length", " 2 ")],
        ];
        for fields in repeats {
            let mut fields = fields.to_vec();
            fields.push(("content-type", "application/json"));
            let up = upstream_head(200, &fields);
            let head = client_response(up, ResponseShape::Plain, "rid", &[]).unwrap();
            let lengths: Vec<_> = head
                .fields()
                .filter(|(name, _)| is_named(name, &header::CONTENT_LENGTH))
                .map(|(_, value)| value.to_vec())
                .collect();
            assert_eq!(lengths, [b"2".to_vec()], "{fields:?}");
            let resp = written(head);
            let lengths: Vec<_> = resp.headers.get_all("content-length").iter().collect();
            assert_eq!(lengths, ["2"], "{fields:?}");
            assert_eq!(resp.headers["content-type"], "application/json");
        }
        // As sent, where it is when a single number: in the upstream's order and case.
        let up = upstream_head(200, &[("Content-Length", "02"), ("x-a", "1")]);
        let head = client_response(up, ResponseShape::Plain, "rid", &[]).unwrap();
        let sent: Vec<_> = head
            .fields()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(sent[0], (b"Content-Length".to_vec(), b"02".to_vec()));
        // Never where no length goes on: a stream, a 204, beside `Transfer-Encoding`.
        for (status, shape, fields) in [
            (
                200,
                ResponseShape::Stream,
                &[("content-length", "2, 2")][..],
            ),
            (204, ResponseShape::Plain, &[("content-length", "2, 2")][..]),
            (
                200,
                ResponseShape::Plain,
                &[("transfer-encoding", "chunked"), ("content-length", "2, 2")][..],
            ),
        ] {
            let head = client_response(upstream_head(status, fields), shape, "rid", &[]).unwrap();
            let resp = written(head);
            assert!(
                !resp.headers.contains_key("content-length"),
                "{status} {fields:?}"
            );
        }
        // Values that disagree (an HTTP/2 upstream's head; the HTTP/1.1 parser refuses them).
        let up = upstream_head(200, &[("content-length", "2, 3")]);
        let error = client_response(up, ResponseShape::Plain, "rid", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Upstream InvalidHTTPHeader context: the upstream's Content-Length cause: \
             invalid response body framing from upstream: conflicting Content-Length values 2 and 3"
        );
    }

    /// A response without a body by its status (204, 304) gets no `Transfer-Encoding` (RFC 9112
    /// §6.1), also when it says it is an event stream: an EventSource server's 204 asks the
    /// browser not to reconnect.
    #[test]
    fn a_bodiless_event_stream_is_not_chunked() {
        for status in [204, 304] {
            let up = upstream_head(
                status,
                &[("content-type", "text/event-stream"), ("x-a", "1")],
            );
            let head = client_response(up, ResponseShape::Stream, "rid", &[]).unwrap();
            assert!(!head.is_chunked(), "{status}");
            let resp = written(head);
            assert!(!resp.headers.contains_key("transfer-encoding"), "{status}");
            assert_eq!(resp.headers["content-type"], "text/event-stream");
            assert_eq!(resp.headers["x-a"], "1");
        }
        let up = upstream_head(200, &[("content-type", "text/event-stream")]);
        let head = client_response(up, ResponseShape::Stream, "rid", &[]).unwrap();
        assert!(head.is_chunked());
    }

    #[test]
    fn a_provider_head_moves_over_whole_and_in_order() {
        let mut up = upstream_head(
            200,
            &[
                ("date", "Sat, 05 Dec 2026 06:40:00 GMT"),
                ("content-type", "text/event-stream; charset=utf-8"),
                ("transfer-encoding", "chunked"),
                ("openai-processing-ms", "187"),
                ("set-cookie", "__cf_bm=a; path=/"),
                ("x-ratelimit-remaining-tokens", "29999978"),
                ("set-cookie", "_cfuvid=b; path=/"),
                ("x-request-id", "req_upstream"),
            ],
        );
        up.reason = Some("Streaming".into());
        let resp = written(client_response(up, ResponseShape::Stream, "rid", &[]).unwrap());
        let names: Vec<_> = resp.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names[..5],
            [
                "date",
                "content-type",
                "openai-processing-ms",
                "set-cookie",
                "x-ratelimit-remaining-tokens"
            ]
        );
        let cookies: Vec<_> = resp.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["__cf_bm=a; path=/", "_cfuvid=b; path=/"]);
        assert_eq!(resp.headers["x-request-id"], "rid");
        assert_eq!(resp.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(resp.headers["transfer-encoding"], "chunked");
        assert_eq!(resp.get_reason_phrase(), Some("Streaming"));
    }

    #[test]
    fn a_dropped_name_takes_all_its_values_along() {
        let up = upstream_head(
            200,
            &[
                ("cache-control", "private"),
                ("x-a", "1"),
                ("connection", "keep-alive"),
                ("cache-control", "no-store"),
                ("x-a", "2"),
                ("connection", "x-b"),
                ("x-b", "secret"),
                ("x-c", "3"),
            ],
        );
        let resp = written(client_response(up, ResponseShape::Stream, "rid", &[]).unwrap());
        let cache: Vec<_> = resp.headers.get_all("cache-control").iter().collect();
        assert_eq!(cache, ["no-cache"]);
        let a: Vec<_> = resp.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(resp.headers["x-c"], "3");
        assert!(!resp.headers.contains_key("connection"));
        assert!(!resp.headers.contains_key("x-b"));

        let up = upstream_head(
            101,
            &[
                ("upgrade", "websocket"),
                ("x-d", "4"),
                ("upgrade", "h2c"),
                ("connection", "upgrade"),
            ],
        );
        let resp = written(client_response(up, ResponseShape::Upgrade, "rid", &[]).unwrap());
        let upgrade: Vec<_> = resp.headers.get_all("upgrade").iter().collect();
        assert_eq!(upgrade, ["websocket"]);
        assert_eq!(resp.headers["x-d"], "4");
    }

    #[test]
    fn hop_by_hop_headers_go_both_ways() {
        let spec = spec();
        let mut client = RequestHeader::build("POST", b"/v1/chat", None).unwrap();
        for (k, v) in [
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("proxy-authorization", "Basic cHJveHk="),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("transfer-encoding", "chunked"),
        ] {
            client.append_header(k, v).unwrap();
        }
        let req = sent(UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_ip: None,
            request_id: "rid",
            body: BodyFraming::Sized(3),
            stream: false,
            strip_client_key: false,
            websocket: false,
        });
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "trailer",
            "proxy-authorization",
            "proxy-connection",
            "upgrade",
            "expect",
            "transfer-encoding",
        ] {
            assert!(!req.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(req.headers["content-length"], "3");

        let up = upstream_head(
            200,
            &[
                ("connection", "x-up-secret"),
                ("x-up-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("upgrade", "h2c"),
                ("content-length", "2"),
            ],
        );
        for shape in [ResponseShape::Plain, ResponseShape::Stream] {
            let resp = written(client_response(up.clone(), shape, "rid", &[]).unwrap());
            for gone in [
                "connection",
                "x-up-secret",
                "keep-alive",
                "proxy-authenticate",
                "upgrade",
            ] {
                assert!(!resp.headers.contains_key(gone), "{shape:?} {gone}");
            }
        }
    }

    #[test]
    fn websocket_handshake_keeps_upgrade_both_ways() {
        let spec = spec();
        let mut client = RequestHeader::build("GET", b"/v1/realtime", None).unwrap();
        for (k, v) in [
            ("connection", "keep-alive, Upgrade, x-secret"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat"),
        ] {
            client.append_header(k, v).unwrap();
        }
        assert!(is_websocket_upgrade(&client));
        let req = sent(UpstreamRequest {
            client: &client,
            upstream: &spec,
            client_ip: None,
            request_id: "rid",
            body: BodyFraming::Empty,
            stream: true,
            strip_client_key: false,
            websocket: true,
        });
        assert_eq!(req.headers["upgrade"], "websocket");
        assert_eq!(req.headers["connection"], "upgrade");
        assert_eq!(req.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.headers["sec-websocket-protocol"], "chat");
        assert!(!req.headers.contains_key("x-secret"));

        let up = upstream_head(
            101,
            &[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
        );
        let resp = written(client_response(up, ResponseShape::Upgrade, "rid", &[]).unwrap());
        assert_eq!(resp.status, 101);
        assert_eq!(resp.headers["upgrade"], "websocket");
        assert_eq!(resp.headers["connection"], "upgrade");
        assert_eq!(
            resp.headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn websocket_handshake_detection() {
        let build = |method: &str, headers: &[(&str, &str)]| {
            let mut req = RequestHeader::build(method, b"/ws", None).unwrap();
            for (k, v) in headers {
                req.append_header(k.to_string(), *v).unwrap();
            }
            req
        };
        let ws = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, upgrade"),
        ];
        assert!(is_websocket_upgrade(&build("GET", &ws)));
        assert!(!is_websocket_upgrade(&build("POST", &ws)));
        assert!(!is_websocket_upgrade(&build(
            "GET",
            &[("upgrade", "websocket")]
        )));
        assert!(!is_websocket_upgrade(&build(
            "GET",
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        )));
        let mut old = build("GET", &ws);
        old.set_version(http::Version::HTTP_10);
        assert!(!is_websocket_upgrade(&old));
    }

    mod kept_props {
        use super::*;
        use proptest::prelude::*;

        /// Names the filter must not let by unseen: what any shape drops, the names Sluice sets,
        /// and the tokens of the head's `Connection` field.
        const CANDIDATES: [&str; 18] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
            "content-length",
            "content-encoding",
            "cache-control",
            "x-request-id",
            "x-accel-buffering",
            "x-sluice-test-hop-token",
            "x-ratelimit-limit-streams",
            "content-type",
            "date",
        ];

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                (prop::sample::select(CANDIDATES.to_vec()), any::<u64>()).prop_map(|(n, case)| {
                    n.chars()
                        .enumerate()
                        .map(|(i, c)| {
                            if case >> (i % 64) & 1 == 1 {
                                c.to_ascii_uppercase()
                            } else {
                                c
                            }
                        })
                        .collect()
                }),
                "[a-zA-Z0-9-]{1,80}",
            ]
        }

        proptest! {
            /// The length filter answers as `keeps` does, for every shape, close-delimited or not.
            #[test]
            fn kept_answers_as_keeps(
                shape in prop::sample::select(vec![
                    ResponseShape::Stream,
                    ResponseShape::Plain,
                    ResponseShape::Upgrade,
                ]),
                name in name(),
                close_delimited in any::<bool>(),
            ) {
                let up = upstream_head(200, &[
                    ("Connection", "X-Sluice-Test-Hop-Token, keep-alive"),
                    ("Content-Type", "text/event-stream"),
                    ("Upgrade", "websocket"),
                ]);
                let extra = [(
                    HeaderName::from_static("x-ratelimit-limit-streams"),
                    HeaderValue::from_static("4"),
                )];
                let mut head = client_response(up, shape, "rid", &extra).unwrap();
                if close_delimited {
                    head.close_delimited();
                }
                prop_assert_eq!(
                    head.kept()(name.as_bytes()),
                    head.keeps(name.as_bytes())
                );
            }
        }
    }
}
