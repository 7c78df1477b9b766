//! Trellis PKI. Pure: no files, no network, no database, no clock reads (every function that
//! needs the time takes `now`). Randomness comes from the OS-seeded CSPRNG.
//!
//! - [`TrustDomain`], [`SpiffeId`]: identities, parsed once.
//! - [`MeshCa`]: a mesh's root or intermediate; [`MeshCa::sign_svid`] turns a CSR into an
//!   X.509-SVID, using nothing from the CSR but its (proven) public key.
//! - [`PlatformCa`]: the control plane's own server certificates, never mixed with meshes.
//! - [`TrustBundle`]: the roots of one trust domain, as SPIFFE bundle JSON and PEM.
//! - [`verify_svid`], [`SvidClientVerifier`], [`SvidServerVerifier`]: checking SVIDs, alone
//!   or inside rustls handshakes.
//! - [`seal`], [`unseal`], [`reseal`]: CA keys encrypted under a [`KeyRing`] of KEKs.
//! - [`generate_intermediate_csr`], [`accept_intermediate`], [`accept_uploaded_ca`]: a
//!   tenant's own intermediate or CA.

#![forbid(unsafe_code)]

mod bundle;
mod byo;
mod cert;
mod csr;
mod keys;
mod mesh_ca;
mod pem;
mod platform;
mod seal;
mod svid;
mod tls;
mod validity;
mod verify;

pub use bundle::{BundleError, RootCert, SpiffeBundle, TrustBundle};
pub use byo::{ByoError, MAX_CHAIN_LEN, accept_intermediate, accept_uploaded_ca, generate_intermediate_csr};
pub use cert::CertError;
pub use csr::{CsrError, MAX_CSR_DER, MAX_CSR_INPUT};
// Identities are domain types: parsed in `model`, the same for the CA as for the configuration.
pub use keys::{KeyError, KeyKind, SecretKey, workload_key_and_csr};
pub use mesh_ca::{CaError, MAX_CA_VALIDITY, MIN_CA_VALIDITY, MeshCa};
pub use pem::encode as pem_encode;
pub use platform::{PlatformCa, PlatformError, ServerCert};
pub use seal::{Kek, KekError, KeyRing, SealError, SealedKey, owner_aad, reseal, seal, unseal};
pub use svid::IssuedSvid;
pub use tls::{SvidClientVerifier, SvidServerVerifier};
pub use trellis_model::{IdError, SpiffeId, SvidTtl, TrustDomain, TtlError};
pub use validity::{CLOCK_SKEW, ExpiryError, days_until_expiry, ensure_min_days};
pub use verify::{
    ClaimedLeaf, PeerRole, VerifyError, claimed_leaf, spiffe_id_of, verify_svid, verify_svid_root,
};
