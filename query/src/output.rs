//! [`Output`]: what a statement produced, for the wire layer to send.

use datafusion::execution::SendableRecordBatchStream;

use crate::copy::{CopyInSink, CopyOptions};

/// What a statement produced.
pub enum Output {
    /// Rows (SELECT, SHOW, RETURNING). `tag` is the command tag without the row count.
    Rows {
        /// Command tag ("SELECT", "INSERT 0", ...); the wire layer appends the row count.
        tag: String,
        /// The rows.
        stream: SendableRecordBatchStream,
    },
    /// A command without rows; `rows` is appended to the tag when present.
    Command {
        /// Command tag.
        tag: String,
        /// Rows affected.
        rows: Option<u64>,
    },
    /// COPY ... FROM STDIN: the wire layer feeds the sink.
    CopyIn(Box<CopyInSink>),
    /// COPY ... TO STDOUT: rows to encode as text or CSV lines.
    CopyOut {
        /// The rows.
        stream: SendableRecordBatchStream,
        /// Format of the lines.
        options: CopyOptions,
    },
    /// BEGIN / START TRANSACTION (eddy runs each statement on its own; see docs).
    TransactionStart,
    /// COMMIT / ROLLBACK.
    TransactionEnd {
        /// "COMMIT" or "ROLLBACK".
        tag: &'static str,
        /// A warning for the client before the tag: a ROLLBACK of a block whose
        /// statements wrote (they committed as they ran, and stay).
        warning: Option<String>,
    },
}

impl Output {
    /// The warning to send the client ahead of this output, if any.
    pub fn warning(&self) -> Option<&str> {
        match self {
            Output::TransactionEnd { warning, .. } => warning.as_deref(),
            _ => None,
        }
    }
}
