//! What an SVID issuance takes (a bounded lifetime) and what it returns.

use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;

use crate::SpiffeId;

/// The lifetime of an X.509-SVID: 1 hour to 7 days, 24 hours unless the mesh says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvidTtl(Duration);

impl SvidTtl {
    /// Shortest accepted lifetime: rotation at half-life must stay far from the clock skew.
    pub const MIN: Duration = Duration::from_secs(60 * 60);
    /// Longest accepted lifetime: a stolen key is useful for at most this long.
    pub const MAX: Duration = Duration::from_secs(7 * 24 * 60 * 60);
    /// The lifetime when a mesh configures none.
    pub const DEFAULT: SvidTtl = SvidTtl(Duration::from_secs(24 * 60 * 60));

    /// Checks the bounds.
    pub fn new(ttl: Duration) -> Result<Self, TtlError> {
        if ttl < Self::MIN || ttl > Self::MAX {
            return Err(TtlError { secs: ttl.as_secs() });
        }
        Ok(Self(ttl))
    }

    /// The lifetime.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Default for SvidTtl {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// An SVID lifetime out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate lifetime must be between 1 hour and 7 days, got {secs} s")]
pub struct TtlError {
    pub secs: u64,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert_eq!(SvidTtl::default().get(), Duration::from_secs(86_400));
        assert!(SvidTtl::new(Duration::from_secs(3_600)).is_ok());
        assert!(SvidTtl::new(Duration::from_secs(7 * 86_400)).is_ok());
        assert_eq!(SvidTtl::new(Duration::from_secs(3_599)), Err(TtlError { secs: 3_599 }));
        assert_eq!(SvidTtl::new(Duration::from_secs(7 * 86_400 + 1)), Err(TtlError { secs: 604_801 }));
    }
}
