//! Certificate authorities, join tokens and issued leaves. The store keeps bytes: sealing,
//! parsing and signing happen in the `ca` crate, above this one. A private key arrives here
//! only sealed.

use chrono::{DateTime, Utc};
use serde_json::Value;
use trellis_model::{MeshId, OrgId, SvidTtl};
use uuid::Uuid;

use crate::{Store, StoreError, TenantTx};

/// A private key as sealed by the `ca` crate: only this ever reaches the database.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBytes {
    pub kek_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBytes").field("kek_id", &self.kek_id).finish_non_exhaustive()
    }
}

/// Where a CA came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    Generated,
    IntermediateCsr,
    Uploaded,
}

impl CaOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            CaOrigin::Generated => "generated",
            CaOrigin::IntermediateCsr => "intermediate_csr",
            CaOrigin::Uploaded => "uploaded",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "generated" => CaOrigin::Generated,
            "intermediate_csr" => CaOrigin::IntermediateCsr,
            "uploaded" => CaOrigin::Uploaded,
            other => return Err(decode(format!("CA origin {other:?}"))),
        })
    }
}

/// Where a CA is in its life (see the migration for the meaning of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaState {
    Pending,
    Prepared,
    Active,
    Previous,
    Retired,
}

impl CaState {
    pub fn as_str(self) -> &'static str {
        match self {
            CaState::Pending => "pending",
            CaState::Prepared => "prepared",
            CaState::Active => "active",
            CaState::Previous => "previous",
            CaState::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => CaState::Pending,
            "prepared" => CaState::Prepared,
            "active" => CaState::Active,
            "previous" => CaState::Previous,
            "retired" => CaState::Retired,
            other => return Err(decode(format!("CA state {other:?}"))),
        })
    }

    /// Is this CA's root in the mesh's trust bundle?
    pub fn in_bundle(self) -> bool {
        matches!(self, CaState::Prepared | CaState::Active | CaState::Previous)
    }
}

fn decode(msg: String) -> StoreError {
    StoreError::Db(sqlx::Error::Decode(msg.into()))
}

/// A stored CA.
#[derive(Debug, Clone, PartialEq)]
pub struct CaRecord {
    pub id: Uuid,
    pub mesh_id: MeshId,
    pub origin: CaOrigin,
    pub state: CaState,
    /// This CA's certificate first, up to the root (empty while pending).
    pub chain: Vec<Vec<u8>>,
    pub root_fingerprint: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub csr_pem: Option<String>,
    pub sealed_key: SealedBytes,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct CaRow {
    id: Uuid,
    mesh_id: Uuid,
    origin: String,
    state: String,
    chain: Vec<Vec<u8>>,
    root_fingerprint: Option<String>,
    not_after: Option<DateTime<Utc>>,
    csr_pem: Option<String>,
    key_kek_id: String,
    key_nonce: Vec<u8>,
    key_ciphertext: Vec<u8>,
    created_at: DateTime<Utc>,
    activated_at: Option<DateTime<Utc>>,
    retired_at: Option<DateTime<Utc>>,
}

impl TryFrom<CaRow> for CaRecord {
    type Error = StoreError;
    fn try_from(r: CaRow) -> Result<Self, StoreError> {
        Ok(CaRecord {
            id: r.id,
            mesh_id: MeshId::from_uuid(r.mesh_id),
            origin: CaOrigin::parse(&r.origin)?,
            state: CaState::parse(&r.state)?,
            chain: r.chain,
            root_fingerprint: r.root_fingerprint,
            not_after: r.not_after,
            csr_pem: r.csr_pem,
            sealed_key: SealedBytes {
                kek_id: r.key_kek_id,
                nonce: r.key_nonce,
                ciphertext: r.key_ciphertext,
            },
            created_at: r.created_at,
            activated_at: r.activated_at,
            retired_at: r.retired_at,
        })
    }
}

macro_rules! ca_columns {
    () => {
        "id, mesh_id, origin, state, chain, root_fingerprint, not_after, csr_pem, key_kek_id, key_nonce, \
         key_ciphertext, created_at, activated_at, retired_at"
    };
}

/// A CA to store.
#[derive(Debug, Clone)]
pub struct NewCa {
    pub origin: CaOrigin,
    pub state: CaState,
    pub chain: Vec<Vec<u8>>,
    pub root_fingerprint: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub csr_pem: Option<String>,
    pub sealed_key: SealedBytes,
}

/// A mesh's CA settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaSettings {
    pub svid_ttl_seconds: i32,
    pub bundle_sequence: i64,
}

/// A join token's record (never the token itself).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JoinToken {
    pub id: Uuid,
    pub mesh_id: Uuid,
    pub service: String,
    pub tags: Value,
    pub single_use: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub uses: i64,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The last refusal of what the token let in: when, why, and at which step (`token`: the
    /// token itself, presented by an agent; `stream`: an xDS stream of an identity it was
    /// issued).
    pub last_refused_at: Option<DateTime<Utc>>,
    pub last_refusal: Option<String>,
    pub last_refusal_step: Option<String>,
}

/// The longest refusal reason kept (the column's check says the same).
pub const MAX_JOIN_REFUSAL: usize = 300;

/// The join token's last refusal, `$2` (cut to [`MAX_JOIN_REFUSAL`]) at step `$3`, for the
/// token the condition selects with `$1`. The same refusal is written again at most once a
/// second, so that a peer retrying in a loop costs reads.
macro_rules! note_refusal {
    ($which:literal) => {
        concat!(
            "UPDATE join_tokens SET last_refused_at = now(), last_refusal = $2, last_refusal_step = $3 WHERE ",
            $which,
            " AND (last_refusal IS DISTINCT FROM $2 OR last_refusal_step IS DISTINCT FROM $3 \
               OR last_refused_at IS NULL OR last_refused_at < now() - interval '1 second')"
        )
    };
}

macro_rules! join_columns {
    () => {
        "id, mesh_id, service, tags, single_use, created_by, created_at, expires_at, used_at, uses, revoked_at, \
         last_refused_at, last_refusal, last_refusal_step"
    };
}

/// Why a join token was refused (all look the same to the caller; this is for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefusal {
    Unknown,
    Revoked,
    Expired,
    AlreadyUsed,
}

/// When a CA expires.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CaExpiry {
    pub mesh: String,
    pub id: Uuid,
    pub state: String,
    pub not_after: DateTime<Utc>,
}

/// A leaf to record.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub serial: String,
    pub ca_id: Uuid,
    pub spiffe_id: String,
    pub not_after: DateTime<Utc>,
    /// The service the leaf names: deleting it revokes the leaf.
    pub service: String,
    /// The tags of the join token the identity descends from (a JSON object of strings):
    /// its dataplanes may not claim other values for them.
    pub tags: Value,
    /// The multi-use join token this issuance spent a use of: counted when the leaf is
    /// recorded by [`TenantTx::record_leaves_if_active`], and kept with it (a refusal of its
    /// streams is noted on the token).
    pub join_token: Option<Uuid>,
    /// The serial of the leaf a renewal replaces (the one it authenticated with): marked
    /// superseded when this one is first presented (see [`TenantTx::presented_leaf`]), so
    /// that it no longer counts as in use once its holder surely has the new one.
    pub replaces: Option<String>,
}

/// What became of a leaf handed to [`TenantTx::record_leaves_if_active`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafOutcome {
    Recorded,
    /// Its CA stopped being the mesh's active one: sign it again with the new one.
    CaNotActive,
    /// Its service was deleted: the identity no longer exists.
    ServiceGone,
}

/// What the issuance record of a leaf says about its identity.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LeafRecord {
    pub service: String,
    /// The join token's tags (a JSON object of strings).
    pub tags: Value,
    /// Set when the leaf's service was deleted: the leaf no longer authenticates.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TenantTx {
    /// Stores a CA; a CA whose root joins the bundle bumps the bundle sequence.
    pub async fn insert_ca(&mut self, mesh: MeshId, ca: &NewCa) -> Result<CaRecord, StoreError> {
        let org = self.org().as_uuid();
        let row: CaRow = sqlx::query_as(concat!(
            "INSERT INTO mesh_cas (org_id, mesh_id, origin, state, chain, root_fingerprint, not_after, csr_pem, \
               key_kek_id, key_nonce, key_ciphertext, activated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
               CASE WHEN $4 = 'active' THEN now() END) RETURNING ",
            ca_columns!()
        ))
        .bind(org)
        .bind(mesh.as_uuid())
        .bind(ca.origin.as_str())
        .bind(ca.state.as_str())
        .bind(&ca.chain)
        .bind(&ca.root_fingerprint)
        .bind(ca.not_after)
        .bind(&ca.csr_pem)
        .bind(&ca.sealed_key.kek_id)
        .bind(&ca.sealed_key.nonce)
        .bind(&ca.sealed_key.ciphertext)
        .fetch_one(self.conn())
        .await?;
        if ca.state.in_bundle() {
            self.bump_bundle_sequence(mesh).await?;
        }
        row.try_into()
    }

    /// Every CA of a mesh, oldest first.
    pub async fn mesh_cas(&mut self, mesh: MeshId) -> Result<Vec<CaRecord>, StoreError> {
        let rows: Vec<CaRow> = sqlx::query_as(concat!(
            "SELECT ",
            ca_columns!(),
            " FROM mesh_cas WHERE mesh_id = $1 ORDER BY created_at, id"
        ))
        .bind(mesh.as_uuid())
        .fetch_all(self.conn())
        .await?;
        rows.into_iter().map(CaRecord::try_from).collect()
    }

    /// The roots (DER) of the mesh's trust bundle: of every CA in a bundle state, the active
    /// CA's root first, then the others oldest first (the order of the wire contract,
    /// `trellis_model::contract`: how a workload tells that its SVID must be renewed).
    pub async fn bundle_roots(&mut self, mesh: MeshId) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut cas: Vec<CaRecord> =
            self.mesh_cas(mesh).await?.into_iter().filter(|c| c.state.in_bundle()).collect();
        // Stable: the others keep their age order.
        cas.sort_by_key(|c| c.state != CaState::Active);
        Ok(cas.into_iter().filter_map(|mut c| c.chain.pop()).collect())
    }

    /// Moves a CA from one of `from` to `to`, locking it; bumps the bundle sequence when the
    /// bundle (its roots or their order) changes. `NotFound` when it is in none of `from`.
    pub async fn set_ca_state(
        &mut self,
        mesh: MeshId,
        id: Uuid,
        from: &[CaState],
        to: CaState,
    ) -> Result<CaRecord, StoreError> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let before: Option<(String,)> = sqlx::query_as(
            "SELECT state FROM mesh_cas WHERE mesh_id = $1 AND id = $2 AND state = ANY($3) FOR UPDATE",
        )
        .bind(mesh.as_uuid())
        .bind(id)
        .bind(&from)
        .fetch_optional(self.conn())
        .await?;
        let Some((before,)) = before else { return Err(StoreError::NotFound("certificate authority")) };
        let row: CaRow = sqlx::query_as(concat!(
            "UPDATE mesh_cas SET state = $3, \
               activated_at = CASE WHEN $3 = 'active' THEN now() ELSE activated_at END, \
               retired_at = CASE WHEN $3 = 'retired' THEN now() ELSE retired_at END \
             WHERE mesh_id = $1 AND id = $2 RETURNING ",
            ca_columns!()
        ))
        .bind(mesh.as_uuid())
        .bind(id)
        .bind(to.as_str())
        .fetch_one(self.conn())
        .await?;
        // The bundle changes when a root enters or leaves it, and when another CA becomes the
        // active one (its root moves to the front).
        let before = CaState::parse(&before)?;
        if before.in_bundle() != to.in_bundle() || (before == CaState::Active) != (to == CaState::Active) {
            self.bump_bundle_sequence(mesh).await?;
        }
        row.try_into()
    }

    /// Completes a pending CA with the chain its owner uploaded; it becomes `prepared`.
    pub async fn complete_pending_ca(
        &mut self,
        mesh: MeshId,
        id: Uuid,
        chain: &[Vec<u8>],
        root_fingerprint: &str,
        not_after: DateTime<Utc>,
    ) -> Result<CaRecord, StoreError> {
        let row: Option<CaRow> = sqlx::query_as(concat!(
            "UPDATE mesh_cas SET state = 'prepared', chain = $3, root_fingerprint = $4, not_after = $5 \
             WHERE mesh_id = $1 AND id = $2 AND state = 'pending' RETURNING ",
            ca_columns!()
        ))
        .bind(mesh.as_uuid())
        .bind(id)
        .bind(chain)
        .bind(root_fingerprint)
        .bind(not_after)
        .fetch_optional(self.conn())
        .await?;
        let record: CaRecord =
            row.ok_or(StoreError::NotFound("pending certificate authority"))?.try_into()?;
        self.bump_bundle_sequence(mesh).await?;
        Ok(record)
    }

    /// Deletes a pending CA (a bring-your-own CSR abandoned).
    pub async fn delete_pending_ca(&mut self, mesh: MeshId, id: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM mesh_cas WHERE mesh_id = $1 AND id = $2 AND state = 'pending'")
            .bind(mesh.as_uuid())
            .bind(id)
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("pending certificate authority"));
        }
        Ok(())
    }

    /// Replaces a CA's sealed key (KEK rotation re-wraps it).
    pub async fn reseal_ca_key(&mut self, id: Uuid, sealed: &SealedBytes) -> Result<(), StoreError> {
        sqlx::query("UPDATE mesh_cas SET key_kek_id = $2, key_nonce = $3, key_ciphertext = $4 WHERE id = $1")
            .bind(id)
            .bind(&sealed.kek_id)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// When each CA of this tenant that is not retired expires, with its mesh's name (for
    /// the expiry gauges).
    pub async fn ca_expiries(&mut self) -> Result<Vec<CaExpiry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT m.name AS mesh, c.id, c.state, c.not_after FROM mesh_cas c \
             JOIN meshes m ON m.org_id = c.org_id AND m.id = c.mesh_id \
             WHERE c.state <> 'retired' AND c.not_after IS NOT NULL ORDER BY m.name, c.id",
        )
        .fetch_all(self.conn())
        .await?)
    }

    /// Every CA of this tenant (for KEK rotation).
    pub async fn all_cas(&mut self) -> Result<Vec<CaRecord>, StoreError> {
        let rows: Vec<CaRow> =
            sqlx::query_as(concat!("SELECT ", ca_columns!(), " FROM mesh_cas ORDER BY id"))
                .fetch_all(self.conn())
                .await?;
        rows.into_iter().map(CaRecord::try_from).collect()
    }

    async fn bump_bundle_sequence(&mut self, mesh: MeshId) -> Result<i64, StoreError> {
        let (seq,): (i64,) = sqlx::query_as(
            "UPDATE meshes SET bundle_sequence = bundle_sequence + 1, revision = revision + 1, \
               updated_at = now() WHERE id = $1 RETURNING bundle_sequence",
        )
        .bind(mesh.as_uuid())
        .fetch_one(self.conn())
        .await?;
        Ok(seq)
    }

    /// A mesh's SVID lifetime and bundle sequence.
    pub async fn ca_settings(&mut self, mesh: MeshId) -> Result<CaSettings, StoreError> {
        let row: Option<(i32, i64)> =
            sqlx::query_as("SELECT svid_ttl_seconds, bundle_sequence FROM meshes WHERE id = $1")
                .bind(mesh.as_uuid())
                .fetch_optional(self.conn())
                .await?;
        let (svid_ttl_seconds, bundle_sequence) = row.ok_or(StoreError::NotFound("mesh"))?;
        Ok(CaSettings { svid_ttl_seconds, bundle_sequence })
    }

    /// Sets a mesh's SVID lifetime (parsed in `model`; the database bounds it the same way).
    pub async fn set_svid_ttl(&mut self, mesh: MeshId, ttl: SvidTtl) -> Result<(), StoreError> {
        sqlx::query("UPDATE meshes SET svid_ttl_seconds = $2 WHERE id = $1")
            .bind(mesh.as_uuid())
            .bind(ttl.as_secs_i32())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Records issued leaves, but only those whose CA is still the active one of its mesh
    /// and whose service still exists; returns what became of each leaf.
    ///
    /// The CA rows are share-locked, so a rotation step that moves a CA out of `active`
    /// either waits for this transaction (and then counts these leaves) or commits first (and
    /// these leaves are refused, to be signed again by the new CA). The Service rows are
    /// key-share-locked, so deleting a service either waits (and its trigger then revokes
    /// these leaves) or commits first (and these leaves are refused). Lock order: CA rows,
    /// Service rows, then join tokens, as the deleting trigger takes services before tokens.
    pub async fn record_leaves_if_active(
        &mut self,
        leaves: &[(MeshId, IssuedLeaf)],
    ) -> Result<Vec<LeafOutcome>, StoreError> {
        if leaves.is_empty() {
            return Ok(Vec::new());
        }
        let mut cas: Vec<Uuid> = leaves.iter().map(|(_, l)| l.ca_id).collect();
        cas.sort_unstable();
        cas.dedup();
        let active: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM mesh_cas WHERE id = ANY($1) AND state = 'active' ORDER BY id FOR SHARE",
        )
        .bind(&cas)
        .fetch_all(self.conn())
        .await?;
        let (wanted_meshes, wanted_names): (Vec<Uuid>, Vec<&str>) =
            leaves.iter().map(|(m, l)| (m.as_uuid(), l.service.as_str())).unzip();
        let services: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT mesh_id, name FROM resources WHERE kind = 'Service' \
               AND (mesh_id, name) IN (SELECT * FROM unnest($1::uuid[], $2::text[])) \
             ORDER BY mesh_id, name FOR KEY SHARE",
        )
        .bind(&wanted_meshes)
        .bind(&wanted_names)
        .fetch_all(self.conn())
        .await?;
        let outcomes: Vec<LeafOutcome> = leaves
            .iter()
            .map(|(m, l)| {
                if !active.iter().any(|(id,)| *id == l.ca_id) {
                    LeafOutcome::CaNotActive
                } else if !services.iter().any(|(sm, name)| *sm == m.as_uuid() && *name == l.service) {
                    LeafOutcome::ServiceGone
                } else {
                    LeafOutcome::Recorded
                }
            })
            .collect();
        let keep: Vec<bool> = outcomes.iter().map(|o| *o == LeafOutcome::Recorded).collect();
        let kept = leaves.iter().zip(&keep).filter(|(_, k)| **k).map(|(l, _)| l);
        let (mut meshes, mut serials, mut ca_ids, mut ids, mut not_after) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut services, mut tags, mut replaces, mut tokens) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (mesh, l) in kept {
            meshes.push(mesh.as_uuid());
            serials.push(l.serial.as_str());
            ca_ids.push(l.ca_id);
            ids.push(l.spiffe_id.as_str());
            not_after.push(l.not_after);
            services.push(l.service.as_str());
            tags.push(l.tags.clone());
            replaces.push(l.replaces.as_deref());
            tokens.push(l.join_token);
        }
        if !serials.is_empty() {
            sqlx::query(
                "INSERT INTO issued_svids (org_id, mesh_id, serial, ca_id, spiffe_id, not_after, service, tags, \
                   replaces, join_token) \
                 SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::timestamptz[], \
                   $7::text[], $8::jsonb[], $9::text[], $10::uuid[])",
            )
            .bind(self.org().as_uuid())
            .bind(&meshes)
            .bind(&serials)
            .bind(&ca_ids)
            .bind(&ids)
            .bind(&not_after)
            .bind(&services)
            .bind(&tags)
            .bind(&replaces)
            .bind(&tokens)
            .execute(self.conn())
            .await?;
        }
        let mut uses: Vec<(Uuid, i64)> = Vec::new();
        for t in leaves.iter().zip(&keep).filter(|(_, k)| **k).filter_map(|((_, l), _)| l.join_token) {
            match uses.iter_mut().find(|(id, _)| *id == t) {
                Some((_, n)) => *n += 1,
                None => uses.push((t, 1)),
            }
        }
        if !uses.is_empty() {
            let (ids, counts): (Vec<Uuid>, Vec<i64>) = uses.into_iter().unzip();
            sqlx::query(
                "UPDATE join_tokens SET uses = uses + c.n, used_at = now() \
                 FROM unnest($1::uuid[], $2::bigint[]) AS c(id, n) WHERE join_tokens.id = c.id",
            )
            .bind(&ids)
            .bind(&counts)
            .execute(self.conn())
            .await?;
        }
        Ok(outcomes)
    }

    /// The issuance record of a leaf presented in TLS (what bounds its identity), by its
    /// serial in a mesh. Its holder has it, so the leaf it renewed, if any, is superseded
    /// from now on: a renewal whose reply was lost leaves the old leaf in use.
    pub async fn presented_leaf(
        &mut self,
        mesh: MeshId,
        serial: &str,
    ) -> Result<Option<LeafRecord>, StoreError> {
        Ok(sqlx::query_as(
            "WITH leaf AS (SELECT service, tags, revoked_at, replaces FROM issued_svids \
                           WHERE mesh_id = $1 AND serial = $2), \
                  renewed AS (UPDATE issued_svids SET superseded_at = now() \
                              WHERE mesh_id = $1 AND superseded_at IS NULL \
                                AND serial = (SELECT replaces FROM leaf WHERE revoked_at IS NULL)) \
             SELECT service, tags, revoked_at FROM leaf",
        )
        .bind(mesh.as_uuid())
        .bind(serial)
        .fetch_optional(self.conn())
        .await?)
    }

    /// Leaves in use per CA of a mesh: unexpired, and not replaced by a renewal since presented.
    pub async fn live_leaves(&mut self, mesh: MeshId) -> Result<Vec<(Uuid, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT ca_id, count(*) FROM issued_svids \
             WHERE mesh_id = $1 AND not_after > now() AND superseded_at IS NULL GROUP BY ca_id",
        )
        .bind(mesh.as_uuid())
        .fetch_all(self.conn())
        .await?)
    }

    /// Records a new join token by its hash.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_join_token(
        &mut self,
        mesh: MeshId,
        sha256: &[u8; 32],
        service: &str,
        tags: &Value,
        single_use: bool,
        created_by: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<JoinToken, StoreError> {
        let org = self.org().as_uuid();
        Ok(sqlx::query_as(concat!(
            "INSERT INTO join_tokens (org_id, mesh_id, token_sha256, service, tags, single_use, created_by, \
               expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
            join_columns!()
        ))
        .bind(org)
        .bind(mesh.as_uuid())
        .bind(&sha256[..])
        .bind(service)
        .bind(tags)
        .bind(single_use)
        .bind(created_by)
        .bind(expires_at)
        .fetch_one(self.conn())
        .await?)
    }

    /// A mesh's join tokens, newest first.
    pub async fn list_join_tokens(&mut self, mesh: MeshId) -> Result<Vec<JoinToken>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            join_columns!(),
            " FROM join_tokens WHERE mesh_id = $1 ORDER BY created_at DESC, id"
        ))
        .bind(mesh.as_uuid())
        .fetch_all(self.conn())
        .await?)
    }

    /// Revokes a join token; revoking twice is not an error.
    pub async fn revoke_join_token(&mut self, mesh: MeshId, id: Uuid) -> Result<JoinToken, StoreError> {
        let row: Option<JoinToken> = sqlx::query_as(concat!(
            "UPDATE join_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE mesh_id = $1 AND id = $2 \
             RETURNING ",
            join_columns!()
        ))
        .bind(mesh.as_uuid())
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        row.ok_or(StoreError::NotFound("join token"))
    }

    /// The join token with this hash as it is now; spends nothing.
    pub async fn join_token_by_hash(&mut self, sha256: &[u8; 32]) -> Result<Option<JoinToken>, StoreError> {
        Ok(sqlx::query_as(concat!("SELECT ", join_columns!(), " FROM join_tokens WHERE token_sha256 = $1"))
            .bind(&sha256[..])
            .fetch_optional(self.conn())
            .await?)
    }

    /// Notes that the join token with this hash was presented and refused for `reason`,
    /// replacing its last refusal (see [`note_refusal!`]).
    pub async fn record_join_refusal(&mut self, sha256: &[u8; 32], reason: &str) -> Result<(), StoreError> {
        let reason: String = reason.chars().take(MAX_JOIN_REFUSAL).collect();
        sqlx::query(note_refusal!("token_sha256 = $1"))
            .bind(&sha256[..])
            .bind(&reason)
            .bind("token")
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Notes that an xDS stream of the SVID `serial` was refused for `reason`, on the join
    /// token that SVID was issued for (a multi-use one: a single-use token's leaf does not
    /// name it).
    pub async fn record_stream_refusal(&mut self, serial: &str, reason: &str) -> Result<(), StoreError> {
        let reason: String = reason.chars().take(MAX_JOIN_REFUSAL).collect();
        sqlx::query(note_refusal!("id = (SELECT join_token FROM issued_svids WHERE serial = $1)"))
            .bind(serial)
            .bind(&reason)
            .bind("stream")
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Spends one use of the join token with this hash: it must exist, be unrevoked,
    /// unexpired and, if single-use, unused. Atomic, so that two redemptions of a single-use
    /// token cannot both succeed.
    pub async fn redeem_join_token(&mut self, sha256: &[u8; 32]) -> Result<JoinToken, JoinRefusal> {
        let row: Option<JoinToken> = sqlx::query_as(concat!(
            "UPDATE join_tokens SET uses = uses + 1, used_at = now() \
             WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > now() \
               AND NOT (single_use AND uses > 0) RETURNING ",
            join_columns!()
        ))
        .bind(&sha256[..])
        .fetch_optional(self.conn())
        .await
        .map_err(|_| JoinRefusal::Unknown)?;
        if let Some(t) = row {
            return Ok(t);
        }
        let why: Option<(bool, bool, bool)> = sqlx::query_as(
            "SELECT revoked_at IS NOT NULL, expires_at <= now(), single_use AND uses > 0 \
             FROM join_tokens WHERE token_sha256 = $1",
        )
        .bind(&sha256[..])
        .fetch_optional(self.conn())
        .await
        .map_err(|_| JoinRefusal::Unknown)?;
        Err(match why {
            None => JoinRefusal::Unknown,
            Some((true, _, _)) => JoinRefusal::Revoked,
            Some((_, true, _)) => JoinRefusal::Expired,
            Some(_) => JoinRefusal::AlreadyUsed,
        })
    }
}

/// The platform CA as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformCaRecord {
    pub cert_der: Vec<u8>,
    pub sealed_key: SealedBytes,
}

/// The platform CA's row: certificate, KEK id, nonce, ciphertext.
type PlatformRow = (Vec<u8>, String, Vec<u8>, Vec<u8>);

impl Store {
    /// Which organization and mesh own this trust domain (from a verified certificate).
    pub async fn mesh_of_trust_domain(&self, td: &str) -> Result<Option<(OrgId, MeshId)>, StoreError> {
        // An exact lookup: the server role cannot read (or list) the directory itself.
        let row: Option<(Uuid, Uuid)> =
            sqlx::query_as("SELECT org_id, mesh_id FROM trellis_mesh_of_trust_domain($1)")
                .bind(td)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(o, m)| (OrgId::from_uuid(o), MeshId::from_uuid(m))))
    }

    /// Records the leaves of several tenants in one transaction (one commit for a whole
    /// batch of issuances): what became of each leaf (see
    /// [`TenantTx::record_leaves_if_active`]).
    pub async fn record_leaves_batch(
        &self,
        groups: &[(OrgId, Vec<(MeshId, IssuedLeaf)>)],
    ) -> Result<Vec<Vec<LeafOutcome>>, StoreError> {
        let Some((first, _)) = groups.first() else { return Ok(Vec::new()) };
        let mut tx = self.tenant(*first).await?;
        let mut out = Vec::with_capacity(groups.len());
        for (i, (org, leaves)) in groups.iter().enumerate() {
            if i > 0 {
                tx.rebind(*org).await?;
            }
            out.push(tx.record_leaves_if_active(leaves).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The platform CA, if one was created.
    pub async fn platform_ca(&self) -> Result<Option<PlatformCaRecord>, StoreError> {
        let row: Option<PlatformRow> = sqlx::query_as(
            "SELECT cert_der, key_kek_id, key_nonce, key_ciphertext FROM platform_ca WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(cert_der, kek_id, nonce, ciphertext)| PlatformCaRecord {
            cert_der,
            sealed_key: SealedBytes { kek_id, nonce, ciphertext },
        }))
    }

    /// Stores the platform CA unless another replica did first; returns the one that won.
    pub async fn init_platform_ca(&self, ca: &PlatformCaRecord) -> Result<PlatformCaRecord, StoreError> {
        sqlx::query(
            "INSERT INTO platform_ca (id, cert_der, key_kek_id, key_nonce, key_ciphertext) \
             VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ca.cert_der)
        .bind(&ca.sealed_key.kek_id)
        .bind(&ca.sealed_key.nonce)
        .bind(&ca.sealed_key.ciphertext)
        .execute(&self.pool)
        .await?;
        self.platform_ca().await?.ok_or(StoreError::NotFound("platform CA"))
    }

    /// Replaces the platform CA's sealed key (KEK rotation).
    pub async fn reseal_platform_ca(&self, sealed: &SealedBytes) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE platform_ca SET key_kek_id = $1, key_nonce = $2, key_ciphertext = $3 WHERE id = 1",
        )
        .bind(&sealed.kek_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every organization id (for maintenance that visits each tenant, like KEK rotation).
    pub async fn org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        let rows: Vec<(Uuid,)> =
            sqlx::query_as("SELECT id FROM organizations ORDER BY id").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(id,)| OrgId::from_uuid(id)).collect())
    }
}
