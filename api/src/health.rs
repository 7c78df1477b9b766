//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use trellis_store::StoreError;

use crate::error::ApiError;
use crate::state::AppState;

/// Liveness: the process answers. Never touches the database, so a database outage does
/// not get healthy replicas restarted.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers as the server role and its schema is the one this
/// binary was built for.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let schema = state.store.schema_status().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: database check failed");
        match e {
            // Says why (refused, timed out, shutting down), never where or as whom.
            StoreError::Unavailable(cause) => {
                ApiError::unavailable(format!("the database does not answer: {cause}"))
            }
            _ => ApiError::unavailable("the database check failed; the server's log says why"),
        }
    })?;
    if !schema.is_current() {
        return Err(ApiError::unavailable(format!(
            "the database schema is at migration {:?}, this binary needs {}; run `trellis migrate`",
            schema.applied, schema.expected
        )));
    }
    Ok(Json(json!({
        "status": "ready",
        "database": "ok",
        "schema": { "applied": schema.applied, "expected": schema.expected },
    })))
}
