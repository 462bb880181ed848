//! SQL types ↔ storage column types ↔ Arrow types, and text input of values.

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use datafusion::sql::sqlparser::ast::DataType as SqlType;
use eddy_storage::{ColumnType, Value};

use crate::error::{Error, Result};

/// The column type for a SQL type name in CREATE TOPIC / CREATE TABLE.
pub fn column_type_of(sql: &SqlType) -> Result<ColumnType> {
    use SqlType as T;
    Ok(match sql {
        T::Bool | T::Boolean => ColumnType::Bool,
        T::SmallInt(_) | T::Int2(_) => ColumnType::Int16,
        T::Int(_) | T::Integer(_) | T::Int4(_) => ColumnType::Int32,
        T::BigInt(_) | T::Int8(_) => ColumnType::Int64,
        T::Real | T::Float4 => ColumnType::Float32,
        T::Double(_) | T::DoublePrecision | T::Float8 | T::Float(_) => ColumnType::Float64,
        T::Text
        | T::Varchar(_)
        | T::CharacterVarying(_)
        | T::String(_)
        | T::Char(_)
        | T::Character(_) => ColumnType::Text,
        T::Bytea => ColumnType::Bytea,
        T::Timestamp(_, tz) => {
            use datafusion::sql::sqlparser::ast::TimezoneInfo;
            match tz {
                TimezoneInfo::WithTimeZone | TimezoneInfo::Tz => ColumnType::TimestampTz,
                _ => ColumnType::Timestamp,
            }
        }
        T::Date => ColumnType::Date,
        T::JSON | T::JSONB => ColumnType::Text,
        other => return Err(Error::NotSupported(format!("column type {other}"))),
    })
}

/// Arrow type of a stored column.
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int16 => DataType::Int16,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Text => DataType::Utf8,
        ColumnType::Bytea => DataType::Binary,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => {
            DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("+00:00")))
        }
        ColumnType::Date => DataType::Date32,
    }
}

/// Parses the text form of a value (COPY text/CSV, quoted literals, text parameters).
pub fn parse_text(ty: ColumnType, s: &str) -> Result<Value> {
    let bad = || Error::InvalidText {
        ty: ty.sql_name(),
        value: s.to_owned(),
    };
    let t = s.trim();
    Ok(match ty {
        ColumnType::Text => Value::Text(s.to_owned()),
        ColumnType::Bool => match t.to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "y" | "on" | "1" => Value::Bool(true),
            "f" | "false" | "no" | "n" | "off" | "0" => Value::Bool(false),
            _ => return Err(bad()),
        },
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
            let n: i128 = t.parse().map_err(|_| bad())?;
            int_value(ty, n).ok_or_else(|| Error::OutOfRange {
                ty: ty.sql_name(),
                value: t.to_owned(),
            })?
        }
        ColumnType::Float32 | ColumnType::Float64 => {
            let f: f64 = match t.to_ascii_lowercase().as_str() {
                "nan" => f64::NAN,
                "infinity" | "inf" | "+infinity" => f64::INFINITY,
                "-infinity" | "-inf" => f64::NEG_INFINITY,
                _ => t.parse().map_err(|_| bad())?,
            };
            if ty == ColumnType::Float32 {
                Value::Float32(f as f32)
            } else {
                Value::Float64(f)
            }
        }
        ColumnType::Bytea => match t.strip_prefix("\\x") {
            Some(hex) => Value::Bytea(decode_hex(hex).ok_or_else(bad)?),
            None => Value::Bytea(s.as_bytes().to_vec()),
        },
        ColumnType::Date => {
            let d = NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| bad())?;
            Value::Date(days_since_epoch(d))
        }
        ColumnType::Timestamp => Value::Timestamp(parse_timestamp(t).ok_or_else(bad)?),
        ColumnType::TimestampTz => Value::TimestampTz(parse_timestamp(t).ok_or_else(bad)?),
    })
}

/// An integer as a value of an integer column, if it fits.
pub fn int_value(ty: ColumnType, n: i128) -> Option<Value> {
    Some(match ty {
        ColumnType::Int16 => Value::Int16(i16::try_from(n).ok()?),
        ColumnType::Int32 => Value::Int32(i32::try_from(n).ok()?),
        ColumnType::Int64 => Value::Int64(i64::try_from(n).ok()?),
        ColumnType::Float32 => Value::Float32(n as f32),
        ColumnType::Float64 => Value::Float64(n as f64),
        _ => return None,
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::default()).num_days() as i32
}

/// Microseconds since the epoch for the usual Postgres timestamp spellings. A zone or
/// offset, when present, converts to UTC; without one the text is taken as UTC.
pub fn parse_timestamp(t: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%#z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(t, fmt) {
            return Some(dt.timestamp_micros());
        }
    }
    let t = t
        .strip_suffix(" UTC")
        .or_else(|| t.strip_suffix('Z'))
        .unwrap_or(t);
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .map(|d| i64::from(days_since_epoch(d)) * 86_400_000_000)
}

/// Parses durations as used in `retention = '7 days'`: a number and a unit
/// (ms, s, sec, second(s), min, minute(s), h, hour(s), d, day(s), week(s)), or a bare
/// number of milliseconds. Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64> {
    let bad = || {
        Error::InvalidParameter(format!(
            "invalid duration \"{s}\" (try '7 days', '12h', '30s')"
        ))
    };
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "" | "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        "w" | "week" | "weeks" => 604_800_000.0,
        _ => return Err(bad()),
    };
    if !(n.is_finite() && n >= 0.0) {
        return Err(bad());
    }
    Ok((n * mult).round() as u64)
}

/// Renders a duration in milliseconds the way `SHOW TOPICS` prints retention.
pub fn format_duration_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (604_800_000, "weeks"),
        (86_400_000, "days"),
        (3_600_000, "hours"),
        (60_000, "minutes"),
        (1_000, "seconds"),
    ];
    for (size, name) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            let n = ms / size;
            return format!(
                "{n} {}",
                if n == 1 {
                    name.trim_end_matches('s')
                } else {
                    name
                }
            );
        }
    }
    format!("{ms} ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_input() {
        assert_eq!(
            parse_text(ColumnType::Int32, " 42 ").unwrap(),
            Value::Int32(42)
        );
        assert!(matches!(
            parse_text(ColumnType::Int32, "abc"),
            Err(Error::InvalidText { .. })
        ));
        assert!(matches!(
            parse_text(ColumnType::Int16, "70000"),
            Err(Error::OutOfRange { .. })
        ));
        assert_eq!(
            parse_text(ColumnType::Bool, "t").unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            parse_text(ColumnType::Bytea, "\\x00ff").unwrap(),
            Value::Bytea(vec![0, 255])
        );
        assert_eq!(
            parse_text(ColumnType::Date, "1970-01-02").unwrap(),
            Value::Date(1)
        );
        assert_eq!(
            parse_text(ColumnType::Timestamp, "1970-01-01 00:00:01").unwrap(),
            Value::Timestamp(1_000_000)
        );
        assert_eq!(
            parse_text(ColumnType::TimestampTz, "1970-01-01 01:00:01+01").unwrap(),
            Value::TimestampTz(1_000_000)
        );
        assert_eq!(
            parse_text(ColumnType::Timestamp, "1970-01-01T00:00:00.5Z").unwrap(),
            Value::Timestamp(500_000)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("7 days").unwrap(), 7 * 86_400_000);
        assert_eq!(parse_duration_ms("1 day").unwrap(), 86_400_000);
        assert_eq!(parse_duration_ms("30s").unwrap(), 30_000);
        assert_eq!(parse_duration_ms("1500").unwrap(), 1500);
        assert!(parse_duration_ms("soon").is_err());
        assert_eq!(format_duration_ms(7 * 86_400_000), "1 week");
        assert_eq!(format_duration_ms(86_400_000), "1 day");
        assert_eq!(format_duration_ms(1500), "1500 ms");
    }
}
