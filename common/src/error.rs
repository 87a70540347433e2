//! What every error in Eddy carries besides its message: a Postgres SQLSTATE and a domain.
//!
//! Each crate has its own `thiserror` enum; they all implement [`ErrorClass`] so the pgwire
//! front end can answer with the right SQLSTATE without knowing the crate that failed.

/// Who is at fault, which decides how the error is logged and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// The statement or its data is wrong; the user must change something.
    User,
    /// A bug or an unexpected state inside Eddy.
    System,
    /// Something outside Eddy failed (disk, network, an upstream database); a retry may help.
    External,
}

/// Postgres SQLSTATE codes Eddy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    SyntaxError,
    UndefinedTable,
    UndefinedColumn,
    UndefinedObject,
    UndefinedFunction,
    DatatypeMismatch,
    FeatureNotSupported,
    DuplicateTable,
    DuplicateObject,
    DependentObjectsStillExist,
    UniqueViolation,
    NotNullViolation,
    InvalidParameterValue,
    InvalidTextRepresentation,
    DivisionByZero,
    NumericValueOutOfRange,
    DataException,
    QueryCanceled,
    InvalidCursorName,
    InvalidPassword,
    ProtocolViolation,
    ObjectNotInPrerequisiteState,
    WrongObjectType,
    InvalidTableDefinition,
    ActiveSqlTransaction,
    Internal,
    IoError,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::SyntaxError => "42601",
            SqlState::UndefinedTable => "42P01",
            SqlState::UndefinedColumn => "42703",
            SqlState::UndefinedObject => "42704",
            SqlState::UndefinedFunction => "42883",
            SqlState::DatatypeMismatch => "42804",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::DuplicateTable => "42P07",
            SqlState::DuplicateObject => "42710",
            SqlState::DependentObjectsStillExist => "2BP01",
            SqlState::UniqueViolation => "23505",
            SqlState::NotNullViolation => "23502",
            SqlState::InvalidParameterValue => "22023",
            SqlState::InvalidTextRepresentation => "22P02",
            SqlState::DivisionByZero => "22012",
            SqlState::NumericValueOutOfRange => "22003",
            SqlState::DataException => "22000",
            SqlState::QueryCanceled => "57014",
            SqlState::InvalidCursorName => "34000",
            SqlState::InvalidPassword => "28P01",
            SqlState::ProtocolViolation => "08P01",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::WrongObjectType => "42809",
            SqlState::InvalidTableDefinition => "42P16",
            SqlState::ActiveSqlTransaction => "25001",
            SqlState::Internal => "XX000",
            SqlState::IoError => "58030",
        }
    }
}

/// Implemented by every crate's error type.
pub trait ErrorClass {
    fn sqlstate(&self) -> SqlState;
    fn domain(&self) -> ErrorDomain;
    /// Byte offset into the statement text of the offending token, when known.
    fn position(&self) -> Option<usize> {
        None
    }
    /// What to write instead, when there is a known alternative.
    fn hint(&self) -> Option<String> {
        None
    }
}
