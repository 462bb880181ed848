//! The query crate's one error type. SQLSTATE codes are assigned in the broker.

use datafusion::error::DataFusionError;
use eddy_storage::ErrorClass;

/// What can go wrong planning or running a statement.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From storage (duplicate key, unknown object, I/O, ...).
    #[error(transparent)]
    Storage(#[from] eddy_storage::Error),
    /// The SQL text does not parse.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// No topic or table of that name.
    #[error("relation \"{name}\" does not exist")]
    UndefinedObject {
        /// The name.
        name: String,
    },
    /// A function no registry knows.
    #[error("function {0} does not exist")]
    UndefinedFunction(String),
    /// No column of that name.
    #[error("column \"{column}\" of relation \"{relation}\" does not exist")]
    UndefinedColumn {
        /// The relation.
        relation: String,
        /// The column.
        column: String,
    },
    /// A text value that does not parse as the column's type.
    #[error("invalid input syntax for type {ty}: \"{value}\"")]
    InvalidText {
        /// SQL type name.
        ty: &'static str,
        /// The offending text.
        value: String,
    },
    /// A number that does not fit the column's type.
    #[error("value out of range for type {ty}: \"{value}\"")]
    OutOfRange {
        /// SQL type name.
        ty: &'static str,
        /// The offending value.
        value: String,
    },
    /// A value of the wrong type for its column.
    #[error("{0}")]
    DatatypeMismatch(String),
    /// A message larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes (max_message_bytes)")]
    MessageTooLarge {
        /// Encoded size of the message.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A write to a topic's metadata column other than `_key`.
    #[error("column \"{column}\" is assigned by eddy and cannot be written; only _key may be set")]
    ReadOnlyColumn {
        /// The column.
        column: String,
    },
    /// Valid SQL that eddy does not do (yet).
    #[error("{0} is not supported")]
    NotSupported(String),
    /// A bad option value (`WITH (partitions = 0)`, an unknown setting, ...).
    #[error("{0}")]
    InvalidParameter(String),
    /// The object exists but is the wrong kind for the statement.
    #[error("\"{name}\" is not a {expected}")]
    WrongObjectType {
        /// The object.
        name: String,
        /// What the statement needs.
        expected: &'static str,
    },
    /// COPY data that does not fit the target.
    #[error("COPY: {0}")]
    BadCopyData(String),
    /// A COPY value that does not fit its column (`source` says how).
    #[error("COPY: line {line}: {source}")]
    CopyValue {
        /// The line of the COPY data.
        line: u64,
        /// Why the value was refused.
        source: Box<Error>,
    },
    /// A subscription position older than what retention kept.
    #[error(
        "offset {offset} of partition {partition} is outside retention (oldest kept: {start})"
    )]
    PositionOutsideRetention {
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// The oldest offset still retained.
        start: u64,
    },
    /// Rows of a durable subscription were removed by retention before delivery.
    #[error("subscription \"{name}\" lagged out: {lost} rows of partition {partition} were removed by retention before delivery; it continues at offset {resume}")]
    LaggedOut {
        /// The subscription.
        name: String,
        /// The partition.
        partition: u32,
        /// Rows lost.
        lost: u64,
        /// Where delivery continues.
        resume: u64,
    },
    /// FETCH or CLOSE of a cursor that does not exist.
    #[error("cursor \"{0}\" does not exist")]
    UndefinedCursor(String),
    /// DECLARE of a cursor name already in use.
    #[error("cursor \"{0}\" already exists")]
    DuplicateCursor(String),
    /// The statement was cancelled.
    #[error("canceling statement due to user request")]
    Cancelled,
    /// The statement ran longer than the session's `statement_timeout`.
    #[error("canceling statement due to statement timeout")]
    StatementTimeout,
    /// DataFusion planning or execution.
    #[error("{0}")]
    DataFusion(Box<DataFusionError>),
    /// A statement would change one row twice (`ON CONFLICT DO UPDATE` naming a key
    /// twice).
    #[error("{0}")]
    CardinalityViolation(String),
    /// Not applied, and running it again can succeed: the cluster could not order the
    /// write or serve the strong read now (no leader or quorum, a replica unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// A write that reached a Raft leader which then went away: it may or may not have
    /// been applied. `_msg_id` makes a publish safe to send again.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A failure inside eddy, never the user's input: a task that panicked or was
    /// cancelled, a broken invariant. The broker logs the text with an id and sends the
    /// client only the id.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// What the client may do about it (the broker turns it into a SQLSTATE).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Storage(e) => e.class(),
            Error::Unavailable(_) => ErrorClass::Retry,
            Error::OutcomeUnknown(_) => ErrorClass::OutcomeUnknown,
            Error::Internal(_) => ErrorClass::Internal,
            Error::DataFusion(e) => datafusion_class(e),
            Error::CopyValue { source, .. } => source.class(),
            Error::Syntax(_)
            | Error::UndefinedObject { .. }
            | Error::UndefinedFunction(_)
            | Error::UndefinedColumn { .. }
            | Error::InvalidText { .. }
            | Error::OutOfRange { .. }
            | Error::DatatypeMismatch(_)
            | Error::MessageTooLarge { .. }
            | Error::ReadOnlyColumn { .. }
            | Error::NotSupported(_)
            | Error::InvalidParameter(_)
            | Error::WrongObjectType { .. }
            | Error::BadCopyData(_)
            | Error::PositionOutsideRetention { .. }
            | Error::LaggedOut { .. }
            | Error::UndefinedCursor(_)
            | Error::DuplicateCursor(_)
            | Error::Cancelled
            | Error::StatementTimeout
            | Error::CardinalityViolation(_) => ErrorClass::User,
        }
    }
}

/// DataFusion's errors that come from the statement (planning, types, arithmetic on its
/// values) are the user's; the rest (I/O, a join that failed, resources, DataFusion's
/// own bugs) are eddy's.
fn datafusion_class(e: &DataFusionError) -> ErrorClass {
    match e {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..) => ErrorClass::User,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            datafusion_class(inner)
        }
        DataFusionError::Shared(inner) => datafusion_class(inner),
        _ => ErrorClass::Internal,
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("background task failed: {e}"))
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        // Our own errors come back wrapped when they were raised inside a DataFusion plan.
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::DataFusion(Box::new(DataFusionError::External(other))),
            },
            DataFusionError::Context(_, inner) => Error::from(*inner),
            other => Error::DataFusion(Box::new(other)),
        }
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::from(DataFusionError::from(e))
    }
}

/// Result with the query [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when a statement names a topic or table this node's catalog does not have
    /// (planning reports it typed: see `unplanned.rs`).
    pub(crate) fn is_undefined_relation(&self) -> bool {
        matches!(
            self,
            Error::UndefinedObject { .. }
                | Error::Storage(eddy_storage::Error::ObjectNotFound { .. })
        )
    }
}
