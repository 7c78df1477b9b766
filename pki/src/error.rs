use trellis_store::StoreError;

/// What went wrong, in terms the REST and gRPC edges map to their own errors.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The thing does not exist (or belongs to another tenant).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The credential was refused: unknown, revoked, expired or used join token, or a client
    /// certificate that does not verify. The reason is for the log, not the caller.
    #[error("credential refused: {0}")]
    Unauthenticated(String),
    /// The caller's input is wrong: `field` names it.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// The request does not fit the current state (a rotation step out of order, a guardrail).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault of ours (a key that will not unseal, a stored certificate that will not parse).
    #[error("internal: {0}")]
    Internal(String),
}

impl PkiError {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        PkiError::Internal(e.to_string())
    }
}
