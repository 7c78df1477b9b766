//! The command line: one clap struct, every flag also an environment variable. Parsing is a
//! function of its inputs; nothing here reads files or the network.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use trellis_xds::contract::{DEFAULT_CERT_DIR, parse_cert_dir};

#[derive(Parser)]
#[command(
    name = "trellis-agent",
    version,
    about = "The Trellis data plane: joins a mesh and proxies its traffic over mTLS"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Join the mesh (or reuse the SVID in the certificate directory), then proxy.
    Run(RunArgs),
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The control plane's TLS port (xDS and identity), `host:port`.
    #[arg(long, env = "TRELLIS_SERVER")]
    pub server: String,
    /// The platform root (PEM) that the control plane's server certificate must chain to.
    #[arg(long, env = "TRELLIS_PLATFORM_CA")]
    pub platform_ca: PathBuf,
    /// A file holding the join token; needed only while the certificate directory holds no
    /// valid SVID.
    #[arg(long, env = "TRELLIS_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// The join token itself (prefer the file: an environment variable is not in `ps`, a flag is).
    #[arg(long = "join-token", env = "TRELLIS_JOIN_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub join_token: Option<JoinToken>,
    /// Where `cert.pem`, `key.pem`, `bundle.pem` and `ca.pem` are kept, for co-located clients too.
    #[arg(long, env = "TRELLIS_CERT_DIR", default_value = DEFAULT_CERT_DIR, value_parser = parse_dir)]
    pub cert_dir: PathBuf,
    /// The mesh (informational: the certificate decides).
    #[arg(long, env = "TRELLIS_MESH")]
    pub mesh: String,
    /// The workload's service (informational: the certificate decides).
    #[arg(long, env = "TRELLIS_SERVICE")]
    pub service: String,
    /// The service ports this workload serves: one inbound listener each.
    #[arg(long = "port", env = "TRELLIS_PORTS", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Where the application listens on 127.0.0.1, per service port (`PORT=APP_PORT`), when it
    /// is not the port's declared `appPort` (e.g. two instances of a service on one host).
    #[arg(long = "app-port", env = "TRELLIS_APP_PORTS", value_delimiter = ',', value_parser = parse_port_pair)]
    pub app_ports: Vec<(u16, u16)>,
    /// The instance's tags, `key=value`.
    #[arg(long = "tags", env = "TRELLIS_TAGS", value_delimiter = ',', value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// The address the inbound listeners bind and the control plane advertises as this
    /// instance's endpoint. On one host, give each agent its own (127.0.0.2, 127.0.0.3, …).
    #[arg(long, env = "TRELLIS_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub address: IpAddr,
    /// Which services' outbound listeners to bind: `all`, `none`, or a comma-separated list
    /// of the services the workload calls. Agents that share a host must not bind the same ones.
    #[arg(long, env = "TRELLIS_OUTBOUND", default_value = "all", value_parser = parse_outbound)]
    pub outbound: Outbound,
    /// The admin port (`/metrics`, `/ready`, `/config`); loopback only. Default: port 15000
    /// on `--address` when that is a loopback address (so agents sharing a host do not
    /// collide), else on 127.0.0.1.
    #[arg(long, env = "TRELLIS_ADMIN_ADDR", value_parser = parse_admin)]
    pub admin_addr: Option<SocketAddr>,
    /// A plaintext xDS endpoint on loopback that relays to the control plane over this
    /// agent's mTLS, for co-located clients that cannot present a certificate (off unless set).
    #[arg(long, env = "TRELLIS_XDS_RELAY_ADDR", value_parser = parse_admin)]
    pub xds_relay_addr: Option<SocketAddr>,
    /// An HTTP proxy on loopback for the application (`HTTP_PROXY=http://<this>`): requests
    /// for `http://<service>.<mesh>:<port>` are routed as by that service's outbound listener,
    /// with no name resolution and no outbound address to bind (off unless set).
    #[arg(long, env = "TRELLIS_HTTP_PROXY_ADDR", value_parser = parse_admin)]
    pub http_proxy_addr: Option<SocketAddr>,
    /// How long open connections may take to finish after SIGTERM (e.g. `10s`, `500ms`).
    #[arg(long, env = "TRELLIS_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// How often golden metrics are reported to the control plane (`off`: never).
    #[arg(long, env = "TRELLIS_TELEMETRY_INTERVAL", default_value = "10s", value_parser = parse_interval)]
    pub telemetry_interval: Every,
    /// The xDS node id (default `<service>-<address>`).
    #[arg(long, env = "TRELLIS_NODE_ID")]
    pub node_id: Option<String>,
    /// The share of successful requests written to the access log, in percent (denied and
    /// failed ones always are).
    #[arg(long, env = "TRELLIS_ACCESS_LOG_SAMPLE", default_value = "1", value_parser = crate::access_log::parse_sample_percent)]
    pub access_log_sample: f64,
}

impl RunArgs {
    /// The application's port behind service port `port`, when the flags override it.
    pub fn app_port_overrides(&self) -> BTreeMap<u16, u16> {
        self.app_ports.iter().copied().collect()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        let ip = if self.address.is_loopback() { self.address } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
        self.admin_addr.unwrap_or(SocketAddr::new(ip, 15000))
    }

    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| format!("{}-{}", self.service, self.address))
    }

    /// Checks between flags that clap cannot express.
    pub fn check(&self) -> Result<(), String> {
        for (port, _) in &self.app_ports {
            if !self.ports.contains(port) {
                return Err(format!("--app-port {port}=…: {port} is not one of --port {:?}", self.ports));
            }
        }
        Ok(())
    }
}

/// A join token: never printed.
#[derive(Clone)]
pub struct JoinToken(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(…)")
    }
}

fn parse_token(s: &str) -> Result<JoinToken, String> {
    let t = s.trim();
    if !t.starts_with("trls_join_") {
        return Err("not a join token (they begin `trls_join_`)".into());
    }
    Ok(JoinToken(zeroize::Zeroizing::new(t.to_owned())))
}

/// A join token read from a file's contents.
pub fn token_from_file(contents: &str) -> Result<JoinToken, String> {
    parse_token(contents)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 10s"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: the unit must be ms, s or m")),
    }
}

/// A loopback `ip:port`.
/// How often something periodic runs; `None` when it is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Every(pub Option<std::time::Duration>);

fn parse_interval(s: &str) -> Result<Every, String> {
    match s {
        "off" => Ok(Every(None)),
        s => match parse_duration(s)? {
            d if d >= std::time::Duration::from_secs(1) => Ok(Every(Some(d))),
            _ => Err("at least 1s, or `off`".into()),
        },
    }
}

fn parse_admin(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| format!("{s:?} is not an address (ip:port)"))?;
    crate::admin::check_addr(addr)
}

fn parse_dir(s: &str) -> Result<PathBuf, String> {
    parse_cert_dir(s).map(PathBuf::from)
}

fn parse_port_pair(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('=').ok_or("expected PORT=APP_PORT, e.g. 9080=19080")?;
    let port =
        |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or(format!("{p:?} is not a port"));
    Ok((port(a)?, port(b)?))
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected key=value, e.g. version=v2")?;
    if k.is_empty() {
        return Err("a tag needs a key".into());
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Which outbound listeners an agent binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    All,
    Only(Vec<String>),
}

impl Outbound {
    pub fn binds(&self, service: &str) -> bool {
        match self {
            Outbound::All => true,
            Outbound::Only(list) => list.iter().any(|s| s == service),
        }
    }
}

fn parse_outbound(s: &str) -> Result<Outbound, String> {
    match s.trim() {
        "all" => Ok(Outbound::All),
        "none" | "" => Ok(Outbound::Only(Vec::new())),
        list => Ok(Outbound::Only(
            list.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let base = [
            "trellis-agent",
            "run",
            "--server",
            "cp:15012",
            "--platform-ca",
            "/ca.pem",
            "--mesh",
            "shop",
            "--service",
            "reviews",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(args))?;
        let Command::Run(a) = cli.command;
        Ok(a)
    }

    #[test]
    fn flags_parse_and_bad_ones_are_named() {
        let a = parse(&[
            "--port",
            "9080",
            "--app-port",
            "9080=19080",
            "--tags",
            "version=v2",
            "--outbound",
            "reviews,db",
        ])
        .unwrap();
        assert_eq!(a.ports, [9080]);
        assert_eq!(a.app_port_overrides()[&9080], 19080);
        assert_eq!(a.tags, [("version".to_owned(), "v2".to_owned())]);
        assert_eq!(a.outbound, Outbound::Only(vec!["reviews".into(), "db".into()]));
        assert!(a.check().is_ok());
        assert_eq!(a.drain_timeout, std::time::Duration::from_secs(10));
        assert_eq!(a.telemetry_interval, Every(Some(std::time::Duration::from_secs(10))));
        assert_eq!(a.admin_addr().to_string(), "127.0.0.1:15000");
        assert_eq!(parse(&["--address", "127.0.0.3"]).unwrap().admin_addr().to_string(), "127.0.0.3:15000");
        assert_eq!(parse(&["--address", "10.0.0.3"]).unwrap().admin_addr().to_string(), "127.0.0.1:15000");
        assert_eq!(parse(&["--drain-timeout", "250ms"]).unwrap().drain_timeout.as_millis(), 250);
        assert_eq!(parse(&["--outbound", "none"]).unwrap().outbound, Outbound::Only(vec![]));
        let bad = parse(&["--app-port", "9081=1"]).unwrap();
        assert!(bad.check().unwrap_err().contains("9081"));
        for (args, needle) in [
            (&["--port", "0"][..], "--port"),
            (&["--cert-dir", "relative"][..], "--cert-dir"),
            (&["--join-token", "hello"][..], "join token"),
            (&["--tags", "novalue"][..], "key=value"),
            (&["--admin-addr", "0.0.0.0:15000"][..], "loopback"),
            (&["--xds-relay-addr", "10.0.0.1:15010"][..], "loopback"),
            (&["--drain-timeout", "10 hours"][..], "unit"),
        ] {
            let e = parse(args).err().expect("refused").to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_join_token_is_never_printed() {
        let a = parse(&["--join-token", "trls_join_secretsecret"]).unwrap();
        assert!(!format!("{:?}", a.join_token).contains("secret"));
    }
}
