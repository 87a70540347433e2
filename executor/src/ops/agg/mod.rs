//! Hash aggregation with retractions.
//!
//! Each group owns a slot in every accumulator. A batch updates the slots of its rows' groups
//! with their weights and marks them dirty; nothing is emitted until the barrier. At the
//! barrier every dirty group emits `-old, +new` (or only one side when the group appears or
//! disappears), so a group changed a thousand times in an epoch costs downstream one update.
//! The row count per group (sum of weights) says when a group is gone; its slot is then reused.
//! A global aggregate (no `GROUP BY`) has one group that always exists, as in SQL.

pub mod accumulators;

use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::DFSchema;
use eddy_common::ChangeBatch;
use eddy_planner::stream::{AggCall, AggKind};

use self::accumulators::{DistinctAcc, GroupAccumulator, Update, make_accumulator};
use crate::error::{ExecError, Result};
use crate::expr::nullable_schema;
use crate::memory::MemoryBudget;
use crate::message::Barrier;
use crate::operator::{Operator, Output};
use crate::state::{Decoder, Encoder, StateReader, StateWriter};
use eddy_common::ids::Epoch;
use std::hash::BuildHasher;
use std::sync::Arc;

struct CallState {
    call: AggCall,
    acc: Box<dyn GroupAccumulator>,
    /// Encodes `ORDER BY` keys inside the call.
    order_converter: Option<RowConverter>,
}

pub struct HashAggOperator {
    group_keys: Vec<usize>,
    key_converter: Option<RowConverter>,
    /// Encoded group key -> slot.
    slots: hashbrown::HashMap<Box<[u8]>, usize>,
    /// Slot -> encoded group key (None for a free slot).
    slot_keys: Vec<Option<Box<[u8]>>>,
    row_counts: Vec<i64>,
    /// The aggregate values last emitted for the slot, row-encoded.
    emitted: Vec<Option<Vec<u8>>>,
    dirty: Vec<bool>,
    dirty_list: Vec<usize>,
    free: Vec<usize>,
    calls: Vec<CallState>,
    /// Encodes the aggregate output values, to remember and retract them.
    value_converter: RowConverter,
    schema: SchemaRef,
    global: bool,
    window: Option<WindowState>,
    /// Checkpoint bookkeeping: groups changed since the last checkpoint, groups whose state
    /// is in the store, and stored groups that have gone since.
    unsaved: Vec<bool>,
    unsaved_list: Vec<usize>,
    saved: Vec<bool>,
    unsaved_deletes: Vec<Box<[u8]>>,
    saved_closed_below: i64,
    spill: Spill,
}

/// What evicting clean groups under the memory limit needs (see [`crate::memory`]).
#[derive(Default)]
struct Spill {
    budget: Option<Arc<MemoryBudget>>,
    state: Option<StateReader>,
    /// Bytes of each slot as last saved (key and encoded state).
    size: Vec<u64>,
    /// Bytes of all live slots, and what was last reported to the budget.
    bytes: u64,
    tracked: u64,
    /// Clock bits: slots used since the last eviction pass go last.
    touched: Vec<bool>,
    /// Hashes of evicted group keys, with how many keys share each.
    evicted: hashbrown::HashMap<u64, u32>,
    hasher: hashbrown::DefaultHashBuilder,
    last_checkpoint: Epoch,
}

/// Memory a group slot takes besides its saved bytes.
const SLOT_OVERHEAD: u64 = 96;

/// State keys: groups under `GROUP_PREFIX` + encoded group key; the closed-window bound
/// under `CLOSED_BELOW_KEY`.
const GROUP_PREFIX: u8 = 0;
const CLOSED_BELOW_KEY: &[u8] = &[1];

/// Window bookkeeping of an aggregate grouped by a watermarked window key.
struct WindowState {
    /// Position of the window key in the group keys (and in the output).
    key: usize,
    /// Emit each window once, when it closes, instead of on every change.
    emit_on_close: bool,
    /// Window value (in the key column's units) of each slot.
    of_slot: Vec<i64>,
    /// Window value -> its slots, to find closed windows.
    slots_by_window: std::collections::BTreeMap<i64, Vec<usize>>,
    /// Windows below this are closed.
    closed_below: i64,
}

impl HashAggOperator {
    /// # Errors
    /// When an aggregate cannot be built for its argument type.
    pub fn new(
        group_keys: &[usize],
        calls: &[AggCall],
        input_schema: &DFSchema,
        schema: &DFSchema,
        append_only_input: bool,
        window_key: Option<usize>,
        emit_on_close: bool,
    ) -> Result<Self> {
        let key_types: Vec<DataType> = group_keys.iter().map(|k| input_schema.field(*k).data_type().clone()).collect();
        let key_converter = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(key_types.into_iter().map(SortField::new).collect())?)
        };
        let mut states = Vec::new();
        for call in calls {
            let mut acc = make_accumulator(
                &call.kind,
                call.arg_type.as_ref(),
                &call.return_type,
                append_only_input && !call.distinct,
            )?;
            if call.distinct || call.kind == AggKind::ApproxCountDistinct {
                let arg_type = call
                    .arg_type
                    .as_ref()
                    .ok_or_else(|| ExecError::Internal("DISTINCT aggregate without argument".into()))?;
                acc = Box::new(DistinctAcc::new(acc, arg_type)?);
            }
            let order_converter = if call.order_by.is_empty() {
                None
            } else {
                Some(RowConverter::new(
                    call.order_by
                        .iter()
                        .map(|(c, asc, nulls_first)| {
                            SortField::new_with_options(
                                input_schema.field(*c).data_type().clone(),
                                datafusion::arrow::compute::SortOptions { descending: !asc, nulls_first: *nulls_first },
                            )
                        })
                        .collect(),
                )?)
            };
            states.push(CallState { call: call.clone(), acc, order_converter });
        }
        let value_types: Vec<SortField> = calls.iter().map(|c| SortField::new(c.return_type.clone())).collect();
        let value_converter = RowConverter::new(if value_types.is_empty() {
            vec![SortField::new(DataType::Boolean)]
        } else {
            value_types
        })?;
        let global = group_keys.is_empty();
        let mut op = Self {
            group_keys: group_keys.to_vec(),
            key_converter,
            slots: hashbrown::HashMap::new(),
            slot_keys: Vec::new(),
            row_counts: Vec::new(),
            emitted: Vec::new(),
            dirty: Vec::new(),
            dirty_list: Vec::new(),
            free: Vec::new(),
            calls: states,
            value_converter,
            schema: nullable_schema(schema),
            global,
            window: window_key.map(|key| WindowState {
                key,
                emit_on_close,
                of_slot: Vec::new(),
                slots_by_window: std::collections::BTreeMap::new(),
                closed_below: i64::MIN,
            }),
            unsaved: Vec::new(),
            unsaved_list: Vec::new(),
            saved: Vec::new(),
            unsaved_deletes: Vec::new(),
            saved_closed_below: i64::MIN,
            spill: Spill::default(),
        };
        if global {
            // The single group exists from the start: an empty input still has one result row.
            let slot = op.allocate(Box::from(&[][..]));
            op.mark_dirty(slot);
        }
        Ok(op)
    }

    fn allocate(&mut self, key: Box<[u8]>) -> usize {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.slot_keys.len();
                self.slot_keys.push(None);
                self.row_counts.push(0);
                self.emitted.push(None);
                self.dirty.push(false);
                self.unsaved.push(false);
                self.saved.push(false);
                self.spill.size.push(0);
                self.spill.touched.push(false);
                if let Some(w) = &mut self.window {
                    w.of_slot.push(i64::MIN);
                }
                for c in &mut self.calls {
                    c.acc.resize(s + 1);
                }
                s
            }
        };
        self.slot_keys[slot] = Some(key.clone());
        self.slots.insert(key, slot);
        slot
    }

    fn mark_dirty(&mut self, slot: usize) {
        if !self.dirty[slot] {
            self.dirty[slot] = true;
            self.dirty_list.push(slot);
        }
        self.mark_unsaved(slot);
    }

    fn mark_unsaved(&mut self, slot: usize) {
        if !self.unsaved[slot] {
            self.unsaved[slot] = true;
            self.unsaved_list.push(slot);
        }
    }

    /// The slot of every row's group, creating groups as needed.
    fn slots_for(&mut self, batch: &RecordBatch) -> Result<Vec<usize>> {
        let n = batch.num_rows();
        let Some(conv) = &self.key_converter else {
            return Ok(vec![0; n]);
        };
        let arrays: Vec<ArrayRef> = self.group_keys.iter().map(|k| batch.column(*k).clone()).collect();
        let rows = conv.convert_columns(&arrays)?;
        let window_values = match &self.window {
            Some(w) => Some(window_i64(&arrays[w.key])?),
            None => None,
        };
        let mut out = Vec::with_capacity(n);
        for (i, row) in rows.iter().enumerate() {
            let key = row.as_ref();
            let existing = match self.slots.get(key) {
                Some(s) => Some(*s),
                None if !self.spill.evicted.is_empty() => self.load_evicted(key)?,
                None => None,
            };
            let slot = match existing {
                Some(s) => s,
                None => {
                    let slot = self.allocate(Box::from(key));
                    if let (Some(w), Some(values)) = (&mut self.window, &window_values) {
                        let v = values.get(i).copied().flatten().unwrap_or(i64::MIN);
                        w.of_slot[slot] = v;
                        w.slots_by_window.entry(v).or_default().push(slot);
                    }
                    slot
                }
            };
            out.push(slot);
        }
        Ok(out)
    }

    /// Decodes the group key columns of `slots`.
    fn key_columns(&self, slots: &[usize]) -> Result<Vec<ArrayRef>> {
        let Some(conv) = &self.key_converter else {
            return Ok(Vec::new());
        };
        let parser = conv.parser();
        let keys = slots
            .iter()
            .map(|s| {
                self.slot_keys[*s]
                    .as_deref()
                    .map(|k| parser.parse(k))
                    .ok_or_else(|| ExecError::Internal("dirty slot without key".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(conv.convert_rows(keys)?)
    }

    fn output_batch(&self, keys: Vec<ArrayRef>, values: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
        let mut columns = keys;
        columns.extend(values);
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

impl Operator for HashAggOperator {
    fn name(&self) -> &'static str {
        "HashAgg"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, _out: &mut Output) -> Result<()> {
        // Rows of windows already closed cannot change what was emitted for them.
        let batch = match &self.window {
            Some(w) if w.closed_below > i64::MIN => {
                let values = window_i64(batch.column(self.group_keys[w.key]))?;
                let keep: datafusion::arrow::array::BooleanArray =
                    values.iter().map(|v| Some(v.is_some_and(|v| v >= w.closed_below))).collect();
                if keep.true_count() == batch.num_rows() { batch } else { batch.filter(&keep)? }
            }
            _ => batch,
        };
        if batch.is_empty() {
            return Ok(());
        }
        let data = batch.data();
        let weights = batch.weights().values();
        let slots = self.slots_for(data)?;
        for (slot, w) in slots.iter().zip(weights.iter()) {
            self.row_counts[*slot] += w;
        }
        for s in &slots {
            self.mark_dirty(*s);
        }
        let all_rows: Vec<usize> = (0..data.num_rows()).collect();
        for state in &mut self.calls {
            let call = &state.call;
            // Rows passing the FILTER clause (null counts as false).
            let (groups, rows, ws): (Vec<usize>, Vec<usize>, Vec<i64>) = match call.filter {
                Some(f) => {
                    let mask = data
                        .column(f)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::BooleanArray>()
                        .ok_or_else(|| ExecError::Internal("FILTER clause is not boolean".into()))?;
                    let mut g = Vec::new();
                    let mut r = Vec::new();
                    let mut w = Vec::new();
                    for i in 0..data.num_rows() {
                        if mask.is_valid(i) && mask.value(i) {
                            g.push(slots[i]);
                            r.push(i);
                            w.push(weights[i]);
                        }
                    }
                    (g, r, w)
                }
                None => (slots.clone(), all_rows.clone(), weights.to_vec()),
            };
            if groups.is_empty() {
                continue;
            }
            let values = call.arg.map(|a| data.column(a));
            let order_keys = match &state.order_converter {
                Some(conv) => {
                    let arrays: Vec<ArrayRef> = call.order_by.iter().map(|(c, _, _)| data.column(*c).clone()).collect();
                    let encoded = conv.convert_columns(&arrays)?;
                    Some(rows.iter().map(|r| encoded.row(*r).as_ref().to_vec()).collect::<Vec<_>>())
                }
                None => None,
            };
            state.acc.update(&Update {
                groups: &groups,
                rows: &rows,
                weights: &ws,
                values,
                order_keys: order_keys.as_deref(),
            })?;
        }
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &Barrier, out: &mut Output) -> Result<()> {
        if barrier.checkpoint {
            self.spill.last_checkpoint = barrier.epoch;
        }
        if self.window.as_ref().is_some_and(|w| w.emit_on_close) {
            // Windows leave only when they close.
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty_list);
        self.emit_changes(dirty, out)
    }

    fn on_watermark(&mut self, column: usize, value: i64, out: &mut Output) -> Result<()> {
        let Some(w) = &self.window else { return Ok(()) };
        if column != self.group_keys[w.key] || value <= w.closed_below {
            return Ok(());
        }
        let key = w.key;
        let emit_on_close = w.emit_on_close;
        let closed: Vec<usize> = {
            let Some(w) = &mut self.window else { return Ok(()) };
            w.closed_below = value;
            let open = w.slots_by_window.split_off(&value);
            let closed = std::mem::replace(&mut w.slots_by_window, open);
            closed.into_values().flatten().collect()
        };
        if emit_on_close {
            self.emit_final(&closed, out)?;
        } else {
            // Flush what changed in the closing windows, then forget them.
            let dirty: Vec<usize> = closed.iter().copied().filter(|s| self.dirty[*s]).collect();
            self.emit_changes(dirty, out)?;
        }
        for s in closed {
            self.free_slot(s);
        }
        out.push_watermark(key, value);
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) -> Result<()> {
        let mut key = Vec::new();
        for k in self.unsaved_deletes.drain(..) {
            key.clear();
            key.push(GROUP_PREFIX);
            key.extend_from_slice(&k);
            state.delete(&key);
        }
        let mut value = Encoder::new();
        for s in std::mem::take(&mut self.unsaved_list) {
            if !std::mem::take(&mut self.unsaved[s]) {
                continue;
            }
            let Some(k) = &self.slot_keys[s] else { continue };
            key.clear();
            key.push(GROUP_PREFIX);
            key.extend_from_slice(k);
            value.i64(self.row_counts[s]).opt_bytes(self.emitted[s].as_deref());
            for c in &self.calls {
                c.acc.save(s, &mut value);
            }
            let encoded = value.take();
            self.set_saved_size(s, encoded.len());
            state.put(&key, encoded);
            self.saved[s] = true;
        }
        if let Some(w) = &self.window
            && w.closed_below != self.saved_closed_below
        {
            state.put(CLOSED_BELOW_KEY, w.closed_below.to_le_bytes().to_vec());
            self.saved_closed_below = w.closed_below;
        }
        Ok(())
    }

    fn restore(&mut self, state: &StateReader) -> Result<()> {
        let mut restored = Vec::new();
        let room = match &self.spill.budget {
            Some(b) if self.spills() => b.limit().map(|limit| limit.saturating_sub(b.used())),
            _ => None,
        };
        state.for_each(|key, value| {
            match key.split_first() {
                Some((&GROUP_PREFIX, group)) => {
                    // Under a memory limit, groups past what fits stay in the store, evicted.
                    if room.is_some_and(|room| self.spill.bytes > room) && !self.slots.contains_key(group) {
                        *self.spill.evicted.entry(self.spill.hasher.hash_one(group)).or_default() += 1;
                        return Ok(());
                    }
                    let slot = match self.slots.get(group) {
                        Some(s) => *s,
                        None => self.allocate(Box::from(group)),
                    };
                    self.load_group(slot, value)?;
                    restored.push(slot);
                }
                _ if key == CLOSED_BELOW_KEY => {
                    let closed_below = Decoder::new(value).i64()?;
                    self.saved_closed_below = closed_below;
                    if let Some(w) = &mut self.window {
                        w.closed_below = closed_below;
                    }
                }
                _ => return Err(ExecError::Storage("unknown aggregate state entry".into())),
            }
            Ok(())
        })?;
        // The global group was marked dirty at creation; a restored one already emitted.
        if self.global && !restored.is_empty() {
            for s in std::mem::take(&mut self.dirty_list) {
                self.dirty[s] = false;
            }
        }
        if let Some(w) = &self.window {
            let key = w.key;
            let windows = window_i64(&self.key_columns(&restored)?[key])?;
            if let Some(w) = &mut self.window {
                for (slot, v) in restored.iter().zip(windows) {
                    let v = v.unwrap_or(i64::MIN);
                    w.of_slot[*slot] = v;
                    w.slots_by_window.entry(v).or_default().push(*slot);
                }
            }
        }
        self.report_memory();
        Ok(())
    }

    fn attach_state(&mut self, state: StateReader) {
        self.spill.state = Some(state);
    }

    fn wants_commit_notices(&self) -> bool {
        self.spills()
    }

    fn checkpoint_committed(&mut self, epoch: Epoch) -> Result<()> {
        self.report_memory();
        if !self.spills() || epoch < self.spill.last_checkpoint {
            // The groups the last checkpoint saved are not durable yet.
            return Ok(());
        }
        if let Some(reader) = &mut self.spill.state {
            reader.refresh()?;
        }
        self.evict();
        Ok(())
    }

    fn state_size(&self) -> Option<crate::operator::StateSize> {
        let groups = self.slot_keys.len() - self.free.len();
        Some(crate::operator::StateSize { rows: groups as u64, bytes: self.spill.bytes })
    }
}

impl HashAggOperator {
    /// Emits `-old, +new` for the given changed groups and frees groups that vanished.
    fn emit_changes(&mut self, dirty: Vec<usize>, out: &mut Output) -> Result<()> {
        let mut dirty: Vec<usize> =
            dirty.into_iter().filter(|s| self.slot_keys[*s].is_some() && self.dirty[*s]).collect();
        // A slot freed and reused within an epoch is listed twice.
        dirty.sort_unstable();
        dirty.dedup();
        if dirty.is_empty() {
            return Ok(());
        }
        for s in &dirty {
            self.dirty[*s] = false;
        }
        // Groups that still exist get their new values computed.
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for s in &dirty {
            let count = self.row_counts[*s];
            if count > 0 || self.global {
                live.push(*s);
            } else if count == 0 {
                gone.push(*s);
            } else {
                return Err(ExecError::Internal(format!(
                    "group multiplicity went negative ({count}): the input retracted rows it never inserted"
                )));
            }
        }
        let new_values: Vec<ArrayRef> = if live.is_empty() {
            Vec::new()
        } else {
            self.calls.iter().map(|c| c.acc.evaluate(&live)).collect::<Result<_>>()?
        };
        let new_encoded = if live.is_empty() || self.calls.is_empty() {
            vec![Vec::new(); live.len()]
        } else {
            let rows = self.value_converter.convert_columns(&new_values)?;
            rows.iter().map(|r| r.as_ref().to_vec()).collect()
        };
        // Decide, per group, what to retract and what to insert.
        let mut retract_slots = Vec::new();
        let mut retract_values: Vec<Vec<u8>> = Vec::new();
        let mut insert_idx: Vec<u32> = Vec::new();
        let mut insert_slots = Vec::new();
        // (retract position, insert position) per output pair in emission order.
        let mut order: Vec<(Option<usize>, Option<usize>)> = Vec::new();
        for (i, s) in live.iter().enumerate() {
            let unchanged = self.emitted[*s].as_deref() == Some(new_encoded[i].as_slice());
            if unchanged {
                continue;
            }
            let r = self.emitted[*s].take().map(|old| {
                retract_slots.push(*s);
                retract_values.push(old);
                retract_slots.len() - 1
            });
            insert_idx.push(i as u32);
            insert_slots.push(*s);
            order.push((r, Some(insert_slots.len() - 1)));
            self.emitted[*s] = Some(new_encoded[i].clone());
        }
        for s in &gone {
            if let Some(old) = self.emitted[*s].take() {
                retract_slots.push(*s);
                retract_values.push(old);
                order.push((Some(retract_slots.len() - 1), None));
            }
        }
        // Old rows.
        let old_batch = if retract_slots.is_empty() {
            None
        } else {
            let keys = self.key_columns(&retract_slots)?;
            let values = if self.calls.is_empty() {
                Vec::new()
            } else {
                let parser = self.value_converter.parser();
                self.value_converter.convert_rows(retract_values.iter().map(|v| parser.parse(v)))?
            };
            Some(self.output_batch(keys, values, retract_slots.len())?)
        };
        let new_batch = if insert_slots.is_empty() {
            None
        } else {
            let keys = self.key_columns(&insert_slots)?;
            let idx = UInt32Array::from(insert_idx);
            let values = new_values
                .iter()
                .map(|v| datafusion::arrow::compute::take(v, &idx, None))
                .collect::<Result<Vec<_>, _>>()?;
            Some(self.output_batch(keys, values, insert_slots.len())?)
        };
        // Free the slots of vanished groups.
        for s in gone {
            self.free_slot(s);
        }
        // Interleave into -old, +new pairs.
        let old_len = old_batch.as_ref().map(|b| b.num_rows()).unwrap_or(0);
        let combined = match (old_batch, new_batch) {
            (Some(o), Some(n)) => concat_batches(&self.schema, [&o, &n])?,
            (Some(o), None) => o,
            (None, Some(n)) => n,
            (None, None) => return Ok(()),
        };
        let mut indices = Vec::with_capacity(combined.num_rows());
        let mut weights = Vec::with_capacity(combined.num_rows());
        for (r, i) in order {
            if let Some(r) = r {
                indices.push(r as u32);
                weights.push(-1i64);
            }
            if let Some(i) = i {
                indices.push((old_len + i) as u32);
                weights.push(1);
            }
        }
        let data = take_record_batch(&combined, &UInt32Array::from(indices))?;
        out.push(ChangeBatch::try_new(data, weights.into())?);
        Ok(())
    }

    /// Emits the final row of each closing window that has rows (`EMIT ON WINDOW CLOSE`).
    fn emit_final(&mut self, slots: &[usize], out: &mut Output) -> Result<()> {
        let live: Vec<usize> =
            slots.iter().copied().filter(|s| self.slot_keys[*s].is_some() && self.row_counts[*s] > 0).collect();
        if live.is_empty() {
            return Ok(());
        }
        let keys = self.key_columns(&live)?;
        let values = self.calls.iter().map(|c| c.acc.evaluate(&live)).collect::<Result<Vec<_>>>()?;
        let batch = self.output_batch(keys, values, live.len())?;
        out.push(ChangeBatch::inserts(batch));
        Ok(())
    }

    fn free_slot(&mut self, s: usize) {
        let Some(key) = self.slot_keys[s].take() else { return };
        self.slots.remove(&key);
        self.release_slot(s, key, true);
    }

    /// Forgets slot `s` (holding `key`) and frees it for reuse; with `deleted`, the group is
    /// gone, otherwise it only leaves memory (it stays in the store, evicted).
    fn release_slot(&mut self, s: usize, key: Box<[u8]>, deleted: bool) {
        for c in &mut self.calls {
            c.acc.reset(s);
        }
        self.row_counts[s] = 0;
        self.emitted[s] = None;
        self.dirty[s] = false;
        self.unsaved[s] = false;
        self.spill.bytes = self.spill.bytes.saturating_sub(std::mem::take(&mut self.spill.size[s]));
        if std::mem::take(&mut self.saved[s]) && deleted {
            self.unsaved_deletes.push(key);
        }
        if let Some(w) = &mut self.window {
            let v = w.of_slot[s];
            if let Some(list) = w.slots_by_window.get_mut(&v) {
                list.retain(|x| *x != s);
                if list.is_empty() {
                    w.slots_by_window.remove(&v);
                }
            }
            w.of_slot[s] = i64::MIN;
        }
        self.free.push(s);
    }

    /// Lets the aggregate evict clean groups to the store when operator state exceeds the
    /// memory limit.
    pub fn with_memory_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.spill.budget = Some(budget);
        self
    }

    /// Windowed aggregates free closed windows anyway, and a global aggregate has one group:
    /// only the others evict.
    fn spills(&self) -> bool {
        self.window.is_none() && !self.global && self.spill.budget.as_ref().is_some_and(|b| b.limit().is_some())
    }

    /// Reads an evicted group back into a slot; `None` when `key` was not evicted.
    fn load_evicted(&mut self, key: &[u8]) -> Result<Option<usize>> {
        if let Some(s) = self.slots.get(key) {
            return Ok(Some(*s));
        }
        let hash = self.spill.hasher.hash_one(key);
        if !self.spill.evicted.contains_key(&hash) {
            return Ok(None);
        }
        let mut state_key = vec![GROUP_PREFIX];
        state_key.extend_from_slice(key);
        let Some(value) = self.spill.state.as_ref().map(|r| r.get(&state_key)).transpose()?.flatten() else {
            return Ok(None);
        };
        if let Some(n) = self.spill.evicted.get_mut(&hash) {
            *n -= 1;
            if *n == 0 {
                self.spill.evicted.remove(&hash);
            }
        }
        let slot = self.allocate(Box::from(key));
        self.load_group(slot, &value)?;
        self.spill.touched[slot] = true;
        Ok(Some(slot))
    }

    /// Fills a fresh slot from its saved state.
    fn load_group(&mut self, slot: usize, value: &[u8]) -> Result<()> {
        let mut input = Decoder::new(value);
        self.row_counts[slot] = input.i64()?;
        self.emitted[slot] = input.opt_bytes()?.map(<[u8]>::to_vec);
        for c in &mut self.calls {
            c.acc.load(slot, &mut input)?;
        }
        self.saved[slot] = true;
        self.set_saved_size(slot, value.len());
        Ok(())
    }

    fn set_saved_size(&mut self, slot: usize, encoded: usize) {
        let key = self.slot_keys[slot].as_ref().map_or(0, |k| k.len());
        let size = (key + encoded) as u64 + SLOT_OVERHEAD;
        self.spill.bytes = self.spill.bytes - self.spill.size[slot] + size;
        self.spill.size[slot] = size;
    }

    fn report_memory(&mut self) {
        if let Some(b) = &self.spill.budget {
            b.track(self.spill.tracked, self.spill.bytes);
        }
        self.spill.tracked = self.spill.bytes;
    }

    /// Evicts clean groups (saved by a durable checkpoint) down to the aggregate's share of
    /// the memory limit; groups not used since the last pass go first.
    fn evict(&mut self) {
        let Some(target) = self.spill.budget.as_ref().and_then(|b| b.target_for(self.spill.bytes)) else { return };
        let mut evicted = 0u64;
        for pass in 0..2 {
            for s in 0..self.slot_keys.len() {
                if self.spill.bytes <= target {
                    break;
                }
                if self.slot_keys[s].is_none() || self.unsaved[s] || self.dirty[s] || !self.saved[s] {
                    continue;
                }
                if pass == 0 && std::mem::take(&mut self.spill.touched[s]) {
                    continue;
                }
                let Some(key) = self.slot_keys[s].take() else { continue };
                self.slots.remove(&key);
                *self.spill.evicted.entry(self.spill.hasher.hash_one(&*key)).or_default() += 1;
                self.release_slot(s, key, false);
                evicted += 1;
            }
        }
        if let Some(b) = &self.spill.budget {
            b.record_evictions(evicted);
        }
        self.report_memory();
    }
}

/// A window key column as integers in its own unit.
fn window_i64(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    let a = match array.data_type() {
        DataType::Date32 => datafusion::arrow::compute::cast(
            &datafusion::arrow::compute::cast(array, &DataType::Int32)?,
            &DataType::Int64,
        )?,
        _ => datafusion::arrow::compute::cast(array, &DataType::Int64)?,
    };
    Ok(a.as_primitive::<Int64Type>().iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn schema(fields: Vec<(&str, DataType)>) -> DFSchema {
        DFSchema::try_from(Schema::new(fields.into_iter().map(|(n, t)| Field::new(n, t, true)).collect::<Vec<_>>()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn call(kind: AggKind, arg: Option<usize>, ret: DataType) -> AggCall {
        AggCall {
            kind,
            arg,
            arg_type: arg.map(|_| DataType::Int64),
            distinct: false,
            filter: None,
            order_by: vec![],
            return_type: ret,
        }
    }

    fn step(op: &mut HashAggOperator, input: &str) -> String {
        let mut out = Output::default();
        op.process(0, ChangeBatch::from_pretty(input), &mut out).unwrap_or_else(|e| panic!("{e}"));
        let barrier = Barrier { epoch: 1, checkpoint: false, mutation: None };
        op.on_barrier(&barrier, &mut out).unwrap_or_else(|e| panic!("{e}"));
        out.take_batches().iter().map(|b| b.to_pretty()).collect()
    }

    #[test]
    fn count_sum_max_with_retractions() {
        let input = schema(vec![("k", DataType::Int64), ("v", DataType::Int64)]);
        let output = schema(vec![
            ("k", DataType::Int64),
            ("n", DataType::Int64),
            ("s", DataType::Int64),
            ("m", DataType::Int64),
        ]);
        let calls = vec![
            call(AggKind::CountRows, None, DataType::Int64),
            call(AggKind::Sum, Some(1), DataType::Int64),
            call(AggKind::Max, Some(1), DataType::Int64),
        ];
        let mut op =
            HashAggOperator::new(&[0], &calls, &input, &output, false, None, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(step(&mut op, "I I\n + 1 10\n + 1 20\n + 2 5"), "+ 1 2 30 20\n+ 2 1 5 5\n");
        // Deleting the maximum falls back to the next value; the group is updated in place.
        assert_eq!(step(&mut op, "I I\n - 1 20"), "- 1 2 30 20\n+ 1 1 10 10\n");
        // Deleting the last row retracts the group.
        assert_eq!(step(&mut op, "I I\n - 2 5"), "- 2 1 5 5\n");
        // Changes that cancel within an epoch emit nothing.
        assert_eq!(step(&mut op, "I I\n + 1 7\n - 1 7"), "");
    }

    #[test]
    fn global_aggregate_always_has_a_row() {
        let input = schema(vec![("v", DataType::Int64)]);
        let output = schema(vec![("n", DataType::Int64), ("s", DataType::Int64)]);
        let calls = vec![call(AggKind::CountRows, None, DataType::Int64), call(AggKind::Sum, Some(0), DataType::Int64)];
        let mut op =
            HashAggOperator::new(&[], &calls, &input, &output, false, None, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(step(&mut op, "I"), "+ 0 null\n");
        assert_eq!(step(&mut op, "I\n + 4"), "- 0 null\n+ 1 4\n");
        assert_eq!(step(&mut op, "I\n - 4"), "- 1 4\n+ 0 null\n");
    }

    #[test]
    fn count_distinct_tracks_multiplicity() {
        let input = schema(vec![("k", DataType::Int64), ("v", DataType::Int64)]);
        let output = schema(vec![("k", DataType::Int64), ("d", DataType::Int64)]);
        let mut c = call(AggKind::Count, Some(1), DataType::Int64);
        c.distinct = true;
        let mut op =
            HashAggOperator::new(&[0], &[c], &input, &output, false, None, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(step(&mut op, "I I\n + 1 10\n + 1 10\n + 1 11"), "+ 1 2\n");
        assert_eq!(step(&mut op, "I I\n - 1 10"), "");
        assert_eq!(step(&mut op, "I I\n - 1 10"), "- 1 2\n+ 1 1\n");
    }

    #[test]
    fn restored_aggregates_continue_exactly() -> Result<()> {
        use crate::state::testing::{Step, assert_restores};
        let input = schema(vec![("k", DataType::Int64), ("v", DataType::Int64)]);
        let output = schema(vec![
            ("k", DataType::Int64),
            ("n", DataType::Int64),
            ("s", DataType::Int64),
            ("m", DataType::Int64),
            ("d", DataType::Int64),
        ]);
        let mut distinct = call(AggKind::Count, Some(1), DataType::Int64);
        distinct.distinct = true;
        let calls = vec![
            call(AggKind::CountRows, None, DataType::Int64),
            call(AggKind::Sum, Some(1), DataType::Int64),
            call(AggKind::Max, Some(1), DataType::Int64),
            distinct,
        ];
        let make = || -> Box<dyn Operator> {
            Box::new(
                HashAggOperator::new(&[0], &calls, &input, &output, false, None, false)
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        };
        assert_restores(
            make,
            &[
                Step::Data(0, "I I\n + 1 10\n + 1 20\n + 2 5"),
                Step::Barrier,
                Step::Restart,
                Step::Data(0, "I I\n - 1 20\n + 3 7"),
                Step::Barrier,
                Step::Data(0, "I I\n - 2 5"),
                Step::Barrier,
                Step::Restart,
                // A group deleted before the restart must not come back.
                Step::Data(0, "I I\n + 2 6\n - 1 10\n + 1 10"),
                Step::Barrier,
                Step::Restart,
                Step::Data(0, "I I\n - 3 7\n + 1 30"),
                Step::Barrier,
            ],
        )
    }

    #[test]
    fn restored_windows_and_global_aggregates_continue_exactly() -> Result<()> {
        use crate::state::testing::{Step, assert_restores};
        let input = schema(vec![("w", DataType::Int64), ("v", DataType::Int64)]);
        let output = schema(vec![("w", DataType::Int64), ("n", DataType::Int64)]);
        let calls = vec![call(AggKind::CountRows, None, DataType::Int64)];
        let windowed = || -> Box<dyn Operator> {
            Box::new(
                HashAggOperator::new(&[0], &calls, &input, &output, true, Some(0), true)
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        };
        assert_restores(
            windowed,
            &[
                Step::Data(0, "I I\n + 10 1\n + 20 1\n + 10 2"),
                Step::Barrier,
                Step::Restart,
                Step::Watermark(0, 0, 15),
                Step::Data(0, "I I\n + 10 3\n + 20 4\n + 30 1"),
                Step::Barrier,
                Step::Restart,
                Step::Watermark(0, 0, 25),
                Step::Barrier,
            ],
        )?;
        let global_output = schema(vec![("n", DataType::Int64), ("s", DataType::Int64)]);
        let global_calls =
            vec![call(AggKind::CountRows, None, DataType::Int64), call(AggKind::Sum, Some(0), DataType::Int64)];
        let global_input = schema(vec![("v", DataType::Int64)]);
        let global = || -> Box<dyn Operator> {
            Box::new(
                HashAggOperator::new(&[], &global_calls, &global_input, &global_output, false, None, false)
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        };
        assert_restores(
            global,
            &[
                Step::Barrier,
                Step::Restart,
                Step::Data(0, "I\n + 4"),
                Step::Barrier,
                Step::Restart,
                Step::Barrier,
                Step::Data(0, "I\n - 4"),
                Step::Barrier,
            ],
        )
    }

    #[test]
    fn evicted_groups_come_back_exactly() -> Result<()> {
        use crate::state::testing::{Step, assert_spills};
        let input = schema(vec![("k", DataType::Int64), ("v", DataType::Int64)]);
        let output = schema(vec![
            ("k", DataType::Int64),
            ("n", DataType::Int64),
            ("s", DataType::Int64),
            ("m", DataType::Int64),
        ]);
        let calls = vec![
            call(AggKind::CountRows, None, DataType::Int64),
            call(AggKind::Sum, Some(1), DataType::Int64),
            call(AggKind::Min, Some(1), DataType::Int64),
        ];
        let make = |budget: Option<Arc<MemoryBudget>>| -> Box<dyn Operator> {
            let op = HashAggOperator::new(&[0], &calls, &input, &output, false, None, false)
                .unwrap_or_else(|e| panic!("{e}"));
            Box::new(match budget {
                Some(b) => op.with_memory_budget(b),
                None => op,
            })
        };
        let evicted = assert_spills(
            make,
            &[
                Step::Data(0, "I I\n + 1 10\n + 1 20\n + 2 5\n + 3 7"),
                Step::Barrier,
                Step::Barrier,
                // Every group was evicted: each comes back from the store, min exact.
                Step::Data(0, "I I\n - 1 10\n + 2 6"),
                Step::Barrier,
                Step::Barrier,
                Step::Data(0, "I I\n - 2 5\n - 2 6\n + 4 1\n - 3 7"),
                Step::Barrier,
                Step::Barrier,
                Step::Data(0, "I I\n + 3 8\n - 1 20\n + 1 1"),
                Step::Barrier,
            ],
        )?;
        assert!(evicted >= 4, "only {evicted} groups were evicted");
        Ok(())
    }
}
