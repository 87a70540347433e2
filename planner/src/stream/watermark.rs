//! Which expressions carry a watermark through.
//!
//! A watermark on column `c` promises that no later row has `c` below the watermark. An
//! expression that never decreases when `c` grows (and depends on nothing else but constants)
//! inherits the promise: its value at the watermark is a watermark for the expression. That is
//! how event time flows from a source's `date_time` through `tumble_start(date_time, ...)` to
//! a window's `window_start`, where it closes windows.

use datafusion::common::DFSchema;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use crate::windows::{HOP_PANES, HOP_STARTS, TUMBLE_START};

/// The input column `expr` is non-decreasing in, if any.
pub fn monotone_input(expr: &Expr, schema: &DFSchema) -> Option<usize> {
    match expr {
        Expr::Column(c) => schema.index_of_column(c).ok(),
        Expr::Alias(a) => monotone_input(&a.expr, schema),
        Expr::Cast(c) if c.field.data_type().is_temporal() || c.field.data_type().is_numeric() => {
            monotone_input(&c.expr, schema)
        }
        Expr::TryCast(c) if c.field.data_type().is_temporal() => monotone_input(&c.expr, schema),
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Plus | Operator::Minus, right })
            if matches!(right.as_ref(), Expr::Literal(..)) =>
        {
            monotone_input(left, schema)
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Plus, right })
            if matches!(left.as_ref(), Expr::Literal(..)) =>
        {
            monotone_input(right, schema)
        }
        Expr::ScalarFunction(f) => {
            let name = f.func.name();
            let literal_rest =
                |skip: usize| f.args.iter().enumerate().all(|(i, a)| i == skip || matches!(a, Expr::Literal(..)));
            match name {
                n if n == TUMBLE_START || n == HOP_STARTS || n == HOP_PANES => {
                    if literal_rest(0) {
                        f.args.first().and_then(|a| monotone_input(a, schema))
                    } else {
                        None
                    }
                }
                "date_trunc" | "date_bin" => {
                    if literal_rest(1) {
                        f.args.get(1).and_then(|a| monotone_input(a, schema))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}
