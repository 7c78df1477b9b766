//! Unexpected traffic: the events the leader recorded for a mesh (a new caller of a service,
//! a burst of denied calls, an edge's rate or error rate out of its recent range), and the
//! draft AccessPolicy that settles a new caller or a denied burst.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_control::{API_VERSION, Control, DraftPolicy, EventSearch};
use trellis_store::StoredTrafficEvent;

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

fn event_json(e: &StoredTrafficEvent) -> Value {
    json!({
        "id": e.id,
        "kind": e.kind,
        "minute": e.minute,
        "source": e.source,
        "destination": e.destination,
        "evidence": e.evidence,
        "detectedAt": e.detected_at,
    })
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
) -> Result<Json<Value>, ApiError> {
    let search =
        EventSearch { since: q.since, kind: q.kind, service: q.service, cursor: q.cursor, limit: q.limit };
    let page = ctl.traffic_events(scope, &mesh, &search).await?;
    Ok(Json(json!({
        "mesh": page.mesh.name,
        "items": page.events.iter().map(event_json).collect::<Vec<_>>(),
        "nextCursor": page.next_cursor,
    })))
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
) -> Result<Json<Value>, ApiError> {
    let DraftPolicy { mesh, name, spec, .. } = ctl.draft_policy(scope, &mesh, &id).await?;
    Ok(Json(json!({
        "apiVersion": API_VERSION,
        "kind": "AccessPolicy",
        "metadata": { "name": name, "mesh": mesh.name },
        "spec": spec,
    })))
}
