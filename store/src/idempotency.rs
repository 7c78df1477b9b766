//! Stored responses for POSTs that carry an `Idempotency-Key`.

use serde_json::Value;

use crate::{StoreError, TenantTx};

/// A response recorded for a key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub fingerprint: Vec<u8>,
    pub status: u16,
    pub body: Value,
}

impl TenantTx {
    /// Takes the key: returns the stored response if one exists. Locks the key for the
    /// rest of the transaction so that concurrent retries wait for the first.
    pub async fn idempotent_response(&mut self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        // Serialize retries of the same key within this tenant.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(self.org().to_string())
            .bind(key)
            .execute(self.conn())
            .await?;
        let row: Option<(Vec<u8>, i32, Value)> =
            sqlx::query_as("SELECT fingerprint, status, body FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_optional(self.conn())
                .await?;
        Ok(row.map(|(fingerprint, status, body)| StoredResponse { fingerprint, status: status as u16, body }))
    }

    /// Records the response to a keyed request, in the same transaction as its effect.
    pub async fn store_response(&mut self, key: &str, response: &StoredResponse) -> Result<(), StoreError> {
        let org = self.org().as_uuid();
        sqlx::query(
            "INSERT INTO idempotency_keys (org_id, key, fingerprint, status, body) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(org)
        .bind(key)
        .bind(&response.fingerprint)
        .bind(i32::from(response.status))
        .bind(&response.body)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
