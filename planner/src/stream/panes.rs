//! Pane pre-aggregation for `HOP` windows.
//!
//! A row falls into `size / slide` hopping windows, so aggregating every copy costs that many
//! times a tumbling window. Instead the rows are first aggregated per pane, the stretch of time
//! no window boundary cuts (`gcd(slide, size)` long), and each pane's partial result, a handful
//! of rows per epoch, is then added to the windows covering it. That takes aggregates whose
//! partials combine: count, sum, min, max, bool_and and bool_or. Other aggregates, and shapes
//! this module does not recognize, keep the plan with one copy per window.
//!
//! Panes close when the watermark passes their end. Rows reaching an aggregate are never below
//! its watermark (the watermark filter drops them at the source), and every window covering an
//! open pane ends after it, so closing a pane never loses a row an open window still needs.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::functions_aggregate::expr_fn::{bool_and, bool_or, max, min, sum};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, Projection, ScalarUDF};

use crate::error::Result;
use crate::stream::agg::{AggKind, analyze_agg};
use crate::windows::{HOP_STARTS, HopPanes};

/// Column of the per-pane plan holding the start of each window a pane belongs to.
const PANE_WINDOWS: &str = "__eddy_pane_windows";

/// Where a group key of the original aggregate comes from in the combining one.
enum KeySource {
    /// A key not depending on the window: grouped per pane already, at this position.
    Pane(usize),
    /// A key computed from the window start (an expression over the unnested column).
    Window(Expr),
}

/// Splits `aggregate`, grouped by the windows of a `HOP`, into an aggregate per pane and one
/// combining panes per window, with the same output schema. `None` when the shape does not
/// allow it: the caller keeps the aggregate as it is.
///
/// # Errors
/// When the rebuilt plan fails to type-check (a bug here, not in the query).
pub fn split(aggregate: &Aggregate) -> Result<Option<Aggregate>> {
    let mut combiners: Vec<fn(Expr) -> Expr> = Vec::new();
    let mut call_inputs: Vec<Expr> = Vec::new();
    for e in &aggregate.aggr_expr {
        let Ok((func, kind, inputs)) = analyze_agg(e) else { return Ok(None) };
        if func.params.distinct || !inputs.order_by.is_empty() {
            return Ok(None);
        }
        combiners.push(match kind {
            AggKind::CountRows | AggKind::Count | AggKind::Sum => sum,
            AggKind::Min => min,
            AggKind::Max => max,
            AggKind::BoolAnd => bool_and,
            AggKind::BoolOr => bool_or,
            _ => return Ok(None),
        });
        call_inputs.extend(inputs.arg);
        call_inputs.extend(inputs.filter);
    }

    // Projections (and aliases) down to the unnest of `hop_starts(...)`.
    let mut chain: Vec<&LogicalPlan> = Vec::new();
    let mut node = aggregate.input.as_ref();
    let unnest = loop {
        match node {
            LogicalPlan::Projection(p) => {
                chain.push(node);
                node = p.input.as_ref();
            }
            LogicalPlan::SubqueryAlias(a) => {
                chain.push(node);
                node = a.input.as_ref();
            }
            LogicalPlan::Unnest(u) => break u,
            _ => return Ok(None),
        }
    };
    let unnest_plan = node;
    let [(list_input, list)] = unnest.list_type_columns.as_slice() else { return Ok(None) };
    if list.depth != 1 || !unnest.struct_type_columns.is_empty() {
        return Ok(None);
    }
    let LogicalPlan::Projection(windows) = unnest.input.as_ref() else { return Ok(None) };
    let Some(list_expr) = windows.expr.get(*list_input) else { return Ok(None) };
    let Expr::ScalarFunction(hop) = unalias(list_expr) else { return Ok(None) };
    if hop.func.name() != HOP_STARTS
        || hop.args.len() < 3
        || !hop.args[1..].iter().all(|a| matches!(a, Expr::Literal(..)))
        || hop.args[1] == hop.args[2]
    {
        return Ok(None);
    }
    let Some(window_output) = unnest.dependency_indices.iter().position(|d| d == list_input) else {
        return Ok(None);
    };
    let window_column = Column::from(unnest.schema.qualified_field(window_output));

    // The aggregate must group by the window start itself, and aggregate nothing derived from it.
    let input_schema = aggregate.input.schema();
    let Some(window_key) = (0..input_schema.fields().len()).find(|j| {
        inline(&column_at(input_schema, *j), &chain).is_some_and(|e| e == Expr::Column(window_column.clone()))
    }) else {
        return Ok(None);
    };
    let depends = |e: &Expr| e.column_refs().contains(&window_column);
    for e in &call_inputs {
        match inline(e, &chain) {
            Some(e) if !depends(&e) => {}
            _ => return Ok(None),
        }
    }
    let mut pane_keys: Vec<Expr> = Vec::new();
    let mut key_sources = Vec::new();
    for g in &aggregate.group_expr {
        let Some(inlined) = inline(g, &chain) else { return Ok(None) };
        if depends(&inlined) {
            if inlined.column_refs().len() != 1 {
                return Ok(None);
            }
            key_sources.push(KeySource::Window(inlined));
        } else {
            key_sources.push(KeySource::Pane(pane_keys.len()));
            pane_keys.push(g.clone());
        }
    }
    let pane_column = pane_keys.len();
    pane_keys.push(column_at(input_schema, window_key));

    // Per pane: the same input, with each row in its one pane instead of in all its windows.
    let panes_expr = list_expr
        .clone()
        .transform(|e| match e {
            Expr::ScalarFunction(f) if f.func.name() == HOP_STARTS => Ok(Transformed::yes(Expr::ScalarFunction(
                ScalarFunction::new_udf(Arc::new(ScalarUDF::from(HopPanes::default())), f.args),
            ))),
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let mut exprs = windows.expr.clone();
    exprs[*list_input] = panes_expr;
    let mut input = LogicalPlan::Projection(Projection::try_new(exprs, windows.input.clone())?);
    input = unnest_plan.with_new_exprs(unnest_plan.expressions(), vec![input])?;
    for n in chain.iter().rev() {
        input = n.with_new_exprs(n.expressions(), vec![input])?;
    }
    let partial = Aggregate::try_new(Arc::new(input), pane_keys, aggregate.aggr_expr.clone())?;
    let partial_schema = partial.schema.clone();

    // Each pane row once per window covering it.
    let mut exprs: Vec<Expr> = (0..partial_schema.fields().len()).map(|i| column_at(&partial_schema, i)).collect();
    let mut hop_args = hop.args.clone();
    hop_args[0] = column_at(&partial_schema, pane_column);
    exprs.push(Expr::ScalarFunction(ScalarFunction::new_udf(hop.func.clone(), hop_args)).alias(PANE_WINDOWS));
    let with_windows = Projection::try_new(exprs, Arc::new(LogicalPlan::Aggregate(partial)))?;
    let unnested =
        LogicalPlanBuilder::from(LogicalPlan::Projection(with_windows)).unnest_column(PANE_WINDOWS)?.build()?;
    let unnested_schema = unnested.schema().clone();
    let window = column_at(&unnested_schema, partial_schema.fields().len());

    // The original keys and the partial results, combined per window.
    let mut exprs = Vec::new();
    for (i, source) in key_sources.iter().enumerate() {
        let e = match source {
            KeySource::Pane(p) => column_at(&unnested_schema, *p),
            KeySource::Window(e) => {
                e.clone()
                    .transform(|x| match x {
                        Expr::Column(c) if c == window_column => Ok(Transformed::yes(window.clone())),
                        other => Ok(Transformed::no(other)),
                    })?
                    .data
            }
        };
        exprs.push(e.alias(format!("__eddy_pane_key{i}")));
    }
    let partials = pane_column + 1;
    for k in 0..combiners.len() {
        exprs.push(column_at(&unnested_schema, partials + k).alias(format!("__eddy_pane_partial{k}")));
    }
    let keyed = Projection::try_new(exprs, Arc::new(unnested))?;
    let keyed_schema = keyed.schema.clone();
    let group_expr = (0..key_sources.len()).map(|i| column_at(&keyed_schema, i)).collect();
    let aggr_expr = combiners
        .iter()
        .enumerate()
        .map(|(k, combine)| combine(column_at(&keyed_schema, key_sources.len() + k)))
        .collect();
    Ok(Some(Aggregate::try_new_with_schema(
        Arc::new(LogicalPlan::Projection(keyed)),
        group_expr,
        aggr_expr,
        aggregate.schema.clone(),
    )?))
}

fn column_at(schema: &DFSchema, i: usize) -> Expr {
    Expr::Column(Column::from(schema.qualified_field(i)))
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

/// `expr` over the output of `chain[0]`, rewritten over the input of its last node by
/// substituting each projection's expressions. `None` when a column cannot be resolved.
fn inline(expr: &Expr, chain: &[&LogicalPlan]) -> Option<Expr> {
    let mut expr = expr.clone();
    for node in chain {
        expr = expr
            .transform(|e| {
                let Expr::Column(c) = &e else { return Ok(Transformed::no(e)) };
                let replaced = match node {
                    LogicalPlan::Projection(p) => unalias(&p.expr[p.schema.index_of_column(c)?]).clone(),
                    LogicalPlan::SubqueryAlias(a) => column_at(a.input.schema(), a.schema.index_of_column(c)?),
                    _ => e.clone(),
                };
                Ok(Transformed::yes(replaced))
            })
            .ok()?
            .data;
    }
    Some(expr)
}
