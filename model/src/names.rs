use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused; the message is written for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters, got {len}")]
    TooLong { max: usize, len: usize },
    #[error("may contain only lowercase letters, digits and '-', found {found:?} at position {at}")]
    BadChar { found: char, at: usize },
    #[error("must start with a lowercase letter")]
    BadStart,
    #[error("must not end with '-'")]
    BadEnd,
}

/// Checks an RFC 1123 DNS label that starts with a letter: what Kubernetes, Istio and
/// Kuma accept as an object name, so names copy across unchanged.
pub(crate) fn parse_label(s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    let len = s.chars().count();
    if len > max {
        return Err(NameError::TooLong { max, len });
    }
    for (at, c) in s.chars().enumerate() {
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(NameError::BadChar { found: c, at });
        }
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NameError::BadStart);
    }
    if s.ends_with('-') {
        return Err(NameError::BadEnd);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted name, in characters.
            pub const MAX_LEN: usize = $max;

            /// Parses a user-supplied name.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                parse_label(s, Self::MAX_LEN).map(|()| Self(s.to_owned()))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                parse_label(&s, Self::MAX_LEN).map(|()| Self(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// An organization's URL handle, e.g. `acme-payments`.
    OrgSlug,
    39
);
name_type!(
    /// A mesh's name within its organization, e.g. `prod`.
    MeshName,
    63
);
name_type!(
    /// The name of a mesh-scoped resource (service, route, policy …).
    ResourceName,
    63
);
name_type!(
    /// A Kubernetes namespace or object name that `trellis install kubernetes` writes,
    /// e.g. `trellis`.
    KubeName,
    63
);

impl OrgSlug {
    /// A valid slug made from a display name or an email address (its local part), for a
    /// new user's organization: lowercase ASCII letters and digits, every other run of
    /// characters one '-', starting with a letter, at most `max` characters (so that a
    /// suffix can make it unique). Falls back to `org` when nothing usable remains.
    pub fn derive(from: &str, max: usize) -> OrgSlug {
        let max = max.clamp(3, Self::MAX_LEN);
        let source = from.split('@').next().unwrap_or(from);
        let mut out = String::new();
        for c in source.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_lowercase() || (c.is_ascii_digit() && !out.is_empty()) {
                out.push(c);
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            if out.len() >= max {
                break;
            }
        }
        out.truncate(max);
        while out.ends_with('-') {
            out.pop();
        }
        if out.is_empty() {
            out.push_str("org");
        }
        OrgSlug::parse(&out).expect("derived slugs are valid by construction")
    }

    /// This slug with `-<suffix>` appended, shortened first so that the result fits.
    pub fn with_suffix(&self, suffix: &str) -> Result<OrgSlug, NameError> {
        let keep = Self::MAX_LEN.saturating_sub(suffix.len() + 1);
        let base = self.0[..self.0.len().min(keep)].trim_end_matches('-');
        OrgSlug::parse(&format!("{base}-{suffix}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_derive_from_names_and_emails() {
        assert_eq!(OrgSlug::derive("Alice Example", 30).as_str(), "alice-example");
        assert_eq!(OrgSlug::derive("bob.smith+x@Example.com", 30).as_str(), "bob-smith-x");
        assert_eq!(OrgSlug::derive("  Ünïcode ÷ 42 ", 30).as_str(), "n-code-42");
        assert_eq!(OrgSlug::derive("42 ÷ ☃", 30).as_str(), "org");
        assert_eq!(OrgSlug::derive("", 30).as_str(), "org");
        assert_eq!(OrgSlug::derive("9lives", 30).as_str(), "lives");
        let long = OrgSlug::derive(&"abc-".repeat(40), 30);
        assert!(long.as_str().len() <= 30 && !long.as_str().ends_with('-'), "{long}");
        let s = OrgSlug::parse(&"a".repeat(39)).unwrap();
        assert_eq!(s.with_suffix("7f3a").unwrap().as_str().len(), 39);
        assert!(s.with_suffix("7f3a").unwrap().as_str().ends_with("-7f3a"));
    }

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "prod", "acme-payments", "v2", "a1-b2-c3"] {
            assert_eq!(MeshName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        assert_eq!(MeshName::parse(""), Err(NameError::Empty));
        assert_eq!(MeshName::parse("Prod"), Err(NameError::BadChar { found: 'P', at: 0 }));
        assert_eq!(MeshName::parse("a.b"), Err(NameError::BadChar { found: '.', at: 1 }));
        assert_eq!(MeshName::parse("1abc"), Err(NameError::BadStart));
        assert_eq!(MeshName::parse("abc-"), Err(NameError::BadEnd));
        assert_eq!(MeshName::parse("-abc"), Err(NameError::BadStart));
        let long = "a".repeat(64);
        assert_eq!(MeshName::parse(&long), Err(NameError::TooLong { max: 63, len: 64 }));
        assert_eq!(OrgSlug::parse(&"a".repeat(40)), Err(NameError::TooLong { max: 39, len: 40 }));
        assert!(OrgSlug::parse(&"a".repeat(39)).is_ok());
    }

    #[test]
    fn serde_refuses_bad_names() {
        let err = serde_json::from_str::<MeshName>("\"Bad Name\"").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
        let ok: MeshName = serde_json::from_str("\"good\"").unwrap();
        assert_eq!(ok.as_str(), "good");
    }
}
