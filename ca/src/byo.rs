//! Bring-your-own intermediate: Trellis makes the key and a CSR, the tenant signs it offline
//! with its own root and uploads the chain, and we check everything before using it. An
//! uploaded CA certificate with its private key is accepted too.

use std::time::SystemTime;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose, SanType};
use rustls::pki_types::CertificateDer;

use crate::bundle::{BundleError, RootCert};
use crate::cert::{self, CertError};
use crate::keys::{self, KeyError, SecretKey};
use crate::mesh_ca::{CaError, random_serial};
use crate::validity::{self, ExpiryError};
use crate::verify::{PeerRole, VerifyError, verify_chain};
use crate::{MeshCa, SpiffeId, SvidTtl, TrustBundle, TrustDomain, pem};

/// Most certificates accepted in an uploaded chain (intermediate, its parents, root).
pub const MAX_CHAIN_LEN: usize = 8;
/// Largest uploaded chain, as PEM text.
pub const MAX_CHAIN_PEM: usize = 64 * 1024;

/// Why an uploaded intermediate or CA was refused. `index` counts from the uploaded CA (0) up
/// to the root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByoError {
    #[error("the chain is {len} bytes; at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    #[error("the chain is not PEM: {0}")]
    Pem(String),
    #[error("the upload holds no certificate")]
    EmptyChain,
    #[error("the chain has {len} certificates; at most {max} are accepted")]
    ChainTooLong { len: usize, max: usize },
    #[error("certificate {index}: {source}")]
    Cert { index: usize, source: CertError },
    #[error("the last certificate is not a self-signed root: upload the chain up to your root")]
    NoRoot,
    #[error("the certificate's public key is not the key of the CSR Trellis generated")]
    KeyMismatch,
    #[error("certificate {index} is not a CA (basic constraints cA must be true)")]
    NotCa { index: usize },
    #[error("certificate {index} may not sign certificates (key usage keyCertSign is missing)")]
    NoKeyCertSign { index: usize },
    #[error(
        "certificate {index} has pathLenConstraint {path_len}, but {needed} intermediate(s) sit below it"
    )]
    PathLenTooShort { index: usize, path_len: u32, needed: usize },
    #[error("certificate {index} is not signed by certificate {}", index + 1)]
    BrokenChain { index: usize },
    #[error("certificate {index}: {source}")]
    Validity { index: usize, source: ExpiryError },
    #[error("the CA names {found}, not trust domain {expected}")]
    WrongTrustDomain { expected: TrustDomain, found: String },
    #[error("a test leaf signed by this CA does not verify to the uploaded root: {0}")]
    Probe(VerifyError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// A new intermediate key and its CSR (PEM) for the tenant to sign.
///
/// The CSR asks for `cA=true`, pathLen 0, keyCertSign + cRLSign and the trust domain's SPIFFE
/// ID; the tenant's root decides what it actually signs, and [`accept_intermediate`] checks it.
/// Seal the key until the signed chain comes back.
pub fn generate_intermediate_csr(td: &TrustDomain, now: SystemTime) -> Result<(SecretKey, String), CaError> {
    let key = keys::generate_p256()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Trellis");
    if td.as_str().len() <= 64 {
        dn.push(DnType::OrganizationalUnitName, td.as_str());
    }
    // The date and a random tag tell the tenant which request this is when several are pending.
    let date = validity::to_offset(validity::unix_secs(now)).date();
    let tag = cert::hex(&random_serial()[..3]);
    dn.push(DnType::CommonName, format!("Trellis intermediate {date} {tag}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        td.id_uri().try_into().map_err(|e: rcgen::Error| CaError::Generate(e.to_string()))?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let csr = params.serialize_request(&key).map_err(|e| CaError::Generate(e.to_string()))?;
    let pem = csr.pem().map_err(|e| CaError::Generate(e.to_string()))?;
    Ok((SecretKey::from_key_pair(&key), pem))
}

/// Checks a tenant-signed chain (intermediate first, root last) for the key from
/// [`generate_intermediate_csr`], and returns the CA to sign with. Checked: the intermediate
/// holds the CSR's key, every certificate is a CA allowed to sign, path lengths fit, each is
/// signed by the next up to a self-signed root, each is valid now with at least `min_days`
/// left, and a test leaf it signs verifies to the root.
pub fn accept_intermediate(
    csr_key: &SecretKey,
    chain_pem: &str,
    td: &TrustDomain,
    now: SystemTime,
    min_days: u32,
) -> Result<MeshCa, ByoError> {
    accept(csr_key.clone(), chain_pem, td, now, min_days)
}

/// Checks an uploaded CA certificate chain (CA first, root last; a lone self-signed root is
/// fine) and its PKCS#8 PEM private key, as [`accept_intermediate`] does.
pub fn accept_uploaded_ca(
    chain_pem: &str,
    key_pem: &str,
    td: &TrustDomain,
    now: SystemTime,
    min_days: u32,
) -> Result<MeshCa, ByoError> {
    let key = SecretKey::from_pkcs8_pem(key_pem)?;
    accept(key, chain_pem, td, now, min_days)
}

fn accept(
    key: SecretKey,
    chain_pem: &str,
    td: &TrustDomain,
    now: SystemTime,
    min_days: u32,
) -> Result<MeshCa, ByoError> {
    if chain_pem.len() > MAX_CHAIN_PEM {
        return Err(ByoError::TooLarge { len: chain_pem.len(), max: MAX_CHAIN_PEM });
    }
    let chain: Vec<CertificateDer<'static>> = pem::decode_certs(chain_pem).map_err(ByoError::Pem)?;
    if chain.is_empty() {
        return Err(ByoError::EmptyChain);
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(ByoError::ChainTooLong { len: chain.len(), max: MAX_CHAIN_LEN });
    }
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(index, der)| cert::parse(der).map_err(|source| ByoError::Cert { index, source }))
        .collect::<Result<Vec<_>, _>>()?;

    let key_pair = key.key_pair()?;
    if key_pair.public_key_raw() != parsed[0].public_key().subject_public_key.data.as_ref() {
        return Err(ByoError::KeyMismatch);
    }
    let root = &parsed[parsed.len() - 1];
    if root.subject().as_raw() != root.issuer().as_raw() || root.verify_signature(None).is_err() {
        return Err(ByoError::NoRoot);
    }
    let now_s = validity::unix_secs(now);
    // A tenant whose clock runs a few minutes ahead signs certificates that start "soon".
    let skew = validity::skew_secs();
    for (index, c) in parsed.iter().enumerate() {
        let cert_err = |source| ByoError::Cert { index, source };
        let Some(path_len) = cert::ca_path_len(c).map_err(cert_err)? else {
            return Err(ByoError::NotCa { index });
        };
        if !cert::can_sign_certs(c, index).map_err(cert_err)? {
            return Err(ByoError::NoKeyCertSign { index });
        }
        // Below certificate `index` sit `index` intermediates (the leaf does not count).
        if let Some(path_len) = path_len
            && (path_len as usize) < index
        {
            return Err(ByoError::PathLenTooShort { index, path_len, needed: index });
        }
        if let Some(parent) = parsed.get(index + 1)
            && c.verify_signature(Some(parent.public_key())).is_err()
        {
            return Err(ByoError::BrokenChain { index });
        }
        let (not_before, not_after) = cert::validity_secs(c);
        validity::check_window(not_before, not_after, now_s, min_days, skew)
            .map_err(|source| ByoError::Validity { index, source })?;
    }
    for uri in cert::uri_sans(&parsed[0]).map_err(|source| ByoError::Cert { index: 0, source })? {
        if uri.starts_with("spiffe://") && uri != td.id_uri() {
            return Err(ByoError::WrongTrustDomain { expected: td.clone(), found: uri.to_owned() });
        }
    }
    drop(parsed);

    let root = RootCert::parse(td, chain[chain.len() - 1].clone())?;
    let ca = MeshCa::from_parts(td, chain, key)?;
    probe(&ca, root, now)?;
    Ok(ca)
}

/// Signs a throwaway leaf with the new CA and verifies it to the uploaded root with webpki:
/// this catches whatever the root imposes that we did not check by hand (name constraints,
/// EKU restrictions on the intermediate, unknown critical extensions).
fn probe(ca: &MeshCa, root: RootCert, now: SystemTime) -> Result<(), ByoError> {
    let td = ca.trust_domain();
    let bundle = TrustBundle::new(td, [root], 0)?;
    let probe_key = keys::generate_p256()?;
    let id =
        SpiffeId::from_path(td, "/trellis/probe").map_err(|e| ByoError::Probe(VerifyError::NotSpiffe(e)))?;
    let leaf = ca
        .sign_leaf(&probe_key, &id, SvidTtl::DEFAULT, now)
        .map_err(|e| ByoError::Ca(CaError::Generate(e.to_string())))?;
    let intermediates = &ca.chain_der()[..ca.chain_der().len() - 1];
    // A chain that starts within the clock skew is accepted; check it as of its start.
    let at = now.max(leaf.not_before);
    for role in [PeerRole::Client, PeerRole::Server] {
        verify_chain(&bundle, &leaf.cert_der, intermediates, validity::unix_time(at), role)
            .map_err(ByoError::Probe)?;
    }
    Ok(())
}
