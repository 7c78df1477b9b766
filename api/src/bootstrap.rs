//! Workload bootstraps: the gRPC xDS bootstrap and the Envoy bootstrap of a service's
//! proxy, pointing at the TLS port, plus the platform root they pin.
//!
//! The files a workload keeps in `certDir`: `ca.pem` (the platform root: it verifies the xDS
//! server), `cert.pem` and `key.pem` (its SVID: its identity towards the xDS server and its
//! peers), `bundle.pem` (the mesh trust bundle: it verifies peers). The xDS server is never
//! verified with the mesh bundle, nor peers with the platform root.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_control::{Control, Scope};
use trellis_model::config::{MAX_RE2_PROGRAM, ServiceSpec};
use trellis_model::{TagKey, TagValue, Tags};

use crate::auth::OrgScope;
use crate::body::ApiQuery;
use crate::error::{ApiError, ReadErrors, Unprocessable};
use crate::params::MeshPath;
use crate::state::AppState;

pub use trellis_model::contract::DEFAULT_CERT_DIR;
use trellis_model::contract::{
    BUNDLE_FILE, CERT_FILE, CERT_PROVIDER, KEY_FILE, PLATFORM_CA_FILE, cert_path, node_metadata,
};

/// Longest accepted node id.
pub const MAX_NODE_ID: usize = 128;
/// Longest accepted `ports` and `tags` parameters.
pub const MAX_PORTS_PARAM: usize = 512;
pub const MAX_TAGS_PARAM: usize = 8192;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BootstrapQuery {
    /// A Service of the mesh
    #[serde(default)]
    #[param(nullable = false, required = true)]
    service: Option<String>,
    /// The node id, unique per instance
    #[serde(default)]
    #[param(nullable = false, required = true, max_length = 128)]
    node: Option<String>,
    /// Where the workload keeps ca.pem (platform root), cert.pem and key.pem (its SVID) and bundle.pem (mesh trust bundle)
    #[serde(default)]
    #[param(nullable = false, max_length = 256, default = "/var/run/trellis")]
    cert_dir: Option<String>,
    /// The service ports this sidecar serves, comma-separated (`9080,9090`): one inbound listener each
    #[serde(default)]
    #[param(nullable = false, max_length = 512)]
    ports: Option<String>,
    /// The instance's tags, comma-separated `key=value` pairs (`version=v2`): the subsets routes select
    #[serde(default)]
    #[param(nullable = false, max_length = 8192)]
    tags: Option<String>,
}

/// The parameters of the gRPC bootstrap: [`BootstrapQuery`] less the sidecar's `ports` and
/// `tags`, which it refuses. Only describes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct WorkloadQuery {
    /// A Service of the mesh
    service: String,
    /// The node id, unique per instance
    #[param(max_length = 128)]
    node: String,
    /// Where the workload keeps ca.pem (platform root), cert.pem and key.pem (its SVID) and bundle.pem (mesh trust bundle)
    #[param(nullable = false, rename = "certDir", max_length = 256, default = "/var/run/trellis")]
    cert_dir: Option<String>,
}

// The bounds the parameters above publish (utoipa takes literals only); the default
// certificate directory is checked by `the_documented_defaults_are_the_contracts`.
const _: () = assert!(MAX_NODE_ID == 128 && MAX_PORTS_PARAM == 512 && MAX_TAGS_PARAM == 8192);
const _: () = assert!(trellis_model::contract::MAX_CERT_DIR == 256);

/// A checked bootstrap request.
struct Target {
    mesh: String,
    service: String,
    node: String,
    dir: String,
    /// Inbound service ports (sidecars only), ascending.
    ports: Vec<u32>,
    tags: Tags,
}

impl Target {
    fn file(&self, name: &str) -> String {
        cert_path(&self.dir, name)
    }

    /// The node's metadata, as the xDS server reads it back (`trellis_model::contract`).
    fn sidecar_metadata(&self) -> Value {
        json!({
            (node_metadata::MESH): self.mesh,
            (node_metadata::CERT_DIR): self.dir,
            (node_metadata::PORTS): self.ports,
            (node_metadata::TAGS): self.tags,
        })
    }
}

fn bad(field: &str, msg: &str) -> ApiError {
    ApiError::bad_request(format!("{field}: {msg}")).with_field(field, msg)
}

fn node_id(node: Option<String>) -> Result<String, ApiError> {
    let node = node.ok_or_else(|| bad("node", "required: the proxy's node id, unique per instance"))?;
    let ok = !node.is_empty()
        && node.len() <= MAX_NODE_ID
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:/@".contains(&b));
    if !ok {
        return Err(bad("node", "must be 1-128 characters of letters, digits and - . _ : / @"));
    }
    Ok(node)
}

fn cert_dir(dir: Option<String>) -> Result<String, ApiError> {
    let dir = dir.unwrap_or_else(|| DEFAULT_CERT_DIR.to_owned());
    trellis_model::contract::parse_cert_dir(&dir).map_err(|msg| bad("certDir", &msg))
}

/// The sidecar's inbound ports: each a port of the service, at most once.
fn inbound_ports(ports: Option<String>, service: &ServiceSpec) -> Result<Vec<u32>, ApiError> {
    let Some(list) = ports else { return Ok(Vec::new()) };
    if list.len() > MAX_PORTS_PARAM {
        return Err(bad("ports", &format!("must be at most {MAX_PORTS_PARAM} characters")));
    }
    let declared: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
    let mut out = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let port = item.parse::<u32>().ok().filter(|p| service.ports.iter().any(|d| d.port == *p));
        let Some(port) = port else {
            return Err(bad(
                "ports",
                &format!(
                    "{item:?} is not a port of the service; its ports are {} (comma-separated)",
                    declared.join(", ")
                ),
            ));
        };
        if out.contains(&port) {
            return Err(bad("ports", &format!("port {port} is listed twice")));
        }
        // The sidecar's inbound listener takes `0.0.0.0:<port>`: the application must be told
        // where else it listens.
        if let Some(i) = service.ports.iter().position(|p| p.port == port && p.app_port.is_none()) {
            return Err(bad(
                "ports",
                &format!(
                    "port {port} declares no appPort: the sidecar listens on {port}, so set the \
                     application's own port in the Service's spec.ports[{i}].appPort"
                ),
            ));
        }
        out.push(port);
    }
    out.sort_unstable();
    Ok(out)
}

/// The instance's tags, `key=value` pairs separated by commas, checked by the model's tag
/// rules; the service and mesh come from the certificate, never from tags.
fn instance_tags(tags: Option<String>) -> Result<Tags, ApiError> {
    let Some(list) = tags else { return Ok(Tags::new()) };
    if list.len() > MAX_TAGS_PARAM {
        return Err(bad("tags", &format!("must be at most {MAX_TAGS_PARAM} characters")));
    }
    let mut out = std::collections::BTreeMap::new();
    for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(bad("tags", &format!("{pair:?} is not key=value")));
        };
        let (k, v) = (k.trim(), v.trim());
        // The model's tag rule, the one registration and routes use (it also keeps `service`
        // and `mesh`, which the certificate decides).
        if let Err(e) = TagKey::parse(k).and_then(|_| TagValue::parse(k, v)) {
            return Err(bad(&format!("tags.{k}"), &e.to_string()));
        }
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(bad(&format!("tags.{k}"), "is given twice"));
        }
    }
    Tags::parse(&out).map_err(|e| bad("tags", &e.to_string()))
}

/// Checks the parameters, then (as a reader of the mesh) that the service is a Service of
/// the mesh; ports and tags only where `sidecar`.
async fn target(
    ctl: &Control,
    scope: Scope,
    mesh: &str,
    q: BootstrapQuery,
    sidecar: bool,
) -> Result<Target, ApiError> {
    let service = q.service.ok_or_else(|| bad("service", "required: the Service the workload runs as"))?;
    let node = node_id(q.node)?;
    let dir = cert_dir(q.cert_dir)?;
    if !sidecar {
        for (field, given) in [("ports", &q.ports), ("tags", &q.tags)] {
            if given.is_some() {
                return Err(bad(field, "is for sidecars (the Envoy bootstrap) only"));
            }
        }
    }
    let (m, spec) = ctl.bootstrap_service(scope, mesh, &service).await?;
    let ports = inbound_ports(q.ports, &spec)?;
    let tags = instance_tags(q.tags)?;
    Ok(Target { mesh: m.name.as_str().to_owned(), service, node, dir, ports, tags })
}

/// The gRPC xDS bootstrap (gRFC A27/A65): mTLS to the xDS server, and the `trellis`
/// certificate provider that xDS security (A29) names for mesh traffic.
fn grpc_bootstrap(t: &Target, xds_address: &str) -> Value {
    json!({
        "xds_servers": [{
            "server_uri": xds_address,
            "channel_creds": [{
                "type": "tls",
                "config": {
                    "ca_certificate_file": t.file(PLATFORM_CA_FILE),
                    "certificate_file": t.file(CERT_FILE),
                    "private_key_file": t.file(KEY_FILE),
                    "refresh_interval": "600s",
                },
            }],
            "server_features": ["xds_v3"],
        }],
        // gRPC for Node.js refuses a bootstrap whose node has no `locality`; operators put
        // the workload's `zone` in it (it becomes the dataplane's zone).
        "node": { "id": t.node, "cluster": t.service, "locality": {}, "metadata": { "mesh": t.mesh } },
        "certificate_providers": {
            (CERT_PROVIDER): {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": t.file(CERT_FILE),
                    "private_key_file": t.file(KEY_FILE),
                    "ca_certificate_file": t.file(BUNDLE_FILE),
                    "refresh_interval": "60s",
                },
            },
        },
        "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
    })
}

/// The Envoy bootstrap: ADS over a static `xds` cluster (HTTP/2 with keepalive, TLS pinned
/// to the platform root and the server's name, the SVID as client certificate); listeners,
/// clusters and the mesh's secrets (SDS) come over ADS.
fn envoy_bootstrap(t: &Target, xds_address: &str) -> Value {
    let (host, port) = split_host_port(xds_address);
    let ip = host.parse::<std::net::IpAddr>().is_ok();
    let mut tls = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_certificates": [{
                "certificate_chain": { "filename": t.file(CERT_FILE) },
                "private_key": { "filename": t.file(KEY_FILE) },
            }],
            "validation_context": {
                "trusted_ca": { "filename": t.file(PLATFORM_CA_FILE) },
                "match_typed_subject_alt_names": [{
                    "san_type": if ip { "IP_ADDRESS" } else { "DNS" },
                    "matcher": { "exact": host },
                }],
            },
        },
    });
    if !ip {
        tls["sni"] = json!(host);
    }
    json!({
        "node": { "id": t.node, "cluster": t.service, "metadata": t.sidecar_metadata() },
        // Envoy refuses a regex whose RE2 program is larger than this runtime value (100
        // unless set); the API bounds every regex by the same number.
        "layered_runtime": { "layers": [
            { "name": "trellis", "static_layer": {
                (trellis_model::contract::RE2_MAX_PROGRAM_SIZE_KEY): MAX_RE2_PROGRAM,
            } },
            { "name": "admin", "admin_layer": {} },
        ] },
        // Stats go to the control plane every 10 s (its bucket width) under their full names
        // (the default tag extractors cut a cluster name at its first dot), and request
        // latency is bucketed with the control plane's bounds, so that it is stored exactly.
        // No stats matcher: every stat reaches the sink, the cluster gauges of service
        // health (`contract::cluster_gauge`) among them.
        "stats_sinks": [{
            "name": "envoy.stat_sinks.metrics_service",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                "transport_api_version": "V3",
                "grpc_service": { "envoy_grpc": { "cluster_name": trellis_model::contract::XDS_CLUSTER } },
            },
        }],
        "stats_flush_interval": "10s",
        "stats_config": {
            "histogram_bucket_settings": [{
                "match": { "suffix": ".upstream_rq_time" },
                "buckets": trellis_model::telemetry::bucket_upper_bounds_ms(),
            }],
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": trellis_model::contract::XDS_CLUSTER } }],
                "set_node_on_first_message_only": true,
            },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
        },
        "static_resources": {
            "clusters": [{
                "name": trellis_model::contract::XDS_CLUSTER,
                "type": if ip { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": "5s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {
                            "http2_protocol_options": {
                                "connection_keepalive": { "interval": "30s", "timeout": "5s" },
                            },
                        },
                    },
                },
                "upstream_connection_options": { "tcp_keepalive": {} },
                "load_assignment": {
                    "cluster_name": trellis_model::contract::XDS_CLUSTER,
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "socket_address": { "address": host, "port_value": port },
                    } } }] }],
                },
                "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": tls },
            }],
        },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 9901 } } },
    })
}

/// `host:port` or `[v6]:port` → (host, port).
fn split_host_port(addr: &str) -> (String, u16) {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "443"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.to_owned(), port.parse().unwrap_or(443))
}

/// `GET …/bootstrap/grpc`.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/bootstrap/grpc", operation_id = "getGrpcBootstrap",
    summary = "The gRPC xDS bootstrap (GRPC_XDS_BOOTSTRAP) of a workload",
    params(MeshPath, WorkloadQuery),
    responses((status = 200, description = "The bootstrap", body = Object), ReadErrors, (status = 422, response = Unprocessable)))]
pub(crate) async fn grpc(
    State(s): State<AppState>,
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<BootstrapQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let t = target(&ctl, scope, &mesh, q, false).await?;
    Ok(Json(grpc_bootstrap(&t, &s.xds.address)))
}

/// `GET …/bootstrap/envoy`.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/bootstrap/envoy", operation_id = "getEnvoyBootstrap",
    summary = "The Envoy bootstrap of a sidecar: ADS over mTLS to the xDS port",
    params(MeshPath, BootstrapQuery),
    responses((status = 200, description = "The bootstrap", body = Object), ReadErrors, (status = 422, response = Unprocessable)))]
pub(crate) async fn envoy(
    State(s): State<AppState>,
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<BootstrapQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let t = target(&ctl, scope, &mesh, q, true).await?;
    Ok(Json(envoy_bootstrap(&t, &s.xds.address)))
}

/// `GET …/bootstrap/ca.pem`: the platform root, for `<certDir>/ca.pem`.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/bootstrap/ca.pem", operation_id = "getPlatformRoot",
    summary = "The platform root that verifies the xDS port: write it to <certDir>/ca.pem",
    params(MeshPath),
    responses((status = 200, description = "The platform root (PEM)", body = String, content_type = "application/x-pem-file"), ReadErrors))]
pub(crate) async fn platform_root(
    State(s): State<AppState>,
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    ctl.get_mesh(scope, &mesh).await?;
    let mut res = Body::from(s.xds.ca_pem.clone()).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-pem-file"));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_model::config::{Kind, Spec};

    #[test]
    fn cert_dirs_are_absolute_and_plain() {
        assert_eq!(cert_dir(None).unwrap(), "/var/run/trellis");
        assert_eq!(cert_dir(Some("/etc/certs/".into())).unwrap(), "/etc/certs");
        assert_eq!(cert_dir(Some("/".into())).unwrap(), "/");
        for bad in ["relative", "/a/../b", "/a/./b", "/a\nb", ""] {
            assert!(cert_dir(Some(bad.into())).is_err(), "{bad:?}");
        }
        assert!(cert_dir(Some(format!("/{}", "a".repeat(300)))).is_err());
    }

    #[test]
    fn node_ids_are_bounded() {
        assert!(node_id(Some("echo-7d9f/ns-a".into())).is_ok());
        assert!(node_id(None).is_err());
        assert!(node_id(Some("a b".into())).is_err());
        assert!(node_id(Some("x".repeat(129))).is_err());
    }

    fn reviews() -> ServiceSpec {
        let Spec::Service(s) = Spec::parse(
            Kind::Service,
            "spec",
            json!({"ports": [
                {"port": 9080, "protocol": "http", "appPort": 19080},
                {"port": 9090, "protocol": "grpc", "appPort": 19090},
                {"port": 9100, "protocol": "http"},
            ]}),
        )
        .unwrap()
        .spec
        else {
            panic!()
        };
        s
    }

    fn field_of(e: ApiError) -> (String, String) {
        (e.errors[0].field.clone(), e.detail)
    }

    #[test]
    fn inbound_ports_are_ports_of_the_service_each_once() {
        assert_eq!(inbound_ports(Some("9090, 9080".into()), &reviews()).unwrap(), [9080, 9090]);
        assert!(inbound_ports(None, &reviews()).unwrap().is_empty());
        for bad in ["9081", "abc", "0", "9080,9080", "", "9080,", &"9".repeat(600)] {
            let (field, detail) = field_of(inbound_ports(Some(bad.into()), &reviews()).unwrap_err());
            assert_eq!(field, "ports", "{bad:?}: {detail}");
        }
        let (_, detail) = field_of(inbound_ports(Some("9081".into()), &reviews()).unwrap_err());
        assert!(detail.contains("its ports are 9080, 9090, 9100"), "{detail}");
        let (field, detail) = field_of(inbound_ports(Some("9100".into()), &reviews()).unwrap_err());
        assert_eq!(field, "ports");
        assert!(detail.contains("spec.ports[2].appPort"), "{detail}");
    }

    #[test]
    fn instance_tags_follow_the_models_tag_rules() {
        let t = instance_tags(Some("version=v2,track=beta".into())).unwrap();
        assert_eq!(t.get("version").map(String::as_str), Some("v2"));
        assert_eq!(t.len(), 2);
        for (bad, field) in [
            ("version", "tags"),
            ("-bad=v", "tags.-bad"),
            ("version=no spaces", "tags.version"),
            ("service=other", "tags.service"),
            ("mesh=other", "tags.mesh"),
            ("a=1,a=2", "tags.a"),
        ] {
            let (f, detail) = field_of(instance_tags(Some(bad.into())).unwrap_err());
            assert_eq!(f, field, "{bad:?}: {detail}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        assert_eq!(field_of(instance_tags(Some(many.join(","))).unwrap_err()).0, "tags");
    }

    #[test]
    fn the_envoy_bootstrap_carries_what_the_translation_reads_and_raises_the_regex_limit() {
        let t = Target {
            mesh: "m1".into(),
            service: "reviews".into(),
            node: "n1".into(),
            dir: "/etc/x".into(),
            ports: vec![9080],
            tags: Tags::parse([("version", "v2")]).unwrap(),
        };
        let e = envoy_bootstrap(&t, "xds.example:18000");
        assert_eq!(
            e["node"]["metadata"],
            json!({"mesh": "m1", "certDir": "/etc/x", "ports": [9080], "tags": {"version": "v2"}})
        );
        let layer = &e["layered_runtime"]["layers"][0]["static_layer"];
        assert_eq!(layer["re2.max_program_size.error_level"], json!(MAX_RE2_PROGRAM));
        // Stats reach the control plane through the xDS cluster, latency in its own buckets.
        let sink = &e["stats_sinks"][0];
        assert_eq!(sink["name"], "envoy.stat_sinks.metrics_service");
        assert_eq!(sink["typed_config"]["transport_api_version"], "V3");
        assert_eq!(sink["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"], "xds");
        assert_eq!(e["static_resources"]["clusters"][0]["name"], "xds");
        let buckets = &e["stats_config"]["histogram_bucket_settings"][0];
        assert_eq!(buckets["match"]["suffix"], ".upstream_rq_time");
        assert_eq!(buckets["buckets"], json!(trellis_model::telemetry::bucket_upper_bounds_ms()));
        // Nothing filters the stats: the membership and ejection gauges are sent too.
        assert!(e["stats_config"].get("stats_matcher").is_none(), "{e:#}");
        assert_eq!(e["stats_config"].as_object().unwrap().len(), 1, "only the histogram buckets");
    }

    #[test]
    fn the_grpc_bootstrap_pins_the_platform_root_and_names_the_provider() {
        let t = Target {
            mesh: "m1".into(),
            service: "echo".into(),
            node: "n1".into(),
            dir: "/d".into(),
            ports: vec![],
            tags: Tags::new(),
        };
        let b = grpc_bootstrap(&t, "xds.example:18000");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["config"]["ca_certificate_file"], "/d/ca.pem");
        assert_eq!(b["certificate_providers"]["trellis"]["config"]["ca_certificate_file"], "/d/bundle.pem");
        assert_eq!(b["node"]["cluster"], "echo");
        assert!(b["node"]["locality"].is_object(), "gRPC for Node.js requires node.locality: {b}");
        let e = envoy_bootstrap(&t, "[::1]:18000");
        let cluster = &e["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STATIC");
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["address"],
            "::1"
        );
        assert!(cluster["transport_socket"]["typed_config"].get("sni").is_none());
    }
}
