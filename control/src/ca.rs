//! A mesh's certificate authority: status, trust bundles, the rotation state machine,
//! bring-your-own CAs, SVID settings, join tokens, and SVIDs for join tokens. The PKI itself
//! is `trellis_pki::Authority`; these use cases add the caller's role and the audit log.

use std::sync::Arc;

use chrono::{Duration, Utc};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use trellis_ca::TrustBundle;
use trellis_model::OrgSlug;
use trellis_model::config::{Kind, Labels};
use trellis_model::{Action, ResourceName, SECRET_LEN, SvidTtl, Tags, Token, TokenKind};
use trellis_pki::{CaStatus, Issued};
use trellis_store::{CaExpiry, CaRecord, JoinToken, Mesh, Store, StoreError};
use uuid::Uuid;

use crate::caller::token_hash;
use crate::{AppError, Control, Scope};

/// Largest uploaded chain, as PEM text.
pub const MAX_CHAIN_PEM: usize = 64 * 1024;
/// Largest uploaded private key, as PEM text.
pub const MAX_KEY_PEM: usize = 16 * 1024;
/// Join token lifetime: default and bounds, in seconds.
pub const JOIN_TTL_DEFAULT: i64 = 3600;
pub const JOIN_TTL_MIN: i64 = 60;
pub const JOIN_TTL_MAX: i64 = 7 * 24 * 3600;

/// A join token to mint: for one service of the mesh, with the tags its dataplanes carry.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewJoinToken {
    /// A Service of the mesh
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 63))]
    pub service: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, String>))]
    pub tags: Labels,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = join_ttl))]
    pub ttl_seconds: Option<i64>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    pub single_use: bool,
}

#[cfg(feature = "openapi")]
fn join_ttl() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(JOIN_TTL_MIN))
        .maximum(Some(JOIN_TTL_MAX))
        .default(Some(JOIN_TTL_DEFAULT.into()))
}

/// A minted join token: its record and, shown this once, its text.
pub struct MintedJoinToken {
    pub record: JoinToken,
    pub token: String,
}

/// A CA's id from its text (404 when it cannot be one).
fn ca_id(id: &str) -> Result<Uuid, AppError> {
    id.parse().map_err(|_| AppError::not_found("certificate authority not found"))
}

impl Control {
    /// The status after a change, then the change committed; this replica issues from the new
    /// state at once, the others follow the change feed.
    async fn ca_finish(&self, mut scope: Scope, mesh: Mesh) -> Result<(Mesh, CaStatus), AppError> {
        let st = self.authority.status(&mut scope.tx, &mesh).await?;
        scope.commit().await?;
        self.authority.forget(mesh.id);
        Ok((mesh, st))
    }

    /// Phase, trust domain, bundle sequence, SVID lifetime and every CA (never a key).
    pub async fn ca_status(&self, scope: Scope, mesh: &str) -> Result<(Mesh, CaStatus), AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        self.ca_finish(scope, m).await
    }

    /// The mesh's trust bundle.
    pub async fn ca_bundle(&self, scope: Scope, mesh: &str) -> Result<Arc<TrustBundle>, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let b = self.authority.bundle(&mut scope.tx, &m).await?;
        scope.commit().await?;
        Ok(b)
    }

    /// A new root, in the bundle beside the current one.
    pub async fn prepare_rotation(&self, scope: Scope, mesh: &str) -> Result<(Mesh, CaStatus), AppError> {
        let mut scope = scope.allow(Action::ManageCa)?;
        let m = scope.mesh(mesh).await?;
        let ca = self.authority.prepare_rotation(&mut scope.tx, &m).await?;
        let target = format!("meshes/{}/ca/authorities/{}", m.name, ca.id);
        scope.audit("ca.rotation.prepare", target, json!({"fingerprint": ca.root_fingerprint})).await?;
        self.ca_finish(scope, m).await
    }

    /// The prepared CA signs from now on.
    pub async fn activate_rotation(&self, scope: Scope, mesh: &str) -> Result<(Mesh, CaStatus), AppError> {
        let mut scope = scope.allow(Action::ManageCa)?;
        let m = scope.mesh(mesh).await?;
        let ca = self.authority.activate(&mut scope.tx, &m).await?;
        let target = format!("meshes/{}/ca/authorities/{}", m.name, ca.id);
        scope.audit("ca.rotation.activate", target, json!({})).await?;
        self.ca_finish(scope, m).await
    }

    /// A previous CA leaves the bundle (409 while leaves in use — unexpired, not renewed — chain to it, unless `force`).
    pub async fn retire_ca(
        &self,
        scope: Scope,
        mesh: &str,
        id: &str,
        force: bool,
    ) -> Result<(Mesh, CaStatus), AppError> {
        let mut scope = scope.allow(Action::ManageCa)?;
        let m = scope.mesh(mesh).await?;
        let id = ca_id(id)?;
        self.authority.retire(&mut scope.tx, &m, id, force).await?;
        let target = format!("meshes/{}/ca/authorities/{id}", m.name);
        scope.audit("ca.retire", target, json!({"force": force})).await?;
        self.ca_finish(scope, m).await
    }

    /// Abandons a rotation that was not activated.
    pub async fn discard_ca(&self, scope: Scope, mesh: &str, id: &str) -> Result<(Mesh, CaStatus), AppError> {
        let mut scope = scope.allow(Action::ManageCa)?;
        let m = scope.mesh(mesh).await?;
        let id = ca_id(id)?;
        self.authority.discard(&mut scope.tx, &m, id).await?;
        let target = format!("meshes/{}/ca/authorities/{id}", m.name);
        scope.audit("ca.discard", target, json!({})).await?;
        self.ca_finish(scope, m).await
    }

    /// A new intermediate key (sealed at once) and its CSR, for the tenant to sign with its
    /// own root.
    pub async fn intermediate_csr(&self, scope: Scope, mesh: &str) -> Result<CaRecord, AppError> {
        let mut scope = scope.allow(Action::ManageCa)?;
        let m = scope.mesh(mesh).await?;
        let ca = self.authority.intermediate_csr(&mut scope.tx, &m).await?;
        let target = format!("meshes/{}/ca/authorities/{}", m.name, ca.id);
        scope.audit("ca.intermediate.csr", target, json!({})).await?;
        scope.commit().await?;
        Ok(ca)
    }

    /// The chain the tenant signed for a pending CSR; checked, then the CA is `prepared`.
    pub async fn upload_intermediate(
        &self,
        scope: Scope,
        mesh: &str,
        id: &str,
        chain_pem: &str,
    ) -> Result<(Mesh, CaStatus), AppError> {
        let mut scope = scope.allow(Action::ManageCa)?;
        let m = scope.mesh(mesh).await?;
        let id = ca_id(id)?;
        let ca = self.authority.upload_intermediate(&mut scope.tx, &m, id, chain_pem).await?;
        let target = format!("meshes/{}/ca/authorities/{id}", m.name);
        scope.audit("ca.intermediate.upload", target, json!({"fingerprint": ca.root_fingerprint})).await?;
        self.ca_finish(scope, m).await
    }

    /// A CA certificate chain and its key (sealed at once); it becomes `prepared`.
    pub async fn upload_ca(
        &self,
        scope: Scope,
        mesh: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(Mesh, CaStatus), AppError> {
        let mut scope = scope.allow(Action::ManageCa)?;
        let m = scope.mesh(mesh).await?;
        let ca = self.authority.upload_ca(&mut scope.tx, &m, chain_pem, key_pem).await?;
        let target = format!("meshes/{}/ca/authorities/{}", m.name, ca.id);
        scope.audit("ca.upload", target, json!({"fingerprint": ca.root_fingerprint})).await?;
        self.ca_finish(scope, m).await
    }

    /// The lifetime of new SVIDs.
    pub async fn set_svid_ttl(
        &self,
        scope: Scope,
        mesh: &str,
        seconds: i64,
    ) -> Result<(Mesh, CaStatus), AppError> {
        let mut scope = scope.allow(Action::ManageCa)?;
        let m = scope.mesh(mesh).await?;
        let ttl = SvidTtl::from_secs(seconds).map_err(|_| {
            AppError::invalid_field(
                "svidTtlSeconds",
                format!("must be from {} (1 hour) to {} (7 days)", SvidTtl::MIN_SECS, SvidTtl::MAX_SECS),
            )
        })?;
        scope.tx.set_svid_ttl(m.id, ttl).await?;
        let target = format!("meshes/{}/ca", m.name);
        scope.audit("ca.settings.update", target, json!({"svidTtlSeconds": ttl.as_secs_i32()})).await?;
        self.ca_finish(scope, m).await
    }

    /// A `trls_join_…` token for one service of the mesh.
    pub async fn create_join_token(
        &self,
        scope: Scope,
        mesh: &str,
        req: NewJoinToken,
    ) -> Result<(Mesh, MintedJoinToken), AppError> {
        let mut scope = scope.allow(Action::ManageTokens)?;
        let m = scope.mesh(mesh).await?;
        // A token's tags become its dataplanes' tags: the same rule as a node's own.
        let tags = Tags::parse(&req.tags).map_err(|e| AppError::invalid_field("tags", e.to_string()))?;
        let ttl = req.ttl_seconds.unwrap_or(JOIN_TTL_DEFAULT);
        if !(JOIN_TTL_MIN..=JOIN_TTL_MAX).contains(&ttl) {
            return Err(AppError::invalid_field(
                "ttlSeconds",
                format!("must be from {JOIN_TTL_MIN} to {JOIN_TTL_MAX} (7 days)"),
            ));
        }
        let no_service = || {
            AppError::invalid_field(
                "service",
                format!(
                    "no Service {:?} in mesh {:?}: create the Service first",
                    req.service,
                    m.name.as_str()
                ),
            )
        };
        let service = ResourceName::parse(&req.service).map_err(|_| no_service())?;
        if scope.tx.get_resource(m.id, Kind::Service.name(), &service).await?.is_none() {
            return Err(no_service());
        }
        let mut secret = [0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut secret);
        let token = Token::new(TokenKind::Join, scope.caller.org.id, secret).to_string();
        let tags = serde_json::to_value(&tags).expect("tags serialize");
        let expires = Utc::now() + Duration::seconds(ttl);
        let actor = scope.caller.actor.clone();
        let record = scope
            .tx
            .create_join_token(
                m.id,
                &token_hash(&token),
                service.as_str(),
                &tags,
                req.single_use,
                &actor,
                expires,
            )
            .await?;
        let target = format!("meshes/{}/join-tokens/{}", m.name, record.id);
        let details = json!({"service": record.service, "singleUse": record.single_use, "expiresAt": record.expires_at});
        scope.audit("join-token.create", target, details).await?;
        scope.commit().await?;
        Ok((m, MintedJoinToken { record, token }))
    }

    /// The mesh's join tokens, newest first (never the tokens themselves).
    pub async fn list_join_tokens(
        &self,
        scope: Scope,
        mesh: &str,
    ) -> Result<(Mesh, Vec<JoinToken>), AppError> {
        let mut scope = scope.allow(Action::ManageTokens)?;
        let m = scope.mesh(mesh).await?;
        let tokens = scope.tx.list_join_tokens(m.id).await?;
        scope.commit().await?;
        Ok((m, tokens))
    }

    /// Revokes a join token (again: no error).
    pub async fn revoke_join_token(
        &self,
        scope: Scope,
        mesh: &str,
        id: &str,
    ) -> Result<(Mesh, JoinToken), AppError> {
        let mut scope = scope.allow(Action::ManageTokens)?;
        let m = scope.mesh(mesh).await?;
        let id: Uuid = id.parse().map_err(|_| AppError::not_found("join token not found"))?;
        let record = scope.tx.revoke_join_token(m.id, id).await?;
        scope.audit("join-token.revoke", format!("meshes/{}/join-tokens/{id}", m.name), json!({})).await?;
        scope.commit().await?;
        Ok((m, record))
    }

    /// Join token + CSR → an X.509-SVID for the token's service. Only the CSR's public key is
    /// used.
    pub async fn issue_svid(&self, join_token: &str, csr: &[u8]) -> Result<Issued, AppError> {
        let issued = self.authority.issue_with_join_token(join_token, csr).await?;
        tracing::info!(spiffe_id = %issued.svid.spiffe_id, serial = %issued.svid.serial_hex, org = %issued.org,
            "issued an SVID for a join token");
        Ok(issued)
    }
}

/// Every tenant's CA expiries (not retired CAs), one tenant transaction each: for the
/// expiry gauges, which a scrape never reads from the database.
pub async fn ca_expiries(store: &Store) -> Result<Vec<(OrgSlug, CaExpiry)>, StoreError> {
    let mut out = Vec::new();
    for org in store.org_ids().await? {
        let mut tx = store.tenant(org).await?;
        let slug = tx.own_org().await?.slug;
        out.extend(tx.ca_expiries().await?.into_iter().map(|e| (slug.clone(), e)));
        tx.commit().await?;
    }
    Ok(out)
}
