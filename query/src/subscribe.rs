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
//! wait on it. A reader whose next offset was removed by retention fails with
//! [`Error::PositionOutsideRetention`] instead of skipping silently.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, ObjectName};
use eddy_storage::{ObjectDef, Store, TopicDef};
use futures::StreamExt;

use crate::engine::{object_name, Engine};
use crate::error::{Error, Result};
use crate::provider::{log_batch, topic_schema};

/// Where a subscription starts, in every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained message.
    Beginning,
    /// The next message published (the default).
    Now,
    /// This offset (the same in every partition).
    Offset(u64),
    /// The first message appended at or after this time (microseconds since the epoch).
    Timestamp(i64),
}

/// `SUBSCRIBE topic [WHERE expr] [FROM ...]`
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeSpec {
    /// The topic.
    pub topic: ObjectName,
    /// Rows to keep.
    pub filter: Option<SqlExpr>,
    /// Start position.
    pub from: StartPosition,
}

/// Rows read from storage per step of one partition's reader.
const CHUNK: usize = 1024;

struct PartitionReader {
    store: Store,
    topic: Arc<TopicDef>,
    schema: SchemaRef,
    partition: u32,
    next: u64,
    watermark: tokio::sync::watch::Receiver<u64>,
    filter: Option<Arc<dyn PhysicalExpr>>,
}

impl PartitionReader {
    /// The next non-empty batch; waits while caught up. `None` when the topic is dropped.
    async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            let high = *self.watermark.borrow_and_update();
            if self.next >= high {
                // Caught up: wait for the committer to publish more (or the topic to go away).
                if self.watermark.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            let (store, topic, p, from) = (self.store.clone(), self.topic.clone(), self.partition, self.next);
            let read = tokio::task::spawn_blocking(move || {
                let start = store.partition(&topic, p)?.start_offset();
                let rows = store.read_log(&topic, p, from, high, CHUNK)?;
                Ok::<_, eddy_storage::Error>((start, rows))
            })
            .await;
            let (start, rows) = match read {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Some(Err(e.into())),
                Err(e) => return Some(Err(Error::InvalidParameter(format!("subscription reader failed: {e}")))),
            };
            if from < start {
                return Some(Err(Error::PositionOutsideRetention { partition: p, offset: from, start }));
            }
            let Some(last) = rows.last().map(|(o, _)| *o) else {
                // The topic was dropped while we read: end the stream.
                return None;
            };
            self.next = last + 1;
            let batch = match log_batch(&self.schema, &self.topic, p, &rows) {
                Ok(b) => b,
                Err(e) => return Some(Err(e.into())),
            };
            match self.apply_filter(batch) {
                Ok(b) if b.num_rows() == 0 => continue,
                other => return Some(other),
            }
        }
    }

    fn apply_filter(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(f) = &self.filter else { return Ok(batch) };
        let mask = f.evaluate(&batch)?.into_array(batch.num_rows())?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| Error::DatatypeMismatch("WHERE of a subscription must be boolean".into()))?;
        // NULL counts as false, as in a WHERE clause.
        let mask: BooleanArray = mask.iter().map(|v| Some(v == Some(true))).collect();
        Ok(filter_record_batch(&batch, &mask)?)
    }
}

impl Engine {
    /// Starts `COPY (SUBSCRIBE ...) TO STDOUT`: the rows and how to write them.
    pub async fn copy_subscribe(
        &self,
        spec: &SubscribeSpec,
        options: &[datafusion::sql::sqlparser::ast::CopyOption],
    ) -> Result<(SendableRecordBatchStream, crate::CopyOptions)> {
        let opts = crate::CopyOptions::from_ast(options, &[])?;
        Ok((self.subscribe(spec).await?, opts))
    }

    /// Starts a subscription: an endless stream of the topic's rows (with `_partition`,
    /// `_offset`, `_ts`, `_key`), per-partition in offset order.
    pub async fn subscribe(&self, spec: &SubscribeSpec) -> Result<SendableRecordBatchStream> {
        let name = object_name(&spec.topic)?;
        let def = self.store().catalog().get(&name).ok_or(Error::UndefinedObject { name: name.clone() })?;
        let ObjectDef::Topic(topic) = &*def else {
            return Err(Error::NotSupported("SUBSCRIBE to a table (change streams come later)".into()));
        };
        let topic = Arc::new(topic.clone());
        let schema = topic_schema(&topic);
        let filter = match &spec.filter {
            None => None,
            Some(e) => {
                let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
                let logical = self.ctx.parse_sql_expr(&e.to_string(), &df_schema)?;
                Some(self.ctx.create_physical_expr(logical, &df_schema)?)
            }
        };
        let mut readers = Vec::with_capacity(topic.partitions as usize);
        for p in 0..topic.partitions {
            let store = self.store().clone();
            let (t, from) = (topic.clone(), spec.from);
            let (state, next) = tokio::task::spawn_blocking(move || {
                let state = store.partition(&t, p)?;
                let next = match from {
                    StartPosition::Beginning => state.start_offset(),
                    StartPosition::Now => state.next_offset(),
                    StartPosition::Offset(o) => o,
                    StartPosition::Timestamp(ts) => store.offset_for_ts(&t, p, ts)?,
                };
                Ok::<_, eddy_storage::Error>((state, next))
            })
            .await
            .map_err(|e| Error::InvalidParameter(e.to_string()))??;
            if next < state.start_offset() {
                return Err(Error::PositionOutsideRetention { partition: p, offset: next, start: state.start_offset() });
            }
            readers.push(PartitionReader {
                store: self.store().clone(),
                topic: topic.clone(),
                schema: schema.clone(),
                partition: p,
                next,
                watermark: state.watch(),
                filter: filter.clone(),
            });
        }
        let streams = readers.into_iter().map(|r| {
            futures::stream::unfold(r, |mut r| async move { r.next_batch().await.map(|b| (b, r)) }).boxed()
        });
        let merged = futures::stream::select_all(streams).map(|b| b.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e))));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, merged)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arrow::array::{Int32Array, Int64Array};
    use eddy_storage::StorageConfig;
    use futures::StreamExt;

    use super::*;
    use crate::dialect::Statement;
    use crate::engine::{QueryConfig, Session};

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
        match e.parse(sql).unwrap().remove(0) {
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
        run(&e, &format!("INSERT INTO t (_key, n) VALUES {}", values.join(","))).await;
        let mut s = e.subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING")).await.unwrap();
        let mut got = take(&mut s, 30).await;
        // Then live rows, published after the subscription caught up.
        run(&e, "INSERT INTO t (_key, n) VALUES ('k1', 100), ('k2', 101)").await;
        got.extend(take(&mut s, 2).await);
        let mut ns: Vec<i32> = got.iter().map(|r| r.2).collect();
        ns.sort();
        let mut want: Vec<i32> = (0..30).collect();
        want.extend([100, 101]);
        assert_eq!(ns, want, "every row exactly once");
        for p in 0..3 {
            let offs: Vec<i64> = got.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
            assert_eq!(offs, (0..offs.len() as i64).collect::<Vec<_>>(), "partition {p} in offset order");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filters_and_start_positions() {
        let (_dir, e) = engine().await;
        run(&e, "CREATE TOPIC t (n INT)").await;
        run(&e, "INSERT INTO t (n) VALUES (1), (50), (2), (60)").await;
        let mut now = e.subscribe(&spec(&e, "SUBSCRIBE t WHERE n > 10")).await.unwrap();
        let mut from2 = e.subscribe(&spec(&e, "SUBSCRIBE t WHERE n > 10 FROM OFFSET 2")).await.unwrap();
        let mut begin = e.subscribe(&spec(&e, "SUBSCRIBE t WHERE n > 10 FROM BEGINNING")).await.unwrap();
        run(&e, "INSERT INTO t (n) VALUES (3), (70)").await;
        assert_eq!(take(&mut now, 1).await, vec![(0, 5, 70)], "FROM NOW: only rows published later");
        assert_eq!(take(&mut from2, 2).await, vec![(0, 3, 60), (0, 5, 70)]);
        assert_eq!(take(&mut begin, 3).await, vec![(0, 1, 50), (0, 3, 60), (0, 5, 70)]);
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
        e.store().write(vec![eddy_storage::WriteOp::Trim { topic: def.id, partition: 0, before: 2 }]).await.unwrap();
        let err = e.subscribe(&spec(&e, "SUBSCRIBE t FROM OFFSET 0")).await.err().expect("refused");
        assert!(matches!(err, Error::PositionOutsideRetention { offset: 0, start: 2, .. }), "{err:?}");
        let mut s = e.subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING")).await.unwrap();
        assert_eq!(take(&mut s, 1).await, vec![(0, 2, 3)], "BEGINNING is the oldest retained row");
        assert!(matches!(e.subscribe(&spec(&e, "SUBSCRIBE nope")).await, Err(Error::UndefinedObject { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_does_not_read_never_stalls_publishers() {
        let (_dir, e) = engine().await;
        run(&e, "CREATE TOPIC t (n INT) WITH (partitions = 2)").await;
        let _idle = e.subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING")).await.unwrap();
        // 5,000 rows while the subscriber reads nothing: publishing completes, since
        // readers pull from storage only when polled and hold nothing for the subscriber.
        for chunk in 0..5 {
            let values: Vec<String> = (0..1000).map(|i| format!("({})", chunk * 1000 + i)).collect();
            run(&e, &format!("INSERT INTO t (n) VALUES {}", values.join(","))).await;
        }
        let mut late = e.subscribe(&spec(&e, "SUBSCRIBE t FROM BEGINNING")).await.unwrap();
        assert_eq!(take(&mut late, 5000).await.len(), 5000);
    }
}
