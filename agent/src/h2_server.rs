//! The agent's HTTP/2 server (RFC 9113), driven from the task that serves the connection as
//! `http1_server.rs` is: frames are read and written there, a stream's answer is computed by a
//! future polled there too, and its body is sent from there as the peer's windows allow. hyper's
//! server (on the h2 crate) ran every stream as a task of its own beside the connection's, and
//! passed each frame between them through shared queues; gRPC's requests cost four times
//! HTTP/1.1's instructions so (BENCHMARKS.md).
//!
//! A request whose body came whole with its head (most gRPC calls) is handed over whole, as
//! HTTP/1.1's are: its handler starts only after the frames that arrived with its head have been
//! read. Every other body streams through an inbox the connection fills and the proxy empties;
//! the client's window is given back as it is emptied, so what a client may have buffered here is
//! bounded by the windows the agent offers.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::{AbortHandle, Abortable, Aborted};
use futures::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, Request, Response};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

use crate::body::{Body, BoxError};
use crate::h2_wire::*;
use crate::hpack;
use crate::http1_codec::MAX_HEAD_BYTES;
use crate::{spare_fields, upgrade};

/// Streams a client may have open at once (hyper's default).
const MAX_STREAMS: usize = 200;
/// Bytes waiting to be written past which the connection stops reading and taking more from
/// answers' bodies, until the client has read some.
const HIGH_WATER: usize = 64 * 1024;
/// Streams reset lately that are remembered: frames the client sent before it learnt of the
/// agent's reset are ignored (RFC 9113 §6.4), and a frame on a stream it reset itself is told
/// apart from a frame on a stream that never was.
const REMEMBERED_RESETS: usize = 32;
/// Runs of stream identifiers a client passed over that are remembered, so that a HEADERS on
/// one is told apart (PROTOCOL_ERROR) from one on a closed stream (STREAM_CLOSED).
const REMEMBERED_SKIPS: usize = 8;
/// Streams a client may reset before their answer beyond those answered (RFC 9113 §10.5, the
/// "rapid reset" of CVE-2023-44487): each such stream costs a handler's start, perhaps a request
/// upstream, and frees its place at once, so `MAX_STREAMS` alone does not bound the work.
const RESET_BUDGET: i64 = MAX_STREAMS as i64;
/// The PING sent with a graceful GOAWAY: its answer shows that every stream the client opened
/// before it read the GOAWAY has come.
const LAST_CALL: [u8; 8] = *b"lastcall";
/// Longest a client has to answer that PING before the streams it opens go unprocessed.
const LAST_CALL_WAIT: Duration = Duration::from_secs(1);

/// Serves `io`, which has not yet read the client's preface, with `answer` until the client
/// closes the connection or says GOAWAY, breaks the protocol (told in GOAWAY, then closed), takes
/// longer than `header_timeout` over its preface, has no stream open for as long (GOAWAY, as an
/// HTTP/1.1 connection is closed between requests), or the agent drains (GOAWAY; the streams
/// begun are answered first). A graceful GOAWAY goes in two steps (RFC 9113 §6.8), so that a
/// request the client sent as the first was on its way is answered, not lost.
pub(crate) async fn serve<IO, F, Fut>(
    mut io: IO,
    answer: F,
    header_timeout: Duration,
    mut draining: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut read = BytesMut::with_capacity(READ_CHUNK);
    let preface = async {
        while read.len() < PREFACE.len() {
            if io.read_buf(&mut read).await? == 0
                || !PREFACE.starts_with(&read[..read.len().min(PREFACE.len())])
            {
                anyhow::bail!("not HTTP/2's preface");
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(header_timeout, preface)
        .await
        .map_err(|_| anyhow::anyhow!("no HTTP/2 preface within {header_timeout:?}"))??;
    // Every byte read was checked against the preface as it came.
    read.advance(PREFACE.len());
    let drained = async move {
        if draining.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let mut drained = pin!(drained);
    let mut conn = Conn::new(io, read, answer, header_timeout);
    poll_fn(|cx| {
        if conn.ending.is_none() && drained.as_mut().poll(cx).is_ready() {
            conn.announce_end();
        }
        conn.poll_serve(cx)
    })
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// GOAWAY said with the highest stream identifier, and `LAST_CALL` sent: no new request
    /// is asked for, and those the client sent before it read that are still taken.
    Announced,
    /// GOAWAY said with the last stream taken: the streams begun are finished, then the
    /// connection closes.
    Graceful,
    /// GOAWAY said for a breach: the connection closes once it is written.
    Now,
}

/// Where a stream's handler runs: a box, so that its future (the proxy's whole path, about 5 KB)
/// is not moved once started, kept by the connection for its next stream once the handler is
/// done. A box that large is past what the C library's allocator keeps at hand, so a new one for
/// every stream had it sort its free lists on the way (BENCHMARKS.md, "Handler boxes kept").
type Slot<Fut> = Pin<Box<Option<Abortable<Fut>>>>;

/// Handler boxes a connection keeps for its next streams: as many as a burst of calls on one
/// connection starts at once.
const KEPT_SLOTS: usize = 16;

/// A stream's handler: its answer, or `Aborted` when the stream was reset first, and its box
/// back, emptied.
struct Answering<Fut> {
    id: u32,
    slot: Option<Slot<Fut>>,
}

impl<Fut: Future> Future for Answering<Fut> {
    type Output = (u32, Result<Fut::Output, Aborted>, Slot<Fut>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        let slot = me.slot.as_mut().expect("polled after it ended");
        let handler = slot.as_mut().as_pin_mut().expect("filled when it started");
        let answered = std::task::ready!(handler.poll(cx));
        slot.set(None);
        Poll::Ready((me.id, answered, me.slot.take().expect("present")))
    }
}

struct Conn<IO, F, Fut> {
    io: IO,
    read: BytesMut,
    /// The connection's state beside its streams; `written` of its frames are written.
    link: Link,
    written: usize,
    answer: F,
    streams: Vec<Stream>,
    answering: FuturesUnordered<Answering<Fut>>,
    /// Handler boxes of answered streams, for the next ones.
    spare_slots: Vec<Slot<Fut>>,
    /// The highest stream the client opened.
    last_id: u32,
    /// Streams reset lately, and whether by the agent.
    recently_reset: VecDeque<(u32, bool)>,
    /// Stream identifiers the client passed over lately (first and last of each run).
    skipped: VecDeque<(u32, u32)>,
    /// What is left of `RESET_BUDGET`: one less for each stream the client resets before its
    /// answer, one more (up to the budget) for each answer.
    resets_allowed: i64,
    /// The client closed its side, or said GOAWAY: no more requests.
    client_done: bool,
    /// The client closed its side: nothing more to read.
    eof: bool,
    ending: Option<Ending>,
    /// Why the connection ended, when it ended on a breach.
    broken: Option<&'static str>,
    /// How long the connection may go without a stream, since when it has had none, and one
    /// timer for its life, moved on only when it fires (as the HTTP/1.1 server's header timer).
    idle_timeout: Duration,
    idle_due: Option<tokio::time::Instant>,
    idle_timer: Pin<Box<tokio::time::Sleep>>,
}

struct Stream {
    id: u32,
    /// The request, until its handler starts.
    request: Option<http::request::Parts>,
    /// Its body as far as it came before the handler started (whole bodies stay here).
    early: Vec<Bytes>,
    early_trailers: Option<HeaderMap>,
    /// Bytes kept here (a whole body) that the client gets back when the stream ends.
    held: i64,
    /// The body's inbox, once the handler streams it.
    inbox: Option<Arc<Mutex<Inbox>>>,
    /// An extended CONNECT's body, the client's side of the tunnel asked for: kept from the
    /// handler, and joined to the upstream's connection if the switch is agreed to.
    upload: Option<Body>,
    /// The client may still send DATA or trailers.
    recv_open: bool,
    recv_window: i64,
    /// Emptied from the inbox but not yet given back to the client's window on this stream.
    ungranted: i64,
    content_length: Option<u64>,
    /// The request is a HEAD: its answer carries no content, whatever made it (RFC 9110 §9.3.2).
    head_request: bool,
    received: u64,
    abort: Option<AbortHandle>,
    out: Out,
    send_window: i64,
}

enum Out {
    /// The handler is still at work.
    Waiting,
    /// The answer's body is being sent; `pending` is what the windows have not let go yet,
    /// and whether it is the body's last.
    Sending { body: Body, pending: Option<(Bytes, bool)> },
    /// END_STREAM sent.
    Done,
}

impl<IO, F, Fut> Conn<IO, F, Fut>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    fn new(io: IO, read: BytesMut, answer: F, idle_timeout: Duration) -> Self {
        let ours = [
            (MAX_CONCURRENT_STREAMS, MAX_STREAMS as u32),
            (INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
            (MAX_HEADER_LIST_SIZE, MAX_HEAD_BYTES as u32),
            (ENABLE_CONNECT_PROTOCOL, 1),
        ];
        Conn {
            io,
            read,
            link: Link::new(false, &ours),
            written: 0,
            answer,
            streams: Vec::new(),
            answering: FuturesUnordered::new(),
            spare_slots: Vec::new(),
            last_id: 0,
            recently_reset: VecDeque::new(),
            skipped: VecDeque::new(),
            resets_allowed: RESET_BUDGET,
            client_done: false,
            eof: false,
            ending: None,
            broken: None,
            idle_timeout,
            idle_due: None,
            idle_timer: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// Does all that can be done now; ready when the connection is over.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<anyhow::Result<()>> {
        loop {
            let mut busy = false;
            // Draining, the streams begun still need the client's frames.
            if self.ending != Some(Ending::Now)
                && !self.eof
                && self.link.wire.len() - self.written < HIGH_WATER
            {
                room_to_read(&mut self.read);
                match pin!(self.io.read_buf(&mut self.read)).poll(cx) {
                    Poll::Ready(Ok(0)) => {
                        busy = true;
                        self.client_closed();
                    }
                    Poll::Ready(Ok(_)) => busy = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                }
            }
            // Frames may have come with the preface, or wait for room to write.
            if self.read.len() >= 9 && self.ending != Some(Ending::Now) {
                if let Err(e) = self.take_frames() {
                    self.broken = Some(e.why);
                    self.go_away(e.code, Ending::Now, e.why);
                }
                self.start_answering(cx);
            }
            while let Poll::Ready(Some((id, answered, slot))) = self.answering.poll_next_unpin(cx) {
                busy = true;
                if self.spare_slots.len() < KEPT_SLOTS {
                    self.spare_slots.push(slot);
                }
                if let Ok(response) = answered {
                    self.respond(id, response);
                }
            }
            busy |= self.send_bodies(cx);
            self.give_back_windows();
            if self.written < self.link.wire.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.link.wire[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(anyhow::anyhow!("the connection took no more bytes")));
                    }
                    Poll::Ready(Ok(n)) => {
                        busy = true;
                        self.written += n;
                        if self.written == self.link.wire.len() {
                            self.link.wire.clear();
                            self.written = 0;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                }
            }
            if self.written == self.link.wire.len() {
                // TLS keeps what it was given until flushed.
                if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                    return Poll::Ready(Err(e.into()));
                }
                let over = match self.ending {
                    Some(Ending::Now) => true,
                    Some(Ending::Graceful) => self.streams.is_empty(),
                    None | Some(Ending::Announced) => self.client_done && self.streams.is_empty(),
                };
                if over {
                    let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                    return Poll::Ready(match self.broken {
                        Some(why) => Err(anyhow::anyhow!("HTTP/2 client broke the protocol: {why}")),
                        None => Ok(()),
                    });
                }
            }
            if !busy {
                busy = self.poll_idle(cx);
            }
            if !busy {
                return Poll::Pending;
            }
        }
    }

    /// Notes when the connection has been left without a stream, and begins to end it once it
    /// has been so for `idle_timeout`; ends it when the client leaves `LAST_CALL` unanswered
    /// for `LAST_CALL_WAIT`. True when it did something.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ending.is_none() {
            let idle = self.streams.is_empty() && self.written == self.link.wire.len();
            match (idle, self.idle_due) {
                (true, None) => self.idle_due = Some(tokio::time::Instant::now() + self.idle_timeout),
                (false, Some(_)) => self.idle_due = None,
                _ => {}
            }
        }
        let timed = matches!(self.ending, None | Some(Ending::Announced));
        if !timed || self.idle_timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let now = tokio::time::Instant::now();
        match self.idle_due {
            Some(due) if now >= due && self.ending.is_none() => self.announce_end(),
            Some(due) if now >= due => {
                self.go_away(NO_ERROR, Ending::Graceful, "no answer to the last call");
            }
            due => self.idle_timer.as_mut().reset(due.unwrap_or(now + self.idle_timeout)),
        }
        true
    }

    /// Handles every whole frame read.
    fn take_frames(&mut self) -> Result<(), ConnError> {
        while self.ending != Some(Ending::Now) {
            let Some(frame) = take_frame(&mut self.read)? else { return Ok(()) };
            self.on_frame(frame)?;
        }
        Ok(())
    }

    /// What a frame means for the streams, once `Link` has kept the connection's rules.
    fn on_frame(&mut self, frame: RawFrame) -> Result<(), ConnError> {
        match self.link.on_frame(frame)? {
            Event::None | Event::ConnectionWindow => Ok(()),
            Event::Data { id, data, len, end_stream } => self.on_data(id, data, len, end_stream),
            Event::Block { id, block, end_stream, self_dependent } => {
                self.on_block(id, end_stream, self_dependent, &block)
            }
            Event::StreamError { id, code } => {
                self.reset(id, code);
                Ok(())
            }
            Event::Reset { id, .. } => {
                if id > self.last_id {
                    return Err(conn_error(PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if let Some(i) = self.index(id) {
                    if matches!(self.streams[i].out, Out::Waiting) {
                        self.resets_allowed -= 1;
                        if self.resets_allowed < 0 {
                            return Err(conn_error(
                                ENHANCE_YOUR_CALM,
                                "too many streams reset before their answer",
                            ));
                        }
                    }
                    self.remove(i);
                }
                self.remember_reset(id, false);
                Ok(())
            }
            // The agent pushes nothing, so the stream limit the client asks for holds already.
            Event::Settings { window_delta, .. } => {
                for s in &mut self.streams {
                    s.send_window += window_delta;
                    if s.send_window > MAX_WINDOW {
                        return Err(conn_error(FLOW_CONTROL_ERROR, "a stream's window past 2^31-1"));
                    }
                }
                Ok(())
            }
            Event::GoAway { .. } => {
                self.client_done = true;
                Ok(())
            }
            Event::PingAnswered { payload } => {
                if payload == LAST_CALL && self.ending == Some(Ending::Announced) {
                    self.go_away(NO_ERROR, Ending::Graceful, "every request sent has come");
                }
                Ok(())
            }
            Event::WindowUpdate { id, increment } => {
                if id > self.last_id {
                    return Err(conn_error(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
                }
                let Some(i) = self.index(id) else { return Ok(()) };
                let s = &mut self.streams[i];
                s.send_window += increment;
                if increment == 0 {
                    self.reset(id, PROTOCOL_ERROR);
                } else if s.send_window > MAX_WINDOW {
                    self.reset(id, FLOW_CONTROL_ERROR);
                }
                Ok(())
            }
        }
    }

    fn on_data(&mut self, id: u32, data: Bytes, len: i64, end: bool) -> Result<(), ConnError> {
        // All of a frame nobody will read is given back at once.
        let Some(i) = self.index(id).filter(|&i| self.streams[i].recv_open) else {
            self.link.unreleased += data.len() as i64;
            if id > self.last_id {
                return Err(conn_error(PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // RFC 9113 §5.1: after a reset the agent sent, frames may still be on their way;
            // after the client's own reset, or on a half-closed stream, DATA is a stream error;
            // on a stream both sides ended, a connection error.
            match self.recently_reset.iter().find(|(reset, _)| *reset == id) {
                Some((_, true)) => {}
                Some((_, false)) => self.reset(id, STREAM_CLOSED),
                None if self.index(id).is_some() => self.reset(id, STREAM_CLOSED),
                None => return Err(conn_error(STREAM_CLOSED, "DATA on a closed stream")),
            }
            return Ok(());
        };
        let s = &mut self.streams[i];
        s.received += data.len() as u64;
        if len > s.recv_window || s.content_length.is_some_and(|n| s.received > n || end && s.received != n) {
            self.link.unreleased += data.len() as i64;
            let code = if len > s.recv_window { FLOW_CONTROL_ERROR } else { PROTOCOL_ERROR };
            self.reset(id, code);
            return Ok(());
        }
        s.recv_window -= len;
        s.recv_open = !end;
        if let Some(inbox) = &s.inbox {
            let mut inbox = inbox.lock().expect("not poisoned");
            if inbox.dropped {
                self.link.unreleased += data.len() as i64;
            } else if !data.is_empty() {
                inbox.received.chunks.push_back(data);
            }
            inbox.received.ended = end;
            inbox.received.wake();
        } else if !data.is_empty() {
            s.held += data.len() as i64;
            s.early.push(data);
        }
        if end && matches!(s.out, Out::Done) {
            self.remove(i);
        }
        Ok(())
    }

    /// A whole header block: a request's head, or its trailers.
    fn on_block(
        &mut self,
        id: u32,
        end_stream: bool,
        self_dependent: bool,
        block: &[u8],
    ) -> Result<(), ConnError> {
        let existing = self.index(id);
        let mut fields =
            Fields::new(if existing.is_some() { Section::Trailers } else { Section::RequestHead });
        self.link.decode(block, &mut fields)?;
        if let Some(i) = existing {
            let s = &mut self.streams[i];
            if !s.recv_open {
                self.reset(id, STREAM_CLOSED);
            } else if !end_stream
                || fields.malformed.is_some()
                || fields.too_large
                || s.content_length.is_some_and(|n| n != s.received)
            {
                self.reset(id, PROTOCOL_ERROR);
            } else {
                s.recv_open = false;
                match &s.inbox {
                    Some(inbox) => {
                        let mut inbox = inbox.lock().expect("not poisoned");
                        inbox.received.trailers = Some(fields.headers);
                        inbox.received.ended = true;
                        inbox.received.wake();
                    }
                    None => s.early_trailers = Some(fields.headers),
                }
                if matches!(s.out, Out::Done) {
                    self.remove(i);
                }
            }
            return Ok(());
        }
        if id <= self.last_id {
            return match self.recently_reset.iter().find(|(reset, _)| *reset == id) {
                Some((_, true)) => Ok(()),
                Some((_, false)) => Err(conn_error(STREAM_CLOSED, "HEADERS on a stream the client reset")),
                // RFC 9113 §5.1.1: an identifier passed over is not to be used; one used is
                // a closed stream (§5.1).
                None if self.skipped.iter().any(|(first, last)| (*first..=*last).contains(&id)) => {
                    Err(conn_error(PROTOCOL_ERROR, "a stream opened out of order"))
                }
                None => Err(conn_error(STREAM_CLOSED, "HEADERS on a closed stream")),
            };
        }
        if id.is_multiple_of(2) {
            return Err(conn_error(PROTOCOL_ERROR, "a client opened an even-numbered stream"));
        }
        let expected = if self.last_id == 0 { 1 } else { self.last_id + 2 };
        if id > expected {
            if self.skipped.len() == REMEMBERED_SKIPS {
                self.skipped.pop_front();
            }
            self.skipped.push_back((expected, id - 2));
        }
        self.last_id = id;
        if matches!(self.ending, Some(Ending::Graceful | Ending::Now)) {
            // After GOAWAY: not processed, as GOAWAY's last stream told the client.
            return Ok(());
        }
        if self_dependent {
            self.reset(id, PROTOCOL_ERROR);
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            self.reset(id, REFUSED_STREAM);
            return Ok(());
        }
        if fields.too_large {
            // Answered at once, as HTTP/1.1's are.
            self.link.scratch.clear();
            hpack::encode_status(431, &mut self.link.scratch);
            self.link.write_block(id, true);
            if !end_stream {
                self.reset(id, NO_ERROR);
            }
            return Ok(());
        }
        let content_length = fields.content_length;
        let Some(request) = fields.into_request() else {
            self.reset(id, PROTOCOL_ERROR);
            return Ok(());
        };
        if end_stream && content_length.is_some_and(|n| n != 0) {
            self.reset(id, PROTOCOL_ERROR);
            return Ok(());
        }
        self.streams.push(Stream {
            id,
            head_request: request.method == http::Method::HEAD,
            request: Some(request),
            early: Vec::new(),
            early_trailers: None,
            held: 0,
            inbox: None,
            upload: None,
            recv_open: !end_stream,
            recv_window: STREAM_WINDOW,
            ungranted: 0,
            content_length,
            received: 0,
            abort: None,
            out: Out::Waiting,
            send_window: self.link.peer_initial_window,
        });
        Ok(())
    }

    /// The client sent no more: requests it had not finished cannot be, and are dropped.
    fn client_closed(&mut self) {
        (self.client_done, self.eof) = (true, true);
        let mut i = 0;
        while i < self.streams.len() {
            if self.streams[i].recv_open {
                self.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Starts the handlers of the requests read, each with its body whole if all of it came.
    fn start_answering(&mut self, cx: &Context<'_>) {
        for s in self.streams.iter_mut().filter(|s| s.request.is_some()) {
            let parts = s.request.take().expect("filtered");
            let body = if !s.recv_open && s.early_trailers.is_none() {
                match s.early.len() {
                    0 => Body::empty(),
                    1 => Body::whole(s.early.pop().expect("one")),
                    _ => Body::whole(s.early.concat()),
                }
            } else {
                let received = Received {
                    chunks: s.early.drain(..).collect(),
                    trailers: s.early_trailers.take(),
                    ended: !s.recv_open,
                    ..Received::default()
                };
                let inbox = Arc::new(Mutex::new(Inbox {
                    received,
                    connection: cx.waker().clone(),
                    released: 0,
                    dropped: false,
                }));
                // What came early is given back as the inbox is emptied.
                s.held = 0;
                s.inbox = Some(inbox.clone());
                let remaining = s.content_length.map(|n| n.saturating_sub(s.received));
                Body::streaming(RequestBody { inbox, remaining })
            };
            let body = if parts.extensions.get::<upgrade::Requested>().is_some() {
                s.upload = Some(body);
                Body::empty()
            } else {
                body
            };
            let (abort, registration) = AbortHandle::new_pair();
            let mut slot = self.spare_slots.pop().unwrap_or_else(|| Box::pin(None));
            let answer = (self.answer)(Request::from_parts(parts, body));
            slot.set(Some(Abortable::new(answer, registration)));
            self.answering.push(Answering { id: s.id, slot: Some(slot) });
            s.abort = Some(abort);
        }
    }

    /// Writes the head of the answer to stream `id`, and as much of its body as may go.
    fn respond(&mut self, id: u32, response: Response<Body>) {
        let Some(i) = self.index(id) else { return };
        let response = match self.streams[i].upload.take() {
            Some(upload) => upgrade::answer_on_stream(response, upload),
            None => response,
        };
        let (head, mut body) = response.into_parts();
        if self.streams[i].head_request {
            body = Body::empty();
        }
        self.link.scratch.clear();
        hpack::encode_status(head.status.as_u16(), &mut self.link.scratch);
        encode_fields(&head.headers, &mut self.link.scratch);
        spare_fields::give_back(head.headers);
        let end = body.is_end_stream();
        self.link.write_block(id, end);
        self.resets_allowed = (self.resets_allowed + 1).min(RESET_BUDGET);
        let s = &mut self.streams[i];
        s.abort = None;
        s.out = Out::Sending { body, pending: None };
        if end {
            self.finish(i);
        }
    }

    /// Sends what the answers' bodies have ready, as far as the windows allow.
    fn send_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        let mut busy = false;
        let mut i = 0;
        while i < self.streams.len() {
            if self.link.wire.len() - self.written >= HIGH_WATER {
                break;
            }
            let done = self.send_body(i, cx, &mut busy);
            if done && self.finish(i) {
                continue;
            }
            i += 1;
        }
        busy
    }

    /// Sends stream `i`'s body; true when it has ended (or failed).
    fn send_body(&mut self, i: usize, cx: &mut Context<'_>, busy: &mut bool) -> bool {
        loop {
            let s = &mut self.streams[i];
            let id = s.id;
            let Out::Sending { body, pending } = &mut s.out else { return false };
            let step = match pending {
                Some((data, last)) => {
                    let room = self.link.room(s.send_window);
                    if room <= 0 && !data.is_empty() {
                        if self.eof {
                            // No WINDOW_UPDATE can come from a client that has closed its side:
                            // the answer is given up rather than kept for ever.
                            s.recv_open = false;
                            return true;
                        }
                        return false;
                    }
                    let chunk = data.split_to((room.max(0) as usize).min(data.len()));
                    let end = *last && data.is_empty();
                    if data.is_empty() {
                        *pending = None;
                    }
                    s.send_window -= chunk.len() as i64;
                    Step::Data(chunk, end)
                }
                None => match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            let last = body.is_end_stream();
                            if !data.is_empty() || last {
                                *pending = Some((data, last));
                            }
                            Step::Again
                        }
                        Err(frame) => Step::Trailers(frame.into_trailers().unwrap_or_default()),
                    },
                    Poll::Ready(None) => Step::Data(Bytes::new(), true),
                    Poll::Ready(Some(Err(e))) => Step::Failed(e),
                },
            };
            *busy = true;
            match step {
                Step::Again => {}
                Step::Data(chunk, end) => {
                    self.link.send_window -= chunk.len() as i64;
                    frame_head(&mut self.link.wire, chunk.len(), DATA, if end { END_STREAM } else { 0 }, id);
                    self.link.wire.extend_from_slice(&chunk);
                    if end {
                        return true;
                    }
                    if self.link.wire.len() - self.written >= HIGH_WATER {
                        return false;
                    }
                }
                Step::Trailers(trailers) => {
                    self.link.scratch.clear();
                    encode_fields(&trailers, &mut self.link.scratch);
                    spare_fields::give_back(trailers);
                    self.link.write_block(id, true);
                    return true;
                }
                Step::Failed(e) => {
                    tracing::debug!(error = %e, "an answer's body failed; its stream is reset");
                    rst_stream(&mut self.link.wire, id, INTERNAL_ERROR);
                    self.remember_reset(id, true);
                    self.streams[i].recv_open = false;
                    return true;
                }
            }
        }
    }

    /// Stream `i` has sent all of its answer: it ends if the client has sent all of its
    /// request, or nobody reads the rest (the client is told to stop). True when it is gone.
    fn finish(&mut self, i: usize) -> bool {
        let s = &mut self.streams[i];
        s.out = Out::Done;
        let unread = s.inbox.as_ref().is_none_or(|inbox| inbox.lock().expect("not poisoned").dropped);
        if !s.recv_open {
            self.remove(i);
            true
        } else if unread {
            let id = s.id;
            self.reset(id, NO_ERROR);
            true
        } else {
            false
        }
    }

    /// Gives the client back the room the proxy has made by passing its bodies on.
    fn give_back_windows(&mut self) {
        for s in self.streams.iter_mut() {
            let Some(inbox) = &s.inbox else { continue };
            let released = std::mem::take(&mut inbox.lock().expect("not poisoned").released);
            self.link.unreleased += released;
            if s.recv_open {
                s.ungranted += released;
                give_back_stream(&mut self.link.wire, s.id, &mut s.ungranted, &mut s.recv_window);
            }
        }
        self.link.give_back();
    }

    /// Ends stream `id` with RST_STREAM.
    fn reset(&mut self, id: u32, code: u32) {
        rst_stream(&mut self.link.wire, id, code);
        if let Some(i) = self.index(id) {
            self.remove(i);
        }
        self.remember_reset(id, true);
    }

    fn remember_reset(&mut self, id: u32, by_agent: bool) {
        if self.recently_reset.len() == REMEMBERED_RESETS {
            self.recently_reset.pop_front();
        }
        self.recently_reset.push_back((id, by_agent));
    }

    /// Forgets stream `i`: its handler is stopped, its body's reader told why it ends
    /// (unless it ended), and what it held is given back to the connection's window.
    fn remove(&mut self, i: usize) {
        let s = self.streams.swap_remove(i);
        if let Some(abort) = s.abort {
            abort.abort();
        }
        self.link.unreleased += s.held;
        if let Some(inbox) = s.inbox {
            let mut inbox = inbox.lock().expect("not poisoned");
            self.link.unreleased += std::mem::take(&mut inbox.released) + inbox.received.unread();
            if !inbox.received.ended {
                inbox.received.chunks.clear();
                inbox.received.failed = Some(
                    "the client reset its HTTP/2 stream, or closed the connection, before the request's body ended"
                        .into(),
                );
            }
            inbox.dropped = true;
            inbox.received.wake();
        }
    }

    fn index(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    /// Begins a graceful end: GOAWAY with the highest stream identifier, and `LAST_CALL`; the
    /// final GOAWAY follows its answer.
    fn announce_end(&mut self) {
        goaway(&mut self.link.wire, MAX_STREAM_ID, NO_ERROR, b"");
        ping(&mut self.link.wire, 0, &LAST_CALL);
        self.ending = Some(Ending::Announced);
        let due = tokio::time::Instant::now() + LAST_CALL_WAIT;
        self.idle_due = Some(due);
        self.idle_timer.as_mut().reset(due);
    }

    /// Says GOAWAY: no stream past the last opened is taken.
    fn go_away(&mut self, code: u32, ending: Ending, why: &str) {
        let debug = if code == NO_ERROR { "" } else { why };
        goaway(&mut self.link.wire, self.last_id, code, debug.as_bytes());
        self.ending = Some(ending);
    }
}

/// What a stream's body gave when it was polled.
enum Step {
    /// Data taken into `pending`: sent on the next turn.
    Again,
    Data(Bytes, bool),
    Trailers(HeaderMap),
    Failed(BoxError),
}

/// A request body's frames between the connection, which fills it, and the proxy, which
/// empties it.
struct Inbox {
    received: Received,
    /// The connection's task, woken to give the client room again.
    connection: Waker,
    /// Bytes taken since the connection last looked.
    released: i64,
    /// The reader is gone (or the stream is): what arrives is given back unread.
    dropped: bool,
}

/// Taken between two wakes of the connection, past which it is woken to give the client
/// room again.
const RELEASE_BATCH: i64 = 64 * 1024;

struct RequestBody {
    inbox: Arc<Mutex<Inbox>>,
    /// What `content-length` says is still to come.
    remaining: Option<u64>,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut inbox = this.inbox.lock().expect("not poisoned");
        let polled = inbox.received.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            inbox.released += data.len() as i64;
            if inbox.released >= RELEASE_BATCH {
                inbox.connection.wake_by_ref();
            }
            if let Some(n) = &mut this.remaining {
                *n = n.saturating_sub(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inbox.lock().expect("not poisoned").received.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut inbox = self.inbox.lock().expect("not poisoned");
        inbox.dropped = true;
        let unread = inbox.received.unread();
        inbox.received.chunks.clear();
        inbox.released += unread;
        inbox.connection.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use http::HeaderValue;

    use super::*;

    /// Answers by path: `/hello` whole, `/echo` the request's body back as it streams,
    /// `/size` the size of the request's body, `/big` 1 MiB, `/trailers` gRPC-style, `/hang`
    /// never (counting the handlers dropped).
    fn answer(
        dropped: Arc<AtomicUsize>,
    ) -> impl FnMut(Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        move |req: Request<Body>| {
            let dropped = dropped.clone();
            Box::pin(async move {
                match req.uri().path() {
                    "/hello" => {
                        Response::builder().header("x-answer", "yes").body(Body::whole("hello")).unwrap()
                    }
                    "/echo" => Response::new(Body::Streaming(req.into_body().boxed())),
                    "/size" => {
                        let got = req.into_body().collect().await.map(|c| c.to_bytes().len());
                        Response::new(Body::whole(format!("{got:?}")))
                    }
                    "/big" => Response::new(Body::whole(vec![b'x'; 1 << 20])),
                    "/trailers" => {
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        let frames = [
                            Ok::<_, BoxError>(Frame::data(Bytes::from("reply"))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        Response::new(Body::streaming(StreamBody::new(tokio_stream::iter(frames))))
                    }
                    _ => {
                        struct Guard(Arc<AtomicUsize>);
                        impl Drop for Guard {
                            fn drop(&mut self) {
                                self.0.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        let _guard = Guard(dropped);
                        std::future::pending().await
                    }
                }
            })
        }
    }

    /// A server on one end of a pipe; the other end, and the drain switch.
    fn server()
    -> (DuplexStream, watch::Sender<bool>, Arc<AtomicUsize>, tokio::task::JoinHandle<anyhow::Result<()>>)
    {
        server_timing_out(Duration::from_secs(5))
    }

    fn server_timing_out(
        timeout: Duration,
    ) -> (DuplexStream, watch::Sender<bool>, Arc<AtomicUsize>, tokio::task::JoinHandle<anyhow::Result<()>>)
    {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (drain, draining) = watch::channel(false);
        let dropped = Arc::new(AtomicUsize::new(0));
        let served = tokio::spawn(serve(server, answer(dropped.clone()), timeout, draining));
        (client, drain, dropped, served)
    }

    async fn h2_client(io: DuplexStream, window: u32) -> h2::client::SendRequest<Bytes> {
        let (client, connection) =
            h2::client::Builder::new().initial_window_size(window).handshake::<_, Bytes>(io).await.unwrap();
        tokio::spawn(connection);
        client
    }

    async fn body_of(mut body: h2::RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
        let mut all = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            body.flow_control().release_capacity(data.len()).unwrap();
            all.extend_from_slice(&data);
        }
        (all, body.trailers().await.unwrap())
    }

    #[tokio::test]
    async fn an_h2_client_is_answered_whole_streamed_and_with_trailers_on_one_connection() {
        let (io, _drain, _, _) = server();
        let mut client = h2_client(io, 65_535).await;
        let hello = Request::get("http://svc.mesh/hello").body(()).unwrap();
        let (resp, _) = client.send_request(hello, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-answer"], "yes");
        assert_eq!(body_of(resp.into_body()).await.0, b"hello");

        // A body sent in pieces is echoed as it comes.
        let echo = Request::post("http://svc.mesh/echo").body(()).unwrap();
        let (resp, mut send) = client.send_request(echo, false).unwrap();
        send.send_data(Bytes::from("one "), false).unwrap();
        let resp = resp.await.unwrap();
        send.send_data(Bytes::from("two"), true).unwrap();
        assert_eq!(body_of(resp.into_body()).await.0, b"one two");

        let (resp, _) =
            client.send_request(Request::post("http://svc.mesh/trailers").body(()).unwrap(), true).unwrap();
        let (data, trailers) = body_of(resp.await.unwrap().into_body()).await;
        assert_eq!(data, b"reply");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn bodies_larger_than_every_window_pass_whole_both_ways() {
        let (io, _drain, _, _) = server();
        // The client offers 16 KiB a stream: the 1 MiB answer waits for its window updates.
        let mut client = h2_client(io, 16 * 1024).await;
        let (resp, _) =
            client.send_request(Request::get("http://svc.mesh/big").body(()).unwrap(), true).unwrap();
        let (data, _) = body_of(resp.await.unwrap().into_body()).await;
        assert_eq!(data.len(), 1 << 20);
        assert!(data.iter().all(|&b| b == b'x'));

        // 5 MiB up is more than the agent's stream and connection windows: it is given back
        // as the handler reads.
        let (resp, mut send) =
            client.send_request(Request::post("http://svc.mesh/size").body(()).unwrap(), false).unwrap();
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        for i in 0..80 {
            send.reserve_capacity(chunk.len());
            while send.capacity() < chunk.len() {
                std::future::poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
            }
            send.send_data(chunk.clone(), i == 79).unwrap();
        }
        let (data, _) = body_of(resp.await.unwrap().into_body()).await;
        assert_eq!(String::from_utf8(data).unwrap(), format!("Ok({})", 80 * 64 * 1024));
    }

    #[tokio::test]
    async fn many_streams_at_once_are_each_answered() {
        let (io, _drain, _, _) = server();
        let client = h2_client(io, 65_535).await;
        let calls = (0..100).map(|_| {
            let client = client.clone();
            async move {
                let client = client.ready().await.unwrap();
                let (resp, _) = client
                    .clone()
                    .send_request(Request::get("http://svc.mesh/hello").body(()).unwrap(), true)
                    .unwrap();
                body_of(resp.await.unwrap().into_body()).await.0
            }
        });
        for answer in futures::future::join_all(calls).await {
            assert_eq!(answer, b"hello");
        }
    }

    #[tokio::test]
    async fn a_stream_the_client_resets_stops_its_handler_and_the_connection_goes_on() {
        let (io, _drain, dropped, _) = server();
        let mut client = h2_client(io, 65_535).await;
        let (resp, mut send) =
            client.send_request(Request::get("http://svc.mesh/hang").body(()).unwrap(), false).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        send.send_reset(h2::Reason::CANCEL);
        drop(resp);
        tokio::time::timeout(Duration::from_secs(5), async {
            while dropped.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the handler of a reset stream is dropped");
        let (resp, _) =
            client.send_request(Request::get("http://svc.mesh/hello").body(()).unwrap(), true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn draining_says_goaway_answers_the_streams_begun_and_closes() {
        let (io, drain, _, served) = server();
        let mut client = h2_client(io, 65_535).await;
        let (resp, mut send) =
            client.send_request(Request::post("http://svc.mesh/echo").body(()).unwrap(), false).unwrap();
        send.send_data(Bytes::from("begun "), false).unwrap();
        let resp = resp.await.unwrap();
        drain.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        send.send_data(Bytes::from("and finished"), true).unwrap();
        assert_eq!(body_of(resp.into_body()).await.0, b"begun and finished");
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("closed after the drain")
            .unwrap()
            .unwrap();
    }

    // Raw frames, for what a well-behaved client never sends.

    fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [(":method", "GET"), (":scheme", "http"), (":authority", "svc"), (":path", path)]
            .into_iter()
            .chain(extra.iter().copied())
        {
            hpack::encode_field(name.as_bytes(), value.as_bytes(), false, &mut block);
        }
        block
    }

    /// A connection past its preface and SETTINGS.
    async fn raw() -> (DuplexStream, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let (mut io, drain, _, served) = server();
        std::mem::forget(drain);
        // In one write: the frames that come with the preface are not left unread.
        io.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).await.unwrap();
        (io, served)
    }

    async fn read_frame(io: &mut DuplexStream) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut head))
            .await
            .expect("a frame in time")
            .ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        io.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], u32::from_be_bytes([head[5], head[6], head[7], head[8]]), payload))
    }

    /// The first frame of `kind` the server sends (SETTINGS, WINDOW_UPDATE and the like skipped).
    async fn next_of(io: &mut DuplexStream, kind: u8) -> (u8, u32, Vec<u8>) {
        loop {
            let (k, flags, id, payload) = read_frame(io).await.expect("the connection still open");
            if k == kind {
                return (flags, id, payload);
            }
        }
    }

    async fn goaway_code(io: &mut DuplexStream) -> u32 {
        let (_, _, payload) = next_of(io, GOAWAY).await;
        u32::from_be_bytes(payload[4..8].try_into().unwrap())
    }

    /// A GOAWAY frame's last stream and error code.
    fn goaway_of(payload: &[u8]) -> (u32, u32) {
        let word = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().unwrap());
        (word(0), word(4))
    }

    #[tokio::test]
    async fn a_request_on_its_way_as_the_drain_begins_is_answered_and_the_last_goaway_names_it() {
        let (mut io, drain, _, served) = server();
        io.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).await.unwrap();
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/hello", &[])))
            .await
            .unwrap();
        assert_eq!(next_of(&mut io, HEADERS).await.1, 1);
        drain.send(true).unwrap();
        // First: no new request, but every stream may still come.
        let (_, _, first) = next_of(&mut io, GOAWAY).await;
        assert_eq!(goaway_of(&first), (MAX_STREAM_ID, NO_ERROR));
        let (flags, _, last_call) = next_of(&mut io, PING).await;
        assert_eq!(flags & ACK, 0);
        // A request the client sent before it read that GOAWAY, then its answer to the PING.
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &request_block("/hello", &[])))
            .await
            .unwrap();
        io.write_all(&frame(PING, ACK, 0, &last_call)).await.unwrap();
        let (mut answered, mut last) = (Vec::new(), None);
        while let Some((kind, _, id, payload)) = read_frame(&mut io).await {
            match kind {
                HEADERS => answered.push(id),
                GOAWAY => last = Some(goaway_of(&payload)),
                _ => {}
            }
        }
        assert_eq!(answered, [3], "the request sent as the drain began was answered");
        assert_eq!(last, Some((3, NO_ERROR)), "the last GOAWAY names the last stream taken");
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await.expect("closed");
        assert!(ended.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_client_that_leaves_the_last_call_unanswered_is_told_the_last_goaway_within_a_second() {
        let (mut io, drain, _, served) = server();
        io.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).await.unwrap();
        drain.send(true).unwrap();
        assert_eq!(goaway_of(&next_of(&mut io, GOAWAY).await.2), (MAX_STREAM_ID, NO_ERROR));
        let asked = std::time::Instant::now();
        assert_eq!(goaway_of(&next_of(&mut io, GOAWAY).await.2), (0, NO_ERROR));
        assert!(asked.elapsed() >= LAST_CALL_WAIT - Duration::from_millis(50), "{:?}", asked.elapsed());
        // A stream opened after it is not taken.
        let _ =
            io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/hello", &[]))).await;
        while let Some((kind, ..)) = read_frame(&mut io).await {
            assert_ne!(kind, HEADERS, "a stream past the last GOAWAY was answered");
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await.expect("closed");
        assert!(ended.unwrap().is_ok());
    }

    #[tokio::test]
    async fn breaches_of_the_protocol_end_the_connection_with_their_error_code() {
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            ("DATA on stream 0", frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
            ("a frame past 16 KiB", frame(DATA, 0, 1, &vec![0; MAX_FRAME + 1]), FRAME_SIZE_ERROR),
            ("PUSH_PROMISE", frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]), PROTOCOL_ERROR),
            (
                "an even stream",
                frame(HEADERS, END_HEADERS | END_STREAM, 2, &request_block("/hello", &[])),
                PROTOCOL_ERROR,
            ),
            ("a PING of 7 bytes", frame(PING, 0, 0, &[0; 7]), FRAME_SIZE_ERROR),
            (
                "a window past 2^31-1",
                frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
                FLOW_CONTROL_ERROR,
            ),
            ("a window update of 0", frame(WINDOW_UPDATE, 0, 0, &[0; 4]), PROTOCOL_ERROR),
            (
                "an HPACK index past the table",
                frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]),
                COMPRESSION_ERROR,
            ),
            ("CONTINUATION alone", frame(CONTINUATION, END_HEADERS, 1, &[0x82]), PROTOCOL_ERROR),
            ("SETTINGS_ENABLE_PUSH 2", frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]), PROTOCOL_ERROR),
            (
                "a SETTINGS_MAX_FRAME_SIZE too small",
                frame(SETTINGS, 0, 0, &[0, 5, 0, 0, 0x10, 0]),
                PROTOCOL_ERROR,
            ),
            ("RST_STREAM on an idle stream", frame(RST_STREAM, 0, 9, &[0, 0, 0, 8]), PROTOCOL_ERROR),
        ];
        for (what, bytes, code) in cases {
            let (mut io, served) = raw().await;
            io.write_all(&bytes).await.unwrap();
            assert_eq!(goaway_code(&mut io).await, code, "{what}");
            assert!(served.await.unwrap().is_err(), "{what}: the connection ends");
        }
        // A header block interrupted by another frame, and streams opened out of order.
        let (mut io, _) = raw().await;
        io.write_all(&frame(HEADERS, 0, 1, &request_block("/hello", &[]))).await.unwrap();
        io.write_all(&frame(PING, 0, 0, &[0; 8])).await.unwrap();
        assert_eq!(goaway_code(&mut io).await, PROTOCOL_ERROR);
        let (mut io, _) = raw().await;
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &request_block("/hello", &[])))
            .await
            .unwrap();
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &request_block("/hello", &[])))
            .await
            .unwrap();
        assert_eq!(goaway_code(&mut io).await, PROTOCOL_ERROR);
        // HEADERS on a stream both sides ended.
        let (mut io, _) = raw().await;
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/hello", &[])))
            .await
            .unwrap();
        next_of(&mut io, DATA).await;
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/hello", &[])))
            .await
            .unwrap();
        assert_eq!(goaway_code(&mut io).await, STREAM_CLOSED);
        // HEADERS on a stream the client reset itself.
        let (mut io, _) = raw().await;
        io.write_all(&frame(HEADERS, END_HEADERS, 1, &request_block("/hang", &[]))).await.unwrap();
        io.write_all(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes())).await.unwrap();
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/hello", &[])))
            .await
            .unwrap();
        assert_eq!(goaway_code(&mut io).await, STREAM_CLOSED);
        // The first frame must be SETTINGS.
        let (mut io, _, _, _) = server();
        io.write_all(PREFACE).await.unwrap();
        io.write_all(&frame(PING, 0, 0, &[0; 8])).await.unwrap();
        assert_eq!(goaway_code(&mut io).await, PROTOCOL_ERROR);
    }

    #[tokio::test]
    async fn a_malformed_request_resets_its_stream_and_the_next_is_answered() {
        let fields = |fields: &[(&str, &str)]| {
            let mut block = Vec::new();
            for (name, value) in fields {
                hpack::encode_field(name.as_bytes(), value.as_bytes(), false, &mut block);
            }
            block
        };
        let connect = [(":method", "CONNECT"), (":protocol", "websocket")];
        let malformed: Vec<(&str, Vec<u8>, u8)> = vec![
            ("a :protocol on a GET", request_block("/hello", &[(":protocol", "websocket")]), 0),
            (
                "an extended CONNECT without :path",
                fields(&[connect[0], connect[1], (":scheme", "http"), (":authority", "svc")]),
                0,
            ),
            (
                "an extended CONNECT without :scheme",
                fields(&[connect[0], connect[1], (":authority", "svc"), (":path", "/chat")]),
                0,
            ),
            (
                "two :protocol",
                fields(&[connect[0], connect[1], connect[1], (":scheme", "http"), (":path", "/chat")]),
                0,
            ),
            ("an uppercase name", request_block("/hello", &[("X-Up", "1")]), END_STREAM),
            ("a connection field", request_block("/hello", &[("connection", "close")]), END_STREAM),
            ("te other than trailers", request_block("/hello", &[("te", "gzip")]), END_STREAM),
            ("a value with a trailing space", request_block("/hello", &[("x-a", "b ")]), END_STREAM),
            ("an empty :path", request_block("", &[]), END_STREAM),
            (
                "two content-lengths",
                request_block("/size", &[("content-length", "4"), ("content-length", "8")]),
                0,
            ),
            ("a signed content-length", request_block("/size", &[("content-length", "+4")]), 0),
            ("a Host other than :authority", request_block("/hello", &[("host", "other")]), END_STREAM),
            (
                "a content-length no DATA meets",
                request_block("/size", &[("content-length", "3")]),
                END_STREAM,
            ),
            (
                "a pseudo-header after a field",
                {
                    let mut b = request_block("/hello", &[("x-a", "b")]);
                    hpack::encode_field(b":method", b"GET", false, &mut b);
                    b
                },
                END_STREAM,
            ),
        ];
        for (what, block, flags) in malformed {
            let (mut io, _) = raw().await;
            io.write_all(&frame(HEADERS, END_HEADERS | flags, 1, &block)).await.unwrap();
            let (_, id, payload) = next_of(&mut io, RST_STREAM).await;
            assert_eq!((id, payload), (1, PROTOCOL_ERROR.to_be_bytes().to_vec()), "{what}");
            io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &request_block("/hello", &[])))
                .await
                .unwrap();
            let (flags, id, _) = next_of(&mut io, HEADERS).await;
            assert_eq!((id, flags & END_HEADERS), (3, END_HEADERS), "{what}: the next stream is answered");
        }
        // DATA past what content-length said.
        let (mut io, _) = raw().await;
        io.write_all(&frame(HEADERS, END_HEADERS, 1, &request_block("/size", &[("content-length", "2")])))
            .await
            .unwrap();
        io.write_all(&frame(DATA, END_STREAM, 1, b"abc")).await.unwrap();
        let (_, id, payload) = next_of(&mut io, RST_STREAM).await;
        assert_eq!((id, payload), (1, PROTOCOL_ERROR.to_be_bytes().to_vec()));
    }

    #[tokio::test]
    async fn a_head_is_answered_without_content_and_data_on_an_ended_stream_ends_the_connection() {
        let (mut io, _) = raw().await;
        let mut head = Vec::new();
        for (name, value) in
            [(":method", "HEAD"), (":scheme", "http"), (":authority", "svc"), (":path", "/hello")]
        {
            hpack::encode_field(name.as_bytes(), value.as_bytes(), false, &mut head);
        }
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &head)).await.unwrap();
        let (flags, id, _) = next_of(&mut io, HEADERS).await;
        assert_eq!((flags & END_STREAM, id), (END_STREAM, 1), "a HEAD's answer carries no content");
        // Both sides ended stream 1: DATA on it is a connection error (RFC 9113 §5.1).
        io.write_all(&frame(DATA, 0, 1, b"late")).await.unwrap();
        loop {
            let (kind, _, id, payload) = read_frame(&mut io).await.expect("GOAWAY before the end");
            assert_ne!(kind, DATA, "no content for a HEAD");
            if kind == GOAWAY {
                assert_eq!(goaway_of(&payload).1, STREAM_CLOSED);
                break;
            }
            assert_eq!(id, 0);
        }
        // Repeated content-lengths of one number are one.
        let (mut io, _) = raw().await;
        let block = request_block("/size", &[("content-length", "2"), ("content-length", "2")]);
        io.write_all(&frame(HEADERS, END_HEADERS, 1, &block)).await.unwrap();
        io.write_all(&frame(DATA, END_STREAM, 1, b"ab")).await.unwrap();
        let (_, _, payload) = next_of(&mut io, DATA).await;
        assert_eq!(payload, b"Ok(2)");
    }

    #[tokio::test]
    async fn a_header_block_of_endless_empty_continuations_is_cut_off() {
        // A block split over many small frames is taken.
        let (mut io, _) = raw().await;
        let block = request_block("/hello", &[]);
        let mut wire = frame(HEADERS, 0, 1, &block[..1]);
        for (i, byte) in block[1..].iter().enumerate() {
            let last = i == block.len() - 2;
            wire.extend(frame(CONTINUATION, if last { END_HEADERS | END_STREAM } else { 0 }, 1, &[*byte]));
        }
        io.write_all(&wire).await.unwrap();
        assert_eq!(next_of(&mut io, HEADERS).await.1, 1);
        // The CONTINUATION flood: each frame counts, however little it carries.
        let (mut io, _) = raw().await;
        let mut flood = frame(HEADERS, 0, 1, &block);
        for _ in 0..1100 {
            flood.extend(frame(CONTINUATION, 0, 1, &[]));
        }
        let _ = io.write_all(&flood).await;
        assert_eq!(goaway_code(&mut io).await, ENHANCE_YOUR_CALM);
    }

    #[tokio::test]
    async fn a_client_resetting_streams_faster_than_they_are_answered_is_told_to_calm_down() {
        let (mut io, _) = raw().await;
        let opened_and_reset = |ids: std::ops::Range<u32>| -> Vec<u8> {
            ids.flat_map(|n| {
                let id = 2 * n + 1;
                [
                    frame(HEADERS, END_HEADERS | END_STREAM, id, &request_block("/hang", &[])),
                    frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()),
                ]
                .concat()
            })
            .collect()
        };
        let budget = RESET_BUDGET as u32;
        io.write_all(&opened_and_reset(0..budget)).await.unwrap();
        let hello = 2 * budget + 1;
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, hello, &request_block("/hello", &[])))
            .await
            .unwrap();
        let (_, id, _) = next_of(&mut io, HEADERS).await;
        assert_eq!(id, hello, "the whole budget spent, the connection still answers");
        // The answer earned one more reset; the second is one too many.
        io.write_all(&opened_and_reset(budget + 1..budget + 3)).await.unwrap();
        assert_eq!(goaway_code(&mut io).await, ENHANCE_YOUR_CALM);
    }

    #[tokio::test]
    async fn a_connection_left_without_a_stream_for_the_timeout_is_told_goaway_and_closed() {
        let timeout = Duration::from_millis(300);
        let (mut io, _drain, _, served) = server_timing_out(timeout);
        io.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).await.unwrap();
        // A stream still waiting for its answer holds the connection past the timeout.
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/hang", &[])))
            .await
            .unwrap();
        tokio::time::sleep(3 * timeout).await;
        io.write_all(&frame(PING, 0, 0, b"stillon?")).await.unwrap();
        assert_eq!(next_of(&mut io, PING).await, (ACK, 0, b"stillon?".to_vec()));
        // Without it, the connection is let go once the timeout has passed.
        io.write_all(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes())).await.unwrap();
        let left = std::time::Instant::now();
        assert_eq!(goaway_code(&mut io).await, NO_ERROR);
        assert!(left.elapsed() >= timeout - Duration::from_millis(50), "not before the timeout");
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await.expect("closed");
        assert!(ended.unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_answer_waiting_for_a_window_is_given_up_when_the_client_closes_its_side() {
        let (mut io, served) = raw().await;
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("/big", &[])))
            .await
            .unwrap();
        // The default window's worth comes; the rest would wait for a WINDOW_UPDATE.
        let mut got = 0;
        while got < DEFAULT_WINDOW as usize {
            let (_, id, payload) = next_of(&mut io, DATA).await;
            assert_eq!(id, 1);
            got += payload.len();
        }
        io.shutdown().await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(ended.is_ok(), "the connection's task still waits for a window that cannot come");
    }

    /// Random frames: in one case of three any type (and one unknown) with random flags,
    /// streams and payloads; in the others request heads, bodies, window updates and resets on
    /// the streams opened, which reach deeper states; now and then a byte of a payload flipped.
    /// Whatever comes, the server never panics: it goes on (a PING is answered) or ends the
    /// connection, and its task ends once the client has gone.
    #[tokio::test]
    async fn random_frames_never_panic_the_server_and_each_connection_goes_on_or_ends() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9113);
        let (mut went_on, mut ended) = (0, 0);
        for _ in 0..600 {
            let (mut io, served) = raw().await;
            let hostile = rng.random_range(0..3) == 0;
            let mut wire = Vec::new();
            let mut opened = 0u32;
            for _ in 0..rng.random_range(1..10) {
                let kind = match rng.random_range(0..8) {
                    _ if hostile && rng.random() => rng.random_range(0..=CONTINUATION + 1),
                    0..3 => HEADERS,
                    3 | 4 => DATA,
                    5 | 6 => WINDOW_UPDATE,
                    _ => RST_STREAM,
                };
                let flags = match rng.random_range(0..3) {
                    _ if hostile && rng.random() => rng.random(),
                    0 => END_HEADERS | END_STREAM,
                    _ => END_HEADERS,
                };
                let id = match kind {
                    _ if hostile && rng.random() => rng.random_range(0..16),
                    HEADERS => {
                        opened += 1;
                        2 * opened - 1
                    }
                    WINDOW_UPDATE if rng.random() => 0,
                    _ => 2 * rng.random_range(0..opened.max(1)) + 1,
                };
                let mut payload: Vec<u8> = match kind {
                    _ if hostile && rng.random() => {
                        (0..rng.random_range(0..40)).map(|_| rng.random()).collect()
                    }
                    HEADERS | CONTINUATION => {
                        let path = ["/hello", "/echo", "/size", "/trailers", "/big"][rng.random_range(0..5)];
                        request_block(path, &[("content-length", "4")][..rng.random_range(0..2)])
                    }
                    WINDOW_UPDATE => rng.random_range(1u32..1 << 20).to_be_bytes().into(),
                    RST_STREAM => CANCEL.to_be_bytes().into(),
                    _ => (0..rng.random_range(0..40)).map(|_| rng.random()).collect(),
                };
                if hostile && !payload.is_empty() && rng.random() {
                    let at = rng.random_range(0..payload.len());
                    payload[at] = rng.random();
                }
                wire.extend(frame(kind, flags, id, &payload));
            }
            wire.extend(frame(PING, 0, 0, b"stillon?"));
            // The server may have closed before all of it was written.
            let _ = io.write_all(&wire).await;
            loop {
                match read_frame(&mut io).await {
                    Some((PING, ACK, 0, payload)) if payload == b"stillon?" => break went_on += 1,
                    Some((GOAWAY, ..)) | None => break ended += 1,
                    Some(_) => {}
                }
            }
            drop(io);
            let result = tokio::time::timeout(Duration::from_secs(5), served)
                .await
                .expect("the connection's task ends once the client has gone");
            assert!(result.is_ok(), "the server panicked: {result:?}");
        }
        // Both outcomes were met, many times each.
        assert!(went_on > 100 && ended > 100, "went on {went_on}, ended {ended}");
    }

    #[tokio::test]
    async fn pings_are_answered_and_padding_and_continuation_are_understood() {
        let (mut io, _) = raw().await;
        io.write_all(&frame(PING, 0, 0, b"12345678")).await.unwrap();
        assert_eq!(next_of(&mut io, PING).await, (ACK, 0, b"12345678".to_vec()));
        // A padded HEADERS with its block split over a CONTINUATION, then a padded body.
        let block = request_block("/size", &[]);
        let (first, rest) = block.split_at(3);
        let mut padded = vec![4];
        padded.extend_from_slice(first);
        padded.extend_from_slice(&[0; 4]);
        io.write_all(&frame(HEADERS, PADDED, 1, &padded)).await.unwrap();
        io.write_all(&frame(CONTINUATION, END_HEADERS, 1, rest)).await.unwrap();
        io.write_all(&frame(DATA, PADDED | END_STREAM, 1, &[2, b'h', b'i', 0, 0])).await.unwrap();
        next_of(&mut io, HEADERS).await;
        let (flags, id, payload) = next_of(&mut io, DATA).await;
        assert_eq!((flags, id, payload), (END_STREAM, 1, b"Ok(2)".to_vec()));
    }

    #[tokio::test]
    async fn after_the_clients_goaway_its_streams_begun_are_finished_then_the_connection_closes() {
        let (mut io, served) = raw().await;
        io.write_all(&frame(HEADERS, END_HEADERS, 1, &request_block("/size", &[]))).await.unwrap();
        io.write_all(&frame(GOAWAY, 0, 0, &[0; 8])).await.unwrap();
        io.write_all(&frame(DATA, END_STREAM, 1, b"late")).await.unwrap();
        let (flags, id, payload) = next_of(&mut io, DATA).await;
        assert_eq!((flags, id, payload), (END_STREAM, 1, b"Ok(4)".to_vec()));
        tokio::time::timeout(Duration::from_secs(5), served).await.expect("closed").unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_answer_done_before_a_body_nobody_reads_tells_the_client_to_stop_sending() {
        let (mut io, _) = raw().await;
        io.write_all(&frame(HEADERS, END_HEADERS, 1, &request_block("/hello", &[]))).await.unwrap();
        let (flags, id, _) = next_of(&mut io, DATA).await;
        assert_eq!((flags, id), (END_STREAM, 1));
        let (_, id, payload) = next_of(&mut io, RST_STREAM).await;
        assert_eq!((id, payload), (1, NO_ERROR.to_be_bytes().to_vec()));
        // What was on its way is ignored (no second reset), and the connection goes on.
        io.write_all(&frame(DATA, 0, 1, b"unread")).await.unwrap();
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &request_block("/hello", &[])))
            .await
            .unwrap();
        let (kind, flags, id, _) = read_frame(&mut io).await.unwrap();
        assert_eq!((kind, flags & END_HEADERS, id), (HEADERS, END_HEADERS, 3));
        let (flags, id, payload) = next_of(&mut io, DATA).await;
        assert_eq!((flags, id, payload), (END_STREAM, 3, b"hello".to_vec()));
    }

    #[tokio::test]
    async fn a_client_that_sends_no_preface_in_time_is_cut_off() {
        let (_io, server) = tokio::io::duplex(1024);
        let (_drain, draining) = watch::channel(false);
        let dropped = Arc::new(AtomicUsize::new(0));
        let served = serve(server, answer(dropped), Duration::from_millis(100), draining);
        let err = tokio::time::timeout(Duration::from_secs(5), served).await.expect("cut off").unwrap_err();
        assert!(err.to_string().contains("no HTTP/2 preface"), "{err}");
    }
}
