//! Registered dataplanes of a mesh and their sync state (the propagation ledger).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use trellis_control::{Control, DataplaneConfig, Dataplanes, in_sync};
use trellis_store::{Dataplane, LedgerEntry};
use uuid::Uuid;

use crate::auth::OrgScope;
use crate::error::{ApiError, ReadErrors};
use crate::params::{DataplanePath, MeshPath};

/// A mesh's registered proxies.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DataplaneList {
    mesh: String,
    /// The mesh's revision when it was read
    revision: i64,
    items: Vec<DataplaneBody>,
}

/// A proxy registered by its xDS stream, and where it stands with each type it was sent.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Dataplane)]
pub(crate) struct DataplaneBody {
    id: Uuid,
    service: String,
    node_id: String,
    /// The xDS client: envoy, grpc, …
    client: String,
    /// The address it registered, if any
    #[schema(required)]
    address: Option<String>,
    ports: Vec<i32>,
    #[schema(value_type = Object)]
    tags: Value,
    /// The services whose caller-side resources it was sent
    calls: Vec<String>,
    /// It was sent its own service's inbound resources
    serves: bool,
    zone: String,
    online: bool,
    #[schema(schema_with = sync_state)]
    state: &'static str,
    connected_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    #[schema(required)]
    offline_since: Option<DateTime<Utc>>,
    sync: Vec<DataplaneSync>,
}

fn sync_state() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["offline", "rejected", "in-sync", "syncing"]))
        .description(Some("offline; rejected (it NACKed the last version of some type); in-sync; syncing (a version is on its way or unanswered)"))
}

/// What a proxy was sent of one type URL and what it answered.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DataplaneSync {
    type_url: String,
    #[schema(required)]
    sent_version: Option<String>,
    #[schema(required)]
    sent_at: Option<DateTime<Utc>>,
    #[schema(required)]
    acked_version: Option<String>,
    #[schema(required)]
    acked_at: Option<DateTime<Utc>>,
    #[schema(required)]
    nack: Option<Nack>,
    /// The mesh revision the sent version was built from
    #[schema(required)]
    mesh_revision: Option<i64>,
    /// From the mesh revision's commit to the proxy's ACK
    #[schema(required)]
    convergence_ms: Option<f64>,
    in_sync: bool,
}

/// The last version of a type the proxy rejected, with its reason.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Nack {
    version: String,
    #[schema(required)]
    error: Option<String>,
}

fn nack(l: &LedgerEntry) -> Option<Nack> {
    l.nacked_version.as_ref().map(|v| Nack { version: v.clone(), error: l.nack_error.clone() })
}

fn render_list(fleet: &Dataplanes) -> DataplaneList {
    let items = fleet
        .dataplanes
        .iter()
        .map(|d: &Dataplane| DataplaneBody {
            id: d.id,
            service: d.service.clone(),
            node_id: d.node_id.clone(),
            client: d.client.clone(),
            address: d.address.map(|a| a.addr().to_string()),
            ports: d.ports.clone(),
            tags: d.tags.clone(),
            // What its resources configure: the services it calls, its own inbound side.
            calls: d.calls.clone(),
            serves: d.serves,
            zone: d.zone.clone(),
            online: d.online,
            state: fleet.state(d).as_str(),
            connected_at: d.connected_at,
            last_seen_at: d.last_seen_at,
            offline_since: d.offline_since,
            sync: fleet
                .lines_of(d)
                .map(|l| DataplaneSync {
                    type_url: l.type_url.clone(),
                    sent_version: l.sent_version.clone(),
                    sent_at: l.sent_at,
                    acked_version: l.acked_version.clone(),
                    acked_at: l.acked_at,
                    nack: nack(l),
                    mesh_revision: l.mesh_revision,
                    convergence_ms: l.convergence_ms,
                    in_sync: in_sync(l),
                })
                .collect(),
        })
        .collect();
    DataplaneList { mesh: fleet.mesh.name.as_str().to_owned(), revision: fleet.mesh.revision, items }
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/dataplanes", operation_id = "listDataplanes",
    summary = "Proxies registered by their xDS streams, with their sync state",
    params(MeshPath),
    responses((status = 200, description = "Dataplanes", body = DataplaneList), ReadErrors))]
pub(crate) async fn list(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<DataplaneList>, ApiError> {
    Ok(Json(render_list(&ctl.list_dataplanes(scope, &mesh).await?)))
}

/// What one proxy was last sent, per type URL.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = DataplaneConfig)]
pub(crate) struct DataplaneConfigBody {
    dataplane: DataplaneSummary,
    types: Vec<DataplaneTypeConfig>,
}

/// The proxy a config was sent to.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DataplaneSummary {
    id: Uuid,
    service: String,
    node_id: String,
    client: String,
    online: bool,
    /// The last mesh revision it had applied in full
    #[schema(required)]
    synced_revision: Option<i64>,
}

/// What a proxy was last sent of one type URL, readable, with its ACK state.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DataplaneTypeConfig {
    type_url: String,
    #[schema(required)]
    sent_version: Option<String>,
    #[schema(required)]
    sent_at: Option<DateTime<Utc>>,
    #[schema(required)]
    acked_version: Option<String>,
    #[schema(required)]
    nack: Option<Nack>,
    #[schema(required)]
    mesh_revision: Option<i64>,
    /// The readable form of the resources sent; kept for every version some proxy of the mesh
    /// still holds, null once pruned
    #[schema(required, value_type = Option<Value>)]
    resources: Option<Value>,
}

fn render_config(DataplaneConfig { dataplane: d, types }: DataplaneConfig) -> DataplaneConfigBody {
    let types = types
        .into_iter()
        .map(|(l, resources)| DataplaneTypeConfig {
            nack: nack(&l),
            type_url: l.type_url,
            sent_version: l.sent_version,
            sent_at: l.sent_at,
            acked_version: l.acked_version,
            mesh_revision: l.mesh_revision,
            resources,
        })
        .collect();
    DataplaneConfigBody {
        dataplane: DataplaneSummary {
            id: d.id,
            service: d.service,
            node_id: d.node_id,
            client: d.client,
            online: d.online,
            synced_revision: d.synced_revision,
        },
        types,
    }
}

/// `GET …/dataplanes/{id}/config`: per type URL, what the proxy was last sent (the readable
/// form of each resource), which version it accepted, and any rejection.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/dataplanes/{dataplane}/config", operation_id = "getDataplaneConfig",
    summary = "What a proxy was last sent, per type URL, in readable form, with its ACK state",
    params(DataplanePath),
    responses((status = 200, description = "The config last sent", body = DataplaneConfigBody), ReadErrors))]
pub(crate) async fn config(
    State(ctl): State<Control>,
    Path((_, mesh, dataplane)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<DataplaneConfigBody>, ApiError> {
    Ok(Json(render_config(ctl.dataplane_config(scope, &mesh, &dataplane).await?)))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;
    use trellis_model::{MeshId, MeshName, TrustDomain};

    use super::*;
    use crate::schema_check::assert_published;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    /// Online with everything known, or offline with nothing.
    fn dataplane(known: bool) -> Dataplane {
        Dataplane {
            id: Uuid::new_v4(),
            mesh_id: Uuid::new_v4(),
            service: "reviews".into(),
            node_id: "n1".into(),
            client: "envoy".into(),
            address: known.then(|| "10.0.0.1/32".parse().unwrap()),
            ports: vec![9080],
            tags: json!({"version": "v1"}),
            zone: "z".into(),
            online: known,
            replica: None,
            connected_at: at(),
            last_seen_at: at(),
            offline_since: (!known).then(at),
            synced_revision: known.then_some(5),
            calls: vec!["ratings".into()],
            serves: known,
        }
    }

    /// Sent, acknowledged and rejected with a reason, or never sent.
    fn line(d: &Dataplane, known: bool) -> LedgerEntry {
        LedgerEntry {
            dataplane_id: d.id,
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            sent_version: known.then(|| "v3".into()),
            sent_at: known.then(at),
            acked_version: known.then(|| "v2".into()),
            acked_at: known.then(at),
            nacked_version: known.then(|| "v3".into()),
            nack_error: known.then(|| "bad cluster".into()),
            mesh_revision: known.then_some(3),
            convergence_ms: known.then_some(12.5),
        }
    }

    #[test]
    fn bodies_match_their_published_schemas() {
        let (a, b) = (dataplane(true), dataplane(false));
        let mesh = trellis_store::Mesh {
            id: MeshId::new(),
            name: MeshName::parse("shop").unwrap(),
            trust_domain: TrustDomain::parse("shop.acme.trellis").unwrap(),
            spec: json!({}),
            labels: json!({}),
            generation: 1,
            version: Uuid::new_v4(),
            revision: 7,
            created_at: at(),
            updated_at: at(),
        };
        let ledger = vec![line(&a, true), line(&b, false)];
        let fleet = Dataplanes { mesh, dataplanes: vec![a.clone(), b], ledger };
        let list = serde_json::to_value(render_list(&fleet)).unwrap();
        assert_eq!(list["items"][0]["sync"][0]["nack"], json!({"version": "v3", "error": "bad cluster"}));
        assert_eq!(list["items"][1]["address"], Value::Null);
        assert_published("DataplaneList", &list);

        let types = vec![(line(&a, true), Some(json!([{"name": "reviews"}]))), (line(&a, false), None)];
        let config = serde_json::to_value(render_config(DataplaneConfig { dataplane: a, types })).unwrap();
        assert_eq!(config["types"][1]["resources"], Value::Null);
        assert_published("DataplaneConfig", &config);
    }
}
