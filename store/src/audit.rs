use serde_json::Value;

use crate::{StoreError, TenantTx};

/// One state-changing call, as the audit log keeps it.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub details: Value,
}

impl TenantTx {
    /// Records an audit event in the same transaction as the change it describes.
    pub async fn record_audit(&mut self, event: &AuditEvent) -> Result<i64, StoreError> {
        let org = self.org().as_uuid();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit_events (org_id, actor, action, target, request_id, details) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(org)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.target)
        .bind(&event.request_id)
        .bind(&event.details)
        .fetch_one(self.conn())
        .await?;
        Ok(id)
    }

    /// Number of audit events of this tenant.
    pub async fn count_audit_events(&mut self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(self.conn()).await?)
    }
}
