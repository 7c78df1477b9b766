//! Tags: the `key: value` pairs a dataplane registers with and that routes and policies select
//! subsets by (`version: v2`). One rule, the Kubernetes label syntax, for both sides, so that a
//! tag a node can register is a tag a policy can select, and the reverse.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// Why a tag was refused; the message is written for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error(
        "{key:?} is not a tag key: an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
    )]
    BadKey { key: String },
    #[error(
        "tag {key:?}: value {value:?} must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending alphanumeric"
    )]
    BadValue { key: String, value: String },
    #[error("tag {key:?} is reserved: the service and mesh come from the identity, not from tags")]
    Reserved { key: String },
    #[error("must have at most {max} tags, got {len}")]
    TooMany { max: usize, len: usize },
}

/// A tag key: Kubernetes label key syntax, an optional DNS-subdomain prefix and '/', then a
/// name part (`app.kubernetes.io/name`, `version`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagKey(String);

impl TagKey {
    /// Keys that the identity sets: a node cannot claim them and a selector cannot name them.
    pub const RESERVED: [&'static str; 2] = ["service", "mesh"];

    /// Parses a tag key.
    pub fn parse(s: &str) -> Result<Self, TagError> {
        if !valid_label_key(s) {
            return Err(TagError::BadKey { key: s.to_owned() });
        }
        if Self::RESERVED.contains(&s) {
            return Err(TagError::Reserved { key: s.to_owned() });
        }
        Ok(Self(s.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tag value: empty, or at most 63 letters, digits, '-', '_' or '.', starting and ending
/// alphanumeric (Kubernetes label value syntax).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagValue(String);

impl TagValue {
    /// Longest accepted value, in characters.
    pub const MAX_LEN: usize = 63;

    /// Parses the value of tag `key` (named in the error).
    pub fn parse(key: &str, s: &str) -> Result<Self, TagError> {
        if !s.is_empty() && !valid_label_part(s, Self::MAX_LEN) {
            return Err(TagError::BadValue { key: key.to_owned(), value: s.to_owned() });
        }
        Ok(Self(s.to_owned()))
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Tags that a dataplane carries or that select a subset of a service's instances, e.g.
/// `{"version": "v2"}`: at most [`Tags::MAX`] pairs, each key a [`TagKey`] and each value a
/// [`TagValue`]. Only [`Tags::parse`] (and deserializing, which calls it) builds one, so the map
/// read through `Deref` always holds checked pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Tags(BTreeMap<String, String>);

impl Tags {
    /// Most tags on one dataplane or in one selector.
    pub const MAX: usize = 16;

    /// No tags: all of a service's instances.
    pub const fn new() -> Self {
        Self(BTreeMap::new())
    }

    /// Whether there are none (the whole service).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses `key: value` pairs: the single entry point for tags, whatever they come from (a
    /// node's registration, a join token, a route, a policy).
    pub fn parse<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, TagError> {
        let mut tags = BTreeMap::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            let key = TagKey::parse(k)?;
            let value = TagValue::parse(k, v)?;
            tags.insert(key.0, value.0);
        }
        if tags.len() > Self::MAX {
            return Err(TagError::TooMany { max: Self::MAX, len: tags.len() });
        }
        Ok(Self(tags))
    }

    /// Adds `key: value` if `key` is absent (both already checked); refused past [`Tags::MAX`].
    pub fn insert_absent(&mut self, key: &TagKey, value: &TagValue) -> Result<(), TagError> {
        if !self.0.contains_key(key.as_str()) {
            if self.0.len() == Self::MAX {
                return Err(TagError::TooMany { max: Self::MAX, len: Self::MAX + 1 });
            }
            self.0.insert(key.0.clone(), value.0.clone());
        }
        Ok(())
    }

    /// Whether every tag of `selector` is among these, with the same value.
    pub fn selected_by(&self, selector: &Tags) -> bool {
        selector.0.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }

    /// `key=value` pairs joined by `,`, in key order (`version=v2`; empty for no tags): how a
    /// subset is written in a cluster name, the agent's `--tags` and stored telemetry.
    pub fn joined(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(",")
    }

    /// Reads back what [`Tags::joined`] writes.
    pub fn parse_joined(s: &str) -> Result<Self, TagError> {
        if s.is_empty() {
            return Ok(Tags::new());
        }
        let pairs: Vec<(&str, &str)> = s
            .split(',')
            .map(|pair| pair.split_once('=').ok_or_else(|| TagError::BadKey { key: pair.to_owned() }))
            .collect::<Result<_, _>>()?;
        Tags::parse(pairs)
    }

    /// The checked pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (TagKey, TagValue)> + '_ {
        self.0.iter().map(|(k, v)| (TagKey(k.clone()), TagValue(v.clone())))
    }
}

impl Deref for Tags {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, String>> for Tags {
    type Error = TagError;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, TagError> {
        Tags::parse(&map)
    }
}

impl From<Tags> for BTreeMap<String, String> {
    fn from(tags: Tags) -> Self {
        tags.0
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Tags {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Object)
            .additional_properties(Some(
                utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String),
            ))
            .max_properties(Some(Tags::MAX))
            .description(Some(
                "Tags (Kubernetes label syntax): keys are an optional DNS prefix and '/', then 1-63 \
                 letters, digits, '-', '_' or '.'; values are empty or up to 63 such characters; \
                 keys and values start and end alphanumeric; `service` and `mesh` are reserved",
            ))
            .into()
    }
}
#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Tags {}

/// A Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name part
/// (`app.kubernetes.io/name`, `version`).
pub fn valid_label_key(k: &str) -> bool {
    match k.split_once('/') {
        None => valid_label_part(k, 63),
        Some((prefix, name)) => {
            prefix.len() <= 253
                && !prefix.is_empty()
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
                && valid_label_part(name, 63)
        }
    }
}

/// A Kubernetes label name or value part.
pub fn valid_label_part(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_joined_form_reads_back_and_refuses_what_is_not_tags() {
        let tags = Tags::parse([("version", "v2"), ("app.kubernetes.io/track", "beta")]).unwrap();
        assert_eq!(tags.joined(), "app.kubernetes.io/track=beta,version=v2");
        assert_eq!(Tags::parse_joined(&tags.joined()), Ok(tags));
        assert_eq!(Tags::parse_joined(""), Ok(Tags::new()));
        for bad in ["version", "version=v2,", "=v2", "version=a b", "service=web"] {
            assert!(Tags::parse_joined(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tags_follow_the_kubernetes_label_rule() {
        let ok = Tags::parse([("app.kubernetes.io/version", "v1.2-rc"), ("tier", ""), ("a_b.c-d", "X_1")])
            .unwrap();
        assert_eq!(ok["app.kubernetes.io/version"], "v1.2-rc");
        for (k, v) in [
            ("", "v"),
            ("/x", "v"),
            ("Example.com/x", "v"),
            ("a/b/c", "v"),
            ("-a", "v"),
            ("a-", "v"),
            ("k", "-v"),
            ("k", "v_"),
            ("k", "a b"),
            ("service", "web"),
            ("mesh", "prod"),
        ] {
            assert!(Tags::parse([(k, v)]).is_err(), "{k:?}: {v:?} accepted");
        }
        let many: Vec<(String, String)> =
            (0..=Tags::MAX).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(Tags::parse(many), Err(TagError::TooMany { max: 16, len: 17 }));
    }

    #[test]
    fn a_selector_picks_the_tags_it_names() {
        let node = Tags::parse([("version", "v2"), ("zone", "a")]).unwrap();
        assert!(node.selected_by(&Tags::new()));
        assert!(node.selected_by(&Tags::parse([("version", "v2")]).unwrap()));
        assert!(!node.selected_by(&Tags::parse([("version", "v1")]).unwrap()));
    }
}
