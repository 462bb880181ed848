//! Column types, values, and the row codec.
//!
//! A stored row is `varint(column count)`, a null bitmap (one bit per column, LSB first),
//! then each non-null value in column order: fixed-width little-endian for numbers,
//! `varint(len) ++ bytes` for text and bytea. The count lets a reader of a wider schema see
//! missing trailing columns as NULL. This codec is not order-preserving; keys use
//! [`crate::keys`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{KeyReader, KeyWriter};

/// The column types eddy stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// BOOLEAN
    Bool,
    /// SMALLINT
    Int16,
    /// INTEGER
    Int32,
    /// BIGINT
    Int64,
    /// REAL
    Float32,
    /// DOUBLE PRECISION
    Float64,
    /// TEXT / VARCHAR
    Text,
    /// BYTEA
    Bytea,
    /// TIMESTAMP (microseconds since the Unix epoch, no zone)
    Timestamp,
    /// TIMESTAMPTZ (microseconds since the Unix epoch, UTC)
    TimestampTz,
    /// DATE (days since the Unix epoch)
    Date,
}

impl ColumnType {
    /// The SQL name of the type, as `\d` shows it.
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::Bool => "boolean",
            ColumnType::Int16 => "smallint",
            ColumnType::Int32 => "integer",
            ColumnType::Int64 => "bigint",
            ColumnType::Float32 => "real",
            ColumnType::Float64 => "double precision",
            ColumnType::Text => "text",
            ColumnType::Bytea => "bytea",
            ColumnType::Timestamp => "timestamp",
            ColumnType::TimestampTz => "timestamptz",
            ColumnType::Date => "date",
        }
    }
}

/// One value of a column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// BOOLEAN
    Bool(bool),
    /// SMALLINT
    Int16(i16),
    /// INTEGER
    Int32(i32),
    /// BIGINT
    Int64(i64),
    /// REAL
    Float32(f32),
    /// DOUBLE PRECISION
    Float64(f64),
    /// TEXT
    Text(String),
    /// BYTEA
    Bytea(#[serde(with = "serde_bytes")] Vec<u8>),
    /// TIMESTAMP, microseconds since the epoch.
    Timestamp(i64),
    /// TIMESTAMPTZ, microseconds since the epoch (UTC).
    TimestampTz(i64),
    /// DATE, days since the epoch.
    Date(i32),
}

impl Value {
    /// True for SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The type this value belongs to (`None` for NULL, which fits every type).
    pub fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(_) => ColumnType::Bool,
            Value::Int16(_) => ColumnType::Int16,
            Value::Int32(_) => ColumnType::Int32,
            Value::Int64(_) => ColumnType::Int64,
            Value::Float32(_) => ColumnType::Float32,
            Value::Float64(_) => ColumnType::Float64,
            Value::Text(_) => ColumnType::Text,
            Value::Bytea(_) => ColumnType::Bytea,
            Value::Timestamp(_) => ColumnType::Timestamp,
            Value::TimestampTz(_) => ColumnType::TimestampTz,
            Value::Date(_) => ColumnType::Date,
        })
    }

    /// Appends the order-preserving encoding of this value (for primary keys).
    /// NULL is refused: primary key columns are NOT NULL.
    pub fn encode_key(&self, w: &mut KeyWriter) -> Result<()> {
        match self {
            Value::Null => {
                return Err(Error::InvalidValue(
                    "primary key column cannot be NULL".into(),
                ))
            }
            Value::Bool(v) => w.bool(*v),
            Value::Int16(v) => w.i16(*v),
            Value::Int32(v) | Value::Date(v) => w.i32(*v),
            Value::Int64(v) | Value::Timestamp(v) | Value::TimestampTz(v) => w.i64(*v),
            Value::Float32(v) => w.f32(*v),
            Value::Float64(v) => w.f64(*v),
            Value::Text(v) => w.bytes(v.as_bytes()),
            Value::Bytea(v) => w.bytes(v),
        };
        Ok(())
    }

    /// Reads one key part of type `ty` back.
    pub fn decode_key(ty: ColumnType, r: &mut KeyReader<'_>) -> Result<Value> {
        Ok(match ty {
            ColumnType::Bool => Value::Bool(r.bool()?),
            ColumnType::Int16 => Value::Int16(r.i16()?),
            ColumnType::Int32 => Value::Int32(r.i32()?),
            ColumnType::Date => Value::Date(r.i32()?),
            ColumnType::Int64 => Value::Int64(r.i64()?),
            ColumnType::Timestamp => Value::Timestamp(r.i64()?),
            ColumnType::TimestampTz => Value::TimestampTz(r.i64()?),
            ColumnType::Float32 => Value::Float32(r.f32()?),
            ColumnType::Float64 => Value::Float64(r.f64()?),
            ColumnType::Text => Value::Text(
                String::from_utf8(r.bytes()?)
                    .map_err(|_| Error::corrupt("key text is not UTF-8"))?,
            ),
            ColumnType::Bytea => Value::Bytea(r.bytes()?),
        })
    }
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(crate) fn get_varint(buf: &mut &[u8]) -> Result<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf
            .split_first()
            .ok_or_else(|| Error::corrupt("truncated varint"))?;
        *buf = rest;
        out |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(Error::corrupt("varint too long"))
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, v: &[u8]) {
    put_varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

pub(crate) fn get_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = get_varint(buf)? as usize;
    if buf.len() < len {
        return Err(Error::corrupt("truncated bytes"));
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N]> {
    if buf.len() < N {
        return Err(Error::corrupt("truncated row value"));
    }
    let (head, tail) = buf.split_at(N);
    *buf = tail;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok(out)
}

/// Encodes a row (values in column order). Values must already have their column's type.
pub fn encode_row(values: &[Value], out: &mut Vec<u8>) {
    put_varint(out, values.len() as u64);
    let bitmap_at = out.len();
    out.resize(bitmap_at + values.len().div_ceil(8), 0);
    for (i, v) in values.iter().enumerate() {
        match v {
            Value::Null => out[bitmap_at + i / 8] |= 1 << (i % 8),
            Value::Bool(b) => out.push(*b as u8),
            Value::Int16(n) => out.extend_from_slice(&n.to_le_bytes()),
            Value::Int32(n) | Value::Date(n) => out.extend_from_slice(&n.to_le_bytes()),
            Value::Int64(n) | Value::Timestamp(n) | Value::TimestampTz(n) => {
                out.extend_from_slice(&n.to_le_bytes())
            }
            Value::Float32(f) => out.extend_from_slice(&f.to_le_bytes()),
            Value::Float64(f) => out.extend_from_slice(&f.to_le_bytes()),
            Value::Text(s) => put_bytes(out, s.as_bytes()),
            Value::Bytea(b) => put_bytes(out, b),
        }
    }
}

/// Decodes a row written by [`encode_row`] against the column types of the schema.
/// Columns the stored row does not have (added later) come back as NULL.
pub fn decode_row(types: &[ColumnType], mut buf: &[u8]) -> Result<Vec<Value>> {
    let n = get_varint(&mut buf)? as usize;
    let bitmap_len = n.div_ceil(8);
    if buf.len() < bitmap_len {
        return Err(Error::corrupt("truncated null bitmap"));
    }
    let (bitmap, mut rest) = buf.split_at(bitmap_len);
    let mut out = Vec::with_capacity(types.len());
    for (i, ty) in types.iter().enumerate() {
        if i >= n || bitmap[i / 8] & (1 << (i % 8)) != 0 {
            out.push(Value::Null);
            continue;
        }
        out.push(match ty {
            ColumnType::Bool => Value::Bool(take::<1>(&mut rest)?[0] != 0),
            ColumnType::Int16 => Value::Int16(i16::from_le_bytes(take(&mut rest)?)),
            ColumnType::Int32 => Value::Int32(i32::from_le_bytes(take(&mut rest)?)),
            ColumnType::Date => Value::Date(i32::from_le_bytes(take(&mut rest)?)),
            ColumnType::Int64 => Value::Int64(i64::from_le_bytes(take(&mut rest)?)),
            ColumnType::Timestamp => Value::Timestamp(i64::from_le_bytes(take(&mut rest)?)),
            ColumnType::TimestampTz => Value::TimestampTz(i64::from_le_bytes(take(&mut rest)?)),
            ColumnType::Float32 => Value::Float32(f32::from_le_bytes(take(&mut rest)?)),
            ColumnType::Float64 => Value::Float64(f64::from_le_bytes(take(&mut rest)?)),
            ColumnType::Text => Value::Text(
                std::str::from_utf8(get_bytes(&mut rest)?)
                    .map_err(|_| Error::corrupt("stored text is not UTF-8"))?
                    .to_owned(),
            ),
            ColumnType::Bytea => Value::Bytea(get_bytes(&mut rest)?.to_vec()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value_of(ty: ColumnType) -> BoxedStrategy<Value> {
        let v = match ty {
            ColumnType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
            ColumnType::Int16 => any::<i16>().prop_map(Value::Int16).boxed(),
            ColumnType::Int32 => any::<i32>().prop_map(Value::Int32).boxed(),
            ColumnType::Int64 => any::<i64>().prop_map(Value::Int64).boxed(),
            ColumnType::Float32 => any::<f32>()
                .prop_filter("nan", |f| !f.is_nan())
                .prop_map(Value::Float32)
                .boxed(),
            ColumnType::Float64 => any::<f64>()
                .prop_filter("nan", |f| !f.is_nan())
                .prop_map(Value::Float64)
                .boxed(),
            ColumnType::Text => any::<String>().prop_map(Value::Text).boxed(),
            ColumnType::Bytea => any::<Vec<u8>>().prop_map(Value::Bytea).boxed(),
            ColumnType::Timestamp => any::<i64>().prop_map(Value::Timestamp).boxed(),
            ColumnType::TimestampTz => any::<i64>().prop_map(Value::TimestampTz).boxed(),
            ColumnType::Date => any::<i32>().prop_map(Value::Date).boxed(),
        };
        prop_oneof![1 => Just(Value::Null), 4 => v].boxed()
    }

    fn column_type() -> impl Strategy<Value = ColumnType> {
        prop_oneof![
            Just(ColumnType::Bool),
            Just(ColumnType::Int16),
            Just(ColumnType::Int32),
            Just(ColumnType::Int64),
            Just(ColumnType::Float32),
            Just(ColumnType::Float64),
            Just(ColumnType::Text),
            Just(ColumnType::Bytea),
            Just(ColumnType::Timestamp),
            Just(ColumnType::TimestampTz),
            Just(ColumnType::Date),
        ]
    }

    fn row() -> impl Strategy<Value = (Vec<ColumnType>, Vec<Value>)> {
        prop::collection::vec(column_type(), 0..20).prop_flat_map(|types| {
            let values: Vec<_> = types.iter().map(|t| value_of(*t)).collect();
            (Just(types), values)
        })
    }

    proptest! {
        #[test]
        fn row_roundtrip((types, values) in row()) {
            let mut buf = Vec::new();
            encode_row(&values, &mut buf);
            prop_assert_eq!(decode_row(&types, &buf).unwrap(), values);
        }

        #[test]
        fn wider_schema_reads_missing_columns_as_null((types, values) in row(), extra in column_type()) {
            let mut buf = Vec::new();
            encode_row(&values, &mut buf);
            let mut wider = types.clone();
            wider.push(extra);
            let mut expected = values.clone();
            expected.push(Value::Null);
            prop_assert_eq!(decode_row(&wider, &buf).unwrap(), expected);
        }

        #[test]
        fn key_values_roundtrip_and_keep_order(ty in column_type(), a in any::<u64>(), b in any::<u64>()) {
            // Integer-like types: map two u64 seeds into the type and compare.
            let (va, vb) = match ty {
                ColumnType::Int64 => (Value::Int64(a as i64), Value::Int64(b as i64)),
                ColumnType::Int32 => (Value::Int32(a as i32), Value::Int32(b as i32)),
                ColumnType::Text => (Value::Text(a.to_string()), Value::Text(b.to_string())),
                _ => return Ok(()),
            };
            let enc = |v: &Value| { let mut w = KeyWriter::new(); v.encode_key(&mut w).unwrap(); w.finish() };
            let (ka, kb) = (enc(&va), enc(&vb));
            let ord = match (&va, &vb) {
                (Value::Int64(x), Value::Int64(y)) => x.cmp(y),
                (Value::Int32(x), Value::Int32(y)) => x.cmp(y),
                (Value::Text(x), Value::Text(y)) => x.cmp(y),
                _ => unreachable!(),
            };
            prop_assert_eq!(ord, ka.cmp(&kb));
            prop_assert_eq!(Value::decode_key(ty, &mut KeyReader::new(&ka)).unwrap(), va);
        }
    }

    #[test]
    fn truncated_rows_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_row(&[Value::Text("hello".into()), Value::Int64(7)], &mut buf);
        for cut in 0..buf.len() {
            assert!(decode_row(&[ColumnType::Text, ColumnType::Int64], &buf[..cut]).is_err());
        }
    }
}
