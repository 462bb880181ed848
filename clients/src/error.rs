//! The client's one error type, with the server's SQLSTATE and a retry classification.

use std::sync::Arc;

use tokio_postgres::error::SqlState;

/// `Result` with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to eddy.
///
/// Cloneable so that one failed batch can answer every row in it; the underlying
/// tokio-postgres error is shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused a statement; `code` is its SQLSTATE.
    #[error("{message} (SQLSTATE {})", code.code())]
    Server {
        /// The SQLSTATE the server sent (see `docs/sql.md` for eddy's codes).
        code: SqlState,
        /// The server's message.
        message: String,
        /// The driver's error, for its `detail`/`hint` and position.
        #[source]
        source: Arc<tokio_postgres::Error>,
    },
    /// The connection could not be made or was lost. Retrying on a new connection may work.
    #[error("connection to eddy failed: {0}")]
    Connection(#[source] Arc<tokio_postgres::Error>),
    /// The server did not answer within this long past the statement's own timeout; the
    /// connection is presumed dead (a peer that vanished without closing the socket).
    #[error("no answer from eddy within {0:?}; the connection is presumed lost")]
    Stalled(std::time::Duration),
    /// The driver failed on this side: a value that does not encode to the column's
    /// type, a column read as the wrong Rust type, a malformed message.
    #[error("driver error: {0}")]
    Driver(#[source] Arc<tokio_postgres::Error>),
    /// The connection string does not parse.
    #[error("bad connection string: {0}")]
    BadUrl(#[source] Arc<tokio_postgres::Error>),
    /// A builder was given a setting that cannot work (no columns, batch size 0, ...).
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// A row is missing a column eddy always sends (`_partition`, `_offset`, ...), or the
    /// server returned a different number of rows than the statement wrote.
    #[error("unexpected answer from the server: {0}")]
    UnexpectedAnswer(String),
    /// The producer or consumer this call went through was closed.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// `ack`/`nak` on a delivery that came from an ephemeral subscription, which has no
    /// server-side position to acknowledge.
    #[error("this delivery is not from a durable consumer; there is nothing to acknowledge")]
    NotDurable,
}

impl Error {
    /// The SQLSTATE of a server error; `None` for errors that did not come from the server.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the same call may succeed on a new connection: the connection failed or
    /// was lost, or the server said it is shutting down or cannot take connections now
    /// (SQLSTATE class `08`, `57P01`, `57P02`, `57P03`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connection(_) | Error::Stalled(_) => true,
            Error::Server { code, .. } => is_retryable_code(code.code()),
            _ => false,
        }
    }

    /// Classifies an error from a statement on an established connection.
    pub(crate) fn from_pg(e: tokio_postgres::Error) -> Error {
        if let Some(db) = e.as_db_error() {
            return Error::Server {
                code: db.code().clone(),
                message: db.message().to_owned(),
                source: Arc::new(e),
            };
        }
        // Lost connections show up as "closed" (the connection task ended) or carry the
        // socket's I/O error; everything else went wrong on this side of the wire.
        if e.is_closed() || io_source(&e) {
            Error::Connection(Arc::new(e))
        } else {
            Error::Driver(Arc::new(e))
        }
    }

    /// Classifies an error from opening a connection: anything but a server refusal is a
    /// connection failure (refused, reset, timed out, TLS).
    pub(crate) fn from_connect(e: tokio_postgres::Error) -> Error {
        match Error::from_pg(e) {
            Error::Driver(e) => Error::Connection(e),
            other => other,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::from_pg(e)
    }
}

fn io_source(e: &tokio_postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// SQLSTATEs after which a new connection may succeed.
fn is_retryable_code(code: &str) -> bool {
    // 08xxx: connection exceptions. 57P01 admin_shutdown (the node is stopping),
    // 57P02 crash_shutdown, 57P03 cannot_connect_now (starting up).
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes() {
        for code in ["08000", "08006", "08P01", "57P01", "57P02", "57P03"] {
            assert!(is_retryable_code(code), "{code}");
        }
        for code in ["42P01", "42601", "23505", "57014", "YE002", "XX000"] {
            assert!(!is_retryable_code(code), "{code}");
        }
    }

    #[test]
    fn local_errors_have_no_code_and_do_not_retry() {
        let e = Error::InvalidSetting("batch_size must be at least 1".into());
        assert_eq!(e.code(), None);
        assert!(!e.is_retryable());
        assert!(!Error::Closed("producer").is_retryable());
    }
}
