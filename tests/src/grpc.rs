//! gRPC clients of the TLS port: channels over rustls (pinned to the platform root, with an
//! optional client certificate), SVIDs from the identity service, and workload files.

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};
use trellis_xds_server::proto::identity_client::IdentityClient;
use trellis_xds_server::proto::{IssueSvidRequest, IssueSvidResponse};

/// A workload's key and certificate, as files would hold them.
#[derive(Clone)]
pub struct Svid {
    pub key_pem: String,
    pub chain_pem: String,
    pub bundle_pem: String,
    pub spiffe_id: String,
}

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().expect("PEM certificates")
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("a PEM private key")
}

/// A channel to the TLS port at `addr` that trusts only `root_pem`, presenting `client` if given.
pub async fn channel(
    addr: &str,
    root_pem: &str,
    client: Option<&Svid>,
) -> Result<Channel, tonic::transport::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(root_pem) {
        roots.add(c).expect("root parses");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match client {
        Some(s) => builder.with_client_auth_cert(certs(&s.chain_pem), key(&s.key_pem)).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = addr.to_owned();
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                // As gRPC clients do: without it, Nagle holds a request's second frame until the
                // server's delayed ACK (40 ms).
                tcp.set_nodelay(true)?;
                let tls =
                    connector.connect(ServerName::try_from("localhost").unwrap().to_owned(), tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}

/// A new key, its CSR sent with `join_token` to the identity service: the workload's SVID.
pub async fn issue(addr: &str, root_pem: &str, join_token: &str) -> Result<Svid, tonic::Status> {
    let (key, csr) = trellis_ca::workload_key_and_csr().expect("key and CSR");
    let ch = channel(addr, root_pem, None).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let resp = IdentityClient::new(ch)
        .issue_svid(IssueSvidRequest { csr: csr.into_bytes(), join_token: join_token.to_owned() })
        .await?
        .into_inner();
    Ok(svid(key.expose_pkcs8_pem().to_string(), resp))
}

/// Renews `current` over mTLS: a new key, the same identity.
pub async fn renew(addr: &str, root_pem: &str, current: &Svid) -> Result<Svid, tonic::Status> {
    let (key, csr) = trellis_ca::workload_key_and_csr().expect("key and CSR");
    let ch = channel(addr, root_pem, Some(current))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let resp = IdentityClient::new(ch)
        .issue_svid(IssueSvidRequest { csr: csr.into_bytes(), join_token: String::new() })
        .await?
        .into_inner();
    Ok(svid(key.expose_pkcs8_pem().to_string(), resp))
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid").field("spiffe_id", &self.spiffe_id).finish_non_exhaustive()
    }
}

fn svid(key_pem: String, r: IssueSvidResponse) -> Svid {
    Svid {
        key_pem,
        chain_pem: r.certificate_chain_pem,
        bundle_pem: r.trust_bundle_pem,
        spiffe_id: r.spiffe_id,
    }
}

/// Writes what the gRPC bootstrap references: `ca.pem` (the platform root, for the xDS
/// server), `cert.pem`, `key.pem` and `bundle.pem` (the mesh's roots, for peers).
pub fn write_files(dir: &Path, platform_root_pem: &str, s: &Svid) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), platform_root_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &s.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &s.key_pem).unwrap();
    std::fs::write(dir.join("bundle.pem"), &s.bundle_pem).unwrap();
}

/// The platform root (PEM) that workloads pin, read from the store.
pub async fn platform_root(store: &trellis_store::Store) -> String {
    let rec = store.platform_ca().await.unwrap().expect("trellis created the platform CA");
    trellis_ca::pem_encode("CERTIFICATE", &rec.cert_der)
}

/// A join token for `service` in `mesh`, made in the store (as the REST API does).
pub async fn join_token(store: &trellis_store::Store, org_slug: &str, mesh: &str, service: &str) -> String {
    use rand::RngCore;
    let org = store
        .org_by_slug(&trellis_model::OrgSlug::parse(org_slug).unwrap())
        .await
        .unwrap()
        .expect("org exists");
    let mut secret = [0u8; trellis_model::SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    let token = trellis_model::Token::new(trellis_model::TokenKind::Join, org.id, secret).to_string();
    let mut tx = store.tenant(org.id).await.unwrap();
    let m =
        tx.mesh_by_name(&trellis_model::MeshName::parse(mesh).unwrap()).await.unwrap().expect("mesh exists");
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    tx.create_join_token(
        m.id,
        &trellis_api::auth::token_hash(&token),
        service,
        &serde_json::json!({}),
        false,
        "test",
        expires,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    token
}
