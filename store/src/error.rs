/// What went wrong in the store, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist, or belongs to another tenant (indistinguishable by design).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique or foreign-key constraint refused the write; the name says which.
    #[error("conflicts with existing data (constraint {constraint})")]
    Conflict { constraint: String },
    /// An `If-Match`-style precondition did not hold.
    #[error("the stored version is not the expected one")]
    Stale,
    /// A create-only write found the row already there.
    #[error("it already exists")]
    Exists,
    /// The change would leave the organization without an owner.
    #[error("the organization must keep at least one owner")]
    LastOwner,
    /// Migrations were refused or failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database cannot be reached or is restarting: worth retrying, not a fault.
    #[error("the database is unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The database rolled the transaction back because it collided with another one
    /// (deadlock, serialization failure): nothing of it was written, and running the whole
    /// transaction again is expected to succeed.
    #[error("the transaction collided with another one and was rolled back: {0}")]
    Contended(sqlx::Error),
    /// Anything else from the database.
    #[error("database error: {0}")]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && (db.is_unique_violation() || db.is_foreign_key_violation())
        {
            return StoreError::Conflict { constraint: db.constraint().unwrap_or("unknown").to_owned() };
        }
        if is_outage(&e) {
            StoreError::Unavailable(e)
        } else if is_collision(&e) {
            StoreError::Contended(e)
        } else {
            StoreError::Db(e)
        }
    }
}

impl StoreError {
    /// Whether the database is unreachable or going away (then retrying later may work).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Whether the same work may succeed when run again: the database was unavailable, or
    /// the transaction collided with another one.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Contended(_))
    }
}

/// Whether an error means the database is unreachable or going away (connection lost or
/// refused, no connection within the pool's timeout, server shutting down or starting up,
/// too many connections), as opposed to a statement that failed.
fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            true
        }
        sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect
            // now; 53300: too many connections.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Whether the database rolled a transaction back for colliding with another one: 40001
/// serialization failure, 40P01 deadlock detected (PostgreSQL's advice is to run it again).
fn is_collision(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|code| matches!(&*code, "40001" | "40P01")))
}
