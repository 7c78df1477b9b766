//! Workload bootstraps over HTTP: a request's parameters checked against the mesh (its
//! service, ports and tags), then the gRPC xDS bootstrap or the Envoy bootstrap that
//! `trellis_model::bootstrap` writes, pointing at the TLS port, and the platform root they pin.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use trellis_control::{Control, Scope};
use trellis_model::config::ServiceSpec;
use trellis_model::{TagKey, TagValue, Tags};

use crate::auth::OrgScope;
use crate::body::ApiQuery;
use crate::error::{ApiError, ReadErrors, Unprocessable};
use crate::params::MeshPath;
use crate::state::AppState;

use trellis_model::bootstrap::Workload;
pub use trellis_model::contract::DEFAULT_CERT_DIR;

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
) -> Result<Workload, ApiError> {
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
    Ok(Workload { mesh: m.name.as_str().to_owned(), service, node, cert_dir: dir, ports, tags })
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
    Ok(Json(t.grpc(&s.xds.address)))
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
    Ok(Json(t.envoy(&s.xds.address)))
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
    use serde_json::json;
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
}
