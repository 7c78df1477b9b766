//! The mesh configuration API over REST: documents (`apiVersion`, `kind`, `metadata`,
//! `spec`, `status`) in and out, ETags and conditional headers, pagination query parameters
//! and idempotency keys. The use cases are `trellis_control`'s.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ring::digest::{SHA256, digest};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_control::{API_VERSION, Control, Created, Envelope, Idempotency, MeshWrite, Page, ResourceView};
use trellis_model::PropagationWait;
use trellis_model::config::{ImpactTotals, Kind};
use trellis_store::Mesh;

use crate::auth::{OrgScope, Scoped, Who};
use crate::body::{ApiQuery, JsonBody, condition, etag, if_match};
use crate::error::ApiError;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

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
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    label_selector: Option<String>,
}

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

pub(crate) async fn list_meshes(
    State(ctl): State<Control>,
    ApiQuery(q): ApiQuery<ListQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let (meshes, next) = ctl.list_meshes(scope, &q.page()?).await?;
    Ok(Json(json!({ "items": meshes.iter().map(render_mesh).collect::<Vec<_>>(), "nextCursor": next })))
}

pub(crate) async fn get_mesh(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    let m = ctl.get_mesh(scope, &mesh).await?;
    Ok(with_etag(StatusCode::OK, m.version, render_mesh(&m)))
}

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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    #[serde(default)]
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
        Some(p) => Json(json!({
            "apiVersion": API_VERSION,
            "kind": kind.name(),
            "metadata": { "name": name, "mesh": mesh },
            "status": { "deleted": true, "propagation": p },
        }))
        .into_response(),
    })
}

pub(crate) async fn effective(
    State(ctl): State<Control>,
    Path((_, mesh, service)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let e = ctl.effective(scope, &mesh, &service).await?;
    Ok(Json(json!({
        "mesh": e.mesh.name.as_str(),
        "service": e.service.as_str(),
        "defaultAccess": e.default_access,
        "policies": e.policies,
    })))
}

// ----- impact preview -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImpactQuery {
    /// Seconds back from now.
    window: Option<i64>,
}

/// `POST …/meshes/{mesh}/impact-preview`: what saving this AccessPolicy would deny or newly
/// allow among the mesh's calls of the last hour (`?window=` seconds), edge by edge, most
/// calls first; saves nothing.
pub(crate) async fn impact_preview(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ImpactQuery>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<Value>, ApiError> {
    let env = envelope(body.value, Kind::AccessPolicy.name(), None, Some(&mesh))?;
    let name = env.metadata.name.clone();
    let preview = ctl.access_impact(scope, &mesh, name.as_deref(), env.document(), q.window).await?;
    let limit = usize::try_from(trellis_control::MAX_LIMIT).unwrap_or(usize::MAX);
    Ok(Json(json!({
        "mesh": preview.mesh.name,
        "policy": preview.policy,
        "windowSeconds": preview.seconds,
        "calls": ImpactTotals::of(&preview.edges),
        "edgesChanged": preview.edges.len(),
        "edges": &preview.edges[..preview.edges.len().min(limit)],
    })))
}
