//! Cutting a stream plan into fragments: chains of operators run by a set of parallel actors,
//! joined by exchanges.
//!
//! A new fragment starts where rows must move between actors: before an aggregation whose
//! groups are not already held together by one actor, at a union of several inputs, and at
//! each scan (which is fed by the scanned relation's actors). Stateless operators and the final
//! materialization join the fragment of their input.

use std::fmt::Write as _;

use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::Expr;
use eddy_common::ids::ObjectId;

use super::agg::AggCall;
use super::{StreamNode, StreamNodeKind};
use crate::catalog::{Distribution, RelationKind, StorageLayout};
use crate::error::{PlanError, Result};

/// How rows travel from the actors of one fragment to those of the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// Actor `i` sends to actor `i`; both sides have the same parallelism.
    Forward,
    /// Rows go to the actor chosen by hashing these columns.
    Hash(Vec<usize>),
    /// Everything goes to the single downstream actor.
    Single,
}

/// Where a fragment's input comes from.
#[derive(Debug, Clone)]
pub enum FragmentInput {
    /// The change stream of a stored relation (table or materialized view), preceded by a
    /// backfill of its contents. Forward from the relation's actors.
    Relation { id: ObjectId, name: String },
    /// A source's connector, one split per actor, read by this graph alone.
    Source { id: ObjectId, name: String },
    /// Another fragment of the same graph.
    Fragment { fragment: usize, exchange: Exchange },
}

/// One operator of a fragment's chain.
#[derive(Debug, Clone)]
pub enum OperatorSpec {
    /// Applies the scan's projection to the relation's rows; on a backfilled relation this is
    /// where the snapshot enters the stream.
    Scan {
        relation: ObjectId,
        name: String,
        relation_kind: RelationKind,
        projection: Option<Vec<usize>>,
        schema: DFSchemaRef,
    },
    Filter {
        predicate: Expr,
        input_schema: DFSchemaRef,
    },
    Project {
        exprs: Vec<Expr>,
        input_schema: DFSchemaRef,
        schema: DFSchemaRef,
    },
    HashAgg {
        group_keys: Vec<usize>,
        calls: Vec<AggCall>,
        input_schema: DFSchemaRef,
        schema: DFSchemaRef,
        append_only_input: bool,
        /// Position in `group_keys` of the window key that watermarks close.
        window_key: Option<usize>,
        /// Emit each window once, when it closes.
        emit_on_close: bool,
    },
    SessionAgg {
        group_keys: Vec<usize>,
        sessions: Vec<(usize, bool)>,
        gap_ns: i64,
        calls: Vec<AggCall>,
        input_schema: DFSchemaRef,
        schema: DFSchemaRef,
        emit_on_close: bool,
    },
    Unnest {
        list_column: usize,
        dependency: Vec<usize>,
        null_handling: datafusion::common::NullHandling,
        input_schema: DFSchemaRef,
        schema: DFSchemaRef,
    },
    /// Merges `inputs` streams of the same shape.
    Union {
        inputs: usize,
        schema: DFSchemaRef,
    },
    /// Joins input 0 (left) and input 1 (right), both partitioned on their keys.
    Join {
        join_type: datafusion::common::JoinType,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        filter: Option<Expr>,
        null_equals_null: bool,
        left_schema: DFSchemaRef,
        right_schema: DFSchemaRef,
        filter_schema: DFSchemaRef,
        schema: DFSchemaRef,
        /// Left rows look up the right side's current rows and are not kept.
        temporal: bool,
        /// `NOT IN (subquery)` semantics for an anti join.
        null_aware: bool,
        /// Event-time bounds between the sides: stored rows are dropped once watermarks pass.
        interval: Option<super::join::IntervalBounds>,
        /// An event-time temporal join against a versioned right side.
        versioned: Option<super::join::VersionedTimes>,
    },
    /// The first ranks of each partition, recomputed for changed partitions at barriers.
    TopN {
        partition: Vec<usize>,
        order: Vec<(usize, bool, bool)>,
        limit: u64,
        offset: u64,
        rank: super::RankKind,
        with_rank: bool,
        append_only_input: bool,
        input_schema: DFSchemaRef,
        schema: DFSchemaRef,
    },
    /// Emits constant rows once, at the first barrier.
    Values {
        rows: Vec<Vec<Expr>>,
        schema: DFSchemaRef,
    },
    /// Stores the stream as a relation and forwards it to downstream relations.
    Materialize {
        relation: ObjectId,
        layout: StorageLayout,
        schema: DFSchemaRef,
    },
    /// Sends the stream out of Eddy.
    Sink {
        sink: ObjectId,
        connector: String,
        options: Vec<(String, String)>,
        schema: DFSchemaRef,
    },
}

impl OperatorSpec {
    pub fn name(&self) -> &'static str {
        match self {
            OperatorSpec::Scan { .. } => "Scan",
            OperatorSpec::Filter { .. } => "Filter",
            OperatorSpec::Project { .. } => "Project",
            OperatorSpec::HashAgg { .. } => "HashAgg",
            OperatorSpec::Unnest { .. } => "Unnest",
            OperatorSpec::SessionAgg { .. } => "SessionAgg",
            OperatorSpec::Union { .. } => "Union",
            OperatorSpec::Join { .. } => "HashJoin",
            OperatorSpec::TopN { .. } => "TopN",
            OperatorSpec::Values { .. } => "Values",
            OperatorSpec::Materialize { .. } => "Materialize",
            OperatorSpec::Sink { .. } => "Sink",
        }
    }
}

/// A chain of operators and the actors that run it.
#[derive(Debug, Clone)]
pub struct FragmentSpec {
    pub id: usize,
    pub parallelism: usize,
    /// Input `i` of the first operator comes from `inputs[i]`.
    pub inputs: Vec<FragmentInput>,
    pub chain: Vec<OperatorSpec>,
}

/// The fragments of one materialized view, inputs before the fragments that read them; the
/// last fragment holds the `Materialize`.
#[derive(Debug, Clone)]
pub struct OperatorGraph {
    pub fragments: Vec<FragmentSpec>,
    /// How the stored result is spread over the last fragment's actors.
    pub output_distribution: Distribution,
    pub layout: StorageLayout,
    /// The unique key of the result, if any.
    pub unique_key: Option<Vec<usize>>,
    pub append_only: bool,
}

impl OperatorGraph {
    pub fn output_parallelism(&self) -> usize {
        self.fragments.last().map(|f| f.parallelism).unwrap_or(1)
    }

    /// The relations this graph reads.
    pub fn upstream_relations(&self) -> Vec<ObjectId> {
        let mut out = Vec::new();
        for f in &self.fragments {
            for i in &f.inputs {
                if let FragmentInput::Relation { id, .. } | FragmentInput::Source { id, .. } = i
                    && !out.contains(id)
                {
                    out.push(*id);
                }
            }
        }
        out
    }

    /// The text `EXPLAIN` prints: one block per fragment, its chain top-down.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        for f in self.fragments.iter().rev() {
            let _ = writeln!(out, "Fragment {} (parallelism {})", f.id, f.parallelism);
            for op in f.chain.iter().rev() {
                let _ = writeln!(out, "  {}", describe(op));
            }
            for input in &f.inputs {
                match input {
                    FragmentInput::Relation { name, .. } => {
                        let _ = writeln!(out, "  <- relation {name} (backfill, then changes)");
                    }
                    FragmentInput::Source { name, .. } => {
                        let _ = writeln!(out, "  <- source {name} (one split per actor)");
                    }
                    FragmentInput::Fragment { fragment, exchange } => {
                        let how = match exchange {
                            Exchange::Forward => "forward".to_string(),
                            Exchange::Hash(cols) => format!("hash {}", cols_text(cols)),
                            Exchange::Single => "single".to_string(),
                        };
                        let _ = writeln!(out, "  <- fragment {fragment} ({how})");
                    }
                }
            }
        }
        out
    }
}

fn cols_text(cols: &[usize]) -> String {
    let parts: Vec<String> = cols.iter().map(|c| format!("${c}")).collect();
    format!("[{}]", parts.join(", "))
}

fn describe(op: &OperatorSpec) -> String {
    match op {
        OperatorSpec::Scan { name, projection, relation_kind, .. } => match projection {
            Some(p) => format!("Scan {} {name} columns {}", relation_kind.sql_name(), cols_text(p)),
            None => format!("Scan {} {name}", relation_kind.sql_name()),
        },
        OperatorSpec::Filter { predicate, .. } => format!("Filter {predicate}"),
        OperatorSpec::Project { exprs, .. } => {
            let parts: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
            format!("Project {}", parts.join(", "))
        }
        OperatorSpec::HashAgg { group_keys, calls, append_only_input, window_key, emit_on_close, .. } => {
            let parts: Vec<String> = calls.iter().map(|c| c.to_string()).collect();
            let window = match (window_key, emit_on_close) {
                (Some(k), true) => format!(" window ${} emit on close", group_keys[*k]),
                (Some(k), false) => format!(" window ${} (closed windows freed)", group_keys[*k]),
                _ => String::new(),
            };
            format!(
                "HashAgg group {} aggs [{}]{}{} state: per-group accumulators",
                cols_text(group_keys),
                parts.join(", "),
                window,
                if *append_only_input { " (append-only input)" } else { "" }
            )
        }
        OperatorSpec::Unnest { list_column, .. } => format!("Unnest ${list_column}"),
        OperatorSpec::SessionAgg { group_keys, sessions, gap_ns, calls, emit_on_close, .. } => {
            let parts: Vec<String> = calls.iter().map(|c| c.to_string()).collect();
            let keys: Vec<usize> = group_keys
                .iter()
                .enumerate()
                .filter(|(p, _)| !sessions.iter().any(|(s, _)| s == p))
                .map(|(_, k)| *k)
                .collect();
            format!(
                "SessionAgg keys {} gap {}ms aggs [{}]{} state: open sessions per key",
                cols_text(&keys),
                gap_ns / 1_000_000,
                parts.join(", "),
                if *emit_on_close { " emit on close" } else { "" }
            )
        }
        OperatorSpec::Union { inputs, .. } => format!("Union {inputs} inputs"),
        OperatorSpec::TopN { partition, order, limit, offset, rank, append_only_input, .. } => {
            let order: Vec<String> = order
                .iter()
                .map(|(c, asc, nulls_first)| {
                    format!(
                        "${c} {}{}",
                        if *asc { "asc" } else { "desc" },
                        if *nulls_first { " nulls first" } else { "" }
                    )
                })
                .collect();
            format!(
                "TopN partition {} order [{}] {rank} <= {limit}{} state: {}",
                cols_text(partition),
                order.join(", "),
                if *offset > 0 { format!(" offset {offset}") } else { String::new() },
                if *append_only_input { "top rows per partition" } else { "all rows per partition, ordered" }
            )
        }
        OperatorSpec::Join { join_type, left_keys, right_keys, filter, temporal, interval, versioned, .. } => {
            let condition = match filter {
                Some(f) => format!(" filter {f}"),
                None => String::new(),
            };
            if let Some(v) = versioned {
                format!(
                    "TemporalJoin {join_type} left {} = right {}{condition} (version of right valid at left ${}, \
                     versions starting at right ${}) state: versions by join key, freed behind the watermarks; \
                     left rows until the right watermark passes them",
                    cols_text(left_keys),
                    cols_text(right_keys),
                    v.left_time,
                    v.right_time
                )
            } else if *temporal {
                format!(
                    "TemporalJoin {join_type} left {} = right {}{condition} (lookup as of processing time) \
                     state: right side's rows by join key",
                    cols_text(left_keys),
                    cols_text(right_keys)
                )
            } else {
                let freed = match interval {
                    Some(b) => format!(", freed as watermarks pass left ${} / right ${}", b.left_time, b.right_time),
                    None => String::new(),
                };
                format!(
                    "HashJoin {join_type} left {} = right {}{condition} state: both sides' rows by join key{freed}",
                    cols_text(left_keys),
                    cols_text(right_keys)
                )
            }
        }
        OperatorSpec::Values { rows, .. } => format!("Values {} rows", rows.len()),
        OperatorSpec::Sink { connector, .. } => format!("Sink {connector}"),
        OperatorSpec::Materialize { layout, .. } => match layout {
            StorageLayout::Keyed { key } => format!("Materialize keyed by {}", cols_text(key)),
            StorageLayout::Counted => "Materialize as multiset (row -> count)".to_string(),
        },
    }
}

/// Where the result of a graph goes.
#[derive(Debug, Clone)]
pub enum Target {
    Materialize,
    Sink { connector: String, options: Vec<(String, String)> },
}

/// Builds the operator graph of a materialized view (or sink) from its stream plan.
///
/// # Errors
/// `Internal` on a malformed plan.
pub fn build_graph(
    root: &StreamNode,
    relation: ObjectId,
    parallelism: usize,
    target: &Target,
) -> Result<OperatorGraph> {
    let mut builder = Builder { fragments: Vec::new(), parallelism: parallelism.max(1) };
    let mut top = builder.place(root)?;
    let layout = match (&root.props.unique_key, &root.props.distribution) {
        (Some(key), Distribution::Single) => StorageLayout::Keyed { key: key.clone() },
        (Some(key), Distribution::HashBy(h)) if !h.is_empty() && h.iter().all(|c| key.contains(c)) => {
            StorageLayout::Keyed { key: key.clone() }
        }
        _ => StorageLayout::Counted,
    };
    // An external sink of updates must see each key's changes in order, so they come from
    // one actor unless the stream is already spread by its key.
    if let Target::Sink { connector, .. } = target
        && connector != "blackhole"
        && !root.props.append_only
        && layout == StorageLayout::Counted
    {
        top = builder.on_one_actor(top);
    }
    builder.fragments[top].chain.push(match target {
        Target::Materialize => {
            OperatorSpec::Materialize { relation, layout: layout.clone(), schema: root.schema.clone() }
        }
        Target::Sink { connector, options } => OperatorSpec::Sink {
            sink: relation,
            connector: connector.clone(),
            options: options.clone(),
            schema: root.schema.clone(),
        },
    });
    // Fragments are created children-first, so the root's fragment is already last unless a
    // later sibling was placed after it; move it to the end to keep the documented order.
    if top != builder.fragments.len() - 1 {
        return Err(PlanError::Internal("root fragment is not the last one".into()));
    }
    Ok(OperatorGraph {
        fragments: builder.fragments,
        output_distribution: root.props.distribution.clone(),
        layout,
        unique_key: root.props.unique_key.clone(),
        append_only: root.props.append_only,
    })
}

struct Builder {
    fragments: Vec<FragmentSpec>,
    parallelism: usize,
}

impl Builder {
    fn new_fragment(&mut self, parallelism: usize, inputs: Vec<FragmentInput>) -> usize {
        let id = self.fragments.len();
        self.fragments.push(FragmentSpec { id, parallelism, inputs, chain: Vec::new() });
        id
    }

    /// `child` itself when it runs on one actor, else a new single-actor fragment fed by it.
    fn on_one_actor(&mut self, child: usize) -> usize {
        if self.fragments[child].parallelism == 1 {
            child
        } else {
            self.new_fragment(1, vec![FragmentInput::Fragment { fragment: child, exchange: Exchange::Single }])
        }
    }

    /// Places `node` and its inputs; returns the fragment whose chain ends with `node`.
    fn place(&mut self, node: &StreamNode) -> Result<usize> {
        match &node.kind {
            StreamNodeKind::Scan { relation, name, relation_kind, projection, upstream_parallelism, .. } => {
                let input = if *relation_kind == RelationKind::Source {
                    FragmentInput::Source { id: *relation, name: name.clone() }
                } else {
                    FragmentInput::Relation { id: *relation, name: name.clone() }
                };
                let f = self.new_fragment((*upstream_parallelism).max(1), vec![input]);
                self.fragments[f].chain.push(OperatorSpec::Scan {
                    relation: *relation,
                    name: name.clone(),
                    relation_kind: *relation_kind,
                    projection: projection.clone(),
                    schema: node.schema.clone(),
                });
                Ok(f)
            }
            StreamNodeKind::Filter { predicate } => {
                let input = single_input(node)?;
                let f = self.place(input)?;
                self.fragments[f]
                    .chain
                    .push(OperatorSpec::Filter { predicate: predicate.clone(), input_schema: input.schema.clone() });
                Ok(f)
            }
            StreamNodeKind::Project { exprs } => {
                let input = single_input(node)?;
                let f = self.place(input)?;
                self.fragments[f].chain.push(OperatorSpec::Project {
                    exprs: exprs.clone(),
                    input_schema: input.schema.clone(),
                    schema: node.schema.clone(),
                });
                Ok(f)
            }
            StreamNodeKind::SessionAggregate { group_keys, sessions, gap_ns, calls, emit_on_close } => {
                let input = single_input(node)?;
                let child = self.place(input)?;
                let partition: Vec<usize> = group_keys
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| !sessions.iter().any(|(s, _)| s == p))
                    .map(|(_, k)| *k)
                    .collect();
                let f = if partition.is_empty() {
                    self.on_one_actor(child)
                } else {
                    let p = self.parallelism;
                    self.new_fragment(
                        p,
                        vec![FragmentInput::Fragment { fragment: child, exchange: Exchange::Hash(partition) }],
                    )
                };
                self.fragments[f].chain.push(OperatorSpec::SessionAgg {
                    group_keys: group_keys.clone(),
                    sessions: sessions.clone(),
                    gap_ns: *gap_ns,
                    calls: calls.clone(),
                    input_schema: input.schema.clone(),
                    schema: node.schema.clone(),
                    emit_on_close: *emit_on_close,
                });
                Ok(f)
            }
            StreamNodeKind::Unnest { list_column, dependency, null_handling } => {
                let input = single_input(node)?;
                let f = self.place(input)?;
                self.fragments[f].chain.push(OperatorSpec::Unnest {
                    list_column: *list_column,
                    dependency: dependency.clone(),
                    null_handling: *null_handling,
                    input_schema: input.schema.clone(),
                    schema: node.schema.clone(),
                });
                Ok(f)
            }
            StreamNodeKind::Aggregate { group_keys, calls, window_key, emit_on_close } => {
                let input = single_input(node)?;
                let child = self.place(input)?;
                let already_grouped = match &input.props.distribution {
                    // One actor already sees every group; spreading keyed groups over more actors
                    // is still worth an exchange.
                    Distribution::Single => group_keys.is_empty() && self.fragments[child].parallelism == 1,
                    Distribution::HashBy(h) => {
                        !group_keys.is_empty() && !h.is_empty() && h.iter().all(|c| group_keys.contains(c))
                    }
                    Distribution::Arbitrary => false,
                };
                let f = if already_grouped {
                    child
                } else if group_keys.is_empty() {
                    self.new_fragment(1, vec![FragmentInput::Fragment { fragment: child, exchange: Exchange::Single }])
                } else {
                    let p = self.parallelism;
                    self.new_fragment(
                        p,
                        vec![FragmentInput::Fragment { fragment: child, exchange: Exchange::Hash(group_keys.clone()) }],
                    )
                };
                self.fragments[f].chain.push(OperatorSpec::HashAgg {
                    group_keys: group_keys.clone(),
                    calls: calls.clone(),
                    input_schema: input.schema.clone(),
                    schema: node.schema.clone(),
                    append_only_input: input.props.append_only,
                    window_key: *window_key,
                    emit_on_close: *emit_on_close,
                });
                Ok(f)
            }
            StreamNodeKind::UnionAll => {
                let mut children = Vec::new();
                for input in &node.inputs {
                    children.push(self.place(input)?);
                }
                let p = self.parallelism;
                let all_columns: Vec<usize> = (0..node.schema.fields().len()).collect();
                let inputs = children
                    .iter()
                    .map(|c| {
                        let exchange = if self.fragments[*c].parallelism == p {
                            Exchange::Forward
                        } else {
                            Exchange::Hash(all_columns.clone())
                        };
                        FragmentInput::Fragment { fragment: *c, exchange }
                    })
                    .collect();
                let f = self.new_fragment(p, inputs);
                self.fragments[f]
                    .chain
                    .push(OperatorSpec::Union { inputs: node.inputs.len(), schema: node.schema.clone() });
                Ok(f)
            }
            StreamNodeKind::Join {
                join_type,
                left_keys,
                right_keys,
                filter,
                null_equals_null,
                filter_schema,
                temporal,
                null_aware,
                interval,
                versioned,
            } => {
                let [left, right] = node.inputs.as_slice() else {
                    return Err(PlanError::Internal("join without two inputs".into()));
                };
                let l = self.place(left)?;
                let r = self.place(right)?;
                // NOT IN depends on the whole subquery (is it empty, does it hold a NULL), which
                // no single partition of it can tell.
                let (p, left_exchange, right_exchange) = if *null_aware {
                    (1, Exchange::Single, Exchange::Single)
                } else {
                    (self.parallelism, Exchange::Hash(left_keys.clone()), Exchange::Hash(right_keys.clone()))
                };
                let f = self.new_fragment(
                    p,
                    vec![
                        FragmentInput::Fragment { fragment: l, exchange: left_exchange },
                        FragmentInput::Fragment { fragment: r, exchange: right_exchange },
                    ],
                );
                self.fragments[f].chain.push(OperatorSpec::Join {
                    join_type: *join_type,
                    left_keys: left_keys.clone(),
                    right_keys: right_keys.clone(),
                    filter: filter.clone(),
                    null_equals_null: *null_equals_null,
                    left_schema: left.schema.clone(),
                    right_schema: right.schema.clone(),
                    filter_schema: filter_schema.clone(),
                    schema: node.schema.clone(),
                    temporal: *temporal,
                    null_aware: *null_aware,
                    interval: *interval,
                    versioned: *versioned,
                });
                Ok(f)
            }
            StreamNodeKind::TopN { partition, order, limit, offset, rank, with_rank } => {
                let input = single_input(node)?;
                let child = self.place(input)?;
                let f = if partition.is_empty() {
                    self.on_one_actor(child)
                } else {
                    let grouped = matches!(&input.props.distribution, Distribution::HashBy(h)
                        if !h.is_empty() && h.iter().all(|c| partition.contains(c)));
                    if grouped {
                        child
                    } else {
                        let p = self.parallelism;
                        self.new_fragment(
                            p,
                            vec![FragmentInput::Fragment {
                                fragment: child,
                                exchange: Exchange::Hash(partition.clone()),
                            }],
                        )
                    }
                };
                self.fragments[f].chain.push(OperatorSpec::TopN {
                    partition: partition.clone(),
                    order: order.clone(),
                    limit: *limit,
                    offset: *offset,
                    rank: *rank,
                    with_rank: *with_rank,
                    append_only_input: input.props.append_only,
                    input_schema: input.schema.clone(),
                    schema: node.schema.clone(),
                });
                Ok(f)
            }
            StreamNodeKind::Values { rows } => {
                let f = self.new_fragment(1, vec![]);
                self.fragments[f].chain.push(OperatorSpec::Values { rows: rows.clone(), schema: node.schema.clone() });
                Ok(f)
            }
        }
    }
}

fn single_input(node: &StreamNode) -> Result<&StreamNode> {
    node.input().ok_or_else(|| PlanError::Internal("operator without input".into()))
}
