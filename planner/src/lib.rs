//! Eddy's planner: the SQL dialect ([`parser`]), the catalog model the planner reads
//! ([`catalog`]), and the streaming planner ([`stream`]) that turns a DataFusion logical plan
//! into an [`stream::OperatorGraph`] of incremental operators.
//!
//! The planner never depends on the executor: they meet in the operator graph, which is also
//! what `EXPLAIN` prints.

pub mod catalog;
pub mod error;
pub mod names;
pub mod parser;
pub mod stream;
pub mod types;
pub mod windows;

pub use error::{PlanError, Result};

use datafusion::logical_expr::LogicalPlan;
use eddy_common::ids::ObjectId;

use crate::catalog::RelationResolver;
use crate::stream::{OperatorGraph, StreamPlan};

/// Plans the incremental maintenance of an (optimized) logical plan whose result is stored as
/// relation `relation`.
///
/// # Errors
/// `Unsupported` for queries that cannot be maintained incrementally.
pub fn plan_stream(
    logical: &LogicalPlan,
    resolver: &dyn RelationResolver,
    relation: ObjectId,
    parallelism: usize,
    emit_on_window_close: bool,
    target: &stream::Target,
) -> Result<(StreamPlan, OperatorGraph)> {
    let root = stream::rewrite::rewrite_with(logical, resolver, emit_on_window_close)?;
    let graph = stream::fragment::build_graph(&root, relation, parallelism, target)?;
    Ok((StreamPlan { root, logical: logical.clone() }, graph))
}
