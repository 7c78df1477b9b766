//! The glue of the observe pages: a mesh's topology, a service's golden metrics, the denied
//! calls and why each was denied, and the impact preview of an AccessPolicy draft — each a
//! read of `trellis_control` with the session's caller, then a page.

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{TimeDelta, Utc};
use maud::Markup;
use serde::Deserialize;
use trellis_control::{
    AccessLogSearch, AppError, DEFAULT_EVENT_SECS, DEFAULT_WINDOW_SECS, Envelope, EventSearch,
    IMPACT_WINDOW_SECS, Problem, TopologySearch, window_seconds,
};
use trellis_model::config::{FieldError, Kind};

use crate::pages::observe as page;
use crate::pages::resources::{Editor, Place};
use crate::{Console, PageError, Viewer, yaml};

pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/orgs/{org}/meshes/{mesh}/topology", get(topology_page))
        .route("/orgs/{org}/meshes/{mesh}/services/{service}/metrics", get(service_page))
        .route("/orgs/{org}/meshes/{mesh}/denied", get(denied_page))
        .route("/orgs/{org}/meshes/{mesh}/denied/{id}", get(why_page))
        .route("/orgs/{org}/meshes/{mesh}/impact", post(impact_preview))
        .route("/orgs/{org}/meshes/{mesh}/events", get(events_page))
        .route("/orgs/{org}/meshes/{mesh}/events/{id}/draft", get(draft_page))
}

/// The filters of an observe page, as the form sends them (empty fields included).
#[derive(Deserialize, Default)]
struct ObserveQuery {
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// A field's text, or None when the form left it empty.
fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl ObserveQuery {
    /// The window asked for, in seconds (checked by the core's rule), or `default`.
    fn window(&self, default: i64) -> Result<i64, AppError> {
        let asked = match given(&self.window) {
            None => None,
            Some(w) => Some(
                w.parse::<i64>()
                    .map_err(|_| AppError::invalid_field("window", "must be a number of seconds"))?,
            ),
        };
        window_seconds(asked, default)
    }
}

/// `…/topology`: who calls whom over a window, filtered by a service or a group.
async fn topology_page(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    Query(q): Query<ObserveQuery>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let window = q.window(DEFAULT_WINDOW_SECS)?;
    let search = TopologySearch {
        service: given(&q.service).map(str::to_owned),
        group: given(&q.group).map(str::to_owned),
        grouping: None,
    };
    let t = c.control.topology(scope, &mesh, Some(window), &search, page::MAX_DRAWN_NODES).await?;
    let form = page::TopologyForm {
        window: t.seconds,
        service: search.service.as_deref().unwrap_or_default(),
        group: search.group.as_deref().unwrap_or_default(),
    };
    let orgs = v.org_list();
    Ok(page::topology(&v.chrome(Some(&org), &orgs), &org, &t.mesh, &t.view, &form))
}

/// `…/services/{service}/metrics`: a service's golden metrics over a window, with charts.
async fn service_page(
    State(c): State<Console>,
    Path((org, mesh, service)): Path<(String, String, String)>,
    Query(q): Query<ObserveQuery>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let window = q.window(DEFAULT_WINDOW_SECS)?;
    let series = c.control.service_series(scope, &mesh, &service, Some(window)).await?;
    // Health is the Service resource's: a name seen only in telemetry has none.
    let scope = c.control.open(&v.request, &org).await?;
    let health = match c.control.service_health(scope, &mesh, &service).await {
        Ok(h) => Some(h),
        Err(e) if e.problem == Problem::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let orgs = v.org_list();
    Ok(page::service(&v.chrome(Some(&org), &orgs), &org, &series, health.as_ref()))
}

/// `…/denied`: the calls proxies denied over a window, newest first.
async fn denied_page(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    Query(q): Query<ObserveQuery>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let window = q.window(trellis_control::DEFAULT_ACCESS_LOG_SECS)?;
    let service = given(&q.service);
    let search = AccessLogSearch {
        service: service.map(str::to_owned),
        denied: Some("true".into()),
        since: Some((Utc::now() - TimeDelta::seconds(window)).to_rfc3339()),
        ..AccessLogSearch::default()
    };
    let log = c.control.access_log(scope, &mesh, &search).await?;
    let orgs = v.org_list();
    let form = page::DeniedForm { window, service: service.unwrap_or_default() };
    Ok(page::denied(&v.chrome(Some(&org), &orgs), &org, &log, &form))
}

/// `…/denied/{id}`: why one logged call was denied, and the deciding rule as it is now.
async fn why_page(
    State(c): State<Console>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let why = c.control.why(scope, &mesh, &id).await?;
    let rule_yaml = why.rule.as_ref().and_then(|r| r.rule_spec.as_ref()).map(yaml::show);
    let orgs = v.org_list();
    Ok(page::why(&v.chrome(Some(&org), &orgs), &org, &mesh, &why, rule_yaml.as_deref()))
}

/// `…/events`: unexpected traffic over a window, newest first.
async fn events_page(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    Query(q): Query<ObserveQuery>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let window = q.window(DEFAULT_EVENT_SECS)?;
    let search = EventSearch {
        since: Some((Utc::now() - TimeDelta::seconds(window)).to_rfc3339()),
        kind: given(&q.kind).map(str::to_owned),
        service: given(&q.service).map(str::to_owned),
        ..EventSearch::default()
    };
    let events = c.control.traffic_events(scope, &mesh, &search).await?;
    let orgs = v.org_list();
    let form = page::EventsForm {
        window,
        kind: given(&q.kind).unwrap_or_default(),
        service: given(&q.service).unwrap_or_default(),
    };
    Ok(page::events(&v.chrome(Some(&org), &orgs), &org, &events, &form))
}

/// `…/events/{id}/draft`: the AccessPolicy editor holding the draft that settles an event,
/// to review (and preview) before anything is saved.
async fn draft_page(
    State(c): State<Console>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let draft = c.control.draft_policy(scope, &mesh, &id).await?;
    let spec = serde_json::to_value(&draft.spec).map_err(|e| AppError::internal(&e))?;
    let text = yaml::document(Kind::AccessPolicy.name(), &draft.name, &mesh, &Default::default(), &spec);
    let place = Place { org: &org, mesh: &mesh, kind: Kind::AccessPolicy };
    crate::resources::render_kind(&c, &v, &place, Editor::fresh(text, String::new(), Vec::new())).await
}

/// The AccessPolicy editor's draft, as its form posts it to the impact preview.
#[derive(Deserialize)]
struct Draft {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    yaml: String,
    /// The version an edit started from; empty for a new policy.
    #[serde(default)]
    version: String,
}

/// `POST …/impact`: what saving the draft would deny or newly allow among the calls of the
/// last hour, shown above the draft's editor. Saves nothing.
async fn impact_preview(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    Form(draft): Form<Draft>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&draft.csrf)?;
    let place = Place { org: &org, mesh: &mesh, kind: Kind::AccessPolicy };
    // Opened first: another organization's mesh is not found, whatever the draft says.
    let scope = c.control.open(&v.request, &org).await?;
    let mut name = None;
    let outcome = async {
        let env = Envelope::parse(yaml::parse(&draft.yaml)?, Kind::AccessPolicy.name(), None, Some(&mesh))?;
        name.clone_from(&env.metadata.name);
        c.control.access_impact(scope, &mesh, name.as_deref(), env.document(), Some(IMPACT_WINDOW_SECS)).await
    }
    .await;
    // Back to the editor the draft came from: the policy's when it was an edit.
    let action = match (&name, draft.version.is_empty()) {
        (Some(n), false) => place.resource_url(n),
        _ => place.kind_url(),
    };
    let editor = Editor::fresh(draft.yaml.clone(), draft.version.clone(), Vec::new());
    let orgs = v.org_list();
    let chrome = v.chrome(Some(&org), &orgs);
    match outcome {
        Ok(impact) => Ok(page::impact(&chrome, &org, &mesh, Ok(&impact), &editor, &action).into_response()),
        Err(e) if matches!(e.problem, Problem::Invalid | Problem::BadRequest | Problem::Unprocessable) => {
            let errors = if e.errors.is_empty() {
                vec![FieldError { field: String::new(), message: e.detail.clone() }]
            } else {
                e.errors.clone()
            };
            let page = page::impact(&chrome, &org, &mesh, Err(&errors), &editor, &action);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}
