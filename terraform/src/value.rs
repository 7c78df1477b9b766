//! Terraform's dynamic values (msgpack, as `rmpv::Value`) and their conversion to and from
//! the REST API's JSON, guided by a [`Block`].

use rmpv::Value;
use serde_json::Value as Json;

use crate::schema::{Block, Ty};

/// One step of an attribute path, as Terraform reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Attr(String),
    Index(i64),
}

/// A value error at a path, to become a diagnostic.
#[derive(Debug, PartialEq)]
pub struct Problem {
    pub path: Vec<Step>,
    pub message: String,
}

/// Terraform's "not known until apply": msgpack extension 0.
pub fn unknown() -> Value {
    Value::Ext(0, vec![0])
}

pub fn is_unknown(v: &Value) -> bool {
    matches!(v, Value::Ext(..))
}

pub fn decode(bytes: &[u8]) -> anyhow::Result<Value> {
    if bytes.is_empty() {
        return Ok(Value::Nil);
    }
    Ok(rmpv::decode::read_value(&mut &bytes[..])?)
}

pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writing to a Vec cannot fail");
    out
}

/// The attribute `key` of an object value (Nil when absent or when `v` is no object).
pub fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    static NIL: Value = Value::Nil;
    match v {
        Value::Map(pairs) => {
            pairs.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v).unwrap_or(&NIL)
        }
        _ => &NIL,
    }
}

/// The string attribute `key`, when known.
pub fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    get(v, key).as_str()
}

pub fn object(pairs: Vec<(String, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

/// Replaces (or adds) attribute `key` of an object.
pub fn set(v: &mut Value, key: &str, new: Value) {
    if let Value::Map(pairs) = v {
        match pairs.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
            Some((_, old)) => *old = new,
            None => pairs.push((Value::from(key), new)),
        }
    }
}

/// Equality as Terraform sees it: object keys in any order, a number whatever its encoding.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.iter().any(|(k2, v2)| k == k2 && same(v, v2)))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w)),
        (
            Value::Integer(_) | Value::F64(_) | Value::F32(_),
            Value::Integer(_) | Value::F64(_) | Value::F32(_),
        ) => number(a) == number(b),
        _ => a == b,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => i.as_i64().map(|i| i as f64).or_else(|| i.as_u64().map(|u| u as f64)),
        Value::F64(f) => Some(*f),
        Value::F32(f) => Some(f64::from(*f)),
        _ => None,
    }
}

fn elements(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        _ => &[],
    }
}

/// The API's JSON object for the attributes and blocks of `block` in `v` (null and
/// unknown values are left out: the server decides them).
pub fn to_json(block: &Block, v: &Value) -> serde_json::Map<String, Json> {
    let mut out = serde_json::Map::new();
    for attr in &block.attrs {
        if let Some(j) = scalar_to_json(attr.ty, get(v, &attr.name)) {
            out.insert(attr.json.clone(), j);
        }
    }
    for nested in &block.blocks {
        let items = elements(get(v, &nested.name));
        if items.is_empty() {
            continue;
        }
        let objects: Vec<Json> = items.iter().map(|i| Json::Object(to_json(&nested.block, i))).collect();
        let value = if nested.single {
            objects.into_iter().next().unwrap_or(Json::Null)
        } else {
            Json::Array(objects)
        };
        out.insert(nested.json.clone(), value);
    }
    out
}

/// The API's name of a Terraform attribute name.
pub fn camel(name: &str) -> String {
    crate::schema::snake_to_camel(name)
}

/// One attribute's value as the API's JSON (`None` when null or unknown).
pub fn attr_to_json(attr: &crate::schema::Attr, v: &Value) -> Option<Json> {
    scalar_to_json(attr.ty, v)
}

/// One attribute's value from the API's JSON.
pub fn attr_from_json(attr: &crate::schema::Attr, j: Option<&Json>) -> Value {
    scalar_from_json(attr.ty, j)
}

fn scalar_to_json(ty: Ty, v: &Value) -> Option<Json> {
    if v.is_nil() || is_unknown(v) {
        return None;
    }
    Some(match ty {
        Ty::String => Json::from(v.as_str()?),
        Ty::Bool => Json::from(v.as_bool()?),
        Ty::Number => match v {
            Value::Integer(i) => i.as_i64().map(Json::from).or_else(|| i.as_u64().map(Json::from))?,
            Value::F64(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Json::from(*f as i64),
            Value::F64(f) => Json::from(*f),
            Value::F32(f) => Json::from(f64::from(*f)),
            // Terraform sends numbers it cannot hold in 64 bits as strings.
            Value::String(s) => serde_json::from_str(s.as_str()?).ok()?,
            _ => return None,
        },
        Ty::List => Json::Array(elements(v).iter().filter_map(|i| i.as_str().map(Json::from)).collect()),
        Ty::NumberList => {
            Json::Array(elements(v).iter().filter_map(|i| scalar_to_json(Ty::Number, i)).collect())
        }
        Ty::Map => match v {
            Value::Map(pairs) => Json::Object(
                pairs
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), Json::from(v.as_str()?))))
                    .collect(),
            ),
            _ => return None,
        },
    })
}

/// The Terraform value of the API's JSON object `json` under `block`. An object the API
/// always returns is left out when `reference` (the prior or planned state) does not have
/// it: it was not configured, so its server defaults are not drift.
pub fn from_json(block: &Block, json: &serde_json::Map<String, Json>, reference: Option<&Value>) -> Value {
    let mut pairs = Vec::new();
    for attr in &block.attrs {
        pairs.push((attr.name.clone(), scalar_from_json(attr.ty, json.get(&attr.json))));
    }
    for nested in &block.blocks {
        let items: Vec<&serde_json::Map<String, Json>> = match json.get(&nested.json) {
            Some(Json::Object(o)) => vec![o],
            Some(Json::Array(a)) => a.iter().filter_map(Json::as_object).collect(),
            _ => Vec::new(),
        };
        let referenced = reference.map(|r| elements(get(r, &nested.name)));
        let unconfigured = nested.always_present && referenced.is_some_and(<[Value]>::is_empty);
        let values = if unconfigured {
            Vec::new()
        } else {
            items
                .iter()
                .enumerate()
                .map(|(i, item)| from_json(&nested.block, item, referenced.and_then(|r| r.get(i))))
                .collect()
        };
        pairs.push((nested.name.clone(), Value::Array(values)));
    }
    object(pairs)
}

fn scalar_from_json(ty: Ty, j: Option<&Json>) -> Value {
    match (ty, j) {
        (_, None | Some(Json::Null)) => Value::Nil,
        (Ty::String, Some(Json::String(s))) => Value::from(s.as_str()),
        (Ty::String, Some(other)) => Value::from(other.to_string()),
        (Ty::Bool, Some(Json::Bool(b))) => Value::from(*b),
        (Ty::Number, Some(Json::Number(n))) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::Nil,
        },
        (Ty::List, Some(Json::Array(a))) if !a.is_empty() => Value::Array(
            a.iter()
                .map(|i| Value::from(i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string())))
                .collect(),
        ),
        (Ty::NumberList, Some(Json::Array(a))) if !a.is_empty() => {
            Value::Array(a.iter().map(|i| scalar_from_json(Ty::Number, Some(i))).collect())
        }
        (Ty::Map, Some(Json::Object(o))) if !o.is_empty() => Value::Map(
            o.iter()
                .map(|(k, v)| {
                    (
                        Value::from(k.as_str()),
                        Value::from(v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())),
                    )
                })
                .collect(),
        ),
        _ => Value::Nil,
    }
}

/// The planned value of `block`: the configuration, with every computed attribute the
/// configuration leaves null taken from the prior state (unknown when there is none).
pub fn plan(block: &Block, prior: Option<&Value>, config: &Value) -> Value {
    let mut pairs = Vec::new();
    for attr in &block.attrs {
        let configured = get(config, &attr.name);
        let value = if attr.computed && configured.is_nil() {
            match prior {
                Some(p) if !p.is_nil() => get(p, &attr.name).clone(),
                _ => unknown(),
            }
        } else {
            configured.clone()
        };
        pairs.push((attr.name.clone(), value));
    }
    for nested in &block.blocks {
        let prior_items = prior.map(|p| elements(get(p, &nested.name))).unwrap_or(&[]);
        let items = elements(get(config, &nested.name))
            .iter()
            .enumerate()
            .map(|(i, c)| plan(&nested.block, prior_items.get(i), c))
            .collect();
        pairs.push((nested.name.clone(), Value::Array(items)));
    }
    object(pairs)
}

/// The bounds the API document states, checked on the known values of `v`.
pub fn validate(block: &Block, v: &Value, path: &mut Vec<Step>, problems: &mut Vec<Problem>) {
    for attr in &block.attrs {
        let value = get(v, &attr.name);
        if value.is_nil() || is_unknown(value) {
            continue;
        }
        path.push(Step::Attr(attr.name.clone()));
        let mut check = |value: &Value, path: &[Step]| {
            let problem = |message: String| Problem { path: path.to_vec(), message };
            if let Some(n) = number(value) {
                if attr.minimum.is_some_and(|m| n < m) {
                    problems.push(problem(format!("must be at least {}", attr.minimum.unwrap_or_default())));
                }
                if attr.maximum.is_some_and(|m| n > m) {
                    problems.push(problem(format!("must be at most {}", attr.maximum.unwrap_or_default())));
                }
            }
            if let Some(s) = value.as_str() {
                if !attr.allowed.is_empty() && !attr.allowed.iter().any(|a| a == s) {
                    problems.push(problem(format!("must be one of {}", attr.allowed.join(", "))));
                }
                let chars = s.chars().count() as u64;
                if attr.min_length.is_some_and(|m| chars < m) {
                    problems.push(problem(format!(
                        "must have at least {} characters",
                        attr.min_length.unwrap_or_default()
                    )));
                }
                if attr.max_length.is_some_and(|m| chars > m) {
                    problems.push(problem(format!(
                        "must have at most {} characters",
                        attr.max_length.unwrap_or_default()
                    )));
                }
            }
        };
        match attr.ty {
            Ty::List | Ty::NumberList => {
                for (i, item) in elements(value).iter().enumerate() {
                    if !item.is_nil() && !is_unknown(item) {
                        let mut at = path.clone();
                        at.push(Step::Index(i as i64));
                        check(item, &at);
                    }
                }
            }
            Ty::Map => {}
            _ => check(value, path),
        }
        path.pop();
    }
    for nested in &block.blocks {
        for (i, item) in elements(get(v, &nested.name)).iter().enumerate() {
            path.push(Step::Attr(nested.name.clone()));
            path.push(Step::Index(i as i64));
            validate(&nested.block, item, path, problems);
            path.truncate(path.len() - 2);
        }
    }
}

/// The Terraform path of an API field path such as `rules[1].backendRefs[0].weight`
/// (relative to `block`); `None` when the path leaves the schema.
pub fn api_path(block: &Block, field: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut current = block;
    let mut segments = field.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<i64>().ok()),
            None => (segment, None),
        };
        if let Some(attr) = current.attrs.iter().find(|a| a.json == name) {
            steps.push(Step::Attr(attr.name.clone()));
            if let Some(i) = index {
                steps.push(Step::Index(i));
            }
            return Some(steps);
        }
        let nested = current.blocks.iter().find(|b| b.json == name)?;
        steps.push(Step::Attr(nested.name.clone()));
        steps.push(Step::Index(if nested.single { 0 } else { index? }));
        current = &nested.block;
        if segments.peek().is_none() {
            return Some(steps);
        }
    }
    Some(steps)
}

/// A JSON document (Terraform's raw state) as a msgpack value.
pub fn json_to_msgpack(j: &Json) -> Value {
    match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::Nil,
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::Array(a.iter().map(json_to_msgpack).collect()),
        Json::Object(o) => {
            Value::Map(o.iter().map(|(k, v)| (Value::from(k.as_str()), json_to_msgpack(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Components;
    use serde_json::json;

    fn route() -> Block {
        Components::load().block("HttpRouteSpec")
    }

    #[test]
    fn a_route_survives_the_round_trip_through_terraform_values() {
        let spec = json!({
            "targetRef": {"service": "reviews"},
            "rules": [
                {"matches": [{"headers": [{"name": "x-beta", "value": "true"}]}],
                 "backendRefs": [{"service": "reviews", "tags": {"version": "v2"}, "weight": 1}]},
                {"backendRefs": [{"service": "reviews", "tags": {"version": "v1"}, "weight": 75}],
                 "retry": {"attempts": 2, "retryOn": ["5xx"]}}
            ]
        });
        let v = from_json(&route(), spec.as_object().unwrap(), None);
        let back = Json::Object(to_json(&route(), &decode(&encode(&v)).unwrap()));
        assert_eq!(back, spec);
    }

    #[test]
    fn an_unconfigured_default_object_is_not_drift_but_an_optional_one_is() {
        let mesh = Components::load().block("MeshSpec");
        let planned = plan(&mesh, None, &object(vec![("mtls".into(), Value::Array(vec![]))]));
        let server = json!({"mtls": {"mode": "PERMISSIVE"}, "defaultAccess": "allow"});
        let state = from_json(&mesh, server.as_object().unwrap(), Some(&planned));
        assert!(elements(get(&state, "mtls")).is_empty());
        assert_eq!(get_str(&state, "default_access"), Some("allow"));
        let imported = from_json(&mesh, server.as_object().unwrap(), None);
        assert_eq!(elements(get(&imported, "mtls")).len(), 1);
    }

    #[test]
    fn api_field_paths_name_terraform_attributes() {
        let path = api_path(&route(), "rules[1].backendRefs[0].weight").unwrap();
        let expected = [
            Step::Attr("rules".into()),
            Step::Index(1),
            Step::Attr("backend_refs".into()),
            Step::Index(0),
            Step::Attr("weight".into()),
        ];
        assert_eq!(path, expected);
        let target = api_path(&route(), "targetRef.service").unwrap();
        assert_eq!(target, [Step::Attr("target_ref".into()), Step::Index(0), Step::Attr("service".into())]);
    }

    #[test]
    fn validation_reports_the_documents_bounds_at_their_paths() {
        let spec = json!({"targetRef": {"service": "r"}, "rules": [{"backendRefs": [{"service": "r", "weight": -1}],
            "retry": {"attempts": 1, "retryOn": ["sometimes"]}}]});
        let v = from_json(&route(), spec.as_object().unwrap(), None);
        let mut problems = Vec::new();
        validate(&route(), &v, &mut Vec::new(), &mut problems);
        let paths: Vec<String> = problems.iter().map(|p| format!("{:?}: {}", p.path, p.message)).collect();
        assert_eq!(problems.len(), 2, "{paths:?}");
        assert!(paths[0].contains("weight") && paths[0].contains("at least 0"), "{paths:?}");
        assert!(paths[1].contains("retry_on") && paths[1].contains("one of"), "{paths:?}");
    }
}
