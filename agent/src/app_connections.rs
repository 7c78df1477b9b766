//! HTTP/1.1 connections from the agent to the application beside it, kept open between
//! requests.
//!
//! hyper-util's pooled client does this for any number of hosts, and pays for it on every
//! request: the host hashed into its pool, a checkout future, a guard that puts the
//! connection back; about a tenth of the agent's instructions for one proxied request. The
//! application listens on one or a few loopback addresses, so a short list is enough.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::{Body, CONNECT_TIMEOUT, UPSTREAM_IDLE};

/// Idle connections kept at most; one finishing past it is closed.
const MAX_IDLE: usize = 256;

type IdleList = Mutex<Vec<Idle>>;

/// Idle connections to the application, the most recently used last.
#[derive(Default)]
pub(crate) struct AppConnections {
    idle: Arc<IdleList>,
}

struct Idle {
    addr: SocketAddr,
    since: Instant,
    sender: SendRequest<Body>,
}

/// A connection carrying one request: idle again once dropped, which is when the response's
/// body has been read (or dropped, and then hyper closes the connection, which the idle list
/// sees).
pub(crate) struct Lease {
    idle: Weak<IdleList>,
    addr: SocketAddr,
    sender: Mutex<Option<SendRequest<Body>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let sender = self.sender.get_mut().expect("not poisoned").take();
        let (Some(idle), Some(sender)) = (self.idle.upgrade(), sender) else { return };
        let mut idle = idle.lock().expect("not poisoned");
        if !sender.is_closed() && idle.len() < MAX_IDLE {
            idle.push(Idle { addr: self.addr, since: Instant::now(), sender });
        }
    }
}

/// Why a request did not get a response.
pub(crate) enum AppError {
    /// No connection could be opened.
    Connect(String),
    Http(hyper::Error),
}

impl AppConnections {
    /// Sends `req` to the application at `addr` over an idle connection, or a new one. A
    /// request that an idle connection closed before taking (the application ends idle
    /// connections when it likes) is sent again over a new one. The response comes with the
    /// lease on its connection.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Arc<Lease>), AppError> {
        if let Some(mut sender) = self.idle_to(addr) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(addr, sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(AppError::Http(e.into_error())),
                },
            }
        }
        let mut sender = connect(addr).await?;
        let resp = sender.send_request(req).await.map_err(AppError::Http)?;
        Ok((resp, self.lease(addr, sender)))
    }

    /// The most recently used idle connection to `addr` that can take a request, dropping
    /// the closed and those idle longer than `UPSTREAM_IDLE`.
    fn idle_to(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().expect("not poisoned");
        let now = Instant::now();
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < UPSTREAM_IDLE);
        let i = idle.iter().rposition(|c| c.addr == addr && c.sender.is_ready())?;
        Some(idle.remove(i).sender)
    }

    fn lease(&self, addr: SocketAddr, sender: SendRequest<Body>) -> Arc<Lease> {
        Arc::new(Lease { idle: Arc::downgrade(&self.idle), addr, sender: Mutex::new(Some(sender)) })
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>, AppError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| AppError::Connect(format!("connecting to {addr} timed out")))?
        .map_err(|e| AppError::Connect(format!("connecting to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(AppError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "connection to the application ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn get(addr: SocketAddr) -> Request<Body> {
        let body = Empty::new().map_err(|never| match never {}).boxed();
        let mut req = Request::new(body);
        *req.uri_mut() = format!("http://{addr}/").parse().unwrap();
        req
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

    async fn answer(pool: &AppConnections, addr: SocketAddr) -> String {
        let (resp, lease) = pool.send(addr, get(addr)).await.unwrap_or_else(|_| panic!("no answer"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        drop(lease);
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let (addr, accepted) = app(false).await;
        let pool = AppConnections::default();
        for _ in 0..5 {
            assert_eq!(answer(&pool, addr).await, "ok");
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_application_closed_is_replaced_without_failing_a_request() {
        let (addr, accepted) = app(true).await;
        let pool = AppConnections::default();
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
        let pool = AppConnections::default();
        let (a, b, c) =
            tokio::join!(pool.send(addr, get(addr)), pool.send(addr, get(addr)), pool.send(addr, get(addr)));
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
        let pool = AppConnections::default();
        assert!(matches!(pool.send(addr, get(addr)).await, Err(AppError::Connect(_))));
    }
}
