//! Unexpected traffic: the events the leader's scans recorded for a mesh, and for a new
//! caller or a denied burst, the access policy that would settle it (a draft, not saved).

use chrono::{DateTime, TimeDelta, Utc};
use trellis_model::config::{AccessPolicySpec, FieldError, Kind, Source};
use trellis_model::traffic_events::{EventKind, Thresholds, draft_policy, draft_policy_name};
use trellis_model::{Action, ResourceName, SpiffeId};
use trellis_store::{Mesh, Selector, StoredTrafficEvent, TrafficEventQuery};
use uuid::Uuid;

use crate::observe::{decode_cursor, keyset_cursor};
use crate::{AppError, Control, Scope};

/// Most events one page holds.
pub const MAX_EVENT_PAGE: i64 = 500;
/// Events in a page that names no `limit`.
pub const DEFAULT_EVENT_PAGE: i64 = 100;
/// How far back a listing reaches when it names no `since`: the scans' look-back.
pub const DEFAULT_EVENT_SECS: i64 = 7 * 86_400;

/// A listing as a front end received it: text, parsed by [`Control::traffic_events`].
#[derive(Debug, Default, Clone)]
pub struct EventSearch {
    /// RFC 3339.
    pub since: Option<String>,
    pub kind: Option<String>,
    pub service: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// One page of a mesh's events, newest first, and the cursor of the next when it is full.
pub struct EventPage {
    pub mesh: Mesh,
    pub events: Vec<StoredTrafficEvent>,
    pub next_cursor: Option<String>,
}

/// The access policy that would settle an event, unsaved.
pub struct DraftPolicy {
    pub mesh: Mesh,
    pub event: StoredTrafficEvent,
    pub name: String,
    pub spec: AccessPolicySpec,
}

impl EventSearch {
    /// The store's query, or every parameter that is wrong, by name.
    fn parse(&self, mesh: trellis_model::MeshId, now: DateTime<Utc>) -> Result<TrafficEventQuery, AppError> {
        let mut errors = Vec::new();
        let mut bad =
            |field: &str, message: String| errors.push(FieldError { field: field.to_owned(), message });
        let since = match self.since.as_deref().map(DateTime::parse_from_rfc3339) {
            None => now - TimeDelta::seconds(DEFAULT_EVENT_SECS),
            Some(Ok(t)) => t.to_utc(),
            Some(Err(_)) => {
                bad("since", "must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z".into());
                now
            }
        };
        let kind = match self.kind.as_deref() {
            None => None,
            Some(k) => match EventKind::parse(k) {
                Some(k) => Some(k.as_str().to_owned()),
                None => {
                    let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    bad("kind", format!("must be one of {}", known.join(", ")));
                    None
                }
            },
        };
        let service = match self.service.as_deref().map(ResourceName::parse) {
            None => None,
            Some(Ok(s)) => Some(s.as_str().to_owned()),
            Some(Err(e)) => {
                bad("service", format!("not a service name: {e}"));
                None
            }
        };
        let after = match self.cursor.as_deref().map(decode_cursor) {
            None => None,
            Some(Some(c)) => Some(c),
            Some(None) => {
                bad("cursor", "use the nextCursor of the previous page".into());
                None
            }
        };
        let limit = match self
            .limit
            .as_deref()
            .map(|s| s.parse::<i64>().ok().filter(|n| (1..=MAX_EVENT_PAGE).contains(n)))
        {
            None => DEFAULT_EVENT_PAGE,
            Some(Some(n)) => n,
            Some(None) => {
                bad("limit", format!("must be a number from 1 to {MAX_EVENT_PAGE}"));
                DEFAULT_EVENT_PAGE
            }
        };
        if !errors.is_empty() {
            let mut e = AppError::bad_request(match errors.as_slice() {
                [one] => format!("{}: {}", one.field, one.message),
                many => format!("{} query parameters are invalid; see errors", many.len()),
            });
            e.errors = errors;
            return Err(e);
        }
        Ok(TrafficEventQuery { mesh, since, kind, service, after, limit })
    }
}

impl Control {
    /// One page of `mesh`'s unexpected-traffic events, newest first.
    pub async fn traffic_events(
        &self,
        scope: Scope,
        mesh: &str,
        search: &EventSearch,
    ) -> Result<EventPage, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let query = search.parse(m.id, Utc::now())?;
        let events = scope.tx.traffic_events(&query).await?;
        scope.commit().await?;
        let next_cursor = (events.len() as i64 == query.limit)
            .then(|| events.last().map(|e| keyset_cursor(e.minute, e.id)))
            .flatten();
        Ok(EventPage { mesh: m, events, next_cursor })
    }

    /// The AccessPolicy for the event's destination that denies its unexpected callers and
    /// allows the callers it had in the look-back before the event (less those it denied
    /// then): unsaved, for the client to review, preview and PUT. Writes nothing, so a viewer
    /// may ask.
    pub async fn draft_policy(&self, scope: Scope, mesh: &str, id: &str) -> Result<DraftPolicy, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let not_found = || AppError::not_found(format!("event {id:?} not found in mesh {mesh:?}"));
        let id: Uuid = id.parse().map_err(|_| not_found())?;
        let event = scope.tx.traffic_event(m.id, id).await?.ok_or_else(not_found)?;
        let kind = EventKind::parse(&event.kind).ok_or_else(not_found)?;
        if !kind.has_draft_policy() {
            return Err(AppError::conflict(format!(
                "a {} event has no draft policy: an access policy decides who may call, not how much",
                event.kind
            )));
        }
        let look_back = TimeDelta::seconds(Thresholds::default().look_back_secs);
        let (seen, denied) = scope
            .tx
            .callers_of(
                m.id,
                &event.destination,
                event.minute - look_back,
                event.minute + TimeDelta::minutes(1),
            )
            .await?;
        let services: Vec<String> = scope
            .tx
            .list_resources(m.id, Some(Kind::Service.name()), &Selector::default(), None, i64::MAX)
            .await?
            .into_iter()
            .map(|r| r.name.to_string())
            .collect();
        scope.commit().await?;

        let unexpected: Vec<String> = match kind {
            EventKind::NewCaller => event.source.iter().cloned().collect(),
            _ => event.evidence["callers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["source"].as_str().map(str::to_owned))
                .collect(),
        };
        let usual: Vec<String> = seen.into_iter().filter(|s| !denied.contains(s)).collect();
        // A caller whose Service was deleted since is named by its identity, which needs none.
        let source = |s: &str| match services.iter().any(|n| n == s) {
            true => Source { service: Some(s.to_owned()), identity: None },
            false => Source {
                service: None,
                identity: SpiffeId::workload(&m.trust_domain, m.name.as_str(), s).ok().map(|i| i.to_string()),
            },
        };
        let spec = draft_policy(&event.destination, &unexpected, &usual, source).ok_or_else(|| {
            AppError::conflict("the event names no caller with a mesh identity to deny, and the service had no usual callers to allow")
        })?;
        Ok(DraftPolicy { name: draft_policy_name(&event.destination), mesh: m, event, spec })
    }
}
