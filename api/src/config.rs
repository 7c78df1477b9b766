//! The mesh configuration API over REST: documents (`apiVersion`, `kind`, `metadata`,
//! `spec`, `status`) in and out, ETags and conditional headers, pagination query parameters
//! and idempotency keys. The use cases are `trellis_control`'s.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trellis_control::{
    API_VERSION, Control, Created, Envelope, Idempotency, MeshWrite, Page, Propagation, ResourceView,
};
use trellis_model::PropagationWait;
use trellis_model::config::{DefaultAccess, EffectiveEntry, ImpactTotals, Kind};
use trellis_store::Mesh;

use crate::auth::{OrgScope, Scoped, Who};
use crate::body::{ApiQuery, JsonBody, condition, etag, if_match};
use crate::error::{ApiError, DeleteErrors, GuardedDeleteErrors, ReadErrors, WriteErrors};
use crate::observe::AccessImpact;
use crate::params::{
    DeleteCondition, IdempotencyKey, MAX_IDEMPOTENCY_KEY, MeshPath, OrgPath, ResourcePath, ServicePath,
    WriteConditions,
};

/// A document's writable part, checked against its URL after the published schema.
fn envelope(body: Value, kind: &str, name: Option<&str>, mesh: Option<&str>) -> Result<Envelope, ApiError> {
    if body.is_object() {
        crate::schema_check::check(kind, &body)?;
    }
    Ok(Envelope::parse(body, kind, name, mesh)?)
}

fn kind_of(segment: &str) -> Result<Kind, ApiError> {
    Kind::ALL.into_iter().find(|k| k.plural() == segment).ok_or_else(|| {
        ApiError::not_found(format!(
            "no resource kind {segment:?}; kinds are {}",
            Kind::ALL.map(|k| k.plural()).join(", ")
        ))
    })
}

fn with_etag(status: StatusCode, version: uuid::Uuid, body: Value) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag(version)).expect("uuid is ascii"));
    res
}

/// Tells clients (`trellis apply`) that a PUT found the content already stored.
fn unchanged_header(mut res: Response, changed: bool) -> Response {
    if !changed {
        res.headers_mut().insert("trellis-unchanged", HeaderValue::from_static("true"));
    }
    res
}

fn created_or_ok(created: bool) -> StatusCode {
    if created { StatusCode::CREATED } else { StatusCode::OK }
}

/// Query parameters of a list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    #[param(nullable = false, value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    #[serde(default)]
    #[param(nullable = false)]
    cursor: Option<String>,
    /// k=v,k!=v,k,!k
    #[serde(default)]
    #[param(nullable = false)]
    label_selector: Option<String>,
}

// The bound `limit` publishes (utoipa takes literals only).
const _: () = assert!(trellis_control::MAX_LIMIT == 500);

impl ListQuery {
    fn page(&self) -> Result<Page, ApiError> {
        Ok(Page::parse(self.limit.as_deref(), self.cursor.as_deref(), self.label_selector.as_deref())?)
    }
}

// ----- meshes -----

fn render_mesh(m: &Mesh) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Mesh",
        "metadata": {
            "name": m.name.as_str(),
            "labels": m.labels,
            "generation": m.generation,
            "version": m.version,
            "revision": m.revision,
            "createdAt": m.created_at,
            "updatedAt": m.updated_at,
        },
        "spec": m.spec,
        "status": { "observedGeneration": m.generation, "revision": m.revision },
    })
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes", operation_id = "listMeshes", summary = "Meshes, by name",
    params(OrgPath, ListQuery),
    responses((status = 200, description = "A page of meshes", body = ref("#/components/schemas/MeshList")), ReadErrors))]
pub(crate) async fn list_meshes(
    State(ctl): State<Control>,
    ApiQuery(q): ApiQuery<ListQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let (meshes, next) = ctl.list_meshes(scope, &q.page()?).await?;
    Ok(Json(json!({ "items": meshes.iter().map(render_mesh).collect::<Vec<_>>(), "nextCursor": next })))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}", operation_id = "getMesh", summary = "A mesh",
    params(MeshPath),
    responses((status = 200, description = "The mesh", body = ref("#/components/schemas/Mesh"), headers(("ETag" = String, description = "The version, for If-Match"))),
        ReadErrors))]
pub(crate) async fn get_mesh(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    let m = ctl.get_mesh(scope, &mesh).await?;
    Ok(with_etag(StatusCode::OK, m.version, render_mesh(&m)))
}

#[utoipa::path(put, path = "/api/v1/orgs/{org}/meshes/{mesh}", operation_id = "putMesh", summary = "Create or replace a mesh",
    params(MeshPath, WriteConditions),
    request_body = ref("#/components/schemas/Mesh"),
    responses(
        (status = 200, description = "Replaced", body = ref("#/components/schemas/Mesh"), headers(("ETag" = String, description = "The version, for If-Match"))),
        (status = 201, description = "Created", body = ref("#/components/schemas/Mesh"), headers(("ETag" = String, description = "The version, for If-Match"))),
        WriteErrors))]
pub(crate) async fn put_mesh(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    let env = envelope(body.value, "Mesh", Some(&mesh), None)?;
    let write = MeshWrite { labels: env.metadata.labels, spec: env.spec };
    let put = ctl.put_mesh(scope, &mesh, write, &condition(&headers)).await?;
    let res = with_etag(created_or_ok(put.created), put.value.version, render_mesh(&put.value));
    Ok(unchanged_header(res, put.changed))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/meshes/{mesh}", operation_id = "deleteMesh", summary = "Delete a mesh and everything in it",
    params(MeshPath, DeleteCondition),
    responses((status = 204, description = "Deleted"), DeleteErrors))]
pub(crate) async fn delete_mesh(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    OrgScope(scope): OrgScope,
) -> Result<StatusCode, ApiError> {
    ctl.delete_mesh(scope, &mesh, if_match(&headers).as_ref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- mesh-scoped resources -----

fn render_resource(mesh: &Mesh, view: &ResourceView) -> Value {
    let r = &view.resource;
    json!({
        "apiVersion": API_VERSION,
        "kind": r.kind,
        "metadata": {
            "name": r.name.as_str(),
            "mesh": mesh.name.as_str(),
            "labels": r.labels,
            "generation": r.generation,
            "version": r.version,
            "createdAt": r.created_at,
            "updatedAt": r.updated_at,
        },
        "spec": r.spec,
        // The xDS server fills `propagation` ("applied by N of M proxies …").
        "status": { "observedGeneration": r.generation, "propagation": view.propagation },
    })
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/{kind}", operation_id = "list{KindId}s", summary = "{Kind} resources of a mesh",
    params(MeshPath, ListQuery),
    responses((status = 200, description = "A page", body = ref("#/components/schemas/{Kind}List")), ReadErrors))]
pub(crate) async fn list_resources(
    State(ctl): State<Control>,
    Path((_, mesh, kind)): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<ListQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let kind = kind_of(&kind)?;
    let (m, items, next) = ctl.list_resources(scope, &mesh, kind, &q.page()?).await?;
    Ok(Json(json!({
        "items": items.iter().map(|r| render_resource(&m, r)).collect::<Vec<_>>(),
        "nextCursor": next,
    })))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/{kind}/{name}", operation_id = "get{KindId}", summary = "A {Kind}",
    params(ResourcePath),
    responses((status = 200, description = "The resource", body = ref("#/components/schemas/{Kind}"), headers(("ETag" = String, description = "The version, for If-Match"))),
        ReadErrors))]
pub(crate) async fn get_resource(
    State(ctl): State<Control>,
    Path((org, mesh, kind, name)): Path<(String, String, String, String)>,
    Who(request): Who,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let (m, view) = ctl.get_resource(&request, &org, &mesh, kind, &name).await?;
    Ok(with_etag(StatusCode::OK, view.resource.version, render_resource(&m, &view)))
}

/// `?wait=` on a write: how long to wait for every proxy it configures to apply it.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    /// Wait up to this long (500ms, 30s, 2m; at most 5m) for every proxy the write configures
    /// to apply it; the answer comes then, at the first rejection, or when the wait is over,
    /// with status.propagation.wait saying which. The write is committed either way.
    #[serde(default)]
    #[param(nullable = false, pattern = "^[0-9]{1,6}(ms|s|m)$")]
    wait: Option<String>,
}

impl WaitQuery {
    fn wait(&self) -> Result<Option<PropagationWait>, ApiError> {
        self.wait.as_deref().map(parse_wait).transpose()
    }
}

/// A `wait` query parameter, or a 400 that names it.
fn parse_wait(text: &str) -> Result<PropagationWait, ApiError> {
    PropagationWait::parse(text).map_err(|_| {
        ApiError::bad_request(format!("wait: {}", PropagationWait::RULE))
            .with_field("wait", PropagationWait::RULE)
    })
}

/// How much longer than the server's request limit a request may take: the `wait` of a
/// write that asks to wait (a bad one adds nothing, and is refused by the handler).
pub(crate) fn extra_time(method: &axum::http::Method, uri: &axum::http::Uri) -> std::time::Duration {
    if !matches!(*method, axum::http::Method::PUT | axum::http::Method::DELETE) {
        return std::time::Duration::ZERO;
    }
    #[derive(Deserialize)]
    struct Lenient {
        wait: Option<String>,
    }
    let wait = axum::extract::Query::<Lenient>::try_from_uri(uri).ok().and_then(|q| q.0.wait);
    wait.and_then(|w| PropagationWait::parse(&w).ok()).map_or(std::time::Duration::ZERO, |w| w.get())
}

#[utoipa::path(put, path = "/api/v1/orgs/{org}/meshes/{mesh}/{kind}/{name}", operation_id = "put{KindId}", summary = "Create or replace a {Kind}; with ?wait=, answer once every proxy it configures has applied it, one rejected it, or the wait is over (status.propagation.wait)",
    params(ResourcePath, WriteConditions, WaitQuery),
    request_body = ref("#/components/schemas/{Kind}"),
    responses(
        (status = 200, description = "Replaced (or unchanged)", body = ref("#/components/schemas/{Kind}"), headers(("ETag" = String, description = "The version, for If-Match"))),
        (status = 201, description = "Created", body = ref("#/components/schemas/{Kind}"), headers(("ETag" = String, description = "The version, for If-Match"))),
        WriteErrors))]
pub(crate) async fn put_resource(
    State(ctl): State<Control>,
    Path((_, mesh, kind, name)): Path<(String, String, String, String)>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    headers: HeaderMap,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let wait = q.wait()?;
    let env = envelope(body.value, kind.name(), Some(&name), Some(&mesh))?;
    let (m, put) =
        ctl.put_resource(scope, &mesh, kind, &name, env.document(), &condition(&headers), wait).await?;
    let res =
        with_etag(created_or_ok(put.created), put.value.resource.version, render_resource(&m, &put.value));
    Ok(unchanged_header(res, put.changed))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/meshes/{mesh}/{kind}", operation_id = "create{KindId}", summary = "Create a {Kind} (name in metadata)",
    params(MeshPath, IdempotencyKey),
    request_body = ref("#/components/schemas/{Kind}"),
    responses(
        (status = 201, description = "Created", body = ref("#/components/schemas/{Kind}"), headers(("ETag" = String, description = "The version, for If-Match"))),
        WriteErrors))]
pub(crate) async fn create_resource(
    State(ctl): State<Control>,
    Path((_, mesh, kind)): Path<(String, String, String)>,
    headers: HeaderMap,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let idempotency = idempotency_key(&headers)?.map(|key| Idempotency {
        key,
        fingerprint: digest(
            &SHA256,
            &[b"POST ", mesh.as_bytes(), b"/", kind.plural().as_bytes(), b"\n", &body.bytes].concat(),
        )
        .as_ref()
        .to_vec(),
    });
    let env = envelope(body.value, kind.name(), None, Some(&mesh))?;
    let name = env.metadata.name.clone();
    let created = ctl
        .create_resource(scope, &mesh, kind, name.as_deref(), env.document(), idempotency, render_resource)
        .await?;
    Ok(match created {
        Created::Replayed { status, body } => {
            let mut res =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Json(body)).into_response();
            res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            res
        }
        Created::New { view, body, .. } => with_etag(StatusCode::CREATED, view.resource.version, body),
    })
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let v = v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY);
    v.map(|k| Some(k.to_owned())).ok_or_else(|| {
        ApiError::bad_request(format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible characters"))
    })
}

/// `DELETE`: 204, or with `?wait=` 200 and the deletion's propagation.
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/meshes/{mesh}/{kind}/{name}", operation_id = "delete{KindId}", summary = "Delete a {Kind}; with ?wait=, answer once the proxies it configured have applied the deletion (every proxy of the mesh for a Service), one rejected it, or the wait is over",
    params(ResourcePath, DeleteCondition, WaitQuery),
    responses((status = 204, description = "Deleted"),
        (status = 200, description = "Deleted, with ?wait=: the deletion's propagation", body = Deletion),
        GuardedDeleteErrors))]
pub(crate) async fn delete_resource(
    State(ctl): State<Control>,
    Path((_, mesh, kind, name)): Path<(String, String, String, String)>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    headers: HeaderMap,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    let kind = kind_of(&kind)?;
    let wait = q.wait()?;
    let propagation =
        ctl.delete_resource(scope, &mesh, kind, &name, if_match(&headers).as_ref(), wait).await?;
    Ok(match propagation {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(propagation) => Json(Deletion {
            api_version: API_VERSION,
            kind: kind.name(),
            metadata: DeletedResource { name, mesh },
            status: DeletionStatus { deleted: true, propagation },
        })
        .into_response(),
    })
}

/// A deletion sent with ?wait=, and how far it reached the proxies.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Deletion {
    api_version: &'static str,
    kind: &'static str,
    metadata: DeletedResource,
    status: DeletionStatus,
}

/// The deleted resource.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeletedResource {
    name: String,
    mesh: String,
}

/// The deletion and how far it has reached the proxies it configured.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeletionStatus {
    deleted: bool,
    #[schema(schema_with = propagation)]
    propagation: Propagation,
}

/// The `Propagation` component (`schemas`), which resource documents share.
fn propagation() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("Propagation")
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/services/{service}/effective", operation_id = "getEffectivePolicies",
    summary = "Every policy that applies to a service, in evaluation order",
    params(ServicePath),
    responses((status = 200, description = "Effective policies", body = EffectivePolicies), ReadErrors))]
pub(crate) async fn effective(
    State(ctl): State<Control>,
    Path((_, mesh, service)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<EffectivePolicies>, ApiError> {
    let e = ctl.effective(scope, &mesh, &service).await?;
    Ok(Json(EffectivePolicies {
        mesh: e.mesh.name.as_str().to_owned(),
        service: e.service.as_str().to_owned(),
        default_access: e.default_access,
        policies: e.policies,
    }))
}

/// Every policy that applies to a service, in evaluation order, and what the mesh does with
/// a call none of them allows.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EffectivePolicies {
    mesh: String,
    service: String,
    default_access: DefaultAccess,
    policies: Vec<EffectiveEntry>,
}

// ----- impact preview -----

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImpactQuery {
    /// Seconds back from now (default 3600)
    #[param(nullable = false, minimum = 10, maximum = 7_776_000)]
    window: Option<i64>,
}

/// `POST …/meshes/{mesh}/impact-preview`: what saving this AccessPolicy would deny or newly
/// allow among the mesh's calls of the last hour (`?window=` seconds), edge by edge, most
/// calls first; saves nothing.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/meshes/{mesh}/impact-preview", operation_id = "previewAccessImpact",
    summary = "What saving this AccessPolicy would deny or newly allow among the mesh's recorded calls, edge by edge (most calls first, at most 500); saves nothing",
    params(MeshPath, ImpactQuery),
    request_body = ref("#/components/schemas/AccessPolicy"),
    responses((status = 200, description = "The edges whose verdict changes", body = ref("#/components/schemas/AccessImpact")), WriteErrors))]
pub(crate) async fn impact_preview(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ImpactQuery>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<AccessImpact>, ApiError> {
    let env = envelope(body.value, Kind::AccessPolicy.name(), None, Some(&mesh))?;
    let name = env.metadata.name.clone();
    let mut preview = ctl.access_impact(scope, &mesh, name.as_deref(), env.document(), q.window).await?;
    let limit = usize::try_from(trellis_control::MAX_LIMIT).unwrap_or(usize::MAX);
    let calls = ImpactTotals::of(&preview.edges);
    let edges_changed = preview.edges.len();
    preview.edges.truncate(limit);
    Ok(Json(AccessImpact {
        mesh: preview.mesh.name.to_string(),
        policy: preview.policy,
        window_seconds: preview.seconds,
        calls,
        edges_changed,
        edges: preview.edges,
    }))
}
