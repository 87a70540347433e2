//! `SELECT`: planned and run by DataFusion over one consistent snapshot of the store.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;
use eddy_planner::names::output_names;
use sqlparser::ast::{Query, Statement};

use crate::engine::Engine;
use crate::error::Result;
use crate::session::StatementResult;

/// The result schema of a planned query, under Postgres column names.
pub fn result_schema(query: &Query, plan: &LogicalPlan) -> SchemaRef {
    let names = output_names(query, plan.schema());
    Arc::new(Schema::new(
        plan.schema()
            .fields()
            .iter()
            .zip(names)
            .map(|(f, n)| Field::new(n, f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Runs a query and collects its rows.
///
/// # Errors
/// Planning and execution errors.
pub async fn select(
    engine: &Arc<Engine>,
    query: &Query,
    statement: &Statement,
    params: Option<&ParamValues>,
) -> Result<StatementResult> {
    if let Some(answer) = crate::point_read::try_answer(engine, query, params)? {
        return Ok(answer);
    }
    let state = engine.snapshot_state()?;
    let mut plan = engine.plan(&state, statement).await?;
    if let Some(params) = params {
        plan = plan.replace_params_with_values(params)?;
    }
    let schema = result_schema(query, &plan);
    let batches = DataFrame::new(state, plan).collect().await?;
    let batches = batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| datafusion::arrow::array::RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::error::ServerError::DataFusion(e.into()))?;
    Ok(StatementResult::Rows { schema, batches })
}
