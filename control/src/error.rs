//! The application core's one error type: what went wrong, in words a user can act on, with
//! no transport in it. Each front end maps [`Problem`] to its own form (problem+json, a page).

use trellis_model::config::FieldError;
use trellis_store::StoreError;

/// The kind of failure, as a front end needs to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Input that is malformed as a whole (a query parameter, a header).
    BadRequest,
    /// No credential, or one that is unknown, revoked or expired.
    Unauthenticated,
    /// The caller's role does not allow it.
    Forbidden,
    /// It does not exist, or belongs to another tenant (indistinguishable by design).
    NotFound,
    /// It clashes with what is stored.
    Conflict,
    /// A write's precondition (version, create-only) does not hold.
    PreconditionFailed,
    /// Well-formed, but cannot be done (a reused idempotency key).
    Unprocessable,
    /// Named fields have bad values (see `errors`).
    Invalid,
    /// The database (or another dependency) is unavailable for now.
    Unavailable,
    /// The use case's transaction collided with another one and was rolled back, writing
    /// nothing: the whole request can run again ([`RunAgain`]).
    Contended,
    /// A failure of ours; the cause was logged where it was made.
    Internal,
}

/// A failed use case.
#[derive(Debug, Clone)]
pub struct AppError {
    pub problem: Problem,
    /// What happened, for a person.
    pub detail: String,
    /// For `Invalid` (and a few conflicts): every field that is wrong.
    pub errors: Vec<FieldError>,
}

macro_rules! constructors {
    ($($fn:ident => $problem:ident;)*) => {
        impl AppError {
            $(
                #[doc = concat!("A `", stringify!($problem), "` failure.")]
                pub fn $fn(detail: impl Into<String>) -> Self {
                    AppError { problem: Problem::$problem, detail: detail.into(), errors: Vec::new() }
                }
            )*
        }
    };
}

constructors! {
    bad_request => BadRequest;
    unauthorized => Unauthenticated;
    forbidden => Forbidden;
    not_found => NotFound;
    conflict => Conflict;
    precondition_failed => PreconditionFailed;
    unprocessable => Unprocessable;
    unavailable => Unavailable;
}

impl AppError {
    /// Fields with bad values.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid; see errors", many.len()),
        };
        AppError { problem: Problem::Invalid, detail, errors }
    }

    /// One invalid field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError { field: field.to_owned(), message: message.into() }])
    }

    /// A failure of ours: logged here with its cause, reported without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        AppError {
            problem: Problem::Internal,
            detail: "internal error; the request id in x-request-id identifies it in the server's logs"
                .into(),
            errors: Vec::new(),
        }
    }

    /// Adds a field error to any failure.
    pub fn with_field(mut self, field: &str, message: &str) -> Self {
        self.errors.push(FieldError { field: field.to_owned(), message: message.to_owned() });
        self
    }

    /// The answer to a create-only write of something that exists.
    pub fn already_exists() -> Self {
        AppError::precondition_failed("If-None-Match: * was sent, and the resource already exists")
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AppError::not_found(format!("{what} not found")),
            StoreError::Stale => AppError::precondition_failed(
                "the resource changed since the version in If-Match; read it again and retry",
            ),
            StoreError::Exists => AppError::already_exists(),
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                AppError::unavailable("the database is unavailable; retry shortly")
            }
            StoreError::Conflict { constraint } => conflict_for(&constraint),
            StoreError::Contended(cause) => {
                tracing::info!(error = %cause, "transaction rolled back by a collision");
                AppError {
                    problem: Problem::Contended,
                    detail: "the server was busy with a colliding change; retry".into(),
                    errors: Vec::new(),
                }
            }
            other => AppError::internal(&other),
        }
    }
}

/// Marks a response whose request wrote nothing because its transaction collided with
/// another one: the front end's edge runs such a request again, the same way every time.
#[derive(Debug, Clone, Copy)]
pub struct RunAgain;

impl From<trellis_pki::PkiError> for AppError {
    fn from(e: trellis_pki::PkiError) -> Self {
        use trellis_pki::PkiError;
        match e {
            PkiError::NotFound(what) => AppError::not_found(format!("{what} not found")),
            PkiError::Unauthenticated(why) => {
                tracing::info!(reason = %why, "credential refused");
                AppError::unauthorized(
                    "the credential was refused (unknown, revoked, expired or already used)",
                )
            }
            PkiError::Invalid { field, message } => AppError::invalid_field(field, message),
            PkiError::Conflict(m) => AppError::conflict(m),
            PkiError::Store(e) => e.into(),
            other => AppError::internal(&other),
        }
    }
}

/// Unique-constraint violations, by constraint name, in words a user can act on.
fn conflict_for(constraint: &str) -> AppError {
    match constraint {
        "meshes_trust_domain_key" | "trust_domain_directory_pkey" => {
            AppError::conflict("this trust domain is already used by another mesh")
                .with_field("spec.trustDomain", "already used by another mesh; choose another")
        }
        "meshes_name_key" => AppError::conflict("a mesh with this name already exists"),
        "resources_name_key" => AppError::conflict("a resource of this kind and name already exists"),
        "organizations_slug_key" => AppError::conflict("this organization slug is taken")
            .with_field("slug", "already taken; choose another"),
        "memberships_pkey" => AppError::conflict("already a member of this organization"),
        other => AppError::conflict(format!("conflicts with existing data ({other})")),
    }
}
