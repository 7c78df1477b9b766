//! rustls certificate verifiers for mesh mTLS: chains to one trust bundle, SPIFFE IDs checked
//! by [`crate::verify`]. DNS names play no part: a workload is named by its SPIFFE ID.
//!
//! A verifier holds a snapshot of the bundle; when the bundle changes (a rotation step), build
//! a new verifier and a new rustls config from it.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};

use crate::verify::{ALGORITHMS, PeerRole, VerifyError, verify_chain};
use crate::{SpiffeId, TrustBundle};

fn supported() -> WebPkiSupportedAlgorithms {
    *ALGORITHMS
}

/// Maps our verdict to the TLS alert rustls sends; the full reason rides along as `Other`.
fn to_rustls(e: VerifyError) -> rustls::Error {
    use webpki::Error as W;
    let ce = match &e {
        VerifyError::Path(W::CertExpired { .. }) => CertificateError::Expired,
        VerifyError::Path(W::CertNotValidYet { .. }) => CertificateError::NotValidYet,
        VerifyError::Path(W::UnknownIssuer) => CertificateError::UnknownIssuer,
        VerifyError::Path(W::InvalidSignatureForPublicKey) => CertificateError::BadSignature,
        _ => CertificateError::Other(OtherError(Arc::new(e))),
    };
    rustls::Error::InvalidCertificate(ce)
}

fn root_hints(bundle: &TrustBundle) -> Vec<DistinguishedName> {
    bundle.anchors().iter().map(|a| DistinguishedName::in_sequence(a.subject.as_ref())).collect()
}

/// For servers: requires a client SVID of the bundle's trust domain, optionally from a fixed
/// set of SPIFFE IDs.
#[derive(Debug)]
pub struct SvidClientVerifier {
    bundle: TrustBundle,
    allowed: Option<BTreeSet<SpiffeId>>,
    hints: Vec<DistinguishedName>,
    algs: WebPkiSupportedAlgorithms,
}

impl SvidClientVerifier {
    /// Accepts any SVID of the bundle's trust domain.
    pub fn new(bundle: TrustBundle) -> Self {
        let hints = root_hints(&bundle);
        Self { bundle, allowed: None, hints, algs: supported() }
    }

    /// Accepts only these SPIFFE IDs (which must be of the bundle's trust domain to match).
    pub fn only(mut self, ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        self.allowed = Some(ids.into_iter().collect());
        self
    }

    /// Checks a client chain as the TLS handshake would, returning the client's identity.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, VerifyError> {
        let (id, _) = verify_chain(&self.bundle, end_entity, intermediates, now, PeerRole::Client)?;
        match &self.allowed {
            Some(set) if !set.contains(&id) => Err(VerifyError::NotAllowed(id)),
            _ => Ok(id),
        }
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(to_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// For clients: requires the server to present an SVID of the bundle's trust domain with
/// exactly the expected SPIFFE ID. The TLS server name is ignored.
#[derive(Debug)]
pub struct SvidServerVerifier {
    bundle: TrustBundle,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl SvidServerVerifier {
    /// Pins the server's identity to `expected`.
    pub fn new(bundle: TrustBundle, expected: SpiffeId) -> Self {
        Self { bundle, expected, algs: supported() }
    }

    /// Checks a server chain as the TLS handshake would.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, VerifyError> {
        let (id, _) = verify_chain(&self.bundle, end_entity, intermediates, now, PeerRole::Server)?;
        if id != self.expected {
            return Err(VerifyError::UnexpectedIdentity { expected: self.expected.clone(), got: id });
        }
        Ok(id)
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)
            .map(|_| ServerCertVerified::assertion())
            .map_err(to_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
