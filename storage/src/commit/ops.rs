//! What the committer is asked to do, and what it answers.

use std::sync::Arc;

use crate::catalog::{ObjectDef, ObjectId};
use crate::error::Result;
use crate::layout::Records;
use crate::raft::{GroupId, RaftWrite};
use crate::value::Value;

/// What to do when an inserted row's primary key already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OnConflict {
    /// Fail the whole request with [`Error::DuplicateKey`].
    Error,
    /// Keep the existing row and skip the new one.
    Ignore,
    /// Overwrite the existing row.
    Replace,
}

/// One change to the database.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum WriteOp {
    /// Append messages to one partition; they get consecutive offsets and one append time.
    Append {
        /// Topic id.
        topic: ObjectId,
        /// Partition (must exist).
        partition: u32,
        /// The messages, encoded (and checked) against the topic's columns.
        records: Records,
    },
    /// Append messages, each with an optional id, leaving out those whose id the
    /// partition took within the topic's dedup window (in append time) or that repeat an
    /// id of an earlier message of the op: those are answered with the first copy's
    /// offset and append time (idempotent publishes, `_msg_id`).
    AppendOnce {
        /// Topic id (a Raft topic).
        topic: ObjectId,
        /// Partition (must exist).
        partition: u32,
        /// One per message: its id, if it has one.
        ids: Vec<Option<String>>,
        /// The messages, encoded against the topic's columns.
        records: Records,
    },
    /// Insert or upsert table rows (full rows in column order).
    Insert {
        /// Table id.
        table: ObjectId,
        /// The rows.
        rows: Vec<Vec<Value>>,
        /// Conflict behaviour.
        on_conflict: OnConflict,
    },
    /// Delete table rows by primary key (values in key order).
    Delete {
        /// Table id.
        table: ObjectId,
        /// Primary keys.
        keys: Vec<Vec<Value>>,
    },
    /// Create a topic or table (its id is assigned here).
    Create(#[serde(with = "crate::catalog::def_as_json")] ObjectDef),
    /// Replace an existing object's definition (same id and name), e.g. a new retention.
    Alter(#[serde(with = "crate::catalog::def_as_json")] ObjectDef),
    /// Move an object's Raft group (topic partition, or a table's group 0) to other
    /// nodes: its placement becomes `nodes` and the object is marked reassigned.
    Place {
        /// Object id.
        object: ObjectId,
        /// Partition (0 for a table).
        partition: u32,
        /// The group's nodes, preferred leader first.
        nodes: Vec<u64>,
    },
    /// Drop an object and all its data.
    Drop {
        /// Object name.
        name: String,
    },
    /// Change a durable subscription's positions and pending rows.
    SubState {
        /// Subscription id.
        sub: ObjectId,
        /// The changes, applied in order.
        changes: Vec<SubChange>,
    },
    /// Apply deltas of a gossip object received from another node: each origin's deltas
    /// apply in sequence (duplicates are skipped, a gap stops the batch).
    Merge(crate::gossip::DeltaBatch),
    /// Collect a gossip object's deltas and tombstones stamped before `before` (an HLC
    /// timestamp: the horizon); each origin's version vector entry keeps the first seq
    /// still held.
    Collect {
        /// The gossip topic or table.
        object: ObjectId,
        /// Horizon.
        before: u64,
    },
    /// Merge a peer's full state of a gossip table (a node behind the peer's horizon):
    /// its rows merge last-writer-wins, and each row here that the peer has seen (its
    /// write is within the peer's version vector) but no longer holds goes, since the
    /// peer deleted it and collected the tombstone.
    Resync {
        /// The gossip table.
        table: ObjectId,
        /// Every row version of the peer (tombstones included) with its row.
        rows: Vec<crate::gossip::RowState>,
        /// The peer's version vector.
        vv: Vec<(crate::gossip::Origin, crate::gossip::VvEntry)>,
    },
    /// Move an origin's applied seq of a gossip topic forward to `to`, skipping deltas a
    /// peer no longer holds (a node behind the peer's horizon).
    Skip {
        /// The gossip topic.
        object: ObjectId,
        /// The origin.
        origin: crate::gossip::Origin,
        /// New applied seq.
        to: u64,
    },
    /// Remove a partition's messages below an offset (retention).
    Trim {
        /// Topic id.
        topic: ObjectId,
        /// Partition.
        partition: u32,
        /// First offset to keep.
        before: u64,
    },
    /// The condition of a read-modify-write (`UPDATE`, `DELETE ... WHERE`, `ON CONFLICT DO
    /// UPDATE`): the unit fails with [`Error::RowChanged`](crate::Error::RowChanged),
    /// writing nothing, unless the table's row at `key` is still `row` (`None`: absent)
    /// byte for byte. Checked where the write is ordered (a Raft group's apply, the same
    /// on every replica), so two nodes changing one row from the same version cannot
    /// both succeed. On a gossip table it checks this node's copy only.
    Expect {
        /// Table id.
        table: ObjectId,
        /// Primary key (values in key order).
        key: Vec<Value>,
        /// The row as the statement read it.
        row: Option<Vec<Value>>,
    },
}

/// One change to a durable subscription's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SubChange {
    /// Every offset of `partition` below `next` has been read.
    Next {
        /// Partition.
        partition: u32,
        /// First offset not yet read.
        next: u64,
    },
    /// A row is pending (unacked) after `deliveries` deliveries.
    Pending {
        /// Partition.
        partition: u32,
        /// Offset of the row.
        offset: u64,
        /// Times delivered so far.
        deliveries: u32,
    },
    /// A pending row is done with (acknowledged, or moved to the dead-letter topic).
    Done {
        /// Partition.
        partition: u32,
        /// Offset of the row.
        offset: u64,
    },
}

/// The change kinds recorded in a table's change log (as each record's key).
pub const CHANGE_INSERT: &str = "insert";
/// See [`CHANGE_INSERT`].
pub const CHANGE_UPDATE: &str = "update";
/// See [`CHANGE_INSERT`].
pub const CHANGE_DELETE: &str = "delete";

impl WriteOp {
    pub(super) fn is_catalog(&self) -> bool {
        matches!(
            self,
            WriteOp::Create(_) | WriteOp::Alter(_) | WriteOp::Place { .. } | WriteOp::Drop { .. }
        )
    }
}

/// The outcome of one [`WriteOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    /// Messages appended at `first_offset..first_offset + n`, all with append time `ts_micros`.
    Appended {
        /// Partition written.
        partition: u32,
        /// Offset of the first message.
        first_offset: u64,
        /// Append time of every message of the op.
        ts_micros: i64,
    },
    /// Each message's offset and append time, in order ([`WriteOp::AppendOnce`]: one
    /// left out answers with its first copy's).
    Positions {
        /// Partition written.
        partition: u32,
        /// `(offset, append time)` per message.
        each: Vec<(u64, i64)>,
    },
    /// Table rows changed (inserted, replaced or deleted).
    Rows(u64),
    /// The created object, with its id.
    Created(Arc<ObjectDef>),
    /// A catalog change or trim without further detail.
    Done,
    /// Deltas merged: the origin's applied seq for the object afterwards.
    Merged {
        /// Every delta of the origin up to this seq is applied.
        applied: u64,
    },
}

/// One request to the committer: units of ops, each applied all or nothing, plus Raft
/// state written whatever the units' outcomes, all in one RocksDB batch.
#[derive(Debug, Default)]
pub struct Commit {
    /// Each unit applies atomically; a failed unit leaves no trace and its error is its
    /// result. A unit with a catalog change must be the request's only unit.
    pub units: Vec<Vec<WriteOp>>,
    /// Raft log and slot writes (always written, in the same batch as the units).
    pub raft: Vec<RaftWrite>,
    /// Append time chosen by a Raft leader (replicas must agree); `None`: now. Either way
    /// never earlier than the log's newest append.
    pub at: Option<i64>,
    /// fsync before answering. A Raft state machine applies without it: the Raft log is
    /// the durable copy, and RocksDB recovers a prefix of unsynced batches.
    pub sync: bool,
    /// Who makes it: queued for a group commit (the default), or a writer alone that may
    /// commit in place.
    pub lane: Lane,
}

impl Commit {
    /// One unit, fsync'd: what a standalone write is.
    pub fn durable(ops: Vec<WriteOp>) -> Commit {
        Commit {
            units: vec![ops],
            sync: true,
            ..Commit::default()
        }
    }

    /// This commit, made in `lane`.
    pub fn in_lane(self, lane: Lane) -> Commit {
        Commit { lane, ..self }
    }
}

/// The outcome of each unit of a [`Commit`].
pub type UnitResults = Vec<Result<Vec<WriteResult>>>;

/// How a commit may be made, as its caller declares it.
///
/// Only the caller knows whether more of its writes follow without waiting (a pipelining
/// connection, several Raft entries at once), so only the caller chooses; the store never
/// guesses it from the task or thread it is called on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Queued for the committer thread, to share a group commit with others. For writes
    /// made ahead of more from the same writer, and for any writer that does not name
    /// itself.
    #[default]
    Queued,
    /// From the named writer, which waits for each commit before it makes the next. Once
    /// its last two commits came from it and no one else, it may commit in
    /// place (see `CommitGate`).
    Alone(WriterId),
}

/// A writer that can be alone: one that waits for each of its commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriterId {
    /// A client session, by its id on this node (its process id).
    Session(u32),
    /// A Raft group appending to its log.
    RaftLog(GroupId),
    /// A Raft group's state machine applying entries.
    RaftApply(GroupId),
}

impl WriterId {
    /// A distinct non-zero number per writer (zero means "no writer").
    pub(super) fn key(self) -> u64 {
        const GROUP_BITS: u64 = (1 << 62) - 1;
        match self {
            WriterId::Session(id) => (1 << 62) | u64::from(id),
            WriterId::RaftLog(g) => (2 << 62) | (g & GROUP_BITS),
            WriterId::RaftApply(g) => (3 << 62) | (g & GROUP_BITS),
        }
    }
}
