//! Eddy's runtime: incremental operators, the actors that run them, the barrier coordinator
//! and the state store.
//!
//! The unit of data is [`eddy_common::ChangeBatch`]; every channel carries
//! [`message::Message`]s. Operators implement one trait ([`operator::Operator`]); actors
//! ([`actor::Actor`]) run chains of them and own the barrier protocol; the coordinator
//! ([`coordinator`]) injects barriers and commits each epoch to the [`store::Store`] in one
//! transaction. [`runtime::Runtime`] is the facade the server uses.

pub mod actor;
pub mod build;
pub mod changefeed;
pub mod coordinator;
pub mod dispatch;
pub mod error;
pub mod expr;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod ops;
pub mod read;
pub mod runtime;
pub mod state;
pub mod store;

pub use error::{ExecError, Result};
pub use runtime::{Runtime, RuntimeConfig};
