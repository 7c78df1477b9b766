//! Protocol switches through the agent, WebSocket's among them: HTTP/1.1's (RFC 9110 §7.8,
//! `Connection: upgrade` and `Upgrade`, answered `101 Switching Protocols`) and HTTP/2's
//! extended CONNECT (RFC 8441, `:method CONNECT` with `:protocol`, answered `200`).
//!
//! Inside the agent a switch has one form, HTTP/1.1's: the request carries [`Requested`] and is
//! routed as any other (a `GET`), and an agreed switch is answered with a [`Body::Switched`]
//! holding the upstream's connection, which is then joined byte for byte to the client's, as a
//! TCP listener's are. The HTTP/2 ends translate: the server takes an extended CONNECT in this
//! form ([`from_extended_connect`]) and answers a switch as its stream ([`answer_on_stream`]);
//! to an HTTP/2 upstream the switch goes as an extended CONNECT ([`over_http2`]). WebSocket's
//! handshake fields, which RFC 8441 leaves out, are made up on the way to HTTP/1.1 and taken
//! off on the way to HTTP/2. Between agents a switch always goes over HTTP/1.1.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use http::header::{SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::{Body, BoxError, Switched, local_reply};

/// A request's ask to switch protocols: its `Upgrade` value (or HTTP/2's `:protocol`). The
/// server puts it in the request's extensions, where the client finds it.
#[derive(Clone, Debug)]
pub(crate) struct Requested(pub HeaderValue);

/// The protocol a request with `extensions` asks to switch to, if it asks.
pub(crate) fn requested(extensions: &http::Extensions) -> Option<HeaderValue> {
    extensions.get::<Requested>().map(|r| r.0.clone())
}

/// Bytes a tunnel carried over an HTTP/2 stream may have buffered between the stream and the
/// connection it is joined to, each way.
const STREAM_TUNNEL_BUFFER: usize = 64 * 1024;
/// Read from a tunnel's connection at once, to go out as one DATA frame's worth.
const READ_CHUNK: usize = 16 * 1024;
/// RFC 6455 §1.3: what a server appends to the client's key before hashing it.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

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

fn is_websocket(protocol: &HeaderValue) -> bool {
    protocol.as_bytes().eq_ignore_ascii_case(b"websocket")
}

/// An HTTP/2 extended CONNECT for `protocol` in the agent's form of a switch: a `GET` that
/// asks for it; for WebSocket with the key its HTTP/1.1 handshake needs (RFC 8441 §5).
pub(crate) fn from_extended_connect(parts: &mut http::request::Parts, protocol: HeaderValue) {
    parts.method = Method::GET;
    if is_websocket(&protocol) && !parts.headers.contains_key(SEC_WEBSOCKET_KEY) {
        let key = BASE64.encode(rand::random::<[u8; 16]>());
        parts.headers.insert(SEC_WEBSOCKET_KEY, HeaderValue::try_from(key).expect("base64 is a valid value"));
    }
    parts.extensions.insert(Requested(protocol));
}

/// The answer to an extended CONNECT, for the HTTP/2 stream it came on, whose DATA (`upload`)
/// is the client's side of the tunnel: a switch agreed to is `200`, its connection joined to
/// the stream both ways; an answer that is a success without a switch is none (`502`, as a
/// client would take any 2xx for the tunnel); every other answer goes as it is.
pub(crate) fn answer_on_stream(response: Response<Body>, upload: Body) -> Response<Body> {
    let (mut head, body) = response.into_parts();
    match body {
        Body::Switched(up) => {
            let Switched { io, read_ahead } = *up;
            let (from_upstream, to_upstream) = tokio::io::split(io);
            tokio::spawn(feed(upload, to_upstream));
            head.status = StatusCode::OK;
            head.headers.remove(UPGRADE);
            head.headers.remove(SEC_WEBSOCKET_ACCEPT);
            Response::from_parts(head, Body::streaming(Reading::new(read_ahead, from_upstream)))
        }
        _ if head.status.is_success() => local_reply(
            false,
            StatusCode::BAD_GATEWAY,
            0,
            "the upstream answered the protocol switch without switching",
        ),
        body => Response::from_parts(head, body),
    }
}

/// A switch to `protocol` sent to an HTTP/2 upstream with `send`, as an extended CONNECT
/// (`head` is in the agent's form, its `Requested` kept for the client to write `:protocol`):
/// an answer of `200` becomes `101`, its stream the connection switched to, and a WebSocket
/// client's key is answered as RFC 6455 asks; any other answer goes as it is.
pub(crate) async fn over_http2<E>(
    head: &mut http::request::Parts,
    protocol: HeaderValue,
    send: impl AsyncFnOnce(&http::request::Parts, Body) -> Result<Response<Body>, E>,
) -> Result<Response<Body>, E> {
    head.method = Method::CONNECT;
    let key = head.headers.remove(SEC_WEBSOCKET_KEY);
    let (ours, stream_side) = tokio::io::duplex(STREAM_TUNNEL_BUFFER);
    let (upload, to_client) = tokio::io::split(stream_side);
    let response = send(head, Body::streaming(Reading::new(Bytes::new(), upload))).await?;
    if !response.status().is_success() {
        return Ok(response);
    }
    let (mut head, download) = response.into_parts();
    tokio::spawn(feed(download, to_client));
    head.status = StatusCode::SWITCHING_PROTOCOLS;
    head.headers.insert(UPGRADE, protocol);
    if let Some(key) = key {
        head.headers.insert(SEC_WEBSOCKET_ACCEPT, websocket_accept(key.as_bytes()));
    }
    let switched = Switched { io: Box::new(ours), read_ahead: Bytes::new() };
    Ok(Response::from_parts(head, Body::Switched(Box::new(switched))))
}

/// RFC 6455 §4.2.2: what a server that agrees to a client's WebSocket key answers.
fn websocket_accept(key: &[u8]) -> HeaderValue {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    hash.update(key);
    hash.update(WEBSOCKET_GUID);
    HeaderValue::try_from(BASE64.encode(hash.finish())).expect("base64 is a valid value")
}

/// Writes `body`'s data to `io` as it comes, then closes `io`'s sending side; ends early when
/// either fails (the other side has gone).
async fn feed<W: AsyncWrite + Unpin>(mut body: Body, mut io: W) {
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else { continue };
        if io.write_all(&data).await.is_err() || io.flush().await.is_err() {
            return;
        }
    }
    let _ = io.shutdown().await;
}

/// The bytes read from a connection, after `first`, as a body that ends when it closes.
struct Reading<R> {
    first: Option<Bytes>,
    io: R,
    buf: BytesMut,
    closed: bool,
}

impl<R> Reading<R> {
    fn new(first: Bytes, io: R) -> Reading<R> {
        Reading { first: (!first.is_empty()).then_some(first), io, buf: BytesMut::new(), closed: false }
    }
}

impl<R: AsyncRead + Unpin> hyper::body::Body for Reading<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.closed {
            return Poll::Ready(None);
        }
        this.buf.resize(READ_CHUNK, 0);
        let mut read = ReadBuf::new(&mut this.buf);
        let polled = Pin::new(&mut this.io).poll_read(cx, &mut read);
        let n = read.filled().len();
        ready!(polled)?;
        if n == 0 {
            this.closed = true;
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(this.buf.split_to(n).freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.closed && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
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
    use crate::http1_pool::tests::{plain, send_on, tcp};

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

    /// The agent's HTTP/1.1 server (its HTTP/2 server when `h2`) in front of `app`, each
    /// request sent on by the HTTP/1.1 client.
    async fn agent(app: SocketAddr, h2: bool) -> SocketAddr {
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
                    async move { send_on(&pool, plain(app), || tcp(app), req).await.unwrap() }
                };
                let timeout = Duration::from_secs(10);
                if h2 {
                    tokio::spawn(crate::h2_server::serve(client, answer, timeout, draining.clone()));
                } else {
                    // Buffered, as a TLS connection's socket is (`proxy::coalesced`): what is
                    // written leaves only when flushed.
                    let client = tokio::io::BufWriter::new(client);
                    tokio::spawn(crate::http1_server::serve(client, answer, timeout, draining.clone()));
                }
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
        let agent = agent(app().await, false).await;
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
        let agent = agent(app().await, false).await;
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

    /// An HTTP/2 client (the h2 crate's) of `agent`, once the agent has said that it takes
    /// extended CONNECT.
    async fn h2_client(agent: SocketAddr) -> h2::client::SendRequest<Bytes> {
        let tcp = TcpStream::connect(agent).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        for _ in 0..100 {
            if client.is_extended_connect_protocol_enabled() {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            client = client.ready().await.unwrap();
        }
        panic!("the agent never said SETTINGS_ENABLE_CONNECT_PROTOCOL");
    }

    fn extended_connect(protocol: &'static str, path: &str) -> http::Request<()> {
        let mut req =
            http::Request::builder().method("CONNECT").uri(format!("http://app{path}")).body(()).unwrap();
        req.extensions_mut().insert(h2::ext::Protocol::from_static(protocol));
        req
    }

    /// Reads `stream` until what came ends with `end`.
    async fn read_stream_until(stream: &mut h2::RecvStream, end: &str) -> String {
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).ends_with(end) {
            let data = tokio::time::timeout(Duration::from_secs(5), stream.data())
                .await
                .expect("in time")
                .expect("not ended")
                .unwrap();
            stream.flow_control().release_capacity(data.len()).unwrap();
            got.extend_from_slice(&data);
        }
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn an_extended_connect_is_switched_upstream_in_http1_and_carried_on_its_stream() {
        let agent = agent(app().await, true).await;
        let mut client = h2_client(agent).await;
        let (answer, mut send) = client.send_request(extended_connect("echo", "/chat"), false).unwrap();
        send.send_data(Bytes::from_static(b"early"), false).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answer).await.unwrap().unwrap();
        assert_eq!(answer.status(), 200, "{answer:?}");
        assert!(!answer.headers().contains_key("upgrade"), "{answer:?}");
        let mut download = answer.into_body();
        assert_eq!(read_stream_until(&mut download, "hello").await, "hello");
        assert_eq!(read_stream_until(&mut download, "early").await, "early", "sent before the 200");
        for message in ["ping".to_owned(), "x".repeat(300_000)] {
            send.send_data(Bytes::from(message.clone()), false).unwrap();
            assert_eq!(read_stream_until(&mut download, &message).await.len(), message.len());
        }
        // The client's end of the stream closes the upstream's side; the echo then ends too.
        send.send_data(Bytes::new(), true).unwrap();
        let ended = async {
            while let Some(data) = download.data().await {
                assert!(data.unwrap().is_empty(), "nothing more than was echoed");
            }
        };
        tokio::time::timeout(Duration::from_secs(5), ended).await.expect("ends");
        // The connection goes on: a plain request after the tunnel.
        let plain = http::Request::builder().uri("http://app/plain").body(()).unwrap();
        let (answer, _) = client.send_request(plain, true).unwrap();
        assert_eq!(answer.await.unwrap().status(), 426);
    }

    #[tokio::test]
    async fn an_extended_connect_refused_upstream_is_answered_as_the_upstream_answered() {
        let agent = agent(app().await, true).await;
        let mut client = h2_client(agent).await;
        let (answer, _send) = client.send_request(extended_connect("other", "/chat"), false).unwrap();
        assert_eq!(answer.await.unwrap().status(), 426);
    }

    #[tokio::test]
    async fn an_extended_connect_answered_with_a_success_but_no_switch_is_a_502() {
        // An upstream that answers every request `200 OK`.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = tcp.read(&mut head).await;
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        });
        let mut client = h2_client(agent(upstream, true).await).await;
        let (answer, _send) = client.send_request(extended_connect("echo", "/chat"), false).unwrap();
        assert_eq!(answer.await.unwrap().status(), 502);
    }

    #[test]
    fn an_extended_connect_for_websocket_gets_a_key_for_its_http1_handshake() {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        from_extended_connect(&mut parts, HeaderValue::from_static("websocket"));
        assert_eq!(parts.method, Method::GET);
        let key = BASE64.decode(parts.headers[SEC_WEBSOCKET_KEY].as_bytes()).unwrap();
        assert_eq!(key.len(), 16, "RFC 6455 §4.1: 16 random bytes, base64");
        assert_eq!(parts.extensions.get::<Requested>().unwrap().0, "websocket");
        // Another protocol's handshake is its own.
        let (mut parts, ()) = http::Request::new(()).into_parts();
        from_extended_connect(&mut parts, HeaderValue::from_static("echo"));
        assert!(!parts.headers.contains_key(SEC_WEBSOCKET_KEY));
    }

    #[test]
    fn the_websocket_accept_key_is_rfc_6455_s() {
        // RFC 6455 §1.3's example.
        assert_eq!(websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    /// An HTTP/2 application (the h2 crate's server) that takes extended CONNECT when
    /// `extended`: to `:protocol echo` it answers 200, `hello`, then echoes the stream.
    async fn h2_app(extended: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut builder = h2::server::Builder::new();
                    if extended {
                        builder.enable_connect_protocol();
                    }
                    let Ok(mut conn) = builder.handshake::<_, Bytes>(tcp).await else { return };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let protocol =
                                req.extensions().get::<h2::ext::Protocol>().map(|p| p.as_str().to_owned());
                            if req.method() != Method::CONNECT || protocol.as_deref() != Some("echo") {
                                let refused = http::Response::builder().status(400).body(()).unwrap();
                                let _ = respond.send_response(refused, true);
                                return;
                            }
                            let mut upload = req.into_body();
                            let mut download = respond.send_response(http::Response::new(()), false).unwrap();
                            download.send_data(Bytes::from_static(b"hello"), false).unwrap();
                            while let Some(Ok(data)) = upload.data().await {
                                upload.flow_control().release_capacity(data.len()).unwrap();
                                download.send_data(data, false).unwrap();
                            }
                            let _ = download.send_data(Bytes::new(), true);
                        });
                    }
                });
            }
        });
        addr
    }

    /// The agent's HTTP/1.1 server in front of `app`, which speaks HTTP/2: each request sent
    /// on by the HTTP/2 client, a switch as an extended CONNECT.
    async fn agent_to_h2(app: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Arc::new(crate::h2_pool::H2Pool::new(Duration::from_secs(5)));
        let (drain, draining) = watch::channel(false);
        tokio::spawn(async move {
            let _drain = drain;
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let pool = pool.clone();
                let answer = move |mut req: http::Request<Body>| {
                    let pool = pool.clone();
                    *req.uri_mut() = format!("http://{app}{}", req.uri().path()).parse().unwrap();
                    async move {
                        let send = async |head: &_, body| {
                            pool.send(plain(app), || tcp(app), head, body).await.map(|r| r.map(Body::from))
                        };
                        let (mut head, _) = req.into_parts();
                        let protocol = requested(&head.extensions).expect("a switch");
                        match over_http2(&mut head, protocol, send).await {
                            Ok(answer) => answer,
                            Err(e) => local_reply(false, StatusCode::BAD_GATEWAY, 0, &e.to_string()),
                        }
                    }
                };
                let serving =
                    crate::http1_server::serve(client, answer, Duration::from_secs(10), draining.clone());
                tokio::spawn(serving);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_switch_to_an_http2_application_goes_as_an_extended_connect() {
        let agent = agent_to_h2(h2_app(true).await).await;
        let mut client = TcpStream::connect(agent).await.unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ask = format!(
            "GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\nSec-WebSocket-Key: {key}\r\n\r\nearly"
        );
        client.write_all(ask.as_bytes()).await.unwrap();
        let answer = read_until(&mut client, "hello").await;
        assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{answer}");
        let head = answer.to_ascii_lowercase();
        assert!(head.contains("\r\nupgrade: echo\r\n") && head.contains("\r\nconnection: upgrade\r\n"));
        assert!(
            answer.contains("\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "the key answered as RFC 6455 asks: {answer}"
        );
        assert_eq!(read_until(&mut client, "early").await, "early");
        for message in ["ping".to_owned(), "y".repeat(300_000)] {
            client.write_all(message.as_bytes()).await.unwrap();
            assert_eq!(read_until(&mut client, &message).await.len(), message.len());
        }
        // Closing the client's side ends the stream; the application's end closes the client's.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
        assert!(closed.is_ok_and(|r| r.is_ok()) && rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn a_switch_to_an_http2_application_without_extended_connect_is_a_502_saying_so() {
        let agent = agent_to_h2(h2_app(false).await).await;
        let mut client = TcpStream::connect(agent).await.unwrap();
        client
            .write_all(b"GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until(&mut client, "which a protocol switch over HTTP/2 needs\n").await;
        assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
        assert!(answer.contains("does not take extended CONNECT (RFC 8441)"), "{answer}");
    }
}
