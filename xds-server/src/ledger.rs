//! The propagation ledger's writer: streams report what they sent and what came back; one
//! task writes it to the store in batches, so that no stream waits on the database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use trellis_model::{MeshId, OrgId};
use trellis_store::{Registration, Store, StoreError};
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
    /// What the resources sent to the dataplane configure: the services it calls, and
    /// whether its own inbound side.
    Reach {
        dataplane: Uuid,
        calls: Vec<String>,
        serves: bool,
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

/// A dataplane's registration, answered once it is committed.
struct Register {
    mesh: MeshId,
    registration: Registration,
    done: oneshot::Sender<Result<(Uuid, DateTime<Utc>), String>>,
}

enum Item {
    Fact(LedgerOp),
    Register(Register),
}

/// Where streams send ledger facts and registrations. Full means the database lags: facts
/// are then dropped (the next response or ACK writes the line again); registrations wait.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<(OrgId, Item)>,
}

/// Most facts written in one batch.
const BATCH: usize = 512;

impl Ledger {
    pub fn start(store: Store) -> Ledger {
        let (tx, mut rx) = mpsc::channel::<(OrgId, Item)>(65_536);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let mut by_org: BTreeMap<OrgId, (Vec<Register>, Vec<LedgerOp>)> = BTreeMap::new();
                for (org, item) in batch.drain(..) {
                    let (regs, ops) = by_org.entry(org).or_default();
                    match item {
                        Item::Fact(op) => ops.push(op),
                        Item::Register(r) => regs.push(r),
                    }
                }
                write(&store, by_org).await;
            }
        });
        Ledger { tx }
    }

    /// Queues a fact; false when the queue was full and it was dropped.
    pub fn record(&self, org: OrgId, op: LedgerOp) -> bool {
        let queued = self.tx.try_send((org, Item::Fact(op))).is_ok();
        if !queued {
            tracing::debug!("xDS ledger queue full; a fact was dropped");
        }
        queued
    }

    /// Writes a fact and waits for it (a stream's end, which must not be lost).
    pub async fn record_now(&self, org: OrgId, op: LedgerOp) {
        let _ = self.tx.send((org, Item::Fact(op))).await;
    }

    /// Registers (or registers again) a dataplane, committed with whatever else is queued:
    /// its id and the time of this registration.
    pub async fn register(
        &self,
        org: OrgId,
        mesh: MeshId,
        registration: Registration,
    ) -> Result<(Uuid, DateTime<Utc>), String> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send((org, Item::Register(Register { mesh, registration, done })))
            .await
            .map_err(|_| "the ledger writer stopped".to_owned())?;
        answer.await.map_err(|_| "the ledger writer stopped".to_owned())?
    }
}

/// Writes one batch in one transaction (one commit), tenant by tenant: registrations first,
/// then the facts, which may name a dataplane registered in the same batch.
async fn write(store: &Store, by_org: BTreeMap<OrgId, (Vec<Register>, Vec<LedgerOp>)>) {
    let mut answers = Vec::new();
    let result = async {
        let mut tx: Option<trellis_store::TenantTx> = None;
        for (org, (regs, ops)) in &by_org {
            let tx = match &mut tx {
                Some(tx) => {
                    tx.rebind(*org).await?;
                    tx
                }
                None => tx.insert(store.tenant(*org).await?),
            };
            for r in regs {
                let dp = tx.register_dataplane(r.mesh, &r.registration).await?;
                answers.push((dp.id, dp.connected_at));
            }
            for op in ops {
                apply(tx, op).await?;
            }
        }
        match tx {
            Some(tx) => tx.commit().await,
            None => Ok(()),
        }
    }
    .await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, "writing the xDS ledger failed");
    }
    let mut answers = answers.into_iter();
    for (_, (regs, _)) in by_org {
        for r in regs {
            let answer = match &result {
                Ok(()) => answers.next().ok_or_else(|| "registration lost".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            let _ = r.done.send(answer);
        }
    }
}

async fn apply(tx: &mut trellis_store::TenantTx, op: &LedgerOp) -> Result<(), StoreError> {
    match op {
        LedgerOp::Sent { dataplane, type_url, version, nonce, revision } => {
            tx.ledger_sent(*dataplane, type_url, version, nonce, *revision).await
        }
        LedgerOp::Acked { dataplane, type_url, version, convergence_ms } => {
            tx.ledger_acked(*dataplane, type_url, version, *convergence_ms).await
        }
        LedgerOp::Nacked { dataplane, type_url, version, error } => {
            tx.ledger_nacked(*dataplane, type_url, version, error).await
        }
        LedgerOp::Offline { dataplane, connected_at } => {
            tx.dataplane_offline(*dataplane, *connected_at).await
        }
        LedgerOp::Synced { dataplane, revision } => tx.dataplane_synced(*dataplane, *revision).await,
        LedgerOp::Reach { dataplane, calls, serves } => tx.dataplane_reach(*dataplane, calls, *serves).await,
        LedgerOp::Content { mesh, type_url, version, resources } => {
            tx.record_xds_config(*mesh, type_url, version, resources).await
        }
    }
}
