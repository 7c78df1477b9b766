//! The agent's HTTP/2 client (gRPC and other h2 clusters): one multiplexed connection per
//! destination, whose frames a task of its own reads and writes. A request's own task writes
//! its HEADERS, and its body's DATA as the windows allow, straight into the connection's
//! outgoing bytes, and takes its answer's frames from its stream, all under the connection's
//! one lock: no channel, queue or task per request between. (The h2 crate's client, used
//! before, took a third of the agent's instructions per gRPC call: BENCHMARKS.md.)
//! `h2_wire.rs` has the wire format.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::Response;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tower::BoxError;

use crate::h2_wire::*;
use crate::hpack;
use crate::http1_codec::MAX_HEAD_BYTES;
use crate::http1_pool::{Destination, PoolError, Upstream};
use crate::{spare_fields, upgrade};

/// Streams opened on a connection before the server has said how many it takes: one, so that
/// a server whose limit is low never has to refuse one.
const INITIAL_MAX_STREAMS: usize = 1;

/// Open connections per destination, shared by every request to it: one, and another
/// whenever all there are carry as many streams as their server takes (as Envoy's pool does;
/// a request does not wait behind long-lived streams).
pub(crate) struct H2Pool {
    connections: Mutex<Connections>,
    idle: Duration,
}

#[derive(Default)]
struct Connections {
    open: Vec<Open>,
    /// Connections being opened, and what became of each: the requests that come meanwhile
    /// wait for one rather than open their own, as many as it is expected to take.
    opening: Vec<Pending>,
    /// Tells the connections being opened apart.
    next_pending: u64,
}

/// A connection being opened.
struct Pending {
    id: u64,
    to: Destination,
    opened: watch::Receiver<Option<Opened>>,
    /// Requests it may still take: as many streams as the last connection to its destination
    /// took (unbounded while none has said; the first requests to a destination share one).
    room: usize,
}

type Opened = Result<Arc<Connection>, PoolError>;

struct Open {
    to: Destination,
    conn: Arc<Connection>,
    last_used: Instant,
}

impl H2Pool {
    /// Connections unused for `idle` are let go at the next request (a connection closes when
    /// the pool and its last stream have let it go).
    pub fn new(idle: Duration) -> H2Pool {
        H2Pool { connections: Mutex::default(), idle }
    }

    /// Sends the request `head` and `body` to `to` over its connection, opened with `connect`
    /// when there is none or the one there was has closed. The URI must hold the scheme and
    /// authority. A request held whole (or without a body) that the upstream turns away before
    /// acting on it goes once more (on a new connection when the old one is going away):
    /// nothing of it is lost.
    pub async fn send<C, F>(
        &self,
        to: Destination,
        mut connect: C,
        head: &http::request::Parts,
        mut body: crate::body::Body,
    ) -> Result<Response<H2Body>, PoolError>
    where
        C: FnMut() -> F,
        F: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        let mut again = body.copy();
        loop {
            match self.attempt(&to, &mut connect, head, body).await {
                Err(PoolError::Unprocessed(why)) if again.is_some() => {
                    tracing::debug!(upstream = %to.addr, %why, "request turned away unprocessed; sent again");
                    body = again.take().expect("checked");
                }
                answered => return answered,
            }
        }
    }

    async fn attempt<C, F>(
        &self,
        to: &Destination,
        connect: &mut C,
        head: &http::request::Parts,
        body: crate::body::Body,
    ) -> Result<Response<H2Body>, PoolError>
    where
        C: FnMut() -> F,
        F: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        if body.is_end_stream() {
            let stream = self.open(to, connect, head, true).await?;
            stream.conn.wake_task();
            let head = stream.head().await?;
            return Ok(Response::from_parts(head, H2Body { stream }));
        }
        let stream = self.open(to, connect, head, false).await?;
        let mut pipe = Pipe { conn: stream.conn.clone(), id: stream.id, body, pending: None };
        // The body's first frames leave with the head when they are ready at once.
        let piped = poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx))).await;
        stream.conn.wake_task();
        let head = match piped {
            Poll::Ready(piped) => {
                piped.map_err(|e| stream.body_failed(e))?;
                stream.head().await
            }
            Poll::Pending => {
                tokio::select! {
                    biased;
                    piped = &mut pipe => {
                        piped.map_err(|e| stream.body_failed(e))?;
                        stream.head().await
                    }
                    head = stream.head() => {
                        // The answer began before the request ended (a stream both ways): the
                        // rest of the request goes on beside it.
                        tokio::spawn(async move {
                            if let Err(e) = pipe.await {
                                tracing::debug!(error = %e, "request body to an HTTP/2 upstream ended early");
                            }
                        });
                        head
                    }
                }
            }
        }?;
        Ok(Response::from_parts(head, H2Body { stream }))
    }

    /// A new stream for `head` on a connection to `to` with room for it, or on one `connect`
    /// opens when there is none.
    async fn open<C, F>(
        &self,
        to: &Destination,
        connect: &mut C,
        head: &http::request::Parts,
        end: bool,
    ) -> Result<StreamRef, PoolError>
    where
        C: FnMut() -> F,
        F: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        // One that closed since it was looked at is let go before anything of the request is
        // sent, and another opened.
        if let Some(conn) = self.cached(to) {
            match conn.open(head, end).await {
                Ok(stream) => return Ok(stream),
                Err(_) => self.forget(&conn),
            }
        }
        // Out of line: the state of opening a connection is not carried by every request.
        Box::pin(self.connect(to.clone(), connect)).await?.open(head, end).await
    }

    fn lock(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock().expect("not poisoned")
    }

    /// A connection to `to` with room for a stream (or whose server has not yet said how many
    /// it takes); those unused for `idle` are let go on the way.
    fn cached(&self, to: &Destination) -> Option<Arc<Connection>> {
        let mut connections = self.lock();
        let now = Instant::now();
        connections.open.retain(|c| now.duration_since(c.last_used) < self.idle);
        let open = connections.open.iter_mut().find(|c| c.to == *to && c.conn.has_room())?;
        open.last_used = now;
        Some(open.conn.clone())
    }

    fn forget(&self, conn: &Arc<Connection>) {
        self.lock().open.retain(|c| !Arc::ptr_eq(&c.conn, conn));
    }

    /// The connection being opened to `to`, or a new one opened with `connect` for this request
    /// and every other that comes before it is open.
    async fn connect<C, F>(&self, to: Destination, connect: C) -> Opened
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        let (id, told) = loop {
            let mut waiting = {
                let mut connections = self.lock();
                match connections.opening.iter_mut().find(|p| p.to == to && p.room > 0) {
                    Some(pending) => {
                        pending.room -= 1;
                        pending.opened.clone()
                    }
                    None => {
                        let limit =
                            connections.open.iter().filter(|c| c.to == to).find_map(|c| c.conn.limit());
                        let (told, opened) = watch::channel(None);
                        let id = connections.next_pending;
                        connections.next_pending += 1;
                        let room = limit.map_or(usize::MAX, |n| n.saturating_sub(1));
                        connections.opening.push(Pending { id, to: to.clone(), opened, room });
                        break (id, told);
                    }
                }
            };
            // Closed without a word when the request opening it was dropped: then this one
            // opens it.
            if let Ok(opened) = waiting.wait_for(Option::is_some).await {
                return opened.clone().expect("waited for");
            }
        };
        let opening = Opening { pool: self, id, to, told };
        let opened = connect().await.map(|io| Connection::start(io, opening.to.addr));
        if let Ok(conn) = &opened {
            let mut connections = self.lock();
            connections.open.push(Open {
                to: opening.to.clone(),
                conn: conn.clone(),
                last_used: Instant::now(),
            });
        }
        opening.told.send_replace(Some(opened.clone()));
        opened
    }
}

/// A connection a request opens for all: once it is open or has failed, or the request is
/// dropped, requests to its destination no longer wait for it.
struct Opening<'a> {
    pool: &'a H2Pool,
    id: u64,
    to: Destination,
    told: watch::Sender<Option<Opened>>,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.pool.lock().opening.retain(|p| p.id != self.id);
    }
}

/// A connection's state, shared by its task and the requests on it.
struct Connection {
    state: Mutex<State>,
}

struct State {
    /// The connection's state beside its streams; its task writes `link.wire`.
    link: Link,
    /// The connection's task, woken when `link.wire` has frames or the connection should close.
    task: Option<Waker>,
    streams: Vec<Stream>,
    next_id: u32,
    /// The server's stream limit (`INITIAL_MAX_STREAMS` until its first SETTINGS).
    max_streams: usize,
    /// The server's first SETTINGS has come.
    settled: bool,
    /// Requests waiting for a stream to be free.
    opening: Vec<Waker>,
    /// The server said GOAWAY: no new streams.
    going_away: bool,
    /// Why the connection can carry nothing more.
    closed: Option<String>,
}

struct Stream {
    id: u32,
    head: Head,
    /// The answer's body as it came; the request's task also waits on it for the head.
    answer: Received,
    /// The request's body is still being sent.
    sending: bool,
    /// The server turned the stream away without acting on it.
    unprocessed: bool,
    /// The request's own body failed.
    request_failed: bool,
    /// The request body's pipe, waiting for room.
    sender: Option<Waker>,
    send_window: i64,
    recv_window: i64,
    ungranted: i64,
    content_length: Option<u64>,
    received: u64,
}

impl Stream {
    /// Either side still has something to send.
    fn unfinished(&self) -> bool {
        !self.answer.ended || self.sending
    }

    /// Why the stream failed, once it has.
    fn failure(&self) -> Option<PoolError> {
        let why = self.answer.failed.clone()?;
        Some(if self.request_failed {
            PoolError::Request(why)
        } else if self.unprocessed {
            PoolError::Unprocessed(why)
        } else {
            PoolError::Http(why)
        })
    }
}

enum Head {
    Waiting,
    Arrived(http::response::Parts),
    Taken,
}

impl Connection {
    /// Writes the preface and the agent's settings to `io` and starts the connection's task.
    fn start(io: Box<dyn Upstream>, addr: std::net::SocketAddr) -> Arc<Connection> {
        let ours = [
            (ENABLE_PUSH, 0),
            (INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
            (MAX_HEADER_LIST_SIZE, MAX_HEAD_BYTES as u32),
        ];
        let conn = Arc::new(Connection {
            state: Mutex::new(State {
                link: Link::new(true, &ours),
                task: None,
                streams: Vec::new(),
                next_id: 1,
                max_streams: INITIAL_MAX_STREAMS,
                settled: false,
                opening: Vec::new(),
                going_away: false,
                closed: None,
            }),
        });
        let mut driver =
            Driver { conn: Arc::downgrade(&conn), io, read: BytesMut::new(), out: Vec::new(), written: 0 };
        tokio::spawn(async move {
            if let Err(why) = poll_fn(|cx| driver.poll(cx)).await {
                tracing::debug!(upstream = %addr, error = %why, "HTTP/2 connection closed");
            }
        });
        conn
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// The server's stream limit, once it has said.
    fn limit(&self) -> Option<usize> {
        let state = self.lock();
        state.settled.then_some(state.max_streams)
    }

    /// It can take another stream now, or may once its server has said how many it takes; not
    /// when it is closing.
    fn has_room(&self) -> bool {
        let state = self.lock();
        state.refusing().is_none() && (!state.settled || state.streams.len() < state.max_streams)
    }

    fn wake_task(&self) {
        if let Some(task) = &self.lock().task {
            task.wake_by_ref();
        }
    }

    /// Opens a stream for `head`, waiting while the server's stream limit is reached (and,
    /// for an extended CONNECT, until the server has said whether it takes one), and writes
    /// its HEADERS (the caller wakes the task).
    async fn open(self: &Arc<Self>, head: &http::request::Parts, end: bool) -> Result<StreamRef, PoolError> {
        let extended = head.extensions.get::<upgrade::Requested>().is_some();
        poll_fn(|cx| {
            let mut state = self.lock();
            // Nothing of the request has been sent.
            if let Some(why) = state.refusing() {
                return Poll::Ready(Err(PoolError::Unprocessed(why.to_owned())));
            }
            if extended && !state.settled {
                state.opening.push(cx.waker().clone());
                return Poll::Pending;
            }
            if extended && !state.link.peer_extended_connect {
                return Poll::Ready(Err(PoolError::Http(
                    "the upstream's HTTP/2 server does not take extended CONNECT (RFC 8441), which a protocol switch over HTTP/2 needs".into(),
                )));
            }
            if state.streams.len() >= state.max_streams {
                state.opening.push(cx.waker().clone());
                return Poll::Pending;
            }
            let id = state.next_id;
            state.next_id += 2;
            state.link.scratch.clear();
            encode_request_head(head, &mut state.link.scratch);
            state.link.write_block(id, end);
            let send_window = state.link.peer_initial_window;
            state.streams.push(Stream {
                id,
                head: Head::Waiting,
                answer: Received::default(),
                sending: !end,
                unprocessed: false,
                request_failed: false,
                sender: None,
                send_window,
                recv_window: STREAM_WINDOW,
                ungranted: 0,
                content_length: None,
                received: 0,
            });
            Poll::Ready(Ok(StreamRef { conn: self.clone(), id }))
        })
        .await
    }
}

impl Drop for Connection {
    /// Nobody holds the connection any more: its task closes it.
    fn drop(&mut self) {
        if let Some(task) = self.state.get_mut().ok().and_then(|s| s.task.take()) {
            task.wake();
        }
    }
}

/// `head` as HTTP/2 pseudo-headers and fields; a protocol switch asked for as an extended
/// CONNECT's `:protocol`.
fn encode_request_head(head: &http::request::Parts, dst: &mut Vec<u8>) {
    hpack::encode_field(b":method", head.method.as_str().as_bytes(), false, dst);
    if let Some(upgrade::Requested(protocol)) = head.extensions.get() {
        hpack::encode_field(b":protocol", protocol.as_bytes(), false, dst);
    }
    hpack::encode_field(b":scheme", head.uri.scheme_str().unwrap_or("http").as_bytes(), false, dst);
    if let Some(authority) = head.uri.authority() {
        hpack::encode_field(b":authority", authority.as_str().as_bytes(), false, dst);
    }
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    hpack::encode_field(b":path", path.as_bytes(), false, dst);
    encode_fields(&head.headers, dst);
}

impl State {
    /// Why no new stream can be opened, when none can.
    fn refusing(&self) -> Option<&str> {
        match &self.closed {
            Some(why) => Some(why),
            None if self.going_away || self.next_id > MAX_STREAM_ID => {
                Some("the upstream is closing the connection")
            }
            None => None,
        }
    }

    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    /// Fails every stream and the connection.
    fn fail(&mut self, why: String) {
        for s in &mut self.streams {
            if s.answer.failed.is_none() && s.unfinished() {
                s.answer.failed = Some(why.clone());
            }
            s.answer.wake();
            wake(&mut s.sender);
        }
        for w in self.opening.drain(..) {
            w.wake();
        }
        self.closed.get_or_insert(why);
    }

    /// Ends stream `id` for a breach of the protocol on it.
    fn reset(&mut self, id: u32, code: u32, why: &str) {
        rst_stream(&mut self.link.wire, id, code);
        if let Some(s) = self.stream(id) {
            s.answer.failed = Some(format!("the upstream broke HTTP/2 on its stream: {why}"));
            s.answer.wake();
            wake(&mut s.sender);
        }
    }

    /// What a frame means for the streams, once `Link` has kept the connection's rules.
    fn on_frame(&mut self, frame: RawFrame) -> Result<(), ConnError> {
        match self.link.on_frame(frame)? {
            // The agent's client sends no PING of its own.
            Event::None | Event::PingAnswered { .. } => Ok(()),
            Event::Data { id, data, len, end_stream } => self.on_data(id, data, len, end_stream),
            Event::Block { id, block, end_stream, .. } => self.on_block(id, end_stream, &block),
            Event::StreamError { id, code } => {
                self.reset(id, code, "a malformed PRIORITY");
                Ok(())
            }
            Event::Reset { id, code } => {
                if id >= self.next_id {
                    return Err(conn_error(PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if let Some(s) = self.stream(id) {
                    if code == NO_ERROR && s.answer.ended {
                        // The answer is whole: the server wants no more of the request.
                        s.sending = false;
                    } else if s.answer.failed.is_none() {
                        s.unprocessed = code == REFUSED_STREAM;
                        s.answer.failed = Some(match code {
                            REFUSED_STREAM => "the upstream refused the stream".into(),
                            code => format!("the upstream reset the stream (HTTP/2 error {code:#x})"),
                        });
                    }
                    s.answer.wake();
                    wake(&mut s.sender);
                }
                Ok(())
            }
            Event::Settings { window_delta, max_streams, first } => {
                for s in &mut self.streams {
                    s.send_window += window_delta;
                    if s.send_window > MAX_WINDOW {
                        return Err(conn_error(FLOW_CONTROL_ERROR, "a stream's window past 2^31-1"));
                    }
                    wake(&mut s.sender);
                }
                // A first SETTINGS without a limit lifts the one kept until it came.
                self.settled |= first;
                if max_streams.is_some() || first {
                    self.max_streams = max_streams.map_or(usize::MAX, |n| n as usize);
                    for w in self.opening.drain(..) {
                        w.wake();
                    }
                }
                Ok(())
            }
            Event::GoAway { last_id } => {
                self.going_away = true;
                for s in self.streams.iter_mut().filter(|s| s.id > last_id && s.answer.failed.is_none()) {
                    s.unprocessed = true;
                    s.answer.failed = Some("the upstream refused the stream (GOAWAY)".into());
                    s.answer.wake();
                    wake(&mut s.sender);
                }
                for w in self.opening.drain(..) {
                    w.wake();
                }
                Ok(())
            }
            Event::ConnectionWindow => {
                for s in &mut self.streams {
                    wake(&mut s.sender);
                }
                Ok(())
            }
            Event::WindowUpdate { id, increment } => {
                let Some(s) = self.stream(id) else { return Ok(()) };
                s.send_window += increment;
                wake(&mut s.sender);
                if increment == 0 {
                    self.reset(id, PROTOCOL_ERROR, "a WINDOW_UPDATE of 0");
                } else if s.send_window > MAX_WINDOW {
                    self.reset(id, FLOW_CONTROL_ERROR, "a window past 2^31-1");
                }
                Ok(())
            }
        }
    }

    fn on_data(&mut self, id: u32, data: Bytes, len: i64, end: bool) -> Result<(), ConnError> {
        if id >= self.next_id {
            return Err(conn_error(PROTOCOL_ERROR, "DATA on an idle stream"));
        }
        let open = self.stream(id).filter(|s| !s.answer.ended && s.answer.failed.is_none());
        let Some(s) = open else {
            // A stream the agent has let go of: what was on its way is dropped (RFC 9113 §6.4).
            self.link.unreleased += data.len() as i64;
            return Ok(());
        };
        s.received += data.len() as u64;
        let breach = if !matches!(s.head, Head::Arrived(_) | Head::Taken) {
            Some((PROTOCOL_ERROR, "DATA before the answer's head"))
        } else if len > s.recv_window {
            Some((FLOW_CONTROL_ERROR, "DATA past the stream's window"))
        } else if s.content_length.is_some_and(|n| s.received > n) {
            // Past it only: an answer to HEAD, or a 304, declares a length it does not carry.
            Some((PROTOCOL_ERROR, "DATA past what content-length said"))
        } else {
            None
        };
        if let Some((code, why)) = breach {
            self.link.unreleased += data.len() as i64;
            self.reset(id, code, why);
            return Ok(());
        }
        s.recv_window -= len;
        s.answer.ended = end;
        if !data.is_empty() {
            s.answer.chunks.push_back(data);
        }
        s.answer.wake();
        Ok(())
    }

    /// A whole header block: an answer's head (or an interim one, passed over), or its trailers.
    fn on_block(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let trailers = self.stream(id).is_some_and(|s| !matches!(s.head, Head::Waiting));
        let mut fields = Fields::new(if trailers { Section::Trailers } else { Section::ResponseHead });
        self.link.decode(block, &mut fields)?;
        if id >= self.next_id || id.is_multiple_of(2) {
            return Err(conn_error(PROTOCOL_ERROR, "HEADERS on a stream the agent did not open"));
        }
        let Some(s) = self.stream(id).filter(|s| !s.answer.ended && s.answer.failed.is_none()) else {
            return Ok(());
        };
        if fields.too_large {
            self.reset(id, CANCEL, "an answer's head past 64 KiB");
            return Ok(());
        }
        if trailers {
            if !end_stream || fields.malformed.is_some() {
                self.reset(id, PROTOCOL_ERROR, "malformed trailers");
                return Ok(());
            }
            s.answer.trailers = Some(fields.headers);
            s.answer.ended = true;
            s.answer.wake();
            return Ok(());
        }
        let content_length = fields.content_length;
        let Some(head) = fields.into_response() else {
            self.reset(id, PROTOCOL_ERROR, "a malformed answer's head");
            return Ok(());
        };
        if head.status.is_informational() {
            // An interim answer (100, 103): the final one follows; 101 has no place in HTTP/2.
            if end_stream || head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                self.reset(id, PROTOCOL_ERROR, "an interim answer that ends the stream");
            }
            return Ok(());
        }
        s.content_length = content_length;
        s.head = Head::Arrived(head);
        s.answer.ended = end_stream;
        s.answer.wake();
        Ok(())
    }
}

fn wake(waiting: &mut Option<Waker>) {
    if let Some(w) = waiting.take() {
        w.wake();
    }
}

/// A request's hold on its stream: dropped before the answer has all come (or while the
/// request is still being sent), the stream is cancelled.
pub(crate) struct StreamRef {
    conn: Arc<Connection>,
    id: u32,
}

impl StreamRef {
    /// The answer's head, once it comes.
    async fn head(&self) -> Result<http::response::Parts, PoolError> {
        poll_fn(|cx| {
            let mut state = self.conn.lock();
            let Some(s) = state.stream(self.id) else {
                return Poll::Ready(Err(PoolError::Http("the stream is gone".into())));
            };
            if let Head::Arrived(_) = s.head {
                let Head::Arrived(head) = std::mem::replace(&mut s.head, Head::Taken) else {
                    unreachable!("matched")
                };
                return Poll::Ready(Ok(head));
            }
            if let Some(failed) = s.failure() {
                return Poll::Ready(Err(failed));
            }
            s.answer.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Why sending `body` failed: the stream's failure when it has one (the upstream turned
    /// it away unprocessed, say), else the body's own.
    fn body_failed(&self, body: BoxError) -> PoolError {
        let mut state = self.conn.lock();
        let failed = state.stream(self.id).and_then(|s| s.failure());
        failed.unwrap_or_else(|| PoolError::Http(format!("request body: {body}")))
    }
}

impl Drop for StreamRef {
    fn drop(&mut self) {
        let mut state = self.conn.lock();
        let Some(at) = state.streams.iter().position(|s| s.id == self.id) else { return };
        let s = state.streams.swap_remove(at);
        state.link.unreleased += s.answer.unread();
        let cancelled = s.unfinished() && s.answer.failed.is_none() && state.closed.is_none();
        if cancelled {
            rst_stream(&mut state.link.wire, s.id, CANCEL);
        }
        let given_back = state.link.give_back();
        for w in state.opening.drain(..) {
            w.wake();
        }
        // The task has something to write, or a connection the server is closing to close.
        if (cancelled || given_back || state.going_away && state.streams.is_empty())
            && let Some(task) = &state.task
        {
            task.wake_by_ref();
        }
    }
}

/// A request body on its way into its stream: a frame is taken from the body only once the
/// stream's windows have room for some of it, so at most one frame waits beyond them.
struct Pipe<B> {
    conn: Arc<Connection>,
    id: u32,
    body: B,
    /// Data taken that the windows have not let go yet, and whether it is the body's last.
    pending: Option<(Bytes, bool)>,
}

impl<B> Future for Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        loop {
            if let Some((data, last)) = &mut me.pending {
                let mut state = me.conn.lock();
                let was_idle = state.link.wire.is_empty();
                let State { streams, link, .. } = &mut *state;
                let Some(s) = streams.iter_mut().find(|s| s.id == me.id) else {
                    return Poll::Ready(Err("the stream is gone".into()));
                };
                if let Some(why) = &s.answer.failed {
                    return Poll::Ready(Err(why.clone().into()));
                }
                if !s.sending {
                    return Poll::Ready(Ok(()));
                }
                let room = link.room(s.send_window);
                if room <= 0 && !data.is_empty() {
                    s.sender = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let chunk = data.split_to((room.max(0) as usize).min(data.len()));
                let end = *last && data.is_empty();
                s.send_window -= chunk.len() as i64;
                s.sending = !end;
                frame_head(&mut link.wire, chunk.len(), DATA, if end { END_STREAM } else { 0 }, me.id);
                link.wire.extend_from_slice(&chunk);
                link.send_window -= chunk.len() as i64;
                if was_idle && let Some(task) = &state.task {
                    task.wake_by_ref();
                }
                if end {
                    return Poll::Ready(Ok(()));
                }
                if data.is_empty() {
                    me.pending = None;
                }
                continue;
            }
            match ready!(Pin::new(&mut me.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = me.body.is_end_stream();
                        if !data.is_empty() || last {
                            me.pending = Some((data, last));
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return Poll::Ready(me.finish(|state, id| {
                            state.link.scratch.clear();
                            encode_fields(&trailers, &mut state.link.scratch);
                            spare_fields::give_back(trailers);
                            state.link.write_block(id, true);
                        }));
                    }
                },
                None => {
                    return Poll::Ready(
                        me.finish(|state, id| frame_head(&mut state.link.wire, 0, DATA, END_STREAM, id)),
                    );
                }
                Some(Err(e)) => {
                    let e = e.into();
                    let _ = me.finish(|state, id| {
                        state.reset(id, CANCEL, "");
                        if let Some(s) = state.stream(id) {
                            s.answer.failed = Some(format!("the request's body failed: {e}"));
                            s.request_failed = true;
                        }
                    });
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<B> Pipe<B> {
    /// Ends the request with what `write` writes, unless the stream has ended already.
    fn finish(&mut self, write: impl FnOnce(&mut State, u32)) -> Result<(), BoxError> {
        let mut state = self.conn.lock();
        let Some(s) = state.stream(self.id) else { return Err("the stream is gone".into()) };
        if let Some(why) = &s.answer.failed {
            return Err(why.clone().into());
        }
        if !s.sending {
            return Ok(());
        }
        s.sending = false;
        write(&mut state, self.id);
        if let Some(task) = &state.task {
            task.wake_by_ref();
        }
        Ok(())
    }
}

/// A response body from an HTTP/2 upstream: its data, then its trailers. What is taken is
/// given back to the upstream's windows.
pub(crate) struct H2Body {
    stream: StreamRef,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let id = self.stream.id;
        let mut state = self.stream.conn.lock();
        let was_idle = state.link.wire.is_empty();
        let State { streams, link, .. } = &mut *state;
        let Some(s) = streams.iter_mut().find(|s| s.id == id) else { return Poll::Ready(None) };
        let polled = s.answer.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as i64;
            link.unreleased += n;
            if !s.answer.ended {
                s.ungranted += n;
                give_back_stream(&mut link.wire, id, &mut s.ungranted, &mut s.recv_window);
            }
            state.link.give_back();
            if was_idle
                && !state.link.wire.is_empty()
                && let Some(task) = &state.task
            {
                task.wake_by_ref();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let mut state = self.stream.conn.lock();
        state.stream(self.stream.id).is_none_or(|s| s.answer.is_end_stream())
    }
}

/// Reads and writes one connection's frames, for as long as anything holds the connection.
struct Driver {
    conn: Weak<Connection>,
    io: Box<dyn Upstream>,
    read: BytesMut,
    /// Frames taken from the state and being written; `written` of them are.
    out: Vec<u8>,
    written: usize,
}

impl Driver {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        loop {
            let Some(conn) = self.conn.upgrade() else {
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                return Poll::Ready(Ok(()));
            };
            let mut busy = false;
            if self.written == self.out.len() {
                self.out.clear();
                self.written = 0;
                let mut state = conn.lock();
                std::mem::swap(&mut state.link.wire, &mut self.out);
                if !state.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                    state.task = Some(cx.waker().clone());
                }
                if state.going_away && state.streams.is_empty() {
                    state.closed.get_or_insert_with(|| "the upstream closed the connection (GOAWAY)".into());
                }
                if state.closed.is_some() && self.out.is_empty() {
                    drop(state);
                    let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                    return Poll::Ready(Ok(()));
                }
            }
            if self.written < self.out.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        busy = true;
                        self.written += n;
                        if self.written == self.out.len() {
                            // TLS keeps what it was given until flushed.
                            let _ = Pin::new(&mut self.io).poll_flush(cx);
                        }
                    }
                    Poll::Ready(result) => {
                        let why = result
                            .err()
                            .map_or("the connection took no more bytes".into(), |e| e.to_string());
                        conn.lock().fail(why.clone());
                        return Poll::Ready(Err(why));
                    }
                    Poll::Pending => {}
                }
            }
            room_to_read(&mut self.read);
            match pin!(self.io.read_buf(&mut self.read)).poll(cx) {
                Poll::Ready(Ok(0)) => {
                    conn.lock().fail("the upstream closed the connection".into());
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {
                    busy = true;
                    let mut state = conn.lock();
                    loop {
                        match take_frame(&mut self.read)
                            .and_then(|f| f.map_or(Ok(false), |f| state.on_frame(f).map(|()| true)))
                        {
                            Ok(true) => {}
                            Ok(false) => {
                                state.link.give_back();
                                break;
                            }
                            Err(e) => {
                                goaway(&mut state.link.wire, 0, e.code, e.why.as_bytes());
                                state.fail(format!("the upstream broke HTTP/2: {}", e.why));
                                break;
                            }
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    conn.lock().fail(e.to_string());
                    return Poll::Ready(Err(e.to_string()));
                }
                Poll::Pending => {}
            }
            if !busy {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderMap, Request};
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    use super::*;
    use crate::http1_pool::tests::{TestBody, fed_body, plain, tcp};

    /// `req` sent on `pool`, its head by reference as the proxy sends one.
    async fn send_on<C, F>(
        pool: &H2Pool,
        to: Destination,
        connect: C,
        req: Request<crate::body::Body>,
    ) -> Result<Response<H2Body>, PoolError>
    where
        C: FnMut() -> F,
        F: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        let (head, body) = req.into_parts();
        pool.send(to, connect, &head, body).await
    }

    fn full(data: impl Into<Bytes>) -> TestBody {
        Full::new(data.into()).boxed()
    }

    /// A POST of `body` as it streams.
    fn post(addr: SocketAddr, body: TestBody) -> Request<crate::body::Body> {
        Request::post(format!("http://{addr}/echo")).body(crate::body::Body::streaming(body)).unwrap()
    }

    /// An HTTP/2 server (hyper's) that answers each request with its body as it comes, and
    /// `grpc-status: 0` in trailers; counts the connections it accepted and keeps their tasks,
    /// so that a test can cut them.
    struct Echo {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    async fn echo() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        tokio::spawn({
            let (accepted, connections) = (accepted.clone(), connections.clone());
            async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body = req.into_body().with_trailers(async move { Some(Ok(trailers)) });
                        Ok::<_, Infallible>(Response::new(body))
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc);
                    connections.lock().unwrap().push(tokio::spawn(async move {
                        let _ = conn.await;
                    }));
                }
            }
        });
        Echo { addr, accepted, connections }
    }

    /// The whole answer: its body and its trailers.
    async fn read(resp: Response<H2Body>) -> (Bytes, Option<HeaderMap>) {
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn calls_share_one_connection_and_carry_body_and_trailers_both_ways() {
        let server = echo().await;
        let pool = H2Pool::new(Duration::from_secs(5));
        for i in 0..3 {
            let mut request_trailers = HeaderMap::new();
            request_trailers.insert("x-call", i.to_string().parse().unwrap());
            let body =
                full(format!("call {i}")).with_trailers(async move { Some(Ok(request_trailers)) }).boxed();
            let resp = send_on(&pool, plain(server.addr), || tcp(server.addr), post(server.addr, body))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let (body, trailers) = read(resp).await;
            assert_eq!(body, format!("call {i}"));
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "one connection carried the three calls");
    }

    #[tokio::test]
    async fn calls_that_come_while_the_connection_opens_wait_for_it() {
        let server = echo().await;
        let pool = H2Pool::new(Duration::from_secs(5));
        let calls = (0..10).map(|i| {
            let connect = || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tcp(server.addr).await
            };
            let call =
                send_on(&pool, plain(server.addr), connect, post(server.addr, full(format!("call {i}"))));
            async move { read(call.await.unwrap()).await.0 }
        });
        let answers = futures::future::join_all(calls).await;
        assert_eq!(answers, (0..10).map(|i| format!("call {i}")).collect::<Vec<_>>());
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "ten calls at once opened one connection");

        // The call opening a connection is dropped: one waiting for it opens its own.
        let other = echo().await;
        let never = || std::future::pending::<Result<Box<dyn Upstream>, PoolError>>();
        let mut dropped = Box::pin(send_on(&pool, plain(other.addr), never, post(other.addr, full("lost"))));
        assert!(futures::poll!(dropped.as_mut()).is_pending());
        let waiting = send_on(&pool, plain(other.addr), || tcp(other.addr), post(other.addr, full("kept")));
        let mut waiting = Box::pin(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending(), "waits for the connection being opened");
        drop(dropped);
        assert_eq!(read(waiting.await.unwrap()).await.0, "kept");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_before_the_next_call() {
        let server = echo().await;
        let pool = H2Pool::new(Duration::from_secs(5));
        let call = || send_on(&pool, plain(server.addr), || tcp(server.addr), post(server.addr, full("x")));
        assert_eq!(read(call().await.unwrap()).await.0, "x");
        for c in server.connections.lock().unwrap().drain(..) {
            c.abort();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(read(call().await.unwrap()).await.0, "x", "the call went on a new connection");
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_that_begins_before_the_request_ends_streams_both_ways() {
        let server = echo().await;
        let pool = H2Pool::new(Duration::from_secs(5));
        let (tx, body) = fed_body(1);
        tx.send(Ok(Frame::data(Bytes::from("ping 1")))).await.unwrap();
        let call = send_on(&pool, plain(server.addr), || tcp(server.addr), post(server.addr, body));
        let resp =
            tokio::time::timeout(Duration::from_secs(5), call).await.expect("answered mid-request").unwrap();
        let mut body = resp.into_body();
        assert_eq!(next(&mut body).await.into_data().unwrap(), "ping 1");
        tx.send(Ok(Frame::data(Bytes::from("ping 2")))).await.unwrap();
        assert_eq!(next(&mut body).await.into_data().unwrap(), "ping 2");
        drop(tx);
        let trailers = next(&mut body).await.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn bodies_larger_than_the_windows_go_through_whole() {
        let server = echo().await;
        let pool = H2Pool::new(Duration::from_secs(5));
        let big: Vec<u8> = (0..3 * CONNECTION_WINDOW).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> =
            big.chunks(16 * 1024).map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        let body = StreamBody::new(tokio_stream::iter(chunks)).boxed();
        let call = async {
            let resp = send_on(&pool, plain(server.addr), || tcp(server.addr), post(server.addr, body))
                .await
                .unwrap();
            read(resp).await
        };
        let (echoed, _) = tokio::time::timeout(Duration::from_secs(20), call).await.expect("not stalled");
        assert_eq!(echoed.len(), big.len());
        assert!(echoed == big, "the echo is the body sent");
    }

    /// A server that answers a request's HEADERS with random frames — an answer's head and
    /// body among them, in one case of three any type with random flags, streams and payloads —
    /// and then closes its side. Every call ends, with an answer or an error, and nothing
    /// panics (a panicked connection task would leave its call waiting).
    #[tokio::test]
    async fn random_frames_from_a_server_end_every_call_with_an_answer_or_an_error() {
        use rand::{Rng, SeedableRng};
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for case in 0u64.. {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(7540 + case);
                // The request's HEADERS, after the preface and the client's SETTINGS.
                let (mut read, mut asked) = (BytesMut::new(), false);
                while !asked && tcp.read_buf(&mut read).await.unwrap_or(0) > 0 {
                    let mut frames = BytesMut::from(&read[PREFACE.len().min(read.len())..]);
                    asked = std::iter::from_fn(|| take_frame(&mut frames).ok().flatten())
                        .any(|f| f.kind == HEADERS);
                }
                let hostile = rng.random_range(0..3) == 0;
                let mut wire = Vec::new();
                settings(&mut wire, &[]);
                for n in 0..rng.random_range(1..8) {
                    let kind = match rng.random_range(0..6) {
                        _ if hostile && rng.random() => rng.random_range(0..=CONTINUATION + 1),
                        // Well-formed, it begins with an answer's head.
                        _ if n == 0 => HEADERS,
                        0 | 1 => HEADERS,
                        2 | 3 => DATA,
                        4 => WINDOW_UPDATE,
                        _ => PING,
                    };
                    let flags = match rng.random_range(0..3) {
                        _ if hostile && rng.random() => rng.random(),
                        0 => END_HEADERS | END_STREAM,
                        _ => END_HEADERS,
                    };
                    let id = match kind {
                        _ if hostile && rng.random() => rng.random_range(0..6),
                        PING => 0,
                        WINDOW_UPDATE if rng.random() => 0,
                        _ => 1,
                    };
                    let mut payload: Vec<u8> = match kind {
                        _ if hostile && rng.random() => {
                            (0..rng.random_range(0..40)).map(|_| rng.random()).collect()
                        }
                        HEADERS => {
                            let mut block = Vec::new();
                            let status = if n == 0 { [200, 204, 404][rng.random_range(0..3)] } else { 103 };
                            hpack::encode_status(status, &mut block);
                            if rng.random() {
                                hpack::encode_field(b"content-length", b"3", false, &mut block);
                            }
                            block
                        }
                        WINDOW_UPDATE => rng.random_range(1u32..1 << 20).to_be_bytes().into(),
                        PING => b"randomly".to_vec(),
                        _ => (0..rng.random_range(0..40)).map(|_| rng.random()).collect(),
                    };
                    if hostile && !payload.is_empty() && rng.random() {
                        let at = rng.random_range(0..payload.len());
                        payload[at] = rng.random();
                    }
                    frame_head(&mut wire, payload.len(), kind, flags, id);
                    wire.extend(payload);
                }
                let _ = tcp.write_all(&wire).await;
                let _ = tcp.shutdown().await;
                // Read what the client still sends, so that closing does not reset the connection.
                let mut rest = BytesMut::new();
                while tcp.read_buf(&mut rest).await.unwrap_or(0) > 0 {
                    rest.clear();
                }
            }
        });
        let (mut answered, mut failed) = (0, 0);
        for _ in 0..300 {
            let pool = H2Pool::new(Duration::from_secs(5));
            let get = Request::get(format!("http://{addr}/")).body(crate::body::Body::empty()).unwrap();
            let call = async {
                let resp = send_on(&pool, plain(addr), || tcp(addr), get).await?;
                resp.into_body().collect().await.map_err(|e| PoolError::Http(e.to_string()))
            };
            match tokio::time::timeout(Duration::from_secs(5), call).await.expect("every call ends") {
                Ok(_) => answered += 1,
                Err(_) => failed += 1,
            }
        }
        assert!(answered > 30 && failed > 30, "answered {answered}, failed {failed}");
    }

    /// A server of raw frames: it answers the HEADERS of each stream with what `answer` writes
    /// for that stream, and counts the connections it accepted.
    async fn scripted(answer: fn(u32, &mut Vec<u8>)) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut preface = [0; 24];
                    tcp.read_exact(&mut preface).await.unwrap();
                    assert_eq!(&preface[..], PREFACE);
                    let mut wire = Vec::new();
                    settings(&mut wire, &[]);
                    tcp.write_all(&wire).await.unwrap();
                    let mut read = BytesMut::new();
                    while tcp.read_buf(&mut read).await.unwrap_or(0) > 0 {
                        while let Some(frame) = take_frame(&mut read).unwrap() {
                            if frame.kind == HEADERS {
                                let mut wire = Vec::new();
                                answer(frame.id, &mut wire);
                                tcp.write_all(&wire).await.unwrap();
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn head(status: u16, id: u32, end_stream: bool, wire: &mut Vec<u8>) {
        let mut block = Vec::new();
        hpack::encode_status(status, &mut block);
        header_block(wire, id, end_stream, &block, MAX_FRAME);
    }

    #[tokio::test]
    async fn a_request_turned_away_unprocessed_is_sent_once_more_when_it_is_held_whole() {
        let (addr, accepted) = scripted(|id, wire| match id {
            // An early hint, then the answer.
            1 | 9 | 15 => {
                head(103, id, false, wire);
                head(200, id, true, wire);
            }
            3 | 5 | 7 | 11 | 13 => rst_stream(wire, id, REFUSED_STREAM),
            // When stream 19 has come: GOAWAY naming stream 17 the last, then 17's answer.
            19 => {
                goaway(wire, 17, NO_ERROR, b"");
                head(204, 17, true, wire);
            }
            _ => {}
        })
        .await;
        let pool = H2Pool::new(Duration::from_secs(5));
        let get = || Request::get(format!("http://{addr}/")).body(crate::body::Body::empty()).unwrap();
        let call = || send_on(&pool, plain(addr), || tcp(addr), get());
        assert_eq!(call().await.unwrap().status(), 200, "the 103 was passed over");
        // Streams 3 and 5: refused, sent once more, refused again.
        let refused = call().await.map(|r| r.status()).unwrap_err();
        assert!(matches!(&refused, PoolError::Unprocessed(why) if why.contains("refused")), "{refused:?}");
        // Streams 7 and 9: refused, then answered.
        assert_eq!(call().await.unwrap().status(), 200, "sent again after REFUSED_STREAM");
        // Stream 11: a request whose body streams is not sent again.
        let posted = send_on(&pool, plain(addr), || tcp(addr), post(addr, full("once"))).await;
        assert!(matches!(posted, Err(PoolError::Unprocessed(_))), "{:?}", posted.map(|r| r.status()));
        // Streams 13 and 15: one held whole is, refused then answered (as a gRPC call's is).
        let whole = Request::post(format!("http://{addr}/")).body(crate::body::Body::whole("twice")).unwrap();
        let posted = send_on(&pool, plain(addr), || tcp(addr), whole).await;
        assert_eq!(posted.unwrap().status(), 200, "a whole body sent again after REFUSED_STREAM");
        let (last, beside) = tokio::join!(call(), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            call().await
        });
        assert_eq!(last.unwrap().status(), 204);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection after GOAWAY");
        assert_eq!(beside.unwrap().status(), 200, "stream 19, past GOAWAY, sent again on the new connection");
    }

    #[tokio::test]
    async fn calls_past_the_servers_stream_limit_go_on_other_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, Infallible>(Response::new(req.into_body()))
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(2)
                    .serve_connection(TokioIo::new(tcp), svc);
                tokio::spawn(conn);
            }
        });
        let pool = H2Pool::new(Duration::from_secs(5));
        let resp = send_on(&pool, plain(addr), || tcp(addr), post(addr, full("first"))).await.unwrap();
        assert_eq!(read(resp).await.0, "first");
        let calls = (0..12).map(|i| {
            let pool = &pool;
            async move {
                let resp = send_on(pool, plain(addr), || tcp(addr), post(addr, full(format!("call {i}"))))
                    .await
                    .unwrap();
                read(resp).await.0
            }
        });
        let echoed =
            tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(calls)).await.unwrap();
        for (i, body) in echoed.into_iter().enumerate() {
            assert_eq!(body, format!("call {i}"));
        }
        // Two on the first connection, then five more taking two each: none waits for a stream.
        assert_eq!(accepted.load(Ordering::SeqCst), 6, "as many streams a connection as the server takes");
    }

    async fn next(body: &mut H2Body) -> Frame<Bytes> {
        tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap()
    }
}
