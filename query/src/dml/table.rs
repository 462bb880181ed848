//! Writes to tables: plain inserts (`ON CONFLICT` error or nothing) in one write, and
//! upserts (`ON CONFLICT .. DO UPDATE`) read, merged and written on the condition that
//! the rows read are unchanged, run again when one changed (see `rmw`).

use arrow::array::{ArrayRef, RecordBatch};
use datafusion::common::ParamValues;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr as SqlExpr, Value as SqlValue};
use eddy_storage::{
    encode_row, ColumnType, Lane, OnConflict, TableDef, Value, WriteOp, WriteResult,
};

use super::values::{eval_simple, is_simple};
use super::{finish, key_of, quote, Conflict, DmlPlan};
use crate::convert::{build_array, cast_column, value_at};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ident::normalize_ident;
use crate::output::Output;
use crate::params::param_list;
use crate::provider::table_schema;

/// Writes full rows to `table` as `conflict` says.
pub(super) async fn write(
    engine: &Core,
    lane: Lane,
    plan: &DmlPlan,
    table: &TableDef,
    rows: Vec<Vec<Value>>,
    conflict: &Conflict,
    params: &ParamValues,
) -> Result<Output> {
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
                .write(
                    lane,
                    vec![WriteOp::Insert {
                        table: table.id,
                        rows: rows.clone(),
                        on_conflict: mode,
                    }],
                )
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
            condition,
            table_alias,
        } => {
            let update = Update {
                table,
                alias: table_alias,
                assignments,
                condition: condition.as_deref(),
                params,
            };
            let mut conflicts = super::rmw::Conflicts::new(engine, table.id);
            loop {
                match upsert_once(engine, lane, &update, &rows).await {
                    Ok(written) => return finish(plan, "INSERT", written),
                    Err(e) => conflicts.again(e).await?,
                }
            }
        }
    }
}

/// Refuses a row whose encoding is longer than the node's `max_message_bytes`.
pub(super) fn check_size(engine: &Core, values: &[Value]) -> Result<()> {
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

/// What `ON CONFLICT ... DO UPDATE` does to a conflicting row.
struct Update<'a> {
    table: &'a TableDef,
    /// The existing row's name in the expressions.
    alias: &'a str,
    assignments: &'a [(usize, SqlExpr)],
    condition: Option<&'a SqlExpr>,
    /// The statement's own parameters.
    params: &'a ParamValues,
}

/// One try of `INSERT ... ON CONFLICT DO UPDATE`: reads each row's current version,
/// merges where the condition holds, and writes all of them at once on the condition
/// that every row read is still as read (a key absent is still absent); returns the
/// rows written (inserted or updated).
async fn upsert_once(
    engine: &Core,
    lane: Lane,
    update: &Update<'_>,
    rows: &[Vec<Value>],
) -> Result<Vec<Vec<Value>>> {
    let table = update.table;
    let mut written = Vec::new();
    let mut ops = super::rmw::Ops::default();
    let mut seen = super::Keys::default();
    for row in rows {
        if !seen.first(table, row) {
            return Err(Error::CardinalityViolation(
                "ON CONFLICT DO UPDATE command cannot affect row a second time".into(),
            ));
        }
        let pk = key_of(table, row);
        let store = engine.store().clone();
        let t = table.clone();
        let key = pk.clone();
        let existing = tokio::task::spawn_blocking(move || store.get_row(&t, &key)).await??;
        ops.expect(table, pk, existing.clone());
        match existing {
            None => {
                ops.write(WriteOp::Insert {
                    table: table.id,
                    rows: vec![row.clone()],
                    on_conflict: OnConflict::Error,
                });
                written.push(row.clone());
            }
            Some(old) => {
                let Some(merged) = merge_update(update, &old, row).await? else {
                    continue; // the condition does not hold: the row stays as it is
                };
                check_size(engine, &merged)?;
                ops.write(WriteOp::Insert {
                    table: table.id,
                    rows: vec![merged.clone()],
                    on_conflict: OnConflict::Replace,
                });
                written.push(merged);
            }
        }
    }
    ops.submit(engine, lane).await?;
    Ok(written)
}

/// The row after `ON CONFLICT DO UPDATE SET ... [WHERE ...]` applied to `old` with
/// `excluded` = `new`; `None` where the condition is false or NULL.
async fn merge_update(
    update: &Update<'_>,
    old: &[Value],
    new: &[Value],
) -> Result<Option<Vec<Value>>> {
    let table = update.table;
    let mut merged = old.to_vec();
    let scalars = param_list(update.params);
    let mut complex = Vec::new();
    for (i, e) in update.assignments {
        let col = &table.columns[*i];
        if let Some(j) = excluded_column(table, e) {
            merged[*i] = new[j].clone();
        } else if is_simple(e) {
            merged[*i] = eval_simple(e, col.ty, &col.name, &scalars)?;
        } else {
            complex.push((*i, e));
        }
    }
    if complex.is_empty() && update.condition.is_none() {
        return Ok(Some(merged));
    }
    // General expressions (`n = t.n + excluded.n`, the WHERE): evaluated in a throwaway
    // context over the existing row as a one-row relation named `alias`, so unqualified
    // columns are the existing row's as in PostgreSQL. `excluded.col` becomes a
    // parameter after the statement's own, bound to the excluded row's value.
    let exprs: Vec<&SqlExpr> = complex
        .iter()
        .map(|(_, e)| *e)
        .chain(update.condition)
        .collect();
    let b = eval_over_row(update, old, new, &scalars, &exprs).await?;
    if update.condition.is_some() {
        let holds = cast_column(b.column(exprs.len() - 1), ColumnType::Bool, "WHERE")?;
        if !matches!(value_at(&holds, 0, ColumnType::Bool)?, Value::Bool(true)) {
            return Ok(None);
        }
    }
    for (k, (i, _)) in complex.iter().enumerate() {
        let col = &table.columns[*i];
        let a = cast_column(b.column(k), col.ty, &col.name)?;
        merged[*i] = value_at(&a, 0, col.ty)?;
    }
    Ok(Some(merged))
}

/// The column name `e` gives when it is `excluded.col`.
fn excluded_name(e: &SqlExpr) -> Option<String> {
    match e {
        SqlExpr::CompoundIdentifier(ids)
            if ids.len() == 2 && normalize_ident(&ids[0]) == "excluded" =>
        {
            Some(normalize_ident(&ids[1]))
        }
        _ => None,
    }
}

/// The column of `table` that `e` names when it is `excluded.col`.
fn excluded_column(table: &TableDef, e: &SqlExpr) -> Option<usize> {
    let name = excluded_name(e)?;
    table.columns.iter().position(|c| c.name == name)
}

/// `exprs` evaluated over the existing row `old` (named `update.alias`), with
/// `excluded.col` bound to `new`'s values: one row, one column per expression.
async fn eval_over_row(
    update: &Update<'_>,
    old: &[Value],
    new: &[Value],
    scalars: &[ScalarValue],
    exprs: &[&SqlExpr],
) -> Result<RecordBatch> {
    use std::ops::ControlFlow;
    let table = update.table;
    let mut bound = scalars.to_vec();
    for (c, v) in table.columns.iter().zip(new) {
        bound.push(ScalarValue::try_from_array(
            &build_array(c.ty, std::iter::once(v)),
            0,
        )?);
    }
    let mut rewritten = Vec::with_capacity(exprs.len());
    for e in exprs {
        let mut e = (*e).clone();
        let mut unknown = None;
        let _ = visit_expressions_mut(&mut e, |x| {
            if let Some(column) = excluded_name(x) {
                match table.columns.iter().position(|c| c.name == column) {
                    Some(j) => {
                        let n = scalars.len() + j + 1;
                        *x = SqlExpr::value(SqlValue::Placeholder(format!("${n}")));
                    }
                    None => unknown = Some(column),
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if let Some(column) = unknown {
            return Err(Error::UndefinedColumn {
                relation: "excluded".into(),
                column,
            });
        }
        rewritten.push(e.to_string());
    }
    let ctx = SessionContext::new();
    let cols: Vec<ArrayRef> = table
        .columns
        .iter()
        .zip(old)
        .map(|(c, v)| build_array(c.ty, std::iter::once(v)))
        .collect();
    ctx.register_batch(
        "eddy_existing",
        RecordBatch::try_new(table_schema(table), cols)?,
    )?;
    let sql = format!(
        "SELECT {} FROM eddy_existing AS {}",
        rewritten.join(", "),
        quote(update.alias)
    );
    let batches = ctx
        .sql(&sql)
        .await?
        .with_param_values(ParamValues::from(bound))?
        .collect()
        .await?;
    batches
        .into_iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::InvalidParameter("upsert expression returned no row".into()))
}
