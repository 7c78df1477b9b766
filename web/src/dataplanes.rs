//! The glue of the dataplane pages: the mesh's proxies with their sync state, and what one
//! proxy was last sent.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use maud::Markup;

use crate::{Console, PageError, Viewer, pages};

pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/orgs/{org}/meshes/{mesh}/dataplanes", get(list))
        .route("/orgs/{org}/meshes/{mesh}/dataplanes/{id}", get(config))
}

async fn list(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let fleet = c.control.list_dataplanes(scope, &mesh).await?;
    let orgs = v.org_list();
    Ok(pages::dataplanes::list(&v.chrome(Some(&org), &orgs), &org, &fleet))
}

async fn config(
    State(c): State<Console>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let config = c.control.dataplane_config(scope, &mesh, &id).await?;
    let orgs = v.org_list();
    Ok(pages::dataplanes::config(&v.chrome(Some(&org), &orgs), &org, &mesh, &config))
}
