//! A mesh's certificate authority over REST: status, trust bundles, the rotation state
//! machine, bring-your-own CAs, SVID settings, join tokens, and SVIDs for join tokens. The
//! use cases are `trellis_control`'s; this module converts JSON and HTTP at the edge.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_ca::SpiffeBundle;
use trellis_control::{Control, NewJoinToken};
use trellis_model::SpiffeId;
use trellis_pki::{CaInfo, CaStatus};
use trellis_store::{JoinToken, Mesh};
use uuid::Uuid;

use crate::auth::{OrgScope, Scoped, bearer};
use crate::body::{ApiQuery, JsonBody, OptionalJsonBody};
use crate::error::{
    ApiError, BadRequest, Conflict, PayloadTooLarge, ReadErrors, StepErrors, Unprocessable,
    UnsupportedMediaType, WriteErrors,
};
use crate::params::{CaPath, JoinTokenPath, MeshPath};

const PEM_TYPE: &str = "application/x-pem-file";

/// One CA of a mesh. Its private key is never returned.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CertificateAuthority)]
pub(crate) struct CaBody {
    id: Uuid,
    #[schema(schema_with = ca_origin)]
    origin: &'static str,
    #[schema(schema_with = ca_state)]
    state: &'static str,
    /// SHA-256 of the root it chains to
    #[schema(required)]
    root_fingerprint: Option<String>,
    #[schema(required)]
    not_after: Option<DateTime<Utc>>,
    /// Whole days from now (negative once past)
    #[schema(required)]
    days_to_expiry: Option<i64>,
    /// Certificates it signed still in use: unexpired, and not superseded by a renewal
    live_leaves: i64,
    #[schema(required)]
    certificate_pem: Option<String>,
    /// While pending: the CSR to sign with your root
    #[schema(required)]
    csr_pem: Option<String>,
    created_at: DateTime<Utc>,
    #[schema(required)]
    activated_at: Option<DateTime<Utc>>,
    #[schema(required)]
    retired_at: Option<DateTime<Utc>>,
}

fn string_enum(values: &[&str], description: Option<&str>) -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(description)
}

fn ca_origin() -> utoipa::openapi::schema::ObjectBuilder {
    string_enum(&["generated", "intermediate_csr", "uploaded"], None)
}

fn ca_state() -> utoipa::openapi::schema::ObjectBuilder {
    string_enum(&["pending", "prepared", "active", "previous", "retired"], None)
}

fn ca_phase() -> utoipa::openapi::schema::ObjectBuilder {
    string_enum(
        &["stable", "awaiting-chain", "prepared", "rotated"],
        Some(
            "stable; awaiting-chain (a CSR is out); prepared (a new root is in the bundle, not signing); rotated (the old root is still in the bundle)",
        ),
    )
}

/// A mesh's CA: the rotation phase, the trust domain, the SVID lifetime and every CA.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CaStatus)]
pub(crate) struct CaStatusBody {
    mesh: String,
    #[schema(schema_with = ca_phase)]
    phase: &'static str,
    trust_domain: String,
    /// Grows on every change of the trust bundle
    bundle_sequence: i64,
    svid_ttl_seconds: i32,
    authorities: Vec<CaBody>,
}

fn render_ca(c: &CaInfo) -> CaBody {
    CaBody {
        id: c.id,
        origin: c.origin,
        state: c.state,
        root_fingerprint: c.root_fingerprint.clone(),
        not_after: c.not_after,
        days_to_expiry: c.days_to_expiry,
        live_leaves: c.live_leaves,
        certificate_pem: c.certificate_pem.clone(),
        csr_pem: c.csr_pem.clone(),
        created_at: c.created_at,
        activated_at: c.activated_at,
        retired_at: c.retired_at,
    }
}

fn render_status((mesh, st): (Mesh, CaStatus)) -> Json<CaStatusBody> {
    Json(CaStatusBody {
        mesh: mesh.name.as_str().to_owned(),
        phase: st.phase,
        trust_domain: st.trust_domain,
        bundle_sequence: st.bundle_sequence,
        svid_ttl_seconds: st.svid_ttl_seconds,
        authorities: st.cas.iter().map(render_ca).collect(),
    })
}

/// `GET …/ca`: phase, trust domain, bundle sequence, SVID lifetime and every CA (never a key).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca", operation_id = "getCa",
    summary = "The mesh's CA: rotation phase, trust domain, bundle sequence, SVID lifetime, every CA (never a key)",
    params(MeshPath),
    responses((status = 200, description = "The CA status", body = CaStatusBody), ReadErrors))]
pub(crate) async fn status(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<CaStatusBody>, ApiError> {
    Ok(render_status(ctl.ca_status(scope, &mesh).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct BundleQuery {
    #[serde(default)]
    #[param(nullable = false, value_type = Option<BundleFormat>, inline)]
    format: Option<String>,
}

// The formats of a trust bundle (text in the query, so that a wrong one is a field error).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum BundleFormat {
    Json,
    Pem,
}

/// `GET …/ca/bundle`: the SPIFFE bundle (JSON, with `spiffe_sequence`) or, with
/// `?format=pem`, the roots as PEM. Both carry the sequence in `trellis-bundle-sequence`.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/bundle", operation_id = "getTrustBundle",
    summary = "The trust bundle: SPIFFE bundle JSON (with spiffe_sequence), or PEM with ?format=pem; the sequence is also in the trellis-bundle-sequence header",
    params(MeshPath, BundleQuery),
    responses(
        (status = 200, description = "The bundle", headers(("trellis-bundle-sequence" = i64)),
            content((ref("#/components/schemas/SpiffeBundle") = "application/json"), (String = "application/x-pem-file"))),
        ReadErrors))]
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
        let doc: SpiffeBundle = b.to_spiffe().map_err(|e| ApiError::internal(&e))?;
        ("application/json", doc.to_json().map_err(|e| ApiError::internal(&e))?)
    };
    let mut res = Body::from(body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    res.headers_mut().insert("trellis-bundle-sequence", HeaderValue::from(b.sequence()));
    Ok(res)
}

/// `POST …/ca/rotation/prepare`: a new root, in the bundle beside the current one.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/rotation/prepare", operation_id = "prepareCaRotation",
    summary = "Rotation step 1: a new root, published in the bundle beside the current one",
    params(MeshPath),
    responses((status = 200, description = "The CA status (phase prepared)", body = CaStatusBody), StepErrors))]
pub(crate) async fn prepare(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<CaStatusBody>, ApiError> {
    Ok(render_status(ctl.prepare_rotation(scope, &mesh).await?))
}

/// `POST …/ca/rotation/activate`: the prepared CA signs from now on.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/rotation/activate", operation_id = "activateCaRotation",
    summary = "Rotation step 2: the prepared CA signs new certificates; the old root stays in the bundle",
    params(MeshPath),
    responses((status = 200, description = "The CA status (phase rotated)", body = CaStatusBody), StepErrors))]
pub(crate) async fn activate(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<CaStatusBody>, ApiError> {
    Ok(render_status(ctl.activate_rotation(scope, &mesh).await?))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CaRetire {
    /// Retire although unexpired leaves chain to it (they stop verifying)
    #[serde(default)]
    force: bool,
}

/// `POST …/ca/authorities/{id}/retire`: a previous CA leaves the bundle (409 while leaves in
/// use — unexpired, not renewed — chain to it, unless `force`).
#[utoipa::path(post, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/authorities/{id}/retire", operation_id = "retireCa",
    summary = "Rotation step 3: a previous CA leaves the bundle (409 while certificates in use chain to it — unexpired and not renewed — unless force)",
    params(CaPath),
    request_body(content = Option<CaRetire>, content_type = "application/json"),
    responses((status = 200, description = "The CA status", body = CaStatusBody),
        StepErrors, (status = 415, response = UnsupportedMediaType), (status = 422, response = Unprocessable)))]
pub(crate) async fn retire(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    Scoped { scope, body: OptionalJsonBody(body) }: Scoped<OptionalJsonBody>,
) -> Result<Json<CaStatusBody>, ApiError> {
    let req: CaRetire = match body {
        None => CaRetire::default(),
        Some(b) => crate::schema_check::parse(b.value)?,
    };
    Ok(render_status(ctl.retire_ca(scope, &mesh, &id, req.force).await?))
}

/// `DELETE …/ca/authorities/{id}`: abandons a rotation that was not activated.
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/authorities/{id}", operation_id = "discardCa",
    summary = "Abandon a pending or prepared CA (a rotation that was not activated)",
    params(CaPath),
    responses((status = 200, description = "The CA status", body = CaStatusBody), StepErrors))]
pub(crate) async fn discard(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<CaStatusBody>, ApiError> {
    Ok(render_status(ctl.discard_ca(scope, &mesh, &id).await?))
}

/// `POST …/ca/intermediate-csr`: a new intermediate key (sealed at once) and its CSR, for
/// the tenant to sign with its own root.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/intermediate-csr", operation_id = "createIntermediateCsr",
    summary = "Bring your own root: a new intermediate key (kept sealed) and its CSR to sign offline",
    params(MeshPath),
    responses((status = 201, description = "The pending CA and its CSR", body = PendingCa), StepErrors))]
pub(crate) async fn intermediate_csr(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    let ca = ctl.intermediate_csr(scope, &mesh).await?;
    let pending = PendingCa { id: ca.id, state: ca.state.as_str(), csr: ca.csr_pem };
    Ok((StatusCode::CREATED, Json(pending)).into_response())
}

/// A CA waiting for the chain its CSR is signed into.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PendingCa {
    id: Uuid,
    #[schema(schema_with = ca_state)]
    state: &'static str,
    /// PEM: the CSR to sign with your root
    #[schema(required)]
    csr: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CaChainUpload {
    /// PEM certificates: the CA first, its root last
    #[schema(schema_with = chain_pem)]
    certificate_chain: String,
}

fn chain_pem() -> utoipa::openapi::schema::ObjectBuilder {
    crate::params::bounded_string(trellis_control::MAX_CHAIN_PEM)
        .min_length(Some(1))
        .description(Some("PEM certificates: the CA first, its root last"))
}

/// `PUT …/ca/authorities/{id}/chain`: the chain the tenant signed for a pending CSR; checked,
/// then the CA is `prepared`.
#[utoipa::path(put, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/authorities/{id}/chain", operation_id = "uploadIntermediateChain",
    summary = "The chain you signed for a pending CSR (intermediate first, root last); checked, then prepared",
    params(CaPath),
    request_body = CaChainUpload,
    responses((status = 200, description = "The CA status (phase prepared)", body = CaStatusBody), WriteErrors))]
pub(crate) async fn upload_chain(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<CaStatusBody>, ApiError> {
    let req: CaChainUpload = crate::schema_check::parse(body.value)?;
    Ok(render_status(ctl.upload_intermediate(scope, &mesh, &id, &req.certificate_chain).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CaUpload {
    #[schema(schema_with = chain_pem)]
    certificate_chain: String,
    /// PKCS#8 PEM; sealed at once, never returned
    #[schema(schema_with = key_pem)]
    private_key: String,
}

fn key_pem() -> utoipa::openapi::schema::ObjectBuilder {
    crate::params::bounded_string(trellis_control::MAX_KEY_PEM)
        .min_length(Some(1))
        .description(Some("PKCS#8 PEM; sealed at once, never returned"))
}

/// `POST …/ca/upload`: a CA certificate chain and its key (sealed at once); it becomes
/// `prepared`. The key is never returned.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/upload", operation_id = "uploadCa",
    summary = "A CA certificate chain and its private key (sealed at once, never returned); checked, then prepared",
    params(MeshPath),
    request_body = CaUpload,
    responses((status = 201, description = "The CA status (phase prepared)", body = CaStatusBody), WriteErrors))]
pub(crate) async fn upload_ca(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    let req: CaUpload = crate::schema_check::parse(body.value)?;
    let status = ctl.upload_ca(scope, &mesh, &req.certificate_chain, &req.private_key).await?;
    Ok((StatusCode::CREATED, render_status(status)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CaSettings {
    #[schema(schema_with = svid_ttl)]
    svid_ttl_seconds: i64,
}

fn svid_ttl() -> utoipa::openapi::schema::ObjectBuilder {
    use trellis_model::SvidTtl;
    crate::params::bounded_integer(SvidTtl::MIN_SECS, SvidTtl::MAX_SECS)
}

/// `PUT …/ca/settings`: the lifetime of new SVIDs.
#[utoipa::path(put, path = "/api/v1/orgs/{org}/meshes/{mesh}/ca/settings", operation_id = "putCaSettings",
    summary = "Set the lifetime of new SVIDs (1 h to 7 d)",
    params(MeshPath),
    request_body = CaSettings,
    responses((status = 200, description = "The CA status", body = CaStatusBody), WriteErrors))]
pub(crate) async fn put_settings(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<CaStatusBody>, ApiError> {
    let req: CaSettings = crate::schema_check::parse(body.value)?;
    Ok(render_status(ctl.set_svid_ttl(scope, &mesh, req.svid_ttl_seconds).await?))
}

// ----- join tokens -----

/// The identity a join token's SVIDs carry, by the one layout in [`SpiffeId::workload`]; null
/// only if a stored service name no longer parses.
fn workload_id(mesh: &Mesh, service: &str) -> Option<String> {
    SpiffeId::workload(&mesh.trust_domain, mesh.name.as_str(), service).ok().map(|id| id.to_string())
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JoinTokenStatus {
    Active,
    Used,
    Expired,
    Revoked,
}

/// A join token as the API shows it: never its hash.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JoinToken)]
pub(crate) struct JoinTokenBody {
    id: Uuid,
    mesh: String,
    service: String,
    /// The identity an SVID for this token carries
    spiffe_id: Option<String>,
    #[schema(value_type = Object)]
    tags: Value,
    single_use: bool,
    status: JoinTokenStatus,
    uses: i64,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    /// trls_join_…: only in the response that creates it
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    token: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct JoinTokenList {
    items: Vec<JoinTokenBody>,
}

fn render_join_token(mesh: &Mesh, t: &JoinToken) -> JoinTokenBody {
    let status = if t.revoked_at.is_some() {
        JoinTokenStatus::Revoked
    } else if t.expires_at <= Utc::now() {
        JoinTokenStatus::Expired
    } else if t.single_use && t.uses > 0 {
        JoinTokenStatus::Used
    } else {
        JoinTokenStatus::Active
    };
    JoinTokenBody {
        id: t.id,
        mesh: mesh.name.as_str().to_owned(),
        service: t.service.clone(),
        spiffe_id: workload_id(mesh, &t.service),
        tags: t.tags.clone(),
        single_use: t.single_use,
        status,
        uses: t.uses,
        created_by: t.created_by.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        used_at: t.used_at,
        revoked_at: t.revoked_at,
        token: None,
    }
}

/// `POST …/join-tokens`: a `trls_join_…` token for one service of the mesh, shown once.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/meshes/{mesh}/join-tokens", operation_id = "createJoinToken",
    summary = "A join token (trls_join_…) for one Service of the mesh; the response shows it once",
    params(MeshPath),
    request_body = NewJoinToken,
    responses((status = 201, description = "The join token, with the token", body = JoinTokenBody), WriteErrors))]
pub(crate) async fn create_join_token(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    let req: NewJoinToken = crate::schema_check::parse(body.value)?;
    let (m, minted) = ctl.create_join_token(scope, &mesh, req).await?;
    let out = JoinTokenBody { token: Some(minted.token), ..render_join_token(&m, &minted.record) };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `GET …/join-tokens`: the mesh's join tokens, newest first (never the tokens themselves).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/join-tokens", operation_id = "listJoinTokens",
    summary = "Join tokens of the mesh, newest first (never the tokens)",
    params(MeshPath),
    responses((status = 200, description = "Join tokens", body = JoinTokenList), ReadErrors))]
pub(crate) async fn list_join_tokens(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<JoinTokenList>, ApiError> {
    let (m, tokens) = ctl.list_join_tokens(scope, &mesh).await?;
    Ok(Json(JoinTokenList { items: tokens.iter().map(|t| render_join_token(&m, t)).collect() }))
}

/// `DELETE …/join-tokens/{id}`: revokes a join token (again: no error).
#[utoipa::path(delete, path = "/api/v1/orgs/{org}/meshes/{mesh}/join-tokens/{id}", operation_id = "revokeJoinToken",
    summary = "Revoke a join token",
    params(JoinTokenPath),
    responses((status = 200, description = "The revoked join token", body = JoinTokenBody), ReadErrors))]
pub(crate) async fn revoke_join_token(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<JoinTokenBody>, ApiError> {
    let (m, record) = ctl.revoke_join_token(scope, &mesh, &id).await?;
    Ok(Json(render_join_token(&m, &record)))
}

// ----- SVIDs for join tokens -----

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SvidRequest {
    #[schema(schema_with = csr_pem)]
    csr: String,
}

fn csr_pem() -> utoipa::openapi::schema::ObjectBuilder {
    crate::params::bounded_string(trellis_ca::MAX_CSR_INPUT)
        .min_length(Some(1))
        .description(Some("PEM CSR (P-256 or Ed25519); only its public key is used"))
}

/// An issued X.509-SVID with the mesh's trust bundle.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Svid {
    spiffe_id: String,
    /// PEM: the leaf, then intermediates
    certificate_chain: String,
    /// PEM: the mesh's roots
    trust_bundle: String,
    trust_bundle_sequence: u64,
    expires_at: DateTime<Utc>,
    serial: String,
}

/// `POST /api/v1/svids`: join token (bearer) + CSR → an X.509-SVID for the token's service.
/// The one endpoint a join token opens.
#[utoipa::path(post, path = "/api/v1/svids", operation_id = "issueSvid",
    summary = "A workload's X.509-SVID: a join token (Authorization: Bearer trls_join_…) and a CSR. Only this endpoint accepts join tokens.",
    security(("joinToken" = [])),
    request_body = SvidRequest,
    responses(
        (status = 200, description = "The SVID and the mesh's trust bundle", body = Svid),
        (status = 400, response = BadRequest),
        (status = 401, description = "The join token is missing, unknown, revoked, expired or already used",
            body = ref("#/components/schemas/Problem"), content_type = "application/problem+json"),
        (status = 409, response = Conflict), (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = Unprocessable)))]
pub(crate) async fn issue_svid(
    State(ctl): State<Control>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)
        .map_err(|_| ApiError::unauthorized("send a join token as `Authorization: Bearer trls_join_…`"))?;
    let req: SvidRequest = crate::schema_check::parse(body.value)?;
    let issued = ctl.issue_svid(token, req.csr.as_bytes()).await?;
    Ok(Json(Svid {
        spiffe_id: issued.svid.spiffe_id.as_str().to_owned(),
        certificate_chain: issued.svid.chain_pem,
        trust_bundle: issued.bundle_pem,
        trust_bundle_sequence: issued.bundle_sequence,
        expires_at: issued.svid.not_after.into(),
        serial: issued.svid.serial_hex,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;
    use trellis_model::{MeshId, MeshName, TrustDomain};

    use super::*;
    use crate::schema_check::assert_published;

    #[test]
    fn bodies_match_their_published_schemas() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let active = CaInfo {
            id: Uuid::new_v4(),
            origin: "generated",
            state: "active",
            root_fingerprint: Some("ab12".into()),
            not_after: Some(at),
            days_to_expiry: Some(-3),
            live_leaves: 4,
            certificate_pem: Some("PEM".into()),
            csr_pem: None,
            created_at: at,
            activated_at: Some(at),
            retired_at: None,
        };
        let pending = CaInfo {
            origin: "intermediate_csr",
            state: "pending",
            root_fingerprint: None,
            not_after: None,
            days_to_expiry: None,
            live_leaves: 0,
            certificate_pem: None,
            csr_pem: Some("CSR".into()),
            activated_at: None,
            ..active.clone()
        };
        let mesh = Mesh {
            id: MeshId::new(),
            name: MeshName::parse("shop").unwrap(),
            trust_domain: TrustDomain::parse("shop.acme.trellis").unwrap(),
            spec: json!({}),
            labels: json!({}),
            generation: 1,
            version: Uuid::new_v4(),
            revision: 7,
            created_at: at,
            updated_at: at,
        };
        let st = CaStatus {
            phase: "awaiting-chain",
            trust_domain: "shop.acme.trellis".into(),
            bundle_sequence: 3,
            svid_ttl_seconds: 3600,
            cas: vec![active, pending],
        };
        let Json(status) = render_status((mesh, st));
        let status = serde_json::to_value(status).unwrap();
        assert_eq!(status["authorities"][1]["notAfter"], Value::Null);
        assert_published("CaStatus", &status);
        let csr = PendingCa { id: Uuid::new_v4(), state: "pending", csr: Some("CSR".into()) };
        assert_published("PendingCa", &serde_json::to_value(csr).unwrap());
    }

    #[test]
    fn the_spiffe_bundle_matches_its_published_schema() {
        let td = TrustDomain::parse("shop.acme.trellis").unwrap();
        let ca = trellis_ca::MeshCa::generate_root(
            &td,
            std::time::Duration::from_secs(86_400),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let bundle = trellis_ca::TrustBundle::new(&td, [ca.root()], 4).unwrap();
        let doc = serde_json::to_value(bundle.to_spiffe().unwrap()).unwrap();
        assert_eq!(doc["spiffe_sequence"], 4);
        assert_eq!(doc["keys"][0]["use"], "x509-svid");
        assert_published("SpiffeBundle", &doc);
    }
}
