//! Real rustls mTLS handshakes in memory with the SVID verifiers: isolation between meshes,
//! root rotation (prepare → activate → retire) and identity pinning.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use trellis_ca::{
    MeshCa, PlatformCa, SpiffeId, SvidClientVerifier, SvidServerVerifier, SvidTtl, TrustBundle, VerifyError,
    spiffe_id_of, verify_svid_root, workload_key_and_csr,
};

/// A workload's credentials, obtained the way the agent does: own key, CSR, signed chain.
struct Workload {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn enroll(ca: &MeshCa, id: &SpiffeId) -> Workload {
    let (key, csr) = workload_key_and_csr().unwrap();
    let svid = ca.sign_svid(csr.as_bytes(), id, SvidTtl::default(), SystemTime::now()).unwrap();
    Workload { id: id.clone(), chain: certs_from_pem(&svid.chain_pem), key: key.expose_pkcs8_der().to_vec() }
}

fn key_der(w: &Workload) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(w.key.clone()))
}

fn server_config(me: &Workload, clients: SvidClientVerifier) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(clients))
        .with_single_cert(me.chain.clone(), key_der(me))
        .unwrap();
    Arc::new(cfg)
}

fn client_config(me: &Workload, server: SvidServerVerifier) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(server))
        .with_client_auth_cert(me.chain.clone(), key_der(me))
        .unwrap();
    Arc::new(cfg)
}

#[derive(Debug)]
enum Refused {
    ByServer(rustls::Error),
    ByClient(rustls::Error),
}

/// Moves TLS records between the two ends until the handshake settles, then sends one
/// application message. Returns the identity the server sees (all accepted clients here are
/// in mesh `a.mesh`).
fn handshake(client_cfg: Arc<ClientConfig>, server_cfg: Arc<ServerConfig>) -> Result<SpiffeId, Refused> {
    // The name is required by the API and deliberately ignored by the SVID verifier.
    let name = ServerName::try_from("ignored.invalid").unwrap();
    let mut client = Connection::from(ClientConnection::new(client_cfg, name).unwrap());
    let mut server = Connection::from(ServerConnection::new(server_cfg).unwrap());
    let mut sent_ping = false;
    for _ in 0..20 {
        pump(&mut client, &mut server).map_err(Refused::ByServer)?;
        pump(&mut server, &mut client).map_err(Refused::ByClient)?;
        if !client.is_handshaking() && !server.is_handshaking() {
            if !sent_ping {
                use std::io::Write;
                client.writer().write_all(b"ping").unwrap();
                sent_ping = true;
                continue;
            }
            let mut got = Vec::new();
            use std::io::Read;
            let _ = server.reader().read_to_end(&mut got);
            if got == b"ping" {
                let peer = server.peer_certificates().expect("client presented a certificate");
                // The handshake verified the chain; this reads the identity for authorization.
                return Ok(spiffe_id_of(&peer[0], &td("a.mesh")).unwrap());
            }
        }
    }
    panic!("handshake did not settle");
}

/// Our verdict inside a rustls error, when the verifier gave one.
fn verify_error(e: &rustls::Error) -> Option<&VerifyError> {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => o.0.downcast_ref(),
        _ => None,
    }
}

/// Sends what `from` wants to write into `to` and lets `to` process it.
fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

struct Mesh {
    ca: MeshCa,
    bundle: TrustBundle,
}

fn mesh(name: &str) -> Mesh {
    let ca = MeshCa::generate_root(&td(name), 365 * DAY, SystemTime::now()).unwrap();
    let bundle = TrustBundle::new(&td(name), [ca.root()], 1).unwrap();
    Mesh { ca, bundle }
}

#[test]
fn leaf_of_mesh_a_is_accepted_by_a_and_refused_by_b() {
    provider();
    let a = mesh("a.mesh");
    let b = mesh("b.mesh");
    let a_web = enroll(&a.ca, &id("spiffe://a.mesh/ns/a/sa/web"));
    let a_db = enroll(&a.ca, &id("spiffe://a.mesh/ns/a/sa/db"));
    let b_db = enroll(&b.ca, &id("spiffe://b.mesh/ns/b/sa/db"));

    // A client to an A server: accepted both ways, and the server learns the client's identity.
    let seen = handshake(
        client_config(&a_web, SvidServerVerifier::new(a.bundle.clone(), a_db.id.clone())),
        server_config(&a_db, SvidClientVerifier::new(a.bundle.clone())),
    )
    .unwrap();
    assert_eq!(seen, a_web.id);

    // An A client to a B server: B's client verifier refuses it.
    let err = handshake(
        client_config(&a_web, SvidServerVerifier::new(b.bundle.clone(), b_db.id.clone())),
        server_config(&b_db, SvidClientVerifier::new(b.bundle.clone())),
    )
    .unwrap_err();
    match &err {
        Refused::ByServer(e) => {
            assert!(matches!(verify_error(e), Some(VerifyError::ForeignTrustDomain { .. })), "{e:?}")
        }
        other => panic!("{other:?}"),
    }

    // A rogue CA that claims B's trust domain: the SPIFFE ID looks right, the chain does not.
    let rogue = MeshCa::generate_root(&td("b.mesh"), 365 * DAY, SystemTime::now()).unwrap();
    let impostor = enroll(&rogue, &id("spiffe://b.mesh/ns/b/sa/web"));
    let err = handshake(
        client_config(&impostor, SvidServerVerifier::new(b.bundle.clone(), b_db.id.clone())),
        server_config(&b_db, SvidClientVerifier::new(b.bundle.clone())),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            Refused::ByServer(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        ),
        "{err:?}"
    );

    // A B server to an A client: the client refuses it, even with the identity it expects.
    let err = handshake(
        client_config(&a_web, SvidServerVerifier::new(a.bundle.clone(), b_db.id.clone())),
        server_config(&b_db, SvidClientVerifier::new(a.bundle.clone())),
    )
    .unwrap_err();
    assert!(matches!(err, Refused::ByClient(_)), "{err:?}");
}

#[test]
fn rotation_accepts_both_roots_then_retires_the_old() {
    provider();
    let now = SystemTime::now();
    let mesh_td = td("a.mesh");
    let old = MeshCa::generate_root(&mesh_td, 365 * DAY, now).unwrap();
    let old_inter = old.generate_intermediate(90 * DAY, now).unwrap();
    let leaf_old = enroll(&old_inter, &id("spiffe://a.mesh/ns/a/sa/old-client"));
    let server_old = enroll(&old_inter, &id("spiffe://a.mesh/ns/a/sa/server"));

    // Prepare: the new root is published beside the old one.
    let new = MeshCa::generate_root(&mesh_td, 365 * DAY, now).unwrap();
    let mut bundle = TrustBundle::new(&mesh_td, [old.root()], 1).unwrap();
    assert!(bundle.push(new.root()).unwrap());
    bundle.set_sequence(2);
    // Activate: new leaves come from the new root.
    let leaf_new = enroll(&new, &id("spiffe://a.mesh/ns/a/sa/new-client"));
    let server_new = enroll(&new, &id("spiffe://a.mesh/ns/a/sa/server"));

    for client in [&leaf_old, &leaf_new] {
        for server in [&server_old, &server_new] {
            let seen = handshake(
                client_config(client, SvidServerVerifier::new(bundle.clone(), server.id.clone())),
                server_config(server, SvidClientVerifier::new(bundle.clone())),
            )
            .unwrap_or_else(|e| panic!("{} → {} during rotation: {e:?}", client.id, server.id));
            assert_eq!(seen, client.id);
        }
    }
    // Which root each leaf chains to (the count that decides when retiring is safe).
    let (_, r) = verify_svid_root(&bundle, &leaf_old.chain, now).unwrap();
    assert_eq!(r.fingerprint(), old.root().fingerprint());
    let (_, r) = verify_svid_root(&bundle, &leaf_new.chain, now).unwrap();
    assert_eq!(r.fingerprint(), new.root().fingerprint());

    // Retire: the old root leaves the bundle; its leaves are refused, new ones still work.
    assert!(bundle.remove(old.root().fingerprint()));
    bundle.set_sequence(3);
    let err = handshake(
        client_config(&leaf_old, SvidServerVerifier::new(bundle.clone(), server_new.id.clone())),
        server_config(&server_new, SvidClientVerifier::new(bundle.clone())),
    )
    .unwrap_err();
    assert!(matches!(err, Refused::ByServer(_)), "{err:?}");
    let err = handshake(
        client_config(&leaf_new, SvidServerVerifier::new(bundle.clone(), server_old.id.clone())),
        server_config(&server_old, SvidClientVerifier::new(bundle.clone())),
    )
    .unwrap_err();
    assert!(matches!(err, Refused::ByClient(_)), "{err:?}");
    handshake(
        client_config(&leaf_new, SvidServerVerifier::new(bundle.clone(), server_new.id.clone())),
        server_config(&server_new, SvidClientVerifier::new(bundle.clone())),
    )
    .unwrap();
}

#[test]
fn pinned_identities_refuse_other_valid_certificates() {
    provider();
    let a = mesh("a.mesh");
    let web = enroll(&a.ca, &id("spiffe://a.mesh/ns/a/sa/web"));
    let db = enroll(&a.ca, &id("spiffe://a.mesh/ns/a/sa/db"));
    let cache = enroll(&a.ca, &id("spiffe://a.mesh/ns/a/sa/cache"));

    // The client expects db; cache presents a perfectly valid SVID of the same mesh.
    let err = handshake(
        client_config(&web, SvidServerVerifier::new(a.bundle.clone(), db.id.clone())),
        server_config(&cache, SvidClientVerifier::new(a.bundle.clone())),
    )
    .unwrap_err();
    match &err {
        Refused::ByClient(e) => match verify_error(e) {
            Some(VerifyError::UnexpectedIdentity { expected, got }) => {
                assert_eq!((expected, got), (&db.id, &cache.id))
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }

    // The server admits only web; cache is refused, web is accepted.
    let only_web = || SvidClientVerifier::new(a.bundle.clone()).only([web.id.clone()]);
    let err = handshake(
        client_config(&cache, SvidServerVerifier::new(a.bundle.clone(), db.id.clone())),
        server_config(&db, only_web()),
    )
    .unwrap_err();
    match &err {
        Refused::ByServer(e) => {
            assert_eq!(verify_error(e), Some(&VerifyError::NotAllowed(cache.id.clone())), "{e:?}")
        }
        other => panic!("{other:?}"),
    }
    handshake(
        client_config(&web, SvidServerVerifier::new(a.bundle.clone(), db.id.clone())),
        server_config(&db, only_web()),
    )
    .unwrap();
}

#[test]
fn platform_server_certificates_are_not_svids() {
    provider();
    let a = mesh("a.mesh");
    let web = enroll(&a.ca, &id("spiffe://a.mesh/ns/a/sa/web"));
    let platform = PlatformCa::generate(365 * DAY, SystemTime::now()).unwrap();
    let server = platform.issue_server_cert(&["cp.trellis.test"], &[], 30 * DAY, SystemTime::now()).unwrap();
    let cp = Workload {
        id: id("spiffe://a.mesh/ns/a/sa/db"),
        chain: certs_from_pem(&server.chain_pem),
        key: server.key.expose_pkcs8_der().to_vec(),
    };
    let err = handshake(
        client_config(&web, SvidServerVerifier::new(a.bundle.clone(), cp.id.clone())),
        server_config(&cp, SvidClientVerifier::new(a.bundle.clone())),
    )
    .unwrap_err();
    assert!(matches!(err, Refused::ByClient(_)), "{err:?}");
}
