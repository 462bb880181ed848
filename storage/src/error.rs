//! The storage crate's one error type.

/// Everything that can go wrong in storage. The broker maps these to SQLSTATEs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB itself failed (I/O, corruption, options).
    #[error("storage engine: {0}")]
    Engine(#[from] rocksdb::Error),
    /// A stored value could not be decoded; the data directory is damaged or from another version.
    #[error("corrupt stored data: {what}")]
    Corrupt {
        /// What was being decoded.
        what: String,
    },
    /// No topic or table has this name.
    #[error("relation \"{name}\" does not exist")]
    ObjectNotFound {
        /// The name asked for.
        name: String,
    },
    /// A topic or table with this name already exists.
    #[error("relation \"{name}\" already exists")]
    ObjectExists {
        /// The name asked for.
        name: String,
    },
    /// An INSERT found a row with the same primary key.
    #[error("duplicate key value violates unique constraint \"{table}_pkey\"")]
    DuplicateKey {
        /// The table written to.
        table: String,
    },
    /// A partition number outside the topic's partitions.
    #[error("partition {partition} does not exist in topic \"{topic}\"")]
    NoSuchPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
    },
    /// An object cannot be dropped while another one uses it.
    #[error("cannot drop \"{name}\" because subscription \"{dependent}\" depends on it")]
    DependentObjects {
        /// The object to drop.
        name: String,
        /// One object that depends on it.
        dependent: String,
    },
    /// NULL written to a NOT NULL column.
    #[error("null value in column \"{column}\" violates not-null constraint")]
    NotNull {
        /// The column.
        column: String,
    },
    /// A value does not fit the column's type (caught before it reaches the log).
    #[error("{0}")]
    InvalidValue(String),
    /// A Raft group cannot take the write now (no leader, no quorum); retrying can work.
    #[error("{0}")]
    Unavailable(String),
    /// A storage error on another node, by its message (forwarded writes).
    #[error("{0}")]
    Remote(String),
    /// The committer thread is gone (the store is shutting down).
    #[error("storage is shutting down")]
    ShuttingDown,
}

/// Result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into() }
    }
}
