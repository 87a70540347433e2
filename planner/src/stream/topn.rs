//! Recognizing top-N shapes in a logical plan.
//!
//! A ranking window (`ROW_NUMBER()`, `RANK()`, `DENSE_RANK()` over `PARTITION BY ... ORDER BY
//! ...`) cannot be maintained on its own — one insert renumbers a whole partition — but a
//! filter bounding its rank (`rn <= 3`, `rn < 4`, `rn = 1`) turns it into a top-N, which can.
//! The filter is found first; the window below it is then planned with the bound. `ORDER BY
//! ... LIMIT n [OFFSET k]` is a top-N over one partition.

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Filter, LogicalPlan, Operator, SortExpr, WindowFunctionDefinition};

use super::RankKind;
use crate::error::{PlanError, Result};

/// The bound a filter puts on the rank column of a window below it: the window node and
/// `(offset, limit)`.
pub fn rank_bound(filter: &Filter) -> Option<(*const LogicalPlan, u64, u64)> {
    let mut best: Option<(*const LogicalPlan, u64, u64)> = None;
    for conjunct in split_conjunction(&filter.predicate) {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else { continue };
        let (column, op, value) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), other) => (c, *op, literal_u64(other)),
            (other, Expr::Column(c)) => (c, op.swap().unwrap_or(*op), literal_u64(other)),
            _ => continue,
        };
        let Some(value) = value else { continue };
        let (offset, limit) = match op {
            Operator::LtEq => (0, value),
            Operator::Lt => (0, value.saturating_sub(1)),
            Operator::Eq if value >= 1 => (value - 1, 1),
            _ => continue,
        };
        let Ok(index) = filter.input.schema().index_of_column(column) else { continue };
        if let Some(window) = window_of_column(&filter.input, index)
            && best.is_none_or(|(_, o, l)| offset + limit < o + l)
        {
            best = Some((window, offset, limit));
        }
    }
    best
}

pub(crate) fn split_conjunction(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
            let mut out = split_conjunction(left);
            out.extend(split_conjunction(right));
            out
        }
        other => vec![other],
    }
}

fn literal_u64(expr: &Expr) -> Option<u64> {
    let Expr::Literal(value, _) = expr else { return None };
    match value {
        ScalarValue::Int8(Some(v)) => u64::try_from(*v).ok(),
        ScalarValue::Int16(Some(v)) => u64::try_from(*v).ok(),
        ScalarValue::Int32(Some(v)) => u64::try_from(*v).ok(),
        ScalarValue::Int64(Some(v)) => u64::try_from(*v).ok(),
        ScalarValue::UInt8(Some(v)) => Some(u64::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(u64::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(u64::from(*v)),
        ScalarValue::UInt64(Some(v)) => Some(*v),
        _ => None,
    }
}

/// Follows column `index` down through aliases, projections and filters to the window that
/// computes it.
fn window_of_column(plan: &LogicalPlan, index: usize) -> Option<*const LogicalPlan> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => window_of_column(&a.input, index),
        LogicalPlan::Filter(f) => window_of_column(&f.input, index),
        LogicalPlan::Projection(p) => {
            let mut expr = p.expr.get(index)?;
            while let Expr::Alias(a) = expr {
                expr = &a.expr;
            }
            let Expr::Column(c) = expr else { return None };
            let inner = p.input.schema().index_of_column(c).ok()?;
            window_of_column(&p.input, inner)
        }
        LogicalPlan::Window(w) => {
            let width = w.input.schema().fields().len();
            (index >= width).then_some(plan as *const LogicalPlan)
        }
        _ => None,
    }
}

/// What a ranking window computes, in column positions of its input.
pub struct RankWindow {
    pub partition: Vec<usize>,
    pub order: Vec<(usize, bool, bool)>,
    pub rank: RankKind,
}

/// Reads the single ranking function of a window node.
///
/// # Errors
/// `Unsupported` when the window holds anything else.
pub fn rank_window(window: &datafusion::logical_expr::Window) -> Result<RankWindow> {
    let [expr] = window.window_expr.as_slice() else {
        return Err(PlanError::unsupported_with_hint(
            "several window functions in one materialized view",
            "a view keeps one ranking (ROW_NUMBER, RANK or DENSE_RANK) bounded by a filter",
        ));
    };
    let mut inner = expr;
    while let Expr::Alias(a) = inner {
        inner = &a.expr;
    }
    let Expr::WindowFunction(function) = inner else {
        return Err(PlanError::Internal(format!("window expression {expr} is not a window function")));
    };
    let WindowFunction { fun, params } = function.as_ref();
    let rank = match fun {
        WindowFunctionDefinition::WindowUDF(udf) => match udf.name() {
            "row_number" => RankKind::RowNumber,
            "rank" => RankKind::Rank,
            "dense_rank" => RankKind::DenseRank,
            other => return Err(not_top_n(other)),
        },
        WindowFunctionDefinition::AggregateUDF(udf) => return Err(not_top_n(udf.name())),
    };
    if params.order_by.is_empty() {
        return Err(PlanError::unsupported_with_hint(
            format!("{rank}() without ORDER BY in a materialized view"),
            "rank rows by something: OVER (PARTITION BY ... ORDER BY ...)",
        ));
    }
    let schema = window.input.schema();
    let column = |e: &Expr| {
        column_index(
            schema,
            e,
            "in PARTITION BY / ORDER BY of a ranking",
            "compute it as a column in a subquery and rank by that column",
        )
    };
    let partition = params.partition_by.iter().map(column).collect::<Result<Vec<_>>>()?;
    let order = sort_columns(&params.order_by, &column)?;
    Ok(RankWindow { partition, order, rank })
}

/// The position of column expression `e` in `schema`; anything but a column is refused,
/// naming where it stood (`place`) and what to write instead (`hint`).
///
/// # Errors
/// `Unsupported` for an expression that is not a column.
pub fn column_index(schema: &DFSchema, e: &Expr, place: &str, hint: &'static str) -> Result<usize> {
    match e {
        Expr::Column(c) => schema.index_of_column(c).map_err(|err| PlanError::Internal(err.to_string())),
        other => Err(PlanError::unsupported_with_hint(
            format!("the expression {other} {place} in a materialized view"),
            hint,
        )),
    }
}

/// `(column, ascending, nulls first)` for each sort expression.
///
/// # Errors
/// When a sort expression is not a column.
pub fn sort_columns(sort: &[SortExpr], column: &dyn Fn(&Expr) -> Result<usize>) -> Result<Vec<(usize, bool, bool)>> {
    sort.iter().map(|s| Ok((column(&s.expr)?, s.asc, s.nulls_first))).collect()
}

fn not_top_n(name: &str) -> PlanError {
    PlanError::unsupported_with_hint(
        format!("the window function {name}() in a materialized view"),
        "views support ROW_NUMBER(), RANK() and DENSE_RANK() filtered by rank (rn <= N), which \
         make a top-N; compute running aggregates with GROUP BY instead",
    )
}
