//! Request matching shared by routes and access policies: paths, headers, query parameters,
//! methods, with bounded regular expressions.

use serde::{Deserialize, Serialize};

use super::common::Checker;

/// Longest regular expression accepted, in bytes.
pub const MAX_REGEX_LEN: usize = 256;
/// Largest compiled program a regular expression may produce, in bytes.
pub const MAX_REGEX_PROGRAM: usize = 64 * 1024;
/// Largest RE2 program a regular expression may compile to, in instructions. Envoy refuses
/// a whole resource holding a regex past its runtime value `re2.max_program_size.error_level`
/// (100 unless set); the Envoy bootstrap Trellis serves sets it to this bound, and the bound
/// applies to an estimate that is never below RE2's own count ([`super::re2_program_size`]).
pub const MAX_RE2_PROGRAM: usize = 1000;
/// Longest literal match value.
pub const MAX_VALUE_LEN: usize = 1024;

/// Checks that `re` is a regular expression within bounds, in the RE2 dialect Envoy and gRPC
/// use (the Rust `regex` crate shares RE2's syntax and linear-time guarantee), and small
/// enough for Envoy's RE2 program size limit.
pub fn check_regex(c: &mut Checker, field: &str, re: &str) {
    if re.len() > MAX_REGEX_LEN {
        c.error_at(
            field,
            format!("regular expression must be at most {MAX_REGEX_LEN} bytes, got {}", re.len()),
        );
        return;
    }
    if let Err(e) = regex::RegexBuilder::new(re).size_limit(MAX_REGEX_PROGRAM).nest_limit(32).build() {
        let msg = match e {
            regex::Error::CompiledTooBig(_) => "regular expression is too complex".to_owned(),
            other => {
                format!("invalid regular expression: {}", other.to_string().lines().last().unwrap_or(""))
            }
        };
        c.error_at(field, msg);
        return;
    }
    match super::re2_program_size(re) {
        Some(size) if size <= MAX_RE2_PROGRAM => {}
        Some(size) => c.error_at(
            field,
            format!(
                "regular expression is too complex for Envoy: it compiles to up to {size} RE2 instructions, \
                 at most {MAX_RE2_PROGRAM} are accepted; use fewer or smaller repetitions and character classes"
            ),
        ),
        None => c.error_at(field, "invalid regular expression"),
    }
}

/// How a path is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

/// A path match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub kind: PathMatchType,
    pub value: String,
}

impl PathMatch {
    pub(crate) fn check(&self, c: &mut Checker) {
        match self.kind {
            PathMatchType::RegularExpression => check_regex(c, "value", &self.value),
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                if !self.value.starts_with('/') {
                    c.error_at("value", "must start with '/'");
                } else if self.value.len() > MAX_VALUE_LEN {
                    c.error_at("value", format!("must be at most {MAX_VALUE_LEN} bytes"));
                } else if self
                    .value
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '?' || ch == '#')
                {
                    c.error_at("value", "must be a path without whitespace, '?' or '#'");
                }
            }
        }
    }
}

/// How a header or query parameter value is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A header match (names are case-insensitive) or a query parameter match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

impl ValueMatch {
    pub(crate) fn check(&self, c: &mut Checker, header: bool) {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 256
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !name_ok {
            c.error_at(
                "name",
                "must be 1-256 characters valid in an HTTP token (letters, digits, '-', '_' …)",
            );
        } else if header && self.name.starts_with(':') {
            c.error_at("name", "pseudo-headers cannot be matched");
        }
        match self.kind {
            ValueMatchType::RegularExpression => check_regex(c, "value", &self.value),
            ValueMatchType::Exact => {
                if self.value.len() > MAX_VALUE_LEN {
                    c.error_at("value", format!("must be at most {MAX_VALUE_LEN} bytes"));
                }
            }
        }
    }
}

/// Checks an HTTP method name.
pub fn check_method(c: &mut Checker, m: &str) {
    const METHODS: [&str; 9] =
        ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    if !METHODS.contains(&m) {
        c.error(format!("must be one of {}", METHODS.join(", ")));
    }
}

/// Most header or query matches in one match.
pub const MAX_VALUE_MATCHES: usize = 16;
