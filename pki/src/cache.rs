//! What issuing and authenticating in a mesh needs, kept in memory between changes of the
//! mesh, and the batching writer that records issued leaves.
//!
//! A cached mesh is dropped when the change feed reports a new revision of it (every CA
//! state change, bundle change and SVID-lifetime change moves the mesh's revision) and in
//! any case after [`MAX_AGE`], so a lost notification delays a change by at most that long.
//! Signing from a stale cache cannot leak past a rotation: a leaf is recorded only if its
//! CA is still the active one, under a share lock (see
//! `TenantTx::record_leaves_if_active`); otherwise the mesh is reloaded and the CSR signed
//! again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use trellis_ca::{MeshCa, SvidTtl, TrustBundle, TrustDomain};
use trellis_model::{MeshId, OrgId};
use trellis_store::{IssuedLeaf, LeafOutcome, Store};
use uuid::Uuid;

use crate::{Peer, PkiError};

/// Longest time a cached mesh is used without being read again.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(2);
/// Most leaves recorded in one transaction.
const BATCH: usize = 1024;

/// A mesh as issuance and peer authentication see it.
pub(crate) struct MeshIdentity {
    pub org: OrgId,
    pub mesh: String,
    pub trust_domain: TrustDomain,
    /// The active CA, if the mesh has one.
    pub signer: Option<(Uuid, Arc<MeshCa>)>,
    pub ttl: SvidTtl,
    pub bundle: Arc<TrustBundle>,
    pub bundle_pem: String,
    pub loaded: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
pub(crate) struct IdentityCache {
    meshes: Mutex<HashMap<MeshId, Arc<MeshIdentity>>>,
    domains: Mutex<HashMap<String, (OrgId, MeshId, Instant)>>,
    /// One load at a time per mesh, so that a burst of connections reads it once.
    loads: Mutex<HashMap<MeshId, Arc<tokio::sync::Mutex<()>>>>,
    /// Per mesh, grows on every invalidation: a load that started before one is not cached.
    epochs: Mutex<HashMap<MeshId, u64>>,
    /// Client certificate chains already verified, by SHA-256 of the chain: valid while the
    /// mesh they were verified against is the cached one (same bundle) and the leaf lives.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

struct Verified {
    against: Weak<MeshIdentity>,
    peer: Peer,
    not_after: SystemTime,
}

/// Most verified chains remembered.
const MAX_VERIFIED: usize = 65_536;

impl IdentityCache {
    pub fn get(&self, mesh: MeshId) -> Option<Arc<MeshIdentity>> {
        lock(&self.meshes).get(&mesh).filter(|m| m.loaded.elapsed() < MAX_AGE).cloned()
    }

    pub fn epoch(&self, mesh: MeshId) -> u64 {
        lock(&self.epochs).get(&mesh).copied().unwrap_or(0)
    }

    /// Caches `ident` unless the mesh was invalidated since `epoch` was read.
    pub fn put(&self, mesh: MeshId, ident: Arc<MeshIdentity>, epoch: u64) {
        let mut meshes = lock(&self.meshes);
        if self.epoch(mesh) == epoch {
            meshes.insert(mesh, ident);
        }
    }

    pub fn load_lock(&self, mesh: MeshId) -> Arc<tokio::sync::Mutex<()>> {
        let mut loads = lock(&self.loads);
        if loads.len() > 4096 {
            loads.retain(|_, l| Arc::strong_count(l) > 1);
        }
        loads.entry(mesh).or_default().clone()
    }

    pub fn forget(&self, mesh: MeshId) {
        let mut meshes = lock(&self.meshes);
        *lock(&self.epochs).entry(mesh).or_default() += 1;
        meshes.remove(&mesh);
    }

    /// A chain verified before against the mesh as it is cached now, still unexpired.
    pub fn verified(&self, digest: &[u8; 32], now: SystemTime) -> Option<Peer> {
        let v = lock(&self.verified);
        let hit = v.get(digest)?;
        let current = self.get(hit.peer.mesh_id)?;
        (Weak::as_ptr(&hit.against) == Arc::as_ptr(&current) && now < hit.not_after).then(|| hit.peer.clone())
    }

    pub fn remember_verified(
        &self,
        digest: [u8; 32],
        against: &Arc<MeshIdentity>,
        peer: Peer,
        not_after: SystemTime,
    ) {
        let mut v = lock(&self.verified);
        if v.len() >= MAX_VERIFIED {
            v.retain(|_, e| e.against.strong_count() > 0);
            if v.len() >= MAX_VERIFIED {
                v.clear();
            }
        }
        v.insert(digest, Verified { against: Arc::downgrade(against), peer, not_after });
    }

    pub fn forget_domain(&self, td: &str) {
        lock(&self.domains).remove(td);
    }

    pub fn forget_domains_of(&self, mesh: MeshId) {
        lock(&self.domains).retain(|_, (_, m, _)| *m != mesh);
    }

    pub fn domain(&self, td: &str) -> Option<(OrgId, MeshId)> {
        lock(&self.domains).get(td).filter(|(_, _, at)| at.elapsed() < MAX_AGE).map(|(o, m, _)| (*o, *m))
    }

    pub fn put_domain(&self, td: &str, org: OrgId, mesh: MeshId) {
        let mut domains = lock(&self.domains);
        if domains.len() > 65_536 {
            domains.retain(|_, (_, _, at)| at.elapsed() < MAX_AGE);
        }
        domains.insert(td.to_owned(), (org, mesh, Instant::now()));
    }
}

struct LeafJob {
    org: OrgId,
    mesh: MeshId,
    leaf: IssuedLeaf,
    done: oneshot::Sender<Result<LeafOutcome, String>>,
}

/// Records issued leaves in batches: whatever arrives while one transaction commits goes
/// into the next, so concurrent issuances share commits.
pub(crate) struct LeafWriter {
    tx: mpsc::Sender<LeafJob>,
}

impl LeafWriter {
    /// Starts the writer task (call from within the runtime).
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(4 * BATCH);
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Records one leaf, unless its CA is no longer the active one or its service is gone.
    pub async fn record(&self, org: OrgId, mesh: MeshId, leaf: IssuedLeaf) -> Result<LeafOutcome, PkiError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(LeafJob { org, mesh, leaf, done })
            .await
            .map_err(|_| PkiError::internal("the leaf writer stopped"))?;
        rx.await.map_err(|_| PkiError::internal("the leaf writer stopped"))?.map_err(PkiError::Internal)
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<LeafJob>) {
    let mut jobs = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut jobs, BATCH).await > 0 {
        // Group by tenant, remembering where each job's answer is.
        let mut groups: Vec<(OrgId, Vec<(MeshId, IssuedLeaf)>)> = Vec::new();
        let mut at = Vec::with_capacity(jobs.len());
        for j in &jobs {
            let g = match groups.iter().position(|(o, _)| *o == j.org) {
                Some(g) => g,
                None => {
                    groups.push((j.org, Vec::new()));
                    groups.len() - 1
                }
            };
            at.push((g, groups[g].1.len()));
            groups[g].1.push((j.mesh, j.leaf.clone()));
        }
        let result = store.record_leaves_batch(&groups).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, leaves = jobs.len(), "recording issued leaves failed");
        }
        for (j, (g, i)) in jobs.drain(..).zip(at) {
            let answer = match &result {
                Ok(r) => Ok(r[g][i]),
                Err(e) => Err(format!("recording the issued leaf: {e}")),
            };
            let _ = j.done.send(answer);
        }
    }
}
