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
//! # State and checkpoints
//! A stateful operator keeps its state in memory and makes it durable through two hooks: at a
//! checkpoint barrier [`Operator::checkpoint`] writes what changed since the previous
//! checkpoint, and after a restart [`Operator::restore`] reads it back before any input
//! arrives. An operator whose state is not restored this way must not hold any: a restart
//! would silently forget it. [`Operator::checkpoint_committed`] tells operators that talk to
//! external systems (sinks) that a checkpoint is durable.
//!
//! # Errors
//! An operator returns an error for input it cannot handle (a type it cannot aggregate, an
//! overflow); the actor logs it, marks the relation failed and stops. Operators never panic.

use eddy_common::ChangeBatch;

use eddy_common::ids::Epoch;

use crate::error::Result;
use crate::message::Barrier;
use crate::state::{StateReader, StateWriter};
use crate::store::RelationDelta;

/// What an operator emits, in order: change batches and watermarks.
#[derive(Debug)]
pub enum Emitted {
    Data(ChangeBatch),
    /// Event time on output column `column` reached `value`.
    Watermark {
        column: usize,
        value: i64,
    },
}

/// Where an operator puts what it emits.
#[derive(Debug, Default)]
pub struct Output {
    items: Vec<Emitted>,
}

impl Output {
    pub fn push(&mut self, batch: ChangeBatch) {
        if !batch.is_empty() {
            self.items.push(Emitted::Data(batch));
        }
    }

    pub fn push_watermark(&mut self, column: usize, value: i64) {
        self.items.push(Emitted::Watermark { column, value });
    }

    pub fn take(&mut self) -> Vec<Emitted> {
        std::mem::take(&mut self.items)
    }

    /// Only the batches (for tests of operators that emit no watermarks).
    pub fn take_batches(&mut self) -> Vec<ChangeBatch> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Emitted::Data(b) => Some(b),
                Emitted::Watermark { .. } => None,
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The in-memory state of one operator instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    pub rows: u64,
    pub bytes: u64,
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

    /// A watermark on input column `column`. The operator emits what the watermark completes
    /// (closed windows) and the watermarks of its output columns into `out`; by default the
    /// watermark passes through on the same column.
    fn on_watermark(&mut self, column: usize, value: i64, out: &mut Output) -> Result<()> {
        out.push_watermark(column, value);
        Ok(())
    }

    /// Rows and bytes the operator holds in memory, for operators whose state grows with
    /// their input (joins, top-N, aggregations). Reported at every barrier.
    fn state_size(&self) -> Option<StateSize> {
        None
    }

    /// True for operators whose inputs carry different columns (joins): the actor then aligns
    /// watermarks per input, not across inputs, and calls [`Operator::on_input_watermark`].
    fn watermarks_per_input(&self) -> bool {
        false
    }

    /// A watermark on column `column` of input `input`, aligned over that input's channels.
    fn on_input_watermark(&mut self, _input: usize, column: usize, value: i64, out: &mut Output) -> Result<()> {
        self.on_watermark(column, value, out)
    }

    /// State changes of the epoch that just ended, to be committed with it.
    fn take_delta(&mut self) -> Option<(eddy_common::ids::ObjectId, RelationDelta)> {
        None
    }

    /// A checkpoint barrier passed (after [`Operator::on_barrier`]): write every state change
    /// since the previous checkpoint. Called at no other time, so the operator may batch its
    /// changes across the epochs in between.
    fn checkpoint(&mut self, _state: &mut StateWriter<'_>) -> Result<()> {
        Ok(())
    }

    /// Loads the state the last checkpoint wrote, once, before any input (only when the job
    /// restarts from a checkpoint).
    fn restore(&mut self, _state: &StateReader) -> Result<()> {
        Ok(())
    }

    /// Where this operator's checkpointed state lives, given to every operator before any
    /// input (fresh or restored). Operators that evict clean state under the memory limit
    /// keep it to read evicted entries back.
    fn attach_state(&mut self, _state: StateReader) {}

    /// True for operators that want [`Operator::checkpoint_committed`] calls.
    fn wants_commit_notices(&self) -> bool {
        false
    }

    /// The checkpoint of `epoch`, and everything before it, is durable.
    fn checkpoint_committed(&mut self, _epoch: Epoch) -> Result<()> {
        Ok(())
    }
}
