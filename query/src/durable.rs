//! Durable subscriptions: `CREATE SUBSCRIPTION`, `FETCH n FROM SUBSCRIPTION`, `ACK`, `NACK`.
//!
//! The stored state (per partition: the next offset to read and the pending rows with their
//! delivery counts) lives in storage and changes only through `WriteOp::SubState`, written
//! before a FETCH returns its rows. In memory, per subscription, the same state plus each
//! pending row's lease deadline and key, behind one async mutex shared by every consumer of
//! the subscription on this node, so each row is leased to one of them at a time.
//! See docs/architecture.md, "Durable subscriptions".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int32Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::ObjectName;
use eddy_storage::{
    ColumnDef, ColumnType, Lane, LogRecord, ObjectDef, ObjectId, Records, Store, SubChange,
    SubscriptionDef, TopicDef, Value, WriteOp,
};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::ident::object_name;
use crate::output::Output;
use crate::provider::{log_batch, topic_schema};
use crate::subscribe::{filter_mask, SubscribeSpec};

/// Defaults of `CREATE SUBSCRIPTION ... WITH (...)`.
const DEFAULT_ACK_WAIT_MS: u64 = 30_000;
const DEFAULT_MAX_PENDING: u32 = 10_000;
/// Columns the dead-letter topic adds in front of the topic's own.
const DLQ_COLUMNS: [(&str, ColumnType); 3] = [
    ("source_partition", ColumnType::Int32),
    ("source_offset", ColumnType::Int64),
    ("deliveries", ColumnType::Int32),
];

struct Pending {
    deliveries: u32,
    key: Option<String>,
    /// Leased until then; `None`: available now.
    lease: Option<Instant>,
}

#[derive(Default)]
struct PartState {
    next: u64,
    pending: BTreeMap<u64, Pending>,
}

/// Counters shown in `eddy.subscriptions`.
#[derive(Debug, Default)]
pub(crate) struct DurableCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    /// FETCHes waiting for rows now.
    pub(crate) waiting: AtomicU64,
}

/// One durable subscription as this node serves it.
pub(crate) struct Durable {
    store: Store,
    /// Where state changes go (the metadata group in a cluster).
    writer: std::sync::Arc<dyn crate::writer::Writer>,
    pub(crate) def: SubscriptionDef,
    pub(crate) topic: Arc<TopicDef>,
    schema: SchemaRef,
    out_schema: SchemaRef,
    filter: Option<Arc<dyn PhysicalExpr>>,
    state: tokio::sync::Mutex<Vec<PartState>>,
    /// Woken by ACK and NACK (capacity freed, keys unblocked, rows available again).
    changed: tokio::sync::Notify,
    pub(crate) counters: DurableCounters,
}

/// A snapshot of a durable subscription for `eddy.subscriptions`.
pub(crate) struct DurableView {
    pub(crate) next: Vec<u64>,
    pub(crate) pending: u64,
}

/// The schema of `FETCH ... FROM SUBSCRIPTION`: the topic's rows with `_deliveries` after `_key`.
fn fetch_schema(topic: &TopicDef) -> SchemaRef {
    let base = topic_schema(topic);
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.insert(4, Field::new("_deliveries", DataType::Int32, false));
    Arc::new(Schema::new(fields))
}

/// Per-subscription state, loaded on first use.
#[derive(Default)]
pub(crate) struct DurableSubs {
    map: parking_lot::Mutex<HashMap<ObjectId, Arc<Durable>>>,
}

impl DurableSubs {
    pub(crate) fn clear(&self) {
        self.map.lock().clear();
    }

    pub(crate) fn loaded(&self) -> Vec<Arc<Durable>> {
        self.map.lock().values().cloned().collect()
    }
}

impl Durable {
    /// The pending count and positions (waits for the state lock briefly).
    pub(crate) async fn view(&self) -> DurableView {
        let st = self.state.lock().await;
        DurableView {
            next: st.iter().map(|p| p.next).collect(),
            pending: st.iter().map(|p| p.pending.len() as u64).sum(),
        }
    }
}

struct Pick {
    partition: u32,
    offset: u64,
    deliveries: u32,
    key: Option<String>,
    /// The row when it was just read from the log (redeliveries are read again).
    record: Option<LogRecord>,
}

impl Core {
    /// `CREATE SUBSCRIPTION s ON topic [WHERE ...] [FROM ...] [WITH (...)]`: the subscription
    /// and its dead-letter topic `<s>_dlq`, in one catalog change.
    pub(crate) async fn create_subscription(
        &self,
        name: &ObjectName,
        spec: &SubscribeSpec,
        if_not_exists: bool,
    ) -> Result<Output> {
        let done = Ok(Output::Command {
            tag: "CREATE SUBSCRIPTION".into(),
            rows: None,
        });
        let name = object_name(name)?;
        if if_not_exists && self.store().catalog().subscription(&name).is_some() {
            return done;
        }
        let source = self.source(&spec.topic)?;
        if source.table.is_some() {
            return Err(Error::WrongObjectType {
                name: source.log.name.clone(),
                expected: "topic",
            });
        }
        let filter = spec.filter.as_ref().map(|f| f.to_string());
        self.compile_filter(&source.schema, filter.as_deref())?;
        let mut def = SubscriptionDef {
            id: 0,
            name: name.clone(),
            topic: source.log.id,
            filter,
            start: self.resolve_positions(&source.log, &spec.from).await?,
            ack_wait_ms: DEFAULT_ACK_WAIT_MS,
            max_deliver: 0,
            ordering_key: false,
            max_pending: DEFAULT_MAX_PENDING,
            dlq: format!("{name}_dlq"),
        };
        for (k, v) in crate::ddl::options_map(&spec.options)? {
            match k.as_str() {
                "ack_wait" => {
                    def.ack_wait_ms = crate::types::parse_duration_ms(&v)?;
                    if def.ack_wait_ms == 0 {
                        return Err(Error::InvalidParameter(
                            "ack_wait must be longer than 0".into(),
                        ));
                    }
                }
                "max_deliver" => {
                    def.max_deliver = v.parse().map_err(|_| {
                        Error::InvalidParameter(format!(
                            "max_deliver must be a non-negative integer (0 = no limit), not '{v}'"
                        ))
                    })?
                }
                "max_pending" => {
                    def.max_pending = match v.parse::<u32>() {
                        Ok(n) if (1..=1_000_000).contains(&n) => n,
                        _ => {
                            return Err(Error::InvalidParameter(format!(
                                "max_pending must be between 1 and 1000000, not '{v}'"
                            )))
                        }
                    }
                }
                "ordering" => {
                    def.ordering_key = match v.to_ascii_lowercase().as_str() {
                        "key" => true,
                        "none" => false,
                        _ => {
                            return Err(Error::InvalidParameter(format!(
                                "ordering must be 'key' or 'none', not '{v}'"
                            )))
                        }
                    }
                }
                other => {
                    return Err(Error::InvalidParameter(format!(
                        "unrecognized subscription option \"{other}\""
                    )))
                }
            }
        }
        let mut columns: Vec<ColumnDef> = DLQ_COLUMNS
            .iter()
            .map(|(n, ty)| ColumnDef {
                name: (*n).into(),
                ty: *ty,
                nullable: true,
            })
            .collect();
        if let Some(c) = source
            .log
            .columns
            .iter()
            .find(|c| DLQ_COLUMNS.iter().any(|(n, _)| *n == c.name))
        {
            return Err(Error::InvalidParameter(format!(
                "topic column \"{}\" clashes with a column of the dead-letter topic",
                c.name
            )));
        }
        columns.extend(source.log.columns.iter().cloned());
        let dlq = TopicDef::new(def.dlq.clone(), columns);
        let created = self
            .write(
                Lane::Queued,
                vec![
                    WriteOp::Create(ObjectDef::Subscription(def)),
                    WriteOp::Create(ObjectDef::Topic(dlq)),
                ],
            )
            .await;
        match created {
            Err(Error::Storage(eddy_storage::Error::ObjectExists { .. }))
                if if_not_exists && self.store().catalog().subscription(&name).is_some() =>
            {
                done
            }
            Err(e) => Err(e.into()),
            Ok(_) => done,
        }
    }

    /// `DROP SUBSCRIPTION [IF EXISTS] s`: the subscription, its state and its dead-letter topic.
    pub(crate) async fn drop_subscription(
        &self,
        subs: &DurableSubs,
        name: &ObjectName,
        if_exists: bool,
    ) -> Result<Output> {
        let name = object_name(name)?;
        let Some(def) = self.store().catalog().subscription(&name) else {
            if if_exists {
                return Ok(Output::Command {
                    tag: "DROP SUBSCRIPTION".into(),
                    rows: None,
                });
            }
            return Err(Error::UndefinedObject { name });
        };
        let ObjectDef::Subscription(sub) = &*def else {
            return Err(Error::UndefinedObject { name });
        };
        let mut ops = vec![WriteOp::Drop { name: name.clone() }];
        if self.store().catalog().topic(&sub.dlq).is_some() {
            ops.push(WriteOp::Drop {
                name: sub.dlq.clone(),
            });
        }
        self.write(Lane::Queued, ops).await?;
        subs.map.lock().remove(&sub.id);
        Ok(Output::Command {
            tag: "DROP SUBSCRIPTION".into(),
            rows: None,
        })
    }

    /// The served state of a subscription, loading it from storage on first use.
    pub(crate) async fn durable(
        &self,
        subs: &DurableSubs,
        name: &ObjectName,
    ) -> Result<Arc<Durable>> {
        let name = object_name(name)?;
        let def = self
            .store()
            .catalog()
            .subscription(&name)
            .ok_or_else(|| Error::UndefinedObject { name: name.clone() })?;
        let ObjectDef::Subscription(sub) = &*def else {
            return Err(Error::UndefinedObject { name });
        };
        if let Some(d) = subs.map.lock().get(&sub.id) {
            return Ok(d.clone());
        }
        let topic = match self.store().catalog().by_id(sub.topic).as_deref() {
            Some(ObjectDef::Topic(t)) => Arc::new(t.clone()),
            _ => {
                return Err(Error::UndefinedObject {
                    name: format!("topic of subscription {name}"),
                })
            }
        };
        let schema = topic_schema(&topic);
        let filter = self.compile_filter(&schema, sub.filter.as_deref())?;
        let (store, s2, t2) = (self.store().clone(), sub.clone(), topic.clone());
        let parts = tokio::task::spawn_blocking(move || -> Result<Vec<PartState>> {
            let stored = store.subscription_state(&s2, t2.partitions)?;
            let mut parts = Vec::with_capacity(stored.len());
            for (p, st) in stored.into_iter().enumerate() {
                let mut pending = BTreeMap::new();
                for (offset, deliveries) in st.pending {
                    // The key matters for ordering = 'key'; the row itself is read when delivered.
                    let key = store
                        .read_log(&t2, p as u32, offset, offset + 1, 1)?
                        .pop()
                        .and_then(|(_, r)| r.key);
                    pending.insert(
                        offset,
                        Pending {
                            deliveries,
                            key,
                            lease: None,
                        },
                    );
                }
                parts.push(PartState {
                    next: st.next,
                    pending,
                });
            }
            Ok(parts)
        })
        .await??;
        let durable = Arc::new(Durable {
            store: self.store().clone(),
            writer: self.writer.clone(),
            def: sub.clone(),
            out_schema: fetch_schema(&topic),
            topic,
            schema,
            filter,
            state: tokio::sync::Mutex::new(parts),
            changed: tokio::sync::Notify::new(),
            counters: DurableCounters::default(),
        });
        // Another FETCH may have loaded it meanwhile: keep the first.
        Ok(subs.map.lock().entry(sub.id).or_insert(durable).clone())
    }

    /// `FETCH n FROM SUBSCRIPTION s [WITH (timeout = ...)]`
    pub(crate) async fn fetch_subscription(
        &self,
        subs: &DurableSubs,
        name: &ObjectName,
        count: u64,
        timeout: Option<Duration>,
    ) -> Result<Output> {
        let d = self.durable(subs, name).await?;
        let deadline = Instant::now() + timeout.unwrap_or(Duration::ZERO);
        loop {
            // Register interest before looking, so a change between the look and the wait wakes us.
            let changed = d.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let watches: Vec<_> = (0..d.topic.partitions)
                .map(|p| self.store().partition(&d.topic, p).map(|s| s.watch()))
                .collect::<Result<_, _>>()?;
            // In a task of its own: a cancelled FETCH never leaves the stored and the served
            // state apart (the write and the in-memory update happen together or not at all).
            let task = tokio::spawn({
                let d = d.clone();
                async move { d.fetch_once(count as usize).await }
            });
            let (batch, next_lease) = task.await??;
            if batch.num_rows() > 0 || Instant::now() >= deadline {
                let stream = datafusion::physical_plan::memory::MemoryStream::try_new(
                    vec![batch],
                    d.out_schema.clone(),
                    None,
                )?;
                return Ok(Output::Rows {
                    tag: "FETCH".into(),
                    stream: Box::pin(stream),
                });
            }
            let wake_at = next_lease.map_or(deadline, |l| l.min(deadline));
            let _waiting = crate::subscribe::Waiting::start(&d.counters.waiting);
            let moved = futures::future::select_all(
                watches
                    .into_iter()
                    .map(|mut w| Box::pin(async move { w.changed().await })),
            );
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = &mut changed => {}
                _ = moved => {}
            }
        }
    }
}

impl Durable {
    /// One pass: picks up to `n` rows, persists the leases, returns the rows and the
    /// earliest lease deadline still running (when waiting, that is when rows come back).
    async fn fetch_once(&self, n: usize) -> Result<(RecordBatch, Option<Instant>)> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let lease = now + Duration::from_millis(self.def.ack_wait_ms);
        self.check_lag(&mut st).await?;
        let mut picks: Vec<Pick> = Vec::new();
        let mut waiting: Vec<Pick> = Vec::new();
        let mut dead: Vec<Pick> = Vec::new();
        let mut new_next: Vec<u64> = st.iter().map(|p| p.next).collect();
        let mut pending_total: usize = st.iter().map(|p| p.pending.len()).sum();
        let mut next_lease: Option<Instant> = None;
        for (p, part) in st.iter().enumerate() {
            let p = p as u32;
            // Keys with an earlier pending row in this partition (ordering = 'key').
            let mut busy: HashSet<Option<String>> = HashSet::new();
            for (&offset, pend) in &part.pending {
                let available = pend.lease.is_none_or(|l| l <= now);
                if let Some(l) = pend.lease.filter(|l| *l > now) {
                    next_lease = Some(next_lease.map_or(l, |n| n.min(l)));
                }
                let blocked = self.def.ordering_key && busy.contains(&pend.key);
                if self.def.ordering_key {
                    busy.insert(pend.key.clone());
                }
                if !available || blocked || picks.len() >= n {
                    continue;
                }
                let pick = Pick {
                    partition: p,
                    offset,
                    deliveries: pend.deliveries + 1,
                    key: pend.key.clone(),
                    record: None,
                };
                if self.def.max_deliver > 0 && pend.deliveries >= self.def.max_deliver {
                    dead.push(pick);
                } else {
                    picks.push(pick);
                }
            }
            // New rows from the log.
            let high = self.store.partition(&self.topic, p)?.next_offset();
            'read: while picks.len() < n
                && pending_total < self.def.max_pending as usize
                && new_next[p as usize] < high
            {
                let from = new_next[p as usize];
                let Some(rows) =
                    crate::subscribe::read_chunk(&self.store, &self.topic, p, from, high).await?
                else {
                    break;
                };
                let batch = log_batch(&self.schema, &self.topic, p, &rows)?;
                let kept = self.kept_rows(batch)?;
                for (i, (offset, record)) in rows.into_iter().enumerate() {
                    if picks.len() >= n || pending_total >= self.def.max_pending as usize {
                        break 'read;
                    }
                    new_next[p as usize] = offset + 1;
                    if !kept[i] {
                        continue;
                    }
                    pending_total += 1;
                    let key = record.key.clone();
                    let pick = Pick {
                        partition: p,
                        offset,
                        deliveries: 1,
                        key: key.clone(),
                        record: Some(record),
                    };
                    if self.def.ordering_key && !busy.insert(key) {
                        waiting.push(Pick {
                            deliveries: 0,
                            record: None,
                            ..pick
                        });
                    } else {
                        picks.push(pick);
                    }
                }
            }
        }
        // Rows being delivered again, or dead-lettered, are read back from the log.
        for pick in picks
            .iter_mut()
            .chain(dead.iter_mut())
            .filter(|p| p.record.is_none())
        {
            let (store, topic, (p, o)) = (
                self.store.clone(),
                self.topic.clone(),
                (pick.partition, pick.offset),
            );
            let row = tokio::task::spawn_blocking(move || store.read_log(&topic, p, o, o + 1, 1))
                .await??;
            pick.record = row.into_iter().next().map(|(_, r)| r);
        }
        // A row removed by retention meanwhile cannot be delivered: drop its entry.
        let (gone, picks): (Vec<Pick>, Vec<Pick>) =
            picks.into_iter().partition(|p| p.record.is_none());
        let mut changes: Vec<SubChange> = Vec::new();
        for (p, (part, &new)) in st.iter().zip(&new_next).enumerate() {
            if new != part.next {
                changes.push(SubChange::Next {
                    partition: p as u32,
                    next: new,
                });
            }
        }
        for pick in picks.iter().chain(&waiting) {
            changes.push(SubChange::Pending {
                partition: pick.partition,
                offset: pick.offset,
                deliveries: pick.deliveries,
            });
        }
        for pick in dead.iter().chain(&gone) {
            changes.push(SubChange::Done {
                partition: pick.partition,
                offset: pick.offset,
            });
        }
        if changes.is_empty() {
            return Ok((RecordBatch::new_empty(self.out_schema.clone()), next_lease));
        }
        let mut ops = vec![WriteOp::SubState {
            sub: self.def.id,
            changes,
        }];
        let to_dlq: Vec<_> = dead
            .iter()
            .filter_map(|pick| Some((pick, pick.record.as_ref()?)))
            .collect();
        if !to_dlq.is_empty() {
            let dlq = self.store.catalog().topic(&self.def.dlq).ok_or_else(|| {
                Error::UndefinedObject {
                    name: self.def.dlq.clone(),
                }
            })?;
            let ObjectDef::Topic(dlq) = &*dlq else {
                return Err(Error::WrongObjectType {
                    name: self.def.dlq.clone(),
                    expected: "topic",
                });
            };
            let mut records = Records::new();
            for (pick, r) in to_dlq {
                let mut values = vec![
                    Value::Int32(pick.partition as i32),
                    Value::Int64(pick.offset as i64),
                    Value::Int32(pick.deliveries.saturating_sub(1) as i32),
                ];
                values.extend(r.values.iter().cloned());
                records.push(&dlq.columns, r.key.as_deref(), &values)?;
            }
            ops.push(WriteOp::Append {
                topic: dlq.id,
                partition: 0,
                records,
            });
        }
        // Durable before anything is handed out.
        self.writer.write(Lane::Queued, ops).await?;
        for (part, next) in st.iter_mut().zip(&new_next) {
            part.next = *next;
        }
        for pick in dead.iter().chain(&gone) {
            st[pick.partition as usize].pending.remove(&pick.offset);
        }
        for pick in &waiting {
            st[pick.partition as usize].pending.insert(
                pick.offset,
                Pending {
                    deliveries: 0,
                    key: pick.key.clone(),
                    lease: None,
                },
            );
        }
        for pick in &picks {
            st[pick.partition as usize].pending.insert(
                pick.offset,
                Pending {
                    deliveries: pick.deliveries,
                    key: pick.key.clone(),
                    lease: Some(lease),
                },
            );
        }
        let c = &self.counters;
        c.delivered.fetch_add(picks.len() as u64, Ordering::Relaxed);
        c.redelivered.fetch_add(
            picks.iter().filter(|p| p.deliveries > 1).count() as u64,
            Ordering::Relaxed,
        );
        c.dead_lettered
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        drop(st);
        let next_lease = if picks.is_empty() {
            next_lease
        } else {
            Some(lease)
        };
        Ok((self.deliveries_batch(picks)?, next_lease))
    }

    /// Which rows of a freshly read batch pass the subscription's filter.
    fn kept_rows(&self, batch: RecordBatch) -> Result<Vec<bool>> {
        match &self.filter {
            None => Ok(vec![true; batch.num_rows()]),
            Some(f) => Ok(filter_mask(f, &batch)?.values().iter().collect()),
        }
    }

    /// The rows handed to the consumer, in partition then offset order.
    fn deliveries_batch(&self, mut picks: Vec<Pick>) -> Result<RecordBatch> {
        picks.sort_by_key(|p| (p.partition, p.offset));
        let mut batches = Vec::new();
        for chunk in picks.chunk_by(|a, b| a.partition == b.partition) {
            let rows: Vec<(u64, LogRecord)> = chunk
                .iter()
                .filter_map(|p| p.record.clone().map(|r| (p.offset, r)))
                .collect();
            let b = log_batch(&self.schema, &self.topic, chunk[0].partition, &rows)?;
            let mut columns = b.columns().to_vec();
            columns.insert(
                4,
                Arc::new(Int32Array::from_iter_values(
                    chunk.iter().map(|p| p.deliveries as i32),
                )),
            );
            batches.push(RecordBatch::try_new(self.out_schema.clone(), columns)?);
        }
        Ok(concat_batches(&self.out_schema, &batches)?)
    }

    /// Rows below a partition's retained start can no longer be delivered: move past them
    /// (durably) and report it once, with its own SQLSTATE.
    async fn check_lag(&self, st: &mut [PartState]) -> Result<()> {
        for (p, part) in st.iter_mut().enumerate() {
            let start = self.store.partition(&self.topic, p as u32)?.start_offset();
            let lost_pending: Vec<u64> = part.pending.range(..start).map(|(o, _)| *o).collect();
            if part.next >= start && lost_pending.is_empty() {
                continue;
            }
            let lost = start.saturating_sub(part.next) + lost_pending.len() as u64;
            let mut changes = vec![SubChange::Next {
                partition: p as u32,
                next: part.next.max(start),
            }];
            changes.extend(lost_pending.iter().map(|&o| SubChange::Done {
                partition: p as u32,
                offset: o,
            }));
            self.writer
                .write(
                    Lane::Queued,
                    vec![WriteOp::SubState {
                        sub: self.def.id,
                        changes,
                    }],
                )
                .await?;
            part.next = part.next.max(start);
            for o in lost_pending {
                part.pending.remove(&o);
            }
            return Err(Error::LaggedOut {
                name: self.def.name.clone(),
                partition: p as u32,
                lost,
                resume: part.next,
            });
        }
        Ok(())
    }
}

impl Core {
    /// `ACK SUBSCRIPTION s (p, o), ...` (done with these rows) or `NACK ...` (deliver them
    /// again now). Positions that are not pending are ignored; the tag counts the others.
    pub(crate) async fn ack_subscription(
        &self,
        subs: &DurableSubs,
        name: &ObjectName,
        positions: &[(u32, u64)],
        nack: bool,
    ) -> Result<Output> {
        let d = self.durable(subs, name).await?;
        let positions = positions.to_vec();
        // In a task of its own, like FETCH's critical section (cancel-safe).
        let task = tokio::spawn(async move { d.ack(&positions, nack).await });
        let n = task.await??;
        Ok(Output::Command {
            tag: if nack { "NACK".into() } else { "ACK".into() },
            rows: Some(n),
        })
    }
}

impl Durable {
    async fn ack(&self, positions: &[(u32, u64)], nack: bool) -> Result<u64> {
        let mut st = self.state.lock().await;
        let mut hit: Vec<(u32, u64)> = Vec::new();
        for &(p, o) in positions {
            if st
                .get(p as usize)
                .is_some_and(|part| part.pending.get(&o).is_some_and(|e| e.deliveries > 0))
                && !hit.contains(&(p, o))
            {
                hit.push((p, o));
            }
        }
        if nack {
            for &(p, o) in &hit {
                if let Some(e) = st[p as usize].pending.get_mut(&o) {
                    e.lease = None;
                }
            }
        } else if !hit.is_empty() {
            let changes = hit
                .iter()
                .map(|&(partition, offset)| SubChange::Done { partition, offset })
                .collect();
            self.writer
                .write(
                    Lane::Queued,
                    vec![WriteOp::SubState {
                        sub: self.def.id,
                        changes,
                    }],
                )
                .await?;
            for &(p, o) in &hit {
                st[p as usize].pending.remove(&o);
            }
            self.counters
                .acked
                .fetch_add(hit.len() as u64, Ordering::Relaxed);
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(hit.len() as u64)
    }
}

impl Core {
    /// The schema `FETCH ... FROM SUBSCRIPTION s` returns (for Describe).
    pub(crate) fn fetch_subscription_schema(&self, name: &ObjectName) -> Result<SchemaRef> {
        // Unknown here is an error at planning, so a strong session first catches up
        // with a subscription created on another node a moment ago.
        let undefined = || Error::UndefinedObject {
            name: name.to_string(),
        };
        let def = self
            .store()
            .catalog()
            .subscription(&object_name(name)?)
            .ok_or_else(undefined)?;
        let ObjectDef::Subscription(sub) = &*def else {
            return Err(undefined());
        };
        match self.store().catalog().by_id(sub.topic).as_deref() {
            Some(ObjectDef::Topic(t)) => Ok(fetch_schema(t)),
            _ => Err(undefined()),
        }
    }
}
