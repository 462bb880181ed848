//! The one mapping from eddy errors to what a client sees: SQLSTATE and message.
//! Internal details (RocksDB paths, DataFusion plan dumps) stay in the server log.

use datafusion::error::DataFusionError;
use eddy_query::Error as QueryError;
use eddy_storage::{Error as StorageError, ErrorClass};
use pgwire::error::{ErrorInfo, PgWireError};

/// SQLSTATE codes used by eddy (PostgreSQL's where one fits).
pub mod sqlstate {
    /// successful? no: syntax_error
    pub const SYNTAX_ERROR: &str = "42601";
    /// undefined_table
    pub const UNDEFINED_TABLE: &str = "42P01";
    /// undefined_column
    pub const UNDEFINED_COLUMN: &str = "42703";
    /// undefined_function
    pub const UNDEFINED_FUNCTION: &str = "42883";
    /// ambiguous_column
    pub const AMBIGUOUS_COLUMN: &str = "42702";
    /// duplicate_column
    pub const DUPLICATE_COLUMN: &str = "42701";
    /// duplicate_table
    pub const DUPLICATE_TABLE: &str = "42P07";
    /// wrong_object_type
    pub const WRONG_OBJECT_TYPE: &str = "42809";
    /// datatype_mismatch
    pub const DATATYPE_MISMATCH: &str = "42804";
    /// generated_always: writing a column eddy assigns
    pub const GENERATED_ALWAYS: &str = "428C9";
    /// unique_violation
    pub const UNIQUE_VIOLATION: &str = "23505";
    /// not_null_violation
    pub const NOT_NULL_VIOLATION: &str = "23502";
    /// invalid_text_representation
    pub const INVALID_TEXT: &str = "22P02";
    /// numeric_value_out_of_range
    pub const OUT_OF_RANGE: &str = "22003";
    /// data_exception
    pub const DATA_EXCEPTION: &str = "22000";
    /// division_by_zero
    pub const DIVISION_BY_ZERO: &str = "22012";
    /// invalid_parameter_value
    pub const INVALID_PARAMETER: &str = "22023";
    /// bad_copy_file_format
    pub const BAD_COPY_FORMAT: &str = "22P04";
    /// program_limit_exceeded: oversize message
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// feature_not_supported
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// query_canceled
    pub const QUERY_CANCELED: &str = "57014";
    /// admin_shutdown
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// io_error
    pub const IO_ERROR: &str = "58030";
    /// eddy: a subscription position older than retention kept (class YE: eddy's own)
    pub const POSITION_OUTSIDE_RETENTION: &str = "YE002";
    /// eddy: a durable subscription lost rows to retention before delivering them
    pub const LAGGED_OUT: &str = "YE003";
    /// invalid_cursor_name
    pub const INVALID_CURSOR_NAME: &str = "34000";
    /// duplicate_cursor
    pub const DUPLICATE_CURSOR: &str = "42P03";
    /// dependent_objects_still_exist
    pub const DEPENDENT_OBJECTS: &str = "2BP01";
    /// internal_error
    pub const INTERNAL_ERROR: &str = "XX000";
    /// serialization_failure: the write could not be ordered now (no Raft leader); retry.
    pub const SERIALIZATION_FAILURE: &str = "40001";
    /// data_corrupted
    pub const DATA_CORRUPTED: &str = "XX001";
    /// transaction_resolution_unknown: a write whose leader went away after it had it;
    /// it may or may not have been applied
    pub const TRANSACTION_RESOLUTION_UNKNOWN: &str = "08007";
    /// too_many_connections: past `max_connections`
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// protocol_violation: a malformed frontend message
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// cardinality_violation: `ON CONFLICT DO UPDATE` naming one key twice
    pub const CARDINALITY_VIOLATION: &str = "21000";
}

use sqlstate::*;

/// SQLSTATE and client-facing message of an error: by its class, and for the user's
/// own errors by what exactly is wrong. Nothing here reads an error's text.
pub fn classify(e: &QueryError) -> (&'static str, String) {
    match e.class() {
        ErrorClass::User => match e {
            QueryError::DataFusion(d) => classify_datafusion(d),
            _ => (user_code(e), e.to_string()),
        },
        ErrorClass::Retry => (SERIALIZATION_FAILURE, e.to_string()),
        ErrorClass::OutcomeUnknown => (TRANSACTION_RESOLUTION_UNKNOWN, e.to_string()),
        ErrorClass::ShuttingDown => (ADMIN_SHUTDOWN, e.to_string()),
        ErrorClass::Storage => {
            let corrupt = matches!(e, QueryError::Storage(StorageError::Corrupt { .. }));
            let (code, what) = if corrupt {
                (DATA_CORRUPTED, "stored data is corrupt")
            } else {
                (IO_ERROR, "storage error")
            };
            (code, hidden(what, &e.to_string()))
        }
        ErrorClass::Internal => (INTERNAL_ERROR, hidden("internal error", &e.to_string())),
    }
}

/// The SQLSTATE of an error of class [`ErrorClass::User`].
fn user_code(e: &QueryError) -> &'static str {
    match e {
        QueryError::Syntax(_) => SYNTAX_ERROR,
        QueryError::UndefinedObject { .. } => UNDEFINED_TABLE,
        QueryError::UndefinedFunction(_) => UNDEFINED_FUNCTION,
        QueryError::UndefinedColumn { .. } => UNDEFINED_COLUMN,
        QueryError::InvalidText { .. } => INVALID_TEXT,
        QueryError::OutOfRange { .. } => OUT_OF_RANGE,
        QueryError::DatatypeMismatch(_) => DATATYPE_MISMATCH,
        QueryError::MessageTooLarge { .. } => PROGRAM_LIMIT_EXCEEDED,
        QueryError::ReadOnlyColumn { .. } => GENERATED_ALWAYS,
        QueryError::NotSupported(_) => FEATURE_NOT_SUPPORTED,
        QueryError::InvalidParameter(_) => INVALID_PARAMETER,
        QueryError::WrongObjectType { .. } => WRONG_OBJECT_TYPE,
        QueryError::BadCopyData(_) => BAD_COPY_FORMAT,
        QueryError::CopyValue { source, .. } => user_code(source),
        QueryError::Cancelled | QueryError::StatementTimeout => QUERY_CANCELED,
        QueryError::PositionOutsideRetention { .. } => POSITION_OUTSIDE_RETENTION,
        QueryError::LaggedOut { .. } => LAGGED_OUT,
        QueryError::UndefinedCursor(_) => INVALID_CURSOR_NAME,
        QueryError::DuplicateCursor(_) => DUPLICATE_CURSOR,
        QueryError::CardinalityViolation(_) => CARDINALITY_VIOLATION,
        QueryError::Storage(s) => match s {
            StorageError::DuplicateKey { .. } => UNIQUE_VIOLATION,
            StorageError::NotNull { .. } => NOT_NULL_VIOLATION,
            StorageError::ObjectExists { .. } => DUPLICATE_TABLE,
            StorageError::ObjectNotFound { .. } => UNDEFINED_TABLE,
            StorageError::DependentObjects { .. } => DEPENDENT_OBJECTS,
            _ => INVALID_PARAMETER,
        },
        QueryError::DataFusion(d) => classify_datafusion(d).0,
        // Not of the user's class (see `classify`).
        QueryError::Unavailable(_) | QueryError::OutcomeUnknown(_) | QueryError::Internal(_) => {
            INTERNAL_ERROR
        }
    }
}

/// Logs an internal failure's `detail` under a fresh id and returns what the client is
/// told: `what` and the id to quote (no file paths, RocksDB or peer text on the wire).
pub(crate) fn hidden(what: &str, detail: &str) -> String {
    let id = INTERNAL_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{:x}-{id}", std::process::id());
    tracing::error!(error_id = %id, %detail, "internal error");
    format!("{what} (id {id}; the server log has the details)")
}

/// The error inside DataFusion's wrappers (context, diagnostics, shared).
fn innermost(e: &DataFusionError) -> &DataFusionError {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            innermost(inner)
        }
        DataFusionError::Shared(inner) => innermost(inner),
        _ => e,
    }
}

/// Numbers the internal errors of this process.
static INTERNAL_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// DataFusion errors carry no codes; those of the user's class (`datafusion_class` in
/// eddy-query) are sorted by their type: DataFusion's variant, and inside it the typed
/// schema or Arrow error. (A relation or function that does not exist never gets here:
/// planning reports those typed, `unplanned.rs` in eddy-query.)
fn classify_datafusion(e: &DataFusionError) -> (&'static str, String) {
    use arrow::error::ArrowError as A;
    use datafusion::common::SchemaError as S;
    let inner = innermost(e);
    let code = match inner {
        DataFusionError::SQL(..) | DataFusionError::Plan(_) => SYNTAX_ERROR,
        DataFusionError::SchemaError(s, _) => match **s {
            S::AmbiguousReference { .. } => AMBIGUOUS_COLUMN,
            S::DuplicateQualifiedField { .. } | S::DuplicateUnqualifiedField { .. } => {
                DUPLICATE_COLUMN
            }
            S::FieldNotFound { .. } => UNDEFINED_COLUMN,
        },
        DataFusionError::NotImplemented(_) => FEATURE_NOT_SUPPORTED,
        DataFusionError::Configuration(_) => INVALID_PARAMETER,
        DataFusionError::ArrowError(a, _) => match **a {
            A::DivideByZero => DIVISION_BY_ZERO,
            A::ArithmeticOverflow(_) => OUT_OF_RANGE,
            A::CastError(_) | A::ParseError(_) => INVALID_TEXT,
            _ => DATA_EXCEPTION,
        },
        // A statement DataFusion could not run for a reason of its own values.
        _ => DATA_EXCEPTION,
    };
    (code, inner.message().into_owned())
}

/// An ERROR-severity wire error (the connection stays usable).
pub fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// The wire error for a query error.
pub fn to_pg(e: QueryError) -> PgWireError {
    let (code, msg) = classify(&e);
    user_error(code, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(classify(&QueryError::Syntax("x".into())).0, "42601");
        assert_eq!(
            classify(&QueryError::Storage(StorageError::DuplicateKey {
                table: "t".into()
            }))
            .0,
            "23505"
        );
        // A relation that does not exist is reported typed by planning; a DataFusion
        // message saying the same is not read, only its variant is.
        let (code, msg) = classify(&QueryError::UndefinedObject {
            name: "nope".into(),
        });
        assert_eq!(
            (code, msg.as_str()),
            ("42P01", "relation \"nope\" does not exist")
        );
        let df = DataFusionError::Plan("table 'eddy.public.nope' not found".into());
        assert_eq!(classify(&QueryError::from(df)).0, "42601");
        let missing = datafusion::common::SchemaError::FieldNotFound {
            field: Box::new(datafusion::common::Column::from_name("x")),
            valid_fields: Vec::new(),
        };
        let df = DataFusionError::SchemaError(Box::new(missing), Box::new(None));
        let wrapped = DataFusionError::Context("planning".into(), Box::new(df));
        assert_eq!(classify(&QueryError::from(wrapped)).0, "42703");
        let df =
            DataFusionError::ArrowError(Box::new(arrow::error::ArrowError::DivideByZero), None);
        assert_eq!(classify(&QueryError::from(df)).0, "22012");
        assert_eq!(
            classify(&QueryError::UndefinedFunction("f".into())).0,
            "42883"
        );
        assert_eq!(
            classify(&QueryError::MessageTooLarge { size: 2, limit: 1 }).0,
            "54000"
        );
    }
}
