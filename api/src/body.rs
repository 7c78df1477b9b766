//! Request bodies and conditional headers, with every failure as a problem document.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use trellis_control::{Condition, IfMatch};
use trellis_model::config::FieldError;
use uuid::Uuid;

use crate::error::ApiError;

/// A JSON request body, bounded by the router's body limit.
pub struct JsonBody {
    pub value: Value,
    /// The raw bytes, for idempotency fingerprints.
    pub bytes: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct = content_type(req.headers());
        check_json_type(&ct)?;
        let bytes = read_bytes(req, state).await?;
        parse_json(bytes)
    }
}

/// A JSON body that may be left out: an empty body is `None`, anything else is checked as
/// [`JsonBody`] is.
pub struct OptionalJsonBody(pub Option<JsonBody>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct = content_type(req.headers());
        let bytes = read_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        check_json_type(&ct)?;
        parse_json(bytes).map(|b| OptionalJsonBody(Some(b)))
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

fn check_json_type(ct: &str) -> Result<(), ApiError> {
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(ApiError::unsupported_media_type(format!(
            "send the body as application/json (got {:?})",
            if ct.is_empty() { "no Content-Type" } else { ct }
        )));
    }
    Ok(())
}

pub(crate) async fn read_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("the request body exceeds the server's limit")
        } else if timed_out(&e) {
            ApiError::request_timeout("the request body did not arrive in time")
        } else {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        }
    })
}

/// Whether reading a body failed because it did not arrive within the router's time limit.
fn timed_out(e: &axum::extract::rejection::BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn parse_json(bytes: Bytes) -> Result<JsonBody, ApiError> {
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if let Some(field) = nul_at(&value, "") {
        return Err(ApiError::invalid_field(&field, "must not contain the NUL character (\\u0000)"));
    }
    Ok(JsonBody { value, bytes })
}

/// The path of the first string (or key) holding a NUL, which no stored text may contain.
fn nul_at(v: &Value, path: &str) -> Option<String> {
    let here = || if path.is_empty() { "(body)".to_owned() } else { path.to_owned() };
    match v {
        Value::String(s) if s.contains('\0') => Some(here()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, x)| nul_at(x, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, x)| {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            if k.contains('\0') { Some(p) } else { nul_at(x, &p) }
        }),
        _ => None,
    }
}

/// Deserializes with the failing field's path, e.g. `metadata.labels`.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(body)".to_owned() } else { path };
        ApiError::invalid(vec![FieldError { field, message: e.into_inner().to_string() }])
    })
}

/// `If-Match`; entity tags that are not ours (or weak) can never match.
pub fn if_match(headers: &HeaderMap) -> Option<IfMatch> {
    let v = headers.get(header::IF_MATCH)?.to_str().unwrap_or("");
    if v.trim() == "*" {
        return Some(IfMatch::Any);
    }
    Some(IfMatch::Versions(
        v.split(',').filter_map(|t| t.trim().strip_prefix('"')?.strip_suffix('"')?.parse().ok()).collect(),
    ))
}

/// A write's conditions: `If-Match` and `If-None-Match: *`.
pub fn condition(headers: &HeaderMap) -> Condition {
    let create_only =
        headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == "*");
    Condition { if_match: if_match(headers), create_only }
}

/// The strong entity tag of a version.
pub fn etag(version: Uuid) -> String {
    format!("\"{version}\"")
}

/// Query parameters, with a problem document when they do not parse.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request(format!("bad query parameters: {}", e.body_text())))
    }
}
