//! The glue of the configuration pages: a request to a use case of `trellis_control`
//! (list, read, check, write with the version as precondition) to a page.
//!
//! An edit is two posts: `step=review` checks the change as the write would and shows it as
//! a diff; `step=save` writes what was reviewed, only if the resource is still at the version
//! the edit started from.

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::Markup;
use serde::Deserialize;
use trellis_control::{AppError, Condition, Envelope, IfMatch, Page, Problem, ResourceView};
use trellis_model::Action;
use trellis_model::config::{Kind, Labels};
use trellis_store::Resource;

use crate::pages::resources::{self as page, Editor, Place, Source};
use crate::{Console, PageError, Viewer, route_form, yaml};

pub(crate) fn routes() -> Router<Console> {
    Router::new()
        .route("/orgs/{org}/meshes/{mesh}/config/{kind}", get(kind_page).post(create))
        .route("/orgs/{org}/meshes/{mesh}/config/{kind}/{name}", get(resource_page).post(edit))
}

/// A form's fields by name (a route's form has one field per backend).
struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or_default()
    }
}

fn kind_of(segment: &str) -> Result<Kind, PageError> {
    Kind::ALL
        .into_iter()
        .find(|k| k.plural() == segment)
        .ok_or_else(|| PageError::App(AppError::not_found(format!("no resource kind {segment:?}"))))
}

/// Refusals the viewer can fix in the editor; anything else is an error page.
fn fixable(e: &AppError) -> bool {
    matches!(
        e.problem,
        Problem::Invalid
            | Problem::BadRequest
            | Problem::Conflict
            | Problem::PreconditionFailed
            | Problem::Unprocessable
    )
}

fn status_of(e: &AppError) -> StatusCode {
    match e.problem {
        Problem::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        Problem::Conflict => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl Editor {
    /// The editor as it was posted, with what the server said about it.
    fn refused(mut self, e: AppError, source: Source) -> Editor {
        if e.errors.is_empty() {
            self.notice = Some(e.detail);
        }
        self.errors = e.errors;
        self.source = source;
        self
    }
}

fn editor_for(place: &Place<'_>, view: &ResourceView) -> Editor {
    let r = &view.resource;
    Editor::fresh(
        document_yaml(place, view),
        r.version.to_string(),
        route_form::backends(place.kind, &r.spec),
    )
}

/// A stored resource's labels (written as `Labels`, so they read back as them).
fn labels_of(r: &Resource) -> Labels {
    serde_json::from_value(r.labels.clone()).unwrap_or_default()
}

fn document_yaml(place: &Place<'_>, view: &ResourceView) -> String {
    let r = &view.resource;
    yaml::document(place.kind.name(), r.name.as_str(), place.mesh, &labels_of(r), &r.spec)
}

/// `…/config/{kind}`: the kind's resources and, for writers, the form that creates one.
async fn kind_page(
    State(c): State<Console>,
    Path((org, mesh, kind)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let kind = kind_of(&kind)?;
    let place = Place { org: &org, mesh: &mesh, kind };
    let editor = Editor::fresh(page::template(kind, &mesh), String::new(), Vec::new());
    render_kind(&c, &v, &place, editor).await
}

pub(crate) async fn render_kind(
    c: &Console,
    v: &Viewer,
    place: &Place<'_>,
    editor: Editor,
) -> Result<Markup, PageError> {
    let scope = c.control.open(&v.request, place.org).await?;
    let list = Page::parse(Some("500"), None, None)?;
    let (_, views, _) = c.control.list_resources(scope, place.mesh, place.kind, &list).await?;
    let orgs = v.org_list();
    let editor = v.may(place.org, Action::WriteConfig).then_some(&editor);
    Ok(page::kind(&v.chrome(Some(place.org), &orgs), place, &views, editor))
}

/// A posted YAML document of `kind`, checked against where it was posted.
fn posted_document(fields: &Fields, place: &Place<'_>, name: Option<&str>) -> Result<Envelope, AppError> {
    let doc = yaml::parse(fields.text(yaml::YAML_FIELD))?;
    Envelope::parse(doc, place.kind.name(), name, Some(place.mesh))
}

/// Creating from YAML: review (a diff from nothing), then save (create only).
async fn create(
    State(c): State<Console>,
    Path((org, mesh, kind)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let fields = Fields(fields);
    v.check_csrf(fields.text(crate::CSRF_FIELD))?;
    let kind = kind_of(&kind)?;
    let place = Place { org: &org, mesh: &mesh, kind };
    let outcome: Result<Response, AppError> = async {
        let env = posted_document(&fields, &place, None)?;
        let name = env
            .metadata
            .name
            .clone()
            .ok_or_else(|| AppError::invalid_field("metadata.name", "is required"))?;
        let scope = c.control.open(&v.request, &org).await?;
        if fields.text("step") == "save" {
            let created = Condition { if_match: None, create_only: true };
            c.control.put_resource(scope, &mesh, kind, &name, env.document(), &created, None).await?;
            return Ok(saved(&place, &name));
        }
        let labels = env.metadata.labels.clone();
        let spec = c.control.check_resource(scope, &mesh, kind, &name, &env.document()).await?;
        let new = yaml::document(kind.name(), &name, &mesh, &labels, &spec);
        let orgs = v.org_list();
        let chrome = v.chrome(Some(&org), &orgs);
        Ok(page::review(&chrome, &place, &name, &place.kind_url(), "", &new, "").into_response())
    }
    .await;
    match outcome {
        Ok(res) => Ok(res),
        Err(e) if fixable(&e) => {
            let status = status_of(&e);
            let typed = Editor::fresh(fields.text(yaml::YAML_FIELD).to_owned(), String::new(), Vec::new());
            let page = render_kind(&c, &v, &place, typed.refused(e, Source::Yaml)).await?;
            Ok((status, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

fn saved(place: &Place<'_>, name: &str) -> Response {
    Redirect::to(&format!("{}?saved=1", place.resource_url(name))).into_response()
}

#[derive(Deserialize)]
struct Shown {
    #[serde(default)]
    saved: Option<String>,
}

/// `…/config/{kind}/{name}`: the resource, its propagation and (for writers) its editors.
async fn resource_page(
    State(c): State<Console>,
    Path((org, mesh, kind, name)): Path<(String, String, String, String)>,
    Query(shown): Query<Shown>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let kind = kind_of(&kind)?;
    let place = Place { org: &org, mesh: &mesh, kind };
    let view = read(&c, &v, &place, &name).await?;
    let editor = editor_for(&place, &view);
    Ok(render_resource(&v, &place, &view, editor, shown.saved.is_some()))
}

async fn read(c: &Console, v: &Viewer, place: &Place<'_>, name: &str) -> Result<ResourceView, AppError> {
    Ok(c.control.get_resource(&v.request, place.org, place.mesh, place.kind, name).await?.1)
}

fn render_resource(
    v: &Viewer,
    place: &Place<'_>,
    view: &ResourceView,
    editor: Editor,
    saved: bool,
) -> Markup {
    let orgs = v.org_list();
    let yaml = document_yaml(place, view);
    let editor = v.may(place.org, Action::WriteConfig).then_some(&editor);
    page::resource(&v.chrome(Some(place.org), &orgs), place, view, &yaml, editor, saved)
}

/// Editing: review a change from the YAML editor or the weights form, then save it with
/// the version it was made against.
async fn edit(
    State(c): State<Console>,
    Path((org, mesh, kind, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let v = Viewer::of(&c, &headers).await?;
    let fields = Fields(fields);
    v.check_csrf(fields.text(crate::CSRF_FIELD))?;
    let kind = kind_of(&kind)?;
    let place = Place { org: &org, mesh: &mesh, kind };
    let current = read(&c, &v, &place, &name).await?;
    let source = Source::parse(fields.text("source"));
    let version = fields.text("version");
    let outcome: Result<Response, AppError> = async {
        if fields.text("step") == "save" {
            let env = posted_document(&fields, &place, Some(&name))?;
            // Not a version of ours: matches nothing, so the write is refused, never forced.
            let versions = version.parse().into_iter().collect();
            let condition = Condition { if_match: Some(IfMatch::Versions(versions)), create_only: false };
            let scope = c.control.open(&v.request, &org).await?;
            c.control.put_resource(scope, &mesh, kind, &name, env.document(), &condition, None).await?;
            return Ok(saved(&place, &name));
        }
        let doc = match source {
            Source::Yaml => posted_document(&fields, &place, Some(&name))?.document(),
            Source::Form => trellis_control::Document {
                labels: labels_of(&current.resource),
                spec: route_form::apply(kind, &current.resource.spec, |f| fields.get(f)),
            },
        };
        let labels = doc.labels.clone();
        let scope = c.control.open(&v.request, &org).await?;
        let spec = c.control.check_resource(scope, &mesh, kind, &name, &doc).await?;
        let new = yaml::document(kind.name(), &name, &mesh, &labels, &spec);
        let orgs = v.org_list();
        let chrome = v.chrome(Some(&org), &orgs);
        let old = document_yaml(&place, &current);
        Ok(page::review(&chrome, &place, &name, &place.resource_url(&name), &old, &new, version)
            .into_response())
    }
    .await;
    match outcome {
        Ok(res) => Ok(res),
        Err(e) if e.problem == Problem::PreconditionFailed => {
            // Changed meanwhile: show what is stored now, to edit again from there.
            let e = AppError::precondition_failed(
                "this resource changed since you began editing; nothing was saved. Below is what is stored now: make your change again",
            );
            let editor = editor_for(&place, &current).refused(e, source);
            Ok((StatusCode::PRECONDITION_FAILED, render_resource(&v, &place, &current, editor, false))
                .into_response())
        }
        Err(e) if fixable(&e) => {
            let status = status_of(&e);
            let mut editor = editor_for(&place, &current);
            editor.version = version.to_owned();
            match source {
                Source::Yaml => editor.yaml = fields.text(yaml::YAML_FIELD).to_owned(),
                Source::Form => editor.backends = route_form::typed(editor.backends, |f| fields.get(f)),
            }
            let editor = editor.refused(e, source);
            Ok((status, render_resource(&v, &place, &current, editor, false)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}
