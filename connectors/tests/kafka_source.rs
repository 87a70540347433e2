//! The Kafka source against librdkafka's mock cluster: a real Kafka-protocol broker in this
//! process (produce, fetch, metadata, offsets).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use eddy_connectors::{SourceFormat, SourceReader, SourceSpec, SourceStats, create_reader, validate_source};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn spec(bootstrap: &str, topic: &str, format: &str, encode: &str, extra: &[(&str, &str)]) -> SourceSpec {
    let mut options: HashMap<String, String> = [
        ("connector", "kafka"),
        ("topic", topic),
        ("properties.bootstrap.server", bootstrap),
        ("scan.startup.mode", "earliest"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        options.insert(k.to_string(), v.to_string());
    }
    SourceSpec {
        connector: "kafka".into(),
        options,
        format: Some(SourceFormat { format: format.into(), encode: encode.into(), options: HashMap::new() }),
        splits: None,
    }
}

fn bids_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
    ]))
}

fn producer(bootstrap: &str) -> Result<BaseProducer, rdkafka::error::KafkaError> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create()
}

fn produce(p: &BaseProducer, topic: &str, partition: i32, key: Option<&str>, payload: Option<&str>) -> TestResult {
    let mut record = BaseRecord::<str, str>::to(topic).partition(partition);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = payload {
        record = record.payload(v);
    }
    p.send(record).map_err(|(e, _)| e)?;
    p.poll(Duration::ZERO);
    Ok(())
}

/// Reads from `reader` until `rows` rows arrived (or a timeout), returning (auction, price,
/// weight) triples.
async fn read_rows(
    reader: &mut Box<dyn SourceReader>,
    rows: usize,
) -> Result<Vec<(i64, i64, i64)>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < rows {
        let chunk = tokio::time::timeout_at(deadline, reader.next_chunk()).await??;
        let Some(chunk) = chunk else { break };
        let a = chunk.column(0).as_primitive::<Int64Type>();
        let p = chunk.column(1).as_primitive::<Int64Type>();
        for i in 0..chunk.num_rows() {
            out.push((a.value(i), p.value(i), chunk.weights().value(i)));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_json_splits_bad_records_and_resume() -> TestResult {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("bids", 3, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap)?;
    let mut expected = Vec::new();
    for i in 0..300i64 {
        let partition = (i % 3) as i32;
        produce(&p, "bids", partition, None, Some(&format!("{{\"auction\": {}, \"price\": {}}}", i, i * 10)))?;
        expected.push((i, i * 10, 1));
    }
    // Bad records: broken JSON, a string where a number belongs, two objects in one record.
    produce(&p, "bids", 0, None, Some("{\"auction\": 1"))?;
    produce(&p, "bids", 1, None, Some("{\"auction\": \"x\", \"price\": 1}"))?;
    produce(&p, "bids", 2, None, Some("{\"auction\": 1}{\"auction\": 2}"))?;
    p.flush(Duration::from_secs(10))?;

    let schema = bids_schema();
    let s = spec(&bootstrap, "bids", "PLAIN", "JSON", &[]);
    let info = validate_source(&s, &schema).await?;
    assert_eq!(info.splits, 3);
    assert!(!info.keyed_changes);
    let mut s = s;
    s.splits = Some(3);

    let mut got = Vec::new();
    let mut bad = 0;
    for split in 0..3 {
        let stats = Arc::new(SourceStats::default());
        let mut reader = create_reader(&s, schema.clone(), split, None, stats.clone())?;
        got.extend(read_rows(&mut reader, 100).await?);
        // The bad record of the partition comes after the good ones; wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stats.bad_records() == 0 && std::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(200), reader.next_chunk()).await;
        }
        bad += stats.bad_records();
        assert!(
            stats.last_error().is_some_and(|e| e.contains(&format!("bids/{split}@100"))),
            "{:?}",
            stats.last_error()
        );
    }
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(bad, 3);

    // Resume from a position: nothing read twice, nothing skipped.
    let stats = Arc::new(SourceStats::default());
    let mut reader = create_reader(&s, schema.clone(), 0, None, stats.clone())?;
    let first = read_rows(&mut reader, 1).await?;
    let position = reader.position();
    drop(reader);
    for i in 300..330i64 {
        produce(&p, "bids", 0, None, Some(&format!("{{\"auction\": {i}, \"price\": 0}}")))?;
    }
    p.flush(Duration::from_secs(10))?;
    let mut reader = create_reader(&s, schema.clone(), 0, Some(&position), stats)?;
    let rest = read_rows(&mut reader, 100 + 30 - first.len()).await?;
    let mut all: Vec<i64> = first.iter().chain(&rest).map(|r| r.0).collect();
    all.sort();
    let mut want: Vec<i64> = (0..300).filter(|i| i % 3 == 0).chain(300..330).collect();
    want.sort();
    assert_eq!(all, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_debezium_csv_and_metadata() -> TestResult {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("up", 1, 1)?;
    cluster.create_topic("dbz", 1, 1)?;
    cluster.create_topic("csv", 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap)?;
    produce(&p, "up", 0, Some("{\"auction\":1}"), Some("{\"auction\":1,\"price\":10}"))?;
    produce(&p, "up", 0, Some("{\"auction\":1}"), None)?;
    produce(&p, "up", 0, Some("{\"auction\":2}"), Some("{\"auction\":2,\"price\":20}"))?;
    produce(&p, "dbz", 0, None, Some(r#"{"before":null,"after":{"auction":1,"price":5},"op":"c"}"#))?;
    produce(
        &p,
        "dbz",
        0,
        None,
        Some(r#"{"schema":{},"payload":{"before":{"auction":1,"price":5},"after":{"auction":1,"price":6},"op":"u"}}"#),
    )?;
    produce(&p, "dbz", 0, None, Some(r#"{"before":{"auction":1,"price":6},"after":null,"op":"d"}"#))?;
    produce(&p, "dbz", 0, None, None)?;
    produce(&p, "csv", 0, Some("k1"), Some("7,70"))?;
    produce(&p, "csv", 0, Some("k2"), Some("8,eighty"))?;
    produce(&p, "csv", 0, Some("k3"), Some("9,90\n"))?;
    p.flush(Duration::from_secs(10))?;
    let schema = bids_schema();

    let mut s = spec(&bootstrap, "up", "UPSERT", "JSON", &[]);
    assert!(validate_source(&s, &schema).await?.keyed_changes);
    s.splits = Some(1);
    let mut reader = create_reader(&s, schema.clone(), 0, None, Arc::new(SourceStats::default()))?;
    assert_eq!(read_rows(&mut reader, 3).await?, vec![(1, 10, 1), (1, 0, -1), (2, 20, 1)]);

    let mut s = spec(&bootstrap, "dbz", "DEBEZIUM", "JSON", &[]);
    s.splits = Some(1);
    let mut reader = create_reader(&s, schema.clone(), 0, None, Arc::new(SourceStats::default()))?;
    assert_eq!(read_rows(&mut reader, 4).await?, vec![(1, 5, 1), (1, 5, -1), (1, 6, 1), (1, 6, -1)]);

    let with_meta = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("k", DataType::Utf8, true),
        Field::new("o", DataType::Int64, true),
    ]));
    let mut s = spec(&bootstrap, "csv", "PLAIN", "CSV", &[("include.key", "k"), ("include.offset", "o")]);
    s.splits = Some(1);
    let stats = Arc::new(SourceStats::default());
    let mut reader = create_reader(&s, with_meta, 0, None, stats.clone())?;
    let chunk = tokio::time::timeout(Duration::from_secs(20), reader.next_chunk()).await??;
    let Some(chunk) = chunk else { return Err("no rows".into()) };
    assert_eq!(chunk.to_pretty(), "+ 7 70 k1 0\n+ 9 90 k3 2\n");
    assert_eq!(stats.bad_records(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_and_unreachable_broker_are_named() -> TestResult {
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    let schema = bids_schema();
    let mut s = spec(&bootstrap, "nope", "PLAIN", "JSON", &[]);
    s.options.insert("properties.allow.auto.create.topics".into(), "false".into());
    let err = validate_source(&s, &schema).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("\"nope\""), "{err}");

    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let s = spec(&free.to_string(), "bids", "PLAIN", "JSON", &[("properties.socket.timeout.ms", "2000")]);
    let err = validate_source(&s, &schema).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(&free.to_string()) && err.contains("bids"), "{err}");

    let s = spec(&bootstrap, "bids", "PLAIN", "XML", &[]);
    let err = validate_source(&s, &schema).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("ENCODE XML"), "{err}");
    Ok(())
}
