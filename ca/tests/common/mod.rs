//! Shared test support: fixtures, the `openssl` command, and an independent conformance check
//! of issued SVIDs with x509-parser.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use trellis_ca::{SpiffeId, TrustDomain};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_SIG_ECDSA_WITH_SHA256, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::{FromDer, X509Certificate};

pub const DAY: Duration = Duration::from_secs(86_400);
pub const HOUR: Duration = Duration::from_secs(3_600);

/// rustls needs a process-wide provider for some paths; a second install is harmless.
pub fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

pub fn certs_from_pem(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap()
}

/// Runs `openssl` in `dir`. A missing `openssl` fails the test, naming the tool.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("this test needs the `openssl` command (Debian/Ubuntu: apt-get install openssl): {e}")
    })
}

/// Runs `openssl`, requires success, returns stdout and stderr together.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let out = openssl(dir, args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openssl {args:?} failed: {text}");
    text
}

/// What an issued SVID must look like, checked with x509-parser (not the code that wrote it).
pub fn assert_conformant_svid(
    leaf: &[u8],
    expected: &SpiffeId,
    issuer: &[u8],
    now: SystemTime,
    max_ttl: Duration,
) {
    let (rest, c) = X509Certificate::from_der(leaf).expect("leaf parses");
    assert!(rest.is_empty());
    let (_, iss) = X509Certificate::from_der(issuer).expect("issuer parses");
    assert_eq!(c.version().0, 2, "X.509 v3");

    // Exactly the extensions we mean to write, each once.
    let allowed = [
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    ];
    let oids: Vec<_> = c.extensions().iter().map(|e| e.oid.clone()).collect();
    for o in &oids {
        assert!(allowed.contains(o), "unexpected extension {o}");
        assert_eq!(oids.iter().filter(|x| *x == o).count(), 1, "extension {o} twice");
    }

    // Exactly one SAN, a URI, equal to the authenticated identity; empty subject, so critical.
    assert_eq!(c.subject().iter_attributes().count(), 0, "subject must be empty: {}", c.subject());
    let san = c.subject_alternative_name().unwrap().expect("SAN present");
    assert!(san.critical, "SAN must be critical when the subject is empty");
    assert_eq!(san.value.general_names.len(), 1, "exactly one SAN: {:?}", san.value.general_names);
    match &san.value.general_names[0] {
        GeneralName::URI(u) => assert_eq!(*u, expected.as_str()),
        other => panic!("SAN is not a URI: {other:?}"),
    }

    let bc = c.basic_constraints().unwrap().expect("basic constraints present");
    assert!(bc.critical, "basic constraints critical");
    assert!(!bc.value.ca, "cA=false");
    assert_eq!(bc.value.path_len_constraint, None);

    let ku = c.key_usage().unwrap().expect("key usage present");
    assert!(ku.critical, "key usage critical");
    assert!(ku.value.digital_signature());
    assert_eq!(ku.value.flags, 1, "digitalSignature only, got {}", ku.value);

    let eku = c.extended_key_usage().unwrap().expect("EKU present");
    assert!(eku.value.server_auth && eku.value.client_auth, "serverAuth + clientAuth");
    assert!(!eku.value.any && !eku.value.code_signing && !eku.value.email_protection);
    assert!(!eku.value.time_stamping && !eku.value.ocsp_signing && eku.value.other.is_empty());

    // Serial: positive, 128 random bits (16 bytes, or 17 with a leading zero for the sign).
    let serial = c.raw_serial();
    match serial.len() {
        16 => assert!(serial[0] < 0x80 && serial[0] != 0, "minimal positive encoding"),
        17 => assert!(serial[0] == 0 && serial[1] >= 0x80, "leading zero only for the sign"),
        n => panic!("serial of {n} bytes"),
    }
    assert!(c.tbs_certificate.serial.bits() > 64);

    // Validity: starts at or before now, ends no later than the issuer, within the TTL.
    let now_s = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let nb = c.validity().not_before.timestamp();
    let na = c.validity().not_after.timestamp();
    assert!(nb <= now_s, "NotBefore {nb} after now {now_s}");
    assert!(now_s - nb <= 600, "NotBefore backdated by at most the skew");
    assert!(na <= iss.validity().not_after.timestamp(), "NotAfter must not exceed the issuer's");
    assert!(na - now_s <= max_ttl.as_secs() as i64, "lifetime within the TTL");
    assert!(na > now_s);

    // Signed by the issuer, named after it.
    assert_eq!(c.signature_algorithm.algorithm, OID_SIG_ECDSA_WITH_SHA256);
    assert_eq!(c.issuer().as_raw(), iss.subject().as_raw());
    c.verify_signature(Some(iss.public_key())).expect("signed by the issuer");
    for ext in c.extensions() {
        assert!(!matches!(ext.parsed_extension(), ParsedExtension::UnsupportedExtension { .. }));
    }
}
