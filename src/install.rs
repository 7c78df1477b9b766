//! `trellis install`: what an operator applies to run Trellis — Kubernetes manifests and a
//! systemd unit. Pure text from flags: the same flags print the same bytes.
//!
//! Both run `trellis serve` with the KEK and the database URL from a secret store (a
//! Kubernetes Secret; systemd credentials and a root-only environment file), listening on all
//! addresses, and writing nothing to disk: with `TRELLIS_KEK`/`TRELLIS_KEK_FILE` and
//! `TRELLIS_DATABASE_URL` set, the data directory is never used.

use serde_json::{Value, json};

use crate::config::{AgentSystemdInstall, HTTP_PORT, KubernetesInstall, SystemdInstall, XDS_PORT};

/// The user and group the image runs as (deploy/trellis.Containerfile's `USER`): a numeric
/// id, so that Kubernetes can check `runAsNonRoot` without reading the image.
pub const IMAGE_UID: u32 = 65532;

/// The keys of the Secret the Kubernetes manifests read.
const SECRET_DATABASE_URL: &str = "database-url";
const SECRET_KEK: &str = "kek";
const SECRET_APP_PASSWORD: &str = "app-database-password";

/// The control plane's manifests, as multi-document YAML.
pub fn kubernetes(args: &KubernetesInstall) -> anyhow::Result<String> {
    let ns = args.namespace.as_str();
    let version = env!("CARGO_PKG_VERSION");
    let selector =
        json!({ "app.kubernetes.io/name": "trellis", "app.kubernetes.io/component": "control-plane" });
    let labels = json!({
        "app.kubernetes.io/name": "trellis",
        "app.kubernetes.io/component": "control-plane",
        "app.kubernetes.io/version": version,
    });
    let meta = |name: &str| json!({ "name": name, "namespace": ns, "labels": labels });
    let secret_env = |var: &str, key: &str, optional: bool| json!({ "name": var, "valueFrom": { "secretKeyRef": { "name": args.secret.as_str(), "key": key, "optional": optional } } });
    let pod_security = json!({
        "runAsNonRoot": true,
        "runAsUser": IMAGE_UID,
        "runAsGroup": IMAGE_UID,
        "seccompProfile": { "type": "RuntimeDefault" },
    });
    let container_security = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "privileged": false,
        "capabilities": { "drop": ["ALL"] },
    });
    let resources = json!({
        "requests": { "cpu": "100m", "memory": "128Mi" },
        "limits": { "memory": "512Mi" },
    });
    // The Service name, in every form a workload may dial, for the TLS port's certificate.
    let server_names = format!("trellis.{ns}.svc,trellis.{ns}.svc.cluster.local,trellis.{ns},trellis");

    let mut docs: Vec<Value> = vec![
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns, "labels": labels } }),
        // Trellis never calls the Kubernetes API: no token is mounted.
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("trellis"),
                "automountServiceAccountToken": false }),
    ];
    // A Job's template cannot change, so each version migrates under a name of its own.
    // `trellis serve` migrates at start as well; the Job makes a failed migration visible.
    docs.push(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(&format!("trellis-migrate-{}", version.replace(['.', '+'], "-"))),
        "spec": {
            "backoffLimit": 4,
            "template": {
                "metadata": { "labels": { "app.kubernetes.io/name": "trellis", "app.kubernetes.io/component": "migrate" } },
                "spec": {
                    "serviceAccountName": "trellis",
                    "automountServiceAccountToken": false,
                    "restartPolicy": "OnFailure",
                    "securityContext": pod_security,
                    "containers": [{
                        "name": "migrate",
                        "image": args.image,
                        "args": ["migrate"],
                        "env": [
                            secret_env("TRELLIS_DATABASE_URL", SECRET_DATABASE_URL, false),
                            { "name": "TRELLIS_LOG_FORMAT", "value": "json" },
                        ],
                        "resources": resources,
                        "securityContext": container_security,
                    }],
                },
            },
        },
    }));
    docs.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta("trellis"),
        "spec": {
            "replicas": args.replicas,
            "selector": { "matchLabels": selector },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "serviceAccountName": "trellis",
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security,
                    "terminationGracePeriodSeconds": 30,
                    // Replicas on different nodes when there are any, so one node's loss
                    // leaves the mesh a control plane.
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": { "matchLabels": selector },
                    }],
                    "containers": [{
                        "name": "trellis",
                        "image": args.image,
                        "args": ["serve"],
                        "ports": [
                            { "name": "http", "containerPort": HTTP_PORT, "protocol": "TCP" },
                            { "name": "xds", "containerPort": XDS_PORT, "protocol": "TCP" },
                        ],
                        "env": [
                            secret_env("TRELLIS_DATABASE_URL", SECRET_DATABASE_URL, false),
                            secret_env("TRELLIS_APP_DATABASE_PASSWORD", SECRET_APP_PASSWORD, true),
                            secret_env("TRELLIS_KEK", SECRET_KEK, false),
                            { "name": "TRELLIS_HTTP_ADDR", "value": format!("0.0.0.0:{HTTP_PORT}") },
                            { "name": "TRELLIS_XDS_ADDR", "value": format!("0.0.0.0:{XDS_PORT}") },
                            { "name": "TRELLIS_XDS_SERVER_NAMES", "value": server_names },
                            { "name": "TRELLIS_LOG_FORMAT", "value": "json" },
                        ],
                        // Liveness never touches the database (a database outage must not
                        // restart healthy replicas); readiness does.
                        "livenessProbe": {
                            "httpGet": { "path": "/healthz", "port": "http" },
                            "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3,
                        },
                        "readinessProbe": {
                            "httpGet": { "path": "/readyz", "port": "http" },
                            "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2,
                        },
                        // Start-up migrates; give it a minute before liveness counts.
                        "startupProbe": {
                            "httpGet": { "path": "/healthz", "port": "http" },
                            "periodSeconds": 2, "failureThreshold": 30,
                        },
                        "resources": resources,
                        "securityContext": container_security,
                    }],
                },
            },
        },
    }));
    docs.push(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta("trellis"),
        "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector } },
    }));
    docs.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta("trellis"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                { "name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http" },
                { "name": "xds", "port": XDS_PORT, "targetPort": "xds", "protocol": "TCP" },
            ],
        },
    }));

    let mut out = format!(
        "# Trellis {version} control plane, printed by `trellis install kubernetes`.\n\
         # Before applying, create the Secret {secret:?} in namespace {ns:?} with the keys\n\
         # {SECRET_DATABASE_URL:?} (the schema owner's postgres:// URL), {SECRET_KEK:?} (`<id>:<base64 of 32 bytes>`)\n\
         # and, if trellis_app has a password, {SECRET_APP_PASSWORD:?}.\n",
        secret = args.secret.as_str(),
    );
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(doc)?);
    }
    Ok(out)
}

/// A hardened unit for `trellis serve`. The KEK comes as a systemd credential (never in the
/// environment); the database URL from an environment file that only root reads.
pub fn systemd(args: &SystemdInstall) -> String {
    unit_file(
        &[
            format!(
                "Trellis {} control plane, printed by `trellis install systemd`.",
                env!("CARGO_PKG_VERSION")
            ),
            format!(
                "Put the KEK file (`<id> <base64>` per line) at {} and `TRELLIS_DATABASE_URL=postgres://…`",
                args.kek_source.display()
            ),
            format!("in {}, both owned by root with mode 0600.", args.environment_file.display()),
        ],
        "Trellis service-mesh control plane",
        "network-online.target postgresql.service",
        &[
            format!("ExecStart={} serve", args.binary.display()),
            "Restart=on-failure".into(),
            "RestartSec=2s".into(),
            "TimeoutStopSec=30s".into(),
            "# A user of its own, made for the service; its state directory is /var/lib/trellis.".into(),
            "DynamicUser=yes".into(),
            "StateDirectory=trellis".into(),
            "StateDirectoryMode=0700".into(),
            "Environment=TRELLIS_DATA_DIR=%S/trellis".into(),
            "# The KEK is read from the credentials directory, which only this service can see.".into(),
            format!("LoadCredential=kek:{}", args.kek_source.display()),
            "Environment=TRELLIS_KEK_FILE=%d/kek".into(),
            format!("Environment=TRELLIS_HTTP_ADDR=0.0.0.0:{HTTP_PORT}"),
            format!("Environment=TRELLIS_XDS_ADDR=0.0.0.0:{XDS_PORT}"),
            "Environment=TRELLIS_LOG_FORMAT=json".into(),
            "# Settings in this file override the ones above.".into(),
            format!("EnvironmentFile={}", args.environment_file.display()),
        ],
    )
}

/// A hardened unit for `trellis-agent run` beside a workload. The join token comes as a
/// systemd credential; the SVID and the last accepted configuration are kept in the state
/// directory, so that a restarted agent serves while the control plane is away.
pub fn agent_systemd(args: &AgentSystemdInstall) -> String {
    unit_file(
        &[
            format!(
                "Trellis {} agent, printed by `trellis install agent-systemd`.",
                env!("CARGO_PKG_VERSION")
            ),
            format!(
                "Put the join token at {} (root, mode 0600), the platform root at {},",
                args.join_token_source.display(),
                args.platform_ca.display()
            ),
            format!(
                "and the workload's settings in {} (TRELLIS_SERVER=…, TRELLIS_MESH=…, TRELLIS_SERVICE=…, TRELLIS_PORTS=…).",
                args.environment_file.display()
            ),
        ],
        "Trellis agent: the workload's service-mesh data plane",
        "network-online.target",
        &[
            format!("ExecStart={} run", args.binary.display()),
            "# The mesh is down for the workload while the agent is: restart it whatever ended it.".into(),
            "Restart=always".into(),
            "RestartSec=1s".into(),
            "TimeoutStopSec=30s".into(),
            "DynamicUser=yes".into(),
            "StateDirectory=trellis-agent".into(),
            "StateDirectoryMode=0700".into(),
            "Environment=TRELLIS_CERT_DIR=%S/trellis-agent".into(),
            format!("LoadCredential=join-token:{}", args.join_token_source.display()),
            "Environment=TRELLIS_JOIN_TOKEN_FILE=%d/join-token".into(),
            format!("Environment=TRELLIS_PLATFORM_CA={}", args.platform_ca.display()),
            "# Settings in this file override the ones above.".into(),
            format!("EnvironmentFile={}", args.environment_file.display()),
        ],
    )
}

/// A unit file: the comments, `[Unit]`, `[Service]` with the settings and [`HARDENING`], and
/// `[Install]`.
fn unit_file(comments: &[String], description: &str, after: &str, service: &[String]) -> String {
    let mut unit: Vec<String> = comments.iter().map(|c| format!("# {c}")).collect();
    unit.extend([
        "[Unit]".into(),
        format!("Description={description}"),
        "Wants=network-online.target".into(),
        format!("After={after}"),
        String::new(),
        "[Service]".into(),
        "Type=exec".into(),
    ]);
    unit.extend(service.iter().cloned());
    unit.extend(HARDENING.iter().map(|s| (*s).to_owned()));
    unit.extend([String::new(), "[Install]".into(), "WantedBy=multi-user.target".into(), String::new()]);
    unit.join("\n")
}

/// What the service may not do: it needs only its state directory, TCP and Unix sockets,
/// and ordinary system calls.
const HARDENING: &[&str] = &[
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "UMask=0077",
    "LimitNOFILE=65536",
];
