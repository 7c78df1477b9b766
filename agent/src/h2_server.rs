//! The agent's HTTP/2 server, on the h2 crate: the connection's task reads and writes the
//! socket, and each stream's answer runs in a task of its own that holds a pointer to it.
//!
//! hyper's server, which the agent used before, wrapped every request body and ran each
//! stream in a task of 6.7 KiB of its own state, copied whole as tokio stored, finished and
//! took it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use h2::server::SendResponse;
use http::header::{CONNECTION, DATE, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Request, Response};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::Body;
use crate::h2_pool::{CONNECTION_WINDOW, H2Body, Pipe, STREAM_WINDOW};
use crate::http1_codec::MAX_HEAD_BYTES;

/// Streams one client may have open at once (what hyper's server allowed too): together
/// with the windows, the bound on what one connection can hold of the agent's memory.
const MAX_STREAMS: u32 = 200;

/// Serves HTTP/2 on `io`, answering each request with `answer`, until the client closes the
/// connection or `draining` turns true; then the client is told to open no more streams
/// (GOAWAY) and those it has open are finished. A client that has not sent HTTP/2's preface
/// within `preface_timeout` is let go.
pub(crate) async fn serve<IO, F, Fut>(
    io: IO,
    answer: F,
    preface_timeout: Duration,
    mut draining: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::time::timeout(preface_timeout, handshake)
        .await
        .map_err(|_| anyhow!("no HTTP/2 preface in {preface_timeout:?}"))?
        .context("HTTP/2 handshake")?;
    let mut drain_begun = false;
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept() => accepted,
            _ = draining.wait_for(|d| *d), if !drain_begun => {
                drain_begun = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match accepted {
            None => return Ok(()),
            Some(Err(e)) if e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR) => return Ok(()),
            Some(Err(e)) => return Err(anyhow!("HTTP/2: {e}")),
            Some(Ok((req, respond))) => {
                let answered = Box::pin(answer(req.map(|recv| H2Body::new(recv).into())));
                tokio::spawn(send_answer(answered, respond));
            }
        }
    }
}

/// Sends what `answered` answers on its stream. A stream the client resets meanwhile is
/// answered no more: the answer is dropped, and with it the request upstream.
async fn send_answer<Fut>(answered: Pin<Box<Fut>>, mut respond: SendResponse<Bytes>)
where
    Fut: Future<Output = Response<Body>>,
{
    let response = tokio::select! {
        biased;
        response = answered => response,
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let (mut head, body) = response.into_parts();
    as_http2_fields(&mut head.headers);
    let end = body.is_end_stream();
    let tx = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 answer not sent");
            return;
        }
    };
    if !end && let Err(e) = (Pipe { body, tx }).await {
        tracing::debug!(error = %e, "HTTP/2 answer's body ended early");
    }
}

/// An answer's fields as HTTP/2 carries them: without those of HTTP/1.1's connection
/// management, which HTTP/2 forbids (RFC 9113 §8.2.2), and dated when the answer is the
/// agent's own (RFC 9110 §6.6.1).
fn as_http2_fields(headers: &mut HeaderMap) {
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
    if !headers.contains_key(DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        headers.insert(DATE, HeaderValue::try_from(now).expect("an HTTP date is a valid field value"));
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn an_answer_loses_connection_fields_and_gets_a_date_when_it_has_none() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("content-type", "application/grpc"),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        as_http2_fields(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "date"]);

        let mut dated = HeaderMap::new();
        dated.insert(DATE, "Sun, 06 Dec 2026 07:00:00 GMT".parse().unwrap());
        dated.insert(TE, "trailers".parse().unwrap());
        as_http2_fields(&mut dated);
        assert_eq!(dated[DATE], "Sun, 06 Dec 2026 07:00:00 GMT", "an upstream's date is kept");
        assert_eq!(dated[TE], "trailers");
    }

    /// Serves one connection of an in-memory pipe with `answer` and returns the client's end,
    /// its handshake done.
    async fn connected<F, Fut>(
        answer: F,
    ) -> (h2::client::SendRequest<Bytes>, tokio::sync::watch::Sender<bool>)
    where
        F: Fn(Request<Body>) -> Fut + Send + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (drain, draining) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            serve(server, answer, Duration::from_secs(5), draining).await.unwrap();
        });
        let (send, conn) = h2::client::handshake(client).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (send, drain)
    }

    /// Echoes a request's body back with `grpc-status: 0` in trailers.
    async fn echo(req: Request<Body>) -> Response<Body> {
        let collected = req.into_body().collect().await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body =
            http_body_util::Full::new(collected.to_bytes()).with_trailers(async { Some(Ok(trailers)) });
        Response::new(Body::streaming(body.map_err(|never| match never {})))
    }

    #[tokio::test]
    async fn a_call_carries_its_body_both_ways_and_the_answer_trailers() {
        let (mut send, _drain) = connected(echo).await;
        send = send.ready().await.unwrap();
        let (response, mut tx) =
            send.send_request(Request::post("http://app/echo").body(()).unwrap(), false).unwrap();
        tx.send_data(Bytes::from_static(b"ping"), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key(DATE));
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            data.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(data, b"ping");
        assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_stream_the_client_resets_drops_its_answer() {
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        let dropped_tx = std::sync::Mutex::new(Some(dropped_tx));
        let (mut send, _drain) = connected(move |_req| {
            // Sends on `dropped` when the answer is dropped before it is ready.
            struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    if let Some(tx) = self.0.take() {
                        let _ = tx.send(());
                    }
                }
            }
            let guard = OnDrop(dropped_tx.lock().unwrap().take());
            async move {
                let _guard = guard;
                std::future::pending::<Response<Body>>().await
            }
        })
        .await;
        send = send.ready().await.unwrap();
        let (_response, mut tx) =
            send.send_request(Request::get("http://app/slow").body(()).unwrap(), true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_reset(h2::Reason::CANCEL);
        tokio::time::timeout(Duration::from_secs(5), dropped).await.expect("answer dropped").unwrap();
    }

    #[tokio::test]
    async fn draining_lets_open_streams_finish_and_refuses_new_ones() {
        let (release, released) = tokio::sync::watch::channel(false);
        let (mut send, drain) = connected(move |_req| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Response::new(Body::whole("done"))
            }
        })
        .await;
        send = send.ready().await.unwrap();
        let (open, _) = send.send_request(Request::get("http://app/a").body(()).unwrap(), true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(true).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), open).await.expect("answered").unwrap();
        assert_eq!(answer.status(), 200, "the stream open when the drain began is answered");
        let refused = match send.ready().await {
            Ok(mut s) => match s.send_request(Request::get("http://app/b").body(()).unwrap(), true) {
                Ok((r, _)) => {
                    tokio::time::timeout(Duration::from_secs(5), r).await.expect("settled").is_err()
                }
                Err(_) => true,
            },
            Err(_) => true,
        };
        assert!(refused, "no new stream after the drain began");
    }
}
