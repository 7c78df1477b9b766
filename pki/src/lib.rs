//! The certificate authority as a service: the pure `ca` crate's PKI kept in the store.
//!
//! - [`keyring`]: the key-encryption keys, from `TRELLIS_KEK` or a file, and their rotation.
//! - [`Authority`]: each mesh's CAs (sealed in the store, unsealed once and cached), SVIDs for
//!   join tokens and for renewals, trust bundles, root rotation, bring-your-own CAs, and
//!   authentication of workload certificates for the xDS server.
//! - The platform CA, which issues the control plane's own TLS server certificates.

#![forbid(unsafe_code)]

mod authority;
mod cache;
mod error;
pub mod keyring;
mod platform;
mod sealed;

pub use authority::{Authority, AuthorityOptions, CaInfo, CaStatus, Issued, Peer};
pub use error::PkiError;
pub use platform::{ServerIdentity, load_or_create_platform};
