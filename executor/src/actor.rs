//! The actor: one parallel instance of a fragment, running its operator chain on a tokio task.
//!
//! ```text
//!   inputs (aligned) ──▶ op 0 ──▶ op 1 ──▶ … ──▶ op n ──▶ dispatcher ──▶ downstream actors
//!                                                         └─▶ coordinator: epoch done + deltas
//! ```
//!
//! The actor owns the barrier protocol. When a barrier has arrived on every input it calls
//! `on_barrier` on each operator in order, pushing what each one flushes through the rest of
//! the chain; then it collects state deltas, applies the barrier's mutation, forwards the
//! barrier and reports the epoch to the coordinator. Inputs that delivered the barrier early
//! are not read until the others catch up, so nothing of the next epoch mixes in.

use std::future::poll_fn;
use std::task::Poll;

use eddy_common::ChangeBatch;
use eddy_common::ids::{Epoch, ObjectId};
use tokio::sync::{mpsc, oneshot};

use crate::dispatch::{Dispatcher, Edge, partition_of_rows};
use crate::error::{ExecError, Result};
use crate::message::{ActorId, Barrier, Message, Mutation};
use crate::operator::{Operator, Output};
use crate::store::{RelationDelta, RowCodec, Snapshot};

/// What an actor tells the coordinator.
#[derive(Debug)]
pub enum ActorReport {
    /// The actor processed the barrier of `epoch`; these are its state changes of the epoch.
    Collected {
        actor: ActorId,
        epoch: Epoch,
        deltas: Vec<(ObjectId, RelationDelta)>,
    },
    /// The actor stopped with an error.
    Failed {
        actor: ActorId,
        job: ObjectId,
        error: String,
    },
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

pub struct Actor {
    pub id: ActorId,
    /// The catalog object this actor works for (a table or materialized view).
    pub job: ObjectId,
    pub inputs: Vec<Input>,
    pub chain: Vec<Box<dyn Operator>>,
    pub dispatcher: Dispatcher,
    pub backfill: Option<Backfill>,
    /// When this actor emits a stored relation's changes: which relation, and its index among
    /// that relation's actors (to pick its edges from `Mutation::AddOutputs`).
    pub relation_output: Option<(ObjectId, usize)>,
    pub reports: mpsc::UnboundedSender<ActorReport>,
}

struct InputState {
    index: usize,
    receiver: mpsc::Receiver<Message>,
    blocked: bool,
    closed: bool,
}

const BACKFILL_BATCH_ROWS: usize = 4096;

fn upstream_gone() -> ExecError {
    ExecError::Internal("an upstream actor stopped unexpectedly (it failed)".into())
}

impl Actor {
    /// Runs until stopped by a barrier, until all inputs close, or until an operator fails.
    pub async fn run(mut self) {
        let id = self.id;
        let job = self.job;
        let reports = self.reports.clone();
        if let Err(error) = self.run_inner().await {
            tracing::error!(actor = id, job = job.0, %error, "actor failed");
            let _ = reports.send(ActorReport::Failed {
                actor: id,
                job,
                error: error.to_string(),
            });
        }
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
            })
            .collect();
        let mut pending_barrier: Option<Barrier> = None;
        let mut rotate = 0usize;
        loop {
            let next = poll_fn(|cx| {
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
                if any_open {
                    Poll::Pending
                } else {
                    Poll::Ready(None)
                }
            })
            .await;
            rotate = rotate.wrapping_add(1);
            let Some((i, message)) = next else {
                return Err(upstream_gone());
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
                    self.push(0, index, batch).await?;
                }
                Some(Message::Watermark { column, value }) => {
                    // Multi-input watermark alignment arrives with event time; single-input
                    // chains pass watermarks through the operators.
                    if inputs.len() == 1 {
                        self.push_watermark(column, value).await?;
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
                            return Err(ExecError::Internal(
                                "barrier alignment lost its barrier".into(),
                            ));
                        };
                        let stop = self.handle_barrier(barrier).await?;
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
            snapshot.scan(
                backfill.relation,
                &backfill.codec,
                &[],
                BACKFILL_BATCH_ROWS,
                None,
            )
        })?;
        for batch in batches {
            let mut change = ChangeBatch::inserts(batch);
            if let Some((columns, n, index)) = &backfill.partition {
                let parts = partition_of_rows(&change, columns, *n)?;
                let mask: datafusion::arrow::array::BooleanArray =
                    parts.iter().map(|p| Some(*p == *index)).collect();
                change = change.filter(&mask)?;
            }
            if !change.is_empty() {
                self.push(0, 0, change).await?;
            }
        }
        Ok(())
    }

    /// Runs `batch` through the chain from operator `start`, then dispatches the result.
    async fn push(&mut self, start: usize, input: usize, batch: ChangeBatch) -> Result<()> {
        let mut current = vec![batch];
        let mut input = input;
        for op in self.chain[start..].iter_mut() {
            let mut out = Output::default();
            for b in current {
                op.process(input, b, &mut out)?;
            }
            current = out.take();
            input = 0;
            if current.is_empty() {
                return Ok(());
            }
        }
        for b in current {
            self.dispatcher.send_data(b).await?;
        }
        Ok(())
    }

    async fn push_watermark(&mut self, column: usize, value: i64) -> Result<()> {
        let mut wm = Some((column, value));
        for i in 0..self.chain.len() {
            let Some((c, v)) = wm else { return Ok(()) };
            let mut out = Output::default();
            wm = self.chain[i].on_watermark(c, v, &mut out)?;
            for b in out.take() {
                Box::pin(self.push(i + 1, 0, b)).await?;
            }
        }
        if let Some((column, value)) = wm {
            self.dispatcher
                .broadcast(Message::Watermark { column, value })
                .await;
        }
        Ok(())
    }

    /// Flush, collect, mutate, forward, report. Returns true when the actor must stop.
    async fn handle_barrier(&mut self, barrier: Barrier) -> Result<bool> {
        for i in 0..self.chain.len() {
            let mut out = Output::default();
            self.chain[i].on_barrier(&barrier, &mut out)?;
            for b in out.take() {
                Box::pin(self.push(i + 1, 0, b)).await?;
            }
        }
        let deltas: Vec<_> = self
            .chain
            .iter_mut()
            .filter_map(|op| op.take_delta())
            .collect();
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
                self.dispatcher.add(Edge::Forward {
                    actor: o.downstream,
                    sender: o.sender.clone(),
                });
            }
        }
        let _ = self.reports.send(ActorReport::Collected {
            actor: self.id,
            epoch,
            deltas,
        });
        Ok(stop)
    }
}
