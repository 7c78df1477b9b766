//! The component schemas of the OpenAPI document that operations name by reference: the
//! envelope of every configuration kind (from the kind table, around the model's derived
//! spec schemas), and the response bodies operations name by `body = ref(…)`, derived from
//! the types that build them. Request bodies are checked against these same schemas
//! (`schema_check`).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use trellis_model::config::{
    AccessPolicySpec, CircuitBreakerSpec, FieldError, HealthCheckSpec, HttpRouteSpec, Kind, MeshSpec,
    RateLimitSpec, ServiceSpec, TcpRouteSpec,
};
use utoipa::ToSchema;

use trellis_control::API_VERSION;

fn add<T: ToSchema>(schemas: &mut BTreeMap<String, Value>) {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    nested.push((T::name().into_owned(), T::schema()));
    for (name, schema) in nested {
        schemas.insert(name, serde_json::to_value(schema).expect("schemas serialize"));
    }
}

fn spec_schema(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "ServiceSpec",
        Kind::AccessPolicy => "AccessPolicySpec",
        Kind::HttpRoute => "HttpRouteSpec",
        Kind::TcpRoute => "TcpRouteSpec",
        Kind::CircuitBreaker => "CircuitBreakerSpec",
        Kind::HealthCheck => "HealthCheckSpec",
        Kind::RateLimit => "RateLimitSpec",
    }
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Every component schema that is not an operation's own derive, by name.
pub(crate) fn components() -> BTreeMap<String, Value> {
    let mut schemas = BTreeMap::new();
    add::<ServiceSpec>(&mut schemas);
    add::<AccessPolicySpec>(&mut schemas);
    add::<HttpRouteSpec>(&mut schemas);
    add::<TcpRouteSpec>(&mut schemas);
    add::<CircuitBreakerSpec>(&mut schemas);
    add::<HealthCheckSpec>(&mut schemas);
    add::<RateLimitSpec>(&mut schemas);
    add::<MeshSpec>(&mut schemas);
    add::<FieldError>(&mut schemas);
    add::<trellis_model::Role>(&mut schemas);

    let label_map = json!({ "type": "object", "additionalProperties": { "type": "string" } });
    schemas.insert(
        "Metadata".into(),
        json!({
            "type": "object",
            "description": "Name and labels are written; the rest is read-only and ignored on input.",
            "properties": {
                "name": { "type": "string" },
                "mesh": { "type": "string" },
                "labels": label_map,
                "generation": { "type": "integer" },
                "version": { "type": "string" },
                "revision": { "type": "integer" },
                "createdAt": { "type": "string" },
                "updatedAt": { "type": "string" },
            },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Status".into(),
        json!({
            "type": "object",
            "properties": {
                "observedGeneration": { "type": "integer" },
                "revision": { "type": "integer" },
                "propagation": {
                    "description": "How far the resource's last write has reached the online proxies it configures (null before its write made a mesh revision)",
                    "oneOf": [r("Propagation"), {"type": "null"}],
                },
            },
        }),
    );
    add::<trellis_control::Propagation>(&mut schemas);
    let mut kinds: Vec<(&str, String)> =
        Kind::ALL.iter().map(|k| (k.name(), spec_schema(*k).to_owned())).collect();
    kinds.push(("Mesh", "MeshSpec".to_owned()));
    for (kind, spec) in &kinds {
        schemas.insert(
            (*kind).to_owned(),
            json!({
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "apiVersion": { "type": "string", "enum": [API_VERSION] },
                    "kind": { "type": "string", "enum": [kind] },
                    "metadata": r("Metadata"),
                    "spec": r(spec),
                    "status": r("Status"),
                },
                "additionalProperties": false,
            }),
        );
        schemas.insert(
            format!("{kind}List"),
            json!({
                "type": "object",
                "required": ["items", "nextCursor"],
                "properties": {
                    "items": { "type": "array", "items": r(kind) },
                    "nextCursor": { "type": ["string", "null"] },
                },
            }),
        );
    }

    response_schemas(&mut schemas);
    schemas
}

/// The bodies of responses, named so that operations reference them
/// (`body = ref("#/components/schemas/<name>")`), derived from the types that build them.
fn response_schemas(schemas: &mut BTreeMap<String, Value>) {
    add::<trellis_ca::SpiffeBundle>(schemas);
    add::<crate::observe::Topology>(schemas);
    add::<crate::observe::ServiceMetrics>(schemas);
    add::<crate::observe::AccessImpact>(schemas);
    add::<crate::observe::AccessLogPage>(schemas);
    add::<crate::observe::AccessLogWhy>(schemas);
    add::<crate::telemetry_status::TelemetryStatusBody>(schemas);
    add::<crate::traffic_events::TrafficEventPageBody>(schemas);
    add::<crate::traffic_events::DraftAccessPolicyBody>(schemas);
}
