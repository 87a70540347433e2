//! Kafka end to end through the real `eddy` binary: librdkafka's mock cluster runs in this
//! test process (a real Kafka-protocol broker on loopback ports), a real producer writes
//! JSON, CSV and Debezium records, and views are read over pgwire and compared with a batch
//! recomputation of the same data. Eddy is killed with `kill -9` mid-stream and must count
//! every record exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_sql_tests::TestServer;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio_postgres::{Client, SimpleQueryMessage};

fn producer(bootstrap: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create()?)
}

fn send(p: &BaseProducer, topic: &str, partition: Option<i32>, key: Option<&str>, value: Option<&str>) -> Result<()> {
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

async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.with_context(|| sql.to_string())? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| eddy_sql_tests::cell_text(r.get(i))).collect());
        }
    }
    Ok(out)
}

/// Waits until `sql` returns `want`, or fails with what it returned last.
async fn wait_for(client: &Client, sql: &str, want: &[Vec<String>], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = rows(client, sql).await?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{sql}: expected {want:?}, got {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn bid_json(i: i64) -> String {
    format!("{{\"auction\": {}, \"price\": {}, \"date_time\": \"2026-01-01 00:00:{:02}\"}}", i % 7, i * 3 % 101, i % 60)
}

/// The expected view over bids `0..n`: auction → (count, sum(price)).
fn expected_bids(n: i64) -> Vec<Vec<String>> {
    let mut groups: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for i in 0..n {
        let g = groups.entry(i % 7).or_default();
        g.0 += 1;
        g.1 += i * 3 % 101;
    }
    groups.into_iter().map(|(a, (c, s))| vec![a.to_string(), c.to_string(), s.to_string()]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_views_survive_kill_9() -> Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("bids", 3, 1)?;
    cluster.create_topic("customers", 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap)?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "300"])?;
    let client = server.connect().await?;

    // Broker problems at CREATE are named.
    let err = client
        .simple_query(&format!(
            "CREATE SOURCE nothing (a INT) WITH (connector = 'kafka', topic = 'missing_topic', \
             properties.bootstrap.server = '{bootstrap}', properties.allow.auto.create.topics = 'false') \
             FORMAT PLAIN ENCODE JSON"
        ))
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(err.contains("missing_topic"), "{err}");

    client
        .batch_execute(&format!(
            "CREATE SOURCE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP) \
               INCLUDE partition AS part \
               WITH (connector = 'kafka', topic = 'bids', properties.bootstrap.server = '{bootstrap}', \
                     scan.startup.mode = 'earliest') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_auction AS
               SELECT auction, count(*) AS n, sum(price) AS total FROM bids GROUP BY auction;
             CREATE MATERIALIZED VIEW per_partition AS SELECT part, count(*) AS n FROM bids GROUP BY part;
             CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR, tier VARCHAR)
               WITH (connector = 'kafka', topic = 'customers', properties.bootstrap.server = '{bootstrap}')
               FORMAT DEBEZIUM ENCODE JSON;
             CREATE MATERIALIZED VIEW tiers AS SELECT tier, count(*) AS n FROM customers GROUP BY tier;"
        ))
        .await?;

    // Debezium: creates, an update, a delete (with its tombstone), and a bad record.
    let customer = |id: i64, name: &str, tier: &str| format!("{{\"id\":{id},\"name\":\"{name}\",\"tier\":\"{tier}\"}}");
    for id in 1..=5 {
        let after = customer(id, &format!("c{id}"), if id % 2 == 0 { "gold" } else { "silver" });
        send(&p, "customers", None, None, Some(&format!("{{\"before\":null,\"after\":{after},\"op\":\"c\"}}")))?;
    }
    let (before, after) = (customer(2, "c2", "gold"), customer(2, "c2", "silver"));
    send(&p, "customers", None, None, Some(&format!("{{\"before\":{before},\"after\":{after},\"op\":\"u\"}}")))?;
    let before = customer(3, "c3", "silver");
    send(&p, "customers", None, None, Some(&format!("{{\"before\":{before},\"after\":null,\"op\":\"d\"}}")))?;
    send(&p, "customers", None, None, None)?;
    send(&p, "customers", None, None, Some("{\"op\": \"c\", \"after\": {\"id\": \"not a number\"}}"))?;
    p.flush(Duration::from_secs(10))?;
    let want = vec![
        vec!["1".into(), "c1".into(), "silver".into()],
        vec!["2".into(), "c2".into(), "silver".into()],
        vec!["4".into(), "c4".into(), "gold".into()],
        vec!["5".into(), "c5".into(), "silver".into()],
    ];
    wait_for(&client, "SELECT * FROM customers ORDER BY id", &want, Duration::from_secs(30)).await?;
    let batch = rows(&client, "SELECT tier, count(*) FROM customers GROUP BY tier ORDER BY tier").await?;
    wait_for(&client, "SELECT * FROM tiers ORDER BY tier", &batch, Duration::from_secs(10)).await?;
    wait_for(
        &client,
        "SELECT sum(bad_records) FROM eddy_catalog.source_splits WHERE source = 'customers'",
        &[vec!["1".into()]],
        Duration::from_secs(10),
    )
    .await?;

    // Bids across three partitions, with a kill -9 while they stream in.
    let total = 6000i64;
    let mut sent = 0i64;
    for round in 0..3 {
        let upto = total * (round + 1) / 3;
        while sent < upto {
            send(&p, "bids", Some((sent % 3) as i32), None, Some(&bid_json(sent)))?;
            sent += 1;
            if sent % 500 == 0 {
                p.flush(Duration::from_secs(10))?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        p.flush(Duration::from_secs(10))?;
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(300 * (round as u64 + 1))).await;
            server.kill();
            server.restart()?;
        }
    }
    // A bad record in the middle of the stream is skipped; everything after it still counts.
    send(&p, "bids", Some(1), None, Some("{\"auction\": [1, 2]"))?;
    for i in total..total + 30 {
        send(&p, "bids", Some((i % 3) as i32), None, Some(&bid_json(i)))?;
    }
    p.flush(Duration::from_secs(10))?;
    let client = server.connect().await?;
    wait_for(
        &client,
        "SELECT * FROM per_auction ORDER BY auction",
        &expected_bids(total + 30),
        Duration::from_secs(60),
    )
    .await?;
    let per_partition: Vec<Vec<String>> = (0..3).map(|p| vec![p.to_string(), ((total + 30) / 3).to_string()]).collect();
    wait_for(&client, "SELECT * FROM per_partition ORDER BY part", &per_partition, Duration::from_secs(10)).await?;
    wait_for(
        &client,
        "SELECT sum(bad_records) FROM eddy_catalog.source_splits WHERE job = 'per_auction'",
        &[vec!["1".into()]],
        Duration::from_secs(10),
    )
    .await?;
    // The table kept its rows across the kills.
    wait_for(&client, "SELECT * FROM customers ORDER BY id", &want, Duration::from_secs(10)).await?;
    Ok(())
}

/// Every committed record of `topic` (partition 0) as (key, value), read with
/// `isolation.level = read_committed`, waiting until `done` holds or the topic stays quiet.
fn consume_committed(
    bootstrap: &str,
    topic: &str,
    done: impl Fn(&[(Option<String>, Option<String>)]) -> bool,
) -> Result<Vec<(Option<String>, Option<String>)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "eddy-test-reader")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                out.push((text(m.key()), text(m.payload())));
                quiet_since = Instant::now();
            }
            Some(Err(e)) => bail!("consuming {topic}: {e}"),
            None => {
                if done(&out) && quiet_since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_exactly_once_across_kill_9() -> Result<()> {
    let cluster = MockCluster::new(1)?;
    for topic in ["events", "copy", "counts", "changes", "eddy_sink_progress"] {
        cluster.create_topic(topic, 1, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap)?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "200"])?;
    let client = server.connect().await?;
    let sink =
        |topic: &str| format!("connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}'");
    client
        .batch_execute(&format!(
            "CREATE SOURCE events (id BIGINT, k INT) WITH (connector = 'kafka', topic = 'events', \
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;
             CREATE SINK copy AS SELECT id, k FROM events WITH ({}) FORMAT PLAIN ENCODE JSON;
             CREATE SINK counts AS SELECT k, count(*) AS n FROM events GROUP BY k
               WITH ({}, primary_key = 'k') FORMAT UPSERT ENCODE JSON;",
            sink("copy"),
            sink("counts"),
        ))
        .await?;
    // A retracting stream into a PLAIN sink is refused.
    let err = client
        .simple_query(&format!(
            "CREATE SINK bad AS SELECT k, count(*) AS n FROM events GROUP BY k WITH ({}) FORMAT PLAIN ENCODE JSON",
            sink("changes")
        ))
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(err.contains("append-only"), "{err}");

    let total = 3000i64;
    let mut sent = 0i64;
    for round in 0..3 {
        let upto = total * (round + 1) / 3;
        while sent < upto {
            send(&p, "events", None, None, Some(&format!("{{\"id\": {sent}, \"k\": {}}}", sent % 5)))?;
            sent += 1;
            if sent % 250 == 0 {
                p.flush(Duration::from_secs(10))?;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
        p.flush(Duration::from_secs(10))?;
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(250 * (round as u64 + 1))).await;
            server.kill();
            server.restart()?;
        }
    }

    let copied = consume_committed(&bootstrap, "copy", |r| r.len() >= total as usize)?;
    let mut ids: Vec<i64> = Vec::new();
    for (_, value) in &copied {
        let v = value.as_deref().unwrap_or_default();
        let id = v
            .split("\"id\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("unexpected record {v}"))?;
        ids.push(id);
    }
    ids.sort();
    let want: Vec<i64> = (0..total).collect();
    assert_eq!(ids.len(), want.len(), "records in the PLAIN sink: duplicates or losses");
    assert_eq!(ids, want);

    // The UPSERT sink: the last record per key is the final count.
    let expected: BTreeMap<String, String> =
        (0..5).map(|k| (format!("{{\"k\":{k}}}"), format!("{{\"k\":{k},\"n\":{}}}", total / 5))).collect();
    let counted = consume_committed(&bootstrap, "counts", |records| {
        let mut last = BTreeMap::new();
        for (k, v) in records {
            last.insert(k.clone().unwrap_or_default(), v.clone().unwrap_or_default());
        }
        last == expected
    })?;
    let mut last = BTreeMap::new();
    for (k, v) in counted {
        last.insert(k.unwrap_or_default(), v.unwrap_or_default());
    }
    assert_eq!(last, expected);
    Ok(())
}
