//! Request bodies are checked against the same JSON Schemas the OpenAPI document
//! publishes, so that what the document says is refused is refused — with field paths.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::error::ValidationErrorKind;
use serde_json::{Value, json};
use trellis_model::config::{FieldError, Kind};

use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::body::from_value;
use crate::error::ApiError;

/// Most problems reported for one body.
const MAX_ERRORS: usize = 20;

/// A validator of the schema `name` among `schemas` (every schema it references).
fn compile(name: &str, schemas: Value) -> jsonschema::Validator {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": { "schemas": schemas },
    });
    jsonschema::draft202012::new(&schema).expect("the published schemas compile")
}

/// The documents of every configuration kind and of meshes (`crate::schemas`).
fn document_validators() -> &'static HashMap<String, jsonschema::Validator> {
    static VALIDATORS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let schemas = json!(crate::schemas::components());
        Kind::ALL
            .iter()
            .map(|k| k.name())
            .chain(["Mesh"])
            .map(|name| (name.to_owned(), compile(name, schemas.clone())))
            .collect()
    })
}

/// Checks a configuration document (`kind` is `Mesh` or a kind's name) against its
/// published schema.
pub fn check(kind: &str, body: &Value) -> Result<(), ApiError> {
    report(document_validators().get(kind).expect("a published schema"), body)
}

/// Checks `body` against the schema `T` derives (the one its operations publish), then
/// reads it as a `T`.
pub fn parse<T: ToSchema + DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let name = T::name();
    let validator = {
        let mut cache = VALIDATORS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(name.clone().into_owned())
            .or_insert_with(|| {
                let mut schemas = vec![(name.clone().into_owned(), T::schema())];
                T::schemas(&mut schemas);
                let schemas: serde_json::Map<String, Value> = schemas
                    .into_iter()
                    .map(|(n, s)| (n, serde_json::to_value(s).expect("schemas serialize")))
                    .collect();
                Arc::new(compile(&name, Value::Object(schemas)))
            })
            .clone()
    };
    report(&validator, &body)?;
    from_value(body)
}

fn report(validator: &jsonschema::Validator, body: &Value) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for e in validator.iter_errors(body).take(MAX_ERRORS) {
        let at = field_path(body, e.instance_path().as_str());
        match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for u in unexpected {
                    let field = if at == "(body)" { u.clone() } else { format!("{at}.{u}") };
                    errors.push(FieldError { field, message: "unknown field".into() });
                }
            }
            _ => errors.push(FieldError { field: at, message: e.masked().to_string() }),
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(errors)) }
}

/// Turns a JSON pointer into our field-path form (`spec.rules[0].weight`), using the
/// instance to tell array indexes from object keys.
fn field_path(root: &Value, pointer: &str) -> String {
    let mut out = String::new();
    let mut at = root;
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        match at {
            Value::Array(items) => {
                out.push_str(&format!("[{seg}]"));
                at = seg.parse::<usize>().ok().and_then(|i| items.get(i)).unwrap_or(&Value::Null);
            }
            _ => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&seg);
                at = at.get(&seg).unwrap_or(&Value::Null);
            }
        }
    }
    if out.is_empty() { "(body)".into() } else { out }
}

/// Test support: `body` conforms to the component schema `name` as the OpenAPI document
/// publishes it (what a client generated from the document expects).
#[cfg(test)]
pub(crate) fn assert_published(name: &str, body: &Value) {
    let validator = compile(name, crate::openapi::document()["components"]["schemas"].clone());
    let errors: Vec<String> =
        validator.iter_errors(body).map(|e| format!("{}: {e}", e.instance_path().as_str())).collect();
    assert!(errors.is_empty(), "{name}: {errors:?} in {body}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_shapes_are_refused_with_paths() {
        let e = check("Mesh", &json!({"metadata": [null, null], "spec": {}})).unwrap_err();
        assert_eq!(e.errors[0].field, "metadata");
        let e = check("HTTPRoute", &json!({"spec": {"targetRef": {"service": "a"}, "rules": [{"backendRefs": [{"service": "a", "weight": "x"}]}]}}))
            .unwrap_err();
        assert_eq!(e.errors[0].field, "spec.rules[0].backendRefs[0].weight");
        let e = check("Service", &json!({"spec": {"ports": []}, "colour": 1})).unwrap_err();
        assert_eq!(e.errors[0].field, "colour");
        check("Service", &json!({"spec": {"ports": [{"port": 80, "protocol": "http"}]}})).unwrap();
    }
}
