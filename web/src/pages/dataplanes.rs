//! A mesh's dataplanes: each proxy's sync state per xDS type with the reasons it rejected
//! anything, and one proxy's current configuration in readable form.

use maud::{Markup, html};
use trellis_control::{DataplaneConfig, Dataplanes, in_sync, short_type};
use trellis_store::{Dataplane, LedgerEntry};

use super::state_class;
use crate::layout::{Chrome, page};

/// Where one type stands for one proxy, in words, and its class.
fn line_state(l: &LedgerEntry) -> (String, &'static str) {
    match (&l.nacked_version, &l.nack_error) {
        (Some(v), error) => {
            (format!("rejected version {v}: {}", error.as_deref().unwrap_or("no reason given")), "bad")
        }
        (None, _) if in_sync(l) => ("in sync".to_owned(), "ok"),
        (None, _) => ("waiting for an answer".to_owned(), "warn"),
    }
}

fn version(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("—")
}

fn tags(d: &Dataplane) -> String {
    d.tags
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every dataplane of a mesh with its sync state per type.
pub fn list(chrome: &Chrome<'_>, org: &str, fleet: &Dataplanes) -> Markup {
    let mesh = fleet.mesh.name.as_str();
    let mesh_url = format!("/orgs/{org}/meshes/{mesh}");
    page(
        &format!("Dataplanes · {mesh}"),
        Some(chrome),
        html! {
            p.muted { a href={ "/orgs/" (org) } { "Meshes" } " / " a href=(mesh_url) { (mesh) } " / dataplanes" }
            h1 { "Dataplanes of mesh " (mesh) }
            p { "Mesh revision " (fleet.mesh.revision) "." }
            @if fleet.dataplanes.is_empty() {
                p.muted { "No proxy has connected yet." }
            }
            @for d in &fleet.dataplanes {
                @let state = fleet.state(d).as_str();
                section.panel {
                    h2 { a href={ (mesh_url) "/dataplanes/" (d.id) } { code { (d.node_id) } } }
                    p {
                        "Service " strong { (d.service) } ", " (d.client)
                        @if let Some(a) = d.address { ", " (a.addr()) }
                        @let t = tags(d);
                        @if !t.is_empty() { ", tags " code { (t) } }
                        ": " span class=(state_class(state)) { (state) }
                        ", holds revision " (d.synced_revision.map(|r| r.to_string()).unwrap_or_else(|| "none yet".into()))
                        ", last seen " (d.last_seen_at.format("%Y-%m-%d %H:%M:%S UTC")) "."
                    }
                    (sync_table(fleet.lines_of(d)))
                }
            }
        },
    )
}

fn sync_table<'a>(lines: impl Iterator<Item = &'a LedgerEntry>) -> Markup {
    html! {
        table {
            thead { tr { th { "Type" } th { "Sent" } th { "Accepted" } th { "State" } } }
            tbody {
                @for l in lines {
                    @let (state, class) = line_state(l);
                    tr {
                        td { (short_type(&l.type_url)) }
                        td { code { (version(&l.sent_version)) } }
                        td { code { (version(&l.acked_version)) } }
                        td class=(class) { (state) }
                    }
                }
            }
        }
    }
}

/// What one dataplane was last sent, per type, as YAML.
pub fn config(chrome: &Chrome<'_>, org: &str, mesh: &str, c: &DataplaneConfig) -> Markup {
    let d = &c.dataplane;
    let mesh_url = format!("/orgs/{org}/meshes/{mesh}");
    page(
        &format!("Dataplane {}", d.node_id),
        Some(chrome),
        html! {
            p.muted {
                a href={ "/orgs/" (org) } { "Meshes" } " / " a href=(mesh_url) { (mesh) } " / "
                a href={ (mesh_url) "/dataplanes" } { "dataplanes" } " / " (d.node_id)
            }
            h1 { "Dataplane " code { (d.node_id) } }
            p { "Service " strong { (d.service) } ", " (d.client) ", "
                @if d.online { span.ok { "online" } } @else { span.bad { "offline" } } "." }
            (sync_table(c.types.iter().map(|(l, _)| l)))
            @for (l, resources) in &c.types {
                h2 { (short_type(&l.type_url)) }
                @match resources {
                    Some(r) => pre { code { (crate::yaml::show(r)) } },
                    None => p.muted { "The content of version " (version(&l.sent_version)) " is no longer kept." },
                }
            }
        },
    )
}
