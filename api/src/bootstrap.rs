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
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_model::config::Kind;
use trellis_model::{Action, ResourceName};

use crate::auth::authorize;
use crate::body::ApiQuery;
use crate::config::find_mesh;
use crate::{ApiError, AppState};

/// Where a workload keeps its certificates unless told otherwise.
pub const DEFAULT_CERT_DIR: &str = "/var/run/trellis";
/// Longest accepted node id and certificate directory.
pub const MAX_NODE_ID: usize = 128;
pub const MAX_CERT_DIR: usize = 256;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BootstrapQuery {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    cert_dir: Option<String>,
}

/// A checked bootstrap request.
struct Target {
    mesh: String,
    service: String,
    node: String,
    dir: String,
}

impl Target {
    fn file(&self, name: &str) -> String {
        if self.dir == "/" { format!("/{name}") } else { format!("{}/{name}", self.dir) }
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
    let msg = "must be an absolute path of at most 256 characters, without `..`, `.` or control characters";
    let ok = dir.starts_with('/')
        && dir.len() <= MAX_CERT_DIR
        && !dir.chars().any(char::is_control)
        && !dir.split('/').any(|seg| seg == ".." || seg == ".");
    if !ok {
        return Err(bad("certDir", msg));
    }
    let trimmed = dir.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() })
}

/// Authorizes (Read), checks the parameters and that the service is a Service of the mesh.
async fn target(
    s: &AppState,
    headers: &HeaderMap,
    org: &str,
    mesh: &str,
    q: BootstrapQuery,
) -> Result<Target, ApiError> {
    let caller = authorize(s, headers, org, Action::Read).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let m = find_mesh(&mut tx, mesh).await?;
    let service = q.service.ok_or_else(|| bad("service", "required: the Service the workload runs as"))?;
    let node = node_id(q.node)?;
    let dir = cert_dir(q.cert_dir)?;
    let unknown = || {
        ApiError::invalid_field("service", format!("no Service {service:?} in mesh {:?}", m.name.as_str()))
    };
    let name = ResourceName::parse(&service).map_err(|_| unknown())?;
    if tx.get_resource(m.id, Kind::Service.name(), &name).await?.is_none() {
        return Err(unknown());
    }
    tx.commit().await?;
    Ok(Target { mesh: m.name.as_str().to_owned(), service, node, dir })
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
                    "ca_certificate_file": t.file("ca.pem"),
                    "certificate_file": t.file("cert.pem"),
                    "private_key_file": t.file("key.pem"),
                    "refresh_interval": "600s",
                },
            }],
            "server_features": ["xds_v3"],
        }],
        // gRPC for Node.js refuses a bootstrap whose node has no `locality`; operators put
        // the workload's `zone` in it (it becomes the dataplane's zone).
        "node": { "id": t.node, "cluster": t.service, "locality": {}, "metadata": { "mesh": t.mesh } },
        "certificate_providers": {
            (trellis_xds::CERT_PROVIDER): {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": t.file("cert.pem"),
                    "private_key_file": t.file("key.pem"),
                    "ca_certificate_file": t.file("bundle.pem"),
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
                "certificate_chain": { "filename": t.file("cert.pem") },
                "private_key": { "filename": t.file("key.pem") },
            }],
            "validation_context": {
                "trusted_ca": { "filename": t.file("ca.pem") },
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
        "node": { "id": t.node, "cluster": t.service, "metadata": { "mesh": t.mesh } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }],
                "set_node_on_first_message_only": true,
            },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
        },
        "static_resources": {
            "clusters": [{
                "name": "xds",
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
                    "cluster_name": "xds",
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
pub(crate) async fn grpc(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<BootstrapQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let t = target(&s, &headers, &org, &mesh, q).await?;
    Ok(Json(grpc_bootstrap(&t, &s.xds.address)))
}

/// `GET …/bootstrap/envoy`.
pub(crate) async fn envoy(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<BootstrapQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let t = target(&s, &headers, &org, &mesh, q).await?;
    Ok(Json(envoy_bootstrap(&t, &s.xds.address)))
}

/// `GET …/bootstrap/ca.pem`: the platform root, for `<certDir>/ca.pem`.
pub(crate) async fn platform_root(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::Read).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    find_mesh(&mut tx, &mesh).await?;
    tx.commit().await?;
    let mut res = Body::from(s.xds.ca_pem.clone()).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-pem-file"));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_grpc_bootstrap_pins_the_platform_root_and_names_the_provider() {
        let t = Target { mesh: "m1".into(), service: "echo".into(), node: "n1".into(), dir: "/d".into() };
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
