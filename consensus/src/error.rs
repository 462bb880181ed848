//! The consensus crate's one error type: what a cluster write, read barrier or
//! membership change can end in, typed by what the caller may do about it.

use crate::types::{NodeId, WireError};
use eddy_storage::raft::GroupId;
use eddy_storage::ErrorClass;

/// Everything a cluster operation can fail with. The broker maps each to a SQLSTATE
/// by its [`Error::class`]; none is told apart by its text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write was applied (or refused) by a state machine: a storage outcome such as
    /// a duplicate key or a changed row, on whichever replica applied it.
    #[error(transparent)]
    Storage(#[from] eddy_storage::Error),
    /// This node is not the group's leader and could not hand the write to one in time;
    /// nothing was written. `leader` is the one it last knew of.
    #[error("raft group {group} has no reachable leader (last known: {}); retry", leader.map_or("none".to_owned(), |l| format!("node {l}")))]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader last seen, if any.
        leader: Option<NodeId>,
    },
    /// Nothing was written and it can be tried again (on this node or another): no
    /// quorum, a replica unreachable before the write was sent, the group not started
    /// yet.
    #[error("{0}")]
    Unavailable(String),
    /// The write reached a leader, which then went away or stopped answering: it may
    /// or may not be applied. Running it again may apply it twice; an idempotent
    /// publish (`_msg_id`) is the way to retry safely.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Refused for good: a bad setting, a join or membership change the cluster does
    /// not allow.
    #[error("{0}")]
    Refused(String),
    /// A failure of this node or a peer that no input explains (a bad reply, a storage
    /// failure on another node reported by its text).
    #[error("{0}")]
    Internal(String),
}

/// Result with the consensus [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What the caller may do about it.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Storage(e) => e.class(),
            Error::NotLeader { .. } | Error::Unavailable(_) => ErrorClass::Retry,
            Error::OutcomeUnknown(_) => ErrorClass::OutcomeUnknown,
            Error::Refused(_) => ErrorClass::User,
            Error::Internal(_) => ErrorClass::Internal,
        }
    }
}

impl From<crate::network::CallError> for Error {
    fn from(e: crate::network::CallError) -> Self {
        use crate::network::CallError;
        match e {
            CallError::NoGroup(_) | CallError::Unavailable(_) => Error::Unavailable(e.to_string()),
            CallError::Refused(m) => Error::Refused(m),
            CallError::Unknown(m) => Error::OutcomeUnknown(m),
        }
    }
}

/// A storage error another node sent back: the variants a client can act on take their
/// shape again; any other failure there is this cluster's own ([`Error::Internal`]).
impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        use eddy_storage::Error as StoreError;
        Error::Storage(match e {
            WireError::NotFound(name) => StoreError::ObjectNotFound { name },
            WireError::Exists(name) => StoreError::ObjectExists { name },
            WireError::DuplicateKey(table) => StoreError::DuplicateKey { table },
            WireError::NoSuchPartition(topic, partition) => {
                StoreError::NoSuchPartition { topic, partition }
            }
            WireError::Dependent(name, dependent) => {
                StoreError::DependentObjects { name, dependent }
            }
            WireError::NotNull(column) => StoreError::NotNull { column },
            WireError::Invalid(m) => StoreError::InvalidValue(m),
            WireError::RowChanged(table) => StoreError::RowChanged { table },
            WireError::ShuttingDown => StoreError::ShuttingDown,
            // Another node's storage failure: its text is for the log, not the client.
            WireError::Other(m) => return Error::Internal(m),
        })
    }
}
