//! A mesh's certificate authority over REST: status, trust bundles, the rotation state
//! machine, bring-your-own CAs, SVID settings, join tokens, and SVIDs for join tokens. The
//! use cases are `trellis_control`'s; this module converts JSON and HTTP at the edge.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_control::{Control, NewJoinToken};
use trellis_model::SpiffeId;
use trellis_pki::{CaInfo, CaStatus};
use trellis_store::{JoinToken, Mesh};

use crate::auth::{OrgScope, Scoped, bearer};
use crate::body::{ApiQuery, JsonBody, OptionalJsonBody, from_value};
use crate::error::ApiError;

const PEM_TYPE: &str = "application/x-pem-file";

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

fn render_status((mesh, st): (Mesh, CaStatus)) -> Json<Value> {
    Json(json!({
        "mesh": mesh.name.as_str(),
        "phase": st.phase,
        "trustDomain": st.trust_domain,
        "bundleSequence": st.bundle_sequence,
        "svidTtlSeconds": st.svid_ttl_seconds,
        "authorities": st.cas.iter().map(render_ca).collect::<Vec<_>>(),
    }))
}

/// `GET …/ca`: phase, trust domain, bundle sequence, SVID lifetime and every CA (never a key).
pub(crate) async fn status(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    Ok(render_status(ctl.ca_status(scope, &mesh).await?))
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
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<BundleQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    let pem = match q.format.as_deref() {
        None | Some("json" | "spiffe") => false,
        Some("pem") => true,
        Some(_) => {
            return Err(ApiError::bad_request("format must be json or pem")
                .with_field("format", "must be json or pem"));
        }
    };
    let b = ctl.ca_bundle(scope, &mesh).await?;
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
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    Ok(render_status(ctl.prepare_rotation(scope, &mesh).await?))
}

/// `POST …/ca/rotation/activate`: the prepared CA signs from now on.
pub(crate) async fn activate(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    Ok(render_status(ctl.activate_rotation(scope, &mesh).await?))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetireRequest {
    #[serde(default)]
    force: bool,
}

/// `POST …/ca/authorities/{id}/retire`: a previous CA leaves the bundle (409 while leaves in
/// use — unexpired, not renewed — chain to it, unless `force`).
pub(crate) async fn retire(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    Scoped { scope, body: OptionalJsonBody(body) }: Scoped<OptionalJsonBody>,
) -> Result<Json<Value>, ApiError> {
    let req: RetireRequest = match body {
        None => RetireRequest::default(),
        Some(b) => {
            crate::schema_check::check("CaRetire", &b.value)?;
            from_value(b.value)?
        }
    };
    Ok(render_status(ctl.retire_ca(scope, &mesh, &id, req.force).await?))
}

/// `DELETE …/ca/authorities/{id}`: abandons a rotation that was not activated.
pub(crate) async fn discard(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    Ok(render_status(ctl.discard_ca(scope, &mesh, &id).await?))
}

/// `POST …/ca/intermediate-csr`: a new intermediate key (sealed at once) and its CSR, for
/// the tenant to sign with its own root.
pub(crate) async fn intermediate_csr(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    let ca = ctl.intermediate_csr(scope, &mesh).await?;
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
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<Value>, ApiError> {
    crate::schema_check::check("CaChainUpload", &body.value)?;
    let req: ChainUpload = from_value(body.value)?;
    Ok(render_status(ctl.upload_intermediate(scope, &mesh, &id, &req.certificate_chain).await?))
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
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    crate::schema_check::check("CaUpload", &body.value)?;
    let req: CaUpload = from_value(body.value)?;
    let status = ctl.upload_ca(scope, &mesh, &req.certificate_chain, &req.private_key).await?;
    Ok((StatusCode::CREATED, render_status(status)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaSettings {
    svid_ttl_seconds: i64,
}

/// `PUT …/ca/settings`: the lifetime of new SVIDs.
pub(crate) async fn put_settings(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<Value>, ApiError> {
    crate::schema_check::check("CaSettings", &body.value)?;
    let req: CaSettings = from_value(body.value)?;
    Ok(render_status(ctl.set_svid_ttl(scope, &mesh, req.svid_ttl_seconds).await?))
}

// ----- join tokens -----

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
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    crate::schema_check::check("NewJoinToken", &body.value)?;
    let req: NewJoinToken = from_value(body.value)?;
    let (m, minted) = ctl.create_join_token(scope, &mesh, req).await?;
    let mut out = render_join_token(&m, &minted.record);
    out["token"] = Value::String(minted.token);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `GET …/join-tokens`: the mesh's join tokens, newest first (never the tokens themselves).
pub(crate) async fn list_join_tokens(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let (m, tokens) = ctl.list_join_tokens(scope, &mesh).await?;
    Ok(Json(json!({ "items": tokens.iter().map(|t| render_join_token(&m, t)).collect::<Vec<_>>() })))
}

/// `DELETE …/join-tokens/{id}`: revokes a join token (again: no error).
pub(crate) async fn revoke_join_token(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let (m, record) = ctl.revoke_join_token(scope, &mesh, &id).await?;
    Ok(Json(render_join_token(&m, &record)))
}

// ----- SVIDs for join tokens -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SvidRequest {
    csr: String,
}

/// `POST /api/v1/svids`: join token (bearer) + CSR → an X.509-SVID for the token's service.
/// The one endpoint a join token opens.
pub(crate) async fn issue_svid(
    State(ctl): State<Control>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)
        .map_err(|_| ApiError::unauthorized("send a join token as `Authorization: Bearer trls_join_…`"))?;
    crate::schema_check::check("SvidRequest", &body.value)?;
    let req: SvidRequest = from_value(body.value)?;
    let issued = ctl.issue_svid(token, req.csr.as_bytes()).await?;
    let expires: chrono::DateTime<Utc> = issued.svid.not_after.into();
    Ok(Json(json!({
        "spiffeId": issued.svid.spiffe_id.as_str(),
        "certificateChain": issued.svid.chain_pem,
        "trustBundle": issued.bundle_pem,
        "trustBundleSequence": issued.bundle_sequence,
        "expiresAt": expires,
        "serial": issued.svid.serial_hex,
    }))
    .into_response())
}
