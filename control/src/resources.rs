//! Mesh-scoped resources of every kind: pages with label selectors, reads with their
//! propagation status, writes whose references are resolved first, idempotent creation, and
//! a service's effective policies.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Value, json};
use trellis_model::config::{self, EffectiveEntry, FieldError, Kind, Labels, MeshSpec, Spec};
use trellis_model::{Action, ResourceName};
use trellis_store::{Mesh, Resource, Selector, StoredResponse, TenantTx};

use crate::precondition::{Condition, IfMatch};
use crate::{AppError, Control, Scope};

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

/// "applied by N of M proxies; rejected by K: reason" for a resource's last write.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    pub mesh_revision: i64,
    pub proxies: usize,
    pub applied: usize,
    pub rejected: usize,
    pub pending: usize,
    /// The first few rejection reasons.
    pub errors: Vec<String>,
    pub summary: String,
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
        let fleet = fleet(&mut scope.tx, &m).await?;
        scope.commit().await?;
        let views = items.into_iter().map(|r| fleet.view(r)).collect();
        Ok((m, views, next))
    }

    /// One resource with its propagation.
    pub async fn get_resource(
        &self,
        scope: Scope,
        mesh: &str,
        kind: Kind,
        name: &str,
    ) -> Result<(Mesh, ResourceView), AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let not_found =
            || AppError::not_found(format!("{} {name:?} not found in mesh {mesh:?}", kind.name()));
        let n = ResourceName::parse(name).map_err(|_| not_found())?;
        let r = scope.tx.get_resource(m.id, kind.name(), &n).await?.ok_or_else(not_found)?;
        let fleet = fleet(&mut scope.tx, &m).await?;
        scope.commit().await?;
        Ok((m, fleet.view(r)))
    }

    /// Creates or replaces a resource under `condition`, after its references resolve.
    pub async fn put_resource(
        &self,
        scope: Scope,
        mesh: &str,
        kind: Kind,
        name: &str,
        doc: Document,
        condition: &Condition,
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
        let fleet = fleet(&mut scope.tx, &m).await?;
        scope.commit().await?;
        let written = Written { value: fleet.view(put.value), created: put.created, changed: put.changed };
        Ok((m, written))
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
        let view = fleet(&mut scope.tx, &m).await?.view(r);
        let body = render(&m, &view);
        if let Some(idem) = idempotency {
            let stored = StoredResponse { fingerprint: idem.fingerprint, status: 201, body: body.clone() };
            scope.tx.store_response(&idem.key, &stored).await?;
        }
        scope.commit().await?;
        Ok(Created::New { view: Box::new(view), body })
    }

    /// Deletes a resource; a service still referenced by another resource stays (409).
    pub async fn delete_resource(
        &self,
        scope: Scope,
        mesh: &str,
        kind: Kind,
        name: &str,
        if_match: Option<&IfMatch>,
    ) -> Result<(), AppError> {
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
        scope.tx.delete_resource(m.id, kind.name(), &n, if_version).await?;
        let target = format!("meshes/{}/{}/{}", m.name, kind.plural(), n);
        scope.audit(format!("{}.delete", kind.name().to_lowercase()), target, json!({})).await?;
        scope.commit().await?;
        Ok(())
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

/// The online proxies of a mesh, each with what its resources configure, the revision it is
/// fully in sync with, and the reason it last rejected a response (if it did and has not
/// accepted one since).
struct Fleet {
    proxies: Vec<Proxy>,
}

struct Proxy {
    service: String,
    calls: Vec<String>,
    serves: bool,
    synced: Option<i64>,
    nack: Option<String>,
}

impl Proxy {
    /// A resource whose kind has `reach`, targeting `service`, configures this proxy.
    fn reached_by(&self, reach: config::Reach, service: &str) -> bool {
        (reach.callers && self.calls.iter().any(|c| c == service))
            || (reach.instances && self.serves && self.service == service)
    }

    fn applied(&self, revision: i64) -> bool {
        self.synced.is_some_and(|s| s >= revision)
    }
}

async fn fleet(tx: &mut TenantTx, mesh: &Mesh) -> Result<Fleet, AppError> {
    let proxies = tx
        .online_proxies(mesh.id)
        .await?
        .into_iter()
        .map(|d| Proxy {
            nack: match (d.nack_type_url, d.nacked_version, d.nack_error) {
                (Some(t), Some(v), Some(e)) => Some(format!("{}: {e} (version {v})", short_type(&t))),
                _ => None,
            },
            service: d.service,
            calls: d.calls,
            serves: d.serves,
            synced: d.synced_revision,
        })
        .collect();
    Ok(Fleet { proxies })
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

impl Fleet {
    fn view(&self, resource: Resource) -> ResourceView {
        let propagation = self.propagation(&resource);
        ResourceView { resource, propagation }
    }

    /// How far the last write of `r` has reached, counting the proxies it configures: those
    /// that were sent resources of its target service on the side its kind acts on.
    fn propagation(&self, r: &Resource) -> Option<Propagation> {
        let rev = r.mesh_revision?;
        // Read from the stored spec (checked when written), not parsed again on every read.
        let target =
            Kind::lookup(&r.kind).and_then(|k| Some((k.reach(), k.stored_target(&r.spec, r.name.as_str())?)));
        let proxies: Vec<&Proxy> = match target {
            Some((reach, service)) => self.proxies.iter().filter(|p| p.reached_by(reach, service)).collect(),
            None => self.proxies.iter().collect(),
        };
        let total = proxies.len();
        let applied = proxies.iter().filter(|p| p.applied(rev)).count();
        let errors: Vec<&str> =
            proxies.iter().filter(|p| !p.applied(rev)).filter_map(|p| p.nack.as_deref()).collect();
        let mut summary = format!("applied by {applied} of {total} proxies");
        if let Some(first) = errors.first() {
            summary.push_str(&format!("; rejected by {}: {first}", errors.len()));
        }
        Some(Propagation {
            mesh_revision: rev,
            proxies: total,
            applied,
            rejected: errors.len(),
            pending: total - applied - errors.len(),
            errors: errors.iter().take(5).map(|e| (*e).to_owned()).collect(),
            summary,
        })
    }
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
