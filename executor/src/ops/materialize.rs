//! Storing a stream as a relation.
//!
//! The operator turns each epoch's changes into a [`RelationDelta`] for the coordinator, which
//! commits all relations' deltas of the epoch in one transaction, and passes the changes on to
//! the relations built on this one. Keyed relations receive at most one row per key, with
//! updates as `-old, +new`, so the last change to a key within the epoch is its new state.
//! Counted relations (multisets) accumulate weights per row; the store adds them to the
//! stored multiplicities.
//!
//! # Upserts
//! A keyed table fed by a connector (upsert, Debezium, CDC) receives changes *by key*: `+1`
//! replaces whatever row has the key, `-1` deletes the key's row (only its key columns need
//! values). In upsert mode the operator looks the key's current row up and emits exact
//! `-old, +new` changes, which is what every view downstream needs; an upsert that repeats the
//! current row changes nothing and emits nothing. The current row is the newest of: this
//! epoch's changes, changes of epochs not yet durable (kept in memory until their checkpoint
//! commits), and the store.

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use eddy_common::ChangeBatch;
use eddy_common::ids::{Epoch, ObjectId};
use hashbrown::HashMap;

use crate::error::{ExecError, Result};
use crate::message::Barrier;
use crate::operator::{Operator, Output};
use crate::ops::stateless::conform;
use crate::store::{RelationDelta, RowCodec, Snapshot, Store};

/// Encoded key -> new value, or `None` for a deleted key.
type KeyedChanges = HashMap<Vec<u8>, Option<Vec<u8>>>;

pub struct MaterializeOperator {
    relation: ObjectId,
    codec: RowCodec,
    schema: SchemaRef,
    keyed: KeyedChanges,
    counted: HashMap<Vec<u8>, i64>,
    upsert: Option<UpsertState>,
}

/// What upsert mode needs to find a key's current row.
struct UpsertState {
    store: Arc<Store>,
    /// The store as of the last durable checkpoint this operator heard of (or newer).
    snapshot: Snapshot,
    /// Changes handed to the coordinator whose checkpoint is not durable yet, oldest first.
    pending: VecDeque<(Epoch, KeyedChanges)>,
    /// The epoch whose barrier comes next.
    epoch: Epoch,
}

impl MaterializeOperator {
    pub fn new(relation: ObjectId, codec: RowCodec) -> Self {
        let schema = codec.schema().clone();
        Self { relation, codec, schema, keyed: HashMap::new(), counted: HashMap::new(), upsert: None }
    }

    /// A keyed relation whose input sends changes by key (see the module docs).
    ///
    /// # Errors
    /// When the relation is not keyed, or the store cannot be read.
    pub fn upsert(relation: ObjectId, codec: RowCodec, store: Arc<Store>) -> Result<Self> {
        if codec.counted() {
            return Err(ExecError::Internal(format!("upserts into relation {relation}, which has no key")));
        }
        let snapshot = store.snapshot()?;
        let mut op = Self::new(relation, codec);
        op.upsert = Some(UpsertState { store, snapshot, pending: VecDeque::new(), epoch: 0 });
        Ok(op)
    }

    /// The stored value of `key` as of everything this operator has written.
    fn current_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.keyed.get(key) {
            return Ok(v.clone());
        }
        let Some(u) = &self.upsert else { return Ok(None) };
        for (_, changes) in u.pending.iter().rev() {
            if let Some(v) = changes.get(key) {
                return Ok(v.clone());
            }
        }
        u.snapshot.get_value(self.relation, key)
    }

    /// Turns changes by key into exact `-old, +new` changes, recording the new state.
    fn process_upserts(&mut self, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let keys = self.codec.encode_keys(batch.data())?;
        let values = self.codec.encode_values(batch.data())?;
        let weights = batch.weights().values();
        let mut old_keys = Vec::new();
        let mut old_values = Vec::new();
        // (is the old row, index into old rows or input rows)
        let mut order: Vec<(bool, usize)> = Vec::new();
        for (i, (key, value)) in keys.into_iter().zip(values).enumerate() {
            let old = self.current_value(&key)?;
            if weights[i] > 0 {
                if old.as_deref() == Some(value.as_slice()) {
                    continue;
                }
                if let Some(old) = old {
                    order.push((true, old_keys.len()));
                    old_keys.push(key.clone());
                    old_values.push(old);
                }
                order.push((false, i));
                self.keyed.insert(key, Some(value));
            } else if let Some(old) = old {
                order.push((true, old_keys.len()));
                old_keys.push(key.clone());
                old_values.push(old);
                self.keyed.insert(key, None);
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        let olds = self.codec.decode(&old_keys, &old_values)?;
        let both = concat_batches(&self.schema, [&olds, batch.data()])?;
        let offset = olds.num_rows() as u32;
        let indices: UInt32Array =
            order.iter().map(|(old, i)| if *old { *i as u32 } else { offset + *i as u32 }).collect();
        let out_weights: Int64Array = order.iter().map(|(old, _)| if *old { -1i64 } else { 1 }).collect();
        out.push(ChangeBatch::try_new(take_record_batch(&both, &indices)?, out_weights)?);
        Ok(())
    }
}

/// The columns a CDC change says to keep from the current row (see
/// [`eddy_connectors::cdc::KEEP_COLUMNS_METADATA`]).
fn kept_columns(batch: &ChangeBatch) -> Option<Vec<usize>> {
    let list = batch.data().schema_ref().metadata().get(eddy_connectors::cdc::KEEP_COLUMNS_METADATA)?.clone();
    Some(list.split(',').filter_map(|c| c.trim().parse().ok()).collect())
}

impl MaterializeOperator {
    /// Replaces the `keep` columns of each row with the values of the key's current row (an
    /// upstream UPDATE left them unchanged and did not send them).
    fn fill_kept_columns(&self, batch: ChangeBatch, keep: &[usize]) -> Result<ChangeBatch> {
        let keys = self.codec.encode_keys(batch.data())?;
        let mut rows = Vec::with_capacity(keys.len());
        for (i, key) in keys.into_iter().enumerate() {
            let row = batch.data().slice(i, 1);
            let Some(current) = self.current_value(&key)? else {
                tracing::warn!(relation = %self.relation, "an unchanged upstream value has no current row to come from");
                rows.push(row);
                continue;
            };
            let current = self.codec.decode(&[key], &[current])?;
            let columns = (0..row.num_columns())
                .map(|c| if keep.contains(&c) { current.column(c).clone() } else { row.column(c).clone() })
                .collect();
            rows.push(datafusion::arrow::array::RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        let data = concat_batches(&self.schema, &rows)?;
        Ok(ChangeBatch::try_new(data, batch.weights().clone())?)
    }
}

impl Operator for MaterializeOperator {
    fn name(&self) -> &'static str {
        "Materialize"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let keep = kept_columns(&batch);
        let batch = conform(&batch, &self.schema, batch.data().columns().to_vec())?;
        if self.upsert.is_some() {
            let batch = match keep {
                Some(columns) => self.fill_kept_columns(batch, &columns)?,
                None => batch,
            };
            return self.process_upserts(batch, out);
        }
        let keys = self.codec.encode_keys(batch.data())?;
        let weights = batch.weights().values();
        if self.codec.counted() {
            for (k, w) in keys.into_iter().zip(weights) {
                let e = self.counted.entry(k).or_insert(0);
                *e += w;
            }
        } else {
            let values = self.codec.encode_values(batch.data())?;
            for ((k, v), w) in keys.into_iter().zip(values).zip(weights) {
                match *w {
                    1 => {
                        self.keyed.insert(k, Some(v));
                    }
                    -1 => {
                        self.keyed.insert(k, None);
                    }
                    w => {
                        return Err(ExecError::Internal(format!(
                            "keyed relation {} received a row with weight {w}",
                            self.relation
                        )));
                    }
                }
            }
        }
        out.push(batch);
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &Barrier, _out: &mut Output) -> Result<()> {
        if let Some(u) = &mut self.upsert {
            u.epoch = barrier.epoch;
        }
        Ok(())
    }

    fn take_delta(&mut self) -> Option<(ObjectId, RelationDelta)> {
        if self.codec.counted() {
            if self.counted.is_empty() {
                return None;
            }
            let entries = self.counted.drain().filter(|(_, d)| *d != 0).collect();
            Some((self.relation, RelationDelta::Counted(entries)))
        } else {
            if self.keyed.is_empty() {
                return None;
            }
            let changes = std::mem::take(&mut self.keyed);
            let entries = changes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if let Some(u) = &mut self.upsert {
                u.pending.push_back((u.epoch, changes));
            }
            Some((self.relation, RelationDelta::Keyed(entries)))
        }
    }

    fn wants_commit_notices(&self) -> bool {
        self.upsert.is_some()
    }

    fn checkpoint_committed(&mut self, epoch: Epoch) -> Result<()> {
        if let Some(u) = &mut self.upsert {
            // The store now holds these epochs: read them from there.
            u.snapshot = u.store.snapshot()?;
            while u.pending.front().is_some_and(|(e, _)| *e <= epoch) {
                u.pending.pop_front();
            }
        }
        Ok(())
    }
}
