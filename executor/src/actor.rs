//! The actor: one parallel instance of a fragment, running its operator chain on a tokio task.
//!
//! ```text
//!   inputs (aligned) ──▶ op 0 ──▶ op 1 ──▶ … ──▶ op n ──▶ dispatcher ──▶ downstream actors
//!   or a source split ─┘                                  └─▶ coordinator: epoch done + deltas
//! ```
//!
//! The actor owns the barrier protocol. When a barrier has arrived on every input it calls
//! `on_barrier` on each operator in order, pushing what each one flushes through the rest of
//! the chain; then it collects state deltas, applies the barrier's mutation, forwards the
//! barrier and reports the epoch to the coordinator. Inputs that delivered the barrier early
//! are not read until the others catch up, so nothing of the next epoch mixes in.
//!
//! At a checkpoint barrier the actor also collects each operator's state changes and its
//! source split's position; they are committed with the epoch (see [`crate::state`]). Once the
//! coordinator says a checkpoint is durable, the actor tells the source split and the
//! operators that asked for it.
//!
//! Watermarks are aligned too: the actor's watermark on a column is the minimum over its input
//! channels, and it moves only when that minimum does.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use eddy_common::ChangeBatch;
use eddy_common::ids::{Epoch, ObjectId};
use eddy_connectors::{SourceReader, SourceStats};
use tokio::sync::{mpsc, oneshot, watch};

use crate::dispatch::{Dispatcher, Edge, partition_of_rows};
use crate::error::{ExecError, Result};
use crate::message::{ActorId, Barrier, Message, Mutation};
use crate::metrics::Metrics;
use crate::operator::{Emitted, Operator, Output};
use crate::state::{SOURCE_POSITION, StateEntry, StateScope, StateWriter};
use crate::store::{RelationDelta, RowCodec, Snapshot};

/// What an actor tells the coordinator.
#[derive(Debug)]
pub enum ActorReport {
    /// The actor processed the barrier of `epoch`; these are its state changes of the epoch.
    Collected {
        actor: ActorId,
        epoch: Epoch,
        deltas: Vec<(ObjectId, RelationDelta)>,
        /// Operator state changes and the source position (checkpoint barriers only), for the
        /// job's state table.
        state: Vec<StateEntry>,
        /// When each source chunk of the epoch was read, for freshness measurements.
        chunk_times: Vec<std::time::Instant>,
    },
    /// The actor stopped with an error.
    Failed { actor: ActorId, job: ObjectId, error: String },
}

/// One input channel and the logical input (for joins and unions) it feeds.
pub struct Input {
    pub index: usize,
    pub receiver: mpsc::Receiver<Message>,
}

/// A snapshot read that enters the stream before any live change: how a new view catches up
/// with the rows its input already has.
pub struct Backfill {
    pub relation: ObjectId,
    pub codec: RowCodec,
    pub snapshot: oneshot::Receiver<Snapshot>,
    /// When the upstream relation is split over several actors by these columns, this actor
    /// takes only the snapshot rows of its own partition `(columns, parallelism, index)`.
    pub partition: Option<(Vec<usize>, usize, usize)>,
}

/// A source split read by this actor, between the barriers the coordinator injects.
pub struct SourceInput {
    pub reader: Box<dyn SourceReader>,
    pub stats: Arc<SourceStats>,
    /// Reading starts once this is true: while the catalog is being restored after a restart,
    /// sources wait until every view that reads them is attached again.
    pub open: watch::Receiver<bool>,
}

/// Where the actor learns that checkpoints became durable.
pub type CommittedEpochs = watch::Receiver<Epoch>;

pub struct Actor {
    pub id: ActorId,
    /// The catalog object this actor works for (a table, view or sink).
    pub job: ObjectId,
    pub inputs: Vec<Input>,
    pub source: Option<SourceInput>,
    pub chain: Vec<Box<dyn Operator>>,
    pub dispatcher: Dispatcher,
    pub backfill: Option<Backfill>,
    /// When this actor emits a stored relation's changes: which relation, and its index among
    /// that relation's actors (to pick its edges from `Mutation::AddOutputs`).
    pub relation_output: Option<(ObjectId, usize)>,
    pub reports: mpsc::UnboundedSender<ActorReport>,
    pub metrics: Arc<Metrics>,
    /// The last watermark sent downstream per output column.
    pub sent_watermarks: HashMap<usize, i64>,
    /// This actor's key range in its job's state table (operator position 0).
    pub state_scope: StateScope,
    pub committed: CommittedEpochs,
}

struct InputState {
    index: usize,
    receiver: mpsc::Receiver<Message>,
    blocked: bool,
    closed: bool,
    watermarks: HashMap<usize, i64>,
}

const BACKFILL_BATCH_ROWS: usize = 4096;

fn upstream_gone() -> ExecError {
    ExecError::Internal("an upstream actor stopped unexpectedly (it failed)".into())
}

enum Next {
    Message(usize, Option<Message>),
    Chunk(Result<Option<ChangeBatch>, eddy_connectors::ConnectorError>),
    /// A checkpoint became durable.
    Committed,
    /// The source may start reading.
    Opened,
}

impl Actor {
    /// Runs until stopped by a barrier or until an operator fails.
    pub async fn run(mut self) {
        use futures::FutureExt;
        let id = self.id;
        let job = self.job;
        let reports = self.reports.clone();
        // Operators do not panic, but a dependency might (a damaged page in the store): the
        // job then fails like on any error instead of leaving its epoch open forever.
        let outcome = std::panic::AssertUnwindSafe(self.run_inner()).catch_unwind().await;
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("internal error (panic): {what}")
            }
        };
        tracing::error!(actor = id, job = job.0, %error, "actor failed");
        let _ = reports.send(ActorReport::Failed { actor: id, job, error });
    }

    async fn run_inner(&mut self) -> Result<()> {
        if let Some(backfill) = self.backfill.take() {
            self.run_backfill(backfill).await?;
        }
        let mut inputs: Vec<InputState> = std::mem::take(&mut self.inputs)
            .into_iter()
            .map(|i| InputState {
                index: i.index,
                receiver: i.receiver,
                blocked: false,
                closed: false,
                watermarks: HashMap::new(),
            })
            .collect();
        let mut source = self.source.take();
        let mut source_done = false;
        // Source positions of checkpoints not yet known to be durable.
        let mut unacked_positions: VecDeque<(Epoch, Vec<u8>)> = VecDeque::new();
        let wants_commits = source.is_some() || self.chain.iter().any(|op| op.wants_commit_notices());
        let mut committed = self.committed.clone();
        let mut chunk_times: Vec<std::time::Instant> = Vec::new();
        let mut pending_barrier: Option<Barrier> = None;
        let mut emitted_watermarks: HashMap<usize, i64> = HashMap::new();
        let mut per_input_watermarks: HashMap<(usize, usize), i64> = HashMap::new();
        let mut rotate = 0usize;
        loop {
            let poll_inputs = poll_fn(|cx| {
                let n = inputs.len();
                let mut any_open = false;
                for k in 0..n {
                    let i = (rotate + k) % n;
                    let input = &mut inputs[i];
                    if input.closed {
                        continue;
                    }
                    any_open = true;
                    if input.blocked {
                        continue;
                    }
                    if let Poll::Ready(m) = input.receiver.poll_recv(cx) {
                        return Poll::Ready(Some((i, m)));
                    }
                }
                if any_open { Poll::Pending } else { Poll::Ready(None) }
            });
            let next = match source.as_mut() {
                Some(s) if !source_done => {
                    let open = *s.open.borrow();
                    tokio::select! {
                        biased;
                        m = poll_inputs => match m {
                            Some((i, m)) => Next::Message(i, m),
                            None => return Err(upstream_gone()),
                        },
                        Ok(()) = committed.changed(), if wants_commits => Next::Committed,
                        Ok(()) = s.open.changed(), if !open => Next::Opened,
                        chunk = s.reader.next_chunk(), if open => Next::Chunk(chunk),
                    }
                }
                _ => {
                    tokio::select! {
                        biased;
                        m = poll_inputs => match m {
                            Some((i, m)) => Next::Message(i, m),
                            None => return Err(upstream_gone()),
                        },
                        Ok(()) = committed.changed(), if wants_commits => Next::Committed,
                    }
                }
            };
            rotate = rotate.wrapping_add(1);
            let (i, message) = match next {
                Next::Chunk(Ok(Some(changes))) => {
                    if let Some(s) = &source {
                        s.stats.add_rows(changes.num_rows() as u64);
                    }
                    chunk_times.push(std::time::Instant::now());
                    self.push(0, 0, vec![Emitted::Data(changes)]).await?;
                    continue;
                }
                Next::Chunk(Ok(None)) => {
                    source_done = true;
                    if let Some(s) = &source {
                        s.stats.finish();
                    }
                    continue;
                }
                Next::Opened => continue,
                Next::Committed => {
                    let durable = *committed.borrow_and_update();
                    for op in self.chain.iter_mut().filter(|op| op.wants_commit_notices()) {
                        op.checkpoint_committed(durable)?;
                    }
                    let mut newest = None;
                    while unacked_positions.front().is_some_and(|(e, _)| *e <= durable) {
                        newest = unacked_positions.pop_front();
                    }
                    if let (Some(s), Some((_, position))) = (source.as_mut(), newest) {
                        s.reader.checkpoint_committed(&position);
                    }
                    continue;
                }
                Next::Chunk(Err(e)) => {
                    return Err(ExecError::InvalidInput(format!("source read failed: {e}")));
                }
                Next::Message(i, m) => (i, m),
            };
            match message {
                None => {
                    // Actors only stop at a barrier that stops their downstream too, so an
                    // input that closes means its upstream failed.
                    inputs[i].closed = true;
                    return Err(upstream_gone());
                }
                Some(Message::Data(batch)) => {
                    let index = inputs[i].index;
                    self.push(0, index, vec![Emitted::Data(batch)]).await?;
                }
                Some(Message::Watermark { column, value }) => {
                    let slot = inputs[i].watermarks.entry(column).or_insert(i64::MIN);
                    if value <= *slot {
                        continue;
                    }
                    *slot = value;
                    let index = inputs[i].index;
                    if self.chain.first().is_some_and(|op| op.watermarks_per_input()) {
                        let aligned = inputs
                            .iter()
                            .filter(|x| x.index == index)
                            .map(|x| x.watermarks.get(&column).copied().unwrap_or(i64::MIN))
                            .min()
                            .unwrap_or(i64::MIN);
                        let sent = per_input_watermarks.entry((index, column)).or_insert(i64::MIN);
                        if aligned > *sent {
                            *sent = aligned;
                            let mut out = Output::default();
                            if let Some(op) = self.chain.first_mut() {
                                op.on_input_watermark(index, column, aligned, &mut out)?;
                            }
                            self.push(1, 0, out.take()).await?;
                        }
                        continue;
                    }
                    let aligned = inputs.iter().map(|x| x.watermarks.get(&column).copied().unwrap_or(i64::MIN)).min();
                    if let Some(aligned) = aligned
                        && aligned > emitted_watermarks.get(&column).copied().unwrap_or(i64::MIN)
                    {
                        emitted_watermarks.insert(column, aligned);
                        self.push(0, 0, vec![Emitted::Watermark { column, value: aligned }]).await?;
                    }
                }
                Some(Message::Barrier(barrier)) => {
                    inputs[i].blocked = true;
                    if pending_barrier.is_none() {
                        pending_barrier = Some(barrier);
                    }
                    if inputs.iter().all(|x| x.blocked || x.closed) {
                        for x in inputs.iter_mut() {
                            x.blocked = false;
                        }
                        let Some(barrier) = pending_barrier.take() else {
                            return Err(ExecError::Internal("barrier alignment lost its barrier".into()));
                        };
                        let position = match source.as_ref() {
                            Some(s) if barrier.checkpoint => Some(s.reader.position()),
                            _ => None,
                        };
                        if let Some(p) = &position {
                            unacked_positions.push_back((barrier.epoch, p.clone()));
                        }
                        let stop = self.handle_barrier(barrier, position, std::mem::take(&mut chunk_times)).await?;
                        if stop {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn run_backfill(&mut self, backfill: Backfill) -> Result<()> {
        let Ok(snapshot) = backfill.snapshot.await else {
            // The creating statement was abandoned before the snapshot was taken.
            return Err(ExecError::ShuttingDown);
        };
        let batches = tokio::task::block_in_place(|| {
            snapshot.scan(backfill.relation, &backfill.codec, &[], BACKFILL_BATCH_ROWS, None)
        })?;
        for batch in batches {
            let mut change = ChangeBatch::inserts(batch);
            if let Some((columns, n, index)) = &backfill.partition {
                let parts = partition_of_rows(&change, columns, *n)?;
                let mask: datafusion::arrow::array::BooleanArray = parts.iter().map(|p| Some(*p == *index)).collect();
                change = change.filter(&mask)?;
            }
            if !change.is_empty() {
                self.push(0, 0, vec![Emitted::Data(change)]).await?;
            }
        }
        Ok(())
    }

    /// Runs `items` through the chain from operator `start`, then dispatches what comes out.
    async fn push(&mut self, start: usize, input: usize, items: Vec<Emitted>) -> Result<()> {
        let mut current = items;
        let mut input = input;
        for op in self.chain[start..].iter_mut() {
            let mut out = Output::default();
            for item in current {
                match item {
                    Emitted::Data(b) => op.process(input, b, &mut out)?,
                    Emitted::Watermark { column, value } => op.on_watermark(column, value, &mut out)?,
                }
            }
            current = out.take();
            input = 0;
            if current.is_empty() {
                return Ok(());
            }
        }
        for item in current {
            match item {
                Emitted::Data(b) => self.dispatcher.send_data(b).await?,
                Emitted::Watermark { column, value } => {
                    self.sent_watermarks.insert(column, value);
                    self.dispatcher.broadcast(Message::Watermark { column, value }).await;
                }
            }
        }
        Ok(())
    }

    /// Flush, collect, mutate, forward, report. Returns true when the actor must stop.
    async fn handle_barrier(
        &mut self,
        barrier: Barrier,
        source_position: Option<Vec<u8>>,
        chunk_times: Vec<std::time::Instant>,
    ) -> Result<bool> {
        for i in 0..self.chain.len() {
            let mut out = Output::default();
            self.chain[i].on_barrier(&barrier, &mut out)?;
            let items = out.take();
            if !items.is_empty() {
                Box::pin(self.push(i + 1, 0, items)).await?;
            }
        }
        let deltas: Vec<_> = self.chain.iter_mut().filter_map(|op| op.take_delta()).collect();
        let mut state = Vec::new();
        if barrier.checkpoint {
            for (position, op) in self.chain.iter_mut().enumerate() {
                let scope = self.state_scope.at(position as u16);
                op.checkpoint(&mut StateWriter::new(scope, &mut state))?;
            }
            if let Some(p) = source_position {
                StateWriter::new(self.state_scope.at(SOURCE_POSITION), &mut state).put(&[], p);
            }
        }
        let states: Vec<crate::metrics::OperatorState> = self
            .chain
            .iter()
            .enumerate()
            .filter_map(|(position, op)| {
                op.state_size().map(|size| crate::metrics::OperatorState {
                    job: self.job,
                    actor: self.id,
                    position,
                    operator: op.name(),
                    rows: size.rows,
                    bytes: size.bytes,
                })
            })
            .collect();
        if !states.is_empty() {
            self.metrics.record_operator_state(self.id, states);
        }
        if let Some(Mutation::Stop(actors)) = barrier.mutation.as_deref() {
            self.dispatcher.remove_actors(actors);
        }
        let stop = barrier.stops(self.id);
        let epoch = barrier.epoch;
        let mutation = barrier.mutation.clone();
        self.dispatcher.broadcast(Message::Barrier(barrier)).await;
        if let (Some(Mutation::AddOutputs(outputs)), Some((relation, index))) =
            (mutation.as_deref(), self.relation_output)
            && let Some(per_actor) = outputs.get(&relation)
            && let Some(mine) = per_actor.get(index)
        {
            for o in mine {
                // A new reader gets the event time reached so far: its backfill holds exactly
                // the rows that watermark was computed from.
                for (column, value) in &self.sent_watermarks {
                    let _ = o.sender.send(Message::Watermark { column: *column, value: *value }).await;
                }
                self.dispatcher.add(Edge::Forward { actor: o.downstream, sender: o.sender.clone() });
            }
        }
        let _ = self.reports.send(ActorReport::Collected { actor: self.id, epoch, deltas, state, chunk_times });
        if stop {
            self.metrics.forget_actor(self.id);
        }
        Ok(stop)
    }
}
