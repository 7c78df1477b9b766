//! The API's one error type: `application/problem+json` (RFC 9457) for every failure.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use trellis_control::AppError;
use trellis_model::config::FieldError;
use trellis_store::StoreError;

/// A failure as the client sees it. 5xx bodies say only "internal error"; the cause is
/// logged once, where the error is made.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable identifier of the kind of problem, e.g. `not-found`.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// For validation problems: every field that is wrong.
    pub errors: Vec<FieldError>,
}

/// The kind of a request that wrote nothing because it collided with another one (the edge
/// runs it again; a client sees it only when every run collided).
const CONTENDED: &str = "contended";

/// The body of every error response (RFC 9457).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    /// For validation problems: every field that is wrong.
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

macro_rules! constructors {
    ($($fn:ident => $status:ident, $kind:literal, $title:literal;)*) => {
        impl ApiError {
            $(
                #[doc = concat!("A `", $kind, "` problem.")]
                pub fn $fn(detail: impl Into<String>) -> Self {
                    ApiError {
                        status: StatusCode::$status,
                        kind: $kind,
                        title: $title,
                        detail: detail.into(),
                        errors: Vec::new(),
                    }
                }
            )*
        }
    };
}

constructors! {
    bad_request => BAD_REQUEST, "bad-request", "Bad request";
    unauthorized => UNAUTHORIZED, "unauthorized", "Authentication required";
    forbidden => FORBIDDEN, "forbidden", "Not allowed";
    not_found => NOT_FOUND, "not-found", "Not found";
    conflict => CONFLICT, "conflict", "Conflict";
    request_timeout => REQUEST_TIMEOUT, "request-timeout", "Request timeout";
    precondition_failed => PRECONDITION_FAILED, "precondition-failed", "Precondition failed";
    too_large => PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large";
    unsupported_media_type => UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type";
    unprocessable => UNPROCESSABLE_ENTITY, "unprocessable", "Unprocessable request";
    unavailable => SERVICE_UNAVAILABLE, "unavailable", "Service unavailable";
    bad_gateway => BAD_GATEWAY, "bad-gateway", "Upstream failure";
}

impl ApiError {
    /// The request is well-formed but names fields with bad values.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        AppError::invalid(errors).into()
    }

    /// One invalid field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError { field: field.to_owned(), message: message.into() }])
    }

    /// A failure of ours: logged here with its cause, reported without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        AppError::internal(cause).into()
    }
}

impl From<AppError> for ApiError {
    /// The one mapping of the application core's failures to HTTP.
    fn from(e: AppError) -> Self {
        use trellis_control::Problem as P;
        let (status, kind, title) = match e.problem {
            P::BadRequest => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            P::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required"),
            P::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            P::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            P::Conflict => (StatusCode::CONFLICT, "conflict", "Conflict"),
            P::PreconditionFailed => {
                (StatusCode::PRECONDITION_FAILED, "precondition-failed", "Precondition failed")
            }
            P::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", "Unprocessable request"),
            P::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "validation", "Validation failed"),
            P::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable"),
            P::Contended => (StatusCode::SERVICE_UNAVAILABLE, CONTENDED, "Busy"),
            P::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        };
        ApiError { status, kind, title, detail: e.detail, errors: e.errors }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        AppError::from(e).into()
    }
}

impl ApiError {
    /// Adds a field error to any problem.
    pub fn with_field(mut self, field: &str, message: &str) -> Self {
        self.errors.push(FieldError { field: field.to_owned(), message: message.to_owned() });
        self
    }
}

impl ApiError {
    /// The problem for a bare status made outside the handlers (an extractor's rejection, the
    /// body limit, a timeout), with its text as the detail.
    fn from_status(status: StatusCode, text: &str) -> Self {
        let kind = match status {
            StatusCode::BAD_REQUEST => "bad-request",
            StatusCode::NOT_FOUND => "not-found",
            StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
            StatusCode::REQUEST_TIMEOUT => "request-timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_server_error() => return ApiError::internal(&format!("{s}: {text}")),
            _ => "http-error",
        };
        let detail = match (text.is_empty(), status) {
            (false, _) => text.to_owned(),
            (true, StatusCode::REQUEST_TIMEOUT) => "the request body did not arrive in time".to_owned(),
            (true, StatusCode::SERVICE_UNAVAILABLE) => {
                "the request did not complete in time; retry".to_owned()
            }
            (true, s) => s.canonical_reason().unwrap_or("error").to_owned(),
        };
        ApiError {
            status,
            kind,
            title: status.canonical_reason().unwrap_or("Error"),
            detail,
            errors: Vec::new(),
        }
    }
}

/// When a client should retry a 503: about the time a database restart or failover takes.
pub const RETRY_AFTER_SECS: u32 = 2;

/// Longest text of a foreign error response that becomes a problem's detail.
const MAX_FOREIGN_DETAIL: usize = 4096;

/// Makes every error response problem+json, including those produced outside the handlers:
/// axum's extractor rejections (a path segment that is not UTF-8, say), the router's
/// fallbacks, body limits, timeouts and caught panics. Headers such as `Allow` are kept.
pub(crate) async fn problem_json(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let content_type = res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    // The console's error pages are HTML made for a person; everything else becomes a problem.
    let answered = content_type == "application/problem+json" || content_type.starts_with("text/html");
    if !(status.is_client_error() || status.is_server_error()) || answered {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MAX_FOREIGN_DETAIL)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let mut problem = ApiError::from_status(status, &text).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    problem
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("https://trellis.dev/problems/{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
        };
        let mut res = (self.status, Json(body)).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self.kind == CONTENDED {
            res.extensions_mut().insert(trellis_control::RunAgain);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"trellis\""));
        }
        res
    }
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        kind: "method-not-allowed",
        title: "Method not allowed",
        detail: "this path does not support the method".into(),
        errors: Vec::new(),
    }
}

// ----- the error responses of the OpenAPI document -----

/// Every error response an operation may document: a reusable response of the document
/// (`#/components/responses/<name>`), always a `Problem`.
const PROBLEM_RESPONSES: &[(u16, &str, &str)] = &[
    (400, "BadRequest", "Malformed request (bad JSON, query parameters or headers)"),
    (401, "Unauthorized", "No valid API token or session"),
    (403, "Forbidden", "The caller's role does not allow this, or a session write lacks its x-csrf-token"),
    (404, "NotFound", "Not found (including another organization's objects)"),
    (409, "Conflict", "Conflicts with existing data"),
    (412, "PreconditionFailed", "If-Match does not name the current version"),
    (413, "PayloadTooLarge", "Body too large"),
    (415, "UnsupportedMediaType", "Body is not application/json"),
    (422, "Unprocessable", "Validation failed; `errors` names each field"),
    (502, "BadGateway", "The identity provider is unreachable"),
];

fn problem_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, ResponseBuilder};
    let problem = utoipa::openapi::Ref::from_schema_name("Problem");
    ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", ContentBuilder::new().schema(Some(problem)).build())
        .build()
        .into()
}

/// The reusable error responses, for the document's components.
pub(crate) fn problem_responses() -> Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::Response>)> {
    PROBLEM_RESPONSES
        .iter()
        .map(|(_, name, description)| ((*name).to_owned(), problem_response(description)))
        .collect()
}

/// References to the reusable error responses of these status codes.
fn problem_set(
    codes: &[u16],
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
    codes
        .iter()
        .map(|code| {
            let (_, name, _) =
                PROBLEM_RESPONSES.iter().find(|(c, ..)| c == code).expect("a documented status");
            (code.to_string(), utoipa::openapi::Ref::from_response_name(*name).into())
        })
        .collect()
}

macro_rules! problem_sets {
    ($($(#[$doc:meta])* $name:ident = [$($code:literal),*];)*) => {
        $(
            $(#[$doc])*
            pub(crate) struct $name;
            impl utoipa::IntoResponses for $name {
                fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
                    problem_set(&[$($code),*])
                }
            }
        )*
    };
}

problem_sets! {
    /// What a read can fail with: `responses(…, ReadErrors)` in an operation.
    ReadErrors = [400, 401, 403, 404];
    /// A read that can refuse an answer too large to give (the topology without grouping).
    BoundedReadErrors = [400, 401, 403, 404, 422];
    /// What a write with a JSON body can fail with.
    WriteErrors = [400, 401, 403, 404, 409, 412, 413, 415, 422];
    /// A step with no body that can conflict with the current state (CA rotation, removals).
    StepErrors = [400, 401, 403, 404, 409];
    /// A conditional delete (`If-Match`).
    DeleteErrors = [400, 401, 403, 404, 412];
    /// A conditional delete that references can refuse.
    GuardedDeleteErrors = [400, 401, 403, 404, 409, 412];
}

macro_rules! problem_refs {
    ($($name:ident),*) => {
        $(
            #[doc = concat!("The reusable `", stringify!($name), "` error response: `(status = …, response = ", stringify!($name), ")`.")]
            pub(crate) struct $name;
            impl<'r> utoipa::ToResponse<'r> for $name {
                fn response() -> (&'r str, utoipa::openapi::RefOr<utoipa::openapi::Response>) {
                    let (_, name, description) =
                        PROBLEM_RESPONSES.iter().find(|(_, n, _)| *n == stringify!($name)).expect("listed");
                    (name, problem_response(description))
                }
            }
        )*
    };
}

problem_refs!(
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unprocessable,
    BadGateway
);
