//! The API's one error type: `application/problem+json` (RFC 9457) for every failure.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
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

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
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
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid; see errors", many.len()),
        };
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "validation",
            title: "Validation failed",
            detail,
            errors,
        }
    }

    /// One invalid field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError { field: field.to_owned(), message: message.into() }])
    }

    /// A failure of ours: logged here with its cause, reported without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            title: "Internal error",
            detail: "internal error; the request id in x-request-id identifies it in the server's logs"
                .into(),
            errors: Vec::new(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Stale => ApiError::precondition_failed(
                "the resource changed since the version in If-Match; read it again and retry",
            ),
            StoreError::Conflict { constraint } => conflict_for(&constraint),
            other => ApiError::internal(&other),
        }
    }
}

impl From<trellis_pki::PkiError> for ApiError {
    fn from(e: trellis_pki::PkiError) -> Self {
        use trellis_pki::PkiError;
        match e {
            PkiError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            PkiError::Unauthenticated(why) => {
                tracing::info!(reason = %why, "credential refused");
                ApiError::unauthorized(
                    "the credential was refused (unknown, revoked, expired or already used)",
                )
            }
            PkiError::Invalid { field, message } => ApiError::invalid_field(field, message),
            PkiError::Conflict(m) => ApiError::conflict(m),
            PkiError::Store(e) => e.into(),
            other => ApiError::internal(&other),
        }
    }
}

/// Unique-constraint violations, by constraint name, in words a user can act on.
fn conflict_for(constraint: &str) -> ApiError {
    match constraint {
        "meshes_trust_domain_key" | "trust_domain_directory_pkey" => {
            ApiError::conflict("this trust domain is already used by another mesh")
                .with_field("spec.trustDomain", "already used by another mesh; choose another")
        }
        "meshes_name_key" => ApiError::conflict("a mesh with this name already exists"),
        "resources_name_key" => ApiError::conflict("a resource of this kind and name already exists"),
        "organizations_slug_key" => ApiError::conflict("this organization slug is taken")
            .with_field("slug", "already taken; choose another"),
        "memberships_pkey" => ApiError::conflict("already a member of this organization"),
        other => ApiError::conflict(format!("conflicts with existing data ({other})")),
    }
}

impl ApiError {
    /// Adds a field error to any problem.
    pub fn with_field(mut self, field: &str, message: &str) -> Self {
        self.errors.push(FieldError { field: field.to_owned(), message: message.to_owned() });
        self
    }
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
