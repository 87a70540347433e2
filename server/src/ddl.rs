//! Data definition: creating and dropping tables, sources, views and materialized views.
//!
//! Every definition change is committed with the epoch that applies it to the running graph,
//! so the catalog on disk and the dataflow never disagree, even across a crash.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use eddy_common::SqlState;
use eddy_common::ids::ObjectId;
use eddy_executor::store::CatalogChange;
use eddy_planner::catalog::{ConnectorDef, Distribution, RelationDef, RelationKind, StorageLayout, WatermarkDef};
use eddy_planner::names::output_names;
use eddy_planner::parser::{
    CreateMaterializedView, CreateRelation, CreateSink, CreateView, DropStatement, EddyStatement, ObjectKind,
    ParsedStatement, SinkInput, normalize_ident, object_name_to_string,
};
use eddy_planner::stream::Target;
use eddy_planner::types::sql_to_arrow;
use eddy_planner::{PlanError, plan_stream};
use sqlparser::ast::{Ident, Query, Statement};
use sqlparser::dialect::PostgreSqlDialect;

use crate::catalog::{PersistedObject, kind_tag};
use crate::engine::Engine;
use crate::error::{Result, ServerError};
use crate::session::{Session, StatementResult};

/// Re-creates a persisted object with its original id.
///
/// # Errors
/// When the definition no longer plans or its job cannot start.
pub async fn replay(
    engine: &Arc<Engine>,
    session: &Arc<Session>,
    statement: &ParsedStatement,
    id: ObjectId,
) -> Result<()> {
    match &statement.statement {
        EddyStatement::CreateTable(t) => create_table(engine, session, t, &statement.text, Some(id)).await?,
        EddyStatement::CreateSource(s) => create_source(engine, session, s, &statement.text, Some(id)).await?,
        EddyStatement::CreateMaterializedView(mv) => {
            create_materialized_view(engine, session, mv, &statement.text, Some(id)).await?
        }
        EddyStatement::CreateView(v) => create_view(engine, session, v, &statement.text, Some(id)).await?,
        EddyStatement::CreateSink(k) => create_sink(engine, session, k, &statement.text, Some(id)).await?,
        other => {
            return Err(ServerError::new(SqlState::Internal, format!("unexpected catalog statement {other:?}")));
        }
    };
    Ok(())
}

fn persist(def: &RelationDef, parallelism: Option<usize>) -> CatalogChange {
    CatalogChange::Put {
        id: def.id,
        definition: PersistedObject {
            id: def.id.0,
            kind: kind_tag(def.kind).to_string(),
            name: def.name.clone(),
            sql: def.definition.clone(),
            parallelism,
        }
        .encode(),
    }
}

/// The parallelism to plan a view or sink with: what it was created with when it is replayed
/// (its checkpointed state is laid out by actor), the server's otherwise.
fn job_parallelism(engine: &Engine, replay_id: Option<ObjectId>) -> usize {
    replay_id.and_then(|id| engine.replay_parallelism(id)).unwrap_or_else(|| engine.runtime.parallelism())
}

/// Starts the job of a materialized view or sink. A new one is backfilled from its inputs. A
/// replayed one resumes from its last checkpoint when it has one taken with the same plan and
/// none of its inputs had to be rebuilt; otherwise its stored rows and state are dropped and it
/// is rebuilt from its inputs like a new one.
async fn start_view_job(
    engine: &Arc<Engine>,
    def: &RelationDef,
    graph: &eddy_planner::stream::OperatorGraph,
    replay_id: Option<ObjectId>,
) -> Result<()> {
    let Some(id) = replay_id else {
        let catalog = vec![persist(def, Some(engine.runtime.parallelism()))];
        engine.runtime.create_materialized_view(def, graph, engine.catalog.as_ref(), catalog).await?;
        return Ok(());
    };
    let checkpointed = engine.runtime.job_fingerprint(id)?;
    let rebuilt_input = def.dependencies.iter().find(|d| engine.was_rebuilt(**d));
    match (checkpointed, rebuilt_input) {
        (Some(fingerprint), None) if fingerprint == graph.explain() => {
            engine.runtime.restore_materialized_view(def, graph, engine.catalog.as_ref()).await?;
            return Ok(());
        }
        (Some(_), None) => tracing::warn!(
            "{} \"{}\" plans differently than when it was checkpointed; rebuilding it from its inputs",
            def.kind.sql_name(),
            def.name
        ),
        (Some(_), Some(input)) => tracing::warn!(
            "{} \"{}\" is rebuilt from its inputs because its input {input} was",
            def.kind.sql_name(),
            def.name
        ),
        (None, _) => tracing::info!(
            "{} \"{}\" has no checkpoint yet; building it from its inputs",
            def.kind.sql_name(),
            def.name
        ),
    }
    engine.mark_rebuilt(id);
    let catalog = vec![CatalogChange::DropData { id }];
    engine.runtime.create_materialized_view(def, graph, engine.catalog.as_ref(), catalog).await?;
    Ok(())
}

/// Fails with 42P07 when `name` is taken (or returns `Ok(true)` for `IF NOT EXISTS`).
fn check_name_free(engine: &Engine, name: &str, if_not_exists: bool) -> Result<bool> {
    match engine.catalog.get(name) {
        Some(existing) if if_not_exists => {
            let _ = existing;
            Ok(true)
        }
        Some(existing) => Err(ServerError::new(
            SqlState::DuplicateTable,
            format!("{} \"{name}\" already exists", existing.kind.sql_name()),
        )),
        None => Ok(false),
    }
}

/// The columns of a table or source, with everything computed from them.
struct ColumnsPlan {
    schema: SchemaRef,
    defaults: Vec<Option<datafusion::logical_expr::Expr>>,
    /// `col TYPE AS expr`, planned over the other (non-generated) columns.
    generated: Vec<Option<datafusion::logical_expr::Expr>>,
    watermark: Option<WatermarkDef>,
}

/// Plans an expression written in a column list against `schema`, with DataFusion's type
/// coercion applied, cast to `target` when given.
fn plan_expr(
    engine: &Engine,
    text: &str,
    schema: &DFSchema,
    target: Option<&DataType>,
) -> Result<datafusion::logical_expr::Expr> {
    let state = engine.state(None);
    let mut parsed = sqlparser::parser::Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| ServerError::new(SqlState::SyntaxError, e.to_string()))?;
    eddy_planner::windows::rewrite_field_access(&mut parsed);
    let expr = state.create_logical_expr(&parsed.to_string(), schema)?;
    let plan = datafusion::logical_expr::LogicalPlanBuilder::from(LogicalPlan::EmptyRelation(
        datafusion::logical_expr::EmptyRelation { produce_one_row: false, schema: Arc::new(schema.clone()) },
    ))
    .project(vec![expr])?
    .build()?;
    let analyzed = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {})?;
    let LogicalPlan::Projection(p) = analyzed else {
        return Err(ServerError::new(SqlState::Internal, "expression did not plan as a projection"));
    };
    let mut expr = p.expr.into_iter().next().ok_or_else(|| ServerError::new(SqlState::Internal, "empty projection"))?;
    while let datafusion::logical_expr::Expr::Alias(a) = expr {
        expr = *a.expr;
    }
    if let Some(target) = target {
        let actual = datafusion::logical_expr::ExprSchemable::get_type(&expr, schema)?;
        if &actual != target {
            if !datafusion::arrow::compute::can_cast_types(&actual, target) {
                return Err(ServerError::new(
                    SqlState::DatatypeMismatch,
                    format!("expression {text} is {actual} and cannot be stored as {target}"),
                ));
            }
            expr = datafusion::logical_expr::cast(expr, target.clone());
        }
    }
    Ok(expr)
}

/// Plans the column list of a table or source: Arrow types as DataFusion maps the SQL types,
/// NOT NULL, DEFAULT, generated columns and the watermark.
fn plan_columns(engine: &Engine, create: &CreateRelation) -> Result<ColumnsPlan> {
    if create.columns.is_empty() {
        return Err(ServerError::new(SqlState::SyntaxError, "a table or source needs at least one column"));
    }
    let mut seen = HashSet::new();
    let mut fields = Vec::new();
    for c in &create.columns {
        let name = normalize_ident(&c.name);
        if !seen.insert(name.clone()) {
            return Err(ServerError::new(
                SqlState::DuplicateObject,
                format!("column \"{name}\" specified more than once"),
            ));
        }
        let is_pk = create.primary_key.iter().any(|k| normalize_ident(k) == name);
        let t = sql_to_arrow(&c.data_type)?;
        fields.push(Field::new(name, t, !(c.not_null || is_pk)));
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let physical: Vec<Field> = schema
        .fields()
        .iter()
        .zip(&create.columns)
        .filter(|(_, c)| c.generated.is_none())
        .map(|(f, _)| f.as_ref().clone().with_nullable(true))
        .collect();
    let physical_df = DFSchema::try_from(Schema::new(physical))?;
    let full_df = DFSchema::try_from(schema.as_ref().clone())?;
    let mut defaults = Vec::new();
    let mut generated = Vec::new();
    for (c, f) in create.columns.iter().zip(schema.fields()) {
        defaults.push(match &c.default {
            Some(d) => Some(plan_expr(engine, &d.to_string(), &DFSchema::empty(), Some(f.data_type()))?),
            None => None,
        });
        generated.push(match &c.generated {
            Some(g) => Some(plan_expr(engine, &g.to_string(), &physical_df, Some(f.data_type()))?),
            None => None,
        });
    }
    let watermark = match &create.watermark {
        None => None,
        Some(w) => {
            let col = normalize_ident(&w.column);
            let column = schema.index_of(&col).map_err(|_| {
                ServerError::new(SqlState::UndefinedColumn, format!("watermark column \"{col}\" does not exist"))
            })?;
            let t = schema.field(column).data_type().clone();
            if !matches!(t, DataType::Timestamp(_, _) | DataType::Date32) {
                return Err(ServerError::new(
                    SqlState::DatatypeMismatch,
                    format!("watermark column \"{col}\" must be a TIMESTAMP, not {t}"),
                ));
            }
            let expr = plan_expr(engine, &w.expr.to_string(), &full_df, Some(&t))?;
            Some(WatermarkDef { column, expr })
        }
    };
    Ok(ColumnsPlan { schema, defaults, generated, watermark })
}

fn connector_def(create: &CreateRelation) -> Option<ConnectorDef> {
    if create.with_options.is_empty() && create.format.is_none() {
        return None;
    }
    let options: HashMap<String, String> = create.with_options.iter().cloned().collect();
    Some(ConnectorDef {
        connector: options.get("connector").cloned().unwrap_or_default(),
        options,
        format: create.format.as_ref().map(|f| f.format.clone()),
        encode: create.format.as_ref().map(|f| f.encode.clone()),
        format_options: create.format.as_ref().map(|f| f.options.iter().cloned().collect()).unwrap_or_default(),
    })
}

/// `CREATE TABLE`.
///
/// # Errors
/// On a name conflict, an unknown type, or a failing commit.
pub async fn create_table(
    engine: &Arc<Engine>,
    _session: &Arc<Session>,
    create: &CreateRelation,
    sql: &str,
    replay_id: Option<ObjectId>,
) -> Result<StatementResult> {
    let _ddl = engine.ddl_lock.lock().await;
    let name = object_name_to_string(&create.name);
    if replay_id.is_none() && check_name_free(engine, &name, create.if_not_exists)? {
        return Ok(StatementResult::command("CREATE TABLE"));
    }
    let (connector, dependencies) = match &create.from_source {
        Some((source, table)) => crate::cdc::table_from_source(engine, create, source, table)?,
        None => (connector_def(create), vec![]),
    };
    let columns = plan_columns(engine, create)?;
    if let Some(c) = &connector {
        // Checked at CREATE; a restart must not wait for the external system.
        if replay_id.is_none() {
            check_table_connector(c, create, &columns.schema, &columns.generated).await?;
        }
    } else if columns.generated.iter().any(Option::is_some) {
        return Err(ServerError::with_hint(
            SqlState::FeatureNotSupported,
            "not supported: generated columns on a table fed by INSERT",
            "compute the value in a materialized view over the table",
        ));
    }
    finish_create_table(engine, create, sql, replay_id, name, connector, dependencies, columns).await
}

/// Stores a checked table definition and starts its job.
#[allow(clippy::too_many_arguments)]
async fn finish_create_table(
    engine: &Arc<Engine>,
    create: &CreateRelation,
    sql: &str,
    replay_id: Option<ObjectId>,
    name: String,
    connector: Option<ConnectorDef>,
    dependencies: Vec<ObjectId>,
    columns: ColumnsPlan,
) -> Result<StatementResult> {
    let ColumnsPlan { schema, defaults, generated, watermark } = columns;
    let mut primary_key = Vec::new();
    for k in &create.primary_key {
        let col = normalize_ident(k);
        let idx = schema.index_of(&col).map_err(|_| {
            ServerError::new(SqlState::UndefinedColumn, format!("column \"{col}\" named in key does not exist"))
        })?;
        primary_key.push(idx);
    }
    let storage =
        if primary_key.is_empty() { StorageLayout::Counted } else { StorageLayout::Keyed { key: primary_key.clone() } };
    let id = replay_id.unwrap_or_else(|| engine.catalog.allocate_id());
    let def = RelationDef {
        id,
        name: name.clone(),
        kind: RelationKind::Table,
        schema,
        primary_key,
        storage: Some(storage),
        append_only: create.append_only,
        watermark,
        defaults,
        generated,
        connector,
        dependencies,
        output_parallelism: 1,
        output_distribution: Distribution::Single,
        definition: sql.to_string(),
        view_plan: None,
        emit_on_window_close: false,
    };
    let catalog = if replay_id.is_some() { vec![] } else { vec![persist(&def, None)] };
    engine.runtime.create_table(&def, catalog).await?;
    engine.catalog.insert(Arc::new(def));
    Ok(StatementResult::command("CREATE TABLE"))
}

/// Checks the connector of a new table: it must read one split, and keyed formats need a
/// primary key.
async fn check_table_connector(
    c: &ConnectorDef,
    create: &CreateRelation,
    schema: &SchemaRef,
    generated: &[Option<datafusion::logical_expr::Expr>],
) -> Result<()> {
    // With a primary key, a row from the connector replaces the row with its key (and
    // keyed formats can delete by key); without one, the table keeps every row.
    let info = validate_connector(c, schema, generated, Some(1)).await?;
    if info.splits > 1 {
        return Err(ServerError::with_hint(
            SqlState::FeatureNotSupported,
            "not supported: a table read from several splits",
            "tables read one split; use CREATE SOURCE for parallel reads",
        ));
    }
    if info.keyed_changes && create.primary_key.is_empty() {
        return Err(ServerError::with_hint(
            SqlState::InvalidTableDefinition,
            format!("connector \"{}\" sends updates and deletes by key, so the table needs a primary key", c.connector),
            "declare PRIMARY KEY (...) on the columns that identify a row upstream",
        ));
    }
    Ok(())
}

/// Checks a connector's options against the columns it must produce.
async fn validate_connector(
    c: &ConnectorDef,
    schema: &SchemaRef,
    generated: &[Option<datafusion::logical_expr::Expr>],
    splits: Option<usize>,
) -> Result<eddy_connectors::SourceInfo> {
    let physical: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, _)| generated.get(*i).is_none_or(|g| g.is_none()))
        .map(|(_, f)| f.as_ref().clone())
        .collect();
    let mut spec = eddy_executor::build::source_spec(c, 1);
    spec.splits = splits;
    eddy_connectors::validate_source(&spec, &Schema::new(physical)).await.map_err(|e| {
        use eddy_common::ErrorClass;
        ServerError::new(e.sqlstate(), e.to_string())
    })
}

/// `CREATE SOURCE`: an append-only stream from a connector; not stored, read by the views
/// that use it (each view reads its own copy of the stream).
///
/// # Errors
/// Unknown connectors or options, columns the connector cannot produce, a bad watermark.
pub async fn create_source(
    engine: &Arc<Engine>,
    _session: &Arc<Session>,
    create: &CreateRelation,
    sql: &str,
    replay_id: Option<ObjectId>,
) -> Result<StatementResult> {
    let _ddl = engine.ddl_lock.lock().await;
    let name = object_name_to_string(&create.name);
    if replay_id.is_none() && check_name_free(engine, &name, create.if_not_exists)? {
        return Ok(StatementResult::command("CREATE SOURCE"));
    }
    let connector = connector_def(create)
        .ok_or_else(|| ServerError::new(SqlState::SyntaxError, "CREATE SOURCE needs WITH (connector = '...')"))?;
    if !create.primary_key.is_empty() {
        return Err(ServerError::with_hint(
            SqlState::FeatureNotSupported,
            "not supported: a PRIMARY KEY on a source",
            "sources are append-only streams; use CREATE TABLE for keyed data",
        ));
    }
    let ColumnsPlan { schema, generated, watermark, .. } =
        if create.columns.is_empty() && eddy_connectors::source::is_external(&connector.connector) {
            // A shared CDC source: its tables declare the columns (`CREATE TABLE ... FROM`).
            ColumnsPlan { schema: Arc::new(Schema::empty()), defaults: vec![], generated: vec![], watermark: None }
        } else {
            plan_columns(engine, create)?
        };
    // The split count is fixed at CREATE (positions and plans depend on it); a restart reuses
    // it without asking the external system, which may be down for a while.
    let splits = match replay_id.and_then(|id| engine.replay_parallelism(id)) {
        Some(splits) => splits,
        None if replay_id.is_some() && eddy_connectors::source::is_external(&connector.connector) => 1,
        None => validate_connector(&connector, &schema, &generated, None).await?.splits,
    };
    let id = replay_id.unwrap_or_else(|| engine.catalog.allocate_id());
    let def = RelationDef {
        id,
        name,
        kind: RelationKind::Source,
        schema,
        primary_key: vec![],
        storage: None,
        append_only: true,
        watermark,
        defaults: vec![],
        generated,
        connector: Some(connector),
        dependencies: vec![],
        output_parallelism: splits.max(1),
        output_distribution: Distribution::Arbitrary,
        definition: sql.to_string(),
        view_plan: None,
        emit_on_window_close: false,
    };
    if replay_id.is_none() {
        engine.runtime.commit_catalog(vec![persist(&def, Some(splits.max(1)))]).await?;
    }
    engine.catalog.insert(Arc::new(def));
    Ok(StatementResult::command("CREATE SOURCE"))
}

/// Names of the relations a plan reads, as written (views included, before inlining).
fn referenced_relations(plan: &LogicalPlan) -> Vec<String> {
    let mut names = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table().to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names
}

/// The output schema of a query under Postgres column names (or the given column list).
fn named_schema(query: &Query, plan: &LogicalPlan, columns: &[Ident]) -> Result<SchemaRef> {
    let names = if columns.is_empty() {
        output_names(query, plan.schema())
    } else {
        if columns.len() != plan.schema().fields().len() {
            return Err(ServerError::new(
                SqlState::SyntaxError,
                format!(
                    "{} column names given but the query produces {} columns",
                    columns.len(),
                    plan.schema().fields().len()
                ),
            ));
        }
        columns.iter().map(normalize_ident).collect()
    };
    let mut seen = HashSet::new();
    for n in &names {
        if !seen.insert(n.clone()) {
            return Err(ServerError::with_hint(
                SqlState::DuplicateObject,
                format!("column \"{n}\" specified more than once"),
                "give the columns distinct names with AS",
            ));
        }
    }
    let fields: Vec<Field> =
        plan.schema().fields().iter().zip(names).map(|(f, n)| Field::new(n, f.data_type().clone(), true)).collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// `CREATE MATERIALIZED VIEW`: plans the query incrementally, starts it, backfills it and
/// returns once its contents are committed.
///
/// # Errors
/// When the query cannot be maintained incrementally (0A000) or does not plan.
pub async fn create_materialized_view(
    engine: &Arc<Engine>,
    _session: &Arc<Session>,
    create: &CreateMaterializedView,
    sql: &str,
    replay_id: Option<ObjectId>,
) -> Result<StatementResult> {
    let _ddl = engine.ddl_lock.lock().await;
    let name = object_name_to_string(&create.name);
    if replay_id.is_none() && check_name_free(engine, &name, create.if_not_exists)? {
        return Ok(StatementResult::command("CREATE MATERIALIZED VIEW"));
    }
    let state = engine.state(None);
    let statement = Statement::Query(create.query.clone());
    let plan = engine.plan(&state, &statement).await?;
    let schema = named_schema(&create.query, &plan, &create.columns)?;
    let mut dependencies = Vec::new();
    for rel in referenced_relations(&plan) {
        if let Some(def) = engine.catalog.get(&rel) {
            dependencies.push(def.id);
        }
    }
    let optimized = state.optimize(&plan)?;
    let id = replay_id.unwrap_or_else(|| engine.catalog.allocate_id());
    let (_stream, graph) = plan_stream(
        &optimized,
        engine.catalog.as_ref(),
        id,
        job_parallelism(engine, replay_id),
        create.emit_on_window_close,
        &Target::Materialize,
    )?;
    let primary_key = graph.unique_key.clone().unwrap_or_default();
    let def = RelationDef {
        id,
        name: name.clone(),
        kind: RelationKind::MaterializedView,
        schema,
        primary_key,
        storage: Some(graph.layout.clone()),
        append_only: graph.append_only,
        watermark: None,
        defaults: vec![],
        generated: vec![],
        connector: None,
        dependencies,
        output_parallelism: graph.output_parallelism(),
        output_distribution: graph.output_distribution.clone(),
        definition: sql.to_string(),
        view_plan: None,
        emit_on_window_close: create.emit_on_window_close,
    };
    start_view_job(engine, &def, &graph, replay_id).await?;
    engine.catalog.insert(Arc::new(def));
    Ok(StatementResult::command("CREATE MATERIALIZED VIEW"))
}

/// `CREATE SINK name FROM relation | AS query WITH (connector = ...)`: a graph whose result
/// leaves Eddy instead of being stored.
///
/// # Errors
/// Unknown sink connectors or options; a retracting stream into an append-only sink without
/// `force_append_only`.
pub async fn create_sink(
    engine: &Arc<Engine>,
    _session: &Arc<Session>,
    create: &CreateSink,
    sql: &str,
    replay_id: Option<ObjectId>,
) -> Result<StatementResult> {
    let _ddl = engine.ddl_lock.lock().await;
    let name = object_name_to_string(&create.name);
    if replay_id.is_none() && check_name_free(engine, &name, create.if_not_exists)? {
        return Ok(StatementResult::command("CREATE SINK"));
    }
    let options: HashMap<String, String> = create.with_options.iter().cloned().collect();
    let connector = options.get("connector").cloned().unwrap_or_default();
    match connector.as_str() {
        "blackhole" => {
            for key in options.keys() {
                if !matches!(key.as_str(), "connector" | "type" | "force_append_only" | "primary_key") {
                    return Err(ServerError::new(
                        SqlState::InvalidParameterValue,
                        format!(
                            "unknown option \"{key}\" for sink connector blackhole; valid options: connector, type, force_append_only"
                        ),
                    ));
                }
            }
        }
        // Checked against the sink's columns once the query is planned.
        "kafka" => {}
        _ => {
            return Err(ServerError::with_hint(
                SqlState::FeatureNotSupported,
                format!("not supported: sink connector \"{connector}\""),
                "available sink connectors: kafka, blackhole",
            ));
        }
    }
    let query: Box<Query> = match &create.from {
        SinkInput::Query(q) => q.clone(),
        SinkInput::Relation(rel) => {
            let sql = format!("SELECT * FROM {rel}");
            match sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, &sql)
                .map_err(|e| ServerError::new(SqlState::SyntaxError, e.to_string()))?
                .pop()
            {
                Some(Statement::Query(q)) => q,
                _ => return Err(ServerError::new(SqlState::Internal, "sink input did not parse as a query")),
            }
        }
    };
    let state = engine.state(None);
    let statement = Statement::Query(query.clone());
    let plan = engine.plan(&state, &statement).await?;
    let schema = named_schema(&query, &plan, &[])?;
    let mut dependencies = Vec::new();
    for rel in referenced_relations(&plan) {
        if let Some(def) = engine.catalog.get(&rel) {
            dependencies.push(def.id);
        }
    }
    let optimized = state.optimize(&plan)?;
    let id = replay_id.unwrap_or_else(|| engine.catalog.allocate_id());
    let target = Target::Sink { connector: connector.clone(), options: create.with_options.clone() };
    let (_stream, graph) = plan_stream(
        &optimized,
        engine.catalog.as_ref(),
        id,
        job_parallelism(engine, replay_id),
        create.emit_on_window_close,
        &target,
    )?;
    let mut sink_connector = ConnectorDef {
        connector: connector.clone(),
        options: options.clone(),
        format: create.format.as_ref().map(|f| f.format.clone()),
        encode: create.format.as_ref().map(|f| f.encode.clone()),
        format_options: create.format.as_ref().map(|f| f.options.iter().cloned().collect()).unwrap_or_default(),
    };
    let mut append_only_sink = options.get("type").is_some_and(|t| t.eq_ignore_ascii_case("append-only"));
    if connector == "kafka" {
        let format = eddy_executor::build::source_spec(&sink_connector, 1).format;
        let kafka = eddy_connectors::kafka::sink::KafkaSinkOptions::parse(&options, format.as_ref(), &schema)
            .map_err(|e| ServerError::new(SqlState::InvalidParameterValue, e.to_string()))?;
        append_only_sink |= kafka.envelope == eddy_connectors::kafka::sink::SinkEnvelope::Plain;
        // An Avro sink's schemas are registered now, so a registry problem shows at CREATE and
        // the running sink needs only the ids.
        let avro_schema = schema.clone();
        let registered = tokio::task::spawn_blocking(move || kafka.register_avro_schemas(&avro_schema))
            .await
            .map_err(|e| ServerError::new(SqlState::Internal, format!("registering the sink's Avro schemas: {e}")))?
            .map_err(|e| {
                use eddy_common::ErrorClass;
                ServerError::new(e.sqlstate(), e.to_string())
            })?;
        sink_connector.format_options.extend(registered);
    }
    let forced = options.get("force_append_only").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if append_only_sink && !graph.append_only && !forced {
        return Err(ServerError::with_hint(
            SqlState::FeatureNotSupported,
            "the sink's input updates and deletes rows, but the sink is append-only",
            "add force_append_only = 'true' to drop the updates and deletes, or use an upsert sink",
        ));
    }
    let def = RelationDef {
        id,
        name,
        kind: RelationKind::Sink,
        schema,
        primary_key: vec![],
        storage: None,
        append_only: graph.append_only,
        watermark: None,
        defaults: vec![],
        generated: vec![],
        connector: Some(sink_connector),
        dependencies,
        output_parallelism: graph.output_parallelism(),
        output_distribution: graph.output_distribution.clone(),
        definition: sql.to_string(),
        view_plan: None,
        emit_on_window_close: false,
    };
    start_view_job(engine, &def, &graph, replay_id).await?;
    engine.catalog.insert(Arc::new(def));
    Ok(StatementResult::command("CREATE SINK"))
}

/// `CREATE VIEW`: a named query, inlined where it is used.
///
/// # Errors
/// When the query does not plan or the name is taken.
pub async fn create_view(
    engine: &Arc<Engine>,
    _session: &Arc<Session>,
    create: &CreateView,
    sql: &str,
    replay_id: Option<ObjectId>,
) -> Result<StatementResult> {
    let _ddl = engine.ddl_lock.lock().await;
    let name = object_name_to_string(&create.name);
    if replay_id.is_none() {
        if create.or_replace && engine.catalog.get(&name).is_some() {
            return Err(ServerError::unsupported("CREATE OR REPLACE VIEW over an existing view"));
        }
        if check_name_free(engine, &name, create.if_not_exists)? {
            return Ok(StatementResult::command("CREATE VIEW"));
        }
    }
    let state = engine.state(None);
    let statement = Statement::Query(create.query.clone());
    let plan = engine.plan(&state, &statement).await?;
    let schema = named_schema(&create.query, &plan, &create.columns)?;
    // Rename the plan's output to the view's column names.
    let exprs: Vec<datafusion::logical_expr::Expr> = plan
        .schema()
        .columns()
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| datafusion::logical_expr::Expr::Column(c).alias(f.name()))
        .collect();
    let view_plan = datafusion::logical_expr::LogicalPlanBuilder::from(plan.clone()).project(exprs)?.build()?;
    let mut dependencies = Vec::new();
    for rel in referenced_relations(&plan) {
        if let Some(def) = engine.catalog.get(&rel) {
            dependencies.push(def.id);
        }
    }
    let id = replay_id.unwrap_or_else(|| engine.catalog.allocate_id());
    let def = RelationDef {
        id,
        name,
        kind: RelationKind::View,
        schema,
        primary_key: vec![],
        storage: None,
        append_only: false,
        watermark: None,
        defaults: vec![],
        generated: vec![],
        connector: None,
        dependencies,
        output_parallelism: 1,
        output_distribution: Distribution::Arbitrary,
        definition: sql.to_string(),
        view_plan: Some(Arc::new(view_plan)),
        emit_on_window_close: false,
    };
    if replay_id.is_none() {
        engine.runtime.commit_catalog(vec![persist(&def, None)]).await?;
    }
    engine.catalog.insert(Arc::new(def));
    Ok(StatementResult::command("CREATE VIEW"))
}

fn kind_matches(kind: ObjectKind, actual: RelationKind) -> bool {
    matches!(
        (kind, actual),
        (ObjectKind::Table, RelationKind::Table)
            | (ObjectKind::Source, RelationKind::Source)
            | (ObjectKind::MaterializedView, RelationKind::MaterializedView)
            | (ObjectKind::View, RelationKind::View)
            | (ObjectKind::Sink, RelationKind::Sink)
    )
}

/// `DROP ... [IF EXISTS] names [CASCADE]`: refuses while other objects depend on a dropped one,
/// unless `CASCADE`; drops dependents first, frees stored rows with the definitions.
///
/// # Errors
/// Unknown names (without IF EXISTS), wrong kinds, dependents without CASCADE.
pub async fn drop(engine: &Arc<Engine>, drop: &DropStatement) -> Result<StatementResult> {
    let _ddl = engine.ddl_lock.lock().await;
    let tag = format!("DROP {}", drop.kind.sql_name().to_uppercase());
    let mut targets: Vec<Arc<RelationDef>> = Vec::new();
    for n in &drop.names {
        let name = object_name_to_string(n);
        match engine.catalog.get(&name) {
            None if drop.if_exists => continue,
            None => {
                return Err(PlanError::UnknownObject { kind: drop.kind.sql_name(), name }.into());
            }
            Some(def) if !kind_matches(drop.kind, def.kind) => {
                return Err(ServerError::with_hint(
                    SqlState::WrongObjectType,
                    format!("\"{name}\" is not a {}", drop.kind.sql_name()),
                    format!("use DROP {} to remove it", def.kind.sql_name().to_uppercase()),
                ));
            }
            Some(def) => targets.push(def),
        }
    }
    if targets.is_empty() {
        return Ok(StatementResult::command(&tag));
    }
    let mut ordered: Vec<Arc<RelationDef>> = Vec::new();
    for t in &targets {
        let closure = engine.catalog.dependents_closure(t.id);
        let others: Vec<String> = closure
            .iter()
            .filter(|d| d.id != t.id && !targets.iter().any(|x| x.id == d.id))
            .map(|d| format!("{} {}", d.kind.sql_name(), d.name))
            .collect();
        if !others.is_empty() && !drop.cascade {
            return Err(PlanError::HasDependents {
                kind: t.kind.sql_name(),
                name: t.name.clone(),
                dependents: others.join(", "),
            }
            .into());
        }
        for d in closure {
            if !ordered.iter().any(|o| o.id == d.id) {
                ordered.push(d);
            }
        }
    }
    let mut catalog = Vec::new();
    let mut jobs = Vec::new();
    for d in &ordered {
        catalog.push(CatalogChange::Delete { id: d.id });
        if d.kind.is_stored() || d.kind == RelationKind::Sink {
            // Rows, operator state and source positions go with the object.
            catalog.push(CatalogChange::DropData { id: d.id });
            jobs.push(d.id);
        }
    }
    engine.runtime.drop_jobs(&jobs, catalog).await?;
    for d in &ordered {
        engine.catalog.remove(d.id);
    }
    crate::cdc::release_upstream(&ordered, &engine.catalog.all()).await;
    Ok(StatementResult::command(&tag))
}
