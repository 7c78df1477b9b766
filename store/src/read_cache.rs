//! A replica's cache of API-token reads of one resource — the GET that Terraform plans, the
//! console and CI pipelines repeat — answered without a statement of its own when nothing it
//! holds has changed, and never staler than a read of the database made when the request
//! arrived.
//!
//! Every change a cached answer depends on notifies: `trellis_mesh_changed` for a mesh and its
//! resources, `trellis_reads_changed` for tokens, organizations and propagation (migration
//! 0026), each naming the organization, whose cached answers are then forgotten. PostgreSQL
//! delivers notifications in commit order, so a read first sends a *fence* — a notification of
//! its own, sent after the request arrived — and answers once the listener has received it:
//! by then every change committed before the request was applied, and a token revoked on any
//! replica is refused at once on this one. One fence in flight serves every read that arrived
//! before it was sent. Whenever the cache cannot vouch for an answer (the listener is down or
//! reconnecting, a fence is late, a change landed while a miss was being read), the read goes
//! to the database exactly as it would without the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trellis_model::OrgId;

use crate::feed::{CHANNEL as MESH_CHANNEL, MeshChange};
use crate::reads::{ResourceKey, TokenRead};
use crate::{ApiToken, Mesh, Org, Reached, Resource, Store, StoreError};

/// Where migration 0026's triggers say that an organization's cached reads are stale.
const READS_CHANNEL: &str = "trellis_reads_changed";
/// Where this cache's fences travel, `<instance>/<fence number>`.
const FENCE_CHANNEL: &str = "trellis_read_fence";
/// How long a read waits for its fence before it reads the database instead.
const FENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// Cached tokens and resource views, together, at most.
const MAX_ENTRIES: usize = 20_000;
/// How often a token read from the cache is marked used, like `trellis_authenticate_token`.
const MARK_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// The cache and its two tasks (the listener and the fence sender); cloned with the
/// [`Store`] that uses it, stopped when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct ReadCache {
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
}

/// How reads went, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReadCacheStats {
    /// Answered from the cache.
    pub hits: AtomicU64,
    /// Read from the database, then kept (when nothing changed meanwhile).
    pub misses: AtomicU64,
    /// Read from the database because the cache could not vouch for itself (no listener, a
    /// late fence).
    pub bypassed: AtomicU64,
}

struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

struct Shared {
    state: Mutex<State>,
    /// Tells this cache's fences from other replicas'.
    instance: u64,
    /// The last fence sent.
    issued: AtomicU64,
    /// The fence the waiting reads need sent.
    demand: watch::Sender<u64>,
    /// The last fence received, after every notification before it was applied.
    arrived: watch::Sender<u64>,
    /// The listener is following notifications now.
    listening: AtomicBool,
    stats: Arc<ReadCacheStats>,
}

#[derive(Default)]
struct State {
    /// Bumped whenever everything is forgotten (the listener reconnected or was lost).
    epoch: u64,
    /// Bumped whenever an organization with no entries is named by a notification. An
    /// organization gets entries only when one of its tokens read something, so that
    /// requests naming made-up organizations leave nothing behind.
    absent_forgets: u64,
    orgs: HashMap<OrgId, OrgEntries>,
    entries: usize,
}

#[derive(Default)]
struct OrgEntries {
    /// Bumped whenever this organization's entries are forgotten.
    epoch: u64,
    tokens: HashMap<[u8; 32], (ApiToken, Org)>,
    views: HashMap<ViewKey, View>,
}

#[derive(PartialEq, Eq, Hash)]
struct ViewKey {
    mesh: String,
    kind: String,
    name: String,
}

#[derive(Clone)]
struct View {
    mesh: Mesh,
    resource: Resource,
    reached: Option<Reached>,
}

/// What the cache had seen when a miss began to read the database: its answer is kept only
/// if nothing of its organization was forgotten since.
struct Snapshot {
    epoch: u64,
    /// The organization's epoch, or what was forgotten of absent ones when it had no entries.
    org: Result<u64, u64>,
}

impl ReadCache {
    /// Starts following `store`'s notifications and sending fences through its pool.
    pub(crate) fn start(store: &Store) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            instance: rand::random(),
            issued: AtomicU64::new(0),
            demand: watch::Sender::new(0),
            arrived: watch::Sender::new(0),
            listening: AtomicBool::new(false),
            stats: Arc::default(),
        });
        // A fence commits a transaction (PostgreSQL gives a notification's transaction an id);
        // waiting for its commit to reach the disk would make every read wait for an fsync.
        let fences =
            PgPoolOptions::new().max_connections(1).acquire_timeout(FENCE_TIMEOUT).connect_lazy_with(
                store
                    .connect_options()
                    .clone()
                    .application_name("trellis-read-fence")
                    .options([("synchronous_commit", "off")]),
            );
        let tasks = vec![
            tokio::spawn(listen(store.clone(), shared.clone())),
            tokio::spawn(send_fences(fences, shared.clone())),
        ];
        ReadCache { shared, _tasks: Arc::new(Tasks(tasks)) }
    }

    pub(crate) fn stats(&self) -> Arc<ReadCacheStats> {
        self.shared.stats.clone()
    }

    /// `store.read_resource_uncached`, answered from the cache when it can vouch for it.
    pub(crate) async fn read(
        &self,
        store: &Store,
        org: OrgId,
        sha256: &[u8; 32],
        key: &ResourceKey<'_>,
    ) -> Result<Option<TokenRead>, StoreError> {
        let stats = &self.shared.stats;
        if !self.shared.fence().await {
            stats.bypassed.fetch_add(1, Ordering::Relaxed);
            return store.read_resource_uncached(org, sha256, key).await;
        }
        let now = Utc::now();
        let (hit, snapshot) = self.shared.lookup(org, sha256, key, now);
        if let Some((read, mark)) = hit {
            stats.hits.fetch_add(1, Ordering::Relaxed);
            if mark {
                let (store, sha256) = (store.clone(), *sha256);
                tokio::spawn(async move {
                    if let Err(e) = store.mark_token_used(org, &sha256).await {
                        tracing::debug!(error = %e, "marking a cached API token used");
                    }
                });
            }
            return Ok(Some(read));
        }
        stats.misses.fetch_add(1, Ordering::Relaxed);
        let read = store.read_resource_uncached(org, sha256, key).await?;
        if let Some(read) = &read {
            self.shared.keep(snapshot, org, sha256, key, read, now);
        }
        Ok(read)
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a cache: a panic elsewhere while it was held leaves nothing to protect.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until a fence sent after this call has come back. False: the cache cannot vouch
    /// for anything now.
    async fn fence(&self) -> bool {
        if !self.listening.load(Ordering::SeqCst) {
            return false;
        }
        // The fence in flight may have been sent before this request arrived; the next one
        // is sent after.
        let target = self.issued.load(Ordering::SeqCst) + 1;
        self.demand.send_if_modified(|d| {
            let more = *d < target;
            if more {
                *d = target;
            }
            more
        });
        let mut arrived = self.arrived.subscribe();
        matches!(tokio::time::timeout(FENCE_TIMEOUT, arrived.wait_for(|a| *a >= target)).await, Ok(Ok(_)))
    }

    /// The cached answer, if both the token and the view are held, and whether the token is
    /// due a use mark; otherwise where the cache stood, for keeping what the database answers.
    fn lookup(
        &self,
        org: OrgId,
        sha256: &[u8; 32],
        key: &ResourceKey<'_>,
        now: DateTime<Utc>,
    ) -> (Option<(TokenRead, bool)>, Snapshot) {
        let mut state = self.state();
        let (epoch, absent_forgets) = (state.epoch, state.absent_forgets);
        let Some(entries) = state.orgs.get_mut(&org) else {
            return (None, Snapshot { epoch, org: Err(absent_forgets) });
        };
        let snapshot = Snapshot { epoch, org: Ok(entries.epoch) };
        let view_key = ViewKey { mesh: key.mesh.into(), kind: key.kind.into(), name: key.name.into() };
        let Some((token, org_row)) = entries.tokens.get_mut(sha256) else { return (None, snapshot) };
        let live = token.revoked_at.is_none() && token.expires_at.is_none_or(|e| e > now);
        let Some(view) = entries.views.get(&view_key).filter(|_| live) else { return (None, snapshot) };
        let mark = token.last_used_at.is_none_or(|at| at < now - MARK_EVERY);
        if mark {
            token.last_used_at = Some(now);
        }
        let read = TokenRead {
            token: token.clone(),
            org: org_row.clone(),
            mesh: Some(view.mesh.clone()),
            resource: Some((view.resource.clone(), view.reached.clone())),
        };
        (Some((read, mark)), snapshot)
    }

    /// Keeps what a miss read, unless something of its organization was forgotten since the
    /// miss began (the answer may predate that change) or the cache is full. Only whole
    /// answers are kept: a missing mesh or resource is read again next time.
    fn keep(
        &self,
        snapshot: Snapshot,
        org: OrgId,
        sha256: &[u8; 32],
        key: &ResourceKey<'_>,
        read: &TokenRead,
        now: DateTime<Utc>,
    ) {
        let (Some(mesh), Some((resource, reached))) = (&read.mesh, &read.resource) else { return };
        let mut state = self.state();
        if state.epoch != snapshot.epoch || state.entries + 2 > MAX_ENTRIES {
            return;
        }
        let now_org = state.orgs.get(&org).map(|e| e.epoch).ok_or(state.absent_forgets);
        if now_org != snapshot.org {
            return;
        }
        let entries = state.orgs.entry(org).or_default();
        // The database marked the token used as it read it (or had within the minute).
        let token = ApiToken { last_used_at: Some(now), ..read.token.clone() };
        let mut added = usize::from(entries.tokens.insert(*sha256, (token, read.org.clone())).is_none());
        let view = View { mesh: mesh.clone(), resource: resource.clone(), reached: reached.clone() };
        let view_key = ViewKey { mesh: key.mesh.into(), kind: key.kind.into(), name: key.name.into() };
        added += usize::from(entries.views.insert(view_key, view).is_none());
        state.entries += added;
    }

    /// Forgets an organization's entries.
    fn forget(&self, org: OrgId) {
        let mut state = self.state();
        let Some(entries) = state.orgs.get_mut(&org) else {
            state.absent_forgets += 1;
            return;
        };
        entries.epoch += 1;
        let dropped = entries.tokens.len() + entries.views.len();
        entries.tokens.clear();
        entries.views.clear();
        state.entries -= dropped;
    }

    /// Forgets everything: notifications may have been missed.
    fn forget_all(&self) {
        let mut state = self.state();
        state.epoch += 1;
        state.orgs.clear();
        state.entries = 0;
    }

    /// Applies one notification, in the order PostgreSQL delivered it.
    fn apply(&self, channel: &str, payload: &str) {
        let org = match channel {
            MESH_CHANNEL => MeshChange::parse(payload).map(|c| c.org),
            READS_CHANNEL => payload.parse().ok(),
            _ => {
                let fence = payload.split_once('/').and_then(|(instance, n)| {
                    (instance.parse() == Ok(self.instance)).then(|| n.parse::<u64>().ok()).flatten()
                });
                if let Some(n) = fence {
                    self.arrived.send_if_modified(|a| {
                        let later = *a < n;
                        if later {
                            *a = n;
                        }
                        later
                    });
                }
                return;
            }
        };
        match org {
            Some(org) => self.forget(org),
            None => {
                tracing::warn!(channel, payload, "unreadable notification: forgetting every cached read");
                self.forget_all();
            }
        }
    }
}

/// Follows the notifications on a connection of its own, reconnecting after a loss; the
/// cache vouches for nothing while it is not listening.
async fn listen(store: Store, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let why = follow(&store, &shared).await;
        shared.listening.store(false, Ordering::SeqCst);
        shared.forget_all();
        tracing::warn!(error = %why, ?backoff, "read cache lost its notifications; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn follow(store: &Store, shared: &Shared) -> String {
    let options = store.connect_options().clone().application_name("trellis-read-cache");
    let pool = match PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
    {
        Ok(pool) => pool,
        Err(e) => return e.to_string(),
    };
    let mut listener = match PgListener::connect_with(&pool).await {
        Ok(listener) => listener,
        Err(e) => return e.to_string(),
    };
    if let Err(e) = listener.listen_all([MESH_CHANNEL, READS_CHANNEL, FENCE_CHANNEL]).await {
        return e.to_string();
    }
    // Listening first, then forgetting: whatever is kept from now on is followed.
    shared.forget_all();
    shared.listening.store(true, Ordering::SeqCst);
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => shared.apply(n.channel(), n.payload()),
            Ok(None) => return "connection closed".into(),
            Err(e) => return e.to_string(),
        }
    }
}

/// Sends the fence the waiting reads need, one at a time: a read that arrives while one is
/// in flight waits for the next, which goes out as soon as the one in flight came back (or
/// was given up).
async fn send_fences(pool: PgPool, shared: Arc<Shared>) {
    let mut demand = shared.demand.subscribe();
    let mut arrived = shared.arrived.subscribe();
    loop {
        let issued = shared.issued.load(Ordering::SeqCst);
        if demand.wait_for(|d| *d > issued).await.is_err() {
            return;
        }
        let n = issued + 1;
        shared.issued.store(n, Ordering::SeqCst);
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(FENCE_CHANNEL)
            .bind(format!("{}/{n}", shared.instance))
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "sending a read fence");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let _ = tokio::time::timeout(FENCE_TIMEOUT, arrived.wait_for(|a| *a >= n)).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use trellis_model::config::Reach;
    use trellis_model::{MeshId, MeshName, OrgSlug, ResourceName, Role, TrustDomain};
    use uuid::Uuid;

    use super::*;

    fn shared() -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            instance: 7,
            issued: AtomicU64::new(0),
            demand: watch::Sender::new(0),
            arrived: watch::Sender::new(0),
            listening: AtomicBool::new(true),
            stats: Arc::default(),
        }
    }

    const KEY: ResourceKey<'static> = ResourceKey {
        mesh: "shop",
        kind: "HTTPRoute",
        name: "reviews",
        reach: Reach { callers: true, instances: false },
    };

    fn read(org: OrgId, expires_at: Option<DateTime<Utc>>) -> TokenRead {
        let now = Utc::now();
        let mesh = Mesh {
            id: MeshId::new(),
            name: MeshName::parse("shop").unwrap(),
            trust_domain: TrustDomain::parse("shop.acme.trellis").unwrap(),
            spec: json!({}),
            labels: json!({}),
            generation: 1,
            version: Uuid::new_v4(),
            revision: 3,
            created_at: now,
            updated_at: now,
        };
        let resource = Resource {
            id: Uuid::new_v4(),
            mesh_id: mesh.id,
            kind: "HTTPRoute".into(),
            name: ResourceName::parse("reviews").unwrap(),
            spec: json!({"rules": []}),
            labels: json!({}),
            generation: 1,
            version: Uuid::new_v4(),
            created_at: now,
            updated_at: now,
            mesh_revision: Some(3),
            target: Some("reviews".into()),
        };
        TokenRead {
            token: ApiToken {
                id: Uuid::new_v4(),
                name: "ci".into(),
                role: Role::Viewer,
                created_by: "test".into(),
                created_at: now,
                expires_at,
                revoked_at: None,
                last_used_at: None,
            },
            org: Org { id: org, slug: OrgSlug::parse("acme").unwrap(), name: "Acme".into(), created_at: now },
            mesh: Some(mesh),
            resource: Some((resource, Some(Reached::default()))),
        }
    }

    /// A miss's lookup, its read from the database, then what the cache keeps of it.
    fn miss_then_keep(cache: &Shared, org: OrgId, sha: &[u8; 32], between: impl FnOnce()) {
        let (hit, snapshot) = cache.lookup(org, sha, &KEY, Utc::now());
        assert!(hit.is_none());
        between();
        cache.keep(snapshot, org, sha, &KEY, &read(org, None), Utc::now());
    }

    fn hits(cache: &Shared, org: OrgId, sha: &[u8; 32]) -> bool {
        cache.lookup(org, sha, &KEY, Utc::now()).0.is_some()
    }

    #[test]
    fn a_kept_answer_is_a_hit_until_its_organization_changes() {
        let cache = shared();
        let (acme, other, sha) = (OrgId::new(), OrgId::new(), [1; 32]);
        miss_then_keep(&cache, acme, &sha, || {});
        assert!(hits(&cache, acme, &sha));
        assert!(!hits(&cache, acme, &[2; 32]), "another token");
        assert!(!hits(&cache, other, &sha), "another organization");
        cache.apply(READS_CHANNEL, &other.to_string());
        assert!(hits(&cache, acme, &sha), "another organization's change");
        cache.apply(MESH_CHANNEL, &format!("{acme}/{}/9", MeshId::new()));
        assert!(!hits(&cache, acme, &sha));
        assert_eq!(cache.state().entries, 0);
    }

    #[test]
    fn an_answer_read_while_its_organization_changed_is_not_kept() {
        let cache = shared();
        let (acme, sha) = (OrgId::new(), [1; 32]);
        // The organization has no entries yet, then it has.
        miss_then_keep(&cache, acme, &sha, || cache.apply(READS_CHANNEL, &acme.to_string()));
        assert!(!hits(&cache, acme, &sha));
        miss_then_keep(&cache, acme, &sha, || {});
        let sha2 = [2; 32];
        miss_then_keep(&cache, acme, &sha2, || cache.apply(READS_CHANNEL, &acme.to_string()));
        assert!(!hits(&cache, acme, &sha2) && !hits(&cache, acme, &sha));
        // Everything forgotten (a reconnect), and an unreadable notification.
        miss_then_keep(&cache, acme, &sha, || cache.forget_all());
        assert!(!hits(&cache, acme, &sha));
        miss_then_keep(&cache, acme, &sha, || {});
        cache.apply(READS_CHANNEL, "not an organization");
        assert!(!hits(&cache, acme, &sha));
    }

    #[test]
    fn expired_tokens_miss_and_made_up_organizations_leave_nothing() {
        let cache = shared();
        let (acme, sha) = (OrgId::new(), [1; 32]);
        let (_, snapshot) = cache.lookup(acme, &sha, &KEY, Utc::now());
        let expired = read(acme, Some(Utc::now() - chrono::TimeDelta::seconds(1)));
        cache.keep(snapshot, acme, &sha, &KEY, &expired, Utc::now());
        assert!(!hits(&cache, acme, &sha));
        for _ in 0..100 {
            assert!(!hits(&cache, OrgId::new(), &sha));
        }
        assert_eq!(cache.state().orgs.len(), 1);
    }

    #[test]
    fn only_this_caches_fences_count() {
        let cache = shared();
        cache.apply(FENCE_CHANNEL, "8/5");
        assert_eq!(*cache.arrived.borrow(), 0);
        cache.apply(FENCE_CHANNEL, "7/5");
        cache.apply(FENCE_CHANNEL, "7/4");
        assert_eq!(*cache.arrived.borrow(), 5);
    }
}
