//! The glue of the mesh page's CA forms: bring your own intermediate (create the CSR,
//! download it, upload the signed chain, or discard it) and the SVID lifetime. A refused
//! chain or lifetime shows the mesh page again with the core's reason beside the field.

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use trellis_control::{AppError, Problem};

use crate::pages::ca::CaForm;
use crate::{Console, CsrfOnly, PageError, Viewer, render_mesh};

pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/orgs/{org}/meshes/{mesh}/ca/intermediate", post(create_csr))
        .route("/orgs/{org}/meshes/{mesh}/ca/authorities/{id}/csr", get(download_csr))
        .route("/orgs/{org}/meshes/{mesh}/ca/authorities/{id}/chain", post(upload_chain))
        .route("/orgs/{org}/meshes/{mesh}/ca/authorities/{id}/discard", post(discard))
        .route("/orgs/{org}/meshes/{mesh}/ca/settings", post(settings))
}

fn back_to_ca(org: &str, mesh: &str) -> Response {
    Redirect::to(&format!("/orgs/{org}/meshes/{mesh}#ca")).into_response()
}

/// A new intermediate key (kept sealed) and its CSR; the mesh page then offers both steps.
async fn create_csr(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    c.control.intermediate_csr(scope, &mesh).await?;
    Ok(back_to_ca(&org, &mesh))
}

/// The pending intermediate's CSR as a file to sign offline.
async fn download_csr(
    State(c): State<Console>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let (m, status) = c.control.ca_status(scope, &mesh).await?;
    let csr = status
        .cas
        .into_iter()
        .find(|ca| ca.id.to_string() == id)
        .and_then(|ca| ca.csr_pem)
        .ok_or_else(|| AppError::not_found("no certificate signing request with this id"))?;
    let mut res = csr.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pkcs10"));
    // The mesh name is a DNS label, so it needs no quoting.
    let file = format!("attachment; filename=\"{}-intermediate.csr\"", m.name.as_str());
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&file).expect("a mesh name is a header value"),
    );
    Ok(res)
}

#[derive(Deserialize)]
struct ChainForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    chain: String,
}

/// The chain signed for the pending CSR: prepared when the core accepts it.
async fn upload_chain(
    State(c): State<Console>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<ChainForm>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    match c.control.upload_intermediate(scope, &mesh, &id, &form.chain).await {
        Ok(_) => Ok(back_to_ca(&org, &mesh)),
        Err(e) if e.problem == Problem::Invalid => {
            let values =
                CaForm { chain_error: Some(field_message(&e)), chain: form.chain, ..Default::default() };
            let page = render_mesh(&c, &v, &org, &mesh, &values).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// Abandons the pending CSR (its key is deleted).
async fn discard(
    State(c): State<Console>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    c.control.discard_ca(scope, &mesh, &id).await?;
    Ok(back_to_ca(&org, &mesh))
}

#[derive(Deserialize)]
struct SettingsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    svid_ttl_seconds: String,
}

/// The lifetime of new SVIDs; the bounds are the core's.
async fn settings(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<SettingsForm>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    // Only the form's encoding is read here: a number, as the API's JSON would carry it.
    let outcome = match form.svid_ttl_seconds.trim().parse::<i64>() {
        Ok(seconds) => c.control.set_svid_ttl(scope, &mesh, seconds).await.map(|_| ()),
        Err(_) => {
            // Authorization first, as the API would: a refused caller learns nothing of the form.
            scope.caller.require(trellis_model::Action::ManageCa)?;
            Err(AppError::invalid_field("svidTtlSeconds", "must be a whole number of seconds"))
        }
    };
    match outcome {
        Ok(()) => Ok(back_to_ca(&org, &mesh)),
        Err(e) if e.problem == Problem::Invalid => {
            let values = CaForm {
                svid_ttl_error: Some(field_message(&e)),
                svid_ttl: Some(form.svid_ttl_seconds),
                ..Default::default()
            };
            let page = render_mesh(&c, &v, &org, &mesh, &values).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// The refusal as the API words it: `field: message` for each field, else the detail.
fn field_message(e: &AppError) -> String {
    if e.errors.is_empty() {
        return e.detail.clone();
    }
    e.errors.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ")
}
