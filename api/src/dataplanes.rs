//! Registered dataplanes of a mesh and their sync state (the propagation ledger).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use trellis_control::{Control, DataplaneConfig, Dataplanes};

use crate::auth::OrgScope;
use crate::error::ApiError;

pub(crate) async fn list(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let Dataplanes { mesh: m, dataplanes, ledger: lines } = ctl.list_dataplanes(scope, &mesh).await?;
    let mut ledger: BTreeMap<uuid::Uuid, Vec<Value>> = BTreeMap::new();
    for l in lines {
        let in_sync = l.sent_version.is_some() && l.sent_version == l.acked_version;
        ledger.entry(l.dataplane_id).or_default().push(json!({
            "typeUrl": l.type_url,
            "sentVersion": l.sent_version,
            "sentAt": l.sent_at,
            "ackedVersion": l.acked_version,
            "ackedAt": l.acked_at,
            "nack": l.nacked_version.as_ref().map(|v| json!({ "version": v, "error": l.nack_error })),
            "meshRevision": l.mesh_revision,
            "convergenceMs": l.convergence_ms,
            "inSync": in_sync,
        }));
    }
    let items: Vec<Value> = dataplanes
        .iter()
        .map(|d| {
            let sync = ledger.remove(&d.id).unwrap_or_default();
            let state = if !d.online {
                "offline"
            } else if sync.iter().any(|e| !e["nack"].is_null()) {
                "rejected"
            } else if !sync.is_empty() && sync.iter().all(|e| e["inSync"] == true) {
                "in-sync"
            } else {
                "syncing"
            };
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
    Ok(Json(json!({ "mesh": m.name.as_str(), "revision": m.revision, "items": items })))
}

/// `GET …/dataplanes/{id}/config`: per type URL, what the proxy was last sent (the readable
/// form of each resource), which version it accepted, and any rejection.
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
