//! Objects the API mints once and never updates: join tokens and API tokens. The secret is
//! in the response that creates them only, so Terraform keeps it (sensitive) from the
//! apply; every input forces a new object; destroy revokes.

use rmpv::Value;
use serde_json::{Map, Value as Json};

use crate::client::{ApiError, Client};
use crate::schema::{Attr, Block, Ty};
use crate::value::{self, Step, get, get_str, set};

pub struct Minted {
    pub type_name: &'static str,
    /// Join tokens live under a mesh; API tokens under the organization.
    pub in_mesh: bool,
    collection: &'static str,
    /// Attributes the configuration gives (sent on create; any change replaces).
    inputs: Vec<Attr>,
    /// Attributes the server gives.
    outputs: Vec<Attr>,
}

fn input(name: &str, ty: Ty, required: bool) -> Attr {
    let attr = Attr::new(name, ty);
    if required { attr.required() } else { attr.optional() }
}

fn output(name: &str, ty: Ty) -> Attr {
    Attr::new(name, ty).computed()
}

impl Minted {
    pub fn all() -> Vec<Minted> {
        let mut role = input("role", Ty::String, true).describe("owner, admin, editor or viewer");
        role.allowed = ["owner", "admin", "editor", "viewer"].map(str::to_owned).to_vec();
        let mut ttl = input("ttl_seconds", Ty::Number, false)
            .describe("Lifetime, 60 to 604800 (7 days); 3600 when omitted.");
        ttl.minimum = Some(60.0);
        ttl.maximum = Some(604_800.0);
        let mut token_name = input("name", Ty::String, true);
        token_name.min_length = Some(1);
        token_name.max_length = Some(100);
        vec![
            Minted {
                type_name: "trellis_join_token",
                in_mesh: true,
                collection: "join-tokens",
                inputs: vec![
                    input("mesh", Ty::String, true),
                    input("service", Ty::String, true)
                        .describe("The service whose identity the token grants."),
                    input("tags", Ty::Map, false),
                    ttl,
                    input("single_use", Ty::Bool, false),
                ],
                outputs: vec![
                    output("id", Ty::String),
                    output("token", Ty::String)
                        .sensitive()
                        .describe("trls_join_…: known after create only (not on import)."),
                    output("spiffe_id", Ty::String),
                    output("status", Ty::String),
                    output("expires_at", Ty::String),
                ],
            },
            Minted {
                type_name: "trellis_api_token",
                in_mesh: false,
                collection: "tokens",
                inputs: vec![
                    token_name,
                    role,
                    input("expires_at", Ty::String, false).describe("RFC 3339; never when omitted."),
                ],
                outputs: vec![
                    output("id", Ty::String),
                    output("token", Ty::String)
                        .sensitive()
                        .describe("trls_pat_…: known after create only (not on import)."),
                    output("created_at", Ty::String),
                ],
            },
        ]
    }

    pub fn block(&self) -> Block {
        let mut attrs = self.inputs.clone();
        attrs.extend(self.outputs.iter().cloned());
        Block { attrs, blocks: Vec::new(), description: String::new() }
    }

    fn collection_path(&self, state: &Value) -> Option<String> {
        if self.in_mesh {
            Some(format!("/meshes/{}/{}", get_str(state, "mesh")?, self.collection))
        } else {
            Some(format!("/{}", self.collection))
        }
    }

    /// Plan: the configuration, outputs kept from the prior state; any changed input replaces.
    pub fn plan(&self, prior: &Value, config: &Value) -> (Value, Vec<Vec<Step>>) {
        let mut planned = config.clone();
        let mut replace = Vec::new();
        for attr in &self.outputs {
            let kept = if prior.is_nil() { value::unknown() } else { get(prior, &attr.name).clone() };
            set(&mut planned, &attr.name, kept);
        }
        if !prior.is_nil() {
            for attr in &self.inputs {
                if !value::same(get(prior, &attr.name), get(config, &attr.name)) {
                    replace.push(vec![Step::Attr(attr.name.clone())]);
                }
            }
        }
        (planned, replace)
    }

    /// The outputs of a server document, onto `state`.
    fn refresh(&self, state: &mut Value, doc: &Json) {
        for attr in &self.outputs {
            if let Some(v) = doc.get(value::camel(&attr.name)).and_then(Json::as_str) {
                set(state, &attr.name, Value::from(v));
            }
        }
    }

    pub async fn create(&self, client: &Client, planned: &Value) -> Result<Value, ApiError> {
        let path = self.collection_path(planned).unwrap_or_default();
        let mut body = Map::new();
        for attr in self.inputs.iter().filter(|a| a.name != "mesh") {
            if let Some(j) = value::attr_to_json(attr, get(planned, &attr.name)) {
                body.insert(value::camel(&attr.name), j);
            }
        }
        let doc = client.post(&path, &Json::Object(body)).await?;
        let mut state = planned.clone();
        for attr in &self.outputs {
            set(&mut state, &attr.name, Value::Nil);
        }
        self.refresh(&mut state, &doc.body);
        Ok(state)
    }

    /// The object's entry in its collection; `None` when gone or revoked.
    async fn find(&self, client: &Client, state: &Value, id: &str) -> Result<Option<Json>, ApiError> {
        let path = self.collection_path(state).unwrap_or_default();
        let list = client.get(&path).await?.map(|d| d.body).unwrap_or(Json::Null);
        let found = list["items"].as_array().and_then(|items| items.iter().find(|i| i["id"] == id)).cloned();
        Ok(found.filter(|t| t["revokedAt"].is_null()))
    }

    pub async fn read(&self, client: &Client, mut state: Value) -> Result<Value, ApiError> {
        let Some(id) = get_str(&state, "id").map(str::to_owned) else { return Ok(state) };
        match self.find(client, &state, &id).await? {
            Some(doc) => {
                let token = get(&state, "token").clone();
                self.refresh(&mut state, &doc);
                set(&mut state, "token", token);
                Ok(state)
            }
            None => Ok(Value::Nil),
        }
    }

    pub async fn revoke(&self, client: &Client, state: &Value) -> Result<(), ApiError> {
        let (Some(path), Some(id)) = (self.collection_path(state), get_str(state, "id")) else {
            return Ok(());
        };
        client.delete(&format!("{path}/{id}")).await
    }

    /// Import by `MESH/ID` (join tokens) or `ID`: everything but the secret.
    pub async fn import(&self, client: &Client, id: &str) -> Result<Option<Value>, ApiError> {
        let (mesh, id) = match (self.in_mesh, id.split_once('/')) {
            (true, Some((mesh, id))) => (Some(mesh), id),
            (false, None) => (None, id),
            _ => return Ok(None),
        };
        let mut state =
            value::object(self.block().attrs.iter().map(|a| (a.name.clone(), Value::Nil)).collect());
        if let Some(mesh) = mesh {
            set(&mut state, "mesh", Value::from(mesh));
        }
        let Some(doc) = self.find(client, &state, id).await? else { return Ok(None) };
        self.refresh(&mut state, &doc);
        for attr in self.inputs.iter().filter(|a| a.name != "mesh" && a.name != "ttl_seconds") {
            let j = doc.get(value::camel(&attr.name));
            let v = value::attr_from_json(attr, j);
            set(&mut state, &attr.name, v);
        }
        Ok(Some(state))
    }
}
