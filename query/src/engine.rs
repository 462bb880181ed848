//! [`Engine`]: turns statements into [`Output`]s. One per node, shared by all sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{self as ast, ObjectName, Statement as SqlStatement};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use eddy_storage::{ObjectId, Store, TopicDef, WriteOp, WriteResult};
use serde::{Deserialize, Serialize};

use crate::copy::{CopyInSink, CopyOptions};
use crate::ddl::show_topics_schema;
use crate::description::{Description, Parsed, Writes};
use crate::dialect::{self, Statement};
use crate::dml::{self, DmlPlan};
use crate::error::{Error, Result};
pub(crate) use crate::params::{param_list, param_types_of};
use crate::provider::EddySchemaProvider;
use crate::session::Session;

mod names;
mod statements;

pub(crate) use names::item_name;
use names::{pg_column_names, show_column, show_name};

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

/// What a statement produced.
pub enum Output {
    /// Rows (SELECT, SHOW, RETURNING). `tag` is the command tag without the row count.
    Rows {
        /// Command tag ("SELECT", "INSERT 0", ...); the wire layer appends the row count.
        tag: String,
        /// The rows.
        stream: SendableRecordBatchStream,
    },
    /// A command without rows; `rows` is appended to the tag when present.
    Command {
        /// Command tag.
        tag: String,
        /// Rows affected.
        rows: Option<u64>,
    },
    /// COPY ... FROM STDIN: the wire layer feeds the sink.
    CopyIn(Box<CopyInSink>),
    /// COPY ... TO STDOUT: rows to encode as text or CSV lines.
    CopyOut {
        /// The rows.
        stream: SendableRecordBatchStream,
        /// Format of the lines.
        options: CopyOptions,
    },
    /// BEGIN / START TRANSACTION (eddy runs each statement on its own; see docs).
    TransactionStart,
    /// COMMIT / ROLLBACK.
    TransactionEnd {
        /// "COMMIT" or "ROLLBACK".
        tag: &'static str,
        /// A warning for the client before the tag: a ROLLBACK of a block whose
        /// statements wrote (they committed as they ran, and stay).
        warning: Option<String>,
    },
}

impl Output {
    /// The warning to send the client ahead of this output, if any.
    pub fn warning(&self) -> Option<&str> {
        match self {
            Output::TransactionEnd { warning, .. } => warning.as_deref(),
            _ => None,
        }
    }
}

/// A statement ready to execute, possibly many times with different parameters
/// (the extended protocol's prepared statements).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The statement.
    pub statement: Statement,
    /// What running it touches.
    pub description: Description,
    pub(crate) kind: Kind,
    /// Types of `$1..$n` (None where unknown).
    pub param_types: Vec<Option<DataType>>,
    /// Result columns, if the statement returns rows.
    pub schema: Option<SchemaRef>,
    /// The topics and tables of `description.reads` when it was prepared (what a strong
    /// read waits for).
    reads: Vec<ObjectId>,
    /// The SQL text, when prepared from it ([`Engine::prepare_text`]).
    sql: Option<String>,
}

impl Prepared {
    /// True when executing this statement only writes (see
    /// [`Description::is_blind_write`]): its execution may overlap the statements that
    /// follow it on the connection. Its write is still submitted in statement order.
    pub fn is_blind_write(&self) -> bool {
        self.description.is_blind_write()
    }

    /// The SQL text it was prepared from (extended protocol).
    pub fn sql(&self) -> Option<&str> {
        self.sql.as_deref()
    }
}

/// A planned statement's kind, parameter types and result columns.
type Planned = (Kind, Vec<Option<DataType>>, Option<SchemaRef>);

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Query(Box<LogicalPlan>),
    /// `SELECT ... WHERE pk = ...`: one storage get (see `point`).
    Point(Arc<crate::point::PointRead>),
    Dml(Arc<DmlPlan>),
    Other,
}

/// Most statements [`Engine::parse_one`] keeps (all are dropped when it is full).
const PARSE_CACHE_ENTRIES: usize = 512;
/// Longer statements are not kept.
const PARSE_CACHE_MAX_SQL: usize = 16 * 1024;

/// A kept blind write: the parameter types declared at its Parse, and its plan.
type KeptWrite = (Vec<Option<DataType>>, Arc<Prepared>);

/// Keeps `value` under `sql` in one of the engine's by-text caches: statements up to
/// [`PARSE_CACHE_MAX_SQL`], [`PARSE_CACHE_ENTRIES`] of them, dropped together when full.
fn keep_by_text<V>(cache: &parking_lot::Mutex<HashMap<String, V>>, sql: &str, value: V) {
    if sql.len() > PARSE_CACHE_MAX_SQL {
        return;
    }
    let mut cache = cache.lock();
    if cache.len() >= PARSE_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(sql.to_owned(), value);
}

/// The query engine of one node.
pub struct Engine {
    pub(crate) store: Store,
    /// Where writes go (the store, or the cluster).
    pub(crate) writer: Arc<dyn crate::writer::Writer>,
    pub(crate) ctx: SessionContext,
    compat: PostgresCompatibilityParser,
    /// Statements parsed for the extended protocol, by SQL text (see [`Engine::parse_one`]).
    parsed: parking_lot::Mutex<HashMap<String, Parsed>>,
    /// Blind writes prepared for the extended protocol, by SQL text, with the parameter
    /// types the client declared (see [`Engine::prepare_text`]).
    prepared_writes: parking_lot::Mutex<HashMap<String, KeptWrite>>,
    pub(crate) config: QueryConfig,
    /// Round-robin cursor per topic for messages without a key.
    round_robin: parking_lot::Mutex<HashMap<ObjectId, Arc<AtomicU64>>>,
    /// Live ephemeral subscriptions (for `eddy.subscriptions`).
    pub(crate) subscriptions: crate::subscribe::Registry,
    /// Durable subscriptions this node serves.
    pub(crate) durable: crate::durable::DurableSubs,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn one_text_column(name: &str, values: Vec<String>) -> Result<SendableRecordBatchStream> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(values)) as ArrayRef],
    )?;
    Ok(Box::pin(MemoryStream::try_new(vec![batch], schema, None)?))
}

pub(crate) use crate::ident::{normalize_ident, object_name};

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Store, config: QueryConfig) -> Result<Arc<Engine>> {
        let writer = crate::writer::local(&store);
        Self::with_writer(store, writer, config)
    }

    /// An engine whose writes go through `writer` (the cluster) and whose reads are
    /// served from `store`, the local replica.
    pub fn with_writer(
        store: Store,
        writer: Arc<dyn crate::writer::Writer>,
        config: QueryConfig,
    ) -> Result<Arc<Engine>> {
        config.validate().map_err(Error::InvalidParameter)?;
        let cfg = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("eddy", "public")
            .with_create_default_catalog_and_schema(true);
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(cfg)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(crate::coop::YieldingJoins))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let catalog = ctx
            .catalog("eddy")
            .ok_or_else(|| Error::InvalidParameter("default catalog missing".into()))?;
        catalog.register_schema("public", Arc::new(EddySchemaProvider::new(store.clone())))?;
        datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            "eddy",
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|e| Error::from(*e))?;
        crate::functions::register(&ctx);
        Ok(Arc::new_cyclic(|me| {
            let system = Arc::new(crate::system::SystemSchema { engine: me.clone() });
            if let Err(e) = catalog.register_schema("eddy", system) {
                tracing::error!(error = %e, "cannot register the eddy system schema");
            }
            Engine {
                store,
                writer,
                ctx,
                compat: PostgresCompatibilityParser::new(),
                parsed: parking_lot::Mutex::new(HashMap::new()),
                prepared_writes: parking_lot::Mutex::new(HashMap::new()),
                config,
                round_robin: parking_lot::Mutex::new(HashMap::new()),
                subscriptions: crate::subscribe::Registry::default(),
                durable: crate::durable::DurableSubs::default(),
            }
        }))
    }

    /// Releases what the engine's SQL catalog holds. datafusion-pg-catalog's `pg_catalog`
    /// schema keeps the catalog list that contains it (a reference cycle), which would keep
    /// the store, and so the database lock, alive after the node stops. Call on shutdown.
    pub fn close(&self) {
        let empty = Arc::new(datafusion::catalog::MemoryCatalogProvider::new());
        self.ctx
            .state()
            .catalog_list()
            .register_catalog("eddy".into(), empty);
        self.durable.clear();
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// Splits and parses a query string, describing each statement.
    pub fn parse(&self, sql: &str) -> Result<Vec<Parsed>> {
        let statements = dialect::parse_sql(sql, &self.compat)?;
        Ok(statements.into_iter().map(Parsed::new).collect())
    }

    /// Parses one statement (the extended protocol's Parse takes exactly one). Drivers
    /// send the same text over and over as unnamed statements (a producer's batch
    /// INSERT, a prepared lookup), so parses are kept by text: parsing is a pure function
    /// of it, and a clone of the tree costs far less than tokenizing again.
    pub fn parse_one(&self, sql: &str) -> Result<Option<Parsed>> {
        if let Some(stmt) = self.parsed.lock().get(sql) {
            return Ok(Some(stmt.clone()));
        }
        let mut stmts = self.parse(sql)?;
        let stmt = match stmts.len() {
            0 => return Ok(None),
            1 => stmts.pop(),
            _ => {
                return Err(Error::Syntax(
                    "cannot insert multiple commands into a prepared statement".into(),
                ))
            }
        };
        if let Some(s) = &stmt {
            keep_by_text(&self.parsed, sql, s.clone());
        }
        Ok(stmt)
    }

    /// Parses and plans the one statement of an extended-protocol Parse (`None` for an
    /// empty one). `hints` are the parameter types the client declared.
    ///
    /// A blind write (see [`Prepared::is_blind_write`]) is kept by its text and hints and
    /// handed out again while its target's definition is unchanged: a producer sends its
    /// batch INSERT as a new unnamed statement every time, and such a plan depends only on
    /// the text and the target (not on the session), so the parse tree is neither cloned
    /// nor planned again.
    pub async fn prepare_text(
        &self,
        sql: &str,
        hints: &[Option<DataType>],
        session: &Session,
    ) -> Result<Option<Arc<Prepared>>> {
        if let Some(kept) = self.prepared_write(sql, hints) {
            return Ok(Some(kept));
        }
        let Some(stmt) = self.parse_one(sql)? else {
            return Ok(None);
        };
        let mut prepared = self.prepare(stmt, hints, session).await?;
        prepared.sql = Some(sql.to_owned());
        let prepared = Arc::new(prepared);
        if prepared.is_blind_write() {
            keep_by_text(
                &self.prepared_writes,
                sql,
                (hints.to_vec(), prepared.clone()),
            );
        }
        Ok(Some(prepared))
    }

    /// The blind write kept for `sql` and `hints`, if its target is unchanged since.
    fn prepared_write(&self, sql: &str, hints: &[Option<DataType>]) -> Option<Arc<Prepared>> {
        let cache = self.prepared_writes.lock();
        let (declared, prepared) = cache.get(sql)?;
        let current = match &prepared.kind {
            Kind::Dml(plan) => plan.targets_current(self.store.catalog()),
            _ => false,
        };
        (current && declared.as_slice() == hints).then(|| prepared.clone())
    }

    /// Plans a statement. `hints` are parameter types the client declared; `session`
    /// resolves cursors (FETCH returns the rows of the cursor's query).
    pub async fn prepare(
        &self,
        parsed: Parsed,
        hints: &[Option<DataType>],
        session: &Session,
    ) -> Result<Prepared> {
        let Parsed {
            statement,
            description,
        } = parsed;
        let mut planned = self.plan_statement(&statement, session).await;
        if self.caught_up(session, planned.as_ref().err()).await? {
            planned = self.plan_statement(&statement, session).await;
        }
        let (kind, mut param_types, schema) = planned?;
        for (i, h) in hints.iter().enumerate() {
            if let Some(h) = h {
                if param_types.len() <= i {
                    param_types.resize(i + 1, None);
                }
                param_types[i].get_or_insert_with(|| h.clone());
            }
        }
        let reads = self.objects(&description.reads);
        Ok(Prepared {
            statement,
            description,
            kind,
            param_types,
            schema,
            reads,
            sql: None,
        })
    }

    fn is_strong(session: &Session) -> bool {
        session.get("consistency").as_deref() != Some("local")
    }

    /// How a statement runs: its kind, parameter types and result columns.
    async fn plan_statement(&self, statement: &Statement, session: &Session) -> Result<Planned> {
        Ok(match statement {
            Statement::Sql(s) => match &**s {
                SqlStatement::Query(_) | SqlStatement::Explain { .. } => {
                    match crate::point::PointRead::plan(self, s)? {
                        Some((read, types)) => {
                            let schema = read.schema.clone();
                            (Kind::Point(Arc::new(read)), types, Some(schema))
                        }
                        None => {
                            let plan = pg_column_names(s, self.plan_sql(s).await?)?;
                            let types = param_types_of(&plan)?;
                            let schema = Arc::new(plan.schema().as_arrow().clone());
                            (Kind::Query(Box::new(plan)), types, Some(schema))
                        }
                    }
                }
                SqlStatement::Insert(_) | SqlStatement::Update(_) | SqlStatement::Delete(_) => {
                    let plan = dml::plan(self, s).await?;
                    let types = plan.param_types.clone();
                    let schema = plan.returning_schema();
                    (Kind::Dml(Arc::new(plan)), types, schema)
                }
                SqlStatement::ShowVariable { variable } => {
                    let name = show_name(variable);
                    let schema = Arc::new(Schema::new(vec![Field::new(
                        show_column(&name),
                        DataType::Utf8,
                        true,
                    )]));
                    (Kind::Other, vec![], Some(schema))
                }
                _ => (Kind::Other, vec![], None),
            },
            Statement::ShowTopics => (Kind::Other, vec![], Some(show_topics_schema())),
            Statement::ShowCluster => (Kind::Other, vec![], Some(crate::system::nodes_schema())),
            Statement::ShowSubscriptions => {
                (Kind::Other, vec![], Some(Engine::subscriptions_schema()))
            }
            Statement::Fetch { cursor, .. } => (
                Kind::Other,
                vec![],
                session.cursors.get(cursor).map(|c| c.schema.clone()),
            ),
            Statement::FetchSubscription { name, .. } => (
                Kind::Other,
                vec![],
                Some(self.fetch_subscription_schema(name)?),
            ),
            _ => (Kind::Other, vec![], None),
        })
    }

    pub(crate) async fn plan_sql(&self, stmt: &SqlStatement) -> Result<LogicalPlan> {
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(DfStatement::Statement(Box::new(stmt.clone())))
            .await?;
        Ok(plan)
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

    /// Runs a prepared statement with parameter values.
    pub async fn execute(
        &self,
        session: &mut Session,
        p: &Prepared,
        params: &ParamValues,
    ) -> Result<Output> {
        let output = self.execute_kind(session, p, params).await?;
        if let Some(wrote) = &mut session.block_writes {
            *wrote += u64::from(p.description.writes != Writes::Nothing);
        }
        Ok(output)
    }

    async fn execute_kind(
        &self,
        session: &mut Session,
        p: &Prepared,
        params: &ParamValues,
    ) -> Result<Output> {
        match &p.kind {
            Kind::Query(plan) => {
                self.strong_read(session, &p.reads).await?;
                Ok(Output::Rows {
                    tag: "SELECT".into(),
                    stream: self.run_plan(plan, params).await?,
                })
            }
            Kind::Point(read) => {
                self.strong_read(session, &p.reads).await?;
                Ok(Output::Rows {
                    tag: "SELECT".into(),
                    stream: read.execute(self, params)?,
                })
            }
            Kind::Dml(plan) => {
                self.strong_read(session, &p.reads).await?;
                dml::execute(self, plan, params).await
            }
            Kind::Other => {
                let mut done = self.execute_other(session, &p.statement).await;
                if self.caught_up(session, done.as_ref().err()).await? {
                    done = self.execute_other(session, &p.statement).await;
                }
                done
            }
        }
    }

    /// After a statement failed with `error` on an object this node does not know, in a
    /// strong session: catches up with the catalog and returns true, for the caller to
    /// try once more. This node's catalog can lag a CREATE (of a table, a subscription)
    /// acknowledged on another node.
    async fn caught_up(&self, session: &Session, error: Option<&Error>) -> Result<bool> {
        match error {
            Some(e) if e.is_undefined_relation() && Self::is_strong(session) => {
                self.writer.metadata_barrier().await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// With `consistency = 'strong'` (the default), waits until the local replicas of
    /// `objects` have applied every write acknowledged before now; `'local'` reads the
    /// replica as it is.
    async fn strong_read(&self, session: &Session, objects: &[ObjectId]) -> Result<()> {
        if objects.is_empty() || !Self::is_strong(session) {
            return Ok(());
        }
        Ok(self.writer.read_barrier(objects).await?)
    }

    /// Parses, plans and runs a statement without parameters (the simple protocol).
    pub async fn run(&self, session: &mut Session, parsed: Parsed) -> Result<Output> {
        let p = self.prepare(parsed, &[], session).await?;
        self.execute(session, &p, &ParamValues::List(vec![])).await
    }

    /// The rows a LISTEN on `name` notifies, from the offsets LISTEN recorded.
    pub async fn listen_stream(
        &self,
        name: &str,
        positions: &[u64],
    ) -> Result<SendableRecordBatchStream> {
        let spec = crate::subscribe::SubscribeSpec {
            topic: ObjectName::from(vec![ast::Ident::with_quote('"', name)]),
            filter: None,
            from: crate::subscribe::StartPosition::Offsets(
                positions
                    .iter()
                    .enumerate()
                    .map(|(p, o)| (p as u32, *o))
                    .collect(),
            ),
            options: vec![],
        };
        self.subscribe(&spec, "listen").await
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

    /// Writes ops and returns their results (the one place the query layer writes).
    pub(crate) async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>> {
        Ok(self.writer.write(ops).await?)
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

#[cfg(test)]
mod tests {
    use eddy_storage::{StorageConfig, Store};

    use super::*;

    async fn run(e: &Engine, sql: &str) {
        let mut s = Session::new();
        for stmt in e.parse(sql).unwrap() {
            e.run(&mut s, stmt).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blind_write_is_planned_once_per_text_until_its_target_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
        let e = Engine::new(store, QueryConfig::default()).unwrap();
        let s = Session::new();
        run(&e, "CREATE TOPIC t (a BIGINT)").await;
        let sql = "INSERT INTO t VALUES ($1)";
        let prepare = |hints: Vec<Option<DataType>>| {
            let (e, s) = (&e, &s);
            async move { e.prepare_text(sql, &hints, s).await.unwrap().unwrap() }
        };
        // Other declared types are another plan.
        let declared = prepare(vec![Some(DataType::Utf8)]).await;
        let first = prepare(vec![]).await;
        assert!(!Arc::ptr_eq(&first, &declared));
        assert!(first.is_blind_write());
        assert_eq!(first.param_types, vec![Some(DataType::Int64)]);
        assert!(Arc::ptr_eq(&first, &prepare(vec![]).await), "kept");

        // The topic made anew with another column type: planned again against it.
        run(&e, "DROP TOPIC t").await;
        run(&e, "CREATE TOPIC t (a TEXT)").await;
        let again = prepare(vec![]).await;
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(again.param_types, vec![Some(DataType::Utf8)]);
        // ALTER changes the definition too.
        run(&e, "ALTER TOPIC t SET (retention = '1 day')").await;
        let altered = prepare(vec![]).await;
        assert!(!Arc::ptr_eq(&again, &altered));

        // Reads are not kept: each Parse plans them.
        let q = "SELECT a FROM t WHERE a = $1";
        let q1 = e.prepare_text(q, &[], &s).await.unwrap().unwrap();
        let q2 = e.prepare_text(q, &[], &s).await.unwrap().unwrap();
        assert!(!Arc::ptr_eq(&q1, &q2));
    }
}
