//! Counters the runtime keeps for system views and benchmarks: source progress, late rows,
//! rows reaching sinks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eddy_common::ids::ObjectId;
use eddy_connectors::SourceStats;
use parking_lot::Mutex;

use crate::message::ActorId;

/// One row of `eddy_catalog.source_splits`.
#[derive(Debug, Clone)]
pub struct SourceSplitStatus {
    pub job: ObjectId,
    pub source: ObjectId,
    pub actor: ActorId,
    pub rows: u64,
    pub bad_records: u64,
    pub last_error: Option<String>,
    pub finished: bool,
}

/// A split's job, source and progress.
type SplitEntry = (ObjectId, ObjectId, Arc<SourceStats>);

/// The in-memory state one operator of one actor reported at its last barrier.
#[derive(Debug, Clone)]
pub struct OperatorState {
    pub job: ObjectId,
    pub actor: ActorId,
    /// Position of the operator in its actor's chain.
    pub position: usize,
    pub operator: &'static str,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Default)]
pub struct Metrics {
    sources: Mutex<HashMap<ActorId, SplitEntry>>,
    late_rows: Mutex<HashMap<(ObjectId, ObjectId), Arc<AtomicU64>>>,
    sink_rows: Mutex<HashMap<ObjectId, Arc<AtomicU64>>>,
    operator_state: Mutex<HashMap<ActorId, Vec<OperatorState>>>,
    /// Recent source-chunk-to-commit latencies, in microseconds.
    freshness: Mutex<std::collections::VecDeque<u64>>,
}

const FRESHNESS_SAMPLES: usize = 100_000;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn register_source(&self, actor: ActorId, job: ObjectId, source: ObjectId) -> Arc<SourceStats> {
        let p = Arc::new(SourceStats::default());
        self.sources.lock().insert(actor, (job, source, p.clone()));
        p
    }

    /// The counter of rows of `source` dropped as late by `job`.
    pub fn late_counter(&self, job: ObjectId, source: ObjectId) -> Arc<AtomicU64> {
        self.late_rows.lock().entry((job, source)).or_default().clone()
    }

    pub fn sink_counter(&self, sink: ObjectId) -> Arc<AtomicU64> {
        self.sink_rows.lock().entry(sink).or_default().clone()
    }

    /// Replaces what `actor` last reported about its operators' state.
    pub fn record_operator_state(&self, actor: ActorId, states: Vec<OperatorState>) {
        self.operator_state.lock().insert(actor, states);
    }

    /// The last reported state of every stateful operator instance.
    pub fn operator_state(&self) -> Vec<OperatorState> {
        let mut all: Vec<OperatorState> = self.operator_state.lock().values().flatten().cloned().collect();
        all.sort_by_key(|s| (s.job, s.actor, s.position));
        all
    }

    pub fn forget_actor(&self, actor: ActorId) {
        self.operator_state.lock().remove(&actor);
        self.sources.lock().remove(&actor);
    }

    /// Drops every counter of a dropped job.
    pub fn forget_job(&self, job: ObjectId) {
        self.sources.lock().retain(|_, (j, _, _)| *j != job);
        self.late_rows.lock().retain(|(j, _), _| *j != job);
        self.sink_rows.lock().remove(&job);
    }

    pub fn source_splits(&self) -> Vec<SourceSplitStatus> {
        let mut v: Vec<SourceSplitStatus> = self
            .sources
            .lock()
            .iter()
            .map(|(actor, (job, source, p))| SourceSplitStatus {
                job: *job,
                source: *source,
                actor: *actor,
                rows: p.rows(),
                bad_records: p.bad_records(),
                last_error: p.last_error(),
                finished: p.finished(),
            })
            .collect();
        v.sort_by_key(|s| (s.job, s.actor));
        v
    }

    /// `(job, source, late rows)`.
    pub fn late_rows(&self) -> Vec<(ObjectId, ObjectId, u64)> {
        let mut v: Vec<_> =
            self.late_rows.lock().iter().map(|((j, s), c)| (*j, *s, c.load(Ordering::Relaxed))).collect();
        v.sort();
        v
    }

    /// Records how long source chunks waited until the epoch holding them was committed.
    pub fn record_freshness(&self, latencies: impl Iterator<Item = std::time::Duration>) {
        let mut f = self.freshness.lock();
        for l in latencies {
            if f.len() == FRESHNESS_SAMPLES {
                f.pop_front();
            }
            f.push_back(l.as_micros() as u64);
        }
    }

    /// `(p50, p99, samples)` of recent freshness, in milliseconds.
    pub fn freshness(&self) -> (f64, f64, usize) {
        let mut v: Vec<u64> = self.freshness.lock().iter().copied().collect();
        if v.is_empty() {
            return (0.0, 0.0, 0);
        }
        v.sort_unstable();
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
        (at(0.5), at(0.99), v.len())
    }

    pub fn reset_freshness(&self) {
        self.freshness.lock().clear();
    }

    /// `(sink, rows)`.
    pub fn sink_rows(&self) -> Vec<(ObjectId, u64)> {
        let mut v: Vec<_> = self.sink_rows.lock().iter().map(|(s, c)| (*s, c.load(Ordering::Relaxed))).collect();
        v.sort();
        v
    }
}
