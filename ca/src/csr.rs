//! Reading a workload's CSR: bounded size, verified signature, an accepted key type. Nothing
//! else in the request is read: names, key usages and CA flags come from the CA's own rules.

use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SignatureAlgorithm};
use ring::signature::{self, UnparsedPublicKey};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;

use crate::keys::KeyKind;
use crate::{SpiffeId, TrustDomain, pem};

/// Largest CSR accepted, DER-encoded. A P-256 CSR is about 300 bytes.
pub const MAX_CSR_DER: usize = 8 * 1024;
/// Largest CSR accepted as received (PEM is a third larger than DER).
pub const MAX_CSR_INPUT: usize = 12 * 1024;

/// Why a CSR was refused or could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is {len} bytes; at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    #[error("not a PKCS#10 CSR (DER, or PEM \"CERTIFICATE REQUEST\"): {0}")]
    Malformed(String),
    #[error("{0} bytes follow the CSR")]
    TrailingData(usize),
    #[error("PKCS#10 version {0} is not defined; only version 1 (encoded 0) is accepted")]
    UnsupportedVersion(u32),
    #[error("only ECDSA P-256 and Ed25519 keys are accepted, got {0}")]
    UnsupportedKey(KeyKind),
    #[error("the CSR's public key is malformed")]
    MalformedKey,
    #[error("the CSR is signed with an algorithm that does not fit its key ({0})")]
    UnsupportedSignatureAlgorithm(String),
    #[error("the CSR's signature does not verify")]
    BadSignature,
    #[error("identity {id} is not in this CA's trust domain {trust_domain}")]
    IdentityOutsideTrustDomain { id: SpiffeId, trust_domain: TrustDomain },
    #[error("the issuing CA has expired; rotate it")]
    IssuerExpired,
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A public key whose holder proved possession by signing the CSR.
#[derive(Debug, Clone)]
pub(crate) struct ProvenKey {
    alg: &'static SignatureAlgorithm,
    raw: Vec<u8>,
}

impl PublicKeyData for ProvenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Parses and authenticates a CSR given as DER or PEM, returning only its public key.
pub(crate) fn prove_key(input: &[u8]) -> Result<ProvenKey, CsrError> {
    if input.len() > MAX_CSR_INPUT {
        return Err(CsrError::TooLarge { len: input.len(), max: MAX_CSR_INPUT });
    }
    let der_owned;
    let der: &[u8] = if input.starts_with(b"-----BEGIN") || input.first().is_some_and(u8::is_ascii_whitespace)
    {
        let text = std::str::from_utf8(input).map_err(|_| CsrError::Malformed("PEM is not UTF-8".into()))?;
        der_owned = pem::decode_one(text, "CERTIFICATE REQUEST")
            .ok_or_else(|| CsrError::Malformed("no \"CERTIFICATE REQUEST\" PEM block".into()))?;
        &der_owned
    } else {
        input
    };
    if der.len() > MAX_CSR_DER {
        return Err(CsrError::TooLarge { len: der.len(), max: MAX_CSR_DER });
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData(rest.len()));
    }

    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(CsrError::UnsupportedVersion(info.version.0 + 1));
    }
    let spki = &info.subject_pki;
    let kind = KeyKind::of(spki);
    let raw = spki.subject_public_key.data.as_ref();
    let sig_alg = &csr.signature_algorithm.algorithm;
    // The key kind picks the verification algorithm; the CSR's claimed algorithm must fit it.
    let (rcgen_alg, verify_alg): (_, &dyn signature::VerificationAlgorithm) = match kind {
        KeyKind::EcdsaP256 => {
            if raw.len() != 65 || raw[0] != 0x04 {
                return Err(CsrError::MalformedKey);
            }
            if *sig_alg == OID_SIG_ECDSA_WITH_SHA256 {
                (&PKCS_ECDSA_P256_SHA256, &signature::ECDSA_P256_SHA256_ASN1)
            } else if *sig_alg == OID_SIG_ECDSA_WITH_SHA384 {
                (&PKCS_ECDSA_P256_SHA256, &signature::ECDSA_P256_SHA384_ASN1)
            } else {
                return Err(CsrError::UnsupportedSignatureAlgorithm(sig_alg.to_id_string()));
            }
        }
        KeyKind::Ed25519 => {
            if raw.len() != 32 {
                return Err(CsrError::MalformedKey);
            }
            if *sig_alg != OID_SIG_ED25519 {
                return Err(CsrError::UnsupportedSignatureAlgorithm(sig_alg.to_id_string()));
            }
            (&PKCS_ED25519, &signature::ED25519)
        }
        other => return Err(CsrError::UnsupportedKey(other)),
    };
    UnparsedPublicKey::new(verify_alg, raw)
        .verify(info.raw, csr.signature_value.data.as_ref())
        .map_err(|_| CsrError::BadSignature)?;
    Ok(ProvenKey { alg: rcgen_alg, raw: raw.to_vec() })
}
