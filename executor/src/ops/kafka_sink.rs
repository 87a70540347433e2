//! The Kafka sink operator: stages each checkpoint's records in the sink's state and hands
//! durable ones to the delivery thread (the protocol is described in
//! [`eddy_connectors::kafka::sink`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eddy_common::ChangeBatch;
use eddy_common::ids::Epoch;
use eddy_connectors::kafka::sink::{
    KafkaDelivery, KafkaSinkOptions, RecordEncoder, SinkRecord, Staged, decode_records, encode_records,
};

use crate::error::{ExecError, Result};
use crate::message::Barrier;
use crate::operator::{Operator, Output};
use crate::state::{StateReader, StateWriter};

pub struct KafkaSink {
    encoder: RecordEncoder,
    delivery: KafkaDelivery,
    rows: Arc<AtomicU64>,
    /// Records since the last checkpoint.
    unstaged: Vec<SinkRecord>,
    /// Checkpointed epochs not yet handed to delivery.
    staged: Staged,
    /// Epochs handed to delivery whose state entries still exist.
    in_state: BTreeSet<u64>,
    /// The epoch of the barrier being processed.
    epoch: Epoch,
}

fn state_key(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

impl KafkaSink {
    /// # Errors
    /// When the delivery thread cannot start.
    pub fn new(
        options: KafkaSinkOptions,
        schema: datafusion::arrow::datatypes::SchemaRef,
        sink: u64,
        actor: usize,
        rows: Arc<AtomicU64>,
    ) -> Result<Self> {
        let encoder =
            RecordEncoder::new(options.clone(), schema).map_err(|e| ExecError::InvalidInput(e.to_string()))?;
        let delivery =
            KafkaDelivery::start(options, sink, actor).map_err(|e| ExecError::InvalidInput(e.to_string()))?;
        Ok(Self {
            encoder,
            delivery,
            rows,
            unstaged: Vec::new(),
            staged: Staged::new(),
            in_state: BTreeSet::new(),
            epoch: 0,
        })
    }
}

impl KafkaSink {
    /// The sink of `def` (a `CREATE SINK ... WITH (connector = 'kafka')`) for one actor.
    ///
    /// # Errors
    /// Bad options (checked at CREATE already) or a thread that cannot start.
    pub fn build(
        def: &eddy_planner::catalog::RelationDef,
        sink: eddy_common::ids::ObjectId,
        actor_index: usize,
        rows: Arc<AtomicU64>,
    ) -> Result<Box<dyn Operator>> {
        let connector =
            def.connector.as_ref().ok_or_else(|| ExecError::Internal(format!("sink {} has no connector", def.name)))?;
        let format = crate::build::source_spec(connector, 1).format;
        let options = KafkaSinkOptions::parse(&connector.options, format.as_ref(), &def.schema)
            .map_err(|e| ExecError::InvalidInput(e.to_string()))?;
        Ok(Box::new(Self::new(options, def.schema.clone(), u64::from(sink.0), actor_index, rows)?))
    }
}

impl Operator for KafkaSink {
    fn name(&self) -> &'static str {
        "KafkaSink"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, _out: &mut Output) -> Result<()> {
        self.rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        let records = self.encoder.encode(&batch).map_err(|e| ExecError::InvalidInput(e.to_string()))?;
        self.unstaged.extend(records);
        Ok(())
    }

    fn on_watermark(&mut self, _column: usize, _value: i64, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &Barrier, _out: &mut Output) -> Result<()> {
        self.epoch = barrier.epoch;
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) -> Result<()> {
        if !self.unstaged.is_empty() {
            let records = std::mem::take(&mut self.unstaged);
            state.put(&state_key(self.epoch), encode_records(&records));
            self.staged.insert(self.epoch, Arc::new(records));
            self.in_state.insert(self.epoch);
        }
        // Epochs Kafka has are no longer needed for recovery.
        let delivered = self.delivery.delivered();
        while let Some(first) = self.in_state.first().copied() {
            if first > delivered || self.staged.contains_key(&first) {
                break;
            }
            state.delete(&state_key(first));
            self.in_state.remove(&first);
        }
        if let Some(reason) = self.delivery.failure() {
            tracing::warn!(%reason, "Kafka sink delivery is retrying");
        }
        Ok(())
    }

    fn restore(&mut self, state: &StateReader) -> Result<()> {
        let mut restored = Vec::new();
        state.for_each_with_prefix(&[], |key, value| {
            let epoch = u64::from_be_bytes(
                key.try_into().map_err(|_| ExecError::Internal("corrupt Kafka sink state key".into()))?,
            );
            let records = decode_records(value).map_err(|e| ExecError::Internal(e.to_string()))?;
            restored.push((epoch, Arc::new(records)));
            Ok(())
        })?;
        restored.sort_by_key(|(e, _)| *e);
        self.in_state.extend(restored.iter().map(|(e, _)| *e));
        self.delivery.recover(restored);
        Ok(())
    }

    fn wants_commit_notices(&self) -> bool {
        true
    }

    fn checkpoint_committed(&mut self, epoch: Epoch) -> Result<()> {
        let later = self.staged.split_off(&(epoch + 1));
        let durable = std::mem::replace(&mut self.staged, later);
        self.delivery.deliver(durable.into_iter().collect());
        Ok(())
    }
}
