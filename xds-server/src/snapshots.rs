//! The snapshot engine: one current, immutable state per mesh that some stream watches,
//! rebuilt from the store when the change feed names the mesh — once per debounce window,
//! with a bound on concurrent rebuilds — and shared (`Arc`) by every stream of the mesh.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, watch};
use trellis_model::config::{Kind, MeshSpec, Spec, Tags, parse_mesh_spec};
use trellis_model::{MeshId, OrgId};
use trellis_store::{MeshChange, Selector, Store, StoreError};
use trellis_xds::sotw::Snapshot;
use trellis_xds::{Endpoint, MeshView};

/// Most resources of one mesh read for a snapshot (the API bounds what a mesh holds).
const MAX_RESOURCES: i64 = 100_000;

/// One mesh at one revision: the parsed view and the resources every gRPC client shares.
#[derive(Debug)]
pub struct MeshState {
    pub org: OrgId,
    pub mesh: MeshId,
    pub revision: i64,
    /// When the mesh's latest write committed (for the ledger's convergence times).
    pub committed_at: DateTime<Utc>,
    pub view: Arc<MeshView>,
    /// Every Service of the mesh by name, whether or not its stored spec still parses: the
    /// services whose workloads may be served.
    pub services: BTreeSet<String>,
    pub grpc: Arc<Snapshot>,
    /// The mesh's trust bundle (PEM), for the SDS secret sidecars verify peers with.
    pub bundle_pem: String,
    /// Sidecar resources by (service, inbound ports, certificate directory), built on first
    /// use and shared by every proxy with the same key.
    sidecars: Mutex<HashMap<SidecarKey, Arc<Snapshot>>>,
}

impl MeshState {
    /// The resources of an Envoy sidecar (or the agent) of `service` with these inbound ports.
    pub fn sidecar(&self, service: &str, ports: &[u32], cert_dir: &str) -> Arc<Snapshot> {
        let key = (service.to_owned(), ports.to_vec(), cert_dir.to_owned());
        let mut cache = self.sidecars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(&key) {
            return s.clone();
        }
        let mut r = trellis_xds::envoy_sidecar(&self.view, service, ports);
        r.secrets = trellis_xds::sds_secrets(&self.bundle_pem, cert_dir);
        let snap = Arc::new(Snapshot::from_resources(&r));
        cache.insert(key, snap.clone());
        snap
    }
}

/// A sidecar's resources depend on its service, inbound ports and certificate directory.
type SidecarKey = (String, Vec<u32>, String);

/// What a stream watches: `None` once the mesh is gone.
pub type MeshWatch = watch::Receiver<Option<Arc<MeshState>>>;

struct Entry {
    org: OrgId,
    tx: watch::Sender<Option<Arc<MeshState>>>,
    scheduled: bool,
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Changes closer together than this are built once.
    pub debounce: Duration,
    /// Most meshes rebuilt at the same time.
    pub max_concurrent_builds: usize,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self { debounce: Duration::from_millis(20), max_concurrent_builds: 4 }
    }
}

pub struct Snapshots {
    store: Store,
    options: SnapshotOptions,
    meshes: Mutex<HashMap<MeshId, Entry>>,
    /// One gate per mesh whose first build is under way.
    first_builds: Mutex<HashMap<MeshId, Arc<tokio::sync::Mutex<()>>>>,
    /// Meshes that changed while their first build was under way: that build may have read
    /// the mesh before the change, and no entry was there yet to schedule another. Locked
    /// after `meshes`.
    changed_while_building: Mutex<HashSet<MeshId>>,
    builds: Semaphore,
}

impl Snapshots {
    pub fn new(store: Store, options: SnapshotOptions) -> Arc<Self> {
        let builds = Semaphore::new(options.max_concurrent_builds.max(1));
        Arc::new(Self {
            store,
            options,
            meshes: Mutex::new(HashMap::new()),
            first_builds: Mutex::new(HashMap::new()),
            changed_while_building: Mutex::new(HashSet::new()),
            builds,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MeshId, Entry>> {
        self.meshes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches a mesh, building its state first if no stream watched it yet. Streams of a
    /// mesh that arrive together (a reconnect storm) wait for one build instead of each
    /// making its own.
    pub async fn watch(self: &Arc<Self>, org: OrgId, mesh: MeshId) -> Result<MeshWatch, StoreError> {
        if let Some(e) = self.lock().get(&mesh) {
            return Ok(e.tx.subscribe());
        }
        let gate =
            self.first_builds.lock().unwrap_or_else(|e| e.into_inner()).entry(mesh).or_default().clone();
        let _building = gate.lock().await;
        if let Some(e) = self.lock().get(&mesh) {
            return Ok(e.tx.subscribe());
        }
        let state = {
            let _permit = self.builds.acquire().await.ok();
            build(&self.store, org, mesh).await?
        };
        let mut meshes = self.lock();
        let entry = meshes.entry(mesh).or_insert_with(|| Entry {
            org,
            tx: watch::channel(state.map(Arc::new)).0,
            scheduled: false,
        });
        let rx = entry.tx.subscribe();
        let missed = self.changed_while_building.lock().unwrap_or_else(|e| e.into_inner()).remove(&mesh);
        drop(meshes);
        self.first_builds.lock().unwrap_or_else(|e| e.into_inner()).remove(&mesh);
        if missed {
            self.schedule_rebuild(mesh);
        }
        Ok(rx)
    }

    /// The change feed named a mesh: rebuild it after the debounce window, if anyone watches.
    pub fn on_change(self: &Arc<Self>, change: MeshChange) {
        self.schedule_rebuild(change.mesh);
    }

    /// Rebuilds `mesh` after the debounce window if anyone watches it, or notes the change
    /// for the first build under way.
    fn schedule_rebuild(self: &Arc<Self>, mesh: MeshId) {
        let mut meshes = self.lock();
        let Some(entry) = meshes.get_mut(&mesh) else {
            if self.first_builds.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&mesh) {
                self.changed_while_building.lock().unwrap_or_else(|e| e.into_inner()).insert(mesh);
            }
            return;
        };
        if entry.tx.receiver_count() == 0 {
            meshes.remove(&mesh);
            return;
        }
        if entry.scheduled {
            return;
        }
        entry.scheduled = true;
        let org = entry.org;
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.options.debounce).await;
            this.rebuild(org, mesh).await;
        });
    }

    async fn rebuild(&self, org: OrgId, mesh: MeshId) {
        if let Some(e) = self.lock().get_mut(&mesh) {
            // Changes from here on schedule another build.
            e.scheduled = false;
        }
        let built = {
            let _permit = self.builds.acquire().await.ok();
            build(&self.store, org, mesh).await
        };
        let state = match built {
            Ok(s) => s.map(Arc::new),
            Err(e) => {
                tracing::warn!(%mesh, error = %e, "rebuilding a mesh failed; the periodic reconcile retries");
                return;
            }
        };
        let meshes = self.lock();
        if let Some(entry) = meshes.get(&mesh) {
            entry.tx.send_if_modified(|current| {
                let same = match (current.as_ref(), state.as_ref()) {
                    (Some(a), Some(b)) => {
                        a.revision == b.revision && a.grpc == b.grpc && a.bundle_pem == b.bundle_pem
                    }
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    *current = state;
                }
                !same
            });
        }
    }
}

/// Reads a mesh from the store and translates it; `None` when it does not exist.
pub async fn build(store: &Store, org: OrgId, mesh_id: MeshId) -> Result<Option<MeshState>, StoreError> {
    let mut tx = store.tenant(org).await?;
    let Some(mesh) = tx.mesh_by_id(mesh_id).await? else { return Ok(None) };
    let resources = tx.list_resources(mesh_id, None, &Selector::default(), None, MAX_RESOURCES).await?;
    let dataplanes = tx.list_dataplanes(mesh_id).await?;
    let bundle_pem: String = tx
        .bundle_roots(mesh_id)
        .await?
        .iter()
        .map(|der| trellis_ca::pem_encode("CERTIFICATE", der))
        .collect();
    tx.commit().await?;

    let spec: MeshSpec = parse_mesh_spec("spec", mesh.spec.clone()).unwrap_or_default();
    let mut view =
        MeshView::new(mesh.name.as_str(), mesh.trust_domain.clone(), spec.mtls.mode, spec.default_access);
    let mut services = BTreeSet::new();
    for r in resources {
        let Some(kind) = Kind::lookup(&r.kind) else { continue };
        let name = r.name.as_str().to_owned();
        if kind == Kind::Service {
            services.insert(name.clone());
        }
        // Stored specs were validated on the way in; one that no longer parses (a model
        // change) is left out rather than breaking the whole mesh.
        let Ok(parsed) = Spec::parse(kind, "spec", r.spec) else {
            tracing::warn!(kind = %r.kind, %name, "stored resource does not parse; left out of xDS");
            continue;
        };
        view.add(name, parsed.spec);
    }
    for dp in dataplanes {
        let Some(address) = dp.address.map(|a| a.addr()) else { continue };
        // Tags are parsed at registration; a row written under older rules that no longer
        // parses keeps its endpoint in the service's cluster, in no subset, until it re-registers.
        let tags: Tags = serde_json::from_value(dp.tags.clone()).unwrap_or_else(|e| {
            tracing::warn!(node = %dp.node_id, error = %e, "stored dataplane tags do not parse; in no subset");
            Tags::new()
        });
        for port in dp.ports.iter().filter_map(|p| u32::try_from(*p).ok()) {
            view.endpoints.push(Endpoint {
                service: dp.service.clone(),
                address,
                port,
                tags: tags.clone(),
                zone: dp.zone.clone(),
                // A disconnected proxy stays listed, unhealthy, until the grace period ends.
                healthy: dp.online,
            });
        }
    }
    view.endpoints.sort_by(|a, b| (&a.service, a.address, a.port).cmp(&(&b.service, b.address, b.port)));
    view.endpoints.dedup();
    let grpc = Arc::new(Snapshot::from_resources(&trellis_xds::grpc_client(&view)));
    Ok(Some(MeshState {
        org,
        mesh: mesh_id,
        revision: mesh.revision,
        committed_at: mesh.updated_at,
        view: Arc::new(view),
        services,
        grpc,
        bundle_pem,
        sidecars: Mutex::new(HashMap::new()),
    }))
}
