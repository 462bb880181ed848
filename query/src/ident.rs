//! Identifiers and option values as PostgreSQL reads them: unquoted names fold to lower
//! case, an object may be named `name` or `public.name`, and an option's value is its text.

use datafusion::sql::sqlparser::ast::{
    self, Expr as SqlExpr, ObjectName, SqlOption, Value as SqlValue,
};

use crate::error::{Error, Result};

/// Lower-cases unquoted identifiers, as PostgreSQL does.
pub(crate) fn normalize_ident(id: &ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// The object name, accepting `name` and `public.name`.
pub(crate) fn object_name(name: &ObjectName) -> Result<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(normalize_ident)
                .unwrap_or_else(|| p.to_string())
        })
        .collect();
    match parts.as_slice() {
        [n] => Ok(n.clone()),
        [schema, n] if schema == "public" => Ok(n.clone()),
        _ => Err(Error::UndefinedObject {
            name: name.to_string(),
        }),
    }
}

/// The text of an option or SET value: quoted strings unquoted, numbers and names as written.
pub(crate) fn option_value(v: &SqlExpr) -> String {
    match v {
        SqlExpr::Value(v) => match &v.value {
            SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => s.clone(),
            SqlValue::Number(n, _) => n.clone(),
            SqlValue::Boolean(b) => b.to_string(),
            other => other.to_string(),
        },
        SqlExpr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// `WITH (...)` options as lower-case key → value text.
pub(crate) fn options_map(options: &[SqlOption]) -> Result<Vec<(String, String)>> {
    options
        .iter()
        .map(|o| match o {
            SqlOption::KeyValue { key, value } => {
                Ok((key.value.to_ascii_lowercase(), option_value(value)))
            }
            other => Err(Error::InvalidParameter(format!(
                "unrecognized option {other}"
            ))),
        })
        .collect()
}
