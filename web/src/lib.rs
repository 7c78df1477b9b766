//! The web console: server-rendered HTML pages, the second adapter (after the REST API) over
//! the application core. A page calls the same use cases with the same caller as the API
//! would, so it never shows what the API would refuse; forms carry the session's CSRF token;
//! no page needs JavaScript.
//!
//! - [`layout`]: the page shell; [`pages`]: each page as a pure function of what it shows.
//! - [`security`]: the headers every response carries (CSP, framing, caching).
//! - this file: the routes, and the glue from a request to a use case to a page.

#![forbid(unsafe_code)]

mod ca;
mod dataplanes;
mod diff;
mod layered;
mod layout;
mod members;
mod observe;
mod pages;
mod resources;
mod route_form;
mod security;
mod yaml;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::Markup;
use serde::Deserialize;
use serde_json::json;
use trellis_control::{AppError, Condition, Control, Me, MeshWrite, Problem, Request};
use trellis_model::{Action, Role};

/// The form field that carries the session's CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// What the console's handlers reach.
#[derive(Clone)]
pub struct Console {
    pub control: Control,
    /// Whether an OpenID provider is configured (the sign-in page offers it).
    pub oidc: bool,
    /// Where agents reach the TLS port, and the platform root they pin: for the commands
    /// the console shows.
    pub xds_address: String,
    pub platform_ca_pem: String,
    /// The console's own address as users reach it (no trailing slash): for the links it
    /// hands out, such as an invitation's.
    pub public_url: String,
}

/// The console's routes, for the server to merge beside the API's.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/static/console.css", get(stylesheet))
        .route("/orgs/{org}", get(org_page).post(create_mesh))
        .route("/orgs/{org}/meshes/{mesh}", get(mesh_page))
        .route("/orgs/{org}/meshes/{mesh}/workloads", axum::routing::post(connect_workload))
        .route("/orgs/{org}/meshes/{mesh}/workloads/{id}", get(first_proxy))
        .route("/orgs/{org}/meshes/{mesh}/ca", axum::routing::post(rotate_ca))
        .route("/orgs/{org}/tokens", get(tokens_page).post(create_token))
        .route("/orgs/{org}/tokens/{id}/revoke", axum::routing::post(revoke_token))
        .route("/orgs/{org}/audit", get(audit_page))
        .route("/sign-out", axum::routing::post(sign_out))
        .merge(members::routes())
        .merge(ca::routes())
        .merge(resources::routes())
        .merge(dataplanes::routes())
        .merge(observe::routes())
        .layer(axum::middleware::from_fn(security::headers))
        .with_state(console)
}

/// The signed-in user as every page shows them: name, organizations, CSRF token.
struct Viewer {
    request: Request,
    name: String,
    email: Option<String>,
    orgs: Vec<(String, String, Role)>,
    csrf: String,
}

impl Viewer {
    /// The user of the request's session; API tokens do not open the console.
    async fn of(console: &Console, headers: &HeaderMap) -> Result<Viewer, PageError> {
        let request = trellis_api::auth::request(headers);
        let secret = match &request.credential {
            trellis_control::Credential::Session(s) => s.clone(),
            _ => return Err(PageError::SignIn),
        };
        match console.control.me(&request).await? {
            Me::User { user, memberships, .. } => Ok(Viewer {
                name: user.display_name.or(user.email.clone()).unwrap_or_else(|| "signed in".into()),
                email: user.email,
                orgs: memberships
                    .into_iter()
                    .map(|m| (m.org.slug.as_str().to_owned(), m.org.name, m.role))
                    .collect(),
                csrf: trellis_api::session::csrf_token(&secret),
                request,
            }),
            Me::Token { .. } => Err(PageError::SignIn),
        }
    }

    fn chrome<'a>(&'a self, org: Option<&'a str>, orgs: &'a [(String, String)]) -> layout::Chrome<'a> {
        layout::Chrome { user: &self.name, orgs, current_org: org, csrf: &self.csrf }
    }

    fn org_list(&self) -> Vec<(String, String)> {
        self.orgs.iter().map(|(slug, name, _)| (slug.clone(), name.clone())).collect()
    }

    /// Whether the viewer's role in `org` allows `action`: a page shows a control only then.
    fn may(&self, org: &str, action: Action) -> bool {
        self.orgs.iter().any(|(slug, _, role)| slug == org && role.allows(action))
    }

    /// Refuses a form whose CSRF field is not this session's token (the API's rule).
    fn check_csrf(&self, presented: &str) -> Result<(), PageError> {
        let trellis_control::Credential::Session(secret) = &self.request.credential else {
            return Err(PageError::SignIn);
        };
        if trellis_api::session::csrf_matches(secret, presented) {
            Ok(())
        } else {
            Err(PageError::App(AppError::forbidden(
                "the form's CSRF token does not match this session; reload the page",
            )))
        }
    }
}

/// Why a page could not be shown.
enum PageError {
    /// Nobody is signed in (or the session ended): the sign-in page.
    SignIn,
    App(AppError),
}

impl From<AppError> for PageError {
    fn from(e: AppError) -> Self {
        match e.problem {
            Problem::Unauthenticated => PageError::SignIn,
            _ => PageError::App(e),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn => Redirect::to("/").into_response(),
            PageError::App(e) => {
                let status = match e.problem {
                    Problem::NotFound => StatusCode::NOT_FOUND,
                    Problem::Forbidden => StatusCode::FORBIDDEN,
                    Problem::Unavailable | Problem::Contended => StatusCode::SERVICE_UNAVAILABLE,
                    Problem::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                    Problem::Conflict => StatusCode::CONFLICT,
                    _ => StatusCode::BAD_REQUEST,
                };
                let mut res = (status, pages::error(status.as_u16(), &e.detail)).into_response();
                if e.problem == Problem::Contended {
                    res.extensions_mut().insert(trellis_control::RunAgain);
                }
                res
            }
        }
    }
}

async fn stylesheet() -> Response {
    let mut res = include_str!("../static/console.css").into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    res
}

/// `/`: the sign-in page, or the first organization of the signed-in user.
async fn home(State(c): State<Console>, headers: HeaderMap) -> Response {
    match Viewer::of(&c, &headers).await {
        Ok(v) => match v.orgs.first() {
            Some((slug, ..)) => Redirect::to(&format!("/orgs/{slug}")).into_response(),
            None => {
                let orgs = v.org_list();
                pages::no_organization(&v.chrome(None, &orgs)).into_response()
            }
        },
        Err(PageError::SignIn) => pages::sign_in(c.oidc).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// Ends the session and goes back to the sign-in page.
async fn sign_out(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    if let trellis_control::Credential::Session(secret) = &v.request.credential {
        c.control.log_out(secret, v.request.request_id.clone()).await?;
    }
    let mut res = Redirect::to("/").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, trellis_api::session::clear_cookie(trellis_api::session::SESSION_COOKIE));
    Ok(res)
}

/// An organization's page: its meshes, and the form that creates one.
async fn org_page(
    State(c): State<Console>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    render_org(&c, &v, &org, &pages::MeshForm::default()).await
}

async fn render_org(c: &Console, v: &Viewer, org: &str, form: &pages::MeshForm) -> Result<Markup, PageError> {
    let scope = c.control.open(&v.request, org).await?;
    let org_name = scope.caller.org.name.clone();
    let page = trellis_control::Page::parse(Some("500"), None, None)?;
    let (meshes, _) = c.control.list_meshes(scope, &page).await?;
    let can_write = v.may(org, Action::WriteConfig);
    // The actions the tokens' and the audit log's use cases require.
    let links =
        pages::OrgLinks { tokens: v.may(org, Action::ManageTokens), audit: v.may(org, Action::ReadAudit) };
    let orgs = v.org_list();
    Ok(pages::org(&v.chrome(Some(org), &orgs), org, &org_name, &meshes, links, can_write.then_some(form)))
}

#[derive(Deserialize)]
struct NewMesh {
    #[serde(default)]
    csrf: String,
    name: String,
    mtls: String,
    default_access: String,
}

/// Creates a mesh from the form; a refused one shows the form again with the server's
/// field errors beside the fields.
async fn create_mesh(
    State(c): State<Console>,
    Path(org): Path<String>,
    headers: HeaderMap,
    Form(form): Form<NewMesh>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    let write = MeshWrite {
        labels: Default::default(),
        spec: json!({ "mtls": { "mode": form.mtls }, "defaultAccess": form.default_access }),
    };
    let condition = Condition { if_match: None, create_only: true };
    match c.control.put_mesh(scope, &form.name, write, &condition).await {
        Ok(w) => Ok(Redirect::to(&format!("/orgs/{org}/meshes/{}", w.value.name.as_str())).into_response()),
        Err(e) if matches!(e.problem, Problem::Invalid | Problem::PreconditionFailed | Problem::Conflict) => {
            let values = pages::MeshForm {
                name: form.name,
                mtls: form.mtls,
                default_access: form.default_access,
                errors: pages::field_errors(
                    &e,
                    &[
                        ("metadata.name", "name"),
                        ("spec.mtls", "mtls"),
                        ("spec.defaultAccess", "default_access"),
                    ],
                ),
            };
            let page = render_org(&c, &v, &org, &values).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// A mesh's overview: settings, configuration by kind, dataplanes, the CA.
async fn mesh_page(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    render_mesh(&c, &v, &org, &mesh, &pages::ca::CaForm::default()).await
}

/// The mesh page with the CA forms' values and errors.
async fn render_mesh(
    c: &Console,
    v: &Viewer,
    org: &str,
    mesh: &str,
    ca: &pages::ca::CaForm,
) -> Result<Markup, PageError> {
    let scope = c.control.open(&v.request, org).await?;
    let overview = c.control.mesh_overview(scope, mesh).await?;
    let orgs = v.org_list();
    let may = pages::MeshControls {
        configure: v.may(org, Action::WriteConfig),
        connect: v.may(org, Action::ManageTokens),
        rotate: v.may(org, Action::ManageCa),
    };
    Ok(pages::mesh(&v.chrome(Some(org), &orgs), org, &overview, may, ca))
}

#[derive(Deserialize)]
struct CaStep {
    #[serde(default)]
    csrf: String,
    step: String,
    #[serde(default)]
    id: String,
}

/// One step of a CA rotation (prepare → activate → retire), then the mesh's page again.
async fn rotate_ca(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CaStep>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    match form.step.as_str() {
        "prepare" => c.control.prepare_rotation(scope, &mesh).await?,
        "activate" => c.control.activate_rotation(scope, &mesh).await?,
        "retire" => c.control.retire_ca(scope, &mesh, &form.id, false).await?,
        other => {
            return Err(PageError::App(AppError::invalid_field(
                "step",
                format!("no rotation step {other:?}"),
            )));
        }
    };
    Ok(Redirect::to(&format!("/orgs/{org}/meshes/{mesh}")).into_response())
}

#[derive(Deserialize)]
struct NewWorkload {
    #[serde(default)]
    csrf: String,
    service: String,
    #[serde(default)]
    tags: String,
}

/// Mints a join token for a workload of the mesh and shows it once, with the commands that
/// run an agent with it.
async fn connect_workload(
    State(c): State<Console>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<NewWorkload>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let tags =
        pages::parse_tags(&form.tags).map_err(|e| PageError::App(AppError::invalid_field("tags", e)))?;
    let scope = c.control.open(&v.request, &org).await?;
    let req =
        trellis_control::NewJoinToken { service: form.service, tags, ttl_seconds: None, single_use: false };
    let (m, minted) = c.control.create_join_token(scope, &mesh, req).await?;
    let orgs = v.org_list();
    let agent = pages::AgentSetup {
        server: &c.xds_address,
        platform_ca_pem: &c.platform_ca_pem,
        mesh: m.name.as_str(),
        token: &minted.token,
        record: &minted.record,
    };
    Ok(pages::workload_token(&v.chrome(Some(&org), &orgs), &org, &agent).into_response())
}

/// "Waiting for the first proxy" of a join token: how far its workload has come, reloading
/// itself until a proxy is in sync or a step has failed.
async fn first_proxy(
    State(c): State<Console>,
    Path((org, mesh, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let scope = c.control.open(&v.request, &org).await?;
    let onboarding = c.control.first_proxy(scope, &mesh, &id).await?;
    let orgs = v.org_list();
    Ok(pages::first_proxy(&v.chrome(Some(&org), &orgs), &org, &onboarding))
}

/// The organization's API tokens: who may call the API, with the form that mints one.
async fn tokens_page(
    State(c): State<Console>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    render_tokens(&c, &v, &org, None).await
}

async fn render_tokens(
    c: &Console,
    v: &Viewer,
    org: &str,
    minted: Option<(&str, &str)>,
) -> Result<Markup, PageError> {
    let scope = c.control.open(&v.request, org).await?;
    let tokens = c.control.list_tokens(scope).await?;
    let orgs = v.org_list();
    Ok(pages::tokens(&v.chrome(Some(org), &orgs), org, &tokens, minted))
}

#[derive(Deserialize)]
struct NewTokenForm {
    #[serde(default)]
    csrf: String,
    name: String,
    role: Role,
}

/// Mints an API token and shows it this once, above the list.
async fn create_token(
    State(c): State<Console>,
    Path(org): Path<String>,
    headers: HeaderMap,
    Form(form): Form<NewTokenForm>,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    let req = trellis_control::NewToken { name: form.name, role: form.role, expires_at: None };
    let (record, token) = c.control.create_token(scope, req).await?;
    render_tokens(&c, &v, &org, Some((&record.name, &token))).await
}

/// Revokes an API token: refused at once on every replica.
async fn revoke_token(
    State(c): State<Console>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    v.check_csrf(&form.csrf)?;
    let scope = c.control.open(&v.request, &org).await?;
    c.control.revoke_token(scope, &id).await?;
    Ok(Redirect::to(&format!("/orgs/{org}/tokens")).into_response())
}

/// The organization's audit log, newest first, filtered by actor, action or target.
async fn audit_page(
    State(c): State<Console>,
    Path(org): Path<String>,
    Query(mut query): Query<trellis_control::AuditQuery>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    // The filter form sends its empty fields too: an empty filter is no filter.
    for field in [&mut query.actor, &mut query.action, &mut query.target] {
        *field = field.take().filter(|f| !f.is_empty());
    }
    let scope = c.control.open(&v.request, &org).await?;
    let filters = pages::AuditFilters {
        actor: query.actor.clone().unwrap_or_default(),
        action: query.action.clone().unwrap_or_default(),
        target: query.target.clone().unwrap_or_default(),
    };
    let (events, next) = c.control.audit_events(scope, query).await?;
    let orgs = v.org_list();
    Ok(pages::audit(&v.chrome(Some(&org), &orgs), &org, &events, &filters, next.as_deref()))
}
