//! Errors of connectors.

use eddy_common::{ErrorClass, ErrorDomain, SqlState};

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("unknown connector \"{0}\"; available: kafka, postgres-cdc, mysql-cdc, nexmark, datagen, blackhole")]
    UnknownConnector(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("{0}")]
    Schema(String),
    /// An external system (a Kafka broker) failed or cannot be reached.
    #[error("{0}")]
    External(String),
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The upstream system refused or is misconfigured; the message names cause and fix.
    #[error("{message}")]
    Upstream { state: SqlState, message: String },
}

impl ErrorClass for ConnectorError {
    fn sqlstate(&self) -> SqlState {
        match self {
            ConnectorError::UnknownConnector(_) | ConnectorError::InvalidOption(_) => SqlState::InvalidParameterValue,
            ConnectorError::Schema(_) => SqlState::DatatypeMismatch,
            ConnectorError::Arrow(_) => SqlState::Internal,
            ConnectorError::Upstream { state, .. } => *state,
            ConnectorError::External(_) => SqlState::IoError,
        }
    }

    fn domain(&self) -> ErrorDomain {
        match self {
            ConnectorError::Arrow(_) => ErrorDomain::System,
            ConnectorError::Upstream { .. } => ErrorDomain::External,
            ConnectorError::External(_) => ErrorDomain::External,
            _ => ErrorDomain::User,
        }
    }
}

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
