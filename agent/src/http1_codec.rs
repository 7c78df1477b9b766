//! HTTP/1.1 as the agent speaks it (RFC 9112), without I/O: to an upstream, a request head
//! written out and a response head read in; to a downstream client, a request head read in
//! and a response head written out; and how each body is delimited. `http1_pool.rs` (the
//! client) and `http1_server.rs` move the bytes.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use crate::spare_fields;

/// Largest head the agent takes, a request's, a response's or a trailer section (Envoy's
/// default is 60 KiB).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields read in one response head (or one trailer section).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// Something a peer sent that is not HTTP/1.1: the connection cannot carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed HTTP/1.1: {0}")]
pub(crate) struct Malformed(pub &'static str);

impl Malformed {
    /// The status a request refused for this is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match *self {
            UNKNOWN_CODING => StatusCode::NOT_IMPLEMENTED,
            TOO_MANY_FIELDS => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// How a message's body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (a response only).
    UntilClose,
}

/// Writes the request line and headers of `head`, with `body`'s framing, into `out`. The
/// target is the path and query (origin form); `Content-Length` and `Transfer-Encoding` are
/// the framing's, not the request's; `upgrade`, a protocol to ask to switch to.
pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    head: &http::request::Parts,
    body: Framing,
    upgrade: Option<&HeaderValue>,
) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match body {
        Framing::Length(n) if n > 0 || !bodiless(&head.method) => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if let Some(protocol) = upgrade {
        field(out, b"connection", b"upgrade");
        field(out, b"upgrade", protocol.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Methods whose requests have no body by custom: an empty one is sent without
/// `Content-Length: 0`, as clients send them.
fn bodiless(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE | Method::CONNECT
    )
}

/// `n` in decimal, without the formatting machinery (it is done for every request).
pub(crate) fn decimal(out: &mut Vec<u8>, n: u64) {
    if n >= 10 {
        decimal(out, n / 10);
    }
    out.push(b'0' + (n % 10) as u8);
}

/// The start of one chunk of `len` bytes; the chunk's data follows, then `CHUNK_END`.
pub(crate) fn chunk_start(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk of a chunked body, with its trailer fields.
pub(crate) fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head as read.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    /// Connection-specific fields (`Connection`, `Transfer-Encoding`, `Keep-Alive` and any
    /// that `Connection` names) removed: they were this connection's.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Takes the next final response head off the front of `buf` (interim 1xx responses are
/// passed over), or `None` while it is incomplete. `head_request`: the request was `HEAD`,
/// so the response has no body whatever its fields say. `spans` as for `parse_request`.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    upgrading: bool,
    spans: &mut Vec<FieldSpan>,
) -> Result<Option<ResponseHead>, Malformed> {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let Some((len, parsed)) = read_head(buf, &mut fields)? else { return Ok(None) };
        let code = parsed.code.ok_or(Malformed("no status"))?;
        // RFC 9110 §15: 100 to 599; `http` takes up to 999.
        let status = StatusCode::from_u16(code)
            .ok()
            .filter(|s| s.as_u16() < 600)
            .ok_or(Malformed("an invalid status code"))?;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        if status == StatusCode::SWITCHING_PROTOCOLS && !upgrading {
            return Err(Malformed("a protocol switch the agent did not ask for"));
        }
        if interim(code) {
            buf.advance(len);
            continue;
        }
        // Where each field lies in the head: its value is then a slice of the head's bytes,
        // not a copy.
        note_spans(spans, buf, parsed.headers);
        let head = buf.split_to(len).freeze();
        let mut connection = Connection::default();
        let mut headers = noted_fields(&head, spans, &mut connection)?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // What follows is no longer HTTP: the protocol switched to, which `Upgrade` names.
            if !connection.upgrade || !headers.contains_key(UPGRADE) {
                return Err(Malformed("a 101 without Connection: upgrade and Upgrade"));
            }
            return Ok(Some(ResponseHead { status, headers, framing: Framing::Empty, keep_alive: false }));
        }
        connection.without_named(&mut headers);
        return connection.head(status, version, headers, head_request).map(Some);
    }
}

/// Whether `buf` holds the start of a final response: a complete head that is not an interim
/// one (those are taken off), or bytes that are no response head at all. An incomplete head
/// may yet be an interim one.
pub(crate) fn final_answer_begun(buf: &mut BytesMut) -> bool {
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        match read_head(buf, &mut fields) {
            Ok(Some((len, parsed))) if parsed.code.is_some_and(interim) => buf.advance(len),
            Ok(None) => return false,
            _ => return true,
        }
    }
}

/// httparse's reading of the response head at the start of `buf`: its length and what it
/// says, or `None` while it is incomplete.
fn read_head<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(usize, httparse::Response<'h, 'b>)>, Malformed> {
    let mut parsed = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, fields) {
        Ok(httparse::Status::Complete(len)) => Ok(Some((len, parsed))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(TOO_MANY_FIELDS),
        Err(_) => Err(Malformed("an invalid response head")),
    }
}

/// A request head as read.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Method, target, version and fields; the connection's own fields (`Connection`,
    /// `Transfer-Encoding`, `Keep-Alive` and any that `Connection` names) removed.
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expects_continue: bool,
    /// The protocol the client asks to switch to (`Connection: upgrade` and `Upgrade`).
    pub upgrade: Option<HeaderValue>,
}

/// Where a field's name and value lie in a head: (start, length) of each.
pub(crate) type FieldSpan = ((usize, usize), (usize, usize));

/// Keeps `used` as a connection's room for the next message's head and the body that leaves
/// with it (most heads and small bodies fit), unless a large message grew it.
pub(crate) fn keep_wire(room: &mut Vec<u8>, mut used: Vec<u8>) {
    const KEPT_WIRE: usize = 4 * 1024;
    if used.capacity() <= KEPT_WIRE {
        used.clear();
        *room = used;
    }
}

/// Takes the next request head off the front of `buf`, or `None` while it is incomplete;
/// `spans` is room the caller keeps between heads, so that reading one allocates nothing.
/// A request whose body length cannot be told (a transfer coding other than chunked last,
/// both framings — a way to smuggle one request inside another — or a transfer coding in
/// HTTP/1.0), or whose `Host` is missing in HTTP/1.1, repeated or invalid, is refused.
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    spans: &mut Vec<FieldSpan>,
) -> Result<Option<RequestHead>, Malformed> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY_FIELDS),
        Err(httparse::Error::Version) => {
            return match later_minor_version(buf) {
                Some(true) => parse_request(buf, spans),
                Some(false) => Err(Malformed("an HTTP version other than 1.x")),
                None => Ok(None),
            };
        }
        Err(_) => return Err(Malformed("an invalid request head")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| Malformed("an invalid method"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let path = parsed.path.unwrap_or_default().as_bytes();
    let target_at = path.as_ptr() as usize - buf.as_ptr() as usize;
    let target = target_at..target_at + path.len();
    note_spans(spans, buf, parsed.headers);
    let head = buf.split_to(len).freeze();
    let uri = http::Uri::from_maybe_shared(head.slice(target))
        .map_err(|_| Malformed("an invalid request target"))?;
    let mut connection = Connection::default();
    let mut headers = noted_fields(&head, spans, &mut connection)?;
    // Not h2c's (RFC 9113 §3.1 retired it): the requests a switch to HTTP/2 carried would pass
    // by the access policy, which sees this one only.
    let upgrade = connection
        .upgrade
        .then(|| headers.get(UPGRADE).cloned())
        .flatten()
        .filter(|protocol| !has_token(protocol.as_bytes(), b"h2c"));
    connection.without_named(&mut headers);
    // RFC 9112 §3.2: one Host in an HTTP/1.1 request, never two, and a valid one.
    match connection.hosts {
        0 if version == Version::HTTP_11 => return Err(Malformed("an HTTP/1.1 request without Host")),
        0 | 1 => {}
        _ => return Err(Malformed("more than one Host")),
    }
    if connection.bad_host {
        return Err(Malformed("an invalid Host"));
    }
    // RFC 9112 §6.1: an HTTP/1.0 message's transfer coding is no framing to trust.
    if connection.chunked.is_some() && version == Version::HTTP_10 {
        return Err(Malformed("a Transfer-Encoding in an HTTP/1.0 request"));
    }
    // RFC 9110 §10.1.1: an HTTP/1.0 client is sent no interim response.
    let expects_continue = version == Version::HTTP_11
        && headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let framing = match (connection.chunked, connection.length) {
        (Some(true), None) if connection.other_codings => return Err(UNKNOWN_CODING),
        (Some(true), None) => Framing::Chunked,
        (Some(_), _) => return Err(Malformed("a request body whose length cannot be told")),
        (None, Some(n)) if n > 0 => Framing::Length(n),
        (None, _) => Framing::Empty,
    };
    connection.one_length(&mut headers);
    // An HTTP/1.0 client's connection carries one request (its keep-alive is not offered).
    let keep_alive = !connection.close && version == Version::HTTP_11;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    (parts.method, parts.uri, parts.version, parts.headers) = (method, uri, version, headers);
    Ok(Some(RequestHead { parts, framing, keep_alive, expects_continue, upgrade }))
}

/// Whether the request line in `buf` names a later HTTP/1 than 1.1 (`HTTP/1.2`, say), which
/// is then rewritten `HTTP/1.1`: the message is read as the highest minor version the agent
/// speaks (RFC 9110 §2.5). `None` while the line is incomplete.
fn later_minor_version(buf: &mut BytesMut) -> Option<bool> {
    let end = buf.iter().position(|b| *b == b'\n')?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let Some(at) = line.len().checked_sub(b"HTTP/1.2".len()) else { return Some(false) };
    if !(line[at..].starts_with(b"HTTP/1.") && matches!(line[at + 7], b'2'..=b'9')) {
        return Some(false);
    }
    buf[at + 7] = b'1';
    Some(true)
}

/// Notes in `spans` where each of `parsed` fields lies in `buf` (which they borrow), so that
/// the head can be taken off `buf` and the fields made slices of it (not copies).
fn note_spans(spans: &mut Vec<FieldSpan>, buf: &[u8], parsed: &[httparse::Header<'_>]) {
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    spans.clear();
    spans.extend(parsed.iter().map(|f| (span(f.name.as_bytes()), span(f.value))));
}

/// The fields `spans` notes in `head`, their values slices of it; `connection` takes the
/// connection's own fields, which are left out.
fn noted_fields(
    head: &Bytes,
    spans: &[FieldSpan],
    connection: &mut Connection,
) -> Result<HeaderMap, Malformed> {
    let mut headers = spare_fields::with_capacity(spans.len());
    for &((name_at, name_len), (value_at, value_len)) in spans {
        let (name, value) =
            field_of(&head[name_at..name_at + name_len], head.slice(value_at..value_at + value_len))?;
        if connection.takes(&name, &value)? {
            headers.append(name, value);
        }
    }
    Ok(headers)
}

/// Writes the status line and fields of a response into `out`, with `body`'s framing
/// (`Content-Length` and `Transfer-Encoding` are the framing's, not the response's, except
/// for the answer to a `HEAD`, which tells the length of a body it does not carry), and
/// `Connection: close` when the connection ends after it.
pub(crate) fn encode_response(
    out: &mut Vec<u8>,
    head: &http::response::Parts,
    body: Framing,
    head_request: bool,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in &head.headers {
        if !head_request && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING) {
            continue;
        }
        dated |= name == DATE;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        field(out, b"date", httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    }
    match body {
        Framing::Length(n) if !head_request => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        field(out, b"connection", b"upgrade");
    } else if close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// An interim response (1xx), passed over on the way to the final one; `101` (a protocol
/// switch) is not one of them.
fn interim(code: u16) -> bool {
    matches!(code, 100 | 102..=199)
}

/// The caller's identity as Envoy passes it on to the application.
pub(crate) const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Field names the `http` crate does not know that most gRPC calls carry, or that meshes add:
/// taken from here, such a name is shared, not copied into an allocation of its own as the
/// `http` crate keeps the names it does not know.
static COMMON_NAMES: [HeaderName; 8] = [
    HeaderName::from_static("grpc-status"),
    HeaderName::from_static("grpc-message"),
    HeaderName::from_static("grpc-timeout"),
    HeaderName::from_static("grpc-encoding"),
    HeaderName::from_static("grpc-accept-encoding"),
    XFCC,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
];

/// A field name read from the wire, one of `COMMON_NAMES` when it is one. `lowercase`: the name
/// must be lowercase already, as HTTP/2 requires (HTTP/1.1's are taken in any case).
pub(crate) fn field_name(
    name: &[u8],
    lowercase: bool,
) -> Result<HeaderName, http::header::InvalidHeaderName> {
    let common = |n: &&HeaderName| {
        let known = n.as_str().as_bytes();
        if lowercase { known == name } else { known.eq_ignore_ascii_case(name) }
    };
    match COMMON_NAMES.iter().find(common) {
        Some(known) => Ok(known.clone()),
        None if lowercase => HeaderName::from_lowercase(name),
        None => HeaderName::from_bytes(name),
    }
}

/// A header field, its value a slice of the bytes it was read from (not a copy).
fn field_of(name: &[u8], value: Bytes) -> Result<(HeaderName, HeaderValue), Malformed> {
    let name = field_name(name, false).map_err(|_| Malformed("an invalid field name"))?;
    let value = HeaderValue::from_maybe_shared(value).map_err(|_| Malformed("an invalid field value"))?;
    Ok((name, value))
}

/// A head of more fields than `MAX_HEADERS`: answered 431, as a head past its bound is.
pub(crate) const TOO_MANY_FIELDS: Malformed = Malformed("more than 100 header fields");

/// A request body in a transfer coding other than chunked, which the agent does not decode:
/// answered 501 (RFC 9112 §6.1), as its body cannot be passed on as it was meant.
pub(crate) const UNKNOWN_CODING: Malformed = Malformed("a transfer coding other than chunked");

/// What a message's fields say of its framing and its connection.
#[derive(Default)]
struct Connection {
    close: bool,
    /// Whether the last transfer coding is chunked, when there are any.
    chunked: Option<bool>,
    /// A transfer coding other than one `chunked` (gzip, say, or chunked twice).
    other_codings: bool,
    length: Option<u64>,
    /// `Content-Length` came as a list or more than once (of the same number): passed on as
    /// one value, which every recipient reads alike.
    lengths_repeated: bool,
    /// The fields `Connection` names: this connection's too, not passed on.
    named: Vec<HeaderName>,
    /// How many `Host` fields (a request must have one), and whether one is invalid.
    hosts: usize,
    bad_host: bool,
    /// `Connection` names `upgrade`: a protocol switch is asked for, or agreed to.
    upgrade: bool,
}

impl Connection {
    /// Notes a field: `false` for the connection's own fields, which are not passed on.
    fn takes(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<bool, Malformed> {
        if name == CONNECTION {
            let v = value.as_bytes();
            self.close |= has_token(v, b"close");
            self.upgrade |= has_token(v, b"upgrade");
            self.named.extend(connection_options(value));
        } else if name == TRANSFER_ENCODING {
            let v = value.as_bytes();
            self.other_codings |= self.chunked.is_some() || !v.trim_ascii().eq_ignore_ascii_case(b"chunked");
            self.chunked = Some(last_token_is(v, b"chunked"));
        } else if name == CONTENT_LENGTH {
            self.lengths_repeated |= self.length.is_some() || value.as_bytes().contains(&b',');
            self.length = content_length(value.as_bytes(), self.length)?;
            return Ok(true);
        } else if name == HOST {
            self.hosts += 1;
            self.bad_host |= !value.as_bytes().iter().all(|b| HOST_BYTES[usize::from(*b)]);
            return Ok(true);
        } else if name.as_str() != "keep-alive" {
            return Ok(true);
        }
        Ok(false)
    }

    /// `headers` without the fields `Connection` named (RFC 9110 §7.6.1).
    fn without_named(&self, headers: &mut HeaderMap) {
        for name in &self.named {
            headers.remove(name);
        }
    }

    /// `Content-Length` as one field of one value, when it came repeated.
    fn one_length(&self, headers: &mut HeaderMap) {
        if let Some(n) = self.length.filter(|_| self.lengths_repeated) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }

    /// The framing (RFC 9112 §6.3) and reuse of the response; a transfer coding other than
    /// chunked is refused: the agent does not decode it, and passing the body on without it
    /// would change the content.
    fn head(
        self,
        status: StatusCode,
        version: Version,
        mut headers: HeaderMap,
        head_request: bool,
    ) -> Result<ResponseHead, Malformed> {
        if self.other_codings && version == Version::HTTP_11 {
            return Err(Malformed("a transfer coding other than chunked"));
        }
        let framing =
            if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                Framing::Empty
            } else {
                match (self.chunked, self.length) {
                    // RFC 9112 §6.1: an HTTP/1.0 message's transfer coding is no framing to trust.
                    (Some(_), _) if version == Version::HTTP_10 => Framing::UntilClose,
                    (Some(true), _) => Framing::Chunked,
                    (Some(false), _) => Framing::UntilClose,
                    (None, Some(n)) => Framing::Length(n),
                    (None, None) => Framing::UntilClose,
                }
            };
        if self.chunked.is_some() {
            headers.remove(CONTENT_LENGTH);
        } else {
            self.one_length(&mut headers);
        }
        // A response with both framings may have been smuggled past something: not reused.
        let both = self.chunked.is_some() && self.length.is_some();
        let keep_alive =
            version == Version::HTTP_11 && !self.close && !both && framing != Framing::UntilClose;
        Ok(ResponseHead { status, headers, framing, keep_alive })
    }
}

/// A trailer section's fields, their values slices of `source`, but for those trailers may
/// not carry.
fn header_map(source: &Bytes, fields: &[httparse::Header<'_>]) -> Result<HeaderMap, Malformed> {
    let mut headers = spare_fields::with_capacity(fields.len());
    for f in fields {
        let (name, value) = field_of(f.name.as_bytes(), source.slice_ref(f.value))?;
        if kept_in_trailers(&name) {
            headers.append(name, value);
        }
    }
    Ok(headers)
}

/// Whether a trailer field is passed on: not one that frames or routes the message or
/// belongs to its connection (RFC 9110 §6.5.1), which a recipient merging trailers into the
/// head, or reading them first, would act on.
pub(crate) fn kept_in_trailers(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "host"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "expect"
            | "content-encoding"
            | "content-type"
            | "content-range"
    )
}

/// The body length a `Content-Length` value gives, with the one seen before (`seen`): every
/// value, and every item of a list, the same decimal number.
pub(crate) fn content_length(value: &[u8], mut seen: Option<u64>) -> Result<Option<u64>, Malformed> {
    for item in value.split(|b| *b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(Malformed("an invalid Content-Length"));
        }
        let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if seen.is_some_and(|l| l != n) {
            return Err(Malformed("differing Content-Length values"));
        }
        seen = Some(n);
    }
    Ok(seen)
}

/// The bytes a `Host` value may hold: `uri-host [":" port]` (RFC 9110 §7.2), a registered
/// name, an IPv4 address or an IP literal in brackets. A table: looked up for every byte of
/// every request's `Host`.
const HOST_BYTES: [bool; 256] = alphanumeric_and(b"-._~%!$&'()*+,;=:[]");

/// A table of the bytes that are ASCII letters or digits or among `others`.
const fn alphanumeric_and(others: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
}

/// The field names a `Connection` value lists, but for `close` (which names no field) and
/// `keep-alive` (whose field is left out anyway): most values are one of the two, and a name
/// not known to `http` is an allocation.
pub(crate) fn connection_options(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
}

/// Whether the comma-separated `list` names `token`, in any case.
pub(crate) fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn last_token_is(list: &[u8], token: &[u8]) -> bool {
    list.rsplit(|b| *b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// What the next step of a chunked body gave.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is over; nothing of it is left in the buffer.
    End,
    /// More bytes are needed.
    More,
}

/// What is left to read of a body being read off a connection, by its framing.
#[derive(Debug)]
pub(crate) enum Remaining {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the connection closes (a response only).
    UntilClose,
}

/// What a body being read does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Pass data on; `true` when it is the last of the body.
    Data(Bytes, bool),
    Trailers(HeaderMap),
    End,
    Fail(std::io::Error),
}

impl Remaining {
    /// The next step that what `buf` holds allows (taken off it), or `None` while more bytes
    /// are needed.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Option<Step> {
        match self {
            Remaining::Length(left) if !buf.is_empty() => {
                let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                Some(Step::Data(buf.split_to(take).freeze(), *left == 0))
            }
            Remaining::Chunked(decoder) => match decoder.decode(buf) {
                Ok(Decoded::Data(data)) => Some(Step::Data(data, false)),
                Ok(Decoded::Trailers(t)) => Some(Step::Trailers(t)),
                Ok(Decoded::End) => Some(Step::End),
                Ok(Decoded::More) => None,
                Err(e) => Some(Step::Fail(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
            },
            Remaining::UntilClose if !buf.is_empty() => Some(Step::Data(buf.split().freeze(), false)),
            _ => None,
        }
    }

    /// The step when `peer` closed the connection and nothing is pending: the end of a body
    /// that ends so, else a failure.
    pub(crate) fn closed(&self, peer: &str) -> Step {
        match self {
            Remaining::UntilClose => Step::End,
            _ => Step::Fail(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{peer} closed the connection mid-body"),
            )),
        }
    }

    /// What is known of the length of what is left (`open`: the body is still being read).
    pub(crate) fn size_hint(&self, open: bool) -> hyper::body::SizeHint {
        match self {
            Remaining::Length(n) => hyper::body::SizeHint::with_exact(if open { *n } else { 0 }),
            _ if !open => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

/// Reads a chunked body (RFC 9112 §7.1) off the front of a buffer, step by step.
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// The next piece of the body from `buf`, consuming what it used.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = find(buf, b"\r\n", MAX_CHUNK_LINE)? else { return Ok(Decoded::More) };
                    let size = chunk_size(&buf[..line])?;
                    buf.advance(line + 2);
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("a chunk not ended by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End);
                    }
                    let Some(end) = find(buf, b"\r\n\r\n", MAX_HEAD_BYTES)? else {
                        return Ok(Decoded::More);
                    };
                    let section = buf.split_to(end + 4).freeze();
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    // The section must end where its CRLF CRLF is: one ended sooner by a bare LF
                    // would leave what follows to be read as another request by some and not others.
                    let fields = match httparse::parse_headers(&section, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) if len == section.len() => fields,
                        _ => return Err(Malformed("invalid trailer fields")),
                    };
                    self.state = ChunkState::Done;
                    return Ok(Decoded::Trailers(header_map(&section, fields)?));
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Where `needle` (a line's or a section's end) first is in `buf`, if it is there; past `max`
/// bytes is malformed.
fn find(buf: &[u8], needle: &[u8], max: usize) -> Result<Option<usize>, Malformed> {
    match buf.windows(needle.len()).position(|w| w == needle) {
        Some(at) if at <= max => Ok(Some(at)),
        Some(_) => Err(Malformed("a line or section past its bound")),
        None if buf.len() > max + needle.len() => Err(Malformed("a line or section past its bound")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line: hex digits, then extensions (RFC 9112 §7.1.1), checked and
/// passed over. Nothing else is taken: a recipient that ended the line elsewhere (at a bare
/// LF in an extension, say) would read other chunks than the agent — a way to smuggle.
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 || !chunk_extensions(&line[digits..]) {
        return Err(Malformed("an invalid chunk size"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, d| n << 4 | u64::from((*d as char).to_digit(16).unwrap_or(0))))
}

/// Whether `ext` is `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_extensions(mut ext: &[u8]) -> bool {
    let spaces = |s: &[u8]| s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    let token = |s: &[u8]| s.iter().take_while(|b| TOKEN_BYTES[usize::from(**b)]).count();
    while !ext.is_empty() {
        let Some(rest) = ext[spaces(ext)..].strip_prefix(b";") else { return false };
        let rest = &rest[spaces(rest)..];
        let name = token(rest);
        if name == 0 {
            return false;
        }
        ext = &rest[name..];
        if let Some(value) = ext[spaces(ext)..].strip_prefix(b"=") {
            let value = &value[spaces(value)..];
            let len = if value.first() == Some(&b'"') { quoted_string(value) } else { token(value) };
            if len == 0 {
                return false;
            }
            ext = &value[len..];
        }
    }
    true
}

/// The length of the quoted-string (RFC 9110 §5.6.4) at the start of `s`, or 0 if none is.
fn quoted_string(s: &[u8]) -> usize {
    let text = |b: u8| matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..);
    let mut at = 1;
    while let Some(&b) = s.get(at) {
        match b {
            b'"' => return at + 1,
            b'\\' if s.get(at + 1).is_some_and(|q| text(*q)) => at += 2,
            b'\\' => return 0,
            _ if text(b) => at += 1,
            _ => return 0,
        }
    }
    0
}

/// The bytes of a token (RFC 9110 §5.6.2).
const TOKEN_BYTES: [bool; 256] = alphanumeric_and(b"!#$%&'*+-.^_`|~");

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn head(method: Method, uri: &str, fields: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn encoded(h: &http::request::Parts, framing: Framing) -> String {
        let mut out = Vec::new();
        encode_request(&mut out, h, framing, None);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn field_names_read_are_the_common_ones_when_they_are_and_checked_as_any_other() {
        for n in ["grpc-status", "GRPC-Status", "x-request-id", "content-type", "x-custom"] {
            let read = field_name(n.as_bytes(), false).unwrap();
            assert_eq!(read, HeaderName::from_bytes(n.as_bytes()).unwrap(), "{n}");
        }
        assert_eq!(field_name(b"grpc-status", true).unwrap(), "grpc-status");
        // HTTP/2 takes lowercase names only, common or not.
        assert!(field_name(b"Grpc-Status", true).is_err());
        assert!(field_name(b"X-Custom", true).is_err());
        assert!(field_name(b"grpc status", false).is_err());
        assert!(field_name(b"", false).is_err());
    }

    #[test]
    fn a_request_head_is_written_in_origin_form_with_its_own_framing() {
        let get = head(Method::GET, "/r?x=1", &[("host", "reviews.shop:9080"), ("content-length", "0")]);
        assert_eq!(
            encoded(&get, Framing::Length(0)),
            "GET /r?x=1 HTTP/1.1\r\nhost: reviews.shop:9080\r\n\r\n"
        );
        let post = head(Method::POST, "/", &[("host", "a"), ("transfer-encoding", "chunked")]);
        assert_eq!(
            encoded(&post, Framing::Length(0)),
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            encoded(&post, Framing::Length(1234)),
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1234\r\n\r\n"
        );
        assert_eq!(
            encoded(&post, Framing::Chunked),
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn chunks_are_framed_in_hex() {
        let mut out = Vec::new();
        for len in [1, 15, 16, 255, 4096, 65535] {
            out.clear();
            chunk_start(&mut out, len);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), format!("{len:x}\r\n"));
        }
        out.clear();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        last_chunk(&mut out, Some(&t));
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");
    }

    fn parse(bytes: &str, head_request: bool) -> Result<Option<ResponseHead>, Malformed> {
        parse_response(&mut BytesMut::from(bytes), head_request, false, &mut Vec::new())
    }

    fn framing(bytes: &str) -> Framing {
        parse(bytes, false).unwrap().unwrap().framing
    }

    #[test]
    fn a_response_is_framed_as_rfc_9112_says() {
        assert_eq!(framing("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n"), Framing::Length(12));
        let listed = parse("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\n", false);
        let listed = listed.unwrap().unwrap();
        assert_eq!(listed.framing, Framing::Length(3));
        let lengths: Vec<_> = listed.headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["3"], "passed on as one value");
        // Codings the agent does not decode: passing the body on without them would change it.
        for coded in ["gzip, chunked", "gzip", "chunked, chunked"] {
            let response = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {coded}\r\n\r\n");
            assert_eq!(
                parse(&response, false).unwrap_err(),
                Malformed("a transfer coding other than chunked")
            );
        }
        assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"), Framing::Chunked);
        assert_eq!(
            parse("HTTP/1.1 999 Internal\r\ncontent-length: 0\r\n\r\n", false).unwrap_err(),
            Malformed("an invalid status code"),
            "RFC 9110 §15: 100 to 599"
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        assert_eq!(framing("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"), Framing::Empty);
        assert_eq!(framing("HTTP/1.1 304 Not Modified\r\n\r\n"), Framing::Empty);
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"),
            Framing::UntilClose,
            "an HTTP/1.0 transfer coding is no framing to trust"
        );
        let head = parse("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(head.headers[CONTENT_LENGTH], "7", "a HEAD response keeps the length it announces");
    }

    #[test]
    fn a_connection_is_reused_only_when_the_response_allows_it() {
        let keep = |bytes: &str| parse(bytes, false).unwrap().unwrap().keep_alive;
        assert!(keep("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep("HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep("HTTP/1.1 200 OK\r\n\r\n"), "read until close");
        assert!(!keep("HTTP/1.1 200 OK\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn interim_responses_are_passed_over_and_the_connection_fields_removed() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
             transfer-encoding: chunked\r\ncontent-length: 9\r\nx-a: 1\r\nx-hop: 1\r\nx-a: 2\r\n\r\nrest",
        );
        let head = parse_response(&mut buf, false, false, &mut Vec::new()).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.framing, Framing::Chunked);
        let names: Vec<_> = head.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-a"]);
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"rest", "the body's bytes stay in the buffer");
    }

    #[test]
    fn an_incomplete_head_waits_and_a_bad_one_is_refused_with_its_reason() {
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-len", false).unwrap().is_none());
        assert!(parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2", false).unwrap().is_none());
        let bad = |bytes: &str| parse(bytes, false).unwrap_err().0;
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            "differing Content-Length values"
        );
        assert_eq!(bad("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"), "an invalid Content-Length");
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n"),
            "an invalid Content-Length"
        );
        assert_eq!(
            bad("HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            "a protocol switch the agent did not ask for"
        );
        assert_eq!(bad("SSH-2.0-OpenSSH\r\n\r\n"), "an invalid response head");
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(bad(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")), "more than 100 header fields");
    }

    /// Decodes `wire` fed in the pieces `cuts` makes of it: the body and the trailers.
    fn decode_in_pieces(wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Option<HeaderMap>), Malformed> {
        let mut d = ChunkedDecoder::default();
        let (mut buf, mut body, mut trailers) = (BytesMut::new(), Vec::new(), None);
        let mut pieces = cuts.iter().copied().chain([wire.len()]);
        let mut at = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((body, trailers)),
                Decoded::More => {
                    let Some(to) = pieces.next() else { return Err(Malformed("test: the body never ended")) };
                    buf.extend_from_slice(&wire[at..to.max(at)]);
                    at = to.max(at);
                }
            }
        }
    }

    #[test]
    fn a_chunked_body_reads_back_whatever_the_pieces_it_arrives_in() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let body: Vec<u8> = (0..rng.random_range(0..3000)).map(|_| rng.random()).collect();
            let mut wire = Vec::new();
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len().min(700));
                chunk_start(&mut wire, n);
                if rng.random_bool(0.2) {
                    wire.splice(wire.len() - 2..wire.len() - 2, b";ext=1".iter().copied());
                }
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(CHUNK_END);
                rest = &rest[n..];
            }
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            let with_trailers = rng.random_bool(0.5);
            last_chunk(&mut wire, with_trailers.then_some(&t));
            let mut cuts: Vec<usize> =
                (0..rng.random_range(0..8)).map(|_| rng.random_range(0..=wire.len())).collect();
            cuts.sort_unstable();
            let (read, trailers) = decode_in_pieces(&wire, &cuts).unwrap();
            assert_eq!(read, body);
            assert_eq!(trailers.is_some(), with_trailers);
        }
    }

    #[test]
    fn a_malformed_chunked_body_is_refused_and_never_panics() {
        let bad = |wire: &str| decode_in_pieces(wire.as_bytes(), &[]).unwrap_err().0;
        assert_eq!(bad("zz\r\nab\r\n0\r\n\r\n"), "an invalid chunk size");
        assert_eq!(bad("2\r\nabc\r\n0\r\n\r\n"), "a chunk not ended by CRLF");
        assert_eq!(bad("11111111111111111\r\n"), "an invalid chunk size");
        assert_eq!(bad(&format!("1;{}\r\n", "x".repeat(5000))), "a line or section past its bound");
        // Extensions are read by their grammar: a bare LF or CR, a NUL, a space inside one or
        // after the size would let another parser end the line elsewhere.
        for size_line in ["2;x\nXX", "2;x=a\rb", "2;x=\0", "2;a b c", "2 ", "2;", "2;x=", "2;x=\"a", "2 x"] {
            assert_eq!(
                bad(&format!("{size_line}\r\nab\r\n0\r\n\r\n")),
                "an invalid chunk size",
                "{size_line:?}"
            );
        }
        for size_line in ["2;x", "2 ; x = y", "2;x=\"a \\\" b\";y", "2\t;name=tok-en"] {
            let wire = format!("{size_line}\r\nab\r\n0\r\n\r\n");
            assert_eq!(decode_in_pieces(wire.as_bytes(), &[]).unwrap().0, b"ab", "{size_line:?}");
        }
        // A trailer section ended early by a bare LF: what follows is not taken as more of it.
        assert_eq!(bad("0\r\nx-t: a\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"), "invalid trailer fields");
        // Trailers that would frame or route the message are not passed on.
        let (_, trailers) =
            decode_in_pieces(b"0\r\ncontent-length: 50\r\nhost: evil\r\nx-ok: 1\r\n\r\n", &[]).unwrap();
        let names: Vec<_> = trailers.unwrap().keys().map(|n| n.to_string()).collect();
        assert_eq!(names, ["x-ok"]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let alphabet = b"0123456789abcdefXZ;\r\n \t";
        for _ in 0..2000 {
            let wire: Vec<u8> =
                (0..rng.random_range(0..64)).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let _ = decode_in_pieces(&wire, &[wire.len() / 2]);
        }
    }

    #[test]
    fn a_request_without_one_valid_host_or_with_an_http_1_0_transfer_coding_is_refused() {
        let refused = |wire: &str| parse_request(&mut BytesMut::from(wire), &mut Vec::new()).unwrap_err().0;
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), "an HTTP/1.1 request without Host");
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), "more than one Host");
        assert_eq!(refused("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"), "more than one Host");
        for host in ["a b", "user@a", "a/b", "a\"b"] {
            assert_eq!(
                refused(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")),
                "an invalid Host",
                "{host}"
            );
        }
        assert_eq!(
            refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "a Transfer-Encoding in an HTTP/1.0 request"
        );
        // A later minor version is read as HTTP/1.1; another major version is refused.
        let wire = "GET /v HTTP/1.2\r\nHost: a\r\n\r\n";
        let head = parse_request(&mut BytesMut::from(wire), &mut Vec::new()).unwrap().unwrap();
        assert_eq!((head.parts.uri.path(), head.parts.version), ("/v", Version::HTTP_11));
        assert!(parse_request(&mut BytesMut::from("GET /v HTTP/1.2"), &mut Vec::new()).unwrap().is_none());
        for other in ["GET / HTTP/2.0\r\nHost: a\r\n\r\n", "GET / HTTP/1.x\r\nHost: a\r\n\r\n"] {
            assert!(parse_request(&mut BytesMut::from(other), &mut Vec::new()).is_err(), "{other:?}");
        }
        // h2c's upgrade is not passed on: the request goes on in HTTP/1.1.
        let wire = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
        let head = parse_request(&mut BytesMut::from(wire), &mut Vec::new()).unwrap().unwrap();
        assert_eq!(head.upgrade, None);
        assert!(
            head.parts.headers.get(UPGRADE).is_none() && head.parts.headers.get("http2-settings").is_none()
        );
        let wire = "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let head = parse_request(&mut BytesMut::from(wire), &mut Vec::new()).unwrap().unwrap();
        assert_eq!(head.upgrade, Some(HeaderValue::from_static("websocket")));
        // Content-Length as a list, or repeated, of one number: passed on as one value.
        let wire = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n";
        let head = parse_request(&mut BytesMut::from(wire), &mut Vec::new()).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Length(5));
        let lengths: Vec<_> = head.parts.headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["5"]);
        for host in ["", "a.b-c_d~", "10.0.0.1:80", "[::1]:8080", "xn--bcher-kva.example"] {
            let wire = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(parse_request(&mut BytesMut::from(&wire[..]), &mut Vec::new()).is_ok(), "{host:?}");
        }
    }

    #[test]
    fn a_request_head_is_read_whatever_the_pieces_and_noise_never_panics() {
        let wire = b"POST /r?x=1 HTTP/1.1\r\nHost: a\r\nx-hop: 1\r\nConnection: keep-alive, x-hop\r\n\
                     Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nx-b: 1\r\n\r\nrest";
        let head_len = wire.len() - 4;
        for cut in 0..head_len {
            assert!(
                parse_request(&mut BytesMut::from(&wire[..cut]), &mut Vec::new()).unwrap().is_none(),
                "{cut}"
            );
        }
        let mut buf = BytesMut::from(&wire[..]);
        let head = parse_request(&mut buf, &mut Vec::new()).unwrap().unwrap();
        assert_eq!(&buf[..], b"rest", "the head is taken off, what follows stays");
        assert_eq!((head.parts.method, head.parts.uri.to_string()), (Method::POST, "/r?x=1".to_owned()));
        assert_eq!((head.framing, head.keep_alive, head.expects_continue), (Framing::Chunked, true, true));
        let mut names: Vec<_> = head.parts.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["expect", "host", "x-b"],
            "the connection's own fields (and those it names) are its own"
        );
        let old =
            parse_request(&mut BytesMut::from("GET / HTTP/1.0\r\n\r\n"), &mut Vec::new()).unwrap().unwrap();
        assert_eq!((old.framing, old.keep_alive), (Framing::Empty, false), "HTTP/1.0 needs no Host");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..5000 {
            let mut noisy = wire.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..noisy.len());
                noisy[at] = rng.random();
            }
            let _ = parse_request(&mut BytesMut::from(&noisy[..]), &mut Vec::new());
        }
    }
}
