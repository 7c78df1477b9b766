//! Documents as the console shows and takes them: YAML, the form `trellis apply -f` reads.

use serde_json::{Value, json};
use trellis_control::{API_VERSION, AppError};
use trellis_model::config::Labels;

/// Largest YAML document the console accepts (the REST API's body bound is larger; a
/// document typed into a page is far smaller than this).
pub const MAX_YAML: usize = 256 * 1024;

/// The form field that carries a document's YAML.
pub const YAML_FIELD: &str = "yaml";

/// Parses one YAML document; what is wrong is an error on the YAML field.
pub fn parse(text: &str) -> Result<Value, AppError> {
    if text.len() > MAX_YAML {
        return Err(AppError::invalid_field(YAML_FIELD, format!("must be at most {MAX_YAML} bytes")));
    }
    if text.contains('\0') {
        return Err(AppError::invalid_field(YAML_FIELD, "must not contain NUL characters"));
    }
    serde_yaml::from_str(text).map_err(|e| AppError::invalid_field(YAML_FIELD, format!("is not YAML: {e}")))
}

/// The writable document of a resource, as YAML: what its editor starts from.
pub fn document(kind: &str, name: &str, mesh: &str, labels: &Labels, spec: &Value) -> String {
    let mut metadata = json!({ "name": name, "mesh": mesh });
    if !labels.is_empty() {
        metadata["labels"] = json!(labels);
    }
    let doc = json!({ "apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec });
    serde_yaml::to_string(&doc).expect("JSON values are YAML")
}

/// Any value as YAML, for reading (a proxy's configuration).
pub fn show(value: &Value) -> String {
    serde_yaml::to_string(value).expect("JSON values are YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_back_as_itself() {
        let spec = json!({ "targetRef": { "service": "reviews" }, "rules": [{ "backendRefs": [{ "service": "reviews", "weight": 75 }] }] });
        let text = document("HTTPRoute", "reviews", "shop", &Labels::new(), &spec);
        let back = parse(&text).unwrap();
        assert_eq!(back["spec"], spec);
        assert_eq!(back["metadata"], json!({ "name": "reviews", "mesh": "shop" }));
    }

    #[test]
    fn bad_yaml_is_an_error_on_the_yaml_field() {
        let e = parse("spec: [unclosed").unwrap_err();
        assert_eq!(e.errors[0].field, YAML_FIELD);
        let e = parse(&"#".repeat(MAX_YAML + 1)).unwrap_err();
        assert!(e.errors[0].message.contains("at most"));
    }
}
