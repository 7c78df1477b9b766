//! HTTP/1.1 protocol switches (RFC 9110 §7.8), WebSocket's among them, through the agent: a
//! request that asks for one (`Connection: upgrade` and `Upgrade`) is routed as any other,
//! and once the upstream answers `101 Switching Protocols` the client's connection and the
//! upstream's are joined byte for byte, as a TCP listener's are. The agent's HTTP/1.1 server
//! reads the ask and the HTTP/1.1 client carries it; over HTTP/2 the request goes as a plain
//! one.

use bytes::Bytes;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A connection after a protocol switch: bytes both ways.
pub(crate) trait Tunnel: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Tunnel for T {}

/// A request's ask to switch protocols: its `Upgrade` value. The server puts it in the
/// request's extensions, where the client finds it.
#[derive(Clone, Debug)]
pub(crate) struct Requested(pub HeaderValue);

/// An upstream's side of a switch it agreed to: its connection, and what it sent after its
/// `101`.
pub(crate) struct Switched {
    pub io: Box<dyn Tunnel>,
    pub read_ahead: Bytes,
}

/// Carries bytes both ways between the client's connection (`down`, with what the client
/// sent after its request, `early`) and the upstream's, until both have closed.
pub(crate) async fn join<IO>(mut down: IO, early: Bytes, up: Switched) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Switched { mut io, read_ahead } = up;
    // Flushed at once: under TLS they would wait in the socket's buffer for the next bytes
    // from the other side, which may wait for them.
    if !early.is_empty() {
        io.write_all(&early).await?;
        io.flush().await?;
    }
    if !read_ahead.is_empty() {
        down.write_all(&read_ahead).await?;
        down.flush().await?;
    }
    crate::pipe::pipe(&mut down, &mut io).await.map(drop)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    use super::*;
    use crate::body::Body;
    use crate::http1_pool::Http1Pool;
    use crate::http1_pool::tests::{plain, tcp};

    /// An application that switches to `echo` when asked (and answers 426 otherwise): its
    /// 101 is followed at once by `hello`, then it sends back whatever comes.
    async fn app() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8];
                        if tcp.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if !(head.contains("\r\nconnection: upgrade\r\n")
                        && head.contains("\r\nupgrade: echo\r\n"))
                    {
                        let refusal = "HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n";
                        let _ = tcp.write_all(refusal.as_bytes()).await;
                        return;
                    }
                    let switched = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello";
                    tcp.write_all(switched.as_bytes()).await.unwrap();
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// The agent's HTTP/1.1 server in front of `app`, each request sent on by the client.
    async fn agent(app: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(5)));
        let (drain, draining) = watch::channel(false);
        tokio::spawn(async move {
            let _drain = drain;
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let pool = pool.clone();
                let answer = move |req: http::Request<Body>| {
                    let pool = pool.clone();
                    async move { pool.send(plain(app), || tcp(app), req).await.unwrap() }
                };
                // Buffered, as a TLS connection's socket is (`proxy::coalesced`): what is
                // written leaves only when flushed.
                tokio::spawn(crate::http1_server::serve(
                    tokio::io::BufWriter::new(client),
                    answer,
                    Duration::from_secs(10),
                    draining.clone(),
                ));
            }
        });
        addr
    }

    async fn read_until(tcp: &mut TcpStream, end: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).ends_with(end) {
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .expect("in time")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn a_switch_the_upstream_agrees_to_joins_the_two_connections_both_ways() {
        let agent = agent(app().await).await;
        let mut client = TcpStream::connect(agent).await.unwrap();
        client
            .write_all(
                b"GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly",
            )
            .await
            .unwrap();
        let answer = read_until(&mut client, "hello").await;
        assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{answer}");
        let head = answer.to_ascii_lowercase();
        assert!(
            head.contains("\r\nconnection: upgrade\r\n") && head.contains("\r\nupgrade: echo\r\n"),
            "{answer}"
        );
        assert_eq!(
            read_until(&mut client, "early").await,
            "early",
            "sent before the 101, passed on after it"
        );
        for message in ["ping", &"x".repeat(100_000)] {
            client.write_all(message.as_bytes()).await.unwrap();
            assert_eq!(read_until(&mut client, message).await.len(), message.len());
        }
    }

    #[tokio::test]
    async fn a_switch_refused_is_an_ordinary_answer_and_the_connection_goes_on() {
        let agent = agent(app().await).await;
        let mut client = TcpStream::connect(agent).await.unwrap();
        client
            .write_all(b"GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until(&mut client, "\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        client
            .write_all(b"GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        assert!(read_until(&mut client, "hello").await.starts_with("HTTP/1.1 101 "));
    }
}
