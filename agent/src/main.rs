//! `trellis-agent`: joins a mesh with a join token, keeps its SVID fresh, takes the sidecar
//! configuration over Delta ADS and carries the workload's traffic over mTLS.
//!
//! - [`cli`]: the flags (every one also an environment variable).
//! - [`identity`]: key, CSR, SVID, renewal, and the certificate files.
//! - [`control`]: channels to the control plane.
//! - [`xds_client`]: the Delta ADS stream, behind [`state::ConfigSink`].
//! - [`convert`] → [`config`]: xDS resources into the agent's own typed configuration (pure).
//! - [`proxy`]: listeners, inbound mTLS and access control, outbound routing.
//! - [`transparent`]: transparent mode's capture listeners, and [`iptables`]: the rules of
//!   `trellis-agent init` that redirect a pod's traffic to them.
//! - [`access_log`]: denied, failed and sampled calls, on stdout and to the control plane.
//! - [`admin`]: `/metrics`, `/ready`, `/config` on loopback.
//! - [`relay`]: the local xDS relay for clients that cannot present a certificate.
//! - [`persist`]: the last accepted configuration, served after a restart without the
//!   control plane.

#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod body;
mod cli;
mod config;
mod control;
mod convert;
mod h2_pool;
mod h2_server;
mod h2_wire;
mod hpack;
mod http1_codec;
mod http1_pool;
mod http1_server;
mod identity;
mod iptables;
mod metrics;
mod persist;
mod pipe;
mod proxy;
mod relay;
mod resilience;
mod spare_fields;
mod state;
mod svid;
mod telemetry;
mod transparent;
mod upgrade;
mod xds_client;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};
use trellis_xds::contract::node_metadata;

use crate::cli::{Cli, Command, InitArgs, RunArgs};
use crate::control::ControlPlane;
use crate::identity::Files;
use crate::iptables::Family;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Run(args) => runtime(args.worker_threads).and_then(|rt| rt.block_on(run(*args))),
        Command::Init(args) => init(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One thread needs no scheduler shared between threads; more get a work-stealing one.
fn runtime(threads: u16) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
    };
    builder.enable_all().build().context("cannot start the runtime")
}

/// Installs (or removes, or prints) the capture rules of transparent mode, IPv4 and IPv6.
fn init(args: &InitArgs) -> anyhow::Result<()> {
    args.check().map_err(|e| anyhow!(e))?;
    match (args.uninstall, args.dry_run) {
        (false, true) => {
            print!("{}", iptables::dry_run(Family::BOTH.map(|f| Some(iptables::rules(&args.plan(), f)))))
        }
        (true, true) => {
            let mut inputs = [None, None];
            for (input, family) in inputs.iter_mut().zip(Family::BOTH) {
                if iptables::families().contains(&family) {
                    *input = iptables::removal(&iptables::save(family)?);
                }
            }
            print!("{}", iptables::dry_run(inputs));
        }
        (false, false) => {
            let families = iptables::install(&args.plan())?;
            let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
            tracing::info!(families = %names.join(" and "), "capture rules installed (nat table, chains TRELLIS_*)");
            if !families.contains(&Family::V6) {
                tracing::warn!("this kernel has no IPv6 (no /proc/net/if_inet6): IPv4 rules only");
            }
        }
        (true, false) => match iptables::uninstall()? {
            true => tracing::info!("capture rules removed"),
            false => tracing::info!("no capture rules to remove"),
        },
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    args.check().map_err(|e| anyhow!(e))?;
    let stop = shutdown_signal();
    if args.transparent {
        transparent::check_uid(&args.capture)?;
    }
    let platform_root_pem = std::fs::read_to_string(&args.platform_ca)
        .with_context(|| format!("--platform-ca {}", args.platform_ca.display()))?;
    let cp = ControlPlane::new(&args.server, &platform_root_pem)?;
    let files = || Files { dir: args.cert_dir.clone(), platform_root_pem: platform_root_pem.clone() };
    let identity = Arc::new(identity::obtain(&cp, &files(), || join_token(&args)).await?);

    let local = convert::Local {
        address: args.address,
        app_ports: args.app_port_overrides(),
        id: identity.current().id.clone(),
    };
    let state = Arc::new(state::State::new(local));
    let bundle = identity::BundleWatch {
        current: Box::new({
            let state = state.clone();
            move || state.config().bundle.clone()
        }),
        changed: state.changed.subscribe(),
    };
    tokio::spawn(identity::renew_forever(identity.clone(), cp.clone(), files(), bundle));
    let upstreams = Arc::new(telemetry::Upstreams::default());
    let binding = match args.transparent {
        true => proxy::Binding::Transparent,
        false => proxy::Binding::Explicit {
            outbound: args.outbound.clone(),
            http_proxy: args.http_proxy_addr.is_some(),
        },
    };
    let metrics = metrics::Metrics::default();
    let (access_log, entries) = access_log::AccessLog::new(args.access_log_sample, metrics.clone());
    // Access logs go to the control plane whenever telemetry does.
    let log_upstream = args.telemetry_interval.0.map(|_| access_log::Upstream {
        cp: cp.clone(),
        identity: identity.clone(),
        node: node(&args),
    });
    tokio::spawn(access_log::run(entries, identity.current().id.clone(), metrics.clone(), log_upstream));
    let proxy = proxy::Proxy::new(
        state,
        identity.clone(),
        binding,
        metrics,
        upstreams.clone(),
        access_log,
        args.cert_dir.clone(),
    )?;
    serve_last_good(&proxy, &args.cert_dir);
    let admin_addr = args.admin_addr();
    let admin = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("--admin-addr {admin_addr}: cannot listen"))?;
    tracing::info!("admin (/metrics, /ready, /config) on {admin_addr}");
    tokio::spawn(admin::serve(admin, proxy.clone()));
    if let Some(addr) = args.readiness_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--readiness-addr {addr}: cannot listen"))?;
        tracing::info!("readiness (GET /ready only) on {addr}");
        tokio::spawn(admin::serve_readiness(listener, proxy.clone()));
    }
    let mut renewed = identity.changed.subscribe();
    let for_renewal = proxy.clone();
    tokio::spawn(async move {
        while renewed.changed().await.is_ok() {
            if let Err(e) = for_renewal.refresh_tls() {
                tracing::error!(error = %format!("{e:#}"), "cannot use the renewed SVID");
            }
        }
    });
    if args.transparent {
        let listeners = transparent::bind(&args.capture)?;
        transparent::serve(proxy.clone(), listeners, &identity.current().id);
    }
    if let Some(addr) = args.http_proxy_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--http-proxy-addr {addr}: cannot listen"))?;
        tracing::info!("HTTP proxy (explicit mode, http://<service>.<mesh>:<port>) on {addr}");
        tokio::spawn(proxy.clone().serve_http_proxy(listener));
    }
    if let Some(addr) = args.xds_relay_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--xds-relay-addr {addr}: cannot listen"))?;
        tracing::info!("xDS relay (plaintext, for co-located clients) on {addr}");
        tokio::spawn(relay::serve(listener, cp.clone(), identity.clone()));
    }
    if let Some(every) = args.telemetry_interval.0 {
        let memberships: telemetry::Memberships = {
            let proxy = proxy.clone();
            Arc::new(move || proxy.memberships())
        };
        tokio::spawn(telemetry::push_forever(
            upstreams,
            memberships,
            cp.clone(),
            identity.clone(),
            node(&args),
            every,
        ));
    }
    let xds = tokio::spawn(xds_client::run(cp, identity, node(&args), proxy.clone(), proxy.draining()));

    stop.await;
    tracing::info!(within = ?args.drain_timeout, "draining");
    match proxy.drain(args.drain_timeout).await {
        0 => tracing::info!("drained"),
        open => tracing::warn!(open, "drain timed out; closing the connections still open"),
    }
    // The xDS client ends its stream as the drain begins; exiting before the control plane
    // has heard it would look like a proxy cut off, an endpoint for the grace period still.
    let _ = tokio::time::timeout(xds_client::LEAVING_WAIT, xds).await;
    Ok(())
}

/// Applies the configuration accepted before a restart, so that the agent serves while the
/// control plane is unreachable; the xDS stream then brings only what changed.
fn serve_last_good(proxy: &proxy::Proxy, dir: &std::path::Path) {
    use state::ConfigSink;
    let applied = persist::load(dir).and_then(|responses| {
        let any = !responses.is_empty();
        for r in responses {
            proxy.apply(&r.type_url, &r.resources, &[]).map_err(|e| anyhow!("{}: {e}", r.type_url))?;
        }
        Ok(any)
    });
    match applied {
        Ok(true) => tracing::info!("serving the last accepted configuration until the control plane answers"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "ignoring the kept configuration"),
    }
}

/// The join token from the flag or environment, else from its file.
fn join_token(args: &RunArgs) -> anyhow::Result<Option<cli::JoinToken>> {
    match (&args.join_token, &args.join_token_file) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--join-token-file {}", file.display()))?;
            let token = cli::token_from_file(&text)
                .map_err(|e| anyhow!("--join-token-file {}: {e}", file.display()))?;
            Ok(Some(token))
        }
        (None, None) => Ok(None),
    }
}

/// The node as the control plane registers it: the metadata keys of the wire contract.
fn node(args: &RunArgs) -> Node {
    let s = |v: String| Value { kind: Some(Kind::StringValue(v)) };
    let mut fields = std::collections::HashMap::new();
    fields.insert(node_metadata::MESH.to_owned(), s(args.mesh.clone()));
    fields.insert(node_metadata::CERT_DIR.to_owned(), s(args.cert_dir.display().to_string()));
    fields.insert(node_metadata::ADDRESS.to_owned(), s(args.address.to_string()));
    let ports = args.ports.iter().map(|p| Value { kind: Some(Kind::NumberValue(f64::from(*p))) }).collect();
    fields.insert(
        node_metadata::PORTS.to_owned(),
        Value { kind: Some(Kind::ListValue(ListValue { values: ports })) },
    );
    let tags = args.tags.iter().map(|(k, v)| (k.clone(), s(v.clone()))).collect();
    fields.insert(
        node_metadata::TAGS.to_owned(),
        Value { kind: Some(Kind::StructValue(Struct { fields: tags })) },
    );
    Node {
        id: args.node_id(),
        user_agent_name: "trellis-agent".into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that completes at the
/// first of those signals: a signal that finds no handler ends the process without a drain.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
