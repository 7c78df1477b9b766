//! A configuration document as a client sends it (`apiVersion`, `kind`, `metadata`, `spec`):
//! its writable part, checked against where it was sent. Read-only fields are accepted, so
//! that what a read returned can be written back, and ignored. Every front end (JSON over
//! REST, YAML in the console) parses documents here.

use serde::Deserialize;
use serde_json::Value;
use trellis_model::config::{self, FieldError, Labels};

use crate::{API_VERSION, AppError, Document};

/// The writable part of a document.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Value,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<Value>,
}

/// A document's metadata: its name, mesh and labels; the rest is read-only.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mesh: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    #[allow(dead_code)]
    generation: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    revision: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    created_at: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    updated_at: Option<Value>,
}

impl Envelope {
    /// Parses a document of `kind` sent to the address of `name` (when it names one) in
    /// `mesh` (for mesh-scoped kinds); a field that contradicts the address is an error.
    pub fn parse(
        body: Value,
        kind: &str,
        name: Option<&str>,
        mesh: Option<&str>,
    ) -> Result<Envelope, AppError> {
        if !body.is_object() {
            return Err(AppError::invalid_field("(body)", "must be an object with a spec"));
        }
        let env: Envelope = serde_path_to_error::deserialize(body).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "(body)".to_owned() } else { path };
            AppError::invalid(vec![fe(&field, e.into_inner().to_string())])
        })?;
        let mut errors = Vec::new();
        if let Some(v) = &env.api_version
            && v != API_VERSION
        {
            errors.push(fe("apiVersion", format!("must be {API_VERSION:?}")));
        }
        if let Some(k) = &env.kind
            && k != kind
        {
            errors.push(fe("kind", format!("must be {kind:?} at this URL")));
        }
        if let (Some(n), Some(want)) = (&env.metadata.name, name)
            && n != want
        {
            errors.push(fe("metadata.name", format!("must match the name in the URL, {want:?}")));
        }
        if let (Some(m), Some(want)) = (&env.metadata.mesh, mesh)
            && m != want
        {
            errors.push(fe("metadata.mesh", format!("must match the mesh in the URL, {want:?}")));
        }
        if let Err(e) = config::check_labels("metadata.labels", &env.metadata.labels) {
            errors.extend(e);
        }
        if errors.is_empty() { Ok(env) } else { Err(AppError::invalid(errors)) }
    }

    /// What a resource write takes from the document.
    pub fn document(self) -> Document {
        Document { labels: self.metadata.labels, spec: self.spec }
    }
}

fn fe(field: &str, message: String) -> FieldError {
    FieldError { field: field.to_owned(), message }
}
