//! openraft's log storage and state machine for one group, over eddy's [`Store`].
//!
//! Both write through the store's committer, so a group's log appends share fsyncs with
//! every other group's and with standalone writes; the state machine's applied marker is
//! written in the same RocksDB batch as the data it applied, without an fsync of its own
//! (the Raft log is the durable copy; after a crash the batch is either there with its
//! marker or absent with it, and the log replays it).

// openraft's traits fix the error type (`StorageError`, large); helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};

use eddy_storage::raft::{GroupId, KeyRange, RaftWrite, Space};
use eddy_storage::{Commit, Store, WeakStore};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::types::{
    Entry, LogId, NodeId, Request, Response, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig, WireError,
};

const SLOT_VOTE: u8 = 0;
const SLOT_COMMITTED: u8 = 1;
const SLOT_PURGED: u8 = 2;
const SLOT_APPLIED: u8 = 3;
/// Set once a snapshot was built or installed: from then on `get_current_snapshot`
/// answers with the state as it is (a valid snapshot at the applied index).
const SLOT_SNAPSHOT: u8 = 4;

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(v).map_err(|e| {
        StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, AnyError::new(&e)).into()
    })
}

fn decode<T: DeserializeOwned>(b: &[u8], subject: ErrorSubject<NodeId>) -> Result<T, StorageError> {
    postcard::from_bytes(b)
        .map_err(|e| StorageIOError::new(subject, ErrorVerb::Read, AnyError::new(&e)).into())
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: eddy_storage::Error) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Reads a slot of `group`.
fn read_slot<T: DeserializeOwned>(
    store: &Store,
    group: GroupId,
    slot: u8,
    subject: ErrorSubject<NodeId>,
) -> Result<Option<T>, StorageError> {
    match store.raft_slot(group, slot) {
        Ok(Some(b)) => decode(&b, subject).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(io_err(subject, ErrorVerb::Read, e)),
    }
}

/// The committed index openraft last saved for `group` (openraft 0.9's metrics have no
/// committed index).
pub(crate) fn committed_index(store: &Store, group: GroupId) -> Option<u64> {
    read_slot::<Option<LogId>>(store, group, SLOT_COMMITTED, ErrorSubject::Store)
        .ok()
        .flatten()
        .flatten()
        .map(|l| l.index)
}

/// Writes Raft state durably through the committer.
async fn write_raft(
    store: &Store,
    raft: Vec<RaftWrite>,
    subject: ErrorSubject<NodeId>,
) -> Result<(), StorageError> {
    store
        .commit(Commit {
            raft,
            sync: true,
            ..Commit::default()
        })
        .await
        .map(drop)
        .map_err(|e| io_err(subject, ErrorVerb::Write, e))
}

/// The Raft log of one group.
#[derive(Debug, Clone)]
pub struct LogStore {
    store: WeakStore,
    group: GroupId,
}

impl LogStore {
    /// The log of `group` in `store`.
    pub fn new(store: &Store, group: GroupId) -> Self {
        Self {
            store: store.downgrade(),
            group,
        }
    }

    fn store(&self) -> Result<Store, StorageError> {
        upgrade(&self.store)
    }
}

/// The store behind a weak handle. Raft's tasks can outlive a node briefly (openraft
/// keeps a log reader after shutdown), and must not keep its database open.
fn upgrade(store: &WeakStore) -> Result<Store, StorageError> {
    store.upgrade().ok_or_else(|| {
        io_err(
            ErrorSubject::Store,
            ErrorVerb::Read,
            eddy_storage::Error::ShuttingDown,
        )
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self
            .store()?
            .raft_entries(self.group, from, to)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        raw.iter()
            .map(|(_, b)| decode(b, ErrorSubject::Logs))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> =
            read_slot(&self.store()?, self.group, SLOT_PURGED, ErrorSubject::Logs)?;
        let last = match self.store()?.raft_last_entry(self.group) {
            Ok(Some((_, b))) => Some(decode::<Entry>(&b, ErrorSubject::Logs)?.log_id),
            Ok(None) => None,
            Err(e) => return Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let value = encode(vote)?;
        write_raft(
            &self.store()?,
            vec![RaftWrite::Put {
                group: self.group,
                slot: SLOT_VOTE,
                value,
            }],
            ErrorSubject::Vote,
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        read_slot(&self.store()?, self.group, SLOT_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let value = encode(&committed)?;
        self.store()?
            .commit(Commit {
                raft: vec![RaftWrite::Put {
                    group: self.group,
                    slot: SLOT_COMMITTED,
                    value,
                }],
                ..Commit::default()
            })
            .await
            .map(drop)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(read_slot::<Option<LogId>>(
            &self.store()?,
            self.group,
            SLOT_COMMITTED,
            ErrorSubject::Store,
        )?
        .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, encode(&e)?));
        }
        // The committer's batch is readable and durable at the same moment: once it
        // answers, both halves of the contract hold.
        let written = self
            .store()?
            .commit(Commit {
                raft: vec![RaftWrite::Entries {
                    group: self.group,
                    entries: encoded,
                }],
                sync: true,
                ..Commit::default()
            })
            .await;
        match written {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        write_raft(
            &self.store()?,
            vec![RaftWrite::TruncateFrom {
                group: self.group,
                index: log_id.index,
            }],
            ErrorSubject::Logs,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let value = encode(&log_id)?;
        write_raft(
            &self.store()?,
            vec![
                RaftWrite::Put {
                    group: self.group,
                    slot: SLOT_PURGED,
                    value,
                },
                RaftWrite::PurgeTo {
                    group: self.group,
                    index: log_id.index,
                },
            ],
            ErrorSubject::Logs,
        )
        .await
    }
}

/// The applied position of a state machine, stored with the data it covers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    log_id: Option<LogId>,
    membership: StoredMembership,
}

/// A snapshot's bytes: the group's keys and values.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    items: Vec<(u8, ByteBuf, ByteBuf)>,
}

/// The state machine of one group: the keys in `ranges` of the store.
#[derive(Debug, Clone)]
pub struct StateMachine {
    store: WeakStore,
    group: GroupId,
    ranges: Vec<KeyRange>,
}

impl StateMachine {
    /// The state machine of `group`, whose data are the keys in `ranges`.
    pub fn new(store: &Store, group: GroupId, ranges: Vec<KeyRange>) -> Self {
        Self {
            store: store.downgrade(),
            group,
            ranges,
        }
    }

    fn store(&self) -> Result<Store, StorageError> {
        upgrade(&self.store)
    }

    /// The group's state now, as a snapshot (one consistent read of data and marker).
    fn snapshot_now(&self) -> Result<Option<Snapshot>, StorageError> {
        let mut ranges = self.ranges.clone();
        ranges.push(KeyRange::raft_slot(self.group, SLOT_APPLIED));
        let items = self
            .store()?
            .read_ranges(&ranges)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let mut applied = Applied::default();
        let mut data = SnapshotData { items: Vec::new() };
        for (space, k, v) in items {
            if space == Space::Raft {
                applied = decode(&v, ErrorSubject::StateMachine)?;
            } else {
                data.items
                    .push((space.code(), ByteBuf::from(k), ByteBuf::from(v)));
            }
        }
        let Some(last) = applied.log_id else {
            return Ok(None);
        };
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: applied.membership,
            snapshot_id: format!("{}-{}-{}", self.group, last.leader_id, last.index),
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(encode(&data)?)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snap = self.snapshot_now()?;
        let snap = match snap {
            Some(s) => s,
            None => Snapshot {
                meta: SnapshotMeta {
                    last_log_id: None,
                    last_membership: StoredMembership::default(),
                    snapshot_id: format!("{}-empty", self.group),
                },
                snapshot: Box::new(Cursor::new(encode(&SnapshotData { items: Vec::new() })?)),
            },
        };
        write_raft(
            &self.store()?,
            vec![RaftWrite::Put {
                group: self.group,
                slot: SLOT_SNAPSHOT,
                value: vec![1],
            }],
            ErrorSubject::Snapshot(Some(snap.meta.signature())),
        )
        .await?;
        Ok(snap)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied: Applied = read_slot(
            &self.store()?,
            self.group,
            SLOT_APPLIED,
            ErrorSubject::StateMachine,
        )?
        .unwrap_or_default();
        Ok((applied.log_id, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (_, mut membership) = self.applied_state().await?;
        // One commit per entry, each with its applied marker, queued back to back so the
        // committer folds them into one batch; answered in order.
        let mut pending = Vec::new();
        for entry in entries {
            let mut commit = Commit::default();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Request::Write { units, at }) => {
                    commit.units = units;
                    commit.at = Some(at);
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            let applied = Applied {
                log_id: Some(entry.log_id),
                membership: membership.clone(),
            };
            commit.raft.push(RaftWrite::Put {
                group: self.group,
                slot: SLOT_APPLIED,
                value: encode(&applied)?,
            });
            let rx = self
                .store()?
                .submit(commit)
                .await
                .map_err(|e| io_err(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write, e))?;
            pending.push((entry.log_id, rx));
        }
        let mut responses = Vec::with_capacity(pending.len());
        for (log_id, rx) in pending {
            let units = rx
                .wait()
                .await
                .map_err(|e| io_err(ErrorSubject::Apply(log_id), ErrorVerb::Write, e))?;
            responses.push(Response {
                units: units
                    .into_iter()
                    .map(|u| match u {
                        Ok(results) => Ok(results.into_iter().map(Into::into).collect()),
                        Err(e) => Err(WireError::from(&e)),
                    })
                    .collect(),
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data: SnapshotData = decode(snapshot.get_ref(), subject())?;
        let mut items = Vec::with_capacity(data.items.len());
        for (code, k, v) in data.items {
            let space =
                Space::from_code(code).map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
            items.push((space, k.into_vec(), v.into_vec()));
        }
        let applied = Applied {
            log_id: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        // Data, marker and snapshot flag in one durable batch: a crash leaves the old
        // state or the new one.
        write_raft(
            &self.store()?,
            vec![
                RaftWrite::Replace {
                    ranges: self.ranges.clone(),
                    items,
                },
                RaftWrite::Put {
                    group: self.group,
                    slot: SLOT_APPLIED,
                    value: encode(&applied)?,
                },
                RaftWrite::Put {
                    group: self.group,
                    slot: SLOT_SNAPSHOT,
                    value: vec![1],
                },
            ],
            subject(),
        )
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        if self
            .store()?
            .raft_slot(self.group, SLOT_SNAPSHOT)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
            .is_none()
        {
            return Ok(None);
        }
        self.snapshot_now()
    }
}
