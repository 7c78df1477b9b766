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

#[cfg(test)]
mod tests {
    use super::*;

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
