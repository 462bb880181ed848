//! Writes to tables: plain inserts (`ON CONFLICT` error or nothing) in one write, and
//! upserts (`ON CONFLICT .. DO UPDATE`) read, merged and written under the RMW lock, run
//! again when a key appeared between the read and the write.

use arrow::array::{ArrayRef, RecordBatch};
use datafusion::common::ParamValues;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use eddy_storage::{encode_row, OnConflict, TableDef, Value, WriteOp, WriteResult};

use super::values::{eval_simple, is_simple};
use super::{finish, quote, Conflict, DmlPlan};
use crate::convert::{build_array, cast_column, value_at};
use crate::engine::{normalize_ident, param_list, Engine, Output};
use crate::error::{Error, Result};
use crate::provider::table_schema;

/// Writes full rows to `table` as `conflict` says.
pub(super) async fn write(
    engine: &Engine,
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
                    upsert_once(engine, table, table_alias, assignments, &rows, params).await;
                match tried {
                    Err(Error::Storage(eddy_storage::Error::DuplicateKey { .. }))
                        if attempt < UPSERT_ATTEMPTS =>
                    {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
                        engine.writer.read_barrier(&[table.id]).await?;
                    }
                    Err(e) => return Err(e),
                    Ok(written) => return finish(plan, "INSERT", written),
                }
            }
        }
    }
}

/// Refuses a row whose encoding is longer than the node's `max_message_bytes`.
pub(super) fn check_size(engine: &Engine, values: &[Value]) -> Result<()> {
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
