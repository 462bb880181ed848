//! The store's inner handle, [`Inner`]: the open RocksDB database and what memory holds
//! of it (the catalog, each log's [`PartitionState`], the counters, the gossip origin and
//! clock). Every [`Store`](crate::Store) handle, the committer thread and gossip's stored
//! reads hold the same `Arc<Inner>`; it sits below all three, so none of them reaches into
//! another for it.
//!
//! ```text
//!  Store (reads, submits) ──┐
//!  committer (writes)     ──┼──► Arc<Inner> ── db, catalog, partitions, stats, hlc
//!  gossip (stored reads)  ──┘
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rocksdb::{ColumnFamily, DBRawIterator, IteratorMode, DB};
use tokio::sync::watch;

use crate::catalog::{Catalog, ObjectDef, ObjectId};
use crate::config::StorageConfig;
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::layout::{
    entry_first_offset, log_key, log_start_key, Entry, CF_CATALOG, CF_LOG, CF_META,
    META_NEXT_OBJECT_ID,
};
use crate::partition::{PartitionState, Tail};
use crate::raft::{KeyRange, Space};

/// Counters of what reads touched (for metrics, and for tests that prove pushdown).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Messages read from topic logs.
    pub log_records_read: AtomicU64,
    /// Table rows read (point gets that found a row, and scanned rows).
    pub table_rows_read: AtomicU64,
    /// Write requests committed (each answered after its batch's fsync).
    pub write_requests: AtomicU64,
    /// RocksDB write batches committed, each with one fsync (group commit: fewer than requests).
    pub commits: AtomicU64,
    /// Of the write requests, those committed in place by a lone writer's own thread.
    pub commits_in_place: AtomicU64,
    /// Messages subscribers read from the in-memory tail instead of RocksDB.
    pub log_records_from_memory: AtomicU64,
}

/// The open database and what memory holds of it (see the module docs).
pub(crate) struct Inner {
    pub(crate) stats: StoreStats,
    pub(crate) db: DB,
    /// The catalog as stored; the committer changes it once a catalog change is durable.
    pub(crate) catalog: Catalog,
    /// Each log's positions and tail, loaded on first use ([`Inner::partition`]).
    pub(crate) partitions: RwLock<HashMap<(ObjectId, u32), Arc<PartitionState>>>,
    /// The id the next created object gets.
    pub(crate) next_object_id: AtomicU64,
    pub(crate) config: StorageConfig,
    /// This node's id as the origin of gossip writes.
    pub(crate) origin: AtomicU64,
    /// The clock of gossip writes.
    pub(crate) hlc: Hlc,
    /// Bumped after local gossip writes become durable.
    pub(crate) gossip_changes: watch::Sender<u64>,
}

impl Inner {
    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // Every column family in ALL_CFS is created by `Store::open`, so the handle exists.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Reads the catalog into `catalog`; returns the next object id.
    pub(crate) fn load_catalog(db: &DB, catalog: &Catalog) -> Result<u64> {
        let cf = db
            .cf_handle(CF_CATALOG)
            .ok_or_else(|| Error::corrupt("catalog column family"))?;
        let mut defs = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (_, v) = item?;
            let def: ObjectDef = serde_json::from_slice(&v)
                .map_err(|e| Error::corrupt(format!("catalog entry: {e}")))?;
            defs.push(def);
        }
        catalog.replace_all(defs);
        let cf = db
            .cf_handle(CF_META)
            .ok_or_else(|| Error::corrupt("meta column family"))?;
        Ok(match db.get_cf(cf, META_NEXT_OBJECT_ID)? {
            Some(v) => u64::from(u32::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::corrupt("next id"))?,
            )),
            None => 1,
        })
    }

    /// Reloads what memory holds of ranges a snapshot replaced: the catalog, and the
    /// positions and tails of partitions (subscribers keep their handles and are woken).
    pub(crate) fn reload(&self, ranges: &[KeyRange]) {
        if ranges.iter().any(|r| r.space == Space::Catalog) {
            match Self::load_catalog(&self.db, &self.catalog) {
                Ok(next) => self.next_object_id.store(next, Ordering::Release),
                Err(e) => tracing::error!(error = %e, "cannot reload the catalog"),
            }
        }
        let parts: Vec<_> = self
            .partitions
            .read()
            .iter()
            .filter(|((t, p), _)| {
                ranges
                    .iter()
                    .any(|r| r.space == Space::Log && r.contains(&log_start_key(*t, *p)))
            })
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for ((t, p), state) in parts {
            match self.load_partition_bounds(t, p) {
                Ok((start, next, last_ts)) => {
                    *state.tail.lock() = Tail::default();
                    state.start_offset.store(start, Ordering::Release);
                    state.last_ts.store(last_ts, Ordering::Release);
                    state.next_offset.store(next, Ordering::Release);
                    state.watermark.send_replace(next);
                }
                Err(e) => tracing::error!(error = %e, "cannot reload partition {t}/{p}"),
            }
        }
    }

    /// The state of a partition, loaded from the log on first use.
    pub(crate) fn partition(&self, topic: ObjectId, partition: u32) -> Result<Arc<PartitionState>> {
        if let Some(p) = self.partitions.read().get(&(topic, partition)) {
            return Ok(p.clone());
        }
        let (start, next, last_ts) = self.load_partition_bounds(topic, partition)?;
        let mut map = self.partitions.write();
        let state = map.entry((topic, partition)).or_insert_with(|| {
            Arc::new(PartitionState {
                next_offset: AtomicU64::new(next),
                start_offset: AtomicU64::new(start),
                last_ts: AtomicI64::new(last_ts),
                watermark: watch::channel(next).0,
                tail: Mutex::new(Tail::default()),
            })
        });
        Ok(state.clone())
    }

    /// First retained offset, next offset and newest append time of a partition, from
    /// its entries and its start key.
    fn load_partition_bounds(&self, topic: ObjectId, partition: u32) -> Result<(u64, u64, i64)> {
        let start = match self
            .db
            .get_pinned_cf(self.cf(CF_LOG), log_start_key(topic, partition))?
        {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::corrupt("log start offset"))?,
            ),
            None => 0,
        };
        let mut it = self.db.raw_iterator_cf(self.cf(CF_LOG));
        let Some((last_first, last)) = Self::last_entry(&mut it, topic, partition)? else {
            // Empty, or trimmed to nothing: offsets continue after the trim.
            return Ok((start, start, i64::MIN));
        };
        it.seek(log_key(topic, partition, 0));
        let first = it
            .key()
            .and_then(|k| entry_first_offset(k, topic, partition))
            .unwrap_or(last_first);
        it.status()?;
        let next = last_first + u64::from(last.count);
        Ok((first.max(start).min(next), next, last.ts_micros))
    }

    /// The newest entry of a partition: its first offset and header.
    pub(crate) fn last_entry(
        it: &mut DBRawIterator<'_>,
        topic: ObjectId,
        partition: u32,
    ) -> Result<Option<(u64, Entry<'static>)>> {
        it.seek_for_prev(log_key(topic, partition, u64::MAX));
        let found = match (it.key(), it.value()) {
            (Some(k), Some(v)) => match entry_first_offset(k, topic, partition) {
                Some(first) => {
                    let e = Entry::parse(v)?;
                    Some((first, e.header_only()))
                }
                None => None,
            },
            _ => None,
        };
        it.status()?;
        Ok(found)
    }

    /// Positions `it` on the entry holding `offset`, or else the first entry after it, and
    /// returns that entry's first offset (`None`: no such entry in this partition).
    pub(crate) fn seek_entry(
        &self,
        it: &mut DBRawIterator<'_>,
        topic: ObjectId,
        partition: u32,
        offset: u64,
    ) -> Result<Option<u64>> {
        it.seek_for_prev(log_key(topic, partition, offset));
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Some(first) = entry_first_offset(k, topic, partition) {
                if first + u64::from(Entry::parse(v)?.count) > offset {
                    return Ok(Some(first));
                }
            }
        }
        it.status()?;
        it.seek(log_key(topic, partition, offset));
        let found = it
            .key()
            .and_then(|k| entry_first_offset(k, topic, partition));
        it.status()?;
        Ok(found)
    }
}
