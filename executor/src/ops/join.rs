//! Streaming equi-join with retractions: inner, left/right/full outer, semi and anti.
//!
//! Both inputs are kept in state, grouped by join key; each distinct row is stored once, with
//! its multiplicity (`count`) and, where the join type needs it, its *degree*: how many rows of
//! the other side it currently matches (equal key and residual condition true). A change on
//! one side is joined against the other side's state and updates the degrees of the rows it
//! matches. Degrees are what make outer, semi and anti joins exact under retraction: a
//! null-padded row exists exactly while its row's degree is zero, so it is retracted when the
//! first match arrives and re-emitted when the last match leaves.
//!
//! A change is processed in two phases. The first only reads the other side's state: it
//! collects candidate pairs for every row of the batch, decodes the candidates once, and
//! evaluates the residual condition over all pairs in one vectorized call. The second walks
//! the batch in order, updating degrees and this side's state and recording output rows,
//! which are then assembled with `take`.

use std::hash::BuildHasher;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array, new_null_array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{DFSchema, JoinType};
use datafusion::logical_expr::Expr;
use eddy_common::ChangeBatch;
use eddy_planner::stream::join::IntervalBounds;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use crate::error::{ExecError, Result};
use crate::expr::{CompiledExpr, nullable_schema};
use std::sync::Arc;

use eddy_common::ids::Epoch;

use crate::memory::MemoryBudget;
use crate::operator::{Operator, Output};
use crate::state::{Decoder, Encoder, StateReader, StateWriter, push_prefixed, split_prefixed};

/// What one side contributes to the output besides matched pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SideOutput {
    /// Nothing: its rows appear only in matched pairs.
    None,
    /// Its unmatched rows appear padded with NULLs (outer joins).
    Padded,
    /// Its rows appear, alone, while they have a match.
    Semi,
    /// Its rows appear, alone, while they have no match.
    Anti,
}

/// Groups smaller than this are searched linearly; larger ones get a hash index.
const INDEX_THRESHOLD: usize = 16;

struct StoredRow {
    row: Box<[u8]>,
    count: i64,
    degree: i64,
    /// Event time of the row (interval joins only), in its column's unit.
    time: i64,
    /// Checkpoint bookkeeping: the row is in the store / changed since the last checkpoint.
    saved: bool,
    unsaved: bool,
}

/// A row with its join key, both encoded.
type KeyedRow = (Box<[u8]>, Box<[u8]>);

/// The rows of one side that share a join key.
#[derive(Default)]
struct KeyGroup {
    rows: Vec<StoredRow>,
    /// Positions in `rows`, hashed by row bytes; built once the group grows large, so that a
    /// retraction in a hot key does not scan it.
    index: Option<HashTable<u32>>,
    /// Some row changed since the last checkpoint (the key is in `Side::unsaved_keys`).
    unsaved: bool,
    /// Used since the last eviction pass (a clock bit: untouched groups are evicted first).
    touched: bool,
}

impl KeyGroup {
    fn find(&self, row: &[u8], hasher: &DefaultHashBuilder) -> Option<usize> {
        match &self.index {
            Some(index) => {
                index.find(hasher.hash_one(row), |p| self.rows[*p as usize].row.as_ref() == row).map(|p| *p as usize)
            }
            None => self.rows.iter().position(|r| r.row.as_ref() == row),
        }
    }

    fn insert(&mut self, row: StoredRow, hasher: &DefaultHashBuilder) {
        let position = self.rows.len() as u32;
        let hash = hasher.hash_one(row.row.as_ref());
        self.rows.push(row);
        let rows = &self.rows;
        match &mut self.index {
            Some(index) => {
                index.insert_unique(hash, position, |p| hasher.hash_one(rows[*p as usize].row.as_ref()));
            }
            None if rows.len() > INDEX_THRESHOLD => {
                let mut index = HashTable::with_capacity(rows.len() * 2);
                for (p, r) in rows.iter().enumerate() {
                    index.insert_unique(hasher.hash_one(r.row.as_ref()), p as u32, |q: &u32| {
                        hasher.hash_one(rows[*q as usize].row.as_ref())
                    });
                }
                self.index = Some(index);
            }
            None => {}
        }
    }

    fn remove(&mut self, position: usize, hasher: &DefaultHashBuilder) {
        let last = self.rows.len() - 1;
        if let Some(index) = &mut self.index {
            let hash = hasher.hash_one(self.rows[position].row.as_ref());
            if let Ok(entry) = index.find_entry(hash, |p| *p as usize == position) {
                entry.remove();
            }
            if position != last {
                let moved = hasher.hash_one(self.rows[last].row.as_ref());
                if let Some(p) = index.find_mut(moved, |p| *p as usize == last) {
                    *p = position as u32;
                }
            }
        }
        self.rows.swap_remove(position);
    }
}

/// One input's state.
struct Side {
    keys: Vec<usize>,
    output: SideOutput,
    converter: RowConverter,
    types: Vec<DataType>,
    groups: HashMap<Box<[u8]>, KeyGroup>,
    rows: u64,
    bytes: u64,
    /// Event-time column whose watermark on the other side frees this side's rows.
    time_column: Option<usize>,
    /// Rows with an earlier time can no longer match; dropped at the next barrier.
    expire_below: i64,
    /// Rows with an earlier time change no more: `i64::MAX` for an insert-only input, the
    /// input's own watermark otherwise.
    final_below: i64,
    swept_below: i64,
    /// Keys of groups with rows changed since the last checkpoint.
    unsaved_keys: Vec<Box<[u8]>>,
    /// Stored rows removed since the last checkpoint.
    unsaved_deletes: Vec<KeyedRow>,
    /// Hashes of the keys whose groups were evicted to the store (with how many keys share
    /// each hash): a key missing from `groups` is read back only when its hash is here.
    evicted: HashMap<u64, u32>,
}

impl Side {
    fn new(
        keys: &[usize],
        output: SideOutput,
        schema: &DFSchema,
        time_column: Option<usize>,
        append_only: bool,
    ) -> Result<Self> {
        Ok(Self {
            keys: keys.to_vec(),
            output,
            converter: RowConverter::new(
                schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect(),
            )?,
            types: schema.fields().iter().map(|f| f.data_type().clone()).collect(),
            groups: HashMap::new(),
            rows: 0,
            bytes: 0,
            time_column,
            expire_below: i64::MIN,
            final_below: if append_only { i64::MAX } else { i64::MIN },
            swept_below: i64::MIN,
            unsaved_keys: Vec::new(),
            unsaved_deletes: Vec::new(),
            evicted: HashMap::new(),
        })
    }

    /// Bytes this side holds, with the per-row and per-group overhead of the structures.
    fn memory_bytes(&self) -> u64 {
        self.bytes + self.rows * ROW_OVERHEAD + self.groups.len() as u64 * GROUP_OVERHEAD
    }

    fn tracks_degree(&self) -> bool {
        self.output != SideOutput::None
    }
}

/// Marks row `p` of `group` (under `key`) changed since the last checkpoint.
fn mark_unsaved(group: &mut KeyGroup, p: usize, key: &[u8], unsaved_keys: &mut Vec<Box<[u8]>>) {
    group.rows[p].unsaved = true;
    if !group.unsaved {
        group.unsaved = true;
        unsaved_keys.push(key.into());
    }
}

/// State keys: `[side][key length, u32 big-endian][key][row]` for stored rows, `META_KEY` for
/// the bounds and counts that are not per row.
const META_KEY: &[u8] = &[2];

fn row_state_key(side: usize, key: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = group_state_prefix(side, key);
    k.extend_from_slice(row);
    k
}

/// The prefix of the state keys of every row of one group.
fn group_state_prefix(side: usize, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.push(side as u8);
    push_prefixed(&mut k, key);
    k
}

/// Memory a stored row and a key group take besides their bytes (structs, boxes, hash slots).
const ROW_OVERHEAD: u64 = 64;
const GROUP_OVERHEAD: u64 = 96;

pub struct JoinOperator {
    join_type: JoinType,
    /// Left rows look up the right side and are not stored (`FOR SYSTEM_TIME AS OF PROCTIME()`).
    temporal: bool,
    /// Left batches of a temporal join held until the first barrier: the right side's
    /// backfill arrives before that barrier, and a stream row must not look up a table that
    /// is still being loaded.
    held: Option<Vec<ChangeBatch>>,
    /// Left watermarks that arrived while rows were held; they follow those rows.
    held_watermarks: Vec<(usize, i64)>,
    /// `NOT IN (subquery)`: a null-aware anti join, with the right side's row counts.
    null_aware: Option<RightCounts>,
    /// Event-time bounds of an interval join.
    interval: Option<IntervalBounds>,
    /// Set while a right batch of a null-aware anti join is applied under a change of mode:
    /// degree changes then emit nothing, the whole output is redone around the batch.
    quiet: bool,
    sides: [Side; 2],
    /// Left and right output columns as matched pairs (inner and outer joins).
    pairs: bool,
    key_converter: RowConverter,
    null_equals_null: bool,
    filter: Option<CompiledExpr>,
    filter_schema: SchemaRef,
    schema: SchemaRef,
    hasher: DefaultHashBuilder,
    /// Where evicted groups are read back from, and the budget that decides evictions.
    state: Option<StateReader>,
    budget: Option<Arc<MemoryBudget>>,
    /// Bytes last reported to the budget.
    tracked: u64,
    /// Epoch of the last checkpoint barrier: groups it saved may be evicted once it is durable.
    last_checkpoint: Epoch,
}

/// Right-side row counts of a null-aware anti join: `x NOT IN (subquery)` is true for every
/// `x` when the subquery is empty, and true for no `x` when it holds a NULL.
#[derive(Debug, Default, Clone, Copy)]
struct RightCounts {
    rows: i64,
    null_keys: i64,
}

/// Which left rows a null-aware anti join shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotInMode {
    /// The subquery is empty: every left row.
    All,
    /// The subquery holds a NULL: none.
    None,
    /// Left rows with a non-NULL key and no match.
    Unmatched,
}

impl RightCounts {
    fn mode(self) -> NotInMode {
        if self.rows == 0 {
            NotInMode::All
        } else if self.null_keys > 0 {
            NotInMode::None
        } else {
            NotInMode::Unmatched
        }
    }
}

/// Key under which a null-aware anti join keeps left rows whose key is NULL (no encoded key
/// is empty).
const NULL_KEY: &[u8] = &[];

/// A row of output: this batch's row (or NULLs), the other side's candidate (or NULLs).
struct OutRow {
    this: Option<u32>,
    other: Option<u32>,
    weight: i64,
}

impl JoinOperator {
    /// # Errors
    /// When a key or row type has no row encoding or the condition cannot be planned.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        temporal: bool,
        null_aware: bool,
        interval: Option<IntervalBounds>,
        join_type: JoinType,
        left_keys: &[usize],
        right_keys: &[usize],
        filter: Option<&Expr>,
        null_equals_null: bool,
        left_schema: &DFSchema,
        right_schema: &DFSchema,
        filter_schema: &DFSchema,
        schema: &DFSchema,
    ) -> Result<Self> {
        let (pairs, left_output, right_output) = match join_type {
            JoinType::Inner => (true, SideOutput::None, SideOutput::None),
            JoinType::Left => (true, SideOutput::Padded, SideOutput::None),
            JoinType::Right => (true, SideOutput::None, SideOutput::Padded),
            JoinType::Full => (true, SideOutput::Padded, SideOutput::Padded),
            JoinType::LeftSemi => (false, SideOutput::Semi, SideOutput::None),
            JoinType::LeftAnti => (false, SideOutput::Anti, SideOutput::None),
            JoinType::RightSemi => (false, SideOutput::None, SideOutput::Semi),
            JoinType::RightAnti => (false, SideOutput::None, SideOutput::Anti),
            other => return Err(ExecError::Internal(format!("{other} join is not a streaming join"))),
        };
        if left_keys.len() != right_keys.len() || left_keys.is_empty() {
            return Err(ExecError::Internal("join keys do not pair up".into()));
        }
        let key_types: Vec<SortField> =
            left_keys.iter().map(|k| SortField::new(left_schema.field(*k).data_type().clone())).collect();
        let filter = match filter {
            Some(f) => Some(CompiledExpr::new(f, filter_schema)?),
            None => None,
        };
        // Without bounds nothing is freed, so whether a side retracts does not matter.
        let append_only = |side: usize| interval.is_none_or(|b| b.append_only[side]);
        Ok(Self {
            join_type,
            temporal,
            held: temporal.then(Vec::new),
            held_watermarks: Vec::new(),
            null_aware: (null_aware && join_type == JoinType::LeftAnti).then(RightCounts::default),
            quiet: false,
            interval,
            sides: [
                Side::new(left_keys, left_output, left_schema, interval.map(|b| b.left_time), append_only(0))?,
                Side::new(right_keys, right_output, right_schema, interval.map(|b| b.right_time), append_only(1))?,
            ],
            pairs,
            key_converter: RowConverter::new(key_types)?,
            null_equals_null,
            filter,
            filter_schema: nullable_schema(filter_schema),
            schema: nullable_schema(schema),
            hasher: DefaultHashBuilder::default(),
            state: None,
            budget: None,
            tracked: 0,
            last_checkpoint: 0,
        })
    }

    /// Lets the join evict clean key groups to the store when operator state exceeds the
    /// memory limit.
    pub fn with_memory_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Joins whose state is bounded anyway (interval joins free it behind watermarks) or
    /// whose output depends on every row at once (`NOT IN`) keep everything in memory.
    fn spills(&self) -> bool {
        self.interval.is_none()
            && self.null_aware.is_none()
            && self.budget.as_ref().is_some_and(|b| b.limit().is_some())
    }

    fn report_memory(&mut self) {
        let now = self.sides[0].memory_bytes() + self.sides[1].memory_bytes();
        if let Some(b) = &self.budget {
            b.track(self.tracked, now);
        }
        self.tracked = now;
    }

    /// Reads back, on both sides, the evicted groups of the keys in `keys`.
    fn fault_in(&mut self, keys: &datafusion::arrow::row::Rows) -> Result<()> {
        for side in 0..2 {
            if self.sides[side].evicted.is_empty() {
                continue;
            }
            for key in keys.iter() {
                let key = key.as_ref();
                if self.sides[side].groups.contains_key(key) {
                    continue;
                }
                let hash = self.hasher.hash_one(key);
                if !self.sides[side].evicted.contains_key(&hash) {
                    continue;
                }
                let Some(reader) = &self.state else { continue };
                let prefix = group_state_prefix(side, key);
                let mut group = KeyGroup::default();
                let mut bytes = 0u64;
                let hasher = &self.hasher;
                reader.for_each_with_prefix(&prefix, |k, v| {
                    let row = &k[prefix.len()..];
                    let mut input = Decoder::new(v);
                    let (count, degree, time) = (input.i64()?, input.i64()?, input.i64()?);
                    bytes += row.len() as u64;
                    group.insert(
                        StoredRow { row: row.into(), count, degree, time, saved: true, unsaved: false },
                        hasher,
                    );
                    Ok(())
                })?;
                if group.rows.is_empty() {
                    // Another key with the same hash was evicted, not this one.
                    continue;
                }
                let s = &mut self.sides[side];
                if let Some(n) = s.evicted.get_mut(&hash) {
                    *n -= 1;
                    if *n == 0 {
                        s.evicted.remove(&hash);
                    }
                }
                s.rows += group.rows.len() as u64;
                s.bytes += bytes + key.len() as u64;
                group.touched = true;
                s.groups.insert(key.into(), group);
            }
        }
        Ok(())
    }

    /// Drops clean groups (saved by a durable checkpoint) until the join is down to its share
    /// of the memory limit; groups not used since the last pass go first.
    fn evict(&mut self) {
        let Some(target) = self.budget.as_ref().and_then(|b| b.target_for(self.tracked)) else { return };
        let mut current = self.tracked;
        let mut evicted = 0u64;
        for pass in 0..2 {
            for s in &mut self.sides {
                let hasher = &self.hasher;
                let evicted_hashes = &mut s.evicted;
                let (mut rows, mut bytes) = (0u64, 0u64);
                s.groups.retain(|key, group| {
                    if current <= target || group.unsaved {
                        return true;
                    }
                    if pass == 0 && std::mem::take(&mut group.touched) {
                        return true;
                    }
                    let group_bytes: u64 =
                        group.rows.iter().map(|r| r.row.len() as u64).sum::<u64>() + key.len() as u64;
                    let freed = group_bytes + group.rows.len() as u64 * ROW_OVERHEAD + GROUP_OVERHEAD;
                    current = current.saturating_sub(freed);
                    rows += group.rows.len() as u64;
                    bytes += group_bytes;
                    *evicted_hashes.entry(hasher.hash_one(key.as_ref())).or_default() += 1;
                    evicted += 1;
                    false
                });
                s.rows -= rows;
                s.bytes -= bytes;
            }
        }
        if let Some(b) = &self.budget {
            b.record_evictions(evicted);
        }
        self.report_memory();
    }

    /// Distinct rows and their encoded bytes held for the left and right input.
    pub fn state_size(&self) -> [(u64, u64); 2] {
        [(self.sides[0].rows, self.sides[0].bytes), (self.sides[1].rows, self.sides[1].bytes)]
    }

    fn process_side(&mut self, this: usize, batch: &ChangeBatch, out: &mut Output) -> Result<()> {
        let other = 1 - this;
        let n = batch.num_rows();
        let key_columns: Vec<ArrayRef> = self.sides[this].keys.iter().map(|c| batch.column(*c).clone()).collect();
        let keys = self.key_converter.convert_columns(&key_columns)?;
        self.fault_in(&keys)?;
        let has_null_key = |i: usize| key_columns.iter().any(|c| c.is_null(i));
        let rows = self.sides[this].converter.convert_columns(batch.data().columns())?;
        let times: Option<Int64Array> = match self.sides[this].time_column {
            Some(c) => {
                let t = datafusion::arrow::compute::cast(batch.column(c), &DataType::Int64)?;
                t.as_any().downcast_ref::<Int64Array>().cloned()
            }
            None => None,
        };
        let time_of = |i: usize| times.as_ref().map_or(0, |t| if t.is_valid(i) { t.value(i) } else { i64::MIN });

        // Phase 1: candidates from the other side, decoded once, condition evaluated once.
        let mut candidate_start = Vec::with_capacity(n + 1);
        let mut candidate_this: Vec<u32> = Vec::new();
        let mut candidate_position: Vec<u32> = Vec::new();
        let mut candidate_count: Vec<i64> = Vec::new();
        let other_side = &self.sides[other];
        let parser = other_side.converter.parser();
        let mut candidate_rows = Vec::new();
        for i in 0..n {
            candidate_start.push(candidate_this.len());
            if !self.null_equals_null && has_null_key(i) {
                continue;
            }
            if let Some(group) = other_side.groups.get(keys.row(i).as_ref()) {
                for (p, r) in group.rows.iter().enumerate() {
                    candidate_this.push(i as u32);
                    candidate_position.push(p as u32);
                    candidate_count.push(r.count);
                    candidate_rows.push(parser.parse(&r.row));
                }
            }
        }
        candidate_start.push(candidate_this.len());
        let other_output_needed = self.pairs || other_side.output != SideOutput::None || self.filter.is_some();
        let other_columns: Vec<ArrayRef> = if other_output_needed && !candidate_rows.is_empty() {
            other_side.converter.convert_rows(candidate_rows)?
        } else {
            drop(candidate_rows);
            Vec::new()
        };
        let matched = self.evaluate_filter(this, batch, &candidate_this, &other_columns)?;

        // Phase 2: in batch order, degrees, state and output rows.
        let mut emitted: Vec<OutRow> = Vec::new();
        let weights = batch.weights();
        let this_output = self.sides[this].output;
        let other_output = self.sides[other].output;
        let track_other = self.sides[other].tracks_degree();
        for i in 0..n {
            let weight = weights.value(i);
            let range = candidate_start[i]..candidate_start[i + 1];
            let mut degree = 0i64;
            let other_state = &mut self.sides[other];
            let other_unsaved_keys = &mut other_state.unsaved_keys;
            let mut other_group =
                if track_other && !range.is_empty() { other_state.groups.get_mut(keys.row(i).as_ref()) } else { None };
            for c in range {
                if !matched.as_ref().is_none_or(|m| m[c]) {
                    continue;
                }
                let count = candidate_count[c];
                degree += count;
                if self.pairs {
                    emitted.push(OutRow { this: Some(i as u32), other: Some(c as u32), weight: weight * count });
                }
                if let Some(group) = other_group.as_mut() {
                    let position = candidate_position[c] as usize;
                    mark_unsaved(group, position, keys.row(i).as_ref(), other_unsaved_keys);
                    let stored = &mut group.rows[position];
                    let before = stored.degree;
                    stored.degree += weight;
                    let sign = match (before > 0, stored.degree > 0) {
                        (false, true) => 1,
                        (true, false) => -1,
                        _ => 0,
                    };
                    if sign != 0 && !self.quiet {
                        let w = match other_output {
                            SideOutput::Semi => sign * count,
                            SideOutput::Padded | SideOutput::Anti => -sign * count,
                            SideOutput::None => 0,
                        };
                        if w != 0 {
                            emitted.push(OutRow { this: None, other: Some(c as u32), weight: w });
                        }
                    }
                }
            }
            let shows_alone = match (this_output, self.null_aware) {
                (SideOutput::Anti, Some(counts)) => match counts.mode() {
                    NotInMode::All => true,
                    NotInMode::None => false,
                    NotInMode::Unmatched => degree == 0 && !has_null_key(i),
                },
                (SideOutput::Padded | SideOutput::Anti, _) => degree == 0,
                (SideOutput::Semi, _) => degree > 0,
                (SideOutput::None, _) => false,
            };
            if shows_alone {
                emitted.push(OutRow { this: Some(i as u32), other: None, weight });
            }
            let kept = !(self.temporal && this == 0);
            if kept && (self.null_equals_null || !has_null_key(i)) {
                self.store(this, keys.row(i).as_ref(), rows.row(i).as_ref(), weight, degree, time_of(i))?;
            } else if self.null_aware.is_some() && this == 0 {
                // Shown again should the subquery become empty.
                self.store(this, NULL_KEY, rows.row(i).as_ref(), weight, 0, 0)?;
            }
        }
        if emitted.is_empty() {
            return Ok(());
        }
        out.push(self.assemble(this, batch, &other_columns, &emitted)?);
        Ok(())
    }

    /// Drops the rows of `side` that can no longer match (interval joins).
    fn sweep(&mut self, side: usize) {
        let hasher = &self.hasher;
        let state = &mut self.sides[side];
        let below = state.expire_below.min(state.final_below);
        if below <= state.swept_below {
            return;
        }
        state.swept_below = below;
        let (mut rows, mut bytes) = (0u64, 0u64);
        let deletes = &mut state.unsaved_deletes;
        state.groups.retain(|key, group| {
            let before = group.rows.len();
            group.rows.retain(|r| {
                let keep = r.time >= below;
                if !keep {
                    rows += 1;
                    bytes += r.row.len() as u64;
                    if r.saved {
                        deletes.push((key.clone(), r.row.clone()));
                    }
                }
                keep
            });
            if group.rows.is_empty() {
                bytes += key.len() as u64;
                return false;
            }
            if group.rows.len() != before && group.index.is_some() {
                // Positions moved: rebuild the index.
                let kept = std::mem::take(&mut group.rows);
                group.index = None;
                for r in kept {
                    group.insert(r, hasher);
                }
            }
            true
        });
        state.rows -= rows;
        state.bytes -= bytes;
    }

    /// A change to the subquery of `NOT IN`. While the subquery stays non-empty and free of
    /// NULLs, matches come and go as in any anti join; when that changes, every left row's
    /// visibility may flip, so the output is retracted and re-emitted as a whole.
    fn process_not_in_right(&mut self, batch: &ChangeBatch, before: RightCounts, out: &mut Output) -> Result<()> {
        let mut after = before;
        let weights = batch.weights();
        let keys: Vec<&ArrayRef> = self.sides[1].keys.iter().map(|c| batch.column(*c)).collect();
        for i in 0..batch.num_rows() {
            after.rows += weights.value(i);
            if keys.iter().any(|k| k.is_null(i)) {
                after.null_keys += weights.value(i);
            }
        }
        let (old_mode, new_mode) = (before.mode(), after.mode());
        if old_mode == new_mode && new_mode == NotInMode::Unmatched {
            self.process_side(1, batch, out)?;
        } else {
            if old_mode != new_mode {
                self.emit_visible_left(old_mode, -1, out)?;
            }
            self.quiet = true;
            let result = self.process_side(1, batch, out);
            self.quiet = false;
            result?;
            if old_mode != new_mode {
                self.emit_visible_left(new_mode, 1, out)?;
            }
        }
        self.null_aware = Some(after);
        Ok(())
    }

    /// Emits, with `sign`, every stored left row that `mode` shows.
    fn emit_visible_left(&self, mode: NotInMode, sign: i64, out: &mut Output) -> Result<()> {
        let parser = self.sides[0].converter.parser();
        let mut rows = Vec::new();
        let mut weights = Vec::new();
        for (key, group) in &self.sides[0].groups {
            for r in &group.rows {
                let shown = match mode {
                    NotInMode::All => true,
                    NotInMode::None => false,
                    NotInMode::Unmatched => r.degree == 0 && key.as_ref() != NULL_KEY,
                };
                if shown {
                    rows.push(parser.parse(&r.row));
                    weights.push(sign * r.count);
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let columns = self.sides[0].converter.convert_rows(rows)?;
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        out.push(ChangeBatch::try_new(data, Int64Array::from(weights))?);
        Ok(())
    }

    /// For each candidate pair, whether the residual condition holds (None: no condition).
    fn evaluate_filter(
        &self,
        this: usize,
        batch: &ChangeBatch,
        candidate_this: &[u32],
        other_columns: &[ArrayRef],
    ) -> Result<Option<Vec<bool>>> {
        let Some(filter) = &self.filter else {
            return Ok(None);
        };
        if candidate_this.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let indices = UInt32Array::from(candidate_this.to_vec());
        let this_columns =
            batch.data().columns().iter().map(|c| Ok(take(c, &indices, None)?)).collect::<Result<Vec<ArrayRef>>>()?;
        let columns: Vec<ArrayRef> = if this == 0 {
            this_columns.into_iter().chain(other_columns.iter().cloned()).collect()
        } else {
            other_columns.iter().cloned().chain(this_columns).collect()
        };
        let pairs = RecordBatch::try_new(self.filter_schema.clone(), columns)?;
        let result = filter.evaluate(&pairs)?;
        let mask = result
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| ExecError::Internal("join condition is not boolean".into()))?;
        Ok(Some((0..mask.len()).map(|i| mask.is_valid(i) && mask.value(i)).collect()))
    }

    #[allow(clippy::too_many_arguments)]
    fn store(&mut self, side: usize, key: &[u8], row: &[u8], weight: i64, degree: i64, time: i64) -> Result<()> {
        if weight == 0 {
            return Ok(());
        }
        let hasher = &self.hasher;
        let state = &mut self.sides[side];
        // A row the watermarks already passed has met every row it can match (an input that
        // runs ahead of the other keeps sending such rows); keeping it would only wait for a
        // sweep that may not come.
        let expired = state.time_column.is_some() && time < state.expire_below.min(state.final_below);
        if expired && !state.groups.contains_key(key) {
            return Ok(());
        }
        let group = match state.groups.get_mut(key) {
            Some(g) => g,
            None => state.groups.entry(key.into()).or_default(),
        };
        group.touched = true;
        match group.find(row, hasher) {
            Some(p) => {
                group.rows[p].count += weight;
                mark_unsaved(group, p, key, &mut state.unsaved_keys);
                if group.rows[p].count == 0 {
                    if group.rows[p].saved {
                        state.unsaved_deletes.push((key.into(), row.into()));
                    }
                    group.remove(p, hasher);
                    state.rows -= 1;
                    state.bytes -= row.len() as u64;
                    if group.rows.is_empty() {
                        state.bytes -= key.len() as u64;
                        state.groups.remove(key);
                    }
                }
            }
            None if expired => {}
            None if weight > 0 => {
                let new_group = group.rows.is_empty();
                group.insert(
                    StoredRow { row: row.into(), count: weight, degree, time, saved: false, unsaved: false },
                    hasher,
                );
                let p = group.rows.len() - 1;
                mark_unsaved(group, p, key, &mut state.unsaved_keys);
                state.rows += 1;
                state.bytes += row.len() as u64 + if new_group { key.len() as u64 } else { 0 };
            }
            None => {
                if group.rows.is_empty() {
                    state.groups.remove(key);
                }
                return Err(ExecError::InvalidInput(format!(
                    "{} join input {} retracted a row it never inserted",
                    self.join_type,
                    if side == 0 { "left" } else { "right" }
                )));
            }
        }
        Ok(())
    }

    fn assemble(
        &self,
        this: usize,
        batch: &ChangeBatch,
        other_columns: &[ArrayRef],
        emitted: &[OutRow],
    ) -> Result<ChangeBatch> {
        let this_indices: UInt32Array = emitted.iter().map(|r| r.this).collect();
        let other_indices: UInt32Array = emitted.iter().map(|r| r.other).collect();
        let weights: Int64Array = emitted.iter().map(|r| Some(r.weight)).collect();
        let len = emitted.len();
        let this_part = || -> Result<Vec<ArrayRef>> {
            batch.data().columns().iter().map(|c| Ok(take(c, &this_indices, None)?)).collect()
        };
        let other_part = || -> Result<Vec<ArrayRef>> {
            let other = 1 - this;
            if other_columns.is_empty() {
                return Ok(self.sides[other].types.iter().map(|t| new_null_array(t, len)).collect());
            }
            other_columns.iter().map(|c| Ok(take(c, &other_indices, None)?)).collect()
        };
        let columns: Vec<ArrayRef> = if self.pairs {
            let (left, right) = if this == 0 { (this_part()?, other_part()?) } else { (other_part()?, this_part()?) };
            left.into_iter().chain(right).collect()
        } else if self.sides[this].output != SideOutput::None {
            this_part()?
        } else {
            other_part()?
        };
        let data = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok(ChangeBatch::try_new(data, weights)?)
    }
}

impl Operator for JoinOperator {
    fn name(&self) -> &'static str {
        "HashJoin"
    }

    fn process(&mut self, input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        if input > 1 {
            return Err(ExecError::Internal(format!("join has no input {input}")));
        }
        if batch.is_empty() {
            return Ok(());
        }
        if input == 0
            && let Some(held) = &mut self.held
        {
            held.push(batch);
            return Ok(());
        }
        if input == 1
            && let Some(before) = self.null_aware
        {
            return self.process_not_in_right(&batch, before, out);
        }
        self.process_side(input, &batch, out)
    }

    fn on_barrier(&mut self, barrier: &crate::message::Barrier, out: &mut Output) -> Result<()> {
        if barrier.checkpoint {
            self.last_checkpoint = barrier.epoch;
        }
        if self.interval.is_some() {
            self.sweep(0);
            self.sweep(1);
        }
        if let Some(held) = self.held.take() {
            for batch in held {
                self.process_side(0, &batch, out)?;
            }
            for (column, value) in std::mem::take(&mut self.held_watermarks) {
                out.push_watermark(column, value);
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, _column: usize, _value: i64, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn state_size(&self) -> Option<crate::operator::StateSize> {
        Some(crate::operator::StateSize {
            rows: self.sides[0].rows + self.sides[1].rows,
            bytes: self.sides[0].bytes + self.sides[1].bytes,
        })
    }

    fn watermarks_per_input(&self) -> bool {
        true
    }

    fn attach_state(&mut self, state: StateReader) {
        self.state = Some(state);
    }

    fn wants_commit_notices(&self) -> bool {
        self.spills()
    }

    fn checkpoint_committed(&mut self, epoch: Epoch) -> Result<()> {
        self.report_memory();
        if !self.spills() || epoch < self.last_checkpoint {
            // The groups the last checkpoint saved are not durable yet.
            return Ok(());
        }
        if let Some(reader) = &mut self.state {
            reader.refresh()?;
        }
        self.evict();
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) -> Result<()> {
        let mut value = Encoder::new();
        for (side, s) in self.sides.iter_mut().enumerate() {
            for (key, row) in s.unsaved_deletes.drain(..) {
                state.delete(&row_state_key(side, &key, &row));
            }
            for key in std::mem::take(&mut s.unsaved_keys) {
                let Some(group) = s.groups.get_mut(&key) else { continue };
                if !std::mem::take(&mut group.unsaved) {
                    continue;
                }
                for r in group.rows.iter_mut().filter(|r| r.unsaved) {
                    r.unsaved = false;
                    r.saved = true;
                    value.i64(r.count).i64(r.degree).i64(r.time);
                    state.put(&row_state_key(side, &key, &r.row), value.take());
                }
            }
        }
        for s in &self.sides {
            value.i64(s.expire_below).i64(s.final_below).i64(s.swept_below);
        }
        let counts = self.null_aware.unwrap_or_default();
        value.i64(counts.rows).i64(counts.null_keys);
        state.put(META_KEY, value.finish());
        Ok(())
    }

    fn restore(&mut self, state: &StateReader) -> Result<()> {
        let corrupt = || ExecError::Storage("corrupt join state entry".into());
        let hasher = self.hasher.clone();
        // Under a memory limit, groups past what fits stay in the store, as if evicted.
        let room = match (&self.budget, self.spills()) {
            (Some(b), true) => b.limit().map(|limit| limit.saturating_sub(b.used())),
            _ => None,
        };
        let mut loaded = 0u64;
        let mut skipping: Option<(usize, Vec<u8>)> = None;
        state.for_each(|key, value| {
            if key == META_KEY {
                let mut input = Decoder::new(value);
                for s in &mut self.sides {
                    s.expire_below = input.i64()?;
                    s.final_below = input.i64()?;
                    s.swept_below = input.i64()?;
                }
                let counts = RightCounts { rows: input.i64()?, null_keys: input.i64()? };
                if let Some(c) = &mut self.null_aware {
                    *c = counts;
                }
                return Ok(());
            }
            let (side, rest) = key.split_first().ok_or_else(corrupt)?;
            let side = usize::from(*side);
            if side > 1 {
                return Err(corrupt());
            }
            let (group_key, row) = split_prefixed(rest)?;
            let mut input = Decoder::new(value);
            let (count, degree, time) = (input.i64()?, input.i64()?, input.i64()?);
            let s = &mut self.sides[side];
            if skipping.as_ref().is_some_and(|(sd, k)| *sd == side && k.as_slice() == group_key) {
                return Ok(());
            }
            if room.is_some_and(|room| loaded > room) && !s.groups.contains_key(group_key) {
                *s.evicted.entry(hasher.hash_one(group_key)).or_default() += 1;
                skipping = Some((side, group_key.to_vec()));
                return Ok(());
            }
            loaded += row.len() as u64 + ROW_OVERHEAD;
            let group = s.groups.entry(group_key.into()).or_default();
            if group.rows.is_empty() {
                s.bytes += group_key.len() as u64;
                loaded += group_key.len() as u64 + GROUP_OVERHEAD;
            }
            group.insert(StoredRow { row: row.into(), count, degree, time, saved: true, unsaved: false }, &hasher);
            s.rows += 1;
            s.bytes += row.len() as u64;
            Ok(())
        })?;
        if self.temporal {
            // The right side's rows are back: stream rows need not wait for a backfill.
            self.held = None;
        }
        self.report_memory();
        Ok(())
    }

    fn on_input_watermark(&mut self, input: usize, column: usize, value: i64, out: &mut Output) -> Result<()> {
        // A stored row can join a new row at any time, so input watermarks bound no output of
        // a regular join. A temporal join emits only as left rows arrive, at the left columns'
        // positions.
        if let Some(b) = self.interval {
            // A left row arriving from now on has time >= value; it can match right rows with
            // time >= value - upper only (and symmetrically for the right watermark).
            match (input, b.lower, b.upper) {
                (0, _, Some(upper)) if column == b.left_time => {
                    let s = &mut self.sides[1];
                    s.expire_below = s.expire_below.max(value.saturating_sub(upper));
                }
                (1, Some(lower), _) if column == b.right_time => {
                    let s = &mut self.sides[0];
                    s.expire_below = s.expire_below.max(value.saturating_sub(lower));
                }
                _ => {}
            }
            let own_time = if input == 0 { b.left_time } else { b.right_time };
            if column == own_time && !b.append_only[input] {
                let s = &mut self.sides[input];
                s.final_below = s.final_below.max(value);
            }
        }
        if self.temporal && input == 0 {
            if self.held.is_some() {
                self.held_watermarks.push((column, value));
            } else {
                out.push_watermark(column, value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::TableReference;
    use datafusion::logical_expr::col;

    fn qualified(batch: &ChangeBatch, table: &str) -> DFSchema {
        DFSchema::try_from_qualified_schema(TableReference::bare(table), batch.schema().as_ref())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A join of `l(c0, c1)` and `r(c0, c1)` on `l.c0 = r.c0`.
    fn join(join_type: JoinType, filter: Option<Expr>) -> JoinOperator {
        let l = qualified(&ChangeBatch::from_pretty("I T"), "l");
        let r = qualified(&ChangeBatch::from_pretty("I I"), "r");
        let both = l.join(&r).unwrap_or_else(|e| panic!("{e}"));
        let schema = match join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => l.clone(),
            JoinType::RightSemi | JoinType::RightAnti => r.clone(),
            _ => both.clone(),
        };
        JoinOperator::new(false, false, None, join_type, &[0], &[0], filter.as_ref(), false, &l, &r, &both, &schema)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn feed(op: &mut JoinOperator, input: usize, text: &str) -> String {
        let mut out = Output::default();
        op.process(input, ChangeBatch::from_pretty(text), &mut out).unwrap_or_else(|e| panic!("{e}"));
        out.take_batches().iter().map(|b| b.to_pretty()).collect()
    }

    #[test]
    fn inner_join_emits_pairs_both_ways_and_retracts() {
        let mut op = join(JoinType::Inner, None);
        assert_eq!(feed(&mut op, 0, "I T\n + 1 a\n + 2 b\n + . n"), "");
        assert_eq!(feed(&mut op, 1, "I I\n + 1 10\n +2 1 11\n + . 0"), "+ 1 a 1 10\n+2 1 a 1 11\n");
        assert_eq!(feed(&mut op, 0, "I T\n + 1 c\n - 1 a"), "+ 1 c 1 10\n+2 1 c 1 11\n- 1 a 1 10\n-2 1 a 1 11\n");
        assert_eq!(feed(&mut op, 1, "I I\n - 1 11"), "- 1 c 1 11\n");
        assert_eq!(op.state_size()[0].0, 2, "left keeps 1 c, 2 b and nothing for the null key");
    }

    #[test]
    fn left_join_pads_until_the_first_match_and_after_the_last() {
        let mut op = join(JoinType::Left, None);
        assert_eq!(feed(&mut op, 0, "I T\n +2 1 a\n + . n"), "+2 1 a null null\n+ null n null null\n");
        assert_eq!(feed(&mut op, 1, "I I\n + 1 10"), "+2 1 a 1 10\n-2 1 a null null\n");
        assert_eq!(feed(&mut op, 1, "I I\n + 1 11"), "+2 1 a 1 11\n");
        assert_eq!(feed(&mut op, 1, "I I\n - 1 10\n - 1 11"), "-2 1 a 1 10\n-2 1 a 1 11\n+2 1 a null null\n");
        assert_eq!(feed(&mut op, 0, "I T\n - 1 a"), "- 1 a null null\n");
    }

    #[test]
    fn full_join_with_residual_counts_only_true_pairs() {
        let filter = col("l.c1").not_eq(datafusion::logical_expr::lit("x"));
        let mut op = join(JoinType::Full, Some(filter));
        assert_eq!(feed(&mut op, 1, "I I\n + 1 10"), "+ null null 1 10\n");
        // The pair fails the condition: both rows stay padded.
        assert_eq!(feed(&mut op, 0, "I T\n + 1 x"), "+ 1 x null null\n");
        assert_eq!(feed(&mut op, 0, "I T\n + 1 y"), "+ 1 y 1 10\n- null null 1 10\n");
        assert_eq!(feed(&mut op, 0, "I T\n - 1 y"), "- 1 y 1 10\n+ null null 1 10\n");
    }

    #[test]
    fn semi_and_anti_follow_the_degree() {
        let mut semi = join(JoinType::LeftSemi, None);
        let mut anti = join(JoinType::LeftAnti, None);
        for op in [&mut semi, &mut anti] {
            feed(op, 0, "I T\n + 1 a\n + 2 b");
        }
        assert_eq!(feed(&mut semi, 1, "I I\n + 1 10\n + 1 11"), "+ 1 a\n");
        assert_eq!(feed(&mut anti, 1, "I I\n + 1 10\n + 1 11"), "- 1 a\n");
        assert_eq!(feed(&mut semi, 1, "I I\n - 1 10"), "");
        assert_eq!(feed(&mut semi, 1, "I I\n - 1 11"), "- 1 a\n");
        assert_eq!(feed(&mut anti, 1, "I I\n - 1 10\n - 1 11"), "+ 1 a\n");
    }

    #[test]
    fn not_in_follows_nulls_and_emptiness_of_the_subquery() {
        let l = qualified(&ChangeBatch::from_pretty("I T"), "l");
        let r = qualified(&ChangeBatch::from_pretty("I I"), "r");
        let both = l.join(&r).unwrap_or_else(|e| panic!("{e}"));
        let mut op =
            JoinOperator::new(false, true, None, JoinType::LeftAnti, &[0], &[0], None, false, &l, &r, &both, &l)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(feed(&mut op, 0, "I T\n + 1 a\n + . n"), "+ 1 a\n+ null n\n");
        let mut lines: Vec<String> = feed(&mut op, 1, "I I\n + 2 0").lines().map(String::from).collect();
        lines.sort();
        assert_eq!(lines, ["+ 1 a", "- 1 a", "- null n"]);
        assert_eq!(feed(&mut op, 1, "I I\n + . 0"), "- 1 a\n");
        assert_eq!(feed(&mut op, 0, "I T\n + 3 c"), "");
        // Re-emitted from state, in no particular order.
        let mut lines: Vec<String> = feed(&mut op, 1, "I I\n - . 0").lines().map(String::from).collect();
        lines.sort();
        assert_eq!(lines, ["+ 1 a", "+ 3 c"]);
        assert_eq!(feed(&mut op, 1, "I I\n + 3 0"), "- 3 c\n");
    }

    #[test]
    fn window_join_frees_a_window_once_both_watermarks_pass_it() -> Result<()> {
        // `l.c0 = r.c0` on a watermarked window column; the right side is an aggregate that
        // updates its rows until its own watermark passes them.
        let l = qualified(&ChangeBatch::from_pretty("I T"), "l");
        let r = qualified(&ChangeBatch::from_pretty("I I"), "r");
        let both = l.join(&r)?;
        let bounds =
            IntervalBounds { left_time: 0, right_time: 0, lower: Some(0), upper: Some(0), append_only: [true, false] };
        let mut op = JoinOperator::new(
            false,
            false,
            Some(bounds),
            JoinType::Inner,
            &[0],
            &[0],
            None,
            false,
            &l,
            &r,
            &both,
            &both,
        )?;
        let barrier = crate::message::Barrier { epoch: 1, checkpoint: false, mutation: None };
        let mut out = Output::default();
        feed(&mut op, 0, "I T\n + 1 a\n + 3 b");
        feed(&mut op, 1, "I I\n + 1 10\n + 3 30");
        assert_eq!(feed(&mut op, 1, "I I\n - 1 10\n + 1 11"), "- 1 a 1 10\n+ 1 a 1 11\n");
        // The left watermark alone frees nothing on the right: it may still update window 1.
        op.on_input_watermark(0, 0, 2, &mut out)?;
        op.on_barrier(&barrier, &mut out)?;
        assert_eq!(op.state_size(), [(2, op.state_size()[0].1), (2, op.state_size()[1].1)]);
        // The right watermark makes window 1 final on the right and closed for the left.
        op.on_input_watermark(1, 0, 2, &mut out)?;
        op.on_barrier(&barrier, &mut out)?;
        assert_eq!([op.state_size()[0].0, op.state_size()[1].0], [1, 1]);
        assert_eq!(feed(&mut op, 1, "I I\n - 3 30\n + 3 31"), "- 3 b 3 30\n+ 3 b 3 31\n");
        // A left row for a window the right side has closed matches nothing and is not kept.
        assert_eq!(feed(&mut op, 0, "I T\n + 1 z"), "");
        assert_eq!(op.state_size()[0].0, 1);
        Ok(())
    }

    #[test]
    fn retracting_an_unknown_row_is_an_error() {
        let mut op = join(JoinType::Inner, None);
        let mut out = Output::default();
        assert!(op.process(0, ChangeBatch::from_pretty("I T\n - 1 a"), &mut out).is_err());
    }

    #[test]
    fn hot_keys_get_an_index_and_stay_consistent() {
        let mut op = join(JoinType::Inner, None);
        let inserts: String = (0..100).map(|i| format!(" + 7 r{i}\n")).collect();
        feed(&mut op, 0, &format!("I T\n{inserts}"));
        let deletes: String = (0..100).step_by(2).map(|i| format!(" - 7 r{i}\n")).collect();
        feed(&mut op, 0, &format!("I T\n{deletes}"));
        let out = feed(&mut op, 1, "I I\n + 7 1");
        assert_eq!(out.lines().count(), 50);
        assert!(
            out.lines()
                .all(|l| l.split_whitespace().nth(2).is_some_and(|r| r[1..].parse::<u32>().is_ok_and(|n| n % 2 == 1)))
        );
    }

    #[test]
    fn restored_joins_continue_exactly() -> Result<()> {
        use crate::state::testing::{Step, assert_restores};
        for join_type in [JoinType::Inner, JoinType::Left, JoinType::Full, JoinType::LeftSemi, JoinType::LeftAnti] {
            let filter = col("l.c1").not_eq(datafusion::logical_expr::lit("x"));
            assert_restores(
                || Box::new(join(join_type, Some(filter.clone()))),
                &[
                    Step::Data(0, "I T\n +2 1 a\n + . n\n + 2 x"),
                    Step::Data(1, "I I\n + 1 10"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Data(1, "I I\n + 1 11\n + 2 20"),
                    Step::Data(0, "I T\n - 1 a\n + 2 y"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Data(1, "I I\n - 1 10\n - 1 11\n - 2 20"),
                    Step::Barrier,
                    Step::Restart,
                    Step::Data(0, "I T\n - 1 a\n - 2 y\n - 2 x"),
                    Step::Data(1, "I I\n + 1 12"),
                    Step::Barrier,
                ],
            )?;
        }
        Ok(())
    }

    #[test]
    fn evicted_join_groups_come_back_exactly() -> Result<()> {
        use crate::state::testing::{Step, assert_spills};
        for join_type in [JoinType::Inner, JoinType::Left, JoinType::Full, JoinType::LeftAnti] {
            let make = |budget: Option<Arc<MemoryBudget>>| -> Box<dyn Operator> {
                let op = join(join_type, None);
                Box::new(match budget {
                    Some(b) => op.with_memory_budget(b),
                    None => op,
                })
            };
            let evicted = assert_spills(
                make,
                &[
                    Step::Data(0, "I T\n +2 1 a\n + 2 x\n + 3 y"),
                    Step::Data(1, "I I\n + 1 10\n + 3 30"),
                    Step::Barrier,
                    Step::Barrier,
                    Step::Data(1, "I I\n + 1 11\n + 2 20"),
                    Step::Data(0, "I T\n - 1 a\n + 4 z"),
                    Step::Barrier,
                    Step::Barrier,
                    Step::Data(1, "I I\n - 1 10\n - 1 11\n - 3 30"),
                    Step::Barrier,
                    Step::Barrier,
                    Step::Data(0, "I T\n - 1 a\n - 2 x\n + 3 w"),
                    Step::Data(1, "I I\n + 4 40"),
                    Step::Barrier,
                ],
            )?;
            assert!(evicted >= 4, "{join_type}: only {evicted} groups were evicted");
        }
        Ok(())
    }
}
