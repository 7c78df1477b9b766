//! The form for a route's common case: the weights of its backends. Each weight input is
//! named by the field path the server's errors use (`spec.rules[1].backendRefs[0].weight`),
//! so that an error lands beside its input without a second mapping.

use serde_json::Value;
use trellis_model::config::Kind;

/// One backend of a route, as its form shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// The backend's field path, e.g. `spec.rules[1].backendRefs[0]`.
    pub path: String,
    /// The rule it belongs to (HTTP routes).
    pub rule: Option<usize>,
    pub service: String,
    /// `k=v, …`
    pub tags: String,
    /// The weight as stored, or as typed when the form comes back with errors.
    pub weight: String,
}

impl Backend {
    /// The name (and field path) of its weight input.
    pub fn weight_field(&self) -> String {
        format!("{}.weight", self.path)
    }

    /// An id for its weight input, from its position.
    pub fn weight_id(&self) -> String {
        self.weight_field().replace(['.', '['], "-").replace(']', "")
    }
}

/// Where a kind keeps backends in its spec: (field path, JSON pointer, rule) of each.
fn locations(kind: Kind, spec: &Value) -> Vec<(String, String, Option<usize>)> {
    let count = |v: Option<&Value>| v.and_then(Value::as_array).map_or(0, Vec::len);
    match kind {
        Kind::HttpRoute => (0..count(spec.get("rules")))
            .flat_map(|i| {
                (0..count(spec["rules"][i].get("backendRefs"))).map(move |j| {
                    (
                        format!("spec.rules[{i}].backendRefs[{j}]"),
                        format!("/rules/{i}/backendRefs/{j}"),
                        Some(i),
                    )
                })
            })
            .collect(),
        Kind::TcpRoute => (0..count(spec.get("backendRefs")))
            .map(|j| (format!("spec.backendRefs[{j}]"), format!("/backendRefs/{j}"), None))
            .collect(),
        _ => Vec::new(),
    }
}

/// The backends of a stored spec (none for kinds without backends).
pub fn backends(kind: Kind, spec: &Value) -> Vec<Backend> {
    locations(kind, spec)
        .into_iter()
        .filter_map(|(path, pointer, rule)| {
            let b = spec.pointer(&pointer)?;
            let tags = b["tags"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ");
            let weight = match &b["weight"] {
                Value::Null => "1".to_owned(),
                w => w.to_string(),
            };
            Some(Backend {
                path,
                rule,
                service: b["service"].as_str().unwrap_or_default().to_owned(),
                tags,
                weight,
            })
        })
        .collect()
}

/// `spec` with the weights typed into the form (`field`: an input's value by name). A
/// weight that is not a whole number goes in as text, for the model to name what is wrong.
pub fn apply<'a>(kind: Kind, spec: &Value, field: impl Fn(&str) -> Option<&'a str>) -> Value {
    let mut out = spec.clone();
    for (path, pointer, _) in locations(kind, spec) {
        let Some(typed) = field(&format!("{path}.weight")).map(str::trim) else { continue };
        let weight = typed.parse::<i64>().map_or_else(|_| Value::from(typed), Value::from);
        if let Some(b) = out.pointer_mut(&pointer).and_then(Value::as_object_mut) {
            b.insert("weight".into(), weight);
        }
    }
    out
}

/// The backends with the values typed into the form, for showing it again.
pub fn typed<'a>(mut backends: Vec<Backend>, field: impl Fn(&str) -> Option<&'a str>) -> Vec<Backend> {
    for b in &mut backends {
        if let Some(typed) = field(&b.weight_field()) {
            b.weight = typed.to_owned();
        }
    }
    backends
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route() -> Value {
        json!({ "targetRef": { "service": "reviews" }, "rules": [
            { "backendRefs": [{ "service": "reviews", "tags": { "version": "v2" }, "weight": 1 }] },
            { "backendRefs": [
                { "service": "reviews", "tags": { "version": "v1" }, "weight": 50 },
                { "service": "reviews", "tags": { "version": "v2" }, "weight": 50 } ] } ] })
    }

    #[test]
    fn every_backend_of_every_rule_is_a_field_named_by_its_path() {
        let b = backends(Kind::HttpRoute, &route());
        let fields: Vec<String> = b.iter().map(Backend::weight_field).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].backendRefs[0].weight",
                "spec.rules[1].backendRefs[0].weight",
                "spec.rules[1].backendRefs[1].weight"
            ]
        );
        assert_eq!(b[1].tags, "version=v1");
        assert_eq!(b[2].weight, "50");
        assert_eq!(b[2].weight_id(), "spec-rules-1-backendRefs-1-weight");
    }

    #[test]
    fn typed_weights_replace_the_stored_ones_and_text_stays_text() {
        let typed = |name: &str| match name {
            "spec.rules[1].backendRefs[0].weight" => Some("75"),
            "spec.rules[1].backendRefs[1].weight" => Some(" x "),
            _ => None,
        };
        let out = apply(Kind::HttpRoute, &route(), typed);
        assert_eq!(out["rules"][1]["backendRefs"][0]["weight"], 75);
        assert_eq!(out["rules"][1]["backendRefs"][1]["weight"], "x");
        assert_eq!(out["rules"][0], route()["rules"][0]);
    }

    #[test]
    fn a_tcp_route_has_one_list_and_other_kinds_none() {
        let spec =
            json!({ "targetRef": { "service": "db" }, "backendRefs": [{ "service": "db", "weight": 1 }] });
        assert_eq!(backends(Kind::TcpRoute, &spec)[0].path, "spec.backendRefs[0]");
        assert!(backends(Kind::Service, &json!({ "ports": [] })).is_empty());
    }
}
