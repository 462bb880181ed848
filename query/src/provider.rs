//! DataFusion table providers over storage: topics (with `_partition`/`_offset`/`_ts`
//! pushdown) and tables (with primary-key point reads), and the schema provider that
//! serves them straight from the storage catalog.
//!
//! ```text
//!  SELECT ... WHERE _partition = 0 AND _offset >= 100
//!      │ DataFusion pushes the filters (Inexact: it re-checks them)
//!      ▼
//!  TopicProvider::scan ─► ScanBounds { partitions: {0}, offsets: [100, ∞), ts: (-∞, ∞) }
//!      ▼
//!  one LogStream per partition: read_log(from, to) in chunks on the blocking pool
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use eddy_storage::{ObjectDef, Store, TableDef, TopicDef, Value};
use futures::StreamExt;

use crate::convert::build_array;
use crate::types::arrow_type;

/// Rows read from storage per step of a scan (one blocking-pool task each).
const SCAN_CHUNK: usize = 4096;

/// The metadata columns every topic has, in order, before its own columns.
pub const TOPIC_META_COLUMNS: [&str; 4] = ["_partition", "_offset", "_ts", "_key"];

/// The Arrow schema of a topic as a table.
pub fn topic_schema(topic: &TopicDef) -> SchemaRef {
    let mut fields = vec![
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new(
            "_ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("_key", DataType::Utf8, true),
    ];
    fields.extend(
        topic
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.ty), c.nullable)),
    );
    Arc::new(Schema::new(fields))
}

/// The Arrow schema of a table.
pub fn table_schema(table: &TableDef) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.ty), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// Serves `public.<name>` for every topic and table in the storage catalog, so DDL needs
/// no registration step and psql's catalog queries see objects as soon as they exist.
#[derive(Debug)]
pub struct EddySchemaProvider {
    store: Store,
}

impl EddySchemaProvider {
    /// A provider over this store's catalog.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The provider for one catalog object (`None` for objects that are not relations).
pub fn provider_for(store: &Store, def: &ObjectDef) -> Option<Arc<dyn TableProvider>> {
    match def {
        ObjectDef::Topic(t) => Some(Arc::new(TopicProvider::new(store.clone(), t.clone()))),
        ObjectDef::Table(t) => Some(Arc::new(RowsProvider::new(store.clone(), t.clone()))),
        ObjectDef::Subscription(_) => None,
    }
}

#[async_trait]
impl SchemaProvider for EddySchemaProvider {
    fn table_names(&self) -> Vec<String> {
        let list = self.store.catalog().list();
        list.iter()
            .filter(|o| !matches!(***o, ObjectDef::Subscription(_)))
            .map(|o| o.name().to_owned())
            .collect()
    }
    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .store
            .catalog()
            .get(name)
            .and_then(|def| provider_for(&self.store, &def)))
    }
    fn table_exist(&self, name: &str) -> bool {
        self.store
            .catalog()
            .get(name)
            .is_some_and(|d| !matches!(*d, ObjectDef::Subscription(_)))
    }
}

/// A topic as a read-only table.
#[derive(Debug)]
pub struct TopicProvider {
    store: Store,
    topic: Arc<TopicDef>,
    schema: SchemaRef,
}

impl TopicProvider {
    /// A provider for one topic.
    pub fn new(store: Store, topic: TopicDef) -> Self {
        let schema = topic_schema(&topic);
        Self {
            store,
            topic: Arc::new(topic),
            schema,
        }
    }
}

/// What the pushed filters allow a topic scan to read.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanBounds {
    /// Partitions to read (`None` = all).
    pub partitions: Option<BTreeSet<u32>>,
    /// Offsets `[lo, hi)`.
    pub offsets: (u64, u64),
    /// Append times `[lo, hi)` in microseconds.
    pub ts: (i64, i64),
}

impl Default for ScanBounds {
    fn default() -> Self {
        Self {
            partitions: None,
            offsets: (0, u64::MAX),
            ts: (i64::MIN, i64::MAX),
        }
    }
}

fn literal_i128(s: &ScalarValue) -> Option<i128> {
    Some(match s {
        ScalarValue::Int8(Some(v)) => i128::from(*v),
        ScalarValue::Int16(Some(v)) => i128::from(*v),
        ScalarValue::Int32(Some(v)) => i128::from(*v),
        ScalarValue::Int64(Some(v)) => i128::from(*v),
        ScalarValue::UInt8(Some(v)) => i128::from(*v),
        ScalarValue::UInt16(Some(v)) => i128::from(*v),
        ScalarValue::UInt32(Some(v)) => i128::from(*v),
        ScalarValue::UInt64(Some(v)) => i128::from(*v),
        ScalarValue::TimestampSecond(Some(v), _) => i128::from(*v) * 1_000_000,
        ScalarValue::TimestampMillisecond(Some(v), _) => i128::from(*v) * 1_000,
        ScalarValue::TimestampMicrosecond(Some(v), _) => i128::from(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => i128::from(*v).div_euclid(1_000),
        _ => return None,
    })
}

fn flip(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Eq => Operator::Eq,
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        _ => return None,
    })
}

/// `column op literal` (either side), after stripping casts.
fn column_comparison(e: &Expr) -> Option<(&str, Operator, i128)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let strip = |e: &Expr| -> Expr {
        match e {
            Expr::Cast(c) => (*c.expr).clone(),
            Expr::TryCast(c) => (*c.expr).clone(),
            other => other.clone(),
        }
    };
    // The metadata columns a topic scan can narrow by.
    let meta = |c: &datafusion::common::Column| {
        TOPIC_META_COLUMNS[..3]
            .iter()
            .copied()
            .find(|m| *m == c.name)
    };
    match (strip(left), strip(right)) {
        (Expr::Column(c), Expr::Literal(v, _)) => Some((meta(&c)?, *op, literal_i128(&v)?)),
        (Expr::Literal(v, _), Expr::Column(c)) => Some((meta(&c)?, flip(*op)?, literal_i128(&v)?)),
        _ => None,
    }
}

/// `[lo, hi)` after applying `op v`, for an integer domain.
fn narrow(range: (i128, i128), op: Operator, v: i128) -> (i128, i128) {
    let (lo, hi) = range;
    match op {
        Operator::Eq => (lo.max(v), hi.min(v + 1)),
        Operator::Gt => (lo.max(v + 1), hi),
        Operator::GtEq => (lo.max(v), hi),
        Operator::Lt => (lo, hi.min(v)),
        Operator::LtEq => (lo, hi.min(v + 1)),
        _ => range,
    }
}

/// True when the filter can narrow a topic scan.
fn is_pushable(e: &Expr) -> bool {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => is_pushable(left) || is_pushable(right),
        Expr::InList(l) if !l.negated => {
            matches!(&*l.expr, Expr::Column(c) if c.name == "_partition")
                && l.list
                    .iter()
                    .all(|x| matches!(x, Expr::Literal(v, _) if literal_i128(v).is_some()))
        }
        Expr::Between(b) if !b.negated => {
            matches!(&*b.expr, Expr::Column(c) if TOPIC_META_COLUMNS[..3].contains(&c.name.as_str()))
        }
        other => column_comparison(other).is_some(),
    }
}

/// Folds pushed filters into scan bounds. Filters that don't apply are ignored
/// (DataFusion re-checks every filter, so bounds only need to be a superset).
pub fn scan_bounds(filters: &[Expr]) -> ScanBounds {
    let mut part: (i128, i128) = (0, i128::from(u32::MAX) + 1);
    let mut off: (i128, i128) = (0, i128::from(u64::MAX));
    let mut ts: (i128, i128) = (i128::from(i64::MIN), i128::from(i64::MAX));
    let mut part_set: Option<BTreeSet<u32>> = None;
    let mut stack: Vec<&Expr> = filters.iter().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                stack.push(left);
                stack.push(right);
            }
            Expr::InList(l)
                if !l.negated && matches!(&*l.expr, Expr::Column(c) if c.name == "_partition") =>
            {
                let set: Option<BTreeSet<u32>> = l
                    .list
                    .iter()
                    .map(|x| match x {
                        Expr::Literal(v, _) => literal_i128(v).and_then(|n| u32::try_from(n).ok()),
                        _ => None,
                    })
                    .collect();
                if let Some(set) = set {
                    part_set = Some(match part_set {
                        Some(prev) => prev.intersection(&set).copied().collect(),
                        None => set,
                    });
                }
            }
            Expr::Between(b) if !b.negated => {
                if let (Expr::Column(c), Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                    (&*b.expr, &*b.low, &*b.high)
                {
                    if let (Some(lo), Some(hi)) = (literal_i128(lo), literal_i128(hi)) {
                        let r = match c.name.as_str() {
                            "_partition" => &mut part,
                            "_offset" => &mut off,
                            "_ts" => &mut ts,
                            _ => continue,
                        };
                        *r = narrow(narrow(*r, Operator::GtEq, lo), Operator::LtEq, hi);
                    }
                }
            }
            other => {
                if let Some((col, op, v)) = column_comparison(other) {
                    let r = match col {
                        "_partition" => &mut part,
                        "_offset" => &mut off,
                        _ => &mut ts,
                    };
                    *r = narrow(*r, op, v);
                }
            }
        }
    }
    let clamp_u64 = |v: i128| v.clamp(0, i128::from(u64::MAX)) as u64;
    let clamp_i64 = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    let range_set: BTreeSet<u32> = if part.0 >= part.1 {
        BTreeSet::new()
    } else if part.1 - part.0 <= 1 << 20 {
        (part.0..part.1)
            .filter_map(|p| u32::try_from(p).ok())
            .collect()
    } else {
        BTreeSet::new()
    };
    let ranged = part != (0, i128::from(u32::MAX) + 1);
    let partitions = match (part_set, ranged) {
        (Some(s), true) => Some(s.intersection(&range_set).copied().collect()),
        (Some(s), false) => Some(s),
        (None, true) => Some(range_set),
        (None, false) => None,
    };
    ScanBounds {
        partitions,
        offsets: (clamp_u64(off.0), clamp_u64(off.1.max(off.0))),
        ts: (clamp_i64(ts.0), clamp_i64(ts.1.max(ts.0))),
    }
}

#[async_trait]
impl TableProvider for TopicProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if is_pushable(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let bounds = scan_bounds(filters);
        let partitions: Vec<u32> = match &bounds.partitions {
            Some(set) => set
                .iter()
                .copied()
                .filter(|p| *p < self.topic.partitions)
                .collect(),
            None => (0..self.topic.partitions).collect(),
        };
        let streams: Vec<Arc<dyn PartitionStream>> = partitions
            .into_iter()
            .map(|p| {
                Arc::new(LogStream {
                    store: self.store.clone(),
                    topic: self.topic.clone(),
                    schema: self.schema.clone(),
                    partition: p,
                    bounds: bounds.clone(),
                    limit,
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            self.schema.clone(),
            streams,
            projection,
            vec![],
            false,
            limit,
        )?))
    }
}

/// Reads one partition's offset range in chunks.
#[derive(Debug)]
struct LogStream {
    store: Store,
    topic: Arc<TopicDef>,
    schema: SchemaRef,
    partition: u32,
    bounds: ScanBounds,
    limit: Option<usize>,
}

fn df_err(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The offsets `[from, to)` of a partition that the bounds allow, as of now.
fn offset_range(
    store: &Store,
    topic: &TopicDef,
    partition: u32,
    b: &ScanBounds,
) -> eddy_storage::Result<(u64, u64)> {
    let state = store.partition(topic, partition)?;
    let mut from = b.offsets.0.max(state.start_offset());
    let mut to = b.offsets.1.min(state.next_offset());
    if b.ts.0 > i64::MIN {
        from = from.max(store.offset_for_ts(topic, partition, b.ts.0)?);
    }
    if b.ts.1 < i64::MAX {
        to = to.min(store.offset_for_ts(topic, partition, b.ts.1)?);
    }
    Ok((from, to.max(from)))
}

pub(crate) fn log_batch(
    schema: &SchemaRef,
    topic: &TopicDef,
    partition: u32,
    rows: &[(u64, eddy_storage::LogRecord)],
) -> datafusion::error::Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![partition as i32; rows.len()])),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|(o, _)| *o as i64),
        )),
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            rows.iter().map(|(_, r)| r.ts_micros),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|(_, r)| r.key.as_deref()),
        )),
    ];
    for (i, c) in topic.columns.iter().enumerate() {
        cols.push(build_array(
            c.ty,
            rows.iter()
                .map(|(_, r)| r.values.get(i).unwrap_or(&Value::Null)),
        ));
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

impl PartitionStream for LogStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        struct State {
            store: Store,
            topic: Arc<TopicDef>,
            schema: SchemaRef,
            partition: u32,
            bounds: ScanBounds,
            next: Option<(u64, u64)>,
            left: usize,
        }
        let st = State {
            store: self.store.clone(),
            topic: self.topic.clone(),
            schema: self.schema.clone(),
            partition: self.partition,
            bounds: self.bounds.clone(),
            next: None,
            left: self.limit.unwrap_or(usize::MAX),
        };
        let stream = futures::stream::try_unfold(st, |mut st| async move {
            if st.left == 0 {
                return Ok(None);
            }
            let (store, topic, p, bounds, range) = (
                st.store.clone(),
                st.topic.clone(),
                st.partition,
                st.bounds.clone(),
                st.next,
            );
            let max = st.left.min(SCAN_CHUNK);
            let (rows, range) = tokio::task::spawn_blocking(move || {
                let (from, to) = match range {
                    Some(r) => r,
                    None => offset_range(&store, &topic, p, &bounds)?,
                };
                let rows = store.read_log(&topic, p, from, to, max)?;
                Ok::<_, eddy_storage::Error>((rows, (from, to)))
            })
            .await
            .map_err(df_err)?
            .map_err(df_err)?;
            if rows.is_empty() {
                return Ok(None);
            }
            let last = rows.last().map(|(o, _)| *o).unwrap_or(range.0);
            st.next = Some((last + 1, range.1));
            st.left -= rows.len();
            let batch = log_batch(&st.schema, &st.topic, st.partition, &rows)?;
            Ok(Some((batch, st)))
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream.boxed(),
        ))
    }
}

/// A table of keyed rows.
#[derive(Debug)]
pub struct RowsProvider {
    store: Store,
    table: Arc<TableDef>,
    schema: SchemaRef,
}

impl RowsProvider {
    /// A provider for one table.
    pub fn new(store: Store, table: TableDef) -> Self {
        let schema = table_schema(&table);
        Self {
            store,
            table: Arc::new(table),
            schema,
        }
    }
}

/// Primary keys named by the filters when they pin every key column to literals
/// (`id = 1`, `id IN (1, 2)`, or one equality per column of a composite key).
pub fn point_keys(table: &TableDef, filters: &[Expr]) -> Option<Vec<Vec<Value>>> {
    let mut per_column: Vec<Option<Vec<ScalarValue>>> = vec![None; table.primary_key.len()];
    let pk_pos = |name: &str| {
        table
            .primary_key
            .iter()
            .position(|&i| table.columns[i].name == name)
    };
    let mut stack: Vec<&Expr> = filters.iter().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                stack.push(left);
                stack.push(right);
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => match (&**left, &**right) {
                (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => {
                    if let Some(pos) = pk_pos(&c.name) {
                        per_column[pos] = Some(vec![v.clone()]);
                    }
                }
                _ => {}
            },
            Expr::InList(l) if !l.negated => {
                if let Expr::Column(c) = &*l.expr {
                    if let Some(pos) = pk_pos(&c.name) {
                        let lits: Option<Vec<ScalarValue>> = l
                            .list
                            .iter()
                            .map(|x| match x {
                                Expr::Literal(v, _) => Some(v.clone()),
                                _ => None,
                            })
                            .collect();
                        if let Some(lits) = lits {
                            per_column[pos] = Some(lits);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // Cartesian product of the candidate values, typed like the key columns.
    let mut keys: Vec<Vec<Value>> = vec![vec![]];
    for (pos, cands) in per_column.into_iter().enumerate() {
        let cands = cands?;
        let col = &table.columns[table.primary_key[pos]];
        let mut next = Vec::new();
        for k in &keys {
            for c in &cands {
                let v = crate::convert::scalar_to_value(c, col.ty, &col.name).ok()?;
                if v.is_null() {
                    continue;
                }
                let mut k = k.clone();
                k.push(v);
                next.push(k);
            }
        }
        keys = next;
        if keys.len() > 10_000 {
            return None;
        }
    }
    Some(keys)
}

#[async_trait]
impl TableProvider for RowsProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: the provider uses key equalities to read fewer rows; DataFusion re-checks.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let stream = Arc::new(RowsStream {
            store: self.store.clone(),
            table: self.table.clone(),
            schema: self.schema.clone(),
            keys: point_keys(&self.table, filters),
            limit,
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            self.schema.clone(),
            vec![stream],
            projection,
            vec![],
            false,
            limit,
        )?))
    }
}

/// Reads a table: point gets when the keys are known, else a chunked scan in key order.
#[derive(Debug)]
struct RowsStream {
    store: Store,
    table: Arc<TableDef>,
    schema: SchemaRef,
    keys: Option<Vec<Vec<Value>>>,
    limit: Option<usize>,
}

fn rows_batch(
    schema: &SchemaRef,
    table: &TableDef,
    rows: &[Vec<Value>],
) -> datafusion::error::Result<RecordBatch> {
    let cols: Vec<ArrayRef> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| build_array(c.ty, rows.iter().map(|r| r.get(i).unwrap_or(&Value::Null))))
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

impl PartitionStream for RowsStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (store, table, schema) = (self.store.clone(), self.table.clone(), self.schema.clone());
        if let Some(keys) = self.keys.clone() {
            let fut = async move {
                let rows = tokio::task::spawn_blocking(move || {
                    keys.iter()
                        .filter_map(|k| store.get_row(&table, k).transpose())
                        .collect::<eddy_storage::Result<Vec<_>>>()
                        .map(|rows| (rows, table))
                })
                .await
                .map_err(df_err)?
                .map_err(df_err)?;
                rows_batch(&schema, &rows.1, &rows.0)
            };
            return Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(fut).boxed(),
            ));
        }
        struct State {
            store: Store,
            table: Arc<TableDef>,
            schema: SchemaRef,
            after: Option<Vec<u8>>,
            left: usize,
            done: bool,
        }
        let st = State {
            store,
            table,
            schema,
            after: None,
            left: self.limit.unwrap_or(usize::MAX),
            done: false,
        };
        let stream = futures::stream::try_unfold(st, |mut st| async move {
            if st.done || st.left == 0 {
                return Ok(None);
            }
            let (store, table, after, max) = (
                st.store.clone(),
                st.table.clone(),
                st.after.take(),
                st.left.min(SCAN_CHUNK),
            );
            let (rows, last) =
                tokio::task::spawn_blocking(move || store.scan_rows(&table, after.as_deref(), max))
                    .await
                    .map_err(df_err)?
                    .map_err(df_err)?;
            if rows.is_empty() {
                return Ok(None);
            }
            st.done = rows.len() < max;
            st.left -= rows.len();
            st.after = last;
            let batch = rows_batch(&st.schema, &st.table, &rows)?;
            Ok(Some((batch, st)))
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream.boxed(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn bounds_from_filters() {
        let b = scan_bounds(&[
            col("_partition").eq(lit(1i32)),
            col("_offset").gt_eq(lit(100i64)),
        ]);
        assert_eq!(b.partitions, Some([1].into_iter().collect()));
        assert_eq!(b.offsets, (100, u64::MAX));
        let b = scan_bounds(&[lit(10i64)
            .gt(col("_offset"))
            .and(col("_offset").gt(lit(2i64)))]);
        assert_eq!(b.offsets, (3, 10));
        let b = scan_bounds(&[col("_partition").in_list(vec![lit(0i32), lit(2i32)], false)]);
        assert_eq!(b.partitions, Some([0, 2].into_iter().collect()));
        let b = scan_bounds(&[col("sensor").eq(lit("x"))]);
        assert_eq!(b, ScanBounds::default());
        let b = scan_bounds(&[col("_offset").lt(lit(0i64))]);
        assert_eq!(b.offsets.0, b.offsets.1, "empty range");
    }
}
