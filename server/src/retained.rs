//! RisingWave's subscriptions: `CREATE SUBSCRIPTION s FROM v WITH (retention = '1h')` keeps
//! the changes of `v` for the retention period, so a client can resume after a disconnect:
//! `DECLARE c SUBSCRIPTION CURSOR FOR s [SINCE <eddy_timestamp> | FULL]`, then `FETCH`.
//!
//! Without `SINCE` a cursor starts at the next change; `SINCE t` first returns every retained
//! change with `eddy_timestamp >= t`; `FULL` starts with the relation's current rows (as
//! `SUBSCRIBE` does). Rows have `SUBSCRIBE`'s columns.
//!
//! The retained changes live in memory: a subscription (and its history) does not survive a
//! restart of the server.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use eddy_common::SqlState;
use parking_lot::Mutex;

use crate::engine::Engine;
use crate::error::{Result, ServerError};
use crate::live::{ClientProbe, FetchCount, LiveSubscription, SubscribeSpec};

/// The retained changes of one subscription, numbered in arrival order.
pub struct RetainedLog {
    pub relation: String,
    retention: Duration,
    schema: SchemaRef,
    /// (sequence number, commit time in ms, rows)
    entries: Mutex<VecDeque<(u64, i64, RecordBatch)>>,
    next_seq: Mutex<u64>,
    notify: tokio::sync::Notify,
    ended: Mutex<Option<String>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

static SUBSCRIPTIONS: LazyLock<Mutex<HashMap<String, Arc<RetainedLog>>>> = LazyLock::new(Default::default);

fn not_found(name: &str) -> ServerError {
    ServerError::new(SqlState::UndefinedObject, format!("subscription \"{name}\" does not exist"))
}

/// `CREATE SUBSCRIPTION name FROM relation WITH (retention = ...)`.
///
/// # Errors
/// When the name is taken or the relation cannot be subscribed to.
pub async fn create(engine: &Arc<Engine>, name: &str, relation: &str, retention: Duration) -> Result<()> {
    if SUBSCRIPTIONS.lock().contains_key(name) {
        return Err(ServerError::new(SqlState::DuplicateObject, format!("subscription \"{name}\" already exists")));
    }
    let spec = SubscribeSpec { relation: relation.to_string(), snapshot: false, progress: false };
    let mut live = LiveSubscription::open(engine, &spec).await?;
    let log = Arc::new(RetainedLog {
        relation: relation.to_string(),
        retention,
        schema: live.schema().clone(),
        entries: Mutex::new(VecDeque::new()),
        next_seq: Mutex::new(0),
        notify: tokio::sync::Notify::new(),
        ended: Mutex::new(None),
        task: Mutex::new(None),
    });
    let writer = log.clone();
    let task = tokio::spawn(async move {
        let probe = ClientProbe::default();
        loop {
            match live.next_rows(&probe).await {
                Ok(batch) => writer.append(batch),
                Err(e) => {
                    *writer.ended.lock() = Some(e.to_string());
                    writer.notify.notify_waiters();
                    return;
                }
            }
        }
    });
    *log.task.lock() = Some(task.abort_handle());
    let mut all = SUBSCRIPTIONS.lock();
    if all.contains_key(name) {
        task.abort();
        return Err(ServerError::new(SqlState::DuplicateObject, format!("subscription \"{name}\" already exists")));
    }
    all.insert(name.to_string(), log);
    Ok(())
}

/// `DROP SUBSCRIPTION [IF EXISTS] name`.
///
/// # Errors
/// When it does not exist (without `IF EXISTS`).
pub fn drop_subscription(name: &str, if_exists: bool) -> Result<()> {
    match SUBSCRIPTIONS.lock().remove(name) {
        Some(log) => {
            if let Some(task) = log.task.lock().take() {
                task.abort();
            }
            *log.ended.lock() = Some(format!("subscription \"{name}\" was dropped"));
            log.notify.notify_waiters();
            Ok(())
        }
        None if if_exists => Ok(()),
        None => Err(not_found(name)),
    }
}

/// The subscription called `name`.
///
/// # Errors
/// When it does not exist.
pub fn get(name: &str) -> Result<Arc<RetainedLog>> {
    SUBSCRIPTIONS.lock().get(name).cloned().ok_or_else(|| not_found(name))
}

fn timestamps(batch: &RecordBatch) -> Option<&Int64Array> {
    batch.column(0).as_any().downcast_ref::<Int64Array>()
}

impl RetainedLog {
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn append(&self, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let time = timestamps(&batch).map_or(0, |t| t.value(0));
        let mut entries = self.entries.lock();
        let mut next = self.next_seq.lock();
        entries.push_back((*next, time, batch));
        *next += 1;
        let horizon = eddy_executor::changefeed::now_ms() - self.retention.as_millis() as i64;
        while entries.front().is_some_and(|(_, t, _)| *t < horizon) {
            entries.pop_front();
        }
        drop(entries);
        drop(next);
        self.notify.notify_waiters();
    }

    /// The sequence number the next change will get.
    pub fn next_seq(&self) -> u64 {
        *self.next_seq.lock()
    }

    /// Retained rows with `eddy_timestamp >= since`.
    ///
    /// # Errors
    /// When rows cannot be filtered.
    pub fn since(&self, since: i64) -> Result<Vec<RecordBatch>> {
        let entries = self.entries.lock();
        let mut out = Vec::new();
        for (_, _, batch) in entries.iter() {
            let Some(times) = timestamps(batch) else { continue };
            let mask: BooleanArray = times.iter().map(|t| t.map(|t| t >= since)).collect();
            let kept = datafusion::arrow::compute::filter_record_batch(batch, &mask)
                .map_err(|e| ServerError::new(SqlState::Internal, e.to_string()))?;
            if kept.num_rows() > 0 {
                out.push(kept);
            }
        }
        Ok(out)
    }

    /// Entries from sequence `from` on, and the sequence after them.
    fn entries_since_seq(&self, from: u64) -> (Vec<RecordBatch>, u64) {
        let entries = self.entries.lock();
        let batches: Vec<RecordBatch> =
            entries.iter().filter(|(seq, _, _)| *seq >= from).map(|(_, _, b)| b.clone()).collect();
        (batches, from.max(self.next_seq()))
    }
}

/// A cursor over a retained subscription.
pub struct RetainedCursor {
    log: Arc<RetainedLog>,
    position: u64,
    pending: VecDeque<RecordBatch>,
}

impl RetainedCursor {
    /// A cursor starting at the next change, after `initial` rows.
    pub fn new(log: Arc<RetainedLog>, initial: Vec<RecordBatch>) -> Self {
        let position = log.next_seq();
        Self { log, position, pending: initial.into() }
    }

    pub fn schema(&self) -> SchemaRef {
        self.log.schema.clone()
    }

    /// `FETCH`: pending rows at once, else waits (until the timeout) for the next change.
    ///
    /// # Errors
    /// When the subscription ended (dropped, its relation dropped) and nothing is pending.
    pub async fn fetch(
        &mut self,
        count: FetchCount,
        timeout: Option<Duration>,
        probe: &ClientProbe,
    ) -> Result<RecordBatch> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let notified = self.log.notify.notified();
            let (batches, next) = self.log.entries_since_seq(self.position);
            self.position = next;
            self.pending.extend(batches);
            if !self.pending.is_empty() || count == FetchCount::Rows(0) {
                break;
            }
            if let Some(ended) = self.log.ended.lock().clone() {
                return Err(ServerError::new(SqlState::ObjectNotInPrerequisiteState, ended));
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
            let tick = tokio::time::Instant::now() + Duration::from_millis(200);
            let until = deadline.map_or(tick, |d| d.min(tick));
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => {
                    if probe.client_gone() {
                        return Err(ServerError::new(SqlState::QueryCanceled, "the client disconnected"));
                    }
                }
            }
        }
        crate::live::take_pending(&mut self.pending, &self.log.schema, count)
    }
}
