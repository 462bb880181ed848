//! Storage values ↔ Arrow arrays.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array,
    Date32Builder, Float32Array, Float32Builder, Float64Array, Float64Builder, Int16Array,
    Int16Builder, Int32Array, Int32Builder, Int64Array, Int64Builder, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::DataType;
use arrow::util::display::FormatOptions;
use datafusion::scalar::ScalarValue;
use eddy_storage::{ColumnType, Value};

use crate::error::{Error, Result};
use crate::types::{arrow_type, parse_text};

/// Builds one Arrow column of type `ty` from values of that type (NULLs allowed).
pub fn build_array<'a>(ty: ColumnType, values: impl Iterator<Item = &'a Value>) -> ArrayRef {
    macro_rules! build {
        ($builder:ty, $($pat:pat => $v:expr),+) => {{
            let mut b = <$builder>::new();
            for v in values {
                match v {
                    $($pat => b.append_value($v),)+
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match ty {
        ColumnType::Bool => build!(BooleanBuilder, Value::Bool(x) => *x),
        ColumnType::Int16 => build!(Int16Builder, Value::Int16(x) => *x),
        ColumnType::Int32 => build!(Int32Builder, Value::Int32(x) => *x),
        ColumnType::Int64 => build!(Int64Builder, Value::Int64(x) => *x),
        ColumnType::Float32 => build!(Float32Builder, Value::Float32(x) => *x),
        ColumnType::Float64 => build!(Float64Builder, Value::Float64(x) => *x),
        ColumnType::Text => build!(StringBuilder, Value::Text(x) => x),
        ColumnType::Bytea => build!(BinaryBuilder, Value::Bytea(x) => x),
        ColumnType::Date => build!(Date32Builder, Value::Date(x) => *x),
        ColumnType::Timestamp => build!(TimestampMicrosecondBuilder, Value::Timestamp(x) => *x),
        ColumnType::TimestampTz => {
            let mut b = TimestampMicrosecondBuilder::new().with_timezone("+00:00");
            for v in values {
                match v {
                    Value::TimestampTz(x) => b.append_value(*x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
    }
}

/// Casts a whole column to the storage type's Arrow type, failing (not nulling) on bad values.
pub fn cast_column(array: &ArrayRef, ty: ColumnType, column: &str) -> Result<ArrayRef> {
    let target = arrow_type(ty);
    if array.data_type() == &target {
        return Ok(array.clone());
    }
    // Text goes through our own parser so errors read like Postgres's (22P02).
    if matches!(
        array.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) && ty != ColumnType::Text
    {
        let strings = cast_with_options(array, &DataType::Utf8, &CastOptions::default())?;
        let strings = strings
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::DatatypeMismatch("text".into()))?;
        let values = (0..strings.len())
            .map(|i| {
                if strings.is_null(i) {
                    Ok(Value::Null)
                } else {
                    parse_text(ty, strings.value(i))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(build_array(ty, values.iter()));
    }
    // Text takes only text (or NULL) and BOOLEAN no numbers, as in PostgreSQL.
    let text_ok = ty != ColumnType::Text || matches!(array.data_type(), DataType::Null);
    let bool_ok = ty != ColumnType::Bool || !array.data_type().is_numeric();
    let castable = arrow::compute::can_cast_types(array.data_type(), &target) && text_ok && bool_ok;
    if !castable {
        return Err(Error::DatatypeMismatch(format!(
            "column \"{column}\" is of type {} but expression is of type {}",
            ty.sql_name(),
            array.data_type()
        )));
    }
    let opts = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    let numbers = array.data_type().is_numeric() && target.is_numeric();
    cast_with_options(array, &target, &opts).map_err(|e| match e {
        // A cast between numeric types fails only on a number the target cannot hold.
        arrow::error::ArrowError::CastError(msg) if numbers => Error::OutOfRange {
            ty: ty.sql_name(),
            value: msg,
        },
        other => Error::from(other),
    })
}

/// Reads row `i` of a column already cast to `ty`'s Arrow type.
pub fn value_at(array: &ArrayRef, i: usize, ty: ColumnType) -> Result<Value> {
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    macro_rules! get {
        ($arr:ty, $variant:path) => {{
            let a = array
                .as_any()
                .downcast_ref::<$arr>()
                .ok_or_else(|| Error::DatatypeMismatch(format!("expected {}", ty.sql_name())))?;
            $variant(a.value(i).to_owned())
        }};
    }
    Ok(match ty {
        ColumnType::Bool => get!(BooleanArray, Value::Bool),
        ColumnType::Int16 => get!(Int16Array, Value::Int16),
        ColumnType::Int32 => get!(Int32Array, Value::Int32),
        ColumnType::Int64 => get!(Int64Array, Value::Int64),
        ColumnType::Float32 => get!(Float32Array, Value::Float32),
        ColumnType::Float64 => get!(Float64Array, Value::Float64),
        ColumnType::Text => get!(StringArray, Value::Text),
        ColumnType::Bytea => get!(BinaryArray, Value::Bytea),
        ColumnType::Date => get!(Date32Array, Value::Date),
        ColumnType::Timestamp => get!(TimestampMicrosecondArray, Value::Timestamp),
        ColumnType::TimestampTz => get!(TimestampMicrosecondArray, Value::TimestampTz),
    })
}

/// A scalar (a bound parameter, a folded literal) as a value of column type `ty`.
pub fn scalar_to_value(s: &ScalarValue, ty: ColumnType, column: &str) -> Result<Value> {
    if s.is_null() {
        return Ok(Value::Null);
    }
    let array = s.to_array()?;
    let cast = cast_column(&array, ty, column)?;
    value_at(&cast, 0, ty)
}
