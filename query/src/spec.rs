//! What a subscription asks for: `SUBSCRIBE topic [WHERE expr] [FROM ...] [WITH (...)]`,
//! as parsed (the dialect makes it; subscriptions, cursors and durable subscriptions read
//! it).

use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, ObjectName, SqlOption};

use crate::error::{Error, Result};

/// Where a subscription starts, in every partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained message.
    Beginning,
    /// The next message published (the default).
    Now,
    /// This offset (the same in every partition).
    Offset(u64),
    /// These offsets, as (partition, offset); partitions not listed start at the beginning.
    Offsets(Vec<(u32, u64)>),
    /// The first message appended at or after this time (microseconds since the epoch).
    Timestamp(i64),
}

/// `SUBSCRIBE topic [WHERE expr] [FROM ...] [WITH (...)]`
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeSpec {
    /// The topic (or table, for its changes).
    pub topic: ObjectName,
    /// Rows to keep.
    pub filter: Option<SqlExpr>,
    /// Start position.
    pub from: StartPosition,
    /// `WITH (...)` options: `snapshot` (tables), `heartbeat` (COPY).
    pub options: Vec<SqlOption>,
}

/// The parsed `WITH (...)` options of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    /// Tables: stream the current rows (as inserts) before the changes.
    pub snapshot: bool,
    /// COPY: a heartbeat row after this long without rows (`None` = never).
    pub heartbeat: Option<Duration>,
}

impl SubscribeSpec {
    /// The `WITH (...)` options; `heartbeat` defaults to `default_heartbeat_ms` (0 = off).
    pub fn parsed_options(&self, default_heartbeat_ms: u64) -> Result<SubscribeOptions> {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        let mut out = SubscribeOptions {
            snapshot: false,
            heartbeat: ms(default_heartbeat_ms),
        };
        for (k, v) in crate::ident::options_map(&self.options)? {
            match k.as_str() {
                "snapshot" => {
                    out.snapshot = match v.to_ascii_lowercase().as_str() {
                        "true" | "on" | "yes" | "1" => true,
                        "false" | "off" | "no" | "0" => false,
                        _ => {
                            return Err(Error::InvalidParameter(format!(
                                "snapshot must be true or false, not '{v}'"
                            )))
                        }
                    }
                }
                "heartbeat" => out.heartbeat = ms(crate::types::parse_duration_ms(&v)?),
                other => {
                    return Err(Error::InvalidParameter(format!(
                        "unrecognized subscription option \"{other}\""
                    )))
                }
            }
        }
        Ok(out)
    }
}
