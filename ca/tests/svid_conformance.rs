//! Issued SVIDs, checked by independent parsers: x509-parser and the `openssl` command.

mod common;

use std::fs;
use std::time::{Duration, SystemTime};

use common::*;
use trellis_ca::{
    CsrError, Kek, KeyRing, MeshCa, SealError, SpiffeId, SvidTtl, TrustBundle, days_until_expiry, owner_aad,
    unseal, verify_svid, workload_key_and_csr,
};
use x509_parser::prelude::{FromDer, X509Certificate};

#[test]
fn leaf_from_intermediate_passes_x509_parser_and_openssl() {
    provider();
    let now = SystemTime::now();
    let mesh = td("prod.acme-payments.mesh");
    let root = MeshCa::generate_root(&mesh, 3650 * DAY, now).unwrap();
    let inter = root.generate_intermediate(365 * DAY, now).unwrap();
    let id = SpiffeId::workload(&mesh, "prod", "web-api").unwrap();
    let (_key, csr) = workload_key_and_csr().unwrap();
    let svid = inter.sign_svid(csr.as_bytes(), &id, SvidTtl::default(), now).unwrap();

    assert_conformant_svid(&svid.cert_der, &id, inter.cert_der(), now, SvidTtl::DEFAULT.get());
    assert_eq!(svid.spiffe_id, id);
    assert_eq!(svid.root_fingerprint, root.root().fingerprint());
    // chain_pem = leaf + intermediate, never the root.
    let chain = certs_from_pem(&svid.chain_pem);
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], svid.cert_der);
    assert_eq!(&chain[1], inter.cert_der());
    assert!(!svid.chain_pem.contains(&root.root().pem()));
    let lifetime = svid.not_after.duration_since(now).unwrap();
    assert!(lifetime <= DAY && lifetime > DAY - Duration::from_secs(2), "{lifetime:?}");

    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("root.pem"), root.root().pem()).unwrap();
    fs::write(dir.path().join("inter.pem"), inter.cert_pem()).unwrap();
    fs::write(dir.path().join("leaf.pem"), &svid.cert_pem).unwrap();
    for purpose in ["sslclient", "sslserver"] {
        let out = openssl_ok(
            dir.path(),
            &["verify", "-purpose", purpose, "-CAfile", "root.pem", "-untrusted", "inter.pem", "leaf.pem"],
        );
        assert!(out.contains("leaf.pem: OK"), "{out}");
    }
    // Without the intermediate the leaf does not verify: the chain really goes through it.
    let out = openssl(dir.path(), &["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert!(!out.status.success());

    let text = openssl_ok(dir.path(), &["x509", "-in", "leaf.pem", "-text", "-noout"]);
    assert_openssl_text_conforms(&text, &id);

    let root_text = openssl_ok(dir.path(), &["x509", "-in", "root.pem", "-text", "-noout"]);
    assert!(root_text.contains("CA:TRUE, pathlen:1"), "{root_text}");
    assert!(root_text.contains("Certificate Sign, CRL Sign"), "{root_text}");
    assert!(root_text.contains("URI:spiffe://prod.acme-payments.mesh\n"), "{root_text}");
    assert!(root_text.contains("OU = prod.acme-payments.mesh"), "{root_text}");
    assert!(root_text.contains("ASN1 OID: prime256v1"), "{root_text}");
    assert!(!root_text.contains("Name Constraints"), "webpki rejects URI name constraints");
    let inter_text = openssl_ok(dir.path(), &["x509", "-in", "inter.pem", "-text", "-noout"]);
    assert!(inter_text.contains("CA:TRUE, pathlen:0"), "{inter_text}");
}

fn assert_openssl_text_conforms(text: &str, id: &SpiffeId) {
    let compact: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(compact.contains("X509v3 Basic Constraints: critical CA:FALSE"), "{text}");
    assert!(compact.contains("X509v3 Key Usage: critical Digital Signature X509v3"), "{text}");
    assert!(
        compact.contains(
            "X509v3 Extended Key Usage: TLS Web Server Authentication, TLS Web Client Authentication"
        )
    );
    assert!(compact.contains(&format!("X509v3 Subject Alternative Name: critical URI:{id} ")), "{text}");
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(!text.contains("DNS:") && !text.contains("IP Address:") && !text.contains("email:"), "{text}");
    assert!(!text.contains("CA:TRUE") && !text.contains("Certificate Sign"), "{text}");
    assert!(
        compact.contains("Public Key Algorithm: id-ecPublicKey") || compact.contains("ED25519"),
        "{text}"
    );
    assert!(compact.contains("Signature Algorithm: ecdsa-with-SHA256"), "{text}");
}

#[test]
fn leaf_straight_from_root_and_ed25519_keys() {
    provider();
    let now = SystemTime::now();
    let mesh = td("a.mesh");
    let root = MeshCa::generate_root(&mesh, 365 * DAY, now).unwrap();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&kp).unwrap();
    let id = id("spiffe://a.mesh/ns/a/sa/edge");
    let ttl = SvidTtl::new(HOUR).unwrap();
    // DER input is accepted as well as PEM.
    let svid = root.sign_svid(csr.der(), &id, ttl, now).unwrap();
    assert_conformant_svid(&svid.cert_der, &id, root.cert_der(), now, HOUR);
    assert_eq!(certs_from_pem(&svid.chain_pem).len(), 1, "a root's leaf chain is the leaf alone");

    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("root.pem"), root.root().pem()).unwrap();
    fs::write(dir.path().join("leaf.pem"), &svid.cert_pem).unwrap();
    let out = openssl_ok(dir.path(), &["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert!(out.contains("leaf.pem: OK"), "{out}");
    let text = openssl_ok(dir.path(), &["x509", "-in", "leaf.pem", "-text", "-noout"]);
    assert!(text.contains("ED25519"), "{text}");
    assert_openssl_text_conforms(&text, &id);

    let bundle = TrustBundle::new(&mesh, [root.root()], 1).unwrap();
    assert_eq!(verify_svid(&bundle, &[svid.cert_der], now).unwrap(), id);
}

#[test]
fn not_after_is_capped_at_the_issuer_and_serials_are_distinct_minimal_and_positive() {
    provider();
    let now = SystemTime::now();
    let mesh = td("a.mesh");
    let root = MeshCa::generate_root(&mesh, 2 * DAY, now).unwrap();
    let id = id("spiffe://a.mesh/ns/a/sa/web");
    let (_, csr) = workload_key_and_csr().unwrap();
    // 7 days asked, the root has 2 left; a day later it has one.
    let later = now + DAY + HOUR;
    let svid = root.sign_svid(csr.as_bytes(), &id, SvidTtl::new(7 * DAY).unwrap(), later).unwrap();
    assert_eq!(svid.not_after, root.not_after());
    assert_conformant_svid(&svid.cert_der, &id, root.cert_der(), later, 7 * DAY);
    let again = root.sign_svid(csr.as_bytes(), &id, SvidTtl::default(), now).unwrap();
    assert_ne!(svid.serial_hex, again.serial_hex);
    assert_eq!(svid.serial_hex.len(), 32);
    // Every serial is a DER-minimal positive 128-bit integer, not only most: a leading zero
    // byte (one draw in 256) once made a 16-byte serial start with 0x00.
    let mut seen = std::collections::HashSet::new();
    // 2,000 issuances: a 1-in-256 fault shows with probability 1 - (255/256)^2000 > 99.9 %.
    for _ in 0..2000 {
        let svid = root.sign_svid(csr.as_bytes(), &id, SvidTtl::default(), now).unwrap();
        let (_, c) = X509Certificate::from_der(&svid.cert_der).unwrap();
        let raw = c.raw_serial();
        match raw.len() {
            16 => assert!(raw[0] != 0 && raw[0] < 0x80, "{}", svid.serial_hex),
            17 => assert!(raw[0] == 0 && raw[1] >= 0x80, "{}", svid.serial_hex),
            n => panic!("serial of {n} bytes: {}", svid.serial_hex),
        }
        // A presented leaf names its issuance record by this same serial.
        let claimed = trellis_ca::claimed_leaf(&svid.cert_der).unwrap();
        assert_eq!(claimed.serial_hex, svid.serial_hex);
        assert!(seen.insert(svid.serial_hex), "serials never repeat");
    }

    // Past the issuer's end nothing is signed.
    let err = root.sign_svid(csr.as_bytes(), &id, SvidTtl::default(), now + 3 * DAY).unwrap_err();
    assert_eq!(err, CsrError::IssuerExpired);
}

#[test]
fn identity_must_be_in_the_ca_trust_domain() {
    let now = SystemTime::now();
    let root = MeshCa::generate_root(&td("a.mesh"), 30 * DAY, now).unwrap();
    let (_, csr) = workload_key_and_csr().unwrap();
    let err = root.sign_svid(csr.as_bytes(), &id("spiffe://b.mesh/ns/b/sa/web"), SvidTtl::default(), now);
    assert!(matches!(err, Err(CsrError::IdentityOutsideTrustDomain { .. })), "{err:?}");
}

#[test]
fn sealed_ca_key_reloads_and_keeps_signing() {
    let now = SystemTime::now();
    let mesh = td("a.mesh");
    let root = MeshCa::generate_root(&mesh, 30 * DAY, now).unwrap();
    let ring = KeyRing::new(Kek::generate("k1").unwrap());
    let aad = owner_aad(&["org-1", "mesh-1", &root.fingerprint()]);
    let sealed = root.seal_key(&ring, &aad).unwrap();
    let der = root.secret_key().expose_pkcs8_der();
    assert!(!sealed.ciphertext.windows(16).any(|w| der.windows(16).any(|d| d == w)), "ciphertext leaks key");

    let key = unseal(&ring, &sealed, &aad).unwrap();
    let loaded = MeshCa::from_parts(&mesh, root.chain_der().to_vec(), key).unwrap();
    let (_, csr) = workload_key_and_csr().unwrap();
    let svid = loaded.sign_svid(csr.as_bytes(), &id("spiffe://a.mesh/x"), SvidTtl::default(), now).unwrap();
    let bundle = TrustBundle::new(&mesh, [root.root()], 1).unwrap();
    assert!(verify_svid(&bundle, &[svid.cert_der], now).is_ok());

    // The same sealed key presented as another mesh's CA key does not open.
    let other = owner_aad(&["org-1", "mesh-2", &root.fingerprint()]);
    assert_eq!(unseal(&ring, &sealed, &other).unwrap_err(), SealError::Open);
}

#[test]
fn expiry_guardrail() {
    let now = SystemTime::now();
    let root = MeshCa::generate_root(&td("a.mesh"), 40 * DAY, now).unwrap();
    let a_bit_later = now + Duration::from_secs(1);
    assert_eq!(root.days_until_expiry(now), 40);
    assert_eq!(root.days_until_expiry(a_bit_later), 39, "whole days, rounded down");
    assert_eq!(days_until_expiry(root.cert_der(), a_bit_later).unwrap(), 39);
    assert_eq!(days_until_expiry(root.cert_der(), now + 41 * DAY).unwrap(), -1);
    assert!(root.ensure_min_days(now, 30).is_ok());
    let err = root.ensure_min_days(a_bit_later, 45).unwrap_err();
    assert_eq!(err.to_string(), "the certificate expires in 39 day(s); at least 45 are required");
    let err = root.ensure_min_days(now + 41 * DAY, 0).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    // An intermediate is held to its root's expiry too.
    let inter = root.generate_intermediate(365 * DAY, now).unwrap();
    assert!(inter.ensure_min_days(now, 45).is_err());
}
