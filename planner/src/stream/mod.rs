//! Streaming plans: what an incremental query is made of, before and after it is cut into
//! fragments of actors.
//!
//! [`rewrite`] turns an optimized DataFusion [`LogicalPlan`] into a tree of [`StreamNode`]s,
//! computing each node's [`StreamProps`] once, when the node is built, and refusing what cannot
//! be maintained incrementally. [`fragment::build_graph`] then cuts the tree at exchanges into
//! an [`OperatorGraph`]: the description the executor instantiates and `EXPLAIN` prints.

pub mod agg;
pub mod fragment;
pub mod join;
pub mod panes;
pub mod rewrite;
pub mod topn;
pub mod watermark;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::{Expr, LogicalPlan};
use eddy_common::ids::ObjectId;

pub use agg::{AggCall, AggKind};
pub use fragment::{Exchange, FragmentInput, FragmentSpec, OperatorGraph, OperatorSpec, Target};

use crate::catalog::{Distribution, RelationKind};

/// Properties of the stream a node produces, fixed when the node is built.
#[derive(Debug, Clone)]
pub struct StreamProps {
    /// Only inserts ever flow (no weight is negative).
    pub append_only: bool,
    /// Columns on which the relation's rows are unique, when known.
    pub unique_key: Option<Vec<usize>>,
    /// How rows are spread over the actors producing them.
    pub distribution: Distribution,
    /// Columns that carry event time with a watermark.
    pub watermark_columns: Vec<usize>,
    /// Columns marking a `SESSION` window: `(column, is window_start, gap in ns)`. They hold
    /// each row's time until a session aggregation turns them into session bounds.
    pub session_columns: Vec<(usize, bool, i64)>,
}

/// A node of a streaming plan.
#[derive(Debug, Clone)]
pub struct StreamNode {
    pub kind: StreamNodeKind,
    pub schema: DFSchemaRef,
    pub props: StreamProps,
    pub inputs: Vec<StreamNode>,
}

#[derive(Debug, Clone)]
pub enum StreamNodeKind {
    /// Reads the changes of a table, materialized view or source.
    Scan {
        relation: ObjectId,
        name: String,
        relation_kind: RelationKind,
        projection: Option<Vec<usize>>,
        /// Actors of the scanned relation; the scan runs with as many, fed one-to-one.
        upstream_parallelism: usize,
        /// Read `FOR SYSTEM_TIME AS OF ...`: the lookup side of a temporal join.
        lookup: crate::parser::Lookup,
    },
    Filter {
        predicate: Expr,
    },
    Project {
        exprs: Vec<Expr>,
    },
    /// Groups by the first `group_keys` input columns.
    /// `window_key` is the position (in `group_keys`) of a key carrying a watermark: groups
    /// below it are closed windows.
    Aggregate {
        group_keys: Vec<usize>,
        calls: Vec<AggCall>,
        window_key: Option<usize>,
        emit_on_close: bool,
    },
    /// Aggregation over session windows: groups by the `group_keys` at the positions not in
    /// `sessions`, assigns rows to sessions by the time in the session columns.
    SessionAggregate {
        group_keys: Vec<usize>,
        /// `(position in group_keys, is window_start)` of the session bound columns.
        sessions: Vec<(usize, bool)>,
        gap_ns: i64,
        calls: Vec<AggCall>,
        emit_on_close: bool,
    },
    /// One output row per element of list column `list_column`; output column `i` comes
    /// from input column `dependency[i]`.
    Unnest {
        list_column: usize,
        dependency: Vec<usize>,
        null_handling: datafusion::common::NullHandling,
    },
    UnionAll,
    /// An equi-join of `inputs[0]` (left) and `inputs[1]` (right) on `left_keys[i] =
    /// right_keys[i]`, with an optional residual `filter` over `filter_schema` (left columns
    /// then right columns).
    Join {
        join_type: datafusion::common::JoinType,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        filter: Option<Expr>,
        null_equals_null: bool,
        filter_schema: DFSchemaRef,
        /// A temporal join: left rows look up the right side's current rows and are not
        /// kept; right changes only update the lookup state.
        temporal: bool,
        /// An anti join with `NOT IN` semantics: no row when the right side holds a NULL key,
        /// every row when it is empty.
        null_aware: bool,
        /// Event-time bounds between the sides (an interval join), which free state.
        interval: Option<join::IntervalBounds>,
        /// An event-time temporal join (`FOR SYSTEM_TIME AS OF left.ts`) against a versioned
        /// right side.
        versioned: Option<join::VersionedTimes>,
    },
    /// The first `limit` ranks (after `offset`) of each partition, ordered by `order`
    /// (`(column, ascending, nulls first)`); with `with_rank`, the rank is appended as the last
    /// column.
    TopN {
        partition: Vec<usize>,
        order: Vec<(usize, bool, bool)>,
        limit: u64,
        offset: u64,
        rank: RankKind,
        with_rank: bool,
    },
    /// Constant rows, emitted once.
    Values {
        rows: Vec<Vec<Expr>>,
    },
}

/// How a top-N numbers its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankKind {
    RowNumber,
    Rank,
    DenseRank,
}

impl std::fmt::Display for RankKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RankKind::RowNumber => "row_number",
            RankKind::Rank => "rank",
            RankKind::DenseRank => "dense_rank",
        })
    }
}

impl StreamNode {
    pub fn input(&self) -> Option<&StreamNode> {
        self.inputs.first()
    }

    pub fn output_types(&self) -> Vec<DataType> {
        self.schema.fields().iter().map(|f| f.data_type().clone()).collect()
    }
}

/// The plan of a materialized view (or sink): the stream and how to store it.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub root: StreamNode,
    /// The optimized logical plan it came from, kept for `EXPLAIN`.
    pub logical: LogicalPlan,
}
