//! Column values as PostgreSQL prints them in text format, written straight into a byte
//! buffer: the per-row cost of every COPY TO and subscription stream
//! ([`CopyOptions::encode_batch`](crate::copy::CopyOptions::encode_batch)). Integers and
//! timestamps are formatted by hand (unit tests check them against core::fmt and chrono);
//! other types go through Arrow's display formatter.

use arrow::array::{
    Array, BinaryArray, BooleanArray, Int16Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::Result;

/// A batch column read through its concrete type.
pub(crate) enum Column<'a> {
    Bool(&'a BooleanArray),
    Int16(&'a Int16Array),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    Utf8(&'a StringArray),
    Binary(&'a BinaryArray),
    /// With the last value formatted and its text.
    Micros(
        &'a TimestampMicrosecondArray,
        ArrayFormatter<'a>,
        Option<(i64, Vec<u8>)>,
    ),
    Other(ArrayFormatter<'a>),
}

impl<'a> Column<'a> {
    pub(crate) fn new(a: &'a dyn Array, fmt: &FormatOptions<'a>) -> Result<Column<'a>> {
        let any = a.as_any();
        Ok(match a.data_type() {
            DataType::Boolean => any.downcast_ref().map(Column::Bool),
            DataType::Int16 => any.downcast_ref().map(Column::Int16),
            DataType::Int32 => any.downcast_ref().map(Column::Int32),
            DataType::Int64 => any.downcast_ref().map(Column::Int64),
            DataType::Utf8 => any.downcast_ref().map(Column::Utf8),
            DataType::Binary => any.downcast_ref().map(Column::Binary),
            DataType::Timestamp(TimeUnit::Microsecond, None) => {
                let f = ArrayFormatter::try_new(a, fmt)?;
                any.downcast_ref().map(|t| Column::Micros(t, f, None))
            }
            _ => None,
        }
        .map_or_else(|| ArrayFormatter::try_new(a, fmt).map(Column::Other), Ok)?)
    }

    /// Integers and timestamps: text made of digits, signs and separators only.
    pub(crate) fn is_numeric(&self) -> bool {
        matches!(
            self,
            Column::Int16(_) | Column::Int32(_) | Column::Int64(_) | Column::Micros(..)
        )
    }

    /// Writes row `r` (not null) as PostgreSQL prints it, unescaped.
    pub(crate) fn write(&mut self, r: usize, out: &mut Vec<u8>) {
        use std::io::Write;
        match self {
            Column::Bool(b) => out.push(if b.value(r) { b't' } else { b'f' }),
            Column::Int16(a) => push_int(out, i64::from(a.value(r))),
            Column::Int32(a) => push_int(out, i64::from(a.value(r))),
            Column::Int64(a) => push_int(out, a.value(r)),
            Column::Utf8(a) => out.extend_from_slice(a.value(r).as_bytes()),
            Column::Binary(a) => {
                out.extend_from_slice(b"\\x");
                for b in a.value(r) {
                    push_digits(out, u64::from(*b >> 4), 1, 16);
                    push_digits(out, u64::from(*b & 15), 1, 16);
                }
            }
            Column::Micros(a, slow, last) => {
                let v = a.value(r);
                match last {
                    Some((prev, text)) if *prev == v => out.extend_from_slice(text),
                    _ => {
                        let mut text = Vec::with_capacity(32);
                        if !write_timestamp_micros(&mut text, v) {
                            // Writing into a Vec cannot fail.
                            let _ = write!(text, "{}", slow.value(r));
                        }
                        out.extend_from_slice(&text);
                        *last = Some((v, text));
                    }
                }
            }
            Column::Other(f) => {
                let _ = write!(out, "{}", f.value(r));
            }
        }
    }
}

/// Appends `v` in `base` (10 or 16, lower case), zero-padded to `width` digits.
fn push_digits(out: &mut Vec<u8>, mut v: u64, width: usize, base: u64) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while v > 0 || buf.len() - i < width {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(v % base) as usize];
        v /= base;
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a decimal integer (core::fmt is a measurable share of a subscription stream).
fn push_int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_digits(out, v.unsigned_abs(), 1, 10);
}

/// Writes a timestamp (microseconds since the epoch) as `YYYY-MM-DD HH:MM:SS[.fff[fff]]`,
/// the same text as chrono's `%Y-%m-%d %H:%M:%S%.f`; false (nothing written) outside
/// years 0..=9999, which the caller formats the slow way.
fn write_timestamp_micros(out: &mut Vec<u8>, micros: i64) -> bool {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return false;
    }
    // All parts are non-negative here.
    let part = |v: i64| v.unsigned_abs();
    push_digits(out, part(year), 4, 10);
    out.push(b'-');
    push_digits(out, part(month), 2, 10);
    out.push(b'-');
    push_digits(out, part(day), 2, 10);
    out.push(b' ');
    push_digits(out, part(sod / 3600), 2, 10);
    out.push(b':');
    push_digits(out, part(sod / 60 % 60), 2, 10);
    out.push(b':');
    push_digits(out, part(sod % 60), 2, 10);
    match frac {
        0 => {}
        f if f % 1000 == 0 => {
            out.push(b'.');
            push_digits(out, part(f / 1000), 3, 10);
        }
        f => {
            out.push(b'.');
            push_digits(out, part(f), 6, 10);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_bytes_print_as_core_fmt_does() {
        for v in [0, 7, -7, 10, 99, -100, 1_234_567_890, i64::MAX, i64::MIN] {
            let mut s = Vec::new();
            push_int(&mut s, v);
            assert_eq!(s, v.to_string().into_bytes());
        }
        let mut s = Vec::new();
        for b in [0u8, 9, 10, 171, 255] {
            push_digits(&mut s, u64::from(b >> 4), 1, 16);
            push_digits(&mut s, u64::from(b & 15), 1, 16);
        }
        assert_eq!(s, b"00090aabff");
    }

    #[test]
    fn fast_timestamps_print_exactly_as_chrono_does() {
        let values: Vec<i64> = vec![
            0,
            1,
            -1,
            999_999,
            1_000,
            1_500_000,
            1_700_000_000_123_456,
            1_700_000_000_120_000,
            1_700_000_000_000_000,
            951_782_400_000_000,     // 2000-02-29
            -62_135_596_800_000_000, // 0001-01-01
            253_402_300_799_999_999, // 9999-12-31 23:59:59.999999
            -2_208_988_800_000_001,
        ];
        let array = TimestampMicrosecondArray::from(values.clone());
        let fmt = FormatOptions::new().with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"));
        let slow = ArrayFormatter::try_new(&array, &fmt).unwrap();
        for (i, v) in values.iter().enumerate() {
            let mut fast = Vec::new();
            assert!(write_timestamp_micros(&mut fast, *v), "{v}");
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                slow.value(i).to_string(),
                "{v}"
            );
        }
        assert!(
            !write_timestamp_micros(&mut Vec::new(), i64::MAX),
            "year > 9999 takes the slow path"
        );
    }
}
