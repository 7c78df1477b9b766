//! PostgreSQL access for Trellis: tenancy through row-level security, repositories, the
//! change feed and leader election.
//!
//! Invariant: outside this crate no query can run without a tenant. The pool is private;
//! callers get a [`TenantTx`] (a transaction that has set `app.org_id`) or call one of the
//! few directory functions on [`Store`] that are safe without one.

#![forbid(unsafe_code)]

mod audit;
mod ca;
mod dataplanes;
mod endpoint_health;
mod error;
mod feed;
mod health;
mod idempotency;
mod invites;
mod leader;
mod meshes;
mod orgs;
mod provision;
mod read_cache;
mod reads;
mod resources;
mod sessions;
mod telemetry;
mod telemetry_drops;
mod tenancy;
#[cfg(feature = "testing")]
pub mod testing;
mod tokens;
mod traffic_events;
mod users;

pub use audit::{AuditEvent, AuditFilter, AuditRecord};
pub use ca::{
    CaExpiry, CaOrigin, CaRecord, CaSettings, CaState, IssuedLeaf, JoinRefusal, JoinToken, LeafOutcome,
    LeafRecord, NewCa, PlatformCaRecord, SealedBytes,
};
pub use dataplanes::{Dataplane, LedgerEntry, Reached, ReachedNow, Registration, Rejection, Waiting};
pub use endpoint_health::{ENDPOINT_HEALTH_RETENTION, EndpointReport, MAX_SEEN_ENDPOINTS, SeenEndpoints};
pub use error::StoreError;
pub use feed::{ChangeFeed, FeedOptions, FeedStats, MeshChange};
pub use health::{HeldSvids, LastNack};
pub use idempotency::StoredResponse;
pub use invites::Invite;
pub use leader::{LeaderElector, LeaderOptions};
pub use meshes::{Mesh, Precondition, Put};
pub use orgs::Org;
pub use provision::{APP_ROLE, DbRoles, OWNER_ROLE, SchemaStatus, ensure_database, migrate, migrator};
pub use read_cache::ReadCacheStats;
pub use reads::{ResourceKey, TokenRead};
pub use resources::{Deleted, Resource, Selector};
pub use sessions::{PendingLogin, Session};
pub use telemetry::{AccessLogQuery, AccessLogRecord, EdgeSample, StoredAccessLog, TelemetryRetention};
pub use telemetry_drops::{DROP_RETENTION, DropCount};
pub use tenancy::TenantTx;
pub use tokens::ApiToken;
pub use traffic_events::{ScanReport, StoredTrafficEvent, TrafficEventQuery};
pub use users::{LocalAdmin, Member, Membership, NewUser, User, UserTx};

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// How long a pooled connection may sit idle before it is pinged again on its way out.
const IDLE_RECHECK: Duration = Duration::from_secs(2);

/// The application's handle on the database, connected as the unprivileged server role.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// Shared: a store is cloned for every request.
    options: std::sync::Arc<PgConnectOptions>,
    /// Answers repeated API-token reads of a resource (see [`Store::with_read_cache`]).
    reads: Option<read_cache::ReadCache>,
}

impl Store {
    /// Connects a pool of at most `max_connections` with the server role's options.
    pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // sqlx pings every connection as it returns to the pool; a second ping as it
            // leaves would add a round trip to every request. Only a connection that sat idle
            // (where the database may have dropped it meanwhile) is checked again.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_RECHECK {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
            .await?;
        Ok(Self { pool, options: options.into(), reads: None })
    }

    /// This store, answering API-token reads of a resource from a cache that follows the
    /// database's notifications and never answers staler than a read made when the request
    /// arrived (see `read_cache.rs`). For a serving replica; must run inside a Tokio runtime.
    pub fn with_read_cache(mut self) -> Self {
        self.reads = Some(read_cache::ReadCache::start(&self));
        self
    }

    /// How the read cache's answers went, if this store has one.
    pub fn read_cache_stats(&self) -> Option<std::sync::Arc<ReadCacheStats>> {
        self.reads.as_ref().map(|c| c.stats())
    }

    /// Connection options of the server role, for dedicated connections (feed, leader).
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// Is the database reachable and is its schema the one this binary expects?
    pub async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        provision::schema_status(&self.pool).await
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
