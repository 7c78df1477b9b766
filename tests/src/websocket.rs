//! A WebSocket endpoint for the tests that carry WebSocket through agents.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::response::IntoResponse;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message as Ws, protocol::Role};

/// A WebSocket endpoint that sends every message back with `echo: ` before it, in HTTP/1.1
/// (the handshake as axum's own WebSocket support makes it: hyper's upgrade, tungstenite's
/// accept key) and in HTTP/2 (RFC 8441: an extended CONNECT for `websocket`, answered 200;
/// routed for CONNECT as well as GET).
pub async fn echo(mut req: axum::extract::Request) -> axum::response::Response {
    let over_http2 = req.method() == axum::http::Method::CONNECT
        && req.extensions().get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str() == "websocket");
    let asks = req.headers().get("upgrade").is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = req.headers().get("sec-websocket-key").filter(|_| asks).cloned();
    if key.is_none() && !over_http2 {
        return (axum::http::StatusCode::UPGRADE_REQUIRED, "a WebSocket endpoint").into_response();
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            let echo = match message {
                Ws::Text(t) => Ws::text(format!("echo: {t}")),
                Ws::Binary(b) => Ws::binary([&b"echo: "[..], &b].concat()),
                _ => continue,
            };
            if ws.send(echo).await.is_err() {
                break;
            }
        }
    });
    let Some(key) = key else {
        return axum::http::StatusCode::OK.into_response();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    axum::http::Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(axum::body::Body::empty())
        .unwrap()
}

/// A WebSocket client session over HTTP/2 (RFC 8441): an extended CONNECT for `uri` (whose
/// authority names the service) on an h2c connection to `addr`, answered `200`, then
/// tungstenite's client over the stream. Panics when the server does not say it takes
/// extended CONNECT within a second.
pub async fn over_http2(addr: &str, uri: &str) -> WebSocketStream<H2Stream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut waited = 0;
    while !client.is_extended_connect_protocol_enabled() {
        assert!(waited < 100, "{addr} never said SETTINGS_ENABLE_CONNECT_PROTOCOL");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        client = client.ready().await.unwrap();
        waited += 1;
    }
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri(uri)
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
    let (answer, send) = client.send_request(req, false).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200, "the tunnel opened: {answer:?}");
    let stream = H2Stream { send, recv: answer.into_body(), read: Bytes::new() };
    WebSocketStream::from_raw_socket(stream, Role::Client, None).await
}

/// An HTTP/2 stream as a connection: what is written goes as DATA as the windows allow,
/// what is read is the stream's DATA.
pub struct H2Stream {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    /// DATA received and not yet read.
    read: Bytes,
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.read.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.read = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(buf.len());
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) => {
                let sent = self.send.send_data(Bytes::copy_from_slice(&buf[..n.min(buf.len())]), false);
                Poll::Ready(sent.map(|()| n.min(buf.len())).map_err(io::Error::other))
            }
            Some(Err(e)) => Poll::Ready(Err(io::Error::other(e))),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(io::Error::other))
    }
}
