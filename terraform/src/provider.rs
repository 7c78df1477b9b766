//! The plugin-protocol-6 provider: schemas, plan and apply for every kind of Trellis
//! configuration object, one generic implementation driven by [`crate::schema`].

use std::sync::Arc;

use rmpv::Value;
use serde_json::{Value as Json, json};
use tokio::sync::{Notify, RwLock};
use tonic::{Request, Response, Status};

use crate::client::{ApiError, Client, Precondition};
use crate::data::{self, Source};
use crate::minted::Minted;
use crate::schema::{Attr, Block, Components, Ty};
use crate::value::{self, Problem, Step, get, get_str, set};

pub mod proto {
    #![allow(dead_code, clippy::all)]
    tonic::include_proto!("tfplugin6");
}
pub mod plugin {
    #![allow(dead_code, clippy::all)]
    tonic::include_proto!("plugin");
}
pub mod health {
    #![allow(dead_code, clippy::all)]
    tonic::include_proto!("grpc.health.v1");
}

use proto::{AttributePath, Diagnostic, DynamicValue, Schema, attribute_path, diagnostic, schema};

/// A kind of configuration object the REST API stores.
struct Kind {
    type_name: &'static str,
    kind: &'static str,
    /// The collection under a mesh; `None` for meshes themselves.
    plural: Option<&'static str>,
    spec_schema: &'static str,
}

const KINDS: [Kind; 8] = [
    Kind { type_name: "trellis_mesh", kind: "Mesh", plural: None, spec_schema: "MeshSpec" },
    Kind {
        type_name: "trellis_service",
        kind: "Service",
        plural: Some("services"),
        spec_schema: "ServiceSpec",
    },
    Kind {
        type_name: "trellis_http_route",
        kind: "HTTPRoute",
        plural: Some("http-routes"),
        spec_schema: "HttpRouteSpec",
    },
    Kind {
        type_name: "trellis_tcp_route",
        kind: "TCPRoute",
        plural: Some("tcp-routes"),
        spec_schema: "TcpRouteSpec",
    },
    Kind {
        type_name: "trellis_access_policy",
        kind: "AccessPolicy",
        plural: Some("access-policies"),
        spec_schema: "AccessPolicySpec",
    },
    Kind {
        type_name: "trellis_circuit_breaker",
        kind: "CircuitBreaker",
        plural: Some("circuit-breakers"),
        spec_schema: "CircuitBreakerSpec",
    },
    Kind {
        type_name: "trellis_health_check",
        kind: "HealthCheck",
        plural: Some("health-checks"),
        spec_schema: "HealthCheckSpec",
    },
    Kind {
        type_name: "trellis_rate_limit",
        kind: "RateLimit",
        plural: Some("rate-limits"),
        spec_schema: "RateLimitSpec",
    },
];

/// One resource type: its kind, the attributes every object has, and its spec's schema.
struct Resource {
    kind: &'static Kind,
    top: Vec<Attr>,
    spec: Block,
}

impl Resource {
    fn in_mesh(&self) -> bool {
        self.kind.plural.is_some()
    }

    /// The whole Terraform block: the object's identity and labels, then its spec.
    fn block(&self) -> Block {
        let mut attrs = self.top.clone();
        attrs.extend(self.spec.attrs.iter().cloned());
        Block { attrs, blocks: self.spec.blocks.clone(), description: self.spec.description.clone() }
    }

    /// The REST path of the object `mesh`/`name`.
    fn path(&self, mesh: &str, name: &str) -> String {
        match self.kind.plural {
            None => format!("/meshes/{name}"),
            Some(plural) => format!("/meshes/{mesh}/{plural}/{name}"),
        }
    }

    fn id(&self, mesh: &str, name: &str) -> String {
        if self.in_mesh() { format!("{mesh}/{name}") } else { name.to_owned() }
    }

    /// `(mesh, name)` of a state or plan.
    fn address<'a>(&self, v: &'a Value) -> Option<(&'a str, &'a str)> {
        let name = get_str(v, "name")?;
        let mesh = if self.in_mesh() { get_str(v, "mesh")? } else { "" };
        Some((mesh, name))
    }

    /// The document a PUT sends for a planned value.
    fn document(&self, planned: &Value, mesh: &str, name: &str) -> Json {
        let mut metadata = json!({ "name": name });
        if self.in_mesh() {
            metadata["mesh"] = json!(mesh);
        }
        if let Value::Map(labels) = get(planned, "labels") {
            let labels: serde_json::Map<String, Json> = labels
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), json!(v.as_str()?))))
                .collect();
            metadata["labels"] = Json::Object(labels);
        }
        json!({
            "apiVersion": "trellis.dev/v1",
            "kind": self.kind.kind,
            "metadata": metadata,
            "spec": Json::Object(value::to_json(&self.spec, planned)),
        })
    }

    /// The Terraform state of a document the API returned.
    fn state(&self, doc: &Json, etag: Option<String>, mesh: &str, reference: Option<&Value>) -> Value {
        let empty = serde_json::Map::new();
        let spec = doc["spec"].as_object().unwrap_or(&empty);
        let mut state = value::from_json(&self.spec, spec, reference);
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let mesh = doc["metadata"]["mesh"].as_str().unwrap_or(mesh);
        set(&mut state, "id", Value::from(self.id(mesh, name)));
        set(&mut state, "name", Value::from(name));
        if self.in_mesh() {
            set(&mut state, "mesh", Value::from(mesh));
        }
        let labels = match doc["metadata"]["labels"].as_object() {
            Some(l) if !l.is_empty() => Value::Map(
                l.iter()
                    .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str().unwrap_or_default())))
                    .collect(),
            ),
            _ => Value::Nil,
        };
        set(&mut state, "labels", labels);
        set(&mut state, "etag", etag.map(Value::from).unwrap_or(Value::Nil));
        state
    }

    /// Diagnostics for an API error, each field error on its attribute.
    fn api_diagnostics(&self, what: &str, e: &ApiError) -> Vec<Diagnostic> {
        let summary = match e.status {
            Some(412) => format!("{what}: the object changed since Terraform last read it"),
            Some(s) => format!("{what}: the Trellis API answered {s}"),
            None => format!("{what}: no answer from Trellis"),
        };
        let detail = match e.status {
            Some(412) => format!(
                "{} Someone changed it outside this run; run `terraform plan` again to see the change.",
                e.detail
            ),
            _ => e.detail.clone(),
        };
        if e.fields.is_empty() {
            return vec![error(&summary, &detail, None)];
        }
        e.fields
            .iter()
            .map(|(field, message)| {
                let path = match field.split_once('.') {
                    Some(("spec", rest)) => value::api_path(&self.spec, rest),
                    Some(("metadata", rest)) => {
                        let attr = rest.split(['.', '[']).next().unwrap_or(rest);
                        Some(vec![Step::Attr(attr.to_owned())])
                    }
                    _ => None,
                };
                error(&summary, &format!("{field}: {message}"), path)
            })
            .collect()
    }
}

fn error(summary: &str, detail: &str, path: Option<Vec<Step>>) -> Diagnostic {
    Diagnostic {
        severity: diagnostic::Severity::Error as i32,
        summary: summary.to_owned(),
        detail: detail.to_owned(),
        attribute: path.map(attribute_path),
    }
}

fn attribute_path(steps: Vec<Step>) -> AttributePath {
    use attribute_path::step::Selector;
    AttributePath {
        steps: steps
            .into_iter()
            .map(|s| attribute_path::Step {
                selector: Some(match s {
                    Step::Attr(name) => Selector::AttributeName(name),
                    Step::Index(i) => Selector::ElementKeyInt(i),
                }),
            })
            .collect(),
    }
}

fn minted_diagnostics(summary: &str, e: &ApiError) -> Vec<Diagnostic> {
    if e.fields.is_empty() {
        return vec![error(summary, &e.detail, None)];
    }
    e.fields
        .iter()
        .map(|(field, message)| {
            let attr = crate::schema::camel_to_snake(field.split(['.', '[']).next().unwrap_or(field));
            error(summary, &format!("{field}: {message}"), Some(vec![Step::Attr(attr)]))
        })
        .collect()
}

fn problems_to_diagnostics(problems: Vec<Problem>) -> Vec<Diagnostic> {
    problems.into_iter().map(|p| error("Invalid value", &p.message, Some(p.path))).collect()
}

fn to_proto_block(block: &Block) -> schema::Block {
    schema::Block {
        version: 0,
        attributes: block
            .attrs
            .iter()
            .map(|a| schema::Attribute {
                name: a.name.clone(),
                r#type: a.ty.json().as_bytes().to_vec(),
                description: a.description.clone(),
                required: a.required,
                optional: a.optional,
                computed: a.computed,
                sensitive: a.sensitive,
                description_kind: 0,
                deprecated: false,
            })
            .collect(),
        block_types: block
            .blocks
            .iter()
            .map(|n| schema::NestedBlock {
                type_name: n.name.clone(),
                block: Some(to_proto_block(&n.block)),
                nesting: schema::nested_block::NestingMode::List as i32,
                min_items: i64::from(n.required),
                max_items: i64::from(n.single),
            })
            .collect(),
        description: block.description.clone(),
        description_kind: 0,
        deprecated: false,
    }
}

fn dynamic(v: &Value) -> Option<DynamicValue> {
    Some(DynamicValue { msgpack: value::encode(v), json: Vec::new() })
}

fn decode(v: Option<&DynamicValue>) -> Result<Value, Status> {
    let Some(v) = v else { return Ok(Value::Nil) };
    if !v.msgpack.is_empty() {
        return value::decode(&v.msgpack)
            .map_err(|e| Status::invalid_argument(format!("bad msgpack value: {e}")));
    }
    if v.json.is_empty() {
        return Ok(Value::Nil);
    }
    let j: Json = serde_json::from_slice(&v.json)
        .map_err(|e| Status::invalid_argument(format!("bad JSON value: {e}")))?;
    Ok(value::json_to_msgpack(&j))
}

/// A configured value, unless it is null or not yet known.
fn known_str(v: &Value, key: &str) -> Option<String> {
    get_str(v, key).filter(|s| !s.is_empty()).map(str::to_owned)
}

pub struct Provider {
    data_sources: Vec<(&'static str, Source, Block)>,
    resources: Vec<Resource>,
    minted: Vec<Minted>,
    client: RwLock<Option<Client>>,
}

impl Provider {
    pub fn new() -> Provider {
        let components = Components::load();
        let resources: Vec<Resource> = KINDS
            .iter()
            .map(|kind| {
                let mut top = vec![
                    Attr::new("id", Ty::String).computed().describe("`mesh/name` (`name` for a mesh): the import ID."),
                    Attr::new("name", Ty::String).required().describe("The object's name; changing it replaces the object."),
                ];
                if kind.plural.is_some() {
                    top.push(Attr::new("mesh", Ty::String).required().describe("The mesh; changing it replaces the object."));
                }
                top.push(Attr::new("labels", Ty::Map).optional().describe("metadata.labels"));
                top.push(Attr::new("etag", Ty::String).computed().describe(
                    "The ETag of the object as Terraform last read it; updates send it as If-Match, so a change made \
                     meanwhile is an error, not overwritten.",
                ));
                let name = top.iter_mut().find(|a| a.name == "name").expect("name");
                name.min_length = Some(1);
                name.max_length = Some(63);
                Resource { kind, top, spec: components.block(kind.spec_schema) }
            })
            .collect();
        let mesh_block =
            resources.iter().find(|r: &&Resource| !r.in_mesh()).expect("the mesh resource").block();
        let data_sources = data::SOURCES
            .iter()
            .map(|(name, source)| (*name, *source, data::schema(*source, &mesh_block, &components)))
            .collect();
        Provider { data_sources, resources, minted: Minted::all(), client: RwLock::new(None) }
    }

    fn data_source(&self, type_name: &str) -> Result<&(&'static str, Source, Block), Status> {
        self.data_sources
            .iter()
            .find(|(name, _, _)| *name == type_name)
            .ok_or_else(|| Status::not_found(format!("no data source {type_name}")))
    }

    fn minted(&self, type_name: &str) -> Option<&Minted> {
        self.minted.iter().find(|m| m.type_name == type_name)
    }

    /// Apply for a minted object: create or revoke (every change replaces).
    async fn apply_minted(
        &self,
        m: &Minted,
        prior: &Value,
        planned: &Value,
    ) -> Result<Value, Vec<Diagnostic>> {
        let client = self.client().await?;
        let what = m.type_name;
        if planned.is_nil() {
            m.revoke(&client, prior)
                .await
                .map_err(|e| minted_diagnostics(&format!("Revoking {what}"), &e))?;
            return Ok(Value::Nil);
        }
        if !prior.is_nil() {
            return Err(vec![error(&format!("{what} cannot change"), "every change replaces it", None)]);
        }
        m.create(&client, planned).await.map_err(|e| minted_diagnostics(&format!("Creating {what}"), &e))
    }

    fn resource(&self, type_name: &str) -> Result<&Resource, Status> {
        self.resources
            .iter()
            .find(|r| r.kind.type_name == type_name)
            .ok_or_else(|| Status::not_found(format!("no resource type {type_name}")))
    }

    async fn client(&self) -> Result<Client, Vec<Diagnostic>> {
        self.client.read().await.clone().ok_or_else(|| {
            vec![error(
                "The provider is not configured",
                "ConfigureProvider was not called before this request",
                None,
            )]
        })
    }

    fn provider_schema() -> Block {
        Block {
            attrs: vec![
                Attr::new("server_url", Ty::String).optional().describe(
                    "The Trellis REST address, e.g. http://127.0.0.1:8080 (default: TRELLIS_SERVER).",
                ),
                Attr::new("token", Ty::String)
                    .optional()
                    .sensitive()
                    .describe("An API token (default: TRELLIS_TOKEN)."),
                Attr::new("organization", Ty::String).optional().describe(
                    "The organization's slug (default: TRELLIS_ORG, then the token's organization).",
                ),
            ],
            blocks: Vec::new(),
            description: "Trellis: meshes, services and their policies.".into(),
        }
    }

    async fn configure(&self, config: &Value) -> Vec<Diagnostic> {
        let setting = |key: &str, env: &str| {
            known_str(config, key).or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
        };
        let Some(server) = setting("server_url", "TRELLIS_SERVER") else {
            return vec![error(
                "No Trellis server",
                "set `server_url` in the provider block or TRELLIS_SERVER",
                Some(vec![Step::Attr("server_url".into())]),
            )];
        };
        let Some(token) = setting("token", "TRELLIS_TOKEN") else {
            return vec![error(
                "No Trellis API token",
                "set `token` in the provider block or TRELLIS_TOKEN",
                Some(vec![Step::Attr("token".into())]),
            )];
        };
        let mut client = match Client::new(&server, &token, "") {
            Ok(c) => c,
            Err(e) => return vec![error("The HTTP client could not be built", &e.to_string(), None)],
        };
        client.org = match setting("organization", "TRELLIS_ORG") {
            Some(org) => org,
            None => match client.token_org().await {
                Ok(org) => org,
                Err(e) => return vec![error("The token's organization could not be found", &e.detail, None)],
            },
        };
        *self.client.write().await = Some(client);
        Vec::new()
    }

    async fn read(
        &self,
        res: &Resource,
        current: Value,
    ) -> Result<(Value, Vec<Diagnostic>), Vec<Diagnostic>> {
        let client = self.client().await?;
        let Some((mesh, name)) = res.address(&current) else { return Ok((current, Vec::new())) };
        match client.get(&res.path(mesh, name)).await {
            Ok(Some(doc)) => Ok((res.state(&doc.body, doc.etag, mesh, Some(&current)), Vec::new())),
            Ok(None) => Ok((Value::Nil, Vec::new())),
            Err(e) => Err(res.api_diagnostics(&format!("Reading {}", res.id(mesh, name)), &e)),
        }
    }

    fn plan(&self, res: &Resource, prior: &Value, config: &Value) -> (Value, Vec<AttributePath>) {
        let prior = (!prior.is_nil()).then_some(prior);
        let mut planned = value::plan(&res.block(), prior, config);
        let mut replace = Vec::new();
        if let Some(prior) = prior {
            for key in ["name", "mesh"] {
                let (before, after) = (get(prior, key), get(config, key));
                if !after.is_nil() && !value::same(before, after) && res.block().attr(key).is_some() {
                    replace.push(attribute_path(vec![Step::Attr(key.into())]));
                }
            }
        }
        let id = match res.address(&planned) {
            Some((mesh, name)) => Value::from(res.id(mesh, name)),
            None => value::unknown(),
        };
        set(&mut planned, "id", id);
        let unchanged = prior.is_some_and(|p| {
            let mut p = p.clone();
            set(&mut p, "etag", Value::Nil);
            let mut q = planned.clone();
            set(&mut q, "etag", Value::Nil);
            value::same(&p, &q)
        });
        let etag = match prior {
            Some(p) if unchanged => get(p, "etag").clone(),
            _ => value::unknown(),
        };
        set(&mut planned, "etag", etag);
        (planned, replace)
    }

    async fn apply(&self, res: &Resource, prior: &Value, planned: &Value) -> Result<Value, Vec<Diagnostic>> {
        let client = self.client().await?;
        if planned.is_nil() {
            let Some((mesh, name)) = res.address(prior) else { return Ok(Value::Nil) };
            client
                .delete(&res.path(mesh, name))
                .await
                .map_err(|e| res.api_diagnostics(&format!("Deleting {}", res.id(mesh, name)), &e))?;
            return Ok(Value::Nil);
        }
        let Some((mesh, name)) = res.address(planned) else {
            return Err(vec![error("Unknown name", "the name and mesh must be known before apply", None)]);
        };
        let etag = if prior.is_nil() { None } else { get_str(prior, "etag") };
        let precondition = match etag {
            Some(etag) => Precondition::Unchanged(etag),
            None => Precondition::Create,
        };
        let id = res.id(mesh, name);
        let doc = match client
            .put(&res.path(mesh, name), &res.document(planned, mesh, name), precondition)
            .await
        {
            Ok(doc) => doc,
            // If-None-Match: * failed: someone else's object of that name.
            Err(e) if prior.is_nil() && e.status == Some(412) => {
                let detail = format!(
                    "{} {id} already exists; bring it under Terraform with `terraform import {}.<name> {id}`",
                    res.kind.kind, res.kind.type_name
                );
                return Err(vec![error(&format!("Creating {id}: it already exists"), &detail, None)]);
            }
            Err(e) => {
                let what = if prior.is_nil() { "Creating" } else { "Updating" };
                return Err(res.api_diagnostics(&format!("{what} {id}"), &e));
            }
        };
        Ok(res.state(&doc.body, doc.etag, mesh, Some(planned)))
    }

    async fn import(&self, res: &Resource, id: &str) -> Result<Value, Vec<Diagnostic>> {
        let client = self.client().await?;
        let (mesh, name) = match (res.in_mesh(), id.split_once('/')) {
            (true, Some((mesh, name))) => (mesh, name),
            (false, None) => ("", id),
            _ => {
                let form = if res.in_mesh() { "MESH/NAME" } else { "NAME" };
                return Err(vec![error(
                    "Invalid import ID",
                    &format!("{} imports by {form}, not {id:?}", res.kind.type_name),
                    None,
                )]);
            }
        };
        match client.get(&res.path(mesh, name)).await {
            Ok(Some(doc)) => Ok(res.state(&doc.body, doc.etag, mesh, None)),
            Ok(None) => {
                Err(vec![error("Cannot import", &format!("{} {id} does not exist", res.kind.kind), None)])
            }
            Err(e) => Err(res.api_diagnostics(&format!("Importing {id}"), &e)),
        }
    }
}

impl Provider {
    async fn import_minted(&self, m: &Minted, id: &str) -> Result<Value, Vec<Diagnostic>> {
        let client = self.client().await?;
        match m.import(&client, id).await {
            Ok(Some(state)) => Ok(state),
            Ok(None) => {
                let form = if m.in_mesh { "MESH/ID" } else { "ID" };
                Err(vec![error(
                    "Cannot import",
                    &format!("no active {} {id:?} (import by {form})", m.type_name),
                    None,
                )])
            }
            Err(e) => Err(minted_diagnostics(&format!("Importing {id}"), &e)),
        }
    }
}

#[tonic::async_trait]
impl proto::provider_server::Provider for Provider {
    async fn get_provider_schema(
        &self,
        _: Request<proto::get_provider_schema::Request>,
    ) -> Result<Response<proto::get_provider_schema::Response>, Status> {
        let resource_schemas = self
            .resources
            .iter()
            .map(|r| (r.kind.type_name, r.block()))
            .chain(self.minted.iter().map(|m| (m.type_name, m.block())))
            .map(|(name, block)| {
                (name.to_owned(), Schema { version: 0, block: Some(to_proto_block(&block)) })
            })
            .collect();
        Ok(Response::new(proto::get_provider_schema::Response {
            provider: Some(Schema { version: 0, block: Some(to_proto_block(&Self::provider_schema())) }),
            resource_schemas,
            data_source_schemas: self
                .data_sources
                .iter()
                .map(|(name, _, block)| {
                    ((*name).to_owned(), Schema { version: 0, block: Some(to_proto_block(block)) })
                })
                .collect(),
            diagnostics: Vec::new(),
            provider_meta: None,
        }))
    }

    async fn validate_provider_config(
        &self,
        _: Request<proto::validate_provider_config::Request>,
    ) -> Result<Response<proto::validate_provider_config::Response>, Status> {
        Ok(Response::new(Default::default()))
    }

    async fn validate_resource_config(
        &self,
        request: Request<proto::validate_resource_config::Request>,
    ) -> Result<Response<proto::validate_resource_config::Response>, Status> {
        let request = request.into_inner();
        let config = decode(request.config.as_ref())?;
        let block = match self.minted(&request.type_name) {
            Some(m) => m.block(),
            None => self.resource(&request.type_name)?.block(),
        };
        let mut problems = Vec::new();
        value::validate(&block, &config, &mut Vec::new(), &mut problems);
        Ok(Response::new(proto::validate_resource_config::Response {
            diagnostics: problems_to_diagnostics(problems),
        }))
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<proto::validate_data_resource_config::Request>,
    ) -> Result<Response<proto::validate_data_resource_config::Response>, Status> {
        self.data_source(&request.into_inner().type_name)?;
        Ok(Response::new(Default::default()))
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<proto::upgrade_resource_state::Request>,
    ) -> Result<Response<proto::upgrade_resource_state::Response>, Status> {
        let request = request.into_inner();
        if self.minted(&request.type_name).is_none() {
            self.resource(&request.type_name)?;
        }
        let raw = request.raw_state.map(|r| r.json).unwrap_or_default();
        let json: Json =
            serde_json::from_slice(&raw).map_err(|e| Status::invalid_argument(format!("state: {e}")))?;
        Ok(Response::new(proto::upgrade_resource_state::Response {
            upgraded_state: dynamic(&value::json_to_msgpack(&json)),
            diagnostics: Vec::new(),
        }))
    }

    async fn configure_provider(
        &self,
        request: Request<proto::configure_provider::Request>,
    ) -> Result<Response<proto::configure_provider::Response>, Status> {
        let config = decode(request.into_inner().config.as_ref())?;
        Ok(Response::new(proto::configure_provider::Response { diagnostics: self.configure(&config).await }))
    }

    async fn read_resource(
        &self,
        request: Request<proto::read_resource::Request>,
    ) -> Result<Response<proto::read_resource::Response>, Status> {
        let request = request.into_inner();
        let current = decode(request.current_state.as_ref())?;
        if let Some(m) = self.minted(&request.type_name) {
            let (state, diagnostics) = match self.client().await {
                Ok(client) => match m.read(&client, current.clone()).await {
                    Ok(state) => (state, Vec::new()),
                    Err(e) => (current, minted_diagnostics(&format!("Reading {}", m.type_name), &e)),
                },
                Err(d) => (current, d),
            };
            return Ok(Response::new(proto::read_resource::Response {
                new_state: dynamic(&state),
                diagnostics,
                private: request.private,
            }));
        }
        let res = self.resource(&request.type_name)?;
        let (state, diagnostics) = match self.read(res, current.clone()).await {
            Ok(r) => r,
            Err(d) => (current, d),
        };
        Ok(Response::new(proto::read_resource::Response {
            new_state: dynamic(&state),
            diagnostics,
            private: request.private,
        }))
    }

    async fn plan_resource_change(
        &self,
        request: Request<proto::plan_resource_change::Request>,
    ) -> Result<Response<proto::plan_resource_change::Response>, Status> {
        let request = request.into_inner();
        let prior = decode(request.prior_state.as_ref())?;
        let proposed = decode(request.proposed_new_state.as_ref())?;
        if proposed.is_nil() {
            return Ok(Response::new(proto::plan_resource_change::Response {
                planned_state: dynamic(&Value::Nil),
                ..Default::default()
            }));
        }
        let config = decode(request.config.as_ref())?;
        let (planned, requires_replace) = match self.minted(&request.type_name) {
            Some(m) => {
                let (planned, replace) = m.plan(&prior, &config);
                (planned, replace.into_iter().map(attribute_path).collect())
            }
            None => self.plan(self.resource(&request.type_name)?, &prior, &config),
        };
        Ok(Response::new(proto::plan_resource_change::Response {
            planned_state: dynamic(&planned),
            requires_replace,
            planned_private: request.prior_private,
            diagnostics: Vec::new(),
        }))
    }

    async fn apply_resource_change(
        &self,
        request: Request<proto::apply_resource_change::Request>,
    ) -> Result<Response<proto::apply_resource_change::Response>, Status> {
        let request = request.into_inner();
        let prior = decode(request.prior_state.as_ref())?;
        let planned = decode(request.planned_state.as_ref())?;
        let applied = match self.minted(&request.type_name) {
            Some(m) => self.apply_minted(m, &prior, &planned).await,
            None => self.apply(self.resource(&request.type_name)?, &prior, &planned).await,
        };
        let (state, diagnostics) = match applied {
            Ok(state) => (state, Vec::new()),
            // Nothing changed: the state stays what it was.
            Err(d) => (prior, d),
        };
        Ok(Response::new(proto::apply_resource_change::Response {
            new_state: dynamic(&state),
            private: Vec::new(),
            diagnostics,
        }))
    }

    async fn import_resource_state(
        &self,
        request: Request<proto::import_resource_state::Request>,
    ) -> Result<Response<proto::import_resource_state::Response>, Status> {
        let request = request.into_inner();
        let imported = match self.minted(&request.type_name) {
            Some(m) => self.import_minted(m, &request.id).await,
            None => self.import(self.resource(&request.type_name)?, &request.id).await,
        };
        let response = match imported {
            Ok(state) => proto::import_resource_state::Response {
                imported_resources: vec![proto::import_resource_state::ImportedResource {
                    type_name: request.type_name,
                    state: dynamic(&state),
                    private: Vec::new(),
                }],
                diagnostics: Vec::new(),
            },
            Err(diagnostics) => {
                proto::import_resource_state::Response { imported_resources: Vec::new(), diagnostics }
            }
        };
        Ok(Response::new(response))
    }

    async fn read_data_source(
        &self,
        request: Request<proto::read_data_source::Request>,
    ) -> Result<Response<proto::read_data_source::Response>, Status> {
        let request = request.into_inner();
        let (name, source, block) = self.data_source(&request.type_name)?;
        let config = decode(request.config.as_ref())?;
        let mesh = self.resources.iter().find(|r| !r.in_mesh()).expect("the mesh resource");
        let read = match self.client().await {
            Ok(client) => {
                data::read(*source, block, &client, &config, |doc, etag| mesh.state(doc, etag, "", None))
                    .await
                    .map_err(|e| mesh.api_diagnostics(&format!("Reading {name}"), &e))
            }
            Err(d) => Err(d),
        };
        let (state, diagnostics) = match read {
            Ok(Some(state)) => (state, Vec::new()),
            Ok(None) => (config, vec![error(&format!("Reading {name}"), "it does not exist", None)]),
            Err(d) => (config, d),
        };
        Ok(Response::new(proto::read_data_source::Response { state: dynamic(&state), diagnostics }))
    }

    async fn stop_provider(
        &self,
        _: Request<proto::stop_provider::Request>,
    ) -> Result<Response<proto::stop_provider::Response>, Status> {
        Ok(Response::new(proto::stop_provider::Response { error: String::new() }))
    }
}

/// go-plugin's controller: Terraform asks the plugin to exit when it is done.
pub struct Controller(pub Arc<Notify>);

#[tonic::async_trait]
impl plugin::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(&self, _: Request<plugin::Empty>) -> Result<Response<plugin::Empty>, Status> {
        self.0.notify_one();
        Ok(Response::new(plugin::Empty {}))
    }
}

/// The health check go-plugin may call: serving while the process runs.
pub struct Health;

#[tonic::async_trait]
impl health::health_server::Health for Health {
    async fn check(
        &self,
        _: Request<health::HealthCheckRequest>,
    ) -> Result<Response<health::HealthCheckResponse>, Status> {
        Ok(Response::new(health::HealthCheckResponse {
            status: health::health_check_response::ServingStatus::Serving as i32,
        }))
    }
}
