//! Authentication state that belongs to no tenant: logins in progress, sessions and the
//! one-time local login links. Every secret is looked up by its SHA-256; none is stored.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError};

/// A login between `/auth/login` and `/auth/callback`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
}

/// A live session's record.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Records a login in progress (and forgets expired ones).
    pub async fn begin_login(
        &self,
        id_sha256: &[u8; 32],
        login: &PendingLogin,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM oidc_logins WHERE expires_at < now()").execute(&self.pool).await?;
        sqlx::query(
            "INSERT INTO oidc_logins (id_sha256, state, nonce, pkce_verifier, return_to, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id_sha256[..])
        .bind(&login.state)
        .bind(&login.nonce)
        .bind(&login.pkce_verifier)
        .bind(&login.return_to)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Consumes a login in progress: the first call gets it (if unexpired), every later
    /// call gets nothing, whatever the first one's outcome.
    pub async fn take_login(&self, id_sha256: &[u8; 32]) -> Result<Option<PendingLogin>, StoreError> {
        let row: Option<(PendingLogin, DateTime<Utc>)> =
            sqlx::query_as::<_, (String, String, String, String, DateTime<Utc>)>(
                "DELETE FROM oidc_logins WHERE id_sha256 = $1 \
             RETURNING state, nonce, pkce_verifier, return_to, expires_at",
            )
            .bind(&id_sha256[..])
            .fetch_optional(&self.pool)
            .await?
            .map(|(state, nonce, pkce_verifier, return_to, expires_at)| {
                (PendingLogin { state, nonce, pkce_verifier, return_to }, expires_at)
            });
        Ok(row.filter(|(_, expires_at)| *expires_at > Utc::now()).map(|(login, _)| login))
    }

    /// Creates a session for `user` that ends at `expires_at` at the latest.
    pub async fn create_session(
        &self,
        token_sha256: &[u8; 32],
        user: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<Session, StoreError> {
        // Expired sessions are useless; forgetting them here keeps the table small.
        sqlx::query("DELETE FROM sessions WHERE expires_at < now()").execute(&self.pool).await?;
        Ok(sqlx::query_as(
            "INSERT INTO sessions (token_sha256, user_id, expires_at) VALUES ($1, $2, $3) \
             RETURNING id, user_id, created_at, last_seen_at, expires_at",
        )
        .bind(&token_sha256[..])
        .bind(user)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The live session with this hash: neither past its absolute expiry nor idle for
    /// longer than `idle`. Marks it seen (at most every `idle`/10, at most every minute).
    pub async fn session(
        &self,
        token_sha256: &[u8; 32],
        idle: Duration,
    ) -> Result<Option<Session>, StoreError> {
        let idle_secs = idle.as_secs_f64();
        Ok(sqlx::query_as(
            "UPDATE sessions SET last_seen_at = CASE \
                 WHEN last_seen_at < now() - least(make_interval(secs => $2 / 10), interval '1 minute') \
                 THEN now() ELSE last_seen_at END \
             WHERE token_sha256 = $1 AND expires_at > now() \
               AND last_seen_at > now() - make_interval(secs => $2) \
             RETURNING id, user_id, created_at, last_seen_at, expires_at",
        )
        .bind(&token_sha256[..])
        .bind(idle_secs)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ends a session; true when there was one.
    pub async fn delete_session(&self, token_sha256: &[u8; 32]) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE token_sha256 = $1")
            .bind(&token_sha256[..])
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a one-time local login link.
    pub async fn create_local_login(
        &self,
        token_sha256: &[u8; 32],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM local_logins WHERE expires_at < now()").execute(&self.pool).await?;
        sqlx::query("INSERT INTO local_logins (token_sha256, expires_at) VALUES ($1, $2)")
            .bind(&token_sha256[..])
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Uses a local login link: true exactly once, while it is unexpired.
    pub async fn use_local_login(&self, token_sha256: &[u8; 32]) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE local_logins SET used_at = now() \
             WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > now()",
        )
        .bind(&token_sha256[..])
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
