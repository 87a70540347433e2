//! Errors of the server and their translation into Postgres `ErrorResponse`s.
//!
//! Every error reaching a client carries a SQLSTATE and, for errors about the statement text,
//! the 1-based character position of the offending token. DataFusion's messages are rewritten
//! into Postgres's wording where clients and users rely on it (`relation "x" does not exist`).

use datafusion::error::DataFusionError;
use eddy_common::{ErrorClass, ErrorDomain, SqlState};
use eddy_executor::ExecError;
use eddy_planner::PlanError;
use eddy_planner::error::datafusion_sqlstate;
use pgwire::error::{ErrorInfo, PgWireError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// An error with an explicit SQLSTATE, raised by the server itself.
    #[error("{message}")]
    Sql { state: SqlState, message: String, hint: Option<String> },
}

impl ServerError {
    pub fn new(state: SqlState, message: impl Into<String>) -> Self {
        ServerError::Sql { state, message: message.into(), hint: None }
    }

    pub fn with_hint(state: SqlState, message: impl Into<String>, hint: impl Into<String>) -> Self {
        ServerError::Sql { state, message: message.into(), hint: Some(hint.into()) }
    }

    pub fn unsupported(what: impl Into<String>) -> Self {
        ServerError::new(SqlState::FeatureNotSupported, format!("not supported: {}", what.into()))
    }
}

impl ErrorClass for ServerError {
    fn sqlstate(&self) -> SqlState {
        match self {
            ServerError::Plan(e) => e.sqlstate(),
            ServerError::Exec(e) => e.sqlstate(),
            ServerError::DataFusion(e) => datafusion_sqlstate(e),
            ServerError::Sql { state, .. } => *state,
        }
    }

    fn domain(&self) -> ErrorDomain {
        match self {
            ServerError::Plan(e) => e.domain(),
            ServerError::Exec(e) => e.domain(),
            ServerError::DataFusion(e) if datafusion_sqlstate(e) == SqlState::Internal => ErrorDomain::System,
            _ => ErrorDomain::User,
        }
    }

    fn position(&self) -> Option<usize> {
        match self {
            ServerError::Plan(e) => e.position(),
            ServerError::Exec(e) => e.position(),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ServerError::Plan(e) => e.hint(),
            ServerError::Exec(e) => e.hint(),
            ServerError::Sql { hint, .. } => hint.clone(),
            ServerError::DataFusion(_) => None,
        }
    }
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// Finds the innermost DataFusion error, skipping context wrappers.
fn root_datafusion(e: &DataFusionError) -> &DataFusionError {
    match e {
        DataFusionError::Context(_, inner) => root_datafusion(inner),
        DataFusionError::Diagnostic(_, inner) => root_datafusion(inner),
        DataFusionError::Shared(inner) => root_datafusion(inner),
        other => other,
    }
}

/// Postgres wording for the DataFusion errors users meet most; the identifier it names, if any.
fn postgres_message(e: &DataFusionError) -> (String, Option<String>, Option<SqlState>) {
    let root = root_datafusion(e);
    let text = root.to_string();
    // "Error during planning: table 'dev.public.foo' not found"
    if let Some(rest) = text.split("table '").nth(1)
        && text.contains("not found")
        && let Some(name) = rest.split('\'').next()
    {
        let short = name.rsplit('.').next().unwrap_or(name).to_string();
        return (format!("relation \"{short}\" does not exist"), Some(short), Some(SqlState::UndefinedTable));
    }
    // "Schema error: No field named foo. Valid fields are ..."
    if let Some(rest) = text.split("No field named ").nth(1) {
        // What follows the name: ".\nValid fields are ..." or ". Did you mean 'o.ts'?".
        let end = [rest.find(". "), rest.find(".\n")].into_iter().flatten().min().unwrap_or(rest.len());
        let raw = rest[..end].trim_end_matches('.');
        let name = raw.rsplit('.').next().unwrap_or(raw).trim_matches('"').to_string();
        return (format!("column \"{name}\" does not exist"), Some(name), Some(SqlState::UndefinedColumn));
    }
    if text.contains("declared as non-nullable but contains null values") {
        return ("null value violates not-null constraint".to_string(), None, Some(SqlState::NotNullViolation));
    }
    if let Some(rest) = text.split("Invalid function '").nth(1) {
        let name = rest.split('\'').next().unwrap_or(rest).to_string();
        return (format!("function {name} does not exist"), Some(name), Some(SqlState::UndefinedFunction));
    }
    let cleaned = text
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("Schema error: ")
        .trim_start_matches("This feature is not implemented: ")
        .trim_start_matches("Execution error: ")
        .trim_start_matches("Arrow error: ")
        .trim_start_matches("SQL error: ")
        .to_string();
    (cleaned, None, None)
}

/// 1-based character position of `word` as a whole identifier in `sql`, case-insensitively.
pub fn find_identifier(sql: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    let lower = sql.to_lowercase();
    let needle = word.to_lowercase();
    let bytes = lower.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = lower[from..].find(&needle) {
        let start = from + found;
        let end = start + needle.len();
        let before_ok = start == 0 || !is_ident(bytes[start - 1]);
        let after_ok = end >= bytes.len() || !is_ident(bytes[end]);
        if before_ok && after_ok {
            return Some(sql[..start.min(sql.len())].chars().count() + 1);
        }
        from = end;
    }
    None
}

/// Builds the client-facing error for `error`, raised by statement `sql`.
pub fn to_pg_error(error: &ServerError, sql: &str) -> PgWireError {
    let mut code = error.sqlstate();
    let mut position = error.position();
    let mut message = error.to_string();
    let df = match error {
        ServerError::DataFusion(e) => Some(e),
        ServerError::Plan(PlanError::DataFusion(e)) => Some(e),
        ServerError::Exec(ExecError::DataFusion(e)) => Some(e),
        ServerError::Exec(ExecError::Plan(PlanError::DataFusion(e))) => Some(e),
        _ => None,
    };
    if let Some(e) = df {
        let (m, ident, state) = postgres_message(e);
        message = m;
        if let Some(state) = state {
            code = state;
        }
        if position.is_none()
            && let Some(ident) = ident
        {
            position = find_identifier(sql, &ident);
        }
    }
    if let ServerError::Plan(PlanError::UnknownObject { name, .. }) | ServerError::Plan(PlanError::UnknownColumn(name)) =
        error
        && position.is_none()
    {
        position = find_identifier(sql, name);
    }
    match error.domain() {
        ErrorDomain::User => tracing::debug!(code = code.code(), %message, "statement failed"),
        _ => tracing::warn!(code = code.code(), %message, "statement failed"),
    }
    let mut info = ErrorInfo::new("ERROR".to_owned(), code.code().to_owned(), message);
    info.position = position.map(|p| p.to_string());
    info.hint = error.hint();
    PgWireError::UserError(Box::new(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_identifiers() {
        assert_eq!(find_identifier("SELECT ab, a FROM t", "a"), Some(12));
        assert_eq!(find_identifier("SELECT x FROM Orders", "orders"), Some(15));
        assert_eq!(find_identifier("SELECT x", "y"), None);
    }

    #[test]
    fn unknown_table_reads_like_postgres() {
        let e = ServerError::DataFusion(DataFusionError::Plan("table 'dev.public.nope' not found".into()));
        let PgWireError::UserError(info) = to_pg_error(&e, "SELECT * FROM nope") else { panic!("not a user error") };
        assert_eq!(info.code, "42P01");
        assert_eq!(info.message, "relation \"nope\" does not exist");
        assert_eq!(info.position.as_deref(), Some("15"));
    }

    #[test]
    fn unknown_column_names_the_column_not_the_suggestion() {
        for text in
            ["No field named o.nope. Did you mean 'o.ts'?", "No field named o.nope.\nValid fields are o.id, o.ts."]
        {
            let e = ServerError::DataFusion(DataFusionError::Plan(text.into()));
            let PgWireError::UserError(info) = to_pg_error(&e, "SELECT o.nope FROM o") else {
                panic!("not a user error")
            };
            assert_eq!(info.code, "42703");
            assert_eq!(info.message, "column \"nope\" does not exist");
        }
    }
}
