//! The point-read fast path: `SELECT cols FROM table WHERE pk = $1 [AND pk2 = ...]`, the
//! most common prepared query, answered with one storage get and no DataFusion planning
//! at execute time. Anything else (joins, expressions, other filters) goes the usual way.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, GroupByExpr, SelectItem, SetExpr, Statement as SqlStatement,
    TableFactor,
};
use eddy_storage::{ObjectDef, TableDef, Value};

use crate::convert::build_array;
use crate::core::Core;
use crate::error::Result;
use crate::ident::normalize_ident;
use crate::ident::object_name;
use crate::params::param_list;
use crate::provider::table_schema;

/// A planned point read.
#[derive(Debug)]
pub(crate) struct PointRead {
    table: Arc<TableDef>,
    /// One expression per primary key column, in key order (a literal or `$n`).
    key: Vec<SqlExpr>,
    /// Table columns returned, in output order.
    columns: Vec<usize>,
    pub(crate) schema: SchemaRef,
}

/// The column an expression names (`col` or `t.col`).
fn column_of(e: &SqlExpr) -> Option<String> {
    match e {
        SqlExpr::Identifier(i) => Some(normalize_ident(i)),
        SqlExpr::CompoundIdentifier(ids) if ids.len() == 2 => ids.last().map(normalize_ident),
        SqlExpr::Nested(e) => column_of(e),
        _ => None,
    }
}

/// `a = x AND b = y ...` as (column, value) pairs; `None` for anything else.
fn equalities(e: &SqlExpr, out: &mut Vec<(String, SqlExpr)>) -> Option<()> {
    match e {
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            equalities(left, out)?;
            equalities(right, out)
        }
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let (col, val) = match (column_of(left), column_of(right)) {
                (Some(c), None) => (c, right),
                (None, Some(c)) => (c, left),
                _ => return None,
            };
            crate::dml::is_simple(val).then(|| out.push((col, (**val).clone())))
        }
        SqlExpr::Nested(e) => equalities(e, out),
        _ => None,
    }
}

impl PointRead {
    /// The point read `stmt` is, with its parameter types; `None` if it is not one.
    pub(crate) fn plan(
        engine: &Core,
        stmt: &SqlStatement,
    ) -> Result<Option<(PointRead, Vec<Option<DataType>>)>> {
        let SqlStatement::Query(q) = stmt else {
            return Ok(None);
        };
        if q.with.is_some()
            || q.order_by.is_some()
            || q.limit_clause.is_some()
            || q.fetch.is_some()
            || !q.locks.is_empty()
        {
            return Ok(None);
        }
        let SetExpr::Select(sel) = &*q.body else {
            return Ok(None);
        };
        let grouped = !matches!(&sel.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
        if sel.distinct.is_some()
            || grouped
            || sel.having.is_some()
            || sel.from.len() != 1
            || !sel.from[0].joins.is_empty()
        {
            return Ok(None);
        }
        let TableFactor::Table {
            name, args: None, ..
        } = &sel.from[0].relation
        else {
            return Ok(None);
        };
        let Ok(name) = object_name(name) else {
            return Ok(None);
        };
        let Some(def) = engine.store().catalog().table(&name) else {
            return Ok(None);
        };
        let ObjectDef::Table(table) = &*def else {
            return Ok(None);
        };
        let mut eqs = Vec::new();
        let Some(selection) = &sel.selection else {
            return Ok(None);
        };
        if equalities(selection, &mut eqs).is_none() || eqs.len() != table.primary_key.len() {
            return Ok(None);
        }
        let mut key = Vec::with_capacity(eqs.len());
        let mut types = Vec::new();
        for &k in &table.primary_key {
            let col = &table.columns[k];
            let Some((_, v)) = eqs.iter().find(|(c, _)| *c == col.name) else {
                return Ok(None);
            };
            crate::dml::note_param(v, col.ty, &mut types)?;
            key.push(v.clone());
        }
        let full = table_schema(table);
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for item in &sel.projection {
            let (expr, alias) = match item {
                SelectItem::Wildcard(_) => {
                    columns.extend(0..table.columns.len());
                    fields.extend(full.fields().iter().map(|f| f.as_ref().clone()));
                    continue;
                }
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(normalize_ident(alias))),
                _ => return Ok(None),
            };
            let Some(c) = column_of(expr) else {
                return Ok(None);
            };
            let Some(i) = table.columns.iter().position(|x| x.name == c) else {
                return Ok(None);
            };
            columns.push(i);
            let f = full.field(i).clone();
            fields.push(match alias {
                Some(a) => f.with_name(a),
                None => f,
            });
        }
        let read = PointRead {
            table: Arc::new(table.clone()),
            key,
            columns,
            schema: Arc::new(Schema::new(fields)),
        };
        Ok(Some((read, types)))
    }

    /// Looks the row up: one storage get, no planning.
    pub(crate) fn execute(
        &self,
        engine: &Core,
        params: &ParamValues,
    ) -> Result<SendableRecordBatchStream> {
        // The table must still be the one planned (ids are never reused).
        match engine.store().catalog().table(&self.table.name) {
            Some(d) if d.id() == self.table.id => {}
            _ => {
                return Err(crate::error::Error::UndefinedObject {
                    name: self.table.name.clone(),
                })
            }
        }
        let params = param_list(params);
        let mut pk = Vec::with_capacity(self.key.len());
        for (e, &k) in self.key.iter().zip(&self.table.primary_key) {
            let col = &self.table.columns[k];
            pk.push(crate::dml::eval_simple(e, col.ty, &col.name, &params)?);
        }
        let row = if pk.iter().any(|v| matches!(v, Value::Null)) {
            None
        } else {
            engine.store().get_row(&self.table, &pk)?
        };
        let batches = match row {
            None => vec![],
            Some(row) => {
                let cols = self
                    .columns
                    .iter()
                    .map(|&i| build_array(self.table.columns[i].ty, std::iter::once(&row[i])))
                    .collect();
                vec![RecordBatch::try_new(self.schema.clone(), cols)?]
            }
        };
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            None,
        )?))
    }
}
