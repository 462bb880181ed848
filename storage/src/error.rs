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
    /// A read-modify-write's row changed between the statement's read and its write
    /// ([`WriteOp::Expect`](crate::WriteOp::Expect)): nothing of it was written, and
    /// running it again on the new row can succeed.
    #[error("could not serialize access due to concurrent update of \"{table}\"")]
    RowChanged {
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
    /// The committer thread is gone (the store is shutting down).
    #[error("storage is shutting down")]
    ShuttingDown,
}

/// What a client may do about an error, whichever crate's it is: every crate's error
/// says its class, and the broker turns classes (and, for user errors, the variant)
/// into SQLSTATEs in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The statement or its input is wrong: running it again changes nothing.
    User,
    /// Not applied; the same statement can succeed if run again (`40001`).
    Retry,
    /// Possibly applied, possibly not (a leader went away after it had the write).
    OutcomeUnknown,
    /// The node is shutting down (`57P01`): reconnect, to this node later or another.
    ShuttingDown,
    /// The node's storage failed (I/O, corruption).
    Storage,
    /// eddy's own failure, never the user's input (`XX000`).
    Internal,
}

impl Error {
    /// See [`ErrorClass`].
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Engine(_) | Error::Corrupt { .. } => ErrorClass::Storage,
            Error::RowChanged { .. } => ErrorClass::Retry,
            Error::ShuttingDown => ErrorClass::ShuttingDown,
            Error::ObjectNotFound { .. }
            | Error::ObjectExists { .. }
            | Error::DuplicateKey { .. }
            | Error::NoSuchPartition { .. }
            | Error::DependentObjects { .. }
            | Error::NotNull { .. }
            | Error::InvalidValue(_) => ErrorClass::User,
        }
    }
}

/// Result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into() }
    }
}
