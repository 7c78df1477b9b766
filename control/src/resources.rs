//! Mesh-scoped resources of every kind: pages with label selectors, reads with their
//! propagation status, writes whose references are resolved first, idempotent creation, and
//! a service's effective policies.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use trellis_model::config::{self, EffectiveEntry, FieldError, Kind, Labels, MeshSpec, Spec};
use trellis_model::{Action, MeshName, PropagationWait, ResourceName};
use trellis_store::{Mesh, Reached, Resource, ResourceKey, Selector, StoredResponse, TenantTx};

use crate::caller::{parse_api_token, token_caller};
use crate::precondition::{Condition, IfMatch};
use crate::propagation::{Landing, Propagation};
use crate::{AppError, Control, Credential, Request, Scope, token_hash};

/// The `apiVersion` of every configuration document.
pub const API_VERSION: &str = "trellis.dev/v1";
/// Page size bounds for lists.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 500;

/// A write's outcome: what is stored now, whether it was created, and whether anything
/// changed (a PUT of what is stored writes nothing).
pub struct Written<T> {
    pub value: T,
    pub created: bool,
    pub changed: bool,
}

/// A resource as a client wrote it.
pub struct Document {
    pub labels: Labels,
    pub spec: Value,
}

/// One page of a list: its size, where it starts and which labels it selects.
#[derive(Debug, Default)]
pub struct Page {
    pub limit: i64,
    pub after: Option<String>,
    pub selector: Selector,
}

impl Page {
    /// Parses a page request: `limit` (1 to [`MAX_LIMIT`]), a `cursor` this server issued and a
    /// `labelSelector`.
    pub fn parse(
        limit: Option<&str>,
        cursor: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Page, AppError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(s) => s.parse::<i64>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                AppError::bad_request(format!("limit must be a number from 1 to {MAX_LIMIT}"))
                    .with_field("limit", &format!("must be a number from 1 to {MAX_LIMIT}"))
            })?,
        };
        let after = match cursor {
            None => None,
            Some(c) => Some(
                URL_SAFE_NO_PAD
                    .decode(c.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|s| ResourceName::parse(s).is_ok())
                    .ok_or_else(|| {
                        AppError::bad_request("cursor is not one this server issued")
                            .with_field("cursor", "use the nextCursor of the previous page")
                    })?,
            ),
        };
        let selector = match selector {
            None => Selector::default(),
            Some(s) => parse_selector(s).map_err(|m| {
                AppError::bad_request(format!("labelSelector: {m}")).with_field("labelSelector", &m)
            })?,
        };
        Ok(Page { limit, after, selector })
    }

    /// The cursor of the next page when this one is full.
    pub(crate) fn cursor_after(&self, names: &[&str]) -> Option<String> {
        (names.len() as i64 == self.limit)
            .then(|| URL_SAFE_NO_PAD.encode(names.last().expect("non-empty").as_bytes()))
    }
}

/// Parses `k=v,k2!=v2,k3,!k4` (Kubernetes equality-based selectors), bounded.
pub fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut sel = Selector::default();
    if s.len() > 1024 {
        return Err("must be at most 1024 characters".into());
    }
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let check = |k: &str| {
            if config::valid_label_key(k) {
                Ok(k.to_owned())
            } else {
                Err(format!("{k:?} is not a label key"))
            }
        };
        let value = |v: &str| {
            if v.is_empty() || config::valid_label_part(v, 63) {
                Ok(v.to_owned())
            } else {
                Err(format!("{v:?} is not a label value"))
            }
        };
        if let Some((k, v)) = term.split_once("!=") {
            sel.not_equal.push((check(k.trim())?, value(v.trim())?));
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            sel.equal.push((check(k.trim())?, value(v.trim())?));
        } else if let Some(k) = term.strip_prefix('!') {
            sel.absent.push(check(k.trim())?);
        } else {
            sel.exists.push(check(term)?);
        }
    }
    if sel.equal.len() + sel.not_equal.len() + sel.exists.len() + sel.absent.len() > 16 {
        return Err("must have at most 16 terms".into());
    }
    Ok(sel)
}

pub(crate) fn labels_json(labels: &Labels) -> Value {
    serde_json::to_value(labels).expect("labels serialize")
}

/// A resource with how far its last write has reached the proxies it configures.
pub struct ResourceView {
    pub resource: Resource,
    /// None before the resource's write made a mesh revision.
    pub propagation: Option<Propagation>,
}

/// A service's effective policies.
pub struct Effective {
    pub mesh: Mesh,
    pub service: ResourceName,
    pub default_access: config::DefaultAccess,
    pub policies: Vec<EffectiveEntry>,
}

/// What a POST that creates a resource answered: made now, or replayed for a repeated
/// idempotency key.
pub enum Created {
    New { view: Box<ResourceView>, body: Value },
    Replayed { status: u16, body: Value },
}

/// A request's idempotency key and the fingerprint of what it asked.
pub struct Idempotency {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

impl Control {
    /// A page of a mesh's resources of one kind, each with its propagation, and the cursor
    /// of the next page.
    pub async fn list_resources(
        &self,
        scope: Scope,
        mesh: &str,
        kind: Kind,
        page: &Page,
    ) -> Result<(Mesh, Vec<ResourceView>, Option<String>), AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let items = scope
            .tx
            .list_resources(m.id, Some(kind.name()), &page.selector, page.after.as_deref(), page.limit)
            .await?;
        let names: Vec<&str> = items.iter().map(|r| r.name.as_str()).collect();
        let next = page.cursor_after(&names);
        let reached = scope.tx.propagation(m.id, kind.reach(), &items.iter().collect::<Vec<_>>()).await?;
        scope.commit().await?;
        let views = items.into_iter().zip(reached).map(|(r, p)| view(r, p)).collect();
        Ok((m, views, next))
    }

    /// One resource with its propagation. With an API token this is one statement, without
    /// an explicit transaction: the tenant setting, the token (revocation included), the mesh,
    /// the resource and its propagation (`Store::read_resource_with_token`); its answers,
    /// errors included, are those of the scope it stands for.
    pub async fn get_resource(
        &self,
        request: &Request,
        org: &str,
        mesh: &str,
        kind: Kind,
        name: &str,
    ) -> Result<(Mesh, ResourceView), AppError> {
        let not_found =
            || AppError::not_found(format!("{} {name:?} not found in mesh {mesh:?}", kind.name()));
        let (Credential::ApiToken(text), Ok(_), Ok(_)) =
            (&request.credential, MeshName::parse(mesh), ResourceName::parse(name))
        else {
            let mut scope = self.open(request, org).await?.allow(Action::Read)?;
            let m = scope.mesh(mesh).await?;
            let n = ResourceName::parse(name).map_err(|_| not_found())?;
            let r = scope.tx.get_resource(m.id, kind.name(), &n).await?.ok_or_else(not_found)?;
            let reached = scope.tx.propagation(m.id, kind.reach(), &[&r]).await?;
            scope.commit().await?;
            return Ok((m, view(r, reached.into_iter().next().flatten())));
        };
        let token = parse_api_token(text)?;
        let key = ResourceKey { mesh, kind: kind.name(), name, reach: kind.reach() };
        let read = self
            .store
            .read_resource_with_token(token.org, &token_hash(text), &key)
            .await?
            .ok_or_else(crate::caller::unknown_token)?;
        if read.org.slug.as_str() != org {
            return Err(crate::caller::org_not_found(org));
        }
        token_caller(read.org, &read.token, request).require(Action::Read)?;
        let m = read.mesh.ok_or_else(|| crate::caller::mesh_not_found(mesh))?;
        let (r, reached) = read.resource.ok_or_else(not_found)?;
        Ok((m, view(r, reached)))
    }

    /// Creates or replaces a resource under `condition`, after its references resolve; with
    /// `wait`, answers once every proxy it configures has applied it, one rejected it, or the
    /// wait is over (see [`Control::await_propagation`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn put_resource(
        &self,
        scope: Scope,
        mesh: &str,
        kind: Kind,
        name: &str,
        doc: Document,
        condition: &Condition,
        wait: Option<PropagationWait>,
    ) -> Result<(Mesh, Written<ResourceView>), AppError> {
        let mut scope = scope.allow(Action::WriteConfig)?;
        let n = resource_name(name)?;
        let m = scope.mesh(mesh).await?;
        let spec = checked_spec(&mut scope.tx, &m, kind, doc.spec).await?;
        let current = scope.tx.get_resource(m.id, kind.name(), &n).await?.map(|r| r.version);
        let pre = condition.against(current)?;
        let put = scope
            .tx
            .put_resource(m.id, kind.name(), &n, &spec.to_json(), &labels_json(&doc.labels), pre)
            .await?;
        if put.changed {
            let action =
                format!("{}.{}", kind.name().to_lowercase(), if put.created { "create" } else { "update" });
            let target = format!("meshes/{}/{}/{}", m.name, kind.plural(), n);
            scope.audit(action, target, json!({"generation": put.value.generation})).await?;
        }
        let caller = scope.commit().await?;
        // Read after the commit: the write's transaction never reads the fleet.
        let value = match (wait, put.value.mesh_revision) {
            (Some(wait), Some(revision)) => {
                let landing = Landing {
                    org: caller.org.id,
                    mesh: m.id,
                    revision,
                    reach: kind.reach(),
                    target: put.value.target.as_deref(),
                };
                let status = self.await_propagation(landing, wait).await?;
                ResourceView { resource: put.value, propagation: Some(status) }
            }
            _ => {
                let reached = self.store.propagation(caller.org.id, kind.reach(), &put.value).await?;
                view(put.value, reached)
            }
        };
        Ok((m, Written { value, created: put.created, changed: put.changed }))
    }

    /// Checks a write of `doc` as [`Control::put_resource`] would (role, name, spec,
    /// references) and writes nothing; returns the spec as it would be stored, for a front
    /// end that shows a change before it is made.
    pub async fn check_resource(
        &self,
        scope: Scope,
        mesh: &str,
        kind: Kind,
        name: &str,
        doc: &Document,
    ) -> Result<Value, AppError> {
        let mut scope = scope.allow(Action::WriteConfig)?;
        resource_name(name)?;
        let m = scope.mesh(mesh).await?;
        let spec = checked_spec(&mut scope.tx, &m, kind, doc.spec.clone()).await?;
        scope.commit().await?;
        Ok(spec.to_json())
    }

    /// Creates a resource named in its document (409 when it exists). With an idempotency
    /// key, the answer (`render`ed in the creating transaction) is stored and a repeat of the
    /// same request gets it again; another request under the same key is refused.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_resource(
        &self,
        scope: Scope,
        mesh: &str,
        kind: Kind,
        name: Option<&str>,
        doc: Document,
        idempotency: Option<Idempotency>,
        render: impl FnOnce(&Mesh, &ResourceView) -> Value,
    ) -> Result<Created, AppError> {
        let mut scope = scope.allow(Action::WriteConfig)?;
        let name = name.ok_or_else(|| AppError::invalid_field("metadata.name", "is required"))?;
        let n = resource_name(name)?;
        if let Some(idem) = &idempotency
            && let Some(stored) = scope.tx.idempotent_response(&idem.key).await?
        {
            if stored.fingerprint != idem.fingerprint {
                return Err(AppError::unprocessable(
                    "this Idempotency-Key was used for a different request; use a new key",
                ));
            }
            return Ok(Created::Replayed { status: stored.status, body: stored.body });
        }
        let m = scope.mesh(mesh).await?;
        let spec = checked_spec(&mut scope.tx, &m, kind, doc.spec).await?;
        let r = scope
            .tx
            .create_resource(m.id, kind.name(), &n, &spec.to_json(), &labels_json(&doc.labels))
            .await?;
        let target = format!("meshes/{}/{}/{}", m.name, kind.plural(), n);
        scope.audit(format!("{}.create", kind.name().to_lowercase()), target, json!({})).await?;
        // Inside the transaction, since the answer is stored with it; counted by PostgreSQL.
        let reached = scope.tx.propagation(m.id, kind.reach(), &[&r]).await?;
        let view = view(r, reached.into_iter().next().flatten());
        let body = render(&m, &view);
        if let Some(idem) = idempotency {
            let stored = StoredResponse { fingerprint: idem.fingerprint, status: 201, body: body.clone() };
            scope.tx.store_response(&idem.key, &stored).await?;
        }
        scope.commit().await?;
        Ok(Created::New { view: Box::new(view), body })
    }

    /// Deletes a resource; a service still referenced by another resource stays (409). With
    /// `wait`, answers once the proxies it configured have applied the deletion (every proxy
    /// of the mesh for a Service, whose callers stop calling it with this very change), one
    /// rejected it, or the wait is over: the deletion's propagation.
    pub async fn delete_resource(
        &self,
        scope: Scope,
        mesh: &str,
        kind: Kind,
        name: &str,
        if_match: Option<&IfMatch>,
        wait: Option<PropagationWait>,
    ) -> Result<Option<Propagation>, AppError> {
        let mut scope = scope.allow(Action::WriteConfig)?;
        let m = scope.mesh(mesh).await?;
        let not_found =
            || AppError::not_found(format!("{} {name:?} not found in mesh {mesh:?}", kind.name()));
        let n = ResourceName::parse(name).map_err(|_| not_found())?;
        let current = scope.tx.get_resource(m.id, kind.name(), &n).await?.ok_or_else(not_found)?;
        let if_version = match if_match {
            Some(im) => Some(im.expect(Some(current.version))?),
            None => None,
        };
        if kind == Kind::Service {
            let users = referrers(&mut scope.tx, &m, n.as_str()).await?;
            if !users.is_empty() {
                return Err(AppError::conflict(format!(
                    "service {:?} is still referenced by {}; change or delete those first",
                    n.as_str(),
                    users.join(", ")
                )));
            }
        }
        let deleted = scope.tx.delete_resource(m.id, kind.name(), &n, if_version).await?;
        let target = format!("meshes/{}/{}/{}", m.name, kind.plural(), n);
        scope.audit(format!("{}.delete", kind.name().to_lowercase()), target, json!({})).await?;
        let caller = scope.commit().await?;
        let Some(wait) = wait else { return Ok(None) };
        let landing = Landing {
            org: caller.org.id,
            mesh: m.id,
            revision: deleted.mesh_revision,
            reach: kind.reach(),
            target: if kind == Kind::Service { None } else { deleted.target.as_deref() },
        };
        Ok(Some(self.await_propagation(landing, wait).await?))
    }

    /// The policies in effect for one service of a mesh, in the order they apply.
    pub async fn effective(&self, scope: Scope, mesh: &str, service: &str) -> Result<Effective, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let not_found = || AppError::not_found(format!("service {service:?} not found in mesh {mesh:?}"));
        let n = ResourceName::parse(service).map_err(|_| not_found())?;
        scope.tx.get_resource(m.id, Kind::Service.name(), &n).await?.ok_or_else(not_found)?;
        let all = scope.tx.list_resources(m.id, None, &Selector::default(), None, i64::MAX).await?;
        scope.commit().await?;
        let parsed: Vec<(String, Spec)> = all
            .iter()
            .filter_map(|r| {
                let kind = Kind::lookup(&r.kind)?;
                Some((r.name.to_string(), Spec::parse(kind, "spec", r.spec.clone()).ok()?.spec))
            })
            .collect();
        let policies = config::effective(n.as_str(), parsed.iter().map(|(name, spec)| (name.as_str(), spec)));
        let default_access =
            serde_json::from_value::<MeshSpec>(m.spec.clone()).unwrap_or_default().default_access;
        Ok(Effective { mesh: m, service: n, default_access, policies })
    }
}

pub(crate) fn resource_name(s: &str) -> Result<ResourceName, AppError> {
    ResourceName::parse(s).map_err(|e| AppError::invalid_field("metadata.name", e.to_string()))
}

fn fe(field: &str, message: String) -> FieldError {
    FieldError { field: field.to_owned(), message }
}

/// Parses a spec and resolves the services it names within the mesh.
pub(crate) async fn checked_spec(
    tx: &mut TenantTx,
    mesh: &Mesh,
    kind: Kind,
    spec: Value,
) -> Result<Spec, AppError> {
    let parsed = Spec::parse(kind, "spec", spec).map_err(AppError::invalid)?;
    let mut errors = Vec::new();
    // Each referenced service's ports, or None when there is no such service.
    let mut services: HashMap<&str, Option<Vec<u32>>> = HashMap::new();
    for r in &parsed.references {
        if !services.contains_key(r.service.as_str()) {
            let ports = match ResourceName::parse(&r.service) {
                Ok(n) => tx.get_resource(mesh.id, Kind::Service.name(), &n).await?.map(|svc| {
                    let spec: Option<config::ServiceSpec> = serde_json::from_value(svc.spec).ok();
                    spec.map(|s| s.ports.iter().map(|p| p.port).collect()).unwrap_or_default()
                }),
                Err(_) => None,
            };
            services.insert(&r.service, ports);
        }
        match (&services[r.service.as_str()], &r.port) {
            (None, _) => errors.push(fe(
                &r.field,
                format!("no service named {:?} in mesh {:?}", r.service, mesh.name.as_str()),
            )),
            (Some(ports), Some(p)) if !ports.contains(&p.port) => errors.push(fe(
                &p.field,
                format!("service {:?} does not expose port {} (its ports: {ports:?})", r.service, p.port),
            )),
            _ => {}
        }
    }
    if errors.is_empty() { Ok(parsed.spec) } else { Err(AppError::invalid(errors)) }
}

/// The resources that name `service`: a service cannot be deleted while there are any.
async fn referrers(tx: &mut TenantTx, mesh: &Mesh, service: &str) -> Result<Vec<String>, AppError> {
    let all = tx.list_resources(mesh.id, None, &Selector::default(), None, i64::MAX).await?;
    let mut out = Vec::new();
    for r in all.iter().filter(|r| r.kind != Kind::Service.name()) {
        let Some(kind) = Kind::lookup(&r.kind) else { continue };
        if let Ok(p) = Spec::parse(kind, "spec", r.spec.clone())
            && p.references.iter().any(|x| x.service == service)
        {
            out.push(format!("{}/{}", kind.plural(), r.name));
        }
    }
    Ok(out)
}

/// A resource with how far its last write has reached.
fn view(resource: Resource, reached: Option<Reached>) -> ResourceView {
    let propagation = resource.mesh_revision.zip(reached).map(|(rev, r)| Propagation::new(rev, r));
    ResourceView { resource, propagation }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let s = parse_selector("app=web, tier!=db,canary,!legacy").unwrap();
        assert_eq!(s.equal, [("app".to_owned(), "web".to_owned())]);
        assert_eq!(s.not_equal, [("tier".to_owned(), "db".to_owned())]);
        assert_eq!(s.exists, ["canary"]);
        assert_eq!(s.absent, ["legacy"]);
        assert!(parse_selector("a b=c").is_err());
        assert!(parse_selector(&"a,".repeat(20)).is_err());
    }
}
