//! A readable form of xDS resources, for people: prost's `Debug` with every `Any` decoded in
//! place, proto3 defaults left out and `Some(…)` unwrapped. The config dump of the API and
//! the translation's snapshot tests use it. envoy-types messages do not implement serde, so
//! this is text, not proto3 JSON; RBAC policy maps are printed in name order.

use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Policy, Rbac};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// What a message the renderer does not know becomes; the snapshot tests refuse it.
pub const UNRENDERED: &str = "Unrendered";

/// The readable form of a packed resource.
pub fn readable_any(any: &Any) -> String {
    let text = expand(&show_any(&any.type_url, &any.value));
    let mut out = String::new();
    for node in parse(&mut text.lines()).iter().filter_map(simplify) {
        print(&node, 0, &mut out);
    }
    out
}

/// `config.rbac.v3.RBAC` with its policies in name order.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct SortedRbac {
    action: RbacAction,
    policies: BTreeMap<String, Policy>,
}

fn sorted(rbac: Option<Rbac>) -> Option<SortedRbac> {
    rbac.map(|mut r| {
        let policies = r.policies.drain().collect();
        let action = RbacAction::try_from(r.action).unwrap();
        r.action = 0;
        assert_eq!(r, Rbac::default(), "a field of RBAC the renderer does not show");
        SortedRbac { action, policies }
    })
}

#[derive(Debug)]
#[allow(dead_code)]
struct HttpRbacFilter {
    rules: Option<SortedRbac>,
    shadow_rules: Option<SortedRbac>,
    shadow_rules_stat_prefix: String,
}

#[derive(Debug)]
#[allow(dead_code)]
struct NetworkRbacFilter {
    stat_prefix: String,
    rules: Option<SortedRbac>,
    shadow_rules: Option<SortedRbac>,
    shadow_rules_stat_prefix: String,
}

/// The `Debug` form of a packed message of a type the translation uses. An unknown type (or
/// bytes that do not decode) is shown as a marker that the snapshot tests refuse, so a new
/// type gets a renderer before it gets a snapshot.
fn show_any(type_url: &str, value: &[u8]) -> String {
    fn d<M: Message + Name + Default + std::fmt::Debug>(type_url: &str, value: &[u8]) -> Option<String> {
        (type_url == M::type_url()).then(|| match M::decode(value) {
            Ok(m) => format!("{m:#?}"),
            Err(_) => format!("{UNRENDERED} {{\n    undecodable: {type_url:?},\n}}"),
        })
    }
    if type_url == HttpRbac::type_url()
        && let Ok(mut f) = HttpRbac::decode(value)
    {
        let shown = HttpRbacFilter {
            rules: sorted(f.rules.take()),
            shadow_rules: sorted(f.shadow_rules.take()),
            shadow_rules_stat_prefix: std::mem::take(&mut f.shadow_rules_stat_prefix),
        };
        return if f == HttpRbac::default() { format!("{shown:#?}") } else { format!("{UNRENDERED} {{}}") };
    }
    if type_url == NetworkRbac::type_url()
        && let Ok(mut f) = NetworkRbac::decode(value)
    {
        let shown = NetworkRbacFilter {
            stat_prefix: std::mem::take(&mut f.stat_prefix),
            rules: sorted(f.rules.take()),
            shadow_rules: sorted(f.shadow_rules.take()),
            shadow_rules_stat_prefix: std::mem::take(&mut f.shadow_rules_stat_prefix),
        };
        return if f == NetworkRbac::default() {
            format!("{shown:#?}")
        } else {
            format!("{UNRENDERED} {{}}")
        };
    }
    None.or_else(|| d::<HttpConnectionManager>(type_url, value))
        .or_else(|| d::<Router>(type_url, value))
        .or_else(|| d::<HttpFault>(type_url, value))
        .or_else(|| d::<LocalRateLimit>(type_url, value))
        .or_else(|| d::<TcpProxy>(type_url, value))
        .or_else(|| d::<HttpGrpcAccessLogConfig>(type_url, value))
        .or_else(|| d::<TcpGrpcAccessLogConfig>(type_url, value))
        .or_else(|| d::<TlsInspector>(type_url, value))
        .or_else(|| d::<DownstreamTlsContext>(type_url, value))
        .or_else(|| d::<UpstreamTlsContext>(type_url, value))
        .or_else(|| d::<HttpProtocolOptions>(type_url, value))
        .or_else(|| d::<Listener>(type_url, value))
        .or_else(|| d::<RouteConfiguration>(type_url, value))
        .or_else(|| d::<Cluster>(type_url, value))
        .or_else(|| d::<ClusterLoadAssignment>(type_url, value))
        .or_else(|| d::<Secret>(type_url, value))
        .unwrap_or_else(|| format!("{UNRENDERED} {{\n    type_url: {type_url:?},\n}}"))
}

/// Replaces every pretty-printed `Any { type_url, value: [bytes] }` by the message it holds,
/// recursively.
fn expand(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(prefix) = line.strip_suffix("Any {") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let indent = &line[..line.len() - line.trim_start().len()];
        let type_url = lines
            .next()
            .unwrap_or_default()
            .trim()
            .strip_prefix("type_url: \"")
            .unwrap_or_default()
            .trim_end_matches("\",");
        let mut value = Vec::new();
        if lines.next().unwrap_or_default().trim() == "value: [" {
            for l in lines.by_ref() {
                match l.trim() {
                    "]," => break,
                    b => value.push(b.trim_end_matches(',').parse::<u8>().unwrap_or_default()),
                }
            }
        }
        let close = lines.next().unwrap_or_default().trim().strip_prefix('}').unwrap_or_default();
        let inner = expand(&show_any(type_url, &value));
        let mut inner_lines = inner.lines();
        out.push_str(&format!("{prefix}{}\n", inner_lines.next().unwrap_or_default()));
        let rest: Vec<&str> = inner_lines.collect();
        for (i, l) in rest.iter().enumerate() {
            let end = if i + 1 == rest.len() { close } else { "" };
            out.push_str(&format!("{indent}{l}{end}\n"));
        }
    }
    out
}

/// A parsed pretty `Debug` form: a line, or an opener (`Name {`, `field: Some(`, `[`) with
/// children.
enum Node {
    Leaf(String),
    Open { head: String, close: char, children: Vec<Node> },
}

fn parse(lines: &mut std::str::Lines<'_>) -> Vec<Node> {
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with(['}', ')', ']']) {
            break;
        }
        let line = line.strip_suffix(',').unwrap_or(line);
        match line.chars().last() {
            Some(c @ ('{' | '(' | '[')) => {
                let close = match c {
                    '{' => '}',
                    '(' => ')',
                    _ => ']',
                };
                let head = line[..line.len() - 1].trim_end().to_owned();
                out.push(Node::Open { head, close, children: parse(lines) });
            }
            _ => out.push(Node::Leaf(line.to_owned())),
        }
    }
    out
}

/// A field at its proto3 default, which the JSON form leaves out too.
fn is_default(leaf: &str) -> bool {
    let Some((name, value)) = leaf.split_once(": ") else { return false };
    name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && matches!(value, "None" | "[]" | "{}" | "\"\"" | "false" | "0")
}

/// Prints the tree without default fields, `Some(…)` unwrapped, small values on one line.
fn print(node: &Node, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match flat(node) {
        Some(line) if pad.len() + line.len() <= 110 || single_leaf(node) => {
            out.push_str(&format!("{pad}{line}\n"))
        }
        _ => {
            let Node::Open { head, close, children } = node else { return };
            let open = match close {
                '}' => " {",
                ')' => "(",
                _ if head.is_empty() => "[",
                _ => " [",
            };
            out.push_str(&format!("{pad}{head}{open}\n"));
            for c in children.iter().filter_map(simplify) {
                print(&c, indent + 1, out);
            }
            out.push_str(&format!("{pad}{close}\n"));
        }
    }
}

/// Drops default fields, and turns `x: Some(\n v\n)` into `x: v`.
fn simplify(node: &Node) -> Option<Node> {
    match node {
        Node::Leaf(l) if is_default(l) => None,
        Node::Leaf(l) => Some(Node::Leaf(l.clone())),
        Node::Open { head, close: ')', children } if head.ends_with("Some") && children.len() == 1 => {
            let prefix = &head[..head.len() - 4];
            Some(match simplify(&children[0])? {
                Node::Leaf(l) => Node::Leaf(format!("{prefix}{l}")),
                Node::Open { head, close, children } => {
                    Node::Open { head: format!("{prefix}{head}"), close, children }
                }
            })
        }
        // `variant: Endpoint(Endpoint { … })` → `variant: Endpoint { … }`, and
        // `config_type: TypedConfig(Router { … })` → `config_type: TypedConfig: Router { … }`.
        Node::Open { head, close: ')', children }
            if children.len() == 1 && matches!(children[0], Node::Open { close: '}', .. }) =>
        {
            let Some(Node::Open { head: inner, close, children }) = simplify(&children[0]) else {
                return None;
            };
            let head =
                if head.ends_with(&format!(" {inner}")) { head.clone() } else { format!("{head}: {inner}") };
            Some(Node::Open { head, close, children })
        }
        Node::Open { head, close, children } => Some(Node::Open {
            head: head.clone(),
            close: *close,
            children: children.iter().filter_map(simplify).collect(),
        }),
    }
}

/// `Exact("…")`: one line however long.
fn single_leaf(node: &Node) -> bool {
    matches!(node, Node::Open { children, .. } if children.len() == 1 && matches!(children[0], Node::Leaf(_)))
}

/// A node on one line, if it has no nested openers.
fn flat(node: &Node) -> Option<String> {
    match node {
        Node::Leaf(l) => Some(l.clone()),
        Node::Open { head, close, children } => {
            let kids: Vec<String> =
                children.iter().filter_map(simplify).map(|c| flat(&c)).collect::<Option<_>>()?;
            if children.iter().filter_map(simplify).any(|c| matches!(c, Node::Open { .. }))
                && !kids.is_empty()
            {
                let nested =
                    children.iter().filter_map(simplify).filter(|c| matches!(c, Node::Open { .. })).count();
                if nested > 0 && kids.iter().map(String::len).sum::<usize>() > 60 {
                    return None;
                }
            }
            Some(match close {
                '}' if kids.is_empty() => format!("{head} {{}}"),
                '}' => format!("{head} {{ {} }}", kids.join(", ")),
                ')' => format!("{head}({})", kids.join(", ")),
                _ if head.is_empty() => format!("[{}]", kids.join(", ")),
                _ => format!("{head} [{}]", kids.join(", ")),
            })
        }
    }
}

/// The JSON-like readable form of one message: `Debug`, with `Any`s decoded, proto3
/// defaults left out and `Some` unwrapped.
pub fn readable<M: std::fmt::Debug>(m: &M) -> String {
    let text = expand(&format!("{m:#?}"));
    let mut out = String::new();
    for node in parse(&mut text.lines()).iter().filter_map(simplify) {
        print(&node, 0, &mut out);
    }
    out
}
