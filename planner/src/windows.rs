//! Time windows: `TUMBLE`, `HOP` and `SESSION` in `FROM`, and the functions they are made of.
//!
//! Window table functions are rewritten in the SQL tree before DataFusion plans the query:
//! - `TUMBLE(rel, ts, size [, offset])` becomes a projection of `rel` adding
//!   `window_start = tumble_start(ts, size, offset)` and `window_end = window_start + size`;
//! - `HOP(rel, ts, slide, size [, offset])` becomes an `unnest` of `hop_starts(ts, slide, size,
//!   offset)`: one row per window containing `ts`.
//!
//! Both are ordinary expressions, so ad-hoc `SELECT`s compute the same windows as the
//! incremental plans. `tumble_start` is non-decreasing in `ts`, which is how a watermark on
//! `ts` becomes a watermark on `window_start` and closes windows.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, IntervalMonthDayNano, TimeUnit};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, Query, SetExpr, TableAlias, TableFactor, VisitMut,
    VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;

use crate::error::{PlanError, Result};

pub const TUMBLE_START: &str = "tumble_start";
pub const HOP_STARTS: &str = "hop_starts";
pub const HOP_PANES: &str = "hop_panes";
pub const SESSION_START: &str = "session_start";
pub const SESSION_END: &str = "session_end";

/// Nanoseconds in a fixed-length interval; months have no fixed length.
fn interval_nanos(v: &ScalarValue) -> std::result::Result<i64, String> {
    match v {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano { months, days, nanoseconds })) => {
            if *months != 0 {
                return Err("windows measured in months are not supported; use days or smaller units".into());
            }
            Ok(i64::from(*days) * 86_400_000_000_000 + nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Ok(i64::from(v.days) * 86_400_000_000_000 + i64::from(v.milliseconds) * 1_000_000)
        }
        ScalarValue::IntervalYearMonth(Some(_)) => {
            Err("windows measured in months are not supported; use days or smaller units".into())
        }
        ScalarValue::DurationNanosecond(Some(n)) => Ok(*n),
        other if other.is_null() => Err("window sizes must not be NULL".into()),
        other => Err(format!("window sizes must be intervals, not {}", other.data_type())),
    }
}

fn constant_interval(args: &ReturnFieldArgs, i: usize, what: &str) -> DfResult<Option<i64>> {
    match args.scalar_arguments.get(i).copied().flatten() {
        Some(v) => match interval_nanos(v) {
            Ok(n) if n > 0 => Ok(Some(n)),
            Ok(_) => plan_err!("invalid window: the {what} must be positive"),
            Err(e) => plan_err!("invalid window: {e}"),
        },
        None if args.arg_fields.len() > i => Ok(None),
        None => Ok(None),
    }
}

fn check_time_column(args: &ReturnFieldArgs) -> DfResult<DataType> {
    let t = args.arg_fields[0].data_type();
    match t {
        DataType::Timestamp(_, _) => Ok(t.clone()),
        other => plan_err!("invalid window column: windows need a TIMESTAMP column, but it is {other}"),
    }
}

fn units_per_nano(t: &DataType) -> i64 {
    match t {
        DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
        DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
        _ => 1,
    }
}

fn scalar_interval(v: &ColumnarValue) -> DfResult<i64> {
    match v {
        ColumnarValue::Scalar(s) => match interval_nanos(s) {
            Ok(n) => Ok(n),
            Err(e) => exec_err!("invalid window: {e}"),
        },
        ColumnarValue::Array(_) => exec_err!("invalid window: sizes must be constants"),
    }
}

/// Start of the window of `size` (after shifting by `offset`) holding each timestamp.
fn window_start(ts: i64, size: i64, offset: i64) -> i64 {
    ts - (ts - offset).rem_euclid(size)
}

/// `tumble_start(ts, size [, offset])`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TumbleStart {
    signature: Signature,
}

impl Default for TumbleStart {
    fn default() -> Self {
        Self { signature: Signature::one_of(vec![TypeSignature::Any(2), TypeSignature::Any(3)], Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for TumbleStart {
    fn name(&self) -> &str {
        TUMBLE_START
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(arg_types[0].clone())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let t = check_time_column(&args)?;
        constant_interval(&args, 1, "window size")?;
        Ok(Arc::new(Field::new(TUMBLE_START, t, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let t = args.arg_fields[0].data_type().clone();
        let unit = units_per_nano(&t);
        let size = scalar_interval(&args.args[1])? / unit;
        let offset = match args.args.get(2) {
            Some(v) => scalar_interval(v)? / unit,
            None => 0,
        };
        if size <= 0 {
            return exec_err!("invalid window: the window size must be positive");
        }
        let ts = args.args[0].clone().into_array(args.number_rows)?;
        let as_i64 = cast(&ts, &DataType::Int64)?;
        let out: Int64Array =
            as_i64.as_primitive::<datafusion::arrow::datatypes::Int64Type>().unary(|v| window_start(v, size, offset));
        let out: ArrayRef = cast(&(Arc::new(out) as ArrayRef), &t)?;
        Ok(ColumnarValue::Array(out))
    }
}

/// `(ts, slide, size [, offset])`, the arguments of `hop_starts` and `hop_panes`.
fn hop_signature() -> Signature {
    Signature::one_of(vec![TypeSignature::Any(3), TypeSignature::Any(4)], Volatility::Immutable)
}

/// The arguments of a hop function at execution, in the time column's unit.
struct HopArgs {
    time_type: DataType,
    slide: i64,
    size: i64,
    offset: i64,
}

impl HopArgs {
    fn read(args: &ScalarFunctionArgs) -> DfResult<Self> {
        let time_type = args.arg_fields[0].data_type().clone();
        let unit = units_per_nano(&time_type);
        let slide = scalar_interval(&args.args[1])? / unit;
        let size = scalar_interval(&args.args[2])? / unit;
        let offset = match args.args.get(3) {
            Some(v) => scalar_interval(v)? / unit,
            None => 0,
        };
        if slide <= 0 || size <= 0 || slide > size {
            return exec_err!("invalid window: need 0 < slide <= size");
        }
        Ok(Self { time_type, slide, size, offset })
    }
}

/// `hop_starts(ts, slide, size [, offset])`: the starts of every hopping window holding `ts`,
/// latest first.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HopStarts {
    signature: Signature,
}

impl Default for HopStarts {
    fn default() -> Self {
        Self { signature: hop_signature() }
    }
}

impl ScalarUDFImpl for HopStarts {
    fn name(&self) -> &str {
        HOP_STARTS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::List(Arc::new(Field::new("item", arg_types[0].clone(), true))))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let t = check_time_column(&args)?;
        let slide = constant_interval(&args, 1, "hop slide")?;
        let size = constant_interval(&args, 2, "window size")?;
        if let (Some(slide), Some(size)) = (slide, size)
            && slide > size
        {
            return plan_err!("invalid window: the hop slide must not exceed the window size");
        }
        Ok(Arc::new(Field::new(HOP_STARTS, DataType::List(Arc::new(Field::new("item", t, true))), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let HopArgs { time_type: t, slide, size, offset } = HopArgs::read(&args)?;
        let ts = args.args[0].clone().into_array(args.number_rows)?;
        let as_i64 = cast(&ts, &DataType::Int64)?;
        let as_i64 = as_i64.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let per_row = ((size + slide - 1) / slide) as usize;
        let mut values = Vec::with_capacity(as_i64.len() * per_row);
        let mut lengths = Vec::with_capacity(as_i64.len());
        for i in 0..as_i64.len() {
            if as_i64.is_null(i) {
                lengths.push(0);
                continue;
            }
            let v = as_i64.value(i);
            let last = window_start(v, slide, offset);
            let mut n = 0;
            let mut s = last;
            while s > v - size {
                values.push(s);
                n += 1;
                s -= slide;
            }
            lengths.push(n);
        }
        let values: ArrayRef = cast(&(Arc::new(Int64Array::from(values)) as ArrayRef), &t)?;
        let list = ListArray::try_new(
            Arc::new(Field::new("item", t, true)),
            OffsetBuffer::from_lengths(lengths),
            values,
            as_i64.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// `hop_panes(ts, slide, size [, offset])`: a one-element list holding the start of the pane of
/// `ts`, the largest span that no hopping window boundary cuts (`gcd(slide, size)` long). A
/// streaming `HOP` aggregate groups rows by pane first, then adds each pane's partial result to
/// its `size / slide` windows (see `stream::panes`). It keeps the list shape of `hop_starts` so
/// that swapping one for the other leaves the plan around it unchanged.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HopPanes {
    signature: Signature,
}

impl Default for HopPanes {
    fn default() -> Self {
        Self { signature: hop_signature() }
    }
}

/// The pane length of hopping windows: the greatest common divisor of slide and size.
pub fn pane_length(slide: i64, size: i64) -> i64 {
    let (mut a, mut b) = (slide.abs(), size.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl ScalarUDFImpl for HopPanes {
    fn name(&self) -> &str {
        HOP_PANES
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::List(Arc::new(Field::new("item", arg_types[0].clone(), true))))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let t = check_time_column(&args)?;
        Ok(Arc::new(Field::new(HOP_PANES, DataType::List(Arc::new(Field::new("item", t, true))), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let HopArgs { time_type: t, slide, size, offset } = HopArgs::read(&args)?;
        let pane = pane_length(slide, size);
        let ts = args.args[0].clone().into_array(args.number_rows)?;
        let as_i64 = cast(&ts, &DataType::Int64)?;
        let starts: Int64Array =
            as_i64.as_primitive::<datafusion::arrow::datatypes::Int64Type>().unary(|v| window_start(v, pane, offset));
        let values: ArrayRef = cast(&(Arc::new(starts) as ArrayRef), &t)?;
        let list = ListArray::try_new(
            Arc::new(Field::new("item", t, true)),
            OffsetBuffer::from_lengths(std::iter::repeat_n(1, values.len())),
            values.clone(),
            values.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// `session_start(ts, gap)` / `session_end(ts, gap)`: markers for the columns of a `SESSION`
/// window. A session depends on every other row of its key, so no row-wise function can
/// compute it: the streaming planner replaces the aggregate over these markers with a session
/// aggregation, and a batch query that reaches them fails with a clear error.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionMarker {
    name: &'static str,
    signature: Signature,
}

impl SessionMarker {
    fn new(name: &'static str) -> Self {
        Self { name, signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for SessionMarker {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(arg_types[0].clone())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let t = check_time_column(&args)?;
        if constant_interval(&args, 1, "session gap")?.is_none() {
            return plan_err!("invalid window: the session gap must be a constant interval");
        }
        Ok(Arc::new(Field::new(self.name, t, true)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        exec_err!(
            "not supported: SESSION windows in a one-off query; they are maintained by materialized views and sinks"
        )
    }
}

/// The gap (in nanoseconds) of a session marker call, and its time argument.
pub fn session_marker(expr: &datafusion::logical_expr::Expr) -> Option<(bool, datafusion::logical_expr::Expr, i64)> {
    use datafusion::logical_expr::Expr as E;
    let E::ScalarFunction(f) = expr else { return None };
    let is_start = match f.func.name() {
        SESSION_START => true,
        SESSION_END => false,
        _ => return None,
    };
    let gap = match f.args.get(1) {
        Some(E::Literal(v, _)) => interval_nanos(v).ok()?,
        _ => return None,
    };
    Some((is_start, f.args.first()?.clone(), gap))
}

/// The window functions, for registration in a DataFusion context.
pub fn window_udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(TumbleStart::default()),
        ScalarUDF::from(HopStarts::default()),
        ScalarUDF::from(HopPanes::default()),
        ScalarUDF::from(SessionMarker::new(SESSION_START)),
        ScalarUDF::from(SessionMarker::new(SESSION_END)),
    ]
}

/// Rewrites window table functions in `query` (see the module docs).
///
/// # Errors
/// Malformed window calls, or `SESSION` (not supported yet).
pub fn rewrite_window_functions(query: &mut Query) -> Result<()> {
    let mut rewriter = WindowRewriter { error: None };
    let _ = query.visit(&mut rewriter);
    match rewriter.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct WindowRewriter {
    error: Option<PlanError>,
}

impl VisitorMut for WindowRewriter {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> std::ops::ControlFlow<Self::Break> {
        let TableFactor::Table { name, alias, args: Some(args), .. } = factor else {
            return std::ops::ControlFlow::Continue(());
        };
        let fname = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_lowercase()).unwrap_or_default();
        if !matches!(fname.as_str(), "tumble" | "hop" | "session" | "cumulate") {
            return std::ops::ControlFlow::Continue(());
        }
        match window_subquery(&fname, &args.args, alias.clone()) {
            Ok(new_factor) => {
                *factor = new_factor;
                std::ops::ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                std::ops::ControlFlow::Break(())
            }
        }
    }
}

fn arg_expr(arg: &FunctionArg) -> Option<&Expr> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
        FunctionArg::Named { arg: FunctionArgExpr::Expr(e), .. } => Some(e),
        _ => None,
    }
}

fn relation_name(e: &Expr) -> Option<ObjectName> {
    match e {
        Expr::Identifier(i) => Some(ObjectName::from(vec![i.clone()])),
        Expr::CompoundIdentifier(parts) => Some(ObjectName::from(parts.clone())),
        _ => None,
    }
}

fn window_subquery(kind: &str, args: &[FunctionArg], alias: Option<TableAlias>) -> Result<TableFactor> {
    let exprs: Vec<&Expr> = args.iter().filter_map(arg_expr).collect();
    if exprs.len() != args.len() {
        return Err(PlanError::unsupported(format!("named or wildcard arguments to {}", kind.to_uppercase())));
    }
    let usage = match kind {
        "tumble" => "TUMBLE(relation, time_column, size [, offset])",
        "hop" => "HOP(relation, time_column, slide, size [, offset])",
        "session" => "SESSION(relation, time_column, gap)",
        _ => "CUMULATE(relation, time_column, step, size)",
    };
    let arity_ok = match kind {
        "tumble" => (3..=4).contains(&exprs.len()),
        "hop" => (4..=5).contains(&exprs.len()),
        "session" => exprs.len() == 3,
        _ => exprs.len() == 3 || exprs.len() == 4,
    };
    if !arity_ok {
        return Err(PlanError::Parse { message: format!("syntax error: expected {usage}"), position: None });
    }
    let rel = relation_name(exprs[0]).ok_or_else(|| PlanError::Parse {
        message: format!("syntax error: the first argument of {usage} must name a table, source or view"),
        position: None,
    })?;
    let ts = exprs[1].to_string();
    let rel_text = rel.to_string();
    let alias = alias.unwrap_or_else(|| TableAlias {
        explicit: true,
        name: rel.0.last().and_then(|p| p.as_ident()).cloned().unwrap_or_else(|| Ident::new("w")),
        columns: vec![],
        at: None,
    });
    let sql = match kind {
        "tumble" => {
            let size = exprs[2].to_string();
            let start = match exprs.get(3) {
                Some(offset) => format!("{TUMBLE_START}({ts}, {size}, {offset})"),
                None => format!("{TUMBLE_START}({ts}, {size})"),
            };
            format!("SELECT *, {start} AS window_start, {start} + {size} AS window_end FROM {rel_text}")
        }
        "hop" => {
            let slide = exprs[2].to_string();
            let size = exprs[3].to_string();
            let starts = match exprs.get(4) {
                Some(offset) => format!("{HOP_STARTS}({ts}, {slide}, {size}, {offset})"),
                None => format!("{HOP_STARTS}({ts}, {slide}, {size})"),
            };
            format!(
                "SELECT __eddy_hop.*, __eddy_hop.window_start + {size} AS window_end \
                 FROM (SELECT *, unnest({starts}) AS window_start FROM {rel_text}) AS __eddy_hop"
            )
        }
        "session" => {
            let gap = exprs[2].to_string();
            format!(
                "SELECT *, {SESSION_START}({ts}, {gap}) AS window_start, {SESSION_END}({ts}, {gap}) AS window_end FROM {rel_text}"
            )
        }
        other => {
            return Err(PlanError::unsupported_with_hint(
                format!("{} windows", other.to_uppercase()),
                "use TUMBLE, HOP or SESSION windows",
            ));
        }
    };
    let statements = sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, &sql)
        .map_err(|e| PlanError::Internal(format!("window rewrite produced invalid SQL ({e}): {sql}")))?;
    let Some(sqlparser::ast::Statement::Query(subquery)) = statements.into_iter().next() else {
        return Err(PlanError::Internal(format!("window rewrite produced no query: {sql}")));
    };
    if !matches!(subquery.body.as_ref(), SetExpr::Select(_)) {
        return Err(PlanError::Internal("window rewrite produced a non-SELECT".into()));
    }
    Ok(TableFactor::Derived { lateral: false, subquery, alias: Some(alias), sample: None })
}

/// Rewrites Postgres field access `(col).field` into `col['field']`, the form DataFusion
/// plans as a struct field lookup.
pub fn rewrite_field_access<T: VisitMut>(node: &mut T) {
    let _ = sqlparser::ast::visit_expressions_mut(node, |e| {
        if let Expr::CompoundFieldAccess { access_chain, .. } = e {
            for access in access_chain.iter_mut() {
                if let sqlparser::ast::AccessExpr::Dot(Expr::Identifier(ident)) = access {
                    let name = crate::parser::normalize_ident(ident);
                    *access = sqlparser::ast::AccessExpr::Subscript(sqlparser::ast::Subscript::Index {
                        index: Expr::value(sqlparser::ast::Value::SingleQuotedString(name)),
                    });
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{EddyStatement, parse_one};

    fn rewritten(sql: &str) -> String {
        let stmt = parse_one(sql).unwrap_or_else(|e| panic!("{e}"));
        let EddyStatement::Sql(s) = stmt.statement else { panic!("not sql") };
        let sqlparser::ast::Statement::Query(mut q) = *s else { panic!("not a query") };
        rewrite_window_functions(&mut q).unwrap_or_else(|e| panic!("{e}"));
        q.to_string()
    }

    #[test]
    fn tumble_becomes_a_projection() {
        assert_eq!(
            rewritten(
                "SELECT window_start, count(*) FROM TUMBLE(bid, date_time, INTERVAL '1' MINUTE) GROUP BY window_start"
            ),
            "SELECT window_start, count(*) FROM (SELECT *, tumble_start(date_time, INTERVAL '1' MINUTE) AS window_start, \
             tumble_start(date_time, INTERVAL '1' MINUTE) + INTERVAL '1' MINUTE AS window_end FROM bid) AS bid GROUP BY window_start"
        );
    }

    #[test]
    fn window_arithmetic() {
        assert_eq!(window_start(17, 10, 0), 10);
        assert_eq!(window_start(-3, 10, 0), -10);
        assert_eq!(window_start(17, 10, 5), 15);
    }
}
