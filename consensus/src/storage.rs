//! openraft's log storage and state machine for one group, over eddy's [`Store`]: the
//! log store in `storage/log.rs`, the state machine in `storage/state_machine.rs`, and
//! here what both use (the group's slots, the applied marker, an entry's commit, the
//! stubs of a group of this node alone).
//!
//! Both write through the store's committer, so a group's log appends share fsyncs with
//! every other group's and with standalone writes; the state machine's applied marker is
//! written in the same RocksDB batch as the data it applied, without an fsync of its own
//! (the Raft log is the durable copy; after a crash the batch is either there with its
//! marker or absent with it, and the log replays it).
//!
//! A group whose only voter is this node commits an entry the moment it is durable here,
//! so its log store applies such entries in the append's own commit (entry, data and
//! applied marker in one fsync'd batch) and keeps their responses for `apply`, which
//! then has nothing to write: one committer round per write instead of two. While the
//! group has no other member at all, the log keeps only a stub of such an entry (its log
//! id, no data): nothing will ever read the data from the log, and writing it twice
//! doubled the WAL of a bulk load. Before another node joins the group, [`Stubs::seal`]
//! stops the stubs and purges the log behind a snapshot, so the newcomer starts from the
//! snapshot and never sees one. While the group is of this node alone and led here,
//! its writes skip the log altogether ([`Stubs::write_alone`]): one fsync'd commit of
//! their units, with no Raft entry.

// openraft's traits fix the error type (`StorageError`, large); helpers return it too.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_storage::raft::{GroupId, KeyRange, RaftWrite, Space};
use eddy_storage::{Commit, Lane, Pending, Store, UnitResults, WeakStore, WriteOp, WriterId};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

mod log;
mod state_machine;

pub use log::LogStore;
pub use state_machine::StateMachine;

use crate::types::{
    Entry, LogId, Membership, NodeId, RaftMetrics, Request, Response, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig, WireError,
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

/// The log store and state machine of one group, sharing what entries applied at append
/// left for `apply`. `me`: this node, whose solo groups apply at append (`None`: never).
/// `stubs`: whether such entries may be logged as stubs (see [`Stubs`]).
pub fn group_storage(
    store: &Store,
    group: GroupId,
    ranges: Vec<KeyRange>,
    me: Option<NodeId>,
    stubs: bool,
) -> (LogStore, StateMachine, Stubs) {
    let early = Arc::new(Early {
        me,
        state: Mutex::default(),
        stubs: AtomicBool::new(stubs),
        gate: tokio::sync::RwLock::new(()),
    });
    let log = LogStore {
        store: store.downgrade(),
        group,
        early: early.clone(),
    };
    let sm = StateMachine {
        store: store.downgrade(),
        group,
        ranges,
        early: early.clone(),
    };
    let stubs = Stubs {
        early,
        store: store.downgrade(),
        group,
    };
    (log, sm, stubs)
}

/// Control over the stubs a group's log keeps for entries applied at append.
#[derive(Debug, Clone)]
pub struct Stubs {
    early: Arc<Early>,
    store: WeakStore,
    group: GroupId,
}

impl Stubs {
    /// Makes the group's log safe to replicate: logs whole entries from now on, then
    /// builds a snapshot and purges the log up to the applied index, which covers every
    /// stub ever written (stubs are applied in their own commit, restarts included). A
    /// node added afterwards gets the snapshot, then whole entries. Run it on the
    /// leader before adding a node to the group; running it again is harmless.
    pub async fn seal(&self, raft: &crate::types::Raft, deadline: Duration) -> Result<(), String> {
        let was_open = {
            // Waits for appends writing stubs, and writes outside the log, in flight.
            let _closed = self.early.gate.write().await;
            self.early.stubs.swap(false, Ordering::SeqCst)
        };
        let failed = |e: &dyn std::fmt::Display| format!("raft group {}: {e}", self.group);
        if was_open {
            // Writes applied outside the log (`write_alone`) moved no index: one more
            // entry puts the applied index past them, so that the snapshot awaited below
            // is built after them and covers them.
            let at = eddy_storage::now_micros();
            let write = raft.client_write(Request::Write {
                units: Vec::new(),
                at,
            });
            tokio::time::timeout(deadline, write)
                .await
                .map_err(|_| failed(&"no quorum for the sealing entry"))?
                .map_err(|e| failed(&e))?;
        }
        // Every stub is at or below the stored applied marker; openraft must have
        // applied that far before its log may be purged there.
        let store = upgrade(&self.store).map_err(|e| e.to_string())?;
        let applied = read_applied(&store, self.group).map_err(|e| e.to_string())?;
        drop(store);
        let Some(upto) = applied.log_id.map(|l| l.index) else {
            return Ok(());
        };
        let wait = |what: &'static str, done: fn(&RaftMetrics, u64) -> bool| {
            let waiting = raft.wait(Some(deadline));
            async move {
                waiting
                    .metrics(move |m| done(m, upto), what)
                    .await
                    .map(drop)
                    .map_err(|e| failed(&e))
            }
        };
        wait("the stubs applied", |m, i| {
            m.last_applied.is_some_and(|l| l.index >= i)
        })
        .await?;
        raft.trigger().snapshot().await.map_err(|e| failed(&e))?;
        wait("a snapshot covering the stubs", |m, i| {
            m.snapshot.is_some_and(|s| s.index >= i)
        })
        .await?;
        raft.trigger()
            .purge_log(upto)
            .await
            .map_err(|e| failed(&e))?;
        wait("the log purged past the stubs", |m, i| {
            m.purged.is_some_and(|p| p.index >= i)
        })
        .await?;
        Ok(())
    }

    /// Applies `units` straight to the store, fsync'd, without a Raft entry: what a
    /// write costs on a group of this node alone, which it leads, while its stubs are
    /// open. Such a group's log would only have kept a stub of the write, and its
    /// commit is this node's fsync either way; leaving Raft out saves the hand-offs
    /// between the proposer, openraft's core, the log store and the state machine.
    /// [`Stubs::seal`] waits for these writes and closes the way before another node
    /// joins, then snapshots them. Gives the units back when the group does not
    /// qualify, for the caller to propose through Raft.
    pub async fn write_alone(
        &self,
        raft: &crate::types::Raft,
        lane: Lane,
        units: Vec<Vec<WriteOp>>,
    ) -> Result<Result<Response, eddy_storage::Error>, Vec<Vec<WriteOp>>> {
        let Some(me) = self.early.me else {
            return Err(units);
        };
        if !self.early.stubs.load(Ordering::SeqCst) || !alone_leader(raft, me) {
            return Err(units);
        }
        let _open = self.early.gate.read().await;
        if !self.early.stubs.load(Ordering::SeqCst) {
            return Err(units);
        }
        let Some(store) = self.store.upgrade() else {
            return Ok(Err(eddy_storage::Error::ShuttingDown));
        };
        Ok(store
            .commit(Commit {
                units,
                sync: true,
                lane,
                ..Commit::default()
            })
            .await
            .map(response_of))
    }
}

/// Whether `me` leads the group and is its only member (no other voter, no learner).
fn alone_leader(raft: &crate::types::Raft, me: NodeId) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.state == openraft::ServerState::Leader
        && m.current_leader == Some(me)
        && only_member(m.membership_config.membership(), me)
}

/// Whether `me` is the only voter of `m`, outside a joint configuration (learners aside).
fn sole_voter(m: &Membership, me: NodeId) -> bool {
    matches!(m.get_joint_config().as_slice(), [v] if v.len() == 1 && v.contains(&me))
}

/// Whether `me` is the only member of `m`: its sole voter, and no learner.
fn only_member(m: &Membership, me: NodeId) -> bool {
    sole_voter(m, me) && m.nodes().count() == 1
}

/// Entries a solo group applied as it appended them.
#[derive(Debug)]
struct Early {
    me: Option<NodeId>,
    state: Mutex<EarlyState>,
    /// Whether entries applied at append may be logged as stubs.
    stubs: AtomicBool,
    /// Held (shared) by appends writing stubs, (exclusively) by [`Stubs::seal`].
    gate: tokio::sync::RwLock<()>,
}

#[derive(Debug, Default)]
struct EarlyState {
    /// Responses of entries applied at append, by index, until `apply` takes them.
    responses: BTreeMap<u64, Response>,
    /// The last entry applied at append (durably, with its marker).
    applied: Option<u64>,
}

/// The applied position of a state machine, stored with the data it covers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    log_id: Option<LogId>,
    membership: StoredMembership,
}

/// The applied marker of `group` (default: nothing applied).
fn read_applied(store: &Store, group: GroupId) -> Result<Applied, StorageError> {
    Ok(read_slot(store, group, SLOT_APPLIED, ErrorSubject::StateMachine)?.unwrap_or_default())
}

/// The commit applying `entry`: its units, if any, and the applied marker after it.
/// A membership entry changes `membership`, which the marker carries.
fn entry_commit(
    group: GroupId,
    entry: Entry,
    membership: &mut StoredMembership,
) -> Result<Commit, StorageError> {
    let mut commit = Commit::default();
    match entry.payload {
        EntryPayload::Blank => {}
        EntryPayload::Normal(Request::Write { units, at }) => {
            commit.units = units;
            commit.at = Some(at);
        }
        EntryPayload::Membership(m) => {
            *membership = StoredMembership::new(Some(entry.log_id), m);
        }
    }
    let applied = Applied {
        log_id: Some(entry.log_id),
        membership: membership.clone(),
    };
    commit.raft.push(RaftWrite::Put {
        group,
        slot: SLOT_APPLIED,
        value: encode(&applied)?,
    });
    Ok(commit)
}

/// Submits `commits` of `writer` back to back: several are queued, so the committer folds
/// them into one batch; a lone one is the writer's alone, and may commit in place.
async fn submit_all(
    store: &Store,
    writer: WriterId,
    commits: Vec<Commit>,
) -> Result<Vec<Pending>, eddy_storage::Error> {
    let lane = lane_for(writer, commits.len());
    let mut pending = Vec::with_capacity(commits.len());
    for commit in commits {
        pending.push(store.submit(commit.in_lane(lane)).await?);
    }
    Ok(pending)
}

/// The lane of `count` commits `writer` makes at once: alone for one, queued for more
/// (they should share one group commit, not take an fsync each in turn).
fn lane_for(writer: WriterId, count: usize) -> Lane {
    if count == 1 {
        Lane::Alone(writer)
    } else {
        Lane::Queued
    }
}

/// The responses of queued commits, in order.
async fn wait_all(pending: Vec<Pending>) -> Result<Vec<Response>, eddy_storage::Error> {
    let mut responses = Vec::with_capacity(pending.len());
    for rx in pending {
        responses.push(response_of(rx.wait().await?));
    }
    Ok(responses)
}

/// What an entry's units produced, as it travels back to the proposer.
fn response_of(units: UnitResults) -> Response {
    Response {
        units: units
            .into_iter()
            .map(|u| match u {
                Ok(results) => Ok(results.into_iter().map(Into::into).collect()),
                Err(e) => Err(WireError::from(&e)),
            })
            .collect(),
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
