//! Bring-your-own intermediate: Trellis makes the key and CSR, the tenant signs offline
//! (here with the `openssl` command, and with rcgen for the malformed variants), we check.

mod common;

use std::fs;
use std::time::{Duration, SystemTime};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use trellis_ca::{
    ByoError, CaError, ExpiryError, KeyError, MeshCa, SecretKey, SvidTtl, TrustBundle, TrustDomain,
    accept_intermediate, accept_uploaded_ca, generate_intermediate_csr, verify_svid, workload_key_and_csr,
};

const MIN_DAYS: u32 = 30;

fn tenant_td() -> TrustDomain {
    td("payments.tenant.mesh")
}

/// Signs a leaf with the accepted CA and checks it against a bundle of the tenant's root and
/// with `openssl verify`.
fn assert_issues_verifiable_leaves(ca: &MeshCa, tenant_root_pem: &str, dir: &std::path::Path) {
    let now = SystemTime::now();
    let root = ca.root();
    assert_eq!(root.pem(), certs_pem_normalized(tenant_root_pem));
    let bundle = TrustBundle::new(ca.trust_domain(), [root], 1).unwrap();
    let json = bundle.to_spiffe_json().unwrap();
    assert!(json.contains("x509-svid"));
    let id = id("spiffe://payments.tenant.mesh/ns/pay/sa/api");
    let (_, csr) = workload_key_and_csr().unwrap();
    let svid = ca.sign_svid(csr.as_bytes(), &id, SvidTtl::default(), now).unwrap();
    assert_conformant_svid(&svid.cert_der, &id, ca.cert_der(), now, DAY);
    assert_eq!(verify_svid(&bundle, &certs_from_pem(&svid.chain_pem), now).unwrap(), id);
    fs::write(dir.join("tenant-root.pem"), tenant_root_pem).unwrap();
    fs::write(dir.join("chain.pem"), &svid.chain_pem).unwrap();
    fs::write(dir.join("leaf.pem"), &svid.cert_pem).unwrap();
    let out =
        openssl_ok(dir, &["verify", "-CAfile", "tenant-root.pem", "-untrusted", "chain.pem", "leaf.pem"]);
    assert!(out.contains("leaf.pem: OK"), "{out}");
}

fn certs_pem_normalized(pem: &str) -> String {
    let certs = certs_from_pem(pem);
    assert_eq!(certs.len(), 1);
    let root = trellis_ca::RootCert::parse(&tenant_td(), certs[0].clone()).unwrap();
    root.pem()
}

fn openssl_tenant_signs(key_alg: &[&str]) {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let now = SystemTime::now();
    let (key, csr_pem) = generate_intermediate_csr(&tenant_td(), now).unwrap();
    fs::write(d.join("inter.csr"), &csr_pem).unwrap();

    // What the CSR asks for, as openssl reads it; its self-signature verifies.
    let req = openssl_ok(d, &["req", "-in", "inter.csr", "-noout", "-text", "-verify"]);
    assert!(req.contains("CA:TRUE, pathlen:0"), "{req}");
    assert!(req.contains("URI:spiffe://payments.tenant.mesh"), "{req}");
    assert!(req.contains("Certificate Sign, CRL Sign"), "{req}");
    assert!(req.to_lowercase().contains("verify ok") || req.contains("self-signature verify OK"), "{req}");

    // The tenant's offline root, and its signature on our CSR.
    let mut args = vec!["req", "-x509", "-nodes", "-keyout", "root.key", "-out", "root.pem", "-days", "3650"];
    args.extend_from_slice(key_alg);
    args.extend_from_slice(&[
        "-subj",
        "/O=Tenant/CN=Tenant Offline Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl_ok(d, &args);
    fs::write(
        d.join("ext.cnf"),
        "[v3]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\nsubjectAltName=URI:spiffe://payments.tenant.mesh\n",
    )
    .unwrap();
    openssl_ok(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-set_serial",
            "0x1234abcd",
            "-days",
            "365",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "v3",
            "-out",
            "inter.pem",
        ],
    );
    let root_pem = fs::read_to_string(d.join("root.pem")).unwrap();
    let upload = format!("{}{}", fs::read_to_string(d.join("inter.pem")).unwrap(), root_pem);

    // Uploaded after the tenant signed (openssl starts validity at its own "now").
    let now = SystemTime::now();
    let ca = accept_intermediate(&key, &upload, &tenant_td(), now, MIN_DAYS).unwrap();
    assert!(!ca.is_root());
    assert_eq!(ca.chain_der().len(), 2);
    assert!(ca.days_until_expiry(now) >= 364);
    assert!(ca.ensure_min_days(now, MIN_DAYS).is_ok());
    assert_issues_verifiable_leaves(&ca, &root_pem, d);
}

#[test]
fn tenant_signs_with_openssl_p256_root() {
    openssl_tenant_signs(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
}

#[test]
fn tenant_signs_with_openssl_rsa_root() {
    // Enterprise roots are often RSA; only the keys Trellis holds are restricted.
    openssl_tenant_signs(&["-newkey", "rsa:3072"]);
}

/// A tenant root made with rcgen, to produce the malformed variants precisely.
struct Tenant {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn tenant_root(path_len: Option<u8>, days: u64) -> Tenant {
    let kp = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "Tenant Root");
    p.is_ca = IsCa::Ca(path_len.map_or(BasicConstraints::Unconstrained, BasicConstraints::Constrained));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days as i64);
    let cert = p.self_signed(&kp).unwrap();
    Tenant { pem: cert.pem(), issuer: Issuer::new(p, kp) }
}

/// The tenant signs our CSR; `tweak` changes what a careless or hostile tenant would.
fn tenant_signs(t: &Tenant, csr_pem: &str, tweak: impl FnOnce(&mut CertificateParams)) -> String {
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "Tenant-signed intermediate");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI("spiffe://payments.tenant.mesh".try_into().unwrap())];
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(365);
    p.use_authority_key_identifier_extension = true;
    tweak(&mut p);
    csr.params = p;
    csr.signed_by(&t.issuer).unwrap().pem()
}

#[test]
fn rcgen_tenant_happy_path_and_each_refusal() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let tdm = tenant_td();
    let (key, csr) = generate_intermediate_csr(&tdm, now).unwrap();
    let root = tenant_root(None, 3650);
    let accept = |chain: String| accept_intermediate(&key, &chain, &tdm, now, MIN_DAYS);

    let ok = accept(tenant_signs(&root, &csr, |_| {}) + &root.pem).unwrap();
    assert_issues_verifiable_leaves(&ok, &root.pem, dir.path());

    // Not a CA.
    let err = accept(tenant_signs(&root, &csr, |p| p.is_ca = IsCa::ExplicitNoCa) + &root.pem).unwrap_err();
    assert_eq!(err, ByoError::NotCa { index: 0 });
    // A tenant root without a key usage extension still anchors the chain.
    let kp = KeyPair::generate().unwrap();
    let mut legacy = CertificateParams::default();
    legacy.distinguished_name.push(DnType::CommonName, "Legacy Root");
    legacy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let legacy_pem = legacy.self_signed(&kp).unwrap().pem();
    let legacy = Tenant { pem: legacy_pem, issuer: Issuer::new(legacy, kp) };
    assert!(accept(tenant_signs(&legacy, &csr, |_| {}) + &legacy.pem).is_ok());
    // Our intermediate must say keyCertSign outright.
    let err = accept(tenant_signs(&root, &csr, |p| p.key_usages = vec![]) + &root.pem).unwrap_err();
    assert_eq!(err, ByoError::NoKeyCertSign { index: 0 });
    // A CA that may not sign certificates.
    let err = accept(
        tenant_signs(&root, &csr, |p| p.key_usages = vec![KeyUsagePurpose::DigitalSignature]) + &root.pem,
    )
    .unwrap_err();
    assert_eq!(err, ByoError::NoKeyCertSign { index: 0 });
    // Signed for another key: the tenant signed a different CSR.
    let (_, other_csr) = generate_intermediate_csr(&tdm, now).unwrap();
    let err = accept(tenant_signs(&root, &other_csr, |_| {}) + &root.pem).unwrap_err();
    assert_eq!(err, ByoError::KeyMismatch);
    // Expired.
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    let expired = tenant_signs(&root, &csr, |p| {
        p.not_before = past;
        p.not_after = past + time::Duration::days(399);
    });
    let err = accept(expired + &root.pem).unwrap_err();
    assert!(
        matches!(err, ByoError::Validity { index: 0, source: ExpiryError::Expired { days_ago: 0 | 1 } }),
        "{err}"
    );
    // Not valid yet.
    let future = tenant_signs(&root, &csr, |p| {
        p.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(2)
    });
    let err = accept(future + &root.pem).unwrap_err();
    assert!(matches!(err, ByoError::Validity { index: 0, source: ExpiryError::NotYetValid { .. } }), "{err}");
    // Starting a couple of minutes from now (the tenant's clock runs ahead) is tolerated.
    let ahead = tenant_signs(&root, &csr, |p| {
        p.not_before = time::OffsetDateTime::now_utc() + time::Duration::minutes(2)
    });
    let ca = accept(ahead + &root.pem).unwrap();
    assert!(ca.ensure_min_days(now, MIN_DAYS).is_ok());
    // Too few days left.
    let short = tenant_signs(&root, &csr, |p| {
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10)
    });
    let err = accept(short + &root.pem).unwrap_err();
    assert!(
        matches!(
            err,
            ByoError::Validity { index: 0, source: ExpiryError::TooFewDays { left: 9 | 10, min: 30 } }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at least 30 are required"), "{err}");
    // The root itself expires too soon.
    let short_root = tenant_root(None, 20);
    let err = accept(tenant_signs(&short_root, &csr, |_| {}) + &short_root.pem).unwrap_err();
    assert!(matches!(err, ByoError::Validity { index: 1, .. }), "{err}");
    // The chain does not lead to the uploaded root.
    let other_root = tenant_root(None, 3650);
    let err = accept(tenant_signs(&root, &csr, |_| {}) + &other_root.pem).unwrap_err();
    assert_eq!(err, ByoError::BrokenChain { index: 0 });
    // No root uploaded.
    let err = accept(tenant_signs(&root, &csr, |_| {})).unwrap_err();
    assert_eq!(err, ByoError::NoRoot);
    // Another trust domain's SPIFFE ID on the intermediate.
    let foreign = tenant_signs(&root, &csr, |p| {
        p.subject_alt_names = vec![SanType::URI("spiffe://other.mesh".try_into().unwrap())]
    });
    let err = accept(foreign + &root.pem).unwrap_err();
    assert!(matches!(err, ByoError::WrongTrustDomain { .. }), "{err}");
    // A root whose path length leaves no room for the tenant's own middle CA.
    let tight = tenant_root(Some(0), 3650);
    let mid_key = KeyPair::generate().unwrap();
    let mut mid = CertificateParams::default();
    mid.distinguished_name.push(DnType::CommonName, "Tenant Issuing CA");
    mid.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    mid.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    mid.use_authority_key_identifier_extension = true;
    let mid_cert = mid.signed_by(&mid_key, &tight.issuer).unwrap();
    let mid_tenant = Tenant { pem: mid_cert.pem(), issuer: Issuer::new(mid, mid_key) };
    let chain = tenant_signs(&mid_tenant, &csr, |_| {}) + &mid_tenant.pem + &tight.pem;
    let err = accept(chain).unwrap_err();
    assert_eq!(err, ByoError::PathLenTooShort { index: 2, path_len: 0, needed: 2 });
    // An intermediate restricted to code signing: our checks pass, the probe leaf does not.
    let code_only =
        tenant_signs(&root, &csr, |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning]);
    let err = accept(code_only + &root.pem).unwrap_err();
    assert!(matches!(err, ByoError::Probe(_)), "{err}");
    // Not PEM at all, or nothing in it.
    assert!(matches!(
        accept("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".into()),
        Err(ByoError::Pem(_))
    ));
    assert_eq!(accept(String::new()).unwrap_err(), ByoError::EmptyChain);
    assert!(matches!(accept("x".repeat(70_000)), Err(ByoError::TooLarge { .. })));
}

#[test]
fn uploaded_ca_certificate_and_key() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let now = SystemTime::now();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mk = |name: &str, newkey: &[&str]| {
        let key = format!("{name}.key");
        let pem = format!("{name}.pem");
        let mut args = vec!["req", "-x509", "-nodes", "-keyout", &key, "-out", &pem, "-days", "730"];
        args.extend_from_slice(newkey);
        args.extend_from_slice(&[
            "-subj",
            "/CN=Tenant CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:1",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl_ok(d, &args);
        (fs::read_to_string(d.join(&pem)).unwrap(), fs::read_to_string(d.join(&key)).unwrap())
    };
    let (cert, key) = mk("ca", &ec);
    assert!(key.contains("BEGIN PRIVATE KEY"), "openssl 3 writes PKCS#8");
    let ca = accept_uploaded_ca(&cert, &key, &tenant_td(), now, MIN_DAYS).unwrap();
    assert!(ca.is_root());
    assert_issues_verifiable_leaves(&ca, &cert, d);

    let (_, other_key) = mk("other", &ec);
    assert_eq!(
        accept_uploaded_ca(&cert, &other_key, &tenant_td(), now, MIN_DAYS).unwrap_err(),
        ByoError::KeyMismatch
    );
    let (rsa_cert, rsa_key) = mk("rsa", &["-newkey", "rsa:2048"]);
    let err = accept_uploaded_ca(&rsa_cert, &rsa_key, &tenant_td(), now, MIN_DAYS).unwrap_err();
    assert!(matches!(err, ByoError::Key(KeyError::Unusable(_))), "{err}");
    let err = accept_uploaded_ca(&cert, "not a key", &tenant_td(), now, MIN_DAYS).unwrap_err();
    assert_eq!(err, ByoError::Key(KeyError::NotPkcs8Pem));
    let err =
        accept_uploaded_ca(&cert, &key, &tenant_td(), now + Duration::from_secs(720 * 86_400), MIN_DAYS)
            .unwrap_err();
    assert!(matches!(err, ByoError::Validity { index: 0, .. }), "{err}");
    // The key can be sealed like any other CA key.
    let ring = trellis_ca::KeyRing::new(trellis_ca::Kek::generate("k").unwrap());
    let sealed = ca.seal_key(&ring, b"org/mesh/ca").unwrap();
    let back: SecretKey = trellis_ca::unseal(&ring, &sealed, b"org/mesh/ca").unwrap();
    assert!(MeshCa::from_parts(&tenant_td(), ca.chain_der().to_vec(), back).is_ok());
    let _ = CaError::EmptyChain;
}
