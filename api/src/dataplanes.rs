//! Registered dataplanes of a mesh and their sync state (the propagation ledger).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use trellis_control::{Control, DataplaneConfig, in_sync};

use crate::auth::OrgScope;
use crate::error::{ApiError, ReadErrors};
use crate::params::{DataplanePath, MeshPath};

#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/dataplanes", operation_id = "listDataplanes",
    summary = "Proxies registered by their xDS streams, with their sync state",
    params(MeshPath),
    responses((status = 200, description = "Dataplanes", body = ref("#/components/schemas/DataplaneList")), ReadErrors))]
pub(crate) async fn list(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let fleet = ctl.list_dataplanes(scope, &mesh).await?;
    let items: Vec<Value> = fleet
        .dataplanes
        .iter()
        .map(|d| {
            let sync: Vec<Value> = fleet
                .lines_of(d)
                .map(|l| {
                    json!({
                        "typeUrl": l.type_url,
                        "sentVersion": l.sent_version,
                        "sentAt": l.sent_at,
                        "ackedVersion": l.acked_version,
                        "ackedAt": l.acked_at,
                        "nack": l.nacked_version.as_ref().map(|v| json!({ "version": v, "error": l.nack_error })),
                        "meshRevision": l.mesh_revision,
                        "convergenceMs": l.convergence_ms,
                        "inSync": in_sync(l),
                    })
                })
                .collect();
            let state = fleet.state(d).as_str();
            json!({
                "id": d.id,
                "service": d.service,
                "nodeId": d.node_id,
                "client": d.client,
                "address": d.address.map(|a| a.addr().to_string()),
                "ports": d.ports,
                "tags": d.tags,
                // What its resources configure: the services it calls, its own inbound side.
                "calls": d.calls,
                "serves": d.serves,
                "zone": d.zone,
                "online": d.online,
                "state": state,
                "connectedAt": d.connected_at,
                "lastSeenAt": d.last_seen_at,
                "offlineSince": d.offline_since,
                "sync": sync,
            })
        })
        .collect();
    Ok(Json(json!({ "mesh": fleet.mesh.name.as_str(), "revision": fleet.mesh.revision, "items": items })))
}

/// `GET …/dataplanes/{id}/config`: per type URL, what the proxy was last sent (the readable
/// form of each resource), which version it accepted, and any rejection.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/dataplanes/{dataplane}/config", operation_id = "getDataplaneConfig",
    summary = "What a proxy was last sent, per type URL, in readable form, with its ACK state",
    params(DataplanePath),
    responses((status = 200, description = "The config last sent", body = ref("#/components/schemas/DataplaneConfig")), ReadErrors))]
pub(crate) async fn config(
    State(ctl): State<Control>,
    Path((_, mesh, dataplane)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let DataplaneConfig { dataplane: d, types } = ctl.dataplane_config(scope, &mesh, &dataplane).await?;
    let types: Vec<Value> = types
        .into_iter()
        .map(|(l, resources)| {
            json!({
                "typeUrl": l.type_url,
                "sentVersion": l.sent_version,
                "sentAt": l.sent_at,
                "ackedVersion": l.acked_version,
                "nack": l.nacked_version.as_ref().map(|v| json!({ "version": v, "error": l.nack_error })),
                "meshRevision": l.mesh_revision,
                // Kept for every version some proxy of the mesh still holds; older ones are pruned.
                "resources": resources,
            })
        })
        .collect();
    Ok(Json(json!({
        "dataplane": {
            "id": d.id, "service": d.service, "nodeId": d.node_id, "client": d.client, "online": d.online,
            "syncedRevision": d.synced_revision,
        },
        "types": types,
    })))
}
