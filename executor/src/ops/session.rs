//! Aggregation over session windows.
//!
//! Rows of one key belong to the same session while consecutive rows are less than `gap` apart;
//! `window_start` is the session's first row, `window_end` its last row plus the gap. A row
//! that falls between two sessions merges them. Sessions keep mergeable accumulators (counts,
//! sums, extremes), which is why the input must be append-only and the aggregates mergeable;
//! the planner checks both. A session whose end the watermark passed can no longer change: it
//! is emitted (`EMIT ON WINDOW CLOSE`) or simply forgotten.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{DFSchema, ScalarValue};
use eddy_common::ChangeBatch;
use eddy_planner::stream::{AggCall, AggKind};

use crate::error::{ExecError, Result};
use crate::expr::nullable_schema;
use crate::message::Barrier;
use crate::operator::{Operator, Output};

#[derive(Debug, Clone)]
enum Acc {
    Count(i64),
    Sum(Option<ScalarValue>),
    Avg { sum: f64, n: i64 },
    Min(Option<ScalarValue>),
    Max(Option<ScalarValue>),
    Bool { and: bool, trues: i64, falses: i64 },
}

impl Acc {
    fn new(kind: &AggKind) -> Self {
        match kind {
            AggKind::CountRows | AggKind::Count => Acc::Count(0),
            AggKind::Sum => Acc::Sum(None),
            AggKind::Avg => Acc::Avg { sum: 0.0, n: 0 },
            AggKind::Min => Acc::Min(None),
            AggKind::Max => Acc::Max(None),
            AggKind::BoolAnd => Acc::Bool { and: true, trues: 0, falses: 0 },
            _ => Acc::Bool { and: false, trues: 0, falses: 0 },
        }
    }

    fn update(&mut self, value: Option<ScalarValue>, count_rows: bool) -> Result<()> {
        match self {
            Acc::Count(n) => {
                // `None` means the row did not pass the call's FILTER.
                if value.as_ref().is_some_and(|v| count_rows || !v.is_null()) {
                    *n += 1;
                }
            }
            _ => {
                let Some(v) = value.filter(|v| !v.is_null()) else { return Ok(()) };
                self.merge_value(v)?;
            }
        }
        Ok(())
    }

    fn merge_value(&mut self, v: ScalarValue) -> Result<()> {
        match self {
            Acc::Count(n) => *n += 1,
            Acc::Sum(s) => {
                *s = Some(match s.take() {
                    Some(cur) => cur.add(&v)?,
                    None => v,
                })
            }
            Acc::Avg { sum, n } => {
                *sum += as_f64(&v)?;
                *n += 1;
            }
            Acc::Min(m) => {
                if m.as_ref().is_none_or(|cur| v.partial_cmp(cur) == Some(std::cmp::Ordering::Less)) {
                    *m = Some(v);
                }
            }
            Acc::Max(m) => {
                if m.as_ref().is_none_or(|cur| v.partial_cmp(cur) == Some(std::cmp::Ordering::Greater)) {
                    *m = Some(v);
                }
            }
            Acc::Bool { trues, falses, .. } => {
                if matches!(v, ScalarValue::Boolean(Some(true))) {
                    *trues += 1;
                } else {
                    *falses += 1;
                }
            }
        }
        Ok(())
    }

    fn merge(&mut self, other: Acc) -> Result<()> {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a), Acc::Sum(b)) => {
                if let Some(b) = b {
                    *a = Some(match a.take() {
                        Some(x) => x.add(&b)?,
                        None => b,
                    });
                }
            }
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (this @ (Acc::Min(_) | Acc::Max(_)), Acc::Min(Some(v)) | Acc::Max(Some(v))) => this.merge_value(v)?,
            (Acc::Min(_) | Acc::Max(_), _) => {}
            (Acc::Bool { trues, falses, .. }, Acc::Bool { trues: t2, falses: f2, .. }) => {
                *trues += t2;
                *falses += f2;
            }
            _ => return Err(ExecError::Internal("merging different session accumulators".into())),
        }
        Ok(())
    }

    fn value(&self, return_type: &DataType) -> Result<ScalarValue> {
        let v = match self {
            Acc::Count(n) => ScalarValue::Int64(Some(*n)),
            Acc::Sum(s) => s.clone().unwrap_or(ScalarValue::Null),
            Acc::Avg { sum, n } => ScalarValue::Float64((*n > 0).then(|| sum / *n as f64)),
            Acc::Min(m) | Acc::Max(m) => m.clone().unwrap_or(ScalarValue::Null),
            Acc::Bool { and, trues, falses } => ScalarValue::Boolean(if trues + falses == 0 {
                None
            } else if *and {
                Some(*falses == 0)
            } else {
                Some(*trues > 0)
            }),
        };
        if v.is_null() {
            return Ok(ScalarValue::try_from(return_type)?);
        }
        Ok(v.cast_to(return_type)?)
    }
}

fn as_f64(v: &ScalarValue) -> Result<f64> {
    match v.cast_to(&DataType::Float64)? {
        ScalarValue::Float64(Some(f)) => Ok(f),
        _ => Ok(0.0),
    }
}

/// A session's output row: partition key, start, last row time, aggregate values.
type SessionRow = (Box<[u8]>, i64, i64, Vec<ScalarValue>);
/// A session's identity: partition key and start.
type SessionId = (Box<[u8]>, i64);

struct Session {
    last: i64,
    accs: Vec<Acc>,
    /// The row last emitted for this session: (start, last, aggregate values).
    emitted: Option<(i64, i64, Vec<ScalarValue>)>,
}

pub struct SessionAggOperator {
    group_keys: Vec<usize>,
    /// Positions (in group keys) of window_start / window_end.
    sessions: Vec<(usize, bool)>,
    /// Input columns of the partition keys, and their positions in the group keys.
    partition: Vec<(usize, usize)>,
    time_column: usize,
    time_type: DataType,
    gap: i64,
    calls: Vec<AggCall>,
    key_converter: Option<RowConverter>,
    state: HashMap<Box<[u8]>, BTreeMap<i64, Session>>,
    dirty: HashSet<SessionId>,
    retractions: Vec<SessionRow>,
    schema: SchemaRef,
    emit_on_close: bool,
    closed_below: i64,
}

impl SessionAggOperator {
    /// # Errors
    /// When the time column is not a timestamp.
    pub fn new(
        group_keys: &[usize],
        sessions: &[(usize, bool)],
        gap_ns: i64,
        calls: &[AggCall],
        input_schema: &DFSchema,
        schema: &DFSchema,
        emit_on_close: bool,
    ) -> Result<Self> {
        let time_column = group_keys[sessions.first().map(|s| s.0).unwrap_or(0)];
        let time_type = input_schema.field(time_column).data_type().clone();
        let per_unit = match &time_type {
            DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
            DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000_000,
            DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => 1,
            other => return Err(ExecError::Internal(format!("session window over {other}"))),
        };
        let partition: Vec<(usize, usize)> = group_keys
            .iter()
            .enumerate()
            .filter(|(p, _)| !sessions.iter().any(|(s, _)| s == p))
            .map(|(p, k)| (*k, p))
            .collect();
        let key_converter = if partition.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                partition.iter().map(|(k, _)| SortField::new(input_schema.field(*k).data_type().clone())).collect(),
            )?)
        };
        Ok(Self {
            group_keys: group_keys.to_vec(),
            sessions: sessions.to_vec(),
            partition,
            time_column,
            time_type,
            gap: (gap_ns / per_unit).max(1),
            calls: calls.to_vec(),
            key_converter,
            state: HashMap::new(),
            dirty: HashSet::new(),
            retractions: Vec::new(),
            schema: nullable_schema(schema),
            emit_on_close,
            closed_below: i64::MIN,
        })
    }

    fn add_row(&mut self, key: Box<[u8]>, ts: i64, values: Vec<Option<ScalarValue>>) -> Result<()> {
        let sessions = self.state.entry(key.clone()).or_default();
        // Sessions this row touches: they start before ts + gap and end after ts - gap.
        let touching: Vec<i64> = sessions
            .range(..ts.saturating_add(self.gap))
            .rev()
            .take_while(|(_, s)| s.last.saturating_add(self.gap) > ts)
            .map(|(start, _)| *start)
            .collect();
        let mut accs: Vec<Acc> = self.calls.iter().map(|c| Acc::new(&c.kind)).collect();
        for ((acc, call), v) in accs.iter_mut().zip(&self.calls).zip(values) {
            acc.update(v, call.kind == AggKind::CountRows)?;
        }
        let mut start = ts;
        let mut last = ts;
        let mut kept_emitted = None;
        for s in touching {
            if let Some(old) = sessions.remove(&s) {
                start = start.min(s);
                last = last.max(old.last);
                for (a, b) in accs.iter_mut().zip(old.accs) {
                    a.merge(b)?;
                }
                self.dirty.remove(&(key.clone(), s));
                if let Some(e) = old.emitted {
                    if kept_emitted.is_none() {
                        kept_emitted = Some(e);
                    } else {
                        self.retractions.push((key.clone(), e.0, e.1, e.2));
                    }
                }
            }
        }
        sessions.insert(start, Session { last, accs, emitted: kept_emitted });
        self.dirty.insert((key, start));
        Ok(())
    }

    /// Builds output rows: `(key, start, last, values)`.
    fn rows(&self, rows: &[SessionRow]) -> Result<RecordBatch> {
        let n = rows.len();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.schema.fields().len()];
        if let Some(conv) = &self.key_converter {
            let parser = conv.parser();
            let keys = conv.convert_rows(rows.iter().map(|r| parser.parse(&r.0)))?;
            for ((_, pos), array) in self.partition.iter().zip(keys) {
                columns[*pos] = Some(array);
            }
        }
        for (pos, is_start) in &self.sessions {
            let values: Int64Array = rows.iter().map(|r| Some(if *is_start { r.1 } else { r.2 + self.gap })).collect();
            let array: ArrayRef = Arc::new(values);
            columns[*pos] = Some(cast(&array, &self.time_type)?);
        }
        let offset = self.group_keys.len();
        for (i, call) in self.calls.iter().enumerate() {
            let values: Vec<ScalarValue> = rows.iter().map(|r| r.3[i].clone()).collect();
            let array = if values.is_empty() {
                datafusion::arrow::array::new_empty_array(&call.return_type)
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns[offset + i] = Some(array);
        }
        let columns = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                let c = c.ok_or_else(|| ExecError::Internal("session output column missing".into()))?;
                if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()).map_err(ExecError::from) }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    fn values(&self, s: &Session) -> Result<Vec<ScalarValue>> {
        s.accs.iter().zip(&self.calls).map(|(a, c)| a.value(&c.return_type)).collect()
    }

    /// Emits pending retractions and the changes of dirty sessions in `keys` (all when None).
    fn flush(&mut self, only: Option<&HashSet<SessionId>>, out: &mut Output) -> Result<()> {
        let mut old_rows = std::mem::take(&mut self.retractions);
        let mut new_rows = Vec::new();
        let dirty: Vec<(Box<[u8]>, i64)> = match only {
            Some(set) => self.dirty.iter().filter(|d| set.contains(*d)).cloned().collect(),
            None => self.dirty.drain().collect(),
        };
        for d in &dirty {
            self.dirty.remove(d);
            let (key, start) = d;
            let values = match self.state.get(key).and_then(|m| m.get(start)) {
                Some(s) => (s.last, self.values(s)?),
                None => continue,
            };
            let Some(session) = self.state.get_mut(key).and_then(|m| m.get_mut(start)) else { continue };
            let new = (*start, values.0, values.1);
            if session.emitted.as_ref() == Some(&new) {
                continue;
            }
            if let Some(old) = session.emitted.take() {
                old_rows.push((key.clone(), old.0, old.1, old.2));
            }
            new_rows.push((key.clone(), new.0, new.1, new.2.clone()));
            session.emitted = Some(new);
        }
        if old_rows.is_empty() && new_rows.is_empty() {
            return Ok(());
        }
        let old = self.rows(&old_rows)?;
        let new = self.rows(&new_rows)?;
        let both = concat_batches(&self.schema, [&old, &new])?;
        let weights: Vec<i64> =
            std::iter::repeat_n(-1, old_rows.len()).chain(std::iter::repeat_n(1, new_rows.len())).collect();
        let idx = UInt32Array::from((0..both.num_rows() as u32).collect::<Vec<_>>());
        let data = take_record_batch(&both, &idx)?;
        out.push(ChangeBatch::try_new(data, weights.into())?);
        Ok(())
    }
}

impl Operator for SessionAggOperator {
    fn name(&self) -> &'static str {
        "SessionAgg"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, _out: &mut Output) -> Result<()> {
        if !batch.is_insert_only() {
            return Err(ExecError::Internal("session windows received a retraction".into()));
        }
        let data = batch.data();
        let times = cast(data.column(self.time_column), &DataType::Int64)?;
        let times = times.as_any().downcast_ref::<datafusion::arrow::array::PrimitiveArray<Int64Type>>().cloned();
        let Some(times) = times else { return Err(ExecError::Internal("session time column".into())) };
        let keys: Vec<Box<[u8]>> = match &self.key_converter {
            Some(conv) => {
                let arrays: Vec<ArrayRef> = self.partition.iter().map(|(k, _)| data.column(*k).clone()).collect();
                conv.convert_columns(&arrays)?.iter().map(|r| Box::from(r.as_ref())).collect()
            }
            None => vec![Box::from(&[][..]); data.num_rows()],
        };
        for (row, key) in keys.into_iter().enumerate() {
            if times.is_null(row) {
                continue;
            }
            let ts = times.value(row);
            if ts < self.closed_below {
                continue;
            }
            let mut values = Vec::with_capacity(self.calls.len());
            for call in &self.calls {
                let passes = match call.filter {
                    Some(f) => {
                        matches!(ScalarValue::try_from_array(data.column(f), row)?, ScalarValue::Boolean(Some(true)))
                    }
                    None => true,
                };
                if !passes {
                    values.push(None);
                    continue;
                }
                values.push(match call.arg {
                    Some(a) => Some(ScalarValue::try_from_array(data.column(a), row)?),
                    None => Some(ScalarValue::Boolean(Some(true))),
                });
            }
            self.add_row(key, ts, values)?;
        }
        Ok(())
    }

    fn on_barrier(&mut self, _barrier: &Barrier, out: &mut Output) -> Result<()> {
        if self.emit_on_close {
            return Ok(());
        }
        self.flush(None, out)
    }

    fn on_watermark(&mut self, column: usize, value: i64, out: &mut Output) -> Result<()> {
        if column != self.time_column || value <= self.closed_below {
            return Ok(());
        }
        self.closed_below = value;
        let gap = self.gap;
        let mut closed: Vec<(Box<[u8]>, i64)> = Vec::new();
        for (key, sessions) in &self.state {
            for (start, s) in sessions {
                if s.last.saturating_add(gap) <= value {
                    closed.push((key.clone(), *start));
                }
            }
        }
        if closed.is_empty() {
            return Ok(());
        }
        if self.emit_on_close {
            let mut rows = Vec::new();
            for (key, start) in &closed {
                if let Some(s) = self.state.get(key).and_then(|m| m.get(start)) {
                    rows.push((key.clone(), *start, s.last, self.values(s)?));
                }
            }
            let batch = self.rows(&rows)?;
            out.push(ChangeBatch::inserts(batch));
        } else {
            let set: HashSet<(Box<[u8]>, i64)> = closed.iter().cloned().collect();
            self.flush(Some(&set), out)?;
        }
        for (key, start) in closed {
            if let Some(m) = self.state.get_mut(&key) {
                m.remove(&start);
                if m.is_empty() {
                    self.state.remove(&key);
                }
            }
            self.dirty.remove(&(key, start));
        }
        Ok(())
    }
}
