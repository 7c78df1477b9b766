use sqlx::{PgConnection, Postgres, Transaction};
use trellis_model::OrgId;

use crate::{Store, StoreError};

/// A transaction bound to one tenant: `app.org_id` is set for its whole life, so every
/// query through it sees and writes only that organization's rows. Dropping it without
/// [`TenantTx::commit`] rolls back.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    org: OrgId,
}

impl Store {
    /// Begins a transaction for `org`: `BEGIN` and the tenant setting in one round trip (the
    /// id is a UUID we format, never caller text).
    pub async fn tenant(&self, org: OrgId) -> Result<TenantTx, StoreError> {
        let begin = format!("BEGIN; SELECT set_config('app.org_id', '{}', true)", org.as_uuid().hyphenated());
        let tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?;
        Ok(TenantTx { tx, org })
    }
}

impl TenantTx {
    /// The tenant this transaction is bound to.
    pub fn org(&self) -> OrgId {
        self.org
    }

    /// Makes every write of this transaction durable (and sends its change notifications).
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Moves this transaction to another tenant: what follows sees only `org`'s rows. For
    /// batch writers, which commit the work of several tenants at once.
    pub async fn rebind(&mut self, org: OrgId) -> Result<(), StoreError> {
        sqlx::query("SELECT set_config('app.org_id', $1, true)")
            .bind(org.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.org = org;
        Ok(())
    }

    /// Marks a point that [`TenantTx::rollback_to`] returns to, undoing only what follows
    /// it: for batch writers, so that one tenant's failed write does not fail the others'.
    pub async fn savepoint(&mut self) -> Result<(), StoreError> {
        sqlx::query("SAVEPOINT batch_part").execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Undoes everything since the last [`TenantTx::savepoint`]; the transaction goes on
    /// (bound to the same tenant).
    pub async fn rollback_to(&mut self) -> Result<(), StoreError> {
        sqlx::query("ROLLBACK TO SAVEPOINT batch_part").execute(&mut *self.tx).await?;
        Ok(())
    }

    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
