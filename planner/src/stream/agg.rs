//! Aggregate calls the streaming hash aggregation can maintain under retractions.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::expr::AggregateFunction;

use crate::error::{PlanError, Result};

/// The aggregate functions with a retractable implementation.
#[derive(Debug, Clone, PartialEq)]
pub enum AggKind {
    /// `count(*)` / `count(<literal>)`: counts rows.
    CountRows,
    /// `count(x)`: counts non-null values.
    Count,
    Sum,
    Avg,
    Min,
    Max,
    BoolAnd,
    BoolOr,
    /// `string_agg(x, delimiter)`; the delimiter is a constant.
    StringAgg {
        delimiter: String,
    },
    ArrayAgg,
    /// `first_value(x ORDER BY ...)` / `last_value(...)`: the value of the first (last) row in
    /// the call's order; what `DISTINCT ON` becomes.
    FirstValue,
    LastValue,
    /// Variance family: `sample` divides by n-1, `sqrt` takes the root (stddev).
    Variance {
        sample: bool,
        sqrt: bool,
    },
    /// `approx_count_distinct` / `approx_distinct`, computed exactly.
    ApproxCountDistinct,
}

impl AggKind {
    pub fn name(&self) -> &'static str {
        match self {
            AggKind::CountRows => "count",
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Avg => "avg",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::BoolAnd => "bool_and",
            AggKind::BoolOr => "bool_or",
            AggKind::StringAgg { .. } => "string_agg",
            AggKind::ArrayAgg => "array_agg",
            AggKind::FirstValue => "first_value",
            AggKind::LastValue => "last_value",
            AggKind::Variance { sample: true, sqrt: true } => "stddev_samp",
            AggKind::Variance { sample: false, sqrt: true } => "stddev_pop",
            AggKind::Variance { sample: true, sqrt: false } => "var_samp",
            AggKind::Variance { sample: false, sqrt: false } => "var_pop",
            AggKind::ApproxCountDistinct => "approx_count_distinct",
        }
    }
}

/// One aggregate call over columns of the (pre-projected) input.
#[derive(Debug, Clone)]
pub struct AggCall {
    pub kind: AggKind,
    /// Input column of the aggregated value (none for `count(*)`).
    pub arg: Option<usize>,
    pub arg_type: Option<DataType>,
    pub distinct: bool,
    /// Input column of the `FILTER (WHERE ...)` condition.
    pub filter: Option<usize>,
    /// `ORDER BY` inside the call (string_agg / array_agg): input column, ascending, nulls first.
    pub order_by: Vec<(usize, bool, bool)>,
    pub return_type: DataType,
}

impl std::fmt::Display for AggCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind == AggKind::CountRows {
            write!(f, "count(*)")?;
            if let Some(c) = self.filter {
                write!(f, " FILTER (WHERE ${c})")?;
            }
            return Ok(());
        }
        write!(f, "{}(", self.kind.name())?;
        if self.distinct {
            write!(f, "DISTINCT ")?;
        }
        if let Some(a) = self.arg {
            write!(f, "${a}")?;
        }
        if !self.order_by.is_empty() {
            let parts: Vec<String> =
                self.order_by.iter().map(|(c, asc, _)| format!("${c}{}", if *asc { "" } else { " DESC" })).collect();
            write!(f, " ORDER BY {}", parts.join(", "))?;
        }
        write!(f, ")")?;
        if let Some(c) = self.filter {
            write!(f, " FILTER (WHERE ${c})")?;
        }
        Ok(())
    }
}

/// The expressions an aggregate call needs evaluated before grouping: its argument, filter and
/// ordering keys. [`bind_agg_call`] turns the column positions of those into an [`AggCall`].
pub struct AggInputs {
    pub arg: Option<Expr>,
    pub filter: Option<Expr>,
    pub order_by: Vec<(Expr, bool, bool)>,
}

/// Splits an aggregate expression into its function and the inputs to pre-project.
///
/// # Errors
/// `Unsupported` for aggregates without a retractable implementation.
pub fn analyze_agg(expr: &Expr) -> Result<(AggregateFunction, AggKind, AggInputs)> {
    let agg = match unalias(expr) {
        Expr::AggregateFunction(agg) => agg.clone(),
        other => {
            return Err(PlanError::Internal(format!("expected an aggregate call, found {other}")));
        }
    };
    let name = agg.func.name().to_lowercase();
    let params = &agg.params;
    if params.null_treatment.is_some() {
        return Err(PlanError::unsupported("IGNORE/RESPECT NULLS in aggregates"));
    }
    let first = params.args.first().cloned();
    let (kind, arg) = match name.as_str() {
        "count" => {
            let is_rows = match &first {
                None => true,
                Some(Expr::Literal(v, _)) => !v.is_null(),
                _ => false,
            };
            if params.args.len() > 1 {
                return Err(PlanError::unsupported("count with several arguments"));
            }
            if is_rows && !params.distinct { (AggKind::CountRows, None) } else { (AggKind::Count, first) }
        }
        "sum" => (AggKind::Sum, first),
        "avg" | "mean" => (AggKind::Avg, first),
        "min" => (AggKind::Min, first),
        "max" => (AggKind::Max, first),
        "bool_and" | "every" => (AggKind::BoolAnd, first),
        "bool_or" => (AggKind::BoolOr, first),
        "string_agg" => {
            let delimiter = match params.args.get(1) {
                Some(Expr::Literal(ScalarValue::Utf8(Some(s)), _))
                | Some(Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _))
                | Some(Expr::Literal(ScalarValue::Utf8View(Some(s)), _)) => s.clone(),
                Some(Expr::Literal(v, _)) if v.is_null() => String::new(),
                _ => {
                    return Err(PlanError::unsupported_with_hint(
                        "string_agg with a non-constant delimiter",
                        "pass the delimiter as a string literal",
                    ));
                }
            };
            (AggKind::StringAgg { delimiter }, first)
        }
        "array_agg" => (AggKind::ArrayAgg, first),
        "first_value" => (AggKind::FirstValue, first),
        "last_value" => (AggKind::LastValue, first),
        "stddev" | "stddev_samp" => (AggKind::Variance { sample: true, sqrt: true }, first),
        "stddev_pop" => (AggKind::Variance { sample: false, sqrt: true }, first),
        "var" | "variance" | "var_samp" => (AggKind::Variance { sample: true, sqrt: false }, first),
        "var_pop" => (AggKind::Variance { sample: false, sqrt: false }, first),
        "approx_distinct" | "approx_count_distinct" => (AggKind::ApproxCountDistinct, first),
        other => {
            return Err(PlanError::unsupported_with_hint(
                format!("aggregate function {other} in a materialized view"),
                "supported aggregates: count, sum, avg, min, max, bool_and, bool_or, string_agg, \
                 array_agg, first_value, last_value, stddev, variance, approx_count_distinct",
            ));
        }
    };
    let order_by = params.order_by.iter().map(|s| (s.expr.clone(), s.asc, s.nulls_first)).collect::<Vec<_>>();
    if !order_by.is_empty()
        && !matches!(kind, AggKind::StringAgg { .. } | AggKind::ArrayAgg | AggKind::FirstValue | AggKind::LastValue)
    {
        return Err(PlanError::unsupported(format!("ORDER BY inside {}", kind.name())));
    }
    let filter = params.filter.as_deref().cloned();
    Ok((agg, kind, AggInputs { arg, filter, order_by }))
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}
