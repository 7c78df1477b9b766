//! The platform CA: issues the control plane's own TLS server certificates (DNS/IP names, EKU
//! serverAuth). It is a different type from [`crate::MeshCa`] and its root is no
//! [`crate::RootCert`], so it can never be placed in a mesh's trust bundle, and what it signs
//! carries no SPIFFE ID, so it never passes as an SVID.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use crate::cert;
use crate::keys::{self, SecretKey};
use crate::mesh_ca::{CaError, MAX_CA_VALIDITY, MIN_CA_VALIDITY, random_serial};
use crate::pem;
use crate::seal::{self, KeyRing, SealError, SealedKey};
use crate::validity;

/// Longest lifetime of a control-plane server certificate.
pub const MAX_SERVER_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// Why a server certificate could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("a server certificate needs at least one DNS name or IP address")]
    NoNames,
    #[error("{0:?} is not a valid DNS name")]
    BadDnsName(String),
    #[error("server certificate lifetime must be between 1 hour and 90 days, got {secs} s")]
    BadTtl { secs: u64 },
    #[error("the platform CA has expired; rotate it")]
    Expired,
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// A control-plane TLS server certificate with its freshly generated key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The leaf certificate.
    pub cert_der: CertificateDer<'static>,
    /// The leaf then the platform root, as PEM (what the server presents).
    pub chain_pem: String,
    /// The server's private key.
    pub key: SecretKey,
    /// End of validity; never later than the platform CA's.
    pub not_after: SystemTime,
}

/// The self-signed CA for the control plane's server certificates.
pub struct PlatformCa {
    cert: CertificateDer<'static>,
    key: SecretKey,
    issuer: Issuer<'static, KeyPair>,
    not_after: i64,
}

impl PlatformCa {
    /// Generates a new ECDSA P-256 platform root (pathLen 0: it signs server leaves only).
    pub fn generate(validity: Duration, now: SystemTime) -> Result<PlatformCa, CaError> {
        if !(MIN_CA_VALIDITY..=MAX_CA_VALIDITY).contains(&validity) {
            return Err(CaError::BadValidity { secs: validity.as_secs() });
        }
        let key = keys::generate_p256()?;
        let serial = random_serial();
        let now_s = validity::unix_secs(now);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trellis");
        dn.push(DnType::CommonName, format!("Trellis platform CA {}", cert::hex(&serial[..4])));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = validity::to_offset(now_s - validity::skew_secs());
        params.not_after = validity::to_offset(now_s + i64::try_from(validity.as_secs()).unwrap_or(i64::MAX));
        let der = params.self_signed(&key).map_err(|e| CaError::Generate(e.to_string()))?.der().clone();
        Self::from_parts(der, SecretKey::from_key_pair(&key))
    }

    /// Loads the platform CA from its certificate and key (after unsealing).
    pub fn from_parts(cert_der: CertificateDer<'static>, key: SecretKey) -> Result<PlatformCa, CaError> {
        let c = cert::parse(&cert_der).map_err(|source| CaError::Cert { index: 0, source })?;
        if cert::ca_path_len(&c).map_err(|source| CaError::Cert { index: 0, source })?.is_none() {
            return Err(CaError::NotCa { index: 0 });
        }
        let key_pair = key.key_pair()?;
        if key_pair.public_key_raw() != c.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }
        let (_, not_after) = cert::validity_secs(&c);
        drop(c);
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key_pair).map_err(|e| CaError::Generate(e.to_string()))?;
        Ok(PlatformCa { cert: cert_der, key, issuer, not_after })
    }

    /// Issues a server certificate for these names with a new P-256 key.
    pub fn issue_server_cert(
        &self,
        dns_names: &[&str],
        ips: &[IpAddr],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<ServerCert, PlatformError> {
        if dns_names.is_empty() && ips.is_empty() {
            return Err(PlatformError::NoNames);
        }
        if !(Duration::from_secs(3600)..=MAX_SERVER_CERT_TTL).contains(&ttl) {
            return Err(PlatformError::BadTtl { secs: ttl.as_secs() });
        }
        let mut sans = Vec::new();
        for name in dns_names {
            // rustls is the judge of what a client will match against.
            rustls::pki_types::DnsName::try_from(*name)
                .map_err(|_| PlatformError::BadDnsName((*name).to_owned()))?;
            let ia5 = (*name).try_into().map_err(|_| PlatformError::BadDnsName((*name).to_owned()))?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));

        let now_s = validity::unix_secs(now);
        let not_after = (now_s + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)).min(self.not_after);
        if not_after <= now_s {
            return Err(PlatformError::Expired);
        }
        let key = keys::generate_p256().map_err(CaError::from)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trellis");
        dn.push(DnType::CommonName, "Trellis control plane");
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.not_before = validity::to_offset(now_s - validity::skew_secs());
        params.not_after = validity::to_offset(not_after);
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer).map_err(|e| CaError::Generate(e.to_string()))?;
        let cert_der = leaf.der().clone();
        let chain_pem = format!("{}{}", pem::encode("CERTIFICATE", &cert_der), self.root_pem());
        Ok(ServerCert {
            cert_der,
            chain_pem,
            key: SecretKey::from_key_pair(&key),
            not_after: validity::from_unix(not_after),
        })
    }

    /// The platform root certificate, which agents pin.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The platform root as PEM.
    pub fn root_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert)
    }

    /// End of the platform CA's validity.
    pub fn not_after(&self) -> SystemTime {
        validity::from_unix(self.not_after)
    }

    /// Whole days until the platform CA expires (negative once expired).
    pub fn days_until_expiry(&self, now: SystemTime) -> i64 {
        validity::days_between(validity::unix_secs(now), self.not_after)
    }

    /// Seals the platform CA's private key under the key ring's current KEK, bound to `aad`.
    pub fn seal_key(&self, keyring: &KeyRing, aad: &[u8]) -> Result<SealedKey, SealError> {
        seal::seal(keyring, self.key.expose_pkcs8_der(), aad)
    }
}

impl fmt::Debug for PlatformCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformCa")
            .field("fingerprint", &cert::fingerprint(&self.cert))
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RootCert, TrustBundle, TrustDomain, VerifyError, verify_svid};

    #[test]
    fn platform_root_is_no_mesh_root() {
        let now = SystemTime::now();
        let p = PlatformCa::generate(Duration::from_secs(365 * 86_400), now).unwrap();
        let server =
            p.issue_server_cert(&["cp.trellis.test"], &[], Duration::from_secs(86_400), now).unwrap();
        // Even labelled with a trust domain by hand, a platform leaf is no SVID: no URI SAN.
        let td = TrustDomain::parse("a.mesh").unwrap();
        let root = RootCert::parse(&td, p.root_der().clone()).unwrap();
        let bundle = TrustBundle::new(&td, [root], 1).unwrap();
        assert_eq!(verify_svid(&bundle, &[server.cert_der], now), Err(VerifyError::NoUriSan));
    }

    #[test]
    fn names_and_bounds() {
        let now = SystemTime::now();
        let p = PlatformCa::generate(Duration::from_secs(2 * 86_400), now).unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(p.issue_server_cert(&[], &[], day, now).unwrap_err(), PlatformError::NoNames);
        assert_eq!(
            p.issue_server_cert(&["bad name"], &[], day, now).unwrap_err(),
            PlatformError::BadDnsName("bad name".into())
        );
        assert!(p.issue_server_cert(&["a.test"], &[], Duration::from_secs(60), now).is_err());
        let c = p.issue_server_cert(&["a.test"], &["127.0.0.1".parse().unwrap()], 30 * day, now).unwrap();
        assert_eq!(c.not_after, p.not_after(), "capped at the CA's NotAfter");
        assert!(format!("{p:?}").contains("redacted"));
    }
}
