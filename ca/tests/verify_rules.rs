//! Our own SPIFFE checks after webpki's path validation: leaves that chain correctly to the
//! bundle but break an SVID rule are refused, each with its reason.

mod common;

use std::time::SystemTime;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::CertificateDer;
use trellis_ca::{IdError, MeshCa, TrustBundle, VerifyError, verify_svid};

/// Signs a leaf with the mesh CA's own key, bypassing `sign_svid`'s rules, as a compromised or
/// buggy issuer could.
fn forge(ca: &MeshCa, tweak: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
    let ca_key = KeyPair::try_from(ca.secret_key().expose_pkcs8_der()).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca.cert_der(), ca_key).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI("spiffe://a.mesh/ns/a/sa/web".try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::hours(1);
    p.use_authority_key_identifier_extension = true;
    tweak(&mut p);
    let key = KeyPair::generate().unwrap();
    p.signed_by(&key, &issuer).unwrap().der().clone()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn spiffe_rules_after_path_validation() {
    provider();
    let now = SystemTime::now();
    let ca = MeshCa::generate_root(&td("a.mesh"), 30 * DAY, now).unwrap();
    let bundle = TrustBundle::new(&td("a.mesh"), [ca.root()], 1).unwrap();
    let check = |leaf: CertificateDer<'static>| verify_svid(&bundle, &[leaf], now);

    assert_eq!(check(forge(&ca, |_| {})).unwrap(), id("spiffe://a.mesh/ns/a/sa/web"), "the baseline passes");

    let two = forge(&ca, |p| p.subject_alt_names.push(uri("spiffe://a.mesh/ns/a/sa/admin")));
    assert_eq!(check(two), Err(VerifyError::MultipleUriSans { count: 2 }));

    let none = forge(&ca, |p| p.subject_alt_names = vec![SanType::DnsName("web.a.mesh".try_into().unwrap())]);
    assert_eq!(check(none), Err(VerifyError::NoUriSan));

    let foreign = forge(&ca, |p| p.subject_alt_names = vec![uri("spiffe://b.mesh/ns/b/sa/web")]);
    assert!(matches!(check(foreign), Err(VerifyError::ForeignTrustDomain { .. })));

    let rootish = forge(&ca, |p| p.subject_alt_names = vec![uri("spiffe://a.mesh")]);
    assert_eq!(check(rootish), Err(VerifyError::NotSpiffe(IdError::MissingPath)));

    let https = forge(&ca, |p| p.subject_alt_names = vec![uri("https://a.mesh/ns/a/sa/web")]);
    assert_eq!(check(https), Err(VerifyError::NotSpiffe(IdError::BadScheme)));

    let dotdot = forge(&ca, |p| p.subject_alt_names = vec![uri("spiffe://a.mesh/ns/../sa/admin")]);
    assert_eq!(check(dotdot), Err(VerifyError::NotSpiffe(IdError::DotSegment)));

    let is_ca = forge(&ca, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    });
    assert_eq!(check(is_ca), Err(VerifyError::LeafIsCa));

    let signs = forge(&ca, |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign));
    assert_eq!(check(signs), Err(VerifyError::LeafCanSign));
    let crl = forge(&ca, |p| p.key_usages.push(KeyUsagePurpose::CrlSign));
    assert_eq!(check(crl), Err(VerifyError::LeafCanSign));

    // webpki's part: the clock, the EKU and the signature.
    let expired = forge(&ca, |p| {
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(3);
        p.not_after = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    });
    assert!(matches!(check(expired), Err(VerifyError::Path(webpki::Error::CertExpired { .. }))));
    let server_only = forge(&ca, |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
    assert!(matches!(check(server_only), Err(VerifyError::Path(_))), "verify_svid wants clientAuth");
    let mut tampered = forge(&ca, |_| {}).to_vec();
    let at = tampered.windows(3).position(|w| w == b"web").unwrap();
    tampered[at] = b'W';
    assert!(matches!(check(CertificateDer::from(tampered)), Err(VerifyError::Path(_))));

    assert_eq!(verify_svid(&bundle, &[], now), Err(VerifyError::EmptyChain));
    let empty = TrustBundle::new(&td("a.mesh"), [], 1).unwrap();
    assert!(matches!(verify_svid(&empty, &[forge(&ca, |_| {})], now), Err(VerifyError::EmptyBundle(_))));
}
