//! Errors raised while parsing, binding and planning a statement.

use datafusion::error::DataFusionError;
use eddy_common::{ErrorClass, ErrorDomain, SqlState};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{message}")]
    Parse { message: String, position: Option<usize> },
    #[error("{kind} \"{name}\" does not exist")]
    UnknownObject { kind: &'static str, name: String },
    #[error("column \"{0}\" does not exist")]
    UnknownColumn(String),
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("\"{name}\" is a {actual}, not a {expected}")]
    WrongObjectKind { name: String, actual: &'static str, expected: &'static str },
    #[error("cannot drop {kind} {name} because other objects depend on it: {dependents}")]
    HasDependents { kind: &'static str, name: String, dependents: String },
    #[error("{0}")]
    TypeMismatch(String),
    #[error("not supported: {what}")]
    Unsupported { what: String, hint: Option<String> },
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl PlanError {
    pub fn unsupported(what: impl Into<String>) -> Self {
        PlanError::Unsupported { what: what.into(), hint: None }
    }

    pub fn unsupported_with_hint(what: impl Into<String>, hint: impl Into<String>) -> Self {
        PlanError::Unsupported { what: what.into(), hint: Some(hint.into()) }
    }
}

/// Classifies a DataFusion planning error by its message, since DataFusion has no codes.
pub fn datafusion_sqlstate(e: &DataFusionError) -> SqlState {
    match e {
        DataFusionError::SQL(_, _) => SqlState::SyntaxError,
        DataFusionError::SchemaError(inner, _) => {
            let text = inner.to_string();
            if text.contains("No field named") || text.contains("not found") {
                SqlState::UndefinedColumn
            } else {
                SqlState::SyntaxError
            }
        }
        DataFusionError::NotImplemented(_) => SqlState::FeatureNotSupported,
        DataFusionError::Plan(msg) => {
            if msg.contains("invalid window column") {
                SqlState::DatatypeMismatch
            } else if msg.contains("invalid window") {
                SqlState::InvalidParameterValue
            } else if msg.contains("table") && msg.contains("not found") {
                SqlState::UndefinedTable
            } else if msg.contains("Invalid function") || msg.contains("No function matches") {
                SqlState::UndefinedFunction
            } else if msg.contains("Cannot infer common")
                || msg.contains("Cannot coerce")
                || msg.contains("type")
                || msg.contains("Type")
            {
                SqlState::DatatypeMismatch
            } else {
                SqlState::SyntaxError
            }
        }
        DataFusionError::ArrowError(inner, _) => {
            let text = inner.to_string();
            if text.contains("Divide by zero") {
                SqlState::DivisionByZero
            } else if text.contains("overflow") {
                SqlState::NumericValueOutOfRange
            } else if text.contains("Cast error") || text.contains("Parser error") {
                SqlState::InvalidTextRepresentation
            } else {
                SqlState::DataException
            }
        }
        DataFusionError::Execution(msg) => {
            if msg.contains("not supported:") {
                SqlState::FeatureNotSupported
            } else if msg.contains("Divide by zero") || msg.contains("division by zero") {
                SqlState::DivisionByZero
            } else {
                SqlState::DataException
            }
        }
        DataFusionError::Context(_, inner) => datafusion_sqlstate(inner),
        DataFusionError::Diagnostic(_, inner) => datafusion_sqlstate(inner),
        DataFusionError::Shared(inner) => datafusion_sqlstate(inner),
        DataFusionError::Collection(errors) => errors.first().map(datafusion_sqlstate).unwrap_or(SqlState::Internal),
        _ => SqlState::Internal,
    }
}

impl ErrorClass for PlanError {
    fn sqlstate(&self) -> SqlState {
        match self {
            PlanError::Parse { .. } => SqlState::SyntaxError,
            PlanError::UnknownObject { kind, .. } => {
                if *kind == "function" {
                    SqlState::UndefinedFunction
                } else {
                    SqlState::UndefinedTable
                }
            }
            PlanError::UnknownColumn(_) => SqlState::UndefinedColumn,
            PlanError::AlreadyExists { .. } => SqlState::DuplicateTable,
            PlanError::WrongObjectKind { .. } => SqlState::WrongObjectType,
            PlanError::HasDependents { .. } => SqlState::DependentObjectsStillExist,
            PlanError::TypeMismatch(_) => SqlState::DatatypeMismatch,
            PlanError::Unsupported { .. } => SqlState::FeatureNotSupported,
            PlanError::InvalidParameter(_) => SqlState::InvalidParameterValue,
            PlanError::DataFusion(e) => datafusion_sqlstate(e),
            PlanError::Internal(_) => SqlState::Internal,
        }
    }

    fn domain(&self) -> ErrorDomain {
        match self {
            PlanError::Internal(_) => ErrorDomain::System,
            PlanError::DataFusion(e) if datafusion_sqlstate(e) == SqlState::Internal => ErrorDomain::System,
            _ => ErrorDomain::User,
        }
    }

    fn position(&self) -> Option<usize> {
        match self {
            PlanError::Parse { position, .. } => *position,
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            PlanError::Unsupported { hint, .. } => hint.clone(),
            PlanError::HasDependents { .. } => Some("Use DROP ... CASCADE to drop the dependent objects too.".into()),
            _ => None,
        }
    }
}

pub type Result<T, E = PlanError> = std::result::Result<T, E>;
