//! The agent's HTTP/1.1 connections upstream, to the application beside it and to mesh
//! endpoints, kept open between requests.
//!
//! hyper-util's pooled client does this for any number of hosts, and pays for it on every
//! request: the host hashed into its pool, a checkout future, a guard that puts the
//! connection back; about a tenth of the agent's instructions for one proxied request. An
//! agent talks to a few addresses, so a short list is enough.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use trellis_ca::SpiffeId;

/// Idle connections kept at most; one finishing past it is closed.
const MAX_IDLE: usize = 256;

type IdleList<B> = Mutex<Vec<Idle<B>>>;

/// Idle connections for requests with bodies of type `B`, the most recently used last.
pub(crate) struct Http1Pool<B> {
    idle: Arc<IdleList<B>>,
    /// Longest a connection is kept idle: a request is never sent over one idle longer.
    max_idle_time: Duration,
}

/// What a connection was opened to: an address, and for mTLS the identity the endpoint
/// proved and the generation of the agent's TLS material it was proved with. A connection
/// carries requests for that destination only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Destination {
    pub addr: SocketAddr,
    pub mtls: Option<(SpiffeId, u64)>,
}

struct Idle<B> {
    to: Destination,
    since: Instant,
    sender: SendRequest<B>,
}

/// A connection carrying one request: idle again once dropped, which is when the response's
/// body has been read (or dropped, and then hyper closes the connection, which the idle list
/// sees).
pub(crate) struct Lease<B> {
    idle: Weak<IdleList<B>>,
    held: Option<(Destination, SendRequest<B>)>,
}

impl<B> Drop for Lease<B> {
    fn drop(&mut self) {
        let held = self.held.take();
        let (Some(idle), Some((to, sender))) = (self.idle.upgrade(), held) else { return };
        let mut idle = idle.lock().expect("not poisoned");
        if !sender.is_closed() && idle.len() < MAX_IDLE {
            idle.push(Idle { to, since: Instant::now(), sender });
        }
    }
}

/// Why a request did not get a response.
pub(crate) enum PoolError {
    /// No connection could be opened (TCP, or the TLS handshake).
    Connect(String),
    Http(hyper::Error),
}

impl<B> Http1Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(max_idle_time: Duration) -> Self {
        Http1Pool { idle: Arc::default(), max_idle_time }
    }

    /// Sends `req` to `to` over an idle connection, or over a new one that `connect` opens.
    /// A request that an idle connection closed before taking (the other side ends idle
    /// connections when it likes) is sent again over a new one. The response comes with the
    /// lease on its connection.
    pub(crate) async fn send<Io>(
        &self,
        to: Destination,
        connect: impl Future<Output = Result<Io, PoolError>>,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, Arc<Lease<B>>), PoolError>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Some(mut sender) = self.idle_to(&to) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(to, sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
        let io = connect.await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(PoolError::Http)?;
        let addr = to.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        let resp = sender.send_request(req).await.map_err(PoolError::Http)?;
        Ok((resp, self.lease(to, sender)))
    }

    /// The most recently used idle connection to `to` that can take a request, dropping the
    /// closed and those idle longer than `max_idle_time`.
    fn idle_to(&self, to: &Destination) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().expect("not poisoned");
        let now = Instant::now();
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < self.max_idle_time);
        let i = idle.iter().rposition(|c| c.to == *to && c.sender.is_ready())?;
        Some(idle.remove(i).sender)
    }

    fn lease(&self, to: Destination, sender: SendRequest<B>) -> Arc<Lease<B>> {
        Arc::new(Lease { idle: Arc::downgrade(&self.idle), held: Some((to, sender)) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    type Pool = Http1Pool<Empty<Bytes>>;

    fn pool() -> Pool {
        Http1Pool::new(Duration::from_secs(5))
    }

    /// `GET /` in origin form, as the proxy sends HTTP/1.1 upstream.
    fn get(addr: SocketAddr) -> Request<Empty<Bytes>> {
        Request::get("/").header(http::header::HOST, addr.to_string()).body(Empty::new()).unwrap()
    }

    /// An application answering every request with `ok`, on connections it counts; with
    /// `close_after_one`, it closes each connection after its first answer (as an
    /// application whose keep-alive ran out does), without saying so.
    async fn app(close_after_one: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = tcp.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if tcp.write_all(answer).await.is_err() || close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn plain(addr: SocketAddr) -> Destination {
        Destination { addr, mtls: None }
    }

    async fn tcp(addr: SocketAddr) -> Result<TcpStream, PoolError> {
        TcpStream::connect(addr).await.map_err(|e| PoolError::Connect(e.to_string()))
    }

    async fn send(
        pool: &Pool,
        addr: SocketAddr,
    ) -> Result<(Response<Incoming>, Arc<Lease<Empty<Bytes>>>), PoolError> {
        pool.send(plain(addr), tcp(addr), get(addr)).await
    }

    async fn answer(pool: &Pool, addr: SocketAddr) -> String {
        let (resp, lease) = send(pool, addr).await.unwrap_or_else(|_| panic!("no answer"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        drop(lease);
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let (addr, accepted) = app(false).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(answer(&pool, addr).await, "ok");
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_application_closed_is_replaced_without_failing_a_request() {
        let (addr, accepted) = app(true).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(answer(&pool, addr).await, "ok");
            // Time for the close to arrive: a close racing a request is the application's
            // to avoid (it answers `connection: close` instead).
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn requests_at_once_each_get_a_connection_and_all_are_kept() {
        let (addr, accepted) = app(false).await;
        let pool = pool();
        let (a, b, c) = tokio::join!(send(&pool, addr), send(&pool, addr), send(&pool, addr));
        let leased = [a, b, c];
        assert!(leased.iter().all(Result::is_ok));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for (resp, lease) in leased.into_iter().map(|r| r.unwrap_or_else(|_| panic!("no answer"))) {
            resp.into_body().collect().await.unwrap();
            drop(lease);
        }
        tokio::task::yield_now().await;
        assert_eq!(pool.idle.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let pool = pool();
        assert!(matches!(send(&pool, addr).await, Err(PoolError::Connect(_))));
    }

    #[tokio::test]
    async fn a_connection_carries_requests_for_its_own_destination_only() {
        let (addr, accepted) = app(false).await;
        let pool = pool();
        assert_eq!(answer(&pool, addr).await, "ok");
        let id = SpiffeId::parse("spiffe://td.example/ns/shop/sa/reviews").unwrap();
        let tls = Destination { addr, mtls: Some((id, 1)) };
        let (resp, lease) =
            pool.send(tls, tcp(addr), get(addr)).await.unwrap_or_else(|_| panic!("no answer"));
        resp.into_body().collect().await.unwrap();
        drop(lease);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a plaintext connection is not one with an identity");
        assert_eq!(answer(&pool, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "each kind is reused");
    }
}
