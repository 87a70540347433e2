//! Introspection statements: `SHOW`, `DESCRIBE`, `EXPLAIN`.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use eddy_common::SqlState;
use eddy_planner::catalog::{RelationKind, StorageLayout};
use eddy_planner::parser::{EddyStatement, ObjectKind, ShowStatement, object_name_to_string};
use eddy_planner::plan_stream;
use sqlparser::ast::{ObjectName, Statement};

use crate::engine::Engine;
use crate::error::{Result, ServerError};
use crate::session::{Session, StatementResult};

fn text_table(columns: &[&str], rows: Vec<Vec<String>>) -> Result<StatementResult> {
    let schema =
        Arc::new(Schema::new(columns.iter().map(|c| Field::new(*c, DataType::Utf8, true)).collect::<Vec<_>>()));
    let arrays = (0..columns.len())
        .map(|i| Arc::new(rows.iter().map(|r| Some(r[i].clone())).collect::<StringArray>()) as _)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| ServerError::new(SqlState::Internal, e.to_string()))?;
    Ok(StatementResult::Rows { schema, batches: vec![batch] })
}

/// The Postgres name of a column type, as `\d` and `DESCRIBE` show it.
pub fn pg_type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "numeric".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(38, 10) => "numeric".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "character varying".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", pg_type_name(f.data_type())),
        DataType::Struct(fields) => {
            let parts: Vec<String> =
                fields.iter().map(|f| format!("{} {}", f.name(), pg_type_name(f.data_type()))).collect();
            format!("struct<{}>", parts.join(", "))
        }
        other => other.to_string().to_lowercase(),
    }
}

/// `SHOW TABLES | SOURCES | MATERIALIZED VIEWS | VIEWS | SINKS`, `SHOW COLUMNS`, `SHOW name`.
///
/// # Errors
/// Unknown settings (42704).
pub async fn show(engine: &Arc<Engine>, session: &Arc<Session>, show: &ShowStatement) -> Result<StatementResult> {
    match show {
        ShowStatement::Objects(kind) => {
            let wanted = match kind {
                ObjectKind::Table => RelationKind::Table,
                ObjectKind::Source => RelationKind::Source,
                ObjectKind::MaterializedView => RelationKind::MaterializedView,
                ObjectKind::View => RelationKind::View,
                ObjectKind::Sink => RelationKind::Sink,
            };
            let mut names: Vec<String> =
                engine.catalog.all().iter().filter(|d| d.kind == wanted).map(|d| d.name.clone()).collect();
            names.sort();
            StatementResult::single_column("Name", names)
        }
        ShowStatement::Columns(name) => describe(engine, name),
        ShowStatement::Variable(name) if name == "jobs" => show_jobs(engine, session).await,
        ShowStatement::Variable(name) => show_variable(session, name),
    }
}

/// `SHOW JOBS`, as in RisingWave: each streaming job with its statement and progress.
async fn show_jobs(engine: &Arc<Engine>, session: &Arc<Session>) -> Result<StatementResult> {
    let sql = "SELECT id, name, kind, status, progress, definition AS statement FROM eddy_catalog.jobs ORDER BY id";
    let mut parsed = eddy_planner::parser::parse_sql(sql)?;
    let statement = parsed.pop().ok_or_else(|| ServerError::new(SqlState::Internal, "SHOW JOBS did not parse"))?;
    Box::pin(session.execute(engine, &statement, None)).await
}

/// `SHOW name` for one setting, or `SHOW ALL`.
///
/// # Errors
/// 42704 for an unknown setting.
pub fn show_variable(session: &Arc<Session>, name: &str) -> Result<StatementResult> {
    if name == "all" {
        let rows = session.all_settings().into_iter().map(|(k, v)| vec![k, v, String::new()]).collect();
        return text_table(&["name", "setting", "description"], rows);
    }
    let key = name.replace(' ', "_");
    let value = session.setting(name).or_else(|| session.setting(&key));
    match value {
        Some(v) => {
            let column = if name == "transaction isolation level" { "transaction_isolation" } else { name };
            StatementResult::single_column(column, vec![v])
        }
        None => {
            Err(ServerError::new(SqlState::UndefinedObject, format!("unrecognized configuration parameter \"{name}\"")))
        }
    }
}

/// `DESCRIBE name`: columns, types, and the key.
///
/// # Errors
/// 42P01 for an unknown relation.
pub fn describe(engine: &Arc<Engine>, name: &ObjectName) -> Result<StatementResult> {
    let n = object_name_to_string(name);
    let def = engine
        .catalog
        .get(&n)
        .ok_or_else(|| ServerError::new(SqlState::UndefinedTable, format!("relation \"{n}\" does not exist")))?;
    let mut rows: Vec<Vec<String>> = def
        .schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let key = if def.primary_key.contains(&i) { "yes" } else { "" };
            vec![
                f.name().clone(),
                pg_type_name(f.data_type()),
                if f.is_nullable() { "yes" } else { "no" }.into(),
                key.into(),
            ]
        })
        .collect();
    let layout = match &def.storage {
        Some(StorageLayout::Keyed { .. }) => "keyed",
        Some(StorageLayout::Counted) => "multiset",
        None => "not stored",
    };
    rows.push(vec![format!("({})", def.kind.sql_name()), format!("storage: {layout}"), String::new(), String::new()]);
    text_table(&["Name", "Type", "Nullable", "Primary Key"], rows)
}

/// `EXPLAIN CREATE MATERIALIZED VIEW ...` shows the streaming plan; `EXPLAIN SELECT ...`
/// shows DataFusion's plan.
///
/// # Errors
/// When the statement does not plan.
pub async fn explain(
    engine: &Arc<Engine>,
    _session: &Arc<Session>,
    statement: &EddyStatement,
    analyze: bool,
) -> Result<StatementResult> {
    if analyze {
        return Err(ServerError::unsupported("EXPLAIN ANALYZE"));
    }
    match statement {
        EddyStatement::CreateMaterializedView(mv) => {
            let state = engine.state(None);
            let plan = engine.plan(&state, &Statement::Query(mv.query.clone())).await?;
            let optimized = state.optimize(&plan)?;
            let id = eddy_common::ids::ObjectId(u32::MAX);
            let (_stream, graph) = plan_stream(
                &optimized,
                engine.catalog.as_ref(),
                id,
                engine.runtime.parallelism(),
                mv.emit_on_window_close,
                &eddy_planner::stream::Target::Materialize,
            )?;
            let lines: Vec<String> = graph.explain().lines().map(str::to_string).collect();
            StatementResult::single_column("QUERY PLAN", lines)
        }
        EddyStatement::Sql(stmt) if matches!(stmt.as_ref(), Statement::Query(_)) => {
            let state = engine.snapshot_state()?;
            let plan = engine.plan(&state, stmt).await?;
            let optimized = state.optimize(&plan)?;
            let lines: Vec<String> = optimized.display_indent().to_string().lines().map(str::to_string).collect();
            StatementResult::single_column("QUERY PLAN", lines)
        }
        _ => Err(ServerError::unsupported("EXPLAIN of this statement")),
    }
}
