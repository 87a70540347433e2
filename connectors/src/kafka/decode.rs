//! Turning Kafka records into change batches: `FORMAT PLAIN | UPSERT | DEBEZIUM` ×
//! `ENCODE JSON | CSV`.
//!
//! Records are decoded straight into Arrow (arrow-json's and arrow-csv's decoders) a batch at
//! a time. A record that does not decode — bad syntax, a value of the wrong type, more or
//! fewer than one row, too large — is reported with its partition and offset and left out;
//! the rest of the batch is kept. The fast path decodes the whole batch with one decoder;
//! only when that fails are the records decoded one by one to find the bad ones.
//!
//! - `PLAIN`: every record is one row, inserted.
//! - `UPSERT`: the value is the whole row (`+1`, replacing the row with its key); a record
//!   with no value (a tombstone) deletes the row whose key columns the record's *key* holds
//!   (a JSON object / CSV line of the key columns).
//! - `DEBEZIUM`: a change envelope `{"before": {...}, "after": {...}, "op": "c|r|u|d"}`,
//!   optionally wrapped in `{"schema": ..., "payload": {...}}`; creates and snapshot reads
//!   insert `after`, updates delete `before` (when present) and insert `after`, deletes
//!   delete `before`. Tombstones that follow deletes are skipped.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray,
    StructArray, TimestampMillisecondBuilder, UInt32Array, make_array,
};
use arrow::compute::{cast, interleave, take};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use eddy_common::ChangeBatch;

use crate::error::{ConnectorError, Result};

/// The envelope of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    Plain,
    Upsert,
    Debezium,
}

/// How a record's bytes encode a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Csv {
        delimiter: u8,
    },
    /// Confluent schema-registry Avro, transcoded to JSON (see [`super::avro`]).
    Avro,
}

/// Kafka metadata a source can expose as columns (`INCLUDE key AS k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaColumn {
    Key,
    Partition,
    Offset,
    Timestamp,
}

impl MetaColumn {
    pub const ALL: [MetaColumn; 4] =
        [MetaColumn::Key, MetaColumn::Partition, MetaColumn::Offset, MetaColumn::Timestamp];

    /// The `WITH` option naming the column (`include.key = 'k'`, what `INCLUDE key AS k` sets).
    pub fn option(self) -> &'static str {
        match self {
            MetaColumn::Key => "include.key",
            MetaColumn::Partition => "include.partition",
            MetaColumn::Offset => "include.offset",
            MetaColumn::Timestamp => "include.timestamp",
        }
    }
}

/// One Kafka record, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

/// A record left out of a batch, and why.
#[derive(Debug, Clone)]
pub struct BadRecord {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// What a batch of records became.
#[derive(Debug)]
pub struct Decoded {
    /// `None` when no record produced a row.
    pub changes: Option<ChangeBatch>,
    pub bad: Vec<BadRecord>,
}

/// The per-record fields kept until the batch is decoded.
struct Pending {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<(usize, usize)>,
    payload: Option<(usize, usize)>,
    /// Avro: the key (tombstones only) and payload transcoded to JSON, what is decoded.
    json_key: Option<(usize, usize)>,
    json_payload: Option<(usize, usize)>,
}

/// Decodes batches of records of one source into its declared columns.
pub struct RecordDecoder {
    envelope: Envelope,
    encoding: Encoding,
    /// The declared physical columns, in order.
    declared: SchemaRef,
    /// For each declared column: `None` for a column decoded from the record, or the Kafka
    /// metadata it holds.
    meta: Vec<Option<MetaColumn>>,
    /// The decoded columns (declared minus metadata), all nullable: deletes carry only keys.
    value_schema: SchemaRef,
    /// Debezium: the envelope schema wrapping `value_schema`.
    envelope_schema: Option<SchemaRef>,
    max_record_bytes: usize,
    bytes: Vec<u8>,
    pending: Vec<Pending>,
    bad: Vec<BadRecord>,
    /// `ENCODE AVRO`: the writer schemas by id.
    registry: Option<super::avro::SchemaRegistry>,
}

fn field_list(schema: &Schema) -> Fields {
    schema.fields().iter().map(|f| Arc::new(f.as_ref().clone().with_nullable(true))).collect()
}

impl RecordDecoder {
    /// # Errors
    /// When a declared column has a type the encoding cannot produce, or metadata columns
    /// have types their values cannot convert to.
    pub fn new(
        envelope: Envelope,
        encoding: Encoding,
        declared: SchemaRef,
        meta: Vec<Option<MetaColumn>>,
        max_record_bytes: usize,
    ) -> Result<Self> {
        let value_fields: Vec<Field> = declared
            .fields()
            .iter()
            .zip(&meta)
            .filter(|(_, m)| m.is_none())
            .map(|(f, _)| f.as_ref().clone().with_nullable(true))
            .collect();
        if value_fields.is_empty() {
            return Err(ConnectorError::Schema(
                "a Kafka source needs at least one column decoded from the record".into(),
            ));
        }
        let value_schema = Arc::new(Schema::new(value_fields));
        for (f, m) in declared.fields().iter().zip(&meta) {
            let Some(m) = m else { continue };
            let from = meta_type(*m);
            if !arrow::compute::can_cast_types(&from, f.data_type()) {
                return Err(ConnectorError::Schema(format!(
                    "column \"{}\" holds the Kafka {m:?} and cannot be {}",
                    f.name(),
                    f.data_type()
                )));
            }
        }
        let envelope_schema = (envelope == Envelope::Debezium).then(|| {
            let row = DataType::Struct(field_list(&value_schema));
            let inner = Fields::from(vec![
                Field::new("before", row.clone(), true),
                Field::new("after", row.clone(), true),
                Field::new("op", DataType::Utf8, true),
            ]);
            let mut outer: Vec<Field> = inner.iter().map(|f| f.as_ref().clone()).collect();
            outer.push(Field::new("payload", DataType::Struct(inner), true));
            Arc::new(Schema::new(outer))
        });
        if envelope == Envelope::Debezium && !matches!(encoding, Encoding::Json | Encoding::Avro) {
            return Err(ConnectorError::InvalidOption("FORMAT DEBEZIUM needs ENCODE JSON or AVRO".into()));
        }
        let decoder = Self {
            envelope,
            encoding,
            declared,
            meta,
            value_schema,
            envelope_schema,
            max_record_bytes,
            bytes: Vec::new(),
            pending: Vec::new(),
            bad: Vec::new(),
            registry: None,
        };
        // Building a decoder checks that every column type can be decoded.
        decoder.check_types()?;
        Ok(decoder)
    }

    fn check_types(&self) -> Result<()> {
        let schema = self.envelope_schema.clone().unwrap_or_else(|| self.value_schema.clone());
        match self.encoding {
            Encoding::Json | Encoding::Avro => {
                arrow::json::ReaderBuilder::new(schema).build_decoder().map_err(|e| {
                    ConnectorError::Schema(format!("the declared columns cannot be decoded from JSON: {e}"))
                })?;
            }
            Encoding::Csv { .. } => {
                for f in schema.fields() {
                    if f.data_type().is_nested() {
                        return Err(ConnectorError::Schema(format!(
                            "column \"{}\" of type {} cannot be decoded from CSV",
                            f.name(),
                            f.data_type()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets the schema registry `ENCODE AVRO` reads writer schemas from.
    #[must_use]
    pub fn with_registry(mut self, registry: super::avro::SchemaRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Records buffered and not yet decoded.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn bad_record(&mut self, r: &RecordRef<'_>, reason: String) {
        self.bad.push(BadRecord {
            partition: r.partition,
            offset: r.offset,
            reason,
            key: r.key.map(<[u8]>::to_vec),
            payload: r.payload.map(<[u8]>::to_vec),
        });
    }

    /// Buffers a record for the next [`RecordDecoder::finish`].
    pub fn push(&mut self, r: &RecordRef<'_>) {
        let size = r.key.map_or(0, <[u8]>::len) + r.payload.map_or(0, <[u8]>::len);
        if size > self.max_record_bytes {
            let reason = format!("record of {size} bytes exceeds the limit of {} bytes", self.max_record_bytes);
            self.bad_record(r, reason);
            return;
        }
        match (r.payload, self.envelope) {
            (None, Envelope::Debezium) => return, // the tombstone after a delete
            (None, Envelope::Plain) => {
                self.bad_record(r, "record has no value".into());
                return;
            }
            (None, Envelope::Upsert) if r.key.is_none() => {
                self.bad_record(r, "tombstone without a key".into());
                return;
            }
            _ => {}
        }
        let mut span = |bytes: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(bytes);
            (start, self.bytes.len())
        };
        let key = r.key.map(&mut span);
        let payload = r.payload.map(&mut span);
        let (mut json_key, mut json_payload) = (None, None);
        if let Some(registry) = self.registry.as_mut() {
            // The key is decoded only for tombstones; the value always.
            let (input, slot) = match r.payload {
                Some(p) => (p, &mut json_payload),
                None => (r.key.unwrap_or_default(), &mut json_key),
            };
            let start = self.bytes.len();
            match registry.to_json(input, &mut self.bytes) {
                Ok(()) => *slot = Some((start, self.bytes.len())),
                Err(reason) => {
                    let reason = if r.payload.is_some() { reason } else { format!("record key: {reason}") };
                    self.bytes.truncate(key.or(payload).map_or(self.bytes.len(), |(s, _)| s));
                    self.bad_record(r, reason);
                    return;
                }
            }
        }
        self.pending.push(Pending {
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key,
            payload,
            json_key,
            json_payload,
        });
    }

    /// Decodes every buffered record into one change batch.
    ///
    /// # Errors
    /// Only on internal failures; bad records are reported in [`Decoded::bad`].
    pub fn finish(&mut self) -> Result<Decoded> {
        let pending = std::mem::take(&mut self.pending);
        let bytes = std::mem::take(&mut self.bytes);
        let mut bad = std::mem::take(&mut self.bad);
        let slice = |span: Option<(usize, usize)>| span.map(|(a, b)| &bytes[a..b]);
        // Which input buffer each record's row comes from, in record order.
        let mut values: Vec<&[u8]> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        // (record index, true when decoded from the key)
        let mut sources: Vec<(usize, bool)> = Vec::new();
        for (i, p) in pending.iter().enumerate() {
            match slice(p.json_payload.or(p.payload)) {
                Some(v) => {
                    sources.push((i, false));
                    values.push(v);
                }
                None => {
                    // Only upsert tombstones reach here, and they carry a key.
                    sources.push((i, true));
                    keys.push(slice(p.json_key.or(p.key)).unwrap_or_default());
                }
            }
        }
        let schema = self.envelope_schema.clone().unwrap_or_else(|| self.value_schema.clone());
        // Avro records were transcoded to JSON when pushed.
        let encoding = if self.encoding == Encoding::Avro { Encoding::Json } else { self.encoding };
        let (value_rows, value_ok) = decode_many(encoding, &schema, &values)?;
        let (key_rows, key_ok) = if keys.is_empty() {
            (RecordBatch::new_empty(self.value_schema.clone()), Vec::new())
        } else {
            decode_many(encoding, &self.value_schema, &keys)?
        };
        // Map each record to its row in the decoded batches (bad ones to None).
        let mut value_index = Vec::with_capacity(value_ok.len());
        let mut next = 0;
        for ok in &value_ok {
            value_index.push(ok.as_ref().ok().map(|()| {
                next += 1;
                next - 1
            }));
        }
        let mut key_index = Vec::with_capacity(key_ok.len());
        let mut next = 0;
        for ok in &key_ok {
            key_index.push(ok.as_ref().ok().map(|()| {
                next += 1;
                next - 1
            }));
        }
        // (array number, row) per output row, its weight and its record.
        let mut picks: Vec<(usize, usize)> = Vec::new();
        let mut weights: Vec<i64> = Vec::new();
        let mut records: Vec<u32> = Vec::new();
        let (mut vi, mut ki) = (0usize, 0usize);
        let debezium = match self.envelope {
            Envelope::Debezium => Some(DebeziumRows::new(&value_rows)?),
            _ => None,
        };
        for (record, from_key) in sources {
            let p = &pending[record];
            let (row, error) = if from_key {
                let r = (key_index[ki], key_ok[ki].clone().err());
                ki += 1;
                r
            } else {
                let r = (value_index[vi], value_ok[vi].clone().err());
                vi += 1;
                r
            };
            let Some(row) = row else {
                bad.push(BadRecord {
                    partition: p.partition,
                    offset: p.offset,
                    reason: error.unwrap_or_else(|| "record does not decode".into()),
                    key: slice(p.key).map(<[u8]>::to_vec),
                    payload: slice(p.payload).map(<[u8]>::to_vec),
                });
                continue;
            };
            match (&debezium, from_key) {
                (_, true) => {
                    picks.push((1, row));
                    weights.push(-1);
                    records.push(record as u32);
                }
                (None, false) => {
                    picks.push((0, row));
                    weights.push(1);
                    records.push(record as u32);
                }
                (Some(d), false) => match d.changes(row) {
                    Ok(changes) => {
                        for (array, weight) in changes {
                            picks.push((array, row));
                            weights.push(weight);
                            records.push(record as u32);
                        }
                    }
                    Err(reason) => bad.push(BadRecord {
                        partition: p.partition,
                        offset: p.offset,
                        reason,
                        key: slice(p.key).map(<[u8]>::to_vec),
                        payload: slice(p.payload).map(<[u8]>::to_vec),
                    }),
                },
            }
        }
        if picks.is_empty() {
            return Ok(Decoded { changes: None, bad });
        }
        let sources: Vec<RecordBatch> = match &debezium {
            Some(d) => d.row_batches(&self.value_schema)?,
            None => vec![value_rows, key_rows],
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.value_schema.fields().len());
        for c in 0..self.value_schema.fields().len() {
            let arrays: Vec<&dyn Array> = sources.iter().map(|b| b.column(c).as_ref()).collect();
            columns.push(interleave(&arrays, &picks)?);
        }
        // Rows with a null in a NOT NULL column are bad, except deletes (only keys matter).
        let mut keep = vec![true; weights.len()];
        let mut decoded_columns = columns.into_iter();
        let mut out_columns: Vec<ArrayRef> = Vec::with_capacity(self.declared.fields().len());
        let record_index = UInt32Array::from(records.clone());
        for (f, m) in self.declared.fields().iter().zip(&self.meta) {
            let column = match m {
                None => decoded_columns
                    .next()
                    .ok_or_else(|| ConnectorError::Schema("decoded fewer columns than declared".into()))?,
                Some(m) => {
                    let all = meta_array(*m, &pending, &bytes)?;
                    cast(&take(&all, &record_index, None)?, f.data_type())?
                }
            };
            if !f.is_nullable() && column.null_count() > 0 {
                for (row, keep) in keep.iter_mut().enumerate() {
                    if weights[row] > 0 && column.is_null(row) && *keep {
                        *keep = false;
                        let p = &pending[records[row] as usize];
                        bad.push(BadRecord {
                            partition: p.partition,
                            offset: p.offset,
                            reason: format!("column \"{}\" is NOT NULL but the record has no value for it", f.name()),
                            key: slice(p.key).map(<[u8]>::to_vec),
                            payload: slice(p.payload).map(<[u8]>::to_vec),
                        });
                    }
                }
            }
            out_columns.push(column);
        }
        let weights = Int64Array::from(weights);
        let all_kept = keep.iter().all(|k| *k);
        let mask = arrow::array::BooleanArray::from(keep);
        let mut final_columns = Vec::with_capacity(out_columns.len());
        for (f, column) in self.declared.fields().iter().zip(out_columns) {
            let column = if all_kept { column } else { arrow::compute::filter(&column, &mask)? };
            // Deletes carry only their key: the other values are placeholders.
            let column = if !f.is_nullable() && column.null_count() > 0 { strip_nulls(&column)? } else { column };
            final_columns.push(column);
        }
        let weights = if all_kept {
            weights
        } else {
            arrow::compute::filter(&weights, &mask)?.as_primitive::<arrow::datatypes::Int64Type>().clone()
        };
        if weights.is_empty() {
            return Ok(Decoded { changes: None, bad });
        }
        let data = RecordBatch::try_new(self.declared.clone(), final_columns)?;
        Ok(Decoded { changes: Some(ChangeBatch::try_new(data, weights)?), bad })
    }
}

/// Drops the validity of an array whose nulls only sit where no value is needed.
fn strip_nulls(column: &ArrayRef) -> Result<ArrayRef> {
    let data = column.to_data().into_builder().nulls(None).build()?;
    Ok(make_array(data))
}

fn meta_type(m: MetaColumn) -> DataType {
    match m {
        MetaColumn::Key => DataType::Binary,
        MetaColumn::Partition => DataType::Int32,
        MetaColumn::Offset => DataType::Int64,
        MetaColumn::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
    }
}

fn meta_array(m: MetaColumn, pending: &[Pending], bytes: &[u8]) -> Result<ArrayRef> {
    Ok(match m {
        MetaColumn::Key => {
            let mut b = BinaryBuilder::new();
            for p in pending {
                b.append_option(p.key.map(|(s, e)| &bytes[s..e]));
            }
            Arc::new(b.finish())
        }
        MetaColumn::Partition => {
            let mut b = Int32Builder::new();
            pending.iter().for_each(|p| b.append_value(p.partition));
            Arc::new(b.finish())
        }
        MetaColumn::Offset => {
            let mut b = Int64Builder::new();
            pending.iter().for_each(|p| b.append_value(p.offset));
            Arc::new(b.finish())
        }
        MetaColumn::Timestamp => {
            let mut b = TimestampMillisecondBuilder::new().with_timezone("+00:00");
            pending.iter().for_each(|p| b.append_option(p.timestamp_ms));
            Arc::new(b.finish())
        }
    })
}

/// Decodes one row from each input; returns the rows of the inputs that decoded, in order,
/// and per input `Ok` or why it did not.
fn decode_many(
    encoding: Encoding,
    schema: &SchemaRef,
    inputs: &[&[u8]],
) -> Result<(RecordBatch, Vec<std::result::Result<(), String>>)> {
    if inputs.is_empty() {
        return Ok((RecordBatch::new_empty(schema.clone()), Vec::new()));
    }
    // Fast path: all inputs through one decoder.
    if let Ok(batch) = decode_all(encoding, schema, inputs) {
        return Ok((batch, vec![Ok(()); inputs.len()]));
    }
    // Slow path: one decoder per input, to tell the bad ones apart.
    let mut batches = Vec::new();
    let mut results = Vec::with_capacity(inputs.len());
    for input in inputs {
        match decode_all(encoding, schema, std::slice::from_ref(input)) {
            Ok(b) => {
                batches.push(b);
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    Ok((arrow::compute::concat_batches(schema, &batches)?, results))
}

/// Decodes exactly one row from each input, or fails.
fn decode_all(encoding: Encoding, schema: &SchemaRef, inputs: &[&[u8]]) -> std::result::Result<RecordBatch, String> {
    let batch = match encoding {
        Encoding::Json | Encoding::Avro => {
            let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(inputs.len() + 1)
                .with_coerce_primitive(true)
                .build_decoder()
                .map_err(|e| e.to_string())?;
            for input in inputs {
                let before = decoder.len();
                let used = decoder.decode(input).map_err(|e| format!("invalid JSON: {e}"))?;
                if used != input.len() || decoder.has_partial_record() {
                    return Err("invalid JSON: the record is not one complete JSON object".into());
                }
                if decoder.len() != before + 1 {
                    return Err(format!("expected one JSON object, found {}", decoder.len() - before));
                }
            }
            decoder.flush().map_err(|e| format!("cannot convert the record: {e}"))?
        }
        Encoding::Csv { delimiter } => {
            let mut decoder = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(false)
                .with_delimiter(delimiter)
                .with_batch_size(inputs.len() + 1)
                .build_decoder();
            for input in inputs {
                let before = decoder.capacity();
                let used = decoder.decode(input).map_err(|e| format!("invalid CSV: {e}"))?;
                if used != input.len() {
                    return Err("invalid CSV record".into());
                }
                if !input.ends_with(b"\n") {
                    decoder.decode(b"\n").map_err(|e| format!("invalid CSV: {e}"))?;
                }
                if before != decoder.capacity() + 1 {
                    return Err("expected one CSV line".into());
                }
            }
            decoder.flush().map_err(|e| format!("cannot convert the record: {e}"))?
        }
    };
    let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    if batch.num_rows() != inputs.len() {
        return Err(format!("expected {} rows, decoded {}", inputs.len(), batch.num_rows()));
    }
    Ok(batch)
}

/// The decoded Debezium envelopes of a batch.
struct DebeziumRows {
    /// `before`, `after` at the top level and inside `payload`.
    rows: [StructArray; 4],
    ops: [StringArray; 2],
    payload: StructArray,
}

impl DebeziumRows {
    fn new(batch: &RecordBatch) -> Result<Self> {
        let s = |a: &ArrayRef| a.as_struct().clone();
        let payload = s(batch.column(3));
        Ok(Self {
            rows: [s(batch.column(0)), s(batch.column(1)), s(payload.column(0)), s(payload.column(1))],
            ops: [batch.column(2).as_string::<i32>().clone(), payload.column(2).as_string::<i32>().clone()],
            payload,
        })
    }

    /// The rows a change envelope stands for: (array number into
    /// [`DebeziumRows::row_batches`], weight).
    fn changes(&self, row: usize) -> std::result::Result<Vec<(usize, i64)>, String> {
        let wrapped = self.payload.is_valid(row);
        let (ops, before, after) = if wrapped { (&self.ops[1], 2, 3) } else { (&self.ops[0], 0, 1) };
        let has = |array: usize| self.rows[array].is_valid(row);
        if !ops.is_valid(row) {
            return Err("Debezium envelope has no \"op\"".into());
        }
        match ops.value(row) {
            "c" | "r" if has(after) => Ok(vec![(after, 1)]),
            "u" if has(after) => Ok(if has(before) { vec![(before, -1), (after, 1)] } else { vec![(after, 1)] }),
            "d" if has(before) => Ok(vec![(before, -1)]),
            "c" | "r" | "u" => Err("Debezium envelope has no \"after\"".into()),
            "d" => Err("Debezium delete has no \"before\"".into()),
            other => Err(format!("unknown Debezium op \"{other}\"")),
        }
    }

    fn row_batches(&self, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        self.rows.iter().map(|s| Ok(RecordBatch::try_new(schema.clone(), s.columns().to_vec())?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]))
    }

    fn record<'a>(offset: i64, key: Option<&'a str>, payload: Option<&'a str>) -> RecordRef<'a> {
        RecordRef {
            key: key.map(str::as_bytes),
            payload: payload.map(str::as_bytes),
            partition: 0,
            offset,
            timestamp_ms: Some(1000 + offset),
        }
    }

    #[test]
    fn plain_json_skips_bad_records() -> Result<()> {
        let mut d = RecordDecoder::new(Envelope::Plain, Encoding::Json, schema(), vec![None, None], 1 << 20)?;
        for (i, p) in ["{\"id\":1,\"name\":\"a\"}", "{\"id\":", "{\"id\":\"x\"}", "{\"name\":\"no id\"}", "{\"id\":2}"]
            .iter()
            .enumerate()
        {
            d.push(&record(i as i64, None, Some(p)));
        }
        let out = d.finish()?;
        let changes = out.changes.ok_or_else(|| ConnectorError::Schema("no rows".into()))?;
        assert_eq!(changes.to_pretty(), "+ 1 a\n+ 2 null\n");
        let offsets: Vec<i64> = out.bad.iter().map(|b| b.offset).collect();
        assert_eq!(offsets, vec![1, 2, 3]);
        Ok(())
    }

    #[test]
    fn upsert_and_debezium_envelopes() -> Result<()> {
        let mut d = RecordDecoder::new(Envelope::Upsert, Encoding::Json, schema(), vec![None, None], 1 << 20)?;
        d.push(&record(0, Some("{\"id\":1}"), Some("{\"id\":1,\"name\":\"a\"}")));
        d.push(&record(1, Some("{\"id\":1}"), None));
        d.push(&record(2, Some("{\"id\":2}"), Some("{\"id\":2,\"name\":\"b\"}")));
        let changes = d.finish()?.changes.ok_or_else(|| ConnectorError::Schema("no rows".into()))?;
        assert_eq!(changes.to_pretty(), "+ 1 a\n- 1 null\n+ 2 b\n");

        let mut d = RecordDecoder::new(Envelope::Debezium, Encoding::Json, schema(), vec![None, None], 1 << 20)?;
        d.push(&record(0, None, Some(r#"{"before":null,"after":{"id":1,"name":"a"},"op":"c"}"#)));
        d.push(&record(
            1,
            None,
            Some(r#"{"schema":{},"payload":{"before":{"id":1,"name":"a"},"after":{"id":1,"name":"b"},"op":"u"}}"#),
        ));
        d.push(&record(2, None, Some(r#"{"before":{"id":1,"name":"b"},"after":null,"op":"d"}"#)));
        d.push(&record(3, None, None));
        d.push(&record(4, None, Some(r#"{"before":null,"after":null,"op":"c"}"#)));
        let out = d.finish()?;
        let changes = out.changes.ok_or_else(|| ConnectorError::Schema("no rows".into()))?;
        assert_eq!(changes.to_pretty(), "+ 1 a\n- 1 a\n+ 1 b\n- 1 b\n");
        assert_eq!(out.bad.len(), 1);
        Ok(())
    }

    #[test]
    fn csv_and_metadata_columns() -> Result<()> {
        let declared = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("p", DataType::Int32, true),
            Field::new("o", DataType::Int64, true),
        ]));
        let meta = vec![None, None, Some(MetaColumn::Partition), Some(MetaColumn::Offset)];
        let mut d = RecordDecoder::new(Envelope::Plain, Encoding::Csv { delimiter: b',' }, declared, meta, 1 << 20)?;
        d.push(&record(7, None, Some("1,a")));
        d.push(&record(8, None, Some("x,b\n")));
        d.push(&record(9, None, Some("2,\"c,d\"\n")));
        let out = d.finish()?;
        let changes = out.changes.ok_or_else(|| ConnectorError::Schema("no rows".into()))?;
        assert_eq!(changes.to_pretty(), "+ 1 a 0 7\n+ 2 c,d 0 9\n");
        assert_eq!(out.bad.len(), 1);
        Ok(())
    }
}
