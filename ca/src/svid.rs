//! What an SVID issuance returns (its bounded lifetime, [`crate::SvidTtl`], is a `model` type).

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;

use crate::SpiffeId;

/// A freshly signed X.509-SVID.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The identity in the certificate's only URI SAN.
    pub spiffe_id: SpiffeId,
    /// The leaf certificate.
    pub cert_der: CertificateDer<'static>,
    /// The leaf certificate as PEM.
    pub cert_pem: String,
    /// Leaf then intermediates (never the root), as PEM: what a workload presents in TLS.
    pub chain_pem: String,
    /// Lowercase hex of the serial number, for audit records.
    pub serial_hex: String,
    /// Start of validity (already set back by the clock skew).
    pub not_before: SystemTime,
    /// End of validity; never later than the issuer's.
    pub not_after: SystemTime,
    /// SHA-256 fingerprint of the root this leaf chains to, for rotation bookkeeping.
    pub root_fingerprint: String,
}
