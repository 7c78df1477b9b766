//! Pieces shared by every configuration kind: field-path errors, bounded durations, service
//! references and labels.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::parse_label;
#[cfg(test)]
use crate::tags::valid_label_key;

/// One problem with one field, e.g. `spec.rules[0].backendRefs[1].weight`: "must be …".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// Where, as a JSON path from the top of the document.
    pub field: String,
    /// What is wrong, for a person to act on.
    pub message: String,
}

/// Collects field errors while walking a spec, tracking the current path.
#[derive(Debug, Default)]
pub struct Checker {
    path: Vec<String>,
    pub errors: Vec<FieldError>,
}

impl Checker {
    /// A checker whose paths start at `root` (e.g. `spec`).
    pub fn new(root: &str) -> Self {
        Checker { path: vec![root.to_owned()], errors: Vec::new() }
    }

    /// Runs `f` with `.name` appended to the path.
    pub fn field<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(format!(".{name}"));
        let r = f(self);
        self.path.pop();
        r
    }

    /// Runs `f` with `[i]` appended to the path.
    pub fn index<R>(&mut self, i: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(format!("[{i}]"));
        let r = f(self);
        self.path.pop();
        r
    }

    /// The current path.
    pub fn here(&self) -> String {
        self.path.concat()
    }

    /// Records a problem with the current field.
    pub fn error(&mut self, message: impl Into<String>) {
        let field = self.here();
        self.errors.push(FieldError { field, message: message.into() });
    }

    /// Records a problem with a named child of the current field.
    pub fn error_at(&mut self, name: &str, message: impl Into<String>) {
        self.field(name, |c| c.error(message));
    }

    /// Checks a list's length against its bound.
    pub fn bounded<T>(&mut self, name: &str, items: &[T], min: usize, max: usize) {
        if items.len() < min {
            self.error_at(name, format!("must have at least {min} item(s)"));
        } else if items.len() > max {
            self.error_at(name, format!("must have at most {max} items, got {}", items.len()));
        }
    }

    /// Checks a number's range.
    pub fn range<N: PartialOrd + fmt::Display + Copy>(&mut self, name: &str, v: N, min: N, max: N) {
        if v < min || v > max {
            self.error_at(name, format!("must be between {min} and {max}, got {v}"));
        }
    }

    /// Checks a DNS-label name (service, port name …).
    pub fn label(&mut self, name: &str, v: &str) {
        if let Err(e) = parse_label(v, 63) {
            self.error_at(name, e.to_string());
        }
    }
}

/// A length of time written the Gateway API way: `10s`, `250ms`, `1h30m`. Bounded to 1 ms..=24 h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    millis: u64,
}

impl Duration {
    /// Longest accepted duration.
    pub const MAX_MILLIS: u64 = 24 * 3600 * 1000;

    /// From milliseconds (within bounds).
    pub fn from_millis(millis: u64) -> Result<Self, String> {
        if millis == 0 || millis > Self::MAX_MILLIS {
            return Err(format!("must be between 1ms and 24h, got {millis}ms"));
        }
        Ok(Duration { millis })
    }

    /// The length in milliseconds.
    pub fn as_millis(&self) -> u64 {
        self.millis
    }

    /// Parses `1h30m`, `10s`, `250ms`: one to four number-unit pairs, each number at most
    /// five digits, units h, m, s, ms.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a duration like \"10s\", \"250ms\" or \"1h30m\"");
        let mut rest = s;
        let mut millis: u64 = 0;
        let mut pairs = 0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 || digits > 5 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('s') {
                (1000, 1)
            } else {
                return Err(bad());
            };
            rest = &rest[len..];
            millis += n * unit;
            pairs += 1;
            if pairs > 4 {
                return Err(bad());
            }
        }
        if pairs == 0 {
            return Err(bad());
        }
        Duration::from_millis(millis)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.millis;
        if m.is_multiple_of(3_600_000) {
            write!(f, "{}h", m / 3_600_000)
        } else if m.is_multiple_of(60_000) {
            write!(f, "{}m", m / 60_000)
        } else if m.is_multiple_of(1000) {
            write!(f, "{}s", m / 1000)
        } else {
            write!(f, "{m}ms")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Duration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^([0-9]{1,5}(h|m|s|ms)){1,4}$"))
            .description(Some("A duration such as 10s, 250ms or 1h30m (1ms to 24h)"))
            .into()
    }
}
#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Duration {}

/// Names the service a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// Name of a service in the same mesh.
    pub service: String,
}

/// A reference to a service by name, found at a field path; the API checks that each exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceReference {
    pub field: String,
    pub service: String,
    /// The service port it names, if any: the service must expose it.
    pub port: Option<PortReference>,
}

/// A port named beside a service reference, at its own field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortReference {
    pub field: String,
    pub port: u32,
}

impl TargetRef {
    pub(crate) fn check(&self, c: &mut Checker, refs: &mut Vec<ServiceReference>) {
        c.field("targetRef", |c| {
            c.label("service", &self.service);
            refs.push(ServiceReference {
                field: format!("{}.service", c.here()),
                service: self.service.clone(),
                port: None,
            });
        });
    }
}

/// Labels on a resource's metadata, used by list selectors.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("10s").unwrap().as_millis(), 10_000);
        assert_eq!(Duration::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(Duration::parse("1h30m").unwrap().as_millis(), 5_400_000);
        assert_eq!(Duration::parse("1h30m").unwrap().to_string(), "90m");
        assert_eq!(Duration::parse("1500ms").unwrap().to_string(), "1500ms");
        for bad in ["", "10", "s", "1d", "-1s", "1.5s", "123456s", "0s", "25h", "1s1s1s1s1s", " 1s"] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn checker_paths() {
        let mut c = Checker::new("spec");
        c.field("rules", |c| {
            c.index(0, |c| c.field("backendRefs", |c| c.index(1, |c| c.error_at("weight", "bad"))))
        });
        assert_eq!(c.errors[0].field, "spec.rules[0].backendRefs[1].weight");
    }

    #[test]
    fn label_keys_may_carry_a_prefix() {
        for ok in ["app", "app.kubernetes.io/name", "example.com/tier", "a_b.c-d"] {
            assert!(valid_label_key(ok), "{ok}");
        }
        for bad in ["", "/x", "Example.com/x", "a/b/c", "x/", "-a", "a".repeat(64).as_str()] {
            assert!(!valid_label_key(bad), "{bad}");
        }
    }
}
