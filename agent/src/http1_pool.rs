//! The agent's HTTP/1.1 client: requests to the application beside it and to mesh endpoints,
//! over connections kept open between requests.
//!
//! hyper's client drives each connection from a task of its own, fed through channels: every
//! request is handed to that task and its response handed back, and the request leaves only
//! when the task's turn comes, after every other connection the agent is serving. Here the
//! request's own task writes it and reads the answer (`http1_codec.rs` has the wire format):
//! a small response is read whole before it is passed on, a larger or open-ended one as the
//! downstream side takes it. An agent talks to a few addresses, so a short list of idle
//! connections is the pool.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use trellis_ca::SpiffeId;

use crate::body::{Body, Switched};
use crate::http1_codec::{self, ChunkedDecoder, Framing, MAX_HEAD_BYTES, Remaining, ResponseHead, Step};
use crate::{spare_fields, upgrade};

/// Idle connections kept at most; one finishing past it is closed.
const MAX_IDLE: usize = 256;
/// Largest response body read whole before its head is passed on, so that head and body
/// leave in one write as they arrived (nginx's proxy buffering does the same): passed on
/// at once, the head would go out alone, costing the client a second wake-up.
const GATHERED_BODY: u64 = 16 * 1024;
/// Request body bytes that leave with the head when they are ready with it.
const COALESCED_WRITE: usize = 64 * 1024;
/// Room made in a connection's buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// A connection to an upstream: plain TCP, or TLS over it.
pub(crate) trait Upstream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    /// The socket beneath, to see without reading whether an idle connection was closed.
    fn socket(&self) -> &TcpStream;
}

impl Upstream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Upstream for tokio::io::BufWriter<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref()
    }
}

impl<S: Upstream> Upstream for tokio_rustls::client::TlsStream<S> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0.socket()
    }
}

/// What a connection was opened to: an address, and for mTLS the identity the endpoint
/// proved and the generation of the agent's TLS material it was proved with. A connection
/// carries requests for that destination only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Destination {
    pub addr: SocketAddr,
    pub mtls: Option<(Arc<SpiffeId>, u64)>,
}

/// Held in a box: it goes between the idle list, a request's futures and a streaming body
/// several times a request, and a box moves as one pointer.
struct Connection {
    io: Box<dyn Upstream>,
    /// Bytes read and not yet used.
    buf: BytesMut,
    /// Room to note where a head's fields lie, kept from one response to the next.
    spans: Vec<http1_codec::FieldSpan>,
    /// Room for a request's head and the body that leaves with it, kept from one request to
    /// the next unless a large one grew it.
    wire: Vec<u8>,
    to: Destination,
    /// It may carry another request once this one's response is read.
    keep_alive: bool,
}

impl Connection {
    fn new(io: Box<dyn Upstream>, to: Destination) -> Box<Self> {
        Box::new(Connection {
            io,
            buf: BytesMut::new(),
            spans: Vec::new(),
            wire: Vec::new(),
            to,
            keep_alive: true,
        })
    }

    /// Reads what has arrived into `buf`: `Ok(0)` at the end of the stream.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        std::pin::pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read_more(cx)).await
    }

    /// Writes `bytes` and flushes them. When the write cannot go on, reading begins: an upstream
    /// may answer before it has read the whole request (RFC 9112 §9.5), and then the rest is
    /// not sent (`Ok(true)`).
    async fn send(&mut self, bytes: &[u8]) -> io::Result<bool> {
        let mut written = 0;
        poll_fn(|cx| {
            while written < bytes.len() {
                match Pin::new(&mut self.io).poll_write(cx, &bytes[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return self.poll_answer_begun(cx),
                }
            }
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(done) => Poll::Ready(done.map(|()| false)),
                Poll::Pending => self.poll_answer_begun(cx),
            }
        })
        .await
    }

    /// Ready when the upstream's final answer has begun to arrive; an interim one (`100
    /// Continue`, which a request that expects it waits for) is taken off and the wait goes on.
    fn poll_answer_begun(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            match std::task::ready!(self.poll_read_more(cx)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) if http1_codec::final_answer_begun(&mut self.buf) => return Poll::Ready(Ok(true)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Whether an idle connection can take a request: the other side has neither closed it
    /// nor sent anything unasked. Nothing readable needs no system call; something readable
    /// is read, and only a TLS message for the TLS layer alone (which reading consumes) leaves
    /// the connection usable.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if self.io.socket().poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut probe = [0u8; 1];
        Pin::new(&mut self.io).poll_read(&mut cx, &mut ReadBuf::new(&mut probe)).is_pending()
    }
}

type IdleList = Mutex<Vec<Idle>>;

/// Idle connections, the most recently used last.
pub(crate) struct Http1Pool {
    idle: Arc<IdleList>,
    /// Longest a connection is kept idle: a request is never sent over one idle longer.
    max_idle_time: Duration,
}

struct Idle {
    conn: Box<Connection>,
    since: Instant,
}

/// Why a request did not get a response.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// No connection could be opened (TCP, or the TLS handshake).
    #[error("{0}")]
    Connect(String),
    /// The exchange failed: the connection broke, or the upstream did not speak HTTP/1.1.
    #[error("{0}")]
    Http(String),
    /// The upstream turned the request away before acting on it (HTTP/2's REFUSED_STREAM, or
    /// a stream past a GOAWAY's last one: RFC 9113 §8.7): it may be sent again as it is.
    #[error("{0}")]
    Unprocessed(String),
    /// The request's own body failed (malformed, or its client left): the client's doing,
    /// which says nothing of the upstream.
    #[error("{0}")]
    Request(String),
}

/// An exchange that failed, and whether any of an answer had come.
struct Failed {
    answered: bool,
    why: String,
}

impl Http1Pool {
    pub(crate) fn new(max_idle_time: Duration) -> Self {
        Http1Pool { idle: Arc::default(), max_idle_time }
    }

    /// Sends the request `head` (origin form, with a `Host`) and `body` to `to` over an idle
    /// connection, or over a new one that `connect` opens (boxed: a TLS handshake's state is
    /// large, and the request's future is moved whole when hyper spawns it). The other side
    /// may have closed an idle connection just as the request went: a request that got no
    /// answer on one is sent again over a new connection when that is safe (an idempotent
    /// method, the whole request written at once).
    pub(crate) async fn send<B, C>(
        &self,
        to: Destination,
        connect: impl FnOnce() -> C,
        head: &http::request::Parts,
        body: B,
    ) -> Result<Response<Body>, PoolError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
        C: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        let mut idle = self.idle_to(&to);
        let mut connect = Some(connect);
        let mut open = async || Box::pin(connect.take().expect("one new connection a request")()).await;
        // Without an idle connection, a new one is opened before anything of the body is read:
        // a connection refused leaves the body unread, to be offered elsewhere.
        let opened = match idle {
            Some(_) => None,
            None => Some(open().await?),
        };
        let mut outgoing = Outgoing::new(body);
        // The idle connection's room for requests, else new room.
        let mut wire = idle.as_mut().map(|c| std::mem::take(&mut c.wire)).unwrap_or_default();
        wire.reserve(256);
        let upgrade = head.extensions.get::<upgrade::Requested>().map(|u| &u.0);
        http1_codec::encode_request(&mut wire, head, outgoing.framing, upgrade);
        outgoing.take_ready(&mut wire).map_err(|why| outgoing.error(why))?;
        let asks = Asks { head: head.method == Method::HEAD, upgrade: upgrade.is_some() };
        if let Some(mut conn) = idle {
            let again = outgoing.done && idempotent(&head.method);
            match exchange(&mut conn, &wire, &mut outgoing, asks).await {
                Ok(response) => {
                    http1_codec::keep_wire(&mut conn.wire, wire);
                    return self.respond(conn, response).await;
                }
                Err(f) if again && !f.answered => {
                    tracing::debug!(addr = %to.addr, why = %f.why, "idle connection closed under a request; sent again");
                }
                Err(f) => return Err(outgoing.error(f.why)),
            }
        }
        let io = match opened {
            Some(io) => io,
            None => open().await?,
        };
        let mut conn = Connection::new(io, to);
        let response =
            exchange(&mut conn, &wire, &mut outgoing, asks).await.map_err(|f| outgoing.error(f.why))?;
        http1_codec::keep_wire(&mut conn.wire, wire);
        self.respond(conn, response).await
    }

    /// The most recently used idle connection to `to` that is still open; the stale ones
    /// are closed on the way.
    fn idle_to(&self, to: &Destination) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().expect("not poisoned");
        // Kept in the order they became idle: those idle too long are a prefix.
        if let Some(oldest_kept) = Instant::now().checked_sub(self.max_idle_time) {
            let stale = idle.partition_point(|c| c.since <= oldest_kept);
            idle.drain(..stale);
        }
        while let Some(i) = idle.iter().rposition(|c| c.conn.to == *to) {
            let mut conn = idle.remove(i).conn;
            if conn.still_open() {
                return Some(conn);
            }
        }
        None
    }

    /// The response whose head was read on `conn`: its body read whole when small, else
    /// carried by the body, which frees the connection when it ends.
    async fn respond(
        &self,
        mut conn: Box<Connection>,
        head: ResponseHead,
    ) -> Result<Response<Body>, PoolError> {
        let ResponseHead { status, headers, framing, keep_alive } = head;
        conn.keep_alive &= keep_alive;
        let body = match framing {
            // Asked for and agreed to: the connection goes with the answer, never back idle.
            _ if status == StatusCode::SWITCHING_PROTOCOLS => {
                let read_ahead = conn.buf.split().freeze();
                Body::Switched(Box::new(Switched { io: Box::new(conn.io), read_ahead }))
            }
            Framing::Empty => {
                release(&self.idle, conn);
                Body::empty()
            }
            Framing::Length(n) if n <= GATHERED_BODY => {
                let n = n as usize;
                while conn.buf.len() < n {
                    match conn.read_more().await {
                        Ok(0) => {
                            return Err(PoolError::Http(
                                "the upstream closed the connection mid-body".into(),
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => return Err(PoolError::Http(format!("while reading the body: {e}"))),
                    }
                }
                let whole = conn.buf.split_to(n).freeze();
                release(&self.idle, conn);
                Body::whole(whole)
            }
            Framing::Length(n) => Streaming::body(conn, Remaining::Length(n), &self.idle),
            Framing::Chunked => {
                Streaming::body(conn, Remaining::Chunked(ChunkedDecoder::default()), &self.idle)
            }
            Framing::UntilClose => Streaming::body(conn, Remaining::UntilClose, &self.idle),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

/// Back to the idle list, when the connection can carry another request and nothing unread
/// is left on it.
fn release(idle: &IdleList, conn: Box<Connection>) {
    if !conn.keep_alive || !conn.buf.is_empty() {
        return;
    }
    let mut idle = idle.lock().expect("not poisoned");
    if idle.len() < MAX_IDLE {
        idle.push(Idle { conn, since: Instant::now() });
    }
}

/// Methods a request of which may be sent twice with the effect of once (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// What a request asks that shapes its answer's head: it was `HEAD` (no body follows), or
/// it asked to switch protocols (a `101` may follow).
#[derive(Clone, Copy)]
struct Asks {
    head: bool,
    upgrade: bool,
}

/// Writes the request (`wire`, then what is left of the body) and reads the response head.
async fn exchange<B>(
    conn: &mut Connection,
    wire: &[u8],
    outgoing: &mut Outgoing<B>,
    asks: Asks,
) -> Result<ResponseHead, Failed>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let failed = |conn: &Connection, why: String| Failed { answered: !conn.buf.is_empty(), why };
    let mut answered_early = match conn.send(wire).await {
        Ok(early) => early,
        // An answer, then the close: the answer stands.
        Err(_) if !conn.buf.is_empty() => true,
        Err(e) => return Err(failed(conn, format!("while sending the request: {e}"))),
    };
    let mut chunk = Vec::new();
    while !answered_early && !outgoing.done {
        // The next piece of the body, unless the answer begins first.
        let next = poll_fn(|cx| match Pin::new(&mut outgoing.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Ok(Some(frame))),
            Poll::Pending => conn.poll_answer_begun(cx).map_ok(|_| None),
        })
        .await;
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) if !conn.buf.is_empty() => break,
            Err(e) => return Err(failed(conn, format!("while sending the request body: {e}"))),
        };
        chunk.clear();
        outgoing.encode(frame, &mut chunk).map_err(|why| failed(conn, why))?;
        answered_early = match conn.send(&chunk).await {
            Ok(early) => early,
            Err(_) if !conn.buf.is_empty() => true,
            Err(e) => return Err(failed(conn, format!("while sending the request body: {e}"))),
        };
    }
    // The rest of the request is not sent: the upstream would take what follows as part of it.
    conn.keep_alive = outgoing.done;
    loop {
        if !conn.buf.is_empty() {
            match http1_codec::parse_response(&mut conn.buf, asks.head, asks.upgrade, &mut conn.spans) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) if conn.buf.len() > MAX_HEAD_BYTES => {
                    return Err(Failed { answered: true, why: "a response head past 64 KiB".into() });
                }
                Ok(None) => {}
                Err(e) => return Err(Failed { answered: true, why: e.to_string() }),
            }
        }
        match conn.read_more().await {
            Ok(0) if conn.buf.is_empty() => {
                return Err(failed(conn, "the upstream closed the connection without answering".into()));
            }
            Ok(0) => return Err(failed(conn, "the upstream closed the connection mid-head".into())),
            Ok(_) => {}
            Err(e) => return Err(failed(conn, format!("while reading the response: {e}"))),
        }
    }
}

/// A body on its way out (a request's to an upstream, a response's to a client), framed by
/// its declared length, in chunks, or by the connection's end.
pub(crate) struct Outgoing<B> {
    pub(crate) body: B,
    pub(crate) framing: Framing,
    /// Bytes of a body of declared length sent so far.
    sent: u64,
    pub(crate) done: bool,
    /// The body itself failed.
    failed: bool,
}

impl<B> Outgoing<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// Framed by its length when it is known, else in chunks.
    pub(crate) fn new(body: B) -> Self {
        let framing = Self::framing_of(&body);
        Self::framed(body, framing)
    }

    /// The framing `body` can have: its length when it is known, else chunks.
    pub(crate) fn framing_of(body: &B) -> Framing {
        match body.size_hint().exact() {
            _ if body.is_end_stream() => Framing::Length(0),
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    }

    /// Framed as the connection requires (`Framing::Empty`: nothing of the body is sent).
    pub(crate) fn framed(body: B, framing: Framing) -> Self {
        let done = matches!(framing, Framing::Length(0) | Framing::Empty);
        Outgoing { body, framing, sent: 0, done, failed: false }
    }

    /// The exchange's failure, `why`: the client's when the body itself failed.
    fn error(&self, why: String) -> PoolError {
        if self.failed { PoolError::Request(why) } else { PoolError::Http(why) }
    }

    /// Appends to `wire` the body's frames that are ready now (a whole buffered body, most
    /// often), so that they leave with the head.
    pub(crate) fn take_ready(&mut self, wire: &mut Vec<u8>) -> Result<(), String> {
        let mut cx = Context::from_waker(Waker::noop());
        while !self.done && wire.len() < COALESCED_WRITE {
            match Pin::new(&mut self.body).poll_frame(&mut cx) {
                Poll::Ready(frame) => self.encode(frame, wire)?,
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    pub(crate) fn encode(
        &mut self,
        frame: Option<Result<Frame<Bytes>, B::Error>>,
        wire: &mut Vec<u8>,
    ) -> Result<(), String> {
        let trailers = match frame {
            None => None,
            Some(Err(e)) => {
                self.failed = true;
                return Err(format!("the request's body failed: {e}"));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    self.data(&data, wire)?;
                    if !self.body.is_end_stream() {
                        return Ok(());
                    }
                    None
                }
                // Trailers end a body; they can be sent in chunked framing only.
                Err(frame) => frame.into_trailers().ok(),
            },
        };
        self.done = true;
        match self.framing {
            Framing::Chunked => {
                http1_codec::last_chunk(wire, trailers.as_ref());
                if let Some(trailers) = trailers {
                    spare_fields::give_back(trailers);
                }
            }
            Framing::Length(n) if self.sent != n => {
                return Err(format!("the body ended after {} of its {n} bytes", self.sent));
            }
            _ => {}
        }
        Ok(())
    }

    fn data(&mut self, data: &[u8], wire: &mut Vec<u8>) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::Length(n) => {
                self.sent += data.len() as u64;
                if self.sent > n {
                    return Err(format!("the body is longer than its {n} bytes"));
                }
                wire.extend_from_slice(data);
            }
            Framing::UntilClose => wire.extend_from_slice(data),
            Framing::Empty => {}
            Framing::Chunked => {
                http1_codec::chunk_start(wire, data.len());
                wire.extend_from_slice(data);
                wire.extend_from_slice(http1_codec::CHUNK_END);
            }
        }
        Ok(())
    }
}

/// A response body read from its connection as it is taken, the connection going back to the
/// idle list when the body ends (a body small enough is read whole with its head instead).
pub(crate) struct Streaming {
    /// `None` once the body has ended (or failed).
    conn: Option<Box<Connection>>,
    left: Remaining,
    idle: Weak<IdleList>,
}

impl Streaming {
    fn body(conn: Box<Connection>, left: Remaining, idle: &Arc<IdleList>) -> Body {
        Body::streaming(Streaming { conn: Some(conn), left, idle: Arc::downgrade(idle) })
    }

    fn finish(&mut self) {
        if let (Some(conn), Some(idle)) = (self.conn.take(), self.idle.upgrade()) {
            release(&idle, conn);
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            let step = match self.left.next(&mut conn.buf) {
                Some(step) => step,
                // Nothing to pass on yet: read more.
                None => match std::task::ready!(conn.poll_read_more(cx)) {
                    Ok(0) => self.left.closed("the upstream"),
                    Ok(_) => continue,
                    Err(e) => Step::Fail(e),
                },
            };
            return Poll::Ready(match step {
                Step::Data(data, last) => {
                    if last {
                        self.finish();
                    }
                    Some(Ok(Frame::data(data)))
                }
                Step::Trailers(t) => Some(Ok(Frame::trailers(t))),
                Step::End => {
                    self.finish();
                    None
                }
                Step::Fail(e) => {
                    self.conn = None;
                    Some(Err(e))
                }
            });
        }
    }
}

impl hyper::body::Body for Streaming {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.left.size_hint(self.conn.is_some())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderMap, Request, StatusCode};
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use hyper::body::Body as _;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A request body as the tests of both clients make them.
    pub(crate) type TestBody = BoxBody<Bytes, Infallible>;

    /// A body the test feeds frame by frame, ending when `tx` is dropped.
    pub(crate) fn fed_body(
        room: usize,
    ) -> (tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>, TestBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(room);
        (tx, StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
    }

    fn pool() -> Http1Pool {
        Http1Pool::new(Duration::from_secs(5))
    }

    fn request(method: Method, path: &str, addr: SocketAddr, body: TestBody) -> Request<TestBody> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .body(body)
            .unwrap()
    }

    fn empty() -> TestBody {
        Empty::new().boxed()
    }

    pub(crate) fn plain(addr: SocketAddr) -> Destination {
        Destination { addr, mtls: None }
    }

    pub(crate) async fn tcp(addr: SocketAddr) -> Result<Box<dyn Upstream>, PoolError> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| PoolError::Connect(e.to_string()))?;
        Ok(Box::new(tcp))
    }

    /// `req` sent on `pool`, its head by reference as the proxy sends one.
    pub(crate) async fn send_on<B, C>(
        pool: &Http1Pool,
        to: Destination,
        connect: impl FnOnce() -> C,
        req: Request<B>,
    ) -> Result<Response<Body>, PoolError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
        C: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        let (head, body) = req.into_parts();
        pool.send(to, connect, &head, body).await
    }

    async fn send(pool: &Http1Pool, req: Request<TestBody>) -> Result<Response<Body>, PoolError> {
        let addr = req.headers()[http::header::HOST].to_str().unwrap().parse().unwrap();
        send_on(pool, plain(addr), || tcp(addr), req).await
    }

    /// The body and trailers of a response.
    async fn read(resp: Response<Body>) -> (String, Option<HeaderMap>) {
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (String::from_utf8_lossy(&collected.to_bytes()).into_owned(), trailers)
    }

    async fn get(pool: &Http1Pool, addr: SocketAddr) -> String {
        read(send(pool, request(Method::GET, "/", addr, empty())).await.unwrap()).await.0
    }

    /// An application speaking HTTP/1.1 by hand, answering `ok` to each request head, on
    /// connections it counts. `answers` is how many requests a connection gets answers to;
    /// after them it closes the connection, having read the next request when
    /// `close_under_next` (as an application whose keep-alive ran out just then does).
    async fn app(answers: usize, close_under_next: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut buf, mut seen, mut answered) = (vec![0u8; 4096], Vec::new(), 0);
                    loop {
                        let Ok(n) = tcp.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if answered == answers {
                                return;
                            }
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if tcp.write_all(answer).await.is_err() {
                                return;
                            }
                            answered += 1;
                            if answered == answers && !close_under_next {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// hyper's HTTP/1.1 server: `/echo` answers the request's body with its trailer `x-t` as
    /// a header; `/big` 100 KiB of a declared length; `/stream` three chunks and a trailer.
    async fn hyper_app() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let resp = match req.uri().path() {
                        "/echo" => {
                            let collected = req.into_body().collect().await.unwrap();
                            let t = collected.trailers().and_then(|t| t.get("x-t")).cloned();
                            let mut resp = Response::new(Full::new(collected.to_bytes()).boxed());
                            if let Some(t) = t {
                                resp.headers_mut().insert("x-t", t);
                            }
                            resp
                        }
                        "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; 100 * 1024])).boxed()),
                        _ => {
                            let mut t = HeaderMap::new();
                            t.insert("grpc-status", "0".parse().unwrap());
                            let frames = ["a", "bb", "ccc"]
                                .map(|d| Ok::<_, Infallible>(Frame::data(Bytes::from(d))))
                                .into_iter()
                                .chain([Ok(Frame::trailers(t))]);
                            let mut resp = Response::new(StreamBody::new(tokio_stream::iter(frames)).boxed());
                            resp.headers_mut().insert(http::header::TRAILER, "grpc-status".parse().unwrap());
                            resp
                        }
                    };
                    Ok::<_, Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let (addr, accepted) = app(usize::MAX, false).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_application_closed_is_replaced_without_failing_a_request() {
        let (addr, accepted) = app(1, false).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await, "ok");
            // Time for the close to arrive.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_request_the_application_closed_under_is_sent_again_only_if_that_is_safe() {
        let (addr, accepted) = app(1, true).await;
        let pool = pool();
        assert_eq!(get(&pool, addr).await, "ok");
        assert_eq!(get(&pool, addr).await, "ok", "a GET goes again over a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let post = request(Method::POST, "/", addr, Full::new(Bytes::from("x")).boxed());
        let Err(PoolError::Http(why)) = send(&pool, post).await else { panic!("a POST is not sent twice") };
        assert!(why.contains("closed the connection without answering"), "{why}");
    }

    #[tokio::test]
    async fn a_request_whose_own_body_fails_is_told_apart_from_an_upstream_failure() {
        let (addr, _) = app(usize::MAX, false).await;
        let frames: [Result<Frame<Bytes>, crate::body::BoxError>; 2] =
            [Ok(Frame::data(Bytes::from("part"))), Err("a chunk not ended by CRLF".into())];
        let req = Request::post("/echo")
            .header(http::header::HOST, addr.to_string())
            .body(StreamBody::new(tokio_stream::iter(frames)))
            .unwrap();
        let Err(PoolError::Request(why)) = send_on(&pool(), plain(addr), || tcp(addr), req).await else {
            panic!("the client's body failed, not the upstream")
        };
        assert!(why.contains("a chunk not ended by CRLF"), "{why}");
    }

    #[tokio::test]
    async fn a_connection_refused_leaves_a_streaming_body_unread_to_go_elsewhere() {
        // A port nothing listens on.
        let refusing = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let (tx, fed) = fed_body(1);
        tx.send(Ok(Frame::data(Bytes::from("ready at once")))).await.unwrap();
        drop(tx);
        let mut body = Body::streaming(fed);
        let again = body.keep_again().unwrap();
        let to = |addr: SocketAddr, body| {
            Request::post("/echo").header(http::header::HOST, addr.to_string()).body(body).unwrap()
        };
        let pool = pool();
        let refused = send_on(&pool, plain(refusing), || tcp(refusing), to(refusing, body)).await;
        assert!(matches!(refused, Err(PoolError::Connect(_))), "refused");
        let body = again.take().expect("nothing of the body was read");
        let app = hyper_app().await;
        let answer = send_on(&pool, plain(app), || tcp(app), to(app, body)).await.unwrap();
        assert_eq!(read(answer).await.0, "ready at once", "all of it reached the other");
    }

    #[tokio::test]
    async fn requests_at_once_each_get_a_connection_and_all_are_kept() {
        let (addr, accepted) = app(usize::MAX, false).await;
        let pool = pool();
        let (a, b, c) = tokio::join!(get(&pool, addr), get(&pool, addr), get(&pool, addr));
        assert_eq!([a, b, c], ["ok", "ok", "ok"]);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.idle.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let sent = send(&pool(), request(Method::GET, "/", addr, empty())).await;
        assert!(matches!(sent, Err(PoolError::Connect(_))), "{:?}", sent.err());
    }

    #[tokio::test]
    async fn a_connection_carries_requests_for_its_own_destination_only() {
        let (addr, accepted) = app(usize::MAX, false).await;
        let pool = pool();
        assert_eq!(get(&pool, addr).await, "ok");
        let id = SpiffeId::parse("spiffe://td.example/ns/shop/sa/reviews").unwrap();
        let tls = Destination { addr, mtls: Some((Arc::new(id), 1)) };
        let resp = send_on(&pool, tls, || tcp(addr), request(Method::GET, "/", addr, empty())).await.unwrap();
        assert_eq!(read(resp).await.0, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a plaintext connection is not one with an identity");
        assert_eq!(get(&pool, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "each kind is reused");
    }

    #[tokio::test]
    async fn bodies_of_a_declared_length_or_in_chunks_with_trailers_arrive_whole_both_ways() {
        let addr = hyper_app().await;
        let pool = pool();
        let full = request(Method::POST, "/echo", addr, Full::new(Bytes::from("hello")).boxed());
        assert_eq!(read(send(&pool, full).await.unwrap()).await.0, "hello");

        let (tx, body) = fed_body(4);
        let streamed = request(Method::POST, "/echo", addr, body);
        let sender = tokio::spawn(async move {
            for piece in ["one ", "two ", "three"] {
                tx.send(Ok(Frame::data(Bytes::from(piece)))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut t = HeaderMap::new();
            t.insert("x-t", "sent".parse().unwrap());
            tx.send(Ok(Frame::trailers(t))).await.unwrap();
        });
        let resp = send(&pool, streamed).await.unwrap();
        sender.await.unwrap();
        assert_eq!(resp.headers()["x-t"], "sent", "the request's trailers reached the application");
        assert_eq!(read(resp).await.0, "one two three");

        let big = send(&pool, request(Method::GET, "/big", addr, empty())).await.unwrap();
        assert!(matches!(big.body(), Body::Streaming(_)), "past 16 KiB a body streams");
        assert_eq!(big.body().size_hint().exact(), Some(100 * 1024));
        assert_eq!(read(big).await.0.len(), 100 * 1024);

        let mut stream = request(Method::GET, "/stream", addr, empty());
        // hyper's server sends the trailers it announced to a client that says it takes them.
        stream.headers_mut().insert(http::header::TE, "trailers".parse().unwrap());
        let (body, trailers) = read(send(&pool, stream).await.unwrap()).await;
        assert_eq!(body, "abbccc");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert_eq!(
            pool.idle.lock().unwrap().len(),
            1,
            "one connection carried every exchange, and is idle again"
        );
    }

    #[tokio::test]
    async fn an_interim_100_continue_does_not_stop_the_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let (mut buf, mut seen) = (vec![0u8; 4096], Vec::new());
            let mut continued = false;
            // The head, then `100 Continue`, then the chunked body to its last chunk.
            while !seen.ends_with(b"0\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the body never came");
                seen.extend_from_slice(&buf[..n]);
                if !continued && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
                    continued = true;
                }
            }
            let answer = if String::from_utf8_lossy(&seen).contains("after") { "got it" } else { "short" };
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}", answer.len());
            tcp.write_all(head.as_bytes()).await.unwrap();
        });
        let (tx, body) = fed_body(1);
        let mut req = request(Method::POST, "/", addr, body);
        req.headers_mut().insert(http::header::EXPECT, "100-continue".parse().unwrap());
        let pool = pool();
        let sent = tokio::spawn(async move { read(send(&pool, req).await.unwrap()).await.0 });
        // The body comes after the interim answer has.
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(Ok(Frame::data(Bytes::from("sent after 100")))).await.unwrap();
        drop(tx);
        let answer = tokio::time::timeout(Duration::from_secs(5), sent).await.expect("answered").unwrap();
        assert_eq!(answer, "got it", "the whole body reached the application");
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_body_ends_the_request_and_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let _ = tcp.read(&mut head).await;
            let _ = tcp.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let (tx, body) = fed_body(1);
        tx.send(Ok(Frame::data(Bytes::from("first")))).await.unwrap();
        let pool = pool();
        let resp =
            tokio::time::timeout(Duration::from_secs(5), send(&pool, request(Method::POST, "/", addr, body)))
                .await
                .expect("answered while the body was still open")
                .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(pool.idle.lock().unwrap().is_empty(), "a connection with half a request on it is not reused");
        drop(tx);
    }
}
