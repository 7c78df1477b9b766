//! Unexpected traffic: the events the leader recorded for a mesh (a new caller of a service,
//! a burst of denied calls, an edge's rate or error rate out of its recent range), and the
//! draft AccessPolicy that settles a new caller or a denied burst.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_control::{API_VERSION, Control, DraftPolicy, EventSearch};
use trellis_model::config::AccessPolicySpec;
use trellis_model::traffic_events::{EventKind, Evidence};
use trellis_store::StoredTrafficEvent;
use uuid::Uuid;

use crate::ApiError;
use crate::auth::OrgScope;
use crate::body::ApiQuery;
use crate::error::{ReadErrors, StepErrors};
use crate::params::{MeshPath, TrafficEventPath};

// The bounds the parameters publish (utoipa takes literals only).
const _: () = assert!(trellis_control::MAX_EVENT_PAGE == 500);

/// `…/events` query parameters: text, parsed by the core (so its errors name them).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventParams {
    /// Events of minutes at or after (RFC 3339; default seven days ago)
    #[param(nullable = false, value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// One kind only
    #[param(nullable = false, value_type = Option<String>, pattern = "^(new-caller|denied-burst|rate-jump|error-rate-jump)$")]
    kind: Option<String>,
    /// Events whose caller or destination is this service
    #[param(nullable = false)]
    service: Option<String>,
    /// The nextCursor of the previous page
    #[param(nullable = false)]
    cursor: Option<String>,
    /// Events per page (default 100)
    #[param(nullable = false, value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

/// A page of a mesh's traffic events, newest first.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = TrafficEventPage)]
pub(crate) struct TrafficEventPageBody {
    mesh: String,
    items: Vec<TrafficEventBody>,
    /// Pass as cursor for the next page; null on the last
    next_cursor: Option<String>,
}

/// An unexpected traffic pattern in one minute of a mesh.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = TrafficEvent)]
pub(crate) struct TrafficEventBody {
    id: Uuid,
    #[schema(schema_with = event_kind)]
    kind: String,
    /// The start of the minute it happened in
    minute: DateTime<Utc>,
    /// The caller; null for a denied burst (its callers are in the evidence)
    #[schema(required)]
    source: Option<String>,
    destination: String,
    /// The figures that triggered it
    // Stored as the detector serialized its `Evidence`, so that is the published shape.
    #[schema(value_type = Evidence)]
    evidence: Value,
    detected_at: DateTime<Utc>,
}

fn event_kind() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(EventKind::ALL.map(EventKind::as_str)))
}

fn render_event(e: &StoredTrafficEvent) -> TrafficEventBody {
    TrafficEventBody {
        id: e.id,
        kind: e.kind.clone(),
        minute: e.minute,
        source: e.source.clone(),
        destination: e.destination.clone(),
        evidence: e.evidence.clone(),
        detected_at: e.detected_at,
    }
}

/// An AccessPolicy document, not saved: what `PUT …/access-policies/{name}` takes.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DraftAccessPolicy)]
pub(crate) struct DraftAccessPolicyBody {
    #[schema(value_type = String)]
    api_version: &'static str,
    #[schema(schema_with = access_policy_kind)]
    kind: &'static str,
    metadata: DraftMetadata,
    spec: AccessPolicySpec,
}

fn access_policy_kind() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["AccessPolicy"]))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DraftMetadata {
    name: String,
    mesh: String,
}

/// `GET …/meshes/{mesh}/events`: unexpected traffic patterns, newest first.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/events", operation_id = "listTrafficEvents",
    summary = "Unexpected traffic, newest first: a caller never seen before for a service, a burst of denied calls, an edge whose rate or error rate left its recent range — each with the figures that triggered it",
    params(MeshPath, EventParams),
    responses((status = 200, description = "A page of events", body = ref("#/components/schemas/TrafficEventPage")), ReadErrors))]
pub(crate) async fn list(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<EventParams>,
    OrgScope(scope): OrgScope,
) -> Result<Json<TrafficEventPageBody>, ApiError> {
    let search =
        EventSearch { since: q.since, kind: q.kind, service: q.service, cursor: q.cursor, limit: q.limit };
    let page = ctl.traffic_events(scope, &mesh, &search).await?;
    Ok(Json(TrafficEventPageBody {
        mesh: page.mesh.name.as_str().to_owned(),
        items: page.events.iter().map(render_event).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `GET …/meshes/{mesh}/events/{id}/draft-policy`: the AccessPolicy that would settle a new
/// caller or a denied burst, not saved.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/events/{id}/draft-policy", operation_id = "getTrafficEventDraftPolicy",
    summary = "A draft AccessPolicy (not saved) that settles a new caller or a denied burst: it denies the unexpected callers and allows the callers the service had over the look-back. PUT it to …/access-policies/{name} (or `trellis apply -f`) after review; POST it to …/impact-preview to see what it would change",
    params(TrafficEventPath),
    responses((status = 200, description = "The AccessPolicy document (409: the event is of a kind no access policy settles, a rate or error-rate jump)", body = ref("#/components/schemas/DraftAccessPolicy")), StepErrors))]
pub(crate) async fn draft(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<DraftAccessPolicyBody>, ApiError> {
    let DraftPolicy { mesh, name, spec, .. } = ctl.draft_policy(scope, &mesh, &id).await?;
    Ok(Json(DraftAccessPolicyBody {
        api_version: API_VERSION,
        kind: "AccessPolicy",
        metadata: DraftMetadata { name, mesh: mesh.name.as_str().to_owned() },
        spec,
    }))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;
    use trellis_model::traffic_events::{DeniedCaller, Direction};

    use super::*;
    use crate::schema_check::assert_published;

    fn stored(evidence: &Evidence, source: Option<&str>) -> StoredTrafficEvent {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 0).unwrap();
        StoredTrafficEvent {
            id: Uuid::new_v4(),
            mesh_id: Uuid::new_v4(),
            kind: evidence_kind(evidence).as_str().to_owned(),
            minute: at,
            source: source.map(str::to_owned),
            destination: "reviews".into(),
            // What the store writes.
            evidence: serde_json::to_value(evidence).unwrap(),
            detected_at: at,
        }
    }

    fn evidence_kind(e: &Evidence) -> EventKind {
        match e {
            Evidence::NewCaller { .. } => EventKind::NewCaller,
            Evidence::DeniedBurst { .. } => EventKind::DeniedBurst,
            Evidence::RateJump { .. } => EventKind::RateJump,
            Evidence::ErrorRateJump { .. } => EventKind::ErrorRateJump,
        }
    }

    #[test]
    fn every_kind_of_event_matches_its_published_schema() {
        let evidence = [
            Evidence::NewCaller {
                calls: 5,
                look_back_days: 7.0,
                known_callers: vec!["productpage".into()],
                known_callers_total: 1,
            },
            Evidence::DeniedBurst {
                denials: 52,
                recent_median: 2.0,
                threshold: 12.0,
                recent_minutes: 60,
                callers: vec![
                    DeniedCaller { source: Some("ratings".into()), denials: 50 },
                    DeniedCaller { source: None, denials: 2 },
                ],
            },
            Evidence::RateJump {
                direction: Direction::Down,
                calls_per_minute: 3,
                recent_median: 100.0,
                recent_min: 90,
                recent_max: 120,
                threshold: 25.0,
                history_minutes: 60,
            },
            Evidence::ErrorRateJump {
                error_rate: 0.5,
                requests: 100,
                failures: 50,
                recent_median: 0.01,
                recent_max: 0.02,
                threshold: 0.1,
                history_minutes: 60,
            },
        ];
        let events: Vec<_> = evidence.iter().map(|e| stored(e, Some("ratings"))).collect();
        let page = TrafficEventPageBody {
            mesh: "shop".into(),
            items: events.iter().map(render_event).collect(),
            next_cursor: None,
        };
        let page = serde_json::to_value(page).unwrap();
        assert_eq!(page["nextCursor"], Value::Null);
        assert_eq!(page["items"][1]["evidence"]["callers"][1], json!({"source": null, "denials": 2}));
        assert_eq!(page["items"][2]["evidence"]["direction"], "down");
        assert_published("TrafficEventPage", &page);
    }

    #[test]
    #[should_panic(expected = "TrafficEvent")]
    fn evidence_of_an_unknown_shape_is_not_published() {
        let mut event = stored(
            &Evidence::NewCaller {
                calls: 1,
                look_back_days: 7.0,
                known_callers: vec![],
                known_callers_total: 0,
            },
            Some("ratings"),
        );
        event.evidence = json!({"kind": "new-caller", "calls": "five"});
        let page = TrafficEventPageBody {
            mesh: "shop".into(),
            items: vec![render_event(&event)],
            next_cursor: None,
        };
        assert_published("TrafficEventPage", &serde_json::to_value(page).unwrap());
    }

    #[test]
    fn a_draft_is_an_access_policy_document() {
        let spec: AccessPolicySpec = serde_json::from_value(json!({
            "targetRef": {"service": "reviews"},
            "rules": [{"action": "Allow", "from": [{"service": "productpage"}]}],
        }))
        .unwrap();
        let draft = DraftAccessPolicyBody {
            api_version: API_VERSION,
            kind: "AccessPolicy",
            metadata: DraftMetadata { name: "reviews-callers".into(), mesh: "shop".into() },
            spec,
        };
        let draft = serde_json::to_value(draft).unwrap();
        assert_eq!(draft["metadata"], json!({"name": "reviews-callers", "mesh": "shop"}));
        assert_published("DraftAccessPolicy", &draft);
        crate::schema_check::check("AccessPolicy", &draft).expect("a draft is accepted as an AccessPolicy");
    }
}
