//! The go-plugin handshake of the built binary, as Terraform sees it: the magic cookie and
//! protocol checks, the handshake line, and mutual TLS that admits only Terraform's
//! client certificate.

use std::process::Stdio;
use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const COOKIE: (&str, &str) =
    ("TF_PLUGIN_MAGIC_COOKIE", "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2");

fn provider() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_terraform-provider-trellis"));
    cmd.env_remove(COOKIE.0)
        .env_remove("PLUGIN_PROTOCOL_VERSIONS")
        .env_remove("PLUGIN_CLIENT_CERT")
        .kill_on_drop(true);
    cmd
}

/// A client certificate like go-plugin's: self-signed, a CA, for client auth.
fn client_identity() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
}

#[tokio::test]
async fn without_terraforms_cookie_or_protocol_6_it_refuses_to_start() {
    let out = provider().output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Terraform runs it"));
    let out =
        provider().env(COOKIE.0, COOKIE.1).env("PLUGIN_PROTOCOL_VERSIONS", "4,5").output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugin protocol 6"));
    assert!(out.stdout.is_empty(), "no handshake line when refusing");
}

/// Trusts exactly the certificate the plugin announced (as go-plugin does).
#[derive(Debug)]
struct Announced(CertificateDer<'static>);

impl ServerCertVerifier for Announced {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the announced certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(m, c, d, &algs)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(m, c, d, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Connects presenting `identity`; true when the server accepted it (an HTTP/2 exchange
/// gets an answer).
async fn connects(
    addr: &str,
    server: &CertificateDer<'static>,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> bool {
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Announced(server.clone())));
    let mut config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(mut tls) = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await else {
        return false;
    };
    // TLS 1.3 reports a refused client certificate on the first read.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    if tls.write_all(preface).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 9];
    matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
}

#[tokio::test]
async fn it_announces_itself_and_admits_only_terraforms_client_certificate() {
    let (pem, cert, key) = client_identity();
    let mut child = provider()
        .env(COOKIE.0, COOKIE.1)
        .env("PLUGIN_PROTOCOL_VERSIONS", "5,6")
        .env("PLUGIN_CLIENT_CERT", &pem)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("a handshake line");
    let parts: Vec<&str> = line.split('|').collect();
    assert_eq!(parts[..3], ["1", "6", "tcp"], "{line}");
    assert!(parts[3].starts_with("127.0.0.1:"), "{line}");
    assert_eq!(parts[4], "grpc");
    assert!(!parts[5].ends_with('='), "the certificate is base64 without padding: {line}");
    let server =
        CertificateDer::from(base64::engine::general_purpose::STANDARD_NO_PAD.decode(parts[5]).unwrap());
    let (_, parsed) = x509_parser::parse_x509_certificate(server.as_ref()).unwrap();
    let names = parsed.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
    assert!(format!("{names:?}").contains("localhost"), "{names:?}");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let terraform = || Some((cert.clone(), key.clone_key()));
    assert!(connects(parts[3], &server, terraform()).await, "Terraform's certificate must be admitted");
    let (_, other_cert, other_key) = client_identity();
    assert!(
        !connects(parts[3], &server, Some((other_cert, other_key))).await,
        "another certificate must be refused"
    );
    assert!(!connects(parts[3], &server, None).await, "no certificate must be refused");

    // Ctrl-C in Terraform reaches the plugin too; it keeps serving (Terraform stops it).
    let pid = child.id().unwrap().to_string();
    let sent = tokio::process::Command::new("kill").args(["-INT", &pid]).status().await.unwrap();
    assert!(sent.success());
    assert!(connects(parts[3], &server, terraform()).await, "the plugin must still serve after SIGINT");
    assert!(child.try_wait().unwrap().is_none(), "SIGINT must not end the plugin");
    child.kill().await.unwrap();
}
