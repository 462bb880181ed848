//! Literals and parameters evaluated without DataFusion: what the fast paths of INSERT
//! and point reads accept, and the typed values they give.

use arrow::datatypes::DataType;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, UnaryOperator, Value as SqlValue};
use eddy_storage::{ColumnType, Value};

use crate::convert::scalar_to_value;
use crate::error::{Error, Result};
use crate::types::{arrow_type, parse_text};

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
