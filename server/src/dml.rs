//! `INSERT`, `UPDATE`, `DELETE` on tables.
//!
//! DataFusion plans each statement; Eddy runs the part that reads (the `VALUES`/`SELECT` of an
//! insert, the rows an update or delete matches) against the committed table, checks the
//! table's constraints, and sends the resulting changes into the table's actor: inserts as
//! `+1`, deletes as `-1`, updates as adjacent `-old, +new`. The statement returns once the
//! epoch holding its changes is durably committed, so its effect is visible to the next
//! statement in every view. Statements on one table take turns; an `INSERT` lets the next
//! one in once its rows are sent, so concurrent inserts share one commit (see
//! [`eddy_executor::runtime::PendingInserts`]).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{Column, ParamValues};
use datafusion::logical_expr::{DmlStatement, Expr, LogicalPlan, WriteOp};
use datafusion::prelude::DataFrame;
use eddy_common::{ChangeBatch, SqlState};
use eddy_executor::ExecError;
use eddy_executor::store::{RowCodec, Snapshot};
use eddy_planner::catalog::{RelationDef, RelationKind, StorageLayout};
use sqlparser::ast::Statement;

use crate::engine::Engine;
use crate::error::{Result, ServerError};
use crate::session::StatementResult;

/// Runs one DML statement.
///
/// # Errors
/// Constraint violations (23505, 23502), writes to something that is not a table, planning and
/// evaluation errors. A failing statement changes nothing.
pub async fn execute(
    engine: &Arc<Engine>,
    statement: &Statement,
    params: Option<&ParamValues>,
) -> Result<StatementResult> {
    if let Statement::Insert(insert) = statement {
        if insert.returning.is_some() {
            return Err(ServerError::unsupported("INSERT ... RETURNING"));
        }
        if insert.on.is_some() {
            return Err(ServerError::with_hint(
                SqlState::FeatureNotSupported,
                "not supported: INSERT ... ON CONFLICT",
                "delete the conflicting rows first, or UPDATE them",
            ));
        }
    }
    let state = engine.state(None);
    let mut plan = engine.plan(&state, statement).await?;
    if let Some(params) = params {
        plan = plan.replace_params_with_values(params)?;
    }
    let LogicalPlan::Dml(dml) = plan else {
        return Err(ServerError::new(SqlState::Internal, "DML did not plan as DML"));
    };
    let name = dml.table_name.table().to_string();
    let def = engine
        .catalog
        .get(&name)
        .ok_or_else(|| ServerError::new(SqlState::UndefinedTable, format!("relation \"{name}\" does not exist")))?;
    if def.kind != RelationKind::Table {
        return Err(ServerError::with_hint(
            SqlState::WrongObjectType,
            format!("cannot change {} \"{}\"", def.kind.sql_name(), def.name),
            "only tables take INSERT, UPDATE and DELETE; materialized views follow their inputs",
        ));
    }
    let lock = engine.runtime.table_lock(def.id)?;
    let pending = engine.runtime.pending_inserts(def.id)?;
    let guard = lock.lock().await;
    let is_insert = matches!(dml.op, WriteOp::Insert(_));
    if !is_insert {
        // It reads rows: every insert sent before it must be committed first.
        pending.drained().await;
    }
    let snapshot = engine.runtime.snapshot()?;
    let state = engine.state(Some(snapshot.clone()));
    let codec = RowCodec::new(def.schema.clone(), def.storage.clone().unwrap_or(StorageLayout::Counted))?;
    let (changes, tag, count) = match &dml.op {
        WriteOp::Insert(_) => {
            let rows = run(&state, dml.input.as_ref().clone(), &def.schema).await?;
            check_not_null(&def, &rows)?;
            let n = rows.num_rows();
            if n == 0 {
                return Ok(StatementResult::Command { tag: "INSERT 0".into(), rows: Some(0) });
            }
            let keys = if codec.counted() { Vec::new() } else { codec.encode_keys(&rows)? };
            // Checked against keys in flight and, under the same lock, a fresh snapshot.
            pending.check_and_add(&keys, |in_flight| {
                let committed = engine.runtime.snapshot()?;
                check_new_keys(&def, &keys, &committed, &rows, &HashSet::new(), in_flight)
            })?;
            let sent = engine.runtime.write_table(def.id, ChangeBatch::inserts(rows)).await;
            drop(guard);
            // The commit and the key release run to the end even when the client goes away
            // meanwhile: the rows are sent, and their keys must stay checked until committed.
            let runtime = engine.runtime.clone();
            let committed = tokio::spawn(async move {
                let result = match sent {
                    Ok(()) => runtime.flush().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                pending.remove(&keys);
                result
            })
            .await
            .map_err(|e| ServerError::new(SqlState::Internal, format!("insert commit task: {e}")))?;
            committed?;
            return Ok(StatementResult::Command { tag: "INSERT 0".into(), rows: Some(n) });
        }
        WriteOp::Delete => {
            let rows = run(&state, dml.input.as_ref().clone(), &def.schema).await?;
            let n = rows.num_rows();
            (ChangeBatch::deletes(rows), "DELETE", n)
        }
        WriteOp::Update => {
            let (old, new) = run_update(&state, &dml, &def.schema).await?;
            check_not_null(&def, &new)?;
            let old_keys: HashSet<Vec<u8>> =
                if codec.counted() { HashSet::new() } else { codec.encode_keys(&old)?.into_iter().collect() };
            let new_keys = if codec.counted() { Vec::new() } else { codec.encode_keys(&new)? };
            check_new_keys(&def, &new_keys, &snapshot, &new, &old_keys, &|_| false)?;
            let n = old.num_rows();
            (interleave_update(&def.schema, &old, &new)?, "UPDATE", n)
        }
        other => return Err(ServerError::unsupported(format!("{other}"))),
    };
    if count > 0 {
        engine.runtime.write_table(def.id, changes).await?;
        engine.runtime.flush().await?;
    }
    drop(guard);
    Ok(StatementResult::Command { tag: tag.to_string(), rows: Some(count) })
}

/// Runs `plan` and returns its rows as one batch in `schema`.
async fn run(
    state: &datafusion::execution::context::SessionState,
    plan: LogicalPlan,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let batches = DataFrame::new(state.clone(), plan).collect().await?;
    conform(batches, schema)
}

fn conform(batches: Vec<RecordBatch>, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        if b.num_columns() != schema.fields().len() {
            return Err(ServerError::new(
                SqlState::Internal,
                format!("DML produced {} columns for a table of {}", b.num_columns(), schema.fields().len()),
            ));
        }
        let columns = b
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServerError::Exec(ExecError::Arrow(e)))?;
        out.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| ServerError::Exec(ExecError::Arrow(e)))?);
    }
    concat_batches(schema, &out).map_err(|e| ServerError::Exec(ExecError::Arrow(e)))
}

/// An update's old rows and new rows, aligned. DataFusion plans `UPDATE` as a projection of
/// the new row over the matching rows; Eddy widens that projection with the old columns.
async fn run_update(
    state: &datafusion::execution::context::SessionState,
    dml: &DmlStatement,
    schema: &SchemaRef,
) -> Result<(RecordBatch, RecordBatch)> {
    let LogicalPlan::Projection(projection) = dml.input.as_ref() else {
        return Err(ServerError::new(SqlState::Internal, "UPDATE did not plan as a projection"));
    };
    let input_schema = projection.input.schema();
    let mut exprs: Vec<Expr> = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        let (qualifier, _) =
            input_schema.qualified_field_with_unqualified_name(f.name()).map_err(ServerError::DataFusion)?;
        exprs.push(Expr::Column(Column::new(qualifier.cloned(), f.name())).alias(format!("__old{i}")));
    }
    for (i, e) in projection.expr.iter().enumerate() {
        exprs.push(e.clone().alias(format!("__new{i}")));
    }
    let plan = datafusion::logical_expr::LogicalPlanBuilder::from(projection.input.as_ref().clone())
        .project(exprs)?
        .build()?;
    let batches = DataFrame::new(state.clone(), plan).collect().await?;
    let n = schema.fields().len();
    let mut olds = Vec::new();
    let mut news = Vec::new();
    for b in batches {
        let old_cols = b.columns()[..n].to_vec();
        let new_cols = b.columns()[n..].to_vec();
        let loose = Arc::new(Schema::new(
            schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        olds.push(RecordBatch::try_new(loose.clone(), old_cols).map_err(|e| ServerError::Exec(ExecError::Arrow(e)))?);
        news.push(RecordBatch::try_new(loose, new_cols).map_err(|e| ServerError::Exec(ExecError::Arrow(e)))?);
    }
    Ok((conform(olds, schema)?, conform(news, schema)?))
}

/// `-old0, +new0, -old1, +new1, ...`
fn interleave_update(schema: &SchemaRef, old: &RecordBatch, new: &RecordBatch) -> Result<ChangeBatch> {
    let both = concat_batches(schema, [old, new]).map_err(|e| ServerError::Exec(ExecError::Arrow(e)))?;
    let n = old.num_rows() as u32;
    let mut indices = Vec::with_capacity(2 * n as usize);
    let mut weights = Vec::with_capacity(2 * n as usize);
    for i in 0..n {
        indices.push(i);
        weights.push(-1i64);
        indices.push(n + i);
        weights.push(1);
    }
    let data =
        take_record_batch(&both, &UInt32Array::from(indices)).map_err(|e| ServerError::Exec(ExecError::Arrow(e)))?;
    ChangeBatch::try_new(data, Int64Array::from(weights)).map_err(|e| ServerError::Exec(ExecError::Arrow(e)))
}

fn check_not_null(def: &RelationDef, rows: &RecordBatch) -> Result<()> {
    for (i, f) in def.schema.fields().iter().enumerate() {
        if !f.is_nullable() && rows.column(i).null_count() > 0 {
            return Err(ExecError::NotNull { relation: def.name.clone(), column: f.name().clone() }.into());
        }
    }
    Ok(())
}

/// Primary keys `keys` (encoded, one per row of `rows`) must be unique among themselves and
/// absent from the table and from inserts in flight, except for keys in `freed` (rows the same
/// statement removes).
fn check_new_keys(
    def: &RelationDef,
    keys: &[Vec<u8>],
    snapshot: &Snapshot,
    rows: &RecordBatch,
    freed: &HashSet<Vec<u8>>,
    in_flight: &dyn Fn(&[u8]) -> bool,
) -> Result<()> {
    let mut seen = HashSet::with_capacity(keys.len());
    for (row, key) in keys.iter().enumerate() {
        let duplicate = !seen.insert(key.as_slice())
            || (!freed.contains(key) && (in_flight(key) || snapshot.contains_key(def.id, key)?));
        if duplicate {
            return Err(
                ExecError::UniqueViolation { relation: def.name.clone(), key: describe_key(def, rows, row) }.into()
            );
        }
    }
    Ok(())
}

/// `col1, col2)=(v1, v2` as in Postgres's duplicate-key message.
fn describe_key(def: &RelationDef, rows: &RecordBatch, row: usize) -> String {
    let options = FormatOptions::default();
    let names: Vec<&str> = def.primary_key.iter().map(|c| def.schema.field(*c).name().as_str()).collect();
    let values: Vec<String> = def
        .primary_key
        .iter()
        .map(|c| {
            ArrayFormatter::try_new(rows.column(*c).as_ref(), &options)
                .map(|f| f.value(row).to_string())
                .unwrap_or_default()
        })
        .collect();
    format!("{})=({}", names.join(", "), values.join(", "))
}
