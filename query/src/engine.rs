//! [`Engine`]: turns statements into [`Output`]s. One per node, shared by all sessions.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{self as ast, ObjectName, Statement as SqlStatement};
use eddy_storage::{ObjectId, Store};

pub use crate::core::{Core, QueryConfig, MAX_PARTITIONS};
use crate::ddl::show_topics_schema;
use crate::description::{Description, Parsed, Writes};
use crate::dialect::{self, Statement};
use crate::dml::{self, DmlPlan};
use crate::error::{Error, Result};
pub use crate::output::Output;
use crate::params::param_types_of;
use crate::provider::EddySchemaProvider;
use crate::session::Session;

mod statements;

use crate::names::{pg_column_names, show_column, show_name};

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

/// The query engine of one node: parses and plans statements and dispatches each to the
/// module that runs it, handing it the [`Core`].
pub struct Engine {
    core: Arc<Core>,
    /// Statements parsed for the extended protocol, by SQL text (see [`Engine::parse_one`]).
    parsed: parking_lot::Mutex<HashMap<String, Parsed>>,
    /// Blind writes prepared for the extended protocol, by SQL text, with the parameter
    /// types the client declared (see [`Engine::prepare_text`]).
    prepared_writes: parking_lot::Mutex<HashMap<String, KeptWrite>>,
    /// Durable subscriptions this node serves.
    pub(crate) durable: Arc<crate::durable::DurableSubs>,
}

impl std::ops::Deref for Engine {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

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
        let core = Arc::new(Core::new(store, writer, ctx, config));
        let durable = Arc::new(crate::durable::DurableSubs::default());
        let system = Arc::new(crate::system::SystemSchema {
            core: Arc::downgrade(&core),
            durable: Arc::downgrade(&durable),
        });
        catalog.register_schema("eddy", system)?;
        Ok(Arc::new(Engine {
            core,
            parsed: parking_lot::Mutex::new(HashMap::new()),
            prepared_writes: parking_lot::Mutex::new(HashMap::new()),
            durable,
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
            Statement::ExplainRoute(_) => {
                (Kind::Other, vec![], Some(crate::system::route_schema()))
            }
            Statement::ShowSubscriptions => {
                (Kind::Other, vec![], Some(Core::subscriptions_schema()))
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
                dml::execute(self, session.lane(), plan, params).await
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
