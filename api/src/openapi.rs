//! The OpenAPI 3.1 document, generated from the code: spec schemas come from the model
//! types (utoipa derives), operations from the same kind table the router uses.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use trellis_model::config::{
    AccessPolicySpec, CircuitBreakerSpec, EffectiveEntry, FieldError, HealthCheckSpec, HttpRouteSpec, Kind,
    MeshSpec, RateLimitSpec, ServiceSpec, TcpRouteSpec,
};
use utoipa::ToSchema;

use trellis_control::{API_VERSION, MAX_LIMIT};

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

fn problem_responses(codes: &[u16]) -> serde_json::Map<String, Value> {
    codes
        .iter()
        .map(|c| {
            let desc = match c {
                400 => "Malformed request (bad JSON, query parameters or headers)",
                401 => "No valid API token or session",
                403 => "The caller's role does not allow this, or a session write lacks its x-csrf-token",
                404 => "Not found (including another organization's objects)",
                405 => "Method not allowed on this path",
                409 => "Conflicts with existing data",
                412 => "If-Match does not name the current version",
                413 => "Body too large",
                415 => "Body is not application/json",
                422 => "Validation failed; `errors` names each field",
                _ => "Error",
            };
            (
                c.to_string(),
                json!({ "description": desc, "content": { "application/problem+json": { "schema": r("Problem") } } }),
            )
        })
        .collect()
}

fn ok(code: u16, desc: &str, schema: Value, etag: bool) -> (String, Value) {
    let mut resp = json!({ "description": desc, "content": { "application/json": { "schema": schema } } });
    if etag {
        resp["headers"] =
            json!({ "ETag": { "description": "The version, for If-Match", "schema": { "type": "string" } } });
    }
    (code.to_string(), resp)
}

fn op(id: &str, summary: &str, params: &[&str], success: Vec<(String, Value)>, errors: &[u16]) -> Value {
    let mut responses = problem_responses(errors);
    responses.extend(success);
    json!({
        "operationId": id,
        "summary": summary,
        "parameters": params.iter().map(|p| r_param(p)).collect::<Vec<_>>(),
        "responses": responses,
    })
}

fn r_param(p: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{p}") })
}

fn with_body(mut op: Value, schema: Value) -> Value {
    op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    op
}

const READ: &[u16] = &[400, 401, 403, 404];
const WRITE: &[u16] = &[400, 401, 403, 404, 409, 412, 413, 415, 422];

/// The whole document.
pub fn document() -> Value {
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
    add::<EffectiveEntry>(&mut schemas);
    add::<trellis_model::Role>(&mut schemas);

    let label_map = json!({ "type": "object", "additionalProperties": { "type": "string" } });
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": { "type": "string" },
                "title": { "type": "string" },
                "status": { "type": "integer" },
                "detail": { "type": "string" },
                "errors": { "type": "array", "items": r("FieldError") },
            },
        }),
    );
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
                "propagation": r("Propagation"),
            },
        }),
    );
    let rejection = json!({
        "type": "object",
        "required": ["type", "version", "error"],
        "properties": {
            "type": {"type": "string", "description": "The xDS resource type, e.g. RouteConfiguration"},
            "version": {"type": "string"}, "error": {"type": "string", "description": "The proxy's reason"},
            "at": {"type": ["string", "null"]},
        },
    });
    schemas.insert(
        "Propagation".into(),
        json!({
            "type": ["object", "null"],
            "description": "How far the resource's last write has reached the online proxies it configures (null before its write made a mesh revision)",
            "required": ["meshRevision", "proxies", "applied", "rejected", "pending", "errors", "summary"],
            "properties": {
                "meshRevision": {"type": "integer"},
                "proxies": {"type": "integer"}, "applied": {"type": "integer"},
                "rejected": {"type": "integer", "description": "Proxies that have not applied it and have a rejection outstanding"},
                "pending": {"type": "integer"},
                "errors": {"type": "array", "items": {"type": "string"}},
                "summary": {"type": "string", "description": "applied by N of M proxies; rejected by K: reason"},
                "wait": {
                    "type": "object",
                    "description": "Only when the write was sent with ?wait=: how the wait ended",
                    "required": ["outcome", "waitedMs", "timeoutMs", "notApplied", "summary"],
                    "properties": {
                        "outcome": {"type": "string", "enum": ["applied", "rejected", "timedOut"],
                            "description": "applied: by every proxy it configures; rejected: a proxy NACKed it; timedOut: proxies had neither applied nor rejected it when the wait ended"},
                        "waitedMs": {"type": "integer"}, "timeoutMs": {"type": "integer"},
                        "notApplied": {"type": "array", "maxItems": trellis_control::WAIT_SHOWN,
                            "description": "Proxies that have not applied it, rejecting ones first",
                            "items": {"type": "object", "required": ["service", "node", "state", "lastSeenAt"], "properties": {
                                "service": {"type": "string"}, "node": {"type": "string"},
                                "state": {"type": "string", "enum": ["rejected", "stale", "pending"],
                                    "description": "rejected: it NACKed this write; stale: not applied when the wait timed out; pending: on its way when another proxy's rejection ended the wait"},
                                "lastSeenAt": {"type": "string"},
                                "rejection": {"oneOf": [rejection, {"type": "null"}]},
                            }}},
                        "summary": {"type": "string"},
                    },
                },
            },
        }),
    );
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
    schemas.insert(
        "Token".into(),
        json!({
            "type": "object",
            "required": ["id", "name", "role", "createdAt"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "name": { "type": "string" },
                "role": r("Role"),
                "createdBy": { "type": "string" },
                "createdAt": { "type": "string" },
                "expiresAt": { "type": ["string", "null"] },
                "revokedAt": { "type": ["string", "null"] },
                "lastUsedAt": { "type": ["string", "null"] },
                "token": { "type": "string", "description": "The token itself: only in the response that creates it" },
            },
        }),
    );
    schemas.insert(
        "NewToken".into(),
        json!({
            "type": "object",
            "required": ["name", "role"],
            "properties": {
                "name": { "type": "string", "minLength": 1, "maxLength": 100 },
                "role": r("Role"),
                "expiresAt": { "type": ["string", "null"], "format": "date-time" },
            },
            "additionalProperties": false,
        }),
    );

    account_schemas(&mut schemas);
    ca_schemas(&mut schemas);

    let org = "/api/v1/orgs/{org}";
    let mut paths = serde_json::Map::new();
    account_paths(&mut paths);
    ca_paths(&mut paths);
    paths.insert(
        "/api/v1/me".into(),
        json!({ "get": op("getMe", "The caller: a token (its role and organization) or a session (the user, their organizations and roles, the CSRF token)", &[],
            vec![ok(200, "The caller", r("Me"), false)], &[401]) }),
    );
    paths.insert(
        org.into(),
        json!({
            "get": op("getOrg", "The organization and the caller's role", &["org"], vec![ok(200, "The organization", r("Organization"), false)], READ),
            "patch": with_body(op("updateOrg", "Change the organization's slug or name (owner, admin)", &["org"],
                vec![ok(200, "The organization", r("Organization"), false)], WRITE), r("OrgPatch")),
            "delete": op("deleteOrg", "Delete the organization and everything in it (owner): members, invitations, tokens, meshes, CAs, dataplanes; its xDS streams end, its slug and trust domains are freed; its audit trail is kept for the retention period, readable by no one through the API", &["org"],
                vec![("204".into(), json!({"description": "Deleted"}))], READ),
        }),
    );
    paths.insert(
        format!("{org}/tokens"),
        json!({
            "get": op("listTokens", "API tokens (never their secrets)", &["org"],
                vec![ok(200, "Tokens", json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": r("Token")}}}), false)], READ),
            "post": with_body(op("createToken", "Create an API token; the response shows it once", &["org"],
                vec![ok(201, "The token, with its secret", r("Token"), false)], WRITE), r("NewToken")),
        }),
    );
    paths.insert(
        format!("{org}/tokens/{{id}}"),
        json!({ "delete": op("revokeToken", "Revoke a token, on every replica at once", &["org", "id"],
            vec![ok(200, "The revoked token", r("Token"), false)], READ) }),
    );
    paths.insert(
        format!("{org}/audit-events"),
        json!({ "get": {
            "operationId": "listAuditEvents",
            "summary": "The audit log, newest first",
            "parameters": [
                r_param("org"), r_param("limit"),
                { "name": "cursor", "in": "query", "schema": { "type": "string" } },
                { "name": "actor", "in": "query", "schema": { "type": "string", "maxLength": 256 } },
                { "name": "action", "in": "query", "schema": { "type": "string", "maxLength": 256 } },
                { "name": "target", "in": "query", "description": "Target prefix", "schema": { "type": "string", "maxLength": 256 } },
                { "name": "since", "in": "query", "schema": { "type": "string", "format": "date-time" } },
            ],
            "responses": {
                "200": { "description": "A page of events", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["items", "nextCursor"],
                    "properties": {
                        "items": { "type": "array", "items": { "type": "object", "required": ["id", "at", "actor", "action", "target"] } },
                        "nextCursor": { "type": ["string", "null"] },
                    },
                } } } },
                "400": problem_responses(&[400])["400"], "401": problem_responses(&[401])["401"],
                "403": problem_responses(&[403])["403"], "404": problem_responses(&[404])["404"],
            },
        } }),
    );
    paths.insert(
        format!("{org}/meshes"),
        json!({ "get": op("listMeshes", "Meshes, by name", &["org", "limit", "cursor"], vec![ok(200, "A page of meshes", r("MeshList"), false)], READ) }),
    );
    paths.insert(
        format!("{org}/meshes/{{mesh}}"),
        json!({
            "get": op("getMesh", "A mesh", &["org", "mesh"], vec![ok(200, "The mesh", r("Mesh"), true)], READ),
            "put": with_body(op("putMesh", "Create or replace a mesh", &["org", "mesh", "ifMatch", "ifNoneMatch"],
                vec![ok(200, "Replaced", r("Mesh"), true), ok(201, "Created", r("Mesh"), true)], WRITE), r("Mesh")),
            "delete": op("deleteMesh", "Delete a mesh and everything in it", &["org", "mesh", "ifMatch"],
                vec![("204".into(), json!({"description": "Deleted"}))], &[400, 401, 403, 404, 412]),
        }),
    );
    paths.insert(
        format!("{org}/meshes/{{mesh}}/dataplanes"),
        json!({ "get": op("listDataplanes", "Proxies registered by their xDS streams, with their sync state", &["org", "mesh"],
            vec![ok(200, "Dataplanes", json!({
                "type": "object",
                "required": ["mesh", "revision", "items"],
                "properties": {
                    "mesh": {"type": "string"}, "revision": {"type": "integer"},
                    "items": {"type": "array", "items": {"type": "object", "required": ["id", "service", "nodeId", "online", "state", "sync"]}},
                },
            }), false)], READ) }),
    );
    paths.insert(
        format!("{org}/meshes/{{mesh}}/dataplanes/{{dataplane}}/config"),
        json!({ "get": op("getDataplaneConfig", "What a proxy was last sent, per type URL, in readable form, with its ACK state", &["org", "mesh", "dataplane"],
            vec![ok(200, "The config last sent", json!({
                "type": "object",
                "required": ["dataplane", "types"],
                "properties": {
                    "dataplane": {"type": "object"},
                    "types": {"type": "array", "items": {"type": "object", "required": ["typeUrl"]}},
                },
            }), false)], READ) }),
    );
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
    topology_edge["required"] = json!(["source", "destination", "metrics", "subsets"]);
    topology_edge["properties"]["subsets"] = json!({
        "type": "array",
        "description": "How the edge's requests split between subsets of the destination (a route's weighted backends, e.g. versions), in tag order",
        "items": {"type": "object", "required": ["tags", "requests", "share"], "properties": {
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "requests": {"type": "integer"},
            "share": {"type": ["number", "null"], "description": "Of every request on the edge; null without requests"},
        }},
    });
    paths.insert(
        format!("{org}/meshes/{{mesh}}/topology"),
        json!({ "get": op("getTopology", "Who called whom in the window: services with their golden metrics, and edges with theirs", &["org", "mesh", "window"],
            vec![ok(200, "The topology", json!({
                "type": "object",
                "required": ["mesh", "windowSeconds", "resolutionSeconds", "nodes", "edges"],
                "properties": {
                    "mesh": {"type": "string"}, "windowSeconds": {"type": "integer"}, "resolutionSeconds": {"type": "integer"},
                    "nodes": {"type": "array", "items": {"type": "object", "required": ["service", "metrics"],
                        "properties": {"service": {"type": "string"}, "metrics": golden}}},
                    "edges": {"type": "array", "items": topology_edge},
                },
            }), false)], READ) }),
    );
    let decision = json!({
        "type": "object", "required": ["verdict"],
        "properties": {
            "verdict": {"type": "string", "enum": ["allowed", "dependsOnRequest", "denied"],
                "description": "dependsOnRequest: rules with request conditions (methods, paths, headers) decide call by call"},
            "rule": {"type": "string", "description": "The deciding rule, `<policy>/rules/<index>`, or `default-deny`"},
        },
    });
    let mut preview = with_body(
        op(
            "previewAccessImpact",
            "What saving this AccessPolicy would deny or newly allow among the mesh's recorded calls, edge by edge (most calls first, at most 500); saves nothing",
            &["org", "mesh"],
            vec![ok(
                200,
                "The edges whose verdict changes",
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
                                "before": decision, "after": decision}}},
                    },
                }),
                false,
            )],
            WRITE,
        ),
        r("AccessPolicy"),
    );
    preview["parameters"].as_array_mut().expect("a list").push(json!({ "name": "window", "in": "query",
        "description": "Seconds back from now (default 3600)",
        "schema": { "type": "integer", "minimum": 10, "maximum": trellis_control::MAX_WINDOW_SECS } }));
    paths.insert(format!("{org}/meshes/{{mesh}}/impact-preview"), json!({ "post": preview }));
    paths.insert(
        format!("{org}/meshes/{{mesh}}/services/{{service}}/metrics"),
        json!({ "get": op("getServiceMetrics", "A service's golden metrics over the window (the calls it received), and each edge into and out of it", &["org", "mesh", "service", "window"],
            vec![ok(200, "Golden metrics", json!({
                "type": "object",
                "required": ["mesh", "service", "windowSeconds", "resolutionSeconds", "inbound", "callers", "callees"],
                "properties": {
                    "mesh": {"type": "string"}, "service": {"type": "string"},
                    "windowSeconds": {"type": "integer"}, "resolutionSeconds": {"type": "integer"},
                    "inbound": golden, "callers": {"type": "array", "items": edge}, "callees": {"type": "array", "items": edge},
                },
            }), false)], READ) }),
    );
    let days =
        json!({"type": ["integer", "null"], "description": "Whole days from now (negative once past)"});
    let at = json!({"type": ["string", "null"]});
    paths.insert(
        format!("{org}/meshes/{{mesh}}/services/{{service}}/health"),
        json!({ "get": op("getServiceHealth", "A service's health: its proxies online and offline and where they stand with their configuration, days to the expiry of the SVIDs they hold and of the mesh's CA, and the last rejection (NACK) one of them sent. Endpoints ejected by outlier detection or failing health checks are not reported by the proxies, so they are not here", &["org", "mesh", "service"],
            vec![ok(200, "The service's health", json!({
                "type": "object",
                "required": ["mesh", "service", "at", "dataplanes", "svid", "ca", "lastNack"],
                "properties": {
                    "mesh": {"type": "string"}, "service": {"type": "string"}, "at": {"type": "string", "description": "When it was read"},
                    "dataplanes": {"type": "object", "required": ["total", "online", "offline", "inSync", "syncing", "rejected"],
                        "description": "The service's registered proxies, by the sync state of the dataplane list (offline, rejected, in-sync, syncing)",
                        "properties": {"total": {"type": "integer"}, "online": {"type": "integer"}, "offline": {"type": "integer"},
                            "inSync": {"type": "integer"}, "syncing": {"type": "integer"}, "rejected": {"type": "integer"}}},
                    "svid": {"type": "object", "required": ["earliestExpiry", "daysToExpiry", "proxies"],
                        "description": "The SVIDs the online proxies hold (as their xDS streams presented them, moved on by each renewal)",
                        "properties": {"earliestExpiry": at, "daysToExpiry": days, "proxies": {"type": "integer", "description": "Online proxies whose SVID is known"}}},
                    "ca": {"type": "object", "required": ["notAfter", "daysToExpiry"], "description": "The mesh's active CA",
                        "properties": {"notAfter": at, "daysToExpiry": days}},
                    "lastNack": {"type": ["object", "null"], "description": "The latest rejection any of its proxies sent",
                        "required": ["dataplane", "node", "type", "version", "error", "at", "outstanding"],
                        "properties": {"dataplane": {"type": "string", "format": "uuid"}, "node": {"type": "string"},
                            "type": {"type": "string"}, "version": {"type": "string"}, "error": {"type": "string"}, "at": {"type": "string"},
                            "outstanding": {"type": "boolean", "description": "The proxy has not accepted a later version of that type since"}}},
                },
            }), false)], READ) }),
    );
    // ----- access log and "why denied" -----
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
    let query = |name: &str, description: &str, schema: Value| json!({ "name": name, "in": "query", "description": description, "schema": schema });
    let mut access_log = op(
        "getAccessLog",
        "Denied, failed and sampled calls the proxies logged, newest first",
        &["org", "mesh"],
        vec![ok(
            200,
            "A page of entries",
            json!({
                "type": "object",
                "required": ["mesh", "items"],
                "properties": {
                    "mesh": {"type": "string"}, "items": {"type": "array", "items": access_entry},
                    "nextCursor": {"type": ["string", "null"], "description": "Pass as cursor for the next page; null on the last"},
                },
            }),
            false,
        )],
        READ,
    );
    access_log["parameters"].as_array_mut().expect("a list").extend([
        query("service", "Calls to or from this service", json!({"type": "string"})),
        query("status", "HTTP status", json!({"type": "integer", "minimum": 100, "maximum": 599})),
        query("denied", "Denials only", json!({"type": "boolean"})),
        query(
            "since",
            "Received at or after (RFC 3339; default an hour before until)",
            json!({"type": "string", "format": "date-time"}),
        ),
        query(
            "until",
            "Received before (RFC 3339; default now)",
            json!({"type": "string", "format": "date-time"}),
        ),
        query("cursor", "The nextCursor of the previous page", json!({"type": "string"})),
        query(
            "limit",
            "Entries per page (default 100)",
            json!({"type": "integer", "minimum": 1, "maximum": trellis_control::MAX_ACCESS_LOG_PAGE}),
        ),
    ]);
    paths.insert(format!("{org}/meshes/{{mesh}}/access-log"), json!({ "get": access_log }));
    let mut why = op(
        "getAccessLogWhy",
        "Why a logged call was denied or let through: the AccessPolicy rule, default deny, or no mTLS identity",
        &["org", "mesh"],
        vec![ok(
            200,
            "The decision",
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
            false,
        )],
        READ,
    );
    why["parameters"].as_array_mut().expect("a list").push(json!({
        "name": "id", "in": "path", "required": true, "description": "Access-log entry id", "schema": {"type": "string"},
    }));
    paths.insert(format!("{org}/meshes/{{mesh}}/access-log/{{id}}/why"), json!({ "get": why }));
    let mut prometheus = op(
        "getPrometheusMetrics",
        "The mesh's golden metrics in the Prometheus text format, Linkerd-viz names and labels (request_total, response_latency_ms, tcp_open_total by src_service, dst_service, classification): totals of the window (default 60 s)",
        &["org", "mesh", "window"],
        vec![],
        READ,
    );
    prometheus["responses"]["200"] = json!({
        "description": "The exposition (text/plain; version=0.0.4)",
        "content": { "text/plain": { "schema": { "type": "string" } } },
    });
    paths.insert(format!("{org}/meshes/{{mesh}}/metrics/prometheus"), json!({ "get": prometheus }));
    paths.insert(
        format!("{org}/meshes/{{mesh}}/services/{{service}}/effective"),
        json!({ "get": op("getEffectivePolicies", "Every policy that applies to a service, in evaluation order", &["org", "mesh", "service"],
            vec![ok(200, "Effective policies", json!({
                "type": "object",
                "required": ["mesh", "service", "defaultAccess", "policies"],
                "properties": {
                    "mesh": {"type": "string"}, "service": {"type": "string"},
                    "defaultAccess": {"type": "string", "enum": ["deny", "allow"]},
                    "policies": {"type": "array", "items": r("EffectiveEntry")},
                },
            }), false)], READ) }),
    );
    for kind in Kind::ALL {
        let (name, plural) = (kind.name(), kind.plural());
        let id = name.replace("HTTP", "Http").replace("TCP", "Tcp");
        paths.insert(
            format!("{org}/meshes/{{mesh}}/{plural}"),
            json!({
                "get": op(&format!("list{id}s"), &format!("{name} resources of a mesh"), &["org", "mesh", "limit", "cursor", "labelSelector"],
                    vec![ok(200, "A page", r(&format!("{name}List")), false)], READ),
                "post": with_body(op(&format!("create{id}"), &format!("Create a {name} (name in metadata)"), &["org", "mesh", "idempotencyKey"],
                    vec![ok(201, "Created", r(name), true)], WRITE), r(name)),
            }),
        );
        paths.insert(
            format!("{org}/meshes/{{mesh}}/{plural}/{{name}}"),
            json!({
                "get": op(&format!("get{id}"), &format!("A {name}"), &["org", "mesh", "name"], vec![ok(200, "The resource", r(name), true)], READ),
                "put": with_body(op(&format!("put{id}"), &format!("Create or replace a {name}; with ?wait=, answer once every proxy it configures has applied it, one rejected it, or the wait is over (status.propagation.wait)"), &["org", "mesh", "name", "ifMatch", "ifNoneMatch", "wait"],
                    vec![ok(200, "Replaced (or unchanged)", r(name), true), ok(201, "Created", r(name), true)], WRITE), r(name)),
                "delete": op(&format!("delete{id}"), &format!("Delete a {name}; with ?wait=, answer once the proxies it configured have applied the deletion (every proxy of the mesh for a Service), one rejected it, or the wait is over"), &["org", "mesh", "name", "ifMatch", "wait"],
                    vec![("204".into(), json!({"description": "Deleted"})), ok(200, "Deleted, with ?wait=: the deletion's propagation", json!({
                        "type": "object", "required": ["apiVersion", "kind", "metadata", "status"],
                        "properties": {
                            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                            "metadata": {"type": "object", "required": ["name", "mesh"], "properties": {"name": {"type": "string"}, "mesh": {"type": "string"}}},
                            "status": {"type": "object", "required": ["deleted", "propagation"], "properties": {"deleted": {"type": "boolean"}, "propagation": r("Propagation")}},
                        },
                    }), false)], &[400, 401, 403, 404, 409, 412]),
            }),
        );
    }

    let path_param = |name: &str, desc: &str| json!({ "name": name, "in": "path", "required": true, "description": desc, "schema": { "type": "string" } });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Trellis API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Meshes and their configuration. Errors are application/problem+json (RFC 9457) with field paths.",
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }, { "session": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "An API token, trls_pat_…" },
                "joinToken": { "type": "http", "scheme": "bearer", "description": "A join token, trls_join_…: accepted only by POST /api/v1/svids" },
                "session": { "type": "apiKey", "in": "cookie", "name": "__Host-trellis_session",
                    "description": "A console session (GET /auth/login). Every write with it also needs the header x-csrf-token (see GET /api/v1/me)." },
            },
            "parameters": {
                "org": path_param("org", "Organization slug"),
                "mesh": path_param("mesh", "Mesh name"),
                "name": path_param("name", "Resource name"),
                "dataplane": path_param("dataplane", "Dataplane id (from the dataplane list)"),
                "service": path_param("service", "Service name"),
                "id": path_param("id", "Token or invitation id"),
                "user": path_param("user", "User id of a member"),
                "inviteToken": path_param("token", "The invitation token (trls_inv_…)"),
                "caId": path_param("id", "Certificate authority id (see GET …/ca)"),
                "joinTokenId": path_param("id", "Join token id"),
                "limit": { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": MAX_LIMIT } },
                "cursor": { "name": "cursor", "in": "query", "schema": { "type": "string" } },
                "window": { "name": "window", "in": "query", "description": "Seconds back from now (default 300); up to an hour reads 10 s buckets, up to two days 1 min rollups, beyond 1 h rollups",
                    "schema": { "type": "integer", "minimum": 10, "maximum": trellis_control::MAX_WINDOW_SECS } },
                "labelSelector": { "name": "labelSelector", "in": "query", "description": "k=v,k!=v,k,!k", "schema": { "type": "string" } },
                "wait": { "name": "wait", "in": "query",
                    "description": "Wait up to this long (500ms, 30s, 2m; at most 5m) for every proxy the write configures to apply it; the answer comes then, at the first rejection, or when the wait is over, with status.propagation.wait saying which. The write is committed either way.",
                    "schema": { "type": "string", "pattern": "^[0-9]{1,6}(ms|s|m)$" } },
                "ifMatch": { "name": "If-Match", "in": "header", "description": "An ETag from a previous response, or *", "schema": { "type": "string" } },
                "ifNoneMatch": { "name": "If-None-Match", "in": "header", "description": "* to create only", "schema": { "type": "string" } },
                "idempotencyKey": { "name": "Idempotency-Key", "in": "header", "schema": { "type": "string", "maxLength": 255 } },
            },
            "schemas": schemas,
        },
    })
}

fn account_schemas(schemas: &mut BTreeMap<String, Value>) {
    let org_ref = json!({
        "type": "object",
        "required": ["id", "slug", "name"],
        "properties": {
            "id": { "type": "string", "format": "uuid" },
            "slug": { "type": "string" },
            "name": { "type": "string" },
            "role": r("Role"),
        },
    });
    schemas.insert(
        "Organization".into(),
        json!({
            "type": "object",
            "required": ["id", "slug", "name", "createdAt"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "slug": { "type": "string" },
                "name": { "type": "string" },
                "createdAt": { "type": "string" },
                "role": r("Role"),
                "you": { "type": "object", "description": "The caller's role and token id or user id" },
            },
        }),
    );
    schemas.insert(
        "OrgPatch".into(),
        json!({
            "type": "object",
            "minProperties": 1,
            "properties": {
                "slug": { "type": "string", "minLength": 1, "maxLength": 39, "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$" },
                "name": { "type": "string", "minLength": 1, "maxLength": 100 },
            },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Me".into(),
        json!({
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": { "type": "string", "enum": ["token", "session"] },
                "tokenId": { "type": "string", "format": "uuid" },
                "name": { "type": "string" },
                "role": r("Role"),
                "org": org_ref,
                "user": {
                    "type": "object",
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "email": { "type": ["string", "null"] },
                        "name": { "type": ["string", "null"] },
                    },
                },
                "organizations": { "type": "array", "items": org_ref },
                "csrfToken": { "type": "string", "description": "Send it as x-csrf-token on every write made with the session cookie" },
                "session": { "type": "object" },
            },
        }),
    );
    schemas.insert(
        "Member".into(),
        json!({
            "type": "object",
            "required": ["userId", "role", "joinedAt"],
            "properties": {
                "userId": { "type": "string", "format": "uuid" },
                "email": { "type": ["string", "null"] },
                "name": { "type": ["string", "null"] },
                "role": r("Role"),
                "joinedAt": { "type": "string" },
            },
        }),
    );
    schemas.insert(
        "MemberPatch".into(),
        json!({
            "type": "object",
            "required": ["role"],
            "properties": { "role": r("Role") },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Invite".into(),
        json!({
            "type": "object",
            "required": ["id", "email", "role", "status", "createdAt", "expiresAt"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "email": { "type": "string" },
                "role": r("Role"),
                "status": { "type": "string", "enum": ["pending", "accepted", "revoked", "expired"] },
                "createdBy": { "type": "string" },
                "createdAt": { "type": "string" },
                "expiresAt": { "type": "string" },
                "acceptedAt": { "type": ["string", "null"] },
                "acceptedBy": { "type": ["string", "null"] },
                "revokedAt": { "type": ["string", "null"] },
                "token": { "type": "string", "description": "The single-use invitation token: only in the response that creates it" },
                "acceptUrl": { "type": "string", "description": "Where the invited user POSTs (logged in) to accept: only in the response that creates it" },
            },
        }),
    );
    schemas.insert(
        "NewInvite".into(),
        json!({
            "type": "object",
            "required": ["email", "role"],
            "properties": {
                "email": { "type": "string", "minLength": 3, "maxLength": 320 },
                "role": r("Role"),
                "expiresInHours": { "type": "integer", "minimum": 1, "maximum": trellis_control::MAX_INVITE_HOURS },
            },
            "additionalProperties": false,
        }),
    );
}

fn account_paths(paths: &mut serde_json::Map<String, Value>) {
    let org = "/api/v1/orgs/{org}";
    let list = |item: &str| json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": r(item)}}});
    let redirect = |desc: &str| json!({ "description": desc, "headers": { "Location": { "schema": { "type": "string" } } } });
    paths.insert(
        "/auth/login".into(),
        json!({ "get": {
            "operationId": "login",
            "summary": "Start an OpenID Connect login: redirects to the identity provider (code flow, PKCE, state, nonce)",
            "security": [],
            "parameters": [{ "name": "return_to", "in": "query", "description": "A local path to land on after login", "schema": { "type": "string", "maxLength": 512 } }],
            "responses": { "303": redirect("To the identity provider; sets the short-lived login cookie"), "400": problem_responses(&[400])["400"], "404": problem_responses(&[404])["404"], "502": { "description": "The identity provider is unreachable", "content": { "application/problem+json": { "schema": r("Problem") } } } },
        } }),
    );
    paths.insert(
        "/auth/callback".into(),
        json!({ "get": {
            "operationId": "loginCallback",
            "summary": "The identity provider's redirect back: validates state and the ID token, signs up new users, starts a session",
            "security": [],
            "parameters": [
                { "name": "code", "in": "query", "schema": { "type": "string" } },
                { "name": "state", "in": "query", "schema": { "type": "string" } },
                { "name": "error", "in": "query", "schema": { "type": "string" } },
            ],
            "responses": {
                "303": redirect("Logged in; sets the session cookie"), "400": problem_responses(&[400])["400"],
                "401": problem_responses(&[401])["401"], "404": problem_responses(&[404])["404"],
                "502": { "description": "The identity provider is unreachable", "content": { "application/problem+json": { "schema": r("Problem") } } },
            },
        } }),
    );
    paths.insert(
        "/auth/local".into(),
        json!({ "get": {
            "operationId": "localLogin",
            "summary": "No-IdP mode: the one-time link printed by `trellis serve` logs in the local admin",
            "security": [],
            "parameters": [{ "name": "token", "in": "query", "required": true, "schema": { "type": "string" } }],
            "responses": {
                "303": redirect("Logged in; sets the session cookie"), "400": problem_responses(&[400])["400"],
                "401": problem_responses(&[401])["401"], "404": problem_responses(&[404])["404"],
            },
        } }),
    );
    paths.insert(
        "/auth/logout".into(),
        json!({ "post": {
            "operationId": "logout",
            "summary": "End the session (with a session cookie it needs x-csrf-token; without one it only clears the cookie)",
            "security": [],
            "responses": { "204": { "description": "Logged out; the session cookie is cleared" }, "403": problem_responses(&[403])["403"] },
        } }),
    );
    paths.insert(
        "/api/v1/orgs".into(),
        json!({ "get": op("listOrgs", "The organizations the caller belongs to, with the caller's role", &[],
            vec![ok(200, "Organizations", list("Organization"), false)], &[401]) }),
    );
    paths.insert(
        format!("{org}/members"),
        json!({ "get": op("listMembers", "Members and their roles", &["org"], vec![ok(200, "Members", list("Member"), false)], READ) }),
    );
    paths.insert(
        format!("{org}/members/{{user}}"),
        json!({
            "patch": with_body(op("updateMember", "Change a member's role (admin; the last owner keeps the role)", &["org", "user"],
                vec![ok(200, "The member", r("Member"), false)], WRITE), r("MemberPatch")),
            "delete": op("removeMember", "Remove a member (admin; never the last owner)", &["org", "user"],
                vec![("204".into(), json!({"description": "Removed"}))], &[400, 401, 403, 404, 409]),
        }),
    );
    paths.insert(
        format!("{org}/invites"),
        json!({
            "get": op("listInvites", "Invitations (never their tokens)", &["org"], vec![ok(200, "Invitations", list("Invite"), false)], READ),
            "post": with_body(op("createInvite", "Invite by email with a role; the response shows the single-use token once", &["org"],
                vec![ok(201, "The invitation, with its token", r("Invite"), false)], WRITE), r("NewInvite")),
        }),
    );
    paths.insert(
        format!("{org}/invites/{{id}}"),
        json!({ "delete": op("revokeInvite", "Revoke an invitation", &["org", "id"], vec![ok(200, "The revoked invitation", r("Invite"), false)], READ) }),
    );
    paths.insert(
        "/api/v1/invites/{token}/accept".into(),
        json!({ "post": {
            "operationId": "acceptInvite",
            "summary": "The logged-in user (session) accepts an invitation sent to their email address",
            "security": [{ "session": [] }],
            "parameters": [r_param("inviteToken")],
            "responses": {
                "200": { "description": "Now a member", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["org", "role"],
                    "properties": { "org": { "type": "object" }, "role": r("Role") },
                } } } },
                "401": problem_responses(&[401])["401"], "403": problem_responses(&[403])["403"],
                "404": problem_responses(&[404])["404"], "409": problem_responses(&[409])["409"],
            },
        } }),
    );
}

fn ca_schemas(schemas: &mut BTreeMap<String, Value>) {
    use trellis_control::{JOIN_TTL_MAX, JOIN_TTL_MIN, MAX_CHAIN_PEM, MAX_KEY_PEM};
    use trellis_model::SvidTtl;
    let time = json!({ "type": ["string", "null"], "format": "date-time" });
    schemas.insert(
        "CertificateAuthority".into(),
        json!({
            "type": "object",
            "description": "One CA of a mesh. Its private key is never returned.",
            "required": ["id", "origin", "state", "liveLeaves", "createdAt"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "origin": { "type": "string", "enum": ["generated", "intermediate_csr", "uploaded"] },
                "state": { "type": "string", "enum": ["pending", "prepared", "active", "previous", "retired"] },
                "rootFingerprint": { "type": ["string", "null"], "description": "SHA-256 of the root it chains to" },
                "notAfter": time,
                "daysToExpiry": { "type": ["integer", "null"] },
                "liveLeaves": { "type": "integer", "description": "Unexpired certificates it signed" },
                "certificatePem": { "type": ["string", "null"] },
                "csrPem": { "type": ["string", "null"], "description": "While pending: the CSR to sign with your root" },
                "createdAt": { "type": "string", "format": "date-time" },
                "activatedAt": time,
                "retiredAt": time,
            },
        }),
    );
    schemas.insert(
        "CaStatus".into(),
        json!({
            "type": "object",
            "required": ["mesh", "phase", "trustDomain", "bundleSequence", "svidTtlSeconds", "authorities"],
            "properties": {
                "mesh": { "type": "string" },
                "phase": { "type": "string", "enum": ["stable", "awaiting-chain", "prepared", "rotated"],
                    "description": "stable; awaiting-chain (a CSR is out); prepared (a new root is in the bundle, not signing); rotated (the old root is still in the bundle)" },
                "trustDomain": { "type": "string" },
                "bundleSequence": { "type": "integer", "description": "Grows on every change of the trust bundle" },
                "svidTtlSeconds": { "type": "integer" },
                "authorities": { "type": "array", "items": r("CertificateAuthority") },
            },
        }),
    );
    schemas.insert(
        "CaRetire".into(),
        json!({
            "type": "object",
            "properties": { "force": { "type": "boolean", "description": "Retire although unexpired leaves chain to it (they stop verifying)" } },
            "additionalProperties": false,
        }),
    );
    let chain = json!({ "type": "string", "minLength": 1, "maxLength": MAX_CHAIN_PEM,
        "description": "PEM certificates: the CA first, its root last" });
    schemas.insert(
        "CaChainUpload".into(),
        json!({
            "type": "object",
            "required": ["certificateChain"],
            "properties": { "certificateChain": chain },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "CaUpload".into(),
        json!({
            "type": "object",
            "required": ["certificateChain", "privateKey"],
            "properties": {
                "certificateChain": chain,
                "privateKey": { "type": "string", "minLength": 1, "maxLength": MAX_KEY_PEM, "description": "PKCS#8 PEM; sealed at once, never returned" },
            },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "CaSettings".into(),
        json!({
            "type": "object",
            "required": ["svidTtlSeconds"],
            "properties": { "svidTtlSeconds": { "type": "integer", "minimum": SvidTtl::MIN_SECS, "maximum": SvidTtl::MAX_SECS } },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "NewJoinToken".into(),
        json!({
            "type": "object",
            "required": ["service"],
            "properties": {
                "service": { "type": "string", "minLength": 1, "maxLength": 63, "description": "A Service of the mesh" },
                "tags": { "type": "object", "additionalProperties": { "type": "string" } },
                "ttlSeconds": { "type": "integer", "minimum": JOIN_TTL_MIN, "maximum": JOIN_TTL_MAX, "default": 3600 },
                "singleUse": { "type": "boolean", "default": false },
            },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "JoinToken".into(),
        json!({
            "type": "object",
            "required": ["id", "mesh", "service", "spiffeId", "singleUse", "status", "createdAt", "expiresAt"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "mesh": { "type": "string" },
                "service": { "type": "string" },
                "spiffeId": { "type": "string", "description": "The identity an SVID for this token carries" },
                "tags": { "type": "object" },
                "singleUse": { "type": "boolean" },
                "status": { "type": "string", "enum": ["active", "used", "expired", "revoked"] },
                "uses": { "type": "integer" },
                "createdBy": { "type": "string" },
                "createdAt": { "type": "string" },
                "expiresAt": { "type": "string" },
                "usedAt": time,
                "revokedAt": time,
                "token": { "type": "string", "description": "trls_join_…: only in the response that creates it" },
            },
        }),
    );
    schemas.insert(
        "SvidRequest".into(),
        json!({
            "type": "object",
            "required": ["csr"],
            "properties": { "csr": { "type": "string", "minLength": 1, "maxLength": trellis_ca::MAX_CSR_INPUT,
                "description": "PEM CSR (P-256 or Ed25519); only its public key is used" } },
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Svid".into(),
        json!({
            "type": "object",
            "required": ["spiffeId", "certificateChain", "trustBundle", "trustBundleSequence", "expiresAt", "serial"],
            "properties": {
                "spiffeId": { "type": "string" },
                "certificateChain": { "type": "string", "description": "PEM: the leaf, then intermediates" },
                "trustBundle": { "type": "string", "description": "PEM: the mesh's roots" },
                "trustBundleSequence": { "type": "integer" },
                "expiresAt": { "type": "string", "format": "date-time" },
                "serial": { "type": "string" },
            },
        }),
    );
}

fn ca_paths(paths: &mut serde_json::Map<String, Value>) {
    let mesh = "/api/v1/orgs/{org}/meshes/{mesh}";
    let m = &["org", "mesh"];
    let status = |code: u16, desc: &str| ok(code, desc, r("CaStatus"), false);
    let step = &[400, 401, 403, 404, 409];
    let text = |desc: &str, ct: &str| json!({ "description": desc, "content": { ct: { "schema": { "type": "string" } } } });
    paths.insert(
        format!("{mesh}/ca"),
        json!({ "get": op("getCa", "The mesh's CA: rotation phase, trust domain, bundle sequence, SVID lifetime, every CA (never a key)", m,
            vec![status(200, "The CA status")], READ) }),
    );
    let mut bundle = op(
        "getTrustBundle",
        "The trust bundle: SPIFFE bundle JSON (with spiffe_sequence), or PEM with ?format=pem; the sequence is also in the trellis-bundle-sequence header",
        m,
        vec![],
        READ,
    );
    bundle["parameters"].as_array_mut().expect("array").push(
        json!({ "name": "format", "in": "query", "schema": { "type": "string", "enum": ["json", "pem"] } }),
    );
    bundle["responses"]["200"] = json!({
        "description": "The bundle",
        "headers": { "trellis-bundle-sequence": { "schema": { "type": "integer" } } },
        "content": {
            "application/json": { "schema": { "type": "object", "description": "SPIFFE bundle (JWK Set)" } },
            "application/x-pem-file": { "schema": { "type": "string" } },
        },
    });
    paths.insert(format!("{mesh}/ca/bundle"), json!({ "get": bundle }));
    paths.insert(
        format!("{mesh}/ca/settings"),
        json!({ "put": with_body(op("putCaSettings", "Set the lifetime of new SVIDs (1 h to 7 d)", m,
            vec![status(200, "The CA status")], WRITE), r("CaSettings")) }),
    );
    paths.insert(
        format!("{mesh}/ca/rotation/prepare"),
        json!({ "post": op("prepareCaRotation", "Rotation step 1: a new root, published in the bundle beside the current one", m,
            vec![status(200, "The CA status (phase prepared)")], step) }),
    );
    paths.insert(
        format!("{mesh}/ca/rotation/activate"),
        json!({ "post": op("activateCaRotation", "Rotation step 2: the prepared CA signs new certificates; the old root stays in the bundle", m,
            vec![status(200, "The CA status (phase rotated)")], step) }),
    );
    let mut retire = op(
        "retireCa",
        "Rotation step 3: a previous CA leaves the bundle (409 while unexpired certificates chain to it, unless force)",
        &["org", "mesh", "caId"],
        vec![status(200, "The CA status")],
        &[400, 401, 403, 404, 409, 415, 422],
    );
    retire["requestBody"] =
        json!({ "required": false, "content": { "application/json": { "schema": r("CaRetire") } } });
    paths.insert(format!("{mesh}/ca/authorities/{{id}}/retire"), json!({ "post": retire }));
    paths.insert(
        format!("{mesh}/ca/authorities/{{id}}"),
        json!({ "delete": op("discardCa", "Abandon a pending or prepared CA (a rotation that was not activated)", &["org", "mesh", "caId"],
            vec![status(200, "The CA status")], step) }),
    );
    paths.insert(
        format!("{mesh}/ca/intermediate-csr"),
        json!({ "post": op("createIntermediateCsr", "Bring your own root: a new intermediate key (kept sealed) and its CSR to sign offline", m,
            vec![ok(201, "The pending CA and its CSR", json!({
                "type": "object", "required": ["id", "csr"],
                "properties": { "id": { "type": "string", "format": "uuid" }, "state": { "type": "string" }, "csr": { "type": "string" } },
            }), false)], step) }),
    );
    paths.insert(
        format!("{mesh}/ca/authorities/{{id}}/chain"),
        json!({ "put": with_body(op("uploadIntermediateChain", "The chain you signed for a pending CSR (intermediate first, root last); checked, then prepared",
            &["org", "mesh", "caId"], vec![status(200, "The CA status (phase prepared)")], WRITE), r("CaChainUpload")) }),
    );
    paths.insert(
        format!("{mesh}/ca/upload"),
        json!({ "post": with_body(op("uploadCa", "A CA certificate chain and its private key (sealed at once, never returned); checked, then prepared", m,
            vec![status(201, "The CA status (phase prepared)")], WRITE), r("CaUpload")) }),
    );
    let list = json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": r("JoinToken")}}});
    paths.insert(
        format!("{mesh}/join-tokens"),
        json!({
            "get": op("listJoinTokens", "Join tokens of the mesh, newest first (never the tokens)", m, vec![ok(200, "Join tokens", list, false)], READ),
            "post": with_body(op("createJoinToken", "A join token (trls_join_…) for one Service of the mesh; the response shows it once", m,
                vec![ok(201, "The join token, with the token", r("JoinToken"), false)], WRITE), r("NewJoinToken")),
        }),
    );
    paths.insert(
        format!("{mesh}/join-tokens/{{id}}"),
        json!({ "delete": op("revokeJoinToken", "Revoke a join token", &["org", "mesh", "joinTokenId"],
            vec![ok(200, "The revoked join token", r("JoinToken"), false)], READ) }),
    );
    let bootstrap_params = json!([
        r_param("org"), r_param("mesh"),
        { "name": "service", "in": "query", "required": true, "description": "A Service of the mesh", "schema": { "type": "string" } },
        { "name": "node", "in": "query", "required": true, "description": "The node id, unique per instance", "schema": { "type": "string", "maxLength": 128 } },
        { "name": "certDir", "in": "query", "description": "Where the workload keeps ca.pem (platform root), cert.pem and key.pem (its SVID) and bundle.pem (mesh trust bundle)",
          "schema": { "type": "string", "default": crate::bootstrap::DEFAULT_CERT_DIR, "maxLength": 256 } },
    ]);
    for (kind, id, summary) in [
        ("grpc", "getGrpcBootstrap", "The gRPC xDS bootstrap (GRPC_XDS_BOOTSTRAP) of a workload"),
        ("envoy", "getEnvoyBootstrap", "The Envoy bootstrap of a sidecar: ADS over mTLS to the xDS port"),
    ] {
        let mut o = op(
            id,
            summary,
            &[],
            vec![ok(200, "The bootstrap", json!({ "type": "object" }), false)],
            &[400, 401, 403, 404, 422],
        );
        o["parameters"] = bootstrap_params.clone();
        if kind == "envoy" {
            let sidecar = o["parameters"].as_array_mut().expect("a list");
            sidecar.push(json!({ "name": "ports", "in": "query",
                "description": "The service ports this sidecar serves, comma-separated (`9080,9090`): one inbound listener each",
                "schema": { "type": "string", "maxLength": crate::bootstrap::MAX_PORTS_PARAM } }));
            sidecar.push(json!({ "name": "tags", "in": "query",
                "description": "The instance's tags, comma-separated `key=value` pairs (`version=v2`): the subsets routes select",
                "schema": { "type": "string", "maxLength": crate::bootstrap::MAX_TAGS_PARAM } }));
        }
        paths.insert(format!("{mesh}/bootstrap/{kind}"), json!({ "get": o }));
    }
    let mut root = op(
        "getPlatformRoot",
        "The platform root that verifies the xDS port: write it to <certDir>/ca.pem",
        m,
        vec![],
        READ,
    );
    root["responses"]["200"] = text("The platform root (PEM)", "application/x-pem-file");
    paths.insert(format!("{mesh}/bootstrap/ca.pem"), json!({ "get": root }));
    paths.insert(
        "/api/v1/svids".into(),
        json!({ "post": {
            "operationId": "issueSvid",
            "summary": "A workload's X.509-SVID: a join token (Authorization: Bearer trls_join_…) and a CSR. Only this endpoint accepts join tokens.",
            "security": [{ "joinToken": [] }],
            "requestBody": { "required": true, "content": { "application/json": { "schema": r("SvidRequest") } } },
            "responses": {
                "200": { "description": "The SVID and the mesh's trust bundle", "content": { "application/json": { "schema": r("Svid") } } },
                "400": problem_responses(&[400])["400"],
                "401": { "description": "The join token is missing, unknown, revoked, expired or already used", "content": { "application/problem+json": { "schema": r("Problem") } } },
                "409": problem_responses(&[409])["409"], "413": problem_responses(&[413])["413"],
                "415": problem_responses(&[415])["415"], "422": problem_responses(&[422])["422"],
            },
        } }),
    );
}

pub(crate) async fn serve() -> axum::Json<Value> {
    axum::Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
