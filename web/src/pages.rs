//! Each page as a pure function of what it shows: no I/O here, so that a page can be
//! rendered (and checked) from values alone.

use std::collections::BTreeMap;

use maud::{Markup, html};
use trellis_control::{AppError, Dataplanes, FirstProxy, MeshOverview, Onboarding};
use trellis_model::Role;
use trellis_model::config::{Kind, Labels};
use trellis_store::{ApiToken, AuditRecord, JoinToken, Mesh};

use crate::layout::{Chrome, csrf_field, page, page_refreshing};

pub mod ca;
pub mod dataplanes;
pub mod members;
pub mod observe;
pub mod resources;

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

/// Which of an organization's pages the viewer may open, beside its members.
pub struct OrgLinks {
    pub tokens: bool,
    pub audit: bool,
}

/// An organization: its meshes, links to the pages the viewer may open, and (for those who
/// may) the form that creates a mesh.
pub fn org(
    chrome: &Chrome<'_>,
    slug: &str,
    name: &str,
    meshes: &[Mesh],
    links: OrgLinks,
    form: Option<&MeshForm>,
) -> Markup {
    page(
        name,
        Some(chrome),
        html! {
            h1 { (name) }
            p #org-links {
                a href={ "/orgs/" (slug) "/members" } { "Members" }
                @if links.tokens { " · " a href={ "/orgs/" (slug) "/tokens" } { "API tokens" } }
                @if links.audit { " · " a href={ "/orgs/" (slug) "/audit" } { "Audit log" } }
            }
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

/// What the viewer of a mesh's page may do there.
pub struct MeshControls {
    /// Create and edit configuration resources.
    pub configure: bool,
    /// Mint join tokens: connect a workload.
    pub connect: bool,
    /// Rotate the CA.
    pub rotate: bool,
}

/// A mesh: its settings, services and policies, dataplanes and certificate authority, and
/// the forms the viewer may use.
pub fn mesh(chrome: &Chrome<'_>, org: &str, o: &MeshOverview, may: MeshControls, ca: &ca::CaForm) -> Markup {
    let m = &o.fleet.mesh;
    let mesh_url = format!("/orgs/{org}/meshes/{}", m.name.as_str());
    let mut by_kind: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &o.resources {
        by_kind.entry(r.kind.as_str()).or_default().push(r.name.as_str());
    }
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
                (propagation_summary(&o.fleet))
            }
            h2 { "Observe" }
            p #observe {
                a href={ (mesh_url) "/topology" } { "Topology" } " · "
                a href={ (mesh_url) "/denied" } { "Denied calls" } " · "
                a href={ (mesh_url) "/events" } { "Unexpected traffic" }
                @let services: Vec<&str> = o.resources.iter().filter(|r| r.kind == "Service").map(|r| r.name.as_str()).collect();
                @if !services.is_empty() {
                    " · golden metrics of "
                    @for (i, s) in services.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href={ (mesh_url) "/services/" (s) "/metrics" } { (s) }
                    }
                }
            }
            h2 { "Configuration" }
            table #configuration {
                thead { tr { th { "Kind" } th { "Resources" } th { span.visually-hidden { "Actions" } } } }
                tbody {
                    @for kind in Kind::ALL {
                        @let kind_url = format!("{mesh_url}/config/{}", kind.plural());
                        tr {
                            td { a href=(kind_url) { (kind.name()) } }
                            td {
                                @match by_kind.get(kind.name()) {
                                    Some(names) => @for (i, name) in names.iter().enumerate() {
                                        @if i > 0 { ", " }
                                        a href={ (kind_url) "/" (name) } { (name) }
                                    },
                                    None => span.muted { "none" },
                                }
                            }
                            td { @if may.configure { a href=(kind_url) aria-label={ "New " (kind.name()) } { "New" } } }
                        }
                    }
                }
            }
            h2 { "Dataplanes" }
            p { a href={ (mesh_url) "/dataplanes" } { "Sync state and configuration of every proxy" } }
            @if o.fleet.dataplanes.is_empty() {
                p.muted { "No proxy has connected yet." }
            } @else {
                table {
                    thead { tr { th { "Node" } th { "Service" } th { "Address" } th { "State" } th { "Last seen" } } }
                    tbody {
                        @for d in &o.fleet.dataplanes {
                            @let state = o.fleet.state(d).as_str();
                            tr {
                                td { a href={ (mesh_url) "/dataplanes/" (d.id) } { code { (d.node_id) } } }
                                td { (d.service) }
                                td { (d.address.map(|a| a.addr().to_string()).unwrap_or_default()) }
                                td class=(state_class(state)) { (state) }
                                td { (d.last_seen_at.format("%Y-%m-%d %H:%M:%S UTC")) }
                            }
                        }
                    }
                }
            }
            @if may.connect {
                (connect_form(chrome, org, o))
            }
            h2 #ca { "Certificate authority" }
            div.panel {
                p { "Phase " strong { (o.ca.phase) } "; workload certificates live "
                    (o.ca.svid_ttl_seconds / 3600) " h." }
                table #ca-authorities {
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
                (rotation_steps(chrome, org, o, may.rotate))
                @if may.rotate {
                    (ca::forms(chrome, org, o, ca))
                }
            }
        },
    )
}

/// Where the mesh's proxies stand with their configuration, by the rule of the dataplane
/// list ([`Dataplanes::state`]), and the last rejection one of them sent.
fn propagation_summary(fleet: &Dataplanes) -> Markup {
    let c = fleet.counts();
    let total = fleet.dataplanes.len();
    html! {
        p #propagation-summary {
            (total) @if total == 1 { " proxy: " } @else { " proxies: " }
            span.ok[c.in_sync > 0] { (c.in_sync) " in sync" } ", "
            span.warn[c.syncing > 0] { (c.syncing) " syncing" } ", "
            span.bad[c.rejected > 0] { (c.rejected) " rejecting" } ", "
            (c.offline) " offline"
            @if let Some((d, l)) = fleet.last_rejection() {
                " (last rejection: " code { (d.node_id) } " refused " (trellis_control::short_type(&l.type_url))
                " version " (l.nacked_version.as_deref().unwrap_or_default()) ": "
                (l.nack_error.as_deref().unwrap_or("no reason given")) ")"
            }
            "."
        }
    }
}

/// The three steps of a root rotation, each with what it does, the one the mesh is at
/// marked, and (for those who may rotate) the button that takes it.
fn rotation_steps(chrome: &Chrome<'_>, org: &str, o: &MeshOverview, may_rotate: bool) -> Markup {
    let action = format!("/orgs/{org}/meshes/{}/ca", o.fleet.mesh.name.as_str());
    let previous = o.ca.cas.iter().find(|c| c.state == "previous");
    let retire = match previous {
        Some(prev) => format!(
            "Removes the old root from the trust bundle. {} it signed {} still in use (unexpired, not \
             renewed); retiring is refused while any is.",
            match prev.live_leaves {
                1 => "1 certificate".to_owned(),
                n => format!("{n} certificates"),
            },
            if prev.live_leaves == 1 { "is" } else { "are" }
        ),
        None => "Removes the old root from the trust bundle, once no certificate it signed is still in use \
                 (retiring is refused while any is)."
            .to_owned(),
    };
    // (step, button, what it does); the phase names the step that comes next.
    let steps = [
        ("prepare", "Prepare a new root",
            "Adds a new root to the trust bundle without signing with it, so that every proxy trusts it before any certificate needs it.".to_owned()),
        ("activate", "Activate the new root",
            "New workload certificates are signed by the new root; the old root stays in the bundle, so certificates it signed keep working while agents renew under the new root, within seconds.".to_owned()),
        ("retire", "Retire the old root", retire),
    ];
    let current = match o.ca.phase {
        "stable" | "awaiting-chain" => "prepare",
        "prepared" => "activate",
        "rotated" => "retire",
        _ => "",
    };
    html! {
        h3 { "Root rotation" }
        ol #rotation-steps {
            @for (step, label, what) in &steps {
                @let here = *step == current;
                li.current[here] aria-current=[here.then_some("step")] {
                    strong { (label) } @if here { " — the next step" }
                    p { (what) }
                    @if here && may_rotate && (o.ca.phase != "awaiting-chain") {
                        form method="post" action=(action) {
                            (csrf_field(chrome.csrf))
                            input type="hidden" name="step" value=(step);
                            input type="hidden" name="id" value=(previous.filter(|_| *step == "retire").map(|p| p.id.to_string()).unwrap_or_default());
                            button type="submit" { (label) }
                        }
                    }
                }
            }
        }
    }
}

/// The form that mints a join token for one of the mesh's services.
fn connect_form(chrome: &Chrome<'_>, org: &str, o: &MeshOverview) -> Markup {
    let mesh = o.fleet.mesh.name.as_str();
    let services: Vec<&str> =
        o.resources.iter().filter(|r| r.kind == "Service").map(|r| r.name.as_str()).collect();
    html! {
        h2 { "Connect a workload" }
        @if services.is_empty() {
            p.muted { "Create a Service first: a workload joins the mesh as an instance of one." }
        } @else {
            form.panel method="post" action={ "/orgs/" (org) "/meshes/" (mesh) "/workloads" } {
                (csrf_field(chrome.csrf))
                label for="workload-service" { "Service" }
                select #workload-service name="service" {
                    @for s in &services { option value=(s) { (s) } }
                }
                label for="workload-tags" { "Tags of the instance (optional), e.g. " code { "version=v2" } }
                input #workload-tags type="text" name="tags" placeholder="version=v1";
                p { button type="submit" { "Create a join token" } }
            }
        }
    }
}

/// `k=v, k2=v2` as labels (the core checks the tag rules).
pub fn parse_tags(text: &str) -> Result<Labels, String> {
    let mut tags = Labels::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        tags.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(tags)
}

/// What the commands that run an agent need.
pub struct AgentSetup<'a> {
    pub server: &'a str,
    pub platform_ca_pem: &'a str,
    pub mesh: &'a str,
    pub token: &'a str,
    pub record: &'a JoinToken,
}

/// A new join token, shown once, and the commands that run an agent with it.
pub fn workload_token(chrome: &Chrome<'_>, org: &str, a: &AgentSetup<'_>) -> Markup {
    let tags: Vec<String> = a
        .record
        .tags
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let tags_flag = if tags.is_empty() { String::new() } else { format!(" --tags {}", tags.join(",")) };
    let files = format!(
        "sudo install -d -m 0700 /etc/trellis-agent
         echo '{token}' | sudo tee /etc/trellis-agent/join-token >/dev/null
         sudo chmod 0600 /etc/trellis-agent/join-token
         sudo tee /etc/trellis-agent/platform-ca.pem >/dev/null <<'END'
{ca}END",
        token = a.token,
        ca = a.platform_ca_pem,
    );
    let run = format!(
        "sudo trellis-agent run --server {server} \
  --platform-ca /etc/trellis-agent/platform-ca.pem          --join-token-file /etc/trellis-agent/join-token \
  --mesh {mesh} --service {service}{tags_flag} \
           --port <service port> --app-port <service port>=<application port> --address <this host's address>",
        server = a.server,
        mesh = a.mesh,
        service = a.record.service,
    );
    let systemd = format!(
        "sudo tee /etc/trellis-agent/agent.env >/dev/null <<'END'
         TRELLIS_SERVER={server}
TRELLIS_MESH={mesh}
TRELLIS_SERVICE={service}
{tags_env}         TRELLIS_PORTS=<service port>
TRELLIS_APP_PORTS=<service port>=<application port>
         TRELLIS_ADDRESS=<this host's address>
END
         trellis install agent-systemd | sudo tee /etc/systemd/system/trellis-agent.service >/dev/null
         sudo systemctl daemon-reload && sudo systemctl enable --now trellis-agent",
        server = a.server,
        mesh = a.mesh,
        service = a.record.service,
        tags_env = if tags.is_empty() {
            String::new()
        } else {
            format!(
                "TRELLIS_TAGS={}
",
                tags.join(",")
            )
        },
    );
    let kubernetes = kubernetes_commands(a, &tags);
    page(
        "Connect a workload",
        Some(chrome),
        html! {
            p.muted { a href={ "/orgs/" (org) "/meshes/" (a.mesh) } { "Mesh " (a.mesh) } " / connect a workload" }
            h1 { "Connect a workload to " (a.record.service) }
            div.notice role="status" {
                p { "The join token is shown this once; it expires "
                    (a.record.expires_at.format("%Y-%m-%d %H:%M UTC")) " and is needed only until the agent holds its certificate." }
                p { code #join-token { (a.token) } }
            }
            h2 { "1. On the workload's machine: the token and the control plane's root" }
            pre { code #agent-files { (files) } }
            h2 { "2. Run the agent beside the application" }
            p { "Explicit mode, no privileges: the application listens on 127.0.0.1:<application port> and calls other services through the agent (see README, Running the agent)." }
            pre { code #agent-run { (run) } }
            h2 { "Or as a systemd service" }
            pre { code #agent-systemd { (systemd) } }
            h2 { "Or in Kubernetes pods" }
            p { "In the workload's namespace, the control plane's root in a ConfigMap and the token in a Secret; then "
                code { "trellis inject" } " adds the agent to the pods of its manifests (see README, The agent in Kubernetes pods)." }
            pre { code #agent-kubernetes { (kubernetes) } }
            p { a.button href={ "/orgs/" (org) "/meshes/" (a.mesh) "/workloads/" (a.record.id) } { "Watch for the first proxy" }
                " — the page follows the agent through each step and names the one that fails." }
        },
    )
}

/// The commands that put the root and the token where `trellis inject`'s pods read them
/// (`contract::kubernetes`), then inject the workload's manifests.
fn kubernetes_commands(a: &AgentSetup<'_>, tags: &[String]) -> String {
    use trellis_model::contract::kubernetes::{
        PLATFORM_CA_CONFIGMAP, PLATFORM_CA_KEY, TOKEN_KEY, token_secret,
    };
    let service = &a.record.service;
    // The sidecar names only the pod's `version` label as a tag: the token's tags bind it.
    let bound = if tags.is_empty() {
        String::new()
    } else {
        format!(
            "\n# The token binds the tags {}: the agent claims the pod's `version` label, which must agree.",
            tags.join(",")
        )
    };
    format!(
        "kubectl -n <namespace> create configmap {PLATFORM_CA_CONFIGMAP} --from-file={PLATFORM_CA_KEY}=/dev/stdin <<'END'\n\
         {ca}END\n\
         printf %s '{token}' | kubectl -n <namespace> create secret generic {secret} --from-file={TOKEN_KEY}=/dev/stdin{bound}\n\
         trellis inject --mesh {mesh} --server {server} --service {service} -f <workload>.yaml | kubectl -n <namespace> apply -f -",
        ca = a.platform_ca_pem,
        token = a.token,
        secret = token_secret(service),
        mesh = a.mesh,
        server = a.server,
    )
}

/// The organization's API tokens, a new one shown once (`minted`: its name and text), and the
/// form that mints one.
pub fn tokens(chrome: &Chrome<'_>, org: &str, tokens: &[ApiToken], minted: Option<(&str, &str)>) -> Markup {
    page(
        "API tokens",
        Some(chrome),
        html! {
            p.muted { a href={ "/orgs/" (org) } { "Organization" } " / API tokens" }
            h1 { "API tokens" }
            @if let Some((name, token)) = minted {
                div.notice role="status" {
                    p { "The token " strong { (name) } " is shown this once: copy it now." }
                    p { code #new-token { (token) } }
                }
            }
            @if tokens.is_empty() {
                p.muted { "No API tokens yet." }
            } @else {
                table {
                    thead { tr { th { "Name" } th { "Role" } th { "Created" } th { "Last used" } th { "State" } th { span.muted { "Action" } } } }
                    tbody {
                        @for t in tokens {
                            tr {
                                td { (t.name) }
                                td { (t.role.as_str()) }
                                td { (t.created_at.format("%Y-%m-%d %H:%M")) " by " code { (t.created_by) } }
                                td { (t.last_used_at.map(|at| at.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into())) }
                                @if t.revoked_at.is_some() {
                                    td.bad { "revoked" } td {}
                                } @else {
                                    td.ok { "active" }
                                    td {
                                        form method="post" action={ "/orgs/" (org) "/tokens/" (t.id) "/revoke" } {
                                            (csrf_field(chrome.csrf))
                                            button.secondary type="submit" aria-label={ "Revoke " (t.name) } { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Create a token" }
            form.panel method="post" action={ "/orgs/" (org) "/tokens" } {
                (csrf_field(chrome.csrf))
                label for="token-name" { "Name" }
                input #token-name type="text" name="name" required maxlength="100";
                label for="token-role" { "Role (at most your own)" }
                select #token-role name="role" {
                    @for r in Role::ALL { option value=(r.as_str()) selected[r == Role::Viewer] { (r.as_str()) } }
                }
                p { button type="submit" { "Create token" } }
            }
        },
    )
}

/// What the audit log is filtered by.
pub struct AuditFilters {
    pub actor: String,
    pub action: String,
    pub target: String,
}

/// The organization's audit log, newest first, with its filters and the next page's link.
pub fn audit(
    chrome: &Chrome<'_>,
    org: &str,
    events: &[AuditRecord],
    f: &AuditFilters,
    next: Option<&str>,
) -> Markup {
    page(
        "Audit log",
        Some(chrome),
        html! {
            p.muted { a href={ "/orgs/" (org) } { "Organization" } " / audit log" }
            h1 { "Audit log" }
            form.panel method="get" action={ "/orgs/" (org) "/audit" } {
                label for="audit-actor" { "Actor (e.g. user:…, token:…)" }
                input #audit-actor type="text" name="actor" value=(f.actor);
                label for="audit-action" { "Action (e.g. mesh.put, token.revoke)" }
                input #audit-action type="text" name="action" value=(f.action);
                label for="audit-target" { "Target starts with (e.g. meshes/shop)" }
                input #audit-target type="text" name="target" value=(f.target);
                p { button type="submit" { "Filter" } }
            }
            @if events.is_empty() {
                p.muted { "No events." }
            } @else {
                table #audit-events {
                    thead { tr { th { "When" } th { "Actor" } th { "Action" } th { "Target" } th { "Request" } } }
                    tbody {
                        @for e in events {
                            tr {
                                td { (e.at.format("%Y-%m-%d %H:%M:%S UTC")) }
                                td { code { (e.actor) } }
                                td { (e.action) }
                                td { code { (e.target) } }
                                td { code { (e.request_id.as_deref().unwrap_or("")) } }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = next {
                form method="get" action={ "/orgs/" (org) "/audit" } {
                    input type="hidden" name="actor" value=(f.actor);
                    input type="hidden" name="action" value=(f.action);
                    input type="hidden" name="target" value=(f.target);
                    input type="hidden" name="cursor" value=(cursor);
                    button.secondary type="submit" { "Older events" }
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

/// One step on the way to the first proxy: done, failed (with why), or not yet (with what
/// to check if it stays so).
enum Step {
    Done,
    Failed(String),
    Pending(Option<String>),
}

/// "Waiting for the first proxy": the steps from the join token to a proxy in sync, the
/// failing one named; the page reloads itself while there is still something to wait for.
pub fn first_proxy(chrome: &Chrome<'_>, org: &str, o: &Onboarding) -> Markup {
    use FirstProxy as F;
    let mesh = o.mesh.name.as_str();
    let service = &o.token.service;
    // The TLS port cannot attribute a failed handshake to a token: until an agent presents
    // it, TLS (the address or the pinned root) is only the likely culprit.
    let tls = match &o.step {
        F::Waiting => Step::Pending(Some(
            "no attempt seen yet — if the agent logs a TLS error, check --platform-ca and --server".into(),
        )),
        F::TokenExpired | F::TokenRevoked => Step::Pending(None),
        _ => Step::Done,
    };
    let (identity, stream, config) = match &o.step {
        F::Waiting => (Step::Pending(None), Step::Pending(None), Step::Pending(None)),
        F::TokenExpired => (
            Step::Failed("the token expired before an agent used it: create another".into()),
            Step::Pending(None),
            Step::Pending(None),
        ),
        F::TokenRevoked => (
            Step::Failed("the token was revoked: create another".into()),
            Step::Pending(None),
            Step::Pending(None),
        ),
        F::Refused { reason, at } => (
            Step::Failed(format!("token refused: {reason} (at {})", at.format("%H:%M:%S UTC"))),
            Step::Pending(None),
            Step::Pending(None),
        ),
        F::StreamRefused { reason, at } => (
            Step::Done,
            Step::Failed(format!("refused: {reason} (at {})", at.format("%H:%M:%S UTC"))),
            Step::Pending(None),
        ),
        F::NoStream => (
            Step::Done,
            Step::Failed(
                "the agent got its certificate, but no xDS stream has opened yet: if this lasts, check that \
                 the agent still runs and its --server, --mesh and --service flags"
                    .into(),
            ),
            Step::Pending(None),
        ),
        F::Rejected { reason, .. } => (Step::Done, Step::Done, Step::Failed(format!("rejected: {reason}"))),
        F::Syncing { .. } => (Step::Done, Step::Done, Step::Pending(None)),
        F::Connected { .. } => (Step::Done, Step::Done, Step::Done),
    };
    let (headline, class) = match &o.step {
        F::Waiting => ("Waiting for an agent to use the join token…".to_owned(), "warn"),
        F::TokenExpired | F::TokenRevoked => ("The join token was refused".to_owned(), "bad"),
        F::Refused { reason, .. } => (format!("The join token was refused: {reason}"), "bad"),
        F::NoStream => ("Identity issued, but no xDS stream yet".to_owned(), "bad"),
        F::StreamRefused { reason, .. } => {
            (format!("Identity issued, but its xDS stream was refused: {reason}"), "bad")
        }
        F::Rejected { node, .. } => (format!("Proxy {node} rejected its configuration"), "bad"),
        F::Syncing { node } => (format!("Proxy {node} connected; its configuration is on its way…"), "warn"),
        F::Connected { node } => (format!("Proxy {node} is connected and in sync"), "ok"),
    };
    let body = html! {
        p.muted { a href={ "/orgs/" (org) "/meshes/" (mesh) } { "Mesh " (mesh) } " / first proxy of " (service) }
        h1 { "First proxy of " (service) }
        p #first-proxy-state class=(class) role="status" { strong { (headline) } }
        ol #first-proxy-steps {
            (step("The agent reached the control plane over TLS", &tls))
            (step("The agent used the join token for its identity certificate", &identity))
            (step("The proxy opened its xDS stream to the control plane", &stream))
            (step("The proxy accepted its configuration", &config))
        }
        p.muted { "The token expires " (o.token.expires_at.format("%Y-%m-%d %H:%M UTC")) "." }
    };
    let waiting = matches!(
        o.step,
        F::Waiting | F::NoStream | F::StreamRefused { .. } | F::Syncing { .. } | F::Rejected { .. }
    );
    let title = format!("First proxy of {service}");
    if waiting { page_refreshing(&title, Some(chrome), body, 3) } else { page(&title, Some(chrome), body) }
}

fn step(what: &str, s: &Step) -> Markup {
    html! {
        @match s {
            Step::Done => li.ok { (what) ": done" },
            Step::Failed(why) => li.bad { (what) ": " strong { "failed" } " — " (why) },
            Step::Pending(None) => li.muted { (what) ": not yet" },
            Step::Pending(Some(hint)) => li.muted { (what) ": " (hint) },
        }
    }
}
