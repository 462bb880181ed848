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
use crate::inner::Inner;
use crate::layout::{
    check_row, log_key, log_start_key, row_key, sub_next_key, sub_pending_key, Records, CF_LOG,
    CF_RAFT, CF_ROWS, CF_SUBS,
};
use crate::partition::TailEntry;
use crate::raft::{entry_key, slot_key, GroupId, KeyRange, RaftWrite};
use crate::value::{encode_row, Value};

mod catalog;
mod gate;
mod gossip;
mod msg_ids;

mod ops;

pub(crate) use gate::{commit_in_place, CommitGate};
pub use ops::{
    Commit, Lane, OnConflict, SubChange, UnitResults, WriteOp, WriteResult, WriterId,
    CHANGE_DELETE, CHANGE_INSERT, CHANGE_UPDATE,
};

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
    gate: Arc<CommitGate>,
    rx: mpsc::Receiver<CommitRequest>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("eddy-commit".into())
        .spawn(move || Committer { inner }.run(&gate, rx))
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
    fn run(self, gate: &CommitGate, mut rx: mpsc::Receiver<CommitRequest>) {
        let max = self.inner.config.max_batch_requests;
        while let Some(first) = rx.blocking_recv() {
            let turn = gate.turn.lock();
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
            gate.committed(taken);
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
                WriteOp::Expect { table, key, row } => {
                    let def = self.table(*table)?;
                    let key = row_key(def.id, &key.iter().collect::<Vec<_>>())?;
                    let expected = row.as_ref().map(|r| {
                        let mut buf = Vec::new();
                        encode_row(r, &mut buf);
                        buf
                    });
                    if self.current_row(&key, staged, group)? != expected {
                        return Err(Error::RowChanged {
                            table: def.name.clone(),
                        });
                    }
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
