//! Planning streaming equi-joins.
//!
//! A join keeps both inputs in state, keyed by the join key, and is hash-partitioned on it:
//! the left input is exchanged by its key columns, the right by its own, so matching rows meet
//! in one actor. Key expressions that are not plain columns (a cast DataFusion added to make
//! both sides one type, `a.x + 1 = b.y`) are computed by a projection below the join and
//! dropped by one above it, so the executor only ever sees key columns.

use std::sync::Arc;

use datafusion::common::{Column, DFSchema, DFSchemaRef, JoinType, NullEquality};
use datafusion::logical_expr::{Expr, ExprSchemable, Join};

use super::{StreamNode, StreamNodeKind, StreamProps};
use crate::catalog::Distribution;
use crate::error::{PlanError, Result};
use crate::parser::Lookup;

/// Plans `join` over its already rewritten inputs.
///
/// # Errors
/// `Unsupported` for joins without an equality between the two sides and mark joins.
pub fn join_node(join: &Join, left: StreamNode, right: StreamNode) -> Result<StreamNode> {
    // A join with a side of at most one row (an uncorrelated scalar subquery: `x > (SELECT
    // avg(y) FROM t)`) pairs every row with that row: both sides get the same constant key.
    let one_row_side = at_most_one_row(&left) || at_most_one_row(&right);
    let on: Vec<(Expr, Expr)> = if join.on.is_empty() && one_row_side {
        vec![(datafusion::logical_expr::lit(true), datafusion::logical_expr::lit(true))]
    } else {
        join.on.clone()
    };
    if on.is_empty() {
        return Err(PlanError::unsupported_with_hint(
            "a join without an equality condition between its two sides in a materialized view",
            "every row of one side would have to be kept and compared with every row of the other; \
             join on a key (a.k = b.k), or use a temporal join (FOR SYSTEM_TIME AS OF PROCTIME()) \
             for a lookup",
        ));
    }
    if matches!(join.join_type, JoinType::LeftMark | JoinType::RightMark) {
        return Err(PlanError::unsupported("a mark join (EXISTS inside OR) in a materialized view"));
    }
    for (l, r) in &on {
        check_key(l)?;
        check_key(r)?;
    }
    if let Some(f) = &join.filter
        && f.is_volatile()
    {
        return Err(PlanError::unsupported(format!("volatile join condition {f} in a materialized view")));
    }

    if lookup_of(&left) != Lookup::None {
        return Err(PlanError::unsupported_with_hint(
            "FOR SYSTEM_TIME AS OF on the left side of a join",
            "put the stream first: stream JOIN table FOR SYSTEM_TIME AS OF ... ON ...",
        ));
    }
    let lookup = lookup_of(&right);
    let temporal = lookup != Lookup::None;
    if temporal {
        if !matches!(join.join_type, JoinType::Inner | JoinType::Left) {
            return Err(PlanError::unsupported(format!(
                "{} temporal join; a temporal join is INNER or LEFT",
                join.join_type
            )));
        }
        if !left.props.append_only {
            return Err(PlanError::unsupported_with_hint(
                "a temporal join whose stream side has updates or deletes",
                "a lookup as of processing time cannot be retracted consistently; join an \
                 append-only source or table, or use a regular join, which follows every change",
            ));
        }
    }
    let mut filter = join.filter.clone();
    let versioned = match &lookup {
        Lookup::EventTime(parts) => {
            let time = take_as_of_marker(&mut filter).ok_or_else(|| {
                PlanError::unsupported(format!(
                    "FOR SYSTEM_TIME AS OF {} where the condition could not be kept on the join",
                    parts.join(".")
                ))
            })?;
            Some(versioned_times(&time, &left, &right)?)
        }
        _ => None,
    };
    let left_exprs: Vec<Expr> = on.iter().map(|(l, _)| l.clone()).collect();
    let right_exprs: Vec<Expr> = on.iter().map(|(_, r)| r.clone()).collect();
    let (left, left_keys, left_extra) = with_key_columns(left, &left_exprs, "l")?;
    let (right, right_keys, right_extra) = with_key_columns(right, &right_exprs, "r")?;
    let left_width = left.schema.fields().len();
    if temporal {
        let covered = right.props.unique_key.as_ref().is_some_and(|k| k.iter().all(|c| right_keys.contains(c)));
        if !covered {
            return Err(PlanError::unsupported_with_hint(
                "a temporal join whose condition does not cover the looked-up relation's primary key",
                "look up a table with a PRIMARY KEY (or a materialized view with a unique key) \
                 and join on all of its key columns",
            ));
        }
    }

    let join_type = join.join_type;
    let null_equals_null = join.null_equality == NullEquality::NullEqualsNull;
    let both = left.schema.join(right.schema.as_ref()).map_err(|e| PlanError::Internal(e.to_string()))?;
    let output_schema: DFSchemaRef = match join_type {
        JoinType::LeftSemi | JoinType::LeftAnti => left.schema.clone(),
        JoinType::RightSemi | JoinType::RightAnti => right.schema.clone(),
        _ => Arc::new(both.clone()),
    };

    // State of append-only inputs can be freed once the watermarks pass what the condition
    // still lets match.
    let interval = if temporal || join.null_aware {
        None
    } else {
        interval_bounds(&left_keys, &right_keys, filter.as_ref(), &left, &right)
    };
    if interval.is_none()
        && !temporal
        && (left.props.append_only || right.props.append_only)
        && filter.as_ref().is_some_and(|f| compares_times_across(f, &left, &right))
    {
        return Err(PlanError::unsupported_with_hint(
            "an interval join of a stream without watermarks on the compared time columns",
            "a stream never deletes, so without watermarks every row would be kept forever; declare \
             WATERMARK FOR the time column on both inputs (the join then frees what no new row can \
             match), or join tables",
        ));
    }
    let append_only = if temporal {
        left.props.append_only && join_type == JoinType::Inner
    } else {
        left.props.append_only && right.props.append_only && join_type == JoinType::Inner
    };
    let right_shifted = |cols: &[usize]| cols.iter().map(|c| c + left_width).collect::<Vec<_>>();
    let distribution = match join_type {
        _ if join.null_aware => Distribution::Single,
        JoinType::Inner | JoinType::Left => Distribution::HashBy(left_keys.clone()),
        JoinType::Right => Distribution::HashBy(right_shifted(&right_keys)),
        JoinType::LeftSemi | JoinType::LeftAnti => Distribution::HashBy(left_keys.clone()),
        JoinType::RightSemi | JoinType::RightAnti => Distribution::HashBy(right_keys.clone()),
        _ => Distribution::Arbitrary,
    };
    let unique_key = match join_type {
        JoinType::Inner => match (&left.props.unique_key, &right.props.unique_key) {
            (Some(l), Some(r)) => Some(l.iter().copied().chain(right_shifted(r)).collect()),
            _ => None,
        },
        JoinType::LeftSemi | JoinType::LeftAnti => left.props.unique_key.clone(),
        JoinType::RightSemi | JoinType::RightAnti => right.props.unique_key.clone(),
        _ => None,
    };
    let node = StreamNode {
        kind: StreamNodeKind::Join {
            join_type,
            left_keys,
            right_keys,
            filter,
            null_equals_null,
            filter_schema: Arc::new(both),
            temporal: temporal && versioned.is_none(),
            null_aware: join.null_aware,
            interval,
            versioned,
        },
        schema: output_schema.clone(),
        props: StreamProps {
            append_only,
            unique_key,
            distribution,
            // A stored row of one side can join a new row of the other at any later time, so
            // no output column is bounded by an input's watermark; a temporal join emits only
            // as stream rows arrive, so theirs pass.
            // An event-time temporal join emits a row once both watermarks passed its time,
            // so that column stays bounded.
            watermark_columns: match (&versioned, temporal) {
                (Some(v), _) => vec![v.left_time],
                (None, true) => left.props.watermark_columns.clone(),
                (None, false) => vec![],
            },
            session_columns: vec![],
        },
        inputs: vec![left, right],
    };
    if left_extra == 0 && right_extra == 0 {
        return Ok(node);
    }
    // Drop the computed key columns again.
    let keep: Vec<Expr> = output_schema
        .iter()
        .filter(|(_, f)| !f.name().starts_with(KEY_PREFIX))
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    let schema = Arc::new(
        DFSchema::new_with_metadata(
            output_schema
                .iter()
                .filter(|(_, f)| !f.name().starts_with(KEY_PREFIX))
                .map(|(q, f)| (q.cloned(), f.clone()))
                .collect(),
            Default::default(),
        )
        .map_err(|e| PlanError::Internal(e.to_string()))?,
    );
    super::rewrite::project_node(node, keep, schema)
}

const KEY_PREFIX: &str = "__eddy_join_key";

/// Bounds a join condition puts between the two sides' event times, in the time columns' own
/// unit: `left ≥ right - lower` and `left ≤ right + upper`. With watermarks on both columns they
/// say when a stored row can no longer match anything that may still arrive: interval joins
/// (`a.ts BETWEEN b.ts - X AND b.ts + Y`) and window joins (`a.window_start = b.window_start`,
/// bounds of zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalBounds {
    pub left_time: usize,
    pub right_time: usize,
    pub lower: Option<i64>,
    pub upper: Option<i64>,
    /// Whether each side only inserts. A side with updates or deletes (a windowed aggregate
    /// emitting on update) keeps a row until its own watermark also passes the row's time:
    /// below its watermark it changes no more, so no retraction can reach a freed row.
    pub append_only: [bool; 2],
}

/// Reads the bounds from an equality of the join key between a watermarked left and right
/// column, and from the conjuncts of `filter` that compare a watermarked left time column with a
/// watermarked right one (plus or minus a constant interval).
fn interval_bounds(
    left_keys: &[usize],
    right_keys: &[usize],
    filter: Option<&Expr>,
    left: &StreamNode,
    right: &StreamNode,
) -> Option<IntervalBounds> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let append_only = [left.props.append_only, right.props.append_only];
    let mut found: Option<IntervalBounds> = left_keys
        .iter()
        .zip(right_keys)
        .find(|(l, r)| {
            left.props.watermark_columns.contains(l)
                && right.props.watermark_columns.contains(r)
                && time_unit_ns(left.schema.field(**l).data_type()).is_some()
                && left.schema.field(**l).data_type() == right.schema.field(**r).data_type()
        })
        .map(|(l, r)| IntervalBounds { left_time: *l, right_time: *r, lower: Some(0), upper: Some(0), append_only });
    let conjuncts = filter.map(super::topn::split_conjunction).unwrap_or_default();
    for conjunct in conjuncts {
        let Expr::BinaryExpr(BinaryExpr { left: a, op, right: b }) = conjunct else { continue };
        let (Some((a_side, a_col, a_off)), Some((b_side, b_col, b_off))) =
            (time_term(a, left, right), time_term(b, left, right))
        else {
            continue;
        };
        // Normalize to `l op r + k`.
        let (l_col, r_col, op, k) = match (a_side, b_side) {
            (0, 1) => (a_col, b_col, *op, b_off - a_off),
            (1, 0) => (b_col, a_col, op.swap().unwrap_or(*op), a_off - b_off),
            _ => continue,
        };
        let unit = time_unit_ns(left.schema.field(l_col).data_type())?;
        if time_unit_ns(right.schema.field(r_col).data_type()) != Some(unit) {
            continue;
        }
        let k = k / unit;
        let bounds = found.get_or_insert(IntervalBounds {
            left_time: l_col,
            right_time: r_col,
            lower: None,
            upper: None,
            append_only,
        });
        if bounds.left_time != l_col || bounds.right_time != r_col {
            continue;
        }
        match op {
            Operator::GtEq | Operator::Gt => bounds.lower = Some(bounds.lower.map_or(-k, |x| x.min(-k))),
            Operator::LtEq | Operator::Lt => bounds.upper = Some(bounds.upper.map_or(k, |y| y.min(k))),
            _ => {}
        }
    }
    found.filter(|b| b.lower.is_some() || b.upper.is_some())
}

/// True when a conjunct of `filter` compares a time column of the left side with one of the
/// right side: an interval join.
fn compares_times_across(filter: &Expr, left: &StreamNode, right: &StreamNode) -> bool {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    super::topn::split_conjunction(filter).into_iter().any(|c| match c {
        Expr::BinaryExpr(BinaryExpr {
            left: a,
            op: Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq,
            right: b,
        }) => {
            matches!(
                (any_time_term(a, left, right, false), any_time_term(b, left, right, false)),
                (Some((0, _, _)), Some((1, _, _))) | (Some((1, _, _)), Some((0, _, _)))
            )
        }
        _ => false,
    })
}

/// `col`, `col + interval` or `col - interval` over a watermarked column of either side:
/// (side, column, offset in nanoseconds).
fn time_term(expr: &Expr, left: &StreamNode, right: &StreamNode) -> Option<(usize, usize, i64)> {
    any_time_term(expr, left, right, true)
}

/// [`time_term`] over any timestamp column when `watermarked` is false.
fn any_time_term(expr: &Expr, left: &StreamNode, right: &StreamNode, watermarked: bool) -> Option<(usize, usize, i64)> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    match expr {
        Expr::Column(c) => {
            for (side, node) in [left, right].into_iter().enumerate() {
                if let Ok(i) = node.schema.index_of_column(c)
                    && (node.props.watermark_columns.contains(&i)
                        || (!watermarked && time_unit_ns(node.schema.field(i).data_type()).is_some()))
                {
                    return Some((side, i, 0));
                }
            }
            None
        }
        Expr::BinaryExpr(BinaryExpr { left: a, op: op @ (Operator::Plus | Operator::Minus), right: b }) => {
            let (side, column, offset) = any_time_term(a, left, right, watermarked)?;
            let Expr::Literal(value, _) = b.as_ref() else { return None };
            let nanos = interval_nanos(value)?;
            Some((side, column, if *op == Operator::Plus { offset + nanos } else { offset - nanos }))
        }
        _ => None,
    }
}

fn interval_nanos(value: &datafusion::common::ScalarValue) -> Option<i64> {
    use datafusion::common::ScalarValue;
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000_000_000 + v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * 86_400_000_000_000 + i64::from(v.milliseconds) * 1_000_000)
        }
        _ => None,
    }
}

/// Nanoseconds per unit of a timestamp column.
fn time_unit_ns(data_type: &datafusion::arrow::datatypes::DataType) -> Option<i64> {
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    match data_type {
        DataType::Timestamp(TimeUnit::Second, _) => Some(1_000_000_000),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Some(1_000_000),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Some(1_000),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(1),
        _ => None,
    }
}

/// True when `node` yields at most one row at any time: a global aggregate, seen through
/// filters and projections.
fn at_most_one_row(node: &StreamNode) -> bool {
    match &node.kind {
        StreamNodeKind::Aggregate { group_keys, .. } => group_keys.is_empty(),
        StreamNodeKind::Filter { .. } | StreamNodeKind::Project { .. } => node.input().is_some_and(at_most_one_row),
        _ => false,
    }
}

/// How `node` reads its relation (`FOR SYSTEM_TIME AS OF ...`), through stateless operators
/// only.
fn lookup_of(node: &StreamNode) -> Lookup {
    match &node.kind {
        StreamNodeKind::Scan { lookup, .. } => lookup.clone(),
        StreamNodeKind::Filter { .. } | StreamNodeKind::Project { .. } => node.input().map_or(Lookup::None, lookup_of),
        _ => Lookup::None,
    }
}

/// The time columns of an event-time temporal join: the stream's column named in `AS OF`, and
/// the versioned relation's watermarked column, whose value is when each version starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionedTimes {
    pub left_time: usize,
    pub right_time: usize,
}

/// The marker `rewrite_as_of_conditions` put into the condition of an event-time temporal
/// join. It only carries the stream's time column to the planner; evaluated (in a one-off
/// query) it is true.
#[derive(Debug, PartialEq, Eq, Hash)]
struct AsOfMarker {
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for AsOfMarker {
    fn name(&self) -> &str {
        crate::parser::AS_OF_FUNCTION
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _arg_types: &[datafusion::arrow::datatypes::DataType],
    ) -> datafusion::common::Result<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        _args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        Ok(datafusion::logical_expr::ColumnarValue::Scalar(datafusion::common::ScalarValue::Boolean(Some(true))))
    }
}

/// The scalar function behind [`crate::parser::AS_OF_FUNCTION`], to register with the session.
pub fn as_of_marker_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::from(AsOfMarker {
        signature: datafusion::logical_expr::Signature::any(2, datafusion::logical_expr::Volatility::Immutable),
    })
}

/// Removes the `AS OF` marker conjunct from `filter`, returning the stream's time column and
/// the versioned side's.
fn take_as_of_marker(filter: &mut Option<Expr>) -> Option<(Column, Column)> {
    let conjuncts: Vec<Expr> =
        filter.as_ref().map(|f| super::topn::split_conjunction(f).into_iter().cloned().collect())?;
    let mut time = None;
    let rest: Vec<Expr> = conjuncts
        .into_iter()
        .filter(|c| {
            if let Expr::ScalarFunction(f) = c
                && f.func.name() == crate::parser::AS_OF_FUNCTION
                && let [Expr::Column(stream), Expr::Column(version)] = f.args.as_slice()
            {
                time = Some((stream.clone(), version.clone()));
                return false;
            }
            true
        })
        .collect();
    *filter = rest.into_iter().reduce(Expr::and);
    time
}

fn versioned_times(columns: &(Column, Column), left: &StreamNode, right: &StreamNode) -> Result<VersionedTimes> {
    let (column, version) = columns;
    let left_time = left.schema.index_of_column(column).map_err(|_| {
        PlanError::unsupported_with_hint(
            format!("FOR SYSTEM_TIME AS OF {column}: not a column of the stream side of the join"),
            "write FOR SYSTEM_TIME AS OF PROCTIME(), or the stream's event-time column (s.ts)",
        )
    })?;
    if !left.props.watermark_columns.contains(&left_time) {
        return Err(PlanError::unsupported_with_hint(
            format!("FOR SYSTEM_TIME AS OF {column} without a watermark on {column}"),
            "declare WATERMARK FOR the column on the stream's source or table: the join waits for \
             the watermark before it picks a version, and frees old versions behind it",
        ));
    }
    let right_time = right.schema.index_of_column(version).ok().filter(|c| right.props.watermark_columns.contains(c));
    let Some(right_time) = right_time else {
        return Err(PlanError::unsupported_with_hint(
            "an event-time temporal join against a relation without a watermark",
            "the looked-up table must be versioned: give it a PRIMARY KEY and a WATERMARK FOR \
             the column that says when each version starts",
        ));
    };
    let (lt, rt) = (left.schema.field(left_time).data_type(), right.schema.field(right_time).data_type());
    if lt != rt {
        return Err(PlanError::unsupported(format!(
            "FOR SYSTEM_TIME AS OF {column}: the stream's time is {lt} but the versions' time is {rt}; cast \
             one to the other's type in a view"
        )));
    }
    Ok(VersionedTimes { left_time, right_time })
}

fn check_key(expr: &Expr) -> Result<()> {
    if expr.is_volatile() {
        return Err(PlanError::unsupported(format!("volatile join key {expr} in a materialized view")));
    }
    Ok(())
}

/// Positions of the key columns of `exprs` in `input`, appending a projection for the keys
/// that are not plain columns. Returns the (possibly projected) input, the key positions and
/// how many columns were appended.
fn with_key_columns(input: StreamNode, exprs: &[Expr], side: &str) -> Result<(StreamNode, Vec<usize>, usize)> {
    let direct: Vec<Option<usize>> = exprs
        .iter()
        .map(|e| match e {
            Expr::Column(c) => input.schema.index_of_column(c).ok(),
            _ => None,
        })
        .collect();
    if direct.iter().all(Option::is_some) {
        return Ok((input, direct.into_iter().flatten().collect(), 0));
    }
    let width = input.schema.fields().len();
    let mut projection: Vec<Expr> =
        input.schema.iter().map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name()))).collect();
    let mut fields: Vec<_> = input.schema.iter().map(|(q, f)| (q.cloned(), f.clone())).collect();
    let mut keys = Vec::new();
    let mut extra = 0;
    for (i, (e, d)) in exprs.iter().zip(&direct).enumerate() {
        match d {
            Some(c) => keys.push(*c),
            None => {
                let name = format!("{KEY_PREFIX}_{side}{i}");
                let (_, field) =
                    e.to_field(input.schema.as_ref()).map_err(|err| PlanError::Internal(err.to_string()))?;
                projection.push(e.clone().alias(&name));
                fields.push((
                    None,
                    Arc::new(datafusion::arrow::datatypes::Field::new(
                        &name,
                        field.data_type().clone(),
                        field.is_nullable(),
                    )),
                ));
                keys.push(width + extra);
                extra += 1;
            }
        }
    }
    let schema = Arc::new(
        DFSchema::new_with_metadata(fields, Default::default()).map_err(|e| PlanError::Internal(e.to_string()))?,
    );
    let projected = super::rewrite::project_node(input, projection, schema)?;
    Ok((projected, keys, extra))
}
