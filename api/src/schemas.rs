//! The component schemas of the OpenAPI document that operations name by reference: the
//! envelope of every configuration kind (from the kind table, around the model's derived
//! spec schemas), the typed response bodies operations name by `body = ref(…)` (derived
//! from the handlers' body types), and the few response bodies not yet typed. Request
//! bodies are checked against these same schemas (`schema_check`).

use std::collections::BTreeMap;
use trellis_model::telemetry::DropReason;

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
/// (`body = ref("#/components/schemas/<name>")`): derived from the handlers' types, or
/// written here for those that handlers still write with `json!`.
fn response_schemas(schemas: &mut BTreeMap<String, Value>) {
    schemas
        .insert("SpiffeBundle".into(), json!({ "type": "object", "description": "SPIFFE bundle (JWK Set)" }));
    observe_schemas(schemas);
    telemetry_status_schemas(schemas);
    traffic_event_schemas(schemas);
}

fn traffic_event_schemas(schemas: &mut BTreeMap<String, Value>) {
    let number = json!({"type": "number"});
    let integer = json!({"type": "integer"});
    let event = json!({
        "type": "object",
        "required": ["id", "kind", "minute", "source", "destination", "evidence", "detectedAt"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "kind": {"type": "string", "enum": ["new-caller", "denied-burst", "rate-jump", "error-rate-jump"]},
            "minute": {"type": "string", "format": "date-time", "description": "The start of the minute it happened in"},
            "source": {"type": ["string", "null"], "description": "The caller; null for a denied burst (its callers are in the evidence)"},
            "destination": {"type": "string"},
            "evidence": {"type": "object", "required": ["kind"],
                "description": "The figures that triggered it. new-caller: calls, lookBackDays, knownCallers, knownCallersTotal; denied-burst: denials, recentMedian, threshold, recentMinutes, callers [{source, denials}]; rate-jump: direction (up, down), callsPerMinute, recentMedian, recentMin, recentMax, threshold, historyMinutes; error-rate-jump: errorRate, requests, failures, recentMedian, recentMax, threshold, historyMinutes",
                "properties": {
                    "kind": {"type": "string"}, "calls": integer, "lookBackDays": number,
                    "knownCallers": {"type": "array", "items": {"type": "string"}}, "knownCallersTotal": integer,
                    "denials": integer, "recentMedian": number, "threshold": number, "recentMinutes": integer,
                    "callers": {"type": "array", "items": {"type": "object", "properties": {
                        "source": {"type": ["string", "null"]}, "denials": integer}}},
                    "direction": {"type": "string", "enum": ["up", "down"]}, "callsPerMinute": integer,
                    "recentMin": integer, "recentMax": number, "historyMinutes": integer,
                    "errorRate": number, "requests": integer, "failures": integer,
                }},
            "detectedAt": {"type": "string", "format": "date-time"},
        },
    });
    schemas.insert(
        "TrafficEventPage".into(),
        json!({
            "type": "object",
            "required": ["mesh", "items"],
            "properties": {
                "mesh": {"type": "string"}, "items": {"type": "array", "items": event},
                "nextCursor": {"type": ["string", "null"], "description": "Pass as cursor for the next page; null on the last"},
            },
        }),
    );
    schemas.insert(
        "DraftAccessPolicy".into(),
        json!({
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string", "enum": ["AccessPolicy"]},
                "metadata": {"type": "object", "required": ["name", "mesh"],
                    "properties": {"name": {"type": "string"}, "mesh": {"type": "string"}}},
                "spec": r("AccessPolicySpec"),
            },
        }),
    );
}

fn telemetry_status_schemas(schemas: &mut BTreeMap<String, Value>) {
    schemas.insert(
        "TelemetryStatus".into(),
        json!({
            "type": "object",
            "required": ["mesh", "windowSeconds", "since", "droppedTotal", "dropped"],
            "properties": {
                "mesh": {"type": "string"},
                "windowSeconds": {"type": "integer"},
                "since": {"type": "string", "format": "date-time", "description": "The start of the first minute counted"},
                "droppedTotal": {"type": "integer", "minimum": 0},
                "dropped": {"type": "array", "description": "Items not stored, by reason; reasons with none are left out",
                    "items": {"type": "object", "required": ["reason", "items"], "properties": {
                        "reason": {"type": "string", "enum": DropReason::ALL.map(DropReason::as_str)},
                        "items": {"type": "integer", "minimum": 0},
                    }}},
            },
        }),
    );
}

fn observe_schemas(schemas: &mut BTreeMap<String, Value>) {
    add::<crate::observe::Topology>(schemas);
    add::<crate::observe::ServiceMetrics>(schemas);
    add::<crate::config::AccessImpact>(schemas);
    add::<crate::observe::AccessLogPage>(schemas);
    add::<crate::observe::AccessLogWhy>(schemas);
}
