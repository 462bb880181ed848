//! [`Store`]: opens the RocksDB database, owns the committer thread, and serves reads
//! (its gossip reads are in [`gossip`]). What it shares with the committer is
//! [`Inner`](crate::inner::Inner); writes go through [`crate::commit`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB};
use tokio::sync::{mpsc, oneshot, watch};

use crate::catalog::{Catalog, ObjectDef, SubscriptionDef, TableDef, TopicDef};
use crate::commit::{
    commit_in_place, spawn_committer, Commit, CommitGate, CommitRequest, Lane, UnitResults,
    WriteOp, WriteResult,
};
use crate::config::StorageConfig;
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::inner::{Inner, StoreStats};
use crate::layout::{
    entry_first_offset, log_key, row_key, sub_next_key, table_prefix, Entry, LogRecord, ALL_CFS,
    CF_LOG, CF_RAFT, CF_ROWS, CF_SUBS,
};
use crate::partition::PartitionState;
use crate::raft::{entry_index, entry_key, slot_key, GroupId, KeyRange, Space};
use crate::value::{decode_row, ColumnType, Value};

mod gossip;

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

/// Appends to `out` the messages of one entry (first offset `first`) in `[from, to)`, up to
/// `max` in `out`. Returns true when nothing more is wanted (`out` is full or `to` reached).
fn collect(
    types: &[ColumnType],
    first: u64,
    data: &[u8],
    from: u64,
    to: u64,
    max: usize,
    out: &mut Vec<(u64, LogRecord)>,
) -> Result<bool> {
    let entry = Entry::parse(data)?;
    let end = first + u64::from(entry.count);
    let skip = from.saturating_sub(first) as u32;
    let want = (max - out.len()).min(to.min(end).saturating_sub(first + u64::from(skip)) as usize);
    entry.decode(types, skip, want, |i, r| {
        out.push((first + u64::from(i), r))
    })?;
    Ok(out.len() >= max || end >= to)
}

/// One key of a snapshot: its column family, key and value.
pub type RangeItem = (Space, Vec<u8>, Vec<u8>);

/// A queued [`Commit`]'s answer, to be awaited.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<UnitResults>>);

impl Pending {
    /// Each unit's outcome, once the commit is written.
    pub async fn wait(self) -> Result<UnitResults> {
        self.0.await.map_err(|_| Error::ShuttingDown)?
    }
}

/// The one unit's result of a single-unit commit.
fn single(mut results: UnitResults) -> Result<Vec<WriteResult>> {
    results
        .pop()
        .unwrap_or_else(|| Err(Error::InvalidValue("commit without a unit".into())))
}

/// The storage of one node: RocksDB plus the catalog and the group-commit writer.
/// Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
    pub(crate) writer: Arc<Writer>,
}

/// A handle that does not keep the database open (for long-lived holders that may
/// outlive the node, such as Raft's log readers).
#[derive(Clone)]
pub struct WeakStore {
    inner: std::sync::Weak<Inner>,
    writer: std::sync::Weak<Writer>,
}

impl std::fmt::Debug for WeakStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakStore").finish_non_exhaustive()
    }
}

impl WeakStore {
    /// The store, unless every strong handle is gone.
    pub fn upgrade(&self) -> Option<Store> {
        Some(Store {
            inner: self.inner.upgrade()?,
            writer: self.writer.upgrade()?,
        })
    }
}

/// The write path's end that the handles own: the queue to the committer, its thread,
/// and the gate that decides who commits each request.
pub(crate) struct Writer {
    /// Bounded: when full, `write` waits, which is the backpressure on publishers.
    tx: RwLock<Option<mpsc::Sender<CommitRequest>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// Who commits next: the committer thread, or a lone writer in place. Shared with
    /// the committer thread.
    pub(crate) gate: Arc<CommitGate>,
    /// Dropped after the committer stopped and the database closed: what
    /// [`Store::close`] waits for.
    _closed: oneshot::Sender<()>,
    /// Its other end, taken by the first [`Store::close`].
    on_close: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Writer {
    /// Takes no more requests, and waits for the committer to finish what is queued.
    fn stop(&self) {
        self.tx.write().take();
        if let Some(handle) = self.committer.lock().take() {
            // Never on the committer itself (it holds no handle, but a join there would hang).
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Writer {
    /// With the last handle gone, the committer stops and the database closes before this
    /// returns, not later on the committer's own thread (where, at process exit, closing
    /// raced RocksDB's static teardown and crashed).
    fn drop(&mut self) {
        self.stop();
    }
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
        // Reuse finished WAL files instead of growing new ones: an fdatasync on a file that
        // is overwritten in place has no file-size metadata to commit, which is most of
        // the difference between a durable ack and a plain write on an ext4 disk.
        opts.set_recycle_log_file_num(4);
        // A WAL file is finished (and recycled) only once every family with data in it has
        // been flushed. The small families (catalog, Raft metadata, subscriptions) fill
        // their memtables slowly, so without a bound on the WAL's total size they would
        // hold every WAL file for ever: the WAL grows by a file per memtable of the log,
        // restarts replay all of it, and no file is ever recycled.
        opts.set_max_total_wal_size(config.max_wal_bytes);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            if *name == CF_LOG || *name == CF_ROWS {
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
                // Point gets that mostly miss once their keys are in SST files: message id
                // lookups (every new id is a miss) and a table's key checks on insert. A
                // whole-key bloom filter answers a miss without reading the file's blocks.
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                o.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let catalog = Catalog::default();
        let next_id = Inner::load_catalog(&db, &catalog)?;
        let inner = Arc::new(Inner {
            stats: StoreStats::default(),
            db,
            catalog,
            partitions: RwLock::new(HashMap::new()),
            next_object_id: AtomicU64::new(next_id),
            config: config.clone(),
            origin: AtomicU64::new(1),
            hlc: Hlc::new(),
            gossip_changes: watch::channel(0).0,
        });
        let gate = Arc::new(CommitGate::default());
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let committer = spawn_committer(inner.clone(), gate.clone(), rx)?;
        let (closed, on_close) = oneshot::channel();
        Ok(Store {
            inner,
            writer: Arc::new(Writer {
                tx: RwLock::new(Some(tx)),
                committer: Mutex::new(Some(committer)),
                gate,
                _closed: closed,
                on_close: Mutex::new(Some(on_close)),
            }),
        })
    }

    /// A handle that does not keep the database open.
    pub fn downgrade(&self) -> WeakStore {
        WeakStore {
            inner: Arc::downgrade(&self.inner),
            writer: Arc::downgrade(&self.writer),
        }
    }

    /// How many handles share this database. It stays open (and locked) until the last
    /// one is dropped.
    pub fn handle_count(&self) -> usize {
        // Only handles hold the writer; the committer thread holds `inner` too.
        Arc::strong_count(&self.writer)
    }

    /// Drops this handle and waits until every other one is gone: when it returns, the
    /// committer has stopped and the database is closed, so its directory can be opened
    /// again. Each owner of a handle lets go of it in its own time; nothing is polled.
    /// Only the first call waits (a second returns at once).
    pub async fn close(self) {
        let on_close = self.writer.on_close.lock().take();
        drop(self);
        if let Some(rx) = on_close {
            // An error is the sender dropped with the writer: that is the signal.
            let _ = rx.await;
        }
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
    /// The writes are queued for a group commit; [`Store::write_in`] names a writer alone.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>> {
        self.write_in(Lane::Queued, ops).await
    }

    /// [`Store::write`] made in `lane`.
    pub async fn write_in(&self, lane: Lane, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>> {
        single(self.commit(Commit::durable(ops).in_lane(lane)).await?)
    }

    /// [`Store::write`] for threads outside the async runtime.
    pub fn write_blocking(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>> {
        let (reply, rx) = oneshot::channel();
        let tx = self.writer.tx.read().clone().ok_or(Error::ShuttingDown)?;
        // Noted as a queued writer, so one around it does not count as alone.
        self.writer.gate.same_writer(Lane::Queued);
        self.writer.gate.queueing();
        tx.blocking_send(CommitRequest {
            commit: Commit::durable(ops),
            reply,
        })
        .map_err(|_| {
            self.writer.gate.unqueued();
            Error::ShuttingDown
        })?;
        single(rx.blocking_recv().map_err(|_| Error::ShuttingDown)??)
    }

    /// Hands a [`Commit`] to the committer and returns each unit's outcome; the outer
    /// error means nothing was written (the batch failed, or the store is shutting down).
    pub async fn commit(&self, commit: Commit) -> Result<UnitResults> {
        self.submit(commit).await?.wait().await
    }

    /// Queues a [`Commit`] and returns once it is queued, so that commits submitted one
    /// after another are applied in that order (and likely in one batch). A writer alone
    /// ([`Lane::Alone`]) may commit in place instead, on this thread, and returns once it
    /// is committed.
    pub async fn submit(&self, commit: Commit) -> Result<Pending> {
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest { commit, reply };
        let (tx, req) = {
            // Held, it keeps shutdown waiting until an in-place commit is done.
            let guard = self.writer.tx.read();
            let tx = guard.as_ref().ok_or(Error::ShuttingDown)?;
            match commit_in_place(&self.inner, &self.writer.gate, req) {
                Ok(()) => return Ok(Pending(rx)),
                Err(req) => (tx.clone(), req),
            }
        };
        self.writer.gate.queueing();
        tx.send(req).await.map_err(|_| {
            self.writer.gate.unqueued();
            Error::ShuttingDown
        })?;
        Ok(Pending(rx))
    }

    /// A Raft group's slot value.
    pub fn raft_slot(&self, group: GroupId, slot: u8) -> Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .db
            .get_cf(self.inner.cf(CF_RAFT), slot_key(group, slot))?)
    }

    /// A Raft group's log entries with indexes in `[from, to)`, in order.
    pub fn raft_entries(&self, group: GroupId, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        let mut it = self.inner.db.raw_iterator_cf(self.inner.cf(CF_RAFT));
        it.seek(entry_key(group, from));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            match entry_index(k, group) {
                Some(i) if i < to => out.push((i, v.to_vec())),
                _ => break,
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// A Raft group's newest log entry.
    pub fn raft_last_entry(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>> {
        let mut it = self.inner.db.raw_iterator_cf(self.inner.cf(CF_RAFT));
        it.seek_for_prev(entry_key(group, u64::MAX));
        let found = match (it.key(), it.value()) {
            (Some(k), Some(v)) => entry_index(k, group).map(|i| (i, v.to_vec())),
            _ => None,
        };
        it.status()?;
        Ok(found)
    }

    /// Every key and value in `ranges`, read from one consistent RocksDB snapshot (a Raft
    /// snapshot's data).
    pub fn read_ranges(&self, ranges: &[KeyRange]) -> Result<Vec<RangeItem>> {
        let snap = self.inner.db.snapshot();
        let mut out = Vec::new();
        for r in ranges {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            let mut it = self
                .inner
                .db
                .raw_iterator_cf_opt(self.inner.cf(r.space.cf()), ro);
            it.seek(&r.from);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !r.contains(k) {
                    break;
                }
                out.push((r.space, k.to_vec(), v.to_vec()));
                it.next();
            }
            it.status()?;
        }
        Ok(out)
    }

    /// Stops accepting writes, lets the committer finish what is queued, and syncs the WAL.
    /// Idempotent; other clones then get [`Error::ShuttingDown`] from `write`.
    pub fn shutdown(&self) -> Result<()> {
        self.writer.stop();
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
        let state = self.partition(topic, partition)?;
        let from = from.max(state.start_offset());
        let types = topic.column_types();
        let mut out = Vec::new();
        if from >= to || max == 0 {
            return Ok(out);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(log_key(topic.id, partition, to).to_vec());
        let mut it = self.inner.db.raw_iterator_cf_opt(self.inner.cf(CF_LOG), ro);
        let mut at = self.inner.seek_entry(&mut it, topic.id, partition, from)?;
        while let Some(first) = at {
            let Some(value) = it.value() else { break };
            let done = collect(&types, first, value, from, to, max, &mut out)?;
            if done {
                break;
            }
            it.next();
            at = it
                .key()
                .and_then(|k| entry_first_offset(k, topic.id, partition));
        }
        it.status()?;
        self.inner
            .stats
            .log_records_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Like [`Store::read_log`], from the in-memory tail of the partition's newest entries;
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
        if from < state.start_offset() || from >= to || max == 0 {
            return Ok(None);
        }
        let Some(picked) = state.tail.lock().read(from, to) else {
            return Ok(None);
        };
        let types = topic.column_types();
        let mut out = Vec::new();
        for e in &picked {
            if collect(&types, e.first, &e.data, from, to, max, &mut out)? {
                break;
            }
        }
        self.inner
            .stats
            .log_records_from_memory
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(Some(out))
    }

    /// The first offset of the partition whose append time is at or after `ts_micros`
    /// (the high watermark if there is none). Append times never decrease within a
    /// partition, so this is a binary search over offsets; every message of one entry
    /// shares its append time.
    pub fn offset_for_ts(&self, topic: &TopicDef, partition: u32, ts_micros: i64) -> Result<u64> {
        let state = self.partition(topic, partition)?;
        let (mut lo, mut hi) = (state.start_offset(), state.next_offset());
        let mut it = self.inner.db.raw_iterator_cf(self.inner.cf(CF_LOG));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // Seek rather than get: retention may have removed `mid` meanwhile.
            let Some(first) = self.inner.seek_entry(&mut it, topic.id, partition, mid)? else {
                return Ok(hi);
            };
            let Some(value) = it.value() else {
                return Ok(hi);
            };
            let entry = Entry::parse(value)?;
            if first >= hi {
                return Ok(hi);
            }
            if entry.ts_micros < ts_micros {
                lo = first + u64::from(entry.count);
            } else {
                hi = first.max(lo);
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
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let mut it = self.inner.db.raw_iterator_cf_opt(self.inner.cf(CF_LOG), ro);
        let next = match Inner::last_entry(&mut it, table.id, 0)? {
            Some((first, entry)) => first + u64::from(entry.count),
            None => self.inner.partition(table.id, 0)?.start_offset(),
        };
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
