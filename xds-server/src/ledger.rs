//! The propagation ledger's writer: streams report what they sent and what came back; one
//! task writes it to the store in batches, so that no stream waits on the database.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use trellis_model::{MeshId, OrgId};
use trellis_store::Store;
use uuid::Uuid;

/// One fact for the ledger.
#[derive(Debug, Clone)]
pub enum LedgerOp {
    Sent {
        dataplane: Uuid,
        type_url: String,
        version: String,
        nonce: String,
        revision: i64,
    },
    Acked {
        dataplane: Uuid,
        type_url: String,
        version: String,
        convergence_ms: Option<f64>,
    },
    Nacked {
        dataplane: Uuid,
        type_url: String,
        version: String,
        error: String,
    },
    Offline {
        dataplane: Uuid,
        /// When the closing stream registered: a newer registration stays online.
        connected_at: chrono::DateTime<chrono::Utc>,
    },
    /// Every type the stream subscribes to is ACKed at this mesh revision.
    Synced {
        dataplane: Uuid,
        revision: i64,
    },
    /// The readable form of one version of a type's resources (for the config dump).
    Content {
        mesh: MeshId,
        type_url: String,
        version: String,
        resources: serde_json::Value,
    },
}

/// Where streams send ledger facts; full means the database lags, and facts are dropped
/// (the next response or ACK writes the line again).
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<(OrgId, LedgerOp)>,
}

/// Most facts written in one batch.
const BATCH: usize = 512;

impl Ledger {
    pub fn start(store: Store) -> Ledger {
        let (tx, mut rx) = mpsc::channel::<(OrgId, LedgerOp)>(65_536);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let mut by_org: BTreeMap<OrgId, Vec<LedgerOp>> = BTreeMap::new();
                for (org, op) in batch.drain(..) {
                    by_org.entry(org).or_default().push(op);
                }
                for (org, ops) in by_org {
                    if let Err(e) = write(&store, org, &ops).await {
                        tracing::warn!(error = %e, "writing the xDS ledger failed");
                    }
                }
            }
        });
        Ledger { tx }
    }

    pub fn record(&self, org: OrgId, op: LedgerOp) {
        if self.tx.try_send((org, op)).is_err() {
            tracing::debug!("xDS ledger queue full; a fact was dropped");
        }
    }

    /// Writes a fact and waits for it (a stream's end, which must not be lost).
    pub async fn record_now(&self, org: OrgId, op: LedgerOp) {
        let _ = self.tx.send((org, op)).await;
    }
}

async fn write(store: &Store, org: OrgId, ops: &[LedgerOp]) -> Result<(), trellis_store::StoreError> {
    let mut tx = store.tenant(org).await?;
    for op in ops {
        match op {
            LedgerOp::Sent { dataplane, type_url, version, nonce, revision } => {
                tx.ledger_sent(*dataplane, type_url, version, nonce, *revision).await?
            }
            LedgerOp::Acked { dataplane, type_url, version, convergence_ms } => {
                tx.ledger_acked(*dataplane, type_url, version, *convergence_ms).await?
            }
            LedgerOp::Nacked { dataplane, type_url, version, error } => {
                tx.ledger_nacked(*dataplane, type_url, version, error).await?
            }
            LedgerOp::Offline { dataplane, connected_at } => {
                tx.dataplane_offline(*dataplane, *connected_at).await?
            }
            LedgerOp::Synced { dataplane, revision } => tx.dataplane_synced(*dataplane, *revision).await?,
            LedgerOp::Content { mesh, type_url, version, resources } => {
                tx.record_xds_config(*mesh, type_url, version, resources).await?
            }
        }
    }
    tx.commit().await
}
