//! The Postgres wire protocol front end, on the `pgwire` crate.
//!
//! Simple queries may hold several statements; they run in order and stop at the first error,
//! as in Postgres. The extended protocol plans a statement at `Parse`, so `Describe` can answer
//! with parameter types (inferred when the client sends none, as asyncpg, pg8000 and
//! tokio-postgres do) and result columns; `Execute` binds the parameters into the plan.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Decimal128Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::LogicalPlan;
use eddy_planner::parser::{EddyStatement, ParsedStatement, parse_sql};
use futures::{Sink, stream};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::engine::Engine;
use crate::error::{ServerError, to_pg_error};
use crate::session::{Session, StatementResult};
use crate::users::{AuthMode, ScramExchange};
use futures::SinkExt;
use pgwire::messages::startup::Authentication;

/// Builds the handlers for one server.
pub struct HandlerFactory {
    handler: Arc<EddyHandler>,
    startup: Arc<EddyStartup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl HandlerFactory {
    pub fn new(engine: Arc<Engine>, auth: AuthMode) -> Self {
        let connections = Arc::new(ConnectionManager::new());
        let users = engine.users.clone();
        Self {
            handler: Arc::new(EddyHandler { engine: engine.clone(), parser: Arc::new(EddyQueryParser { engine }) }),
            startup: Arc::new(EddyStartup {
                connections: connections.clone(),
                pids: RandomPidSecretKeyGenerator::default(),
                probe: parking_lot::Mutex::new(None),
                auth,
                users,
                scram: parking_lot::Mutex::new(None),
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }

    /// The handlers for one connection; `probe` is a second handle on its socket, which
    /// subscriptions use to notice a client that went away while they only write.
    pub fn for_connection(&self, probe: Option<std::net::TcpStream>) -> Self {
        Self {
            handler: self.handler.clone(),
            startup: Arc::new(EddyStartup {
                connections: self.startup.connections.clone(),
                pids: RandomPidSecretKeyGenerator::default(),
                probe: parking_lot::Mutex::new(probe),
                auth: self.startup.auth,
                users: self.startup.users.clone(),
                scram: parking_lot::Mutex::new(None),
            }),
            cancel: self.cancel.clone(),
        }
    }
}

impl PgWireServerHandlers for HandlerFactory {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.handler.clone()
    }
}

/// The `COPY ... FROM STDIN` a connection is receiving data for.
type PendingCopy = parking_lot::Mutex<Option<crate::copy_in::CopyIn>>;

fn pending_copy<C: ClientInfo>(client: &C) -> Arc<PendingCopy> {
    match client.session_extensions().get::<Arc<PendingCopy>>() {
        Some(p) => p.as_ref().clone(),
        None => {
            let p: Arc<PendingCopy> = Arc::new(parking_lot::Mutex::new(None));
            client.session_extensions().insert::<Arc<PendingCopy>>(p.clone());
            p
        }
    }
}

/// Starts `COPY ... FROM STDIN` when `statement` is one: the response asks for the data.
fn start_copy_in<C: ClientInfo>(
    engine: &Arc<Engine>,
    client: &C,
    statement: &ParsedStatement,
) -> Result<Option<Response>, ServerError> {
    let EddyStatement::Sql(stmt) = &statement.statement else { return Ok(None) };
    let Some(copy) = crate::copy_in::start(engine, stmt)? else { return Ok(None) };
    let columns = copy.column_count(engine);
    *pending_copy(client).lock() = Some(copy);
    Ok(Some(Response::CopyIn(pgwire::api::results::CopyResponse::new(0, columns, stream::empty()))))
}

#[async_trait]
impl pgwire::api::copy::CopyHandler for EddyHandler {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: pgwire::messages::copy::CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(copy) = pending_copy(client).lock().as_mut() {
            copy.push(&copy_data.data);
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: pgwire::messages::copy::CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(copy) = pending_copy(client).lock().take() else {
            return Err(to_pg_error(
                &ServerError::new(eddy_common::SqlState::ProtocolViolation, "no COPY in progress"),
                "",
            ));
        };
        let session = session_of(client);
        let rows = copy.finish(&self.engine, &session).await.map_err(|e| to_pg_error(&e, ""))?;
        client.send(PgWireBackendMessage::CommandComplete(Tag::new("COPY").with_rows(rows).into())).await?;
        Ok(())
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        match error {
            PgWireError::UserError(_) => {}
            other => tracing::debug!(error = %other, "protocol error"),
        }
    }
}

/// Authentication (trust, the default on loopback, or SCRAM-SHA-256 passwords) with the
/// parameters clients check. One per connection: it holds that connection's SCRAM exchange.
pub struct EddyStartup {
    connections: Arc<ConnectionManager>,
    pids: RandomPidSecretKeyGenerator,
    probe: parking_lot::Mutex<Option<std::net::TcpStream>>,
    auth: AuthMode,
    users: Arc<crate::users::Users>,
    scram: parking_lot::Mutex<Option<ScramExchange>>,
}

fn auth_error(e: &crate::users::ScramError) -> PgWireError {
    PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new("FATAL".into(), e.sqlstate().into(), e.to_string())))
}

fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = "15.0".to_string();
    p.date_style = "ISO, MDY".to_string();
    p.time_zone = "UTC".to_string();
    p.interval_style = "postgres".to_string();
    p.client_encoding = Some("UTF8".to_string());
    p
}

#[async_trait]
impl StartupHandler for EddyStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(startup) = &message {
            if startup.parameters.get("replication").is_some_and(|r| r != "false" && r != "0") {
                return Err(PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
                    "FATAL".into(),
                    "08P01".into(),
                    "replication connections are not supported".into(),
                ))));
            }
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            if self.auth == AuthMode::Scram {
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                *self.scram.lock() = Some(ScramExchange::new(&user, &self.users));
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(vec!["SCRAM-SHA-256".to_string()])))
                    .await?;
                return Ok(());
            }
            self.admit(client).await?;
        } else if let PgWireFrontendMessage::PasswordMessageFamily(message) = message {
            let reply = {
                let mut guard = self.scram.lock();
                let Some(exchange) = guard.as_mut() else {
                    return Err(PgWireError::InvalidSASLState);
                };
                if matches!(exchange, ScramExchange::Start { .. }) {
                    let initial = message.into_sasl_initial_response()?;
                    let data = initial.data.unwrap_or_default();
                    exchange.client_first(&initial.auth_method, &data).map(|r| (r, false))
                } else {
                    let response = message.into_sasl_response()?;
                    exchange.client_final(&response.data).map(|r| (r, true))
                }
            };
            match reply {
                Ok((bytes, false)) => {
                    client
                        .send(PgWireBackendMessage::Authentication(Authentication::SASLContinue(bytes.into())))
                        .await?;
                }
                Ok((bytes, true)) => {
                    client.send(PgWireBackendMessage::Authentication(Authentication::SASLFinal(bytes.into()))).await?;
                    self.admit(client).await?;
                }
                Err(e) => {
                    tracing::info!(error = %e, "authentication failed");
                    return Err(auth_error(&e));
                }
            }
        }
        Ok(())
    }
}

impl EddyStartup {
    /// Lets an authenticated client in: its session, cancel key and server parameters.
    async fn admit<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.connections.register(pid, secret);
        client.session_extensions().insert::<Arc<pgwire::api::ConnectionHandle>>(handle);
        client.session_extensions().insert::<pgwire::api::ConnectionGuard>(guard);
        let app = client.metadata().get("application_name").cloned().unwrap_or_default();
        client.session_extensions().insert::<Arc<Session>>(Session::new(&app));
        let probe = crate::live::ClientProbe::new(self.probe.lock().take());
        client.session_extensions().insert::<Arc<crate::live::LiveState>>(Arc::new(crate::live::LiveState::new(probe)));
        finish_authentication(client, &server_parameters()).await?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }
}

fn session_of<C: ClientInfo>(client: &C) -> Arc<Session> {
    match client.session_extensions().get::<Arc<Session>>() {
        Some(s) => s.as_ref().clone(),
        None => {
            let s = Session::new("");
            client.session_extensions().insert::<Arc<Session>>(s.clone());
            s
        }
    }
}

pub struct EddyHandler {
    engine: Arc<Engine>,
    parser: Arc<EddyQueryParser>,
}

/// True when `sql` reads the system catalogs; those statements go through the Postgres
/// compatibility rewrites (`OPERATOR(pg_catalog.~)`, `::regclass`, ...) that psql needs.
fn is_catalog_query(sql: &str) -> bool {
    let lower = sql.to_lowercase();
    lower.contains("pg_catalog")
        || lower.contains("information_schema")
        || lower.contains("pg_class")
        || lower.contains("pg_type")
        || lower.contains("pg_namespace")
        || lower.contains("::reg")
}

/// Parses a query string, with the catalog rewrites for system-catalog queries.
pub(crate) fn parse(sql: &str) -> Result<Vec<ParsedStatement>, ServerError> {
    if is_catalog_query(sql) {
        let rewritten = crate::compat::rewrite(sql);
        let sql = rewritten.as_deref().unwrap_or(sql);
        let rewriter = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new();
        if let Ok(statements) = rewriter.parse(sql) {
            return Ok(statements
                .into_iter()
                .map(|mut s| {
                    crate::compat::drop_unreachable_attribute_branches(&mut s);
                    crate::compat::rewrite_generate_subscripts(&mut s);
                    crate::compat::aggregate_scalar_subqueries(&mut s);
                    ParsedStatement { text: s.to_string(), statement: EddyStatement::Sql(Box::new(s)) }
                })
                .collect());
        }
    }
    Ok(parse_sql(sql)?)
}

#[async_trait]
impl SimpleQueryHandler for EddyHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client);
        if crate::live::is_live(query) {
            return self.simple_with_live(client, &session, query).await;
        }
        let statements = match parse(query) {
            Ok(s) => s,
            Err(e) => return Err(to_pg_error(&e, query)),
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in &statements {
            match start_copy_in(&self.engine, client, statement) {
                Ok(Some(response)) => {
                    responses.push(response);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    let PgWireError::UserError(info) = to_pg_error(&e, query) else {
                        return Err(PgWireError::ApiError(Box::new(e)));
                    };
                    responses.push(Response::Error(info));
                    break;
                }
            }
            match session.execute(&self.engine, statement, None).await {
                Ok(result) => responses.push(to_response(result, &Format::UnifiedText)?),
                Err(e) => {
                    let PgWireError::UserError(info) = to_pg_error(&e, query) else {
                        return Err(PgWireError::ApiError(Box::new(e)));
                    };
                    responses.push(Response::Error(info));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

impl EddyHandler {
    /// A simple query holding live statements (`SUBSCRIBE`, cursors): each statement in
    /// turn, stopping at the first error.
    async fn simple_with_live<C>(
        &self,
        client: &mut C,
        session: &Arc<Session>,
        query: &str,
    ) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = crate::live::split(query).map_err(|e| to_pg_error(&e, query))?;
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            let results = match statement {
                Ok(live) => {
                    vec![crate::pg_live::run(&self.engine, session, client, &live, &Format::UnifiedText, query).await]
                }
                Err(text) => match parse(&text) {
                    Err(e) => vec![Err(to_pg_error(&e, &text))],
                    Ok(parsed) => {
                        let mut results = Vec::with_capacity(parsed.len());
                        for p in &parsed {
                            let result = match session.execute(&self.engine, p, None).await {
                                Ok(r) => to_response(r, &Format::UnifiedText),
                                Err(e) => Err(to_pg_error(&e, &text)),
                            };
                            let failed = result.is_err();
                            results.push(result);
                            if failed {
                                break;
                            }
                        }
                        results
                    }
                },
            };
            for result in results {
                match result {
                    Ok(r) => responses.push(r),
                    Err(PgWireError::UserError(info)) => {
                        responses.push(Response::Error(info));
                        return Ok(responses);
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        Ok(responses)
    }
}

/// A statement prepared with `Parse`: planned once, so `Describe` knows its shape.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `SUBSCRIBE`, cursors and `FETCH`, which the SQL parser does not know.
    live: Option<crate::live::LiveStatement>,
    statement: Option<ParsedStatement>,
    /// The plan of a query or DML statement, with `$n` placeholders.
    plan: Option<Arc<LogicalPlan>>,
    param_types: Vec<Option<DataType>>,
    /// Columns of the rows it returns (queries, SHOW, ...), under their Postgres names.
    result: Option<SchemaRef>,
    /// Postgres types described in place of the ones the Arrow types map to (by parameter
    /// position, by result column name), for the few client queries that need Postgres'
    /// exact types (see [`crate::compat::described_type_overrides`]).
    param_overrides: Vec<Option<Type>>,
    column_overrides: Vec<(&'static str, Type)>,
}

pub struct EddyQueryParser {
    engine: Arc<Engine>,
}

fn single_text_column(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]))
}

#[async_trait]
impl QueryParser for EddyQueryParser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some(live) = crate::live::parse(sql).map_err(|e| to_pg_error(&e, sql))? {
            return Ok(Some(Prepared {
                live: Some(live),
                statement: None,
                plan: None,
                param_types: vec![],
                result: None,
                param_overrides: vec![],
                column_overrides: vec![],
            }));
        }
        let mut statements = parse(sql).map_err(|e| to_pg_error(&e, sql))?;
        if statements.is_empty() {
            return Ok(None);
        }
        if statements.len() > 1 {
            return Err(to_pg_error(
                &ServerError::new(
                    eddy_common::SqlState::SyntaxError,
                    "cannot insert multiple commands into a prepared statement",
                ),
                sql,
            ));
        }
        let statement = statements.remove(0);
        let (param_overrides, column_overrides) = crate::compat::described_type_overrides(sql);
        let mut prepared = Prepared {
            live: None,
            statement: None,
            plan: None,
            param_types: vec![],
            result: None,
            param_overrides,
            column_overrides,
        };
        match &statement.statement {
            EddyStatement::Sql(stmt) => match stmt.as_ref() {
                sqlparser::ast::Statement::Query(q) => {
                    let state = self.engine.state(None);
                    let plan = self.engine.plan(&state, stmt).await.map_err(|e| to_pg_error(&e, sql))?;
                    prepared.param_types = parameter_types(&plan);
                    prepared.result = Some(crate::query::result_schema(q, &plan));
                    prepared.plan = Some(Arc::new(plan));
                }
                sqlparser::ast::Statement::Insert(_)
                | sqlparser::ast::Statement::Update(_)
                | sqlparser::ast::Statement::Delete(_) => {
                    let state = self.engine.state(None);
                    let plan = self.engine.plan(&state, stmt).await.map_err(|e| to_pg_error(&e, sql))?;
                    prepared.param_types = parameter_types(&plan);
                    prepared.plan = Some(Arc::new(plan));
                }
                sqlparser::ast::Statement::ShowVariable { variable } => {
                    let name = variable.iter().map(|i| i.value.to_lowercase()).collect::<Vec<_>>().join(" ");
                    prepared.result = Some(single_text_column(&name));
                }
                _ => {}
            },
            EddyStatement::Show(eddy_planner::parser::ShowStatement::Variable(name)) if name == "jobs" => {
                let text = |n: &str| Field::new(n, DataType::Utf8, true);
                prepared.result = Some(Arc::new(Schema::new(vec![
                    Field::new("id", DataType::Int64, true),
                    text("name"),
                    text("kind"),
                    text("status"),
                    text("progress"),
                    text("statement"),
                ])));
            }
            EddyStatement::Show(eddy_planner::parser::ShowStatement::Variable(name)) => {
                let column = if name == "transaction isolation level" { "transaction_isolation" } else { name };
                prepared.result = Some(single_text_column(column));
            }
            EddyStatement::Show(_) | EddyStatement::Describe(_) | EddyStatement::Explain { .. } => {
                // Shapes known only when run; describe them as one text column.
                prepared.result = None;
            }
            _ => {}
        }
        prepared.statement = Some(statement);
        Ok(Some(prepared))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        stmt.param_types
            .iter()
            .enumerate()
            .map(|(i, t)| match (stmt.param_overrides.get(i).cloned().flatten(), t) {
                (Some(overridden), _) => Ok(overridden),
                (None, Some(t)) => arrow_pg::datatypes::into_pg_type(t),
                (None, None) => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(&self, stmt: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let Some(schema) = &stmt.result else {
            return Ok(vec![]);
        };
        let format = format.unwrap_or(&Format::UnifiedText);
        let fields = arrow_pg::datatypes::arrow_schema_to_pg_fields(schema, format, None)?;
        if stmt.column_overrides.is_empty() {
            return Ok(fields);
        }
        Ok(fields
            .into_iter()
            .enumerate()
            .map(|(i, f)| match stmt.column_overrides.iter().find(|(name, _)| *name == f.name()) {
                Some((_, t)) => FieldInfo::new(f.name().to_string(), None, None, t.clone(), format.format_for(i)),
                None => f,
            })
            .collect())
    }
}

/// `$1, $2, ...` in order, with the types DataFusion inferred from their context; a parameter
/// it left open but that is cast (`$1::int[]`) takes the cast's type, as in Postgres, so
/// drivers that send typed binary values (asyncpg) encode it right.
fn parameter_types(plan: &LogicalPlan) -> Vec<Option<DataType>> {
    let Ok(types) = plan.get_parameter_types() else {
        return vec![];
    };
    let cast = cast_parameter_types(plan);
    let mut entries: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(k, v)| {
            let v = v.or_else(|| cast.get(&k).cloned());
            k.trim_start_matches('$').parse::<usize>().ok().map(|i| (i, v))
        })
        .collect();
    entries.sort_by_key(|(i, _)| *i);
    let n = entries.last().map(|(i, _)| *i).unwrap_or(0);
    let mut out = vec![None; n];
    for (i, t) in entries {
        if i >= 1 {
            out[i - 1] = t;
        }
    }
    out
}

/// The target type of each parameter that appears directly under a cast.
fn cast_parameter_types(plan: &LogicalPlan) -> std::collections::HashMap<String, DataType> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Cast, Expr, TryCast};
    let mut found = std::collections::HashMap::new();
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let (Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field })) = e else {
                    return Ok(TreeNodeRecursion::Continue);
                };
                if let Expr::Placeholder(p) = expr.as_ref() {
                    found.entry(p.id.clone()).or_insert_with(|| field.data_type().clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
}

#[async_trait]
impl ExtendedQueryHandler for EddyHandler {
    type Statement = Prepared;
    type QueryParser = EddyQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client);
        let prepared = &portal.statement.statement;
        if let Some(live) = &prepared.live {
            return crate::pg_live::run(&self.engine, &session, client, live, &portal.result_column_format, "").await;
        }
        let Some(statement) = &prepared.statement else {
            return Ok(Response::EmptyQuery);
        };
        if let Some(response) =
            start_copy_in(&self.engine, client, statement).map_err(|e| to_pg_error(&e, &statement.text))?
        {
            return Ok(response);
        }
        let params = if portal.parameter_len() > 0 {
            Some(crate::params::decode(portal, &prepared.param_types, &prepared.param_overrides)?)
        } else {
            None
        };
        let result = session.execute(&self.engine, statement, params.as_ref()).await;
        match result {
            Ok(result) => to_response(result, &portal.result_column_format),
            Err(e) => Err(to_pg_error(&e, &statement.text)),
        }
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let server_types = self.parser.get_parameter_types(&target.statement)?;
        let n = server_types.len().max(target.parameter_types.len());
        let types = (0..n)
            .map(|i| {
                target
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .or_else(|| server_types.get(i).cloned())
                    .unwrap_or(Type::UNKNOWN)
            })
            .collect();
        if let Some(live) = &target.statement.live {
            let fields = match crate::pg_live::fetch_schema(client, live).await {
                Some(schema) => arrow_pg::datatypes::arrow_schema_to_pg_fields(&schema, &Format::UnifiedText, None)?,
                None => vec![],
            };
            return Ok(DescribeStatementResponse::new(types, fields));
        }
        let fields = self.parser.get_result_schema(&target.statement, None)?;
        Ok(DescribeStatementResponse::new(types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        target: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(live) = &target.statement.statement.live {
            let fields = match crate::pg_live::fetch_schema(client, live).await {
                Some(schema) => {
                    arrow_pg::datatypes::arrow_schema_to_pg_fields(&schema, &target.result_column_format, None)?
                }
                None => vec![],
            };
            return Ok(DescribePortalResponse::new(fields));
        }
        let fields = self.parser.get_result_schema(&target.statement.statement, Some(&target.result_column_format))?;
        Ok(DescribePortalResponse::new(fields))
    }
}

/// Unconstrained `NUMERIC` maps to `Decimal128(38, 10)` (and sums/averages of it stay at
/// precision 38); Postgres prints such values without padding zeros, so text output trims them.
fn trim_decimal_text(array: &ArrayRef) -> Option<ArrayRef> {
    let DataType::Decimal128(38, _) = array.data_type() else {
        return None;
    };
    let decimals = array.as_any().downcast_ref::<Decimal128Array>()?;
    let out: StringArray = (0..decimals.len())
        .map(|i| {
            decimals.is_valid(i).then(|| {
                let s = decimals.value_as_string(i);
                if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
            })
        })
        .collect();
    Some(Arc::new(out))
}

/// Postgres's text form of a double: shortest round-trip digits, exponent notation outside
/// 1e-4..1e15, `Infinity` / `NaN` spelled out.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let abs = v.abs();
    if abs != 0.0 && !(1e-4..1e15).contains(&abs) {
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    format!("{v}")
}

/// Postgres's text form of timestamps: fractional seconds only when present, `+00` for
/// `timestamptz` (Eddy's sessions run in UTC).
fn timestamp_text(array: &ArrayRef) -> Option<ArrayRef> {
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{TimeUnit, TimestampMicrosecondType};
    let DataType::Timestamp(_, tz) = array.data_type() else { return None };
    let micros = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None)).ok()?;
    let micros =
        micros.as_any().downcast_ref::<datafusion::arrow::array::PrimitiveArray<TimestampMicrosecondType>>()?;
    let suffix = if tz.is_some() { "+00" } else { "" };
    let out: StringArray = micros
        .iter()
        .map(|v| {
            v.and_then(|us| {
                let dt = chrono::DateTime::from_timestamp_micros(us)?.naive_utc();
                let frac = us.rem_euclid(1_000_000);
                let base = dt.format("%Y-%m-%d %H:%M:%S").to_string();
                Some(if frac == 0 {
                    format!("{base}{suffix}")
                } else {
                    let f = format!("{frac:06}");
                    format!("{base}.{}{suffix}", f.trim_end_matches('0'))
                })
            })
        })
        .collect();
    Some(Arc::new(out))
}

fn float_text(array: &ArrayRef) -> Option<ArrayRef> {
    use datafusion::arrow::array::{Float32Array, Float64Array};
    let out: StringArray = match array.data_type() {
        DataType::Float64 => {
            let a = array.as_any().downcast_ref::<Float64Array>()?;
            a.iter().map(|v| v.map(format_float)).collect()
        }
        DataType::Float32 => {
            let a = array.as_any().downcast_ref::<Float32Array>()?;
            a.iter().map(|v| v.map(|x| format_float(f64::from(x)))).collect()
        }
        _ => return None,
    };
    Some(Arc::new(out))
}

pub(crate) fn encode_batches(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    format: &Format,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(schema, format, None)?);
    let mut rows = Vec::new();
    for batch in batches {
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let mut out_fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (i, c) in columns.iter_mut().enumerate() {
            if format.format_for(i) == pgwire::api::results::FieldFormat::Text
                && let Some(text) = trim_decimal_text(c).or_else(|| float_text(c)).or_else(|| timestamp_text(c))
            {
                *c = text;
                out_fields[i] = Field::new(out_fields[i].name(), DataType::Utf8, true);
            }
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(out_fields)), columns)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        rows.extend(arrow_pg::datatypes::encode_recordbatch(fields.clone(), batch));
    }
    Ok(QueryResponse::new(fields, stream::iter(rows)))
}

/// The text form Postgres gives a column's values (`COPY`, text results), NULLs kept.
///
/// # Errors
/// When a value has no text form.
pub(crate) fn text_column(array: &ArrayRef) -> Result<ArrayRef, datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::array::BooleanArray;
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    if let Some(text) = trim_decimal_text(array).or_else(|| float_text(array)).or_else(|| timestamp_text(array)) {
        return Ok(text);
    }
    if let Some(bools) = array.as_any().downcast_ref::<BooleanArray>() {
        let out: StringArray = bools.iter().map(|v| v.map(|b| if b { "t" } else { "f" })).collect();
        return Ok(Arc::new(out));
    }
    let options = FormatOptions::default();
    let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;
    let out: StringArray =
        (0..array.len()).map(|i| array.is_valid(i).then(|| formatter.value(i).to_string())).collect();
    Ok(Arc::new(out))
}

fn to_response(result: StatementResult, format: &Format) -> PgWireResult<Response> {
    Ok(match result {
        StatementResult::Rows { schema, batches } => Response::Query(encode_batches(&schema, batches, format)?),
        StatementResult::Command { tag, rows } => {
            let mut t = Tag::new(&tag);
            if let Some(n) = rows {
                t = t.with_rows(n);
            }
            Response::Execution(t)
        }
        StatementResult::TransactionStart(tag) => Response::TransactionStart(Tag::new(&tag)),
        StatementResult::TransactionEnd(tag) => Response::TransactionEnd(Tag::new(&tag)),
        StatementResult::Empty => Response::EmptyQuery,
    })
}
