//! The agent's HTTP/2 client (gRPC and other h2 clusters), on the h2 crate: one multiplexed
//! connection per destination, each driven by a task of its own.
//!
//! hyper's client put two more tasks and a channel on every request: the request went to the
//! connection's task through a channel, its body was sent from a task spawned for it, and its
//! response came back from another. Here the request's own task opens the stream, sends the
//! body and waits for the answer; only a body still being sent when the answer begins (a
//! stream both ways) goes on in a task of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Request, Response};
use hyper::body::{Body, Frame};

use tower::BoxError;

use crate::http1_codec::MAX_HEAD_BYTES;
use crate::http1_pool::{Destination, PoolError, Upstream};

/// Flow-control windows offered to upstreams: a stream may have this much on its way before
/// the agent has passed it on (h2's default of 64 KiB would stall a fast upstream).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 2 << 20;

/// One open connection per destination, shared by every request to it.
pub(crate) struct H2Pool {
    connections: Mutex<Vec<Open>>,
    idle: Duration,
}

struct Open {
    to: Destination,
    send: SendRequest<Bytes>,
    last_used: Instant,
}

impl H2Pool {
    /// Connections unused for `idle` are let go at the next request (h2 closes a connection
    /// when its last handle goes).
    pub fn new(idle: Duration) -> H2Pool {
        H2Pool { connections: Mutex::default(), idle }
    }

    /// Sends `req` to `to` over its connection, opened with `connect` when there is none or
    /// the one there was has closed. The URI must hold the scheme and authority.
    pub async fn send<B, C, F>(
        &self,
        to: Destination,
        connect: C,
        req: Request<B>,
    ) -> Result<Response<H2Body>, PoolError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
        C: FnOnce() -> F,
        F: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        let (head, body) = req.into_parts();
        let end = body.is_end_stream();
        // A cached connection found closed is replaced before anything of the request is sent.
        let ready = match self.cached(&to) {
            Some(send) => send.ready().await.inspect_err(|_| self.forget(&to)).ok(),
            None => None,
        };
        let mut send = match ready {
            Some(send) => send,
            None => {
                // Out of line: the state of opening a connection is not carried by every request.
                let send = Box::pin(self.connect(to, connect)).await?;
                send.ready().await.map_err(|e| PoolError::Http(e.to_string()))?
            }
        };
        let (mut response, tx) = send
            .send_request(Request::from_parts(head, ()), end)
            .map_err(|e| PoolError::Http(e.to_string()))?;
        let response = if end {
            response.await
        } else {
            let mut pipe = Pipe { body, tx };
            tokio::select! {
                biased;
                piped = &mut pipe => {
                    piped.map_err(|e| PoolError::Http(format!("request body: {e}")))?;
                    response.await
                }
                answer = &mut response => {
                    // The answer began before the request ended (a stream both ways): the rest
                    // of the request goes on beside it.
                    tokio::spawn(async move {
                        if let Err(e) = pipe.await {
                            tracing::debug!(error = %e, "request body to an HTTP/2 upstream ended early");
                        }
                    });
                    answer
                }
            }
        };
        let response = response.map_err(|e| PoolError::Http(e.to_string()))?;
        Ok(response.map(|recv| H2Body { recv, data_done: false }))
    }

    fn cached(&self, to: &Destination) -> Option<SendRequest<Bytes>> {
        let mut connections = self.connections.lock().expect("not poisoned");
        let now = Instant::now();
        connections.retain(|c| now.duration_since(c.last_used) < self.idle);
        let open = connections.iter_mut().find(|c| c.to == *to)?;
        open.last_used = now;
        Some(open.send.clone())
    }

    fn forget(&self, to: &Destination) {
        self.connections.lock().expect("not poisoned").retain(|c| c.to != *to);
    }

    async fn connect<C, F>(&self, to: Destination, connect: C) -> Result<SendRequest<Bytes>, PoolError>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<Box<dyn Upstream>, PoolError>>,
    {
        let io = connect().await?;
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| PoolError::Connect(format!("HTTP/2 handshake: {e}")))?;
        let addr = to.addr;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %addr, error = %e, "HTTP/2 connection closed");
            }
        });
        let mut connections = self.connections.lock().expect("not poisoned");
        connections.retain(|c| c.to != to);
        connections.push(Open { to, send: send.clone(), last_used: Instant::now() });
        Ok(send)
    }
}

/// A body whose rest is no larger than this is sent without waiting for room in the stream:
/// h2 holds it until the peer's window allows, and the first of it leaves with the head
/// instead of in a write of its own once the stream has been opened.
const UNRESERVED_BODY: u64 = 16 * 1024;

/// A request body on its way into its stream: a frame is taken from the body only once the
/// stream has room for some of it (or the rest of the body is small), so at most one frame,
/// or `UNRESERVED_BODY`, waits beyond the peer's window.
struct Pipe<B> {
    body: B,
    tx: SendStream<Bytes>,
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
            let small = me.body.size_hint().exact().is_some_and(|n| n <= UNRESERVED_BODY);
            if !small {
                me.tx.reserve_capacity(1);
                if me.tx.capacity() == 0 {
                    match ready!(me.tx.poll_capacity(cx)) {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Poll::Ready(Err(e.into())),
                        None => return Poll::Ready(Err("the upstream closed the stream".into())),
                    }
                }
            }
            if let Poll::Ready(reason) = me.tx.poll_reset(cx) {
                let reason = reason?;
                return Poll::Ready(Err(format!("the upstream reset the stream: {reason}").into()));
            }
            match ready!(Pin::new(&mut me.body).poll_frame(cx)) {
                None => {
                    me.tx.reserve_capacity(0);
                    return Poll::Ready(me.tx.send_data(Bytes::new(), true).map_err(Into::into));
                }
                Some(Err(e)) => {
                    me.tx.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Err(e.into()));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = me.body.is_end_stream();
                        me.tx.send_data(data, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(frame) => {
                        me.tx.reserve_capacity(0);
                        let trailers = frame.into_trailers().unwrap_or_else(|_| HeaderMap::new());
                        return Poll::Ready(me.tx.send_trailers(trailers).map_err(Into::into));
                    }
                },
            }
        }
    }
}

/// A response body from an HTTP/2 upstream: its data, then its trailers. What is taken is
/// given back to the upstream's window at once.
pub(crate) struct H2Body {
    recv: RecvStream,
    data_done: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = self.get_mut();
        if !me.data_done {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => me.data_done = true,
            }
        }
        Poll::Ready(ready!(me.recv.poll_trailers(cx)).transpose().map(|t| t.map(Frame::trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    use super::*;
    use crate::http1_pool::tests::{TestBody, fed_body, plain, tcp};

    fn full(data: impl Into<Bytes>) -> TestBody {
        Full::new(data.into()).boxed()
    }

    fn post(addr: SocketAddr, body: TestBody) -> Request<TestBody> {
        Request::post(format!("http://{addr}/echo")).body(body).unwrap()
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
            let resp =
                pool.send(plain(server.addr), || tcp(server.addr), post(server.addr, body)).await.unwrap();
            assert_eq!(resp.status(), 200);
            let (body, trailers) = read(resp).await;
            assert_eq!(body, format!("call {i}"));
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "one connection carried the three calls");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_before_the_next_call() {
        let server = echo().await;
        let pool = H2Pool::new(Duration::from_secs(5));
        let call = || pool.send(plain(server.addr), || tcp(server.addr), post(server.addr, full("x")));
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
        let call = pool.send(plain(server.addr), || tcp(server.addr), post(server.addr, body));
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
            let resp =
                pool.send(plain(server.addr), || tcp(server.addr), post(server.addr, body)).await.unwrap();
            read(resp).await
        };
        let (echoed, _) = tokio::time::timeout(Duration::from_secs(20), call).await.expect("not stalled");
        assert_eq!(echoed.len(), big.len());
        assert!(echoed == big, "the echo is the body sent");
    }

    async fn next(body: &mut H2Body) -> Frame<Bytes> {
        tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap()
    }
}
