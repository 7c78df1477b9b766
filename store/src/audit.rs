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

/// A recorded event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub details: Value,
}

/// Which events to list: newest first, before `before` (a cursor), optionally filtered.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub before: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target_prefix: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: i64,
}

impl TenantTx {
    /// Audit events of this tenant, newest first.
    pub async fn list_audit_events(&mut self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, target, request_id, details FROM audit_events \
             WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR actor = $2) \
               AND ($3::text IS NULL OR action = $3) \
               AND ($4::text IS NULL OR starts_with(target, $4)) \
               AND ($5::timestamptz IS NULL OR at >= $5) \
             ORDER BY id DESC LIMIT $6",
        )
        .bind(f.before)
        .bind(&f.actor)
        .bind(&f.action)
        .bind(&f.target_prefix)
        .bind(f.since)
        .bind(f.limit)
        .fetch_all(self.conn())
        .await?)
    }
}
