//! INSERT, UPDATE and DELETE.
//!
//! Publishing must not plan through DataFusion per row: an INSERT whose VALUES are literals
//! and parameters is evaluated directly into typed rows and appended in one write
//! (the fast path). Anything else — INSERT ... SELECT, expressions in VALUES, UPDATE and
//! DELETE — runs a DataFusion SELECT of the rows to write, then writes them.
//!
//! | statement | how |
//! |---|---|
//! | `INSERT INTO topic VALUES (literals/$n)` | fast path → `Append` per partition |
//! | `INSERT INTO table ... [ON CONFLICT DO NOTHING]` | fast path → `Insert` (Error / Ignore) |
//! | `... ON CONFLICT (pk) DO UPDATE SET ... [WHERE ..]` | read existing row, merge where the WHERE holds (`excluded.col` bound as a parameter, unqualified columns the existing row's) → `Expect` (row as read, or absent) + `Insert(Replace)` / `Insert(Error)` |
//! | `UPDATE t SET .. WHERE ..` | `SELECT *, <new values> FROM t WHERE ..` → `Expect` + `Insert(Replace)` |
//! | `DELETE FROM t WHERE ..` | `SELECT * FROM t WHERE ..` → `Expect` + `Delete` |
//!
//! The last three are read-modify-writes: their `Expect`s are checked where the write is
//! ordered, and the statement runs again when a row changed meanwhile (`rmw`).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{
    self as ast, AssignmentTarget, Expr as SqlExpr, OnConflictAction, OnInsert, SetExpr,
    Statement as SqlStatement,
};
use eddy_storage::{encode_row, ColumnType, Lane, ObjectDef, OnConflict, TableDef, Value, WriteOp};
use futures::TryStreamExt;

use crate::convert::{build_array, cast_column, value_at};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ident::normalize_ident;
use crate::ident::object_name;
use crate::output::Output;
use crate::params::param_list;
use crate::params::param_types_of;
use crate::provider::{table_schema, topic_schema};

mod copy;
mod returning;
mod rmw;
mod table;
mod topic;
mod values;

pub(crate) use copy::plan as plan_copy;
use returning::{plan_returning, returning_output, Returning};
use table::check_size;
use topic::{append, finish_topic};
pub(crate) use topic::{append_rows, TOPIC_WRITE_META};
pub(crate) use values::{eval_simple, is_simple, note_param};

/// A planned INSERT / UPDATE / DELETE.
#[derive(Debug)]
pub struct DmlPlan {
    target: Arc<ObjectDef>,
    action: Action,
    /// Types of `$1..$n`.
    pub param_types: Vec<Option<DataType>>,
    returning: Option<Returning>,
}

#[derive(Debug)]
enum Action {
    /// Literal/parameter rows, evaluated without DataFusion.
    Values {
        columns: Vec<usize>,
        rows: Vec<Vec<SqlExpr>>,
        conflict: Conflict,
    },
    /// Rows from a DataFusion query (INSERT ... SELECT, computed VALUES).
    Query {
        columns: Vec<usize>,
        plan: Box<LogicalPlan>,
        conflict: Conflict,
    },
    /// `SELECT *, <assigned values> FROM t WHERE ...`
    Update {
        plan: Box<LogicalPlan>,
        assigned: Vec<usize>,
    },
    /// `SELECT * FROM t WHERE ...`
    Delete { plan: Box<LogicalPlan> },
}

#[derive(Debug, Clone)]
enum Conflict {
    Error,
    Nothing,
    Update {
        assignments: Vec<(usize, SqlExpr)>,
        /// `DO UPDATE ... WHERE`: a conflicting row is updated only where it holds.
        condition: Option<Box<SqlExpr>>,
        /// The existing row's name in the expressions: the INSERT's alias, else the table's.
        table_alias: String,
    },
}

/// The columns an INSERT may name: for topics `_key` and `_msg_id` (see
/// [`TOPIC_WRITE_META`]), then the user columns.
pub(crate) fn write_columns(def: &ObjectDef) -> Vec<(String, ColumnType)> {
    match def {
        ObjectDef::Topic(t) => [
            ("_key".to_owned(), ColumnType::Text),
            ("_msg_id".to_owned(), ColumnType::Text),
        ]
        .into_iter()
        .chain(t.columns.iter().map(|c| (c.name.clone(), c.ty)))
        .collect(),
        ObjectDef::Table(t) => t.columns.iter().map(|c| (c.name.clone(), c.ty)).collect(),
        ObjectDef::Subscription(_) => vec![],
    }
}

/// The schema of the rows a statement writes (what RETURNING sees).
fn written_schema(def: &ObjectDef) -> SchemaRef {
    match def {
        ObjectDef::Topic(t) => topic_schema(t),
        ObjectDef::Table(t) => table_schema(t),
        ObjectDef::Subscription(_) => Arc::new(arrow::datatypes::Schema::empty()),
    }
}

/// The topic or table a statement writes.
pub(crate) fn target(engine: &Core, name: &ast::ObjectName) -> Result<Arc<ObjectDef>> {
    let name = object_name(name)?;
    match engine.store().catalog().get(&name) {
        Some(def) if !matches!(*def, ObjectDef::Subscription(_)) => Ok(def),
        _ => Err(Error::UndefinedObject { name }),
    }
}

pub(crate) fn column_index(
    def: &ObjectDef,
    cols: &[(String, ColumnType)],
    name: &str,
) -> Result<usize> {
    if let Some(i) = cols.iter().position(|(n, _)| n == name) {
        return Ok(i);
    }
    if matches!(def, ObjectDef::Topic(_)) && ["_partition", "_offset", "_ts"].contains(&name) {
        return Err(Error::ReadOnlyColumn {
            column: name.to_owned(),
        });
    }
    Err(Error::UndefinedColumn {
        relation: def.name().to_owned(),
        column: name.to_owned(),
    })
}

/// Plans an INSERT, UPDATE or DELETE.
pub(crate) async fn plan(engine: &Core, stmt: &SqlStatement) -> Result<DmlPlan> {
    match stmt {
        SqlStatement::Insert(ins) => plan_insert(engine, ins).await,
        SqlStatement::Update(up) => plan_update(engine, up).await,
        SqlStatement::Delete(del) => plan_delete(engine, del).await,
        other => Err(Error::NotSupported(other.to_string())),
    }
}

async fn plan_insert(engine: &Core, ins: &ast::Insert) -> Result<DmlPlan> {
    let ast::TableObject::TableName(name) = &ins.table else {
        return Err(Error::NotSupported("INSERT INTO a table function".into()));
    };
    let def = target(engine, name)?;
    let cols = write_columns(&def);
    let columns: Vec<usize> = if ins.columns.is_empty() {
        // Without a column list a topic takes its user columns (not _key, _msg_id).
        let skip = if matches!(*def, ObjectDef::Topic(_)) {
            TOPIC_WRITE_META
        } else {
            0
        };
        (skip..cols.len()).collect()
    } else {
        ins.columns
            .iter()
            .map(|c| {
                let id =
                    c.0.last()
                        .and_then(|p| p.as_ident())
                        .ok_or_else(|| Error::Syntax(c.to_string()))?;
                column_index(&def, &cols, &normalize_ident(id))
            })
            .collect::<Result<_>>()?
    };
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(Error::InvalidParameter(format!(
                "column \"{}\" specified more than once",
                cols[*c].0
            )));
        }
    }
    let alias = ins.table_alias.as_ref().map(|a| normalize_ident(&a.alias));
    let conflict = plan_conflict(&def, &cols, ins.on.as_ref(), alias)?;
    let mut param_types = Vec::new();
    if let Conflict::Update { assignments, .. } = &conflict {
        for (i, e) in assignments {
            note_param(e, cols[*i].1, &mut param_types)?;
        }
    }
    let returning = plan_returning(&def, &ins.returning).await?;
    let source = ins
        .source
        .as_ref()
        .ok_or_else(|| Error::NotSupported("INSERT without VALUES or SELECT".into()))?;
    if let SetExpr::Values(values) = &*source.body {
        if source.order_by.is_none()
            && source.limit_clause.is_none()
            && values
                .rows
                .iter()
                .flat_map(|r| r.content.iter())
                .all(is_simple)
        {
            let rows: Vec<Vec<SqlExpr>> = values.rows.iter().map(|r| r.content.clone()).collect();
            for row in &rows {
                if row.len() != columns.len() {
                    return Err(Error::Syntax(format!(
                        "INSERT has {} expressions but {} target columns",
                        row.len(),
                        columns.len()
                    )));
                }
                for (e, c) in row.iter().zip(&columns) {
                    note_param(e, cols[*c].1, &mut param_types)?;
                }
            }
            return Ok(DmlPlan {
                target: def,
                action: Action::Values {
                    columns,
                    rows,
                    conflict,
                },
                param_types,
                returning,
            });
        }
    }
    let plan = engine
        .plan_sql(&SqlStatement::Query(source.clone()))
        .await?;
    if plan.schema().fields().len() != columns.len() {
        return Err(Error::Syntax(format!(
            "INSERT has {} expressions but {} target columns",
            plan.schema().fields().len(),
            columns.len()
        )));
    }
    let types = param_types_of(&plan)?;
    merge_types(&mut param_types, types);
    Ok(DmlPlan {
        target: def,
        action: Action::Query {
            columns,
            plan: Box::new(plan),
            conflict,
        },
        param_types,
        returning,
    })
}

fn merge_types(into: &mut Vec<Option<DataType>>, from: Vec<Option<DataType>>) {
    if into.len() < from.len() {
        into.resize(from.len(), None);
    }
    for (i, t) in from.into_iter().enumerate() {
        if into[i].is_none() {
            into[i] = t;
        }
    }
}

fn plan_conflict(
    def: &ObjectDef,
    cols: &[(String, ColumnType)],
    on: Option<&OnInsert>,
    alias: Option<String>,
) -> Result<Conflict> {
    let Some(on) = on else {
        return Ok(Conflict::Error);
    };
    let ObjectDef::Table(table) = def else {
        return Err(Error::WrongObjectType {
            name: def.name().to_owned(),
            expected: "table (topics have no keys to conflict on)",
        });
    };
    let OnInsert::OnConflict(oc) = on else {
        return Err(Error::NotSupported("ON DUPLICATE KEY".into()));
    };
    if let Some(ast::ConflictTarget::Columns(c)) = &oc.conflict_target {
        let mut named: Vec<String> = c.iter().map(normalize_ident).collect();
        let mut pk: Vec<String> = table
            .primary_key
            .iter()
            .map(|&i| table.columns[i].name.clone())
            .collect();
        named.sort();
        pk.sort();
        if named != pk {
            return Err(Error::InvalidParameter(
                "there is no unique or exclusion constraint matching the ON CONFLICT specification"
                    .into(),
            ));
        }
    }
    match &oc.action {
        OnConflictAction::DoNothing => Ok(Conflict::Nothing),
        OnConflictAction::DoUpdate(du) => {
            let assignments = du
                .assignments
                .iter()
                .map(|a| {
                    let AssignmentTarget::ColumnName(n) = &a.target else {
                        return Err(Error::NotSupported("tuple assignment".into()));
                    };
                    let id =
                        n.0.last()
                            .and_then(|p| p.as_ident())
                            .ok_or_else(|| Error::Syntax(n.to_string()))?;
                    Ok((
                        column_index(def, cols, &normalize_ident(id))?,
                        a.value.clone(),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Conflict::Update {
                assignments,
                condition: du.selection.clone().map(Box::new),
                table_alias: alias.unwrap_or_else(|| table.name.clone()),
            })
        }
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn table_of(def: &Arc<ObjectDef>, verb: &str) -> Result<TableDef> {
    match &**def {
        ObjectDef::Table(t) => Ok(t.clone()),
        ObjectDef::Topic(t) => Err(Error::WrongObjectType {
            name: t.name.clone(),
            expected: if verb == "UPDATE" {
                "table (topics are append-only; UPDATE needs a table)"
            } else {
                "table (topics are append-only; DELETE needs a table, retention removes old messages)"
            },
        }),
        ObjectDef::Subscription(s) => Err(Error::WrongObjectType {
            name: s.name.clone(),
            expected: "table",
        }),
    }
}

async fn plan_select(engine: &Core, sql: &str) -> Result<LogicalPlan> {
    let stmts = crate::dialect::parse_sql(sql, &engine.compat)?;
    let [crate::dialect::Statement::Sql(s)] = stmts.as_slice() else {
        return Err(Error::Syntax(sql.to_owned()));
    };
    engine.plan_sql(s).await
}

/// How the target of an UPDATE or DELETE is named in its SELECT: its alias, else its
/// table name.
fn target_ref(name: &ast::ObjectName, alias: Option<&ast::TableAlias>) -> Result<String> {
    Ok(match alias {
        Some(a) => quote(&normalize_ident(&a.name)),
        None => quote(&object_name(name)?),
    })
}

/// The target and the `FROM` (UPDATE) or `USING` (DELETE) relations it is joined with.
fn relations(target: &ast::TableWithJoins, others: &[ast::TableWithJoins]) -> String {
    std::iter::once(target)
        .chain(others)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn plan_update(engine: &Core, up: &ast::Update) -> Result<DmlPlan> {
    if !up.table.joins.is_empty() {
        return Err(Error::NotSupported("UPDATE of a join".into()));
    }
    let ast::TableFactor::Table { name, alias, .. } = &up.table.relation else {
        return Err(Error::NotSupported("UPDATE of a derived table".into()));
    };
    let from = match &up.from {
        None => &[][..],
        Some(
            ast::UpdateTableFromKind::AfterSet(list) | ast::UpdateTableFromKind::BeforeSet(list),
        ) => &list[..],
    };
    let def = target(engine, name)?;
    table_of(&def, "UPDATE")?;
    let cols = write_columns(&def);
    let mut assigned = Vec::new();
    let mut exprs = Vec::new();
    let mut param_types = Vec::new();
    for a in &up.assignments {
        let AssignmentTarget::ColumnName(n) = &a.target else {
            return Err(Error::NotSupported("tuple assignment".into()));
        };
        let id =
            n.0.last()
                .and_then(|p| p.as_ident())
                .ok_or_else(|| Error::Syntax(n.to_string()))?;
        let i = column_index(&def, &cols, &normalize_ident(id))?;
        note_param(&a.value, cols[i].1, &mut param_types)?;
        assigned.push(i);
        exprs.push(a.value.to_string());
    }
    let mut sql = format!(
        "SELECT {}.*, {} FROM {}",
        target_ref(name, alias.as_ref())?,
        exprs.join(", "),
        relations(&up.table, from)
    );
    if let Some(w) = &up.selection {
        sql.push_str(&format!(" WHERE {w}"));
    }
    let plan = plan_select(engine, &sql).await?;
    merge_types(&mut param_types, param_types_of(&plan)?);
    let returning = plan_returning(&def, &up.returning).await?;
    Ok(DmlPlan {
        target: def,
        action: Action::Update {
            plan: Box::new(plan),
            assigned,
        },
        param_types,
        returning,
    })
}

async fn plan_delete(engine: &Core, del: &ast::Delete) -> Result<DmlPlan> {
    let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) = &del.from;
    if from.len() != 1 || !from[0].joins.is_empty() {
        return Err(Error::NotSupported("DELETE from several tables".into()));
    }
    let ast::TableFactor::Table { name, alias, .. } = &from[0].relation else {
        return Err(Error::NotSupported("DELETE from a derived table".into()));
    };
    let def = target(engine, name)?;
    table_of(&def, "DELETE")?;
    let mut sql = format!(
        "SELECT {}.* FROM {}",
        target_ref(name, alias.as_ref())?,
        relations(&from[0], del.using.as_deref().unwrap_or_default())
    );
    if let Some(w) = &del.selection {
        sql.push_str(&format!(" WHERE {w}"));
    }
    let plan = plan_select(engine, &sql).await?;
    let param_types = param_types_of(&plan)?;
    let returning = plan_returning(&def, &del.returning).await?;
    Ok(DmlPlan {
        target: def,
        action: Action::Delete {
            plan: Box::new(plan),
        },
        param_types,
        returning,
    })
}

impl DmlPlan {
    /// Whether the plan's target is still the catalog's definition of it (not altered,
    /// dropped or made anew since the plan was made).
    pub(crate) fn targets_current(&self, catalog: &eddy_storage::Catalog) -> bool {
        catalog
            .get(self.target.name())
            .is_some_and(|d| Arc::ptr_eq(&d, &self.target))
    }

    /// The RETURNING columns, if any.
    pub fn returning_schema(&self) -> Option<SchemaRef> {
        self.returning.as_ref().map(|r| r.schema.clone())
    }
}

/// The primary key of `row`, a full row of `table`.
pub(super) fn key_of(table: &TableDef, row: &[Value]) -> Vec<Value> {
    table.primary_key.iter().map(|&i| row[i].clone()).collect()
}

/// The primary keys of a table's rows seen so far.
#[derive(Default)]
struct Keys(std::collections::HashSet<Vec<u8>>);

impl Keys {
    /// True the first time `row`'s primary key is seen.
    fn first(&mut self, table: &TableDef, row: &[Value]) -> bool {
        let mut key = Vec::new();
        encode_row(&key_of(table, row), &mut key);
        self.0.insert(key)
    }
}

/// Rows of a DataFusion result, cast to the given column types.
async fn collect_rows(
    engine: &Core,
    plan: &LogicalPlan,
    params: &ParamValues,
    types: &[(String, ColumnType)],
) -> Result<Vec<Vec<Value>>> {
    let stream = engine.run_plan(plan, params).await?;
    let batches: Vec<RecordBatch> = stream.try_collect().await?;
    let mut rows = Vec::new();
    for b in batches {
        let cast: Vec<ArrayRef> = b
            .columns()
            .iter()
            .zip(types)
            .map(|(a, (name, ty))| cast_column(a, *ty, name))
            .collect::<Result<_>>()?;
        for r in 0..b.num_rows() {
            rows.push(
                cast.iter()
                    .zip(types)
                    .map(|(a, (_, ty))| value_at(a, r, *ty))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
    }
    Ok(rows)
}

/// Executes a planned DML statement.
pub(crate) async fn execute(
    engine: &Core,
    lane: Lane,
    plan: &DmlPlan,
    params: &ParamValues,
) -> Result<Output> {
    let cols = write_columns(&plan.target);
    match &plan.action {
        Action::Values {
            columns,
            rows,
            conflict,
        } => {
            let scalars = param_list(params);
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut full = vec![Value::Null; cols.len()];
                for (e, &c) in row.iter().zip(columns) {
                    full[c] = eval_simple(e, cols[c].1, &cols[c].0, &scalars)?;
                }
                out.push(full);
            }
            write_rows(engine, lane, plan, out, conflict, params).await
        }
        Action::Query {
            columns,
            plan: source,
            conflict,
        } => {
            let types: Vec<(String, ColumnType)> =
                columns.iter().map(|&c| cols[c].clone()).collect();
            let got = collect_rows(engine, source, params, &types).await?;
            let rows = got
                .into_iter()
                .map(|r| {
                    let mut full = vec![Value::Null; cols.len()];
                    for (v, &c) in r.into_iter().zip(columns) {
                        full[c] = v;
                    }
                    full
                })
                .collect();
            write_rows(engine, lane, plan, rows, conflict, params).await
        }
        Action::Update {
            plan: select,
            assigned,
        } => {
            let table = table_of(&plan.target, "UPDATE")?;
            let mut conflicts = rmw::Conflicts::new(engine, table.id);
            loop {
                match update_once(engine, lane, &table, select, assigned, &cols, params).await {
                    Ok(written) => return finish(plan, "UPDATE", written),
                    Err(e) => conflicts.again(e).await?,
                }
            }
        }
        Action::Delete { plan: select } => {
            let table = table_of(&plan.target, "DELETE")?;
            let mut conflicts = rmw::Conflicts::new(engine, table.id);
            loop {
                match delete_once(engine, lane, &table, select, &cols, params).await {
                    Ok(deleted) => return finish(plan, "DELETE", deleted),
                    Err(e) => conflicts.again(e).await?,
                }
            }
        }
    }
}

/// One try of an UPDATE: reads the rows and their new values, and writes them on the
/// condition that each row is still as read ([`WriteOp::Expect`]); returns the rows
/// written.
async fn update_once(
    engine: &Core,
    lane: Lane,
    table: &TableDef,
    select: &LogicalPlan,
    assigned: &[usize],
    cols: &[(String, ColumnType)],
    params: &ParamValues,
) -> Result<Vec<Vec<Value>>> {
    let mut types = cols.to_vec();
    types.extend(assigned.iter().map(|&i| cols[i].clone()));
    let rows = collect_rows(engine, select, params, &types).await?;
    // The conditions first, so each is checked against the row as it was before the
    // statement (not as an earlier row of it left it).
    let mut ops = rmw::Ops::default();
    let mut written = Vec::new();
    let mut seen = Keys::default();
    for mut r in rows {
        // With FROM, a row joining several FROM rows is updated once, from the first.
        if !seen.first(table, &r) {
            continue;
        }
        let new_values = r.split_off(cols.len());
        let mut new = r.clone();
        for (&i, v) in assigned.iter().zip(new_values) {
            new[i] = v;
        }
        check_size(engine, &new)?;
        let old_pk = key_of(table, &r);
        let new_pk = key_of(table, &new);
        let moved = old_pk != new_pk;
        ops.expect(table, old_pk.clone(), Some(r));
        if moved {
            ops.write(WriteOp::Delete {
                table: table.id,
                keys: vec![old_pk],
            });
        }
        ops.write(WriteOp::Insert {
            table: table.id,
            rows: vec![new.clone()],
            on_conflict: if moved {
                OnConflict::Error
            } else {
                OnConflict::Replace
            },
        });
        written.push(new);
    }
    ops.submit(engine, lane).await?;
    Ok(written)
}

/// One try of a DELETE: reads the rows and deletes them on the condition that each is
/// still as read; returns the rows deleted.
async fn delete_once(
    engine: &Core,
    lane: Lane,
    table: &TableDef,
    select: &LogicalPlan,
    cols: &[(String, ColumnType)],
    params: &ParamValues,
) -> Result<Vec<Vec<Value>>> {
    let mut rows = collect_rows(engine, select, params, cols).await?;
    // With USING, a row joining several USING rows is deleted (and counted) once.
    let mut seen = Keys::default();
    rows.retain(|r| seen.first(table, r));
    if rows.is_empty() {
        return Ok(rows);
    }
    let mut ops = rmw::Ops::default();
    let keys: Vec<Vec<Value>> = rows.iter().map(|r| key_of(table, r)).collect();
    for (k, r) in keys.iter().zip(&rows) {
        ops.expect(table, k.clone(), Some(r.clone()));
    }
    ops.write(WriteOp::Delete {
        table: table.id,
        keys,
    });
    ops.submit(engine, lane).await?;
    Ok(rows)
}

/// Writes full rows (for topics: `_key` and `_msg_id` first, then the user columns).
async fn write_rows(
    engine: &Core,
    lane: Lane,
    plan: &DmlPlan,
    rows: Vec<Vec<Value>>,
    conflict: &Conflict,
    params: &ParamValues,
) -> Result<Output> {
    match &*plan.target {
        ObjectDef::Subscription(s) => Err(Error::WrongObjectType {
            name: s.name.clone(),
            expected: "topic or table",
        }),
        ObjectDef::Topic(topic) => {
            let written = append(engine, lane, topic, rows).await?;
            finish_topic(plan, topic, written)
        }
        ObjectDef::Table(table) => {
            table::write(engine, lane, plan, table, rows, conflict, params).await
        }
    }
}

fn finish(plan: &DmlPlan, verb: &str, rows: Vec<Vec<Value>>) -> Result<Output> {
    let tag = if verb == "INSERT" {
        "INSERT 0".to_owned()
    } else {
        verb.to_owned()
    };
    let Some(ret) = &plan.returning else {
        return Ok(Output::Command {
            tag,
            rows: Some(rows.len() as u64),
        });
    };
    let ObjectDef::Table(table) = &*plan.target else {
        return Err(Error::Syntax("RETURNING".into()));
    };
    let cols: Vec<ArrayRef> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| build_array(c.ty, rows.iter().map(|r| &r[i])))
        .collect();
    let batch = RecordBatch::try_new(table_schema(table), cols)?;
    returning_output(ret, batch, &tag)
}
