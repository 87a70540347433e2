//! The operators. Each file holds one operator (or a family of small stateless ones) with its
//! unit tests on pretty-printed change batches.

pub mod agg;
pub mod join;
pub mod kafka_sink;
pub mod materialize;
pub mod session;
pub mod sink;
pub mod stateless;
pub mod topn;
pub mod unnest;
pub mod versioned_join;
pub mod watermark;
