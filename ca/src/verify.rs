//! Verifying X.509-SVIDs: webpki path validation to the bundle's roots, then the SPIFFE rules
//! that webpki does not know (it has no URI-SAN API), checked here with x509-parser.

use std::sync::LazyLock;
use std::time::SystemTime;

use rustls::crypto::WebPkiSupportedAlgorithms;

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm};
use webpki::{EndEntityCert, KeyUsage};

use crate::bundle::{RootCert, TrustBundle};
use crate::cert::{self, CertError};
use crate::{IdError, SpiffeId, TrustDomain, validity};

/// Why a certificate chain is not a valid SVID for a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no certificate presented")]
    EmptyChain,
    #[error("the bundle for {0} holds no root")]
    EmptyBundle(TrustDomain),
    #[error("certificate path validation failed: {0}")]
    Path(webpki::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("the certificate carries no URI SAN, so no SPIFFE ID")]
    NoUriSan,
    #[error("the certificate carries {count} URI SANs; an SVID has exactly one")]
    MultipleUriSans { count: usize },
    #[error("the URI SAN is not a workload SPIFFE ID: {0}")]
    NotSpiffe(IdError),
    #[error("{id} is outside trust domain {expected}")]
    ForeignTrustDomain { id: SpiffeId, expected: TrustDomain },
    #[error("the leaf is a CA certificate (cA=true); an SVID must be a leaf")]
    LeafIsCa,
    #[error("the leaf may sign certificates or CRLs (keyCertSign/cRLSign); an SVID must not")]
    LeafCanSign,
    #[error("{0} is not among the identities allowed here")]
    NotAllowed(SpiffeId),
    #[error("expected peer {expected}, got {got}")]
    UnexpectedIdentity { expected: SpiffeId, got: SpiffeId },
}

/// Which side of a TLS connection a certificate authenticates (picks the required EKU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// A TLS client: the certificate needs EKU clientAuth.
    Client,
    /// A TLS server: the certificate needs EKU serverAuth.
    Server,
}

/// The ring provider's signature algorithms, the same as rustls uses; built once because a
/// provider allocates.
pub(crate) static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> =
    LazyLock::new(|| rustls::crypto::ring::default_provider().signature_verification_algorithms);

/// The signature algorithms accepted in chains.
fn algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    ALGORITHMS.all
}

/// Verifies `chain` (leaf first, then intermediates) as an SVID presented by a client of the
/// bundle's trust domain, and returns its SPIFFE ID.
pub fn verify_svid(
    bundle: &TrustBundle,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<SpiffeId, VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::EmptyChain)?;
    verify_chain(bundle, leaf, intermediates, validity::unix_time(now), PeerRole::Client).map(|(id, _)| id)
}

/// Like [`verify_svid`], and also tells which of the bundle's roots the chain leads to: what
/// root rotation needs to count the live leaves of each root.
pub fn verify_svid_root<'b>(
    bundle: &'b TrustBundle,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(SpiffeId, &'b RootCert), VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::EmptyChain)?;
    let (id, i) = verify_chain(bundle, leaf, intermediates, validity::unix_time(now), PeerRole::Client)?;
    Ok((id, &bundle.roots()[i]))
}

/// Path validation then the SPIFFE leaf rules; returns the ID and the index of the root used.
pub(crate) fn verify_chain(
    bundle: &TrustBundle,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: rustls::pki_types::UnixTime,
    role: PeerRole,
) -> Result<(SpiffeId, usize), VerifyError> {
    if bundle.anchors().is_empty() {
        return Err(VerifyError::EmptyBundle(bundle.trust_domain().clone()));
    }
    // The SPIFFE checks come first: they are cheap and give the clearer error for a
    // certificate that is not an SVID at all.
    let id = spiffe_id_of(leaf, bundle.trust_domain())?;
    let ee = EndEntityCert::try_from(leaf).map_err(VerifyError::Path)?;
    let usage = match role {
        PeerRole::Client => KeyUsage::client_auth(),
        PeerRole::Server => KeyUsage::server_auth(),
    };
    let path = ee
        .verify_for_usage(algorithms(), bundle.anchors(), intermediates, now, usage, None, None)
        .map_err(VerifyError::Path)?;
    let anchor = path.anchor();
    let index = bundle
        .anchors()
        .iter()
        .position(|a| {
            a.subject == anchor.subject && a.subject_public_key_info == anchor.subject_public_key_info
        })
        .unwrap_or(0);
    Ok((id, index))
}

/// What a leaf certificate claims, unverified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedLeaf {
    /// Its one URI SAN.
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Its serial number in lowercase hex without leading zeros, as [`crate::IssuedSvid`]
    /// names it: the key of its issuance record.
    pub serial_hex: String,
}

/// What a leaf claims, unverified: its SPIFFE ID (for finding the bundle to verify it
/// against), its validity window (for how long a cache of verified peers may keep it) and
/// its serial (for finding its issuance record).
pub fn claimed_leaf(leaf: &CertificateDer<'_>) -> Result<ClaimedLeaf, VerifyError> {
    let c = cert::parse(leaf)?;
    let (from, to) = cert::validity_secs(&c);
    // DER integers carry a leading zero byte when the top bit is set; the serial is the
    // magnitude.
    let raw = c.raw_serial();
    let magnitude = &raw[raw.iter().position(|b| *b != 0).unwrap_or(raw.len())..];
    Ok(ClaimedLeaf {
        id: claimed(&c)?,
        not_before: validity::from_unix(from),
        not_after: validity::from_unix(to),
        serial_hex: cert::hex(magnitude),
    })
}

fn claimed(c: &x509_parser::certificate::X509Certificate<'_>) -> Result<SpiffeId, VerifyError> {
    let uris = cert::uri_sans(c)?;
    let uri = match uris.as_slice() {
        [] => return Err(VerifyError::NoUriSan),
        [one] => *one,
        many => return Err(VerifyError::MultipleUriSans { count: many.len() }),
    };
    SpiffeId::parse(uri).map_err(VerifyError::NotSpiffe)
}

/// The SPIFFE leaf rules (X509-SVID §5.2) on a certificate, without path validation: exactly
/// one URI SAN, a workload SPIFFE ID in `td`, not a CA, no certificate or CRL signing.
pub fn spiffe_id_of(leaf: &CertificateDer<'_>, td: &TrustDomain) -> Result<SpiffeId, VerifyError> {
    let c = cert::parse(leaf)?;
    let id = claimed(&c)?;
    if !id.is_in(td) {
        return Err(VerifyError::ForeignTrustDomain { id, expected: td.clone() });
    }
    if cert::ca_path_len(&c)?.is_some() {
        return Err(VerifyError::LeafIsCa);
    }
    let ku = c.key_usage().map_err(|e| CertError::Malformed(e.to_string()))?;
    if ku.is_some_and(|k| k.value.key_cert_sign() || k.value.crl_sign()) {
        return Err(VerifyError::LeafCanSign);
    }
    Ok(id)
}
