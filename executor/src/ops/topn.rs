//! Top-N per partition with retractions: `ROW_NUMBER() / RANK() / DENSE_RANK() OVER
//! (PARTITION BY p ORDER BY o)` filtered to the first `limit` ranks, and `ORDER BY o LIMIT n`.
//!
//! Each partition keeps its rows ordered by the sort key (then by the row itself, so ties
//! break the same way every time), with their multiplicities. Changes only update that order
//! and mark the partition dirty; at the barrier each dirty partition recomputes its first
//! `limit` ranks — a walk over at most that many entries — and emits the difference from what
//! it emitted before. Deleting a top row therefore refills from the rows below it. On an
//! append-only input no row ever leaves, so rows that fall below the limit are dropped from
//! state for good.

use std::collections::BTreeMap;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt64Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::DFSchema;
use eddy_common::ChangeBatch;
use eddy_planner::stream::RankKind;
use hashbrown::{HashMap, HashSet};

use crate::error::{ExecError, Result};
use crate::expr::nullable_schema;
use crate::message::Barrier;
use crate::operator::{Operator, Output};
use crate::state::{Decoder, StateReader, StateWriter, push_prefixed, split_prefixed};

/// An encoded row and its rank.
type RankedRow = (Box<[u8]>, u64);

/// Encoded (sort key, row).
type SortedEntry = (Box<[u8]>, Box<[u8]>);

#[derive(Default)]
struct Partition {
    /// (sort key, row) -> multiplicity.
    rows: BTreeMap<SortedEntry, i64>,
    /// What was last emitted, in rank order.
    emitted: Vec<RankedRow>,
}

pub struct TopNOperator {
    partition_columns: Vec<usize>,
    order_columns: Vec<usize>,
    limit: u64,
    offset: u64,
    rank: RankKind,
    append_only_input: bool,
    partition_converter: Option<RowConverter>,
    order_converter: RowConverter,
    row_converter: RowConverter,
    partitions: HashMap<Box<[u8]>, Partition>,
    dirty: HashSet<Box<[u8]>>,
    schema: SchemaRef,
    /// Type of the rank column appended to each row, if the rank is output.
    rank_type: Option<DataType>,
    /// Entries whose multiplicity changed since the last checkpoint: (partition, entry) ->
    /// new multiplicity (0: gone).
    unsaved: HashMap<(Box<[u8]>, SortedEntry), i64>,
}

/// The state key of one entry: partition, sort key and row, the first two length-prefixed.
fn entry_state_key(partition: &[u8], (key, row): &SortedEntry) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + partition.len() + key.len() + row.len());
    push_prefixed(&mut k, partition);
    push_prefixed(&mut k, key);
    k.extend_from_slice(row);
    k
}

impl TopNOperator {
    /// # Errors
    /// When a column type has no row encoding.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partition_columns: &[usize],
        order: &[(usize, bool, bool)],
        limit: u64,
        offset: u64,
        rank: RankKind,
        with_rank: bool,
        append_only_input: bool,
        input_schema: &DFSchema,
        schema: &DFSchema,
    ) -> Result<Self> {
        let field_type = |c: usize| input_schema.field(c).data_type().clone();
        let partition_converter = if partition_columns.is_empty() {
            None
        } else {
            Some(RowConverter::new(partition_columns.iter().map(|c| SortField::new(field_type(*c))).collect())?)
        };
        let order_fields: Vec<SortField> = order
            .iter()
            .map(|(c, asc, nulls_first)| {
                SortField::new_with_options(field_type(*c), SortOptions { descending: !asc, nulls_first: *nulls_first })
            })
            .collect();
        let row_converter =
            RowConverter::new(input_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
        let schema = nullable_schema(schema);
        let rank_type = if with_rank { schema.fields().last().map(|f| f.data_type().clone()) } else { None };
        Ok(Self {
            partition_columns: partition_columns.to_vec(),
            order_columns: order.iter().map(|(c, _, _)| *c).collect(),
            limit,
            offset,
            rank,
            append_only_input,
            partition_converter,
            order_converter: RowConverter::new(order_fields)?,
            row_converter,
            partitions: HashMap::new(),
            dirty: HashSet::new(),
            schema,
            rank_type,
            unsaved: HashMap::new(),
        })
    }

    /// Rows (distinct) held in state over all partitions.
    pub fn state_rows(&self) -> usize {
        self.partitions.values().map(|p| p.rows.len()).sum()
    }

    /// The first ranks of a partition: (row, rank) for every row copy with offset < rank ≤
    /// offset + limit, and the number of state entries they span.
    fn top(&self, partition: &Partition) -> (Vec<RankedRow>, usize) {
        let bound = self.offset + self.limit;
        let mut out = Vec::new();
        let mut position = 0u64;
        let mut rank = 0u64;
        let mut dense = 0u64;
        let mut previous_key: Option<&[u8]> = None;
        let mut entries = 0usize;
        for ((key, row), count) in &partition.rows {
            let new_key = previous_key != Some(key.as_ref());
            if new_key {
                dense += 1;
                rank = position + 1;
            }
            let first_rank = match self.rank {
                RankKind::RowNumber => position + 1,
                RankKind::Rank => rank,
                RankKind::DenseRank => dense,
            };
            if first_rank > bound {
                break;
            }
            entries += 1;
            for k in 0..(*count).max(0) as u64 {
                let r = match self.rank {
                    RankKind::RowNumber => position + 1 + k,
                    RankKind::Rank => rank,
                    RankKind::DenseRank => dense,
                };
                if r > bound {
                    break;
                }
                if r > self.offset {
                    out.push((row.clone(), r));
                }
            }
            position += (*count).max(0) as u64;
            previous_key = Some(key.as_ref());
        }
        (out, entries)
    }

    fn decode(&self, rows: &[RankedRow], weights: Vec<i64>) -> Result<ChangeBatch> {
        let parser = self.row_converter.parser();
        let mut columns: Vec<ArrayRef> = self.row_converter.convert_rows(rows.iter().map(|(r, _)| parser.parse(r)))?;
        if let Some(t) = &self.rank_type {
            let ranks: ArrayRef = std::sync::Arc::new(UInt64Array::from_iter_values(rows.iter().map(|(_, k)| *k)));
            columns.push(datafusion::arrow::compute::cast(&ranks, t)?);
        }
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok(ChangeBatch::try_new(data, Int64Array::from(weights))?)
    }
}

impl Operator for TopNOperator {
    fn name(&self) -> &'static str {
        "TopN"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, _out: &mut Output) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let partitions = match &self.partition_converter {
            Some(c) => {
                let cols: Vec<ArrayRef> = self.partition_columns.iter().map(|i| batch.column(*i).clone()).collect();
                Some(c.convert_columns(&cols)?)
            }
            None => None,
        };
        let order_cols: Vec<ArrayRef> = self.order_columns.iter().map(|i| batch.column(*i).clone()).collect();
        let keys = self.order_converter.convert_columns(&order_cols)?;
        let rows = self.row_converter.convert_columns(batch.data().columns())?;
        let weights = batch.weights();
        for i in 0..n {
            let partition_key: &[u8] = partitions.as_ref().map(|p| p.row(i).data()).unwrap_or_default();
            let partition = match self.partitions.get_mut(partition_key) {
                Some(p) => p,
                None => self.partitions.entry(partition_key.into()).or_default(),
            };
            let entry = (Box::from(keys.row(i).as_ref()), Box::from(rows.row(i).as_ref()));
            let weight = weights.value(i);
            let count = match partition.rows.get_mut(&entry) {
                Some(count) => {
                    *count += weight;
                    let c = *count;
                    if c == 0 {
                        partition.rows.remove(&entry);
                    } else if c < 0 {
                        return Err(ExecError::InvalidInput("top-N input retracted a row it never inserted".into()));
                    }
                    c
                }
                None if weight > 0 => {
                    partition.rows.insert(entry.clone(), weight);
                    weight
                }
                None => {
                    return Err(ExecError::InvalidInput("top-N input retracted a row it never inserted".into()));
                }
            };
            self.unsaved.insert((partition_key.into(), entry), count);
            if !self.dirty.contains(partition_key) {
                self.dirty.insert(partition_key.into());
            }
        }
        Ok(())
    }

    fn state_size(&self) -> Option<crate::operator::StateSize> {
        let bytes = self
            .partitions
            .iter()
            .map(|(k, p)| k.len() + p.rows.keys().map(|(a, b)| a.len() + b.len()).sum::<usize>())
            .sum::<usize>();
        Some(crate::operator::StateSize { rows: self.state_rows() as u64, bytes: bytes as u64 })
    }

    fn on_barrier(&mut self, _barrier: &Barrier, out: &mut Output) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        // Retractions go first, so a keyed store never deletes what the same epoch inserted.
        let mut inserts: Vec<RankedRow> = Vec::new();
        let mut deletes: Vec<RankedRow> = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(partition) = self.partitions.get(&key) else { continue };
            let (new_top, entries) = self.top(partition);
            let Some(partition) = self.partitions.get_mut(&key) else { continue };
            let mut old: HashMap<RankedRow, i64> = HashMap::new();
            for e in std::mem::take(&mut partition.emitted) {
                *old.entry(e).or_default() += 1;
            }
            for e in &new_top {
                match old.get_mut(e) {
                    Some(c) if *c > 0 => *c -= 1,
                    _ => inserts.push(e.clone()),
                }
            }
            for (e, c) in old {
                for _ in 0..c {
                    deletes.push(e.clone());
                }
            }
            if self.append_only_input && partition.rows.len() > entries {
                // Nothing is ever deleted, so rows below the cut can never rise again.
                let cut = partition.rows.keys().nth(entries).cloned();
                if let Some(cut) = cut {
                    for (dropped, _) in partition.rows.split_off(&cut) {
                        self.unsaved.insert((key.clone(), dropped), 0);
                    }
                }
            }
            partition.emitted = new_top;
            if partition.rows.is_empty() {
                self.partitions.remove(&key);
            }
        }
        if !deletes.is_empty() || !inserts.is_empty() {
            let weights: Vec<i64> = deletes.iter().map(|_| -1).chain(inserts.iter().map(|_| 1)).collect();
            deletes.append(&mut inserts);
            out.push(self.decode(&deletes, weights)?);
        }
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) -> Result<()> {
        for ((partition, entry), count) in self.unsaved.drain() {
            let key = entry_state_key(&partition, &entry);
            if count == 0 {
                state.delete(&key);
            } else {
                state.put(&key, count.to_le_bytes().to_vec());
            }
        }
        Ok(())
    }

    fn restore(&mut self, state: &StateReader) -> Result<()> {
        state.for_each(|key, value| {
            let (partition, rest) = split_prefixed(key)?;
            let (sort_key, row) = split_prefixed(rest)?;
            let count = Decoder::new(value).i64()?;
            let p = self.partitions.entry(partition.into()).or_default();
            p.rows.insert((sort_key.into(), row.into()), count);
            Ok(())
        })?;
        // A checkpoint follows a barrier, at which every partition emitted its current top.
        let keys: Vec<Box<[u8]>> = self.partitions.keys().cloned().collect();
        for key in keys {
            let Some(partition) = self.partitions.get(&key) else { continue };
            let (top, _) = self.top(partition);
            if let Some(partition) = self.partitions.get_mut(&key) {
                partition.emitted = top;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topn(rank: RankKind, limit: u64, append_only: bool) -> TopNOperator {
        // Input (partition I, value I, name T); output adds the rank.
        let input = ChangeBatch::from_pretty("I I T");
        let input_schema = DFSchema::try_from(input.schema().as_ref().clone()).unwrap_or_else(|e| panic!("{e}"));
        let output = ChangeBatch::from_pretty("I I T I");
        let schema = DFSchema::try_from(output.schema().as_ref().clone()).unwrap_or_else(|e| panic!("{e}"));
        TopNOperator::new(&[0], &[(1, false, false)], limit, 0, rank, true, append_only, &input_schema, &schema)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn epoch(op: &mut TopNOperator, text: &str) -> String {
        let mut out = Output::default();
        op.process(0, ChangeBatch::from_pretty(text), &mut out).unwrap_or_else(|e| panic!("{e}"));
        let barrier = Barrier { epoch: 1, checkpoint: false, mutation: None };
        op.on_barrier(&barrier, &mut out).unwrap_or_else(|e| panic!("{e}"));
        let mut lines: Vec<String> = out
            .take_batches()
            .iter()
            .flat_map(|b| b.to_pretty().lines().map(String::from).collect::<Vec<_>>())
            .collect();
        lines.sort();
        lines.join("\n")
    }

    #[test]
    fn row_number_refills_after_a_top_row_is_deleted() {
        let mut op = topn(RankKind::RowNumber, 2, false);
        assert_eq!(
            epoch(&mut op, "I I T\n + 1 10 a\n + 1 30 b\n + 1 20 c\n + 2 5 x"),
            "+ 1 20 c 2\n+ 1 30 b 1\n+ 2 5 x 1"
        );
        assert_eq!(epoch(&mut op, "I I T\n - 1 30 b"), "+ 1 10 a 2\n+ 1 20 c 1\n- 1 20 c 2\n- 1 30 b 1");
        assert_eq!(epoch(&mut op, "I I T\n + 1 5 z"), "");
    }

    #[test]
    fn rank_keeps_ties_together() {
        let mut op = topn(RankKind::Rank, 2, false);
        assert_eq!(epoch(&mut op, "I I T\n + 1 9 a\n + 1 9 b\n + 1 8 c"), "+ 1 9 a 1\n+ 1 9 b 1");
        let mut dense = topn(RankKind::DenseRank, 2, false);
        assert_eq!(epoch(&mut dense, "I I T\n + 1 9 a\n + 1 9 b\n + 1 8 c"), "+ 1 8 c 2\n+ 1 9 a 1\n+ 1 9 b 1");
    }

    #[test]
    fn append_only_input_keeps_only_the_top() {
        let mut op = topn(RankKind::RowNumber, 1, true);
        let rows: String = (0..100).map(|i| format!(" + 1 {i} r\n")).collect();
        assert_eq!(epoch(&mut op, &format!("I I T\n{rows}")), "+ 1 99 r 1");
        assert_eq!(op.state_rows(), 1);
        assert_eq!(epoch(&mut op, "I I T\n + 1 100 s"), "+ 1 100 s 1\n- 1 99 r 1");
    }

    #[test]
    fn duplicates_take_consecutive_row_numbers() {
        let mut op = topn(RankKind::RowNumber, 3, false);
        assert_eq!(epoch(&mut op, "I I T\n +2 1 7 a\n + 1 6 b\n + 1 1 c"), "+ 1 6 b 3\n+ 1 7 a 1\n+ 1 7 a 2");
        assert_eq!(epoch(&mut op, "I I T\n - 1 7 a"), "+ 1 1 c 3\n+ 1 6 b 2\n- 1 6 b 3\n- 1 7 a 2");
    }

    #[test]
    fn restored_top_n_continues_exactly() -> crate::error::Result<()> {
        use crate::state::testing::{Step, assert_restores};
        for append_only in [false, true] {
            let script: Vec<Step<'_>> = if append_only {
                vec![
                    Step::Data(0, "I I T\n + 1 10 a\n + 1 30 b\n + 1 20 c\n + 2 5 x"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Data(0, "I I T\n + 1 25 d\n + 2 1 y"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Data(0, "I I T\n + 1 40 e"),
                    Step::Barrier,
                ]
            } else {
                vec![
                    Step::Data(0, "I I T\n + 1 10 a\n + 1 30 b\n + 1 20 c\n + 2 5 x"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Data(0, "I I T\n - 1 30 b\n +2 1 15 z"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Data(0, "I I T\n - 1 20 c\n - 2 5 x"),
                    Step::Barrier,
                ]
            };
            assert_restores(|| Box::new(topn(RankKind::RowNumber, 2, append_only)), &script)?;
        }
        Ok(())
    }
}
