//! Data sources: a mesh, its CA trust bundle, and the policies that apply to a service.

use rmpv::Value;

use crate::client::{ApiError, Client};
use crate::schema::{Attr, Block, Components, Ty};
use crate::value::{self, get_str, set};

#[derive(Clone, Copy, PartialEq)]
pub enum Source {
    Mesh,
    TrustBundle,
    EffectivePolicies,
}

pub const SOURCES: [(&str, Source); 3] = [
    ("trellis_mesh", Source::Mesh),
    ("trellis_mesh_trust_bundle", Source::TrustBundle),
    ("trellis_service_effective_policies", Source::EffectivePolicies),
];

/// `block` with every attribute read-only (the keys are added by the caller).
pub fn read_only(block: &Block) -> Block {
    Block {
        attrs: block
            .attrs
            .iter()
            .map(|a| {
                let mut a = Attr::new(&a.name, a.ty).computed().describe(&a.description);
                a.json = crate::schema::snake_to_camel(&a.name);
                a
            })
            .collect(),
        blocks: block
            .blocks
            .iter()
            .map(|n| {
                let mut n = n.clone();
                n.block = read_only(&n.block);
                n.required = false;
                n
            })
            .collect(),
        description: block.description.clone(),
    }
}

/// The schema of a data source; `mesh_block` is the mesh resource's.
pub fn schema(source: Source, mesh_block: &Block, components: &Components) -> Block {
    let key = |name: &str, what: &str| Attr::new(name, Ty::String).required().describe(what);
    match source {
        Source::Mesh => {
            let mut block = read_only(mesh_block);
            block.attrs.retain(|a| a.name != "name");
            block.attrs.insert(0, key("name", "The mesh."));
            block
        }
        Source::TrustBundle => Block {
            attrs: vec![
                key("mesh", "The mesh."),
                Attr::new("pem", Ty::String)
                    .computed()
                    .describe("Every CA certificate peers of the mesh trust, PEM."),
                Attr::new("sequence", Ty::Number).computed().describe("The bundle's sequence number."),
            ],
            blocks: Vec::new(),
            description: "The mesh's SPIFFE trust bundle.".into(),
        },
        Source::EffectivePolicies => {
            let entry = read_only(&components.block("EffectiveEntry"));
            Block {
                attrs: vec![
                    key("mesh", "The mesh."),
                    key("service", "The service."),
                    Attr::new("default_access", Ty::String).computed(),
                ],
                blocks: vec![crate::schema::Nested {
                    name: "policies".into(),
                    json: "policies".into(),
                    block: entry,
                    single: false,
                    always_present: false,
                    required: false,
                }],
                description: "Every policy that applies to a service, in evaluation order.".into(),
            }
        }
    }
}

/// Reads a data source; `mesh_state` makes a mesh's state from its document.
pub async fn read(
    source: Source,
    block: &Block,
    client: &Client,
    config: &Value,
    mesh_state: impl FnOnce(&serde_json::Value, Option<String>) -> Value,
) -> Result<Option<Value>, ApiError> {
    let key = |k: &str| get_str(config, k).unwrap_or_default().to_owned();
    match source {
        Source::Mesh => {
            Ok(client.get(&format!("/meshes/{}", key("name"))).await?.map(|d| mesh_state(&d.body, d.etag)))
        }
        Source::TrustBundle => {
            let Some((pem, sequence)) = client
                .get_text(&format!("/meshes/{}/ca/bundle?format=pem", key("mesh")), "trellis-bundle-sequence")
                .await?
            else {
                return Ok(None);
            };
            let mut state = config.clone();
            set(&mut state, "pem", Value::from(pem));
            let sequence =
                sequence.and_then(|s| s.parse::<i64>().ok()).map(Value::from).unwrap_or(Value::Nil);
            set(&mut state, "sequence", sequence);
            Ok(Some(state))
        }
        Source::EffectivePolicies => {
            let path = format!("/meshes/{}/services/{}/effective", key("mesh"), key("service"));
            let Some(doc) = client.get(&path).await? else { return Ok(None) };
            let empty = serde_json::Map::new();
            Ok(Some(value::from_json(block, doc.body.as_object().unwrap_or(&empty), None)))
        }
    }
}
