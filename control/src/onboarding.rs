//! "Waiting for the first proxy": after a join token is minted, how far its workload has
//! come — the token used for an identity, an xDS stream opened, the configuration accepted —
//! and, when it is stuck, which step failed.

use chrono::{DateTime, Utc};
use trellis_model::Action;
use trellis_store::{Dataplane, JoinToken, Mesh};
use uuid::Uuid;

use crate::{AppError, Control, Dataplanes, Scope, SyncState};

/// Where a join token's first proxy stands, from the first step to the last.
///
/// The TLS port cannot tell whose handshake failed (the token travels inside the TLS
/// connection), so a failed handshake is never attributed to a token: an agent that presented
/// the token, accepted or refused, proves that TLS worked; none seen yet leaves TLS (the
/// address or the pinned root) as the likely step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstProxy {
    /// No agent has presented the token yet.
    Waiting,
    /// The token expired before anyone presented it: mint another.
    TokenExpired,
    /// The token was revoked before anyone presented it.
    TokenRevoked,
    /// An agent presented the token (so it reached the control plane over TLS) and was
    /// refused, after any use that succeeded.
    Refused { reason: String, at: DateTime<Utc> },
    /// An identity was issued for the token, and its xDS stream was refused (a tag the token
    /// binds claimed otherwise, its service deleted).
    StreamRefused { reason: String, at: DateTime<Utc> },
    /// An identity was issued for the token, but no proxy of its service opened an xDS
    /// stream since.
    NoStream,
    /// A proxy connected and rejected (NACKed) its configuration.
    Rejected { node: String, reason: String },
    /// A proxy connected; its configuration is on its way.
    Syncing { node: String },
    /// A proxy connected and accepted every type it was sent.
    Connected { node: String },
}

impl FirstProxy {
    /// The step the token's workload is at, from the token and the mesh's fleet at `now`.
    pub fn of(token: &JoinToken, fleet: &Dataplanes, now: DateTime<Utc>) -> FirstProxy {
        // Proxies of the token's service that connected after the token was made.
        let since: Vec<&Dataplane> = fleet
            .dataplanes
            .iter()
            .filter(|d| d.online && d.service == token.service && d.connected_at >= token.created_at)
            .collect();
        let with = |state: SyncState| since.iter().find(|d| fleet.state(d) == state);
        if let Some(d) = with(SyncState::InSync) {
            return FirstProxy::Connected { node: d.node_id.clone() };
        }
        if let Some(d) = with(SyncState::Rejected) {
            let reason = fleet
                .lines_of(d)
                .find_map(|l| l.nacked_version.as_ref().map(|_| l.nack_error.clone().unwrap_or_default()))
                .unwrap_or_default();
            return FirstProxy::Rejected { node: d.node_id.clone(), reason };
        }
        if let Some(d) = since.first() {
            return FirstProxy::Syncing { node: d.node_id.clone() };
        }
        // A refusal of the token itself after its last use is the step that failed; a
        // stream's refusal comes after a use by nature.
        let token_refused = token.last_refusal_step.as_deref() == Some("token");
        let refused_last = token_refused
            && match (token.last_refused_at, token.used_at) {
                (Some(refused), Some(used)) => refused > used,
                (refused, _) => refused.is_some(),
            };
        let reason = || token.last_refusal.clone().unwrap_or_default();
        if let (true, Some(at)) = (refused_last, token.last_refused_at) {
            FirstProxy::Refused { reason: reason(), at }
        } else if let (Some("stream"), Some(at), true) =
            (token.last_refusal_step.as_deref(), token.last_refused_at, token.uses > 0)
            && token.used_at.is_none_or(|used| at >= used)
        {
            FirstProxy::StreamRefused { reason: reason(), at }
        } else if token.uses > 0 {
            FirstProxy::NoStream
        } else if token.revoked_at.is_some() {
            FirstProxy::TokenRevoked
        } else if token.expires_at <= now {
            FirstProxy::TokenExpired
        } else {
            FirstProxy::Waiting
        }
    }
}

/// A join token and where its first proxy stands.
pub struct Onboarding {
    pub mesh: Mesh,
    pub token: JoinToken,
    pub step: FirstProxy,
}

impl Control {
    /// Where the first proxy of the join token `id` of the mesh stands.
    pub async fn first_proxy(&self, scope: Scope, mesh: &str, id: &str) -> Result<Onboarding, AppError> {
        let mut scope = scope.allow(Action::ManageTokens)?;
        let m = scope.mesh(mesh).await?;
        let not_found = || AppError::not_found(format!("join token {id:?} not found in mesh {mesh:?}"));
        let id: Uuid = id.parse().map_err(|_| not_found())?;
        let token =
            scope.tx.list_join_tokens(m.id).await?.into_iter().find(|t| t.id == id).ok_or_else(not_found)?;
        let dataplanes = scope.tx.list_dataplanes(m.id).await?;
        let ledger = scope.tx.ledger(m.id).await?;
        scope.commit().await?;
        let fleet = Dataplanes { mesh: m, dataplanes, ledger };
        let step = FirstProxy::of(&token, &fleet, Utc::now());
        Ok(Onboarding { mesh: fleet.mesh, token, step })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use serde_json::json;
    use trellis_model::{MeshId, MeshName, TrustDomain};
    use trellis_store::LedgerEntry;

    use super::*;

    fn token(now: DateTime<Utc>) -> JoinToken {
        JoinToken {
            id: Uuid::nil(),
            mesh_id: Uuid::nil(),
            service: "reviews".into(),
            tags: json!({}),
            single_use: false,
            created_by: "user:test".into(),
            created_at: now - Duration::minutes(5),
            expires_at: now + Duration::minutes(55),
            used_at: None,
            uses: 0,
            revoked_at: None,
            last_refused_at: None,
            last_refusal: None,
            last_refusal_step: None,
        }
    }

    fn proxy(service: &str, connected_at: DateTime<Utc>) -> Dataplane {
        Dataplane {
            id: Uuid::new_v4(),
            mesh_id: Uuid::nil(),
            service: service.into(),
            node_id: format!("{service}-1"),
            client: "agent".into(),
            address: None,
            ports: vec![9080],
            tags: json!({}),
            zone: String::new(),
            online: true,
            replica: None,
            connected_at,
            last_seen_at: connected_at,
            offline_since: None,
            synced_revision: None,
            calls: Vec::new(),
            serves: true,
        }
    }

    fn line(d: &Dataplane, acked: bool, nack: Option<&str>) -> LedgerEntry {
        LedgerEntry {
            dataplane_id: d.id,
            type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
            sent_version: Some("1".into()),
            sent_at: None,
            acked_version: acked.then(|| "1".into()),
            acked_at: None,
            nacked_version: nack.map(|_| "1".into()),
            nack_error: nack.map(str::to_owned),
            mesh_revision: Some(1),
            convergence_ms: None,
        }
    }

    fn fleet(dataplanes: Vec<Dataplane>, ledger: Vec<LedgerEntry>) -> Dataplanes {
        let mesh = Mesh {
            id: MeshId::from_uuid(Uuid::nil()),
            name: MeshName::parse("shop").unwrap(),
            trust_domain: TrustDomain::parse("shop.test").unwrap(),
            labels: json!({}),
            spec: json!({}),
            generation: 1,
            version: Uuid::nil(),
            revision: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        Dataplanes { mesh, dataplanes, ledger }
    }

    #[test]
    fn each_step_is_named_from_the_token_and_the_fleet() {
        let now = Utc::now();
        let t = token(now);
        let empty = fleet(Vec::new(), Vec::new());
        assert_eq!(FirstProxy::of(&t, &empty, now), FirstProxy::Waiting);
        assert_eq!(FirstProxy::of(&t, &empty, now + Duration::hours(1)), FirstProxy::TokenExpired);
        let revoked = JoinToken { revoked_at: Some(now), ..token(now) };
        assert_eq!(FirstProxy::of(&revoked, &empty, now), FirstProxy::TokenRevoked);
        let used = JoinToken { uses: 1, used_at: Some(now), ..token(now) };
        assert_eq!(FirstProxy::of(&used, &empty, now), FirstProxy::NoStream);
        // A refusal after the last use (or with none) is the step that failed; one before a
        // later use is history.
        let refusal = |at| JoinToken {
            last_refused_at: Some(at),
            last_refusal: Some("revoked join token".into()),
            last_refusal_step: Some("token".into()),
            ..revoked.clone()
        };
        let refused = FirstProxy::Refused { reason: "revoked join token".into(), at: now };
        assert_eq!(FirstProxy::of(&refusal(now), &empty, now), refused);
        let used_after = JoinToken { uses: 1, used_at: Some(now), ..refusal(now - Duration::minutes(1)) };
        assert_eq!(FirstProxy::of(&used_after, &empty, now), FirstProxy::NoStream);
        let refused_after = JoinToken { uses: 1, used_at: Some(now - Duration::minutes(1)), ..refusal(now) };
        assert_eq!(FirstProxy::of(&refused_after, &empty, now), refused);
        let stream = JoinToken {
            last_refusal: Some("node: metadata.tags.version".into()),
            last_refusal_step: Some("stream".into()),
            ..refused_after.clone()
        };
        let stream_refused =
            FirstProxy::StreamRefused { reason: "node: metadata.tags.version".into(), at: now };
        assert_eq!(FirstProxy::of(&stream, &empty, now), stream_refused);

        // A proxy of another service, or one connected before the token, is not its proxy.
        let other = proxy("ratings", now);
        let older = proxy("reviews", now - Duration::hours(1));
        let f = fleet(
            vec![other.clone(), older.clone()],
            vec![line(&other, true, None), line(&older, true, None)],
        );
        assert_eq!(FirstProxy::of(&used, &f, now), FirstProxy::NoStream);

        let p = proxy("reviews", now);
        let node = "reviews-1".to_owned();
        let f = fleet(vec![p.clone()], vec![line(&p, false, None)]);
        assert_eq!(FirstProxy::of(&used, &f, now), FirstProxy::Syncing { node: node.clone() });
        let f = fleet(vec![p.clone()], vec![line(&p, false, Some("bind failed"))]);
        let rejected = FirstProxy::Rejected { node: node.clone(), reason: "bind failed".into() };
        assert_eq!(FirstProxy::of(&used, &f, now), rejected);
        let f = fleet(vec![p.clone()], vec![line(&p, true, None)]);
        assert_eq!(FirstProxy::of(&used, &f, now), FirstProxy::Connected { node });
    }
}
