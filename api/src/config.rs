//! The mesh configuration API: meshes and every mesh-scoped kind, with ETags, conditional
//! writes, cursor pagination, label selectors, reference checks and the audit log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_model::config::{self, FieldError, Kind, Labels, MeshSpec, Spec};
use trellis_model::{Action, MeshName, OrgSlug, ResourceName};
use trellis_store::{AuditEvent, Mesh, Resource, Selector, StoredResponse, TenantTx};

use crate::auth::{Caller, authorize};
use crate::body::{ApiQuery, IfMatch, JsonBody, etag, from_value, precondition};
use crate::{ApiError, AppState, REQUEST_ID};

/// The `apiVersion` of every document.
pub const API_VERSION: &str = "trellis.dev/v1";
/// Page size bounds for lists.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 500;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The writable part of a document; read-only fields are accepted (so that a GET can be
/// PUT back) and ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: MetadataIn,
    spec: Value,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetadataIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mesh: Option<String>,
    #[serde(default)]
    labels: Labels,
    // Read-only, ignored on input.
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
    fn parse(body: Value, kind: &str, name: Option<&str>, mesh: Option<&str>) -> Result<Envelope, ApiError> {
        if !body.is_object() {
            return Err(ApiError::invalid_field("(body)", "must be a JSON object with a spec"));
        }
        crate::schema_check::check(kind, &body)?;
        let env: Envelope = from_value(body)?;
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
        if errors.is_empty() { Ok(env) } else { Err(ApiError::invalid(errors)) }
    }
}

fn fe(field: &str, message: String) -> FieldError {
    FieldError { field: field.to_owned(), message }
}

fn labels_json(labels: &Labels) -> Value {
    serde_json::to_value(labels).expect("labels serialize")
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn audit(
    tx: &mut TenantTx,
    caller: &Caller,
    headers: &HeaderMap,
    action: String,
    target: String,
    details: Value,
) -> Result<(), ApiError> {
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action,
        target,
        request_id: request_id(headers),
        details,
    })
    .await?;
    Ok(())
}

fn kind_of(segment: &str) -> Result<Kind, ApiError> {
    Kind::ALL.into_iter().find(|k| k.plural() == segment).ok_or_else(|| {
        ApiError::not_found(format!(
            "no resource kind {segment:?}; kinds are {}",
            Kind::ALL.map(|k| k.plural()).join(", ")
        ))
    })
}

fn mesh_name(s: &str) -> Result<MeshName, ApiError> {
    MeshName::parse(s).map_err(|_| ApiError::not_found(format!("mesh {s:?} not found")))
}

pub(crate) async fn find_mesh(tx: &mut TenantTx, name: &str) -> Result<Mesh, ApiError> {
    let n = mesh_name(name)?;
    tx.mesh_by_name(&n).await?.ok_or_else(|| ApiError::not_found(format!("mesh {name:?} not found")))
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

// ----- pagination and selectors -----

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

struct Page {
    limit: i64,
    after: Option<String>,
    selector: Selector,
}

impl ListQuery {
    fn page(self) -> Result<Page, ApiError> {
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(s) => s.parse::<i64>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                ApiError::bad_request(format!("limit must be a number from 1 to {MAX_LIMIT}"))
                    .with_field("limit", &format!("must be a number from 1 to {MAX_LIMIT}"))
            })?,
        };
        let after = match self.cursor {
            None => None,
            Some(c) => Some(
                URL_SAFE_NO_PAD
                    .decode(c.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|s| ResourceName::parse(s).is_ok())
                    .ok_or_else(|| {
                        ApiError::bad_request("cursor is not one this server issued")
                            .with_field("cursor", "use the nextCursor of the previous page")
                    })?,
            ),
        };
        let selector = match self.label_selector {
            None => Selector::default(),
            Some(s) => parse_selector(&s).map_err(|m| {
                ApiError::bad_request(format!("labelSelector: {m}")).with_field("labelSelector", &m)
            })?,
        };
        Ok(Page { limit, after, selector })
    }
}

/// Parses `k=v,k2!=v2,k3,!k4` (Kubernetes equality-based selectors), bounded.
fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut sel = Selector::default();
    if s.len() > 1024 {
        return Err("must be at most 1024 characters".into());
    }
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let check = |k: &str| {
            if config::valid_label_key(k) {
                Ok(k.to_owned())
            } else {
                Err(format!("{k:?} is not a label key"))
            }
        };
        let value = |v: &str| {
            if v.is_empty() || config::valid_label_part(v, 63) {
                Ok(v.to_owned())
            } else {
                Err(format!("{v:?} is not a label value"))
            }
        };
        if let Some((k, v)) = term.split_once("!=") {
            sel.not_equal.push((check(k.trim())?, value(v.trim())?));
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            sel.equal.push((check(k.trim())?, value(v.trim())?));
        } else if let Some(k) = term.strip_prefix('!') {
            sel.absent.push(check(k.trim())?);
        } else {
            sel.exists.push(check(term)?);
        }
    }
    if sel.equal.len() + sel.not_equal.len() + sel.exists.len() + sel.absent.len() > 16 {
        return Err("must have at most 16 terms".into());
    }
    Ok(sel)
}

fn cursor_after(items: &[&str], limit: i64) -> Option<String> {
    (items.len() as i64 == limit).then(|| URL_SAFE_NO_PAD.encode(items.last().expect("non-empty").as_bytes()))
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
    State(s): State<AppState>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::Read).await?;
    let page = q.page()?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let meshes = tx.list_meshes_page(page.after.as_deref(), page.limit).await?;
    let names: Vec<&str> = meshes.iter().map(|m| m.name.as_str()).collect();
    Ok(Json(json!({
        "items": meshes.iter().map(render_mesh).collect::<Vec<_>>(),
        "nextCursor": cursor_after(&names, page.limit),
    })))
}

pub(crate) async fn get_mesh(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::Read).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, &mesh).await?;
    Ok(with_etag(StatusCode::OK, m.version, render_mesh(&m)))
}

pub(crate) async fn put_mesh(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::WriteConfig).await?;
    let name = MeshName::parse(&mesh).map_err(|e| ApiError::invalid_field("metadata.name", e.to_string()))?;
    let env = Envelope::parse(body.value, "Mesh", Some(name.as_str()), None)?;
    let mut spec: MeshSpec = config::parse_mesh_spec("spec", env.spec).map_err(ApiError::invalid)?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let existing = tx.mesh_by_name(&name).await?;
    let trust_domain = match (&existing, &spec.trust_domain) {
        (Some(m), Some(td)) if td != m.trust_domain.as_str() => {
            return Err(ApiError::invalid_field(
                "spec.trustDomain",
                format!(
                    "cannot change once set (it is {:?}): every identity in the mesh names it",
                    m.trust_domain.as_str()
                ),
            ));
        }
        (Some(m), _) => m.trust_domain.to_string(),
        (None, Some(td)) => {
            config::check_trust_domain_owner(td, &caller.org.slug)
                .map_err(|e| ApiError::invalid_field("spec.trustDomain", e))?;
            td.clone()
        }
        (None, None) => default_trust_domain(&s, &name, &caller.org.slug).await?,
    };
    spec.trust_domain = Some(trust_domain.clone());
    let pre = precondition(&headers, existing.as_ref().map(|m| m.version))?;
    let spec_json = serde_json::to_value(&spec).expect("mesh spec serializes");
    let put = tx.put_mesh(&name, &trust_domain, &spec_json, &labels_json(&env.metadata.labels), pre).await?;
    if put.created {
        // Each mesh gets its own root CA, in the transaction that creates it.
        s.authority.create_root(&mut tx, &put.value).await?;
    }
    if put.changed {
        let action = if put.created { "mesh.create" } else { "mesh.update" };
        audit(
            &mut tx,
            &caller,
            &headers,
            action.into(),
            format!("meshes/{name}"),
            json!({"generation": put.value.generation}),
        )
        .await?;
    }
    tx.commit().await?;
    s.authority.forget(put.value.id);
    let status = if put.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(unchanged_header(with_etag(status, put.value.version, render_mesh(&put.value)), put.changed))
}

/// A new mesh's trust domain when its spec names none. The plain default is still held when
/// an organization that had this slug before made a mesh of this name; then a random label
/// keeps the new one apart (no other organization can take a name under this slug).
async fn default_trust_domain(s: &AppState, mesh: &MeshName, org: &OrgSlug) -> Result<String, ApiError> {
    let plain = config::default_trust_domain(mesh, org, None);
    if s.store.mesh_of_trust_domain(&plain).await?.is_none() {
        return Ok(plain);
    }
    let salt: String = (0..8)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random_range(0..36)]))
        .collect();
    Ok(config::default_trust_domain(mesh, org, Some(&salt)))
}

pub(crate) async fn delete_mesh(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::WriteConfig).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, &mesh).await?;
    if let Some(im) = IfMatch::from_headers(&headers) {
        im.expect(Some(m.version))?;
    }
    tx.delete_mesh(m.id).await?;
    audit(&mut tx, &caller, &headers, "mesh.delete".into(), format!("meshes/{}", m.name), json!({})).await?;
    tx.commit().await?;
    s.authority.forget(m.id);
    Ok(StatusCode::NO_CONTENT)
}

// ----- mesh-scoped resources -----

/// The online proxies of a mesh, each with what its resources configure, the revision it is
/// fully in sync with, and the reason it last rejected a response (if it did and has not
/// accepted one since).
pub(crate) struct Fleet {
    proxies: Vec<Proxy>,
}

struct Proxy {
    service: String,
    calls: Vec<String>,
    serves: bool,
    synced: Option<i64>,
    nack: Option<String>,
}

impl Proxy {
    /// A resource whose kind has `reach`, targeting `service`, configures this proxy.
    fn reached_by(&self, reach: config::Reach, service: &str) -> bool {
        (reach.callers && self.calls.iter().any(|c| c == service))
            || (reach.instances && self.serves && self.service == service)
    }

    fn applied(&self, revision: i64) -> bool {
        self.synced.is_some_and(|s| s >= revision)
    }
}

async fn fleet(tx: &mut TenantTx, mesh: &Mesh) -> Result<Fleet, ApiError> {
    let mut nacks: std::collections::HashMap<uuid::Uuid, String> = std::collections::HashMap::new();
    for l in tx.ledger(mesh.id).await? {
        if let (Some(v), Some(e)) = (l.nacked_version, l.nack_error) {
            nacks
                .entry(l.dataplane_id)
                .or_insert_with(|| format!("{}: {e} (version {v})", short_type(&l.type_url)));
        }
    }
    let proxies = tx
        .list_dataplanes(mesh.id)
        .await?
        .into_iter()
        .filter(|d| d.online)
        .map(|d| Proxy {
            nack: nacks.remove(&d.id),
            service: d.service,
            calls: d.calls,
            serves: d.serves,
            synced: d.synced_revision,
        })
        .collect();
    Ok(Fleet { proxies })
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// "applied by N of M proxies; rejected by K: reason" for the last write of `r`, counting
/// the proxies it configures: those that were sent resources of its target service on the
/// side its kind acts on.
fn propagation(fleet: &Fleet, r: &Resource) -> Value {
    let Some(rev) = r.mesh_revision else { return Value::Null };
    // Read from the stored spec (checked when written), not parsed again on every read.
    let target =
        Kind::lookup(&r.kind).and_then(|k| Some((k.reach(), k.stored_target(&r.spec, r.name.as_str())?)));
    let proxies: Vec<&Proxy> = match target {
        Some((reach, service)) => fleet.proxies.iter().filter(|p| p.reached_by(reach, service)).collect(),
        None => fleet.proxies.iter().collect(),
    };
    let total = proxies.len();
    let applied = proxies.iter().filter(|p| p.applied(rev)).count();
    let errors: Vec<&str> =
        proxies.iter().filter(|p| !p.applied(rev)).filter_map(|p| p.nack.as_deref()).collect();
    let mut summary = format!("applied by {applied} of {total} proxies");
    if let Some(first) = errors.first() {
        summary.push_str(&format!("; rejected by {}: {first}", errors.len()));
    }
    json!({
        "meshRevision": rev,
        "proxies": total,
        "applied": applied,
        "rejected": errors.len(),
        "pending": total - applied - errors.len(),
        "errors": errors.iter().take(5).collect::<Vec<_>>(),
        "summary": summary,
    })
}

fn render_resource(mesh: &Mesh, r: &Resource, fleet: &Fleet) -> Value {
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
        "status": { "observedGeneration": r.generation, "propagation": propagation(fleet, r) },
    })
}

/// Parses a spec and resolves the services it names within the mesh.
async fn checked_spec(tx: &mut TenantTx, mesh: &Mesh, kind: Kind, spec: Value) -> Result<Spec, ApiError> {
    let parsed = Spec::parse(kind, "spec", spec).map_err(ApiError::invalid)?;
    let mut errors = Vec::new();
    // Each referenced service's ports, or None when there is no such service.
    let mut services: std::collections::HashMap<&str, Option<Vec<u32>>> = std::collections::HashMap::new();
    for r in &parsed.references {
        if !services.contains_key(r.service.as_str()) {
            let ports = match ResourceName::parse(&r.service) {
                Ok(n) => tx.get_resource(mesh.id, Kind::Service.name(), &n).await?.map(|svc| {
                    let spec: Option<config::ServiceSpec> = serde_json::from_value(svc.spec).ok();
                    spec.map(|s| s.ports.iter().map(|p| p.port).collect()).unwrap_or_default()
                }),
                Err(_) => None,
            };
            services.insert(&r.service, ports);
        }
        match (&services[r.service.as_str()], &r.port) {
            (None, _) => errors.push(fe(
                &r.field,
                format!("no service named {:?} in mesh {:?}", r.service, mesh.name.as_str()),
            )),
            (Some(ports), Some(p)) if !ports.contains(&p.port) => errors.push(fe(
                &p.field,
                format!("service {:?} does not expose port {} (its ports: {ports:?})", r.service, p.port),
            )),
            _ => {}
        }
    }
    if errors.is_empty() { Ok(parsed.spec) } else { Err(ApiError::invalid(errors)) }
}

/// A service cannot be deleted while other resources reference it.
async fn referrers(tx: &mut TenantTx, mesh: &Mesh, service: &str) -> Result<Vec<String>, ApiError> {
    let all = tx.list_resources(mesh.id, None, &Selector::default(), None, i64::MAX).await?;
    let mut out = Vec::new();
    for r in all.iter().filter(|r| r.kind != Kind::Service.name()) {
        let Some(kind) = Kind::lookup(&r.kind) else { continue };
        if let Ok(p) = Spec::parse(kind, "spec", r.spec.clone())
            && p.references.iter().any(|x| x.service == service)
        {
            out.push(format!("{}/{}", kind.plural(), r.name));
        }
    }
    Ok(out)
}

fn resource_name(s: &str, field: &str) -> Result<ResourceName, ApiError> {
    ResourceName::parse(s).map_err(|e| ApiError::invalid_field(field, e.to_string()))
}

pub(crate) async fn list_resources(
    State(s): State<AppState>,
    Path((org, mesh, kind)): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::Read).await?;
    let kind = kind_of(&kind)?;
    let page = q.page()?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, &mesh).await?;
    let items =
        tx.list_resources(m.id, Some(kind.name()), &page.selector, page.after.as_deref(), page.limit).await?;
    let names: Vec<&str> = items.iter().map(|r| r.name.as_str()).collect();
    let fleet = fleet(&mut tx, &m).await?;
    Ok(Json(json!({
        "items": items.iter().map(|r| render_resource(&m, r, &fleet)).collect::<Vec<_>>(),
        "nextCursor": cursor_after(&names, page.limit),
    })))
}

pub(crate) async fn get_resource(
    State(s): State<AppState>,
    Path((org, mesh, kind, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::Read).await?;
    let kind = kind_of(&kind)?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, &mesh).await?;
    let not_found = || ApiError::not_found(format!("{} {name:?} not found in mesh {mesh:?}", kind.name()));
    let n = ResourceName::parse(&name).map_err(|_| not_found())?;
    let r = tx.get_resource(m.id, kind.name(), &n).await?.ok_or_else(not_found)?;
    let fleet = fleet(&mut tx, &m).await?;
    Ok(with_etag(StatusCode::OK, r.version, render_resource(&m, &r, &fleet)))
}

pub(crate) async fn put_resource(
    State(s): State<AppState>,
    Path((org, mesh, kind, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::WriteConfig).await?;
    let kind = kind_of(&kind)?;
    let n = resource_name(&name, "metadata.name")?;
    let env = Envelope::parse(body.value, kind.name(), Some(n.as_str()), Some(&mesh))?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, &mesh).await?;
    let spec = checked_spec(&mut tx, &m, kind, env.spec).await?;
    let current = tx.get_resource(m.id, kind.name(), &n).await?.map(|r| r.version);
    let pre = precondition(&headers, current)?;
    let put = tx
        .put_resource(m.id, kind.name(), &n, &spec.to_json(), &labels_json(&env.metadata.labels), pre)
        .await?;
    if put.changed {
        let action =
            format!("{}.{}", kind.name().to_lowercase(), if put.created { "create" } else { "update" });
        let target = format!("meshes/{}/{}/{}", m.name, kind.plural(), n);
        audit(&mut tx, &caller, &headers, action, target, json!({"generation": put.value.generation}))
            .await?;
    }
    let fleet = fleet(&mut tx, &m).await?;
    tx.commit().await?;
    let status = if put.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(unchanged_header(
        with_etag(status, put.value.version, render_resource(&m, &put.value, &fleet)),
        put.changed,
    ))
}

pub(crate) async fn create_resource(
    State(s): State<AppState>,
    Path((org, mesh, kind)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::WriteConfig).await?;
    let kind = kind_of(&kind)?;
    let key = idempotency_key(&headers)?;
    let fingerprint = digest(
        &SHA256,
        &[b"POST ", mesh.as_bytes(), b"/", kind.plural().as_bytes(), b"\n", &body.bytes].concat(),
    )
    .as_ref()
    .to_vec();
    let env = Envelope::parse(body.value, kind.name(), None, Some(&mesh))?;
    let name = env
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| ApiError::invalid_field("metadata.name", "is required"))?;
    let n = resource_name(name, "metadata.name")?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    if let Some(key) = &key
        && let Some(stored) = tx.idempotent_response(key).await?
    {
        if stored.fingerprint != fingerprint {
            return Err(ApiError::unprocessable(
                "this Idempotency-Key was used for a different request; use a new key",
            ));
        }
        let mut res = (StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK), Json(stored.body))
            .into_response();
        res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(res);
    }
    let m = find_mesh(&mut tx, &mesh).await?;
    let spec = checked_spec(&mut tx, &m, kind, env.spec).await?;
    let r = tx
        .create_resource(m.id, kind.name(), &n, &spec.to_json(), &labels_json(&env.metadata.labels))
        .await?;
    let target = format!("meshes/{}/{}/{}", m.name, kind.plural(), n);
    audit(&mut tx, &caller, &headers, format!("{}.create", kind.name().to_lowercase()), target, json!({}))
        .await?;
    let fleet = fleet(&mut tx, &m).await?;
    let body = render_resource(&m, &r, &fleet);
    if let Some(key) = &key {
        tx.store_response(key, &StoredResponse { fingerprint, status: 201, body: body.clone() }).await?;
    }
    tx.commit().await?;
    Ok(with_etag(StatusCode::CREATED, r.version, body))
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let v = v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY);
    v.map(|k| Some(k.to_owned())).ok_or_else(|| {
        ApiError::bad_request(format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible characters"))
    })
}

pub(crate) async fn delete_resource(
    State(s): State<AppState>,
    Path((org, mesh, kind, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::WriteConfig).await?;
    let kind = kind_of(&kind)?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, &mesh).await?;
    let not_found = || ApiError::not_found(format!("{} {name:?} not found in mesh {mesh:?}", kind.name()));
    let n = ResourceName::parse(&name).map_err(|_| not_found())?;
    let current = tx.get_resource(m.id, kind.name(), &n).await?.ok_or_else(not_found)?;
    let if_version = match IfMatch::from_headers(&headers) {
        Some(im) => Some(im.expect(Some(current.version))?),
        None => None,
    };
    if kind == Kind::Service {
        let users = referrers(&mut tx, &m, n.as_str()).await?;
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "service {:?} is still referenced by {}; change or delete those first",
                n.as_str(),
                users.join(", ")
            )));
        }
    }
    tx.delete_resource(m.id, kind.name(), &n, if_version).await?;
    let target = format!("meshes/{}/{}/{}", m.name, kind.plural(), n);
    audit(&mut tx, &caller, &headers, format!("{}.delete", kind.name().to_lowercase()), target, json!({}))
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn effective(
    State(s): State<AppState>,
    Path((org, mesh, service)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::Read).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, &mesh).await?;
    let not_found = || ApiError::not_found(format!("service {service:?} not found in mesh {mesh:?}"));
    let n = ResourceName::parse(&service).map_err(|_| not_found())?;
    tx.get_resource(m.id, Kind::Service.name(), &n).await?.ok_or_else(not_found)?;
    let all = tx.list_resources(m.id, None, &Selector::default(), None, i64::MAX).await?;
    let parsed: Vec<(String, Spec)> = all
        .iter()
        .filter_map(|r| {
            let kind = Kind::lookup(&r.kind)?;
            Some((r.name.to_string(), Spec::parse(kind, "spec", r.spec.clone()).ok()?.spec))
        })
        .collect();
    let entries = config::effective(n.as_str(), parsed.iter().map(|(name, spec)| (name.as_str(), spec)));
    let default_access: MeshSpec = serde_json::from_value(m.spec.clone()).unwrap_or_default();
    Ok(Json(json!({
        "mesh": m.name.as_str(),
        "service": n.as_str(),
        "defaultAccess": default_access.default_access,
        "policies": entries,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let s = parse_selector("app=web, tier!=db,canary,!legacy").unwrap();
        assert_eq!(s.equal, [("app".to_owned(), "web".to_owned())]);
        assert_eq!(s.not_equal, [("tier".to_owned(), "db".to_owned())]);
        assert_eq!(s.exists, ["canary"]);
        assert_eq!(s.absent, ["legacy"]);
        assert!(parse_selector("a b=c").is_err());
        assert!(parse_selector(&"a,".repeat(20)).is_err());
    }
}
