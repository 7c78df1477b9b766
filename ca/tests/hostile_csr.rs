//! A hostile-CSR corpus: each request is refused, or signed with only the authenticated
//! identity and our own rules — never with anything the request asked for.

mod common;

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, SanType,
};
use trellis_ca::{CsrError, KeyKind, MAX_CSR_DER, MeshCa, SvidTtl, TrustBundle, verify_svid};

enum Expect {
    Signed,
    Refused(fn(&CsrError) -> bool),
}

struct Case {
    name: &'static str,
    csr: Vec<u8>,
    expect: Expect,
}

fn rcgen_csr(params: CertificateParams, alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let kp = KeyPair::generate_for(alg).unwrap();
    params.serialize_request(&kp).unwrap().pem().unwrap().into_bytes()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn openssl_csr(dir: &Path, name: &str, newkey: &[&str], addext: &[&str]) -> Vec<u8> {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=admin/O=evil", "-keyout", &key, "-out", &csr];
    args.extend_from_slice(newkey);
    for ext in addext {
        args.push("-addext");
        args.push(ext);
    }
    openssl_ok(dir, &args);
    fs::read(dir.join(&csr)).unwrap()
}

/// The header length and content length of the DER element at the start of `der`.
fn der_element(der: &[u8]) -> (usize, usize) {
    match der[1] {
        n if n < 0x80 => (2, n as usize),
        n => {
            let k = (n & 0x7f) as usize;
            (2 + k, der[2..2 + k].iter().fold(0, |len, b| len << 8 | *b as usize))
        }
    }
}

/// A DER element with this tag and content.
fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..0x80 => out.push(len as u8),
        0x80..0x100 => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A P-256 CSR whose version field says `encoded` (0 is version 1), signed again by its
/// own key so that only the version is wrong.
fn csr_with_version(encoded: u8) -> Vec<u8> {
    use rcgen::SigningKey;
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let der = CertificateParams::default().serialize_request(&kp).unwrap().der().to_vec();
    let (outer_header, _) = der_element(&der);
    let body = &der[outer_header..];
    let (info_header, info_len) = der_element(body);
    let mut info = body[..info_header + info_len].to_vec();
    let rest = &body[info_header + info_len..];
    let (alg_header, alg_len) = der_element(rest);
    let alg = &rest[..alg_header + alg_len];
    // The info's first element is the version: INTEGER, one byte long.
    assert_eq!(info[info_header..info_header + 2], [0x02, 0x01]);
    info[info_header + 2] = encoded;
    let mut bits = vec![0];
    bits.extend(kp.sign(&info).unwrap());
    der_encode(0x30, &[info.as_slice(), alg, &der_encode(0x03, &bits)].concat())
}

fn corpus(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let signed = |name, csr| Case { name, csr, expect: Expect::Signed };

    let mut p = CertificateParams::default();
    p.subject_alt_names =
        vec![uri("spiffe://a.mesh/ns/prod/sa/admin"), uri("spiffe://a.mesh/ns/prod/sa/web")];
    cases.push(signed("two URI SANs", rcgen_csr(p, &PKCS_ECDSA_P256_SHA256)));

    let mut p = CertificateParams::default();
    p.subject_alt_names = (0..5).map(|i| uri(&format!("spiffe://a.mesh/ns/x/sa/s{i}"))).collect();
    cases.push(signed("five URI SANs", rcgen_csr(p, &PKCS_ECDSA_P256_SHA256)));

    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri("spiffe://b.mesh/ns/prod/sa/web")];
    cases.push(signed("foreign trust domain SAN", rcgen_csr(p, &PKCS_ECDSA_P256_SHA256)));

    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cases.push(signed("cA=true", rcgen_csr(p, &PKCS_ECDSA_P256_SHA256)));

    let mut p = CertificateParams::default();
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::KeyAgreement];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any, ExtendedKeyUsagePurpose::CodeSigning];
    cases.push(signed("keyCertSign, cRLSign, EKU any/codeSigning", rcgen_csr(p, &PKCS_ECDSA_P256_SHA256)));

    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri(&format!("spiffe://a.mesh/{}", "x".repeat(4096)))];
    cases.push(signed("4 KB URI SAN", rcgen_csr(p, &PKCS_ECDSA_P256_SHA256)));

    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![
        SanType::DnsName("evil.example".try_into().unwrap()),
        SanType::IpAddress("10.0.0.1".parse().unwrap()),
        SanType::Rfc822Name("root@evil.example".try_into().unwrap()),
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "spiffe://a.mesh/ns/prod/sa/admin");
    p.distinguished_name = dn;
    cases.push(signed("DNS/IP/email SANs and a subject", rcgen_csr(p, &PKCS_ECDSA_P256_SHA256)));

    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri(&format!("spiffe://a.mesh/{}", "x".repeat(MAX_CSR_DER)))];
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let der = p.serialize_request(&kp).unwrap().der().to_vec();
    cases.push(Case {
        name: "over 8 KiB",
        csr: der,
        expect: Expect::Refused(|e| matches!(e, CsrError::TooLarge { max: MAX_CSR_DER, .. })),
    });

    // Bad signatures: a flipped bit in the signature, and one in the signed body.
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "honest");
    let good = p.serialize_request(&kp).unwrap().der().to_vec();
    let mut bad_sig = good.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    cases.push(Case {
        name: "flipped signature byte",
        csr: bad_sig,
        expect: Expect::Refused(|e| *e == CsrError::BadSignature),
    });
    let mut bad_body = good.clone();
    let at = bad_body.windows(6).position(|w| w == b"honest").unwrap();
    bad_body[at] = b'H';
    cases.push(Case {
        name: "altered request body",
        csr: bad_body,
        expect: Expect::Refused(|e| *e == CsrError::BadSignature),
    });
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"\x05\x00");
    cases.push(Case {
        name: "trailing bytes",
        csr: trailing,
        expect: Expect::Refused(|e| *e == CsrError::TrailingData(2)),
    });

    cases.push(Case {
        name: "P-384 key",
        csr: rcgen_csr(CertificateParams::default(), &PKCS_ECDSA_P384_SHA384),
        expect: Expect::Refused(|e| *e == CsrError::UnsupportedKey(KeyKind::EcdsaP384)),
    });
    cases.push(Case {
        name: "RSA-1024 key",
        csr: openssl_csr(dir, "rsa1024", &["-newkey", "rsa:1024"], &[]),
        expect: Expect::Refused(|e| *e == CsrError::UnsupportedKey(KeyKind::Rsa { bits: 1024 })),
    });
    cases.push(Case {
        name: "RSA-2048 key",
        csr: openssl_csr(dir, "rsa2048", &["-newkey", "rsa:2048"], &[]),
        expect: Expect::Refused(|e| *e == CsrError::UnsupportedKey(KeyKind::Rsa { bits: 2048 })),
    });
    cases.push(Case {
        name: "secp256k1 key",
        csr: openssl_csr(dir, "k1", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"], &[]),
        expect: Expect::Refused(|e| matches!(e, CsrError::UnsupportedKey(KeyKind::EcdsaOther(_)))),
    });
    cases.push(signed(
        "openssl P-256 asking for everything",
        openssl_csr(
            dir,
            "greedy",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            &[
                "basicConstraints=critical,CA:TRUE,pathlen:5",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "extendedKeyUsage=codeSigning,OCSPSigning",
                "subjectAltName=URI:spiffe://b.mesh/ns/x/sa/admin,URI:spiffe://a.mesh/ns/x/sa/admin,DNS:evil.example,IP:10.0.0.1,email:a@evil.example",
                "nameConstraints=permitted;URI:.evil.example",
            ],
        ),
    ));
    cases.push(signed(
        "openssl Ed25519 with a foreign SAN",
        openssl_csr(dir, "ed", &["-newkey", "ed25519"], &["subjectAltName=URI:spiffe://b.mesh/ns/x/sa/y"]),
    ));

    cases.push(signed("version 1 rebuilt by hand (the builder below is sound)", csr_with_version(0)));
    cases.push(Case {
        name: "version 2",
        csr: csr_with_version(1),
        expect: Expect::Refused(|e| matches!(e, CsrError::UnsupportedVersion(2))),
    });
    cases.push(Case {
        name: "garbage",
        csr: b"\x30\x03\x02\x01\x00".to_vec(),
        expect: Expect::Refused(|e| matches!(e, CsrError::Malformed(_))),
    });
    cases.push(Case {
        name: "empty",
        csr: Vec::new(),
        expect: Expect::Refused(|e| matches!(e, CsrError::Malformed(_))),
    });
    cases.push(Case {
        name: "a certificate instead of a CSR",
        csr: b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n".to_vec(),
        expect: Expect::Refused(|e| matches!(e, CsrError::Malformed(_))),
    });
    cases.push(Case {
        name: "huge PEM",
        csr: vec![b'A'; 64 * 1024],
        expect: Expect::Refused(|e| matches!(e, CsrError::TooLarge { .. })),
    });
    cases
}

#[test]
fn hostile_csrs_are_refused_or_tamed() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let mesh = td("a.mesh");
    let root = MeshCa::generate_root(&mesh, 365 * DAY, now).unwrap();
    let inter = root.generate_intermediate(90 * DAY, now).unwrap();
    let bundle = TrustBundle::new(&mesh, [root.root()], 1).unwrap();
    // The identity the caller authenticated as (join token or current SVID), nothing else.
    let authenticated = id("spiffe://a.mesh/ns/prod/sa/web");
    fs::write(dir.path().join("root.pem"), root.root().pem()).unwrap();
    fs::write(dir.path().join("inter.pem"), inter.cert_pem()).unwrap();

    let cases = corpus(dir.path());
    assert!(cases.len() >= 18);
    let mut signed = 0;
    for case in &cases {
        let result = inter.sign_svid(&case.csr, &authenticated, SvidTtl::default(), now);
        match (&case.expect, result) {
            (Expect::Signed, Ok(svid)) => {
                signed += 1;
                assert_conformant_svid(&svid.cert_der, &authenticated, inter.cert_der(), now, DAY);
                let chain = certs_from_pem(&svid.chain_pem);
                assert_eq!(verify_svid(&bundle, &chain, now).unwrap(), authenticated, "{}", case.name);
                let leaf = format!("leaf-{signed}.pem");
                fs::write(dir.path().join(&leaf), &svid.cert_pem).unwrap();
                let out = openssl_ok(
                    dir.path(),
                    &["verify", "-CAfile", "root.pem", "-untrusted", "inter.pem", &leaf],
                );
                assert!(out.contains(": OK"), "{}: {out}", case.name);
                let text = openssl_ok(dir.path(), &["x509", "-in", &leaf, "-text", "-noout"]);
                assert_eq!(text.matches("URI:").count(), 1, "{}: {text}", case.name);
                assert!(text.contains(&format!("URI:{authenticated}")), "{}: {text}", case.name);
                for banned in [
                    "evil",
                    "admin",
                    "CA:TRUE",
                    "Certificate Sign",
                    "Code Signing",
                    "DNS:",
                    "Name Constraints",
                ] {
                    assert!(!text.contains(banned), "{}: {banned:?} leaked into {text}", case.name);
                }
            }
            (Expect::Refused(ok), Err(e)) => {
                assert!(ok(&e), "{}: refused for the wrong reason: {e}", case.name);
                assert!(!e.to_string().is_empty());
            }
            (Expect::Signed, Err(e)) => panic!("{}: expected a tamed certificate, got {e}", case.name),
            (Expect::Refused(_), Ok(svid)) => {
                panic!("{}: expected refusal, got {:?}", case.name, svid.cert_pem)
            }
        }
    }
    assert_eq!(signed, 10);
}

#[test]
fn rsa_refusal_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let root = MeshCa::generate_root(&td("a.mesh"), 30 * DAY, now).unwrap();
    let csr = openssl_csr(dir.path(), "rsa", &["-newkey", "rsa:1024"], &[]);
    let err = root.sign_svid(&csr, &id("spiffe://a.mesh/x"), SvidTtl::default(), now).unwrap_err();
    assert_eq!(err.to_string(), "only ECDSA P-256 and Ed25519 keys are accepted, got RSA-1024");
}
