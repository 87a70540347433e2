//! One split of a Kafka source: a polling thread and the reader the actor awaits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use eddy_common::ChangeBatch;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{KafkaOptions, MAX_BATCH_RECORDS, StartupMode};
use crate::error::{ConnectorError, Result};
use crate::kafka::decode::RecordRef;
use crate::source::{SourceReader, SourceStats};

/// How long the thread waits for more records before handing over a partial batch.
const LINGER: Duration = Duration::from_millis(5);
/// How often the split looks for partitions added to the topic.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// Batches decoded ahead of the actor.
const READ_AHEAD: usize = 4;

/// What the polling thread hands over: the changes of a batch (if any record produced a row)
/// and the next offset of each partition after it.
struct Fetched {
    changes: Option<ChangeBatch>,
    next_offsets: Vec<(i32, i64)>,
}

/// Encodes a split's position: per partition, the offset of the next record to read.
fn encode_position(offsets: &BTreeMap<i32, i64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + offsets.len() * 12);
    out.push(1u8);
    for (p, o) in offsets {
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&o.to_le_bytes());
    }
    out
}

fn decode_position(bytes: &[u8]) -> Result<BTreeMap<i32, i64>> {
    let corrupt = || ConnectorError::InvalidOption(format!("corrupt Kafka source position ({} bytes)", bytes.len()));
    let (version, rest) = bytes.split_first().ok_or_else(corrupt)?;
    if *version != 1 || rest.len() % 12 != 0 {
        return Err(corrupt());
    }
    let mut offsets = BTreeMap::new();
    for entry in rest.chunks_exact(12) {
        let p = i32::from_le_bytes(entry[0..4].try_into().map_err(|_| corrupt())?);
        let o = i64::from_le_bytes(entry[4..12].try_into().map_err(|_| corrupt())?);
        offsets.insert(p, o);
    }
    Ok(offsets)
}

/// The reader the actor awaits; the consuming thread starts on the first read.
pub struct KafkaReader {
    options: KafkaOptions,
    declared: SchemaRef,
    split: usize,
    splits: usize,
    stats: Arc<SourceStats>,
    /// The next offset per partition after the last batch returned.
    offsets: BTreeMap<i32, i64>,
    receiver: Option<mpsc::Receiver<Result<Fetched>>>,
    /// Durable positions to commit to the consumer group (monitoring only).
    commits: Option<std::sync::mpsc::Sender<BTreeMap<i32, i64>>>,
}

impl KafkaReader {
    /// # Errors
    /// Bad options or a position that does not decode.
    pub fn new(
        options: KafkaOptions,
        declared: SchemaRef,
        split: usize,
        splits: usize,
        position: Option<&[u8]>,
        stats: Arc<SourceStats>,
    ) -> Result<Self> {
        options.decoder(declared.clone())?;
        let offsets = match position {
            Some(p) => decode_position(p)?,
            None => BTreeMap::new(),
        };
        Ok(Self { options, declared, split, splits: splits.max(1), stats, offsets, receiver: None, commits: None })
    }

    fn start(&mut self) -> Result<()> {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let (commit_tx, commit_rx) = std::sync::mpsc::channel();
        let poller = Poller {
            options: self.options.clone(),
            decoder: self.options.decoder(self.declared.clone())?,
            split: self.split,
            splits: self.splits,
            stats: self.stats.clone(),
            offsets: self.offsets.clone(),
            sender: tx,
            commits: commit_rx,
        };
        std::thread::Builder::new()
            .name(format!("kafka-{}-{}", self.options.topic, self.split))
            .spawn(move || poller.run())
            .map_err(|e| ConnectorError::External(format!("cannot start the Kafka reader thread: {e}")))?;
        self.receiver = Some(rx);
        self.commits = Some(commit_tx);
        Ok(())
    }
}

#[async_trait]
impl SourceReader for KafkaReader {
    async fn next_chunk(&mut self) -> Result<Option<ChangeBatch>> {
        if self.receiver.is_none() {
            self.start()?;
        }
        let Some(receiver) = self.receiver.as_mut() else { return Ok(None) };
        loop {
            // Cancel-safe: a batch leaves the channel only when it is returned.
            let fetched = receiver
                .recv()
                .await
                .ok_or_else(|| ConnectorError::External("the Kafka reader thread stopped".into()))??;
            for (p, o) in fetched.next_offsets {
                self.offsets.insert(p, o);
            }
            if let Some(changes) = fetched.changes {
                return Ok(Some(changes));
            }
        }
    }

    fn position(&self) -> Vec<u8> {
        encode_position(&self.offsets)
    }

    fn checkpoint_committed(&mut self, position: &[u8]) {
        if let (Some(commits), Ok(offsets)) = (&self.commits, decode_position(position)) {
            let _ = commits.send(offsets);
        }
    }
}

/// The consuming thread of one split.
struct Poller {
    options: KafkaOptions,
    decoder: super::RecordDecoder,
    split: usize,
    splits: usize,
    stats: Arc<SourceStats>,
    /// The next offset per partition of every record read so far.
    offsets: BTreeMap<i32, i64>,
    sender: mpsc::Sender<Result<Fetched>>,
    commits: std::sync::mpsc::Receiver<BTreeMap<i32, i64>>,
}

impl Poller {
    fn run(mut self) {
        if let Err(e) = self.consume() {
            tracing::error!(topic = %self.options.topic, split = self.split, error = %e, "Kafka source stopped");
            let _ = self.sender.blocking_send(Err(e));
        }
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        let mut config = self.options.client_config();
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        if config.get("group.id").is_none() {
            // Assigned partitions need no group; librdkafka still wants a name.
            config.set("group.id", format!("eddy-{}", self.options.topic));
        }
        if config.get("auto.offset.reset").is_none() {
            config.set("auto.offset.reset", "earliest");
        }
        config.create().map_err(|e| ConnectorError::InvalidOption(format!("invalid Kafka client settings: {e}")))
    }

    /// The partitions this split reads.
    fn my_partitions(&self, consumer: &BaseConsumer) -> Result<Vec<i32>> {
        let count = super::partition_count_with(consumer, &self.options, Duration::from_secs(10))?;
        Ok((0..count as i32).filter(|p| *p as usize % self.splits == self.split).collect())
    }

    /// Where each newly assigned partition starts: its stored position, else the startup
    /// mode (partitions found after the start begin at their first record).
    fn start_offsets(&self, consumer: &BaseConsumer, partitions: &[i32], discovered: bool) -> Result<Vec<(i32, i64)>> {
        let timeout = Duration::from_secs(10);
        let topic = &self.options.topic;
        let mut out = Vec::new();
        let mut by_time = TopicPartitionList::new();
        for p in partitions {
            if let Some(o) = self.offsets.get(p) {
                out.push((*p, *o));
                continue;
            }
            let (low, high) = consumer
                .fetch_watermarks(topic, *p, timeout)
                .map_err(|e| ConnectorError::External(format!("cannot read offsets of {topic}/{p}: {e}")))?;
            match (self.options.startup, discovered) {
                (_, true) | (StartupMode::Earliest, _) => out.push((*p, low)),
                (StartupMode::Latest, _) => out.push((*p, high)),
                (StartupMode::Timestamp(t), _) => {
                    by_time
                        .add_partition_offset(topic, *p, Offset::Offset(t))
                        .map_err(|e| ConnectorError::External(e.to_string()))?;
                    out.push((*p, high));
                }
            }
        }
        if by_time.count() > 0 {
            let found = consumer
                .offsets_for_times(by_time, timeout)
                .map_err(|e| ConnectorError::External(format!("cannot look up offsets by time in {topic}: {e}")))?;
            for e in found.elements() {
                if let Offset::Offset(o) = e.offset()
                    && let Some(slot) = out.iter_mut().find(|(p, _)| *p == e.partition())
                {
                    slot.1 = o;
                }
            }
        }
        Ok(out)
    }

    fn assign(&mut self, consumer: &BaseConsumer, starts: &[(i32, i64)]) -> Result<()> {
        let mut list = TopicPartitionList::new();
        for (p, o) in &self.offsets {
            if !starts.iter().any(|(q, _)| q == p) {
                list.add_partition_offset(&self.options.topic, *p, Offset::Offset(*o))
                    .map_err(|e| ConnectorError::External(e.to_string()))?;
            }
        }
        for (p, o) in starts {
            self.offsets.insert(*p, *o);
            list.add_partition_offset(&self.options.topic, *p, Offset::Offset(*o))
                .map_err(|e| ConnectorError::External(e.to_string()))?;
        }
        consumer
            .assign(&list)
            .map_err(|e| ConnectorError::External(format!("cannot assign partitions of {}: {e}", self.options.topic)))
    }

    fn consume(&mut self) -> Result<()> {
        let consumer = self.consumer()?;
        let dead_letters: Option<BaseProducer> = match &self.options.dead_letter_topic {
            Some(_) => Some(
                self.options
                    .client_config()
                    .create()
                    .map_err(|e| ConnectorError::InvalidOption(format!("invalid Kafka client settings: {e}")))?,
            ),
            None => None,
        };
        let mut partitions = self.my_partitions(&consumer)?;
        let starts = self.start_offsets(&consumer, &partitions, false)?;
        self.assign(&consumer, &starts)?;
        // Tell the reader where each partition starts, so its position is concrete from the
        // first checkpoint on (a restart then never re-applies `latest`).
        let first = Fetched { changes: None, next_offsets: starts };
        if self.sender.blocking_send(Ok(first)).is_err() {
            return Ok(());
        }
        let mut last_discovery = Instant::now();
        loop {
            if self.sender.is_closed() {
                return Ok(());
            }
            if let Some(durable) = self.commits.try_iter().last() {
                self.commit_to_group(&consumer, &durable);
            }
            if last_discovery.elapsed() >= DISCOVERY_INTERVAL {
                last_discovery = Instant::now();
                match self.my_partitions(&consumer) {
                    Ok(now) if now.len() > partitions.len() => {
                        let added: Vec<i32> = now.iter().copied().filter(|p| !partitions.contains(p)).collect();
                        tracing::info!(topic = %self.options.topic, ?added, "reading new Kafka partitions");
                        let starts = self.start_offsets(&consumer, &added, true)?;
                        self.assign(&consumer, &starts)?;
                        partitions = now;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(topic = %self.options.topic, error = %e, "partition discovery failed"),
                }
            }
            let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
            let mut records = 0usize;
            let mut deadline: Option<Instant> = None;
            while records < MAX_BATCH_RECORDS {
                let wait = match deadline {
                    None => Duration::from_millis(100),
                    Some(d) => d.saturating_duration_since(Instant::now()),
                };
                let Some(polled) = consumer.poll(wait) else {
                    if deadline.is_none_or(|d| Instant::now() >= d) {
                        break;
                    }
                    continue;
                };
                let message = match polled {
                    Ok(m) => m,
                    Err(e) => {
                        // The client reconnects by itself; errors here are informational.
                        tracing::warn!(topic = %self.options.topic, error = %e, "Kafka consumer error");
                        if deadline.is_none() {
                            break;
                        }
                        continue;
                    }
                };
                deadline.get_or_insert_with(|| Instant::now() + LINGER);
                records += 1;
                next_offsets.insert(message.partition(), message.offset() + 1);
                self.decoder.push(&RecordRef {
                    key: message.key(),
                    payload: message.payload(),
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis(),
                });
            }
            if records == 0 {
                continue;
            }
            let decoded = self.decoder.finish()?;
            for bad in decoded.bad {
                let at = format!("{}/{}@{}", self.options.topic, bad.partition, bad.offset);
                self.stats.bad_record(format!("record {at}: {}", bad.reason));
                if let (Some(producer), Some(topic)) = (&dead_letters, &self.options.dead_letter_topic) {
                    let headers = OwnedHeaders::new()
                        .insert(Header { key: "eddy.error", value: Some(bad.reason.as_bytes()) })
                        .insert(Header { key: "eddy.source", value: Some(at.as_bytes()) });
                    let mut record = BaseRecord::<[u8], [u8]>::to(topic).headers(headers);
                    if let Some(k) = &bad.key {
                        record = record.key(k.as_slice());
                    }
                    if let Some(p) = &bad.payload {
                        record = record.payload(p.as_slice());
                    }
                    if let Err((e, _)) = producer.send(record) {
                        tracing::warn!(%topic, error = %e, "cannot write to the dead-letter topic");
                    }
                    producer.poll(Duration::ZERO);
                }
            }
            if let Some(producer) = &dead_letters {
                let _ = producer.flush(Duration::from_secs(5));
            }
            for (p, o) in &next_offsets {
                self.offsets.insert(*p, *o);
            }
            let fetched = Fetched { changes: decoded.changes, next_offsets: next_offsets.into_iter().collect() };
            if self.sender.blocking_send(Ok(fetched)).is_err() {
                return Ok(());
            }
        }
    }

    /// Records durable positions in the consumer group, when the user named one.
    fn commit_to_group(&self, consumer: &BaseConsumer, durable: &BTreeMap<i32, i64>) {
        if !self.options.properties.iter().any(|(k, _)| k == "group.id") {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (p, o) in durable {
            if list.add_partition_offset(&self.options.topic, *p, Offset::Offset(*o)).is_err() {
                return;
            }
        }
        if let Err(e) = consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(topic = %self.options.topic, error = %e, "committing offsets to the group failed");
        }
    }
}
