//! `eddy_catalog`: system views over the running dataflow.
//!
//! - `eddy_catalog.late_rows(job, source, late_rows)`: rows dropped because they arrived behind
//!   the watermark, per view (or sink) and source;
//! - `eddy_catalog.source_splits(job, source, split, rows, bad_records, last_error, finished)`:
//!   what each source split has produced, and the records it skipped because they did not
//!   decode (with the last such error);
//! - `eddy_catalog.sink_rows(sink, rows)`: rows each sink received;
//! - `eddy_catalog.jobs(name, kind, status, error, id, progress, definition)`: every running
//!   graph, whether it failed, and its statement (`SHOW JOBS` reads it);
//! - `eddy_catalog.operator_state(job, actor, position, operator, rows, bytes)`: the in-memory
//!   state of each stateful operator instance (joins, top-N), as of its last barrier;
//! - `eddy_catalog.freshness(p50_ms, p99_ms, samples)`: how long rows read from sources waited
//!   until the epoch holding them was committed (visible), over recent epochs;
//! - `eddy_catalog.memory(limit_bytes, state_bytes, evicted_entries)`: operator state held in
//!   memory by the operators that can evict it, the `--memory-limit`, and how many entries
//!   were evicted to the store so far;
//! - `eddy_catalog.cdc_progress(...)`: each CDC table's reader (see [`crate::cdc`]);
//! - `eddy_catalog.subscriptions(relation, subscribers)`: live `SUBSCRIBE`s per relation.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;
use eddy_common::ids::ObjectId;
use eddy_planner::catalog::RelationKind;

use crate::engine::Engine;

pub const SCHEMA_NAME: &str = "eddy_catalog";

pub const TABLES: &[&str] = &[
    "late_rows",
    "source_splits",
    "sink_rows",
    "jobs",
    "freshness",
    "operator_state",
    "memory",
    "cdc_progress",
    "subscriptions",
];

pub struct SystemSchema {
    engine: std::sync::Weak<Engine>,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSchema").finish_non_exhaustive()
    }
}

impl SystemSchema {
    pub fn new(engine: std::sync::Weak<Engine>) -> Self {
        Self { engine }
    }
}

fn text(values: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

fn table(schema: SchemaRef, columns: Vec<ArrayRef>) -> DfResult<Arc<dyn TableProvider>> {
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(engine) = self.engine.upgrade() else { return Ok(None) };
        let name_of =
            |id: ObjectId| engine.catalog.get_by_id(id).map(|d| d.name.clone()).unwrap_or_else(|| id.to_string());
        let metrics = engine.runtime.metrics().clone();
        match name {
            "late_rows" => {
                let rows = metrics.late_rows();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("job", DataType::Utf8, false),
                    Field::new("source", DataType::Utf8, false),
                    Field::new("late_rows", DataType::Int64, false),
                ]));
                table(
                    schema,
                    vec![
                        text(rows.iter().map(|r| name_of(r.0)).collect()),
                        text(rows.iter().map(|r| name_of(r.1)).collect()),
                        Arc::new(Int64Array::from(rows.iter().map(|r| r.2 as i64).collect::<Vec<_>>())),
                    ],
                )
                .map(Some)
            }
            "source_splits" => {
                let rows = metrics.source_splits();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("job", DataType::Utf8, false),
                    Field::new("source", DataType::Utf8, false),
                    Field::new("split", DataType::Int64, false),
                    Field::new("rows", DataType::Int64, false),
                    Field::new("bad_records", DataType::Int64, false),
                    Field::new("last_error", DataType::Utf8, true),
                    Field::new("finished", DataType::Boolean, false),
                ]));
                table(
                    schema,
                    vec![
                        text(rows.iter().map(|r| name_of(r.job)).collect()),
                        text(rows.iter().map(|r| name_of(r.source)).collect()),
                        Arc::new(Int64Array::from(rows.iter().map(|r| i64::from(r.actor)).collect::<Vec<_>>())),
                        Arc::new(Int64Array::from(rows.iter().map(|r| r.rows as i64).collect::<Vec<_>>())),
                        Arc::new(Int64Array::from(rows.iter().map(|r| r.bad_records as i64).collect::<Vec<_>>())),
                        Arc::new(StringArray::from(rows.iter().map(|r| r.last_error.clone()).collect::<Vec<_>>())),
                        Arc::new(BooleanArray::from(rows.iter().map(|r| r.finished).collect::<Vec<_>>())),
                    ],
                )
                .map(Some)
            }
            "sink_rows" => {
                let rows = metrics.sink_rows();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("sink", DataType::Utf8, false),
                    Field::new("rows", DataType::Int64, false),
                ]));
                table(
                    schema,
                    vec![
                        text(rows.iter().map(|r| name_of(r.0)).collect()),
                        Arc::new(Int64Array::from(rows.iter().map(|r| r.1 as i64).collect::<Vec<_>>())),
                    ],
                )
                .map(Some)
            }
            "jobs" => {
                let status = engine.runtime.status().await.ok().unwrap_or_default();
                let jobs: Vec<_> = engine
                    .catalog
                    .all()
                    .into_iter()
                    .filter(|d| {
                        matches!(d.kind, RelationKind::Table | RelationKind::MaterializedView | RelationKind::Sink)
                    })
                    .collect();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("name", DataType::Utf8, false),
                    Field::new("kind", DataType::Utf8, false),
                    Field::new("status", DataType::Utf8, false),
                    Field::new("error", DataType::Utf8, true),
                    Field::new("id", DataType::Int64, false),
                    Field::new("progress", DataType::Utf8, false),
                    Field::new("definition", DataType::Utf8, false),
                ]));
                let errors: Vec<Option<String>> = jobs.iter().map(|d| status.failed_jobs.get(&d.id).cloned()).collect();
                // A view's or sink's backfill completes before its CREATE returns, so every
                // listed job is past it.
                let progress =
                    errors.iter().map(|e| if e.is_some() { "stopped" } else { "100%" }.to_string()).collect();
                table(
                    schema,
                    vec![
                        text(jobs.iter().map(|d| d.name.clone()).collect()),
                        text(jobs.iter().map(|d| d.kind.sql_name().to_string()).collect()),
                        text(
                            errors.iter().map(|e| if e.is_some() { "failed" } else { "running" }.to_string()).collect(),
                        ),
                        Arc::new(StringArray::from(errors)),
                        Arc::new(Int64Array::from(jobs.iter().map(|d| i64::from(d.id.0)).collect::<Vec<_>>())),
                        text(progress),
                        text(jobs.iter().map(|d| d.definition.clone()).collect()),
                    ],
                )
                .map(Some)
            }
            "operator_state" => {
                let rows = metrics.operator_state();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("job", DataType::Utf8, false),
                    Field::new("actor", DataType::Int64, false),
                    Field::new("position", DataType::Int64, false),
                    Field::new("operator", DataType::Utf8, false),
                    Field::new("rows", DataType::Int64, false),
                    Field::new("bytes", DataType::Int64, false),
                ]));
                let int = |f: &dyn Fn(&eddy_executor::metrics::OperatorState) -> i64| -> ArrayRef {
                    Arc::new(Int64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
                };
                table(
                    schema,
                    vec![
                        text(rows.iter().map(|r| name_of(r.job)).collect()),
                        int(&|r| i64::from(r.actor)),
                        int(&|r| r.position as i64),
                        text(rows.iter().map(|r| r.operator.to_string()).collect()),
                        int(&|r| r.rows as i64),
                        int(&|r| r.bytes as i64),
                    ],
                )
                .map(Some)
            }
            "freshness" => {
                let (p50, p99, n) = metrics.freshness();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("p50_ms", DataType::Float64, false),
                    Field::new("p99_ms", DataType::Float64, false),
                    Field::new("samples", DataType::Int64, false),
                ]));
                table(
                    schema,
                    vec![
                        Arc::new(datafusion::arrow::array::Float64Array::from(vec![p50])),
                        Arc::new(datafusion::arrow::array::Float64Array::from(vec![p99])),
                        Arc::new(Int64Array::from(vec![n as i64])),
                    ],
                )
                .map(Some)
            }
            "memory" => {
                let budget = engine.runtime.memory();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("limit_bytes", DataType::Int64, true),
                    Field::new("state_bytes", DataType::Int64, false),
                    Field::new("evicted_entries", DataType::Int64, false),
                ]));
                table(
                    schema,
                    vec![
                        Arc::new(Int64Array::from(vec![budget.limit().map(|l| l as i64)])),
                        Arc::new(Int64Array::from(vec![budget.used() as i64])),
                        Arc::new(Int64Array::from(vec![budget.evicted_entries() as i64])),
                    ],
                )
                .map(Some)
            }
            "cdc_progress" => crate::cdc::progress_table().map(Some),
            "subscriptions" => {
                let rows = engine.runtime.feed().subscribers();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("relation", DataType::Utf8, false),
                    Field::new("subscribers", DataType::Int64, false),
                ]));
                table(
                    schema,
                    vec![
                        text(rows.iter().map(|r| name_of(r.0)).collect()),
                        Arc::new(Int64Array::from(rows.iter().map(|r| r.1 as i64).collect::<Vec<_>>())),
                    ],
                )
                .map(Some)
            }
            _ => Ok(None),
        }
    }
}
