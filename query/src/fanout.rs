//! Work shared by subscriptions reading the same rows (fanout).
//!
//! Subscribers that keep up with a partition are woken by the same watermark change and
//! ask for the same range, so with many of them each chunk is read from the tail and
//! turned into Arrow once ([`SharedChunks`]), and a COPY subscriber's lines are encoded
//! once per batch and layout ([`Shared::copy_lines`]), instead of once per subscriber. A
//! subscriber behind the others asks for ranges nobody else does and decodes its own.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arrow::array::RecordBatch;
use eddy_storage::{ObjectDef, TopicDef};

use crate::copy::CopyOptions;
use crate::error::Result;

/// The last `N` items put, newest found first.
#[derive(Debug)]
pub(crate) struct Recent<T, const N: usize> {
    items: parking_lot::Mutex<VecDeque<T>>,
}

impl<T, const N: usize> Default for Recent<T, N> {
    fn default() -> Self {
        Self {
            items: parking_lot::Mutex::new(VecDeque::with_capacity(N)),
        }
    }
}

impl<T, const N: usize> Recent<T, N> {
    /// What `pick` gives for the newest item it gives something for.
    pub(crate) fn find<R>(&self, pick: impl FnMut(&T) -> Option<R>) -> Option<R> {
        self.items.lock().iter().rev().find_map(pick)
    }

    /// Keeps `item` unless an item `same` holds for is kept already; the oldest goes when
    /// `N` are kept.
    pub(crate) fn put(&self, item: T, same: impl Fn(&T) -> bool) {
        let mut items = self.items.lock();
        if items.iter().any(same) {
            return;
        }
        if items.len() >= N {
            items.pop_front();
        }
        items.push_back(item);
    }
}

/// Which chunk of which log: subscriptions that read the same range of the same
/// partition get the same rows.
#[derive(Debug, Clone)]
pub(crate) struct ChunkKey {
    /// The catalog's definition (a new one after ALTER: its columns may differ). Held, so
    /// its address is not reused while the key lives.
    pub(crate) def: Arc<ObjectDef>,
    pub(crate) partition: u32,
    pub(crate) from: u64,
    pub(crate) high: u64,
}

impl PartialEq for ChunkKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.def, &other.def)
            && (self.partition, self.from, self.high) == (other.partition, other.from, other.high)
    }
}

/// A decoded chunk: its rows as one batch, and the offset after its last row.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) batch: RecordBatch,
    pub(crate) next: u64,
}

/// The last 32 chunks subscriptions decoded.
pub(crate) type SharedChunks = Recent<(ChunkKey, Arc<Chunk>), 32>;

/// One batch's COPY lines in one layout. Holds the batch, so the identity of its columns
/// (what a lookup compares) stays unique while the entry lives.
#[derive(Debug)]
struct EncodedLines {
    batch: RecordBatch,
    options: CopyOptions,
    lines: Vec<bytes::Bytes>,
}

/// What an engine's subscriptions share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Chunks decoded lately.
    pub(crate) chunks: Arc<SharedChunks>,
    /// The last 16 COPY encodings, by batch and options.
    lines: Recent<EncodedLines, 16>,
}

/// True when `a` and `b` are the same batch (clones share their column arrays).
pub(crate) fn same_batch(a: &RecordBatch, b: &RecordBatch) -> bool {
    a.num_rows() == b.num_rows()
        && a.num_columns() == b.num_columns()
        && a.columns()
            .iter()
            .zip(b.columns())
            .all(|(x, y)| Arc::ptr_eq(x, y))
}

impl Shared {
    /// `batch` as COPY lines in `options`' layout. Subscriptions reading the same chunk
    /// unfiltered get the same batch (see [`SharedChunks`]), so with many of them on one
    /// partition its lines are encoded once and shared.
    pub(crate) fn copy_lines(
        &self,
        options: &CopyOptions,
        batch: &RecordBatch,
    ) -> Result<Vec<bytes::Bytes>> {
        let lines = &self.lines;
        let same = |e: &EncodedLines| &e.options == options && same_batch(&e.batch, batch);
        if let Some(found) = lines.find(|e| same(e).then(|| e.lines.clone())) {
            return Ok(found);
        }
        let encoded = options.encode_batch(batch)?;
        lines.put(
            EncodedLines {
                batch: batch.clone(),
                options: options.clone(),
                lines: encoded.clone(),
            },
            same,
        );
        Ok(encoded)
    }
}

/// Live counters of one subscription, shown in `eddy.subscriptions`.
#[derive(Debug)]
pub struct SubStats {
    /// Which transport: `copy`, `cursor`, `listen`.
    pub kind: &'static str,
    /// The topic or table.
    pub object: String,
    /// The WHERE text, if any.
    pub filter: Option<String>,
    /// The log read (for the head positions).
    pub(crate) log: Arc<TopicDef>,
    /// Next offset per partition.
    pub next: Vec<AtomicU64>,
    /// Rows handed to the consumer.
    pub rows: AtomicU64,
    /// Bytes read from storage and handed over but not yet taken by the consumer: the
    /// last batch until the consumer asks for the next one.
    pub buffered_bytes: AtomicU64,
    /// FETCHes of a subscription cursor waiting for their first row now.
    pub waiting: AtomicU64,
}

/// Counts a wait in `counter` while it lives (a FETCH waiting for rows, shown as
/// `eddy.subscriptions.waiting`, so a client or test can see that a FETCH waits).
pub(crate) struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    pub(crate) fn start(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The live ephemeral subscriptions of a node (weak: a subscription ends when its stream
/// is dropped, and then it disappears from here).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    live: parking_lot::Mutex<BTreeMap<u64, Weak<SubStats>>>,
    /// Decoded chunks and COPY encodings shared by subscriptions (fanout).
    pub(crate) shared: crate::fanout::Shared,
}

impl Registry {
    pub(crate) fn register(&self, stats: &Arc<SubStats>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut live = self.live.lock();
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(id, Arc::downgrade(stats));
    }

    /// The subscriptions still running.
    pub(crate) fn list(&self) -> Vec<Arc<SubStats>> {
        self.live
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }
}
