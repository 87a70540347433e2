//! The runtime: the state store, the coordinator and the running jobs, behind the operations
//! the server needs (create, drop, write, flush, read).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use eddy_common::ChangeBatch;
use eddy_common::ids::{Epoch, ObjectId};
use eddy_planner::catalog::{RelationDef, RelationResolver};
use eddy_planner::stream::OperatorGraph;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::actor::ActorReport;
use crate::build::{BuildContext, BuiltJob, build_graph, build_table};
use crate::changefeed::{ChangeFeed, FeedError};
use crate::coordinator::{self, Change, CoordinatorHandle, CoordinatorStatus};
use crate::error::{ExecError, Result};
use crate::memory::MemoryBudget;
use crate::message::{ActorId, Message, Mutation};
use crate::metrics::Metrics;
use crate::store::{CatalogChange, Snapshot, Store};

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How often barriers are injected when no statement asks for one.
    pub barrier_interval: Duration,
    /// How often a barrier is a checkpoint (state and source positions made durable).
    pub checkpoint_interval: Duration,
    /// Actors per parallel fragment.
    pub parallelism: usize,
    /// Verify every page of the store when opening it (see [`Store::open`]).
    pub verify_store: bool,
    /// Bytes of operator state kept in memory before clean state is evicted to the store.
    pub memory_limit: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            barrier_interval: Duration::from_millis(1000),
            checkpoint_interval: Duration::from_millis(1000),
            parallelism: 2,
            verify_store: false,
            memory_limit: None,
        }
    }
}

/// How a job's actors start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// A new job: views backfill from their inputs' committed rows.
    Fresh,
    /// A job coming back after a restart: operators and source positions are restored from
    /// the last checkpoint, and nothing is backfilled (the view's rows are in the store).
    Restore,
}

struct TableHandle {
    dml: mpsc::Sender<Message>,
    /// DML statements on one table take turns to read the committed table and send their
    /// changes; an `UPDATE` or `DELETE` also waits for its commit before the next one reads.
    lock: Arc<tokio::sync::Mutex<()>>,
    pending: Arc<PendingInserts>,
}

/// `INSERT`s sent into a table whose epoch is not committed yet, with their primary keys.
///
/// An `INSERT` only reads the table to check its keys, so it lets the next statement in as
/// soon as its rows are sent, and many wait for one durable commit together (group commit)
/// instead of one fsync each. Keys in flight are checked here, committed keys in the store:
/// an `INSERT` checks both while holding [`PendingInserts::check_and_add`]'s lock with a
/// snapshot taken under it, and keys leave only after their commit, so every key is always in
/// one of the two. An `UPDATE` or `DELETE` reads rows, so it first waits until no insert is in
/// flight ([`PendingInserts::drained`]).
#[derive(Debug, Default)]
pub struct PendingInserts {
    state: Mutex<PendingState>,
    drained: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct PendingState {
    statements: usize,
    keys: HashMap<Vec<u8>, usize>,
}

impl PendingInserts {
    /// Runs `check` with a predicate telling whether a key is in flight; when it succeeds,
    /// records one more statement in flight with `keys`. `check` runs under the lock that
    /// commits wait for to remove keys, so a snapshot it takes sees every key that is no
    /// longer in flight.
    ///
    /// # Errors
    /// Whatever `check` returns; nothing is recorded then.
    pub fn check_and_add<E>(
        &self,
        keys: &[Vec<u8>],
        check: impl FnOnce(&dyn Fn(&[u8]) -> bool) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut state = self.state.lock();
        check(&|key| state.keys.contains_key(key))?;
        state.statements += 1;
        for key in keys {
            *state.keys.entry(key.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// One statement's keys left flight (committed, or failed).
    pub fn remove(&self, keys: &[Vec<u8>]) {
        let mut state = self.state.lock();
        state.statements = state.statements.saturating_sub(1);
        for key in keys {
            if let Some(n) = state.keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    state.keys.remove(key);
                }
            }
        }
        if state.statements == 0 {
            self.drained.notify_waiters();
        }
    }

    /// Waits until no insert is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().statements == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct Runtime {
    store: Arc<Store>,
    coordinator: CoordinatorHandle,
    reports: mpsc::UnboundedSender<ActorReport>,
    durable_epochs: watch::Receiver<Epoch>,
    sources_open: watch::Sender<bool>,
    budget: Arc<MemoryBudget>,
    actor_ids: AtomicU32,
    tables: Mutex<HashMap<ObjectId, TableHandle>>,
    jobs: Mutex<HashMap<ObjectId, Vec<ActorId>>>,
    metrics: Arc<Metrics>,
    feed: Arc<ChangeFeed>,
    config: RuntimeConfig,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens the store under `data_dir` and starts the coordinator.
    ///
    /// # Errors
    /// When the store cannot be opened.
    pub fn open(data_dir: &Path, config: RuntimeConfig) -> Result<Arc<Self>> {
        let store = Store::open(data_dir, config.verify_store)?;
        let last_epoch = store
            .meta("epoch")?
            .map(|b| {
                let mut buf = [0u8; 8];
                let n = b.len().min(8);
                buf[..n].copy_from_slice(&b[..n]);
                u64::from_le_bytes(buf)
            })
            .unwrap_or(0);
        let metrics = Arc::new(Metrics::default());
        let intervals =
            coordinator::Intervals { barrier: config.barrier_interval, checkpoint: config.checkpoint_interval };
        let feed = ChangeFeed::start(last_epoch);
        let (coordinator, reports, durable_epochs) =
            coordinator::spawn(store.clone(), feed.clone(), metrics.clone(), intervals, last_epoch + 1);
        Ok(Arc::new(Self {
            store,
            coordinator,
            reports,
            durable_epochs,
            sources_open: watch::channel(true).0,
            budget: Arc::new(MemoryBudget::new(config.memory_limit)),
            actor_ids: AtomicU32::new(1),
            tables: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            metrics,
            feed,
            config,
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Live changes of stored relations, for `SUBSCRIBE`.
    pub fn feed(&self) -> &Arc<ChangeFeed> {
        &self.feed
    }

    fn build_context(&self, mode: StartMode) -> Result<BuildContext<'_>> {
        Ok(BuildContext {
            store: &self.store,
            ids: &self.actor_ids,
            reports: &self.reports,
            metrics: &self.metrics,
            committed: self.durable_epochs.clone(),
            sources_open: self.sources_open.subscribe(),
            restore: match mode {
                StartMode::Fresh => None,
                StartMode::Restore => Some(self.store.snapshot()?),
            },
            budget: &self.budget,
        })
    }

    /// Operator state held in memory and the limit, for system views.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Keeps every source from reading until [`Runtime::open_sources`]: while the catalog is
    /// restored after a restart, a source must not produce rows before every view reading it
    /// is attached again.
    pub fn hold_sources(&self) {
        self.sources_open.send_replace(false);
    }

    pub fn open_sources(&self) {
        self.sources_open.send_replace(true);
    }

    /// The plan fingerprint stored with a job's first checkpoint; `None` when the job never
    /// completed one (it must then be rebuilt from its inputs).
    ///
    /// # Errors
    /// On storage failure.
    pub fn job_fingerprint(&self, job: ObjectId) -> Result<Option<String>> {
        Ok(self.store.meta(&crate::store::job_marker_key(job))?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub fn parallelism(&self) -> usize {
        self.config.parallelism
    }

    /// A consistent snapshot of every stored relation at the last committed epoch.
    ///
    /// # Errors
    /// On storage failure.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.store.snapshot()
    }

    /// Starts a table's actor and commits `catalog` with the epoch that starts it.
    ///
    /// # Errors
    /// When the table cannot be built or the commit fails.
    pub async fn create_table(&self, def: &RelationDef, catalog: Vec<CatalogChange>) -> Result<Epoch> {
        // A table's rows are the store's; only its connector's position is restored, and a new
        // table has none.
        let built = build_table(def, &self.build_context(StartMode::Restore)?)?;
        let dml = built.dml.clone().ok_or_else(|| ExecError::Internal("table without DML channel".into()))?;
        self.tables
            .lock()
            .insert(def.id, TableHandle { dml, lock: Arc::new(tokio::sync::Mutex::new(())), pending: Arc::default() });
        self.start(def.id, built, catalog).await
    }

    /// Starts a materialized view: attaches it to its inputs, backfills it from their
    /// committed contents, and returns once the backfilled epoch is committed.
    ///
    /// # Errors
    /// When the graph cannot be built or a commit fails.
    pub async fn create_materialized_view(
        &self,
        def: &RelationDef,
        graph: &OperatorGraph,
        resolver: &dyn RelationResolver,
        catalog: Vec<CatalogChange>,
    ) -> Result<Epoch> {
        let built = build_graph(graph, def, resolver, &self.build_context(StartMode::Fresh)?)?;
        self.start(def.id, built, catalog).await?;
        // The job's actors take part from the next epoch on; once it commits, the backfill
        // and everything since are in the store, and so is the job's first checkpoint.
        self.coordinator.flush(true).await
    }

    /// Starts a materialized view (or sink) again after a restart, from its last checkpoint.
    ///
    /// # Errors
    /// When the graph cannot be built, its state cannot be read, or the commit fails.
    pub async fn restore_materialized_view(
        &self,
        def: &RelationDef,
        graph: &OperatorGraph,
        resolver: &dyn RelationResolver,
    ) -> Result<Epoch> {
        let built = build_graph(graph, def, resolver, &self.build_context(StartMode::Restore)?)?;
        self.start(def.id, built, vec![]).await
    }

    async fn start(&self, job: ObjectId, built: BuiltJob, catalog: Vec<CatalogChange>) -> Result<Epoch> {
        let BuiltJob { actors, job: job_actors, add_outputs, snapshots, .. } = built;
        self.jobs.lock().insert(job, job_actors.actors.clone());
        for actor in actors {
            tokio::spawn(actor.run());
        }
        let mutation = (!add_outputs.is_empty()).then_some(Mutation::AddOutputs(add_outputs));
        let change = Change { mutation, add_job: Some(job_actors), remove_jobs: vec![], catalog, snapshots };
        match self.coordinator.apply(change).await {
            Ok(epoch) => Ok(epoch),
            Err(e) => {
                self.jobs.lock().remove(&job);
                self.tables.lock().remove(&job);
                Err(e)
            }
        }
    }

    /// Stops the jobs of `ids` (tables and views) and commits `catalog` (which drops their
    /// definitions and stored rows) with the same epoch.
    ///
    /// # Errors
    /// When the commit fails.
    pub async fn drop_jobs(&self, ids: &[ObjectId], catalog: Vec<CatalogChange>) -> Result<Epoch> {
        let mut actors = std::collections::HashSet::new();
        {
            let jobs = self.jobs.lock();
            for id in ids {
                if let Some(a) = jobs.get(id) {
                    actors.extend(a.iter().copied());
                }
            }
        }
        let mutation = (!actors.is_empty()).then_some(Mutation::Stop(actors));
        let epoch = self
            .coordinator
            .apply(Change { mutation, add_job: None, remove_jobs: ids.to_vec(), catalog, snapshots: vec![] })
            .await?;
        let mut jobs = self.jobs.lock();
        let mut tables = self.tables.lock();
        for id in ids {
            jobs.remove(id);
            tables.remove(id);
            self.metrics.forget_job(*id);
        }
        self.feed.end_relations(ids.iter().copied(), |id| FeedError::Dropped(format!("relation {id}")));
        Ok(epoch)
    }

    /// Commits catalog changes that need no graph change (views, for example).
    ///
    /// # Errors
    /// When the commit fails.
    pub async fn commit_catalog(&self, catalog: Vec<CatalogChange>) -> Result<Epoch> {
        self.coordinator.apply(Change { catalog, ..Default::default() }).await
    }

    /// The lock serializing DML on `table`.
    ///
    /// # Errors
    /// When the table is not running.
    pub fn table_lock(&self, table: ObjectId) -> Result<Arc<tokio::sync::Mutex<()>>> {
        self.tables
            .lock()
            .get(&table)
            .map(|t| t.lock.clone())
            .ok_or_else(|| ExecError::Internal(format!("table {table} is not running")))
    }

    /// The inserts in flight into a table (see [`PendingInserts`]).
    ///
    /// # Errors
    /// When the table is not running.
    pub fn pending_inserts(&self, table: ObjectId) -> Result<Arc<PendingInserts>> {
        self.tables
            .lock()
            .get(&table)
            .map(|t| t.pending.clone())
            .ok_or_else(|| ExecError::Internal(format!("table {table} is not running")))
    }

    /// Sends changes into a table. They become visible with the next committed epoch; call
    /// [`Runtime::flush`] to wait for it.
    ///
    /// # Errors
    /// When the table is not running.
    pub async fn write_table(&self, table: ObjectId, batch: ChangeBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let sender = self
            .tables
            .lock()
            .get(&table)
            .map(|t| t.dml.clone())
            .ok_or_else(|| ExecError::Internal(format!("table {table} is not running")))?;
        sender.send(Message::Data(batch)).await.map_err(|_| ExecError::ShuttingDown)
    }

    /// Waits until everything written so far is committed, durably.
    ///
    /// # Errors
    /// When the commit fails.
    pub async fn flush(&self) -> Result<Epoch> {
        self.coordinator.flush(true).await
    }

    /// The coordinator's view of the running graph.
    ///
    /// # Errors
    /// When the coordinator is gone.
    pub async fn status(&self) -> Result<CoordinatorStatus> {
        self.coordinator.status().await
    }

    pub async fn shutdown(&self) {
        self.coordinator.shutdown().await;
    }
}
