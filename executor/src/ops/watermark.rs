//! Generating watermarks where event time enters: after a source split (or a table).
//!
//! For each batch the operator drops rows already behind the watermark (late rows: counted,
//! never silently lost), then advances the watermark to the largest value of the watermark
//! expression (`ts - INTERVAL '5' SECOND`) over the batch, and emits it after the batch.
//!
//! # Idle splits
//! Each split of a source generates its own watermark, and readers downstream take the
//! minimum over splits; a split that receives nothing (an idle Kafka partition) would hold
//! that minimum back forever. When the connector sets an idle timeout, the splits of a source
//! share [`SplitClocks`]: at each barrier, a split that has had no row for the timeout adopts
//! the smallest watermark of the splits that are still active, so the minimum follows the
//! active ones. Rows it receives later behind that watermark are late (counted, dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use eddy_common::ChangeBatch;

use crate::error::Result;
use crate::expr::CompiledExpr;
use crate::operator::{Operator, Output};
use crate::state::{Decoder, StateReader, StateWriter};

/// The watermarks and last activity of the splits of one source, shared by their filters.
pub struct SplitClocks {
    idle_after: std::time::Duration,
    splits: parking_lot::Mutex<Vec<(i64, std::time::Instant)>>,
}

impl SplitClocks {
    pub fn new(splits: usize, idle_after: std::time::Duration) -> Self {
        let now = std::time::Instant::now();
        Self { idle_after, splits: parking_lot::Mutex::new(vec![(i64::MIN, now); splits]) }
    }

    fn saw_rows(&self, split: usize, watermark: i64) {
        if let Some(slot) = self.splits.lock().get_mut(split) {
            *slot = (watermark, std::time::Instant::now());
        }
    }

    /// For an idle split: the smallest watermark of the active splits, if any is active.
    fn follow(&self, split: usize) -> Option<i64> {
        let splits = self.splits.lock();
        let now = std::time::Instant::now();
        let (_, last) = splits.get(split)?;
        if now.duration_since(*last) < self.idle_after {
            return None;
        }
        splits
            .iter()
            .enumerate()
            .filter(|(i, (_, seen))| *i != split && now.duration_since(*seen) < self.idle_after)
            .map(|(_, (w, _))| *w)
            .min()
    }
}

pub struct WatermarkFilterOperator {
    column: usize,
    expr: CompiledExpr,
    current: i64,
    late: Arc<AtomicU64>,
    /// A watermark restored at start that downstream has not been told yet.
    unannounced: bool,
    /// The watermark the last checkpoint stored.
    checkpointed: i64,
    /// The clocks of this source's splits and this split's number, when idle splits follow
    /// the active ones.
    idle: Option<(Arc<SplitClocks>, usize)>,
}

impl WatermarkFilterOperator {
    /// # Errors
    /// When the watermark expression cannot be planned.
    pub fn new(column: usize, expr: &Expr, schema: &DFSchema, late: Arc<AtomicU64>) -> Result<Self> {
        Ok(Self {
            column,
            expr: CompiledExpr::new(expr, schema)?,
            current: i64::MIN,
            late,
            unannounced: false,
            checkpointed: i64::MIN,
            idle: None,
        })
    }

    /// Lets this split's watermark follow the other splits' while it receives nothing.
    pub fn with_idle_splits(mut self, clocks: Arc<SplitClocks>, split: usize) -> Self {
        self.idle = Some((clocks, split));
        self
    }

    /// The watermark the rows of `batch` (already stored) imply; used to resume a table's
    /// event time after a restart.
    ///
    /// # Errors
    /// When the watermark expression fails on the rows.
    pub fn observe(&mut self, batch: &datafusion::arrow::array::RecordBatch) -> Result<()> {
        let candidates = as_i64(&self.expr.evaluate(batch)?)?;
        if let Some(max) = candidates.as_primitive::<Int64Type>().iter().flatten().max()
            && max > self.current
        {
            self.current = max;
            self.unannounced = true;
        }
        Ok(())
    }
}

fn as_i64(array: &datafusion::arrow::array::ArrayRef) -> Result<datafusion::arrow::array::ArrayRef> {
    Ok(match array.data_type() {
        DataType::Date32 => cast(&cast(array, &DataType::Int32)?, &DataType::Int64)?,
        _ => cast(array, &DataType::Int64)?,
    })
}

impl Operator for WatermarkFilterOperator {
    fn name(&self) -> &'static str {
        "WatermarkFilter"
    }

    fn on_barrier(&mut self, _barrier: &crate::message::Barrier, out: &mut Output) -> Result<()> {
        if let Some((clocks, split)) = &self.idle
            && let Some(active) = clocks.follow(*split)
            && active > self.current
        {
            self.current = active;
            self.unannounced = true;
        }
        if self.unannounced {
            self.unannounced = false;
            out.push_watermark(self.column, self.current);
        }
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) -> Result<()> {
        if self.current != self.checkpointed {
            state.put(&[], self.current.to_le_bytes().to_vec());
            self.checkpointed = self.current;
        }
        Ok(())
    }

    fn restore(&mut self, state: &StateReader) -> Result<()> {
        if let Some(bytes) = state.get(&[])? {
            let value = Decoder::new(&bytes).i64()?;
            if value > self.current {
                self.current = value;
                self.unannounced = true;
            }
            self.checkpointed = value;
        }
        Ok(())
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let ts = as_i64(batch.column(self.column))?;
        let ts = ts.as_primitive::<Int64Type>();
        let current = self.current;
        let keep: BooleanArray = (0..ts.len()).map(|i| Some(ts.is_valid(i) && ts.value(i) >= current)).collect();
        let kept = keep.true_count();
        let batch = if kept == batch.num_rows() {
            batch
        } else {
            self.late.fetch_add((batch.num_rows() - kept) as u64, Ordering::Relaxed);
            batch.filter(&keep)?
        };
        if batch.is_empty() {
            return Ok(());
        }
        let candidates = as_i64(&self.expr.evaluate(batch.data())?)?;
        let max = candidates.as_primitive::<Int64Type>().iter().flatten().max();
        if let Some((clocks, split)) = &self.idle {
            clocks.saw_rows(*split, max.unwrap_or(self.current).max(self.current));
        }
        out.push(batch);
        if let Some(max) = max
            && max > self.current
        {
            self.current = max;
            out.push_watermark(self.column, max);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn drops_and_counts_late_rows() -> Result<()> {
        let late = Arc::new(AtomicU64::new(0));
        let input = ChangeBatch::from_pretty("I\n + 100\n + 90\n + 120");
        let schema = DFSchema::try_from(input.schema().as_ref().clone())?;
        let mut op = WatermarkFilterOperator::new(0, &(col("c0") - lit(10i64)), &schema, late.clone())?;
        let mut out = Output::default();
        op.process(0, input, &mut out)?;
        op.process(0, ChangeBatch::from_pretty("I\n + 105\n + 111\n + 130"), &mut out)?;
        let items = out.take();
        let text: Vec<String> = items
            .iter()
            .map(|e| match e {
                crate::operator::Emitted::Data(b) => b.to_pretty(),
                crate::operator::Emitted::Watermark { column, value } => format!("wm {column} {value}\n"),
            })
            .collect();
        assert_eq!(text.concat(), "+ 100\n+ 90\n+ 120\nwm 0 110\n+ 111\n+ 130\nwm 0 120\n");
        assert_eq!(late.load(Ordering::Relaxed), 1);
        Ok(())
    }
}
