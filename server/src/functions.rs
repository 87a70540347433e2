//! Scalar functions Postgres clients expect that DataFusion does not have.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
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
    register_time_functions(ctx);
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

/// Translates a Postgres `to_char` pattern into a chrono format string.
pub fn postgres_pattern_to_chrono(pattern: &str) -> String {
    // Longest patterns first; numeric patterns match case-insensitively as in Postgres.
    const NUMERIC: &[(&str, &str)] = &[
        ("YYYY", "%Y"),
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("DDD", "%j"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("HH", "%I"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("MS", "%3f"),
        ("US", "%6f"),
    ];
    const TEXT: &[(&str, &str)] = &[
        ("Month", "%B"),
        ("Mon", "%b"),
        ("Day", "%A"),
        ("Dy", "%a"),
        ("AM", "%p"),
        ("PM", "%p"),
        ("am", "%P"),
        ("pm", "%P"),
        ("TZ", "%Z"),
    ];
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut rest = pattern;
    'outer: while !rest.is_empty() {
        for (p, f) in TEXT {
            if rest.starts_with(p) {
                out.push_str(f);
                rest = &rest[p.len()..];
                continue 'outer;
            }
        }
        for (p, f) in NUMERIC {
            if rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p) {
                out.push_str(f);
                rest = &rest[p.len()..];
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `to_char(timestamp | date, pattern)` with Postgres patterns (`YYYY-MM-DD HH24:MI`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToChar {
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for ToChar {
    fn name(&self) -> &str {
        "to_char"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        use datafusion::arrow::compute::cast;
        use datafusion::arrow::datatypes::{TimeUnit, TimestampMicrosecondType};
        let n = args.number_rows;
        let values = args.args[0].clone().into_array(n)?;
        let patterns = args.args[1].clone().into_array(n)?;
        let patterns = cast(&patterns, &DataType::Utf8)?;
        let patterns =
            patterns.as_any().downcast_ref::<StringArray>().cloned().unwrap_or_else(|| StringArray::new_null(n));
        let micros = cast(&values, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let micros = micros
            .as_any()
            .downcast_ref::<datafusion::arrow::array::PrimitiveArray<TimestampMicrosecondType>>()
            .cloned()
            .ok_or_else(|| datafusion::error::DataFusionError::Execution("to_char needs a timestamp or date".into()))?;
        let mut cache: Option<(String, String)> = None;
        let out: StringArray = (0..n)
            .map(|i| {
                if micros.is_null(i) || patterns.is_null(i) {
                    return None;
                }
                let p = patterns.value(i);
                let fmt = match &cache {
                    Some((k, v)) if k == p => v.clone(),
                    _ => {
                        let v = postgres_pattern_to_chrono(p);
                        cache = Some((p.to_string(), v.clone()));
                        v
                    }
                };
                let dt = chrono::DateTime::from_timestamp_micros(micros.value(i))?.naive_utc();
                let mut s = String::new();
                use std::fmt::Write as _;
                write!(s, "{}", dt.format(&fmt)).ok()?;
                Some(s)
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `proctime()`: the wall-clock time when a row is processed (for processing-time windows).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ProcTime {
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for ProcTime {
    fn name(&self) -> &str {
        "proctime"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, Some("+00:00".into())))
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let a = datafusion::arrow::array::TimestampMicrosecondArray::from(vec![now; args.number_rows.max(1)])
            .with_timezone("+00:00");
        Ok(ColumnarValue::Array(Arc::new(a)))
    }
}

/// Postgres's `mod(a, b)`: DataFusion only has the `%` operator, which this simplifies to, so
/// plans (and streaming operators) see the operator.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Mod {
    signature: datafusion::logical_expr::Signature,
}

impl Mod {
    fn result_type(arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
        let [l, r] = arg_types else {
            return Err(datafusion::error::DataFusionError::Plan("mod(a, b) takes two arguments".into()));
        };
        BinaryTypeCoercer::new(l, &datafusion::logical_expr::Operator::Modulo, r).get_result_type()
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for Mod {
    fn name(&self) -> &str {
        "mod"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Self::result_type(arg_types)
    }

    fn simplify(
        &self,
        args: Vec<datafusion::logical_expr::Expr>,
        _info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> datafusion::common::Result<datafusion::logical_expr::simplify::ExprSimplifyResult> {
        use datafusion::logical_expr::simplify::ExprSimplifyResult;
        match <[datafusion::logical_expr::Expr; 2]>::try_from(args) {
            Ok([a, b]) => Ok(ExprSimplifyResult::Simplified(a % b)),
            Err(args) => Ok(ExprSimplifyResult::Original(args)),
        }
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let types: Vec<DataType> = args.args.iter().map(|a| a.data_type()).collect();
        let result_type = Self::result_type(&types)?;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [l, r] = arrays.as_slice() else {
            return Err(datafusion::error::DataFusionError::Plan("mod(a, b) takes two arguments".into()));
        };
        let l = datafusion::arrow::compute::cast(l, &result_type)?;
        let r = datafusion::arrow::compute::cast(r, &result_type)?;
        Ok(ColumnarValue::Array(datafusion::arrow::compute::kernels::numeric::rem(&l, &r)?))
    }
}

/// Registers the Postgres-compatible `to_char`, `mod` and `proctime`.
pub fn register_time_functions(ctx: &SessionContext) {
    use datafusion::logical_expr::{ScalarUDF, Signature, TypeSignature};
    ctx.register_udf(ScalarUDF::from(ToChar {
        signature: Signature::new(TypeSignature::Any(2), Volatility::Immutable),
    }));
    ctx.register_udf(ScalarUDF::from(ProcTime { signature: Signature::nullary(Volatility::Volatile) }));
    ctx.register_udf(ScalarUDF::from(Mod { signature: Signature::new(TypeSignature::Any(2), Volatility::Immutable) }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_patterns() {
        assert_eq!(postgres_pattern_to_chrono("YYYY-MM-DD"), "%Y-%m-%d");
        assert_eq!(postgres_pattern_to_chrono("yyyy-mm-dd"), "%Y-%m-%d");
        assert_eq!(postgres_pattern_to_chrono("HH24:MI:SS"), "%H:%M:%S");
        assert_eq!(postgres_pattern_to_chrono("HH:mm"), "%I:%m");
        assert_eq!(postgres_pattern_to_chrono("Mon DD, YYYY 100%"), "%b %d, %Y 100%%");
    }
}
