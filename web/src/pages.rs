//! Each page as a pure function of what it shows: no I/O here, so that a page can be
//! rendered (and checked) from values alone.

use std::collections::BTreeMap;

use maud::{Markup, html};
use trellis_control::{AppError, MeshOverview};
use trellis_store::Mesh;

use crate::layout::{Chrome, csrf_field, page};

/// The sign-in page: the identity provider when one is configured, else the one-time link.
pub fn sign_in(oidc: bool) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in to Trellis" }
            div.panel {
                @if oidc {
                    p { "Sign in with your organization's identity provider. A first sign-in creates your organization." }
                    p { a.button href="/auth/login" { "Sign in" } }
                } @else {
                    p { "No identity provider is configured. Open the one-time login link that "
                        code { "trellis" } " printed when it started; it signs you in as the local administrator." }
                }
            }
        },
    )
}

/// A signed-in user who belongs to no organization (yet).
pub fn no_organization(chrome: &Chrome<'_>) -> Markup {
    page(
        "No organization",
        Some(chrome),
        html! {
            h1 { "You belong to no organization" }
            p { "Ask an owner of an organization for an invitation." }
        },
    )
}

/// An error page that says what went wrong.
pub fn error(status: u16, detail: &str) -> Markup {
    let title = match status {
        404 => "Not found",
        403 => "Not allowed",
        _ => "Something went wrong",
    };
    page(
        title,
        None,
        html! {
            h1 { (title) }
            p { (detail) }
            p { a href="/" { "Back to the console" } }
        },
    )
}

/// The values and errors of the create-a-mesh form.
#[derive(Default)]
pub struct MeshForm {
    pub name: String,
    pub mtls: String,
    pub default_access: String,
    /// By form field: what the server said is wrong with it.
    pub errors: BTreeMap<&'static str, String>,
}

/// The field errors of `e`, keyed by the form field each API field path belongs to
/// (`fields`: (path prefix, form field)); what fits no field goes under `""`.
pub fn field_errors(e: &AppError, fields: &[(&str, &'static str)]) -> BTreeMap<&'static str, String> {
    let mut out: BTreeMap<&'static str, String> = BTreeMap::new();
    for fe in &e.errors {
        let field = fields.iter().find(|(path, _)| fe.field.starts_with(path)).map_or("", |(_, f)| *f);
        let text = out.entry(field).or_default();
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&fe.message);
    }
    if e.errors.is_empty() {
        out.insert("", e.detail.clone());
    }
    out
}

/// An organization: its meshes, and (for those who may) the form that creates one.
pub fn org(chrome: &Chrome<'_>, slug: &str, name: &str, meshes: &[Mesh], form: Option<&MeshForm>) -> Markup {
    page(
        name,
        Some(chrome),
        html! {
            h1 { (name) }
            h2 { "Meshes" }
            @if meshes.is_empty() {
                p.muted { "No meshes yet." }
            } @else {
                table {
                    thead { tr { th { "Name" } th { "Trust domain" } th { "mTLS" } th { "Default access" } th { "Revision" } } }
                    tbody {
                        @for m in meshes {
                            tr {
                                td { a href={ "/orgs/" (slug) "/meshes/" (m.name.as_str()) } { (m.name.as_str()) } }
                                td { code { (m.trust_domain.as_str()) } }
                                td { (m.spec["mtls"]["mode"].as_str().unwrap_or("STRICT")) }
                                td { (m.spec["defaultAccess"].as_str().unwrap_or("deny")) }
                                td { (m.revision) }
                            }
                        }
                    }
                }
            }
            @if let Some(form) = form {
                h2 { "Create a mesh" }
                form.panel method="post" action={ "/orgs/" (slug) } {
                    (csrf_field(chrome.csrf))
                    @if let Some(e) = form.errors.get("") {
                        p.notice.error role="alert" { (e) }
                    }
                    label for="mesh-name" { "Name" }
                    input #mesh-name type="text" name="name" value=(form.name) required
                        aria-describedby="mesh-name-error";
                    (error_of(form, "name", "mesh-name-error"))
                    label for="mesh-mtls" { "Mutual TLS" }
                    select #mesh-mtls name="mtls" {
                        (option("STRICT", "Strict: only mTLS between workloads", &form.mtls))
                        (option("PERMISSIVE", "Permissive: plaintext accepted too (for migrations)", &form.mtls))
                    }
                    (error_of(form, "mtls", "mesh-mtls-error"))
                    label for="mesh-access" { "When no access policy matches" }
                    select #mesh-access name="default_access" {
                        (option("deny", "Deny", &form.default_access))
                        (option("allow", "Allow", &form.default_access))
                    }
                    (error_of(form, "default_access", "mesh-access-error"))
                    p { button type="submit" { "Create mesh" } }
                }
            }
        },
    )
}

fn option(value: &str, label: &str, selected: &str) -> Markup {
    html! { option value=(value) selected[selected == value] { (label) } }
}

fn error_of(form: &MeshForm, field: &str, id: &str) -> Markup {
    html! {
        @if let Some(e) = form.errors.get(field) {
            p.field-error id=(id) role="alert" { (e) }
        }
    }
}

/// A mesh: its settings, services and policies, dataplanes and certificate authority.
pub fn mesh(chrome: &Chrome<'_>, org: &str, o: &MeshOverview) -> Markup {
    let m = &o.fleet.mesh;
    let mut by_kind: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &o.resources {
        by_kind.entry(r.kind.as_str()).or_default().push(r.name.as_str());
    }
    let online = o.fleet.dataplanes.iter().filter(|d| d.online).count();
    page(
        m.name.as_str(),
        Some(chrome),
        html! {
            p.muted { a href={ "/orgs/" (org) } { "Meshes" } " / " (m.name.as_str()) }
            h1 { "Mesh " (m.name.as_str()) }
            div.panel {
                p { "Trust domain " code { (m.trust_domain.as_str()) } ", mTLS "
                    (m.spec["mtls"]["mode"].as_str().unwrap_or("STRICT")) ", default access "
                    (m.spec["defaultAccess"].as_str().unwrap_or("deny")) ", revision " (m.revision) "." }
                p { (online) " of " (o.fleet.dataplanes.len()) " dataplanes online." }
            }
            h2 { "Configuration" }
            @if by_kind.is_empty() {
                p.muted { "Nothing configured yet." }
            } @else {
                table {
                    thead { tr { th { "Kind" } th { "Resources" } } }
                    tbody {
                        @for (kind, names) in &by_kind {
                            tr { td { (kind) } td { (names.join(", ")) } }
                        }
                    }
                }
            }
            h2 { "Dataplanes" }
            @if o.fleet.dataplanes.is_empty() {
                p.muted { "No proxy has connected yet." }
            } @else {
                table {
                    thead { tr { th { "Node" } th { "Service" } th { "Address" } th { "State" } th { "Last seen" } } }
                    tbody {
                        @for d in &o.fleet.dataplanes {
                            @let state = o.fleet.state(d).as_str();
                            tr {
                                td { code { (d.node_id) } }
                                td { (d.service) }
                                td { (d.address.map(|a| a.addr().to_string()).unwrap_or_default()) }
                                td class=(state_class(state)) { (state) }
                                td { (d.last_seen_at.format("%Y-%m-%d %H:%M:%S UTC")) }
                            }
                        }
                    }
                }
            }
            h2 { "Certificate authority" }
            div.panel {
                p { "Phase " strong { (o.ca.phase) } "; workload certificates live "
                    (o.ca.svid_ttl_seconds / 3600) " h." }
                table {
                    thead { tr { th { "Origin" } th { "State" } th { "Root fingerprint" } th { "Expires in" } } }
                    tbody {
                        @for ca in &o.ca.cas {
                            tr {
                                td { (ca.origin) }
                                td { (ca.state) }
                                td { code { (ca.root_fingerprint.as_deref().unwrap_or("")) } }
                                td { @if let Some(days) = ca.days_to_expiry { (days) " days" } }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn state_class(state: &str) -> &'static str {
    match state {
        "in-sync" => "ok",
        "rejected" | "offline" => "bad",
        _ => "warn",
    }
}
