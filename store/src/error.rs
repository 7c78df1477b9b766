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
    /// The change would leave the organization without an owner.
    #[error("the organization must keep at least one owner")]
    LastOwner,
    /// Migrations were refused or failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
        StoreError::Db(e)
    }
}
