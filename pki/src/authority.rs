//! Each mesh's certificate authority, kept in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use rustls::pki_types::CertificateDer;
use trellis_ca::{
    ByoError, IssuedSvid, KeyRing, MeshCa, RootCert, SpiffeId, SvidTtl, TrustBundle, TrustDomain,
    accept_intermediate, accept_uploaded_ca, generate_intermediate_csr, owner_aad, seal, unseal, verify_svid,
};
use trellis_model::config::Tags;
use trellis_model::{MeshId, OrgId};
use trellis_model::{Token, TokenKind, token_sha256};
use trellis_store::MeshChange;
use trellis_store::{
    CaOrigin, CaRecord, CaState, IssuedLeaf, JoinRefusal, LeafOutcome, Mesh, NewCa, Store, TenantTx,
};
use uuid::Uuid;

use crate::PkiError;
use crate::cache::{IdentityCache, LeafWriter, MeshIdentity};
use crate::sealed::{sealed_bytes, sealed_key};

/// Settings of the authority.
#[derive(Debug, Clone)]
pub struct AuthorityOptions {
    /// Lifetime of a root that Trellis generates.
    pub root_validity: Duration,
    /// A CA with fewer days left than this is refused for activation or upload.
    pub min_days: u32,
    /// Every SVID lives this long, whatever its mesh's setting (`--svid-ttl-override`).
    pub svid_ttl_override: Option<SvidTtl>,
}

impl Default for AuthorityOptions {
    fn default() -> Self {
        Self {
            root_validity: Duration::from_secs(10 * 365 * 24 * 60 * 60),
            min_days: 30,
            svid_ttl_override: None,
        }
    }
}

/// An authenticated workload: everything comes from its verified certificate and the
/// issuance record of that certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub org: OrgId,
    pub mesh_id: MeshId,
    pub mesh: String,
    pub trust_domain: TrustDomain,
    pub id: SpiffeId,
    pub service: String,
    /// The tags of the join token this identity descends from: its dataplanes carry exactly
    /// these values for these keys.
    pub tags: Tags,
    /// The presented SVID: its serial (lowercase hex, as its issuance record names it; a
    /// renewal supersedes it) and when it expires.
    pub serial: String,
    pub not_after: DateTime<Utc>,
}

/// A signed SVID and what the workload needs beside it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub svid: IssuedSvid,
    /// The mesh's trust bundle as PEM: the roots to verify peers with.
    pub bundle_pem: String,
    pub bundle_sequence: u64,
    pub org: OrgId,
    pub mesh: String,
}

/// One CA as the API shows it (never its key).
#[derive(Debug, Clone, PartialEq)]
pub struct CaInfo {
    pub id: Uuid,
    pub origin: &'static str,
    pub state: &'static str,
    pub root_fingerprint: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub days_to_expiry: Option<i64>,
    pub live_leaves: i64,
    pub certificate_pem: Option<String>,
    pub csr_pem: Option<String>,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// A mesh's CA status: the rotation phase and every CA.
#[derive(Debug, Clone, PartialEq)]
pub struct CaStatus {
    /// `stable`, `awaiting-chain` (a bring-your-own CSR is out), `prepared` (a new root is in
    /// the bundle, not signing), or `rotated` (the old root still in the bundle).
    pub phase: &'static str,
    pub trust_domain: String,
    pub bundle_sequence: i64,
    pub svid_ttl_seconds: i32,
    pub cas: Vec<CaInfo>,
}

/// The certificate authority service; cheap to clone.
#[derive(Clone)]
pub struct Authority {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    keyring: KeyRing,
    options: AuthorityOptions,
    /// Unsealed signing CAs by CA id (a CA's certificate and key never change).
    cas: Mutex<HashMap<Uuid, Arc<MeshCa>>>,
    /// Meshes as issuance and peer authentication need them, between changes.
    cache: IdentityCache,
    /// Records issued leaves in batches; started on first use, inside the runtime.
    leaves: OnceLock<LeafWriter>,
}

fn aad(org: OrgId, mesh: MeshId) -> Vec<u8> {
    owner_aad(&["mesh-ca", &org.to_string(), &mesh.to_string()])
}

fn utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

/// SHA-256 over a certificate chain, each certificate length-prefixed.
fn chain_digest(chain: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for c in chain {
        ctx.update(&(c.len() as u64).to_be_bytes());
        ctx.update(c);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn trust_domain(mesh: &Mesh) -> Result<TrustDomain, PkiError> {
    Ok(mesh.trust_domain.clone())
}

impl Authority {
    pub fn new(store: Store, keyring: KeyRing, options: AuthorityOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                keyring,
                options,
                cas: Mutex::new(HashMap::new()),
                cache: IdentityCache::default(),
                leaves: OnceLock::new(),
            }),
        }
    }

    pub fn keyring(&self) -> &KeyRing {
        &self.inner.keyring
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Gives a new mesh its root, inside the transaction that creates the mesh. A mesh that
    /// already has a CA is left alone.
    pub async fn create_root(&self, tx: &mut TenantTx, mesh: &Mesh) -> Result<(), PkiError> {
        if !tx.mesh_cas(mesh.id).await?.is_empty() {
            return Ok(());
        }
        let ca =
            MeshCa::generate_root(&trust_domain(mesh)?, self.inner.options.root_validity, SystemTime::now())
                .map_err(PkiError::internal)?;
        self.store_ca(tx, mesh, &ca, CaOrigin::Generated, CaState::Active).await?;
        Ok(())
    }

    async fn store_ca(
        &self,
        tx: &mut TenantTx,
        mesh: &Mesh,
        ca: &MeshCa,
        origin: CaOrigin,
        state: CaState,
    ) -> Result<CaRecord, PkiError> {
        let sealed = ca.seal_key(&self.inner.keyring, &aad(tx.org(), mesh.id)).map_err(PkiError::internal)?;
        let record = NewCa {
            origin,
            state,
            chain: ca.chain_der().iter().map(|c| c.to_vec()).collect(),
            root_fingerprint: Some(ca.root().fingerprint().to_owned()),
            not_after: Some(utc(ca.not_after())),
            csr_pem: None,
            sealed_key: sealed_bytes(&sealed),
        };
        Ok(tx.insert_ca(mesh.id, &record).await?)
    }

    /// The unsealed CA of a record, from the cache when it was loaded before.
    fn load(&self, org: OrgId, mesh: &Mesh, record: &CaRecord) -> Result<Arc<MeshCa>, PkiError> {
        self.load_ca(org, mesh.id, &trust_domain(mesh)?, record)
    }

    fn load_ca(
        &self,
        org: OrgId,
        mesh: MeshId,
        td: &TrustDomain,
        record: &CaRecord,
    ) -> Result<Arc<MeshCa>, PkiError> {
        if let Some(ca) = self.inner.cas.lock().unwrap_or_else(|e| e.into_inner()).get(&record.id) {
            return Ok(ca.clone());
        }
        let key = unseal(&self.inner.keyring, &sealed_key(&record.sealed_key)?, &aad(org, mesh))
            .map_err(PkiError::internal)?;
        let chain = record.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        let ca = Arc::new(MeshCa::from_parts(td, chain, key).map_err(PkiError::internal)?);
        self.inner.cas.lock().unwrap_or_else(|e| e.into_inner()).insert(record.id, ca.clone());
        Ok(ca)
    }

    /// The mesh's trust bundle: the roots of every CA in the bundle states. Served from the
    /// cached mesh when it is at the sequence this transaction sees.
    pub async fn bundle(&self, tx: &mut TenantTx, mesh: &Mesh) -> Result<Arc<TrustBundle>, PkiError> {
        let seq = u64::try_from(tx.ca_settings(mesh.id).await?.bundle_sequence).unwrap_or(0);
        if let Some(i) = self.cached_identity(mesh.id).filter(|i| i.bundle.sequence() == seq) {
            return Ok(i.bundle.clone());
        }
        Self::read_bundle(tx, mesh.id, &trust_domain(mesh)?, seq).await
    }

    /// Builds a mesh's bundle from the roots stored for it.
    async fn read_bundle(
        tx: &mut TenantTx,
        mesh: MeshId,
        td: &TrustDomain,
        seq: u64,
    ) -> Result<Arc<TrustBundle>, PkiError> {
        let roots = tx
            .bundle_roots(mesh)
            .await?
            .into_iter()
            .map(|der| RootCert::parse(td, CertificateDer::from(der)).map_err(PkiError::internal))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(TrustBundle::new(td, roots, seq).map_err(PkiError::internal)?))
    }

    /// Follows the change feed: a changed or deleted mesh is read again on next use.
    pub fn on_change(&self, change: &MeshChange) {
        self.forget(change.mesh);
        if change.is_deleted() {
            self.inner.cache.forget_domains_of(change.mesh);
        }
    }

    /// Drops what is cached of a mesh (after a change to its CAs or settings).
    pub fn forget(&self, mesh: MeshId) {
        self.inner.cache.forget(mesh);
    }

    fn cached_identity(&self, mesh: MeshId) -> Option<Arc<MeshIdentity>> {
        self.inner.cache.get(mesh)
    }

    /// The mesh as issuance needs it: from the cache, or read in a transaction of its own
    /// (one reader per mesh at a time).
    async fn identity(&self, org: OrgId, mesh: MeshId) -> Result<Arc<MeshIdentity>, PkiError> {
        if let Some(i) = self.cached_identity(mesh).filter(|i| i.org == org) {
            return Ok(i);
        }
        let lock = self.inner.cache.load_lock(mesh);
        let _one = lock.lock().await;
        if let Some(i) = self.cached_identity(mesh).filter(|i| i.org == org) {
            return Ok(i);
        }
        let mut tx = self.inner.store.tenant(org).await?;
        let ident = self.load_identity(&mut tx, mesh).await?;
        tx.commit().await?;
        Ok(ident)
    }

    /// Reads a mesh for issuance through `tx` (whose tenant must own it) and caches it.
    async fn load_identity(&self, tx: &mut TenantTx, mesh_id: MeshId) -> Result<Arc<MeshIdentity>, PkiError> {
        let epoch = self.inner.cache.epoch(mesh_id);
        let loaded = Instant::now();
        let mesh = tx.mesh_by_id(mesh_id).await?.ok_or(PkiError::NotFound("mesh"))?;
        let td = trust_domain(&mesh)?;
        let cas = tx.mesh_cas(mesh_id).await?;
        let signer = match cas.iter().find(|c| c.state == CaState::Active) {
            Some(active) => Some((active.id, self.load_ca(tx.org(), mesh_id, &td, active)?)),
            None => None,
        };
        let settings = tx.ca_settings(mesh_id).await?;
        // Written only as a parsed `SvidTtl`: a value that does not parse is an error to see,
        // never replaced by a default.
        let ttl = SvidTtl::from_secs(settings.svid_ttl_seconds.into())
            .map_err(|e| PkiError::internal(format!("mesh {mesh_id}: stored SVID lifetime: {e}")))?;
        let ttl = self.inner.options.svid_ttl_override.unwrap_or(ttl);
        let seq = u64::try_from(settings.bundle_sequence).unwrap_or(0);
        let bundle = Self::read_bundle(tx, mesh_id, &td, seq).await?;
        let ident = Arc::new(MeshIdentity {
            org: tx.org(),
            mesh: mesh.name.as_str().to_owned(),
            trust_domain: td,
            signer,
            ttl,
            bundle_pem: bundle.to_pem(),
            bundle,
            loaded,
        });
        self.inner.cache.put(mesh_id, ident.clone(), epoch);
        Ok(ident)
    }

    /// Which organization and mesh own a trust domain (cached like the meshes).
    async fn mesh_of_trust_domain(&self, td: &str) -> Result<Option<(OrgId, MeshId)>, PkiError> {
        if let Some(found) = self.inner.cache.domain(td) {
            return Ok(Some(found));
        }
        let found = self.inner.store.mesh_of_trust_domain(td).await?;
        if let Some((org, mesh)) = found {
            self.inner.cache.put_domain(td, org, mesh);
        }
        Ok(found)
    }

    /// Records an issued leaf (batched with concurrent ones); `false` when its CA stopped
    /// being the active one before the record could commit.
    async fn record(&self, org: OrgId, mesh: MeshId, leaf: IssuedLeaf) -> Result<bool, PkiError> {
        let writer = self.inner.leaves.get_or_init(|| LeafWriter::start(self.inner.store.clone()));
        let service = leaf.service.clone();
        Self::recorded(writer.record(org, mesh, leaf).await?, &service)
    }

    /// `true` when a leaf was recorded, `false` when it must be signed again by the new CA.
    fn recorded(outcome: LeafOutcome, service: &str) -> Result<bool, PkiError> {
        match outcome {
            LeafOutcome::Recorded => Ok(true),
            LeafOutcome::CaNotActive => Ok(false),
            LeafOutcome::ServiceGone => {
                Err(PkiError::Unauthenticated(format!("service {service} was deleted during issuance")))
            }
        }
    }

    /// Signs an SVID for `id` with the mesh's active CA (no database round trip).
    fn sign_with(ident: &MeshIdentity, id: &SpiffeId, csr: &[u8]) -> Result<(Uuid, IssuedSvid), PkiError> {
        let (ca_id, ca) = ident
            .signer
            .clone()
            .ok_or_else(|| PkiError::Conflict("this mesh has no active certificate authority".into()))?;
        let svid = ca
            .sign_svid(csr, id, ident.ttl, SystemTime::now())
            .map_err(|e| PkiError::Invalid { field: "csr", message: e.to_string() })?;
        Ok((ca_id, svid))
    }

    fn issued(ident: &MeshIdentity, svid: IssuedSvid) -> Issued {
        Issued {
            svid,
            bundle_pem: ident.bundle_pem.clone(),
            bundle_sequence: ident.bundle.sequence(),
            org: ident.org,
            mesh: ident.mesh.clone(),
        }
    }

    /// The record of a leaf for `service`, bounded by `tags`.
    fn leaf(ca_id: Uuid, svid: &IssuedSvid, service: &str, tags: &Tags) -> IssuedLeaf {
        IssuedLeaf {
            serial: svid.serial_hex.clone(),
            ca_id,
            spiffe_id: svid.spiffe_id.as_str().to_owned(),
            not_after: utc(svid.not_after),
            service: service.to_owned(),
            tags: serde_json::to_value(tags).unwrap_or_default(),
            join_token: None,
            replaces: None,
        }
    }

    /// Join token + CSR → SVID for the service the token is bound to. Everything but the
    /// CSR's public key is ignored.
    ///
    /// A single-use token is spent in the transaction that records the leaf: a refused or
    /// failed issuance spends nothing, and two redemptions cannot both succeed. A multi-use
    /// token is only read; its use is counted when the leaf is recorded (batched with
    /// concurrent issuances), so that clients sharing one token do not queue on its row.
    ///
    /// A refusal of a token that exists (revoked, expired, spent, a bad CSR, its service
    /// deleted) is noted on the token, so that its owner sees why the agent was turned away.
    pub async fn issue_with_join_token(&self, token: &str, csr: &[u8]) -> Result<Issued, PkiError> {
        let parsed = Token::parse(TokenKind::Join, token)
            .map_err(|e| PkiError::Unauthenticated(format!("not a join token: {e}")))?;
        let sha = token_sha256(token);
        let result = self.redeem_join_token(parsed.org, &sha, csr).await;
        let reason = match &result {
            Err(PkiError::Unauthenticated(why)) => Some(why.clone()),
            Err(PkiError::Invalid { field, message }) => Some(format!("{field}: {message}")),
            _ => None,
        };
        if let Some(reason) = reason {
            // Issuance's answer does not depend on the note; an unknown token updates nothing.
            let noted = async {
                let mut tx = self.inner.store.tenant(parsed.org).await?;
                tx.record_join_refusal(&sha, &reason).await?;
                tx.commit().await
            };
            if let Err(e) = noted.await {
                tracing::warn!(error = %e, "noting a join token's refusal failed");
            }
        }
        result
    }

    async fn redeem_join_token(&self, org: OrgId, sha: &[u8; 32], csr: &[u8]) -> Result<Issued, PkiError> {
        let refused = |why: JoinRefusal| {
            PkiError::Unauthenticated(
                match why {
                    JoinRefusal::Unknown => "unknown join token",
                    JoinRefusal::Revoked => "revoked join token",
                    JoinRefusal::Expired => "expired join token",
                    JoinRefusal::AlreadyUsed => "single-use join token already used",
                }
                .into(),
            )
        };
        let gone = |e: PkiError| match e {
            PkiError::NotFound(_) => PkiError::Unauthenticated("the token's mesh is gone".into()),
            e => e,
        };
        for attempt in 0..2 {
            let mut tx = self.inner.store.tenant(org).await?;
            let record = tx.join_token_by_hash(sha).await?.ok_or(refused(JoinRefusal::Unknown))?;
            if record.revoked_at.is_some() {
                return Err(refused(JoinRefusal::Revoked));
            }
            if record.expires_at <= Utc::now() {
                return Err(refused(JoinRefusal::Expired));
            }
            let mesh_id = MeshId::from_uuid(record.mesh_id);
            let ident = match self.cached_identity(mesh_id) {
                Some(i) => i,
                None => self.load_identity(&mut tx, mesh_id).await.map_err(gone)?,
            };
            let id = SpiffeId::workload(&ident.trust_domain, &ident.mesh, &record.service)
                .map_err(PkiError::internal)?;
            // Tokens are made with checked tags; a stored value that is not a map of strings
            // binds nothing it could not, so it is refused rather than ignored.
            let tags: Tags = serde_json::from_value(record.tags.clone())
                .map_err(|e| PkiError::internal(format!("join token tags: {e}")))?;
            let recorded = if record.single_use {
                // Recorded before the token is spent (the lock order of
                // `record_leaves_if_active`); a refused redemption rolls the record back.
                let (ca_id, svid) = Self::sign_with(&ident, &id, csr)?;
                let leaf = Self::leaf(ca_id, &svid, &record.service, &tags);
                let outcome = tx.record_leaves_if_active(&[(mesh_id, leaf)]).await?;
                let outcome = outcome.first().copied().unwrap_or(LeafOutcome::CaNotActive);
                if Self::recorded(outcome, &record.service)? {
                    tx.redeem_join_token(sha).await.map_err(refused)?;
                    tx.commit().await?;
                    Some(svid)
                } else {
                    None
                }
            } else {
                tx.commit().await?;
                let (ca_id, svid) = Self::sign_with(&ident, &id, csr)?;
                let leaf = IssuedLeaf {
                    join_token: Some(record.id),
                    ..Self::leaf(ca_id, &svid, &record.service, &tags)
                };
                self.record(org, mesh_id, leaf).await?.then_some(svid)
            };
            if let Some(svid) = recorded {
                return Ok(Self::issued(&ident, svid));
            }
            // The CA changed since the mesh was cached: forget it and sign again.
            self.forget(mesh_id);
            if attempt > 0 {
                break;
            }
        }
        Err(PkiError::Conflict("the mesh's certificate authority is changing; retry".into()))
    }

    /// Renewal: a new SVID for exactly the identity the caller authenticated with, bounded
    /// by the same tags. Signed from the cached mesh; the leaf's record is committed (in a
    /// batch with concurrent issuances) before the SVID is returned. It names the leaf the
    /// caller authenticated with, which is superseded (no longer in use, for retiring its CA)
    /// once the new one is first presented.
    pub async fn renew(&self, peer: &Peer, csr: &[u8]) -> Result<Issued, PkiError> {
        for attempt in 0..2 {
            let ident = self.identity(peer.org, peer.mesh_id).await?;
            let (ca_id, svid) = Self::sign_with(&ident, &peer.id, csr)?;
            let leaf = IssuedLeaf {
                replaces: Some(peer.serial.clone()),
                ..Self::leaf(ca_id, &svid, &peer.service, &peer.tags)
            };
            let (serial, not_after) = (leaf.serial.clone(), leaf.not_after);
            if self.record(peer.org, peer.mesh_id, leaf).await? {
                // The dataplanes that held the old SVID hold this one now (for their
                // service's health); issuance does not fail when that note does.
                if let Err(e) =
                    self.inner.store.svid_renewed(peer.org, &peer.serial, &serial, not_after).await
                {
                    tracing::warn!(error = %e, "noting a renewed SVID on its dataplanes failed");
                }
                return Ok(Self::issued(&ident, svid));
            }
            self.forget(peer.mesh_id);
            if attempt > 0 {
                break;
            }
        }
        Err(PkiError::Conflict("the mesh's certificate authority is changing; retry".into()))
    }

    /// Authenticates a workload by the certificate chain it presented in TLS (leaf first):
    /// the chain must verify against its mesh's current bundle, the SVID must name a
    /// service of that mesh, and its issuance record must exist and be unrevoked (it holds
    /// the tags that bound the identity).
    pub async fn authenticate_peer(&self, chain: &[CertificateDer<'_>]) -> Result<Peer, PkiError> {
        let now = SystemTime::now();
        let digest = chain_digest(chain);
        if let Some(peer) = self.inner.cache.verified(&digest, now) {
            return Ok(peer);
        }
        let leaf = chain.first().ok_or_else(|| PkiError::Unauthenticated("no client certificate".into()))?;
        let claimed = trellis_ca::claimed_leaf(leaf)
            .map_err(|e| PkiError::Unauthenticated(format!("client certificate: {e}")))?;
        let td = claimed.id.trust_domain();
        let unknown = || PkiError::Unauthenticated(format!("no mesh has the trust domain {td}"));
        let (mut org, mut mesh_id) = self.mesh_of_trust_domain(td.as_str()).await?.ok_or_else(unknown)?;
        let ident = match self.identity(org, mesh_id).await {
            // The mesh of a remembered trust domain is gone (deleted, perhaps made again
            // under the same name): ask the directory once more.
            Err(PkiError::NotFound(_)) => {
                self.inner.cache.forget_domain(td.as_str());
                (org, mesh_id) = self.mesh_of_trust_domain(td.as_str()).await?.ok_or_else(unknown)?;
                self.identity(org, mesh_id).await.map_err(|e| match e {
                    PkiError::NotFound(_) => unknown(),
                    e => e,
                })?
            }
            r => r?,
        };
        let id = verify_svid(&ident.bundle, chain, now)
            .map_err(|e| PkiError::Unauthenticated(format!("client certificate: {e}")))?;
        let service = id
            .path()
            .strip_prefix(&format!("/ns/{}/sa/", ident.mesh))
            .filter(|s| !s.is_empty() && !s.contains('/'))
            .ok_or_else(|| PkiError::Unauthenticated(format!("{id} does not name a service of this mesh")))?
            .to_owned();
        let tags = self.issued_tags(org, mesh_id, &claimed.serial_hex, &service).await?;
        let peer = Peer {
            org,
            mesh_id,
            mesh: ident.mesh.clone(),
            trust_domain: td,
            id,
            service,
            tags,
            serial: claimed.serial_hex.clone(),
            not_after: utc(claimed.not_after),
        };
        self.inner.cache.remember_verified(digest, &ident, peer.clone(), claimed.not_after);
        Ok(peer)
    }

    /// The tags that bound a verified leaf, from its issuance record. A leaf without one was
    /// not issued by Trellis (a key uploaded with its CA could sign one), and a revoked one
    /// belongs to a deleted service: neither authenticates. Reading it supersedes the leaf
    /// it renewed ([`TenantTx::presented_leaf`]).
    async fn issued_tags(
        &self,
        org: OrgId,
        mesh: MeshId,
        serial: &str,
        service: &str,
    ) -> Result<Tags, PkiError> {
        let mut tx = self.inner.store.tenant(org).await?;
        let record = tx.presented_leaf(mesh, serial).await?;
        tx.commit().await?;
        let record = record.filter(|r| r.service == service).ok_or_else(|| {
            PkiError::Unauthenticated(format!("certificate {serial} has no issuance record for {service}"))
        })?;
        if record.revoked_at.is_some() {
            return Err(PkiError::Unauthenticated(format!(
                "certificate {serial} was revoked: service {service} was deleted"
            )));
        }
        serde_json::from_value(record.tags).map_err(|e| PkiError::internal(format!("issued leaf tags: {e}")))
    }

    /// The mesh's CA status.
    pub async fn status(&self, tx: &mut TenantTx, mesh: &Mesh) -> Result<CaStatus, PkiError> {
        let cas = tx.mesh_cas(mesh.id).await?;
        let live: HashMap<Uuid, i64> = tx.live_leaves(mesh.id).await?.into_iter().collect();
        let settings = tx.ca_settings(mesh.id).await?;
        let now = Utc::now();
        let phase = if cas.iter().any(|c| c.state == CaState::Pending) {
            "awaiting-chain"
        } else if cas.iter().any(|c| c.state == CaState::Prepared) {
            "prepared"
        } else if cas.iter().any(|c| c.state == CaState::Previous) {
            "rotated"
        } else {
            "stable"
        };
        let infos = cas
            .iter()
            .map(|c| CaInfo {
                id: c.id,
                origin: c.origin.as_str(),
                state: c.state.as_str(),
                root_fingerprint: c.root_fingerprint.clone(),
                not_after: c.not_after,
                days_to_expiry: c.not_after.map(|t| (t - now).num_days()),
                live_leaves: live.get(&c.id).copied().unwrap_or(0),
                certificate_pem: c.chain.first().map(|d| trellis_ca::pem_encode("CERTIFICATE", d)),
                csr_pem: c.csr_pem.clone(),
                created_at: c.created_at,
                activated_at: c.activated_at,
                retired_at: c.retired_at,
            })
            .collect();
        Ok(CaStatus {
            phase,
            trust_domain: mesh.trust_domain.to_string(),
            bundle_sequence: settings.bundle_sequence,
            svid_ttl_seconds: settings.svid_ttl_seconds,
            cas: infos,
        })
    }

    fn ensure_no_rotation(cas: &[CaRecord]) -> Result<(), PkiError> {
        if let Some(c) = cas.iter().find(|c| matches!(c.state, CaState::Pending | CaState::Prepared)) {
            return Err(PkiError::Conflict(format!(
                "a rotation is already in progress (CA {} is {}); activate it or discard it first",
                c.id,
                c.state.as_str()
            )));
        }
        Ok(())
    }

    /// Rotation, step 1: a new root, published in the bundle beside the current one.
    pub async fn prepare_rotation(&self, tx: &mut TenantTx, mesh: &Mesh) -> Result<CaRecord, PkiError> {
        Self::ensure_no_rotation(&tx.mesh_cas(mesh.id).await?)?;
        let ca =
            MeshCa::generate_root(&trust_domain(mesh)?, self.inner.options.root_validity, SystemTime::now())
                .map_err(PkiError::internal)?;
        self.store_ca(tx, mesh, &ca, CaOrigin::Generated, CaState::Prepared).await
    }

    /// Rotation, step 2: the prepared CA signs from now on; the old one stays in the bundle.
    pub async fn activate(&self, tx: &mut TenantTx, mesh: &Mesh) -> Result<CaRecord, PkiError> {
        let cas = tx.mesh_cas(mesh.id).await?;
        let next = cas.iter().find(|c| c.state == CaState::Prepared).ok_or_else(|| {
            PkiError::Conflict("nothing to activate: prepare a rotation or upload a CA first".into())
        })?;
        let ca = self.load(tx.org(), mesh, next)?;
        ca.ensure_min_days(SystemTime::now(), self.inner.options.min_days)
            .map_err(|e| PkiError::Conflict(format!("refusing to activate: {e}")))?;
        if let Some(current) = cas.iter().find(|c| c.state == CaState::Active) {
            tx.set_ca_state(mesh.id, current.id, &[CaState::Active], CaState::Previous).await?;
        }
        Ok(tx.set_ca_state(mesh.id, next.id, &[CaState::Prepared], CaState::Active).await?)
    }

    /// Rotation, step 3: a previous CA's root leaves the bundle, once no leaf it signed is in
    /// use — unexpired and not superseded by a renewal its holder has presented; agents renew
    /// as soon as their bundle names another active root and present the new leaf at once —
    /// (or at once with `force`, which breaks those leaves).
    pub async fn retire(
        &self,
        tx: &mut TenantTx,
        mesh: &Mesh,
        id: Uuid,
        force: bool,
    ) -> Result<CaRecord, PkiError> {
        let cas = tx.mesh_cas(mesh.id).await?;
        let ca = cas.iter().find(|c| c.id == id).ok_or(PkiError::NotFound("certificate authority"))?;
        if ca.state != CaState::Previous {
            return Err(PkiError::Conflict(format!(
                "only a previous CA can be retired; this one is {}",
                ca.state.as_str()
            )));
        }
        let live = tx.live_leaves(mesh.id).await?.into_iter().find(|(c, _)| *c == id).map_or(0, |(_, n)| n);
        if live > 0 && !force {
            return Err(PkiError::Conflict(format!(
                "{live} unexpired certificates still chain to this CA and their workloads have not \
                 presented a renewed one; retire it once they have (agents do within seconds of the \
                 activation) or the certificates expire, or pass force=true to cut them off"
            )));
        }
        Ok(tx.set_ca_state(mesh.id, id, &[CaState::Previous], CaState::Retired).await?)
    }

    /// Discards a rotation that was not activated (a prepared or pending CA).
    pub async fn discard(&self, tx: &mut TenantTx, mesh: &Mesh, id: Uuid) -> Result<(), PkiError> {
        let cas = tx.mesh_cas(mesh.id).await?;
        match cas.iter().find(|c| c.id == id).map(|c| c.state) {
            Some(CaState::Pending) => Ok(tx.delete_pending_ca(mesh.id, id).await?),
            Some(CaState::Prepared) => {
                tx.set_ca_state(mesh.id, id, &[CaState::Prepared], CaState::Retired).await?;
                Ok(())
            }
            Some(s) => Err(PkiError::Conflict(format!("a {} CA cannot be discarded", s.as_str()))),
            None => Err(PkiError::NotFound("certificate authority")),
        }
    }

    /// Bring your own intermediate, step 1: a new key (sealed at once) and its CSR.
    pub async fn intermediate_csr(&self, tx: &mut TenantTx, mesh: &Mesh) -> Result<CaRecord, PkiError> {
        Self::ensure_no_rotation(&tx.mesh_cas(mesh.id).await?)?;
        let (key, csr_pem) =
            generate_intermediate_csr(&trust_domain(mesh)?, SystemTime::now()).map_err(PkiError::internal)?;
        let sealed = seal(&self.inner.keyring, key.expose_pkcs8_der(), &aad(tx.org(), mesh.id))
            .map_err(PkiError::internal)?;
        let record = NewCa {
            origin: CaOrigin::IntermediateCsr,
            state: CaState::Pending,
            chain: Vec::new(),
            root_fingerprint: None,
            not_after: None,
            csr_pem: Some(csr_pem),
            sealed_key: sealed_bytes(&sealed),
        };
        Ok(tx.insert_ca(mesh.id, &record).await?)
    }

    /// Bring your own intermediate, step 2: the chain the tenant signed (intermediate first,
    /// its root last), checked against the pending key; the CA becomes `prepared`.
    pub async fn upload_intermediate(
        &self,
        tx: &mut TenantTx,
        mesh: &Mesh,
        id: Uuid,
        chain_pem: &str,
    ) -> Result<CaRecord, PkiError> {
        let cas = tx.mesh_cas(mesh.id).await?;
        let pending = cas
            .iter()
            .find(|c| c.id == id && c.state == CaState::Pending)
            .ok_or(PkiError::NotFound("pending certificate authority"))?;
        let key = unseal(&self.inner.keyring, &sealed_key(&pending.sealed_key)?, &aad(tx.org(), mesh.id))
            .map_err(PkiError::internal)?;
        let ca = accept_intermediate(
            &key,
            chain_pem,
            &trust_domain(mesh)?,
            SystemTime::now(),
            self.inner.options.min_days,
        )
        .map_err(|e| PkiError::Invalid { field: "certificateChain", message: e.to_string() })?;
        let chain: Vec<Vec<u8>> = ca.chain_der().iter().map(|c| c.to_vec()).collect();
        Ok(tx.complete_pending_ca(mesh.id, id, &chain, ca.root().fingerprint(), utc(ca.not_after())).await?)
    }

    /// An uploaded CA certificate chain and key (sealed at once); it becomes `prepared`.
    pub async fn upload_ca(
        &self,
        tx: &mut TenantTx,
        mesh: &Mesh,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<CaRecord, PkiError> {
        Self::ensure_no_rotation(&tx.mesh_cas(mesh.id).await?)?;
        let ca = accept_uploaded_ca(
            chain_pem,
            key_pem,
            &trust_domain(mesh)?,
            SystemTime::now(),
            self.inner.options.min_days,
        )
        .map_err(|e| PkiError::Invalid {
            // A key that does not parse is the key's fault; everything else is the chain's
            // (a chain that does not hold the key included).
            field: if matches!(e, ByoError::Key(_)) { "privateKey" } else { "certificateChain" },
            message: e.to_string(),
        })?;
        self.store_ca(tx, mesh, &ca, CaOrigin::Uploaded, CaState::Prepared).await
    }

    /// Re-wraps every sealed key (every tenant's CAs and the platform CA) under the ring's
    /// current KEK; returns how many keys were re-wrapped.
    pub async fn reseal_all(&self) -> Result<usize, PkiError> {
        let store = &self.inner.store;
        let ring = &self.inner.keyring;
        let mut n = 0;
        for org in store.org_ids().await? {
            let mut tx = store.tenant(org).await?;
            for ca in tx.all_cas().await? {
                let sealed = sealed_key(&ca.sealed_key)?;
                if !ring.needs_reseal(&sealed) {
                    continue;
                }
                let aad = aad(org, ca.mesh_id);
                let key = unseal(ring, &sealed, &aad).map_err(PkiError::internal)?;
                let new = seal(ring, key.expose_pkcs8_der(), &aad).map_err(PkiError::internal)?;
                tx.reseal_ca_key(ca.id, &sealed_bytes(&new)).await?;
                n += 1;
            }
            tx.commit().await?;
        }
        if crate::platform::reseal_platform(store, ring).await? {
            n += 1;
        }
        Ok(n)
    }
}
