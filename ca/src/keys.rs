//! Private keys (held redacted), public key kinds, and the CSR a workload sends.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use crate::pem;

/// A private key as PKCS#8 DER. Its bytes never appear in `Debug` output and are wiped on drop.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<Vec<u8>>);

impl SecretKey {
    /// Wraps PKCS#8 DER bytes (not checked here; loading the key checks them).
    pub fn from_pkcs8_der(der: Vec<u8>) -> Self {
        Self(Zeroizing::new(der))
    }

    /// Reads a `PRIVATE KEY` (PKCS#8) PEM block.
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, KeyError> {
        let der = pem::decode_one(text, "PRIVATE KEY").ok_or(KeyError::NotPkcs8Pem)?;
        Ok(Self(Zeroizing::new(der)))
    }

    /// The PKCS#8 DER bytes: for sealing or for handing to a TLS stack, never for logging.
    pub fn expose_pkcs8_der(&self) -> &[u8] {
        &self.0
    }

    /// The key as a `PRIVATE KEY` PEM block (for the agent's own key file).
    pub fn expose_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode("PRIVATE KEY", &self.0))
    }

    pub(crate) fn from_key_pair(kp: &KeyPair) -> Self {
        Self(Zeroizing::new(kp.serialize_der()))
    }

    /// Loads the key for signing; only ECDSA P-256/P-384 and Ed25519 keys are usable here.
    pub(crate) fn key_pair(&self) -> Result<KeyPair, KeyError> {
        let kp = KeyPair::try_from(self.0.as_slice()).map_err(|e| KeyError::Unusable(e.to_string()))?;
        let alg = kp.algorithm();
        if alg == &PKCS_ECDSA_P256_SHA256
            || alg == &rcgen::PKCS_ECDSA_P384_SHA384
            || alg == &rcgen::PKCS_ED25519
        {
            Ok(kp)
        } else {
            Err(KeyError::Unusable("only ECDSA P-256/P-384 and Ed25519 keys are accepted, not RSA".into()))
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey([redacted, {} bytes])", self.0.len())
    }
}

/// Why a private key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("expected one \"PRIVATE KEY\" (PKCS#8) PEM block")]
    NotPkcs8Pem,
    #[error("unusable private key: {0}")]
    Unusable(String),
}

/// The kind of a public key, as read from a SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    /// An elliptic curve other than P-256/P-384 (the curve's OID, if named).
    EcdsaOther(String),
    Ed25519,
    Rsa {
        bits: usize,
    },
    /// Anything else (the algorithm OID).
    Other(String),
}

impl KeyKind {
    /// Classifies a parsed SubjectPublicKeyInfo.
    pub(crate) fn of(spki: &SubjectPublicKeyInfo<'_>) -> KeyKind {
        let alg = &spki.algorithm.algorithm;
        if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 => KeyKind::EcdsaP256,
                Some(c) if c == OID_NIST_EC_P384 => KeyKind::EcdsaP384,
                Some(c) => KeyKind::EcdsaOther(c.to_id_string()),
                None => KeyKind::EcdsaOther("unnamed curve".into()),
            }
        } else if *alg == OID_SIG_ED25519 {
            KeyKind::Ed25519
        } else if *alg == OID_PKCS1_RSAENCRYPTION {
            let bits = match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
                _ => 0,
            };
            KeyKind::Rsa { bits }
        } else {
            KeyKind::Other(alg.to_id_string())
        }
    }
}

fn modulus_bits(modulus: &[u8]) -> usize {
    let trimmed: &[u8] = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    trimmed.len() * 8 - trimmed[0].leading_zeros() as usize
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::EcdsaOther(curve) => write!(f, "ECDSA on curve {curve}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::Other(oid) => write!(f, "key algorithm {oid}"),
        }
    }
}

/// Generates a fresh ECDSA P-256 key pair.
pub(crate) fn generate_p256() -> Result<KeyPair, KeyError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| KeyError::Unusable(e.to_string()))
}

/// A workload's fresh key and the CSR to send for it (what the agent does at start-up).
///
/// The CSR carries no names: the CA takes the identity from the caller's credentials, not from
/// the request, so there is nothing useful to put in it.
pub fn workload_key_and_csr() -> Result<(SecretKey, String), KeyError> {
    let kp = generate_p256()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&kp).map_err(|e| KeyError::Unusable(e.to_string()))?;
    let pem = csr.pem().map_err(|e| KeyError::Unusable(e.to_string()))?;
    Ok((SecretKey::from_key_pair(&kp), pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let (key, _) = workload_key_and_csr().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"), "{shown}");
        let hex: String = key.expose_pkcs8_der().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex[hex.len() - 16..]));
        assert!(!shown.contains(&format!("{:?}", &key.expose_pkcs8_der()[..8])));
    }

    #[test]
    fn modulus_bits_ignores_leading_zeros() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x00]), 0);
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let (key, _) = workload_key_and_csr().unwrap();
        let back = SecretKey::from_pkcs8_pem(&key.expose_pkcs8_pem()).unwrap();
        assert_eq!(back.expose_pkcs8_der(), key.expose_pkcs8_der());
        assert!(back.key_pair().is_ok());
        assert_eq!(SecretKey::from_pkcs8_pem("nope").unwrap_err(), KeyError::NotPkcs8Pem);
    }
}
