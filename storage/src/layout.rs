//! Column families and key layout — the one place that says how bytes are arranged.
//!
//! | column family | key                                   | value                          |
//! |---------------|---------------------------------------|--------------------------------|
//! | `catalog`     | `u32 object id`                       | JSON [`ObjectDef`]             |
//! | `meta`        | ASCII name (`next_object_id`)         | big-endian u32                 |
//! | `log`         | `u32 topic id, u32 partition, u64 offset` | [`encode_record`]         |
//! | `rows`        | `u32 table id ++ memcomparable primary key` | [`crate::value::encode_row`] |
//! | `log`         | `u32 table id, u32 0, u64 offset` (a table's change log) | [`encode_record`], key = `insert`/`update`/`delete` |
//! | `subs`        | `u32 sub id, u32 partition, 0x00`     | `u64` next offset to read      |
//! | `subs`        | `u32 sub id, u32 partition, 0x01, u64 offset` | `u32` deliveries of a pending row |
//!
//! Every key starts with the object id, so dropping an object is one range delete and a
//! scan of one partition's offset range is one bounded iterator.

use crate::catalog::ObjectId;
use crate::error::{Error, Result};
use crate::keys::{KeyReader, KeyWriter};
use crate::value::{decode_row, encode_row, get_varint, put_varint, ColumnType, Value};

pub(crate) const CF_CATALOG: &str = "catalog";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_ROWS: &str = "rows";
pub(crate) const CF_SUBS: &str = "subs";
pub(crate) const ALL_CFS: [&str; 5] = [CF_CATALOG, CF_META, CF_LOG, CF_ROWS, CF_SUBS];

/// Key of a subscription partition's read position.
pub(crate) fn sub_next_key(sub: ObjectId, partition: u32) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..4].copy_from_slice(&sub.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k
}

/// Key of one pending (delivered or waiting, unacked) row of a subscription.
pub(crate) fn sub_pending_key(sub: ObjectId, partition: u32, offset: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..4].copy_from_slice(&sub.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k[8] = 1;
    k[9..].copy_from_slice(&offset.to_be_bytes());
    k
}

pub(crate) const META_NEXT_OBJECT_ID: &[u8] = b"next_object_id";

/// Key of a catalog entry.
pub(crate) fn catalog_key(id: ObjectId) -> [u8; 4] {
    id.to_be_bytes()
}

/// Key of one message: topic, partition, offset.
pub fn log_key(topic: ObjectId, partition: u32, offset: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&topic.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k[8..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Reads the offset back from a log key.
pub fn log_key_offset(key: &[u8]) -> Result<u64> {
    let mut r = KeyReader::new(key);
    r.u32()?;
    r.u32()?;
    r.u64()
}

/// Prefix of every row key of a table.
pub fn table_prefix(table: ObjectId) -> [u8; 4] {
    table.to_be_bytes()
}

/// Key of one table row: table id followed by the primary key values.
pub fn row_key(table: ObjectId, pk: &[&Value]) -> Result<Vec<u8>> {
    let mut w = KeyWriter::with_capacity(32);
    w.u32(table);
    for v in pk {
        v.encode_key(&mut w)?;
    }
    Ok(w.finish())
}

/// One message as stored: everything but its position, which the key holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Append time, microseconds since the epoch (UTC); non-decreasing within a partition.
    pub ts_micros: i64,
    /// The `_key` column.
    pub key: Option<String>,
    /// User column values.
    pub values: Vec<Value>,
}

/// Encodes a stored message: `i64 LE ts`, `varint(len+1)` key (0 = NULL), then the row.
pub fn encode_record(ts_micros: i64, key: Option<&str>, values: &[Value], out: &mut Vec<u8>) {
    encode_record_head(ts_micros, key, out);
    encode_row(values, out);
}

/// The part of [`encode_record`] before the row; an already encoded row may follow.
pub(crate) fn encode_record_head(ts_micros: i64, key: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(&ts_micros.to_le_bytes());
    match key {
        None => out.push(0),
        Some(k) => {
            // len+1 so that 0 can mean NULL.
            put_varint(out, k.len() as u64 + 1);
            out.extend_from_slice(k.as_bytes());
        }
    }
}

/// Decodes a stored message against the topic's column types.
pub fn decode_record(types: &[ColumnType], buf: &[u8]) -> Result<LogRecord> {
    if buf.len() < 8 {
        return Err(Error::corrupt("log record shorter than its timestamp"));
    }
    let ts_micros = i64::from_le_bytes(buf[..8].try_into().map_err(|_| Error::corrupt("ts"))?);
    let mut rest = &buf[8..];
    let key = match get_varint(&mut rest)? {
        0 => None,
        n => {
            let len = (n - 1) as usize;
            if rest.len() < len {
                return Err(Error::corrupt("truncated message key"));
            }
            let (k, tail) = rest.split_at(len);
            rest = tail;
            Some(
                String::from_utf8(k.to_vec())
                    .map_err(|_| Error::corrupt("message key is not UTF-8"))?,
            )
        }
    };
    let values = decode_row(types, rest)?;
    Ok(LogRecord {
        ts_micros,
        key,
        values,
    })
}

/// Reads only the append time of a stored message (for time-to-offset search).
pub(crate) fn record_ts(buf: &[u8]) -> Result<i64> {
    let head: [u8; 8] = buf
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::corrupt("log record shorter than its timestamp"))?;
    Ok(i64::from_le_bytes(head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_roundtrip(ts: i64, key: Option<String>, a: i64, b: Option<String>) {
            let values = vec![Value::Int64(a), b.map(Value::Text).unwrap_or(Value::Null)];
            let mut buf = Vec::new();
            encode_record(ts, key.as_deref(), &values, &mut buf);
            let rec = decode_record(&[ColumnType::Int64, ColumnType::Text], &buf).unwrap();
            prop_assert_eq!(rec.ts_micros, ts);
            prop_assert_eq!(record_ts(&buf).unwrap(), ts);
            prop_assert_eq!(rec.key, key);
            prop_assert_eq!(rec.values, values);
        }

        #[test]
        fn log_key_offset_roundtrip(t: u32, p: u32, o: u64) {
            prop_assert_eq!(log_key_offset(&log_key(t, p, o)).unwrap(), o);
        }

        #[test]
        fn row_keys_of_one_table_share_its_prefix(t: u32, id: i64, name: String) {
            let k = row_key(t, &[&Value::Int64(id), &Value::Text(name)]).unwrap();
            prop_assert!(k.starts_with(&table_prefix(t)));
        }
    }
}
