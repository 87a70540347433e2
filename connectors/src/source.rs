//! The source contract and the registry of source connectors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use async_trait::async_trait;
use eddy_common::ChangeBatch;

use crate::datagen::{DatagenConfig, DatagenGenerator};
use crate::error::{ConnectorError, Result};
use crate::nexmark::{DEFAULT_BASE_TIME_MS, DEFAULT_INTER_EVENT_US, NexmarkConfig, NexmarkGenerator, TableType};

/// A source as declared: connector name, `WITH` options and `FORMAT`.
#[derive(Debug, Clone, Default)]
pub struct SourceSpec {
    pub connector: String,
    pub options: HashMap<String, String>,
    /// `FORMAT ... ENCODE ... (options)`, for connectors that carry encoded records.
    pub format: Option<SourceFormat>,
    /// How many splits read the source: fixed when the source is created (positions and
    /// plans depend on it), one for a table; `None` while validating a new source lets the
    /// connector choose.
    pub splits: Option<usize>,
}

/// `FORMAT <format> ENCODE <encode> (options)`.
#[derive(Debug, Clone, Default)]
pub struct SourceFormat {
    pub format: String,
    pub encode: String,
    pub options: HashMap<String, String>,
}

fn refuse_format(spec: &SourceSpec) -> Result<()> {
    match &spec.format {
        Some(_) => Err(ConnectorError::InvalidOption(format!(
            "connector {} produces typed columns directly; leave out FORMAT ... ENCODE ...",
            spec.connector
        ))),
        None => Ok(()),
    }
}

/// Reads one split of a source.
///
/// # Changes
/// A chunk is a [`ChangeBatch`] in the declared physical columns. Append-only sources send
/// weight `+1` rows only. Sources that feed a table with a primary key (upsert, Debezium,
/// CDC) may also send weight `-1` rows: a delete of the row with that key, where only the key
/// columns need values. A `+1` row for a key the table already holds replaces that row; the
/// table turns both into exact `-old, +new` changes, so readers never need the old row.
///
/// # Fault tolerance
/// [`SourceReader::position`] is opaque bytes, stored with every checkpoint; a reader created
/// with it continues with exactly the next change. Once the checkpoint holding a position is
/// durable, [`SourceReader::checkpoint_committed`] says so: only then may the reader let the
/// upstream forget what precedes it (acknowledge a replication slot's LSN, commit a Kafka
/// consumer group's offset for monitoring).
///
/// # Cancellation
/// `next_chunk` may be dropped before it completes (the actor stops waiting to handle a
/// barrier); implementations must not lose or skip rows when that happens.
#[async_trait]
pub trait SourceReader: Send {
    /// The next changes; `None` once a bounded source is exhausted.
    async fn next_chunk(&mut self) -> Result<Option<ChangeBatch>>;
    /// Where this split stands; passing it to [`create_reader`] resumes right after the last
    /// change returned.
    fn position(&self) -> Vec<u8>;
    /// The checkpoint that stored `position` (an earlier result of [`SourceReader::position`])
    /// is durable.
    fn checkpoint_committed(&mut self, _position: &[u8]) {}
}

/// What [`validate_source`] learned about a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// How many splits read the source in parallel.
    pub splits: usize,
    /// True when the source may send deletes and replacements by key (it needs a table with
    /// a primary key).
    pub keyed_changes: bool,
}

/// Counters of one source split, shown in `eddy_catalog.source_splits`.
#[derive(Debug, Default)]
pub struct SourceStats {
    rows: AtomicU64,
    bad_records: AtomicU64,
    finished: AtomicBool,
    last_error: parking_lot::Mutex<Option<String>>,
}

impl SourceStats {
    pub fn add_rows(&self, n: u64) {
        self.rows.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a record that could not be decoded and was skipped; `error` says which record
    /// (topic/partition/offset, LSN...) and why, and is logged.
    pub fn bad_record(&self, error: String) {
        tracing::warn!(%error, "skipping a source record that cannot be decoded");
        self.bad_records.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn bad_records(&self) -> u64 {
        self.bad_records.load(Ordering::Relaxed)
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

/// A position made of one counter (generators: the next event number).
pub fn counter_position(n: u64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

/// Reads a [`counter_position`].
///
/// # Errors
/// When the bytes are not one.
pub fn parse_counter_position(bytes: &[u8]) -> Result<u64> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| ConnectorError::InvalidOption(format!("corrupt source position ({} bytes)", bytes.len())))?;
    Ok(u64::from_le_bytes(array))
}

const NEXMARK_OPTIONS: &[&str] = &[
    "connector",
    "nexmark.table.type",
    "nexmark.split.num",
    "nexmark.min.event.gap.in.ns",
    "nexmark.event.num",
    "nexmark.max.chunk.size",
    "nexmark.base.time",
    "nexmark.inter.event.us",
];

fn parse_u64(options: &HashMap<String, String>, key: &str) -> Result<Option<u64>> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ConnectorError::InvalidOption(format!("{key} = '{v}' is not a non-negative integer"))),
    }
}

fn check_known(options: &HashMap<String, String>, valid: &[&str], prefixes: &[&str], connector: &str) -> Result<()> {
    for key in options.keys() {
        if valid.contains(&key.as_str()) || prefixes.iter().any(|p| key.starts_with(p)) {
            continue;
        }
        let mut list: Vec<String> = valid.iter().map(|s| s.to_string()).collect();
        list.extend(prefixes.iter().map(|p| format!("{p}<column>.*")));
        return Err(ConnectorError::InvalidOption(format!(
            "unknown option \"{key}\" for connector {connector}; valid options: {}",
            list.join(", ")
        )));
    }
    Ok(())
}

/// Checks a source's options against the declared physical columns (and, for external
/// systems, that the system answers), and says how it is read.
///
/// # Errors
/// Unknown connector or option, bad values, declared columns the connector cannot produce,
/// an external system that cannot be reached.
pub async fn validate_source(spec: &SourceSpec, declared: &Schema) -> Result<SourceInfo> {
    match spec.connector.as_str() {
        "nexmark" => {
            refuse_format(spec)?;
            check_known(&spec.options, NEXMARK_OPTIONS, &[], "nexmark")?;
            let config = nexmark_config(spec, 0)?;
            let produced = crate::nexmark::schema(config.table);
            conform_schema(&produced, declared)?;
            Ok(SourceInfo { splits: config.splits as usize, keyed_changes: false })
        }
        "datagen" => {
            refuse_format(spec)?;
            let config = DatagenConfig::parse(&spec.options, declared)?;
            Ok(SourceInfo { splits: config.splits, keyed_changes: false })
        }
        "postgres-cdc" => {
            let config = crate::cdc::postgres::PgCdcConfig::parse(&spec.options)?;
            crate::cdc::postgres::validate(&config, declared).await?;
            Ok(SourceInfo { splits: 1, keyed_changes: true })
        }
        "mysql-cdc" => {
            refuse_format(spec)?;
            let config = crate::cdc::mysql::MyCdcConfig::parse(&spec.options)?;
            crate::cdc::mysql::validate(&config, declared).await?;
            Ok(SourceInfo { splits: 1, keyed_changes: true })
        }
        "kafka" => crate::kafka::validate(spec, declared).await,
        "" => Err(ConnectorError::InvalidOption("WITH (...) needs connector = '<name>'".into())),
        other => Err(ConnectorError::UnknownConnector(other.to_string())),
    }
}

/// True for connectors that read an external system (which may be down while Eddy restarts).
pub fn is_external(connector: &str) -> bool {
    matches!(connector, "postgres-cdc" | "mysql-cdc")
}

/// The options of a table read from a shared source (`CREATE TABLE t (...) FROM source TABLE
/// 'name'`).
///
/// # Errors
/// When the source's connector has no tables, or the source names a table itself.
pub fn table_from_source(spec: &SourceSpec, table: &str) -> Result<HashMap<String, String>> {
    match spec.connector.as_str() {
        "postgres-cdc" => {
            if spec.options.contains_key("table.name") {
                return Err(ConnectorError::InvalidOption(
                    "this postgres-cdc source already names a table.name; create it without one to share it between tables"
                        .into(),
                ));
            }
            Ok(crate::cdc::postgres::PgCdcConfig::table_options(&spec.options, table))
        }
        "mysql-cdc" => {
            if spec.options.contains_key("table.name") {
                return Err(ConnectorError::InvalidOption(
                    "this mysql-cdc source already names a table.name; create it without one to share it between tables"
                        .into(),
                ));
            }
            Ok(crate::cdc::mysql::MyCdcConfig::table_options(&spec.options, table))
        }
        other => Err(ConnectorError::InvalidOption(format!(
            "connector \"{other}\" has no upstream tables; FROM source TABLE '...' works with postgres-cdc and mysql-cdc sources"
        ))),
    }
}

/// The replication slot a CDC table reads, as `host:port/database/slot`: tables with the same
/// one share it.
pub fn upstream_slot(spec: &SourceSpec) -> Option<String> {
    match spec.connector.as_str() {
        "postgres-cdc" => {
            let config = crate::cdc::postgres::PgCdcConfig::parse(&spec.options).ok()?;
            config.table.as_ref()?;
            Some(config.slot_identity())
        }
        _ => None,
    }
}

/// Releases what a source holds upstream once its table or source is dropped (a replication
/// slot retains WAL until it is dropped); `slot_still_used` when other tables read the same
/// slot (see [`upstream_slot`]), which then stays.
///
/// # Errors
/// When upstream cannot be reached; the message says what to drop by hand.
pub async fn drop_source(spec: &SourceSpec, slot_still_used: bool) -> Result<()> {
    match spec.connector.as_str() {
        "postgres-cdc" => {
            let config = crate::cdc::postgres::PgCdcConfig::parse(&spec.options)?;
            if config.table.is_none() {
                return Ok(());
            }
            crate::cdc::postgres::drop_upstream(&config, slot_still_used).await
        }
        _ => Ok(()),
    }
}

fn nexmark_config(spec: &SourceSpec, split: u64) -> Result<NexmarkConfig> {
    let o = &spec.options;
    let table = TableType::parse(o.get("nexmark.table.type").map(String::as_str))?;
    let splits = parse_u64(o, "nexmark.split.num")?.unwrap_or(1);
    if splits == 0 {
        return Err(ConnectorError::InvalidOption("nexmark.split.num must be at least 1".into()));
    }
    let max_chunk_size = parse_u64(o, "nexmark.max.chunk.size")?.unwrap_or(1024);
    if max_chunk_size == 0 {
        return Err(ConnectorError::InvalidOption("nexmark.max.chunk.size must be at least 1".into()));
    }
    let base_time_ms = parse_u64(o, "nexmark.base.time")?.map(|v| v as i64).unwrap_or(DEFAULT_BASE_TIME_MS);
    let inter_event_us = parse_u64(o, "nexmark.inter.event.us")?.map(|v| v as f64).unwrap_or(DEFAULT_INTER_EVENT_US);
    Ok(NexmarkConfig {
        table,
        split,
        splits,
        event_num: parse_u64(o, "nexmark.event.num")?,
        max_chunk_size: max_chunk_size as usize,
        base_time_ms,
        inter_event_us,
    })
}

/// Column indices of `produced` for each declared column, checking that types convert.
fn conform_schema(produced: &Schema, declared: &Schema) -> Result<Vec<usize>> {
    declared
        .fields()
        .iter()
        .map(|f| {
            let idx = produced.index_of(f.name()).map_err(|_| {
                let names: Vec<&str> = produced.fields().iter().map(|f| f.name().as_str()).collect();
                ConnectorError::Schema(format!(
                    "the source has no column \"{}\"; it provides: {}",
                    f.name(),
                    names.join(", ")
                ))
            })?;
            let from = produced.field(idx).data_type();
            if !arrow::compute::can_cast_types(from, f.data_type()) {
                return Err(ConnectorError::Schema(format!(
                    "column \"{}\" is {from} in the source and cannot be read as {}",
                    f.name(),
                    f.data_type()
                )));
            }
            Ok(idx)
        })
        .collect()
}

/// Rearranges and casts produced rows into the declared columns.
pub(crate) struct Conformer {
    indices: Vec<usize>,
    declared: SchemaRef,
}

impl Conformer {
    fn new(produced: &Schema, declared: SchemaRef) -> Result<Self> {
        Ok(Self { indices: conform_schema(produced, &declared)?, declared })
    }

    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let options = CastOptions { safe: false, ..Default::default() };
        let columns = self
            .indices
            .iter()
            .zip(self.declared.fields())
            .map(|(i, f)| {
                let c = batch.column(*i);
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast_with_options(c, f.data_type(), &options)
                }
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.declared.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?)
    }
}

/// Spaces out chunks so a source produces at most `rows_per_sec` rows per second.
pub(crate) struct Pacer {
    interval_per_row: Option<Duration>,
    next: Instant,
}

impl Pacer {
    pub(crate) fn new(rows_per_sec: Option<f64>) -> Self {
        let interval_per_row = rows_per_sec.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
        Self { interval_per_row, next: Instant::now() }
    }

    /// Waits until `rows` more rows may be produced. Cancel-safe: nothing is consumed until
    /// [`Pacer::consumed`].
    pub(crate) async fn wait(&self) {
        if self.interval_per_row.is_some() {
            tokio::time::sleep_until(self.next.into()).await;
        }
    }

    pub(crate) fn consumed(&mut self, rows: usize) {
        if let Some(i) = self.interval_per_row {
            let now = Instant::now();
            // Do not bank idle time: a source that was blocked does not then burst.
            let base = if self.next < now { now } else { self.next };
            self.next = base + i * rows as u32;
        }
    }
}

struct NexmarkReader {
    generator: NexmarkGenerator,
    conformer: Conformer,
    pacer: Pacer,
}

#[async_trait]
impl SourceReader for NexmarkReader {
    async fn next_chunk(&mut self) -> Result<Option<ChangeBatch>> {
        self.pacer.wait().await;
        let Some(batch) = self.generator.next_chunk() else { return Ok(None) };
        self.pacer.consumed(batch.num_rows());
        Ok(Some(ChangeBatch::inserts(self.conformer.apply(batch)?)))
    }

    fn position(&self) -> Vec<u8> {
        counter_position(self.generator.position())
    }
}

struct DatagenReader {
    generator: DatagenGenerator,
    pacer: Pacer,
}

#[async_trait]
impl SourceReader for DatagenReader {
    async fn next_chunk(&mut self) -> Result<Option<ChangeBatch>> {
        self.pacer.wait().await;
        let Some(batch) = self.generator.next_chunk()? else { return Ok(None) };
        self.pacer.consumed(batch.num_rows());
        Ok(Some(ChangeBatch::inserts(batch)))
    }

    fn position(&self) -> Vec<u8> {
        counter_position(self.generator.position())
    }
}

/// Opens split `split` of a source, producing the declared physical columns, resuming at
/// `position` when given. Readers of external systems connect on their first
/// [`SourceReader::next_chunk`], so building a graph never blocks; `stats` counts what the
/// split reads and skips.
///
/// # Errors
/// As [`validate_source`], and a `position` the connector cannot read.
pub fn create_reader(
    spec: &SourceSpec,
    declared: SchemaRef,
    split: usize,
    position: Option<&[u8]>,
    stats: Arc<SourceStats>,
) -> Result<Box<dyn SourceReader>> {
    let position_bytes = position;
    if spec.connector == "kafka" {
        let options = crate::kafka::KafkaOptions::parse(&spec.options, spec.format.as_ref())?;
        let splits = spec.splits.unwrap_or(1);
        return Ok(Box::new(crate::kafka::KafkaReader::new(options, declared, split, splits, position, stats)?));
    }
    let position = match (spec.connector.as_str(), position) {
        ("nexmark" | "datagen", Some(p)) => Some(parse_counter_position(p)?),
        _ => None,
    };
    match spec.connector.as_str() {
        "nexmark" => {
            let config = nexmark_config(spec, split as u64)?;
            let gap_ns = parse_u64(&spec.options, "nexmark.min.event.gap.in.ns")?.unwrap_or(100_000);
            let rate = if gap_ns == 0 { None } else { Some(1e9 / gap_ns as f64) };
            let mut generator = NexmarkGenerator::new(config);
            if let Some(p) = position {
                generator.seek(p);
            }
            let conformer = Conformer::new(&generator.schema(), declared)?;
            Ok(Box::new(NexmarkReader { generator, conformer, pacer: Pacer::new(rate) }))
        }
        "postgres-cdc" => {
            let config = crate::cdc::postgres::PgCdcConfig::parse(&spec.options)?;
            Ok(Box::new(crate::cdc::postgres::PgCdcReader::new(config, declared, position_bytes, stats)?))
        }
        "mysql-cdc" => {
            let config = crate::cdc::mysql::MyCdcConfig::parse(&spec.options)?;
            Ok(Box::new(crate::cdc::mysql::MyCdcReader::new(config, declared, position_bytes, stats)?))
        }
        "datagen" => {
            let config = DatagenConfig::parse(&spec.options, &declared)?;
            let rate = config.rows_per_second.map(|r| r / config.splits as f64);
            let mut generator = DatagenGenerator::new(config, declared, split);
            if let Some(p) = position {
                generator.seek(p);
            }
            Ok(Box::new(DatagenReader { generator, pacer: Pacer::new(rate) }))
        }
        other => Err(ConnectorError::UnknownConnector(other.to_string())),
    }
}

/// How long a split may receive nothing before its watermark follows the source's other
/// splits (see the executor's watermark filter); `None` when splits never go idle (the
/// generators) or the user turned it off (`scan.watermark.idle.timeout.ms = 0`).
pub fn idle_timeout(spec: &SourceSpec) -> Option<Duration> {
    match spec.connector.as_str() {
        "kafka" => {
            let ms = match spec.options.get(crate::kafka::IDLE_TIMEOUT_OPTION) {
                Some(v) => v.trim().parse::<u64>().ok()?,
                None => crate::kafka::DEFAULT_IDLE_TIMEOUT_MS,
            };
            (ms > 0).then(|| Duration::from_millis(ms))
        }
        _ => None,
    }
}

/// True when values of `t` can be produced by the datagen connector.
pub fn datagen_supports(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::Boolean
            | DataType::Timestamp(_, _)
            | DataType::Decimal128(_, _)
    )
}
