//! Change data capture: tables that follow an upstream database.
//!
//! `postgres-cdc` reads a table's initial contents from a snapshot exported with its
//! replication slot, then the slot's pgoutput stream, and sends changes *by key* (see
//! [`crate::SourceReader`]): the table it feeds turns them into exact updates. Its position
//! is the commit LSN of the last transaction handed out; the slot is acknowledged up to a
//! position only once the checkpoint holding it is durable, so after a crash the slot replays
//! what was not absorbed and the reader skips what was.
//!
//! `mysql-cdc` does the same for MySQL/MariaDB: a consistent-snapshot read of the table, then
//! the binlog (ROW format) from the position matching that snapshot; its position is the
//! binlog file and offset after the last transaction handed out.

pub mod binlog;
pub mod my_values;
pub mod my_wire;
pub mod mysql;
mod pg_slot;
pub mod pg_values;
pub mod pg_wire;
pub mod pgoutput;
pub mod postgres;
pub mod progress;
mod sha1;

/// Schema metadata on a single-row change batch: the comma-separated indices of columns whose
/// value the table must keep from its current row (an UPDATE left an out-of-line TOAST value
/// unchanged, and Postgres did not send it).
pub const KEEP_COLUMNS_METADATA: &str = "eddy.keep_columns";
