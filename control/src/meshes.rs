//! Meshes: list, read, create or replace (each new mesh gets its own root CA), delete.

use serde_json::{Value, json};
use trellis_model::config::{self, Labels, MeshSpec};
use trellis_model::{Action, MeshName, OrgSlug};
use trellis_store::Mesh;

use crate::precondition::{Condition, IfMatch};
use crate::resources::{Page, Written, labels_json};
use crate::{AppError, Control, Scope};

/// A mesh as a client wrote it.
pub struct MeshWrite {
    pub labels: Labels,
    pub spec: Value,
}

impl Control {
    /// A page of the organization's meshes, by name, and the name to continue after.
    pub async fn list_meshes(
        &self,
        scope: Scope,
        page: &Page,
    ) -> Result<(Vec<Mesh>, Option<String>), AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let meshes = scope.tx.list_meshes_page(page.after.as_deref(), page.limit).await?;
        let names: Vec<&str> = meshes.iter().map(|m| m.name.as_str()).collect();
        let next = page.cursor_after(&names);
        Ok((meshes, next))
    }

    /// One mesh.
    pub async fn get_mesh(&self, scope: Scope, mesh: &str) -> Result<Mesh, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        scope.mesh(mesh).await
    }

    /// Creates the mesh `name` or replaces its spec and labels. Its trust domain is fixed once
    /// set: given (and owned by the organization) or derived from the names.
    pub async fn put_mesh(
        &self,
        scope: Scope,
        name: &str,
        write: MeshWrite,
        condition: &Condition,
    ) -> Result<Written<Mesh>, AppError> {
        let mut scope = scope.allow(Action::WriteConfig)?;
        let name =
            MeshName::parse(name).map_err(|e| AppError::invalid_field("metadata.name", e.to_string()))?;
        let mut spec: MeshSpec = config::parse_mesh_spec("spec", write.spec).map_err(AppError::invalid)?;
        let existing = scope.tx.mesh_by_name(&name).await?;
        let trust_domain = match (&existing, &spec.trust_domain) {
            (Some(m), Some(td)) if td != m.trust_domain.as_str() => {
                return Err(AppError::invalid_field(
                    "spec.trustDomain",
                    format!(
                        "cannot change once set (it is {:?}): every identity in the mesh names it",
                        m.trust_domain.as_str()
                    ),
                ));
            }
            (Some(m), _) => m.trust_domain.to_string(),
            (None, Some(td)) => {
                config::check_trust_domain_owner(td, &scope.caller.org.slug)
                    .map_err(|e| AppError::invalid_field("spec.trustDomain", e))?;
                td.clone()
            }
            (None, None) => self.default_trust_domain(&name, &scope.caller.org.slug).await?,
        };
        spec.trust_domain = Some(trust_domain.clone());
        let pre = condition.against(existing.as_ref().map(|m| m.version))?;
        let spec_json = serde_json::to_value(&spec).expect("mesh spec serializes");
        let put =
            scope.tx.put_mesh(&name, &trust_domain, &spec_json, &labels_json(&write.labels), pre).await?;
        if put.created {
            // Each mesh gets its own root CA, in the transaction that creates it.
            self.authority.create_root(&mut scope.tx, &put.value).await?;
        }
        if put.changed {
            let action = if put.created { "mesh.create" } else { "mesh.update" };
            scope
                .audit(action, format!("meshes/{name}"), json!({"generation": put.value.generation}))
                .await?;
        }
        scope.commit().await?;
        self.authority.forget(put.value.id);
        Ok(Written { value: put.value, created: put.created, changed: put.changed })
    }

    /// A new mesh's trust domain when its spec names none. The plain default is still held
    /// when an organization that had this slug before made a mesh of this name; then a random
    /// label keeps the new one apart (no other organization can take a name under this slug).
    async fn default_trust_domain(&self, mesh: &MeshName, org: &OrgSlug) -> Result<String, AppError> {
        let plain = config::default_trust_domain(mesh, org, None);
        if self.store.mesh_of_trust_domain(&plain).await?.is_none() {
            return Ok(plain);
        }
        let salt: String = (0..8)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random_range(0..36)]))
            .collect();
        Ok(config::default_trust_domain(mesh, org, Some(&salt)))
    }

    /// Deletes a mesh and everything in it.
    pub async fn delete_mesh(
        &self,
        scope: Scope,
        mesh: &str,
        if_match: Option<&IfMatch>,
    ) -> Result<(), AppError> {
        let mut scope = scope.allow(Action::WriteConfig)?;
        let m = scope.mesh(mesh).await?;
        if let Some(im) = if_match {
            im.expect(Some(m.version))?;
        }
        scope.tx.delete_mesh(m.id).await?;
        scope.audit("mesh.delete", format!("meshes/{}", m.name), json!({})).await?;
        scope.commit().await?;
        self.authority.forget(m.id);
        Ok(())
    }
}
