//! What is published ([`Message`]) and where it landed ([`Position`]).

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::{Error, Result};

/// A column value to publish: anything tokio-postgres can encode.
pub type Value = Box<dyn ToSql + Send + Sync>;

/// Where a row is in its topic: the partition and the row's offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The partition (0-based).
    pub partition: i32,
    /// The offset within the partition (dense, from 0).
    pub offset: i64,
}

impl Position {
    /// Reads `_partition` and `_offset` from a row eddy returned.
    pub(crate) fn from_row(row: &Row) -> Result<Position> {
        let partition = row
            .try_get("_partition")
            .map_err(|e| missing("_partition", e))?;
        let offset = row.try_get("_offset").map_err(|e| missing("_offset", e))?;
        Ok(Position { partition, offset })
    }
}

fn missing(column: &str, e: tokio_postgres::Error) -> Error {
    Error::UnexpectedAnswer(format!("column {column}: {e}"))
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.partition, self.offset)
    }
}

/// A row to publish with [`Client::publish`](crate::Client::publish): an optional key and
/// named column values.
///
/// ```
/// use eddy_client::Message;
/// let m = Message::new().key("s1").set("sensor", "s1").set("temp", 21.5);
/// assert_eq!(m.columns(), ["sensor", "temp"]);
/// ```
#[derive(Debug, Default)]
pub struct Message {
    pub(crate) key: Option<String>,
    pub(crate) columns: Vec<String>,
    pub(crate) values: Vec<Value>,
}

impl Message {
    /// An empty message: no key (round-robin partition), no columns (all NULL).
    pub fn new() -> Message {
        Message::default()
    }

    /// Sets the key: rows with one key go to one partition, in order.
    pub fn key(mut self, key: impl Into<String>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// Sets column `name` to `value` (replacing an earlier value for the same column).
    /// Column names are used exactly as given (see [`quote_ident`](crate::quote_ident)).
    pub fn set(
        mut self,
        name: impl Into<String>,
        value: impl ToSql + Send + Sync + 'static,
    ) -> Message {
        let name = name.into();
        let value: Value = Box::new(value);
        match self.columns.iter().position(|c| *c == name) {
            Some(i) => self.values[i] = value,
            None => {
                self.columns.push(name);
                self.values.push(value);
            }
        }
        self
    }

    /// The column names set, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The key, if any.
    pub fn get_key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_a_column_set_twice() {
        let m = Message::new().set("a", 1i32).set("b", "x").set("a", 2i32);
        assert_eq!(m.columns(), ["a", "b"]);
        assert_eq!(m.values.len(), 2);
        assert_eq!(format!("{:?}", m.values[0]), "2");
        assert_eq!(m.get_key(), None);
        assert_eq!(Message::new().key("k").get_key(), Some("k"));
    }
}
