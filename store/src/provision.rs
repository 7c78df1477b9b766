//! Creating the database and its roles, applying migrations, and checking the schema.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::StoreError;

/// The role that owns the schema and runs migrations.
pub const OWNER_ROLE: &str = "trellis_owner";
/// The role the server connects as: owns nothing, not superuser, no BYPASSRLS.
pub const APP_ROLE: &str = "trellis_app";

static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The migrations compiled into this binary.
pub fn migrator() -> &'static Migrator {
    &MIGRATOR
}

/// Applies every pending migration, connected as the schema owner.
pub async fn migrate(owner: &PgConnectOptions) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect_with(owner).await?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Which migrations the database has, against which this binary expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Highest migration version applied successfully, if any.
    pub applied: Option<i64>,
    /// Highest migration version this binary carries.
    pub expected: i64,
}

impl SchemaStatus {
    /// The schema is exactly what this binary was built for.
    pub fn is_current(&self) -> bool {
        self.applied == Some(self.expected)
    }
}

pub(crate) async fn schema_status(pool: &PgPool) -> Result<SchemaStatus, StoreError> {
    let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
    Ok(SchemaStatus { applied, expected })
}

/// The two roles the server needs, as connection options derived from one base.
#[derive(Debug, Clone)]
pub struct DbRoles {
    pub owner: PgConnectOptions,
    pub app: PgConnectOptions,
}

/// Makes sure the roles and the database `database` exist, connected as a role that may
/// create them (a superuser, on the embedded default). Safe to run concurrently.
pub async fn ensure_database(admin: &PgConnectOptions, database: &str) -> Result<(), StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(admin.clone())
        .await?;
    let mut conn = pool.acquire().await?;
    // Role and database creation are cluster-wide and race with themselves; serialize
    // every Trellis provisioner on this cluster behind one advisory lock.
    sqlx::query("SELECT pg_advisory_lock(7533110001)").execute(&mut *conn).await?;
    let result = async {
        for (role, attrs) in [
            (OWNER_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"),
            (APP_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"),
        ] {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                    .bind(role)
                    .fetch_one(&mut *conn)
                    .await?;
            let verb = if exists { "ALTER" } else { "CREATE" };
            sqlx::query(sqlx::AssertSqlSafe(format!("{verb} ROLE {role} {attrs}")))
                .execute(&mut *conn)
                .await?;
        }
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {} OWNER {OWNER_ROLE}",
                quote_ident(database)
            )))
            .execute(&mut *conn)
            .await?;
        }
        Ok::<_, StoreError>(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(7533110001)").execute(&mut *conn).await;
    drop(conn);
    pool.close().await;
    result
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl DbRoles {
    /// The owner connects with `owner`; the server role is the same server and database
    /// with the user swapped for [`APP_ROLE`] and, when given, its password.
    pub fn from_owner(owner: PgConnectOptions, app_password: Option<&str>) -> Self {
        let mut app = owner.clone().username(APP_ROLE);
        if let Some(p) = app_password {
            app = app.password(p);
        }
        DbRoles { owner, app }
    }
}
