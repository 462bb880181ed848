//! Identifiers as PostgreSQL reads them: unquoted names fold to lower case, and an
//! object may be named `name` or `public.name`.

use datafusion::sql::sqlparser::ast::{self, ObjectName};

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
