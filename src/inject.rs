//! `trellis inject`: adds `trellis-agent` to the pods of workload manifests, as `linkerd
//! inject` does — a sidecar in transparent mode and an init container whose iptables rules
//! send the pod's TCP through it. Pure: the same text and settings give the same bytes, and
//! injecting an injected manifest changes nothing.

use std::collections::BTreeSet;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use trellis_model::contract::DEFAULT_CERT_DIR;
use trellis_model::contract::kubernetes::{PLATFORM_CA_KEY, TOKEN_KEY, token_secret as default_token_secret};
use trellis_model::{KubeName, MeshName, ResourceName};

/// The sidecar's container name: a pod that has one is left as it is.
pub const AGENT_CONTAINER: &str = "trellis-agent";
/// The init container that installs the redirection.
const INIT_CONTAINER: &str = "trellis-init";
/// The agent's user: `trellis-agent init` exempts its traffic from the outbound redirect.
const PROXY_UID: u32 = 1337;
/// Where `trellis-agent init` sends inbound and outbound TCP, and the ports it leaves alone:
/// the admin port (loopback only) and the readiness port, on the pod IP for the kubelet's
/// probe (`GET /ready` and nothing else).
const INBOUND_CAPTURE_PORT: u16 = 15006;
const OUTBOUND_CAPTURE_PORT: u16 = 15001;
const ADMIN_PORT: u16 = 15000;
const READINESS_PORT: u16 = 15021;
/// The readiness port's name in the sidecar's `ports` (at most 15 characters).
const READINESS_PORT_NAME: &str = "trellis-ready";

const PLATFORM_CA_DIR: &str = "/etc/trellis-agent/platform-ca";
const CERTS_VOLUME: &str = "trellis-agent-certs";
const PLATFORM_CA_VOLUME: &str = "trellis-agent-platform-ca";

/// What every injected pod shares; the service and ports default per workload.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub mesh: MeshName,
    /// The control plane's TLS port, `host:port`.
    pub server: String,
    /// `None`: each workload's `app` label, else its name.
    pub service: Option<ResourceName>,
    /// `None`: the TCP `containerPort`s of the pod's containers.
    pub ports: Option<Vec<u16>>,
    /// `None`: `trellis-join-<service>`, a join token being bound to one service.
    pub token_secret: Option<KubeName>,
    /// The ConfigMap holding the platform root under [`PLATFORM_CA_KEY`].
    pub platform_ca: KubeName,
}

/// What happened to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected {
        service: String,
    },
    AlreadyInjected,
    /// iptables in a host-network pod would redirect the node's traffic.
    HostNetwork,
    NotAWorkload,
}

/// The manifests with every workload injected, and what happened to each document
/// (`Kind/name`, outcome).
pub struct Injected {
    pub yaml: String,
    pub outcomes: Vec<(String, Outcome)>,
}

/// Injects every workload in the files' multi-document YAML (or JSON), given as (label,
/// text); other kinds pass unchanged. One bad document fails the whole: nothing half-injected
/// is printed.
pub fn inject(files: &[(String, String)], settings: &Settings) -> anyhow::Result<Injected> {
    let mut yaml = String::new();
    let mut outcomes = Vec::new();
    for (label, text) in files {
        for (doc_label, mut doc) in crate::cli::parse_documents(label, text)? {
            let name = format!(
                "{}/{}",
                doc["kind"].as_str().unwrap_or("(no kind)"),
                doc["metadata"]["name"].as_str().unwrap_or("(no name)")
            );
            let outcome =
                inject_document(&mut doc, settings).with_context(|| format!("{doc_label} ({name})"))?;
            if !outcomes.is_empty() {
                yaml.push_str("---\n");
            }
            yaml.push_str(&serde_yaml::to_string(&doc)?);
            outcomes.push((name, outcome));
        }
    }
    Ok(Injected { yaml, outcomes })
}

fn inject_document(doc: &mut Value, settings: &Settings) -> anyhow::Result<Outcome> {
    let workload_name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let template = match doc["kind"].as_str() {
        Some("Pod") => Some(doc),
        Some("Deployment" | "StatefulSet" | "DaemonSet") => doc.pointer_mut("/spec/template"),
        _ => return Ok(Outcome::NotAWorkload),
    }
    .ok_or_else(|| anyhow!("no spec.template"))?;
    let labels = template["metadata"]["labels"].clone();
    let pod = template.get_mut("spec").filter(|s| s.is_object()).ok_or_else(|| anyhow!("no pod spec"))?;
    let containers =
        pod["containers"].as_array().filter(|c| !c.is_empty()).ok_or_else(|| anyhow!("no containers"))?;
    if containers.iter().any(|c| c["name"] == AGENT_CONTAINER) {
        return Ok(Outcome::AlreadyInjected);
    }
    if pod["hostNetwork"] == true {
        return Ok(Outcome::HostNetwork);
    }

    let service = match &settings.service {
        Some(s) => s.clone(),
        None => {
            let name = labels["app"].as_str().unwrap_or(&workload_name);
            ResourceName::parse(name).map_err(|e| {
                anyhow!("the service name {name:?} (its `app` label or name) {e}: pass --service")
            })?
        }
    };
    let ports = match &settings.ports {
        Some(p) => p.clone(),
        None => container_ports(containers),
    };
    let tags = labels["version"].as_str().map(|v| format!("version={v}"));
    let token_secret = match &settings.token_secret {
        Some(s) => s.as_str().to_owned(),
        None => default_token_secret(service.as_str()),
    };

    let sidecar = sidecar(settings, &service, &ports, tags.as_deref(), &token_secret);
    // First, so that the kubelet starts the agent before the application dials through it.
    pod["containers"].as_array_mut().expect("checked above").insert(0, sidecar);
    // Last, so that the pod's own init containers run before their traffic is redirected.
    append(pod, "initContainers", init_container(settings))?;
    append(
        pod,
        "volumes",
        json!({ "name": CERTS_VOLUME, "emptyDir": { "medium": "Memory", "sizeLimit": "16Mi" } }),
    )?;
    append(
        pod,
        "volumes",
        json!({ "name": PLATFORM_CA_VOLUME, "configMap": { "name": settings.platform_ca.as_str(),
                "items": [{ "key": PLATFORM_CA_KEY, "path": PLATFORM_CA_KEY }] } }),
    )?;
    Ok(Outcome::Injected { service: service.to_string() })
}

/// The pod's TCP ports, in order, each once.
fn container_ports(containers: &[Value]) -> Vec<u16> {
    let ports: BTreeSet<u16> = containers
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter(|p| p["protocol"].as_str().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| p["containerPort"].as_u64().and_then(|n| u16::try_from(n).ok()))
        .filter(|&p| p > 0)
        .collect();
    ports.into_iter().collect()
}

fn append(pod: &mut Value, list: &str, item: Value) -> anyhow::Result<()> {
    match &mut pod[list] {
        Value::Null => pod[list] = json!([item]),
        Value::Array(items) => items.push(item),
        _ => bail!("spec.{list} is not a list"),
    }
    Ok(())
}

fn resources() -> Value {
    json!({ "requests": { "cpu": "50m", "memory": "64Mi" }, "limits": { "memory": "256Mi" } })
}

fn sidecar(
    settings: &Settings,
    service: &ResourceName,
    ports: &[u16],
    tags: Option<&str>,
    token_secret: &str,
) -> Value {
    let value = |name: &str, value: &str| json!({ "name": name, "value": value });
    let mut env = vec![
        value("TRELLIS_SERVER", &settings.server),
        value("TRELLIS_MESH", settings.mesh.as_str()),
        value("TRELLIS_SERVICE", service.as_str()),
        json!({ "name": "TRELLIS_ADDRESS", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }),
        json!({ "name": "TRELLIS_JOIN_TOKEN", "valueFrom": { "secretKeyRef": { "name": token_secret, "key": TOKEN_KEY } } }),
        value("TRELLIS_PLATFORM_CA", &format!("{PLATFORM_CA_DIR}/{PLATFORM_CA_KEY}")),
        value("TRELLIS_CERT_DIR", DEFAULT_CERT_DIR),
    ];
    if !ports.is_empty() {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        env.push(value("TRELLIS_PORTS", &list.join(",")));
    }
    if let Some(tags) = tags {
        env.push(value("TRELLIS_TAGS", tags));
    }
    json!({
        "name": AGENT_CONTAINER,
        "image": settings.image,
        "args": ["run", "--transparent", "--readiness-addr", format!("0.0.0.0:{READINESS_PORT}")],
        "env": env,
        "ports": [{ "name": READINESS_PORT_NAME, "containerPort": READINESS_PORT, "protocol": "TCP" }],
        // Ready once it holds an SVID and an accepted configuration: until then the pod
        // gets no traffic it could not carry.
        "readinessProbe": {
            "httpGet": { "path": "/ready", "port": READINESS_PORT_NAME },
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": resources(),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": [
            { "name": CERTS_VOLUME, "mountPath": DEFAULT_CERT_DIR },
            { "name": PLATFORM_CA_VOLUME, "mountPath": PLATFORM_CA_DIR, "readOnly": true },
        ],
    })
}

/// `trellis-agent init`: root with NET_ADMIN and NET_RAW, for the iptables rules only.
fn init_container(settings: &Settings) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": settings.image,
        "args": [
            "init",
            "--inbound-capture-port", INBOUND_CAPTURE_PORT.to_string(),
            "--outbound-capture-port", OUTBOUND_CAPTURE_PORT.to_string(),
            "--proxy-uid", PROXY_UID.to_string(),
            "--exclude-inbound-ports", format!("{ADMIN_PORT},{READINESS_PORT}"),
        ],
        "resources": resources(),
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
        },
    })
}
