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
    /// The dataplane ended its stream itself, as a proxy that is leaving does: out of the
    /// endpoints at once (a newer registration stays).
    Left {
        dataplane: Uuid,
        connected_at: chrono::DateTime<chrono::Utc>,
    },
    /// What the resources sent to the dataplane configure: the services it calls, and
    /// whether its own inbound side.
    Reach {
        dataplane: Uuid,
        calls: Vec<String>,
        serves: bool,
    },
    /// The SVID the stream presented (an older one never replaces a newer one).
    Svid {
        dataplane: Uuid,
        serial: String,
        not_after: DateTime<Utc>,
    },
    /// A stream of the SVID `serial` was refused: noted on the join token it was issued for.
    StreamRefused {
        serial: String,
        reason: String,
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

/// A registered dataplane: its id and the time of this registration.
type Joined = (Uuid, DateTime<Utc>);

/// A dataplane's registration, answered once it is committed.
struct Register {
    mesh: MeshId,
    registration: Registration,
    done: oneshot::Sender<Result<Joined, String>>,
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
    ) -> Result<Joined, String> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send((org, Item::Register(Register { mesh, registration, done })))
            .await
            .map_err(|_| "the ledger writer stopped".to_owned())?;
        answer.await.map_err(|_| "the ledger writer stopped".to_owned())?
    }
}

/// Writes one batch in one transaction (one commit), tenant by tenant: registrations first,
/// then the facts, which may name a dataplane registered in the same batch. A part that fails
/// (a fact about a dataplane whose mesh was just deleted, a registration into a deleted mesh)
/// is undone alone: those registrations are refused, or those facts dropped, and everything
/// else still commits.
async fn write(store: &Store, by_org: BTreeMap<OrgId, (Vec<Register>, Vec<LedgerOp>)>) {
    // Per tenant: the registrations' answers, or why its part failed.
    let mut parts: Vec<Result<Vec<Joined>, String>> = Vec::with_capacity(by_org.len());
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
            tx.savepoint().await?;
            let registered = register_all(tx, regs).await;
            parts.push(settle(tx, *org, registered).await?);
            // Facts lost here are written again by the stream's next response or ACK.
            tx.savepoint().await?;
            let applied = apply_all(tx, ops).await;
            settle(tx, *org, applied).await?.ok();
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
    let mut parts = parts.into_iter();
    for (_, (regs, _)) in by_org {
        let part = match &result {
            Ok(()) => parts.next().unwrap_or_else(|| Err("registration lost".to_owned())),
            Err(e) => Err(e.to_string()),
        };
        for (i, r) in regs.into_iter().enumerate() {
            let answer = match &part {
                Ok(answers) => answers.get(i).copied().ok_or_else(|| "registration lost".to_owned()),
                Err(e) => Err(e.clone()),
            };
            let _ = r.done.send(answer);
        }
    }
}

/// The outcome of one tenant's part of a batch, written after a savepoint: a failed part is
/// undone alone (`Ok(Err(why))`); only a database outage fails the whole batch.
async fn settle<T>(
    tx: &mut trellis_store::TenantTx,
    org: OrgId,
    part: Result<T, StoreError>,
) -> Result<Result<T, String>, StoreError> {
    match part {
        Ok(done) => Ok(Ok(done)),
        Err(e) if e.is_unavailable() => Err(e),
        Err(e) => {
            tracing::warn!(%org, error = %e, "a tenant's part of an xDS ledger batch failed; the others are written");
            tx.rollback_to().await?;
            Ok(Err(e.to_string()))
        }
    }
}

async fn register_all(
    tx: &mut trellis_store::TenantTx,
    regs: &[Register],
) -> Result<Vec<Joined>, StoreError> {
    let mut answers = Vec::with_capacity(regs.len());
    for r in regs {
        let dp = tx.register_dataplane(r.mesh, &r.registration).await?;
        answers.push((dp.id, dp.connected_at));
    }
    Ok(answers)
}

async fn apply_all(tx: &mut trellis_store::TenantTx, ops: &[LedgerOp]) -> Result<(), StoreError> {
    for op in ops {
        apply(tx, op).await?;
    }
    Ok(())
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
        LedgerOp::Left { dataplane, connected_at } => tx.dataplane_left(*dataplane, *connected_at).await,
        LedgerOp::Synced { dataplane, revision } => tx.dataplane_synced(*dataplane, *revision).await,
        LedgerOp::Svid { dataplane, serial, not_after } => {
            tx.dataplane_svid(*dataplane, serial, *not_after).await
        }
        LedgerOp::StreamRefused { serial, reason } => tx.record_stream_refusal(serial, reason).await,
        LedgerOp::Reach { dataplane, calls, serves } => tx.dataplane_reach(*dataplane, calls, *serves).await,
        LedgerOp::Content { mesh, type_url, version, resources } => {
            tx.record_xds_config(*mesh, type_url, version, resources).await
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use trellis_model::{MeshName, OrgSlug};
    use trellis_store::Precondition;
    use trellis_store::testing::TestDb;

    use super::*;

    fn registration(node: &str) -> Registration {
        Registration {
            service: "web".into(),
            node_id: node.into(),
            client: "envoy".into(),
            address: None,
            ports: vec![8080],
            tags: json!({}),
            zone: String::new(),
            replica: "r1".into(),
        }
    }

    fn register(mesh: MeshId, node: &str) -> (Register, oneshot::Receiver<Result<Joined, String>>) {
        let (done, answer) = oneshot::channel();
        (Register { mesh, registration: registration(node), done }, answer)
    }

    #[tokio::test]
    async fn one_tenants_failing_part_fails_no_other_tenants_writes() {
        let db = TestDb::create().await;
        let store = db.store().await;
        let mut meshes = Vec::new();
        for slug in ["a", "b", "c"] {
            let org = store.create_org(&OrgSlug::parse(slug).unwrap(), slug).await.unwrap();
            let mut tx = store.tenant(org.id).await.unwrap();
            let name = MeshName::parse("shop").unwrap();
            let td = format!("shop.{slug}.test");
            let mesh =
                tx.put_mesh(&name, &td, &json!({}), &json!({}), Precondition::Unconditional).await.unwrap();
            tx.commit().await.unwrap();
            meshes.push((org.id, mesh.value.id));
        }
        // b's mesh is deleted while its registration and a fact about its dataplane are queued.
        let (b, b_mesh) = meshes[1];
        let mut tx = store.tenant(b).await.unwrap();
        tx.delete_mesh(b_mesh).await.unwrap();
        tx.commit().await.unwrap();

        let mut batch = BTreeMap::new();
        let mut answers = Vec::new();
        for (i, (org, mesh)) in meshes.iter().enumerate() {
            let (reg, answer) = register(*mesh, &format!("node-{i}"));
            answers.push(answer);
            let fact = LedgerOp::Sent {
                dataplane: Uuid::new_v4(),
                type_url: "t".into(),
                version: "v".into(),
                nonce: "1".into(),
                revision: 1,
            };
            let facts = if *org == b { vec![fact] } else { Vec::new() };
            batch.insert(*org, (vec![reg], facts));
        }
        write(&store, batch).await;

        let answers: Vec<bool> =
            futures::future::join_all(answers).await.into_iter().map(|a| a.unwrap().is_ok()).collect();
        assert_eq!(answers, [true, false, true], "only b's registration is refused");
        for (i, (org, mesh)) in meshes.iter().enumerate() {
            let mut tx = store.tenant(*org).await.unwrap();
            let registered = tx.list_dataplanes(*mesh).await.unwrap();
            assert_eq!(registered.len(), usize::from(i != 1), "tenant {i}");
        }
    }
}
