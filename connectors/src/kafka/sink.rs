//! The `kafka` sink: change batches → Kafka records, delivered exactly once with Kafka
//! transactions tied to Eddy's checkpoints.
//!
//! # Formats
//! - `FORMAT PLAIN ENCODE JSON`: one record per inserted row (the value is the row as a JSON
//!   object; the key is the `primary_key` columns when given). A stream with updates or
//!   deletes is refused unless `force_append_only = 'true'`, which drops the deletes and keeps
//!   the new side of updates.
//! - `FORMAT UPSERT ENCODE JSON`: key = the `primary_key` columns as a JSON object; an insert
//!   or update writes the new row as the value, a delete writes a tombstone (no value).
//! - `FORMAT DEBEZIUM ENCODE JSON`: the value is `{"before", "after", "op", "ts_ms"}` with
//!   `op` = `c` (insert), `u` (an update: the `-old, +new` pair of one key) or `d` (delete).
//! - `ENCODE AVRO (schema.registry = '...')` with any of the three: the same records in the
//!   Confluent Avro wire format, with schemas registered at `CREATE SINK`
//!   (see [`super::avro_sink`]).
//!
//! # Exactly once
//! Each sink actor owns one transactional producer (`transactional.id` =
//! `eddy-<sink>-<actor>-<topic>`) and one key in the progress topic
//! (`sink.progress.topic`, default `eddy_sink_progress`). The protocol:
//!
//! 1. Records produced by the view between two checkpoints are buffered by the sink
//!    operator. At the checkpoint barrier of epoch `E` they become part of the sink's
//!    checkpointed state under the key `E`, committed with everything else of the checkpoint.
//! 2. Once checkpoint `E` is durable, the records of every staged epoch `<= E` are sent in
//!    one Kafka transaction together with a progress record `(transactional.id → E)`, and the
//!    transaction is committed. Consumers with `isolation.level = read_committed` see all of
//!    them or none.
//! 3. When the commit is confirmed, the staged epochs `<= E` are deleted from the sink's state
//!    at the next checkpoint.
//! 4. After a crash the sink restores the staged epochs of the last durable checkpoint. Its
//!    producer's `init_transactions` fences the previous incarnation and resolves any
//!    transaction it left open; the sink then reads its last progress record `M` (committed
//!    transactions only): staged epochs `<= M` reached Kafka and are dropped, epochs `> M` are
//!    sent again in a new transaction. A transaction's records and its progress record commit
//!    atomically, so every epoch is in Kafka exactly once.
//!
//! Epochs after a restart are always larger than the restored checkpoint's, so progress only
//! grows. With `sink.delivery.guarantee = 'at-least-once'` no transactions are used: staged
//! epochs are sent (idempotent producer) once durable, and after a crash every restored epoch
//! is sent again, so a record may appear twice but is never lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::{Field, Fields, Schema, SchemaRef};

use arrow::json::writer::{EncoderOptions, make_encoder};
use eddy_common::ChangeBatch;
use eddy_common::change::Op;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use serde_json::Value;

use super::avro_sink::{AvroRecordWriter, debezium_schema, register, write_long};
use crate::error::{ConnectorError, Result};
use crate::source::SourceFormat;

const OPTIONS: &[&str] = &[
    "connector",
    "topic",
    "properties.bootstrap.server",
    "properties.bootstrap.servers",
    "primary_key",
    "force_append_only",
    "type",
    "sink.delivery.guarantee",
    "sink.progress.topic",
];

/// The default progress topic of exactly-once sinks.
pub const DEFAULT_PROGRESS_TOPIC: &str = "eddy_sink_progress";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkEnvelope {
    Plain,
    Upsert,
    Debezium,
}

/// The options of a Kafka sink, checked against the sink's columns.
#[derive(Debug, Clone)]
pub struct KafkaSinkOptions {
    pub topic: String,
    pub bootstrap: String,
    pub properties: Vec<(String, String)>,
    pub envelope: SinkEnvelope,
    /// Column indices of the record key.
    pub key: Vec<usize>,
    pub force_append_only: bool,
    pub exactly_once: bool,
    pub progress_topic: String,
    /// `ENCODE AVRO`: the registry and the ids of the registered schemas (value, key), which
    /// [`KafkaSinkOptions::register_avro_schemas`] gives when the sink is created.
    pub avro: Option<AvroEncoding>,
}

/// Where an Avro sink's schemas are registered, and their ids once they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvroEncoding {
    pub registry: String,
    pub value_schema_id: Option<u32>,
    pub key_schema_id: Option<u32>,
}

/// Format options under which a created Avro sink keeps its schema ids.
pub const VALUE_SCHEMA_ID_OPTION: &str = "eddy.value.schema.id";
pub const KEY_SCHEMA_ID_OPTION: &str = "eddy.key.schema.id";

fn invalid(message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidOption(message.into())
}

impl KafkaSinkOptions {
    /// # Errors
    /// Unknown or missing options, a format other than PLAIN/UPSERT/DEBEZIUM with JSON,
    /// key columns that do not exist, UPSERT without a key.
    pub fn parse(options: &HashMap<String, String>, format: Option<&SourceFormat>, schema: &Schema) -> Result<Self> {
        for key in options.keys() {
            if !OPTIONS.contains(&key.as_str()) && !key.starts_with("properties.") {
                return Err(invalid(format!(
                    "unknown option \"{key}\" for sink connector kafka; valid options: {}, properties.<librdkafka setting>",
                    OPTIONS.join(", ")
                )));
            }
        }
        let topic = options.get("topic").cloned().ok_or_else(|| invalid("sink connector kafka needs topic = '...'"))?;
        let bootstrap = options
            .get("properties.bootstrap.server")
            .or_else(|| options.get("properties.bootstrap.servers"))
            .cloned()
            .ok_or_else(|| invalid("sink connector kafka needs properties.bootstrap.server = 'host:port'"))?;
        let format = format
            .ok_or_else(|| invalid("sink connector kafka needs FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON | AVRO"))?;
        let envelope = match format.format.to_ascii_uppercase().as_str() {
            "PLAIN" => SinkEnvelope::Plain,
            "UPSERT" => SinkEnvelope::Upsert,
            "DEBEZIUM" => SinkEnvelope::Debezium,
            other => return Err(invalid(format!("FORMAT {other}: expected PLAIN, UPSERT or DEBEZIUM"))),
        };
        let avro = if format.encode.eq_ignore_ascii_case("json") {
            None
        } else if format.encode.eq_ignore_ascii_case("avro") {
            let registry = format.options.get("schema.registry").cloned().ok_or_else(|| {
                invalid("ENCODE AVRO needs a schema registry: ENCODE AVRO (schema.registry = 'http://host:port')")
            })?;
            if registry.split(',').map(str::trim).any(|u| !u.starts_with("http://")) {
                return Err(invalid(format!("schema.registry = '{registry}': only http:// registries are supported")));
            }
            let id = |key: &str| -> Result<Option<u32>> {
                format
                    .options
                    .get(key)
                    .map(|v| v.parse::<u32>().map_err(|_| invalid(format!("{key} = '{v}'"))))
                    .transpose()
            };
            Some(AvroEncoding {
                registry,
                value_schema_id: id(VALUE_SCHEMA_ID_OPTION)?,
                key_schema_id: id(KEY_SCHEMA_ID_OPTION)?,
            })
        } else {
            return Err(invalid(format!("ENCODE {}: the Kafka sink writes JSON or AVRO", format.encode)));
        };
        let mut key = Vec::new();
        if let Some(list) = options.get("primary_key") {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                key.push(schema.index_of(name).map_err(|_| {
                    invalid(format!("primary_key names column \"{name}\", which the sink's input does not have"))
                })?);
            }
        }
        if envelope == SinkEnvelope::Upsert && key.is_empty() {
            return Err(invalid("FORMAT UPSERT needs primary_key = 'col[,col...]'"));
        }
        let exactly_once = match options.get("sink.delivery.guarantee").map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("exactly-once") => true,
            Some("at-least-once") => false,
            Some(other) => {
                return Err(invalid(format!(
                    "sink.delivery.guarantee = '{other}': expected exactly-once or at-least-once"
                )));
            }
        };
        Ok(Self {
            topic,
            bootstrap,
            properties: options
                .iter()
                .filter(|(k, _)| k.starts_with("properties.") && !k.starts_with("properties.bootstrap.server"))
                .map(|(k, v)| (k["properties.".len()..].to_string(), v.clone()))
                .collect(),
            envelope,
            key,
            force_append_only: options.get("force_append_only").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            exactly_once,
            progress_topic: options
                .get("sink.progress.topic")
                .cloned()
                .unwrap_or_else(|| DEFAULT_PROGRESS_TOPIC.into()),
            avro,
        })
    }

    /// The Avro schemas of the sink's records: value, and key when there are key columns.
    ///
    /// # Errors
    /// A column type Avro cannot carry here.
    pub fn avro_writers(&self, schema: &Schema) -> Result<(AvroRecordWriter, Option<AvroRecordWriter>, Value)> {
        let value = AvroRecordWriter::new(schema, None, &format!("{}_value", self.topic)).map_err(invalid)?;
        let key = if self.key.is_empty() {
            None
        } else {
            Some(AvroRecordWriter::new(schema, Some(&self.key), &format!("{}_key", self.topic)).map_err(invalid)?)
        };
        let value_schema = match self.envelope {
            SinkEnvelope::Debezium => debezium_schema(value.schema(), &format!("{}_envelope", self.topic)),
            _ => value.schema().clone(),
        };
        Ok((value, key, value_schema))
    }

    /// Registers the sink's Avro schemas (subjects `<topic>-value` and `<topic>-key`) and
    /// returns the format options that keep their ids; nothing for a JSON sink. Blocks on the
    /// registry's HTTP answers.
    ///
    /// # Errors
    /// A column type Avro cannot carry, or a registry that does not register.
    pub fn register_avro_schemas(&self, schema: &Schema) -> Result<Vec<(String, String)>> {
        let Some(avro) = &self.avro else { return Ok(Vec::new()) };
        let (_, key, value_schema) = self.avro_writers(schema)?;
        let registry_error = |e: String| ConnectorError::External(e);
        let mut out = Vec::new();
        let value_id =
            register(&avro.registry, &format!("{}-value", self.topic), &value_schema).map_err(registry_error)?;
        out.push((VALUE_SCHEMA_ID_OPTION.to_string(), value_id.to_string()));
        if let Some(key) = key {
            let key_id =
                register(&avro.registry, &format!("{}-key", self.topic), key.schema()).map_err(registry_error)?;
            out.push((KEY_SCHEMA_ID_OPTION.to_string(), key_id.to_string()));
        }
        Ok(out)
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }
}

/// One Kafka record: key and value (a tombstone has no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Serializes records for the sink's checkpointed state.
pub fn encode_records(records: &[SinkRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    let put = |b: &Option<Vec<u8>>, out: &mut Vec<u8>| match b {
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    };
    for r in records {
        put(&r.key, &mut out);
        put(&r.value, &mut out);
    }
    out
}

/// Reads [`encode_records`] back.
///
/// # Errors
/// When the bytes are truncated.
pub fn decode_records(mut bytes: &[u8]) -> Result<Vec<SinkRecord>> {
    let corrupt = || ConnectorError::InvalidOption("corrupt Kafka sink state".into());
    let take = |bytes: &mut &[u8]| -> Result<Option<Vec<u8>>> {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = u32::from_le_bytes(*len);
        *bytes = rest;
        if len == u32::MAX {
            return Ok(None);
        }
        let len = len as usize;
        if bytes.len() < len {
            return Err(corrupt());
        }
        let (v, rest) = bytes.split_at(len);
        *bytes = rest;
        Ok(Some(v.to_vec()))
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = take(&mut bytes)?;
        let value = take(&mut bytes)?;
        out.push(SinkRecord { key, value });
    }
    Ok(out)
}

/// One encoded value (or key) per row of a batch.
type EncodedRows = Vec<Vec<u8>>;

/// Turns change batches into records of the sink's format.
pub struct RecordEncoder {
    options: KafkaSinkOptions,
    schema: SchemaRef,
    avro: Option<AvroRows>,
}

/// How an Avro sink writes rows: the row (and key) writers and the registered schema ids.
struct AvroRows {
    value: AvroRecordWriter,
    value_id: u32,
    key: Option<(AvroRecordWriter, u32)>,
}

/// Each row of `batch` as a Confluent-framed Avro record (`0`, schema `id`, body), or, without
/// an id, as the bare body (to be placed inside an envelope).
fn avro_rows(writer: &AvroRecordWriter, id: Option<u32>, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let prepared = writer.prepare(batch.columns()).map_err(ConnectorError::InvalidOption)?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut record = Vec::with_capacity(64);
        if let Some(id) = id {
            record.push(0);
            record.extend_from_slice(&id.to_be_bytes());
        }
        writer.write(&prepared, row, &mut record).map_err(ConnectorError::InvalidOption)?;
        out.push(record);
    }
    Ok(out)
}

/// Each row of `batch` (or of its `columns`) as a JSON object, named by `schema`.
fn json_rows(schema: &Schema, batch: &RecordBatch, columns: Option<&[usize]>) -> Result<Vec<Vec<u8>>> {
    let named = |c: usize| -> Result<(Arc<Field>, Arc<dyn Array>)> {
        let name = schema.fields().get(c).map(|f| f.name().clone()).unwrap_or_else(|| format!("c{c}"));
        let array = batch.column(c).clone();
        Ok((Arc::new(Field::new(name, array.data_type().clone(), true)), array))
    };
    let picked: Vec<(Arc<Field>, Arc<dyn Array>)> = match columns {
        Some(cols) => cols.iter().map(|c| named(*c)).collect::<Result<_>>()?,
        None => (0..batch.num_columns()).map(named).collect::<Result<_>>()?,
    };
    let (fields, arrays): (Vec<Arc<Field>>, Vec<Arc<dyn Array>>) = picked.into_iter().unzip();
    let structs = StructArray::try_new(Fields::from(fields), arrays, None)?;
    let field = Arc::new(Field::new("row", structs.data_type().clone(), false));
    let options = EncoderOptions::default().with_explicit_nulls(true);
    let mut encoder = make_encoder(&field, &structs, &options)?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut row = Vec::with_capacity(64);
        encoder.encode(i, &mut row);
        out.push(row);
    }
    Ok(out)
}

impl RecordEncoder {
    /// # Errors
    /// An Avro sink whose schemas were not registered, or a column Avro cannot carry.
    pub fn new(options: KafkaSinkOptions, schema: SchemaRef) -> Result<Self> {
        let avro = match &options.avro {
            None => None,
            Some(encoding) => {
                let (value, key, _) = options.avro_writers(&schema)?;
                let unregistered = || invalid("the Avro sink's schemas were not registered; create the sink again");
                let value_id = encoding.value_schema_id.ok_or_else(unregistered)?;
                let key = match key {
                    Some(k) => Some((k, encoding.key_schema_id.ok_or_else(unregistered)?)),
                    None => None,
                };
                Some(AvroRows { value, value_id, key })
            }
        };
        Ok(Self { options, schema, avro })
    }

    /// The values (framed unless inside a Debezium envelope) and keys of a batch's rows.
    fn rows(&self, batch: &RecordBatch) -> Result<(EncodedRows, Option<EncodedRows>)> {
        match &self.avro {
            None => {
                let values = json_rows(&self.schema, batch, None)?;
                let keys = if self.options.key.is_empty() {
                    None
                } else {
                    Some(json_rows(&self.schema, batch, Some(&self.options.key))?)
                };
                Ok((values, keys))
            }
            Some(avro) => {
                let framed = (self.options.envelope != SinkEnvelope::Debezium).then_some(avro.value_id);
                let values = avro_rows(&avro.value, framed, batch)?;
                let keys = match &avro.key {
                    Some((writer, id)) => Some(avro_rows(writer, Some(*id), batch)?),
                    None => None,
                };
                Ok((values, keys))
            }
        }
    }

    /// A Debezium envelope around row bodies (JSON text or Avro bodies).
    fn envelope(&self, before: Option<&[u8]>, after: Option<&[u8]>, op: &str, now_ms: i64) -> Vec<u8> {
        let mut v = Vec::with_capacity(128);
        match &self.avro {
            None => {
                v.extend_from_slice(b"{\"before\":");
                v.extend_from_slice(before.unwrap_or(b"null"));
                v.extend_from_slice(b",\"after\":");
                v.extend_from_slice(after.unwrap_or(b"null"));
                v.extend_from_slice(format!(",\"op\":\"{op}\",\"ts_ms\":{now_ms}}}").as_bytes());
            }
            Some(avro) => {
                v.push(0);
                v.extend_from_slice(&avro.value_id.to_be_bytes());
                for side in [before, after] {
                    match side {
                        None => write_long(0, &mut v),
                        Some(body) => {
                            write_long(1, &mut v);
                            v.extend_from_slice(body);
                        }
                    }
                }
                write_long(op.len() as i64, &mut v);
                v.extend_from_slice(op.as_bytes());
                write_long(now_ms, &mut v);
            }
        }
        v
    }

    /// The records of one change batch, in order.
    ///
    /// # Errors
    /// When a PLAIN sink without `force_append_only` receives a retraction, or encoding fails.
    pub fn encode(&self, changes: &ChangeBatch) -> Result<Vec<SinkRecord>> {
        let batch = changes.data();
        let (values, keys) = self.rows(batch)?;
        let ops = changes.ops(|a, b| keys.as_ref().is_some_and(|k| k[a] == k[b]));
        let weights = changes.weights().values();
        let key = |i: usize| keys.as_ref().map(|k| k[i].clone());
        let mut out = Vec::with_capacity(values.len());
        let mut i = 0;
        while i < ops.len() {
            let copies = weights[i].unsigned_abs() as usize;
            match (self.options.envelope, ops[i]) {
                (SinkEnvelope::Plain, Op::Insert | Op::UpdateInsert) => {
                    for _ in 0..copies {
                        out.push(SinkRecord { key: key(i), value: Some(values[i].clone()) });
                    }
                }
                (SinkEnvelope::Plain, Op::Delete | Op::UpdateDelete) => {
                    if !self.options.force_append_only {
                        return Err(ConnectorError::InvalidOption(
                            "the sink's input deletes a row, but FORMAT PLAIN is append-only".into(),
                        ));
                    }
                }
                (SinkEnvelope::Upsert, Op::Insert | Op::UpdateInsert) => {
                    out.push(SinkRecord { key: key(i), value: Some(values[i].clone()) });
                }
                (SinkEnvelope::Upsert, Op::UpdateDelete) => {}
                (SinkEnvelope::Upsert, Op::Delete) => out.push(SinkRecord { key: key(i), value: None }),
                (SinkEnvelope::Debezium, op) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    let envelope =
                        |before: Option<&[u8]>, after: Option<&[u8]>, op: &str| self.envelope(before, after, op, now);
                    match op {
                        Op::UpdateDelete if i + 1 < ops.len() => {
                            let v = envelope(Some(&values[i]), Some(&values[i + 1]), "u");
                            out.push(SinkRecord { key: key(i + 1), value: Some(v) });
                            i += 1;
                        }
                        Op::Delete | Op::UpdateDelete => {
                            for _ in 0..copies {
                                out.push(SinkRecord {
                                    key: key(i),
                                    value: Some(envelope(Some(&values[i]), None, "d")),
                                });
                            }
                        }
                        Op::Insert | Op::UpdateInsert => {
                            for _ in 0..copies {
                                out.push(SinkRecord {
                                    key: key(i),
                                    value: Some(envelope(None, Some(&values[i]), "c")),
                                });
                            }
                        }
                    }
                }
            }
            i += 1;
        }
        Ok(out)
    }
}

/// What the sink operator asks its delivery thread to do.
enum Command {
    /// Deliver these staged epochs (ascending) in one transaction marked with the last one.
    Deliver(Vec<(u64, Arc<Vec<SinkRecord>>)>),
    /// After a restart: deliver the staged epochs Kafka does not have yet.
    Recover(Vec<(u64, Arc<Vec<SinkRecord>>)>),
}

/// The delivery side of one sink actor: a thread owning the producer.
pub struct KafkaDelivery {
    commands: std::sync::mpsc::Sender<Command>,
    /// The newest epoch known to be in Kafka (0 before any).
    delivered: Arc<AtomicU64>,
    failed: Arc<parking_lot::Mutex<Option<String>>>,
}

impl KafkaDelivery {
    /// Starts the delivery thread of actor `actor` of sink `sink`.
    ///
    /// # Errors
    /// When the thread cannot start.
    pub fn start(options: KafkaSinkOptions, sink: u64, actor: usize) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let delivered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(parking_lot::Mutex::new(None));
        let transactional_id = format!("eddy-{sink}-{actor}-{}", options.topic);
        let worker = Worker { options, transactional_id, producer: None, delivered: delivered.clone() };
        let failed_flag = failed.clone();
        std::thread::Builder::new()
            .name(format!("kafka-sink-{sink}-{actor}"))
            .spawn(move || worker.run(rx, failed_flag))
            .map_err(|e| ConnectorError::External(format!("cannot start the Kafka sink thread: {e}")))?;
        Ok(Self { commands: tx, delivered, failed })
    }

    /// Delivers durable staged epochs.
    pub fn deliver(&self, epochs: Vec<(u64, Arc<Vec<SinkRecord>>)>) {
        if !epochs.is_empty() {
            let _ = self.commands.send(Command::Deliver(epochs));
        }
    }

    /// Delivers what a restored checkpoint staged and Kafka does not have.
    pub fn recover(&self, epochs: Vec<(u64, Arc<Vec<SinkRecord>>)>) {
        let _ = self.commands.send(Command::Recover(epochs));
    }

    /// The newest epoch known to be in Kafka.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// Why delivery stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().clone()
    }
}

struct Worker {
    options: KafkaSinkOptions,
    transactional_id: String,
    producer: Option<BaseProducer>,
    delivered: Arc<AtomicU64>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Worker {
    fn run(mut self, commands: std::sync::mpsc::Receiver<Command>, failed: Arc<parking_lot::Mutex<Option<String>>>) {
        while let Ok(command) = commands.recv() {
            let (epochs, recovering) = match command {
                Command::Deliver(e) => (e, false),
                Command::Recover(e) => (e, true),
            };
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.deliver(&epochs, recovering) {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(topic = %self.options.topic, error = %e, "Kafka sink delivery failed; retrying");
                        *failed.lock() = Some(e.to_string());
                        // Start over with a new producer: it fences and resolves the failed
                        // transaction, and progress tells what reached Kafka.
                        self.producer = None;
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            *failed.lock() = None;
        }
    }

    fn producer(&mut self) -> Result<&BaseProducer> {
        if self.producer.is_none() {
            if self.options.exactly_once {
                self.ensure_progress_topic()?;
            }
            let mut config = self.options.client_config();
            config.set("enable.idempotence", "true");
            if self.options.exactly_once {
                config.set("transactional.id", &self.transactional_id);
            }
            let producer: BaseProducer =
                config.create().map_err(|e| invalid(format!("invalid Kafka client settings: {e}")))?;
            if self.options.exactly_once {
                producer
                    .init_transactions(TIMEOUT)
                    .map_err(|e| ConnectorError::External(format!("Kafka init_transactions failed: {e}")))?;
                // The previous incarnation is fenced and its open transaction resolved: what
                // progress says now is final.
                let progress = self.read_progress()?;
                self.delivered.fetch_max(progress, Ordering::AcqRel);
            }
            self.producer = Some(producer);
        }
        self.producer.as_ref().ok_or_else(|| ConnectorError::External("Kafka producer missing".into()))
    }

    /// The last epoch this sink actor's committed transactions recorded.
    /// Creates the progress topic (one partition, compacted) when the broker does not have
    /// it, so an exactly-once sink needs no manual setup and no broker-side auto-creation
    /// (which would pick the broker's default partition count and cleanup policy).
    fn ensure_progress_topic(&self) -> Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        use rdkafka::types::RDKafkaErrorCode;
        let topic = self.options.progress_topic.as_str();
        let mut config = self.options.client_config();
        config.set("allow.auto.create.topics", "false");
        let probe: BaseConsumer =
            config.create().map_err(|e| invalid(format!("invalid Kafka client settings: {e}")))?;
        let metadata = probe
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| ConnectorError::External(format!("cannot read metadata of \"{topic}\": {e}")))?;
        let exists = metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none());
        if exists {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self
            .options
            .client_config()
            .create()
            .map_err(|e| invalid(format!("invalid Kafka client settings: {e}")))?;
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::External(format!("cannot start a runtime for topic creation: {e}")))?;
        let results = runtime
            .block_on(admin.create_topics([&new], &options))
            .map_err(|e| ConnectorError::External(format!("cannot create the progress topic \"{topic}\": {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, e)) => {
                    return Err(ConnectorError::External(format!(
                        "cannot create the progress topic \"{topic}\": {e} (create it with one partition)"
                    )));
                }
            }
        }
        tracing::info!(%topic, "created the Kafka sink progress topic");
        Ok(())
    }

    fn read_progress(&self) -> Result<u64> {
        let mut config = self.options.client_config();
        config.set("isolation.level", "read_committed");
        config.set("enable.auto.commit", "false");
        config.set("group.id", format!("{}-progress", self.transactional_id));
        let consumer: BaseConsumer =
            config.create().map_err(|e| invalid(format!("invalid Kafka client settings: {e}")))?;
        let topic = &self.options.progress_topic;
        let (low, high) = match consumer.fetch_watermarks(topic, 0, TIMEOUT) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(%topic, error = %e, "no progress topic yet");
                return Ok(0);
            }
        };
        if high <= low {
            return Ok(0);
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, 0, Offset::Offset(low))
            .map_err(|e| ConnectorError::External(e.to_string()))?;
        consumer.assign(&list).map_err(|e| ConnectorError::External(e.to_string()))?;
        let mut last = 0u64;
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let position = consumer
                .position()
                .ok()
                .and_then(|p| p.find_partition(topic, 0).and_then(|e| e.offset().to_raw()))
                .unwrap_or(-1);
            if position >= high {
                return Ok(last);
            }
            if std::time::Instant::now() > deadline {
                return Err(ConnectorError::External(format!("timed out reading the progress topic \"{topic}\"")));
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
                && m.key() == Some(self.transactional_id.as_bytes())
                && let Some(epoch) = m.payload().and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse().ok())
            {
                last = epoch;
            }
        }
    }

    fn deliver(&mut self, epochs: &[(u64, Arc<Vec<SinkRecord>>)], recovering: bool) -> Result<()> {
        let exactly_once = self.options.exactly_once;
        self.producer()?;
        let delivered = self.delivered.load(Ordering::Acquire);
        // Epochs Kafka already has (known from progress) are skipped, unless at-least-once
        // recovery sends everything it restored again.
        let todo: Vec<&(u64, Arc<Vec<SinkRecord>>)> =
            epochs.iter().filter(|(e, _)| !exactly_once && recovering || *e > delivered).collect();
        let Some(last) = todo.last().map(|(e, _)| *e) else { return Ok(()) };
        let topic = self.options.topic.clone();
        let progress_topic = self.options.progress_topic.clone();
        let id = self.transactional_id.clone();
        let producer = self.producer()?;
        let fail =
            |what: &str, e: rdkafka::error::KafkaError| ConnectorError::External(format!("Kafka {what} failed: {e}"));
        if exactly_once {
            producer.begin_transaction().map_err(|e| fail("begin_transaction", e))?;
        }
        for (_, records) in &todo {
            for r in records.iter() {
                let mut record = BaseRecord::<[u8], [u8]>::to(&topic);
                if let Some(k) = &r.key {
                    record = record.key(k.as_slice());
                }
                if let Some(v) = &r.value {
                    record = record.payload(v.as_slice());
                }
                send_with_retry(producer, record)?;
            }
        }
        if exactly_once {
            let marker = last.to_string();
            let record = BaseRecord::<[u8], [u8]>::to(&progress_topic)
                .key(id.as_bytes())
                .payload(marker.as_bytes())
                .partition(0);
            send_with_retry(producer, record)?;
            producer.commit_transaction(TIMEOUT).map_err(|e| fail("commit_transaction", e))?;
        } else {
            producer.flush(TIMEOUT).map_err(|e| fail("flush", e))?;
        }
        self.delivered.fetch_max(last, Ordering::AcqRel);
        Ok(())
    }
}

fn send_with_retry(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return Ok(());
            }
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(ConnectorError::External(format!("Kafka produce failed: {e}"))),
        }
    }
}

/// Staged epochs, for the operator: epoch → its records.
pub type Staged = BTreeMap<u64, Arc<Vec<SinkRecord>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn options(format: &str, extra: &[(&str, &str)], schema: &Schema) -> Result<KafkaSinkOptions> {
        let mut o: HashMap<String, String> =
            [("connector", "kafka"), ("topic", "out"), ("properties.bootstrap.server", "127.0.0.1:1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        for (k, v) in extra {
            o.insert(k.to_string(), v.to_string());
        }
        let f = SourceFormat { format: format.into(), encode: "JSON".into(), options: HashMap::new() };
        KafkaSinkOptions::parse(&o, Some(&f), schema)
    }

    fn text(records: &[SinkRecord]) -> Vec<String> {
        let s = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or("-".into());
        records.iter().map(|r| format!("{} {}", s(&r.key), s(&r.value))).collect()
    }

    #[test]
    fn formats_encode_changes() -> Result<()> {
        let changes = ChangeBatch::from_pretty("I T\n + 1 a\n - 1 a\n + 1 b\n - 2 c");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", arrow::datatypes::DataType::Int64, true),
            Field::new("name", arrow::datatypes::DataType::Utf8, true),
        ]));
        let upsert = RecordEncoder::new(options("UPSERT", &[("primary_key", "id")], &schema)?, schema.clone())?;
        assert_eq!(
            text(&upsert.encode(&changes)?),
            vec!["{\"id\":1} {\"id\":1,\"name\":\"a\"}", "{\"id\":1} {\"id\":1,\"name\":\"b\"}", "{\"id\":2} -"]
        );
        let debezium = RecordEncoder::new(options("DEBEZIUM", &[("primary_key", "id")], &schema)?, schema.clone())?;
        let out = text(&debezium.encode(&changes)?);
        assert_eq!(out.len(), 3);
        assert!(
            out[1].starts_with(
                "{\"id\":1} {\"before\":{\"id\":1,\"name\":\"a\"},\"after\":{\"id\":1,\"name\":\"b\"},\"op\":\"u\""
            ),
            "{out:?}"
        );
        assert!(out[2].contains("\"after\":null,\"op\":\"d\""), "{out:?}");
        let plain = RecordEncoder::new(options("PLAIN", &[], &schema)?, schema.clone())?;
        assert!(plain.encode(&changes).is_err());
        let forced = RecordEncoder::new(options("PLAIN", &[("force_append_only", "true")], &schema)?, schema.clone())?;
        assert_eq!(text(&forced.encode(&changes)?), vec!["- {\"id\":1,\"name\":\"a\"}", "- {\"id\":1,\"name\":\"b\"}"]);
        assert!(options("UPSERT", &[], &schema).is_err());
        let records = upsert.encode(&changes)?;
        assert_eq!(decode_records(&encode_records(&records))?, records);
        Ok(())
    }

    #[test]
    fn avro_records_are_framed_and_enveloped() -> Result<()> {
        let changes = ChangeBatch::from_pretty("I T\n + 1 a\n - 1 a\n + 1 b\n - 2 c");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", arrow::datatypes::DataType::Int64, false),
            Field::new("name", arrow::datatypes::DataType::Utf8, true),
        ]));
        let avro_options = |format: &str, ids: bool| -> Result<KafkaSinkOptions> {
            let o: HashMap<String, String> = [
                ("connector", "kafka"),
                ("topic", "t"),
                ("properties.bootstrap.server", "127.0.0.1:1"),
                ("primary_key", "id"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let mut f = HashMap::from([("schema.registry".to_string(), "http://127.0.0.1:1".to_string())]);
            if ids {
                f.insert(VALUE_SCHEMA_ID_OPTION.into(), "7".into());
                f.insert(KEY_SCHEMA_ID_OPTION.into(), "8".into());
            }
            KafkaSinkOptions::parse(
                &o,
                Some(&SourceFormat { format: format.into(), encode: "AVRO".into(), options: f }),
                &schema,
            )
        };
        // Not registered: refused rather than written without a schema id.
        assert!(RecordEncoder::new(avro_options("UPSERT", false)?, schema.clone()).is_err());
        let to_json = |schema_json: &Value, record: &[u8], id: u32| -> Result<String> {
            assert_eq!(&record[..5], &[0, 0, 0, 0, id as u8][..]);
            let parsed = crate::kafka::avro::AvroSchema::parse(&schema_json.to_string()).map_err(invalid)?;
            let mut out = Vec::new();
            parsed.to_json(&record[5..], &mut out).map_err(invalid)?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        };

        let options = avro_options("UPSERT", true)?;
        let (value, key, _) = options.avro_writers(&schema)?;
        let key = key.ok_or_else(|| invalid("no key writer"))?;
        let records = RecordEncoder::new(options, schema.clone())?.encode(&changes)?;
        let mut seen = Vec::new();
        for r in &records {
            let k = to_json(key.schema(), r.key.as_deref().unwrap_or_default(), 8)?;
            let v = match &r.value {
                Some(v) => to_json(value.schema(), v, 7)?,
                None => "-".into(),
            };
            seen.push(format!("{k} {v}"));
        }
        assert_eq!(
            seen,
            vec!["{\"id\":1} {\"id\":1,\"name\":\"a\"}", "{\"id\":1} {\"id\":1,\"name\":\"b\"}", "{\"id\":2} -"]
        );

        let options = avro_options("DEBEZIUM", true)?;
        let (_, _, envelope) = options.avro_writers(&schema)?;
        let records = RecordEncoder::new(options, schema.clone())?.encode(&changes)?;
        let values: Vec<String> = records
            .iter()
            .map(|r| to_json(&envelope, r.value.as_deref().unwrap_or_default(), 7))
            .collect::<Result<_>>()?;
        assert_eq!(values.len(), 3);
        assert!(
            values[1].starts_with(
                "{\"before\":{\"id\":1,\"name\":\"a\"},\"after\":{\"id\":1,\"name\":\"b\"},\"op\":\"u\",\"ts_ms\":"
            ),
            "{values:?}"
        );
        assert!(
            values[2].starts_with("{\"before\":{\"id\":2,\"name\":\"c\"},\"after\":null,\"op\":\"d\""),
            "{values:?}"
        );
        Ok(())
    }
}
