//! The mesh itself: trust domain, mTLS mode, default access.

use serde::{Deserialize, Serialize};

use super::common::Checker;
use crate::{MeshName, OrgSlug, TrustDomain};

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

impl MeshSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(td) = &self.trust_domain {
            c.field("trustDomain", |c| {
                if let Err(e) = TrustDomain::parse(td) {
                    c.error(e.to_string());
                }
            });
        }
    }
}

/// Trust domains under this domain are Trellis's own.
pub const PLATFORM_TRUST_DOMAIN: &str = "trellis.internal";

/// Refuses a trust domain under [`PLATFORM_TRUST_DOMAIN`] that does not belong to `org`: such
/// names are `<…>.<org slug>.trellis.internal`, so that no organization can take another's
/// (predictable) default.
pub fn check_trust_domain_owner(td: &str, org: &OrgSlug) -> Result<(), String> {
    let Some(under) = td.strip_suffix(PLATFORM_TRUST_DOMAIN) else { return Ok(()) };
    let owner = match under.strip_suffix('.') {
        Some(rest) => rest.rsplit('.').next().unwrap_or(rest),
        None if under.is_empty() => "",
        // Only shares the text, e.g. `mytrellis.internal`.
        None => return Ok(()),
    };
    if owner == org.as_str() {
        return Ok(());
    }
    Err(format!(
        "names under {PLATFORM_TRUST_DOMAIN} are reserved for the organization whose slug precedes it: \
         use <name>.{org}.{PLATFORM_TRUST_DOMAIN} or a domain of your own"
    ))
}

/// The trust domain a mesh gets when its spec names none: `<mesh>.<org>.trellis.internal`,
/// or, with `salt` (when that name is still held by the meshes of an organization that had the
/// slug before), `<mesh>.<salt>.<org>.trellis.internal`.
pub fn default_trust_domain(mesh: &MeshName, org: &OrgSlug, salt: Option<&str>) -> String {
    match salt {
        Some(salt) => format!("{mesh}.{salt}.{org}.{PLATFORM_TRUST_DOMAIN}"),
        None => format!("{mesh}.{org}.{PLATFORM_TRUST_DOMAIN}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trust_domain_has_one_spelling() {
        assert!(TrustDomain::parse("shop.acme.trellis.internal").is_ok());
        for bad in ["shop.acme.trellis.internal.", ".shop.acme", "shop..acme", ".", "Shop.acme"] {
            assert!(TrustDomain::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn platform_trust_domains_belong_to_the_slug_they_carry() {
        let acme = OrgSlug::parse("acme").unwrap();
        for mine in [
            "shop.acme.trellis.internal",
            "a.b.acme.trellis.internal",
            "acme.trellis.internal",
            "example.org",
            "mytrellis.internal",
        ] {
            assert!(check_trust_domain_owner(mine, &acme).is_ok(), "{mine}");
        }
        for theirs in [
            "shop.globex.trellis.internal",
            "acme.globex.trellis.internal",
            "trellis.internal",
            "globex.trellis.internal",
        ] {
            assert!(check_trust_domain_owner(theirs, &acme).is_err(), "{theirs}");
        }
        let shop = MeshName::parse("shop").unwrap();
        assert_eq!(default_trust_domain(&shop, &acme, None), "shop.acme.trellis.internal");
        let salted = default_trust_domain(&shop, &acme, Some("k3x9"));
        assert_eq!(salted, "shop.k3x9.acme.trellis.internal");
        assert!(check_trust_domain_owner(&salted, &acme).is_ok());
    }
}
