//! Configuration resources: a kind's list with the form that creates one, a resource shown as
//! YAML with its editors (YAML always, a form for a route's weights), and the review of a
//! change as a line diff before it is saved.

use maud::{Markup, html};
use trellis_control::{Propagation, ResourceView};
use trellis_model::config::{FieldError, Kind};

use crate::diff::{self, Line};
use crate::layout::{Chrome, csrf_field, page, page_refreshing};
use crate::route_form::Backend;
use crate::yaml::YAML_FIELD;

/// Where a resource (or its kind) lives in the console.
pub struct Place<'a> {
    pub org: &'a str,
    pub mesh: &'a str,
    pub kind: Kind,
}

impl Place<'_> {
    pub fn mesh_url(&self) -> String {
        format!("/orgs/{}/meshes/{}", self.org, self.mesh)
    }

    pub fn kind_url(&self) -> String {
        format!("{}/config/{}", self.mesh_url(), self.kind.plural())
    }

    pub fn resource_url(&self, name: &str) -> String {
        format!("{}/{name}", self.kind_url())
    }

    /// Where an AccessPolicy draft is previewed against recent calls; None for other kinds.
    pub fn impact_url(&self) -> Option<String> {
        matches!(self.kind, Kind::AccessPolicy).then(|| format!("{}/impact", self.mesh_url()))
    }

    fn breadcrumb(&self) -> Markup {
        html! {
            p.muted {
                a href={ "/orgs/" (self.org) } { "Meshes" } " / "
                a href=(self.mesh_url()) { (self.mesh) } " / "
                a href=(self.kind_url()) { (self.kind.name()) }
            }
        }
    }
}

/// Which editor a change came from: its errors are shown there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Yaml,
    Form,
}

impl Source {
    pub fn parse(s: &str) -> Source {
        if s == "form" { Source::Form } else { Source::Yaml }
    }
}

/// The editors of a resource (or of a new one) as the viewer last left them.
pub struct Editor {
    /// The YAML textarea's content.
    pub yaml: String,
    /// The version the edit started from (empty for a new resource).
    pub version: String,
    /// A route's backends for the weights form (empty for other kinds and new resources).
    pub backends: Vec<Backend>,
    /// What the server refused, and in which editor.
    pub errors: Vec<FieldError>,
    pub source: Source,
    /// A refusal that names no field.
    pub notice: Option<String>,
}

impl Editor {
    pub fn fresh(yaml: String, version: String, backends: Vec<Backend>) -> Editor {
        Editor { yaml, version, backends, errors: Vec::new(), source: Source::Yaml, notice: None }
    }

    fn errors_in(&self, source: Source) -> impl Iterator<Item = &FieldError> {
        self.errors.iter().filter(move |_| self.source == source)
    }

    /// The form's errors that belong to no weight input.
    fn form_errors_elsewhere(&self) -> Vec<&FieldError> {
        self.errors_in(Source::Form)
            .filter(|e| !self.backends.iter().any(|b| e.field == b.weight_field()))
            .collect()
    }
}

/// A kind's resources in a mesh, each with how far it has reached, and (for those who may)
/// the form that creates one from YAML.
pub fn kind(chrome: &Chrome<'_>, at: &Place<'_>, views: &[ResourceView], editor: Option<&Editor>) -> Markup {
    let kind = at.kind.name();
    page(
        &format!("{kind} · {}", at.mesh),
        Some(chrome),
        html! {
            (at.breadcrumb())
            h1 { (kind) " resources of mesh " (at.mesh) }
            @if views.is_empty() {
                p.muted { "No " (kind) " resources yet." }
            } @else {
                table #resources {
                    thead { tr { th { "Name" } th { "Target" } th { "Generation" } th { "Propagation" } } }
                    tbody {
                        @for v in views {
                            @let r = &v.resource;
                            tr {
                                td { a href=(at.resource_url(r.name.as_str())) { (r.name.as_str()) } }
                                td { (r.target.as_deref().unwrap_or("")) }
                                td { (r.generation) }
                                td { (propagation_text(v.propagation.as_ref())) }
                            }
                        }
                    }
                }
            }
            @if let Some(editor) = editor {
                h2 { "Create a " (kind) }
                (yaml_form(chrome, &at.kind_url(), editor, "Review the new resource", at.impact_url().as_deref()))
            }
        },
    )
}

/// A resource: its propagation, its document as YAML, and (for those who may) its editors.
/// `saved`: it was saved just now, so the page refreshes itself until every proxy it
/// configures has answered.
pub fn resource(
    chrome: &Chrome<'_>,
    at: &Place<'_>,
    view: &ResourceView,
    yaml: &str,
    editor: Option<&Editor>,
    saved: bool,
) -> Markup {
    let r = &view.resource;
    let name = r.name.as_str();
    let waiting = saved && view.propagation.as_ref().is_some_and(|p| p.pending > 0);
    let body = html! {
        (at.breadcrumb())
        h1 { (at.kind.name()) " " (name) }
        @if saved {
            p.notice role="status" { "Saved: generation " (r.generation) "." }
        }
        (propagation(view.propagation.as_ref()))
        p.muted { "Generation " (r.generation) ", updated " (r.updated_at.format("%Y-%m-%d %H:%M:%S UTC")) "." }
        h2 { "Document" }
        pre #document { code { (yaml) } }
        @if let Some(editor) = editor {
            @if let Some(notice) = &editor.notice {
                p.notice.error #edit-error role="alert" { (notice) }
            }
            @if !editor.backends.is_empty() {
                h2 { "Backends" }
                (backends_form(chrome, &at.resource_url(name), editor))
            }
            h2 { "Edit as YAML" }
            (yaml_form(chrome, &at.resource_url(name), editor, "Review changes", at.impact_url().as_deref()))
        }
    };
    let title = format!("{} {name}", at.kind.name());
    if waiting { page_refreshing(&title, Some(chrome), body, 2) } else { page(&title, Some(chrome), body) }
}

/// "applied by N of M proxies; rejected by K: reason", coloured by how it stands.
fn propagation(p: Option<&Propagation>) -> Markup {
    let class = match p {
        Some(p) if p.rejected > 0 => "bad",
        Some(p) if p.pending > 0 => "warn",
        Some(_) => "ok",
        None => "muted",
    };
    html! { p #propagation class=(class) role="status" { (propagation_text(p)) } }
}

fn propagation_text(p: Option<&Propagation>) -> String {
    match p {
        Some(p) => p.summary.clone(),
        None => "not yet part of a mesh revision".to_owned(),
    }
}

/// The YAML editor; the server's errors are listed beside it, each with its field path.
/// `impact`: where a second button posts the draft for an impact preview (AccessPolicy).
pub(crate) fn yaml_form(
    chrome: &Chrome<'_>,
    action: &str,
    editor: &Editor,
    submit: &str,
    impact: Option<&str>,
) -> Markup {
    let errors: Vec<&FieldError> = editor.errors_in(Source::Yaml).collect();
    html! {
        form.panel method="post" action=(action) {
            (csrf_field(chrome.csrf))
            input type="hidden" name="step" value="review";
            input type="hidden" name="source" value="yaml";
            input type="hidden" name="version" value=(editor.version);
            label for="yaml-editor" { "Document (YAML)" }
            textarea #yaml-editor name=(YAML_FIELD) spellcheck="false" rows="24"
                aria-describedby=[(!errors.is_empty()).then_some("yaml-errors")] { (editor.yaml) }
            @if !errors.is_empty() {
                ul.field-error #yaml-errors role="alert" {
                    @for e in &errors { li { code { (e.field) } ": " (e.message) } }
                }
            }
            p {
                button type="submit" { (submit) }
                @if let Some(impact) = impact {
                    " " button.secondary type="submit" formaction=(impact) { "Preview impact" }
                }
            }
        }
    }
}

/// The weights of a route's backends, each error beside the input it names.
fn backends_form(chrome: &Chrome<'_>, action: &str, editor: &Editor) -> Markup {
    let elsewhere = editor.form_errors_elsewhere();
    html! {
        form.panel #backends method="post" action=(action) {
            (csrf_field(chrome.csrf))
            input type="hidden" name="step" value="review";
            input type="hidden" name="source" value="form";
            input type="hidden" name="version" value=(editor.version);
            @if !elsewhere.is_empty() {
                ul.notice.error role="alert" {
                    @for e in &elsewhere { li { code { (e.field) } ": " (e.message) } }
                }
            }
            table {
                thead { tr { th { "Rule" } th { "Service" } th { "Tags" } th { "Weight" } } }
                tbody {
                    @for b in &editor.backends {
                        @let id = b.weight_id();
                        @let field = b.weight_field();
                        @let error = editor.errors_in(Source::Form).find(|e| e.field == field);
                        tr {
                            td { (b.rule.map(|r| (r + 1).to_string()).unwrap_or_default()) }
                            td { (b.service) }
                            td { code { (b.tags) } }
                            td {
                                label.visually-hidden for=(id) { "Weight of " (b.service) " " (b.tags) }
                                input id=(id) type="number" name=(field) value=(b.weight)
                                    aria-invalid=[error.map(|_| "true")]
                                    aria-describedby=[error.map(|_| format!("{id}-error"))];
                                @if let Some(e) = error {
                                    p.field-error id={ (id) "-error" } role="alert" { (e.message) }
                                }
                            }
                        }
                    }
                }
            }
            p { button type="submit" { "Review weights" } }
        }
    }
}

/// The review of a change: the old and new documents as a line diff, and the button that
/// saves the new one if the resource is still at `version`.
pub fn review(
    chrome: &Chrome<'_>,
    at: &Place<'_>,
    name: &str,
    action: &str,
    old: &str,
    new: &str,
    version: &str,
) -> Markup {
    let lines = diff::lines(old, new);
    let changed = lines.iter().any(Line::changed);
    // A new resource (no version yet) goes back to its kind's page.
    let back = if version.is_empty() { at.kind_url() } else { at.resource_url(name) };
    page(
        &format!("Review {} {name}", at.kind.name()),
        Some(chrome),
        html! {
            (at.breadcrumb())
            h1 { "Review " (at.kind.name()) " " (name) }
            @if changed {
                p { "Lines marked − go, lines marked + come. Saving is refused if someone else changed it meanwhile." }
            } @else {
                p.notice role="status" { "Nothing changes: the document is what is stored." }
            }
            table.diff #diff {
                thead { tr { th { span.visually-hidden { "Change" } } th { "Line" } } }
                tbody {
                    @for line in &lines {
                        @match line {
                            Line::Same(t) => tr { td { } td { code { (t) } } },
                            Line::Removed(t) => tr.removed { td { "−" } td { del { code { (t) } } } },
                            Line::Added(t) => tr.added { td { "+" } td { ins { code { (t) } } } },
                        }
                    }
                }
            }
            @if changed {
                form method="post" action=(action) {
                    (csrf_field(chrome.csrf))
                    input type="hidden" name="step" value="save";
                    input type="hidden" name="version" value=(version);
                    input type="hidden" name=(YAML_FIELD) value=(new);
                    p { button type="submit" { "Save" } " " a href=(back) { "Back without saving" } }
                }
            } @else {
                p { a href=(back) { "Back" } }
            }
        },
    )
}

/// A starting document for a new resource of `kind`.
pub fn template(kind: Kind, mesh: &str) -> String {
    let spec = match kind {
        Kind::Service => "  ports:\n    - name: http\n      port: 8080\n      protocol: http\n",
        Kind::AccessPolicy => {
            "  targetRef:\n    service: my-service\n  rules:\n    - action: Allow\n      from:\n        - service: caller\n"
        }
        Kind::HttpRoute => {
            "  targetRef:\n    service: my-service\n  rules:\n    - backendRefs:\n        - service: my-service\n          weight: 100\n"
        }
        Kind::TcpRoute => {
            "  targetRef:\n    service: my-service\n  backendRefs:\n    - service: my-service\n      weight: 100\n"
        }
        Kind::CircuitBreaker => {
            "  targetRef:\n    service: my-service\n  thresholds:\n    maxConnections: 100\n"
        }
        Kind::HealthCheck => {
            "  targetRef:\n    service: my-service\n  interval: 10s\n  timeout: 2s\n  unhealthyThreshold: 3\n  healthyThreshold: 1\n  http:\n    path: /health\n"
        }
        Kind::RateLimit => {
            "  targetRef:\n    service: my-service\n  local:\n    requests: 100\n    interval: 1s\n"
        }
    };
    format!(
        "apiVersion: {}\nkind: {}\nmetadata:\n  name: my-{}\n  mesh: {mesh}\nspec:\n{spec}",
        trellis_control::API_VERSION,
        kind.name(),
        kind.name().to_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kinds_template_parses_as_that_kind() {
        for kind in Kind::ALL {
            let doc = crate::yaml::parse(&template(kind, "shop")).unwrap();
            let env = trellis_control::Envelope::parse(doc, kind.name(), None, Some("shop")).unwrap();
            trellis_model::config::Spec::parse(kind, "spec", env.spec)
                .unwrap_or_else(|e| panic!("{}: {e:?}", kind.name()));
        }
    }
}
