//! The barrier coordinator: one task that starts epochs and commits them.
//!
//! ```text
//!   inject barrier e ──▶ source actors ──▶ … every actor reports (e, deltas) ──▶ commit e
//!        ▲                                                                         │
//!        └──────────── next barrier: on the interval, or when a statement asks ◀──┘
//! ```
//!
//! One barrier is in flight at a time. An epoch commits when every live actor has reported it:
//! all relations' deltas and the statement's catalog changes go into one store transaction, so a
//! reader sees every view at the same epoch and a crash never separates a view from its
//! definition.
//!
//! Most barriers only make an epoch visible. A *checkpoint* barrier also collects operator
//! state and source positions, and its commit is durable (fsync): one every checkpoint
//! interval, and one for every statement that must survive a crash once acknowledged (DML,
//! DDL). After a crash the store reopens at the last checkpoint. When a checkpoint commit is
//! durable the coordinator publishes its epoch, so sources can acknowledge upstream and sinks
//! can make their output visible. Graph changes ride on a barrier as a [`Mutation`]; actors of a new job join
//! the epoch after the one that carried their mutation, actors of a dropped job leave after it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use eddy_common::ids::{Epoch, ObjectId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::actor::ActorReport;
use crate::error::{ExecError, Result};
use crate::message::{ActorId, Barrier, Message, Mutation};
use crate::state::StateEntry;
use crate::store::{CatalogChange, EpochCommit, RelationDelta, Snapshot, Store, job_marker_key};

/// The actors of one job (a table, a materialized view) as the coordinator tracks them.
#[derive(Debug)]
pub struct JobActors {
    pub job: ObjectId,
    pub actors: Vec<ActorId>,
    /// Actors that receive barriers from the coordinator directly (they have no upstream).
    pub injected: Vec<(ActorId, mpsc::Sender<Message>)>,
    /// The plan's fingerprint, stored with the job's first checkpoint: a restart restores the
    /// job's state only when its plan still has this fingerprint.
    pub fingerprint: Option<String>,
}

/// A change to the running graph together with the catalog change it implements.
#[derive(Debug, Default)]
pub struct Change {
    pub mutation: Option<Mutation>,
    pub add_job: Option<JobActors>,
    pub remove_jobs: Vec<ObjectId>,
    pub catalog: Vec<CatalogChange>,
    /// Receive a snapshot taken right after the epoch carrying this change commits.
    pub snapshots: Vec<oneshot::Sender<Snapshot>>,
}

pub enum Request {
    /// Start a barrier soon and answer with its epoch once committed.
    Flush {
        durable: bool,
        reply: oneshot::Sender<Result<Epoch>>,
    },
    /// Apply `change` with the next barrier and answer once that epoch committed.
    Apply {
        change: Box<Change>,
        reply: oneshot::Sender<Result<Epoch>>,
    },
    /// Live job status, for system views.
    Status {
        reply: oneshot::Sender<CoordinatorStatus>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What the coordinator can say about the running graph.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorStatus {
    pub committed_epoch: Epoch,
    pub live_actors: usize,
    /// Jobs that stopped with an error, and the error.
    pub failed_jobs: HashMap<ObjectId, String>,
}

/// A handle to send requests to the coordinator.
#[derive(Clone)]
pub struct CoordinatorHandle {
    requests: mpsc::UnboundedSender<Request>,
}

impl CoordinatorHandle {
    /// Waits until everything sent to the dataflow so far is committed (and durable, if asked).
    ///
    /// # Errors
    /// When the commit fails or the coordinator is gone.
    pub async fn flush(&self, durable: bool) -> Result<Epoch> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::Flush { durable, reply }).map_err(|_| ExecError::ShuttingDown)?;
        rx.await.map_err(|_| ExecError::ShuttingDown)?
    }

    /// Applies a graph/catalog change with the next barrier; returns the epoch that carried it.
    ///
    /// # Errors
    /// When the commit fails or the coordinator is gone.
    pub async fn apply(&self, change: Change) -> Result<Epoch> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::Apply { change: Box::new(change), reply }).map_err(|_| ExecError::ShuttingDown)?;
        rx.await.map_err(|_| ExecError::ShuttingDown)?
    }

    pub async fn status(&self) -> Result<CoordinatorStatus> {
        let (reply, rx) = oneshot::channel();
        self.requests.send(Request::Status { reply }).map_err(|_| ExecError::ShuttingDown)?;
        rx.await.map_err(|_| ExecError::ShuttingDown)
    }

    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

struct InFlight {
    epoch: Epoch,
    remaining: HashSet<ActorId>,
    deltas: Vec<(ObjectId, RelationDelta)>,
    state: HashMap<ObjectId, Vec<StateEntry>>,
    /// Jobs whose first checkpoint this is, with their fingerprints.
    markers: Vec<(ObjectId, String)>,
    durable: bool,
    flush_waiters: Vec<oneshot::Sender<Result<Epoch>>>,
    change: Option<(Box<Change>, oneshot::Sender<Result<Epoch>>)>,
    chunk_times: Vec<std::time::Instant>,
}

pub struct Coordinator {
    store: Arc<Store>,
    feed: Arc<crate::changefeed::ChangeFeed>,
    metrics: Arc<crate::metrics::Metrics>,
    requests: mpsc::UnboundedReceiver<Request>,
    reports: mpsc::UnboundedReceiver<ActorReport>,
    interval: Duration,
    checkpoint_interval: Duration,
    last_checkpoint: std::time::Instant,
    next_epoch: Epoch,
    committed_epoch: Epoch,
    durable_epochs: watch::Sender<Epoch>,
    /// Jobs not yet checkpointed, with their fingerprints.
    unmarked: HashMap<ObjectId, String>,
    /// Jobs that failed: their state no longer matches their inputs, so a restart must
    /// rebuild them. Their markers go with the next commit.
    unmark: Vec<ObjectId>,
    /// Set when a commit failed: nothing is committed after it.
    broken: Option<String>,
    live: HashSet<ActorId>,
    injected: HashMap<ActorId, mpsc::Sender<Message>>,
    jobs: HashMap<ObjectId, Vec<ActorId>>,
    actor_job: HashMap<ActorId, ObjectId>,
    failed: HashMap<ObjectId, String>,
    queued_flushes: Vec<(bool, oneshot::Sender<Result<Epoch>>)>,
    queued_changes: VecDeque<(Box<Change>, oneshot::Sender<Result<Epoch>>)>,
    in_flight: Option<InFlight>,
    tick_due: bool,
}

/// How often barriers and checkpoints happen.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    /// Between barriers: how soon changes become visible.
    pub barrier: Duration,
    /// Between checkpoints: how much work a crash can take back (sources replay it). Zero
    /// turns interval checkpoints off: only statements that must be durable cause one.
    pub checkpoint: Duration,
}

/// Starts the coordinator task. `first_epoch` must exceed every epoch committed before. The
/// returned receiver follows the last durable (checkpoint) epoch.
pub fn spawn(
    store: Arc<Store>,
    feed: Arc<crate::changefeed::ChangeFeed>,
    metrics: Arc<crate::metrics::Metrics>,
    intervals: Intervals,
    first_epoch: Epoch,
) -> (CoordinatorHandle, mpsc::UnboundedSender<ActorReport>, watch::Receiver<Epoch>) {
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (rep_tx, rep_rx) = mpsc::unbounded_channel();
    let (durable_tx, durable_rx) = watch::channel(first_epoch.saturating_sub(1));
    let coordinator = Coordinator {
        store,
        feed,
        metrics,
        requests: req_rx,
        reports: rep_rx,
        interval: intervals.barrier,
        checkpoint_interval: intervals.checkpoint,
        last_checkpoint: std::time::Instant::now(),
        next_epoch: first_epoch,
        committed_epoch: first_epoch.saturating_sub(1),
        durable_epochs: durable_tx,
        unmarked: HashMap::new(),
        unmark: Vec::new(),
        broken: None,
        live: HashSet::new(),
        injected: HashMap::new(),
        jobs: HashMap::new(),
        actor_job: HashMap::new(),
        failed: HashMap::new(),
        queued_flushes: Vec::new(),
        queued_changes: VecDeque::new(),
        in_flight: None,
        tick_due: false,
    };
    tokio::spawn(coordinator.run());
    (CoordinatorHandle { requests: req_tx }, rep_tx, durable_rx)
}

impl Coordinator {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.in_flight.is_none() && self.wants_barrier() {
                self.inject().await;
            }
            tokio::select! {
                request = self.requests.recv() => {
                    match request {
                        Some(Request::Flush { reply, .. }) if self.broken.is_some() => {
                            let _ = reply.send(Err(ExecError::Storage(self.broken.clone().unwrap_or_default())));
                        }
                        Some(Request::Apply { reply, .. }) if self.broken.is_some() => {
                            let _ = reply.send(Err(ExecError::Storage(self.broken.clone().unwrap_or_default())));
                        }
                        Some(Request::Flush { durable, reply }) => self.queued_flushes.push((durable, reply)),
                        Some(Request::Apply { change, reply }) => self.queued_changes.push_back((change, reply)),
                        Some(Request::Status { reply }) => {
                            let _ = reply.send(CoordinatorStatus {
                                committed_epoch: self.committed_epoch,
                                live_actors: self.live.len(),
                                failed_jobs: self.failed.clone(),
                            });
                        }
                        Some(Request::Shutdown { reply }) => {
                            self.fail_pending(|| ExecError::ShuttingDown);
                            let _ = reply.send(());
                            return;
                        }
                        None => return,
                    }
                }
                report = self.reports.recv() => {
                    match report {
                        Some(report) => self.on_report(report).await,
                        None => return,
                    }
                }
                _ = ticker.tick() => {
                    self.tick_due = !self.live.is_empty();
                }
            }
        }
    }

    fn wants_barrier(&self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.tick_due || !self.queued_flushes.is_empty() || !self.queued_changes.is_empty()
    }

    async fn inject(&mut self) {
        self.tick_due = false;
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let flushes = std::mem::take(&mut self.queued_flushes);
        let mut change = self.queued_changes.pop_front();
        // Statements are acknowledged only once durable; otherwise checkpoint on the interval.
        let durable = flushes.iter().any(|(durable, _)| *durable)
            || change.is_some()
            || (!self.checkpoint_interval.is_zero() && self.last_checkpoint.elapsed() >= self.checkpoint_interval);
        if durable {
            self.last_checkpoint = std::time::Instant::now();
        }
        let markers: Vec<(ObjectId, String)> =
            if durable { self.unmarked.iter().map(|(job, f)| (*job, f.clone())).collect() } else { Vec::new() };
        let mutation = change.as_mut().and_then(|(c, _)| c.mutation.take()).map(Arc::new);
        let barrier = Barrier { epoch, checkpoint: durable, mutation };
        let mut dead = Vec::new();
        for (actor, sender) in &self.injected {
            if sender.send(Message::Barrier(barrier.clone())).await.is_err() {
                dead.push(*actor);
            }
        }
        for actor in dead {
            self.injected.remove(&actor);
        }
        let remaining = self.live.clone();
        self.in_flight = Some(InFlight {
            epoch,
            remaining,
            deltas: Vec::new(),
            state: HashMap::new(),
            markers,
            durable,
            flush_waiters: flushes.into_iter().map(|(_, r)| r).collect(),
            change,
            chunk_times: Vec::new(),
        });
        self.maybe_commit().await;
    }

    async fn on_report(&mut self, report: ActorReport) {
        match report {
            ActorReport::Collected { actor, epoch, deltas, state, chunk_times } => {
                let Some(flight) = self.in_flight.as_mut() else {
                    return;
                };
                if flight.epoch != epoch || !flight.remaining.remove(&actor) {
                    return;
                }
                flight.deltas.extend(deltas);
                if !state.is_empty()
                    && let Some(job) = self.actor_job.get(&actor)
                {
                    flight.state.entry(*job).or_default().extend(state);
                }
                flight.chunk_times.extend(chunk_times);
                self.maybe_commit().await;
            }
            ActorReport::Failed { actor, job, error } => {
                tracing::error!(job = job.0, actor, %error, "job failed; stopping its actors");
                self.failed.insert(job, error);
                self.unmarked.remove(&job);
                self.unmark.push(job);
                let actors = self.jobs.remove(&job).unwrap_or_default();
                let stop: HashSet<ActorId> = actors.iter().copied().collect();
                for a in &actors {
                    self.live.remove(a);
                    self.injected.remove(a);
                    self.actor_job.remove(a);
                }
                if let Some(flight) = self.in_flight.as_mut() {
                    for a in &actors {
                        flight.remaining.remove(a);
                    }
                }
                // Tell the rest of the graph to drop its edges to the failed job.
                self.queued_changes.push_back((
                    Box::new(Change { mutation: Some(Mutation::Stop(stop)), ..Default::default() }),
                    oneshot::channel().0,
                ));
                self.maybe_commit().await;
            }
        }
    }

    async fn maybe_commit(&mut self) {
        let ready = matches!(&self.in_flight, Some(f) if f.remaining.is_empty());
        if !ready {
            return;
        }
        let Some(mut flight) = self.in_flight.take() else {
            return;
        };
        let mut commit = EpochCommit {
            relations: std::mem::take(&mut flight.deltas),
            state: std::mem::take(&mut flight.state).into_iter().collect(),
            catalog: Vec::new(),
            durable: flight.durable,
        };
        // A job dropped while this epoch was in flight must not come back through its state.
        let dropped: HashSet<ObjectId> =
            flight.change.as_ref().map(|(c, _)| c.remove_jobs.iter().copied().collect()).unwrap_or_default();
        commit.state.retain(|(job, _)| !dropped.contains(job));
        for job in std::mem::take(&mut self.unmark) {
            commit.catalog.push(CatalogChange::DeleteMeta { key: job_marker_key(job) });
        }
        for (job, fingerprint) in &flight.markers {
            if !dropped.contains(job) && !self.failed.contains_key(job) {
                commit.catalog.push(CatalogChange::PutMeta {
                    key: job_marker_key(*job),
                    value: fingerprint.clone().into_bytes(),
                });
            }
        }
        if let Some((change, _)) = &mut flight.change {
            commit.catalog.extend(std::mem::take(&mut change.catalog));
        }
        commit.catalog.push(CatalogChange::PutMeta { key: "epoch".into(), value: flight.epoch.to_le_bytes().to_vec() });
        let feed = self.feed.clone();
        let _gate = feed.commit_gate().await;
        let captured = feed.capture(&self.store, &commit.relations);
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || store.commit(&commit))
            .await
            .unwrap_or_else(|e| Err(ExecError::Internal(format!("commit task: {e}"))));
        match result {
            Ok(()) => {
                self.committed_epoch = flight.epoch;
                feed.publish(flight.epoch, captured);
                for (job, _) in &flight.markers {
                    self.unmarked.remove(job);
                }
                if flight.durable {
                    self.durable_epochs.send_replace(flight.epoch);
                }
                let now = std::time::Instant::now();
                self.metrics.record_freshness(flight.chunk_times.iter().map(|t| now.duration_since(*t)));
                for w in flight.flush_waiters {
                    let _ = w.send(Ok(flight.epoch));
                }
                if let Some((change, reply)) = flight.change {
                    self.finish_change(*change, flight.epoch, reply);
                }
            }
            Err(e) => {
                // Operators handed this epoch's state over and forgot it: later checkpoints
                // would build on a gap. Stop committing; a restart recovers the last checkpoint.
                let message = format!(
                    "committing epoch {} failed ({e}); no further changes are committed: restart eddy to recover from the last checkpoint",
                    flight.epoch
                );
                tracing::error!("{message}");
                for w in flight.flush_waiters {
                    let _ = w.send(Err(ExecError::Storage(message.clone())));
                }
                if let Some((_, reply)) = flight.change {
                    let _ = reply.send(Err(ExecError::Storage(message.clone())));
                }
                self.broken = Some(message);
                let broken = self.broken.clone().unwrap_or_default();
                self.fail_pending(|| ExecError::Storage(broken.clone()));
            }
        }
    }

    fn finish_change(&mut self, change: Change, epoch: Epoch, reply: oneshot::Sender<Result<Epoch>>) {
        for job in &change.remove_jobs {
            self.unmarked.remove(job);
            for a in self.jobs.remove(job).unwrap_or_default() {
                self.live.remove(&a);
                self.injected.remove(&a);
                self.actor_job.remove(&a);
            }
            self.failed.remove(job);
        }
        if let Some(add) = change.add_job {
            if let Some(fingerprint) = add.fingerprint {
                self.unmarked.insert(add.job, fingerprint);
            }
            for a in &add.actors {
                self.live.insert(*a);
                self.actor_job.insert(*a, add.job);
            }
            for (a, s) in add.injected {
                self.injected.insert(a, s);
            }
            self.jobs.entry(add.job).or_default().extend(add.actors);
        }
        if !change.snapshots.is_empty() {
            match self.store.snapshot() {
                Ok(snapshot) => {
                    for s in change.snapshots {
                        let _ = s.send(snapshot.clone());
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        let _ = reply.send(Ok(epoch));
    }

    fn fail_pending(&mut self, err: impl Fn() -> ExecError) {
        for (_, w) in self.queued_flushes.drain(..) {
            let _ = w.send(Err(err()));
        }
        for (_, w) in self.queued_changes.drain(..) {
            let _ = w.send(Err(err()));
        }
        if let Some(f) = self.in_flight.take() {
            for w in f.flush_waiters {
                let _ = w.send(Err(err()));
            }
            if let Some((_, w)) = f.change {
                let _ = w.send(Err(err()));
            }
        }
    }
}
