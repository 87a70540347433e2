//! Storing a stream as a relation.
//!
//! The operator turns each epoch's changes into a [`RelationDelta`] for the coordinator, which
//! commits all relations' deltas of the epoch in one transaction, and passes the changes on to
//! the relations built on this one. Keyed relations receive at most one row per key, with
//! updates as `-old, +new`, so the last change to a key within the epoch is its new state.
//! Counted relations (multisets) accumulate weights per row; the store adds them to the
//! stored multiplicities.

use datafusion::arrow::datatypes::SchemaRef;
use eddy_common::ChangeBatch;
use eddy_common::ids::ObjectId;
use hashbrown::HashMap;

use crate::error::{ExecError, Result};
use crate::operator::{Operator, Output};
use crate::ops::stateless::conform;
use crate::store::{RelationDelta, RowCodec};

pub struct MaterializeOperator {
    relation: ObjectId,
    codec: RowCodec,
    schema: SchemaRef,
    keyed: HashMap<Vec<u8>, Option<Vec<u8>>>,
    counted: HashMap<Vec<u8>, i64>,
}

impl MaterializeOperator {
    pub fn new(relation: ObjectId, codec: RowCodec) -> Self {
        let schema = codec.schema().clone();
        Self { relation, codec, schema, keyed: HashMap::new(), counted: HashMap::new() }
    }
}

impl Operator for MaterializeOperator {
    fn name(&self) -> &'static str {
        "Materialize"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let batch = conform(&batch, &self.schema, batch.data().columns().to_vec())?;
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
            Some((self.relation, RelationDelta::Keyed(self.keyed.drain().collect())))
        }
    }
}
