//! Command-line and environment configuration: one clap struct, documented defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

/// Default port of the REST API, console and operational endpoints.
pub const HTTP_PORT: u16 = 8080;
/// Default port of the TLS port (xDS and the identity service).
pub const XDS_PORT: u16 = 15012;

/// Trellis: a hosted, multi-tenant service-mesh control plane.
///
/// With no database configured, Trellis uses the PostgreSQL on 127.0.0.1:5432 when one
/// answers, and otherwise runs a private PostgreSQL in its data directory.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about, long_about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// `trellis [flags]` is `trellis serve [flags]`.
    #[command(flatten)]
    pub serve: Serve,
    #[command(subcommand)]
    pub command: Option<Command>,
}

// Parsed once per process: the size of `Serve` costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (the default).
    Serve(Serve),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create or update every resource in YAML/JSON files (client of the REST API).
    Apply(crate::cli::Apply),
    /// Show meshes or mesh resources (client of the REST API).
    Get(crate::cli::Get),
    /// Delete a mesh or a mesh resource (client of the REST API).
    Delete(crate::cli::Delete),
    /// Search a mesh's access log: denied, failed and sampled calls, newest first.
    Logs(Logs),
    /// Why a logged call was denied (or let through), in one paragraph.
    Why(Why),
    /// What saving an AccessPolicy would deny or newly allow among the recorded calls.
    Impact(Impact),
    /// Unexpected traffic in a mesh (new callers, denied bursts, rate and error-rate jumps),
    /// or with `--draft ID`, the AccessPolicy that settles one, as YAML for `apply -f`.
    Events(Events),
    /// Print the OpenAPI document of the REST API.
    Openapi,
    /// Key-encryption keys: `trellis kek rotate` makes a new current KEK and re-wraps every
    /// sealed CA key under it.
    #[command(subcommand)]
    Kek(KekCommand),
    /// Operator bootstrap: create an organization (if needed) and an API token for it,
    /// printed once. For the first token of an installation; later ones come from the API.
    CreateToken(CreateToken),
    /// Print what installs Trellis: Kubernetes manifests or a systemd unit (no database).
    #[command(subcommand)]
    Install(InstallTarget),
    /// Add trellis-agent to the pods of workload manifests (Deployment, StatefulSet,
    /// DaemonSet, Pod; other kinds pass unchanged), for `… | kubectl apply -f -`.
    Inject(Inject),
    /// Run a demo mesh on this machine: the control plane, the book shop's applications each
    /// behind its own trellis-agent, and steady traffic. Ctrl-C stops everything it started.
    Demo(Demo),
    /// One of `trellis demo`'s applications (started by the demo, not by hand).
    #[command(hide = true)]
    DemoApp(DemoApp),
}

impl Command {
    /// Whether this is a client of the REST API (or prints a document), needing no database.
    pub fn is_client(&self) -> bool {
        matches!(
            self,
            Command::Apply(_)
                | Command::Get(_)
                | Command::Delete(_)
                | Command::Logs(_)
                | Command::Why(_)
                | Command::Impact(_)
                | Command::Events(_)
                | Command::Openapi
                | Command::Install(_)
                | Command::Inject(_)
                | Command::Demo(_)
                | Command::DemoApp(_)
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum KekCommand {
    /// Add a new current KEK to the KEK file (keeping the old ones to unseal) and re-wrap every
    /// CA key under it. Restart the other replicas afterwards so that they load the new key.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum InstallTarget {
    /// Print the control plane's Kubernetes manifests as multi-document YAML, for
    /// `kubectl apply -f -`. They read the database URL and the KEK from a Secret.
    Kubernetes(KubernetesInstall),
    /// Print a hardened systemd unit that runs `trellis serve`.
    Systemd(SystemdInstall),
    /// Print a hardened systemd unit that runs `trellis-agent run` beside a workload on a VM.
    AgentSystemd(AgentSystemdInstall),
}

/// The image `trellis install kubernetes` refers to unless told otherwise: what
/// deploy/trellis.Containerfile's build command tags.
pub const DEFAULT_IMAGE: &str = concat!("trellis:", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Args)]
pub struct KubernetesInstall {
    /// Image of the `trellis` binary (built from deploy/trellis.Containerfile).
    #[arg(long, default_value = DEFAULT_IMAGE, value_parser = parse_image)]
    pub image: String,
    /// Namespace to install into (the manifests create it).
    #[arg(long, default_value = "trellis", value_parser = parse_kube_name)]
    pub namespace: trellis_model::KubeName,
    /// Replicas of the control plane.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub replicas: u16,
    /// Secret in that namespace with the keys `database-url`, `kek` and, when the database
    /// asks for one, `app-database-password`.
    #[arg(long, default_value = "trellis", value_parser = parse_kube_name)]
    pub secret: trellis_model::KubeName,
}

/// The agent image `trellis inject` refers to unless told otherwise: what
/// deploy/trellis-agent.Containerfile's build command tags.
pub const DEFAULT_AGENT_IMAGE: &str = concat!("trellis-agent:", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Args)]
pub struct Inject {
    /// Files of YAML or JSON manifests, several documents each (`-`: stdin) [default: stdin].
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Image of `trellis-agent` (built from deploy/trellis-agent.Containerfile), for the
    /// sidecar and the init container.
    #[arg(long, default_value = DEFAULT_AGENT_IMAGE, value_parser = parse_image)]
    pub agent_image: String,
    /// The mesh the workloads join.
    #[arg(long, value_parser = parse_mesh)]
    pub mesh: trellis_model::MeshName,
    /// The control plane's TLS port, `host:port` [default: the Service of `trellis install
    /// kubernetes`].
    #[arg(long, default_value_t = format!("trellis.trellis.svc:{XDS_PORT}"), value_parser = parse_host_port)]
    pub server: String,
    /// The mesh service of every workload [default: each pod's `app` label, else the workload's name].
    #[arg(long, value_parser = parse_resource_name)]
    pub service: Option<trellis_model::ResourceName>,
    /// The service ports, comma-separated [default: each pod's TCP containerPorts].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Option<Vec<u16>>,
    /// Secret in the workload's namespace with the join token under the key `token`
    /// [default: `trellis-join-<service>`: a join token is bound to one service].
    #[arg(long, value_parser = parse_kube_name)]
    pub token_secret: Option<trellis_model::KubeName>,
    /// ConfigMap in the workload's namespace with the platform root under the key `ca.pem`.
    #[arg(long, default_value = trellis_model::contract::kubernetes::PLATFORM_CA_CONFIGMAP, value_parser = parse_kube_name)]
    pub platform_ca_configmap: trellis_model::KubeName,
}

#[derive(Debug, Args)]
pub struct SystemdInstall {
    /// Where the `trellis` binary is installed.
    #[arg(long, default_value = "/usr/local/bin/trellis", value_parser = parse_absolute_path)]
    pub binary: PathBuf,
    /// KEK file that systemd hands to the service as its credential `kek` (the KEK file
    /// format: `<id> <base64>` per line, current first), readable by root only.
    #[arg(long, default_value = "/etc/trellis/kek", value_parser = parse_absolute_path)]
    pub kek_source: PathBuf,
    /// Environment file with `TRELLIS_DATABASE_URL=…` (and any other setting), readable by
    /// root only: systemd reads it before dropping privileges.
    #[arg(long, default_value = "/etc/trellis/trellis.env", value_parser = parse_absolute_path)]
    pub environment_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct DemoApp {
    /// Which application to be.
    #[arg(value_enum)]
    pub role: DemoRole,
    /// Where to listen.
    #[arg(long, default_value_t = default_listen())]
    pub listen: SocketAddr,
    /// The version it reports (`reviews` v1 has no stars, later versions ask `ratings`).
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Where `reviews` is, e.g. `http://reviews.shop:9080` (productpage calls it).
    #[arg(long)]
    pub reviews: Option<url::Url>,
    /// Where `ratings` is (reviews v2 and later call its gRPC method `trellis.demo.Ratings/Get`).
    #[arg(long)]
    pub ratings: Option<url::Url>,
    /// Where `details` is (productpage calls it for `/details`).
    #[arg(long)]
    pub details: Option<url::Url>,
    /// The HTTP proxy its calls go through: its agent's explicit mode.
    #[arg(long)]
    pub proxy: Option<url::Url>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DemoRole {
    Productpage,
    Reviews,
    Ratings,
    Details,
}

impl DemoRole {
    pub fn name(self) -> &'static str {
        match self {
            DemoRole::Productpage => "productpage",
            DemoRole::Reviews => "reviews",
            DemoRole::Ratings => "ratings",
            DemoRole::Details => "details",
        }
    }
}

#[derive(Debug, Args)]
pub struct Demo {
    /// Address of the demo control plane's REST API and console.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], HTTP_PORT)))]
    pub http_addr: SocketAddr,
    /// Address of its TLS port (xDS and identity), which the agents dial.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], XDS_PORT)))]
    pub xds_addr: SocketAddr,
    /// Organization the demo mesh is created in (the local admin's, who the login link signs in).
    #[arg(long, default_value = "default", value_parser = parse_slug)]
    pub org: trellis_model::OrgSlug,
    /// First of the ports the demo uses on 127.0.0.1: one per application, then one per
    /// agent's HTTP proxy (ten in all).
    #[arg(long, default_value_t = 19080)]
    pub app_port: u16,
    /// Calls per second the traffic generator makes to productpage.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// The trellis-agent binary [default: beside this `trellis`].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Working directory for certificates, join tokens and logs, cleared at start
    /// [default: <temp dir>/trellis-demo].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentSystemdInstall {
    /// Where the `trellis-agent` binary is installed.
    #[arg(long, default_value = "/usr/local/bin/trellis-agent", value_parser = parse_absolute_path)]
    pub binary: PathBuf,
    /// The join token's file, readable by root only; systemd hands it to the agent as its
    /// credential `join-token` (needed until the agent holds an SVID).
    #[arg(long, default_value = "/etc/trellis-agent/join-token", value_parser = parse_absolute_path)]
    pub join_token_source: PathBuf,
    /// The control plane's platform root (`…/bootstrap/ca.pem` of the REST API).
    #[arg(long, default_value = "/etc/trellis-agent/platform-ca.pem", value_parser = parse_absolute_path)]
    pub platform_ca: PathBuf,
    /// Environment file with the workload's settings (`TRELLIS_SERVER`, `TRELLIS_MESH`,
    /// `TRELLIS_SERVICE`, `TRELLIS_PORTS`, …; see `trellis-agent run --help`).
    #[arg(long, default_value = "/etc/trellis-agent/agent.env", value_parser = parse_absolute_path)]
    pub environment_file: PathBuf,
}

/// `trellis logs`.
#[derive(Debug, Args)]
pub struct Logs {
    /// Mesh whose access log to search.
    pub mesh: String,
    /// Calls to or from this service only.
    #[arg(long)]
    pub service: Option<String>,
    /// Denied calls only.
    #[arg(long)]
    pub denied: bool,
    /// HTTP status, e.g. 503.
    #[arg(long)]
    pub status: Option<u16>,
    /// How far back: 30s, 10m, 2h.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub since: std::time::Duration,
    /// Most entries shown, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=5000))]
    pub limit: u16,
    #[command(flatten)]
    pub client: crate::cli::ClientArgs,
}

/// `trellis why`.
#[derive(Debug, Args)]
pub struct Why {
    /// Mesh of the entry.
    pub mesh: String,
    /// The access-log entry's id (the ID column of `trellis logs`).
    pub entry: String,
    #[command(flatten)]
    pub client: crate::cli::ClientArgs,
}

/// `trellis impact`.
#[derive(Debug, Args)]
pub struct Impact {
    /// Mesh the policy would be saved in.
    pub mesh: String,
    /// The AccessPolicy document (YAML or JSON; `-` for stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Recorded calls of how long back: 10m, 1h, 1d is `24h`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub window: std::time::Duration,
    /// Most edges listed (all are counted).
    #[arg(long, default_value_t = 20)]
    pub edges: usize,
    #[command(flatten)]
    pub client: crate::cli::ClientArgs,
}

/// `trellis events`.
#[derive(Debug, Args)]
pub struct Events {
    /// Mesh whose events to list.
    pub mesh: String,
    /// Events whose caller or destination is this service.
    #[arg(long)]
    pub service: Option<String>,
    /// One kind: new-caller, denied-burst, rate-jump, error-rate-jump.
    #[arg(long)]
    pub kind: Option<String>,
    /// How far back: 30m, 2h, 168h.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub since: std::time::Duration,
    /// Most events shown, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=5000))]
    pub limit: u16,
    /// Print the AccessPolicy that settles this event (the ID column) as YAML for
    /// `trellis apply -f`, instead of the list.
    #[arg(long, value_name = "ID", conflicts_with_all = ["service", "kind"])]
    pub draft: Option<String>,
    #[command(flatten)]
    pub client: crate::cli::ClientArgs,
}

#[derive(Debug, Args)]
pub struct CreateToken {
    /// Organization slug; the organization is created when it does not exist.
    #[arg(long, required_unless_present = "local_admin", conflicts_with = "local_admin")]
    pub org: Option<String>,
    /// A token of the local admin's organization (no-IdP mode), made as its first login would
    /// make it, under `--local-org`: the console's one-time link then shows what the token
    /// creates.
    #[arg(long)]
    pub local_admin: bool,
    /// With `--local-admin`: the slug of the organization the local admin creates, as for
    /// `trellis serve`.
    #[arg(long, env = "TRELLIS_LOCAL_ORG", default_value = "default", value_parser = parse_slug)]
    pub local_org: trellis_model::OrgSlug,
    /// Display name for a new organization [default: the slug].
    #[arg(long)]
    pub org_name: Option<String>,
    /// Role of the token.
    #[arg(long, default_value = "owner")]
    pub role: trellis_model::Role,
    /// Name of the token, shown in token lists.
    #[arg(long, default_value = "bootstrap")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct Global {
    /// PostgreSQL URL of the schema owner, used for migrations; the server itself connects
    /// as the role `trellis_app` on the same database. Unset: the embedded default.
    #[arg(long, env = "TRELLIS_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<SecretString>,

    /// Alternative name for `--database-url`, the common convention.
    #[arg(
        long = "database-url-fallback",
        env = "DATABASE_URL",
        hide = true,
        global = true,
        hide_env_values = true
    )]
    pub database_url_fallback: Option<SecretString>,

    /// Password of the `trellis_app` role, when the database asks for one.
    #[arg(long, env = "TRELLIS_APP_DATABASE_PASSWORD", global = true, hide_env_values = true)]
    pub app_database_password: Option<SecretString>,

    /// Where Trellis keeps local state (the private PostgreSQL, generated keys).
    /// [default: $XDG_DATA_HOME/trellis or ~/.local/share/trellis]
    #[arg(long, env = "TRELLIS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// The key-encryption key that seals CA private keys, as `<id>:<base64 of 32 bytes>` (or
    /// bare base64). When unset, the KEK file is used.
    #[arg(long, env = "TRELLIS_KEK", global = true, hide_env_values = true)]
    pub kek: Option<SecretString>,

    /// File of key-encryption keys (`<id> <base64>` per line, current first); created with a
    /// new key on first start [default: <data dir>/kek].
    #[arg(long, env = "TRELLIS_KEK_FILE", global = true)]
    pub kek_file: Option<PathBuf>,

    /// Which PostgreSQL the embedded default uses when no database URL is set.
    #[arg(long, env = "TRELLIS_EMBEDDED_POSTGRES", value_enum, default_value_t = EmbeddedMode::Auto, global = true)]
    pub embedded_postgres: EmbeddedMode,

    /// Address probed for a local PostgreSQL by the embedded default.
    #[arg(long, env = "TRELLIS_EMBEDDED_POSTGRES_ADDR", default_value = "127.0.0.1:5432", global = true)]
    pub embedded_postgres_addr: SocketAddr,

    /// Superuser the embedded default uses to create the database and roles.
    #[arg(long, env = "TRELLIS_EMBEDDED_POSTGRES_USER", default_value = "postgres", global = true)]
    pub embedded_postgres_user: String,

    /// Database the embedded default creates and uses.
    #[arg(long, env = "TRELLIS_EMBEDDED_DATABASE", default_value = "trellis", global = true)]
    pub embedded_database: String,

    /// Directory with PostgreSQL's `initdb` and `pg_ctl`, for the private instance.
    /// [default: from $PATH, else the newest /usr/lib/postgresql/<version>/bin]
    #[arg(long, env = "TRELLIS_POSTGRES_BIN_DIR", global = true)]
    pub postgres_bin_dir: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "TRELLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, env = "TRELLIS_LOG", default_value = "info", global = true)]
    pub log: String,
}

impl Global {
    /// These settings as the environment of a child `trellis` process (`trellis demo` starts
    /// its control plane so), whether they came from flags or the environment.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        use secrecy::ExposeSecret;
        let name = |v: clap::builder::PossibleValue| v.get_name().to_owned();
        let mut env = vec![
            (
                "TRELLIS_EMBEDDED_POSTGRES",
                name(self.embedded_postgres.to_possible_value().expect("no skipped variant")),
            ),
            ("TRELLIS_EMBEDDED_POSTGRES_ADDR", self.embedded_postgres_addr.to_string()),
            ("TRELLIS_EMBEDDED_POSTGRES_USER", self.embedded_postgres_user.clone()),
            ("TRELLIS_EMBEDDED_DATABASE", self.embedded_database.clone()),
            ("TRELLIS_LOG_FORMAT", name(self.log_format.to_possible_value().expect("no skipped variant"))),
            ("TRELLIS_LOG", self.log.clone()),
        ];
        let secrets = [
            ("TRELLIS_DATABASE_URL", self.database_url.as_ref().or(self.database_url_fallback.as_ref())),
            ("TRELLIS_APP_DATABASE_PASSWORD", self.app_database_password.as_ref()),
            ("TRELLIS_KEK", self.kek.as_ref()),
        ];
        env.extend(secrets.into_iter().filter_map(|(k, v)| Some((k, v?.expose_secret().to_owned()))));
        let paths = [
            ("TRELLIS_DATA_DIR", &self.data_dir),
            ("TRELLIS_KEK_FILE", &self.kek_file),
            ("TRELLIS_POSTGRES_BIN_DIR", &self.postgres_bin_dir),
        ];
        env.extend(paths.into_iter().filter_map(|(k, v)| Some((k, v.as_ref()?.display().to_string()))));
        env
    }
}

#[derive(Debug, Args)]
pub struct Serve {
    /// Address of the REST API, console, /healthz, /readyz and /metrics.
    #[arg(long, env = "TRELLIS_HTTP_ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], HTTP_PORT)))]
    pub http_addr: SocketAddr,

    /// Largest number of pooled database connections.
    #[arg(long, env = "TRELLIS_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "TRELLIS_BODY_LIMIT", default_value_t = trellis_api::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,

    /// Longest a request may take to be answered (then 503); its body must arrive within half
    /// of it (then 408).
    #[arg(long, env = "TRELLIS_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: std::time::Duration,

    /// How long to let in-flight requests finish on shutdown.
    #[arg(long, env = "TRELLIS_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long a dataplane whose stream was cut off stays in the endpoints before the leader
    /// removes it (one whose proxy ended the stream itself, leaving, goes at once).
    #[arg(long, env = "TRELLIS_DATAPLANE_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub dataplane_grace: Duration,

    /// How long the audit trail of a deleted organization is kept (readable by no API caller)
    /// before the leader deletes it.
    #[arg(long, env = "TRELLIS_DELETED_ORG_AUDIT_RETENTION", default_value = "2160h", value_parser = parse_duration)]
    pub deleted_org_audit_retention: Duration,

    /// How long telemetry's 10 s buckets are kept (whole partitions of an hour are dropped).
    #[arg(long, env = "TRELLIS_TELEMETRY_RETENTION_10S", default_value = "6h", value_parser = parse_duration)]
    pub telemetry_retention_10s: Duration,

    /// How long telemetry's 1 min rollups are kept (partitions of a day).
    #[arg(long, env = "TRELLIS_TELEMETRY_RETENTION_1M", default_value = "48h", value_parser = parse_duration)]
    pub telemetry_retention_1m: Duration,

    /// How long telemetry's 1 h rollups are kept (partitions of 30 days).
    #[arg(long, env = "TRELLIS_TELEMETRY_RETENTION_1H", default_value = "2160h", value_parser = parse_duration)]
    pub telemetry_retention_1h: Duration,

    /// How long access-log entries are kept (partitions of a day).
    #[arg(long, env = "TRELLIS_ACCESS_LOG_RETENTION", default_value = "168h", value_parser = parse_duration)]
    pub access_log_retention: Duration,

    /// Most telemetry items (metric families and access-log entries) one organization may
    /// send per second, to one replica; the excess is dropped
    /// and counted.
    #[arg(long, env = "TRELLIS_TELEMETRY_INGEST_RATE", default_value_t = 20_000)]
    pub telemetry_ingest_rate: u32,

    /// Most distinct edge series (mesh, source, destination, subset, route, response class)
    /// one organization may add to one 10 s telemetry bucket through one replica: the
    /// cardinality budget. A new series past it is dropped and counted; a known one is kept.
    #[arg(long, env = "TRELLIS_TELEMETRY_SERIES_BUDGET", default_value_t = 10_000)]
    pub telemetry_series_budget: usize,

    /// Most access-log entries one organization may store per 10 s bucket through one
    /// replica; the excess is dropped and counted.
    #[arg(long, env = "TRELLIS_TELEMETRY_LOG_BUDGET", default_value_t = 5_000)]
    pub telemetry_log_budget: usize,

    /// How often the change feed compares every mesh head, notification or not.
    #[arg(long, env = "TRELLIS_RECONCILE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// Where browsers reach Trellis (the OIDC redirect URI is <public-url>/auth/callback).
    /// [default: http://<http-addr>]
    #[arg(long, env = "TRELLIS_PUBLIC_URL")]
    pub public_url: Option<url::Url>,

    /// OpenID Connect issuer URL (https). Unset: the no-IdP mode, in which `trellis serve`
    /// prints a one-time login link for a local admin.
    #[arg(long, env = "TRELLIS_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,

    /// OpenID Connect client id registered at the issuer.
    #[arg(long, env = "TRELLIS_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,

    /// OpenID Connect client secret (confidential clients).
    #[arg(long, env = "TRELLIS_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<SecretString>,

    /// Scopes requested at login, space-separated.
    #[arg(long, env = "TRELLIS_OIDC_SCOPES", default_value = "openid email profile")]
    pub oidc_scopes: String,

    /// Development only: accept an http:// issuer on a loopback address.
    #[arg(long, env = "TRELLIS_OIDC_ALLOW_INSECURE_LOOPBACK")]
    pub oidc_allow_insecure_loopback: bool,

    /// A console session ends after this long without a request.
    #[arg(long, env = "TRELLIS_SESSION_IDLE_TIMEOUT", default_value = "8h", value_parser = parse_duration)]
    pub session_idle_timeout: Duration,

    /// A console session ends this long after login, active or not.
    #[arg(long, env = "TRELLIS_SESSION_LIFETIME", default_value = "168h", value_parser = parse_duration)]
    pub session_lifetime: Duration,

    /// No-IdP mode: how long the printed one-time login link stays valid.
    #[arg(long, env = "TRELLIS_LOCAL_LOGIN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub local_login_ttl: Duration,

    /// No-IdP mode: the slug of the organization the local admin's first login creates (it is
    /// bound by id from then on).
    #[arg(long, env = "TRELLIS_LOCAL_ORG", default_value = "default", value_parser = parse_slug)]
    pub local_org: trellis_model::OrgSlug,

    /// Address of the TLS port: xDS (ADS) and the workload identity service (gRPC).
    #[arg(long, env = "TRELLIS_XDS_ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], XDS_PORT)))]
    pub xds_addr: SocketAddr,

    /// DNS names in the TLS port's server certificate (comma-separated), besides its IP.
    #[arg(long, env = "TRELLIS_XDS_SERVER_NAMES", default_value = "localhost", value_delimiter = ',')]
    pub xds_server_names: Vec<String>,

    /// An xDS stream that does not take a response within this long is closed.
    #[arg(long, env = "TRELLIS_XDS_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub xds_send_timeout: Duration,

    /// Changes to one mesh closer together than this are pushed once.
    #[arg(long, env = "TRELLIS_XDS_DEBOUNCE", default_value = "20ms", value_parser = parse_duration)]
    pub xds_debounce: Duration,

    /// A CA with fewer days of validity left is refused for activation or upload.
    #[arg(long, env = "TRELLIS_CA_MIN_DAYS", default_value_t = 30)]
    pub ca_min_days: u32,

    /// Every SVID this installation signs lives this long (10s to 7 days), whatever its
    /// mesh's setting: to watch renewals happen in a demonstration or a test.
    #[arg(long, env = "TRELLIS_SVID_TTL_OVERRIDE", hide = true, value_parser = parse_svid_ttl_override)]
    pub svid_ttl_override: Option<trellis_model::SvidTtl>,

    /// How often the `trellis_ca_days_to_expiry` gauges are read from the database (a scrape
    /// never touches it).
    #[arg(long, env = "TRELLIS_CA_EXPIRY_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub ca_expiry_refresh: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmbeddedMode {
    /// Use 127.0.0.1:5432 when it answers, else a private instance.
    Auto,
    /// Only the PostgreSQL at `--embedded-postgres-addr`.
    System,
    /// Only a private instance in the data directory.
    Private,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The command to run: `serve` when none is named.
    pub fn into_command(self) -> (Global, Command) {
        (self.global, self.command.unwrap_or(Command::Serve(self.serve)))
    }
}

impl Global {
    /// The configured owner URL, from either variable.
    pub fn database_url(&self) -> Option<&SecretString> {
        self.database_url.as_ref().or(self.database_url_fallback.as_ref())
    }

    /// The data directory, resolved against the XDG convention.
    pub fn data_dir(&self, xdg_data_home: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        match (xdg_data_home, home) {
            (Some(x), _) if x.is_absolute() => x.join("trellis"),
            (_, Some(h)) => h.join(".local/share/trellis"),
            _ => PathBuf::from(".trellis"),
        }
    }
}

/// Where a demo application listens unless told otherwise.
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9080))
}

fn parse_kube_name(s: &str) -> Result<trellis_model::KubeName, String> {
    trellis_model::KubeName::parse(s).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_mesh(s: &str) -> Result<trellis_model::MeshName, String> {
    trellis_model::MeshName::parse(s).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_resource_name(s: &str) -> Result<trellis_model::ResourceName, String> {
    trellis_model::ResourceName::parse(s).map_err(|e| format!("{s:?}: {e}"))
}

/// `host:port`, going into YAML as one token.
fn parse_host_port(s: &str) -> Result<String, String> {
    let port = s.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
    let valid = port.and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| p > 0)
        && s.len() <= 253 + 6
        && s.chars().all(|c| c.is_ascii_graphic());
    if !valid {
        return Err(format!("{s:?}: expected host:port, e.g. trellis.trellis.svc:{XDS_PORT}"));
    }
    Ok(s.to_owned())
}

/// An image reference goes into YAML and a container runtime: one printable token.
fn parse_image(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 512 || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{s:?}: an image reference is 1 to 512 printable ASCII characters without spaces"
        ));
    }
    Ok(s.to_owned())
}

/// A path written into a systemd unit: absolute, and free of what unit syntax would read
/// as something else (whitespace, specifiers, quotes, escapes).
fn parse_absolute_path(s: &str) -> Result<PathBuf, String> {
    let plain = s.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '%' | '"' | '\'' | '\\' | ';'));
    if !s.starts_with('/') || !plain {
        return Err(format!("{s:?}: expected an absolute path without spaces, quotes, '%', ';' or '\\'"));
    }
    Ok(PathBuf::from(s))
}

fn parse_slug(s: &str) -> Result<trellis_model::OrgSlug, String> {
    trellis_model::OrgSlug::parse(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `500ms`, `10s`, `5m`, `1h`.
fn parse_svid_ttl_override(s: &str) -> Result<trellis_model::SvidTtl, String> {
    trellis_model::SvidTtl::installation_override(parse_duration(s)?)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number followed by ms, s, m or h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unit must be ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("trellis").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn serve_is_the_default_and_flags_parse() {
        let (global, cmd) = parse(&[]).into_command();
        assert!(matches!(cmd, Command::Serve(s) if s.http_addr.port() == 8080));
        assert_eq!(global.embedded_postgres, EmbeddedMode::Auto);
        let (_, cmd) = parse(&["--http-addr", "127.0.0.1:0", "--log-format", "json"]).into_command();
        assert!(matches!(cmd, Command::Serve(s) if s.http_addr.port() == 0));
        let (global, cmd) = parse(&["migrate", "--embedded-database", "x"]).into_command();
        assert!(matches!(cmd, Command::Migrate));
        assert_eq!(global.embedded_database, "x");
        let cli = parse(&["serve", "--http-addr", "0.0.0.0:9000", "--shutdown-grace", "250ms"]);
        let Some(Command::Serve(s)) = cli.command else { panic!() };
        assert_eq!(s.http_addr, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(s.shutdown_grace, Duration::from_millis(250));
        assert!(Cli::try_parse_from(["trellis", "serve", "--shutdown-grace", "10 parsecs"]).is_err());
        let (_, cmd) =
            parse(&["--oidc-issuer", "https://idp", "--oidc-allow-insecure-loopback"]).into_command();
        let Command::Serve(s) = cmd else { panic!() };
        assert!(s.oidc_allow_insecure_loopback);
        assert_eq!(s.oidc_issuer.as_deref(), Some("https://idp"));
        assert_eq!(s.session_idle_timeout, Duration::from_secs(8 * 3600));
        assert_eq!(s.local_org.as_str(), "default");
        assert!(Cli::try_parse_from(["trellis", "--local-org", "Not A Slug"]).is_err());
    }

    #[test]
    fn data_dir_follows_xdg() {
        let g = parse(&[]).global;
        assert_eq!(g.data_dir(Some("/x".into()), Some("/home/u".into())), PathBuf::from("/x/trellis"));
        assert_eq!(
            g.data_dir(Some("rel".into()), Some("/home/u".into())),
            PathBuf::from("/home/u/.local/share/trellis")
        );
        assert_eq!(g.data_dir(None, Some("/home/u".into())), PathBuf::from("/home/u/.local/share/trellis"));
        let g = parse(&["--data-dir", "/d"]).global;
        assert_eq!(g.data_dir(None, None), PathBuf::from("/d"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
