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

/// Plans `join` over its already rewritten inputs.
///
/// # Errors
/// `Unsupported` for joins without an equality between the two sides and mark joins.
pub fn join_node(join: &Join, left: StreamNode, right: StreamNode) -> Result<StreamNode> {
    if join.on.is_empty() {
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
    for (l, r) in &join.on {
        check_key(l)?;
        check_key(r)?;
    }
    if let Some(f) = &join.filter
        && f.is_volatile()
    {
        return Err(PlanError::unsupported(format!("volatile join condition {f} in a materialized view")));
    }

    if is_lookup(&left) {
        return Err(PlanError::unsupported_with_hint(
            "FOR SYSTEM_TIME AS OF PROCTIME() on the left side of a join",
            "put the stream first: stream JOIN table FOR SYSTEM_TIME AS OF PROCTIME() ON ...",
        ));
    }
    let temporal = is_lookup(&right);
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
    let left_exprs: Vec<Expr> = join.on.iter().map(|(l, _)| l.clone()).collect();
    let right_exprs: Vec<Expr> = join.on.iter().map(|(_, r)| r.clone()).collect();
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
            filter: join.filter.clone(),
            null_equals_null,
            filter_schema: Arc::new(both),
            temporal,
            null_aware: join.null_aware,
        },
        schema: output_schema.clone(),
        props: StreamProps {
            append_only,
            unique_key,
            distribution,
            // A stored row of one side can join a new row of the other at any later time, so
            // no output column is bounded by an input's watermark; a temporal join emits only
            // as stream rows arrive, so theirs pass.
            watermark_columns: if temporal { left.props.watermark_columns.clone() } else { vec![] },
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

/// True when `node` reads a relation `FOR SYSTEM_TIME AS OF PROCTIME()`, through stateless
/// operators only.
fn is_lookup(node: &StreamNode) -> bool {
    match &node.kind {
        StreamNodeKind::Scan { lookup, .. } => *lookup,
        StreamNodeKind::Filter { .. } | StreamNodeKind::Project { .. } => node.input().is_some_and(is_lookup),
        _ => false,
    }
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
