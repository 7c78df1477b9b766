//! HTTP/2's wire format (RFC 9113) as the agent's server (`h2_server.rs`) and client
//! (`h2_pool.rs`) both speak it: frame types, flags, error codes and settings, frames written
//! into a connection's outgoing bytes and read from its incoming ones, and the rules a header
//! block's fields must keep.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};

use crate::body::BoxError;
use crate::hpack;
use crate::http1_codec::{MAX_HEAD_BYTES, content_length, field_name, has_token, kept_in_trailers};
use crate::spare_fields;

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame either side sends: the protocol's smallest maximum, which the agent
/// never raises.
pub(crate) const MAX_FRAME: usize = 16_384;
/// What a peer may send on a stream, and on the connection, before the agent has passed it
/// on (the protocol's default of 64 KiB would stall a fast peer).
pub(crate) const STREAM_WINDOW: i64 = 1 << 20;
pub(crate) const CONNECTION_WINDOW: i64 = 2 << 20;
pub(crate) const DEFAULT_WINDOW: i64 = 65_535;
pub(crate) const MAX_WINDOW: i64 = (1 << 31) - 1;
/// The largest header block taken, compressed: Huffman coding may make a block longer than the
/// fields it holds, which are bounded by `MAX_HEAD_BYTES`.
pub(crate) const MAX_BLOCK: usize = 4 * MAX_HEAD_BYTES;
/// What a CONTINUATION frame counts against `MAX_BLOCK` at least: a header block of endless
/// tiny or empty ones (the CONTINUATION flood) is cut off after 1,024 frames, not left to
/// run until the head's timeout.
const CONTINUATION_CHARGE: usize = MAX_BLOCK / 1024;
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Room left in a connection's read buffer below which it is given a whole `READ_CHUNK` again.
const MIN_READ_ROOM: usize = 4 * 1024;

/// Makes room in `read` for the next read. DATA leaves the buffer without a copy, so while an
/// earlier frame's data is still held the buffer cannot be reused and room means a new one:
/// asked for only when little is left, that is once in many reads, not at every read of a
/// burst (BENCHMARKS.md, "Handler boxes kept").
pub(crate) fn room_to_read(read: &mut BytesMut) {
    if read.capacity() - read.len() < MIN_READ_ROOM {
        read.reserve(READ_CHUNK);
    }
}

/// Frame types (RFC 9113 §6).
pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

/// Frame flags.
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 §7).
pub(crate) const NO_ERROR: u32 = 0x0;
pub(crate) const PROTOCOL_ERROR: u32 = 0x1;
pub(crate) const INTERNAL_ERROR: u32 = 0x2;
pub(crate) const FLOW_CONTROL_ERROR: u32 = 0x3;
pub(crate) const STREAM_CLOSED: u32 = 0x5;
pub(crate) const FRAME_SIZE_ERROR: u32 = 0x6;
pub(crate) const REFUSED_STREAM: u32 = 0x7;
pub(crate) const CANCEL: u32 = 0x8;
pub(crate) const COMPRESSION_ERROR: u32 = 0x9;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Settings (RFC 9113 §6.5.2).
pub(crate) const ENABLE_PUSH: u16 = 0x2;
pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(crate) const MAX_FRAME_SIZE: u16 = 0x5;
pub(crate) const MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// RFC 8441 §3: the server takes extended CONNECT (`:protocol`).
pub(crate) const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// A breach of the protocol that ends the connection, told to the peer in GOAWAY.
#[derive(Debug)]
pub(crate) struct ConnError {
    pub code: u32,
    pub why: &'static str,
}

pub(crate) fn conn_error(code: u32, why: &'static str) -> ConnError {
    ConnError { code, why }
}

/// One frame read: its type, flags, stream and payload.
pub(crate) struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub id: u32,
    pub payload: Bytes,
}

/// The next whole frame in `read`, taken from it; `None` until all of it has come.
pub(crate) fn take_frame(read: &mut BytesMut) -> Result<Option<RawFrame>, ConnError> {
    if read.len() < 9 {
        return Ok(None);
    }
    let len = usize::from(read[0]) << 16 | usize::from(read[1]) << 8 | usize::from(read[2]);
    if len > MAX_FRAME {
        return Err(conn_error(FRAME_SIZE_ERROR, "a frame larger than SETTINGS_MAX_FRAME_SIZE"));
    }
    if read.len() < 9 + len {
        return Ok(None);
    }
    let (kind, flags) = (read[3], read[4]);
    let id = u32::from_be_bytes([read[5], read[6], read[7], read[8]]) & 0x7fff_ffff;
    read.advance(9);
    Ok(Some(RawFrame { kind, flags, id, payload: read.split_to(len).freeze() }))
}

pub(crate) fn frame_head(wire: &mut Vec<u8>, len: usize, kind: u8, flags: u8, id: u32) {
    let len = (len as u32).to_be_bytes();
    wire.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    wire.extend_from_slice(&id.to_be_bytes());
}

/// Writes `block` to stream `id` as HEADERS, and CONTINUATION frames past `max_frame`.
pub(crate) fn header_block(wire: &mut Vec<u8>, id: u32, end_stream: bool, block: &[u8], max_frame: usize) {
    let mut chunks = block.chunks(max_frame).peekable();
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    loop {
        let chunk = chunks.next().unwrap_or_default();
        let last = chunks.peek().is_none();
        frame_head(wire, chunk.len(), kind, flags | if last { END_HEADERS } else { 0 }, id);
        wire.extend_from_slice(chunk);
        if last {
            return;
        }
        (kind, flags) = (CONTINUATION, 0);
    }
}

pub(crate) fn window_update(wire: &mut Vec<u8>, id: u32, increment: u32) {
    frame_head(wire, 4, WINDOW_UPDATE, 0, id);
    wire.extend_from_slice(&increment.to_be_bytes());
}

/// Gives a stream's peer back what was taken on it once that is half the stream's window.
pub(crate) fn give_back_stream(wire: &mut Vec<u8>, id: u32, ungranted: &mut i64, recv_window: &mut i64) {
    if *ungranted >= STREAM_WINDOW / 2 {
        *recv_window += *ungranted;
        window_update(wire, id, std::mem::take(ungranted) as u32);
    }
}

pub(crate) fn rst_stream(wire: &mut Vec<u8>, id: u32, code: u32) {
    frame_head(wire, 4, RST_STREAM, 0, id);
    wire.extend_from_slice(&code.to_be_bytes());
}

pub(crate) fn settings(wire: &mut Vec<u8>, settings: &[(u16, u32)]) {
    frame_head(wire, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        wire.extend_from_slice(&id.to_be_bytes());
        wire.extend_from_slice(&value.to_be_bytes());
    }
}

/// The largest stream identifier (RFC 9113 §5.1.1).
pub(crate) const MAX_STREAM_ID: u32 = (1 << 31) - 1;

pub(crate) fn ping(wire: &mut Vec<u8>, flags: u8, payload: &[u8; 8]) {
    frame_head(wire, 8, PING, flags, 0);
    wire.extend_from_slice(payload);
}

pub(crate) fn goaway(wire: &mut Vec<u8>, last_id: u32, code: u32, debug: &[u8]) {
    frame_head(wire, 8 + debug.len(), GOAWAY, 0, 0);
    wire.extend_from_slice(&last_id.to_be_bytes());
    wire.extend_from_slice(&code.to_be_bytes());
    wire.extend_from_slice(debug);
}

/// What a peer's SETTINGS frame (not an acknowledgement) changes.
#[derive(Default)]
pub(crate) struct PeerSettings {
    pub initial_window: Option<i64>,
    pub max_frame: Option<usize>,
    pub max_streams: Option<u32>,
    pub extended_connect: Option<bool>,
}

/// Reads and checks a SETTINGS payload (RFC 9113 §6.5.2); `from_server` for a client's peer,
/// which may not turn push on.
pub(crate) fn peer_settings(payload: &[u8], from_server: bool) -> Result<PeerSettings, ConnError> {
    if !payload.len().is_multiple_of(6) {
        return Err(conn_error(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes long"));
    }
    let mut changed = PeerSettings::default();
    for setting in payload.chunks_exact(6) {
        let key = u16::from_be_bytes([setting[0], setting[1]]);
        let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
        match key {
            ENABLE_PUSH if value > 1 || from_server && value != 0 => {
                return Err(conn_error(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH out of range"));
            }
            INITIAL_WINDOW_SIZE => {
                if i64::from(value) > MAX_WINDOW {
                    return Err(conn_error(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1"));
                }
                changed.initial_window = Some(i64::from(value));
            }
            MAX_FRAME_SIZE => {
                if !(MAX_FRAME as u32..=0xff_ffff).contains(&value) {
                    return Err(conn_error(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"));
                }
                changed.max_frame = Some(value as usize);
            }
            MAX_CONCURRENT_STREAMS => changed.max_streams = Some(value),
            ENABLE_CONNECT_PROTOCOL => {
                if value > 1 {
                    return Err(conn_error(PROTOCOL_ERROR, "SETTINGS_ENABLE_CONNECT_PROTOCOL out of range"));
                }
                changed.extended_connect = Some(value == 1);
            }
            // The encoder keeps no dynamic table, so any table size holds; the rest are
            // advisory or unknown.
            _ => {}
        }
    }
    Ok(changed)
}

/// The payload of a frame that may be padded, without its padding.
pub(crate) fn unpadded(flags: u8, mut payload: Bytes) -> Result<Bytes, ConnError> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let Some(&pad) = payload.first() else {
        return Err(conn_error(FRAME_SIZE_ERROR, "a padded frame without its pad length"));
    };
    if usize::from(pad) >= payload.len() {
        return Err(conn_error(PROTOCOL_ERROR, "padding as long as the frame"));
    }
    payload.advance(1);
    payload.truncate(payload.len() - usize::from(pad));
    Ok(payload)
}

/// The stream a priority (PRIORITY's payload, or HEADERS' priority fields) depends on.
pub(crate) fn dependency(priority: &[u8]) -> u32 {
    u32::from_be_bytes([priority[0], priority[1], priority[2], priority[3]]) & 0x7fff_ffff
}

/// Fields of HTTP/1.1 connections that HTTP/2 does not carry (RFC 9113 §8.2.2).
pub(crate) fn connection_specific(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, TRANSFER_ENCODING, UPGRADE};
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Appends a message's fields (or trailers), those HTTP/2 does not carry left out: `te` only
/// as `trailers` (RFC 9113 §8.2.2), which an HTTP/1.1 client may have asked among others.
pub(crate) fn encode_fields(headers: &HeaderMap, dst: &mut Vec<u8>) {
    for (name, value) in headers {
        if name == TE {
            if has_token(value.as_bytes(), b"trailers") {
                hpack::encode_field(b"te", b"trailers", false, dst);
            }
        } else if !connection_specific(name) {
            hpack::encode_field(name.as_str().as_bytes(), value.as_bytes(), value.is_sensitive(), dst);
        }
    }
}

/// `value` copied to the end of `values` and split off it; room is made a few kilobytes at a
/// time.
fn copied(values: &mut BytesMut, value: &[u8]) -> Bytes {
    if values.capacity() < value.len() {
        values.reserve(value.len().max(4096));
    }
    values.extend_from_slice(value);
    values.split().freeze()
}

/// What a header block holds (RFC 9110's sections).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Section {
    RequestHead,
    ResponseHead,
    Trailers,
}

/// A header block's fields as they decode, checked as RFC 9113 §8.2–8.3 asks.
pub(crate) struct Fields {
    kind: Section,
    method: Option<Method>,
    status: Option<StatusCode>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    /// RFC 8441's `:protocol`, of an extended CONNECT.
    protocol: Option<Bytes>,
    pub headers: HeaderMap,
    /// The body's length, as `content-length` says (every value the same number; passed on as
    /// one field).
    pub content_length: Option<u64>,
    regular_seen: bool,
    size: usize,
    /// Past `MAX_HEAD_BYTES` (RFC 7541's count, 32 bytes a field beside its name and value).
    pub too_large: bool,
    pub malformed: Option<&'static str>,
}

impl Fields {
    pub(crate) fn new(kind: Section) -> Fields {
        Fields {
            kind,
            method: None,
            status: None,
            scheme: None,
            authority: None,
            path: None,
            protocol: None,
            headers: spare_fields::with_capacity(0),
            content_length: None,
            regular_seen: false,
            size: 0,
            too_large: false,
            malformed: None,
        }
    }

    /// Takes one field; its value is copied into `values`, the connection's buffer for them
    /// (split off it, so that values share allocations instead of having one each).
    pub(crate) fn add(&mut self, name: &[u8], value: &[u8], values: &mut BytesMut) {
        self.size += name.len() + value.len() + 32;
        self.too_large |= self.size > MAX_HEAD_BYTES;
        if self.too_large || self.malformed.is_some() {
            return;
        }
        if let Err(why) = self.take(name, value, values) {
            self.malformed = Some(why);
        }
    }

    fn take(&mut self, name: &[u8], value: &[u8], values: &mut BytesMut) -> Result<(), &'static str> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.kind == Section::Trailers || self.regular_seen {
                return Err("a pseudo-header in trailers or after a field");
            }
            if (self.kind == Section::ResponseHead) != (pseudo == b"status") {
                return Err("a pseudo-header of the other side's");
            }
            let slot = match pseudo {
                b"status" => {
                    if self.status.is_some() {
                        return Err("two :status");
                    }
                    self.status = Some(StatusCode::from_bytes(value).map_err(|_| "a malformed :status")?);
                    return Ok(());
                }
                b"method" => {
                    if self.method.is_some() {
                        return Err("two :method");
                    }
                    self.method = Some(Method::from_bytes(value).map_err(|_| "a malformed :method")?);
                    return Ok(());
                }
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                b"protocol" => &mut self.protocol,
                _ => return Err("an unknown pseudo-header"),
            };
            if slot.is_some() {
                return Err("a pseudo-header twice");
            }
            *slot = Some(copied(values, value));
            return Ok(());
        }
        self.regular_seen = true;
        let name = field_name(name, true).map_err(|_| "a field name not lowercase or not a token")?;
        if connection_specific(&name) || name == TE && value != b"trailers" {
            return Err("a connection-specific field");
        }
        if matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t')) {
            return Err("a field value with whitespace around it");
        }
        if self.kind == Section::Trailers && !kept_in_trailers(&name) {
            return Ok(());
        }
        if name == CONTENT_LENGTH {
            let seen = self.content_length;
            self.content_length = content_length(value, seen).map_err(|_| "an invalid content-length")?;
            if let Some(n) = self.content_length.filter(|_| seen.is_some() || value.contains(&b',')) {
                self.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
                return Ok(());
            }
        }
        let value = HeaderValue::from_maybe_shared(copied(values, value))
            .map_err(|_| "a field value with a forbidden byte")?;
        self.headers.append(name, value);
        Ok(())
    }

    /// The request's head; `None` for one that is malformed.
    pub(crate) fn into_request(self) -> Option<http::request::Parts> {
        if self.malformed.is_some() {
            return None;
        }
        let method = self.method?;
        // An extended CONNECT is a request for a path, as a GET is (RFC 8441 §4).
        let extended = self.protocol.is_some();
        if extended && method != Method::CONNECT {
            return None;
        }
        let mut uri = http::uri::Parts::default();
        if method == Method::CONNECT && !extended {
            if self.scheme.is_some() || self.path.is_some() {
                return None;
            }
            uri.authority = Some(http::uri::Authority::from_maybe_shared(self.authority?).ok()?);
        } else {
            let path = self.path.filter(|p| !p.is_empty())?;
            let scheme = self.scheme?;
            uri.path_and_query = Some(http::uri::PathAndQuery::from_maybe_shared(path).ok()?);
            if let Some(authority) = self.authority {
                uri.scheme = Some(match &scheme[..] {
                    b"http" => http::uri::Scheme::HTTP,
                    b"https" => http::uri::Scheme::HTTPS,
                    other => other.try_into().ok()?,
                });
                uri.authority = Some(http::uri::Authority::from_maybe_shared(authority).ok()?);
            }
        }
        // RFC 9113 §8.3.1: a Host naming another than `:authority` makes the request malformed.
        if let (Some(authority), Some(host)) = (uri.authority.as_ref(), self.headers.get(HOST))
            && !authority.as_str().eq_ignore_ascii_case(host.to_str().unwrap_or_default())
        {
            return None;
        }
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = Uri::from_parts(uri).ok()?;
        parts.version = Version::HTTP_2;
        parts.headers = self.headers;
        if let Some(protocol) = self.protocol {
            crate::upgrade::from_extended_connect(&mut parts, HeaderValue::from_maybe_shared(protocol).ok()?);
        }
        Some(parts)
    }

    /// The response's head; `None` for one that is malformed.
    pub(crate) fn into_response(self) -> Option<http::response::Parts> {
        if self.malformed.is_some() {
            return None;
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = self.status?;
        parts.version = Version::HTTP_2;
        parts.headers = self.headers;
        Some(parts)
    }
}

/// What both ends keep about a connection beside its streams: the frames to write, the peer's
/// settings, both connection windows, the HPACK decoder and a header block awaiting its
/// CONTINUATION frames. `on_frame` applies every rule of RFC 9113 that is the connection's,
/// and hands the server or the client what is its streams'.
pub(crate) struct Link {
    pub wire: Vec<u8>,
    pub decoder: hpack::Decoder,
    /// The peer's first frame (its SETTINGS) has come.
    pub settled: bool,
    pub peer_initial_window: i64,
    pub peer_max_frame: usize,
    /// The peer takes extended CONNECT (RFC 8441).
    pub peer_extended_connect: bool,
    /// What the agent may still send on the connection, and the peer.
    pub send_window: i64,
    pub recv_window: i64,
    /// Bytes taken from the peer that it has not been given back yet.
    pub unreleased: i64,
    block: Option<PartialBlock>,
    /// Room to encode a header block, kept from one to the next.
    pub scratch: Vec<u8>,
    /// Where decoded field values are copied to (`Fields::add`).
    pub values: BytesMut,
    /// The peer is a server (it may not turn push on).
    peer_is_server: bool,
}

struct PartialBlock {
    id: u32,
    end_stream: bool,
    self_dependent: bool,
    bytes: Vec<u8>,
    /// What its frames count against `MAX_BLOCK`.
    charged: usize,
}

/// What a frame means for the streams, once the connection's rules are kept.
pub(crate) enum Event {
    /// Nothing for the streams (PING, an acknowledgement, a block not yet whole, …).
    None,
    /// DATA, its padding given back already; `len` is what it took of the windows.
    Data {
        id: u32,
        data: Bytes,
        len: i64,
        end_stream: bool,
    },
    /// A whole header block; `self_dependent` when its priority named its own stream.
    Block {
        id: u32,
        block: Bytes,
        end_stream: bool,
        self_dependent: bool,
    },
    /// A breach of the protocol that is its stream's alone.
    StreamError {
        id: u32,
        code: u32,
    },
    Reset {
        id: u32,
        code: u32,
    },
    /// The peer's SETTINGS, applied; every stream's send window moves by `window_delta`.
    Settings {
        window_delta: i64,
        max_streams: Option<u32>,
        first: bool,
    },
    GoAway {
        last_id: u32,
    },
    /// The peer answered a PING of ours.
    PingAnswered {
        payload: [u8; 8],
    },
    /// The connection's send window grew.
    ConnectionWindow,
    WindowUpdate {
        id: u32,
        increment: i64,
    },
}

impl Link {
    /// A connection's state, its first frames written: the client's preface (when the agent is
    /// the client), the agent's SETTINGS, and the rest of its connection window.
    pub(crate) fn new(peer_is_server: bool, ours: &[(u16, u32)]) -> Link {
        let mut wire = if peer_is_server { PREFACE.to_vec() } else { Vec::with_capacity(4096) };
        settings(&mut wire, ours);
        window_update(&mut wire, 0, (CONNECTION_WINDOW - DEFAULT_WINDOW) as u32);
        Link {
            wire,
            decoder: hpack::Decoder::new(),
            settled: false,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            peer_extended_connect: false,
            send_window: DEFAULT_WINDOW,
            recv_window: CONNECTION_WINDOW,
            unreleased: 0,
            block: None,
            scratch: Vec::new(),
            values: BytesMut::new(),
            peer_is_server,
        }
    }

    pub(crate) fn on_frame(&mut self, frame: RawFrame) -> Result<Event, ConnError> {
        let RawFrame { kind, flags, id, payload } = frame;
        if self.block.as_ref().is_some_and(|b| kind != CONTINUATION || b.id != id) {
            return Err(conn_error(PROTOCOL_ERROR, "a header block interrupted"));
        }
        if !self.settled && kind != SETTINGS {
            return Err(conn_error(PROTOCOL_ERROR, "a first frame other than SETTINGS"));
        }
        let on_stream = |what| if id == 0 { Err(conn_error(PROTOCOL_ERROR, what)) } else { Ok(()) };
        let on_connection = |what| if id != 0 { Err(conn_error(PROTOCOL_ERROR, what)) } else { Ok(()) };
        match kind {
            DATA => {
                on_stream("DATA on stream 0")?;
                let len = payload.len() as i64;
                if len > self.recv_window {
                    return Err(conn_error(FLOW_CONTROL_ERROR, "DATA past the connection's window"));
                }
                self.recv_window -= len;
                let data = unpadded(flags, payload)?;
                // Padding is given back at once.
                self.unreleased += len - data.len() as i64;
                Ok(Event::Data { id, data, len, end_stream: flags & END_STREAM != 0 })
            }
            HEADERS => {
                on_stream("HEADERS on stream 0")?;
                let mut fragment = unpadded(flags, payload)?;
                let mut self_dependent = false;
                if flags & PRIORITY_FLAG != 0 {
                    if fragment.len() < 5 {
                        return Err(conn_error(FRAME_SIZE_ERROR, "HEADERS too short for its priority"));
                    }
                    self_dependent = dependency(&fragment) == id;
                    fragment.advance(5);
                }
                let end_stream = flags & END_STREAM != 0;
                if flags & END_HEADERS != 0 {
                    return Ok(Event::Block { id, block: fragment, end_stream, self_dependent });
                }
                let charged = fragment.len();
                self.block =
                    Some(PartialBlock { id, end_stream, self_dependent, bytes: fragment.to_vec(), charged });
                Ok(Event::None)
            }
            CONTINUATION => {
                let Some(block) = self.block.as_mut() else {
                    return Err(conn_error(PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                block.charged += payload.len().max(CONTINUATION_CHARGE);
                if block.charged > MAX_BLOCK {
                    return Err(conn_error(ENHANCE_YOUR_CALM, "a header block past its bound"));
                }
                block.bytes.extend_from_slice(&payload);
                if flags & END_HEADERS == 0 {
                    return Ok(Event::None);
                }
                let PartialBlock { id, end_stream, self_dependent, bytes, .. } =
                    self.block.take().expect("matched");
                Ok(Event::Block { id, block: bytes.into(), end_stream, self_dependent })
            }
            PRIORITY => {
                on_stream("PRIORITY on stream 0")?;
                Ok(match payload.len() {
                    5 if dependency(&payload) == id => Event::StreamError { id, code: PROTOCOL_ERROR },
                    5 => Event::None,
                    _ => Event::StreamError { id, code: FRAME_SIZE_ERROR },
                })
            }
            RST_STREAM => {
                on_stream("RST_STREAM on stream 0")?;
                let [a, b, c, d] = payload[..] else {
                    return Err(conn_error(FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes long"));
                };
                Ok(Event::Reset { id, code: u32::from_be_bytes([a, b, c, d]) })
            }
            SETTINGS => {
                on_connection("SETTINGS on a stream")?;
                if flags & ACK != 0 {
                    if !payload.is_empty() {
                        return Err(conn_error(
                            FRAME_SIZE_ERROR,
                            "a SETTINGS acknowledgement with a payload",
                        ));
                    }
                    return Ok(Event::None);
                }
                let changed = peer_settings(&payload, self.peer_is_server)?;
                let window_delta = changed.initial_window.map_or(0, |w| w - self.peer_initial_window);
                self.peer_initial_window += window_delta;
                if let Some(max_frame) = changed.max_frame {
                    self.peer_max_frame = max_frame;
                }
                if let Some(extended_connect) = changed.extended_connect {
                    // RFC 8441 §3: once said, it may not be taken back.
                    if self.peer_extended_connect && !extended_connect {
                        return Err(conn_error(
                            PROTOCOL_ERROR,
                            "SETTINGS_ENABLE_CONNECT_PROTOCOL taken back",
                        ));
                    }
                    self.peer_extended_connect = extended_connect;
                }
                frame_head(&mut self.wire, 0, SETTINGS, ACK, 0);
                let first = !std::mem::replace(&mut self.settled, true);
                Ok(Event::Settings { window_delta, max_streams: changed.max_streams, first })
            }
            PUSH_PROMISE => {
                Err(conn_error(PROTOCOL_ERROR, "PUSH_PROMISE, which no peer of the agent may send"))
            }
            PING => {
                on_connection("PING on a stream")?;
                if payload.len() != 8 {
                    return Err(conn_error(FRAME_SIZE_ERROR, "PING not 8 bytes long"));
                }
                let payload: [u8; 8] = payload[..].try_into().expect("8 bytes, checked");
                if flags & ACK != 0 {
                    return Ok(Event::PingAnswered { payload });
                }
                ping(&mut self.wire, ACK, &payload);
                Ok(Event::None)
            }
            GOAWAY => {
                on_connection("GOAWAY on a stream")?;
                if payload.len() < 8 {
                    return Err(conn_error(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes"));
                }
                Ok(Event::GoAway { last_id: dependency(&payload) })
            }
            WINDOW_UPDATE => {
                let [a, b, c, d] = payload[..] else {
                    return Err(conn_error(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes long"));
                };
                let increment = i64::from(u32::from_be_bytes([a, b, c, d]) & 0x7fff_ffff);
                if id != 0 {
                    return Ok(Event::WindowUpdate { id, increment });
                }
                if increment == 0 {
                    return Err(conn_error(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0"));
                }
                self.send_window += increment;
                if self.send_window > MAX_WINDOW {
                    return Err(conn_error(FLOW_CONTROL_ERROR, "the connection's window past 2^31-1"));
                }
                Ok(Event::ConnectionWindow)
            }
            // Frames of unknown types are ignored (RFC 9113 §4.1).
            _ => Ok(Event::None),
        }
    }

    /// Decodes a whole header block into `fields`.
    pub(crate) fn decode(&mut self, block: &[u8], fields: &mut Fields) -> Result<(), ConnError> {
        let Link { decoder, values, .. } = self;
        decoder
            .decode(block, |name, value| fields.add(name, value, values))
            .map_err(|_| conn_error(COMPRESSION_ERROR, "a header block HPACK cannot decode"))
    }

    /// Gives the peer back what the agent has taken on the connection once it is half the
    /// window; true when a WINDOW_UPDATE was written.
    pub(crate) fn give_back(&mut self) -> bool {
        if self.unreleased < CONNECTION_WINDOW / 2 {
            return false;
        }
        self.recv_window += self.unreleased;
        window_update(&mut self.wire, 0, std::mem::take(&mut self.unreleased) as u32);
        true
    }

    /// Writes the header block in `scratch` to stream `id`.
    pub(crate) fn write_block(&mut self, id: u32, end_stream: bool) {
        header_block(&mut self.wire, id, end_stream, &self.scratch, self.peer_max_frame);
    }

    /// Room to send on a stream with `stream_window` left: what both windows and the peer's
    /// largest frame allow.
    pub(crate) fn room(&self, stream_window: i64) -> i64 {
        self.send_window.min(stream_window).min(self.peer_max_frame as i64)
    }
}

/// A body's frames as they were received, until the proxy takes them: its data, then its
/// trailers, then its end; or why it failed.
#[derive(Default)]
pub(crate) struct Received {
    pub chunks: VecDeque<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// All of it came.
    pub ended: bool,
    pub failed: Option<String>,
    /// The task taking it, waiting for more.
    pub reader: Option<Waker>,
}

impl Received {
    /// The next frame, in the order a body's frames are passed on; the data before why the
    /// body failed, which comes before its trailers.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
        }
        if let Some(why) = &self.failed {
            return Poll::Ready(Some(Err(why.clone().into())));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        self.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.ended && self.chunks.is_empty() && self.trailers.is_none() && self.failed.is_none()
    }

    /// Bytes received and not taken.
    pub(crate) fn unread(&self) -> i64 {
        self.chunks.iter().map(|c| c.len() as i64).sum()
    }

    pub(crate) fn wake(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(fields: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        let mut block = Vec::new();
        encode_fields(&headers, &mut block);
        let mut out = Vec::new();
        hpack::Decoder::new()
            .decode(&block, |n, v| {
                out.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
            })
            .unwrap();
        out
    }

    #[test]
    fn fields_of_one_connection_are_left_out_and_te_is_carried_only_as_trailers() {
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let sent = encoded(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip;q=0.5, Trailers"),
            ("x-kept", "yes"),
        ]);
        assert_eq!(sent, [pair("te", "trailers"), pair("x-kept", "yes")]);
        assert_eq!(encoded(&[("te", "gzip"), ("x-kept", "yes")]), [pair("x-kept", "yes")]);
    }
}
