//! Trellis domain types. Pure: no I/O, no HTTP, SQL, gRPC or Envoy types.
//!
//! Values are parsed once at the boundary ("parse, don't validate"); code that holds an
//! [`OrgSlug`] or a [`config::HttpRouteSpec`] never checks it again.

#![forbid(unsafe_code)]

pub mod attribution;
pub mod bootstrap;
pub mod config;
pub mod contract;
mod ids;
mod names;
mod roles;
mod spiffe;
mod svid_ttl;
mod tags;
pub mod telemetry;
mod token;
pub mod topology;
pub mod traffic_events;
mod wait;

pub use ids::{MeshId, OrgId};
pub use names::{KubeName, MeshName, NameError, OrgSlug, ResourceName};
pub use roles::{Action, Role};
pub use spiffe::{IdError, SpiffeId, TrustDomain};
pub use svid_ttl::{SvidTtl, TtlError};
pub use tags::{TagError, TagKey, TagValue, Tags};
pub use token::{SECRET_LEN, Token, TokenError, TokenKind, token_sha256};
pub use wait::{PropagationWait, WaitError};
