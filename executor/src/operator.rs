//! The operator contract.
//!
//! An operator is a synchronous state machine over change batches. It has one required method,
//! [`Operator::process`]; the hooks have defaults. The actor that runs a chain of operators owns
//! everything about ordering: it aligns barriers across inputs, calls [`Operator::on_barrier`]
//! on each operator in chain order (pushing what one flushes through the rest of the chain
//! before the next one flushes), collects the state each operator hands over in
//! [`Operator::take_delta`], reports the epoch, and only then forwards the barrier. No operator
//! can get that order wrong because none of them sees it.
//!
//! # Errors
//! An operator returns an error for input it cannot handle (a type it cannot aggregate, an
//! overflow); the actor logs it, marks the relation failed and stops. Operators never panic.

use eddy_common::ChangeBatch;

use crate::error::Result;
use crate::message::Barrier;
use crate::store::RelationDelta;

/// Where an operator puts what it emits.
#[derive(Debug, Default)]
pub struct Output {
    batches: Vec<ChangeBatch>,
}

impl Output {
    pub fn push(&mut self, batch: ChangeBatch) {
        if !batch.is_empty() {
            self.batches.push(batch);
        }
    }

    pub fn take(&mut self) -> Vec<ChangeBatch> {
        std::mem::take(&mut self.batches)
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

pub trait Operator: Send {
    /// A short name for logs and `EXPLAIN ANALYZE`.
    fn name(&self) -> &'static str;

    /// Consumes one batch from input number `input`.
    fn process(&mut self, input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()>;

    /// The end of an epoch: emit whatever was held back (aggregates emit their changed groups
    /// here, so several updates to a group within an epoch leave as one).
    fn on_barrier(&mut self, _barrier: &Barrier, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    /// A watermark on `column`; returns the watermark to pass on, if any, in output columns.
    fn on_watermark(
        &mut self,
        column: usize,
        value: i64,
        _out: &mut Output,
    ) -> Result<Option<(usize, i64)>> {
        Ok(Some((column, value)))
    }

    /// State changes of the epoch that just ended, to be committed with it.
    fn take_delta(&mut self) -> Option<(eddy_common::ids::ObjectId, RelationDelta)> {
        None
    }
}
