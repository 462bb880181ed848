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
//! | `... ON CONFLICT (pk) DO UPDATE SET ...` | read existing row, merge, `Insert(Replace)`, or `Insert(Error)` for a new key; under the RMW lock; run again if a key appeared meanwhile (another node, a gossip merge) |
//! | `UPDATE t SET .. WHERE ..` | `SELECT *, <new values> FROM t WHERE ..` → `Insert(Replace)`; under the RMW lock |
//! | `DELETE FROM t WHERE ..` | `SELECT * FROM t WHERE ..` → `Delete` |

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    self as ast, AssignmentTarget, Expr as SqlExpr, OnConflictAction, OnInsert, SelectItem,
    SetExpr, Statement as SqlStatement, UnaryOperator, Value as SqlValue,
};
use eddy_storage::{
    encode_row, ColumnType, ObjectDef, OnConflict, TableDef, Value, WriteOp, WriteResult,
};
use futures::TryStreamExt;

use crate::convert::{build_array, cast_column, scalar_to_value, value_at};
use crate::engine::{normalize_ident, object_name, param_list, param_types_of, Engine, Output};
use crate::error::{Error, Result};
use crate::provider::{table_schema, topic_schema};
use crate::types::{arrow_type, parse_text};

mod topic;

use topic::{append, finish_topic};
pub(crate) use topic::{append_rows, TOPIC_WRITE_META};

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
struct Returning {
    indexes: Vec<usize>,
    schema: SchemaRef,
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
pub(crate) fn target(engine: &Engine, name: &ast::ObjectName) -> Result<Arc<ObjectDef>> {
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

fn plan_returning(def: &ObjectDef, items: &Option<Vec<SelectItem>>) -> Result<Option<Returning>> {
    let Some(items) = items else { return Ok(None) };
    let schema = written_schema(def);
    let mut indexes = Vec::new();
    let mut fields = Vec::new();
    for item in items {
        let (expr, alias) = match item {
            SelectItem::Wildcard(_) => {
                for (i, f) in schema.fields().iter().enumerate() {
                    indexes.push(i);
                    fields.push(f.as_ref().clone());
                }
                continue;
            }
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(normalize_ident(alias))),
            other => return Err(Error::NotSupported(format!("RETURNING {other}"))),
        };
        let name = match expr {
            SqlExpr::Identifier(id) => normalize_ident(id),
            SqlExpr::CompoundIdentifier(ids) if ids.len() == 2 => normalize_ident(&ids[1]),
            other => {
                return Err(Error::NotSupported(format!(
                    "RETURNING expression {other} (name columns only)"
                )))
            }
        };
        let i = schema.index_of(&name).map_err(|_| Error::UndefinedColumn {
            relation: def.name().to_owned(),
            column: name.clone(),
        })?;
        indexes.push(i);
        let f = schema.field(i).clone();
        fields.push(match alias {
            Some(a) => f.with_name(a),
            None => f,
        });
    }
    Ok(Some(Returning {
        indexes,
        schema: Arc::new(Schema::new(fields)),
    }))
}

/// True when `e` can be evaluated without DataFusion.
pub(crate) fn is_simple(e: &SqlExpr) -> bool {
    match e {
        SqlExpr::Value(v) => matches!(
            v.value,
            SqlValue::Number(..)
                | SqlValue::SingleQuotedString(_)
                | SqlValue::Boolean(_)
                | SqlValue::Null
                | SqlValue::Placeholder(_)
                | SqlValue::EscapedStringLiteral(_)
                | SqlValue::DollarQuotedString(_)
        ),
        SqlExpr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => {
            matches!(&**expr, SqlExpr::Value(v) if matches!(v.value, SqlValue::Number(..)))
        }
        SqlExpr::Cast { expr, .. } => is_simple(expr),
        SqlExpr::Nested(e) => is_simple(e),
        _ => false,
    }
}

fn placeholder_index(p: &str) -> Result<usize> {
    p.strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .map(|n| n - 1)
        .ok_or_else(|| Error::Syntax(format!("bad parameter {p}")))
}

/// Records `$n` → `ty` for a (possibly cast) bare placeholder.
pub(crate) fn note_param(
    e: &SqlExpr,
    ty: ColumnType,
    types: &mut Vec<Option<DataType>>,
) -> Result<()> {
    match e {
        SqlExpr::Value(v) => {
            if let SqlValue::Placeholder(p) = &v.value {
                let i = placeholder_index(p)?;
                if types.len() <= i {
                    types.resize(i + 1, None);
                }
                types[i].get_or_insert_with(|| arrow_type(ty));
            }
            Ok(())
        }
        SqlExpr::Cast { expr, .. } | SqlExpr::Nested(expr) => note_param(expr, ty, types),
        _ => Ok(()),
    }
}

/// Evaluates a simple expression (see [`is_simple`]) as a value of `ty`.
pub(crate) fn eval_simple(
    e: &SqlExpr,
    ty: ColumnType,
    column: &str,
    params: &[ScalarValue],
) -> Result<Value> {
    match e {
        SqlExpr::Value(v) => match &v.value {
            SqlValue::Null => Ok(Value::Null),
            SqlValue::Number(n, _) => number_value(ty, n, column),
            SqlValue::SingleQuotedString(s) | SqlValue::EscapedStringLiteral(s) => {
                parse_text(ty, s)
            }
            SqlValue::DollarQuotedString(d) => parse_text(ty, &d.value),
            SqlValue::Boolean(b) => match ty {
                ColumnType::Bool => Ok(Value::Bool(*b)),
                ColumnType::Text => Ok(Value::Text(b.to_string())),
                _ => Err(mismatch(column, ty, "boolean")),
            },
            SqlValue::Placeholder(p) => {
                let i = placeholder_index(p)?;
                let s = params.get(i).ok_or_else(|| {
                    Error::InvalidParameter(format!("no value for parameter {p}"))
                })?;
                scalar_to_value(s, ty, column)
            }
            other => Err(Error::NotSupported(format!("value {other}"))),
        },
        SqlExpr::UnaryOp { op, expr } => {
            let SqlExpr::Value(v) = &**expr else {
                return Err(Error::NotSupported(e.to_string()));
            };
            let SqlValue::Number(n, _) = &v.value else {
                return Err(Error::NotSupported(e.to_string()));
            };
            let n = if matches!(op, UnaryOperator::Minus) {
                format!("-{n}")
            } else {
                n.clone()
            };
            number_value(ty, &n, column)
        }
        SqlExpr::Cast { expr, .. } | SqlExpr::Nested(expr) => eval_simple(expr, ty, column, params),
        other => Err(Error::NotSupported(other.to_string())),
    }
}

fn mismatch(column: &str, ty: ColumnType, got: &str) -> Error {
    Error::DatatypeMismatch(format!(
        "column \"{column}\" is of type {} but expression is of type {got}",
        ty.sql_name()
    ))
}

fn number_value(ty: ColumnType, n: &str, column: &str) -> Result<Value> {
    match ty {
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
            if let Ok(i) = n.parse::<i128>() {
                return crate::types::int_value(ty, i).ok_or_else(|| Error::OutOfRange {
                    ty: ty.sql_name(),
                    value: n.into(),
                });
            }
            // 1.5 into an integer column rounds, as PostgreSQL's assignment cast does.
            let f: f64 = n.parse().map_err(|_| Error::InvalidText {
                ty: ty.sql_name(),
                value: n.into(),
            })?;
            crate::types::int_value(ty, f.round() as i128).ok_or_else(|| Error::OutOfRange {
                ty: ty.sql_name(),
                value: n.into(),
            })
        }
        ColumnType::Float32 | ColumnType::Float64 | ColumnType::Text => parse_text(ty, n),
        _ => Err(mismatch(column, ty, "numeric")),
    }
}

/// Plans an INSERT, UPDATE or DELETE.
pub(crate) async fn plan(engine: &Engine, stmt: &SqlStatement) -> Result<DmlPlan> {
    match stmt {
        SqlStatement::Insert(ins) => plan_insert(engine, ins).await,
        SqlStatement::Update(up) => plan_update(engine, up).await,
        SqlStatement::Delete(del) => plan_delete(engine, del).await,
        other => Err(Error::NotSupported(other.to_string())),
    }
}

async fn plan_insert(engine: &Engine, ins: &ast::Insert) -> Result<DmlPlan> {
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
    let conflict = plan_conflict(&def, &cols, ins.on.as_ref())?;
    let mut param_types = Vec::new();
    if let Conflict::Update { assignments, .. } = &conflict {
        for (i, e) in assignments {
            note_param(e, cols[*i].1, &mut param_types)?;
        }
    }
    let returning = plan_returning(&def, &ins.returning)?;
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
            if du.selection.is_some() {
                return Err(Error::NotSupported(
                    "ON CONFLICT DO UPDATE ... WHERE".into(),
                ));
            }
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
                table_alias: table.name.clone(),
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

async fn plan_select(engine: &Engine, sql: &str) -> Result<LogicalPlan> {
    let stmts = engine.parse(sql)?;
    let [crate::dialect::Statement::Sql(s)] = stmts.as_slice() else {
        return Err(Error::Syntax(sql.to_owned()));
    };
    engine.plan_sql(s).await
}

async fn plan_update(engine: &Engine, up: &ast::Update) -> Result<DmlPlan> {
    if up.from.is_some() || !up.table.joins.is_empty() {
        return Err(Error::NotSupported("UPDATE ... FROM".into()));
    }
    let ast::TableFactor::Table { name, .. } = &up.table.relation else {
        return Err(Error::NotSupported("UPDATE of a derived table".into()));
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
    let mut sql = format!("SELECT *, {} FROM {}", exprs.join(", "), up.table);
    if let Some(w) = &up.selection {
        sql.push_str(&format!(" WHERE {w}"));
    }
    let plan = plan_select(engine, &sql).await?;
    merge_types(&mut param_types, param_types_of(&plan)?);
    let returning = plan_returning(&def, &up.returning)?;
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

async fn plan_delete(engine: &Engine, del: &ast::Delete) -> Result<DmlPlan> {
    let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) = &del.from;
    if from.len() != 1 || del.using.is_some() || !from[0].joins.is_empty() {
        return Err(Error::NotSupported("DELETE ... USING".into()));
    }
    let ast::TableFactor::Table { name, .. } = &from[0].relation else {
        return Err(Error::NotSupported("DELETE from a derived table".into()));
    };
    let def = target(engine, name)?;
    table_of(&def, "DELETE")?;
    let mut sql = format!("SELECT * FROM {}", from[0]);
    if let Some(w) = &del.selection {
        sql.push_str(&format!(" WHERE {w}"));
    }
    let plan = plan_select(engine, &sql).await?;
    let param_types = param_types_of(&plan)?;
    let returning = plan_returning(&def, &del.returning)?;
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

    /// True for `INSERT .. VALUES` without `ON CONFLICT DO UPDATE`: the statement reads
    /// nothing before its write, so a connection may run the next statement before this
    /// one's write is acknowledged (pipelining) without changing what either does.
    pub(crate) fn writes_blind(&self) -> bool {
        matches!(
            &self.action,
            Action::Values {
                conflict: Conflict::Error | Conflict::Nothing,
                ..
            }
        )
    }

    /// The RETURNING columns, if any.
    pub fn returning_schema(&self) -> Option<SchemaRef> {
        self.returning.as_ref().map(|r| r.schema.clone())
    }
}

/// Rows of a DataFusion result, cast to the given column types.
async fn collect_rows(
    engine: &Engine,
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
    engine: &Engine,
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
            write_rows(engine, plan, out, conflict, params).await
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
            write_rows(engine, plan, rows, conflict, params).await
        }
        Action::Update {
            plan: select,
            assigned,
        } => {
            let table = table_of(&plan.target, "UPDATE")?;
            let mut types = cols.clone();
            types.extend(assigned.iter().map(|&i| cols[i].clone()));
            let _guard = engine.rmw.lock().await;
            let rows = collect_rows(engine, select, params, &types).await?;
            let mut ops = Vec::new();
            let mut written = Vec::new();
            for mut r in rows {
                let new_values = r.split_off(cols.len());
                let mut new = r.clone();
                for (&i, v) in assigned.iter().zip(new_values) {
                    new[i] = v;
                }
                check_size(engine, &new)?;
                let old_pk: Vec<Value> = table.primary_key.iter().map(|&i| r[i].clone()).collect();
                let new_pk: Vec<Value> =
                    table.primary_key.iter().map(|&i| new[i].clone()).collect();
                if old_pk != new_pk {
                    ops.push(WriteOp::Delete {
                        table: table.id,
                        keys: vec![old_pk],
                    });
                    ops.push(WriteOp::Insert {
                        table: table.id,
                        rows: vec![new.clone()],
                        on_conflict: OnConflict::Error,
                    });
                } else {
                    ops.push(WriteOp::Insert {
                        table: table.id,
                        rows: vec![new.clone()],
                        on_conflict: OnConflict::Replace,
                    });
                }
                written.push(new);
            }
            if !ops.is_empty() {
                engine.write(ops).await?;
            }
            finish(plan, "UPDATE", written)
        }
        Action::Delete { plan: select } => {
            let table = table_of(&plan.target, "DELETE")?;
            // Serialised with UPDATE / upserts, so an UPDATE that read a row before this
            // DELETE removed it cannot write it back afterwards.
            let _guard = engine.rmw.lock().await;
            let rows = collect_rows(engine, select, params, &cols).await?;
            let keys: Vec<Vec<Value>> = rows
                .iter()
                .map(|r| table.primary_key.iter().map(|&i| r[i].clone()).collect())
                .collect();
            let mut deleted = Vec::new();
            if !keys.is_empty() {
                let res = engine
                    .write(vec![WriteOp::Delete {
                        table: table.id,
                        keys,
                    }])
                    .await?;
                // Rows deleted meanwhile by someone else are not counted (nor returned).
                if let Some(WriteResult::Rows(n)) = res.first() {
                    deleted = rows;
                    deleted.truncate(*n as usize);
                }
            }
            finish(plan, "DELETE", deleted)
        }
    }
}

fn check_size(engine: &Engine, values: &[Value]) -> Result<()> {
    let mut buf = Vec::new();
    encode_row(values, &mut buf);
    if buf.len() > engine.config.max_message_bytes {
        return Err(Error::MessageTooLarge {
            size: buf.len(),
            limit: engine.config.max_message_bytes,
        });
    }
    Ok(())
}

/// Writes full rows (for topics: `_key` and `_msg_id` first, then the user columns).
async fn write_rows(
    engine: &Engine,
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
            let written = append(engine, topic, rows).await?;
            finish_topic(plan, topic, written)
        }
        ObjectDef::Table(table) => {
            for r in &rows {
                check_size(engine, r)?;
            }
            match conflict {
                Conflict::Error | Conflict::Nothing => {
                    let mode = if matches!(conflict, Conflict::Error) {
                        OnConflict::Error
                    } else {
                        OnConflict::Ignore
                    };
                    let n = match engine
                        .write(vec![WriteOp::Insert {
                            table: table.id,
                            rows: rows.clone(),
                            on_conflict: mode,
                        }])
                        .await?
                        .first()
                    {
                        Some(WriteResult::Rows(n)) => *n,
                        _ => 0,
                    };
                    // With DO NOTHING some rows may be skipped; RETURNING then shows those written.
                    let mut rows = rows;
                    if (n as usize) < rows.len() {
                        rows.truncate(n as usize);
                    }
                    finish(plan, "INSERT", rows)
                }
                Conflict::Update {
                    assignments,
                    table_alias,
                } => {
                    let _guard = engine.rmw.lock().await;
                    // The rows are read, merged and written back; the write refuses a
                    // key that appeared after the read (another node's upsert, a gossip
                    // delta merged meanwhile). Nothing of the statement is written then,
                    // so it runs again on fresh rows, after this replica has caught up.
                    let mut attempt = 0;
                    loop {
                        let tried =
                            upsert_once(engine, table, table_alias, assignments, &rows, params)
                                .await;
                        match tried {
                            Err(Error::Storage(eddy_storage::Error::DuplicateKey { .. }))
                                if attempt < UPSERT_ATTEMPTS =>
                            {
                                attempt += 1;
                                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt))
                                    .await;
                                engine.writer.read_barrier(&[table.id]).await?;
                            }
                            Err(e) => return Err(e),
                            Ok(written) => return finish(plan, "INSERT", written),
                        }
                    }
                }
            }
        }
    }
}

/// How often an upsert runs again after a key appeared between its read and its write.
const UPSERT_ATTEMPTS: u64 = 10;

/// One try of `INSERT ... ON CONFLICT DO UPDATE`: reads each row's current version,
/// merges, and writes all of them at once; returns the rows written.
async fn upsert_once(
    engine: &Engine,
    table: &TableDef,
    table_alias: &str,
    assignments: &[(usize, SqlExpr)],
    rows: &[Vec<Value>],
    params: &ParamValues,
) -> Result<Vec<Vec<Value>>> {
    let mut written = Vec::new();
    let mut ops = Vec::new();
    for row in rows {
        let pk: Vec<Value> = table.primary_key.iter().map(|&i| row[i].clone()).collect();
        let store = engine.store().clone();
        let t = table.clone();
        let existing = tokio::task::spawn_blocking(move || store.get_row(&t, &pk))
            .await
            .map_err(|e| Error::InvalidParameter(e.to_string()))??;
        match existing {
            None => {
                ops.push(WriteOp::Insert {
                    table: table.id,
                    rows: vec![row.clone()],
                    on_conflict: OnConflict::Error,
                });
                written.push(row.clone());
            }
            Some(old) => {
                let merged =
                    merge_update(table, table_alias, &old, row, assignments, params).await?;
                check_size(engine, &merged)?;
                ops.push(WriteOp::Insert {
                    table: table.id,
                    rows: vec![merged.clone()],
                    on_conflict: OnConflict::Replace,
                });
                written.push(merged);
            }
        }
    }
    engine.write(ops).await?;
    Ok(written)
}

/// The row after `ON CONFLICT DO UPDATE SET ...` applied to `old` with `excluded` = `new`.
async fn merge_update(
    table: &TableDef,
    alias: &str,
    old: &[Value],
    new: &[Value],
    assignments: &[(usize, SqlExpr)],
    params: &ParamValues,
) -> Result<Vec<Value>> {
    let mut merged = old.to_vec();
    let scalars = param_list(params);
    let mut complex = Vec::new();
    for (i, e) in assignments {
        let col = &table.columns[*i];
        let excluded_col = match e {
            SqlExpr::CompoundIdentifier(ids)
                if ids.len() == 2 && normalize_ident(&ids[0]) == "excluded" =>
            {
                table
                    .columns
                    .iter()
                    .position(|c| c.name == normalize_ident(&ids[1]))
            }
            _ => None,
        };
        if let Some(j) = excluded_col {
            merged[*i] = new[j].clone();
        } else if is_simple(e) {
            merged[*i] = eval_simple(e, col.ty, &col.name, &scalars)?;
        } else {
            complex.push((*i, e));
        }
    }
    if complex.is_empty() {
        return Ok(merged);
    }
    // General expressions (`n = t.n + excluded.n`): evaluate over a one-row relation for the
    // existing row and one for the excluded row, in a throwaway context.
    let ctx = SessionContext::new();
    let schema = table_schema(table);
    let batch = |row: &[Value]| -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = table
            .columns
            .iter()
            .zip(row)
            .map(|(c, v)| build_array(c.ty, std::iter::once(v)))
            .collect();
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    };
    ctx.register_batch("eddy_existing", batch(old)?)?;
    ctx.register_batch("eddy_excluded", batch(new)?)?;
    let exprs: Vec<String> = complex.iter().map(|(_, e)| e.to_string()).collect();
    let sql = format!(
        "SELECT {} FROM eddy_existing AS {} CROSS JOIN eddy_excluded AS excluded",
        exprs.join(", "),
        quote(alias)
    );
    let df = ctx.sql(&sql).await?;
    let df = if scalars.is_empty() {
        df
    } else {
        df.with_param_values(params.clone())?
    };
    let batches = df.collect().await?;
    let b = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::InvalidParameter("upsert expression returned no row".into()))?;
    for (k, (i, _)) in complex.iter().enumerate() {
        let col = &table.columns[*i];
        let a = cast_column(b.column(k), col.ty, &col.name)?;
        merged[*i] = value_at(&a, 0, col.ty)?;
    }
    Ok(merged)
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

fn returning_output(ret: &Returning, batch: RecordBatch, tag: &str) -> Result<Output> {
    let cols: Vec<ArrayRef> = ret
        .indexes
        .iter()
        .map(|&i| batch.column(i).clone())
        .collect();
    let batch = RecordBatch::try_new(ret.schema.clone(), cols)?;
    Ok(Output::Rows {
        tag: tag.to_owned(),
        stream: Box::pin(MemoryStream::try_new(
            vec![batch],
            ret.schema.clone(),
            None,
        )?),
    })
}
