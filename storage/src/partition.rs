//! What memory holds of one log (a topic partition, or a table's change log): its
//! positions and a tail of its newest entries.
//!
//! ```text
//!  committer ── after the fsync ──► tail.push · next_offset · watermark.send
//!  readers   ◄── watch() wakes them ── read the tail (Store::read_recent), else RocksDB
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

/// Positions of one topic partition. Only the committer advances them, after the data
/// they cover is durable, so a reader never sees an offset that could still be lost.
#[derive(Debug)]
pub struct PartitionState {
    /// First offset not yet written (the high watermark).
    pub(crate) next_offset: AtomicU64,
    /// First offset still retained.
    pub(crate) start_offset: AtomicU64,
    /// Append time of the newest message; new messages never get an earlier one.
    pub(crate) last_ts: AtomicI64,
    /// Publishes the high watermark to subscribers (holds one value, never queues).
    pub(crate) watermark: watch::Sender<u64>,
    /// The newest records, for subscribers that keep up.
    pub(crate) tail: Mutex<Tail>,
}

/// The newest log entries of a partition, consecutive offsets, bounded in bytes.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    entries: VecDeque<TailEntry>,
    bytes: usize,
}

impl Tail {
    /// Appends entries that follow the newest one and evicts the oldest beyond `cap` bytes.
    pub(crate) fn push(&mut self, entries: &[TailEntry], cap: usize) {
        for e in entries {
            if self
                .entries
                .back()
                .is_some_and(|last| last.first + u64::from(last.count) != e.first)
            {
                // A gap (never expected): start over rather than serve a hole.
                self.entries.clear();
                self.bytes = 0;
            }
            self.bytes += e.data.len();
            self.entries.push_back(e.clone());
        }
        while self.bytes > cap {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= e.data.len();
        }
    }

    /// The entries holding offsets `from` on, up to the first that starts at or after `to`;
    /// `None` when the entry holding `from` is not here (older, or not written yet).
    pub(crate) fn read(&self, from: u64, to: u64) -> Option<Vec<TailEntry>> {
        // The entry holding `from`: the last one starting at or before it.
        let i = self.entries.partition_point(|e| e.first <= from);
        match i.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(e) if e.first + u64::from(e.count) > from => Some(
                self.entries
                    .range(i - 1..)
                    .take_while(|e| e.first < to)
                    .cloned()
                    .collect(),
            ),
            _ => None,
        }
    }
}

impl PartitionState {
    /// First offset not yet written.
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }
    /// First offset still retained.
    pub fn start_offset(&self) -> u64 {
        self.start_offset.load(Ordering::Acquire)
    }
    /// A receiver that changes whenever the high watermark moves.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.watermark.subscribe()
    }
}

/// A log entry as the in-memory tail keeps it: first offset, message count, stored bytes.
#[derive(Debug, Clone)]
pub(crate) struct TailEntry {
    pub(crate) first: u64,
    pub(crate) count: u32,
    pub(crate) data: bytes::Bytes,
}
