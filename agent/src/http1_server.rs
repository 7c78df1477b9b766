//! The agent's HTTP/1.1 server (RFC 9112): a connection's requests read one after another,
//! each answered before the next is read, on the task that serves the connection
//! (`http1_codec.rs` has the wire format). The head is parsed once, straight into the request
//! the proxy routes, and an answer's head leaves with as much of its body as is ready, in one
//! write: hyper's server had taken over a third of the agent's instructions per request
//! (BENCHMARKS.md). HTTP/2 has its own (`h2_server.rs`).
//!
//! A request body that did not arrive whole with its head is read from the connection as the
//! proxy passes it on: the body borrows the connection and gives it back when it ends, fails
//! or is dropped, and the answer is written then. So an answer to a request whose body is
//! still arriving waits for the body, as behind nginx (which reads a body whole before it
//! passes the request on); a body dropped unread ends the connection after the answer.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::body::Body;
use crate::http1_codec::{
    self, ChunkedDecoder, FieldSpan, Framing, MAX_HEAD_BYTES, Malformed, Remaining, RequestHead, Step,
};
use crate::http1_pool::Outgoing;
use crate::{spare_fields, upgrade};

/// Room made in a connection's buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Serves `io` with `answer` until the client closes the connection or asks to, sends
/// something that is not HTTP/1.1 (answered 400, or 431 for a head past `MAX_HEAD_BYTES`),
/// takes longer than `header_timeout` over a head or between requests, or the agent drains
/// (between requests; a request begun is answered first, with `Connection: close`).
pub(crate) async fn serve<IO, F, Fut>(
    io: IO,
    mut answer: F,
    header_timeout: Duration,
    draining: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let mut held =
        Some(Conn { io, buf: BytesMut::with_capacity(READ_CHUNK), spans: Vec::new(), wire: Vec::new() });
    // One timer and one wait for the drain for the connection's life, not one per request:
    // the timer is moved on only when it fires before a head is due, which is rare.
    let deadline = tokio::time::sleep(header_timeout);
    tokio::pin!(deadline);
    let mut drain = draining.clone();
    let drained = async move {
        if drain.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(drained);
    loop {
        let conn = held.as_mut().expect("given back before the next request");
        let due = tokio::time::Instant::now() + header_timeout;
        let next = loop {
            // The head first: most often it has arrived when the task is woken, and the
            // other two are then not polled (a drain begun still closes the connection after
            // this request's answer).
            tokio::select! {
                biased;
                next = conn.next_head() => break next,
                () = &mut drained => return Ok(()),
                () = &mut deadline => {
                    if tokio::time::Instant::now() >= due {
                        anyhow::bail!("no request head within {header_timeout:?}");
                    }
                    deadline.as_mut().reset(due);
                }
            }
        };
        let head = match next {
            Ok(None) => return Ok(()),
            Ok(Some(head)) => head,
            Err((status, why)) => {
                let refusal = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = conn.io.write_all(refusal.as_bytes()).await;
                let _ = conn.io.shutdown().await;
                return Err(why.into());
            }
        };
        let RequestHead { mut parts, framing, mut keep_alive, expects_continue, upgrade } = *head;
        if let Some(protocol) = upgrade {
            parts.extensions.insert(upgrade::Requested(protocol));
        }
        let (version, head_request) = (parts.version, parts.method == Method::HEAD);
        let (body, lent) = match framing {
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                (Body::whole(conn.buf.split_to(n as usize).freeze()), None)
            }
            Framing::Length(_) | Framing::Chunked => {
                if expects_continue {
                    conn.send(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                }
                let left = match framing {
                    Framing::Length(n) => Remaining::Length(n),
                    _ => Remaining::Chunked(ChunkedDecoder::default()),
                };
                let (back, returned) = oneshot::channel();
                let body = RequestBody { conn: held.take(), left, back: Some(back) };
                (Body::streaming(body), Some(returned))
            }
            Framing::Empty | Framing::UntilClose => (Body::empty(), None),
        };
        let response = answer(Request::from_parts(parts, body)).await;
        if let Some(returned) = lent {
            // The body gives the connection back when it ends or is dropped.
            let Ok(back) = returned.await else { return Ok(()) };
            keep_alive &= back.finished;
            held = Some(back.conn);
        }
        let conn = held.as_mut().expect("given back");
        if matches!(response.body(), Body::Switched(_)) {
            // The upstream agreed to switch protocols: its 101 goes back, then the two
            // connections are one.
            let (head, Body::Switched(up)) = response.into_parts() else { unreachable!("matched") };
            conn.respond(Response::from_parts(head, Body::empty()), version, false, true).await?;
            let Conn { io, buf, .. } = held.take().expect("given back");
            return Ok(upgrade::join(io, buf.freeze(), *up).await?);
        }
        let keep_alive = keep_alive && !*draining.borrow();
        if !conn.respond(response, version, head_request, keep_alive).await? {
            let _ = conn.io.shutdown().await;
            return Ok(());
        }
    }
}

/// A client's connection, and what has been read from it and not used yet.
struct Conn<IO> {
    io: IO,
    buf: BytesMut,
    /// Room to note where a head's fields lie, kept from one request to the next.
    spans: Vec<FieldSpan>,
    /// Room for an answer's head and the body that leaves with it, kept from one answer to
    /// the next unless a large one grew it.
    wire: Vec<u8>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// Reads what has arrived into `buf`: `Ok(0)` at the end of the stream.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        std::pin::pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }

    /// The next request head; `None` when the client closed the connection between
    /// requests (or it failed). A head that is refused comes with the status to refuse it.
    /// Boxed, so that it leaves through the wait for a head, the drain or the timer as a pointer.
    async fn next_head(&mut self) -> Result<Option<Box<RequestHead>>, (StatusCode, Malformed)> {
        loop {
            if !self.buf.is_empty() {
                match http1_codec::parse_request(&mut self.buf, &mut self.spans) {
                    Ok(Some(head)) => return Ok(Some(Box::new(head))),
                    Ok(None) if self.buf.len() >= MAX_HEAD_BYTES && !self.buf.contains(&b'\n') => {
                        let why = Malformed("a request line past 64 KiB");
                        return Err((StatusCode::URI_TOO_LONG, why));
                    }
                    Ok(None) if self.buf.len() >= MAX_HEAD_BYTES => {
                        let why = Malformed("a request head past 64 KiB");
                        return Err((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, why));
                    }
                    Ok(None) => {}
                    Err(why) => return Err((why.status(), why)),
                }
            }
            match poll_fn(|cx| self.poll_read_more(cx)).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Writes `response`, its head with what of its body is ready in one write; `Ok(false)`
    /// when the connection ends after it.
    async fn respond<B>(
        &mut self,
        response: Response<B>,
        version: Version,
        head_request: bool,
        keep_alive: bool,
    ) -> anyhow::Result<bool>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (head, body) = response.into_parts();
        let status = head.status;
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = match Outgoing::framing_of(&body) {
            _ if bodiless => Framing::Empty,
            // An HTTP/1.0 client knows no chunks: the body ends with the connection.
            Framing::Chunked if version == Version::HTTP_10 => Framing::UntilClose,
            framing => framing,
        };
        let close = !keep_alive || framing == Framing::UntilClose;
        // Room for the head and a body small enough to leave with it.
        let ready = body.size_hint().exact().map_or(0, |n| n.min(16 * 1024) as usize);
        let mut outgoing = Outgoing::framed(body, framing);
        let mut wire = std::mem::take(&mut self.wire);
        wire.reserve(512 + ready);
        http1_codec::encode_response(&mut wire, &head, framing, head_request, close);
        spare_fields::give_back(head.headers);
        outgoing.take_ready(&mut wire).map_err(anyhow::Error::msg)?;
        self.send(&wire).await?;
        while !outgoing.done {
            let frame = poll_fn(|cx| Pin::new(&mut outgoing.body).poll_frame(cx)).await;
            wire.clear();
            outgoing.encode(frame, &mut wire).map_err(anyhow::Error::msg)?;
            self.send(&wire).await?;
        }
        http1_codec::keep_wire(&mut self.wire, wire);
        Ok(!close)
    }
}

/// A request body read from the client's connection as it is taken.
pub(crate) struct RequestBody<IO> {
    /// `None` once the body has ended or failed (the connection was given back).
    conn: Option<Conn<IO>>,
    left: Remaining,
    back: Option<oneshot::Sender<Returned<IO>>>,
}

/// The connection a body gives back; `finished`: the whole body was read, so the next
/// request can follow on it.
struct Returned<IO> {
    conn: Conn<IO>,
    finished: bool,
}

impl<IO> RequestBody<IO> {
    fn give_back(&mut self, finished: bool) {
        if let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) {
            let _ = back.send(Returned { conn, finished });
        }
    }
}

impl<IO> Drop for RequestBody<IO> {
    fn drop(&mut self) {
        self.give_back(false);
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> hyper::body::Body for RequestBody<IO> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        let step = loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            if let Some(step) = this.left.next(&mut conn.buf) {
                break step;
            }
            match ready!(conn.poll_read_more(cx)) {
                Ok(0) => break this.left.closed("the client"),
                Ok(_) => {}
                Err(e) => break Step::Fail(e),
            }
        };
        Poll::Ready(match step {
            Step::Data(data, last) => {
                if last {
                    this.give_back(true);
                }
                Some(Ok(Frame::data(data)))
            }
            // Trailers end the body: a reader need not ask again for the connection to go on.
            Step::Trailers(t) => {
                this.give_back(true);
                Some(Ok(Frame::trailers(t)))
            }
            Step::End => {
                this.give_back(true);
                None
            }
            Step::Fail(e) => {
                this.give_back(false);
                Some(Err(e))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.left.size_hint(self.conn.is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// What the test's application saw of a request: `method path body-length body`, and
    /// `trailer: value` lines after it.
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

    async fn echo(req: Request<crate::body::Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let answer = match parts.uri.path() {
            // Answers without reading the body.
            "/early" => "early".to_owned(),
            // Reads the body up to its trailers, and no further, as a proxy passing it on does.
            "/until-trailers" => {
                let mut body = body;
                while let Some(frame) = body.frame().await {
                    if frame.expect("the body arrives").is_trailers() {
                        break;
                    }
                }
                "trailers".to_owned()
            }
            _ => {
                let collected = body.collect().await.expect("the body arrives");
                let trailers = collected.trailers().cloned().unwrap_or_default();
                let bytes = collected.to_bytes();
                let mut a = format!(
                    "{} {} {} {}",
                    parts.method,
                    parts.uri,
                    bytes.len(),
                    String::from_utf8_lossy(&bytes)
                );
                for (name, value) in &trailers {
                    a += &format!("\n{name}: {}", value.to_str().unwrap());
                }
                a
            }
        };
        if parts.uri.path() == "/unsized" {
            // A body of unknown length: chunked to an HTTP/1.1 client.
            let frames = [Ok::<_, BoxError>(Frame::data(Bytes::from(answer)))];
            return Response::new(StreamBody::new(tokio_stream::iter(frames)).boxed());
        }
        Response::new(Full::new(Bytes::from(answer)).map_err(|never| match never {}).boxed())
    }

    async fn server() -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain, draining) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let answer = |req| async { echo(req).await.map(crate::body::Body::streaming) };
                tokio::spawn(serve(tcp, answer, Duration::from_secs(10), draining.clone()));
            }
        });
        (addr, drain)
    }

    /// Sends `request` (in pieces, `pause` apart) and reads until the server closes or goes
    /// quiet for a second.
    async fn exchange(addr: SocketAddr, pieces: &[&[u8]]) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        for piece in pieces {
            tcp.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn bodies(answer: &str) -> Vec<&str> {
        answer.split("HTTP/1.1 ").skip(1).map(|r| r.split_once("\r\n\r\n").map_or("", |(_, b)| b)).collect()
    }

    #[tokio::test]
    async fn requests_on_one_connection_are_answered_in_order_pipelined_or_not() {
        let (addr, _drain) = server().await;
        let two = b"GET /a?x=1 HTTP/1.1\r\nhost: h\r\n\r\nPOST /b HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nxyz";
        let answer = exchange(addr, &[two, b"GET /c HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n"]).await;
        assert_eq!(bodies(&answer), ["GET /a?x=1 0 ", "POST /b 3 xyz", "GET /c 0 "], "{answer}");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("content-length: 13\r\n"), "{answer}");
        assert!(answer.contains("date: "), "a Date field is added: {answer}");
        assert!(answer.ends_with("connection: close\r\n\r\nGET /c 0 "), "the last one closes: {answer}");
    }

    #[tokio::test]
    async fn bodies_arriving_in_pieces_or_chunks_with_trailers_reach_the_handler_whole() {
        let (addr, _drain) = server().await;
        let answer = exchange(
            addr,
            &[
                b"PUT /len HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\n01234",
                b"56789",
                b"POST /chunks HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
                b"2;ext=1\r\nde\r\n0\r\nx-sum: 5\r\n\r\n",
                b"GET /after HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
            ],
        )
        .await;
        assert_eq!(
            bodies(&answer),
            ["PUT /len 10 0123456789", "POST /chunks 5 abcde\nx-sum: 5", "GET /after 0 "],
            "{answer}"
        );
        // A body read up to its trailers leaves the connection to the next request.
        let answer = exchange(
            addr,
            &[b"POST /until-trailers HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-sum: 1\r\n\r\nGET /after HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n"],
        )
        .await;
        assert_eq!(bodies(&answer), ["trailers", "GET /after 0 "], "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_expects_100_continue_gets_it_before_sending_the_body() {
        let (addr, _drain) = server().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /x HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
            .await
            .unwrap();
        let mut interim = [0u8; 25];
        tcp.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        tcp.write_all(b"ok").await.unwrap();
        let mut rest = vec![0u8; 256];
        let n = tcp.read(&mut rest).await.unwrap();
        assert!(String::from_utf8_lossy(&rest[..n]).ends_with("POST /x 2 ok"));
        // An HTTP/1.0 client is sent no interim response (RFC 9110 §15.2): it sends the body
        // anyway.
        let old = exchange(
            addr,
            &[b"POST /x HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n", b"ok"],
        )
        .await;
        assert!(old.starts_with("HTTP/1.1 200 OK\r\n") && old.ends_with("POST /x 2 ok"), "{old}");
    }

    #[tokio::test]
    async fn heads_bodies_of_unknown_length_and_http_1_0_are_framed_as_rfc_9112_says() {
        let (addr, _drain) = server().await;
        let head = exchange(addr, &[b"HEAD /h HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n"]).await;
        assert!(head.ends_with("\r\n\r\n"), "no body after a HEAD's answer: {head}");
        let chunked =
            exchange(addr, &[b"GET /unsized HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n"]).await;
        assert!(chunked.contains("transfer-encoding: chunked\r\n"), "{chunked}");
        assert!(chunked.ends_with("\r\n\r\nf\r\nGET /unsized 0 \r\n0\r\n\r\n"), "{chunked}");
        let old = exchange(addr, &[b"GET /unsized HTTP/1.0\r\n\r\n"]).await;
        assert!(!old.contains("transfer-encoding"), "an HTTP/1.0 client gets no chunks: {old}");
        assert!(old.contains("connection: close\r\n") && old.ends_with("\r\n\r\nGET /unsized 0 "), "{old}");
    }

    #[tokio::test]
    async fn an_answer_given_before_the_body_is_read_ends_the_connection() {
        let (addr, _drain) = server().await;
        let answer = exchange(
            addr,
            &[
                b"POST /early HTTP/1.1\r\nhost: h\r\ncontent-length: 100\r\n\r\npart",
                b"GET /never HTTP/1.1\r\nhost: h\r\n\r\n",
            ],
        )
        .await;
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert_eq!(bodies(&answer), ["early"], "{answer}");
    }

    #[tokio::test]
    async fn malformed_or_oversized_heads_and_ambiguous_framing_are_refused() {
        let (addr, _drain) = server().await;
        for (request, status) in [
            (b"GET / HTTP/1.1\r\nhost: h\r\nbad header\r\n\r\n".to_vec(), "400"),
            (
                b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec(),
                "400",
            ),
            (b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(), "400"),
            // A coding the agent does not decode (RFC 9112 §6.1).
            (b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n".to_vec(), "501"),
            (format!("GET /{} HTTP/1.1\r\nhost: h\r\n\r\n", "x".repeat(100 * 1024)).into_bytes(), "414"),
            (format!("GET / HTTP/1.1\r\nhost: h\r\n{}\r\n", "x-f: 1\r\n".repeat(150)).into_bytes(), "431"),
            (b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 1, 2\r\n\r\n".to_vec(), "400"),
            (b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), "400"),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "400"),
            (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n".to_vec(), "400"),
            (b"GET / HTTP/1.1\r\nhost: user@a\r\n\r\n".to_vec(), "400"),
            (
                format!("GET / HTTP/1.1\r\nhost: h\r\nx-big: {}\r\n\r\n", "x".repeat(100 * 1024))
                    .into_bytes(),
                "431",
            ),
        ] {
            let answer = exchange(addr, &[&request]).await;
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
            assert!(answer.contains("connection: close"), "{answer}");
        }
    }

    #[tokio::test]
    async fn draining_closes_a_connection_between_requests() {
        let (addr, drain) = server().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /1 HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
        let mut first = vec![0u8; 512];
        let n = tcp.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).ends_with("GET /1 0 "));
        drain.send_replace(true);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok() && rest.is_empty(), "closed without another answer");
    }
}
