//! Trellis domain types. Pure: no I/O, no HTTP, SQL, gRPC or Envoy types.
//!
//! Values are parsed once at the boundary ("parse, don't validate"); code that holds an
//! [`OrgSlug`] or a [`MeshName`] never checks it again.

#![forbid(unsafe_code)]

mod ids;
mod names;

pub use ids::{MeshId, OrgId};
pub use names::{MeshName, NameError, OrgSlug, ResourceName};
