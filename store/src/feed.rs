//! The change feed: "mesh M of org O is now at revision R", from PostgreSQL NOTIFY, with a
//! full resync after every (re)connect and a periodic reconcile, so that a lost notification
//! can delay a change but never lose it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use trellis_model::{MeshId, OrgId};

use crate::{Store, StoreError};

/// The channel the `meshes_written` trigger notifies on.
pub const CHANNEL: &str = "trellis_mesh_changed";

/// One mesh moved to a new revision; revision 0 means the mesh was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MeshChange {
    pub org: OrgId,
    pub mesh: MeshId,
    pub revision: i64,
}

impl MeshChange {
    /// Parses a notification payload `<org>/<mesh>/<revision>`.
    pub(crate) fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split('/');
        let org = parts.next()?.parse().ok()?;
        let mesh = parts.next()?.parse().ok()?;
        let revision = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(MeshChange { org, mesh, revision })
    }

    /// The mesh no longer exists.
    pub fn is_deleted(&self) -> bool {
        self.revision == 0
    }
}

/// Tuning of the feed.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// How often to compare every mesh head with what was seen, notification or not.
    pub reconcile_every: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// Shown in `pg_stat_activity` for the listening connection.
    pub application_name: String,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            reconcile_every: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            application_name: "trellis-feed".into(),
        }
    }
}

/// Counters of the feed's life, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Successful LISTEN sessions (1 after start, +1 per reconnect).
    pub connects: AtomicU64,
    /// Full resyncs and periodic reconciles that completed.
    pub resyncs: AtomicU64,
    /// Changes delivered to the consumer.
    pub delivered: AtomicU64,
    /// Changes found by a resync that no notification had delivered.
    pub recovered: AtomicU64,
}

/// A running change feed; drop it (or call [`ChangeFeed::stop`]) to stop listening.
pub struct ChangeFeed {
    rx: mpsc::Receiver<MeshChange>,
    stats: Arc<FeedStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ChangeFeed {
    /// Starts listening; the first changes delivered are every existing mesh head.
    pub fn start(store: &Store, options: FeedOptions) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(FeedStats::default());
        let worker =
            Worker { store: store.clone(), options, tx, stats: stats.clone(), heads: HashMap::new() };
        let task = tokio::spawn(worker.run(stopped));
        ChangeFeed { rx, stats, stop, task }
    }

    /// The next change, or `None` once the feed has stopped.
    pub async fn recv(&mut self) -> Option<MeshChange> {
        self.rx.recv().await
    }

    /// The feed's counters.
    pub fn stats(&self) -> Arc<FeedStats> {
        self.stats.clone()
    }

    /// Stops listening and waits for the worker to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Worker {
    store: Store,
    options: FeedOptions,
    tx: mpsc::Sender<MeshChange>,
    stats: Arc<FeedStats>,
    /// Last revision delivered per mesh.
    heads: HashMap<(OrgId, MeshId), i64>,
}

enum Exit {
    Stopped,
    Lost(String),
}

impl Worker {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        const FIRST_RETRY: Duration = Duration::from_millis(50);
        let mut backoff = FIRST_RETRY;
        loop {
            let connects_before = self.stats.connects.load(Ordering::Relaxed);
            let exit = tokio::select! {
                exit = self.session() => exit,
                _ = stopped.wait_for(|s| *s) => Exit::Stopped,
            };
            let Exit::Lost(why) = exit else { return };
            // A session that got as far as LISTEN earns a fast retry; repeated failures to
            // connect back off exponentially.
            if self.stats.connects.load(Ordering::Relaxed) > connects_before {
                backoff = FIRST_RETRY;
            }
            tracing::warn!(error = %why, ?backoff, "change feed lost its connection; reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// One LISTEN session: connect, listen, resync, then follow notifications and
    /// reconcile periodically until the connection fails or the consumer goes away.
    async fn session(&mut self) -> Exit {
        // A dedicated one-connection pool: the LISTENing connection is never shared.
        let options = self.store.connect_options().clone().application_name(&self.options.application_name);
        let pool = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
        {
            Ok(p) => p,
            Err(e) => return Exit::Lost(e.to_string()),
        };
        let exit = self.follow(&pool).await;
        pool.close().await;
        exit
    }

    async fn follow(&mut self, pool: &PgPool) -> Exit {
        let mut listener = match PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => return Exit::Lost(e.to_string()),
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            return Exit::Lost(e.to_string());
        }
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        // Listening first, then resync: a write that commits in between is seen twice at
        // worst, never missed.
        if let Err(e) = self.resync().await {
            return Exit::Lost(e.to_string());
        }
        let mut reconcile = tokio::time::interval(self.options.reconcile_every);
        reconcile.tick().await;
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => match MeshChange::parse(n.payload()) {
                        Some(change) => {
                            if !self.deliver(change).await {
                                return Exit::Stopped;
                            }
                        }
                        None => tracing::warn!(payload = n.payload(), "ignoring malformed change notification"),
                    },
                    Ok(None) => return Exit::Lost("connection closed".into()),
                    Err(e) => return Exit::Lost(e.to_string()),
                },
                _ = reconcile.tick() => {
                    if let Err(e) = self.resync().await {
                        return Exit::Lost(e.to_string());
                    }
                }
            }
        }
    }

    /// Compares every mesh head with what was delivered and delivers the difference.
    async fn resync(&mut self) -> Result<(), StoreError> {
        let rows = self.store.mesh_heads().await?;
        let mut seen = HashMap::with_capacity(rows.len());
        let mut found = Vec::new();
        for change in rows {
            seen.insert((change.org, change.mesh), change.revision);
            if self.heads.get(&(change.org, change.mesh)) < Some(&change.revision) {
                found.push(change);
            }
        }
        let gone: Vec<_> = self
            .heads
            .keys()
            .filter(|k| !seen.contains_key(k))
            .map(|&(org, mesh)| MeshChange { org, mesh, revision: 0 })
            .collect();
        for change in found.into_iter().chain(gone) {
            if self.deliver(change).await {
                self.stats.recovered.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Delivers a change unless it is older than what was delivered already. Returns false
    /// once the consumer has gone.
    async fn deliver(&mut self, change: MeshChange) -> bool {
        let key = (change.org, change.mesh);
        if change.is_deleted() {
            if self.heads.remove(&key).is_none() {
                return true;
            }
        } else {
            match self.heads.get(&key) {
                Some(&r) if r >= change.revision => return true,
                _ => {
                    self.heads.insert(key, change.revision);
                }
            }
        }
        if self.tx.send(change).await.is_err() {
            return false;
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Store {
    /// The head revision of every mesh of every tenant: keys only, read tenant by tenant
    /// through the RLS policies (see `trellis_mesh_heads` in the migrations).
    pub async fn mesh_heads(&self) -> Result<Vec<MeshChange>, StoreError> {
        let rows: Vec<(uuid::Uuid, uuid::Uuid, i64)> =
            sqlx::query_as("SELECT org_id, mesh_id, revision FROM trellis_mesh_heads()")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(o, m, revision)| MeshChange {
                org: OrgId::from_uuid(o),
                mesh: MeshId::from_uuid(m),
                revision,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_only() {
        let org = OrgId::new();
        let mesh = MeshId::new();
        let c = MeshChange::parse(&format!("{org}/{mesh}/42")).unwrap();
        assert_eq!(c, MeshChange { org, mesh, revision: 42 });
        assert!(MeshChange::parse(&format!("{org}/{mesh}/42/x")).is_none());
        assert!(MeshChange::parse(&format!("{org}/{mesh}")).is_none());
        assert!(MeshChange::parse("a/b/c").is_none());
    }
}
