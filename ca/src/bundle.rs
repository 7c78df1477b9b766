//! Trust bundles: the roots of ONE trust domain, in SPIFFE bundle (JWK Set) and PEM form.
//!
//! A [`TrustBundle`] is created for a trust domain and only takes [`RootCert`]s of that trust
//! domain; there is no operation that combines two bundles, so roots of different meshes can
//! never end up trusted together.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls::pki_types::{CertificateDer, TrustAnchor};
use serde::{Deserialize, Serialize};
use x509_parser::public_key::PublicKey;

use crate::cert::{self, CertError};
use crate::keys::KeyKind;
use crate::validity;
use crate::{TrustDomain, pem};

/// Why a root or a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("a trust anchor must be a self-signed CA certificate")]
    NotSelfSignedCa,
    #[error("the root names trust domain {found}, not {expected}")]
    ForeignTrustDomain { expected: TrustDomain, found: String },
    #[error("root {fingerprint} belongs to trust domain {found}, this bundle to {expected}")]
    MixedTrustDomains { expected: TrustDomain, found: TrustDomain, fingerprint: String },
    #[error("webpki cannot use this root: {0}")]
    Anchor(String),
    #[error("malformed SPIFFE bundle: {0}")]
    Json(String),
    #[error("the root's key type ({0}) cannot be written as a JWK")]
    UnsupportedKey(KeyKind),
}

/// A root certificate tagged with the one trust domain it anchors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCert {
    trust_domain: TrustDomain,
    der: CertificateDer<'static>,
    fingerprint: String,
    not_after: i64,
}

impl RootCert {
    /// Accepts a root for `td`: a self-signed CA certificate whose SPIFFE ID, if it carries
    /// one, is `spiffe://<td>`. Tenant roots without a SPIFFE ID are accepted, since the tenant
    /// chose the trust domain when uploading.
    pub fn parse(td: &TrustDomain, der: CertificateDer<'static>) -> Result<RootCert, BundleError> {
        let c = cert::parse(&der)?;
        let is_ca = cert::ca_path_len(&c)?.is_some();
        if !is_ca || c.subject().as_raw() != c.issuer().as_raw() || c.verify_signature(None).is_err() {
            return Err(BundleError::NotSelfSignedCa);
        }
        for uri in cert::uri_sans(&c)? {
            if uri.starts_with("spiffe://") && uri != td.id_uri() {
                return Err(BundleError::ForeignTrustDomain { expected: td.clone(), found: uri.to_owned() });
            }
        }
        drop(c);
        Ok(Self::from_checked(td.clone(), der))
    }

    /// For roots this crate generated or already checked.
    pub(crate) fn from_checked(trust_domain: TrustDomain, der: CertificateDer<'static>) -> RootCert {
        let not_after = cert::parse(&der).map(|c| cert::validity_secs(&c).1).unwrap_or(0);
        let fingerprint = cert::fingerprint(&der);
        RootCert { trust_domain, der, fingerprint, not_after }
    }

    /// The trust domain this root anchors.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The certificate.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// SHA-256 fingerprint (lowercase hex): how rotation status names roots.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// End of the root's validity.
    pub fn not_after(&self) -> SystemTime {
        validity::from_unix(self.not_after)
    }

    /// The certificate as PEM.
    pub fn pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.der)
    }
}

/// The roots trusted for one trust domain, with the SPIFFE bundle sequence number.
///
/// During a root rotation it holds the old and the new root; after retirement only the new.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<RootCert>,
    anchors: Vec<TrustAnchor<'static>>,
    sequence: u64,
    refresh_hint: Option<Duration>,
}

impl TrustBundle {
    /// A bundle of `roots`, all of which must belong to `td`; duplicates are dropped.
    pub fn new(
        td: &TrustDomain,
        roots: impl IntoIterator<Item = RootCert>,
        sequence: u64,
    ) -> Result<TrustBundle, BundleError> {
        let mut b = TrustBundle {
            trust_domain: td.clone(),
            roots: Vec::new(),
            anchors: Vec::new(),
            sequence,
            refresh_hint: None,
        };
        for r in roots {
            b.push(r)?;
        }
        Ok(b)
    }

    /// Adds a root of this bundle's trust domain (refused for any other); returns whether it
    /// was new. The caller bumps the sequence when it publishes the change.
    pub fn push(&mut self, root: RootCert) -> Result<bool, BundleError> {
        if root.trust_domain != self.trust_domain {
            return Err(BundleError::MixedTrustDomains {
                expected: self.trust_domain.clone(),
                found: root.trust_domain.clone(),
                fingerprint: root.fingerprint.clone(),
            });
        }
        if self.roots.iter().any(|r| r.fingerprint == root.fingerprint) {
            return Ok(false);
        }
        let anchor = webpki::anchor_from_trusted_cert(&root.der)
            .map_err(|e| BundleError::Anchor(e.to_string()))?
            .to_owned();
        self.anchors.push(anchor);
        self.roots.push(root);
        Ok(true)
    }

    /// Removes the root with this fingerprint (retiring it); returns whether it was present.
    pub fn remove(&mut self, fingerprint: &str) -> bool {
        match self.roots.iter().position(|r| r.fingerprint == fingerprint) {
            Some(i) => {
                self.roots.remove(i);
                self.anchors.remove(i);
                true
            }
            None => false,
        }
    }

    /// Sets the SPIFFE bundle sequence number (it grows on every change).
    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    /// Sets how often consumers should poll for a new bundle (`spiffe_refresh_hint`).
    pub fn set_refresh_hint(&mut self, hint: Duration) {
        self.refresh_hint = Some(hint);
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots, in the order they were given (a mesh's: the active root first).
    pub fn roots(&self) -> &[RootCert] {
        &self.roots
    }

    /// The SPIFFE bundle sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The roots as concatenated PEM blocks.
    pub fn to_pem(&self) -> String {
        pem::encode_certs(self.roots.iter().map(|r| &r.der))
    }

    /// The SPIFFE bundle: a JWK Set whose keys have `use: "x509-svid"` and the root in `x5c`.
    pub fn to_spiffe(&self) -> Result<SpiffeBundle, BundleError> {
        let keys = self.roots.iter().map(jwk_for).collect::<Result<Vec<_>, _>>()?;
        Ok(SpiffeBundle {
            keys,
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint.map(|d| d.as_secs()),
        })
    }

    /// [`TrustBundle::to_spiffe`] as pretty JSON.
    pub fn to_spiffe_json(&self) -> Result<String, BundleError> {
        self.to_spiffe()?.to_json()
    }

    /// Reads a SPIFFE bundle for `td`: every `x509-svid` key's first `x5c` certificate becomes
    /// a root (SPIFFE X509-SVID §6.2); other keys are ignored.
    pub fn from_spiffe_json(td: &TrustDomain, json: &str) -> Result<TrustBundle, BundleError> {
        let doc: SpiffeBundle = serde_json::from_str(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut roots = Vec::new();
        for key in doc.keys.into_iter().filter(|k| k.use_.as_deref() == Some("x509-svid")) {
            let Some(first) = key.x5c.and_then(|x| x.into_iter().next()) else { continue };
            let der = STANDARD.decode(first).map_err(|_| BundleError::Json("x5c is not base64".into()))?;
            roots.push(RootCert::parse(td, CertificateDer::from(der))?);
        }
        let mut b = TrustBundle::new(td, roots, doc.spiffe_sequence.unwrap_or(0))?;
        b.refresh_hint = doc.spiffe_refresh_hint.map(Duration::from_secs);
        Ok(b)
    }
}

/// The SPIFFE Trust Domain and Bundle document: a JWK Set (RFC 7517) with two SPIFFE members.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpiffeBundle {
    /// One key per root, with `use: x509-svid`
    keys: Vec<Jwk>,
    /// Grows on every change of the bundle
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    spiffe_sequence: Option<u64>,
    /// Seconds between polls for a new bundle
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    spiffe_refresh_hint: Option<u64>,
}

impl SpiffeBundle {
    /// The document as pretty JSON.
    pub fn to_json(&self) -> Result<String, BundleError> {
        serde_json::to_string_pretty(self).map_err(|e| BundleError::Json(e.to_string()))
    }
}

/// A root as a JSON Web Key: its public key (EC: crv, x, y; OKP: crv, x; RSA: n, e) and the
/// certificate itself in `x5c`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SpiffeBundleKey))]
struct Jwk {
    /// x509-svid: the key is an X.509-SVID root
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    use_: Option<String>,
    /// EC, OKP or RSA
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required))]
    kty: String,
    /// P-256, P-384 or Ed25519
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    e: Option<String>,
    /// The root certificate, base64 DER
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    x5c: Option<Vec<String>>,
}

fn jwk_for(root: &RootCert) -> Result<Jwk, BundleError> {
    let c = cert::parse(&root.der)?;
    let spki = c.public_key();
    let mut jwk =
        Jwk { use_: Some("x509-svid".into()), x5c: Some(vec![STANDARD.encode(&root.der)]), ..Jwk::default() };
    let kind = KeyKind::of(spki);
    match (&kind, spki.parsed()) {
        (KeyKind::EcdsaP256 | KeyKind::EcdsaP384, Ok(PublicKey::EC(point))) => {
            let raw = point.data();
            let n = (raw.len() - 1) / 2;
            if raw.first() != Some(&0x04) || raw.len() != 2 * n + 1 {
                return Err(BundleError::UnsupportedKey(kind));
            }
            jwk.kty = "EC".into();
            jwk.crv = Some(if kind == KeyKind::EcdsaP256 { "P-256" } else { "P-384" }.into());
            jwk.x = Some(URL_SAFE_NO_PAD.encode(&raw[1..=n]));
            jwk.y = Some(URL_SAFE_NO_PAD.encode(&raw[n + 1..]));
        }
        (KeyKind::Ed25519, _) => {
            jwk.kty = "OKP".into();
            jwk.crv = Some("Ed25519".into());
            jwk.x = Some(URL_SAFE_NO_PAD.encode(spki.subject_public_key.data.as_ref()));
        }
        (KeyKind::Rsa { .. }, Ok(PublicKey::RSA(rsa))) => {
            let strip = |b: &[u8]| b.iter().position(|&x| x != 0).map_or(Vec::new(), |i| b[i..].to_vec());
            jwk.kty = "RSA".into();
            jwk.n = Some(URL_SAFE_NO_PAD.encode(strip(rsa.modulus)));
            jwk.e = Some(URL_SAFE_NO_PAD.encode(strip(rsa.exponent)));
        }
        _ => return Err(BundleError::UnsupportedKey(kind)),
    }
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshCa;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    fn root(s: &str) -> MeshCa {
        MeshCa::generate_root(&td(s), Duration::from_secs(30 * 86_400), SystemTime::now()).unwrap()
    }

    #[test]
    fn one_trust_domain_per_bundle() {
        let a = root("a.mesh");
        let b = root("b.mesh");
        let mut bundle = TrustBundle::new(&td("a.mesh"), [a.root()], 1).unwrap();
        let err = bundle.push(b.root()).unwrap_err();
        assert!(matches!(err, BundleError::MixedTrustDomains { .. }), "{err}");
        assert!(TrustBundle::new(&td("a.mesh"), [a.root(), b.root()], 1).is_err());
        // A root carrying another trust domain's SPIFFE ID cannot be relabelled.
        let err = RootCert::parse(&td("a.mesh"), b.cert_der().clone()).unwrap_err();
        assert!(matches!(err, BundleError::ForeignTrustDomain { .. }), "{err}");
        // An intermediate is no trust anchor.
        let inter = a.generate_intermediate(Duration::from_secs(86_400), SystemTime::now()).unwrap();
        assert_eq!(
            RootCert::parse(&td("a.mesh"), inter.cert_der().clone()),
            Err(BundleError::NotSelfSignedCa)
        );
    }

    #[test]
    fn rotation_adds_and_retires_roots() {
        let old = root("a.mesh");
        let new = root("a.mesh");
        let mut bundle = TrustBundle::new(&td("a.mesh"), [old.root()], 1).unwrap();
        assert!(bundle.push(new.root()).unwrap());
        assert!(!bundle.push(new.root()).unwrap(), "duplicates are dropped");
        assert_eq!(bundle.roots().len(), 2);
        assert_eq!(bundle.to_pem().matches("BEGIN CERTIFICATE").count(), 2);
        assert!(bundle.remove(old.root().fingerprint()));
        assert!(!bundle.remove(old.root().fingerprint()));
        assert_eq!(bundle.roots()[0].fingerprint(), new.root().fingerprint());
        assert_eq!(bundle.anchors().len(), 1);
    }

    #[test]
    fn spiffe_json_round_trip() {
        let a = root("a.mesh");
        let a2 = root("a.mesh");
        let mut bundle = TrustBundle::new(&td("a.mesh"), [a.root(), a2.root()], 7).unwrap();
        bundle.set_refresh_hint(Duration::from_secs(300));
        let json = bundle.to_spiffe_json().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["spiffe_sequence"], 7);
        assert_eq!(v["spiffe_refresh_hint"], 300);
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for k in keys {
            assert_eq!(k["use"], "x509-svid");
            assert_eq!(k["kty"], "EC");
            assert_eq!(k["crv"], "P-256");
            assert!(k.get("kid").is_none(), "SPIFFE bundles must not set kid");
            assert_eq!(URL_SAFE_NO_PAD.decode(k["x"].as_str().unwrap()).unwrap().len(), 32);
            assert_eq!(URL_SAFE_NO_PAD.decode(k["y"].as_str().unwrap()).unwrap().len(), 32);
            assert_eq!(k["x5c"].as_array().unwrap().len(), 1);
        }
        let x5c0 = STANDARD.decode(keys[0]["x5c"][0].as_str().unwrap()).unwrap();
        assert_eq!(x5c0, a.cert_der().to_vec());

        let back = TrustBundle::from_spiffe_json(&td("a.mesh"), &json).unwrap();
        assert_eq!(back.sequence(), 7);
        assert_eq!(back.roots(), bundle.roots());
        // Read as another trust domain, the roots' SPIFFE IDs give it away.
        assert!(TrustBundle::from_spiffe_json(&td("b.mesh"), &json).is_err());
        assert!(matches!(TrustBundle::from_spiffe_json(&td("a.mesh"), "{"), Err(BundleError::Json(_))));
    }
}
