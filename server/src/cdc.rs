//! The server's side of CDC tables: `CREATE TABLE ... FROM source TABLE '...'` and releasing
//! replication slots when CDC tables are dropped.

use std::sync::Arc;

use eddy_common::SqlState;
use eddy_common::ids::ObjectId;
use eddy_planner::catalog::{ConnectorDef, RelationDef, RelationKind};
use eddy_planner::parser::CreateRelation;
use sqlparser::ast::ObjectName;

use crate::engine::Engine;
use crate::error::{Result, ServerError};

/// The connector of a table read from the shared source `source`, and the source as its
/// dependency (so the source cannot be dropped from under it).
///
/// # Errors
/// An unknown source, a relation that is not a CDC source, `WITH` options besides `FROM`.
pub fn table_from_source(
    engine: &Arc<Engine>,
    create: &CreateRelation,
    source: &ObjectName,
    table: &str,
) -> Result<(Option<ConnectorDef>, Vec<ObjectId>)> {
    let name = eddy_planner::parser::object_name_to_string(source);
    let def = engine
        .catalog
        .get(&name)
        .ok_or_else(|| ServerError::new(SqlState::UndefinedObject, format!("source \"{name}\" does not exist")))?;
    let connector = match (&def.kind, &def.connector) {
        (RelationKind::Source, Some(c)) => c,
        _ => {
            return Err(ServerError::new(
                SqlState::WrongObjectType,
                format!(
                    "\"{name}\" is not a CDC source; FROM ... TABLE reads from CREATE SOURCE ... WITH (connector = 'postgres-cdc' or 'mysql-cdc', ...)"
                ),
            ));
        }
    };
    if !create.with_options.is_empty() || create.format.is_some() {
        return Err(ServerError::new(
            SqlState::SyntaxError,
            "a table read FROM a source takes its connection from the source; leave out WITH (...)",
        ));
    }
    let spec = eddy_executor::build::source_spec(connector, 1);
    let options = eddy_connectors::source::table_from_source(&spec, table).map_err(|e| {
        use eddy_common::ErrorClass;
        ServerError::new(e.sqlstate(), e.to_string())
    })?;
    Ok((Some(ConnectorDef { connector: connector.connector.clone(), options, ..Default::default() }), vec![def.id]))
}

/// Drops the replication slots of dropped CDC tables, so upstream stops retaining WAL for
/// them; a slot that tables still in `remaining` read stays. A failure is logged with what to
/// drop by hand; the DROP itself has happened.
pub async fn release_upstream(dropped: &[Arc<RelationDef>], remaining: &[Arc<RelationDef>]) {
    let slot_of = |def: &RelationDef| {
        let c = def.connector.as_ref()?;
        if def.kind != RelationKind::Table || !eddy_connectors::source::is_external(&c.connector) {
            return None;
        }
        Some(eddy_executor::build::source_spec(c, 1))
    };
    let still_read: Vec<String> = remaining
        .iter()
        .filter_map(|d| slot_of(d))
        .filter_map(|spec| eddy_connectors::source::upstream_slot(&spec))
        .collect();
    for def in dropped {
        let Some(spec) = slot_of(def) else { continue };
        let still_used = eddy_connectors::source::upstream_slot(&spec).is_some_and(|s| still_read.contains(&s));
        if let Err(e) = eddy_connectors::drop_source(&spec, still_used).await {
            tracing::warn!(table = %def.name, error = %e, "could not release the upstream replication slot");
        }
    }
}

/// `eddy_catalog.cdc_progress(upstream_table, slot, phase, snapshot_rows_copied,
/// snapshot_rows_estimated, confirmed_lsn, server_lsn, slot_lag_bytes, healthy, last_error)`:
/// each running CDC reader, its initial snapshot's progress, how much WAL its slot retains
/// beyond what is durably absorbed here, and whether every row so far could be decoded.
///
/// # Errors
/// Only on internal Arrow errors.
pub fn progress_table() -> datafusion::error::Result<Arc<dyn datafusion::catalog::TableProvider>> {
    use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use eddy_connectors::cdc::pg_values::format_lsn;

    let rows = eddy_connectors::cdc::progress::all();
    let schema = Arc::new(Schema::new(vec![
        Field::new("upstream_table", DataType::Utf8, false),
        Field::new("slot", DataType::Utf8, false),
        Field::new("phase", DataType::Utf8, false),
        Field::new("snapshot_rows_copied", DataType::Int64, false),
        Field::new("snapshot_rows_estimated", DataType::Int64, false),
        Field::new("confirmed_lsn", DataType::Utf8, false),
        Field::new("server_lsn", DataType::Utf8, false),
        Field::new("slot_lag_bytes", DataType::Int64, false),
        Field::new("healthy", DataType::Boolean, false),
        Field::new("last_error", DataType::Utf8, true),
    ]));
    let text = |f: &dyn Fn(&eddy_connectors::cdc::progress::CdcProgress) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let int = |f: &dyn Fn(&eddy_connectors::cdc::progress::CdcProgress) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from(rows.iter().map(|r| f(r) as i64).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|r| r.upstream_table.clone()),
        text(&|r| r.slot.clone()),
        text(&|r| r.phase.clone()),
        int(&|r| r.snapshot_rows_copied),
        int(&|r| r.snapshot_rows_estimated),
        text(&|r| r.confirmed_text.clone().unwrap_or_else(|| format_lsn(r.confirmed_lsn))),
        text(&|r| r.server_text.clone().unwrap_or_else(|| format_lsn(r.server_lsn))),
        int(&|r| r.slot_lag_bytes()),
        Arc::new(BooleanArray::from(rows.iter().map(|r| r.healthy).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.last_error.clone()).collect::<Vec<_>>())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]])?))
}
