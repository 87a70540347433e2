//! From an optimized DataFusion [`LogicalPlan`] to a [`StreamNode`] tree.
//!
//! The rewrite goes bottom-up. Each supported logical node maps to one stream node whose
//! properties are derived from its inputs; anything without an incremental implementation is
//! refused with `Unsupported`, naming the construct, rather than planned into a wrong answer.

use datafusion::common::DFSchema;
use datafusion::logical_expr::expr::Alias;
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, LogicalPlan, Projection};

use super::agg::{AggCall, AggKind, analyze_agg};
use super::{StreamNode, StreamNodeKind, StreamProps};
use crate::catalog::{Distribution, RelationKind, RelationResolver};
use crate::error::{PlanError, Result};

/// Rewrites a plan into a stream; see the module docs.
///
/// # Errors
/// `Unsupported` for constructs that cannot be maintained incrementally.
pub fn rewrite(plan: &LogicalPlan, resolver: &dyn RelationResolver) -> Result<StreamNode> {
    rewrite_with(plan, resolver, false)
}

/// As [`rewrite`]; with `emit_on_close`, windowed aggregates emit each window once, when the
/// watermark closes it (`EMIT ON WINDOW CLOSE`).
///
/// # Errors
/// As [`rewrite`], and when `emit_on_close` is asked of a plan without a windowed aggregate.
pub fn rewrite_with(plan: &LogicalPlan, resolver: &dyn RelationResolver, emit_on_close: bool) -> Result<StreamNode> {
    let mut ctx = Ctx { resolver, emit_on_close, windowed_aggregates: 0, rank_bounds: Vec::new() };
    let node = ctx.rewrite(plan)?;
    if emit_on_close && ctx.windowed_aggregates == 0 {
        return Err(PlanError::unsupported_with_hint(
            "EMIT ON WINDOW CLOSE without a windowed aggregate on a watermarked time column",
            "group by window_start of a TUMBLE or HOP over a source or table with a WATERMARK",
        ));
    }
    Ok(node)
}

struct Ctx<'a> {
    resolver: &'a dyn RelationResolver,
    emit_on_close: bool,
    windowed_aggregates: usize,
    /// Ranking windows bounded by a filter above them: (window node, offset, limit).
    rank_bounds: Vec<(*const LogicalPlan, u64, u64)>,
}

impl Ctx<'_> {
    fn rewrite(&mut self, plan: &LogicalPlan) -> Result<StreamNode> {
        let resolver = self.resolver;
        match plan {
            LogicalPlan::TableScan(scan) => {
                let (name, lookup) = crate::parser::split_lookup(scan.table_name.table());
                let name = name.to_string();
                if let Some(schema) = scan.table_name.schema()
                    && (schema == "pg_catalog" || schema == "information_schema")
                {
                    return Err(PlanError::unsupported(format!("system table {schema}.{name} in a materialized view")));
                }
                let relation = resolver
                    .relation(&name)
                    .ok_or_else(|| PlanError::UnknownObject { kind: "relation", name: name.clone() })?;
                if relation.kind == RelationKind::Sink || relation.kind == RelationKind::View {
                    return Err(PlanError::Internal(format!(
                        "{} {} cannot be scanned directly",
                        relation.kind.sql_name(),
                        relation.name
                    )));
                }
                // Map positions of the full relation to positions of the projected scan.
                let projection = scan.projection.clone();
                let map = |col: usize| -> Option<usize> {
                    match &projection {
                        None => Some(col),
                        Some(p) => p.iter().position(|c| *c == col),
                    }
                };
                let map_all = |cols: &[usize]| -> Option<Vec<usize>> { cols.iter().map(|c| map(*c)).collect() };
                let unique_key = if relation.primary_key.is_empty() { None } else { map_all(&relation.primary_key) };
                let distribution = match &relation.output_distribution {
                    Distribution::HashBy(cols) => {
                        map_all(cols).map(Distribution::HashBy).unwrap_or(Distribution::Arbitrary)
                    }
                    other => other.clone(),
                };
                let watermark_columns = relation.watermark.as_ref().and_then(|w| map(w.column)).into_iter().collect();
                Ok(StreamNode {
                    kind: StreamNodeKind::Scan {
                        relation: relation.id,
                        name: relation.name.clone(),
                        relation_kind: relation.kind,
                        projection,
                        upstream_parallelism: relation.output_parallelism,
                        lookup,
                    },
                    schema: scan.projected_schema.clone(),
                    props: StreamProps {
                        append_only: relation.append_only,
                        unique_key,
                        distribution,
                        watermark_columns,
                        session_columns: vec![],
                    },
                    inputs: vec![],
                })
            }
            LogicalPlan::Filter(filter) => {
                check_deterministic(&filter.predicate)?;
                if let Some(bound) = super::topn::rank_bound(filter) {
                    self.rank_bounds.push(bound);
                }
                let input = self.rewrite(&filter.input)?;
                let props = input.props.clone();
                Ok(StreamNode {
                    kind: StreamNodeKind::Filter { predicate: filter.predicate.clone() },
                    schema: filter.input.schema().clone(),
                    props,
                    inputs: vec![input],
                })
            }
            LogicalPlan::Projection(projection) => {
                for e in &projection.expr {
                    check_deterministic(e)?;
                }
                let input = self.rewrite(&projection.input)?;
                project_node(input, projection.expr.clone(), projection.schema.clone())
            }
            LogicalPlan::SubqueryAlias(alias) => {
                let mut input = self.rewrite(&alias.input)?;
                input.schema = alias.schema.clone();
                Ok(input)
            }
            LogicalPlan::Aggregate(aggregate) => self.rewrite_aggregate(aggregate),
            LogicalPlan::Union(union) => {
                let inputs = union.inputs.iter().map(|i| self.rewrite(i)).collect::<Result<Vec<_>>>()?;
                let append_only = inputs.iter().all(|i| i.props.append_only);
                // A watermark survives a union only where every input has it.
                let watermark_columns = inputs
                    .first()
                    .map(|first| {
                        first
                            .props
                            .watermark_columns
                            .iter()
                            .copied()
                            .filter(|c| inputs.iter().all(|i| i.props.watermark_columns.contains(c)))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(StreamNode {
                    kind: StreamNodeKind::UnionAll,
                    schema: union.schema.clone(),
                    props: StreamProps {
                        append_only,
                        unique_key: None,
                        distribution: Distribution::Arbitrary,
                        watermark_columns,
                        session_columns: vec![],
                    },
                    inputs,
                })
            }
            LogicalPlan::Unnest(unnest) => self.rewrite_unnest(unnest),
            LogicalPlan::Values(values) => Ok(StreamNode {
                kind: StreamNodeKind::Values { rows: values.values.clone() },
                schema: values.schema.clone(),
                props: constant_props(),
                inputs: vec![],
            }),
            LogicalPlan::EmptyRelation(empty) => Ok(StreamNode {
                kind: StreamNodeKind::Values { rows: if empty.produce_one_row { vec![vec![]] } else { vec![] } },
                schema: empty.schema.clone(),
                props: constant_props(),
                inputs: vec![],
            }),
            LogicalPlan::Sort(sort) => match sort.fetch {
                Some(fetch) => self.sort_top_n(sort, 0, fetch as u64),
                // A view is a set; ORDER BY without LIMIT does not change its contents.
                None => self.rewrite(&sort.input),
            },
            LogicalPlan::Limit(limit) => {
                use datafusion::logical_expr::{FetchType, SkipType};
                let skip = match limit.get_skip_type() {
                    Ok(SkipType::Literal(s)) => s as u64,
                    _ => return Err(PlanError::unsupported("a computed OFFSET in a materialized view")),
                };
                let fetch = match limit.get_fetch_type() {
                    Ok(FetchType::Literal(Some(f))) => f as u64,
                    Ok(FetchType::Literal(None)) => u64::MAX - skip,
                    _ => return Err(PlanError::unsupported("a computed LIMIT in a materialized view")),
                };
                match limit.input.as_ref() {
                    LogicalPlan::Sort(sort) => self.sort_top_n(sort, skip, fetch),
                    LogicalPlan::Projection(projection)
                        if matches!(projection.input.as_ref(), LogicalPlan::Sort(_)) =>
                    {
                        let LogicalPlan::Sort(sort) = projection.input.as_ref() else {
                            return Err(PlanError::Internal("sort vanished".into()));
                        };
                        // A projection keeps rows and their order: limit first, project after.
                        let top = self.sort_top_n(sort, skip, fetch)?;
                        project_node(top, projection.expr.clone(), projection.schema.clone())
                    }
                    _ => Err(PlanError::unsupported_with_hint(
                        "LIMIT without ORDER BY in a materialized view",
                        "which rows a bare LIMIT keeps is arbitrary; add ORDER BY to keep the top rows",
                    )),
                }
            }
            LogicalPlan::Window(window) => {
                let me = plan as *const LogicalPlan;
                let Some(&(_, offset, limit)) = self.rank_bounds.iter().find(|(p, _, _)| *p == me) else {
                    return Err(PlanError::unsupported_with_hint(
                        "window functions (OVER) in a materialized view without a bound on their rank",
                        "filter the rank to make a top-N: SELECT * FROM (SELECT ..., ROW_NUMBER() OVER \
                         (PARTITION BY k ORDER BY v DESC) AS rn FROM t) WHERE rn <= 3",
                    ));
                };
                let ranking = super::topn::rank_window(window)?;
                let input = self.rewrite(&window.input)?;
                top_n_node(
                    input,
                    ranking.partition,
                    ranking.order,
                    (offset, limit),
                    ranking.rank,
                    true,
                    window.schema.clone(),
                )
            }
            LogicalPlan::Join(join) => {
                let left = self.rewrite(&join.left)?;
                let right = self.rewrite(&join.right)?;
                super::join::join_node(join, left, right)
            }
            LogicalPlan::Distinct(_) => {
                Err(PlanError::Internal("DISTINCT should have been rewritten into an aggregate".into()))
            }
            LogicalPlan::RecursiveQuery(_) => Err(PlanError::unsupported("recursive queries in a materialized view")),
            other => Err(PlanError::unsupported(format!(
                "{} in a materialized view",
                other.display().to_string().split(':').next().unwrap_or("this plan node")
            ))),
        }
    }
}

impl Ctx<'_> {
    /// `ORDER BY ... LIMIT fetch OFFSET skip`: a top-N over one partition.
    fn sort_top_n(&mut self, sort: &datafusion::logical_expr::Sort, skip: u64, fetch: u64) -> Result<StreamNode> {
        let schema = sort.input.schema().clone();
        let column = |e: &Expr| {
            super::topn::column_index(
                &schema,
                e,
                "in ORDER BY with LIMIT",
                "order by a column: compute the expression in the select list and order by its alias",
            )
        };
        let order = super::topn::sort_columns(&sort.expr, &column)?;
        let input = self.rewrite(&sort.input)?;
        top_n_node(input, vec![], order, (skip, fetch), super::RankKind::RowNumber, false, schema)
    }
}

fn top_n_node(
    input: StreamNode,
    partition: Vec<usize>,
    order: Vec<(usize, bool, bool)>,
    (offset, limit): (u64, u64),
    rank: super::RankKind,
    with_rank: bool,
    schema: datafusion::common::DFSchemaRef,
) -> Result<StreamNode> {
    let width = input.schema.fields().len();
    let unique_key = match (&input.props.unique_key, rank, with_rank) {
        (Some(k), _, _) => Some(k.clone()),
        (None, super::RankKind::RowNumber, true) => Some(partition.iter().copied().chain([width]).collect()),
        _ => None,
    };
    let distribution =
        if partition.is_empty() { Distribution::Single } else { Distribution::HashBy(partition.clone()) };
    Ok(StreamNode {
        kind: StreamNodeKind::TopN { partition, order, limit, offset, rank, with_rank },
        schema,
        props: StreamProps {
            append_only: false,
            unique_key,
            distribution,
            watermark_columns: vec![],
            session_columns: vec![],
        },
        inputs: vec![input],
    })
}

fn constant_props() -> StreamProps {
    StreamProps {
        append_only: true,
        unique_key: None,
        distribution: Distribution::Single,
        watermark_columns: vec![],
        session_columns: vec![],
    }
}

/// Volatile functions (`random()`, `now()`) would make retractions disagree with insertions.
fn check_deterministic(expr: &Expr) -> Result<()> {
    if expr.is_volatile() {
        return Err(PlanError::unsupported_with_hint(
            format!("volatile expression {expr} in a materialized view"),
            "a maintained view must give the same row each time its input is replayed; \
             compute volatile values in the SELECT that reads the view",
        ));
    }
    Ok(())
}

/// Index of an input column that `expr` passes through unchanged.
fn passthrough_column(expr: &Expr, input_schema: &DFSchema) -> Option<usize> {
    match expr {
        Expr::Column(c) => input_schema.index_of_column(c).ok(),
        Expr::Alias(Alias { expr, .. }) => passthrough_column(expr, input_schema),
        _ => None,
    }
}

pub(super) fn project_node(
    input: StreamNode,
    exprs: Vec<Expr>,
    schema: datafusion::common::DFSchemaRef,
) -> Result<StreamNode> {
    // Session markers become the row's time; the columns are remembered as session bounds.
    let mut session_columns = Vec::new();
    let exprs: Vec<Expr> = exprs
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let (inner, name) = match &e {
                Expr::Alias(a) => (a.expr.as_ref(), Some(a.name.clone())),
                other => (other, None),
            };
            if let Some((is_start, ts, gap)) = crate::windows::session_marker(inner) {
                session_columns.push((i, is_start, gap));
                let name = name.unwrap_or_else(|| e.schema_name().to_string());
                return ts.alias(name);
            }
            if let Some(c) = passthrough_column(&e, input.schema.as_ref())
                && let Some((_, is_start, gap)) = input.props.session_columns.iter().find(|(col, _, _)| *col == c)
            {
                session_columns.push((i, *is_start, *gap));
            }
            e
        })
        .collect();
    let sources: Vec<Option<usize>> = exprs.iter().map(|e| passthrough_column(e, input.schema.as_ref())).collect();
    let map = |col: usize| sources.iter().position(|s| *s == Some(col));
    let map_all = |cols: &[usize]| -> Option<Vec<usize>> { cols.iter().map(|c| map(*c)).collect() };
    let unique_key = input.props.unique_key.as_deref().and_then(map_all);
    let distribution = match &input.props.distribution {
        Distribution::HashBy(cols) => map_all(cols).map(Distribution::HashBy).unwrap_or(Distribution::Arbitrary),
        other => other.clone(),
    };
    let watermark_columns = exprs
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            super::watermark::monotone_input(e, input.schema.as_ref())
                .is_some_and(|c| input.props.watermark_columns.contains(&c))
        })
        .map(|(i, _)| i)
        .collect();
    Ok(StreamNode {
        kind: StreamNodeKind::Project { exprs },
        schema,
        props: StreamProps {
            append_only: input.props.append_only,
            unique_key,
            distribution,
            watermark_columns,
            session_columns,
        },
        inputs: vec![input],
    })
}

/// `Aggregate(group exprs, aggregate calls)` becomes a projection computing every grouping key,
/// argument, filter and ordering key, then an aggregation over column positions.
impl Ctx<'_> {
    fn rewrite_aggregate(&mut self, aggregate: &Aggregate) -> Result<StreamNode> {
        match super::panes::split(aggregate)? {
            Some(per_window) => self.rewrite_aggregate_unsplit(&per_window),
            None => self.rewrite_aggregate_unsplit(aggregate),
        }
    }

    fn rewrite_aggregate_unsplit(&mut self, aggregate: &Aggregate) -> Result<StreamNode> {
        for g in &aggregate.group_expr {
            if matches!(g, Expr::GroupingSet(_)) {
                return Err(PlanError::unsupported("GROUPING SETS / ROLLUP / CUBE in a materialized view"));
            }
            check_deterministic(g)?;
        }
        let mut pre_exprs: Vec<Expr> = Vec::new();
        let push = |e: Expr, pre: &mut Vec<Expr>| -> usize {
            let idx = pre.len();
            pre.push(e.alias(format!("__eddy_in{idx}")));
            idx
        };
        let mut group_keys = Vec::new();
        for g in &aggregate.group_expr {
            group_keys.push(push(g.clone(), &mut pre_exprs));
        }
        let mut calls = Vec::new();
        let input_schema = aggregate.input.schema();
        for (i, agg_expr) in aggregate.aggr_expr.iter().enumerate() {
            check_deterministic(agg_expr)?;
            let (_func, kind, inputs) = analyze_agg(agg_expr)?;
            let arg_type = match &inputs.arg {
                Some(a) => Some(a.get_type(input_schema.as_ref())?),
                None => None,
            };
            let arg = inputs.arg.map(|a| push(a, &mut pre_exprs));
            let filter = inputs.filter.map(|f| push(f, &mut pre_exprs));
            let order_by = inputs
                .order_by
                .into_iter()
                .map(|(e, asc, nulls_first)| (push(e, &mut pre_exprs), asc, nulls_first))
                .collect();
            let field = aggregate.schema.field(aggregate.group_expr.len() + i);
            let distinct = match unalias_agg(agg_expr) {
                Some(a) => a.params.distinct,
                None => false,
            };
            calls.push(AggCall {
                kind,
                arg,
                arg_type,
                distinct,
                filter,
                order_by,
                return_type: field.data_type().clone(),
            });
        }
        let projection = Projection::try_new(pre_exprs, aggregate.input.clone())?;
        let pre_schema = projection.schema.clone();
        let input = self.rewrite(&aggregate.input)?;
        let pre = project_node(input, projection.expr, pre_schema)?;
        let group_cols: Vec<usize> = (0..group_keys.len()).collect();
        let sessions: Vec<(usize, bool, i64)> = group_keys
            .iter()
            .enumerate()
            .filter_map(|(pos, k)| {
                pre.props
                    .session_columns
                    .iter()
                    .find(|(c, _, _)| c == k)
                    .map(|(_, is_start, gap)| (pos, *is_start, *gap))
            })
            .collect();
        if !sessions.is_empty() {
            return self.session_aggregate(aggregate, pre, group_keys, calls, sessions);
        }
        let window_key = group_keys.iter().position(|k| pre.props.watermark_columns.contains(k));
        if window_key.is_some() {
            self.windowed_aggregates += 1;
        }
        let emit_on_close = self.emit_on_close && window_key.is_some();
        let distribution =
            if group_cols.is_empty() { Distribution::Single } else { Distribution::HashBy(group_cols.clone()) };
        Ok(StreamNode {
            kind: StreamNodeKind::Aggregate { group_keys, calls, window_key, emit_on_close },
            schema: aggregate.schema.clone(),
            props: StreamProps {
                append_only: emit_on_close,
                unique_key: Some(group_cols),
                distribution,
                watermark_columns: window_key.into_iter().collect(),
                session_columns: vec![],
            },
            inputs: vec![pre],
        })
    }

    /// `GROUP BY keys, window_start[, window_end]` over `SESSION(...)`: sessions per key.
    fn session_aggregate(
        &mut self,
        aggregate: &Aggregate,
        pre: StreamNode,
        group_keys: Vec<usize>,
        calls: Vec<AggCall>,
        sessions: Vec<(usize, bool, i64)>,
    ) -> Result<StreamNode> {
        if !pre.props.append_only {
            return Err(PlanError::unsupported_with_hint(
                "SESSION windows over a stream with updates or deletes",
                "use SESSION windows over a source or an APPEND ONLY table",
            ));
        }
        let gap_ns = sessions[0].2;
        if sessions.iter().any(|(_, _, g)| *g != gap_ns) {
            return Err(PlanError::unsupported("SESSION windows with different gaps in one GROUP BY"));
        }
        for c in &calls {
            let mergeable = matches!(
                c.kind,
                AggKind::CountRows
                    | AggKind::Count
                    | AggKind::Sum
                    | AggKind::Avg
                    | AggKind::Min
                    | AggKind::Max
                    | AggKind::BoolAnd
                    | AggKind::BoolOr
            );
            if !mergeable || c.distinct || !c.order_by.is_empty() {
                return Err(PlanError::unsupported_with_hint(
                    format!("{} over SESSION windows", c),
                    "session windows support count, sum, avg, min, max, bool_and and bool_or",
                ));
            }
        }
        let watermarked = sessions.iter().any(|(pos, _, _)| pre.props.watermark_columns.contains(&group_keys[*pos]));
        if watermarked {
            self.windowed_aggregates += 1;
        }
        let emit_on_close = self.emit_on_close && watermarked;
        let partition: Vec<usize> =
            (0..group_keys.len()).filter(|p| !sessions.iter().any(|(s, _, _)| s == p)).collect();
        let distribution = if partition.is_empty() { Distribution::Single } else { Distribution::HashBy(partition) };
        Ok(StreamNode {
            kind: StreamNodeKind::SessionAggregate {
                group_keys: group_keys.clone(),
                sessions: sessions.iter().map(|(p, is_start, _)| (*p, *is_start)).collect(),
                gap_ns,
                calls,
                emit_on_close,
            },
            schema: aggregate.schema.clone(),
            props: StreamProps {
                append_only: emit_on_close,
                unique_key: Some((0..group_keys.len()).collect()),
                distribution,
                watermark_columns: vec![],
                session_columns: vec![],
            },
            inputs: vec![pre],
        })
    }

    fn rewrite_unnest(&mut self, unnest: &datafusion::logical_expr::Unnest) -> Result<StreamNode> {
        if !unnest.struct_type_columns.is_empty() || unnest.list_type_columns.len() != 1 {
            return Err(PlanError::unsupported("unnest of several columns or of structs in a materialized view"));
        }
        let (list_column, list) = &unnest.list_type_columns[0];
        if list.depth != 1 {
            return Err(PlanError::unsupported("recursive unnest in a materialized view"));
        }
        let input = self.rewrite(&unnest.input)?;
        let dependency = unnest.dependency_indices.clone();
        // Passed-through columns keep their watermark; the unnested column carries the list's.
        let watermark_columns = dependency
            .iter()
            .enumerate()
            .filter(|(_, d)| input.props.watermark_columns.contains(d))
            .map(|(i, _)| i)
            .collect();
        let distribution = match &input.props.distribution {
            Distribution::HashBy(cols) => {
                let mapped: Option<Vec<usize>> = cols
                    .iter()
                    .map(|c| if c == list_column { None } else { dependency.iter().position(|d| d == c) })
                    .collect();
                mapped.map(Distribution::HashBy).unwrap_or(Distribution::Arbitrary)
            }
            other => other.clone(),
        };
        Ok(StreamNode {
            kind: StreamNodeKind::Unnest {
                list_column: *list_column,
                dependency,
                null_handling: unnest.options.null_handling,
            },
            schema: unnest.schema.clone(),
            props: StreamProps {
                append_only: input.props.append_only,
                unique_key: None,
                distribution,
                watermark_columns,
                session_columns: vec![],
            },
            inputs: vec![input],
        })
    }
}

fn unalias_agg(expr: &Expr) -> Option<&datafusion::logical_expr::expr::AggregateFunction> {
    match expr {
        Expr::Alias(a) => unalias_agg(&a.expr),
        Expr::AggregateFunction(f) => Some(f),
        _ => None,
    }
}
