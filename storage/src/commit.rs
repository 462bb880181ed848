//! The committer: the one place that changes the database, one commit at a time.
//!
//! ```text
//!  writers ──► bounded queue ──► committer thread
//!                                  │ drain up to max_batch_requests requests
//!                                  │ apply each request (all or nothing) into one WriteBatch
//!                                  │ one write + one fsync for the whole batch   (group commit)
//!                                  │ publish new offsets / catalog, then reply to every writer
//! ```
//!
//! A writer alone commits its request the same way on its own thread ([`CommitGate`]).
//!
//! Everything that must be decided in order — offset assignment, append timestamps,
//! duplicate-key checks, object ids — is decided here, deterministically from the stored
//! state and the order of requests. That is what lets a Raft state machine feed the same
//! [`WriteOp`]s later and get the same results on every replica.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{ObjectDef, ObjectId, Replication};
use crate::error::{Error, Result};
use crate::gossip::RowChange;
use crate::layout::{
    catalog_key, check_row, log_key, log_start_key, row_key, sub_next_key, sub_pending_key,
    table_prefix, Records, CF_CATALOG, CF_GOSSIP, CF_LOG, CF_META, CF_ROWS, CF_SUBS,
    META_NEXT_OBJECT_ID,
};
use crate::raft::{entry_key, slot_key, GroupId, KeyRange, RaftWrite, CF_RAFT};
use crate::store::Inner;
use crate::value::{encode_row, Value};

mod gate;
mod gossip;
mod msg_ids;

mod ops;

pub use gate::queue_if;
pub(crate) use gate::{commit_in_place, CommitGate};
pub use ops::{
    Commit, OnConflict, SubChange, UnitResults, WriteOp, WriteResult, CHANGE_DELETE, CHANGE_INSERT,
    CHANGE_UPDATE,
};

/// A log entry as the in-memory tail keeps it: first offset, message count, stored bytes.
#[derive(Debug, Clone)]
pub(crate) struct TailEntry {
    pub(crate) first: u64,
    pub(crate) count: u32,
    pub(crate) data: bytes::Bytes,
}

/// Answers owed to writers, sent once the committer's turn is over (so a writer woken by
/// its answer finds the turn free).
type Answers = Vec<(oneshot::Sender<Result<UnitResults>>, Result<UnitResults>)>;

fn send_answers(answers: Answers) {
    for (reply, outcome) in answers {
        let _ = reply.send(outcome);
    }
}

pub(crate) struct CommitRequest {
    pub(crate) commit: Commit,
    pub(crate) reply: oneshot::Sender<Result<UnitResults>>,
}

impl CommitRequest {
    fn is_catalog(&self) -> bool {
        self.commit
            .units
            .iter()
            .any(|u| u.iter().any(WriteOp::is_catalog))
    }
}

pub(crate) fn spawn_committer(
    inner: Arc<Inner>,
    rx: mpsc::Receiver<CommitRequest>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("eddy-commit".into())
        .spawn(move || Committer { inner }.run(rx))
        .map_err(|e| Error::InvalidValue(format!("cannot start committer thread: {e}")))
}

/// Now, in microseconds since the epoch (UTC): the clock append times come from.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

struct Committer {
    inner: Arc<Inner>,
}

/// Puts and deletes of one request, in order, before they join the group's WriteBatch.
#[derive(Default)]
struct StagedBatch {
    items: Vec<(&'static str, Vec<u8>, BatchItem)>,
}

enum BatchItem {
    Put(bytes::Bytes),
    Delete,
    /// Deletes `[key, to)`.
    DeleteRange(Vec<u8>),
}

impl StagedBatch {
    fn put(&mut self, cf: &'static str, key: Vec<u8>, value: impl Into<bytes::Bytes>) {
        self.items.push((cf, key, BatchItem::Put(value.into())));
    }
    fn delete(&mut self, cf: &'static str, key: Vec<u8>) {
        self.items.push((cf, key, BatchItem::Delete));
    }
    fn delete_range(&mut self, cf: &'static str, from: Vec<u8>, to: Vec<u8>) {
        self.items.push((cf, from, BatchItem::DeleteRange(to)));
    }
}

/// Keys of one column family staged in a batch, with their values (`None`: deleted).
type Overlay = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// Changes staged in the current batch but not yet durable; lookups see them before the
/// database so that requests in one batch observe each other in queue order.
#[derive(Default)]
struct Staged {
    /// (topic, partition) -> (next offset, last append time)
    offsets: HashMap<(ObjectId, u32), (u64, i64)>,
    /// row key -> the row's encoded value (None: deleted)
    rows: Overlay,
    /// message id key or its expiry key -> value (None: deleted)
    msg_ids: Overlay,
    /// (topic, partition) -> new start offset
    trims: HashMap<(ObjectId, u32), u64>,
    /// (log, partition) -> appended entries, for the in-memory tail
    appended: HashMap<(ObjectId, u32), Vec<TailEntry>>,
    /// Ranges a snapshot replaced: memory reloads them.
    replaced: Vec<KeyRange>,
    /// The unit's append time chosen by a Raft leader (a unit's layer only).
    at: Option<i64>,
    /// (gossip object, origin) -> its version vector entry
    vv: HashMap<(ObjectId, crate::gossip::Origin), crate::gossip::VvEntry>,
    /// row key -> the row's gossip version
    versions: HashMap<Vec<u8>, crate::gossip::RowVersion>,
    /// A local write to a gossip object is in the batch (peers are told once durable).
    local_deltas: bool,
}

impl Staged {
    fn merge(&mut self, layer: Staged) {
        self.offsets.extend(layer.offsets);
        self.rows.extend(layer.rows);
        self.msg_ids.extend(layer.msg_ids);
        for (k, mut v) in layer.appended {
            self.appended.entry(k).or_default().append(&mut v);
        }
        for (k, v) in layer.trims {
            let e = self.trims.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
        self.replaced.extend(layer.replaced);
        self.vv.extend(layer.vv);
        self.versions.extend(layer.versions);
        self.local_deltas |= layer.local_deltas;
    }
}

impl Committer {
    fn run(self, mut rx: mpsc::Receiver<CommitRequest>) {
        let max = self.inner.config.max_batch_requests;
        while let Some(first) = rx.blocking_recv() {
            let turn = self.inner.gate.turn.lock();
            let mut reqs = vec![first];
            while reqs.len() < max {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            let mut answers = Vec::with_capacity(reqs.len());
            let taken = reqs.len();
            // Catalog changes commit on their own so that data ops never see a half-made object.
            let mut data = Vec::with_capacity(reqs.len());
            for req in reqs {
                if req.is_catalog() {
                    self.commit_data(std::mem::take(&mut data), &mut answers);
                    self.commit_catalog(req, &mut answers);
                } else {
                    data.push(req);
                }
            }
            self.commit_data(data, &mut answers);
            self.inner.gate.committed(taken);
            drop(turn);
            send_answers(answers);
        }
    }

    fn write_options(&self, sync: bool) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.inner.config.sync && sync);
        wo
    }

    fn commit_data(&self, mut reqs: Vec<CommitRequest>, answers: &mut Answers) {
        if reqs.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        let mut staged = Staged::default();
        let mut outcomes = Vec::with_capacity(reqs.len());
        let mut sync = false;
        for req in &mut reqs {
            sync |= req.commit.sync;
            let at = req.commit.at;
            let mut results = Vec::with_capacity(req.commit.units.len());
            for unit in &mut req.commit.units {
                // Each unit applies all-or-nothing: it stages into its own layer on top of
                // the group's, and the layer joins the group only if every op succeeded.
                let mut items = StagedBatch::default();
                let mut layer = Staged {
                    at,
                    ..Staged::default()
                };
                match self.apply_data(unit, &mut items, &mut layer, &staged) {
                    Ok(r) => {
                        self.add_items(&mut batch, items);
                        staged.merge(layer);
                        results.push(Ok(r));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            self.apply_raft(&req.commit.raft, &mut batch, &mut staged);
            outcomes.push(results);
        }
        let batch_was_empty = batch.is_empty();
        let written = if batch_was_empty {
            Ok(())
        } else {
            self.inner.db.write_opt(batch, &self.write_options(sync))
        };
        match written {
            Ok(()) => {
                let stats = &self.inner.stats;
                stats
                    .write_requests
                    .fetch_add(reqs.len() as u64, Ordering::Relaxed);
                stats
                    .commits
                    .fetch_add(u64::from(!batch_was_empty), Ordering::Relaxed);
                self.publish(&staged);
                for (req, outcome) in reqs.into_iter().zip(outcomes) {
                    answers.push((req.reply, Ok(outcome)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                for req in reqs {
                    answers.push((req.reply, Err(Error::Engine(e.clone()))));
                }
            }
        }
    }

    fn add_items(&self, batch: &mut WriteBatch, items: StagedBatch) {
        for (cf, key, item) in items.items {
            let cf = self.inner.cf(cf);
            match item {
                BatchItem::Put(val) => batch.put_cf(cf, key, val),
                BatchItem::Delete => batch.delete_cf(cf, key),
                BatchItem::DeleteRange(to) => batch.delete_range_cf(cf, key, to),
            }
        }
    }

    /// Stages Raft log and slot writes; a snapshot's replaced ranges are noted in
    /// `staged` so memory is reloaded from them once they are written.
    fn apply_raft(&self, writes: &[RaftWrite], batch: &mut WriteBatch, staged: &mut Staged) {
        let cf = self.inner.cf(CF_RAFT);
        for w in writes {
            match w {
                RaftWrite::Put { group, slot, value } => {
                    batch.put_cf(cf, slot_key(*group, *slot), value)
                }
                RaftWrite::Entries { group, entries } => {
                    for (index, entry) in entries {
                        batch.put_cf(cf, entry_key(*group, *index), entry);
                    }
                }
                RaftWrite::TruncateFrom { group, index } => {
                    batch.delete_range_cf(
                        cf,
                        &entry_key(*group, *index)[..],
                        &group_end(*group)[..],
                    );
                }
                RaftWrite::PurgeTo { group, index } => batch.delete_range_cf(
                    cf,
                    entry_key(*group, 0),
                    entry_key(*group, index.saturating_add(1)),
                ),
                RaftWrite::DropGroup { group } => {
                    batch.delete_range_cf(cf, &slot_key(*group, 0)[..], &group_end(*group)[..]);
                }
                RaftWrite::Replace { ranges, items } => {
                    for r in ranges {
                        let cf = self.inner.cf(r.space.cf());
                        if r.to.is_empty() {
                            // Unbounded: no key of ours starts with 0xff bytes this long.
                            batch.delete_range_cf(cf, &r.from[..], &[0xffu8; 32][..]);
                        } else {
                            batch.delete_range_cf(cf, &r.from, &r.to);
                        }
                    }
                    for (space, key, value) in items {
                        batch.put_cf(self.inner.cf(space.cf()), key, value);
                    }
                    staged.replaced.extend(ranges.iter().cloned());
                }
            }
        }
    }

    /// Makes durable changes visible: the in-memory tail, offsets, watermarks, trims.
    fn publish(&self, staged: &Staged) {
        if !staged.replaced.is_empty() {
            self.inner.reload(&staged.replaced);
        }
        for (&(topic, partition), &(next, last_ts)) in &staged.offsets {
            if let Ok(p) = self.inner.partition(topic, partition) {
                // The tail first: a reader woken by the watermark finds the records there.
                if let Some(records) = staged.appended.get(&(topic, partition)) {
                    p.tail
                        .lock()
                        .push(records, self.inner.config.tail_cache_bytes);
                }
                p.last_ts.store(last_ts, Ordering::Release);
                p.next_offset.store(next, Ordering::Release);
                p.watermark.send_replace(next);
            }
        }
        for (&(topic, partition), &start) in &staged.trims {
            if let Ok(p) = self.inner.partition(topic, partition) {
                p.start_offset.fetch_max(start, Ordering::AcqRel);
            }
        }
        if staged.local_deltas {
            self.inner.gossip_changes.send_modify(|n| *n += 1);
        }
    }

    /// Stages one request's ops. Takes the encoded messages out of its `Append`s (the
    /// request is answered, never retried, whatever the outcome).
    fn apply_data(
        &self,
        ops: &mut [WriteOp],
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<Vec<WriteResult>> {
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                WriteOp::Append {
                    topic,
                    partition,
                    records,
                } => {
                    let def = self.object(*topic)?;
                    let def = topic_partition(&def, *partition)?;
                    let records = std::mem::take(records);
                    let (first_offset, ts_micros) = if def.replication == Replication::Gossip {
                        self.append_local_gossip(*topic, *partition, records, batch, staged, group)?
                    } else {
                        self.append_entries(*topic, *partition, records, batch, staged, group)?
                    };
                    WriteResult::Appended {
                        partition: *partition,
                        first_offset,
                        ts_micros,
                    }
                }
                WriteOp::AppendOnce {
                    topic,
                    partition,
                    ids,
                    records,
                } => {
                    let def = self.object(*topic)?;
                    let def = topic_partition(&def, *partition)?;
                    if def.replication == Replication::Gossip {
                        return Err(Error::InvalidValue(format!(
                            "_msg_id needs a topic replicated by raft; \"{}\" uses gossip",
                            def.name
                        )));
                    }
                    let window =
                        i64::try_from(def.dedup_window_ms.saturating_mul(1000)).unwrap_or(i64::MAX);
                    let records = std::mem::take(records);
                    self.append_once(
                        *topic, *partition, ids, window, records, batch, staged, group,
                    )?
                }
                WriteOp::Insert {
                    table,
                    rows,
                    on_conflict,
                } => {
                    let def = self.table(*table)?;
                    let mut written = 0;
                    let mut changes = Records::new();
                    let mut gossip = (def.replication == Replication::Gossip).then(Vec::new);
                    for row in rows.iter() {
                        check_row(&def.columns, row)?;
                        let pk: Vec<&Value> = def.primary_key.iter().map(|&i| &row[i]).collect();
                        let key = row_key(def.id, &pk)?;
                        let exists = self.current_row(&key, staged, group)?.is_some();
                        if exists {
                            match on_conflict {
                                OnConflict::Error => {
                                    return Err(Error::DuplicateKey {
                                        table: def.name.clone(),
                                    })
                                }
                                OnConflict::Ignore => continue,
                                OnConflict::Replace => {}
                            }
                        }
                        let mut buf = Vec::new();
                        encode_row(row, &mut buf);
                        if let Some(g) = &mut gossip {
                            g.push(RowChange {
                                key: key[4..].to_vec(),
                                row: Some(serde_bytes::ByteBuf::from(buf.clone())),
                            });
                        }
                        put_row(key, buf, exists, &mut changes, batch, staged);
                        written += 1;
                    }
                    self.append_entries(def.id, 0, changes, batch, staged, group)?;
                    if let Some(rows) = gossip.filter(|g| !g.is_empty()) {
                        self.record_local_rows(def.id, rows, batch, staged, group)?;
                    }
                    WriteResult::Rows(written)
                }
                WriteOp::Delete { table, keys } => {
                    let def = self.table(*table)?;
                    let mut deleted = 0;
                    let mut changes = Records::new();
                    // Gossip tables leave a tombstone even for a row not here (yet): the
                    // delete reaches the nodes that have it.
                    let mut gossip = (def.replication == Replication::Gossip).then(Vec::new);
                    for pk in keys.iter() {
                        let key = row_key(def.id, &pk.iter().collect::<Vec<_>>())?;
                        if let Some(g) = &mut gossip {
                            g.push(RowChange {
                                key: key[4..].to_vec(),
                                row: None,
                            });
                        }
                        if let Some(old) = self.current_row(&key, staged, group)? {
                            remove_row(key, &old, &mut changes, batch, staged);
                            deleted += 1;
                        }
                    }
                    self.append_entries(def.id, 0, changes, batch, staged, group)?;
                    if let Some(rows) = gossip.filter(|g| !g.is_empty()) {
                        self.record_local_rows(def.id, rows, batch, staged, group)?;
                    }
                    WriteResult::Rows(deleted)
                }
                WriteOp::SubState { sub, changes } => {
                    match self.inner.catalog.by_id(*sub).as_deref() {
                        Some(ObjectDef::Subscription(_)) => {}
                        _ => {
                            return Err(Error::ObjectNotFound {
                                name: format!("subscription #{sub}"),
                            })
                        }
                    }
                    for c in changes {
                        match *c {
                            SubChange::Next { partition, next } => batch.put(
                                CF_SUBS,
                                sub_next_key(*sub, partition).to_vec(),
                                next.to_be_bytes().to_vec(),
                            ),
                            SubChange::Pending {
                                partition,
                                offset,
                                deliveries,
                            } => batch.put(
                                CF_SUBS,
                                sub_pending_key(*sub, partition, offset).to_vec(),
                                deliveries.to_be_bytes().to_vec(),
                            ),
                            SubChange::Done { partition, offset } => batch
                                .delete(CF_SUBS, sub_pending_key(*sub, partition, offset).to_vec()),
                        }
                    }
                    WriteResult::Done
                }
                WriteOp::Merge(deltas) => self.merge(deltas, batch, staged, group)?,
                WriteOp::Collect { object, before } => {
                    self.collect(*object, *before, batch, staged, group)?
                }
                WriteOp::Resync { table, rows, vv } => {
                    self.resync(*table, std::mem::take(rows), vv, batch, staged, group)?
                }
                WriteOp::Skip { object, origin, to } => {
                    self.skip(*object, *origin, *to, batch, staged, group)?
                }
                WriteOp::Trim {
                    topic,
                    partition,
                    before,
                } => {
                    // Entries wholly below `before` go; one that straddles it stays, and
                    // the start key hides its older messages.
                    let p = self.inner.partition(*topic, *partition)?;
                    let (next, _) = self.next_position(*topic, *partition, staged, group)?;
                    let before = (*before).clamp(p.start_offset(), next);
                    let mut it = self.inner.db.raw_iterator_cf(self.inner.cf(CF_LOG));
                    let cut = match self.inner.seek_entry(&mut it, *topic, *partition, before)? {
                        Some(first) if first < before => first,
                        _ => before,
                    };
                    batch.delete_range(
                        CF_LOG,
                        log_key(*topic, *partition, 0).to_vec(),
                        log_key(*topic, *partition, cut).to_vec(),
                    );
                    batch.put(
                        CF_LOG,
                        log_start_key(*topic, *partition).to_vec(),
                        before.to_be_bytes().to_vec(),
                    );
                    staged.trims.insert((*topic, *partition), before);
                    WriteResult::Done
                }
                WriteOp::Create(_)
                | WriteOp::Alter(_)
                | WriteOp::Place { .. }
                | WriteOp::Drop { .. } => {
                    return Err(Error::InvalidValue(
                        "catalog change mixed with data changes".into(),
                    ))
                }
            });
        }
        Ok(results)
    }

    /// The value under `key` in `cf` as this batch has left it so far: the unit's staged
    /// changes, then the batch's (`overlay` picks which of them), then the database.
    fn as_staged(
        &self,
        cf: &str,
        key: &[u8],
        overlay: fn(&Staged) -> &Overlay,
        staged: &Staged,
        group: &Staged,
    ) -> Result<Option<Vec<u8>>> {
        if let Some(e) = overlay(staged).get(key).or_else(|| overlay(group).get(key)) {
            return Ok(e.clone());
        }
        Ok(self
            .inner
            .db
            .get_pinned_cf(self.inner.cf(cf), key)?
            .map(|v| v.to_vec()))
    }

    /// The catalog object with this id.
    fn object(&self, id: ObjectId) -> Result<Arc<ObjectDef>> {
        self.inner
            .catalog
            .by_id(id)
            .ok_or_else(|| Error::ObjectNotFound {
                name: format!("object #{id}"),
            })
    }

    fn table(&self, id: ObjectId) -> Result<Arc<crate::catalog::TableDef>> {
        let def = self.object(id)?;
        match &*def {
            ObjectDef::Table(t) => Ok(Arc::new(t.clone())),
            other => Err(Error::InvalidValue(format!(
                "\"{}\" is not a table",
                other.name()
            ))),
        }
    }

    /// The encoded row stored under `key`, as this batch has left it so far.
    fn current_row(&self, key: &[u8], staged: &Staged, group: &Staged) -> Result<Option<Vec<u8>>> {
        self.as_staged(CF_ROWS, key, |s| &s.rows, staged, group)
    }

    /// The next offset of a log (a topic partition or a table's change log) and the append
    /// time for new records: now, but never earlier than the log's newest record.
    fn next_position(
        &self,
        log: ObjectId,
        partition: u32,
        staged: &Staged,
        group: &Staged,
    ) -> Result<(u64, i64)> {
        let pos = (log, partition);
        let (next, last_ts) = match staged.offsets.get(&pos).or_else(|| group.offsets.get(&pos)) {
            Some(v) => *v,
            None => {
                let p = self.inner.partition(log, partition)?;
                (p.next_offset(), p.last_ts.load(Ordering::Acquire))
            }
        };
        Ok((next, staged.at.unwrap_or_else(now_micros).max(last_ts)))
    }

    /// Stores encoded messages as log entries at the log's next offsets, all with one
    /// append time, and stages them for the in-memory tail. Returns the first offset and
    /// the append time.
    fn append_entries(
        &self,
        log: ObjectId,
        partition: u32,
        records: Records,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<(u64, i64)> {
        let (first, ts) = self.next_position(log, partition, staged, group)?;
        if records.is_empty() {
            return Ok((first, ts));
        }
        let mut next = first;
        let tail = staged.appended.entry((log, partition)).or_default();
        for (count, buf) in records.seal(ts) {
            let data = bytes::Bytes::from(buf);
            batch.put(CF_LOG, log_key(log, partition, next).to_vec(), data.clone());
            tail.push(TailEntry {
                first: next,
                count,
                data,
            });
            next += u64::from(count);
        }
        staged.offsets.insert((log, partition), (next, ts));
        Ok((first, ts))
    }

    fn commit_catalog(&self, req: CommitRequest, answers: &mut Answers) {
        let c = &req.commit;
        let outcome = match c.units.as_slice() {
            [unit] => self.apply_catalog(unit, &c.raft, c.sync),
            _ => Err(Error::InvalidValue(
                "a catalog change must be its request's only unit".into(),
            )),
        };
        answers.push((req.reply, outcome));
    }

    fn apply_catalog(
        &self,
        ops: &[WriteOp],
        raft: &[RaftWrite],
        sync: bool,
    ) -> Result<UnitResults> {
        let mut batch = WriteBatch::default();
        let staged = self.stage_catalog(ops, &mut batch);
        if staged.is_err() {
            batch = WriteBatch::default();
        }
        let mut replaced = Staged::default();
        self.apply_raft(raft, &mut batch, &mut replaced);
        if !batch.is_empty() {
            self.inner.db.write_opt(batch, &self.write_options(sync))?;
        }
        self.inner
            .stats
            .write_requests
            .fetch_add(1, Ordering::Relaxed);
        self.inner.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.publish(&replaced);
        let staged = match staged {
            Ok(s) => s,
            Err(e) => return Ok(vec![Err(e)]),
        };
        self.inner
            .next_object_id
            .store(u64::from(staged.next_id), Ordering::Release);
        for (name, id) in staged.dropped {
            self.inner.catalog.remove(&name);
            self.inner.partitions.write().retain(|(t, _), _| *t != id);
        }
        for def in staged.created {
            self.inner.catalog.insert(def);
        }
        Ok(vec![Ok(staged.results)])
    }

    /// Stages a definition's catalog entry into `batch`.
    fn put_def(&self, batch: &mut WriteBatch, def: &ObjectDef) -> Result<()> {
        batch.put_cf(
            self.inner.cf(CF_CATALOG),
            catalog_key(def.id()),
            to_json(def)?,
        );
        Ok(())
    }

    /// Stages catalog changes into `batch`; memory changes once the batch is written.
    fn stage_catalog(&self, ops: &[WriteOp], batch: &mut WriteBatch) -> Result<CatalogChange> {
        let mut results = Vec::new();
        let mut created = Vec::new();
        let mut dropped = Vec::new();
        let mut next_id = self.inner.next_object_id.load(Ordering::Acquire) as u32;
        for op in ops {
            match op {
                WriteOp::Create(def) => {
                    if self.inner.catalog.get(def.name()).is_some()
                        || created.iter().any(|d: &ObjectDef| d.name() == def.name())
                    {
                        return Err(Error::ObjectExists {
                            name: def.name().to_owned(),
                        });
                    }
                    let mut def = def.clone();
                    def.set_id(next_id);
                    next_id += 1;
                    self.put_def(batch, &def)?;
                    results.push(WriteResult::Created(Arc::new(def.clone())));
                    created.push(def);
                }
                WriteOp::Alter(def) => {
                    let current = self.inner.catalog.get(def.name()).ok_or_else(|| {
                        Error::ObjectNotFound {
                            name: def.name().to_owned(),
                        }
                    })?;
                    if current.id() != def.id() {
                        return Err(Error::ObjectNotFound {
                            name: def.name().to_owned(),
                        });
                    }
                    // Placement changes only through Place.
                    let mut def = def.clone();
                    let current = staged(&created, &current);
                    def.set_placement(current.placement().to_vec(), current.reassigned());
                    self.put_def(batch, &def)?;
                    results.push(WriteResult::Done);
                    created.push(def);
                }
                WriteOp::Place {
                    object,
                    partition,
                    nodes,
                } => {
                    let mut def = staged(&created, &*self.object(*object)?);
                    let mut placement = def.placement().to_vec();
                    let Some(slot) = placement.get_mut(*partition as usize) else {
                        return Err(Error::InvalidValue(format!(
                            "\"{}\" has no raft group {partition}",
                            def.name()
                        )));
                    };
                    *slot = nodes.clone();
                    def.set_placement(placement, true);
                    self.put_def(batch, &def)?;
                    results.push(WriteResult::Done);
                    created.push(def);
                }
                WriteOp::Drop { name } => {
                    let def = self
                        .inner
                        .catalog
                        .get(name)
                        .ok_or_else(|| Error::ObjectNotFound { name: name.clone() })?;
                    let id = def.id();
                    let dropping = |n: &str| {
                        ops.iter()
                            .any(|o| matches!(o, WriteOp::Drop { name } if name == n))
                    };
                    if let Some(user) = self
                        .inner
                        .catalog
                        .subscriptions_of(id)
                        .iter()
                        .find(|s| !dropping(s.name()))
                    {
                        return Err(Error::DependentObjects {
                            name: name.clone(),
                            dependent: user.name().to_owned(),
                        });
                    }
                    batch.delete_cf(self.inner.cf(CF_CATALOG), catalog_key(id));
                    // Topics: the log. Tables: the rows and the change log. Subscriptions: their state.
                    let cfs: &[&str] = match &*def {
                        ObjectDef::Topic(_) => &[CF_LOG, CF_GOSSIP],
                        ObjectDef::Table(_) => &[CF_ROWS, CF_LOG, CF_GOSSIP],
                        ObjectDef::Subscription(_) => &[CF_SUBS],
                    };
                    for cf in cfs {
                        batch.delete_range_cf(
                            self.inner.cf(cf),
                            table_prefix(id),
                            table_prefix(id + 1),
                        );
                    }
                    results.push(WriteResult::Done);
                    dropped.push((name.clone(), id));
                }
                _ => {
                    return Err(Error::InvalidValue(
                        "data change mixed with catalog changes".into(),
                    ))
                }
            }
        }
        batch.put_cf(
            self.inner.cf(CF_META),
            META_NEXT_OBJECT_ID,
            next_id.to_be_bytes(),
        );
        Ok(CatalogChange {
            results,
            created,
            dropped,
            next_id,
        })
    }
}

/// A staged catalog change: results, and what memory learns once it is durable.
struct CatalogChange {
    results: Vec<WriteResult>,
    created: Vec<ObjectDef>,
    dropped: Vec<(String, ObjectId)>,
    next_id: u32,
}

/// `def` as a topic that has `partition`.
fn topic_partition(def: &ObjectDef, partition: u32) -> Result<&crate::catalog::TopicDef> {
    let ObjectDef::Topic(t) = def else {
        return Err(Error::InvalidValue(format!(
            "\"{}\" is not a topic",
            def.name()
        )));
    };
    if partition >= t.partitions {
        return Err(Error::NoSuchPartition {
            topic: t.name.clone(),
            partition,
        });
    }
    Ok(t)
}

/// Stages a table row's new value (encoded) and records the change: an update if a row
/// `existed` under the key, an insert otherwise.
fn put_row(
    key: Vec<u8>,
    row: Vec<u8>,
    existed: bool,
    changes: &mut Records,
    batch: &mut StagedBatch,
    staged: &mut Staged,
) {
    let kind = if existed {
        CHANGE_UPDATE
    } else {
        CHANGE_INSERT
    };
    changes.push_encoded(Some(kind), &row);
    batch.put(CF_ROWS, key.clone(), row.clone());
    staged.rows.insert(key, Some(row));
}

/// Stages the removal of the table row `old` under `key` and records the change.
fn remove_row(
    key: Vec<u8>,
    old: &[u8],
    changes: &mut Records,
    batch: &mut StagedBatch,
    staged: &mut Staged,
) {
    changes.push_encoded(Some(CHANGE_DELETE), old);
    batch.delete(CF_ROWS, key.clone());
    staged.rows.insert(key, None);
}

/// First key after every key of `group` in the raft column family.
fn group_end(group: GroupId) -> Vec<u8> {
    match group.checked_add(1) {
        Some(g) => slot_key(g, 0).to_vec(),
        None => vec![0xff; 18],
    }
}

fn to_json(def: &ObjectDef) -> Result<Vec<u8>> {
    serde_json::to_vec(def)
        .map_err(|e| Error::InvalidValue(format!("cannot encode catalog entry: {e}")))
}

/// The definition of `current` as the changes staged so far in one batch left it.
fn staged(created: &[ObjectDef], current: &ObjectDef) -> ObjectDef {
    created
        .iter()
        .rev()
        .find(|d| d.id() == current.id())
        .unwrap_or(current)
        .clone()
}
