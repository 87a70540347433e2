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
use crate::state::{Decoder, Encoder, StateReader, StateWriter, push_prefixed, split_prefixed};

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
    /// Sessions created or changed, and sessions gone, since the last checkpoint.
    unsaved: HashSet<SessionId>,
    unsaved_deletes: HashSet<SessionId>,
    saved_closed_below: i64,
    /// Encodes accumulator values (argument types) and emitted values (return types).
    arg_codecs: Vec<Option<ScalarCodec>>,
    return_codecs: Vec<ScalarCodec>,
}

/// Writes and reads single values of one type, through Arrow's row format.
struct ScalarCodec {
    data_type: DataType,
    converter: RowConverter,
}

impl ScalarCodec {
    fn new(data_type: &DataType) -> Result<Self> {
        Ok(Self {
            data_type: data_type.clone(),
            converter: RowConverter::new(vec![SortField::new(data_type.clone())])?,
        })
    }

    fn encode(&self, value: &ScalarValue, out: &mut Encoder) -> Result<()> {
        let value = if value.is_null() { ScalarValue::try_from(&self.data_type)? } else { value.clone() };
        let array = value.cast_to(&self.data_type)?.to_array()?;
        let rows = self.converter.convert_columns(&[array])?;
        out.bytes(rows.row(0).as_ref());
        Ok(())
    }

    fn decode(&self, input: &mut Decoder<'_>) -> Result<ScalarValue> {
        let bytes = input.bytes()?;
        let parser = self.converter.parser();
        let mut arrays = self.converter.convert_rows([parser.parse(bytes)])?;
        let array = arrays.pop().ok_or_else(|| ExecError::Storage("corrupt session value".into()))?;
        Ok(ScalarValue::try_from_array(&array, 0)?)
    }

    fn encode_opt(&self, value: Option<&ScalarValue>, out: &mut Encoder) -> Result<()> {
        match value {
            Some(v) => {
                out.u8(1);
                self.encode(v, out)
            }
            None => {
                out.u8(0);
                Ok(())
            }
        }
    }

    fn decode_opt(&self, input: &mut Decoder<'_>) -> Result<Option<ScalarValue>> {
        match input.u8()? {
            0 => Ok(None),
            _ => self.decode(input).map(Some),
        }
    }
}

/// State keys: sessions under `[0][key length, u32 big-endian][key][start, i64 big-endian]`,
/// the closed bound under `CLOSED_BELOW_KEY`.
const CLOSED_BELOW_KEY: &[u8] = &[1];

fn session_state_key((key, start): &SessionId) -> Vec<u8> {
    let mut k = Vec::with_capacity(13 + key.len());
    k.push(0);
    push_prefixed(&mut k, key);
    k.extend_from_slice(&start.to_be_bytes());
    k
}

fn parse_session_key(bytes: &[u8]) -> Result<SessionId> {
    let corrupt = || ExecError::Storage("corrupt session state key".into());
    let (key, start) = split_prefixed(bytes.strip_prefix(&[0u8]).ok_or_else(corrupt)?)?;
    Ok((key.into(), i64::from_be_bytes(start.try_into().map_err(|_| corrupt())?)))
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
            unsaved: HashSet::new(),
            unsaved_deletes: HashSet::new(),
            saved_closed_below: i64::MIN,
            arg_codecs: calls
                .iter()
                .map(|c| c.arg_type.as_ref().map(ScalarCodec::new).transpose())
                .collect::<Result<_>>()?,
            return_codecs: calls.iter().map(|c| ScalarCodec::new(&c.return_type)).collect::<Result<_>>()?,
        })
    }

    fn encode_session(&self, session: &Session) -> Result<Vec<u8>> {
        let mut e = Encoder::new();
        e.i64(session.last);
        for (i, acc) in session.accs.iter().enumerate() {
            let arg = self.arg_codecs[i].as_ref();
            let value_codec = || arg.ok_or_else(|| ExecError::Internal("session aggregate without argument".into()));
            match acc {
                Acc::Count(n) => {
                    e.i64(*n);
                }
                Acc::Sum(v) | Acc::Min(v) | Acc::Max(v) => value_codec()?.encode_opt(v.as_ref(), &mut e)?,
                Acc::Avg { sum, n } => {
                    e.f64(*sum).i64(*n);
                }
                Acc::Bool { trues, falses, .. } => {
                    e.i64(*trues).i64(*falses);
                }
            }
        }
        match &session.emitted {
            Some((start, last, values)) => {
                e.u8(1).i64(*start).i64(*last);
                for (codec, v) in self.return_codecs.iter().zip(values) {
                    codec.encode(v, &mut e)?;
                }
            }
            None => {
                e.u8(0);
            }
        }
        Ok(e.finish())
    }

    fn decode_session(&self, bytes: &[u8]) -> Result<Session> {
        let mut d = Decoder::new(bytes);
        let last = d.i64()?;
        let mut accs = Vec::with_capacity(self.calls.len());
        for (i, call) in self.calls.iter().enumerate() {
            let arg = self.arg_codecs[i].as_ref();
            let value_codec = || arg.ok_or_else(|| ExecError::Internal("session aggregate without argument".into()));
            accs.push(match Acc::new(&call.kind) {
                Acc::Count(_) => Acc::Count(d.i64()?),
                Acc::Sum(_) => Acc::Sum(value_codec()?.decode_opt(&mut d)?),
                Acc::Min(_) => Acc::Min(value_codec()?.decode_opt(&mut d)?),
                Acc::Max(_) => Acc::Max(value_codec()?.decode_opt(&mut d)?),
                Acc::Avg { .. } => Acc::Avg { sum: d.f64()?, n: d.i64()? },
                Acc::Bool { and, .. } => Acc::Bool { and, trues: d.i64()?, falses: d.i64()? },
            });
        }
        let emitted = match d.u8()? {
            0 => None,
            _ => {
                let (start, last) = (d.i64()?, d.i64()?);
                let values = self.return_codecs.iter().map(|c| c.decode(&mut d)).collect::<Result<Vec<_>>>()?;
                Some((start, last, values))
            }
        };
        Ok(Session { last, accs, emitted })
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
                self.unsaved_deletes.insert((key.clone(), s));
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
        self.unsaved.insert((key.clone(), start));
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
            self.dirty.remove(&(key.clone(), start));
            self.unsaved_deletes.insert((key, start));
        }
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) -> Result<()> {
        for id in self.unsaved_deletes.drain() {
            state.delete(&session_state_key(&id));
        }
        for id in std::mem::take(&mut self.unsaved) {
            if let Some(session) = self.state.get(&id.0).and_then(|m| m.get(&id.1)) {
                state.put(&session_state_key(&id), self.encode_session(session)?);
            }
        }
        if self.closed_below != self.saved_closed_below {
            state.put(CLOSED_BELOW_KEY, self.closed_below.to_le_bytes().to_vec());
            self.saved_closed_below = self.closed_below;
        }
        Ok(())
    }

    fn restore(&mut self, state: &StateReader) -> Result<()> {
        state.for_each(|key, value| {
            if key == CLOSED_BELOW_KEY {
                self.closed_below = Decoder::new(value).i64()?;
                self.saved_closed_below = self.closed_below;
                return Ok(());
            }
            let (group, start) = parse_session_key(key)?;
            let session = self.decode_session(value)?;
            self.state.entry(group).or_default().insert(start, session);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{Step, assert_restores};

    fn call(kind: AggKind, arg: Option<usize>) -> AggCall {
        AggCall {
            kind,
            arg,
            arg_type: arg.map(|_| DataType::Int64),
            distinct: false,
            filter: None,
            order_by: vec![],
            return_type: DataType::Int64,
        }
    }

    /// Sessions of `(k, ts, v)` per `k` with a 10 ms gap: count(*), sum(v), max(v).
    fn sessions(emit_on_close: bool) -> Box<dyn Operator> {
        let input = ChangeBatch::from_pretty("I S I");
        let input_schema = DFSchema::try_from(input.schema().as_ref().clone()).unwrap_or_else(|e| panic!("{e}"));
        let output = ChangeBatch::from_pretty("I S S I I I");
        let schema = DFSchema::try_from(output.schema().as_ref().clone()).unwrap_or_else(|e| panic!("{e}"));
        let calls = vec![call(AggKind::CountRows, None), call(AggKind::Sum, Some(2)), call(AggKind::Max, Some(2))];
        Box::new(
            SessionAggOperator::new(
                &[0, 1, 1],
                &[(1, true), (2, false)],
                10_000_000,
                &calls,
                &input_schema,
                &schema,
                emit_on_close,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[test]
    fn restored_sessions_merge_and_close_exactly() -> Result<()> {
        for emit_on_close in [false, true] {
            assert_restores(
                || sessions(emit_on_close),
                &[
                    Step::Data(0, "I S I\n + 1 100 5\n + 1 130 7\n + 2 100 1"),
                    Step::Barrier,
                    Step::Restart,
                    // 115 bridges the sessions of key 1 that start at 100 and 130.
                    Step::Data(0, "I S I\n + 1 108 2\n + 1 119 3\n + 2 150 4"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Watermark(0, 1, 145),
                    Step::Data(0, "I S I\n + 1 140 1\n + 2 155 9"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Watermark(0, 1, 200),
                    Step::Barrier,
                ],
            )?;
        }
        Ok(())
    }
}
