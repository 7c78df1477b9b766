//! The command line: one clap struct, every flag also an environment variable. Parsing is a
//! function of its inputs; nothing here reads files or the network.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use trellis_xds::contract::{DEFAULT_CERT_DIR, parse_cert_dir};

use crate::iptables::{Cidr, Plan, Ports};

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
    Run(Box<RunArgs>),
    /// Install the iptables rules of transparent mode in this network namespace (a pod's
    /// init container; needs NET_ADMIN), replacing any installed before.
    Init(InitArgs),
}

/// The capture ports and the agent's UID: `init` redirects to the ports and spares the UID,
/// `run --transparent` listens on the ports and must run as the UID.
#[derive(Args, Clone, Debug)]
pub struct Capture {
    /// Where inbound connections are redirected.
    #[arg(long, env = "TRELLIS_INBOUND_CAPTURE_PORT", default_value_t = 15006, value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_capture_port: u16,
    /// Where the pod's outbound connections are redirected (the agent listens on 127.0.0.1 and ::1).
    #[arg(long, env = "TRELLIS_OUTBOUND_CAPTURE_PORT", default_value_t = 15001, value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_capture_port: u16,
    /// The UID the agent runs as: its own connections are never redirected.
    #[arg(long, env = "TRELLIS_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
}

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub capture: Capture,
    /// Inbound ports to capture: `*` (all), or a comma-separated list (the service ports).
    #[arg(long, env = "TRELLIS_INBOUND_PORTS", default_value = "*", value_parser = parse_ports)]
    pub inbound_ports: Ports,
    /// Inbound ports never captured (comma-separated).
    #[arg(long, env = "TRELLIS_EXCLUDE_INBOUND_PORTS", value_delimiter = ',', default_value = "15000", value_parser = clap::value_parser!(u16).range(1..))]
    pub exclude_inbound_ports: Vec<u16>,
    /// Destination ports of outbound connections never captured (comma-separated).
    #[arg(long, env = "TRELLIS_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub exclude_outbound_ports: Vec<u16>,
    /// Destination networks of outbound connections never captured (comma-separated
    /// `a.b.c.d/len` or `x:y::z/len`, IPv4 or IPv6).
    #[arg(long, env = "TRELLIS_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Print the `iptables-restore` and `ip6tables-restore` inputs instead of applying them.
    #[arg(long, env = "TRELLIS_INIT_DRY_RUN")]
    pub dry_run: bool,
    /// Remove the rules instead (`--remove` too).
    #[arg(long, alias = "remove", env = "TRELLIS_INIT_UNINSTALL")]
    pub uninstall: bool,
}

impl InitArgs {
    pub fn plan(&self) -> Plan {
        Plan {
            inbound_capture_port: self.capture.inbound_capture_port,
            outbound_capture_port: self.capture.outbound_capture_port,
            proxy_uid: self.capture.proxy_uid,
            inbound_ports: self.inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
        }
    }

    /// Checks between flags that clap cannot express.
    pub fn check(&self) -> Result<(), String> {
        let Capture { inbound_capture_port: inbound, outbound_capture_port: outbound, .. } = self.capture;
        if inbound == outbound {
            return Err(format!("--inbound-capture-port and --outbound-capture-port are both {inbound}"));
        }
        Ok(())
    }
}

fn parse_ports(s: &str) -> Result<Ports, String> {
    if s.trim() == "*" {
        return Ok(Ports::All);
    }
    let ports = s
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or(format!("{p:?} is not a port")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Ports::Only(ports))
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
    /// A listener that answers only `GET /ready` (200 with an SVID and an accepted
    /// configuration, else 503), on an address the kubelet reaches: e.g. `0.0.0.0:15021` (off
    /// unless set; `trellis inject` sets it). The admin port stays on loopback.
    #[arg(long, env = "TRELLIS_READINESS_ADDR", value_parser = parse_addr)]
    pub readiness_addr: Option<SocketAddr>,
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
    /// Transparent mode: take the connections `trellis-agent init`'s rules redirect to the
    /// capture ports instead of binding a listener per service port; the application listens
    /// on its service ports and calls other services by their addresses. Give `--address`
    /// the pod's IP.
    #[arg(long, env = "TRELLIS_TRANSPARENT")]
    pub transparent: bool,
    #[command(flatten)]
    pub capture: Capture,
    /// Threads carrying traffic. One (the default) runs everything on one thread, as a
    /// sidecar's share of a pod's CPU suits: no hand-offs between threads on the data path.
    /// More for an agent in front of a busy workload on a host with cores to spare.
    #[arg(long, env = "TRELLIS_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
    /// The share of successful requests written to the access log, in percent (denied and
    /// failed ones always are).
    #[arg(long, env = "TRELLIS_ACCESS_LOG_SAMPLE", default_value = "1", value_parser = parse_sample_percent)]
    pub access_log_sample: f64,
}

impl RunArgs {
    /// The application's port behind service port `port`, when the flags override it. In
    /// transparent mode the application listens on the service port itself.
    pub fn app_port_overrides(&self) -> BTreeMap<u16, u16> {
        let same = self.ports.iter().filter(|_| self.transparent).map(|p| (*p, *p));
        same.chain(self.app_ports.iter().copied()).collect()
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
        if self.transparent && self.address.is_loopback() {
            return Err(format!(
                "--transparent: --address {} is loopback; give the pod's IP, where peers reach it",
                self.address
            ));
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
    check_addr(addr)
}

/// Refuses an admin address other peers could reach.
fn check_addr(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!("--admin-addr {addr}: must be a loopback address"))
    }
}

/// `--access-log-sample`: a percentage, 0 to 100.
fn parse_sample_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err("a percentage from 0 to 100".into()),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an address (ip:port)"))
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

    #[test]
    fn the_access_log_sample_is_a_percentage() {
        assert!(parse_sample_percent("101").is_err() && parse_sample_percent("-1").is_err());
        assert_eq!(parse_sample_percent("0.5"), Ok(0.5));
    }

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
        let Command::Run(a) = cli.command else { panic!("a run command") };
        Ok(*a)
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
        assert_eq!(a.readiness_addr, None, "no readiness listener unless asked");
        let ready = parse(&["--readiness-addr", "0.0.0.0:15021"]).unwrap().readiness_addr;
        assert_eq!(ready.unwrap().to_string(), "0.0.0.0:15021", "any address, unlike the admin port");
        assert!(parse(&["--readiness-addr", "15021"]).is_err());
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
    fn transparent_mode_forwards_to_the_service_port_unless_told_otherwise() {
        let a = parse(&[
            "--transparent",
            "--address",
            "10.0.0.2",
            "--port",
            "9080,9090",
            "--app-port",
            "9090=19090",
        ])
        .unwrap();
        assert!(a.check().is_ok());
        assert_eq!(a.app_port_overrides(), BTreeMap::from([(9080, 9080), (9090, 19090)]));
        assert_eq!((a.capture.inbound_capture_port, a.capture.outbound_capture_port), (15006, 15001));
        assert!(parse(&["--port", "9080"]).unwrap().app_port_overrides().is_empty(), "explicit mode");
        let e = parse(&["--transparent"]).unwrap().check().unwrap_err();
        assert!(e.contains("pod's IP"), "{e}");
    }

    fn init(args: &[&str]) -> Result<InitArgs, clap::Error> {
        let cli = Cli::try_parse_from(["trellis-agent", "init"].iter().chain(args))?;
        let Command::Init(a) = cli.command else { panic!("an init command") };
        Ok(a)
    }

    #[test]
    fn init_flags_make_the_plan_and_bad_ones_are_named() {
        let p = init(&[]).unwrap().plan();
        assert_eq!((p.inbound_capture_port, p.outbound_capture_port, p.proxy_uid), (15006, 15001, 1337));
        assert_eq!((p.inbound_ports, p.exclude_inbound_ports), (Ports::All, vec![15000]));
        let a = init(&[
            "--inbound-ports",
            "9080,9090",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,169.254.169.254,fd00::/8",
            "--exclude-outbound-ports",
            "5432",
            "--proxy-uid",
            "2020",
            "--remove",
            "--dry-run",
        ])
        .unwrap();
        assert!(a.uninstall && a.dry_run);
        let p = a.plan();
        assert_eq!(p.inbound_ports, Ports::Only(vec![9080, 9090]));
        assert_eq!(p.exclude_outbound_cidrs.len(), 3);
        assert_eq!((p.exclude_outbound_ports, p.proxy_uid), (vec![5432], 2020));
        let same = init(&["--inbound-capture-port", "15001"]).unwrap();
        assert!(same.check().unwrap_err().contains("both 15001"));
        for (args, needle) in [
            (&["--inbound-ports", "80,x"][..], "\"x\""),
            (&["--exclude-outbound-cidrs", "10.0.0.0/40"][..], "prefix length must be 0 to 32"),
            (&["--exclude-outbound-cidrs", "fd00::/200"][..], "prefix length must be 0 to 128"),
            (&["--exclude-inbound-ports", "0"][..], "--exclude-inbound-ports"),
        ] {
            let e = init(args).expect_err("refused").to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_join_token_is_never_printed() {
        let a = parse(&["--join-token", "trls_join_secretsecret"]).unwrap();
        assert!(!format!("{:?}", a.join_token).contains("secret"));
    }
}
