//! Raft groups' durable state, as opaque bytes: storage knows nothing of openraft.
//!
//! | column family | key                              | value                    |
//! |---------------|----------------------------------|--------------------------|
//! | `raft`        | `u64 group · u8 slot` (slot < 0x10) | one value per slot (vote, committed, purged, applied) |
//! | `raft`        | `u64 group · 0x10 · u64 index`   | one log entry            |
//!
//! The consensus crate encodes what goes in. Writes to this space ride on the committer
//! ([`crate::Commit::raft`]), so the Raft log appends of many groups share one fsync, and
//! a state machine's "applied" marker lands in the same RocksDB batch as the data it
//! applied. A group's data lives in the ordinary column families; [`KeyRange`]s name it
//! for snapshots.

use crate::catalog::ObjectId;
use crate::error::{Error, Result};
use crate::layout::{
    log_start_key, table_prefix, CF_CATALOG, CF_LOG, CF_META, CF_RAFT, CF_ROWS, CF_SUBS,
};

/// A Raft group's id (0 is the metadata group).
pub type GroupId = u64;

/// Tag of log entry keys; slots use tags below it.
const ENTRY_TAG: u8 = 0x10;

/// One change to a Raft group's own state (its log and its slots).
#[derive(Debug, Clone, PartialEq)]
pub enum RaftWrite {
    /// Sets a slot (`slot < 0x10`).
    Put {
        /// The group.
        group: GroupId,
        /// Which value.
        slot: u8,
        /// The bytes.
        value: Vec<u8>,
    },
    /// Stores log entries at their indexes.
    Entries {
        /// The group.
        group: GroupId,
        /// `(index, entry)` pairs.
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// Deletes the log entries at `index` and after.
    TruncateFrom {
        /// The group.
        group: GroupId,
        /// First index deleted.
        index: u64,
    },
    /// Deletes the log entries up to and including `index`.
    PurgeTo {
        /// The group.
        group: GroupId,
        /// Last index deleted.
        index: u64,
    },
    /// Deletes everything of a group (its object was dropped).
    DropGroup {
        /// The group.
        group: GroupId,
    },
    /// Replaces every key in `ranges` with `items` (a snapshot being installed), then
    /// reloads what memory holds of them (catalog, partition positions).
    Replace {
        /// What is deleted.
        ranges: Vec<KeyRange>,
        /// What is written: `(column family, key, value)`.
        items: Vec<(Space, Vec<u8>, Vec<u8>)>,
    },
}

/// A column family, named for snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// Object definitions.
    Catalog,
    /// Counters (next object id).
    Meta,
    /// Topic logs and table change logs.
    Log,
    /// Table rows.
    Rows,
    /// Durable subscription state.
    Subs,
    /// Raft groups' own state (readable in snapshots, never replaced by one).
    Raft,
}

impl Space {
    pub(crate) fn cf(self) -> &'static str {
        match self {
            Space::Catalog => CF_CATALOG,
            Space::Meta => CF_META,
            Space::Log => CF_LOG,
            Space::Rows => CF_ROWS,
            Space::Subs => CF_SUBS,
            Space::Raft => CF_RAFT,
        }
    }

    /// A stable number for snapshots on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The space of [`Space::code`].
    pub fn from_code(code: u8) -> Result<Space> {
        Ok(match code {
            0 => Space::Catalog,
            1 => Space::Meta,
            2 => Space::Log,
            3 => Space::Rows,
            4 => Space::Subs,
            5 => Space::Raft,
            _ => return Err(Error::corrupt(format!("snapshot space {code}"))),
        })
    }
}

/// Keys `[from, to)` of one column family (`to` empty: to the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The column family.
    pub space: Space,
    /// First key.
    pub from: Vec<u8>,
    /// First key after the range; empty means unbounded.
    pub to: Vec<u8>,
}

impl KeyRange {
    /// Everything one topic partition (or a table's change log, partition 0) stores.
    pub fn partition(topic: ObjectId, partition: u32) -> KeyRange {
        let to = match partition.checked_add(1) {
            Some(p) => log_start_key(topic, p).to_vec(),
            None => table_prefix(topic + 1).to_vec(),
        };
        KeyRange {
            space: Space::Log,
            from: log_start_key(topic, partition).to_vec(),
            to,
        }
    }

    /// A table's rows and change log.
    pub fn table(table: ObjectId) -> Vec<KeyRange> {
        vec![
            KeyRange {
                space: Space::Rows,
                from: table_prefix(table).to_vec(),
                to: table_prefix(table + 1).to_vec(),
            },
            KeyRange::partition(table, 0),
        ]
    }

    /// The catalog, the counters and every durable subscription's state.
    pub fn metadata() -> Vec<KeyRange> {
        [Space::Catalog, Space::Meta, Space::Subs]
            .into_iter()
            .map(|space| KeyRange {
                space,
                from: Vec::new(),
                to: Vec::new(),
            })
            .collect()
    }

    /// One slot of a Raft group (its applied marker, say), to read with a snapshot's data.
    pub fn raft_slot(group: GroupId, slot: u8) -> KeyRange {
        KeyRange {
            space: Space::Raft,
            from: slot_key(group, slot).to_vec(),
            to: slot_key(group, slot + 1).to_vec(),
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        key >= self.from.as_slice() && (self.to.is_empty() || key < self.to.as_slice())
    }
}

/// Key of a group's slot.
pub(crate) fn slot_key(group: GroupId, slot: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8] = slot;
    k
}

/// Key of a group's log entry.
pub(crate) fn entry_key(group: GroupId, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8] = ENTRY_TAG;
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The index of an entry key of `group`; `None` for any other key.
pub(crate) fn entry_index(key: &[u8], group: GroupId) -> Option<u64> {
    if key.len() != 17 || key[..8] != group.to_be_bytes() || key[8] != ENTRY_TAG {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[9..]);
    Some(u64::from_be_bytes(b))
}
