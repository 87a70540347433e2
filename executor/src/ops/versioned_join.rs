//! Event-time temporal join: `stream JOIN versioned FOR SYSTEM_TIME AS OF stream.ts ON ...`.
//!
//! Each stream (left) row joins the version of the right row with its key that was valid at
//! the left row's event time. The right side is a versioned relation: a primary key covered by
//! the join key and a watermarked column giving when each version starts. Every inserted right
//! row is a version of its key, valid until the key's next version. A delete of a key that the
//! same batch does not insert again ends the key at the deleted row's time, or at the right
//! watermark when that is later: what was emitted stays as it was.
//!
//! A left row is held until the right watermark passes its time: only then are all versions it
//! may see known. It is then emitted once and never retracted, so the output only inserts.
//! Versions older than the newest one at or before both watermarks can no longer be chosen
//! and are dropped at the next barrier.

use std::collections::{BTreeMap, HashSet};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{DFSchema, JoinType};
use datafusion::logical_expr::Expr;
use eddy_common::ChangeBatch;
use eddy_planner::stream::join::VersionedTimes;
use hashbrown::HashMap;

use crate::error::{ExecError, Result};
use crate::expr::{CompiledExpr, nullable_schema};
use crate::operator::{Operator, Output, StateSize};
use crate::state::{Decoder, Encoder, StateReader, StateWriter};

/// A left row waiting for the right watermark.
struct HeldRow {
    /// None when a key column is NULL: it matches nothing.
    key: Option<Box<[u8]>>,
    row: Box<[u8]>,
    weight: i64,
}

/// The versions of one key by start time; `None` marks the key absent from that time on.
type Versions = BTreeMap<i64, Option<Box<[u8]>>>;

pub struct VersionedJoinOperator {
    /// Inner or left.
    join_type: JoinType,
    left_keys: Vec<usize>,
    right_keys: Vec<usize>,
    times: VersionedTimes,
    left_width: usize,
    key_converter: RowConverter,
    left_converter: RowConverter,
    right_converter: RowConverter,
    versions: HashMap<Box<[u8]>, Versions>,
    /// Keys with more than one version or an end: the only ones a sweep visits.
    prunable: HashSet<Box<[u8]>>,
    held: BTreeMap<i64, Vec<HeldRow>>,
    held_rows: u64,
    held_bytes: u64,
    version_rows: u64,
    version_bytes: u64,
    left_watermark: i64,
    right_watermark: i64,
    emitted_watermark: i64,
    swept_below: i64,
    filter: Option<CompiledExpr>,
    filter_schema: SchemaRef,
    schema: SchemaRef,
    /// The state changed since the last checkpoint. Its state is bounded by the watermarks
    /// (versions behind both are freed, held rows leave as the right watermark passes), so a
    /// checkpoint writes it whole.
    unsaved: bool,
}

/// The single state key the whole state is written under.
const STATE_KEY: &[u8] = b"all";

impl VersionedJoinOperator {
    /// # Errors
    /// For join types other than inner and left, and types without a row encoding.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        join_type: JoinType,
        left_keys: &[usize],
        right_keys: &[usize],
        times: VersionedTimes,
        filter: Option<&Expr>,
        left_schema: &DFSchema,
        right_schema: &DFSchema,
        filter_schema: &DFSchema,
        schema: &DFSchema,
    ) -> Result<Self> {
        if !matches!(join_type, JoinType::Inner | JoinType::Left) {
            return Err(ExecError::Internal(format!("{join_type} temporal join")));
        }
        if left_keys.len() != right_keys.len() || left_keys.is_empty() {
            return Err(ExecError::Internal("join keys do not pair up".into()));
        }
        let sort_fields = |schema: &DFSchema| -> Vec<SortField> {
            schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect()
        };
        let key_types =
            left_keys.iter().map(|k| SortField::new(left_schema.field(*k).data_type().clone())).collect::<Vec<_>>();
        Ok(Self {
            join_type,
            left_keys: left_keys.to_vec(),
            right_keys: right_keys.to_vec(),
            times,
            left_width: left_schema.fields().len(),
            key_converter: RowConverter::new(key_types)?,
            left_converter: RowConverter::new(sort_fields(left_schema))?,
            right_converter: RowConverter::new(sort_fields(right_schema))?,
            versions: HashMap::new(),
            prunable: HashSet::new(),
            held: BTreeMap::new(),
            held_rows: 0,
            held_bytes: 0,
            version_rows: 0,
            version_bytes: 0,
            left_watermark: i64::MIN,
            right_watermark: i64::MIN,
            emitted_watermark: i64::MIN,
            swept_below: i64::MIN,
            filter: filter.map(|f| CompiledExpr::new(f, filter_schema)).transpose()?,
            filter_schema: nullable_schema(filter_schema),
            schema: nullable_schema(schema),
            unsaved: false,
        })
    }

    fn encode_state(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.i64(self.left_watermark).i64(self.right_watermark).i64(self.emitted_watermark).i64(self.swept_below);
        e.u64(self.versions.len() as u64);
        for (key, versions) in &self.versions {
            e.bytes(key).u64(versions.len() as u64);
            for (time, row) in versions {
                e.i64(*time).opt_bytes(row.as_deref());
            }
        }
        e.u64(self.held.len() as u64);
        for (time, rows) in &self.held {
            e.i64(*time).u64(rows.len() as u64);
            for r in rows {
                e.opt_bytes(r.key.as_deref()).bytes(&r.row).i64(r.weight);
            }
        }
        e.finish()
    }

    fn decode_state(&mut self, bytes: &[u8]) -> Result<()> {
        let mut d = Decoder::new(bytes);
        self.left_watermark = d.i64()?;
        self.right_watermark = d.i64()?;
        self.emitted_watermark = d.i64()?;
        self.swept_below = d.i64()?;
        for _ in 0..d.u64()? {
            let key: Box<[u8]> = d.bytes()?.into();
            let mut versions = Versions::new();
            for _ in 0..d.u64()? {
                let time = d.i64()?;
                let row: Option<Box<[u8]>> = d.opt_bytes()?.map(Into::into);
                self.version_rows += 1;
                self.version_bytes += row.as_ref().map_or(0, |r| r.len() as u64);
                versions.insert(time, row);
            }
            if versions.len() > 1 || versions.values().any(Option::is_none) {
                self.prunable.insert(key.clone());
            }
            self.versions.insert(key, versions);
        }
        for _ in 0..d.u64()? {
            let time = d.i64()?;
            let mut rows = Vec::new();
            for _ in 0..d.u64()? {
                let key = d.opt_bytes()?.map(Into::into);
                let row: Box<[u8]> = d.bytes()?.into();
                let weight = d.i64()?;
                self.held_rows += 1;
                self.held_bytes += row.len() as u64;
                rows.push(HeldRow { key, row, weight });
            }
            self.held.insert(time, rows);
        }
        Ok(())
    }

    fn keys_and_times(
        &self,
        batch: &ChangeBatch,
        keys: &[usize],
        time: usize,
    ) -> Result<(Rows, Vec<bool>, Int64Array)> {
        let columns: Vec<ArrayRef> = keys.iter().map(|c| batch.column(*c).clone()).collect();
        let rows = self.key_converter.convert_columns(&columns)?;
        let null_key = (0..batch.num_rows()).map(|i| columns.iter().any(|c| c.is_null(i))).collect();
        let times = cast(batch.column(time), &DataType::Int64)?;
        let times = times
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| ExecError::Internal("time column is not an integer".into()))?;
        Ok((rows, null_key, times))
    }

    fn process_left(&mut self, batch: &ChangeBatch, out: &mut Output) -> Result<()> {
        let (keys, null_key, times) = self.keys_and_times(batch, &self.left_keys, self.times.left_time)?;
        let rows = self.left_converter.convert_columns(batch.data().columns())?;
        let weights = batch.weights();
        let mut ready = Vec::new();
        for (i, &null_key) in null_key.iter().enumerate() {
            let weight = weights.value(i);
            if weight < 0 {
                return Err(ExecError::InvalidInput(
                    "the stream side of a temporal join retracted a row; it must only insert".into(),
                ));
            }
            let held = HeldRow {
                key: (!null_key).then(|| keys.row(i).as_ref().into()),
                row: rows.row(i).as_ref().into(),
                weight,
            };
            // A row without a time or key matches no version: it leaves at once.
            if times.is_null(i) || held.key.is_none() || times.value(i) < self.right_watermark {
                let time = if times.is_null(i) { i64::MIN } else { times.value(i) };
                ready.push((time, held));
            } else {
                self.held_rows += 1;
                self.held_bytes += held.row.len() as u64;
                self.held.entry(times.value(i)).or_default().push(held);
            }
        }
        self.emit(ready, out)
    }

    fn process_right(&mut self, batch: &ChangeBatch) -> Result<()> {
        let (keys, null_key, times) = self.keys_and_times(batch, &self.right_keys, self.times.right_time)?;
        let rows = self.right_converter.convert_columns(batch.data().columns())?;
        let weights = batch.weights();
        let inserted: HashSet<&[u8]> = (0..batch.num_rows())
            .filter(|i| weights.value(*i) > 0 && !null_key[*i])
            .map(|i| keys.row(i).data())
            .collect();
        for (i, _) in null_key.iter().enumerate().filter(|(_, null)| !**null) {
            let key = keys.row(i);
            let time = if times.is_null(i) { i64::MIN } else { times.value(i) };
            let versions = self.versions.entry(key.as_ref().into()).or_default();
            if weights.value(i) > 0 {
                let new: Box<[u8]> = rows.row(i).as_ref().into();
                self.version_bytes += new.len() as u64;
                match versions.insert(time, Some(new)) {
                    Some(old) => self.version_bytes -= old.map_or(0, |r| r.len() as u64),
                    None => self.version_rows += 1,
                }
            } else if !inserted.contains(key.as_ref()) {
                // The old row of an update stays in the history; a delete ends the key.
                let end = time.max(self.right_watermark);
                match versions.insert(end, None) {
                    Some(old) => self.version_bytes -= old.map_or(0, |r| r.len() as u64),
                    None => self.version_rows += 1,
                }
            }
            let more_than_one = versions.len() > 1 || versions.values().any(Option::is_none);
            if versions.is_empty() {
                self.versions.remove(key.as_ref());
                self.prunable.remove(key.as_ref());
            } else if more_than_one {
                self.prunable.insert(key.as_ref().into());
            }
        }
        Ok(())
    }

    /// Joins each ready left row with the version valid at its time and emits the result.
    fn emit(&self, ready: Vec<(i64, HeldRow)>, out: &mut Output) -> Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        let mut right_rows = Vec::new();
        let mut right_index: Vec<Option<u32>> = Vec::with_capacity(ready.len());
        let right_parser = self.right_converter.parser();
        for (time, held) in &ready {
            let version = held
                .key
                .as_ref()
                .and_then(|k| self.versions.get(k.as_ref()))
                .and_then(|v| v.range(..=*time).next_back())
                .and_then(|(_, row)| row.as_deref());
            right_index.push(version.map(|row| {
                right_rows.push(right_parser.parse(row));
                (right_rows.len() - 1) as u32
            }));
        }
        let left_parser = self.left_converter.parser();
        let left_columns = self.left_converter.convert_rows(ready.iter().map(|(_, h)| left_parser.parse(&h.row)))?;
        let right_columns: Vec<ArrayRef> = if right_rows.is_empty() {
            self.filter_schema
                .fields()
                .iter()
                .skip(self.left_width)
                .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), ready.len()))
                .collect()
        } else {
            let distinct = self.right_converter.convert_rows(right_rows)?;
            let indices: UInt32Array = right_index.iter().copied().collect();
            distinct.iter().map(|c| Ok(take(c, &indices, None)?)).collect::<Result<_>>()?
        };
        let mut matched: Vec<bool> = right_index.iter().map(Option::is_some).collect();
        let mut columns: Vec<ArrayRef> = left_columns.into_iter().chain(right_columns).collect();
        if let Some(filter) = &self.filter {
            let pairs = RecordBatch::try_new(self.filter_schema.clone(), columns.clone())?;
            let result = filter.evaluate(&pairs)?;
            let mask = result
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| ExecError::Internal("join condition is not boolean".into()))?;
            for (i, m) in matched.iter_mut().enumerate() {
                *m = *m && mask.is_valid(i) && mask.value(i);
            }
        }
        let any_unmatched = matched.iter().any(|m| !m);
        if self.join_type == JoinType::Left && any_unmatched {
            // Rows whose version failed the condition are padded, like rows without one.
            let pad: BooleanArray = matched.iter().map(|m| Some(!m)).collect();
            for column in &mut columns[self.left_width..] {
                let nulls = datafusion::arrow::array::new_null_array(column.data_type(), column.len());
                *column = datafusion::arrow::compute::kernels::zip::zip(&pad, &nulls, &*column)?;
            }
        }
        let weights: Int64Array = ready.iter().map(|(_, h)| Some(h.weight)).collect();
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        let mut batch = ChangeBatch::try_new(data, weights)?;
        if self.join_type == JoinType::Inner && any_unmatched {
            batch = batch.filter(&matched.iter().map(|m| Some(*m)).collect::<BooleanArray>())?;
        }
        out.push(batch);
        Ok(())
    }

    /// Emits the output watermark on the left time column when both inputs moved it.
    fn advance_watermark(&mut self, out: &mut Output) {
        let value = self.left_watermark.min(self.right_watermark);
        if value > self.emitted_watermark {
            self.emitted_watermark = value;
            out.push_watermark(self.times.left_time, value);
        }
    }

    /// Drops versions no row can choose any more: for each key, all but the newest at or
    /// before both watermarks, and the key itself when that one is an end.
    fn sweep(&mut self) {
        let below = self.left_watermark.min(self.right_watermark);
        if below <= self.swept_below {
            return;
        }
        self.swept_below = below;
        let (mut rows, mut bytes) = (0u64, 0u64);
        let versions = &mut self.versions;
        self.prunable.retain(|key| {
            let Some(v) = versions.get_mut(key) else { return false };
            let mut kept = v.split_off(&below);
            // The newest version before `below` is still valid at `below` unless one starts there.
            if !kept.contains_key(&below)
                && let Some((time, row)) = v.pop_last()
            {
                kept.insert(time, row);
            }
            for row in v.values() {
                rows += 1;
                bytes += row.as_ref().map_or(0, |r| r.len() as u64);
            }
            *v = kept;
            // A leading end means no version before it; it only matters if something follows.
            if let Some((_, None)) = v.first_key_value() {
                v.pop_first();
                rows += 1;
            }
            let still = v.len() > 1 || v.values().any(Option::is_none);
            if v.is_empty() {
                versions.remove(key);
            }
            still
        });
        self.version_rows -= rows;
        self.version_bytes -= bytes;
    }
}

impl Operator for VersionedJoinOperator {
    fn name(&self) -> &'static str {
        "TemporalJoin"
    }

    fn process(&mut self, input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.unsaved = true;
        match input {
            0 => self.process_left(&batch, out),
            1 => self.process_right(&batch),
            _ => Err(ExecError::Internal(format!("join has no input {input}"))),
        }
    }

    fn on_barrier(&mut self, _barrier: &crate::message::Barrier, _out: &mut Output) -> Result<()> {
        self.sweep();
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) -> Result<()> {
        if std::mem::take(&mut self.unsaved) {
            state.put(STATE_KEY, self.encode_state());
        }
        Ok(())
    }

    fn restore(&mut self, state: &StateReader) -> Result<()> {
        if let Some(bytes) = state.get(STATE_KEY)? {
            self.decode_state(&bytes)?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, _column: usize, _value: i64, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn watermarks_per_input(&self) -> bool {
        true
    }

    fn on_input_watermark(&mut self, input: usize, column: usize, value: i64, out: &mut Output) -> Result<()> {
        self.unsaved = true;
        match input {
            0 if column == self.times.left_time && value > self.left_watermark => {
                self.left_watermark = value;
            }
            1 if column == self.times.right_time && value > self.right_watermark => {
                self.right_watermark = value;
                // Rows before the watermark have seen every version they can.
                let later = self.held.split_off(&value);
                let ready: Vec<(i64, HeldRow)> = std::mem::replace(&mut self.held, later)
                    .into_iter()
                    .flat_map(|(time, rows)| rows.into_iter().map(move |r| (time, r)))
                    .collect();
                self.held_rows -= ready.len() as u64;
                self.held_bytes -= ready.iter().map(|(_, h)| h.row.len() as u64).sum::<u64>();
                self.emit(ready, out)?;
            }
            _ => return Ok(()),
        }
        self.advance_watermark(out);
        Ok(())
    }

    fn state_size(&self) -> Option<StateSize> {
        Some(StateSize { rows: self.held_rows + self.version_rows, bytes: self.held_bytes + self.version_bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::Emitted;
    use datafusion::common::TableReference;

    fn qualified(types: &str, table: &str) -> DFSchema {
        let batch = ChangeBatch::from_pretty(types);
        DFSchema::try_from_qualified_schema(TableReference::bare(table), batch.schema().as_ref())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `l(key, ts) LEFT JOIN r(key, ts, value) FOR SYSTEM_TIME AS OF l.ts ON l.key = r.key`.
    fn rates() -> VersionedJoinOperator {
        let l = qualified("I I", "l");
        let r = qualified("I I T", "r");
        let both = l.join(&r).unwrap_or_else(|e| panic!("{e}"));
        let times = VersionedTimes { left_time: 1, right_time: 1 };
        VersionedJoinOperator::new(JoinType::Left, &[0], &[0], times, None, &l, &r, &both, &both)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn text(out: &mut Output) -> String {
        out.take()
            .iter()
            .map(|e| match e {
                Emitted::Data(b) => b.to_pretty(),
                Emitted::Watermark { column, value } => format!("wm {column} {value}\n"),
            })
            .collect()
    }

    fn feed(op: &mut VersionedJoinOperator, input: usize, rows: &str) -> String {
        let mut out = Output::default();
        op.process(input, ChangeBatch::from_pretty(rows), &mut out).unwrap_or_else(|e| panic!("{e}"));
        text(&mut out)
    }

    fn watermark(op: &mut VersionedJoinOperator, input: usize, value: i64) -> String {
        let mut out = Output::default();
        op.on_input_watermark(input, 1, value, &mut out).unwrap_or_else(|e| panic!("{e}"));
        text(&mut out)
    }

    #[test]
    fn each_row_sees_the_version_valid_at_its_time() {
        let mut op = rates();
        feed(&mut op, 1, "I I T\n + 1 10 a\n + 1 20 b");
        assert_eq!(watermark(&mut op, 1, 19), "");
        assert_eq!(feed(&mut op, 0, "I I\n + 1 12"), "+ 1 12 1 10 a\n");
        // Out of order: 25 waits for the right watermark; 18 is before it and sees version 10.
        assert_eq!(feed(&mut op, 0, "I I\n + 1 25\n + 1 18\n + 2 13"), "+ 1 18 1 10 a\n+ 2 13 null null null\n");
        // An update adds a version; the old one stays valid until the new one starts.
        assert_eq!(feed(&mut op, 1, "I I T\n - 1 20 b\n + 1 22 c"), "");
        assert_eq!(feed(&mut op, 0, "I I\n + 1 14"), "+ 1 14 1 10 a\n");
        assert_eq!(watermark(&mut op, 1, 30), "+ 1 25 1 22 c\n");
        assert_eq!(watermark(&mut op, 0, 26), "wm 1 26\n");
        let barrier = crate::message::Barrier { epoch: 1, checkpoint: false, mutation: None };
        op.on_barrier(&barrier, &mut Output::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(op.state_size().map(|s| s.rows), Some(1), "versions 10 and 20 are behind both watermarks");
        // A delete ends the key from the right watermark on; rows before it keep their match.
        assert_eq!(feed(&mut op, 1, "I I T\n - 1 22 c"), "");
        assert_eq!(feed(&mut op, 0, "I I\n + 1 29\n + 1 31"), "+ 1 29 1 22 c\n");
        assert_eq!(watermark(&mut op, 1, 40), "+ 1 31 null null null\n");
        assert_eq!(watermark(&mut op, 0, 45), "wm 1 40\n");
    }

    #[test]
    fn inner_join_drops_rows_without_a_version() {
        let l = qualified("I I", "l");
        let r = qualified("I I T", "r");
        let both = l.join(&r).unwrap_or_else(|e| panic!("{e}"));
        let times = VersionedTimes { left_time: 1, right_time: 1 };
        let mut op = VersionedJoinOperator::new(JoinType::Inner, &[0], &[0], times, None, &l, &r, &both, &both)
            .unwrap_or_else(|e| panic!("{e}"));
        feed(&mut op, 1, "I I T\n + 1 10 a");
        feed(&mut op, 0, "I I\n + 1 5\n + 1 11\n + 3 12");
        assert_eq!(watermark(&mut op, 1, 20), "+ 1 11 1 10 a\n");
        let mut out = Output::default();
        assert!(op.process(0, ChangeBatch::from_pretty("I I\n - 1 11"), &mut out).is_err());
    }

    #[test]
    fn restored_temporal_join_keeps_versions_and_held_rows() -> Result<()> {
        use crate::state::testing::{Step, assert_restores};
        assert_restores(
            || Box::new(rates()),
            &[
                Step::Data(1, "I I T\n + 1 10 a\n + 1 20 b"),
                Step::Watermark(1, 1, 19),
                Step::Data(0, "I I\n + 1 12\n + 1 25\n + 2 13"),
                Step::Barrier,
                Step::Restart,
                Step::Data(1, "I I T\n - 1 20 b\n + 1 22 c"),
                Step::Watermark(1, 1, 30),
                Step::Watermark(0, 1, 26),
                Step::Barrier,
                Step::Restart,
                Step::Data(1, "I I T\n - 1 22 c"),
                Step::Data(0, "I I\n + 1 29\n + 1 31"),
                Step::Barrier,
                Step::Restart,
                Step::Watermark(1, 1, 40),
                Step::Watermark(0, 1, 45),
                Step::Barrier,
            ],
        )
    }
}
