//! Subscriptions to topics: a live stream of a topic's rows from a position, optionally
//! filtered (issue 3; this is the core the wire transports will drive).
//!
//! ```text
//!  per partition:  next ──read_log(next, watermark, chunk)──► batch ──WHERE──► out
//!                    ▲                                      (caught up: await the
//!                    └──── watermark watch (moves after fsync) ◄── committer
//!  all partitions merged; each pulls only when the consumer asks for more
//! ```
//!
//! Nothing is buffered ahead of the consumer: a partition reader reads one chunk when
//! polled, so a slow subscriber holds at most one chunk per partition and publishers never
//! wait on it. A reader that keeps up reads the partition's in-memory tail (the newest
//! records, kept by the committer); one that fell behind reads RocksDB. A reader whose next offset was removed by retention fails with
//! [`Error::PositionOutsideRetention`] instead of skipping silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{new_null_array, Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast::ObjectName;
use eddy_storage::{LogRecord, ObjectDef, Store, TableDef, TopicDef};
use futures::StreamExt;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::fanout::{Chunk, ChunkKey, SharedChunks};
pub(crate) use crate::fanout::{SubStats, Waiting};
use crate::ident::object_name;
use crate::provider::{log_batch, topic_schema};
pub use crate::spec::{StartPosition, SubscribeOptions, SubscribeSpec};

/// Rows read from storage per step of one partition's reader.
const CHUNK: usize = 1024;

/// What a subscription reads: a topic, or a table's change log (a one-partition log whose
/// record keys are the change kinds).
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The catalog's definition read from (shared by every subscription made from it).
    pub(crate) def: Arc<ObjectDef>,
    pub(crate) log: Arc<TopicDef>,
    pub(crate) schema: SchemaRef,
    pub(crate) table: Option<Arc<TableDef>>,
}

/// The schema of a table's change stream: like a topic's, with `_op` for `_key`, and
/// `_offset` NULL for snapshot rows.
fn change_schema(log: &TopicDef) -> SchemaRef {
    let base = topic_schema(log);
    let fields: Vec<Field> = base
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match i {
            1 => Field::new("_offset", DataType::Int64, true),
            3 => Field::new("_op", DataType::Utf8, false),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

struct PartitionReader {
    store: Store,
    chunks: Arc<SharedChunks>,
    source: Source,
    partition: u32,
    next: u64,
    watermark: tokio::sync::watch::Receiver<u64>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    stats: Arc<SubStats>,
}

impl PartitionReader {
    /// The next non-empty batch; waits while caught up. `None` when the log is dropped.
    async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            let high = *self.watermark.borrow_and_update();
            if self.next >= high {
                // Caught up: wait for the committer to publish more (or the log to go away).
                if self.watermark.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            let chunk = match self.chunk(high).await? {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            self.next = chunk.next;
            if let Some(n) = self.stats.next.get(self.partition as usize) {
                n.store(self.next, Ordering::Relaxed);
            }
            match apply_filter(self.filter.as_ref(), chunk.batch.clone()) {
                Ok(b) if b.num_rows() == 0 => continue,
                other => return Some(other),
            }
        }
    }

    /// The rows of `[next, high)`, up to one chunk, decoded; shared with any other
    /// subscription that read the same range lately. `None` if the log was dropped.
    async fn chunk(&self, high: u64) -> Option<Result<Arc<Chunk>>> {
        let key = ChunkKey {
            def: self.source.def.clone(),
            partition: self.partition,
            from: self.next,
            high,
        };
        if let Some(c) = self.chunks.find(|(k, c)| (k == &key).then(|| c.clone())) {
            return Some(Ok(c));
        }
        let rows = match read_chunk(
            &self.store,
            &self.source.log,
            self.partition,
            self.next,
            high,
        )
        .await
        {
            Ok(Some(rows)) => rows,
            Ok(None) => return None, // dropped while we read
            Err(e) => return Some(Err(e)),
        };
        let next = rows.last().map(|(o, _)| *o).unwrap_or(self.next) + 1;
        let chunk = match log_batch(&self.source.schema, &self.source.log, self.partition, &rows) {
            Ok(batch) => Arc::new(Chunk { batch, next }),
            Err(e) => return Some(Err(e.into())),
        };
        self.chunks
            .put((key.clone(), chunk.clone()), |(k, _)| k == &key);
        Some(Ok(chunk))
    }
}

/// Reads up to one chunk of `[from, high)`; `None` if the log was dropped. A `from` below
/// the retained start is an error, never a silent skip.
pub(crate) async fn read_chunk(
    store: &Store,
    log: &Arc<TopicDef>,
    p: u32,
    from: u64,
    high: u64,
) -> Result<Option<Vec<(u64, LogRecord)>>> {
    // A subscriber that keeps up finds its rows in the partition's in-memory tail.
    if let Some(rows) = store.read_recent(log, p, from, high, CHUNK)? {
        return Ok(Some(rows));
    }
    let (store, log2) = (store.clone(), log.clone());
    let read = tokio::task::spawn_blocking(move || {
        let start = store.partition(&log2, p)?.start_offset();
        let rows = store.read_log(&log2, p, from, high, CHUNK)?;
        Ok::<_, eddy_storage::Error>((start, rows))
    })
    .await?;
    let (start, rows) = read?;
    if from < start {
        return Err(Error::PositionOutsideRetention {
            partition: p,
            offset: from,
            start,
        });
    }
    Ok((!rows.is_empty()).then_some(rows))
}

/// Which rows of `batch` pass a subscription's WHERE (NULL counts as false, as in SQL).
pub(crate) fn filter_mask(
    filter: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<BooleanArray> {
    let mask = filter.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = mask
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| Error::DatatypeMismatch("WHERE of a subscription must be boolean".into()))?;
    Ok(mask.iter().map(|v| Some(v == Some(true))).collect())
}

pub(crate) fn apply_filter(
    filter: Option<&Arc<dyn PhysicalExpr>>,
    batch: RecordBatch,
) -> Result<RecordBatch> {
    let Some(f) = filter else { return Ok(batch) };
    Ok(filter_record_batch(&batch, &filter_mask(f, &batch)?)?)
}

/// Each row of `batch` as a JSON object (the payload of a LISTEN notification).
pub fn rows_as_json(batch: &RecordBatch) -> Result<Vec<String>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    let text = String::from_utf8(buf)
        .map_err(|e| Error::InvalidParameter(format!("JSON encoding: {e}")))?;
    Ok(text.lines().map(str::to_owned).collect())
}

fn to_df(e: Error) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(e))
}

impl Core {
    /// Starts `COPY (SUBSCRIBE ...) TO STDOUT`: the rows, how to write them, and the heartbeat.
    pub async fn copy_subscribe(
        &self,
        spec: &SubscribeSpec,
        options: &[datafusion::sql::sqlparser::ast::CopyOption],
    ) -> Result<(
        SendableRecordBatchStream,
        crate::CopyOptions,
        Option<Duration>,
    )> {
        let opts = crate::CopyOptions::from_ast(options, &[])?;
        let heartbeat = spec
            .parsed_options(self.config.subscription_heartbeat_ms)?
            .heartbeat;
        Ok((self.subscribe(spec, "copy").await?, opts, heartbeat))
    }

    /// What `name` subscribes to: a topic, or a table's changes.
    pub(crate) fn source(&self, name: &ObjectName) -> Result<Source> {
        let name = object_name(name)?;
        let def = self
            .store()
            .catalog()
            .get(&name)
            .ok_or(Error::UndefinedObject { name: name.clone() })?;
        Ok(match &*def {
            ObjectDef::Topic(t) => Source {
                def: def.clone(),
                schema: topic_schema(t),
                log: Arc::new(t.clone()),
                table: None,
            },
            ObjectDef::Table(t) => {
                let log = t.change_log();
                Source {
                    def: def.clone(),
                    schema: change_schema(&log),
                    log: Arc::new(log),
                    table: Some(Arc::new(t.clone())),
                }
            }
            ObjectDef::Subscription(_) => {
                return Err(Error::WrongObjectType {
                    name,
                    expected: "a topic or table",
                })
            }
        })
    }

    /// Compiles a subscription's WHERE once, against the rows it filters.
    pub(crate) fn compile_filter(
        &self,
        schema: &SchemaRef,
        filter: Option<&str>,
    ) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let Some(text) = filter else { return Ok(None) };
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let logical = self.ctx.parse_sql_expr(text, &df_schema)?;
        Ok(Some(self.ctx.create_physical_expr(logical, &df_schema)?))
    }

    /// The first offset to read in each partition of `log` for a start position.
    pub(crate) async fn resolve_positions(
        &self,
        log: &Arc<TopicDef>,
        from: &StartPosition,
    ) -> Result<Vec<u64>> {
        let (store, log, from) = (self.store().clone(), log.clone(), from.clone());
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(log.partitions as usize);
            for p in 0..log.partitions {
                let state = store.partition(&log, p)?;
                let next = match &from {
                    StartPosition::Beginning => state.start_offset(),
                    StartPosition::Now => state.next_offset(),
                    StartPosition::Offset(o) => *o,
                    StartPosition::Offsets(list) => list
                        .iter()
                        .rev()
                        .find(|(part, _)| *part == p)
                        .map_or_else(|| state.start_offset(), |(_, o)| *o),
                    StartPosition::Timestamp(ts) => store.offset_for_ts(&log, p, *ts)?,
                };
                if next < state.start_offset() {
                    return Err(Error::PositionOutsideRetention {
                        partition: p,
                        offset: next,
                        start: state.start_offset(),
                    });
                }
                out.push(next);
            }
            if let StartPosition::Offsets(list) = &from {
                if let Some((p, _)) = list.iter().find(|(p, _)| *p >= log.partitions) {
                    return Err(Error::InvalidParameter(format!(
                        "partition {p} does not exist in \"{}\"",
                        log.name
                    )));
                }
            }
            Ok(out)
        })
        .await?
    }

    /// Starts a subscription: an endless stream of the topic's rows (with `_partition`,
    /// `_offset`, `_ts`, `_key`), per-partition in offset order; for a table, its changes
    /// (`_op` in place of `_key`), after its current rows when `snapshot = true`.
    /// `kind` names the transport in `eddy.subscriptions`.
    pub async fn subscribe(
        &self,
        spec: &SubscribeSpec,
        kind: &'static str,
    ) -> Result<SendableRecordBatchStream> {
        Ok(self.subscribe_counted(spec, kind).await?.0)
    }

    /// [`Core::subscribe`], with the subscription's counters.
    pub(crate) async fn subscribe_counted(
        &self,
        spec: &SubscribeSpec,
        kind: &'static str,
    ) -> Result<(SendableRecordBatchStream, Arc<SubStats>)> {
        let source = self.source(&spec.topic)?;
        let options = spec.parsed_options(0)?;
        if options.snapshot && source.table.is_none() {
            return Err(Error::InvalidParameter(
                "snapshot applies to tables; for a topic use FROM BEGINNING".into(),
            ));
        }
        let filter_text = spec.filter.as_ref().map(|f| f.to_string());
        let filter = self.compile_filter(&source.schema, filter_text.as_deref())?;
        // A snapshot and the change log position it is consistent with, read together.
        let (snapshot_rows, positions) = match (&source.table, options.snapshot) {
            (Some(table), true) => {
                let (store, t) = (self.store().clone(), table.clone());
                let (rows, next) =
                    tokio::task::spawn_blocking(move || store.table_snapshot(&t)).await??;
                (Some(rows), vec![next])
            }
            _ => (None, self.resolve_positions(&source.log, &spec.from).await?),
        };
        let stats = Arc::new(SubStats {
            kind,
            object: source.log.name.clone(),
            filter: filter_text,
            log: source.log.clone(),
            next: positions.iter().map(|&o| AtomicU64::new(o)).collect(),
            rows: AtomicU64::new(0),
            buffered_bytes: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        });
        self.subscriptions.register(&stats);
        let schema = source.schema.clone();
        let snapshot = snapshot_rows
            .map(|rows| snapshot_stream(rows, source.log.clone(), schema.clone(), filter.clone()));
        let live = self.subscribe_at(source, filter, positions, stats.clone())?;
        let rows = match snapshot {
            Some(s) => s.chain(live).boxed(),
            None => live.boxed(),
        };
        // Count what the consumer holds: the last batch, until it asks for the next one.
        let tracked =
            futures::stream::unfold((rows, stats.clone()), |(mut rows, stats)| async move {
                stats.buffered_bytes.store(0, Ordering::Relaxed);
                let item = rows.next().await?;
                if let Ok(b) = &item {
                    stats
                        .buffered_bytes
                        .store(b.get_array_memory_size() as u64, Ordering::Relaxed);
                    stats.rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                }
                Some((item, (rows, stats)))
            });
        Ok((
            Box::pin(RecordBatchStreamAdapter::new(schema, tracked)),
            stats,
        ))
    }

    /// The live part of a subscription: one reader per partition from `positions`, merged.
    pub(crate) fn subscribe_at(
        &self,
        source: Source,
        filter: Option<Arc<dyn PhysicalExpr>>,
        positions: Vec<u64>,
        stats: Arc<SubStats>,
    ) -> Result<futures::stream::BoxStream<'static, datafusion::error::Result<RecordBatch>>> {
        let mut readers = Vec::with_capacity(positions.len());
        for (p, next) in positions.into_iter().enumerate() {
            let state = self.store().partition(&source.log, p as u32)?;
            readers.push(PartitionReader {
                store: self.store().clone(),
                chunks: self.subscriptions.shared.chunks.clone(),
                source: source.clone(),
                partition: p as u32,
                next,
                watermark: state.watch(),
                filter: filter.clone(),
                stats: stats.clone(),
            });
        }
        // A reader ends after its first error (the consumer decides what the error means).
        let streams = readers.into_iter().map(|r| {
            futures::stream::unfold(Some(r), |r| async move {
                let mut r = r?;
                match r.next_batch().await? {
                    Ok(b) => Some((Ok(b), Some(r))),
                    Err(e) => Some((Err(e), None)),
                }
            })
            .boxed()
        });
        Ok(futures::stream::select_all(streams)
            .map(|b| b.map_err(to_df))
            .boxed())
    }
}

/// A table's rows (read at one point in time) as `insert` changes with a NULL `_offset`.
fn snapshot_stream(
    rows: Vec<Vec<eddy_storage::Value>>,
    log: Arc<TopicDef>,
    schema: SchemaRef,
    filter: Option<Arc<dyn PhysicalExpr>>,
) -> futures::stream::BoxStream<'static, datafusion::error::Result<RecordBatch>> {
    let now = chrono::Utc::now().timestamp_micros();
    let mut rows = rows.into_iter().peekable();
    let chunks = std::iter::from_fn(move || {
        rows.peek()?;
        Some(rows.by_ref().take(CHUNK).collect::<Vec<_>>())
    });
    futures::stream::iter(chunks)
        .map(move |chunk| {
            let records: Vec<(u64, LogRecord)> = chunk
                .into_iter()
                .map(|values| {
                    (
                        0,
                        LogRecord {
                            ts_micros: now,
                            key: Some("insert".into()),
                            values,
                        },
                    )
                })
                .collect();
            let batch = log_batch(&schema, &log, 0, &records)?;
            let mut columns = batch.columns().to_vec();
            columns[1] = new_null_array(&DataType::Int64, batch.num_rows());
            let batch = RecordBatch::try_new(schema.clone(), columns)?;
            apply_filter(filter.as_ref(), batch).map_err(to_df)
        })
        .filter(|b| futures::future::ready(!matches!(b, Ok(b) if b.num_rows() == 0)))
        .boxed()
}

#[cfg(test)]
mod tests {
    use crate::engine::Engine;
    use std::time::Duration;

    use arrow::array::{Int32Array, Int64Array};
    use eddy_storage::StorageConfig;
    use futures::StreamExt;

    use super::*;
    use crate::dialect::Statement;
    use crate::engine::QueryConfig;
    use crate::session::Session;

    async fn engine() -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
        (dir, Engine::new(store, QueryConfig::default()).unwrap())
    }

    async fn run(e: &Engine, sql: &str) {
        let mut s = Session::new();
        for stmt in e.parse(sql).unwrap() {
            e.run(&mut s, stmt).await.unwrap();
        }
    }

    fn spec(e: &Engine, sql: &str) -> SubscribeSpec {
        match e.parse(sql).unwrap().remove(0).statement {
            Statement::Subscribe(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// (partition, offset, n) of the next `count` rows, waiting at most 10 s per batch.
    async fn take(stream: &mut SendableRecordBatchStream, count: usize) -> Vec<(i32, i64, i32)> {
        let mut out = Vec::new();
        while out.len() < count {
            let b = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("rows arrive")
                .expect("stream open")
                .unwrap();
            let p = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
            let o = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            let n = b.column(4).as_any().downcast_ref::<Int32Array>().unwrap();
            for i in 0..b.num_rows() {
                out.push((p.value(i), o.value(i), n.value(i)));
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_beginning_then_tails_new_rows_in_offset_order() {
        let (_dir, e) = engine().await;
        run(&e, "CREATE TOPIC t (n INT) WITH (partitions = 3)").await;
        let values: Vec<String> = (0..30).map(|i| format!("('k{}', {i})", i % 4)).collect();
        run(
            &e,
            &format!("INSERT INTO t (_key, n) VALUES {}", values.join(",")),
        )
        .await;
        let mut s = e
            .subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING"), "test")
            .await
            .unwrap();
        let mut got = take(&mut s, 30).await;
        // Then live rows, published after the subscription caught up.
        run(
            &e,
            "INSERT INTO t (_key, n) VALUES ('k1', 100), ('k2', 101)",
        )
        .await;
        got.extend(take(&mut s, 2).await);
        let mut ns: Vec<i32> = got.iter().map(|r| r.2).collect();
        ns.sort();
        let mut want: Vec<i32> = (0..30).collect();
        want.extend([100, 101]);
        assert_eq!(ns, want, "every row exactly once");
        for p in 0..3 {
            let offs: Vec<i64> = got.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
            assert_eq!(
                offs,
                (0..offs.len() as i64).collect::<Vec<_>>(),
                "partition {p} in offset order"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscriptions_reading_the_same_rows_share_one_decoding_and_encoding() {
        let (_dir, e) = engine().await;
        run(&e, "CREATE TOPIC t (n INT)").await;
        let values: Vec<String> = (0..50).map(|i| format!("({i})")).collect();
        run(
            &e,
            &format!("INSERT INTO t (n) VALUES {}", values.join(",")),
        )
        .await;
        let read = || {
            e.store()
                .stats()
                .log_records_from_memory
                .load(Ordering::Relaxed)
        };
        let before = read();
        let next = |mut s: SendableRecordBatchStream| async move {
            let b = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("rows arrive")
                .expect("stream open")
                .unwrap();
            (s, b)
        };
        let all = spec(&e, "SUBSCRIBE t FROM BEGINNING");
        let (_s1, b1) = next(e.subscribe(&all, "test").await.unwrap()).await;
        let (_s2, b2) = next(e.subscribe(&all, "test").await.unwrap()).await;
        let ns = |b: &RecordBatch| -> Vec<i32> {
            let n = b.column(4).as_any().downcast_ref::<Int32Array>().unwrap();
            n.values().to_vec()
        };
        assert_eq!(ns(&b1), (0..50).collect::<Vec<_>>());
        assert!(
            crate::fanout::same_batch(&b1, &b2),
            "the second subscription reuses the first one's rows"
        );
        assert_eq!(read() - before, 50, "the tail was read once for both");
        // A filtered subscription shares the decoding and filters its own copy.
        let filtered = spec(&e, "SUBSCRIBE t WHERE n >= 45 FROM BEGINNING");
        let (_s3, b3) = next(e.subscribe(&filtered, "test").await.unwrap()).await;
        assert_eq!(ns(&b3), (45..50).collect::<Vec<_>>());
        assert_eq!(read() - before, 50);
        // The COPY lines of a shared batch are encoded once; other options, other lines.
        let text = crate::copy::CopyOptions::from_ast(&[], &[]).unwrap();
        let l1 = e.copy_lines(&text, &b1).unwrap();
        let l2 = e.copy_lines(&text, &b2).unwrap();
        assert_eq!(l1.len(), 50);
        assert_eq!(l1, l2);
        assert!(
            l1.iter().zip(&l2).all(|(a, b)| a.as_ptr() == b.as_ptr()),
            "the same encoded bytes"
        );
        assert!(
            String::from_utf8_lossy(&l1[7]).ends_with("\t7\n"),
            "{:?}",
            l1[7]
        );
        let csv = crate::copy::CopyOptions {
            format: crate::copy::CopyFormat::Csv,
            delimiter: ',',
            ..text.clone()
        };
        let l3 = e.copy_lines(&csv, &b1).unwrap();
        assert!(
            String::from_utf8_lossy(&l3[7]).ends_with(",7\n"),
            "{:?}",
            l3[7]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeping_up_reads_memory_and_falling_behind_reads_storage() {
        let dir = tempfile::tempdir().unwrap();
        // A tail of about a dozen records, so the backlog below cannot come from memory.
        let cfg = StorageConfig {
            tail_cache_bytes: 256,
            ..StorageConfig::default()
        };
        let e = Engine::new(
            Store::open(dir.path(), cfg).unwrap(),
            QueryConfig::default(),
        )
        .unwrap();
        run(&e, "CREATE TOPIC t (n INT)").await;
        let values: Vec<String> = (0..100).map(|i| format!("({i})")).collect();
        run(
            &e,
            &format!("INSERT INTO t (n) VALUES {}", values.join(",")),
        )
        .await;
        let stats = e.store().stats();
        let (disk0, mem0) = (
            stats.log_records_read.load(Ordering::Relaxed),
            stats.log_records_from_memory.load(Ordering::Relaxed),
        );
        let mut s = e
            .subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING"), "test")
            .await
            .unwrap();
        assert_eq!(take(&mut s, 100).await.len(), 100);
        let disk1 = stats.log_records_read.load(Ordering::Relaxed);
        assert!(
            disk1 - disk0 >= 80,
            "the old backlog is read from storage ({} rows)",
            disk1 - disk0
        );
        // Caught up: new rows are served from the in-memory tail, not RocksDB.
        for n in 0..3 {
            run(&e, &format!("INSERT INTO t (n) VALUES ({})", 1000 + n)).await;
            assert_eq!(take(&mut s, 1).await[0].2, 1000 + n);
        }
        assert_eq!(
            stats.log_records_read.load(Ordering::Relaxed),
            disk1,
            "no storage reads while keeping up"
        );
        assert_eq!(
            stats.log_records_from_memory.load(Ordering::Relaxed) - mem0,
            3
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filters_and_start_positions() {
        let (_dir, e) = engine().await;
        run(&e, "CREATE TOPIC t (n INT)").await;
        run(&e, "INSERT INTO t (n) VALUES (1), (50), (2), (60)").await;
        let mut now = e
            .subscribe(&spec(&e, "SUBSCRIBE t WHERE n > 10"), "test")
            .await
            .unwrap();
        let mut from2 = e
            .subscribe(&spec(&e, "SUBSCRIBE t WHERE n > 10 FROM OFFSET 2"), "test")
            .await
            .unwrap();
        let mut begin = e
            .subscribe(&spec(&e, "SUBSCRIBE t WHERE n > 10 FROM BEGINNING"), "test")
            .await
            .unwrap();
        run(&e, "INSERT INTO t (n) VALUES (3), (70)").await;
        assert_eq!(
            take(&mut now, 1).await,
            vec![(0, 5, 70)],
            "FROM NOW: only rows published later"
        );
        assert_eq!(take(&mut from2, 2).await, vec![(0, 3, 60), (0, 5, 70)]);
        assert_eq!(
            take(&mut begin, 3).await,
            vec![(0, 1, 50), (0, 3, 60), (0, 5, 70)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn positions_outside_retention_are_errors() {
        let (_dir, e) = engine().await;
        run(&e, "CREATE TOPIC t (n INT)").await;
        run(&e, "INSERT INTO t (n) VALUES (1), (2), (3)").await;
        // Trim offsets 0 and 1 as retention would.
        let def = match &*e.store().catalog().get("t").unwrap() {
            ObjectDef::Topic(t) => t.clone(),
            _ => unreachable!(),
        };
        e.store()
            .write(vec![eddy_storage::WriteOp::Trim {
                topic: def.id,
                partition: 0,
                before: 2,
            }])
            .await
            .unwrap();
        let err = e
            .subscribe(&spec(&e, "SUBSCRIBE t FROM OFFSET 0"), "test")
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                Error::PositionOutsideRetention {
                    offset: 0,
                    start: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut s = e
            .subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING"), "test")
            .await
            .unwrap();
        assert_eq!(
            take(&mut s, 1).await,
            vec![(0, 2, 3)],
            "BEGINNING is the oldest retained row"
        );
        assert!(matches!(
            e.subscribe(&spec(&e, "SUBSCRIBE nope"), "test").await,
            Err(Error::UndefinedObject { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_does_not_read_never_stalls_publishers() {
        let (_dir, e) = engine().await;
        run(&e, "CREATE TOPIC t (n INT) WITH (partitions = 2)").await;
        let _idle = e
            .subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING"), "test")
            .await
            .unwrap();
        // 5,000 rows while the subscriber reads nothing: publishing completes, since
        // readers pull from storage only when polled and hold nothing for the subscriber.
        for chunk in 0..5 {
            let values: Vec<String> = (0..1000)
                .map(|i| format!("({})", chunk * 1000 + i))
                .collect();
            run(
                &e,
                &format!("INSERT INTO t (n) VALUES {}", values.join(",")),
            )
            .await;
        }
        let mut late = e
            .subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING"), "test")
            .await
            .unwrap();
        assert_eq!(take(&mut late, 5000).await.len(), 5000);
    }
}
