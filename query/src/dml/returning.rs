//! RETURNING: the written rows' columns picked, or expressions over them planned once
//! and evaluated for each execution's rows, named as PostgreSQL names them.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, SelectItem};
use eddy_storage::ObjectDef;

use super::{quote, written_schema};
use crate::error::{Error, Result};
use crate::ident::normalize_ident;
use crate::names::item_name;
use crate::output::Output;

/// What a statement's RETURNING gives for the rows it wrote.
#[derive(Debug)]
pub(super) struct Returning {
    /// One per output column.
    columns: Vec<Returned>,
    pub(super) schema: SchemaRef,
}

/// One RETURNING column.
#[derive(Debug)]
enum Returned {
    /// A column of the written rows.
    Column(usize),
    /// An expression over them.
    Expr(Arc<dyn PhysicalExpr>),
}

pub(super) async fn plan_returning(
    def: &ObjectDef,
    items: &Option<Vec<SelectItem>>,
) -> Result<Option<Returning>> {
    let Some(items) = items else { return Ok(None) };
    let schema = written_schema(def);
    match returning_columns(def, &schema, items)? {
        Some(r) => Ok(Some(r)),
        None => Ok(Some(returning_exprs(def, &schema, items).await?)),
    }
}

/// RETURNING of column names (and `*`) only: the written rows' columns, picked. `None`
/// when some item is an expression.
fn returning_columns(
    def: &ObjectDef,
    schema: &SchemaRef,
    items: &[SelectItem],
) -> Result<Option<Returning>> {
    let mut columns = Vec::new();
    let mut fields = Vec::new();
    for item in items {
        let (expr, alias) = match item {
            SelectItem::Wildcard(_) => {
                for (i, f) in schema.fields().iter().enumerate() {
                    columns.push(Returned::Column(i));
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
            _ => return Ok(None),
        };
        let i = schema.index_of(&name).map_err(|_| Error::UndefinedColumn {
            relation: def.name().to_owned(),
            column: name.clone(),
        })?;
        columns.push(Returned::Column(i));
        let f = schema.field(i).clone();
        fields.push(match alias {
            Some(a) => f.with_name(a),
            None => f,
        });
    }
    Ok(Some(Returning {
        columns,
        schema: Arc::new(Schema::new(fields)),
    }))
}

/// RETURNING with expressions (`id * 2`, `upper(name)`): planned once, over an empty
/// relation of the written rows' columns named as the target, into expressions each
/// execution evaluates over the rows it wrote. Output columns are named as PostgreSQL
/// names them.
async fn returning_exprs(
    def: &ObjectDef,
    schema: &SchemaRef,
    items: &[SelectItem],
) -> Result<Returning> {
    let ctx = SessionContext::new();
    ctx.register_batch("eddy_written", RecordBatch::new_empty(schema.clone()))?;
    let list: Vec<String> = items.iter().map(ToString::to_string).collect();
    let sql = format!(
        "SELECT {} FROM eddy_written AS {}",
        list.join(", "),
        quote(def.name())
    );
    let plan = ctx.sql(&sql).await?.into_unoptimized_plan();
    // Expressions of the rows themselves only: a projection straight over the relation
    // (an aggregate or window puts a node between them).
    let projection = match &plan {
        LogicalPlan::Projection(p)
            if matches!(
                &*p.input,
                LogicalPlan::SubqueryAlias(_) | LogicalPlan::TableScan(_)
            ) =>
        {
            p
        }
        _ => {
            return Err(Error::NotSupported(format!(
                "RETURNING {} (aggregates and window functions)",
                list.join(", ")
            )))
        }
    };
    let mut names = Vec::new();
    for item in items {
        match (item, item_name(item)) {
            (_, Some(name)) => names.push(name),
            (SelectItem::Wildcard(_), None) => {
                names.extend(schema.fields().iter().map(|f| f.name().clone()))
            }
            (other, None) => return Err(Error::NotSupported(format!("RETURNING {other}"))),
        }
    }
    if names.len() != projection.expr.len() {
        return Err(Error::NotSupported(format!(
            "RETURNING {}",
            list.join(", ")
        )));
    }
    let input = projection.input.schema();
    let mut columns = Vec::new();
    let mut fields = Vec::new();
    for ((e, name), out) in projection
        .expr
        .iter()
        .zip(names)
        .zip(projection.schema.fields())
    {
        let expr = ctx
            .create_physical_expr(e.clone(), input)
            .map_err(|err| Error::NotSupported(format!("RETURNING {e}: {err}")))?;
        columns.push(Returned::Expr(expr));
        fields.push(Field::new(name, out.data_type().clone(), true));
    }
    Ok(Returning {
        columns,
        schema: Arc::new(Schema::new(fields)),
    })
}

pub(super) fn returning_output(ret: &Returning, batch: RecordBatch, tag: &str) -> Result<Output> {
    let cols = ret
        .columns
        .iter()
        .map(|c| match c {
            Returned::Column(i) => Ok(batch.column(*i).clone()),
            Returned::Expr(e) => Ok(e.evaluate(&batch)?.into_array(batch.num_rows())?),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
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
