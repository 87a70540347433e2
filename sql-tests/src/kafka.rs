//! Producing test records with a real Kafka client (librdkafka), shared by the Kafka tests.

use std::time::Duration;

use anyhow::Result;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord};

/// A producer that batches briefly, so large test loads are fast.
pub fn producer(bootstrap: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create()?)
}

/// Sends one record, waiting while the producer's queue is full.
pub fn send(
    p: &BaseProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    value: Option<&str>,
) -> Result<()> {
    let mut record = BaseRecord::<str, str>::to(topic);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    loop {
        match p.send(record) {
            Ok(()) => break,
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
    p.poll(Duration::ZERO);
    Ok(())
}
