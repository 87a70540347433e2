//! Evaluating DataFusion expressions over change batches.
//!
//! Streaming operators plan their expressions with DataFusion once, when the actor is built,
//! and evaluate the resulting physical expressions on each batch's rows; weights never enter
//! an expression, so a retraction computes exactly what its insertion computed.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::error::Result;

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct CompiledExpr {
    expr: Arc<dyn PhysicalExpr>,
}

impl CompiledExpr {
    /// # Errors
    /// When DataFusion cannot plan the expression against `schema`.
    pub fn new(expr: &Expr, schema: &DFSchema) -> Result<Self> {
        let props = ExecutionProps::new();
        Ok(Self { expr: create_physical_expr(expr, schema, &props, &PhysicalPlanningContext::default())? })
    }

    /// Evaluates the expression for every row of `batch`.
    ///
    /// # Errors
    /// Evaluation errors such as division by zero or a failing cast.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        Ok(self.expr.evaluate(batch)?.into_array(batch.num_rows())?)
    }
}

/// The Arrow schema of a DataFusion schema with every column nullable, which is what operators
/// emit: nullability is a property of the catalog, not of intermediate streams.
pub fn nullable_schema(schema: &DFSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| Field::new(f.name(), f.data_type().clone(), true)).collect::<Vec<_>>(),
    ))
}
