//! Observe pages: a mesh's topology drawn as SVG, a service's golden metrics with charts,
//! the denied calls with why each was denied, and the impact preview of an access policy.
//! The SVG is laid out here, on the server ([`crate::layered`]); it carries no style of its
//! own (the stylesheet colours it: the CSP allows no inline style) and no script.

use maud::{Markup, html};
use trellis_control::{AccessLogPage, CallersView, EventPage, Impact, ServiceHealth, ServiceSeries, Why};
use trellis_model::attribution::Attribution;
use trellis_model::config::{FieldError, Verdict};
use trellis_model::telemetry::GoldenMetrics;
use trellis_store::{Mesh, StoredAccessLog};

use crate::layered;
use crate::layout::{Chrome, page};
use crate::pages::resources::{Editor, yaml_form};
use trellis_model::topology::{NodeKind, OTHER, View};

/// The windows a viewer can pick, in seconds, with their names.
pub const WINDOWS: [(i64, &str); 6] = [
    (300, "last 5 minutes"),
    (900, "last 15 minutes"),
    (3_600, "last hour"),
    (21_600, "last 6 hours"),
    (86_400, "last 24 hours"),
    (604_800, "last 7 days"),
];

/// A window's name: one of [`WINDOWS`], or its seconds.
fn window_name(seconds: i64) -> String {
    WINDOWS
        .iter()
        .find(|(s, _)| *s == seconds)
        .map_or_else(|| format!("last {seconds} s"), |(_, n)| (*n).to_owned())
}

fn window_select(id: &str, seconds: i64) -> Markup {
    html! {
        label for=(id) { "Window" }
        select id=(id) name="window" {
            @for (s, name) in WINDOWS {
                option value=(s) selected[s == seconds] { (name) }
            }
            @if !WINDOWS.iter().any(|(s, _)| *s == seconds) {
                option value=(seconds) selected { (window_name(seconds)) }
            }
        }
    }
}

fn mesh_url(org: &str, mesh: &str) -> String {
    format!("/orgs/{org}/meshes/{mesh}")
}

fn breadcrumb(org: &str, mesh: &str, here: &str) -> Markup {
    html! {
        p.muted {
            a href={ "/orgs/" (org) } { "Meshes" } " / "
            a href=(mesh_url(org, mesh)) { (mesh) } " / " (here)
        }
    }
}

/// Whether the mesh admits only mutual TLS between workloads.
fn strict_mtls(mesh: &Mesh) -> bool {
    mesh.spec["mtls"]["mode"].as_str().unwrap_or("STRICT") == "STRICT"
}

/// Requests per second, with the precision its size deserves.
pub fn rps(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

pub fn millis(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v >= 10.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
    }
}

/// An edge's figures in one line: `12.5 rps · 99.0% · p99 40 ms`.
pub fn edge_figures(m: &GoldenMetrics) -> String {
    if m.requests == 0 && m.tcp_connections > 0 {
        return format!("{} TCP connections", m.tcp_connections);
    }
    format!("{} rps · {} · p99 {}", rps(m.rps), percent(m.success_rate), millis(m.p99_ms))
}

/// Most boxes a topology drawing holds: services are grouped over it (the model's rule, with
/// the drawing's budget; the REST view holds more).
pub const MAX_DRAWN_NODES: usize = 30;

/// What the topology page's form says.
pub struct TopologyForm<'a> {
    pub window: i64,
    pub service: &'a str,
    pub group: &'a str,
}

// The drawing's grid, in SVG user units.
const NODE_W: f64 = 160.0;
const NODE_H: f64 = 36.0;
const COLUMN: f64 = 360.0;
const ROW: f64 = 96.0;
const MARGIN: f64 = 24.0;

/// A mesh's topology: the filter form, the drawing, and the same edges as a table.
pub fn topology(chrome: &Chrome<'_>, org: &str, mesh: &Mesh, v: &View, form: &TopologyForm<'_>) -> Markup {
    let base = mesh_url(org, mesh.name.as_str());
    let strict = strict_mtls(mesh);
    // Calls inside a group are its loop: counted in the table, not drawn.
    let drawn: Vec<&trellis_model::topology::Edge> =
        v.edges.iter().filter(|e| e.source != e.destination).collect();
    let edges: Vec<(usize, usize)> = drawn.iter().map(|e| (e.source, e.destination)).collect();
    let l = layered::layout(v.nodes.len(), &edges);
    let width = MARGIN * 2.0 + (l.layers.max(1) as f64 - 1.0) * COLUMN + NODE_W;
    let height = MARGIN * 2.0 + (l.rows.max(1) as f64 - 1.0) * ROW + NODE_H + 24.0;
    // Each layer centred on the tallest.
    let mut per_layer = vec![0usize; l.layers];
    for &(layer, _) in &l.positions {
        per_layer[layer] += 1;
    }
    let at = |i: usize| -> (f64, f64) {
        let (layer, row) = l.positions[i];
        let offset = (l.rows - per_layer[layer]) as f64 * ROW / 2.0;
        (MARGIN + layer as f64 * COLUMN, MARGIN + 24.0 + offset + row as f64 * ROW)
    };
    let node_href = |name: &str, kind: &NodeKind| match kind {
        NodeKind::Group(g) => Some(format!("{base}/topology?window={}&group={g}", form.window)),
        NodeKind::Service => Some(format!("{base}/services/{name}/metrics?window={}", form.window)),
        NodeKind::Other => None,
    };
    let edge_class = if strict { "edge mtls" } else { "edge permissive" };
    page(
        &format!("Topology · {}", mesh.name.as_str()),
        Some(chrome),
        html! {
            (breadcrumb(org, mesh.name.as_str(), "topology"))
            h1 { "Topology of mesh " (mesh.name.as_str()) }
            form.panel.filters method="get" action={ (base) "/topology" } {
                (window_select("topology-window", form.window))
                label for="topology-service" { "Service (shows who calls it and whom it calls)" }
                input #topology-service type="text" name="service" value=(form.service);
                label for="topology-group" { "Group (services whose name starts with this, then " code { "-" } ")" }
                input #topology-group type="text" name="group" value=(form.group);
                p { button type="submit" { "Show" } }
            }
            p.muted {
                "Calls of the " (window_name(form.window)) ", callers on the left. "
                @if strict {
                    "The mesh is STRICT: every edge is mutual TLS (solid). "
                } @else {
                    "The mesh is PERMISSIVE: services accept plaintext too, so edges are dashed. "
                }
                "Over " (MAX_DRAWN_NODES) " services, services are grouped by name prefix; open a group to see its members."
            }
            @if let Some(other) = v.nodes.iter().find(|n| n.kind == NodeKind::Other) {
                p.notice role="status" { (other.members) " less busy services are drawn as one box, " (OTHER) ": filter by a service or a group." }
            }
            @if v.edges_inside_groups() > 0 {
                p.muted { (v.edges_inside_groups()) " edges inside groups are not drawn (the table lists them)." }
            }
            @if v.nodes.is_empty() {
                p.muted #topology-empty { "No calls in this window." }
            } @else {
                div.graph {
                    svg #topology xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby="topology-title"
                        width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } {
                        title #topology-title { "Who calls whom in mesh " (mesh.name.as_str()) }
                        defs {
                            marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto" {
                                path d="M 0 0 L 10 5 L 0 10 z" {}
                            }
                        }
                        @for e in &drawn {
                            @let (sx, sy) = at(e.source);
                            @let (dx, dy) = at(e.destination);
                            @let (x1, y1) = (sx + NODE_W, sy + NODE_H / 2.0);
                            @let (x2, y2) = (dx, dy + NODE_H / 2.0);
                            @let bend = ((x2 - x1).abs() / 2.0).max(60.0);
                            @let (c1, c2) = (x1 + bend, x2 - bend);
                            // The curve's midpoint (t = 1/2 of the cubic), for the label.
                            @let (mx, my) = ((x1 + 3.0 * c1 + 3.0 * c2 + x2) / 8.0, (y1 + y2) / 2.0);
                            @let source = &v.nodes[e.source].name;
                            @let destination = &v.nodes[e.destination].name;
                            g class=(edge_class) id={ "edge-" (source) "-" (destination) } {
                                title { (source) " → " (destination) ": " (edge_figures(&e.metrics)) }
                                path d={ "M " (x1) " " (y1) " C " (c1) " " (y1) ", " (c2) " " (y2) ", " (x2) " " (y2) }
                                    marker-end="url(#arrow)" {}
                                text x=(mx) y=(my - 6.0) text-anchor="middle" { (edge_figures(&e.metrics)) }
                                @if !e.subsets.is_empty() {
                                    text.split x=(mx) y=(my + 10.0) text-anchor="middle" {
                                        (split_text(&e.subsets))
                                    }
                                }
                            }
                        }
                        @for (i, n) in v.nodes.iter().enumerate() {
                            @let (x, y) = at(i);
                            @let class = match (n.focus, &n.kind) {
                                (true, _) => "node focus",
                                (_, NodeKind::Service) => "node",
                                _ => "node group",
                            };
                            @let node = html! {
                                g class=(class) id={ "node-" (n.name) } {
                                    rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                                    text x=(x + NODE_W / 2.0) y=(y + NODE_H / 2.0 + 5.0) text-anchor="middle" {
                                        (n.name)
                                        @if n.kind != NodeKind::Service { " (" (n.members) ")" }
                                    }
                                }
                            };
                            @if let Some(href) = node_href(&n.name, &n.kind) {
                                a href=(href) { (node) }
                            } @else {
                                (node)
                            }
                        }
                    }
                }
                h2 { "Edges" }
                table #topology-edges {
                    thead { tr { th { "From" } th { "To" } th { "RPS" } th { "Success" } th { "p99" } th { "Split" } th { "mTLS" } } }
                    tbody {
                        @for e in &v.edges {
                            @let source = &v.nodes[e.source].name;
                            @let destination = &v.nodes[e.destination].name;
                            tr id={ "row-" (source) "-" (destination) } {
                                td { (source) }
                                td { (destination) }
                                td { (rps(e.metrics.rps)) }
                                td { (percent(e.metrics.success_rate)) }
                                td { (millis(e.metrics.p99_ms)) }
                                td { (split_text(&e.subsets)) }
                                td { @if strict { "yes" } @else { "not required" } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `version=v1 75% · version=v2 25%`.
fn split_text(subsets: &[trellis_model::telemetry::SubsetShare]) -> String {
    subsets
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s.subset.joined(),
                s.share.map_or_else(String::new, |v| format!("{:.0}%", v * 100.0))
            )
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// One line of a chart: its name, its class (the stylesheet's colour) and a value per point.
pub struct Line<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub values: Vec<Option<f64>>,
}

const CHART_W: f64 = 720.0;
const CHART_H: f64 = 180.0;
const CHART_LEFT: f64 = 64.0;
const CHART_BOTTOM: f64 = 24.0;

/// A line chart of `lines` over the series' points, its y axis from 0 in `unit`.
fn chart(id: &str, title: &str, unit: &str, times: &[String], lines: &[Line<'_>]) -> Markup {
    let max = lines.iter().flat_map(|l| l.values.iter().flatten()).fold(0.0f64, |a, &b| a.max(b));
    let top = nice_ceiling(max);
    let n = times.len().max(2);
    let plot_w = CHART_W - CHART_LEFT - 8.0;
    let plot_h = CHART_H - CHART_BOTTOM - 8.0;
    let x = |i: usize| CHART_LEFT + plot_w * i as f64 / (n - 1) as f64;
    let y = |v: f64| 8.0 + plot_h * (1.0 - if top > 0.0 { v / top } else { 0.0 });
    html! {
        figure.chart {
            svg id=(id) xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby={ (id) "-title" }
                width=(CHART_W) height=(CHART_H) viewBox={ "0 0 " (CHART_W) " " (CHART_H) } {
                title id={ (id) "-title" } { (title) }
                @for frac in [0.0, 0.5, 1.0] {
                    line.grid x1=(CHART_LEFT) x2=(CHART_W - 8.0) y1=(y(top * frac)) y2=(y(top * frac)) {}
                    text.axis x=(CHART_LEFT - 6.0) y=(y(top * frac) + 4.0) text-anchor="end" { (axis_value(top * frac)) " " (unit) }
                }
                @if let (Some(first), Some(last)) = (times.first(), times.last()) {
                    text.axis x=(CHART_LEFT) y=(CHART_H - 6.0) { (first) }
                    text.axis x=(CHART_W - 8.0) y=(CHART_H - 6.0) text-anchor="end" { (last) }
                }
                @for l in lines {
                    // A line breaks where a point has no value (no calls to measure).
                    @for run in runs(&l.values) {
                        polyline class={ "series " (l.class) } points=(run.iter().map(|&(i, v)| format!("{:.1},{:.1}", x(i), y(v))).collect::<Vec<_>>().join(" ")) {}
                    }
                }
            }
            figcaption {
                (title) ": "
                @for (i, l) in lines.iter().enumerate() {
                    @if i > 0 { ", " }
                    span class={ "key " (l.class) } { "■" } " " (l.name)
                }
            }
        }
    }
}

/// The runs of consecutive points that have a value, as (index, value).
fn runs(values: &[Option<f64>]) -> Vec<Vec<(usize, f64)>> {
    let mut out: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut current = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => current.push((i, *v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The smallest of 1, 2 or 5 times a power of ten at or above `v` (1 for nothing).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|c| *c >= v).unwrap_or(10.0 * power)
}

fn axis_value(v: f64) -> String {
    if v == 0.0 || v >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// A service's golden metrics over a window: the totals, and charts point by point.
pub fn service(chrome: &Chrome<'_>, org: &str, s: &ServiceSeries, health: Option<&ServiceHealth>) -> Markup {
    let base = mesh_url(org, s.mesh.name.as_str());
    let times: Vec<String> = s.points.iter().map(|(at, _)| at.format("%H:%M").to_string()).collect();
    let values =
        |f: fn(&GoldenMetrics) -> Option<f64>| s.points.iter().map(|(_, m)| f(m)).collect::<Vec<_>>();
    let t = &s.total;
    page(
        &format!("{} · {}", s.service, s.mesh.name.as_str()),
        Some(chrome),
        html! {
            (breadcrumb(org, s.mesh.name.as_str(), &s.service))
            h1 { "Service " (s.service) }
            form.panel.filters method="get" action={ (base) "/services/" (s.service) "/metrics" } {
                (window_select("metrics-window", s.seconds))
                p { button type="submit" { "Show" } }
            }
            p {
                a href={ (base) "/topology?service=" (s.service) "&window=" (s.seconds) } { "Its callers and callees in the topology" }
                " · " a href={ (base) "/denied?service=" (s.service) } { "Its denied calls" }
            }
            h2 { "Calls it received, " (window_name(s.seconds)) }
            table #golden-metrics {
                thead { tr { th { "Requests" } th { "RPS" } th { "Success rate" } th { "p50" } th { "p95" } th { "p99" } } }
                tbody {
                    tr {
                        td #total-requests { (t.requests) }
                        td #total-rps { (rps(t.rps)) }
                        td #total-success { (percent(t.success_rate)) }
                        td #total-p50 { (millis(t.p50_ms)) }
                        td #total-p95 { (millis(t.p95_ms)) }
                        td #total-p99 { (millis(t.p99_ms)) }
                    }
                }
            }
            p.muted { "Each point covers " (s.step) " s." }
            @if let Some(h) = health { (health_table(h)) }
            (chart("chart-rps", "Requests per second", "rps", &times,
                &[Line { name: "requests per second", class: "rps", values: values(|m| Some(m.rps)) }]))
            (chart("chart-success", "Success rate", "%", &times,
                &[Line { name: "success rate", class: "success", values: values(|m| m.success_rate.map(|r| r * 100.0)) }]))
            (chart("chart-latency", "Latency", "ms", &times, &[
                Line { name: "p50", class: "p50", values: values(|m| m.p50_ms) },
                Line { name: "p95", class: "p95", values: values(|m| m.p95_ms) },
                Line { name: "p99", class: "p99", values: values(|m| m.p99_ms) },
            ]))
        },
    )
}

/// A service's health now: its proxies by sync state, the expiry of the SVIDs they hold and
/// of the mesh's CA, the last rejection one of them sent, and the endpoints its callers see
/// ejected or unhealthy, with the callers that see them.
fn health_table(h: &ServiceHealth) -> Markup {
    let d = &h.dataplanes;
    let expiry = |t: Option<chrono::DateTime<chrono::Utc>>, none: &'static str| match t {
        Some(t) => format!("in {} days ({})", h.days_to(t), t.format("%Y-%m-%d %H:%M UTC")),
        None => none.to_owned(),
    };
    html! {
        h2 { "Health" }
        table #health {
            tbody {
                tr { th scope="row" { "Proxies" } td #health-proxies { (d.online) " online, " (d.offline) " offline" } }
                tr {
                    th scope="row" { "Configuration" }
                    td #health-sync { (d.in_sync) " in sync, " (d.syncing) " syncing, " (d.rejected) " rejecting it" }
                }
                tr {
                    th scope="row" { "Workload certificates" }
                    td #health-svid {
                        (expiry(h.svids.earliest_not_after, "none known")) @if h.svids.known > 0 { " (the earliest of " (h.svids.known) ")" }
                    }
                }
                tr { th scope="row" { "Mesh CA" } td #health-ca { (expiry(h.ca_not_after, "none active")) } }
                tr {
                    th scope="row" { "Last rejection" }
                    td #health-nack {
                        @match &h.last_nack {
                            None => "none",
                            Some(n) => {
                                (n.type_url.rsplit('.').next().unwrap_or(&n.type_url)) " version " (n.version)
                                " by " (n.node_id) " at " (n.at.format("%Y-%m-%d %H:%M:%S UTC")) ": " (n.error)
                                @if n.outstanding { " (still rejected)" } @else { " (a later version was accepted)" }
                            }
                        }
                    }
                }
                tr {
                    th scope="row" { "Endpoints" }
                    td #health-endpoints { (endpoints_line(&h.endpoints)) }
                }
            }
        }
        @let impaired: Vec<_> = h.endpoints.reports.iter().filter(|r| r.membership.is_impaired()).collect();
        @if !impaired.is_empty() {
            table #health-endpoint-callers {
                thead { tr { th { "Caller" } th { "Proxy" } th { "Cluster" } th { "Ejected" } th { "Unhealthy" } th { "Of" } th { "Reported" } } }
                tbody {
                    @for r in impaired {
                        tr {
                            td { (r.caller) }
                            td { (r.node) }
                            td { (r.port) @if !r.subset.is_empty() { " " (r.subset.joined()) } }
                            td { (r.membership.ejected) }
                            td { (r.membership.unhealthy()) }
                            td { (r.membership.total) }
                            td { (r.reported_at.format("%H:%M:%S UTC")) }
                        }
                    }
                }
            }
        }
    }
}

/// The endpoints' summary: what the callers worst placed see, or that none see a problem.
fn endpoints_line(v: &CallersView) -> String {
    let age = trellis_model::telemetry::ENDPOINT_REPORT_MAX_AGE.as_secs();
    if v.reports.is_empty() {
        return format!("no caller proxy online reported them in the last {age} s");
    }
    match v.impaired_callers() {
        0 => format!("all healthy as {} recent reports of its callers see them", v.reports.len()),
        n => format!(
            "{} ejected by outlier detection, {} unhealthy (the most one caller sees), seen by {n} caller {}",
            v.ejected(),
            v.unhealthy(),
            if n == 1 { "proxy" } else { "proxies" }
        ),
    }
}

/// What the denied-calls page is filtered by.
pub struct EventsForm<'a> {
    pub window: i64,
    pub kind: &'a str,
    pub service: &'a str,
}

/// An event's evidence in one line: its figures as `name value`, lists joined.
fn evidence_line(evidence: &serde_json::Value) -> String {
    let Some(fields) = evidence.as_object() else { return String::new() };
    let value = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => {
            n.as_f64().map_or_else(|| n.to_string(), |f| format!("{}", (f * 1000.0).round() / 1000.0))
        }
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| match (i.get("source"), i.get("denials")) {
                (Some(s), Some(n)) => format!("{} ×{n}", s.as_str().unwrap_or("no identity")),
                _ => i.as_str().map_or_else(|| i.to_string(), str::to_owned),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    fields
        .iter()
        .filter(|(k, _)| *k != "kind")
        .map(|(k, v)| format!("{k} {}", value(v)))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Unexpected traffic in a mesh, newest first, each new caller and denied burst with a link
/// to the AccessPolicy editor holding the policy that settles it.
pub fn events(chrome: &Chrome<'_>, org: &str, p: &EventPage, form: &EventsForm<'_>) -> Markup {
    let base = mesh_url(org, p.mesh.name.as_str());
    page(
        &format!("Unexpected traffic · {}", p.mesh.name.as_str()),
        Some(chrome),
        html! {
            (breadcrumb(org, p.mesh.name.as_str(), "unexpected traffic"))
            h1 { "Unexpected traffic in mesh " (p.mesh.name.as_str()) }
            p.muted { "A caller a service had not had in seven days, a burst of denied calls, or an edge whose calls or error rate left the range of its last hour; each recorded once, with the figures that triggered it." }
            form.panel.filters method="get" action={ (base) "/events" } {
                (window_select("events-window", form.window))
                label for="events-kind" { "Kind" }
                select #events-kind name="kind" {
                    option value="" selected[form.kind.is_empty()] { "any" }
                    @for k in trellis_model::traffic_events::EventKind::ALL {
                        option value=(k.as_str()) selected[form.kind == k.as_str()] { (k.as_str()) }
                    }
                }
                label for="events-service" { "Service (calling or called)" }
                input #events-service type="text" name="service" value=(form.service);
                p { button type="submit" { "Show" } }
            }
            @if p.events.is_empty() {
                p.muted #events-empty { "No unexpected traffic in this window." }
            } @else {
                table #events {
                    thead { tr { th { "Minute" } th { "Kind" } th { "From" } th { "To" } th { "Evidence" } th { span.visually-hidden { "Policy" } } } }
                    tbody {
                        @for e in &p.events {
                            tr {
                                td { (e.minute.format("%Y-%m-%d %H:%M UTC")) }
                                td { (e.kind) }
                                td { (e.source.as_deref().unwrap_or("–")) }
                                td { (e.destination) }
                                td { (evidence_line(&e.evidence)) }
                                td {
                                    @if trellis_model::traffic_events::EventKind::parse(&e.kind).is_some_and(|k| k.has_draft_policy()) {
                                        a href={ (base) "/events/" (e.id) "/draft" } aria-label={ "Draft a policy for the " (e.kind) " at " (e.destination) " at " (e.minute.format("%H:%M")) } { "Draft policy" }
                                    }
                                }
                            }
                        }
                    }
                }
                @if p.next_cursor.is_some() {
                    p.muted { "Showing the newest " (p.events.len()) "; narrow the window or filter to see older ones." }
                }
            }
        },
    )
}

pub struct DeniedForm<'a> {
    pub window: i64,
    pub service: &'a str,
}

/// `source → destination` of an entry, as far as the proxy knew them.
fn parties(e: &StoredAccessLog) -> (String, String) {
    let r = &e.record;
    let source =
        r.source_service.clone().or_else(|| r.source_address.clone()).unwrap_or_else(|| "unknown".into());
    let destination = r.destination_service.clone().unwrap_or_else(|| "unknown".into());
    (source, destination)
}

/// The calls proxies denied, newest first, each with a link to why.
pub fn denied(chrome: &Chrome<'_>, org: &str, p: &AccessLogPage, form: &DeniedForm<'_>) -> Markup {
    let base = mesh_url(org, p.mesh.name.as_str());
    page(
        &format!("Denied calls · {}", p.mesh.name.as_str()),
        Some(chrome),
        html! {
            (breadcrumb(org, p.mesh.name.as_str(), "denied calls"))
            h1 { "Denied calls in mesh " (p.mesh.name.as_str()) }
            form.panel.filters method="get" action={ (base) "/denied" } {
                (window_select("denied-window", form.window))
                label for="denied-service" { "Service (calling or called)" }
                input #denied-service type="text" name="service" value=(form.service);
                p { button type="submit" { "Show" } }
            }
            @if p.entries.is_empty() {
                p.muted #denied-empty { "No denied calls in this window." }
            } @else {
                table #denied-calls {
                    thead { tr { th { "When" } th { "From" } th { "To" } th { "Request" } th { "Status" } th { "Decided by" } th { span.visually-hidden { "Details" } } } }
                    tbody {
                        @for e in &p.entries {
                            @let r = &e.record;
                            @let (source, destination) = parties(e);
                            tr {
                                td { (e.received_at.format("%Y-%m-%d %H:%M:%S UTC")) }
                                td { (source) }
                                td { (destination) }
                                td { code { (r.method.as_deref().unwrap_or("")) " " (r.path.as_deref().unwrap_or("")) } }
                                td { (r.status.map(|s| s.to_string()).unwrap_or_default()) }
                                td { (trellis_control::attribution_of(r).to_string()) }
                                td { a href={ (base) "/denied/" (e.id) } aria-label={ "Why was the call from " (source) " to " (destination) " at " (e.received_at.format("%H:%M:%S")) " denied" } { "Why?" } }
                            }
                        }
                    }
                }
                @if p.next_cursor.is_some() {
                    p.muted { "Showing the newest " (p.entries.len()) "; narrow the window or filter by a service to see older ones." }
                }
            }
        },
    )
}

/// Why one logged call was denied (or let through): the decision, and the rule as it is now.
pub fn why(chrome: &Chrome<'_>, org: &str, mesh: &str, w: &Why, rule_yaml: Option<&str>) -> Markup {
    let base = mesh_url(org, mesh);
    let r = &w.entry.record;
    let (source, destination) = parties(&w.entry);
    page(
        "Why denied",
        Some(chrome),
        html! {
            (breadcrumb(org, mesh, "why"))
            h1 { "Why the call from " (source) " to " (destination) " was " (r.outcome) }
            p.notice #why-decision role="status" { strong { (w.attribution.to_string()) } }
            table {
                tbody {
                    tr { th scope="row" { "When" } td { (w.entry.received_at.format("%Y-%m-%d %H:%M:%S UTC")) } }
                    tr { th scope="row" { "Reported by" } td { (r.reporter) " (" (r.direction) ")" } }
                    tr { th scope="row" { "Caller's identity" } td { code { (r.source_identity.as_deref().unwrap_or("none: plaintext")) } } }
                    tr { th scope="row" { "Request" } td { code { (r.method.as_deref().unwrap_or("")) " " (r.path.as_deref().unwrap_or("")) } } }
                    tr { th scope="row" { "Status" } td { (r.status.map(|s| s.to_string()).unwrap_or_default()) } }
                    tr { th scope="row" { "Mesh revision then" } td { (w.entry.mesh_revision.map(|r| r.to_string()).unwrap_or_else(|| "unknown".into())) } }
                }
            }
            @match &w.rule {
                Some(rule) => {
                    h2 { "Rule " (rule.rule) " of AccessPolicy " (rule.policy) }
                    @if rule.resource.is_none() {
                        p.bad #why-rule-state { "The policy has been deleted since." }
                    } @else if rule.changed_since {
                        p.warn #why-rule-state { "The policy has changed since this call: the rule below is how it reads now." }
                    } @else {
                        p.ok #why-rule-state { "The policy is unchanged since this call." }
                    }
                    @if let Some(yaml) = rule_yaml {
                        pre #why-rule { code { (yaml) } }
                    } @else if rule.resource.is_some() {
                        p.muted { "The policy has no rule at that index any more." }
                    }
                    @if rule.resource.is_some() {
                        p { a href={ (base) "/config/access-policies/" (rule.policy) } { "Open AccessPolicy " (rule.policy) } }
                    }
                },
                None => {
                    @match w.attribution {
                        Attribution::DefaultDeny => p { "No allow rule of any AccessPolicy matched the caller, and the mesh denies by default." },
                        Attribution::NoMtlsIdentity => p { "The caller sent plaintext, so it had no identity any rule could allow." },
                        _ => {},
                    }
                }
            }
            p { a href={ (base) "/denied" } { "Back to denied calls" } }
        },
    )
}

fn verdict(v: &Verdict) -> &'static str {
    match v {
        Verdict::Allowed => "allowed",
        Verdict::Denied => "denied",
        Verdict::DependsOnRequest => "depends on the request",
    }
}

/// The outcome of an impact preview (or what was wrong with the draft), beside the editor
/// again, so that the viewer can go on editing or reviewing.
pub fn impact(
    chrome: &Chrome<'_>,
    org: &str,
    mesh: &str,
    outcome: Result<&Impact, &[FieldError]>,
    editor: &Editor,
    editor_action: &str,
) -> Markup {
    let base = mesh_url(org, mesh);
    page(
        "Impact preview",
        Some(chrome),
        html! {
            (breadcrumb(org, mesh, "impact preview"))
            h1 { "Impact preview" }
            @match outcome {
                Ok(i) => {
                    p { "Saving AccessPolicy " strong { (i.policy) } " would change how these edges are treated, judged against the calls of the "
                        (window_name(i.seconds)) ". Nothing has been saved." }
                    @if i.edges.is_empty() {
                        p.notice #impact-none role="status" { "No edge that carried calls changes." }
                    } @else {
                        table #impact-edges {
                            thead { tr { th { "From" } th { "To" } th { "Calls" } th { "Now" } th { "After saving" } } }
                            tbody {
                                @for e in &i.edges {
                                    tr class=(match e.after.verdict { Verdict::Denied => "bad", Verdict::Allowed => "ok", Verdict::DependsOnRequest => "warn" }) {
                                        td { (e.source) }
                                        td { (e.destination) }
                                        td { (e.calls) }
                                        td { (verdict(&e.before.verdict)) @if let Some(r) = &e.before.rule { " (" code { (r) } ")" } }
                                        td { strong { (verdict(&e.after.verdict)) } @if let Some(r) = &e.after.rule { " (" code { (r) } ")" } }
                                    }
                                }
                            }
                        }
                    }
                },
                Err(errors) => {
                    ul.notice.error #impact-errors role="alert" {
                        @for e in errors { li { @if !e.field.is_empty() { code { (e.field) } ": " } (e.message) } }
                    }
                }
            }
            h2 { "The draft" }
            (yaml_form(chrome, editor_action, editor, "Review changes", Some(&format!("{base}/impact"))))
        },
    )
}
