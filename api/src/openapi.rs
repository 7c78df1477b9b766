//! The OpenAPI 3.1 document, assembled: the operations from the handlers' `#[utoipa::path]`
//! annotations through the router (`routes::api`), one path per resource kind from each
//! `{kind}` template, the reusable error responses (`error`), the component schemas
//! (`schemas`, with the model's derived spec schemas), and what the whole document says
//! once: its info, servers and security schemes.

use serde_json::Value;
use trellis_model::config::Kind;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

/// What the document says once; the operations come from the router.
#[derive(OpenApi)]
#[openapi(
    info(title = "Trellis API", description = "Meshes and their configuration. Errors are application/problem+json (RFC 9457) with field paths."),
    servers((url = "/")),
    security(("bearer" = []), ("session" = [])),
    components(schemas(crate::error::Problem)),
    modifiers(&SecuritySchemes),
)]
struct Document;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", bearer("An API token, trls_pat_…"));
        components.add_security_scheme(
            "joinToken",
            bearer("A join token, trls_join_…: accepted only by POST /api/v1/svids"),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::session::SESSION_COOKIE,
                "A console session (GET /auth/login). Every write with it also needs the header x-csrf-token (see GET /api/v1/me).",
            ))),
        );
        components.responses.extend(crate::error::problem_responses());
    }
}

/// The whole document.
pub fn document() -> Value {
    let api = Document::openapi().merge_from(crate::routes::api().into_openapi());
    let mut doc = serde_json::to_value(api).expect("the document serializes");
    for (name, schema) in crate::schemas::components() {
        doc["components"]["schemas"][name] = schema;
    }
    per_kind(&mut doc["paths"]);
    request_bodies(&mut doc["paths"]);
    doc
}

/// A request body is required unless its annotation says `Option<T>`. utoipa marks only
/// typed bodies required (the configuration documents are named by reference,
/// `request_body = ref(…)`), and writes `Option<T>` as `oneOf: [T, null]`, where we mean
/// "T, or no body at all": JSON `null` is no `T`.
fn request_bodies(paths: &mut Value) {
    for item in paths.as_object_mut().into_iter().flat_map(|p| p.values_mut()) {
        for op in item.as_object_mut().into_iter().flat_map(|i| i.values_mut()) {
            let Some(body) = op.get_mut("requestBody") else { continue };
            let mut optional = false;
            for media in body["content"].as_object_mut().into_iter().flat_map(|c| c.values_mut()) {
                let some = media["schema"]["oneOf"]
                    .as_array()
                    .and_then(|o| o.iter().find(|s| s["type"] != "null").cloned().filter(|_| o.len() == 2));
                if let Some(schema) = some {
                    media["schema"] = schema;
                    optional = true;
                }
            }
            body["required"] = Value::Bool(!optional);
        }
    }
}

/// Replaces each path with a `{kind}` segment by one path per resource kind: the segment
/// becomes the kind's plural, `{Kind}` its name (in summaries and schema references) and
/// `{KindId}` the name as operation ids spell it.
fn per_kind(paths: &mut Value) {
    let paths = paths.as_object_mut().expect("paths are an object");
    let templates: Vec<String> = paths.keys().filter(|p| p.contains("/{kind}")).cloned().collect();
    for template in templates {
        let item = paths.remove(&template).expect("listed");
        let text = item.to_string();
        for kind in Kind::ALL {
            let name = kind.name();
            let id = name.replace("HTTP", "Http").replace("TCP", "Tcp");
            let text = text.replace("{KindId}", &id).replace("{Kind}", name);
            let item: Value = serde_json::from_str(&text).expect("still JSON");
            paths.insert(template.replace("{kind}", kind.plural()), item);
        }
    }
}

pub(crate) async fn serve() -> axum::Json<Value> {
    axum::Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50);
        for r in all {
            let ptr = r.strip_prefix('#').expect("local refs only");
            assert!(doc.pointer(ptr).is_some(), "dangling {r}");
        }
    }

    /// Every operation has an id of its own, and every path parameter of a path is declared
    /// by each of its operations (a template left unexpanded would show here).
    #[test]
    fn operations_are_complete() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            assert!(!path.contains("{kind}") && !path.contains("{Kind"), "{path}");
            let segments: Vec<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            for (method, op) in item.as_object().expect("a path item") {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no id"));
                assert!(ids.insert(id.to_owned()), "{id} twice");
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, segments, "{method} {path}");
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{id}");
            }
        }
        assert!(ids.len() > 60, "{}", ids.len());
    }

    /// The committed copy (`api/openapi.json`) is what the code generates: a change to the
    /// API surface must update it (`cargo run -- openapi > api/openapi.json`).
    #[test]
    fn the_committed_document_has_not_drifted() {
        let committed: Value =
            serde_json::from_str(include_str!("../openapi.json")).expect("api/openapi.json is JSON");
        assert!(
            committed == document(),
            "api/openapi.json is stale: regenerate it with `cargo run -q -- openapi > api/openapi.json`"
        );
    }

    /// Defaults the annotations spell as literals are the contract's.
    #[test]
    fn the_documented_defaults_are_the_contracts() {
        let doc = document();
        for kind in ["grpc", "envoy"] {
            let op = &doc["paths"][format!("/api/v1/orgs/{{org}}/meshes/{{mesh}}/bootstrap/{kind}")]["get"];
            let cert_dir =
                op["parameters"].as_array().expect("parameters").iter().find(|p| p["name"] == "certDir");
            assert_eq!(
                cert_dir.expect("certDir")["schema"]["default"],
                json!(crate::bootstrap::DEFAULT_CERT_DIR)
            );
        }
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        assert_eq!(document()["openapi"], json!("3.1.0"));
    }
}
