//! [`Core`]: what every statement module works with — the node's store, where writes go,
//! DataFusion's context, the SQL parser and the settings. The [`Engine`](crate::Engine)
//! owns one and dispatches each statement to its module (ddl, dml, copy, subscribe,
//! durable, system, ...), which receives the `Core` and never the engine: modules import
//! in one direction (docs/architecture.md, "The map").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use eddy_storage::{Lane, ObjectId, Store, TopicDef, WriteOp, WriteResult};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Settings of the query layer (the `[query]` section of `eddy.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Largest encoded message (topic row) or table row accepted, in bytes (larger: SQLSTATE 54000).
    pub max_message_bytes: usize,
    /// Partitions of a topic created without `partitions = N`.
    pub default_partitions: u32,
    /// Rows a COPY FROM buffers before writing them (bounds its memory).
    pub copy_batch_rows: usize,
    /// An idle `COPY (SUBSCRIBE ...)` sends a heartbeat row after this many milliseconds
    /// without rows (0 = never; a subscription's `WITH (heartbeat = '5s')` overrides it).
    pub subscription_heartbeat_ms: u64,
    /// Bytes of rows a node may hold for one relayed portal run with a row limit (rows
    /// past the first page wait here for the next Execute); past it the Execute fails
    /// with SQLSTATE 54000.
    pub relay_page_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            default_partitions: 1,
            copy_batch_rows: 8192,
            subscription_heartbeat_ms: 0,
            relay_page_bytes: 64 << 20,
        }
    }
}

impl QueryConfig {
    /// Checks that the settings make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message_bytes == 0 {
            return Err("query.max_message_bytes must be at least 1".into());
        }
        if self.relay_page_bytes == 0 {
            return Err("query.relay_page_bytes must be at least 1".into());
        }
        if !(1..=MAX_PARTITIONS).contains(&self.default_partitions) {
            return Err(format!(
                "query.default_partitions must be between 1 and {MAX_PARTITIONS}"
            ));
        }
        if self.copy_batch_rows == 0 {
            return Err("query.copy_batch_rows must be at least 1".into());
        }
        Ok(())
    }
}

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// What statement modules work with (see the module's documentation).
pub struct Core {
    pub(crate) store: Store,
    /// Where writes go (the store, or the cluster).
    pub(crate) writer: Arc<dyn crate::writer::Writer>,
    pub(crate) ctx: SessionContext,
    pub(crate) compat: PostgresCompatibilityParser,
    pub(crate) config: QueryConfig,
    /// Round-robin cursor per topic for messages without a key.
    round_robin: parking_lot::Mutex<HashMap<ObjectId, Arc<AtomicU64>>>,
    /// Live ephemeral subscriptions (for `eddy.subscriptions`) and what they share.
    pub(crate) subscriptions: crate::fanout::Registry,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

impl Core {
    /// A core over `store`, writing through `writer`, planning with `ctx`.
    pub(crate) fn new(
        store: Store,
        writer: Arc<dyn crate::writer::Writer>,
        ctx: SessionContext,
        config: QueryConfig,
    ) -> Core {
        Core {
            store,
            writer,
            ctx,
            compat: PostgresCompatibilityParser::new(),
            config,
            round_robin: parking_lot::Mutex::new(HashMap::new()),
            subscriptions: crate::fanout::Registry::default(),
        }
    }

    /// `batch` as COPY lines in `options`' layout, encoded once for every subscription
    /// that reads the same chunk (see `fanout`).
    pub fn copy_lines(
        &self,
        options: &crate::copy::CopyOptions,
        batch: &RecordBatch,
    ) -> Result<Vec<bytes::Bytes>> {
        self.subscriptions.shared.copy_lines(options, batch)
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    pub(crate) async fn plan_sql(&self, stmt: &SqlStatement) -> Result<LogicalPlan> {
        let state = self.ctx.state();
        match state
            .statement_to_plan(DfStatement::Statement(Box::new(stmt.clone())))
            .await
        {
            Ok(plan) => Ok(plan),
            Err(e) => Err(crate::unplanned::cause(&state, stmt, e).await),
        }
    }

    pub(crate) async fn run_plan(
        &self,
        plan: &LogicalPlan,
        params: &ParamValues,
    ) -> Result<SendableRecordBatchStream> {
        let plan = if matches!(params, ParamValues::List(l) if l.is_empty()) {
            plan.clone()
        } else {
            plan.clone().replace_params_with_values(params)?
        };
        let df = self.ctx.execute_logical_plan(plan).await?;
        Ok(df.execute_stream().await?)
    }

    /// The partition of the next keyless message of `topic`: in turn over the
    /// partitions this node leads when it leads some but not all of them (so the write
    /// needs no hop to another node's leader), else over all of them.
    pub(crate) fn round_robin(&self, topic: &TopicDef) -> RoundRobin<'_> {
        RoundRobin {
            cursor: self.round_robin.lock().entry(topic.id).or_default().clone(),
            partitions: u64::from(topic.partitions.max(1)),
            led: None,
            writer: &*self.writer,
            topic: topic.id,
        }
    }

    /// Writes ops in `lane` and returns their results (the one place the query layer
    /// writes).
    pub(crate) async fn write(&self, lane: Lane, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>> {
        Ok(self.writer.write(lane, ops).await?)
    }
}

/// The partition cursor of a topic for messages without a key (shared by all sessions).
pub(crate) struct RoundRobin<'a> {
    cursor: Arc<AtomicU64>,
    partitions: u64,
    /// The partitions led here, asked of the writer at the first keyless message.
    led: Option<Vec<u32>>,
    writer: &'a dyn crate::writer::Writer,
    topic: ObjectId,
}

impl RoundRobin<'_> {
    /// The next partition.
    pub(crate) fn next(&mut self) -> u32 {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        if self.partitions == 1 {
            return 0;
        }
        let (writer, topic, partitions) = (self.writer, self.topic, self.partitions as u32);
        let led = self
            .led
            .get_or_insert_with(|| writer.led_partitions(topic, partitions).unwrap_or_default());
        match led.len() {
            0 => (n % self.partitions) as u32,
            k => led[(n % k as u64) as usize],
        }
    }
}

/// One text column of `values`, named `name` (SHOW and the like).
pub(crate) fn one_text_column(
    name: &str,
    values: Vec<String>,
) -> Result<SendableRecordBatchStream> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(values)) as ArrayRef],
    )?;
    Ok(Box::pin(MemoryStream::try_new(vec![batch], schema, None)?))
}
