//! A mesh's certificate authority: its root or intermediate, and SVID signing from CSRs.

use std::fmt;
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use crate::bundle::RootCert;
use crate::cert::{self, CertError};
use crate::csr::{self, CsrError};
use crate::keys::{self, KeyError, SecretKey};
use crate::seal::{self, KeyRing, SealError, SealedKey};
use crate::validity::{self, ExpiryError};
use crate::{IssuedSvid, SpiffeId, SvidTtl, TrustDomain, pem};

/// Shortest lifetime accepted for a root or intermediate.
pub const MIN_CA_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest lifetime accepted for a root or intermediate (30 years).
pub const MAX_CA_VALIDITY: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// Why a CA could not be created or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("CA lifetime must be between 1 day and 30 years, got {secs} s")]
    BadValidity { secs: u64 },
    #[error("the chain is empty")]
    EmptyChain,
    #[error("certificate {index} of the chain: {source}")]
    Cert { index: usize, source: CertError },
    #[error("certificate {index} of the chain is not a CA (basic constraints cA is not true)")]
    NotCa { index: usize },
    #[error("certificate {index} of the chain may not sign certificates (no keyCertSign key usage)")]
    NoKeyCertSign { index: usize },
    #[error("certificate {index} of the chain is not signed by the certificate after it")]
    BrokenChain { index: usize },
    #[error("the last certificate of the chain is not a self-signed root")]
    NoRoot,
    #[error("this CA's path length constraint allows no intermediate below it")]
    PathLenExhausted,
    #[error("the CA certificate names trust domain {found}, not {expected}")]
    WrongTrustDomain { expected: TrustDomain, found: String },
    #[error("the private key does not belong to the CA certificate")]
    KeyMismatch,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Expiry(#[from] ExpiryError),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// The signing CA of one trust domain: a self-signed root, or an intermediate below one.
pub struct MeshCa {
    trust_domain: TrustDomain,
    /// This CA's certificate first, then every certificate above it; the last is the root.
    chain: Vec<CertificateDer<'static>>,
    key: SecretKey,
    issuer: Issuer<'static, KeyPair>,
    not_before: i64,
    not_after: i64,
    path_len: Option<u32>,
    root_fingerprint: String,
}

impl MeshCa {
    /// Generates a new ECDSA P-256 root for `td`; it may sign leaves and one intermediate level.
    pub fn generate_root(td: &TrustDomain, validity: Duration, now: SystemTime) -> Result<MeshCa, CaError> {
        let key = keys::generate_p256()?;
        let params = ca_params(td, "root", validity, now, 1, None)?;
        let der = params.self_signed(&key).map_err(gen_err)?.der().clone();
        Self::from_parts(td, vec![der], SecretKey::from_key_pair(&key))
    }

    /// Generates a new intermediate signed by this CA (pathLen 0: it signs leaves only).
    /// Its NotAfter is capped at this CA's.
    pub fn generate_intermediate(&self, validity: Duration, now: SystemTime) -> Result<MeshCa, CaError> {
        if self.path_len == Some(0) {
            return Err(CaError::PathLenExhausted);
        }
        let key = keys::generate_p256()?;
        let params = ca_params(&self.trust_domain, "intermediate", validity, now, 0, Some(self.not_after))?;
        let der = params.signed_by(&key, &self.issuer).map_err(gen_err)?.der().clone();
        let mut chain = vec![der];
        chain.extend(self.chain.iter().cloned());
        Self::from_parts(&self.trust_domain, chain, SecretKey::from_key_pair(&key))
    }

    /// Loads a CA from its chain (this CA first, root last) and its private key, checking that
    /// they fit together: each certificate is a CA signed by the next, the last is self-signed,
    /// the key matches the first, and any SPIFFE ID on the first names `td`. Expiry is not
    /// checked here, so that an expired CA can still be loaded to report on it.
    pub fn from_parts(
        td: &TrustDomain,
        chain: Vec<CertificateDer<'static>>,
        key: SecretKey,
    ) -> Result<MeshCa, CaError> {
        let first = chain.first().ok_or(CaError::EmptyChain)?;
        let parsed = chain
            .iter()
            .enumerate()
            .map(|(index, der)| cert::parse(der).map_err(|source| CaError::Cert { index, source }))
            .collect::<Result<Vec<_>, _>>()?;
        for (index, c) in parsed.iter().enumerate() {
            let cert_err = |source| CaError::Cert { index, source };
            if cert::ca_path_len(c).map_err(cert_err)?.is_none() {
                return Err(CaError::NotCa { index });
            }
            if !cert::can_sign_certs(c, index).map_err(cert_err)? {
                return Err(CaError::NoKeyCertSign { index });
            }
            let signer = parsed.get(index + 1).unwrap_or(c);
            if c.verify_signature(Some(signer.public_key())).is_err() {
                return Err(if index + 1 == parsed.len() {
                    CaError::NoRoot
                } else {
                    CaError::BrokenChain { index }
                });
            }
        }
        let me = &parsed[0];
        for uri in cert::uri_sans(me).map_err(|source| CaError::Cert { index: 0, source })? {
            if uri.starts_with("spiffe://") && uri != td.id_uri() {
                return Err(CaError::WrongTrustDomain { expected: td.clone(), found: uri.to_owned() });
            }
        }
        let key_pair = key.key_pair()?;
        if key_pair.public_key_raw() != me.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }
        let (not_before, not_after) = cert::validity_secs(me);
        let path_len = cert::ca_path_len(me).ok().flatten().flatten();
        let issuer = Issuer::from_ca_cert_der(first, key_pair).map_err(gen_err)?;
        drop(parsed);
        let root_fingerprint = cert::fingerprint(&chain[chain.len() - 1]);
        Ok(MeshCa {
            trust_domain: td.clone(),
            chain,
            key,
            issuer,
            not_before,
            not_after,
            path_len,
            root_fingerprint,
        })
    }

    /// Signs an X.509-SVID for `id` from a workload's CSR.
    ///
    /// Only the CSR's public key is used, after its signature is verified: the certificate
    /// carries exactly one URI SAN (`id`), `cA=false`, key usage digitalSignature, EKU
    /// serverAuth + clientAuth, a random 128-bit serial, and a NotAfter no later than this CA's.
    pub fn sign_svid(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        ttl: SvidTtl,
        now: SystemTime,
    ) -> Result<IssuedSvid, CsrError> {
        if !id.is_in(&self.trust_domain) {
            return Err(CsrError::IdentityOutsideTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let key = csr::prove_key(csr)?;
        self.sign_leaf(&key, id, ttl, now)
    }

    /// Signs a leaf for a public key whose possession was already proven.
    pub(crate) fn sign_leaf(
        &self,
        key: &impl PublicKeyData,
        id: &SpiffeId,
        ttl: SvidTtl,
        now: SystemTime,
    ) -> Result<IssuedSvid, CsrError> {
        let now_s = validity::unix_secs(now);
        let ttl_s = i64::try_from(ttl.get().as_secs()).unwrap_or(i64::MAX);
        let not_after = now_s.saturating_add(ttl_s).min(self.not_after);
        if not_after <= now_s {
            return Err(CsrError::IssuerExpired);
        }
        let not_before = (now_s - validity::skew_secs()).max(self.not_before);

        let mut params = CertificateParams::default();
        // No subject: the identity is the URI SAN, which rcgen then marks critical (RFC 5280
        // §4.1.2.6, X509-SVID §3.1).
        params.distinguished_name = DistinguishedName::new();
        let uri = id.as_str().try_into().map_err(|e: rcgen::Error| CsrError::Signing(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = validity::to_offset(not_before);
        params.not_after = validity::to_offset(not_after);
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer).map_err(|e| CsrError::Signing(e.to_string()))?;

        let cert_der = leaf.der().clone();
        let cert_pem = pem::encode("CERTIFICATE", &cert_der);
        let intermediates = &self.chain[..self.chain.len() - 1];
        let chain_pem = format!("{cert_pem}{}", pem::encode_certs(intermediates));
        Ok(IssuedSvid {
            spiffe_id: id.clone(),
            cert_der,
            cert_pem,
            chain_pem,
            serial_hex: cert::hex(&serial),
            not_before: validity::from_unix(not_before),
            not_after: validity::from_unix(not_after),
            root_fingerprint: self.root_fingerprint.clone(),
        })
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// This CA's own certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// This CA's own certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.chain[0])
    }

    /// This CA's certificate, then every one above it, root last.
    pub fn chain_der(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The chain as PEM, this CA first, root last.
    pub fn chain_pem(&self) -> String {
        pem::encode_certs(&self.chain)
    }

    /// The root this CA chains to (itself when it is a root), to publish in the trust bundle.
    pub fn root(&self) -> RootCert {
        let root = self.chain.last().unwrap_or(&self.chain[0]);
        RootCert::from_checked(self.trust_domain.clone(), root.clone())
    }

    /// Whether this CA is a self-signed root.
    pub fn is_root(&self) -> bool {
        self.chain.len() == 1
    }

    /// SHA-256 fingerprint of this CA's certificate.
    pub fn fingerprint(&self) -> String {
        cert::fingerprint(&self.chain[0])
    }

    /// Start of this CA's validity.
    pub fn not_before(&self) -> SystemTime {
        validity::from_unix(self.not_before)
    }

    /// End of this CA's validity; no leaf it signs outlives it.
    pub fn not_after(&self) -> SystemTime {
        validity::from_unix(self.not_after)
    }

    /// Whole days until this CA expires (negative once expired).
    pub fn days_until_expiry(&self, now: SystemTime) -> i64 {
        validity::days_between(validity::unix_secs(now), self.not_after)
    }

    /// Refuses this CA, and every CA above it, when any is not valid at `now` or has fewer
    /// than `min_days` left: the guardrail for switching to it.
    pub fn ensure_min_days(&self, now: SystemTime, min_days: u32) -> Result<(), ExpiryError> {
        for der in &self.chain {
            validity::ensure_min_days(der, now, min_days)?;
        }
        Ok(())
    }

    /// The CA's private key: for sealing only.
    pub fn secret_key(&self) -> &SecretKey {
        &self.key
    }

    /// Seals the CA's private key under the key ring's current KEK, bound to `aad`.
    pub fn seal_key(&self, keyring: &KeyRing, aad: &[u8]) -> Result<SealedKey, SealError> {
        seal::seal(keyring, self.key.expose_pkcs8_der(), aad)
    }
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish()
    }
}

fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

/// 16 random bytes: a positive 128-bit serial (the encoder adds a zero byte when the top bit
/// is set, so no entropy is lost to the sign). The first byte is never zero: DER keeps
/// integers minimal, and a leading zero byte would either shrink the serial or (before a
/// byte below 0x80) be a non-minimal encoding; one draw in 256 is made again.
pub(crate) fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    loop {
        rand::rng().fill_bytes(&mut serial);
        if serial[0] != 0 {
            return serial;
        }
    }
}

/// The parameters of a CA certificate for `td`. `cap` bounds NotAfter by the parent's.
pub(crate) fn ca_params(
    td: &TrustDomain,
    role: &str,
    validity: Duration,
    now: SystemTime,
    path_len: u8,
    cap: Option<i64>,
) -> Result<CertificateParams, CaError> {
    if !(MIN_CA_VALIDITY..=MAX_CA_VALIDITY).contains(&validity) {
        return Err(CaError::BadValidity { secs: validity.as_secs() });
    }
    let now_s = validity::unix_secs(now);
    let mut not_after = now_s + i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
    if let Some(cap) = cap {
        not_after = not_after.min(cap);
    }
    let serial = random_serial();
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_subject(td, role, &serial);
    params.subject_alt_names = vec![SanType::URI(
        td.id_uri().try_into().map_err(|e: rcgen::Error| CaError::Generate(e.to_string()))?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = validity::to_offset(now_s - validity::skew_secs());
    params.not_after = validity::to_offset(not_after);
    params.use_authority_key_identifier_extension = cap.is_some();
    Ok(params)
}

/// `O=Trellis, OU=<trust domain>, CN=Trellis <role> <id>`: the id tells an old root from its
/// successor at a glance; the OU is left out when the trust domain is longer than X.520 allows.
pub(crate) fn ca_subject(td: &TrustDomain, role: &str, serial: &[u8]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Trellis");
    if td.as_str().len() <= 64 {
        dn.push(DnType::OrganizationalUnitName, td.as_str());
    }
    dn.push(DnType::CommonName, format!("Trellis {role} {}", cert::hex(&serial[..4])));
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("prod.acme").unwrap()
    }

    #[test]
    fn validity_bounds() {
        let now = SystemTime::now();
        let e = MeshCa::generate_root(&td(), Duration::from_secs(3600), now).unwrap_err();
        assert_eq!(e, CaError::BadValidity { secs: 3600 });
        assert!(MeshCa::generate_root(&td(), MAX_CA_VALIDITY + Duration::from_secs(1), now).is_err());
    }

    #[test]
    fn intermediate_is_capped_and_cannot_nest() {
        let now = SystemTime::now();
        let root = MeshCa::generate_root(&td(), Duration::from_secs(10 * 86_400), now).unwrap();
        let inter = root.generate_intermediate(Duration::from_secs(100 * 86_400), now).unwrap();
        assert_eq!(inter.not_after(), root.not_after());
        assert_eq!(inter.chain_der().len(), 2);
        assert_eq!(inter.root().fingerprint(), root.fingerprint());
        assert_eq!(
            inter.generate_intermediate(Duration::from_secs(86_400), now).unwrap_err(),
            CaError::PathLenExhausted
        );
    }

    #[test]
    fn from_parts_checks_key_and_trust_domain() {
        let now = SystemTime::now();
        let a = MeshCa::generate_root(&td(), Duration::from_secs(86_400), now).unwrap();
        let b = MeshCa::generate_root(&td(), Duration::from_secs(86_400), now).unwrap();
        let err = MeshCa::from_parts(&td(), a.chain_der().to_vec(), b.secret_key().clone()).unwrap_err();
        assert_eq!(err, CaError::KeyMismatch);
        let other = TrustDomain::parse("other").unwrap();
        let err = MeshCa::from_parts(&other, a.chain_der().to_vec(), a.secret_key().clone()).unwrap_err();
        assert!(matches!(err, CaError::WrongTrustDomain { .. }), "{err}");
        assert!(MeshCa::from_parts(&td(), a.chain_der().to_vec(), a.secret_key().clone()).is_ok());
        // A chain whose root is not the signer of the intermediate is refused.
        let inter = a.generate_intermediate(Duration::from_secs(86_400), now).unwrap();
        let forged = vec![inter.cert_der().clone(), b.cert_der().clone()];
        let err = MeshCa::from_parts(&td(), forged, inter.secret_key().clone()).unwrap_err();
        assert_eq!(err, CaError::BrokenChain { index: 0 });
    }

    #[test]
    fn debug_shows_no_key() {
        let ca = MeshCa::generate_root(&td(), Duration::from_secs(86_400), SystemTime::now()).unwrap();
        let shown = format!("{ca:?}");
        assert!(shown.contains("redacted") && shown.contains("prod.acme"), "{shown}");
    }
}
