//! Work shared by subscriptions reading the same rows (fanout).
//!
//! Subscribers that keep up with a partition are woken by the same watermark change and
//! ask for the same range, so with many of them each chunk is read from the tail and
//! turned into Arrow once ([`SharedChunks`]), and a COPY subscriber's lines are encoded
//! once per batch and layout ([`Engine::copy_lines`]), instead of once per subscriber. A
//! subscriber behind the others asks for ranges nobody else does and decodes its own.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::RecordBatch;
use eddy_storage::ObjectDef;

use crate::copy::CopyOptions;
use crate::engine::Engine;
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

impl Engine {
    /// `batch` as COPY lines in `options`' layout. Subscriptions reading the same chunk
    /// unfiltered get the same batch (see [`SharedChunks`]), so with many of them on one
    /// partition its lines are encoded once and shared.
    pub fn copy_lines(
        &self,
        options: &CopyOptions,
        batch: &RecordBatch,
    ) -> Result<Vec<bytes::Bytes>> {
        let lines = &self.subscriptions.shared.lines;
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
