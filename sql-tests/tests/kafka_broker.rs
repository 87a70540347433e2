//! The Kafka session of the README against a real broker process: Tansu, a Kafka-protocol
//! broker, started on a loopback port by this test (scripts/setup-kafka.sh installs it). A
//! real rdkafka producer writes JSON bids and a Debezium customer stream with creates, an
//! update and a delete; Eddy (the real binary, killed with `kill -9` once mid-stream) reads
//! them into a source with a watermark and a table, maintains a join + aggregate view and an
//! aggregate view, and sinks the latter to a topic as upserts. The views are read over pgwire
//! and compared with a recomputation of the same data, and the sink topic is consumed back.
//!
//! The test fails (it does not skip) when Tansu is missing: CI installs it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use eddy_sql_tests::kafka::{Tansu, create_topics, producer, send};
use eddy_sql_tests::{TestServer, wait_for};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{Message, Offset, TopicPartitionList};

/// Bid `i`: (auction, bidder, price); its event time grows by 1 ms per bid.
fn bid(i: i64) -> (i64, i64, i64) {
    (i % 11, i % 6, (i * 37) % 1000)
}

fn bid_json(i: i64) -> String {
    let (auction, bidder, price) = bid(i);
    let ms = i % 1000;
    let s = i / 1000;
    format!(
        "{{\"auction\":{auction},\"bidder\":{bidder},\"price\":{price},\
         \"date_time\":\"2026-01-01 00:{:02}:{:02}.{ms:03}\"}}",
        s / 60,
        s % 60
    )
}

/// The final customers: id → tier (after the update of 2 and the delete of 3).
fn final_tiers() -> BTreeMap<i64, &'static str> {
    BTreeMap::from([(1, "silver"), (2, "silver"), (4, "gold"), (5, "silver")])
}

/// Every record of partition 0 of `topic` as (key, value), until `done` holds and the topic
/// has been quiet for 2 s (or 60 s pass).
fn consume(
    bootstrap: &str,
    topic: &str,
    done: impl Fn(&[(Option<String>, Option<String>)]) -> bool,
) -> Result<Vec<(Option<String>, Option<String>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "eddy-broker-test-reader")
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
async fn kafka_session_against_a_broker_process() -> Result<()> {
    let broker = Tansu::start()?;
    let bootstrap = broker.bootstrap.clone();
    create_topics(&bootstrap, &[("bids", 3), ("customers", 1), ("top_bids", 1)]).await?;
    // The sink's progress topic is left to Eddy to create.
    let p = producer(&bootstrap)?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "300"])?;
    let client = server.connect().await?;

    // A topic the broker does not have is named at CREATE.
    let err = client
        .simple_query(&format!(
            "CREATE SOURCE nothing (a INT) WITH (connector = 'kafka', topic = 'no_such_topic', \
             properties.bootstrap.server = '{bootstrap}', properties.allow.auto.create.topics = 'false') \
             FORMAT PLAIN ENCODE JSON"
        ))
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(err.contains("no_such_topic"), "{err}");

    let with =
        |topic: &str| format!("connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}'");
    client
        .batch_execute(&format!(
            "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP,
                                 WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH ({}, scan.startup.mode = 'earliest') FORMAT PLAIN ENCODE JSON;
             CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR, tier VARCHAR)
               WITH ({}) FORMAT DEBEZIUM ENCODE JSON;
             CREATE MATERIALIZED VIEW top_bids AS
               SELECT auction, max(price) AS top, count(*) AS n FROM bids GROUP BY auction;
             CREATE MATERIALIZED VIEW by_tier AS
               SELECT c.tier, count(*) AS n, sum(b.price) AS total
               FROM bids b JOIN customers c ON b.bidder = c.id GROUP BY c.tier;
             CREATE SINK top_bids_out FROM top_bids WITH ({}, primary_key = 'auction')
               FORMAT UPSERT ENCODE JSON;",
            with("bids"),
            with("customers"),
            with("top_bids"),
        ))
        .await?;

    // Debezium customers: creates, an update (2: gold → silver) and a delete (3).
    let customer = |id: i64, tier: &str| format!("{{\"id\":{id},\"name\":\"c{id}\",\"tier\":\"{tier}\"}}");
    for id in 1..=5 {
        let after = customer(id, if id % 2 == 0 { "gold" } else { "silver" });
        send(&p, "customers", None, None, Some(&format!("{{\"before\":null,\"after\":{after},\"op\":\"c\"}}")))?;
    }
    let update = format!("{{\"before\":{},\"after\":{},\"op\":\"u\"}}", customer(2, "gold"), customer(2, "silver"));
    send(&p, "customers", None, None, Some(&update))?;
    send(
        &p,
        "customers",
        None,
        None,
        Some(&format!("{{\"before\":{},\"after\":null,\"op\":\"d\"}}", customer(3, "silver"))),
    )?;
    p.flush(Duration::from_secs(10))?;

    // Bids over three partitions, with a kill -9 of Eddy halfway.
    let total = 4000i64;
    for i in 0..total {
        send(&p, "bids", Some((i % 3) as i32), None, Some(&bid_json(i)))?;
        if i % 500 == 499 {
            p.flush(Duration::from_secs(10))?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if i == total / 2 {
            p.flush(Duration::from_secs(10))?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.kill();
            server.restart()?;
        }
    }
    p.flush(Duration::from_secs(10))?;
    let client = server.connect().await?;

    // The recomputation of both views from the data sent.
    let mut top: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut tiers: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let customers = final_tiers();
    for i in 0..total {
        let (auction, bidder, price) = bid(i);
        let t = top.entry(auction).or_insert((i64::MIN, 0));
        t.0 = t.0.max(price);
        t.1 += 1;
        if let Some(tier) = customers.get(&bidder) {
            let g = tiers.entry(tier).or_default();
            g.0 += 1;
            g.1 += price;
        }
    }
    let want_top: Vec<Vec<String>> =
        top.iter().map(|(a, (m, n))| vec![a.to_string(), m.to_string(), n.to_string()]).collect();
    let want_tiers: Vec<Vec<String>> =
        tiers.iter().map(|(t, (n, s))| vec![t.to_string(), n.to_string(), s.to_string()]).collect();
    let want_customers = vec![
        vec!["1".to_string(), "c1".into(), "silver".into()],
        vec!["2".into(), "c2".into(), "silver".into()],
        vec!["4".into(), "c4".into(), "gold".into()],
        vec!["5".into(), "c5".into(), "silver".into()],
    ];
    wait_for(&client, "SELECT * FROM customers ORDER BY id", &want_customers, Duration::from_secs(60)).await?;
    wait_for(&client, "SELECT * FROM top_bids ORDER BY auction", &want_top, Duration::from_secs(90)).await?;
    wait_for(&client, "SELECT * FROM by_tier ORDER BY tier", &want_tiers, Duration::from_secs(30)).await?;
    wait_for(
        &client,
        "SELECT coalesce(sum(bad_records), 0) FROM eddy_catalog.source_splits",
        &[vec!["0".into()]],
        Duration::from_secs(5),
    )
    .await?;

    // The sink topic, consumed back: the last record of each key is the view's row.
    let expected: BTreeMap<String, String> = top
        .iter()
        .map(|(a, (m, n))| (format!("{{\"auction\":{a}}}"), format!("{{\"auction\":{a},\"top\":{m},\"n\":{n}}}")))
        .collect();
    let last_per_key = |records: &[(Option<String>, Option<String>)]| {
        let mut last = BTreeMap::new();
        for (k, v) in records {
            last.insert(k.clone().unwrap_or_default(), v.clone().unwrap_or_default());
        }
        last
    };
    let records = consume(&bootstrap, "top_bids", |r| last_per_key(r) == expected)?;
    assert_eq!(last_per_key(&records), expected, "the sink topic's last record per key");
    Ok(())
}
