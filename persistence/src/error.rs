//! The one error type of the store.

/// Why a store call failed. Messages name ids and versions, never secret material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed the statement.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The schema could not be brought to the version this build expects.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The write raced another, or repeats one that already happened.
    #[error("conflict: {0}")]
    Conflict(String),
    /// This node no longer holds the tenant's lease under the token the write was made for:
    /// another node owns the tenant now, and this node must stop its work for it.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The row the call needs does not exist (in the caller's tenant).
    #[error("not found: {0}")]
    NotFound(String),
    /// The configured master key is not the one that wrapped the stored data keys.
    #[error(
        "master key `{found}` is not the master key `{expected}` that sealed the stored secrets; \
         start with the original master key"
    )]
    WrongMasterKey {
        /// The key id the database records.
        expected: String,
        /// The key id that was offered.
        found: String,
    },
    /// Key material was malformed, or a ciphertext could not be opened.
    #[error("vault: {0}")]
    Crypto(String),
    /// A stored row does not decode into what this build wrote there.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The caller passed a value the store refuses to keep (empty, oversized, malformed).
    #[error("invalid input: {0}")]
    Invalid(String),
}
