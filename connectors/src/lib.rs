//! Eddy's connectors: where rows come from and where they go.
//!
//! A source is a *transport* (nexmark, datagen, Kafka; CDC later) that produces Arrow
//! batches for a split; the runtime turns them into insert-only change batches, stamps
//! barriers between them and records each split's position with every checkpoint. Options
//! are validated when the source is created, and unknown options are refused with the list
//! of valid ones.
//!
//! # Fault tolerance
//! A reader's [`SourceReader::position`] says where it is; a reader created with that
//! position continues with exactly the next row. Generators are deterministic, so replaying
//! from a position reproduces the same rows.

pub mod cdc;
pub mod datagen;
pub mod error;
pub mod kafka;
pub mod nexmark;
pub mod source;

pub use error::{ConnectorError, Result};
pub use source::{
    SourceFormat, SourceInfo, SourceReader, SourceSpec, SourceStats, create_reader, drop_source, idle_timeout,
    validate_source,
};
