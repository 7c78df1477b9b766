//! SPIFFE identities: trust domains and SPIFFE IDs, parsed once here for the whole of Trellis
//! (the configuration, the CA, the xDS server).
//!
//! The rules are the strict form of the spec (SPIFFE-ID.md §2, "security considerations"): the
//! scheme is exactly `spiffe`, the trust domain holds only `[a-z0-9._-]`, path segments only
//! `[A-Za-z0-9._-]`, and nothing that two parsers could read differently (percent-encoding, `.`
//! and `..` segments, empty segments, ports, userinfo, queries, fragments) is accepted. Stricter
//! than the spec, a trust domain is dot-separated non-empty labels: one spelling per name, so
//! `shop.acme.` or `shop..acme` is not a second trust domain for `shop.acme`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a trust domain or SPIFFE ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("trust domain must not be empty")]
    EmptyTrustDomain,
    #[error("trust domain must be at most {max} characters, got {len}")]
    TrustDomainTooLong { max: usize, len: usize },
    #[error("trust domain must be dot-separated labels: no leading, trailing or doubled '.'")]
    TrustDomainEmptyLabel,
    #[error(
        "trust domain may contain only lowercase letters, digits, '.', '-' and '_', found {found:?} at {at}"
    )]
    BadTrustDomainChar { found: char, at: usize },
    #[error("a SPIFFE ID must start with \"spiffe://\"")]
    BadScheme,
    #[error("a SPIFFE ID must not carry userinfo ('@')")]
    UserInfo,
    #[error("a SPIFFE ID must not carry a port (':')")]
    Port,
    #[error("a SPIFFE ID must not carry a query ('?')")]
    Query,
    #[error("a SPIFFE ID must not carry a fragment ('#')")]
    Fragment,
    #[error("a workload SPIFFE ID needs a path after the trust domain")]
    MissingPath,
    #[error("path must start with '/'")]
    PathNotAbsolute,
    #[error("path segments must not be empty (no '//' and no trailing '/')")]
    EmptySegment,
    #[error("path segments must not be '.' or '..'")]
    DotSegment,
    #[error("path may contain only letters, digits, '.', '-', '_' and '/', found {found:?} at {at}")]
    BadPathChar { found: char, at: usize },
    #[error("a SPIFFE ID must be at most {max} bytes, got {len}")]
    TooLong { max: usize, len: usize },
}

const SCHEME: &str = "spiffe://";

/// A SPIFFE trust domain, e.g. `prod.acme.mesh.trellis`: one per mesh.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Longest accepted trust domain (RFC 3986 host limit), in characters.
    pub const MAX_LEN: usize = 255;

    /// Parses a bare trust domain name (without `spiffe://`).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_trust_domain(s).map(|()| Self(s.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<td>`, which signing certificates carry.
    pub fn id_uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        check_trust_domain(&s).map(|()| Self(s))
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> String {
        td.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_trust_domain(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    for (at, c) in s.chars().enumerate() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            '@' => return Err(IdError::UserInfo),
            ':' => return Err(IdError::Port),
            '?' => return Err(IdError::Query),
            '#' => return Err(IdError::Fragment),
            found => return Err(IdError::BadTrustDomainChar { found, at }),
        }
    }
    // Checked after the characters, so that the length counts ASCII characters only.
    if s.len() > TrustDomain::MAX_LEN {
        return Err(IdError::TrustDomainTooLong { max: TrustDomain::MAX_LEN, len: s.len() });
    }
    if s.split('.').any(str::is_empty) {
        return Err(IdError::TrustDomainEmptyLabel);
    }
    Ok(())
}

/// A workload's SPIFFE ID: `spiffe://<trust domain>/<path>`, always with a non-empty path
/// (X509-SVID §3.1: leaf identities have a non-root path).
///
/// Trellis names workloads `spiffe://<trust domain>/ns/<mesh>/sa/<service>` (see
/// [`SpiffeId::workload`]), the layout Istio uses, so that existing tooling reads it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    id: String,
    /// Byte offset of the path's leading '/' in `id`.
    path_at: usize,
}

impl SpiffeId {
    /// Longest accepted SPIFFE ID in bytes (SPIFFE-ID.md §2.3).
    pub const MAX_LEN: usize = 2048;

    /// Parses `spiffe://<trust domain>/<path>`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::BadScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td)?;
        if path.is_empty() {
            return Err(IdError::MissingPath);
        }
        check_path(path)?;
        if s.len() > Self::MAX_LEN {
            return Err(IdError::TooLong { max: Self::MAX_LEN, len: s.len() });
        }
        Ok(Self { id: s.to_owned(), path_at: SCHEME.len() + td.len() })
    }

    /// Builds an ID from a trust domain and an absolute path such as `/ns/prod/sa/web`.
    pub fn from_path(td: &TrustDomain, path: &str) -> Result<Self, IdError> {
        if path.is_empty() {
            return Err(IdError::MissingPath);
        }
        check_path(path)?;
        let id = format!("{SCHEME}{td}{path}");
        if id.len() > Self::MAX_LEN {
            return Err(IdError::TooLong { max: Self::MAX_LEN, len: id.len() });
        }
        Ok(Self { path_at: SCHEME.len() + td.as_str().len(), id })
    }

    /// The identity of `service` in `mesh`: `spiffe://<td>/ns/<mesh>/sa/<service>`.
    ///
    /// The mesh is in the path as well as in the trust domain so that an ID read alone (in a
    /// log line, an RBAC rule) still says which mesh it belongs to.
    pub fn workload(td: &TrustDomain, mesh: &str, service: &str) -> Result<Self, IdError> {
        for segment in [mesh, service] {
            if segment.contains('/') {
                let at = segment.find('/').unwrap_or(0);
                return Err(IdError::BadPathChar { found: '/', at });
            }
        }
        Self::from_path(td, &format!("/ns/{mesh}/sa/{service}"))
    }

    /// The whole ID as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain part, e.g. `prod.acme`.
    pub fn trust_domain_str(&self) -> &str {
        &self.id[SCHEME.len()..self.path_at]
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// Whether this ID belongs to `td`.
    pub fn is_in(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }

    /// The path, starting with '/'.
    pub fn path(&self) -> &str {
        &self.id[self.path_at..]
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

fn check_path(path: &str) -> Result<(), IdError> {
    let Some(body) = path.strip_prefix('/') else {
        return Err(IdError::PathNotAbsolute);
    };
    // Characters first, so that '?', '#' and '%' get their own message wherever they are.
    for (i, c) in body.chars().enumerate() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '/' => {}
            '?' => return Err(IdError::Query),
            '#' => return Err(IdError::Fragment),
            found => return Err(IdError::BadPathChar { found, at: i + 1 }),
        }
    }
    for segment in body.split('/') {
        match segment {
            "" => return Err(IdError::EmptySegment),
            "." | ".." => return Err(IdError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    #[test]
    fn trust_domains_accepted() {
        for ok in ["a", "example.org", "prod.acme-payments.mesh", "under_score", "0.1", &"a".repeat(255)] {
            assert_eq!(TrustDomain::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(td("example.org").id_uri(), "spiffe://example.org");
    }

    #[test]
    fn trust_domains_refused_with_reason() {
        assert_eq!(TrustDomain::parse(""), Err(IdError::EmptyTrustDomain));
        assert_eq!(TrustDomain::parse("Example.org"), Err(IdError::BadTrustDomainChar { found: 'E', at: 0 }));
        assert_eq!(TrustDomain::parse("exa mple"), Err(IdError::BadTrustDomainChar { found: ' ', at: 3 }));
        assert_eq!(TrustDomain::parse("exämple"), Err(IdError::BadTrustDomainChar { found: 'ä', at: 2 }));
        assert_eq!(TrustDomain::parse("example.org:443"), Err(IdError::Port));
        assert_eq!(TrustDomain::parse("user@example.org"), Err(IdError::UserInfo));
        assert_eq!(TrustDomain::parse("a/b"), Err(IdError::BadTrustDomainChar { found: '/', at: 1 }));
        assert_eq!(TrustDomain::parse("spiffe://a"), Err(IdError::Port));
        assert_eq!(
            TrustDomain::parse(&"a".repeat(256)),
            Err(IdError::TrustDomainTooLong { max: 255, len: 256 })
        );
    }

    #[test]
    fn spiffe_ids_accepted() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
        assert_eq!(id.trust_domain_str(), "example.org");
        assert_eq!(id.trust_domain(), td("example.org"));
        assert_eq!(id.path(), "/ns/prod/sa/web");
        assert!(id.is_in(&td("example.org")));
        assert!(!id.is_in(&td("example.com")));
        for ok in ["spiffe://a/b", "spiffe://a/B.c-d_E/..x/x..", "spiffe://a/.hidden", "spiffe://1.2/3"] {
            assert_eq!(SpiffeId::parse(ok).unwrap().as_str(), ok);
        }
        let w = SpiffeId::workload(&td("prod.acme"), "prod", "web-api").unwrap();
        assert_eq!(w.as_str(), "spiffe://prod.acme/ns/prod/sa/web-api");
        assert_eq!(SpiffeId::from_path(&td("a"), "/x/y").unwrap().as_str(), "spiffe://a/x/y");
    }

    #[test]
    fn spiffe_ids_refused_with_reason() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::BadScheme),
            ("http://example.org/a", IdError::BadScheme),
            ("SPIFFE://example.org/a", IdError::BadScheme),
            ("spiffe:/example.org/a", IdError::BadScheme),
            ("spiffe:///a", IdError::EmptyTrustDomain),
            ("spiffe://example.org", IdError::MissingPath),
            ("spiffe://example.org/", IdError::EmptySegment),
            ("spiffe://example.org/a/", IdError::EmptySegment),
            ("spiffe://example.org//a", IdError::EmptySegment),
            ("spiffe://example.org/a/./b", IdError::DotSegment),
            ("spiffe://example.org/a/..", IdError::DotSegment),
            ("spiffe://example.org/a?x=1", IdError::Query),
            ("spiffe://example.org/a#frag", IdError::Fragment),
            ("spiffe://example.org:8443/a", IdError::Port),
            ("spiffe://user@example.org/a", IdError::UserInfo),
            ("spiffe://Example.org/a", IdError::BadTrustDomainChar { found: 'E', at: 0 }),
            ("spiffe://example.org/a%2Fb", IdError::BadPathChar { found: '%', at: 2 }),
            ("spiffe://example.org/a b", IdError::BadPathChar { found: ' ', at: 2 }),
            ("spiffe://example.org/ä", IdError::BadPathChar { found: 'ä', at: 1 }),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref().err(), Some(want), "{input:?}");
        }
        let long = format!("spiffe://a/{}", "b".repeat(2048 - 11 + 1));
        assert_eq!(SpiffeId::parse(&long), Err(IdError::TooLong { max: 2048, len: 2049 }));
        let max = format!("spiffe://a/{}", "b".repeat(2048 - 11));
        assert!(SpiffeId::parse(&max).is_ok());
        assert_eq!(
            SpiffeId::workload(&td("a"), "pr/od", "web"),
            Err(IdError::BadPathChar { found: '/', at: 2 })
        );
        assert_eq!(SpiffeId::workload(&td("a"), "", "web"), Err(IdError::EmptySegment));
        assert_eq!(SpiffeId::workload(&td("a"), "prod", ".."), Err(IdError::DotSegment));
        assert_eq!(SpiffeId::from_path(&td("a"), "x"), Err(IdError::PathNotAbsolute));
    }

    #[test]
    fn serde_parses() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://a/b\"").unwrap();
        assert_eq!(id.path(), "/b");
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://a\"").is_err());
        assert!(serde_json::from_str::<TrustDomain>("\"A\"").is_err());
    }

    #[test]
    fn a_trust_domain_has_one_spelling_in_ids_too() {
        for bad in ["shop.acme.", ".shop.acme", "shop..acme", "."] {
            assert_eq!(TrustDomain::parse(bad), Err(IdError::TrustDomainEmptyLabel), "{bad:?}");
            let id = format!("spiffe://{bad}/ns/shop/sa/web");
            assert_eq!(SpiffeId::parse(&id), Err(IdError::TrustDomainEmptyLabel), "{id:?}");
        }
    }
}
