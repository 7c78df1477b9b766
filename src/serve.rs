//! `trellis serve`: migrate, connect, start the background duties, serve HTTP, shut down
//! gracefully.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use trellis_api::{AppState, CaExpiryMetrics, HttpMetrics, ProcessCollector, XdsEndpoint};
use trellis_pki::{Authority, AuthorityOptions};
use trellis_store::{
    ChangeFeed, FeedOptions, FeedStats, LeaderElector, LeaderOptions, ReadCacheStats, Store,
    TelemetryRetention,
};
use trellis_xds_server::{
    AdsOptions, AdsService, IdentityService, Ledger, SnapshotOptions, Snapshots, TelemetryOptions,
    TelemetryService, XdsMetrics,
};

use crate::Database;
use crate::config::Serve;

/// How long a starting server waits for a database that is unavailable (starting itself, or
/// too busy to take a connection) before it gives up.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `step` again, a second apart, while it fails for want of the database, for up to
/// `patience`: a control plane started beside its database, or restarted while the database
/// is busy, does not exit for a database a few seconds late.
async fn patiently<T, F, Fut>(patience: Duration, mut step: F) -> Result<T, trellis_store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, trellis_store::StoreError>>,
{
    let started = std::time::Instant::now();
    loop {
        match step().await {
            Err(e) if e.is_unavailable() && started.elapsed() < patience => {
                tracing::warn!(error = %e, "the database is unavailable; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            done => return done,
        }
    }
}

pub async fn serve(cfg: Serve, database: &Database, keyring: trellis_ca::KeyRing) -> anyhow::Result<()> {
    patiently(STARTUP_PATIENCE, || trellis_store::migrate(&database.roles.owner))
        .await
        .context("applying migrations")?;
    let store =
        patiently(STARTUP_PATIENCE, || Store::connect(database.roles.app.clone(), cfg.db_max_connections))
            .await
            .context("connecting as the server role trellis_app")?;

    let leader = Arc::new(LeaderElector::start(store.connect_options().clone(), LeaderOptions::default()));
    let feed = ChangeFeed::start(
        &store,
        FeedOptions { reconcile_every: cfg.reconcile_interval, ..Default::default() },
    );
    let feed_stats = feed.stats();
    let snapshots =
        Snapshots::new(store.clone(), SnapshotOptions { debounce: cfg.xds_debounce, ..Default::default() });
    let authority = Authority::new(
        store.clone(),
        keyring,
        AuthorityOptions {
            min_days: cfg.ca_min_days,
            svid_ttl_override: cfg.svid_ttl_override,
            ..Default::default()
        },
    );
    let consumer = tokio::spawn(consume(feed, snapshots.clone(), authority.clone()));
    let duties = tokio::spawn(leader_duties(
        store.clone(),
        leader.clone(),
        cfg.dataplane_grace,
        cfg.deleted_org_audit_retention,
        TelemetryRetention {
            edges_10s: cfg.telemetry_retention_10s,
            edges_1m: cfg.telemetry_retention_1m,
            edges_1h: cfg.telemetry_retention_1h,
            access_log: cfg.access_log_retention,
        },
    ));

    // The REST API and the console read through the cache; the rest of the server does not.
    let api_store = store.clone().with_read_cache();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry.register_collector(Box::new(ControlPlaneCollector {
        leader: leader.clone(),
        feed: feed_stats,
        reads: api_store.read_cache_stats().unwrap_or_default(),
    }));
    let http_metrics = HttpMetrics::register(&mut registry);
    let ca_expiry = CaExpiryMetrics::register(&mut registry);
    let ca_expiry_task = tokio::spawn(refresh_ca_expiry(store.clone(), ca_expiry, cfg.ca_expiry_refresh));
    let xds_metrics = XdsMetrics::default();
    xds_metrics.register(&mut registry);

    // The TLS port: a server certificate from the platform CA for this replica's names.
    let xds_listener = TcpListener::bind(cfg.xds_addr)
        .await
        .with_context(|| format!("cannot listen on {} (TRELLIS_XDS_ADDR)", cfg.xds_addr))?;
    let xds_addr = xds_listener.local_addr()?;
    let names: Vec<&str> =
        cfg.xds_server_names.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
    let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    if !xds_addr.ip().is_unspecified() && !ips.contains(&xds_addr.ip()) {
        ips.push(xds_addr.ip());
    }
    let server_identity =
        trellis_pki::load_or_create_platform(&store, authority.keyring(), &names, &ips).await.context(
            "loading the platform CA (is this the KEK that sealed it? see TRELLIS_KEK / TRELLIS_KEK_FILE)",
        )?;
    let tls = trellis_xds_server::tls::server_config(
        server_identity.chain.clone(),
        server_identity.key.clone_key(),
    )
    .context("TLS configuration of the xDS port")?;
    let ads = AdsService::new(
        authority.clone(),
        snapshots.clone(),
        Ledger::start(store.clone()),
        xds_metrics.clone(),
        AdsOptions { send_timeout: cfg.xds_send_timeout, replica: replica_name(), ..Default::default() },
    );
    let identity = IdentityService::new(authority.clone());
    let telemetry = TelemetryService::start(
        store.clone(),
        authority.clone(),
        xds_metrics.clone(),
        TelemetryOptions {
            rate_per_org: cfg.telemetry_ingest_rate,
            series_per_bucket: cfg.telemetry_series_budget,
            log_entries_per_bucket: cfg.telemetry_log_budget,
        },
    );
    let (xds_stop_tx, xds_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let xds_server =
        tokio::spawn(trellis_xds_server::serve(xds_listener, tls, ads, identity, telemetry, async {
            let _ = xds_stop_rx.await;
        }));

    let listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (TRELLIS_HTTP_ADDR)", cfg.http_addr))?;
    let addr = listener.local_addr()?;
    let accounts = Arc::new(accounts(&cfg, addr)?);
    let xds_host = match xds_addr.ip() {
        ip if ip.is_unspecified() => {
            format!("{}:{}", names.first().copied().unwrap_or("localhost"), xds_addr.port())
        }
        _ => xds_addr.to_string(),
    };
    let state = AppState {
        store: api_store,
        registry: Arc::new(registry),
        accounts: accounts.clone(),
        authority: authority.clone(),
        xds: Arc::new(XdsEndpoint { address: xds_host.clone(), ca_pem: server_identity.root_pem.clone() }),
    };
    let console = trellis_web::Console {
        control: state.control(),
        oidc: accounts.oidc.is_some(),
        xds_address: state.xds.address.clone(),
        platform_ca_pem: state.xds.ca_pem.clone(),
        public_url: accounts.link(""),
    };
    let app = trellis_api::router(
        state,
        http_metrics,
        trellis_api::RequestLimits { body: cfg.body_limit, time: cfg.request_timeout },
        trellis_web::router(console),
    );
    // The signal handlers and the login link, both ready before the address is announced:
    // whoever waits for that line (an operator, a supervisor, a test) may signal the process
    // or open the link right away.
    let stop = shutdown_signal();
    let local_link = match &accounts.oidc {
        Some(_) => None,
        None => Some(
            trellis_api::accounts::mint_local_login(&store, &accounts, cfg.local_login_ttl)
                .await
                .context("creating the one-time login link")?,
        ),
    };
    tracing::info!(%addr, database = %database.description, "trellis is serving");
    println!("Trellis is listening on http://{addr}  (database: {})", database.description);
    println!(
        "  health: http://{addr}/healthz  readiness: http://{addr}/readyz  metrics: http://{addr}/metrics"
    );
    println!("  xDS and workload identity (gRPC over TLS): {xds_host}");
    match (&accounts.oidc, local_link) {
        (Some(oidc), _) => {
            println!("  console login: {}  (OpenID provider {})", accounts.link("/auth/login"), oidc.issuer())
        }
        (None, link) => {
            // The link is a credential: printed for the operator, never logged.
            println!(
                "  no OpenID provider configured (TRELLIS_OIDC_ISSUER): log in once as the local admin of \
                 organization {:?} within {}s:",
                accounts.local_org.as_str(),
                cfg.local_login_ttl.as_secs()
            );
            println!("  {}", link.unwrap_or_default());
        }
    }

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // Responses go out at once: with Nagle's algorithm a response written in two segments
        // waits for the client's delayed ACK (tens of milliseconds).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = drain_rx.await;
            })
            .await
    });
    stop.await;
    tracing::info!(grace = ?cfg.shutdown_grace, "shutting down: draining requests");
    let _ = drain_tx.send(());
    match tokio::time::timeout(cfg.shutdown_grace, server).await {
        Ok(res) => res.context("server task")?.context("http server")?,
        Err(_) => tracing::warn!("requests still running after the grace period; closing them"),
    }
    let _ = xds_stop_tx.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(2), xds_server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "xDS server"),
        Ok(_) => {}
        Err(_) => tracing::info!("xDS streams still open after 2s; closing them"),
    }
    consumer.abort();
    duties.abort();
    ca_expiry_task.abort();
    if let Ok(leader) = Arc::try_unwrap(leader) {
        leader.stop().await;
    }
    store.close().await;
    tracing::info!("trellis stopped");
    Ok(())
}

/// The account settings: public URL, OpenID provider (checked here, at start-up) and
/// session lifetimes.
fn accounts(cfg: &Serve, addr: std::net::SocketAddr) -> anyhow::Result<trellis_api::Accounts> {
    let public_url = match &cfg.public_url {
        Some(u) => u.clone(),
        None => url::Url::parse(&format!("http://{addr}")).context("public URL from the listen address")?,
    };
    if !matches!(public_url.scheme(), "http" | "https")
        || public_url.query().is_some()
        || public_url.fragment().is_some()
    {
        anyhow::bail!("TRELLIS_PUBLIC_URL {public_url} must be an http(s) URL without query or fragment");
    }
    let oidc = match &cfg.oidc_issuer {
        None => None,
        Some(issuer) => {
            let settings = trellis_api::oidc::OidcSettings::new(
                issuer,
                cfg.oidc_client_id.clone(),
                cfg.oidc_client_secret.clone(),
                cfg.oidc_scopes.split_whitespace().map(str::to_owned).collect(),
                cfg.oidc_allow_insecure_loopback,
            )?;
            Some(trellis_api::oidc::OidcProvider::new(settings, &public_url)?)
        }
    };
    Ok(trellis_api::Accounts {
        public_url,
        oidc,
        session_idle: cfg.session_idle_timeout,
        session_lifetime: cfg.session_lifetime,
        local_org: cfg.local_org.clone(),
    })
}

/// Follows the change feed: each mesh it names is rebuilt for the xDS streams that watch it.
async fn consume(mut feed: ChangeFeed, snapshots: Arc<Snapshots>, authority: Authority) {
    while let Some(change) = feed.recv().await {
        tracing::debug!(org = %change.org, mesh = %change.mesh, revision = change.revision, "mesh changed");
        authority.on_change(&change);
        snapshots.on_change(change);
    }
}

/// Keeps the CA expiry gauges current: at start, then every `every`.
async fn refresh_ca_expiry(store: Store, metrics: CaExpiryMetrics, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_secs(1)));
    loop {
        tick.tick().await;
        if let Err(e) = metrics.refresh(&store).await {
            tracing::warn!(error = %e, "reading CA expiry for the metrics failed");
        }
    }
}

/// This replica's name in the dataplane list: host and process id.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{}:{}", if host.is_empty() { "trellis" } else { host }, std::process::id())
}

/// Background duties that exactly one replica runs: removing dataplanes that stayed offline
/// past the grace period, sent xDS contents no proxy holds any more, and the audit trail of
/// organizations deleted longer than the retention ago; preparing the next telemetry
/// partitions, rolling telemetry up (and examining the new minutes for unexpected traffic)
/// and dropping its partitions (and the tenants' drop counts) past retention.
async fn leader_duties(
    store: Store,
    leader: Arc<LeaderElector>,
    grace: std::time::Duration,
    audit_retention: std::time::Duration,
    telemetry_retention: TelemetryRetention,
) {
    // A 10 s bucket is rolled up this long after it ends: writers flush well within it.
    const ROLLUP_LAG: std::time::Duration = std::time::Duration::from_secs(30);
    let mut tick = tokio::time::interval(
        grace.clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30)),
    );
    loop {
        tick.tick().await;
        if !leader.is_leader() {
            continue;
        }
        match store.prune_dataplanes(grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed dataplanes offline past the grace period"),
            Err(e) => tracing::warn!(error = %e, "pruning offline dataplanes failed"),
        }
        if let Err(e) = store.prune_xds_configs(std::time::Duration::from_secs(600)).await {
            tracing::warn!(error = %e, "pruning sent xDS contents failed");
        }
        match store.purge_deleted_orgs(audit_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(organizations = n, "purged the audit trail of deleted organizations"),
            Err(e) => tracing::warn!(error = %e, "purging the audit trail of deleted organizations failed"),
        }
        // Partitions are made ahead, so that writers rarely wait on their creation.
        if let Err(e) = store.prepare_telemetry(chrono::Utc::now() + chrono::TimeDelta::hours(1)).await {
            tracing::warn!(error = %e, "preparing the next telemetry partitions failed");
        }
        if let Err(e) = store.rollup_telemetry(ROLLUP_LAG).await {
            tracing::warn!(error = %e, "rolling telemetry up failed");
        }
        // The minutes the rollup just made final are examined for unexpected traffic.
        match store.scan_traffic_events(&trellis_model::traffic_events::Thresholds::default()).await {
            Ok(r) if r.events > 0 => {
                tracing::info!(events = r.events, minutes = r.minutes, "recorded unexpected traffic")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "examining traffic for unexpected patterns failed"),
        }
        match store.expire_telemetry(&telemetry_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(partitions = n, "dropped telemetry partitions past retention"),
            Err(e) => tracing::warn!(error = %e, "dropping telemetry partitions past retention failed"),
        }
        if let Err(e) = store.expire_telemetry_drops(trellis_store::DROP_RETENTION).await {
            tracing::warn!(error = %e, "deleting telemetry drop counts past retention failed");
        }
        if let Err(e) = store.expire_endpoint_health(trellis_store::ENDPOINT_HEALTH_RETENTION).await {
            tracing::warn!(error = %e, "deleting stale endpoint reports failed");
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that completes at the
/// first of those signals. Call it before announcing an address: whoever waits for the
/// announcement may signal at once, and a signal that finds no handler ends the process.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
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

/// Leader role, change-feed and read-cache counters, read at scrape time.
#[derive(Debug)]
struct ControlPlaneCollector {
    leader: Arc<LeaderElector>,
    feed: Arc<FeedStats>,
    reads: Arc<ReadCacheStats>,
}

impl Collector for ControlPlaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        ConstGauge::new(i64::from(self.leader.is_leader())).encode(encoder.encode_descriptor(
            "trellis_leader",
            "1 when this replica runs the background duties",
            None,
            MetricType::Gauge,
        )?)?;
        for (name, help, v) in [
            (
                "trellis_change_feed_connects",
                "LISTEN sessions of the change feed (1 + reconnects)",
                &self.feed.connects,
            ),
            (
                "trellis_change_feed_resyncs",
                "Full resyncs and reconciles of the change feed",
                &self.feed.resyncs,
            ),
            (
                "trellis_change_feed_changes",
                "Mesh changes delivered by the change feed",
                &self.feed.delivered,
            ),
            (
                "trellis_change_feed_recovered",
                "Mesh changes found by resync that no notification delivered",
                &self.feed.recovered,
            ),
            (
                "trellis_read_cache_hits",
                "API-token reads of a resource answered from the cache",
                &self.reads.hits,
            ),
            (
                "trellis_read_cache_misses",
                "API-token reads of a resource read from the database while the cache vouched for itself",
                &self.reads.misses,
            ),
            (
                "trellis_read_cache_bypassed",
                "API-token reads of a resource read from the database because the cache could not vouch for itself",
                &self.reads.bypassed,
            ),
        ] {
            ConstCounter::new(v.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use trellis_store::StoreError;

    use super::*;

    #[tokio::test]
    async fn a_step_is_tried_again_while_the_database_is_unavailable_and_no_longer() {
        let tries = AtomicU32::new(0);
        let late = patiently(Duration::from_secs(30), || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(late.unwrap(), 2, "the third try succeeds");

        let tries = AtomicU32::new(0);
        let refused = patiently(Duration::from_secs(30), || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(StoreError::NotFound("role"))
        })
        .await;
        assert!(matches!(refused, Err(StoreError::NotFound(_))));
        assert_eq!(tries.load(Ordering::SeqCst), 1, "a failure that is not the database's absence is final");

        let tries = AtomicU32::new(0);
        let absent = patiently(Duration::from_millis(1500), || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(StoreError::Unavailable(sqlx::Error::PoolTimedOut))
        })
        .await;
        assert!(absent.unwrap_err().is_unavailable());
        let n = tries.load(Ordering::SeqCst);
        assert!((2..=3).contains(&n), "a try a second for as long as the patience lasts: {n}");
    }
}
