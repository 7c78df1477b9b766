//! An SVID as the agent holds it: the leaf chain, its key and the mesh's trust bundle as
//! issued, read from PEM and checked once.

use std::time::SystemTime;

use anyhow::anyhow;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use trellis_ca::{RootCert, SpiffeId, TrustBundle, claimed_leaf, verify_svid};
use zeroize::Zeroizing;

/// An SVID with its key and the mesh's trust bundle.
pub struct Svid {
    /// Written only to `key.pem` (0600).
    pub(crate) key_pem: Zeroizing<String>,
    pub chain_pem: String,
    pub bundle_pem: String,
    pub id: SpiffeId,
    pub not_after: SystemTime,
    /// When this agent got it (issued, or read back at start): renewal is timed from here,
    /// since `not_before` is backdated for clock skew.
    pub received: SystemTime,
}

impl Svid {
    /// Reads the leaf's identity and validity; checks that the key parses.
    pub fn from_pem(
        key_pem: Zeroizing<String>,
        chain_pem: String,
        bundle_pem: String,
    ) -> anyhow::Result<Svid> {
        let chain = pem_certs(&chain_pem)?;
        let leaf = chain.first().ok_or_else(|| anyhow!("no certificate in the chain"))?;
        let claimed = claimed_leaf(leaf).map_err(|e| anyhow!("not an SVID: {e}"))?;
        let svid = Svid {
            key_pem,
            chain_pem,
            bundle_pem,
            id: claimed.id,
            not_after: claimed.not_after,
            received: SystemTime::now(),
        };
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes())
            .map_err(|e| anyhow!("bad private key: {e}"))?;
        svid.bundle()?;
        Ok(svid)
    }

    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        pem_certs(&self.chain_pem).unwrap_or_default()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("checked in from_pem")
    }

    /// The mesh's roots as issued with this SVID.
    pub fn bundle(&self) -> anyhow::Result<TrustBundle> {
        bundle_from_pem(&self.id, &self.bundle_pem)
    }

    /// Whether this SVID chains to the first root of `bundle`, the root that signs now (the
    /// wire contract's bundle order); `None` for an empty bundle.
    pub fn under_first_root(&self, bundle: &TrustBundle, now: SystemTime) -> Option<bool> {
        let first = bundle.roots().first()?;
        let only = TrustBundle::new(bundle.trust_domain(), [first.clone()], 0).ok()?;
        Some(verify_svid(&only, &self.chain(), now).is_ok())
    }
}

/// The roots in `pem`, as the trust bundle of `id`'s trust domain.
pub fn bundle_from_pem(id: &SpiffeId, pem: &str) -> anyhow::Result<TrustBundle> {
    let td = id.trust_domain();
    let roots = pem_certs(pem)?
        .into_iter()
        .map(|c| RootCert::parse(&td, c).map_err(|e| anyhow!("trust bundle: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if roots.is_empty() {
        return Err(anyhow!("trust bundle: no root certificate"));
    }
    TrustBundle::new(&td, roots, 0).map_err(|e| anyhow!("trust bundle: {e}"))
}

/// Every certificate in a PEM text.
pub fn pem_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("bad PEM: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_svid_is_stale_when_the_bundle_names_another_root_first() {
        let td = trellis_ca::TrustDomain::parse("td.example").unwrap();
        let now = SystemTime::now();
        let (old, new) = (
            trellis_ca::MeshCa::generate_root(&td, Duration::from_secs(86_400 * 365), now).unwrap(),
            trellis_ca::MeshCa::generate_root(&td, Duration::from_secs(86_400 * 365), now).unwrap(),
        );
        let id = SpiffeId::parse("spiffe://td.example/ns/m/sa/s").unwrap();
        let (key, csr) = trellis_ca::workload_key_and_csr().unwrap();
        let issued = old.sign_svid(csr.as_bytes(), &id, trellis_ca::SvidTtl::DEFAULT, now).unwrap();
        let pem = |cas: &[&trellis_ca::MeshCa]| cas.iter().map(|c| c.root().pem()).collect::<String>();
        let svid = Svid::from_pem(key.expose_pkcs8_pem(), issued.chain_pem, pem(&[&old])).unwrap();
        let prepared = bundle_from_pem(&id, &pem(&[&old, &new])).unwrap();
        let activated = bundle_from_pem(&id, &pem(&[&new, &old])).unwrap();
        assert_eq!(svid.under_first_root(&prepared, now), Some(true), "prepared: the old root still signs");
        assert_eq!(svid.under_first_root(&activated, now), Some(false), "activated: renew");
    }
}
