//! The mesh itself: trust domain, mTLS mode, default access.

use serde::{Deserialize, Serialize};

use super::common::Checker;

/// How a mesh treats plaintext traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only mutual TLS between workloads.
    #[default]
    Strict,
    /// Mutual TLS and plaintext both accepted (for migrations).
    Permissive,
}

/// What happens to traffic that no access policy allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DefaultAccess {
    #[default]
    Deny,
    Allow,
}

/// Mutual TLS settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// A mesh's specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    /// The SPIFFE trust domain of the mesh's identities, unique across all of Trellis.
    /// Chosen by Trellis when omitted; cannot change once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub mtls: Mtls,
    #[serde(default)]
    pub default_access: DefaultAccess,
}

/// Longest trust domain accepted (the SPIFFE limit).
pub const MAX_TRUST_DOMAIN: usize = 255;

impl MeshSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(td) = &self.trust_domain {
            c.field("trustDomain", |c| {
                if let Err(e) = check_trust_domain(td) {
                    c.error(e);
                }
            });
        }
    }
}

/// A SPIFFE trust domain: 1-255 characters of lowercase letters, digits, '.', '-' and '_'.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.len() > MAX_TRUST_DOMAIN {
        return Err(format!("must be 1 to {MAX_TRUST_DOMAIN} characters"));
    }
    if let Some(c) =
        td.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("may contain only lowercase letters, digits, '.', '-' and '_', found {c:?}"));
    }
    Ok(())
}
