//! What travels through Raft and between nodes: the type configuration, requests,
//! responses, nodes, partitions.

use std::io::Cursor;
use std::sync::Arc;

use eddy_storage::raft::GroupId;
use eddy_storage::{Error, ObjectDef, WriteOp, WriteResult};
use serde::{Deserialize, Serialize};

/// A node's id (nonzero; 0 is never a node).
pub type NodeId = u64;

/// What the cluster knows of a node: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The Postgres address clients connect to.
    pub pg_addr: String,
    /// The internal RPC address other nodes connect to.
    pub cluster_addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pg {})", self.cluster_addr, self.pg_addr)
    }
}

/// A topic partition as a replica of its group sees it (for `eddy.partitions` on a node
/// holding no replica of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// The partition's group.
    pub group: GroupId,
    /// The leader that replica knows of.
    pub leader: Option<NodeId>,
    /// The oldest offset it retains.
    pub start_offset: u64,
    /// Its next offset (high watermark).
    pub next_offset: u64,
}

openraft::declare_raft_types!(
    /// eddy's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of eddy's Raft groups.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// A group's voters and learners.
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
/// A snapshot.
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// A Raft instance of one group.
pub type Raft = openraft::Raft<TypeConfig>;
/// A group's metrics.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;

/// A proposal: what a Raft entry asks the state machine to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Changes to the group's data; each unit applies all or nothing. `at` is the
    /// leader's clock when it proposed them, the append time every replica uses.
    Write {
        /// The units.
        units: Vec<Vec<WriteOp>>,
        /// Append time, microseconds since the epoch.
        at: i64,
    },
}

/// What applying an entry produced: one outcome per unit (empty for entries that are
/// not writes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Per unit: its results, or why it failed (then nothing of it was applied).
    pub units: Vec<Result<Vec<Outcome>, WireError>>,
}

/// [`WriteResult`] as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// See [`WriteResult::Appended`].
    Appended {
        /// Partition.
        partition: u32,
        /// First offset.
        first_offset: u64,
        /// Append time.
        ts_micros: i64,
    },
    /// See [`WriteResult::Rows`].
    Rows(u64),
    /// See [`WriteResult::Created`].
    Created(#[serde(with = "eddy_storage::def_as_json")] ObjectDef),
    /// See [`WriteResult::Done`].
    Done,
    /// See [`WriteResult::Merged`].
    Merged(u64),
    /// See [`WriteResult::Positions`].
    Positions {
        /// Partition.
        partition: u32,
        /// `(offset, append time)` per message.
        each: Vec<(u64, i64)>,
    },
}

impl From<WriteResult> for Outcome {
    fn from(r: WriteResult) -> Self {
        match r {
            WriteResult::Appended {
                partition,
                first_offset,
                ts_micros,
            } => Outcome::Appended {
                partition,
                first_offset,
                ts_micros,
            },
            WriteResult::Rows(n) => Outcome::Rows(n),
            WriteResult::Created(def) => Outcome::Created((*def).clone()),
            WriteResult::Done => Outcome::Done,
            WriteResult::Merged { applied } => Outcome::Merged(applied),
            WriteResult::Positions { partition, each } => Outcome::Positions { partition, each },
        }
    }
}

impl From<Outcome> for WriteResult {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Appended {
                partition,
                first_offset,
                ts_micros,
            } => WriteResult::Appended {
                partition,
                first_offset,
                ts_micros,
            },
            Outcome::Rows(n) => WriteResult::Rows(n),
            Outcome::Created(def) => WriteResult::Created(Arc::new(def)),
            Outcome::Done => WriteResult::Done,
            Outcome::Merged(applied) => WriteResult::Merged { applied },
            Outcome::Positions { partition, each } => WriteResult::Positions { partition, each },
        }
    }
}

/// A storage [`Error`] as it travels between nodes: the variants a client can act on
/// keep their shape, the rest keep their message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// [`Error::ObjectNotFound`].
    NotFound(String),
    /// [`Error::ObjectExists`].
    Exists(String),
    /// [`Error::DuplicateKey`].
    DuplicateKey(String),
    /// [`Error::NoSuchPartition`].
    NoSuchPartition(String, u32),
    /// [`Error::DependentObjects`].
    Dependent(String, String),
    /// [`Error::NotNull`].
    NotNull(String),
    /// [`Error::InvalidValue`].
    Invalid(String),
    /// Anything else, by its message.
    Other(String),
    /// [`Error::RowChanged`].
    RowChanged(String),
    /// [`Error::ShuttingDown`].
    ShuttingDown,
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e {
            Error::ObjectNotFound { name } => WireError::NotFound(name.clone()),
            Error::ObjectExists { name } => WireError::Exists(name.clone()),
            Error::DuplicateKey { table } => WireError::DuplicateKey(table.clone()),
            Error::NoSuchPartition { topic, partition } => {
                WireError::NoSuchPartition(topic.clone(), *partition)
            }
            Error::DependentObjects { name, dependent } => {
                WireError::Dependent(name.clone(), dependent.clone())
            }
            Error::NotNull { column } => WireError::NotNull(column.clone()),
            Error::InvalidValue(m) => WireError::Invalid(m.clone()),
            Error::RowChanged { table } => WireError::RowChanged(table.clone()),
            Error::ShuttingDown => WireError::ShuttingDown,
            other => WireError::Other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use eddy_storage::*;

    use super::*;

    /// Every kind of op survives the Raft entry encoding (postcard), including catalog
    /// definitions, which travel as JSON inside it.
    #[test]
    fn every_write_op_round_trips_through_the_entry_encoding() {
        let topic = ObjectDef::Topic(TopicDef {
            id: 3,
            name: "t".into(),
            columns: vec![ColumnDef {
                name: "payload".into(),
                ty: ColumnType::Bytea,
                nullable: true,
            }],
            partitions: 2,
            retention_ms: Some(5),
            replication: Replication::Raft,
            replicas: Some(3),
            placement: vec![vec![1, 2, 3], vec![2, 3, 1]],
            reassigned: true,
            dedup_window_ms: 30_000,
        });
        let mut records = Records::new();
        records
            .push(
                &[ColumnDef {
                    name: "payload".into(),
                    ty: ColumnType::Bytea,
                    nullable: true,
                }],
                Some("k"),
                &[Value::Bytea(vec![0, 1, 255])],
            )
            .unwrap();
        let ops = vec![
            WriteOp::Create(topic.clone()),
            WriteOp::Alter(topic.clone()),
            WriteOp::Drop { name: "t".into() },
            WriteOp::Append {
                topic: 3,
                partition: 1,
                records: records.clone(),
            },
            WriteOp::AppendOnce {
                topic: 3,
                partition: 0,
                ids: vec![Some("order-17".into())],
                records,
            },
            WriteOp::Insert {
                table: 4,
                rows: vec![vec![Value::Int64(1), Value::Null, Value::Float64(0.5)]],
                on_conflict: OnConflict::Replace,
            },
            WriteOp::Delete {
                table: 4,
                keys: vec![vec![Value::Text("x".into())]],
            },
            WriteOp::SubState {
                sub: 9,
                changes: vec![SubChange::Next {
                    partition: 0,
                    next: 7,
                }],
            },
            WriteOp::Expect {
                table: 4,
                key: vec![Value::Int64(1)],
                row: Some(vec![Value::Int64(1), Value::Null, Value::Float64(0.5)]),
            },
            WriteOp::Expect {
                table: 4,
                key: vec![Value::Int64(2)],
                row: None,
            },
        ];
        let req = Request::Write {
            units: vec![ops],
            at: 42,
        };
        let bytes = postcard::to_stdvec(&req).unwrap();
        let back: Request = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, req);
        let resp = Response {
            units: vec![
                Ok(vec![
                    Outcome::Created(topic),
                    Outcome::Rows(2),
                    Outcome::Positions {
                        partition: 1,
                        each: vec![(7, 100), (3, 90)],
                    },
                ]),
                Err(WireError::DuplicateKey("t".into())),
                Err(WireError::RowChanged("t".into())),
            ],
        };
        let back: Response = postcard::from_bytes(&postcard::to_stdvec(&resp).unwrap()).unwrap();
        assert_eq!(back, resp);
    }
}
