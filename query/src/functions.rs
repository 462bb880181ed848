//! SQL functions drivers call that DataFusion and datafusion-pg-catalog don't provide.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

/// What `SELECT version()` answers: PostgreSQL-shaped, so tools parse it, naming eddy.
pub fn version_string() -> String {
    format!(
        "PostgreSQL 16.6 (eddy {}) on x86_64-linux, compiled by rustc",
        env!("CARGO_PKG_VERSION")
    )
}

pub(crate) fn register(ctx: &SessionContext) {
    let version = version_string();
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version.clone(),
            ))))
        }),
    ));
}
