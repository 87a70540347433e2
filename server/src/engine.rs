//! The engine: catalog, runtime and DataFusion context shared by every session.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use eddy_common::ids::ObjectId;
use eddy_executor::read::QuerySnapshot;
use eddy_executor::store::Snapshot;
use eddy_executor::{Runtime, RuntimeConfig};
use eddy_planner::parser::parse_sql;
use sqlparser::ast::Statement;

use crate::catalog::{Catalog, PersistedObject, PublicSchema};
use crate::error::{Result, ServerError};
use crate::functions;
use crate::session::Session;

/// The database name clients connect to; Eddy has one.
pub const DATABASE: &str = "dev";
/// The schema every object lives in.
pub const SCHEMA: &str = "public";

/// Server settings that shape the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub barrier_interval: Duration,
    pub checkpoint_interval: Duration,
    pub parallelism: usize,
    /// Verify the whole store when opening it.
    pub verify_data_dir: bool,
    /// Bytes of operator state kept in memory before clean state is evicted to the store.
    pub memory_limit: Option<u64>,
}

/// What replaying the catalog on start needs to remember across objects.
#[derive(Debug, Default)]
struct ReplayState {
    /// The parallelism each persisted view and sink was planned with.
    parallelism: std::collections::HashMap<ObjectId, usize>,
    /// Jobs rebuilt from their inputs instead of restored: their dependents must be too.
    rebuilt: std::collections::HashSet<ObjectId>,
}

pub struct Engine {
    pub runtime: Arc<Runtime>,
    pub catalog: Arc<Catalog>,
    /// Users and their password verifiers.
    pub users: Arc<crate::users::Users>,
    context: SessionContext,
    /// DDL statements run one at a time.
    pub ddl_lock: tokio::sync::Mutex<()>,
    pub config: EngineConfig,
    replay: parking_lot::Mutex<ReplayState>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the data directory, starts the runtime and replays the catalog.
    ///
    /// # Errors
    /// When the store cannot be opened or a persisted definition no longer plans.
    pub async fn start(config: EngineConfig) -> Result<Arc<Self>> {
        let runtime = Runtime::open(
            &config.data_dir,
            RuntimeConfig {
                barrier_interval: config.barrier_interval,
                checkpoint_interval: config.checkpoint_interval,
                parallelism: config.parallelism,
                verify_store: config.verify_data_dir,
                memory_limit: config.memory_limit,
            },
        )?;
        let catalog = Arc::new(Catalog::new(runtime.store().clone(), 1));
        let users = Arc::new(crate::users::Users::load(runtime.store())?);
        let context = build_context(catalog.clone(), users.clone())?;
        let engine = Arc::new(Self {
            runtime,
            catalog,
            users,
            context,
            ddl_lock: tokio::sync::Mutex::new(()),
            config,
            replay: parking_lot::Mutex::new(ReplayState::default()),
        });
        if let Some(dev) = engine.context.catalog(DATABASE) {
            dev.register_schema(
                crate::system::SCHEMA_NAME,
                Arc::new(crate::system::SystemSchema::new(Arc::downgrade(&engine))),
            )?;
        }
        engine.replay().await?;
        Ok(engine)
    }

    /// Re-creates every persisted object in id order. Tables keep their stored rows and
    /// resume their connectors; materialized views and sinks resume from their last
    /// checkpoint (or are rebuilt from their inputs when they have none). Sources stay closed
    /// until everything is attached again, so no view misses a row.
    async fn replay(self: &Arc<Self>) -> Result<()> {
        let entries = self.runtime.store().catalog_entries()?;
        if entries.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        tracing::info!(objects = entries.len(), "restoring the catalog");
        self.runtime.hold_sources();
        let result = self.replay_entries(entries).await;
        self.runtime.open_sources();
        result?;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "catalog restored");
        Ok(())
    }

    async fn replay_entries(self: &Arc<Self>, entries: Vec<(ObjectId, Vec<u8>)>) -> Result<()> {
        let session = Session::new("eddy-replay");
        for (id, bytes) in entries {
            let Some(object) = PersistedObject::decode(&bytes) else {
                return Err(ServerError::new(
                    eddy_common::SqlState::Internal,
                    format!("catalog entry {id} is unreadable; refusing to start with a partial catalog"),
                ));
            };
            self.catalog.observe_id(id);
            if let Some(p) = object.parallelism {
                self.replay.lock().parallelism.insert(id, p);
            }
            let statements = parse_sql(&object.sql)?;
            for statement in statements {
                crate::ddl::replay(self, &session, &statement, id).await.map_err(|e| {
                    ServerError::new(
                        eddy_common::SqlState::Internal,
                        format!("cannot restore {} \"{}\": {e}", object.kind, object.name),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The parallelism a replayed view or sink was planned with.
    pub fn replay_parallelism(&self, id: ObjectId) -> Option<usize> {
        self.replay.lock().parallelism.get(&id).copied()
    }

    /// True when a replayed job was rebuilt from its inputs rather than restored.
    pub fn was_rebuilt(&self, id: ObjectId) -> bool {
        self.replay.lock().rebuilt.contains(&id)
    }

    pub fn mark_rebuilt(&self, id: ObjectId) {
        self.replay.lock().rebuilt.insert(id);
    }

    /// A DataFusion session state reading `snapshot` (or the latest commit per scan).
    pub fn state(&self, snapshot: Option<Snapshot>) -> SessionState {
        let mut state = self.context.state();
        if let Some(snapshot) = snapshot {
            // Set in place: rebuilding the state would bring back DataFusion's default
            // functions over Eddy's (to_char).
            let config = state.config().clone().with_extension(Arc::new(QuerySnapshot(snapshot)));
            *state.config_mut() = config;
        }
        state
    }

    /// A state reading the latest committed epoch, consistently across relations.
    ///
    /// # Errors
    /// On storage failure.
    pub fn snapshot_state(&self) -> Result<SessionState> {
        Ok(self.state(Some(self.runtime.snapshot()?)))
    }

    /// Plans a Postgres statement with DataFusion.
    ///
    /// # Errors
    /// Planning errors (unknown table or column, type errors).
    pub async fn plan(&self, state: &SessionState, statement: &Statement) -> Result<LogicalPlan> {
        let mut statement = statement.clone();
        let version_column = |name: &str| -> Option<String> {
            let def = self.catalog.get(name)?;
            def.watermark.as_ref().map(|w| def.schema.field(w.column).name().clone())
        };
        // Window table functions (TUMBLE, HOP) become ordinary subqueries first.
        let mut error = None;
        let _ = sqlparser::ast::visit_statements_mut(&mut statement, |s| {
            if let Statement::Query(q) = s
                && let Err(e) = eddy_planner::windows::rewrite_window_functions(q)
                    .and_then(|()| eddy_planner::parser::rewrite_as_of_conditions(q, &version_column))
            {
                error = Some(e);
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        });
        if let Some(e) = error {
            return Err(e.into());
        }
        eddy_planner::windows::rewrite_field_access(&mut statement);
        Ok(state.statement_to_plan(DfStatement::Statement(Box::new(statement))).await?)
    }

    pub async fn shutdown(&self) {
        self.runtime.shutdown().await;
    }
}

fn build_context(catalog: Arc<Catalog>, users: Arc<crate::users::Users>) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(DATABASE, SCHEMA)
        .with_information_schema(true)
        .with_create_default_catalog_and_schema(false)
        .with_target_partitions(2);
    let options = config.options_mut();
    options.sql_parser.map_string_types_to_utf8view = false;
    options.sql_parser.enable_ident_normalization = true;
    options.execution.time_zone = Some("+00:00".to_string());
    options.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    // Uncorrelated scalar subqueries become left joins with their one row, which views can
    // maintain; left in place they would need the physical executor.
    options.optimizer.enable_physical_uncorrelated_scalar_subquery = false;
    // DISTINCT aggregates are maintained directly; rewriting them into two aggregations would
    // regroup session windows by the distinct column.
    let rules: Vec<_> = datafusion::optimizer::Optimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
        .collect();
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rules(rules)
        .build();
    let mut context = SessionContext::new_with_state(state);
    let dev = Arc::new(MemoryCatalogProvider::new());
    dev.register_schema(SCHEMA, Arc::new(PublicSchema { catalog }))?;
    context.register_catalog(DATABASE, dev);
    crate::pg_catalog::install(&context, users)?;
    functions::register(&context);
    crate::pg_functions::register(&context);
    for udf in eddy_planner::windows::window_udfs() {
        context.register_udf(udf);
    }
    context.register_udf(eddy_planner::stream::join::as_of_marker_udf());
    {
        use datafusion::execution::FunctionRegistry;
        context.register_udf(crate::interval_arith::IntervalMul::udf().as_ref().clone());
        context.register_expr_planner(Arc::new(crate::interval_arith::IntervalArithmeticPlanner))?;
    }
    Ok(context)
}
