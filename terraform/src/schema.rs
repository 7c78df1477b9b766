//! Terraform schemas derived from the REST API's own OpenAPI document (`api/openapi.json`,
//! built in), so that field names and bounds have one source: a `spec` property becomes an
//! attribute or a nested block of the same name in snake_case.

use serde_json::Value as Json;

/// The OpenAPI document the provider was built with.
const OPENAPI: &str = include_str!("../../api/openapi.json");

/// A Terraform attribute type this provider uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ty {
    String,
    Number,
    Bool,
    /// `list(string)`
    List,
    /// `list(number)`
    NumberList,
    /// `map(string)`
    Map,
}

impl Ty {
    /// The type in Terraform's JSON notation.
    pub fn json(self) -> &'static str {
        match self {
            Ty::String => "\"string\"",
            Ty::Number => "\"number\"",
            Ty::Bool => "\"bool\"",
            Ty::List => "[\"list\",\"string\"]",
            Ty::NumberList => "[\"list\",\"number\"]",
            Ty::Map => "[\"map\",\"string\"]",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Attr {
    /// Terraform's name (snake_case).
    pub name: String,
    /// The REST API's name (camelCase).
    pub json: String,
    pub ty: Ty,
    pub required: bool,
    pub optional: bool,
    pub computed: bool,
    pub sensitive: bool,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    /// Allowed values, when the API has an enumeration.
    pub allowed: Vec<String>,
    pub description: String,
}

impl Attr {
    pub fn new(name: &str, ty: Ty) -> Attr {
        Attr {
            name: name.to_owned(),
            json: snake_to_camel(name),
            ty,
            required: false,
            optional: false,
            computed: false,
            sensitive: false,
            minimum: None,
            maximum: None,
            min_length: None,
            max_length: None,
            allowed: Vec::new(),
            description: String::new(),
        }
    }

    pub fn required(mut self) -> Attr {
        self.required = true;
        self
    }

    pub fn optional(mut self) -> Attr {
        self.optional = true;
        self
    }

    pub fn computed(mut self) -> Attr {
        self.computed = true;
        self
    }

    pub fn sensitive(mut self) -> Attr {
        self.sensitive = true;
        self
    }

    pub fn describe(mut self, text: &str) -> Attr {
        self.description = text.to_owned();
        self
    }
}

/// A nested object of the API: a block that repeats (arrays) or appears at most once.
#[derive(Clone, Debug)]
pub struct Nested {
    pub name: String,
    pub json: String,
    pub block: Block,
    /// An object, not an array: at most one block.
    pub single: bool,
    /// The API always returns this object (it has defaults), so its absence from the
    /// configuration means "the server's choice", not "none".
    pub always_present: bool,
    pub required: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Block {
    pub attrs: Vec<Attr>,
    pub blocks: Vec<Nested>,
    pub description: String,
}

impl Block {
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.name == name)
    }
}

/// `backendRefs` → `backend_refs`.
pub fn camel_to_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `backend_refs` → `backendRefs`.
pub fn snake_to_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The OpenAPI document's component schemas.
pub struct Components(serde_json::Map<String, Json>);

impl Components {
    pub fn load() -> Components {
        let doc: Json = serde_json::from_str(OPENAPI).expect("the built-in OpenAPI document is JSON");
        let schemas = doc["components"]["schemas"].as_object().expect("components.schemas").clone();
        Components(schemas)
    }

    fn get(&self, name: &str) -> &Json {
        self.0.get(name).unwrap_or_else(|| panic!("the OpenAPI document has no schema {name}"))
    }

    /// Follows `$ref` and `oneOf: [X, null]`; tells whether null is allowed.
    fn resolve<'a>(&'a self, mut schema: &'a Json) -> (&'a Json, bool) {
        let mut nullable = false;
        loop {
            if let Some(r) = schema.get("$ref").and_then(Json::as_str) {
                schema = self.get(r.rsplit('/').next().unwrap_or(r));
            } else if let Some(options) = schema.get("oneOf").and_then(Json::as_array) {
                let non_null: Vec<&Json> =
                    options.iter().filter(|o| o.get("type").and_then(Json::as_str) != Some("null")).collect();
                nullable |= non_null.len() < options.len();
                match non_null.as_slice() {
                    [one] => schema = one,
                    _ => return (schema, nullable),
                }
            } else {
                return (schema, nullable);
            }
        }
    }

    /// The simple type of a resolved schema (`"string"`, `"integer"`, …), ignoring "null".
    fn simple_type(schema: &Json) -> Option<&str> {
        match schema.get("type") {
            Some(Json::String(t)) => Some(t),
            Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).find(|t| *t != "null"),
            _ if schema.get("enum").is_some() => Some("string"),
            _ => None,
        }
    }

    /// The Terraform block of an object schema named `name`; properties the API does not
    /// require are optional and computed (the server fills their defaults).
    pub fn block(&self, name: &str) -> Block {
        self.object_block(self.get(name))
    }

    fn object_block(&self, schema: &Json) -> Block {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Json::as_array)
            .map(|r| r.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let mut block = Block {
            description: schema.get("description").and_then(Json::as_str).unwrap_or_default().to_owned(),
            ..Block::default()
        };
        let Some(properties) = schema.get("properties").and_then(Json::as_object) else { return block };
        for (json_name, property) in properties {
            let is_required = required.contains(&json_name.as_str());
            let name = camel_to_snake(json_name);
            let described = property.get("description").and_then(Json::as_str);
            let (resolved, nullable) = self.resolve(property);
            let description = described
                .or(resolved.get("description").and_then(Json::as_str))
                .unwrap_or_default()
                .to_owned();
            let nullable = nullable
                || matches!(resolved.get("type"), Some(Json::Array(ts)) if ts.iter().any(|t| t == "null"));
            // An object of named fields (or of none, like `tcp: {}`) is a block; one of any
            // keys is a map.
            let fixed_fields = resolved.get("properties").is_some()
                || resolved.get("additionalProperties") == Some(&Json::Bool(false));
            match Self::simple_type(resolved) {
                Some("object") if fixed_fields => {
                    let mut inner = self.object_block(resolved);
                    inner.description = description;
                    block.blocks.push(Nested {
                        name,
                        json: json_name.clone(),
                        block: inner,
                        single: true,
                        always_present: !nullable,
                        required: is_required,
                    });
                }
                Some("object") => {
                    block.attrs.push(self.attr(&name, json_name, Ty::Map, resolved, is_required))
                }
                Some("array") => {
                    let (items, _) = self.resolve(&resolved["items"]);
                    if Self::simple_type(items) == Some("object") && items.get("properties").is_some() {
                        let mut inner = self.object_block(items);
                        inner.description = description;
                        block.blocks.push(Nested {
                            name,
                            json: json_name.clone(),
                            block: inner,
                            single: false,
                            always_present: false,
                            required: is_required,
                        });
                    } else {
                        let ty = match Self::simple_type(items) {
                            Some("integer" | "number") => Ty::NumberList,
                            _ => Ty::List,
                        };
                        let mut attr = self.attr(&name, json_name, ty, items, is_required);
                        attr.description = description;
                        block.attrs.push(attr);
                    }
                }
                other => {
                    let ty = match other {
                        Some("integer" | "number") => Ty::Number,
                        Some("boolean") => Ty::Bool,
                        _ => Ty::String,
                    };
                    let mut attr = self.attr(&name, json_name, ty, resolved, is_required);
                    attr.description = description;
                    block.attrs.push(attr);
                }
            }
        }
        block
    }

    /// An attribute with the bounds of `schema` (for lists: of their items).
    fn attr(&self, name: &str, json: &str, ty: Ty, schema: &Json, required: bool) -> Attr {
        let mut attr = Attr::new(name, ty);
        attr.json = json.to_owned();
        if required {
            attr.required = true;
        } else {
            attr.optional = true;
            attr.computed = true;
        }
        attr.minimum = schema.get("minimum").and_then(Json::as_f64);
        attr.maximum = schema.get("maximum").and_then(Json::as_f64);
        attr.min_length = schema.get("minLength").and_then(Json::as_u64);
        attr.max_length = schema.get("maxLength").and_then(Json::as_u64);
        attr.allowed = schema
            .get("enum")
            .and_then(Json::as_array)
            .map(|e| e.iter().filter_map(Json::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        attr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_convert_both_ways() {
        assert_eq!(camel_to_snake("backendRefs"), "backend_refs");
        assert_eq!(snake_to_camel("backend_refs"), "backendRefs");
        assert_eq!(camel_to_snake("consecutive5xx"), "consecutive5xx");
        assert_eq!(snake_to_camel("consecutive5xx"), "consecutive5xx");
    }

    #[test]
    fn the_http_route_schema_follows_the_api_document() {
        let route = Components::load().block("HttpRouteSpec");
        let target = route.blocks.iter().find(|b| b.name == "target_ref").unwrap();
        assert!(target.single && target.required);
        let rules = route.blocks.iter().find(|b| b.name == "rules").unwrap();
        assert!(!rules.single);
        let backends = rules.block.blocks.iter().find(|b| b.name == "backend_refs").unwrap();
        let weight = backends.block.attr("weight").unwrap();
        assert_eq!(
            (weight.ty, weight.minimum, weight.optional, weight.computed),
            (Ty::Number, Some(0.0), true, true)
        );
        assert_eq!(backends.block.attr("tags").unwrap().ty, Ty::Map);
        let retry = rules.block.blocks.iter().find(|b| b.name == "retry").unwrap();
        assert!(retry.single && !retry.always_present);
        assert!(retry.block.attr("retry_on").unwrap().allowed.contains(&"5xx".to_owned()));
        let mesh = Components::load().block("MeshSpec");
        assert!(mesh.blocks.iter().find(|b| b.name == "mtls").unwrap().always_present);
        assert_eq!(mesh.attr("default_access").unwrap().allowed, ["deny", "allow"]);
        let health = Components::load().block("HealthCheckSpec");
        let tcp = health.blocks.iter().find(|b| b.name == "tcp").unwrap();
        assert!(tcp.single && tcp.block.attrs.is_empty());
        let http = health.blocks.iter().find(|b| b.name == "http").unwrap();
        assert_eq!(http.block.attr("expected_statuses").unwrap().ty, Ty::NumberList);
    }
}
