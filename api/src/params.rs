//! The parameters the OpenAPI document names for the path segments and headers the handlers
//! read, as `IntoParams` types that operations list in `params(…)`. Query parameters are
//! described by the handlers' own query types; these are for what axum reads positionally
//! (`Path<(String, …)>`) or from the header map.
//!
//! The fields only describe: nothing reads them.
#![allow(dead_code)]

use utoipa::IntoParams;
use utoipa::openapi::schema::{ObjectBuilder, Type};

/// A query or header string of at most `max` characters.
pub(crate) fn bounded_string(max: usize) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).max_length(Some(max))
}

/// An integer within `min..=max`.
pub(crate) fn bounded_integer(min: i64, max: i64) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min)).maximum(Some(max))
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct OrgPath {
    /// Organization slug
    org: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct MeshPath {
    /// Organization slug
    org: String,
    /// Mesh name
    mesh: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ServicePath {
    /// Organization slug
    org: String,
    /// Mesh name
    mesh: String,
    /// Service name
    service: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct DataplanePath {
    /// Organization slug
    org: String,
    /// Mesh name
    mesh: String,
    /// Dataplane id (from the dataplane list)
    dataplane: String,
}

/// A resource of a kind: the kind's segment is a literal of each path (the document lists
/// every kind), so only the name is a parameter.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ResourcePath {
    /// Organization slug
    org: String,
    /// Mesh name
    mesh: String,
    /// Resource name
    name: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct TokenPath {
    /// Organization slug
    org: String,
    /// Token or invitation id
    id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct MemberPath {
    /// Organization slug
    org: String,
    /// User id of a member
    user: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct InvitePath {
    /// The invitation token (trls_inv_…)
    token: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct CaPath {
    /// Organization slug
    org: String,
    /// Mesh name
    mesh: String,
    /// Certificate authority id (see GET …/ca)
    id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct JoinTokenPath {
    /// Organization slug
    org: String,
    /// Mesh name
    mesh: String,
    /// Join token id
    id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct AccessLogEntryPath {
    /// Organization slug
    org: String,
    /// Mesh name
    mesh: String,
    /// Access-log entry id
    id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct TrafficEventPath {
    /// Organization slug
    org: String,
    /// Mesh name
    mesh: String,
    /// Event id
    id: String,
}

/// The preconditions of a write (`crate::body::condition`).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct WriteConditions {
    /// An ETag from a previous response, or *
    #[param(nullable = false, rename = "If-Match")]
    if_match: Option<String>,
    /// * to create only
    #[param(nullable = false, rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// The precondition of a delete (`crate::body::if_match`).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct DeleteCondition {
    /// An ETag from a previous response, or *
    #[param(nullable = false, rename = "If-Match")]
    if_match: Option<String>,
}

/// The `Idempotency-Key` header of a write, as the write handlers read it.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct IdempotencyKey {
    #[param(nullable = false, rename = "Idempotency-Key", max_length = 255)]
    idempotency_key: Option<String>,
}
/// Longest `Idempotency-Key` accepted (the `max_length` above, which takes only a literal).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// `trellis_control::AuditQuery`, which the core parses (the core knows no OpenAPI).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditParams {
    #[param(nullable = false, value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    #[param(nullable = false)]
    cursor: Option<String>,
    #[param(nullable = false, max_length = 256)]
    actor: Option<String>,
    #[param(nullable = false, max_length = 256)]
    action: Option<String>,
    /// Target prefix
    #[param(nullable = false, max_length = 256)]
    target: Option<String>,
    #[param(nullable = false, value_type = Option<String>, format = DateTime)]
    since: Option<String>,
}

// The bounds published above (utoipa takes literals only).
const _: () = assert!(trellis_control::MAX_AUDIT_FILTER == 256 && trellis_control::MAX_LIMIT == 500);
