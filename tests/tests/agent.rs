//! The Trellis agent as users run it: real `trellis`, real `trellis-agent` processes joined
//! with join tokens, real HTTP applications behind them, all on loopback (each agent on its
//! own 127.0.0.N). Issue #12.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::StreamExt;
use prost::{Message, Name};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::{Svid, certs, issue, platform_root};
use trellis_tests::{
    Api, Process, Trellis, agent_bin, agent_command, document_path, example_documents, token, trellis,
};
use trellis_xds_server::proto::identity_client::IdentityClient;
use trellis_xds_server::proto::identity_server::{Identity, IdentityServer};
use trellis_xds_server::proto::{IssueSvidRequest, IssueSvidResponse};

/// An application that answers every request with `version` (and its caller's identity
/// as the agent forwarded it), on 127.0.0.1 at a port the system picks; `/reviews/slow…`
/// answers after a second, v1 answers every third `/reviews/flaky…` with 503, `/reviews/chat` is
/// a WebSocket endpoint, `/reviews/wire` answers with the HTTP version and `Host` it was
/// called with, then 200 KB, and `/reviews/checked-by` with the callers that sent the health
/// check `/health` (one a line).
async fn app(version: &'static str) -> u16 {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let checked_by = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let caller = |headers: &axum::http::HeaderMap| {
        headers.get("x-forwarded-client-cert").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    let router = axum::Router::new()
        .route(
            "/health",
            axum::routing::get({
                let checked_by = checked_by.clone();
                move |headers: axum::http::HeaderMap| async move {
                    checked_by.lock().unwrap().insert(caller(&headers));
                    "ok"
                }
            }),
        )
        .route(
            "/reviews/checked-by",
            axum::routing::get(move || async move {
                checked_by.lock().unwrap().iter().cloned().collect::<Vec<_>>().join("\n")
            }),
        )
        .route("/reviews/chat", axum::routing::get(trellis_tests::websocket::echo))
        .route(
            "/reviews/wire",
            axum::routing::get(|v: axum::http::Version, headers: axum::http::HeaderMap| async move {
                let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
                format!("{v:?} {host} {}", "x".repeat(200_000))
            }),
        )
        .fallback(move |uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
            if uri.path().starts_with("/reviews/slow") {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // v1 fails every third call here: what retries are for.
            let nth = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if uri.path().starts_with("/reviews/flaky") && version == "v1" && nth.is_multiple_of(3) {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "v1 is having a moment".to_owned());
            }
            (axum::http::StatusCode::OK, format!("{version} {}", caller(&headers)))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

/// A gRPC application (the identity service's shape, reused as a plain echo): answers with
/// `version` and the caller's identity, and fails with NOT_FOUND when the CSR says `fail`, so
/// that both a response and a trailers-only status cross the agents.
struct GrpcApp(&'static str);

#[tonic::async_trait]
impl Identity for GrpcApp {
    async fn issue_svid(
        &self,
        req: tonic::Request<IssueSvidRequest>,
    ) -> Result<tonic::Response<IssueSvidResponse>, tonic::Status> {
        let caller = req
            .metadata()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if req.get_ref().csr == b"fail" {
            return Err(tonic::Status::not_found("no such rating"));
        }
        Ok(tonic::Response::new(IssueSvidResponse {
            spiffe_id: format!("{} {caller}", self.0),
            ..Default::default()
        }))
    }
}

type Replies<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A streaming gRPC service (ADS's shape, reused as a ping-pong): it answers each of the
/// first three messages of a call with one of its own, naming the message's `type_url`, then
/// ends the call with OK. A proxy that buffered either direction would stall the call.
struct PingPong;

#[tonic::async_trait]
impl AggregatedDiscoveryService for PingPong {
    type StreamAggregatedResourcesStream = Replies<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Replies<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let replies = futures::stream::unfold((req.into_inner(), 1), |(mut incoming, n)| async move {
            if n > 3 {
                return None;
            }
            let ping = incoming.message().await.ok()??;
            let pong =
                DiscoveryResponse { version_info: format!("{n} {}", ping.type_url), ..Default::default() };
            Some((Ok(pong), (incoming, n + 1)))
        });
        Ok(tonic::Response::new(Box::pin(replies)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not this one"))
    }
}

/// A gRPC application on HTTP/2 only, with a WebSocket endpoint at `/chat` that takes
/// RFC 8441's extended CONNECT (axum's server says it does).
async fn grpc_app(version: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = tonic::service::Routes::new(IdentityServer::new(GrpcApp(version)))
        .add_service(AggregatedDiscoveryServiceServer::new(PingPong))
        .into_axum_router()
        .route("/chat", axum::routing::any(trellis_tests::websocket::echo));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

/// A streaming call through the outbound listener at `addr`: three pings, each sent only
/// after the previous pong arrived, then the end of the call; the pongs, or what failed.
async fn ping_pong(addr: &str) -> Result<Vec<String>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let call = client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx));
    // The first ping is queued before the call starts.
    tx.send(DiscoveryRequest { type_url: "ping1".into(), ..Default::default() }).await.unwrap();
    let mut pongs = call.await.map_err(|s| format!("{s:?}"))?.into_inner();
    let mut got = Vec::new();
    for n in 1..=3 {
        if n > 1 {
            tx.send(DiscoveryRequest { type_url: format!("ping{n}"), ..Default::default() }).await.unwrap();
        }
        let pong = tokio::time::timeout(Duration::from_secs(5), pongs.message()).await;
        match pong {
            Ok(Ok(Some(p))) => got.push(p.version_info),
            other => return Err(format!("pong {n}: {other:?} after {got:?}")),
        }
    }
    match tokio::time::timeout(Duration::from_secs(5), pongs.message()).await {
        Ok(Ok(None)) => Ok(got),
        other => Err(format!("the end of the call: {other:?}")),
    }
}

/// One unary call to the gRPC app through the outbound listener at `addr`.
async fn grpc_call(addr: &str, csr: &[u8]) -> Result<String, tonic::Status> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let req = IssueSvidRequest { csr: csr.to_vec(), join_token: String::new() };
    IdentityClient::new(channel).issue_svid(req).await.map(|r| r.into_inner().spiffe_id)
}

/// A TCP application that echoes what it reads.
async fn echo_app() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Sends `ping` to `addr` and reads four bytes back, if they come within 5 s.
async fn echo(addr: &str) -> Option<Vec<u8>> {
    echo_connection(addr).await.map(|_| b"ping".to_vec())
}

/// A connection to `addr` that echoed `ping` within 5 s, kept open.
async fn echo_connection(addr: &str) -> Option<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"ping").await.ok()?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.ok()?.ok()?;
    (&buf == b"ping").then_some(s)
}

/// Any server certificate: the test checks what the agent accepts, not what it presents.
#[derive(Debug)]
struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client presenting `svid`, trusting any server; refused when the key is not the
/// certificate's.
fn client_config(svid: &Svid) -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes()).unwrap();
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer(provider)))
        .with_client_auth_cert(certs(&svid.chain_pem), key)
}

/// The SVID an agent's certificate directory holds. A renewal replaces `key.pem` and
/// `cert.pem` one after the other, so a pair read between the two is read again.
async fn svid_in(dir: &Path) -> Svid {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    for _ in 0..50 {
        let svid = Svid {
            key_pem: read("key.pem"),
            chain_pem: read("cert.pem"),
            bundle_pem: read("bundle.pem"),
            spiffe_id: String::new(),
        };
        if client_config(&svid).is_ok() {
            return svid;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("key.pem and cert.pem in {} never belonged together", dir.display());
}

/// `GET /reviews/1` over mTLS presenting `svid`, HTTP/1.1 (offered by ALPN when `alpn`): the
/// start of the answer, or the error that ended the exchange.
async fn mtls_get(addr: &str, svid: &Svid, alpn: bool) -> String {
    let mut config = client_config(svid).unwrap();
    config.alpn_protocols = if alpn { vec![b"http/1.1".to_vec()] } else { Vec::new() };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("reviews").unwrap();
    let exchange = async {
        let mut tls =
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await?;
        tls.write_all(b"GET /reviews/1 HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n").await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timed out".into(),
    }
}

async fn join_token(api: &Api, service: &str, tags: Value) -> String {
    let (status, body) =
        api.post("/meshes/shop/join-tokens", &json!({"service": service, "tags": tags})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Starts an agent of the control plane at `server` for `service` on `address`; `extra`
/// are further flags.
fn agent(
    server: &str,
    ca: &Path,
    dir: &Path,
    token: &str,
    service: &str,
    address: &str,
    extra: &[&str],
) -> Process {
    let mut cmd = agent_command(server, ca, dir, token, "shop", service, address);
    cmd.args(extra).env("TRELLIS_LOG", "info,trellis_agent=debug");
    Process::start(cmd)
}

/// The address an agent's outbound listener for `listener` is bound to, from its log.
async fn outbound_addr(p: &mut Process, listener: &str) -> String {
    let line = p.wait_for_line(&format!("listening {listener} on "), Duration::from_secs(20)).await;
    let rest = line.split(&format!("listening {listener} on ")).nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// Requests `url` one after another until `stop`; each answer's first two characters (the
/// version) or what went wrong instead.
fn steady_load(
    client: &reqwest::Client,
    url: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (client, url, stop) = (client.clone(), url.to_owned(), stop.clone());
    tokio::spawn(async move {
        let mut answers = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            answers.push(match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => r.text().await.unwrap()[..2].to_owned(),
                // The agent's local replies say why (no healthy upstream, connect error, …).
                Ok(r) => format!("status {}: {}", r.status(), r.text().await.unwrap_or_default().trim()),
                Err(e) => format!("error {e}"),
            });
        }
        answers
    })
}

/// WebSocket sessions through the caller's outbound listeners (and mTLS to the callee's
/// agent), in HTTP/1.1 and in HTTP/2: with `reviews`' `/reviews/chat` (`reviews`, an HTTP/1.1
/// application) and `ratings`' `/chat` (an HTTP/2 application).
async fn websocket_sessions(reviews: &str, ratings: &str) {
    let beside = format!("http://{reviews}/reviews/1");
    for (addr, url) in [(reviews, "reviews.shop:9080/reviews/chat"), (ratings, "ratings.shop:9090/chat")] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // To `ratings` the agents go in HTTP/1.1 and the callee's asks the application with
        // an extended CONNECT: the accept key tungstenite checks here is that agent's.
        let (ws, answer) = tokio_tungstenite::client_async(format!("ws://{url}"), tcp)
            .await
            .unwrap_or_else(|e| panic!("switched to WebSocket with {url}: {e}"));
        assert_eq!(answer.status(), 101);
        websocket_messages(ws, &beside).await;
        // The same over HTTP/2, as RFC 8441 carries WebSocket: the caller's agent takes the
        // extended CONNECT; the agents switch as above.
        let ws = trellis_tests::websocket::over_http2(addr, &format!("http://{url}")).await;
        websocket_messages(ws, &beside).await;
    }
    // A plain request to the WebSocket endpoint is answered as the application answers it.
    let refused = http().get(format!("http://{reviews}/reviews/chat")).send().await.unwrap();
    assert_eq!(refused.status(), 426);
}

/// Messages both ways over `ws`, one of them larger than any buffer on the way, while plain
/// requests to `beside` go on and are answered 200; then the close handshake.
async fn websocket_messages<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, beside: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as Ws;
    let big = vec![7u8; 3 << 20];
    for message in [Ws::text("hello"), Ws::binary(big.clone()), Ws::text("bye")] {
        let expected = match &message {
            Ws::Text(t) => Ws::text(format!("echo: {t}")),
            Ws::Binary(b) => Ws::binary([&b"echo: "[..], b].concat()),
            _ => unreachable!(),
        };
        ws.send(message).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("echoed in time");
        assert!(echoed.as_ref().is_some_and(|e| e.as_ref().is_ok_and(|e| *e == expected)), "{echoed:?}");
        let plain = http().get(beside).send().await.unwrap();
        assert_eq!(plain.status(), 200, "plain requests go on beside the session");
    }
    ws.close(None).await.unwrap();
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

/// Sends `n` requests (16 at a time) and counts the answers by body's first word, or status.
async fn tally(client: &reqwest::Client, url: &str, beta: bool, n: usize) -> BTreeMap<String, usize> {
    let results: Vec<String> = futures::stream::iter(0..n)
        .map(|_| async {
            let mut req = client.get(url);
            if beta {
                req = req.header("x-beta", "true");
            }
            match req.send().await {
                Ok(r) if r.status() == 200 => {
                    r.text().await.unwrap().split_whitespace().next().unwrap_or("").to_owned()
                }
                Ok(r) => format!("status {}", r.status()),
                Err(e) => format!("error {e}"),
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut out = BTreeMap::new();
    for r in results {
        *out.entry(r).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn agents_join_route_75_25_enforce_mtls_and_access_and_nack_what_they_cannot_do() {
    let db = TestDb::create().await;
    let database_url = db.owner_url();
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", &database_url).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let admin = token(&db, "acme", Role::Admin).await;
    let api = Api::new(&t, "acme", &admin);
    // The seed without its rate limit (100 requests a second would refuse most of the 2,000).
    let docs: Vec<Value> = example_documents()
        .into_iter()
        .filter(|d| {
            ["Mesh", "Service", "HTTPRoute", "TCPRoute", "AccessPolicy", "CircuitBreaker", "HealthCheck"]
                .contains(&d["kind"].as_str().unwrap())
        })
        .collect();
    for doc in &docs {
        let (status, body) = api.put(&document_path(doc), doc).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let ratings = json!({"spec": {"ports": [{"port": 9090, "protocol": "grpc"}]}});
    let (status, body) = api.put("/meshes/shop/services/ratings", &ratings).await;
    assert_eq!(status, 201, "{body}");
    let policy = json!({"spec": {"targetRef": {"service": "ratings"}, "rules": [{"action": "Allow", "from": [{"service": "productpage"}]}]}});
    let (status, body) = api.put("/meshes/shop/access-policies/ratings-callers", &policy).await;
    assert_eq!(status, 201, "{body}");
    let policy = json!({"spec": {"targetRef": {"service": "db"}, "rules": [{"action": "Allow", "from": [{"service": "productpage"}]}]}});
    let (status, body) = api.put("/meshes/shop/access-policies/db-callers", &policy).await;
    assert_eq!(status, 201, "{body}");
    let stranger = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    let (status, body) = api.put("/meshes/shop/services/stranger", &stranger).await;
    assert_eq!(status, 201, "{body}");

    let store = db.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, platform_root(&store).await).unwrap();
    let dir = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // Clear one-line errors: a refused join token, an unreachable server.
    for (server, token, expected) in [
        (t.xds.as_str(), "trls_join_notarealtoken", "refused the credential"),
        ("127.0.0.1:1", "trls_join_notarealtoken", "cannot reach the control plane at 127.0.0.1:1"),
    ] {
        let d = dir("refused");
        let out = Command::new(agent_bin())
            .args(["run", "--server", server, "--mesh", "shop", "--service", "reviews", "--platform-ca"])
            .arg(&ca)
            .arg("--cert-dir")
            .arg(d.join("certs"))
            .env("TRELLIS_JOIN_TOKEN", token)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            !stderr.contains(token) && !String::from_utf8_lossy(&out.stdout).contains(token),
            "the token is never printed"
        );
    }

    let (v1_port, v2_port) = (app("v1").await, app("v2").await);
    let mut agents = Vec::new();
    for (version, address, port) in [("v1", "127.0.0.2", v1_port), ("v2", "127.0.0.3", v2_port)] {
        let tok = join_token(&api, "reviews", json!({"version": version})).await;
        let app_port = format!("9080={port}");
        let mut p = agent(
            &t.xds,
            &ca,
            &dir(version),
            &tok,
            "reviews",
            address,
            &["--port", "9080", "--app-port", &app_port, "--outbound", "none"],
        );
        p.wait_for_line(&format!("listening inbound:9080 on {address}:9080"), Duration::from_secs(20)).await;
        agents.push(p);
    }
    let tok = join_token(&api, "ratings", json!({})).await;
    let app_port = format!("9090={}", grpc_app("ratings-v1").await);
    let mut p = agent(
        &t.xds,
        &ca,
        &dir("ratings"),
        &tok,
        "ratings",
        "127.0.0.6",
        &["--port", "9090", "--app-port", &app_port, "--outbound", "none"],
    );
    p.wait_for_line("listening inbound:9090 on 127.0.0.6:9090", Duration::from_secs(20)).await;
    agents.push(p);
    let tok = join_token(&api, "db", json!({"role": "primary"})).await;
    let db_app_port = format!("5432={}", echo_app().await);
    let db_flags = ["--port", "5432", "--app-port", &db_app_port, "--outbound", "none"];
    let mut p = agent(&t.xds, &ca, &dir("db"), &tok, "db", "127.0.0.7", &db_flags);
    p.wait_for_line("listening inbound:5432 on 127.0.0.7:5432", Duration::from_secs(20)).await;
    agents.push(p);
    let servers_started = tokio::time::Instant::now();
    let tok = join_token(&api, "productpage", json!({})).await;
    let caller_dir = dir("productpage");
    let mut caller = agent(
        &t.xds,
        &ca,
        &caller_dir,
        &tok,
        "productpage",
        "127.0.0.4",
        &[
            "--outbound",
            "reviews,ratings,db",
            "--xds-relay-addr",
            "127.0.0.4:15010",
            "--http-proxy-addr",
            "127.0.0.4:15001",
        ],
    );
    let reviews = outbound_addr(&mut caller, "outbound:reviews.shop:9080").await;
    let ratings = outbound_addr(&mut caller, "outbound:ratings.shop:9090").await;
    let db = outbound_addr(&mut caller, "outbound:db.shop:5432").await;

    // The identity files, written for co-located clients; the key private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["cert.pem", "key.pem", "bundle.pem", "ca.pem"] {
        assert!(caller_dir.join("certs").join(f).is_file(), "{f} written");
    }
    let mode = std::fs::metadata(caller_dir.join("certs/key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!caller.output().contains(&tok), "the join token is never logged");

    // Wait until both versions are endpoints the caller's agent knows.
    let client = http();
    let url = format!("http://{reviews}/reviews/1");
    let mut seen = BTreeMap::new();
    for _ in 0..100 {
        seen = tally(&client, &url, false, 40).await;
        if seen.contains_key("v1") && seen.contains_key("v2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen.contains_key("v1") && seen.contains_key("v2"), "{seen:?}\n{}", caller.output());

    // 75/25 within ±3 points, every request answered.
    let split = tally(&client, &url, false, 2000).await;
    let v2 = split.get("v2").copied().unwrap_or(0) as f64 / 2000.0 * 100.0;
    assert_eq!(
        split.keys().map(String::as_str).collect::<Vec<_>>(),
        ["v1", "v2"],
        "every request answered: {split:?}"
    );
    assert!((22.0..=28.0).contains(&v2), "v2 got {v2:.1}% of 2000: {split:?}");
    websocket_sessions(&reviews, &ratings).await;
    // The agents count what they carried, by direction and peer service, on their admin port.
    let metric = |text: &str, name_and_labels: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok()).unwrap_or(0.0)
    };
    let caller_metrics =
        client.get("http://127.0.0.4:15000/metrics").send().await.unwrap().text().await.unwrap();
    let sent = metric(
        &caller_metrics,
        r#"trellis_agent_requests_total{direction="outbound",peer_service="reviews",status_class="2xx"}"#,
    );
    assert!(sent >= 2000.0, "{caller_metrics}");
    let v1_metrics = client.get("http://127.0.0.2:15000/metrics").send().await.unwrap().text().await.unwrap();
    let received = metric(
        &v1_metrics,
        r#"trellis_agent_requests_total{direction="inbound",peer_service="productpage",status_class="2xx"}"#,
    );
    assert!(received > 1000.0 && received < sent, "{v1_metrics}");
    assert!(v1_metrics.contains("trellis_agent_request_duration_seconds_bucket"), "{v1_metrics}");
    let rss = std::fs::read_to_string(format!("/proc/{}/status", caller.pid())).unwrap();
    println!("caller agent after 2,000 requests: {}", rss.lines().find(|l| l.starts_with("VmRSS")).unwrap());
    let ready = client.get("http://127.0.0.4:15000/ready").send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let dump: Value = client.get("http://127.0.0.4:15000/config").send().await.unwrap().json().await.unwrap();
    assert!(dump["identity"]["spiffeId"].as_str().unwrap().ends_with("/sa/productpage"), "{dump}");
    let listener =
        dump["listeners"].as_array().unwrap().iter().find(|l| l["name"] == "outbound:reviews.shop:9080");
    assert_eq!(listener.unwrap()["bound"], true, "{dump}");
    assert!(!dump["versions"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]["reviews.shop:9080~version=v2"].is_null());

    // The route's retries (5xx, two more attempts) turn v1's intermittent 503s into answers:
    // without them a quarter of these would fail (75 % go to v1, a third of those fail), with
    // them about 1.6 % (three failed tries in a row).
    let flaky = tally(&client, &format!("http://{reviews}/reviews/flaky"), false, 400).await;
    let failed = 400 - flaky.get("v1").unwrap_or(&0) - flaky.get("v2").unwrap_or(&0);
    assert!(flaky.contains_key("v1") && failed < 40, "{flaky:?}");
    // Beta testers always reach v2.
    let beta = tally(&client, &url, true, 200).await;
    assert_eq!(beta, BTreeMap::from([("v2".to_owned(), 200)]), "x-beta: true");
    // Explicit mode through the agent's HTTP proxy: the application names the service.
    let proxied = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http("http://127.0.0.4:15001").unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answer =
        proxied.get("http://reviews.shop:9080/reviews/1").header("x-beta", "true").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().starts_with("v2 "), "x-beta through the proxy");
    let unknown = proxied.get("http://nothing.shop:9080/").send().await.unwrap();
    assert_eq!(unknown.status(), 502);
    // The application learns its caller from the agent, over mTLS.
    let body = client.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(body.contains("URI=spiffe://") && body.ends_with("/ns/shop/sa/productpage"), "{body}");

    // gRPC (h2) through two agents: the answer, and a status carried in trailers.
    let mut answer = Err(tonic::Status::unknown("not called"));
    for _ in 0..100 {
        answer = grpc_call(&ratings, b"ok").await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answer.unwrap_or_else(|s| panic!("{s:?}\n{}", caller.output()));
    assert!(
        answer.starts_with("ratings-v1 URI=spiffe://") && answer.ends_with("/sa/productpage"),
        "{answer}"
    );
    let err = grpc_call(&ratings, b"fail").await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::NotFound, "no such rating"));
    // A streaming call: each message crosses both agents on its own, and the end with OK.
    let pongs = ping_pong(&ratings).await.unwrap_or_else(|e| panic!("{e}\n{}", caller.output()));
    assert_eq!(pongs, ["1 ping1", "2 ping2", "3 ping3"]);

    // The local xDS relay: a client with no certificate gets the configuration of the
    // agent's identity, and is registered as a dataplane of the agent's service.
    let relay = tonic::transport::Endpoint::from_static("http://127.0.0.4:15010").connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let node =
        Node { id: "proxyless-1".into(), user_agent_name: "grpc-node-js".into(), ..Default::default() };
    let first = DiscoveryRequest { type_url: Cluster::type_url(), node: Some(node), ..Default::default() };
    tx.send(first).await.unwrap();
    let mut relayed = AggregatedDiscoveryServiceClient::new(relay)
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let clusters =
        tokio::time::timeout(Duration::from_secs(10), relayed.message()).await.unwrap().unwrap().unwrap();
    let names: Vec<String> =
        clusters.resources.iter().map(|a| Cluster::decode(a.value.as_slice()).unwrap().name).collect();
    assert!(names.contains(&"reviews.shop:9080~version=v2".to_owned()), "{names:?}");
    let mut registered = Value::Null;
    for _ in 0..50 {
        let (_, list) = api.get("/meshes/shop/dataplanes").await;
        registered = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["nodeId"] == "proxyless-1")
            .cloned()
            .unwrap_or_default();
        if !registered.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(registered["service"], "productpage", "{registered}");
    drop((tx, relayed));

    // TCP through two agents, to the TCP route's `role: primary` backend.
    let mut echoed = None;
    for _ in 0..100 {
        echoed = echo(&db).await;
        if echoed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(echoed.as_deref(), Some(&b"ping"[..]), "{}", caller.output());

    // A circuit breaker of one connection: a second one at the same time fails at once.
    let mut cb = example_documents().into_iter().find(|d| d["kind"] == "CircuitBreaker").unwrap();
    cb["metadata"]["name"] = json!("db");
    cb["spec"] = json!({"targetRef": {"service": "db"}, "thresholds": {"maxConnections": 1}});
    let (status, body) = api.put(&document_path(&cb), &cb).await;
    assert_eq!(status, 201, "{body}");
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One connection holds the one place (once the limit has arrived).
        let Some(_held) = echo_connection(&db).await else { continue };
        if echo(&db).await.is_none() {
            refused = true;
            break;
        }
    }
    assert!(refused, "a second connection past maxConnections 1 was served");
    let mut again = None;
    for _ in 0..20 {
        again = echo(&db).await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(again.as_deref(), Some(&b"ping"[..]), "served again once the first one closed");

    // A route change under load: followed, and no request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(&client, &url, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut route = docs.iter().find(|d| d["kind"] == "HTTPRoute").unwrap().clone();
    route["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(0);
    route["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(100);
    let changed_at = std::time::Instant::now();
    let (status, body) = api.put(&document_path(&route), &route).await;
    assert_eq!(status, 200, "{body}");
    let mut all_v2_after = None;
    for _ in 0..100 {
        if tally(&client, &url, false, 20).await == BTreeMap::from([("v2".to_owned(), 20)]) {
            all_v2_after = Some(changed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.unwrap();
    let failed: Vec<&String> = answers.iter().filter(|a| !a.starts_with('v')).collect();
    assert!(failed.is_empty(), "{} of {} failed: {failed:?}", failed.len(), answers.len());
    let took = all_v2_after.expect("the route change reached the caller's agent");
    println!("route change followed within {took:?}; {} requests under load, none failed", answers.len());

    // A CA root rotation under load. Prepare puts the new root beside the old one in every
    // agent's trust bundle; activate makes it sign: an instance that joins then holds a
    // new-root SVID, the agents from before old-root ones, and they call each other with no
    // failed request.
    let bundle_version = |dump: &Value| {
        dump["versions"]["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"]["trust-bundle"]
            .clone()
    };
    let dump_of = |ip: &'static str| {
        let client = client.clone();
        async move {
            let url = format!("http://{ip}:15000/config");
            client.get(url).send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    let bundle_before = bundle_version(&dump_of("127.0.0.4").await);
    assert!(!bundle_before.is_null(), "{}", dump_of("127.0.0.4").await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(&client, &url, &stop);
    let (status, body) = api.post("/meshes/shop/ca/rotation/prepare", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let mut changed = false;
        for _ in 0..100 {
            if bundle_version(&dump_of(ip).await) != bundle_before {
                changed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(changed, "the agent on {ip} got the prepared bundle");
    }
    let (status, body) = api.post("/meshes/shop/ca/rotation/activate", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let tok = join_token(&api, "reviews", json!({"version": "v2"})).await;
    let app_port = format!("9080={v2_port}");
    let mut newcomer = agent(
        &t.xds,
        &ca,
        &dir("v2-after-rotation"),
        &tok,
        "reviews",
        "127.0.0.8",
        &["--port", "9080", "--app-port", &app_port, "--outbound", "none"],
    );
    newcomer.wait_for_line("listening inbound:9080 on 127.0.0.8:9080", Duration::from_secs(20)).await;
    let received = |text: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(r#"trellis_agent_requests_total{direction="inbound",peer_service="productpage",status_class="2xx"}"#)?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let mut served = 0.0;
    for _ in 0..100 {
        let text = client.get("http://127.0.0.8:15000/metrics").send().await.unwrap().text().await.unwrap();
        served = received(&text);
        if served >= 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 10.0, "the new-root instance was called: {}", newcomer.output());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.unwrap();
    let failed: Vec<&String> = answers.iter().filter(|a| !a.starts_with('v')).collect();
    assert!(failed.is_empty(), "{} of {} failed: {failed:?}", failed.len(), answers.len());
    println!("rotation prepared and activated: {} requests under load, none failed", answers.len());

    // STRICT: a plaintext connection to an inbound port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect("127.0.0.2:9080").await.unwrap();
    plain.write_all(b"GET /reviews/1 HTTP/1.1\r\nHost: reviews\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "plaintext was served: {}", String::from_utf8_lossy(&answer));

    // mTLS with a certificate of another mesh (another CA) is refused; the same request with
    // the caller's own certificate, from its certificate directory, is answered.
    let mut other = docs.iter().find(|d| d["kind"] == "Mesh").unwrap().clone();
    other["metadata"]["name"] = json!("other");
    let (status, body) = api.put(&document_path(&other), &other).await;
    assert_eq!(status, 201, "{body}");
    let svc = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    let (status, body) = api.put("/meshes/other/services/productpage", &svc).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.post("/meshes/other/join-tokens", &json!({"service": "productpage"})).await;
    assert_eq!(status, 201, "{body}");
    let root = std::fs::read_to_string(&ca).unwrap();
    let foreign = issue(&t.xds, &root, body["token"].as_str().unwrap()).await.unwrap();
    assert!(foreign.spiffe_id.ends_with("/ns/other/sa/productpage"), "{}", foreign.spiffe_id);
    let answer = mtls_get("127.0.0.2:9080", &foreign, true).await;
    assert!(!answer.starts_with("HTTP/"), "another mesh's certificate was served: {answer}");
    let own = svid_in(&caller_dir.join("certs")).await;
    let answer = mtls_get("127.0.0.2:9080", &own, true).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A client that names no protocol in its handshake is served too: the agent tells the
    // version from the request itself.
    let answer = mtls_get("127.0.0.2:9080", &own, false).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "without ALPN: {answer}");

    // Active health checks (the seed's, `GET /health` every 10 s) reach the application through
    // its agent, from the agents that call `reviews` only: the servers, which bind no
    // outbound listener, check nothing, even after two rounds of checks each.
    tokio::time::sleep_until(servers_started + Duration::from_secs(11)).await;
    let mut checked_by = String::new();
    for _ in 0..100 {
        checked_by = client
            .get(format!("http://{reviews}/reviews/checked-by"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if !checked_by.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(checked_by, "URI=spiffe://shop.acme.trellis.internal/ns/shop/sa/productpage");

    // A caller no access policy allows gets 403 (its agent takes over the outbound address).
    // SIGTERM drains: a request in flight is answered, then the agent exits cleanly.
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), format!("http://{reviews}/reviews/slow"));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    caller.signal("TERM").await;
    assert_eq!(slow.await.unwrap().unwrap(), 200, "{}", caller.output());
    assert!(caller.wait(Duration::from_secs(10)).await.success(), "{}", caller.output());
    let tok = join_token(&api, "stranger", json!({})).await;
    let mut stranger = agent(
        &t.xds,
        &ca,
        &dir("stranger"),
        &tok,
        "stranger",
        "127.0.0.5",
        &["--outbound", "reviews,ratings,db"],
    );
    let addr = outbound_addr(&mut stranger, "outbound:reviews.shop:9080").await;
    assert_eq!(addr, reviews, "a service keeps its outbound address");
    let mut status = 0;
    for _ in 0..100 {
        status = client
            .get(format!("http://{addr}/reviews/1"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 403, "{}", stranger.output());
    let ratings_again = outbound_addr(&mut stranger, "outbound:ratings.shop:9090").await;
    let err = grpc_call(&ratings_again, b"ok").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let db_again = outbound_addr(&mut stranger, "outbound:db.shop:5432").await;
    assert_eq!(
        echo(&db_again).await,
        None,
        "a TCP caller no policy allows is cut off\nstranger:\n{}\ndb:\n{}",
        stranger.output(),
        agents[3].output()
    );

    // What the agent cannot honour is NACKed, and the resource's status says why.
    let mut refused = docs.iter().find(|d| d["kind"] == "HTTPRoute").unwrap().clone();
    refused["spec"]["rules"][0]["mirror"] = json!({"service": "reviews", "percent": 10});
    let (status, body) = api.put(&document_path(&refused), &refused).await;
    assert_eq!(status, 200, "{body}");
    let mut propagation = Value::Null;
    for _ in 0..100 {
        let (_, doc) = api.get(&document_path(&refused)).await;
        propagation = doc["status"]["propagation"].clone();
        if propagation["rejected"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reason = propagation["errors"][0].as_str().unwrap_or_default();
    assert!(
        reason.contains("outbound:reviews.shop:9080")
            && reason.contains("request mirroring is not supported by trellis-agent"),
        "{propagation}"
    );
    // Traffic keeps flowing on the last configuration it accepted.
    let after = client.get(format!("http://{addr}/reviews/1")).send().await.unwrap();
    assert_eq!(after.status(), 403);

    // The control plane is killed (SIGKILL) under steady load, and not one request fails. The
    // caller's agent is back first, from the SVID it kept: its join token is not read again.
    stranger.kill().await;
    let mut restarted = agent(
        &t.xds,
        &ca,
        &caller_dir,
        "not a token",
        "productpage",
        "127.0.0.4",
        &["--outbound", "reviews,db"],
    );
    assert_eq!(outbound_addr(&mut restarted, "outbound:reviews.shop:9080").await, reviews);
    let db_out = outbound_addr(&mut restarted, "outbound:db.shop:5432").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(&client, &url, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.close().await;
    let xds = t.xds.clone();
    t.kill().await;

    // An agent restarted while the control plane is down serves from the configuration it
    // accepted last.
    agents[3].kill().await;
    let mut db_agent = agent(&xds, &ca, &dir("db"), "not a token", "db", "127.0.0.7", &db_flags);
    db_agent.wait_for_line("serving the last accepted configuration", Duration::from_secs(20)).await;
    db_agent.wait_for_line("listening inbound:5432 on 127.0.0.7:5432", Duration::from_secs(20)).await;
    let mut echoed = None;
    for _ in 0..100 {
        echoed = echo(&db_out).await;
        if echoed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(echoed.as_deref(), Some(&b"ping"[..]), "{}", db_agent.output());

    // The control plane comes back on its address: the agents reconnect, take a change
    // (the NACKed route repaired, everything to v1), ACK it, and traffic follows.
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", &database_url)
        .env("TRELLIS_XDS_ADDR", &xds)
        .args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    assert_eq!(t.xds, xds);
    let api = Api::new(&t, "acme", &admin);
    let mut route = docs.iter().find(|d| d["kind"] == "HTTPRoute").unwrap().clone();
    route["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(100);
    route["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(0);
    let (status, body) = api.put(&document_path(&route), &route).await;
    assert_eq!(status, 200, "{body}");
    let mut propagation = Value::Null;
    for _ in 0..300 {
        let (_, doc) = api.get(&document_path(&route)).await;
        propagation = doc["status"]["propagation"].clone();
        let count = |k: &str| propagation[k].as_u64().unwrap_or(0);
        if count("proxies") > 0 && count("applied") == count("proxies") && count("rejected") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = |k: &str| propagation[k].as_u64().unwrap_or(0);
    // A list is read in a transaction, not from the read cache: where the two differ, the
    // cache is stale.
    let (_, listed) = api.get("/meshes/shop/http-routes").await;
    assert!(
        count("proxies") > 0 && count("applied") == count("proxies") && count("rejected") == 0,
        "{propagation}\nlisted: {}\n{}",
        listed["items"][0]["status"]["propagation"],
        restarted.output()
    );
    let (_, fleet) = api.get("/meshes/shop/dataplanes").await;
    let me = fleet["items"].as_array().unwrap().iter().find(|d| d["nodeId"] == "productpage-127.0.0.4");
    let me = me.unwrap_or_else(|| panic!("{fleet}"));
    assert_eq!(me["online"], true, "{me}");
    let acked: Vec<&Value> =
        me["sync"].as_array().unwrap().iter().filter(|l| !l["ackedVersion"].is_null()).collect();
    assert!(!acked.is_empty() && me["sync"].as_array().unwrap().iter().all(|l| l["inSync"] == true), "{me}");
    let served = tally(&client, &url, false, 100).await;
    assert_eq!(served, BTreeMap::from([("v1".to_owned(), 100)]), "{}", restarted.output());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.unwrap();
    let failed: Vec<&String> = answers.iter().filter(|a| !a.starts_with('v')).collect();
    assert!(failed.is_empty(), "{} of {} failed: {failed:?}", failed.len(), answers.len());
    println!("control plane killed and back: {} requests under load, none failed", answers.len());
    drop((agents, db_agent, restarted, newcomer));
}

/// Two agents of a small mesh (the seed's Mesh, Services and access policy, no route):
/// `reviews` v1 on `addrs[0]` and the `productpage` caller on `addrs[1]`, which takes its
/// calls through its HTTP proxy (it binds no outbound address, so that these tests and the
/// one above can run side by side). Returns what the tests need of them.
struct Pair {
    t: Trellis,
    api: Api,
    agents: Vec<Process>,
    cert_dirs: Vec<std::path::PathBuf>,
    addrs: [&'static str; 2],
    /// A client whose requests go through the caller's HTTP proxy.
    client: reqwest::Client,
    tmp: tempfile::TempDir,
}

const PAIR_URL: &str = "http://reviews.shop:9080/reviews/1";

async fn pair(db: &TestDb, addrs: [&'static str; 2], trellis_args: &[&str]) -> Pair {
    pair_of(db, &[(addrs[0], app("v1").await)], addrs[1], trellis_args).await
}

/// [`pair`] with an instance of `reviews` (tagged v1) on each address of `reviews` in front
/// of the application on the port given; the caller's agent is the last of `agents`. Returns
/// once the caller has had five answers in a row.
async fn pair_of(
    db: &TestDb,
    reviews: &[(&'static str, u16)],
    caller: &'static str,
    trellis_args: &[&str],
) -> Pair {
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]).args(trellis_args);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(db, "acme", Role::Admin).await);
    for doc in example_documents().into_iter().filter(|d| {
        ["Mesh", "Service", "AccessPolicy"].contains(&d["kind"].as_str().unwrap())
            && d["metadata"]["name"] != "db"
    }) {
        let (status, body) = api.put(&document_path(&doc), &doc).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let store = db.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, platform_root(&store).await).unwrap();
    store.close().await;
    let (mut agents, mut cert_dirs) = (Vec::new(), Vec::new());
    let instances = reviews.iter().map(|(address, port)| ("reviews", *address, Some(*port)));
    for (service, address, app_port) in instances.chain([("productpage", caller, None)]) {
        let tok = join_token(&api, service, json!({"version": "v1"})).await;
        let dir = tmp.path().join(address);
        std::fs::create_dir_all(&dir).unwrap();
        let p = match app_port {
            Some(port) => reviews_agent(&t, tmp.path(), address, port, &tok).await,
            None => {
                let proxy = format!("{address}:15001");
                let flags = ["--outbound", "none", "--http-proxy-addr", &proxy];
                let mut p = agent(&t.xds, &ca, &dir, &tok, service, address, &flags);
                p.wait_for_line("joined the mesh", Duration::from_secs(20)).await;
                p
            }
        };
        agents.push(p);
        cert_dirs.push(dir.join("certs"));
    }
    let client = http_via_proxy(caller);
    let mut answered = BTreeMap::new();
    let answers = |a: &BTreeMap<String, usize>| {
        a.iter()
            .filter(|(k, _)| !k.starts_with("status") && !k.starts_with("error"))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    for _ in 0..100 {
        answered = tally(&client, PAIR_URL, false, 5).await;
        if answers(&answered) == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answers(&answered), 5, "{answered:?}\n{}", agents.last().unwrap().output());
    Pair { t, api, agents, cert_dirs, addrs: [reviews[0].0, caller], client, tmp }
}

/// An agent of `reviews` on `address` in front of the application on `app_port`, its files in
/// `tmp`/`address` (an agent started again there goes on with the SVID it holds); returns once
/// it has joined and listens.
async fn reviews_agent(t: &Trellis, tmp: &Path, address: &str, app_port: u16, token: &str) -> Process {
    let app_port = format!("9080={app_port}");
    let flags = ["--port", "9080", "--app-port", &app_port, "--outbound", "none"];
    let ca = tmp.join("platform-ca.pem");
    let mut p = agent(&t.xds, &ca, &tmp.join(address), token, "reviews", address, &flags);
    let inbound = format!("listening inbound:9080 on {address}:9080");
    p.wait_for_line(&inbound, Duration::from_secs(30)).await;
    p
}

/// Whether the SVID in `cert_dir` chains to the root `root_pem` of `trust_domain`.
fn chains_to(cert_dir: &Path, trust_domain: &str, root_pem: &str) -> bool {
    let td = trellis_ca::TrustDomain::parse(trust_domain).unwrap();
    let root = trellis_ca::RootCert::parse(&td, certs(root_pem).remove(0)).unwrap();
    let bundle = trellis_ca::TrustBundle::new(&td, [root], 0).unwrap();
    let chain = std::fs::read_to_string(cert_dir.join("cert.pem")).unwrap();
    trellis_ca::verify_svid(&bundle, &certs(&chain), std::time::SystemTime::now()).is_ok()
}

/// The certificate of the CA in `state` (`active`, `previous`), with the CA status.
async fn ca_in(api: &Api, state: &str) -> (String, Value) {
    let (status, ca) = api.get("/meshes/shop/ca").await;
    assert_eq!(status, 200, "{ca}");
    let found = ca["authorities"].as_array().unwrap().iter().find(|a| a["state"] == state).cloned();
    let found = found.unwrap_or_else(|| panic!("no {state} CA: {ca}"));
    (found["certificatePem"].as_str().unwrap().to_owned(), found)
}

#[tokio::test]
async fn a_root_rotation_completes_under_load_as_agents_renew_within_seconds_of_the_activation() {
    let db = TestDb::create().await;
    let Pair { t, api, agents, cert_dirs, addrs, client, tmp: _tmp } =
        pair(&db, ["127.0.0.20", "127.0.0.21"], &[]).await;
    let (_, status) = api.get("/meshes/shop/ca").await;
    let td = status["trustDomain"].as_str().unwrap().to_owned();
    let (old_root, old) = ca_in(&api, "active").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(&client, PAIR_URL, &stop);

    // Prepare: the new root joins the bundle; nothing is renewed for it.
    let (status, body) = api.post("/meshes/shop/ca/rotation/prepare", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Activate: the bundle names the new root first, and every agent renews under it.
    let (status, body) = api.post("/meshes/shop/ca/rotation/activate", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let activated = std::time::Instant::now();
    let (new_root, _) = ca_in(&api, "active").await;
    for dir in &cert_dirs {
        while !chains_to(dir, &td, &new_root) {
            assert!(activated.elapsed() < Duration::from_secs(15), "{} still old-root", dir.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let renewed_within = activated.elapsed();
    for a in &agents {
        assert!(a.output().contains("renewing the SVID now"), "{}", a.output());
    }

    // Retire, not forced: no leaf of the old root is in use any more once each agent has
    // presented its new one (on a new xDS stream, right after the renewal).
    loop {
        let (_, previous) = ca_in(&api, "previous").await;
        if previous["liveLeaves"] == 0 {
            break;
        }
        assert!(activated.elapsed() < Duration::from_secs(15), "old leaves still in use: {previous}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = old["id"].as_str().unwrap();
    let (status, body) = api.post(&format!("/meshes/shop/ca/authorities/{id}/retire"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "stable", "{body}");
    // The agents get the one-root bundle, and keep serving with it.
    for a in addrs {
        let mut roots = 0;
        for _ in 0..100 {
            let dump: Value =
                http().get(format!("http://{a}:15000/config")).send().await.unwrap().json().await.unwrap();
            roots = dump["trustBundle"]["roots"].as_u64().unwrap_or(0);
            if roots == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(roots, 1, "the agent on {a} has the bundle without the retired root");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.unwrap();
    let failed: Vec<&String> = answers.iter().filter(|a| !a.starts_with('v')).collect();
    assert!(failed.is_empty(), "{} of {} failed: {failed:?}", failed.len(), answers.len());
    for dir in &cert_dirs {
        assert!(chains_to(dir, &td, &new_root) && !chains_to(dir, &td, &old_root), "{}", dir.display());
    }
    // A new connection after the retirement is served too.
    let after = tally(&http_via_proxy(addrs[1]), PAIR_URL, false, 20).await;
    assert_eq!(after, BTreeMap::from([("v1".to_owned(), 20)]));
    println!(
        "root rotation: every agent renewed {renewed_within:?} after the activation; retired unforced; \
         {} requests under load, none failed",
        answers.len()
    );
    drop((agents, t));
}

/// A client through the HTTP proxy of the agent on `caller` (port 15001).
fn http_via_proxy(caller: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{caller}:15001")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn agents_renew_short_lived_svids_again_and_again_under_load() {
    let db = TestDb::create().await;
    // Every SVID lives 20 s: renewed every 8 to 12 s.
    let Pair { t, agents, addrs, client, .. } =
        pair(&db, ["127.0.0.23", "127.0.0.24"], &["--svid-ttl-override", "20s"]).await;
    let not_after = |a: &'static str| async move {
        let dump: Value =
            http().get(format!("http://{a}:15000/config")).send().await.unwrap().json().await.unwrap();
        dump["identity"]["notAfter"].as_u64().unwrap()
    };
    let first = [not_after(addrs[0]).await, not_after(addrs[1]).await];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(&client, PAIR_URL, &stop);
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.unwrap();
    for (i, a) in agents.iter().enumerate() {
        let renewals = a.output().matches("SVID renewed").count();
        assert!(renewals >= 2, "{} renewals in 30 s:\n{}", renewals, a.output());
        assert!(not_after(addrs[i]).await > first[i] + 15, "the agent serves with the renewed SVID");
    }
    let failed: Vec<&String> = answers.iter().filter(|a| !a.starts_with('v')).collect();
    assert!(failed.is_empty(), "{} of {} failed: {failed:?}", failed.len(), answers.len());
    println!("SVIDs of 20 s renewed under load: {} requests, none failed", answers.len());
    drop((agents, t));
}

/// The TCP connections established on this host to `addr`, an IPv4 address and port.
fn connections_to(addr: &str) -> usize {
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    // /proc/net/tcp writes the address as the u32 it is in memory, the port as a number.
    let hex = format!("{:08X}:{:04X}", u32::from_le_bytes(addr.ip().octets()), addr.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let established = |l: &&str| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields[2] == hex && fields[3] == "01"
    };
    table.lines().skip(1).filter(established).count()
}

#[tokio::test]
async fn http_1_1_between_agents_shares_http_2_connections_and_reaches_the_application_as_http_1_1() {
    let db = TestDb::create().await;
    let Pair { t, agents, addrs, client, .. } = pair(&db, ["127.0.0.27", "127.0.0.28"], &[]).await;
    let callee = format!("{}:9080", addrs[0]);
    let answers: Vec<String> = futures::stream::iter(0..200)
        .map(|_| async {
            let resp = client.get("http://reviews.shop:9080/reviews/wire").send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        })
        .buffer_unordered(50)
        .collect()
        .await;
    for answer in &answers {
        let (head, padding) = answer.split_at(answer.find(" x").expect("the answer's padding") + 1);
        // The application takes HTTP/1.1 with the authority the caller named.
        assert_eq!(head, "HTTP/1.1 reviews.shop:9080 ");
        assert_eq!(padding.len(), 200_000);
    }
    assert_eq!(connections_to(&callee), 1, "200 calls, 50 at a time, over the one connection");
    // 250 calls of a second at once, past the 200 streams an agent takes on a connection: the
    // last 50 go on a second connection rather than wait for the first 200 to end.
    let slow: Vec<u16> = futures::stream::iter(0..250)
        .map(|_| async {
            let resp = client.get("http://reviews.shop:9080/reviews/slow").send().await.unwrap();
            resp.status().as_u16()
        })
        .buffer_unordered(250)
        .collect()
        .await;
    assert!(slow.iter().all(|s| *s == 200), "{slow:?}");
    assert_eq!(connections_to(&callee), 2, "a second connection for the streams past 200");
    drop((agents, t));
}

#[tokio::test]
async fn the_readiness_listener_answers_503_until_configured_then_200_and_serves_nothing_else() {
    let db = TestDb::create().await;
    let Pair { t, api, agents, tmp, .. } = pair(&db, ["127.0.0.25", "127.0.0.26"], &[]).await;
    // An agent with an SVID already in its certificate directory, whose control plane is
    // unreachable at first (a relay in front of it, down).
    let store = db.store().await;
    let root = platform_root(&store).await;
    store.close().await;
    let tok = join_token(&api, "reviews", json!({"version": "v1"})).await;
    let svid = issue(&t.xds, &root, &tok).await.unwrap();
    let dir = tmp.path().join("ready");
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    for (file, text) in
        [("cert.pem", &svid.chain_pem), ("key.pem", &svid.key_pem), ("bundle.pem", &svid.bundle_pem)]
    {
        std::fs::write(dir.join("certs").join(file), text).unwrap();
    }
    let ca = dir.join("platform-ca.pem");
    std::fs::write(&ca, &root).unwrap();
    let relay = trellis_tests::DbRelay::start(t.xds.clone()).await;
    relay.down();
    let app_port = format!("9080={}", app("v1").await);
    let server = relay.addr.to_string();
    let flags = [
        "--port",
        "9080",
        "--app-port",
        &app_port,
        "--outbound",
        "none",
        "--readiness-addr",
        "127.0.0.22:15021",
    ];
    let mut p = agent(&server, &ca, &dir, "not a token", "reviews", "127.0.0.22", &flags);
    p.wait_for_line("readiness (GET /ready only) on 127.0.0.22:15021", Duration::from_secs(20)).await;

    let client = http();
    let get = |path: &str| client.get(format!("http://127.0.0.22:15021{path}")).send();
    let before = get("/ready").await.unwrap();
    assert_eq!(before.status(), 503);
    assert!(before.text().await.unwrap().contains("waiting for"), "it says what it waits for");
    // Nothing else: not the admin port's endpoints, no other method.
    for path in ["/metrics", "/config", "/", "/ready/"] {
        assert_eq!(get(path).await.unwrap().status(), 404, "{path}");
    }
    let post = client.post("http://127.0.0.22:15021/ready").send().await.unwrap();
    assert_eq!(post.status(), 404);
    assert_eq!(
        client.get("http://127.0.0.22:15000/config").send().await.unwrap().status(),
        200,
        "admin port"
    );

    // The control plane becomes reachable: the configuration arrives, and the agent is ready.
    relay.up();
    let mut status = 0;
    for _ in 0..400 {
        status = get("/ready").await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "{}", p.output());
    assert_eq!(get("/metrics").await.unwrap().status(), 404);
    drop((p, agents, t));
}

/// Sends `n` requests through `client` (`concurrency` at a time): each one's status and how
/// long it took.
async fn timed(client: &reqwest::Client, n: usize, concurrency: usize) -> Vec<(u16, Duration)> {
    futures::stream::iter(0..n)
        .map(|_| async {
            let started = std::time::Instant::now();
            let status = match client.get(PAIR_URL).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            (status, started.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Puts the HTTPRoute `<service>` (every request to all of `service`, with `fault` if given)
/// and waits until every proxy applied it.
async fn catch_all_route(api: &Api, service: &str, fault: Option<Value>) {
    let mut rule = json!({"backendRefs": [{"service": service}]});
    if let Some(f) = fault {
        rule["fault"] = f;
    }
    let doc = json!({"spec": {"targetRef": {"service": service}, "rules": [rule]}});
    let (status, body) = api.put(&format!("/meshes/shop/http-routes/{service}?wait=20s"), &doc).await;
    assert!(status == 200 || status == 201, "{body}");
    assert_eq!(body["status"]["propagation"]["wait"]["outcome"], "applied", "{body:#}");
}

#[tokio::test]
async fn a_routes_injected_faults_abort_and_delay_their_share_of_requests_until_removed() {
    let db = TestDb::create().await;
    let Pair { t, api, agents, client, .. } =
        pair_of(&db, &[("127.0.0.50", app("v1").await)], "127.0.0.51", &[]).await;

    // Half aborted with 503, every one delayed 200 ms.
    let fault = json!({"abort": {"httpStatus": 503, "percent": 50}, "delay": {"fixedDelay": "200ms", "percent": 100}});
    catch_all_route(&api, "reviews", Some(fault)).await;
    let n = 200;
    let answers = timed(&client, n, 20).await;
    let aborted = answers.iter().filter(|(s, _)| *s == 503).count();
    let others: Vec<u16> = answers.iter().map(|(s, _)| *s).filter(|s| *s != 503 && *s != 200).collect();
    assert!(others.is_empty(), "only 200 and 503: {others:?}");
    // Binomial(200, 0.5): 100 ± 7; within five standard deviations.
    assert!((65..=135).contains(&aborted), "{aborted} of {n} aborted");
    let fastest = answers.iter().map(|(_, d)| *d).min().unwrap();
    assert!(
        fastest >= Duration::from_millis(200),
        "every request waits 200 ms; the fastest took {fastest:?}"
    );
    // The caller's access log marks the aborts as Envoy does (FI), and their delay (DI).
    let caller = agents.last().unwrap();
    let log = caller.output();
    let marked =
        log.lines().filter(|l| l.contains(r#""responseFlags":"DI,FI""#) && l.contains(r#""status":503"#));
    assert!(marked.count() > 0, "{log}");
    // And so does the control plane's access log, which the agent feeds as Envoy does.
    let mut items = Vec::new();
    for _ in 0..100 {
        let (status, body) = api.get("/meshes/shop/access-log").await;
        assert_eq!(status, 200, "{body}");
        items = body["items"].as_array().unwrap().clone();
        if items.iter().any(|e| e["responseFlags"] == "DI,FI") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let faulted =
        items.iter().find(|e| e["responseFlags"] == "DI,FI").unwrap_or_else(|| panic!("{items:#?}"));
    assert_eq!(
        (&faulted["status"], &faulted["outcome"], &faulted["direction"], &faulted["destination"]["service"]),
        (&json!(503), &json!("error"), &json!("outbound"), &json!("reviews")),
        "{faulted:#}"
    );

    // Without the fault, nothing fails and nothing waits.
    catch_all_route(&api, "reviews", None).await;
    let answers = timed(&client, 100, 20).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let slowest = answers.iter().map(|(_, d)| *d).max().unwrap();
    assert!(slowest < Duration::from_millis(200), "no delay any more: the slowest took {slowest:?}");
    println!("fault 503 at 50 %: {aborted} of {n} aborted, the fastest after {fastest:?}");
    drop((agents, t));
}

#[tokio::test]
async fn a_routes_injected_abort_fails_real_grpc_calls_with_the_configured_grpc_status_until_removed() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    let mesh = example_documents().into_iter().find(|d| d["kind"] == "Mesh").unwrap();
    let (status, body) = api.put(&document_path(&mesh), &mesh).await;
    assert!(status == 200 || status == 201, "{body}");
    for (path, doc) in [
        (
            "/meshes/shop/services/productpage",
            json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}}),
        ),
        ("/meshes/shop/services/scores", json!({"spec": {"ports": [{"port": 9090, "protocol": "grpc"}]}})),
        (
            "/meshes/shop/access-policies/scores-callers",
            json!({"spec": {"targetRef": {"service": "scores"}, "rules": [{"action": "Allow", "from": [{"service": "productpage"}]}]}}),
        ),
    ] {
        let (status, body) = api.put(path, &doc).await;
        assert!(status == 200 || status == 201, "{path}: {body}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, platform_root(&db.store().await).await).unwrap();
    let dir = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let tok = join_token(&api, "scores", json!({})).await;
    let app_port = format!("9090={}", grpc_app("scores-v1").await);
    let flags = ["--port", "9090", "--app-port", &app_port, "--outbound", "none"];
    let mut scores = agent(&t.xds, &ca, &dir("scores"), &tok, "scores", "127.0.0.60", &flags);
    scores.wait_for_line("listening inbound:9090 on 127.0.0.60:9090", Duration::from_secs(20)).await;
    let tok = join_token(&api, "productpage", json!({})).await;
    let flags = ["--outbound", "scores"];
    let mut caller = agent(&t.xds, &ca, &dir("productpage"), &tok, "productpage", "127.0.0.61", &flags);
    let target = outbound_addr(&mut caller, "outbound:scores.shop:9090").await;
    let mut answer = Err(tonic::Status::unknown("not called"));
    for _ in 0..100 {
        answer = grpc_call(&target, b"ok").await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answer.unwrap_or_else(|s| panic!("{s:?}\n{}", caller.output()));
    assert!(answer.starts_with("scores-v1 URI=spiffe://"), "through both agents: {answer}");

    // Every call aborted with the route's gRPC status, none reaching the application.
    catch_all_route(&api, "scores", Some(json!({"abort": {"grpcStatus": 8, "percent": 100}}))).await;
    for _ in 0..20 {
        let err = grpc_call(&target, b"ok").await.expect_err("aborted");
        assert_eq!((err.code(), err.message()), (tonic::Code::ResourceExhausted, "fault filter abort"));
    }
    let log = caller.output();
    let marked = log.lines().filter(|l| l.contains(r#""responseFlags":"FI""#));
    assert!(marked.count() > 0, "the caller's access log flags the abort:\n{log}");
    // An HTTP status reaches a gRPC caller as the gRPC status it maps to, as Envoy's does.
    catch_all_route(&api, "scores", Some(json!({"abort": {"httpStatus": 503, "percent": 100}}))).await;
    let err = grpc_call(&target, b"ok").await.expect_err("aborted");
    assert_eq!((err.code(), err.message()), (tonic::Code::Unavailable, "fault filter abort"));

    // Without the fault, the calls go through again.
    catch_all_route(&api, "scores", None).await;
    for _ in 0..20 {
        let answer = grpc_call(&target, b"ok").await.unwrap_or_else(|s| panic!("{s:?}"));
        assert!(answer.starts_with("scores-v1 "), "{answer}");
    }
    drop((caller, scores, t));
}

/// An application that answers every request with `body` after `delay`.
async fn app_after(body: &'static str, delay: Duration) -> u16 {
    let router = axum::Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        body
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

#[tokio::test]
async fn least_request_sends_fewer_requests_to_a_slow_instance_than_round_robin_would() {
    let db = TestDb::create().await;
    let (slow, fast) =
        (app_after("slow", Duration::from_millis(200)).await, app_after("fast", Duration::ZERO).await);
    let Pair { t, agents, client, .. } =
        pair_of(&db, &[("127.0.0.52", slow), ("127.0.0.53", fast)], "127.0.0.54", &[]).await;
    // Both instances are endpoints the caller knows.
    let mut seen = BTreeMap::new();
    for _ in 0..100 {
        seen = tally(&client, PAIR_URL, false, 20).await;
        if seen.contains_key("slow") && seen.contains_key("fast") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen.contains_key("slow") && seen.contains_key("fast"), "{seen:?}");

    // 400 requests, 16 at a time: round robin would give the slow one 200.
    let n = 400;
    let split = tally(&client, PAIR_URL, false, n).await;
    let slow_share = split.get("slow").copied().unwrap_or(0);
    assert_eq!(split.values().sum::<usize>(), n);
    assert_eq!(
        split.keys().map(String::as_str).collect::<Vec<_>>(),
        ["fast", "slow"],
        "all answered: {split:?}"
    );
    // With two choices the slow one (always busier) gets a request only when drawn twice: ~25 %.
    assert!(slow_share * 100 < n * 35, "the slow instance got {slow_share} of {n}: {split:?}");
    println!("least request: the slow instance (200 ms) got {slow_share} of {n} concurrent requests");
    drop((agents, t));
}

/// Calls through the caller's HTTP proxy (`proxy`) until `stop`: GETs, POSTs with a body, and
/// POSTs whose body streams, in turn; each answer's body, or what went wrong instead.
fn steady_calls(
    client: &reqwest::Client,
    proxy: String,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let (client, stop) = (client.clone(), stop.clone());
    tokio::spawn(async move {
        let mut answers = Vec::new();
        for i in 0.. {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let req = match i % 3 {
                0 => client.get(PAIR_URL),
                1 => client.post(PAIR_URL).body(format!("order {i}")),
                _ => {
                    answers.push(streamed_post(&proxy, &format!("order {i}")).await);
                    continue;
                }
            };
            answers.push(match req.send().await {
                Ok(r) if r.status() == 200 => r.text().await.unwrap(),
                Ok(r) => format!("status {}: {}", r.status(), r.text().await.unwrap_or_default().trim()),
                Err(e) => format!("error {e}"),
            });
        }
        answers
    })
}

/// A POST to `PAIR_URL` through the HTTP proxy at `proxy` whose chunked body follows its head
/// after a pause, so that the agent passes it on as it arrives, not whole: the answer's body,
/// or what went wrong instead.
async fn streamed_post(proxy: &str, body: &str) -> String {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(proxy).await?;
        let head = format!(
            "POST {PAIR_URL} HTTP/1.1\r\nhost: reviews.shop:9080\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        tcp.write_all(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes()).await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return format!("error {e}"),
        Err(_) => return "error no answer within 10 s".into(),
    };
    let Some((head, body)) = answer.split_once("\r\n\r\n") else { return format!("error {answer:?}") };
    let status = head.split(' ').nth(1).unwrap_or_default();
    // Chunked, the answer is one chunk and then the last: `1\r\na\r\n0\r\n\r\n`.
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { body.split("\r\n").nth(1).unwrap_or_default() } else { body };
    match status {
        "200" => body.to_owned(),
        _ => format!("status {status}: {}", body.trim()),
    }
}

/// Rolling every instance of a service under load: each agent in turn is told to stop
/// (SIGTERM), drains, exits and is started again from its files. The control plane drops the
/// instance as it leaves; its callers' requests on the way are answered (a graceful GOAWAY in
/// two steps), and those that find it gone — connection refused, before the callers have heard
/// — go to the other instance: no request fails, GET or POST, whole or streaming.
#[tokio::test]
async fn instances_restarted_one_after_another_under_load_fail_no_request() {
    let db = TestDb::create().await;
    let (a, b) = (app_after("a", Duration::ZERO).await, app_after("b", Duration::ZERO).await);
    let (addresses, caller) = (["127.0.0.57", "127.0.0.58"], "127.0.0.59");
    let Pair { t, api, mut agents, client, tmp, .. } =
        pair_of(&db, &[(addresses[0], a), (addresses[1], b)], caller, &[]).await;
    let mut policy = example_documents().into_iter().find(|d| d["kind"] == "AccessPolicy").unwrap();
    policy["spec"]["rules"][0]["to"]["methods"] = json!(["GET", "POST"]);
    let (status, body) = api.put(&document_path(&policy), &policy).await;
    assert_eq!(status, 200, "{body}");
    let posted = || client.post(PAIR_URL).body("order").send();
    for _ in 0..100 {
        if posted().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let both = || async {
        for _ in 0..100 {
            if tally(&client, PAIR_URL, false, 20).await.keys().eq(["a", "b"]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("both instances never answered");
    };
    both().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4).map(|_| steady_calls(&client, format!("{caller}:15001"), &stop)).collect();
    for (i, address) in addresses.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        agents[i].signal("TERM").await;
        assert!(agents[i].wait(Duration::from_secs(15)).await.success(), "{}", agents[i].output());
        // Draining, the agent ended its xDS stream: the control plane took it as leaving and
        // dropped the instance at once, not after the grace period of a stream cut off.
        let listed = || async {
            let (_, list) = api.get("/meshes/shop/dataplanes").await;
            list["items"].as_array().unwrap().iter().any(|d| d["address"] == address)
        };
        let gone = std::time::Instant::now();
        while listed().await {
            assert!(gone.elapsed() < Duration::from_secs(5), "{address} still listed after it left");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A while with the instance gone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let token = std::fs::read_to_string(tmp.path().join(address).join("token")).unwrap();
        let port = [a, b][i];
        agents[i] = reviews_agent(&t, tmp.path(), address, port, &token).await;
        both().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = BTreeMap::new();
    for task in load {
        for answer in task.await.unwrap() {
            *answers.entry(answer).or_insert(0usize) += 1;
        }
    }
    assert_eq!(answers.keys().collect::<Vec<_>>(), ["a", "b"], "every call answered: {answers:?}");
    let calls: usize = answers.values().sum();
    assert!(calls > 200, "the load went on throughout: {answers:?}");
    println!("two instances restarted in turn: {calls} calls, none failed: {answers:?}");
    drop((agents, t));
}

/// The same for TCP: the two instances of `db` restarted in turn while a caller opens one
/// connection after another through its outbound listener; a connection that finds an instance
/// gone is carried to the other, and every one echoes.
#[tokio::test]
async fn tcp_connections_reach_the_instance_still_there_while_the_other_restarts() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    for doc in
        example_documents().into_iter().filter(|d| ["Mesh", "Service"].contains(&d["kind"].as_str().unwrap()))
    {
        let (status, body) = api.put(&document_path(&doc), &doc).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let policy = json!({"spec": {"targetRef": {"service": "db"}, "rules": [{"action": "Allow", "from": [{"service": "productpage"}]}]}});
    let (status, body) = api.put("/meshes/shop/access-policies/db-callers", &policy).await;
    assert_eq!(status, 201, "{body}");
    let store = db.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, platform_root(&store).await).unwrap();
    store.close().await;
    let app_port = format!("5432={}", echo_app().await);
    let flags = ["--port", "5432", "--app-port", &app_port, "--outbound", "none"];
    let start = |address: &'static str, token: String| {
        let (t, ca, dir, flags) = (&t, &ca, tmp.path().join(address), &flags);
        async move {
            let mut p = agent(&t.xds, ca, &dir, &token, "db", address, flags);
            p.wait_for_line(&format!("listening inbound:5432 on {address}:5432"), Duration::from_secs(30))
                .await;
            p
        }
    };
    let addresses = ["127.0.0.62", "127.0.0.63"];
    let mut instances = Vec::new();
    for address in addresses {
        instances.push(start(address, join_token(&api, "db", json!({})).await).await);
    }
    let tok = join_token(&api, "productpage", json!({})).await;
    let mut caller = agent(
        &t.xds,
        &ca,
        &tmp.path().join("caller"),
        &tok,
        "productpage",
        "127.0.0.64",
        &["--outbound", "db"],
    );
    let db_addr = outbound_addr(&mut caller, "outbound:db.shop:5432").await;
    let mut echoed = None;
    for _ in 0..100 {
        echoed = echo(&db_addr).await;
        if echoed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(echoed.is_some(), "{}", caller.output());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (stop, db_addr) = (stop.clone(), db_addr.clone());
        async move {
            let (mut echoed, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match echo(&db_addr).await {
                    Some(_) => echoed += 1,
                    None => failed += 1,
                }
            }
            (echoed, failed)
        }
    });
    for (i, address) in addresses.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        instances[i].signal("TERM").await;
        assert!(instances[i].wait(Duration::from_secs(15)).await.success(), "{}", instances[i].output());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let token = std::fs::read_to_string(tmp.path().join(address).join("token")).unwrap();
        instances[i] = start(address, token).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (echoed, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "{echoed} connections echoed\n{}", caller.output());
    assert!(echoed > 100, "the connections went on throughout: {echoed}");
    println!("two db instances restarted in turn: {echoed} connections, none failed");
    drop((instances, caller, t));
}

/// Reads from `tcp` until the agent closes the connection (what it answered first, if
/// anything), or panics after `within`.
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    assert!(read.await.is_ok(), "still open after {within:?}");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn oversized_headers_slow_clients_and_malformed_http2_are_cut_off_and_others_still_served() {
    let db = TestDb::create().await;
    let Pair { t, agents, client, .. } =
        pair_of(&db, &[("127.0.0.55", app("v1").await)], "127.0.0.56", &[]).await;
    let edge = "127.0.0.56:15001";

    // A head larger than 64 KiB: 431, as Envoy answers past its 60 KiB.
    let big = format!(
        "GET {PAIR_URL} HTTP/1.1\r\nHost: reviews.shop:9080\r\nx-big: {}\r\n\r\n",
        "x".repeat(100 * 1024)
    );
    let mut tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
    let _ = tcp.write_all(big.as_bytes()).await;
    let answer = closed_within(&mut tcp, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let slowloris = async {
        // Headers that never end, a byte a second: closed once the header timeout (10 s) is up.
        let mut tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
        tcp.write_all(b"GET /reviews/1 HTTP/1.1\r\nHost: reviews.shop:9080\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let drip = async {
            while tcp.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if started.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
        };
        drip.await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "a slow client is never cut off");
        took
    };
    let silent_peer = async {
        // A connection to the inbound mTLS port that never starts its handshake.
        let mut tcp = tokio::net::TcpStream::connect("127.0.0.55:9080").await.unwrap();
        let started = std::time::Instant::now();
        closed_within(&mut tcp, Duration::from_secs(20)).await;
        started.elapsed()
    };
    let malformed = async {
        // The HTTP/2 preface, then a frame of nonsense (a DATA frame on stream 0): the agent
        // says GOAWAY and closes.
        let mut tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        tcp.write_all(&[0, 0, 4, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]).await.unwrap();
        closed_within(&mut tcp, Duration::from_secs(5)).await;
        // A preface that is almost HTTP/2's: taken as HTTP/1.1, refused, closed.
        let mut tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").await.unwrap();
        let answer = closed_within(&mut tcp, Duration::from_secs(5)).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer}");
        // Bytes that are no HTTP at all.
        let mut tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
        tcp.write_all(&[0xff; 64]).await.unwrap();
        closed_within(&mut tcp, Duration::from_secs(5)).await;
    };
    let served = async {
        // Meanwhile everyone else is served.
        let mut answers = BTreeMap::new();
        for _ in 0..10 {
            for (k, n) in tally(&client, PAIR_URL, false, 20).await {
                *answers.entry(k).or_insert(0) += n;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        answers
    };
    // A WebSocket session through the HTTP proxy listener as well.
    {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message as Ws;
        let tcp = tokio::net::TcpStream::connect(edge).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async("ws://reviews.shop:9080/reviews/chat", tcp)
            .await
            .expect("switched to WebSocket through the HTTP proxy");
        ws.send(Ws::text("hi")).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("echoed in time");
        assert_eq!(echoed.unwrap().unwrap(), Ws::text("echo: hi"));
    }
    let (slow, silent, (), answers) = tokio::join!(slowloris, silent_peer, malformed, served);
    assert_eq!(answers, BTreeMap::from([("v1".to_owned(), 200)]));
    assert!(agents.iter().all(|a| !a.output().contains("panicked")));
    println!("a slow client cut off after {slow:?}, a silent peer after {silent:?}");
    drop((agents, t));
}
