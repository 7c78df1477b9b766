//! A WebSocket endpoint for the tests that carry WebSocket through agents.

use axum::response::IntoResponse;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message as Ws, protocol::Role};

/// A WebSocket endpoint that sends every message back with `echo: ` before it (the handshake
/// as axum's own WebSocket support makes it: hyper's upgrade, tungstenite's accept key).
pub async fn echo(mut req: axum::extract::Request) -> axum::response::Response {
    let asks = req.headers().get("upgrade").is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").filter(|_| asks).cloned() else {
        return (axum::http::StatusCode::UPGRADE_REQUIRED, "a WebSocket endpoint").into_response();
    };
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
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    axum::http::Response::builder()
        .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(axum::body::Body::empty())
        .unwrap()
}
