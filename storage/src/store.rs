//! [`Store`]: the RocksDB database, its catalog, per-partition state, and the read API.
//! Writes go through [`crate::commit`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::catalog::{Catalog, ObjectDef, ObjectId, SubscriptionDef, TableDef, TopicDef};
use crate::commit::{spawn_committer, CommitRequest, WriteOp, WriteResult};
use crate::config::StorageConfig;
use crate::error::{Error, Result};
use crate::layout::{
    decode_record, log_key, log_key_offset, record_ts, row_key, sub_next_key, table_prefix,
    LogRecord, ALL_CFS, CF_CATALOG, CF_LOG, CF_META, CF_ROWS, CF_SUBS, META_NEXT_OBJECT_ID,
};
use crate::value::{decode_row, Value};

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

/// The newest records of a partition, consecutive offsets, bounded in bytes.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    records: std::collections::VecDeque<crate::commit::TailRecord>,
    bytes: usize,
}

impl Tail {
    /// Appends records that follow the newest one and evicts the oldest beyond `cap` bytes.
    pub(crate) fn push(&mut self, records: &[crate::commit::TailRecord], cap: usize) {
        for (offset, rec) in records {
            if self
                .records
                .back()
                .is_some_and(|(last, _)| last + 1 != *offset)
            {
                // A gap (never expected): start over rather than serve a hole.
                self.records.clear();
                self.bytes = 0;
            }
            self.bytes += rec.len();
            self.records.push_back((*offset, rec.clone()));
        }
        while self.bytes > cap {
            let Some((_, r)) = self.records.pop_front() else {
                break;
            };
            self.bytes -= r.len();
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

/// The stored state of one partition of a durable subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionSubState {
    /// First offset not yet read.
    pub next: u64,
    /// Pending (unacked) rows: offset and deliveries so far, in offset order.
    pub pending: Vec<(u64, u32)>,
}

/// A page of table rows and the row key of its last row (to continue from).
pub type RowPage = (Vec<Vec<Value>>, Option<Vec<u8>>);

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
    /// Messages subscribers read from the in-memory tail instead of RocksDB.
    pub log_records_from_memory: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) stats: StoreStats,
    pub(crate) db: DB,
    pub(crate) catalog: Catalog,
    pub(crate) partitions: RwLock<HashMap<(ObjectId, u32), Arc<PartitionState>>>,
    pub(crate) next_object_id: AtomicU64,
    pub(crate) config: StorageConfig,
}

impl Inner {
    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // Every column family in ALL_CFS is created by `Store::open`, so the handle exists.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family created at open")
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

    fn load_partition_bounds(&self, topic: ObjectId, partition: u32) -> Result<(u64, u64, i64)> {
        let cf = self.cf(CF_LOG);
        let lo = log_key(topic, partition, 0);
        let hi = log_key(topic, partition, u64::MAX);
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_for_prev(hi);
        let last = match (it.key(), it.value()) {
            (Some(k), Some(v)) if k >= lo.as_slice() => Some((log_key_offset(k)?, record_ts(v)?)),
            _ => None,
        };
        it.status()?;
        let Some((last_offset, last_ts)) = last else {
            return Ok((0, 0, i64::MIN));
        };
        it.seek(lo);
        let first = match it.key() {
            Some(k) if k <= hi.as_slice() => log_key_offset(k)?,
            _ => last_offset,
        };
        it.status()?;
        Ok((first, last_offset + 1, last_ts))
    }
}

/// The storage of one node: RocksDB plus the catalog and the group-commit writer.
/// Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    writer: Arc<Writer>,
}

struct Writer {
    /// Bounded: when full, `write` waits, which is the backpressure on publishers.
    tx: RwLock<Option<mpsc::Sender<CommitRequest>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database in `dir` and starts the committer thread.
    pub fn open(dir: &Path, config: StorageConfig) -> Result<Store> {
        config.validate().map_err(Error::InvalidValue)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            if *name == CF_LOG || *name == CF_ROWS {
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let catalog = Catalog::default();
        {
            let cf = db
                .cf_handle(CF_CATALOG)
                .ok_or_else(|| Error::corrupt("catalog column family"))?;
            for item in db.iterator_cf(cf, IteratorMode::Start) {
                let (_, v) = item?;
                let def: ObjectDef = serde_json::from_slice(&v)
                    .map_err(|e| Error::corrupt(format!("catalog entry: {e}")))?;
                catalog.insert(def);
            }
        }
        let next_id = {
            let cf = db
                .cf_handle(CF_META)
                .ok_or_else(|| Error::corrupt("meta column family"))?;
            match db.get_cf(cf, META_NEXT_OBJECT_ID)? {
                Some(v) => u32::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| Error::corrupt("next id"))?,
                ),
                None => 1,
            }
        };
        let inner = Arc::new(Inner {
            stats: StoreStats::default(),
            db,
            catalog,
            partitions: RwLock::new(HashMap::new()),
            next_object_id: AtomicU64::new(u64::from(next_id)),
            config: config.clone(),
        });
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let committer = spawn_committer(inner.clone(), rx)?;
        Ok(Store {
            inner,
            writer: Arc::new(Writer {
                tx: RwLock::new(Some(tx)),
                committer: Mutex::new(Some(committer)),
            }),
        })
    }

    /// Read counters.
    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Applies `ops` atomically and durably (fsync'd, shared with concurrent writers) and
    /// returns one result per op. If any op fails, none of them is applied.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>> {
        let (reply, rx) = oneshot::channel();
        let tx = self.writer.tx.read().clone().ok_or(Error::ShuttingDown)?;
        tx.send(CommitRequest { ops, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// [`Store::write`] for threads outside the async runtime.
    pub fn write_blocking(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>> {
        let (reply, rx) = oneshot::channel();
        let tx = self.writer.tx.read().clone().ok_or(Error::ShuttingDown)?;
        tx.blocking_send(CommitRequest { ops, reply })
            .map_err(|_| Error::ShuttingDown)?;
        rx.blocking_recv().map_err(|_| Error::ShuttingDown)?
    }

    /// Stops accepting writes, lets the committer finish what is queued, and syncs the WAL.
    /// Idempotent; other clones then get [`Error::ShuttingDown`] from `write`.
    pub fn shutdown(&self) -> Result<()> {
        self.writer.tx.write().take();
        if let Some(handle) = self.writer.committer.lock().take() {
            let _ = handle.join();
        }
        self.inner.db.flush_wal(true)?;
        Ok(())
    }

    /// Positions of a topic partition.
    pub fn partition(&self, topic: &TopicDef, partition: u32) -> Result<Arc<PartitionState>> {
        if partition >= topic.partitions {
            return Err(Error::NoSuchPartition {
                topic: topic.name.clone(),
                partition,
            });
        }
        self.inner.partition(topic.id, partition)
    }

    /// Reads up to `max` messages of one partition with offsets in `[from, to)`, in offset order.
    pub fn read_log(
        &self,
        topic: &TopicDef,
        partition: u32,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<(u64, LogRecord)>> {
        let types = topic.column_types();
        let mut out = Vec::new();
        if from >= to || max == 0 {
            return Ok(out);
        }
        let cf = self.inner.cf(CF_LOG);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(log_key(topic.id, partition, to).to_vec());
        let start = log_key(topic.id, partition, from);
        let it =
            self.inner
                .db
                .iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward));
        for item in it {
            let (k, v) = item?;
            out.push((log_key_offset(&k)?, decode_record(&types, &v)?));
            if out.len() >= max {
                break;
            }
        }
        self.inner
            .stats
            .log_records_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Like [`Store::read_log`], from the in-memory tail of the partition's newest records;
    /// `None` when `from` is not there (older, or trimmed): then read the log. Never blocks
    /// on I/O.
    pub fn read_recent(
        &self,
        topic: &TopicDef,
        partition: u32,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Option<Vec<(u64, LogRecord)>>> {
        let state = self.partition(topic, partition)?;
        if from < state.start_offset() {
            return Ok(None);
        }
        let picked: Vec<crate::commit::TailRecord> = {
            let tail = state.tail.lock();
            match tail.records.front() {
                Some((first, _)) if *first <= from => tail
                    .records
                    .iter()
                    .skip((from - first) as usize)
                    .take_while(|(o, _)| *o < to)
                    .take(max)
                    .cloned()
                    .collect(),
                _ => return Ok(None),
            }
        };
        if picked.is_empty() {
            return Ok(None);
        }
        let types = topic.column_types();
        let out = picked
            .iter()
            .map(|(o, r)| Ok((*o, decode_record(&types, r)?)))
            .collect::<Result<Vec<_>>>()?;
        self.inner
            .stats
            .log_records_from_memory
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(Some(out))
    }

    /// The first offset of the partition whose append time is at or after `ts_micros`
    /// (the high watermark if there is none). Append times never decrease within a
    /// partition, so this is a binary search over offsets.
    pub fn offset_for_ts(&self, topic: &TopicDef, partition: u32, ts_micros: i64) -> Result<u64> {
        let state = self.partition(topic, partition)?;
        let (mut lo, mut hi) = (state.start_offset(), state.next_offset());
        let cf = self.inner.cf(CF_LOG);
        let mut it = self.inner.db.raw_iterator_cf(cf);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // Seek rather than get: retention may have removed `mid` meanwhile.
            it.seek(log_key(topic.id, partition, mid));
            let found = match (it.key(), it.value()) {
                (Some(k), Some(v)) if k < log_key(topic.id, partition, hi).as_slice() => {
                    Some((log_key_offset(k)?, record_ts(v)?))
                }
                _ => None,
            };
            it.status()?;
            match found {
                Some((off, ts)) if ts < ts_micros => lo = off + 1,
                Some((off, _)) => hi = off,
                None => return Ok(hi),
            }
        }
        Ok(lo)
    }

    /// The row of `table` with this primary key (values in key order, already typed).
    pub fn get_row(&self, table: &TableDef, pk: &[Value]) -> Result<Option<Vec<Value>>> {
        let key = row_key(table.id, &pk.iter().collect::<Vec<_>>())?;
        let cf = self.inner.cf(CF_ROWS);
        match self.inner.db.get_pinned_cf(cf, key)? {
            Some(v) => {
                self.inner
                    .stats
                    .table_rows_read
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Some(decode_row(&table.column_types(), &v)?))
            }
            None => Ok(None),
        }
    }

    /// Up to `max` rows of `table` in primary key order, starting after the row key `after`.
    /// Returns the rows and the key of the last one (to continue from).
    pub fn scan_rows(&self, table: &TableDef, after: Option<&[u8]>, max: usize) -> Result<RowPage> {
        let types = table.column_types();
        let prefix = table_prefix(table.id);
        let cf = self.inner.cf(CF_ROWS);
        let mut ro = ReadOptions::default();
        if let Some(upper) = crate::keys::prefix_successor(&prefix) {
            ro.set_iterate_upper_bound(upper);
        }
        let start: Vec<u8> = after.map(<[u8]>::to_vec).unwrap_or_else(|| prefix.to_vec());
        let it =
            self.inner
                .db
                .iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward));
        let mut rows = Vec::new();
        let mut last = None;
        for item in it {
            let (k, v) = item?;
            if after == Some(&k[..]) {
                continue;
            }
            rows.push(decode_row(&types, &v)?);
            last = Some(k.to_vec());
            if rows.len() >= max {
                break;
            }
        }
        self.inner
            .stats
            .table_rows_read
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok((rows, last))
    }

    /// Removes messages older than each topic's retention. Returns how many partitions it
    /// trimmed. Blocks: call it from a background thread, not the async runtime.
    pub fn enforce_retention(&self, now_micros: i64) -> Result<usize> {
        let mut ops = Vec::new();
        for obj in self.catalog().list() {
            // Topics, and tables' change logs.
            let topic = match &*obj {
                ObjectDef::Topic(t) => t.clone(),
                ObjectDef::Table(t) => t.change_log(),
                ObjectDef::Subscription(_) => continue,
            };
            let topic = &topic;
            let Some(retention_ms) = topic.retention_ms else {
                continue;
            };
            let cutoff = now_micros.saturating_sub((retention_ms as i64).saturating_mul(1000));
            for p in 0..topic.partitions {
                let first_kept = self.offset_for_ts(topic, p, cutoff)?;
                if first_kept > self.partition(topic, p)?.start_offset() {
                    ops.push(WriteOp::Trim {
                        topic: topic.id,
                        partition: p,
                        before: first_kept,
                    });
                }
            }
        }
        let n = ops.len();
        if n > 0 {
            self.write_blocking(ops)?;
        }
        Ok(n)
    }

    /// Every row of `table` and the next offset of its change log, read from one
    /// consistent point in time: the rows are exactly the state after every change below
    /// that offset (what `SUBSCRIBE table WITH (snapshot = true)` starts from).
    pub fn table_snapshot(&self, table: &TableDef) -> Result<(Vec<Vec<Value>>, u64)> {
        let snap = self.inner.db.snapshot();
        let log = log_key(table.id, 0, 0);
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let mut it = self.inner.db.raw_iterator_cf_opt(self.inner.cf(CF_LOG), ro);
        it.seek_for_prev(log_key(table.id, 0, u64::MAX));
        let next = match it.key() {
            Some(k) if k >= log.as_slice() => log_key_offset(k)? + 1,
            _ => self.inner.partition(table.id, 0)?.start_offset(),
        };
        it.status()?;
        let types = table.column_types();
        let prefix = table_prefix(table.id);
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        ro.set_iterate_upper_bound(table_prefix(table.id + 1).to_vec());
        let mut rows = Vec::new();
        for item in self.inner.db.iterator_cf_opt(
            self.inner.cf(CF_ROWS),
            ro,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (_, v) = item?;
            rows.push(decode_row(&types, &v)?);
        }
        self.inner
            .stats
            .table_rows_read
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok((rows, next))
    }

    /// The stored positions and pending rows of a durable subscription, one entry per
    /// partition of its topic (`partitions` of them).
    pub fn subscription_state(
        &self,
        sub: &SubscriptionDef,
        partitions: u32,
    ) -> Result<Vec<PartitionSubState>> {
        let mut out: Vec<PartitionSubState> = (0..partitions)
            .map(|p| PartitionSubState {
                next: sub.start.get(p as usize).copied().unwrap_or(0),
                pending: vec![],
            })
            .collect();
        let cf = self.inner.cf(CF_SUBS);
        let prefix = table_prefix(sub.id);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(table_prefix(sub.id + 1).to_vec());
        for item in
            self.inner
                .db
                .iterator_cf_opt(cf, ro, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            let bad = || Error::corrupt("subscription state entry");
            let p = u32::from_be_bytes(
                k.get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(bad)?,
            );
            let Some(state) = out.get_mut(p as usize) else {
                continue;
            };
            if k.len() == sub_next_key(0, 0).len() {
                state.next = u64::from_be_bytes(v.as_ref().try_into().map_err(|_| bad())?);
            } else {
                let offset = u64::from_be_bytes(
                    k.get(9..17)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(bad)?,
                );
                let deliveries = u32::from_be_bytes(v.as_ref().try_into().map_err(|_| bad())?);
                state.pending.push((offset, deliveries));
            }
        }
        Ok(out)
    }

    /// Approximate bytes of live data (for `SHOW TOPICS` and metrics).
    pub fn approximate_size(&self) -> u64 {
        ALL_CFS
            .iter()
            .filter_map(|cf| {
                self.inner
                    .db
                    .property_int_value_cf(self.inner.cf(cf), "rocksdb.estimate-live-data-size")
                    .ok()
                    .flatten()
            })
            .sum()
    }
}
