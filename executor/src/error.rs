//! Errors of the runtime: operators, state storage, the barrier protocol.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use eddy_common::{ErrorClass, ErrorDomain, SqlState};
use eddy_planner::error::{PlanError, datafusion_sqlstate};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    Arrow(#[from] ArrowError),
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("duplicate key value violates unique constraint \"{relation}_pkey\": Key ({key}) already exists")]
    UniqueViolation { relation: String, key: String },
    #[error("null value in column \"{column}\" of relation \"{relation}\" violates not-null constraint")]
    NotNull { relation: String, column: String },
    #[error("{0}")]
    InvalidInput(String),
    #[error("the dataflow is shutting down")]
    ShuttingDown,
    #[error("canceling statement due to user request")]
    Canceled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ErrorClass for ExecError {
    fn sqlstate(&self) -> SqlState {
        match self {
            ExecError::Arrow(e) => datafusion_sqlstate(&DataFusionError::ArrowError(
                Box::new(ArrowError::ComputeError(e.to_string())),
                None,
            )),
            ExecError::DataFusion(e) => datafusion_sqlstate(e),
            ExecError::Plan(e) => e.sqlstate(),
            ExecError::Storage(_) => SqlState::IoError,
            ExecError::UniqueViolation { .. } => SqlState::UniqueViolation,
            ExecError::NotNull { .. } => SqlState::NotNullViolation,
            ExecError::InvalidInput(_) => SqlState::DataException,
            ExecError::ShuttingDown => SqlState::ObjectNotInPrerequisiteState,
            ExecError::Canceled => SqlState::QueryCanceled,
            ExecError::Internal(_) => SqlState::Internal,
        }
    }

    fn domain(&self) -> ErrorDomain {
        match self {
            ExecError::Storage(_) => ErrorDomain::External,
            ExecError::Internal(_) | ExecError::ShuttingDown => ErrorDomain::System,
            ExecError::Plan(e) => e.domain(),
            _ => ErrorDomain::User,
        }
    }

    fn position(&self) -> Option<usize> {
        match self {
            ExecError::Plan(e) => e.position(),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ExecError::Plan(e) => e.hint(),
            _ => None,
        }
    }
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;
