//! Sinks: where a stream leaves Eddy. `blackhole` counts and discards (for benchmarks).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eddy_common::ChangeBatch;

use crate::error::Result;
use crate::operator::{Operator, Output};

pub struct BlackholeSink {
    rows: Arc<AtomicU64>,
}

impl BlackholeSink {
    pub fn new(rows: Arc<AtomicU64>) -> Self {
        Self { rows }
    }
}

impl Operator for BlackholeSink {
    fn name(&self) -> &'static str {
        "BlackholeSink"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, _out: &mut Output) -> Result<()> {
        self.rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn on_watermark(&mut self, _column: usize, _value: i64, _out: &mut Output) -> Result<()> {
        Ok(())
    }
}
