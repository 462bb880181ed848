//! SQL functions drivers call that DataFusion and datafusion-pg-catalog don't provide.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::types::{logical_float64, logical_string, NativeType};
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    create_udf, Coercion, ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    TypeSignatureClass, Volatility,
};
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
    // Seconds as float8; an integer or a quoted number is cast to it, as PostgreSQL
    // casts an unknown literal (`pg_sleep('0.5')`; `'x'` fails the cast with 22P02).
    let seconds = Coercion::new_implicit(
        TypeSignatureClass::Native(logical_float64()),
        vec![
            TypeSignatureClass::Numeric,
            TypeSignatureClass::Native(logical_string()),
        ],
        NativeType::Float64,
    );
    let sleep = PgSleep {
        signature: Signature::coercible(vec![seconds], Volatility::Volatile),
    };
    ctx.register_udf(AsyncScalarUDF::new(Arc::new(sleep)).into_scalar_udf());
}

/// `pg_sleep(seconds)`: waits, without holding a thread, then answers an empty value (as
/// PostgreSQL's `void`). Once per row, as PostgreSQL does; a cancel or the end of the
/// connection stops it, since the statement's stream is dropped.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgSleep {
    signature: Signature,
}

impl ScalarUDFImpl for PgSleep {
    fn name(&self) -> &str {
        "pg_sleep"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        datafusion::common::internal_err!("pg_sleep runs only as an async function")
    }
}

#[async_trait::async_trait]
impl AsyncScalarUDFImpl for PgSleep {
    async fn invoke_async_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let seconds = args.args[0].to_array(rows)?;
        let seconds = seconds
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Plan("pg_sleep takes seconds".into())
            })?;
        // A NULL, negative or NaN wait is none, as in PostgreSQL.
        let total: f64 = seconds.iter().flatten().filter(|s| *s > 0.0).sum();
        if let Ok(wait) = std::time::Duration::try_from_secs_f64(total) {
            tokio::time::sleep(wait).await;
        }
        Ok(ColumnarValue::Array(Arc::new(
            arrow::array::StringArray::from(vec![""; rows]),
        )))
    }
}
