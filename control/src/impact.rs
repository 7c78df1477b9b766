//! Impact preview: what a proposed access policy, not yet saved, would change about the
//! calls a mesh carried recently — computed from the stored edges, never from live proxies.

use chrono::{TimeDelta, Utc};
use trellis_model::config::{
    AccessConfig, AccessPolicySpec, DefaultAccess, EdgeCalls, EdgeImpact, Kind, MeshSpec, Spec, impact,
};
use trellis_model::{Action, SpiffeId};
use trellis_store::{Mesh, Selector};

use crate::observe::window_seconds;
use crate::resources::{checked_spec, resource_name};
use crate::{AppError, Control, Document, Scope};

/// The window an impact preview reads when it names none: the last hour.
pub const IMPACT_WINDOW_SECS: i64 = 3600;

/// The edges whose verdict the proposed policy changes, over a window ending now.
pub struct Impact {
    pub mesh: Mesh,
    pub policy: String,
    pub seconds: i64,
    pub edges: Vec<EdgeImpact>,
}

impl Control {
    /// What saving `proposed` as the access policy `name` would deny or newly allow among
    /// the calls of the last `window` seconds (one hour by default). Writes nothing, so a
    /// viewer may ask.
    pub async fn access_impact(
        &self,
        scope: Scope,
        mesh: &str,
        name: Option<&str>,
        proposed: Document,
        window: Option<i64>,
    ) -> Result<Impact, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let seconds = window_seconds(window, IMPACT_WINDOW_SECS)?;
        let name = resource_name(name.ok_or_else(|| AppError::invalid_field("metadata.name", "required"))?)?;
        let m = scope.mesh(mesh).await?;
        let Spec::AccessPolicy(proposed) =
            checked_spec(&mut scope.tx, &m, Kind::AccessPolicy, proposed.spec).await?
        else {
            unreachable!("an AccessPolicy document parses to an AccessPolicy spec")
        };
        let stored = scope
            .tx
            .list_resources(m.id, Some(Kind::AccessPolicy.name()), &Selector::default(), None, i64::MAX)
            .await?;
        let to = Utc::now();
        let (totals, _) = scope.tx.window_totals(m.id, to - TimeDelta::seconds(seconds), to).await?;
        scope.commit().await?;

        // Stored policies were checked when written; one that no longer parses enforces
        // nothing in the data plane either.
        let current: Vec<(String, AccessPolicySpec)> = stored
            .into_iter()
            .filter_map(|r| Some((r.name.to_string(), serde_json::from_value(r.spec).ok()?)))
            .collect();
        let default_access: DefaultAccess =
            serde_json::from_value::<MeshSpec>(m.spec.clone()).unwrap_or_default().default_access;
        let before =
            AccessConfig { policies: current.iter().map(|(n, p)| (n.as_str(), p)).collect(), default_access };
        let after = before.with(name.as_str(), &proposed);
        let edges: Vec<EdgeCalls> = totals
            .into_iter()
            .map(|t| EdgeCalls {
                l4: t.counts.requests == 0 && t.counts.tcp_connections > 0,
                calls: t.counts.requests + t.counts.tcp_connections,
                source: t.source,
                destination: t.destination,
            })
            .collect();
        let ids = |service: &str| {
            SpiffeId::workload(&m.trust_domain, m.name.as_str(), service)
                .map(|id| id.to_string())
                // A name that is no SPIFFE path segment matches no rule's service.
                .unwrap_or_default()
        };
        let edges = impact(&before, &after, &edges, &ids);
        Ok(Impact { policy: name.to_string(), mesh: m, seconds, edges })
    }
}
