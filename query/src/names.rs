//! Output column names as PostgreSQL gives them, so drivers that address columns by
//! name find them.

use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Ident, SelectItem, Statement as SqlStatement,
};

use crate::error::Result;
use crate::ident::normalize_ident;

/// The name PostgreSQL gives an unaliased output column.
fn pg_name(e: &SqlExpr) -> String {
    match e {
        SqlExpr::Identifier(i) => normalize_ident(i),
        SqlExpr::CompoundIdentifier(ids) => ids.last().map(normalize_ident).unwrap_or_default(),
        SqlExpr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(normalize_ident)
            .unwrap_or_else(|| "?column?".into()),
        SqlExpr::Cast {
            expr, data_type, ..
        } => match pg_name(expr) {
            n if n == "?column?" => data_type.to_string().to_lowercase(),
            n => n,
        },
        SqlExpr::Nested(e) => pg_name(e),
        SqlExpr::Case { .. } => "case".into(),
        SqlExpr::Exists { .. } => "exists".into(),
        _ => "?column?".into(),
    }
}

/// Renames a SELECT's output columns the way PostgreSQL names them (`count`, not
/// `count(*)`; `?column?` for unnamed expressions), so drivers that address columns by
/// name find them. Queries with `*` keep DataFusion's names, which are already the
/// column names. Duplicate names keep DataFusion's name (its plans need unique names).
pub(crate) fn pg_column_names(stmt: &SqlStatement, plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::sql::sqlparser::ast::SetExpr;
    let SqlStatement::Query(q) = stmt else {
        return Ok(plan);
    };
    let SetExpr::Select(sel) = &*q.body else {
        return Ok(plan);
    };
    let names: Option<Vec<String>> = sel.projection.iter().map(item_name).collect();
    let Some(names) = names else { return Ok(plan) };
    let columns = plan.schema().columns();
    if names.len() != columns.len() || columns.iter().zip(&names).all(|(c, n)| &c.name == n) {
        return Ok(plan);
    }
    let mut seen = std::collections::HashSet::new();
    let exprs: Vec<datafusion::logical_expr::Expr> = columns
        .iter()
        .zip(names)
        .map(|(c, n)| {
            let name = if seen.insert(n.clone()) {
                n
            } else {
                c.name.clone()
            };
            datafusion::logical_expr::Expr::Column(c.clone()).alias(name)
        })
        .collect();
    Ok(datafusion::logical_expr::LogicalPlanBuilder::from(plan)
        .project(exprs)?
        .build()?)
}

/// The name PostgreSQL gives the output column of a select item that is one expression
/// (its alias, else [`pg_name`]); `None` for `*` and `t.*`.
pub(crate) fn item_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::UnnamedExpr(e) => Some(pg_name(e)),
        SelectItem::ExprWithAlias { alias, .. } => Some(normalize_ident(alias)),
        _ => None,
    }
}

/// The setting `SHOW` names, lower case, its words joined by one space.
pub(crate) fn show_name(variable: &[Ident]) -> String {
    variable
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The column name PostgreSQL gives `SHOW name`.
pub(crate) fn show_column(name: &str) -> String {
    match name {
        "time zone" => "TimeZone".into(),
        "transaction isolation level" => "transaction_isolation".into(),
        other => other.to_owned(),
    }
}
