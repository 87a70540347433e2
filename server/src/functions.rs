//! Scalar functions Postgres clients expect that DataFusion does not have.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;

/// The string `version()` returns: Postgres-shaped so drivers (SQLAlchemy, asyncpg) that parse
/// it accept Eddy, with Eddy's own version inside.
pub fn version_string() -> String {
    format!(
        "PostgreSQL 15.0 (Eddy {}) on {}-unknown-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

pub fn register(ctx: &SessionContext) {
    let version = version_string();
    let udf = create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(version.clone()))))),
    );
    ctx.register_udf(udf);

    // current_setting(name): the server's defaults (session overrides are not visible here).
    let udf = create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let defaults = crate::session::default_settings("");
            let lookup = |name: Option<&str>| name.and_then(|n| defaults.get(&n.to_lowercase()).cloned());
            match &args[0] {
                ColumnarValue::Scalar(ScalarValue::Utf8(name)) => {
                    Ok(ColumnarValue::Scalar(ScalarValue::Utf8(lookup(name.as_deref()))))
                }
                ColumnarValue::Array(a) => {
                    let names = a.as_any().downcast_ref::<StringArray>();
                    let out: StringArray = match names {
                        Some(names) => names.iter().map(lookup).collect(),
                        None => StringArray::new_null(a.len()),
                    };
                    Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
                }
                _ => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))),
            }
        }),
    );
    ctx.register_udf(udf);
}
