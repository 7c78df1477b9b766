//! The component schemas of the OpenAPI document that are not an operation's own derive:
//! the envelope of every configuration kind (from the kind table, around the model's derived
//! spec schemas), and the response bodies the operations name in `body = ref(…)` — derived
//! from the handlers' body types where they are typed, written here where not yet. Request
//! bodies are checked against these same schemas (`schema_check`).

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
/// (`body = ref("#/components/schemas/<name>")`).
fn response_schemas(schemas: &mut BTreeMap<String, Value>) {
    add::<trellis_ca::SpiffeBundle>(schemas);
    observe_schemas(schemas);
    telemetry_status_schemas(schemas);
    traffic_event_schemas(schemas);
}

fn traffic_event_schemas(schemas: &mut BTreeMap<String, Value>) {
    add::<crate::traffic_events::TrafficEventPageBody>(schemas);
    add::<crate::traffic_events::DraftAccessPolicyBody>(schemas);
}

fn telemetry_status_schemas(schemas: &mut BTreeMap<String, Value>) {
    add::<crate::telemetry_status::TelemetryStatusBody>(schemas);
}

fn observe_schemas(schemas: &mut BTreeMap<String, Value>) {
    let golden = json!({
        "type": "object",
        "description": "Golden metrics over the window; latency quantiles are within 9.05 % of the true value",
        "required": ["requests", "rps", "successRate", "p50Ms", "p95Ms", "p99Ms", "tcpConnections", "bytes"],
        "properties": {
            "requests": {"type": "integer"}, "rps": {"type": "number"},
            "successRate": {"type": ["number", "null"], "description": "Non-5xx share; null without requests"},
            "p50Ms": {"type": ["number", "null"]}, "p95Ms": {"type": ["number", "null"]}, "p99Ms": {"type": ["number", "null"]},
            "tcpConnections": {"type": "integer"}, "bytes": {"type": "integer"},
        },
    });
    let edge = json!({
        "type": "object",
        "required": ["source", "destination", "metrics"],
        "properties": {"source": {"type": "string"}, "destination": {"type": "string"}, "metrics": golden},
    });
    let mut topology_edge = edge.clone();
    topology_edge["required"] = json!(["source", "destination", "metrics", "subsets", "merged"]);
    topology_edge["properties"]["merged"] = json!({"type": "integer", "description": "Service edges merged into this one (1 between two services)"});
    topology_edge["properties"]["subsets"] = json!({
        "type": "array",
        "description": "How the edge's requests split between subsets of the destination (a route's weighted backends, e.g. versions), in tag order",
        "items": {"type": "object", "required": ["tags", "requests", "share"], "properties": {
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "requests": {"type": "integer"},
            "share": {"type": ["number", "null"], "description": "Of every request on the edge; null without requests"},
        }},
    });
    schemas.insert(
        "Topology".into(),
        json!({
            "type": "object",
            "description": "Over 150 services, services are grouped by name prefix (`billing-api` is in `billing-*`) and past 150 groups the least busy share the node `(other)`; an edge between two nodes merges exactly the service edges it stands for (calls inside a group are its loop), so the edges' requests add up to every call the filter kept",
            "required": ["mesh", "windowSeconds", "resolutionSeconds", "services", "grouped", "nodes", "edges"],
            "properties": {
                "mesh": {"type": "string"}, "windowSeconds": {"type": "integer"}, "resolutionSeconds": {"type": "integer", "description": "The finest bucket width the window was read in"},
                "services": {"type": "integer", "description": "Services at either end of an edge the filter kept"},
                "grouped": {"type": "boolean", "description": "Were services grouped to stay within 150 nodes?"},
                "nodes": {"type": "array", "items": {"type": "object", "required": ["name", "kind", "service", "group", "members", "metrics"],
                    "properties": {
                        "name": {"type": "string", "description": "The service, `<group>-*` for a group, or `(other)`; what edges name"},
                        "kind": {"type": "string", "enum": ["service", "group", "other"]},
                        "service": {"type": ["string", "null"], "description": "The service, for a service's node"},
                        "group": {"type": ["string", "null"], "description": "The name prefix, for a group's node (`?group=` opens it)"},
                        "members": {"type": "integer", "description": "Services the node stands for"},
                        "metrics": golden}}},
                "edges": {"type": "array", "items": topology_edge},
            },
        }),
    );
    let verdict = json!({
        "type": "object", "required": ["verdict"],
        "properties": {
            "verdict": {"type": "string", "enum": ["allowed", "dependsOnRequest", "denied"],
                "description": "dependsOnRequest: rules with request conditions (methods, paths, headers) decide call by call"},
            "rule": {"type": "string", "description": "The deciding rule, `<policy>/rules/<index>`, or `default-deny`"},
        },
    });
    schemas.insert(
        "AccessImpact".into(),
        json!({
            "type": "object",
            "required": ["mesh", "policy", "windowSeconds", "calls", "edgesChanged", "edges"],
            "properties": {
                "mesh": {"type": "string"}, "policy": {"type": "string"}, "windowSeconds": {"type": "integer"},
                "calls": {"type": "object", "required": ["newlyDenied", "newlyAllowed", "dependsOnRequest"], "properties": {
                    "newlyDenied": {"type": "integer"}, "newlyAllowed": {"type": "integer"}, "dependsOnRequest": {"type": "integer"}}},
                "edgesChanged": {"type": "integer"},
                "edges": {"type": "array", "items": {"type": "object", "required": ["source", "destination", "calls", "before", "after"],
                    "properties": {"source": {"type": "string"}, "destination": {"type": "string"}, "calls": {"type": "integer"},
                        "before": verdict, "after": verdict}}},
            },
        }),
    );
    schemas.insert(
        "ServiceMetrics".into(),
        json!({
            "type": "object",
            "required": ["mesh", "service", "windowSeconds", "resolutionSeconds", "inbound", "callers", "callees"],
            "properties": {
                "mesh": {"type": "string"}, "service": {"type": "string"},
                "windowSeconds": {"type": "integer"}, "resolutionSeconds": {"type": "integer", "description": "The finest bucket width the window was read in"},
                "inbound": golden, "callers": {"type": "array", "items": edge}, "callees": {"type": "array", "items": edge},
            },
        }),
    );
    let decision = json!({
        "type": "object",
        "description": "What decided the call",
        "required": ["kind", "summary"],
        "properties": {
            "kind": {"type": "string", "enum": ["deny-rule", "default-deny", "no-mtls-identity", "policy", "audit-rule", "allowed"]},
            "policy": {"type": ["string", "null"], "description": "The AccessPolicy whose rule decided (deny-rule, audit-rule)"},
            "rule": {"type": ["integer", "null"], "description": "The rule's index in spec.rules"},
            "summary": {"type": "string"},
        },
    });
    let text = json!({"type": ["string", "null"]});
    let access_entry = json!({
        "type": "object",
        "required": ["id", "receivedAt", "loggedAt", "reporter", "direction", "protocol", "outcome", "source", "destination", "decision"],
        "properties": {
            "id": {"type": "string", "format": "uuid"}, "receivedAt": {"type": "string"}, "loggedAt": {"type": "string"},
            "reporter": {"type": "string", "description": "The service of the proxy that logged it (from its certificate)"},
            "direction": {"type": "string", "enum": ["inbound", "outbound"]},
            "protocol": {"type": "string", "enum": ["http", "tcp"]},
            "outcome": {"type": "string", "enum": ["denied", "error", "audited", "sampled"]},
            "source": {"type": "object", "properties": {"service": text, "identity": text, "address": text}},
            "destination": {"type": "object", "properties": {"service": text, "identity": text}},
            "method": text, "authority": text, "path": text, "status": {"type": ["integer", "null"]},
            "rbacPolicy": text, "auditPolicy": text, "durationMs": {"type": ["number", "null"]},
            "meshRevision": {"type": ["integer", "null"], "description": "The mesh's revision when the entry was stored"},
            "decision": decision,
        },
    });
    schemas.insert(
        "AccessLogPage".into(),
        json!({
            "type": "object",
            "required": ["mesh", "items"],
            "properties": {
                "mesh": {"type": "string"}, "items": {"type": "array", "items": access_entry},
                "nextCursor": {"type": ["string", "null"], "description": "Pass as cursor for the next page; null on the last"},
            },
        }),
    );
    schemas.insert(
        "AccessLogWhy".into(),
        json!({
            "type": "object",
            "required": ["entry", "decision"],
            "properties": {
                "entry": access_entry, "decision": decision,
                "meshRevisionAtEntry": {"type": ["integer", "null"]},
                "rule": {"type": ["object", "null"], "description": "The deciding rule as it is now",
                    "required": ["policy", "rule", "exists", "changedSinceEntry"],
                    "properties": {
                        "policy": {"type": "string"}, "rule": {"type": "integer"}, "exists": {"type": "boolean"},
                        "ruleNow": {"type": ["object", "null"]}, "policyRevision": {"type": ["integer", "null"]},
                        "changedSinceEntry": {"type": "boolean", "description": "The policy was written or deleted after the entry was stored"},
                    }},
            },
        }),
    );
}
