//! A client session: its settings and transaction state, and the dispatch of each statement to
//! the code that runs it.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ParamValues;
use eddy_common::SqlState;
use eddy_planner::parser::{EddyStatement, ParsedStatement, literal_to_string};
use parking_lot::Mutex;
use sqlparser::ast::{Set, Statement};

use crate::engine::Engine;
use crate::error::{Result, ServerError};
use crate::{ddl, dml, query, show};

/// The outcome of one statement, independent of the wire protocol.
#[derive(Debug)]
pub enum StatementResult {
    Rows { schema: SchemaRef, batches: Vec<RecordBatch> },
    Command { tag: String, rows: Option<usize> },
    TransactionStart(String),
    TransactionEnd(String),
    Empty,
}

impl StatementResult {
    pub fn command(tag: &str) -> Self {
        StatementResult::Command { tag: tag.to_string(), rows: None }
    }

    /// A one-column text result, for `SHOW` and friends.
    pub fn single_column(name: &str, values: Vec<String>) -> Result<Self> {
        let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])
            .map_err(|e| ServerError::new(SqlState::Internal, e.to_string()))?;
        Ok(StatementResult::Rows { schema, batches: vec![batch] })
    }
}

/// Per-connection state.
pub struct Session {
    settings: Mutex<HashMap<String, String>>,
    in_transaction: Mutex<bool>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// Settings clients set that have no default in [`default_settings`] (they are accepted and
/// remembered; `SHOW` answers them once set).
const SETTABLE: &[&str] = &[
    "work_mem",
    "maintenance_work_mem",
    "idle_session_timeout",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
    "synchronous_commit",
    "enable_seqscan",
    "geqo",
    "session_replication_role",
    "log_statement",
    "cursor_tuple_fraction",
    "default_transaction_deferrable",
    "transaction_deferrable",
    "session_authorization",
    "role",
    "xmloption",
    "plan_cache_mode",
];

/// Settings every session starts with, and that `SHOW` answers.
pub fn default_settings(application_name: &str) -> HashMap<String, String> {
    let mut s = HashMap::new();
    for (k, v) in [
        ("server_version", "15.0"),
        ("server_version_num", "150000"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("datestyle", "ISO, MDY"),
        ("intervalstyle", "postgres"),
        ("timezone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("transaction isolation level", "read committed"),
        ("transaction_isolation", "read committed"),
        ("default_transaction_isolation", "read committed"),
        ("transaction_read_only", "off"),
        ("default_transaction_read_only", "off"),
        ("search_path", "public"),
        ("extra_float_digits", "1"),
        ("max_identifier_length", "63"),
        ("max_index_keys", "32"),
        ("statement_timeout", "0"),
        ("lock_timeout", "0"),
        ("idle_in_transaction_session_timeout", "0"),
        ("jit", "off"),
        ("bytea_output", "hex"),
        ("is_superuser", "on"),
        ("lc_collate", "C"),
        ("lc_ctype", "C"),
        ("lc_messages", "C"),
        ("lc_monetary", "C"),
        ("lc_numeric", "C"),
        ("lc_time", "C"),
        ("row_security", "on"),
        ("client_min_messages", "notice"),
        ("in_hot_standby", "off"),
    ] {
        s.insert(k.to_string(), v.to_string());
    }
    s.insert("application_name".into(), application_name.to_string());
    s
}

impl Session {
    pub fn new(application_name: &str) -> Arc<Self> {
        Arc::new(Self { settings: Mutex::new(default_settings(application_name)), in_transaction: Mutex::new(false) })
    }

    pub fn setting(&self, name: &str) -> Option<String> {
        self.settings.lock().get(&name.to_lowercase()).cloned()
    }

    pub fn set(&self, name: &str, value: String) {
        self.settings.lock().insert(name.to_lowercase(), value);
    }

    pub fn all_settings(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.settings.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort();
        v
    }

    /// Runs one statement.
    ///
    /// # Errors
    /// Whatever the statement's execution reports; nothing is changed when it fails.
    pub async fn execute(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        statement: &ParsedStatement,
        params: Option<&ParamValues>,
    ) -> Result<StatementResult> {
        match &statement.statement {
            EddyStatement::CreateTable(t) => ddl::create_table(engine, self, t, &statement.text, None).await,
            EddyStatement::CreateSource(s) => ddl::create_source(engine, self, s, &statement.text, None).await,
            EddyStatement::CreateMaterializedView(mv) => {
                ddl::create_materialized_view(engine, self, mv, &statement.text, None).await
            }
            EddyStatement::CreateView(v) => ddl::create_view(engine, self, v, &statement.text, None).await,
            EddyStatement::CreateSink(k) => ddl::create_sink(engine, self, k, &statement.text, None).await,
            EddyStatement::Drop(d) => ddl::drop(engine, d).await,
            EddyStatement::Show(s) => show::show(engine, self, s).await,
            EddyStatement::Describe(name) => show::describe(engine, name),
            EddyStatement::Explain { statement: inner, analyze } => show::explain(engine, self, inner, *analyze).await,
            EddyStatement::Flush => {
                engine.runtime.flush().await?;
                Ok(StatementResult::command("FLUSH"))
            }
            EddyStatement::Sql(stmt) => self.execute_sql(engine, stmt, &statement.text, params).await,
        }
    }

    async fn execute_sql(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        statement: &Statement,
        text: &str,
        params: Option<&ParamValues>,
    ) -> Result<StatementResult> {
        match statement {
            Statement::Query(q) => query::select(engine, q, statement, params).await,
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => {
                dml::execute(engine, statement, params).await
            }
            Statement::StartTransaction { .. } => {
                *self.in_transaction.lock() = true;
                Ok(StatementResult::TransactionStart("BEGIN".into()))
            }
            Statement::Commit { .. } => {
                *self.in_transaction.lock() = false;
                Ok(StatementResult::TransactionEnd("COMMIT".into()))
            }
            Statement::Rollback { savepoint: Some(_), .. } => Ok(StatementResult::command("ROLLBACK")),
            Statement::Rollback { .. } => {
                *self.in_transaction.lock() = false;
                Ok(StatementResult::TransactionEnd("ROLLBACK".into()))
            }
            Statement::Savepoint { .. } => Ok(StatementResult::command("SAVEPOINT")),
            Statement::ReleaseSavepoint { .. } => Ok(StatementResult::command("RELEASE")),
            Statement::Set(set) => self.set_statement(set),
            Statement::Deallocate { .. } => Ok(StatementResult::command("DEALLOCATE")),
            Statement::Discard { .. } => Ok(StatementResult::command("DISCARD")),
            Statement::ShowVariable { variable } => {
                let name = variable.iter().map(|i| i.value.to_lowercase()).collect::<Vec<_>>().join(" ");
                show::show_variable(self, &name)
            }
            Statement::Explain { statement: inner, .. } => {
                let planned = EddyStatement::Sql(inner.clone());
                show::explain(engine, self, &planned, false).await
            }
            Statement::CreateTable(_) => Err(ServerError::with_hint(
                SqlState::FeatureNotSupported,
                "not supported: this form of CREATE TABLE",
                "write CREATE TABLE name (columns ...) and fill it with INSERT ... SELECT",
            )),
            other => {
                let kind = other.to_string();
                let kind = kind.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                let _ = text;
                Err(ServerError::unsupported(format!("statement {kind}")))
            }
        }
    }

    fn set_statement(&self, set: &Set) -> Result<StatementResult> {
        match set {
            Set::SingleAssignment { variable, values, .. } => {
                let name = variable.to_string().to_lowercase();
                // Postgres accepts any dotted name (extension and application settings); any
                // other name must be a setting Eddy knows.
                if !name.contains('.') && self.setting(&name).is_none() && !SETTABLE.contains(&name.as_str()) {
                    return Err(ServerError::new(
                        SqlState::UndefinedObject,
                        format!("unrecognized configuration parameter \"{name}\""),
                    ));
                }
                let value = values
                    .iter()
                    .map(|v| literal_to_string(v).unwrap_or_else(|| v.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.set(&name, value);
                Ok(StatementResult::command("SET"))
            }
            Set::SetTimeZone { value, .. } => {
                let v = literal_to_string(value).unwrap_or_else(|| value.to_string());
                self.set("timezone", v);
                Ok(StatementResult::command("SET"))
            }
            Set::SetNames { .. } | Set::SetNamesDefault {} => Ok(StatementResult::command("SET")),
            Set::SetTransaction { .. } | Set::SetSessionParam(_) => Ok(StatementResult::command("SET")),
            other => Err(ServerError::unsupported(format!("{other}"))),
        }
    }
}
