//! `number * INTERVAL`, `INTERVAL * number` and `INTERVAL / number`, as in Postgres.
//!
//! DataFusion plans no arithmetic between intervals and numbers, yet `ts - n * INTERVAL '1'
//! SECOND` is everyday SQL. An expression planner turns those operators into the
//! `eddy_interval_mul(interval, factor)` function, which follows Postgres' `interval_mul`: the
//! fraction of months spills into days (30 per month) and the fraction of days into time.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, IntervalMonthDayNanoArray};
use datafusion::arrow::datatypes::{DataType, Float64Type, IntervalMonthDayNano, IntervalUnit};
use datafusion::common::{DFSchema, DataFusionError, ExprSchema, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;

const INTERVAL: DataType = DataType::Interval(IntervalUnit::MonthDayNano);
const NANOS_PER_DAY: f64 = 86_400e9;

/// `eddy_interval_mul(interval, factor)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IntervalMul {
    signature: Signature,
}

impl IntervalMul {
    pub fn udf() -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(Self {
            signature: Signature::exact(vec![INTERVAL, DataType::Float64], Volatility::Immutable),
        }))
    }
}

/// Postgres' `interval_mul`; `None` when the result does not fit.
fn multiply(span: IntervalMonthDayNano, factor: f64) -> Option<IntervalMonthDayNano> {
    let months = f64::from(span.months) * factor;
    let whole_months = months.trunc();
    let month_days = (months - whole_months) * 30.0;
    let days = f64::from(span.days) * factor;
    let whole_days = days.trunc();
    let spill_days = month_days.trunc();
    let spill_nanos = (days - whole_days + month_days - spill_days) * NANOS_PER_DAY;
    let nanos = (span.nanoseconds as f64 * factor + spill_nanos).round();
    let fits = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;
    let total_days = whole_days + spill_days;
    if !fits(whole_months, f64::from(i32::MIN), f64::from(i32::MAX))
        || !fits(total_days, f64::from(i32::MIN), f64::from(i32::MAX))
        || !fits(nanos, i64::MIN as f64, i64::MAX as f64)
    {
        return None;
    }
    Some(IntervalMonthDayNano::new(whole_months as i32, total_days as i32, nanos as i64))
}

impl ScalarUDFImpl for IntervalMul {
    fn name(&self) -> &str {
        "eddy_interval_mul"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(INTERVAL)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [spans, factors] = arrays.as_slice() else {
            return Err(DataFusionError::Plan("eddy_interval_mul takes two arguments".into()));
        };
        let spans = spans.as_primitive::<datafusion::arrow::datatypes::IntervalMonthDayNanoType>();
        let factors = factors.as_primitive::<Float64Type>();
        let mut out = Vec::with_capacity(spans.len());
        for i in 0..spans.len() {
            if spans.is_null(i) || factors.is_null(i) {
                out.push(None);
                continue;
            }
            let factor = factors.value(i);
            if factor.is_nan() {
                return Err(DataFusionError::Execution(
                    "division by zero (or a NaN factor) in interval arithmetic".into(),
                ));
            }
            let product = multiply(spans.value(i), factor)
                .ok_or_else(|| DataFusionError::Execution("interval out of range".into()))?;
            out.push(Some(product));
        }
        Ok(ColumnarValue::Array(Arc::new(IntervalMonthDayNanoArray::from(out)) as ArrayRef))
    }
}

/// Plans `*` and `/` between an interval and a number as [`IntervalMul`].
#[derive(Debug, Default)]
pub struct IntervalArithmeticPlanner;

fn is_number(t: &DataType) -> bool {
    t.is_numeric() && !matches!(t, DataType::Interval(_))
}

impl ExprPlanner for IntervalArithmeticPlanner {
    fn plan_binary_op(&self, expr: RawBinaryExpr, schema: &DFSchema) -> Result<PlannerResult<RawBinaryExpr>> {
        if !matches!(expr.op, BinaryOperator::Multiply | BinaryOperator::Divide) {
            return Ok(PlannerResult::Original(expr));
        }
        let schema: &dyn ExprSchema = schema;
        let (Ok(left), Ok(right)) = (expr.left.get_type(schema), expr.right.get_type(schema)) else {
            return Ok(PlannerResult::Original(expr));
        };
        let (span, factor) = match (&left, &right, &expr.op) {
            (DataType::Interval(_), r, _) if is_number(r) => (expr.left.clone(), expr.right.clone()),
            (l, DataType::Interval(_), BinaryOperator::Multiply) if is_number(l) => {
                (expr.right.clone(), expr.left.clone())
            }
            _ => return Ok(PlannerResult::Original(expr)),
        };
        let factor = cast(factor, DataType::Float64);
        let factor = if expr.op == BinaryOperator::Divide {
            // Postgres: division by zero is an error, not an infinite interval.
            let divisor = Expr::Case(datafusion::logical_expr::expr::Case {
                expr: None,
                when_then_expr: vec![(
                    Box::new(factor.clone().eq(datafusion::logical_expr::lit(0.0))),
                    Box::new(datafusion::logical_expr::lit(f64::NAN)),
                )],
                else_expr: Some(Box::new(factor)),
            });
            datafusion::logical_expr::lit(1.0) / divisor
        } else {
            factor
        };
        let call =
            Expr::ScalarFunction(ScalarFunction::new_udf(IntervalMul::udf(), vec![cast(span, INTERVAL), factor]));
        Ok(PlannerResult::Planned(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplies_as_postgres_does() {
        let span = |m, d, n| IntervalMonthDayNano::new(m, d, n);
        // 3 * 1 second
        assert_eq!(multiply(span(0, 0, 1_000_000_000), 3.0), Some(span(0, 0, 3_000_000_000)));
        // 1 month 1 day * 1.5 = 1 month 16 days 12:00 (half a month is 15 days, half a day 12 h)
        assert_eq!(multiply(span(1, 1, 0), 1.5), Some(span(1, 16, 43_200_000_000_000)));
        // 2 hours / 4 = 30 minutes
        assert_eq!(multiply(span(0, 0, 7_200_000_000_000), 0.25), Some(span(0, 0, 1_800_000_000_000)));
        assert_eq!(multiply(span(0, 1, 0), -2.0), Some(span(0, -2, 0)));
        assert_eq!(multiply(span(i32::MAX, 0, 0), 2.0), None);
        assert_eq!(multiply(span(0, 0, 1), f64::INFINITY), None);
    }
}
