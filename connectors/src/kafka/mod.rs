//! The `kafka` source connector.
//!
//! Every partition of the topic is read by exactly one split: split `s` of `n` reads the
//! partitions `p` with `p % n == s`, where `n` is fixed when the source is created (the
//! topic's partition count then, or one for a table). Partitions are *assigned*, never
//! subscribed: there is no consumer-group rebalancing, and partitions added to the topic later
//! are picked up by the split they map to (read from their beginning).
//!
//! # Positions and exactly-once
//! A split's position is the next offset of each of its partitions after the last record it
//! returned. Eddy stores it with every checkpoint, in the same transaction as the state of
//! the views the records went into, so after a crash the split seeks to exactly the first
//! record that checkpoint did not contain: every record counts once in every view. Offsets are
//! not committed to Kafka for recovery; with `properties.group.id` set, durable positions are
//! committed to that group for monitoring only.
//!
//! # Reading
//! A dedicated thread per split polls librdkafka (`BaseConsumer`) and decodes records a batch
//! at a time (up to [`MAX_BATCH_RECORDS`], or what arrived within a few milliseconds) into a
//! change batch; the reader hands the batches to the actor. Bad records are counted in
//! `eddy_catalog.source_splits`, logged with topic/partition/offset, optionally copied to
//! `dead_letter.topic`, and skipped.

pub mod avro;
pub mod avro_sink;
pub mod decode;
mod reader;
pub mod sink;

use std::collections::HashMap;
use std::time::Duration;

use arrow::datatypes::Schema;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub use decode::{Encoding, Envelope, MetaColumn, RecordDecoder};
pub use reader::KafkaReader;

use crate::error::{ConnectorError, Result};
use crate::source::{SourceFormat, SourceInfo, SourceSpec};

/// How long a partition may receive nothing before its watermark follows the other
/// partitions' (milliseconds; 0 turns it off).
pub const IDLE_TIMEOUT_OPTION: &str = "scan.watermark.idle.timeout.ms";
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 5000;

/// The most records decoded into one batch.
pub const MAX_BATCH_RECORDS: usize = 8192;

const OPTIONS: &[&str] = &[
    "connector",
    "topic",
    "properties.bootstrap.server",
    "properties.bootstrap.servers",
    "scan.startup.mode",
    "scan.startup.timestamp.millis",
    "scan.startup.timestamp_millis",
    "dead_letter.topic",
    "record.max.bytes",
    IDLE_TIMEOUT_OPTION,
    "include.key",
    "include.partition",
    "include.offset",
    "include.timestamp",
];

/// Where a partition without a stored position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupMode {
    Earliest,
    Latest,
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// The options of a Kafka source, checked.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    pub topic: String,
    pub bootstrap: String,
    pub startup: StartupMode,
    /// `properties.*` options other than the bootstrap servers, passed to librdkafka.
    pub properties: Vec<(String, String)>,
    pub dead_letter_topic: Option<String>,
    pub max_record_bytes: usize,
    pub envelope: Envelope,
    pub encoding: Encoding,
    /// `ENCODE AVRO (schema.registry = '...')`: the registry URL(s).
    pub schema_registry: Option<String>,
    /// Column name → the Kafka metadata it holds.
    pub meta: HashMap<String, MetaColumn>,
}

fn invalid(message: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidOption(message.into())
}

impl KafkaOptions {
    /// # Errors
    /// Unknown or missing options, bad values, an unsupported format.
    pub fn parse(options: &HashMap<String, String>, format: Option<&SourceFormat>) -> Result<Self> {
        for key in options.keys() {
            if !OPTIONS.contains(&key.as_str()) && !key.starts_with("properties.") {
                return Err(invalid(format!(
                    "unknown option \"{key}\" for connector kafka; valid options: {}, properties.<librdkafka setting>",
                    OPTIONS.join(", ")
                )));
            }
        }
        let topic = options.get("topic").cloned().ok_or_else(|| invalid("connector kafka needs topic = '...'"))?;
        let bootstrap = options
            .get("properties.bootstrap.server")
            .or_else(|| options.get("properties.bootstrap.servers"))
            .cloned()
            .ok_or_else(|| invalid("connector kafka needs properties.bootstrap.server = 'host:port'"))?;
        let timestamp =
            options.get("scan.startup.timestamp.millis").or_else(|| options.get("scan.startup.timestamp_millis"));
        let startup = match options.get("scan.startup.mode").map(|m| m.to_ascii_lowercase()).as_deref() {
            None if timestamp.is_some() => StartupMode::Timestamp(0),
            None | Some("earliest") => StartupMode::Earliest,
            Some("latest") => StartupMode::Latest,
            Some("timestamp") => StartupMode::Timestamp(0),
            Some(other) => {
                return Err(invalid(format!("scan.startup.mode = '{other}': expected earliest, latest or timestamp")));
            }
        };
        let startup = match (startup, timestamp) {
            (StartupMode::Timestamp(_), Some(t)) => StartupMode::Timestamp(
                t.trim()
                    .parse()
                    .map_err(|_| invalid(format!("scan.startup.timestamp.millis = '{t}' is not a number")))?,
            ),
            (StartupMode::Timestamp(_), None) => {
                return Err(invalid("scan.startup.mode = 'timestamp' needs scan.startup.timestamp.millis"));
            }
            (mode, _) => mode,
        };
        let properties = options
            .iter()
            .filter(|(k, _)| k.starts_with("properties.") && !k.starts_with("properties.bootstrap.server"))
            .map(|(k, v)| (k["properties.".len()..].to_string(), v.clone()))
            .collect();
        let max_record_bytes = match options.get("record.max.bytes") {
            None => 8 << 20,
            Some(v) => v.trim().parse().map_err(|_| invalid(format!("record.max.bytes = '{v}' is not a number")))?,
        };
        let format = format.ok_or_else(|| {
            invalid("connector kafka needs FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON | CSV | AVRO after WITH (...)")
        })?;
        let envelope = match format.format.to_ascii_uppercase().as_str() {
            "PLAIN" => Envelope::Plain,
            "UPSERT" => Envelope::Upsert,
            "DEBEZIUM" => Envelope::Debezium,
            other => return Err(invalid(format!("FORMAT {other}: expected PLAIN, UPSERT or DEBEZIUM"))),
        };
        let encoding = match format.encode.to_ascii_uppercase().as_str() {
            "JSON" => Encoding::Json,
            "CSV" => {
                let delimiter = match format.options.get("delimiter").map(String::as_bytes) {
                    None => b',',
                    Some([d]) => *d,
                    Some(_) => return Err(invalid("ENCODE CSV (delimiter = '...') takes one character")),
                };
                Encoding::Csv { delimiter }
            }
            "AVRO" => Encoding::Avro,
            other => return Err(invalid(format!("ENCODE {other}: expected JSON, CSV or AVRO"))),
        };
        for key in format.options.keys() {
            let known = match encoding {
                Encoding::Csv { .. } => key == "delimiter",
                Encoding::Avro => key == "schema.registry",
                Encoding::Json => false,
            };
            if !known {
                return Err(invalid(format!("unknown ENCODE option \"{key}\"")));
            }
        }
        let schema_registry = format.options.get("schema.registry").cloned();
        if encoding == Encoding::Avro {
            let url = schema_registry
                .as_deref()
                .ok_or_else(|| invalid("ENCODE AVRO needs (schema.registry = 'http://host:port')"))?;
            avro::SchemaRegistry::new(url).map_err(invalid)?;
        }
        let mut meta = HashMap::new();
        for m in MetaColumn::ALL {
            if let Some(column) = options.get(m.option()) {
                meta.insert(column.clone(), m);
            }
        }
        Ok(Self {
            topic,
            bootstrap,
            startup,
            properties,
            dead_letter_topic: options.get("dead_letter.topic").cloned(),
            max_record_bytes,
            envelope,
            encoding,
            schema_registry,
            meta,
        })
    }

    /// librdkafka settings shared by the consumers and producers of this source.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// The decoder of the declared columns.
    ///
    /// # Errors
    /// When a column cannot be produced by the format.
    pub fn decoder(&self, declared: arrow::datatypes::SchemaRef) -> Result<RecordDecoder> {
        let meta = declared.fields().iter().map(|f| self.meta.get(f.name()).copied()).collect();
        for column in self.meta.keys() {
            if declared.index_of(column).is_err() {
                return Err(ConnectorError::Schema(format!(
                    "INCLUDE names column \"{column}\", which is not declared"
                )));
            }
        }
        let decoder = RecordDecoder::new(self.envelope, self.encoding, declared, meta, self.max_record_bytes)?;
        Ok(match &self.schema_registry {
            Some(url) => decoder.with_registry(avro::SchemaRegistry::new(url).map_err(invalid)?),
            None => decoder,
        })
    }
}

/// How long CREATE waits for the broker to answer.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The partition count of the topic.
///
/// # Errors
/// When the broker cannot be reached, or the topic does not exist or has no partitions.
pub fn partition_count(options: &KafkaOptions, timeout: Duration) -> Result<usize> {
    let consumer: BaseConsumer =
        options.client_config().create().map_err(|e| invalid(format!("invalid Kafka client settings: {e}")))?;
    partition_count_with(&consumer, options, timeout)
}

/// [`partition_count`] through an existing client.
///
/// # Errors
/// As [`partition_count`].
pub(crate) fn partition_count_with(
    consumer: &BaseConsumer,
    options: &KafkaOptions,
    timeout: Duration,
) -> Result<usize> {
    let metadata = consumer.fetch_metadata(Some(&options.topic), timeout).map_err(|e| {
        ConnectorError::External(format!(
            "cannot reach the Kafka broker at {} to read topic \"{}\": {e}",
            options.bootstrap, options.topic
        ))
    })?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == options.topic)
        .ok_or_else(|| ConnectorError::External(format!("Kafka topic \"{}\" does not exist", options.topic)))?;
    if let Some(e) = topic.error() {
        let e = rdkafka::error::RDKafkaErrorCode::from(e);
        return Err(ConnectorError::External(format!(
            "Kafka topic \"{}\" at {} is not available: {e}",
            options.topic, options.bootstrap
        )));
    }
    if topic.partitions().is_empty() {
        return Err(ConnectorError::External(format!("Kafka topic \"{}\" has no partitions", options.topic)));
    }
    Ok(topic.partitions().len())
}

/// Checks a Kafka source: options, format against the declared columns, and that the topic
/// exists on a reachable broker.
///
/// # Errors
/// See [`KafkaOptions::parse`], [`KafkaOptions::decoder`] and [`partition_count`].
pub async fn validate(spec: &SourceSpec, declared: &Schema) -> Result<SourceInfo> {
    let options = KafkaOptions::parse(&spec.options, spec.format.as_ref())?;
    options.decoder(std::sync::Arc::new(declared.clone()))?;
    let probe = options.clone();
    let partitions = tokio::task::spawn_blocking(move || partition_count(&probe, METADATA_TIMEOUT))
        .await
        .map_err(|e| ConnectorError::External(format!("Kafka metadata request failed: {e}")))??;
    Ok(SourceInfo {
        splits: spec.splits.unwrap_or(partitions).max(1),
        keyed_changes: options.envelope != Envelope::Plain,
    })
}
