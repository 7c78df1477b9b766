//! A mesh's certificate authority over REST: status, trust bundles, the rotation state
//! machine, bring-your-own CAs, SVID settings, join tokens, and SVIDs for join tokens.
//! The PKI itself lives in `trellis_pki`; this module converts JSON and HTTP at the edge.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_model::config::{Kind, Labels};
use trellis_model::{Action, ResourceName, SECRET_LEN, Token, TokenKind};
use trellis_model::{SpiffeId, SvidTtl, Tags};
use trellis_pki::{CaInfo, CaStatus};
use trellis_store::{AuditEvent, JoinToken, Mesh, TenantTx};
use uuid::Uuid;

use crate::auth::{Caller, authorize, token_hash};
use crate::body::{ApiQuery, JsonBody, OptionalJsonBody, from_value};
use crate::config::find_mesh;
use crate::{ApiError, AppState, request_id};

/// Largest uploaded chain, as PEM text (the published schema's `maxLength`, so that an
/// oversized chain is a 422 naming `certificateChain`; the body as a whole is bounded by the
/// router's limit).
pub const MAX_CHAIN_PEM: usize = 64 * 1024;
/// Largest uploaded private key, as PEM text.
pub const MAX_KEY_PEM: usize = 16 * 1024;
/// Join token lifetime: default and bounds, in seconds.
pub const JOIN_TTL_DEFAULT: i64 = 3600;
pub const JOIN_TTL_MIN: i64 = 60;
pub const JOIN_TTL_MAX: i64 = 7 * 24 * 3600;

const PEM_TYPE: &str = "application/x-pem-file";

/// A tenant transaction on the mesh `name`, for a caller allowed `action`.
async fn mesh_tx(
    s: &AppState,
    headers: &HeaderMap,
    org: &str,
    mesh: &str,
    action: Action,
) -> Result<(Caller, TenantTx, Mesh), ApiError> {
    let caller = authorize(s, headers, org, action).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, mesh).await?;
    Ok((caller, tx, m))
}

async fn audit(
    tx: &mut TenantTx,
    caller: &Caller,
    headers: &HeaderMap,
    action: &str,
    target: String,
    details: Value,
) -> Result<(), ApiError> {
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action: action.into(),
        target,
        request_id: request_id(headers),
        details,
    })
    .await?;
    Ok(())
}

fn render_ca(c: &CaInfo) -> Value {
    json!({
        "id": c.id,
        "origin": c.origin,
        "state": c.state,
        "rootFingerprint": c.root_fingerprint,
        "notAfter": c.not_after,
        "daysToExpiry": c.days_to_expiry,
        "liveLeaves": c.live_leaves,
        "certificatePem": c.certificate_pem,
        "csrPem": c.csr_pem,
        "createdAt": c.created_at,
        "activatedAt": c.activated_at,
        "retiredAt": c.retired_at,
    })
}

fn render_status(mesh: &Mesh, st: &CaStatus) -> Value {
    json!({
        "mesh": mesh.name.as_str(),
        "phase": st.phase,
        "trustDomain": st.trust_domain,
        "bundleSequence": st.bundle_sequence,
        "svidTtlSeconds": st.svid_ttl_seconds,
        "authorities": st.cas.iter().map(render_ca).collect::<Vec<_>>(),
    })
}

/// The status after a change, rendered, then the change committed.
async fn finish(s: &AppState, mut tx: TenantTx, mesh: &Mesh) -> Result<Json<Value>, ApiError> {
    let st = s.authority.status(&mut tx, mesh).await?;
    tx.commit().await?;
    // This replica issues from the new state at once; others follow the change feed.
    s.authority.forget(mesh.id);
    Ok(Json(render_status(mesh, &st)))
}

fn ca_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("certificate authority not found"))
}

/// `GET …/ca`: phase, trust domain, bundle sequence, SVID lifetime and every CA (never a key).
pub(crate) async fn status(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::Read).await?;
    finish(&s, tx, &m).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BundleQuery {
    #[serde(default)]
    format: Option<String>,
}

/// `GET …/ca/bundle`: the SPIFFE bundle (JSON, with `spiffe_sequence`) or, with
/// `?format=pem`, the roots as PEM. Both carry the sequence in `trellis-bundle-sequence`.
pub(crate) async fn bundle(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<BundleQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pem = match q.format.as_deref() {
        None | Some("json" | "spiffe") => false,
        Some("pem") => true,
        Some(_) => {
            return Err(ApiError::bad_request("format must be json or pem")
                .with_field("format", "must be json or pem"));
        }
    };
    let (_, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::Read).await?;
    let b = s.authority.bundle(&mut tx, &m).await?;
    tx.commit().await?;
    let (ct, body) = if pem {
        (PEM_TYPE, b.to_pem())
    } else {
        ("application/json", b.to_spiffe_json().map_err(|e| ApiError::internal(&e))?)
    };
    let mut res = Body::from(body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    res.headers_mut().insert("trellis-bundle-sequence", HeaderValue::from(b.sequence()));
    Ok(res)
}

/// `POST …/ca/rotation/prepare`: a new root, in the bundle beside the current one.
pub(crate) async fn prepare(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageCa).await?;
    let ca = s.authority.prepare_rotation(&mut tx, &m).await?;
    let target = format!("meshes/{}/ca/authorities/{}", m.name, ca.id);
    audit(
        &mut tx,
        &caller,
        &headers,
        "ca.rotation.prepare",
        target,
        json!({"fingerprint": ca.root_fingerprint}),
    )
    .await?;
    finish(&s, tx, &m).await
}

/// `POST …/ca/rotation/activate`: the prepared CA signs from now on.
pub(crate) async fn activate(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageCa).await?;
    let ca = s.authority.activate(&mut tx, &m).await?;
    let target = format!("meshes/{}/ca/authorities/{}", m.name, ca.id);
    audit(&mut tx, &caller, &headers, "ca.rotation.activate", target, json!({})).await?;
    finish(&s, tx, &m).await
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetireRequest {
    #[serde(default)]
    force: bool,
}

/// `POST …/ca/authorities/{id}/retire`: a previous CA leaves the bundle (409 while unexpired
/// leaves chain to it, unless `force`).
pub(crate) async fn retire(
    State(s): State<AppState>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Json<Value>, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageCa).await?;
    let req: RetireRequest = match body {
        None => RetireRequest::default(),
        Some(b) => {
            crate::schema_check::check("CaRetire", &b.value)?;
            from_value(b.value)?
        }
    };
    let id = ca_id(&id)?;
    s.authority.retire(&mut tx, &m, id, req.force).await?;
    let target = format!("meshes/{}/ca/authorities/{id}", m.name);
    audit(&mut tx, &caller, &headers, "ca.retire", target, json!({"force": req.force})).await?;
    finish(&s, tx, &m).await
}

/// `DELETE …/ca/authorities/{id}`: abandons a rotation that was not activated.
pub(crate) async fn discard(
    State(s): State<AppState>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageCa).await?;
    let id = ca_id(&id)?;
    s.authority.discard(&mut tx, &m, id).await?;
    let target = format!("meshes/{}/ca/authorities/{id}", m.name);
    audit(&mut tx, &caller, &headers, "ca.discard", target, json!({})).await?;
    finish(&s, tx, &m).await
}

/// `POST …/ca/intermediate-csr`: a new intermediate key (sealed at once) and its CSR, for
/// the tenant to sign with its own root.
pub(crate) async fn intermediate_csr(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageCa).await?;
    let ca = s.authority.intermediate_csr(&mut tx, &m).await?;
    let target = format!("meshes/{}/ca/authorities/{}", m.name, ca.id);
    audit(&mut tx, &caller, &headers, "ca.intermediate.csr", target, json!({})).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": ca.id, "state": ca.state.as_str(), "csr": ca.csr_pem })))
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChainUpload {
    certificate_chain: String,
}

/// `PUT …/ca/authorities/{id}/chain`: the chain the tenant signed for a pending CSR; checked,
/// then the CA is `prepared`.
pub(crate) async fn upload_chain(
    State(s): State<AppState>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageCa).await?;
    crate::schema_check::check("CaChainUpload", &body.value)?;
    let req: ChainUpload = from_value(body.value)?;
    let id = ca_id(&id)?;
    let ca = s.authority.upload_intermediate(&mut tx, &m, id, &req.certificate_chain).await?;
    let target = format!("meshes/{}/ca/authorities/{id}", m.name);
    audit(
        &mut tx,
        &caller,
        &headers,
        "ca.intermediate.upload",
        target,
        json!({"fingerprint": ca.root_fingerprint}),
    )
    .await?;
    finish(&s, tx, &m).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaUpload {
    certificate_chain: String,
    private_key: String,
}

/// `POST …/ca/upload`: a CA certificate chain and its key (sealed at once); it becomes
/// `prepared`. The key is never returned.
pub(crate) async fn upload_ca(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageCa).await?;
    crate::schema_check::check("CaUpload", &body.value)?;
    let req: CaUpload = from_value(body.value)?;
    let ca = s.authority.upload_ca(&mut tx, &m, &req.certificate_chain, &req.private_key).await?;
    let target = format!("meshes/{}/ca/authorities/{}", m.name, ca.id);
    audit(&mut tx, &caller, &headers, "ca.upload", target, json!({"fingerprint": ca.root_fingerprint}))
        .await?;
    let res = finish(&s, tx, &m).await?;
    Ok((StatusCode::CREATED, res).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaSettings {
    svid_ttl_seconds: i64,
}

/// `PUT …/ca/settings`: the lifetime of new SVIDs.
pub(crate) async fn put_settings(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageCa).await?;
    crate::schema_check::check("CaSettings", &body.value)?;
    let req: CaSettings = from_value(body.value)?;
    let ttl = SvidTtl::from_secs(req.svid_ttl_seconds).map_err(|_| {
        ApiError::invalid_field(
            "svidTtlSeconds",
            format!("must be from {} (1 hour) to {} (7 days)", SvidTtl::MIN_SECS, SvidTtl::MAX_SECS),
        )
    })?;
    tx.set_svid_ttl(m.id, ttl).await?;
    let target = format!("meshes/{}/ca", m.name);
    let audited = json!({"svidTtlSeconds": ttl.as_secs_i32()});
    audit(&mut tx, &caller, &headers, "ca.settings.update", target, audited).await?;
    finish(&s, tx, &m).await
}

// ----- join tokens -----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewJoinToken {
    service: String,
    #[serde(default)]
    tags: Labels,
    #[serde(default)]
    ttl_seconds: Option<i64>,
    #[serde(default)]
    single_use: bool,
}

/// The identity a join token's SVIDs carry, by the one layout in [`SpiffeId::workload`]; null
/// only if a stored service name no longer parses.
fn workload_id(mesh: &Mesh, service: &str) -> Option<String> {
    SpiffeId::workload(&mesh.trust_domain, mesh.name.as_str(), service).ok().map(|id| id.to_string())
}

fn render_join_token(mesh: &Mesh, t: &JoinToken) -> Value {
    let status = if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at <= Utc::now() {
        "expired"
    } else if t.single_use && t.uses > 0 {
        "used"
    } else {
        "active"
    };
    json!({
        "id": t.id,
        "mesh": mesh.name.as_str(),
        "service": t.service,
        "spiffeId": workload_id(mesh, &t.service),
        "tags": t.tags,
        "singleUse": t.single_use,
        "status": status,
        "uses": t.uses,
        "createdBy": t.created_by,
        "createdAt": t.created_at,
        "expiresAt": t.expires_at,
        "usedAt": t.used_at,
        "revokedAt": t.revoked_at,
    })
}

/// `POST …/join-tokens`: a `trls_join_…` token for one service of the mesh, shown once.
pub(crate) async fn create_join_token(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageTokens).await?;
    crate::schema_check::check("NewJoinToken", &body.value)?;
    let req: NewJoinToken = from_value(body.value)?;
    // A token's tags become its dataplanes' tags: the same rule as a node's own.
    let tags = Tags::parse(&req.tags).map_err(|e| ApiError::invalid_field("tags", e.to_string()))?;
    let ttl = req.ttl_seconds.unwrap_or(JOIN_TTL_DEFAULT);
    if !(JOIN_TTL_MIN..=JOIN_TTL_MAX).contains(&ttl) {
        return Err(ApiError::invalid_field(
            "ttlSeconds",
            format!("must be from {JOIN_TTL_MIN} to {JOIN_TTL_MAX} (7 days)"),
        ));
    }
    let no_service = || {
        ApiError::invalid_field(
            "service",
            format!("no Service {:?} in mesh {:?}: create the Service first", req.service, m.name.as_str()),
        )
    };
    let service = ResourceName::parse(&req.service).map_err(|_| no_service())?;
    if tx.get_resource(m.id, Kind::Service.name(), &service).await?.is_none() {
        return Err(no_service());
    }
    let mut secret = [0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    let token = Token::new(TokenKind::Join, caller.org.id, secret).to_string();
    let tags = serde_json::to_value(&tags).expect("tags serialize");
    let record = tx
        .create_join_token(
            m.id,
            &token_hash(&token),
            service.as_str(),
            &tags,
            req.single_use,
            &caller.actor,
            Utc::now() + Duration::seconds(ttl),
        )
        .await?;
    let target = format!("meshes/{}/join-tokens/{}", m.name, record.id);
    let details =
        json!({"service": record.service, "singleUse": record.single_use, "expiresAt": record.expires_at});
    audit(&mut tx, &caller, &headers, "join-token.create", target, details).await?;
    tx.commit().await?;
    let mut out = render_join_token(&m, &record);
    out["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `GET …/join-tokens`: the mesh's join tokens, newest first (never the tokens themselves).
pub(crate) async fn list_join_tokens(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageTokens).await?;
    let tokens = tx.list_join_tokens(m.id).await?;
    tx.commit().await?;
    Ok(Json(json!({ "items": tokens.iter().map(|t| render_join_token(&m, t)).collect::<Vec<_>>() })))
}

/// `DELETE …/join-tokens/{id}`: revokes a join token (again: no error).
pub(crate) async fn revoke_join_token(
    State(s): State<AppState>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (caller, mut tx, m) = mesh_tx(&s, &headers, &org, &mesh, Action::ManageTokens).await?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("join token not found"))?;
    let record = tx.revoke_join_token(m.id, id).await?;
    let target = format!("meshes/{}/join-tokens/{id}", m.name);
    audit(&mut tx, &caller, &headers, "join-token.revoke", target, json!({})).await?;
    tx.commit().await?;
    Ok(Json(render_join_token(&m, &record)))
}

// ----- SVIDs for join tokens -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SvidRequest {
    csr: String,
}

/// `POST /api/v1/svids`: join token (bearer) + CSR → an X.509-SVID for the token's service.
/// Only the CSR's public key is used. The one endpoint a join token opens.
pub(crate) async fn issue_svid(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let refused = || ApiError::unauthorized("send a join token as `Authorization: Bearer trls_join_…`");
    let value = headers.get(header::AUTHORIZATION).ok_or_else(refused)?.to_str().map_err(|_| refused())?;
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => t.trim(),
        _ => return Err(refused()),
    };
    crate::schema_check::check("SvidRequest", &body.value)?;
    let req: SvidRequest = from_value(body.value)?;
    let issued = s.authority.issue_with_join_token(token, req.csr.as_bytes()).await?;
    let expires: chrono::DateTime<Utc> = issued.svid.not_after.into();
    tracing::info!(spiffe_id = %issued.svid.spiffe_id, serial = %issued.svid.serial_hex, org = %issued.org,
        "issued an SVID for a join token");
    Ok((
        StatusCode::OK,
        Json(json!({
            "spiffeId": issued.svid.spiffe_id.as_str(),
            "certificateChain": issued.svid.chain_pem,
            "trustBundle": issued.bundle_pem,
            "trustBundleSequence": issued.bundle_sequence,
            "expiresAt": expires,
            "serial": issued.svid.serial_hex,
        })),
    )
        .into_response())
}
